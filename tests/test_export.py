"""cadet export: ONNX and TorchScript files of a tiny random detector agree with the PyTorch model."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from crossattentiondet.cli import main
from crossattentiondet.config import ConfigError, config_to_dict, load_config
from crossattentiondet.engine.checkpoint import save_checkpoint
from crossattentiondet.engine.export import DeployableDetector, export_model
from crossattentiondet.engine.inference import load_model
from tests.test_train import TINY

# torch 2.14 deprecates torch.jit.load/trace; the TorchScript format is still what users ask for
pytestmark = pytest.mark.filterwarnings("ignore:.*is deprecated:FutureWarning")

SCALES = (255.0, 255.0, 255.0, 65535.0, 255.0)  # rgb (8-bit), thermal (16-bit), event (8-bit)
EXPORT_SIZE = (64, 48)  # (width, height)
OTHER_SIZE = (88, 72)  # not the export size, and not a multiple of 32: the padding path runs too


def save_tiny_checkpoint(run: Path, *extra: str) -> Path:
    """A random-weight tiny detector saved as <run>/checkpoints/best.pt (no training needed to export)."""
    torch.manual_seed(0)
    from crossattentiondet.models import build_detector

    config = load_config(None, [*TINY, *extra])
    model = build_detector(config, 2, load_pretrained=False)
    path = run / "checkpoints" / "best.pt"
    save_checkpoint(path, {"model": model.state_dict(), "config": config_to_dict(config),
                           "class_names": ["person", "car"], "num_classes": 2, "epoch": 1, "metrics": {}})
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("export") / "run"
    # every fusion module with parameters in one encoder: each must export (and the graph stays small)
    save_tiny_checkpoint(run, "data.modalities.0.scale=255", "data.modalities.1.scale=65535",
                         "data.modalities.2.scale=255", "model.fusion.per_stage={1: cssa, 2: gaff, 3: frm_ffm, 4: concat}")
    return run


@pytest.fixture(scope="module")
def eager(run: Path) -> DeployableDetector:
    model, _, _ = load_model(run)
    return DeployableDetector(model.to("cpu"))


def raw_image(width: int, height: int, seed: int) -> torch.Tensor:
    """Raw sensor values as a deployment would pass them: integers 0..scale per channel, as float32."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, np.asarray(SCALES)[:, None, None] + 1, (len(SCALES), height, width))
    return torch.from_numpy(image.astype(np.float32))[None]


