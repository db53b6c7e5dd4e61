"""Training YAMLs in the seeds/003 DETR project's shape: recognised, translated key by key, notes shown once."""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from crossattentiondet.config import ConfigError, build_config, config_to_dict, is_legacy, load_config
from crossattentiondet.seed003 import REFUSED_KNOBS, is_seed003, notes_for, translate_seed003

# the guide's fast configuration (training_fast_a5000.yaml), in the seed project's sections and keys
FAST_YAML = """\
model:
  architecture: detr
  backbone: resnet50
  num_classes: 3
  pretrained: true
  hidden_dim: 256
  nheads: 8
  num_encoder_layers: 6
  num_decoder_layers: 6
training:
  batch_size: 36
  num_epochs: 20
  learning_rate: 0.0001
  weight_decay: 0.0001
  warmup_epochs: 5
  gradient_clip: 0.1
  gradient_accumulation_steps: 1
  mixed_precision: true
  compile_model: false
  channels_last: true
  cudnn_benchmark: true
  tf32: true
  memory_cleanup_frequency: 30
  adaptive_optimization: true
  target_gpu_utilization: 0.9
  max_ram_usage: 0.85
  adaptive_adjustment_interval: 100
  focal_loss:
    enabled: true
    alpha: 0.25
    gamma: 2.0
optimizer:
  type: AdamW
  lr: 0.0001
  betas: [0.9, 0.999]
  weight_decay: 0.0001
lr_schedule:
  type: cosine
  warmup_epochs: 5
  min_lr: 0.000001
augmentation:
  train:
    horizontal_flip: true
    color_jitter: {brightness: 0.2, contrast: 0.2, saturation: 0.2, hue: 0.1}
    random_crop: true
    resize_range: [800, 1333]
    copy_paste: {prob: 0.5, max_pastes: 3}
    clahe: {enabled: false, clip_limit: 2.0, tile: 8x8}
    motion_blur: {enabled: false, prob: 0.3, max_kernel: 15}
  val:
    resize: 1333
dataset:
  train_path: data/soccer/train
  val_path: data/soccer/valid
  num_workers: 12
  pin_memory: true
  prefetch_factor: 6
  persistent_workers: true
checkpoint:
  save_dir: checkpoints/detr_fast
  save_frequency: 5
  save_every_epoch: false
  keep_last_lightweight: true
  save_best: true
  metric: mAP@0.5
evaluation:
  iou_thresholds: [0.5, 0.75]
  max_detections: 100
  val_frequency: 2
logging:
  log_dir: logs
  tensorboard: true
  mlflow: true
  mlflow_tracking_uri: file:./mlruns
  mlflow_experiment_name: soccer_detr
  mlflow_log_models: false
  print_frequency: 100
  log_every_n_steps: 200
"""


def seed_tree(**changes: dict) -> dict:
    """The fast configuration as a mapping, with sections updated by ``changes``."""
    tree = yaml.safe_load(FAST_YAML)
    for section, values in changes.items():
        tree[section] = {**tree.get(section, {}), **values}
    return tree


