"""FAISS inner-product indexes over a bundle's POI vectors (recommendations) and user
vectors (audiences).

Built here, in training, because a registered version carries its indexes (the MLflow
pyfunc model, `training.pyfunc_model`) and serving searches the same kind of index
(`serving.indexes` re-exports these names).

Index type by size: an exact `IndexFlatIP` below `exact_below` vectors (a 10k-POI scan is
~0.1 ms, so exact is both cheapest and perfect), an IVF index above it whose `nprobe` is
tuned at build time until recall@10 against exact search reaches `target_recall` on a
sample of real queries; the measured recall travels with the index (`VectorIndex.info`).

Served from the registry, an index belongs to one model version: `serving.index_artifacts`
stores the built indexes as the `indexes/` artifact of that version's MLflow run, with a
manifest naming the version and the sha256 of the vectors each index was built from, and
reuses them only when everything matches (MLflow is the record). Builds are also cached on
local disk under a fingerprint of (vectors, parameters, faiss version), so a cache hit can
never belong to other vectors; `wenlv serve --bundle DIR` uses only that cache.

Filters use FAISS ID selectors (a bitmap, `IDSelectorBitmap`) passed with
`SearchParameters`; when an approximate index returns fewer than k eligible items while
k exist, the search falls back to an exact scan of the eligible subset, so a filtered
search never returns fewer than min(k, eligible) items.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from wenlv.settings import get_settings

log = logging.getLogger(__name__)

EXACT_BELOW = 20_000
TARGET_RECALL = 0.95


class _SettingsCache:
    """Default `cache_dir`: the WENLV_INDEX_CACHE setting, read when an index is built (None: no cache)."""

    def __repr__(self) -> str:
        return "WENLV_INDEX_CACHE"


DEFAULT_CACHE = _SettingsCache()


def use_configured_threads() -> int:
    """Set FAISS's OpenMP threads from WENLV_FAISS_THREADS (default 1) and return the number.

    Serving searches one query at a time: OpenMP threads only add spin-waiting that steals
    the CPU from the event loop and Redis (measured: p99 of a 10k flat search 96 ms with 2
    threads on a busy 2-core machine vs 0.1 ms with 1). Called where indexes are built or
    a ServingModel is set up, not at import.
    """
    threads = get_settings().faiss_threads
    faiss.omp_set_num_threads(threads)
    return threads


@dataclass
class VectorIndex:
    """One FAISS inner-product index plus the vectors it was built from (for exact fallbacks)."""

    index: faiss.Index
    vectors: np.ndarray
    info: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    @property
    def exact(self) -> bool:
        return self.info.get("kind") == "flat"

    def _params(self, selector=None):
        if isinstance(self.index, faiss.IndexIVF):
            return faiss.SearchParametersIVF(sel=selector, nprobe=int(self.info["nprobe"]))
        if isinstance(self.index, faiss.IndexHNSW):
            return faiss.SearchParametersHNSW(sel=selector, efSearch=int(self.info["ef_search"]))
        return faiss.SearchParameters(sel=selector) if selector is not None else None

    def search(self, query: np.ndarray, k: int, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k ids and scores for one query; with `mask` (bool per vector) only eligible ids.

        Returns min(k, eligible) items, best first.
        """
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        if mask is None:
            eligible = self.size
            params = self._params()
        else:
            eligible = int(mask.sum())
            if eligible == 0:
                return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
            bitmap = np.packbits(mask, bitorder="little")  # bit i of byte i>>3, as IDSelectorBitmap reads it
            selector = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
            params = self._params(selector)
        want = min(k, eligible)
        scores, ids = self.index.search(q, want, params=params) if params is not None else self.index.search(q, want)
        ids, scores = ids[0], scores[0]
        found = ids >= 0
        if found.sum() < want:  # an approximate index missed eligible items: scan them exactly
            return exact_top_k(self.vectors, q[0], want, mask)
        return ids[found].astype(np.int64), scores[found]


    def search_excluding(self, query: np.ndarray, k: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`search` with only `exclude` (ids, a few) ineligible: the top k + len(exclude) unfiltered, minus those.

        The same answer as a mask that only drops `exclude`, without building that mask, its
        bitmap and a FAISS selector on every request (~35 µs of a 10k-POI search's ~110 µs):
        the k best eligible items are among the k + len(exclude) best of all. An approximate
        index that returned too few falls back to the masked search.
        """
        dropped = set(exclude.tolist())
        want = min(k, self.size - len(dropped))
        if want <= 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        ids, scores = self.search(query, min(self.size, k + len(dropped)))
        keep = [n for n, i in enumerate(ids.tolist()) if i not in dropped][:want]
        if len(keep) < want:
            mask = np.ones(self.size, dtype=bool)
            mask[exclude] = False
            return self.search(query, k, mask)
        return ids[keep], scores[keep]


def exact_top_k(vectors: np.ndarray, query: np.ndarray, k: int, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k (vectorised), optionally among `mask`-eligible rows."""
    candidates = np.flatnonzero(mask) if mask is not None else None
    sub = vectors if candidates is None else vectors[candidates]
    scores = sub @ np.asarray(query, dtype=np.float32)
    k = min(k, len(scores))
    if k == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top], kind="stable")]
    ids = top if candidates is None else candidates[top]
    return ids.astype(np.int64), scores[top].astype(np.float32)


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k ids per query (brute force; the ground truth for recall)."""
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return exact.search(np.ascontiguousarray(queries, dtype=np.float32), k)[1]


def recall_at_k(index: VectorIndex, queries: np.ndarray, k: int = 10, truth: np.ndarray | None = None) -> float:
    """Share of the exact top-k that the index returns, averaged over queries."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, index.size)
    if truth is None:
        truth = exact_neighbours(index.vectors, queries, k)
    params = index._params()
    _, got = index.index.search(queries, k, params=params) if params is not None else index.index.search(queries, k)
    hits = sum(len(set(t) & set(g)) for t, g in zip(truth, got))
    return hits / (k * len(queries))


