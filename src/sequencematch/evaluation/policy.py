"""What a trained policy does around a reference answer: does it end, delete, or leak mass?

Accuracy says whether sampled answers come out right; these numbers say why not. A model
that puts its mass on ``<eos>`` after a correct answer ends it; one that spreads it over the
vocabulary's tail writes junk after it (a flattened policy); one that can delete puts mass
on ``<bkspc>`` after a wrong token, and not after a right one. docs/method.md explains why
fine-tuning with a new action can flatten a pretrained policy; these are the checks.

One plain forward per reference row reads three states at once (a causal model's logits at
a position depend on the tokens up to it): the prompt (first-token entropy and the mass
outside its ten most likely tokens), the prompt + reference completion (``P(<eos>)``,
``P(<bkspc>)``, the mass on neither) and the prompt + completion + one wrong token
(``P(<bkspc>)``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from ..core.actions import NoiseSource, UniformNoise

TOP_K = 10


@dataclass(frozen=True)
class ReferenceRow:
    """A held-out prompt and its reference completion, as token ids (no ``<eos>``).

    ``final``: the completion is a real end (an answer), so ``<eos>`` is the right next action.
    """

    prompt: list[int]
    completion: list[int]
    final: bool = True


@dataclass(frozen=True)
class PolicyDiagnostics:
    """Means over the reference rows (NaN where no row applies).

    Attributes:
        p_eos: ``P(<eos> | prompt + completion)`` over final rows.
        tail_at_end: mass on neither ``<eos>`` nor ``<bkspc>`` there (final rows): what a
            finished answer leaks to the vocabulary's tail.
        p_bkspc_at_end: ``P(<bkspc> | prompt + completion)`` (every row): deleting a right token.
        p_bkspc_after_wrong: ``P(<bkspc> | prompt + completion + a wrong token)``.
        first_token_entropy: entropy (nats) of the first completion token.
        outside_top10: mass outside the ten most likely first completion tokens.
        rows: reference rows measured.
    """

    p_eos: float
    tail_at_end: float
    p_bkspc_at_end: float
    p_bkspc_after_wrong: float
    first_token_entropy: float
    outside_top10: float
    rows: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def calibrated_bkspc_rate(p_noise: float, belief: float, choices: int) -> float:
    """How often noise-augmented rows delete a token that a model believes right with
    probability ``belief``, when a mistake (drawn from ``choices`` wrong tokens) is inserted
    before each token with probability ``p_noise``: the rate maximum likelihood converges to
    (docs/method.md, "What a calibrated ``<bkspc>`` policy deletes")."""
    if not (0.0 <= p_noise <= 1.0 and 0.0 <= belief <= 1.0 and choices >= 1):
        raise ValueError(f"need p_noise, belief in [0, 1] and choices >= 1, got "
                         f"{p_noise}, {belief}, {choices}")  # fmt: skip
    wrong = p_noise * (1.0 - belief) / choices  # the data wrote a mistake that reads as d
    right = (1.0 - p_noise) * belief  # the data wrote d itself
    return wrong / (wrong + right) if wrong + right > 0 else 0.0


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


@torch.no_grad()
def policy_diagnostics(
    model: torch.nn.Module,
    rows: Sequence[ReferenceRow],
    *,
    bkspc_id: int | None,
    eos_id: int,
    vocab_size: int,
    pad_id: int = 0,
    wrong_token: NoiseSource | None = None,
    exclude: Sequence[int] = (),
    seed: int = 0,
    batch_size: int = 32,
) -> PolicyDiagnostics:
    """Measure ``model`` (a causal LM, any wrapper) on ``rows``; see :class:`PolicyDiagnostics`.

    ``wrong_token``: the task's plausible mistakes (``source(prefix, -1, rng)``); without it a
    token drawn uniformly from the vocabulary but ``exclude``, ``<eos>`` and ``<bkspc>``.
    Probabilities are taken over the ``vocab_size`` real actions; ``<bkspc>`` is invalid at
    the prompt (nothing generated to delete).
    """
    if not rows:
        raise ValueError("policy diagnostics need at least one reference row")
    rng = random.Random(seed)
    special = [eos_id, *exclude, *([bkspc_id] if bkspc_id is not None else [])]
    source = wrong_token or UniformNoise(vocab_size, exclude=special)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    names = [name for name in PolicyDiagnostics.__annotations__ if name != "rows"]
    found: dict[str, list[float]] = {name: [] for name in names}
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        sequences = []
        for row in chunk:
            prefix = [*row.prompt, *row.completion]
            sequences.append([*prefix, int(source(prefix, -1, rng))])
        width = max(len(s) for s in sequences)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for b, sequence in enumerate(sequences):
            ids[b, : len(sequence)] = torch.tensor(sequence)
            mask[b, : len(sequence)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        logits = logits[..., :vocab_size].float()  # [B, T, V]
        for b, row in enumerate(chunk):
            first_at, end_at = len(row.prompt) - 1, len(row.prompt) + len(row.completion) - 1
            first = logits[b, first_at].clone()
            if bkspc_id is not None:
                first[bkspc_id] = float("-inf")
            log_first = first.log_softmax(-1)
            found["first_token_entropy"].append(float(-(log_first.exp() * log_first).nansum()))
            top = log_first.exp().topk(TOP_K).values.sum()
            found["outside_top10"].append(float(1.0 - top))
            end = logits[b, end_at].softmax(-1)
            wrong = logits[b, end_at + 1].softmax(-1)
            can_delete = bool(row.completion)  # at the prompt itself nothing can be deleted
            bkspc = float(end[bkspc_id]) if bkspc_id is not None and can_delete else 0.0
            if bkspc_id is not None and not can_delete:
                end = logits[b, end_at].clone().index_fill_(0, torch.tensor(bkspc_id), -math.inf)
                end = end.softmax(-1)
            found["p_bkspc_at_end"].append(bkspc)
            found["p_bkspc_after_wrong"].append(float(wrong[bkspc_id]) if bkspc_id is not None
                                                else 0.0)  # fmt: skip
            if row.final:
                found["p_eos"].append(float(end[eos_id]))
                found["tail_at_end"].append(float(1.0 - end[eos_id]) - bkspc)
    if was_training:
        model.train()
    return PolicyDiagnostics(**{n: _mean(v) for n, v in found.items()}, rows=len(rows))
