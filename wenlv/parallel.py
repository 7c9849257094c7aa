"""Contiguous ranges of work run at once on threads (numba kernels, BLAS, AES and BLAKE3
release the GIL), for the federated fit and its secure aggregation."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor


def segments(size: int, unit: int, threads: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges of whole units covering [0, size), one per thread (fewer if there are fewer units)."""
    n_units = max(-(-size // unit), 1)
    threads = max(1, min(int(threads), n_units))
    edges = [k * n_units // threads * unit for k in range(threads)] + [size]
    return list(zip(edges[:-1], edges[1:]))


def run_segments(work, ranges: list[tuple[int, int]]) -> None:
    """work(lo, hi) for every range: inline for one, else one thread each."""
    if len(ranges) == 1:
        work(*ranges[0])
        return
    with ThreadPoolExecutor(max_workers=len(ranges)) as pool:
        list(pool.map(lambda r: work(*r), ranges))
