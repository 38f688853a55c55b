"""Does per-token routing save compute, and how far is each net from the device's limit? Tokens/s, model FLOP/s and
MFU of the hybrid LM's static baseline, dynamic routing that mixes both mechanisms at every token (dense, the
research seed's), and dynamic routing that runs softmax attention only at the tokens routed to it (sparse), on the
same device, in one process.

Each arm is the experiment's net (conf/model/hybrid_lm.yaml at `--size`: on a GPU by default the seed's, `source`,
on a CPU `cpu`) on random token ids below the vocabulary the preset's data gives the net (the BPE's `vocab_size`;
256 bytes): a training step (forward, backward, AdamW) and an inference forward (eval mode:
argmax routing), timed over `--steps` after `--warmup` untimed ones (the first compiles Gated DeltaNet's chunked
form on a GPU), the device synchronised at both ends. All arms are built first, then timed in turn `--repeats`
times, so that a slow spell of the machine falls on all of them; printed are the medians, the spread of the
training repeats ((max - min) / median), and the ratios sparse / dense and each / static. The routers are forced
to send a share `--share` of random tokens to softmax (several values: the saving depends on it); `natural` keeps
the routers' own decisions at initialisation (about half). Sparse mode's capacity follows the share: softmax may
take 1.25 x the share of each block (`model.routing_capacity_factor` = 2.5 x share; the preset's for `natural`;
`--set model.routing_capacity_factor=...` fixes it for every share), and the share of tokens that overflowed it is
printed.

Model FLOPs per token are the net's own count (nets/parts/flops.py; a training step is 3 forwards); model FLOP/s is
that x tokens/s, and MFU is FLOP/s over the device's peak (core/device_peaks.py: by the GPU's name, in the
precision the preset trains in), or over `--peak-tflops` where given. A CPU has no peak: FLOP/s only.

With `--kernels` (a GPU with the `fla` extra) it first times the static net with Gated DeltaNet's pure-PyTorch
chunked form against flash-linear-attention's Triton kernel. `--set KEY=VALUE` reaches every arm's net (it comes
after the experiment, before the arm's own settings); a key the bench varies itself (model.routing_mode, and
model.gdn.kernel with --kernels) is refused. The GDN kernel the arms run is printed at start.

    python bench/hybrid_routing.py [--device cpu|cuda] [--experiment hybrid_dynamic] [--size source|cpu]
                                   [--share 0.1 0.25 0.5 natural] [--peak-tflops P] [--kernels] [--set KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from callbacks.run.throughput import device_peak  # noqa: E402
from datamodules.batch import TaskSpec  # noqa: E402
from nets.kernels.fla_choice import fla_refusal  # noqa: E402
from nets.parts.flops import flops_per_token  # noqa: E402
from nets.parts.gated_deltanet import kernel_in_use  # noqa: E402
from nets.parts.token_router import Routing, TokenRouter  # noqa: E402
from runtime.config.build import build_net  # noqa: E402
from runtime.config.compose import compose_config  # noqa: E402

STATIC = ["gdn", "gdn", "gdn", "attn"]
CAPACITY_PER_SHARE = 2.5  # routing_capacity_factor per forced share: slots for 1.25 x the share of each block
# per device: (size, steps, warmup, repeats, shares); a GPU's fit in 3 minutes on one H100-class card
DEFAULTS = {"cuda": ("source", 6, 2, 2, ["0.1", "0.25", "0.5"]),
            "cpu": ("cpu", 10, 3, 3, ["natural", "0.1", "0.25", "0.5"])}


def forced_share(share: float, generator: torch.Generator):
    """A forward hook that replaces a router's decisions: each token goes to softmax with probability `share`."""

    def hook(router: TokenRouter, args, routing: Routing) -> Routing:
        draw = torch.rand(routing.choice.shape, generator=generator, device="cpu").to(routing.choice.device)
        choice = (draw < share).long()
        weights = torch.nn.functional.one_hot(choice, router.n_options).to(routing.weights.dtype)
        return Routing(weights + (routing.probs - routing.probs.detach()), routing.probs, choice, routing.logits)

    return hook


def arm_settings(layers: list[str], mode: str, kernel: str | None = None, share: str = "natural",
                 overrides: tuple[str, ...] = ()) -> dict[str, str]:
    """What makes an arm: its layer pattern, its routing mode, in sparse mode the capacity for a forced share
    (unless the user's overrides set one) and, when timing the kernels, its GDN kernel."""
    settings = {"model.layers": f"[{','.join(layers)}]", "model.routing_mode": mode}
    user_keys = {override.split("=", 1)[0].lstrip("+~") for override in overrides}
    if mode == "sparse" and share != "natural" and "model.routing_capacity_factor" not in user_keys:
        settings["model.routing_capacity_factor"] = f"{CAPACITY_PER_SHARE * float(share):g}"
    if kernel is not None:
        settings["model.gdn.kernel"] = kernel
    return settings


