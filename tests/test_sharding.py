"""FSDP2-sharded training under torchrun (2 CPU processes, gloo) against one process."""

from __future__ import annotations

import copy
import gc
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from conftest import make_model
from safetensors.torch import load_file
from test_memory import data_and_model_rows
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM

from sequencematch.apps.setup import prepare_run
from sequencematch.core.forward import chunked_state_logits
from sequencematch.core.objectives import mle_loss
from sequencematch.models.memory import set_gradient_checkpointing
from sequencematch.training.config import TrainConfig
from sequencematch.training.sharding import gradient_sync, release_process_groups, shard_model
from sequencematch.training.trainer import Trainer

FLAGS = [
    "--method", "sequencematch", "--steps", "4", "--mle-warmup-steps", "1",
    "--sample-temperature", "0", "--n-train", "32", "--n-valid", "4", "--n-test", "4",
    "--difficulty", "2", "4", "--hidden-size", "32", "--num-layers", "2", "--num-heads", "2",
    "--batch-size", "8", "--model-batch-size", "4", "--samples-per-refresh", "8",
    "--replay-size", "16", "--refresh-every", "2", "--max-new-tokens", "6",
    "--progress", "false", "--p-noise", "0.2", "--save-every", "0", "--lr", "3e-3",
    "--clip-grad", "1.0",
]  # fmt: skip


ADAPTER_WEIGHTS = "adapter_model.safetensors"


def weights(folder: Path) -> torch.Tensor:
    """Every weight of a saved model folder, or the adapter's (LoRA layers and ``<bkspc>``
    row) of an adapter folder (a LoRA checkpoint, a LoRA model's ``adapter/``)."""
    if (folder / ADAPTER_WEIGHTS).is_file():
        tensors = load_file(folder / ADAPTER_WEIGHTS)
        return torch.cat([tensors[name].flatten() for name in sorted(tensors)])
    model = AutoModelForCausalLM.from_pretrained(folder)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_fsdp_two_processes_match_one_and_resume_exactly(tmp_path):
    """Sharded over 2 processes, stopped after a checkpoint at step 2 and resumed, a run ends
    with the weights of an uninterrupted single-process run (and every process exits 0)."""
    _two_processes_match_one(tmp_path)


def test_fsdp_gradient_accumulation_matches_one_process(tmp_path):
    """Two micro-batches per step, gradients reduced once per step (on the last micro-batch):
    the sharded run still ends with the single-process run's weights, through a resume."""
    _two_processes_match_one(tmp_path, "--grad-accum", "2")


def test_fsdp_bf16_two_processes_match_one_within_rounding(tmp_path):
    """bf16 blocks (FSDP's mixed-precision policy, float32 master weights, head and norm)
    against one process's bf16 autocast. The two round differently inside a block (the policy
    computes the whole block in bf16, autocast only its matmuls), so agreement is up to bf16
    rounding, not 1e-5: the final weights may differ by at most 5% of the (L2) distance the
    two resumed steps moved them, and by at most 1e-3 in any weight (measured: 1.9% and
    3.4e-4; bf16's relative rounding is 2**-9 ~ 2e-3 per operation, while a wrong
    reduction, a missed micro-batch or a bf16 LM head moves weights by the size of a step)."""
    _two_processes_match_one(tmp_path, "--precision", "bf16", tolerance=1e-3, relative=0.05)


def test_fsdp_chunked_logits_and_gradient_checkpointing_match_one_process(tmp_path):
    """The chunked LM head and recomputed blocks under sharding, through a resume."""
    _two_processes_match_one(tmp_path, "--gradient-checkpointing", "true", "--logits-chunk-mb", "1")


def test_fsdp_bkspc_row_learning_rate_matches_one_process(tmp_path):
    """The ``<bkspc>`` row at its own learning rate: the process holding that row of the
    sharded embedding rescales its update, and the run ends as the single-process one."""
    _two_processes_match_one(tmp_path, "--bkspc-row-lr", "3e-2")


