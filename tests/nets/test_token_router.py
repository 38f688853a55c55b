"""The token router (nets/parts/token_router.py) and the routed GDN / softmax mixer (nets/parts/routed_mixer.py): hard one-hot
decisions with straight-through gradients, deterministic eval, and the sparse mode computing the dense forward."""
import pytest
import torch
import torch.nn.functional as F

from core.errors import ConfigError
from nets import GatedDeltaNet, RoutedMixer, SoftmaxAttention, TokenRouter
from nets.parts.routed_mixer import GDN, SOFTMAX

# tiny tensors: a second thread buys nothing, and on a busy 2-core machine its spin-waiting costs 10x
pytestmark = pytest.mark.usefixtures("one_thread")


def test_training_decisions_are_one_hot_with_a_gradient():
    torch.manual_seed(0)
    router = TokenRouter(d_model=8, n_routes=3).train()
    x = torch.randn(4, 6, 8)
    r = router(x)
    assert r.weights.shape == r.probs.shape == r.logits.shape == (4, 6, 3, 2) and r.choice.shape == (4, 6, 3)
    assert r.choice.dtype == torch.int64
    # one-hot up to the rounding of the straight-through sum y_hard - y_soft.detach() + y_soft
    torch.testing.assert_close(r.weights, F.one_hot(r.choice, 2).float(), rtol=0, atol=1e-6)
    torch.testing.assert_close(r.probs, r.logits.softmax(-1))
    torch.testing.assert_close(r.logits, torch.einsum("btd,od->bto", x, router.proj.weight).unflatten(-1, (3, 2)))
    (r.weights * torch.randn(4, 6, 3, 2)).sum().backward()
    grad = router.proj.weight.grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_training_samples_vary_and_eval_is_the_deterministic_argmax():
    torch.manual_seed(0)
    router = TokenRouter(d_model=8, n_routes=1)
    x = torch.randn(4, 50, 8)
    samples = [router(x).choice for _ in range(2)]
    assert not torch.equal(*samples)  # Gumbel noise: logits near 0 give near-coin-flip samples
    router.eval()
    first, second = router(x), router(x)
    assert torch.equal(first.choice, first.logits.argmax(-1)) and torch.equal(first.choice, second.choice)
    assert torch.equal(first.weights, F.one_hot(first.choice, 2).float())  # exactly one-hot, no noise


def test_the_start_is_about_fifty_fifty():
    torch.manual_seed(0)
    router = TokenRouter(d_model=64).eval()
    r = router(F.rms_norm(torch.randn(8, 64, 64), (64,)))  # a normed input, as the net's routers read
    assert (r.probs - 0.5).abs().max() < 0.25
    assert 0.3 < r.choice.float().mean() < 0.7


def test_temperature_changes_the_soft_sample_not_the_hard_choice():
    """Same noise (same seed): the hard sample argmax(logits + g) does not depend on tau, the straight-through
    gradient (that of softmax((logits + g) / tau)) does."""
    torch.manual_seed(0)
    router = TokenRouter(d_model=8)
    x = torch.randn(2, 5, 8)
    target = torch.randn(2, 5, 1, 2)
    results = []
    for tau in (1.0, 0.3):
        router.temperature = tau
        router.zero_grad()
        torch.manual_seed(1)
        r = router(x)
        (r.weights * target).sum().backward()
        results.append((r.weights.detach(), router.proj.weight.grad.clone()))
    assert torch.equal(results[0][0], results[1][0])
    assert not torch.allclose(results[0][1], results[1][1])
    with pytest.raises(ConfigError) as info:
        router.temperature = 0
    assert info.value.key == "temperature"


