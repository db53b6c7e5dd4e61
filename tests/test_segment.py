"""task: segment end to end: train / resume / eval / predict through the shared engine, on synthetic
camouflaged scenes, a COD10K-v3 lookalike tree with a timm backbone (the seed's setting), and RGB-T semantic
segmentation (mfnet layout)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from crossattentiondet.cli import main
from crossattentiondet.config import ConfigError, build_config
from crossattentiondet.engine.trainer import train
from crossattentiondet.errors import DataError

# a tiny two-stream MiT + U-Net at 48x48: seconds per epoch on 2 CPU cores
TINY = ["task=segment", "model.backbone=mit_b0", "model.mit.embed_dims=[8,16,32,64]", "model.mit.num_heads=[1,1,1,1]",
        "model.mit.depths=[1,1,1,1]", "model.seg.size=48", "model.seg.head_channels=16",
        "data.loader.num_workers=0", "train.batch_size=4", "train.lr=0.002", "train.optimizer.type=adamw",
        "eval.bootstrap=50", "eval.panels=2", "eval.speed_iters=1", "output.tensorboard=false"]


def _quiet(_message: str) -> None:
    pass


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic camouflaged scenes, 2 epochs (read-only for the tests below)."""
    root = tmp_path_factory.mktemp("segrun")
    config = build_config({}, [*TINY, f"output.root={root}", "name=synth", "train.epochs=2",
                               "data.synthetic.images=24", "data.synthetic.size=[64,48]"])
    result = train(config, echo=_quiet)
    assert result.finished
    return result.run_dir


