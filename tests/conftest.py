"""Shared helpers: compose the launcher's config in-process and run it in a temporary run folder."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("WANDB_MODE", "offline")  # never reach for the network from a test
os.environ.setdefault("WANDB_SILENT", "true")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs one worker per core: one thread each (and for the
    os.environ["OMP_NUM_THREADS"] = "1"     # launches they spawn), so workers never spin-wait on each other
    torch.set_num_threads(1)

# Files of minutes each on one CPU thread, longest first. `make test` gives whole files to the workers in the order
# below (--no-loadscope-reorder), so these start at once instead of running alone at the end.
LONG_FILES = ("tests/test_mqar.py", "tests/test_moe_expressivity.py", "tests/callbacks/test_grokfast.py",
              "tests/test_hybrid_lm.py", "tests/reproduce/test_suite_cpu.py")


def pytest_collection_modifyitems(config, items):
    """The long files first, then the rest by number of tests, most first (xdist's own order): a file's tests
    stay together and in their order (the sort is stable)."""
    counts = Counter(item.nodeid.split("::")[0] for item in items)

    def rank(item):
        path = item.nodeid.split("::")[0]
        return (LONG_FILES.index(path) if path in LONG_FILES else len(LONG_FILES), -counts[path])

    items.sort(key=rank)


# A small task that learns in a few hundred CPU steps; tests add their own overrides after these.
SMALL = [
    "data.p=11",
    "trainer.max_steps=40",
    "trainer.val_check_interval=10",
    "trainer.log_every_n_steps=10",
    "callbacks.progress.refresh_seconds=1000",
]


@pytest.fixture
def run_config(tmp_path):
    """run_config(overrides, name="run") -> (summary, run_dir): a full launch.run in tmp_path/name."""
    from launch import run
    from runtime.config.compose import compose_config

    def _run(overrides=(), name="run"):
        out = tmp_path / name
        summary = run(compose_config([*SMALL, *overrides], output_dir=out))
        return summary, out

    return _run


def run_quietly(overrides, output_dir):
    """(summary, what it printed) of a full launch.run of `overrides` in output_dir, in this process. The thread
    count is put back afterwards: a `threads=` override sets the process's, and later tests must not inherit it."""
    from launch import run
    from runtime.config.compose import compose_config

    threads, printed = torch.get_num_threads(), io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            summary = run(compose_config(list(overrides), output_dir=output_dir))
    finally:
        torch.set_num_threads(threads)
    return summary, printed.getvalue()


def rebuilt(overrides, checkpoint):
    """(module, task) of the run that `overrides` compose (the full list, SMALL included where the run had it): the
    task and the net built afresh, the net holding `checkpoint`'s weights, in a plain TaskModule in eval mode.
    What a test measures on it is independent of the run's own module, loggers and callbacks."""
    from lightning_modules import AdamWRecipe, TaskModule
    from runtime.config.build import build, build_net
    from runtime.config.compose import compose_config

    cfg = compose_config(list(overrides), output_dir=Path(checkpoint).parent.parent)
    task = build(cfg.data, "data")
    net = build_net(cfg.model, task.spec)
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")})
    return TaskModule(net, task.spec, AdamWRecipe()).eval(), task


def evaluate_checkpoint(overrides, checkpoint):
    """`<split>/<metric>` of `checkpoint`'s weights on every split of the task, by a freshly built module: what
    summary.json's `final` must hold for the weights it names."""
    module, task = rebuilt(overrides, checkpoint)
    return {f"{split}/{name}": value for split in task.split_names()
            for name, value in module.evaluate(task.eval_batches(split)).items()}


def final_routing(overrides, run_dir, probe_size=8):
    """(probe, aux, routing options): the eval-mode forward of the run's last.ckpt on the first `probe_size`
    validation windows, the probe of the token-routing diagnostic (callbacks/diagnostics/token_routing.py). It runs on one
    thread, as the runs that use this do (threads=1), so its routing choices are the diagnostic's own, bit for bit."""
    module, task = rebuilt(overrides, Path(run_dir) / "checkpoints" / "last.ckpt")
    probe = task.examples("val", probe_size)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            aux = module.net(probe.inputs).aux
    finally:
        torch.set_num_threads(threads)
    return probe, aux, module.net.routing_options


def token_routing_of_final_weights(overrides, run_dir, probe_size=8):
    """What the token-routing diagnostic logs at the end of a run, counted here token by token from final_routing.
    -> {metric name: value} of every routed layer."""
    probe, aux, options = final_routing(overrides, run_dir, probe_size)
    answers = probe.answer_mask.tolist()  # (windows, tokens); all True for a language model's windows
    some_answers = 0 < sum(map(sum, answers)) < sum(map(len, answers))
    values = {}
    for key in (k for k in aux if k.endswith("/routing")):
        layer, prefix = key.split("/")[0], key.removesuffix("routing")
        probs = aux[key].double().tolist()  # [window][token][option]
        choices = aux[prefix + "expert_index"][..., 0].tolist()  # [window][token]
        tokens = [(w, t) for w in range(len(choices)) for t in range(len(choices[w]))]
        shares = [sum(choices[w][t] == j for w, t in tokens) / len(tokens) for j in range(len(options))]
        mean_probs = [sum(probs[w][t][j] for w, t in tokens) / len(tokens) for j in range(len(options))]
        values |= {f"routing/eval_share/{layer}/{name}": share for name, share in zip(options, shares)}
        values[f"routing/eval_entropy/{layer}"] = sum(-sum(p * math.log(p) for p in probs[w][t])
                                                      for w, t in tokens) / len(tokens)
        values[f"routing/eval_balance/{layer}"] = len(options) * sum(f * p for f, p in zip(shares, mean_probs))
        if some_answers:
            for where, wanted in (("at_answers", True), ("elsewhere", False)):
                picked = [choices[w][t] == len(options) - 1 for w, t in tokens if answers[w][t] == wanted]
                values[f"routing/eval_share_{where}/{layer}/{options[-1]}"] = sum(picked) / len(picked)
    return values


def launch_cli(args, cwd, timeout=300, env=None):
    """Run `python launch.py ARGS` in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )


def read_json(path):
    return json.loads(Path(path).read_text())


def metrics_rows(run_dir, file="metrics.csv"):
    """The rows of a run's metrics.csv (or another of its CSV files), as dicts of strings (empty where a row has no
    value)."""
    with open(Path(run_dir) / file) as f:
        return list(csv.DictReader(f))


def reproducible_rows(run_dir, file="metrics.csv"):
    """metrics_rows without the wall-clock speeds (`speed/...`), which no two runs share: what a resumed run must
    reproduce of an uninterrupted one."""
    return [{key: value for key, value in row.items() if not key.startswith("speed/")}
            for row in metrics_rows(run_dir, file)]


def assert_same_final_metrics(resumed, straight):
    """A resumed run ends on the final metrics of the uninterrupted one (to float noise)."""
    for key, value in straight["final"].items():
        assert resumed["final"][key] == pytest.approx(value, rel=1e-6, abs=1e-7), key


def assert_resume_ends_as_straight_run(run_config, overrides, steps, stop_at):
    """Train `steps` straight, and `stop_at` steps then resumed from that run's last.ckpt to `steps`: same end."""
    straight, _ = run_config([*overrides, f"trainer.max_steps={steps}"], name="straight")
    _, first = run_config([*overrides, f"trainer.max_steps={stop_at}"], name="first")
    resumed, _ = run_config([*overrides, f"trainer.max_steps={steps}", f"ckpt_path={first}/checkpoints/last.ckpt"],
                            name="resumed")
    assert resumed["steps"] == straight["steps"] == steps
    assert_same_final_metrics(resumed, straight)


