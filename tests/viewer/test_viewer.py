"""The local viewer on real run folders (a 2-job multirun and a single run): what its pages show (viewer/data.py),
and its HTTP server: the page, the local plotly.js, the JSON API, images, and nothing outside the served folder."""
import http.client
import json
import os
import re
import shutil
import threading

import matplotlib
import numpy as np
import pytest

from core.errors import ConfigError
from tests.conftest import SMALL, launch_cli, metrics_rows, read_json
from viewer import data, sweeps
from viewer.__main__ import main
from viewer.server import STATIC, ViewerServer

matplotlib.use("Agg")
RUNS = ["single", "sweep/0", "sweep/1"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A runs folder: `sweep/` (seed=0,1) and `single/` (seed 0), with a second PNG in single/plots/ beside the
    grokking curve every run draws when it ends."""
    base = tmp_path_factory.mktemp("viewer")
    runs = base / "runs"
    sweep = launch_cli(["-m", *SMALL, "threads=1", "seed=0,1", f"hydra.sweep.dir={runs / 'sweep'}"], cwd=base)
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    single = launch_cli([*SMALL, "threads=1", f"hydra.run.dir={runs / 'single'}"], cwd=base)
    assert single.returncode == 0, single.stderr[-2000:]
    assert (runs / "single" / "plots" / "grokking_curve.png").is_file()
    matplotlib.pyplot.imsave(runs / "single" / "plots" / "curve.png", np.arange(12.0).reshape(3, 4))
    return runs


def test_rows_equal_each_runs_summary(root):
    table = data.runs_table(root)
    assert [row["path"] for row in table["rows"]] == RUNS
    assert table["columns"][:3] == ["run", "experiment", "sweep"] and table["live"] is False
    for row in table["rows"]:
        summary = read_json(root / row["path"] / "summary.json")
        assert row["experiment"] == summary["experiment"] == "mlp_grok"
        assert row["sweep"] == (None if row["path"] == "single" else "sweep")
        for key in ("status", "seed", "steps", "grokked", "wall_time_s"):
            assert row[key] == summary[key], key
        for key in ("train/acc", "val/acc"):
            assert row[key] == pytest.approx(summary["final"][key]), key
        for key, step in summary["grok"].items():
            assert row[key] == step, key
    assert [row["seed"] for row in table["rows"]] == [0, 0, 1]


def test_live_runs_make_the_table_refresh(root, tmp_path):
    for name, status in (("done", None), ("running", "running")):
        shutil.copytree(root / "sweep" / "0", tmp_path / name, ignore=shutil.ignore_patterns("checkpoints", "*.pt"))
        if status:
            summary = read_json(tmp_path / name / "summary.json") | {"status": status}
            (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    assert data.runs_table(tmp_path)["live"] is True
    (tmp_path / "running" / "summary.json").unlink()  # killed before it wrote one, or not written yet
    assert [r["status"] for r in data.runs_table(tmp_path)["rows"]] == ["completed", "missing summary"]
    assert data.runs_table(tmp_path)["live"] is True
    shutil.rmtree(tmp_path / "running")
    assert data.runs_table(tmp_path)["live"] is False


def test_metrics_equal_metrics_csv(root):
    answer = data.runs_metrics(root, ["sweep/0", "single"])
    assert list(answer["runs"]) == ["sweep/0", "single"] and "groups" not in answer
    assert {"train/acc", "train/loss", "val/acc", "val/loss"} <= set(answer["metrics"])
    for name in ("sweep/0", "single"):
        rows = metrics_rows(root / name)
        for metric in ("train/loss", "val/acc"):
            expected = [(int(r["step"]) + 1, float(r[metric])) for r in rows if r[metric] != ""]
            got = answer["runs"][name][metric]
            assert [s for s, _ in got] == [s for s, _ in expected], (name, metric)
            assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-12), (name, metric)
        assert [s for s, _ in answer["runs"][name]["val/acc"]] == [10, 20, 30, 40]


def test_group_stats_on_known_numbers():
    a = [[1, 1.0], [2, 2.0], [3, 3.0]]
    b = [[1, 3.0], [2, 6.0], [4, 9.0]]  # step 3 only in a, step 4 only in b: left out
    assert data.group_stats([a, b]) == {"steps": [1, 2], "mean": [2.0, 4.0], "min": [1.0, 2.0], "max": [3.0, 6.0],
                                        "n": 2}
    assert data.group_stats([a])["mean"] == [1.0, 2.0, 3.0]
    assert data.group_stats([]) == {"steps": [], "mean": [], "min": [], "max": [], "n": 0}


def test_runs_grouped_by_a_config_key(root):
    answer = data.runs_metrics(root, RUNS, group_key="seed")
    # single has no seed override: its composed config's seed (0) groups it with sweep/0
    assert [(g["label"], g["runs"]) for g in answer["groups"]] == [("seed=0", ["single", "sweep/0"]),
                                                                    ("seed=1", ["sweep/1"])]
    seed0 = answer["groups"][0]["metrics"]["val/loss"]
    runs = answer["runs"]
    assert seed0 == data.group_stats([runs["single"]["val/loss"], runs["sweep/0"]["val/loss"]])
    assert seed0["max"] == [max(x[1], y[1]) for x, y in zip(runs["single"]["val/loss"], runs["sweep/0"]["val/loss"])]


def test_diff_finds_exactly_the_seed(root):
    assert data.config_diff(root, "sweep/0", "sweep/1") == [{"key": "seed", "a": 0, "b": 1}]
    assert data.config_diff(root, "sweep/0", "single") == []  # same settings; their folders are not a difference


def test_run_detail(root):
    detail = data.run_detail(root, "single")
    assert detail["summary"] == data.jsonable(read_json(root / "single" / "summary.json"))
    assert detail["status"] == "completed" and detail["problems"] == []
    assert detail["overrides_text"] == (root / "single" / ".hydra" / "overrides.yaml").read_text()
    assert detail["overrides"]["data.p"] == 11 and detail["config"]["data.p"] == 11 and detail["config"]["seed"] == 0
    assert "trainer:" in detail["config_text"]
    assert detail["plots"] == ["single/plots/curve.png", "single/plots/grokking_curve.png"]


def test_run_detail_has_a_summary_card_and_the_train_and_val_curves(root):
    detail = data.run_detail(root, "single")
    summary = read_json(root / "single" / "summary.json")
    card = detail["card"]
    for key in ("status", "experiment", "seed", "steps", "wall_time_s", "steps_per_s", "grok", "grokked"):
        assert card[key] == summary[key], key
    assert card["final"] == pytest.approx(summary["final"]) and "val/acc" in card["final"]
    # the curves: metrics.csv's train / val accuracy and loss at steps done (the file's step + 1), read here with csv
    rows = metrics_rows(root / "single")
    assert set(detail["curves"]) == {"train/acc", "val/acc", "train/loss", "val/loss"}
    for metric, points in detail["curves"].items():
        logged = [[int(r["step"]) + 1, float(r[metric])] for r in rows if r[metric]]
        assert len(logged) >= 2 and [step for step, _ in points] == [step for step, _ in logged], metric
        np.testing.assert_allclose([v for _, v in points], [v for _, v in logged], rtol=1e-12, err_msg=metric)


@pytest.mark.parametrize("name", ["..", "../runs/single", "/etc", "sweep", "nope", ""])
def test_names_that_are_not_run_folders_are_refused(root, name):
    with pytest.raises(ConfigError):
        data.run_path(root, name)


def test_flatten():
    assert data.flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}, "f": None}) == {
        "a.b": 1, "a.c.d": [1, 2], "e": {}, "f": None}


def test_sweep_analysis_is_written_once_and_redone_when_a_run_changes(root):
    assert sweeps.find_sweeps(root) == ["sweep"]
    out = root / "sweep" / "analysis" / "viewer"
    answer = sweeps.sweep_analysis(root, "sweep")
    assert [row["run"] for row in answer["rows"]] == ["0", "1"] and [row["seed"] for row in answer["rows"]] == [0, 1]
    assert answer["markdown"] == (out / "table.md").read_text() and (out / "table.csv").is_file()
    assert answer["folder"] == "sweep/analysis/viewer"
    assert answer["figures"] == ["sweep/analysis/viewer/curves_val_acc.png"]
    (out / "curves_val_acc.png").unlink()
    assert sweeps.sweep_analysis(root, "sweep")["figures"] == []  # cached: nothing changed, nothing redrawn
    assert sweeps.sweep_analysis(root, "sweep", refresh=True)["figures"] == answer["figures"]
    (out / "curves_val_acc.png").unlink()
    later = (out / "table.csv").stat().st_mtime + 10
    os.utime(root / "sweep" / "1" / "metrics.csv", (later, later))  # a run wrote more rows
    assert sweeps.sweep_analysis(root, "sweep")["figures"] == answer["figures"]
    assert [row["path"] for row in data.runs_table(root)["rows"]] == RUNS  # sweep/analysis/ holds no run


@pytest.mark.parametrize("name", ["single", "..", "/tmp", "sweep/0", ""])
def test_sweep_names_that_are_not_multirun_folders_are_refused(root, name):
    with pytest.raises(ConfigError):
        sweeps.sweep_path(root, name)


# ---------- the HTTP server ----------

@pytest.fixture(scope="module")
def server(root):
    served = ViewerServer(root, port=0)
    thread = threading.Thread(target=served.serve_forever, daemon=True)
    thread.start()
    yield served
    served.shutdown()
    served.server_close()


def get(server, path, host="127.0.0.1"):
    """GET `path` sent as written (no client-side clean-up of `..`): (status, content type, body)."""
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
    connection.putrequest("GET", path, skip_host=True)
    connection.putheader("Host", f"{host}:{server.server_address[1]}")
    connection.endheaders()
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, response.getheader("Content-Type", ""), body


def test_the_curves_page_opens_with_train_and_val_over_log_steps(server):
    page = get(server, "/")[2].decode()
    for control in ("overlay", "logx"):  # train + val together, log step axis: on until unticked
        (tag,) = re.findall(rf'<input id="{control}"[^>]*>', page)
        assert re.search(r"\bchecked\b", tag), tag


def test_page_uses_local_assets_only(server):
    status, kind, body = get(server, "/")
    page = body.decode()
    assert status == 200 and kind.startswith("text/html")
    assert 'src="/static/plotly.min.js"' in page and 'src="/static/app.js"' in page
    for name in ("index.html", "app.js", "style.css"):
        status, _, text = get(server, f"/static/{name}")
        assert status == 200 and text == (STATIC / name).read_bytes()
        assert not re.search(r"https?:|//cdn|@import|url\(", text.decode()), name


def test_plotly_js_is_served_from_the_package(server):
    status, kind, body = get(server, "/static/plotly.min.js")
    assert status == 200 and kind.startswith("text/javascript")
    assert len(body) > 1_000_000 and b"plotly" in body[:2000].lower()


def test_api(server):
    status, kind, body = get(server, "/api/runs")
    assert status == 200 and kind == "application/json"
    assert [row["path"] for row in json.loads(body)["rows"]] == RUNS
    status, _, body = get(server, "/api/metrics?run=sweep/0&run=sweep%2F1&group=seed")
    answer = json.loads(body)
    assert status == 200 and list(answer["runs"]) == ["sweep/0", "sweep/1"] and len(answer["groups"]) == 2
    status, _, body = get(server, "/api/diff?a=sweep/0&b=sweep/1")
    assert status == 200 and json.loads(body) == [{"key": "seed", "a": 0, "b": 1}]
    status, _, body = get(server, "/api/run?run=single")
    assert status == 200 and json.loads(body)["plots"] == ["single/plots/curve.png", "single/plots/grokking_curve.png"]
    for bad in ("/api/run?run=../..", "/api/run", "/api/diff?a=sweep/0", "/api/metrics?run=nope"):
        status, _, body = get(server, bad)
        assert status == 404 and "error" in json.loads(body), bad
    assert get(server, "/api/nothing")[0] == 404
    status, _, body = get(server, "/api/sweeps")
    assert status == 200 and json.loads(body) == ["sweep"]
    status, _, body = get(server, "/api/sweep?sweep=sweep")
    figure = json.loads(body)["figures"][0]
    assert status == 200 and get(server, f"/files/{figure}")[1] == "image/png"
    assert get(server, "/api/sweep?sweep=single")[0] == 404


def test_images_of_runs_are_served(root, server):
    status, kind, body = get(server, "/files/single/plots/curve.png")
    assert status == 200 and kind == "image/png"
    assert body == (root / "single" / "plots" / "curve.png").read_bytes() and body.startswith(b"\x89PNG")


def test_nothing_outside_the_root_is_served(root, server, tmp_path):
    outside = tmp_path / "secret.png"
    shutil.copy(root / "single" / "plots" / "curve.png", outside)
    (root / "single" / "link.png").symlink_to(outside)  # inside by name, outside once resolved
    try:
        for path in ("/files/../../etc/passwd", "/files/%2e%2e/%2e%2e/etc/passwd", "/files//etc/passwd",
                     "/files/single/../../runs/single/plots/curve.png", f"/files/{outside}", "/files/single/link.png",
                     "/files/single/summary.json", "/files/single/metrics.csv", "/static/../viewer/server.py",
                     "/static/%2e%2e/server.py", "/../../etc/passwd"):
            status, _, body = get(server, path)
            assert status in (403, 404), path
            assert b"root:" not in body and b"PNG" not in body, path
    finally:
        (root / "single" / "link.png").unlink()


def test_requests_for_another_host_are_refused(server):
    """A web page on another site that resolves its name to 127.0.0.1 (DNS rebinding) gets nothing."""
    assert get(server, "/api/runs", host="evil.example")[0] == 403
    assert get(server, "/api/runs", host="localhost")[0] == 200


def test_cli_refuses_a_missing_folder(tmp_path, capsys):
    assert main([str(tmp_path / "nope"), "--no-browser"]) == 1
    assert "is not a folder" in capsys.readouterr().err
