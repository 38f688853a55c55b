"""Time to grok with and without Grokfast, from the same initial weights.

Tasks mode (the default): for each task, no filter against one filter (`--grokfast`), sharing seed, split and
init (the summaries' `init_fingerprint` is printed and checked); a run stops when val acc first reaches 0.99.
Printed: steps and wall seconds to that point per arm, and the ratios without/with (> 1: Grokfast is faster).

Paper mode (`--paper full|cpu`): the Grokfast paper's task and regime (conf/experiment/grokfast_paper.yaml:
x·y mod 97, 50% train, batch 512, 2-layer transformer, Adam lr 1e-3, no clipping; `cpu` is its CPU size,
conf/size/grokfast_paper/cpu.yaml). For each seed (init, split and batch order), three arms from the same weights: no
filter, Grokfast-MA (w 100, λ 5) and Grokfast EMA (α 0.98, λ 2); printed: steps to val acc 0.95 (the paper's
criterion) with wall seconds, and the ratios none/MA and none/EMA. The initial weights are each layer's PyTorch
default, as in the reference code, which never re-initialises (`--init torch`: embeddings N(0, 1), linears
U(±1/sqrt(fan_in)); the framework's N(0, 0.02), `--init framework`, generalises while it memorises here, leaving
no delay to shorten). Adam's L2 weight decay follows the paper's
runs by default (none 0, MA 0.01, EMA 0.005; `--l2 paper`); `--l2 X` gives every arm the same X instead, so that
the ratio measures the filter alone (the no-filter arm then runs a λ = 0 filter, which only adds the L2).

A run that does not get there within `--max-steps` is reported as such, never as a number; a ratio with one such
arm is a bound (">" or "<").

    python bench/time_to_grok.py [--tasks mlp transformer mlp_p23] [--max-steps 6000] [--grokfast ema] [--lamb 5]
    python bench/time_to_grok.py --paper cpu --seeds 0 1 2 --jobs 2 threads=1
"""
from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from launch import run  # noqa: E402
from runtime.config.compose import compose_config  # noqa: E402
from reproduce.studies.grokfast import ARMS, paper_arm  # noqa: E402  (the paper's arms)
from runtime.lifecycle.init_weights import save_torch_default_init  # noqa: E402

TASKS = {
    "mlp": ["experiment=mlp_grok"],  # p=97, 50% train, wd 1: groks in ~4,000 full-batch steps
    # 1 block, p=59, 40% train: memorises by step ~100, val acc 0.99 at ~2,300 (a few minutes on 2 cores)
    "transformer": ["experiment=transformer_grok", "size=cpu", "data.train_fraction=0.4"],
    # the slow-grokking regime Grokfast targets: p=23, 80% train, lr 1e-3 (val acc 0.99 at ~5,500 steps)
    "mlp_p23": ["data.p=23", "data.train_fraction=0.8", "model.hidden_dim=128", "optimizer.lr=1e-3"],
}
PAPER = {"full": ["experiment=grokfast_paper"], "cpu": ["experiment=grokfast_paper", "size=cpu"]}
PAPER_THRESHOLD = 0.95


def time_to_grok(overrides: list[str], threshold: float = 0.99) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        summary = run(compose_config([*overrides, "callbacks.grokking_time.stop_after_steps=0"], output_dir=tmp))
    step = summary["grok"].get(f"grok/val_acc_{threshold:g}_step")
    wall = summary["wall_time_s"] * step / summary["steps"] if step else None  # to the grokking step itself
    return {"step": step, "wall": wall, "init": summary["init_fingerprint"], "steps_run": summary["steps"]}


def describe(result: dict) -> str:
    if result["step"] is None:
        return f"not grokked in {result['steps_run']} steps"
    return f"{result['step']:6d} steps {result['wall']:7.1f} s"


def run_tasks(args: argparse.Namespace) -> None:
    common = [f"trainer.max_steps={args.max_steps}", "callbacks.progress.refresh_seconds=1", *args.overrides]
    for task in args.tasks:
        plain = time_to_grok([*TASKS[task], *common])
        lamb = [] if args.lamb is None else [f"callbacks.grokfast.lamb={args.lamb}"]
        fast = time_to_grok([*TASKS[task], *common, f"grokfast={args.grokfast}", *lamb])
        assert plain["init"] == fast["init"], "the arms must start from the same weights"
        print(f"{task:12s} without grokfast: {describe(plain)}")
        print(f"{task:12s} with grokfast={args.grokfast} λ={args.lamb or 'default'}: {describe(fast)}   (init {plain['init']})")
        if plain["step"] and fast["step"]:
            print(f"{task:12s} time-to-grok ratio without/with: steps {plain['step'] / fast['step']:.2f}x, "
                  f"wall {plain['wall'] / fast['wall']:.2f}x")
        else:
            print(f"{task:12s} time-to-grok ratio: undefined (an arm did not grok within {args.max_steps} steps)")


def arm_overrides(arm: str, l2: str) -> list[str]:
    """The arm's filter and its Adam L2: the paper's per arm, or one value for all (none: a λ = 0 filter)."""
    if l2 == "paper":
        return paper_arm(arm)
    if float(l2) == 0:
        return ARMS[arm]
    filter_ = ARMS[arm] or ["grokfast=ema", "callbacks.grokfast.lamb=0"]
    return [*filter_, f"callbacks.grokfast.l2={float(l2)}"]


