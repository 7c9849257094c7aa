"""`wenlv bench chart` draws each benchmark's JSON, and refuses what no benchmark printed."""
import json

import pytest

from wenlv.bench import charts
from wenlv.cli import main
from wenlv.errors import WenlvError

RESULTS = {
    "itinerary": {"flickr": {"Toro": {"f1": 0.76, "published_f1": {"PoiRank": 0.754, "PoiPopularity": 0.678},
                                      "published_best_f1": 0.754, "by_query_length": {
                                          "3": {"queries": 4, "f1": 0.8, "pairs_f1": 0.6, "f1_popularity": 0.7},
                                          "5": {"queries": 2, "f1": 0.5, "pairs_f1": 0.3, "f1_popularity": 0.4}}},
                             "Edin": {"f1": 0.72, "published_f1": {"PoiRank": 0.700, "Random": 0.570}}},
                  "toptw": {"mean_seconds": 0.8, "per_instance": {
                      "c101": {"gap": 0.0, "best_known": 320, "greedy_score": 310},
                      "r101": {"gap": 0.01, "best_known": 198, "greedy_score": 180}}}},
    "als": {"benchmark": "als", "data": {"users": 1000}, "params": {"factors": 16},
            "seconds_per_iteration": {"federated": 0.8, "implicit": 0.3, "spark": 30.0}},
    "serve": {"fixed_rate": {"achieved_rps": 300, "p50_ms": 5, "p95_ms": 10, "p99_ms": 13},
              "saturation": {"throughput_rps": 1200, "p50_ms": 12, "p95_ms": 16, "p99_ms": 24}},
    "features": {"bench": "features", "scales": [
        {"scale": "tiny", "raw_rows": 1e5, "seconds": 20, "psi": {"seconds": 7, "items_per_s_per_core": 300,
                                                                  "matched_per_s_per_core": 90}},
        {"scale": "small", "raw_rows": 3e6, "seconds": 56, "psi": {"seconds": 23, "items_per_s_per_core": 2400,
                                                                    "matched_per_s_per_core": 700}}]},
    "events": {"bench": "events",
               "postgresql": {"events_per_s": 17000, "p50_ms": 300, "p99_ms": 1300, "pgbench_rows_per_s": 31000},
               "sqlite": {"events_per_s": 8800, "p50_ms": 600, "p99_ms": 3200, "pgbench_rows_per_s": None,
                          "direct_rows_per_s": 4100}},
}


@pytest.mark.parametrize("kind", sorted(RESULTS))
def test_each_benchmark_kind_is_recognised_and_drawn(kind, tmp_path, capsys):
    source = tmp_path / f"{kind}.json"
    source.write_text(json.dumps(RESULTS[kind]))
    assert charts.kind_of(RESULTS[kind]) == kind
    assert main(["bench", "chart", str(source)]) == 0
    png = source.with_suffix(".png")
    assert capsys.readouterr().out.strip() == str(png)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_json_that_no_benchmark_printed_is_refused_by_name(tmp_path):
    with pytest.raises(WenlvError, match="unknown keys: colour"):
        charts.kind_of({"colour": "red"})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["bench", "chart", str(bad)]) == 2
