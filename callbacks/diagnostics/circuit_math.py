"""The numbers of `callbacks/diagnostics/digit_circuits.py` as pure functions of a `nets.Transformer` and a probe `Batch`, so
that tests can check each one against a hand computation without a trainer.

- `trace`: one forward that records what each component wrote into the residual stream (embeddings, each
  layer's mixer and FFN output, the heads' concatenated output before `proj`, the stream entering the final norm).
- `ablated_logits`: a forward with some outputs (or a head's slice of `proj`'s input) zeroed or replaced by their
  per-position probe mean, through forward hooks that are removed in a `finally`, so the net is never changed.
- `logit_attribution`: the correct token's logit split into embedding, attention and FFN contributions.
- `attention_entropy`, `mutual_information_bits` and friends: plain statistics.
Every forward here runs in eval mode without gradients and with `return_attention=True`, so that the reference
and the ablated numbers come from the same attention computation.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor, nn

from core.output import NetOutput
from datamodules.batch import Batch, answer_columns
from lightning_modules.answers import aligned_logits, answer_correct, exact_answers

ABLATION_MODES = ("mean", "zero")
LINEARISED_NORMS = (nn.Identity, nn.LayerNorm, nn.RMSNorm)


@dataclass
class Trace:
    logits: Tensor  # (N, T, C)
    aux: dict[str, Tensor]
    embedding: Tensor  # (N, T, D) token + position embeddings
    attention_out: list[Tensor]  # per layer (N, T, D): what the mixer adds to the stream (proj bias included)
    ffn_out: list[Tensor]  # per layer (N, T, D)
    head_inputs: list[Tensor]  # per layer (N, T, D): mixer.proj's input, the heads' outputs side by side
    residual: Tensor  # (N, T, D): the stream entering the final norm (= embedding + sum of both lists)


@dataclass(frozen=True)
class Patch:
    """Replace a part's output (`input_columns` None: the module's forward output, which may be an (out, aux)
    pair) or the columns `input_columns` of the module's input, by zero (`value` None) or `value` (T, D),
    broadcast over examples."""

    module: nn.Module
    value: Tensor | None
    input_columns: slice | None = None


@dataclass(frozen=True)
class Ablation:
    name: str  # the key under circuits/ablation/: ffn_mean, attention_zero, layer_0/head_1_mean
    patches: tuple[Patch, ...]


@contextmanager
def evaluating(net: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients for the block; the training mode is restored."""
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        net.train(was_training)


