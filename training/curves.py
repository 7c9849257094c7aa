"""Learning curves: loss and NDCG after every ALS iteration and every tower epoch, as MLflow steps.

Computed where the factors already are, so the coordinator learns nothing a normal run
does not show it: after each iteration it holds the user factors and the tourism POI
factors, and it owns the tourism block. The ALS loss is therefore `implicit`'s objective
(its own `calculate_loss`: confidence-weighted squared error over every user × POI cell,
plus L2, normalised) restricted to the tourism block, the same quantity in federated and
central runs; the carrier and internet terms stay with their parties. The NDCG@k curve is
measured on the feature folder's temporal test window exactly as the run's `ndcg@k` is
(every POI ranked, test users only), so its last point equals the logged metric. It is
only logged: nothing chooses anything from it. Tower epochs log the training loss the
coordinator computes anyway.
"""
from __future__ import annotations

import numpy as np
from implicit.cpu.als import calculate_loss

from wenlv.training import evaluation

ALS_LOSS = "als_tourism_loss"
ALS_NDCG = "als_test_ndcg_at_{k}"
TOWER_LOSS = "tower_loss"


class AlsCurve:
    """Called after every ALS iteration with the user and POI factors; keeps (iteration, loss, NDCG)."""

    def __init__(self, blocks, matrices, regularization: float, k: int = 10):
        self.k, self.regularization = k, float(regularization)
        self.block = matrices.blocks["tourism"].astype(np.float64).tocsr()
        truth = blocks["tourism/test_interactions"].rename(columns={"token": evaluation.USER, "poi_id": evaluation.ITEM})
        self.truth = truth[[evaluation.USER, evaluation.ITEM]]
        rows = matrices.row_of().reindex(self.truth[evaluation.USER].unique()).dropna().astype(int).to_numpy()
        self.rows = np.sort(rows)
        self.tokens, self.pois = matrices.tokens[self.rows], matrices.items["tourism"]
        self.points: list[tuple[int, float, float]] = []

    def __call__(self, iteration: int, user_factors: np.ndarray, poi_factors: np.ndarray) -> None:
        users = np.asarray(user_factors, dtype=np.float64)
        items = np.asarray(poi_factors, dtype=np.float64)
        loss = float(calculate_loss(self.block, users, items, self.regularization))
        # float32, as the published factors the run's ndcg@k is measured on
        scores = np.asarray(user_factors, np.float32)[self.rows] @ np.asarray(poi_factors, np.float32).T
        recs = evaluation.top_k(scores, self.tokens, self.pois, self.k)
        self.points.append((int(iteration), loss, float(evaluation.ndcg_at_k(self.truth, recs, self.k))))

    def steps(self) -> dict[str, list[tuple[int, float]]]:
        return {ALS_LOSS: [(i, loss) for i, loss, _ in self.points],
                ALS_NDCG.format(k=self.k): [(i, ndcg) for i, _, ndcg in self.points]}


def tower_steps(losses: list[float]) -> dict[str, list[tuple[int, float]]]:
    """The towers' mean training loss per epoch (step = epoch, from 0)."""
    return {TOWER_LOSS: [(epoch, float(loss)) for epoch, loss in enumerate(losses)]}

