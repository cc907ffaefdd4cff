"""Unsupervised layer metrics as pure tensor functions (torchmetrics-style functional API).

Every definition follows ``METRICS.md`` (the "Layer by Layer" metrics, Skean et al. 2025), including
its list of research-code mistakes we deliberately do not copy.

Conventions shared by all functions here:

* Inputs are ``torch.Tensor`` (NumPy arrays are accepted and converted). Work happens on the
  input's device; maths is done in float64 because spectra of near-collapsed representations are
  dominated by round-off in float32 (the one opt-in exception: LiDAR's scatter, see
  :func:`lidar`).
* Every metric returns a 0-dim float64 tensor on the input's device (``float(result)`` gives a
  Python number). The token-level ``*_per_text`` functions return small ``NamedTuple`` s with
  one value per text and which texts had a defined value (for aggregating across batches).
* Invalid input (wrong ``ndim``, too few rows, NaN/inf, mismatched shapes) raises ``ValueError``;
  no function silently returns NaN.

Degenerate-but-valid inputs have documented values rather than errors:

* A *collapsed* matrix (all rows equal, so ``prep`` gives the zero matrix) has an all-zero spectrum.
  We define its entropy as 0 and its effective rank as 0: the representation occupies no
  direction at all, the limit of "more collapsed means lower".
* Collapsed views: InfoNCE logits are all 0, so the loss is ``log N`` (MI bound 0); DiME is 0;
  LiDAR is 0 (no between-text scatter).
* In ``prep``, a centred row whose norm is below ``~1e-13`` relative to the data scale counts as
  zero: centring constant rows leaves float round-off, which must not be blown up to a unit vector.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from .eigen import eigvalsh, parallel_map

__all__ = [
    "PerTextCurvature",
    "PerTextPromptEntropy",
    "curvature",
    "curvature_abs",
    "curvature_abs_per_text",
    "curvature_per_text",
    "dataset_entropy",
    "dime",
    "effective_rank",
    "gram_spectrum",
    "infonce",
    "infonce_mi_bound",
    "intrinsic_dimension",
    "lidar",
    "matrix_entropy",
    "prep",
    "prompt_entropy",
    "prompt_entropy_per_text",
    "renyi_entropy_from_spectrum",
]

_DTYPE = torch.float64
# Centred rows with norm <= _ZERO_ROW_EPS * eps * sqrt(D) * max|x| are treated as exactly zero,
# eps being the machine epsilon of the dtype the centring ran in.
_ZERO_ROW_EPS = 100
# Element budget for one padded chunk in the batched token-level metrics (float64: 8 bytes each).
_CHUNK_ELEMENTS = 2**24


# --------------------------------------------------------------------------------------------
# validation helpers


def _as_real(x: Tensor | object, name: str, dtype: torch.dtype = _DTYPE) -> Tensor:
    """``x`` as a real tensor of ``dtype`` (float64 unless a caller opts out), or ValueError."""
    if not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(x)
        except Exception as exc:  # pragma: no cover - exotic inputs
            raise ValueError(
                f"{name} must be a tensor or array-like, got {type(x).__name__}"
            ) from exc
    if x.is_complex():
        raise ValueError(f"{name} must be real, got dtype {x.dtype}")
    return x.to(dtype)


def _check_finite(x: Tensor, name: str) -> None:
    # min and max propagate NaN and show +-inf, and never overflow: one fused reduction in the
    # input's own dtype (~30x faster than a float64 sum or a boolean isfinite copy).
    if x.numel() == 0:
        return
    lo, hi = torch.aminmax(x)
    if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
        raise ValueError(f"{name} contains NaN or inf")


def _matrix(x: Tensor | object, name: str = "x", min_rows: int = 2) -> Tensor:
    """Validate an (N, D) matrix and return it as float64."""
    x = _as_real(x, name)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(x.shape)}")
    n, d = x.shape
    if n < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows, got N={n}")
    if d < 1:
        raise ValueError(f"{name} needs at least one column, got D={d}")
    _check_finite(x, name)
    return x


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if math.isnan(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be > 0 (use math.inf for min-entropy), got {alpha}")
    return alpha


def _token_list(
    token_states: Sequence[Tensor] | Tensor, mask: Tensor | None, name: str = "token_states"
) -> list[Tensor]:
    """Normalise token-state input to a list of validated float64 (T_i, D) tensors.

    Accepts a sequence of (T_i, D) tensors, or a padded (B, T, D) tensor with an optional (B, T)
    mask of real tokens (left or right padding both work: boolean selection keeps token order).
    """
    if isinstance(token_states, Tensor):
        if token_states.ndim != 3:
            raise ValueError(
                f"{name} as a tensor must be 3-D (B, T, D), got shape {tuple(token_states.shape)}"
            )
        if mask is None:
            items = list(token_states.unbind(0))
        else:
            if mask.shape != token_states.shape[:2]:
                raise ValueError(
                    f"mask shape {tuple(mask.shape)} does not match {name} "
                    f"(B, T) = {tuple(token_states.shape[:2])}"
                )
            m = mask.to(device=token_states.device, dtype=torch.bool)
            items = [z[mi] for z, mi in zip(token_states.unbind(0), m.unbind(0), strict=True)]
    else:
        if mask is not None:
            raise ValueError("mask is only meaningful with a padded (B, T, D) tensor")
        if isinstance(token_states, str | bytes):
            raise ValueError(f"{name} must be a sequence of (T, D) tensors")
        items = list(token_states)
    if not items:
        raise ValueError(f"{name} is empty")
    out: list[Tensor] = []
    dim: int | None = None
    for i, z in enumerate(items):
        z = _as_real(z, f"{name}[{i}]")
        if z.ndim != 2:
            raise ValueError(f"{name}[{i}] must be 2-D (T, D), got shape {tuple(z.shape)}")
        if dim is None:
            dim = z.shape[1]
        elif z.shape[1] != dim:
            raise ValueError(f"{name}[{i}] has D={z.shape[1]}, expected D={dim} like the others")
        _check_finite(z, f"{name}[{i}]")
        out.append(z)
    if dim is not None and dim < 1:
        raise ValueError(f"{name} needs at least one feature column")
    if any(z.device != out[0].device for z in out):
        raise ValueError(f"all tensors in {name} must be on the same device")
    return out


# --------------------------------------------------------------------------------------------
# building blocks


def _zero_row_rtol(dtype: torch.dtype) -> float:
    return _ZERO_ROW_EPS * torch.finfo(dtype).eps


def _prep_padded(z: Tensor, mask: Tensor) -> Tensor:
    """Batched ``prep`` of (B, T, D) with a (B, T) bool mask; padded rows come out as zero rows.

    ``z``'s padded rows must be zero, as ``pad_sequence`` leaves them: then sums and max-abs over
    all rows are those over the real rows, and the mask is applied once. Zero rows are harmless
    downstream: they add only zero eigenvalues to a Gram matrix, which contribute nothing to any
    Rényi entropy with alpha > 0. Same zero-row rule as :func:`_prep_rows`.
    """
    m = mask.unsqueeze(-1).to(z.dtype)
    mean = z.sum(dim=1, keepdim=True) / m.sum(dim=1, keepdim=True).clamp_min(1.0)
    r = (z - mean).mul_(m)
    norms = torch.linalg.vector_norm(r, dim=-1, keepdim=True)
    scale = z.abs().amax(dim=(1, 2), keepdim=True)
    zero = norms <= _zero_row_rtol(z.dtype) * math.sqrt(z.shape[-1]) * scale
    return r.div_(norms.masked_fill_(zero, 1.0)).masked_fill_(zero, 0.0)


def _prep_rows(z: Tensor, row_dim: int) -> Tensor:
    """``prep`` of every matrix of a dense tensor whose rows run along ``row_dim`` (features last).

    The unmasked twin of :func:`_prep_padded` (same zero-row rule), without the mask passes and
    layout copies: LiDAR preps its (N, V, D) views along dim 0 in place of V transposed copies.
    Returns a new tensor.
    """
    r = z - z.mean(dim=row_dim, keepdim=True)
    norms = torch.linalg.vector_norm(r, dim=-1, keepdim=True)
    # max |z| per matrix; abs().amax() is ~7x faster than vector_norm(ord=inf) over two dims
    scale = z.abs().amax(dim=(row_dim, -1), keepdim=True)
    zero = norms <= _zero_row_rtol(z.dtype) * math.sqrt(z.shape[-1]) * scale
    return r.div_(norms.masked_fill_(zero, 1.0)).masked_fill_(zero, 0.0)


def prep(x: Tensor) -> Tensor:
    """Centre by the mean row (over all N rows), then scale each row to unit L2 norm.

    Centring removes the common offset that would otherwise dominate every Gram matrix; unit rows
    make the Gram a cosine-similarity kernel with trace = number of non-zero rows. A row that is
    (numerically) zero after centring stays zero, so N = 1 gives a zero row. Returns float64 of
    shape (N, D). (The metrics, having validated their input once, call ``_prep_rows`` directly.)
    """
    return _prep_rows(_matrix(x, "x", min_rows=1), row_dim=0)


def renyi_entropy_from_spectrum(eigs: Tensor, alpha: float = 1.0) -> Tensor:
    """Rényi entropy (nats) of the normalised spectrum of a PSD matrix, over the last dim.

    Round-off negatives (and positives below ``k * eps * max(lam)``) are set to 0 and
    ``p = lam / sum(lam)``. ``alpha=1`` is Shannon entropy,
    ``alpha=math.inf`` the min-entropy ``-log max p``. An all-zero spectrum (collapsed
    representation) has entropy 0 by convention. Works batched: shape (..., k) -> (...).
    """
    alpha = _check_alpha(alpha)
    lam = _as_real(eigs, "eigs")
    if lam.ndim < 1 or lam.shape[-1] == 0:
        raise ValueError(f"eigs must have a non-empty last dimension, got shape {tuple(lam.shape)}")
    _check_finite(lam, "eigs")
    # Round-off: negatives, and positives below the eigensolver's resolution (the LAPACK rank
    # tolerance k * eps * max), are exact zeros (centring always leaves one). For alpha < 1 the
    # noise would otherwise show up as p**alpha ~ 1e-8.
    lam = lam.clamp_min(0.0)
    tol = lam.shape[-1] * torch.finfo(_DTYPE).eps * lam.amax(dim=-1, keepdim=True)
    lam = torch.where(lam > tol, lam, 0.0)
    total = lam.sum(dim=-1, keepdim=True)
    empty = total <= 0
    p = lam / torch.where(empty, torch.ones_like(total), total)
    if alpha == 1.0:
        h = -torch.xlogy(p, p).sum(dim=-1)
    elif math.isinf(alpha):
        h = -torch.log(p.amax(dim=-1).clamp_min(torch.finfo(_DTYPE).tiny))
    else:
        h = torch.log((p**alpha).sum(dim=-1).clamp_min(torch.finfo(_DTYPE).tiny)) / (1.0 - alpha)
    return torch.where(empty.squeeze(-1), torch.zeros_like(h), h)


def gram_spectrum(x: Tensor) -> Tensor:
    """Eigenvalues (ascending, >= 0) of ``x x^T``, computed from the smaller Gram matrix.

    ``x x^T`` (N x N) and ``x^T x`` (D x D) share their non-zero spectrum, so the smaller one gives
    the same entropy at a fraction of the cost. ``x`` is used as given (call ``prep`` first); the
    matrix entries are never clamped, only round-off negative eigenvalues are set to 0.
    Returns min(N, D) eigenvalues.
    """
    x = _matrix(x, "x", min_rows=1)
    n, d = x.shape
    gram = x @ x.T if n <= d else x.T @ x
    return eigvalsh(gram).clamp_min(0.0)


def _normaliser(n: int, d: int, what: str) -> float:
    k = min(n, d)
    if k < 2:
        raise ValueError(
            f"normalised {what} needs min(N, D) >= 2 (it divides by log(min(N, D))), "
            f"got N={n}, D={d}; pass normalize=False for the raw value"
        )
    return math.log(k)


def matrix_entropy(x: Tensor, alpha: float = 1.0, normalize: bool = True) -> Tensor:
    """Rényi matrix entropy of ``prep(x) prep(x)^T`` for x of shape (N, D), N >= 2.

    With ``normalize`` the value is divided by ``log(min(N, D))`` (the entropy of a flat spectrum
    over that many directions; centring caps the rank at N - 1, so a perfect spread of N <= D
    points reaches log(N-1)/log(N), not 1). A collapsed matrix (all rows equal) gives 0.
    """
    alpha = _check_alpha(alpha)
    x = _matrix(x, "x", min_rows=2)
    h = renyi_entropy_from_spectrum(gram_spectrum(_prep_rows(x, row_dim=0)), alpha)
    if normalize:
        h = h / _normaliser(*x.shape, what="matrix entropy")
    return h


def dataset_entropy(x: Tensor, alpha: float = 1.0, normalize: bool = True) -> Tensor:
    """Dataset entropy: matrix entropy of N pooled embeddings (N, D), normalised by default.

    ``prep`` runs once over all N rows, never per mini-batch (per-batch centring was a bug of the
    research code). ``normalize=False`` gives the raw value in nats.
    """
    return matrix_entropy(x, alpha=alpha, normalize=normalize)


def effective_rank(x: Tensor) -> Tensor:
    """Roy & Vetterli (2007) effective rank of ``prep(x)``: ``exp(-sum q log q)``, q = s / sum(s).

    Uses singular values ``s`` (not their squares, which would give ``exp`` of the Gram entropy):
    it is 1 for a rank-1 matrix and k for k equal singular values. A collapsed matrix gives 0.
    """
    x = _matrix(x, "x", min_rows=2)
    s = torch.linalg.svdvals(_prep_rows(x, row_dim=0))
    if float(s.sum()) <= 0:
        return torch.zeros((), dtype=_DTYPE, device=x.device)
    return torch.exp(renyi_entropy_from_spectrum(s, 1.0))


# --------------------------------------------------------------------------------------------
# token-level metrics


class PerTextPromptEntropy(NamedTuple):
    """Per-text prompt entropy, aligned with the input texts.

    ``normalized`` and ``raw`` hold NaN exactly where ``valid`` is False (texts with T < 2), so
    callers must filter with ``valid`` (or use :func:`prompt_entropy`, which does).
    """

    normalized: Tensor
    raw: Tensor
    valid: Tensor


def _length_chunks(lengths: list[int], order: list[int], width: int) -> list[list[int]]:
    """Group indices (already sorted by length) so each padded chunk stays within the budget."""
    chunks: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        m = max([lengths[j] for j in cur] + [lengths[i]])
        per_item = max(m * width, min(m, width) ** 2)
        if cur and (len(cur) + 1) * per_item > _CHUNK_ELEMENTS:
            chunks.append(cur)
            cur = []
        cur.append(i)
    if cur:
        chunks.append(cur)
    return chunks


def prompt_entropy_per_text(
    token_states: Sequence[Tensor] | Tensor, alpha: float = 1.0, mask: Tensor | None = None
) -> PerTextPromptEntropy:
    """Per-text prompt entropy ``H_alpha(prep(Z) prep(Z)^T)`` for each text's token states Z.

    ``token_states``: a sequence of (T_i, D) tensors, or a padded (B, T, D) tensor with a (B, T)
    ``mask`` of real tokens. Texts are sorted by length and processed in padded batches (zero
    padding rows add only zero eigenvalues, so padding is exact), with batched ``eigvalsh`` on the
    smaller of the T x T / D x D Gram matrices; no per-text Python loop does the heavy work.
    Use this to aggregate across batches of a large dataset; it never raises for short texts.
    """
    alpha = _check_alpha(alpha)
    zs = _token_list(token_states, mask)
    d = zs[0].shape[1]
    if d < 2:
        raise ValueError(f"prompt entropy needs D >= 2 (normalised by log(min(T, D))), got D={d}")
    device = zs[0].device
    lengths = [z.shape[0] for z in zs]
    n = len(zs)
    raw = torch.full((n,), math.nan, dtype=_DTYPE, device=device)
    normed = raw.clone()
    valid = torch.tensor([t >= 2 for t in lengths], dtype=torch.bool, device=device)
    order = sorted((i for i in range(n) if lengths[i] >= 2), key=lambda i: lengths[i])
    for chunk in _length_chunks(lengths, order, d):
        t_max = max(lengths[i] for i in chunk)
        padded = torch.nn.utils.rnn.pad_sequence([zs[i] for i in chunk], batch_first=True)
        lens = torch.tensor([lengths[i] for i in chunk], device=device)
        m = torch.arange(t_max, device=device).unsqueeze(0) < lens.unsqueeze(1)
        r = _prep_padded(padded, m)
        gram = r @ r.transpose(1, 2) if t_max <= d else r.transpose(1, 2) @ r
        h = renyi_entropy_from_spectrum(torch.linalg.eigvalsh(gram), alpha)
        idx = torch.tensor(chunk, device=device)
        raw[idx] = h
        norm = torch.log(torch.clamp(lens, max=d).to(_DTYPE))
        normed[idx] = h / norm
    return PerTextPromptEntropy(normalized=normed, raw=raw, valid=valid)


def prompt_entropy(
    token_states: Sequence[Tensor] | Tensor,
    alpha: float = 1.0,
    normalize: bool = True,
    mask: Tensor | None = None,
) -> Tensor:
    """Prompt entropy of a layer (0-dim tensor): mean over texts of token-level matrix entropy.

    Each text's entropy is divided by ``log(min(T_i, D))`` when ``normalize`` (the reported
    value), else left in nats (the raw value). Texts with fewer than 2 tokens are skipped; how
    many is ``(~prompt_entropy_per_text(...).valid).sum()``. Raises ValueError when no text has
    2+ tokens. See :func:`prompt_entropy_per_text` for input formats.
    """
    per = prompt_entropy_per_text(token_states, alpha=alpha, mask=mask)
    if not bool(per.valid.any()):
        raise ValueError("prompt entropy is undefined: no text has at least 2 tokens")
    values = per.normalized if normalize else per.raw
    return values[per.valid].mean()


class PerTextCurvature(NamedTuple):
    """Per-text mean curvature (radians), NaN exactly where ``valid`` is False.

    For ``curvature``, a text is invalid when T < 3 or when every consecutive pair of token
    differences contains a zero difference (repeated identical states), so it has no defined
    angle. For ``curvature_abs`` every text is valid (such texts count 0, as the authors did).
    """

    values: Tensor
    valid: Tensor


def _segment_prep(x: Tensor, local: Tensor, counts: Tensor) -> Tensor:
    """``prep`` of each text's rows of the concatenated (sum T_i, D) ``x``; ``local[r]`` = text.

    The concatenated twin of :func:`_prep_rows` (same zero-row rule, per text): segment means
    and max-abs scales by ``index_add_`` / ``scatter_reduce_``, no per-text loop.
    """
    k, d = counts.shape[0], x.shape[1]
    mean = torch.zeros(k, d, dtype=x.dtype, device=x.device).index_add_(0, local, x)
    r = x - (mean / counts.unsqueeze(1).to(x.dtype))[local]
    norms = torch.linalg.vector_norm(r, dim=-1, keepdim=True)
    row_max = x.abs().amax(dim=-1)
    scale = torch.zeros(k, dtype=x.dtype, device=x.device)
    scale = scale.scatter_reduce_(0, local, row_max, reduce="amax", include_self=False)
    zero = norms <= _zero_row_rtol(x.dtype) * math.sqrt(d) * scale[local].unsqueeze(1)
    return r.div_(norms.masked_fill_(zero, 1.0)).masked_fill_(zero, 0.0)


def _turning_angles(zs: list[Tensor], *, folded: bool) -> tuple[Tensor, Tensor]:
    """Per text: sum of turning angles over pairs of non-zero steps, and how many such pairs.

    ``folded=False``: raw token states, angle in ``[0, pi]``. ``folded=True`` (the research
    code's variant): each text's tokens are ``prep`` 'd first (centred over the text, unit
    rows) and the angle is ``arccos(|cos|)`` in ``[0, pi/2]``. Angles are computed as
    ``2 atan2(|u - w|, |u + w|)`` for the unit steps u, w, accurate near 0 and pi where
    ``arccos`` loses half the digits (folding: ``min(a, pi - a)``). Texts are concatenated in
    chunks and processed with tensor ops (no per-text loop for the maths).
    """
    device = zs[0].device
    d = zs[0].shape[1]
    n = len(zs)
    sums = torch.zeros(n, dtype=_DTYPE, device=device)
    pairs = torch.zeros(n, dtype=_DTYPE, device=device)
    chunk: list[int] = []
    tokens = 0

    def flush(ids: list[int]) -> None:
        if not ids:
            return
        x = torch.cat([zs[i] for i in ids], dim=0)
        lens = torch.tensor([zs[i].shape[0] for i in ids], device=device)
        local = torch.repeat_interleave(torch.arange(len(ids), device=device), lens)
        if folded:
            x = _segment_prep(x, local, lens)
        owner = torch.tensor(ids, device=device)[local]
        v = x[1:] - x[:-1]
        same = owner[1:] == owner[:-1]
        norms = torch.linalg.vector_norm(v, dim=-1)
        ok = same & (norms > 0)
        u = v / torch.where(ok, norms, torch.ones_like(norms)).unsqueeze(-1)
        pair_ok = ok[:-1] & ok[1:]
        a, b = u[:-1][pair_ok], u[1:][pair_ok]
        ang = 2.0 * torch.atan2(
            torch.linalg.vector_norm(a - b, dim=-1), torch.linalg.vector_norm(a + b, dim=-1)
        )
        if folded:
            ang = torch.minimum(ang, math.pi - ang)
        who = owner[:-2][pair_ok]
        sums.index_add_(0, who, ang)
        pairs.index_add_(0, who, torch.ones_like(ang))

    for i in (i for i in range(n) if zs[i].shape[0] >= 3):
        t = zs[i].shape[0]
        if chunk and (tokens + t) * d > _CHUNK_ELEMENTS:
            flush(chunk)
            chunk, tokens = [], 0
        chunk.append(i)
        tokens += t
    flush(chunk)
    return sums, pairs


def curvature_per_text(
    token_states: Sequence[Tensor] | Tensor, mask: Tensor | None = None
) -> PerTextCurvature:
    """Per-text curvature of raw token trajectories (Hosseini & Fedorenko 2023).

    ``v_k = x_{k+1} - x_k``; angle between consecutive differences in ``[0, pi]`` (no folding by
    the absolute cosine). Pairs where either difference is exactly zero are skipped; a text
    with no pair left (or T < 3) is invalid.
    """
    sums, pairs = _turning_angles(_token_list(token_states, mask), folded=False)
    valid = pairs > 0
    values = torch.where(valid, sums / pairs.clamp_min(1.0), math.nan)
    return PerTextCurvature(values=values, valid=valid)


def curvature(token_states: Sequence[Tensor] | Tensor, mask: Tensor | None = None) -> Tensor:
    """Layer curvature (0-dim tensor): mean over texts of each text's mean turning angle.

    Radians, in ``[0, pi]``. Texts with T < 3 or no pair of non-zero steps are skipped (see
    :func:`curvature_per_text` for which). Raises ValueError when no text has a defined angle.
    """
    per = curvature_per_text(token_states, mask=mask)
    if not bool(per.valid.any()):
        raise ValueError(
            "curvature is undefined: no text has 3+ tokens with two consecutive non-zero steps"
        )
    return per.values[per.valid].mean()


def curvature_abs_per_text(
    token_states: Sequence[Tensor] | Tensor, mask: Tensor | None = None
) -> PerTextCurvature:
    """Per-text curvature as the research code computed it (``curvature_abs``, METRICS.md).

    Each text's token states are ``prep`` 'd first (centred over the text, unit rows); then
    ``c_k = arccos(|cos(v_k, v_{k+1})|)`` in ``[0, pi/2]``; a pair with a zero-length step counts
    as angle 0, and the text's value is the mean over all ``T - 2`` pairs. A text with T < 3 has
    value 0. Every text counts (``valid`` is all True), as in the authors' layer average.
    Reported so the paper's signs can be checked: it runs roughly as ``pi - curvature``.
    """
    zs = _token_list(token_states, mask)
    sums, _ = _turning_angles(zs, folded=True)
    steps = torch.tensor([max(z.shape[0] - 2, 0) for z in zs], dtype=_DTYPE, device=sums.device)
    values = torch.where(steps > 0, sums / steps.clamp_min(1.0), 0.0)
    return PerTextCurvature(values=values, valid=torch.ones_like(values, dtype=torch.bool))


def curvature_abs(token_states: Sequence[Tensor] | Tensor, mask: Tensor | None = None) -> Tensor:
    """Layer ``curvature_abs`` (0-dim tensor, radians in ``[0, pi/2]``): mean over all texts.

    See :func:`curvature_abs_per_text`; never undefined (short texts count 0).
    """
    return curvature_abs_per_text(token_states, mask=mask).values.mean()


# --------------------------------------------------------------------------------------------
# augmentation-invariance metrics


def _two_views(a: Tensor, b: Tensor, same_dim: bool) -> tuple[Tensor, Tensor]:
    a = _matrix(a, "a", min_rows=2)
    b = _matrix(b, "b", min_rows=2)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"views must have the same N, got {a.shape[0]} and {b.shape[0]}")
    if same_dim and a.shape[1] != b.shape[1]:
        raise ValueError(f"views must have the same D, got {a.shape[1]} and {b.shape[1]}")
    if a.device != b.device:
        raise ValueError("views must be on the same device")
    return a, b


def infonce(a: Tensor, b: Tensor, tau: float = 0.1) -> Tensor:
    """InfoNCE loss between two views (N, D): lower means more augmentation-invariant.

    Each view is ``prep`` 'd over all N rows; logits ``A B^T / tau``; the positive for row i is
    column i; loss = mean cross-entropy over rows. ``log N`` minus the loss lower-bounds the
    mutual information between views (see :func:`infonce_mi_bound`).
    """
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    a, b = _two_views(a, b, same_dim=True)
    logits = _prep_rows(a, row_dim=0) @ _prep_rows(b, row_dim=0).T / tau
    target = torch.arange(a.shape[0], device=a.device)
    return torch.nn.functional.cross_entropy(logits, target)


def infonce_mi_bound(loss: Tensor | float, n: int) -> Tensor | float:
    """Normalised InfoNCE mutual-information bound ``1 - loss / log N`` (1 = perfectly invariant).

    ``n`` is the number of texts the loss was computed on (N >= 2).
    """
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    return 1.0 - loss / math.log(n)


def lidar(
    views: Tensor,
    delta: float = 1e-4,
    eps: float = 1e-7,
    scatter_dtype: torch.dtype = torch.float64,
) -> Tensor:
    """LiDAR (Thilak et al. 2023): effective rank of the LDA matrix of augmented views.

    ``views``: (N, V, D), V >= 2 augmented views per text. Each view matrix ``views[:, j]`` is
    ``prep`` 'd over all N rows; between/within scatter ``S_b``, ``S_w + delta I`` are built with
    matrix products; ``S = S_w^{-1/2} S_b S_w^{-1/2}``; ``p = lam / sum(lam) + eps``;
    returns ``exp(-sum p log p)`` (LiDAR itself, not its logarithm). Higher = more
    discriminative directions that are invariant to the augmentation. If all texts collapse to
    one point (``S_b = 0``) the result is 0 rather than the eps-only value ``D``.

    ``scatter_dtype`` is the precision of the ``prep`` and of the scatter products over all
    N * V rows (nearly all of the cost); the D x D stage is float64 either way. With
    ``torch.float32`` the scatter's round-off (~1e-8 absolute) is far below the ``delta = 1e-4``
    regulariser, and the result moves by ~1e-6 relative on real embeddings; the driver uses it.
    """
    x = _as_real(views, "views", scatter_dtype)
    if x.ndim != 3:
        raise ValueError(f"views must be 3-D (N, V, D), got shape {tuple(x.shape)}")
    n, v, d = x.shape
    if n < 2:
        raise ValueError(f"LiDAR needs at least 2 texts, got N={n}")
    if v < 2:
        raise ValueError(f"LiDAR needs at least 2 views per text, got V={v}")
    if d < 1:
        raise ValueError("views need at least one feature column")
    if not delta > 0:
        raise ValueError(f"delta must be > 0, got {delta}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    _check_finite(x, "views")
    xv = _prep_rows(x, row_dim=0)  # each view matrix xv[:, j] prep'd over its N rows
    mu_i = xv.mean(dim=1)  # (N, D)
    mu = mu_i.mean(dim=0)  # (D,) grand mean (every text has V views)
    cb = mu_i - mu
    s_b = (cb.T @ cb / n).to(_DTYPE)
    cw = xv.sub_(mu_i.unsqueeze(1)).view(n * v, d)  # within-text deviations, in place
    s_w = (cw.T @ cw / (n * v)).to(_DTYPE) + delta * torch.eye(d, dtype=_DTYPE, device=x.device)
    w, q = torch.linalg.eigh(s_w)
    inv_sqrt = (q * w.clamp_min(torch.finfo(_DTYPE).tiny).rsqrt()) @ q.T
    s = inv_sqrt @ s_b @ inv_sqrt
    lam = eigvalsh((s + s.T) / 2).clamp_min(0.0)
    total = lam.sum()
    if float(total) <= 0:
        # No between-text scatter at all: every text maps to the same point. Only the eps floor
        # is left, a flat distribution over D directions, which is meaningless; report 0 instead.
        return torch.zeros((), dtype=_DTYPE, device=x.device)
    p = lam / total + eps
    return torch.exp(-torch.xlogy(p, p).sum())


def _prep_kernel(x: Tensor) -> Tensor:
    """The N x N kernel ``prep(x) prep(x)^T`` of an already validated float64 matrix."""
    r = _prep_rows(x, row_dim=0)
    return r @ r.T


def _hadamard_entropy(ka: Tensor, kb: Tensor, perm: Tensor | None, alpha: float) -> Tensor:
    """Entropy of ``ka o kb' / tr(ka o kb')``, with ``kb' = kb[perm][:, perm]`` (or ``kb``)."""
    prod = ka * (kb if perm is None else kb[perm.unsqueeze(1), perm])
    tr = float(torch.diagonal(prod).sum(dtype=_DTYPE))
    if tr <= 0:
        return torch.zeros((), dtype=_DTYPE, device=ka.device)
    return renyi_entropy_from_spectrum(eigvalsh(prod.div_(tr), overwrite=True), alpha)


