"""wenlv.staging: a stage's output is swapped in whole, or not at all."""
import os

import pytest

from wenlv import staging


def _tree(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_success_replaces_the_target_whole(tmp_path):
    target = tmp_path / "out"
    (target / "old").mkdir(parents=True)
    (target / "old" / "a.txt").write_text("old")
    with staging.staged_folder(target) as folder:
        assert folder.parent == tmp_path and folder != target
        (folder / "b.txt").write_text("new")
        assert _tree(target) == {"old/a.txt": b"old"}, "the old output stays until the swap"
    assert _tree(target) == {"b.txt": b"new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failure_leaves_the_target_untouched_and_nothing_beside_it(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "a.txt").write_text("good")
    with pytest.raises(RuntimeError):
        with staging.staged_folder(target) as folder:
            (folder / "a.txt").write_text("half")
            raise RuntimeError("bad data")
    assert _tree(target) == {"a.txt": b"good"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_new_target_is_created(tmp_path):
    with staging.staged_folder(tmp_path / "deep" / "out") as folder:
        (folder / "x").write_text("1")
    assert _tree(tmp_path / "deep" / "out") == {"x": b"1"}


def test_the_fallback_swap_without_renameat2(tmp_path, monkeypatch):
    monkeypatch.setattr(staging, "_exchange", lambda a, b: False)
    target = tmp_path / "out"
    target.mkdir()
    (target / "a").write_text("old")
    with staging.staged_folder(target) as folder:
        (folder / "a").write_text("new")
    assert _tree(target) == {"a": b"new"} and sorted(os.listdir(tmp_path)) == ["out"]


def test_leftovers_of_a_crash_are_cleaned_and_a_parked_output_is_restored(tmp_path):
    target = tmp_path / "out"
    (tmp_path / ".out.staging-dead").mkdir()
    (tmp_path / ".out.staging-dead" / "half").write_text("x")
    (tmp_path / ".out.old-1234").mkdir()  # crashed between the two renames: out is missing
    (tmp_path / ".out.old-1234" / "a").write_text("good")
    staging.clean_leftovers(target)
    assert _tree(target) == {"a": b"good"}
    assert sorted(os.listdir(tmp_path)) == ["out"]
