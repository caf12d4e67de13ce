// Drives ComfyUI's page in headless Debian chromium (playwright-core, no browser download) and checks
// what a user sees of the pack. Run by tests/test_browser.py, which starts the servers; by hand:
//   node tests/browser/hyca_ui.mjs --baseline-out base.json --url URL_WITHOUT_PACK --workflow core.json --out DIR
//   node tests/browser/hyca_ui.mjs --baseline base.json --url URL --workflow prompt.json --map tiny.safetensors \
//        --examples example_workflows --out DIR
// The first run records what ComfyUI's page prints by itself (no pack); the second fails on any console
// error or warning that the baseline lacks, unless it is listed in EXPECTED with its reason.
// Exit 0 and a JSON summary (DIR/result.json) when every check holds; else exit 1 with the failed check.
import { chromium } from "playwright-core";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";

const { values: opts } = parseArgs({
  options: {
    url: { type: "string" }, workflow: { type: "string" }, map: { type: "string" }, out: { type: "string" },
    examples: { type: "string" }, baseline: { type: "string" }, "baseline-out": { type: "string" },
    chromium: { type: "string", default: "/usr/bin/chromium" },
  },
});
const DISPLAY_NAMES = { HyCaApply: "HyCa Apply", HyCaSolverMapLoader: "HyCa Solver Map Loader", HyCaCalibrate: "HyCa Calibrate" };
const EXTENSION_PATH = "/extensions/ComfyUI-HyCa/";
const FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync"];
const PANEL_MAX = 320; // web/hyca.js: longer panels scroll
// With the pack, and not in the baseline, but not the pack's doing:
const EXPECTED = [
  // the loader explains the deliberately broken map it is shown; the browser logs the route's 422
  [/hyca\/map\?name=broken\.safetensors/, "the route refuses the test's broken map (422), as it should"],
];

mkdirSync(opts.out, { recursive: true });
const summary = { checks: [], new: [], expected: [], seen: [], skipped: [] };
const check = (name, ok, detail = "") => {
  summary.checks.push({ name, ok, detail });
  if (!ok) throw new Error(`${name}: ${detail}`);
};

// Messages are compared without what changes from run to run: the port, line:column, ids, numbers.
const normalise = (text) => text.split("\n")[0]
  .replace(/https?:\/\/127\.0\.0\.1:\d+/g, "SERVER").replace(/:\d+:\d+/g, "").replace(/\d+/g, "N").slice(0, 300);
const baseline = new Set(opts.baseline ? JSON.parse(readFileSync(opts.baseline, "utf8")) : []);
const record = (text) => {
  const key = normalise(text);
  summary.seen.push(key);
  if (opts["baseline-out"] || baseline.has(key)) return;
  const reason = EXPECTED.find(([pattern]) => pattern.test(text));
  (reason ? summary.expected : summary.new).push(reason ? `${text.slice(0, 300)} (${reason[1]})` : text.slice(0, 800));
};

async function setSetting(id, value) {
  const response = await fetch(`${opts.url}/api/settings/${id}`, { method: "POST", body: JSON.stringify(value) });
  if (!response.ok) throw new Error(`setting ${id}: HTTP ${response.status}`);
}
// A fresh ComfyUI user gets the templates browser on first load and is asked before leaving the page.
await setSetting("Comfy.TutorialCompleted", true);
await setSetting("Comfy.Window.UnloadConfirmation", false);
await setSetting("Comfy.VueNodes.Enabled", false);

const profile = mkdtempSync(join(tmpdir(), "hyca-chromium-")); // a fresh user-data-dir every run
const context = await chromium.launchPersistentContext(profile, {
  executablePath: opts.chromium, headless: true, args: FLAGS, viewport: { width: 1600, height: 1000 },
});
const page = context.pages()[0] ?? (await context.newPage());
page.on("dialog", (dialog) => dialog.accept()); // a "leave page?" prompt must not block the reload
page.on("console", (m) => ["error", "warning"].includes(m.type()) &&
  record(`${m.type()}: ${m.text()} @ ${m.location()?.url ?? ""}`));
