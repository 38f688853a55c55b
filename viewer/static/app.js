// The viewer's page: plain JavaScript, no build step; data from this server's /api/*, charts with the local plotly.js.
"use strict";

const REFRESH_MS = 5000;  // while some run is still running (or has no summary yet)
const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf"];
const state = {runs: null, selected: new Set(), sort: {column: null, descending: false}, filter: "",
               metrics: null, metricsKey: null, tab: "runs", timer: null, wanted: {}};

// ---------- helpers ----------
function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

async function getJSON(url) {
  const response = await fetch(url);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function showError(err) { document.getElementById("error").textContent = err ? String(err.message || err) : ""; }

function cellText(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "number" && !Number.isInteger(value)) return Number(value.toPrecision(4)).toString();
  return String(value);
}

function compare(a, b) {
  const empty = (v) => v === null || v === undefined || v === "";
  if (empty(a) && empty(b)) return 0;
  if (empty(a)) return 1;  // empty cells last, whichever the direction
  if (empty(b)) return -1;
  if (typeof a === "number" && typeof b === "number") return a - b;
  return String(a).localeCompare(String(b), undefined, {numeric: true});
}

// ---------- tabs ----------
function showTab(name) {
  state.tab = name;
  for (const button of document.querySelectorAll("button.tab")) button.classList.toggle("active", button.dataset.tab === name);
  for (const page of document.querySelectorAll(".page")) page.hidden = page.id !== `tab-${name}`;
  if (name === "curves") loadCurves();
  if (name === "run") loadRun();
  if (name === "sweeps") loadSweeps();
  writeAddress();
}

// ---------- runs ----------
async function loadRuns() {
  clearTimeout(state.timer);
  try {
    state.runs = await getJSON("/api/runs");
    showError(null);
    renderRuns();
    fillRunSelects();
    fillGroupSelect();
    if (state.runs.live) {
      state.timer = setTimeout(() => { loadRuns(); if (state.tab === "curves") loadCurves(true); }, REFRESH_MS);
    }
  } catch (err) {
    showError(err);
  }
}

function shownRows() {
  const {rows, columns} = state.runs;
  const needle = state.filter.trim().toLowerCase();
  let shown = needle ? rows.filter((row) => columns.some((c) => cellText(row[c]).toLowerCase().includes(needle))) : rows.slice();
  const {column, descending} = state.sort;
  if (column) {
    shown.sort((a, b) => compare(a[column], b[column]));
    if (descending) shown.reverse();
  }
  return shown;
}

function renderRuns() {
  const {columns, rows, root, live} = state.runs;
  document.getElementById("root").textContent = root;
  const table = document.getElementById("runs-table");
  const head = el("tr", {}, [el("th", {text: "✓"})]);
  for (const column of columns) {
    const th = el("th", {text: column, onclick: () => {
      state.sort = {column, descending: state.sort.column === column ? !state.sort.descending : false};
      renderRuns();
    }});
    if (state.sort.column === column) th.className = state.sort.descending ? "sorted-desc" : "sorted-asc";
    head.append(th);
  }
  table.tHead.replaceChildren(head);
  const shown = shownRows();
  const body = shown.map((row) => {
    const box = el("input", {type: "checkbox"});
    box.checked = state.selected.has(row.path);
    box.disabled = row.status === "missing";  // planned, no folder: nothing to plot
    box.addEventListener("change", () => {
      if (box.checked) state.selected.add(row.path); else state.selected.delete(row.path);
      tr.classList.toggle("selected", box.checked);
      state.metricsKey = null;
    });
    const tr = el("tr", {class: `status-${String(row.status).replace(/\W+/g, "-")}`}, [el("td", {}, [box])]);
    tr.classList.toggle("selected", box.checked);
    for (const column of columns) {
      const value = row[column];
      if (column === "run") {
        tr.append(el("td", {}, [el("a", {class: "run-link", text: cellText(value), onclick: () => openRun(row.path)})]));
      } else {
        tr.append(el("td", {class: (typeof value === "number" ? "num " : "") + (column === "status" ? "status" : ""),
                            text: cellText(value)}));
      }
    }
    return tr;
  });
  table.tBodies[0].replaceChildren(...body);
  document.getElementById("runs-info").textContent =
    `${shown.length} of ${rows.length} runs, ${state.selected.size} selected` + (live ? " — refreshing while runs are live" : "");
}

// ---------- curves ----------
function fillGroupSelect() {
  const select = document.getElementById("group");
  const keep = select.value;
  select.replaceChildren(el("option", {value: "", text: "(none)"}),
                         ...state.runs.swept.map((key) => el("option", {value: key, text: key})));
  if (state.runs.swept.includes(keep)) select.value = keep;
}

