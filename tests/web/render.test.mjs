// The frontend's HTML from the server's JSON (web/hyca_render.js), run by tests/test_web_render.py
// with fixtures the Python side wrote (HYCA_FIXTURES): the JSON contract between the two is real.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

import {
  MAX_RUNS, TIMELINE_MAX, detailsHtml, esc, planHtml, ranges, reportHtml, reportRunsHtml, timelineHtml, withRun,
} from "../../web/hyca_render.js";

const fixture = (name) => JSON.parse(readFileSync(join(process.env.HYCA_FIXTURES, name), "utf8"));
const text = (html) => html.replace(/<[^>]+>/g, "");

test("escapes what a shared map or a report could smuggle in", () => {
  assert.equal(esc(`<img src=x onerror="alert(1)">&'`), "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp;&#39;");
  const details = detailsHtml(fixture("details-hostile.json"));
  assert.ok(!details.includes("<img"), details);
  assert.ok(details.includes("&lt;img src=x onerror=alert(1)&gt;"));
});

test("the closed-loop check shows per interval what the map keeps and gains", () => {
  const shown = text(detailsHtml(fixture("details-checked.json")));
  assert.ok(shown.includes("closed-loop check: N=2 map +1.50 dB · N=3 uniform hermite +0.25 dB over uniform hermite1"),
    shown);
  assert.ok(!text(detailsHtml(fixture("details-hostile.json"))).includes("closed-loop check"));
});

test("intervals read as ranges", () => {
  assert.equal(ranges([2, 3, 4, 6, 8, 9]), "2-4, 6, 8-9");
  assert.equal(ranges([5]), "5");
});

test("the timeline groups runs and cuts long ones with a count", () => {
  assert.equal(timelineHtml("FF··F!"),
    '<span class="hyca-full">FF</span><span class="hyca-dim">··</span><span class="hyca-full">F</span>' +
    '<span class="hyca-warn">!</span>');
  const long = "F" + "·".repeat(TIMELINE_MAX + 9);
  assert.ok(text(timelineHtml(long)).endsWith(" +10"));
});

test("a report shows totals, every cond, the schedule and the diagnoses", () => {
  const report = fixture("report.json");
  const shown = text(reportHtml(report));
  assert.ok(shown.startsWith("3.33× FLOPs bound · 18 full + 42 forecast · 2.5 s"), shown);
  assert.ok(shown.includes("positive: 8 full + 22 forecast (3.75×) · cache 0.0 MiB"), shown);
  assert.ok(shown.includes("negative: 10 full + 20 forecast (3.00×) · cache 0.0 MiB · 2 recomputed"), shown);
  assert.ok(shown.includes("map flux-dev.safetensors · N=4 · warm-up 3 · cooldown 1 · module → block"), shown);
  assert.ok(shown.includes("⚠ negative: 2 forecast step(s) gave NaN/inf"), shown);
  assert.ok(!shown.includes("(done)"));
  assert.ok(text(reportHtml({ ...report, status: "interrupted" })).includes("(interrupted)"));
});

test("a report shows the anchors' estimate beside what was held, flagged over the budget", () => {
  const shown = text(reportHtml(fixture("report-memory.json")));
  assert.ok(shown.includes("anchors: estimated 3.00 GiB of 2.00 GiB (max_cache_gb 2) · held 3.00 GiB · cpu"), shown);
  assert.ok(reportHtml(fixture("report-memory.json")).includes('<div class="hyca-warn" title="estimated'));
  assert.ok(!text(reportHtml(fixture("report.json"))).includes("anchors:"));
});

test("while sampling the node shows the anchors' plan and its notes, escaped", () => {
  const shown = text(planHtml(fixture("plan.json")));
  assert.ok(shown.startsWith("sampling · block granularity"), shown);
  assert.ok(shown.includes("anchors: estimated 3.00 GiB of a 2.00 GiB budget (max_cache_gb 2) · cpu"), shown);
  assert.ok(shown.includes("⚠ HyCa: granularity auto: block"), shown);
  assert.ok(!planHtml(fixture("plan.json")).includes("<b>"));
});

test("runs of one prompt accumulate, a new prompt starts over", () => {
  const run = (prompt_id, n) => ({ ...fixture("report.json"), prompt_id, full: n });
  let saved = withRun(undefined, run("p1", 1));
  saved = withRun(saved, run("p1", 2));
  assert.deepEqual(saved.runs.map((r) => r.full), [1, 2]);
  assert.ok(text(reportRunsHtml(saved)).includes("sampling run 2 of this prompt"));
  for (let n = 3; n < 10; n++) saved = withRun(saved, run("p1", n));
  assert.equal(saved.runs.length, MAX_RUNS);
  assert.deepEqual(withRun(saved, run("p2", 42)).runs.map((r) => r.full), [42]);
  assert.equal(withRun(withRun(undefined, run(null, 1)), run(null, 2)).runs.length, 1); // no prompt id: no grouping
});

test("a run this version cannot read is named, not thrown", () => {
  const html = reportRunsHtml({ prompt_id: "p", runs: [{ format: 99 }] });
  assert.ok(text(html).includes("a report this version cannot read (format 99)"));
});

test("map details: header, scopes with each cluster's solver, provenance", () => {
  const d = fixture("details.json");
  const shown = text(detailsHtml(d));
  assert.ok(shown.startsWith(`flux · module · fitted weights`), shown);
  assert.ok(shown.includes("intervals 2-4 · warm-up 3"), shown);
  for (const scope of d.scopes) {
    assert.ok(shown.includes(`${scope.name} ${scope.channels} ch, clusters ${scope.cluster_sizes.join("/")}`), shown);
    for (const row of scope.intervals) assert.ok(shown.includes(`N=${row.interval}${row.solvers.join(" · ")}`), shown);
  }
  assert.ok(shown.includes("author tests") && shown.includes("license CC0-1.0"), shown);
  assert.ok(shown.includes("calibrated: 16 steps · euler/simple · 1 run(s)"), shown);
  assert.ok(!shown.includes("calibration chart"));
  const linked = detailsHtml(d, "/api/hyca/map/chart?name=a%20b.safetensors&x=<y>");
  assert.ok(linked.includes('href="/api/hyca/map/chart?name=a%20b.safetensors&amp;x=&lt;y&gt;"'), linked);
});

test("per-channel maps list solver counts", () => {
  const d = fixture("details-per-channel.json");
  const shown = text(detailsHtml(d));
  const counts = Object.entries(d.scopes[0].intervals[0].solver_counts).map(([k, v]) => `${k}×${v}`).join(" ");
  assert.ok(shown.includes(counts), shown);
});

test("a map of more scopes than a page shows counts the rest", () => {
  const d = fixture("details-few-listed.json");
  assert.equal(d.scopes.length, 1);
  const shown = text(detailsHtml(d));
  assert.ok(shown.includes(`+${d.scopes_not_listed} more scopes`), shown);
  assert.ok(d.scopes_not_listed > 0 && !text(detailsHtml(fixture("details.json"))).includes("more scopes"));
});
