"""Optimizers, learning-rate scaling and the per-iteration schedule factors (engine/phases.py applies them)."""

from __future__ import annotations

import math

import torch
from torch import nn

from crossattentiondet.config import ScheduleConfig, TrainConfig


def effective_batch(train: TrainConfig, world_size: int = 1) -> int:
    return train.batch_size * train.accumulation * world_size


def scaled_lr(train: TrainConfig, world_size: int = 1) -> float:
    """``train.lr`` adjusted to the effective batch by ``train.lr_scaling`` (quoted at ``train.base_batch``)."""
    ratio = effective_batch(train, world_size) / train.base_batch
    if train.lr_scaling == "linear":
        return train.lr * ratio
    if train.lr_scaling == "sqrt":
        return train.lr * math.sqrt(ratio)
    return train.lr


def _is_no_decay(name: str, param: nn.Parameter) -> bool:
    # biases and 1-D parameters (LayerNorm/BatchNorm scales) are the usual exemptions
    return param.ndim <= 1 or name.endswith(".bias")


def build_optimizer(model: nn.Module, train: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """SGD or AdamW with up to four parameter groups: (encoder streams | rest) x (decay | no decay).

    The encoder streams get ``lr * backbone_lr_mult``. All parameters are registered, frozen ones included,
    so optimizer state and schedule carry on when staged training unfreezes them.
    """
    opt = train.optimizer
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        is_backbone = ".encoder.streams." in f".{name}"
        no_decay = opt.no_decay_norm_bias and _is_no_decay(name, param)
        groups.setdefault((is_backbone, no_decay), []).append(param)
    param_groups = []
    for (is_backbone, no_decay), params in sorted(groups.items()):
        group_lr = lr * (opt.backbone_lr_mult if is_backbone else 1.0)
        param_groups.append({
            "params": params,
            "lr": group_lr,
            "initial_lr": group_lr,
            "weight_decay": 0.0 if no_decay else opt.weight_decay,
            "name": f"{'backbone' if is_backbone else 'heads'}{'_no_decay' if no_decay else ''}",
        })
    if opt.type == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=opt.momentum, nesterov=opt.nesterov and opt.momentum > 0,
                               weight_decay=opt.weight_decay)
    return torch.optim.AdamW(param_groups, lr=lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay)


def lr_factor(step: int, schedule: ScheduleConfig, iters_per_epoch: int, total_iters: int) -> float:
    """Multiplier of the base lr after ``step`` optimizer updates (schedule x linear warmup).

    Epoch-valued settings (step_size, milestones, warmup_epochs) are converted with ``iters_per_epoch``,
    so the lr changes smoothly per iteration for cosine/poly and exactly at epoch boundaries for step.
    """
    epoch = step / max(iters_per_epoch, 1)
    progress = min(step / max(total_iters, 1), 1.0)
    kind = schedule.type
    if kind == "constant":
        factor = 1.0
    elif kind == "step":
        factor = schedule.gamma ** math.floor(epoch / schedule.step_size + 1e-9)
    elif kind == "multistep":
        factor = schedule.gamma ** sum(1 for m in schedule.milestones if epoch + 1e-9 >= m)
    elif kind == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif kind == "cosine_restart":
        factor = _cosine_restart(epoch, schedule.restart_epochs, schedule.t_mult)
    elif kind == "onecycle":
        factor = _one_cycle(progress, schedule.pct_start, schedule.div_factor, schedule.final_div_factor)
    elif kind == "poly":
        factor = (1.0 - progress) ** schedule.power
    else:  # pragma: no cover - the config literal prevents this
        raise ValueError(kind)
    warmup = round(schedule.warmup_epochs * iters_per_epoch) if schedule.warmup_epochs else schedule.warmup_iters
    if warmup > 0 and step < warmup:
        alpha = step / warmup
        factor *= schedule.warmup_factor * (1.0 - alpha) + alpha
    return factor


def _cosine_restart(epoch: float, first: float, t_mult: float) -> float:
    """SGDR (Loshchilov and Hutter 2017): cosine from 1 to 0 over cycles of ``first``, ``first * t_mult``, ...
    epochs, restarting at 1 after each."""
    length = first
    while epoch >= length - 1e-9:
        epoch -= length
        length *= t_mult
    return 0.5 * (1.0 + math.cos(math.pi * max(epoch, 0.0) / length))


def _one_cycle(progress: float, pct_start: float, div: float, final_div: float) -> float:
    """torch's OneCycleLR shape (cosine annealing): up from 1/div to 1 over ``pct_start`` of the schedule,
    then down to 1/(div * final_div)."""
    start, end = 1.0 / div, 1.0 / (div * final_div)
    if progress < pct_start:
        t = progress / pct_start
        return start + (1.0 - start) * 0.5 * (1.0 - math.cos(math.pi * t))
    t = (progress - pct_start) / (1.0 - pct_start)
    return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * t))


FLOORED = ("cosine", "cosine_restart")  # the schedules that ``min_lr`` applies to


def schedule_factor(step: int, schedule: ScheduleConfig, iters_per_epoch: int, total_iters: int,
                    base_lr: float) -> float:
    """:func:`lr_factor` with cosine's ``min_lr`` floor (absolute, relative to ``base_lr``)."""
    factor = lr_factor(step, schedule, iters_per_epoch, total_iters)
    if schedule.type in FLOORED and base_lr > 0:
        floor = min(schedule.min_lr / base_lr, 1.0)
        return floor + (1.0 - floor) * factor
    return factor
