"""The recommenders a tuned model is measured against, and the scaling of its confidences.

Every model here fits a user × item matrix (the target items — POIs — are its first
`n_targets` columns; the other columns are side items such as carrier areas and internet
topics, which every model may use) and scores the target items for chosen user rows:

* popularity — distinct users per item, the same list for everyone;
* personal popularity — the user's own visits to a POI (log counts, times `weight`) over
  the standardised popularity: tourists return to the sights they photographed before
  (a quarter to a half of the Flickr cities' held-out visits are revisits);
* item-kNN — implicit's CosineRecommender and BM25Recommender (item-item similarity);
* EASE — Steck's closed-form shallow autoencoder, B = I − P·diag(1/diag P), P = (XᵀX + λI)⁻¹;
* BPR — implicit's Bayesian personalised ranking;
* ALS — implicit's ALS on confidences scaled by `weight` (alpha; linear, log, BM25 or TF-IDF);
* a blend of two or more of them (per-user standardised scores, weights on the simplex).

`weight` is what each party may apply to its own block before the federated fit (a local
operation: nothing about one party's block reaches another).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from implicit.cpu.bpr import BayesianPersonalizedRanking
from implicit.utils import ParameterWarning
from implicit.nearest_neighbours import BM25Recommender, CosineRecommender, bm25_weight, tfidf_weight

from wenlv.errors import WenlvError

WEIGHTINGS = ("none", "log", "bm25", "tfidf")


def weight(matrix: sp.csr_matrix, scheme: str = "none", alpha: float = 1.0) -> sp.csr_matrix:
    """alpha · f(matrix) on its stored entries: f = identity, log1p, BM25 (per user row) or TF-IDF."""
    if scheme not in WEIGHTINGS:
        raise WenlvError(f"weighting must be one of {WEIGHTINGS}, got {scheme!r}")
    if alpha <= 0:
        raise WenlvError(f"alpha must be positive, got {alpha}")
    m = sp.csr_matrix(matrix, dtype=np.float64, copy=True)
    if scheme == "log":
        m.data = np.log1p(m.data)
    elif scheme == "bm25":
        m = sp.csr_matrix(bm25_weight(m, K1=100, B=0.8))
    elif scheme == "tfidf":
        m = sp.csr_matrix(tfidf_weight(m))
    # BM25/TF-IDF give an item every user has an idf ≤ 0: keep it a (weak) positive example
    m.data = alpha * np.maximum(m.data, 1e-3)
    return m.astype(matrix.dtype if np.issubdtype(matrix.dtype, np.floating) else np.float32)


@dataclass
class Fitted:
    """Scores the target items for user rows of the matrix it was fitted on."""

    name: str
    n_targets: int
    score_rows: object  # callable(rows: ndarray, X: csr) -> [len(rows), n_targets]
    params: dict = field(default_factory=dict)

    def scores(self, rows: np.ndarray, matrix: sp.csr_matrix) -> np.ndarray:
        return np.asarray(self.score_rows(np.asarray(rows), matrix), dtype=np.float64)


def popularity(matrix: sp.csr_matrix, n_targets: int) -> Fitted:
    counts = np.bincount(matrix[:, :n_targets].tocoo().col, minlength=n_targets).astype(np.float64)
    return Fitted("popularity", n_targets, lambda rows, X: np.broadcast_to(counts, (len(rows), n_targets)).copy())


def personal_popularity(matrix: sp.csr_matrix, n_targets: int, weight: float = 3.0,
                        own: sp.csr_matrix | None = None) -> Fitted:
    """weight · log1p(the user's own visits) + z(popularity): revisits first, then what most visit.

    `own`: the users × targets visit weights to rank by (e.g. recency-decayed counts of the
    matrix's visits); default the counts of the matrix scored.
    """
    if weight < 0:
        raise WenlvError(f"personal popularity weight must be ≥ 0, got {weight}")
    counts = np.bincount(matrix[:, :n_targets].tocoo().col, minlength=n_targets).astype(np.float64)
    z = _standardise(counts[None, :])[0]

    def score_rows(rows, X):
        mine = sp.csr_matrix((X if own is None else own)[rows][:, :n_targets], dtype=np.float64)
        mine.data = np.log1p(np.maximum(mine.data, 0.0))
        return weight * mine.toarray() + z

    return Fitted("personal_popularity", n_targets, score_rows, {"weight": weight, "recency": own is not None})


def item_knn(matrix: sp.csr_matrix, n_targets: int, similarity: str = "cosine", neighbours: int = 50) -> Fitted:
    model = (CosineRecommender(K=neighbours, num_threads=1) if similarity == "cosine"
             else BM25Recommender(K=neighbours, num_threads=1))
    with warnings.catch_warnings():  # implicit's own normalisation hands itself a COO matrix and warns
        warnings.simplefilter("ignore", ParameterWarning)
        model.fit(sp.csr_matrix(matrix, dtype=np.float32), show_progress=False)
    sim = sp.csr_matrix(model.similarity)[:, :n_targets]
    return Fitted(f"item_knn_{similarity}", n_targets, lambda rows, X: (X[rows] @ sim).toarray(),
                  {"similarity": similarity, "neighbours": neighbours})


def ease(matrix: sp.csr_matrix, n_targets: int, lam: float = 100.0) -> Fitted:
    """EASE on the binary matrix (Steck, WWW 2019)."""
    X = (matrix > 0).astype(np.float64)
    gram = (X.T @ X).toarray()
    gram[np.diag_indices_from(gram)] += lam
    P = np.linalg.inv(gram)
    B = -P / np.diag(P)
    B[np.diag_indices_from(B)] = 0.0
    B = B[:, :n_targets]
    return Fitted("ease", n_targets, lambda rows, X_: np.asarray((X_[rows] > 0).astype(np.float64) @ B),
                  {"lambda": lam})


def bpr(matrix: sp.csr_matrix, n_targets: int, factors: int = 64, learning_rate: float = 0.05,
        regularization: float = 0.01, iterations: int = 100, seed: int = 0) -> Fitted:
    model = BayesianPersonalizedRanking(factors=factors, learning_rate=learning_rate, regularization=regularization,
                                        iterations=iterations, num_threads=1, random_state=seed)
    model.fit(sp.csr_matrix(matrix, dtype=np.float32), show_progress=False)
    U, V = np.asarray(model.user_factors), np.asarray(model.item_factors)[:n_targets]
    return Fitted("bpr", n_targets, lambda rows, X: U[rows] @ V.T,
                  {"factors": factors, "learning_rate": learning_rate, "regularization": regularization,
                   "iterations": iterations})


def als(matrix: sp.csr_matrix, n_targets: int, factors: int = 16, regularization: float = 1.0, alpha: float = 1.0,
        weighting: str = "none", iterations: int = 15, seed: int = 0) -> Fitted:
    model = AlternatingLeastSquares(factors=factors, regularization=regularization, iterations=iterations,
                                    random_state=seed, num_threads=1)
    model.fit(sp.csr_matrix(weight(matrix, weighting, alpha), dtype=np.float32), show_progress=False)
    U, V = np.asarray(model.user_factors), np.asarray(model.item_factors)[:n_targets]
    return Fitted("als", n_targets, lambda rows, X: U[rows] @ V.T,
                  {"factors": factors, "regularization": regularization, "alpha": alpha, "weighting": weighting,
                   "iterations": iterations})


def _standardise(s: np.ndarray) -> np.ndarray:
    sd = s.std(axis=1, keepdims=True)
    return (s - s.mean(axis=1, keepdims=True)) / np.where(sd > 0, sd, 1.0)


def blend(first: Fitted, second: Fitted, w: float) -> Fitted:
    """w · z(first) + (1 − w) · z(second), scores standardised per user."""
    return blend_many((first, second), (w, 1 - w))


def blend_many(models, weights) -> Fitted:
    """Σ wᵢ · z(modelᵢ): per-user standardised scores, so no model wins by its score scale alone."""
    models, weights = tuple(models), tuple(float(w) for w in weights)
    if len(models) != len(weights) or not models:
        raise WenlvError(f"a blend needs one weight per model, got {len(models)} models, {len(weights)} weights")

    def score_rows(rows, X):
        out = weights[0] * _standardise(models[0].scores(rows, X))
        for m, w in zip(models[1:], weights[1:]):
            out += w * _standardise(m.scores(rows, X))
        return out

    names = [m.name for m in models]
    params = ({"first": names[0], "second": names[1], "w": weights[0]} if len(models) == 2
              else {"models": names, "weights": list(weights)})
    return Fitted("+".join(names), models[0].n_targets, score_rows, params)


BUILDERS = {"popularity": popularity, "personal_popularity": personal_popularity, "item_knn": item_knn, "ease": ease,
            "bpr": bpr, "als": als}


def build(kind: str, matrix: sp.csr_matrix, n_targets: int, **params) -> Fitted:
    """Fit model `kind` (a key of BUILDERS) with `params` on `matrix`."""
    if kind not in BUILDERS:
        raise WenlvError(f"unknown recommender {kind!r}; known: {', '.join(BUILDERS)}")
    return BUILDERS[kind](matrix, n_targets, **params)
