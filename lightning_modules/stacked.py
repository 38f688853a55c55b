"""E nets of one architecture held as one flat parameter (E, P) and run together under `torch.func.vmap`.

Row e of `flat` is member e's parameters, concatenated in `named_parameters()` order. A forward slices each row
back into the net's parameter shapes (views, so gradients land in `flat.grad`) and calls the net functionally;
vmap turns every per-member matmul into one batched matmul. One flat tensor also makes the optimiser update a
dozen kernels over (E, P), whatever the number of parameter tensors.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel


class StackedNets(nn.Module):
    def __init__(self, nets: Sequence[nn.Module]):
        super().__init__()
        template = nets[0]
        layout = [(name, p.shape) for name, p in template.named_parameters()]
        for i, net in enumerate(nets):
            shapes = [(name, p.shape) for name, p in net.named_parameters()]
            if shapes != layout:
                raise ValueError(f"member {i} has other parameters than member 0: an ensemble needs one architecture")
        buffers = dict(template.named_buffers())
        for i, net in enumerate(nets):
            theirs = dict(net.named_buffers())
            if theirs.keys() != buffers.keys() or any(not torch.equal(theirs[k], buffers[k]) for k in buffers):
                raise ValueError(f"member {i} has other buffers than member 0: an ensemble shares constant buffers")
        self.names = [name for name, _ in layout]
        self.shapes = [shape for _, shape in layout]
        self.sizes = [shape.numel() for shape in self.shapes]
        rows = [torch.cat([p.detach().flatten() for p in net.parameters()]) for net in nets]
        self.flat = nn.Parameter(torch.stack(rows))  # (E, P)
        self.buffer_names = list(buffers)  # constants every member shares (e.g. per-layer costs)
        for i, tensor in enumerate(buffers.values()):
            self.register_buffer(f"shared_buffer_{i}", tensor.detach().clone())
        # the architecture without weights: functional_call supplies them (kept out of this module's parameters)
        self.__dict__["template"] = copy.deepcopy(template).to("meta")

    def unflatten(self, row: Tensor) -> dict[str, Tensor]:
        """One member's (P,) row as {parameter name: view of its shape}."""
        return {name: part.view(shape)
                for name, shape, part in zip(self.names, self.shapes, row.split(self.sizes))}

    def member_state(self, index: int) -> dict[str, Tensor]:
        """Member `index`'s weights as the state_dict of a solo net."""
        return {name: t.detach().clone() for name, t in self.unflatten(self.flat[index]).items()}

    def element_mask(self, names: set[str]) -> Tensor:
        """(P,) bool: True on the elements of the named parameters (e.g. those exempt from weight decay)."""
        return torch.cat([torch.full((n,), name in names, dtype=torch.bool, device=self.flat.device)
                          for name, n in zip(self.names, self.sizes)])

    def call(self, row: Tensor, *args: Any) -> Any:
        """The net's forward with one member's row as its weights (for use inside `vmap`)."""
        buffers = {name: getattr(self, f"shared_buffer_{i}") for i, name in enumerate(self.buffer_names)}
        return functional_call(self.template, (self.unflatten(row), buffers), args)

    def vmap(self, fn: Callable[..., Any], *args: Any, in_dims: Sequence[int | None]) -> Any:
        """`fn(row, *args)` for every member at once; `in_dims` says which args have a member axis (0) or are
        shared (None). Random ops draw independently per member. Attention runs on SDPA's math kernel, the one
        that works under vmap (the fused CUDA kernels reject batched inputs); Gated DeltaNet runs its PyTorch form
        under any torch.func transform (nets/kernels/fla_choice.py)."""
        with sdpa_kernel(SDPBackend.MATH):
            return vmap(fn, in_dims=(0, *in_dims), randomness="different")(self.flat, *args)
