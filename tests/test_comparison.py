"""The paired protocol: what each method's configuration is, what the offline method never
does, and what the report may say given the intervals (on made-up results)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import pytest

from sequencematch.apps.demos.arithmetic_demo import DemoSettings
from sequencematch.apps.demos.arithmetic_report import ArithmeticComparison, decode_outcomes
from sequencematch.apps.demos.harness import (
    _train,
    method_configs,
    prepare_output,
    warmup_config,
    with_overrides,
)
from sequencematch.apps.demos.methods import (
    COMPARED_METHODS,
    COMPARISONS,
    MLE,
    MLE_BKSPC,
    OFFLINE,
    ONLINE,
)
from sequencematch.apps.demos.paired_summary import conclusion, label, render, summarise
from sequencematch.apps.demos.text_report import TextComparison
from sequencematch.evaluation.paired import mcnemar
from sequencematch.training.run_folder import RunFolderError

N = 400
LEVELS = (0.0, 0.2)


def _evaluation(p: float, k: int, temperature: float | None = None) -> dict:
    """One evaluation at forced noise ``p``: the first ``k`` of N questions right."""
    return {"noise_prob": p, "accuracy": k / N, "forced_deleted_rate": 0.5,
            "outcomes": "1" * k + "0" * (N - k), "temperature": temperature}  # fmt: skip


def _entry(correct: dict[float, int], cpu: float = 10.0) -> dict:
    """A method's entry: at each level, the first ``correct[p]`` of N questions right."""
    sweep = [_evaluation(p, k) for p, k in correct.items()]
    return {"train_seconds": cpu, "train_cpu_seconds": cpu, "sweep": sweep}


def fake_results(per_seed: list[dict[str, dict[float, int]]]) -> dict:
    """Results of the harness's shape: ``per_seed[i][method] = {level: correct}``."""
    costs = {MLE: 10.0, MLE_BKSPC: 10.0, OFFLINE: 11.0, ONLINE: 22.0}
    seeds = {
        str(index): {"warmup": {"train_seconds": 30.0, "train_cpu_seconds": 30.0},
                     "methods": {m: _entry(correct[m], costs[m]) for m in COMPARED_METHODS}}
        for index, correct in enumerate(per_seed)
    }  # fmt: skip
    settings = {"levels": list(LEVELS), "n_test": N}
    results = {"settings": settings, "seeds": seeds, "workers": 2, "threads_per_worker": 1,
               "wall_seconds": 600.0}  # fmt: skip
    results["paired"] = summarise(results, ArithmeticComparison())
    return json.loads(json.dumps(results))  # as read back from results.json


def _seed(mle: int, bkspc: int, offline: int, online: int, clean: tuple[int, ...]) -> dict:
    """Correct answers at p=0.2 per method, and at p=0 (``clean``, same order)."""
    return {
        MLE: {0.0: clean[0], 0.2: mle}, MLE_BKSPC: {0.0: clean[1], 0.2: bkspc},
        OFFLINE: {0.0: clean[2], 0.2: offline}, ONLINE: {0.0: clean[3], 0.2: online},
    }  # fmt: skip


# <bkspc> helps under noise on every seed (+38..+42 of 400); the offline objective helps on
# one seed and hurts on another; the samples cost clean accuracy on every seed.
CONSISTENT = [
    _seed(100, 138, 150, 150, (200, 205, 200, 190)),
    _seed(110, 150, 90, 90, (180, 178, 182, 171)),
    _seed(90, 132, 92, 92, (190, 192, 191, 180)),
]


