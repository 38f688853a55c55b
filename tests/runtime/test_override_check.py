"""A misspelled override key is reported in one line with the closest setting, a renamed option with what replaces
it (runtime/config/override_check.py)."""

import pytest

from runtime.config.override_check import unknown_key_message

DATA = ("settings under data: batch_size, eval_batch_size, format, loss_on, op_token, operations, p, shuffle_seed, "
        "split_seed, test_fraction, train_fraction, val_fraction")
OPTIMIZER = ("settings under optimizer: betas, decay, decay_steps, declared_lr, eps, final_lr_fraction, fused, lr, "
             "schedule, warmup_steps, weight_decay")


@pytest.mark.parametrize(
    "args, message",
    [
        (["data.pp=5"], f"data.pp is not a setting; did you mean data.p? ({DATA})"),
        (["optimizer.weight_decy=0.5"],
         f"optimizer.weight_decy is not a setting; did you mean optimizer.weight_decay? ({OPTIMIZER})"),
        (["-m", "seed=0,1", "data.pp=5,7"], f"data.pp is not a setting; did you mean data.p? ({DATA})"),
        (["--multirun", "optimizer.weight_decy=range(0,3)"],
         f"optimizer.weight_decy is not a setting; did you mean optimizer.weight_decay? ({OPTIMIZER})"),
        (["--cfg", "job", "data.pp=5"], f"data.pp is not a setting; did you mean data.p? ({DATA})"),
        (["optimzer.lr=1e-3"], "optimzer.lr is not a setting; did you mean optimizer.lr? (top-level settings: "
                               "callbacks, ckpt_path, data, ensemble, final_weights, init_from, init_scale, logger, "
                               "matmul_precision, model, module, name, optimized_metric, optimized_mode, optimizer, "
                               "paths, regularizer, resume, seed, tags, threads, trainer)"),
        (["data.hidden_dim=64"], f"data.hidden_dim is not a setting; did you mean model.hidden_dim? ({DATA})"),
        # the group choices come first: the transformer's keys are known, the MLP's are not
        (["model.n_heds=2", "model=transformer"], "model.n_heds is not a setting; did you mean model.n_heads? "
         "(settings under model: activation, attn_bias, bias, d_mlp, d_model, ffn, init_scheme, init_std, mixer, "
         "n_heads, n_layers, norm, tie_weights)"),
        (["regularizer=entropy", "regularizer.entropy.weigth=1"], "regularizer.entropy.weigth is not a setting; did "
         "you mean regularizer.entropy.weight? (settings under regularizer.entropy: kind, weight, where)"),
    ],
)
def test_a_misspelled_key_is_named_with_the_closest_setting(args, message):
    assert unknown_key_message(args) == message


@pytest.mark.parametrize(
    "args",
    [
        [], ["seed=0,1"], ["experiment=routed_none", "size=cpu"], ["hydra.run.dir=x"], ["-m", "seed=0,1", "optimizer.lr=1e-3"],
        ["experiment=routed_none", "size=cpu", "model.n_ffn_heads=3"], ["model=transformer", "model.n_heads=2"],
        ["seed=range(0,3)"], ["-m", "experiment=routed_none,transformer_grok", "size=cpu,source", "model.n_heads=2"],
        ["+regularizer.extra._target_=tests.helpers.NaNAfter"], ["~data.val_fraction"], ["++data.new=1"],
        ["hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2"], ["--cfg", "job"], ["sweep=seeds"],
        ["data.operations=[add,mul]", "trainer.devices=[0,1]", "tags=[a,b]"],
    ],
)
def test_existing_keys_group_choices_sweeps_and_hydra_settings_pass(args):
    assert unknown_key_message(args) is None


@pytest.mark.parametrize("args", [["experiment=no_such_experiment", "data.pp=5"], ["--bogus-flag", "data.pp=5"],
                                  ["--help"], ["data.p=(("], ["--config-name", "other", "data.pp=5"]])
def test_what_cannot_be_checked_is_left_to_hydra(args):
    assert unknown_key_message(args) is None


@pytest.mark.parametrize("args, message", [
    (["experiment=transformer_grok_cpu"],
     "experiment=transformer_grok_cpu was renamed: use experiment=transformer_grok size=cpu"),
    (["-m", "experiment=mlp_grok,routed_cpu", "seed=0,1"],
     "experiment=routed_cpu was renamed: use experiment=routed_none size=cpu"),
    (["experiment=mqar_cpu", "data.pp=5"], "experiment=mqar_cpu was renamed: use experiment=mqar"),
    (["experiment=hybrid_static", "+lm_size=cpu"], "lm_size=cpu was renamed: use size=cpu"),
])
def test_a_renamed_option_is_one_line_with_what_replaces_it(args, message):
    assert unknown_key_message(args) == message
