"""Validate one party's raw tables against features/contracts.py, in Spark.

Checks: column presence, types, nullability, choices, min/max, HH:MM clock times, phone
format, key uniqueness, foreign keys within the party and departed_at ≥ arrived_at.
A bad row stops the job with DataValidationError(file, 1-based data row, column); with
quarantine, bad rows go to `<out>/quarantine/<party>/<table>.parquet` with `row`, `column`
and `reason` columns (personal columns dropped) and the good rows go on.
Messages name the check that failed, never the value (a value may be a phone number).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pyspark import StorageLevel
from pyspark.sql import Window
from pyspark.sql import functions as F

from wenlv.features import contracts
from wenlv.features.contracts import Table
from wenlv.errors import DataValidationError

# Rules that span columns or tables; single-column rules come from the contract fields.
FOREIGN_KEYS = {
    "tourism.visits": (("visitor_id", contracts.VISITORS), ("poi_id", contracts.POIS)),
    "carrier.presence": (("phone", contracts.SUBSCRIBERS), ("area_id", contracts.AREAS)),
    "internet.engagement": (("account_id", contracts.ACCOUNTS),),
}
NOT_BEFORE = {"tourism.visits": (("departed_at", "arrived_at"),)}  # (later, earlier)
CLOCK_COLUMNS = {"tourism.pois": ("open_time", "close_time")}
CLOCK_PATTERN = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
PHONE_PATTERN = r"^\+?[0-9]{6,15}$"

_LOW_BITS = (1 << 33) - 1  # monotonically_increasing_id: partition id << 33 | record number


@dataclass
class Checked:
    """A validated table: its good rows (contract columns, contract types) and what was set aside."""

    table: Table
    path: Path
    good: object  # DataFrame
    quarantined: int
    cached: object = None  # the persisted checked rows `good` is filtered from

    def release(self) -> None:
        if self.cached is not None:
            self.cached.unpersist()


def find_file(party_dir: Path, table: Table) -> Path:
    for suffix in (".parquet", ".csv"):
        path = Path(party_dir) / f"{table.name}{suffix}"
        if path.exists():
            return path
    raise DataValidationError(str(Path(party_dir) / f"{table.name}.parquet"), None, None,
                              "file missing (expected .parquet or .csv)")


def _read(spark, path: Path, table: Table):
    """The raw rows, contract schema where the file already matches it, as stored otherwise."""
    try:
        if path.suffix == ".csv":
            df = spark.read.option("header", True).option("mode", "PERMISSIVE").csv(str(path))
        else:
            df = spark.read.parquet(str(path))
    except Exception as exc:  # noqa: BLE001 - Spark raises several kinds; the user needs the file named
        first_line = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise DataValidationError(str(path), None, None,
                                  f"cannot be read by Spark ({type(exc).__name__}: {first_line})") from None
    for name in df.columns:
        if name not in table.columns:
            raise DataValidationError(str(path), None, name, f"column is not in the contract of {table.qualified}")
    for name in table.columns:
        if name not in df.columns:
            raise DataValidationError(str(path), None, name, "column missing")
    wanted = {f.name: f.dataType for f in table.spark_schema().fields}
    if path.suffix != ".csv" and all(df.schema[n].dataType == t for n, t in wanted.items()):
        df = spark.read.schema(table.spark_schema()).parquet(str(path))
    return df.select(*table.columns)


def _row_numbers(spark, raw, bad):
    """`bad` with `_row`, the 1-based data row in file order, from `_mid` (a file-order id).

    monotonically_increasing_id is partition index << 33 | record index in the partition;
    counting the rows of each partition of the same scan turns it into a row number.
    Only computed once a file is known to hold bad rows.
    """
    counts = sorted((r["_pid"], r["count"]) for r in
                    raw.groupBy(F.spark_partition_id().alias("_pid")).count().collect())
    pairs, total = [], 0
    for pid, n in counts:
        pairs += [F.lit(pid), F.lit(total)]
        total += n
    offset = F.element_at(F.create_map(*pairs), F.expr("int(_mid >> 33)")) if pairs else F.lit(0)
    return bad.withColumn("_row", offset + F.expr(f"_mid & {_LOW_BITS}") + 1)


def _cell_checks(df, table: Table):
    """(column, problem) condition pairs in column order; the first that holds names the row's fault."""
    checks, typed = [], {}
    spark_types = {f.name: f.dataType for f in table.spark_schema().fields}
    for field in table.fields:
        raw = F.col(field.name)
        value = raw if df.schema[field.name].dataType == spark_types[field.name] else raw.try_cast(spark_types[field.name])
        typed[field.name] = value
        if not field.nullable:
            checks.append((field.name, raw.isNull(), "is empty but the contract does not allow nulls"))
        checks.append((field.name, raw.isNotNull() & value.isNull(), f"is not a valid {field.type}"))
        if field.choices:
            checks.append((field.name, ~value.isin(list(field.choices)), "is not one of the allowed values"))
        if field.min is not None:
            checks.append((field.name, value < F.lit(field.min), f"is below the minimum {field.min:g}"))
        if field.max is not None:
            checks.append((field.name, value > F.lit(field.max), f"is above the maximum {field.max:g}"))
        if field.personal and field.name == "phone":
            checks.append((field.name, ~value.rlike(PHONE_PATTERN), "is not a phone number of 6-15 digits"))
        if field.name in CLOCK_COLUMNS.get(table.qualified, ()):
            checks.append((field.name, ~value.rlike(CLOCK_PATTERN), "is not a HH:MM time"))
    return checks, typed


