"""One writer per run directory: an advisory lock held while a process writes the directory.

:class:`RunLock` creates ``<run dir>/.mtlkit.lock``, takes an exclusive ``fcntl.flock`` on it
without waiting and writes its pid and host into it. A second process that tries to lock the
same directory fails at once with :class:`~mtlkit.errors.RunDirectoryError`
(``run directory '...' is in use by pid N``). The operating system drops the lock when its
holder exits in any way (``kill -9`` included), so a lock file left by a killed process never
blocks anyone; a clean release deletes the file. The lock is re-entrant within one process
(nested locks of the same directory share one lock). On systems without ``fcntl`` (Windows)
locking is a no-op.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path
from types import TracebackType

from mtlkit.errors import RunDirectoryError

try:  # POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_FILE", "RunLock", "os_error_message"]

LOCK_FILE = ".mtlkit.lock"

_HELD: dict[Path, tuple[int, int]] = {}  # directory -> (fd, depth) of this process's locks


def os_error_message(
    exc: OSError, path: str | os.PathLike[str], what: str = "write", *, fix: str | None = None
) -> str:
    """A sentence naming ``path``, what went wrong and the fix, for an ``OSError`` raised by a write
    (``fix`` replaces the advice for a folder that is not writable)."""
    where = repr(str(path))
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"Cannot {what} {where}: the disk is full ({reason}). Files written before are intact "
            "(every write is atomic); free some space, or write the run elsewhere with --out."
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (
            f"Cannot {what} {where}: it is not writable ({reason}). "
            + (fix or "Fix its permissions, or pass a writable folder with --out.")
        )
    if exc.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        return (
            f"Cannot {what} {where}: a file is in the way of a folder or a folder in the way of a file "
            f"({reason}). Pass a folder path that is not an existing file with --out."
        )
    return (
        f"Cannot {what} {where} ({reason}). Check the path and the disk, or pass another folder with --out."
    )


class RunLock:
    """Exclusive lock of a run directory for this process (a context manager).

    Args:
        directory: the run directory (created if needed).

    Raises:
        RunDirectoryError: another process holds the lock, or the directory cannot be written.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._key: Path | None = None

    @property
    def path(self) -> Path:
        """The lock file."""
        return self.directory / LOCK_FILE

    def acquire(self) -> RunLock:
        if self._key is not None:
            return self
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            key = self.directory.resolve()
        except OSError as exc:
            raise RunDirectoryError(
                os_error_message(exc, self.directory, "create the run directory")
            ) from None
        if key in _HELD:  # already locked by this process: share it
            fd, depth = _HELD[key]
            _HELD[key] = (fd, depth + 1)
        else:
            _HELD[key] = (self._lock(), 1)
        self._key = key
        return self

    def _lock(self) -> int:
        if fcntl is None:  # pragma: no cover - Windows
            return -1
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise RunDirectoryError(
                    os_error_message(
                        exc,
                        self.directory,
                        "write to the run directory",
                        fix="Make it writable, or copy it to a writable place and resume the copy.",
                    )
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise RunDirectoryError(
                    f"Run directory {str(self.directory)!r} is in use by {holder}: another mtlkit process is "
                    "writing it. Wait for it to finish, or stop it, then resume with "
                    f"`mtlkit run --resume {self.directory}`."
                ) from None
            # the holder before us may have deleted the file after we opened it: lock the file on disk
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        except OSError:  # a full disk: the lock itself still holds
            pass
        return fd

    def release(self) -> None:
        if self._key is None:
            return
        fd, depth = _HELD[self._key]
        if depth > 1:
            _HELD[self._key] = (fd, depth - 1)
        else:
            del _HELD[self._key]
            if fd >= 0:
                try:
                    self.path.unlink(missing_ok=True)  # while still holding it: no one locks a deleted file
                finally:
                    os.close(fd)
        self._key = None

    @property
    def held(self) -> bool:
        return self._key is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _holder(fd: int) -> str:
    """``pid N`` (``on host H`` when another machine) from a lock file's contents."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 256).decode(errors="replace").split()
    except OSError:
        text = []
    if not text or not text[0].isdigit():
        return "another process"
    host = f" on host {text[1]}" if len(text) > 1 and text[1] != socket.gethostname() else ""
    return f"pid {text[0]}{host}"