page.on("pageerror", (e) => record(`pageerror: ${e.message}`));
page.on("response", (r) => r.status() >= 400 && record(`HTTP ${r.status()} ${r.url()}`));
let extensionStatus = null;
page.on("response", (r) => r.url().includes(EXTENSION_PATH + "hyca.js") && (extensionStatus = r.status()));
const thumbnails = new Map(); // template card url -> status
page.on("response", (r) => /\/workflow_templates\/ComfyUI-HyCa\/.*\.jpg$/.test(decodeURIComponent(r.url())) &&
  thumbnails.set(decodeURIComponent(r.url()), r.status()));

async function openApp(nodeType = "HyCaApply") {
  await page.goto(opts.url);
  await page.waitForFunction((t) => window.app?.graph && window.LiteGraph?.registered_node_types?.[t], nodeType,
    { timeout: 90_000 });
  await page.waitForTimeout(1500); // let the restored workflow settle
}

const panelBox = (name, comfyClass) => page.evaluate(([name, comfyClass]) => {
  const node = window.app.graph._nodes.find((n) => n.comfyClass === comfyClass);
  const element = node?.widgets?.find((w) => w.name === name)?.element;  // the panel's div
  if (!element) return null;
  const box = element.getBoundingClientRect();
  return { text: element.innerText, height: box.height, scale: window.app.canvas.ds.scale,
    scrolls: element.scrollHeight > element.clientHeight + 1 };
}, [name, comfyClass]);

async function waitForPanel(name, comfyClass, words, timeout) {
  const deadline = Date.now() + timeout;
  let box = null;
  while (Date.now() < deadline) {
    box = await panelBox(name, comfyClass);
    if (box?.text?.includes(words)) return box.text;
    await page.waitForTimeout(250);
  }
  throw new Error(`${comfyClass} ${name}: expected '${words}', shows ${JSON.stringify(box?.text)}`);
}

async function queueWithNewSeed() { // a new seed: ComfyUI serves an identical earlier prompt from its cache
  await page.evaluate(() => {
    for (const sampler of window.app.graph._nodes.filter((n) => n.type === "KSampler")) {
      sampler.widgets.find((w) => w.name === "seed").value = Date.now() % 1_000_000_007;
    }
    return window.app.queuePrompt(0, 1);
  });
}

async function openTemplates() {
  await page.evaluate(() => window.app.extensionManager.command.execute("Comfy.BrowseTemplates"));
  const category = page.getByText("ComfyUI-HyCa", { exact: true }).first();
  await category.waitFor({ timeout: 20_000 });
  await category.click();
  await page.waitForTimeout(2500);
}

// -- the baseline: ComfyUI's page by itself, doing what the full run does apart from the pack ----------
async function baselineRun() {
  await openApp("HyCaTestModel");
  const workflow = JSON.parse(readFileSync(opts.workflow, "utf8"));
  await page.evaluate(async (workflow) => {
    window.app.graph.clear();
    await window.app.loadApiJson(workflow, "baseline.json");
  }, workflow);
  await queueWithNewSeed();
  await page.waitForFunction(() => window.app.graph._nodes.some((n) => n.type === "PreviewImage" && n.imgs?.length) ||
    !window.app.graph._nodes.some((n) => n.type === "PreviewImage"), null, { timeout: 120_000 });
  await page.waitForTimeout(3000);
  await openTemplates().catch(() => {}); // no pack: the category is absent, the dialog still opens
  await page.keyboard.press("Escape");
  await setSetting("Comfy.VueNodes.Enabled", true);
  await openApp("HyCaTestModel");
  await setSetting("Comfy.VueNodes.Enabled", false);
  await openApp("HyCaTestModel");
  writeFileSync(opts["baseline-out"], JSON.stringify([...new Set(summary.seen)].sort(), null, 1));
  summary.ok = true;
}

