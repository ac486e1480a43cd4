"""Batched, KV-cached generation with ``<bkspc>``.

Every row feeds exactly one element per step into an append-only cache: the new token,
or after ``<bkspc>`` a copy of the token that is now last, with the same position ids and
attention rows as the one-pass layout (see :mod:`sequencematch.core.layout`), so sampling and
training see identical computations. Deleted elements and copies stay in the cache but
are never attended to again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, PreTrainedModel

from .actions import Batch, collate
from .causal_lm import check_backspace_support, checked_vocabulary
from .forward import (
    as_lengths,
    cache_keyword,
    model_mask,
    takes_logits_to_keep,
    verify_layout_once,
)
from .layout import build_layout


@dataclass
class GenerationOutput:
    """What :func:`generate` returns, one list entry per row.

    Attributes:
        sequences: visible generated tokens (prompt stripped; a final ``<eos>`` is kept).
        actions: the full action trace, ``<bkspc>`` included.
        logprobs: ``log pi(a_t | s_t)`` of each action under the model at temperature 1,
            over the valid actions (``<bkspc>`` masked at the prompt boundary).
        forced: whether each action was forced noise rather than sampled.
        finished: whether the row ended with ``<eos>``.
        prompts: the prompt of each row.
    """

    sequences: list[list[int]]
    actions: list[list[int]]
    logprobs: list[list[float]]
    forced: list[list[bool]]
    finished: list[bool]
    prompts: list[list[int]] = field(repr=False)

    def to_batch(self, pad_id: int = 0) -> Batch:
        """The traces as a padded :class:`Batch` of ``prompt + actions`` rows."""
        return collate(self.prompts, self.actions, pad_id=pad_id)


def _as_prompt_lists(prompt_ids: torch.Tensor | Sequence[Sequence[int]]) -> list[list[int]]:
    if torch.is_tensor(prompt_ids):
        if prompt_ids.dim() != 2:
            raise ValueError(
                f"prompt_ids must be a 2-D tensor [batch, prompt] or a list of token-id lists, "
                f"got shape {tuple(prompt_ids.shape)}"
            )
        return [row.tolist() for row in prompt_ids]
    return [[int(token) for token in row] for row in prompt_ids]


def _eos_ids(model: PreTrainedModel, eos_token_id: int | Sequence[int] | None) -> list[int]:
    if eos_token_id is None:
        config = getattr(model, "generation_config", None) or model.config
        eos_token_id = getattr(config, "eos_token_id", None)
    if eos_token_id is None:
        return []
    if isinstance(eos_token_id, Sequence):
        return [int(e) for e in eos_token_id]
    return [int(eos_token_id)]  # an int, or a numpy / torch integer


def _filter_scores(scores: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Top-k then nucleus (top-p) filtering of ``[B, V]`` scores (removed entries -> -inf)."""
    if top_k is not None and top_k > 0:
        kth = torch.topk(scores, min(top_k, scores.shape[-1]), dim=-1).values[:, -1:]  # [B, 1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True, dim=-1)  # [B, V]
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative - sorted_scores.softmax(dim=-1) >= top_p  # keep the first over p
        remove = remove.scatter(1, order, remove)
        scores = scores.masked_fill(remove, float("-inf"))
    return scores


