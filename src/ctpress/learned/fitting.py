"""The optimisation loop of ``ctpress train`` (Adam, cosine decay, a time budget turned
into a step count) and the commands recorded with the weights it trains.

A run given ``seconds`` times its first :data:`TIMING_STEPS` steps and fixes its step
count from them; the count is recorded with the weights, so ``--steps`` reproduces it.
"""

from __future__ import annotations

import math
import shlex
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from .data import HELD_OUT_VOLUMES, DataFiles

#: Steps timed before a time budget becomes a step count (the learning rate is constant
#: over them, so a ``steps`` run and a ``seconds`` run of the same count are the same).
TIMING_STEPS = 20


def training_device() -> torch.device:
    """A GPU when one is present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cosine_decay(step: int, total: int) -> float:
    """1 over the timing steps, then a cosine decay to 0.01 at ``total``."""
    if step < TIMING_STEPS:
        return 1.0
    progress = (step - TIMING_STEPS) / max(total - TIMING_STEPS, 1)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))


def fit(
    parameters: Iterable[torch.nn.Parameter],
    loss_of_batch: Callable[[], tuple[torch.Tensor, dict[str, float]]],
    *,
    steps: int | None,
    seconds: float | None,
    learning_rate: float,
    say: Callable[..., Any],
    label: str,
) -> tuple[int, float, list[dict[str, float]]]:
    """Minimise the loss of ``loss_of_batch()`` (a fresh batch each call; it returns the loss
    and statistics to log with it) with Adam for ``steps``, or for about ``seconds``;
    gradients clipped to norm 1.  Returns (steps, seconds, history every 200 steps of the
    loss's running mean and the latest statistics)."""
    params = list(parameters)
    optimizer = torch.optim.Adam(params, lr=learning_rate)
    total = steps if steps is not None else TIMING_STEPS
    step, running, history = 0, 0.0, []
    t0 = time.perf_counter()
    while step < total:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate * cosine_decay(step, total)
        loss, stats = loss_of_batch()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        step += 1
        value = float(loss.detach())
        running = value if step == 1 else 0.98 * running + 0.02 * value
        if seconds is not None and step == TIMING_STEPS:
            per_step = (time.perf_counter() - t0) / TIMING_STEPS
            total = max(TIMING_STEPS, int(seconds / per_step))
            say(f"{label}: {per_step * 1e3:.0f} ms/step: {total} steps")
        if step % 200 == 0 or step == total:
            history.append({"step": step, "loss": running, **stats})
            say(
                f"{label}: step {step}/{total} loss (running mean) {running:.4g} "
                + " ".join(f"{k} {v:.4g}" for k, v in stats.items())
            )
    return total, time.perf_counter() - t0, history


def reproduce_command(
    method: str, rate_point: int, data: list[Path], out: Path, steps: int, seed: int
) -> str:
    """The ``ctpress train`` command that reruns a training with a fixed step count."""
    args = ["ctpress", "train", method, "--rate-point", str(rate_point), "--data"]
    args += [str(p) for p in data]
    return shlex.join([*args, "--out", str(out), "--steps", str(steps), "--seed", str(seed)])


def main_command() -> str:
    """The current process's command line (recorded in the weights)."""
    return shlex.join(["ctpress", *sys.argv[1:]])


def training_record(
    method: str,
    rate_point: int,
    train_files: DataFiles,
    data: list[Path],
    out: Path,
    *,
    steps: int,
    seed: int,
    train_seconds: float,
    started: float,
    device: torch.device | str,
) -> dict[str, Any]:
    """The provenance every trained weights file records: what was trained on which data
    (the held-out volumes named), how long, where, with which versions, and the
    ``ctpress train`` command that reproduces it (``started``: ``time.perf_counter()`` at
    the start of the run)."""
    return {
        "method": method,
        "rate_point": rate_point,
        "steps": steps,
        "seed": seed,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "train_data": sorted({p.stem for p in (*train_files.volumes, *train_files.projections)}),
        "held_out_volumes": list(HELD_OUT_VOLUMES),
        "reproduce": reproduce_command(method, rate_point, data, out, steps, seed),
        "ctpress": __version__,
        "torch": torch.__version__,
    }
