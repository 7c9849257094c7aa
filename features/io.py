"""Read and write raw party tables as the contracts define them.

Layout: `<data_dir>/<party>/<table>.parquet` (or `<table>.csv` with a header row).
Everything written is validated against the table's contract first, and everything read
is validated on the way in, so a bad file stops with an error that names the file, the
row and the column (wenlv.errors.DataValidationError) instead of flowing on.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from wenlv.features.contracts import _ARROW, Table
from wenlv.errors import DataValidationError, WenlvError

PARQUET_OPTIONS = {"compression": "zstd", "write_statistics": True}


def parquet_rows(path: str | Path) -> int:
    """Rows of a Parquet file or folder of part files (as Spark writes it), from the footers alone."""
    path = Path(path)
    parts = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    return sum(pq.ParquetFile(p).metadata.num_rows for p in parts)


def table_path(data_dir: str | Path, table: Table, fmt: str = "parquet") -> Path:
    """Where a table lives: `<data_dir>/<party>/<name>.<fmt>`."""
    return Path(data_dir) / table.party / f"{table.name}.{fmt}"


def find_table(data_dir: str | Path, table: Table) -> Path:
    """The existing file of a table, Parquet preferred over CSV."""
    for fmt in ("parquet", "csv"):
        path = table_path(data_dir, table, fmt)
        if path.exists():
            return path
    raise WenlvError(f"{table.qualified}: neither {table_path(data_dir, table)} nor its .csv exists")


def conform(data, table: Table, file: str = "<memory>", row_offset: int = 0) -> pa.Table:
    """`data` (pyarrow Table, pandas DataFrame or dict of columns) as an arrow table with exactly
    the contract's columns and types; raises DataValidationError naming what is wrong."""
    if isinstance(data, dict):
        data = pa.table(data)
    elif not isinstance(data, pa.Table):
        data = pa.Table.from_pandas(data, preserve_index=False)
    missing = [c for c in table.columns if c not in data.column_names]
    if missing:
        raise DataValidationError(file, None, missing[0], f"missing column(s) {missing} of {table.qualified}")
    extra = [c for c in data.column_names if c not in table.columns]
    if extra:
        raise DataValidationError(file, None, extra[0], f"column(s) {extra} are not in the contract of {table.qualified}")
    schema = table.arrow_schema()
    columns = []
    for field in schema:
        col = data.column(field.name)
        if not col.type.equals(field.type):
            try:
                col = _cast(col, field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise DataValidationError(file, None, field.name, f"cannot read {col.type} as {field.type}: {exc}") from None
        columns.append(col)
    out = pa.Table.from_arrays(columns, schema=schema)
    validate(out, table, file, row_offset)
    return out


def _cast(col: pa.ChunkedArray, target: pa.DataType) -> pa.ChunkedArray:
    if pa.types.is_timestamp(target) and pa.types.is_timestamp(col.type) and col.type.tz is not None:
        raise pa.ArrowInvalid("timestamps must be local and naive (no time zone)")
    return pc.cast(col, target)


def validate(data: pa.Table, table: Table, file: str = "<memory>", row_offset: int = 0) -> None:
    """Nullability, choices and min/max of every column; the first offending row is named
    (1-based data row, counting `row_offset` rows before this chunk). Values of personal
    columns are never quoted in the message."""

    def _first(mask) -> int:
        return int(pc.index(mask, True).as_py())

    def fail(mask, column: str, problem) -> None:
        row = _first(mask)
        shown = "value" if table.field(column).personal else repr(data.column(column)[row].as_py())
        raise DataValidationError(file, row_offset + row + 1, column, problem(shown))

    for f in table.fields:
        col = data.column(f.name)
        if not f.nullable and col.null_count:
            fail(pc.is_null(col), f.name, lambda _: "null in a non-nullable column")
        if f.choices:
            bad = pc.invert(pc.is_in(col, value_set=pa.array(f.choices)))
            bad = pc.and_(bad, pc.is_valid(col))
            if pc.any(bad).as_py():
                fail(bad, f.name, lambda v: f"{v} is not one of {', '.join(f.choices)}")
        if f.min is not None or f.max is not None:
            for bound, op, word in ((f.min, pc.less, "below"), (f.max, pc.greater, "above")):
                if bound is None:
                    continue
                bad = pc.fill_null(op(col, pa.scalar(bound).cast(col.type)), False)
                if pc.any(bad).as_py():
                    fail(bad, f.name, lambda v: f"{v} is {word} the allowed {bound}")
        if pa.types.is_floating(col.type) and len(col):
            bad = pc.fill_null(pc.is_nan(col), False)
            if pc.any(bad).as_py():
                fail(bad, f.name, lambda _: "NaN is not a value")


def write_table(data_dir: str | Path, table: Table, data) -> Path:
    """Validate and write one whole table as Parquet; returns the path."""
    path = table_path(data_dir, table)
    with TableWriter(data_dir, table) as writer:
        writer.write(data)
    return path


class TableWriter:
    """Append validated chunks to one Parquet file, one row group per chunk (for data that does
    not fit in memory at once).

    The chunks go to a hidden file beside the table, renamed over it (atomically) by `close`:
    a run that fails half-way leaves the earlier table as it was and no partial file."""

    def __init__(self, data_dir: str | Path, table: Table):
        self.table = table
        self.path = table_path(data_dir, table)
        self.partial = self.path.with_name(f".{self.path.name}.partial-{uuid.uuid4().hex[:12]}")
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None

    def write(self, data) -> None:
        chunk = conform(data, self.table, str(self.path), row_offset=self.rows)
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.partial, self.table.arrow_schema(), **PARQUET_OPTIONS)
        if chunk.num_rows:
            self._writer.write_table(chunk, row_group_size=1 << 20)
        self.rows += chunk.num_rows

    def close(self) -> None:
        if self._writer is None:  # nothing written: still leave an empty, typed file
            self.write(self.table.arrow_schema().empty_table())
        self._writer.close()
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        """Drop what was written; the table keeps its earlier contents."""
        if self._writer is not None:
            self._writer.close()
        self.partial.unlink(missing_ok=True)

    def __enter__(self) -> "TableWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def read_table(data_dir: str | Path, table: Table, columns: Iterable[str] | None = None) -> pa.Table:
    """Read a table (Parquet, or CSV with a header row) and check it against its contract."""
    path = find_table(data_dir, table)
    if path.suffix == ".csv":
        types = {f.name: pa.string() if f.type in ("timestamp", "date") else pa.type_for_alias(_alias(f.type))
                 for f in table.fields}
        try:
            data = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=True))
        except pa.ArrowInvalid as exc:
            raise DataValidationError(str(path), None, None, f"unreadable CSV: {exc}") from None
    else:
        data = pq.read_table(path)
    out = conform(data, table, str(path))
    return out.select(list(columns)) if columns is not None else out


def read_pandas(data_dir: str | Path, table: Table, columns: Iterable[str] | None = None):
    return read_table(data_dir, table, columns).to_pandas()


def _alias(logical: str) -> str:
    return _ARROW[logical]


def read_meta(data_dir: str | Path) -> dict | None:
    """`<data_dir>/meta.json` written by the generator (timeline, `split_date`, test window),
    or None when the data has none (e.g. a real-data import)."""
    path = Path(data_dir) / "meta.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise WenlvError(f"{path}: not valid JSON ({exc})") from None
