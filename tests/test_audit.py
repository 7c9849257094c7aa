"""The audit log: hash-chained, tamper-evident, and free of raw values."""
from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest
import scipy.sparse as sp

from wenlv.privacy.audit import FIELDS, AuditLog, AuditTamperError, verify_file
from wenlv.privacy.secure_agg import payload_digest
from wenlv.training.federated_als import FederatedALS


def _log(n=6, path=None) -> AuditLog:
    log = AuditLog(path)
    for k in range(n):
        log.append(kind="masked", run_id="r", round=1 + k // 3, stage=f"ap{k % 3}", sender=f"p{k % 3}",
                   size=800, digest=f"{k:064x}")
    return log


def test_intact_chain_verifies():
    assert _log().verify()
    assert AuditLog().verify()


@pytest.mark.parametrize("tamper", ["alter", "delete", "reorder", "insert", "rehash_one"])
def test_tampering_is_detected(tamper):
    log = _log()
    entries = copy.deepcopy(log.entries)
    if tamper == "alter":
        entries[2]["size"] = 801
    elif tamper == "delete":
        del entries[3]
    elif tamper == "reorder":
        entries[1], entries[2] = entries[2], entries[1]
    elif tamper == "insert":
        entries.insert(2, dict(entries[2]))
    elif tamper == "rehash_one":  # a forger who fixes the altered entry's own hash still breaks the next link
        from wenlv.privacy.audit import _entry_hash

        entries[2]["sender"] = "intruder"
        entries[2]["hash"] = _entry_hash(entries[2])
    log.entries = entries
    with pytest.raises(AuditTamperError, match=r"audit entry [1-3]"):
        log.verify()


def test_file_log_verifies_and_detects_an_edited_line(tmp_path):
    path = tmp_path / "audit.jsonl"
    _log(path=path)
    assert verify_file(path)
    lines = path.read_text().splitlines()
    entry = json.loads(lines[4])
    entry["stage"] = "ap9"
    lines[4] = json.dumps(entry)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(AuditTamperError, match="audit entry 4"):
        verify_file(path)


def test_append_refuses_values():
    log = AuditLog()
    with pytest.raises(TypeError):
        log.append(kind="masked", run_id="r", round=1, stage="s", sender="p", size=np.array([1.5, 2.5]))
    with pytest.raises(TypeError):
        log.append(kind="masked", run_id="r", round=1, stage=0.25, sender="p")
    with pytest.raises(ValueError):
        log.append(kind="masked", run_id="r", round=1, stage="s", sender="p", digest="0.125,0.5")


def test_federated_run_audit_holds_metadata_only(tmp_path):
    rng = np.random.default_rng(3)
    blocks = {}
    for party, items in (("tourism", 15), ("carrier", 10), ("internet", 5)):
        m = sp.random(40, items, density=0.2, random_state=rng, format="csr", dtype=np.float32)
        m.data = (1 + 7 * m.data).astype(np.float32)
        blocks[party] = m
    path = tmp_path / "audit.jsonl"
    model = FederatedALS(factors=4, iterations=2, random_state=0, audit_path=path, show_progress=False,
                         record_view=True).fit(blocks)
    assert verify_file(path) and model.audit_log.verify()
    entries = model.audit_log.entries
    kinds = {e["kind"] for e in entries}
    assert {"round-open", "key", "masked", "sum", "round-close"} <= kinds
    # one masked entry per party and stage: every protocol message is recorded
    masked = [e for e in entries if e["kind"] == "masked"]
    # per iteration and party: support, gram, r0 and one product per CG step
    assert len(masked) == len(model.transcript) == 2 * 3 * (1 + 1 + 1 + model.cg_steps)
    # each entry is the digest of the masked payload the coordinator received (and kept,
    # although the parties reuse their payload buffers stage after stage)
    assert [e["digest"] for e in masked] == [payload_digest(m.payload.copy()) for m in model.transcript]
    for e in entries:
        assert set(e) == set(FIELDS) | {"hash"}
        assert e["sender"] in {"tourism", "carrier", "internet", "coordinator"}
        assert e["digest"] == "" or re.fullmatch(r"[0-9a-f]{64}", e["digest"])
        assert re.fullmatch(r"(support|gram|r0|ap\d+)?", e["stage"])
        assert all(isinstance(e[k], (int, type(None))) for k in ("seq", "round", "size"))
    # no raw value anywhere in the file: not a confidence, not a factor
    text = path.read_text()
    for block in blocks.values():
        for v in block.data[:20]:
            assert f"{float(v):.4f}"[:6] not in text
    for v in model.user_factors.ravel()[:20]:
        assert f"{abs(float(v)):.6f}"[1:] not in text
