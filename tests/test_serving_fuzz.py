"""OpenAPI-driven fuzzing (schemathesis, in-process ASGI) with a key of every role and without one (issue 18.2):
no request shape gives a 5xx, and every answer conforms to the OpenAPI document: its status is documented,
its content type, headers and body match the schema. Examples per operation and key: WENLV_FUZZ_EXAMPLES
(default 8; the long variant e.g. 200). The figures (requests, 5xx) print at the end; a conformance failure fails
its test item, so a green run has none."""
import json
import os
import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_headers_conformance,
                                 response_schema_conformance, status_code_conformance)

from wenlv.db import engine as db_engine
from wenlv.serving.app import create_app
from wenlv.serving.auth import ROLES, KeyStore
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
KEYS = {role: _keys.create(role, "hz") for role in ROLES} | {"none": None}
EXAMPLES = int(os.environ.get("WENLV_FUZZ_EXAMPLES", "8"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
FIGURES = {"requests": 0, "server_errors": 0}  # a conformance failure fails its test item (schemathesis reports it)
_db = db_engine.make_engine(f"sqlite:///{_tmp / 'campaigns.sqlite'}")  # the campaign routes' own database
db_engine.migrate(_db)
app = create_app(ServingState(_store, ServingModel(_bundle, "1", _store, index_cache=None)), _keys, db=_db)
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.mark.parametrize("who", list(KEYS))
@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_conforms_and_none_is_a_server_error(case, who):
    headers = {"Authorization": f"Bearer {KEYS[who]}"} if KEYS[who] else {}
    response = case.call(headers=headers)
    FIGURES["requests"] += 1
    where = (who, case.method, case.formatted_path, response.status_code, response.text[:300])
    if response.status_code >= 500:
        FIGURES["server_errors"] += 1
    case.validate_response(response, checks=CHECKS)
    assert response.status_code < 500, where


def teardown_module():
    import shutil

    print(json.dumps({"fuzz": FIGURES, "keys": list(KEYS),
                      "examples_per_operation_and_key": EXAMPLES}))

    shutil.rmtree(_tmp, ignore_errors=True)
