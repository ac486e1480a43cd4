"""The text demo: MLE, MLE+<bkspc> and SequenceMatch-chi2+<bkspc> on Shakespeare, compared.

All three models have the same size, see the same training windows for the same number
of optimiser steps, and are evaluated on prompts cut from held-out works: MAUVE against
the human continuations (mean and spread over k-means seeds), repetition, diversity and
n-gram entropy of the sampled continuations, perplexity and ``<bkspc>`` usage.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ..evaluation.text_evaluation import TextEval, evaluate_text
from ..training.config import TrainConfig
from .parallel import (
    describe_schedule,
    run_jobs,
    schedule_note,
    schedule_record,
    training_job,
)
from .plotting import clear_previous_runs, pyplot
from .setup import prepare_run, task_file

METHODS = ("mle", "mle-bkspc", "sequencematch-chi2-bkspc")


@dataclass
class TextDemoSettings:
    """Sizes of the text demo; :meth:`quick` is the short version used by the tests."""

    corpus: str | None = None  # None: Shakespeare; else a text file, folder or JSONL
    steps: int = 1200
    sm_steps: int = 400
    batch_size: int = 16
    hidden_size: int = 128
    num_layers: int = 4
    vocab_size: int = 2048
    prompt_tokens: int = 32
    completion_tokens: int = 64
    n_train: int = 0  # 0: every training window
    n_valid: int = 200
    n_test: int = 300
    lr: float = 2e-3
    p_noise: float = 0.05
    noise_source: str = "uniform"
    alpha: float = 1.0
    gamma: float = 0.998
    lambda_mle: float = 0.5
    sm_ramp_steps: int = 0
    regularise_warmup: bool = True
    refresh_every: int = 25
    mauve_seeds: int = 5
    seed: int = 0

    @classmethod
    def quick(cls, corpus: str | None = None) -> TextDemoSettings:
        return cls(corpus=corpus, steps=30, sm_steps=10, batch_size=8, hidden_size=32,
                   num_layers=1, vocab_size=300, prompt_tokens=8, completion_tokens=12,
                   n_train=200, n_valid=16, n_test=24, refresh_every=5, sm_ramp_steps=3,
                   mauve_seeds=2)  # fmt: skip


def method_configs(settings: TextDemoSettings, out: Path) -> dict[str, TrainConfig]:
    """One training configuration per method, identical but for what defines the method."""
    common = dict(
        task="text", train_file=settings.corpus, model="tiny_llama",
        hidden_size=settings.hidden_size, num_layers=settings.num_layers, num_heads=4,
        vocab_size=settings.vocab_size, prompt_tokens=settings.prompt_tokens,
        completion_tokens=settings.completion_tokens, n_train=settings.n_train,
        n_valid=settings.n_valid, n_test=settings.n_test, steps=settings.steps,
        batch_size=settings.batch_size, lr=settings.lr,
        warmup_steps=min(100, settings.steps // 10), seed=settings.seed, log_every=25,
        save_every=0, noise_source=settings.noise_source,
    )  # fmt: skip
    return {
        "mle": TrainConfig(**common, method="mle", backspace=False, p_noise=0.0,
                           output_dir=str(out / "mle")),
        "mle-bkspc": TrainConfig(**common, method="mle", backspace=True,
                                 p_noise=settings.p_noise, output_dir=str(out / "mle-bkspc")),
        "sequencematch-chi2-bkspc": TrainConfig(
            **common, method="sequencematch", backspace=True, p_noise=settings.p_noise,
            divergence="chi2", alpha=settings.alpha, gamma=settings.gamma,
            lambda_mle=settings.lambda_mle, mle_warmup_steps=settings.steps - settings.sm_steps,
            sm_ramp_steps=settings.sm_ramp_steps, regularise_warmup=settings.regularise_warmup,
            refresh_every=settings.refresh_every,
            samples_per_refresh=32, replay_size=128, model_batch_size=8,
            output_dir=str(out / "sequencematch-chi2-bkspc"),
        ),
    }  # fmt: skip


def train_and_evaluate_text(
    config: TrainConfig,
    settings: TextDemoSettings,
    progress: bool = True,
    split: str = "test",
    encoder: Any = None,
) -> tuple[TextEval, float]:
    """Train one method, save it, and evaluate its samples on the held-out ``split``."""
    from ..training.trainer import Trainer

    inputs = prepare_run(config.replace(progress=progress))
    trainer = Trainer(
        config.replace(progress=progress), inputs.model, inputs.tokenizer, inputs.train,
        model_files=task_file(inputs.task_info), task_noise=inputs.task_noise,
    )  # fmt: skip
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    pairs = inputs.test_pairs if split == "test" else inputs.valid_pairs
    result = evaluate_text(
        trainer.model, trainer.tokenizer, pairs, bkspc_id=trainer.bkspc_id,
        max_new_tokens=config.sample_length(), seed=config.seed, encoder=encoder,
        mauve_seeds=tuple(range(settings.mauve_seeds)),
    )  # fmt: skip
    return result, seconds


def bootstrap_interval(
    texts: list[str], statistic: str, resamples: int = 200, seed: int = 0
) -> tuple[float, float]:
    """95% percentile bootstrap interval of one :func:`text_statistics` entry over texts."""
    from ..evaluation.text_metrics import text_statistics

    rng = random.Random(seed)
    values = sorted(
        text_statistics([rng.choice(texts) for _ in texts])[statistic] for _ in range(resamples)
    )
    return values[int(0.025 * (resamples - 1))], values[int(0.975 * (resamples - 1))]


def run_text_demo(
    out: Path,
    settings: TextDemoSettings,
    progress: bool = True,
    workers: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train and evaluate the three methods; write report.md, the plots and results.json.

    ``workers`` processes train the methods at once (default: all three; 1 = one after
    the other in this process, sharing one sentence encoder), see
    :mod:`sequencematch.apps.parallel`.
    """
    from ..evaluation.text_metrics import SentenceEncoder

    out.mkdir(parents=True, exist_ok=True)
    clear_previous_runs(out, METHODS, overwrite)
    configs = method_configs(settings, out)
    schedule = schedule_record(workers, len(configs))
    workers = schedule["workers"]
    encoder = SentenceEncoder() if workers <= 1 else None  # each worker loads its own
    results: dict[str, Any] = {"settings": asdict(settings), "methods": {}, **schedule}
    bars = progress and workers <= 1  # parallel runs report through the status line
    jobs = {
        name: training_job(train_and_evaluate_text, config, settings, bars, encoder=encoder)
        for name, config in configs.items()
    }
    print(describe_schedule(jobs, workers), flush=True)
    finished: dict[str, Any] = {}
    for name, (evaluation, seconds) in run_jobs(jobs, workers, progress):
        finished[name] = {
            "train_seconds": round(seconds, 1),
            "eval": evaluation.as_dict(),
            "diversity_interval": bootstrap_interval(evaluation.completions, "diversity"),
        }
        print(format_row(name, finished[name]), flush=True)
    results["methods"] = {name: finished[name] for name in configs}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    table = format_table(results)
    plot_path = plot_text_metrics(results, out / "mauve_and_diversity.png")
    (out / "report.md").write_text(report_text(results, table, plot_path))
    print()
    print(table)
    print(f"\nreport: {out / 'report.md'}")
    return results


