"""Segmentation layouts (cod10k, sinet, mfnet, folders): readers on generated trees, detection, splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crossattentiondet.config import DataConfig, ModalityConfig, SplitConfig
from crossattentiondet.errors import DataError
from crossattentiondet.segmentation.layouts import (
    MFNET_CLASSES,
    SegItem,
    SegSource,
    cod10k_name,
    detect_seg_layout,
    open_seg_source,
    seg_splits,
)
from tests.conftest import write_image

W, H = 32, 24
CAM = ["COD10K-CAM-1-Aquatic-1-BatFish-00001", "COD10K-CAM-1-Aquatic-1-BatFish-00002",
       "COD10K-CAM-2-Terrestrial-5-Cat-00003"]
NONCAM_TRAIN = ["COD10K-NonCAM-5-Background-1-Mountain-00004"]
CAM_TEST = ["COD10K-CAM-1-Aquatic-1-BatFish-00005", "COD10K-CAM-3-Flying-2-Bee-00006"]
NONCAM_TEST = ["COD10K-NonCAM-5-Background-1-Mountain-00007"]


def pixels(seed: int, channels: int = 3, dtype: type = np.uint8) -> np.ndarray:
    top = 256 if dtype == np.uint8 else 65536
    shape = (H, W) if channels == 1 else (H, W, channels)
    return np.random.default_rng(seed).integers(0, top, shape).astype(dtype)


def cod_gt(size: tuple[int, int] = (W, H)) -> np.ndarray:
    """An anti-aliased 0-255 GT as COD data sets ship them: 255 inside, a 100-valued rim (below the cut)."""
    width, height = size
    gt = np.zeros((height, width), np.uint8)
    gt[5:15, 5:20] = 255
    gt[4, 5:20] = 100
    gt[15, 5:20] = 200  # above 128: object
    return gt


def cod_folder(images: Path, masks: Path | None, names: list[str], ext: str = ".jpg") -> None:
    for i, name in enumerate(names):
        write_image(images / f"{name}{ext}", pixels(i))
        if masks is not None:
            write_image(masks / f"{name}.png", cod_gt())


def cod10k_tree(root: Path, image_dir: str = "Image", gt_dir: str = "GT_Object") -> Path:
    cod_folder(root / "Train" / image_dir, root / "Train" / gt_dir, CAM + NONCAM_TRAIN)
    cod_folder(root / "Test" / image_dir, root / "Test" / gt_dir, CAM_TEST + NONCAM_TEST)
    return root


def sinet_tree(root: Path) -> Path:
    cod_folder(root / "TrainDataset" / "Imgs", root / "TrainDataset" / "GT", CAM + ["camourflage_00001"])
    cod_folder(root / "TestDataset" / "COD10K" / "Imgs", root / "TestDataset" / "COD10K" / "GT", CAM_TEST)
    cod_folder(root / "TestDataset" / "CAMO" / "Imgs", root / "TestDataset" / "CAMO" / "GT",
               ["camourflage_00012", "camourflage_00020"])
    return root


def mfnet_label(seed: int) -> np.ndarray:
    label = np.random.default_rng(seed).integers(0, len(MFNET_CLASSES), (H, W)).astype(np.uint8)
    label[0, :4] = 255  # ignore
    return label


def mfnet_tree(root: Path, packed: bool = True, lists: bool = True) -> Path:
    stems = ["00001D", "00002D", "00003N", "00004N", "00005D"]
    for i, stem in enumerate(stems):
        if packed:
            write_image(root / "images" / f"{stem}.png", pixels(i, 4))
        else:
            write_image(root / "rgb" / f"{stem}.png", pixels(i, 3))
            write_image(root / "ther" / f"{stem}.png", pixels(i + 50, 1))
        write_image(root / "labels" / f"{stem}.png", mfnet_label(i))
    if lists:
        (root / "train.txt").write_text("00001D\n00002D.png\n")
        (root / "val.txt").write_text("00003N\n")
        (root / "test.txt").write_text("# test\n00004N\nabsent\n")
        (root / "test_day.txt").write_text("")
    return root


def folders_tree(root: Path, stems: tuple[str, ...] = ("a", "b", "c", "d"), partitions: bool = False) -> Path:
    for i, stem in enumerate(stems):
        part = ("train" if i % 2 == 0 else "test") if partitions else ""
        write_image(root / "rgb" / part / f"{stem}.png", pixels(i))
        write_image(root / "depth" / part / f"{stem}.png", pixels(i + 10, 1, np.uint16))
        mask = np.zeros((H, W), np.uint8)
        mask[2:10, 3:9] = 1
        write_image(root / "masks" / part / f"{stem}.png", mask)
    return root


RGB_DEPTH = DataConfig(modalities=[
    ModalityConfig(name="rgb", channels=3, mean=[0.5] * 3, std=[0.25] * 3),
    ModalityConfig(name="depth", channels=1, mean=[0.5], std=[0.25])])


def test_cod10k_name_parsing() -> None:
    assert cod10k_name("COD10K-CAM-1-Aquatic-1-BatFish-00001") == ("CAM", "Aquatic-BatFish")
    assert cod10k_name("COD10K-NonCAM-5-Background-1-Mountain-00004") == ("NonCAM", "Background-Mountain")
    assert cod10k_name("COD10K-CAM-4-Amphibian-3-Ghost-Pipe-00008") == ("CAM", "Amphibian-Ghost-Pipe")
    assert cod10k_name("camourflage_00012") == (None, "")


def test_cod10k_protocol_and_masks(tmp_path: Path) -> None:
    root = cod10k_tree(tmp_path / "COD10K-v3")
    assert detect_seg_layout(root) == "cod10k"
    source = open_seg_source(root, DataConfig())
    assert source.layout == "cod10k" and source.binary and source.class_names == ["background", "object"]
    assert source.modality_names == ["rgb"]
    train = sorted(s for s, item in source.items.items() if item.partition == "train")
    test = sorted(s for s, item in source.items.items() if item.partition == "test")
    assert train == CAM and test == CAM_TEST  # NonCAM: never tested on, not trained on by default
    notes = " ".join(source.notes)
    assert "1 NonCAM training images left out" in notes and "1 NonCAM test images are not used" in notes
    assert "thermal, event are not used" in notes
    assert source.items[CAM[2]].group == "Terrestrial-Cat" and source.sets() == ["cod10k"]
    assert not source.problems
    sample = source.read(CAM[0])
    assert sample.modalities["rgb"].shape == (H, W, 3) and sample.mask.dtype == np.uint8
    expected = (cod_gt() > 128).astype(np.uint8)
    np.testing.assert_array_equal(sample.mask, expected)  # the 100 rim is background, the 200 row object
    np.testing.assert_array_equal(source.read_mask(CAM[0]), expected)

    included = open_seg_source(root, DataConfig(cod={"include_noncam": True}))
    assert NONCAM_TRAIN[0] in included.items and included.items[NONCAM_TRAIN[0]].partition == "train"
    assert NONCAM_TEST[0] not in included.items  # NonCAM test images are never used
    assert any("1 NonCAM training images used" in n for n in included.notes)


def test_cod10k_folder_names_modalities_and_structure(tmp_path: Path) -> None:
    root = cod10k_tree(tmp_path / "cod", "Imgs", "GT")
    assert detect_seg_layout(root) == "cod10k"
    assert len(open_seg_source(root, DataConfig(layout="cod10k")).items) == 5
    thermal = DataConfig(modalities=[ModalityConfig(name="rgb", channels=3, mean=[0.5] * 3, std=[0.5] * 3),
                                     ModalityConfig(name="thermal", channels=1, mean=[0.5], std=[0.5])])
    with pytest.raises(DataError, match="layout cod10k has RGB images only"):
        open_seg_source(root, thermal)
    with pytest.raises(DataError, match="must name 2 classes"):
        open_seg_source(root, DataConfig(names=["background", "fish", "crab"]))
    bare = tmp_path / "bare"
    cod_folder(bare / "Train" / "Image", None, CAM)
    with pytest.raises(DataError, match=r"Train: no ground-truth folder \(expected Train/GT_Object/"):
        open_seg_source(bare, DataConfig(), "cod10k")
    unlabelled = open_seg_source(bare, DataConfig(), "cod10k", require_masks=False)
    assert len(unlabelled.items) == 3 and not unlabelled.problems
    assert unlabelled.read(CAM[0]).mask is None
    with pytest.raises(DataError, match="not a COD10K tree"):
        open_seg_source(tmp_path / "bare" / "Train", DataConfig(), "cod10k")


def test_sinet_pack_with_two_test_sets(tmp_path: Path) -> None:
    root = sinet_tree(tmp_path / "pack")
    assert detect_seg_layout(root) == "sinet"
    source = open_seg_source(root, DataConfig())
    assert source.sets() == ["CAMO", "COD10K", "sinet"]  # the COD tables' order
    assert source.items["CAMO/camourflage_00012"].set == "CAMO"
    assert source.items["CAMO/camourflage_00012"].partition == "test"
    assert source.items[f"COD10K/{CAM_TEST[0]}"].set == "COD10K"
    assert source.items[CAM[0]].group == "Aquatic-BatFish" and source.items["camourflage_00001"].group == ""
    assert sum(item.partition == "train" for item in source.items.values()) == 4
    assert source.read("CAMO/camourflage_00020").mask.max() == 1


def test_mfnet_packed_four_channel_images(tmp_path: Path) -> None:
    root = mfnet_tree(tmp_path / "mfnet")
    assert detect_seg_layout(root) == "mfnet"
    source = open_seg_source(root, DataConfig())
    assert source.modality_names == ["rgb", "thermal"] and not source.binary
    assert source.class_names == MFNET_CLASSES
    assert {s: i.partition for s, i in source.items.items()} == {"00001D": "train", "00002D": "train",
                                                                 "00003N": "val", "00004N": "test"}
    notes = " ".join(source.notes)
    assert "1 listed frames are not in the data set" in notes and "1 frames are in none of" in notes
    assert "test_day.txt" in notes and "'event' is not used" in notes
    sample = source.read("00002D")
    raw = pixels(1, 4)
    np.testing.assert_array_equal(sample.modalities["rgb"], raw[:, :, :3])
    np.testing.assert_array_equal(sample.modalities["thermal"], raw[:, :, 3:])
    np.testing.assert_array_equal(sample.mask, mfnet_label(1))  # class ids as stored, 255 kept
    named = open_seg_source(root, DataConfig(names=[f"c{i}" for i in range(9)]))
    assert named.class_names[0] == "c0"


def test_mfnet_separate_folders_without_lists(tmp_path: Path) -> None:
    root = mfnet_tree(tmp_path / "mf", packed=False, lists=False)
    assert detect_seg_layout(root) == "mfnet"
    source = open_seg_source(root, DataConfig())
    assert len(source.items) == 5 and all(i.partition is None for i in source.items.values())
    assert any("no train.txt" in n for n in source.notes)
    sample = source.read("00003N")
    np.testing.assert_array_equal(sample.modalities["thermal"][:, :, 0], pixels(52, 1))
    np.testing.assert_array_equal(sample.modalities["rgb"], pixels(2, 3))


def test_folders_rgb_depth_masks(tmp_path: Path) -> None:
    root = folders_tree(tmp_path / "rgbd")
    assert detect_seg_layout(root) == "folders"
    source = open_seg_source(root, RGB_DEPTH)
    assert source.modality_names == ["rgb", "depth"] and source.binary and not source.problems
    sample = source.read("b")
    assert sample.modalities["depth"].dtype == np.uint16 and sample.modalities["depth"].shape == (H, W, 1)
    assert sample.mask.sum() == 8 * 6 and sample.mask.max() == 1  # 0/1 ids kept as ids
    # default modalities: the ones with a folder are kept (noted)
    defaults = open_seg_source(root, DataConfig(layout="folders"))
    assert defaults.modality_names == ["rgb"] and any("thermal" in n for n in defaults.notes)
    # 0/255 masks are binarised; K > 2 names read class ids
    write_image(root / "masks" / "a.png", np.where(cod_gt() > 0, 255, 0).astype(np.uint8))
    assert source.read("a").mask.max() == 1
    semantic = open_seg_source(root, RGB_DEPTH.model_copy(update={"names": ["bg", "x", "y"]}))
    assert not semantic.binary and semantic.mask_mode == "ids"
    write_image(root / "masks" / "c.png", np.full((H, W), 7, np.uint8))
    with pytest.raises(DataError, match=r"c.png: values 7 outside the 3 classes \(ids 0..2, 255 = ignore\)"):
        semantic.read("c")
    partitioned = open_seg_source(folders_tree(tmp_path / "parts", partitions=True), RGB_DEPTH)
    assert {s: i.partition for s, i in partitioned.items.items()} == {"a": "train", "b": "test", "c": "train",
                                                                    "d": "test"}
    missing = tmp_path / "nomasks"
    write_image(missing / "rgb" / "a.png", pixels(0))
    with pytest.raises(DataError, match=r"nomasks/masks: mask folder not found"):
        open_seg_source(missing, DataConfig(), "folders")
    with pytest.raises(DataError, match=r"depth: folder of modality 'depth' not found"):
        open_seg_source(missing, RGB_DEPTH, "folders", require_masks=False)


def test_palette_png_masks_give_their_indices(tmp_path: Path) -> None:
    from PIL import Image

    root = folders_tree(tmp_path / "pal", stems=("a",))
    ids = np.zeros((H, W), np.uint8)
    ids[:, 10:] = 2
    image = Image.fromarray(ids, mode="P")
    image.putpalette([0, 0, 0, 200, 10, 10, 10, 200, 10] + [0] * (256 * 3 - 9))
    image.save(root / "masks" / "a.png")
    source = open_seg_source(root, RGB_DEPTH.model_copy(update={"names": ["bg", "x", "y"]}))
    np.testing.assert_array_equal(source.read("a").mask, ids)


def test_auto_detection_leaves_other_trees_alone(tmp_path: Path, trees) -> None:
    assert detect_seg_layout(trees.folders(frames=trees.default_frames(2))) is None  # detection folders
    assert detect_seg_layout(trees.npy()) is None  # images/*.npy + labels/*.txt
    assert detect_seg_layout(tmp_path / "absent") is None
    (tmp_path / "odd" / "stuff").mkdir(parents=True)
    with pytest.raises(DataError, match=r"cannot tell the segmentation layout \(found stuff/\)"):
        open_seg_source(tmp_path / "odd", DataConfig())
    with pytest.raises(DataError, match="layout 'llvip' is not a segmentation layout"):
        open_seg_source(tmp_path / "odd", DataConfig(), "llvip")


def test_listing_collects_every_pairing_problem(tmp_path: Path) -> None:
    root = folders_tree(tmp_path / "f", stems=("a", "b", "c"))
    (root / "masks" / "b.png").unlink()
    (root / "depth" / "c.png").unlink()
    write_image(root / "masks" / "zz.png", np.zeros((H, W), np.uint8))
    write_image(root / "rgb" / "a.jpg", pixels(0))
    source = open_seg_source(root, RGB_DEPTH)  # nothing raised
    found = {(p.kind, Path(p.path).name, p.severity) for p in source.problems}
    assert ("missing_mask", "b.png", "error") in found
    assert ("orphan_mask", "zz.png", "warning") in found
    assert ("missing_partner", "c.png", "error") in found
    assert ("duplicate_stem", "a.png", "error") in found
    with pytest.raises(DataError, match="missing mask: no ground truth for frame 'b'"):
        source.read("b")


def _cod_like_source(groups: dict[str, int], test: int) -> SegSource:
    """A COD10K-like source in memory: ``groups`` sub-class -> training images, plus ``test`` test images."""
    items = {}
    for group, count in groups.items():
        for i in range(count):
            stem = f"{group}-{i:04d}"
            items[stem] = SegItem(stem, {"rgb": Path(f"{stem}.jpg")}, {"rgb": None}, Path(f"{stem}.png"),
                                  "train", "cod10k", group)
    for i in range(test):
        stem = f"test-{i:04d}"
        items[stem] = SegItem(stem, {"rgb": Path(f"{stem}.jpg")}, {"rgb": None}, Path(f"{stem}.png"),
                              "test", "cod10k", "Aquatic-BatFish")
    return SegSource(Path("/nowhere"), "cod10k", [], ["background", "object"], True, items)


def test_splits_are_honest_stratified_and_seeded() -> None:
    groups = {"Aquatic-BatFish": 40, "Aquatic-Crab": 20, "Flying-Bee": 17, "Terrestrial-Cat": 3}
    source = _cod_like_source(groups, test=30)
    stems = list(source.items)
    split = SplitConfig()  # 0.7 / 0.15 / 0.15
    notes: list[str] = []
    out = seg_splits(source, split, stems, 7, notes=notes)
    assert out["test"] == sorted(s for s in stems if s.startswith("test-"))  # the test partition, untouched
    train_part = {s for s in stems if source.items[s].partition == "train"}
    assert set(out["val"]) <= train_part and set(out["train"]) <= train_part
    assert not set(out["train"]) & set(out["val"]) and set(out["train"]) | set(out["val"]) == train_part
    assert len(out["val"]) == round(80 * 0.15 / 0.85)  # 14 of the 80 training images
    for group, count in groups.items():  # every sub-class gives its share (within one image)
        in_val = sum(source.items[s].group == group for s in out["val"])
        assert abs(in_val - count * 0.15 / 0.85) < 1, group
    assert seg_splits(source, split, stems, 7) == out
    assert seg_splits(source, split, stems, 8)["val"] != out["val"]
    assert seg_splits(source, SplitConfig(seed=7), stems) == out  # seed defaults to split.seed
    assert "the data set's test partition" in notes[0] and "4 sub-class groups" in notes[0]
    # only usable frames are split
    fewer = seg_splits(source, split, stems[5:], 7)
    assert stems[0] not in {s for v in fewer.values() for s in v}
    with pytest.raises(DataError, match="not in the data set"):
        seg_splits(source, split, ["nope"], 7)


def test_splits_by_ratios_and_explicit_val(tmp_path: Path) -> None:
    items = {f"f{i:02d}": SegItem(f"f{i:02d}", {}, {}, None, None, "folders") for i in range(20)}
    source = SegSource(tmp_path, "folders", [], ["background", "object"], True, items)
    out = seg_splits(source, SplitConfig(train=0.6, val=0.2, test=0.2, group_by="none"), list(items), 0)
    assert [len(out[n]) for n in ("train", "val", "test")] == [12, 4, 4]
    assert sorted(out["train"] + out["val"] + out["test"]) == sorted(items)
    # without sub-classes, neighbouring frames stay together (group_by=auto: blocks of 10 consecutive frames,
    # or whole sequences when names carry one), as for detection
    blocks = seg_splits(source, SplitConfig(train=0.5, val=0.5, test=0.0), list(items), 0)
    assert sorted([blocks["train"], blocks["val"]]) == [[f"f{i:02d}" for i in range(10)],
                                                        [f"f{i:02d}" for i in range(10, 20)]]
    scenes = {f"scene{i // 4:04d}_{i:06d}": SegItem(f"scene{i // 4:04d}_{i:06d}", {}, {}, None, None, "folders")
              for i in range(40)}
    by_scene = seg_splits(SegSource(tmp_path, "folders", [], ["b", "o"], True, scenes), SplitConfig(), list(scenes), 0)
    owner = {stem: name for name, stems in by_scene.items() for stem in stems}
    assert all(len({owner[s] for s in scenes if s.startswith(f"scene{k:04d}")}) == 1 for k in range(10))
    tiny = {k: items[k] for k in list(items)[:3]}
    small = SegSource(tmp_path, "folders", [], ["b", "o"], True, tiny)
    three = seg_splits(small, SplitConfig(group_by="none"), list(tiny), 0)
    assert [len(v) for v in three.values()] == [1, 1, 1]  # every split gets a frame
    mfnet = open_seg_source(mfnet_tree(tmp_path / "mf"), DataConfig())
    out = seg_splits(mfnet, SplitConfig(), list(mfnet.items), 0)
    assert out == {"train": ["00001D", "00002D"], "val": ["00003N"], "test": ["00004N"]}  # val.txt as is


def test_split_files_override_but_cannot_leak_test(tmp_path: Path) -> None:
    source = _cod_like_source({"Aquatic-Crab": 10}, test=4)
    (tmp_path / "val.txt").write_text("Aquatic-Crab-0001\nAquatic-Crab-0002.jpg\n")
    source.root = tmp_path
    out = seg_splits(source, SplitConfig(val_file="val.txt"), list(source.items), 0)
    assert out["val"] == ["Aquatic-Crab-0001", "Aquatic-Crab-0002"]
    assert len(out["train"]) == 8 and len(out["test"]) == 4  # the rest: train partition -> train, test stays
    (tmp_path / "train.txt").write_text("Aquatic-Crab-0003\ntest-0001\n")
    with pytest.raises(DataError, match=r"train.txt: frame 'test-0001' belongs to the data set's test "):
        seg_splits(source, SplitConfig(train_file="train.txt"), list(source.items), 0)
    (tmp_path / "train.txt").write_text("ghost\n")
    with pytest.raises(DataError, match=r"1 listed frames are not in the data set \(first: ghost\)"):
        seg_splits(source, SplitConfig(train_file="train.txt"), list(source.items), 0)
