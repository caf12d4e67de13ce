// ComfyUI-HyCa frontend: shows on HyCa Apply what caching did in the last run (sent by the server
// as a "hyca.report" message), and on HyCa Solver Map Loader what the selected map holds (from
// GET /hyca/map). Both are display-only widgets: never written into widgets_values.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { detailsHtml, esc, planHtml, reportRunsHtml, withRun } from "./hyca_render.js";

const EVENT = "hyca.report";
const PLAN_EVENT = "hyca.plan"; // before a run's first step: its anchors' estimate (the report replaces it)
const REPORT_PROPERTY = "hyca_last_report"; // {prompt_id, runs}: saved with the workflow, survives a reload
const COLOURS = { color: "#2a4858", bgcolor: "#1d333f" }; // one colour for the pack's three nodes
const HYCA_NODES = new Set(["HyCaApply", "HyCaSolverMapLoader", "HyCaCalibrate"]);

const STYLE = `
.hyca-panel { font: 11px/1.35 ui-monospace, SFMono-Regular, Menlo, monospace; color: #d8e2e8;
  background: #13232b; border: 1px solid #2f5566; border-radius: 6px; padding: 5px 7px; overflow: auto;
  box-sizing: border-box; white-space: normal; user-select: text; max-height: 320px; }
.hyca-panel .hyca-head { font-weight: 600; color: #9fe0c9; }
.hyca-panel .hyca-dim { color: #8aa2ad; }
.hyca-panel .hyca-warn { color: #ffcf70; }
.hyca-panel .hyca-error { color: #ff8a80; }
.hyca-panel .hyca-full { color: #9fe0c9; }
.hyca-panel .hyca-timeline { letter-spacing: 1px; word-break: break-all; margin-bottom: 2px; }
.hyca-panel table { border-collapse: collapse; margin-top: 3px; }
.hyca-panel td, .hyca-panel th { padding: 0 6px 0 0; text-align: left; vertical-align: top; font-weight: normal; }
.hyca-panel th { color: #8aa2ad; }
.hyca-panel a.hyca-link { color: #7cc4ff; }
`;

function injectStyle() {
  if (document.getElementById("hyca-style")) return;
  const style = document.createElement("style");
  style.id = "hyca-style";
  style.textContent = STYLE;
  document.head.appendChild(style);
}

// -- a display panel as a DOM widget ------------------------------------------------------------
const PANEL_MAX_HEIGHT = 320; // longer contents scroll (also in STYLE: Vue nodes ignore getMaxHeight)
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

function showReport(node, saved) {
  if (!node.hycaReport) node.hycaReport = addPanel(node, "hyca_report", "Run a prompt to see what HyCa did.");
  node.hycaReport.show(reportRunsHtml(saved));
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

// One request per map shown: a workflow load sets the value several ways (creation, saved values, the
// combo's callback); R asks again with `force`, since a calibration may have rewritten the map.
async function showMapDetails(node, name, force = false) {
  const panel = node.hycaDetails;
  if (!force && name && node.hycaAsked === name) return;
  if (!name) {
    panel.show(`<span class="hyca-dim">No maps yet: run HyCa Calibrate, or put a shared map in models/hyca/.</span>`);
    return;
  }
  const asked = (node.hycaAsked = name);
  const listed = mapCombo(node)?.options?.values;
  if (Array.isArray(listed) && !listed.includes(name)) { // a saved workflow's map that is not here (yet)
    panel.show(`<span class="hyca-warn">${esc(name)} is not in models/hyca/: run the workflow that calibrates it, ` +
      `or copy a shared map there, then press R.</span>`);
    return;
  }
  panel.show(`<span class="hyca-dim">reading ${esc(name)}…</span>`);
  let html;
  try {
    const response = await api.fetchApi(`/hyca/map?name=${encodeURIComponent(name)}`);
    const body = await response.json();
    const chart = api.apiURL(`/hyca/map/chart?name=${encodeURIComponent(name)}`);
    html = response.ok ? detailsHtml(body, chart) : `<span class="hyca-error">${esc(body.error || response.statusText)}</span>`;
  } catch (error) {
    html = `<span class="hyca-error">could not read ${esc(name)}: ${esc(error.message)}</span>`;
    if (node.hycaAsked === asked) node.hycaAsked = null; // the next selection tries again
  }
  if (node.hycaAsked === asked) panel.show(html); // a later selection wins
}

function mapCombo(node) {
  return node.widgets?.find((w) => w.name === "map_name");
}

// Creating a node and applying a saved workflow's values happen in one synchronous run: asking in a
// microtask asks once, for the value the user sees, never for the default the saved one replaces.
function scheduleDetails(node, force = false) {
  if (!node.hycaDetails) return;
  node.hycaDetailsForce ||= force;
  if (node.hycaDetailsPending) return;
  node.hycaDetailsPending = true;
  queueMicrotask(() => {
    const forced = node.hycaDetailsForce;
    node.hycaDetailsPending = node.hycaDetailsForce = false;
    showMapDetails(node, mapCombo(node)?.value, forced);
  });
}

function setUpLoader(node) {
  node.hycaDetails = addPanel(node, "hyca_map_details", "Select a map to see what it holds.", 440);
  const combo = mapCombo(node);
  if (!combo) return;
  const callback = combo.callback;
  combo.callback = function (value, ...rest) { // user edits; loading a workflow sets values directly
    const result = callback?.apply(this, [value, ...rest]);
    showMapDetails(node, combo.value);
    return result;
  };
  scheduleDetails(node);
}

// After R (refresh node definitions) the frontend lists new maps but leaves a loader that was added
// while none existed without a value: give it the first map, as a newly added loader gets, and
// re-read every loader's map (a calibration may have rewritten it). A saved choice is never changed.
function refreshLoaders(graph) {
  for (const node of graph?._nodes ?? graph?.nodes ?? []) {
    if (node.subgraph) refreshLoaders(node.subgraph);
    if (node.comfyClass !== "HyCaSolverMapLoader" || !node.hycaDetails) continue;
    const combo = mapCombo(node);
    const listed = combo?.options?.values ?? [];
    if (combo && (combo.value == null || combo.value === "") && listed.length) combo.value = listed[0];
    scheduleDetails(node, true);
  }
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
      const tracker = app.extensionManager?.workflow?.activeWorkflow?.changeTracker;
      if (tracker?.captureCanvasState) tracker.captureCanvasState(); // checkState is deprecated there
      else tracker?.checkState?.(); // frontend 1.27
    });
    api.addEventListener(PLAN_EVENT, ({ detail }) => {
      const node = nodeByExecutionId(detail.node);
      if (!node || node.comfyClass !== "HyCaApply") return;
      if (!node.hycaReport) node.hycaReport = addPanel(node, "hyca_report", "Run a prompt to see what HyCa did.");
      node.hycaReport.show(planHtml(detail)); // not saved: the run's report takes its place
    });
  },

  async refreshComboInNodes() {
    refreshLoaders(app.rootGraph ?? app.graph);
  },

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name === "HyCaApply") {
      afterConfigure(nodeType, (node) => {
        const saved = node.properties?.[REPORT_PROPERTY];
        if (saved?.runs?.length) showReport(node, saved);
      });
    } else if (nodeData.name === "HyCaSolverMapLoader") {
      afterConfigure(nodeType, scheduleDetails);
    }
  },

  async nodeCreated(node) {
    if (!HYCA_NODES.has(node.comfyClass)) return;
    Object.assign(node, COLOURS); // a saved workflow's own colours are applied after this
    if (node.comfyClass === "HyCaSolverMapLoader") setUpLoader(node);
  },
});
