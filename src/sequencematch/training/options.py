"""The groups of training options, each with its fields, help texts and checks.

:class:`.config.TrainConfig` inherits every group, so each option stays one flat field
(``config.p_noise``, ``TrainConfig(p_noise=0.2)``, a flat YAML key, a flat ``--p-noise``
flag, a flat saved configuration); a function that needs one group can take that group's
type. Each group's ``problems()`` checks its own fields; checks that read two groups are
:meth:`.config.TrainConfig.problems`'.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any

from ..core.causal_lm import SUPPORTED_ATTENTION
from ..core.objectives import DATA_REGULARISERS, DEFAULT_ALPHA, PHI, TERMINAL_VALUES

METHODS = ("mle", "offline", "sequencematch")
VALUE_HEADS = ("auto", "none", "offset", "normalised")
NOISE_SOURCES = ("uniform", "unigram", "task", "model")
MIXABLE_NOISE_SOURCES = ("uniform", "unigram", "task")
"""Sources a ``+``-joined mixture may list (``model`` samples come from a per-batch pass)."""
PRECISIONS = ("fp32", "bf16", "fp16")
LR_SCHEDULES = ("cosine", "per_phase")
BKSPC_INITS = ("auto", "mean", "probe")
REPLAY_DRAWS = ("uniform", "fresh")
MAX_SEED = 2**32 - 1
"""The largest seed (every random generator the runs seed accepts it)."""


def noise_source_parts(noise_source: str) -> list[str]:
    """The sources a ``noise_source`` names: one of :data:`NOISE_SOURCES`, or a mixture of
    distinct :data:`MIXABLE_NOISE_SOURCES` joined by ``+`` (``task+uniform``).

    Raises ``ValueError`` (one line, naming the valid sources) for anything else."""
    parts = noise_source.split("+") if isinstance(noise_source, str) else []
    if len(parts) == 1 and parts[0] in NOISE_SOURCES:
        return parts
    distinct = len(set(parts)) == len(parts)
    if len(parts) > 1 and distinct and set(parts) <= set(MIXABLE_NOISE_SOURCES):
        return parts
    raise ValueError(
        f"noise_source must be one of {', '.join(NOISE_SOURCES)} or a '+'-joined mixture of "
        f"distinct {', '.join(MIXABLE_NOISE_SOURCES)} (e.g. task+uniform), got {noise_source!r}"
    )


def _field(default: Any, help: str) -> Any:
    if isinstance(default, (list, dict, tuple)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def _failed(checks: Iterable[tuple[bool, str]]) -> list[str]:
    """The messages of the ``(condition, message)`` checks whose condition is false."""
    return [message for holds, message in checks if not holds]


@dataclass
class RunOptions:
    """Where the run folder is, how a run starts there (fresh, resumed, overwritten) and
    where this invocation stops."""

    output_dir: str = _field("runs/train", "run folder: checkpoints, metrics.jsonl, model/")
    seed: int = _field(0, "seed of every random choice (data order, noise, sampling, init)")
    device: str = _field("auto", "auto, cpu, cuda or cuda:N")
    resume: bool = _field(False, "continue the run in output_dir from its latest checkpoint")
    overwrite: bool = _field(
        False,
        "start again in an output_dir that holds an earlier run, deleting what that run wrote "
        "(never files it did not write)",
    )
    stop_at: int = _field(0, "stop this invocation after this step (0: run to steps)")
    progress: bool = _field(True, "show a progress bar")

    def problems(self) -> list[str]:
        """One line per field of this group with a wrong type or value."""
        return type_problems(self, RunOptions) or _failed([
            (re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", self.device) is not None,
             f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}"),
            (0 <= self.seed <= MAX_SEED, f"seed must lie in [0, {MAX_SEED}], got {self.seed}"),
            (self.stop_at >= 0, "stop_at must be >= 0 (0: run to steps)"),
            (not (self.resume and self.overwrite), "resume and overwrite exclude each other: "
             "resume continues the run in output_dir, overwrite replaces it"),
            (bool(self.output_dir.strip()), "output_dir must name a folder"),
        ])  # fmt: skip


@dataclass
class ModelOptions:
    """The model: a preset trained from scratch in this run or a loaded one, how it is
    adapted (full fine-tuning or LoRA) and how it is laid out in memory."""

    model: str = _field("tiny_llama", "preset (tiny_gpt2, tiny_llama) or a saved model folder")
    hidden_size: int = _field(128, "presets only: width")
    num_layers: int = _field(4, "presets only: transformer blocks")
    num_heads: int = _field(4, "presets only: attention heads")
    attn_implementation: str = _field("sdpa", "sdpa or eager (both follow custom masks)")
    lora_r: int = _field(0, "LoRA rank of the adapters (0: full fine-tuning; the paper: 64)")
    lora_alpha: float = _field(16.0, "LoRA scale numerator: updates are lora_alpha / lora_r x BA")
    lora_dropout: float = _field(0.05, "dropout on the LoRA adapters' input")
    lora_targets: str = _field(
        "", "comma-separated layer names to adapt (empty: every linear layer of the blocks)"
    )
    fsdp: bool = _field(
        False, "shard the model's blocks with FSDP2 across torchrun processes (instead of DDP)"
    )
    gradient_checkpointing: bool = _field(
        False, "recompute each block's activations in the backward pass (less memory, ~1/3 slower)"
    )
    logits_chunk_mb: int = _field(
        0,
        "read the logits a chunk of this many MiB at a time, recomputed in the backward pass "
        "(0: the whole [batch, time, vocabulary] tensor at once)",
    )

    def lora_target_names(self) -> list[str] | None:
        """The layer names of ``lora_targets``; ``None``: every linear layer of the blocks."""
        names = [name.strip() for name in self.lora_targets.split(",") if name.strip()]
        return names or None

    def problems(self) -> list[str]:
        """One line per field of this group with a wrong type or value."""
        return type_problems(self, ModelOptions) or _failed([
            (min(self.hidden_size, self.num_layers, self.num_heads) >= 1,
             "hidden_size, num_layers and num_heads must each be at least 1"),
            (self.num_heads < 1 or self.hidden_size % self.num_heads == 0,
             f"hidden_size {self.hidden_size} must be a multiple of num_heads {self.num_heads}"),
            (self.attn_implementation in SUPPORTED_ATTENTION,
             f"attn_implementation must be one of {SUPPORTED_ATTENTION} (both follow the "
             f"<bkspc> layout's masks), got {self.attn_implementation!r}"),
            (self.lora_r >= 0, f"lora_r must be >= 0 (0: full fine-tuning), got {self.lora_r}"),
            (self.lora_alpha > 0, f"lora_alpha must be > 0, got {self.lora_alpha}"),
            (0.0 <= self.lora_dropout < 1.0,
             f"lora_dropout must lie in [0, 1), got {self.lora_dropout}"),
            (self.lora_r > 0 or not self.lora_targets.strip(),
             "lora_targets needs lora_r > 0 (it names the layers LoRA adapts)"),
            (self.logits_chunk_mb >= 0, "logits_chunk_mb must be >= 0 (0: no chunks)"),
        ])  # fmt: skip


@dataclass
class DataOptions:
    """The task and its data (``tasks.base.TaskOptions`` holds the part of them a task
    itself reads)."""

    task: str = _field(
        "arithmetic",
        "arithmetic (generated), jsonl (train_file of pairs), text (train_file: a text file, "
        "folder or {text} JSONL; without it the Shakespeare corpus), a registered task, or a "
        "task class as module:Class",
    )
    train_file: str | None = _field(
        None, "JSONL of {prompt, completion} or {question, answer}; text: file, folder or JSONL"
    )
    valid_file: str | None = _field(
        None, "validation data in the train_file's format (evaluated every eval_every steps)"
    )
    n_train: int = _field(5000, "arithmetic: training questions; text: training windows (0: all)")
    n_valid: int = _field(200, "arithmetic: validation questions; text: validation windows")
    n_test: int = _field(200, "arithmetic: test questions (never trained on); text: windows")
    difficulty: list[float] = _field([4.0, 10.0], "arithmetic: operand entropy range in bits")
    vocab_size: int = _field(4096, "text with a preset: byte-level BPE vocabulary size")
    prompt_tokens: int = _field(32, "text: prompt tokens of each window")
    completion_tokens: int = _field(64, "text: completion tokens of each window")
    max_completion_tokens: int = _field(
        256,
        "longest data completion in tokens (<eos> included): a longer one is cut there and "
        "has no <eos> (it is not an ending: its value is bootstrapped); model samples stop "
        "there at the latest",
    )
    chat_template: bool = _field(
        False,
        "prompts as one user turn of the model's chat template (instruct models; recorded in "
        "task.json, so generate and eval format prompts the same way); false: raw text",
    )

    def problems(self) -> list[str]:
        """One line per field of this group with a wrong type or value."""
        return type_problems(self, DataOptions) or _failed([
            (bool(self.task), "task must name a task (e.g. arithmetic, jsonl or text)"),
            (self.vocab_size >= 300, "vocab_size must be at least 300 (256 bytes + merges)"),
            (self.prompt_tokens >= 1 and self.completion_tokens >= 1,
             "prompt_tokens and completion_tokens must be at least 1"),
            (len(self.difficulty) == 2, "difficulty must be two numbers: [low, high] bits"),
            (self.max_completion_tokens >= 1, "max_completion_tokens must be at least 1"),
            (min(self.n_train, self.n_valid, self.n_test) >= 0,
             "n_train/n_valid/n_test must be >= 0"),
        ])  # fmt: skip


@dataclass
class NoiseOptions:
    """The ``<bkspc>`` action: the noise inserted into the demonstrations for it to undo,
    and how its output row starts and learns."""

    backspace: bool = _field(True, "add the <bkspc> action and noise-augmented demonstrations")
    p_noise: float = _field(0.1, "probability of inserting a wrong token (+ <bkspc>) per token")
    noise_source: str = _field(
        "uniform",
        "uniform, unigram (corpus counts), task mistakes or model (its own samples); or a "
        "'+'-joined mixture such as task+uniform (each wrong token from one listed source, "
        "chosen uniformly at random)",
    )
    max_noise_run: int = _field(1, "longest run of wrong tokens before the backspaces")
    noise_in_loss: bool = _field(False, "also train on the inserted wrong tokens (BC reading)")
    bkspc_init: str = _field(
        "auto",
        "how a newly added <bkspc> output row starts: mean (the mean embedding) or probe (the "
        "mean, then fitted alone, body frozen, to the noise-augmented training rows: a linear "
        "probe before fine-tuning); auto: probe for a loaded model (pretrained, or a model "
        "folder an earlier run saved) with p_noise > 0, mean for one trained from scratch in "
        "this run (a preset)",
    )
    bkspc_probe_rows: int = _field(128, "probe: noise-augmented training rows it is fitted on")
    bkspc_probe_steps: int = _field(300, "probe: Adam steps on the rows' cached features")
    bkspc_probe_lr: float = _field(0.02, "probe: Adam learning rate of the row")
    bkspc_row_lr: float = _field(
        0.0, "learning rate of the <bkspc> output row while fine-tuning (0: lr, like the rest)"
    )
    bkspc_reprobe: bool = _field(
        False,
        "after the last step, fit the <bkspc> output row again as a linear probe on the "
        "trained features (body frozen; the probe's rows, steps and rate), so that the row "
        "matches the features fine-tuning left: fewer deletions of right tokens "
        '(docs/RESULTS.md, "A second probe"). One process, full fine-tuning only',
    )

    def problems(self) -> list[str]:
        """One line per field of this group with a wrong type or value."""
        wrong = type_problems(self, NoiseOptions)
        if wrong:
            return wrong
        try:
            noise_source_parts(self.noise_source)
            source = []
        except ValueError as error:
            source = [str(error)]
        return source + _failed([
            (0.0 <= self.p_noise < 1.0, f"p_noise must lie in [0, 1), got {self.p_noise}"),
            (self.max_noise_run >= 1, "max_noise_run must be at least 1"),
            (self.bkspc_init in BKSPC_INITS, f"bkspc_init must be one of {BKSPC_INITS}"),
            (self.bkspc_probe_rows >= 1 and self.bkspc_probe_steps >= 0,
             "bkspc_probe_rows must be >= 1 and bkspc_probe_steps >= 0"),
            (self.bkspc_probe_lr > 0,
             f"bkspc_probe_lr must be positive, got {self.bkspc_probe_lr}"),
            (self.bkspc_row_lr >= 0,
             f"bkspc_row_lr must be >= 0 (0: lr), got {self.bkspc_row_lr}"),
            (self.backspace or (self.bkspc_init in ("auto", "mean") and self.bkspc_row_lr == 0),
             "bkspc_init probe and bkspc_row_lr need backspace true"),
            (not self.bkspc_reprobe or (self.backspace and self.p_noise > 0),
             "bkspc_reprobe needs backspace true and p_noise > 0 (the probe fits the row to "
             "the noise rows' deletions)"),
            (self.backspace or self.p_noise == 0.0, "p_noise needs backspace (noise is undone "
             "with <bkspc>): set backspace true or p_noise 0"),
        ])  # fmt: skip


@dataclass
class ObjectiveOptions:
    """The method and its objective: divergence, mixture of data and model transitions,
    the warm-up, and how logits are read as Q."""

    method: str = _field(
        "sequencematch",
        "mle, offline (MLE plus the data-only SequenceMatch objective throughout: no model "
        "samples) or sequencematch (a warm-up on data, then model samples join)",
    )
    divergence: str = _field("chi2", "chi2, kl, reverse_kl, js, hellinger or tv")
    gamma: float = _field(0.998, "discount of the occupancy measure")
    alpha: float = _field(
        DEFAULT_ALPHA,
        "chi2 regulariser scale: larger alpha, weaker regulariser (0.01 lets it dominate). "
        "Where the value cannot fit, the regulariser reweights the likelihood and adds an "
        "entropy bonus, both as 1 / alpha (docs/method.md, Gradient): 10 keeps a policy "
        "sharper than 1 did (docs/RESULTS.md)",
    )
    beta: float = _field(0.5, "weight of data transitions in the mixture (1 - beta: model)")
    lambda_mle: float = _field(0.5, "weight of the MLE loss in the total after warm-up")
    mle_warmup_steps: int | None = _field(
        None, "warm-up steps before model samples join (unset: mle_warmup_fraction of steps)"
    )
    mle_warmup_fraction: float = _field(
        0.66, "warm-up length as a fraction of steps when mle_warmup_steps is unset"
    )
    regularise_warmup: bool = _field(
        True,
        "sequencematch: train the warm-up on the data-only objective (MLE plus the chi2 "
        "regulariser on data), so logit levels start where SequenceMatch wants them; false: "
        "plain MLE warm-up",
    )
    sm_ramp_steps: int = _field(
        0, "steps over which the SequenceMatch weight rises to 1-lambda_mle after a plain warm-up"
    )
    value_head: str = _field(
        "auto",
        "how SequenceMatch reads logits as Q: none (Q = logits, the paper), offset (Q = logits "
        "+ b(s)) or normalised (Q = log-softmax + b(s)), b a learned scalar head on the last "
        "hidden state; the policy is the same in all three. auto: none for a model trained "
        "from scratch in this run (a preset), normalised for a loaded one (pretrained, or a "
        "model folder an earlier run saved)",
    )
    value_head_lr: float = _field(1e-3, "learning rate of the value head b(s) (AdamW)")
    terminal_value: str = _field(
        "learned",
        "value of the state after <eos>: learned (an absorbing state whose V is read at the "
        "<eos> element in the reading's own way: log-sum-exp of its logits, plus b under "
        "offset, b alone under normalised) or zero",
    )
    balance_noise: bool = _field(
        True,
        "with model rows (beta < 1), enter the inserted wrong tokens of data rows in the value "
        "term with weight -(1 - beta), so that noise rows telescope like clean rows "
        "(docs/method.md); false: leave them out of every term",
    )
    data_regulariser: str = _field(
        "full",
        "what the chi2 regulariser's r^2 trains on data transitions: full (the objective's "
        "gradient: policy and value) or value (log pi read detached there: the value alone, "
        "so the value's misfit does not reweight the likelihood; docs/method.md, Gradient)",
    )

    def problems(self) -> list[str]:
        """One line per field of this group with a wrong type or value."""
        return type_problems(self, ObjectiveOptions) or _failed([
            (self.method in METHODS, f"method must be one of {METHODS}, got {self.method!r}"),
            (self.divergence in PHI,
             f"divergence must be one of {tuple(PHI)}, got {self.divergence!r}"),
            (0.0 < self.gamma <= 1.0, f"gamma must lie in (0, 1], got {self.gamma}"),
            (self.alpha > 0 and math.isfinite(self.alpha), f"alpha must be > 0, got {self.alpha}"),
            (0.0 <= self.beta <= 1.0, f"beta must lie in [0, 1], got {self.beta}"),
            (0.0 <= self.lambda_mle <= 1.0,
             f"lambda_mle must lie in [0, 1], got {self.lambda_mle}"),
            (self.mle_warmup_steps is None or self.mle_warmup_steps >= 0,
             "mle_warmup_steps must be >= 0 (or unset: mle_warmup_fraction of steps)"),
            (0.0 <= self.mle_warmup_fraction <= 1.0,
             f"mle_warmup_fraction must lie in [0, 1], got {self.mle_warmup_fraction}"),
            (self.sm_ramp_steps >= 0, "sm_ramp_steps must be >= 0"),
            (self.value_head in VALUE_HEADS, f"value_head must be one of {VALUE_HEADS}"),
            (self.value_head_lr > 0, f"value_head_lr must be positive, got {self.value_head_lr}"),
            (self.terminal_value in TERMINAL_VALUES,
             f"terminal_value must be one of {TERMINAL_VALUES}"),
            (self.data_regulariser in DATA_REGULARISERS,
             f"data_regulariser must be one of {DATA_REGULARISERS}"),
        ])  # fmt: skip


@dataclass
class ReplayOptions:
    """The model's own samples: how often the replay buffer is refilled, how much it keeps
    and how each step draws from it."""

    refresh_every: int = _field(25, "steps between refills of the replay buffer")
    samples_per_refresh: int = _field(64, "sequences sampled from the model per refill")
    replay_size: int = _field(
        256, "sequences kept in the replay buffer; when it is full the oldest leave first"
    )
    replay_draw: str = _field(
        "uniform",
        "how each step picks its model rows: uniform (over the whole buffer, with "
        "replacement) or fresh (without replacement, newest refill first)",
    )
    model_batch_size: int = _field(16, "model-sampled sequences per step")
    sample_temperature: float = _field(1.0, "temperature of the refills (0: greedy)")
    max_new_tokens: int = _field(
        0,
        "longest sampled completion in visible tokens (0: as long as the longest training "
        "completion, at most max_completion_tokens)",
    )

    def problems(self) -> list[str]:
        """One line per field of this group with a wrong type or value, the buffer's sizes
        aside (:meth:`sampling_problems`)."""
        return type_problems(self, ReplayOptions) or _failed([
            (self.replay_draw in REPLAY_DRAWS, f"replay_draw must be one of {REPLAY_DRAWS}"),
            (self.sample_temperature >= 0, "sample_temperature must be >= 0 (0: greedy)"),
        ])  # fmt: skip

    def sampling_problems(self) -> list[str]:
        """One line per size that cannot work: checked only for a run that samples (the
        other arms of a comparison share the sizes without reading them)."""
        return _failed([
            (self.refresh_every >= 1, "refresh_every must be at least 1"),
            (self.samples_per_refresh >= 1, "samples_per_refresh must be at least 1"),
            (self.model_batch_size >= 1, "model_batch_size must be at least 1"),
            (self.replay_size >= self.samples_per_refresh,
             "replay_size must be at least samples_per_refresh"),
            (self.max_new_tokens >= 0, "max_new_tokens must be >= 0 (0: from the data's lengths)"),
        ])  # fmt: skip


@dataclass
class OptimisationOptions:
    """The optimiser: length of the run, batch, learning-rate schedule, clipping and
    precision."""

    steps: int = _field(1000, "optimiser steps")
    batch_size: int = _field(32, "data sequences per optimiser step (all processes together)")
    grad_accum: int = _field(1, "micro-batches per optimiser step")
    lr: float = _field(1e-3, "peak learning rate (AdamW)")
    weight_decay: float = _field(0.01, "AdamW weight decay")
    warmup_steps: int = _field(50, "linear learning-rate warm-up steps")
    lr_schedule: str = _field(
        "cosine",
        "cosine (one warm-up and cosine over all steps) or per_phase (warm-up and cosine "
        "restarted when SequenceMatch starts)",
    )
    min_lr_ratio: float = _field(0.1, "final learning rate as a fraction of lr (cosine)")
    clip_grad: float = _field(1.0, "gradient-norm clip (0: none)")
    precision: str = _field(
        "fp32",
        "fp32, bf16 (the transformer body under CPU/GPU autocast, the LM head and every loss "
        "in float32) or fp16 (the same, GPU only)",
    )

    def problems(self) -> list[str]:
        """One line per field of this group with a wrong type or value."""
        return type_problems(self, OptimisationOptions) or _failed([
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}"),
            (self.steps >= 1, "steps must be at least 1"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.grad_accum >= 1, "grad_accum must be at least 1"),
            (self.grad_accum < 1 or self.batch_size % self.grad_accum == 0,
             f"batch_size {self.batch_size} must be a multiple of grad_accum {self.grad_accum}"),
            (self.lr > 0, f"lr must be positive, got {self.lr}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio must lie in [0, 1]"),
            (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (self.clip_grad >= 0, "clip_grad must be >= 0 (0 disables clipping)"),
            (self.lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of {LR_SCHEDULES}"),
        ])  # fmt: skip


@dataclass
class LoggingOptions:
    """How often the run logs, evaluates and saves checkpoints, and how many it keeps."""

    log_every: int = _field(10, "steps between metrics.jsonl lines")
    save_every: int = _field(200, "steps between checkpoints (0: only at the end)")
    keep_checkpoints: int = _field(2, "checkpoints kept (older ones this run wrote are deleted)")
    eval_every: int = _field(0, "steps between validation evaluations (0: only at the end)")
    tensorboard: bool = _field(False, "also log to TensorBoard (needs the tensorboard package)")

    def problems(self) -> list[str]:
        """One line per field of this group with a wrong type or value."""
        return type_problems(self, LoggingOptions) or _failed([
            (self.log_every >= 1, "log_every must be at least 1"),
            (self.save_every >= 0 and self.eval_every >= 0,
             "save_every/eval_every must be >= 0"),
            (self.keep_checkpoints >= 1, "keep_checkpoints must be at least 1"),
        ])  # fmt: skip


OPTION_GROUPS: tuple[tuple[str, type], ...] = (
    ("run", RunOptions),
    ("model", ModelOptions),
    ("task and data", DataOptions),
    ("noise and <bkspc>", NoiseOptions),
    ("objective", ObjectiveOptions),
    ("model samples (replay buffer)", ReplayOptions),
    ("optimisation", OptimisationOptions),
    ("logging, evaluation and checkpoints", LoggingOptions),
)
"""The groups by title, in the order of ``--help`` and of a configuration's fields."""


