"""Data layer: layout detection, readers, presets, label formats, channel conversion, class names."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from crossattentiondet.config import DataConfig, ExperimentConfig, ModalityConfig
from crossattentiondet.data import check_dataset, detect_layout, open_source, prepare_data
from crossattentiondet.errors import DataError

QUIET = {"log": lambda _: None}


# ------------------------------------------------------------------------------------ detection
def test_detects_every_layout(trees) -> None:
    frames = trees.default_frames(2)
    assert detect_layout(trees.npy(frames=frames)) == "original"
    assert detect_layout(trees.folders("llvip", frames, folder_of={"rgb": "visible", "thermal": "infrared"},
                                       labels="voc")) == "llvip"
    flir = trees.folders("flir", frames, folder_of={"rgb": "JPEGImages", "thermal": "JPEGImages"},
                         suffix_of={"rgb": "_RGB", "thermal": "_PreviewData"}, ext=".jpg", labels="voc")
    assert detect_layout(flir) == "flir"
    assert detect_layout(trees.folders("m3fd", frames, folder_of={"rgb": "Vis", "thermal": "Ir"}, labels="voc",
                                       label_path="Annotation")) == "m3fd"
    assert detect_layout(trees.folders("generic", frames)) == "folders"


def test_unknown_layout_says_what_was_expected(tmp_path: Path) -> None:
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DataError, match=r"cannot tell the data layout.*stuff/.*--layout"):
        detect_layout(tmp_path)
    with pytest.raises(DataError, match="data root not found"):
        open_source(tmp_path / "missing")


# ------------------------------------------------------------------------------------ original layout
def test_original_layout_maps_channels_and_boxes(trees) -> None:
    root = trees.npy(frames={"a": [(0, 0.5, 0.5, 0.25, 0.5)], "b": [(1, 0.25, 0.25, 0.5, 0.5), (0, 0.5, 0.5, 1, 1)]},
                     classes=["person", "car"])
    source = open_source(root)
    assert source.layout == "original" and source.stems == ["a", "b"]
    assert source.class_names == ["person", "car"]
    raw = np.load(root / "images" / "b.npy")
    sample = source.read("b")
    assert sample.modalities["rgb"].shape == (32, 48, 3) and sample.modalities["rgb"].dtype == np.uint8
    np.testing.assert_array_equal(sample.modalities["rgb"], raw[:, :, :3])
    np.testing.assert_array_equal(sample.modalities["thermal"][:, :, 0], raw[:, :, 3])
    np.testing.assert_array_equal(sample.modalities["event"][:, :, 0], raw[:, :, 4])
    np.testing.assert_allclose(sample.boxes, [[0, 0, 24, 16], [0, 0, 48, 32]])
    assert sample.labels.tolist() == [2, 1]  # YOLO 0-based -> internal 1-based


def test_original_layout_uint16_and_legacy_folder_paths(trees, tmp_path: Path) -> None:
    root = trees.npy(dtype=np.uint16, frames=trees.default_frames(2))
    # the original JSON templates point at DATA/images and DATA/labels directly
    data = DataConfig(root=str(tmp_path), layout="original", images_dir=str(root / "images"),
                      labels=str(root / "labels"))
    source = open_source(tmp_path, data)
    sample = source.read("frame000")
    assert sample.modalities["thermal"].dtype == np.uint16
    assert check_dataset(source).scales == {"rgb": 65535.0, "thermal": 65535.0, "event": 65535.0}


def test_original_layout_needs_channel_indices(trees) -> None:
    root = trees.npy(frames=trees.default_frames(1))
    data = DataConfig(modalities=[ModalityConfig(name="rgb", channels=3, source="rgb", mean=[0.5] * 3, std=[0.5] * 3)])
    with pytest.raises(DataError, match="channel indices"):
        open_source(root, data, layout="original")


# ------------------------------------------------------------------------------------ paired folders
def test_folders_yolo_with_16bit_thermal(trees) -> None:
    root = trees.folders(frames={"f1": [(0, 0.5, 0.5, 0.5, 0.5)]})
    source = open_source(root)
    assert source.layout == "folders"
    assert source.modality_names == ["rgb", "thermal"]  # the default event modality has no folder: dropped
    assert any("event" in note for note in source.notes)
    sample = source.read("f1")
    thermal = cv2.imread(str(root / "thermal" / "f1.png"), cv2.IMREAD_UNCHANGED)
    assert sample.modalities["thermal"].dtype == np.uint16
    np.testing.assert_array_equal(sample.modalities["thermal"][:, :, 0], thermal)
    rgb = cv2.cvtColor(cv2.imread(str(root / "rgb" / "f1.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(sample.modalities["rgb"], rgb)
    np.testing.assert_allclose(sample.boxes, [[12, 8, 36, 24]])
    assert check_dataset(source).scales == {"rgb": 255.0, "thermal": 65535.0}


def test_user_modalities_must_all_be_found(trees) -> None:
    root = trees.folders(frames=trees.default_frames(1))
    data = DataConfig(modalities=[
        ModalityConfig(name="rgb", channels=3, mean=[0.5] * 3, std=[0.5] * 3),
        ModalityConfig(name="depth", channels=1, mean=[0.5], std=[0.5]),
    ])
    with pytest.raises(DataError, match="depth.*not found"):
        open_source(root, data, layout="folders")


def test_channel_conversion_on_read(trees) -> None:
    frames = {"f": [(0, 0.5, 0.5, 0.5, 0.5)]}
    # thermal stored as 3-channel, rgb stored as 1-channel
    root = trees.folders(frames=frames, modalities={"rgb": (1, np.uint8), "thermal": (3, np.uint8)})
    sample = open_source(root).read("f")
    gray = cv2.imread(str(root / "rgb" / "f.png"), cv2.IMREAD_UNCHANGED)
    assert sample.modalities["rgb"].shape == (32, 48, 3)
    for c in range(3):
        np.testing.assert_array_equal(sample.modalities["rgb"][:, :, c], gray)
    colour = cv2.cvtColor(cv2.imread(str(root / "thermal" / "f.png")), cv2.COLOR_BGR2RGB).astype(np.float64)
    luminance = colour @ np.array([0.299, 0.587, 0.114])
    assert sample.modalities["thermal"].shape == (32, 48, 1)
    assert np.abs(sample.modalities["thermal"][:, :, 0] - luminance).max() <= 1.0


def test_rgba_becomes_rgb_and_other_counts_are_errors(trees) -> None:
    frames = {"f": [(0, 0.5, 0.5, 0.5, 0.5)]}
    root = trees.folders(frames=frames, modalities={"rgb": (4, np.uint8), "thermal": (1, np.uint8)})
    rgba = cv2.cvtColor(cv2.imread(str(root / "rgb" / "f.png"), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGRA2RGBA)
    np.testing.assert_array_equal(open_source(root).read("f").modalities["rgb"], rgba[:, :, :3])
    data = DataConfig(modalities=[
        ModalityConfig(name="rgb", channels=3, mean=[0.5] * 3, std=[0.5] * 3),
        ModalityConfig(name="thermal", channels=2, mean=[0.5] * 2, std=[0.5] * 2),
    ])
    with pytest.raises(DataError, match=r"thermal.*f\.png: wrong channel count: 1 channels, modality 'thermal' needs 2"):
        open_source(root, data).read("f")


# ------------------------------------------------------------------------------------ label formats
def test_coco_labels(trees) -> None:
    frames = {"a": [(0, 0.5, 0.5, 0.5, 0.5)], "b": []}
    root = trees.folders(frames=frames, labels="coco")
    coco_path = root / "annotations.json"
    coco = json.loads(coco_path.read_text())
    coco["categories"] = [{"id": 7, "name": "car"}, {"id": 3, "name": "person"}]  # ids need not be contiguous
    coco["annotations"][0]["category_id"] = 7
    coco["annotations"].append({"id": 99, "image_id": 1, "category_id": 3, "bbox": [0, 0, 4, 4], "iscrowd": 1})
    coco_path.write_text(json.dumps(coco))
    source = open_source(root)
    assert source.labels.format == "coco"
    assert source.class_names == ["person", "car"]  # categories in id order
    a = source.read("a")
    np.testing.assert_allclose(a.boxes, [[12, 8, 36, 24]])
    assert a.labels.tolist() == [2]  # the crowd region is left out
    assert len(source.read("b").labels) == 0  # listed without annotations: a negative frame
    by_name = open_source(root, DataConfig(names=["car", "person"]))
    assert by_name.read("a").labels.tolist() == [1]


def test_label_path_and_format_must_agree(trees) -> None:
    root = trees.folders(frames=trees.default_frames(1), labels="coco")
    with pytest.raises(DataError, match="annotations.json: label format yolo needs a folder of YOLO files"):
        open_source(root, DataConfig(labels="annotations.json", label_format="yolo"))
    with pytest.raises(DataError, match=r"labels not found: .*nowhere \(data.labels\)"):
        open_source(root, DataConfig(labels="nowhere"))


def test_voc_labels_and_names(trees) -> None:
    frames = {"a": [(1, 0.5, 0.5, 0.5, 0.5), (0, 0.25, 0.25, 0.25, 0.25)]}
    root = trees.folders(frames=frames, labels="voc", classes=["person", "car"])
    source = open_source(root)
    assert source.labels.format == "voc"
    assert source.class_names == ["car", "person"]  # no preset: names found, sorted
    sample = source.read("a")
    np.testing.assert_allclose(sample.boxes, [[12, 8, 36, 24], [6, 4, 18, 12]])
    assert sample.labels.tolist() == [1, 2]
    fixed = open_source(root, DataConfig(names=["person", "car"]))
    assert fixed.read("a").labels.tolist() == [2, 1]


def test_yolo_names_from_config_classes_txt_or_ids(trees) -> None:
    frames = {"a": [(2, 0.5, 0.5, 0.5, 0.5)]}
    root = trees.npy(frames=frames)
    assert open_source(root).class_names == ["class_0", "class_1", "class_2"]  # up to the largest id seen
    assert open_source(root, DataConfig(names=["x", "y", "z"])).read("a").labels.tolist() == [3]
    (root / "classes.txt").write_text("p\nq\nr\n\n")
    assert open_source(root).class_names == ["p", "q", "r"]


def test_label_text_with_a_byte_order_mark(trees) -> None:
    bom = b"\xef\xbb\xbf"
    root = trees.folders(frames={"a": [(1, 0.5, 0.5, 0.5, 0.5)]})
    for path in (root / "classes.txt", root / "labels" / "a.txt"):
        path.write_bytes(bom + path.read_bytes())
    source = open_source(root)
    assert source.class_names == ["person", "car"]  # not '\ufeffperson'
    assert source.read("a").labels.tolist() == [2]
    coco = trees.folders("coco", frames={"a": [(0, 0.5, 0.5, 0.5, 0.5)]}, labels="coco")
    (coco / "annotations.json").write_bytes(bom + (coco / "annotations.json").read_bytes())
    assert open_source(coco).read("a").labels.tolist() == [1]


def test_npy_header_is_validated_before_loading(tmp_path: Path) -> None:
    from crossattentiondet.data.imageio import ImageFileError, read_npy_file

    good = np.arange(32 * 48 * 2, dtype=np.uint16).reshape(32, 48, 2)
    np.save(tmp_path / "c.npy", good)
    np.save(tmp_path / "f.npy", np.asfortranarray(good))
    with open(tmp_path / "v2.npy", "wb") as handle:  # version 2.0 header
        np.lib.format.write_array(handle, good, version=(2, 0))
    for name in ("c", "f", "v2"):
        np.testing.assert_array_equal(read_npy_file(tmp_path / f"{name}.npy"), good)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ImageFileError, match="array of Python objects") as info:
        read_npy_file(tmp_path / "obj.npy")
    assert info.value.kind == "bad_dtype"
    data = (tmp_path / "c.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[:-1])
    with pytest.raises(ImageFileError, match=r"cut.npy: unreadable or truncated .npy file: its header says shape "
                                             r"\(32, 48, 2\) uint16 \(6144 bytes\), the file holds 6143 bytes"):
        read_npy_file(tmp_path / "cut.npy")
    (tmp_path / "head.npy").write_bytes(data[:20])  # magic string, then a cut header
    with pytest.raises(ImageFileError, match="head.npy: not a valid .npy file"):
        read_npy_file(tmp_path / "head.npy")
    (tmp_path / "text.npy").write_text("not an array at all")
    with pytest.raises(ImageFileError, match=r"text.npy: not a valid .npy file \(no NumPy header\)"):
        read_npy_file(tmp_path / "text.npy")


# ------------------------------------------------------------------------------------ presets
def test_llvip_preset(trees) -> None:
    frames = {f"{i:06d}": [(0, 0.5, 0.5, 0.25, 0.5)] for i in (10001, 10002, 10003, 10004, 190001, 190002)}
    partition = {s: ("test" if s.startswith("19") else "train") for s in frames}
    # LLVIP's infrared JPEGs are 3-channel grey
    root = trees.folders("LLVIP", frames, modalities={"rgb": (3, np.uint8), "thermal": (3, np.uint8)},
                         folder_of={"rgb": "visible", "thermal": "infrared"}, ext=".jpg", labels="voc",
                         partition_of=partition, classes=["person"])
    source = open_source(root)
    assert source.layout == "llvip"
    assert source.modality_names == ["rgb", "thermal"]
    assert source.class_names == ["person"]
    assert source.partitions == partition
    assert source.read("190001").modalities["thermal"].shape == (32, 48, 1)
    config = ExperimentConfig(data=DataConfig(root=str(root)))
    prepared = prepare_data(config, **QUIET)
    assert prepared.splits["test"] == ["190001", "190002"]  # the data set's own test folder
    assert sorted(prepared.splits["train"] + prepared.splits["val"]) == ["010001", "010002", "010003", "010004"]
    resolved = prepared.resolved_config
    assert resolved.model.streams == [["rgb"], ["thermal"]]  # no event camera in LLVIP
    assert [(m.name, m.source, m.scale) for m in resolved.data.modalities] == [
        ("rgb", "visible", 255.0), ("thermal", "infrared", 255.0)]
    assert resolved.data.layout == "llvip" and resolved.model.num_classes == 1


def test_flir_aligned_preset(trees) -> None:
    frames = {f"FLIR_{i:05d}": [(0, 0.5, 0.5, 0.25, 0.5)] for i in (1, 2, 3, 8864, 8865)}
    root = trees.folders("FLIR_aligned", frames, folder_of={"rgb": "JPEGImages", "thermal": "JPEGImages"},
                         suffix_of={"rgb": "_RGB", "thermal": "_PreviewData"}, ext=".jpeg",
                         modalities={"rgb": (3, np.uint8), "thermal": (1, np.uint8)}, labels="voc",
                         classes=["person", "car"])
    (root / "align_train.txt").write_text("FLIR_00001_PreviewData\nFLIR_00002_PreviewData\nFLIR_00003_PreviewData\n")
    (root / "align_validation.txt").write_text("FLIR_08864_PreviewData\nFLIR_08865_PreviewData\n")
    source = open_source(root)
    assert source.layout == "flir"
    assert source.stems == sorted(frames)
    assert source.files["FLIR_00001"]["rgb"].name == "FLIR_00001_RGB.jpeg"
    assert source.label_of["FLIR_00001"] == "FLIR_00001_PreviewData"
    assert source.class_names == ["person", "car", "bicycle"]  # the usual FLIR-aligned order
    assert source.partitions["FLIR_08864"] == "test" and source.partitions["FLIR_00002"] == "train"
    assert check_dataset(source).ok
    prepared = prepare_data(ExperimentConfig(data=DataConfig(root=str(root))), **QUIET)
    assert prepared.splits["test"] == ["FLIR_08864", "FLIR_08865"]


def test_m3fd_preset(trees) -> None:
    frames = {f"{i:05d}": [(1, 0.5, 0.5, 0.25, 0.5)] for i in range(4)}
    root = trees.folders("M3FD_Detection", frames, folder_of={"rgb": "Vis", "thermal": "Ir"},
                         modalities={"rgb": (3, np.uint8), "thermal": (3, np.uint8)}, labels="voc",
                         label_path="Annotation", classes=["People", "Truck"])
    (root / "meta").mkdir()
    (root / "meta" / "test.txt").write_text("00003\n")
    source = open_source(root)
    assert source.layout == "m3fd"
    assert source.class_names == ["People", "Car", "Bus", "Motorcycle", "Lamp", "Truck"]
    assert source.read("00000").labels.tolist() == [6]
    assert source.partitions == {"00003": "test"}


def test_synthetic_folders_format_is_read_as_folders(tmp_path: Path) -> None:
    synth = pytest.importorskip("crossattentiondet.data.synth")
    root = synth.generate_dataset(tmp_path / "syn", 6, (64, 48), 2, "folders", 0)
    source = open_source(root)
    assert source.layout == "folders"
    assert source.modality_names == ["rgb", "thermal", "event"]
    report = check_dataset(source)
    assert report.ok, report.describe_errors()
    assert report.scales["thermal"] == 16383.0  # recorded in synth.json: 14-bit counts in 16-bit files
    assert source.read(source.stems[0]).modalities["thermal"].dtype == np.uint16


def test_explicit_folder_sources_with_suffix(trees) -> None:
    frames = {"a": [(0, 0.5, 0.5, 0.5, 0.5)]}
    root = trees.folders(frames=frames, folder_of={"rgb": "cam", "thermal": "cam"}, suffix_of={"thermal": "_ir"})
    data = DataConfig(modalities=[
        ModalityConfig(name="rgb", channels=3, source="cam", mean=[0.5] * 3, std=[0.5] * 3),
        ModalityConfig(name="thermal", channels=1, source="cam", suffix="_ir", mean=[0.5], std=[0.5]),
    ])
    # "cam/a.png" and "cam/a_ir.png" share a folder: the suffix tells them apart
    source = open_source(root, data, layout="folders")
    assert source.stems == ["a"]
    assert source.read("a").modalities["thermal"].dtype == np.uint16
    assert check_dataset(source).ok
