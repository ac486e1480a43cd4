"""The training loop: the schedule of MLE and SequenceMatch phases, refills of the replay
buffer, logging and the evaluation cadence, around parts that each do one job: the step
(:mod:`.step`), the run folder and checkpoints (:mod:`.run_state`), the metrics
(:mod:`.metrics_log`), the batches (:mod:`.batches`), the model samples (:mod:`.replay`) and
what each step trains (:mod:`.schedule`).

Every random choice of a step (which examples, which noise, which replayed samples) is
derived from ``(seed, step)``, and every process builds the same global batch before
taking its share, so a resumed run repeats exactly what an uninterrupted one does, and
``torchrun`` with ``k`` processes computes the same update as one process, given the same
replay buffer: refills are sampled per process (seeded by rank), so only greedy refills
(``sample_temperature 0``) give identical buffers for every process count.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from ..core.actions import NoiseSource, collate
from ..core.causal_lm import BKSPC_TOKEN, causal_lm, check_backspace_support, valid_vocabulary
from ..core.examples import Example, check_lengths, longest_completion, position_limit, special_ids
from ..core.forward import precision_body_dtype, verify_head_once, verify_layout_once
from ..core.objectives import gradient_shares
from ..core.sampling import generate
from ..models.backspace import add_backspace
from ..models.loading import PRESETS
from ..models.pickled_weights import refused_pickles_in_one_line
from .adapters import adapt_model
from .batches import DataOrder, DataRows, MicroBatch, data_rows, micro_batches
from .bkspc_row import ProbeFeatures, RowLearningRate, probe_bkspc_row, probe_features
from .config import TrainConfig
from .distributed import World, all_gather_objects, barrier
from .errors import TrainingError
from .metrics_log import METRICS_FILE, MetricsLog
from .model_noise import ModelSampleNoise, model_noise_sources
from .noise import build_noise_source
from .optimizer import build_adamw
from .replay import ReplayBuffer, Trace
from .run_folder import RunFolder
from .run_state import RESUMABLE_CHANGES, TRAIN_OUTPUTS, RunState, run_identity
from .schedule import lr_at, objective_at, phase_at, sm_weight
from .sharding import shard_model
from .step import LOSS_TERMS, TrainStep
from .value_head import ValueHead, hidden_size

Evaluator = Callable[[PreTrainedModel], dict[str, float]]

__all__ = [
    "LOSS_TERMS", "METRICS_FILE", "RESUMABLE_CHANGES", "TRAIN_OUTPUTS", "Trainer",
    "TrainingError", "gradient_shares", "resolve_device", "run_identity",
]  # fmt: skip


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
        if config.bkspc_reprobe and self.world.size > 1:
            raise ValueError("bkspc_reprobe runs in one process: drop it under torchrun")
        shares = self.world.size * config.grad_accum
        if config.batch_size < shares or (
            config.samples_model() and config.model_batch_size < shares
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
        self.metrics = MetricsLog(self.run_dir, self.world, config.tensorboard)
        self.state = RunState(self.config, self.world, self.metrics)
        sampled = self.sample_length if config.samples_model() else 0
        check_lengths(train, position_limit(model), sampled)

        resume_from = self.state.open()
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
        self.objective = config.objective()
        self.value_head: ValueHead | None = None
        if config.method != "mle" and self.objective.q_reading != "none":
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
        self.optimiser_step = TrainStep(
            model=self.model, network=self.network, optimizer=self.optimizer,
            scheduler=self.scheduler, scaler=self.scaler, value_head=self.value_head,
            row_lr=self.row_lr, world=self.world, device=self.device,
            precision=config.precision, sharded=self.sharded, clip_grad=config.clip_grad,
            logits_chunk_mb=config.logits_chunk_mb, vocab_size=self.vocab_size,
            head_rows=self.model.get_input_embeddings().weight.shape[0],
            bkspc_id=self.bkspc_id, eos_id=self.eos_id, advice=self.state.recovery_advice,
        )  # fmt: skip
        if resume_from is not None:
            self.state.restore(resume_from, self)

    @property
    def run(self) -> RunFolder | None:
        """The locked run folder (rank 0; ``None`` on other ranks)."""
        return self.state.run

    @property
    def identity(self) -> dict[str, Any]:
        """The options that define this run (:func:`.run_state.run_identity`)."""
        return self.state.identity

    # ------------------------------------------------------------------ set-up

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

    def _reprobe_bkspc_row(self) -> None:
        """``bkspc_reprobe``: the probe again, on the features the steps left (body frozen),
        logged as ``reprobe/...`` with the last step (docs/RESULTS.md, "A second probe")."""
        stats = self._probe_bkspc_row()
        self.model.train()
        if self.world.is_main:
            record = {f"re{key}": value for key, value in stats.items()}  # reprobe/nll_before
            self.metrics.append({"step": self.step, **record})

    def close(self) -> None:
        """Release the run folder's lock (training calls this when it ends, however)."""
        self.state.close()

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

    def apply_schedule(self) -> None:
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

    def _train_step(self, step: int) -> dict[str, Any]:
        """One optimiser step (:class:`.step.TrainStep`) on the batches of ``step``, with the
        objective, weight and logging the schedule gives it."""
        config = self.config
        phase = self._phase(step)
        micro = list(self._micro_batches(step, phase))
        extra: dict[str, float] = {}
        if phase == "sequencematch":  # mean steps since the step's model rows were sampled
            extra["sample/age"] = ReplayBuffer.mean_age(self._model_rows(step), step)
        logged = step % config.log_every == 0 or step == config.steps
        objective = objective_at(self.objective, config, step)
        weight = self.sm_weight(step)
        metrics = self.optimiser_step(step, phase, micro, objective, weight, logged, extra)
        return {**metrics, "phase": phase}

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
            # the last step of the run is logged; a stop before it is not (its steps are
            # kept in the checkpoint's window, so a resume logs what one run would)
            if step % config.log_every == 0 or step == config.steps or extra:
                last = self.metrics.log(step, self.window, extra, time.perf_counter() - started)
                self.window = []
            if config.eval_every and step % config.eval_every == 0 and step != last_step:
                last |= self._run_evaluation(step)
            if config.save_every and step % config.save_every == 0 and step != last_step:
                self.save_checkpoint()
        bar.close()
        trained = self.step > first_step
        if config.bkspc_reprobe and trained and self.step >= config.steps:
            self._reprobe_bkspc_row()
        self.save_checkpoint()  # first: an evaluation that fails must not lose the training
        if not trained and self.step >= config.steps and self.world.is_main:
            print(f"the run in {self.run_dir} finished at step {self.step} already")
        if self.step >= config.steps and (trained or not self._finished_before("model")):
            self.save_model(self.run_dir / "model")
        if self.step >= config.steps and (trained or not self._finished_before("evaluation")):
            last |= self._run_evaluation(self.step)
        self.metrics.close()
        return last

    def elapsed(self) -> float:
        """Seconds of training so far, over every resume."""
        if self.started is None:
            return self.elapsed_before
        return time.perf_counter() - self.started

    def _finished_before(self, part: str) -> bool:
        """Whether a run resumed at its last step already wrote ``part`` (``"model"`` or the
        final ``"evaluation"``)."""
        return self.state.finished_before(part, self.step, self.evaluate is not None)

    def _run_evaluation(self, step: int) -> dict[str, Any]:
        if self.evaluate is None:
            return {}
        results: dict[str, Any] = {}
        if self.sharded:  # every rank runs the (collective) forwards; rank 0 reports
            results = {f"eval/{k}": v for k, v in self.evaluate(self.model).items()}
        if self.world.is_main:
            if not self.sharded:
                results = {f"eval/{k}": v for k, v in self.evaluate(self.model).items()}
            self.metrics.append({"step": step, **results})
            self.metrics.tensorboard(step, results)
        self.model.train()
        barrier(self.world)
        return results

    # ------------------------------------------------------------------ saving

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0); other ranks wait."""
        return self.state.save_checkpoint(self)

    def save_model(self, target: Path) -> None:
        """The trained model and tokenizer, loadable by ``from_pretrained`` (rank 0)."""
        self.state.save_model(self, target, self.model_files)
