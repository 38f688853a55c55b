"""The studies' multirun presets (conf/sweep/). Those of the routed-transformer and least-action studies: every job of
each composes at size=cpu with the experiment its header names, and its net and regularisers build. (Each experiment
runs at size=cpu in tests/test_sizes.py; the presets only change values, so building what each job would train
catches a key that does not exist or a value the net refuses.) Those of the seeds' comparisons (MoE expressivity at
3 digits, dense against MoE, the hybrid LM): they plan the jobs their studies run, each job composes to its arm's
settings, and a short job of each new preset runs at CPU size."""
from __future__ import annotations

import math

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from analysis.sweep import expand_sweep
from runtime.config.build import build_net
from runtime.config.compose import CONF_DIR, compose_config
from runtime.config.run_dir import sweep_name
from tests.conftest import run_quietly
from tests.test_least_action_preset import preset_jobs
from tests.test_sizes import SHORT, parameters

# preset -> the experiment it runs with (None: the preset sweeps the experiment), and its number of jobs
PRESETS = {
    "routed_vs_standard": (None, 4),
    "multi_op": (None, 2),
    "routing_lambda": ("routed_entropy", 4),
    "routing_lambda_sparsity": ("routed_sparsity", 4),
    "train_fraction": ("routed_entropy", 7),
    "compute_lambda": ("least_action", 7),
    "least_action_depth": ("least_action", 4),
    "least_action_width": ("least_action", 3),
    "least_action_difficulty": ("least_action", 6),
}


@pytest.mark.parametrize("sweep", sorted(PRESETS))
def test_every_job_of_a_study_preset_composes_at_cpu_size_and_builds(sweep):
    experiment, n_jobs = PRESETS[sweep]
    chosen = [] if experiment is None else [f"experiment={experiment}"]
    jobs = preset_jobs([*chosen, "size=cpu", f"sweep={sweep}"])
    assert len(jobs) == n_jobs
    for job in jobs:
        cfg = compose_config([*chosen, "size=cpu", *job])
        torch.manual_seed(0)
        spec = instantiate(cfg.data).spec
        assert sum(p.numel() for p in build_net(cfg.model, spec).parameters()) > 0, job
        for name, regularizer in cfg.regularizer.items():
            assert instantiate(regularizer).weight >= 0, (job, name)


@pytest.mark.parametrize("size", ["source", "cpu"])
@pytest.mark.parametrize("sweep", ["routed_vs_standard", "multi_op"])
def test_standard_and_routed_arms_differ_only_in_the_ffn_and_the_regulariser(sweep, size):
    """The ratio to the standard transformer compares FFNs on one task: at every size the arms share the data, the
    net's sizes, the optimiser and the schedule (at size=cpu the standard arm once ran transformer_grok's CPU form,
    p=59 and 30 % train, against the routed runs' p=31 and 50 %)."""
    jobs = preset_jobs([f"size={size}", f"sweep={sweep}"])
    shared = []
    for job in jobs:
        cfg = OmegaConf.to_container(composed([f"size={size}", *job]), resolve=True)
        model = {key: value for key, value in cfg["model"].items()
                 if key not in ("ffn", "n_ffn_heads", "_part_settings_")}  # the FFN and its settings
        shared.append((cfg["data"], model, cfg["optimizer"], cfg["trainer"], cfg["seed"]))
    assert all(arms == shared[0] for arms in shared[1:]), [job for job in jobs]


def composed(overrides):
    """The config a job runs, resolved at once (its name reads the Hydra config of the latest composition)."""
    cfg = compose_config(overrides)
    OmegaConf.resolve(cfg)
    return cfg


