"""A read-only web dashboard for runs, served by the API itself at ``GET /``.

Why a single inline page: the service runs on clusters that may have no outbound network and no
frontend build tooling, so the page is one HTML string with inline CSS and JS and no third-party
library. Charts are small SVG line charts drawn by our own function (polyline, axes, labels).

The page needs no token to load; it asks for the API token once (kept in ``localStorage``; a
``#token=...`` URL fragment is accepted for automation and then removed from the address bar) and
calls the authenticated ``/v1`` routes with ``Authorization: Bearer <token>``. A fragment never
reaches the server, so the token does not end up in access logs.

Data it reads from ``GET /v1/runs/{id}``:

* ``progress``: rows ``{iteration, stage, done, total, complete}`` -> the stage timeline;
* ``iterations[t].metrics``: negatives, success_rate, mean_expansions_per_tree, pairs, ... ->
  the counts table and one chart per count across iterations;
* ``iterations[t].training``: rows with ``loss_curve`` (a list of per-step losses, when the
  summary provides it) or else ``first_loss``/``last_loss`` -> one loss chart per training stage;
* ``iterations[t].evaluation`` (written by the ``eval`` stage; empty lists until it runs)::

      {"ifeval": [{"version": "v0", "prompt_strict": 0.31, "instruction_strict": 0.42,
                   "prompt_loose": 0.35, "instruction_loose": 0.46, "average": 0.385,
                   "n_prompts": 50}, {"version": "v1", ...}],
       "judge":  [{"version": "v0", "accuracy": 0.62, "invalid_rate": 0.0, ...}, ...]}

  One row per evaluated model version (iteration 0 holds v0 and v1, iteration t holds v{t+1});
  the charts put versions on the x axis in order of appearance, a version seen twice keeps its
  latest row, and fractions are in [0, 1]. A single object instead of a list is accepted too.
  Nothing there renders "no evaluations yet" rather than an error.

Every chart is an ``<svg>`` with a stable id (``chart-negatives``, ``chart-success-rate``,
``chart-expansions``, ``chart-pairs``, ``chart-loss-<t>-<stage>``, ``chart-ifeval``,
``chart-judge``) and a ``data-values`` attribute holding the first plotted series as JSON
(``data-series`` holds every series by name), so browser tests can compare them with the API.
"""

# ruff: noqa: E501  (the inline HTML/CSS/JS page keeps its own line lengths)
from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

