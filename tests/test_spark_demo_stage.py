"""The `features` demo stage: runs the job on the data stage's folder and returns its section."""
from __future__ import annotations

import json

import pytest

from tests.test_spark_features import MARKETING, SUBSCRIBERS, make_raw

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def test_demo_stage_returns_manifest_row_counts_and_psi(spark, tmp_path):
    from wenlv.spark_jobs import demo_stage
    from wenlv.demo import DemoContext

    raw = make_raw(tmp_path / "data")
    ctx = DemoContext(workdir=tmp_path, progress=False)
    ctx.results["data"] = {"_paths": {"data_dir": str(raw)}}
    section = demo_stage.run(ctx)
    manifest = json.loads(open(section["manifest"]).read())
    assert section["_paths"]["features_dir"] == str(tmp_path / "features")
    assert section["row_counts"] == {k: v["rows"] for k, v in manifest["tables"].items()}
    psi = section["_summary"]["psi"]
    assert psi["tourism_carrier_matched"] == len(set(MARKETING) & set(SUBSCRIBERS))
    assert psi == {k: manifest["psi"][k] for k in ("tourism_carrier_matched", "internet_carrier_matched")}
