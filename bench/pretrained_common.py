"""Shared pieces of the pretrained-model benchmarks: the model, batches and one training step.

The step is built from the core functions the trainer composes: ``chunked_state_logits`` (or
``state_logits``) over the data rows and the model rows in one forward pass, ``mle_loss`` and
``sequencematch_loss``, backward, an AdamW step.
"""

from __future__ import annotations

import argparse
import copy
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from sequencematch.core.actions import Batch, collate
from sequencematch.core.causal_lm import BKSPC_TOKEN, causal_lm
from sequencematch.core.forward import chunked_state_logits, state_logits
from sequencematch.core.objectives import ObjectiveConfig, mle_loss, sequencematch_loss
from sequencematch.models.backspace import add_backspace
from sequencematch.models.loading import load_model
from sequencematch.models.lora import apply_lora

from .common import benchmark_model

MODELS = ("smollm2-135m", "tiny")


def parse_args(description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None):
    """``--quick``, ``--threads``, ``--model`` and whatever ``extra`` adds."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small batches and few repeats")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--model", choices=MODELS, default="smollm2-135m",
                        help="SmolLM2-135M (vocabulary 49,153 with <bkspc>) or a tiny "
                        "character-level Llama")  # fmt: skip
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def load(name: str, quick: bool) -> tuple[torch.nn.Module, object, int]:
    """``(model, tokenizer, bkspc_id)`` in float32 with ``<bkspc>`` added, in train mode."""
    if name == "tiny":
        model, tokenizer, bkspc_id = benchmark_model(quick)
        return model.train(), tokenizer, bkspc_id
    model, tokenizer = load_model(name, dtype="float32", log=lambda message: None)
    bkspc_id = add_backspace(model, tokenizer)
    return model.train(), tokenizer, bkspc_id


def with_lora(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` with the paper's adapters (r 64, alpha 16) on every block linear."""
    return apply_lora(copy.deepcopy(model), r=64, alpha=16.0, dropout=0.0).train()


@dataclass(frozen=True)
class Sizes:
    data_rows: int
    model_rows: int
    prompt: int
    completion: int


def sizes(quick: bool) -> Sizes:
    """Data and model rows of a step (the trainer's 2:1 ratio of data to model rows)."""
    return Sizes(4, 2, 16, 32) if quick else Sizes(8, 4, 32, 64)


README = Path(__file__).resolve().parents[1] / "README.md"


def batches(tokenizer, bkspc_id: int, size: Sizes, seed: int = 0) -> tuple[Batch, Batch]:
    """A data batch and a model batch cut from this repository's README (English text):
    data rows are windows whose completions carry 10% noise tokens, each undone by
    ``<bkspc>`` (noise actions not expert); model rows, the windows after them, carry 10%
    wrong tokens deleted again, all expert (as a sampled trace)."""
    words = README.read_text().replace(BKSPC_TOKEN, "backspace")  # the token is an action
    text = tokenizer(words, add_special_tokens=False).input_ids
    if bkspc_id in text:
        raise ValueError("the text encodes <bkspc>: it must not appear in prompts or data")
    rng = random.Random(seed)
    window = size.prompt + size.completion
    cursor = 0

    def next_window() -> tuple[list[int], list[int]]:
        nonlocal cursor
        if cursor + window > len(text):
            cursor = 0
        prompt = text[cursor : cursor + size.prompt]
        completion = text[cursor + size.prompt : cursor + window]
        cursor += window
        return prompt, completion

    def with_noise(completion: list[int]) -> tuple[list[int], list[bool]]:
        actions, expert = [], []
        for token in completion:
            if rng.random() < 0.1:
                actions += [rng.randrange(4, bkspc_id), bkspc_id]
                expert += [False, True]
            actions.append(token)
            expert.append(True)
        return actions, expert

    rows = {"data": ([], [], []), "model": ([], [], [])}
    for kind, count in (("data", size.data_rows), ("model", size.model_rows)):
        prompts, actions, experts = rows[kind]
        for _ in range(count):
            prompt, completion = next_window()
            row, expert = with_noise(completion)
            prompts.append(prompt)
            actions.append(row)
            experts.append(expert if kind == "data" else [True] * len(row))
    return collate(*rows["data"]), collate(*rows["model"])


