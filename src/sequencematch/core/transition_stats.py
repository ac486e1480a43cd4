"""Means of r, V and log pi per kind of transition, for metrics.jsonl.

Pooled over every transition, the reward and value hide what the objective does where it
matters: at a data ``<eos>`` (does the objective still want the answer to end?), at the
``<bkspc>`` after a wrong token (is deletion learned?), on ordinary data tokens and on the
model's own rows. docs/method.md explains what each should look like.
"""

from __future__ import annotations

import torch

from .transitions import Transitions

KINDS = ("token", "eos", "bkspc")
"""Kinds of data transitions: an ordinary token, the final ``<eos>``, a ``<bkspc>``."""


def kinds_of(
    trans: Transitions, sequences: torch.Tensor, bkspc_id: int | None
) -> dict[str, torch.Tensor]:
    """``[B, T]`` masks of the expert transitions of each kind in :data:`KINDS`."""
    sequences = sequences.to(trans.mask.device)
    deletes = sequences == bkspc_id if bkspc_id is not None else torch.zeros_like(trans.mask)
    return {
        "token": trans.mask & ~trans.done & ~deletes,
        "eos": trans.mask & trans.done,
        "bkspc": trans.mask & deletes,
    }


def transition_statistics(
    trans: Transitions,
    sequences: torch.Tensor,
    bkspc_id: int | None,
    gamma: float,
    prefix: str,
    with_values: bool = True,
) -> dict[str, float]:
    """``{prefix}{kind}/logp`` (and ``/r``, ``/v`` with ``with_values``) means and
    ``{prefix}{kind}/n`` counts per kind; a kind with no transition is left out. ``prefix``
    ``"model/"`` pools every model transition as one kind, ``all``."""
    reward = trans.reward(gamma).detach()  # [B, T]
    log_pi = (trans.q - trans.v).detach()  # [B, T] the same in every reading of Q
    masks = (
        {"all": trans.mask} if prefix.startswith("model") else kinds_of(trans, sequences, bkspc_id)
    )
    found: dict[str, float] = {}
    for kind, mask in masks.items():
        count = int(mask.sum())
        if count == 0:
            continue
        name = f"{prefix}{kind}/"
        found[name + "n"] = float(count)
        found[name + "logp"] = float(log_pi[mask].mean())
        if with_values:
            found[name + "r"] = float(reward[mask].mean())
            found[name + "v"] = float(trans.v.detach()[mask].mean())
    return found
