import os
from pathlib import Path

import pytest

from style_lora_trainer.style_lora_engine import atomic
from style_lora_trainer.style_lora_engine.atomic import atomic_write_bytes, atomic_write_text, safe_join
from style_lora_trainer.style_lora_engine.errors import StyleLoRAError


def test_atomic_write_bytes_creates_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"first")
    assert target.read_bytes() == b"first"
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    # No temporary files are left behind next to the target.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_atomic_write_text_is_utf8_without_newline_translation(tmp_path: Path) -> None:
    target = tmp_path / "caption.txt"
    atomic_write_text(target, "Daumier, lithograph é\nline two")
    assert target.read_bytes() == "Daumier, lithograph é\nline two".encode()


def test_failed_write_keeps_old_file_and_removes_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "keep.txt"
    target.write_text("old")

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_safe_join_allows_paths_inside(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    assert safe_join(tmp_path, "a.txt") == (tmp_path / "a.txt").resolve()
    assert safe_join(tmp_path, "sub/../b.txt") == (tmp_path / "b.txt").resolve()
    assert safe_join(tmp_path, "sub/c.txt") == (tmp_path / "sub" / "c.txt").resolve()


@pytest.mark.parametrize("bad", ["../escape.txt", "sub/../../escape.txt", "..", ""])
def test_safe_join_rejects_escapes(tmp_path: Path, bad: str) -> None:
    with pytest.raises(StyleLoRAError) as info:
        safe_join(tmp_path, bad)
    assert repr(bad) in str(info.value)


def test_safe_join_rejects_absolute_path(tmp_path: Path) -> None:
    absolute = str((tmp_path / "x.txt").resolve())
    with pytest.raises(StyleLoRAError, match="relative path"):
        safe_join(tmp_path, absolute)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_safe_join_rejects_symlink_pointing_outside(tmp_path: Path) -> None:
    base = tmp_path / "base"
    outside = tmp_path / "outside"
    base.mkdir()
    outside.mkdir()
    (base / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(StyleLoRAError, match="outside"):
        safe_join(base, "link/caption.txt")


def test_stale_temp_files_are_removed_and_nothing_else(tmp_path) -> None:
    from style_lora_trainer.style_lora_engine.atomic import atomic_path, remove_stale_temp_files

    keep = [tmp_path / "style-000001.safetensors", tmp_path / "notes.tmp", tmp_path / ".hidden"]
    for path in keep:
        path.write_bytes(b"x")
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "style-000002.safetensors") as tmp:
        tmp.write_bytes(b"partial")
        leftover = tmp
        # What a SIGKILL at this instant would leave (no cleanup runs): the same file, kept.
        (tmp_path / ".style-000003.safetensors.abcd.tmp").write_bytes(tmp.read_bytes())
        raise KeyboardInterrupt
    assert not leftover.exists()  # an interrupt is cleaned up by the writer itself
    removed = remove_stale_temp_files(tmp_path)
    assert [p.name for p in removed] == [".style-000003.safetensors.abcd.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in keep)
