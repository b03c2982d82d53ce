"""Optimisation pieces registered by mega-fairseq: the ``linear_decay`` LR scheduler."""
from mega_fairseq.optim import linear_decay_schedule  # noqa: F401  (registers --lr-scheduler linear_decay)
