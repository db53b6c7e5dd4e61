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
