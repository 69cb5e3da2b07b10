// The line chart both pages draw with: the dashboard (services/static/dashboard.html) and the run
// report (services/report_html.py) include this file's text in their one inline script, so a chart
// looks and reads the same wherever it is shown. Our own SVG, no library; text goes in through
// textContent only, so run data never becomes markup. Styles: charts.css.
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2"];
const SVGNS = "http://www.w3.org/2000/svg";

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "style") node.style.cssText = v; else node.setAttribute(k, v);
  }
  if (text !== undefined) node.textContent = text;
  return node;
}
function fmt(v, digits) {
  if (v === null || v === undefined || (typeof v === "number" && isNaN(v))) return "-";
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v)) return String(v);
  return v.toFixed(digits === undefined ? 3 : digits);
}

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
