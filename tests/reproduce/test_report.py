"""results.json and report.md: running a part again replaces that part's records, entry and section and leaves the
other parts' as they were. Synthetic records (no training)."""
import json

from reproduce.records import replace_part, save_results
from reproduce.report import headlines_of, write_report


def record(part, study, seed, steps, **values):
    return {"study": study, "part": part, "seed": seed, "values": values, "status": "completed", "steps": steps,
            "max_steps": 20000, "source_steps": None, "stopped": None, "wall_time_s": 10.0, "folder": None,
            "measured": {"steps to val acc 0.95": steps, "final val acc": 1.0}}


def entry(commit):
    return {"size": "gpu", "commit": commit, "device": "NVIDIA H200", "started": "2026-12-04T00:00:00+00:00",
            "wall_s": 300.0, "budget_s": 540.0, "estimate_s": 290.0, "processes": []}


def test_a_part_run_again_replaces_its_records_and_section_and_keeps_the_others(tmp_path):
    results = {"format": 1, "size": "gpu", "parts": {}, "runs": [], "headlines": {}}
    standard = [record("routed_speed", "routed", s, v, model="standard", regularizer="none", **{"lambda": 0.0})
                for s, v in ((0, 4500), (1, 4700), (2, 4900))]
    results = replace_part(results, "routed_speed", entry("aaa"), standard)
    sparsity = [record("routed_sparsity", "routed", 0, 17000, model="routed", regularizer="sparsity",
                       **{"lambda": 0.1})]
    results = replace_part(results, "routed_sparsity", entry("aaa"), sparsity)
    rerun = [{**r, "steps": r["steps"] * 3, "measured": {**r["measured"], "steps to val acc 0.95": r["steps"] * 3}}
             for r in standard]
    results = replace_part(results, "routed_speed", entry("bbb"), rerun)
    results["headlines"] = headlines_of(results)
    save_results(tmp_path, results)
    write_report(tmp_path, results)

    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["part"] for r in saved["runs"]] == ["routed_sparsity"] + ["routed_speed"] * 3
    assert [r["steps"] for r in saved["runs"] if r["part"] == "routed_speed"] == [13500, 14100, 14700]
    assert (saved["parts"]["routed_speed"]["commit"], saved["parts"]["routed_sparsity"]["commit"]) == ("bbb", "aaa")
    standard_figure = next(h for h in saved["headlines"]["routed"] if h["claim"].startswith("standard"))
    assert (standard_figure["median"], standard_figure["verdict"]) == (14100, "differs")  # 4,600 is outside
    sparse_figure = next(h for h in saved["headlines"]["routed"]
                         if h["claim"].startswith("routed, sparsity λ = 0.1: steps"))
    assert (sparse_figure["median"], sparse_figure["verdict"]) == (17000, "agrees within the seeds' spread")
    report = (tmp_path / "report.md").read_text()
    assert "part `routed_speed`: gpu size, commit bbb" in report
    assert "part `routed_sparsity`: gpu size, commit aaa" in report
    assert "Parts not run yet: routed_none" in report and "## Nanda et al." in report and "Not run yet" in report
    assert (tmp_path / "figures" / "routed.png").is_file()
