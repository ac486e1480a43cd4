"""Model folders whose weights are pickles (``pytorch_model.bin``), as older folders have.

transformers reads such a file with ``torch.load(weights_only=True)``, whose unpickler
builds tensors and plain containers only and refuses anything else (a pickle that would
run code, or bytes that are no pickle) with a long traceback. Here that refusal becomes
one line naming the file; nothing is ever loaded with ``weights_only=False``.
"""

from __future__ import annotations

import pickle
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

UNPICKLING_ERRORS = (pickle.UnpicklingError, EOFError, RuntimeError, UnicodeDecodeError,
                     IndexError, KeyError, struct.error, OverflowError)  # fmt: skip
"""What torch's tensors-only unpickler raises on bytes that are no pickle of tensors."""


def pickled_weights(folder: Path) -> list[str]:
    """The pickled weight files transformers would read in ``folder`` (none when the folder
    has safetensors weights, which it prefers)."""
    if any(folder.glob("*.safetensors")) or any(folder.glob("*.safetensors.index.json")):
        return []
    return sorted(path.name for path in folder.glob("pytorch_model*.bin"))


@contextmanager
def refused_pickles_in_one_line(folder: str | Path) -> Iterator[None]:
    """Load a model from ``folder`` inside this: when its weights are pickles that torch's
    tensors-only loader refuses, raise a ``ValueError`` naming the file."""
    pickles = pickled_weights(Path(folder))
    try:
        with warnings.catch_warnings():  # torch's note on the protocol of a refused pickle
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            yield
    except UNPICKLING_ERRORS as error:
        if not pickles:
            raise
        raise ValueError(
            f"{Path(folder)}: a pytorch_model.bin cannot be read safely ({pickles[0]} was "
            f"refused by torch's tensors-only loader: {type(error).__name__}); it is damaged, "
            "or holds more than tensors, which is never unpickled (that could run code): use "
            "a folder with model.safetensors"
        ) from None