def build_index(vectors: np.ndarray, queries: np.ndarray | None = None, *, exact_below: int = EXACT_BELOW,
                kind: str | None = None, target_recall: float = TARGET_RECALL, seed: int = 1234) -> VectorIndex:
    """Build the index for `vectors`, choosing the type by size unless `kind` (flat|ivf|hnsw) is given.

    `queries` are a sample of the vectors that will query this index (users for POIs, POIs
    for users); approximate indexes tune their search breadth on them.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    kind = kind or ("flat" if n < exact_below else "ivf")
    rng = np.random.default_rng(seed)
    if queries is None or len(queries) == 0:
        queries = vectors[rng.choice(n, size=min(n, 200), replace=False)]
    queries = np.ascontiguousarray(queries[rng.choice(len(queries), size=min(len(queries), 200), replace=False)], dtype=np.float32)
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
        index.add(vectors)
        return VectorIndex(index, vectors, {"kind": "flat", "n": n, "d": d, "recall_at_10": 1.0})
    if kind == "ivf":
        nlist = int(max(1, min(1024, round(4 * np.sqrt(n)))))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        train = vectors if n <= 64 * nlist else vectors[rng.choice(n, size=64 * nlist, replace=False)]
        index.train(train)
        index.add(vectors)
        out = VectorIndex(index, vectors, {"kind": "ivf", "n": n, "d": d, "nlist": nlist, "nprobe": 1})
        knob, limit = "nprobe", nlist
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.add(vectors)
        out = VectorIndex(index, vectors, {"kind": "hnsw", "n": n, "d": d, "M": 32, "ef_search": 16})
        knob, limit = "ef_search", 4096
    else:
        raise ValueError(f"unknown index kind {kind!r}; one of flat, ivf, hnsw")
    value = out.info[knob]
    truth = exact_neighbours(vectors, queries, min(10, n))
    while True:  # widen the search until the measured recall meets the target
        out.info[knob] = value
        recall = recall_at_k(out, queries, 10, truth)
        if recall >= target_recall or value >= limit:
            break
        value = min(limit, value * 2)
    out.info["recall_at_10"] = round(recall, 4)
    log.info("built %s index over %d vectors: %s", kind, n, out.info)
    return out


def fingerprint(vectors: np.ndarray, **params) -> str:
    h = hashlib.sha256(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
    h.update(json.dumps({**params, "faiss": faiss.__version__, "shape": list(vectors.shape)}, sort_keys=True).encode())
    return h.hexdigest()[:24]


def load_or_build(vectors: np.ndarray, queries: np.ndarray | None = None, *, cache_dir: Path | _SettingsCache | None = DEFAULT_CACHE,
                  exact_below: int = EXACT_BELOW, kind: str | None = None, target_recall: float = TARGET_RECALL) -> VectorIndex:
    """`build_index`, cached on disk by a fingerprint of the vectors and parameters (flat indexes are not cached)."""
    use_configured_threads()
    if isinstance(cache_dir, _SettingsCache):
        cache_dir = get_settings().index_cache
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    chosen = kind or ("flat" if len(vectors) < exact_below else "ivf")
    if cache_dir is None or chosen == "flat":
        return build_index(vectors, queries, exact_below=exact_below, kind=chosen, target_recall=target_recall)
    key = fingerprint(vectors, kind=chosen, target_recall=target_recall)
    path, meta = Path(cache_dir) / f"{key}.faiss", Path(cache_dir) / f"{key}.json"
    if path.exists() and meta.exists():
        log.info("index cache hit %s", key)
        return VectorIndex(faiss.read_index(str(path)), vectors, json.loads(meta.read_text()))
    built = build_index(vectors, queries, exact_below=exact_below, kind=chosen, target_recall=target_recall)
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    faiss.write_index(built.index, str(tmp))
    os.replace(tmp, path)
    meta.write_text(json.dumps(built.info))
    return built


def index_params(n: int, *, exact_below: int = EXACT_BELOW, kind: str | None = None,
                 target_recall: float = TARGET_RECALL) -> dict:
    """What decides how an index over `n` vectors is built (recorded beside a stored index)."""
    return {"kind": kind or ("flat" if n < exact_below else "ivf"), "target_recall": target_recall,
            "faiss": faiss.__version__}


def vectors_sha256(vectors: np.ndarray) -> str:
    """Digest of the float32 vectors and their shape: what an index was built from."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    h = hashlib.sha256(json.dumps(list(vectors.shape)).encode())
    h.update(vectors.tobytes())
    return h.hexdigest()