def test_over_seed_verdicts_follow_the_student_t_intervals():
    results = fake_results(CONSISTENT)
    over = results["paired"]["over_seeds"]
    bkspc = over[label(MLE, MLE_BKSPC)]
    assert bkspc["accuracy@0.2"]["difference"] == pytest.approx(40 / N)
    assert bkspc["accuracy@0.2"]["low"] > 0 and bkspc["accuracy@0"]["low"] < 0
    lines = "\n".join(conclusion(results))
    assert "- **mle-bkspc** vs mle: better at p=0.2 (+0.100 [" in lines
    assert "no significant difference at p=0." in lines.split("mle-bkspc** vs mle")[1]
    # seed 0 at p=0: 5 discordant questions, all for <bkspc>: Newcombe's interval excludes
    # zero but McNemar's exact p is 0.0625, so that seed does not count as a difference
    assert "Within single seeds, on the same items: better at p=0.2 on 3 of 3." in lines
    offline = next(line for line in lines.splitlines() if line.startswith("- **offline"))
    assert "better" not in offline.split(".")[0]  # one seed up, one down: no claim
    assert "no significant difference at p=0 and p=0.2" in offline
    assert "Within single seeds, on the same items: better at p=0.2 on 1 of 3" in offline
    online = next(line for line in lines.splitlines() if "vs offline-chi2-bkspc" in line)
    assert "worse at p=0 (" in online and "no significant difference at p=0.2" in online
    assert "The model samples cost 2.00x the offline objective's training" in lines
    assert "of the 8 intervals above, about 0.4 would exclude zero by chance" in lines


def test_per_seed_tests_are_recomputable_from_the_stored_outcomes():
    results = fake_results(CONSISTENT)
    for seed, record in results["seeds"].items():
        for a, b in COMPARISONS:
            stored = results["paired"]["per_seed"][seed][label(a, b)]["accuracy@0.2"]
            outcomes = {
                m: decode_outcomes(
                    next(e for e in record["methods"][m]["sweep"] if e["noise_prob"] == 0.2)[
                        "outcomes"
                    ]
                )
                for m in (a, b)
            }
            again = mcnemar(outcomes[a], outcomes[b]).as_dict()
            assert stored == pytest.approx(again)
            assert stored["method"] == "mcnemar+newcombe"


def test_one_seed_claims_nothing_beyond_its_items():
    results = fake_results(CONSISTENT[:1])
    lines = "\n".join(conclusion(results))
    assert lines.startswith("One seed: there is no interval over seeds")
    assert "(this seed's items): p=0: " in lines and "p=0.2: better (+0.095 [" in lines
    over = results["paired"]["over_seeds"][label(MLE, MLE_BKSPC)]["accuracy@0.2"]
    assert math.isnan(over["low"])


