/* Small SVG charts for the dashboard: lines over days and grouped bars with optional 95% error bars.
 * No network, no library: each chart is an <svg> built with DOM calls (no inline styles, so the page's
 * Content-Security-Policy holds). Data points are <circle class="point">, bars <rect class="bar">,
 * intervals <line class="errorbar">, each with a <title> tooltip. */
"use strict";

(function () {
  const NS = "http://www.w3.org/2000/svg";
  const W = 560, H = 280, M = { top: 16, right: 16, bottom: 58, left: 72 };
  const PALETTE = ["#2a6f97", "#e07a5f", "#3d9970", "#8d6cab", "#d4a017", "#5c677d", "#c0392b", "#16a085"];

  function el(name, attrs, parent) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (parent) parent.appendChild(node);
    return node;
  }

  function text(parent, x, y, content, attrs) {
    const node = el("text", Object.assign({ x: x, y: y }, attrs || {}), parent);
    node.textContent = content;
    return node;
  }

  function tip(node, content) {
    el("title", {}, node).textContent = content;
  }

  function formatNumber(v) {
    const abs = Math.abs(v);
    if (abs >= 1e8) return (v / 1e8).toFixed(1) + "亿";
    if (abs >= 1e4) return (v / 1e4).toFixed(1) + "万";
    return Number.isInteger(v) ? String(v) : v.toFixed(abs < 10 ? 2 : 0);
  }

  /* About five round ticks covering [lo, hi]. */
  function ticks(lo, hi) {
    if (lo === hi) { hi = lo + 1; }
    const raw = (hi - lo) / 5;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map(f => f * mag).find(s => raw <= s);
    const out = [];
    for (let t = Math.floor(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(+t.toFixed(10));
    if (out[out.length - 1] < hi) out.push(out[out.length - 1] + step);
    return out;
  }

  function frame(container, label) {
    container.textContent = "";
    const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label || "chart", class: "chart-svg" },
                   container);
    return svg;
  }

  function empty(container, message) {
    container.textContent = "";
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = message || "No data for these filters.";
    container.appendChild(p);
  }

  function yAxis(svg, lo, hi) {
    const tv = ticks(lo, hi);
    const y0 = tv[0], y1 = tv[tv.length - 1];
    const scale = v => M.top + (H - M.top - M.bottom) * (1 - (v - y0) / (y1 - y0));
    const axis = el("g", { class: "axis y" }, svg);
    for (const t of tv) {
      el("line", { x1: M.left, x2: W - M.right, y1: scale(t), y2: scale(t), class: t === 0 ? "zero" : "grid" }, axis);
      text(axis, M.left - 6, scale(t) + 4, formatNumber(t), { "text-anchor": "end" });
    }
    return scale;
  }

  function legend(svg, names) {
    const g = el("g", { class: "legend" }, svg);
    let x = M.left;
    names.forEach((name, i) => {
      el("rect", { x: x, y: H - 16, width: 10, height: 10, fill: PALETTE[i % PALETTE.length] }, g);
      text(g, x + 14, H - 7, name);
      x += 24 + Math.min(180, 7 * name.length);
    });
  }

  /* series: [{name, points: [[isoDay, value], ...]}] — one line per series, one circle per point. */
  function line(container, series, opts) {
    const used = (series || []).filter(s => s.points && s.points.length);
    if (!used.length) return empty(container, opts && opts.empty);
    const svg = frame(container, opts && opts.label);
    const days = [...new Set(used.flatMap(s => s.points.map(p => p[0])))].sort();
    const values = used.flatMap(s => s.points.map(p => p[1]));
    const y = yAxis(svg, Math.min(0, ...values), Math.max(0, ...values));
    const t = days.map(d => Date.parse(d + "T00:00:00Z"));
    const t0 = Math.min(...t), t1 = Math.max(...t);
    const x = d => {
      const v = Date.parse(d + "T00:00:00Z");
      return t1 === t0 ? (M.left + W - M.right) / 2 : M.left + (W - M.left - M.right) * (v - t0) / (t1 - t0);
    };
    const axis = el("g", { class: "axis x" }, svg);
    const every = Math.max(1, Math.ceil(days.length / 6));
    days.forEach((d, i) => {
      if (i % every === 0) text(axis, x(d), H - M.bottom + 16, d.slice(5), { "text-anchor": "middle" });
    });
    used.forEach((s, i) => {
      const colour = PALETTE[i % PALETTE.length];
      const pts = s.points.slice().sort((a, b) => (a[0] < b[0] ? -1 : 1));
      el("polyline", { points: pts.map(p => `${x(p[0])},${y(p[1])}`).join(" "), fill: "none", stroke: colour,
                       "stroke-width": 2, class: "series" }, svg);
      for (const p of pts) {
        const c = el("circle", { cx: x(p[0]), cy: y(p[1]), r: 3.5, fill: colour, class: "point",
                                 "data-value": p[1], "data-series": s.name }, svg);
        tip(c, `${s.name} · ${p[0]} · ¥${p[1].toLocaleString("zh-CN")}`);
      }
    });
    legend(svg, used.map(s => s.name));
    return svg;
  }

  /* categories: [label]; series: [{name, values: [v], intervals?: [[lo, hi] | null]}] — grouped bars. */
  function bar(container, categories, series, opts) {
    if (!categories || !categories.length || !series.length) return empty(container, opts && opts.empty);
    const svg = frame(container, opts && opts.label);
    const all = series.flatMap(s => s.values.concat((s.intervals || []).flatMap(iv => iv || [])))
      .filter(v => Number.isFinite(v));
    const y = yAxis(svg, Math.min(0, ...all), Math.max(0, ...all));
    const band = (W - M.left - M.right) / categories.length;
    const width = Math.min(72, Math.max(4, band * 0.8 / series.length));
    const pad = (band - width * series.length) / 2;  // centre each group in its band
    const axis = el("g", { class: "axis x" }, svg);
    categories.forEach((c, j) => {
      const label = c.length > 16 ? c.slice(0, 15) + "…" : c;
      tip(text(axis, M.left + band * (j + 0.5), H - M.bottom + 16, label, { "text-anchor": "middle" }), c);
    });
    series.forEach((s, i) => {
      const colour = PALETTE[i % PALETTE.length];
      s.values.forEach((v, j) => {
        if (!Number.isFinite(v)) return;
        const x = M.left + band * j + pad + width * i;
        const top = Math.min(y(v), y(0)), height = Math.max(1, Math.abs(y(v) - y(0)));
        const r = el("rect", { x: x, y: top, width: width, height: height, fill: colour, class: "bar",
                               "data-value": v, "data-series": s.name }, svg);
        const iv = s.intervals && s.intervals[j];
        let label = `${s.name} · ${categories[j]} · ¥${v.toLocaleString("zh-CN")}`;
        if (iv && Number.isFinite(iv[0]) && Number.isFinite(iv[1])) {
          const cx = x + width / 2, cap = Math.min(8, width / 2);
          const g = el("g", { class: "errorbar-group" }, svg);
          el("line", { x1: cx, x2: cx, y1: y(iv[0]), y2: y(iv[1]), class: "errorbar" }, g);
          el("line", { x1: cx - cap, x2: cx + cap, y1: y(iv[0]), y2: y(iv[0]), class: "errorbar cap" }, g);
          el("line", { x1: cx - cap, x2: cx + cap, y1: y(iv[1]), y2: y(iv[1]), class: "errorbar cap" }, g);
          label += ` (95%: ${iv[0].toLocaleString("zh-CN")} … ${iv[1].toLocaleString("zh-CN")})`;
          tip(g, label);
        }
        tip(r, label);
      });
    });
    legend(svg, series.map(s => s.name));
    return svg;
  }

  window.WenlvCharts = { line: line, bar: bar, empty: empty };
})();