def test_the_fast_configuration_resolves_to_our_keys(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "training_fast_a5000.yaml"
    path.write_text(FAST_YAML)
    with caplog.at_level(logging.WARNING, logger="crossattentiondet.seed003"):
        c = load_config(path)
    t, d, m = c.train, c.data, c.model
    assert (m.detector.type, m.backbone, m.streams) == ("detr", "timm:resnet50", [["rgb"]])
    assert [mod.name for mod in d.modalities] == ["rgb"] and m.num_classes is None  # classes from the COCO file
    detr = m.detector.detr
    assert (detr.hidden_dim, detr.num_heads, detr.encoder_layers, detr.decoder_layers) == (256, 8, 6, 6)
    assert (detr.loss.focal_alpha, detr.loss.focal_gamma) == (0.25, 2.0)
    # the speed knobs, each where it acts
    assert (t.batch_size, t.epochs, t.accumulation, t.precision) == (36, 20, 1, "fp16")
    assert (t.channels_last, t.tf32, t.compile) == (True, True, False)
    assert t.cudnn_benchmark is True  # the seed's code disabled cuDNN whatever this said
    # pin_memory: true becomes "on when training on CUDA" (pinning on a CPU run only draws a torch warning)
    assert (d.loader.num_workers, d.loader.prefetch_factor, d.loader.persistent_workers, d.loader.pin_memory) == \
        (12, 6, True, None)
    assert t.val_every == 2  # the seed validated every 10 epochs whatever this said
    assert (t.print_every, t.log_every) == (100, 200)
    assert (d.augment.clahe, d.augment.motion_blur) == (0.0, 0.0)  # off in the fast variant
    assert (d.augment.clahe_clip_limit, d.augment.clahe_tiles, d.augment.motion_blur_max_kernel) == (2.0, 8, 15)
    # the recipe: AdamW 1e-4 / 1e-4, backbone x0.1, 5 warmup epochs from 0.1 x lr, cosine to 1e-6, clip 0.1
    assert (t.optimizer.type, t.lr, t.optimizer.weight_decay, t.optimizer.betas) == ("adamw", 1e-4, 1e-4, (0.9, 0.999))
    assert t.optimizer.backbone_lr_mult == 0.1 and t.grad_clip == 0.1
    s = t.schedule
    assert (s.type, s.warmup_epochs, s.warmup_factor, s.min_lr) == ("cosine", 5, 0.1, 1e-6)
    # augmentation
    a = d.augment
    assert a.hflip == 0.5 and a.crop_prob == 0.5 and a.multi_scale == (800, 1333) and a.multi_scale_max_size == 1333
    assert (a.color_jitter.prob, a.color_jitter.brightness, a.color_jitter.hue) == (1.0, 0.2, 0.1)
    assert (a.copy_paste.prob, a.copy_paste.max_pastes) == (0.5, 3)
    assert m.detector.resize == "native"  # multi-scale training: a resize in the model would undo it
    # data, checkpoints, evaluation, logging
    assert (d.root, d.layout) == (str(Path("data/soccer")), "coco")
    assert (c.output.root, c.name, t.checkpoint_every, c.eval.select) == ("checkpoints", "detr_fast", 5, "mAP_50")
    assert m.detector.detections_per_img == 100
    ml = c.output.mlflow
    assert (c.output.tensorboard, ml.enabled, ml.tracking_uri, ml.experiment, ml.log_models) == \
        (True, True, "file:./mlruns", "soccer_detr", False)
    # notes: once each, naming the file; the leak knobs with their reasons; kept for the run's training.log
    shown = [r.getMessage() for r in caplog.records if r.name == "crossattentiondet.seed003"]
    assert all(line.startswith(f"note: {path}: ") for line in shown) and len(shown) == len(set(shown))
    for knob, reason in REFUSED_KNOBS.items():
        assert sum(f"training.{knob} ignored: {reason}" in line for line in shown) == 1
    assert any("model.num_classes=3 ignored" in line for line in shown)
    assert any("model.pretrained=PATH" in line for line in shown)
    assert any("iou_thresholds" in line and "mAP_50" in line for line in shown)
    assert notes_for(config_to_dict(c)) == [line.removeprefix("note: ") for line in shown]
    # a config changed after loading is not the translated file: no notes are attributed to it
    assert notes_for(config_to_dict(c.model_copy(update={"seed": 7}))) == []


def test_the_seed_shape_is_told_apart_from_the_original_json_and_ours() -> None:
    legacy = {"experiment_id": "exp_001", "fusion_type": None, "backbone": "mit_b1",
              "training": {"epochs": 2, "batch_size": 2, "learning_rate": 0.01}}
    assert is_legacy(legacy) and not is_seed003(legacy)
    assert build_config(legacy).name == "exp_001"  # still the original's translation
    assert not is_seed003({"model": {"backbone": "mit_b0"}, "train": {"epochs": 1}})
    assert is_seed003({"model": {"architecture": "detr"}})
    assert is_seed003({"training": {"batch_size": 4}, "dataset": {"num_workers": 2}})
    # a training section alone is the original's shape (its translation names what it does not know)
    with pytest.raises(ConfigError, match="original-format"):
        build_config({"training": {"num_epochs": 3}})


@pytest.mark.parametrize(("tree", "named"), [
    ({"training": {"bogus": 1}, "dataset": {}}, ["'bogus'", "section 'training'"]),
    ({"model": {"architecture": "detr"}, "schedule": {}}, ["section(s) 'schedule'"]),
    (seed_tree(augmentation={"train": {"clahe": {"enabled": True, "strength": 2}}}),
     ["'strength'", "section 'augmentation.train.clahe'"]),
    (seed_tree(training={"focal_loss": {"enabled": True, "beta": 1}}), ["'beta'", "training.focal_loss"]),
    (seed_tree(model={"architecture": "yolo"}), ["model.architecture 'yolo'"]),
    (seed_tree(optimizer={"type": "Lion"}), ["optimizer.type 'Lion'"]),
    (seed_tree(checkpoint={"metric": "f1"}), ["checkpoint.metric 'f1'"]),
    (seed_tree(training={"mixed_precision": "yes"}), ["training.mixed_precision", "'yes'"]),
    (seed_tree(augmentation={"train": {"clahe": {"tile": [8, 4]}}}), ["clahe.tile", "square"]),
])
def test_bad_seed_keys_are_named(tree: dict, named: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(tree, source="seed.yaml")
    message = str(info.value)
    assert message.startswith("seed.yaml: seed-003 config") and "\n" not in message
    assert all(part in message for part in named), message


def test_dataset_paths_give_the_coco_root() -> None:
    # split folders, their images/ folders or their annotation files all name the same root
    for train, val in (("/d/s/train", "/d/s/valid"), ("/d/s/train/images", "/d/s/val/images"),
                       ("/d/s/train/annotations/annotations.json", "/d/s/valid/annotations/annotations.json"),
                       ("/d/s/train/_annotations.coco.json", "/d/s/valid/_annotations.coco.json")):
        tree, _ = translate_seed003({"dataset": {"train_path": train, "val_path": val}})
        assert (tree["data"]["root"], tree["data"]["layout"]) == (str(Path("/d/s")), "coco"), (train, val)
    with pytest.raises(ConfigError, match="different data roots") as info:
        translate_seed003({"dataset": {"train_path": "/a/train", "val_path": "/b/valid"}})
    assert "/a/train" in str(info.value) and "/b/valid" in str(info.value)


def test_backbone_metric_resize_and_focal_translations() -> None:
    for name, ours in (("resnet50", "timm:resnet50"), ("convnext_tiny", "timm:convnext_tiny"),
                       ("timm:resnet18", "timm:resnet18"), ("mit_b0", "mit_b0")):
        assert translate_seed003({"model": {"backbone": name}})[0]["model"]["backbone"] == ours
    for metric, ours in (("mAP", "mAP"), ("map@0.75", "mAP_75"), ("val_mAP_50", "mAP_50"), ("mAP_small", "mAP_small")):
        assert translate_seed003({"checkpoint": {"metric": metric}})[0]["eval"]["select"] == ours
    _, notes = translate_seed003({"checkpoint": {"metric": "mAP"}})
    assert any("F1" in n for n in notes)  # the seed's "mAP" was F1; here it is COCO AP
    # a val resize without a training range: the model's resize policy, said what it means
    tree, notes = translate_seed003({"augmentation": {"val": {"resize": 1333}}})
    assert tree["model"]["detector"] | {"type": "detr"} == {"type": "detr", "resize": "shorter_side",
                                                            "max_size": 1333, "min_size": 800}
    assert any("training and evaluation" in n for n in notes)
    tree, notes = translate_seed003({"training": {"focal_loss": {"enabled": False, "alpha": 0.5, "gamma": 1.0}}})
    assert tree["model"]["detector"]["detr"]["loss"] == {"focal_alpha": 0.5, "focal_gamma": 1.0}
    assert any("always uses the sigmoid focal loss" in n for n in notes)
    # where the training and optimizer sections disagree, the optimizer builds the optimizer (and says so)
    tree, notes = translate_seed003({"training": {"learning_rate": 0.001}, "optimizer": {"lr": 0.0002}})
    assert tree["train"]["lr"] == 0.0002 and any("training.learning_rate=0.001 ignored" in n for n in notes)
    # the seed's fields validate like ours: a bad value names our key
    with pytest.raises(ConfigError, match="train.batch_size"):
        build_config(seed_tree(training={"batch_size": 0}))


def test_cli_shows_the_notes_once_on_stderr(tmp_path: Path) -> None:
    path = tmp_path / "seed.yaml"
    path.write_text(FAST_YAML)
    proc = subprocess.run([sys.executable, "-m", "crossattentiondet", "config", "--config", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout.split("\n\n")[0])  # stdout stays the resolved YAML
    assert resolved["train"]["batch_size"] == 36
    lines = [line for line in proc.stderr.splitlines() if line.startswith("note: ")]
    assert lines and len(lines) == len(set(lines))
    assert sum("memory_cleanup_frequency ignored" in line for line in lines) == 1
    assert "memory_cleanup" not in proc.stdout


@pytest.mark.slow
def test_a_seed_file_trains_and_validates_every_val_frequency_epochs(trees, tmp_path: Path) -> None:
    """A tiny run from the seed-shaped file (RGB frames): validation on epochs 2, 4 and the last (5), the
    notes in training.log. The encoder and head are the tests' tiny Faster R-CNN (the subject is the config)."""
    from crossattentiondet.engine.trainer import train
    from tests.test_train import TINY

    rng = np.random.default_rng(3)
    frames = {f"f{i:02d}": [(int(rng.integers(0, 2)), 0.5, 0.5, 0.3, 0.4)] for i in range(10)}
    root = trees.folders("rgb_data", frames=frames, size=(64, 64), modalities={"rgb": (3, np.uint8)})
    path = tmp_path / "seed.yaml"
    path.write_text(FAST_YAML)
    tiny = [o for o in TINY if not o.startswith(("data.loader.", "output.tensorboard"))]
    overrides = [*tiny, f"data.root={root}", "data.layout=folders", f"output.root={tmp_path / 'runs'}",
                 "model.detector.type=faster_rcnn", "train.precision=fp32", "train.epochs=5",
                 "train.max_iters_per_epoch=1", "data.loader.num_workers=0", "data.loader.pin_memory=false",
                 "data.augment.multi_scale=null", "data.augment.copy_paste.prob=0", "output.mlflow.enabled=false",
                 "output.tensorboard=false", "eval.bootstrap=0", "eval.plots=false"]
    config = load_config(path, overrides)
    assert config.train.val_every == 2 and config.train.channels_last and config.train.cudnn_benchmark
    result = train(config, echo=lambda *_: None)
    rows = list(csv.DictReader((result.run_dir / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows if r["val_mAP"] != ""] == [2, 4, 5]
    log_text = (result.run_dir / "training.log").read_text()
    # the notes of a file loaded with overrides are those of the translated file; the run log keeps them
    assert "train.cudnn_benchmark=true has no effect on cpu" in log_text
    assert "training.memory_cleanup_frequency ignored" in log_text
    assert json.loads((result.run_dir / "final_results.json").read_text())["results"]


def test_notes_reach_the_training_log(trees, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The translation notes of the loaded seed file are written to the run's training.log (not echoed twice)."""
    from crossattentiondet.engine import trainer

    class Stop(Exception):
        pass

    def stop(*_args: object, **_kwargs: object) -> None:
        raise Stop

    monkeypatch.setattr(trainer, "_run", stop)  # the subject is what is logged before training
    path = tmp_path / "seed.yaml"
    path.write_text(FAST_YAML)
    # fp32: the CPU cannot run the file's fp16 (the device check would stop the run before its log exists)
    config = load_config(path, [f"output.root={tmp_path / 'runs'}", "output.tensorboard=false",
                                "output.mlflow.enabled=false", "train.precision=fp32"])
    expected = notes_for(config_to_dict(config))
    assert any("memory_cleanup_frequency ignored" in n for n in expected)
    echoed: list[str] = []
    with pytest.raises(Stop):
        trainer.train(config, echo=echoed.append)
    text = (tmp_path / "runs" / "detr_fast" / "training.log").read_text()
    for note in expected:
        assert f"note: {note}" in text
    assert not any("memory_cleanup_frequency" in line for line in echoed)  # shown at load time already
