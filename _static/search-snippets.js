// Search result snippets are cut from the text of the pages' HTML, where math is still TeX
// source ("\(b_{ui}\)"). Before Sphinx takes that text, write each formula as plain text
// ("b_ui"), so a snippet never shows TeX delimiters or commands. (The book's own script:
// Jupyter Book adds every .js file in _static to every page; it acts on the search page only.
// It is loaded before Sphinx's searchtools.js, so it patches once the document is parsed,
// before the search starts.)
document.addEventListener("DOMContentLoaded", () => {
  if (typeof Search === "undefined" || !Search.htmlToText) return;
  const greek = {alpha: "α", beta: "β", gamma: "γ", delta: "δ", epsilon: "ε", eta: "η",
    theta: "θ", kappa: "κ", lambda: "λ", mu: "μ", nu: "ν", pi: "π", rho: "ρ", sigma: "σ",
    tau: "τ", phi: "φ", psi: "ψ", omega: "ω", Sigma: "Σ", Delta: "Δ", top: "ᵀ", le: "≤",
    ge: "≥", in: "∈", sum: "Σ", approx: "≈", cdot: "·", times: "×", infty: "∞"};
  const plain = (tex) => tex
    .replace(/\\\\/g, " ")  // line breaks
    .replace(/\\[()[\]]/g, " ")  // delimiters \( \) \[ \]
    .replace(/\\(?:begin|end)\{[^}]*\}/g, " ")
    .replace(/\\(?:mathrm|mathbf|mathcal|mathbb|text|operatorname|hat|bar|tilde)\b/g, "")
    .replace(/\\([A-Za-z]+)/g, (m, name) => greek[name] ?? "")
    .replace(/\\./g, " ")  // spacing (\, \;) and escaped characters
    .replace(/[{}&]/g, "")
    .replace(/\s+/g, " ")
    .trim();
  const original = Search.htmlToText;
  Search.htmlToText = (htmlString, anchor) => {
    const doc = new DOMParser().parseFromString(htmlString, "text/html");
    doc.querySelectorAll(".math").forEach((el) => {
      el.textContent = plain(el.textContent);
    });
    return original(doc.documentElement.outerHTML, anchor);
  };
});
