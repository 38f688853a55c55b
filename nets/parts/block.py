"""The transformer block, assembled from parts: a token mixer and an FFN, each behind a pre-norm residual.

    x = x + mixer(norm(x))
    x = x + ffn(norm(x))

The parts come from nets/parts/attention.py and nets/parts/ffns.py (or anywhere: any d_model -> d_model module that returns
(output, aux dict) fits). The block files its parts' aux tensors under their slot (`mixer/attention`,
`ffn/routing`) and collects the names they declare exempt from weight decay.
"""
from __future__ import annotations

from torch import Tensor, nn

from core.errors import require

NORMS = ("layernorm", "rmsnorm", "none")


def make_norm(kind: str, d_model: int) -> nn.Module:
    """LayerNorm, RMSNorm (scale only: no centring, no bias) or none; none of them draws random numbers."""
    require(kind in NORMS, "norm", kind, ", ".join(NORMS))
    if kind == "layernorm":
        return nn.LayerNorm(d_model)
    return nn.RMSNorm(d_model) if kind == "rmsnorm" else nn.Identity()


def normal_init_(module: nn.Module, std: float) -> None:
    """The `normal` init of the token nets, for one module (use with `net.apply`): every Linear and Embedding weight
    N(0, std^2), Linear biases 0, and a part's raw weight matrices through its own `init_normal_(std)`. Norms,
    convolutions and other parameters keep their own init."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=std)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if hasattr(module, "init_normal_"):
        module.init_normal_(std)


class Block(nn.Module):
    """Pre-norm residual block of a `mixer` and an `ffn` (built modules), with `norm` (layernorm | rmsnorm | none).

    The mixer sits in the attribute `attn` (`block.mixer` reads it too), next to `ln_attn`, `ln_ffn` and `ffn`:
    the parameter names of the transformer before it had parts, so that checkpoints, init files and init
    fingerprints of earlier runs still match."""

    def __init__(self, d_model: int, mixer: nn.Module, ffn: nn.Module, norm: str = "layernorm"):
        super().__init__()
        self.ln_attn = make_norm(norm, d_model)
        self.attn = mixer
        self.ln_ffn = make_norm(norm, d_model)
        self.ffn = ffn

    @property
    def mixer(self) -> nn.Module:
        return self.attn

    def forward(self, x: Tensor, return_attention: bool = False,
                state: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """-> (residual stream, aux tensors keyed `<slot>/<name>`, e.g. `mixer/attention`, `ffn/routing`).
        An FFN that carries a state through the layers (`takes_state`: the routed FFN's stateful gate) gets the
        previous block's `state` and returns its own as `ffn/state`."""
        a, mixer_aux = self.attn(self.ln_attn(x), return_attention=return_attention)
        x = x + a
        carried = {"state": state} if getattr(self.ffn, "takes_state", False) else {}
        f, ffn_aux = self.ffn(self.ln_ffn(x), **carried)
        aux = {f"mixer/{name}": t for name, t in mixer_aux.items()}
        aux.update({f"ffn/{name}": t for name, t in ffn_aux.items()})
        return x + f, aux

    def no_weight_decay(self) -> set[str]:
        """What the parts declare through their own `no_weight_decay()`, prefixed with their attribute."""
        return {f"{attribute}.{name}" for attribute, part in self.named_children()
                for name in getattr(part, "no_weight_decay", set)()}


__all__ = ["Block", "NORMS", "make_norm", "normal_init_"]
