"""What every party's job shares: its own folders, the exchange folder, block writing.

A party job may read only `<data>/<its name>/` and the exchange folder (protocol messages
and the public plan), and write only `<out>/<its name>/`, `<out>/quarantine/<its name>/`
and its own messages in the exchange folder. `Party.read_raw` refuses any other party's table.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from pyspark.sql import functions as F

from wenlv.features.contracts import Table
from wenlv.features.io import parquet_rows
from wenlv.spark_jobs import psi_exchange, validate
from wenlv.errors import WenlvError

PLAN_FILE = "plan.json"  # the coordinator's public split plan, in the exchange folder


@dataclass
class Party:
    spark: object
    name: str
    data_dir: Path  # <data>; only <data>/<name>/ is ever read
    out_dir: Path  # <out>
    quarantine: bool = False
    checked: dict = field(default_factory=dict)
    psi: dict = field(default_factory=dict)  # session name -> PsiState

    @property
    def raw_dir(self) -> Path:
        return Path(self.data_dir) / self.name

    @property
    def exchange(self) -> Path:
        return Path(self.out_dir) / "exchange"

    @property
    def block_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    # ---------------------------------------------------------------- raw data
    def validate(self) -> dict[str, int]:
        """Validate every raw table of this party; {table: quarantined rows}."""
        quarantine_dir = Path(self.out_dir) / "quarantine" if self.quarantine else None
        self.checked = validate.check_party(self.spark, self.raw_dir, self.name, quarantine_dir)
        return {f"{self.name}/{c.table.name}": c.quarantined for c in self.checked.values()}

    def read_raw(self, table: Table):
        """A validated raw table of this party (never another party's)."""
        if table.party != self.name:
            raise WenlvError(f"the {self.name} job may not read {table.party}/{table.name}")
        return self.checked[table.qualified].good

    # ---------------------------------------------------------------- PSI
    def psi_request(self, session: str, phones=None, *, hashed=None) -> None:
        self.psi[session] = psi_exchange.request(self.spark, self.exchange, session, self.name, phones, hashed=hashed)

    def psi_respond(self, session: str, other: str) -> None:
        psi_exchange.respond(self.spark, self.exchange, self.psi[session], other)

    def psi_finish(self, session: str, other: str):
        """DataFrame[phone (normalised), token] of this party's matched phones, persisted (and counted:
        self.psi[session].matched)."""
        return psi_exchange.finish(self.spark, self.exchange, self.psi[session], other)

    # ---------------------------------------------------------------- plan and messages
    def read_plan(self) -> dict:
        path = self.exchange / PLAN_FILE
        if not path.exists():
            raise WenlvError(f"no split plan at {path}: the tourism job publishes it first")
        return json.loads(path.read_text())

    def message_path(self, name: str) -> Path:
        return self.exchange / "align" / f"{name}.parquet"

    def aligned_tokens(self, consenting, id_column: str, matched):
        """DataFrame[id_column, token]: the rows of `consenting` (this party's rows that went into PSI)
        whose phone PSI matched (`matched`: phone → session token), with the user token the carrier's
        alignment message gives that session token (the canonical token of every block)."""
        alignment = self.spark.read.parquet(str(self.message_path(self.name)))
        rows = consenting.select(id_column, psi_exchange.normalised_phone("phone").alias("phone"))
        return (rows.join(matched.withColumnRenamed("token", "session_token"), "phone")
                .join(alignment, "session_token").select(id_column, "token"))

    # ---------------------------------------------------------------- blocks
    def write_block(self, table: Table, df) -> dict:
        """Write a block exactly as the contract declares it; its manifest entry."""
        if table.party != self.name or table.kind != "block":
            raise WenlvError(f"the {self.name} job may not write {table.qualified}")
        schema = table.spark_schema()
        out = df.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in schema.fields])
        path = self.block_dir / f"{table.name}.parquet"
        out.write.mode("overwrite").parquet(str(path))
        rows = parquet_rows(path)
        rel = f"{self.name}/{table.name}.parquet"
        return {"party": self.name, "rows": rows, "sha256": content_digest(path), "path": rel}


def content_digest(path: Path) -> str:
    """SHA-256 over the bytes of a Parquet folder's part files, in name order."""
    digest = hashlib.sha256()
    parts = sorted(p for p in Path(path).rglob("*.parquet") if p.is_file()) if Path(path).is_dir() else [Path(path)]
    for part in parts:
        digest.update(part.relative_to(path).as_posix().encode() if Path(path).is_dir() else b"")
        with open(part, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


normalised_phone = psi_exchange.normalised_phone
