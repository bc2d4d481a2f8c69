/* The main page's plots, drawn from exactly what the table shows (its filters, its numbers, raw or
 * chance-normalised): frozen against joint per model, and recovered per task. Inline SVG; every string
 * goes in through textContent or setAttribute. */
(function () {
  "use strict";
  const SVG = "http://www.w3.org/2000/svg";
  const CHAR = 6.6;   // px per character of an 11px label: margins are sized to the longest label
  const LABELLED = 12;  // above this many models the scatter names them in tooltips only

  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = String(text);
    return e;
  }

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  const fmt = (x) => x.toFixed(3);

  // An axis range that holds 0..1 and every value (normalised scores and recovered shares leave 0..1).
  function domain(values) {
    const lo = Math.min(0, ...values), hi = Math.max(1, ...values);
    return [lo, hi];
  }

  function root(cls, width, height, title) {
    const r = svg("svg", { class: "plot " + cls, width: width, height: height,
                           viewBox: "0 0 " + width + " " + height, role: "img" });
    r.appendChild(svg("title", {}, title));
    return r;
  }

  // Per model with both regimes shown: the mean over the tasks both have, frozen on x, joint on y.
  function pairs(DATA, order, tasks, value) {
    const byModel = new Map();
    for (const i of order) {
      const r = DATA.rows[i];
      if (r.condition !== "frozen" && r.condition !== "joint") continue;
      if (!byModel.has(r.model)) byModel.set(r.model, {});
      byModel.get(r.model)[r.condition] = r;
    }
    const out = [];
    for (const [model, p] of byModel) {
      if (!p.frozen || !p.joint) continue;
      const both = tasks.filter((t) => p.frozen.cells[t.name] && p.joint.cells[t.name]);
      if (!both.length) continue;
      const avg = (r) => both.reduce((a, t) => a + value(r.cells[t.name]), 0) / both.length;
      out.push({ name: DATA.models[model].name, x: avg(p.frozen), y: avg(p.joint), n: both.length });
    }
    return out;
  }

  function scatter(points, normalised) {
    const labelled = points.length <= LABELLED;
    const longest = labelled ? Math.max(0, ...points.map((p) => p.name.length)) : 0;
    const size = 240, left = 44, top = 10, bottom = 40, right = 12 + longest * CHAR;
    const [lo, hi] = domain(points.flatMap((p) => [p.x, p.y]));
    const scale = (v) => (v - lo) / (hi - lo) * size;
    const X = (v) => left + scale(v), Y = (v) => top + size - scale(v);
    const r = root("scatter", left + size + right, top + size + bottom,
                   "joint against frozen, one point per model" + (normalised ? " (chance-normalised)" : ""));
    for (const tick of [lo, (lo + hi) / 2, hi]) {
      r.appendChild(svg("line", { class: "axis", x1: X(lo), x2: X(hi), y1: Y(tick), y2: Y(tick) }));
      r.appendChild(svg("text", { x: left - 4, y: Y(tick) + 4, "text-anchor": "end" }, tick.toFixed(2)));
      r.appendChild(svg("text", { x: X(tick), y: top + size + 14, "text-anchor": "middle" }, tick.toFixed(2)));
    }
    r.appendChild(svg("line", { class: "diagonal", x1: X(lo), y1: Y(lo), x2: X(hi), y2: Y(hi) }));
    r.appendChild(svg("text", { x: left + size / 2, y: top + size + 32, "text-anchor": "middle" }, "frozen"));
    r.appendChild(svg("text", { x: 10, y: top + size / 2, "text-anchor": "middle",
                                transform: "rotate(-90 10 " + (top + size / 2) + ")" }, "joint"));
    const placed = [];  // label boxes so far: a label that would overlap one moves down a line
    for (const p of points) {
      const dot = svg("circle", { class: "point", cx: X(p.x), cy: Y(p.y), r: 4 });
      dot.appendChild(svg("title", {}, p.name + ": frozen " + fmt(p.x) + ", joint " + fmt(p.y) +
                                       " (mean over " + p.n + " tasks)"));
      r.appendChild(dot);
      if (!labelled) continue;
      const x = X(p.x) + 6, w = p.name.length * CHAR;
      let y = Y(p.y) + 4;
      while (placed.some((b) => x < b.x + b.w && b.x < x + w && Math.abs(b.y - y) < 12)) y += 12;
      placed.push({ x: x, y: y, w: w });
      r.appendChild(svg("text", { class: "label", x: x, y: y }, p.name));
    }
    return r;
  }

  // Per task, one strip: each shown model regime's recovered share as a dot (frozen above, joint below).
  function strips(DATA, order, tasks) {
    const rows = order.map((i) => DATA.rows[i]).filter((r) => r.role === "regime" && r.recovered);
    const withShares = tasks.filter((t) => rows.some((r) => r.recovered[t.name]));
    if (!withShares.length) return null;
    const values = withShares.flatMap((t) => rows.filter((r) => r.recovered[t.name]).map((r) => r.recovered[t.name].value));
    const [lo, hi] = domain(values);
    const left = 12 + Math.max(...withShares.map((t) => t.name.length)) * CHAR, width = 300, band = 30, top = 8;
    const X = (v) => left + (v - lo) / (hi - lo) * width;
    const height = top + withShares.length * band + 30;
    const r = root("strips", left + width + 40, height,  // room for the centred "1 = oracle"
                   "recovered per task: (x − blind) / (oracle − blind), one dot per model and regime");
    for (const tick of [0, 1]) {
      r.appendChild(svg("line", { class: "axis", x1: X(tick), x2: X(tick), y1: top, y2: height - 24 }));
      r.appendChild(svg("text", { x: X(tick), y: height - 10, "text-anchor": "middle" },
                        tick ? "1 = oracle" : "0 = blind"));
    }
    withShares.forEach((t, k) => {
      const mid = top + k * band + band / 2;
      r.appendChild(svg("text", { x: left - 8, y: mid + 4, "text-anchor": "end" }, t.name));
      r.appendChild(svg("line", { class: "axis", x1: X(lo), x2: X(hi), y1: mid, y2: mid }));
      for (const row of rows) {
        const share = row.recovered[t.name];
        if (!share) continue;
        const offset = row.condition === "frozen" ? -5 : row.condition === "joint" ? 5 : 0;
        const dot = svg("circle", { class: "point dot-" + row.condition, cx: X(share.value), cy: mid + offset, r: 3.5 });
        dot.appendChild(svg("title", {}, DATA.models[row.model].name + " " + row.condition + " on " + t.name +
                                         ": recovered " + fmt(share.value) + " [" + fmt(share.lo) + ", " + fmt(share.hi) + "]"));
        r.appendChild(dot);
      }
    });
    return r;
  }

  function figure(heading, chart, note) {
    const f = el("figure");
    f.appendChild(el("figcaption", heading));
    f.appendChild(chart);
    if (note) f.appendChild(el("p", note, "hint"));
    return f;
  }

  // `order`: the shown rows in table order; `value(cell)`: the number the table shows for a cell.
  function draw(section, DATA, order, tasks, value, normalised) {
    section.replaceChildren();
    const points = pairs(DATA, order, tasks, value);
    if (points.length) {
      section.appendChild(figure("Frozen against joint, per model", scatter(points, normalised),
        "Mean headline score over the shown tasks both regimes have; above the diagonal, joint training " +
        "recovered what the frozen prompt lacks."));
    }
    const shares = strips(DATA, order, tasks);
    if (shares) {
      section.appendChild(figure("Recovered per task", shares,
        "Share of the blind-to-oracle headroom each model's prompt gives: frozen (upper dots), joint (lower)."));
    }
    section.hidden = !section.childElementCount;
  }

  window.SBPlots = { draw: draw };
})();
