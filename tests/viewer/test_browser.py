"""The viewer's page in a real browser (headless Chromium, the Debian package): opened on the Curves view of two
selected runs, it lists both runs, draws a plotly chart with a trace per run, and has fetched nothing from outside
this machine. Skipped where Chromium is missing; `make test-browser` installs it and runs this file."""
import shutil
import subprocess
import threading

import pytest

from viewer.server import ViewerServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (make test-browser installs it)")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A viewer over two real short runs, on a free port."""
    from launch import run
    from runtime.config.compose import compose_config
    from tests.conftest import SMALL

    root = tmp_path_factory.mktemp("browser_runs")
    for seed in (0, 1):
        run(compose_config([*SMALL, f"seed={seed}", "callbacks.progress.refresh_seconds=1000"],
                           output_dir=root / f"seed_{seed}"))
    server = ViewerServer(root, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def chromium(*args, timeout=90):
    result = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--disable-background-networking", "--virtual-time-budget=15000", *args],
                            capture_output=True, text=True, timeout=timeout)
    return result.stdout


def test_the_curves_view_of_two_selected_runs_renders_their_chart(served, tmp_path):
    address = f"{served.url}#tab=curves&run=seed_0&run=seed_1&metric=val/acc"
    dom = chromium("--dump-dom", address)
    assert "seed_0" in dom and "seed_1" in dom  # the runs table and the legend name both runs
    assert "main-svg" in dom  # plotly drew its chart
    assert dom.count('class="trace scatter') >= 4  # train and val of each selected run (together by default)
    assert "2 runs" in dom
    shot = tmp_path / "curves.png"
    chromium("--window-size=1400,1000", f"--screenshot={shot}", address)
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one


def test_the_run_view_shows_the_run_the_address_names(served):
    dom = chromium("--dump-dom", f"{served.url}#tab=run&run=seed_1")
    assert "seed_1 — completed" in dom and '"seed": 1' in dom  # its heading and its summary.json (raw, folded)
    assert 'class="card"' in dom and "grokking steps" in dom  # the summary card
    assert dom.count('class="trace scatter') >= 4  # its accuracy and loss, train and val
