/* trainspect dashboard: panels from the run's series metadata, polled while the run trains.
 * In an HTML report (trainspect report) the same code runs on data frozen into the page
 * (window.TRAINSPECT_STATIC) and never polls. */
(function () {
  "use strict";
  const STATIC = window.TRAINSPECT_STATIC || null;
  const params = new URLSearchParams(location.search);
  const POLL_MS = Number(params.get("interval") || 1500);
  const ROW_GROUPS = ["hyperparameters", "performance", "health"];
  const MAX_LAYER_LINES = 16;
  const PALETTE = ["#1565c0", "#ef6c00", "#2e7d32", "#c62828", "#6a1b9a", "#00838f", "#ad1457", "#9e9d24",
                   "#4e342e", "#546e7a", "#283593", "#f9a825", "#00695c", "#d84315", "#5d4037", "#7b1fa2"];
  const S = { runId: null, compareId: null, layer: "__all__", summary: null, compare: null, panels: new Map(),
              data: {}, cmpData: {}, hist: {}, openFindings: new Set(), timer: null, lastStep: null,
              samplesStep: "latest", samplesShownFor: null, busy: false };
  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs, ...children) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
    }
    for (const c of children) if (c != null) e.append(c);
    return e;
  };

  // ---------------------------------------------------------------------------------------- data access
  function staticKey(path, p) {
    return path + "?" + Object.keys(p).sort().map((k) => k + "=" + p[k]).join("&");
  }
  async function api(path, p) {
    p = Object.fromEntries(Object.entries(p || {}).filter(([, v]) => v !== undefined && v !== null));
    if (STATIC) {
      const k = staticKey(path, p);
      if (k in STATIC.data) return STATIC.data[k];
      throw new Error("not included in this report: " + k);
    }
    const qs = new URLSearchParams(p).toString();
    const r = await fetch("api/" + path + (qs ? "?" + qs : ""), { cache: "no-store" });
    const j = await r.json();
    if (!r.ok) throw new Error(j.error || String(r.status));
    return j;
  }
  function fmt(v) {
    if (v == null) return "–";
    if (typeof v !== "number") return String(v);
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return Number(v.toExponential(2)).toExponential();
    return Number(v.toPrecision(4)).toString();
  }

  // ---------------------------------------------------------------------------------------- run list
  async function init() {
    if (STATIC) {
      $("compare-label").hidden = true;
      $("run-select").append(el("option", { value: STATIC.run, text: STATIC.name }));
      S.runId = STATIC.run;
      await loadRun();
      return;
    }
    const runs = (await api("runs")).runs;
    const sel = $("run-select"), cmp = $("compare-select");
    for (const r of runs) {
      const label = `${r.name} · ${r.status} · ${r.steps ?? "?"} steps` + (r.findings ? ` · ${r.findings} findings` : "");
      sel.append(el("option", { value: r.id, text: label }));
      cmp.append(el("option", { value: r.id, text: r.name + " (" + r.id + ")" }));
    }
    const hash = new URLSearchParams(location.hash.slice(1));
    S.runId = hash.get("run") || (runs[0] && runs[0].id);
    if (hash.get("compare")) S.compareId = hash.get("compare");
    if (!S.runId) { $("overview").textContent = "No runs in this folder yet; start a training with trainspect attached."; return; }
    sel.value = S.runId; cmp.value = S.compareId || "";
    sel.onchange = () => { S.runId = sel.value; setHash(); loadRun(); };
    cmp.onchange = () => { S.compareId = cmp.value || null; setHash(); loadCompare(); };
    await loadRun();
  }
  function setHash() {
    const h = new URLSearchParams({ run: S.runId });
    if (S.compareId) h.set("compare", S.compareId);
    history.replaceState(null, "", "#" + h.toString());
  }

  // ---------------------------------------------------------------------------------------- one run
  async function loadRun() {
    clearTimeout(S.timer);
    S.panels.forEach((p) => p.chart && p.chart.destroy());
    S.panels.clear(); S.data = {}; S.hist = {}; S.lastStep = null; S.samplesShownFor = null;
    $("panels").textContent = "";
    S.summary = await api("run", { run: S.runId });
    buildLayout();
    await refresh(true);
    if (S.compareId) await loadCompare();
    schedule();
  }
  function schedule() {
    clearTimeout(S.timer);
    if (STATIC) return;
    S.timer = setTimeout(async () => {
      try { await refresh(false); } catch (e) { $("status").textContent = "update failed: " + e.message; }
      schedule();
    }, POLL_MS);
  }
  function panelSignature(summary) { return summary.panels.map((p) => p.key + ":" + p.series.join(",")).join("|"); }

  function buildLayout() {
    const sm = S.summary, root = $("panels");
    root.textContent = "";
    S.panels.forEach((p) => p.chart && p.chart.destroy());
    S.panels.clear();
    S.signature = panelSignature(sm);
    const groups = [...sm.columns, ...ROW_GROUPS.filter((g) => sm.panels.some((p) => p.group === g))];
    for (const g of groups) {
      const box = el("div", { class: "group-panels" });
      root.append(el("section", { class: "group", "data-group": g }, el("h2", { text: sm.group_titles[g] || g }), box));
      for (const p of sm.panels.filter((q) => q.group === g)) {
        const title = el("h3", { text: p.title.replace(/_/g, " ") });
        const healthy = el("div", { class: "healthy", text: (p.healthy ? "healthy: " + p.healthy : "") +
                                      (p.description ? (p.healthy ? " · " : "") + p.description : "") });
        const plot = el("div", { class: "plot" });
        const note = el("div", { class: "axis-note" });
        const node = el("div", { class: "panel", "data-key": p.key, "data-kind": p.kind, "data-points": "0",
                                 "data-layer": S.layer }, title, healthy, plot, note);
        box.append(node);
        S.panels.set(p.key, { spec: p, node, plot, note, title, chart: null, sig: null });
      }
    }
    const layerSel = $("layer-select");
    const keep = S.layer;
    layerSel.textContent = "";
    layerSel.append(el("option", { value: "__all__", text: "all layers" }));
    sm.layers.forEach((l, i) => layerSel.append(el("option", { value: String(i), text: `${l.name} (${l.module_class})` })));
    layerSel.value = keep < sm.layers.length || keep === "__all__" ? keep : "__all__";
    S.layer = layerSel.value;
    layerSel.onchange = () => { S.layer = layerSel.value; S.panels.forEach((p) => p.spec.kind === "scalar" && drawScalar(p)); };
    $("model-summary").textContent = sm.model_summary + "\n\n" + JSON.stringify(sm.meta, null, 1);
  }

  async function refresh(full) {
    if (S.busy) return;
    S.busy = true;
    try {
      const sm = full ? S.summary : await api("run", { run: S.runId });
      if (!full && panelSignature(sm) !== S.signature) { S.summary = sm; buildLayout(); full = true; S.data = {}; }
      S.summary = sm;
      const changed = full || sm.last_step !== S.lastStep;
      renderStatus(sm); renderFindings(sm);
      if (changed) {
        const jobs = [];
        for (const p of S.panels.values()) {
          if (p.spec.kind === "scalar") jobs.push(updateScalar(p));
          else jobs.push(updateHistogram(p));
        }
        await Promise.all(jobs);
        if (sm.has_samples) await renderSamples(false);
      }
      S.lastStep = sm.last_step;
      if (!STATIC && sm.meta.status !== "running" && !full) clearTimeout(S.timer);
    } finally { S.busy = false; }
  }

  function renderStatus(sm) {
    const m = sm.meta, st = $("status");
    st.textContent = "";
    st.append(`step ${sm.last_step ?? "–"} · `);
    st.append(el("span", { class: m.status === "running" ? "live" : "", text: m.status === "running" && !STATIC ? "● live" : (m.status || "") }));
    $("overview").textContent = `${m.name || ""} · ${m.model_class || ""} · ${(m.trainable_parameter_count || 0).toLocaleString()} trainable parameters · ` +
      `optimizer ${m.optimizer || "–"} · loss ${m.loss || "–"} (${m.loss_reduction || ""}) · started ${String(m.start_time || "").slice(0, 19)}`;
  }

  // ---------------------------------------------------------------------------------------- scalar panels
  async function updateScalar(p) {
    for (const name of [...p.spec.series, ...(p.spec.companions || [])]) {
      const have = S.data[name];
      const since = have && have.steps.length && !STATIC ? have.steps[have.steps.length - 1] + 1 : undefined;
      const got = await api("series", { run: S.runId, name, since });
      if (!have || since === undefined) S.data[name] = got;
      else if (got.steps.length) {
        have.steps.push(...got.steps); have.values.push(...got.values);
      }
    }
    drawScalar(p);
  }
  async function loadCompare() {
    S.cmpData = {}; S.compare = null;
    if (S.compareId) {
      S.compare = await api("run", { run: S.compareId });
      const names = new Set(Object.keys(S.compare.series));
      for (const p of S.panels.values()) {
        for (const name of [...p.spec.series, ...(p.spec.companions || [])]) {
          if (names.has(name) && S.compare.series[name].kind !== "histogram") {
            try { S.cmpData[name] = await api("series", { run: S.compareId, name }); } catch (e) { /* not comparable */ }
          }
        }
      }
    }
    S.panels.forEach((p) => p.spec.kind === "scalar" && drawScalar(p));
  }

  function layerIndices(d) {
    const n = d.layer_names.length;
    if (S.layer === "__all__") return [...Array(Math.min(n, MAX_LAYER_LINES)).keys()];
    const name = S.summary.layers[Number(S.layer)] && S.summary.layers[Number(S.layer)].name;
    const j = d.layer_names.indexOf(name);
    return j >= 0 ? [j] : [];
  }

  function drawScalar(p) {
    const cols = [];  // {label, steps, values, dash, color, width}
    let k = 0;
    for (const name of p.spec.series) {
      const d = S.data[name];
      if (!d) continue;
      if (d.kind === "layers") {
        for (const j of layerIndices(d)) {
          cols.push({ label: d.layer_names[j], steps: d.steps, values: d.values.map((row) => row[j]),
                      color: PALETTE[(k++) % PALETTE.length], width: 1 });
        }
        const c = S.cmpData[name];
        if (c && S.layer !== "__all__") {
          for (const j of layerIndices(c)) cols.push({ label: c.layer_names[j] + " (compare)", steps: c.steps,
            values: c.values.map((row) => row[j]), color: "#888", width: 1, dash: [5, 4] });
        }
      } else {
        cols.push({ label: name, steps: d.steps, values: d.values, color: "#111", width: 2 });
        const c = S.cmpData[name];
        if (c) cols.push({ label: name + " (" + (S.compare.meta.name || S.compareId) + ")", steps: c.steps,
                           values: c.values, color: "#d32f2f", width: 1.5, dash: [6, 4] });
      }
    }
    const companionColors = ["#c62828", "#6a1b9a", "#00838f", "#9e9d24"];
    (p.spec.companions || []).forEach((name, i) => {
      const d = S.data[name];
      if (d) cols.push({ label: name.slice(p.spec.key.length + 1), steps: d.steps, values: d.values,
                         color: companionColors[i % 4], width: 1, dash: [4, 3], scale: "y2" });
    });
    const xs = [...new Set(cols.flatMap((c) => c.steps))].sort((a, b) => a - b);
    const pos = new Map(xs.map((x, i) => [x, i]));
    const log = p.spec.log_scale && cols.some((c) => c.values.some((v) => v != null && v > 0));
    const data = [xs];
    for (const c of cols) {
      const ys = new Array(xs.length).fill(null);
      const logged = log && c.scale !== "y2";
      c.steps.forEach((s, i) => { const v = c.values[i]; ys[pos.get(s)] = logged && !(v > 0) ? null : v; });
      data.push(ys);
    }
    const hasY2 = cols.some((c) => c.scale === "y2");
    const mainLen = cols.length ? cols[0].steps.length : 0;
    p.node.setAttribute("data-points", String(mainLen));
    p.node.setAttribute("data-layer", S.layer);
    p.node.setAttribute("data-lines", String(cols.length));
    const layerName = S.layer !== "__all__" && p.spec.layers_series ? S.summary.layers[Number(S.layer)].name : null;
    p.title.textContent = p.spec.title.replace(/_/g, " ") + (layerName ? " — " + layerName : "");
    const last = cols.length && cols[0].values.length ? cols[0].values[cols[0].values.length - 1] : null;
    p.note.textContent = cols.length ? `last: ${fmt(last)} at step ${xs[xs.length - 1]}` + (log ? " · log scale" : "") : "no data yet";
    const sig = cols.map((c) => c.label).join("|") + (log ? "|log" : "");
    const width = Math.max(p.plot.clientWidth, 280);
    if (p.chart && p.sig === sig) { p.chart.setData(data); return; }
    if (p.chart) p.chart.destroy();
    p.sig = sig;
    if (!cols.length) { p.chart = null; return; }
    p.chart = new uPlot({
      width, height: 200, legend: { show: cols.length <= 10, live: cols.length <= 3 },
      cursor: { drag: { x: true, y: false } },
      scales: { x: { time: false }, y: log ? { distr: 3 } : {}, ...(hasY2 ? { y2: {} } : {}) },
      axes: [{ label: "step", size: 30, labelSize: 14 }, { size: 56, values: (u, v) => v.map(fmt) },
             ...(hasY2 ? [{ scale: "y2", side: 1, size: 50, stroke: "#888", grid: { show: false },
                            values: (u, v) => v.map(fmt) }] : [])],
      series: [{ label: "step" }, ...cols.map((c) => ({ label: c.label, stroke: c.color, width: c.width, scale: c.scale || "y",
                                                      dash: c.dash, spanGaps: true, value: (u, v) => fmt(v),
                                                      points: { show: c.steps.length < 30 } }))],
    }, data, p.plot);
  }

  // ---------------------------------------------------------------------------------------- histograms
  async function updateHistogram(p) {
    const h = await api("histogram", { run: S.runId, name: p.spec.series[0] });
    S.hist[p.spec.key] = h;
    p.node.setAttribute("data-points", String(h.steps.length));
    if (h.step == null) { p.note.textContent = "no data yet"; return; }
    p.note.textContent = `step ${h.step} (${h.steps.length} recorded)`;
    if (p.spec.kind === "curve") return drawCurve(p, h);
    let canvas = p.plot.querySelector("canvas");
    if (!canvas) { canvas = el("canvas", { class: "hist" }); p.plot.append(canvas); }
    const w = canvas.width = Math.max(p.plot.clientWidth, 280) * devicePixelRatio;
    const hgt = canvas.height = 200 * devicePixelRatio;
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, w, hgt);
    const pad = 28 * devicePixelRatio;
    ctx.font = `${10 * devicePixelRatio}px sans-serif`;
    ctx.fillStyle = "#555";
    const xe = h.x_edges;
    ctx.fillText(fmt(xe[0]), pad, hgt - 6);
    const right = fmt(xe[xe.length - 1]);
    ctx.fillText(right, w - ctx.measureText(right).width - 2, hgt - 6);
    if (p.spec.kind === "histogram") {
      const counts = h.counts.map((v) => v || 0);
      const tr = p.spec.log_scale ? (v) => Math.log10(1 + v) : (v) => v;
      const max = Math.max(...counts.map(tr), 1e-12);
      const lo = xe[0], span = xe[xe.length - 1] - lo || 1;
      ctx.fillStyle = "#1565c0";
      counts.forEach((c, i) => {
        const x0 = pad + (xe[i] - lo) / span * (w - pad - 4), x1 = pad + (xe[i + 1] - lo) / span * (w - pad - 4);
        const bh = tr(c) / max * (hgt - pad - 8);
        ctx.fillRect(x0, hgt - pad - bh, Math.max(x1 - x0 - 1, 1), bh);
      });
      ctx.fillStyle = "#555";
      ctx.fillText("max " + fmt(Math.max(...counts)), pad, 12 * devicePixelRatio);
    } else {  // 2-D histogram: heatmap, log colour scale
      const rows = h.counts, nx = rows.length, ny = rows[0].length;
      let max = 0; rows.forEach((r) => r.forEach((v) => { if (v > max) max = v; }));
      const cw = (w - pad - 4) / nx, ch = (hgt - pad - 8) / ny;
      for (let i = 0; i < nx; i++) for (let j = 0; j < ny; j++) {
        const v = rows[i][j] || 0;
        const t = v > 0 ? Math.log1p(v) / Math.log1p(max) : 0;
        ctx.fillStyle = `rgb(${Math.round(255 * Math.min(1, 1.6 * t))},${Math.round(200 * t * t)},${Math.round(90 + 100 * t)})`;
        if (v === 0) ctx.fillStyle = "#0b0b1e";
        ctx.fillRect(pad + i * cw, hgt - pad - (j + 1) * ch, Math.ceil(cw), Math.ceil(ch));
      }
      const ye = h.y_edges;
      ctx.fillStyle = "#555";
      ctx.fillText(fmt(ye[ye.length - 1]), 0, 12 * devicePixelRatio);
      ctx.fillText(fmt(ye[0]), 0, hgt - pad);
    }
  }
  function drawCurve(p, h) {
    const pairs = h.x_edges.map((x, i) => [x, h.counts[i]]).sort((a, b) => a[0] - b[0]);
    const data = [pairs.map((q) => q[0]), pairs.map((q) => q[1])];
    if (p.chart) { p.chart.setData(data); return; }
    p.chart = new uPlot({ width: Math.max(p.plot.clientWidth, 280), height: 200, scales: { x: { time: false } },
      axes: [{ size: 30 }, { size: 56, values: (u, v) => v.map(fmt) }],
      series: [{ label: "x" }, { label: p.spec.key, stroke: "#1565c0", width: 1.5 }] }, data, p.plot);
  }

  // ---------------------------------------------------------------------------------------- findings
  function renderFindings(sm) {
    const box = $("findings");
    box.textContent = "";
    $("findings-count").textContent = `(${sm.findings.length})`;
    if (!sm.findings.length) box.append(el("p", { class: "none", text: "No findings: every check passed so far." }));
    const order = { error: 0, warning: 1, info: 2 };
    const list = [...sm.findings].sort((a, b) => (order[a.severity] ?? 3) - (order[b.severity] ?? 3) || (a.first_step ?? 0) - (b.first_step ?? 0));
    for (const f of list) {
      const id = f.code + "@" + f.location;
      const d = el("details", { class: "finding " + f.severity, "data-code": f.code });
      if (S.openFindings.has(id)) d.open = true;
      d.addEventListener("toggle", () => { d.open ? S.openFindings.add(id) : S.openFindings.delete(id); });
      const body = el("div", { class: "body" },
        el("div", { class: "where", text: (f.location ? f.location + " · " : "") + `steps ${f.first_step}–${f.last_step} · seen ${f.count}×` }),
        el("p", { class: "explanation", text: f.explanation }));
      const ev = Object.entries(f.evidence || {});
      if (ev.length) {
        const t = el("table", { class: "evidence" });
        for (const [k, v] of ev) t.append(el("tr", {}, el("td", { text: k }), el("td", { text: typeof v === "object" ? JSON.stringify(v) : fmt(v) })));
        body.append(t);
      }
      if (f.remedies && f.remedies.length) {
        body.append(el("b", { text: "What to try" }));
        const ul = el("ul", { class: "remedies" });
        f.remedies.forEach((r) => ul.append(el("li", { text: r })));
        body.append(ul);
      }
      d.append(el("summary", {}, el("span", { class: "sev", text: f.severity }), f.title), body);
      box.append(d);
    }
    const errs = $("errors");
    errs.textContent = "";
    if (sm.errors.length) {
      errs.append(el("h2", { text: "Failures" }));
      for (const e of sm.errors) errs.append(el("div", { class: "errors", text: `${e.source} at step ${e.step}: ${e.message}` }));
    }
  }

  // ---------------------------------------------------------------------------------------- samples
  async function renderSamples(force) {
    const sec = $("samples");
    sec.hidden = false;
    const d = await api("samples", { run: S.runId, step: S.samplesStep });
    const key = JSON.stringify([d.step, d.steps.length, d.n]);
    if (!force && key === S.samplesShownFor) return;
    S.samplesShownFor = key;
    const sel = $("samples-step");
    sel.textContent = "";
    sel.append(el("option", { value: "latest", text: "latest step" }));
    for (const s of d.steps) sel.append(el("option", { value: String(s), text: "step " + s }));
    if (!STATIC) sel.append(el("option", { value: "all", text: "all logged steps" }));
    sel.value = String(S.samplesStep);
    sel.onchange = () => { S.samplesStep = sel.value; renderSamples(true); };
    sec.setAttribute("data-step", String(d.step));
    const ex = $("examples");
    ex.textContent = "";
    for (const e of d.examples) {
      const card = el("div", { class: "example " + (e.correct ? "right" : "wrong"), "data-loss": String(e.loss) });
      if (e.input_kind === "image" && e.input) card.append(imageCanvas(e.input, e.shape));
      else if (e.input_kind === "vector" && e.input) card.append(vectorCanvas(e.input));
      if (e.text != null) card.append(el("div", { class: "text", text: e.text }));
      const labels = el("div", { class: "labels" }, "pred ", el("b", { text: e.prediction_name }), " · true " + e.target_name);
      card.append(labels, el("div", { text: `loss ${fmt(e.loss)}` + (e.confidence != null ? ` · p ${fmt(e.confidence)}` : "") + ` · step ${e.step}` }));
      ex.append(card);
    }
    const pc = $("per-class");
    pc.textContent = "";
    pc.append(el("tr", {}, el("th", { text: "class" }), el("th", { text: "n" }), el("th", { text: "accuracy" }), el("th", {})));
    for (const c of d.per_class) {
      const acc = c.accuracy;
      pc.append(el("tr", { "data-class": String(c.class) }, el("td", { text: c.name }), el("td", { text: String(c.n) }),
        el("td", { text: acc == null ? "–" : (100 * acc).toFixed(1) + "%" }),
        el("td", {}, el("span", { class: "bar", style: `width:${Math.round(80 * (acc || 0))}px;background:${acc != null && acc < 0.5 ? "#c62828" : "#1565c0"}` }))));
    }
    const cm = $("confusion");
    cm.textContent = "";
    if (d.confusion.length) {
      const head = el("tr", {}, el("th", { text: "" }));
      d.class_names.forEach((n) => head.append(el("th", { text: n })));
      cm.append(head);
      d.confusion.forEach((row, i) => {
        const tr = el("tr", {}, el("th", { text: d.class_names[i] }));
        const max = Math.max(...row, 1);
        row.forEach((v, j) => {
          const a = v / max, color = i === j ? `rgba(46,125,50,${a})` : `rgba(198,40,40,${a})`;
          tr.append(el("td", { text: v ? String(v) : "", style: `background:${v ? color : "transparent"};color:${a > 0.6 ? "#fff" : "#222"}`,
                               "data-true": String(d.classes[i]), "data-pred": String(d.classes[j]), "data-count": String(v) }));
        });
        cm.append(tr);
      });
    }
  }
  function imageCanvas(values, shape) {
    const [c, h, w] = shape.length === 3 ? shape : [1, shape[0], shape[1]];
    const canvas = el("canvas", { width: String(w), height: String(h) });
    const ctx = canvas.getContext("2d"), img = ctx.createImageData(w, h);
    const finite = values.filter((v) => v != null);
    const lo = Math.min(...finite), hi = Math.max(...finite), span = hi - lo || 1;
    const at = (ch, i) => ((values[ch * h * w + i] ?? lo) - lo) / span * 255;
    for (let i = 0; i < h * w; i++) {
      const r = at(0, i), g = c >= 3 ? at(1, i) : r, b = c >= 3 ? at(2, i) : r;
      img.data.set([r, g, b, 255], 4 * i);
    }
    ctx.putImageData(img, 0, 0);
    return canvas;
  }
  function vectorCanvas(values) {
    const canvas = el("canvas", { width: "100", height: "30" });
    const ctx = canvas.getContext("2d"), finite = values.filter((v) => v != null);
    const lo = Math.min(...finite), hi = Math.max(...finite), span = hi - lo || 1;
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, 100, 30); ctx.strokeStyle = "#1565c0"; ctx.beginPath();
    values.forEach((v, i) => { const x = i / Math.max(values.length - 1, 1) * 100, y = 30 - ((v ?? lo) - lo) / span * 30; i ? ctx.lineTo(x, y) : ctx.moveTo(x, y); });
    ctx.stroke();
    return canvas;
  }

  window.addEventListener("resize", () => S.panels.forEach((p) => p.chart && p.chart.setSize({ width: Math.max(p.plot.clientWidth, 280), height: 200 })));
  window.trainspectDashboard = S;  // for debugging and the browser tests
  init().catch((e) => { $("overview").textContent = "error: " + e.message; });
})();
