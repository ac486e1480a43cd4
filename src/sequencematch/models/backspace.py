"""Adding the ``<bkspc>`` action to a model and its tokenizer (one new embedding row)."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.tokenization_utils_base import AddedToken

from ..core.causal_lm import BKSPC_TOKEN, check_backspace_support


def add_backspace(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
    """Add the ``<bkspc>`` special token to ``tokenizer`` and ``model``; return its id.

    Reuses the token when the tokenizer already has it. A new embedding row (and output
    row, when the head is not tied) is set to the mean of the existing rows, so that the
    new action starts as an average token rather than random noise. The id is recorded
    as ``model.config.bkspc_token_id`` and survives ``save_pretrained``/``from_pretrained``.
    """
    check_backspace_support(model)
    existing = tokenizer.convert_tokens_to_ids(BKSPC_TOKEN)
    if existing is not None and existing != tokenizer.unk_token_id:
        bkspc_id = int(existing)
        _ensure_rows(model, bkspc_id + 1)
        model.config.bkspc_token_id = bkspc_id
        return bkspc_id
    tokenizer.add_tokens([AddedToken(BKSPC_TOKEN, special=True, normalized=False)], True)
    bkspc_id = int(tokenizer.convert_tokens_to_ids(BKSPC_TOKEN))
    old_rows = _ensure_rows(model, bkspc_id + 1)
    _set_mean_row(model, bkspc_id, old_rows)
    model.config.bkspc_token_id = bkspc_id
    return bkspc_id


def _ensure_rows(model: PreTrainedModel, rows: int) -> int:
    """Grow the embeddings to at least ``rows`` rows; return the number of rows before."""
    old_rows = model.get_input_embeddings().weight.shape[0]
    if rows > old_rows:
        model.resize_token_embeddings(rows, mean_resizing=False)
    return old_rows


@torch.no_grad()
def _set_mean_row(model: PreTrainedModel, row: int, old_rows: int) -> None:
    """Set ``row`` of the input (and untied output) embeddings to the mean of the old rows."""
    reference = min(row, old_rows)  # rows of the tokens that existed before <bkspc>
    inputs = model.get_input_embeddings().weight
    inputs[row] = inputs[:reference].mean(dim=0)
    outputs = model.get_output_embeddings()
    if outputs is None:
        return
    if outputs.weight.data_ptr() != inputs.data_ptr():
        outputs.weight[row] = outputs.weight[:reference].mean(dim=0)
    bias = getattr(outputs, "bias", None)
    if bias is not None:
        bias[row] = bias[:reference].mean()
