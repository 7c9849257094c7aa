"""Benchmark plumbing: the CIKM'16 metrics against hand-computed examples, exact
leave-one-out counts, the IJCAI'15 visits reader, and the Solomon TOPTW parser on c101."""
from __future__ import annotations

import numpy as np
import pytest

from wenlv.bench.flickr import learners
from wenlv.bench.flickr.data import CityData, load_trajectories, load_visits
from wenlv.bench.flickr.decoding import best_order, best_path, rank_markov_path
from wenlv.bench.flickr.features import N_FEATURES, Counts, Featurizer, _example, authors_features, distance_km, query_features
from wenlv.bench.flickr.learners import ENSEMBLE, POIRANK, FitCache, PairwiseModel, ensemble_score, fit_model
from wenlv.bench.flickr.metrics import by_length, expected_random_f1, f1, mean_up_to_length, pairs_f1, published_subset
from wenlv.bench.flickr.options import FEATURE_SETS
from wenlv.bench.flickr.protocol import evaluate_city
from wenlv.bench.flickr.selection import CV_SCORERS, OURS_COLUMNS, cv_scorer, pick_scorer
from wenlv.bench.itinerary import model_label
from wenlv.errors import DataValidationError
from wenlv.bench import toptw
from wenlv.itinerary import core


def test_f1_and_pairs_f1_match_hand_computation():
    # hits 1, 3, 5 of five each side: P = R = 3/5
    assert f1([1, 2, 3, 4, 5], [1, 3, 6, 7, 5]) == pytest.approx(0.6)
    # of the 10 recommended pairs, (1,3), (1,5), (3,5) are in the real order; 10 real pairs
    assert pairs_f1([1, 2, 3, 4, 5], [1, 3, 6, 7, 5]) == pytest.approx(0.3)
    # same set, one pair reversed: F1 1, pairs-F1 2/3
    assert f1([1, 2, 3], [1, 3, 2]) == 1.0
    assert pairs_f1([1, 2, 3], [1, 3, 2]) == pytest.approx(2 / 3)
    assert f1([1, 2, 3], [4, 5, 6]) == 0.0 and pairs_f1([1, 2, 3], [3, 2, 1]) == 0.0
    with pytest.raises(ValueError):
        pairs_f1([1, 2, 1], [1, 2])


def _city(trajs, users):
    n = 1 + max(max(t) for t in trajs)
    return CityData("X", np.arange(n), np.arange(n) % 2, np.linspace(0, 0.1, n), np.linspace(0, 0.1, n),
                    trajs, users, [[60.0] * len(t) for t in trajs], {})


def test_by_length_averages_each_query_length_apart():
    got = by_length([3, 5, 3, 4], f1=[1.0, 0.2, 0.5, 0.4], f1_popularity=[0.0, 0.0, 1.0, 1.0])
    assert got == {3: {"queries": 2, "f1": 0.75, "f1_popularity": 0.5}, 4: {"queries": 1, "f1": 0.4, "f1_popularity": 1.0},
                   5: {"queries": 1, "f1": 0.2, "f1_popularity": 0.0}}


def test_leave_one_out_counts_equal_counts_built_without_the_trajectory():
    trajs = [[0, 1, 2], [1, 2, 3, 4], [0, 4], [2, 3], [0, 1, 3, 4]]
    users = ["a", "a", "b", "c", "b"]
    data = _city(trajs, users)
    full = Counts(data, list(range(5)))
    dist = distance_km(data)
    for t in range(5):
        restore = full.without(t)
        rebuilt = Counts(data, [i for i in range(5) if i != t])
        for name in ("pop", "visits", "trans", "co", "contains", "start_with", "end_with", "co3", "se_with"):
            np.testing.assert_array_equal(getattr(full, name), getattr(rebuilt, name), err_msg=f"{name} without {t}")
        np.testing.assert_allclose(query_features(full, dist, 0, 4, 3), query_features(rebuilt, dist, 0, 4, 3))
        restore()
    np.testing.assert_array_equal(full.pop, Counts(data, list(range(5))).pop)


