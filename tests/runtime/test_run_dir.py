"""Run names and multirun folder names (runtime/config/run_dir.py): a run says its size, a multirun over experiments
or sizes is named for its runs, one over a preset that sweeps them for the preset."""
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from runtime.config.compose import CONF_DIR
from runtime.config.run_dir import LONGEST_NAME, run_name, sweep_name

DEFAULT = {"experiment": "mlp_grok", "size": "source"}  # hydra.runtime.choices of a launch that chooses neither


def test_a_run_is_named_for_its_experiment_and_a_size_other_than_the_source():
    assert run_name("transformer_grok", "source") == "transformer_grok"
    assert run_name("transformer_grok", "cpu") == "transformer_grok_cpu"


def test_a_sweep_over_experiments_or_sizes_is_named_for_its_runs():
    both = ["experiment=transformer_grok,routed_none", "trainer.max_steps=5"]
    assert sweep_name(both, None, DEFAULT) == "transformer_grok+routed_none"
    # the choices come from the config composed without the swept values: size=cpu is in them, the experiments not
    assert sweep_name([*both, "size=cpu"], None, {**DEFAULT, "size": "cpu"}) == "transformer_grok_cpu+routed_none_cpu"
    sizes = ["experiment=nanda_grok", "size=source,cpu"]
    assert sweep_name(sizes, None, {**DEFAULT, "experiment": "nanda_grok"}) == "nanda_grok+nanda_grok_cpu"
    # a sweep of anything else shares one run name, as before
    assert sweep_name(["experiment=least_action", "seed=0,1"], None, {**DEFAULT, "experiment": "least_action"}) \
        == "least_action"
    assert sweep_name(["seed=0,1"], None, {**DEFAULT, "size": "cpu"}) == "mlp_grok_cpu"


def test_a_glob_over_experiments_names_each_experiment_it_matches():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        name = sweep_name(["experiment=glob(least_action*)"], None, DEFAULT, GlobalHydra.instance().config_loader())
    matched = sorted(path.stem for path in (CONF_DIR / "experiment").glob("least_action*.yaml"))
    assert len(matched) >= 2 and name == "+".join(matched)


def test_a_preset_that_sweeps_experiments_names_the_folder():
    ffn_type = {"experiment": "moe_expressivity_ffn,moe_expressivity_glu", "seed": "0,1"}
    assert sweep_name(["sweep=ffn_type"], ffn_type, DEFAULT) == "sweep_ffn_type"
    assert sweep_name(["sweep=[ffn_type,seeds]"], {**ffn_type, "seed": "0,1,2"}, DEFAULT) == "sweep_ffn_type+seeds"
    # a preset that sweeps neither leaves the name to the experiment
    assert sweep_name(["sweep=weight_decay"], {"optimizer.weight_decay": "0,1"}, DEFAULT) == "mlp_grok"
    # the command line's experiments replace the preset's (Hydra's sweeper takes the later value)
    assert sweep_name(["sweep=ffn_type", "experiment=add7,moe_expressivity"], ffn_type, DEFAULT) \
        == "add7+moe_expressivity"


def test_a_long_list_of_runs_is_shortened_to_a_name_a_file_system_takes():
    experiments = [f"experiment_number_{i}" for i in range(20)]
    name = sweep_name([f"experiment={','.join(experiments)}"], None, DEFAULT)
    assert name == "experiment_number_0+19_more" and len(name) <= LONGEST_NAME
