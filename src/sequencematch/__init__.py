"""SequenceMatch: imitation learning with backtracking for Hugging Face causal LMs."""

from .actions import (
    Batch,
    UniformNoise,
    UnigramNoise,
    apply_backspaces,
    augment_with_noise,
    collate,
)
from .forward import state_logits
from .layout import build_layout, visible_lengths
from .model import (
    BKSPC_TOKEN,
    add_backspace,
    backspace_id,
    char_tokenizer,
    check_backspace_support,
    tiny_model,
)
from .sampling import GenerationOutput, generate

__all__ = [
    "BKSPC_TOKEN",
    "Batch",
    "GenerationOutput",
    "UniformNoise",
    "UnigramNoise",
    "add_backspace",
    "apply_backspaces",
    "augment_with_noise",
    "backspace_id",
    "build_layout",
    "char_tokenizer",
    "check_backspace_support",
    "collate",
    "generate",
    "state_logits",
    "tiny_model",
    "visible_lengths",
]
__version__ = "0.1.0"
