"""Deciding whether a model follows the one-pass layout, from probe logits alone.

A fixed tolerance cannot tell float rounding from a wrong layout: a pretrained model with
massive activations carries float32 noise in its logits above any fixed relative bound,
while a small random model that ignores the mask may be off by little in absolute terms.
:func:`layout_probe_verdict` therefore measures both scales on the model itself:

- the *separation*: how far the logits of deliberately wrong layouts (the deleted tokens
  left visible, positions counted without deletion) are from the correct ones;
- the *noise floor*: how far two equivalent plain computations of the correct logits are
  from each other.

The layout passes when its error is at most ``max(separation / SEPARATION_RATIO,
NOISE_MULTIPLE * noise)``: many times closer to the correct answer than the nearest wrong
one is, or within a few times the model's own rounding noise. It never passes when it is
not at least twice as close to the correct answer as to the one that ignores the mask, so
a noise floor as large as the mask's own effect cannot let such a model through. A wrong
hypothesis that changes the logits by no more than rounding (a model whose positions do not
matter) bounds nothing and cannot refuse a model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

SEPARATION_RATIO = 20.0
"""The layout's error must be this many times smaller than the nearest wrong answer's."""

NOISE_MULTIPLE = 4.0
"""...or at most this multiple of the rounding noise between two equivalent computations."""

MASK_IGNORED = "mask ignored"
"""The wrong answer that always bounds the tolerance (at most half its distance)."""


@dataclass(frozen=True)
class ProbeVerdict:
    """The layout's error, the tolerance it was held to, and the scales behind it."""

    error: float
    tolerance: float
    noise: float
    separations: dict[str, float]

    @property
    def accepted(self) -> bool:
        return self.error <= self.tolerance


def _distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def layout_probe_verdict(
    layout: torch.Tensor,
    correct: torch.Tensor,
    correct_again: torch.Tensor,
    wrong: Mapping[str, torch.Tensor],
) -> ProbeVerdict:
    """Judge the layout's probe logits against the correct ones, on the model's own scales.

    Args:
        layout: ``[S, V]`` logits of the probe states from the one-pass layout.
        correct: ``[S, V]`` logits of plain forwards over each state's visible tokens.
        correct_again: ``[S, V]`` the same logits by an equivalent plain computation (the
            states inside one right-padded batch): their distance is the noise floor.
        wrong: name -> ``[S, V]`` logits a wrong layout would give (``"mask ignored"``:
            deleted tokens still visible; ``"positions rebuilt"``: positions counted without
            deletion), computed through the same model.
    """
    error = _distance(layout, correct)
    noise = _distance(correct_again, correct)
    separations = {name: _distance(logits, correct) for name, logits in wrong.items()}
    tolerance = NOISE_MULTIPLE * noise
    if separations:
        tolerance = max(min(separations.values()) / SEPARATION_RATIO, tolerance)
    if MASK_IGNORED in separations:
        tolerance = min(tolerance, separations[MASK_IGNORED] / 2)
    return ProbeVerdict(error, tolerance, noise, separations)
