"""Warnings about a training recipe that will not work well, logged when a run starts (not errors: the user
may know better).

* A large MiT encoder (mit_b2 ... mit_b5) trained from scratch (``model.pretrained`` unset) on a small data
  set underfits: these encoders were designed for ImageNet pre-training, and from-scratch detection only
  catches up with pre-training on COCO-sized data with much longer schedules (He, Girshick and Dollar,
  "Rethinking ImageNet Pre-training", ICCV 2019); transformers need more data still, and frames of a video
  are near-duplicates, so a frame count overstates how much there is to learn from.
"""

from __future__ import annotations

from crossattentiondet.config import ExperimentConfig

LARGE_BACKBONES = ("mit_b2", "mit_b3", "mit_b4", "mit_b5")
SMALL_TRAIN_FRAMES = 50_000
"""Training frames below which a data set counts as small here: under half of COCO's 118k training images,
and above every RGB-thermal detection set this toolkit reads (LLVIP ~12k, FLIR-aligned ~4k, M3FD ~4k,
KAIST ~25k frames of train-all-02)."""


def recipe_warnings(config: ExperimentConfig, train_frames: int) -> list[str]:
    """Warnings (one line each, without the "warning:" prefix) for training ``config`` on ``train_frames``."""
    model = config.model
    out: list[str] = []
    custom_size = model.mit.embed_dims is not None or model.mit.depths is not None  # the user sized it
    if model.backbone in LARGE_BACKBONES and model.pretrained is None and model.init_from is None and not custom_size \
            and train_frames < SMALL_TRAIN_FRAMES:
        hub = model.backbone.replace("_", "-")
        out.append(f"model.backbone={model.backbone} trains from scratch (model.pretrained is unset) on "
                   f"{train_frames:,} training frames: an encoder this large underfits so little data in any usual "
                   f"schedule; set model.pretrained to ImageNet MiT weights (SegFormer {model.backbone}.pth or "
                   f"Hugging Face nvidia/{hub}), or use a smaller model.backbone")
    train = config.train
    if not train.phases and train.schedule.warmup_epochs >= train.epochs:
        out.append(f"train.schedule.warmup_epochs={train.schedule.warmup_epochs:g} is not shorter than "
                   f"train.epochs={train.epochs}: the run ends inside the warmup and never trains at train.lr "
                   "(shorten the warmup, e.g. train.schedule.warmup_epochs=0 for a quick run)")
    return out
