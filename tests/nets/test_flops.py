"""The FLOP counts the parts give for MFU (nets/parts/flops.py, `forward_flops`) against torch's own FLOP counter,
`torch.utils.flop_counter.FlopCounterMode`, on small hybrid LMs of every layer kind.

The counter counts the matrix products the forward dispatches. Attention runs in SDPA's math form here: a CPU's
fused flash kernel has no FLOP formula in the counter (it would count 0), the math form dispatches the same two
products per (query, key) pair that the fused kernels compute."""
from __future__ import annotations

from functools import partial

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from nets import GLUFFN, MLPFFN, GatedDeltaNet, HybridLM, SoftmaxAttention
from nets.parts.flops import TRAINING_PER_FORWARD, flops_per_token

pytestmark = pytest.mark.usefixtures("one_thread")
VOCAB, BATCH = 12, 3
MATMULS = ("aten.mm", "aten.bmm", "aten.addmm")

# chunks of 4 over 10 or 13 positions: 3 or 4 chunks, the last one padded; routing blocks of 4 (the last partial)
CASES = {
    "static": dict(layers=["gdn", "gdn", "attn"]),
    "dense routing, shared router": dict(layers=["gdn", "routed", "attn"], routing_mode="dense"),
    "sparse routing, a router per layer": dict(layers=["gdn", "routed", "routed", "attn"], routing_mode="sparse",
                                               router="per_layer", routing_block=4, routing_capacity_factor=1.0),
    "sparse routing, attention with a convolution": dict(layers=["gdn", "routed"], routing_mode="sparse",
                                                          routing_block=4, conv_size=3),
    "mlp FFN, learned positions, recurrent GDN": dict(layers=["gdn", "attn"], ffn=partial(MLPFFN, d_hidden=24),
                                                      positions="learned", gdn_mode="recurrent"),
}


def net_of(case: str, seed: int = 0) -> HybridLM:
    settings = dict(CASES[case])
    conv_size, gdn_mode = settings.pop("conv_size", 0), settings.pop("gdn_mode", "chunk")
    settings.setdefault("ffn", partial(GLUFFN, d_hidden=32, activation="silu"))
    torch.manual_seed(seed)
    return HybridLM(VOCAB, VOCAB, 16, d_model=16, gdn=partial(GatedDeltaNet, n_heads=2, chunk_size=4, mode=gdn_mode),
                    attn=partial(SoftmaxAttention, n_heads=2, conv_size=conv_size), **settings)


def counted(net: HybridLM, tokens: torch.Tensor, backward: bool = False) -> dict[str, int]:
    """{op: FLOPs} FlopCounterMode counts over a forward (and its backward)."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = net(tokens)
        if backward:
            out.logits.square().sum().backward()
    return {str(op): flops for op, flops in counter.get_flop_counts()["Global"].items()}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("seq_len", [10, 13])
def test_the_forward_count_is_what_torchs_flop_counter_counts(case, seq_len):
    """Exactly, for every layer kind: linear layers, short convolutions (with the positions a padded convolution
    computes before the cut), GDN's chunked products (the skipped products with the first chunk's zero state and
    the unneeded last state left out) or its recurrent ones, attention over every pair, sparse routing's blocks at
    capacity, routers and the unembedding. Sparse routing's count follows from the length alone: two batches
    routed differently count the same."""
    net = net_of(case).train()
    generator = torch.Generator().manual_seed(seq_len)
    for _ in range(2):
        tokens = torch.randint(0, VOCAB, (BATCH, seq_len), generator=generator)
        assert sum(counted(net, tokens).values()) == BATCH * net.forward_flops(seq_len)


def test_a_training_step_does_three_forwards_of_matrix_products():
    """The backward computes two products per forward product (the gradients of both operands), so a training step
    counts TRAINING_PER_FORWARD = 3 forwards. The counter also sees the gradient of GDN's triangular solve, one
    product C x (K + V) x C per chunk and head, which the count leaves out with the solve itself (here 0.9 % of
    the step's products). Convolution gradients are not compared: the counter's formula for them ignores groups (it counts a
    depthwise filter's gradient as a dense convolution's)."""
    net = net_of("dense routing, shared router")
    seq_len = 10
    tokens = torch.randint(0, VOCAB, (BATCH, seq_len), generator=torch.Generator().manual_seed(0))
    forward, step = counted(net, tokens), counted(net, tokens, backward=True)
    backward = sum(step[op] - forward.get(op, 0) for op in MATMULS)
    gdn_layers = [m for m in net.modules() if isinstance(m, GatedDeltaNet)]
    chunks, C = -(-seq_len // 4), 4
    solve_gradients = sum(2 * C * (m.head_dim + m.head_v_dim) * C * BATCH * m.n_heads * chunks for m in gdn_layers)
    assert backward == 2 * sum(forward[op] for op in MATMULS) + solve_gradients
    assert TRAINING_PER_FORWARD == 3
    assert flops_per_token(net, seq_len) == 3 * net.forward_flops(seq_len) / seq_len
    assert flops_per_token(net, seq_len, training=False) == net.forward_flops(seq_len) / seq_len


def test_a_net_that_cannot_count_itself_has_no_count():
    """A mixture-of-experts FFN's work follows its routing: no count, so no MFU (rather than a wrong one)."""
    from nets import MoEFFN, Transformer

    moe = HybridLM(VOCAB, VOCAB, 8, layers=["gdn"], d_model=16, gdn=partial(GatedDeltaNet, n_heads=2),
                   ffn=partial(MoEFFN, n_experts=2))
    assert moe.forward_flops(8) is None and flops_per_token(moe, 8) is None
    assert flops_per_token(Transformer(VOCAB, VOCAB, 8, n_layers=1, d_model=16), 8) is None
