"""The Makefile's MKL vendor shim (see its comment): with it MKL runs its AVX-512 kernels on AMD
processors; products, solves and factorizations must still agree with float64 to float32
rounding, for the shapes and layouts the library uses (skinny, transposed, batched, tiny)."""

import os
from pathlib import Path

import pytest
import torch

SHIM = "libmkl_vendor_shim.so"
pytestmark = pytest.mark.skipif(SHIM not in os.environ.get("LD_PRELOAD", ""),
                                reason="the MKL shim is not preloaded (not an AMD AVX-512 machine)")


def test_shim_is_loaded_in_this_process():
    assert SHIM in Path("/proc/self/maps").read_text()


@pytest.mark.parametrize("m,k,n", [(2000, 64, 1682), (256, 50, 1682), (943, 1682, 500),
                                   (7, 3, 5), (1, 128, 1)])
@pytest.mark.parametrize("layout", ["nn", "tn", "nt"])
def test_products_agree_with_float64(m, k, n, layout):
    g = torch.Generator().manual_seed(m * n + k)
    a = torch.randn(k, m, generator=g).T if layout[0] == "t" else torch.randn(m, k, generator=g)
    b = torch.randn(n, k, generator=g).T if layout[1] == "t" else torch.randn(k, n, generator=g)
    exact = a.double() @ b.double()
    scale = (a.double().abs() @ b.double().abs()).max()
    assert ((a @ b).double() - exact).abs().max() <= 1e-5 * scale
    bias = torch.randn(n, generator=g)
    assert (torch.addmm(bias, a, b).double() - (bias.double() + exact)).abs().max() <= 1e-5 * scale


def test_batched_cholesky_and_solves_agree_with_float64():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 101, 40, generator=g)
    gram = x @ x.transpose(1, 2) + 0.1 * torch.eye(101)  # (300, 101, 101), well conditioned
    rhs = torch.randn(300, 101, 1, generator=g)
    exact = torch.linalg.solve(gram.double(), rhs.double())
    chol = torch.linalg.cholesky(gram)
    for got in (torch.cholesky_solve(rhs, chol), torch.linalg.solve(gram, rhs)):
        err = (got.double() - exact).norm(dim=1) / exact.norm(dim=1)
        assert err.max() < 1e-3  # condition numbers here are ~1e3; float32 eps 1.2e-7
    w, v = torch.linalg.eigh(gram[0])
    assert torch.allclose(v @ torch.diag(w) @ v.T, gram[0], atol=1e-3, rtol=1e-4)
