// ComfyUI-HyCa frontend: shows on HyCa Apply what caching did in the last run (sent by the server
// as a "hyca.report" message), and on HyCa Solver Map Loader what the selected map holds (from
// GET /hyca/map). Both are display-only widgets: never written into widgets_values.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const EVENT = "hyca.report";
const REPORT_PROPERTY = "hyca_last_report"; // {prompt_id, runs}: saved with the workflow, survives a reload
const COLOURS = { color: "#2a4858", bgcolor: "#1d333f" }; // one colour for the pack's three nodes
const HYCA_NODES = new Set(["HyCaApply", "HyCaSolverMapLoader", "HyCaCalibrate"]);

const STYLE = `
.hyca-panel { font: 11px/1.35 ui-monospace, SFMono-Regular, Menlo, monospace; color: #d8e2e8;
  background: #13232b; border: 1px solid #2f5566; border-radius: 6px; padding: 5px 7px; overflow: auto;
  box-sizing: border-box; white-space: normal; user-select: text; }
.hyca-panel .hyca-head { font-weight: 600; color: #9fe0c9; }
.hyca-panel .hyca-dim { color: #8aa2ad; }
.hyca-panel .hyca-warn { color: #ffcf70; }
.hyca-panel .hyca-error { color: #ff8a80; }
.hyca-panel .hyca-full { color: #9fe0c9; }
.hyca-panel .hyca-timeline { letter-spacing: 1px; word-break: break-all; margin-bottom: 2px; }
.hyca-panel table { border-collapse: collapse; margin-top: 3px; }
.hyca-panel td, .hyca-panel th { padding: 0 6px 0 0; text-align: left; vertical-align: top; font-weight: normal; }
.hyca-panel th { color: #8aa2ad; }
`;

function injectStyle() {
  if (document.getElementById("hyca-style")) return;
  const style = document.createElement("style");
  style.id = "hyca-style";
  style.textContent = STYLE;
  document.head.appendChild(style);
}

const esc = (value) =>
  String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

function mib(bytes) {
  return bytes >= 2 ** 30 ? `${(bytes / 2 ** 30).toFixed(2)} GiB` : `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

function ranges(numbers) {
  // [2,3,4,6] -> "2-4, 6"
  const parts = [];
  for (let i = 0; i < numbers.length; ) {
    let j = i;
    while (j + 1 < numbers.length && numbers[j + 1] === numbers[j] + 1) j++;
    parts.push(i === j ? `${numbers[i]}` : `${numbers[i]}-${numbers[j]}`);
    i = j + 1;
  }
  return parts.join(", ");
}

// -- a display panel as a DOM widget ------------------------------------------------------------
const PANEL_MAX_HEIGHT = 320; // longer contents scroll
const PANEL_MARGIN = 4;

function addPanel(node, name, placeholder, minWidth = 320) {
  injectStyle();
  // The frontend stretches a DOM widget's element to the widget; the inner div has the content's
  // own height, which sizes the widget.
  const element = document.createElement("div");
  element.className = "hyca-panel";
  element.dataset.hyca = name;
  const content = document.createElement("div");
  content.innerHTML = `<span class="hyca-dim">${esc(placeholder)}</span>`;
  element.appendChild(content);
  const height = () => Math.min(Math.max(20, content.offsetHeight) + 12 + 2 * PANEL_MARGIN, PANEL_MAX_HEIGHT);
  const widget = node.addDOMWidget(name, "hyca-panel", element, {
    serialize: false, // not part of the prompt
    hideOnZoom: false,
    margin: PANEL_MARGIN,
    getValue: () => undefined,
    setValue: () => {},
    getMinHeight: height,
    getMaxHeight: height,
  });
  widget.serialize = false; // not in widgets_values either: V3 widget values stay in order
  // Fit the node to the panel whenever the content's height changes, including when the frontend
  // first mounts it (unmounted content measures 0).
  let measured = -1;
  new ResizeObserver(() => {
    if (content.offsetHeight === measured) return;
    measured = content.offsetHeight;
    const wanted = node.computeSize();
    node.setSize([Math.max(node.size[0], wanted[0], minWidth), wanted[1]]);
    node.setDirtyCanvas(true, true);
  }).observe(content);
  const show = (html) => { content.innerHTML = html; };
  return { element, content, widget, show };
}

// -- HyCa Apply: run report ----------------------------------------------------------------------
function reportHtml(r) {
  const when = new Date(r.finished).toLocaleString();
  const status = r.status === "done" ? "" : ` <span class="hyca-warn">(${esc(r.status)})</span>`;
  const lines = [
    `<div class="hyca-head">${r.flops_speedup.toFixed(2)}× FLOPs bound · ${r.full} full + ${r.predicted} forecast` +
      ` · ${r.seconds.toFixed(1)} s${status}</div>`,
  ];
  for (const c of r.conds) {
    const recomputed = c.recomputed ? ` · <span class="hyca-warn">${c.recomputed} recomputed</span>` : "";
    const reasons = Object.entries(c.full_reasons || {}).map(([k, v]) => `${k} ${v}`).join(", ");
    lines.push(
      `<div>${esc(c.cond)}: ${c.full} full + ${c.predicted} forecast (${c.flops_speedup.toFixed(2)}×)` +
        ` · cache ${mib(c.peak_cache_bytes)}${recomputed}</div>`,
      `<div class="hyca-timeline" title="each model call in order: F full, · forecast, ! forecast refused and ` +
        `recomputed. Full because of: ${esc(reasons)}">${timelineHtml(c.timeline || "")}</div>`,
    );
  }
  const source = r.map ? `map ${esc(r.map)}` : `no map: ${esc(r.solver)} everywhere`;
  const fellBack = r.used_granularity !== r.granularity ? ` → <span class="hyca-warn">${esc(r.used_granularity)}</span>` : "";
  lines.push(
    `<div class="hyca-dim">${source} · N=${r.interval} · warm-up ${r.warmup} · cooldown ${r.cooldown} · ` +
      `${esc(r.granularity)}${fellBack}</div>`,
  );
  for (const note of r.notes || []) lines.push(`<div class="hyca-warn">⚠ ${esc(note)}</div>`);
  lines.push(`<div class="hyca-dim">last run ${esc(when)}</div>`);
  return lines.join("");
}

