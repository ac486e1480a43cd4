"""The names tasks go by: built in, registered by a user, or a ``module:Class`` import path.

Kept apart from :mod:`.registry` (which builds tasks, and so imports :mod:`.base`), so that
a task can name itself (:meth:`~sequencematch.tasks.base.Task.info`) without a circle.
"""

from __future__ import annotations

BUILTIN = {
    "arithmetic": ("sequencematch.tasks.arithmetic_task", "ArithmeticTask"),
    "jsonl": ("sequencematch.tasks.jsonl_task", "JsonlTask"),
    "text": ("sequencematch.tasks.text_task", "TextTask"),
}
"""Built-in tasks: name -> (module, class)."""
REGISTERED: dict[str, type] = {}
"""Tasks a user registered (:func:`sequencematch.tasks.registry.register_task`), by name."""


def task_reference(task: type) -> str:
    """How a saved model names its task: the name it is built in or registered under, else
    its import path ``module:Class`` (so that loading the model finds the class again)."""
    for name in (task.name, *REGISTERED):
        if name and (BUILTIN.get(name) == (task.__module__, task.__qualname__)
                     or REGISTERED.get(name) is task):  # fmt: skip
            return name
    return f"{task.__module__}:{task.__qualname__}"


def is_import_path(name: str) -> bool:
    """Whether ``name`` is a ``module:Class`` path (neither built in nor registered): finding
    its class imports, and so runs, that module."""
    return name not in BUILTIN and name not in REGISTERED and ":" in name
