"""The training loop. Reads top to bottom: data -> model -> optimizer -> resume -> epochs -> test.

One call of :func:`train` is one run in one directory (``<output.root>/<name>``). It is resumable from
``checkpoints/last.pt`` with identical results, works on CPU and CUDA, and under ``torchrun`` (DDP: only
rank 0 writes, metrics are gathered from all ranks).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from crossattentiondet.config import (
    ConfigError,
    ExperimentConfig,
    build_config,
    config_to_dict,
    diff_configs,
    save_config,
)
from crossattentiondet.engine.checkpoint import load_checkpoint, save_checkpoint
from crossattentiondet.engine.ema import ModelEMA
from crossattentiondet.engine.freeze import set_frozen_stages
from crossattentiondet.engine.init_weights import load_init_weights, read_init_weights
from crossattentiondet.engine.optim import build_optimizer
from crossattentiondet.engine.phases import Phase, PhaseSchedule, phase_of, resolve_phases
from crossattentiondet.engine.recipe_checks import recipe_warnings
from crossattentiondet.engine.runlock import RunLock, lock_run_dir, takeover_message
from crossattentiondet.engine.runlog import (
    RunLog,
    ThrottledProgress,
    TrainingClock,
    format_duration,
    iteration_line,
    stdout_is_terminal,
)
from crossattentiondet.engine.runtime import (
    DistInfo,
    all_reduce_mean,
    autocast,
    barrier,
    check_precision,
    compile_backbone,
    configure_backends,
    init_distributed,
    main_first,
    precision_notes,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
    use_channels_last,
)
from crossattentiondet.errors import RunLockedError, TrainingError
from crossattentiondet.io import remove_stale_temp_files
from crossattentiondet.seed003 import notes_for as seed_notes_for

# keys that may change when a run is resumed (they do not change what is being trained)
RESUMABLE_CHANGES = ("train.epochs", "train.device", "train.find_unused_parameters", "train.log_every", "train.print_every",
                     "train.iteration_csv", "train.cudnn_benchmark", "data.loader.", "output.", "eval.")
# ...except these: the best score so far was measured with the run's own selection metric
FIXED_ON_RESUME = ("eval.select",)


@dataclass
class TrainState:
    """Counters saved in last.pt; with the RNG states they make a resumed run identical."""

    epoch: int = 0  # epochs completed
    global_step: int = 0  # optimizer updates attempted (the schedule's clock)
    best_metric: float = -math.inf
    best_epoch: int = 0
    skipped_total: int = 0
    bad_streak: int = 0
    overflow_total: int = 0  # fp16: updates the GradScaler skipped (gradient overflow), not counted above
    overflow_streak: int = 0
    stale_validations: int = 0
    train_time_s: float = 0.0
    stopped_early: bool = False


@dataclass
class RunResult:
    run_dir: Path
    state: TrainState
    finished: bool
    test_metrics: dict[str, float] = field(default_factory=dict)
    val_metrics: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ entry point
def train(config: ExperimentConfig | None, *, resume: bool | str | Path = False, stop_after_epoch: int | None = None,
          echo: Callable[[str], None] = print, overrides: list[str] | None = None) -> RunResult:
    """Train (or resume) the run described by ``config``; returns where it is and its final metrics.

    ``resume=True`` continues ``<run_dir>/checkpoints/last.pt``; a path names a run directory or checkpoint
    (``config`` may then be None: the run's own config is used, changed by ``overrides``).
    ``stop_after_epoch`` ends this session after that many completed epochs (as if interrupted), leaving a
    resumable run: used for time-boxed jobs and by the resume tests.
    """
    started = time.time()
    checkpoint = None
    if config is None and overrides and resume not in (False, True):
        config = resume_config(resume, overrides)  # `--resume runs/x train.epochs=30`
    if resume:
        checkpoint = load_checkpoint(_resume_path(resume, config))
        if "training" not in checkpoint:
            raise TrainingError(f"{checkpoint['path']} has no training state (only last.pt can be resumed)")
        user_config = _config_for_resume(checkpoint, config)
        run_dir = Path(checkpoint["path"]).parent.parent
    elif config is None:
        raise ConfigError("no config to train (give --config or overrides, or --resume a run)")
    else:
        user_config = _free_default_name(config, echo)
        run_dir = user_config.run_dir
    info = init_distributed(user_config.train.device)
    device = resolve_device(user_config.train.device, info)
    check_precision(user_config.train.precision, device)
    backend_notes = configure_backends(user_config.train.tf32, user_config.train.deterministic,
                                       user_config.train.cudnn_benchmark)
    if user_config.train.cudnn_benchmark and device.type != "cuda":
        backend_notes.append(f"train.cudnn_benchmark=true has no effect on {device.type} (cuDNN is CUDA's)")
    # before anything is written: a second process on this run directory stops here, naming the holder
    lock = _lock_run(run_dir, info, device)
    try:
        if checkpoint is not None:
            if checkpoint["epoch"] >= user_config.train.epochs and (run_dir / "final_results.json").is_file():
                echo(f"run {run_dir} already finished ({checkpoint['epoch']} epochs); nothing to do")
                return _finished_result(run_dir, checkpoint)
        elif (run_dir / "checkpoints" / "last.pt").exists():
            raise ConfigError(f"run directory {run_dir} already has a checkpoint: continue it with --resume, or "
                              "choose another name=... / output.root=...")

        if info.is_main:  # a process killed mid-write leaves hidden temp files; this run owns the folder now
            for folder in (run_dir, run_dir / "checkpoints", run_dir / "plots"):
                remove_stale_temp_files(folder, older_than=started)
        log = RunLog(run_dir, info.is_main, tensorboard=user_config.output.tensorboard,
                     iteration_csv=user_config.train.iteration_csv, mlflow=user_config.output.mlflow, echo=echo)
        if (note := takeover_message(lock)) is not None:
            log.info(f"warning: {note}")
        for note in backend_notes:
            log.info(f"note: {note}")
        # a seed-003 file's translation notes were shown when it was loaded; the run's log keeps them too
        for note in seed_notes_for(config_to_dict(user_config)):
            log.info(f"note: {note}", echo=False)
        cleanup: list[Callable[[], None]] = []
        try:
            return _run(user_config, checkpoint, run_dir, info, device, log, stop_after_epoch, cleanup)
        finally:
            for close in cleanup:  # stop DataLoader workers even when the run fails
                close()
            log.close()
    finally:
        lock.release()


def _run(user_config: ExperimentConfig, checkpoint: dict[str, Any] | None, run_dir: Path, info: DistInfo,
         device: torch.device, log: RunLog, stop_after_epoch: int | None,
         cleanup: list[Callable[[], None]]) -> RunResult:
    from crossattentiondet.tasks import get_task

    task = get_task(user_config.task)  # what is learned: data, model, losses, metrics (tasks/)
    cfg_train = user_config.train
    log.info(f"run {run_dir} on {device}{f' x{info.world_size} (DDP)' if info.enabled else ''}, "
             f"precision {cfg_train.precision}" + (" (resumed)" if checkpoint else ""))
    for note in precision_notes(device, cfg_train.precision):
        log.info(f"warning: {note}")
    seed_everything(user_config.seed)
    phases = resolve_phases(cfg_train, info.world_size)
    # a bad model.init_from fails here, before the data is checked or prepared
    init = read_init_weights(user_config.model.init_from) if user_config.model.init_from and checkpoint is None \
        else None

    # ---- data: check first, then splits and loaders (rank 0 prepares caches, the others wait)
    with main_first(info):
        data = task.prepare_data(user_config, run_dir if info.is_main else None, log=log.info)
    config = data.resolved_config
    if info.is_main:
        save_config(config, run_dir / "config.yaml")
    if not data.splits.get("train"):
        raise TrainingError(f"the train split of {data.root} is empty; check data.split")
    # validation metrics are per image: the validation batch does not change them, so it stays one size
    eval_batch = user_config.eval.batch_size or phases[0].batch_size
    has_val = bool(data.splits.get("val"))
    val_loader = data.loader("val", False, eval_batch, distributed=info.enabled) if has_val else None
    if val_loader is not None:
        cleanup.append(val_loader.close)
    if not has_val:
        log.info("warning: no validation split (data.split.val=0): best.pt is the last epoch, no early stopping")

    # ---- model, optimizer, schedule, scaler, EMA
    selection = task.select_metric(config, data)  # before any training: a bad eval.select fails now
    model = task.build_model(config, data.num_classes, load_pretrained=checkpoint is None).to(device)
    if init is not None:
        for line in load_init_weights(model, init).lines(init):
            log.info(line)
    if cfg_train.channels_last:
        model = use_channels_last(model)  # the weights and the batched inputs (not the weights only)
    if cfg_train.compile:
        compile_backbone(model, cfg_train.compile_backend)
    # one optimizer for the whole run, every parameter registered (frozen ones too): its state carries on
    # across phases and unfreezing; the PhaseSchedule sets every group's lr
    optimizer = build_optimizer(model, cfg_train, phases[0].lr)
    schedule = PhaseSchedule(optimizer)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg_train.precision == "fp16")
    ema = ModelEMA(model, cfg_train.ema.decay) if cfg_train.ema.enabled else None
    state = TrainState()
    log.info(f"{task.describe(config, data)}; train/val/test = {len(data.splits['train'])}/{len(data.splits.get('val', []))}/"
             f"{len(data.splits.get('test', []))} frames")
    first = phases[cfg_train.start_phase - 1]
    for phase in phases:
        skipped = f" (skipped: train.start_phase={cfg_train.start_phase})" if phase.index < first.index else ""
        log.info(phase.describe(len(phases), info.world_size, skipped) if len(phases) > 1 or cfg_train.phases else
                 f"effective batch {phase.effective_batch(info.world_size)} (batch {phase.batch_size} x accumulation "
                 f"{phase.accumulation} x {info.world_size} process(es)), lr {phase.lr:g}")
    for note in recipe_warnings(config, len(data.splits["train"])):  # e.g. a large backbone from scratch
        log.info(f"warning: {note}")

    # ---- resume, or start (at train.start_phase: the earlier phases are skipped)
    if checkpoint is not None:
        training = checkpoint["training"]
        model.load_state_dict(training["model"])
        optimizer.load_state_dict(training["optimizer"])
        scaler.load_state_dict(training["scaler"])
        if ema is not None:
            ema.load_state_dict(training["ema"])
        state = TrainState(**training["state"])
        set_rng_state(training["rng"])
        log.resume_from(state.epoch, training.get("metrics_rows"))
        log.info(f"resumed from {checkpoint['path']} after epoch {state.epoch} (step {state.global_step})")
    else:
        log.params(_flatten(config_to_dict(config)))
        if first.index > 0:
            state.epoch = first.start_epoch
            log.info(f"starting at phase {first.index + 1} ({first.name}, epoch {first.start_epoch + 1}); "
                     f"{'weights from model.init_from' if init else 'warning: no model.init_from, so it starts from the initial weights'}")
        if ema is not None and init is not None:
            ema = ModelEMA(model, cfg_train.ema.decay)  # the average starts from the loaded weights

    ckpt_dir = run_dir / "checkpoints"
    eval_model = ema.module if ema is not None else model
    frozen: list[int] | None = None
    ddp_model: nn.Module = model
    # a mixture of experts leaves the experts no image chose without a gradient: DDP must look for them
    find_unused = cfg_train.find_unused_parameters or (config.task == "segment" and config.model.seg.moe.enabled)
    phase: Phase | None = None
    train_loader: Any = None
    micro_batches = 0
    clock = TrainingClock(cfg_train.epochs, 1)
    session_start = state.epoch
    for epoch in range(state.epoch, cfg_train.epochs):
        if phase is None or epoch >= phase.end_epoch:  # a phase starts (or a session resumes inside one)
            phase = phase_of(phases, epoch)
            if train_loader is not None:
                train_loader.close()
            train_loader = data.loader("train", True, phase.batch_size, distributed=info.enabled, seed=user_config.seed)
            cleanup.append(train_loader.close)
            micro_batches = _micro_batches(train_loader, phase, cfg_train.max_iters_per_epoch, data)
            schedule.start(phase, math.ceil(micro_batches / phase.accumulation), epoch)
            clock = TrainingClock(cfg_train.epochs, micro_batches)  # the ETAs of the iteration and epoch lines
            if epoch == phase.start_epoch:  # early stopping judges each phase on its own validations
                state.stale_validations = 0
            if len(phases) > 1 and epoch == phase.start_epoch and epoch > session_start:  # listed at the start
                log.info(f"epoch {epoch + 1}: phase {phase.index + 1}/{len(phases)} {phase.name} starts: batch "
                         f"{phase.batch_size} x accumulation {phase.accumulation}, lr {phase.lr:.3g}")
        stages = phase.frozen_stages(epoch, cfg_train.freeze)
        if stages != frozen:
            set_frozen_stages(model, stages, cfg_train.freeze.include_fusion)
            if stages or frozen:
                log.info(f"epoch {epoch + 1}: encoder stages frozen: {stages or 'none'}")
            frozen = stages
            ddp_model = _wrap_ddp(model, info, device, find_unused)  # DDP must see the current requires_grad flags
        epoch_start = time.perf_counter()
        clock.start_epoch()
        stats = _train_one_epoch(ddp_model, model, ema, optimizer, schedule, scaler, train_loader, micro_batches,
                                 epoch, state, config, info, device, log, clock, task.loss_keys(config),
                                 phase.accumulation)
        clock.end_training()
        state.epoch = epoch + 1
        state.train_time_s += time.perf_counter() - epoch_start
        row: dict[str, Any] = {"epoch": epoch + 1, **stats, "frozen_stages": stages,
                               "epoch_time_s": time.perf_counter() - epoch_start}
        if len(phases) > 1:
            row["phase"] = phase.name
        if (model_stats := _model_epoch_stats(model, info)):  # e.g. the MoE's per-expert load
            row.update(model_stats)
            if hasattr(model, "describe_epoch_stats"):
                log.info(f"epoch {epoch + 1}: {model.describe_epoch_stats(model_stats)}")

        # ---- validation, best checkpoint, early stopping
        validate_now = has_val and (state.epoch % cfg_train.val_every == 0 or state.epoch == cfg_train.epochs)
        val_note = ""
        if validate_now:
            start = time.perf_counter()
            progress = ThrottledProgress(f"epoch {state.epoch} val", len(data.splits["val"]), log.info)
            val = task.evaluate(eval_model, val_loader, device, config, data, gather=info.enabled,
                                on_batch=progress.batches(len(val_loader)))
            row.update({f"val_{k}": v for k, v in val.items()})
            row["val_time_s"] = time.perf_counter() - start
            score = selection.score(val)  # larger is better (a lower-is-better metric is negated)
            if score > state.best_metric + cfg_train.early_stopping.min_delta or state.best_epoch == 0:
                state.best_metric, state.best_epoch, state.stale_validations = score, state.epoch, 0
                if info.is_main:
                    save_checkpoint(ckpt_dir / "best.pt", _inference_checkpoint(eval_model, config, data, state,
                                                                               {"val": val}))
            else:
                state.stale_validations += 1
            best = -state.best_metric if selection.lower_is_better else state.best_metric
            val_note = f"; {task.val_note(val, selection)} (best {best:.4f} at epoch {state.best_epoch})"
        elif not has_val and info.is_main:
            state.best_epoch = state.epoch
            save_checkpoint(ckpt_dir / "best.pt", _inference_checkpoint(eval_model, config, data, state, {}))
        patience = cfg_train.early_stopping.patience
        if patience and has_val and state.stale_validations >= patience:
            state.stopped_early = True
            log.info(f"early stopping: no validation improvement for {patience} validations")

        # ---- last.pt, then metrics (so metrics never mention an epoch that a resume would redo)
        if info.is_main:
            last = _inference_checkpoint(eval_model, config, data, state, {})
            last["training"] = {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                "scaler": scaler.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                "rng": rng_state(), "state": asdict(state), "user_config": config_to_dict(user_config),
                # the epoch rows travel with the checkpoint: a kill before metrics.csv is written loses none
                "metrics_rows": [*log.epoch_rows, row],
            }
            save_checkpoint(ckpt_dir / "last.pt", last)
            every = cfg_train.checkpoint_every
            if every and state.epoch % every == 0:
                save_checkpoint(ckpt_dir / f"epoch_{state.epoch:03d}.pt", _inference_checkpoint(eval_model, config, data, state, {}))
            log.epoch(row, state.global_step)
        clock.end_epoch()
        eta = "stopped early" if state.stopped_early else f"run ETA {format_duration(clock.run_left(state.epoch))}"
        log.info(f"epoch {state.epoch}/{cfg_train.epochs}: loss {row['loss']:.4f}, {row['train_img_per_s']:.1f} img/s, "
                 f"{format_duration(time.perf_counter() - epoch_start)}{val_note}; {eta}")
        barrier(info)
        if state.stopped_early:
            break
        if stop_after_epoch is not None and state.epoch >= stop_after_epoch and state.epoch < cfg_train.epochs:
            log.info(f"stopping after epoch {state.epoch} as asked; continue with --resume")
            return RunResult(run_dir, state, finished=False)

    # ---- final evaluation on the test split with the best weights
    best = load_checkpoint(ckpt_dir / "best.pt")
    eval_model.load_state_dict(best["model"])
    test_metrics, val_metrics = task.finish_run(eval_model, data, config, state, run_dir, device, info, log,
                                           best.get("metrics", {}).get("val", {}))
    return RunResult(run_dir, state, finished=True, test_metrics=test_metrics, val_metrics=val_metrics)


# ------------------------------------------------------------------------------------------- one epoch
def _train_one_epoch(ddp_model: nn.Module, model: nn.Module, ema: ModelEMA | None, optimizer: torch.optim.Optimizer,
                     schedule: Any, scaler: torch.amp.GradScaler, loader: Any, micro_batches: int, epoch: int,
                     state: TrainState, config: ExperimentConfig, info: DistInfo, device: torch.device,
                     log: RunLog, clock: TrainingClock | None = None,
                     loss_keys: tuple[str, ...] = (), accumulation: int | None = None) -> dict[str, Any]:
    cfg = config.train
    ddp_model.train()
    if hasattr(loader, "set_epoch"):  # DetectionLoader: the epoch's permutation, augmentation and worker seeds
        loader.set_epoch(epoch)
    else:
        for sampler in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
    accumulation = accumulation or cfg.accumulation
    full_groups = micro_batches // accumulation
    trainable = [p for p in model.parameters() if p.requires_grad]
    norm_stats = BatchNormGuard(model)
    sums = dict.fromkeys(("loss", *loss_keys), 0.0)
    counted = 0
    images_seen = 0
    skipped = 0
    overflows = 0
    group_ok = True
    group_stems: list[str] = []
    start = time.perf_counter()
    progress = _Progress(log.enabled, f"epoch {epoch + 1}/{cfg.epochs}", micro_batches)
    # batch jobs (no bar, or stdout not a terminal) get a text line every print_every updates (training.log
    # always); TensorBoard and metrics_per_batch.csv every log_every updates
    echo_lines = progress.progress is None or not stdout_is_terminal()
    print_every = cfg.print_every or cfg.log_every
    optimizer.zero_grad(set_to_none=True)
    with progress:
        for i, (images, targets, metas) in enumerate(loader):
            if i >= micro_batches:
                break
            group_index, position = divmod(i, accumulation)
            group_size = accumulation if group_index < full_groups else micro_batches - full_groups * accumulation
            last_in_group = position == group_size - 1
            if position == 0:
                norm_stats.snapshot()  # a skipped update leaves no trace, BatchNorm running statistics included
            if images:  # empty when every frame of the batch was unreadable and skipped (data.on_error=skip)
                images = [img.to(device, non_blocking=True) for img in images]
                targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
                group_stems += [m["stem"] for m in metas]
                sync = contextlib.nullcontext() if (last_in_group or not info.enabled) else ddp_model.no_sync()
                with sync:
                    with autocast(device, cfg.precision):
                        losses = ddp_model(images, targets)
                    loss = sum(losses.values())
                    # one device sync: the loss and the BatchNorm statistics this forward pass updated
                    finite = _all_ranks_true(bool(norm_stats.finite_and(torch.isfinite(loss)).item()), info, device)
                    if finite:
                        scaler.scale(loss / group_size).backward()
                        for key in loss_keys:
                            sums[key] += float(losses[key].detach())
                        sums["loss"] += float(loss.detach())
                        counted += 1
                    else:
                        group_ok = False
            images_seen += len(images) * info.world_size
            if not last_in_group:
                continue

            # ---- one optimizer update per accumulation group (or a skipped one)
            if group_ok:
                if scaler.is_enabled():
                    scaler.unscale_(optimizer)
                max_norm = cfg.grad_clip if cfg.grad_clip else float("inf")
                grad_norm = torch.nn.utils.clip_grad_norm_(trainable, max_norm) if trainable else torch.tensor(0.0)
                # fp16 overflow is the GradScaler's business (it skips the step and lowers the scale)
                group_ok = scaler.is_enabled() or _all_ranks_true(bool(torch.isfinite(grad_norm).item()), info, device)
            if group_ok:
                scale = scaler.get_scale() if scaler.is_enabled() else 0.0
                scaler.step(optimizer)
                scaler.update()
                # fp16: the scaler skips an update whose gradients overflowed and lowers its scale; that is its
                # normal way of finding the scale (counted, logged, never fatal unless it never recovers)
                if scaler.is_enabled() and scaler.get_scale() < scale:
                    norm_stats.restore()  # the skipped update leaves no trace in the BatchNorm statistics
                    overflows += 1
                    state.overflow_total += 1
                    state.overflow_streak += 1
                    if state.overflow_streak >= cfg.max_overflow_streak:
                        raise TrainingError(
                            f"{state.overflow_streak} consecutive fp16 updates overflowed (loss scale now "
                            f"{scaler.get_scale():g}, epoch {epoch + 1}, iteration {i + 1}): the model's gradients "
                            "overflow whatever the scale. Lower train.lr, set train.grad_clip, or use "
                            "train.precision=bf16/fp32.")
                else:
                    state.overflow_streak = 0
                    if ema is not None:
                        ema.update(model)
                state.bad_streak = 0
            else:
                norm_stats.restore()
                skipped += 1
                state.skipped_total += 1
                state.bad_streak += 1
                log.info(f"epoch {epoch + 1} iteration {i + 1}: non-finite loss, gradient or BatchNorm statistics, "
                         "update skipped "
                         f"({state.bad_streak} in a row); batch files: {', '.join(group_stems[:8])}")
                if state.bad_streak >= cfg.max_nonfinite:
                    raise TrainingError(
                        f"{state.bad_streak} consecutive updates had non-finite losses or gradients (epoch "
                        f"{epoch + 1}, iteration {i + 1}; last files: {', '.join(group_stems[:8])}). The last good "
                        "checkpoint is kept. Lower train.lr, set train.grad_clip, try train.precision=fp32, or "
                        "check the data with `cadet data check`.")
            optimizer.zero_grad(set_to_none=True)
            schedule.step()  # the schedule's clock ticks on skipped updates too
            state.global_step += 1
            group_ok = True
            group_stems = []
            elapsed = time.perf_counter() - start
            current = {k: v / max(counted, 1) for k, v in sums.items()}
            lr = _heads_lr(optimizer)
            progress.update(i + 1, current["loss"], lr, images_seen / max(elapsed, 1e-9))
            if state.global_step % cfg.log_every == 0 and counted:
                log.batch({"epoch": epoch + 1, "iteration": i + 1, "global_step": state.global_step, **current,
                           "lr": lr, "img_per_s": images_seen / max(elapsed, 1e-9)})
            if state.global_step % print_every == 0 and counted:
                epoch_left, run_left = clock.left(epoch, i + 1) if clock is not None else (math.nan, math.nan)
                log.info(iteration_line(epoch + 1, cfg.epochs, i + 1, micro_batches, current["loss"], lr,
                                        images_seen / max(elapsed, 1e-9), epoch_left, run_left), echo=echo_lines)
    if counted == 0:
        raise TrainingError(f"epoch {epoch + 1}: every batch had a non-finite loss; nothing was learned")
    elapsed = time.perf_counter() - start
    means = all_reduce_mean({k: v / counted for k, v in sums.items()}, info, device)
    out = {**means, "lr": _heads_lr(optimizer), "skipped_updates": skipped,
           "train_img_per_s": images_seen / max(elapsed, 1e-9)}
    backbone_lr = next((g["lr"] for g in optimizer.param_groups if g.get("name", "").startswith("backbone")), None)
    if backbone_lr is not None and backbone_lr != out["lr"]:
        out["lr_backbone"] = backbone_lr
    if scaler.is_enabled():
        out["overflow_skips"] = overflows
        if overflows:
            log.info(f"epoch {epoch + 1}: {overflows} fp16 update(s) skipped by the GradScaler (gradient overflow; "
                     f"loss scale now {scaler.get_scale():g})")
    return out


def _heads_lr(optimizer: torch.optim.Optimizer) -> float:
    """The lr of the heads (the first non-backbone group): the lr a recipe quotes."""
    for group in optimizer.param_groups:
        if not group.get("name", "heads").startswith("backbone"):
            return float(group["lr"])
    return float(optimizer.param_groups[0]["lr"])


def _micro_batches(loader: Any, phase: Phase, cap: int | None, data: Any) -> int:
    """Micro-batches of one epoch of ``phase`` (``train.max_iters_per_epoch`` caps its updates)."""
    micro = len(loader)
    if micro == 0:
        raise TrainingError(f"the train split of {data.root} gives no batch of {phase.batch_size}; check data.split")
    return min(micro, cap * phase.accumulation) if cap else micro


def _model_epoch_stats(model: nn.Module, info: DistInfo) -> dict[str, float]:
    """Statistics a model gathers while training (the MoE's per-expert load), summed over DDP ranks."""
    gather = getattr(model, "pop_epoch_stats", None)
    if gather is None:
        return {}

    def reduce(t: torch.Tensor) -> torch.Tensor:
        if info.enabled:
            import torch.distributed as dist

            t = t.clone()
            dist.all_reduce(t)
        return t

    return gather(reduce)


# --------------------------------------------------------------------------------------------- helpers
class BatchNormGuard:
    """Snapshot and restore BatchNorm running statistics around one accumulation group.

    A forward pass in train mode updates ``running_mean``/``running_var`` before the loss is known; an update
    that is skipped (a non-finite loss, gradient or statistic) must not leave them poisoned, or every later
    evaluation would be NaN while the weights are fine. The copies are allocated once.
    """

    def __init__(self, model: nn.Module) -> None:
        self.buffers = [buf for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)
                        for buf in (module.running_mean, module.running_var, module.num_batches_tracked)
                        if buf is not None]
        self.floats = [buf for buf in self.buffers if buf.is_floating_point()]
        self.saved = [buf.detach().clone() for buf in self.buffers]

    @torch.no_grad()
    def snapshot(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.saved, self.buffers)

    @torch.no_grad()
    def restore(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.buffers, self.saved)

    @torch.no_grad()
    def finite_and(self, flag: torch.Tensor) -> torch.Tensor:
        """``flag`` (a 0-d bool tensor) and-ed with "every running statistic is finite", without a sync."""
        for buf in self.floats:
            flag = flag & torch.isfinite(buf).all()
        return flag

    def finite(self) -> bool:
        return bool(self.finite_and(torch.tensor(True, device=self.floats[0].device if self.floats else "cpu")).item())


def _wrap_ddp(model: nn.Module, info: DistInfo, device: torch.device, find_unused_parameters: bool = False
              ) -> nn.Module:
    if not info.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)


