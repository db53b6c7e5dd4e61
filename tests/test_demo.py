"""`cadet demo` end to end, shrunk by overrides: data, every model, REPORT.md with the ranking, rerun."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from crossattentiondet.cli import main
from crossattentiondet.config import load_config
from crossattentiondet.demo import VARIANTS, Comparison, headline
from crossattentiondet.io import read_json

TINY = ["data.synthetic.images=60", "data.synthetic.size=[64,48]", "train.epochs=1", "train.batch_size=4",
        "model.mit.embed_dims=[8,16,24,32]", "model.mit.num_heads=[1,2,2,4]", "model.detector.fpn_channels=16",
        "model.detector.box_head_dim=32", "model.detector.rpn.batch_size_per_image=32",
        "model.detector.roi.batch_size_per_image=32", "model.detector.rpn.post_nms_top_n_test=50",
        "eval.panels=2", "eval.speed=false", "eval.bootstrap=200", "eval.robustness=false",
        "output.tensorboard=false"]


@pytest.mark.slow
def test_demo_trains_every_model_and_ranks_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "verdict: the fused model" in printed and "95% CI" in printed
    for name in VARIANTS:
        assert f"fused - {name}" in printed or name == "fused"

    configs = {}
    for name in VARIANTS:
        run = out / "runs" / f"{name}_seed0"
        final = read_json(run / "final_results.json")
        assert 0.0 <= final["results"]["mAP"] <= 1.0
        assert (run / "bootstrap_test.json").is_file()
        configs[name] = final["config"]
    fused_streams = load_config("preset:demo").model.streams
    assert len(fused_streams) == 2 and configs["fused"]["model"]["streams"] == fused_streams
    assert configs["early"]["model"]["streams"] == [["rgb", "thermal", "event"]]
    for single in ("rgb", "thermal", "event"):
        assert configs[single]["model"]["streams"] == [[single]]
    # one recipe for all: augmentation (modality dropout included), model and training are identical
    for name, config in configs.items():
        assert config["model"]["detector"] == configs["fused"]["model"]["detector"], name
        assert config["model"]["mit"] == configs["fused"]["model"]["mit"], name
        assert config["data"]["augment"] == configs["fused"]["data"]["augment"], name
        assert config["train"] == configs["fused"]["train"], name
        assert config["data"]["split"] == configs["fused"]["data"]["split"], name

    report = (out / "REPORT.md").read_text()
    ranking = [line for line in report.splitlines() if re.match(r"\| [1-5] \|", line)]
    assert len(ranking) == 5 and all(line.count("|") == ranking[0].count("|") for line in ranking)
    maps = [float(line.split("|")[3]) for line in ranking]
    assert maps == sorted(maps, reverse=True)  # ranked by test mAP
    assert all(re.search(r"\| \d\.\d{3}-\d\.\d{3} \|", line) for line in ranking)  # each with its CI
    assert len([line for line in report.splitlines() if line.startswith("| fused - ")]) == 4
    assert "1 seed: the interval covers test-image sampling only" in report
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(links) >= 4
    for link in links:
        if "robustness" not in link:
            assert (out / link).is_file(), f"REPORT.md links to a missing file: {link}"

    # a second call reuses the data and the finished runs instead of starting over
    stamp = (out / "runs" / "fused_seed0" / "final_results.json").stat().st_mtime_ns
    assert main(["demo", "--out", str(out), *TINY]) == 0
    assert (out / "runs" / "fused_seed0" / "final_results.json").stat().st_mtime_ns == stamp


def test_demo_rejects_zero_seeds(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--seeds", "0"])
    assert "must be at least 1" in capsys.readouterr().err


def test_headline_says_which_way_it_came_out() -> None:
    win = [Comparison("rgb", 0.2, (0.1, 0.3), "fused better"), Comparison("thermal", 0.1, (0.02, 0.2), "fused better")]
    assert "beats every single modality" in headline(win)
    mixed = [Comparison("rgb", 0.2, (0.1, 0.3), "fused better"),
             Comparison("thermal", -0.1, (-0.2, -0.05), "thermal better"),
             Comparison("early", 0.01, (-0.02, 0.04), "within noise")]
    text = headline(mixed)
    assert "beats rgb" in text and "loses to thermal" in text and "cannot be told apart from early" in text


def test_demo_preset_uses_one_recipe_for_every_model() -> None:
    config = load_config("preset:demo")
    augment = config.data.augment
    assert augment.hflip > 0 and augment.scale_jitter is not None and augment.crop_prob > 0
    assert config.model.fusion.type == "frm_ffm" and config.model.fusion.stages == [1, 2, 3, 4]
    # the variants change only the input streams
    assert all(all(o.startswith("model.streams=") for o in extra) for _, extra in VARIANTS.values())
    # a test split of several hundred frames
    assert config.data.synthetic.images * config.data.split.test >= 300