def assert_same_detections(eager: DeployableDetector, image: torch.Tensor, exported: tuple) -> None:
    with torch.no_grad():
        boxes, scores, labels = (t.numpy() for t in eager(image))
    assert len(scores) > 0, "the comparison needs detections"
    got_boxes, got_scores, got_labels = (np.asarray(t) for t in exported)
    assert got_boxes.shape == boxes.shape and got_boxes.dtype == np.float32
    np.testing.assert_allclose(got_boxes, boxes, rtol=0, atol=1e-4)
    np.testing.assert_allclose(got_scores, scores, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(got_labels, labels)
    height, width = image.shape[2:]
    assert boxes[:, 2].max() <= width and boxes[:, 3].max() <= height  # boxes in input pixels


def test_onnx_dynamic_matches_pytorch_at_two_sizes(run: Path, eager: DeployableDetector) -> None:
    ort = pytest.importorskip("onnxruntime")
    lines: list[str] = []
    path = export_model(run, "onnx", dynamic=True, size=EXPORT_SIZE, check=False, echo=lines.append)
    assert path == run / "export" / "model.onnx" and path.is_file()
    assert not list(path.parent.glob(".*.tmp"))  # written through a temporary file, renamed into place
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "image" and inp.type == "tensor(float)" and inp.shape == [1, 5, "height", "width"]
    for i, (width, height) in enumerate((EXPORT_SIZE, OTHER_SIZE)):
        image = raw_image(width, height, seed=10 + i)
        assert_same_detections(eager, image, session.run(["boxes", "scores", "labels"], {"image": image.numpy()}))
    info = json.loads((run / "export" / "model.onnx.json").read_text())
    assert info["format"] == "onnx" and info["file"] == "model.onnx" and info["dynamic"] is True
    assert info["opset"] == 17 and info["versions"]["torch"] == torch.__version__
    assert info["input"]["dtype"] == "float32" and info["input"]["shape"] == [1, 5, "height", "width"]
    assert info["input"]["channel_order"] == ["rgb", "rgb", "rgb", "thermal", "event"]
    assert [m["scale"] for m in info["input"]["modalities"]] == [255.0, 65535.0, 255.0]
    assert info["input"]["modalities"][0]["mean"] == [0.485, 0.456, 0.406]
    assert info["class_names"] == ["person", "car"] and info["export_size"] == {"width": 64, "height": 48}


def test_torchscript_dynamic_loads_and_matches_pytorch(run: Path, eager: DeployableDetector, tmp_path: Path) -> None:
    lines: list[str] = []
    path = export_model(run, "torchscript", dynamic=True, size=EXPORT_SIZE, out=tmp_path / "det.pt", check=False,
                        echo=lines.append)
    assert path == tmp_path / "det.pt"
    module = torch.jit.load(str(path))
    for i, (width, height) in enumerate((EXPORT_SIZE, OTHER_SIZE)):
        image = raw_image(width, height, seed=20 + i)
        with torch.no_grad():
            assert_same_detections(eager, image, tuple(t.numpy() for t in module(image)))
    with pytest.raises(Exception, match=r"expected one image of shape \(1, 5, H, W\)"):
        module(torch.zeros(1, 3, 48, 64))
    info = json.loads((tmp_path / "det.pt.json").read_text())
    assert info["format"] == "torchscript" and info["opset"] is None and info["dynamic"] is True
    if info["method"] == "trace":  # the detector does not compile with torch.jit.script: the user is told why
        note = next(line for line in lines if line.startswith("torch.jit.script cannot compile"))
        assert "(model." in note and "traced instead, which fixes one image per call, the CPU" in note
        assert info["fixed_by_tracing"].endswith("the image size stays free")


def test_fixed_size_onnx_refuses_other_sizes(run: Path, eager: DeployableDetector, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "fixed.onnx"
    # through the CLI, with the built-in check against PyTorch on
    assert main(["export", str(run), "--format", "onnx", "--size", "64x48", "--opset", "16", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "checked against PyTorch at 64x48: same detections" in printed and str(out) in printed
    info = json.loads((tmp_path / "fixed.onnx.json").read_text())
    assert info["dynamic"] is False and info["opset"] == 16 and info["input"]["shape"] == [1, 5, 48, 64]
    assert info["checked_against_pytorch"]["64x48"]["detections"] > 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    image = raw_image(*EXPORT_SIZE, seed=30)
    assert_same_detections(eager, image, session.run(None, {"image": image.numpy()}))
    with pytest.raises(Exception, match="(?i)invalid dimensions"):  # onnxruntime names the axis and sizes
        session.run(None, {"image": raw_image(*OTHER_SIZE, seed=31).numpy()})


def test_fixed_size_check_survives_tracing() -> None:
    """The TorchScript size check is a scripted call, not a Python `if` (which tracing would freeze)."""

    class Detections(torch.nn.Module):  # stands in for the detector: one detection per image
        def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
            box = images[0].mean().reshape(1, 1).expand(1, 4)
            return [{"boxes": box, "scores": box[:, 0], "labels": torch.ones(1, dtype=torch.int64)}]

    fixed = torch.jit.trace(DeployableDetector(Detections(), (5, 48, 64)), torch.zeros(1, 5, 48, 64))
    assert fixed(torch.ones(1, 5, 48, 64))[0].shape == (1, 4)
    with pytest.raises(Exception, match=r"exported for 64x48 \(WxH\) images only .* got 88x72"):
        fixed(torch.ones(1, 5, 72, 88))
    free = torch.jit.trace(DeployableDetector(Detections(), (5, -1, -1)), torch.zeros(1, 5, 48, 64))
    assert float(free(torch.full((1, 5, 72, 88), 2.0))[1][0]) == 2.0  # traced once, runs at another size
    with pytest.raises(Exception, match=r"expected one image"):
        free(torch.ones(2, 5, 48, 64))


def test_export_errors(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                       monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="--format 'tflite': choose one of onnx, torchscript"):
        export_model(run, "tflite")
    with pytest.raises(SystemExit):  # argparse: invalid choice
        main(["export", str(run), "--format", "tflite"])
    assert "invalid choice: 'tflite'" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nowhere")]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--opset 11: must be between 14"):
        export_model(run, "onnx", opset=11)
    with pytest.raises(ConfigError, match="--opset applies to --format onnx only"):
        export_model(run, "torchscript", opset=17)
    assert main(["export", str(run), "--size", "64by48"]) == 2
    assert "must look like WIDTHxHEIGHT" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="at least 32 pixels"):
        export_model(run, "torchscript", size=(16, 48))
    with pytest.raises(ConfigError, match="is a folder, not a file"):
        export_model(run, "torchscript", out=tmp_path)
    # a checkpoint whose config leaves a scale to the file's dtype: the float graph cannot know it
    bare = save_tiny_checkpoint(tmp_path / "bare")
    with pytest.raises(ConfigError, match=r"data\.modalities\.0\.scale, data\.modalities\.1\.scale.* unset"):
        export_model(bare, "torchscript", out=tmp_path / "bare.pt")
    assert not (tmp_path / "bare.pt").exists()

    real_import = builtins.__import__

    def no_onnx(name: str, *args, **kwargs):  # noqa: ANN001, ANN202
        if name.split(".")[0] in ("onnx", "onnxruntime"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    assert main(["export", str(run), "--format", "onnx"]) == 2
    assert "pip install 'crossattentiondet[export]'" in capsys.readouterr().err


def test_default_size_is_the_runs_evaluation_size(tmp_path: Path) -> None:
    from crossattentiondet.engine.export import DEFAULT_SIZE, _run_eval_size

    assert _run_eval_size(tmp_path) == DEFAULT_SIZE  # no final_results.json (e.g. eval.speed=false, or a bare .pt)
    (tmp_path / "final_results.json").write_text(json.dumps({"speed": {"eval_size": [96, 80]}}))
    assert _run_eval_size(tmp_path) == (96, 80)
    (tmp_path / "final_results.json").write_text("{not json")
    assert _run_eval_size(tmp_path) == DEFAULT_SIZE