def test_the_router_runs_in_float32_under_autocast():
    router = TokenRouter(d_model=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        r = router(torch.randn(2, 3, 8, dtype=torch.bfloat16))
    assert r.logits.dtype == r.probs.dtype == torch.float32
    assert router.no_weight_decay() <= dict(router.named_parameters()).keys()


def mechanisms(d=16, seed=0):
    torch.manual_seed(seed)
    gdn = GatedDeltaNet(d, n_heads=2, chunk_size=4).double()
    attn = SoftmaxAttention(d, n_heads=2, rotary=True).double()
    return gdn, attn


def routed(choice):
    """One-hot weights of `choice` with a straight-through gradient, and the logits it flows to."""
    logits = torch.randn(*choice.shape, 2, dtype=torch.float64, requires_grad=True)
    soft = logits.softmax(-1)
    return F.one_hot(choice, 2).double() + (soft - soft.detach()), logits


CHOICES = torch.tensor([[0] * 9,                       # no token routed to softmax
                        [1] * 9,                       # every token
                        [0, 1, 1, 0, 0, 1, 0, 0, 0],
                        [1, 0, 0, 0, 0, 0, 0, 0, 1]])


def mixer(gdn, attn, mode, capacity_factor=2.0, block_size=128):
    """A routed mixer; in sparse mode by default with room for every token (capacity factor 2: no overflow)."""
    return RoutedMixer(gdn, attn, mode, capacity_factor=capacity_factor, block_size=block_size)


@pytest.mark.parametrize("block_size", [128, 4])  # one block of 9, or blocks of 4, 4 and 1 (padded)
@pytest.mark.parametrize("choice", [CHOICES, CHOICES[:1], torch.randint(0, 2, (3, 9), generator=torch.Generator()
                                                                          .manual_seed(5))])
def test_sparse_computes_the_dense_forward_where_no_token_overflows(choice, block_size):
    gdn, attn = mechanisms()
    x = torch.randn(choice.shape[0], 9, 16, dtype=torch.float64)
    weights, _ = routed(choice)
    dense, _ = RoutedMixer(gdn, attn, "dense")(x, weights, choice)
    sparse, aux = mixer(gdn, attn, "sparse", block_size=block_size)(x, weights, choice)
    torch.testing.assert_close(sparse, dense, rtol=0, atol=1e-10)
    assert aux["overflow"].item() == 0


def test_dense_output_is_the_chosen_mechanisms():
    gdn, attn = mechanisms()
    x = torch.randn(4, 9, 16, dtype=torch.float64)
    weights, _ = routed(CHOICES)
    y, _ = RoutedMixer(gdn, attn, "dense")(x, weights, CHOICES)
    use_attn = (CHOICES == SOFTMAX).unsqueeze(-1)
    torch.testing.assert_close(y, torch.where(use_attn, attn(x)[0], gdn(x)[0]), rtol=0, atol=1e-12)
    _, aux = RoutedMixer(gdn, attn, "dense")(x, weights, CHOICES, return_attention=True)
    assert aux["attention"].shape == (4, 2, 9, 9)


@pytest.mark.parametrize("mode", ["dense", "sparse"])
def test_gradients_reach_both_mechanisms_and_the_router(mode):
    gdn, attn = mechanisms()
    x = torch.randn(4, 9, 16, dtype=torch.float64)
    weights, logits = routed(CHOICES)
    y, _ = mixer(gdn, attn, mode)(x, weights, CHOICES)
    y.square().sum().backward()
    for name, p in [*gdn.named_parameters(prefix="gdn"), *attn.named_parameters(prefix="attn")]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_sparse_gradient_flows_through_the_chosen_mechanism_only():
    """d y / d w_option is that option's output: dense has both at every token, sparse only the chosen one."""
    gdn, attn = mechanisms()
    x = torch.randn(4, 9, 16, dtype=torch.float64)
    one_hot = F.one_hot(CHOICES, 2).double()
    grads = {}
    for mode in ("dense", "sparse"):
        weights = one_hot.clone().requires_grad_()
        y, _ = mixer(gdn, attn, mode)(x, weights, CHOICES)
        y.sum().backward()
        grads[mode] = weights.grad
    assert (grads["dense"] != 0).all()
    torch.testing.assert_close(grads["sparse"], grads["dense"] * one_hot, rtol=0, atol=1e-10)
    assert (grads["sparse"][..., GDN][CHOICES == SOFTMAX] == 0).all()


def test_tokens_over_the_capacity_of_their_block_take_gdn_and_are_counted():
    """Capacity factor 1 with blocks of 4: softmax takes ceil(1 * 4 / 2) = 2 tokens per block (and of the last
    block, 1 position, its 1), the first ones in position order. Row 1 routes all 9 tokens to softmax: positions 2,
    3, 6, 7 overflow; row 2 routes 1, 2 and 5: none. An overflowed token takes GDN's output at full weight (its
    one-hot weight on GDN is 0) and its router gets no gradient from it; the others are dense mode's."""
    gdn, attn = mechanisms()
    choice = torch.tensor([[1] * 9, [0, 1, 1, 0, 0, 1, 0, 0, 0]])
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    weights, logits = routed(choice)
    sparse = mixer(gdn, attn, "sparse", capacity_factor=1.0, block_size=4)
    assert sparse.blocks(9) == (4, 3, 2) and sparse.blocks(3) == (3, 1, 2)  # (positions per block, blocks, slots)
    y, aux = sparse(x, weights, choice)
    overflowed = torch.zeros(2, 9, dtype=torch.bool)
    overflowed[0, [2, 3, 6, 7]] = True
    expected = torch.where((choice == SOFTMAX).unsqueeze(-1), attn(x)[0], gdn(x)[0])
    expected[overflowed] = gdn(x)[0][overflowed]
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-10)
    assert aux["overflow"].item() == pytest.approx(4 / 18)
    y.sum().backward()
    assert (logits.grad[overflowed] == 0).all() and (logits.grad[~overflowed] != 0).all()


