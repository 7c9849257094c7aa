"""Fresh online stores of either kind for serving tests, each under its own key prefix."""
from __future__ import annotations

import uuid
from pathlib import Path

from wenlv.serving.online_store import KeyValueStore, RedisStore, SQLiteStore


def make_store(kind: str, tmp_path: Path, redis_url: str | None = None) -> KeyValueStore:
    """A fresh store of `kind` (sqlite|redis) under a unique key prefix."""
    prefix = f"wenlv-test-{uuid.uuid4().hex[:8]}:"
    if kind == "sqlite":
        return SQLiteStore(tmp_path / f"online-{prefix[11:19]}.sqlite", prefix=prefix)
    if kind == "redis":
        return RedisStore(redis_url, prefix=prefix, timeout_s=0.5)
    raise ValueError(kind)