# ------------------------------------------------------------------ types

_EXPECTED = {
    "int": "a whole number",
    "float": "a finite number",
    "bool": "true or false",
    "str": "text",
    "str | None": "text (or absent)",
    "int | None": "a whole number (or absent)",
    "list[float]": "a list of two numbers",
}


def type_problems(options: Any, group: type | None = None) -> list[str]:
    """One message per field of ``group`` (default: every field of ``options``) whose value
    in ``options`` has the wrong type or is not finite: such values cannot be range-checked."""
    return [
        f"{item.name} must be {_EXPECTED.get(item.type, item.type)}, got "
        f"{_shown(getattr(options, item.name))}"
        for item in fields(group or options)
        if not _type_fits(item.type, getattr(options, item.name))
    ]


def is_number(value: Any) -> bool:
    """Whether ``value`` is an int or float (``True`` is not a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_fits(kind: str, value: Any) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return is_number(value) and math.isfinite(value)
    if kind == "str":
        return isinstance(value, str)
    if kind == "int | None":
        return value is None or _type_fits("int", value)
    if kind == "str | None":
        return value is None or isinstance(value, str)
    if kind == "list[float]":
        values = value if isinstance(value, (list, tuple)) else [None]
        return all(is_number(v) and math.isfinite(v) for v in values)
    return True


def _shown(value: Any) -> str:
    if value is None:
        return "null (no value)"
    if isinstance(value, str):
        hint = "without quotes" if _looks_typed(value) else "as the option expects"
        return f"the text {value!r} (write it {hint})"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value)


def _looks_typed(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "false", "yes", "no", "on", "off"):
        return True
    try:
        float(lowered)
    except ValueError:
        return False
    return True
