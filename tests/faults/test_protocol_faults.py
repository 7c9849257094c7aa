"""Protocol faults of the three-organisation deployment (issue 18 item 1 d): a party that dies
mid-fit aborts it with nothing released and rejoins the next fit, which equals the in-process
one exactly; replayed messages (to the aggregator, and as HTTP requests) are all refused."""
from __future__ import annotations

from wenlv.bench.faults import party


def test_a_party_dying_mid_fit_aborts_it_and_rejoins_the_next(tmp_path):
    result = party.party_dropout(tmp_path)
    assert result["aborted_with"] is not None and result["released_after_fault"] is False, result
    assert result["rerun_equals_in_process"] and result["lost"] == 0 and result["duplicated"] == 0, result
    assert result["sent"] > 0 and result["recovery_s"] is not None


def test_every_replayed_message_is_refused(tmp_path):
    result = party.replay(tmp_path, replays=10)
    assert result["acknowledged"] == 0 and result["duplicated"] == 0, result
    assert result["refused"]["aggregator"] == 10 and result["refused"]["http"] == 5, result
