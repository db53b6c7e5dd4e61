"""The run-directory lock: one process trains a run directory at a time (trainer, CLI and study runner)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import crossattentiondet.data
from crossattentiondet.cli import main
from crossattentiondet.engine.runlock import INHERITED_TOKEN_ENV, LOCK, RunLock, lock_run_dir
from crossattentiondet.engine.trainer import train
from crossattentiondet.errors import RunLockedError
from tests.test_train import TINY, cfg, frames


@pytest.fixture
def data_root(trees) -> Path:
    return trees.npy("data", frames=frames(10), size=(64, 64), classes=["person", "car"])


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A live process that is not this one, to hold a lock."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process
    process.kill()
    process.wait()


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_lock(run_dir: Path, pid: int, host: str | None = None, token: str = "other") -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOCK).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "token": token,
                                            "started": time.time() - 60}))


def test_second_train_on_a_held_run_dir_stops_before_writing(data_root: Path, tmp_path: Path, sleeper,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "runs" / "held"
    write_lock(run_dir, sleeper.pid)
    with pytest.raises(RunLockedError, match=f"pid {sleeper.pid} on host {socket.gethostname()}, started "):
        train(cfg(data_root, tmp_path, "name=held", "train.epochs=1"))
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK]  # no training.log, nothing else
    # the CLI: one line on stderr, non-zero, no traceback; the holder's lock is left alone
    code = main(["train", *TINY, f"data.root={data_root}", f"output.root={tmp_path / 'runs'}", "name=held"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert str(sleeper.pid) in err and socket.gethostname() in err
    assert json.loads((run_dir / LOCK).read_text())["pid"] == sleeper.pid


def test_stale_lock_is_taken_over_and_released_after_the_run(data_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "stale"
    pid = dead_pid()
    write_lock(run_dir, pid)
    messages: list[str] = []
    result = train(cfg(data_root, tmp_path, "name=stale", "train.epochs=1", "train.max_iters_per_epoch=1"),
                   echo=messages.append)
    assert result.finished
    assert any("took over the stale lock" in m and f"pid {pid}" in m for m in messages)
    assert "took over the stale lock" in (run_dir / "training.log").read_text()
    assert not (run_dir / LOCK).exists()


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_lock_is_released_when_the_run_fails(data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             error: BaseException) -> None:
    run_dir = tmp_path / "runs" / "fails"
    seen: list[dict] = []

    def failing_prepare(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        seen.append(json.loads((run_dir / LOCK).read_text()))
        raise error

    monkeypatch.setattr(crossattentiondet.data, "prepare_data", failing_prepare)
    with pytest.raises(type(error)):
        train(cfg(data_root, tmp_path, "name=fails", "train.epochs=1"))
    assert seen and seen[0]["pid"] == os.getpid() and seen[0]["host"] == socket.gethostname()
    assert not (run_dir / LOCK).exists()


def test_lock_of_another_host_is_never_taken_over_by_pid(data_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "remote"
    write_lock(run_dir, dead_pid(), host="node-elsewhere")  # that pid means nothing here
    with pytest.raises(RunLockedError) as caught:
        train(cfg(data_root, tmp_path, "name=remote", "train.epochs=1"))
    message = str(caught.value)
    assert "node-elsewhere" in message and "another host" in message and f"remove {run_dir / LOCK}" in message
    assert (run_dir / LOCK).is_file() and not (run_dir / "training.log").exists()


def test_trainer_joins_the_lock_its_parent_holds_for_it(data_root: Path, tmp_path: Path, sleeper,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # the study runner holds the lock and passes its token to the training subprocess: no self-deadlock
    run_dir = tmp_path / "runs" / "child"
    write_lock(run_dir, sleeper.pid, token="parent-token")
    monkeypatch.setenv(INHERITED_TOKEN_ENV, "parent-token")
    reached: list[bool] = []

    def stop(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        reached.append(True)
        raise RuntimeError("stop here")

    monkeypatch.setattr(crossattentiondet.data, "prepare_data", stop)
    with pytest.raises(RuntimeError, match="stop here"):
        train(cfg(data_root, tmp_path, "name=child", "train.epochs=1"))
    assert reached
    assert json.loads((run_dir / LOCK).read_text())["token"] == "parent-token"  # the parent's to remove
    monkeypatch.setenv(INHERITED_TOKEN_ENV, "another-token")
    with pytest.raises(RunLockedError):
        lock_run_dir(run_dir)


def test_held_lock_is_touched_while_held(tmp_path: Path) -> None:
    lock = RunLock(tmp_path / "r")
    assert lock.acquire()
    old = time.time() - 3600
    os.utime(lock.path, (old, old))
    lock.start_heartbeat(interval=0.02)
    deadline = time.time() + 5
    while lock.path.stat().st_mtime < old + 1 and time.time() < deadline:
        time.sleep(0.02)
    assert lock.path.stat().st_mtime > old + 1
    lock.release()
    assert not lock.path.exists()
