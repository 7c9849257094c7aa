"""The privacy scan finds a planted phone number in every spelling and every store, and
passes what legitimately looks number-like (tokens, timestamps, fractions, digests)."""
from __future__ import annotations

import hashlib
import json
import uuid

import numpy as np
import pandas as pd
import psycopg
import pytest
import redis
import sqlalchemy as sa

from wenlv.cli import main
from wenlv.features import contracts, io
from wenlv.privacy import leak_scan

PHONE = "15863653206"
SPELLINGS = ["15863653206", "8615863653206", "+8615863653206", "158-6365-3206", "86-158-6365-3206",
             "86_15863653206", "+86 158 6365 3206", "158.6365.3206"]
HASHED = [getattr(hashlib, h)(s.encode()).hexdigest() for h in ("md5", "sha1", "sha256")
          for s in (PHONE, "86" + PHONE, "+86" + PHONE)]
INNOCENT = ["a13812345678bcd", "ndcg 0.13812345678", "2026-12-03T13:45:10Z", "uuid " + uuid.uuid4().hex,
            "sha256 " + hashlib.sha256(b"anything").hexdigest(), "poi 1234567", "1586365320", "price 15863.65"]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_spelling_is_found_in_text(spelling):
    assert leak_scan.PhoneMatcher().text_findings(f"contact: {spelling}.", "x")


@pytest.mark.parametrize("text", INNOCENT)
def test_number_like_values_that_are_not_phones_pass(text):
    assert leak_scan.PhoneMatcher([PHONE]).text_findings(text, "x") == []


@pytest.mark.parametrize("digest", HASHED)
def test_plain_hashes_of_known_numbers_are_found_only_when_the_numbers_are_known(digest):
    assert leak_scan.PhoneMatcher([PHONE]).text_findings(f'{{"id": "{digest}"}}', "x")
    assert leak_scan.PhoneMatcher(["13900000000"]).text_findings(f'{{"id": "{digest}"}}', "x") == []


def test_files_of_every_kind(tmp_path):
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "notes.md").write_text("\n".join(INNOCENT))
    pd.DataFrame({"token": [uuid.uuid4().hex], "score": [0.13812345678], "poi": [42]}).to_parquet(clean / "a.parquet")
    np.save(clean / "f.npy", np.arange(12, dtype=np.int64))
    assert leak_scan.scan_folder(clean, phones=[PHONE]).clean

    planted = {
        "log.txt": lambda p: p.write_text("GET /v1/recommendations/158-6365-3206 500"),
        "export.csv": lambda p: p.write_text("id\n" + HASHED[-1] + "\n"),
        "ints.parquet": lambda p: pd.DataFrame({"id": np.array([8615863653206], np.int64)}).to_parquet(p),
        "strs.parquet": lambda p: pd.DataFrame({"who": ["86_15863653206"]}).to_parquet(p),
        "ids.npy": lambda p: np.save(p, np.array([15863653206], np.int64)),
        "blob.bin": lambda p: p.write_bytes(b"\x00\x01" + PHONE.encode() + b"\xff"),
    }
    for name, plant in planted.items():
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        plant(folder / name)
        report = leak_scan.scan_folder(folder, phones=[PHONE])
        assert report.findings and all(PHONE not in f for f in report.findings), name


def test_redis_keys_and_values_of_every_type(redis_url):
    client = redis.Redis.from_url(redis_url)
    prefix = f"wenlv-scan-{uuid.uuid4().hex[:8]}:"
    try:
        client.set(prefix + "rec:" + uuid.uuid4().hex, json.dumps({"token": uuid.uuid4().hex, "pois": [1, 2]}))
        client.hset(prefix + "user", mapping={"score": "0.13812345678"})
        assert leak_scan.scan_redis(client, leak_scan.PhoneMatcher([PHONE]), prefix + "*").clean
        cases = [lambda k: client.set(k, json.dumps({"token": "158-6365-3206"})),
                 lambda k: client.hset(k, mapping={"h": HASHED[0]}),
                 lambda k: client.rpush(k, "x", "8615863653206"),
                 lambda k: client.sadd(k, "+86 158 6365 3206"),
                 lambda k: client.zadd(k, {HASHED[4]: 1.0}),
                 lambda k: client.set(k + ":15863653206", "1")]
        for i, plant in enumerate(cases):
            key = f"{prefix}case{i}"
            plant(key)
            found = leak_scan.scan_redis(client, leak_scan.PhoneMatcher([PHONE]), key + "*").findings
            assert found and all(PHONE not in f for f in found), i
    finally:
        for key in client.scan_iter(match=prefix + "*"):
            client.delete(key)
        client.close()


def _plant_rows(engine):
    meta = sa.MetaData()
    t = sa.Table("things", meta, sa.Column("id", sa.Integer, primary_key=True), sa.Column("note", sa.String(200)),
                 sa.Column("n", sa.BigInteger))
    meta.create_all(engine)
    with engine.begin() as conn:
        conn.execute(t.insert(), [{"note": s, "n": 7} for s in INNOCENT])
    assert leak_scan.scan_database(engine, leak_scan.PhoneMatcher([PHONE])).clean
    for row in ({"note": "158 6365 3206", "n": 1}, {"note": HASHED[2], "n": 2}, {"note": "ok", "n": 8615863653206}):
        with engine.begin() as conn:
            inserted = conn.execute(t.insert().returning(t.c.id), row).scalar_one()
        assert leak_scan.scan_database(engine, leak_scan.PhoneMatcher([PHONE])).findings, row
        with engine.begin() as conn:
            conn.execute(t.delete().where(t.c.id == inserted))


def test_sqlite_tables(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.sqlite'}")
    _plant_rows(engine)
    engine.dispose()


def test_postgresql_tables(postgres_url):
    name = f"scan_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    engine = sa.create_engine("postgresql+psycopg://" + postgres_url.split("://", 1)[1].rsplit("/", 1)[0] + "/" + name)
    try:
        _plant_rows(engine)
    finally:
        engine.dispose()
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name}")


def test_known_numbers_come_from_the_raw_tables_and_the_cli_exits_1_on_a_finding(tmp_path, capsys):
    raw = tmp_path / "raw"
    table = contracts.SUBSCRIBERS
    row = {"phone": PHONE, "home_city": "Hangzhou", "age_band": None, "gender": None, "arpu_tier": 3,
           "consent_partner_share": True}
    io.write_table(raw, table, pd.DataFrame([row]))
    assert PHONE in leak_scan.known_phones(raw)

    out = tmp_path / "out"
    out.mkdir()
    (out / "report.html").write_text(f"<p>{HASHED[5]}</p>")
    assert main(["privacy", "scan", "--path", str(out)]) == 0  # a hash is findable only with the numbers
    capsys.readouterr()
    assert main(["privacy", "scan", "--path", str(out), "--raw-data", str(raw)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["known_phones"] == 1 and not report["clean"]
    assert PHONE not in json.dumps(report)