// -- the full run ----------------------------------------------------------------------------------------
async function searchAddsEachNode() {
  // The node search (double-click on empty canvas) finds each node, and choosing it adds it.
  for (const [type, display] of Object.entries(DISPLAY_NAMES)) {
    await page.evaluate(() => { window.app.graph.clear(); window.app.canvas.setDirty(true, true); });
    // frontend 1.27: a PrimeVue autocomplete "Search Nodes..."; 1.58: a dialog "Add a node..." with options
    const searchBox = page.locator('input[placeholder="Search Nodes..."], input[placeholder="Add a node..."]').first();
    for (let attempt = 0; attempt < 5 && !(await searchBox.isVisible()); attempt++) {
      await page.mouse.dblclick(900, 600);
      await page.waitForTimeout(400 * (attempt + 1));
    }
    await searchBox.pressSequentially(display);
    const option = page.locator(".p-autocomplete-option, [role=option]", { hasText: display }).first();
    await option.waitFor({ timeout: 10_000 });
    const optionText = await option.innerText();
    await option.click();
    await searchBox.waitFor({ state: "hidden" });
    const added = await page.evaluate(() => window.app.graph._nodes.map((n) => [n.comfyClass, n.color]));
    check(`search finds and adds ${display}`, added.length === 1 && added[0][0] === type,
      `option '${optionText.replace(/\n/g, " / ")}' added ${JSON.stringify(added)}`);
    check(`${display} has the pack colour`, added[0][1] === "#2a4858", String(added[0][1]));
    if (type === "HyCaSolverMapLoader") { // its first map (alphabetically) is the broken one
      const text = await waitForPanel("hyca_map_details", type, "is unusable", 20_000);
      check("loader explains a broken map", text.includes("broken.safetensors"), text);
    }
  }
}

async function loaderPicksUpNewMapsOnRefresh() {
  // A loader added while its list held nothing useful keeps no value; after R it shows the first map.
  const state = await page.evaluate(async () => {
    window.app.graph.clear();
    const node = window.LiteGraph.createNode("HyCaSolverMapLoader");
    window.app.graph.add(node);
    const combo = node.widgets.find((w) => w.name === "map_name");
    combo.value = undefined; // as the frontend leaves it when the list was empty at creation
    await window.app.refreshComboInNodes();
    return { value: combo.value, first: combo.options.values[0] };
  });
  check("R gives a value-less loader the first listed map", state.value === state.first && !!state.first,
    JSON.stringify(state));
  const text = await waitForPanel("hyca_map_details", "HyCaSolverMapLoader", state.first, 20_000);
  check("R refreshes the loader's details", !text.includes("No maps yet"), text);
}

async function workflowDetailsReportAndReload() {
  // A workflow with all three nodes: Calibrate -> PreviewImage (chart), Loader -> Apply -> KSampler.
  const asked = [];
  const onRequest = (r) => r.url().includes("/hyca/map?") && asked.push(decodeURIComponent(r.url().split("name=")[1]));
  page.on("request", onRequest);
  const workflow = JSON.parse(readFileSync(opts.workflow, "utf8"));
  await page.evaluate(async (workflow) => {
    window.app.graph.clear();
    await window.app.loadApiJson(workflow, "hyca-browser-test.json");
  }, workflow);
  const details = await waitForPanel("hyca_map_details", "HyCaSolverMapLoader", "flux · module", 20_000);
  page.off("request", onRequest);
  check("loader shows the map's details", details.includes("intervals 2-4") && details.includes("N=3"), details);
  check("loading a workflow asks only for the saved map", JSON.stringify(asked) === JSON.stringify([opts.map]),
    JSON.stringify(asked));
  const chart = await page.evaluate(async () => { // the details' chart link serves a PNG
    const node = window.app.graph._nodes.find((n) => n.comfyClass === "HyCaSolverMapLoader");
    const href = node.widgets.find((w) => w.name === "hyca_map_details").element.querySelector("a.hyca-link")?.href;
    const response = href && (await fetch(href));
    return { href, status: response?.status, type: response?.headers.get("content-type") };
  });
  check("loader links the map's calibration chart", chart.status === 200 && chart.type === "image/png",
    JSON.stringify(chart));
  const saved = await page.evaluate(() => {
    const node = window.app.graph.serialize().nodes.find((n) => n.type === "HyCaSolverMapLoader");
    return node.widgets_values;
  });
  check("details panel is not saved as a widget value", JSON.stringify(saved) === JSON.stringify([opts.map]),
    JSON.stringify(saved));

  await queueWithNewSeed();
  const report = await waitForPanel("hyca_report", "HyCaApply", "FLOPs bound", 180_000);
  // the page's HyCa Apply runs its widget defaults: the spread schedule, 6 full steps of 12
  const reportOk = /\d+ full \+ \d+ forecast/.test(report) && report.includes(opts.map) &&
    report.includes("spread, 6 full") && report.includes("F··F··F·F·FF");
  check("report renders on HyCa Apply", reportOk, report);
  await waitForPanel("hyca_report", "HyCaApply", "sampling run 2 of this prompt", 60_000);
  const passes = (await panelBox("hyca_report", "HyCaApply")).text;
  check("both sampling passes of the prompt are shown", passes.includes("sampling run 1 of this prompt"), passes);
  await page.waitForFunction(() => window.app.graph._nodes.some((n) => n.type === "PreviewImage" && n.imgs?.length),
    null, { timeout: 60_000 });
  await page.evaluate(() => {
    window.app.graph.arrange?.(60);
    const canvas = window.app.canvas;
    canvas.ds.scale = 0.62;
    canvas.ds.offset = [30, 40];
    canvas.setDirty(true, true);
  });
  await page.waitForTimeout(1500);
  await page.screenshot({ path: join(opts.out, "hyca-workflow.png") });

  // The last report survives a reload (saved in the node's properties, restored with the workflow).
  await page.waitForTimeout(1500); // the frontend stores the open workflow on change
  await openApp();
  const restored = await waitForPanel("hyca_report", "HyCaApply", "FLOPs bound", 20_000);
  check("report is back after a reload", restored === passes, restored);
  return passes;
}