def test_best_order_follows_the_likeliest_transitions():
    logp = np.full((5, 5), -5.0)
    logp[0, 3] = logp[3, 1] = logp[1, 2] = logp[2, 4] = -0.1
    assert best_order(0, 4, [1, 2, 3], logp) == [0, 3, 1, 2, 4]


def test_visits_reader_merges_photos_and_counts_absurd_dates(tmp_path):
    (tmp_path / "POI-Tst.csv").write_text("poiID;poiName;lat;long;theme\r\n1;A%20b;1.0; 2.0;Park\r\n2;C;1.1; 2.1;Museum\r")
    rows = ['"photoID";"userID";"dateTaken";"poiID";"poiTheme";"poiFreq";"seqID"',
            '1;"u1";1300000000;1;"Park";5;7', '2;"u1";1300000100;1;"Park";5;7', '3;"u1";1300000900;2;"Museum";5;7',
            '4;"u1";1300001000;1;"Park";5;7', '5;"u2";-3000000000;2;"Museum";5;8', '6;"u2";1300000000;9;"X";5;8']
    (tmp_path / "userVisits-Tst.csv").write_text("\r\n".join(rows) + "\r\n")
    data = load_visits(tmp_path, "Tst")
    assert data.trajs == [[0, 1, 0]]  # seq 7: POI 1 (two photos), POI 2, POI 1 again; seq 8 has nothing valid
    assert data.durations[0] == [100.0, 0.0, 0.0]
    assert data.dropped == {"bad_time": 1, "unknown_poi": 1}


def test_solomon_parser_reads_c101_as_written(shared_data):
    points = toptw.parse(shared_data / "toptw" / "solomon100" / "c101.txt")
    assert len(points) == 101
    depot, first = points[0], points[1]
    # "  0 40.00 50.00 0.00 0.00 0 0 0 1236": no list entries, window 0..1236
    assert (depot.i, depot.x, depot.y, depot.service, depot.profit, depot.open, depot.close) == (0, 40, 50, 0, 0, 0, 1236)
    # "  1 45.00 68.00 90.00 10.00 1 1 1 912 967": a = 1 list entry, then O = 912, C = 967
    assert (first.i, first.x, first.y, first.service, first.profit, first.open, first.close) == (1, 45, 68, 90, 10, 912, 967)
    assert toptw.distance(depot, first) == 18.6  # sqrt(349) = 18.68…, rounded down
    inst = toptw.to_instance(points)
    assert inst.travel[inst.start, 0] == 18.6 and inst.day_end == 1236


