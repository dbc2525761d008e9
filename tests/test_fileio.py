"""medssl.fileio: a failed write leaves the old file and no temporary behind."""

import pytest

from medssl.fileio import atomic_open, atomic_write, atomic_write_text


def _fail(path):
    path.write_text("partial")
    raise RuntimeError("writer failed")


def test_atomic_writes_replace_on_success_and_keep_the_old_file_on_failure(tmp_path):
    target = tmp_path / "sub" / "file.txt"
    atomic_write_text(target, "one")
    assert target.read_text() == "one"
    atomic_write(target, lambda p: p.write_text("two"))
    assert target.read_text() == "two"

    with pytest.raises(RuntimeError):
        atomic_write(target, _fail)
    with pytest.raises(KeyboardInterrupt), atomic_open(target, "w") as fh:
        fh.write("partial")
        raise KeyboardInterrupt
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.txt"]
