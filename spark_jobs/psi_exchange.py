"""PSI inside Spark: each party's steps of privacy.psi, per partition, with files as messages.

A session between two parties lives in `<exchange>/<session name>/`. The only files that
cross between parties are written there, and they hold points, never identifiers:

- `session.json`                — the public session id (chosen by the hub)
- `<party>.request.parquet`     — `point`: the party's own items hashed and blinded, ordered
                                   by point (a pseudorandom order unrelated to the identities)
- `<party>.response.parquet`    — `point, reblinded`: the other party's request points,
                                   re-blinded with this party's secret

A party's secret scalar and its (phone, point) state stay in its own Spark process.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from privacy import psi
from wenlv.errors import WenlvError

STATE_SCHEMA = "phone string, point binary"


@dataclass
class PsiState:
    """One party's private side of one session: its secret and its hashed-and-blinded items."""

    party: str
    session: str
    session_id: str
    secret: bytes
    items: object  # DataFrame[phone, point], persisted
    sent: int = 0  # size of our set, known once the session is finished

    def __repr__(self) -> str:  # the secret never reaches a log
        return f"PsiState(party={self.party!r}, session={self.session!r})"


def session_dir(exchange: Path, session: str) -> Path:
    return Path(exchange) / session


def open_session(exchange: Path, session: str, parties: tuple[str, str]) -> str:
    """The hub opens a session: a fresh public session id both sides bind their tokens to."""
    folder = session_dir(exchange, session)
    folder.mkdir(parents=True, exist_ok=True)
    session_id = psi.new_session_id()
    (folder / "session.json").write_text(json.dumps({"session": session, "session_id": session_id, "parties": list(parties),
                                                     "protocol": psi.PROTOCOL}))
    return session_id


def read_session_id(exchange: Path, session: str) -> str:
    path = session_dir(exchange, session) / "session.json"
    if not path.exists():
        raise WenlvError(f"PSI session {session!r} has not been opened by the hub ({path} missing)")
    opened = json.loads(path.read_text())
    if opened.get("protocol") != psi.PROTOCOL:
        raise psi.PsiError(f"PSI session {session!r} was opened for protocol {opened.get('protocol') or 'v1 (ed25519)'}; "
                           f"this party runs {psi.PROTOCOL}")
    return opened["session_id"]


def normalised_phone(column: str = "phone"):
    """The Spark form of privacy.psi.normalise_phone, to join a party's rows to its PSI result."""
    from pyspark.sql import functions as F

    return F.regexp_replace(F.col(column), r"[+ \-]", "")


def crypto_partitions(spark) -> int:
    """Partitions for the group operations: every core busy. Without an explicit count, adaptive
    execution would coalesce a small shuffle into one partition and run the crypto on one core."""
    return max(2, 2 * spark.sparkContext.defaultParallelism)


def _hash_and_blind(secret: bytes):
    def per_batch(batches):
        import pandas as pd

        for pdf in batches:
            yield pd.DataFrame({"phone": pdf["phone"], "point": psi.hash_and_blind_all(pdf["phone"], secret)})

    return per_batch


def _reblind(secret: bytes):
    def per_batch(batches):
        import pandas as pd

        for pdf in batches:
            yield pd.DataFrame({"point": pdf["point"], "reblinded": psi.blind_all(pdf["point"], secret)})

    return per_batch


def _tokens(session_id: str):
    def per_batch(batches):
        import pandas as pd

        for pdf in batches:
            yield pd.DataFrame({"phone": pdf["phone"], "token": psi.tokens_for(pdf["reblinded"], session_id)})

    return per_batch


def request(spark, exchange: Path, session: str, party: str, phones) -> PsiState:
    """Step 1: hash and blind the party's distinct phones; publish the points in point order."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    session_id = read_session_id(exchange, session)
    secret = psi.new_secret()
    distinct = phones.select(normalised_phone("phone").alias("phone")).distinct()
    items = (distinct.repartition(crypto_partitions(spark)).mapInPandas(_hash_and_blind(secret), STATE_SCHEMA)
             .persist(StorageLevel.MEMORY_AND_DISK))
    # Order by the (pseudorandom) point, never by anything derived from the phone number.
    items.select("point").repartition("point").sortWithinPartitions("point").write.mode("overwrite").parquet(
        str(session_dir(exchange, session) / f"{party}.request.parquet"))
    return PsiState(party, session, session_id, secret, items)


def respond(spark, exchange: Path, state: PsiState, other: str) -> None:
    """Step 2: re-blind the other party's request with our secret; publish it keyed by their point."""
    folder = session_dir(exchange, state.session)
    their_request = spark.read.parquet(str(folder / f"{other}.request.parquet"))
    (their_request.repartition(crypto_partitions(spark)).mapInPandas(_reblind(state.secret), "point binary, reblinded binary")
     .write.mode("overwrite").parquet(str(folder / f"{state.party}.response.parquet")))


def finish(spark, exchange: Path, state: PsiState, other: str):
    """Step 3: DataFrame[phone, token] of our phones the other party also holds."""
    from pyspark.sql import functions as F

    folder = session_dir(exchange, state.session)
    to_us = spark.read.parquet(str(folder / f"{other}.response.parquet"))
    ours = spark.read.parquet(str(folder / f"{state.party}.response.parquet")).select("reblinded").distinct()
    doubled = state.items.join(to_us, "point", "inner")
    state.sent, returned = state.items.count(), doubled.count()
    if returned != state.sent:
        raise psi.PsiError(f"PSI session {state.session}: {other} answered {returned} of our {state.sent} points")
    matched = doubled.join(ours, "reblinded", "left_semi").select("phone", "reblinded")
    return matched.mapInPandas(_tokens(state.session_id), "phone string, token string").select(
        "phone", F.col("token"))


def release(state: PsiState) -> None:
    state.items.unpersist()
