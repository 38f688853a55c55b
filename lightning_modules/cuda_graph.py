"""The captured training step (`module.cuda_graph`, default `auto`): forward, loss, backward, clipping and the
fused AdamW update of one full-batch step captured once in a CUDA graph and replayed every step after.

Tiny grokking models are launch-bound on a GPU: a step is a few hundred kernels of microseconds each, and the
CPU time to issue them (Python, autograd, the optimiser) is the step time. A replay issues them all at once.

When: `auto` captures wherever a captured step gives what the eager one gives (`capture_blocker` finds the first
reason it would not: a device other than CUDA, mini-batches, reduced precision, a decaying lr, a callback acting
inside the step, ...) and otherwise runs eager, saying why; `true` refuses such a run by key; `false` never
captures. The module decides when its fit starts.

How it runs: the first `max(warmup_steps, 3)` steps are eager (the learning-rate warmup changes the lr each step;
afterwards it is constant, so a float lr can be baked into the graph). Then forward and backward are warmed up
on a side stream (gradients only, weights untouched), and one step is captured: its inputs are the full-batch
tensors, which never move. From then on the optimiser's `step()` replays the graph, inside Lightning's automatic
optimisation: Lightning still counts steps (the same counter eager steps use, so a run resumes whichever way it was
stepped), steps the lr schedule and calls its hooks around the replay.

NaN guard inside the graph: a running sum of the losses since capture turns non-finite at the first bad loss and
stays so; it sets the fused kernel's `found_inf`, so that step and every later one leave weights and moments as
they were, and a device counter records the first bad step. The module reads both on logging steps.
"""
from __future__ import annotations

from typing import Callable

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import GradClipAlgorithmType
from torch import Tensor

from core.errors import ConfigError
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
            closure()  # Lightning's: the module's training_step (which leaves the step to the replay) and hooks
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
        clip: the gradients' total norm is clipped to this (None: not clipped).
        first_step: the global step the first replay is (steps done before it)."""
        device = parameters[0].device
        self.loss_sum = torch.zeros((), device=device)
        self.found_inf = torch.zeros((), device=device)
        self.counter = torch.full((), first_step, dtype=torch.long, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.result: StepResult | None = None
        self.warm_up(compute, optimizer, warmup_iterations)
        optimizer.zero_grad(set_to_none=True)
        optimizer.replay = self.record(lambda: self.body(compute, parameters, optimizer, clip))

    def warm_up(self, compute: Callable[[], StepResult], optimizer: GraphedAdamW, iterations: int) -> None:
        """Forward and backward a few times on a side stream, so that lazy initialisations happen before capture."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(iterations):
                optimizer.zero_grad(set_to_none=True)
                compute().total.backward()
        torch.cuda.current_stream().wait_stream(side)

    def body(self, compute: Callable[[], StepResult], parameters: list[Tensor], optimizer: GraphedAdamW,
             clip: float | None) -> None:
        """One whole step, as captured: forward and losses, backward, clipping, the NaN guard, the update."""
        self.result = compute()  # its tensors are rewritten in place by every replay
        self.result.total.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(parameters, clip, foreach=True)
        self._guard(self.result.total.detach())
        optimizer.found_inf = self.found_inf
        optimizer.update()

    def record(self, body: Callable[[], None]) -> Callable[[], None]:
        """`body` captured in a CUDA graph (recorded, not run); returns what replays it."""
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            body()
        return self.graph.replay

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
    """`module.cuda_graph=true`: refuse by key a run whose step cannot be captured (`capture_blocker`)."""
    if (reason := capture_blocker(trainer, module)) is not None:
        raise ConfigError(KEY, True, f"auto or false with {reason}")


def capture_blocker(trainer, module) -> str | None:
    """The first reason a captured step would not give what the eager one gives for this run (a phrase that reads
    after "with": "a cpu device: ..."), or None when it can be captured."""
    device = trainer.strategy.root_device.type
    if device != "cuda":
        return f"a {device} device: a captured step needs CUDA"
    return step_setup_blocker(trainer, module, trainer.datamodule)


def step_setup_blocker(trainer, module, datamodule) -> str | None:
    """`capture_blocker` but for the device (it needs no GPU, so it runs on a CPU too): several devices, reduced
    precision, clipping by value, a changing lr, data-dependent shapes, mini-batches, and callbacks that act inside
    the step (`STEP_HOOKS`) or change between steps a number the capture baked in (a callback says so by naming it
    in `changes_between_steps`, e.g. "net.temperature")."""
    if trainer.world_size != 1:
        return "more than one device"
    if str(trainer.precision) not in ("32-true", "32"):
        return f"precision={trainer.precision}: a captured step runs in 32 bits"
    if GradClipAlgorithmType(getattr(trainer, "gradient_clip_algorithm", None) or "norm") != GradClipAlgorithmType.NORM:
        return f"trainer.gradient_clip_algorithm={trainer.gradient_clip_algorithm}: a captured step clips by norm"
    recipe = getattr(module, "recipe", None)
    if recipe is not None and recipe.schedule != "constant":
        return f"optimizer.schedule={recipe.schedule}: a captured step bakes in the lr it has after the warmup"
    net = getattr(module, "net", None)
    if net is not None and any(getattr(part, "data_dependent_shapes", False) for part in net.modules()):
        return "a net whose parts route tokens by the data: a mixture of experts' shapes change every step"
    if "train" not in getattr(datamodule, "splits", {}):
        return (f"{type(datamodule).__name__}, which holds no training split in memory: a captured step replays one "
                f"full batch that never moves")
    # the task's own train loader says whether it serves the whole split every step
    if not getattr(datamodule.train_dataloader(), "full_batch", False):
        return "mini-batches: a captured step replays the full batch, data.batch_size=-1"
    for callback in trainer.callbacks:
        name = type(callback).__name__
        if changed := getattr(callback, "changes_between_steps", None):
            return f"{name}, which changes {changed} between steps: a captured step keeps the value it had at capture"
        if getattr(callback, "cuda_graph_safe", False):
            continue  # it stands aside while the module captures the step
        acting = [hook for hook in STEP_HOOKS if getattr(type(callback), hook) is not getattr(Callback, hook)]
        if acting:
            return f"{name}, which acts inside each step: {acting[0]}"
    return None