@dataclass
class BundleIndexes:
    """The two indexes of one model version; `source` says where they came from (built | mlflow)."""

    pois: VectorIndex
    users: VectorIndex | None
    source: str = "built"


def bundle_index_inputs(bundle, *, with_users: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """name → (vectors to index, sample of the vectors that will query them), per index of a bundle."""
    rng = np.random.default_rng(0)
    users = np.ascontiguousarray(bundle.user_factors, dtype=np.float32)
    user_sample = users[rng.choice(len(users), size=min(len(users), 500), replace=False)] if len(users) else None
    inputs = {"pois": (np.ascontiguousarray(bundle.poi_factors, dtype=np.float32), user_sample)}
    if with_users and len(users):
        inputs["users"] = (users, inputs["pois"][0])
    return inputs


def build_bundle_indexes(bundle, *, with_users: bool = True, cache_dir: Path | _SettingsCache | None = DEFAULT_CACHE,
                         exact_below: int = EXACT_BELOW) -> BundleIndexes:
    """POI index (queried by user vectors) and, optionally, the user index (queried by POI vectors)."""
    built = {name: load_or_build(vectors, queries, cache_dir=cache_dir, exact_below=exact_below)
             for name, (vectors, queries) in bundle_index_inputs(bundle, with_users=with_users).items()}
    return BundleIndexes(pois=built["pois"], users=built.get("users"))
