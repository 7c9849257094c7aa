"""The CLI: `wenlv apikey`, `wenlv materialize` and `wenlv serve` as a real process."""
import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from wenlv.serving.app import create_app
from wenlv.serving.auth import KeyStore
from wenlv.serving.model import ServingModel
from wenlv.serving.online_store import ResilientStore, SQLiteStore
from wenlv.serving.runtime import ServerThread, free_port
from wenlv.serving.state import ServingState
from wenlv.bench.serving_fixtures import synthetic_bundle
from wenlv.cli import main


def test_apikey_create_list_revoke(tmp_path, capsys):
    keys = tmp_path / "keys.sqlite"
    assert main(["apikey", "create", "--role", "marketer", "--tenant", "hz-tourism", "--keys", str(keys)]) == 0
    created = json.loads(capsys.readouterr().out)
    principal = KeyStore(keys).lookup(created["key"])
    assert (principal.role, principal.tenant) == ("marketer", "hz-tourism")
    assert created["key"].encode() not in keys.read_bytes()  # only the peppered hash is stored
    main(["apikey", "list", "--keys", str(keys)])
    listed = json.loads(capsys.readouterr().out)
    assert [k["role"] for k in listed] == ["marketer"] and "key" not in listed[0]
    assert main(["apikey", "revoke", listed[0]["key_id"], "--keys", str(keys)]) == 0
    assert KeyStore(keys).lookup(created["key"]) is None
    assert main(["apikey", "create", "--role", "marketer", "--tenant", "bad tenant!", "--keys", str(keys)]) == 2


def test_apikey_end_sessions_ends_the_keys_dashboard_sessions_and_keeps_the_key(tmp_path, capsys):
    keys_db = tmp_path / "keys.sqlite"
    keys = KeyStore(keys_db)
    key = keys.create("analyst", "hz")
    key_id = key.split("_")[1]
    sessions = [keys.start_session(key_id, 3600)[0] for _ in range(2)]
    assert main(["apikey", "end-sessions", key_id, "--keys", str(keys_db)]) == 0
    assert json.loads(capsys.readouterr().out) == {"key_id": key_id, "sessions_ended": 2}
    assert all(KeyStore(keys_db).session(s) is None for s in sessions)
    assert KeyStore(keys_db).lookup(key).key_id == key_id