@contextmanager
def hooks(forward: list[tuple[nn.Module, object]] = (), pre: list[tuple[nn.Module, object]] = ()) -> Iterator[None]:
    """Forward (and forward-pre) hooks that live for the block only, removed even when the forward raises."""
    handles = []
    try:
        for module, hook in forward:
            handles.append(module.register_forward_hook(hook))
        for module, hook in pre:
            handles.append(module.register_forward_pre_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def trace(net: nn.Module, inputs: Tensor) -> Trace:
    store: dict[str, Tensor] = {}

    def output_of(name):
        def hook(module, args, output):
            store[name] = (output[0] if isinstance(output, tuple) else output).detach()
        return hook

    def input_of(name):
        def hook(module, args):
            store[name] = args[0].detach()
        return hook

    blocks = list(net.blocks)
    forward = [(net.token_embedding, output_of("token")), (net.position_embedding, output_of("position"))]
    forward += [(b.attn, output_of(f"attn_{i}")) for i, b in enumerate(blocks)]
    forward += [(b.ffn, output_of(f"ffn_{i}")) for i, b in enumerate(blocks)]
    pre = [(b.attn.proj, input_of(f"heads_{i}")) for i, b in enumerate(blocks)] + [(net.ln_final, input_of("final"))]
    with evaluating(net), hooks(forward, pre):
        output = net(inputs, return_attention=True)
    layers = range(len(blocks))
    return Trace(output.logits, output.aux, store["token"] + store["position"], [store[f"attn_{i}"] for i in layers],
                 [store[f"ffn_{i}"] for i in layers], [store[f"heads_{i}"] for i in layers], store["final"])


def _replaced(x: Tensor, patch: Patch) -> Tensor:
    columns = patch.input_columns or slice(None)
    out = x.clone()
    out[..., columns] = 0.0 if patch.value is None else patch.value[..., columns].to(x.dtype)
    return out


def ablated_logits(net: nn.Module, inputs: Tensor, patches: tuple[Patch, ...]) -> Tensor:
    """Logits (N, T, C) with every patch applied at once."""
    def output_hook(patch):
        def hook(module, args, output):
            if isinstance(output, tuple):
                return (_replaced(output[0], patch), *output[1:])
            return _replaced(output, patch)
        return hook

    def input_hook(patch):
        def hook(module, args):
            return (_replaced(args[0], patch), *args[1:])
        return hook

    forward = [(p.module, output_hook(p)) for p in patches if p.input_columns is None]
    pre = [(p.module, input_hook(p)) for p in patches if p.input_columns is not None]
    with evaluating(net), hooks(forward, pre):
        return net(inputs, return_attention=True).logits


def ablations(net: nn.Module, traced: Trace, mode: str) -> list[Ablation]:
    """Every FFN at once, every mixer at once, and each head of each layer alone (its slice of `proj`'s input).
    `mean` replaces by the probe's mean at each position, `zero` by zeros."""
    def value(t: Tensor) -> Tensor | None:
        return t.mean(0) if mode == "mean" else None

    blocks = list(net.blocks)
    plan = [Ablation(f"ffn_{mode}", tuple(Patch(b.ffn, value(traced.ffn_out[i])) for i, b in enumerate(blocks))),
            Ablation(f"attention_{mode}",
                     tuple(Patch(b.attn, value(traced.attention_out[i])) for i, b in enumerate(blocks)))]
    for i, block in enumerate(blocks):
        heads = block.attn.n_heads
        width = traced.head_inputs[i].shape[-1] // heads
        for h in range(heads):
            patch = Patch(block.attn.proj, value(traced.head_inputs[i]), slice(h * width, (h + 1) * width))
            plan.append(Ablation(f"layer_{i}/head_{h}_{mode}", (patch,)))
    return plan


def answer_queries(batch: Batch, seq_len: int) -> Tensor:
    """Input positions whose next-token prediction is an answer token (the same in every row of a digit task)."""
    return answer_columns(batch.answer_mask) + (seq_len - batch.answer_mask.shape[1])


def exact_match(logits: Tensor, batch: Batch) -> float:
    """Teacher-forced: the share of examples whose argmax is right at every answer position."""
    batch = Batch(*(t.to(logits.device) for t in batch))
    correct, mask = answer_correct(aligned_logits(NetOutput(logits), batch.targets.shape[1]), batch)
    return exact_answers(correct, mask).double().mean().item()


def attention_entropy(attention: Tensor, queries: Tensor) -> Tensor:
    """(H,) entropy in nats of each head's attention (N, H, T, T), averaged over examples and `queries`."""
    p = attention[:, :, queries].double()
    return -(p * p.clamp_min(1e-300).log()).sum(-1).mean((0, 2))


def digit_attention(attention: Tensor, n_digits: int) -> tuple[Tensor, Tensor]:
    """(H,), (H,): mean attention from the query that predicts o_j (position n + j) to the input digit d_j
    (position j, j < n), and summed over the lower digits d_0..d_{j-1} (j >= 1), where its carry comes from."""
    n = n_digits
    a = attention.double()
    operand = torch.stack([a[:, :, n + j, j] for j in range(n)], -1).mean((0, 2))
    lower = torch.stack([a[:, :, n + j, :j].sum(-1) for j in range(1, n + 1)], -1).mean((0, 2))
    return operand, lower


def logit_attribution(net: nn.Module, traced: Trace, batch: Batch, queries: Tensor) -> dict[str, Tensor]:
    """Per answer token (M,): the correct token's logit and its parts, `embedding + attention + ffn + constant`.

    The final norm is linearised at the full stream x: LayerNorm(x) = gamma (x - mean x) / s(x) + beta with
    s(x) = sqrt(var x + eps) computed on the whole of x, so component c contributes gamma (c - mean c) / s(x);
    RMSNorm divides c by rms(x) only; `none` is the identity. With s(x) held at its value the split is exact;
    `constant` is beta and the unembedding bias (what no component writes). In float64."""
    norm, unembed = net.ln_final, net.unembed
    answer = batch.answer_mask.to(traced.logits.device)
    targets = batch.targets.to(answer.device)[answer]  # (M,) example-major, as the rows below

    def rows(t: Tensor) -> Tensor:
        return t[:, queries].reshape(-1, t.shape[-1]).double()

    x = rows(traced.residual)
    weight = unembed.weight.double()[targets]  # (M, D)
    if isinstance(norm, nn.LayerNorm):
        scale = (x.var(-1, unbiased=False, keepdim=True) + norm.eps).rsqrt()
        centre = True
    elif isinstance(norm, nn.RMSNorm):
        eps = norm.eps if norm.eps is not None else torch.finfo(traced.residual.dtype).eps
        scale, centre = (x.pow(2).mean(-1, keepdim=True) + eps).rsqrt(), False
    elif isinstance(norm, nn.Identity):
        scale, centre = torch.ones_like(x[:, :1]), False
    else:
        raise TypeError(f"cannot linearise a final norm of type {type(norm).__name__}")
    gain = norm.weight.double() if getattr(norm, "weight", None) is not None else 1.0

    def through(component: Tensor) -> Tensor:
        c = rows(component)
        if centre:
            c = c - c.mean(-1, keepdim=True)
        return (c * scale * gain * weight).sum(-1)

    constant = torch.zeros(len(x), dtype=torch.float64, device=x.device)
    if getattr(norm, "bias", None) is not None:
        constant = constant + (norm.bias.double() * weight).sum(-1)
    if unembed.bias is not None:
        constant = constant + unembed.bias.double()[targets]
    logits = traced.logits[:, queries].reshape(-1, traced.logits.shape[-1])
    return {"embedding": through(traced.embedding), "attention": through(sum(traced.attention_out)),
            "ffn": through(sum(traced.ffn_out)), "constant": constant,
            "logit": logits.gather(1, targets[:, None])[:, 0].double()}


def top1_experts(aux: dict[str, Tensor], layer: int) -> tuple[Tensor, int] | None:
    """(N, T) the top-1 expert of each token and the number of experts, from `layer_<i>/ffn/expert_index`
    (N, T, k) (the chosen expert with the largest router probability in `layer_<i>/ffn/routing` (N, T, E)), or
    from the routing weights alone (the argmax: a soft-routed FFN's dominant head); None for a dense FFN."""
    index, routing = aux.get(f"layer_{layer}/ffn/expert_index"), aux.get(f"layer_{layer}/ffn/routing")
    if index is None and routing is None:
        return None
    if index is None:
        return routing.argmax(-1), routing.shape[-1]
    if routing is not None and index.shape[-1] > 1:
        best = routing.gather(-1, index).argmax(-1, keepdim=True)
        index = index.gather(-1, best)
    n_experts = routing.shape[-1] if routing is not None else int(index.max()) + 1
    return index[..., 0], n_experts


def usage(experts: Tensor, labels: Tensor, n_experts: int, n_labels: int) -> Tensor:
    """(n_labels, n_experts): the share of tokens with each label routed to each expert (NaN rows: absent label)."""
    joint = torch.bincount(labels.flatten() * n_experts + experts.flatten(), minlength=n_labels * n_experts)
    joint = joint.reshape(n_labels, n_experts).double()
    return joint / joint.sum(1, keepdim=True)


def entropy_bits(labels: Tensor) -> float:
    p = torch.bincount(labels.flatten()).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log2()).sum())


def mutual_information_bits(a: Tensor, b: Tensor) -> float:
    """Plug-in I(a; b) in bits from the joint counts of two label tensors of the same shape: H(a) + H(b) - H(a, b)."""
    a, b = a.flatten().long(), b.flatten().long()
    return max(entropy_bits(a) + entropy_bits(b) - entropy_bits(a * (int(b.max()) + 1) + b), 0.0)


def conditional_mutual_information_bits(a: Tensor, b: Tensor, given: Tensor) -> float:
    """I(a; b | given) = sum_g p(g) I(a; b | given = g), plug-in, in bits."""
    a, b, given = a.flatten(), b.flatten(), given.flatten()
    return sum((given == g).double().mean().item() * mutual_information_bits(a[given == g], b[given == g])
               for g in given.unique())