def check_overrides(overrides: list[str], kernels: bool) -> None:
    """The user's overrides reach every arm; those of a key the bench varies itself would not, so they are
    refused (model.layers sets the dynamic arm: the static one is the study's baseline)."""
    varied = {"model.routing_mode": "the bench times dense and sparse routing"}
    if kernels:
        varied["model.gdn.kernel"] = "--kernels times the torch and fla kernels"
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in varied:
            raise SystemExit(f"--set {override} is not allowed: {varied[key]}")


def arm_config(experiment: str, overrides: list[str], settings: dict[str, str]):
    """The arm's config: the experiment, the user's overrides, then the arm's own settings (`arm_settings`), so
    that everything the user set reaches the net but what the arms differ in."""
    return compose_config([f"experiment={experiment}", *overrides, *(f"{k}={v}" for k, v in settings.items())])


def vocabulary(cfg) -> int:
    """The vocabulary the preset's data gives the net, read from its config (the corpus need not be installed): a
    trained BPE's `vocab_size` (on a large corpus it reaches it), else bytes."""
    return int(cfg.data.vocab_size) if OmegaConf.select(cfg, "data.tokenizer") == "bpe" else 256


def arm_net(experiment: str, overrides: list[str], settings: dict[str, str], device: str, share: str):
    cfg = arm_config(experiment, overrides, settings)
    vocab = vocabulary(cfg)
    spec = TaskSpec(num_classes=vocab, vocab_size=vocab, seq_len=cfg.data.seq_len)
    torch.manual_seed(0)
    net = build_net(cfg.model, spec).to(device)
    if share != "natural":
        generator = torch.Generator().manual_seed(0)
        for router in net.routers:
            router.register_forward_hook(forced_share(float(share), generator))
    return net, cfg


def routing_of(net, tokens: torch.Tensor) -> tuple[float | None, float | None]:
    """(share of tokens routed to softmax, share that overflowed sparse mode's capacity) of an eval forward,
    averaged over the routed layers; None where the net has none."""
    aux = net(tokens).aux
    mean = lambda values: sum(values) / len(values) if values else None  # noqa: E731
    return (mean([t.float().mean().item() for key, t in aux.items() if key.endswith("expert_index")]),
            mean([t.item() for key, t in aux.items() if key.endswith("overflow")]))


