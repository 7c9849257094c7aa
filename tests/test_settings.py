"""One settings object: read once from the environment, validated, masked, documented in the README."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wenlv.cli import main as wenlv_main
from wenlv.errors import WenlvError
from wenlv.serving import indexes
from wenlv.settings import (TABLE_BEGIN, TABLE_END, Settings, get_settings, masked, readme_with_table,
                            reset_settings, settings_table)
from wenlv.spark_jobs.session import spark_conf

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("features", "spark_jobs", "privacy", "training", "itinerary", "marketing", "ledger", "serving", "wenlv")


def test_a_bad_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("WENLV_FAISS_THREADS", "zero")
    with pytest.raises(WenlvError, match=r"WENLV_FAISS_THREADS: .*'zero'"):
        get_settings()
    monkeypatch.setenv("WENLV_FAISS_THREADS", "0")
    reset_settings()
    with pytest.raises(WenlvError, match="WENLV_FAISS_THREADS: Input should be greater than or equal to 1"):
        get_settings()


def test_the_command_line_reports_a_bad_value_without_a_traceback(monkeypatch, capsys):
    monkeypatch.setenv("WENLV_ITINERARY_TIME_LIMIT", "-1")
    assert wenlv_main(["config", "show"]) == 2
    err = capsys.readouterr().err
    assert "WENLV_ITINERARY_TIME_LIMIT" in err and "Traceback" not in err


def test_settings_are_read_once_until_reset(monkeypatch):
    monkeypatch.setenv("WENLV_SHUFFLE_PARTITIONS", "3")
    assert get_settings().shuffle_partitions == 3
    monkeypatch.setenv("WENLV_SHUFFLE_PARTITIONS", "5")
    assert get_settings().shuffle_partitions == 3  # cached: one consistent view per process
    reset_settings()
    assert get_settings().shuffle_partitions == 5


def test_secrets_and_url_passwords_are_masked(monkeypatch):
    monkeypatch.setenv("WENLV_API_PEPPER", "pepper-secret")
    monkeypatch.setenv("REDIS_URL", "redis://:redis-secret@cache.example:6379/0")
    monkeypatch.setenv("DATABASE_URL", "postgresql://wenlv:db-secret@db.example:5432/wenlv")
    shown = masked()
    assert shown["WENLV_API_PEPPER"] == "******"
    assert shown["REDIS_URL"] == "redis://:******@cache.example:6379/0"
    assert shown["DATABASE_URL"] == "postgresql://wenlv:******@db.example:5432/wenlv"
    assert get_settings().api_pepper.get_secret_value() == "pepper-secret"  # masked for display only


def test_config_show_prints_effective_values_masked(monkeypatch, capsys):
    monkeypatch.setenv("WENLV_API_PEPPER", "pepper-secret")
    monkeypatch.setenv("REDIS_URL", "redis://:redis-secret@cache.example:6379/0")
    monkeypatch.setenv("WENLV_FAISS_THREADS", "2")
    assert wenlv_main(["config", "show", "--json"]) == 0
    out = capsys.readouterr().out
    shown = json.loads(out)
    assert set(shown) == {info.alias for info in Settings.model_fields.values()}
    assert shown["WENLV_FAISS_THREADS"] == "2" and shown["WENLV_API_PEPPER"] == "******"
    assert "secret" not in out
    assert wenlv_main(["config", "show"]) == 0
    table = capsys.readouterr().out
    assert "WENLV_FAISS_THREADS" in table and "secret" not in table and "(unset)" in table


def test_readme_environment_table_is_generated_from_the_settings():
    readme = (ROOT / "README.md").read_text()
    assert readme == readme_with_table(readme), \
        "README.md's environment table is stale: run `wenlv config table --readme README.md`"
    for info in Settings.model_fields.values():
        assert f"| `{info.alias}` |" in settings_table() and info.description, info.alias


def test_a_stale_readme_table_is_caught(tmp_path):
    stale = f"# x\n{TABLE_BEGIN}\n| variable | meaning | default |\n|---|---|---|\n{TABLE_END}\nafter\n"
    assert readme_with_table(stale) != stale
    (tmp_path / "README.md").write_text(stale)
    assert wenlv_main(["config", "table", "--readme", str(tmp_path / "README.md")]) == 0
    fixed = (tmp_path / "README.md").read_text()
    assert readme_with_table(fixed) == fixed and fixed.endswith(f"{TABLE_END}\nafter\n")
    assert "`WENLV_API_PEPPER`" in fixed


def test_no_product_module_reads_the_environment_except_through_settings():
    """`os.environ`/`getenv` only in settings.py, the CLI's BLAS default and Spark's launch variables."""
    allowed = {("wenlv/cli.py", 'os.environ.setdefault("OPENBLAS_NUM_THREADS"'),
               ("spark_jobs/session.py", 'os.environ.setdefault("PYSPARK_PYTHON"'),
               ("spark_jobs/session.py", 'os.environ.setdefault("PYSPARK_DRIVER_PYTHON"'),
               ("spark_jobs/session.py", 'os.environ.setdefault("SPARK_LOCAL_IP"')}
    found = []
    for top in PRODUCT:
        for path in (ROOT / top).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            for line in path.read_text().splitlines():
                if ("os.environ" in line or "getenv" in line) and not any(
                        rel == f and snippet in line for f, snippet in allowed):
                    found.append(f"{rel}: {line.strip()}")
    assert not found, found


def test_importing_the_product_reads_no_setting():
    """Importing every stage must not read (and cache) settings: a bad value fails only when used."""
    probe = ("import wenlv.serving.app, wenlv.serving.cli, wenlv.serving.indexes, wenlv.privacy.ristretto, "
             "wenlv.training.tracking, wenlv.spark_jobs.session, wenlv.cli; "
             "from wenlv.settings import get_settings; print(get_settings.cache_info().currsize)")
    env = dict(os.environ, WENLV_FAISS_THREADS="zero", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "0"


def test_faiss_threads_are_set_from_the_settings_when_used(monkeypatch):
    import faiss

    monkeypatch.setenv("WENLV_FAISS_THREADS", "2")
    assert indexes.use_configured_threads() == 2 and faiss.omp_get_max_threads() == 2
    monkeypatch.setenv("WENLV_FAISS_THREADS", "1")
    reset_settings()
    assert indexes.use_configured_threads() == 1 and faiss.omp_get_max_threads() == 1


def test_local_spark_binds_to_loopback_and_a_cluster_does_not(monkeypatch):
    monkeypatch.setenv("WENLV_SHUFFLE_PARTITIONS", "3")
    local = spark_conf()
    assert local["spark.master"] == "local[*]" and local["spark.sql.shuffle.partitions"] == "3"
    assert local["spark.driver.host"] == local["spark.driver.bindAddress"] == "127.0.0.1"
    cluster = spark_conf("spark://10.0.0.5:7077")
    assert "spark.driver.host" not in cluster and "spark.driver.bindAddress" not in cluster
    monkeypatch.setenv("SPARK_MASTER", "spark://10.0.0.5:7077")
    reset_settings()
    assert spark_conf()["spark.master"] == "spark://10.0.0.5:7077"