def test_parser_names_the_bad_line(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("4 10 2 1\n0 200\n 0 40 50 0 0 0 0 0 1236\n 1 45 68 90 x 1 1 1 912 967\n")
    with pytest.raises(DataValidationError, match="row 4"):
        toptw.parse(bad)


@pytest.mark.slow
def test_solver_reaches_the_cited_best_known_score_on_c101(shared_data):
    points = toptw.parse(shared_data / "toptw" / "solomon100" / "c101.txt")
    sol, _ = core.solve(toptw.to_instance(points), seed=0, max_iterations=3000, time_limit=60, max_no_improve=1000)
    route = [points[j + 1].i for j in sol.routes[0].nodes]
    score, problems = toptw.check_route(points, route)
    assert problems == []
    assert score >= 0.95 * toptw.BEST_KNOWN_CITED["c101"]


def test_bench_runs_end_to_end_on_a_small_city_and_one_toptw_instance(tmp_path, shared_data, capsys):
    import json
    import shutil

    from wenlv.cli import main

    rng = np.random.default_rng(3)
    pois = ["poiID;poiName;lat;long;theme"] + [f"{i};P{i};{1 + 0.01 * i}; {2 + 0.01 * (i % 3)};{'AB'[i % 2]}"
                                                for i in range(1, 9)]
    (tmp_path / "POI-Tiny.csv").write_text("\n".join(pois) + "\n")
    rows, photo = ['"photoID";"userID";"dateTaken";"poiID";"poiTheme";"poiFreq";"seqID"'], 0
    for seq in range(1, 61):
        stops = rng.choice(np.arange(1, 9), size=int(rng.integers(2, 6)), replace=False, p=np.linspace(2, 1, 8) / 12)
        for k, poi in enumerate(stops):
            photo += 1
            rows.append(f'{photo};"u{seq % 17}";{1_300_000_000 + seq * 86400 + k * 600};{poi};"A";1;{seq}')
    (tmp_path / "userVisits-Tiny.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "toptw").mkdir()
    shutil.copy(shared_data / "toptw" / "solomon100" / "c101.txt", tmp_path / "toptw")
    code = main(["bench", "itinerary", "--json", "--source", str(tmp_path), "--city", "Tiny",
                 "--toptw-dir", str(tmp_path / "toptw"), "--time-limit", "0.2"])
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    tiny = out["flickr"]["Tiny"]
    assert tiny["queries"] > 10 and 0 < tiny["f1"] <= 1 and 0 <= tiny["pairs_f1"] <= 1
    assert tiny["published_best_f1"] is None and tiny["source_format"].startswith("visits")
    assert "published_subset_estimate" not in tiny  # nothing published to locate
    by_len = tiny["by_query_length"]  # JSON keys: the query lengths; weighted means give the totals back
    assert sum(v["queries"] for v in by_len.values()) == tiny["queries"] and min(map(int, by_len)) >= 3
    for key in ("f1", "pairs_f1"):
        mean = sum(v["queries"] * v[key] for v in by_len.values()) / tiny["queries"]
        assert mean == pytest.approx(tiny[key], abs=1e-3)
    c101 = out["toptw"]["per_instance"]["c101"]
    assert c101["best_known"] == 320 and 0 < c101["score"] <= 320 and c101["gap"] == pytest.approx((320 - c101["score"]) / 320, abs=1e-4)
    assert out["toptw"]["instances"] == 1 and c101["greedy_score"] <= c101["score"]


def test_trajectory_reader_takes_coordinates_by_header_name(tmp_path):
    # Melbourne's poi file has poiLat before poiLon (the other four cities the reverse)
    base = tmp_path / "trajectories"
    base.mkdir()
    (base / "poi-Mel.csv").write_text("poiID,poiCat,poiLat,poiLon\n0,Park,-37.82,144.97\n5,Museum,-37.81,144.96\n")
    (base / "traj-Mel.csv").write_text(
        "userID,trajID,poiID,startTime,endTime,#photo,trajLen,poiDuration\n"
        "u,1,5,200,260,2,2,60\nu,1,0,100,130,1,2,30\n")
    data = load_trajectories(tmp_path, "Mel")
    assert data.lat.tolist() == [-37.82, -37.81] and data.lon.tolist() == [144.97, 144.96]
    assert data.trajs == [[0, 1]] and data.durations == [[30.0, 60.0]]  # ordered by startTime


def test_authors_poirank_features_match_hand_computation():
    # 4 POIs, categories 0,1,0,1; trips by users a, a, b: [0,1,2], [0,3], [1,2]
    data = CityData("X", np.arange(4), np.array([0, 1, 0, 1]), np.zeros(4), np.zeros(4),
                    [[0, 1, 2], [0, 3], [1, 2]], ["a", "a", "b"],
                    [[10.0, 100.0, 1000.0], [20.0, 1.0], [300.0, 2000.0]], {})
    c = Counts(data, [0, 1, 2])
    dist = np.arange(16, dtype=float).reshape(4, 4)
    clusters = np.array([0, 0, 1, 1])
    X = authors_features(c, dist, clusters, 0, 2, 3)
    assert X.shape == (4, 2 + 2 + 4 + 12)
    p1 = X[1]
    # POI 1: category 1 -> (-1, 1); cluster 0 -> (1, -1); popularity 2 users, 2 visits,
    # mean duration (100 + 300) / 2 = 200; length 3
    np.testing.assert_allclose(p1[:8], [-1, 1, 1, -1, np.log10(2), np.log10(2), np.log10(200), 3])
    # same category as start 0 / end 2 (both category 0): -1, -1; distances dist[0,1] = 1, dist[2,1] = 9
    # popularity diffs 2 - pop(0)=1 and 2 - pop(2)=2; visits 2 - 2, 2 - 2;
    # duration 200 - 15 (POI 0: (10 + 20) / 2), 200 - 1500 (POI 2: (1000 + 2000) / 2); same cluster as 0 yes, as 2 no
    np.testing.assert_allclose(p1[8:], [-1, -1, 1, 9, 1, 0, 0, 0, 185, -1300, 1, -1])
    # a POI never visited gets the authors' LOG_SMALL (-10) for its logs
    c0 = Counts(data, [2])
    assert authors_features(c0, dist, clusters, 1, 2, 3)[0, 4] == -10.0


def test_featurizer_sets_are_ours_and_the_authors_side_by_side():
    data = _city([[0, 1, 2], [1, 2, 3, 4], [0, 4], [2, 3], [0, 1, 3, 4]], ["a", "a", "b", "c", "b"])
    c = Counts(data, list(range(5)))
    both = Featurizer(data, "both")
    ours = query_features(c, both.dist, 0, 4, 3)
    authors = authors_features(c, both.dist, both.clusters, 0, 4, 3)
    np.testing.assert_array_equal(both(c, 0, 4, 3), np.hstack([ours, authors]))
    np.testing.assert_array_equal(Featurizer(data, "ours")(c, 0, 4, 3), ours)
    np.testing.assert_array_equal(Featurizer(data, "cv")(c, 0, 4, 3), both(c, 0, 4, 3))
    with pytest.raises(ValueError, match="feature_set"):
        Featurizer(data, "nope")


def test_cv_scorer_is_chosen_from_the_other_half_only():
    rng = np.random.default_rng(0)
    trajs = [list(rng.choice(8, size=int(rng.integers(2, 6)), replace=False)) for _ in range(80)]
    data = _city(trajs, [f"u{i % 13}" for i in range(80)])
    r = evaluate_city(data, feature_set="cv")
    assert r.queries == sum(len(t) >= 3 for t in trajs) - r.skipped
    for half in r.models:  # one choice per half, with the inner-CV F1 of every candidate
        assert half["scorer"] in CV_SCORERS and set(half["scorer_inner_cv_f1"]) == set(CV_SCORERS)
        assert half["scorer_inner_cv_f1"][half["scorer"]] == max(half["scorer_inner_cv_f1"].values())
    assert 0 < r.f1 <= 1 and r.f1_poirank_replica is None
    # too few training queries to cross-validate: the plain default, no scores
    assert pick_scorer(data, []) == ("ours", {})


def test_cv_scorers_fit_their_own_columns_once():
    rng = np.random.default_rng(1)
    trajs = [list(rng.choice(8, size=int(rng.integers(3, 6)), replace=False)) for _ in range(40)]
    data = _city(trajs, [f"u{i % 7}" for i in range(40)])
    c, featurize = Counts(data, list(range(40))), Featurizer(data, "both")
    groups = [x[:2] for t in range(40) if (x := _example(data, c, featurize, t)) is not None]
    X, nf = featurize(c, 0, 1, 4), N_FEATURES
    ours_only = [(g[0][:, :nf], g[1]) for g in groups]
    authors_only = [(g[0][:, nf:], g[1]) for g in groups]
    expected = {
        "ours": ensemble_score({m: fit_model(m, ours_only) for m in ENSEMBLE}, X[:, :nf]),
        "poirank": fit_model(POIRANK, authors_only).decision_function(X[:, nf:]),
        "poirank_both": fit_model(POIRANK, groups).decision_function(X),
    }
    for name, score in expected.items():
        np.testing.assert_allclose(cv_scorer(name, groups)(X), score)
    # the PoiRank learner on both sets is a different scorer from the replica on the authors' set
    assert not np.allclose(expected["poirank_both"], expected["poirank"])


def test_best_path_is_the_exact_best_simple_path():
    import itertools

    # hand example: ranking favours 2, but 2 is far from both ends; 3 -> 4 is the likely route
    node = np.array([0.0, 0.0, -0.1, -1.0, -1.0])
    edge = np.full((5, 5), -3.0)
    edge[0, 3] = edge[3, 4] = edge[4, 1] = -0.1
    assert best_path(0, 1, 4, np.array([2, 3, 4]), node, edge) == [0, 3, 4, 1]
    # a node weight large enough wins instead: 2 appears once, never repeated
    node[2] = 6.0
    path = best_path(0, 1, 4, np.array([2, 3, 4]), node, edge)
    assert 2 in path and len(set(path)) == 4
    rng = np.random.default_rng(3)
    for _ in range(40):  # against brute force over every ordered choice
        n, s, e = 8, 0, 1
        node, edge = rng.normal(size=n), rng.normal(size=(n, n))
        length = int(rng.integers(3, 8))
        value = lambda p: node[list(p)].sum() + sum(edge[a, b] for a, b in zip((s, *p), (*p, e)))  # noqa: E731
        best = max(itertools.permutations(range(2, n), length - 2), key=value)
        stats = {}
        got = best_path(s, e, length, np.arange(2, n), node, edge, stats)
        assert got == [s, *best, e] and stats == {"exact": 1}


def test_rank_markov_path_with_alpha_one_is_the_ranking_alone():
    logp = np.log(np.full((5, 5), 0.25))
    cands, score = np.array([2, 3, 4]), np.array([0.5, 2.0, 1.0])
    path = rank_markov_path(0, 1, 4, cands, score, logp, 1.0)
    assert path[0] == 0 and path[-1] == 1 and set(path) == {0, 1, 3, 4}  # the two top-ranked, order a tie
    # with uniform transitions every alpha < 1 picks the same set
    assert set(rank_markov_path(0, 1, 4, cands, score, logp, 0.3)) == {0, 1, 3, 4}


def test_bench_json_names_the_scorer_that_each_feature_set_uses():
    labels = {f: model_label(f) for f in FEATURE_SETS}
    assert len(set(labels.values())) == len(FEATURE_SETS)       # no two choices labelled alike
    for f in ("cv", "nested"):
        assert all(name in labels[f] for name in CV_SCORERS) and "ensemble" not in labels[f]
    assert "per held-out query" in labels["nested"] and "PoiRank" in labels["poirank"]


def _plain_pairwise_weights(groups, l2):
    """The pairwise fit as first written (negating D at every evaluation), for comparison."""
    from scipy.optimize import minimize

    X = np.vstack([g[0] for g in groups])
    mu, sd = X.mean(0), X.std(0) + 1e-9
    diffs = []
    for Xg, yg in groups:
        Z = (Xg - mu) / sd
        pos, neg = Z[yg > 0], Z[yg == 0]
        if len(pos) and len(neg):
            diffs.append((pos[:, None, :] - neg[None, :, :]).reshape(-1, Z.shape[1]))
    D = np.vstack(diffs)

    def loss(w):
        z = D @ w
        return np.sum(np.logaddexp(0, -z)) + 0.5 * l2 * w @ w, -D.T @ (1 / (1 + np.exp(z))) + l2 * w

    return minimize(loss, np.zeros(D.shape[1]), jac=True, method="L-BFGS-B").x


def test_pairwise_fit_is_bit_identical_to_the_plain_loss():
    # the fit is ill-conditioned at small L2: only the same arithmetic gives the same ranker
    rng = np.random.default_rng(5)
    groups = [(rng.normal(size=(12, 6)), (rng.random(12) < 0.25).astype(float)) for _ in range(30)]
    for l2 in (0.1, 10.0):
        np.testing.assert_array_equal(PairwiseModel(l2).fit_groups(groups).w, _plain_pairwise_weights(groups, l2))


def test_fit_cache_fits_each_choice_and_columns_once(monkeypatch):
    rng = np.random.default_rng(2)
    groups = [(rng.normal(size=(10, N_FEATURES + 4)), (rng.random(10) < 0.3).astype(float)) for _ in range(20)]
    X = rng.normal(size=(7, N_FEATURES + 4))
    plain = cv_scorer("ours", groups)(X)
    calls = []
    fit = learners.fit_model
    monkeypatch.setattr(learners, "fit_model", lambda choice, g: calls.append(choice) or fit(choice, g))
    fits = FitCache(groups)
    np.testing.assert_array_equal(cv_scorer("ours", groups, fits)(X), plain)
    for choice in ENSEMBLE:  # the tuned choice / the ensemble on our columns: no refit
        assert fits(choice, OURS_COLUMNS) is fits(choice, slice(0, N_FEATURES))
    assert sorted(calls) == sorted(ENSEMBLE)
    fits(ENSEMBLE[0])  # other columns: another fit
    assert len(calls) == 3


def test_held_out_queries_give_the_same_result_in_any_number_of_processes():
    import dataclasses

    rng = np.random.default_rng(4)
    trajs = [list(rng.choice(7, size=int(rng.integers(2, 5)), replace=False)) for _ in range(30)]
    data = _city(trajs, [f"u{i % 5}" for i in range(30)])
    one = evaluate_city(data, feature_set="ours+poirank")
    assert one.queries > 5
    assert dataclasses.asdict(evaluate_city(data, feature_set="ours+poirank", jobs=2)) == dataclasses.asdict(one)


def test_mean_up_to_length_weights_each_length_by_its_queries():
    table = {"3": {"queries": 2, "f1": 0.75}, "5": {"queries": 1, "f1": 0.2}, "4": {"queries": 1, "f1": 0.4}}
    lengths, means = mean_up_to_length(table, "f1")
    assert lengths == [3, 4, 5] and means == pytest.approx([0.75, (1.5 + 0.4) / 3, (1.5 + 0.4 + 0.2) / 4])


def test_expected_random_f1_equals_the_mean_over_every_draw():
    import itertools

    actual, cands = [0, 3, 5, 9], np.array([1, 2, 3, 4, 5, 6])  # 3 and 5 are candidates, 2 stops drawn
    draws = [f1(actual, [0, *pick, 9]) for pick in itertools.permutations(cands.tolist(), 2)]
    assert expected_random_f1(actual, cands) == pytest.approx(np.mean(draws))
    assert expected_random_f1([0, 7, 9], cands) == pytest.approx(2 / 3)  # its stop is no candidate


def test_published_subset_is_located_by_popularity_alone():
    table = {"3": {"queries": 4, "f1": 0.9, "f1_popularity": 0.70}, "4": {"queries": 4, "f1": 0.1, "f1_popularity": 0.60},
             "5": {"queries": 2, "f1": 0.0, "f1_popularity": 0.40}}
    # popularity over <= 3, <= 4, all: .70, .65, .60 — the published .65 picks the queries of at most 4 POIs
    got = published_subset(table, 0.65)
    assert got == {"max_query_length": 4, "all_queries": False, "queries": 8, "f1": 0.5, "f1_popularity": 0.65}
    assert published_subset(table, 0.6)["all_queries"] and published_subset(table, 0.6)["queries"] == 10
    assert published_subset(table, 0.9)["max_query_length"] == 3  # nothing within tolerance: the closest
