"""A small hybrid language model: Gated DeltaNet and softmax-attention layers, some routed per token between the two.

    layers = [gdn, gdn, gdn, attn]        the static baseline (three linear-attention layers, one softmax)
    layers = [gdn, routed, routed, attn]  layer 0 GDN, layers 1-2 choose per token, layer 3 softmax

Every layer is a pre-norm block, x + mixer(norm(x)) then x + ffn(norm(x)) (nets/parts/block.py). A routed layer's mixer
is a RoutedMixer (nets/parts/routed_mixer.py: dense runs both mechanisms, sparse only the chosen softmax queries) fed
by a TokenRouter (nets/parts/token_router.py: hard Gumbel-softmax in training, argmax in eval):
- router=shared (the seed's "parallel routing"): one router reads layer 0's output (normed) and decides for every
  routed layer at once, before any of them runs; layer 0 must not be routed.
- router=per_layer: each routed layer has its own router, on the same normed input as its mixer.
Positions: rotary (q and k of every softmax attention rotated; GDN's convolutions and recurrence are causal and
need none), learned (an embedding added to the tokens, as the transformer's), or none.
Aux per routed layer i: `layer_<i>/mixer/routing` (B, T, 2) router probabilities (gdn, softmax),
`layer_<i>/mixer/expert_index` (B, T, 1) int64 choices, `layer_<i>/mixer/router_logits` (B, T, 2): the names of
nets/parts/moe.py, so the MoE regularisers (regularizer=moe) and the routing ones work on routed layers unchanged.
Shapes: B batch, T positions, D d_model.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from core.errors import ConfigError, require, settings_of
from core.output import NetOutput
from nets.parts.attention import SoftmaxAttention
from nets.parts.block import NORMS, Block, make_norm, normal_init_
from nets.parts.ffns import GLUFFN
from nets.parts.flops import module_flops
from nets.parts.gated_deltanet import GatedDeltaNet
from nets.parts.routed_mixer import ROUTING_MODES, RoutedMixer
from nets.parts.token_router import Routing, TokenRouter

LAYER_KINDS = ("gdn", "attn", "routed")
POSITIONS = ("rotary", "learned", "none")
ROUTERS = ("shared", "per_layer")
ROUTING_SETTINGS = {"mode": "routing_mode", "capacity_factor": "routing_capacity_factor", "block_size": "routing_block"}
PartFactory = Callable[..., nn.Module]


class RoutedBlock(Block):
    """A block whose mixer is a RoutedMixer; with a `router` of its own (per_layer) it routes on its normed input,
    without one (shared) it takes the decisions as `routing`. Aux: `mixer/routing`, `mixer/expert_index`,
    `mixer/router_logits`, then the FFN's."""

    def __init__(self, d_model: int, mixer: RoutedMixer, ffn: nn.Module, norm: str, router: TokenRouter | None):
        super().__init__(d_model, mixer, ffn, norm)
        self.router = router

    def forward(self, x: Tensor, return_attention: bool = False,
                routing: Routing | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        h = self.ln_attn(x)
        if self.router is not None:
            routing = self.router(h).route(0)
        elif routing is None:
            raise ValueError("a routed block without a router of its own takes the shared router's `routing`")
        a, mixer_aux = self.attn(h, routing.weights, routing.choice, return_attention=return_attention)
        x = x + a
        f, ffn_aux = self.ffn(self.ln_ffn(x))
        aux = {"mixer/routing": routing.probs, "mixer/expert_index": routing.choice.unsqueeze(-1),
               "mixer/router_logits": routing.logits}
        aux.update({f"mixer/{name}": t for name, t in mixer_aux.items()})
        aux.update({f"ffn/{name}": t for name, t in ffn_aux.items()})
        return x + f, aux


class HybridLM(nn.Module):
    """Token embedding (+ learned positions), one block per entry of `layers` (gdn | attn | routed), final norm,
    unembedding to `num_classes` (see the module docstring).

    `gdn`, `attn`, `ffn`: factories of the parts, called with d_model (`attn` also with rotary); a routed layer
    builds one of each mixer. `routing_mode`: dense | sparse, `routing_capacity_factor` and `routing_block`: sparse
    mode's capacity per block of positions (nets/parts/routed_mixer.py). `temperature`: the routers'
    Gumbel temperature (a property, for annealing). Init as the transformer's normal scheme: N(0, init_std^2) for
    every Linear and Embedding (the routers' too: logits near 0, routing near 50/50), zero biases; GDN's A_log and
    dt_bias keep their own init (they are not Linear weights), as do the norms and short convolutions."""

    input_kind = "tokens"
    routing_options = ("gdn", "softmax")

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        seq_len: int,
        layers: Sequence[str] = ("gdn", "gdn", "gdn", "attn"),
        d_model: int = 128,
        gdn: PartFactory = GatedDeltaNet,
        attn: PartFactory = SoftmaxAttention,
        ffn: PartFactory = GLUFFN,
        norm: str = "rmsnorm",
        positions: str = "rotary",
        router: str = "shared",
        routing_mode: str = "dense",
        routing_capacity_factor: float = 1.25,
        routing_block: int = 128,
        temperature: float = 1.0,
        tie_weights: bool = False,
        init_std: float = 0.02,
    ):
        super().__init__()
        try:
            layers = tuple(layers) if not isinstance(layers, str) else None
        except TypeError:
            layers = None
        require(layers is not None and len(layers) >= 1 and all(kind in LAYER_KINDS for kind in layers),
                "layers", list(layers) if layers is not None else layers, "a list of gdn | attn | routed")
        require(isinstance(d_model, int) and d_model >= 1, "d_model", d_model, "an integer >= 1")
        require(norm in NORMS, "norm", norm, ", ".join(NORMS))
        require(positions in POSITIONS, "positions", positions, " | ".join(POSITIONS))
        require(router in ROUTERS, "router", router, " | ".join(ROUTERS))
        require(router != "shared" or layers[0] != "routed", "router", router,
                "per_layer when layers[0] is routed (the shared router reads layer 0's output)", related=["layers"])
        require(routing_mode in ROUTING_MODES, "routing_mode", routing_mode, " | ".join(ROUTING_MODES))
        require(not tie_weights or num_classes == vocab_size, "tie_weights", tie_weights,
                f"false when num_classes ({num_classes}) != vocab_size ({vocab_size})")
        require(init_std > 0, "init_std", init_std, "a positive number")
        for slot, factory in (("gdn", gdn), ("attn", attn), ("ffn", ffn)):
            built = isinstance(factory, nn.Module)
            require(callable(factory) and not built, slot, f"a built {type(factory).__name__}" if built else factory,
                    "a factory of the part called with d_model: a class, or a functools.partial of one "
                    "(a config node with _partial_: true)")
        self.layers, self.positions, self.router_kind = layers, positions, router
        self.init_std = init_std
        n_routed = layers.count("routed")
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.position_embedding = nn.Embedding(seq_len, d_model) if positions == "learned" else None
        rotary = positions == "rotary"

        def part(slot: str, factory: PartFactory, **settings) -> nn.Module:
            try:
                with settings_of(slot, passed=["d_model"]):
                    return factory(d_model=d_model, **settings)
            except ConfigError as err:  # rotary is not a setting of the part: it follows `positions`
                if err.key != "attn.rotary":
                    raise
                raise ConfigError("positions", positions, "learned or none" + err.allowed.removeprefix("false"),
                                     related=err.related) from err

        blocks = []
        for kind in layers:
            ffn_part = part("ffn", ffn)
            if kind == "gdn":
                blocks.append(Block(d_model, part("gdn", gdn), ffn_part, norm))
            elif kind == "attn":
                blocks.append(Block(d_model, part("attn", attn, rotary=rotary), ffn_part, norm))
            else:
                mechanisms = part("gdn", gdn), part("attn", attn, rotary=rotary)
                try:
                    mixer = RoutedMixer(*mechanisms, routing_mode, routing_capacity_factor, routing_block)
                except ConfigError as err:  # the routed mixer's settings are the model's routing_<name>
                    if err.key not in ROUTING_SETTINGS:
                        raise
                    raise ConfigError(ROUTING_SETTINGS[err.key], err.value, err.allowed) from err
                own = TokenRouter(d_model, 1, temperature=temperature) if router == "per_layer" else None
                blocks.append(RoutedBlock(d_model, mixer, ffn_part, norm, own))
        self.blocks = nn.ModuleList(blocks)
        shared = router == "shared" and n_routed > 0
        self.router_norm = make_norm(norm, d_model) if shared else None
        self.router = TokenRouter(d_model, n_routed, temperature=temperature) if shared else None
        self.ln_final = make_norm(norm, d_model)
        self.unembed = nn.Linear(d_model, num_classes, bias=False)
        self.temperature = temperature
        self.apply(self._init_weights)
        if tie_weights:
            self.unembed.weight = self.token_embedding.weight

    def _init_weights(self, module: nn.Module) -> None:
        normal_init_(module, self.init_std)

    @property
    def routers(self) -> list[TokenRouter]:
        return [m for m in self.modules() if isinstance(m, TokenRouter)]

    @property
    def temperature(self) -> float:
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        """Sets every router's Gumbel temperature (callbacks/interventions/temperature.py anneals it)."""
        require(isinstance(value, (int, float)) and value > 0, "temperature", value, "a positive number")
        self._temperature = float(value)
        for router in self.routers:
            router.temperature = value

    def forward(self, tokens: Tensor, return_attention: bool = False) -> NetOutput:
        # tokens: (B, T) -> logits (B, T, num_classes)
        x = self.token_embedding(tokens)
        if self.position_embedding is not None:
            x = x + self.position_embedding(torch.arange(tokens.shape[1], device=tokens.device))
        aux: dict[str, Tensor] = {}
        shared: Routing | None = None
        route = 0
        for i, block in enumerate(self.blocks):
            if isinstance(block, RoutedBlock):
                routing = shared.route(route) if shared is not None else None
                x, block_aux = block(x, return_attention, routing=routing)
                route += 1
            else:
                x, block_aux = block(x, return_attention)
            aux.update({f"layer_{i}/{key}": t for key, t in block_aux.items()})
            if i == 0 and self.router is not None:
                shared = self.router(self.router_norm(x))  # every routed layer's decisions, from layer 0's output
        return NetOutput(logits=self.unembed(self.ln_final(x)), aux=aux)

    def forward_flops(self, seq_len: int) -> int | None:
        """Matrix-product FLOPs of a forward on one sequence of seq_len tokens (nets/parts/flops.py): every
        block's mixer, FFN and router, the shared router and the unembedding (the embeddings are lookups); None when
        a part cannot count itself (a mixture of experts, whose work follows its routing)."""
        parts = [self.router, self.unembed]
        for block in self.blocks:
            parts += [block.mixer, block.ffn, getattr(block, "router", None)]
        counts = [module_flops(part, seq_len) for part in parts if part is not None]
        return None if None in counts else sum(counts)

    def input_embedding(self) -> Tensor:
        """(vocab_size, d_model): the token embedding, row i for token id i."""
        return self.token_embedding.weight

    def no_weight_decay(self) -> set[str]:
        """What the parts declare (GatedDeltaNet's A_log and dt_bias, the routers' weights), prefixed."""
        names = {f"blocks.{i}.{name}" for i, block in enumerate(self.blocks) for name in block.no_weight_decay()}
        if self.router is not None:
            names |= {f"router.{name}" for name in self.router.no_weight_decay()}
        return names


__all__ = ["HybridLM", "LAYER_KINDS", "POSITIONS", "ROUTERS", "RoutedBlock"]
