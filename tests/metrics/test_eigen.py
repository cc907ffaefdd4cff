"""The GIL-free LAPACK eigensolver and the per-core map that DiME's solves run on."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import scipy.linalg
import torch

from mteb_midlayer.metrics import eigen
from mteb_midlayer.metrics import functional as F


def _sym(n: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n + 3, generator=g, dtype=torch.float64)
    return (x @ x.T).to(dtype)


def test_cython_lapack_is_used_here():
    """The fast path must not silently fall back on the platforms we ship for."""
    assert eigen._syevd("d") is not None
    assert eigen._syevd("s") is not None


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_eigvalsh_matches_scipy_and_torch(dtype):
    m = _sym(60, dtype)
    got = eigen.eigvalsh(m)
    assert got.dtype == dtype and got.shape == (60,)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    want = scipy.linalg.eigh(m.numpy(), eigvals_only=True, driver="evd")
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=tol * float(m.abs().max()))
    assert torch.equal(eigen.eigvalsh(m), got)  # deterministic
    torch.testing.assert_close(
        got, torch.linalg.eigvalsh(m), atol=tol * float(m.abs().max()), rtol=0
    )


def test_eigvalsh_known_spectrum_and_reads_only_the_lower_triangle():
    q, _ = torch.linalg.qr(
        torch.randn(8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    )
    lam = torch.arange(1.0, 9.0, dtype=torch.float64)
    m = (q * lam) @ q.T
    garbage = m.clone()
    upper = torch.triu(torch.ones(8, 8, dtype=torch.bool), diagonal=1)
    garbage[upper] = 1e6  # only the lower triangle may be read, as in scipy.linalg.eigh
    torch.testing.assert_close(eigen.eigvalsh(garbage), lam, atol=1e-12, rtol=0)


def test_eigvalsh_leaves_input_alone_unless_overwrite_and_takes_views():
    m = _sym(30, torch.float64)
    before = m.clone()
    want = eigen.eigvalsh(m)
    assert torch.equal(m, before)
    torch.testing.assert_close(eigen.eigvalsh(m.T), want, atol=1e-10, rtol=0)  # not C-contiguous
    big = _sym(40, torch.float64)
    torch.testing.assert_close(eigen.eigvalsh(big[:30, :30]), torch.linalg.eigvalsh(big[:30, :30]))
    scratch = m.clone()
    assert torch.equal(eigen.eigvalsh(scratch, overwrite=True), want)
    with pytest.raises(ValueError, match="square"):
        eigen.eigvalsh(torch.zeros(3, 4, dtype=torch.float64))


def test_eigvalsh_edge_sizes_and_other_inputs():
    assert eigen.eigvalsh(torch.tensor([[2.5]], dtype=torch.float64)).tolist() == [2.5]
    assert eigen.eigvalsh(torch.zeros(0, 0, dtype=torch.float64)).shape == (0,)
    batch = torch.stack([_sym(5, torch.float64, s) for s in range(3)])
    torch.testing.assert_close(eigen.eigvalsh(batch), torch.linalg.eigvalsh(batch))


def test_fallback_without_cython_lapack_gives_the_same_values(monkeypatch):
    m = _sym(50, torch.float64)
    fast = eigen.eigvalsh(m)
    monkeypatch.setattr(eigen, "_syevd", lambda prefix: None)
    torch.testing.assert_close(eigen.eigvalsh(m), fast, atol=1e-12 * float(m.abs().max()), rtol=0)


def test_eigvalsh_releases_the_gil_so_solves_overlap():
    """While one thread is inside LAPACK, another Python thread keeps running."""
    m = _sym(700, torch.float64)
    ticks = 0
    done = threading.Event()

    def count() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1

    counter = threading.Thread(target=count)
    counter.start()
    before = ticks
    try:
        for _ in range(3):
            eigen.eigvalsh(m)
        during = ticks - before
    finally:
        done.set()
        counter.join()
    assert during > 1000


def test_parallel_map_keeps_order_and_checks_workers():
    items = list(range(7))
    assert eigen.parallel_map(lambda x: x * x, items, workers=3) == [x * x for x in items]
    assert eigen.parallel_map(lambda x: x, [], workers=2) == []
    with pytest.raises(ValueError, match="workers"):
        eigen.parallel_map(lambda x: x, items, workers=0)


def test_parallel_map_runs_jobs_on_one_linalg_thread_and_restores():
    before = torch.get_num_threads()
    seen = eigen.parallel_map(lambda _: torch.get_num_threads(), range(4), workers=2)
    assert seen == [1, 1, 1, 1]
    assert torch.get_num_threads() == before


def test_dime_does_not_depend_on_worker_count():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(150, 20, generator=g, dtype=torch.float64)
    b = a + 0.5 * torch.randn(150, 20, generator=g, dtype=torch.float64)
    values = {w: float(F.dime(a, b, n_perms=6, workers=w)) for w in (1, 2, 4)}
    assert values[1] == values[2] == values[4]
