"""The one atomic file write (ofas_wrap._atomic): whole new content or the old file, never half, and no leftovers."""

import os
import stat

import pytest

from ofas_wrap._atomic import atomic_path, write_atomic


@pytest.mark.parametrize("data, expected", [
    ("text ü\n", "text ü\n".encode()),
    (b"\x00\x01 bytes", b"\x00\x01 bytes"),
], ids=["text-as-utf8", "bytes"])
def test_write_atomic_replaces_the_file_and_leaves_nothing_else(tmp_path, data, expected):
    target = tmp_path / "out.json"
    target.write_text("old")
    assert write_atomic(target, data) == target
    assert target.read_bytes() == expected
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_path(target) as temporary:
            temporary.write_text("half")
            raise RuntimeError("writer failed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_the_temporary_file_is_hidden_beside_the_target_with_the_suffix(tmp_path):
    with atomic_path(tmp_path / "figure.png", suffix=".png") as temporary:
        assert temporary.parent == tmp_path
        assert temporary.name.startswith(".figure.png.tmp-") and temporary.name.endswith(".png")
        temporary.write_bytes(b"png")
    assert (tmp_path / "figure.png").read_bytes() == b"png"


def test_the_file_gets_the_permissions_of_a_new_file_not_private_ones(tmp_path):
    (tmp_path / "plain").write_text("x")
    write_atomic(tmp_path / "atomic", "x")
    mode = stat.S_IMODE(os.stat(tmp_path / "atomic").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "plain").st_mode)


@pytest.mark.parametrize("target, data, error, message", [
    ("folder", "x", IsADirectoryError, "is a folder"),
    ("missing/out.json", "x", FileNotFoundError, "no such folder"),
    ("out.json", {"a": 1}, TypeError, "str or bytes, got dict"),
], ids=["folder", "missing-folder", "not-text"])
def test_bad_targets_and_data_are_refused_before_anything_is_written(tmp_path, target, data, error, message):
    (tmp_path / "folder").mkdir()
    with pytest.raises(error, match=message):
        write_atomic(tmp_path / target, data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]
    assert not any((tmp_path / "folder").iterdir())