async function loadCurves(force = false) {
  const runs = [...state.selected];
  const info = document.getElementById("curves-info");
  if (!runs.length) {
    info.textContent = "select runs on the Runs page";
    Plotly.purge("chart");
    return;
  }
  const group = document.getElementById("group").value;
  const params = new URLSearchParams(runs.map((r) => ["run", r]));
  if (group) params.append("group", group);
  const key = params.toString();
  if (force || key !== state.metricsKey) {
    try {
      state.metrics = await getJSON(`/api/metrics?${key}`);
      state.metricsKey = key;
      showError(null);
    } catch (err) {
      showError(err);
      return;
    }
  }
  fillMetricSelect();
  drawCurves();
}

function fillMetricSelect() {
  const select = document.getElementById("metric");
  const keep = select.value || state.wanted.metric || "val/acc";
  const metrics = state.metrics.metrics;
  select.replaceChildren(...metrics.map((m) => el("option", {value: m, text: m})));
  select.value = metrics.includes(keep) ? keep : (metrics[0] || "");
}

function ema(values, alpha) {
  if (!alpha) return values;
  const out = [];
  let last = null;
  for (const v of values) { last = last === null ? v : alpha * last + (1 - alpha) * v; out.push(last); }
  return out;
}

function plottedMetrics(metric, overlay) {
  if (!overlay) return [metric];
  const slash = metric.indexOf("/");
  if (slash < 0) return [metric];
  const rest = metric.slice(slash + 1);
  return ["train", "val"].map((split) => `${split}/${rest}`).filter((m) => state.metrics.metrics.includes(m));
}

function drawCurves() {
  const metric = document.getElementById("metric").value;
  const overlay = document.getElementById("overlay").checked;
  const alpha = Number(document.getElementById("smooth").value);
  document.getElementById("smooth-value").textContent = alpha.toFixed(2);
  const metrics = plottedMetrics(metric, overlay);
  const dash = (m) => (overlay && m.startsWith("train/") ? "dash" : "solid");
  const traces = [];
  if (state.metrics.groups) {
    state.metrics.groups.forEach((group, i) => {
      const colour = COLOURS[i % COLOURS.length];
      for (const m of metrics) {
        const stats = group.metrics[m];
        if (!stats || !stats.steps.length) continue;
        const name = `${group.label} ${m} (n=${stats.n})`;
        traces.push({x: stats.steps, y: ema(stats.max, alpha), mode: "lines", line: {width: 0, color: colour},
                     legendgroup: name, showlegend: false, hoverinfo: "skip"});
        traces.push({x: stats.steps, y: ema(stats.min, alpha), mode: "lines", line: {width: 0, color: colour},
                     fill: "tonexty", fillcolor: colour + "33", legendgroup: name, showlegend: false, hoverinfo: "skip"});
        traces.push({x: stats.steps, y: ema(stats.mean, alpha), mode: "lines", name, legendgroup: name,
                     line: {color: colour, dash: dash(m)}});
      }
    });
  } else {
    Object.entries(state.metrics.runs).forEach(([run, series], i) => {
      const colour = COLOURS[i % COLOURS.length];
      for (const m of metrics) {
        const points = series[m];
        if (!points) continue;
        traces.push({x: points.map((p) => p[0]), y: ema(points.map((p) => p[1]), alpha), mode: "lines",
                     name: `${run} ${m}`, line: {color: colour, dash: dash(m)}});
      }
    });
  }
  document.getElementById("curves-info").textContent =
    `${state.selected.size} runs` + (state.metrics.groups ? `, ${state.metrics.groups.length} groups (mean, min-max band)` : "");
  const layout = {xaxis: {title: {text: "step"}, type: document.getElementById("logx").checked ? "log" : "linear"},
                  yaxis: {title: {text: metrics.join(", ")}}, margin: {t: 20}, legend: {orientation: "h"}};
  Plotly.react("chart", traces, layout, {displaylogo: false, responsive: true});
  writeAddress();
}

// ---------- one run ----------
function fillRunSelects() {
  for (const id of ["run-select", "diff-select"]) {
    const select = document.getElementById(id);
    // the run shown: the one picked, else the first run the address selected (#tab=run&run=A)
    const keep = select.value || (id === "run-select" ? [...state.selected][0] : "");
    const first = id === "diff-select" ? [el("option", {value: "", text: "(none)"})] : [];
    select.replaceChildren(...first, ...state.runs.rows.filter((r) => r.status !== "missing")
      .map((r) => el("option", {value: r.path, text: `${r.run} (${r.status})`})));
    if ([...select.options].some((o) => o.value === keep)) select.value = keep;
  }
}