def run_paper_arm(job: tuple[int, str, list[str]]) -> tuple[int, str, dict]:
    seed, arm, overrides = job
    return seed, arm, time_to_grok(overrides, PAPER_THRESHOLD)


def steps_cell(result: dict) -> str:
    if result["step"] is None:
        return f">{result['steps_run']}"
    return f"{result['step']} ({result['wall']:.0f} s)"


def ratio_cell(base: dict, arm: dict) -> tuple[str, float | None]:
    """none/arm in steps: exact, a bound when one arm did not get there, '-' when neither did."""
    if base["step"] and arm["step"]:
        value = base["step"] / arm["step"]
        return f"{value:.2f}x", value
    if arm["step"]:
        return f">{base['steps_run'] / arm['step']:.2f}x", None
    if base["step"]:
        return f"<{base['step'] / arm['steps_run']:.2f}x", None
    return "-", None


def run_paper(args: argparse.Namespace) -> None:
    common = [*PAPER[args.paper], "callbacks.best_checkpoint=null", *args.overrides]
    if args.max_steps_given:
        common.append(f"trainer.max_steps={args.max_steps}")
    # parallel runs: a plain line a minute each instead of interleaved bars
    common += (["callbacks.progress.plain=true", "callbacks.progress.plain_every_seconds=60"] if args.jobs > 1
               else ["callbacks.progress.refresh_seconds=1"])
    results: dict[int, dict[str, dict]] = {seed: {} for seed in args.seeds}
    with tempfile.TemporaryDirectory() as inits:
        jobs = []
        for seed in args.seeds:
            per_seed = [*common, f"seed={seed}", f"data.split_seed={seed}", f"data.shuffle_seed={seed}"]
            if args.init == "torch":
                path = Path(inits) / f"seed{seed}.pt"
                save_torch_default_init(per_seed, seed, path)
                per_seed.append(f"init_from={path}")
            jobs += [(seed, arm, [*per_seed, *arm_overrides(arm, args.l2)]) for arm in ARMS]
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for done in as_completed([pool.submit(run_paper_arm, job) for job in jobs]):
                seed, arm, result = done.result()
                results[seed][arm] = result
                print(f"[bench] seed {seed} {arm:4s}: {steps_cell(result)}", flush=True)
    l2 = ("paper's: none 0, ma 0.01, ema 0.005" if args.l2 == "paper" else f"{float(args.l2):g} for every arm")
    print(f"\n{' '.join([*PAPER[args.paper], *args.overrides])}")
    print(f"steps to val acc {PAPER_THRESHOLD} (wall s to that step); Adam L2 {l2}; init {args.init}; arms share "
          f"init, split and batch order")
    print(f"{'seed':>4}  {'init':16}  {'none':>16}  {'ma':>16}  {'ema':>16}  {'none/ma':>8}  {'none/ema':>8}")
    exact: dict[str, list[float]] = {"ma": [], "ema": []}
    for seed in args.seeds:
        arms = results[seed]
        inits = {r["init"] for r in arms.values()}
        assert len(inits) == 1, f"seed {seed}: the arms must start from the same weights ({inits})"
        cells = []
        for arm in ("ma", "ema"):
            text, value = ratio_cell(arms["none"], arms[arm])
            cells.append(text)
            if value is not None:
                exact[arm].append(value)
        print(f"{seed:>4}  {inits.pop():16}  " + "  ".join(f"{steps_cell(arms[a]):>16}" for a in ARMS)
              + f"  {cells[0]:>8}  {cells[1]:>8}")
    if any(exact.values()):
        medians = ", ".join(f"none/{arm} {statistics.median(v):.2f}x ({len(v)} seeds)" for arm, v in exact.items() if v)
        print(f"median of the exact ratios: {medians}")
    print("'>N': val acc 0.95 not reached in N steps; a ratio '>x' is a lower bound, '<x' an upper one")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["mlp", "transformer"], choices=list(TASKS))
    parser.add_argument("--max-steps", type=int, default=None,
                        help="step budget per run (tasks: 6000; paper: the experiment's)")
    parser.add_argument("--grokfast", default="ema", choices=["ema", "ma"])
    parser.add_argument("--lamb", type=float, default=None, help="Grokfast's λ (default: the paper's)")
    parser.add_argument("--paper", choices=list(PAPER), help="the paper's task and regime: three arms per seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="paper mode: seeds to run")
    parser.add_argument("--l2", default="paper", help="paper mode: 'paper' (per arm) or one value for every arm")
    parser.add_argument("--init", default="torch", choices=["torch", "framework"],
                        help="paper mode: PyTorch's default init per layer (the reference code's) or the model's own")
    parser.add_argument("--jobs", type=int, default=1, help="paper mode: runs in parallel processes")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run, as for launch.py")
    args = parser.parse_args()
    args.max_steps_given = args.max_steps is not None
    if args.paper:
        try:
            args.l2 == "paper" or float(args.l2) >= 0 or parser.error("--l2 must be >= 0")
        except ValueError:
            parser.error(f"--l2 must be 'paper' or a number, not {args.l2!r}")
        run_paper(args)
    else:
        args.max_steps = args.max_steps or 6000
        run_tasks(args)


if __name__ == "__main__":
    main()