async function panelsScrollWithVueNodes(passes) {
  // "Nodes 2.0": the panels are drawn by Vue components; long contents must scroll, not grow.
  await setSetting("Comfy.VueNodes.Enabled", true);
  await openApp();
  const restored = await waitForPanel("hyca_report", "HyCaApply", "FLOPs bound", 20_000);
  const words = (text) => text.replace(/\s+/g, ""); // Vue nodes lay the same text out differently
  check("report is back with Vue nodes", words(restored) === words(passes), restored);
  await waitForPanel("hyca_map_details", "HyCaSolverMapLoader", "flux · module", 20_000);
  await page.waitForTimeout(1000);
  for (const [name, type] of [["hyca_report", "HyCaApply"], ["hyca_map_details", "HyCaSolverMapLoader"]]) {
    const box = await panelBox(name, type);
    check(`${type} panel stays within ${PANEL_MAX} px with Vue nodes`, box.height <= (PANEL_MAX + 1) * box.scale,
      JSON.stringify({ height: box.height, scale: box.scale, scrolls: box.scrolls }));
  }
  await page.screenshot({ path: join(opts.out, "hyca-vue-nodes.png") });
  await setSetting("Comfy.VueNodes.Enabled", false);
}

async function exampleWorkflowsLoad() {
  const files = readdirSync(opts.examples).filter((f) => f.endsWith(".json")).sort();
  for (const file of files) {
    const workflow = JSON.parse(readFileSync(join(opts.examples, file), "utf8"));
    const requires = workflow.extra?.hyca_requires;
    const lacking = await page.evaluate((nodes) => nodes.filter((n) => !window.LiteGraph.registered_node_types[n]),
      requires?.nodes ?? []);
    if (lacking.length) { // declared: needs a newer ComfyUI than this server
      summary.skipped.push(`${file}: needs ComfyUI ${requires.comfyui} (${lacking.join(", ")})`);
      continue;
    }
    const result = await page.evaluate(async ([workflow, file]) => {
      await window.app.loadGraphData(workflow, true, true, file);
      await new Promise((resolve) => setTimeout(resolve, 1500)); // panels mount and size their nodes
      const nodes = window.app.graph._nodes;
      const missing = nodes.filter((n) => !window.LiteGraph.registered_node_types[n.type]).map((n) => n.type);
      const box = (n) => { // as drawn: title bar above pos, size below it
        const r = n.boundingRect ?? n.getBounding?.();
        return [r[0], r[1], r[0] + r[2], r[1] + r[3]];
      };
      const overlaps = [];
      for (let i = 0; i < nodes.length; i++) {
        for (let j = i + 1; j < nodes.length; j++) {
          const [a, b] = [box(nodes[i]), box(nodes[j])];
          if (a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3]) {
            overlaps.push(`${nodes[i].type} ${JSON.stringify(a.map(Math.round))} x ${nodes[j].type} ${JSON.stringify(b.map(Math.round))}`);
          }
        }
      }
      const note = nodes.find((n) => n.type === "MarkdownNote");
      return { count: nodes.length, missing, overlaps, note: note ? !note.flags?.collapsed : null,
        types: nodes.map((n) => n.type) };
    }, [workflow, file]);
    check(`${file}: every node type exists`, result.count === workflow.nodes.length && result.missing.length === 0,
      JSON.stringify(result.missing));
    check(`${file}: no nodes overlap as drawn`, result.overlaps.length === 0, result.overlaps.join("; "));
    if (file.includes("2 sample")) check(`${file}: the note is shown`, result.note === true, String(result.note));
    await page.screenshot({ path: join(opts.out, `example ${file.replace(/\.json$/, "")}.png`) });
  }
  return files;
}

