"""The recommendation answer as JSON bytes, from per-POI pieces encoded once per model version.

Building ten item dicts and encoding them on every request was ~60 µs of the route's CPU
(cProfile: the item list comprehension and `json.encoder.iterencode`). A POI's id, name,
category and city never change within a model version, so their JSON is encoded once, when
the version is built; a request joins those pieces with its scores and reasons. The bytes
are exactly what Starlette's `JSONResponse` renders for the same content (same separators,
`ensure_ascii=False`, `allow_nan=False`; checked by the tests).
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np

_dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode
_string = json.encoder.encode_basestring  # what the encoder above writes for a str (ensure_ascii=False)


class ItemJson:
    """`{"poi_id":…,"name":…,"category":…,"city":…,"score":` for every POI row, encoded once."""

    def __init__(self, poi_ids: Sequence[str], names: Sequence[str], categories: Sequence[str], cities: Sequence[str]):
        self.heads = [_dumps({"poi_id": str(p), "name": str(n), "category": str(c), "city": str(ci)})[:-1] + ',"score":'
                      for p, n, c, ci in zip(poi_ids, names, categories, cities)]

    def items(self, rows: Sequence[int], scores: Sequence[float], reasons: Sequence[str]) -> str:
        """The `items` array: each POI with its score (rounded to 6 places) and reason."""
        heads = self.heads
        return "[" + ",".join(f'{heads[i]}{_score(s)},"reason":{_string(r)}}}'
                              for i, s, r in zip(rows, scores, reasons)) + "]"


def _score(value: float) -> str:
    rounded = round(float(value), 6)
    if not math.isfinite(rounded):  # json.dumps(allow_nan=False) refuses it the same way
        raise ValueError(f"Out of range float values are not JSON compliant: {rounded!r}")
    return repr(rounded)


def answer_bytes(item_json: ItemJson, rows: np.ndarray, scores: np.ndarray, reasons: Sequence[str], rest: dict) -> bytes:
    """`{"items":[…], **rest}` as UTF-8 bytes (rest's keys in their order, after `items`)."""
    tail = _dumps(rest)
    return ('{"items":' + item_json.items(rows.tolist(), scores.tolist(), reasons)
            + ("," + tail[1:] if len(tail) > 2 else "}")).encode("utf-8")
