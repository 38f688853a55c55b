"""Headline figures over seeds and their verdicts, and `compare`: which figures moved beyond the seeds' spread.
Known values in, known verdicts out (no training)."""
import json

import pytest

from core.errors import ConfigError
from reproduce.compare import compare, main as compare_main, moved
from reproduce.headlines import AGREES, DIFFERS, NO_FIGURE, NOT_REACHED, NOT_RUN, Headline, Label, Ratio, Spread, Trend
from reproduce.records import steps_text


def record(seed, measured, **values):
    return {"seed": seed, "values": values, "measured": measured}


def steps(values, x="a"):
    return [record(seed, {"steps": v}, arm=x) for seed, v in enumerate(values)]


def test_spread_puts_unreached_seeds_above_every_number_and_keeps_their_bound():
    spread = Spread.of([300, {"more_than": 900}, 100, None, "label"])
    assert spread.values == (100, 300, {"more_than": 900})
    assert (spread.median, spread.lo, spread.least_bound) == (300, 100, 900)
    assert spread.describe() == "300 (100 to > 900)"
    assert Spread.of([{"more_than": 500}, {"more_than": 400}, 7]).median is None  # the median seed not reached
    assert Spread.of([{"more_than": 500}, {"more_than": 400}, 7]).describe() == "> 400"


def test_a_headline_agrees_when_the_source_lies_in_the_seeds_range_widened_by_its_tolerance():
    runs = steps([900, 1000, 1100])
    exact = Headline("c", "steps", {"arm": "a"}, 1150, "1150", "q", "w")
    loose = Headline("c", "steps", {"arm": "a"}, 1150, "1150", "q", "w", rel=0.1)
    assert exact.evaluate(runs)["verdict"] == DIFFERS           # 1150 > 1100
    assert loose.evaluate(runs)["verdict"] == AGREES            # 1150 <= 1100 * 1.1
    entry = loose.evaluate(runs)
    assert (entry["median"], entry["lo"], entry["hi"], entry["seeds"]) == (1000, 900, 1100, [0, 1, 2])
    assert Headline("c", "steps", {"arm": "a"}, None, "-", "q", "w").evaluate(runs)["verdict"] == NO_FIGURE
    assert exact.evaluate(steps([900], x="b"))["verdict"] == NOT_RUN
    unreached = steps([900, {"more_than": 2000}, {"more_than": 2000}])
    assert exact.evaluate(unreached)["verdict"] == NOT_REACHED


def test_a_ratio_pairs_seeds_and_a_numerator_not_reached_is_a_bound():
    runs = [*steps([400, 500], x="slow"), *steps([100, 250], x="fast")]
    ratio = Ratio("r", "steps", {"arm": "slow"}, 3.0, "3x", "q", "w", over={"arm": "fast"})
    entry = ratio.evaluate(runs)
    assert entry["values"] == [2.0, 4.0] and entry["verdict"] == AGREES
    runs[0]["measured"]["steps"] = {"more_than": 1000}
    assert ratio.evaluate(runs)["values"] == [2.0, {"more_than": 10.0}]
    for fast in runs[2:]:
        fast["measured"]["steps"] = {"more_than": 300}  # no denominator reached: nothing to divide by
    assert ratio.evaluate(runs)["verdict"] == NOT_REACHED


def test_a_label_agrees_when_any_seed_shows_the_source_s_outcome_and_a_trend_needs_separated_ends():
    runs = [record(0, {"d": "grokking"}, run="r1"), record(1, {"d": "memorisation"}, run="r1")]
    assert Label("l", "d", {"run": "r1"}, "grokking", "g", "q", "w").evaluate(runs)["verdict"] == AGREES
    assert Label("l", "d", {"run": "r1"}, "oscillation", "o", "q", "w").evaluate(runs)["verdict"] == DIFFERS
    falls = Trend("t", "steps", {}, "falls", "falls", "q", "w", x="f")
    curve = [record(s, {"steps": v}, f=f) for f, values in ((0.3, [900, 1200]), (0.7, [200, 300]))
             for s, v in enumerate(values)]
    assert falls.evaluate(curve)["verdict"] == AGREES
    curve[-1]["measured"]["steps"] = 950  # the ends' seed ranges overlap
    assert falls.evaluate(curve)["verdict"] == DIFFERS


def test_compare_flags_figures_outside_each_other_s_spread_and_exits_1(tmp_path, capsys):
    base = {"claim": "c", "measured": "-", "rel": 0.0, "abs": 0.0, "verdict": AGREES, "values": []}
    a = {**base, "median": 1000, "lo": 900, "hi": 1100}
    assert moved(a, {**base, "median": 1050, "lo": 1000, "hi": 1300}) is None
    assert moved(a, {**base, "median": 3000, "lo": 2500, "hi": 3500}) == "higher"
    assert moved(a, {**base, "median": None, "lo": None, "hi": None}) == "reached in one only"
    assert moved(a, {**base, "median": 3000, "lo": 2500, "hi": 3500, "rel": 2.0}) is None  # the stated tolerance
    reports = []
    for name, entry in (("A", a), ("B", {**base, "median": 3000, "lo": 2500, "hi": 3500})):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps(
            {"headlines": {"nanda": [entry]}, "parts": {"nanda": {"commit": name.lower() * 6, "device": "gpu"}}}))
        reports.append(folder)
    lines, count = compare(json.loads((reports[0] / "results.json").read_text()),
                           json.loads((reports[1] / "results.json").read_text()))
    assert count == 1 and "**higher**" in lines[-1]
    assert compare_main(*reports) == 1 and compare_main(reports[0], reports[0]) == 0
    assert "commit aaaaaa" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="report"):
        compare_main(tmp_path / "missing", reports[0])


def test_steps_text_says_more_than_for_every_run_cut_short_and_names_a_cap():
    done = {"steps": 4100, "max_steps": 16000, "source_steps": 40000, "status": "completed", "stopped": None}
    assert steps_text(done) == "4,100"
    assert steps_text({**done, "steps": 16000}) == "16,000 (cap; source 40,000)"
    stopped = {**done, "steps": 5300, "status": "interrupted", "stopped": "stopped at the deadline (SIGTERM)"}
    assert steps_text(stopped) == "> 5,300 (interrupted: stopped at the deadline (SIGTERM))"
    assert steps_text({**done, "steps": 0, "status": "no summary"}).startswith("> 0")
