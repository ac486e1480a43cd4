"""Training state stored so that reading it only parses data and never runs code.

``torch.load`` of a pickle runs whatever the pickle names, and a checkpoint may come from
someone else. So a checkpoint's training state (optimiser, scheduler, replay buffer, random
generators, settings) is split in two: every tensor goes to ``state.safetensors`` and
everything else to ``state.json``, where each tensor is replaced by a reference to it.
JSON cannot say "tuple", "dict with int keys" or "inf", so those are tagged objects::

    {"__tensor__": "t3"}   {"__tuple__": [...]}   {"__items__": [[key, value], ...]}
    {"__float__": "inf"}
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..storage.files import new_file_mode

VALUES_FILE = "state.json"
TENSORS_FILE = "state.safetensors"
_TAGS = ("__tensor__", "__tuple__", "__items__", "__float__")


class StateFileError(ValueError):
    """A state file that does not parse as state written by :func:`write_state`."""


def write_state(folder: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors, numbers, strings, ``None``, lists, tuples and dicts of
    them) as ``state.json`` and ``state.safetensors`` in ``folder``."""
    tensors: dict[str, torch.Tensor] = {}
    values = _encode(state, tensors)
    save_file(tensors, str(folder / TENSORS_FILE))
    (folder / TENSORS_FILE).chmod(new_file_mode())  # safetensors writes it private (0600)
    text = json.dumps(values, allow_nan=False, separators=(",", ":"))
    (folder / VALUES_FILE).write_text(text + "\n", encoding="utf-8")


def read_state(folder: Path) -> dict[str, Any]:
    """The state :func:`write_state` wrote in ``folder`` (tensors on the CPU); anything
    else raises :class:`StateFileError` naming the file."""
    try:
        tensors = load_file(str(folder / TENSORS_FILE))
    except (OSError, SafetensorError) as error:
        raise StateFileError(f"{TENSORS_FILE} cannot be read ({error})") from None
    try:
        values = json.loads((folder / VALUES_FILE).read_text(encoding="utf-8"))
        state = _decode(values, tensors)
    except (OSError, ValueError, TypeError, RecursionError) as error:
        raise StateFileError(f"{VALUES_FILE} cannot be read ({error})") from None
    if not isinstance(state, dict):
        raise StateFileError(f"{VALUES_FILE} holds no state (not an object)")
    return state


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        tensor = value.detach().cpu().contiguous()
        if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
            tensor = tensor.clone()  # a view into a larger tensor: safetensors stores its own
        tensors[name] = tensor
        return {"__tensor__": name}
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": repr(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_encode(item, tensors) for item in value]
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(item, tensors) for item in value]}
    if isinstance(value, dict):
        if all(isinstance(key, str) and key not in _TAGS for key in value):
            return {key: _encode(item, tensors) for key, item in value.items()}
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    raise TypeError(f"a checkpoint's state cannot hold a {type(value).__name__}")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(item, tensors) for item in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1 and next(iter(value)) in _TAGS:
        tag, inner = next(iter(value.items()))
        if tag == "__tensor__":
            if not isinstance(inner, str) or inner not in tensors:
                raise ValueError(f"it names a tensor {inner!r} that {TENSORS_FILE} lacks")
            return tensors[inner]
        if tag == "__float__":
            if inner not in ("inf", "-inf", "nan"):
                raise ValueError(f"{inner!r} is not a non-finite number")
            return float(inner)
        if not isinstance(inner, list):
            raise ValueError(f"{tag} holds no list")
        if tag == "__tuple__":
            return tuple(_decode(item, tensors) for item in inner)
        if not all(isinstance(pair, list) and len(pair) == 2 for pair in inner):
            raise ValueError("__items__ holds no [key, value] pairs")
        return {_key(_decode(k, tensors)): _decode(v, tensors) for k, v in inner}
    return {key: _decode(item, tensors) for key, item in value.items()}


def _key(key: Any) -> Any:
    if isinstance(key, (list, dict, torch.Tensor)):
        raise ValueError("a dict key is neither a number nor a string")
    return key
