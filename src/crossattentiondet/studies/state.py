"""The files of one study run, which are the source of truth about it, and the run lock.

A run directory (``<study_dir>/<config id>/seed<k>/``) holds the trainer's files plus:
``study_config.yaml`` (the config the runner trains, written before it starts), ``stdout.log`` (output of
every attempt), ``failed.json`` (the error of the last failed attempt), ``queued.json`` (submitted to a
cluster, not started) and ``.lock`` (a process is training it).

Status, in order of precedence: finished (final_results.json) > running (a live lock) > failed > partial
(checkpoints/last.pt) > queued > pending (nothing yet).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossattentiondet.io import atomic_write_json

FINAL_RESULTS = "final_results.json"
LAST_CHECKPOINT = Path("checkpoints") / "last.pt"
STUDY_CONFIG = "study_config.yaml"
STDOUT_LOG = "stdout.log"
FAILED = "failed.json"
QUEUED = "queued.json"
LOCK = ".lock"

STATUSES = ("finished", "running", "failed", "partial", "queued", "pending")
# a lock held on another host counts as live while its holder keeps touching it (a dead node stops doing so)
HEARTBEAT_S = 30.0
STALE_REMOTE_LOCK_S = 600.0
# a lock file that cannot be parsed is being written; after this long it is garbage
UNREADABLE_LOCK_GRACE_S = 60.0


@dataclass
class LockInfo:
    """Who holds a run: the study process (pid), its training subprocess (child_pid), host, owner token."""

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
        return f"{who} on {self.host}" + (f", {self.owner}" if self.owner else "")


@dataclass
class RunState:
    """What the files of one run directory say."""

    status: str
    final: dict[str, Any] | None = None
    failed: dict[str, Any] | None = None
    lock: LockInfo | None = None
    epochs_done: int = 0


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
    taken over under a short-lived second lock, so two takers cannot both win.
    """

    def __init__(self, run_dir: Path, owner: str | None = None) -> None:
        self.path = Path(run_dir) / LOCK
        self.owner = owner
        self.info = LockInfo(pid=os.getpid(), host=socket.gethostname(), token=uuid.uuid4().hex,
                             pid_start=_process_start(os.getpid()), owner=owner, started=time.time())
        self.held = False
        self.holder: LockInfo | None = None  # who holds it when acquire() fails

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
            if info is not None and self.owner is not None and info.owner == self.owner:
                # the same cluster job, requeued after preemption: its old lock is its own
                self.write()
                self.held = True
                return True
            if lock_is_live(info, mtime):
                self.holder = info
                return False
            self._remove_stale(info)
        return False

    def _remove_stale(self, stale: LockInfo | None) -> None:
        guard = self.path.with_name(LOCK + ".takeover")
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            with contextlib.suppress(OSError):
                if time.time() - guard.stat().st_mtime > UNREADABLE_LOCK_GRACE_S:
                    guard.unlink()  # a taker died inside this tiny window; let the next attempt proceed
            return
        os.close(fd)
        try:
            info, mtime = read_lock(self.path)
            same = (info is None and stale is None) or (info is not None and stale is not None
                                                         and info.token == stale.token)
            if mtime is not None and same and not lock_is_live(info, mtime):
                self.path.unlink(missing_ok=True)
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

    def release(self) -> None:
        """Remove the lock if it is still this process's own."""
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


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def epochs_done(run_dir: Path) -> int:
    """Completed epochs according to metrics.csv (rows after the header)."""
    try:
        with (run_dir / "metrics.csv").open(encoding="utf-8") as f:
            return max(0, sum(1 for line in f if line.strip()) - 1)
    except OSError:
        return 0


def read_run_state(run_dir: Path | None) -> RunState:
    """The status of one run from its files (see the module docstring for the precedence)."""
    if run_dir is None or not run_dir.is_dir():
        return RunState("pending")
    final = _read_json(run_dir / FINAL_RESULTS)
    failed = _read_json(run_dir / FAILED)
    if final is not None:
        return RunState("finished", final=final, epochs_done=int(final.get("training", {}).get("epochs", 0) or 0))
    info, mtime = read_lock(run_dir / LOCK)
    done = epochs_done(run_dir)
    if lock_is_live(info, mtime):
        return RunState("running", failed=failed, lock=info, epochs_done=done)
    if failed is not None:
        return RunState("failed", failed=failed, epochs_done=done)
    if (run_dir / LAST_CHECKPOINT).is_file():
        return RunState("partial", epochs_done=done)
    if (run_dir / QUEUED).is_file():
        return RunState("queued", epochs_done=done)
    return RunState("pending", epochs_done=done)
