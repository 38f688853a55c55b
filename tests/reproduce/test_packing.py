"""Which planned runs share an ensemble: runs that differ only in packable values (seed, lr, weight decay,
regulariser weights) form one multirun of the ensemble launcher, whose sweep is exactly their grid; anything else
(another experiment, another non-packable override, a run marked solo or starting from a PyTorch-default init) is a
process of its own. Pure planning: nothing is composed or run."""
from pathlib import Path

from reproduce.packing import ensemble_groups, grid, pack
from reproduce.studies import conditions, grokfast, least_action, moe, nanda
from reproduce.studies import all_parts, select_parts
from reproduce.suite import RunSpec

OUT = Path("/nonexistent/out")


def sweep_of(command):
    """{key: [values]} of the comma-separated sweeps in a multirun command."""
    return {arg.split("=")[0]: arg.split("=", 1)[1].split(",") for arg in command if "," in arg and "=" in arg}


def test_nanda_packs_each_fraction_s_eight_seeds_into_one_ensemble():
    processes = pack(nanda.runs("gpu"), OUT)
    assert [len(p.runs) for p in processes] == [8, 8, 8, 8]
    for process, fraction in zip(processes, (0.3, 0.4, 0.5, 0.7)):
        assert process.ensemble and {r.values["fraction"] for r in process.runs} == {fraction}
        assert sweep_of(process.command) == {"seed": [str(s) for s in range(8)]}
        assert f"data.train_fraction={fraction}" in process.command
        assert "hydra.launcher.max_members=8" in process.command
        assert process.command[-1] == f"hydra.sweep.dir={OUT / process.name}"


def test_least_action_s_lambdas_and_seeds_share_one_ensemble_as_a_grid():
    (process,) = pack(least_action.runs("gpu"), OUT)
    assert len(process.runs) == 21 and process.ensemble
    sweep = sweep_of(process.command)
    assert sweep["seed"] == ["0", "1", "2"]
    assert sorted(map(float, sweep["regularizer.compute.weight"])) == sorted(least_action.LAMBDAS)


def test_a_conditions_pair_differing_only_in_weight_decay_shares_an_ensemble():
    processes = pack(conditions.runs_of(("r1", "r2", "r5", "r6"))("gpu"), OUT)
    assert [[r.values["run"] for r in p.runs] for p in processes] == [["r1", "r2"], ["r5", "r6"]]
    assert sweep_of(processes[0].command) == {"optimizer.weight_decay": ["0.0", "1.0"]}
    assert "seed=1337" in processes[0].command and "conditions=r1" in processes[0].command


def test_runs_that_cannot_share_a_step_are_solo_processes():
    # grokfast: each arm from a PyTorch-default init made before launch; moe: data-dependent routing
    for processes in (pack(grokfast.runs("gpu"), OUT), pack(moe.runs("gpu"), OUT)):
        solos = [p for p in processes if not p.ensemble]
        assert all(len(p.runs) == 1 and "-m" not in p.command for p in solos)
    processes = pack(grokfast.runs("gpu"), OUT)
    assert len(processes) == 9
    assert all(any(a.startswith("init_from=") for a in p.command) and p.inits for p in processes)
    moe_processes = pack(moe.runs("gpu"), OUT)
    dense = [p for p in moe_processes if p.ensemble]
    assert len(dense) == 1 and {r.values["ffn"] for r in dense[0].runs} == {"dense"} and len(dense[0].runs) == 3


def test_members_that_are_not_a_grid_split_into_one_ensemble_per_combination():
    runs = [RunSpec("mlp_grok", {"wd": wd}, seed, 100, (f"optimizer.weight_decay={wd}",))
            for wd, seed in ((0.0, 0), (0.0, 1), (1.0, 0))]  # wd 1 lacks seed 1: a sweep would add it
    assert not grid(runs)
    groups = ensemble_groups(runs)
    assert [[(r.values["wd"], r.seed) for r in g] for g in groups] == [[(0.0, 0), (0.0, 1)], [(1.0, 0)]]
    processes = pack(runs, OUT)
    assert [p.ensemble for p in processes] == [True, False]
    assert "seed=0" in processes[1].command and "optimizer.weight_decay=1.0" in processes[1].command


def test_every_study_has_parts_and_every_part_runs_at_both_sizes():
    assert {study.name for study, _ in select_parts(None)} == {
        "nanda", "routed", "least_action", "conditions", "grokfast", "moe", "hybrid", "mqar"}
    for name, (study, part) in all_parts().items():
        for size in ("gpu", "cpu"):
            runs = part.runs(size)
            assert runs, (name, size)
            assert all(r.steps > 0 and (size == "gpu" or "size=cpu" in r.overrides or r.steps <= 300)
                       for r in runs), (name, size)
