"""Jobs run in spawned processes: results come back by name, errors surface, training in a
worker is the same computation as training here, and progress is read from metrics files."""

from __future__ import annotations

import json
import math
import operator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sequencematch.apps.demos.arithmetic_demo import (
    DemoSettings,
    method_configs,
    train_and_evaluate,
)
from sequencematch.apps.demos.harness import warmup_config, warmup_job, with_overrides
from sequencematch.apps.demos.methods import ONLINE
from sequencematch.apps.parallel import (
    Job,
    describe_schedule,
    last_logged_step,
    progress_line,
    run_jobs,
    schedule_record,
    threads_per_worker,
)


def test_results_come_back_under_their_names_with_workers_and_in_process():
    jobs = {"sum": Job(operator.add, (2, 3)), "fact": Job(math.factorial, (6,)),
            "pow": Job(pow, (2, 10))}  # fmt: skip
    expected = {"sum": 5, "fact": 720, "pow": 1024}
    assert dict(run_jobs(jobs, workers=2, progress=False)) == expected
    in_order = list(run_jobs(jobs, workers=1, progress=False))
    assert in_order == list(expected.items())


def _double_then_stop(name, result):
    """Follow-ups: after ``a`` (and only then), a job that doubles its result."""
    return {"b": Job(operator.mul, (result, 2))} if name == "a" else {}


def test_follow_up_jobs_start_after_the_job_they_need():
    jobs = {"a": Job(operator.add, (2, 3)), "c": Job(pow, (2, 4))}
    for workers in (1, 2):
        finished = list(run_jobs(jobs, workers=workers, progress=False, then=_double_then_stop))
        assert dict(finished) == {"a": 5, "b": 10, "c": 16}
        assert [name for name, _ in finished].index("a") < [n for n, _ in finished].index("b")


def test_follow_ups_may_not_reuse_a_name():
    with pytest.raises(ValueError, match="reuse the names"):
        list(run_jobs({"a": Job(abs, (1,))}, workers=1, progress=False,
                      then=lambda name, result: {"a": Job(abs, (2,))}))  # fmt: skip


def test_an_error_in_a_worker_is_raised_here():
    jobs = {"fine": Job(operator.add, (1, 1)), "bad": Job(math.sqrt, (-1.0,))}
    with pytest.raises(ValueError, match="math domain error"):
        dict(run_jobs(jobs, workers=2, progress=False))


def test_threads_are_shared_between_workers():
    assert threads_per_worker(1) >= threads_per_worker(2) >= 1
    assert threads_per_worker(10_000) == 1
    assert schedule_record(None, 3)["workers"] == 3
    assert schedule_record(10, 3)["workers"] == 3
    assert schedule_record(1, 3) == {"workers": 1, "threads_per_worker": None}
    assert schedule_record(0, 3)["workers"] == 1


def test_training_in_a_worker_equals_training_here(tmp_path):
    settings = with_overrides(DemoSettings.quick(), warmup_steps=8, steps=6, n_test=8)
    warmup_job(warmup_config(settings, 0, tmp_path / "warmup"))
    start = tmp_path / "warmup" / "model"
    here = method_configs(settings, 0, start, tmp_path / "here")[ONLINE]
    there = method_configs(settings, 0, start, tmp_path / "there")[ONLINE]
    threads = torch.get_num_threads()
    torch.set_num_threads(threads_per_worker(2))
    try:
        local = train_and_evaluate(here, (0.0,), progress=False)
    finally:
        torch.set_num_threads(threads)
    jobs = {"there": Job(train_and_evaluate, (there, (0.0,), False)),
            "other": Job(operator.add, (1, 1))}  # fmt: skip
    remote = dict(run_jobs(jobs, workers=2, progress=False))["there"]
    assert local[0][0].as_dict() == remote[0][0].as_dict()
    assert local[0][0].outcomes == remote[0][0].outcomes
    weights_here = load_file(Path(here.output_dir) / "model" / "model.safetensors")
    weights_there = load_file(Path(there.output_dir) / "model" / "model.safetensors")
    assert weights_here.keys() == weights_there.keys()
    for name, tensor in weights_here.items():
        assert torch.equal(tensor, weights_there[name]), name


def test_progress_reads_the_last_complete_step(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    assert last_logged_step(metrics) == 0
    metrics.write_text(json.dumps({"step": 25}) + "\n" + json.dumps({"step": 50}) + '\n{"st')
    assert last_logged_step(metrics) == 50
    line = progress_line({"mle": Job(abs, metrics_file=metrics, total_steps=100)}, 125.0)
    assert line == "[2m05s] mle 50/100"
    queued = {f"run{i}": Job(abs, metrics_file=tmp_path / f"none{i}") for i in range(5)}
    line = progress_line({"mle": Job(abs, metrics_file=metrics), **queued}, 5.0)
    assert line == "[0m05s] mle 50 | 5 waiting"


def test_the_schedule_says_what_runs_and_how():
    def jobs(**steps):
        return {name: Job(abs, total_steps=count) for name, count in steps.items()}

    text = describe_schedule(jobs(a=10, b=10), workers=1)
    assert text == "== training a, b (10 steps each), one after the other"
    assert "2 at a time" in describe_schedule(jobs(a=10, b=10, c=5), workers=2)
    many = describe_schedule(jobs(**{f"r{i}": 3 for i in range(6)}), workers=2)
    assert many.startswith("== training r0, r1, r2, r3 and 2 more (3 steps each)")


def _die() -> None:
    """A worker killed from outside (as the kernel's out-of-memory killer does)."""
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_worker_is_an_error_naming_the_lost_jobs_not_a_wait_forever():
    from sequencematch.apps.parallel import WorkerDied

    jobs = {"killed": Job(_die), "fine": Job(operator.add, (1, 1))}
    with pytest.raises(WorkerDied, match=r"killed while running jobs \(.*killed.*\).*--resume"):
        dict(run_jobs(jobs, workers=2, progress=False, poll_seconds=0.2))
