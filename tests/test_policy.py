"""Policy diagnostics around a reference answer, on tiny models with known answers."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import boost_logit, make_model

from sequencematch.evaluation.policy import ReferenceRow, policy_diagnostics

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
