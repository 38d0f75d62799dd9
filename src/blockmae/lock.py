"""One writer per run directory: an exclusive lock on `<run_dir>/run.lock`.

The lock is an `flock` on the file, so the kernel releases it when the holder exits, however it exits
(SIGKILL included); the file records who holds it (pid, host, start time, command) so that a second run
can say who is in the way. A lock file left by a process that is gone is taken over with a message.
On filesystems without working locks (some NFS setups report ENOLCK) the file alone decides: a holder on
this host whose pid is gone is stale; a holder on another host is trusted until the file is removed.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from blockmae.errors import BlockMAEError
from blockmae.fileio import writing
from blockmae.registry import pid_alive, process_start_time  # the registry's rules for a live process

LOCK_NAME = "run.lock"


def _holder_text(holder: dict[str, Any]) -> str:
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} "
            f"(started {holder.get('started_at', '?')})")


def _read_holder(fd: int) -> dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 65536)
    try:
        holder = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _alive_here(holder: dict[str, Any]) -> bool:
    """Whether the holder is a live process on this host (unknown hosts count as alive)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return True
    return pid_alive(holder["pid"], holder.get("proc_start"))


class RunLock:
    """`lock = RunLock(run_dir).acquire()` ... `lock.release()`; BlockMAEError naming the holder if taken."""

    def __init__(self, run_dir: str | Path, lock_name: str = LOCK_NAME, what: str | None = None) -> None:
        """`lock_name` and `what` (the locked thing, in messages) serve outputs locked from beside them."""
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / lock_name
        self.what = what or f"run dir {self.run_dir}"
        self.label = what or str(self.run_dir)
        self.fd: int | None = None
        self.created_dir = False

    def acquire(self) -> "RunLock":
        with writing(self.run_dir):
            self.created_dir = not self.run_dir.exists()
            self.run_dir.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    flocked = self._flock(fd)
                    previous = _read_holder(fd)
                    if not flocked and previous and _alive_here(previous):
                        raise BlockMAEError(f"{self.what} is in use by {_holder_text(previous)}; wait "
                                            f"for it to finish, or use another run.dir (if that process is gone, "
                                            f"delete {self.path})")
                    # The holder before us may have removed the file after we opened it: lock the one in place.
                    if os.fstat(fd).st_ino != os.stat(self.path).st_ino:
                        os.close(fd)
                        continue
                except FileNotFoundError:
                    os.close(fd)
                    continue
                except BaseException:
                    os.close(fd)
                    self._remove_created_dir()
                    raise
                break
            if previous:
                print(f"taking over the lock of {self.label} from {_holder_text(previous)}, which is no longer "
                      f"running", file=sys.stderr, flush=True)
            holder = {"pid": os.getpid(), "host": socket.gethostname(), "proc_start": process_start_time(os.getpid()),
                      "started_at": _dt.datetime.now().isoformat(timespec="seconds"), "command": sys.argv}
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(holder) + "\n").encode())
            os.fsync(fd)
        self.fd = fd
        return self

    def _flock(self, fd: int) -> bool:
        """True if this process now holds the kernel lock; False where the filesystem has none (the file's
        contents decide). BlockMAEError if another process holds it."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            raise BlockMAEError(f"{self.what} is in use by {_holder_text(_read_holder(fd))}; wait for "
                                f"it to finish, or use another run.dir") from None
        except OSError as err:
            if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                return False
            raise

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent); an empty run dir we created goes too."""
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # before closing: a waiting run then re-opens a fresh file
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None
        self._remove_created_dir()

    def _remove_created_dir(self) -> None:
        if self.created_dir:
            try:
                self.run_dir.rmdir()  # only if nothing was written into it
            except OSError:
                pass

    def __enter__(self) -> "RunLock":
        return self if self.fd is not None else self.acquire()  # `with` on a held lock: released at the end

    def __exit__(self, *exc: Any) -> None:
        self.release()


def output_lock(path: str | Path) -> Any:
    """The run-dir lock (lock.RunLock, as pretraining takes) guarding the output `path` while it is
    written: for a folder that is replaced whole, a lock file beside it (`.NAME.lock`)."""
    path = Path(path)
    return RunLock(path.parent, lock_name=f".{path.name}.lock", what=str(path))
