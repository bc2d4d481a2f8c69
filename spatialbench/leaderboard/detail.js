/* The per-model detail view: every condition per task, the frozen -> joint gap, selectivity, per-group
 * breakdowns, a frozen vs joint chart and (a --layers run) the headline by layer, drawn as inline SVG.
 * Text goes in through textContent only; SVG elements are made with createElementNS. */
(function () {
  "use strict";
  const SVG = "http://www.w3.org/2000/svg";

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = String(text);
    return e;
  }

  const fmt = (x) => (x === null || x === undefined ? "–" : x.toFixed(3));
  const interval = (lo, hi) => "[" + fmt(lo) + ", " + fmt(hi) + "]";
  const signed = (x) => (x > 0 ? "+" : "") + x.toFixed(3);

  function table(head, rows) {
    const t = el("table");
    const tr = el("tr");
    for (const h of head) tr.appendChild(el("th", h));
    t.createTHead().appendChild(tr);
    const body = t.createTBody();
    for (const r of rows) {
      const row = el("tr");
      for (const c of r) row.appendChild(c instanceof Node ? c : el("td", c));
      body.appendChild(row);
    }
    return t;
  }

  // Frozen and joint bars per task on a 0..1 axis, with CI whiskers and the task's chance level.
  // The task labels slant down-left from under their bars: the margins grow with the longest one
  // (about 6.6 px a character at 11 px), so no name is cut at the edge.
  function chart(tasks, frozen, joint) {
    const longest = Math.max(...tasks.map((t) => t.name.length)) * 6.6;
    const slant = 35 * Math.PI / 180;
    const groupW = 64, top = 10, plotH = 160;
    const left = Math.max(36, Math.ceil(longest * Math.cos(slant)) - 20);
    const labelH = Math.ceil(longest * Math.sin(slant)) + 24;
    const width = left + Math.max(tasks.length, 3) * groupW + 10;
    const root = svg("svg", { class: "chart", width: width, height: top + plotH + labelH,
                              viewBox: "0 0 " + width + " " + (top + plotH + labelH), role: "img" });
    root.appendChild(svg("title", {}, "frozen vs joint headline score per task, with 95% CIs"));
    const y = (v) => top + plotH * (1 - Math.max(0, Math.min(1, v)));
    for (const tick of [0, 0.25, 0.5, 0.75, 1]) {
      root.appendChild(svg("line", { class: "axis", x1: left, x2: width - 5, y1: y(tick), y2: y(tick) }));
      root.appendChild(svg("text", { x: left - 4, y: y(tick) + 4, "text-anchor": "end" }, tick.toFixed(2)));
    }
    tasks.forEach((t, i) => {
      const x0 = left + i * groupW + 8;
      [["frozen", frozen], ["joint", joint]].forEach(([name, row], k) => {
        const cell = row && row.cells[t.name];
        if (!cell) return;
        const x = x0 + k * 22;
        const bar = svg("rect", { class: "bar-" + name, x: x, y: y(cell.mean), width: 18,
                                  height: Math.max(0, y(0) - y(cell.mean)) });
        const tip = t.name + " " + name + ": " + fmt(cell.mean) + " " + interval(cell.lo, cell.hi);
        bar.appendChild(svg("title", {}, tip));
        root.appendChild(bar);
        root.appendChild(svg("line", { class: "whisker", x1: x + 9, x2: x + 9, y1: y(cell.lo), y2: y(cell.hi) }));
        const chance = cell.chance;
        if (chance !== null && chance !== undefined) {
          root.appendChild(svg("line", { class: "chance", x1: x - 2, x2: x + 20, y1: y(chance), y2: y(chance) }));
        }
      });
      const lx = x0 + 20, ly = top + plotH + 12;
      const rotate = "rotate(-35 " + lx + " " + ly + ")";
      root.appendChild(svg("text", { x: lx, y: ly, "text-anchor": "end", transform: rotate }, t.name));
    });
    return root;
  }

  function legend() {
    const p = el("p", null, "legend");
    for (const [cls, text] of [["frozen", "frozen"], ["joint", "joint"], ["chance", "chance level"]]) {
      p.appendChild(el("span", null, cls));
      p.appendChild(document.createTextNode(text));
    }
    return p;
  }

  // One task's headline at each probed layer in forward order (points with CI whiskers, joined), across
  // the task's reference levels (blind, vision_patches, oracle) drawn as labelled horizontal lines.
  function layerChart(task, curve) {
    const stepW = 72, top = 10, plotH = 160, left = 36, bottom = 34;
    const levels = Object.entries(curve.levels).sort((a, b) => b[1] - a[1]);
    const labels = levels.map(([name, v]) => name + " " + fmt(v));
    const right = 14 + Math.max(0, ...labels.map((l) => l.length)) * 6.6;
    const plotW = Math.max(curve.layers.length, 3) * stepW;
    const width = left + plotW + right, height = top + plotH + bottom;
    const root = svg("svg", { class: "chart layers", width: width, height: height,
                              viewBox: "0 0 " + width + " " + height, role: "img" });
    root.appendChild(svg("title", {}, task + ": " + curve.headline + " by layer, with 95% CIs and the reference levels"));
    const y = (v) => top + plotH * (1 - Math.max(0, Math.min(1, v)));
    for (const tick of [0, 0.25, 0.5, 0.75, 1]) {
      root.appendChild(svg("line", { class: "axis", x1: left, x2: left + plotW, y1: y(tick), y2: y(tick) }));
      root.appendChild(svg("text", { x: left - 4, y: y(tick) + 4, "text-anchor": "end" }, tick.toFixed(2)));
    }
    const placed = [];  // label heights so far: a level label that would overlap one moves down a line
    levels.forEach(([name, v], k) => {
      root.appendChild(svg("line", { class: "level level-" + name, x1: left, x2: left + plotW, y1: y(v), y2: y(v) }));
      let ly = y(v) + 4;
      while (placed.some((p) => Math.abs(p - ly) < 12)) ly += 12;
      placed.push(ly);
      root.appendChild(svg("text", { class: "level-label label-" + name, x: left + plotW + 6, y: ly }, labels[k]));
    });
    const x = (i) => left + stepW * (i + 0.5);
    root.appendChild(svg("polyline", { class: "layer-line",
                                       points: curve.layers.map((p, i) => x(i) + "," + y(p.mean)).join(" ") }));
    curve.layers.forEach((p, i) => {
      root.appendChild(svg("line", { class: "whisker", x1: x(i), x2: x(i), y1: y(p.lo), y2: y(p.hi) }));
      const dot = svg("circle", { class: "layer-point", cx: x(i), cy: y(p.mean), r: 4 });
      let tip = p.name + ": " + fmt(p.mean) + " " + interval(p.lo, p.hi);
      if (p.step) tip += "; change from the layer before " + signed(p.step.diff) + " " + interval(p.step.lo, p.step.hi);
      dot.appendChild(svg("title", {}, tip));
      root.appendChild(dot);
      root.appendChild(svg("text", { x: x(i), y: top + plotH + 16, "text-anchor": "middle" }, p.name));
    });
    return root;
  }

  function layerCharts(model, tasks) {
    const wrap = el("div", null, "layer-charts");
    for (const t of tasks) {
      const curve = model.layers && model.layers[t.name];
      if (!curve) continue;
      const f = el("figure");
      f.appendChild(el("figcaption", t.name + " (" + curve.headline + ")"));
      f.appendChild(layerChart(t.name, curve));
      wrap.appendChild(f);
    }
    return wrap.childElementCount ? wrap : null;
  }

  function facts(DATA, model) {
    const dl = el("dl");
    const add = (k, v) => { dl.appendChild(el("dt", k)); dl.appendChild(el("dd", v)); };
    add("family", model.family);
    add("checkpoint", model.checkpoint);
    add("extraction point", model.point);
    for (const i of model.sources) {
      const s = DATA.sources[i];
      add("results file", s.file + " (created " + s.created_at + ", schema v" + s.schema_version + ")");
      if (s.command) add("command", s.command);
      add("seeds", s.seeds.join(", ") + (s.limit !== null ? "; testing-only --limit " + s.limit : ""));
    }
    return dl;
  }

  function perTask(model, rows, tasks) {
    const failed = model.failed;
    const head = ["task", "headline", "chance", ...rows.map((r) => r.condition), "Δ joint − frozen [95% CI] (p)",
                  ...rows.filter((r) => Object.keys(r.selectivity).length).map((r) => "selectivity " + r.condition)];
    const body = tasks.map((t) => {
      const any = rows.find((r) => r.cells[t.name]);
      const out = [t.name, t.headline || "?", any ? fmt(any.cells[t.name].chance) : "–"];
      for (const r of rows) {
        const c = r.cells[t.name];
        out.push(c ? fmt(c.mean) + " " + interval(c.lo, c.hi) : failed[t.name] ? "failed" : "–");
      }
      const gap = model.gap[t.name];
      out.push(gap ? signed(gap.diff) + " " + interval(gap.lo, gap.hi) + " (p " + (gap.p < 0.001 ? "< 0.001" : gap.p.toFixed(3)) + ")" : "–");
      for (const r of rows.filter((r) => Object.keys(r.selectivity).length)) {
        const s = r.selectivity[t.name];
        out.push(s ? signed(s.diff) + " " + interval(s.lo, s.hi) : "–");
      }
      return out;
    });
    return table(head, body);
  }

  // (x − blind) / (oracle − blind) per task and condition, where the run had both references.
  function recoveredTable(rows, tasks) {
    const withShare = rows.filter((r) => Object.keys(r.recovered || {}).length);
    if (!withShare.length) return null;
    const body = tasks.map((t) => [t.name, ...withShare.map((r) => {
      const v = r.recovered[t.name];
      return v ? fmt(v.value) + " " + interval(v.lo, v.hi) : "–";
    })]);
    return table(["task", ...withShare.map((r) => r.condition)], body);
  }

  // One collapsible block per task: a table per group key (relation, meta-category, colour...).
  function perGroup(rows, tasks) {
    const wrap = el("div");
    for (const t of tasks) {
      const withGroups = rows.filter((r) => r.by_group[t.name]);
      if (!withGroups.length) continue;
      const details = el("details");
      details.appendChild(el("summary", t.name));
      const keys = [...new Set(withGroups.flatMap((r) => Object.keys(r.by_group[t.name])))].sort();
      for (const key of keys) {
        details.appendChild(el("h4", key));
        const values = [...new Set(withGroups.flatMap((r) => Object.keys(r.by_group[t.name][key] || {})))].sort();
        const body = values.map((v) => {
          const first = withGroups.map((r) => (r.by_group[t.name][key] || {})[v]).find(Boolean);
          return [v, String(first[0]), ...withGroups.map((r) => {
            const g = (r.by_group[t.name][key] || {})[v];
            return g ? fmt(g[1]) : "–";
          })];
        });
        details.appendChild(table([key, "n", ...withGroups.map((r) => r.condition)], body));
      }
      wrap.appendChild(details);
    }
    return wrap;
  }

  function show(section, DATA, rowIndex, onClose) {
    const row = DATA.rows[rowIndex];
    const model = DATA.models[row.model];
    const rows = DATA.rows.filter((r) => r.model === row.model);
    const tasks = DATA.tasks.filter((t) => rows.some((r) => r.cells[t.name]) || model.failed[t.name]);
    section.replaceChildren();
    const close = el("button", "close", "close");
    close.type = "button";
    close.addEventListener("click", () => { section.hidden = true; section.replaceChildren(); onClose(); });
    section.appendChild(close);
    section.appendChild(el("h2", model.name));
    if (model.description) section.appendChild(el("p", model.description));
    section.appendChild(facts(DATA, model));
    const frozen = rows.find((r) => r.condition === "frozen"), joint = rows.find((r) => r.condition === "joint");
    if (frozen || joint) {
      section.appendChild(el("h3", "Frozen vs joint per task"));
      section.appendChild(chart(tasks.filter((t) => (frozen && frozen.cells[t.name]) || (joint && joint.cells[t.name])),
                                frozen, joint));
      section.appendChild(legend());
    }
    const layers = layerCharts(model, tasks);
    if (layers) {
      section.appendChild(el("h3", "By layer: headline mean [95% CI], probed frozen at each layer"));
      section.appendChild(layers);
      section.appendChild(el("p", "Each point a layer in forward order (vision encoder, then resampler); the " +
                                  "lines are the task's blind, vision_patches and oracle levels, where the run had them.",
                             "hint"));
    }
    section.appendChild(el("h3", "Per task: headline mean [95% CI] per regime and baseline"));
    section.appendChild(perTask(model, rows, tasks));
    const shares = recoveredTable(rows, tasks);
    if (shares) {
      section.appendChild(el("h3", "Recovered: share of the blind-to-oracle headroom [95% CI]"));
      section.appendChild(shares);
    }
    const failed = Object.entries(model.failed);
    for (const [name, error] of failed) section.appendChild(el("p", name + " failed: " + error, "failed"));
    section.appendChild(el("h3", "Per group (headline, mean over seeds)"));
    section.appendChild(perGroup(rows, tasks));
    section.hidden = false;
    section.scrollIntoView({ block: "start" });
  }

  window.SBDetail = { show: show };
})();
