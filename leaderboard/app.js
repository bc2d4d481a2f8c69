/* spatialbench leaderboard: the table, sorting, filters and search, in plain JavaScript.
 * Every string that comes from a results file reaches the page through textContent, new Option() or
 * setAttribute, never as markup: a model called "<img src=x onerror=alert(1)>" is shown as those characters. */
(function () {
  "use strict";
  performance.mark("leaderboard-start");  // data.js has run: the benchmark splits load time from render time
  const DATA = window.SPATIALBENCH_LEADERBOARD;
  const $ = (id) => document.getElementById(id);

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  if (!DATA || !Array.isArray(DATA.rows)) {
    $("notes").appendChild(el("p", "data.js is missing or empty: rebuild with `spatialbench leaderboard build`."));
    return;
  }

  const models = DATA.models;
  const conditionRank = new Map(DATA.conditions.map((c, i) => [c, i]));
  const rowText = DATA.rows.map((r) => {
    const m = models[r.model];
    return [m.name, m.family, m.checkpoint, r.condition].join(" ").toLowerCase();
  });
  const state = { sortKey: "average", sortDir: -1, family: "", condition: "", group: "", search: "",
                  normalise: false, selected: -1 };

  const fmt = (x) => (x === null || x === undefined ? "–" : x.toFixed(3));
  const signed = (x) => (x === null || x === undefined ? "–" : (x > 0 ? "+" : "") + x.toFixed(3));

  function mean(values) {
    const v = values.filter((x) => x !== null && x !== undefined);
    return v.length ? v.reduce((a, b) => a + b, 0) / v.length : null;
  }

  function norm(x, chance) {
    if (x === null || x === undefined || chance === null || chance === undefined || chance >= 1) return null;
    return (x - chance) / (1 - chance);
  }

  // The number a task cell shows (and sorts by): raw, or chance-normalised.
  const shown = (cell, x) => (state.normalise ? norm(x, cell.chance) : x);

  function visibleTasks() {
    return DATA.tasks.filter((t) => !state.group || t.groups.includes(state.group));
  }

  // Averages over the shown task columns, so a task-group filter gives that group's averages. `has` counts
  // the shown tasks the row scored: a row without all of them is ranked apart (its averages cover less).
  function stats(row, tasks) {
    const cells = tasks.map((t) => row.cells[t.name]).filter(Boolean);
    const gapOf = row.role === "regime" ? models[row.model].gap : {};  // the gap is the model's, shown on its regimes
    const gaps = tasks.map((t) => gapOf[t.name]).filter(Boolean);
    const sel = tasks.map((t) => row.selectivity[t.name]).filter(Boolean);
    const rec = tasks.map((t) => (row.recovered || {})[t.name]).filter(Boolean);
    return {
      has: cells.length,
      section: row.role === "baseline" ? "baselines" : cells.length === tasks.length ? "ranked" : "partial",
      rec: mean(rec.map((r) => r.value)),
      recN: rec.length,
      average: mean(cells.map((c) => shown(c, c.mean))),
      win: mean(cells.map((c) => c.win)),
      gap: mean(gaps.map((g) => g.diff)),
      gapSig: gaps.filter((g) => g.lo > 0 || g.hi < 0).length,
      gapN: gaps.length,
      sel: mean(sel.map((s) => s.diff)),
      selN: sel.length,
    };
  }

  // Models ranked over the shown tasks they all have; then models missing some, ranked among themselves;
  // then the baselines (floors and ceilings of the same probes), never ranked against models.
  const SECTIONS = [
    ["ranked", null],
    ["partial", "Missing some shown tasks: ranked apart (their averages cover only the tasks they have)"],
    ["baselines", "Baselines: the floors and ceilings every model is probed between, not ranked"],
  ];

  // Per task: the paired difference with its 95% CI and p-value, for a summary cell's tooltip.
  function pairedTitle(what, tasks, byTask) {
    return tasks.filter((t) => byTask[t.name]).map((t) => {
      const p = byTask[t.name];
      return t.name + ": " + what + " " + signed(p.diff) + " [" + fmt(p.lo) + ", " + fmt(p.hi) + "], p " + fmt(p.p);
    }).join("\n");
  }

  // The summaries come before the task columns: they are what a reader compares, and however many tasks
  // there are they stay on screen.
  function columns(tasks) {
    const cols = [
      { key: "rank", label: "#", nosort: true },
      { key: "model", label: "model", text: true, value: (r) => models[r.model].name.toLowerCase() },
      { key: "family", label: "family", text: true, value: (r) => models[r.model].family.toLowerCase() },
      { key: "condition", label: "regime / baseline", text: true, value: (r) => conditionRank.get(r.condition) },
      { key: "average", label: "avg", sub: "over shown tasks", value: (r, s) => s.average, summary: true },
      { key: "win", label: "win rate", sub: "vs other models", value: (r, s) => s.win, summary: true },
      { key: "recovered", label: "recovered", sub: "(x − blind) / (oracle − blind)", value: (r, s) => s.rec,
        summary: true },
      { key: "gap", label: "Δ joint − frozen", sub: "mean; CI excl. 0", value: (r, s) => s.gap, summary: true },
      { key: "sel", label: "selectivity", sub: "task − control", value: (r, s) => s.sel, summary: true },
    ];
    for (const t of tasks) {
      const [lo, hi] = t.chance || [null, null];  // a range when files disagree (--limit runs)
      const chance = lo === null ? "?" : lo === hi ? fmt(lo) : fmt(lo) + "–" + fmt(hi);
      cols.push({
        key: "task:" + t.name, task: t, label: t.name,
        sub: (t.headline || "?") + " · chance " + (state.normalise ? "0" : chance),
        title: t.name + " (" + t.kind + (t.version ? ", v" + t.version : "") + "; groups: " + t.groups.join(", ") +
               "): headline " + (t.headline || "?") + ", chance " + chance,
        value: (r) => (r.cells[t.name] ? shown(r.cells[t.name], r.cells[t.name].mean) : null),
      });
    }
    return cols;
  }

  function visibleRows(tasks) {
    const words = state.search.toLowerCase().split(/\s+/).filter(Boolean);
    const out = [];
    DATA.rows.forEach((r, i) => {
      if (state.family && models[r.model].family !== state.family) return;
      if (state.condition && r.condition !== state.condition) return;
      if (words.some((w) => !rowText[i].includes(w))) return;
      if (state.group && !tasks.some((t) => r.cells[t.name] || models[r.model].failed[t.name])) return;
      out.push(i);
    });
    return out;
  }

  // Section first (see SECTIONS), then the column; missing values sort last in either direction; ties fall
  // back to model name, then condition.
  const sectionRank = new Map(SECTIONS.map(([name], i) => [name, i]));
  function sortRows(indices, col, statsOf) {
    const dir = state.sortDir;
    const keyed = indices.map((i) => [col.value(DATA.rows[i], statsOf[i]), i]);
    keyed.sort((a, b) => {
      const [va, ia] = a, [vb, ib] = b;
      const sa = sectionRank.get(statsOf[ia].section), sb = sectionRank.get(statsOf[ib].section);
      if (sa !== sb) return sa - sb;
      const na = va === null || va === undefined, nb = vb === null || vb === undefined;
      if (na !== nb) return na ? 1 : -1;
      if (!na && va !== vb) return (va < vb ? -1 : 1) * dir;
      const ra = DATA.rows[ia], rb = DATA.rows[ib];
      const ma = models[ra.model].name, mb = models[rb.model].name;
      if (ma !== mb) return ma < mb ? -1 : 1;
      return conditionRank.get(ra.condition) - conditionRank.get(rb.condition);
    });
    return keyed.map((k) => k[1]);
  }

  function renderHead(cols) {
    const tr = el("tr");
    for (const c of cols) {
      const th = el("th", c.label, (c.text ? "text" : "") + (c.nosort ? " nosort" : ""));
      th.dataset.key = c.key;
      if (!c.nosort) th.tabIndex = 0;  // sortable from the keyboard too (Enter)
      if (c.sub) th.appendChild(el("span", c.sub, "sub"));
      if (c.title) th.title = c.title;
      if (c.key === state.sortKey) th.setAttribute("aria-sort", state.sortDir < 0 ? "descending" : "ascending");
      tr.appendChild(th);
    }
    $("board").tHead.replaceChildren(tr);
  }

  function taskCell(row, t) {
    const cell = row.cells[t.name];
    if (!cell) {
      const failed = models[row.model].failed[t.name];
      const td = el("td", failed ? "failed" : "–", failed ? "failed" : "");
      if (failed) td.title = failed;
      return td;
    }
    const td = el("td", fmt(shown(cell, cell.mean)));
    td.appendChild(el("span", fmt(shown(cell, cell.lo)) + "–" + fmt(shown(cell, cell.hi)), "ci"));
    td.title = t.name + ": " + fmt(cell.mean) + " [" + fmt(cell.lo) + ", " + fmt(cell.hi) + "], chance " +
      fmt(cell.chance) + (cell.win !== null ? ", beats " + Math.round(cell.win * 100) + "% of the other rows" : "");
    return td;
  }

  function summaryCells(tr, row, tasks, s) {
    const model = models[row.model];
    tr.appendChild(el("td", fmt(s.average), "summary"));
    tr.appendChild(el("td", s.win === null ? "–" : Math.round(s.win * 100) + "%", "summary"));
    const rec = el("td", fmt(s.rec), "summary");
    if (s.recN) {
      rec.appendChild(el("span", s.recN + " tasks", "ci"));
      rec.title = tasks.filter((t) => (row.recovered || {})[t.name]).map((t) => {
        const r = row.recovered[t.name];
        return t.name + ": recovered " + fmt(r.value) + " [" + fmt(r.lo) + ", " + fmt(r.hi) + "]";
      }).join("\n");
    }
    tr.appendChild(rec);
    const gap = el("td", signed(s.gap), "summary");
    if (s.gapN) gap.appendChild(el("span", s.gapSig + "/" + s.gapN + " tasks", "ci"));
    if (s.gapN) gap.title = pairedTitle("joint − frozen", tasks, model.gap);
    tr.appendChild(gap);
    const sel = el("td", signed(s.sel), "summary");
    if (s.selN) sel.appendChild(el("span", s.selN + " tasks", "ci"));
    if (s.selN) sel.title = pairedTitle("task − control", tasks, row.selectivity);
    tr.appendChild(sel);
  }

  function renderRow(i, rank, tasks, s) {
    const row = DATA.rows[i], model = models[row.model];
    const tr = el("tr", null, row.role === "baseline" ? "baseline" : "regime");
    tr.dataset.row = String(i);
    tr.dataset.section = s.section;
    tr.tabIndex = 0;
    if (i === state.selected) tr.classList.add("selected");
    tr.appendChild(el("td", s.section === "baselines" ? "–" : rank, "rank"));
    const name = el("td", model.name, "text model");
    if (row.limited) {
      const badge = el("span", "limit", "badge");
      badge.title = "testing-only --limit run: not comparable";
      name.appendChild(badge);
    }
    if (s.section === "partial") {
      const badge = el("span", s.has + "/" + tasks.length + " tasks", "badge partial");
      badge.title = "has " + s.has + " of the " + tasks.length + " shown tasks: ranked apart from complete rows";
      name.appendChild(badge);
    }
    tr.appendChild(name);
    tr.appendChild(el("td", model.family, "text family"));
    const cond = el("td", null, "text condition");
    cond.appendChild(el("span", row.condition, "cond cond-" + (row.role === "baseline" ? "baseline" : row.condition)));
    tr.appendChild(cond);
    summaryCells(tr, row, tasks, s);
    for (const t of tasks) tr.appendChild(taskCell(row, t));
    return tr;
  }

  function sectionRow(text, width) {
    const tr = el("tr", null, "section");
    const td = el("td", text, "text");
    td.colSpan = width;
    tr.appendChild(td);
    return tr;
  }

  // The first rows go in at once; the rest follow in chunks, so a board of a thousand rows shows in a blink
  // and stays responsive. A newer render (a click, a keystroke) abandons an older one's remaining chunks.
  const FIRST = 100, CHUNK = 250;
  let rendered = false, generation = 0;

  // Ranks count within a section; a section with a heading opens with a row that says what it is.
  const sectionStart = {};  // section -> its first position in the order (kept across chunks)
  function appendRows(body, order, from, to, tasks, statsOf) {
    const frag = document.createDocumentFragment();
    const width = tasks.length + 9;  // rank, model, family, condition, the five summaries, the tasks
    for (let k = from; k < Math.min(to, order.length); k++) {
      const section = statsOf[order[k]].section;
      if (k === 0 || statsOf[order[k - 1]].section !== section) {
        sectionStart[section] = k;
        const heading = SECTIONS[sectionRank.get(section)][1];
        if (heading) frag.appendChild(sectionRow(heading, width));
      }
      frag.appendChild(renderRow(order[k], k - sectionStart[section] + 1, tasks, statsOf[order[k]]));
    }
    body.appendChild(frag);
  }

  function render() {
    const tasks = visibleTasks();
    const cols = columns(tasks);
    const col = cols.find((c) => c.key === state.sortKey) || cols.find((c) => c.key === "average");
    state.sortKey = col.key;
    const statsOf = {};
    const indices = visibleRows(tasks);
    for (const i of indices) statsOf[i] = stats(DATA.rows[i], tasks);
    const order = sortRows(indices, col, statsOf);
    renderHead(cols);
    const body = $("board").tBodies[0];
    const gen = ++generation;
    body.replaceChildren();
    appendRows(body, order, 0, FIRST, tasks, statsOf);
    $("count").textContent = order.length + " of " + DATA.rows.length + " rows";
    window.SBPlots.draw($("plots"), DATA, order, tasks, (c) => shown(c, c.mean), state.normalise);
    const first = !rendered;
    if (first) {
      rendered = true;
      performance.mark("leaderboard-rendered");  // the benchmark reads these marks
      document.documentElement.dataset.rendered = "1";
      // After the next frame: style, layout and paint of those rows are done too.
      requestAnimationFrame(() => setTimeout(() => performance.mark("leaderboard-painted"), 0));
    }
    let next = FIRST;
    const more = () => {
      if (gen !== generation) return;
      if (next < order.length) {
        appendRows(body, order, next, next + CHUNK, tasks, statsOf);
        next += CHUNK;
        setTimeout(more, 0);
        return;
      }
      body.dataset.complete = "1";  // every matching row is in the table
      if (first) performance.mark("leaderboard-complete");
    };
    delete body.dataset.complete;
    if (next < order.length) setTimeout(more, 0);
    else more();
  }

  function fillSelect(id, values) {
    const select = $(id);
    for (const v of values) select.appendChild(new Option(v, v));
  }

  function setup() {
    document.title = DATA.title;
    $("title").textContent = DATA.title;
    const n = DATA.models.length;
    $("meta").textContent = "Built " + DATA.generated_at + " by spatialbench " + DATA.tool_version + " from " +
      DATA.sources.length + " results file(s): " + n + " model(s), " + DATA.tasks.length + " task(s), " +
      DATA.rows.length + " rows.";
    if (DATA.sources.some((s) => s.limit !== null)) {
      $("notes").appendChild(el("p", "Rows marked 'limit' come from testing-only --limit runs (a cap on the " +
        "examples per split): their numbers are not comparable with full runs."));
    }
    fillSelect("family", DATA.families);
    fillSelect("condition", DATA.conditions);
    fillSelect("group", DATA.groups);
    $("search").addEventListener("input", (e) => { state.search = e.target.value; render(); });
    for (const id of ["family", "condition", "group"]) {
      $(id).addEventListener("change", (e) => { state[id] = e.target.value; render(); });
    }
    $("normalise").addEventListener("change", (e) => { state.normalise = e.target.checked; render(); });
    const sortBy = (e) => {
      const th = e.target.closest("th");
      if (!th || th.classList.contains("nosort")) return;
      if (state.sortKey === th.dataset.key) state.sortDir = -state.sortDir;
      else { state.sortKey = th.dataset.key; state.sortDir = th.classList.contains("text") ? 1 : -1; }
      render();
      const again = $("board").tHead.querySelector(`th[data-key="${CSS.escape(th.dataset.key)}"]`);
      if (again && e.type === "keydown") again.focus();  // the header row was rebuilt
    };
    $("board").tHead.addEventListener("click", sortBy);
    $("board").tHead.addEventListener("keydown", (e) => { if (e.key === "Enter") sortBy(e); });
    const open = (e) => {
      const tr = e.target.closest("tr[data-row]");  // not a section heading
      if (!tr) return;
      state.selected = Number(tr.dataset.row);
      for (const other of $("board").tBodies[0].querySelectorAll("tr.selected")) other.classList.remove("selected");
      tr.classList.add("selected");
      window.SBDetail.show($("detail"), DATA, state.selected, () => { state.selected = -1; render(); });
    };
    $("board").tBodies[0].addEventListener("click", open);
    $("board").tBodies[0].addEventListener("keydown", (e) => { if (e.key === "Enter") open(e); });
    render();
  }

  setup();
})();
