"""Training phases: each with its own epochs, batch, accumulation, lr, backbone lr, schedule and freezing.

A run without ``train.phases`` is one phase of the ``train`` section's values (its freezing is
``train.freeze``). With phases (e.g. camoXpert's stage 1 with a frozen backbone at batch 8, stage 2 unfrozen at
batch 2 with its own lr), the trainer rebuilds the training loader at each phase's first epoch and the
:class:`PhaseSchedule` sets every parameter group's lr from the phase's base lr, the group's multiplier and
one schedule factor, so:

* warmup scales every group by the same factor (the backbone's multiplier is kept; camoXpert's warmup set
  every group to the same lr, erasing the backbone's 0.1x);
* the optimizer is built once with every parameter (frozen ones included) and never rebuilt, so its state
  (momentum, Adam moments) carries on across phases and unfreezing (camoXpert rebuilt AdamW at each unfreeze
  step and left its scheduler pointing at the old optimizer, so its lr went flat);
* the lr is a pure function of (phase, update within the phase): a resumed run recomputes it exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from crossattentiondet.config import FreezeConfig, ScheduleConfig, TrainConfig
from crossattentiondet.engine.freeze import frozen_stages
from crossattentiondet.engine.optim import schedule_factor

ALL_STAGES = [1, 2, 3, 4]


@dataclass(frozen=True)
class Phase:
    """One resolved phase: every value explicit (a run without ``train.phases`` has one, named ``train``)."""

    index: int  # 0-based
    name: str
    start_epoch: int  # 0-based, inclusive
    epochs: int
    batch_size: int
    accumulation: int
    lr: float  # the heads' base lr, after ``train.lr_scaling``
    backbone_lr_mult: float
    schedule: ScheduleConfig
    freeze: str  # backbone | none | progressive | staged (``train.freeze``, runs without phases)
    unfreeze_steps: int = 3

    @property
    def end_epoch(self) -> int:
        return self.start_epoch + self.epochs

    def effective_batch(self, world_size: int = 1) -> int:
        return self.batch_size * self.accumulation * world_size

    def frozen_stages(self, epoch: int, train_freeze: FreezeConfig) -> list[int]:
        """Encoder stages (1-4) frozen during ``epoch`` (0-based, inside this phase)."""
        if self.freeze == "staged":
            return frozen_stages(train_freeze, epoch)
        if self.freeze == "backbone":
            return list(ALL_STAGES)
        if self.freeze == "none":
            return []
        # progressive: step k of unfreeze_steps (evenly spread over the phase) trains the last k + 1 stages;
        # the last step trains them all
        local = epoch - self.start_epoch
        step = min(local * self.unfreeze_steps // self.epochs, self.unfreeze_steps - 1)
        if local == self.epochs - 1:  # a phase shorter than its steps still ends with every stage training
            step = self.unfreeze_steps - 1
        trainable = 4 if step == self.unfreeze_steps - 1 else min(step + 1, 4)
        return [s for s in ALL_STAGES if s <= 4 - trainable]

    def group_lr(self, group_name: str) -> float:
        """Base lr of an optimizer group (``build_optimizer`` names them backbone*/heads*)."""
        return self.lr * (self.backbone_lr_mult if group_name.startswith("backbone") else 1.0)

    def describe(self, count: int, world_size: int = 1, frozen_note: str = "") -> str:
        s = self.schedule
        schedule = s.type + (f" to min_lr {s.min_lr:g}" if s.type in ("cosine", "cosine_restart") else "")
        if s.type == "cosine_restart":
            schedule += f" (restarts after {s.restart_epochs:g} epochs, x{s.t_mult:g})"
        if s.warmup_epochs or s.warmup_iters:
            schedule += (f", warmup {s.warmup_epochs:g} epochs" if s.warmup_epochs else
                         f", warmup {s.warmup_iters} updates")
        freeze = {"backbone": "backbone frozen", "none": "nothing frozen",
                  "progressive": f"progressive unfreezing in {self.unfreeze_steps} steps (last stage first)",
                  "staged": "train.freeze"}[self.freeze]
        return (f"phase {self.index + 1}/{count} {self.name}: epochs {self.start_epoch + 1}-{self.end_epoch}, batch "
                f"{self.batch_size} x accumulation {self.accumulation} x {world_size} process(es) = effective "
                f"{self.effective_batch(world_size)}, lr heads {self.lr:.3g} / backbone "
                f"{self.lr * self.backbone_lr_mult:.3g}, {schedule}, {freeze}{frozen_note}")


def _scaled(lr: float, effective: int, train: TrainConfig) -> float:
    ratio = effective / train.base_batch
    if train.lr_scaling == "linear":
        return lr * ratio
    if train.lr_scaling == "sqrt":
        return lr * math.sqrt(ratio)
    return lr


def resolve_phases(train: TrainConfig, world_size: int = 1) -> list[Phase]:
    """The run's phases with every value explicit (unset phase values are the ``train`` section's)."""
    if not train.phases:
        effective = train.batch_size * train.accumulation * world_size
        return [Phase(0, "train", 0, train.epochs, train.batch_size, train.accumulation,
                      _scaled(train.lr, effective, train), train.optimizer.backbone_lr_mult, train.schedule,
                      "staged")]
    phases, start = [], 0
    for index, (cfg, epochs) in enumerate(zip(train.phases, train.phase_epochs())):
        batch = cfg.batch_size or train.batch_size
        accumulation = cfg.accumulation or train.accumulation
        lr = _scaled(cfg.lr if cfg.lr is not None else train.lr, batch * accumulation * world_size, train)
        mult = cfg.backbone_lr_mult if cfg.backbone_lr_mult is not None else train.optimizer.backbone_lr_mult
        phases.append(Phase(index, cfg.name or f"phase{index + 1}", start, epochs, batch, accumulation, lr, mult,
                            cfg.schedule or train.schedule, cfg.freeze, cfg.unfreeze_steps))
        start += epochs
    return phases


def phase_of(phases: list[Phase], epoch: int) -> Phase:
    """The phase that trains ``epoch`` (0-based)."""
    for phase in phases:
        if epoch < phase.end_epoch:
            return phase
    return phases[-1]


class PhaseSchedule:
    """Sets each optimizer group's lr = phase lr x group multiplier x schedule factor, every update.

    ``start(phase, updates_per_epoch, epoch)`` at the first epoch a session trains in a phase (the update
    count within the phase follows from the epoch: every epoch has ``updates_per_epoch`` updates, skipped
    ones included), ``step()`` after each optimizer update.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.phase: Phase | None = None
        self.updates_per_epoch = 1
        self.step_in_phase = 0

    def start(self, phase: Phase, updates_per_epoch: int, epoch: int) -> None:
        self.phase = phase
        self.updates_per_epoch = max(updates_per_epoch, 1)
        self.step_in_phase = (epoch - phase.start_epoch) * self.updates_per_epoch
        self._apply()

    def factor(self, step: int | None = None) -> float:
        assert self.phase is not None, "PhaseSchedule.start() first"
        step = self.step_in_phase if step is None else step
        return schedule_factor(step, self.phase.schedule, self.updates_per_epoch,
                               self.updates_per_epoch * self.phase.epochs, self.phase.lr)

    def _apply(self) -> None:
        factor = self.factor()
        for group in self.optimizer.param_groups:
            group["lr"] = self.phase.group_lr(group.get("name", "heads")) * factor

    def step(self) -> None:
        self.step_in_phase += 1
        self._apply()

    def lr_of(self, group_prefix: str) -> float:
        """The current lr of the first group whose name starts with ``group_prefix`` (heads, backbone)."""
        for group in self.optimizer.param_groups:
            if group.get("name", "heads").startswith(group_prefix):
                return float(group["lr"])
        return math.nan

    def state_dict(self) -> dict[str, int]:
        # informative only: the lr is recomputed from the epoch on resume
        return {"phase": self.phase.index if self.phase else -1, "step_in_phase": self.step_in_phase}
