"""What a training run writes into its work dir, and the state that resumes it.

* ``config.json``: the run's :class:`~emanet.training.config.TrainConfig`;
* ``latest.pth``: the full training state (model, optimiser momenta, iteration, every rank's
  RNG states, preset, config), every ``checkpoint_interval`` iterations and at the end; a run
  restarted with ``--resume`` continues from it exactly;
* ``metrics.jsonl``: a row per log interval (losses, learning rate, time) and per validation;
* ``model.pth``: the trained weights in emanet's checkpoint format, with the test scale the run
  validated at; ``curves.png``: the loss and mIoU curves.

Every file is written atomically, so a crash or a full disk leaves the previous complete file.
A save that fails says so in one line, with what to do (free space, ``--resume``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from emanet.io.atomic import WriteError, atomic_save, atomic_write, atomic_write_text
from emanet.io.checkpoint import save_checkpoint
from emanet.viz.figures import plot_training_curves

from .config import TrainConfig, config_to_json
from .run import Run

__all__ = ["WorkDir", "restore_state", "save_state"]

log = logging.getLogger(__name__)


class WorkDir:
    """The files of one run in ``config.work_dir`` (only rank 0 writes)."""

    def __init__(self, config: TrainConfig, run: Run) -> None:
        self.root = Path(config.work_dir)
        self.config, self.run = config, run
        self.latest = self.root / "latest.pth"
        self.metrics = self.root / "metrics.jsonl"
        self.saved_at: int | None = None  # iteration of the last complete latest.pth

    def begin(self, start: int) -> None:
        """Write ``config.json`` (which also shows that the folder is writable); a run from
        scratch starts a new ``metrics.jsonl``."""
        self.saved_at = start if start else None
        if self.run.rank != 0:
            return
        text = json.dumps(config_to_json(self.config), indent=2)
        atomic_write_text(self.root / "config.json", text)
        if start == 0 and self.metrics.exists():
            self.metrics.unlink()

    def log(self, row: dict) -> None:
        """Append a row to ``metrics.jsonl``."""
        if self.run.rank != 0:
            return
        try:
            with self.metrics.open("a") as file:
                file.write(json.dumps(row) + "\n")
        except OSError as error:
            raise WriteError(self.metrics, error, True, self._advice()) from error

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, iteration: int) -> None:
        """Save the training state to ``latest.pth`` (collective under DDP)."""
        try:
            save_state(self.latest, model, optimizer, iteration, self.config, self.run)
        except WriteError as error:
            raise error.with_advice(self._advice()) from None
        self.saved_at = iteration

    def finish(
        self, model: nn.Module, iteration: int, val: dict, test_scale, classes, palette
    ) -> None:
        """``model.pth`` (our format, with the dataset's class names and palette and the test
        scale it was validated at) and ``curves.png``."""
        if self.run.rank != 0:
            return
        meta = {"iterations": iteration, "config": config_to_json(self.config), "val": val}
        try:
            save_checkpoint(
                self.root / "model.pth",
                model,
                preset=model.preset.name,
                classes=list(classes),
                palette=[tuple(c) for c in palette],
                test_scale=test_scale,
                meta=meta,
            )
        except WriteError as error:
            raise error.with_advice(self._advice()) from None
        self._draw_curves()

    def _draw_curves(self) -> None:
        try:
            figure = plot_training_curves(self.metrics)
            atomic_write(
                self.root / "curves.png", lambda tmp: figure.savefig(tmp, format="png", dpi=100)
            )
        except Exception as error:  # a plot must never lose a finished run
            log.warning("could not draw the training curves: %s", error)

    def intact(self) -> str:
        """What a run that stops now leaves to resume from, in words."""
        if self.saved_at:
            return f"latest.pth (iteration {self.saved_at}) is intact"
        return "no checkpoint was saved yet"

    def _advice(self) -> str:
        resumes = f"iteration {self.saved_at}" if self.saved_at else "the start"
        return (
            "free some space (or choose another --work-dir), then run the same command with "
            f"--resume: it continues from {resumes}"
        )


def save_state(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    iteration: int,
    config: TrainConfig,
    run: Run,
) -> None:
    """Write the full training state of ``model`` (an EMANet) atomically to ``path``;
    collective under DDP (every rank calls it, rank 0 writes). With ``config.snapshot_bases``
    the EM bases also go to ``bases/iter_NNNNNNN.pth`` beside it."""
    rngs = [_rng_state(run.device)]
    if run.world > 1:
        gathered = [None] * run.world
        dist.all_gather_object(gathered, {k: v.cpu() for k, v in rngs[0].items()})
        rngs = gathered
    if run.rank != 0:
        return
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "iteration": iteration,
        "rng": rngs,
        "preset": model.preset.name,
        "config": config_to_json(config),
    }
    atomic_save(state, path)
    if config.snapshot_bases:
        bases = model.em_unit.bases.detach().cpu().clone()
        atomic_save(bases, path.parent / "bases" / f"iter_{iteration:07d}.pth")


def restore_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, run: Run) -> int:
    """Load a :func:`save_state` file into ``model`` and ``optimizer``, restore this rank's RNG
    states, and return the iteration it was saved at."""
    state = torch.load(path, map_location=run.device, weights_only=True)
    model.load_state_dict(state["model"])
    # How the update runs (the fused kernel on CUDA) is this run's device's choice, not the
    # saving run's: load_state_dict would bring back the saved flags with the momenta.
    implementation = [
        {key: group[key] for key in ("fused", "foreach") if key in group}
        for group in optimizer.param_groups
    ]
    optimizer.load_state_dict(state["optimizer"])
    for group, keys in zip(optimizer.param_groups, implementation, strict=True):
        group.update(keys)
    rngs = state["rng"]
    _set_rng_state(rngs[run.rank] if run.rank < len(rngs) else rngs[0], run.device)
    start = int(state["iteration"])
    log.info("resumed from %s at iteration %d", path, start)
    return start


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    # Generator states are CPU byte tensors whatever device the checkpoint was mapped to.
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
