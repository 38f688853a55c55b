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

Limits (refused by key at fit start): CUDA only, full-batch training, 32-bit precision, one device, and nothing
that changes the step from outside between replays (Grokfast's gradient filter, temperature annealing).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from nets.output import NetOutput
from runtime.errors import ConfigError, require

# hooks through which a callback would act inside the step, where replays cannot see it
STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step", "on_before_zero_grad",
              "on_train_batch_start")


class StepResult(NamedTuple):
    """What one training step computes before backward."""

    output: NetOutput
    task_loss: Tensor
    logits: Tensor  # (N, T, classes), aligned with the targets
    terms: dict[str, Tensor]
    total: Tensor


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

    def __init__(self, compute: Callable[[], "StepResult"], parameters: list[Tensor],
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


def check_graphable(trainer) -> None:
    """Refuse, naming `module.cuda_graph`, what a captured step cannot honour."""
    key = "module.cuda_graph"
    require(trainer.strategy.root_device.type == "cuda", key, True, "false unless training on a CUDA device")
    require(trainer.world_size == 1, key, True, "false with more than one device")
    require(str(trainer.precision) in ("32-true", "32"), key, True, f"false with precision={trainer.precision}")
    module = getattr(trainer, "lightning_module", None)
    recipe = getattr(module, "recipe", None)
    require(recipe is None or recipe.schedule == "constant", key, True,
            f"false with optimizer.schedule={getattr(recipe, 'schedule', None)} (the captured step bakes in the lr "
            f"it has after the warmup)")
    net = getattr(module, "net", None)
    require(net is None or not any(getattr(part, "data_dependent_shapes", False) for part in net.modules()),
            key, True, "false for a net whose parts route tokens by the data (a mixture of experts: its shapes change "
                       "every step)")
    data = trainer.datamodule
    require("train" in getattr(data, "splits", {}), key, True,
            f"false for {type(data).__name__}, which holds no training split in memory (a captured step replays "
            f"one full batch that never moves)")
    # the task's own train loader says whether it serves the whole split every step
    require(getattr(data.train_dataloader(), "full_batch", False), key, True,
            "false with mini-batches (data.batch_size=-1: the full batch is the captured input)")
    for callback in trainer.callbacks:
        if getattr(callback, "cuda_graph_safe", False):
            continue
        acting = [hook for hook in STEP_HOOKS if getattr(type(callback), hook) is not getattr(Callback, hook)]
        if acting:
            raise ConfigError(key, True, f"false with {type(callback).__name__}, which acts inside each step "
                                         f"({acting[0]})")