def dime(
    a: Tensor,
    b: Tensor,
    alpha: float = 1.0,
    n_perms: int = 10,
    generator: torch.Generator | None = None,
    seed: int = 42,
    workers: int | None = None,
) -> Tensor:
    """DiME (Skean et al. 2023) between two views (N, D_a), (N, D_b); higher = more shared info.

    ``Ka``, ``Kb`` are the N x N kernels of the prep'd views (always N x N, since the permutation
    acts on samples). ``DiME = mean_P H(Ka o P Kb P^T) - H(Ka o Kb)``, each Hadamard product divided
    by its trace. Permutations come from ``generator`` if given, otherwise from a CPU generator
    seeded with ``seed``, so the result is reproducible by default.

    Everything is float64, the ``n_perms + 1`` N x N eigensolves (nearly all of the cost)
    included: float32 spectra lose the tail of small eigenvalues that collapsed, low-rank
    layers have, which moved DiME by up to 4e-3 in tests (more than the permutation noise).
    On CPU the solves are independent and run one per core (``workers``, default all cores);
    the result is the same for any ``workers``, since each solve is single-threaded.
    """
    alpha = _check_alpha(alpha)
    if n_perms < 1:
        raise ValueError(f"n_perms must be >= 1, got {n_perms}")
    a, b = _two_views(a, b, same_dim=False)
    n = a.shape[0]
    # The two kernels (float64 GEMMs, ~30 ms each at N = 1000 on one core) are independent too.
    ka, kb = parallel_map(_prep_kernel, [a, b], workers, a.device)
    if generator is None:
        generator = torch.Generator().manual_seed(seed)
    # Draw every permutation before any solve, so the draws never depend on scheduling.
    perms: list[Tensor | None] = [None]
    for _ in range(n_perms):
        perms.append(torch.randperm(n, generator=generator, device=generator.device).to(a.device))
    h = parallel_map(lambda p: _hadamard_entropy(ka, kb, p, alpha), perms, workers, a.device)
    return torch.stack(h[1:]).mean() - h[0]