def table_rows(body: str, heading: str) -> dict[str, list[str]]:
    """The rows of the first markdown table after ``heading``: its label (the cells before
    the first ``p=`` column, joined by ``" | "``) -> the cells of the ``p=`` columns."""
    lines = body[body.index(heading) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    first = next(i for i, name in enumerate(header) if name.startswith("p="))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        rows[" | ".join(cells[:first])] = cells[first:]
    return rows


def test_the_report_body_shows_every_table_and_the_timing():
    results = fake_results(CONSISTENT)
    body = render(results, ArithmeticComparison())
    for heading in (
        "### Each method: mean over 3 seed(s)",
        "### Paired differences over seeds",
        "### Per seed, paired on the same items",
        "### What the intervals support",
    ):
        assert heading in body  # fmt: skip
    over_seeds = table_rows(body, "### Paired differences over seeds")
    per_seed = table_rows(body, "### Per seed, paired on the same items")
    cell = over_seeds["mle-bkspc vs mle"][0]  # p=0
    assert label(MLE, MLE_BKSPC) == "mle-bkspc vs mle"
    over = results["paired"]["over_seeds"][label(MLE, MLE_BKSPC)]["accuracy@0"]
    assert cell == f"{over['difference']:+.3f} [{over['low']:+.3f}, {over['high']:+.3f}] n.s."
    seeds = [float(per_seed[f"{seed} | mle-bkspc vs mle"][0].split()[0]) for seed in range(3)]
    assert seeds == [0.012, -0.005, 0.005]  # the per-seed rows, which differ from the mean
    assert float(cell.split()[0]) == pytest.approx(sum(seeds) / 3, abs=0.001)
    assert "**better** |" in body and "n.s." in body
    assert "| 2 | sequencematch-chi2-bkspc vs offline-chi2-bkspc | -0.027 [" in body
    assert "the whole comparison took 10.0 min" in body


def test_sampled_answers_are_paired_apart_from_greedy_ones_at_the_same_level():
    """A sampled evaluation at p=0 is its own metric: greedy p=0 ties, sampled p=0 differs on
    every seed, and the report says so for each, with its own column."""
    per_seed = []
    for seed, gain in enumerate((40, 44, 38)):
        results = fake_results(CONSISTENT)  # greedy entries of the consistent seeds
        methods = results["seeds"][str(seed)]["methods"]
        for method, entry in methods.items():
            greedy = _level_of(entry, 0.0)
            sampled = greedy - 60 + (gain if method == ONLINE else 0)
            entry["sweep"].append(_evaluation(0.0, sampled, temperature=1.0))
        per_seed.append(methods)
    seeds = {str(i): {"warmup": {"train_seconds": 30.0, "train_cpu_seconds": 30.0},
                      "methods": methods} for i, methods in enumerate(per_seed)}  # fmt: skip
    results = {"settings": {"levels": list(LEVELS), "sampled_levels": [0.0], "n_test": N},
               "seeds": seeds, "workers": 2, "threads_per_worker": 1}  # fmt: skip
    results["paired"] = summarise(results, ArithmeticComparison())
    over = results["paired"]["over_seeds"][label(MLE, ONLINE)]
    greedy_online = [per_seed[i][ONLINE] for i in range(3)]
    sampled = [_level_of(e, 0.0, sampled=True) - _level_of(e, 0.0) for e in greedy_online]
    assert sampled == [40 - 60, 44 - 60, 38 - 60]  # built as intended
    expected = sum(
        (_level_of(per_seed[i][ONLINE], 0.0, True) - _level_of(per_seed[i][MLE], 0.0, True)) / N
        for i in range(3)
    ) / 3  # fmt: skip
    assert over["sampled@0"]["difference"] == pytest.approx(expected)
    assert over["sampled@0"]["low"] > 0  # better when sampling ...
    assert over["accuracy@0"]["difference"] < 0  # ... though worse greedily
    table = ArithmeticComparison().table(results)
    assert "| method | p=0 | p=0.2 | p=0 sampled | forced tokens deleted at p=0.1 |" in table
    lines = "\n".join(conclusion(results))
    online = next(line for line in lines.splitlines() if line.startswith("- **sequencematch"))
    assert "better at p=0 sampled (" in online


def _level_of(entry: dict, p: float, sampled: bool = False) -> int:
    """Correct answers of ``entry`` at level ``p`` (greedy or sampled)."""
    (evaluation,) = [e for e in entry["sweep"] if e["noise_prob"] == p
                     and (e["temperature"] is not None) == sampled]  # fmt: skip
    return evaluation["outcomes"].count("1")


def test_the_four_methods_differ_only_in_what_defines_them(tmp_path):
    settings = DemoSettings.quick()
    configs = method_configs(settings, 5, tmp_path / "warmup" / "model", tmp_path)
    assert tuple(configs) == COMPARED_METHODS
    dicts = {name: config.to_dict() for name, config in configs.items()}

    def differing(a: str, b: str) -> set[str]:
        return {key for key in dicts[a] if dicts[a][key] != dicts[b][key]} - {"output_dir"}

    assert differing(MLE, MLE_BKSPC) == {"backspace", "p_noise"}
    assert differing(MLE_BKSPC, OFFLINE) == {"method"}
    assert differing(OFFLINE, ONLINE) == {"method"}
    assert configs[OFFLINE].objective().kind == "offline"  # data-only for every step
    assert configs[OFFLINE].mle_warmup() == settings.steps
    assert dicts[ONLINE]["mle_warmup_steps"] == 0  # samples from the first step
    for values in dicts.values():
        assert values["model"] == str(tmp_path / "warmup" / "model")
        assert values["seed"] == 5 and values["steps"] == settings.steps
        assert values["lr"] == settings.lr and values["regularise_warmup"] is True
    warmup = warmup_config(settings, 5, tmp_path / "warmup").to_dict()
    assert warmup["method"] == "mle" and warmup["backspace"] is False
    assert warmup["steps"] == settings.warmup_steps and warmup["p_noise"] == 0.0


def test_the_offline_method_never_samples_and_the_online_one_does(tmp_path):
    settings = with_overrides(DemoSettings.quick(), warmup_steps=6, steps=4, n_train=64)
    _train(warmup_config(settings, 0, tmp_path / "warmup"), progress=False)
    configs = method_configs(settings, 0, tmp_path / "warmup" / "model", tmp_path)
    logged = {}
    for name in (OFFLINE, ONLINE):
        config = configs[name].replace(log_every=1, refresh_every=2)
        _train(config, progress=False)
        lines = Path(config.output_dir, "metrics.jsonl").read_text().splitlines()
        logged[name] = [json.loads(line) for line in lines if '"phase"' in line]
    assert [r["phase"] for r in logged[OFFLINE]] == ["mle"] * 4
    assert not any(key.startswith("sample/") for r in logged[OFFLINE] for key in r)
    assert all(r["regulariser"] > 0 for r in logged[OFFLINE])  # the chi2 data terms are on
    assert [r["phase"] for r in logged[ONLINE]] == ["sequencematch"] * 4
    assert sum("sample/bkspc_rate" in r for r in logged[ONLINE]) == 2  # refills at steps 1, 3
    # the same objective on the first step (same batch, same start): only the samples differ
    assert logged[OFFLINE][0]["mle"] == pytest.approx(logged[ONLINE][0]["mle"])


def test_resume_may_add_seeds_but_not_change_anything_else(tmp_path, capsys):
    settings = DemoSettings.quick()
    prepare_output(tmp_path, settings, resume=False)
    (tmp_path / "seed-0").mkdir()
    prepare_output(tmp_path, with_overrides(settings, seeds=5), resume=True)
    assert (tmp_path / "seed-0").exists()  # kept for the resumed run
    with pytest.raises(ValueError, match="these differ: lr, steps"):
        prepare_output(tmp_path, with_overrides(settings, steps=3, lr=0.1), resume=True)
    with pytest.raises(RunFolderError, match="pass --overwrite to replace it"):
        prepare_output(tmp_path, settings, resume=False)  # an earlier demo: only when asked
    prepare_output(tmp_path, settings, resume=False, overwrite=True)
    assert not (tmp_path / "seed-0").exists()
    assert "replacing the previous demo run" in capsys.readouterr().out


def test_a_demo_written_before_a_setting_existed_resumes_with_its_default(tmp_path):
    settings = DemoSettings.quick()
    prepare_output(tmp_path, settings, resume=False)
    saved = tmp_path / "settings.json"
    written = json.loads(saved.read_text())
    del written["bkspc_reprobe"]  # a folder written before the setting was added
    saved.write_text(json.dumps(written))
    prepare_output(tmp_path, settings, resume=True)
    with pytest.raises(ValueError, match="these differ: bkspc_reprobe"):
        prepare_output(tmp_path, with_overrides(settings, bkspc_reprobe=True), resume=True)


def test_resume_never_drops_seeds(tmp_path):
    settings = with_overrides(DemoSettings.quick(), seeds=2)
    prepare_output(tmp_path, settings, resume=False)
    with pytest.raises(ValueError, match="--seeds 1 is fewer than the 2 seeds of the demo"):
        prepare_output(tmp_path, with_overrides(settings, seeds=1), resume=True)
    prepare_output(tmp_path, settings, resume=True)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--workers", "-3"], "--workers must be at least 1"),
        (["--p-noise", "1.5"], "p_noise must lie in [0, 1)"),
        (["--n-test", "0"], "--n-train and --n-test must be at least 1"),
        (["--model", "smollm2-13"], "model 'smollm2-13' is neither a preset"),
    ],
)
def test_bad_demo_options_are_refused_before_anything_is_trained_or_claimed(
    tmp_path, capsys, flags, message
):
    from sequencematch.apps.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--progress", "false", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists()


