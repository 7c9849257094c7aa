"""Top-k selection by inner product among eligible rows: FAISS (the product) and a NumPy scan (its peer).

One function for every target: affinity (user vectors · the target's item vectors),
lookalike (unit user vectors · the seed centroid) and propensity (a score column · [1]).
Eligibility (consent, region, frequency caps, seeds excluded) is a boolean mask, passed
to FAISS as an `IDSelectorBitmap`, so ineligible rows are never candidates.
(serving/indexes.py has the serving-side twin; marketing sits below serving and cannot import it.)
"""
from __future__ import annotations

import faiss
import numpy as np


def flat_index(vectors: np.ndarray) -> faiss.IndexFlatIP:
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def faiss_top_k(index: faiss.Index, query: np.ndarray, k: int, mask: np.ndarray | None = None):
    """(rows, scores), best first, min(k, eligible) of them."""
    q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
    eligible = index.ntotal if mask is None else int(mask.sum())
    k = min(k, eligible)
    if k == 0:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    if mask is None:
        scores, ids = index.search(q, k)
    else:
        bitmap = np.packbits(mask, bitorder="little")  # bit i of byte i>>3, as IDSelectorBitmap reads it
        params = faiss.SearchParameters(sel=faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap)))
        scores, ids = index.search(q, k, params=params)
    found = ids[0] >= 0
    return ids[0][found].astype(np.int64), scores[0][found]


def numpy_top_k(vectors: np.ndarray, query: np.ndarray, k: int, mask: np.ndarray | None = None):
    """The plain scan: all scores, ineligible ones to -inf, argpartition, sort the k."""
    scores = vectors @ np.asarray(query, dtype=np.float32)
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    k = min(k, len(scores) if mask is None else int(mask.sum()))
    if k == 0:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top], kind="stable")]
    return top.astype(np.int64), scores[top].astype(np.float32)
