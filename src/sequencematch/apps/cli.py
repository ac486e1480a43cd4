"""Command-line interface: thin argument parsing over the library."""

from __future__ import annotations

import argparse
import math
import os
import pickle
import sys
from typing import Any, NoReturn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Spinning OpenMP threads stall small ops 10-50x when a vCPU is descheduled; sleep instead.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ..storage.files import is_disk_full, model_folder_problem  # noqa: E402
from ..training.config import MAX_SEED, add_config_arguments, config_from_arguments  # noqa: E402
from .signals import interrupted_line, stop_on_sigterm  # noqa: E402


class _Parser(argparse.ArgumentParser):
    """``argparse`` whose usage errors are one line (``error: ...``), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sequencematch",
        description="SequenceMatch: imitation learning with backtracking for causal LMs",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="compare MLE, MLE+<bkspc>, offline chi2+<bkspc> and SequenceMatch, paired over seeds",
        description="For each seed: one shared MLE warm-up, then every method continues from "
        "it for the same steps on the same data, and is evaluated on the same items; the "
        "report gives paired differences with intervals, per seed and over seeds.",
    )
    demo.add_argument("--task", choices=tuple(DEMOS), default="arithmetic",
                      help="arithmetic (default) or text (Shakespeare, or --corpus)")  # fmt: skip
    demo.add_argument("--corpus", default=None, help="text: a text file, folder or JSONL")
    demo.add_argument("--out", default=None, help="output folder (default: runs/demo[-text])")
    demo.add_argument("--quick", action="store_true", help="a one-minute version")
    demo.add_argument(
        "--model", default=None,
        help="fine-tune this pretrained model (e.g. smollm2-135m, a model folder) in a reduced "
        "comparison instead of training a tiny model from scratch",
    )  # fmt: skip
    demo.add_argument(
        "--overwrite", action="store_true",
        help="replace an earlier demo in --out (deleting only what it wrote)",
    )  # fmt: skip
    demo.add_argument("--seed", type=int, default=None, help="first seed (data, init, noise)")
    demo.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3)")
    demo.add_argument("--warmup-steps", type=int, default=None,
                      help="steps of each seed's shared MLE warm-up")  # fmt: skip
    demo.add_argument("--steps", type=int, default=None,
                      help="steps of every method after the warm-up")  # fmt: skip
    demo.add_argument("--lr", type=float, default=None,
                      help="peak learning rate of every method after the warm-up")  # fmt: skip
    demo.add_argument("--lora-r", type=int, default=None,
                      help="methods continue through LoRA adapters of this rank (default 0: "
                      "every weight)")  # fmt: skip
    demo.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default=None,
        help="compute precision (default: fp32 from scratch, bf16 for a "
        "pretrained model; fp32 is faster on a CPU without bf16 units)",
    )
    demo.add_argument("--alpha", type=float, default=None, help="chi2 regulariser scale")
    demo.add_argument("--lambda-mle", type=float, default=None, help="MLE weight (chi2 methods)")
    demo.add_argument("--p-noise", type=float, default=None, help="training noise level")
    demo.add_argument("--noise-source", default=None, help="uniform, unigram or task")
    demo.add_argument("--bkspc-reprobe", type=_flag, default=None, metavar="BOOL",
                      help="the <bkspc> methods fit their row again as a probe after their "
                      "steps (train's bkspc_reprobe; default: on for the arithmetic demo of a "
                      "pretrained model without --lora-r, off otherwise)")  # fmt: skip
    demo.add_argument("--difficulty", type=float, nargs=2, default=None, help="entropy bits")
    demo.add_argument("--hidden-size", type=int, default=None, help="model width")
    demo.add_argument("--num-layers", type=int, default=None, help="transformer blocks")
    demo.add_argument("--n-train", type=int, default=None, help="training questions")
    demo.add_argument("--n-test", type=int, default=None, help="held-out questions / prompts")
    demo.add_argument(
        "--workers",
        type=int,
        default=None,
        help="runs trained at once, one process each (default: one per CPU; 1: in turn)",
    )
    demo.add_argument(
        "--resume",
        action="store_true",
        help="keep the runs finished in --out and do the rest (same options; --seeds may grow)",
    )
    demo.add_argument("--progress", type=_flag, default=True, metavar="BOOL", help="bars")
    train = commands.add_parser(
        "train",
        help="train a model (MLE or SequenceMatch); runs under torchrun too",
        description="Train with MLE or SequenceMatch. Options come from --config FILE.yaml, "
        "then from the flags below (flags win). Launch with torchrun --nproc-per-node N for "
        "data parallel training.",
    )
    train.add_argument("--config", default=None, help="YAML file of options")
    add_config_arguments(train)

    generate = commands.add_parser("generate", help="generate from a trained model folder")
    generate.add_argument("--model", required=True, help="model folder (e.g. RUN/model)")
    generate.add_argument("--prompt", required=True, help="prompt text (a question)")
    _add_task_arguments(generate)
    generate.add_argument("--show-edits", action="store_true",
                          help="print the action trace, deleted tokens in [brackets]")  # fmt: skip
    generate.add_argument("--json", action="store_true", help="print one JSON object")
    generate.add_argument("--max-new-tokens", type=int, default=None, help="default: task's")
    generate.add_argument("--sample", action="store_true", help="sample instead of greedy")
    generate.add_argument("--temperature", type=float, default=1.0, help="with --sample")
    generate.add_argument("--noise", type=float, default=0.0, help="forced-noise probability")
    generate.add_argument("--seed", type=int, default=0, help="seed of sampling and noise")

    evaluate = commands.add_parser(
        "eval",
        help="evaluate a trained model as its task does: exact match of answers (arithmetic, "
        "jsonl) or text quality (MAUVE, diversity)",
    )
    evaluate.add_argument("--model", required=True, help="model folder (e.g. RUN/model)")
    _add_task_arguments(evaluate)
    evaluate.add_argument(
        "--data", default=None,
        help='arithmetic: JSONL of {"question", "answer"} (default: the generated test '
        'split); jsonl: JSONL of {"prompt", "completion"}; text: such pairs, or a text '
        "file/folder to cut into windows (default: the held-out split of the model's corpus)",
    )  # fmt: skip
    evaluate.add_argument("--n", type=int, default=None,
                          help="pairs to evaluate (default: all; text: 200 windows)")  # fmt: skip
    evaluate.add_argument("--sample", action="store_true",
                          help="arithmetic, jsonl: sample answers at --temperature instead of "
                          "greedy decoding (text always samples)")  # fmt: skip
    evaluate.add_argument("--temperature", type=float, default=None,
                          help="sampling temperature (default 1): text, and answers with "
                          "--sample")  # fmt: skip
    evaluate.add_argument("--no-mauve", action="store_true", help="text: skip MAUVE")
    evaluate.add_argument("--noise", type=float, default=0.0, help="forced-noise probability")
    evaluate.add_argument("--seed", type=int, default=0,
                          help="seed of sampling, the forced noise and --n's choice")  # fmt: skip
    evaluate.add_argument("--batch-size", type=int, default=64, help="questions per batch")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _add_task_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--task", default=None,
        help="the model's task (default: the one its task.json names; a folder without one, "
        "such as a checkpoint, needs it)",
    )  # fmt: skip
    parser.add_argument(
        "--trust-task-code", action="store_true",
        help="allow the folder's task.json to name a task class by import path (module:Class), "
        "which imports and runs that module: only for folders you trust",
    )  # fmt: skip


def _flag(text: str) -> bool:
    return text.lower() in ("1", "true", "yes", "on")


DEMOS = {
    "arithmetic": "demos.arithmetic_demo:DemoSettings",
    "text": "demos.text_demo:TextDemoSettings",
}
"""Each demo's settings: ``module:class`` in this package."""
DEMO_OPTIONS = ("seed", "seeds", "warmup_steps", "steps", "alpha", "lambda_mle", "p_noise",
                "noise_source", "difficulty", "hidden_size", "num_layers", "n_train", "n_test",
                "corpus", "lr", "lora_r", "precision", "bkspc_reprobe")  # fmt: skip


