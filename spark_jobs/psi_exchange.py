"""PSI inside Spark: each party's steps of privacy.psi, per partition, with files as messages.

A session between two parties lives in `<exchange>/<session name>/`. The only files that
cross between parties are written there, and they hold points, never identifiers:

- `session.json`                — the public session id (chosen by the hub)
- `<party>.request.parquet`     — `point`: the party's own items hashed and blinded, shuffled
                                   and ordered by point (pseudorandom, unrelated to the identities)
- `<party>.response.parquet`    — `point, reblinded`: the other party's request points,
                                   re-blinded with this party's secret

A party's secret scalar and its (phone, point) state stay in its own Spark process.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from pyspark import StorageLevel
from pyspark.sql import functions as F
from pyspark.sql.types import BinaryType, StructField, StructType

from wenlv.features.io import parquet_rows
from wenlv.privacy import psi
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
    matched: int = 0  # of which matched

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
    return F.regexp_replace(F.col(column), r"[+ \-]", "")


def crypto_partitions(spark) -> int:
    """Partitions for the group operations: one per core. Without an explicit count, adaptive
    execution would coalesce a small shuffle into one partition and run the crypto on one core.
    One per core rather than two: every task costs JVM time (and in `finish` a read of the
    answer), and in `wenlv features` the parties' steps run at once, so a core one party's
    last task leaves idle is taken by another's (measured at small: ~8% less CPU per item)."""
    return max(2, spark.sparkContext.defaultParallelism)


# ---------------------------------------------------------------- per-batch functions
# Each runs one privacy.psi batch helper (one tight loop over a preallocated buffer) per Arrow
# batch. The secret travels in the closure to this party's own Python workers only.

def _hash(batches):
    for pdf in batches:
        yield pdf.assign(hashed=psi.hash_all(pdf["phone"]))


def _hash_and_blind(secret: bytes):
    def per_batch(batches):
        for pdf in batches:
            yield pdf.assign(point=psi.hash_and_blind_all(pdf["phone"], secret))

    return per_batch


def _blind_hashed(secret: bytes):
    def per_batch(batches):
        for pdf in batches:
            yield pdf[["phone"]].assign(point=psi.blind_all(pdf["hashed"], secret))

    return per_batch


def _reblind(secret: bytes):
    def per_batch(batches):
        for pdf in batches:
            yield pdf.assign(reblinded=psi.blind_all(pdf["point"], secret))

    return per_batch


def _distinct(spark, phones, *flags: str):
    """Distinct normalised phones (with each flag OR-ed over a phone's rows) in crypto_partitions
    partitions: one shuffle, by the phone, which the de-duplication then needs no other for."""
    df = phones.select(normalised_phone("phone").alias("phone"), *flags).repartition(crypto_partitions(spark), "phone")
    return df.groupBy("phone").agg(*[F.max(f).alias(f) for f in flags]) if flags else df.distinct()


def hash_phones(spark, phones, *flags: str):
    """DataFrame[phone, *flags, hashed]: a party's distinct phones and H(phone), persisted and counted.

    H holds no secret, so a party that enters the same phones in several sessions (the carrier)
    hashes them once here and passes the result to `request(..., hashed=...)` of each session,
    which blinds it with that session's own fresh secret. Boolean flags (e.g. a consent column)
    are kept, OR-ed over a phone's rows, to choose each session's phones. Release with unpersist().
    """
    distinct = _distinct(spark, phones, *flags)
    schema = StructType(distinct.schema.fields + [StructField("hashed", BinaryType(), False)])
    hashed = distinct.mapInPandas(_hash, schema).persist(StorageLevel.MEMORY_AND_DISK)
    hashed.count()
    return hashed


