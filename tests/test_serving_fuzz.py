"""OpenAPI-driven fuzzing (schemathesis, in-process ASGI): no request shape gives a 5xx,
with a valid key, without one, and with a key of the wrong role."""
import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from wenlv.db import engine as db_engine
from wenlv.serving.app import create_app
from wenlv.serving.auth import KeyStore
from wenlv.serving.materialize import materialize
from wenlv.serving.model import ServingModel
from wenlv.serving.online_store import ResilientStore, SQLiteStore
from wenlv.serving.state import ServingState
from wenlv.bench.serving_fixtures import synthetic_bundle

_tmp = Path(tempfile.mkdtemp(prefix="wenlv-fuzz-"))
_bundle = synthetic_bundle(n_pois=40, n_users=30, factors=8, seed=4, version="1")
_raw = SQLiteStore(_tmp / "online.sqlite")
materialize(_bundle, "1", _raw, progress=False)
_store = ResilientStore(_raw)
_keys = KeyStore(_tmp / "keys.sqlite")
KEYS = {"admin": _keys.create("admin", "hz"), "marketer": _keys.create("marketer", "hz"), "none": None}
_db = db_engine.make_engine(f"sqlite:///{_tmp / 'campaigns.sqlite'}")  # the campaign routes' own database
db_engine.migrate(_db)
app = create_app(ServingState(_store, ServingModel(_bundle, "1", _store, index_cache=None)), _keys, db=_db)
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.mark.parametrize("who", list(KEYS))
@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_shape_gives_a_server_error(case, who):
    headers = {"Authorization": f"Bearer {KEYS[who]}"} if KEYS[who] else {}
    response = case.call(headers=headers)
    assert response.status_code < 500, (case.method, case.formatted_path, response.status_code, response.text[:300])
    case.validate_response(response, checks=[not_a_server_error])
    content_type = response.headers["content-type"]
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    assert content_type.startswith(("application/json", "text/plain", "text/csv"))  # errors are JSON; /metrics, exports text


def teardown_module():
    import shutil

    shutil.rmtree(_tmp, ignore_errors=True)