def demo_settings(args: argparse.Namespace):
    """The demo's settings from its command line: the task's defaults (the reduced ones for a
    pretrained model), then every option given."""
    import importlib
    from dataclasses import replace

    from ..models.loading import PRESETS
    from .demos.harness import with_overrides

    module, _, name = DEMOS[args.task].partition(":")
    settings_class = getattr(importlib.import_module(f"{__package__}.{module}"), name)
    settings = settings_class.quick() if args.quick else settings_class()
    if args.model is not None and args.model not in PRESETS:
        if args.hidden_size is not None or args.num_layers is not None:
            raise ValueError(
                "--hidden-size and --num-layers size a preset trained from scratch; a "
                f"pretrained model ({args.model}) keeps its own: leave them out"
            )
        # pretrained: the reduced sizes (the quick ones stay quick, with this model)
        settings = (replace(settings, model=args.model, precision="bf16",
                            value_head="normalised") if args.quick
                    else settings_class.pretrained(args.model))  # fmt: skip
    elif args.model is not None:
        settings = replace(settings, model=args.model)
    return with_overrides(settings, **{n: getattr(args, n) for n in DEMO_OPTIONS})


def run_demo_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .demos.harness import run_comparison

    settings = demo_settings(args)
    run_comparison(
        Path(args.out or settings.default_out), settings, progress=args.progress,
        workers=args.workers, resume=args.resume, overwrite=args.overwrite,
    )  # fmt: skip
    return 0


