"""Shared test fixtures."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
import pytest

Box = tuple[int, float, float, float, float]  # YOLO: class xc yc w h (normalised)


def write_image(path: Path, array: np.ndarray) -> Path:
    """Write (H, W) or (H, W, 3|4) RGB(A) uint8/uint16 with OpenCV (which wants BGR)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = cv2.cvtColor(array, cv2.COLOR_RGBA2BGRA)
    assert cv2.imwrite(str(path), array), path
    return path


class DataTrees:
    """Writes tiny data sets (a few 48x32 frames) in the layouts the data layer reads."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.rng = np.random.default_rng(0)

    def pixels(self, height: int, width: int, channels: int, dtype: type = np.uint8) -> np.ndarray:
        top = 255 if dtype == np.uint8 else 65535
        shape = (height, width) if channels == 1 else (height, width, channels)
        return self.rng.integers(0, top + 1, shape, dtype=np.int64).astype(dtype)

    @staticmethod
    def default_frames(n: int = 6) -> dict[str, list[Box]]:
        return {f"frame{i:03d}": [(i % 2, 0.5, 0.5, 0.25, 0.5)] for i in range(n)}

    @staticmethod
    def yolo_text(boxes: Iterable[Box]) -> str:
        return "".join(f"{c} {xc} {yc} {w} {h}\n" for c, xc, yc, w, h in boxes)

    def npy(self, name: str = "orig", frames: dict[str, list[Box]] | None = None, size: tuple[int, int] = (48, 32),
            channels: int = 5, dtype: type = np.uint8, classes: list[str] | None = None) -> Path:
        """Original layout: images/<stem>.npy (H, W, channels) + labels/<stem>.txt (+ classes.txt)."""
        root = self.tmp / name
        (root / "images").mkdir(parents=True)
        (root / "labels").mkdir()
        width, height = size
        for stem, boxes in (frames if frames is not None else self.default_frames()).items():
            np.save(root / "images" / f"{stem}.npy", self.pixels(height, width, channels, dtype).reshape(height, width, -1))
            (root / "labels" / f"{stem}.txt").write_text(self.yolo_text(boxes))
        if classes:
            (root / "classes.txt").write_text("\n".join(classes) + "\n")
        return root

    def folders(self, name: str = "folders", frames: dict[str, list[Box]] | None = None,
                size: tuple[int, int] = (48, 32), modalities: dict[str, tuple[int, type]] | None = None,
                folder_of: dict[str, str] | None = None, suffix_of: dict[str, str] | None = None,
                ext: str = ".png", labels: str = "yolo", label_path: str | None = None,
                partition_of: dict[str, str] | None = None, classes: list[str] | None = None) -> Path:
        """Paired folders: <folder>/[<partition>/]<stem><suffix><ext> per modality + labels (yolo/coco/voc)."""
        root = self.tmp / name
        root.mkdir(parents=True)
        modalities = modalities or {"rgb": (3, np.uint8), "thermal": (1, np.uint16)}
        frames = frames if frames is not None else self.default_frames()
        classes = classes or ["person", "car"]
        width, height = size
        for modality, (channels, dtype) in modalities.items():
            folder = root / (folder_of or {}).get(modality, modality)
            for stem in frames:
                part = (partition_of or {}).get(stem)
                target = folder / part if part else folder
                suffix = (suffix_of or {}).get(modality, "")
                write_image(target / f"{stem}{suffix}{ext}", self.pixels(height, width, channels, dtype))
        if labels == "yolo":
            label_dir = root / (label_path or "labels")
            label_dir.mkdir(parents=True)
            for stem, boxes in frames.items():
                (label_dir / f"{stem}.txt").write_text(self.yolo_text(boxes))
            (root / "classes.txt").write_text("\n".join(classes) + "\n")
        elif labels == "coco":
            images, annotations = [], []
            for image_id, (stem, boxes) in enumerate(frames.items(), start=1):
                images.append({"id": image_id, "file_name": f"{stem}{ext}", "width": width, "height": height})
                for c, xc, yc, w, h in boxes:
                    annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": c + 1,
                                        "bbox": [(xc - w / 2) * width, (yc - h / 2) * height, w * width, h * height],
                                        "iscrowd": 0})
            categories = [{"id": i + 1, "name": n} for i, n in enumerate(classes)]
            path = root / (label_path or "annotations.json")
            path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
        elif labels == "voc":
            label_dir = root / (label_path or "Annotations")
            label_dir.mkdir(parents=True)
            label_suffix = (suffix_of or {}).get("thermal", "")
            for stem, boxes in frames.items():
                objects = "".join(
                    f"<object><name>{classes[c]}</name><difficult>0</difficult><bndbox>"
                    f"<xmin>{(xc - w / 2) * width:g}</xmin><ymin>{(yc - h / 2) * height:g}</ymin>"
                    f"<xmax>{(xc + w / 2) * width:g}</xmax><ymax>{(yc + h / 2) * height:g}</ymax></bndbox></object>"
                    for c, xc, yc, w, h in boxes)
                (label_dir / f"{stem}{label_suffix}.xml").write_text(
                    f"<annotation><filename>{stem}.jpg</filename><size><width>{width}</width>"
                    f"<height>{height}</height><depth>3</depth></size>{objects}</annotation>")
        return root


@pytest.fixture
def trees(tmp_path: Path) -> DataTrees:
    """Builder of tiny data-set folders in ``tmp_path`` (see :class:`DataTrees`)."""
    return DataTrees(tmp_path)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One tiny detector trained for one epoch on 10 8-bit .npy frames (64x64, classes person and car), shared
    by every test that only reads a finished run: (run directory, data root). Do not write into it."""
    from crossattentiondet.config import load_config
    from crossattentiondet.engine.trainer import train
    from tests.test_train import TINY, frames

    tmp = tmp_path_factory.mktemp("tiny_run")
    root = DataTrees(tmp).npy("data", frames=frames(10), size=(64, 64), classes=["person", "car"])
    result = train(load_config(None, [*TINY, f"data.root={root}", f"output.root={tmp / 'runs'}", "name=tiny",
                                      "train.epochs=1", "eval.panels=2"]))
    return result.run_dir, root
