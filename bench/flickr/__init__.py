"""Trajectory recommendation on the Flickr photo trails, by the CIKM 2016 protocol.

Protocol (Chen, Ong, Xie, "Learning Points and Routes to Recommend Trajectories", CIKM
2016, public code computationalmedia/tour-cikm16): every trajectory with ≥ 3 POIs is
held out in turn; everything learned comes from all OTHER trajectories (short ones
included); the query is (start POI, end POI, number of POIs); queries whose start or end
never occurs in the training trajectories are skipped; F1 compares the recommended and
the real POI lists (start and end included), pairs-F1 their visiting order.
The authors' published means are over the queries that PersTour (an ILP that could time
out) also answered (parse_results.ipynb: keys of ijcai-CITY.pkl ∩ rank-CITY.pkl); that
subset is in binary result files we cannot read, so we average over all queries. Our
popularity baseline reproduces their PoiPopularity in Edin/Glas/Osak/Toro to 0.001, not
in Melbourne (.607 vs .620): there the published subset is evidently smaller. Results are
also kept by query length (by_length) with the exact expected Random F1, so that the
baselines can locate that subset (in Melbourne: the queries of at most about 7 POIs).

Our recommender: logistic POI rankers (pointwise and pairwise, averaged) on query features computed from training counts
(popularity, visit counts, co-occurrence with the start and end POI, transitions out of
the start and into the end, distances, categories) — or the authors' PoiRank feature set,
or both side by side (`Featurizer`) — then the best visiting order of the
chosen POIs under a smoothed first-order transition model (exact DP over subsets). With
markov_alpha < 1 the set and order are chosen jointly instead, as the authors' Rank+MarkovPath:
the simple path maximising alpha * log P(rank) + (1 - alpha) * log P(transition) (exact A*).
Counts are held as totals from which the held-out trajectory is subtracted, which makes
leave-one-out exact and cheap; the model is refitted for every held-out trajectory on
features computed without it (and without each training query's own trajectory).

Modules, each importing only those above it:
  options    FEATURE_SETS, without numpy: the CLI offers them at start-up
  data       CityData, load_trajectories (CIKM'16 files), load_visits (IJCAI'15 visits)
  features   Counts (leave-one-out totals), query_features, authors_features, Featurizer
  learners   LogisticModel, PairwiseModel, ENSEMBLE, POIRANK, fit_model, FitCache
  decoding   best_order, transition_logp, best_path, rank_markov_path (Rank+MarkovPath)
  metrics    f1, pairs_f1, by_length, expected_random_f1, published figures, published_subset
  selection  choose_model (GRID per half), cv_scorer, pick_scorer, choose_scorer (CV_SCORERS)
  protocol   HalfEvaluation, run_queries, evaluate_city -> CityResult

This package imports nothing itself, so that `wenlv.bench.flickr.options` stays cheap.
"""