def _cell(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_row(name: str, entry: dict[str, Any]) -> str:
    result = entry["eval"]
    mauve = result["mauve"]
    stats = result["statistics"]
    mauve_cell = "-" if mauve is None else f"{mauve['mean']:.3f} +- {mauve['std']:.3f}"
    cells = [
        mauve_cell, _cell(stats["diversity"]), _cell(stats["rep_2"]), _cell(stats["rep_4"]),
        _cell(stats["entropy_4"], 2), _cell(result["perplexity"], 2), _cell(result["bkspc_rate"]),
    ]  # fmt: skip
    return f"| {name} | " + " | ".join(cells) + " |"


def format_table(results: dict[str, Any]) -> str:
    """Markdown table: MAUVE (mean +- std over k-means seeds), diversity, repetition,
    4-gram entropy, perplexity of the human continuations and <bkspc> rate per method."""
    header = (
        "| method | MAUVE | diversity | rep-2 | rep-4 | entropy-4 | perplexity | <bkspc> rate |"
    )
    lines = [header, "|---" * 8 + "|"]
    lines += [format_row(name, entry) for name, entry in results["methods"].items()]
    first = next(iter(results["methods"].values()), None)
    if first is not None:
        human = first["eval"]["reference_statistics"]
        lines.append(
            f"| human continuations | - | {human['diversity']:.3f} | {human['rep_2']:.3f} | "
            f"{human['rep_4']:.3f} | {human['entropy_4']:.2f} | - | - |"
        )
    return "\n".join(lines)


def plot_text_metrics(results: dict[str, Any], path: Path) -> Path | None:
    """Two panels: MAUVE (+- std over k-means seeds) and diversity (95% bootstrap interval)."""
    plt = pyplot()
    if plt is None:
        return None
    names = list(results["methods"])
    evals = [results["methods"][name]["eval"] for name in names]
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8))
    if all(e["mauve"] is not None for e in evals):
        left.bar(names, [e["mauve"]["mean"] for e in evals],
                 yerr=[e["mauve"]["std"] for e in evals], capsize=4)  # fmt: skip
    left.set_ylabel("MAUVE (higher is better)")
    left.set_ylim(0, 1)
    diversity = [e["statistics"]["diversity"] for e in evals]
    intervals = [results["methods"][name].get("diversity_interval") for name in names]
    errors = None
    if all(interval is not None for interval in intervals):
        errors = [
            [d - low for d, (low, _) in zip(diversity, intervals, strict=True)],
            [high - d for d, (_, high) in zip(diversity, intervals, strict=True)],
        ]
    right.bar(names, diversity, yerr=errors, capsize=4)
    human = evals[0]["reference_statistics"]["diversity"] if evals else None
    if human is not None:
        right.axhline(human, color="black", linestyle="--", label="human")
        right.legend()
    right.set_ylabel("diversity (higher is better)")
    right.set_ylim(0, 1)
    for axes in (left, right):
        axes.tick_params(axis="x", labelrotation=15)
        axes.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def report_text(results: dict[str, Any], table: str, plot: Path | None) -> str:
    settings = results["settings"]
    timing = ", ".join(
        f"{name} {entry['train_seconds']:.0f} s" for name, entry in results["methods"].items()
    )
    corpus = settings["corpus"] or "the complete works of Shakespeare (split by work)"
    lines = [
        "# SequenceMatch demo: text generation",
        "",
        f"Corpus: {corpus}; a byte-level BPE of {settings['vocab_size']} tokens trained on "
        f"the training works. Windows of {settings['prompt_tokens']} prompt + "
        f"{settings['completion_tokens']} completion tokens. Every method trains the same "
        f"model ({settings['num_layers']} layers, width {settings['hidden_size']}) for "
        f"{settings['steps']} steps of {settings['batch_size']} windows (seed "
        f"{settings['seed']}); SequenceMatch spends its last {settings['sm_steps']} steps on "
        f"SequenceMatch-chi2 (alpha {settings['alpha']}, gamma {settings['gamma']}, "
        f"lambda_mle {settings['lambda_mle']}"
        + (
            ", its warm-up trained on MLE plus the chi2 regulariser on data transitions"
            if settings.get("regularise_warmup")
            else ""
        )
        + f"). Noise-augmented demonstrations: p_noise "
        f"{settings['p_noise']}, source `{settings['noise_source']}`.",
        "",
        f"Evaluation on {settings['n_test']} prompts from held-out works, one sampled "
        "continuation each (temperature 1). MAUVE compares the sampled continuations with "
        "the human ones in all-MiniLM-L6-v2 feature space (mean +- std over "
        f"{settings['mauve_seeds']} k-means seeds); diversity = prod over n=2..4 of "
        "(1 - rep-n) on whitespace words; perplexity is of the human continuations.",
        "",
        table,
        "",
        f"Training time: {timing}{schedule_note(results)}.",
    ]
    if plot is not None:
        lines += ["", f"![MAUVE and diversity]({plot.name})"]
    lines += ["", "Models: " + ", ".join(f"`{name}/model`" for name in results["methods"]), ""]
    return "\n".join(lines)


def with_overrides(settings: TextDemoSettings, **changes: Any) -> TextDemoSettings:
    """``settings`` with the given fields replaced (``None`` values are ignored)."""
    return replace(settings, **{k: v for k, v in changes.items() if v is not None})
