"""Does per-token routing save compute? Tokens/s of the hybrid LM's static baseline, dynamic routing that mixes
both mechanisms at every token (dense, the research seed's), and dynamic routing that runs softmax attention only
at the tokens routed to it (sparse), on the same device, in one process.

Each arm is the experiment's net (conf/model/hybrid_lm.yaml at the preset's size) on random bytes: a training step
(forward, backward, AdamW) and an inference forward (eval mode: argmax routing), timed over `--steps` after
`--warmup` untimed ones, the device synchronised at both ends; arms alternate and repeat, and the medians are
printed with the ratios sparse / dense and each / static. The routers are forced to send a share `--share` of
random tokens to softmax (several values: the saving depends on it); `natural` keeps the routers' own decisions
at initialisation (about half).

With `--kernels` (a GPU with the `fla` extra) it first times the static net with Gated DeltaNet's pure-PyTorch
chunked form against flash-linear-attention's Triton kernel. `--set KEY=VALUE` reaches every arm's net (it comes
after the experiment, before the arm's own settings); a key the bench varies itself (model.routing_mode, and
model.gdn.kernel with --kernels) is refused. The GDN kernel the arms run is printed at start.

    python bench/hybrid_routing.py [--experiment hybrid_dynamic] [--size cpu|source] [--device cpu|cuda]
                                   [--share natural 0.1 0.5] [--kernels] [--set KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datamodules.batch import TaskSpec  # noqa: E402
from nets.kernels.fla_choice import fla_refusal  # noqa: E402
from nets.parts.gated_deltanet import kernel_in_use  # noqa: E402
from nets.parts.token_router import Routing, TokenRouter  # noqa: E402
from runtime.config.build import build_net  # noqa: E402
from runtime.config.compose import compose_config  # noqa: E402

STATIC = ["gdn", "gdn", "gdn", "attn"]


def forced_share(share: float, generator: torch.Generator):
    """A forward hook that replaces a router's decisions: each token goes to softmax with probability `share`."""

    def hook(router: TokenRouter, args, routing: Routing) -> Routing:
        draw = torch.rand(routing.choice.shape, generator=generator, device="cpu").to(routing.choice.device)
        choice = (draw < share).long()
        weights = torch.nn.functional.one_hot(choice, router.n_options).to(routing.weights.dtype)
        return Routing(weights + (routing.probs - routing.probs.detach()), routing.probs, choice, routing.logits)

    return hook


def arm_settings(layers: list[str], mode: str, kernel: str | None = None) -> dict[str, str]:
    """What makes an arm: its layer pattern, its routing mode and, when timing the kernels, its GDN kernel."""
    settings = {"model.layers": f"[{','.join(layers)}]", "model.routing_mode": mode}
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


def arm_net(experiment: str, overrides: list[str], settings: dict[str, str], device: str, share: str):
    cfg = arm_config(experiment, overrides, settings)
    spec = TaskSpec(num_classes=256, vocab_size=256, seq_len=cfg.data.seq_len)
    torch.manual_seed(0)
    net = build_net(cfg.model, spec).to(device)
    if share != "natural":
        generator = torch.Generator().manual_seed(0)
        for router in net.routers:
            router.register_forward_hook(forced_share(float(share), generator))
    return net, cfg


def softmax_share(net, tokens: torch.Tensor) -> float | None:
    aux = net(tokens).aux
    shares = [t.float().mean().item() for key, t in aux.items() if key.endswith("expert_index")]
    return sum(shares) / len(shares) if shares else None


def time_arm(net, cfg, device: str, steps: int, warmup: int, dtype: torch.dtype | None) -> tuple[float, float]:
    """(training tokens/s, inference tokens/s)."""
    batch, seq_len = cfg.data.batch_size, cfg.data.seq_len
    tokens = torch.randint(0, 256, (batch, seq_len + 1), device=device)
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
                 dtype: torch.dtype | None) -> dict[str, tuple[float, float]]:
    """{arm: (median training tokens/s, median inference tokens/s)}: the arms timed in turn, `repeats` times, so that
    a slow spell of the machine falls on all of them."""
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name in arms}
    for _ in range(repeats):
        for name, (net, cfg) in arms.items():
            rates[name].append(time_arm(net, cfg, device, steps, warmup, dtype))
    return {name: (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
            for name, runs in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="hybrid_dynamic")
    parser.add_argument("--size", default="cpu", help="the experiment's size (conf/size/): cpu or source")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--share", nargs="+", default=["natural", "0.1", "0.5"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--kernels", action="store_true", help="also time GDN's PyTorch form against fla's kernel")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override, e.g. --set data.seq_len=2048 --set data.batch_size=2")
    args = parser.parse_args()
    check_overrides(args.set, args.kernels)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = [f"size={args.size}", *args.set]
    dynamic = compose_config([f"experiment={args.experiment}", *overrides])
    routed = list(dynamic.model.layers)
    dtype = torch.bfloat16 if args.device == "cuda" and "bf16" in str(dynamic.trainer.precision) else None
    print(f"{args.experiment} at size {args.size} on {args.device}: d_model {dynamic.model.d_model}, batch {dynamic.data.batch_size} x "
          f"{dynamic.data.seq_len} tokens, {'bf16 autocast' if dtype else 'float32'}; static {STATIC}, dynamic "
          f"{routed}; medians of {args.repeats} alternating repeats of {args.steps} steps")
    static_net, static_cfg = arm_net(args.experiment, overrides, arm_settings(STATIC, "dense"), args.device, "natural")
    print(f"GDN kernel: {kernel_in_use(static_net, torch.device(args.device).type)}")
    if args.kernels and (refused := fla_refusal()) is not None:
        print(f"--kernels skipped: {refused}")
    elif args.kernels:
        kernels = {kernel: arm_net(args.experiment, overrides, arm_settings(STATIC, "dense", kernel), args.device,
                                   "natural") for kernel in ("torch", "fla")}
        median = median_rates(kernels, args.device, args.steps, args.warmup, args.repeats, dtype)
        for kernel, (train, infer) in median.items():
            print(f"static net, GDN kernel {kernel:<6}: train {train:,.0f} tok/s, inference {infer:,.0f} tok/s")
        print(f"fla / torch: train {median['fla'][0] / median['torch'][0]:.2f}, "
              f"inference {median['fla'][1] / median['torch'][1]:.2f}")
    print(f"{'arm':<16}{'share to softmax':>18}{'train tok/s':>14}{'infer tok/s':>14}{'train / static':>16}"
          f"{'infer / static':>16}")
    for share in args.share:
        arms = {"static": (static_net, static_cfg)}
        for mode in ("dense", "sparse"):
            arms[mode] = arm_net(args.experiment, overrides, arm_settings(routed, mode), args.device, share)
        median = median_rates(arms, args.device, args.steps, args.warmup, args.repeats, dtype)
        probe = torch.randint(0, 256, (static_cfg.data.batch_size, static_cfg.data.seq_len), device=args.device)
        for name, (train, infer) in median.items():
            net = arms[name][0]
            net.eval()
            with torch.no_grad():
                measured = softmax_share(net, probe)
            label = "-" if measured is None else f"{measured:.2f} ({share})"
            print(f"{name:<16}{label:>18}{train:>14,.0f}{infer:>14,.0f}{train / median['static'][0]:>16.3f}"
                  f"{infer / median['static'][1]:>16.3f}")
        print(f"sparse / dense at share {share}: train {median['sparse'][0] / median['dense'][0]:.3f}, "
              f"inference {median['sparse'][1] / median['dense'][1]:.3f}")


if __name__ == "__main__":
    main()
