"""What `module.cuda_graph` decides, checked without a GPU: what `true` refuses and `auto` leaves eager (with why),
on a trainer stand-in that claims a CUDA device, and every preset's decision on its own parts."""
import re
from types import SimpleNamespace

import pytest
import torch

from callbacks import FiniteLossGuard, GrokkingTime, RunCheckpoint, TemperatureAnnealing
from callbacks.interventions.grokfast import Grokfast
from callbacks.run.throughput import Throughput
from core.errors import ConfigError
from datamodules import ModularArithmetic
from lightning_modules.cuda_graph import capture_blocker, check_graphable, step_setup_blocker
from tests.test_sizes import CPU_FORMS, EXPERIMENTS


def trainer(callbacks=(), precision="32-true", batch_size=-1):
    return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)), world_size=1,
                           precision=precision, datamodule=ModularArithmetic(p=7, batch_size=batch_size),
                           callbacks=list(callbacks), gradient_clip_algorithm=None)


def test_the_default_callbacks_are_allowed(tmp_path):
    # RunCheckpoint's on_train_batch_start and Throughput's run before a step starts, around the replay
    setting = trainer([FiniteLossGuard(), GrokkingTime(), RunCheckpoint(str(tmp_path)), Throughput()])
    check_graphable(setting, None)
    assert capture_blocker(setting, None) is None


@pytest.mark.parametrize("callback, name", [(Grokfast(), "Grokfast"),
                                            (TemperatureAnnealing(1.0, 0.1), "TemperatureAnnealing")])
def test_callbacks_acting_inside_a_step_are_refused_by_name(callback, name):
    with pytest.raises(ConfigError, match=f"module.cuda_graph=True is not allowed: expected auto or false with {name}"):
        check_graphable(trainer([callback]), None)
    assert capture_blocker(trainer([callback]), None).startswith(f"{name}, which")


@pytest.mark.parametrize("setting, message", [({"precision": "bf16-mixed"}, "precision=bf16-mixed"),
                                              ({"batch_size": 8}, "mini-batches")])
def test_other_settings_a_graph_cannot_honour_are_refused(setting, message):
    with pytest.raises(ConfigError, match=message):
        check_graphable(trainer(**setting), None)
    assert capture_blocker(trainer(**setting), None).startswith(message)


def test_clipping_by_value_is_refused():
    setting = trainer()
    setting.gradient_clip_algorithm = "value"
    with pytest.raises(ConfigError, match="gradient_clip_algorithm=value: a captured step clips by norm"):
        check_graphable(setting, None)


def test_a_task_without_an_in_memory_training_split_is_refused_by_name():
    setting = trainer()
    setting.datamodule = type("TextStream", (), {"train_dataloader": lambda self: iter(())})()  # no `splits`
    with pytest.raises(ConfigError, match="expected auto or false with TextStream, which holds no training split in "
                                          "memory"):
        check_graphable(setting, None)


def test_a_decaying_learning_rate_is_refused():
    from lightning_modules.optimization import AdamWRecipe

    module = SimpleNamespace(recipe=AdamWRecipe(schedule="cosine", decay_steps=100), net=None)
    with pytest.raises(ConfigError, match="optimizer.schedule=cosine"):
        check_graphable(trainer(), module)


def test_the_device_check_needs_cuda():
    setting = trainer()
    setting.strategy.root_device = torch.device("cpu")
    with pytest.raises(ConfigError, match="expected auto or false with a cpu device: a captured step needs CUDA"):
        check_graphable(setting, None)
    assert capture_blocker(setting, None) == "a cpu device: a captured step needs CUDA"
    assert step_setup_blocker(setting, None, setting.datamodule) is None  # the rest holds on a CPU


# every preset at the source's size, and at size=cpu those that have a CPU form (tests/test_sizes.py lists them)
PRESETS = [(name, "source") for name in EXPERIMENTS] + [(name, "cpu") for name in EXPERIMENTS if name in CPU_FORMS]
MINI_BATCHES = "mini-batches: a captured step replays the full batch, data.batch_size=-1"
MOE = "a net whose parts route tokens by the data: a mixture of experts' shapes change every step"
ANNEALED = ("TemperatureAnnealing, which changes net.temperature between steps: a captured step keeps the value it "
            "had at capture")