def time_arm(net, cfg, device: str, steps: int, warmup: int, dtype: torch.dtype | None) -> tuple[float, float]:
    """(training tokens/s, inference tokens/s)."""
    batch, seq_len = cfg.data.batch_size, cfg.data.seq_len
    tokens = torch.randint(0, vocabulary(cfg), (batch, seq_len + 1), device=device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    autocast = torch.autocast(device_type=device, dtype=dtype, enabled=dtype is not None)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def train_step():
        with autocast:
            logits = net(inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def infer_step():
        with torch.no_grad(), autocast:
            net(inputs)

    rates = []
    for mode, step in (("train", train_step), ("eval", infer_step)):
        net.train(mode == "train")
        for _ in range(warmup):
            step()
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        rates.append(steps * batch * seq_len / (time.perf_counter() - start))
    return rates[0], rates[1]


def median_rates(arms: dict, device: str, steps: int, warmup: int, repeats: int,
                 dtype: torch.dtype | None) -> dict[str, tuple[float, float, float]]:
    """{arm: (median training tokens/s, median inference tokens/s, spread of the training repeats)}: the arms
    timed in turn, `repeats` times, so that a slow spell of the machine falls on all of them."""
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name in arms}
    for _ in range(repeats):
        for name, (net, cfg) in arms.items():
            rates[name].append(time_arm(net, cfg, device, steps, warmup, dtype))
    result = {}
    for name, runs in rates.items():
        train = [r[0] for r in runs]
        median = statistics.median(train)
        result[name] = (median, statistics.median(r[1] for r in runs), (max(train) - min(train)) / median)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--experiment", default="hybrid_dynamic")
    parser.add_argument("--size", default=None, help="the experiment's size (conf/size/): source (default on cuda) or cpu")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--share", nargs="+", default=None)
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, overriding the table")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--kernels", action="store_true", help="also time GDN's PyTorch form against fla's kernel")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override, e.g. --set data.seq_len=2048 --set data.batch_size=2")
    args = parser.parse_args()
    device = torch.device(args.device).type
    experiment = args.experiment
    size, steps, warmup, repeats, shares = (
        given if given is not None else default
        for given, default in zip((args.size, args.steps, args.warmup, args.repeats, args.share),
                                  DEFAULTS.get(device, DEFAULTS["cpu"])))
    check_overrides(args.set, args.kernels)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    overrides = [f"size={size}", *args.set]
    dynamic = compose_config([f"experiment={experiment}", *overrides])
    routed = list(dynamic.model.layers)
    precision = str(dynamic.trainer.precision) if device == "cuda" else "32-true"
    dtype = torch.bfloat16 if precision.startswith("bf16") else None
    seq_len = dynamic.data.seq_len
    print(f"{experiment} at size {size} on {device}: d_model {dynamic.model.d_model}, batch {dynamic.data.batch_size} x {seq_len} "
          f"tokens, {'bf16 autocast' if dtype else 'float32'}; static {STATIC}, dynamic {routed}, routing blocks of "
          f"{dynamic.model.routing_block}; medians of {repeats} alternating repeats of {steps} steps")
    peak = device_peak(torch.device(args.device), precision, args.peak_tflops)
    print(f"peak: {peak[1]}, {peak[0] / 1e12:,.1f} TFLOP/s" if peak else
          f"peak: none known for {device} (FLOP/s only; --peak-tflops gives one)")
    static_net, static_cfg = arm_net(experiment, overrides, arm_settings(STATIC, "dense"), args.device, "natural")
    print(f"GDN kernel: {kernel_in_use(static_net, device)}")
    if args.kernels and (refused := fla_refusal()) is not None:
        print(f"--kernels skipped: {refused}")
    elif args.kernels:
        kernels = {kernel: arm_net(experiment, overrides, arm_settings(STATIC, "dense", kernel), args.device,
                                   "natural") for kernel in ("torch", "fla")}
        median = median_rates(kernels, args.device, steps, warmup, repeats, dtype)
        for kernel, (train, infer, _) in median.items():
            print(f"static net, GDN kernel {kernel:<6}: train {train:,.0f} tok/s, inference {infer:,.0f} tok/s")
        print(f"fla / torch: train {median['fla'][0] / median['torch'][0]:.2f}, "
              f"inference {median['fla'][1] / median['torch'][1]:.2f}")

    arms = {("static", "-"): (static_net, static_cfg)}
    for share in shares:
        for mode in ("dense", "sparse"):
            settings = arm_settings(routed, mode, share=share, overrides=tuple(args.set))
            arms[(mode, share)] = arm_net(experiment, overrides, settings, args.device, share)
    median = median_rates(arms, args.device, steps, warmup, repeats, dtype)
    per_step = dynamic.data.batch_size * seq_len
    print(f"{'arm':<8}{'share':>15}{'capacity':>10}{'overflow':>10}{'train tok/s':>13}{'spread':>8}{'steps/s':>9}"
          f"{'MFLOP/tok':>11}{'TFLOP/s':>9}{'MFU':>7}{'infer tok/s':>13}{'train/static':>14}{'infer/static':>14}")
    probe = torch.randint(0, vocabulary(dynamic), (dynamic.data.batch_size, seq_len), device=args.device)
    static_train, static_infer = median[("static", "-")][:2]
    for (name, share), (train, infer, spread) in median.items():
        net, cfg = arms[(name, share)]
        net.eval()
        with torch.no_grad():
            measured, overflow = routing_of(net, probe)
        label = "-" if measured is None else f"{measured:.2f} ({share})"
        capacity = f"{cfg.model.routing_capacity_factor:g}" if name == "sparse" else "-"
        per_token = flops_per_token(net, seq_len)
        flops = train * per_token
        print(f"{name:<8}{label:>15}{capacity:>10}{'-' if overflow is None else f'{overflow:.4f}':>10}"
              f"{train:>13,.0f}{spread:>8.1%}{train / per_step:>9.2f}{per_token / 1e6:>11.1f}{flops / 1e12:>9.3g}"
              f"{'-' if peak is None else f'{flops / peak[0]:.1%}':>7}{infer:>13,.0f}{train / static_train:>14.3f}"
              f"{infer / static_infer:>14.3f}")
    for share in shares:
        dense, sparse = median[("dense", share)], median[("sparse", share)]
        print(f"sparse / dense at share {share}: train {sparse[0] / dense[0]:.3f}, inference {sparse[1] / dense[1]:.3f}")
    print(f"bench took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