def joined(data: Batch, model: Batch) -> Batch:
    """Data rows then model rows in one right-padded batch (one forward pass for both)."""
    rows = [(data, i) for i in range(len(data.lengths))] + [
        (model, i) for i in range(len(model.lengths))
    ]
    prompts, actions, experts = [], [], []
    for batch, i in rows:
        prompt, length = int(batch.prompt_lengths[i]), int(batch.lengths[i])
        prompts.append(batch.sequences[i, :prompt].tolist())
        actions.append(batch.sequences[i, prompt:length].tolist())
        experts.append(batch.expert[i, prompt:length].tolist())
    return collate(prompts, actions, experts)


def rows(batch: Batch, part: slice) -> Batch:
    """Some rows of ``batch``."""
    return Batch(*(tensor[part] for tensor in batch.__dict__.values()))


class Step:
    """One optimiser step of MLE or SequenceMatch on fixed batches.

    Args:
        model: the (possibly LoRA-wrapped) model, in train mode.
        method: ``"mle"`` (data rows only) or ``"sequencematch"`` (data + model rows,
            ``0.5 * MLE + 0.5 * L_SM``, chi2, alpha 1).
        body_dtype: ``None`` (float32) or ``torch.bfloat16``.
        logits: ``"chunked"`` (:func:`chunked_state_logits`) or ``"dense"``
            (:func:`state_logits` then ``.float()``, the full ``[B, T, V]`` tensor).
    """

    def __init__(self, model, bkspc_id, eos_id, data, model_rows, *, method="mle",
                 body_dtype=None, logits="chunked", lr=1e-6):  # fmt: skip
        self.model, self.bkspc_id, self.eos_id = model, bkspc_id, eos_id
        self.method, self.body_dtype, self.logits = method, body_dtype, logits
        self.data_count = len(data.lengths)
        self.batch = data if method == "mle" else joined(data, model_rows)
        trainable = [p for p in model.parameters() if p.requires_grad]
        # fused: one kernel per step instead of a dozen passes over every parameter (5x
        # faster on this CPU for 135M parameters, a fifth of a small step otherwise)
        self.optimiser = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0, fused=True)

    def tokens(self) -> int:
        """Real (unpadded) elements of the step's rows."""
        return int(self.batch.lengths.sum())

    def data_tokens(self) -> int:
        return int(self.batch.lengths[: self.data_count].sum())

    def read(self):
        batch = self.batch
        args = (self.model, batch.sequences, batch.prompt_lengths, batch.lengths, self.bkspc_id)
        if self.logits == "chunked":
            return chunked_state_logits(*args, validate=False, body_dtype=self.body_dtype)
        if self.body_dtype is None:
            return state_logits(*args, validate=False)
        with torch.autocast(batch.sequences.device.type, dtype=self.body_dtype):
            return state_logits(*args, validate=False).float()  # the trainer's old bf16 path

    def loss(self) -> tuple[torch.Tensor, float]:
        """The step's loss and, for SequenceMatch, the loss as a float (else the MLE)."""
        logits = self.read()
        n = self.data_count
        data, data_logits = rows(self.batch, slice(0, n)), logits[:n]
        mle = mle_loss(data_logits, data, self.bkspc_id, 1.0)
        if self.method == "mle":
            return mle, float(mle.detach())
        model_rows = rows(self.batch, slice(n, None))
        terms = sequencematch_loss(
            data_logits, data, logits[n:], model_rows, self.bkspc_id, self.eos_id,
            ObjectiveConfig(gamma=0.998, alpha=1.0, beta=0.5),
        )  # fmt: skip
        loss = 0.5 * mle + 0.5 * terms.loss
        return loss, float(loss.detach())

    def __call__(self) -> float:
        loss, value = self.loss()
        loss.backward()
        self.optimiser.step()
        self.optimiser.zero_grad(set_to_none=True)
        return value


def matmul_peak(dtype: torch.dtype, size: int, repeats: int) -> float:
    """FLOP/s of a square matmul in ``dtype`` (the machine's practical peak for it)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def training_flops(model: torch.nn.Module, tokens: int, width: int) -> float:
    """Model FLOPs of one training step over ``tokens`` elements of padded ``width``.

    ``6 N`` per token for trained weights, ``4 N`` for frozen ones (forward and input
    gradient, no weight gradient), plus attention ``12 L H width``; recomputation is not
    counted. Every parameter counts as a matmul weight, which holds for tied embeddings (the
    embedding matrix is the LM head), as in both benchmark models.
    """
    config = causal_lm(model).config
    if not getattr(config, "tie_word_embeddings", False):
        raise ValueError("training_flops counts tied-embedding models only")
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    attention = 12 * config.num_hidden_layers * config.hidden_size * width
    return tokens * (6 * trained + 4 * frozen + attention)
