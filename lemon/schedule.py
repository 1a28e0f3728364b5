"""LEMON's learning-rate schedule for an expanded model: the from-scratch schedule, compressed.

The expanded model starts where the small one ended, so it does not need the long decay of a
from-scratch run. LEMON keeps the from-scratch schedule's shape and its peak (the paper: "retain
the maximum learning rate", an "accelerated decay") and shortens it: the authors' recipes train
the expanded ViT for 130 of DeiT's 300 epochs and the expanded BERT for 132k of 220k steps.
So a LEMON schedule is described relative to the from-scratch one:

* ``scratch_steps``: the length of the from-scratch schedule the large model would have used;
* ``length`` (default 0.6, BERT's 132k / 220k; ViT's recipe is 130 / 300 = 0.43): the
  expanded model's schedule as a fraction of it;
* ``peak`` (default 1.0: the from-scratch peak): a multiplier on the optimizer's base rate,
  which is the from-scratch peak; above 1 for the recipes that hold a larger peak shorter;
* ``warmup_steps`` (default: 2% of the LEMON schedule, lemon's choice, not the paper's): the
  linear warm-up, peak / warmup_steps at step 0 up to the peak at step warmup_steps - 1
  (never 0: a step at rate 0 would be wasted). An expanded model has no random layers, but its optimizer state
  (Adam's moments) starts empty, which is what a warm-up is for; set it to your from-scratch
  recipe's warm-up (DeiT warms up for 5 epochs) to keep that part of the schedule as it was;
* ``decay``: ``"cosine"`` (DeiT / ViT recipes) or ``"linear"`` (BERT recipes), from the peak
  down to ``final`` (a fraction of the peak, default 0) at the end of the LEMON schedule; after
  the end the rate stays at ``final``.

:func:`lr_lambda` gives the multiplier for ``torch.optim.lr_scheduler.LambdaLR`` or any trainer
that takes one (transformers' ``Trainer(optimizers=(opt, LambdaLR(opt, fn)))``, Lightning);
:class:`LemonSchedule` is the same as an ``LRScheduler``.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch

DECAYS = ("cosine", "linear")
DEFAULT_LENGTH = 132 / 220  # the expanded BERT's steps over the from-scratch BERT's
VIT_LENGTH = 130 / 300  # the expanded ViT's epochs over DeiT's
DEFAULT_WARMUP_FRACTION = 0.02


def schedule_steps(scratch_steps: int, length: float = DEFAULT_LENGTH) -> int:
    """Steps of the LEMON schedule for a from-scratch schedule of ``scratch_steps``."""
    _check_positive_int("scratch_steps", scratch_steps)
    if not (_is_real(length) and 0 < length <= 1):
        raise ValueError(f"length must be a fraction of the from-scratch schedule in (0, 1], got {length!r}; "
                         f"the recipes use {DEFAULT_LENGTH:.2f} (BERT) and {VIT_LENGTH:.2f} (ViT)")
    return max(1, round(scratch_steps * length))


def lr_lambda(scratch_steps: int, *, length: float = DEFAULT_LENGTH, peak: float = 1.0,
              warmup_steps: int | None = None, decay: str = "cosine", final: float = 0.0) -> Callable[[int], float]:
    """The LEMON schedule as a function of the step (0-based) giving the multiplier of the
    optimizer's base learning rate (the from-scratch peak). See the module docstring."""
    total = schedule_steps(scratch_steps, length)
    if decay not in DECAYS:
        raise ValueError(f"decay must be one of {DECAYS}, got {decay!r}")
    if not (_is_real(peak) and math.isfinite(peak) and peak > 0):
        raise ValueError(f"peak must be a positive multiplier of the base learning rate, got {peak!r}")
    if not (_is_real(final) and 0 <= final <= 1):
        raise ValueError(f"final must be a fraction of the peak in [0, 1], got {final!r}")
    warmup = round(total * DEFAULT_WARMUP_FRACTION) if warmup_steps is None else warmup_steps
    if not (_is_int(warmup) and 0 <= warmup < total):
        raise ValueError(f"warmup_steps must be an integer in [0, {total}) (the LEMON schedule has {total} "
                         f"steps), got {warmup_steps!r}")
    warmup, peak, final = int(warmup), float(peak), float(final)  # numpy scalars as Python numbers

    def multiplier(step: int) -> float:
        if step < warmup:
            return peak * (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if decay == "cosine" else 1 - progress
        return peak * (final + (1 - final) * shape)

    return multiplier


class LemonSchedule(torch.optim.lr_scheduler.LambdaLR):
    """:func:`lr_lambda` as a torch ``LRScheduler``: call ``step()`` after each optimizer step.
    The optimizer's learning rate is taken as the from-scratch peak."""

    def __init__(self, optimizer: torch.optim.Optimizer, scratch_steps: int, *, length: float = DEFAULT_LENGTH,
                 peak: float = 1.0, warmup_steps: int | None = None, decay: str = "cosine", final: float = 0.0,
                 last_epoch: int = -1):
        self.total_steps = schedule_steps(scratch_steps, length)
        super().__init__(optimizer, lr_lambda(scratch_steps, length=length, peak=peak, warmup_steps=warmup_steps,
                                              decay=decay, final=final), last_epoch=last_epoch)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)  # numpy integers too


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_positive_int(name: str, value) -> None:
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer (steps), got {value!r}")