def _check_arguments(
    max_new_tokens: int, temperature: float, top_p: float | None, noise_prob: float
) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if temperature <= 0:
        raise ValueError(
            f"temperature must be positive (use do_sample=False for greedy), got {temperature}"
        )
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
    if not 0.0 <= noise_prob <= 1.0:
        raise ValueError(f"noise_prob must lie in [0, 1], got {noise_prob}")


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    prompt_ids: torch.Tensor | Sequence[Sequence[int]],
    bkspc_id: int | None = None,
    max_new_tokens: int = 64,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    max_steps: int | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    noise_prob: float = 0.0,
    noise_token_ids: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    block_deleted: bool | None = None,
    vocab_size: int | None = None,
) -> GenerationOutput:
    """Generate with backtracking: sample (or pick greedily) a token or ``<bkspc>`` per step.

    Args:
        model: a causal LM (eager or SDPA attention); it is put in eval mode meanwhile.
        prompt_ids: ``[B, P]`` full prompts, or a list of (ragged) token-id lists.
        bkspc_id: id of ``<bkspc>``; ``None`` disables backspace (plain generation).
        max_new_tokens: a row stops once it shows this many generated tokens.
        do_sample: sample with ``temperature``/``top_k``/``top_p``; ``False`` is greedy.
        max_steps: a row stops after this many actions, backspaces included
            (default: ``4 * max_new_tokens`` with backspace, else ``max_new_tokens``).
        eos_token_id: a row stops after emitting it (default: the model's generation config).
        noise_prob: per step, with this probability a random token from
            ``noise_token_ids`` is forced instead of the model's choice (the forced-noise
            evaluation of compounding error).
        noise_token_ids: candidates for forced noise (default: every id except ``<bkspc>``,
            ``<eos>`` and the model's pad/bos ids).
        generator: random generator for sampling and noise, on the model's device.
        block_deleted: after ``<bkspc>`` removes a token, that token may not be chosen
            again in the state it was deleted from (until the prefix changes). Default:
            on for greedy decoding, where returning to a state would otherwise repeat the
            same choice and loop insert/delete until ``max_steps``; off for sampling, so
            samples follow the model's policy exactly. Forced noise ignores it.
        vocab_size: actions are the ids below this (default: every row of the model's
            embedding matrix). Pass the tokenizer's length for a model whose embedding
            matrix is padded beyond it: the padding rows' logits are then never sampled,
            never forced as noise and never part of the policy's normaliser.
    """
    _check_arguments(max_new_tokens, temperature, top_p, noise_prob)
    check_backspace_support(model)
    prompts = _as_prompt_lists(prompt_ids)
    if not prompts:
        raise ValueError("prompt_ids is empty: give at least one prompt")
    if any(len(prompt) == 0 for prompt in prompts):
        raise ValueError("every prompt needs at least one token (prepend a BOS token)")
    device = model.get_input_embeddings().weight.device
    vocab_size = checked_vocabulary(model, vocab_size, prompts, "a prompt")
    if bkspc_id is not None and not 0 <= bkspc_id < vocab_size:
        raise ValueError(f"bkspc_id {bkspc_id} lies outside the vocabulary of size {vocab_size}")
    if bkspc_id is not None and any(bkspc_id in prompt for prompt in prompts):
        raise ValueError(f"a prompt contains <bkspc> (id {bkspc_id}); prompts are text")
    eos_ids = _eos_ids(model, eos_token_id)
    if max_steps is None:
        max_steps = 4 * max_new_tokens if bkspc_id is not None else max_new_tokens
    noise_pool = _noise_pool(model, vocab_size, bkspc_id, eos_ids, noise_token_ids, noise_prob)

    was_training = model.training
    model.eval()
    try:
        verify_layout_once(model)
        return _run(
            model, prompts, device, bkspc_id, eos_ids, max_new_tokens, max_steps,
            do_sample, temperature, top_k, top_p, noise_prob, noise_pool, generator,
            (not do_sample) if block_deleted is None else block_deleted, vocab_size,
        )  # fmt: skip
    finally:
        model.train(was_training)