COSINE = "optimizer.schedule=cosine: a captured step bakes in the lr it has after the warmup"
# the presets whose step `auto` leaves eager on a CUDA device, with why; every other preset is captured
EAGER = {
    ("grokfast_paper", "source"): MINI_BATCHES, ("grokfast_paper", "cpu"): MINI_BATCHES,
    ("mqar", "source"): MINI_BATCHES,
    ("hybrid_static", "source"): "precision=bf16-mixed: a captured step runs in 32 bits",
    ("hybrid_dynamic", "source"): "precision=bf16-mixed: a captured step runs in 32 bits",
    ("hybrid_dynamic_fair", "source"): "precision=bf16-mixed: a captured step runs in 32 bits",
    ("hybrid_dynamic_sparse", "source"): "precision=bf16-mixed: a captured step runs in 32 bits",
    ("hybrid_static", "cpu"): COSINE, ("hybrid_dynamic", "cpu"): COSINE,
    ("hybrid_dynamic_fair", "cpu"): COSINE, ("hybrid_dynamic_sparse", "cpu"): COSINE,
    ("nanda_moe", "source"): MOE, ("nanda_moe", "cpu"): MOE,
    ("least_action_gumbel", "source"): ANNEALED, ("least_action_gumbel", "cpu"): ANNEALED,
    ("moe_expressivity_moe", "source"): MOE, ("moe_expressivity_moe_glu", "source"): MOE,
}


class Fitting:
    """A real trainer as it is during `fit` (its task attached), on a CUDA device where `cuda` says so (the only
    check a CPU cannot pass)."""

    def __init__(self, trainer, datamodule, cuda: bool):
        self.trainer, self.datamodule = trainer, datamodule
        self.strategy = SimpleNamespace(root_device=torch.device("cuda", 0)) if cuda else trainer.strategy

    def __getattr__(self, name):
        return getattr(self.trainer, name)


@pytest.mark.parametrize("experiment, size", PRESETS, ids=[f"{name}-{size}" for name, size in PRESETS])
def test_every_preset_is_captured_by_default_where_it_can_be_and_says_why_not_elsewhere(tmp_path, capsys,
                                                                                       experiment, size):
    """The preset's real data, net, module, callbacks and trainer (built as a launch builds them, on this machine's
    device), and the module's own decision at fit start on a trainer that claims CUDA: `auto` (the default) captures
    the eligible presets and leaves the others eager with one line saying why; `true` refuses those by key."""
    from runtime.config.compose import compose_config
    from runtime.engines.solo import SoloEngine
    from runtime.lifecycle.run import assemble

    cfg = compose_config([f"experiment={experiment}", f"size={size}"], output_dir=tmp_path)
    if cfg.data.get("corpus") == "package":  # the seed-size LM's optional corpus: the bundled text, cached here
        cfg.data.corpus, cfg.data.cache_dir = "bundled", str(tmp_path / "cache")
    parts = assemble(SoloEngine(cfg))
    module, on_cuda = parts.module, Fitting(parts.trainer, parts.datamodule, cuda=True)
    capsys.readouterr()
    module.plan_capture(on_cuda)
    printed = capsys.readouterr().out.splitlines()
    if (experiment, size) in EAGER:
        why = EAGER[experiment, size]
        assert not module.capture and module.cuda_graph_status == f"eager ({why})"
        assert printed == [f"[grokking-lab] note: training step eager, not captured in a CUDA graph "
                           f"(module.cuda_graph=auto), with {why}"]
        module.cuda_graph = True
        with pytest.raises(ConfigError, match="module.cuda_graph=True is not allowed: expected auto or false with "
                                              + re.escape(why)):
            module.plan_capture(on_cuda)
    else:
        assert module.capture and module.eager_because is None
        assert printed == [f"[grokking-lab] training step: captured in a CUDA graph from step {module.capture_step}"]
    module.cuda_graph = "auto"
    module.plan_capture(Fitting(parts.trainer, parts.datamodule, cuda=False))  # this machine's device: a CPU in CI
    if parts.trainer.strategy.root_device.type == "cpu":
        assert not module.capture and capsys.readouterr().out == ""


def test_sparse_token_routing_is_captured_and_a_mixture_of_experts_is_not():
    """Sparse routing's shapes follow the length alone (a fixed capacity per block), so the captured step takes a
    hybrid LM that routes sparsely; a mixture of experts still reads its experts' token counts on the host."""
    from functools import partial

    from nets import GatedDeltaNet, HybridLM, MoEFFN, SoftmaxAttention

    def hybrid(**settings):
        return HybridLM(7, 7, 8, layers=["gdn", "routed"], d_model=8, gdn=partial(GatedDeltaNet, n_heads=2),
                        attn=partial(SoftmaxAttention, n_heads=2), **settings)

    assert step_setup_blocker(trainer(), SimpleNamespace(net=hybrid(routing_mode="sparse")), trainer().datamodule) \
        is None
    assert step_setup_blocker(trainer(), SimpleNamespace(net=hybrid(ffn=partial(MoEFFN, n_experts=2))),
                              trainer().datamodule) == MOE
