"""Decoder-only transformer for token tasks: embeddings, blocks of (mixer, FFN) parts, final norm, unembedding.

The parts are chosen by config (`model/mixer=softmax`, `model/ffn=mlp | glu | routed`) and passed in as
factories: the transformer calls `mixer(d_model=d_model)` and `ffn(d_model=d_model)` once per layer, every other
setting of a part is the part's own. So the routed transformer of the routed-transformer study is this one with
`ffn=RoutedFFN`, and Nanda et al.'s 1-layer model this one with `norm=none`, a relu MLP, no attention biases and
`init_scheme=nanda`. Shapes: B batch, T positions, D d_model.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from core.errors import require, settings_of
from core.output import NetOutput
from nets.parts.attention import SoftmaxAttention
from nets.parts.block import NORMS, Block, make_norm, normal_init_
from nets.parts.ffns import MLPFFN

INIT_SCHEMES = ("normal", "nanda")
PartFactory = Callable[..., nn.Module]


class Transformer(nn.Module):
    """Token + position embeddings, `n_layers` pre-norm blocks, final norm, unembedding to `num_classes`.

    `mixer`, `ffn`: factories of a block's parts, called with `d_model` (a class, or a `functools.partial` of
    one with its settings: Hydra's `_partial_: true`). `num_classes` may differ from `vocab_size` (answer-only
    tasks predict residues only); weight tying needs them equal.
    `init_scheme`: `normal` draws every weight from N(0, init_std^2); `nanda` follows Nanda et al.'s code
    (progress-measures-paper, transformers.py), where the scale is set per matrix: N(0, 1/d_model) for every
    weight but the unembedding's N(0, 1/num_classes) (theirs is 1/(p+1): its = token is a class too), so
    `init_std` is then ignored. Biases start at zero in both. A part's raw weight matrices (not in an
    nn.Linear) are drawn the same way through its `init_normal_(std)`.
    Aux tensors are keyed `layer_<i>/mixer/<name>` and `layer_<i>/ffn/<name>` (core/output.py). An FFN's `state`
    (the routed FFN's stateful gate) goes to the next block, not into aux.
    """

    input_kind = "tokens"

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        seq_len: int,
        n_layers: int = 4,
        d_model: int = 128,
        mixer: PartFactory = SoftmaxAttention,
        ffn: PartFactory = MLPFFN,
        norm: str = "layernorm",
        tie_weights: bool = False,
        init_std: float = 0.02,
        init_scheme: str = "normal",
    ):
        super().__init__()
        require(isinstance(n_layers, int) and n_layers >= 1, "n_layers", n_layers, "an integer >= 1")
        require(isinstance(d_model, int) and d_model >= 1, "d_model", d_model, "an integer >= 1")
        require(norm in NORMS, "norm", norm, ", ".join(NORMS))
        require(not tie_weights or num_classes == vocab_size, "tie_weights", tie_weights,
                f"false when num_classes ({num_classes}) != vocab_size ({vocab_size})")
        require(init_std > 0, "init_std", init_std, "a positive number")
        require(init_scheme in INIT_SCHEMES, "init_scheme", init_scheme, ", ".join(INIT_SCHEMES))
        for slot, factory in (("mixer", mixer), ("ffn", ffn)):
            built = isinstance(factory, nn.Module)
            require(callable(factory) and not built, slot, f"a built {type(factory).__name__}" if built else factory,
                    "a factory of the part called with d_model: a class, or a functools.partial of one "
                    "(a config node with _partial_: true)")
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.position_embedding = nn.Embedding(seq_len, d_model)
        self.blocks = nn.ModuleList(self.make_block(d_model, mixer, ffn, norm) for _ in range(n_layers))
        self.ln_final = make_norm(norm, d_model)
        self.unembed = nn.Linear(d_model, num_classes, bias=False)
        # parts draw their own weight matrices with init_std, so under `nanda` it holds that scheme's 1/sqrt(d_model)
        self.init_std = d_model**-0.5 if init_scheme == "nanda" else init_std
        self.apply(self._init_weights)
        if init_scheme == "nanda":
            nn.init.normal_(self.unembed.weight, std=num_classes**-0.5)
        if tie_weights:
            self.unembed.weight = self.token_embedding.weight

    @staticmethod
    def make_block(d_model: int, mixer: PartFactory, ffn: PartFactory, norm: str) -> Block:
        # the FFN first: the order in which the transformer before parts drew its random numbers (same seed,
        # same weights); a part's bad setting is reported under its slot (`ffn.d_hidden`)
        with settings_of("ffn", passed=["d_model"]):
            ffn_part = ffn(d_model=d_model)
        with settings_of("mixer", passed=["d_model"]):
            mixer_part = mixer(d_model=d_model)
        return Block(d_model, mixer_part, ffn_part, norm)

    def _init_weights(self, module: nn.Module) -> None:
        normal_init_(module, self.init_std)

    def forward(self, tokens: Tensor, return_attention: bool = False) -> NetOutput:
        # tokens: (B, T) -> logits (B, T, num_classes)
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        aux: dict[str, Tensor] = {}
        state = None  # a routing state the FFNs carry from block to block (the routed FFN's stateful gate)
        for i, block in enumerate(self.blocks):
            x, block_aux = block(x, return_attention, state)
            state = block_aux.pop("ffn/state", None)
            aux.update({f"layer_{i}/{key}": t for key, t in block_aux.items()})
        return NetOutput(logits=self.unembed(self.ln_final(x)), aux=aux)

    def input_embedding(self) -> Tensor:
        """(vocab_size, d_model): the token embedding, row i for token id i."""
        return self.token_embedding.weight

    def no_weight_decay(self) -> set[str]:
        """What the parts declare (the routed FFN's gates); embeddings are covered by the generic rule, and a tied
        unembedding shares their (no-decay) weight."""
        return {f"blocks.{i}.{name}" for i, block in enumerate(self.blocks) for name in block.no_weight_decay()}


__all__ = ["INIT_SCHEMES", "Transformer"]
