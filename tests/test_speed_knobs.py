"""The speed knobs do what they say: loader settings reach the DataLoader, cuDNN benchmark (deterministic wins),
channels_last inputs, print_every vs log_every, MLflow model artefacts only on request, leak knobs refused."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from crossattentiondet.config import ConfigError, MlflowConfig, load_config
from crossattentiondet.engine.runlog import RunLog, mlflow_artifacts
from crossattentiondet.engine.runtime import configure_backends, use_channels_last
from crossattentiondet.seed003 import REFUSED_KNOBS
from tests.test_train import TINY, frames


@pytest.fixture
def backends() -> Iterator[None]:
    """Restore the process-wide backend flags a test changes."""
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.enabled, torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.allow_tf32, torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    yield
    (torch.backends.cudnn.benchmark, torch.backends.cudnn.enabled, torch.backends.cuda.matmul.allow_tf32,
     torch.backends.cudnn.allow_tf32) = saved[:4]
    torch.use_deterministic_algorithms(saved[4], warn_only=saved[5])


def test_cudnn_benchmark_is_set_and_unset_and_deterministic_wins(backends: None) -> None:
    assert configure_backends(True, deterministic=False, cudnn_benchmark=True) == []
    assert torch.backends.cudnn.benchmark and torch.backends.cudnn.enabled  # the seed's code disabled cuDNN
    assert torch.backends.cuda.matmul.allow_tf32
    assert configure_backends(False, deterministic=False, cudnn_benchmark=False) == []
    assert not torch.backends.cudnn.benchmark and not torch.backends.cuda.matmul.allow_tf32
    (note,) = configure_backends(True, deterministic=True, cudnn_benchmark=True)
    assert not torch.backends.cudnn.benchmark and torch.are_deterministic_algorithms_enabled()
    assert "train.cudnn_benchmark=true is ignored" in note and "train.deterministic" in note


def test_the_deterministic_note_reaches_the_run_log(trees, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    backends: None) -> None:
    from crossattentiondet.engine import trainer

    class Stop(Exception):
        pass

    def stop(*_args: object, **_kwargs: object) -> None:
        raise Stop

    monkeypatch.setattr(trainer, "_run", stop)  # what is logged before training is the subject
    config = load_config(None, [*TINY, f"output.root={tmp_path / 'runs'}", "name=det", "train.deterministic=true",
                                "train.cudnn_benchmark=true"])
    echoed: list[str] = []
    with pytest.raises(Stop):
        trainer.train(config, echo=echoed.append)
    text = (tmp_path / "runs" / "det" / "training.log").read_text()
    assert "note: train.cudnn_benchmark=true is ignored: train.deterministic=true" in text
    assert any("cudnn_benchmark=true is ignored" in line for line in echoed)
    assert not torch.backends.cudnn.benchmark


def test_loader_settings_reach_the_dataloader(trees, tmp_path: Path) -> None:
    from crossattentiondet.tasks import get_task

    root = trees.npy("data", frames=frames(6), size=(32, 32), classes=["person", "car"])
    config = load_config(None, [*TINY, f"data.root={root}", f"output.root={tmp_path / 'runs'}",
                                "data.loader.num_workers=2", "data.loader.prefetch_factor=6",
                                "data.loader.persistent_workers=true", "data.loader.pin_memory=true"])
    data = get_task("detect").prepare_data(config, None, log=lambda *_: None)
    loader = data.loader("train", True, 2)  # not iterated: no worker is started
    assert (loader.num_workers, loader.prefetch_factor, loader.persistent_workers, loader.pin_memory) == \
        (2, 6, True, True)
    off = data.resolved_config.model_copy(deep=True)
    off.data.loader.num_workers = 0  # in the main process: no prefetching, no persistent workers
    off.data.loader.pin_memory = False
    data.resolved_config = off
    loader = data.loader("val", False, 2)
    assert (loader.num_workers, loader.prefetch_factor, loader.persistent_workers, loader.pin_memory) == \
        (0, None, False, False)


def _tiny_detector(channels_last: str) -> tuple[torch.nn.Module, list[bool]]:
    """A tiny detector with ``channels_last`` = none | weights (the seed's bug) | full, and a record of the
    memory format of what its encoder received."""
    from crossattentiondet.tasks import get_task

    config = load_config(None, TINY)
    model = get_task("detect").build_model(config, 2, load_pretrained=False).eval()
    if channels_last == "weights":
        model = model.to(memory_format=torch.channels_last)
    elif channels_last == "full":
        model = use_channels_last(model)
    seen: list[bool] = []
    model.backbone.encoder.register_forward_pre_hook(lambda _m, args: seen.append(_channels_innermost(args)))
    return model, seen


def _channels_innermost(args: tuple) -> bool:
    """Every 4-D tensor among ``args`` has its channels innermost (channels_last strides; a stream's channels
    sliced from a channels_last batch are not contiguous, but convolutions still run channels_last on them)."""
    maps = [a for a in args if isinstance(a, torch.Tensor) and a.ndim == 4]
    return bool(maps) and all(m.stride(1) < m.stride(3) for m in maps)


def test_channels_last_converts_the_inputs_not_only_the_weights() -> None:
    images = [torch.randint(0, 256, (5, 64, 64), dtype=torch.uint8) for _ in range(2)]
    outputs = {}
    for mode in ("none", "weights", "full"):
        torch.manual_seed(0)
        model, seen = _tiny_detector(mode)
        with torch.no_grad():
            outputs[mode] = model(images)
        assert seen == [mode == "full"], mode  # weights only (the seed's bug): the batch still arrives NCHW
    for a, b in zip(outputs["none"], outputs["full"]):  # the same detections either way
        assert torch.allclose(a["boxes"], b["boxes"], atol=1e-3) and torch.equal(a["labels"], b["labels"])
    model, _ = _tiny_detector("full")
    hooks = len(model.backbone._forward_pre_hooks)
    use_channels_last(model)  # a second call adds no second hook
    assert len(model.backbone._forward_pre_hooks) == hooks


@pytest.mark.slow
def test_print_every_paces_the_text_lines_and_log_every_the_batch_metrics(
        trees, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One epoch of 3 updates: TensorBoard and metrics_per_batch.csv every update (log_every=1), the text
    iteration line every 2 (print_every=2), and the training inputs channels_last (train.channels_last)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from crossattentiondet.engine import trainer

    formats: list[bool] = []

    def recording(model: torch.nn.Module) -> torch.nn.Module:
        model = use_channels_last(model)
        model.backbone.encoder.register_forward_pre_hook(lambda _m, args: formats.append(_channels_innermost(args)))
        return model

    monkeypatch.setattr(trainer, "use_channels_last", recording)
    monkeypatch.setattr(trainer, "stdout_is_terminal", lambda: False)  # a batch job, even under `pytest -s`
    root = trees.npy("data", frames=frames(10), size=(48, 48), classes=["person", "car"])
    config = load_config(None, [*TINY, f"data.root={root}", f"output.root={tmp_path / 'runs'}", "name=pace",
                                "train.epochs=1", "train.log_every=1", "train.print_every=2",
                                "train.iteration_csv=true", "output.tensorboard=true", "train.channels_last=true",
                                "eval.bootstrap=0", "eval.plots=false"])
    echoed: list[str] = []
    result = trainer.train(config, echo=echoed.append)
    run = result.run_dir
    assert result.state.global_step == 3
    batch_rows = list(csv.DictReader((run / "metrics_per_batch.csv").open()))
    assert [int(r["global_step"]) for r in batch_rows] == [1, 2, 3]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]
    iteration = re.compile(r"epoch 1/1 iter (\d+)/3: loss")
    logged = [int(m.group(1)) for line in (run / "training.log").read_text().splitlines()
              if (m := iteration.search(line))]
    assert logged == [2]
    assert [int(m.group(1)) for line in echoed if (m := iteration.search(line))] == [2]  # no terminal: echoed too
    assert formats and all(formats[:3])  # the three training batches reached the encoder channels_last


def test_print_every_defaults_to_log_every() -> None:
    config = load_config(None, ["train.log_every=7"])
    assert config.train.print_every is None  # the trainer's cadence: print_every or log_every
    assert (config.train.print_every or config.train.log_every) == 7


# ---------------------------------------------------------------------------------------------- MLflow
def test_model_files_go_to_mlflow_only_with_log_models(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "r"
    listed = [run / "config.yaml", run / "plots", run / "checkpoints" / "last.pt", run / "checkpoints"]
    assert mlflow_artifacts(run, listed, log_models=False) == [(run / "config.yaml", None), (run / "plots", None)]
    assert mlflow_artifacts(run, listed, log_models=True)[-1] == (run / "checkpoints" / "best.pt", "checkpoints")


def test_mlflow_uploads_best_pt_only_when_asked(tmp_path: Path) -> None:
    mlflow = pytest.importorskip("mlflow")
    runs = {}
    for log_models in (False, True):  # two runs in one store (creating a store takes seconds)
        run_dir = tmp_path / "runs" / f"models_{log_models}"
        log = RunLog(run_dir, True, tensorboard=False, mlflow=MlflowConfig(enabled=True, experiment="e",
                                                                           log_models=log_models), echo=lambda m: None)
        (run_dir / "checkpoints").mkdir()
        (run_dir / "checkpoints" / "best.pt").write_bytes(b"weights")
        (run_dir / "config.yaml").write_text("seed: 0\n")
        log.final({"mAP": 0.5}, [run_dir / "config.yaml"])
        log.close()
        runs[log_models] = (run_dir / "mlflow_run.json").read_text()
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    for log_models, record in runs.items():
        run_id = json.loads(record)["run_id"]
        top = sorted(a.path for a in client.list_artifacts(run_id))
        assert top == (["checkpoints", "config.yaml"] if log_models else ["config.yaml"]), log_models
        if log_models:
            assert [a.path for a in client.list_artifacts(run_id, "checkpoints")] == ["checkpoints/best.pt"]


# ------------------------------------------------------------------------------------------ refused knobs
@pytest.mark.parametrize("knob", sorted(REFUSED_KNOBS))
def test_leak_knobs_are_refused_with_their_reason(knob: str, tmp_path: Path) -> None:
    for override in (f"train.{knob}=30", f"{knob}=true", f"data.loader.{knob}=1"):
        with pytest.raises(ConfigError) as info:
            load_config(None, [override])
        message = str(info.value)
        key = override.split("=")[0]
        assert f"'{key}' is refused: {REFUSED_KNOBS[knob]}" in message and "unknown key" not in message
        assert "\n" not in message
    path = tmp_path / "ours.yaml"
    path.write_text(f"train:\n  epochs: 2\n  {knob}: 30\n")
    with pytest.raises(ConfigError, match=rf"^invalid config \({re.escape(str(path))}\): 'train.{knob}' is refused"):
        load_config(path)
