"""The opt-in CUDA-graph training step (`module.cuda_graph=true`): forward, loss, backward, clipping and the
fused AdamW update of one full-batch step captured once and replayed every step after.

Tiny grokking models are launch-bound on a GPU: a step is a few hundred kernels of microseconds each, and the
CPU time to issue them (Python, autograd, the optimiser) is the step time. A replay issues them all at once.

How it runs: the first `max(warmup_steps, 3)` steps are eager (the learning-rate warmup changes the lr each step;
afterwards it is constant, so a float lr can be baked into the graph). Then forward and backward are warmed up
on a side stream (gradients only, weights untouched), and one step is captured: its inputs are the full-batch
tensors, which never move. From then on the optimiser's `step()` replays the graph, so Lightning still counts
steps and calls its hooks around it.

NaN guard inside the graph: a running sum of the losses since capture turns non-finite at the first bad loss and
stays so; it sets the fused kernel's `found_inf`, so that step and every later one leave weights and moments as
they were, and a device counter records the first bad step. The module reads both on logging steps.

Limits (refused by key at fit start): CUDA only, full-batch training, 32-bit precision, one device, and no
callback that acts inside the step (Grokfast's gradient filter) or changes between steps a number the capture
baked in (temperature annealing). Callbacks that act between steps on the host or on device tensors (checkpoints,
a stop request honoured before a step starts, clocks) run around the replays as around eager steps.
"""
from __future__ import annotations

from typing import Callable

import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from core.errors import ConfigError, require
from lightning_modules.step import StepResult

KEY = "module.cuda_graph"
# hooks that run inside a step, between its forward and its update: a replay runs the whole step at once, so a
# callback acting there is not seen (the backward hooks are not called; `on_before_optimizer_step` runs before
# the replay, on the gradients the replay then overwrites). Hooks between steps (`on_train_batch_start`,
# `on_train_batch_end`, validation, checkpoints) run around replays as around eager steps.
STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step", "on_before_zero_grad")


class GraphedAdamW(torch.optim.AdamW):
    """Fused AdamW whose `step()` replays the captured training step once one is set (`replay`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.replay: Callable[[], None] | None = None

    def step(self, closure=None):
        if self.replay is None:
            return super().step(closure)
        if closure is not None:
            closure()  # Lightning's hooks around the step (the closure itself does nothing in manual mode)
        self.replay()
        return None

    def update(self) -> None:
        """The real AdamW update (what gets captured)."""
        super().step()


class CapturedStep:
    """One captured training step and the tensors it leaves behind (static: rewritten by every replay)."""

    def __init__(self, compute: Callable[[], StepResult], parameters: list[Tensor],
                 optimizer: GraphedAdamW, clip: float | None, first_step: int, warmup_iterations: int = 3):
        """compute: the step's forward and losses (a `StepResult`, whose `total` is minimised).
        first_step: the global step the first replay is (steps done before it)."""
        device = parameters[0].device
        self.loss_sum = torch.zeros((), device=device)
        self.found_inf = torch.zeros((), device=device)
        self.counter = torch.full((), first_step, dtype=torch.long, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # lazy initialisations happen here, not during capture
            for _ in range(warmup_iterations):
                optimizer.zero_grad(set_to_none=True)
                compute().total.backward()
        torch.cuda.current_stream().wait_stream(side)
        optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.result = compute()  # its tensors are rewritten in place by every replay
            self.result.total.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(parameters, clip, foreach=True)
            self._guard(self.result.total.detach())
            optimizer.found_inf = self.found_inf
            optimizer.update()
        optimizer.replay = self.graph.replay

    def _guard(self, loss: Tensor) -> None:
        was_finite = torch.isfinite(self.loss_sum)
        self.loss_sum.add_(loss)
        bad = ~torch.isfinite(self.loss_sum)
        self.first_bad.copy_(torch.where(was_finite & bad, self.counter, self.first_bad))
        self.found_inf.copy_(bad)
        self.counter.add_(1)

    def first_bad_step(self) -> int | None:
        """The step whose loss was first non-finite since capture (one host read), or None."""
        step = int(self.first_bad)
        return None if step < 0 else step


def check_graphable(trainer, module) -> None:
    """Refuse, naming `module.cuda_graph`, what a captured step cannot honour: a device other than CUDA, and
    everything `check_step_setup` refuses."""
    require(trainer.strategy.root_device.type == "cuda", KEY, True, "false unless training on a CUDA device")
    check_step_setup(trainer, module, trainer.datamodule)


def check_step_setup(trainer, module, datamodule) -> None:
    """Everything but the device that a captured step cannot honour (it needs no GPU, so it runs on a CPU too):
    several devices, reduced precision, a changing lr, data-dependent shapes, mini-batches, and callbacks that act
    inside the step (`STEP_HOOKS`) or change between steps a number the capture baked in (a callback says so by
    naming it in `changes_between_steps`, e.g. "net.temperature")."""
    require(trainer.world_size == 1, KEY, True, "false with more than one device")
    require(str(trainer.precision) in ("32-true", "32"), KEY, True, f"false with precision={trainer.precision}")
    recipe = getattr(module, "recipe", None)
    require(recipe is None or recipe.schedule == "constant", KEY, True,
            f"false with optimizer.schedule={getattr(recipe, 'schedule', None)} (the captured step bakes in the lr "
            f"it has after the warmup)")
    net = getattr(module, "net", None)
    require(net is None or not any(getattr(part, "data_dependent_shapes", False) for part in net.modules()),
            KEY, True, "false for a net whose parts route tokens by the data (a mixture of experts: its shapes change "
                       "every step)")
    require("train" in getattr(datamodule, "splits", {}), KEY, True,
            f"false for {type(datamodule).__name__}, which holds no training split in memory (a captured step "
            f"replays one full batch that never moves)")
    # the task's own train loader says whether it serves the whole split every step
    require(getattr(datamodule.train_dataloader(), "full_batch", False), KEY, True,
            "false with mini-batches (data.batch_size=-1: the full batch is the captured input)")
    for callback in trainer.callbacks:
        name = type(callback).__name__
        if changed := getattr(callback, "changes_between_steps", None):
            raise ConfigError(KEY, True, f"false with {name}, which changes {changed} between steps (a captured "
                                         f"step keeps the value it had at capture)")
        if getattr(callback, "cuda_graph_safe", False):
            continue  # it stands aside while the module captures the step
        acting = [hook for hook in STEP_HOOKS if getattr(type(callback), hook) is not getattr(Callback, hook)]
        if acting:
            raise ConfigError(KEY, True, f"false with {name}, which acts inside each step ({acting[0]})")