def test_sparse_shapes_follow_the_length_alone_so_it_compiles_as_one_graph():
    """No host read and no data-dependent shape: torch.compile(fullgraph=True) refuses a forward that reads a
    tensor's value on the host (the padded count of softmax queries did), and a graph compiled on one routing
    serves every other routing of the same length without recompiling."""
    from torch._dynamo.testing import CompileCounter

    gdn, attn = mechanisms()
    graphs = CompileCounter()  # compiles nothing: counts the graphs and runs them as they are
    compiled = torch.compile(mixer(gdn, attn, "sparse", capacity_factor=1.0, block_size=4), fullgraph=True,
                             backend=graphs, dynamic=False)
    x = torch.randn(3, 9, 16, dtype=torch.float64)
    for seed in range(3):
        choice = torch.randint(0, 2, (3, 9), generator=torch.Generator().manual_seed(seed))
        choice[0] = seed % 2  # all GDN, all softmax, all GDN
        weights, _ = routed(choice)
        y, _ = compiled(x, weights, choice)
        torch.testing.assert_close(y, mixer(gdn, attn, "sparse", 1.0, 4)(x, weights, choice)[0], rtol=0, atol=1e-12)
    assert graphs.frame_count == 1


def test_sparse_has_fixed_shapes_and_settings_are_checked():
    gdn, attn = mechanisms()
    assert not any(getattr(m, "data_dependent_shapes", False) for m in RoutedMixer(gdn, attn, "sparse").modules())
    assert RoutedMixer(gdn, attn).no_weight_decay() == {"gdn.A_log", "gdn.dt_bias"}
    for settings, key in ((dict(mode="lazy"), "mode"), (dict(capacity_factor=0), "capacity_factor"),
                          (dict(capacity_factor=True), "capacity_factor"), (dict(block_size=0), "block_size")):
        with pytest.raises(ConfigError) as info:
            RoutedMixer(gdn, attn, **settings)
        assert info.value.key == key
