"""Perplexity of human completions under a model (a policy over tokens plus ``<bkspc>``)."""

from __future__ import annotations

import math

import torch
from transformers import PreTrainedModel

from ..core.actions import collate
from ..core.causal_lm import backspace_id, checked_vocabulary
from ..core.forward import state_logits

LOGITS_BUDGET = 2**26  # floats of logits held at once (256 MB in float32)


def rows_within_budget(batch_size: int, length: int, vocab: int) -> int:
    """Rows scored at once: at most ``batch_size``, and few enough that their ``[rows,
    length, vocab]`` logits stay within :data:`LOGITS_BUDGET` (a 49k vocabulary makes 64
    rows of 160 tokens 2 GB per copy), but at least one."""
    return max(1, min(batch_size, LOGITS_BUDGET // max(1, length * vocab)))


@torch.no_grad()
def perplexity(
    model: PreTrainedModel,
    prompts: list[list[int]],
    completions: list[list[int]],
    *,
    batch_size: int = 64,
    vocab_size: int | None = None,
) -> float:
    """Perplexity of completions given prompts: ``exp`` of the mean NLL per completion token.

    Completions are token ids as in training data, so the caller includes the final
    ``<eos>`` (it is scored like any other token). The model is a policy over the vocabulary
    plus ``<bkspc>``: probability mass on ``<bkspc>`` counts against the data, except in
    the state right after the prompt, where ``<bkspc>`` is not a valid action and is masked
    as in sampling. The mean is over all completion tokens of all rows (token-weighted).

    ``vocab_size``: the actions are the ids below it (default: every row of the embedding
    matrix). Pass the tokenizer's length (``valid_vocabulary``) for a model whose embedding
    matrix is padded beyond it: the padding rows' logits then stay out of the softmax.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    bkspc_id = backspace_id(model)
    if bkspc_id is not None and any(bkspc_id in row for row in completions):
        raise ValueError("completions contain <bkspc>; perplexity scores data without it")
    if any(len(prompt) == 0 for prompt in prompts):
        raise ValueError("every prompt needs at least one token (prepend a BOS token)")
    device = model.get_input_embeddings().weight.device
    vocab = checked_vocabulary(model, vocab_size, completions, "a completion")
    total_nll, total_tokens = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        longest = max(len(p) + len(c) for p, c in zip(prompts, completions, strict=True))
        rows = rows_within_budget(batch_size, longest, vocab)
        for start in range(0, len(prompts), rows):
            batch = collate(prompts[start : start + rows], completions[start : start + rows]).to(
                device
            )
            logits = state_logits(
                model, batch.sequences, batch.prompt_lengths, batch.lengths, bkspc_id=None
            )[..., :vocab]  # [B, T, V]: logits[b, t] score element t + 1
            if logits.dtype in (torch.float16, torch.bfloat16):
                logits = logits.float()
            row_index = torch.arange(logits.shape[0], device=device)
            if bkspc_id is not None:
                logits = logits.clone()
                logits[row_index, batch.prompt_lengths - 1, bkspc_id] = float("-inf")
            log_probs = logits[:, :-1].log_softmax(dim=-1)  # [B, T-1, V]
            targets = batch.sequences[:, 1:]  # [B, T-1]
            token_log_probs = log_probs.gather(-1, targets[..., None])[..., 0]  # [B, T-1]
            index = torch.arange(1, batch.sequences.shape[1], device=device)  # [T-1]
            scored = (index >= batch.prompt_lengths[:, None]) & (
                index < batch.lengths[:, None]
            )  # [B, T-1]: the target is a completion token
            total_nll -= token_log_probs[scored].double().sum().item()
            total_tokens += int(scored.sum())
    finally:
        model.train(was_training)
    if total_tokens == 0:
        raise ValueError("no completion tokens to score")
    return math.exp(total_nll / total_tokens)
