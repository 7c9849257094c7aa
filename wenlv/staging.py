"""Write a stage's output folder beside its target and swap it in only when the whole run succeeded.

A failed run must leave the earlier good output intact (a features run over bad data used to
empty its `--out` first). `staged_folder(target)` yields a fresh folder next to `target` (same
file system, so renames are atomic); when the block finishes it takes `target`'s place, and
when the block raises it is removed and `target` is untouched.

The swap is one atomic `renameat2(RENAME_EXCHANGE)` on Linux; elsewhere two renames, with the
old output parked as `.<name>.old-*` until the new one is in place. Leftovers of a crashed
run (`.<name>.staging-*`, `.<name>.old-*`) are cleaned up by the next run for the same
target, and a parked old output whose target is missing is put back rather than deleted.
"""
from __future__ import annotations

import ctypes
import logging
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _staging_prefix(target: Path) -> str:
    return f".{target.name}.staging-"


def _old_prefix(target: Path) -> str:
    return f".{target.name}.old-"


def clean_leftovers(target: str | Path) -> None:
    """Remove what a crashed run left beside `target`; restore a parked old output if `target` is gone."""
    target = Path(target)
    if not target.parent.is_dir():
        return
    parked = sorted(p for p in target.parent.iterdir() if p.name.startswith(_old_prefix(target)))
    if parked and not target.exists():
        os.rename(parked.pop(), target)
        log.warning("%s was missing after an interrupted swap: restored the previous output", target)
    for leftover in parked + [p for p in target.parent.iterdir() if p.name.startswith(_staging_prefix(target))]:
        shutil.rmtree(leftover, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths (Linux renameat2); False where the system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def swap_in(staging: str | Path, target: str | Path) -> None:
    """Put the finished `staging` folder at `target`, removing what was there only once it is replaced."""
    staging, target = Path(staging), Path(target)
    if not target.exists():
        os.rename(staging, target)
        return
    if _exchange(staging, target):
        shutil.rmtree(staging)  # now the previous output
        return
    parked = target.parent / f"{_old_prefix(target)}{uuid.uuid4().hex[:8]}"
    os.rename(target, parked)
    os.rename(staging, target)
    shutil.rmtree(parked)


@contextmanager
def staged_folder(target: str | Path) -> Iterator[Path]:
    """An empty folder beside `target` to write the whole output into; swapped in if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(target)
    staging = target.parent / f"{_staging_prefix(target)}{uuid.uuid4().hex[:12]}"
    staging.mkdir()  # not mkdtemp: the output keeps the usual (umask) permissions
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    swap_in(staging, target)
