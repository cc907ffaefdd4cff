"""Symmetric eigenvalues on CPU, one LAPACK solve per core.

Nearly all of the metrics' CPU time is LAPACK's symmetric eigensolver: DiME alone needs
``n_perms + 1`` float64 N x N solves per layer. Two ways of using a second core fail at these
sizes: LAPACK's own threading (the tridiagonal reduction runs many small parallel regions, and is
slower on two threads than on one), and calling SciPy's wrapper from two Python threads (it holds
the GIL, so the solves queue up). What works is running independent solves side by side, each
on one thread. So this module calls the same routine SciPy uses (``?syevd`` from SciPy's public
Cython LAPACK, ``scipy.linalg.cython_lapack``) through ctypes, which releases the GIL: two
solves on two cores take the time of one. Where the Cython LAPACK is not what we expect,
``scipy.linalg.eigh`` is used instead (the same values to round-off, one solve at a time).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from ..devices import available_cores

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

_C_TYPES = {"s": ctypes.c_float, "d": ctypes.c_double}


@functools.cache
def _syevd(prefix: str) -> Callable[..., None] | None:
    """ctypes handle on SciPy's Cython ``ssyevd``/``dsyevd``, or None if it is not as expected."""
    try:
        from scipy.linalg import cython_lapack

        capsule = cython_lapack.__pyx_capi__[f"{prefix}syevd"]
        get_name = ctypes.pythonapi.PyCapsule_GetName
        get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
        get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
        get_pointer.restype = ctypes.c_void_p
        get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
        signature = get_name(capsule)
        pointer = get_pointer(capsule, signature)
    except Exception as exc:  # no SciPy, or a SciPy without the Cython LAPACK
        logger.debug("Cython LAPACK unavailable (%s); using scipy.linalg.eigh", exc)
        return None
    text = signature.decode()
    # ?syevd(jobz, uplo, n, a, lda, w, work, lwork, iwork, liwork, info), all pointers.
    # The scalar type is a typedef (`__pyx_t_..._d`); integers must be plain 32-bit `int`.
    params = [p.strip() for p in text[text.index("(") + 1 : text.rindex(")")].split(",")]
    scalar = "float" if prefix == "s" else "double"
    expected = [
        "char *",
        "char *",
        "int *",
        "?",
        "int *",
        "?",
        "?",
        "int *",
        "int *",
        "int *",
        "int *",
    ]
    ok = len(params) == len(expected) and all(
        e == p or (e == "?" and (p == f"{scalar} *" or p.endswith(f"_{prefix} *")))
        for e, p in zip(expected, params, strict=False)
    )
    if not ok or ctypes.sizeof(ctypes.c_int) != 4:
        logger.debug("Unexpected Cython LAPACK signature %r; using scipy.linalg.eigh", text)
        return None
    c_t, c_int = ctypes.POINTER(_C_TYPES[prefix]), ctypes.POINTER(ctypes.c_int)
    char = ctypes.c_char_p
    proto = ctypes.CFUNCTYPE(
        None, char, char, c_int, c_t, c_int, c_t, c_t, c_int, c_int, c_int, c_int
    )
    return proto(pointer)


def _lapack_eigvalsh(a: np.ndarray, fn: Callable[..., None], ctype: Any) -> np.ndarray:
    """Eigenvalues of the symmetric C-contiguous ``a`` (destroyed), GIL released in LAPACK.

    LAPACK is column-major, so it sees ``a^T`` (no transposing copy); ``uplo='U'`` of ``a^T`` is
    the lower triangle of ``a``, the triangle ``scipy.linalg.eigh`` reads too. (SciPy runs the
    'L' variant on a transposed copy, so the two agree to round-off, ~1e-15 relative, not bit
    for bit; a given input always gives the same bits here.)
    """
    n = a.shape[0]
    ptr = ctypes.POINTER(ctype)
    w = np.empty(n, dtype=a.dtype)
    query, iquery = np.empty(1, dtype=a.dtype), np.empty(1, dtype=np.int32)
    n_c, info = ctypes.c_int(n), ctypes.c_int(0)

    def call(work: np.ndarray, iwork: np.ndarray, lwork: int, liwork: int) -> None:
        fn(
            b"N", b"U", ctypes.byref(n_c), a.ctypes.data_as(ptr), ctypes.byref(n_c),
            w.ctypes.data_as(ptr), work.ctypes.data_as(ptr), ctypes.byref(ctypes.c_int(lwork)),
            iwork.ctypes.data_as(ctypes.POINTER(ctypes.c_int)), ctypes.byref(ctypes.c_int(liwork)),
            ctypes.byref(info),
        )  # fmt: skip
        if info.value != 0:
            raise np.linalg.LinAlgError(f"LAPACK ?syevd failed to converge (info={info.value})")

    # Workspace query first: the minimal workspace forces LAPACK's unblocked reduction (~1.5x slower).
    call(query, iquery, -1, -1)
    work = np.empty(max(1, int(query[0])), dtype=a.dtype)
    iwork = np.empty(max(1, int(iquery[0])), dtype=np.int32)
    call(work, iwork, work.size, iwork.size)
    return w


