"""Errors shared by every stage."""


class WenlvError(Exception):
    """An error a user can act on: the CLI prints it as one clear line and exits with code 2."""


class DataValidationError(WenlvError):
    """A raw file breaks its contract: names the file, the row and the column."""

    def __init__(self, file: str, row: int | None, column: str | None, problem: str):
        self.file, self.row, self.column, self.problem = file, row, column, problem
        where = file + (f", row {row}" if row is not None else "") + (f", column {column!r}" if column else "")
        super().__init__(f"{where}: {problem}")
