"""One command that checks and measures the library on a GPU, printing ONE JSON summary.

``python -m bench.gpu_check`` (``make gpu-check``). On CUDA (about 5-8 minutes on one GPU):

* ``exactness``: the one-pass layout's contract on the GPU with SDPA attention, as the CPU
  tests check it in float64: for random rows with ``<bkspc>``, the logits of every state equal
  a plain forward over that state's visible tokens, in float32 and in bfloat16 (each within
  its tolerance, relative to the largest logit), and the model's own layout probe accepts it.
* ``paths``: the chunked head reads the same ``V`` and ``Q`` as the dense logits; a bf16 body
  with the float32 head stays within bf16 rounding of float32 and its logits are not rounded
  to bf16.
* ``train``: one optimiser step's time, tokens/s and peak memory for MLE and SequenceMatch at
  batch 32 on SmolLM2-135M (bf16 body, float32 head and master weights, chunked logits), and
  SequenceMatch's time over MLE's. Without the weights offline, a randomly initialised model
  of SmolLM2-135M's shape stands in (the timing does not depend on the weights) and
  ``weights`` says so.
* ``generate``: ``<bkspc>``-aware :func:`~sequencematch.core.sampling.generate` against Hugging
  Face ``generate`` at batch 64 (greedy, same model), tokens/s each.
* ``multi_gpu``: with more than one GPU, a 2-process ``torchrun`` DDP run and an FSDP (bf16) run
  of the CLI on a tiny model: exit code and seconds.

Without a GPU the same script runs a tiny form (tiny random models from configs, a few
seconds) and ``gpu`` is false with a ``note`` saying no GPU was found.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from sequencematch.core.actions import Batch, apply_backspaces, collate  # noqa: E402
from sequencematch.core.forward import (  # noqa: E402
    chunked_state_logits,
    state_logits,
    verify_layout_once,
)
from sequencematch.core.objectives import (  # noqa: E402
    ObjectiveConfig,
    mle_loss,
    sequencematch_loss,
)
from sequencematch.core.sampling import generate  # noqa: E402
from sequencematch.models.backspace import add_backspace  # noqa: E402
from sequencematch.models.presets import char_tokenizer, tiny_model  # noqa: E402

ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz +-=?,."
TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-2}
"""Largest allowed |layout - plain| / max |logit|: float32 reductions in another order (SDPA
kernels, batched against single rows) differ by ~1e-6 of the scale; bf16 rounds each
operation to 2**-9 ~ 2e-3 relative, which a few layers add up to ~1e-2."""
SMOLLM2_SHAPE = dict(
    hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192,
    rope_theta=100000.0, tie_word_embeddings=True, rms_norm_eps=1e-5,
)  # fmt: skip
TINY_SHAPE = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=512, max_position_embeddings=512, tie_word_embeddings=True,
)  # fmt: skip


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    """Median seconds of ``fn`` (the device synchronised around each call)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronise(device)
        start = time.perf_counter()
        fn()
        synchronise(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def action_rows(
    rng: random.Random, count: int, prompt: int, completion: int, vocab: int, bkspc_id: int
) -> tuple[list[list[int]], list[list[int]], list[list[bool]]]:
    """``count`` rows of random tokens: a prompt, then a completion in which 10% of tokens
    are wrong and deleted again by ``<bkspc>`` (noise actions not expert), plus a trailing
    ``<bkspc>`` run now and then that reaches back into earlier tokens."""
    prompts, actions, experts = [], [], []
    for _ in range(count):
        prompts.append([rng.randrange(3, vocab) for _ in range(prompt)])
        row, expert = [], []
        for _ in range(completion):
            if rng.random() < 0.1:
                row += [rng.randrange(3, vocab), bkspc_id]
                expert += [False, True]
            row.append(rng.randrange(3, vocab))
            expert.append(True)
        if rng.random() < 0.5:
            row += [bkspc_id] * rng.randrange(1, 3)
            expert += [True] * (len(row) - len(expert))
        actions.append(row)
        experts.append(expert)
    return prompts, actions, experts


# ---------------------------------------------------------------------------- exactness


def contract_error(model: torch.nn.Module, bkspc_id: int, device: torch.device) -> float:
    """Largest |layout logits - plain forward logits| over every state of random rows with
    ``<bkspc>``, relative to the largest plain logit (the contract of tests/test_layout.py)."""
    rng = random.Random(0)
    vocab = bkspc_id  # ordinary tokens below <bkspc>
    prompts, actions, _ = action_rows(rng, 4, 5, 8, vocab, bkspc_id)
    batch = collate(prompts, actions).to(device)
    worst, scale = 0.0, 0.0
    with torch.no_grad():
        logits = state_logits(
            model, batch.sequences, batch.prompt_lengths, batch.lengths, bkspc_id
        ).float()  # [B, T, V] fmt: skip
        for row, (prompt, acts) in enumerate(zip(prompts, actions, strict=True)):
            for t in range(len(prompt) + len(acts)):
                shown = acts[: t + 1 - len(prompt)]
                visible = prompt[: t + 1] if t < len(prompt) else prompt + apply_backspaces(
                    shown, bkspc_id)  # fmt: skip
                ids = torch.tensor([visible], device=device)  # [1, t']
                plain = model(input_ids=ids).logits[0, -1].float()  # [V]
                worst = max(worst, (logits[row, t] - plain).abs().max().item())
                scale = max(scale, plain.abs().max().item())
    return worst / max(scale, 1e-12)


def exactness(device: torch.device) -> dict[str, Any]:
    """The layout contract with SDPA attention for both tiny presets in float32 and bf16."""
    results: dict[str, Any] = {}
    for preset in ("tiny_llama", "tiny_gpt2"):
        for dtype in (torch.float32, torch.bfloat16):
            torch.manual_seed(0)
            tokenizer = char_tokenizer(ALPHABET)
            model = tiny_model(preset, tokenizer, attn_implementation="sdpa")
            bkspc_id = add_backspace(model, tokenizer)
            model = model.to(device=device, dtype=dtype).eval()
            name = str(dtype).removeprefix("torch.")
            try:
                verify_layout_once(model)
                probe = True
            except ValueError:
                probe = False
            error = contract_error(model, bkspc_id, device)
            results[f"{preset}/{name}"] = {
                "relative_error": error, "tolerance": TOLERANCE[name],
                "probe_accepted": probe, "passed": probe and error <= TOLERANCE[name],
            }  # fmt: skip
    results["passed"] = all(r["passed"] for r in results.values() if isinstance(r, dict))
    return results


# ---------------------------------------------------------------------------- paths


def paths(device: torch.device) -> dict[str, Any]:
    """Chunked head against dense logits (float32), and bf16 body + float32 head against
    float32 (both on a tiny float32 Llama)."""
    torch.manual_seed(0)
    tokenizer = char_tokenizer(ALPHABET)
    model = tiny_model("tiny_llama", tokenizer, attn_implementation="sdpa")
    bkspc_id = add_backspace(model, tokenizer)
    model = model.to(device).eval()
    prompts, actions, experts = action_rows(random.Random(1), 6, 6, 12, bkspc_id, bkspc_id)
    batch = collate(prompts, actions, experts).to(device)
    rows = (batch.sequences, batch.prompt_lengths, batch.lengths, bkspc_id)
    eos = tokenizer.eos_token_id
    with torch.no_grad():
        dense = state_logits(model, *rows)  # [B, T, V]
        chunked = chunked_state_logits(model, *rows, chunk_tokens=7)
        dense_loss = mle_loss(dense, batch, bkspc_id).item()
        chunked_loss = mle_loss(chunked, batch, bkspc_id).item()
        sm_dense = sequencematch_loss(dense, batch, dense, batch, bkspc_id, eos).loss.item()
        sm_chunked = sequencematch_loss(chunked, batch, chunked, batch, bkspc_id, eos).loss.item()
        mixed = chunked_state_logits(model, *rows, body_dtype=torch.bfloat16).dense()
    valid = torch.arange(batch.sequences.shape[1], device=device)[None] < batch.lengths[:, None]
    full, mixed = dense[valid], mixed[valid]  # [N, V]
    error = (mixed - full).abs().max().item() / full.abs().max().item()
    rounded = (mixed == mixed.to(torch.bfloat16).float()).float().mean().item()
    chunk_error = max(abs(dense_loss - chunked_loss) / max(1.0, abs(dense_loss)),
                      abs(sm_dense - sm_chunked) / max(1.0, abs(sm_dense)))  # fmt: skip
    return {
        "chunked_head": {"relative_loss_difference": chunk_error, "passed": chunk_error <= 1e-5},
        "bf16_body_fp32_head": {
            "relative_error": error,
            "logits_dtype": str(mixed.dtype).removeprefix("torch."),
            "share_bf16_rounded": rounded,
            "passed": 0 < error < 2e-2 and mixed.dtype == torch.float32 and rounded < 0.1,
        },
        "passed": chunk_error <= 1e-5 and 0 < error < 2e-2 and rounded < 0.1,
    }


# ---------------------------------------------------------------------------- training


def timing_model(gpu: bool, device: torch.device) -> tuple[torch.nn.Module, int, int, str]:
    """``(model, bkspc_id, eos_id, weights)`` in float32: SmolLM2-135M when its weights are
    available offline, else a random model of its shape (GPU) or a tiny one (CPU)."""
    if gpu:
        try:
            from sequencematch.models.loading import load_model

            model, tokenizer = load_model("smollm2-135m", dtype="float32", log=lambda m: None)
            bkspc_id = add_backspace(model, tokenizer)
            return model.to(device), bkspc_id, tokenizer.eos_token_id, "smollm2-135m"
        except Exception as error:  # no weights offline: the same shape, random weights
            reason = f"random, SmolLM2-135M's shape ({type(error).__name__}: not found offline)"
    else:
        reason = "random, tiny (no GPU)"
    torch.manual_seed(0)
    shape = SMOLLM2_SHAPE if gpu else TINY_SHAPE
    model = LlamaForCausalLM(LlamaConfig(**shape, attn_implementation="sdpa"))
    vocab = shape["vocab_size"]
    model.resize_token_embeddings(vocab + 1, mean_resizing=False)  # the last row plays <bkspc>
    return model.to(device), vocab, 2, reason


def train_steps(model, bkspc_id: int, eos_id: int, device: torch.device, gpu: bool) -> dict:
    """Step time, tokens/s and peak memory of MLE and SequenceMatch at batch 32."""
    rng = random.Random(2)
    prompt, completion = (32, 96) if gpu else (8, 16)
    data = collate(*action_rows(rng, 32, prompt, completion, bkspc_id, bkspc_id)).to(device)
    sampled = collate(*action_rows(rng, 16, prompt, completion, bkspc_id, bkspc_id)).to(device)
    model.train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=gpu)
    results: dict[str, Any] = {"batch": 32, "model_rows": 16, "body": "bf16", "head": "fp32"}

    def read(batch: Batch):
        return chunked_state_logits(model, batch.sequences, batch.prompt_lengths,
                                    batch.lengths, bkspc_id, validate=False,
                                    body_dtype=torch.bfloat16)  # fmt: skip

    def step(method: str) -> None:
        data_logits = read(data)
        loss = mle_loss(data_logits, data, bkspc_id)
        if method == "sequencematch":
            terms = sequencematch_loss(data_logits, data, read(sampled), sampled, bkspc_id,
                                       eos_id, ObjectiveConfig(alpha=1.0))  # fmt: skip
            loss = 0.5 * loss + 0.5 * terms.loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)

    for method in ("mle", "sequencematch"):
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        seconds = timed(lambda m=method: step(m), device, 5 if gpu else 2, 2 if gpu else 1)
        tokens = int(data.lengths.sum()) + (
            int(sampled.lengths.sum()) if method == "sequencematch" else 0
        )
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        results[method] = {"step_s": seconds, "tokens_per_s": tokens / seconds, "peak_gib": peak}
    ratio = results["sequencematch"]["step_s"] / results["mle"]["step_s"]
    results["sequencematch_over_mle"] = ratio
    return results


