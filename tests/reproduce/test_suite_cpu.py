"""The suite end to end at CPU size, through its command line: two parts (an ensemble per training fraction; solo
arms from PyTorch-default init files) run through the same packing, scheduler, records and report as on a GPU.
`pytest -m suite` runs it alone; `python -m reproduce --size cpu` runs every part (docs/reproductions.md). The other
parts are checked through their plans (every part at both sizes, and the GPU estimates within the budget)."""
import json
import subprocess
import sys

import pytest

from core.errors import ConfigError
from reproduce.__main__ import BUDGET_S, main
from reproduce.plan import plan_part
from reproduce.studies import all_parts
from reproduce.throughput import GRACE_S

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def reproduce(*args):
    return subprocess.run([sys.executable, "-m", "reproduce", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.suite
def test_two_parts_at_cpu_size_give_a_report_with_a_table_per_study_and_a_record_per_run(tmp_path):
    done = reproduce("--size", "cpu", "--part", "nanda", "grokfast", "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["size"] == "cpu" and set(results["parts"]) == {"nanda", "grokfast"}
    runs = results["runs"]
    assert [(r["part"], r["seed"]) for r in runs] == [("nanda", 0), ("nanda", 1)] * 2 + [("grokfast", 0)] * 3
    for record in runs:
        assert record["status"] == "completed" and record["steps"] == record["max_steps"]
        assert record["commit"] and record["device"].startswith("cpu") and record["config"]["seed"] == record["seed"]
        assert (tmp_path / record["folder"] / "summary.json").is_file()  # a normal run folder
        assert record["measured"]["steps to val acc 0.99" if record["part"] == "nanda" else
                                  "steps to val acc 0.95"] is not None
    nanda = [r for r in runs if r["part"] == "nanda"]
    assert {r["process"] for r in nanda[:2]} == {"01-nanda-grok-fraction0.3-seeds0-1"}  # one ensemble a fraction
    assert all(r["config"]["init_from"].endswith(f"inits/seed{r['seed']}.pt") for r in runs if r["part"] == "grokfast")
    report = (tmp_path / "report.md").read_text()
    for title in ("Nanda et al. (2023)", "Grokfast: steps to generalise"):
        assert f"## {title}" in report
    assert report.count("| headline | source |") == 2 and "Not run yet (parts: routed_speed" in report
    assert "39,890 steps without a filter" in report and "hydra/launcher=ensemble" in report
    assert (tmp_path / "figures" / "nanda.png").is_file() and (tmp_path / "figures" / "grokfast.png").is_file()
    verdicts = {h["claim"]: h["verdict"] for h in results["headlines"]["grokfast"]}
    assert len(verdicts) == 5 and set(verdicts.values()) <= {"agrees within the seeds' spread", "differs",
                                                             "not reached in budget"}

    # the report compares with itself: nothing moved
    same = reproduce("compare", str(tmp_path), str(tmp_path / "results.json"))
    assert same.returncode == 0 and "no headline figure moved" in same.stdout


def test_every_gpu_part_is_estimated_within_the_budget_and_every_part_plans_at_cpu_size(tmp_path):
    for name, (study, part) in all_parts().items():
        gpu = plan_part(study, part, "gpu", tmp_path)
        assert gpu.estimate_s is not None and gpu.estimate_s <= BUDGET_S - GRACE_S, (name, gpu.estimate_s)
        cpu = plan_part(study, part, "cpu", tmp_path)
        assert cpu.estimate_s is None and all("threads=1" in p.command for p in cpu.processes)
        assert sum(len(p.runs) for p in cpu.processes) == len(part.runs("cpu"))


def test_plan_prints_every_process_and_runs_nothing(tmp_path, capsys):
    assert main(["--plan", "--size", "cpu", "--part", "conditions", "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    for part in ("conditions_answer", "conditions_full_batch", "conditions_all_positions"):
        assert f"## part {part} (study conditions, size cpu)" in printed
    assert "run=r1 seed=1337: 150 steps" in printed and not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="--part=.nope. is not allowed.*nanda"):
        main(["--plan", "--part", "nope"])


def test_every_planned_run_composes_at_both_sizes_and_every_ensemble_is_one_the_engine_takes(tmp_path):
    """What reaches the GPU machine first must compose there: every run's overrides (one seed of each) are valid
    keys and values of its experiment, at the source's size and at toy size; and an ensemble's first and last
    members are settings the ensemble engine supports (no diagnostics callback, ...) and differ only in packable
    values (the launcher would otherwise refuse them at the start of the part)."""
    from runtime.config.compose import compose_config
    from runtime.engines.members import check_supported, shared_part

    planned = {(tuple(spec.launch_overrides()), spec.seed) for _, part in all_parts().values()
               for size in ("gpu", "cpu") for spec in part.runs(size)}
    unique = {overrides: seed for overrides, seed in sorted(planned, key=lambda item: item[1], reverse=True)}
    for overrides, seed in unique.items():
        cfg = compose_config([*overrides, f"seed={seed}"])
        assert cfg.trainer.max_steps == int(overrides[-1].split("=")[1]) and cfg.seed == seed
    assert len(unique) > 50
    ensembles = 0
    for name, (study, part) in all_parts().items():
        for size in ("gpu", "cpu"):
            for process in plan_part(study, part, size, tmp_path).processes:
                if not process.ensemble:
                    continue
                ensembles += 1
                first, last = (compose_config([*spec.launch_overrides(), f"seed={spec.seed}"])
                               for spec in (process.runs[0], process.runs[-1]))
                check_supported(first)
                assert shared_part(first) == shared_part(last), (name, size, process.name)
    assert ensembles >= 20
