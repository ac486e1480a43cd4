"""Memory: logits read a chunk of states at a time (same losses and gradients as the full
logits tensor, which never exists), and gradient checkpointing of the blocks."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model, sm_loss
from test_lora import lora_model
from torch.utils._python_dispatch import TorchDispatchMode

from sequencematch.core.actions import Batch, collate
from sequencematch.core.causal_lm import causal_lm
from sequencematch.core.chunked_logits import ChunkedLogits
from sequencematch.core.forward import chunked_state_logits, state_logits, verify_layout_once
from sequencematch.core.objectives import mle_loss
from sequencematch.core.sampling import generate
from sequencematch.models.backspace import add_backspace
from sequencematch.models.memory import gradient_checkpointing_enabled, set_gradient_checkpointing
from sequencematch.models.presets import char_tokenizer, tiny_model

TOLERANCE = 1e-10


def data_and_model_rows(bk: int, eos: int) -> tuple[Batch, Batch]:
    """Rows with prompts of several lengths, <bkspc> (down to the prompt), excluded noise
    actions, <eos> and length-cut rows, and padding."""
    data = collate(
        [[5, 6], [7], [8, 9, 10], [11]],
        [[12, bk, 13, eos], [14, 15, bk, bk, 16, 17], [18, eos], [19, 20, bk, 21, 22, bk]],
        [[False, True, True, True], [True] * 6, [True, True], [True, False, True] + [True] * 3],
    )
    model = collate([[5], [6, 7], [9]], [[9, 10, bk, 11], [12, eos], [13, bk, 14, 15, 16]])
    return data, model


def losses_and_gradients(network, read, data, model_rows, bk, eos, divergence="chi2"):
    """MLE + SequenceMatch loss of one step (logits from ``read``), and every gradient."""
    network.zero_grad()
    data_logits, model_logits = read(data), read(model_rows)
    mle = mle_loss(data_logits, data, bk, 1.0)
    terms = sm_loss(data_logits, data, model_logits, model_rows, bk, eos,
                    divergence=divergence, gamma=0.9, alpha=0.5)  # fmt: skip
    (0.5 * mle + 0.5 * terms.loss).backward()
    gradients = {
        name: parameter.grad.clone()
        for name, parameter in network.named_parameters()
        if parameter.grad is not None
    }
    return [mle.item(), *terms.as_floats().values()], gradients


def data_rows(batch: Batch, rows: slice) -> Batch:
    return Batch(*(tensor[rows] for tensor in batch.__dict__.values()))


def dense(network, bk):
    return lambda b: state_logits(network, b.sequences, b.prompt_lengths, b.lengths, bk)


def chunked(network, bk, **kwargs):
    return lambda b: chunked_state_logits(
        network, b.sequences, b.prompt_lengths, b.lengths, bk, **kwargs
    )


def assert_same(reference, other):
    values, gradients = reference
    other_values, other_gradients = other
    assert len(gradients) > 0 and set(other_gradients) == set(gradients)
    for a, b in zip(values, other_values, strict=True):
        assert abs(a - b) <= TOLERANCE * (1 + abs(a)), (a, b)
    for name, gradient in gradients.items():
        assert gradient.abs().max() > 0, name
        assert (gradient - other_gradients[name]).abs().max() <= TOLERANCE, name


@pytest.mark.parametrize("preset", ["tiny_gpt2", "tiny_llama"])
@pytest.mark.parametrize(("chunk_tokens", "recompute"), [(None, False), (3, True), (7, False)])
@pytest.mark.parametrize("divergence", ["chi2", "kl"])
def test_chunked_logits_give_the_losses_and_gradients_of_full_logits(
    preset, chunk_tokens, recompute, divergence
):
    network, tokenizer, bk = make_model(preset)
    network.train()  # the tiny presets have no dropout
    data, model_rows = data_and_model_rows(bk, tokenizer.eos_token_id)
    args = (data, model_rows, bk, tokenizer.eos_token_id, divergence)
    reference = losses_and_gradients(network, dense(network, bk), *args)
    read = chunked(network, bk, chunk_tokens=chunk_tokens, recompute=recompute)
    assert_same(reference, losses_and_gradients(network, read, *args))


def test_chunked_logits_through_lora_match_full_logits():
    network, tokenizer, bk = lora_model("tiny_llama")
    network.train()
    data, model_rows = data_and_model_rows(bk, tokenizer.eos_token_id)
    args = (data, model_rows, bk, tokenizer.eos_token_id)
    reference = losses_and_gradients(network, dense(network, bk), *args)
    assert any("trainable_tokens_delta" in name for name in reference[1])
    assert any("lora_A" in name for name in reference[1])
    read = chunked(network, bk, chunk_tokens=4)
    assert_same(reference, losses_and_gradients(network, read, *args))


def test_dense_view_equals_state_logits():
    network, tokenizer, bk = make_model("tiny_llama")
    data, _ = data_and_model_rows(bk, tokenizer.eos_token_id)
    with torch.no_grad():
        expected = state_logits(network, data.sequences, data.prompt_lengths, data.lengths, bk)
        logits = chunked_state_logits(
            network, data.sequences, data.prompt_lengths, data.lengths, bk
        )
        assert logits.shape == expected.shape and logits.dtype == expected.dtype
        assert logits.dim() == 3 and logits.device == expected.device
        assert (logits.dense() - expected).abs().max() <= TOLERANCE
        assert (logits[1:3].dense() - expected[1:3]).abs().max() <= TOLERANCE
        assert logits.float().dtype == torch.float32


class LargestLogits(TorchDispatchMode):
    """Records the most logits rows (elements / V) any op output holds, weights excluded."""

    def __init__(self, vocab: int, hidden: int):
        super().__init__()
        self.vocab, self.hidden, self.rows = vocab, hidden, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if (
                isinstance(tensor, torch.Tensor)
                and tensor.dim() >= 1
                and tensor.shape[-1] == self.vocab
                and tensor.numel() != self.vocab * self.hidden  # the head's weight and gradient
            ):
                self.rows = max(self.rows, tensor.numel() // self.vocab)
        return out


def big_vocabulary_model():
    """A tiny Llama whose 3000-row vocabulary makes the logits its largest activations."""
    torch.manual_seed(0)
    tokenizer = char_tokenizer("0123456789abcdef -+=?,")
    network = tiny_model("tiny_llama", tokenizer, vocab_size=3000).double()
    bk = add_backspace(network, tokenizer)
    return network.train(), tokenizer, bk


@pytest.mark.parametrize("chunk_tokens", [4, 16])
def test_no_step_tensor_holds_the_logits_of_more_than_one_chunk(chunk_tokens):
    network, tokenizer, bk = big_vocabulary_model()
    data, model_rows = data_and_model_rows(bk, tokenizer.eos_token_id)
    vocab, hidden = network.config.vocab_size, network.config.hidden_size
    elements = data.sequences.numel()

    spy = LargestLogits(vocab, hidden)
    with spy:
        losses_and_gradients(network, dense(network, bk), data, model_rows, bk,
                             tokenizer.eos_token_id)  # fmt: skip
    assert spy.rows >= elements  # the full logits of the data batch (the spy sees them)

    spy = LargestLogits(vocab, hidden)
    with spy:
        read = chunked(network, bk, chunk_tokens=chunk_tokens)
        losses_and_gradients(network, read, data, model_rows, bk, tokenizer.eos_token_id)
    assert 0 < spy.rows <= chunk_tokens  # forward, backward and recomputation


def test_the_head_runs_once_for_the_mle_and_sequencematch_terms():
    network, tokenizer, bk = make_model("tiny_gpt2")
    data, _ = data_and_model_rows(bk, tokenizer.eos_token_id)
    calls = []
    handle = (
        causal_lm(network)
        .get_output_embeddings()
        .register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    )
    try:
        read = chunked(network, bk, chunk_tokens=None, recompute=False)
        logits = read(data)
        first, rest = logits[:2], logits[2:]
        calls.clear()  # the vocabulary probe
        head_rows, tail_rows = data_rows(data, slice(0, 2)), data_rows(data, slice(2, None))
        mle = mle_loss(logits[:2], head_rows, bk, 1.0)
        terms = sm_loss(logits[:2], head_rows, rest, tail_rows, bk,
                        tokenizer.eos_token_id)  # fmt: skip
        (mle + terms.loss).backward()
    finally:
        handle.remove()
    assert logits[:2] is first
    states = (data.lengths - data.prompt_lengths + 1).tolist()  # last prompt element + actions
    assert calls == [sum(states[:2]), sum(states[2:])]


def test_generate_prefill_reads_logits_at_the_last_prompt_positions_only():
    network, _, bk = make_model("tiny_llama")
    verify_layout_once(network)  # its probe forwards are not the prefill
    shapes = []
    handle = network.get_output_embeddings().register_forward_hook(
        lambda module, inputs, output: shapes.append(tuple(output.shape[:2]))
    )
    try:
        generate(network, [[5, 6, 7], [8], [9, 10, 11, 12, 13], [4, 4, 4]], bkspc_id=bk,
                 max_new_tokens=2, max_steps=2, eos_token_id=[])  # fmt: skip
    finally:
        handle.remove()
    assert shapes[0] == (4, 3)  # three distinct prompt lengths, not the padded width 5
    assert shapes[1:] == [(4, 1)]


def test_chunked_logits_refuse_bad_arguments():
    network, tokenizer, bk = make_model("tiny_llama")
    data, _ = data_and_model_rows(bk, tokenizer.eos_token_id)
    args = (network, data.sequences, data.prompt_lengths, data.lengths, bk)
    with pytest.raises(ValueError, match="chunk_tokens"):
        chunked_state_logits(*args, chunk_tokens=0)
    logits = chunked_state_logits(*args)
    with pytest.raises(ValueError, match="index rows only"):
        logits[:, 1:]
    with pytest.raises(ValueError, match="index rows only"):
        logits[torch.tensor([0, 1])]
    with pytest.raises(ValueError, match="first two dimensions"):
        mle_loss(logits[:2], data, bk)
    with pytest.raises(ValueError, match="hidden must be"):
        ChunkedLogits(torch.zeros(2, 3), causal_lm(network).get_output_embeddings())


# --------------------------------------------------------------------------------------
# Gradient checkpointing of the blocks
# --------------------------------------------------------------------------------------


def saved_elements(step) -> tuple[object, int]:
    """``step()``'s result and the elements of the tensors it saved for the backward pass."""
    total = [0]

    def pack(tensor):
        total[0] += tensor.numel()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = step()
    return result, total[0]