def record_figures(monkeypatch, *modules):
    """{name: Figure}, filled with every figure the callback `modules` publish from then on (the latest under each
    name; each is still saved as its PNG), for tests to read the plotted data back from the figure's axes."""
    figures = {}
    for module in modules:
        def record(trainer, name, figure, publish=module.publish_figure):
            figures[name] = figure
            return publish(trainer, name, figure)

        monkeypatch.setattr(module, "publish_figure", record)
    return figures


@pytest.fixture
def drawn_figures(monkeypatch):
    """drawn_figures(*callback modules) -> record_figures of them for the test."""
    return lambda *modules: record_figures(monkeypatch, *modules)


@pytest.fixture
def compile_cache_of_this_kernel_set(monkeypatch):
    """torch's on-disk compile cache does not tell ATen's CPU kernel sets apart: C++ it generated with AVX-512 vectors
    and cached is handed to a process under ATEN_CPU_CAPABILITY=default, whose headers have no vectors (a compile
    error). Under a chosen kernel set the compile gets a cache folder of its own."""
    from torch._inductor.runtime.runtime_utils import default_cache_dir

    if capability := os.environ.get("ATEN_CPU_CAPABILITY"):
        monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", f"{default_cache_dir()}-{capability}")


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread beats two, by far on a busy machine (threads spin waiting for each other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
