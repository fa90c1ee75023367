"""One harvest per output folder: an exclusive ``flock`` on ``<out>/.harvest.lock``.

The lock is the operating system's (``fcntl.flock``), so it goes with the process: a harvest
killed with SIGKILL, or a machine that restarts, leaves no stale lock, and rerunning the harvest
resumes it. A second harvest into a folder whose lock is held is refused at once with a
CacheError naming the process that holds it. The lock file is removed when the harvest ends; a
process that opened the old file just before that notices (its inode is no longer the path's)
and tries again. Where ``fcntl`` does not exist (Windows) there is no lock.

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> with folder_lock(folder):
    ...     (folder / LOCK_NAME).exists()
    True
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from interpkit.cache._errors import CacheError

LOCK_NAME = ".harvest.lock"


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        return "another process"
    return f"process {pid}" if pid.isdigit() else "another process"


def _acquire(path: Path, fcntl: object) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # type: ignore[attr-defined]
        except BlockingIOError:
            os.close(fd)
            raise CacheError(
                f"another harvest ({_holder(path)}) is writing to {str(path.parent)!r}: wait for it to finish "
                "(rerunning then resumes or reuses its work), or choose another out_dir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed the file as it finished: lock the new one


@contextlib.contextmanager
def folder_lock(out: Path) -> Iterator[None]:
    """Hold the harvest lock of ``out`` (created if missing) for the body; CacheError if it is held."""
    if out.exists() and not out.is_dir():
        raise CacheError(f"out_dir {str(out)!r} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(f"cannot write to out_dir {str(out)!r}: {exc.strerror or exc}") from None
    try:
        import fcntl
    except ImportError:  # no flock on this platform: no lock
        yield
        return
    path = out / LOCK_NAME
    try:
        fd = _acquire(path, fcntl)
    except OSError as exc:
        raise CacheError(f"cannot write to out_dir {str(out)!r}: {exc.strerror or exc}") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # still holding the lock: a waiter on the old file sees it gone and retries
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
