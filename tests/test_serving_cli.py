"""The CLI: `wenlv apikey`, `wenlv materialize` and `wenlv serve` as a real process."""
import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from wenlv.serving.auth import KeyStore
from wenlv.serving.online_store import SQLiteStore
from wenlv.serving.runtime import free_port
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
