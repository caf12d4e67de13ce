// Drives ComfyUI's page in headless Debian chromium (playwright-core, no browser download) and checks
// what a user sees of the pack. Run by tests/test_browser.py, which starts the server; by hand:
//   node tests/browser/hyca_ui.mjs --url http://127.0.0.1:8188 --workflow prompt.json --map tiny.safetensors --out DIR
// Exit 0 and a JSON summary on stdout when every check holds; else exit 1 with the failed check.
import { chromium } from "playwright-core";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";

const { values: opts } = parseArgs({
  options: {
    url: { type: "string" }, workflow: { type: "string" }, map: { type: "string" }, out: { type: "string" },
    chromium: { type: "string", default: "/usr/bin/chromium" },
  },
});
const DISPLAY_NAMES = { HyCaApply: "HyCa Apply", HyCaSolverMapLoader: "HyCa Solver Map Loader", HyCaCalibrate: "HyCa Calibrate" };
const EXTENSION_PATH = "/extensions/ComfyUI-HyCa/";
const FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync"];

mkdirSync(opts.out, { recursive: true });
const summary = { checks: [], ours: [], expected: [], unrelated: [] };
const check = (name, ok, detail = "") => {
  summary.checks.push({ name, ok, detail });
  if (!ok) throw new Error(`${name}: ${detail}`);
};

// A fresh ComfyUI user opens the templates browser on first load and asks before leaving the page.
for (const [setting, value] of [["Comfy.TutorialCompleted", true], ["Comfy.Window.UnloadConfirmation", false]]) {
  const response = await fetch(`${opts.url}/api/settings/${setting}`, { method: "POST", body: JSON.stringify(value) });
  if (!response.ok) throw new Error(`setting ${setting}: HTTP ${response.status}`);
}

const profile = mkdtempSync(join(tmpdir(), "hyca-chromium-")); // a fresh user-data-dir every run
const context = await chromium.launchPersistentContext(profile, {
  executablePath: opts.chromium, headless: true, args: FLAGS, viewport: { width: 1600, height: 1000 },
});
const page = context.pages()[0] ?? (await context.newPage());
page.on("dialog", (dialog) => dialog.accept()); // a "leave page?" prompt must not block the reload

// Console errors and failed requests: ours (our extension's files or route) fail the test; the rest
// (a fresh user folder's missing files, the closed network) are ComfyUI's own and only reported.
// The route's 422 for the deliberately broken map is expected: the loader explains it.
const isOurs = (text) => text.includes(EXTENSION_PATH) || /hyca/i.test(text);
const isExpected = (text) => text.includes("hyca/map?name=broken.safetensors") && text.includes("422");
const record = (text) =>
  (isExpected(text) ? summary.expected : isOurs(text) ? summary.ours : summary.unrelated).push(text.slice(0, 500));
page.on("console", (m) => m.type() === "error" && record(`console: ${m.text()} @ ${m.location()?.url ?? ""}`));
page.on("pageerror", (e) => record(`pageerror: ${e.message}\n${e.stack ?? ""}`));
page.on("response", (r) => r.status() >= 400 && record(`HTTP ${r.status()} ${r.url()}`));
let extensionStatus = null;
page.on("response", (r) => r.url().includes(EXTENSION_PATH + "hyca.js") && (extensionStatus = r.status()));

async function openApp() {
  await page.goto(opts.url);
  await page.waitForFunction(() => window.app?.graph && window.LiteGraph?.registered_node_types?.HyCaApply, null,
    { timeout: 90_000 });
  await page.waitForTimeout(1000); // let the restored workflow settle
}

const panelText = (name, comfyClass) => page.evaluate(([name, comfyClass]) => {
  const node = window.app.graph._nodes.find((n) => n.comfyClass === comfyClass);
  const element = node?.widgets?.find((w) => w.name === name)?.element;  // the panel's div
  return element ? element.innerText : null;
}, [name, comfyClass]);

async function waitForPanel(name, comfyClass, words, timeout) {
  const deadline = Date.now() + timeout;
  let text = null;
  while (Date.now() < deadline) {
    text = await panelText(name, comfyClass);
    if (text && text.includes(words)) return text;
    await page.waitForTimeout(250);
  }
  throw new Error(`${comfyClass} ${name}: expected '${words}', shows ${JSON.stringify(text)}`);
}

try {
  await openApp();
  const extensions = await page.evaluate(() => window.app.extensions.map((e) => e.name));
  check("extension module served", extensionStatus === 200, `GET ${EXTENSION_PATH}hyca.js -> ${extensionStatus}`);
  check("extension registered", extensions.includes("HyCa.Frontend"), extensions.join(", "));

  // The node search (double-click on empty canvas) finds each node, and choosing it adds it.
  for (const [type, display] of Object.entries(DISPLAY_NAMES)) {
    await page.evaluate(() => { window.app.graph.clear(); window.app.canvas.setDirty(true, true); });
    const searchBox = page.getByPlaceholder("Search Nodes...");
    for (let attempt = 0; attempt < 5 && !(await searchBox.isVisible()); attempt++) {
      await page.mouse.dblclick(900, 600);
      await page.waitForTimeout(400 * (attempt + 1));
    }
    await searchBox.pressSequentially(display);
    const option = page.locator(".p-autocomplete-option", { hasText: display }).first();
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

  // A workflow with all three nodes: Calibrate -> PreviewImage (chart), Loader -> Apply -> KSampler.
  const workflow = JSON.parse(readFileSync(opts.workflow, "utf8"));
  await page.evaluate(async (workflow) => {
    window.app.graph.clear();
    await window.app.loadApiJson(workflow, "hyca-browser-test.json");
  }, workflow);
  const details = await waitForPanel("hyca_map_details", "HyCaSolverMapLoader", "flux · module", 20_000);
  check("loader shows the map's details", details.includes("intervals 2-4") && details.includes("N=3"), details);
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

  await page.evaluate(() => { // a new seed: ComfyUI would serve an identical earlier prompt from its cache
    const sampler = window.app.graph._nodes.find((n) => n.type === "KSampler");
    sampler.widgets.find((w) => w.name === "seed").value = Date.now() % 1_000_000_007;
    return window.app.queuePrompt(0, 1);
  });
  const report = await waitForPanel("hyca_report", "HyCaApply", "FLOPs bound", 180_000);
  const reportOk = /\d+ full \+ \d+ forecast/.test(report) && report.includes(opts.map) && report.includes("FF··F");
  check("report renders on HyCa Apply", reportOk, report);
  await waitForPanel("hyca_report", "HyCaApply", "sampling run 2 of this prompt", 60_000);
  const passes = await panelText("hyca_report", "HyCaApply");
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
  await page.screenshot({ path: join(opts.out, "hyca-after-reload.png") });
  check("no console errors from the pack", summary.ours.length === 0, summary.ours.join("\n"));
  summary.ok = true;
} catch (error) {
  summary.ok = false;
  summary.error = String(error?.stack ?? error);
  await page.screenshot({ path: join(opts.out, "hyca-failure.png") }).catch(() => {});
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
  writeFileSync(join(opts.out, "result.json"), JSON.stringify(summary, null, 2));
  console.log(JSON.stringify(summary, null, 2));
  process.exit(summary.ok ? 0 : 1);
}
