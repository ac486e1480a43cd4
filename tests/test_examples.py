"""Examples from data: final completions end in <eos>, cut ones do not, and cut rows bootstrap."""

from __future__ import annotations

import pytest
import torch
from conftest import sm_loss

from sequencematch.core.actions import collate
from sequencematch.core.examples import encode_example, longest_completion, make_example
from sequencematch.core.transitions import transitions
from sequencematch.models.presets import char_tokenizer

TOKENIZER = char_tokenizer("abcdef")
BOS, EOS = TOKENIZER.bos_token_id, TOKENIZER.eos_token_id


def ids(text: str) -> list[int]:
    return TOKENIZER(text, add_special_tokens=False).input_ids


def test_a_final_completion_ends_in_eos_and_a_cut_one_does_not():
    final = encode_example(TOKENIZER, "ab", "cde")
    assert final.prompt == [BOS, *ids("ab")] and final.completion == [*ids("cde"), EOS]
    window = encode_example(TOKENIZER, "ab", "cde", final=False)
    assert window.completion == ids("cde")


@pytest.mark.parametrize(
    ("final", "cap", "expected"),
    [
        (True, 4, "cde+"),  # three tokens and <eos> fit in four
        (True, 3, "cde"),  # <eos> does not fit: the row is cut, so it is no ending
        (True, 2, "cd"),
        (False, 2, "cd"),
        (False, 9, "cde"),
    ],
)
def test_completions_are_cut_at_the_maximum_length(final, cap, expected):
    example = make_example(TOKENIZER, ids("ab"), ids("cde"), final=final,
                           max_completion_tokens=cap)  # fmt: skip
    want = ids(expected.rstrip("+")) + ([EOS] if expected.endswith("+") else [])
    assert example.completion == want
    assert len(example.completion) <= cap


def test_bad_lengths_and_empty_data_are_refused():
    with pytest.raises(ValueError, match="max_completion_tokens must be at least 1"):
        make_example(TOKENIZER, ids("a"), ids("b"), max_completion_tokens=0)
    with pytest.raises(ValueError, match="no examples"):
        longest_completion([])
    examples = [encode_example(TOKENIZER, "a", "b" * n) for n in (1, 5, 3)]
    assert longest_completion(examples) == 6  # five tokens and <eos>


def test_a_row_without_eos_bootstraps_from_the_value_of_its_last_state():
    """docs/method.md, "Terminal states": a row cut by the maximum length is not terminal.
    Its last transition
    has V(s') = logsumexp of the last element's logits; a row that ends in <eos> has
    V(s') = 0 there. The objective treats data rows and model rows by this one rule."""
    torch.manual_seed(0)
    cut = make_example(TOKENIZER, ids("ab"), ids("cde"), final=False)
    ended = make_example(TOKENIZER, ids("ab"), ids("cde"), final=True)
    batch = collate([cut.prompt, ended.prompt], [cut.completion, ended.completion], pad_id=0)
    vocab = len(TOKENIZER)
    logits = torch.randn(2, batch.sequences.shape[1], vocab, dtype=torch.float64)
    # V = 0 after <eos> (a learned terminal reads it at the <eos> element instead)
    trans = transitions(logits, batch, bkspc_id=None, eos_id=EOS, learned_terminal=False)

    last_cut = int(batch.lengths[0]) - 1
    assert not trans.done[0].any()
    assert trans.v_next[0, last_cut] == pytest.approx(
        torch.logsumexp(logits[0, last_cut], -1).item()
    )
    last_ended = int(batch.lengths[1]) - 1
    assert trans.done[1, last_ended] and trans.v_next[1, last_ended] == 0.0

    gamma = 0.9
    reward = trans.reward(gamma)
    expected = logits[0, last_cut - 1, batch.sequences[0, last_cut]] - gamma * torch.logsumexp(
        logits[0, last_cut], -1
    )
    assert reward[0, last_cut].item() == pytest.approx(expected.item())
    # and the loss sees the difference: the same row, once cut and once ended
    only_cut = collate([cut.prompt], [cut.completion], pad_id=0)
    loss_cut = sm_loss(logits[:1, : only_cut.sequences.shape[1]], only_cut, None,
                       None, None, EOS, gamma=gamma, alpha=1.0,
                       learned_terminal=False).loss  # fmt: skip
    as_if_ended = sm_loss(logits[:1, : only_cut.sequences.shape[1]], only_cut, None,
                          None, None, cut.completion[-1], gamma=gamma,
                          alpha=1.0, learned_terminal=False).loss  # fmt: skip
    assert loss_cut.item() != pytest.approx(as_if_ended.item())
