"""Policy diagnostics around a reference answer, on tiny models with known answers."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import boost_logit, make_model

from sequencematch.evaluation.policy import ReferenceRow, calibrated_bkspc_rate, policy_diagnostics

ROWS = [ReferenceRow([1, 2, 3], [4, 5]), ReferenceRow([2, 2], [7, 8, 9]),
        ReferenceRow([5], [6], final=False)]  # fmt: skip


def measure(model, tokenizer, bkspc_id, rows=ROWS):
    return policy_diagnostics(model, rows, bkspc_id=bkspc_id, eos_id=tokenizer.eos_token_id,
                              vocab_size=len(tokenizer), seed=0)  # fmt: skip


def test_a_uniform_policy_gives_the_closed_form_values():
    model, tokenizer, bkspc_id = make_model("tiny_llama")
    torch.nn.init.zeros_(model.get_output_embeddings().weight)  # every logit 0
    found = measure(model, tokenizer, bkspc_id)
    vocab = len(tokenizer)
    assert found.p_eos == pytest.approx(1 / vocab)
    assert found.p_bkspc_at_end == pytest.approx(1 / vocab)
    assert found.p_bkspc_after_wrong == pytest.approx(1 / vocab)
    assert found.tail_at_end == pytest.approx(1 - 2 / vocab)
    # at the prompt <bkspc> is no action: vocab - 1 equally likely tokens
    assert found.first_token_entropy == pytest.approx(math.log(vocab - 1))
    assert found.outside_top10 == pytest.approx(1 - 10 / (vocab - 1))
    assert found.rows == 3


def test_a_policy_that_ends_and_deletes_is_seen_as_such():
    model, tokenizer, bkspc_id = make_model("tiny_gpt2")
    ends = boost_logit(model, tokenizer.eos_token_id, 50.0)
    found = measure(model, tokenizer, bkspc_id)
    assert found.p_eos > 0.999 and found.tail_at_end < 1e-3
    ends.remove()
    deletes = boost_logit(model, bkspc_id, 50.0)
    found = measure(model, tokenizer, bkspc_id)
    assert found.p_bkspc_after_wrong > 0.999 and found.p_eos < 1e-3
    assert found.first_token_entropy > 0.5  # <bkspc> is masked at the prompt
    deletes.remove()


def test_only_final_rows_count_towards_ending():
    model, tokenizer, bkspc_id = make_model("tiny_llama")
    found = measure(model, tokenizer, bkspc_id, rows=[ROWS[2]])
    assert math.isnan(found.p_eos) and math.isnan(found.tail_at_end)
    assert not math.isnan(found.p_bkspc_after_wrong)


@pytest.mark.parametrize("p_noise", [0.02, 0.15, 0.5])
def test_the_calibrated_bkspc_rate_is_the_noise_posterior_of_the_data_process(p_noise: float):
    """Enumerate the data process over a belief about the right token (uneven over the wrong
    ones): the share of rows showing token 0 in which it was a mistake is the closed form."""
    belief = [0.3, 0.45, 0.15, 0.1]  # token 0 is the one shown; 3 others, each a mistake choice
    choices = len(belief) - 1
    shown_as_mistake = sum(
        b * p_noise / choices for right, b in enumerate(belief) if right != 0
    )  # the right token was another one and the mistake drawn was token 0
    shown_as_right = belief[0] * (1.0 - p_noise)
    posterior = shown_as_mistake / (shown_as_mistake + shown_as_right)
    assert calibrated_bkspc_rate(p_noise, belief[0], choices) == pytest.approx(posterior)
    assert calibrated_bkspc_rate(p_noise, 1.0, choices) == 0.0  # sure: never delete
    assert calibrated_bkspc_rate(p_noise, 0.0, choices) == 1.0  # sure it is wrong: always
    with pytest.raises(ValueError, match="belief"):
        calibrated_bkspc_rate(p_noise, 1.5, choices)