function openRun(path) {
  document.getElementById("run-select").value = path;
  showTab("run");
}

function section(title, content) { return [el("h3", {text: title}), content]; }

// images under the served folder (names relative to it), each with its name as caption
function gallery(files) {
  return el("div", {class: "plots"}, files.map((f) =>
    el("figure", {}, [el("img", {src: `/files/${f.split("/").map(encodeURIComponent).join("/")}`, alt: f}),
                      el("figcaption", {text: f})])));
}

async function loadRun() {
  const name = document.getElementById("run-select").value;
  const target = document.getElementById("run-detail");
  if (!name) { target.replaceChildren(el("p", {text: "no run"})); return; }
  try {
    const run = await getJSON(`/api/run?run=${encodeURIComponent(name)}`);
    const plots = gallery(run.plots);
    const raw = (title, text) => el("details", {}, [el("summary", {text: title}), el("pre", {text})]);
    const charts = el("div", {class: "run-curves"}, ["acc", "exact_match", "loss"]
      .filter((what) => run.curves[`train/${what}`] || run.curves[`val/${what}`])
      .map((what) => el("div", {id: `run-curve-${what}`, class: "run-curve"})));
    target.replaceChildren(
      el("h2", {text: `${run.path} — ${run.status}`}),
      ...(run.problems.length ? section("problems", el("pre", {text: run.problems.join("\n")})) : []),
      summaryCard(run.card),
      ...section("curves (train and val, log steps)", charts.children.length ? charts
                 : el("p", {class: "muted", text: "no accuracy or loss logged"})),
      ...section("raw files", el("div", {}, [
        raw("summary.json", JSON.stringify(run.summary, null, 2)),
        raw("overrides (.hydra/overrides.yaml)", run.overrides_text || JSON.stringify(run.overrides, null, 2)),
        raw("config (.hydra/config.yaml)", run.config_text || "")])),
      ...section(`plots (${run.plots.length})`, run.plots.length ? plots : el("p", {class: "muted", text: "no plots/ images"})));
    for (const chart of charts.children) drawRunCurve(chart, chart.id.replace("run-curve-", ""), run);
    showError(null);
  } catch (err) {
    showError(err);
  }
  loadDiff();
}