def _all_ranks_true(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """Every rank must agree to skip a backward/step, or DDP's collective calls would hang."""
    if not info.enabled:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def _latest_default_run(config: ExperimentConfig) -> Path:
    """The run directory ``--resume`` continues: the config's; with the default name the most recently
    written of run, run2, run3, ... (a second start with the default name went to run2)."""
    default = ExperimentConfig.model_fields["name"].default
    if config.name != default:
        return config.run_dir
    root = Path(config.output.root)
    candidates = [p.parent.parent for p in root.glob(f"{default}*/checkpoints/last.pt")
                  if re.fullmatch(rf"{re.escape(default)}\d*", p.parent.parent.name)]
    return max(candidates, key=lambda d: (d / "checkpoints" / "last.pt").stat().st_mtime, default=config.run_dir)


def _free_default_name(config: ExperimentConfig, echo: Callable[[str], None]) -> ExperimentConfig:
    """With the default name, a taken run directory means a new run: run, run2, run3, ... (as ultralytics'
    exp, exp2). An explicit name keeps its directory (and a second start there is an error, not a new run).
    Under torchrun every rank would pick on its own, so the default name is kept there."""
    default = ExperimentConfig.model_fields["name"].default
    if config.name != default or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return config
    root = Path(config.output.root)
    for number in range(1, 10_000):
        name = default if number == 1 else f"{default}{number}"
        folder = root / name
        try:
            folder.mkdir(parents=True)  # exclusive: of two runs started at once, one takes the new folder
        except FileExistsError:
            if not folder.is_dir() or any(folder.iterdir()):
                continue
        if number > 1:
            echo(f"{root / default} is taken: this run is {folder} (name={name})")
        return config.model_copy(update={"name": name})
    raise ConfigError(f"{root}: no free run name {default}, {default}2, ...; give name=...")


def _lock_run(run_dir: Path, info: DistInfo, device: torch.device) -> RunLock:
    """Rank 0 takes the run directory's lock; if it cannot, every rank stops (the others would wait for it)."""
    error: RunLockedError | None = None
    lock = RunLock(run_dir)
    try:
        lock = lock_run_dir(run_dir, enabled=info.is_main)
    except RunLockedError as err:
        error = err
    if not _all_ranks_true(error is None, info, device):
        lock.release()
        raise error or RunLockedError(f"rank 0 could not lock the run directory {run_dir}")
    return lock


def _inference_checkpoint(eval_model: nn.Module, config: ExperimentConfig, data: Any, state: TrainState,
                          metrics: dict[str, Any]) -> dict[str, Any]:
    from crossattentiondet.data.inputs import spec_to_dict

    return {"model": eval_model.state_dict(), "config": config_to_dict(config), "class_names": data.class_names,
            "num_classes": data.num_classes, "inputs": spec_to_dict(data.input_spec), "epoch": state.epoch, "metrics": metrics}


def _resume_path(resume: bool | str | Path, config: ExperimentConfig | None) -> Path:
    if resume is True:
        if config is None:
            raise ConfigError("--resume without a path needs the run's config (--config/overrides) to find it")
        path = _latest_default_run(config) / "checkpoints" / "last.pt"
        if not path.is_file():
            raise FileNotFoundError(f"nothing to resume: {path} does not exist (start the run without --resume)")
        return path
    path = Path(resume)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt" if (path / "checkpoints").is_dir() else path / "last.pt"
    return path


def resume_config(run: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """The config of the run at ``run`` (run directory or last.pt) with ``overrides`` applied on top of it:
    ``cadet train --resume runs/x train.epochs=30`` changes the run's own config, not the defaults."""
    checkpoint = load_checkpoint(_resume_path(run, None))
    if "training" not in checkpoint:
        raise TrainingError(f"{checkpoint['path']} has no training state (only last.pt can be resumed)")
    return build_config(checkpoint["training"]["user_config"], overrides, source=str(checkpoint["path"]))


def _config_for_resume(checkpoint: dict[str, Any], requested: ExperimentConfig | None) -> ExperimentConfig:
    """The run's own config; a requested config may only differ in what does not change the training
    (more epochs, another device, logging, evaluation and output settings). The run's resolved config.yaml
    (explicit scales, class names, layout) is the same run, so ``--config runs/x/config.yaml --resume`` works."""
    saved = build_config(checkpoint["training"]["user_config"])
    if requested is None:
        return saved
    changed = diff_configs(saved, requested)
    resolved = _flatten(checkpoint["config"])
    requested_flat = _flatten(config_to_dict(requested))
    blocked = {k: v for k, v in changed.items() if k != "name"
               and (not k.startswith(RESUMABLE_CHANGES) or k in FIXED_ON_RESUME)
               and not _same_as_resolved(k, requested_flat, resolved)}
    if blocked:
        details = ", ".join(f"{k}={v!r}" for k, v in list(blocked.items())[:5])
        raise ConfigError(f"cannot resume {checkpoint['path']} with a different configuration ({details}); "
                          "resume with the run's own settings or start a new run name")
    return requested.model_copy(update={"name": saved.name})


def _same_as_resolved(key: str, requested: dict[str, Any], resolved: dict[str, Any]) -> bool:
    """A requested value that is what the run resolved it to (e.g. scale 255 where the run said auto)."""
    return key in resolved and requested.get(key) == resolved[key]


def _finished_result(run_dir: Path, checkpoint: dict[str, Any]) -> RunResult:
    from crossattentiondet.io import read_json

    final = read_json(run_dir / "final_results.json")
    state = TrainState(**checkpoint["training"]["state"])
    return RunResult(run_dir, state, finished=True, test_metrics=final.get("results", {}),
                     val_metrics=final.get("validation", {}))


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


class _Progress:
    """A rich progress bar (loss, lr, img/s, ETA) on interactive terminals; silent otherwise."""

    def __init__(self, enabled: bool, description: str, total: int) -> None:
        self.progress = None
        if not enabled:
            return
        from rich.console import Console

        console = Console(stderr=True)
        if not console.is_terminal:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]:.4f} lr {task.fields[lr]:.2e} "
                                            "{task.fields[ips]:.1f} img/s"),
                                 TimeRemainingColumn(), console=console, transient=True)
        self.task = self.progress.add_task(description, total=total, loss=0.0, lr=0.0, ips=0.0)

    def __enter__(self) -> _Progress:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def update(self, completed: int, loss: float, lr: float, ips: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=completed, loss=loss, lr=lr, ips=ips)