// "FFF··F···" as coloured runs; very long runs (video, many steps) are cut with a count.
const TIMELINE_MAX = 160;
function timelineHtml(timeline) {
  const shown = [...timeline].slice(0, TIMELINE_MAX);
  const runs = [];
  for (const c of shown) {
    if (runs.length && runs[runs.length - 1][0] === c) runs[runs.length - 1][1] += c;
    else runs.push([c, c]);
  }
  const cls = { F: "hyca-full", "·": "hyca-dim", "!": "hyca-warn" };
  const more = timeline.length > TIMELINE_MAX ? ` <span class="hyca-dim">+${timeline.length - TIMELINE_MAX}</span>` : "";
  return runs.map(([c, text]) => `<span class="${cls[c] || ""}">${esc(text)}</span>`).join("") + more;
}

// A prompt can sample several times through one HyCa Apply (hires fix, two passes, loops): the
// node keeps every run of the latest prompt, the most recent MAX_RUNS of them.
const MAX_RUNS = 4;

function withRun(saved, report) {
  const runs = saved?.prompt_id && saved.prompt_id === report.prompt_id ? saved.runs ?? [] : [];
  return { prompt_id: report.prompt_id, runs: [...runs, report].slice(-MAX_RUNS) };
}

function showReport(node, saved) {
  if (!node.hycaReport) node.hycaReport = addPanel(node, "hyca_report", "Run a prompt to see what HyCa did.");
  const runs = saved.runs ?? [];
  node.hycaReport.show(runs.map((run, i) => (runs.length > 1 ?
    `<div class="hyca-dim" style="margin-top:${i ? 4 : 0}px">sampling run ${i + 1} of this prompt</div>` : "") +
    reportHtml(run)).join(""));
}

// Execution ids are node ids, or "outer:inner" paths for nodes inside subgraphs.
function nodeByExecutionId(id) {
  let graph = app.graph;
  let node = null;
  for (const part of String(id).split(":")) {
    node = graph?.getNodeById?.(Number(part)) ?? graph?.getNodeById?.(part);
    if (!node) return null;
    graph = node.subgraph;
  }
  return node;
}