def test_bad_demo_settings_are_refused():
    with pytest.raises(ValueError, match="--seeds must be at least 1"):
        with_overrides(DemoSettings(), seeds=0)
    with pytest.raises(ValueError, match="--warmup-steps and --steps"):
        with_overrides(DemoSettings(), steps=0)
    with pytest.raises(ValueError, match="--corpus does not apply"):
        with_overrides(DemoSettings(), corpus="x.txt")
    for bad in ({"lr": 0.0}, {"lora_r": -1}):
        with pytest.raises(ValueError, match="--lr must be > 0 and --lora-r >= 0"):
            with_overrides(DemoSettings(), **bad)
    lora = with_overrides(DemoSettings.pretrained("smollm2-135m"), lora_r=64, lr=5e-4)
    assert (lora.lora_r, lora.lr) == (64, 5e-4)


def test_a_pretrained_comparison_probes_the_row_again_unless_it_runs_through_lora():
    """The pretrained arithmetic defaults: three seeds, task noise 0.05 and the <bkspc>
    methods' row probed again after their steps (not on text, where it raised perplexity); a
    LoRA comparison has no full row to probe, so --lora-r alone turns the second probe off,
    and asking for both is refused."""
    from sequencematch.apps.demos.text_demo import TextDemoSettings
    from sequencematch.evaluation.paired import MIN_SEEDS_FOR_A_CLAIM

    arithmetic = DemoSettings.pretrained("smollm2-135m").validate()
    text = TextDemoSettings.pretrained("smollm2-135m").validate()
    assert arithmetic.bkspc_reprobe and not text.bkspc_reprobe
    assert arithmetic.p_noise == 0.05 and DemoSettings().p_noise == 0.15
    assert min(arithmetic.seeds, text.seeds) >= MIN_SEEDS_FOR_A_CLAIM
    assert not DemoSettings().bkspc_reprobe  # from scratch: the row trains from the start
    configs = method_configs(arithmetic, 0, Path("warmup"), Path("seed"))
    assert [c.bkspc_reprobe for c in configs.values()] == [False, True, True, True]
    lora = with_overrides(arithmetic, lora_r=8)
    assert lora.lora_r == 8 and not lora.bkspc_reprobe
    with pytest.raises(ValueError, match="--bkspc-reprobe writes the row of a full model"):
        with_overrides(arithmetic, lora_r=8, bkspc_reprobe=True)
    said = "output row then fitted again as a linear probe on the trained features"
    for settings, says in ((arithmetic, True), (lora, False)):
        results = fake_results(CONSISTENT)
        results["settings"] |= json.loads(json.dumps(asdict(settings)))
        results["from_scratch"] = False
        assert (said in ArithmeticComparison().report(results, "", None)) == says


