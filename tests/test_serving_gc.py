"""The serving app freezes what start-up built out of the cyclic GC's reach while it runs, so a full
collection does not walk the whole app and model (a 0.8-1.8 s pause per worker under load in the
events benchmark), and unfreezes at shutdown."""
from __future__ import annotations

import gc

from fastapi.testclient import TestClient

from wenlv.serving.app import create_app
from wenlv.serving.auth import KeyStore
from wenlv.serving.state import ServingState


def test_start_up_objects_are_frozen_while_the_app_runs(tmp_path):
    app = create_app(ServingState(), KeyStore(tmp_path / "keys.sqlite"))
    before = gc.get_freeze_count()  # 0, unless another test's app is still running
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        assert gc.get_freeze_count() > before and gc.get_freeze_count() > 10_000  # modules and app, not a handful
    assert gc.get_freeze_count() == 0
