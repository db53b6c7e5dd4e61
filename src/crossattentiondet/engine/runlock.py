"""The lock of one run directory (``<run_dir>/.lock``): one process trains a run at a time.

The file is JSON (pid, host, start time, an owner token) created with O_EXCL, so two takers cannot both
win. A lock is live while its holder is: on this host, while its pid (or the training subprocess it
launched) is alive; on another host, where pids cannot be checked, while the holder keeps touching the file
(every ``HEARTBEAT_S``; a node that died stops doing so and its lock expires after ``STALE_REMOTE_LOCK_S``).
A stale lock is taken over under a short-lived second lock.

The trainer (:func:`lock_run_dir`) and the study runner use the same lock. The runner takes it before it
starts the training subprocess and passes its token in ``CADET_RUN_LOCK_TOKEN``: the trainer then joins that
lock (it neither fails on it nor removes it) instead of refusing its own parent.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossattentiondet.errors import RunLockedError
from crossattentiondet.io import atomic_write_json

LOCK = ".lock"
# the token of a lock the parent process holds for this process (the study runner -> its training subprocess)
INHERITED_TOKEN_ENV = "CADET_RUN_LOCK_TOKEN"
# a lock held on another host counts as live while its holder keeps touching it (a dead node stops doing so)
HEARTBEAT_S = 30.0
STALE_REMOTE_LOCK_S = 600.0
# a lock file that cannot be parsed is being written; after this long it is garbage
UNREADABLE_LOCK_GRACE_S = 60.0


@dataclass
class LockInfo:
    """Who holds a run: the process (pid), its training subprocess (child_pid), host, owner token."""

    pid: int
    host: str
    token: str
    child_pid: int | None = None
    pid_start: str | None = None
    owner: str | None = None  # e.g. "submitit:1234_5": a requeued cluster job may take its own lock back
    started: float = 0.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LockInfo:
        return cls(pid=int(data["pid"]), host=str(data["host"]), token=str(data["token"]),
                   child_pid=data.get("child_pid"), pid_start=data.get("pid_start"), owner=data.get("owner"),
                   started=float(data.get("started", 0.0)))

    def describe(self) -> str:
        who = f"pid {self.pid}" + (f" (training pid {self.child_pid})" if self.child_pid else "")
        since = f", started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.started))}" if self.started else ""
        return f"{who} on host {self.host}{since}" + (f", {self.owner}" if self.owner else "")


def _process_start(pid: int) -> str | None:
    """Start time of a process (Linux /proc), so a recycled pid is not mistaken for the lock holder."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()[19]


def _pid_alive(pid: int | None, start: str | None = None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if start is not None:
        now = _process_start(pid)
        return now is None or now == start
    return True


def read_lock(path: Path) -> tuple[LockInfo | None, float | None]:
    """(lock info or None when unreadable, mtime or None when there is no lock)."""
    try:
        mtime = path.stat().st_mtime
        data = json.loads(path.read_text(encoding="utf-8"))
        return LockInfo.from_dict(data), mtime
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError, KeyError, TypeError):
        try:
            return None, path.stat().st_mtime
        except OSError:
            return None, None


def lock_is_live(info: LockInfo | None, mtime: float | None) -> bool:
    """Same host: a holder pid is alive. Other host: the lock was touched recently. Unreadable: young."""
    if mtime is None:
        return False
    age = time.time() - mtime
    if info is None:
        return age < UNREADABLE_LOCK_GRACE_S
    if info.host == socket.gethostname():
        return _pid_alive(info.pid, info.pid_start) or _pid_alive(info.child_pid)
    return age < STALE_REMOTE_LOCK_S