def _text_entry(completions: list[str]) -> dict:
    from sequencematch.evaluation.text_metrics import text_statistics

    evaluation = {"completions": completions, "mauve": None, "perplexity": 20.0,
                  "statistics": text_statistics(completions)}  # fmt: skip
    return {"eval": evaluation, "references": ["a b c d e"] * len(completions)}


def test_text_methods_are_compared_by_a_bootstrap_over_the_same_prompts():
    varied = [f"w{i} w{i + 1} w{i + 2} w{i + 3} w{i + 4} w{i + 5}" for i in range(0, 240, 6)]
    looping = ["la la la la la la"] * 20 + varied[20:]  # half the prompts loop
    entries = {"a": _text_entry(varied), "b": _text_entry(looping)}
    settings = {"bootstrap_resamples": 100, "n_test": 40, "mauve_seeds": 1}
    tested = TextComparison().within_seed(entries, [("a", "b")], settings)[("a", "b")]
    assert set(tested) == {"diversity"}  # no MAUVE computed, perplexity has no per-prompt values
    diversity = tested["diversity"]
    assert diversity.method == "bootstrap" and diversity.n == 40
    assert diversity.difference < 0 and diversity.high < 0  # the looping method is less diverse


def test_the_pretrained_text_demo_leaves_room_for_compounding_errors():
    """Fine-tuning a pretrained model on text: continuations of at least 128 of its tokens,
    three seeds (the fewest a claim over seeds needs), bf16 and the normalised value reading."""
    from sequencematch.apps.demos.text_demo import TextDemoSettings
    from sequencematch.evaluation.paired import MIN_SEEDS_FOR_A_CLAIM

    settings = TextDemoSettings.pretrained("smollm2-135m").validate()
    assert settings.completion_tokens >= 128 and settings.seeds >= MIN_SEEDS_FOR_A_CLAIM
    assert (settings.precision, settings.value_head) == ("bf16", "normalised")
    assert not settings.from_scratch() and settings.model == "smollm2-135m"