def run_generate(args: argparse.Namespace) -> int:
    import json

    import torch

    from ..core.examples import encode_prompt
    from ..core.sampling import generate
    from ..core.traces import format_trace, strip_eos

    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    _check_sampling_options(args)
    trained = _load_model_folder(args)
    tokenizer = trained.tokenizer
    if not args.prompt.strip():
        raise ValueError("--prompt is empty: give the text to continue")
    trained.task.check_prompt(args.prompt)
    prompt = encode_prompt(tokenizer, trained.prompt_text(args.prompt))
    _warn_unknown_characters(tokenizer, [args.prompt], "the prompt")
    max_new_tokens = args.max_new_tokens or trained.sample_length
    _check_positions(trained.model, len(prompt), max_new_tokens, "the prompt")
    output = generate(
        trained.model, [prompt], bkspc_id=trained.bkspc_id, max_new_tokens=max_new_tokens,
        do_sample=args.sample, temperature=args.temperature, eos_token_id=tokenizer.eos_token_id,
        noise_prob=args.noise, generator=torch.Generator().manual_seed(args.seed),
        noise_token_ids=trained.task.forced_noise_ids(tokenizer) if args.noise else None,
        vocab_size=len(tokenizer),
    )  # fmt: skip
    text = tokenizer.decode(strip_eos(output.sequences[0], tokenizer.eos_token_id))
    trace = format_trace(tokenizer, output.actions[0], trained.bkspc_id, output.forced[0])
    if args.json:
        record = {"prompt": args.prompt, "completion": text, "trace": trace,
                  "actions": output.actions[0], "finished": output.finished[0]}  # fmt: skip
        print(json.dumps(record))
    else:
        print(text)
        if args.show_edits:
            print(f"edits: {trace}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    import json

    from ..core.examples import check_prompt_lengths, position_limit
    from ..tasks.base import EvalOptions

    _check_sampling_options(args)
    if args.batch_size < 1 or (args.n is not None and args.n < 0):
        raise ValueError("--batch-size must be at least 1 and --n at least 0")
    trained = _load_model_folder(args)
    task = trained.task
    pairs = task.held_out(trained.tokenizer, args.data, n=args.n, seed=args.seed)
    if not pairs:
        raise ValueError("nothing to evaluate: the data holds no prompt/completion pair")
    if task.name != "text":  # text windows are cut by the model's own tokenizer
        _warn_unknown_characters(
            trained.tokenizer, [p.prompt for p in pairs], args.data or "the data"
        )
    if args.temperature is not None and not args.sample and task.name != "text":
        print(f"warning: --temperature applies to {task.name} answers only with --sample; "
              "they are decoded greedily", file=sys.stderr)  # fmt: skip
    options = EvalOptions(
        seed=args.seed, noise_prob=args.noise, sample=args.sample,
        temperature=1.0 if args.temperature is None else args.temperature,
        batch_size=args.batch_size, with_mauve=not args.no_mauve,
    )  # fmt: skip
    if options.with_mauve and task.name == "text" and len(pairs) < MIN_MAUVE_SAMPLES:
        print(f"warning: MAUVE from {len(pairs)} samples is unreliable (hundreds are usual); "
              "give more --data or pass --no-mauve", file=sys.stderr)  # fmt: skip
    pairs = trained.prompts_as_trained(pairs)  # the chat template, if training used one
    check_prompt_lengths(
        trained.tokenizer, [p.prompt for p in pairs], position_limit(trained.model),
        trained.sample_length, args.data or "the held-out data",
    )  # fmt: skip
    result = task.evaluate(
        trained.model, trained.tokenizer, pairs, bkspc_id=trained.bkspc_id,
        max_new_tokens=trained.sample_length, options=options,
    )  # fmt: skip
    policy = task.policy(trained.model, trained.tokenizer, pairs, seed=args.seed).as_dict()
    if args.json:
        print(json.dumps(json_ready(task.record(result) | {"policy": policy})))
    else:
        print(task.summary(result))
        print("policy at the reference answer: " + ", ".join(
            f"{k} {v:.3f}" for k, v in policy.items() if k != "rows" and v == v))  # fmt: skip
    return 0


def run_train(args: argparse.Namespace) -> int:
    from ..models.loading import model_source
    from ..training.distributed import close_world, init_world
    from ..training.trainer import Trainer, resolve_device
    from .setup import prepare_run, task_file

    config = config_from_arguments(args)
    if model_source(config.model) == "folder":
        problem = model_folder_problem(config.model)
        if problem is not None:
            raise ValueError(f"model {config.model!r}: {problem}")
    world = init_world(str(resolve_device(config.device)))
    trainer = None
    try:
        inputs = prepare_run(config)
        trainer = Trainer(
            config, inputs.model, inputs.tokenizer, inputs.train, world=world,
            evaluate=inputs.evaluate, model_files=task_file(inputs.task_info),
            task_noise=inputs.task_noise,
        )  # fmt: skip
        last = _train_until_stopped(trainer, world)
        if world.is_main:
            if last:  # a stop before a log step has no new line
                print({k: v for k, v in last.items() if not isinstance(v, list)})
            print(f"run folder: {config.output_dir}")
        close_world(world, synchronise=True, models=[trainer.model])
    finally:
        close_world(world, models=[trainer.model] if trainer is not None else [])
    return 0


def _train_until_stopped(trainer: Any, world: Any) -> dict[str, Any]:
    """``trainer.train()``; in one process, Ctrl-C or ``SIGTERM`` ends it after the step
    with a checkpoint (:func:`.signals.stop_after_the_step`), raising :class:`Stopped`."""
    from pathlib import Path

    from ..training.checkpoints import latest_checkpoint
    from .signals import Stopped, stop_after_the_step

    if world.size > 1:  # every process must stop at the same step: torchrun's own handling
        return trainer.train()
    with stop_after_the_step(trainer.request_stop):
        last = trainer.train()
    if trainer.stopped_early:
        saved = latest_checkpoint(Path(trainer.config.output_dir))
        raise Stopped(
            f"stopped at step {trainer.step} of {trainer.config.steps}; checkpoint {saved} "
            "written: continue with the same command and --resume true"
        )
    return last


MIN_MAUVE_SAMPLES = 100


def _load_model_folder(args: argparse.Namespace) -> Any:
    """The saved model folder ``--model``, checked first: it exists, holds a model and a
    tokenizer, and its files match their manifest (when it has one)."""
    from pathlib import Path

    from safetensors import SafetensorError

    from ..training.checkpoints import verify_folder
    from ..training.run_folder import MANIFEST_FILE
    from .setup import load_trained

    folder = args.model
    problem = model_folder_problem(folder)
    if problem is not None:
        raise ValueError(f"--model: {problem}; pass a model folder (e.g. RUN/model)")
    if (Path(folder) / MANIFEST_FILE).exists():
        verify_folder(Path(folder), missing_ok=True)
    try:
        return load_trained(folder, task=args.task, trust_task_code=args.trust_task_code)
    except SafetensorError as error:
        raise ValueError(f"{folder}: the model weights cannot be read ({error})") from error
    except pickle.UnpicklingError as error:
        raise ValueError(f"{folder}: {describe_error(error)}") from None


def _check_sampling_options(args: argparse.Namespace) -> None:
    if not 0.0 <= args.noise <= 1.0:
        raise ValueError(f"--noise is a probability in [0, 1], got {args.noise}")
    if args.temperature is not None and not 0 < args.temperature < math.inf:
        raise ValueError(f"--temperature must be a positive number, got {args.temperature}")
    if not 0 <= args.seed <= MAX_SEED:
        raise ValueError(f"--seed must lie in [0, {MAX_SEED}], got {args.seed}")


def _check_positions(model: Any, prompt_tokens: int, new_tokens: int, what: str) -> None:
    """Refuse a prompt that, with the tokens to generate, exceeds the model's positions."""
    from ..core.examples import position_limit

    limit = position_limit(model)
    if limit is not None and prompt_tokens + new_tokens > limit:
        raise ValueError(
            f"{what} has {prompt_tokens} tokens; with {new_tokens} new tokens that is more than "
            f"the model's {limit} positions: shorten it (or lower --max-new-tokens)"
        )


def _warn_unknown_characters(tokenizer: Any, texts: list[str], where: str) -> None:
    """Say which characters a tokenizer reads as ``<unk>`` (a character tokenizer knows only
    the characters of its training data)."""
    unk = tokenizer.unk_token_id
    if unk is None:
        return
    unknown = sorted(
        {char for text in texts for char in set(text)
         if unk in tokenizer(char, add_special_tokens=False).input_ids}
    )  # fmt: skip
    if unknown:
        shown = ", ".join(repr(c) for c in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
        print(f"warning: {where} holds characters the model's tokenizer does not know "
              f"({shown}); they are read as {tokenizer.unk_token}", file=sys.stderr)  # fmt: skip


def json_ready(value: Any) -> Any:
    """``value`` with every non-finite number as ``None`` (JSON has no NaN or Infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    return value


def describe_error(error: BaseException, command: str = "train") -> str:
    """The one line a user error of ``command`` becomes on stderr."""
    if is_disk_full(error):
        where = getattr(error, "filename", None)
        again = "a demo continues with --resume" if command == "demo" else (
            "a training run continues with --resume true"
        )  # fmt: skip
        return (
            f"no space left on device{f' (writing {where})' if where else ''}: free some space "
            f"and run the command again ({again})"
        )
    if isinstance(error, pickle.UnpicklingError):
        return (
            "a pytorch_model.bin cannot be read safely: it is damaged, or holds more than "
            "tensors, which is never unpickled (that could run code); use the model saved as "
            "model.safetensors"
        )
    if isinstance(error, OSError) and error.strerror and error.filename:
        return f"{error.filename}: {error.strerror}"
    if type(error).__name__ == "SafetensorError":
        return f"model weights cannot be read ({error})"
    text = str(error) or type(error).__name__
    return " ".join(text.split())


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's to fix (bad input, files, disk); anything else is a bug
    and keeps its traceback."""
    from safetensors import SafetensorError

    from ..training.checkpoints import CheckpointError
    from ..training.run_folder import RunFolderError
    from ..training.trainer import TrainingError
    from .parallel import WorkerDied

    return (ValueError, OSError, ImportError, TrainingError, CheckpointError, RunFolderError,
            SafetensorError, WorkerDied, pickle.UnpicklingError)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no per-file bars when saving or loading models
    try:
        with stop_on_sigterm():
            if args.command == "train":
                return run_train(args)
            if args.command == "demo":
                return run_demo_command(args)
            if args.command == "generate":
                return run_generate(args)
            if args.command == "eval":
                return run_eval(args)
    except KeyboardInterrupt as error:
        line, code = interrupted_line(args.command, error)
        print(f"error: {line}", file=sys.stderr)
        return code
    except _user_errors() as error:
        print(f"error: {describe_error(error, args.command)}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        if not is_disk_full(error):
            raise
        print(f"error: {describe_error(error, args.command)}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