// the summary card: status, experiment, seed, steps, wall time, final metrics, grokking steps (— where not reached)
function summaryCard(card) {
  const wall = card.wall_time_s === null ? "" : `${cellText(card.wall_time_s)} s` +
    (card.steps_per_s ? ` (${cellText(card.steps_per_s)} steps/s)` : "");
  const facts = [["status", card.status], ["experiment", card.experiment], ["seed", card.seed],
                 ["steps", card.steps], ["wall time", wall], ["grokked", card.grokked]];
  if (card.error) facts.push(["error", card.error]);
  const rows = (pairs) => el("table", {}, pairs.map(([k, v]) =>
    el("tr", {}, [el("th", {text: k}), el("td", {class: typeof v === "number" ? "num" : "", text: cellText(v)})])));
  const grok = Object.entries(card.grok).map(([k, v]) => [k.replace(/^grok\//, ""), v === null ? "—" : v]);
  return el("div", {class: "card"}, [
    el("div", {}, [el("h3", {text: "run"}), rows(facts)]),
    el("div", {}, [el("h3", {text: "final"}), rows(Object.entries(card.final))]),
    el("div", {}, [el("h3", {text: "grokking steps"}), grok.length ? rows(grok) : el("p", {class: "muted", text: "none recorded"})])]);
}

// one panel of the Run page: train and val of `what` over log steps, the reached grokking steps as dotted lines
function drawRunCurve(node, what, run) {
  const traces = ["train", "val"].filter((split) => run.curves[`${split}/${what}`]).map((split, i) => {
    const points = run.curves[`${split}/${what}`];
    return {x: points.map((p) => p[0]), y: points.map((p) => p[1]), mode: "lines", name: `${split}/${what}`,
            line: {color: COLOURS[i]}};
  });
  const marks = Object.entries(run.card.grok).filter(([, step]) => step !== null && step > 0)
    .map(([, step]) => ({type: "line", x0: step, x1: step, yref: "paper", y0: 0, y1: 1, line: {dash: "dot", width: 1}}));
  const layout = {xaxis: {title: {text: "step"}, type: "log"}, yaxis: {title: {text: what}, type: what === "loss" ? "log" : "linear"},
                  shapes: marks, margin: {t: 20}, height: 300, legend: {orientation: "h"}};
  Plotly.react(node, traces, layout, {displaylogo: false, responsive: true});
}

async function loadDiff() {
  const a = document.getElementById("run-select").value;
  const b = document.getElementById("diff-select").value;
  const target = document.getElementById("diff");
  if (!a || !b) { target.replaceChildren(); return; }
  try {
    const rows = await getJSON(`/api/diff?a=${encodeURIComponent(a)}&b=${encodeURIComponent(b)}`);
    const table = el("table", {}, [el("tr", {}, [el("th", {text: "key"}), el("th", {text: a}), el("th", {text: b})]),
      ...rows.map((r) => el("tr", {}, [el("td", {text: r.key}), el("td", {text: JSON.stringify(r.a)}),
                                       el("td", {text: JSON.stringify(r.b)})]))]);
    target.replaceChildren(...section(`config differences (${rows.length})`, rows.length ? table : el("p", {text: "none"})));
  } catch (err) {
    showError(err);
  }
}

// ---------- sweeps ----------
async function loadSweeps() {
  const select = document.getElementById("sweep-select");
  try {
    const names = await getJSON("/api/sweeps");
    const keep = select.value;
    select.replaceChildren(...names.map((n) => el("option", {value: n, text: n})));
    if (names.includes(keep)) select.value = keep;
    if (!names.length) document.getElementById("sweep-info").textContent = "no multirun folder here";
    else loadSweep(false);
  } catch (err) {
    showError(err);
  }
}

async function loadSweep(refresh) {
  const name = document.getElementById("sweep-select").value;
  if (!name) return;
  const info = document.getElementById("sweep-info");
  info.textContent = "analysing…";
  try {
    const sweep = await getJSON(`/api/sweep?sweep=${encodeURIComponent(name)}` + (refresh ? "&refresh=1" : ""));
    const table = el("table", {}, [el("tr", {}, sweep.columns.map((c) => el("th", {text: c}))),
      ...sweep.rows.map((row) => el("tr", {}, sweep.columns.map((c) =>
        el("td", {class: typeof row[c] === "number" ? "num" : "", text: cellText(row[c])}))))]);
    const figures = gallery(sweep.figures);
    document.getElementById("sweep-detail").replaceChildren(
      ...section(`table (${sweep.rows.length} runs; swept: ${sweep.swept.join(", ") || "seed only"})`,
                 el("div", {class: "scroll"}, [table])),
      ...section(`figures (${sweep.figures.length})`, figures));
    info.textContent = `written to ${sweep.folder}`;
    showError(null);
  } catch (err) {
    info.textContent = "";
    showError(err);
  }
}

// ---------- the address: #tab=curves&run=A&run=B&group=KEY&metric=M opens that view (bookmarks, links) ----------
function readAddress() {
  const params = new URLSearchParams(location.hash.slice(1));
  for (const run of params.getAll("run")) state.selected.add(run);
  state.wanted = {tab: params.get("tab"), group: params.get("group"), metric: params.get("metric")};
}

function writeAddress() {
  const params = new URLSearchParams({tab: state.tab});
  for (const run of state.selected) params.append("run", run);
  for (const id of ["group", "metric"]) {
    const value = document.getElementById(id).value;
    if (value) params.set(id, value);
  }
  history.replaceState(null, "", `#${params}`);
}

// ---------- wiring ----------
document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("button.tab")) button.addEventListener("click", () => showTab(button.dataset.tab));
  document.getElementById("filter").addEventListener("input", (e) => { state.filter = e.target.value; renderRuns(); });
  document.getElementById("select-shown").addEventListener("click", () => {
    for (const row of shownRows()) if (row.status !== "missing") state.selected.add(row.path);
    state.metricsKey = null;
    renderRuns();
  });
  document.getElementById("select-none").addEventListener("click", () => { state.selected.clear(); renderRuns(); });
  document.getElementById("plot-selected").addEventListener("click", () => showTab("curves"));
  for (const id of ["metric", "overlay", "logx", "smooth"]) {
    document.getElementById(id).addEventListener("input", () => state.metrics && drawCurves());
  }
  document.getElementById("group").addEventListener("change", () => loadCurves());
  document.getElementById("run-select").addEventListener("change", loadRun);
  document.getElementById("diff-select").addEventListener("change", loadDiff);
  document.getElementById("sweep-select").addEventListener("change", () => loadSweep(false));
  document.getElementById("sweep-refresh").addEventListener("click", () => loadSweep(true));
  readAddress();
  loadRuns().then(() => {
    const {tab, group} = state.wanted;
    if (group) document.getElementById("group").value = group;
    if (tab) showTab(tab);
  });
});
