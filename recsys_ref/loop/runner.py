"""The runner of the unified loop: day after day, onboard, adapt, serve, log, retrain, gate.

Each day (vectorised over the day's visitors): new users on their first visit answer the
onboarding strategy's questions (:mod:`recsys_ref.active.strategies`); each visitor's
feedback since the deployed model was trained is folded in (few-shot adaptation); the policy
fills a slate from the model's scores with logged propensities; the world draws the clicks;
clicked and asked items are consumed (never shown again to that user). Every ``every`` days
the retrainer fits a candidate; with a gate, the candidate is trained without the last
``window_days`` days and deployed (by default refitted on every day) only if off-policy
evaluation on those days approves it. See the chapter "The unified loop".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from recsys_ref.active.signals import cosine_density, posterior_scores
from recsys_ref.active.strategies import SelectionState, Strategy
from recsys_ref.bandits.simulator import click_probabilities_from_scores
from recsys_ref.checks import check_frame, check_positive_int
from recsys_ref.loop.gate import OPEGate
from recsys_ref.loop.logger import Logger
from recsys_ref.loop.model import LoopModel
from recsys_ref.loop.policies import SlatePolicy
from recsys_ref.loop.retrainer import Retrainer, positives
from recsys_ref.loop.world import World
from recsys_ref.progress import progress_bar

POSTERIOR_FIELDS = ("variance", "change")


@dataclass
class LoopSystem:
    """The parts of a system (any may be left out, except the model and the policy).

    Attributes:
        model: the model deployed on day 0 (fitted on ``history``).
        policy: the serving :class:`~recsys_ref.loop.policies.SlatePolicy`.
        history: ``user_idx, item_idx`` the system knew before day 0.
        onboarding: a strategy asking new users ``n_questions`` questions on their first visit.
        adapt: fold in each visitor's feedback since the model was trained.
        retrainer: a :class:`~recsys_ref.loop.retrainer.Retrainer`, or None (never retrain).
        gate: an :class:`~recsys_ref.loop.gate.OPEGate`, or None (deploy every retraining).
        logger: records impressions (with propensities unless told otherwise).
        seed: seed of the system's own random numbers (policy draws, question tie-breaks).
    """

    model: LoopModel
    policy: SlatePolicy
    history: pd.DataFrame
    onboarding: Strategy | None = None
    n_questions: int = 5
    adapt: bool = False
    retrainer: Retrainer | None = None
    gate: OPEGate | None = None
    logger: Logger = field(default_factory=Logger)
    seed: int = 0

    def __post_init__(self):
        check_frame(self.history, "history", ["user_idx", "item_idx"])
        self.n_questions = check_positive_int(self.n_questions, "n_questions")
        needs_post = self.policy.sample_scores or (
            self.onboarding is not None and set(self.onboarding.needs) & set(POSTERIOR_FIELDS))
        if needs_post and not self.model.has_posterior:
            what = "policy" if self.policy.sample_scores else f"onboarding {self.onboarding.name}"
            raise ValueError(f"the {what} needs a posterior that {type(self.model).__name__} "
                             f"cannot give")
        if self.gate is not None:
            if not self.logger.propensities:
                raise ValueError("a gate needs a logger that records propensities")
            if not self.policy.stochastic:
                raise ValueError(f"a gate needs a stochastic policy (every propensity > 0); "
                                 f"{self.policy.name} logs propensity 1 for its choices only")
            if self.retrainer is None:
                raise ValueError("a gate needs a retrainer (it gates retrained candidates)")


@dataclass
class LoopResult:
    """``log`` (the logger's rows), ``visits`` (one row per visit: clicks, expected clicks,
    the oracle's expected clicks) and ``decisions`` (one row per retraining)."""

    log: pd.DataFrame
    visits: pd.DataFrame
    decisions: pd.DataFrame


class _Consumed:
    """Per-user sets of consumed items; a bool ``(b, n_items)`` mask for a batch of users."""

    def __init__(self, history: pd.DataFrame, n_items: int):
        self.n_items = n_items
        self.items = history.groupby("user_idx")["item_idx"].apply(set).to_dict()

    def add(self, users, items) -> None:
        for u, i in zip(users.tolist(), items.tolist(), strict=True):
            self.items.setdefault(u, set()).add(i)

    def mask(self, users: torch.Tensor) -> torch.Tensor:
        """``(b, n_items)`` True where the item may still be shown."""
        rows, cols = [], []
        for r, u in enumerate(users.tolist()):
            got = self.items.get(u, ())
            rows += [r] * len(got)
            cols += list(got)
        out = torch.ones(len(users), self.n_items, dtype=torch.bool)
        out[torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)] = False
        return out


