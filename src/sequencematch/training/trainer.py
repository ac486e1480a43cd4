"""The training loop: MLE and SequenceMatch phases, refills, checkpoints, DDP.

The loop composes parts that live in their own modules: what each step does
(:mod:`.schedule`), its batches (:mod:`.batches`), the model samples (:mod:`.replay`) and
the loss (:func:`sequencematch.core.objectives.training_loss`).

Every random choice of a step (which examples, which noise, which replayed samples) is
derived from ``(seed, step)``, and every process builds the same global batch before
taking its share, so a resumed run repeats exactly what an uninterrupted one does, and
``torchrun`` with ``k`` processes computes the same update as one process, given the same
replay buffer: refills are sampled per process (seeded by rank), so only greedy refills
(``sample_temperature 0``) give identical buffers for every process count.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from ..core.actions import Batch, NoiseSource, collate
from ..core.backspace import BKSPC_TOKEN, causal_lm, check_backspace_support, valid_vocabulary
from ..core.chunked_logits import ChunkedLogits
from ..core.examples import Example, check_lengths, longest_completion, position_limit, special_ids
from ..core.files import atomic_write_text, content_digest, disk_full_error, is_disk_full
from ..core.forward import (
    chunked_state_logits,
    precision_body_dtype,
    state_logits,
    verify_head_once,
    verify_layout_once,
)
from ..core.objectives import TrainingLoss, training_loss
from ..core.sampling import generate
from ..models.backspace import add_backspace
from ..models.loading import PRESETS
from ..models.pickled_weights import refused_pickles_in_one_line
from .adapters import adapt_model, load_trainable_state, saved_form, trainable_state
from .batches import DataOrder, DataRows, MicroBatch, data_rows, micro_batches
from .bkspc_row import ProbeFeatures, RowLearningRate, probe_bkspc_row, probe_features
from .checkpoints import (
    CHECKPOINTS,
    CheckpointError,
    find_resume_checkpoint,
    latest_checkpoint,
    load_state,
    save_checkpoint,
    save_model_folder,
)
from .config import TrainConfig
from .distributed import World, all_gather_objects, all_ranks_true, barrier, sum_over_ranks
from .model_noise import ModelSampleNoise, model_noise_sources
from .noise import build_noise_source
from .optimizer import build_adamw, keep_implementation
from .replay import ReplayBuffer, Trace
from .run_folder import RunFolder, read_manifest
from .schedule import lr_at, phase_at, sm_weight
from .sharding import (
    full_model_state,
    full_optimizer_state,
    gradient_sync,
    load_full_optimizer_state,
    shard_model,
    total_gradient_norm,
)
from .value_head import ValueHead, hidden_size, q_reading

# Options that may differ between a run and its resumption (the learning-rate schedule,
# length, logging, checkpoint and evaluation cadence, device); every other one must match.
RESUMABLE_CHANGES = frozenset(
    {"steps", "stop_at", "progress", "log_every", "save_every", "keep_checkpoints",
     "eval_every", "tensorboard", "resume", "overwrite", "device", "lr", "warmup_steps",
     "min_lr_ratio", "clip_grad", "gradient_checkpointing", "logits_chunk_mb"}
)  # fmt: skip
# Options naming files: compared as resolved paths. The run folder's own path is no part of
# a run's identity (a run folder can be moved or copied and resumed there).
PATH_OPTIONS = ("model", "train_file", "valid_file")
TRAIN_OUTPUTS = ("metrics.jsonl", CHECKPOINTS, "model", "tensorboard")
METRICS_FILE = "metrics.jsonl"
LOSS_TERMS = ("loss", "mle", "imitation", "value", "regulariser")

Evaluator = Callable[[PreTrainedModel], dict[str, float]]


class TrainingError(RuntimeError):
    """Training stopped: a non-finite loss or an unusable set-up."""


def run_identity(config: TrainConfig) -> dict[str, Any]:
    """The options that define a run (compared on resume): every option but those that may
    change, with file options as resolved paths and the sha256 of what they hold (data
    edited or a base model replaced in place is another run: ids would mean other text)."""
    values = {k: v for k, v in config.to_dict().items() if k not in RESUMABLE_CHANGES}
    values.pop("output_dir")
    for key in PATH_OPTIONS:
        value = values.get(key)
        if isinstance(value, str) and Path(value).exists():
            values[key] = str(Path(value).resolve())
            values[f"{key}_sha256"] = content_digest(value)
    return values


def gradient_shares(result: TrainingLoss, weight: float, logits: torch.Tensor) -> dict[str, float]:
    """Each weighted term's share of the summed gradient norms at the logits: which term
    moves the policy (a term acting on the value head alone has share 0)."""
    parts = {"mle": (1.0 - weight) * result.mle, "imitation": weight * result.imitation,
             "value": weight * result.value,
             "regulariser": weight * result.regulariser}  # fmt: skip
    norms = {}
    for name, term in parts.items():
        if not term.requires_grad:
            continue
        (gradient,) = torch.autograd.grad(term, logits, retain_graph=True, allow_unused=True)
        norms[name] = 0.0 if gradient is None else float(torch.linalg.vector_norm(gradient))
    total = sum(norms.values())
    return {f"grad_share/{name}": norm / total for name, norm in norms.items()} if total else {}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available; use cpu")
    return torch.device(name)


class Trainer:
    """Trains ``model`` on ``train`` examples as ``config`` says.

    With ``config.resume`` and a checkpoint in ``config.output_dir``, the model, tokenizer
    and all training state are taken from the checkpoint (the ``model``/``tokenizer``
    arguments only serve a fresh start).
    """

    def __init__(
        self,
        config: TrainConfig,
        model: PreTrainedModel,
        tokenizer: Any,
        train: list[Example],
        *,
        evaluate: Evaluator | None = None,
        world: World | None = None,
        model_files: dict[str, str] | None = None,
        task_noise: NoiseSource | None = None,
    ) -> None:
        self.config = config.validate()
        self.identity = run_identity(self.config)  # before a resume fixes the warm-up
        self.world = world or World()
        self.device = resolve_device(config.device)
        if self.world.size > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", self.world.local_rank)
        if config.precision == "fp16" and self.device.type != "cuda":
            raise ValueError("precision fp16 needs a GPU; use bf16 or fp32 on the CPU")
        if not train:
            raise ValueError("no training examples")
        if config.fsdp and self.world.size < 2:
            raise ValueError("fsdp needs more than one process: use torchrun, or fsdp false")
        if config.fsdp and config.precision == "fp16":
            raise ValueError("fsdp trains in precision fp32 or bf16, not fp16")
        shares = self.world.size * config.grad_accum
        if config.batch_size < shares or (
            config.method == "sequencematch" and config.model_batch_size < shares
        ):
            raise ValueError(
                f"batch_size and model_batch_size must be at least processes x grad_accum "
                f"({shares}) so that no micro-batch is empty"
            )
        self.run_dir = Path(config.output_dir)
        self.train_examples = train
        self.sample_length = config.sample_length(longest_completion(train))
        self.order = DataOrder(train, config.seed, config.batch_size)
        self.evaluate = evaluate
        self.model_files = dict(model_files or {})
        self.step = 0
        self.window: list[dict[str, Any]] = []  # metrics of the steps since the last log line
        self.elapsed_before = 0.0  # seconds trained before a resume (elapsed_s goes on)
        self.started: float | None = None
        self.replay = ReplayBuffer(config.replay_size, config.seed)
        self._writer: Any = None
        self.run: RunFolder | None = None  # the locked run folder (rank 0)
        sampled = self.sample_length if config.method == "sequencematch" else 0
        check_lengths(train, position_limit(model), sampled)

        resume_from = self._find_resume_point()
        if resume_from is not None and config.lora_r == 0:  # LoRA: the base, adapters below
            with refused_pickles_in_one_line(resume_from):
                model = AutoModelForCausalLM.from_pretrained(
                    resume_from, attn_implementation=config.attn_implementation
                )
            tokenizer = AutoTokenizer.from_pretrained(resume_from)
        check_backspace_support(model)
        self.tokenizer = tokenizer
        self.model = model.to(self.device)
        new_row = config.backspace and BKSPC_TOKEN not in tokenizer.get_vocab()
        self.bkspc_id = add_backspace(self.model, tokenizer) if config.backspace else None
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.vocab_size = valid_vocabulary(self.model, tokenizer)
        self.noise = None
        if config.backspace and config.p_noise > 0 and config.noise_source != "model":
            self.noise = build_noise_source(
                config.noise_source, tokenizer, train, self.vocab_size, [self.bkspc_id],
                task_noise,
            )  # fmt: skip
        self.probe_stats: dict[str, float] = {}
        if new_row and resume_from is None and self._probes_bkspc_row():
            self.probe_stats = self._probe_bkspc_row()  # before any weight of the body moves
        self.model = adapt_model(self.model, config, self.bkspc_id)
        verify_layout_once(self.model)
        # b(s), when SequenceMatch reads Q with a learned value offset (docs/method.md,
        # "Reading logits as Q")
        self.q_reading = q_reading(config.value_head, config.model)
        self.value_head: ValueHead | None = None
        if config.method == "sequencematch" and self.q_reading != "none":
            self.value_head = ValueHead(hidden_size(causal_lm(self.model))).to(self.device)
        hidden_read = self.value_head is not None or config.logits_chunk_mb
        if precision_body_dtype(config.precision) is not None or hidden_read:
            verify_head_once(self.model)  # the logits must be head(last hidden state)
        self.sharded = config.fsdp
        if self.sharded:  # before the optimiser: sharding replaces the parameters
            self.model = shard_model(self.model, precision_body_dtype(config.precision))
        self.optimizer = self._make_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda index: lr_at(self.config, index)
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=config.precision == "fp16")
        self.network: torch.nn.Module = self.model
        if self.world.size > 1 and not self.sharded:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.network = DistributedDataParallel(self.model, device_ids=ids)
        if resume_from is not None:
            self._restore(resume_from)

    # ------------------------------------------------------------------ set-up helpers

    def _probes_bkspc_row(self) -> bool:
        """Whether the new ``<bkspc>`` row starts as a linear probe (``bkspc_init``)."""
        config = self.config
        if config.bkspc_init != "auto":
            return config.bkspc_init == "probe"
        return config.model not in PRESETS and config.p_noise > 0

    def _probe_bkspc_row(self) -> dict[str, float]:
        """Fit the ``<bkspc>`` row to the noise-augmented rows of the first steps, body frozen
        (:mod:`.bkspc_row`); return the probe's statistics (logged with the first step)."""
        config = self.config
        body_dtype = precision_body_dtype(config.precision)
        parts, rows, step = [], 0, 1
        self.model.eval()
        while rows < config.bkspc_probe_rows:
            data = self._data_rows(step)
            batch = collate(data.prompts, data.actions, data.experts, pad_id=self.pad_id)
            parts.append(probe_features(self.model, batch.to(self.device), self.bkspc_id,
                                        self.vocab_size, body_dtype))  # fmt: skip
            rows, step = rows + len(data.prompts), step + 1
        stats = probe_bkspc_row(
            self.model, ProbeFeatures.concatenate(parts), self.bkspc_id,
            steps=config.bkspc_probe_steps, lr=config.bkspc_probe_lr,
        )  # fmt: skip
        if self.world.is_main:
            print("<bkspc> row probed: " + ", ".join(f"{k} {v:.3f}" for k, v in stats.items()))
        return stats

    def _find_resume_point(self) -> Path | None:
        """Lock the run folder and decide where this run starts: a verified checkpoint of
        this run, or ``None`` for step 0 (rank 0 decides, every rank gets its answer)."""
        checkpoint = None
        if self.world.is_main:
            self.run = RunFolder(self.run_dir, "train", TRAIN_OUTPUTS).lock()
            try:
                checkpoint = self._claim_run_folder(self.run)
            except BaseException:
                self.close()
                raise
        shared = all_gather_objects(self.world, None if checkpoint is None else str(checkpoint))
        return None if shared[0] is None else Path(shared[0])

    def _claim_run_folder(self, run: RunFolder) -> Path | None:
        config = self.config
        if run.marker is None or not config.resume:
            if config.resume and not run.unproven():
                print(f"no run in {self.run_dir} yet: starting a new one")
            run.claim_new(
                config.overwrite,
                "pass --resume true to continue it, --overwrite true to replace it (deleting "
                "only what that run wrote), or choose another output_dir",
            )
            return None
        for done in run.clean_stale():
            print(f"{self.run_dir}: {done} (left by an interrupted write)")
        checkpoint, note = find_resume_checkpoint(run)
        if note:
            print(note)
        if checkpoint is None:
            recorded = [n for n in run.existing_outputs() if n.startswith(f"{CHECKPOINTS}/step-")]
            if recorded:
                raise CheckpointError(
                    f"no intact checkpoint in {self.run_dir / CHECKPOINTS} ({', '.join(recorded)}"
                    " fail verification); they were left untouched: start again with "
                    "--overwrite true, or choose another output_dir"
                )
            if "model" in run.existing_outputs():  # a finished run whose checkpoints went
                raise CheckpointError(
                    f"{self.run_dir} holds a finished run's model but no checkpoint to resume "
                    "from, so resuming would start again at step 0 over it: pass --overwrite "
                    f"true to replace that run, or train on from its model in a new folder "
                    f"(--model {self.run_dir / 'model'})"
                )
            print(f"no checkpoint in {self.run_dir} yet: the run starts again from step 0")
            self._drop_metrics_after(0)
        return checkpoint

    def close(self) -> None:
        """Release the run folder's lock (training calls this when it ends, however)."""
        if self.run is not None:
            self.run.release()

    def _make_optimizer(self) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for parameter in self.model.parameters():
            if parameter.requires_grad:
                (decay if parameter.dim() >= 2 else no_decay).append(parameter)
        groups = [
            {"params": decay, "weight_decay": self.config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        row_lr = self.config.bkspc_row_lr
        self.row_lr: RowLearningRate | None = None
        if row_lr and self.config.lora_r > 0:  # peft's <bkspc> rows: a group of their own
            named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
            rows = [p for n, p in named if "trainable_tokens" in n]
            groups = [{**g, "params": [p for p in g["params"] if all(p is not r for r in rows)]}
                      for g in groups]  # fmt: skip
            groups.append({"params": rows, "weight_decay": 0.0, "lr": row_lr, "base_lr": row_lr})
        elif row_lr and self.bkspc_id is not None:
            self.row_lr = RowLearningRate(self.model, self.bkspc_id, row_lr / self.config.lr)
        if self.value_head is not None:  # its own learning rate, on the same schedule
            lr = self.config.value_head_lr
            groups.append({"params": list(self.value_head.parameters()), "weight_decay": 0.0,
                           "lr": lr, "base_lr": lr})  # fmt: skip
        return build_adamw(groups, lr=self.config.lr)  # fused where torch's kernel applies

    def _restore(self, checkpoint: Path) -> None:
        try:
            self._restore_state(checkpoint)
        except BaseException:
            self.close()
            raise

    def _restore_state(self, checkpoint: Path) -> None:
        state = load_state(checkpoint)
        saved = state.get("identity", {})
        current = self.identity
        mismatched = sorted(key for key in current if key in saved and saved[key] != current[key])
        if mismatched:
            details = ", ".join(
                f"the contents of {k.removesuffix('_sha256')} changed" if k.endswith("_sha256")
                else f"{k}: {saved[k]!r} -> {current[k]!r}"
                for k in mismatched
            )  # fmt: skip
            raise CheckpointError(
                f"checkpoint {checkpoint} was trained with other settings ({details}), which "
                f"cannot change on resume (these can: {', '.join(sorted(RESUMABLE_CHANGES))}); "
                "resume with the same values or start a new output_dir"
            )
        try:
            if self.sharded:
                load_full_optimizer_state(self.model, self.optimizer, state["optimizer"])
            else:
                self.optimizer.load_state_dict(state["optimizer"])
            keep_implementation(self.optimizer)  # not the saved run's fused/foreach flags
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
        except (KeyError, ValueError) as error:
            raise CheckpointError(f"checkpoint {checkpoint} is incomplete: {error}") from error
        if "mle_warmup" in state and self.config.method != "mle":
            # a warm-up set as a fraction of steps stays where the run put it when steps change
            self.config = self.config.replace(mle_warmup_steps=int(state["mle_warmup"]))
        self._apply_schedule()
        if self.config.lora_r > 0:
            try:
                load_trainable_state(self.model, state["trainable"])
            except (KeyError, ValueError) as error:
                raise CheckpointError(f"checkpoint {checkpoint}: {error}") from error
        if self.value_head is not None:
            if "value_head" not in state:
                raise CheckpointError(f"checkpoint {checkpoint} holds no value head")
            self.value_head.load_state_dict(state["value_head"])
        self.step = int(state["step"])
        self._drop_metrics_after(self.step)
        self.window = list(state.get("metrics_window", []))
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        self.replay.load_state_dict(state["replay"], self.step)
        torch.set_rng_state(state["torch_rng"])
        if torch.cuda.is_available() and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if self.world.is_main:
            print(f"resumed from {checkpoint} at step {self.step}")

    def _apply_schedule(self) -> None:
        """Set the learning rate of the restored step from this run's ``lr`` and schedule
        (which may differ from the checkpoint's: lowering lr is how a run recovers)."""
        scheduler = self.scheduler
        groups = self.optimizer.param_groups
        scheduler.base_lrs = [group.get("base_lr", self.config.lr) for group in groups]
        for group, base, factor in zip(groups, scheduler.base_lrs, scheduler.lr_lambdas,
                                       strict=True):  # fmt: skip
            group["initial_lr"] = base
            group["lr"] = base * factor(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def _drop_metrics_after(self, step: int) -> None:
        """Forget metrics lines logged after the checkpoint we resume from (they are redone).

        A torn last line (a write cut short by a crash or a full disk) is dropped and
        reported; any other unreadable line stops the run, naming the file and the line."""
        path = self.run_dir / METRICS_FILE
        if not self.world.is_main or not path.exists():
            return
        lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
        kept: list[str] = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record_step = json.loads(line)["step"]
                if not isinstance(record_step, int):
                    raise TypeError("step is not an integer")
            except (ValueError, KeyError, TypeError) as error:
                if number == len(lines):  # the last line, without its newline: torn
                    print(f"{path}:line {number}: dropped a torn last line ({len(line)} "
                          "characters; a write was cut short)")  # fmt: skip
                    continue
                raise TrainingError(
                    f"{path}:line {number}: not a metrics record ({error}); repair or delete "
                    "that line to resume"
                ) from None
            if record_step <= step:
                kept.append(line)
        atomic_write_text(path, "".join(line + "\n" for line in kept))

    def _append_metrics(self, record: dict[str, Any]) -> None:
        """One line of ``metrics.jsonl`` (rank 0), written with a single call."""
        path = self.run_dir / METRICS_FILE
        if self.run is not None:
            self.run.record(METRICS_FILE)
        try:
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        except OSError as error:
            if is_disk_full(error):
                raise disk_full_error(path) from error
            raise

    # ------------------------------------------------------------------ batches

    def _data_examples(self, step: int) -> list[Example]:
        """The global data batch of ``step`` (epoch-wise shuffled, identical on all ranks)."""
        return self.order.examples_at(step)

    def _data_rows(self, step: int) -> DataRows:
        """Prompts, (noise-augmented) actions and expert masks of the global data batch."""
        config = self.config
        examples = self._data_examples(step)
        noise = self._model_noise(examples, step) if self._uses_model_noise() else self.noise
        return data_rows(
            examples, step=step, seed=config.seed, bkspc_id=self.bkspc_id,
            p_noise=config.p_noise if config.backspace else 0.0, noise=noise,
            max_noise_run=config.max_noise_run, noise_in_loss=config.noise_in_loss,
        )  # fmt: skip

    def _uses_model_noise(self) -> bool:
        config = self.config
        return config.backspace and config.p_noise > 0 and config.noise_source == "model"

    def _model_noise(self, examples: list[Example], step: int) -> list[ModelSampleNoise]:
        """One no-grad pass (eval mode) over the clean rows; wrong tokens sampled on device."""
        generator = torch.Generator(device=self.device)  # the same on every process
        generator.manual_seed(
            random.Random(f"{self.config.seed}-model-noise-{step}").getrandbits(63)
        )
        return model_noise_sources(
            self.model, examples, pad_id=self.pad_id, vocab_size=self.vocab_size,
            exclude=[*special_ids(self.tokenizer), self.bkspc_id],
            max_run=self.config.max_noise_run, generator=generator,
        )  # fmt: skip

    def _model_rows(self, step: int) -> list[Trace]:
        """The step's model rows from the replay buffer (``replay_draw``)."""
        return self.replay.draw(self.config.model_batch_size, step, self.config.replay_draw)

    def _refresh(self, step: int) -> dict[str, float]:
        """Refill the replay buffer with samples of the current model on data prompts."""
        config = self.config
        rng = random.Random(f"{config.seed}-refresh-{step}")
        chosen = [
            rng.randrange(len(self.train_examples)) for _ in range(config.samples_per_refresh)
        ]
        # sharded: every rank samples every prompt alike (each forward is a collective)
        mine = chosen if self.sharded else chosen[self.world.shard(len(chosen))]
        rank = 0 if self.sharded else self.world.rank
        generator = torch.Generator(device=self.device)
        generator.manual_seed(hash((config.seed, step, rank)) % (2**63))
        traces: list[tuple[list[int], list[int]]] = []
        if mine:
            output = generate(
                self.model,
                [self.train_examples[i].prompt for i in mine],
                bkspc_id=self.bkspc_id,
                max_new_tokens=self.sample_length,
                vocab_size=self.vocab_size,
                do_sample=config.sample_temperature > 0,
                temperature=config.sample_temperature or 1.0,
                eos_token_id=self.eos_id,
                generator=generator,
            )
            traces = list(zip(output.prompts, output.actions, strict=True))
        gathered = (
            traces
            if self.sharded
            else [trace for part in all_gather_objects(self.world, traces) for trace in part]
        )
        self.replay.add(gathered, step)
        actions = [a for _, trace_actions in gathered for a in trace_actions]
        bkspc = sum(1 for a in actions if a == self.bkspc_id) if self.bkspc_id is not None else 0
        ended = sum(1 for _, acts in gathered if acts and acts[-1] == self.eos_id)
        return {
            "sample/bkspc_rate": bkspc / max(1, len(actions)),
            "sample/eos_rate": ended / max(1, len(gathered)),
            "sample/mean_actions": len(actions) / max(1, len(gathered)),
            "replay/size": float(len(self.replay)),
        }

    # ------------------------------------------------------------------ the step

    def _phase(self, step: int) -> str:
        return phase_at(self.config, step)

    def _state_logits(
        self, batch: Batch
    ) -> tuple[torch.Tensor | ChunkedLogits, torch.Tensor | None]:
        """``[B, T, V]`` logits of the batch's states, float32 (padding rows of the vocabulary
        cut), and the ``[B, T, H]`` last hidden states when the value head reads them. fp32:
        one plain forward; bf16/fp16: the body under autocast and the LM head in float32
        (autocast over the whole model would round the logits, and the rewards
        ``r = Q - gamma V'`` read off them, to bf16's 0.125 steps at logit 16)."""
        # sharded: the blocks' own mixed-precision policy casts (no autocast); the root
        # (final norm, LM head) is float32, so a plain forward's logits are float32 already
        body_dtype = None if self.sharded else precision_body_dtype(self.config.precision)
        rows = (batch.sequences, batch.prompt_lengths, batch.lengths, self.bkspc_id)
        rows_of_head = self.model.get_input_embeddings().weight.shape[0]
        if self.config.logits_chunk_mb and rows_of_head == self.vocab_size:
            chunk = max(1, self.config.logits_chunk_mb * 2**20 // (4 * rows_of_head))
            chunked = chunked_state_logits(
                self.network, *rows, validate=False, body_dtype=body_dtype, chunk_tokens=chunk
            )  # [B, T, V] read a chunk of states at a time
            return chunked, chunked.hidden if self.value_head is not None else None
        hidden = None
        if body_dtype is None and self.value_head is None:
            logits = state_logits(self.network, *rows, validate=False)
        else:
            chunked = chunked_state_logits(
                self.network, *rows, validate=False, body_dtype=body_dtype, recompute=False
            )
            logits, hidden = chunked.dense(), chunked.hidden  # [B, T, V], [B, T, H]
        return logits[..., : self.vocab_size].float(), hidden

    def _micro_batches(self, step: int, phase: str) -> list[MicroBatch]:
        """This rank's micro-batches of the step (each with the whole step's normalisers)."""
        traces = self._model_rows(step) if phase == "sequencematch" else []
        return micro_batches(
            self._data_rows(step), traces, gamma=self.config.gamma,
            grad_accum=self.config.grad_accum, world=self.world, pad_id=self.pad_id,
        )  # fmt: skip

    def sm_weight(self, step: int) -> float:
        """Weight of the SequenceMatch loss at ``step`` (see :func:`.schedule.sm_weight`)."""
        return sm_weight(self.config, step)

    def _loss(
        self, batch: Batch, data_count: int, totals, phase: str, step: int
    ) -> tuple[TrainingLoss, dict[str, float]]:
        """The micro-batch's loss and, on a logging step, each term's share of the gradient
        at the logits (dense logits only)."""
        config = self.config
        batch = batch.to(self.device)
        logits, hidden = self._state_logits(batch)  # [B, T, V] float32, [B, T, H]
        data = Batch(*(t[:data_count] for t in batch.__dict__.values()))
        model = Batch(*(t[data_count:] for t in batch.__dict__.values()))
        with_model = phase == "sequencematch"
        offsets = None
        if self.value_head is not None:
            b = self.value_head(hidden)  # [B, T] b(s) of the state after each element
            offsets = (b[:data_count], b[data_count:] if with_model else None)
        weight = self.sm_weight(step)
        result = training_loss(
            logits[:data_count], data, logits[data_count:] if with_model else None,
            model if with_model else None, self.bkspc_id, self.eos_id,
            sm_weight=weight, divergence=config.divergence, gamma=config.gamma,
            alpha=config.alpha, beta=config.beta, totals=totals, offsets=offsets,
            normalise=self.q_reading == "normalised",
            learned_terminal=config.terminal_value == "learned", balance_noise=config.balance_noise,
            data_regulariser=config.data_regulariser,
        )  # fmt: skip
        logged = step % config.log_every == 0 or step == config.steps
        if not logged or not isinstance(logits, torch.Tensor) or weight == 0.0:
            return result, {}
        return result, gradient_shares(result, weight, logits)

    def _train_step(self, step: int) -> dict[str, float]:
        phase = self._phase(step)
        sums: dict[str, float] = {}
        kinds: dict[str, float] = {}  # statistics per kind of transition: this process's
        finite = True
        bad_term = ""
        micro = list(self._micro_batches(step, phase))
        for index, (batch, data_count, totals) in enumerate(micro):
            last = index == len(micro) - 1
            with gradient_sync(self.network, sync=last):  # one reduction per step
                result, shares = self._loss(batch, data_count, totals, phase, step)
                terms = result.as_dict()
                for name, value in (result.by_kind | shares).items():  # means over micro-batches
                    kinds[name] = kinds.get(name, 0.0) + value / len(micro)
                for name in LOSS_TERMS:
                    value = float(terms[name].detach())
                    if not math.isfinite(value) and finite:
                        finite, bad_term = False, name
                    sums[name] = sums.get(name, 0.0) + value
                for name in ("v_mean", "r_mean", "r_std"):
                    if name in terms:
                        sums[name] = sums.get(name, 0.0) + float(terms[name]) / len(micro)
                # every process must agree before backward, or the gradient all-reduce hangs
                finite = all_ranks_true(self.world, finite, self.device)
                if finite:
                    self.scaler.scale(terms["loss"] * self.world.size).backward()
            if not finite:
                break
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingError(
                f"non-finite {bad_term or 'loss (on another process)'} at step {step} "
                f"({phase} phase); training stopped. {self._recovery_advice()}"
            )
        sums = sum_over_ranks(self.world, sums, self.device)
        for name in ("v_mean", "r_mean", "r_std"):  # statistics: mean over processes
            if name in sums:
                sums[name] /= self.world.size
        self.scaler.unscale_(self.optimizer)
        self._reduce_value_head_gradients()
        grad_norm = self._gradient_norm()
        # fp16's scaler skips such a step itself (and lowers its scale); elsewhere it is fatal
        if not math.isfinite(grad_norm) and not self.scaler.is_enabled():
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingError(
                f"non-finite gradient norm at step {step} ({phase} phase); the update was not "
                f"applied and training stopped. {self._recovery_advice()}"
            )
        if self.row_lr is not None:
            self.row_lr.before_step()
        self.scaler.step(self.optimizer)
        if self.row_lr is not None:
            self.row_lr.after_step()  # the <bkspc> row's update at its own learning rate
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        if phase == "sequencematch":  # mean steps since the step's model rows were sampled
            sums["sample/age"] = ReplayBuffer.mean_age(self._model_rows(step), step)
        return {**sums, **kinds, "grad_norm": grad_norm, "lr": lr, "phase": phase}

    def _reduce_value_head_gradients(self) -> None:
        """Average the value head's gradients over processes (it is outside DDP/FSDP) and
        refuse non-finite ones; the head is not part of the model's clipped norm."""
        if self.value_head is None:
            return
        for parameter in self.value_head.parameters():
            if parameter.grad is None:
                continue
            if self.world.size > 1:
                torch.distributed.all_reduce(parameter.grad)
                parameter.grad /= self.world.size
            if not bool(torch.isfinite(parameter.grad).all()):
                self.optimizer.zero_grad(set_to_none=True)
                raise TrainingError(
                    f"non-finite value-head gradient at step {self.step}; training stopped. "
                    f"{self._recovery_advice()}"
                )

    def _gradient_norm(self) -> float:
        """The global gradient norm (clipped to ``clip_grad`` when that is set)."""
        parameters = [p for p in self.model.parameters() if p.grad is not None]
        if self.sharded:
            return total_gradient_norm(parameters, self.config.clip_grad)
        if self.config.clip_grad > 0:
            return float(torch.nn.utils.clip_grad_norm_(parameters, self.config.clip_grad))
        norms = [torch.linalg.vector_norm(p.grad.detach().float()) for p in parameters]
        return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0

    def _recovery_advice(self) -> str:
        """Where a stopped run can continue from (checkpoints are never non-finite)."""
        good = latest_checkpoint(self.run_dir)
        if good is None:
            return "No checkpoint was written yet: start again with a lower lr."
        return (
            f"The last good (finite) checkpoint is {good}: resume from it with a lower learning "
            "rate (--resume true --lr ...); if that stops again at once, its weights have "
            "already grown too large: start again (--overwrite true) with a lower lr, a larger "
            "alpha or precision fp32."
        )

    # ------------------------------------------------------------------ the loop

    def train(self) -> dict[str, Any]:
        """Run to ``config.steps`` (or ``config.stop_at``); return the last logged metrics.
        The run folder's lock is released when this returns or fails."""
        try:
            return self._train_loop()
        finally:
            self.close()

    _stop_requested = False

    def request_stop(self) -> None:
        """End the loop after the step in progress, with a checkpoint (safe to call from a
        signal handler)."""
        self._stop_requested = True

    @property
    def stopped_early(self) -> bool:
        """Whether :meth:`request_stop` ended training before its last step."""
        last = min(self.config.steps, self.config.stop_at or self.config.steps)
        return self._stop_requested and self.step < last

    def _train_loop(self) -> dict[str, Any]:
        config = self.config
        last_step = min(config.steps, config.stop_at) if config.stop_at else config.steps
        bar = tqdm(
            total=config.steps, initial=self.step, desc=f"{config.method}",
            disable=not (config.progress and self.world.is_main), dynamic_ncols=True,
        )  # fmt: skip
        last: dict[str, Any] = {}
        first_step = self.step
        started = self.started = time.perf_counter() - self.elapsed_before
        self.model.train()
        pending = dict(self.probe_stats)  # logged with the first step
        while self.step < last_step and not self._stop_requested:
            step = self.step + 1
            extra: dict[str, float] = pending
            pending = {}
            if self._phase(step) == "sequencematch":
                since = step - config.mle_warmup() - 1
                if not self.replay or since % config.refresh_every == 0:
                    extra |= self._refresh(step)
                    self.model.train()
            metrics = self._train_step(step)
            self.step = step
            self.window.append(metrics)
            bar.update(1)
            bar.set_postfix({k: f"{metrics[k]:.3g}" for k in ("loss", "mle", "regulariser")})
            if step % config.log_every == 0 or step == last_step or extra:
                last = self._log(step, self.window, extra, time.perf_counter() - started)
                self.window = []
            if config.eval_every and step % config.eval_every == 0 and step != last_step:
                last |= self._run_evaluation(step)
            if config.save_every and step % config.save_every == 0 and step != last_step:
                self.save_checkpoint()
        bar.close()
        self.save_checkpoint()  # first: an evaluation that fails must not lose the training
        trained = self.step > first_step
        if not trained and self.step >= config.steps and self.world.is_main:
            print(f"the run in {self.run_dir} finished at step {self.step} already")
        if self.step >= config.steps and (trained or not self._finished_before("model")):
            self.save_model(self.run_dir / "model")
        if self.step >= config.steps and (trained or not self._finished_before("evaluation")):
            last |= self._run_evaluation(self.step)
        if self._writer is not None:
            self._writer.close()
        return last

    def _elapsed(self) -> float:
        """Seconds of training so far, over every resume."""
        if self.started is None:
            return self.elapsed_before
        return time.perf_counter() - self.started

    def _finished_before(self, part: str) -> bool:
        """Whether a run resumed at its last step already wrote ``part`` (``"model"`` or the
        final ``"evaluation"``): resuming a finished run rewrites and appends nothing."""
        done = False
        if self.world.is_main:
            if part == "model":
                done = self.run is not None and self.run.owns("model")
                done = done and self._model_is_of_this_step()
            else:
                done = self.evaluate is None or any(
                    record.get("step") == self.step and any(k.startswith("eval/") for k in record)
                    for record in self._metrics_records()
                )
        return bool(all_gather_objects(self.world, done)[0])

    def _model_is_of_this_step(self) -> bool:
        """Whether ``model/`` holds the weights of the current step. A crash while the final
        save replaced an earlier model (of a run resumed with more steps) puts that earlier
        model back; its manifest's step tells it apart. A model whose manifest records no
        step (written before it did) is taken as this step's."""
        manifest = read_manifest(self.run_dir / "model")
        if manifest is None:
            return False
        step = manifest.get("step", self.step)
        return isinstance(step, int) and step == self.step

    def _metrics_records(self) -> list[dict[str, Any]]:
        """The records of ``metrics.jsonl`` (rank 0; checked when the run was resumed)."""
        path = self.run_dir / METRICS_FILE
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def _log(
        self, step: int, window: list[dict[str, Any]], extra: dict[str, float], elapsed: float
    ) -> dict[str, Any]:
        numeric = [k for k, v in window[-1].items() if isinstance(v, float)]
        record: dict[str, Any] = {"step": step, "phase": window[-1]["phase"]}
        for key in numeric:
            values = [m[key] for m in window if key in m]
            record[key] = sum(values) / len(values)
        record |= extra
        record["elapsed_s"] = round(elapsed, 2)
        if self.world.is_main:
            self._append_metrics(record)
            if self.config.tensorboard and self.run is not None:
                self.run.record("tensorboard")
            self._tensorboard(step, record)
        return record

    def _tensorboard(self, step: int, record: dict[str, Any]) -> None:
        if not self.config.tensorboard:
            return
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as error:
                raise TrainingError(
                    "tensorboard logging needs the tensorboard package: pip install tensorboard"
                ) from error
            self._writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        for key, value in record.items():
            if isinstance(value, float):
                self._writer.add_scalar(key, value, step)

    def _run_evaluation(self, step: int) -> dict[str, Any]:
        if self.evaluate is None:
            return {}
        results: dict[str, Any] = {}
        if self.sharded:  # every rank runs the (collective) forwards; rank 0 reports
            results = {f"eval/{k}": v for k, v in self.evaluate(self.model).items()}
        if self.world.is_main:
            if not self.sharded:
                results = {f"eval/{k}": v for k, v in self.evaluate(self.model).items()}
            self._append_metrics({"step": step, **results})
            self._tensorboard(step, results)
        self.model.train()
        barrier(self.world)
        return results

    # ------------------------------------------------------------------ saving

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0); other ranks wait."""
        target = None
        weights, optimizer = None, None
        if self.sharded:  # gathered by every rank, kept by rank 0
            weights = full_model_state(self.model)
            optimizer = full_optimizer_state(self.model, self.optimizer)
        if self.world.is_main:
            model = saved_form(self.model, weights)  # sharded LoRA: an unsharded copy
            state = {
                "optimizer": optimizer if self.sharded else self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "replay": self.replay.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "config": self.config.to_dict(),
                "identity": self.identity,
                "mle_warmup": self.config.mle_warmup(),
                "metrics_window": list(self.window),  # logged later, averaged with later steps
                "elapsed_s": self._elapsed(),
            }
            if self.value_head is not None:
                state["value_head"] = self.value_head.state_dict()
            if self.config.lora_r > 0:  # the adapters and <bkspc> row; the base is rebuilt
                state["trainable"] = trainable_state(model)
            existing = latest_checkpoint(self.run_dir)
            if existing is None or existing.name != f"step-{self.step:08d}":
                assert self.run is not None
                target = save_checkpoint(
                    self.run, self.step, model, self.tokenizer, state,
                    self.config.keep_checkpoints, weights,
                )  # fmt: skip
        barrier(self.world)
        return target

    def save_model(self, target: Path) -> None:
        """The trained model and tokenizer, loadable by ``from_pretrained`` (rank 0)."""
        weights = full_model_state(self.model) if self.sharded else None
        if self.world.is_main:
            files = {"training_config.json": json.dumps(self.config.to_dict(), indent=2)}
            save_model_folder(
                saved_form(self.model, weights), self.tokenizer, target,
                files | self.model_files, run=self.run, weights=weights, step=self.step,
            )  # fmt: skip
        barrier(self.world)
