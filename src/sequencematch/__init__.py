"""SequenceMatch: imitation learning with backtracking for Hugging Face causal LMs."""

from .core.actions import (
    Batch,
    UniformNoise,
    UnigramNoise,
    apply_backspaces,
    augment_with_noise,
    collate,
)
from .core.causal_lm import BKSPC_TOKEN, backspace_id, check_backspace_support
from .core.forward import state_logits
from .core.layout import build_layout, visible_lengths
from .core.objectives import (
    PHI,
    ObjectiveConfig,
    TrainingLoss,
    mle_loss,
    sequencematch_loss,
    training_loss,
)
from .core.sampling import GenerationOutput, generate
from .models.backspace import add_backspace
from .models.loading import load_model
from .models.presets import char_tokenizer, tiny_model
from .training.config import TrainConfig
from .training.noise import MixtureNoise
from .training.trainer import Trainer, TrainingError

__all__ = [
    "BKSPC_TOKEN",
    "PHI",
    "Batch",
    "GenerationOutput",
    "MixtureNoise",
    "ObjectiveConfig",
    "TrainConfig",
    "Trainer",
    "TrainingError",
    "TrainingLoss",
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
    "load_model",
    "mle_loss",
    "sequencematch_loss",
    "state_logits",
    "tiny_model",
    "training_loss",
    "visible_lengths",
]
__version__ = "0.1.0"