def generation(model, bkspc_id: int, device: torch.device, gpu: bool) -> dict[str, Any]:
    """Greedy ``<bkspc>``-aware generation against Hugging Face ``generate`` at batch 64."""
    model = model.eval().to(torch.bfloat16 if gpu else torch.float32)
    new = 64 if gpu else 8
    prompts = torch.randint(
        3, bkspc_id, (64, 32 if gpu else 8), generator=torch.Generator().manual_seed(3)
    ).to(device)  # [64, P] fmt: skip

    def ours() -> None:
        generate(model, prompts, bkspc_id=bkspc_id, max_new_tokens=new, do_sample=False,
                 eos_token_id=None)  # fmt: skip

    def theirs() -> None:
        with torch.no_grad():
            model.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                           max_new_tokens=new, min_new_tokens=new, pad_token_id=0)  # fmt: skip

    repeats = 3 if gpu else 1
    mine, hf = timed(ours, device, repeats, 1), timed(theirs, device, repeats, 1)
    tokens = 64 * new
    return {
        "batch": 64, "new_tokens": new, "bkspc_generate_tokens_per_s": tokens / mine,
        "hf_generate_tokens_per_s": tokens / hf, "bkspc_over_hf_time": mine / hf,
    }  # fmt: skip


# ---------------------------------------------------------------------------- torchrun