def eigvalsh(m: Tensor, overwrite: bool = False) -> Tensor:
    """Ascending eigenvalues of a symmetric matrix (or a batch), in the matrix's dtype.

    A single float32/float64 CPU matrix goes to LAPACK ``?syevd`` (values only), which on one
    thread is ~30% faster than torch's at N ~ 1000 (float64: 46 vs 68 ms on this project's 2-core
    CI machine) and, called from here, runs without the GIL. Only the lower triangle is read.
    Batches and GPU tensors stay with torch. ``overwrite``: ``m`` is scratch and may be destroyed.
    """
    if m.ndim == 2 and m.device.type == "cpu" and m.dtype in (torch.float32, torch.float64):
        if m.shape[0] != m.shape[1]:
            raise ValueError(f"eigvalsh needs a square matrix, got shape {tuple(m.shape)}")
        prefix = "s" if m.dtype == torch.float32 else "d"
        fn = _syevd(prefix)
        a = m.detach().numpy()
        if fn is None or m.shape[0] == 0:
            import scipy.linalg

            values = scipy.linalg.eigh(
                a, eigvals_only=True, driver="evd", check_finite=False, overwrite_a=overwrite
            )
            return torch.from_numpy(np.ascontiguousarray(values))
        if not overwrite or not a.flags.c_contiguous or not a.flags.writeable:
            a = np.array(a, order="C", copy=True)
        return torch.from_numpy(_lapack_eigvalsh(a, fn, _C_TYPES[prefix]))
    return torch.linalg.eigvalsh(m)


@functools.cache
def _blas_threads() -> Any:
    """SciPy's BLAS / LAPACK thread pools, scanned once: a fresh `threadpool_limits` rescans
    every loaded library, milliseconds per call."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextlib.contextmanager
def linalg_threads(device: torch.device | str, n: int = 1) -> Iterator[None]:
    """Run CPU linear algebra (torch and BLAS/LAPACK) on ``n`` threads inside the block.

    LAPACK's symmetric eigensolvers (the bulk of the metric maths; torch's and SciPy's) are
    fastest on one thread at these sizes (N <= a few thousand): the tridiagonal reduction runs
    many small parallel regions. A 1000 x 1000 float32 `eigvalsh` on a 2-core machine: 38 ms on
    one thread; on two, 109 ms with passive OpenMP waiting, and with spinning waiting fast when
    idle but 7.8 s (float64) when the other core is busy. The cores are used by `parallel_map`
    instead. GPUs are left alone.
    """
    if torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with _blas_threads().limit(limits=n, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(before)


def parallel_map(
    fn: Callable[[T], R], items: Sequence[T], workers: int | None = None, device: Any = "cpu"
) -> list[R]:
    """``[fn(x) for x in items]``, on up to ``workers`` threads (default: every core) on CPU.

    For jobs whose time is spent in GIL-free code (`eigvalsh`, torch ops). Every job runs on one
    linear algebra thread whatever ``workers`` is, so results do not depend on it (and one
    thread is also the fastest way to run a single solve at these sizes). GPU work stays serial.
    """
    workers = available_cores() if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    workers = min(workers, len(items))
    if torch.device(device).type != "cpu":
        return [fn(x) for x in items]
    with linalg_threads("cpu", 1):
        if workers <= 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(fn, items))
