"""How big the net is, said at start: its parameters, and per part of the first block what it was matched to
(so a comparison of FFN types states how fair it is)."""
from __future__ import annotations

from torch import nn


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_lines(net: nn.Module) -> list[str]:
    """`net: N parameters`, then for a net of blocks the first block's parts: `ffn: MoEFFN 33,020 parameters
    (matched to the dense MLP of hidden 256: 33,088, -0.21%)`."""
    lines = [f"net: {count(net):,} parameters"]
    blocks = getattr(net, "blocks", None)
    if isinstance(blocks, nn.ModuleList) and len(blocks):
        for slot, part in (("mixer", getattr(blocks[0], "mixer", None)), ("ffn", getattr(blocks[0], "ffn", None))):
            if not isinstance(part, nn.Module):
                continue
            line = f"layer 0 {slot}: {type(part).__name__}, {count(part):,} parameters"
            if (matched := getattr(part, "matched_to", None)) is not None:
                what, reference = matched
                line += f" (matched to {what}: {reference:,}, {100 * (count(part) - reference) / reference:+.2f}%)"
            lines.append(line)
    return lines
