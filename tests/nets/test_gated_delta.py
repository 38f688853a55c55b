"""The gated delta rule: the chunked (WY / UT) form against the recurrent reference, the reference against the
formula written out with explicit matrices, the behaviour the rule promises, chunk boundaries, bad arguments."""
import math

import pytest
import torch
import torch.nn.functional as F

from core.errors import ConfigError
from nets.kernels.gated_delta import chunk_gated_delta_rule, recurrent_gated_delta_rule

FORMS = {"recurrent": recurrent_gated_delta_rule, "chunk": lambda *a, **kw: chunk_gated_delta_rule(*a, chunk_size=4, **kw)}
EXACT = dict(atol=1e-10, rtol=0)


def inputs(B=2, T=37, H=3, K=4, V=5, dtype=torch.float64, seed=0):
    """q, k L2-normalised; g = log sigmoid (<= 0); beta in (0, 1); an initial state."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=dtype)
    q, k = F.normalize(rand(B, T, H, K), dim=-1), F.normalize(rand(B, T, H, K), dim=-1)
    return q, k, rand(B, T, H, V), F.logsigmoid(rand(B, T, H) + 2), torch.sigmoid(rand(B, T, H)), rand(B, H, K, V)


@pytest.mark.parametrize("T", [1, 37, 100])
@pytest.mark.parametrize("chunk_size", [16, 64])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_equals_recurrent_in_float64_outputs_states_and_gradients(T, chunk_size, with_state):
    q, k, v, g, beta, s0 = inputs(T=T)
    leaves = [x.requires_grad_() for x in (q, k, v, g, beta, s0)]
    state = s0 if with_state else None
    o_ref, s_ref = recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=state, output_final_state=True)
    o, s = chunk_gated_delta_rule(q, k, v, g, beta, chunk_size, initial_state=state, output_final_state=True)
    torch.testing.assert_close(o, o_ref, **EXACT)
    torch.testing.assert_close(s, s_ref, **EXACT)

    gen = torch.Generator().manual_seed(1)
    P, Q = torch.randn(o.shape, generator=gen, dtype=o.dtype), torch.randn(s.shape, generator=gen, dtype=s.dtype)
    wrt = leaves if with_state else leaves[:5]
    grads_ref = torch.autograd.grad((o_ref * P).sum() + (s_ref * Q).sum(), wrt)
    grads = torch.autograd.grad((o * P).sum() + (s * Q).sum(), wrt)
    for name, a, b in zip("q k v g beta initial_state".split(), grads, grads_ref):
        torch.testing.assert_close(a, b, **EXACT, msg=lambda m: f"d/d{name}: {m}")


def test_no_final_state_unless_asked_and_output_shape():
    q, k, v, g, beta, _ = inputs(T=10)
    for form in FORMS.values():
        o, s = form(q, k, v, g, beta)
        assert o.shape == v.shape and s is None


def test_recurrent_form_equals_the_formula_with_explicit_matrices():
    """B = H = 1, K = V = 2, T = 3, the scale defaulting to K^-0.5: S_t = a S + k (β (v - a Sᵀ k))ᵀ, o_t = Sᵀ q / √2,
    with k, v, q as (2, 1) columns."""
    q, k, v, g, beta, s0 = inputs(B=1, T=3, H=1, K=2, V=2, seed=3)
    S = s0[0, 0].clone()
    expected = []
    for t in range(3):
        q_t, k_t, v_t = q[0, t, 0].reshape(2, 1), k[0, t, 0].reshape(2, 1), v[0, t, 0].reshape(2, 1)
        a, b = math.exp(g[0, t, 0].item()), beta[0, t, 0].item()
        S = a * S + k_t @ (b * (v_t - a * S.T @ k_t)).T
        expected.append((S.T @ (q_t / math.sqrt(2))).reshape(2))
    o, s = recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=s0, output_final_state=True)
    torch.testing.assert_close(o[0, :, 0], torch.stack(expected), atol=1e-12, rtol=0)
    torch.testing.assert_close(s[0, 0], S, atol=1e-12, rtol=0)


@pytest.mark.parametrize("form", FORMS)
def test_without_decay_and_full_writes_orthonormal_keys_are_stored_exactly(form):
    """g = 0, beta = 1: writing v_i under orthonormal k_i makes Sᵀ k_i = v_i, later writes under other keys leave it
    there, and writing the same key again replaces the value (the delta rule's correction)."""
    K = V = 4
    keys = torch.linalg.qr(torch.randn(K, K, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))[0].T
    k = torch.stack([keys[0], keys[1], keys[2], keys[0], keys[3]])[None, :, None]    # (1, 5, 1, K); key 0 written twice
    v = torch.randn(1, 5, 1, V, dtype=torch.float64)
    scale = K ** -0.5
    q = torch.zeros_like(k)
    q[0, 2, 0], q[0, 4, 0] = keys[0] / scale, keys[0] / scale                        # scale * q = k_0
    g, beta = torch.zeros(1, 5, 1, dtype=torch.float64), torch.ones(1, 5, 1, dtype=torch.float64)
    o, S = FORMS[form](q, k, v, g, beta, output_final_state=True)
    torch.testing.assert_close(o[0, 2, 0], v[0, 0, 0], atol=1e-12, rtol=0)          # the first value of key 0
    torch.testing.assert_close(o[0, 4, 0], v[0, 3, 0], atol=1e-12, rtol=0)          # replaced by its second value
    stored = S[0, 0].T @ keys[[0, 1, 2, 3]].T                                        # columns Sᵀ k_i
    torch.testing.assert_close(stored.T, v[0, [3, 1, 2, 4], 0], atol=1e-12, rtol=0)


@pytest.mark.parametrize("form", FORMS)
def test_strong_decay_forgets_everything_but_the_current_token(form):
    """With exp(g) ~ 0 the state before t is gone: o_t = β_t (k_tᵀ scale q_t) v_t, whatever came before."""
    q, k, v, _, beta, s0 = inputs(T=9)
    g = torch.full(beta.shape, -80.0, dtype=torch.float64)
    o, _ = FORMS[form](q, k, v, g, beta, initial_state=s0)
    expected = beta[..., None] * (k * q).sum(-1, keepdim=True) * v / 2              # scale = 4 ** -0.5
    torch.testing.assert_close(o, expected, atol=1e-12, rtol=0)
    v2 = v.clone()
    v2[:, :-1] = torch.randn_like(v2[:, :-1])
    torch.testing.assert_close(FORMS[form](q, k, v2, g, beta)[0][:, -1], o[:, -1], atol=1e-12, rtol=0)


@pytest.mark.parametrize("split", [40, 48, 1])
def test_two_halves_with_the_state_carried_equal_one_run(split):
    q, k, v, g, beta, s0 = inputs(T=100)
    whole, s_whole = chunk_gated_delta_rule(q, k, v, g, beta, 16, initial_state=s0, output_final_state=True)
    first, s_mid = chunk_gated_delta_rule(*(x[:, :split] for x in (q, k, v, g, beta)), 16, initial_state=s0,
                                          output_final_state=True)
    second, s_end = chunk_gated_delta_rule(*(x[:, split:] for x in (q, k, v, g, beta)), 16, initial_state=s_mid,
                                           output_final_state=True)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, **EXACT)
    torch.testing.assert_close(s_end, s_whole, **EXACT)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_inputs_keep_their_dtype_and_a_float32_state(dtype):
    q, k, v, g, beta, s0 = inputs(T=50)
    o_ref, s_ref = recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=s0, output_final_state=True)
    low = [x.to(dtype) for x in (q, k, v, g, beta)]
    o, s = chunk_gated_delta_rule(*low, 16, initial_state=s0.float(), output_final_state=True)
    assert o.dtype == dtype and s.dtype == torch.float32
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(o.double(), o_ref, atol=tol, rtol=tol)
    torch.testing.assert_close(s.double(), s_ref, atol=tol, rtol=tol)


BAD = {
    "q": lambda q, k, v, g, b, s: (q[0], k, v, g, b, s),
    "k": lambda q, k, v, g, b, s: (q, k[..., :3], v, g, b, s),
    "v": lambda q, k, v, g, b, s: (q, k, v[:, :5], g, b, s),
    "g": lambda q, k, v, g, b, s: (q, k, v, g[..., None], b, s),
    "beta": lambda q, k, v, g, b, s: (q, k, v, g, b[:, :, :2], s),
    "initial_state": lambda q, k, v, g, b, s: (q, k, v, g, b, s[..., :2]),
}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", BAD)
def test_mismatched_shapes_are_named(form, name):
    q, k, v, g, beta, s = BAD[name](*inputs(T=8))
    with pytest.raises(ConfigError, match=rf"^{name}=") as err:
        FORMS[form](q, k, v, g, beta, initial_state=s)
    assert err.value.key == name


@pytest.mark.parametrize("chunk_size", [0, -3, 2.5])
def test_bad_chunk_size_is_named(chunk_size):
    q, k, v, g, beta, _ = inputs(T=8)
    with pytest.raises(ConfigError, match="chunk_size") as err:
        chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=chunk_size)
    assert err.value.key == "chunk_size"