def _first_fault(checks):
    column, problem = F.lit(None).cast("string"), F.lit(None).cast("string")
    for name, cond, text in reversed(checks):
        hit = F.coalesce(cond, F.lit(False))
        column = F.when(hit, F.lit(name)).otherwise(column)
        problem = F.when(hit, F.lit(text)).otherwise(problem)
    return column, problem


def check_table(spark, path: Path, table: Table, references: dict[str, "Checked"], quarantine_dir: Path | None) -> Checked:
    raw = _read(spark, path, table)
    df = raw.withColumn("_mid", F.monotonically_increasing_id())
    cell_checks, typed = _cell_checks(df, table)
    cell_column, cell_problem = _first_fault(cell_checks)
    df = df.select("_mid", *[typed[n].alias(n) for n in table.columns],
                   cell_column.alias("_cell_column"), cell_problem.alias("_cell_problem"))
    checks = []  # rules across rows or columns, on the typed values
    if table.key:
        first_seen = F.row_number().over(Window.partitionBy(*table.key).orderBy("_mid"))
        df = df.withColumn("_dup", first_seen > 1)
        checks.append((table.key[0], F.col("_dup"), f"duplicates the key ({', '.join(table.key)}) of an earlier row"))
    for column, ref in FOREIGN_KEYS.get(table.qualified, ()):
        keys = references[ref.qualified].good.select(F.col(ref.key[0]).alias(f"_fk_{column}")).distinct() \
            .withColumn(f"_ok_{column}", F.lit(True))
        df = df.join(keys, df[column] == keys[f"_fk_{column}"], "left").drop(f"_fk_{column}")
        checks.append((column, F.col(column).isNotNull() & F.col(f"_ok_{column}").isNull(),
                       f"refers to no row of {ref.party}/{ref.name}"))
    for later, earlier in NOT_BEFORE.get(table.qualified, ()):
        checks.append((later, F.col(later) < F.col(earlier), f"is before {earlier}"))
    row_column, row_problem = _first_fault(checks)
    df = (df.withColumn("_column", F.coalesce("_cell_column", row_column))
          .withColumn("_problem", F.coalesce("_cell_problem", row_problem))
          .select("_mid", *table.columns, "_column", "_problem")
          .persist(StorageLevel.MEMORY_AND_DISK))
    bad = df.filter(F.col("_problem").isNotNull())
    n_bad = bad.count()
    if n_bad and quarantine_dir is None:
        first = _row_numbers(spark, raw, bad.orderBy("_mid").limit(1)).first()
        df.unpersist()
        raise DataValidationError(str(path), int(first["_row"]), first["_column"],
                                  f"{first['_problem']} ({n_bad} bad row(s) in this file)")
    if n_bad:
        keep = [n for n in table.columns if not table.field(n).personal]
        (_row_numbers(spark, raw, bad).orderBy("_mid")
         .select(F.col("_row").alias("row"), *keep, F.col("_column").alias("column"), F.col("_problem").alias("reason"))
         .write.mode("overwrite").parquet(str(Path(quarantine_dir) / table.party / f"{table.name}.parquet")))
    good = df.filter(F.col("_problem").isNull()).select(*table.columns)
    return Checked(table, path, good, n_bad, df)


def check_party(spark, party_dir: Path, party: str, quarantine_dir: Path | None = None) -> dict[str, Checked]:
    """Every raw table of one party, referenced tables first (the contract lists them that way)."""
    checked: dict[str, Checked] = {}
    for table in contracts.tables_of(party):
        checked[table.qualified] = check_table(spark, find_file(party_dir, table), table, checked, quarantine_dir)
    return checked
