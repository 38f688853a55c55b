"""The studies' multirun presets (conf/sweep/) of the routed-transformer and least-action studies: every job of each
composes at size=cpu with the experiment its header names, and its net and regularisers build. (Each experiment
runs at size=cpu in tests/test_sizes.py; the presets only change values, so building what each job would train
catches a key that does not exist or a value the net refuses.)"""
import pytest
import torch
from hydra.utils import instantiate

from runtime.config.build import build_net
from runtime.config.compose import compose_config
from tests.test_least_action_preset import preset_jobs

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
