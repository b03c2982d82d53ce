"""``--lr-scheduler linear_decay``: the official Mega schedule (power warm-up, linear decay)."""
import argparse

import pytest
import torch
from fairseq import options
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.optim import FairseqOptimizer
from fairseq.optim.lr_scheduler import build_lr_scheduler

import mega_fairseq  # noqa: F401  (registers linear_decay, as --user-dir does)


class PlainSGD(FairseqOptimizer):
    def __init__(self):
        super().__init__(argparse.Namespace())
        self._optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


def schedule_from_cli(*flags):
    """Parse a fairseq-train command line and build the scheduler it asks for."""
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(
        parser, ["data", "--task", "translation", "--arch", "transformer", "--lr-scheduler", "linear_decay", *flags]
    )
    cfg = convert_namespace_to_omegaconf(args)
    optimizer = PlainSGD()
    return build_lr_scheduler(cfg.lr_scheduler, optimizer), optimizer


def official_lr(n, peak, init, power, warmup, end, total):
    """The documented schedule, written independently of the implementation."""
    if warmup > 0 and n <= warmup:
        return init + (peak - init) * (n / warmup) ** power
    if n >= total:
        return end
    return end + (peak - end) * (total - n) / (total - warmup)


@pytest.mark.parametrize("power", [1, 2])
def test_schedule_follows_the_official_formula(power):
    peak, init, warmup, end, total = 1e-3, 1e-7, 40, 1e-5, 200
    scheduler, optimizer = schedule_from_cli(
        "--lr", str(peak), "--warmup-updates", str(warmup), "--warmup-init-lr", str(init),
        "--warmup-power", str(power), "--end-learning-rate", str(end), "--total-num-update", str(total),
    )
    assert optimizer.get_lr() == pytest.approx(init)
    for n in list(range(0, 260, 7)) + [warmup, total, (warmup + total) // 2]:
        expected = official_lr(n, peak, init, power, warmup, end, total)
        assert scheduler.step_update(n) == pytest.approx(expected, rel=1e-9, abs=1e-15), n
        assert optimizer.get_lr() == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert scheduler.step_update(warmup) == pytest.approx(peak)
    assert scheduler.step_update((warmup + total) // 2) == pytest.approx((peak + end) / 2)
    assert scheduler.step_update(total + 5) == pytest.approx(end)


def test_without_warmup_the_schedule_starts_at_the_peak():
    scheduler, optimizer = schedule_from_cli("--lr", "0.5", "--total-num-update", "10")
    assert optimizer.get_lr() == pytest.approx(0.5)
    assert scheduler.step_update(5) == pytest.approx(0.25)


def test_negative_warmup_init_lr_means_zero():
    scheduler, optimizer = schedule_from_cli("--lr", "0.5", "--warmup-updates", "4", "--total-num-update", "10")
    assert optimizer.get_lr() == 0.0
    assert scheduler.step_update(2) == pytest.approx(0.25)


def test_state_round_trips_and_official_state_loads():
    scheduler, _ = schedule_from_cli("--lr", "0.5", "--total-num-update", "10")
    scheduler.step(1, val_loss=3.0)
    scheduler.step_update(4)
    state = scheduler.state_dict()
    fresh, _ = schedule_from_cli("--lr", "0.5", "--total-num-update", "10")
    fresh.load_state_dict(state)
    assert fresh.best == 3.0 and fresh.lr == pytest.approx(scheduler.lr)
    fresh.load_state_dict({"best": 2.5})  # what the official checkpoints store
    assert fresh.best == 2.5


@pytest.mark.parametrize("flags, message", [
    (("--lr", "0.1,0.2"), "single --lr value"),
    (("--lr", "0.1", "--warmup-updates", "5", "--warmup-init-lr", "0.2"), "must be below --lr"),
    (("--lr", "0.1", "--warmup-updates", "50", "--total-num-update", "50"), "must be larger than --warmup-updates"),
])
def test_bad_settings_are_clear_errors(flags, message):
    with pytest.raises(ValueError, match=message):
        schedule_from_cli(*flags)
