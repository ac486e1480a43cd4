"""A training run's folder and state: claiming the folder, its identity, checkpoints,
resuming from one, and the final model.

A checkpoint holds everything a resumed run needs to repeat exactly what an uninterrupted
one does: weights, optimiser, schedule, scaler, replay buffer, random states, the metrics
of steps not yet logged, and the run's identity (the options that may not change).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import torch

from ..storage.files import content_digest
from .adapters import load_trainable_state, saved_form, trainable_state
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
from .distributed import World, all_gather_objects, barrier
from .metrics_log import MetricsLog
from .optimizer import keep_implementation
from .run_folder import RunFolder, read_manifest
from .sharding import full_model_state, full_optimizer_state, load_full_optimizer_state


class Trainer(Protocol):
    """What checkpoints save and restore of a training loop (``trainer.Trainer`` is one)."""

    config: TrainConfig
    model: torch.nn.Module
    tokenizer: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    replay: Any
    value_head: torch.nn.Module | None
    window: Any
    step: int
    sharded: bool
    elapsed_before: float

    def elapsed(self) -> float: ...

    def apply_schedule(self) -> None: ...


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


def objective_schedule(identity: dict[str, Any], steps: int) -> dict[str, Any]:
    """``identity`` with the objective's schedule written as what it does: method ``offline``
    and the equivalent ``sequencematch`` with a warm-up as long as the run (``steps``) are one
    kind, and neither they nor plain MLE have a warm-up to compare. A run checkpointed in one
    form resumes in the other; an online run keeps its warm-up options as written."""
    values = dict(identity)
    method = values.get("method")
    if method == "sequencematch":
        warmup, fraction = values.get("mle_warmup_steps"), values.get("mle_warmup_fraction")
        if warmup is None and isinstance(fraction, int | float):
            warmup = round(fraction * steps)
        method = "offline" if isinstance(warmup, int) and warmup >= steps else method
    if method in ("mle", "offline"):
        values.pop("mle_warmup_steps", None)
        values.pop("mle_warmup_fraction", None)
        values["method"] = method
    return values


class RunState:
    """The run folder of one training run (locked by rank 0) and what is saved in it."""

    def __init__(self, config: TrainConfig, world: World, metrics: MetricsLog) -> None:
        self.config = config
        self.identity = run_identity(config)  # before a resume fixes the warm-up
        self.world = world
        self.run_dir = Path(config.output_dir)
        self.metrics = metrics
        self.run: RunFolder | None = None  # the locked run folder (rank 0)

    # ------------------------------------------------------------------ claiming

    def open(self) -> Path | None:
        """Lock the run folder and decide where this run starts: a verified checkpoint of
        this run, or ``None`` for step 0 (rank 0 decides, every rank gets its answer)."""
        checkpoint = None
        if self.world.is_main:
            self.run = RunFolder(self.run_dir, "train", TRAIN_OUTPUTS).lock()
            self.metrics.run = self.run
            try:
                checkpoint = self._claim(self.run)
            except BaseException:
                self.close()
                raise
        shared = all_gather_objects(self.world, None if checkpoint is None else str(checkpoint))
        return None if shared[0] is None else Path(shared[0])

    def _claim(self, run: RunFolder) -> Path | None:
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
            self.metrics.drop_after(0)
        return checkpoint

    def close(self) -> None:
        """Release the run folder's lock."""
        if self.run is not None:
            self.run.release()

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, trainer: Trainer) -> Path | None:
        """Write a checkpoint of the trainer's current step (rank 0); other ranks wait."""
        target = None
        weights, optimizer = None, None
        if trainer.sharded:  # gathered by every rank, kept by rank 0
            weights = full_model_state(trainer.model)
            optimizer = full_optimizer_state(trainer.model, trainer.optimizer)
        if self.world.is_main:
            model = saved_form(trainer.model, weights)  # sharded LoRA: an unsharded copy
            state = {
                "optimizer": optimizer if trainer.sharded else trainer.optimizer.state_dict(),
                "scheduler": trainer.scheduler.state_dict(),
                "scaler": trainer.scaler.state_dict(),
                "replay": trainer.replay.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "config": trainer.config.to_dict(),
                "identity": self.identity,
                "mle_warmup": trainer.config.mle_warmup(),
                "metrics_window": list(trainer.window),  # logged later, with later steps
                "elapsed_s": trainer.elapsed(),
            }
            if trainer.value_head is not None:
                state["value_head"] = trainer.value_head.state_dict()
            if trainer.config.lora_r > 0:  # the adapters and <bkspc> row; the base is rebuilt
                state["trainable"] = trainable_state(model)
            existing = latest_checkpoint(self.run_dir)
            if existing is None or existing.name != f"step-{trainer.step:08d}":
                assert self.run is not None
                target = save_checkpoint(
                    self.run, trainer.step, model, trainer.tokenizer, state,
                    trainer.config.keep_checkpoints, weights,
                )  # fmt: skip
        barrier(self.world)
        return target

    def restore(self, checkpoint: Path, trainer: Trainer) -> None:
        """Put the trainer in the state ``checkpoint`` saved (the lock is released if that
        fails)."""
        try:
            self._restore(checkpoint, trainer)
        except BaseException:
            self.close()
            raise

    def _restore(self, checkpoint: Path, trainer: Trainer) -> None:
        state = load_state(checkpoint)
        saved_steps = int(state.get("config", {}).get("steps", self.config.steps))
        self._check_identity(checkpoint, state.get("identity", {}), saved_steps)
        try:
            if trainer.sharded:
                load_full_optimizer_state(trainer.model, trainer.optimizer, state["optimizer"])
            else:
                trainer.optimizer.load_state_dict(state["optimizer"])
            keep_implementation(trainer.optimizer)  # not the saved run's fused/foreach flags
            trainer.scheduler.load_state_dict(state["scheduler"])
            trainer.scaler.load_state_dict(state["scaler"])
        except (KeyError, ValueError) as error:
            raise CheckpointError(f"checkpoint {checkpoint} is incomplete: {error}") from error
        if "mle_warmup" in state and trainer.config.method == "sequencematch":
            # a warm-up set as a fraction of steps stays where the run put it when steps change
            trainer.config = trainer.config.replace(mle_warmup_steps=int(state["mle_warmup"]))
        trainer.apply_schedule()
        if trainer.config.lora_r > 0:
            try:
                load_trainable_state(trainer.model, state["trainable"])
            except (KeyError, ValueError) as error:
                raise CheckpointError(f"checkpoint {checkpoint}: {error}") from error
        if trainer.value_head is not None:
            if "value_head" not in state:
                raise CheckpointError(f"checkpoint {checkpoint} holds no value head")
            trainer.value_head.load_state_dict(state["value_head"])
        trainer.step = int(state["step"])
        self.metrics.drop_after(trainer.step)
        trainer.window = list(state.get("metrics_window", []))
        trainer.elapsed_before = float(state.get("elapsed_s", 0.0))
        trainer.replay.load_state_dict(state["replay"], trainer.step)
        torch.set_rng_state(state["torch_rng"])
        if torch.cuda.is_available() and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if self.world.is_main:
            print(f"resumed from {checkpoint} at step {trainer.step}")

    def _check_identity(self, checkpoint: Path, saved: dict[str, Any], saved_steps: int) -> None:
        """Refuse a checkpoint trained with other options than those that may change."""
        current = objective_schedule(self.identity, self.config.steps)
        saved = objective_schedule(saved, saved_steps)
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

    def recovery_advice(self) -> str:
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

    # ------------------------------------------------------------------ the end of a run

    def save_model(self, trainer: Trainer, target: Path, model_files: dict[str, str]) -> None:
        """The trained model and tokenizer, loadable by ``from_pretrained`` (rank 0)."""
        weights = full_model_state(trainer.model) if trainer.sharded else None
        if self.world.is_main:
            files = {"training_config.json": json.dumps(trainer.config.to_dict(), indent=2)}
            save_model_folder(
                saved_form(trainer.model, weights), trainer.tokenizer, target,
                files | model_files, run=self.run,
                weights=weights, step=trainer.step,
            )  # fmt: skip
        barrier(self.world)

    def finished_before(self, part: str, step: int, evaluates: bool) -> bool:
        """Whether a run resumed at its last step already wrote ``part`` (``"model"`` or the
        final ``"evaluation"``): resuming a finished run rewrites and appends nothing."""
        done = False
        if self.world.is_main:
            if part == "model":
                done = self.run is not None and self.run.owns("model")
                done = done and self._model_is_of_step(step)
            else:
                done = not evaluates or any(
                    record.get("step") == step and any(k.startswith("eval/") for k in record)
                    for record in self.metrics.records()
                )
        return bool(all_gather_objects(self.world, done)[0])

    def _model_is_of_step(self, step: int) -> bool:
        """Whether ``model/`` holds the weights of ``step``. A crash while the final save
        replaced an earlier model (of a run resumed with more steps) puts that earlier model
        back; its manifest's step tells it apart. A model whose manifest records no step
        (written before it did) is taken as this step's."""
        manifest = read_manifest(self.run_dir / "model")
        if manifest is None:
            return False
        saved = manifest.get("step", step)
        return isinstance(saved, int) and saved == step
