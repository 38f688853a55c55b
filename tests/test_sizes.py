"""Sizes (conf/size/): every experiment composes at every size; an experiment's CPU form is stated once, in
conf/size/<experiment>/cpu.yaml, and reaches the experiments built on it; each experiment runs at size=cpu."""
import math

import pytest
import torch
from omegaconf import OmegaConf

from runtime.config.build import build_net
from runtime.config.compose import CONF_DIR, compose_config
from tests.conftest import run_quietly
from tests.helpers import task_spec

EXPERIMENTS = sorted(path.stem for path in (CONF_DIR / "experiment").glob("*.yaml"))
SIZES = sorted(path.stem for path in (CONF_DIR / "size").glob("*.yaml"))
# experiment -> the CPU forms it takes, in order (its own last): the README's experiment table, written out here so
# that a CPU form an experiment fails to pull in (its defaults entry is `optional`) is caught. The others run on a
# CPU as they are.
CPU_FORMS = {
    "transformer_grok": ["transformer_grok"],

    "nanda_grok": ["nanda_grok"],
    "nanda_project_defaults": ["nanda_grok"],
    "nanda_moe": ["nanda_grok"],
    **{name: ["transformer_grok", "routed_none"]
       for name in ("routed_none", "routed_entropy", "routed_sparsity", "routed_gini", "routed_multi_op",
                    "routed_baseline", "transformer_multi_op")},
    "conditions_study": ["conditions_study"],
    "grokfast_paper": ["grokfast_paper"],
    "hybrid_static": ["hybrid_static"],
    **{name: ["hybrid_static"] for name in ("hybrid_dynamic", "hybrid_dynamic_fair", "hybrid_dynamic_sparse")},
    **{name: ["least_action"] for name in ("least_action", "least_action_gumbel")},
    "least_action_routed": ["least_action", "least_action_routed"],
}
# experiments whose data choice follows the size (their defaults list: `override /data: <name>_${size}`): at
# size=cpu the source config to which the CPU forms are added takes that data
DATA_AT_CPU = {name: "data=hybrid_cpu" for name in ("hybrid_static", "hybrid_dynamic", "hybrid_dynamic_fair",
                                                    "hybrid_dynamic_sparse")}
# a run shortened to two steps, with one validation
SHORT = ["trainer.max_steps=2", "trainer.val_check_interval=2", "optimizer.warmup_steps=1",
         "callbacks.progress.refresh_seconds=1000"]
# shorter still where two steps are not what takes the time: the final numbers cover every split, and evaluating
# MQAR's 20,000 training examples takes ~15 s on one thread
SHORTER = {"mqar": ["data.n_train=2000"]}


def unnamed(cfg):
    """The config as a plain dict without its name (which says the size, and is checked on its own)."""
    return {key: value for key, value in OmegaConf.to_container(cfg, resolve=True).items() if key != "name"}


def parameters(overrides, cache_dir):
    cfg = compose_config(overrides)
    torch.manual_seed(0)
    return sum(p.numel() for p in build_net(cfg.model, task_spec(cfg.data, cache_dir)).parameters())


def test_the_sizes_are_source_and_cpu():
    assert SIZES == ["cpu", "source"]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_at_every_size(experiment, size):
    """At its source size an experiment is as conf/experiment/ writes it (the default size); at size=cpu it is that
    plus its CPU forms, and nothing else; the run's name says the size."""
    cfg = compose_config([f"experiment={experiment}", f"size={size}"])
    assert cfg.name == (experiment if size == "source" else f"{experiment}_{size}")
    source = compose_config([f"experiment={experiment}"])
    if size == "source":
        assert source.name == experiment and unnamed(cfg) == unnamed(source)
    else:
        forms = [OmegaConf.load(CONF_DIR / "size" / form / f"{size}.yaml") for form in CPU_FORMS.get(experiment, [])]
        if experiment in DATA_AT_CPU:
            source = compose_config([f"experiment={experiment}", DATA_AT_CPU[experiment]])
        assert unnamed(cfg) == unnamed(OmegaConf.merge(source, *forms)), \
            f"{experiment} at size={size} is not its source size plus {CPU_FORMS.get(experiment, 'nothing')}"


def test_every_cpu_form_belongs_to_an_experiment():
    forms = sorted(path.parent.name for path in (CONF_DIR / "size").glob("*/cpu.yaml"))
    assert forms == sorted({form for taken in CPU_FORMS.values() for form in taken})
    assert set(forms) <= set(EXPERIMENTS)  # conf/size/<experiment>/: named for the experiment that pulls it in


@pytest.mark.parametrize("experiment", sorted(CPU_FORMS))
def test_a_cpu_form_is_a_smaller_net(tmp_path, experiment):
    cpu = parameters([f"experiment={experiment}", "size=cpu"], tmp_path)
    assert cpu < parameters([f"experiment={experiment}"], tmp_path)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_at_cpu_size(tmp_path, experiment):
    overrides = [f"experiment={experiment}", "size=cpu", *SHORT, *SHORTER.get(experiment, [])]
    summary, _ = run_quietly(overrides, tmp_path)
    assert summary["status"] == "completed" and summary["steps"] == 2
    assert summary["experiment"] == f"{experiment}_cpu"
    assert summary["parameters"] == parameters(overrides, tmp_path)  # the net of the CPU form
    assert math.isfinite(summary["final"]["val/loss"])