// -- HyCa Solver Map Loader: map details ---------------------------------------------------------
function detailsHtml(d) {
  const arch = d.architecture;
  const blocks = Object.entries(arch.blocks || {}).map(([k, v]) => `${v} ${esc(k)}`).join(" + ");
  const p = d.provenance || {};
  const calibrated = [
    p.steps && `${p.steps} steps`, p.sampler && `${esc(p.sampler)}/${esc(p.scheduler)}`, p.cfg !== undefined && `cfg ${p.cfg}`,
    p.runs && `${p.runs} run(s)`, p.cooldown !== undefined && `cooldown ${p.cooldown}`, p.date && esc(p.date),
  ].filter(Boolean).join(" · ");
  const lines = [
    `<div class="hyca-head">${esc(d.family)} · ${esc(d.granularity)} · ${d.mode === "fit" ? "fitted weights" : "pool solvers"}</div>`,
    `<div class="hyca-dim">hidden ${arch.hidden_size} · ${blocks} · ${arch.features} features · ${esc(arch.fingerprint)}</div>`,
    `<div>intervals ${ranges(d.intervals)} · warm-up ${d.warmup}</div>`,
  ];
  for (const s of d.scopes) {
    const sizes = s.cluster_sizes ? s.cluster_sizes.join("/") : `${s.clusters}`;
    const rows = s.intervals.map((row) => {
      const solvers = row.solvers
        ? row.solvers.map(esc).join(" · ")
        : Object.entries(row.solver_counts).map(([k, v]) => `${esc(k)}×${v}`).join(" ");
      const best = row.best_uniform;
      return `<tr><td>N=${row.interval}</td><td>${solvers}</td>` +
        `<td class="hyca-dim">${row.mse.toExponential(1)} vs ${esc(best.solver)} ${best.mse.toExponential(1)}</td></tr>`;
    });
    lines.push(
      `<div style="margin-top:4px">${esc(s.name)} <span class="hyca-dim">${s.channels} ch, clusters ${sizes}</span></div>` +
        `<table><tr><th></th><th>solver per cluster</th><th>mse vs best single</th></tr>${rows.join("")}</table>`,
    );
  }
  for (const key of ["author", "description", "license"]) {
    if (d[key]) lines.push(`<div><span class="hyca-dim">${key}</span> ${esc(d[key])}</div>`);
  }
  if (calibrated) lines.push(`<div class="hyca-dim">calibrated: ${calibrated}</div>`);
  return lines.join("");
}

async function showMapDetails(node, name) {
  const panel = node.hycaDetails;
  if (!name) {
    panel.show(`<span class="hyca-dim">No maps yet: run HyCa Calibrate, or put a shared map in models/hyca/.</span>`);
    return;
  }
  const asked = (node.hycaAsked = name);
  panel.show(`<span class="hyca-dim">reading ${esc(name)}…</span>`);
  let html;
  try {
    const response = await api.fetchApi(`/hyca/map?name=${encodeURIComponent(name)}`);
    const body = await response.json();
    html = response.ok ? detailsHtml(body) : `<span class="hyca-error">${esc(body.error || response.statusText)}</span>`;
  } catch (error) {
    html = `<span class="hyca-error">could not read ${esc(name)}: ${esc(error.message)}</span>`;
  }
  if (node.hycaAsked === asked) panel.show(html); // a later selection wins
}

function setUpLoader(node) {
  node.hycaDetails = addPanel(node, "hyca_map_details", "Select a map to see what it holds.", 440);
  const combo = node.widgets?.find((w) => w.name === "map_name");
  if (!combo) return;
  const callback = combo.callback;
  combo.callback = function (value, ...rest) { // user edits; loading a workflow sets values directly
    const result = callback?.apply(this, [value, ...rest]);
    showMapDetails(node, combo.value);
    return result;
  };
  showMapDetails(node, combo.value);
}

// Saved values arrive in onConfigure (workflow load, reload, paste, subgraphs), after nodeCreated.
function afterConfigure(nodeType, action) {
  const onConfigure = nodeType.prototype.onConfigure;
  nodeType.prototype.onConfigure = function (...args) {
    const result = onConfigure?.apply(this, args);
    action(this);
    return result;
  };
}

// -- registration --------------------------------------------------------------------------------
app.registerExtension({
  name: "HyCa.Frontend",

  async setup() {
    api.addEventListener(EVENT, ({ detail }) => {
      const node = nodeByExecutionId(detail.node);
      if (!node || node.comfyClass !== "HyCaApply") return;
      const saved = (node.properties[REPORT_PROPERTY] = withRun(node.properties[REPORT_PROPERTY], detail));
      showReport(node, saved);
      // store the open workflow now, so the report is still there after a reload
      app.extensionManager?.workflow?.activeWorkflow?.changeTracker?.checkState();
    });
  },

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name === "HyCaApply") {
      afterConfigure(nodeType, (node) => {
        const saved = node.properties?.[REPORT_PROPERTY];
        if (saved?.runs?.length) showReport(node, saved);
      });
    } else if (nodeData.name === "HyCaSolverMapLoader") {
      afterConfigure(nodeType, (node) => {
        const combo = node.widgets?.find((w) => w.name === "map_name");
        if (node.hycaDetails && combo) showMapDetails(node, combo.value);
      });
    }
  },

  async nodeCreated(node) {
    if (!HYCA_NODES.has(node.comfyClass)) return;
    Object.assign(node, COLOURS); // a saved workflow's own colours are applied after this
    if (node.comfyClass === "HyCaSolverMapLoader") setUpLoader(node);
  },
});