# --------------------------------------------------------------------------------------------
# intrinsic dimension


def _torch_neighbours(x: Tensor, k: int, block_size: int) -> Tensor:
    """Each row's `k` nearest other rows (indices, any order) by `torch.cdist`, in row blocks."""
    out = []
    for start in range(0, x.shape[0], block_size):
        dist = torch.cdist(x[start : start + block_size], x)
        rows = torch.arange(dist.shape[0], device=x.device)
        dist[rows, rows + start] = math.inf
        out.append(dist.topk(k, dim=1, largest=False).indices)
    return torch.cat(out)


def _faiss_neighbours(x: Tensor, k: int) -> Tensor:
    """The same through an exact flat faiss index (float32): `k + 1` found, the row itself
    dropped (or, among exact duplicates where it is not returned, the farthest)."""
    import faiss

    data = x.detach().to("cpu", torch.float32).contiguous().numpy()
    index = faiss.IndexFlatL2(data.shape[1])
    index.add(data)
    _dist, found = index.search(data, k + 1)
    found = torch.from_numpy(found)
    drop = found == torch.arange(found.shape[0]).unsqueeze(1)
    drop[~drop.any(dim=1), -1] = True
    drop &= drop.cumsum(dim=1) == 1  # a row listed twice (cannot happen): drop it once
    return found[~drop].reshape(found.shape[0], k).to(x.device)