def feedback_since(log: pd.DataFrame, start: int, end: int) -> pd.DataFrame:
    """Log rows (slates and answers) of days ``start <= day < end``, as fold-in feedback."""
    rows = log[(log["day"] >= start) & (log["day"] < end)]
    return rows[["user_idx", "item_idx", "label"]].astype({"user_idx": "int64",
                                                           "item_idx": "int64"})


def window_values(world: World, log: pd.DataFrame, history: pd.DataFrame,
                  models: dict[str, LoopModel], policy: SlatePolicy, start: int, end: int,
                  reward_model: LoopModel, adapt: bool = True) -> dict:
    """What an off-policy gate needs on the logged slates of days ``start <= day < end``.

    Each model's policy (``policy`` over its scores, with every label logged before ``start``
    folded in if ``adapt``) gives its distribution at every logged row; the
    ``reward_model``'s Platt-scaled scores are the DR reward model. The true value of
    each policy on the same rows (the expected click of its distribution, which only the
    simulator knows) is returned for checking the estimates.

    Returns:
        A dict of ``rewards``, ``actions``, ``propensities`` (each ``(n,)``), ``dists`` (policy
        name to ``(n, n_items)``), ``q_hat`` (``(n, n_items)``) and ``truth`` (policy name to
        its true value).
    """
    rows = log[(log["kind"] == "slate") & (log["day"] >= start) & (log["day"] < end)]
    if len(rows) == 0:
        raise ValueError(f"no logged slates in days {start}..{end - 1}")
    k = int(rows["position"].max()) + 1
    seen = _Consumed(history, world.n_items)
    before = log[(log["day"] < start) & ((log["label"] > 0) | (log["kind"] == "answer"))]
    seen.add(torch.tensor(before["user_idx"].to_numpy()),
             torch.tensor(before["item_idx"].to_numpy()))
    platt = _calibration(log, reward_model, start)
    everything = feedback_since(log, 0, start)  # labels before the window: no peeking
    fb = everything if adapt else None
    dists = {name: [] for name in models}
    q_hat, truth = [], {name: [] for name in models}
    for day, block in rows.groupby("day", sort=True):
        slates = torch.tensor(block["item_idx"].to_numpy()).reshape(-1, k)  # (b, k)
        users = torch.tensor(block["user_idx"].to_numpy()[::k])  # (b,)
        # the day's answers were given before its slates
        ans = log[(log["day"] == day) & (log["kind"] == "answer")]
        seen.add(torch.tensor(ans["user_idx"].to_numpy()),
                 torch.tensor(ans["item_idx"].to_numpy()))
        avail = seen.mask(users)
        p = world.click_prob[users].double()[:, None, :] * world.examination[:k, None].double()
        for name, model in models.items():
            d = policy.logged_distributions(model.scores(users, fb), avail, slates)  # (b,k,n)
            dists[name].append(d.reshape(-1, world.n_items))
            truth[name].append((d * p).sum(-1).reshape(-1))
        q = torch.sigmoid(platt[0] * reward_model.scores(users, everything).double() + platt[1])
        q_hat.append(q.repeat_interleave(k, 0))
        clicked = block[block["label"] > 0]
        seen.add(torch.tensor(clicked["user_idx"].to_numpy()),
                 torch.tensor(clicked["item_idx"].to_numpy()))
    return {"rewards": torch.tensor(rows["label"].to_numpy()),
            "actions": torch.tensor(rows["item_idx"].to_numpy()),
            "propensities": torch.tensor(rows["propensity"].to_numpy()),
            "dists": {n: torch.cat(v) for n, v in dists.items()}, "q_hat": torch.cat(q_hat),
            "truth": {n: float(torch.cat(v).mean()) for n, v in truth.items()}}


def _calibration(log: pd.DataFrame, model: LoopModel, start: int) -> tuple[float, float]:
    """Platt scaling of ``model``'s scores into click probabilities, fitted on the slates of
    the day before ``start`` scored with the feedback logged before that day (no peeking);
    ``(1, 0)`` (the scores themselves) when there is no such day."""
    day = log[(log["kind"] == "slate") & (log["day"] == start - 1)]
    if len(day) == 0:
        return 1.0, 0.0
    users, rows = np.unique(day["user_idx"].to_numpy(), return_inverse=True)
    scores = model.scores(torch.as_tensor(users), feedback_since(log, 0, start - 1))
    _, platt = click_probabilities_from_scores(scores, rows, day["item_idx"].to_numpy(copy=True),
                                               day["label"].to_numpy(copy=True))
    return platt["slope"], platt["intercept"]


