"""Why sampled answers of fine-tuned SmolLM2 models stop finishing: the policy after an answer.

``measure``: for each method of one seed of a finished arithmetic demo, one forward per test
question with the reference answer: the probability of ``<eos>`` right after it, and the
entropy of the first answer token. ``continue``: short MLE continuations from a warm-up model
folder (plain; ``<bkspc>`` added without noise; with noise 0.15; with noise and the
``<bkspc>`` row started orthogonal to the mean embedding), each measured the same way on
validation questions.

    python -m experiments.policy_flattening measure runs/demo-smol --seed 0
    python -m experiments.policy_flattening continue runs/demo-smol/seed-0/warmup/model \\
        --out runs/flattening --arms plain bkspc-p0 bkspc-p15 bkspc-p15-orthogonal
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

import sequencematch.models.backspace as backspace  # noqa: E402
from sequencematch.apps.demos.methods import COMPARED_METHODS  # noqa: E402
from sequencematch.apps.setup import load_trained, prepare_run, task_file  # noqa: E402
from sequencematch.core.examples import encode_prompt  # noqa: E402
from sequencematch.tasks.base import Pair  # noqa: E402
from sequencematch.training.config import TrainConfig  # noqa: E402
from sequencematch.training.trainer import Trainer  # noqa: E402

CONTINUATION = dict(
    task="arithmetic", n_train=2000, n_valid=40, n_test=10, batch_size=16, precision="bf16",
    log_every=1, save_every=0, eval_every=0, progress=False, overwrite=True, weight_decay=0.01,
    clip_grad=1.0, method="mle", steps=10, lr=5e-5, warmup_steps=0, seed=0, noise_source="task",
    max_noise_run=1, noise_in_loss=False, difficulty=[2.0, 8.0], max_new_tokens=16,
)  # fmt: skip
ARMS = {
    "plain": dict(backspace=False, p_noise=0.0),
    "bkspc-p0": dict(backspace=True, p_noise=0.0),
    "bkspc-p15": dict(backspace=True, p_noise=0.15),
    "bkspc-p15-orthogonal": dict(backspace=True, p_noise=0.15),
}
MEAN_ROW = backspace._set_mean_row


@torch.no_grad()
def _orthogonal_row(model: Any, row: int, old_rows: int) -> None:
    """The mean row, then replaced by a direction orthogonal to the mean embedding (median
    row norm): the alternative start of the ``<bkspc>`` row."""
    MEAN_ROW(model, row, old_rows)
    weight = model.get_input_embeddings().weight
    mean = weight[:old_rows].float().mean(0)
    direction = torch.randn(weight.shape[1], generator=torch.Generator().manual_seed(0))
    direction -= (direction @ mean) / (mean @ mean) * mean
    scale = weight[:old_rows].float().norm(dim=1).median()
    weight[row] = (direction / direction.norm() * scale).to(weight.dtype)


@torch.no_grad()
def after_answer(model: Any, tokenizer: Any, pairs: Sequence[Pair]) -> dict[str, float]:
    """Mean P(<eos>) after the reference answer, its minimum, and the mean entropy (nats) of
    the first answer token."""
    model.eval()
    eos, entropy = [], []
    for pair in pairs:
        prompt = list(encode_prompt(tokenizer, pair.prompt))
        answer = tokenizer(pair.completion, add_special_tokens=False)["input_ids"]
        logits = model(torch.tensor([prompt + answer])).logits[0].float()
        eos.append(logits[-1].softmax(-1)[tokenizer.eos_token_id].item())
        first = logits[len(prompt) - 1].log_softmax(-1)
        entropy.append(-(first.exp() * first).sum().item())
    return {"p_eos": sum(eos) / len(eos), "p_eos_min": min(eos),
            "first_token_entropy": sum(entropy) / len(entropy)}  # fmt: skip


def measure(demo: str, seed: int, n: int) -> None:
    for method in COMPARED_METHODS:
        trained = load_trained(f"{demo}/seed-{seed}/{method}/model")
        pairs = trained.prompts_as_trained(trained.task.held_out(trained.tokenizer, None))[:n]
        found = after_answer(trained.model, trained.tokenizer, pairs)
        print(method, {k: round(v, 3) for k, v in found.items()}, flush=True)


def continue_from(start: str, out: str, arms: Sequence[str]) -> None:
    for arm in arms:
        backspace._set_mean_row = _orthogonal_row if arm.endswith("orthogonal") else MEAN_ROW
        config = TrainConfig(**CONTINUATION, **ARMS[arm], model=start, output_dir=f"{out}/{arm}")
        inputs = prepare_run(config)
        trainer = Trainer(
            config, inputs.model, inputs.tokenizer, inputs.train,
            model_files=task_file(inputs.task_info), task_noise=inputs.task_noise,
        )  # fmt: skip
        trainer.train()
        found = after_answer(trainer.model, trainer.tokenizer, inputs.valid)
        print(arm, {k: round(v, 3) for k, v in found.items()}, flush=True)
    backspace._set_mean_row = MEAN_ROW


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    first = commands.add_parser("measure")
    first.add_argument("demo")
    first.add_argument("--seed", type=int, default=0)
    first.add_argument("--n", type=int, default=60, help="test questions")
    second = commands.add_parser("continue")
    second.add_argument("start", help="a warm-up model folder")
    second.add_argument("--out", required=True)
    second.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    args = parser.parse_args()
    if args.command == "measure":
        measure(args.demo, args.seed, args.n)
    else:
        continue_from(args.start, args.out, args.arms)


if __name__ == "__main__":
    main()
