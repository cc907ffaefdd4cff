"""Numerical tests for mteb_midlayer.metrics.functional: closed forms, invariances, edge cases."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from mteb_midlayer.metrics import functional as F


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small eigenproblems: one thread is fastest, and MKL's OpenMP barrier can take ~1 s per
    call on an oversubscribed 2-core machine. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed), dtype=torch.float64)


def _orthogonal(d: int, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(_randn(d, d, seed=seed))
    return q


def _simplex(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """N points of a regular simplex (dimension N-1) placed in R^D by an isometry, D >= N-1."""
    pts = torch.eye(n, dtype=torch.float64) - 1.0 / n  # centred, rank N-1, in R^N
    u, _, _ = torch.linalg.svd(pts.T)  # columns: orthonormal basis of R^N, first N-1 span pts
    coords = pts @ u[:, : n - 1]  # (N, N-1) isometric coordinates
    emb = torch.linalg.qr(_randn(d, n - 1, seed=seed))[0]  # (D, N-1) orthonormal columns
    return coords @ emb.T + 3.0  # plus an offset that prep must remove


def _np_prep(x: np.ndarray) -> np.ndarray:
    r = x - x.mean(axis=0, keepdims=True)
    n = np.linalg.norm(r, axis=1, keepdims=True)
    return np.where(n > 0, r / np.where(n > 0, n, 1.0), 0.0)


def _np_renyi(lam: np.ndarray, alpha: float) -> float:
    lam = np.clip(lam, 0.0, None)
    p = lam / lam.sum()
    if alpha == 1.0:
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())
    return float(np.log((p**alpha).sum()) / (1.0 - alpha))


# ------------------------------------------------------------------------------------------------
# prep and spectra


def test_prep_centres_and_normalises_rows():
    x = _randn(20, 7) * 5 + 2
    r = F.prep(x)
    np.testing.assert_allclose(r.norm(dim=1).numpy(), np.ones(20), atol=1e-12)
    np.testing.assert_allclose(r.numpy(), _np_prep(x.numpy()), atol=1e-12)
    assert r.dtype == torch.float64


def test_prep_zero_row_stays_zero_even_with_roundoff():
    x = torch.full((3, 4), 0.1, dtype=torch.float64)  # mean of 0.1s is not exactly 0.1
    x = torch.cat([x, torch.tensor([[0.1, 0.1, 0.1, 1.1]], dtype=torch.float64)])
    r = F.prep(x)
    # rows 0..2 are equal, so their centred rows are equal and all unit, pointing opposite row 3
    assert torch.allclose(r[:3], r[0].expand(3, 4))
    np.testing.assert_allclose(r.norm(dim=1).numpy(), np.ones(4), atol=1e-12)
    const = F.prep(torch.full((5, 3), 0.1))
    assert torch.count_nonzero(const) == 0


def test_renyi_entropy_from_spectrum_closed_forms():
    lam = torch.tensor([3.0, 1.0, -1e-17])
    p = np.array([0.75, 0.25])
    assert float(F.renyi_entropy_from_spectrum(lam)) == pytest.approx(-(p * np.log(p)).sum())
    assert float(F.renyi_entropy_from_spectrum(lam, alpha=2)) == pytest.approx(-math.log(0.625))
    assert float(F.renyi_entropy_from_spectrum(lam, alpha=math.inf)) == pytest.approx(
        -math.log(0.75)
    )
    assert float(F.renyi_entropy_from_spectrum(torch.ones(8), alpha=0.5)) == pytest.approx(
        math.log(8)
    )
    assert float(F.renyi_entropy_from_spectrum(torch.zeros(4))) == 0.0
    batched = F.renyi_entropy_from_spectrum(torch.tensor([[1.0, 1.0], [1.0, 0.0]]))
    np.testing.assert_allclose(batched.numpy(), [math.log(2), 0.0], atol=1e-15)
    with pytest.raises(ValueError):
        F.renyi_entropy_from_spectrum(lam, alpha=0)
    with pytest.raises(ValueError):
        F.renyi_entropy_from_spectrum(torch.tensor([1.0, math.nan]))


@pytest.mark.parametrize("n,d", [(6, 40), (60, 5)])
def test_gram_spectrum_uses_smaller_side_with_same_nonzero_spectrum(n, d):
    x = F.prep(_randn(n, d))
    eig = F.gram_spectrum(x)
    assert eig.shape == (min(n, d),)
    full = np.linalg.eigvalsh(x.numpy() @ x.numpy().T)  # always the N x N form
    np.testing.assert_allclose(
        np.sort(eig.numpy())[::-1][: min(n, d)], np.sort(full)[::-1][: min(n, d)], atol=1e-10
    )


# ------------------------------------------------------------------------------------------------
# matrix / dataset entropy


@pytest.mark.parametrize("n", [3, 5, 12])
def test_simplex_gives_flat_spectrum_of_rank_n_minus_1(n):
    x = _simplex(n, d=30)
    raw = float(F.matrix_entropy(x, normalize=False))
    assert raw == pytest.approx(math.log(n - 1), abs=1e-10)
    assert float(F.dataset_entropy(x)) == pytest.approx(math.log(n - 1) / math.log(n), abs=1e-10)
    # Rényi entropy of a flat spectrum is the same for every alpha
    for alpha in (2.0, 0.5, math.inf):  # round-off zeros must not leak in for alpha < 1
        got = float(F.matrix_entropy(x, alpha=alpha, normalize=False))
        assert got == pytest.approx(math.log(n - 1), abs=1e-12)


def test_simplex_with_n_greater_than_d_reaches_normalised_one():
    d = 6
    x = _simplex(d + 1, d=d)  # D x D Gram branch: D equal eigenvalues
    assert float(F.dataset_entropy(x)) == pytest.approx(1.0, abs=1e-10)


def test_rank_one_gives_zero_entropy():
    t = _randn(50, 1)
    x = t * _randn(1, 16, seed=1) + _randn(1, 16, seed=2)  # points on a line, offset
    assert float(F.matrix_entropy(x, normalize=False)) == pytest.approx(0.0, abs=1e-10)
    assert float(F.dataset_entropy(x, alpha=2)) == pytest.approx(0.0, abs=1e-10)
    assert float(F.effective_rank(x)) == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize("n,d", [(8, 50), (80, 6)])
@pytest.mark.parametrize("alpha", [1.0, 2.0, 0.5])
def test_matrix_entropy_matches_direct_n_by_n_computation(n, d, alpha):
    x = _randn(n, d, seed=3) * torch.linspace(0.1, 3, d, dtype=torch.float64)
    r = _np_prep(x.numpy())
    expected = _np_renyi(np.linalg.eigvalsh(r @ r.T), alpha)
    # the reference keeps round-off eigenvalues (~1e-16), which alpha < 1 lifts to ~1e-8
    tol = 1e-9 if alpha >= 1 else 1e-6
    got = F.matrix_entropy(x, alpha=alpha, normalize=False)
    assert float(got) == pytest.approx(expected, abs=tol)
    normed = F.matrix_entropy(x, alpha=alpha)
    assert float(normed) == pytest.approx(expected / math.log(min(n, d)), abs=tol)


def test_dataset_entropy_invariances():
    x = _randn(40, 12, seed=4) * torch.linspace(0.2, 2, 12, dtype=torch.float64)
    base = float(F.dataset_entropy(x))
    perm = torch.randperm(40, generator=_gen(1))
    assert float(F.dataset_entropy(x[perm])) == pytest.approx(base, abs=1e-12)
    assert float(F.dataset_entropy(x @ _orthogonal(12))) == pytest.approx(base, abs=1e-10)
    assert float(F.dataset_entropy(7.5 * x)) == pytest.approx(base, abs=1e-12)
    assert float(F.dataset_entropy(x + 100.0)) == pytest.approx(base, abs=1e-9)
    assert float(F.dataset_entropy(x.float())) == pytest.approx(base, abs=1e-5)


def test_constant_rows_collapse_to_zero_entropy_and_zero_rank():
    x = torch.full((10, 4), 0.1)
    assert float(F.dataset_entropy(x)) == 0.0
    assert float(F.matrix_entropy(x, normalize=False)) == 0.0
    assert float(F.effective_rank(x)) == 0.0


@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(1, 5),  # N = 1
        torch.zeros(5),  # 1-D
        torch.zeros(2, 3, 4),  # 3-D
        torch.tensor([[0.0, 1.0], [math.nan, 2.0]]),
        torch.tensor([[0.0, 1.0], [math.inf, 2.0]]),
    ],
)
def test_invalid_matrices_raise(bad):
    for fn in (F.dataset_entropy, F.matrix_entropy, F.effective_rank, F.intrinsic_dimension):
        with pytest.raises(ValueError):
            fn(bad)


def test_normalised_entropy_needs_two_directions():
    x = _randn(5, 1)
    with pytest.raises(ValueError, match="min"):
        F.dataset_entropy(x)
    assert float(F.dataset_entropy(x, normalize=False)) == pytest.approx(0.0, abs=1e-12)


def test_numpy_input_accepted():
    x = _randn(10, 4)
    assert float(F.dataset_entropy(x.numpy())) == pytest.approx(float(F.dataset_entropy(x)))


# ------------------------------------------------------------------------------------------------
# effective rank


def test_effective_rank_of_known_singular_values():
    e1 = torch.tensor([1.0, 0.0, 0.0])
    e2 = torch.tensor([0.0, 1.0, 0.0])
    # Already centred with unit rows, so prep is the identity: singular values 2 and sqrt(2).
    x = torch.stack([e1, -e1, e1, -e1, e2, -e2])
    s = np.array([2.0, math.sqrt(2.0)])
    q = s / s.sum()
    assert float(F.effective_rank(x)) == pytest.approx(math.exp(-(q * np.log(q)).sum()), abs=1e-12)
    # ... which differs from exp of the Gram (squared singular value) entropy
    assert float(F.effective_rank(x)) != pytest.approx(
        math.exp(float(F.matrix_entropy(x, normalize=False)))
    )
    x2 = torch.stack([e1, -e1, e2, -e2])  # equal singular values -> rank 2 exactly
    assert float(F.effective_rank(x2)) == pytest.approx(2.0, abs=1e-12)


def test_effective_rank_invariances():
    x = _randn(30, 10, seed=5) * torch.linspace(0.1, 1, 10, dtype=torch.float64)
    base = float(F.effective_rank(x))
    assert 1.0 < base < 10.0
    assert float(F.effective_rank(x[torch.randperm(30, generator=_gen(2))])) == pytest.approx(base)
    assert float(F.effective_rank(x @ _orthogonal(10, seed=1))) == pytest.approx(base, abs=1e-10)
    assert float(F.effective_rank(0.01 * x)) == pytest.approx(base, abs=1e-10)


# ------------------------------------------------------------------------------------------------
# prompt entropy


def _token_texts(lengths, d, seed=0):
    g = _gen(seed)
    return [
        torch.randn(t, d, generator=g, dtype=torch.float64) * torch.linspace(0.1, 2, d).double()
        for t in lengths
    ]


def test_prompt_entropy_matches_per_text_loop_and_counts_skipped(monkeypatch):
    d = 6
    lengths = [1, 2, 3, 5, 5, 9, 20, 1, 4, 6, 6, 7]  # includes T < D, T = D, T > D
    texts = _token_texts(lengths, d)
    expected_norm = [float(F.matrix_entropy(z)) for z in texts if z.shape[0] >= 2]
    expected_raw = [float(F.matrix_entropy(z, normalize=False)) for z in texts if z.shape[0] >= 2]
    res = F.prompt_entropy(texts)
    assert isinstance(res, torch.Tensor) and res.ndim == 0
    assert float(res) == pytest.approx(np.mean(expected_norm), abs=1e-10)
    raw = F.prompt_entropy(texts, normalize=False)
    assert float(raw) == pytest.approx(np.mean(expected_raw), abs=1e-10)
    per = F.prompt_entropy_per_text(texts)
    assert (int(per.valid.sum()), int((~per.valid).sum())) == (10, 2)
    assert per.valid.tolist() == [t >= 2 for t in lengths]
    assert torch.isnan(per.normalized[~per.valid]).all()
    # Forcing tiny chunks (one text per padded batch) gives the same numbers.
    monkeypatch.setattr(F, "_CHUNK_ELEMENTS", 1)
    res_small = F.prompt_entropy(texts)
    assert float(res_small) == pytest.approx(float(res), abs=1e-12)


def test_prompt_entropy_two_tokens_is_zero_and_alpha_is_passed():
    texts = _token_texts([2, 2, 2], 5)
    res = F.prompt_entropy(texts)
    # two centred tokens are exact negatives -> rank 1 -> entropy 0
    assert float(res) == pytest.approx(0.0, abs=1e-12)
    texts = _token_texts([8, 11], 5, seed=3)
    exp = np.mean([float(F.matrix_entropy(z, alpha=2.0)) for z in texts])
    assert float(F.prompt_entropy(texts, alpha=2.0)) == pytest.approx(exp, abs=1e-10)


def test_prompt_entropy_padded_tensor_with_mask_matches_list():
    d = 4
    lengths = [3, 7, 1, 5]
    texts = _token_texts(lengths, d, seed=7)
    padded = torch.full((4, 7, d), 123.0, dtype=torch.float64)  # junk in padding positions
    mask = torch.zeros(4, 7, dtype=torch.bool)
    for i, z in enumerate(texts):
        padded[i, 7 - z.shape[0] :] = z  # left padding
        mask[i, 7 - z.shape[0] :] = True
    a = F.prompt_entropy(texts)
    b = F.prompt_entropy(padded, mask=mask)
    assert float(a) == pytest.approx(float(b), abs=1e-12)
    va = F.prompt_entropy_per_text(texts).valid
    vb = F.prompt_entropy_per_text(padded, mask=mask).valid
    assert va.tolist() == vb.tolist() == [True, True, False, True]


def test_prompt_entropy_invariant_to_rotation_and_scale():
    texts = _token_texts([4, 9, 15], 8, seed=2)
    q = _orthogonal(8, seed=4)
    base = float(F.prompt_entropy(texts))
    assert float(F.prompt_entropy([3.0 * z @ q for z in texts])) == pytest.approx(base)


def test_prompt_entropy_errors():
    with pytest.raises(ValueError, match="no text"):
        F.prompt_entropy(_token_texts([1, 1], 4))
    with pytest.raises(ValueError):
        F.prompt_entropy([])
    with pytest.raises(ValueError, match="D="):
        F.prompt_entropy([torch.zeros(3, 4), torch.zeros(3, 5)])
    with pytest.raises(ValueError, match="NaN"):
        F.prompt_entropy([torch.tensor([[0.0, 1.0], [math.nan, 0.0]])])
    with pytest.raises(ValueError):
        F.prompt_entropy([torch.zeros(3)])


# ------------------------------------------------------------------------------------------------
# curvature


def test_curvature_straight_line_is_zero():
    direction = _randn(1, 16)
    steps = torch.tensor([0.0, 0.5, 2.0, 2.1, 5.0, 9.0], dtype=torch.float64).unsqueeze(1)
    res = F.curvature([steps * direction + 1.0])
    assert float(res) == pytest.approx(0.0, abs=1e-12)


def test_curvature_right_angles_reversal_and_known_angle():
    zigzag = torch.tensor([[0, 0], [1, 0], [1, 1], [2, 1], [2, 2]], dtype=torch.float64)
    assert float(F.curvature([zigzag])) == pytest.approx(math.pi / 2, abs=1e-12)
    # back and forth: an abs(cos) implementation would give 0 here instead of pi
    reverse = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    assert float(F.curvature([reverse])) == pytest.approx(math.pi, abs=1e-12)
    theta = 2 * math.pi / 3  # 120 degrees, beyond the [0, pi/2] range of the folded version
    pts = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1 + math.cos(theta), math.sin(theta)]])
    assert float(F.curvature([pts])) == pytest.approx(theta, abs=1e-6)
    # layer value = mean over texts of per-text means
    res = F.curvature([zigzag, reverse])
    assert float(res) == pytest.approx((math.pi / 2 + math.pi) / 2, abs=1e-12)


def test_curvature_skips_zero_steps_and_short_texts():
    # repeated token: the zero step is skipped, leaving one right angle
    pts = torch.tensor([[0, 0], [1, 0], [1, 0], [1, 1], [0, 1]], dtype=torch.float64)
    per = F.curvature_per_text([pts])
    # pairs: (v0, v1=0) skip, (v1=0, v2) skip, (v2, v3) -> pi/2
    assert float(per.values[0]) == pytest.approx(math.pi / 2, abs=1e-12)
    short = [torch.zeros(1, 2), torch.zeros(2, 2), torch.ones(4, 2)]  # last: all steps zero
    res = F.curvature([*short, pts])
    assert float(res) == pytest.approx(math.pi / 2, abs=1e-12)  # the one valid text alone
    per = F.curvature_per_text([*short, pts])
    assert per.valid.tolist() == [False, False, False, True]
    with pytest.raises(ValueError, match="undefined"):
        F.curvature(short)


def test_curvature_matches_arccos_loop_and_invariances(monkeypatch):
    texts = _token_texts([3, 5, 8, 2, 13], 7, seed=9)
    expected = []
    for z in texts:
        if z.shape[0] < 3:
            continue
        v = z[1:] - z[:-1]
        cos = torch.nn.functional.cosine_similarity(v[:-1], v[1:], dim=-1).clamp(-1, 1)
        expected.append(float(torch.arccos(cos).mean()))
    res = F.curvature(texts)
    assert float(res) == pytest.approx(np.mean(expected), abs=1e-9)
    assert F.curvature_per_text(texts).valid.tolist() == [True, True, True, False, True]
    q = _orthogonal(7, seed=5)
    moved = [2.5 * z @ q + 4.0 for z in texts]
    assert float(F.curvature(moved)) == pytest.approx(float(res), abs=1e-10)
    monkeypatch.setattr(F, "_CHUNK_ELEMENTS", 1)  # one text per chunk
    assert float(F.curvature(texts)) == pytest.approx(float(res), abs=1e-12)


def test_curvature_padded_mask_input():
    texts = _token_texts([4, 6], 3, seed=1)
    padded = torch.zeros(2, 6, 3, dtype=torch.float64)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    for i, z in enumerate(texts):
        padded[i, : z.shape[0]] = z
        mask[i, : z.shape[0]] = True
    a, b = F.curvature(texts), F.curvature(padded, mask=mask)
    assert float(a) == pytest.approx(float(b), abs=1e-12)


# ------------------------------------------------------------------------------------------------
# curvature_abs (the research code's variant)


def _polygon(n: int, k: int, phase: float = 0.0) -> torch.Tensor:
    """Points at angles phase + j * 2 pi k / n on the unit circle: centred, unit rows already, so
    prep leaves them as they are; every turn between consecutive chords is 2 pi k / n."""
    ang = phase + 2 * math.pi * k / n * torch.arange(n, dtype=torch.float64)
    return torch.stack([torch.cos(ang), torch.sin(ang)], dim=1)


def _embed(z: torch.Tensor, d: int = 6, seed: int = 0) -> torch.Tensor:
    """Place 2-D points in R^D by an isometry, then scale and shift: prep undoes both."""
    q = _orthogonal(d, seed=seed)[:2]
    return 3.0 * z @ q + torch.linspace(-1.0, 2.0, d, dtype=torch.float64)


def test_curvature_abs_closed_forms():
    # triangle: every turn is 120 degrees; folded by |cos| to 60
    tri = _embed(_polygon(3, 1))
    assert float(F.curvature([tri])) == pytest.approx(2 * math.pi / 3, abs=1e-12)
    assert float(F.curvature_abs([tri])) == pytest.approx(math.pi / 3, abs=1e-12)
    # back and forth: raw pi, folded 0
    a, b = [1.0, 0.0], [-1.0, 0.0]
    reverse = _embed(torch.tensor([a, b, a, b], dtype=torch.float64))
    assert float(F.curvature([reverse])) == pytest.approx(math.pi, abs=1e-12)
    assert float(F.curvature_abs([reverse])) == pytest.approx(0.0, abs=1e-12)
    # zero-length steps count as angle 0 (raw curvature skips them): p1 p2 p3 p3 p1 p2 (mean 0)
    # has pairs (s1, s2) -> pi/3, (s2, 0) -> 0, (0, s3) -> 0, (s3, s1) -> pi/3, over T - 2 = 4
    p = _polygon(3, 1)
    repeated = _embed(p[[0, 1, 2, 2, 0, 1]])
    assert float(F.curvature_abs([repeated])) == pytest.approx(math.pi / 6, abs=1e-12)
    assert float(F.curvature([repeated])) == pytest.approx(2 * math.pi / 3, abs=1e-12)
    # short texts count 0 in the layer mean; raw curvature skips them
    short = [torch.ones(1, 6, dtype=torch.float64), _randn(2, 6)]
    per = F.curvature_abs_per_text([tri, *short])
    assert per.values.tolist() == pytest.approx([math.pi / 3, 0.0, 0.0], abs=1e-12)
    assert per.valid.all()
    assert float(F.curvature_abs([tri, *short])) == pytest.approx(math.pi / 9, abs=1e-12)
    assert float(F.curvature([tri, *short])) == pytest.approx(2 * math.pi / 3, abs=1e-12)
    # all steps zero (constant text): 0, where raw curvature is undefined
    assert float(F.curvature_abs([torch.ones(5, 6)])) == 0.0


def test_curvature_and_curvature_abs_run_in_opposite_directions_across_layers():
    # "Layer" l holds texts whose turns are 120, 144, then 154 degrees (triangle, pentagram
    # {5/2}, heptagram {7/3}): raw curvature rises while curvature_abs = pi - curvature falls.
    layers = [(3, 1), (5, 2), (7, 3)]
    raw, folded = [], []
    for n, k in layers:
        texts = [_embed(_polygon(n, k, phase), seed=s) for s, phase in enumerate([0.0, 0.4, 1.1])]
        raw.append(float(F.curvature(texts)))
        folded.append(float(F.curvature_abs(texts)))
        assert raw[-1] == pytest.approx(2 * math.pi * k / n, abs=1e-12)
        assert folded[-1] == pytest.approx(math.pi - raw[-1], abs=1e-12)
    assert raw == sorted(raw) and folded == sorted(folded, reverse=True)


def test_curvature_abs_matches_arccos_loop_with_per_text_prep(monkeypatch):
    texts = _token_texts([3, 5, 8, 2, 13, 1], 7, seed=4)
    texts[2][3] = texts[2][4]  # one zero-length step
    expected = []
    for z in texts:
        if z.shape[0] < 3:
            expected.append(0.0)
            continue
        r = F.prep(z)
        v = r[1:] - r[:-1]
        angles = []
        for s, t in itertools.pairwise(v):
            if s.norm() == 0 or t.norm() == 0:
                angles.append(0.0)
            else:
                cos = abs(float(s @ t / (s.norm() * t.norm())))
                angles.append(math.acos(min(cos, 1.0)))
        expected.append(float(np.mean(angles)))
    per = F.curvature_abs_per_text(texts)
    assert per.values.tolist() == pytest.approx(expected, abs=1e-9)
    res = F.curvature_abs(texts)
    assert float(res) == pytest.approx(np.mean(expected), abs=1e-9)
    monkeypatch.setattr(F, "_CHUNK_ELEMENTS", 1)  # one text per chunk
    assert float(F.curvature_abs(texts)) == pytest.approx(float(res), abs=1e-12)
    padded = torch.nn.utils.rnn.pad_sequence(texts, batch_first=True)
    mask = torch.zeros(padded.shape[:2], dtype=torch.bool)
    for i, z in enumerate(texts):
        mask[i, : z.shape[0]] = True
    assert float(F.curvature_abs(padded, mask=mask)) == pytest.approx(float(res), abs=1e-12)


# ------------------------------------------------------------------------------------------------
# InfoNCE


def test_infonce_identical_simplex_views_closed_form():
    n, tau = 6, 0.1
    x = _simplex(n, d=10)
    # prep rows are unit vectors with pairwise cosine -1/(n-1)
    pos, neg = 1.0 / tau, -1.0 / ((n - 1) * tau)
    expected = -pos + math.log(math.exp(pos) + (n - 1) * math.exp(neg))
    loss = F.infonce(x, x, tau=tau)
    assert float(loss) == pytest.approx(expected, abs=1e-10)
    assert float(F.infonce_mi_bound(loss, n)) == pytest.approx(1 - expected / math.log(n))


def test_infonce_matches_direct_formula_and_invariances():
    a = _randn(20, 5, seed=1)
    b = a + 0.3 * _randn(20, 5, seed=2)
    pa, pb = _np_prep(a.numpy()), _np_prep(b.numpy())
    logits = pa @ pb.T / 0.1
    lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    expected = float(np.mean(lse - np.diag(logits)))
    loss = float(F.infonce(a, b))
    assert loss == pytest.approx(expected, abs=1e-10)
    perm = torch.randperm(20, generator=_gen(3))
    assert float(F.infonce(a[perm], b[perm])) == pytest.approx(loss, abs=1e-10)
    q = _orthogonal(5, seed=2)
    assert float(F.infonce(3 * a @ q, b @ q)) == pytest.approx(loss, abs=1e-10)
    assert float(F.infonce(a, a)) < loss < float(F.infonce(a, _randn(20, 5, seed=7)))


def test_infonce_errors():
    with pytest.raises(ValueError):
        F.infonce(torch.zeros(1, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="same N"):
        F.infonce(_randn(4, 3), _randn(5, 3))
    with pytest.raises(ValueError, match="same D"):
        F.infonce(_randn(4, 3), _randn(4, 2))
    with pytest.raises(ValueError):
        F.infonce(_randn(4, 3), _randn(4, 3), tau=0)
    with pytest.raises(ValueError):
        F.infonce_mi_bound(1.0, 1)


# ------------------------------------------------------------------------------------------------
# LiDAR


def _np_lidar(views: np.ndarray, delta=1e-4, eps=1e-7) -> float:
    n, v, d = views.shape
    x = np.stack([_np_prep(views[:, j, :]) for j in range(v)], axis=1)
    mu_i = x.mean(axis=1)
    mu = x.reshape(-1, d).mean(axis=0)
    sb = sum(np.outer(m - mu, m - mu) for m in mu_i) / n
    sw = sum(np.outer(x[i, j] - mu_i[i], x[i, j] - mu_i[i]) for i in range(n) for j in range(v))
    sw = sw / (n * v) + delta * np.eye(d)
    w, q = np.linalg.eigh(sw)
    isq = q @ np.diag(w**-0.5) @ q.T
    lam = np.clip(np.linalg.eigvalsh(isq @ sb @ isq), 0, None)
    p = lam / lam.sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def test_lidar_matches_direct_numpy_on_gaussian_views():
    base = _randn(30, 1, 6, seed=1)
    views = base + 0.5 * _randn(30, 4, 6, seed=2)
    got = float(F.lidar(views))
    assert got == pytest.approx(_np_lidar(views.numpy()), rel=1e-9)
    assert 1.0 < got <= 6.0 + 1e-3
    iso = _randn(25, 3, 5, seed=3)  # isotropic noise, no text identity
    assert float(F.lidar(iso)) == pytest.approx(_np_lidar(iso.numpy()), rel=1e-9)


def test_lidar_known_rank():
    k, d, v, delta, eps = 3, 8, 4, 1e-4, 1e-7
    eye = torch.eye(d, dtype=torch.float64)[:k]
    texts = torch.cat([eye, -eye])  # 2k texts at +-e_m: centred, unit rows
    views = texts.unsqueeze(1).expand(2 * k, v, d).clone()  # identical views: S_w = delta I
    p = np.array([1.0 / k + eps] * k + [eps] * (d - k))
    expected = math.exp(-(p * np.log(p)).sum())
    got = float(F.lidar(views, delta=delta, eps=eps))
    assert got == pytest.approx(expected, rel=1e-9)
    assert got == pytest.approx(k, rel=1e-4)  # an effective rank, not its log


def test_lidar_invariances_and_errors():
    views = _randn(20, 1, 5, seed=4) + 0.3 * _randn(20, 3, 5, seed=5)
    base = float(F.lidar(views))
    perm = torch.randperm(20, generator=_gen(6))
    assert float(F.lidar(views[perm])) == pytest.approx(base, rel=1e-9)
    q = _orthogonal(5, seed=6)
    assert float(F.lidar(views @ q)) == pytest.approx(base, rel=1e-8)
    with pytest.raises(ValueError):
        F.lidar(_randn(20, 5))
    with pytest.raises(ValueError):
        F.lidar(_randn(20, 1, 5))
    with pytest.raises(ValueError):
        F.lidar(_randn(1, 3, 5))
    bad = views.clone()
    bad[0, 0, 0] = math.inf
    with pytest.raises(ValueError):
        F.lidar(bad)


# ------------------------------------------------------------------------------------------------
# DiME


def _np_dime(a: np.ndarray, b: np.ndarray, perms: list[np.ndarray], alpha=1.0) -> float:
    ra, rb = _np_prep(a), _np_prep(b)
    ka, kb = ra @ ra.T, rb @ rb.T

    def h(k):
        k = k / np.trace(k)
        return _np_renyi(np.linalg.eigvalsh(k), alpha)

    return float(np.mean([h(ka * kb[p][:, p]) for p in perms]) - h(ka * kb))


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_dime_matches_direct_numpy_with_same_permutations(alpha):
    a = _randn(25, 4, seed=1)
    b = a + 0.2 * _randn(25, 4, seed=2)
    g = _gen(11)
    perms = [torch.randperm(25, generator=g).numpy() for _ in range(5)]
    got = float(F.dime(a, b, alpha=alpha, n_perms=5, generator=_gen(11)))
    assert got == pytest.approx(_np_dime(a.numpy(), b.numpy(), perms, alpha), abs=1e-10)


def test_dime_identical_views_beat_independent_views():
    a = _randn(120, 6, seed=3)
    same = float(F.dime(a, a))
    indep = float(F.dime(a, _randn(120, 6, seed=4)))
    assert same > 0.1
    assert abs(indep) < 0.05
    assert same > indep
    # reproducible by default (fixed seed), different D between views allowed
    assert float(F.dime(a, a)) == same
    assert math.isfinite(float(F.dime(a, a[:, :3])))
    with pytest.raises(ValueError):
        F.dime(a, a[:10])
    with pytest.raises(ValueError):
        F.dime(a, a, n_perms=0)


# ------------------------------------------------------------------------------------------------
# TwoNN intrinsic dimension


@pytest.mark.parametrize("k", [2, 3])
def test_twonn_recovers_dimension_of_uniform_cube_in_higher_space(k):
    n, d = 2000, 12
    cube = torch.rand(n, k, generator=_gen(k), dtype=torch.float64)
    basis = torch.linalg.qr(_randn(d, k, seed=k))[0]  # k-dim subspace of R^12
    x = cube @ basis.T + 5.0
    est = float(F.intrinsic_dimension(x, block_size=300))
    assert est == pytest.approx(k, rel=0.1)
    perm = torch.randperm(n, generator=_gen(0))
    assert float(F.intrinsic_dimension(x[perm])) == pytest.approx(est, rel=1e-9)
    assert float(F.intrinsic_dimension(3.0 * x)) == pytest.approx(est, rel=1e-9)


def test_twonn_skips_exact_duplicates_and_rejects_degenerate():
    x = torch.rand(500, 2, generator=_gen(1), dtype=torch.float64)
    base = float(F.intrinsic_dimension(x))
    with_dups = torch.cat([x, x[:50]])  # 50 points now have r1 = 0 and are skipped
    est = float(F.intrinsic_dimension(with_dups))
    assert math.isfinite(est)
    assert est == pytest.approx(base, rel=0.15)
    with pytest.raises(ValueError, match="undefined"):
        F.intrinsic_dimension(torch.ones(5, 3))  # all duplicates
    with pytest.raises(ValueError):
        F.intrinsic_dimension(torch.rand(2, 3))  # needs 3 points


@pytest.mark.parametrize("n", [9, 700])
def test_twonn_faiss_neighbours_equal_torch(n):
    """The faiss index finds the same neighbours: the same value as the torch path, duplicates,
    clusters tighter than float32 and block edges included."""
    pytest.importorskip("faiss")
    x = _randn(n, 16, seed=n)
    near = torch.arange(0, n - 1, 11)
    x[near + 1] = x[near] + 1e-9  # closer than float32 resolves
    x[n // 2 :: 7] = x[n // 2 - 1]  # exact duplicates
    torch_value = F.intrinsic_dimension(x, block_size=64, search_backend="torch")
    faiss_value = F.intrinsic_dimension(x, block_size=64, search_backend="faiss")
    assert float(faiss_value) == pytest.approx(float(torch_value), rel=1e-12)
    with pytest.raises(ValueError, match="Unknown search backend"):
        F.intrinsic_dimension(x, search_backend="annoy")


def test_collapsed_views_have_documented_values():
    n = 10
    const = torch.full((n, 4), 0.3, dtype=torch.float64)
    assert float(F.infonce(const, const)) == pytest.approx(math.log(n), abs=1e-12)
    assert float(F.infonce_mi_bound(F.infonce(const, const), n)) == pytest.approx(0.0, abs=1e-12)
    assert float(F.dime(const, const)) == 0.0
    assert float(F.lidar(const.unsqueeze(1).expand(n, 3, 4))) == 0.0
    # the float32 scatter the driver uses keeps the same convention
    assert float(F.lidar(const.unsqueeze(1).expand(n, 3, 4), scatter_dtype=torch.float32)) == 0.0


@pytest.mark.parametrize(("rank", "noise"), [(12, 0.05), (2, 1e-5), (64, 0.5)])
def test_lidar_float32_scatter_agrees_with_float64(rank, noise):
    """The driver's float32 scatter stays within 1e-6 of float64, collapsed views included
    (delta = 1e-4 regularises far above float32 round-off)."""
    base = _randn(400, rank, seed=1) @ _randn(rank, 48, seed=2) + 0.1 * _randn(400, 48, seed=3)
    views = (base.unsqueeze(1) + noise * _randn(400, 6, 48, seed=4) + 3.0).float()
    exact = float(F.lidar(views))
    assert exact > 1.0
    assert float(F.lidar(views, scatter_dtype=torch.float32)) == pytest.approx(exact, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_inputs_raise_a_clear_error_everywhere(bad, dtype):
    # One bad entry anywhere, for every entry point and both float widths.
    x = _randn(6, 4).to(dtype)
    x[3, 2] = bad
    views = _randn(6, 3, 4).to(dtype)
    views[5, 1, 0] = bad
    calls = [
        lambda: F.dataset_entropy(x),
        lambda: F.effective_rank(x),
        lambda: F.intrinsic_dimension(x),
        lambda: F.infonce(x, _randn(6, 4)),
        lambda: F.infonce(_randn(6, 4), x),
        lambda: F.dime(x, _randn(6, 4)),
        lambda: F.lidar(views),
        lambda: F.lidar(views, scatter_dtype=torch.float32),
        lambda: F.prompt_entropy([_randn(3, 4), x]),
        lambda: F.curvature([x]),
        lambda: F.curvature_abs([x]),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="NaN or inf"):
            call()
