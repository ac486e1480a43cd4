"""Fully sharded data parallel (PyTorch's FSDP2, ``fully_shard``) under ``torchrun``.

Each transformer block is its own shard group (its parameters are gathered just before the
block runs and freed after), then the root holds what is left (embeddings, final norm, head;
tied input/output embeddings stay one parameter). Gradients are reduce-scattered and averaged
over the processes, as DDP averages them, so a sharded step computes the same update as an
unsharded one. Checkpoints hold full (unsharded) tensors, gathered to the CPU, so a sharded
run's files load with ``from_pretrained`` like any other.

With bf16 the blocks compute in bf16 under FSDP's mixed-precision policy while the root unit
(embeddings, final norm, LM head) and the master weights stay float32 (:func:`block_policy`).
The root's weights stay gathered from the forward pass to the end of the backward pass, so
the chunked LM head (:class:`~sequencematch.core.chunked_logits.ChunkedLogits`), which runs
after the forward and again in the backward pass, reads them gathered.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.distributed import ProcessGroup
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from ..core.causal_lm import causal_lm

FULL_ON_CPU = StateDictOptions(full_state_dict=True, cpu_offload=True)


def block_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's transformer blocks: modules whose class the model names in
    ``_no_split_modules`` (``LlamaDecoderLayer``, ``GPT2Block``, ...), peft wrappers looked
    through."""
    names = set(getattr(causal_lm(model), "_no_split_modules", None) or [])
    blocks = [module for module in model.modules() if type(module).__name__ in names]
    if not blocks:
        raise ValueError(
            f"fsdp: found no transformer blocks in {type(causal_lm(model)).__name__} (its "
            "_no_split_modules names none of its modules); train it with fsdp false"
        )
    return blocks


def block_policy(body_dtype: torch.dtype | None) -> MixedPrecisionPolicy:
    """The blocks' mixed precision: parameters gathered and computed in ``body_dtype``
    (``None``: as stored, float32), gradients reduced in float32 and outputs handed on in
    float32 (the residual stream between blocks, the final norm and the LM head stay float32;
    a bfloat16 head would round logits of 16 to steps of 0.125, as large as the rewards
    SequenceMatch reads off them)."""
    if body_dtype is None:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(
        param_dtype=body_dtype, reduce_dtype=torch.float32, output_dtype=torch.float32
    )


def shard_model(model: torch.nn.Module, body_dtype: torch.dtype | None = None) -> torch.nn.Module:
    """Shard ``model`` in place over the default process group: each block (in ``body_dtype``,
    :func:`block_policy`), then the root (embeddings, final norm, LM head) in float32.

    The master weights stay float32 (the optimiser steps them); only the gathered copies a
    block computes with are ``body_dtype``. The module keeps its class (FSDP2 adds a mix-in),
    so callers use it as before; build the optimiser after this call (the parameters become
    sharded ``DTensor`` s)."""
    policy = block_policy(body_dtype)
    for block in block_modules(model):
        fully_shard(block, mp_policy=policy)
    fully_shard(model)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def release_process_groups(model: torch.nn.Module) -> None:
    """Drop the sharded ``model``'s references to its process groups (call when it is done
    with, before ``destroy_process_group``; the model cannot run collectives afterwards).

    FSDP2 keeps the group in its mesh information and its device mesh, and that state
    outlives the model (the garbage collector does not free it even after the model is
    deleted), so ``destroy_process_group`` leaves the gloo group, and its worker and socket
    threads, alive until the interpreter shuts down; their teardown then races the
    interpreter's, and a process sometimes aborts at exit ("terminate called without an
    active exception", or a segmentation fault). Without these references, destroying the
    group joins its threads while the interpreter is still whole."""
    for module in model.modules():
        if not isinstance(module, FSDPModule):
            continue
        # FSDP2's internals (torch 2.4 on); anything missing has nothing to let go of
        group = getattr(module._get_fsdp_state(), "_fsdp_param_group", None)
        if group is None:
            continue
        for info in (getattr(group, "mesh_info", None),
                     getattr(group, "post_forward_mesh_info", None)):  # fmt: skip
            if info is None:
                continue
            for name, value in list(vars(info).items()):
                if isinstance(value, ProcessGroup):
                    setattr(info, name, None)
            registry = getattr(getattr(info, "mesh", None), "_pg_registry", None)
            if isinstance(registry, dict):
                registry.clear()


@contextlib.contextmanager
def gradient_sync(network: torch.nn.Module, sync: bool) -> Iterator[None]:
    """Run a micro-batch's backward with (``sync``) or without the gradient reduction over
    processes. Without it, DDP (``no_sync``) keeps the local sum in ``.grad`` and FSDP2
    (``set_requires_gradient_sync(False)``) keeps the unsharded local sum, and the backward of
    the next synchronised micro-batch reduces the whole sum once: gradient accumulation with
    one reduction per optimiser step instead of one per micro-batch."""
    if sync:
        yield
    elif isinstance(network, DistributedDataParallel):
        with network.no_sync():
            yield
    elif isinstance(network, FSDPModule):
        network.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            network.set_requires_gradient_sync(True)
    else:
        yield


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, unsharded, on the CPU (a collective: all ranks call it)."""
    return get_model_state_dict(model, options=FULL_ON_CPU)


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimiser state keyed by parameter name, unsharded, on the CPU (collective)."""
    return get_optimizer_state_dict(model, optimizer, options=FULL_ON_CPU)


def load_full_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Load a :func:`full_optimizer_state` (read by every rank) into the sharded optimiser."""
    set_optimizer_state_dict(
        model, optimizer, state, options=StateDictOptions(full_state_dict=True)
    )


def gradient_norm(model: torch.nn.Module, clip: float, sharded: bool) -> float:
    """The global L2 norm of the model's gradients, clipped to ``clip`` when ``clip > 0``
    (``sharded``: a collective, all ranks call it)."""
    parameters = [p for p in model.parameters() if p.grad is not None]
    if sharded:
        norm = torch.nn.utils.clip_grad_norm_(parameters, clip if clip > 0 else float("inf"))
        return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)
    if clip > 0:
        return float(torch.nn.utils.clip_grad_norm_(parameters, clip))
    norms = [torch.linalg.vector_norm(p.grad.detach().float()) for p in parameters]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0
