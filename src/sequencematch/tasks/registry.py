"""Tasks by name: the built-in ones, the ones a user registers, and ``module:Class`` paths.

A user's own task is a :class:`~sequencematch.tasks.base.Task` subclass. Register it
(``register_task(MyTask)``) and name it in a configuration (``task: my-task``), write its
import path (``task: my_package.tasks:MyTask``, which the command line can use too), or
pass an instance from Python (``prepare_run(config, task=MyTask(options))``).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from . import names
from .base import Task, TaskOptions


def register_task(task_class: type[Task], name: str | None = None) -> type[Task]:
    """Make ``task_class`` available under ``name`` (default: its ``name`` attribute);
    usable as a class decorator. Refuses a name already taken by another class."""
    if not (isinstance(task_class, type) and issubclass(task_class, Task)):
        raise ValueError(f"{task_class!r} is not a subclass of sequencematch.tasks.base.Task")
    key = name or task_class.name
    if not key:
        raise ValueError(f"{task_class.__name__} has no name: set its name attribute or pass one")
    taken = names.REGISTERED.get(key)
    if key in names.BUILTIN or (taken is not None and taken is not task_class):
        raise ValueError(f"a task named {key!r} exists already; register this one under another")
    names.REGISTERED[key] = task_class
    return task_class


def task_names() -> list[str]:
    """Names of the built-in and registered tasks."""
    return [*names.BUILTIN, *names.REGISTERED]


def task_class(name: str) -> type[Task]:
    """The task class called ``name``: built-in, registered, or a ``module:Class`` path."""
    if name in names.BUILTIN:
        module, attribute = names.BUILTIN[name]
        return getattr(importlib.import_module(module), attribute)
    if name in names.REGISTERED:
        return names.REGISTERED[name]
    if ":" in name:
        module, _, attribute = name.partition(":")
        try:
            found = getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"cannot import task {name!r}: {error}") from None
        if not (isinstance(found, type) and issubclass(found, Task)):
            raise ValueError(f"{name} is not a subclass of sequencematch.tasks.base.Task")
        return found
    raise ValueError(
        f"unknown task {name!r}; choose one of {', '.join(task_names())}, or give a task "
        "class as module:Class"
    )


def build_task(name: str, options: TaskOptions) -> Task:
    """An instance of the task called ``name`` for these options."""
    return task_class(name)(options)


def task_from_info(info: Mapping[str, Any], *, trust_code: bool = False) -> Task:
    """The task a saved model's ``task.json`` describes.

    A task named by import path is refused unless ``trust_code``: a model folder from
    someone else would otherwise import (run) whatever module it names, as transformers'
    ``trust_remote_code``."""
    if not isinstance(info, Mapping):
        raise ValueError(f"task.json must hold a JSON object, not {type(info).__name__}")
    name = info.get("task")
    if not isinstance(name, str) or not name:
        raise ValueError("task.json names no task (expected a 'task' entry)")
    if names.is_import_path(name) and not trust_code:
        raise ValueError(
            f"the task {name!r} is a class named by import path, and loading it imports and "
            "runs that module's code: pass --trust-task-code if you trust where this model "
            "folder came from (built-in and registered tasks need no flag)"
        )
    return task_class(name).from_info(info)
