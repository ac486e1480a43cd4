"""Run independent training jobs at once, one process each, so that small models use every core.

The demo's models are too small for intra-op threads to pay off (two threads run a step
~1.3x faster than one), so training its three methods as three single-threaded processes
finishes ~1.5x sooner on two cores than training them one after the other. Processes are
spawned, not forked, so that no OpenMP or autograd state is inherited. Progress is read
from each run's ``metrics.jsonl`` (written by the trainer every ``log_every`` steps) and
printed as one status line, so parallel progress bars never interleave.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Job:
    """One call ``function(*args, **kwargs)``; ``function`` must be importable (picklable).

    ``metrics_file`` and ``total_steps`` let the parent show the job's progress.
    """

    function: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    metrics_file: Path | None = None
    total_steps: int = 0


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def threads_per_worker(workers: int) -> int:
    """Intra-op threads for each of ``workers`` processes sharing this machine's CPUs."""
    return max(1, available_cpus() // max(1, workers))


def _leave_to_parent() -> None:
    """Workers ignore Ctrl-C (the terminal sends it to every process of the group): the
    parent stops them all, one way, whichever signal it gets (see :func:`_stop`). Their
    progress bars lock with a thread lock, not tqdm's default inter-process semaphore, which
    a stopped worker would leave to the parent's resource tracker (and its warning)."""
    from tqdm import tqdm

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tqdm.set_lock(threading.RLock())


def _run_in_worker(threads: int, job: Job) -> Any:
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()  # the parent's status line is the only progress shown
    return job.function(*job.args, **job.kwargs)


FollowUp = Callable[[str, Any], Mapping[str, Job]]
"""``then(name, result)``: the jobs that can start once job ``name`` returned ``result``."""


def run_jobs(
    jobs: Mapping[str, Job],
    workers: int,
    progress: bool = True,
    poll_seconds: float = 2.0,
    print_every: float = 15.0,
    then: FollowUp | None = None,
) -> Iterator[tuple[str, Any]]:
    """Run ``jobs`` on ``workers`` processes; yield ``(name, result)`` as each finishes.

    ``then``, when given, is called with each finished job's name and result and returns
    more jobs (e.g. runs that start from a model the finished job saved); they queue behind
    the jobs already waiting, so a free worker never waits for a whole stage to end.
    ``workers <= 1`` runs them here, one after the other, in order. A job that raises stops
    the others and the error is raised here; a worker that dies (killed for lack of memory,
    say) raises :class:`WorkerDied` instead of leaving its job waiting forever. However this
    ends (Ctrl-C, or a ``SIGTERM`` that the caller turned into an exception, included), no
    worker outlives it.
    """
    queued = dict(jobs)  # every job so far, finished or not
    if workers <= 1 or (then is None and len(jobs) <= 1):
        order = list(queued)
        for name in order:  # grows as follow-ups are added
            job = queued[name]
            result = job.function(*job.args, **job.kwargs)
            yield name, result
            added = _follow_ups(then, name, result, queued)
            queued |= added
            order += list(added)
        return
    processes = workers if then is not None else min(workers, len(jobs))
    threads = threads_per_worker(processes)
    pool = ProcessPoolExecutor(
        processes, mp_context=multiprocessing.get_context("spawn"), initializer=_leave_to_parent
    )
    try:
        pending = {name: pool.submit(_run_in_worker, threads, job) for name, job in queued.items()}
        started = last_print = time.monotonic()
        while pending:
            finished = [name for name, future in pending.items() if future.done()]
            for name in finished:
                result = _result(pending.pop(name), name, pending)  # re-raises the job's error
                yield name, result
                for new_name, job in _follow_ups(then, name, result, queued).items():
                    queued[new_name] = job
                    pending[new_name] = pool.submit(_run_in_worker, threads, job)
            now = time.monotonic()
            if pending and progress and now - last_print >= print_every:
                print(progress_line({n: queued[n] for n in pending}, now - started), flush=True)
                last_print = now
            if pending:
                wait(pending.values(), timeout=poll_seconds, return_when=FIRST_COMPLETED)
    finally:
        _stop(pool)


class WorkerDied(RuntimeError):
    """A worker process ended without returning its job's result (killed by the operating
    system, most often for lack of memory)."""


def _result(future: Future[Any], name: str, pending: Mapping[str, Future[Any]]) -> Any:
    """The job's result; its own exception is raised as it is, a dead worker as
    :class:`WorkerDied` naming the jobs that were lost with it."""
    try:
        return future.result()
    except BrokenProcessPool:
        lost = ", ".join([name, *pending])
        raise WorkerDied(
            f"a worker process was killed while running jobs ({lost}), most often by the "
            "operating system for lack of memory; the jobs that finished are kept: run the "
            "same command again with --resume, and fewer --workers if memory is short"
        ) from None


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel queued jobs and end the workers, also those still running a job (a job that
    failed stops the others)."""
    processes = list(getattr(pool, "_processes", {}).values())  # running workers
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=60)
        if process.is_alive():  # stuck where Python cannot raise
            process.kill()
            process.join()


def _follow_ups(
    then: FollowUp | None, name: str, result: Any, known: Mapping[str, Job]
) -> dict[str, Job]:
    """The jobs ``then`` adds after ``name`` (names must be new)."""
    if then is None:
        return {}
    added = dict(then(name, result))
    clash = sorted(set(added) & set(known))
    if clash:
        raise ValueError(f"follow-up jobs reuse the names of queued jobs: {clash}")
    return added


def progress_line(jobs: Mapping[str, Job], elapsed: float, shown: int = 4) -> str:
    """``[2m05s] mle 400/1250 | mle-bkspc 375/1250 | 3 waiting``: the last logged step of
    each job that has logged one (at most ``shown``), and how many have not yet."""
    cells, waiting = [], 0
    for name, job in jobs.items():
        step = last_logged_step(job.metrics_file)
        if step == 0 and len(jobs) > shown or len(cells) == shown:
            waiting += 1
            continue
        total = f"/{job.total_steps}" if job.total_steps else ""
        cells.append(f"{name} {step}{total}")
    if waiting:
        cells.append(f"{waiting} waiting")
    minutes, seconds = divmod(int(elapsed), 60)
    return f"[{minutes}m{seconds:02d}s] " + " | ".join(cells)


def last_logged_step(metrics_file: Path | None) -> int:
    """The step of the last complete line of a trainer's ``metrics.jsonl`` (0 if none)."""
    if metrics_file is None or not metrics_file.exists():
        return 0
    lines = metrics_file.read_text().splitlines()
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue  # a line being written, or an evaluation record without a step
    return 0


def training_job(function: Callable[..., Any], config: Any, *args: Any, **kwargs: Any) -> Job:
    """``function(config, *args, **kwargs)`` for a training configuration,
    its progress read from the run folder the trainer writes (``config.output_dir``)."""
    return Job(function, (config, *args), kwargs,
               metrics_file=Path(config.output_dir) / "metrics.jsonl",
               total_steps=config.steps)  # fmt: skip


def schedule_record(workers: int | None, n_jobs: int) -> dict[str, int | None]:
    """Workers for ``n_jobs`` jobs (default: all at once; never more than jobs) and the
    threads each gets, as a demo records them in its results."""
    count = n_jobs if workers is None else max(1, min(workers, n_jobs))
    return {
        "workers": count,
        "threads_per_worker": threads_per_worker(count) if count > 1 else None,
    }


def describe_schedule(jobs: Mapping[str, Job], workers: int, shown: int = 4) -> str:
    """``== training mle, mle-bkspc (1250 steps each), 2 at a time, 1 thread(s) each``."""
    counts = "/".join(str(n) for n in dict.fromkeys(job.total_steps for job in jobs.values()))
    how = "one after the other" if workers <= 1 else (
        f"{min(workers, len(jobs))} at a time, "
        f"{threads_per_worker(min(workers, len(jobs)))} thread(s) each"
    )  # fmt: skip
    names = list(jobs)
    listed = ", ".join(names[:shown]) + (
        f" and {len(names) - shown} more" if len(names) > shown else ""
    )
    return f"== training {listed} ({counts} steps each), {how}"


def schedule_note(results: Mapping[str, Any]) -> str:
    """How a demo's runs shared the machine, for its report: `` (3 at once, 1 thread each)``."""
    workers = results.get("workers") or 1
    if workers <= 1:
        return " (one after the other)"
    return f" ({workers} at once, {results.get('threads_per_worker')} thread(s) each)"