def _noise_pool(
    model: PreTrainedModel,
    vocab_size: int,
    bkspc_id: int | None,
    eos_ids: list[int],
    noise_token_ids: Sequence[int] | None,
    noise_prob: float,
) -> torch.Tensor | None:
    """The candidate ids for forced noise, ``[N]``, or ``None`` when noise is off."""
    if noise_prob == 0.0:
        return None
    if noise_token_ids is None:
        excluded = {bkspc_id, *eos_ids}
        excluded |= {getattr(model.config, "pad_token_id", None)}
        excluded |= {getattr(model.config, "bos_token_id", None)}
        noise_token_ids = [token for token in range(vocab_size) if token not in excluded]
    if len(noise_token_ids) == 0:
        raise ValueError("noise_token_ids is empty: forced noise needs candidate tokens")
    if bkspc_id is not None and bkspc_id in noise_token_ids:
        raise ValueError("noise_token_ids contains <bkspc>; forced noise must be tokens")
    return torch.as_tensor(list(noise_token_ids), dtype=torch.long)


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    """Half-precision logits to float32 for sampling; float32/float64 stay as they are."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def _block(
    logits: torch.Tensor, blocked: list[dict[int, set[int]]], depth: torch.Tensor
) -> torch.Tensor:
    """``[B, V]`` logits with the tokens already deleted from each row's state at -inf."""
    rows = [row for row, table in enumerate(blocked) if table]
    if not rows:
        return logits
    depths = depth.tolist()
    choice = logits.clone()
    for row in rows:
        tokens = blocked[row].get(depths[row])
        if tokens:
            choice[row, list(tokens)] = float("-inf")
    return choice


def _update_blocked(
    blocked: list[dict[int, set[int]]],
    stack_tokens: torch.Tensor,
    depth: torch.Tensor,
    is_bkspc: torch.Tensor,
    is_token: torch.Tensor,
) -> None:
    """Record deleted tokens by the state they were deleted from; forget deeper states
    once a new token changes the prefix."""
    depths = depth.tolist()
    for row in is_bkspc.nonzero()[:, 0].tolist():
        deleted = int(stack_tokens[row, depths[row]])  # the token that stood at this depth
        blocked[row].setdefault(depths[row], set()).add(deleted)
    for row in is_token.nonzero()[:, 0].tolist():
        if blocked[row]:
            blocked[row] = {d: t for d, t in blocked[row].items() if d < depths[row]}