def intrinsic_dimension(
    x: Tensor, block_size: int = 1024, *, search_backend: str = "auto"
) -> Tensor:
    """TwoNN intrinsic dimension (Facco et al. 2017), maximum-likelihood form ``n / sum log mu``.

    ``mu = r2 / r1`` from each point's two nearest neighbours (Euclidean, on ``x`` as given, no
    ``prep``). Points with ``r1 = 0`` (exact duplicates) are skipped. Eight candidate
    neighbours per point come from a flat faiss index when ``search_backend`` resolves to faiss
    (``auto``: when installed), else from ``torch.cdist`` in row blocks of ``block_size``
    (memory ~ block_size * N); either way their distances are recomputed exactly in ``x``'s
    dtype, so both give the same value and duplicates give exactly 0.
    Raises ValueError if fewer than 3 points, or if no point has distinct r1 < r2.
    """
    from ..search import resolve_search_backend

    x = _matrix(x, "x", min_rows=3)
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    n = x.shape[0]
    k = min(n - 1, 8)
    if resolve_search_backend(search_backend) == "faiss":
        cand = _faiss_neighbours(x, k)
    else:
        cand = _torch_neighbours(x, k, block_size)
    logs = []
    for start in range(0, n, block_size):
        blk = x[start : start + block_size]
        exact = torch.linalg.vector_norm(
            x[cand[start : start + block_size]] - blk.unsqueeze(1), dim=-1
        )
        r = exact.sort(dim=1).values
        r1, r2 = r[:, 0], r[:, 1]
        keep = r1 > 0
        logs.append(torch.log(r2[keep] / r1[keep]))
    log_mu = torch.cat(logs)
    total = log_mu.sum()
    if log_mu.numel() == 0 or float(total) <= 0:
        raise ValueError(
            "TwoNN intrinsic dimension is undefined: no point has distinct nearest-neighbour "
            "distances 0 < r1 < r2 (all duplicates or perfectly equidistant points)"
        )
    return log_mu.numel() / total