def planned_jobs(overrides):
    """(folder name, each job's overrides) of `python launch.py -m <overrides>`, as Hydra's basic sweeper plans them."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    params = [f"{key}={value}" for key, value in cfg.hydra.sweeper.params.items()]
    folder = sweep_name(list(overrides), cfg.hydra.sweeper.params, cfg.hydra.runtime.choices)
    return folder, expand_sweep(params, list(overrides))


def test_ffn_types_at_three_digits_are_the_four_types_over_five_seeds():
    folder, jobs = planned_jobs(["sweep=ffn_type_3digits"])
    assert folder == "sweep_ffn_type_3digits" and len(jobs) == 20
    configs = [composed(job) for job in jobs]
    assert sorted({(cfg.name, cfg.seed) for cfg in configs}) == sorted(
        (f"moe_expressivity_{ffn}", seed) for ffn in ("ffn", "glu", "moe", "moe_glu") for seed in range(5))
    assert {(cfg.data.n_digits, cfg.data.k, cfg.model.d_mlp) for cfg in configs} == {(3, 7, 256)}


def test_dense_against_moe_is_nandas_model_with_a_matched_mixture_of_experts(tmp_path):
    for size, p in (("source", 113), ("cpu", 59)):
        folder, jobs = planned_jobs(["sweep=dense_vs_moe", f"size={size}"])
        assert folder == "sweep_dense_vs_moe" and len(jobs) == 10
        dense, moe = (composed(job) for job in (jobs[0], jobs[5]))
        assert (dense.name, moe.name) == (("nanda_grok", "nanda_moe") if size == "source" else
                                          ("nanda_grok_cpu", "nanda_moe_cpu"))
        assert [composed(job).seed for job in jobs[:5]] == list(range(5))
        # the same task, model and training but for the FFN and its regulariser
        assert dense.data == moe.data and dense.data.p == p and dense.optimizer == moe.optimizer
        assert dense.trainer == moe.trainer
        assert {k: v for k, v in dense.model.items() if k != "ffn"} == {k: v for k, v in moe.model.items() if k != "ffn"}
        assert (moe.model.ffn.n_experts, moe.model.ffn.top_k, moe.model.ffn.match) == (4, 1, "dense_total")
        assert set(moe.regularizer) == {"balance", "z_loss"} and not dense.regularizer
    # matched in parameters: the mixture (experts and router) within 0.5 % of the dense net
    dense_count, moe_count = (parameters([f"experiment={name}"], tmp_path) for name in ("nanda_grok", "nanda_moe"))
    assert moe_count != dense_count and abs(moe_count - dense_count) / dense_count < 0.005


def test_the_hybrid_comparison_is_static_dynamic_fair_lr_and_sparse():
    folder, jobs = planned_jobs(["sweep=hybrid_comparison", "size=cpu"])
    assert folder == "sweep_hybrid_comparison"
    arms = [composed(job) for job in jobs]
    assert [(cfg.name, list(cfg.model.layers), cfg.optimizer.lr, cfg.model.get("routing_mode")) for cfg in arms] == [
        ("hybrid_static_cpu", ["gdn", "gdn", "gdn", "attn"], 1e-3, "dense"),
        ("hybrid_dynamic_cpu", ["gdn", "routed", "routed", "attn"], 2e-3, "dense"),
        ("hybrid_dynamic_fair_cpu", ["gdn", "routed", "routed", "attn"], 1e-3, "dense"),
        ("hybrid_dynamic_sparse_cpu", ["gdn", "routed", "routed", "attn"], 2e-3, "sparse")]
    # one text, size and schedule for all four arms
    assert all(cfg.data == arms[0].data and cfg.trainer == arms[0].trainer for cfg in arms)
    assert all(cfg.model.d_model == 128 for cfg in arms)


@pytest.mark.parametrize("job", [["experiment=moe_expressivity_moe_glu", "data.n_digits=3"],
                                 ["experiment=nanda_moe", "size=cpu"]], ids=["three_digits", "nanda_moe"])
def test_a_short_job_of_each_new_preset_runs(tmp_path, job):
    summary, _ = run_quietly([*job, *SHORT, "threads=1"], tmp_path)
    assert summary["status"] == "completed" and summary["steps"] == 2
    assert math.isfinite(summary["final"]["val/loss"])