def test_synthetic_run_writes_the_segmentation_outputs(seg_run: Path) -> None:
    final = json.loads((seg_run / "final_results.json").read_text())
    assert final["task"] == "segment" and final["primary_metric"] == "Smeasure"
    results = final["results"]
    for key in ("Smeasure", "meanEm", "maxEm", "adpEm", "wFmeasure", "MAE", "maxFm", "meanFm", "IoU", "Dice"):
        assert 0.0 <= results[key] <= 1.0, key
    lo, hi = final["results_ci95"]["Smeasure"]
    assert lo <= results["Smeasure"] <= hi
    assert [r["zeroed"] for r in final["robustness"]] == ["none", "rgb", "thermal"]
    assert final["robustness"][0]["Smeasure"] == pytest.approx(results["Smeasure"])
    rows = (seg_run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and "val_Smeasure" in rows[0] and "loss_edge" in rows[0]
    # maps at the GT's own resolution (64x48 here), not the training size 48x48
    maps = sorted((seg_run / "predictions_test").rglob("*.png"))
    assert len(maps) == final["training"]["test_images"]
    assert cv2.imread(str(maps[0]), cv2.IMREAD_UNCHANGED).shape == (48, 64)
    per_image = (seg_run / "per_image_test.csv").read_text().splitlines()
    assert len(per_image) == len(maps) + 1
    assert (seg_run / "plots" / "panels_test.png").is_file()
    best = torch.load(seg_run / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
    assert best["config"]["task"] == "segment"
    assert best["metrics"]["val"]["Smeasure"] == pytest.approx(final["validation"]["Smeasure"])


def test_saved_maps_score_the_same_with_eval_pred(seg_run: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The maps a run writes, scored by `cadet eval --pred --gt`, give the run's own test numbers."""
    split = json.loads((seg_run / "split.json").read_text())["splits"]["test"]
    data_root = Path(json.loads((seg_run / "split.json").read_text())["root"])
    gt = tmp_path / "gt"
    gt.mkdir()
    for stem in split:
        (gt / f"{stem}.png").write_bytes((data_root / "masks" / f"{stem}.png").read_bytes())
    pred = next(p for p in (seg_run / "predictions_test").iterdir() if p.is_dir())
    assert main(["eval", "--pred", str(pred), "--gt", str(gt), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    final = json.loads((seg_run / "final_results.json").read_text())["results"]
    for key, value in final.items():
        assert scored["metrics"][key] == pytest.approx(value, abs=1e-9), key
    (gt / f"{split[0]}.png").unlink()
    assert main(["eval", "--pred", str(pred), "--gt", str(gt)]) == 2
    assert split[0] in capsys.readouterr().err  # the extra prediction is named


def test_eval_and_predict_a_segmentation_run(seg_run: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(seg_run), "--out", str(tmp_path / "ev"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    final = json.loads((seg_run / "final_results.json").read_text())
    assert summary["metrics"]["Smeasure"] == pytest.approx(final["results"]["Smeasure"])
    data_root = Path(json.loads((seg_run / "split.json").read_text())["root"])
    assert main(["predict", str(seg_run), str(data_root), "--out", str(tmp_path / "pred"), "--panels", "2"]) == 0
    record = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert len(record["frames"]) == 24
    first = cv2.imread(str(tmp_path / "pred" / record["frames"][0]["map"]), cv2.IMREAD_UNCHANGED)
    assert first.shape == (48, 64) and first.dtype == np.uint8
    # the Python API gives the same map for the same frame
    import crossattentiondet as cad

    model = cad.load(seg_run)
    assert isinstance(model, cad.Segmenter)
    frame = record["frames"][0]["frame"]
    rgb = cv2.cvtColor(cv2.imread(str(data_root / "rgb" / f"{frame}.png")), cv2.COLOR_BGR2RGB)
    thermal = cv2.imread(str(data_root / "thermal" / f"{frame}.png"), cv2.IMREAD_UNCHANGED)
    [out] = model.predict({"rgb": rgb, "thermal": thermal})
    assert np.array_equal(out.map, first) and set(np.unique(out.mask)) <= {0, 1}


def test_resumed_segmentation_run_matches_the_uninterrupted_one(tmp_path: Path) -> None:
    common = [*TINY, f"output.root={tmp_path}", "train.epochs=2", "data.synthetic.images=16",
              "data.synthetic.size=[48,48]", "eval.robustness=false", "eval.speed=false", "eval.plots=false",
              f"data.synthetic.cache_dir={tmp_path / 'scenes'}", "data.augment.vflip=0.5", "data.augment.rot90=0.5"]
    whole = train(build_config({}, [*common, "name=whole"]), echo=_quiet)
    part = train(build_config({}, [*common, "name=part"]), stop_after_epoch=1, echo=_quiet)
    assert not part.finished
    with pytest.raises(ConfigError, match="eval.select"):  # best.pt so far was chosen by Smeasure
        train(None, resume=part.run_dir, overrides=["eval.select=MAE"], echo=_quiet)
    resumed = train(None, resume=part.run_dir, echo=_quiet)
    assert resumed.finished
    a = torch.load(whole.run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["model"]
    b = torch.load(resumed.run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.test_metrics == pytest.approx(whole.test_metrics)


def _blob(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    center = (int(rng.integers(width // 4, 3 * width // 4)), int(rng.integers(height // 4, 3 * height // 4)))
    cv2.ellipse(mask, center, (int(rng.integers(4, width // 3)), int(rng.integers(4, height // 3))), 0, 0, 360, 255, -1)
    return mask


def _cod10k_tree(root: Path) -> Path:
    """COD10K-v3: Train|Test/Image/*.jpg + GT_Object/*.png, CAM and NonCAM names, antialiased 0-255 GT."""
    rng = np.random.default_rng(1)
    names = {"Train": [f"COD10K-CAM-1-Aquatic-{k}-{sub}-{i:05d}" for k, sub in ((1, "BatFish"), (2, "Crab"))
                       for i in range(4)] + ["COD10K-NonCAM-5-Background-1-Sky-00001"],
             "Test": [f"COD10K-CAM-2-Terrestrial-3-Ant-{i:05d}" for i in range(3)]
             + ["COD10K-NonCAM-5-Background-2-Sea-00002"]}
    for part, stems in names.items():
        for stem in stems:
            mask = _blob(40, 56, rng)
            image = rng.integers(0, 255, (40, 56, 3)).astype(np.uint8)
            image[mask > 0] //= 2
            (root / part / "Image").mkdir(parents=True, exist_ok=True)
            (root / part / "GT_Object").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / part / "Image" / f"{stem}.jpg"), image)
            cv2.imwrite(str(root / part / "GT_Object" / f"{stem}.png"), cv2.GaussianBlur(mask, (3, 3), 0))
    return root


def test_cod10k_tree_with_a_timm_backbone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The seed's setting, `task=segment data.root=COD10K-v3 model.backbone=timm:edgenext_*`, on a lookalike tree:
    CAM images only, test = the CAM test images, best.pt by validation S-measure, deep supervision."""
    pytest.importorskip("timm")
    root = _cod10k_tree(tmp_path / "COD10K-v3")
    # the default streams become one rgb stream (COD10K has no other modality)
    config = build_config({}, ["task=segment", f"data.root={root}", "model.backbone=timm:edgenext_xx_small",
                               "model.seg.size=64", "model.seg.deep_supervision=true",
                               "model.seg.unet_channels=[32,24,16]", "model.seg.head_channels=16",
                               "data.split.val=0.25", "data.split.train=0.75", "data.split.test=0",
                               "train.epochs=1", "train.batch_size=4", "data.loader.num_workers=0",
                               "eval.bootstrap=0", "eval.plots=false", "eval.speed=false",
                               "output.tensorboard=false", f"output.root={tmp_path / 'runs'}", "name=cod"])
    result = train(config, echo=_quiet)
    final = json.loads((result.run_dir / "final_results.json").read_text())
    assert final["training"]["test_images"] == 3  # the CAM test images; NonCAM is never tested on
    assert final["training"]["train_images"] + final["training"]["val_images"] == 8  # CAM train only
    assert "loss_deep" in (result.run_dir / "metrics.csv").read_text().splitlines()[0]
    split = json.loads((result.run_dir / "split.json").read_text())["splits"]
    assert not set(split["val"]) & set(split["test"]) and all("NonCAM" not in s for v in split.values() for s in v)
    assert sorted(p.stem for p in (result.run_dir / "predictions_test").rglob("*.png")) == sorted(split["test"])
    # on "another" COD10K tree, --data scores its test partition only, never its training images
    assert main(["eval", str(result.run_dir), "--data", str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 3


def test_sinet_pack_reports_each_test_set(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    root = tmp_path / "sinet"
    folders = {"TrainDataset": [f"COD10K-CAM-1-Aquatic-1-Fish-{i:05d}" for i in range(6)],
               "TestDataset/CAMO": ["camourflage_00001", "camourflage_00002"],
               "TestDataset/CHAMELEON": ["animal-1", "animal-2", "animal-3"]}
    for folder, stems in folders.items():
        for stem in stems:
            mask = _blob(32, 40, rng)
            (root / folder / "Imgs").mkdir(parents=True, exist_ok=True)
            (root / folder / "GT").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / folder / "Imgs" / f"{stem}.jpg"), rng.integers(0, 255, (32, 40, 3)).astype(np.uint8))
            cv2.imwrite(str(root / folder / "GT" / f"{stem}.png"), mask)
    config = build_config({}, [*TINY, f"data.root={root}", "train.epochs=1", "eval.plots=false", "eval.speed=false",
                               "data.split.train=0.7", "data.split.val=0.3", "data.split.test=0",
                               "model.seg.resize=keep_aspect",
                               f"output.root={tmp_path / 'runs'}", "name=sinet"])
    result = train(config, echo=_quiet)
    final = json.loads((result.run_dir / "final_results.json").read_text())
    assert set(final["results_per_set"]) == {"CAMO", "CHAMELEON"}
    assert final["training"]["test_images"] == 5
    table = (result.run_dir / "table_test.md").read_text()
    assert "| metric | CAMO | CHAMELEON | all |" in table
    maps = sorted(p.relative_to(result.run_dir / "predictions_test").as_posix()
                  for p in (result.run_dir / "predictions_test").rglob("*.png"))
    assert maps[0] == "CAMO/camourflage_00001.png" and len(maps) == 5
    # keep_aspect: 40x32 frames padded for the model, maps back at 40x32
    assert cv2.imread(str(result.run_dir / "predictions_test" / maps[0]), cv2.IMREAD_UNCHANGED).shape == (32, 40)


def _mfnet_tree(root: Path) -> Path:
    """MFNet: 4-channel PNGs (RGB + thermal), class-id labels (0-8), split lists."""
    rng = np.random.default_rng(2)
    stems = [f"{i:05d}D" for i in range(10)]
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for stem in stems:
        label = np.zeros((32, 40), np.uint8)
        label[8:20, 5:20] = 2  # person
        label[20:30, 22:38] = 1  # car
        image = rng.integers(0, 80, (32, 40, 4)).astype(np.uint8)
        image[..., 3][label == 2] = 220  # warm person
        cv2.imwrite(str(root / "images" / f"{stem}.png"), image)
        cv2.imwrite(str(root / "labels" / f"{stem}.png"), label)
    (root / "train.txt").write_text("\n".join(stems[:6]) + "\n")
    (root / "val.txt").write_text("\n".join(stems[6:8]) + "\n")
    (root / "test.txt").write_text("\n".join(stems[8:]) + "\n")
    return root


def test_rgbt_semantic_segmentation_on_mfnet(tmp_path: Path) -> None:
    root = _mfnet_tree(tmp_path / "MFNet")
    config = build_config({}, [*TINY, f"data.root={root}", "model.seg.decoder=mlp", "model.seg.mlp_dim=16",
                               "model.seg.loss.dice=0.5", "train.epochs=1", "eval.plots=false", "eval.speed=false",
                               f"output.root={tmp_path / 'runs'}", "name=mf"])
    result = train(config, echo=_quiet)
    final = json.loads((result.run_dir / "final_results.json").read_text())
    assert final["primary_metric"] == "mIoU" and final["training"]["test_images"] == 2
    assert {"mIoU", "pixel_acc", "IoU_car", "IoU_person"} <= set(final["results"])
    assert "loss_dice" in (result.run_dir / "metrics.csv").read_text().splitlines()[0]
    assert final["results_ci95"]["mIoU"][0] <= final["results"]["mIoU"] + 1e-9


def test_bad_masks_stop_the_run_before_training(tmp_path: Path) -> None:
    root = tmp_path / "rgbd"
    rng = np.random.default_rng(3)
    for i in range(4):
        for folder, channels in (("rgb", 3), ("depth", 1)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / folder / f"f{i}.png"), rng.integers(0, 255, (24, 32, channels)).astype(np.uint8))
        (root / "masks").mkdir(exist_ok=True)
        size = (24, 32) if i != 2 else (20, 32)
        cv2.imwrite(str(root / "masks" / f"f{i}.png"), (rng.random(size) > 0.5).astype(np.uint8))
    modalities = ("data.modalities=[{name: rgb, channels: 3, mean: [0.5,0.5,0.5], std: [0.5,0.5,0.5]},"
                  "{name: depth, channels: 1, mean: [0.5], std: [0.5]}]")
    config = build_config({}, [*TINY, f"data.root={root}", modalities, "model.streams=[[rgb],[depth]]",
                               f"output.root={tmp_path / 'runs'}"])
    with pytest.raises(DataError, match="f2.png"):
        train(config, echo=_quiet)
    assert not (tmp_path / "runs" / "run" / "checkpoints").exists()


def test_eval_select_picks_the_metric_and_its_direction() -> None:
    from types import SimpleNamespace

    from crossattentiondet.tasks import get_task

    task = get_task("segment")
    binary = SimpleNamespace(num_classes=2, class_names=["background", "object"])
    semantic = SimpleNamespace(num_classes=3, class_names=["unlabeled", "car", "person"])
    assert task.select_metric(build_config({}, ["task=segment"]), binary).metric == "Smeasure"
    assert task.select_metric(build_config({}, ["task=segment"]), semantic).metric == "mIoU"
    mae = task.select_metric(build_config({}, ["task=segment", "eval.select=MAE"]), binary)
    assert mae.lower_is_better and mae.score({"MAE": 0.1}) > mae.score({"MAE": 0.2})
    assert task.select_metric(build_config({}, ["task=segment", "eval.select=IoU_car"]), semantic).metric == "IoU_car"
    with pytest.raises(ConfigError, match="eval.select='mAP'"):
        task.select_metric(build_config({}, ["task=segment", "eval.select=mAP"]), binary)
    assert get_task("detect").select_metric(build_config({}, []), binary).metric == "mAP"


def test_detection_only_augmentations_are_refused_before_segmentation_training(tmp_path: Path) -> None:
    """Copy-paste and mosaic paste boxes, not masks: a segmentation run refuses them before any epoch."""
    config = build_config({}, [*TINY, f"output.root={tmp_path / 'runs'}", "train.epochs=1", "data.synthetic.images=8",
                               "data.synthetic.size=[48,48]", "data.augment.copy_paste.prob=0.5",
                               "data.augment.mosaic=0.3"])
    with pytest.raises(ConfigError, match=r"data\.augment\.mosaic, data\.augment\.copy_paste\.prob: detection only"):
        train(config, echo=_quiet)
    assert not list((tmp_path / "runs").glob("*/checkpoints/*.pt"))


def test_multi_scale_with_a_resizing_detector_is_refused() -> None:
    with pytest.raises(ConfigError, match="multi_scale has no effect with model.detector.resize=shorter_side"):
        build_config({}, ["data.augment.multi_scale=[64,128]", "model.detector.resize=shorter_side"])


def test_tiled_inference_is_refused_for_segmentation() -> None:
    with pytest.raises(ConfigError, match="eval.tile=64: tiled inference is for detection"):
        build_config({}, [*TINY, "eval.tile=64"])
