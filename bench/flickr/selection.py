"""Choosing a model or scorer by 5-fold F1 on training queries only: the GRID choice tuned per
half (choose_model) and the CV_SCORERS choice of --features cv and nested (pick_scorer)."""
from __future__ import annotations

import numpy as np

from wenlv.bench.flickr.data import CityData
from wenlv.bench.flickr.decoding import _top
from wenlv.bench.flickr.features import N_FEATURES, Counts, Featurizer, _example
from wenlv.bench.flickr.learners import ENSEMBLE, GRID, POIRANK, FitCache, ensemble_score, fit_model
from wenlv.bench.flickr.metrics import f1


def _fold_f1(data: CityData, items: list, folds: int, fit) -> float:
    """Mean F1 over `folds` folds of `items` [(trajectory id, _example output)]: `fit(training
    groups)` gives a scorer of a held-out query's feature rows."""
    f1s = []
    for f in range(folds):
        score = fit([x[:2] for i, (_, x) in enumerate(items) if i % folds != f])
        for i, (t, x) in enumerate(items):
            if i % folds == f:
                tr = data.trajs[t]
                f1s.append(f1(tr, [tr[0]] + _top(data, t, x[2], score(x[0])) + [tr[-1]]))
    return float(np.mean(f1s))


def choose_model(data: CityData, featurize: Featurizer, short_ids: list[int], tune_ids: list[int],
                 folds: int = 5) -> tuple[tuple[str, float], dict]:
    """Pick the model choice with the best 5-fold F1 on the tuning queries only.

    Statistics come from the short trajectories and the tuning half alone (each query's
    own trajectory removed), so the other half never influences the choice.
    """
    counts = Counts(data, short_ids + tune_ids)
    items = [(t, x) for t in tune_ids if (x := _example(data, counts, featurize, t)) is not None]
    if len(items) < 2 * folds:  # too few to tune: the plain default
        return GRID[0], {}
    scores = {}
    for choice in GRID:
        scores[f"{choice[0]}:{choice[1]:g}"] = _fold_f1(
            data, items, folds, lambda train, c=choice: fit_model(c, train).decision_function)
    best = max(GRID, key=lambda c: scores[f"{c[0]}:{c[1]:g}"])
    return best, scores


# Scorers "cv" and "nested" choose among, on featurize = Featurizer(data, "both") columns.
CV_SCORERS = ("ours", "both", "poirank", "poirank_both")
OURS_COLUMNS = slice(0, N_FEATURES)  # our features' columns in the "both" layout
_CV_COLUMNS = {"ours": OURS_COLUMNS, "both": slice(None), "poirank": slice(N_FEATURES, None),
               "poirank_both": slice(None)}


def cv_scorer(name: str, groups: list, fits: FitCache | None = None):
    """Scorer `name` fitted on `groups` (features of both sets side by side), as a function of a
    query's feature rows: "ours" and "both" are the ENSEMBLE on those columns; "poirank" is
    POIRANK (the authors' learner) on the authors' columns, "poirank_both" the same learner on both sets.
    `fits`, a FitCache of the same groups, lets other scorers reuse these fits."""
    cols, fits = _CV_COLUMNS[name], fits or FitCache(groups)
    if name.startswith("poirank"):
        model = fits(POIRANK, cols)
        return lambda X: model.decision_function(X[:, cols])
    fitted = {c: fits(c, cols) for c in ENSEMBLE}
    return lambda X: ensemble_score(fitted, X[:, cols])


def pick_scorer(data: CityData, items: list, folds: int = 5) -> tuple[str, dict]:
    """One of CV_SCORERS by 5-fold F1 over `items` [(trajectory id, _example output)] only;
    each scorer is fitted once per fold."""
    if len(items) < 2 * folds:
        return "ours", {}
    scores = {name: _fold_f1(data, items, folds, lambda train, n=name: cv_scorer(n, train)) for name in CV_SCORERS}
    return max(scores, key=scores.get), scores  # a tie keeps the earlier ("ours" first)


def choose_scorer(data: CityData, featurize: Featurizer, short_ids: list[int], tune_ids: list[int],
                  folds: int = 5) -> tuple[str, dict]:
    """pick_scorer on the tuning queries only (statistics as in choose_model)."""
    counts = Counts(data, short_ids + tune_ids)
    return pick_scorer(data, [(t, x) for t in tune_ids if (x := _example(data, counts, featurize, t)) is not None], folds)
