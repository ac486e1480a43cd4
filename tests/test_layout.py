"""The exactness contract: one pass over a sequence with backspaces == plain forwards."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sequencematch.core.actions import apply_backspaces
from sequencematch.core.forward import state_logits
from sequencematch.core.layout import build_layout, visible_lengths

TOLERANCE = 1e-6


@st.composite
def action_rows(draw, bkspc_id: int, vocab: int):
    """Prompt + actions with many backspaces: runs to the prompt, deletes right after it."""
    prompt = draw(st.lists(st.integers(4, vocab - 1), min_size=1, max_size=6))
    style = draw(st.sampled_from(["random", "alternate", "run_to_prompt", "delete_first"]))
    actions: list[int] = []
    depth = 0
    for _ in range(draw(st.integers(0, 24))):
        if style == "alternate":
            delete = depth > 0
        elif style == "run_to_prompt":
            delete = depth > 0 and (depth >= 5 or draw(st.booleans()) and depth >= 3)
        elif style == "delete_first":
            delete = depth == 1
        else:
            delete = depth > 0 and draw(st.booleans())
        if delete:
            actions.append(bkspc_id)
            depth -= 1
        else:
            actions.append(draw(st.integers(0, vocab - 1)))
            depth += 1
    return prompt, actions


def plain_last_logits(model, tokens: list[int]) -> torch.Tensor:
    ids = torch.tensor([tokens])
    return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1]


def check_contract(model, bkspc_id, rows) -> float:
    prompts = [prompt for prompt, _ in rows]
    sequences_list = [prompt + actions for prompt, actions in rows]
    lengths = [len(s) for s in sequences_list]
    width = max(lengths) + 3  # extra padding columns
    sequences = torch.full((len(rows), width), 7, dtype=torch.long)
    for row, seq in enumerate(sequences_list):
        sequences[row, : len(seq)] = torch.tensor(seq)
    with torch.no_grad():
        logits = state_logits(model, sequences, [len(p) for p in prompts], lengths, bkspc_id)
    worst = 0.0
    for row, (prompt, actions) in enumerate(rows):
        for t in range(lengths[row]):
            visible = (
                prompt[: t + 1]
                if t < len(prompt)
                else prompt + apply_backspaces(actions[: t + 1 - len(prompt)], bkspc_id)
            )
            with torch.no_grad():
                expected = plain_last_logits(model, visible)
            worst = max(worst, (logits[row, t] - expected).abs().max().item())
    return worst


@pytest.mark.parametrize("preset", ["tiny_gpt2", "tiny_llama"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_contract_hypothesis(preset, attn):
    model, tokenizer, bkspc_id = make_model(preset, attn=attn)
    vocab = len(tokenizer) - 1  # ordinary tokens only

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(action_rows(bkspc_id, vocab), min_size=1, max_size=4))
    def run(rows):
        assert check_contract(model, bkspc_id, rows) <= TOLERANCE

    run()


def test_contract_fixed_hard_cases(float64_model):
    model, _, bk = float64_model
    rows = [
        ([5], [bk] * 0 + [9, bk, 9, bk, 10, 11, bk, bk, 12]),  # one-token prompt, runs to prompt
        ([5, 6, 7, 8, 9, 10], [11, 12, 13, bk, bk, bk, 14]),  # run of backspaces to the prompt
        ([4, 4], [bk] * 0),  # prompt only
        ([6, 7], [8, bk, 8, bk, 8, bk]),  # alternating, ends at the prompt boundary
    ]
    assert check_contract(model, bk, rows) <= TOLERANCE


def test_rows_without_backspace_equal_plain_forward(float64_model):
    model, _, bk = float64_model
    sequences = torch.randint(4, 20, (3, 9))
    lengths = torch.tensor([9, 9, 9])
    with torch.no_grad():
        ours = state_logits(model, sequences, [2, 5, 1], lengths, bk)
        plain = model(input_ids=sequences).logits
    assert (ours - plain).abs().max().item() <= TOLERANCE


def test_layout_positions_and_copies():
    bk = 99
    sequences = torch.tensor([[1, 2, 3, bk, 4, bk, bk, 5]])
    prompt, length = torch.tensor([1]), torch.tensor([8])
    layout = build_layout(sequences, prompt, length, bk)
    # visible states: [1] [1 2] [1 2 3] [1 2] [1 2 4] [1 2] [1] [1 5]
    assert visible_lengths(sequences, prompt, length, bk)[0].tolist() == [1, 2, 3, 2, 3, 2, 1, 2]
    assert layout.position_ids[0].tolist() == [0, 1, 2, 1, 2, 1, 0, 1]
    # a <bkspc> feeds a copy of the token that is now last
    assert layout.input_ids[0].tolist() == [1, 2, 3, 2, 4, 2, 1, 5]
    mask = layout.attention_mask[0]
    # the copy at element 3 attends to element 0 and itself, not the original element 1
    assert mask[3].nonzero()[:, 0].tolist() == [0, 3]
    assert mask[6].nonzero()[:, 0].tolist() == [6]
    # element 7 (token 5) sees the original of its state's [1] and itself; no copies
    assert mask[7].nonzero()[:, 0].tolist() == [0, 7]
    assert mask[4].nonzero()[:, 0].tolist() == [0, 1, 4]


def test_padding_attends_only_to_itself_and_is_never_attended():
    bk = 50
    sequences = torch.tensor([[1, 2, 3, 0, 0], [4, 5, bk, 6, 7]])
    layout = build_layout(sequences, torch.tensor([2, 1]), torch.tensor([3, 5]), bk)
    mask = layout.attention_mask[0]
    assert mask[3].nonzero()[:, 0].tolist() == [3]
    assert not mask[:3, 3:].any()


@pytest.mark.parametrize(
    ("sequences", "prompts", "lengths", "message"),
    [
        ([[1, 2, "B", "B"]], [1], [4], "deletes into the prompt"),
        ([[1, "B", 3]], [2], [3], "prompt contains <bkspc>"),
        ([[1, 2, 3]], [0], [3], "empty prompt"),
        ([[1, 2, 3]], [1], [5], "lengths"),
        ([[1, 2, 3]], [2], [1], "lengths"),
        ([[1, 2, 1000]], [1], [3], "outside the model's vocabulary"),
        ([[1, 2, -3]], [1], [3], "negative token id"),
        ([[1, 2, 3]], [1, 1], [3, 3], "one entry per row"),
    ],
)
def test_bad_rows_are_refused(sequences, prompts, lengths, message):
    model, _, bk = make_model("tiny_gpt2", dtype=torch.float32)
    rows = [[bk if token == "B" else token for token in row] for row in sequences]
    with pytest.raises(ValueError, match=message):
        state_logits(model, torch.tensor(rows), prompts, lengths, bkspc_id=bk)
