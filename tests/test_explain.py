"""cadet explain: recorded fusion internals (outputs unchanged), per-stage images and numbers, errors."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from crossattentiondet.cli import main
from crossattentiondet.config import FusionConfig, config_to_dict, load_config
from crossattentiondet.engine.checkpoint import save_checkpoint
from crossattentiondet.explain import explain_frame
from crossattentiondet.models import build_detector, build_fusion
from crossattentiondet.models.fusion import RecordsInternals, recording_internals
from tests.conftest import DataTrees
from tests.test_train import TINY, frames

# one tiny model with every module that records: FRM+FFM, CSSA, GAFF, and a parameter-free add
PLAN = ["model.fusion.per_stage={1: frm_ffm, 2: cssa, 3: gaff, 4: add}"]
RECORDED = {
    "frm_ffm": {"channel_weights_1", "channel_weights_2", "spatial_weights_1", "spatial_weights_2"},
    "cssa": {"eca_weights_1", "eca_weights_2", "switch_1", "switch_2", "spatial_gate"},
    "gaff": {"se_gate_1", "se_gate_2", "inter_gate_1", "inter_gate_2"},
}


def save_run(tmp: Path, root: Path, name: str, *extra: str) -> Path:
    """A run directory with a checkpoint of a freshly initialised tiny model (no training needed)."""
    config = load_config(None, [*TINY, f"data.root={root}", f"output.root={tmp / 'runs'}", f"name={name}", *extra])
    torch.manual_seed(0)
    model = build_detector(config, 2, load_pretrained=False)
    run = tmp / "runs" / name
    save_checkpoint(run / "checkpoints" / "best.pt", {"model": model.state_dict(), "config": config_to_dict(config),
                                                      "num_classes": 2, "class_names": ["person", "car"], "epoch": 1})
    return run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("explain")
    root = DataTrees(tmp).npy("data", frames=frames(4), size=(64, 48), classes=["person", "car"])
    return save_run(tmp, root, "mixed", *PLAN), root


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_recording_changes_neither_outputs_nor_gradients(name: str) -> None:
    torch.manual_seed(0)
    plain = build_fusion(name, 16, 2, FusionConfig()).train()
    recorded = copy.deepcopy(plain)
    x1, x2 = torch.randn(2, 16, 8, 6), torch.randn(2, 16, 8, 6)
    outputs = {}
    for label, module in (("plain", plain), ("recorded", recorded)):
        a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()
        if label == "recorded":
            with recording_internals(module) as recorders:
                out = module(a, b)
                internals = dict(module.internals)
            assert module in recorders
        else:
            out = module(a, b)
            assert not module.internals  # off: nothing is kept
        sum((o * torch.randn(o.shape, generator=torch.Generator().manual_seed(i))).sum()
            for i, o in enumerate(out)).backward()
        outputs[label] = (out, a.grad, b.grad, {n: p.grad for n, p in module.named_parameters()})
    assert set(internals) == RECORDED[name]
    assert all(not t.requires_grad for t in internals.values())  # detached: no graph kept alive
    assert not recorded.internals and not recorded.record_internals  # dropped when the block ends
    (out_p, ga_p, gb_p, grads_p), (out_r, ga_r, gb_r, grads_r) = outputs["plain"], outputs["recorded"]
    for p, r in zip(out_p, out_r):
        assert torch.equal(p, r)
    assert torch.equal(ga_p, ga_r) and torch.equal(gb_p, gb_r)
    assert grads_p.keys() == grads_r.keys() and all(torch.equal(grads_p[k], grads_r[k]) for k in grads_p)
    # BatchNorm running statistics moved the same way
    for (k, v), (_, w) in zip(plain.state_dict().items(), recorded.state_dict().items()):
        assert torch.equal(v, w), k


def test_recorded_cssa_masks_are_the_modules_switches() -> None:
    torch.manual_seed(1)
    module = build_fusion("cssa", 32, 1, FusionConfig(cssa={"switching_thresh": 0.5})).eval()
    x1, x2 = torch.randn(1, 32, 4, 4), torch.randn(1, 32, 4, 4)
    with torch.no_grad(), recording_internals(module):
        module(x1, x2)
        rec = module.internals
        assert torch.equal(rec["eca_weights_1"], module.eca1(x1)) and torch.equal(rec["eca_weights_2"], module.eca2(x2))
        fractions = module.switch_fraction(x1, x2)
        assert (rec["switch_1"].float().mean().item(), rec["switch_2"].float().mean().item()) == fractions
    assert isinstance(module, RecordsInternals)


def test_explain_writes_stage_images_and_numbers(run: tuple[Path, Path], tmp_path: Path) -> None:
    run_dir, _ = run
    out = tmp_path / "ex"
    summary = explain_frame(run_dir, "f001", out, echo=lambda _m: None)
    assert summary["out_dir"] == str(out) and summary["frame"] == "f001"
    assert summary["size"] == [64, 48] and summary["streams"] == ["rgb", "thermal+event"]
    written = json.loads((out / "explain.json").read_text())
    assert written == {k: v for k, v in summary.items() if k != "out_dir"}
    stages = written["stages"]
    assert [(s["stage"], s["module"], s["recorded"]) for s in stages] == [
        (1, "frm_ffm", True), (2, "cssa", True), (3, "gaff", True), (4, "add", False)]
    assert [s["channels"] for s in stages] == [8, 16, 24, 32]
    # one image per stage with internals, beside the frame's three modalities; none for the add stage
    assert sorted(p.name for p in out.glob("*.png")) == ["stage1_frm_ffm.png", "stage2_cssa.png", "stage3_gaff.png"]
    assert stages[3]["image"] is None
    for stage in stages[:3]:
        picture = cv2.imread(str(out / stage["image"]))
        assert picture is not None and picture.shape[1] >= 3 * 200  # three modality columns
    arrays = np.load(out / "internals.npz")
    for stage in stages[:3]:
        keys = {k.split("_", 1)[1] for k in arrays.files if k.startswith(f"stage{stage['stage']}_")}
        assert keys == RECORDED[stage["module"]]
    # the model pads 64x48 to 64x64 (size_divisible 32); the stage maps, at strides 4, 8, 16, cover that
    assert written["model_input_size"] == [64, 48] and written["padded_input_size"] == [64, 64]
    assert [s["map_size"] for s in stages[:3]] == [[16, 16], [8, 8], [4, 4]]
    assert arrays["stage1_spatial_weights_1"].shape == (1, 16, 16) and arrays["stage1_channel_weights_1"].shape == (8, 1, 1)
    assert arrays["stage2_spatial_gate"].shape == (1, 8, 8)
    assert arrays["stage3_inter_gate_1"].shape == (24, 4, 4) and arrays["stage3_se_gate_1"].shape == (24,)
    frm = stages[0]
    assert frm["channel_weights"]["rgb"]["mean"] == pytest.approx(float(arrays["stage1_channel_weights_1"].mean()), abs=1e-6)
    assert frm["spatial_weights"]["thermal+event"]["max"] == pytest.approx(float(arrays["stage1_spatial_weights_2"].max()), abs=1e-6)
    # CSSA: the recorded switches are what the threshold implies on the recorded weights
    cssa = stages[1]
    threshold = cssa["switching_thresh"]
    w1, w2 = arrays["stage2_eca_weights_1"], arrays["stage2_eca_weights_2"]
    expected = {"rgb": (w1 < threshold) & (w1 < w2), "thermal+event": (w2 < threshold) & (w2 < w1)}
    assert np.array_equal(arrays["stage2_switch_1"], expected["rgb"])
    assert np.array_equal(arrays["stage2_switch_2"], expected["thermal+event"])
    for stream, mask in expected.items():
        assert cssa["switched_fraction"][stream] == pytest.approx(mask.mean(), abs=1e-6)
        assert cssa["switched_channels"][stream] == int(mask.sum())
    assert 0 < sum(cssa["switched_channels"].values()) < 2 * 16  # the check above is not about all-or-nothing
    gaff = stages[2]
    assert gaff["inter_gates"]["rgb"]["mean"] == pytest.approx(float(arrays["stage3_inter_gate_1"].mean()), abs=1e-6)
    assert 0 < gaff["se_gates"]["rgb"]["min"] <= gaff["se_gates"]["rgb"]["max"] < 1


def test_explain_cli_default_folder_npy_frames_and_errors(run: tuple[Path, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, root = run
    assert main(["explain", str(run_dir), "f002"]) == 0
    text = capsys.readouterr().out
    assert "stage 2 cssa: ECA weights" in text and "switched (threshold 0.5)" in text
    assert (run_dir / "explain" / "f002" / "explain.json").is_file()
    # a .npy file outside any data set
    frame = tmp_path / "loose.npy"
    frame.write_bytes((root / "images" / "f003.npy").read_bytes())
    assert main(["explain", str(run_dir / "checkpoints" / "best.pt"), str(frame), "--out", str(tmp_path / "n"),
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["frame"] == "loose" and summary["source"] == str(frame) and summary["ground_truth_boxes"] == 0
    # unknown frame: one line naming it and the data set
    assert main(["explain", str(run_dir), "f0001", "--out", str(tmp_path / "u")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"frame 'f0001' is not in the data set {root} (4 frames" in err
    assert "did you mean 'f001'" in err and not (tmp_path / "u").exists()
    other = tmp_path / "other"
    DataTrees(tmp_path).npy("other", frames={"g01": []}, size=(64, 48))
    assert main(["explain", str(run_dir), "f001", "--data", str(other)]) == 2  # looked up in --data, not the run's
    assert f"frame 'f001' is not in the data set {other} (1 frame, e.g. 'g01')" in capsys.readouterr().err
    assert main(["explain", str(run_dir), str(tmp_path / "missing.npy")]) == 2
    assert "missing.npy" in capsys.readouterr().err
    # a single-stream model has no fusion modules
    single = save_run(tmp_path, root, "early", "model.streams=[[rgb,thermal,event]]")
    assert main(["explain", str(single), "f001"]) == 2
    assert "one stream" in capsys.readouterr().err
