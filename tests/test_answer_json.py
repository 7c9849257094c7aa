"""The recommendation answer built from per-POI JSON pieces is byte for byte what JSONResponse renders."""
import json

import numpy as np
import pytest
from fastapi.responses import JSONResponse

from wenlv.serving.answer_json import ItemJson, answer_bytes

POI_IDS = ["P1", "P2", "P\u4e09", 'P"4', "P5"]
NAMES = ["West Lake 西湖", 'The "Old" Bridge', "back\\slash", "tab\there\nnewline \u2028", "emoji \U0001F600"]
CATEGORIES = ["lake", "museum", "temple", "theme_park", "museum"]
CITIES = ["hangzhou", "杭州", "", "shaoxing", "ningbo"]
REST = {"model_version": "v1", "recommendation_id": "ab" * 16, "degraded": False, "personalized": True,
        "strategy": "als", "arm": "treatment"}


def _old_body(rows, scores, reasons) -> bytes:
    items = [{"poi_id": POI_IDS[i], "name": NAMES[i], "category": CATEGORIES[i], "city": CITIES[i],
              "score": round(float(s), 6), "reason": r} for i, s, r in zip(rows.tolist(), scores.tolist(), reasons)]
    return JSONResponse({"items": items, **REST}).body


@pytest.mark.parametrize("scores", [[1.0, 0.1234567, -0.5, 1e-7, 123456.7890123],
                                    [0.0, -0.0, 3.4e38, 2.5e-5, 0.999999949]])
def test_the_answer_is_byte_for_byte_the_json_response(scores):
    item_json = ItemJson(POI_IDS, NAMES, CATEGORIES, CITIES)
    rows = np.array([4, 0, 2, 1, 3])
    values = np.array(scores, dtype=np.float32)
    reasons = ["similar to West Lake 西湖, which you visited", 'popular "museum"', "a\\b", "x\ny", "\U0001F600"]
    body = answer_bytes(item_json, rows, values, reasons, REST)
    assert body == _old_body(rows, values, reasons)
    assert json.loads(body)["items"][0]["poi_id"] == "P5"


def test_an_empty_answer_and_a_non_finite_score():
    item_json = ItemJson(POI_IDS, NAMES, CATEGORIES, CITIES)
    empty = np.array([], dtype=np.int64)
    assert answer_bytes(item_json, empty, np.array([], dtype=np.float32), [], REST) == _old_body(empty, np.array([]), [])
    with pytest.raises(ValueError, match="not JSON compliant"):
        answer_bytes(item_json, np.array([0]), np.array([np.nan], dtype=np.float32), ["r"], REST)
