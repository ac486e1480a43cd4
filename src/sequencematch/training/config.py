"""The training configuration: one typed object for Python, YAML files and CLI flags.

:class:`TrainConfig` is composed of the option groups of :mod:`.options` (run, model, task
and data, noise and ``<bkspc>``, objective, model samples, optimisation, logging), each
with its fields, help texts and checks; every option stays one flat field, YAML key and
flag. :func:`add_config_arguments` turns the fields into ``--key value`` flags (documented
with their defaults, listed by group) and :meth:`TrainConfig.validate` rejects nonsense
with a message that says what to change.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from ..core.objectives import ObjectiveConfig
from ..storage.files import read_utf8
from .options import (
    BKSPC_INITS,
    LR_SCHEDULES,
    MAX_SEED,
    METHODS,
    MIXABLE_NOISE_SOURCES,
    NOISE_SOURCES,
    OPTION_GROUPS,
    PRECISIONS,
    REPLAY_DRAWS,
    VALUE_HEADS,
    DataOptions,
    LoggingOptions,
    ModelOptions,
    NoiseOptions,
    ObjectiveOptions,
    OptimisationOptions,
    ReplayOptions,
    RunOptions,
    is_number,
    noise_source_parts,
    type_problems,
)
from .value_head import q_reading

__all__ = [  # what other modules import from here (the constants live in .options)
    "BKSPC_INITS",
    "LR_SCHEDULES",
    "MAX_SEED",
    "METHODS",
    "MIXABLE_NOISE_SOURCES",
    "NOISE_SOURCES",
    "PRECISIONS",
    "REPLAY_DRAWS",
    "VALUE_HEADS",
    "TrainConfig",
    "add_config_arguments",
    "config_from_arguments",
    "noise_source_parts",
    "read_yaml_options",
]


# The groups are listed last to first: a dataclass collects the fields of its bases from the
# last one, so the fields (and ``to_dict``) run in the order of OPTION_GROUPS.
@dataclass
class TrainConfig(
    LoggingOptions,
    OptimisationOptions,
    ReplayOptions,
    ObjectiveOptions,
    NoiseOptions,
    DataOptions,
    ModelOptions,
    RunOptions,
):
    """Everything a training run needs: the option groups of :mod:`.options` as one flat
    set of fields (see each field's help, ``sequencematch train -h``).

    ``value_head auto`` (the Q reading) and ``bkspc_init auto`` follow whether the model is
    trained from scratch in this run (a preset) or loaded (pretrained, or a model folder an
    earlier run saved): see :func:`.value_head.q_reading`."""

    def sample_length(self, longest_completion: int | None = None) -> int:
        """Visible tokens of a model sample (``<eos>`` included): ``max_new_tokens`` when set,
        else the ``longest_completion`` of the training data, at most
        ``max_completion_tokens`` (which alone applies when the data is not known)."""
        if self.max_new_tokens:
            return self.max_new_tokens
        if longest_completion is None:
            return self.max_completion_tokens
        return max(1, min(longest_completion, self.max_completion_tokens))

    def mle_warmup(self) -> int:
        """Steps before model samples join: ``mle_warmup_steps``, or ``mle_warmup_fraction``
        of ``steps`` when it is unset (so the warm-up scales with the run; a resumed run keeps
        the warm-up its checkpoint recorded). 0 for method ``mle``, ``steps`` for ``offline``:
        neither samples."""
        if self.method == "mle":
            return 0
        if self.method == "offline":
            return self.steps
        if self.mle_warmup_steps is not None:
            return self.mle_warmup_steps
        return round(self.mle_warmup_fraction * self.steps)

    def samples_model(self) -> bool:
        """Whether model samples ever join: method ``sequencematch`` with a warm-up shorter
        than the run (one as long as the run is the same as method ``offline``)."""
        return self.method == "sequencematch" and self.mle_warmup() < self.steps

    def objective(self) -> ObjectiveConfig:
        """The objective of the run: kind ``mle``, ``offline`` or ``online`` by ``method``
        (the warm-up steps of an ``online`` run are read per step: see
        :func:`.schedule.objective_at`)."""
        kind = "online" if self.samples_model() else "offline"
        kind = "mle" if self.method == "mle" else kind
        return ObjectiveConfig(
            kind=kind, divergence=self.divergence, gamma=self.gamma, alpha=self.alpha,
            beta=self.beta, lambda_mle=self.lambda_mle,
            q_reading=q_reading(self.value_head, self.model),
            terminal_value=self.terminal_value, balance_noise=self.balance_noise,
            data_regulariser=self.data_regulariser,
        )  # fmt: skip

    def problems(self) -> list[str]:
        """One line per problem: every field of the wrong type (such values cannot be
        range-checked), or else each group's own checks, then those that read two groups."""
        wrong = type_problems(self)
        if wrong:
            return wrong
        problems = [message for _, group in OPTION_GROUPS for message in group.problems(self)]
        if self.method == "sequencematch":  # the replay buffer's sizes matter only here
            problems += self.sampling_problems()
            if self.grad_accum >= 1 and self.model_batch_size % self.grad_accum:
                problems.append("model_batch_size must be a multiple of grad_accum")
        if self.bkspc_reprobe and (self.lora_r > 0 or self.fsdp):
            problems.append(
                "bkspc_reprobe writes the <bkspc> row of a full, unsharded model: "
                "drop it, or set lora_r 0 and fsdp false"
            )
        return problems

    def validate(self, explicit: Iterable[str] = ()) -> TrainConfig:
        """Raise ``ValueError`` naming the field and what to change; return ``self``.

        An option that would do nothing in this configuration (:meth:`unused_options`) is
        refused when it is in ``explicit`` (the options a user wrote: CLI flags, YAML keys),
        and otherwise warned about in one line."""
        problems = self.problems()
        if not problems:
            explicit = set(explicit)
            for name, message in self.unused_options():
                if name in explicit:
                    problems.append(message)
                else:
                    warnings.warn(message, UserWarning, stacklevel=2)
        if problems:
            raise ValueError("invalid training configuration: " + "; ".join(problems))
        return self

    def unused_options(self) -> list[tuple[str, str]]:
        """``(option, one-line message)`` for each option set away from its default that
        this configuration never reads (method ``mle`` reads none of them: the arms of a
        comparison share them, so they are not reported there)."""
        if self.method == "mle":
            return []
        defaults = TrainConfig()
        no_plain_warmup = self.regularise_warmup or self.method == "offline"
        checks = [
            ("sm_ramp_steps", no_plain_warmup, "without a plain warm-up (the SequenceMatch "
             "weight is 1 - lambda_mle from step 1): set regularise_warmup false (method "
             "sequencematch) or drop it"),
            ("regularise_warmup", self.method == "offline", "under method offline (it trains "
             "the data-only objective throughout): drop it, or use method mle for plain MLE"),
            ("beta", not self.samples_model(), "under method offline (no model rows to mix "
             "in): drop it, or use method sequencematch"),
            ("alpha", self.divergence != "chi2", f"with divergence {self.divergence} (only "
             "chi2 reads it): drop it, or use divergence chi2"),
            ("value_head_lr", q_reading(self.value_head, self.model) == "none", "without a "
             f"value head (value_head {self.value_head} reads Q = logits here): drop it, or "
             "set value_head offset or normalised"),
        ]  # fmt: skip
        return [
            (name, f"{name} {getattr(self, name)} does nothing {why}")
            for name, ignored, why in checks
            if ignored and getattr(self, name) != getattr(defaults, name)
        ]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a mapping, refusing unknown keys (typos) with the list of valid ones.

        Exact conversions only: a whole float (``1e3``) for an integer option, an integer
        for a float option; anything else of the wrong type is left for :meth:`validate`
        to refuse (a quoted ``"1e-3"`` is text, ``3.7`` steps is no whole number)."""
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(
                f"unknown configuration keys {unknown}; valid keys are: {', '.join(sorted(known))}"
            )
        return cls(**{key: _exact(known[key], value) for key, value in values.items()})

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        """Read a YAML mapping of field names to values (``1e-3`` is a number, as in YAML 1.2)."""
        return cls.from_dict(read_yaml_options(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def read_yaml_options(path: str | Path) -> dict[str, Any]:
    """The mapping of option names to values a YAML file holds (not yet checked)."""
    try:
        values = yaml.load(read_utf8(path), Loader=_YamlLoader) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ValueError(f"{path}: not valid YAML ({where}{problem})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a YAML mapping of option names to values")
    return values


class _YamlLoader(yaml.SafeLoader):
    """Safe YAML whose floats follow YAML 1.2: ``1e-3`` and ``1e3`` are numbers, not text;
    an option given twice is refused (YAML would silently keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is given twice; keep one", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _exact(kind: str, value: Any) -> Any:
    """``value`` converted to an option's type where that loses nothing."""
    if kind == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind == "float" and is_number(value):
        return float(value)
    if kind == "list[float]" and isinstance(value, (list, tuple)):
        return [float(v) if is_number(v) else v for v in value]
    return value


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--name`` flag per field, listed by option group, with its help and default
    (``None`` = not given)."""
    defaults = TrainConfig()
    for title, group in OPTION_GROUPS:
        arguments = parser.add_argument_group(title)
        for item in fields(group):
            _add_argument(arguments, item, getattr(defaults, item.name))


def _add_argument(parser: Any, item: dataclasses.Field[Any], default: Any) -> None:
    """Add the ``--name`` flag of the field ``item`` to ``parser`` (a parser or a group)."""
    help_text = f"{item.metadata['help']} (default: {default})"
    flag = "--" + item.name.replace("_", "-")
    flags = [flag] if "_" not in item.name else [flag, "--" + item.name]  # both spellings
    if isinstance(default, bool):
        parser.add_argument(*flags, type=_parse_bool, default=None, metavar="BOOL", help=help_text)
    elif isinstance(default, list):
        parser.add_argument(*flags, type=float, nargs=2, default=None, help=help_text)
    elif default is None:  # optional: the type named in the annotation ("int | None")
        kind = {"int": int, "float": float}.get(str(item.type).split(" |")[0], str)
        parser.add_argument(*flags, type=kind, default=None, help=help_text)
    else:
        parser.add_argument(*flags, type=type(default), default=None, help=help_text)


def config_from_arguments(args: argparse.Namespace) -> TrainConfig:
    """The YAML file in ``args.config`` (if any) overridden by the flags given."""
    path = getattr(args, "config", None)
    written = read_yaml_options(path) if path else {}
    config = TrainConfig.from_dict(written)
    changes = {
        item.name: getattr(args, item.name)
        for item in fields(TrainConfig)
        if getattr(args, item.name, None) is not None
    }
    if "difficulty" in changes:
        changes["difficulty"] = list(changes["difficulty"])
    return config.replace(**changes).validate(explicit=set(written) | set(changes))
