// ComfyUI-HyCa: the HTML of the run report and of a map's details, from the server's JSON. Pure
// functions without side effects (ComfyUI loads every .js file in web/ as an extension module), so
// tests/web/render.test.mjs checks them with Node's own test runner.

export const esc = (value) =>
  String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

export function mib(bytes) {
  return bytes >= 2 ** 30 ? `${(bytes / 2 ** 30).toFixed(2)} GiB` : `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

export function ranges(numbers) {
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

// -- HyCa Apply: run report ----------------------------------------------------------------------
export function reportHtml(r) {
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
  const schedule = r.schedule === "spread" ? `spread, ${r.full_steps} full`
    : r.schedule === "calibrated" ? `calibrated placement, ${r.full_steps} full`
    : `N=${r.interval} · warm-up ${r.warmup} · cooldown ${r.cooldown}`;
  lines.push(`<div class="hyca-dim">${source} · ${schedule} · ${esc(r.granularity)}${fellBack}</div>`);
  if (r.memory) lines.push(memoryHtml(r));
  for (const note of r.notes || []) lines.push(`<div class="hyca-warn">⚠ ${esc(note)}</div>`);
  lines.push(`<div class="hyca-dim">last run ${esc(when)}</div>`);
  return lines.join("");
}

// While a run samples: what HyCa decided about its anchors before the first step.
export function planHtml(p) {
  const m = p.memory;
  const lines = [`<div class="hyca-head">sampling · ${esc(p.used_granularity)} granularity</div>`];
  if (m) {
    const budget = m.budget_bytes != null ? ` of a ${mib(m.budget_bytes)} budget (${esc(m.budget)})` : "";
    lines.push(`<div class="hyca-dim">anchors: estimated ${mib(m.estimated_bytes)}${m.exact ? "" : " (approximate)"}` +
      `${budget} · ${esc(m.device)}</div>`);
  }
  for (const note of p.notes || []) lines.push(`<div class="hyca-warn">⚠ ${esc(note)}</div>`);
  return lines.join("");
}

// The anchors' estimate made before the first step, beside what the run held, and the budget.
export function memoryHtml(r) {
  const m = r.memory;
  const held = r.conds.reduce((sum, c) => sum + (c.peak_cache_bytes || 0), 0);
  const over = m.budget_bytes != null && m.estimated_bytes > m.budget_bytes;
  const budget = m.budget_bytes != null ? ` of ${mib(m.budget_bytes)} (${esc(m.budget)})` : "";
  const approx = m.exact ? "" : " (approximate)";
  return `<div class="${over ? "hyca-warn" : "hyca-dim"}" title="estimated before the first step from the latent, ` +
    `the prompts and the granularity; held: what the anchors took">anchors: estimated ${mib(m.estimated_bytes)}` +
    `${approx}${budget} · held ${mib(held)} · ${esc(m.device)}</div>`;
}

// "FFF··F···" as coloured runs; very long runs (video, many steps) are cut with a count.
export const TIMELINE_MAX = 160;
export function timelineHtml(timeline) {
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
export const MAX_RUNS = 4;

export function withRun(saved, report) {
  const runs = saved?.prompt_id && saved.prompt_id === report.prompt_id ? saved.runs ?? [] : [];
  return { prompt_id: report.prompt_id, runs: [...runs, report].slice(-MAX_RUNS) };
}



// Every run of a saved report, one block each; a run this version cannot read says so.
export function reportRunsHtml(saved) {
  const runs = saved?.runs ?? [];
  const block = (run) => {
    try {
      return reportHtml(run);
    } catch { // e.g. a workflow saved by another version of the pack
      return `<div class="hyca-dim">a report this version cannot read (format ${esc(run?.format)})</div>`;
    }
  };
  return runs.map((run, i) => (runs.length > 1 ?
    `<div class="hyca-dim" style="margin-top:${i ? 4 : 0}px">sampling run ${i + 1} of this prompt</div>` : "") +
    block(run)).join("");
}

// -- HyCa Solver Map Loader: map details ---------------------------------------------------------
export function detailsHtml(d, chartUrl = null) {
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
  if (d.scopes_not_listed > 0) {
    lines.push(`<div class="hyca-dim">+${d.scopes_not_listed} more scopes (python -m hyca_core.maps info lists all)</div>`);
  }
  const checked = (d.verified || []).map((e) =>
    `N=${e.interval} ${e.kept === "map" ? "map" : `uniform ${esc(e.kept)}`} ${e.gain_db >= 0 ? "+" : ""}${Number(e.gain_db).toFixed(2)} dB`);
  if (checked.length) {
    lines.push(`<div>closed-loop check: ${checked.join(" · ")} <span class="hyca-dim">over uniform ${esc(d.verified_over || "taylor1")}, ` +
      `held-out seeds</span></div>`);
  }
  for (const key of ["author", "description", "license"]) {
    if (d[key]) lines.push(`<div><span class="hyca-dim">${key}</span> ${esc(d[key])}</div>`);
  }
  if (calibrated) lines.push(`<div class="hyca-dim">calibrated: ${calibrated}</div>`);
  if (chartUrl) lines.push(`<div><a class="hyca-link" href="${esc(chartUrl)}" target="_blank" rel="noopener">` +
    `calibration chart ↗</a> <span class="hyca-dim">each solver's error against N, per cluster</span></div>`);
  return lines.join("");
}
