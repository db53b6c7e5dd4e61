"""Data set recipe presets shipped with the package, and the warnings a training recipe gets at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from crossattentiondet.config import load_config, preset_names
from crossattentiondet.engine.recipe_checks import SMALL_TRAIN_FRAMES, recipe_warnings

DATASET_PRESETS = {"llvip": "llvip", "flir_aligned": "flir", "m3fd": "m3fd", "kaist": "kaist"}


@pytest.mark.parametrize(("preset", "layout"), sorted(DATASET_PRESETS.items()))
def test_dataset_preset_loads_and_names_its_layout(preset: str, layout: str) -> None:
    assert preset in preset_names()  # what `cadet config --presets` lists
    config = load_config(f"preset:{preset}", ["data.root=/data/somewhere"])
    assert config.data.layout == layout and config.data.root == "/data/somewhere"
    assert [m.name for m in config.data.modalities] == ["rgb", "thermal"]
    assert config.model.streams == [["rgb"], ["thermal"]]
    rgb, thermal = config.data.modalities
    # not measured: ImageNet statistics for RGB, neutral values for thermal (the presets say so)
    assert rgb.mean == [0.485, 0.456, 0.406] and thermal.mean == [0.5] and thermal.std == [0.5]
    assert config.train.schedule.warmup_iters > 0 and config.train.schedule.milestones
    assert max(config.train.schedule.milestones) < config.train.epochs
    assert config.model.pretrained is None  # a path only the user knows; the start-up warning asks for it


def test_pedestrian_presets_report_miss_rate_and_know_their_classes() -> None:
    kaist = load_config("preset:kaist", ["data.root=/d"])
    assert kaist.data.names == ["person"] and kaist.eval.miss_rate == "auto"
    assert load_config("preset:m3fd", ["data.root=/d"]).data.names[0] == "People"
    # overrides still apply on top of a preset
    assert load_config("preset:llvip", ["data.root=/d", "model.detector.resize=native"]).model.detector.resize == \
        "native"


def test_large_backbone_from_scratch_on_small_data_is_warned_about() -> None:
    b2 = load_config(None, ["model.backbone=mit_b2"])
    (warning,) = recipe_warnings(b2, 4000)
    assert "mit_b2" in warning and "4,000 training frames" in warning and "model.pretrained" in warning
    assert "nvidia/mit-b2" in warning
    assert recipe_warnings(load_config(None, ["model.backbone=mit_b5"]), 100)
    # pretrained weights, a small backbone, a large data set, or a custom-sized encoder: nothing to say
    assert recipe_warnings(load_config(None, ["model.backbone=mit_b2", "model.pretrained=/w/mit_b2.pth"]), 4000) == []
    assert recipe_warnings(load_config(None, ["model.backbone=mit_b1"]), 4000) == []
    assert recipe_warnings(b2, SMALL_TRAIN_FRAMES) == []
    assert recipe_warnings(load_config(None, ["model.backbone=mit_b2", "model.mit.embed_dims=[8,16,24,32]",
                                              "model.mit.num_heads=[1,2,2,4]"]), 10) == []


def test_a_warmup_as_long_as_the_run_is_warned_about() -> None:
    (warning,) = recipe_warnings(load_config("preset:detr_tiny", ["train.epochs=1"]), 100)
    assert "warmup_epochs=5" in warning and "train.epochs=1" in warning
    assert recipe_warnings(load_config("preset:detr_tiny"), 100) == []  # 5 of 50 epochs


class _Stop(Exception):
    """Ends a run right after its start-up warnings: what follows (training) is not this test's subject."""


def test_training_logs_the_recipe_warnings_at_start(trees, tmp_path: Path, monkeypatch) -> None:
    from crossattentiondet.engine import trainer
    from tests.test_train import TINY, frames

    seen: list[int] = []

    def fake(config, train_frames: int):
        seen.append(train_frames)
        yield "the recipe is odd"
        raise _Stop  # the trainer has logged the warning by now

    monkeypatch.setattr(trainer, "recipe_warnings", fake)
    root = trees.npy("data", frames=frames(10), size=(32, 32), classes=["person", "car"])
    config = load_config(None, [*TINY, f"data.root={root}", f"output.root={tmp_path / 'runs'}", "name=w"])
    with pytest.raises(_Stop):
        trainer.train(config, echo=lambda *_: None)
    assert "warning: the recipe is odd" in (tmp_path / "runs" / "w" / "training.log").read_text()
    # called with the number of training frames of the run's split (60 % of 10 frames)
    assert seen == [6]


def test_detr_tiny_preset_holds_the_seed_recipe() -> None:
    """preset:detr_tiny: the seeds/003 project's recipe on the DETR head, with stride 4 for tiny objects."""
    assert {"detr_tiny", "frcnn_tiny"} <= set(preset_names())
    config = load_config("preset:detr_tiny")
    detector, train = config.model.detector, config.train
    assert detector.type == "detr" and detector.detr.levels == [1, 2, 3, 4] and detector.resize == "native"
    assert (train.optimizer.type, train.lr, train.optimizer.weight_decay, train.optimizer.backbone_lr_mult) == \
        ("adamw", 1e-4, 1e-4, 0.1)
    s = train.schedule
    assert (s.type, s.warmup_epochs, s.warmup_factor, s.min_lr) == ("cosine", 5, 0.1, 1e-6)
    assert train.grad_clip == 0.1 and train.precision == "fp32"  # CPU-safe; fp16 is an override on a GPU
    assert config.eval.size_bins == "both" and detector.detections_per_img == 300
    aug = config.data.augment
    assert aug.hflip == 0.5 and (aug.copy_paste.prob, aug.copy_paste.max_pastes) == (0.5, 3)
    assert (aug.clahe, aug.motion_blur, aug.multi_scale) == (0.0, 0.0, None)  # the fast configuration's choice
    assert load_config("preset:detr_tiny", ["train.precision=fp16"]).train.precision == "fp16"


def test_frcnn_tiny_preset_has_anchors_from_8_px_on_p2() -> None:
    config = load_config("preset:frcnn_tiny")
    detector = config.model.detector
    assert detector.type == "faster_rcnn" and detector.resize == "native" and config.eval.size_bins == "both"
    sizes = detector.anchor_sizes
    assert sizes[0][0] == 8 and [level[0] for level in sizes] == [8, 16, 32, 64, 128]  # one octave per level
    # the second size of each level sits half an octave up, so a centred square between two sizes overlaps its
    # nearest anchor at IoU a/b (at the geometric midpoint of sizes a < b): near the RPN's positive threshold
    # (0.7) with half-octave steps, 0.5 with one size per level
    for small, large in sizes:
        assert abs(large / small - 2 ** 0.5) < 0.05
    steps = [s for level in sizes for s in level]
    worst = min(a / b for a, b in zip(steps, steps[1:]))
    assert worst > detector.rpn.fg_iou_thresh - 0.02
    assert min(a / b for a, b in zip(steps[::2], steps[2::2])) == 0.5  # the octave-only anchors


def test_tiny_presets_resolve_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from crossattentiondet.cli import main

    for preset, head in (("detr_tiny", "detr"), ("frcnn_tiny", "faster_rcnn")):
        assert main(["config", "--config", f"preset:{preset}"]) == 0
        resolved = yaml.safe_load(capsys.readouterr().out.split("\n\n")[0])
        assert resolved["model"]["detector"]["type"] == head and resolved["name"] == preset