DASHBOARD_HTML = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>spar dashboard</title>
<style>
  :root { --fg:#1d2330; --muted:#667085; --line:#d0d5dd; --bg:#f7f8fa; --card:#fff;
          --accent:#2563eb; --ok:#16a34a; --bad:#dc2626; --warn:#d97706; }
  * { box-sizing: border-box; }
  body { margin:0; font:14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color:var(--fg);
         background:var(--bg); }
  header { display:flex; gap:12px; align-items:center; padding:10px 18px; background:#111827; color:#fff; }
  header h1 { font-size:17px; margin:0 12px 0 0; }
  header input { width:260px; padding:4px 6px; border-radius:4px; border:1px solid #374151; }
  header button { padding:4px 10px; border-radius:4px; border:0; background:var(--accent); color:#fff; cursor:pointer; }
  #message { color:#fca5a5; }
  main { display:grid; grid-template-columns: 340px 1fr; gap:16px; padding:16px 18px; }
  section.card { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:12px 14px; margin-bottom:16px; }
  h2 { font-size:15px; margin:0 0 8px; }
  h3 { font-size:13px; margin:10px 0 6px; color:var(--muted); font-weight:600; }
  table { border-collapse:collapse; width:100%; }
  th, td { text-align:left; padding:4px 6px; border-bottom:1px solid var(--line); font-variant-numeric: tabular-nums; }
  th { color:var(--muted); font-weight:600; font-size:12px; }
  td.num, th.num { text-align:right; }
  #runs tbody tr { cursor:pointer; }
  #runs tbody tr.selected { background:#e0e7ff; }
  .status { display:inline-block; padding:0 6px; border-radius:9px; font-size:12px; background:#e5e7eb; }
  .status.succeeded, .status.complete { background:#dcfce7; color:#166534; }
  .status.failed { background:#fee2e2; color:#991b1b; }
  .status.running { background:#dbeafe; color:#1e40af; }
  .status.cancelled, .status.queued, .status.pending { background:#f3f4f6; color:#374151; }
  .bar { position:relative; height:14px; background:#eef2f7; border-radius:7px; overflow:hidden; min-width:120px; }
  .bar > span { position:absolute; left:0; top:0; bottom:0; background:var(--accent); }
  .bar.complete > span { background:var(--ok); }
  .bar.failed > span { background:var(--bad); }
  .error { color:var(--bad); white-space:pre-wrap; font-size:12px; }
  .charts { display:flex; flex-wrap:wrap; gap:12px; }
  .chart { border:1px solid var(--line); border-radius:6px; background:#fff; }
  .chart text { font-size:11px; fill:var(--muted); }
  .chart text.title { font-size:12px; fill:var(--fg); font-weight:600; }
  .empty { color:var(--muted); font-style:italic; }
  .muted { color:var(--muted); }
</style>
</head>
<body>
<header>
  <h1>spar</h1>
  <label for="token">API token</label>
  <input id="token" type="password" autocomplete="off" placeholder="SPAR_API_TOKEN">
  <button id="save-token" type="button">Save</button>
  <span id="message" role="status"></span>
</header>
<main>
  <div>
    <section class="card">
      <h2>Runs</h2>
      <table id="runs"><thead><tr><th>run</th><th>status</th><th>at</th></tr></thead><tbody></tbody></table>
      <p id="runs-empty" class="empty" hidden>no runs yet</p>
    </section>
  </div>
  <div id="detail">
    <section class="card"><p class="empty">select a run</p></section>
  </div>
</main>
<script>
"use strict";
(function () {
  const STORE = "spar.apiToken";
  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2"];
  const SVGNS = "http://www.w3.org/2000/svg";
  let selected = null;
  let timer = null;

  // ----- token: #token=... (automation) or the text field, kept in localStorage ---------------
  function readFragment() {
    const params = new URLSearchParams(location.hash.replace(/^#/, ""));
    const token = params.get("token");
    if (token) {
      localStorage.setItem(STORE, token);
      params.delete("token");
      const rest = params.toString();
      history.replaceState(null, "", location.pathname + location.search + (rest ? "#" + rest : ""));
    }
    return params.get("run");
  }
  function token() { return localStorage.getItem(STORE) || ""; }
  function say(text) { document.getElementById("message").textContent = text || ""; }

  async function api(path) {
    const r = await fetch(path, { headers: { "Authorization": "Bearer " + token() } });
    if (r.status === 401) { throw new Error("the API refused the token (401): enter SPAR_API_TOKEN"); }
    if (!r.ok) { throw new Error(path + ": HTTP " + r.status); }
    return r.json();
  }

  // ----- small DOM helpers (textContent only: run data is never parsed as HTML) --------------
  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") node.textContent = v; else if (v !== undefined && v !== null) node.setAttribute(k, v);
    }
    for (const c of children || []) node.append(c);
    return node;
  }
  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function fmt(v, digits) {
    if (v === null || v === undefined || (typeof v === "number" && isNaN(v))) return "-";
    if (typeof v !== "number") return String(v);
    if (Number.isInteger(v)) return String(v);
    return v.toFixed(digits === undefined ? 3 : digits);
  }
  function when(ts) { return ts ? new Date(ts * 1000).toLocaleString() : "-"; }

  // ----- the line chart: our own SVG (axes, gridlines, polyline per series, point labels) -----
  // opts: {id, title, labels: [x labels], series: [{name, values: [number|null]}], yMin, yMax}
  function lineChart(opts) {
    const W = 330, H = 200, L = 44, R = 12, T = 32, B = 34;
    const node = svg("svg", { id: opts.id, class: "chart", width: W, height: H, viewBox: `0 0 ${W} ${H}`,
                              role: "img", "aria-label": opts.title });
    node.setAttribute("data-values", JSON.stringify(opts.series.length ? opts.series[0].values : []));
    const bySeries = {};
    for (const s of opts.series) bySeries[s.name] = s.values;
    node.setAttribute("data-series", JSON.stringify(bySeries));
    node.append(svg("text", { x: 8, y: 16, class: "title" }, opts.title));
    const all = opts.series.flatMap(s => s.values).filter(v => typeof v === "number" && isFinite(v));
    if (!all.length) {
      node.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no data"));
      return node;
    }
    let lo = opts.yMin !== undefined ? Math.min(opts.yMin, ...all) : Math.min(...all);
    let hi = opts.yMax !== undefined ? Math.max(opts.yMax, ...all) : Math.max(...all);
    if (hi === lo) {                         // one flat value: give it room, never below a floor
      const pad = Math.abs(hi) > 0 ? Math.abs(hi) * 0.1 : 1;
      if (opts.yMin !== undefined && lo === opts.yMin) hi += pad; else { lo -= pad; hi += pad; }
    }
    const n = opts.labels.length;
    const x = i => L + (n <= 1 ? (W - L - R) / 2 : i * (W - L - R) / (n - 1));
    const y = v => T + (hi - v) * (H - T - B) / (hi - lo);
    for (let k = 0; k <= 4; k++) {           // y gridlines and tick labels
      const v = lo + k * (hi - lo) / 4;
      node.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#eef0f3" }));
      node.append(svg("text", { x: L - 4, y: y(v) + 3, "text-anchor": "end" }, fmt(v, 2)));
    }
    node.append(svg("line", { x1: L, x2: L, y1: T, y2: H - B, stroke: "#98a2b3" }));
    node.append(svg("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, stroke: "#98a2b3" }));
    const every = Math.max(1, Math.ceil(n / 8));   // x labels, thinned when there are many points
    opts.labels.forEach((label, i) => {
      if (i % every === 0 || i === n - 1)
        node.append(svg("text", { x: x(i), y: H - B + 14, "text-anchor": "middle" }, String(label)));
    });
    if (opts.xTitle) node.append(svg("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle" }, opts.xTitle));
    opts.series.forEach((s, si) => {
      const color = COLORS[si % COLORS.length];
      let run = [];                              // a null breaks the line: no invented values
      const flush = () => {
        if (run.length > 1) node.append(svg("polyline", { points: run.join(" "), fill: "none", stroke: color, "stroke-width": 2 }));
        run = [];
      };
      s.values.forEach((v, i) => {
        if (typeof v !== "number" || !isFinite(v)) { flush(); return; }
        run.push(`${x(i).toFixed(1)},${y(v).toFixed(1)}`);
        node.append(svg("circle", { cx: x(i), cy: y(v), r: 3, fill: color, "data-value": v }));
        if (n <= 12 && opts.series.length === 1) node.append(svg("text", { x: x(i), y: y(v) - 6, "text-anchor": "middle" }, fmt(v, 3)));
      });
      flush();
      if (opts.series.length > 1)
        node.append(svg("text", { x: W - R - 4, y: T + 10 + 11 * si, "text-anchor": "end", fill: color, style: `fill:${color}` }, s.name));
    });
    return node;
  }

  // ----- runs list -----------------------------------------------------------------------------
  async function loadRuns() {
    const runs = await api("/v1/runs");
    const body = document.querySelector("#runs tbody");
    body.replaceChildren();
    document.getElementById("runs-empty").hidden = runs.length > 0;
    for (const r of runs.slice().reverse()) {
      const tr = el("tr", { "data-run": r.id }, [
        el("td", { text: r.id }),
        el("td", {}, [el("span", { class: "status " + (r.status || ""), text: r.status || "?" })]),
        el("td", { class: "muted", text: r.stage ? `iter ${r.iteration} ${r.stage}` : "" }),
      ]);
      if (r.id === selected) tr.classList.add("selected");
      tr.addEventListener("click", () => { selected = r.id; refresh(); });
      body.append(tr);
    }
    if (!selected && runs.length) selected = runs[runs.length - 1].id;
  }

  // ----- one run -------------------------------------------------------------------------------
  function timeline(run) {
    const table = el("table", { id: "timeline" }, [el("thead", {}, [el("tr", {}, [
      el("th", { text: "iter" }), el("th", { text: "stage" }), el("th", { text: "shards" }),
      el("th", { class: "num", text: "done/total" }), el("th", { text: "status" })])])]);
    const body = el("tbody");
    for (const p of run.progress) {
      const active = run.stage === p.stage && Number(run.iteration) === p.iteration;
      let status = p.complete ? "complete" : (p.done > 0 || active ? "running" : "pending");
      if (!p.complete && active && (run.status === "failed" || run.status === "cancelled")) status = run.status;
      const pct = p.total ? Math.round(100 * p.done / p.total) : 0;
      const bar = el("div", { class: "bar " + status, title: `${pct}%` }, [el("span", { style: `width:${pct}%` })]);
      const row = el("tr", { "data-iteration": p.iteration, "data-stage": p.stage, "data-done": p.done, "data-total": p.total }, [
        el("td", { text: String(p.iteration) }), el("td", { text: p.stage }), el("td", {}, [bar]),
        el("td", { class: "num", text: `${p.done}/${p.total}` }),
        el("td", {}, [el("span", { class: "status " + status, text: status })]),
      ]);
      body.append(row);
      if (status === run.status && run.error)
        body.append(el("tr", {}, [el("td", { colspan: 5, class: "error", text: run.error })]));
    }
    table.append(body);
    return table;
  }

  const COUNTS = [
    ["prompts", "prompts", 0], ["responses", "responses", 0], ["pass_rate", "pass rate", 3],
    ["negatives", "negatives", 0], ["trees", "trees", 0], ["success_rate", "tree success rate", 3],
    ["mean_expansions_per_tree", "mean expansions / tree", 2], ["pairs", "pairs", 0],
    ["rft_examples", "RFT examples", 0],
  ];
  // Rows of opt-in stages, shown when some iteration has them.
  const OPTIONAL_COUNTS = [
    ["iopo_attempted", "IOPO pairs attempted", 0], ["iopo_verified", "IOPO groups verified", 0],
    ["iopo_candidates_programmatic", "IOPO x' written by the verifier", 0],
  ];

  function countsTable(iterations) {
    const head = el("tr", {}, [el("th", { text: "metric" })].concat(
      iterations.map(it => el("th", { class: "num", text: `iter ${it.iteration}` }))));
    const body = el("tbody");
    const present = key => iterations.some(it => (it.metrics || {})[key] !== undefined);
    for (const [key, label, digits] of COUNTS.concat(OPTIONAL_COUNTS.filter(([key]) => present(key)))) {
      body.append(el("tr", { "data-metric": key }, [el("td", { text: label })].concat(iterations.map(it => {
        const v = (it.metrics || {})[key];
        return el("td", { class: "num", "data-iteration": it.iteration, "data-metric": key,
                          "data-value": v === null || v === undefined ? "" : v, text: fmt(v, digits) });
      }))));
    }
    return el("table", { id: "counts" }, [el("thead", {}, [head]), body]);
  }

  function countCharts(iterations) {
    const labels = iterations.map(it => `t=${it.iteration}`);
    const of = key => iterations.map(it => { const v = (it.metrics || {})[key]; return typeof v === "number" ? v : null; });
    return el("div", { class: "charts" }, [
      lineChart({ id: "chart-negatives", title: "negatives", labels, xTitle: "iteration", series: [{ name: "negatives", values: of("negatives") }], yMin: 0 }),
      lineChart({ id: "chart-success-rate", title: "tree success rate", labels, xTitle: "iteration", series: [{ name: "success rate", values: of("success_rate") }], yMin: 0, yMax: 1 }),
      lineChart({ id: "chart-expansions", title: "mean expansions per tree", labels, xTitle: "iteration", series: [{ name: "expansions", values: of("mean_expansions_per_tree") }], yMin: 0 }),
      lineChart({ id: "chart-pairs", title: "DPO pairs", labels, xTitle: "iteration", series: [{ name: "pairs", values: of("pairs") }], yMin: 0 }),
    ]);
  }

  function trainingCharts(iterations) {
    const charts = [];
    for (const it of iterations) {
      for (const row of it.training || []) {
        let values = Array.isArray(row.loss_curve) ? row.loss_curve : null;
        let note = "";
        if (!values || !values.length) {          // older summaries: only the first and last loss
          values = [row.first_loss, row.last_loss];
          note = " (first/last only)";
        }
        const labels = values.length === 2 && note ? ["first", "last"] : values.map((_, i) => i + 1);
        charts.push(lineChart({ id: `chart-loss-${it.iteration}-${row.stage}`,
          title: `iter ${it.iteration} ${row.stage} loss${note}`, labels, xTitle: "step",
          series: [{ name: "loss", values }] }));
      }
    }
    return charts.length ? el("div", { class: "charts" }, charts)
                         : el("p", { id: "no-training", class: "empty", text: "no training yet" });
  }

  // evaluation rows per version, across iterations (iteration 0 holds v0 and v1, iteration t
  // holds v{t+1}); a version evaluated twice keeps its latest row.
  function evalRows(iterations, kind) {
    const byVersion = new Map();
    for (const it of iterations) {
      let rows = (it.evaluation || {})[kind] || [];
      if (!Array.isArray(rows)) rows = [rows];
      for (const r of rows) if (r && typeof r === "object") byVersion.set(String(r.version || r.model || `t=${it.iteration}`), r);
    }
    return [...byVersion.entries()];
  }

  function evaluationCharts(iterations) {
    const parts = [];
    const ifeval = evalRows(iterations, "ifeval");
    if (ifeval.length) {
      const keys = ["average", "prompt_strict", "instruction_strict", "prompt_loose", "instruction_loose"]
        .filter(k => ifeval.some(([, r]) => typeof r[k] === "number"));
      parts.push(lineChart({ id: "chart-ifeval", title: "IFEval accuracy per actor version", xTitle: "actor version",
        labels: ifeval.map(([v]) => v), yMin: 0, yMax: 1,
        series: keys.map(k => ({ name: k, values: ifeval.map(([, r]) => typeof r[k] === "number" ? r[k] : null) })) }));
    }
    const judge = evalRows(iterations, "judge");
    if (judge.length) {
      parts.push(lineChart({ id: "chart-judge", title: "judge accuracy per refiner version", xTitle: "refiner version",
        labels: judge.map(([v]) => v), yMin: 0, yMax: 1,
        series: [{ name: "accuracy", values: judge.map(([, r]) => typeof r.accuracy === "number" ? r.accuracy : null) }] }));
    }
    return parts.length ? el("div", { class: "charts" }, parts)
                        : el("p", { id: "no-evaluations", class: "empty", text: "no evaluations yet" });
  }

  function card(title, ...children) { return el("section", { class: "card" }, [el("h2", { text: title }), ...children]); }

  async function loadRun(id) {
    const run = await api("/v1/runs/" + encodeURIComponent(id));
    const models = Object.entries(run.models || {}).map(([k, v]) => `${k} ${v}`).join(", ");
    const head = el("div", { id: "run-head", "data-run": run.id, "data-status": run.status || "" }, [
      el("span", { class: "status " + (run.status || ""), text: run.status || "?" }),
      el("span", { class: "muted", text: `  models: ${models}  ·  created ${when(run.created_at)}  ·  updated ${when(run.updated_at)}` }),
    ]);
    if (run.error) head.append(el("div", { class: "error", id: "run-error", text: run.error }));
    const iterations = run.iterations || [];
    document.getElementById("detail").replaceChildren(
      card(run.id, head),
      card("Stage timeline", timeline(run)),
      card("Counts per iteration", iterations.length ? countsTable(iterations) : el("p", { class: "empty", text: "no iteration started" }),
           iterations.length ? countCharts(iterations) : ""),
      card("Training", trainingCharts(iterations)),
      card("Evaluations", evaluationCharts(iterations)),
    );
    document.getElementById("detail").setAttribute("data-loaded", run.id);
    return run;
  }

  async function refresh() {
    clearTimeout(timer);
    try {
      if (!token()) { say("enter the API token"); return; }
      await loadRuns();
      if (selected) {
        const run = await loadRun(selected);
        document.querySelectorAll("#runs tbody tr").forEach(tr => tr.classList.toggle("selected", tr.dataset.run === selected));
        say("");
        const active = run.status === "queued" || run.status === "running";
        timer = setTimeout(refresh, active ? 3000 : 15000);
      } else {
        timer = setTimeout(refresh, 5000);
      }
    } catch (err) {
      say(err.message);
      timer = setTimeout(refresh, 10000);
    }
  }

  document.getElementById("save-token").addEventListener("click", () => {
    localStorage.setItem(STORE, document.getElementById("token").value.trim());
    refresh();
  });
  selected = readFragment();
  document.getElementById("token").value = token();
  refresh();
})();
</script>
</body>
</html>
"""


def add_dashboard(app: FastAPI) -> None:
    """Serve the dashboard at ``GET /`` without auth: the page holds no data, only the code that
    fetches it from the token-protected ``/v1`` routes."""

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def dashboard() -> HTMLResponse:
        return HTMLResponse(DASHBOARD_HTML, headers={"Cache-Control": "no-cache"})
