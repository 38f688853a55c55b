"""The scheduler's deadline: nothing is dropped. A process still running at the deadline gets SIGTERM (and SIGKILL
after the grace period if it ignores it), a process that never got a slot is reported as not started, and a real
run cut at the deadline keeps its run folder and is reported as "> N steps" with its status."""
import sys

from reproduce.packing import pack
from reproduce.plan import PartPlan
from reproduce.records import steps_text
from reproduce.runner import run_parts
from reproduce.scheduler import KILLED, NOT_STARTED, TERMINATED, Job, run_jobs
from reproduce.suite import Part, RunSpec
from reproduce.studies import nanda


def shell(tmp_path, name, script):
    return Job(name, ["sh", "-c", script], tmp_path / f"{name}.log")


def test_every_process_gets_an_outcome_whatever_the_deadline_did_to_it(tmp_path):
    jobs = [shell(tmp_path, "quick", "exit 3"),
            shell(tmp_path, "polite", f"trap 'echo stopped > {tmp_path}/polite; exit 0' TERM; sleep 60 & wait"),
            shell(tmp_path, "stubborn", "trap '' TERM; sleep 60"),
            shell(tmp_path, "late", "exit 0")]
    # two slots: quick ends at once and stubborn takes its slot; late waits for a slot that never frees
    outcomes = run_jobs(jobs, budget_s=4.0, slots=2, grace_s=2.0, say=lambda _: None, poll_s=0.05)
    by_name = {o.name: o for o in outcomes}
    assert [o.name for o in outcomes] == ["quick", "polite", "stubborn", "late"]
    assert (by_name["quick"].returncode, by_name["quick"].stopped) == (3, None)
    assert (by_name["polite"].returncode, by_name["polite"].stopped) == (0, TERMINATED)
    assert (tmp_path / "polite").read_text().strip() == "stopped"
    assert (by_name["stubborn"].returncode, by_name["stubborn"].stopped) == (-9, KILLED)
    assert (by_name["late"].returncode, by_name["late"].started_s, by_name["late"].stopped) == (None, None,
                                                                                                 NOT_STARTED)
    assert by_name["stubborn"].ended_s >= 4.0 > by_name["polite"].ended_s >= 2.0  # SIGTERM at 2 s, SIGKILL at 4 s


def test_a_run_past_the_deadline_is_reported_with_its_steps_and_one_never_started_is_reported_too(tmp_path):
    """A real nanda run of 100,000 steps gets SIGTERM 30 s in (time enough to start on a busy machine): it stops
    at a step boundary, its summary says interrupted, and its record says "> N steps"; the second process (one
    slot) is never started and is reported as such. The report shows both."""
    toy = ("size=cpu", "data.p=23", "trainer.val_check_interval=25", "trainer.log_every_n_steps=25")
    long_run = RunSpec("nanda_grok", {"fraction": 0.5}, 0, 100_000, (*toy, "data.train_fraction=0.5"),
                       ensemble=False)
    never = RunSpec("nanda_grok", {"fraction": 0.7}, 0, 10, (*toy, "data.train_fraction=0.7"), ensemble=False)
    part = Part("deadline", "a run past its deadline", lambda size: [long_run, never])
    plan = PartPlan(nanda.STUDY, part, "cpu", pack([long_run, never], tmp_path / "runs" / "deadline", ["threads=1"]),
                    None)
    cut, not_started = run_parts([plan], tmp_path, budget_s=45.0, grace_s=15.0, slots=1, say=lambda _: None)
    assert cut["status"] == "interrupted" and cut["signal"] == "SIGTERM" and cut["stopped"] == TERMINATED
    assert 0 < cut["steps"] < 100_000 and cut["folder"] == "runs/deadline/01-nanda-grok-fraction0.5-seed0"
    assert steps_text(cut).startswith(f"> {cut['steps']:,} (interrupted")
    assert (tmp_path / cut["folder"] / "summary.json").is_file()
    assert (not_started["status"], not_started["stopped"], not_started["folder"]) == ("not started", NOT_STARTED,
                                                                                       None)
    report = (tmp_path / "report.md").read_text()
    assert f"> {cut['steps']:,} (interrupted" in report and "> 0 (not started" in report
    assert sys.executable in " ".join(cut["command"])
