"""``--lr-scheduler linear_decay``: warm up with a power curve, then decay linearly.

The schedule of the official Mega recipes (same name, options and semantics), so that their
command lines run unchanged and their checkpoints, which name this scheduler, load:

* updates ``0 .. warmup_updates``: ``lr = warmup_init_lr + (lr_peak - warmup_init_lr) *
  (n / warmup_updates) ** warmup_power`` (``warmup_init_lr < 0`` means 0);
* then linearly from ``lr_peak`` down to ``end_learning_rate`` at ``total_num_update``, and
  ``end_learning_rate`` after that.

``lr_peak`` is ``--lr`` (a single value). Without warm-up the schedule starts at ``lr_peak``.
"""
from dataclasses import dataclass, field
from typing import List

from fairseq.dataclass import FairseqDataclass
from fairseq.optim.lr_scheduler import FairseqLRScheduler, register_lr_scheduler
from omegaconf import II


@dataclass
class LinearDecayLRScheduleConfig(FairseqDataclass):
    warmup_updates: int = field(default=0, metadata={"help": "warm up the learning rate for the first N updates"})
    warmup_power: float = field(default=1, metadata={"help": "exponent of the warm-up curve (1: linear)"})
    warmup_init_lr: float = field(
        default=-1, metadata={"help": "learning rate at update 0 of the warm-up; negative means 0"}
    )
    end_learning_rate: float = field(default=0.0, metadata={"help": "learning rate reached at total_num_update"})
    total_num_update: int = field(default=1000000, metadata={"help": "update at which the decay ends"})
    lr: List[float] = II("optimization.lr")


@register_lr_scheduler("linear_decay", dataclass=LinearDecayLRScheduleConfig)
class LinearDecayLRSchedule(FairseqLRScheduler):
    """Power-curve warm-up followed by a linear decay (see the module docstring)."""

    def __init__(self, cfg, optimizer):
        super().__init__(cfg, optimizer)
        lrs = list(cfg.lr) if not isinstance(cfg.lr, (int, float)) else [cfg.lr]
        if len(lrs) != 1:
            raise ValueError("--lr-scheduler linear_decay takes a single --lr value, got {}; "
                             "use --lr-scheduler fixed for a per-epoch list".format(lrs))
        self.peak_lr = float(lrs[0])
        self.warmup_updates = int(cfg.warmup_updates)
        if self.warmup_updates < 0:
            raise ValueError("--warmup-updates={} must be >= 0".format(self.warmup_updates))
        self.warmup_power = float(cfg.warmup_power)
        if self.warmup_updates == 0:
            self.warmup_init_lr = self.peak_lr
        else:
            self.warmup_init_lr = max(float(cfg.warmup_init_lr), 0.0)
            if self.warmup_init_lr >= self.peak_lr:
                raise ValueError("--warmup-init-lr={} must be below --lr={} (the end of the warm-up)".format(
                    self.warmup_init_lr, self.peak_lr))
        self.end_learning_rate = float(cfg.end_learning_rate)
        self.total_num_update = int(cfg.total_num_update)
        if self.total_num_update <= self.warmup_updates:
            raise ValueError("--total-num-update={} must be larger than --warmup-updates={}".format(
                self.total_num_update, self.warmup_updates))
        self.lr = self.warmup_init_lr
        self.optimizer.set_lr(self.lr)

    def lr_at(self, num_updates: int) -> float:
        """The learning rate after ``num_updates`` updates."""
        if num_updates <= self.warmup_updates:
            if self.warmup_updates == 0:
                return self.peak_lr
            progress = (num_updates / self.warmup_updates) ** self.warmup_power
            return self.warmup_init_lr + (self.peak_lr - self.warmup_init_lr) * progress
        if num_updates >= self.total_num_update:
            return self.end_learning_rate
        remaining = (self.total_num_update - num_updates) / (self.total_num_update - self.warmup_updates)
        return self.end_learning_rate + (self.peak_lr - self.end_learning_rate) * remaining

    def state_dict(self):
        return {"best": self.best, "lr": self.lr}

    def load_state_dict(self, state_dict):
        """Accept this scheduler's state and the official one's (``{"lr"}``, or only ``{"best"}``)."""
        self.best = state_dict.get("best")
        if "lr" in state_dict:
            self.lr = state_dict["lr"]

    def step(self, epoch, val_loss=None):
        super().step(epoch, val_loss)
        return self.optimizer.get_lr()

    def step_update(self, num_updates):
        self.lr = self.lr_at(num_updates)
        self.optimizer.set_lr(self.lr)
        return self.lr
