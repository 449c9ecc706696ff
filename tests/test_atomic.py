"""Atomic outputs: complete or absent, never clobbering what the run did not write."""
import pytest

from mvlm_jax.atomic import OutputExistsError, atomic_directory


def leftovers(directory):
    return [p.name for p in directory.iterdir() if p.name.startswith(".")]


def test_success_renames_and_failure_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_directory(out) as partial:
            (partial / "half.bin").write_text("x")
            raise RuntimeError("killed halfway")
    assert not out.exists() and leftovers(tmp_path) == []
    with atomic_directory(out) as partial:
        (partial / "done.bin").write_text("x")
    assert (out / "done.bin").is_file() and leftovers(tmp_path) == []


def test_output_that_appears_during_the_run_is_kept_without_force(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(OutputExistsError):
        with atomic_directory(out) as partial:
            (partial / "new.bin").write_text("new")
            out.mkdir()
            (out / "theirs.txt").write_text("theirs")  # a concurrent run or the user
    assert (out / "theirs.txt").read_text() == "theirs" and leftovers(tmp_path) == []


def test_force_replaces_a_directory_or_a_file(tmp_path):
    for kind in ("dir", "file"):
        out = tmp_path / f"out_{kind}"
        if kind == "dir":
            out.mkdir()
            (out / "old.txt").write_text("old")
        else:
            out.write_text("old file")
        with atomic_directory(out, force=True) as partial:
            (partial / "new.txt").write_text("new")
        assert (out / "new.txt").read_text() == "new" and not (out / "old.txt").exists()
    assert leftovers(tmp_path) == []