@pytest.mark.parametrize("preset", ["tiny_gpt2", "tiny_llama", "lora"])
def test_gradient_checkpointing_gives_the_same_gradients_and_saves_less(preset):
    if preset == "lora":
        network, tokenizer, bk = lora_model("tiny_llama")
    else:
        network, tokenizer, bk = make_model(preset)
    network.train()
    data, model_rows = data_and_model_rows(bk, tokenizer.eos_token_id)
    args = (data, model_rows, bk, tokenizer.eos_token_id)
    read = chunked(network, bk, chunk_tokens=5)
    losses_and_gradients(network, read, *args)  # the first call also runs the model checks
    reference, plain = saved_elements(lambda: losses_and_gradients(network, read, *args))

    set_gradient_checkpointing(network)
    assert gradient_checkpointing_enabled(network)
    result, checkpointed = saved_elements(lambda: losses_and_gradients(network, read, *args))
    assert_same(reference, result)
    assert checkpointed < plain / 3  # blocks keep their input only

    set_gradient_checkpointing(network, False)
    assert not gradient_checkpointing_enabled(network)
    _, again = saved_elements(lambda: losses_and_gradients(network, read, *args))
    assert again == plain


def test_gradient_checkpointing_refuses_bad_arguments():
    network, _, _ = make_model("tiny_llama")
    with pytest.raises(ValueError, match="every_n_layers"):
        set_gradient_checkpointing(network, every_n_layers=0)