def _onboard(world, system, model, day, users, new_visit, consumed, gen, version):
    """Ask first-visit new users the strategy's questions; log and consume the answers."""
    first = new_visit == 0
    if system.onboarding is None or not bool(first.any()):
        return
    newu = users[first]
    needs = set(system.onboarding.needs)
    state = {"candidates": consumed.mask(newu)}
    if "counts" in needs:
        state["counts"] = torch.bincount(torch.tensor(system.history["item_idx"].to_numpy()),
                                         minlength=world.n_items).float()
    if {"features", "density"} & needs:
        state["features"] = model.item_features.float()
    if "density" in needs:
        state["density"] = cosine_density(model.item_features)
    if needs & set(POSTERIOR_FIELDS):
        post = model.posterior(newu)
        state["variance"], state["change"] = posterior_scores(
            post.cov, model.item_features, post.noise_var)
    asked = system.onboarding.select(SelectionState(**state), system.n_questions, gen)
    answers = world.answer(day, newu, asked)
    system.logger.log(day, newu, new_visit[first], "answer", asked, answers,
                      world.click_prob[newu[:, None], asked], version=version)
    consumed.add(newu.repeat_interleave(asked.shape[1]), asked.reshape(-1))


def run_loop(world: World, system: LoopSystem, progress: bool = False) -> LoopResult:
    """Run ``system`` in ``world`` for the world's horizon; see the module docstring."""
    cfg, k = world.config, world.slate_size
    model, version = system.model, 0
    consumed = _Consumed(system.history, world.n_items)
    gen = torch.Generator().manual_seed(system.seed)
    visits, decisions = [], []
    for day in progress_bar(range(cfg.n_days), progress, desc="days", leave=False):
        vis = world.visitors(day)
        users = torch.tensor(vis["user"].to_numpy())  # (b,)
        new_visit = torch.tensor(vis["new_visit"].to_numpy())  # (b,)
        _onboard(world, system, model, day, users, new_visit, consumed, gen, version)
        log = system.logger.frame()
        fb = feedback_since(log, 0, day + 1) if system.adapt else None
        available = consumed.mask(users)  # (b, n_items)
        scores = model.scores(users, fb, sample=system.policy.sample_scores, generator=gen)
        slates, props = system.policy.sample(scores, available, k, gen)  # (b, k) each
        clicks = world.click(day, users, slates)
        expected = world.expected(users, slates)
        system.logger.log(day, users, new_visit, "slate", slates, clicks, expected, props,
                          version)
        hit = clicks > 0
        consumed.add(users[:, None].expand_as(slates)[hit], slates[hit])
        visits.append(pd.DataFrame({
            "day": day, "user_idx": users.numpy(), "new_visit": new_visit.numpy(),
            "clicks": clicks.sum(1).numpy(), "expected": expected.sum(1).double().numpy(),
            "oracle": world.oracle(users, available).double().numpy(), "version": version}))
        if system.retrainer is None or not system.retrainer.due(day):
            continue
        log = system.logger.frame()
        if system.gate is None:
            model, version = system.retrainer.train(system.history, log, day + 1), version + 1
            decisions.append({"day": day, "deployed": True})
            continue
        start = day + 1 - system.gate.window_days
        if start <= model.trained_until:
            continue  # nothing new to train on outside the window
        candidate = system.retrainer.train(system.history, log, start)
        vals = window_values(world, log, system.history,
                             {"current": model, "candidate": candidate}, system.policy,
                             start, day + 1, reward_model=model, adapt=system.adapt)
        table = system.gate.evaluate(vals["rewards"], vals["actions"], vals["propensities"],
                                     vals["dists"], vals["q_hat"])
        deployed = system.gate.decide(table)
        row = {"day": day, "deployed": deployed,
               "true_current": vals["truth"]["current"],
               "true_candidate": vals["truth"]["candidate"]}
        for (pol, est), r in table.iterrows():
            row |= {f"{pol}_{est}": r["estimate"], f"{pol}_{est}_low": r["ci_low"],
                    f"{pol}_{est}_high": r["ci_high"]}
        decisions.append(row)
        if deployed:  # the approved recipe, refitted with the window's days too if asked
            model = (system.retrainer.train(system.history, log, day + 1)
                     if system.gate.refit else candidate)
            version += 1
    return LoopResult(system.logger.frame(), pd.concat(visits, ignore_index=True),
                      pd.DataFrame(decisions))


__all__ = ["LoopResult", "LoopSystem", "feedback_since", "positives", "run_loop",
           "window_values"]