def request(spark, exchange: Path, session: str, party: str, phones=None, *, hashed=None) -> PsiState:
    """Step 1: hash and blind the party's distinct phones; publish the points in point order.

    `phones`: DataFrame[phone] (any form, duplicates allowed); or `hashed`: DataFrame[phone, hashed]
    of distinct normalised phones from `hash_phones`, to be blinded only.
    """
    if (phones is None) == (hashed is None):
        raise WenlvError("psi_exchange.request takes phones or hashed phones, one of the two")
    session_id = read_session_id(exchange, session)
    secret = psi.new_secret()
    if hashed is None:
        items = _distinct(spark, phones).mapInPandas(_hash_and_blind(secret), STATE_SCHEMA)
    else:
        items = hashed.select("phone", "hashed").mapInPandas(_blind_hashed(secret), STATE_SCHEMA)
    items = items.persist(StorageLevel.MEMORY_AND_DISK)
    # The published order must carry nothing about the phone numbers: the items are partitioned
    # by the phone (hash partitioning, a public function), so they are shuffled again by the
    # point, then sorted by the point within each partition. File membership and row order are
    # then functions of the points alone, which are pseudorandom (DDH) to anyone without our
    # secret: the receiver learns the set of points and nothing else from the layout.
    (items.select("point").repartition(crypto_partitions(spark), "point").sortWithinPartitions("point")
     .write.mode("overwrite").parquet(str(session_dir(exchange, session) / f"{party}.request.parquet")))
    return PsiState(party, session, session_id, secret, items)


def respond(spark, exchange: Path, state: PsiState, other: str) -> None:
    """Step 2: re-blind the other party's request with our secret; publish it keyed by their point.

    The rows keep the order of the request (the other's point order). The request is read as
    it lies (one partition per part file) unless that gives fewer partitions than cores' worth.
    """
    folder = session_dir(exchange, state.session)
    their_request = spark.read.parquet(str(folder / f"{other}.request.parquet"))
    n = crypto_partitions(spark)
    if their_request.rdd.getNumPartitions() < n:
        their_request = their_request.repartition(n)
    (their_request.mapInPandas(_reblind(state.secret), "point binary, reblinded binary")
     .write.mode("overwrite").parquet(str(folder / f"{state.party}.response.parquet")))


def _match(answer_path: str, ours_path: str, prefix: bytes):
    """Per partition of our items: look each point up in the other's answer (every one must be
    there) and keep the phones whose doubly blinded point is among ours, with their tokens.

    The two answer files are read whole by each task (a hash join on the Python side): they hold
    32-byte points of the two sessions' sets only, and this saves the JVM joins, which cost
    more CPU than the lookups themselves."""
    def per_batch(batches):
        answer = pq.read_table(answer_path, columns=["point", "reblinded"])
        doubled_of = dict(zip(answer.column("point").to_pylist(), answer.column("reblinded").to_pylist()))
        theirs = set(pq.read_table(ours_path, columns=["reblinded"]).column("reblinded").to_pylist())
        del answer
        for pdf in batches:
            phones, doubled = [], []
            for phone, point in zip(pdf["phone"], pdf["point"]):
                reblinded = doubled_of.get(bytes(point))
                if reblinded is None:
                    raise psi.PsiError(_MISSING)
                if reblinded in theirs:
                    phones.append(phone)
                    doubled.append(reblinded)
            yield pd.DataFrame({"phone": pd.Series(phones, dtype=object),
                                "token": pd.Series(psi.tokens_for(doubled, "", prefix=prefix), dtype=object)})

    return per_batch


_MISSING = "a point we sent is missing from the other party's answer"


def finish(spark, exchange: Path, state: PsiState, other: str):
    """Step 3: DataFrame[phone, token] of our phones the other party also holds, persisted and
    counted (state.matched); state.sent is the size of our set.

    The other must answer each of our points once: its answer has as many rows as we sent
    (from the files' footers) and holds every point we sent (checked row by row)."""
    folder = session_dir(exchange, state.session)
    answer, ours = folder / f"{other}.response.parquet", folder / f"{state.party}.response.parquet"
    state.sent, returned = parquet_rows(folder / f"{state.party}.request.parquet"), parquet_rows(answer)
    if returned != state.sent:
        raise psi.PsiError(f"PSI session {state.session}: {other} answered {returned} of our {state.sent} points")
    matched = (state.items.mapInPandas(_match(str(answer), str(ours), psi.token_prefix(state.session_id)),
                                       "phone string, token string")
               .persist(StorageLevel.MEMORY_AND_DISK))
    try:
        state.matched = matched.count()
    except Exception as error:  # noqa: BLE001 - a Python worker's PsiError arrives wrapped by Spark
        matched.unpersist()
        if _MISSING in str(error):
            raise psi.PsiError(f"PSI session {state.session}: {other}'s answer lacks points we sent") from None
        raise
    return matched


def release(state: PsiState) -> None:
    state.items.unpersist()