TINY_RUN = [
    "--method", "sequencematch", "--steps", "4", "--mle-warmup-steps", "1", "--n-train", "32",
    "--n-valid", "4", "--n-test", "4", "--hidden-size", "64", "--num-layers", "2",
    "--num-heads", "2", "--batch-size", "8", "--model-batch-size", "4",
    "--samples-per-refresh", "8", "--replay-size", "16", "--max-new-tokens", "6",
    "--progress", "false", "--save-every", "0",
]  # fmt: skip


def multi_gpu() -> dict[str, Any]:
    """A 2-GPU torchrun DDP run and an FSDP bf16 run of the CLI (more than one GPU only)."""
    if torch.cuda.device_count() < 2:
        return {"skipped": f"{torch.cuda.device_count()} GPU(s): needs 2"}
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "sequencematch.apps.cli",
        "train",
        *TINY_RUN,
    ]
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, extra in (("ddp", []), ("fsdp_bf16", ["--fsdp", "true", "--precision", "bf16"])):
            start = time.perf_counter()
            done = subprocess.run([*launcher, *extra, "--output-dir", f"{folder}/{name}"],
                                  capture_output=True, text=True, timeout=300)  # fmt: skip
            results[name] = {"returncode": done.returncode,
                             "seconds": round(time.perf_counter() - start, 1),
                             "error": done.stderr[-500:] if done.returncode else None}  # fmt: skip
    results["passed"] = all(r["returncode"] == 0 for r in results.values())
    return results


def main() -> None:
    started = time.perf_counter()
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    summary: dict[str, Any] = {
        "gpu": gpu,
        "device": torch.cuda.get_device_name(device) if gpu else "cpu",
        "gpus": torch.cuda.device_count(),
        "torch": torch.__version__,
    }
    if not gpu:
        summary["note"] = "no GPU found: the tiny CPU form of the check ran"
    summary["exactness"] = exactness(device)
    summary["paths"] = paths(device)
    model, bkspc_id, eos_id, weights = timing_model(gpu, device)
    summary["weights"] = weights
    summary["train"] = train_steps(model, bkspc_id, eos_id, device, gpu)
    summary["generate"] = generation(model, bkspc_id, device, gpu)
    summary["multi_gpu"] = multi_gpu() if gpu else {"skipped": "no GPU"}
    summary["passed"] = summary["exactness"]["passed"] and summary["paths"]["passed"]
    summary["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