def _run(
    model: PreTrainedModel,
    prompts: list[list[int]],
    device: torch.device,
    bkspc_id: int | None,
    eos_ids: list[int],
    max_new_tokens: int,
    max_steps: int,
    do_sample: bool,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    noise_prob: float,
    noise_pool: torch.Tensor | None,
    generator: torch.Generator | None,
    block_deleted: bool,
    vocab_size: int,
) -> GenerationOutput:
    batch = len(prompts)
    rows = torch.arange(batch, device=device)
    prompt_lengths = as_lengths([len(p) for p in prompts], device)  # [B]
    width = int(prompt_lengths.max())
    capacity = width + max_steps + 1
    cache = DynamicCache()
    cache_argument = {cache_keyword(model): cache}

    # Prefill: the right-padded prompts in one pass (padding attends only to itself).
    padded = torch.zeros(batch, width, dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        padded[row, : len(prompt)] = torch.tensor(prompt, device=device)
    layout = build_layout(padded, prompt_lengths, prompt_lengths, None)
    # Only each row's last prompt position needs logits: the LM head runs on the distinct
    # ones (K of them) instead of every prompt position (a 49k vocabulary makes it costly).
    last = prompt_lengths - 1  # [B]
    keep, pick = torch.unique(last, return_inverse=True)  # [K], [B]
    head_positions = {"logits_to_keep": keep} if takes_logits_to_keep(model) else {}
    output = model(
        input_ids=layout.input_ids,
        attention_mask=model_mask(model, layout.attention_mask),
        position_ids=layout.position_ids,
        use_cache=True,
        **cache_argument,
        **head_positions,
    )
    column = pick if head_positions else last  # [B] column of each row's last prompt position
    logits = _upcast(output.logits[rows, column, :vocab_size])  # [B, V]

    # The visible stack of each row: its tokens and the cache slots of their originals.
    alive = torch.zeros(batch, capacity, dtype=torch.bool, device=device)  # [B, C]
    alive[:, :width] = layout.valid
    stack_tokens = torch.zeros(batch, capacity, dtype=torch.long, device=device)  # [B, C]
    stack_tokens[:, :width] = padded
    stack_slots = torch.arange(capacity, device=device).repeat(batch, 1)  # [B, C]
    depth = prompt_lengths.clone()  # [B]
    done = torch.zeros(batch, dtype=torch.bool, device=device)  # [B]
    eos = torch.tensor(eos_ids, dtype=torch.long, device=device)
    traces: list[list[int]] = [[] for _ in range(batch)]
    logprob_traces: list[list[float]] = [[] for _ in range(batch)]
    forced_traces: list[list[bool]] = [[] for _ in range(batch)]
    finished = [False] * batch
    slot = width  # next free cache slot
    # tokens deleted from each state, per row: {depth: {token, ...}} (see block_deleted)
    blocked: list[dict[int, set[int]]] = [{} for _ in range(batch)]

    for step in range(max_steps):
        # Valid actions: <bkspc> only where a generated token is visible.
        if bkspc_id is not None:
            at_prompt = depth <= prompt_lengths  # [B]
            logits[:, bkspc_id] = logits[:, bkspc_id].masked_fill(at_prompt, float("-inf"))
        log_policy = logits.log_softmax(dim=-1)  # [B, V]
        choice = _block(logits, blocked, depth) if block_deleted else logits  # [B, V]
        if do_sample:
            scores = _filter_scores(choice / temperature, top_k, top_p)
            action = torch.multinomial(scores.softmax(dim=-1), 1, generator=generator)[:, 0]
        else:
            action = choice.argmax(dim=-1)  # [B]
        forced = torch.zeros(batch, dtype=torch.bool, device=device)
        if noise_pool is not None:
            forced = torch.rand(batch, generator=generator, device=device) < noise_prob
            pick = torch.randint(len(noise_pool), (batch,), generator=generator, device=device)
            action = torch.where(forced, noise_pool.to(device)[pick], action)
        step_logprob = log_policy[rows, action]  # [B]
        for row in (~done).nonzero()[:, 0].tolist():
            traces[row].append(int(action[row]))
            logprob_traces[row].append(float(step_logprob[row]))
            forced_traces[row].append(bool(forced[row]))

        # Apply the action to each row's stack and choose the element it feeds.
        is_bkspc = (action == bkspc_id) & ~done if bkspc_id is not None else torch.zeros_like(done)
        is_token = ~is_bkspc & ~done
        depth = depth - is_bkspc.long()
        popped = stack_slots[rows, depth]  # [B] slot of the deleted original (bkspc rows)
        alive[rows[is_bkspc], popped[is_bkspc]] = False
        stack_tokens[rows[is_token], depth[is_token]] = action[is_token]
        stack_slots[rows[is_token], depth[is_token]] = slot
        alive[rows[is_token], slot] = True
        depth = depth + is_token.long()
        if block_deleted:
            _update_blocked(blocked, stack_tokens, depth, is_bkspc, is_token)
        top = (depth - 1).clamp(min=0)
        feed = torch.where(done, 0, stack_tokens[rows, top])  # [B]
        position = torch.where(done, 0, depth - 1)  # [B]

        # Attention row: the visible originals; a copy stands in for the original top.
        row_mask = alive[:, : slot + 1].clone()  # [B, slot + 1]
        row_mask[rows[is_bkspc], stack_slots[rows, top][is_bkspc]] = False
        row_mask[done] = False
        row_mask[:, slot] = True

        ended = is_token & torch.isin(action, eos)
        full = is_token & (depth - prompt_lengths >= max_new_tokens)
        for row in ended.nonzero()[:, 0].tolist():
            finished[row] = True
        done = done | ended | full
        if bool(done.all()) or step == max_steps - 1:
            break
        output = model(
            input_ids=feed[:, None],
            attention_mask=model_mask(model, row_mask[:, None, :]),
            position_ids=position[:, None],
            use_cache=True,
            **cache_argument,
        )
        logits = _upcast(output.logits[:, -1, :vocab_size])  # [B, V]
        slot += 1

    sequences = [
        stack_tokens[row, len(prompts[row]) : int(depth[row])].tolist() for row in range(batch)
    ]
    return GenerationOutput(sequences, traces, logprob_traces, forced_traces, finished, prompts)
