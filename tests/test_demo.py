"""`cadet demo` end to end, shrunk by overrides: data, both runs, REPORT.md with working image links, rerun."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from crossattentiondet.cli import main
from crossattentiondet.config import load_config
from crossattentiondet.io import read_json

TINY = ["data.synthetic.images=24", "data.synthetic.size=[96,64]", "train.epochs=1", "train.batch_size=4",
        "eval.panels=2", "eval.speed_iters=1"]


def test_demo_trains_both_models_and_writes_a_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "test mAP, fused" in printed and "test mAP, RGB only" in printed

    assert len(list((out / "data" / "images").glob("*.npy"))) == 24
    for name in ("fused", "rgb_only"):
        final = read_json(out / "runs" / name / "final_results.json")
        assert 0.0 <= final["results"]["mAP"] <= 1.0
    fused_cfg = read_json(out / "runs" / "fused" / "final_results.json")["config"]
    rgb_cfg = read_json(out / "runs" / "rgb_only" / "final_results.json")["config"]
    assert fused_cfg["model"]["streams"] == [["rgb"], ["thermal", "event"]]
    assert rgb_cfg["model"]["streams"] == [["rgb"]]
    # modality dropout is part of the fused recipe only; everything else is the same recipe
    assert fused_cfg["data"]["augment"]["modality_dropout"] > 0
    assert rgb_cfg["data"]["augment"]["modality_dropout"] == 0
    assert fused_cfg["train"] == rgb_cfg["train"]

    report = (out / "REPORT.md").read_text()
    assert "RGB only (single stream)" in report and "FRM+FFM" in report
    table = [line for line in report.splitlines() if line.startswith("| RGB")]
    assert len(table) == 2 and all(line.count("|") == table[0].count("|") for line in table)
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(links) >= 5
    for link in links:
        assert (out / link).is_file(), f"REPORT.md links to a missing file: {link}"

    # a second call reuses the data and the finished runs instead of starting over
    stamp = (out / "runs" / "fused" / "final_results.json").stat().st_mtime_ns
    assert main(["demo", "--out", str(out), *TINY]) == 0
    assert (out / "runs" / "fused" / "final_results.json").stat().st_mtime_ns == stamp


def test_demo_preset_is_the_augmented_fused_recipe() -> None:
    config = load_config("preset:demo")
    augment = config.data.augment
    assert augment.hflip > 0 and augment.scale_jitter is not None and augment.crop_prob > 0
    assert augment.modality_dropout > 0
    assert config.model.fusion.type == "frm_ffm" and config.model.fusion.stages == [1, 2, 3, 4]