def test_fsdp_lora_two_processes_match_one_and_resume_exactly(tmp_path):
    """LoRA adapters and the trainable ``<bkspc>`` row sharded with the frozen base: the
    sharded run's checkpoint holds the whole adapter, its resume continues exactly, and the
    merged model and the adapter it saves match the single-process run's (no dropout: one
    process and two would draw different masks)."""
    _two_processes_match_one(tmp_path, "--lora-r", "4", "--lora-alpha", "8", "--lora-dropout", "0")


def _two_processes_match_one(
    tmp_path, *options: str, tolerance: float = 1e-5, relative: float | None = None
) -> None:
    """Train the same run in one process and, sharded, in two (stopped at step 2 and resumed
    from its checkpoint); the final weights must agree within ``tolerance`` in each weight
    and, with ``relative``, within that fraction of the L2 distance of the resumed steps."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cli = [sys.executable, "-m", "sequencematch.apps.cli", "train"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2", "-m", "sequencematch.apps.cli", "train"]  # fmt: skip

    def train(command: list[str], *extra: str) -> None:
        done = subprocess.run(command + FLAGS + list(options) + list(extra), env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]

    train(cli, "--output-dir", str(tmp_path / "one"))
    sharded = ["--fsdp", "true", "--output-dir", str(tmp_path / "two")]
    train(launcher, *sharded, "--stop-at", "2")
    assert (tmp_path / "two" / "checkpoints" / "step-00000002").is_dir()
    train(launcher, *sharded, "--resume", "true")
    one, two = weights(tmp_path / "one" / "model"), weights(tmp_path / "two" / "model")
    assert (one - two).abs().max().item() <= tolerance
    checkpoint = tmp_path / "two" / "checkpoints" / "step-00000002"
    if (checkpoint / ADAPTER_WEIGHTS).is_file():  # LoRA: the checkpoint holds the adapter
        one = weights(tmp_path / "one" / "model" / "adapter")
        two = weights(tmp_path / "two" / "model" / "adapter")
        assert (one - two).abs().max().item() <= tolerance
    start = weights(checkpoint)
    assert (one - start).abs().max().item() > 1e-4  # the resumed steps changed the weights
    if relative is not None:
        assert (one - two).norm().item() <= relative * (one - start).norm().item()


@pytest.fixture
def sharded(tmp_path) -> Iterator[list[torch.nn.Module]]:
    """A one-process gloo group for the test; the sharded models the test appends to the list
    let go of it before it is destroyed (so no gloo thread outlives the test)."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)  # fmt: skip
    models: list[torch.nn.Module] = []
    try:
        yield models
    finally:
        for model in models:
            release_process_groups(model)
        dist.destroy_process_group()


def test_gradient_sync_off_defers_the_reduction_to_the_synchronised_backward(sharded):
    """Without sync, a sharded module's backward leaves no (sharded) gradient behind; the next
    synchronised backward reduces both micro-batches' sum at once."""
    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    model = copy.deepcopy(plain)
    for layer in (model[0], model[2]):
        fully_shard(layer)
    sharded.append(fully_shard(model))
    first, second = torch.randn(3, 4), torch.randn(5, 4)  # [B, 4] micro-batches
    with gradient_sync(model, sync=False):
        model(first).sum().backward()
    assert all(p.grad is None for p in model.parameters())
    with gradient_sync(model, sync=True):
        model(second).sum().backward()
    (plain(first).sum() + plain(second).sum()).backward()
    for mine, reference in zip(model.parameters(), plain.parameters(), strict=True):
        assert torch.allclose(mine.grad.full_tensor(), reference.grad, atol=1e-6)


