"""Benchmark 10: DETR head vs Faster R-CNN (default and small anchors) on the synthetic tiny-object scenes,
at equal CPU training time (issue 14; results in benchmarks/RESULTS.md, section 10).

Run by hand (tens of minutes), not a test:

    python benchmarks/bench_tiny_objects.py --out /tmp/tiny_bench_runs [--budget-s 240] [--seeds 0 1]
        [--images 400] [--size 320x240] [KEY=VALUE overrides for every model]

Data: ``cadet data synth --task tiny`` scenes (a 4-15 px ball, faint in rgb and hot in thermal, and 20-60 px
players; 70/15/15 train/val/test folders of the coco layout), written once into ``<out>/data``.
Models: the same small dual-stream encoder (the demo's mit_b0 at 16-128 channels, rgb | thermal, FRM+FFM,
random weights) under three heads, each trained for about ``--budget-s`` seconds of this machine's CPU:

- ``detr``: the DETR head on encoder levels 1-4 (stride 4 kept), compact (hidden 64, 1 encoder + 3 decoder
  layers, 100 queries);
- ``frcnn_default``: Faster R-CNN with torchvision's anchors (32-512 px);
- ``frcnn_small``: Faster R-CNN with preset:frcnn_tiny's anchors (8-181 px, two per level).

All three use the demo's AdamW recipe (lr 2e-3 heads and backbone alike: a random-weight encoder learns nothing
at preset:detr_tiny's 0.1x backbone lr in minutes); FRCNN heads are the demo's small ones. The epochs of each
model come from its measured training step time so that every model gets the same training time; the real
training time (the sum of metrics.csv's epoch_time_s) is printed beside the test metrics (best.pt by
validation mAP, COCO and AI-TOD size bins).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import time
from pathlib import Path

import torch

from crossattentiondet.config import load_config

ENCODER = ["model.backbone=mit_b0", "model.streams=[[rgb],[thermal]]", "model.mit.embed_dims=[16,32,64,128]",
           "model.mit.depths=[1,1,1,1]", "model.mit.num_heads=[1,2,4,8]", "model.drop_path_rate=0.0"]
RECIPE = ["train.batch_size=4", "train.lr=0.002", "train.optimizer.type=adamw", "train.optimizer.weight_decay=0.01",
          "train.optimizer.backbone_lr_mult=1.0", "train.schedule.type=cosine", "train.schedule.warmup_iters=20",
          "train.schedule.warmup_epochs=0", "train.schedule.min_lr=0.00002", "train.grad_clip=1.0",
          "train.precision=fp32", "train.device=cpu", "data.loader.num_workers=0", "data.augment.hflip=0.5",
          "eval.size_bins=both", "eval.robustness=false", "eval.speed=false", "eval.plots=false", "eval.panels=0",
          "eval.bootstrap=1000", "model.detector.detections_per_img=100"]
FRCNN_HEAD = ["model.detector.fpn_channels=32", "model.detector.box_head_dim=128",
              "model.detector.rpn.pre_nms_top_n_train=300", "model.detector.rpn.post_nms_top_n_train=150",
              "model.detector.rpn.pre_nms_top_n_test=300", "model.detector.rpn.post_nms_top_n_test=150",
              "model.detector.rpn.batch_size_per_image=64", "model.detector.roi.batch_size_per_image=32"]
MODELS = {
    "detr": ["model.detector.type=detr", "model.detector.detr.levels=[1,2,3,4]", "model.detector.detr.hidden_dim=64",
             "model.detector.detr.num_heads=4", "model.detector.detr.encoder_layers=1",
             "model.detector.detr.decoder_layers=3", "model.detector.detr.ffn_dim=256",
             "model.detector.detr.num_queries=100", "train.lr=0.0002", "train.grad_clip=0.1"],
    "frcnn_default": FRCNN_HEAD,
    "frcnn_small": [*FRCNN_HEAD, "model.detector.anchor_sizes=[[8,11],[16,23],[32,45],[64,91],[128,181]]"],
}
METRICS = ("mAP", "mAP_50", "mAP_verytiny", "mAP_tiny", "mAP_small_aitod", "mAP_small")


def step_time(overrides: list[str], size: tuple[int, int], batch: int, steps: int = 4) -> float:
    """Median seconds of a training step (forward + backward + AdamW) on random frames with a few boxes."""
    from crossattentiondet.engine.optim import build_optimizer
    from crossattentiondet.models import build_detector

    config = load_config(None, overrides + ["data.modalities=[{name: rgb, channels: 3, mean: [0.485, 0.456, 0.406], "
                                            "std: [0.229, 0.224, 0.225]}, {name: thermal, channels: 1, mean: [0.5], "
                                            "std: [0.5]}]"])
    torch.manual_seed(0)
    model = build_detector(config, 2, load_pretrained=False).train()
    optimizer = build_optimizer(model, config.train, config.train.lr)
    w, h = size
    images = [torch.randint(0, 255, (4, h, w), dtype=torch.uint8) for _ in range(batch)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 40.0, 60.0], [100.0, 50.0, 108.0, 58.0]]),
                "labels": torch.tensor([1, 2])} for _ in range(batch)]
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def train_time(run_dir: Path) -> float:
    with (run_dir / "metrics.csv").open(newline="", encoding="utf-8") as f:
        return sum(float(row["epoch_time_s"]) for row in csv.DictReader(f) if row.get("epoch_time_s"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget-s", type=float, default=240.0, help="training seconds per model and seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    import crossattentiondet as cad
    from crossattentiondet.data.synth_tiny import generate_tiny_dataset
    from crossattentiondet.engine.bootstrap import load_run_bootstrap

    w, h = (int(v) for v in args.size.lower().split("x"))
    data = args.out / "data"
    if not (data / "synth.json").is_file():
        generate_tiny_dataset(data, images=args.images, size=(w, h), seed=0)
    train_frames = len(list((data / "train" / "images").iterdir()))
    batch = 4
    rows = []
    for name in args.models:
        common = [*ENCODER, *RECIPE, *MODELS[name], *args.overrides]
        seconds = step_time(common, (w, h), batch)
        steps_per_epoch = math.ceil(train_frames / batch)
        epochs = max(1, round(args.budget_s / (seconds * steps_per_epoch)))
        print(f"{name}: {seconds:.3f} s/step at {w}x{h} batch {batch} -> {epochs} epochs of {steps_per_epoch} steps",
              flush=True)
        for seed in args.seeds:
            run_name = f"{name}_s{seed}"
            overrides = [*common, f"data.root={data}", "data.layout=coco", f"train.epochs={epochs}",
                         f"train.val_every={max(1, epochs // 4)}", f"seed={seed}", f"name={run_name}",
                         f"output.root={args.out / 'runs'}"]
            run_dir = args.out / "runs" / run_name
            if not (run_dir / "final_results.json").is_file():
                cad.train(overrides=overrides)
            test = json.loads((run_dir / "metrics.json").read_text())["test"]
            boot = load_run_bootstrap(run_dir)
            ci = list(boot.ci95) if boot is not None else None
            rows.append({"model": name, "seed": seed, "epochs": epochs, "step_s": round(seconds, 3),
                         "train_s": round(train_time(run_dir)), **{k: test.get(k) for k in METRICS},
                         "mAP_ci": ci})
            print(json.dumps(rows[-1]), flush=True)
    (args.out / "summary.json").write_text(json.dumps(rows, indent=1))
    print("\n| model | seed | epochs | train s | " + " | ".join(METRICS) + " |")
    print("|---|---|---|---|" + "---|" * len(METRICS))
    for r in rows:
        vals = " | ".join("n/a" if r[k] is None or r[k] != r[k] else f"{r[k]:.3f}" for k in METRICS)
        print(f"| {r['model']} | {r['seed']} | {r['epochs']} | {r['train_s']} | {vals} |")


if __name__ == "__main__":
    main()
