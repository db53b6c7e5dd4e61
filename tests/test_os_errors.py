"""OS errors are one-line messages (no traceback, exit status 2), and output locations are checked before long
work: a file in the way, a read-only or full disk, no permission (simulated: these tests run as root)."""

from __future__ import annotations

import errno
import io
import os
import pathlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import crossattentiondet.io as cio
from crossattentiondet.cli import build_parser, main, parse_command_line
from crossattentiondet.config import ConfigError, config_to_dict, load_config
from crossattentiondet.engine.checkpoint import save_checkpoint
from crossattentiondet.io import ensure_writable_dir, ensure_writable_file
from tests.conftest import DataTrees
from tests.test_train import TINY, frames


@dataclass
class Ctx:
    tmp: Path
    data: Path  # a tiny data root
    ckpt: Path  # <run>/checkpoints/best.pt of a random-weight tiny detector (no training)
    run: Path
    file: Path  # a regular file


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Ctx:
    from crossattentiondet.models import build_detector

    tmp = tmp_path_factory.mktemp("os_errors")
    root = DataTrees(tmp).npy("data", frames=frames(4), size=(64, 64), classes=["person", "car"])
    config = load_config(None, [*TINY, f"data.root={root}"])
    model = build_detector(config, 2, load_pretrained=False)
    run = tmp / "run"
    ckpt = run / "checkpoints" / "best.pt"
    save_checkpoint(ckpt, {"model": model.state_dict(), "config": config_to_dict(config),
                           "class_names": ["person", "car"], "num_classes": 2, "epoch": 1, "metrics": {}})
    regular = tmp / "notes.txt"
    regular.write_text("a regular file\n")
    return Ctx(tmp, root, ckpt, run, regular)


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command here must fail on its output location BEFORE its work starts."""
    def forbidden(name: str) -> Callable[..., Any]:
        def fail(*args: Any, **kwargs: Any) -> Any:
            pytest.fail(f"{name} ran although the output location is unusable")
        return fail

    monkeypatch.setattr("crossattentiondet.engine.inference.load_model", forbidden("load_model"))
    monkeypatch.setattr("crossattentiondet.engine.report.evaluate_split", forbidden("evaluate_split"))
    monkeypatch.setattr("crossattentiondet.data.prepare_data", forbidden("prepare_data"))
    monkeypatch.setattr("crossattentiondet.data.compute_stats", forbidden("compute_stats"))
    monkeypatch.setattr("crossattentiondet.data.synth.generate_dataset", forbidden("generate_dataset"))
    monkeypatch.setattr("crossattentiondet.studies.runner.run_study", forbidden("run_study"))


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


# faults of the writability probe: (what fails, errno)
def install_fault(monkeypatch: pytest.MonkeyPatch, fault: tuple[str, int] | None, target: Path) -> None:
    if fault is None:
        return
    where, code = fault
    exc = PermissionError if code in (errno.EACCES, errno.EPERM) else OSError
    if where == "create":  # the temporary file cannot be created
        def mkstemp(*args: Any, dir: Any = None, **kwargs: Any) -> Any:  # noqa: A002 - tempfile's name
            raise exc(code, os.strerror(code), str(Path(dir) / ".cadet-write-check.x.tmp"))
        monkeypatch.setattr(cio, "tempfile", SimpleNamespace(mkstemp=mkstemp))
    elif where == "write":  # created, but no byte can be written (a full disk that still has inodes)
        class FullDisk:
            def __getattr__(self, name: str) -> Any:
                return getattr(os, name)

            @staticmethod
            def write(fd: int, data: bytes) -> int:
                raise exc(code, os.strerror(code))
        monkeypatch.setattr(cio, "os", FullDisk())
    elif where == "mkdir":  # the folder cannot be created
        original = pathlib.Path.mkdir

        def mkdir(self: Path, *args: Any, **kwargs: Any) -> None:
            if self == target or target in self.parents:
                raise exc(code, os.strerror(code), str(self))
            original(self, *args, **kwargs)
        monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)


EROFS, ENOSPC, EACCES = errno.EROFS, errno.ENOSPC, errno.EACCES
READ_ONLY = "cannot write there: Read-only file system (the file system is mounted read-only"
FULL = "cannot write there: No space left on device (the disk is full"
DENIED = "cannot write there: Permission denied (no permission"

# (argv, fault, expected text of the one error line); {file}, {tmp}, {data}, {ckpt}, {run} from Ctx
CASES: dict[str, tuple[list[str], tuple[str, int] | None, str]] = {
    "eval --out is a file": (["eval", "{ckpt}", "--data", "{data}", "--out", "{file}"], None,
                             "--out {file} is a file, not a folder"),
    "predict --out is a file": (["predict", "{ckpt}", "{data}/images", "--out", "{file}"], None,
                                "--out {file} is a file, not a folder"),
    "eval --out under a file": (["eval", "{ckpt}", "--out", "{file}/sub"], None,
                                "--out {file}/sub: {file} is a file, not a folder"),
    "predict --out under a file": (["predict", "{ckpt}", "{data}/images", "--out", "{file}/a/b"], None,
                                   "--out {file}/a/b: {file} is a file, not a folder"),
    "synth OUT is a file": (["data", "synth", "{file}"], None, "OUT {file} is a file, not a folder"),
    "synth OUT under a file": (["data", "synth", "{file}/synthetic"], None,
                               "OUT {file}/synthetic: {file} is a file, not a folder"),
    "stats --out is a file": (["data", "stats", "{data}", "--out", "{file}"], None,
                              "--out {file} is a file, not a folder"),
    "stats --out under a file": (["data", "stats", "{data}", "--out", "{file}/stats.json"], None,
                                 "--out {file}/stats.json: {file} is a file, not a folder"),
    "stats --histograms under a file": (["data", "stats", "{data}", "--histograms", "{file}/h"], None,
                                        "--histograms {file}/h: {file} is a file, not a folder"),
    "study --output under a file": (["study", "run", "cssa", "--output", "{file}/study"], None,
                                    "--output {file}/study: {file} is a file, not a folder"),
    "eval read-only --out": (["eval", "{ckpt}", "--data", "{data}", "--out", "{tmp}/ev"], ("create", EROFS),
                             "--out {tmp}/ev: " + READ_ONLY),
    "eval read-only run directory": (["eval", "{ckpt}"], ("create", EROFS),
                                     "output folder {run}/eval_test: " + READ_ONLY),
    "eval full disk": (["eval", "{ckpt}", "--out", "{tmp}/ev2"], ("write", ENOSPC), "--out {tmp}/ev2: " + FULL),
    "predict no permission": (["predict", "{ckpt}", "{data}/images", "--out", "{tmp}/pr"], ("create", EACCES),
                              "--out {tmp}/pr: " + DENIED),
    "predict full disk": (["predict", "{ckpt}", "{data}/images", "--out", "{tmp}/pr2"], ("write", ENOSPC),
                          "--out {tmp}/pr2: " + FULL),
    "predict read-only folder creation": (["predict", "{ckpt}", "{data}/images", "--out", "{tmp}/ro/pred"],
                                          ("mkdir", EROFS), "--out {tmp}/ro/pred: " + READ_ONLY),
    "synth read-only": (["data", "synth", "{tmp}/syn"], ("mkdir", EROFS), "OUT {tmp}/syn: " + READ_ONLY),
    "synth full disk": (["data", "synth", "{tmp}/syn2"], ("write", ENOSPC), "OUT {tmp}/syn2: " + FULL),
    "stats read-only --out": (["data", "stats", "{data}", "--out", "{tmp}/st"], ("create", EROFS),
                              "--out {tmp}/st: " + READ_ONLY),
    "study read-only": (["study", "run", "cssa", "--output", "{tmp}/study"], ("create", EROFS),
                        "--output {tmp}/study: " + READ_ONLY),
    "study no permission": (["study", "run", "cssa", "--output", "{tmp}/study2"], ("create", EACCES),
                            "--output {tmp}/study2: " + DENIED),
}


@pytest.mark.parametrize("case", list(CASES))
def test_unusable_output_location_is_one_line_before_any_work(case: str, ctx: Ctx, no_work: None,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    argv, fault, expected = CASES[case]
    fill = {"file": ctx.file, "tmp": ctx.tmp, "data": ctx.data, "ckpt": ctx.ckpt, "run": ctx.run}
    argv = [a.format(**fill) for a in argv]
    expected = expected.format(**fill)
    target = Path(argv[argv.index("--out") + 1]) if "--out" in argv else Path(argv[-1])
    install_fault(monkeypatch, fault, target)
    assert main(argv) == 2
    assert one_error_line(capsys).startswith(f"error: {expected}")
    assert not list(ctx.tmp.rglob(".cadet-write-check.*"))  # the probe leaves nothing behind


def test_error_line_is_exactly_the_check(ctx: Ctx, no_work: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(ctx.ckpt), "--out", str(ctx.file)]) == 2
    assert one_error_line(capsys) == f"error: --out {ctx.file} is a file, not a folder"


def test_eval_with_a_missing_data_set_makes_no_output_folder(ctx: Ctx, no_work: None,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(ctx.ckpt), "--data", str(ctx.tmp / "gone")]) == 2
    assert one_error_line(capsys) == f"error: data root not found: {ctx.tmp / 'gone'}"
    assert not (ctx.run / "eval_all_gone").exists()


# OS errors that escape a command: (exception, the error line)
ESCAPING: dict[str, tuple[OSError, str]] = {
    "permission": (PermissionError(EACCES, "Permission denied", "/data/a.npy"),
                   "error: /data/a.npy: Permission denied (no permission; write somewhere else or fix the folder's "
                   "permissions)"),
    "read-only": (OSError(EROFS, "Read-only file system", "/mnt/ro/out.json"),
                  "error: /mnt/ro/out.json: Read-only file system (the file system is mounted read-only; write "
                  "somewhere else)"),
    "full disk, no path": (OSError(ENOSPC, "No space left on device"),
                           "error: No space left on device (the disk is full; free some space or write somewhere "
                           "else)"),
    "not a directory": (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/f.txt/x"),
                        "error: /f.txt/x: Not a directory"),
    "is a directory": (IsADirectoryError(errno.EISDIR, "Is a directory", "/runs/x"), "error: /runs/x: Is a directory"),
    "two paths": (OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b"),
                  "error: /a -> /b: Invalid cross-device link"),
    "no errno": (OSError("device went away"), "error: device went away"),
    "file not found keeps its wording": (FileNotFoundError(errno.ENOENT, "No such file or directory", "/nope"),
                                         "error: file not found: /nope"),
}


@pytest.mark.parametrize("case", list(ESCAPING))
def test_os_errors_escaping_a_command_are_one_line(case: str, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    error, line = ESCAPING[case]

    def command(args: Any) -> int:
        raise error

    monkeypatch.setattr("crossattentiondet.cli.data_cmd.run_synth", command)
    assert main(["data", "synth", "anywhere"]) == 2
    assert one_error_line(capsys) == line


def test_a_real_not_a_directory_error_names_the_path(ctx: Ctx, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    def command(args: Any) -> int:
        (ctx.file / "inside.json").write_text("{}")  # a path under a regular file: the OS says ENOTDIR
        return 0

    monkeypatch.setattr("crossattentiondet.cli.data_cmd.run_synth", command)
    assert main(["data", "synth", "anywhere"]) == 2
    assert one_error_line(capsys) == f"error: {ctx.file / 'inside.json'}: Not a directory"


def test_broken_pipe_is_still_silent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # BrokenPipeError is an OSError: it keeps its own handling (exit 141, nothing said)
    def command(args: Any) -> int:
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    monkeypatch.setattr("crossattentiondet.cli.data_cmd.run_synth", command)
    stderr = io.StringIO()
    with (tmp_path / "stdout").open("w") as stdout:  # a real descriptor: main points it at /dev/null
        monkeypatch.setattr(sys, "stdout", stdout)
        monkeypatch.setattr(sys, "stderr", stderr)
        assert main(["data", "synth", "anywhere"]) == 141
    assert stderr.getvalue() == ""


# ------------------------------------------------------------------------------------ the probe itself
def test_ensure_writable_dir_creates_the_folder_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    assert ensure_writable_dir(target) == target and target.is_dir() and list(target.iterdir()) == []
    assert ensure_writable_dir(target) == target  # an existing folder is fine
    assert ensure_writable_file(tmp_path / "c" / "stats.json") == tmp_path / "c" / "stats.json"
    assert (tmp_path / "c").is_dir() and list((tmp_path / "c").iterdir()) == []


def test_ensure_writable_dir_names_option_path_and_cause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fault(monkeypatch, ("write", ENOSPC), tmp_path)
    with pytest.raises(ConfigError) as info:
        ensure_writable_dir(tmp_path / "x", what="--histograms")
    assert str(info.value) == (f"--histograms {tmp_path / 'x'}: cannot write there: No space left on device (the disk "
                               "is full; free some space or write somewhere else)")
    assert list((tmp_path / "x").iterdir()) == []  # the half-written probe was removed


# --------------------------------------------------------------------- key=value after options (argparse)
@pytest.mark.parametrize(("argv", "overrides"), [
    (["train", "--epochs", "1", "train.lr=0.1", "--batch-size", "2", "name=x"], ["train.lr=0.1", "name=x"]),
    (["train", "a=1", "--epochs", "1", "b=2", "--lr", "0.5", "c=3"], ["a=1", "b=2", "c=3"]),
    (["eval", "runs/x", "--json", "train.device=cpu", "--split", "val", "eval.batch_size=8"],
     ["train.device=cpu", "eval.batch_size=8"]),
    (["study", "run", "cssa", "train.epochs=5", "--quick", "data.root=/d", "--seeds", "2", "x.y=[1,2]"],
     ["train.epochs=5", "data.root=/d", "x.y=[1,2]"]),
    (["data", "check", "/d", "--json", "data.layout=auto", "--layout", "auto", "a=b=c"], ["data.layout=auto", "a=b=c"]),
    (["demo", "--seeds", "2", "train.epochs=4", "--out", "o", "name=z"], ["train.epochs=4", "name=z"]),
])
def test_overrides_may_follow_options(argv: list[str], overrides: list[str]) -> None:
    assert parse_command_line(build_parser(), argv).overrides == overrides


@pytest.mark.parametrize(("argv", "unrecognised"), [
    (["train", "a=1", "--epochs", "1", "--bogus", "b=2"], "unrecognized arguments: --bogus"),
    (["eval", "runs/x", "--json", "stray"], "unrecognized arguments: stray"),
    (["predict", "ck", "in", "--out", "o", "a=1"], "unrecognized arguments: a=1"),  # predict takes no overrides
])
def test_other_leftovers_are_still_errors(argv: list[str], unrecognised: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_command_line(build_parser(), argv)
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(unrecognised)


def test_train_applies_overrides_given_after_options(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    def fake_train(config: Any, resume: Any = False) -> Any:
        raise ConfigError(f"lr={config.train.lr} batch={config.train.batch_size} epochs={config.train.epochs} "
                          f"name={config.name}")

    monkeypatch.setattr("crossattentiondet.engine.trainer.train", fake_train)
    assert main(["train", "--epochs", "1", "train.lr=0.1", "--batch-size", "2", "name=x"]) == 2
    assert one_error_line(capsys) == "error: lr=0.1 batch=2 epochs=1 name=x"
