"""The recordings directory: writing one recording's pair of files, and keeping the directory
under ``[record] max_bytes`` by deleting the oldest recordings first.

Blocking file IO: :class:`~.recordings.Recordings` calls :meth:`RecordingStore.write` through
``asyncio.to_thread``, never on the event loop. A pair is ``<request-id>.sse`` then
``<request-id>.json``, each written to a temporary name and renamed into place, so a reader that
sees the ``.json`` sees a complete pair. Files are created mode 0600 and the directory 0700:
recordings hold model output and maybe prompts.

The size index is built from the directory at start (pairs already there count, oldest by
modification time) and kept in memory after; files removed by someone else are forgotten when
their turn to be deleted comes.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Final

from streamhop.middleware.errors import StreamHopError

SUFFIXES: Final = (".sse", ".json")
_STEM: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")


class RecordingTooLargeError(StreamHopError):
    """One recording is larger than the whole ``max_bytes`` budget: it is not written."""


class RecordingStore:
    """The directory of recordings and the bytes they take (see the module docstring).

    Args:
        directory: where recordings go (created with mode 0700 by :meth:`open`).
        max_bytes: the most bytes all recordings may take together.
    """

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._sizes: OrderedDict[str, int] = OrderedDict()
        """Recording stem -> bytes of its files, oldest first."""
        self.bytes = 0
        self.evicted = 0
        """Recordings deleted to stay under ``max_bytes`` since :meth:`open`."""

    def __repr__(self) -> str:
        return (
            f"<RecordingStore {self.directory} {len(self._sizes)} recordings "
            f"{self.bytes} bytes max={self.max_bytes}>"
        )

    def open(self) -> None:
        """Create the directory (0700) if needed, index the recordings in it, and delete the
        oldest if they take more than ``max_bytes``.

        Raises:
            OSError: the directory cannot be created or listed.
        """
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        found: dict[str, tuple[float, int]] = {}
        for path in self.directory.iterdir():
            if path.suffix not in SUFFIXES or not _STEM.fullmatch(path.stem):
                continue
            with contextlib.suppress(OSError):  # gone meanwhile
                stat = path.stat()
                mtime, size = found.get(path.stem, (0.0, 0))
                found[path.stem] = (max(mtime, stat.st_mtime), size + stat.st_size)
        with self._lock:
            for stem, (_, size) in sorted(found.items(), key=lambda item: item[1][0]):
                self._sizes[stem] = size
                self.bytes += size
            self._evict(keep=None)

    def write(self, stem: str, sse: bytes, timeline: bytes) -> int:
        """Write one recording's pair, then delete the oldest others while over ``max_bytes``.

        Args:
            stem: the file name without suffix (the request id: letters, digits, ``-``, ``_``).
            sse: the ``.sse`` file's bytes.
            timeline: the ``.json`` file's bytes.

        Returns:
            How many older recordings were deleted.

        Raises:
            RecordingTooLargeError: the pair alone is larger than ``max_bytes``.
            ValueError: ``stem`` is not a safe file name.
            OSError: a file cannot be written (nothing of this recording is left behind).
        """
        if not _STEM.fullmatch(stem):
            raise ValueError(f"not a recording name: {stem!r}")
        size = len(sse) + len(timeline)
        if size > self.max_bytes:
            raise RecordingTooLargeError(
                f"recording {stem} takes {size} bytes, more than max_bytes={self.max_bytes}"
            )
        try:
            for suffix, data in zip(SUFFIXES, (sse, timeline), strict=True):
                _write_file(self.directory / f"{stem}{suffix}", data)
        except OSError:
            self._remove(stem)
            raise
        with self._lock:
            old = self._sizes.pop(stem, 0)
            self._sizes[stem] = size
            self.bytes += size - old
            before = self.evicted
            self._evict(keep=stem)
            return self.evicted - before

    def _evict(self, keep: str | None) -> None:
        """Delete the oldest recordings (never ``keep``) until within ``max_bytes``; with the
        lock held."""
        while self.bytes > self.max_bytes and self._sizes:
            stem, size = next(iter(self._sizes.items()))
            if stem == keep:
                break
            del self._sizes[stem]
            self.bytes -= size
            self._remove(stem)
            self.evicted += 1

    def _remove(self, stem: str) -> None:
        for suffix in SUFFIXES:
            with contextlib.suppress(OSError):  # gone already, or not ours to delete
                (self.directory / f"{stem}{suffix}").unlink()


def _write_file(path: Path, data: bytes) -> None:
    """``data`` into ``path`` (mode 0600) through a temporary file renamed into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