def test_a_pretrained_comparison_through_lora_adapters_and_its_report_says_so(tmp_path):
    """With --lora-r the warm-up still fine-tunes every weight and the four methods continue
    through LoRA adapters; the report describes what ran, not a preset."""
    assert DemoSettings.pretrained("smollm2-135m").lora_r == 0  # every weight by default
    settings = with_overrides(DemoSettings.pretrained("smollm2-135m"), lora_r=64, lr=5e-4)
    warmup = warmup_config(settings, 0, tmp_path / "warmup")
    configs = method_configs(settings, 0, tmp_path / "warmup" / "model", tmp_path)
    assert warmup.lora_r == 0 and warmup.model == "smollm2-135m"
    assert {c.lora_r for c in configs.values()} == {64}
    assert {c.lora_alpha for c in configs.values()} == {16.0}
    results = fake_results(CONSISTENT)
    results["settings"] |= json.loads(json.dumps(asdict(settings)))
    results["from_scratch"] = False
    report = ArithmeticComparison().report(results, "", None)
    warmup_text = "plain MLE fine-tuning every weight of `smollm2-135m`, 40 steps of 16 questions"
    assert warmup_text in report
    assert "through LoRA adapters (r 64, alpha 16," in report
    assert "from scratch" not in report and "width" not in report
    scratch = fake_results(CONSISTENT)
    scratch["settings"] |= json.loads(json.dumps(asdict(DemoSettings())))
    scratch["from_scratch"] = True
    report = ArithmeticComparison().report(scratch, "", None)
    assert "plain MLE from scratch, 600 steps of 32 questions, a `tiny_llama` model" in report
    assert "LoRA" not in report


def test_the_report_shows_each_methods_policy_when_it_was_measured():
    results = fake_results(CONSISTENT)
    assert "### The policy around the reference answer" not in render(
        results, ArithmeticComparison()
    )  # results written before the policy was measured
    for number, seed in enumerate(results["seeds"].values()):
        for method, entry in seed["methods"].items():
            p_eos = 0.9 + 0.01 * number if method == "mle" else 0.5
            entry["policy"] = {
                "p_eos": p_eos, "tail_at_end": 1 - p_eos, "p_bkspc_after_wrong": float("nan"),
                "p_bkspc_at_end": 0.0, "first_token_entropy": 1.0, "outside_top10": 0.0,
            }  # fmt: skip
    body = render(results, ArithmeticComparison())
    assert "### The policy around the reference answer (mean over 3 seed(s)" in body
    section = body.split("### The policy around the reference answer")[1]
    row = next(line for line in section.splitlines() if line.startswith("| mle |"))
    # P(eos) over the three seeds 0.90, 0.91, 0.92; no row measured deletion
    assert row.startswith("| mle | 0.910 [0.900, 0.920] | 0.090 [0.080, 0.100] | - |")


def test_the_demo_precision_option_overrides_the_pretrained_default():
    """``demo --precision fp32`` fine-tunes a pretrained model in float32 (faster on a CPU
    without bf16 units); without it the pretrained comparison keeps bf16."""
    from sequencematch.apps.cli import build_parser, demo_settings

    parser = build_parser()
    given = demo_settings(
        parser.parse_args(
            ["demo", "--model", "smollm2-135m", "--precision", "fp32", "--seeds", "3"]
        )
    )
    default = demo_settings(parser.parse_args(["demo", "--model", "smollm2-135m"]))
    assert (given.precision, given.seeds, default.precision) == ("fp32", 3, "bf16")
    assert warmup_config(given, 0, Path("w")).precision == "fp32"
