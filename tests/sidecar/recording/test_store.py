"""The recordings directory: pairs written 0600 in a 0700 directory, oldest deleted first past
``max_bytes``, the index rebuilt from the directory at start."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from streamhop.sidecar.recording.store import RecordingStore, RecordingTooLargeError


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_pair_is_written_private(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path / "rec" / "deeper", 10_000)
    store.open()
    assert _mode(store.directory) == 0o700
    assert store.write("abc123", b"data: x\n\n", b"{}") == 0
    assert (store.directory / "abc123.sse").read_bytes() == b"data: x\n\n"
    assert (store.directory / "abc123.json").read_bytes() == b"{}"
    assert _mode(store.directory / "abc123.sse") == _mode(store.directory / "abc123.json") == 0o600
    assert store.bytes == 11
    assert sorted(p.name for p in store.directory.iterdir()) == ["abc123.json", "abc123.sse"]


def test_oldest_recordings_go_first_past_max_bytes(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path, 250)
    store.open()
    for name in ("a", "b", "c"):
        assert store.write(name, b"x" * 90, b"{}") == 0 or name == "c"
    # a (92) + b (92) + c (92) > 250: a goes.
    assert not (tmp_path / "a.sse").exists() and not (tmp_path / "a.json").exists()
    assert (tmp_path / "b.sse").exists() and (tmp_path / "c.json").exists()
    assert store.bytes == 184 and store.evicted == 1
    assert store.write("d", b"y" * 200, b"{}") == 2  # b and c make room
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json", "d.sse"]
    assert "1 recordings 202 bytes" in repr(store)


def test_a_recording_over_the_whole_budget_is_refused(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path, 100)
    store.open()
    with pytest.raises(RecordingTooLargeError, match="max_bytes=100"):
        store.write("big", b"x" * 99, b"{}")
    assert list(tmp_path.iterdir()) == []


def test_unsafe_names_are_refused(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path, 100)
    store.open()
    for stem in ("../escape", "a/b", "", ".hidden"):
        with pytest.raises(ValueError, match="not a recording name"):
            store.write(stem, b"x", b"{}")


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path, 1000)
    store.open()
    (tmp_path / "r.json").mkdir()  # the .json cannot replace a directory
    with pytest.raises(OSError):
        store.write("r", b"data: x\n\n", b"{}")
    assert not (tmp_path / "r.sse").exists() and store.bytes == 0
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_open_indexes_what_is_there_and_trims_it(tmp_path: Path) -> None:
    for i, name in enumerate(("old", "mid", "new")):
        for suffix in (".sse", ".json"):
            path = tmp_path / f"{name}{suffix}"
            path.write_bytes(b"z" * 50)
            os.utime(path, (1_000_000 + i, 1_000_000 + i))
    (tmp_path / "notes.txt").write_text("not a recording")
    store = RecordingStore(tmp_path, 250)
    store.open()
    assert store.bytes == 200 and store.evicted == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "mid.json",
        "mid.sse",
        "new.json",
        "new.sse",
        "notes.txt",
    ]