class RunLock:
    """An exclusive claim on one run directory, safe across processes and hosts sharing a file system.

    Created with O_EXCL; a lock whose holders are dead (same host) or silent (other host) is stale and is
    taken over under a short-lived second lock, so two takers cannot both win (``taken_over`` then says whose
    it was). ``inherit_token`` is the token of a lock the parent process holds for this one: such a lock is
    joined (``joined``), not refused, and left for the parent to release.
    """

    def __init__(self, run_dir: Path, owner: str | None = None, inherit_token: str | None = None) -> None:
        self.path = Path(run_dir) / LOCK
        self.owner = owner
        self.inherit_token = inherit_token
        self.info = LockInfo(pid=os.getpid(), host=socket.gethostname(), token=uuid.uuid4().hex,
                             pid_start=_process_start(os.getpid()), owner=owner, started=time.time())
        self.held = False
        self.joined = False
        self.holder: LockInfo | None = None  # who holds it when acquire() fails
        self.taken_over: LockInfo | None = None  # whose stale lock acquire() removed (None: unreadable one)
        self.took_over = False
        self._beat: threading.Event | None = None

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(self.info.__dict__, f)
        self.held = True
        return True

    def acquire(self) -> bool:
        """Take the lock; False if another live process holds it (``holder`` then says who)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._create():
                return True
            info, mtime = read_lock(self.path)
            if mtime is None:
                continue  # released in between: try again
            if info is not None and self.inherit_token and info.token == self.inherit_token:
                self.joined = True  # the parent's lock, taken for this process
                return True
            if info is not None and self.owner is not None and info.owner == self.owner:
                # the same cluster job, requeued after preemption: its old lock is its own
                self.write()
                self.held = True
                return True
            if lock_is_live(info, mtime):
                self.holder = info
                return False
            if self._remove_stale(info):
                self.taken_over, self.took_over = info, True
        return False

    def _remove_stale(self, stale: LockInfo | None) -> bool:
        guard = self.path.with_name(LOCK + ".takeover")
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            with contextlib.suppress(OSError):
                if time.time() - guard.stat().st_mtime > UNREADABLE_LOCK_GRACE_S:
                    guard.unlink()  # a taker died inside this tiny window; let the next attempt proceed
            return False
        os.close(fd)
        try:
            info, mtime = read_lock(self.path)
            same = (info is None and stale is None) or (info is not None and stale is not None
                                                         and info.token == stale.token)
            if mtime is not None and same and not lock_is_live(info, mtime):
                self.path.unlink(missing_ok=True)
                return True
            return False
        finally:
            guard.unlink(missing_ok=True)

    def write(self) -> None:
        """(Re)write the lock file atomically with the current info."""
        atomic_write_json(self.path, self.info.__dict__)

    def set_child(self, child_pid: int) -> None:
        """Record the training subprocess, so the lock stays live while it runs even if this process dies."""
        self.info.child_pid = child_pid
        self.write()

    def heartbeat(self) -> None:
        with contextlib.suppress(OSError):
            os.utime(self.path)

    def start_heartbeat(self, interval: float = HEARTBEAT_S) -> None:
        """Touch the lock every ``interval`` seconds from a daemon thread until :meth:`release`."""
        if self._beat is not None:
            return
        self._beat = stop = threading.Event()

        def beat() -> None:
            while not stop.wait(interval):
                self.heartbeat()

        threading.Thread(target=beat, name="run-lock-heartbeat", daemon=True).start()

    def release(self) -> None:
        """Remove the lock if it is still this process's own (a joined lock is the parent's to remove)."""
        if self._beat is not None:
            self._beat.set()
            self._beat = None
        self.joined = False
        if not self.held:
            return
        info, _ = read_lock(self.path)
        if info is not None and info.token == self.info.token:
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def locked_message(run_dir: Path, holder: LockInfo | None) -> str:
    """One line saying who holds ``run_dir`` and what the user can do about it."""
    path = Path(run_dir) / LOCK
    if holder is None:
        return (f"run directory {run_dir} is locked by another process (its lock {path} is being written); "
                "try again in a minute")
    if holder.host != socket.gethostname():
        return (f"run directory {run_dir} is in use by {holder.describe()}: a process on another host cannot be "
                f"checked from here, so its lock is never taken over by pid (only once its holder has not touched "
                f"it for {STALE_REMOTE_LOCK_S / 60:.0f} min); if that host or process is gone, remove {path}")
    return (f"run directory {run_dir} is in use by {holder.describe()}; wait for it to finish or stop it "
            f"(or train into another directory with name=... / output.root=...)")


def lock_run_dir(run_dir: Path, *, enabled: bool = True) -> RunLock:
    """Take the lock of ``run_dir`` for training, or raise :class:`RunLockedError` naming the holder.

    ``enabled=False`` (a DDP rank other than 0) returns a lock that holds nothing. A lock held by the parent
    process for this one (``CADET_RUN_LOCK_TOKEN``) is joined. The lock is touched every ``HEARTBEAT_S``
    while held; call ``release()`` when the run ends, however it ends.
    """
    lock = RunLock(run_dir, inherit_token=os.environ.get(INHERITED_TOKEN_ENV) or None)
    if not enabled:
        return lock
    if not lock.acquire():
        raise RunLockedError(locked_message(run_dir, lock.holder))
    lock.start_heartbeat()
    return lock


def takeover_message(lock: RunLock) -> str | None:
    """What :meth:`RunLock.acquire` took over, for the run log (None when the lock was free)."""
    if not lock.took_over:
        return None
    whose = lock.taken_over.describe() if lock.taken_over else "an unreadable lock"
    return f"took over the stale lock of {lock.path.parent} ({whose}: its holder is gone)"