async function templateBrowserShowsTheCards(files) {
  await page.evaluate(() => window.app.graph.clear());
  await openTemplates();
  const titles = files.map((f) => f.replace(/\.json$/, ""));
  await page.waitForTimeout(1500);
  const text = await page.evaluate(() => document.body.innerText);
  // titles may be cut with an ellipsis: the part before "with"/"a solver" must show
  const shown = titles.filter((t) => text.includes(t.slice(0, 30)));
  check("template browser lists every workflow by its title", shown.length === titles.length,
    `shown ${JSON.stringify(shown)}`);
  for (const title of titles) { // cards load their image when scrolled into view
    const card = page.locator("[role=dialog]").getByText(title.slice(0, 30)).first(); // not the workflow tab
    await card.scrollIntoViewIfNeeded().catch(() => {});
    await page.waitForTimeout(400);
  }
  const served = titles.filter((t) => [...thumbnails].some(([url, status]) => url.endsWith(`/${t}.jpg`) && status === 200));
  check("template browser loads every thumbnail", served.length === titles.length,
    JSON.stringify([...thumbnails]));
  await page.screenshot({ path: join(opts.out, "hyca-templates.png") });
  await page.keyboard.press("Escape");
}

async function fullRun() {
  await openApp();
  const extensions = await page.evaluate(() => window.app.extensions.map((e) => e.name));
  check("extension module served", extensionStatus === 200, `GET ${EXTENSION_PATH}hyca.js -> ${extensionStatus}`);
  check("extension registered", extensions.includes("HyCa.Frontend"), extensions.join(", "));
  await searchAddsEachNode();
  await loaderPicksUpNewMapsOnRefresh();
  const passes = await workflowDetailsReportAndReload();
  await panelsScrollWithVueNodes(passes);
  await openApp();
  const files = await exampleWorkflowsLoad();
  await templateBrowserShowsTheCards(files);
  await page.waitForTimeout(1000);
  check("no console errors or warnings that ComfyUI's page lacks without the pack", summary.new.length === 0,
    summary.new.join("\n"));
  summary.ok = true;
}

try {
  await (opts["baseline-out"] ? baselineRun() : fullRun());
} catch (error) {
  summary.ok = false;
  summary.error = String(error?.stack ?? error);
  await page.screenshot({ path: join(opts.out, "hyca-failure.png") }).catch(() => {});
} finally {
  await setSetting("Comfy.VueNodes.Enabled", false).catch(() => {});
  await context.close();
  rmSync(profile, { recursive: true, force: true });
  delete summary.seen;
  writeFileSync(join(opts.out, opts["baseline-out"] ? "baseline-result.json" : "result.json"), JSON.stringify(summary, null, 2));
  console.log(JSON.stringify(summary, null, 2));
  process.exit(summary.ok ? 0 : 1);
}
