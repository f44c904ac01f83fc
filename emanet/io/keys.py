"""How the keys of a state dict meet a model's: which tensors load, which are missing,
unexpected or of another shape. Loading a checkpoint and a pretrained backbone report through
this one comparison."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

__all__ = ["KeyReport"]

_MAX_LISTED = 10  # keys shown per category in a report


@dataclass(frozen=True)
class KeyReport:
    """The comparison of a state dict (from a file) with a model's.

    Attributes:
        loaded: keys whose tensor fits the model's (same name and shape).
        missing: model keys the file does not have.
        unexpected: file keys the model does not have.
        misshaped: ``(key, file shape, model shape)`` of keys whose shapes differ.
    """

    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    misshaped: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]

    @classmethod
    def compare(
        cls, state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
    ) -> KeyReport:
        """Compare ``state_dict`` with ``expected`` (a model's ``state_dict()``)."""
        misshaped = tuple(
            (key, tuple(value.shape), tuple(expected[key].shape))
            for key, value in state_dict.items()
            if key in expected and value.shape != expected[key].shape
        )
        wrong = {key for key, _, _ in misshaped}
        return cls(
            loaded=tuple(k for k in state_dict if k in expected and k not in wrong),
            missing=tuple(k for k in expected if k not in state_dict),
            unexpected=tuple(k for k in state_dict if k not in expected),
            misshaped=misshaped,
        )

    @property
    def exact(self) -> bool:
        """Every key matches by name and shape."""
        return not (self.missing or self.unexpected or self.misshaped)

    def describe(self, name: str) -> str:
        """A multi-line account of what does not match, for ``name`` (the file)."""
        total = len(self.loaded) + len(self.missing) + len(self.misshaped)
        lines = [
            f"Checkpoint {name!r} does not match the model: {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.misshaped)} wrongly shaped keys "
            f"(the model has {total} keys)."
        ]
        if self.missing:
            lines.append(f"  missing keys ({len(self.missing)}): {listing(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected keys ({len(self.unexpected)}): {listing(self.unexpected)}")
        if self.misshaped:
            lines.append(
                f"  wrongly shaped keys ({len(self.misshaped)}), checkpoint shape vs model shape:"
            )
            lines += [
                f"    {key}: {got} vs {want}" for key, got, want in self.misshaped[:_MAX_LISTED]
            ]
            if len(self.misshaped) > _MAX_LISTED:
                lines.append(f"    ... and {len(self.misshaped) - _MAX_LISTED} more")
        if not self.loaded and not self.misshaped:
            lines.append(
                "  No key matches at all: the checkpoint is for another architecture or uses "
                "other module names."
            )
        return "\n".join(lines)

    def reuse_summary(self, name: str, reinitialised: tuple[str, ...] = ()) -> str:
        """What a fine-tuning start takes from ``name`` (reused keys, by top-level module) and
        what the model initialises itself (new keys, with the file's shape where it differs);
        ``reinitialised``: file keys left out on purpose (e.g. classifiers of other classes)."""
        groups: dict[str, int] = {}
        for key in self.loaded:
            groups[key.split(".")[0]] = groups.get(key.split(".")[0], 0) + 1
        total = len(self.loaded) + len(self.missing) + len(self.misshaped)
        by_module = ", ".join(f"{module} {count}" for module, count in groups.items())
        lines = [
            f"from {name}: reused {len(self.loaded)} of {total} tensors ({by_module or 'none'})"
        ]
        new = [f"{key} {want}" for key, _, want in self.misshaped]
        new += [f"{key} (other classes in the file)" for key in reinitialised]
        new += [f"{key} (not in the file)" for key in self.missing if key not in reinitialised]
        if new:
            lines.append(f"  new, initialised here ({len(new)}): {listing(new)}")
        if self.unexpected:
            lines.append(f"  in the file, not in the model ({len(self.unexpected)}): "
                         f"{listing(self.unexpected)}")  # fmt: skip
        return "\n".join(lines)


def listing(keys) -> str:
    """The first keys of ``keys``, comma-separated, and how many more there are."""
    keys = list(keys)
    shown = ", ".join(str(k) for k in keys[:_MAX_LISTED])
    more = len(keys) - _MAX_LISTED
    return shown + (f", ... and {more} more" if more > 0 else "")
