"""The file ``relay dlq discard --save FILE`` keeps every discarded letter in (a LetterCopies port).

One JSON line per letter, appended; ``append`` returns only once the lines it counts are on disk
(written whole, then fsynced), so the caller deletes a letter only after its copy is safe. A new file
is created with mode 0600 (the lines hold message bodies, which may hold customer messages) and its
directory entry is fsynced too; an existing file is appended to, its mode left as it is (one that ends
in an unfinished line, from a run killed while writing or a part that could not be cut back, gets a
newline first, so the next letter's line is not glued onto it and lost to a reader). Only a regular
file will do: ``/dev/null`` would take every line and keep none, ``/dev/stdout`` would print the bodies,
a FIFO would block the open until something reads it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Sequence


class LetterFile:
    """Opened (created 0600 if missing) at construction: an ``OSError`` naming the file if it cannot be,
    or is no regular file."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            _refuse_unless_regular(os.stat(path).st_mode, path)
            existed = True
        except FileNotFoundError:
            existed = False
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        mode = os.fstat(self._fd).st_mode
        try:
            _refuse_unless_regular(mode, path)  # swapped in between the stat and the open
        except OSError:
            os.close(self._fd)
            raise
        # An existing file others may read: said, not changed (it is the operator's file).
        self.readable_by_others = existed and bool(mode & 0o077)
        self.mode = stat.S_IMODE(mode)
        self._unterminated = existed and _ends_unterminated(path)
        if not existed:
            _sync_directory(path)

    def append(self, lines: Sequence[str]) -> tuple[int, str | None]:
        """Write ``lines`` (each without its newline) in order, then fsync: how many of them (the first
        ones) are on disk, and why not all (None: all are). A line that cannot be written
        whole is cut back off the file (best effort) and the rest are not tried; when fsync fails, none
        counts as written (which reached the disk is unknown). Runs appending to one file take turns (an
        exclusive ``flock`` for each call)."""
        # Another run may append to the same file: the lock keeps its lines out of the span a failed
        # write of ours cuts back (without it, the cut would take lines that run had synced and whose
        # letters it had deleted).
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except OSError:  # a file system without flock: append as before
            return self._append(lines)
        try:
            return self._append(lines)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _append(self, lines: Sequence[str]) -> tuple[int, str | None]:
        written, error = 0, None
        for line in lines:
            data = ("\n" if self._unterminated else "").encode() + (line + "\n").encode("utf-8")
            try:
                start = os.lseek(self._fd, 0, os.SEEK_END)
            except OSError:
                start = None  # a pipe or a device: nothing to cut back
            try:
                _write_all(self._fd, data)
            except OSError as exc:
                error = self._failed("could not write", exc)
                if start is not None:
                    _cut_back(self._fd, start)
                break
            self._unterminated = False
            written += 1
        if written:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                return 0, self._failed("could not sync", exc)
        return written, error

    def close(self) -> None:
        os.close(self._fd)

    def _failed(self, what: str, exc: OSError) -> str:
        return f"{what} {self.path} ({exc.strerror or type(exc).__name__})"


def _refuse_unless_regular(mode: int, path: str) -> None:
    if not stat.S_ISREG(mode):
        raise OSError(errno.EINVAL, "not a regular file, where the copies would be kept", path)


def _ends_unterminated(path: str) -> bool:
    """Whether the file's last byte is other than a newline (False for an empty or unreadable file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False  # write-only for us: nothing to check, nothing added
    try:
        size = os.fstat(fd).st_size
        return size > 0 and os.pread(fd, 1, size - 1) != b"\n"
    except OSError:
        return False
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _cut_back(fd: int, size: int) -> None:
    try:
        os.ftruncate(fd, size)
    except OSError:
        pass  # the partial line stays: a reader skips what does not parse


def _sync_directory(path: str) -> None:
    """Make the new file's name durable too (best effort: not every file system lets a directory sync)."""
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