def test_bf16_sharding_computes_blocks_in_bf16_and_the_head_in_float32(sharded):
    """Under ``shard_model(..., torch.bfloat16)`` a block's linear layers see bf16 weights and
    inputs, the LM head float32 weights, the logits are float32 and the stored (master)
    parameters stay float32."""
    model, _, _ = make_model("tiny_llama", torch.float32)
    seen: dict[str, torch.dtype] = {}

    def record(name: str):
        def hook(module, inputs) -> None:
            seen[name] = module.weight.dtype
            seen[name + " input"] = inputs[0].dtype

        return hook

    model.model.layers[0].self_attn.q_proj.register_forward_pre_hook(record("block"))
    model.lm_head.register_forward_pre_hook(record("head"))
    sharded.append(shard_model(model.train(), torch.bfloat16))
    logits = model(torch.tensor([[1, 2, 3, 4]])).logits  # [1, 4, V]
    logits.sum().backward()
    assert seen == {"block": torch.bfloat16, "block input": torch.bfloat16,
                    "head": torch.float32, "head input": torch.float32}  # fmt: skip
    assert logits.dtype == torch.float32
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert {p.grad.dtype for p in model.parameters()} == {torch.float32}


def test_chunked_logits_and_gradient_checkpointing_run_through_the_sharded_modules(sharded):
    """The chunked head (several chunks, recomputed in the backward pass) and checkpointed
    blocks on a sharded model give the unsharded model's loss and gradients: the head reads
    the root's gathered weights after the forward and the recomputed blocks gather theirs."""
    model, tokenizer, bk = make_model("tiny_llama", torch.float32)
    reference = copy.deepcopy(model).train()
    data, _ = data_and_model_rows(bk, tokenizer.eos_token_id)
    rows = (data.sequences, data.prompt_lengths, data.lengths, bk)
    losses, gradients = [], []
    for network, shard in ((reference, False), (model.train(), True)):
        set_gradient_checkpointing(network)
        if shard:
            sharded.append(shard_model(network))
        logits = chunked_state_logits(network, *rows, chunk_tokens=3)  # [B, T, V] in chunks
        loss = mle_loss(logits, data, bk)
        loss.backward()
        losses.append(loss.item())
        gradients.append([
            p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
            for p in network.parameters()
        ])  # fmt: skip
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    for plain, mine in zip(*gradients, strict=True):
        assert torch.allclose(plain, mine, atol=1e-6)


def gloo_threads() -> int:
    """This process's threads that gloo started (its work loops and socket loop)."""
    names = [(task / "comm").read_text().strip() for task in Path("/proc/self/task").iterdir()]
    return sum(1 for name in names if "gloo" in name)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads threads from /proc")
@pytest.mark.parametrize("release", [False, True])
def test_destroying_the_group_stops_its_threads_once_the_sharded_model_lets_go(tmp_path, release):
    """A trained sharded model keeps its process group, and gloo's threads, alive past
    ``destroy_process_group`` (then they are torn down with the interpreter, which sometimes
    aborts a rank at exit); after ``release_process_groups`` destroying the group stops them."""
    before = gloo_threads()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)  # fmt: skip
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    model(torch.randn(3, 4)).sum().backward()  # [3, 4] -> [3, 1]
    if release:
        release_process_groups(model)
    dist.destroy_process_group()
    gc.collect()
    left = gloo_threads() - before
    release_process_groups(model)  # (again) letting go after the destruction stops them too
    gc.collect()
    assert (left == 0) if release else (left > 0)
    assert gloo_threads() == before


def test_fsdp_in_one_process_is_refused(tmp_path):
    config = TrainConfig(
        output_dir=str(tmp_path / "run"), steps=1, n_train=8, n_valid=2, n_test=2,
        hidden_size=32, num_layers=1, num_heads=2, batch_size=2, fsdp=True, progress=False,
    )  # fmt: skip
    inputs = prepare_run(config)
    with pytest.raises(ValueError, match="fsdp needs more than one process"):
        Trainer(config, inputs.model, inputs.tokenizer, inputs.train)