def test_materialize_a_bundle_dir(tmp_path, capsys):
    bundle = synthetic_bundle(n_pois=20, n_users=15, factors=4, seed=3, version="12")
    bundle.save(tmp_path / "bundle")
    db = tmp_path / "online.sqlite"
    assert main(["materialize", "--bundle", str(tmp_path / "bundle"), "--sqlite", str(db)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["version"] == "12" and result["users"] == 15
    assert SQLiteStore(db).get_user("12", bundle.users.token[0]) is not None


@pytest.mark.slow
def test_serve_runs_as_a_process(tmp_path):
    bundle = synthetic_bundle(n_pois=20, n_users=15, factors=4, seed=3, version="12")
    bundle.save(tmp_path / "bundle")
    key = KeyStore(tmp_path / "keys.sqlite").create("visitor-app", "hz")
    port = free_port()
    env = {**os.environ, "REDIS_URL": "", "WENLV_INDEX_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "wenlv.cli", "serve", "--bundle", str(tmp_path / "bundle"), "--port", str(port),
                             "--keys", str(tmp_path / "keys.sqlite"), "--sqlite", str(tmp_path / "online.sqlite")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "wenlv serve did not become ready"
            time.sleep(0.2)
        r = httpx.get(f"http://127.0.0.1:{port}/v1/visitors/{bundle.users.token[0]}/recommendations?k=3",
                      headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200 and r.json()["model_version"] == "12" and len(r.json()["items"]) == 3
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_a_revoked_or_expired_key_is_refused_by_a_running_server_within_a_second(tmp_path, capsys):
    """Regression (issue 13.1): the server cached keys and reloaded only on an unknown key, so a revoked one kept working."""
    bundle = synthetic_bundle(n_pois=20, n_users=15, factors=4, seed=3, version="12")
    keys_db = tmp_path / "keys.sqlite"
    server_keys = KeyStore(keys_db)
    store = ResilientStore(SQLiteStore(tmp_path / "online.sqlite"))
    app = create_app(ServingState(store, ServingModel(bundle, "12", store, index_cache=None)), server_keys)
    assert main(["apikey", "create", "--role", "visitor-app", "--tenant", "hz", "--keys", str(keys_db)]) == 0
    key = json.loads(capsys.readouterr().out)["key"]
    url = f"/v1/visitors/{bundle.users.token[0]}/recommendations?k=3"
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=5) as client:
        def status(k):
            return client.get(url, headers={"Authorization": f"Bearer {k}"}).status_code

        assert status(key) == 200
        lifetime_s = 4.0
        assert main(["apikey", "create", "--role", "visitor-app", "--tenant", "hz", "--expires-days",
                     str(lifetime_s / 86400), "--keys", str(keys_db)]) == 0
        created_at = time.monotonic()
        short_lived = json.loads(capsys.readouterr().out)["key"]
        assert status(short_lived) == 200  # a key made by another process is known at once
        for _ in range(20):
            status(key)  # the server is warm: its cache holds the key
        key_id = next(k["key_id"] for k in KeyStore(keys_db).list() if k["expires_at"] is None)
        assert main(["apikey", "revoke", key_id, "--keys", str(keys_db)]) == 0  # another KeyStore, as from a shell
        revoked_at = time.monotonic()
        while status(key) != 401:
            assert time.monotonic() - revoked_at < 1.0, "a revoked key still works after 1 s"
            time.sleep(0.02)
        while status(short_lived) != 401:
            assert time.monotonic() - created_at < lifetime_s + 1.0, "an expired key still works"
            time.sleep(0.02)
        assert time.monotonic() - created_at > lifetime_s - 0.5  # it did work until it expired
        assert status(key) == 401 and status(short_lived) == 401


def test_a_rotated_key_and_its_successor_both_work_during_the_grace_period_then_only_the_new_one(tmp_path, capsys):
    """`wenlv apikey rotate ID --grace-minutes M` against a running server: two valid keys, then the old one refused
    within a second of the grace period's end."""
    bundle = synthetic_bundle(n_pois=20, n_users=15, factors=4, seed=3, version="12")
    keys_db = tmp_path / "keys.sqlite"
    store = ResilientStore(SQLiteStore(tmp_path / "online.sqlite"))
    app = create_app(ServingState(store, ServingModel(bundle, "12", store, index_cache=None)), KeyStore(keys_db))
    assert main(["apikey", "create", "--role", "marketer", "--tenant", "hz", "--keys", str(keys_db)]) == 0
    old = json.loads(capsys.readouterr().out)["key"]
    old_id = KeyStore(keys_db).list()[0]["key_id"]
    grace_s = 2.0
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=5) as client:
        def status(k):
            return client.get("/v1/campaigns", headers={"Authorization": f"Bearer {k}"}).status_code

        assert status(old) != 401
        assert main(["apikey", "rotate", old_id, "--grace-minutes", str(grace_s / 60), "--keys", str(keys_db)]) == 0
        rotated = json.loads(capsys.readouterr().out)
        new, until = rotated["key"], rotated["old_key_valid_until"]
        assert rotated["replaces"] == old_id and new != old and abs(until - (time.time() + grace_s)) < 1
        listed = {k["key_id"]: k for k in KeyStore(keys_db).list()}
        (new_row,) = [k for k in listed.values() if k["key_id"] != old_id]
        assert (new_row["role"], new_row["tenant"], new_row["expires_at"]) == ("marketer", "hz", None)
        while time.time() < until - 0.3:  # both keys work throughout the grace period
            assert status(old) != 401 and status(new) != 401
            time.sleep(0.1)
        while status(old) != 401:
            assert time.time() - until < 1.0, "the old key still works 1 s after its grace period"
            time.sleep(0.02)
        assert status(new) != 401 and status(old) == 401
    assert main(["apikey", "rotate", old_id, "--keys", str(keys_db)]) == 2  # expired: nothing to rotate
    assert "already expired" in capsys.readouterr().err
    assert main(["apikey", "rotate", "nosuchkey", "--keys", str(keys_db)]) == 2
