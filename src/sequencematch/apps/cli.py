"""Command-line interface: thin argument parsing over the library."""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Spinning OpenMP threads stall small ops 10-50x when a vCPU is descheduled; sleep instead.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ..training.config import add_config_arguments, config_from_arguments  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    demo.add_argument("--seed", type=int, default=None, help="first seed (data, init, noise)")
    demo.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3)")
    demo.add_argument("--warmup-steps", type=int, default=None,
                      help="steps of each seed's shared MLE warm-up")  # fmt: skip
    demo.add_argument("--steps", type=int, default=None,
                      help="steps of every method after the warm-up")  # fmt: skip
    demo.add_argument("--alpha", type=float, default=None, help="chi2 regulariser scale")
    demo.add_argument("--lambda-mle", type=float, default=None, help="MLE weight (chi2 methods)")
    demo.add_argument("--p-noise", type=float, default=None, help="training noise level")
    demo.add_argument("--noise-source", default=None, help="uniform, unigram or task")
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
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    train.add_argument("--config", default=None, help="YAML file of options")
    add_config_arguments(train)

    generate = commands.add_parser("generate", help="generate from a trained model folder")
    generate.add_argument("--model", required=True, help="model folder (e.g. RUN/model)")
    generate.add_argument("--prompt", required=True, help="prompt text (a question)")
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
    evaluate.add_argument("--task", default=None,
                          help="default: the task the model was trained on")  # fmt: skip
    evaluate.add_argument(
        "--data", default=None,
        help='arithmetic: JSONL of {"question", "answer"} (default: the generated test '
        'split); jsonl: JSONL of {"prompt", "completion"}; text: such pairs, or a text '
        "file/folder to cut into windows (default: the held-out split of the model's corpus)",
    )  # fmt: skip
    evaluate.add_argument("--n", type=int, default=None,
                          help="pairs to evaluate (default: all; text: 200 windows)")  # fmt: skip
    evaluate.add_argument("--temperature", type=float, default=1.0, help="text: sampling")
    evaluate.add_argument("--no-mauve", action="store_true", help="text: skip MAUVE")
    evaluate.add_argument("--noise", type=float, default=0.0, help="forced-noise probability")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the forced noise")
    evaluate.add_argument("--batch-size", type=int, default=64, help="questions per batch")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _flag(text: str) -> bool:
    return text.lower() in ("1", "true", "yes", "on")


DEMOS = {"arithmetic": "arithmetic_demo:DemoSettings", "text": "text_demo:TextDemoSettings"}
"""Each demo's settings: ``module:class`` in this package."""
DEMO_OPTIONS = ("seed", "seeds", "warmup_steps", "steps", "alpha", "lambda_mle", "p_noise",
                "noise_source", "difficulty", "hidden_size", "num_layers", "n_train", "n_test",
                "corpus")  # fmt: skip


def run_demo_command(args: argparse.Namespace) -> int:
    import importlib
    from pathlib import Path

    from .comparison import run_comparison, with_overrides

    module, _, name = DEMOS[args.task].partition(":")
    settings_class = getattr(importlib.import_module(f"{__package__}.{module}"), name)
    settings = settings_class.quick() if args.quick else settings_class()
    settings = with_overrides(settings, **{n: getattr(args, n) for n in DEMO_OPTIONS})
    run_comparison(
        Path(args.out or settings.default_out), settings, progress=args.progress,
        workers=args.workers, resume=args.resume,
    )  # fmt: skip
    return 0


def run_generate(args: argparse.Namespace) -> int:
    import json

    import torch

    from ..core.examples import encode_prompt
    from ..core.sampling import generate
    from ..core.traces import format_trace, strip_eos
    from .setup import load_trained

    trained = load_trained(args.model)
    tokenizer = trained.tokenizer
    prompt = encode_prompt(tokenizer, trained.prompt_text(args.prompt))
    output = generate(
        trained.model, [prompt], bkspc_id=trained.bkspc_id,
        max_new_tokens=args.max_new_tokens or trained.sample_length, do_sample=args.sample,
        temperature=args.temperature, eos_token_id=tokenizer.eos_token_id,
        noise_prob=args.noise, generator=torch.Generator().manual_seed(args.seed),
        noise_token_ids=trained.task.forced_noise_ids(tokenizer) if args.noise else None,
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

    from ..tasks.base import EvalOptions
    from ..tasks.registry import task_from_info
    from .setup import load_trained

    trained = load_trained(args.model)
    task = trained.task
    if args.task is not None and args.task != trained.task_info.get("task"):
        task = task_from_info({**trained.task_info, "task": args.task})
    pairs = task.held_out(trained.tokenizer, args.data, n=args.n, seed=args.seed)
    options = EvalOptions(
        seed=args.seed, noise_prob=args.noise, temperature=args.temperature,
        batch_size=args.batch_size, with_mauve=not args.no_mauve,
    )  # fmt: skip
    result = task.evaluate(
        trained.model, trained.tokenizer, pairs, bkspc_id=trained.bkspc_id,
        max_new_tokens=trained.sample_length, options=options,
    )  # fmt: skip
    print(json.dumps(task.record(result)) if args.json else task.summary(result))
    return 0


def run_train(args: argparse.Namespace) -> int:
    from ..training.distributed import close_world, init_world
    from ..training.trainer import Trainer, resolve_device
    from .setup import prepare_run, task_file

    config = config_from_arguments(args)
    world = init_world(str(resolve_device(config.device)))
    try:
        inputs = prepare_run(config)
        trainer = Trainer(
            config, inputs.model, inputs.tokenizer, inputs.train, world=world,
            evaluate=inputs.evaluate, model_files=task_file(inputs.task_info),
            task_noise=inputs.task_noise,
        )  # fmt: skip
        last = trainer.train()
        if world.is_main:
            print({k: v for k, v in last.items() if not isinstance(v, list)})
            print(f"run folder: {config.output_dir}")
    finally:
        close_world(world)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    from ..training.trainer import TrainingError

    hf_logging.disable_progress_bar()  # no per-file bars when saving or loading models
    try:
        if args.command == "train":
            return run_train(args)
        if args.command == "demo":
            return run_demo_command(args)
        if args.command == "generate":
            return run_generate(args)
        if args.command == "eval":
            return run_eval(args)
    except (ValueError, OSError, ImportError, TrainingError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
