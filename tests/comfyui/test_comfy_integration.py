"""HyCa inside a real ComfyUI: tiny random-weight FLUX, Qwen-Image and HunyuanVideo models built
with ComfyUI's own classes, sampled with ``comfy.sample.sample`` on the CPU.

Skipped with the reason when no ComfyUI is found (set COMFYUI_PATH; see README).
"""

import importlib
import logging

import pytest
import torch
from comfy_env import build, conditioning, latent, require_comfyui
from support import load_pack

require_comfyui()

import comfy.model_management  # noqa: E402
import comfy.sample  # noqa: E402

pack = load_pack()
apply_node = importlib.import_module("comfyui_hyca.nodes.apply")
loader_node = importlib.import_module("comfyui_hyca.nodes.loader")
calibrate_node = importlib.import_module("comfyui_hyca.nodes.calibrate")
families = importlib.import_module("comfyui_hyca.hyca_core.model.families")
patch = importlib.import_module("comfyui_hyca.nodes.patch")
map_folder = importlib.import_module("comfyui_hyca.nodes.map_folder")
solver_map_mod = importlib.import_module("comfyui_hyca.hyca_core.maps")

FAMILIES = ["flux", "qwen_image", "hunyuan_video", "wan", "chroma"]
STEPS = 16


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def setup(family):
    model = build(family)
    return dict(family=family, model=model, pos=conditioning(family, 1), neg=conditioning(family, 2),
                latent=latent(family))


def sample(model, s, steps=STEPS, sampler="euler", cfg=2.0, seed=0, lat=None, callback=None):
    lat = s["latent"] if lat is None else lat
    noise = comfy.sample.prepare_noise(lat, seed)
    return comfy.sample.sample(model, noise, steps, cfg, sampler, "simple", s["pos"], s["neg"], lat, seed=seed,
                               disable_pbar=True, callback=callback)


def hyca(model, interval=4, warmup=3, granularity="module", solver_map=None, enabled=True, cooldown=0,
         start=0.0, end=1.0, cache_device="auto"):
    out = apply_node.HyCaApply.execute(model, interval, warmup, cooldown, start, end, granularity, cache_device,
                                       enabled, solver_map=solver_map)
    return out.result[0]


@pytest.fixture(scope="module")
def reference(setup):
    return sample(setup["model"], setup)


def reports(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "hyca" and "evaluations" in r.getMessage()]


# -- identity -------------------------------------------------------------------------------------
def test_disabled_returns_the_model_unchanged(setup, reference):
    model = hyca(setup["model"], enabled=False)
    assert model is setup["model"]
    assert torch.equal(sample(model, setup), reference)


@pytest.mark.parametrize("granularity", families.GRANULARITIES)
def test_interval_one_is_bit_identical(setup, reference, granularity):
    assert torch.equal(sample(hyca(setup["model"], interval=1, granularity=granularity), setup), reference)


@pytest.mark.parametrize("granularity", families.GRANULARITIES)
def test_full_steps_reproduce_the_uncached_model(setup, granularity):
    def denoised(model):
        seen = []
        sample(model, setup, callback=lambda step, x0, x, total: seen.append(x0.clone()))
        return seen

    plain = denoised(setup["model"])
    cached = denoised(hyca(setup["model"], interval=4, warmup=3, granularity=granularity))
    for step in range(3):  # warm-up: every evaluation full, nothing predicted yet
        assert torch.equal(plain[step], cached[step]), step
    assert not torch.equal(plain[4], cached[4])  # step 3 was predicted: the trajectory moved


@pytest.mark.parametrize("granularity", families.GRANULARITIES)
def test_predictions_stay_close_to_the_uncached_output(setup, reference, granularity):
    out = sample(hyca(setup["model"], interval=3, granularity=granularity), setup)
    snr = 10 * torch.log10(reference.var() / (out - reference).pow(2).mean())
    assert torch.isfinite(out).all() and snr > 10, float(snr)


# -- skipping -------------------------------------------------------------------------------------
def heavy_modules(diffusion_model):
    """Modules that only attention/MLP computation runs (QKV projections, MLPs, fused linears)."""
    names = ("img_attn.qkv", "txt_attn.qkv", "img_mlp", "txt_mlp", "linear1", "attn.to_q", "attn.add_q_proj",
             "self_attn.q", "cross_attn.q", "ffn")  # FLUX, HunyuanVideo, Chroma; Qwen-Image; Wan
    modules = [m for n, m in diffusion_model.named_modules() if any(n.endswith(x) for x in names)]
    assert modules, f"no attention or MLP module found in {type(diffusion_model).__name__}"
    return modules


@pytest.mark.parametrize("granularity", families.GRANULARITIES)
def test_predicted_steps_skip_attention_and_mlp(setup, granularity, caplog):
    model = hyca(setup["model"], interval=4, warmup=3, granularity=granularity)
    modules = heavy_modules(model.model.diffusion_model)
    calls = []
    handles = [m.register_forward_hook(lambda *a: calls.append(1)) for m in modules]
    try:
        with caplog.at_level(logging.INFO, logger="hyca"):
            sample(model, setup)
    finally:
        for h in handles:
            h.remove()
    schedule = patch.Schedule(interval=4, warmup=3)
    full = len(schedule.full_steps(STEPS))
    assert len(calls) == full * len(modules)  # cond and uncond batched in one call per step
    (line,) = reports(caplog)
    assert f"{full} full + {STEPS - full} predicted" in line and "FLOPs bound" in line and "peak cache" in line
    assert f", {granularity}]" in line  # no fall-back: the module self-check passed


# -- gates computed ahead (issue 14) ---------------------------------------------------------------
def modulation_modules(diffusion_model):
    """The blocks' own modulation modules (FLUX.1 / HunyuanVideo / Qwen-Image); Chroma's blocks get
    theirs in the vec and Wan's is a parameter added to it: nothing to call."""
    return [m for n, m in diffusion_model.named_modules()
            if n.rsplit(".", 1)[-1] in ("img_mod", "txt_mod", "modulation") and isinstance(m, torch.nn.Module)
            and n.count(".") == 2 and n.startswith(("double_blocks.", "single_blocks.", "transformer_blocks."))]


@pytest.mark.parametrize("sampler, streamed", [("euler", False), ("heun", False), ("euler", True)])
def test_forecasts_use_gates_computed_ahead_and_read_no_modulation(setup, browser, monkeypatch, sampler, streamed):
    """Through ComfyUI's own classes, timesteps and conds: every forecast finds gates computed on the
    full step before (the vec paths give the model's vec), no forecast runs a modulation module, and
    the images are those of gates computed on the step. Heun evaluates twice per step, at sigma_i and
    sigma_i+1: both are steps, so the plan serves both. With weights ComfyUI streams (simulated: the
    CPU has nowhere to stream from) the plan rides along with each block's own modulation call."""
    modules = modulation_modules(setup["model"].model.diffusion_model)
    session = importlib.import_module("comfyui_hyca.hyca_core.model.session")
    blocks = importlib.import_module("comfyui_hyca.hyca_core.model.blocks")
    monkeypatch.setattr(blocks, "weights_streamed", lambda module, device: streamed)
    prepare, evaluations, calls = session.RunState.prepare, [], []

    def noting(self, ctx, *args):  # which kind of evaluation the modulation modules run in
        evaluations.append("full" if ctx.full else "forecast")
        return prepare(self, ctx, *args)
    monkeypatch.setattr(session.RunState, "prepare", noting)
    handles = [m.register_forward_pre_hook(lambda *a: calls.append(evaluations[-1])) for m in modules]
    try:
        out = sample(apply_as_node(setup["model"], "5", interval=4, cooldown_steps=0), setup, steps=12, sampler=sampler)
    finally:
        for h in handles:
            h.remove()
        monkeypatch.setattr(session.RunState, "prepare", prepare)
    (_, message, _), = browser
    (cond,) = message["conds"]  # cond and uncond batched in one call
    if not modules:  # Chroma's gates come in the vec; Wan's from its time projection, computed ahead
        family = families.FAMILIES[type(setup["model"].model.diffusion_model).__name__]
        ahead = any(s.ahead for s in family.skips)
        assert cond["gates_on_step"] == {} and cond["gates_ahead"] == (cond["predicted"] if ahead else 0), cond
        return
    assert cond["gates_on_step"] == {} and cond["gates_ahead"] == cond["predicted"] > 0, cond
    assert "forecast" in evaluations and "forecast" not in calls  # no forecast ran a modulation module
    # a full evaluation runs each at most three times: in the block, to plan, in the first one's self-check
    assert len(calls) <= 3 * evaluations.count("full") * len(modules)
    if streamed:  # one call per full evaluation, and the first one's self-check
        assert len(calls) == (evaluations.count("full") + 1) * len(modules)

    family = families.FAMILIES[type(setup["model"].model.diffusion_model).__name__]
    monkeypatch.setitem(families.FAMILIES, family.class_name, __import__("dataclasses").replace(family, vec_path=None))
    on_step = sample(apply_as_node(setup["model"], "5", interval=4, cooldown_steps=0), setup, steps=12, sampler=sampler)
    torch.testing.assert_close(out, on_step, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("granularity", families.GRANULARITIES)
@pytest.mark.parametrize("streamed", [False, True])
def test_forecasts_skip_the_modules_before_the_first_block_they_do_not_need(setup, monkeypatch, granularity, streamed):
    """HunyuanVideo's text token refiner, Wan's text embedding and time projection: swapped in by an
    object patch while ComfyUI has the model loaded, they run on full steps only (Wan's time
    projection for the coming forecasts too, at module granularity), and the images are those of
    running them on every step."""
    family = families.FAMILIES[type(setup["model"].model.diffusion_model).__name__]
    if not family.skips:
        pytest.skip(f"{setup['family']} reads nothing before its first block that a forecast could skip")
    diffusion_model = setup["model"].model.diffusion_model
    comfy.model_management.unload_all_models()  # an earlier test's HyCa model may still be loaded
    originals = {s.attr: getattr(diffusion_model, s.attr) for s in family.skips}
    inner = {attr: next(m for m in module.modules() if isinstance(m, torch.nn.Linear)) for attr, module in originals.items()}
    session = importlib.import_module("comfyui_hyca.hyca_core.model.session")
    blocks = importlib.import_module("comfyui_hyca.hyca_core.model.blocks")
    skips = importlib.import_module("comfyui_hyca.hyca_core.model.skips")
    monkeypatch.setattr(blocks, "weights_streamed", lambda module, device: streamed)
    monkeypatch.setattr(skips, "weights_streamed", lambda module, device: streamed)
    prepare, evaluations, calls = session.RunState.prepare, [], []

    def noting(self, ctx, *args):
        evaluations.append("full" if ctx.full else "forecast")
        return prepare(self, ctx, *args)
    monkeypatch.setattr(session.RunState, "prepare", noting)
    swapped, names = [], dict(diffusion_model.named_parameters())

    def seen(module, args):  # the twin in place while ComfyUI samples, every parameter under its own name
        swapped.append(all(getattr(diffusion_model, a) is not m for a, m in originals.items())
                       and dict(diffusion_model.named_parameters()) == names)
    handles = [m.register_forward_pre_hook(lambda m, a, attr=attr: calls.append((attr, evaluations[-1])))
               for attr, m in inner.items()]
    handles.append(diffusion_model.register_forward_pre_hook(seen))
    runs = []

    def closing(self, status="done", close=session.RunState.close):
        rows = close(self, status)
        runs.append((self, rows))
        return rows
    monkeypatch.setattr(session.RunState, "close", closing)
    try:
        out = sample(hyca(setup["model"], interval=4, warmup=3, granularity=granularity), setup)
    finally:
        for h in handles:
            h.remove()
    monkeypatch.setattr(session.RunState, "prepare", prepare)
    assert swapped and all(swapped)
    comfy.model_management.unload_all_models()
    assert all(getattr(diffusion_model, a) is m for a, m in originals.items())  # restored once unloaded
    assert "forecast" in evaluations and not [c for c in calls if c[1] == "forecast"], calls
    ((state, (row,)),) = runs
    assert state.granularity == granularity and not state.notes
    if granularity == "module":
        assert not row["gates_on_step"] and row["gates_ahead"] == row["predicted"] > 0, row["gates_on_step"]
    monkeypatch.setitem(families.FAMILIES, family.class_name, __import__("dataclasses").replace(family, skips=()))
    every_step = sample(hyca(setup["model"], interval=4, warmup=3, granularity=granularity), setup)
    torch.testing.assert_close(out, every_step, rtol=1e-4, atol=1e-5)


# -- ComfyUI behaviours ---------------------------------------------------------------------------
def test_split_cond_and_uncond_calls_get_their_own_state(setup, caplog, monkeypatch):
    model = hyca(setup["model"])
    batched = sample(model, setup)
    # ComfyUI batches conds only when memory allows: make it look short, one call per cond
    monkeypatch.setattr(setup["model"].model, "memory_required", lambda *a, **k: 1e30)
    with caplog.at_level(logging.INFO, logger="hyca"):
        split = sample(model, setup)
    lines = reports(caplog)
    assert len(lines) == 2 and any("[positive" in x for x in lines) and any("[negative" in x for x in lines)
    torch.testing.assert_close(split, batched, rtol=1e-3, atol=1e-3)


def test_batch_of_two_matches_two_single_runs(setup):
    model = hyca(setup["model"])
    two = sample(model, setup, lat=torch.cat([setup["latent"]] * 2))
    noise = comfy.sample.prepare_noise(torch.cat([setup["latent"]] * 2), 0)
    singles = [comfy.sample.sample(model, noise[i:i + 1], STEPS, 2.0, "euler", "simple", setup["pos"], setup["neg"],
                                   setup["latent"], seed=0, disable_pbar=True) for i in range(2)]
    torch.testing.assert_close(two, torch.cat(singles), rtol=1e-3, atol=1e-3)


def test_heun_takes_time_from_sigmas(setup, caplog):
    model = hyca(setup["model"], interval=4, warmup=3)
    with caplog.at_level(logging.INFO, logger="hyca"):
        out = sample(model, setup, steps=10, sampler="heun")
    (line,) = reports(caplog)
    full, predicted = (int(x) for x in line.split(": ")[1].split(" full + ")[0:1] + [line.split(" full + ")[1].split(" ")[0]])
    assert full + predicted == 2 * 10 - 1  # Heun: two evaluations per step, one on the last
    assert predicted > 0 and torch.isfinite(out).all()


def test_runs_do_not_leak_into_each_other(setup):
    model = hyca(setup["model"])
    alone = sample(model, setup, steps=12)
    sample(model, setup, steps=STEPS)  # another KSampler with other steps
    sample(model, setup, lat=latent(setup["family"], size=24))  # another resolution
    assert torch.equal(sample(model, setup, steps=12), alone)
    options = model.model_options["transformer_options"]
    assert patch.RUN_KEY not in options and "hyca_eval" not in options


def test_interrupted_run_leaves_no_state(setup):
    model = hyca(setup["model"])
    clean = sample(model, setup)

    def interrupt(step, *_):
        if step == 6:
            raise comfy.model_management.InterruptProcessingException()

    with pytest.raises(comfy.model_management.InterruptProcessingException):
        sample(model, setup, callback=interrupt)
    assert patch.RUN_KEY not in model.model_options["transformer_options"]
    assert torch.equal(sample(model, setup), clean)


# -- run report for the browser ------------------------------------------------------------------
@pytest.fixture
def browser(monkeypatch):
    """PromptServer.instance as a recorder of send_sync, with a client that queued the prompt. (ComfyUI's
    ``server`` module cannot be imported beside the tests; test_comfy_server covers the real one.)"""
    import sys
    import types

    sent = []  # the run reports; the memory plans sent before each run's first step go to ``plans``

    def send_sync(*message):
        (plans if message[0] == "hyca.plan" else sent).append(message)

    plans = []
    instance = types.SimpleNamespace(client_id="tab-7", send_sync=send_sync, plans=plans)
    module = types.SimpleNamespace(PromptServer=types.SimpleNamespace(instance=instance))
    monkeypatch.setitem(sys.modules, "server", module)
    return sent


def apply_as_node(model, node_id, **inputs):
    """HyCa Apply as ComfyUI's executor runs it: a class clone holding the node's hidden inputs."""
    from comfy_api.latest import io

    hidden = {io.Hidden.unique_id: node_id}
    if hasattr(io.HiddenHolder, "from_v3_data"):  # ComfyUI >= 0.2x passes the executor's v3 data
        hidden = {"hidden_inputs": hidden}
    node = apply_node.HyCaApply.PREPARE_CLASS_CLONE(hidden)
    args = {**dict(interval=4, warmup_steps=3, cooldown_steps=1, start_percent=0.0, end_percent=1.0,
                   granularity="module", cache_device="auto", enabled=True), **inputs}
    return node.execute(model, **args).result[0]


def test_each_run_sends_its_report_to_the_apply_node(setup, browser):
    from comfy_execution.utils import CurrentNodeContext

    model = apply_as_node(setup["model"], "17")
    with CurrentNodeContext("prompt-1", "3"):  # the KSampler's context, as during a real prompt
        sample(model, setup)
    sample(model, setup)
    assert [(event, sid) for event, _, sid in browser] == [("hyca.report", "tab-7")] * 2
    first, second = (message for _, message, _ in browser)
    assert first["node"] == "17" and first["prompt_id"] == "prompt-1" and second["prompt_id"] is None
    assert first["status"] == "done" and first["full"] + first["predicted"] == STEPS
    assert first["conds"] == second["conds"]  # a fresh state per run: the same counts again


def test_an_interrupted_run_reports_it(setup, browser):
    def interrupt(step, *_):
        if step == 6:
            raise comfy.model_management.InterruptProcessingException()

    with pytest.raises(comfy.model_management.InterruptProcessingException):
        sample(apply_as_node(setup["model"], "5"), setup, callback=interrupt)
    (message,) = (m for _, m, _ in browser)
    assert message["status"] == "interrupted" and message["full"] + message["predicted"] < STEPS


def test_calibrating_an_applied_model_sends_no_report(setup, browser, maps_dir, caplog):
    applied = apply_as_node(setup["model"], "17")
    calibrate_node.HyCaCalibrate.execute(
        applied, setup["pos"], setup["neg"], {"samples": setup["latent"]}, 0, 12, 2.0, "euler", "simple",
        1.0, 1, 2, "2-3", 3, 1, False, "module", "from-applied", "", refine="off")
    assert browser == [] and (maps_dir / "from-applied.safetensors").is_file()
    assert "run report" not in caplog.text  # not even tried: Calibrate's install dropped Apply's node id


def test_no_report_without_a_node_id(setup, browser):
    sample(hyca(setup["model"]), setup)  # HyCa Apply called outside ComfyUI's executor
    assert browser == []


def test_nan_prediction_is_recomputed_fully(setup, monkeypatch, caplog):
    model = hyca(setup["model"], interval=4, warmup=3)
    clean = sample(model, setup)
    predictor = importlib.import_module("comfyui_hyca.hyca_core.forecast.predictor")
    original = predictor.HybridPredictor.predict
    monkeypatch.setattr(predictor.HybridPredictor, "predict",
                        lambda self, *a, **k: original(self, *a, **k) * float("nan"))
    with caplog.at_level(logging.INFO, logger="hyca"):
        out = sample(model, setup)
    assert torch.isfinite(out).all()
    reference = sample(setup["model"], setup)
    assert torch.equal(out, reference)  # every prediction refused: all steps computed fully
    assert any("recomputed after NaN" in x for x in reports(caplog))
    assert not torch.equal(clean, reference)


def test_module_forward_mismatch_falls_back_to_block(setup, monkeypatch, caplog, reference):
    adapters = families.FAMILIES
    family = next(f for f in adapters.values() if f.name == setup["family"])
    kind, adapter = next(iter(family.adapters.items()))

    def wrong(block, args, f):
        out = adapter.rebuild(block, args, f)
        return {k: v * 1.5 for k, v in out.items()}

    monkeypatch.setitem(family.adapters, kind, families.ModuleAdapter(adapter.branches, wrong))
    model = hyca(setup["model"], interval=4, granularity="module")
    with caplog.at_level(logging.INFO, logger="hyca"):
        out = sample(model, setup)
    messages = [r.getMessage() for r in caplog.records if r.name == "hyca"]
    assert any("falling back to block granularity" in m for m in messages)
    assert any(", block]" in m for m in messages)
    expected = sample(hyca(setup["model"], interval=4, granularity="block"), setup)
    assert torch.equal(out, expected)


def test_cpu_cache_device_gives_the_same_result(setup):
    model_gpu = hyca(setup["model"], cache_device="auto")
    model_cpu = hyca(setup["model"], cache_device="cpu")
    assert torch.equal(sample(model_gpu, setup), sample(model_cpu, setup))


# -- maps -----------------------------------------------------------------------------------------
@pytest.fixture
def maps_dir(tmp_path, monkeypatch):
    import folder_paths

    map_folder.register()  # the pack's registration first, then point the folder at tmp_path
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "hyca", ([str(tmp_path)], {".safetensors"}))
    return tmp_path


def test_calibrate_loader_apply_round_trip(setup, maps_dir, reference):
    fam = setup["family"]
    node = calibrate_node.HyCaCalibrate.execute(
        setup["model"], setup["pos"], setup["neg"], {"samples": setup["latent"]}, 0, 24, 2.0, "euler", "simple",
        1.0, 1, 2, "2-6", 3, 1, False, "module", f"tiny-{fam}", "test map")
    solver_map, calibrated_latent, chart = node.result
    assert chart.dim() == 4 and chart.shape[0] == 1 and chart.shape[-1] == 3  # an IMAGE for PreviewImage
    path = maps_dir / f"tiny-{fam}.safetensors"
    assert path.is_file() and solver_map.family == fam and solver_map.mode == "choose"
    uncached = sample(setup["model"], setup, steps=24)
    assert torch.equal(calibrated_latent["samples"], uncached)  # calibration samples the uncached model
    assert map_folder.list_maps() == [path.name]
    loaded = loader_node.HyCaSolverMapLoader.execute(path.name).result[0]
    assert loaded.equals(solver_map)
    with_map = sample(hyca(setup["model"], interval=4, solver_map=loaded), setup, steps=24)
    without = sample(hyca(setup["model"], interval=4), setup, steps=24)
    err = lambda out: float((out - uncached).pow(2).mean())  # noqa: E731
    assert torch.isfinite(with_map).all()
    assert err(with_map) < 2 * err(without)  # a calibrated map is at least in the same league


def test_refine_checks_every_interval_closed_loop_and_keeps_the_winner(setup, maps_dir):
    """refine=fast: the map keeps its own solvers at N only where they beat every uniform solver on
    two held-out seeds (more where those cannot tell the leaders apart). Calibrating an applied model gives the very same map: the reference runs pass
    through the installed HyCa untouched."""
    args = (setup["pos"], setup["neg"], {"samples": setup["latent"]}, 0, 12, 2.0, "euler", "simple", 1.0, 1, 2,
            "2-3", 3, 1, False, "block")
    plain = calibrate_node.HyCaCalibrate.execute(setup["model"], *args, "refined", "", refine="fast").result[0]
    record = plain.provenance["closed_loop"]
    assert record["refine"] == "fast" and record["seeds"] == [1, 2] and record["cached_runs"] > 0
    for n in ("2", "3"):
        entry = record["intervals"][n]
        assert set(entry["uniform_db"]) == set(plain.pool)
        # the winner leads on the items that decided: the two check seeds, or more where those could
        # not tell the leaders apart
        if "deciding_db" in entry:
            assert entry["kept"] in entry["deciding_db"] and entry["deciding_seeds"][:2] == [1, 2]
        else:
            scores = {"map": entry["map_db"], **entry["uniform_db"]}
            assert scores[entry["kept"]] == max(scores.values())
    assert [e["interval"] for e in solver_map_mod.verified(plain)] == [2, 3]
    applied = calibrate_node.HyCaCalibrate.execute(apply_as_node(setup["model"], "9"), *args, "refined-applied",
                                                   "", refine="fast").result[0]
    assert applied.provenance["closed_loop"] == record
    assert all(torch.equal(a.choices, b.choices) for a, b in zip(plain.scopes.values(), applied.scopes.values()))


def test_calibrating_over_an_existing_map_says_so_before_and_after(setup, maps_dir, caplog):
    args = (setup["pos"], setup["neg"], {"samples": setup["latent"]}, 0, 8, 2.0, "euler", "simple", 1.0, 1, 2,
            "2-3", 3, 1, False, "block", "same-name", "")
    with caplog.at_level(logging.WARNING, logger="hyca"):
        calibrate_node.HyCaCalibrate.execute(setup["model"], *args, refine="off")
        assert not [r for r in caplog.records if "replace" in r.getMessage()]
        calibrate_node.HyCaCalibrate.execute(setup["model"], *args, refine="off")
    said = [r.getMessage() for r in caplog.records if "same-name.safetensors" in r.getMessage()]
    assert len(said) == 2 and "will be replaced" in said[0] and "replaced the existing map" in said[1]


class StandInVAE:
    """The one method HyCa Calibrate uses of ComfyUI's VAE: ``decode(latent) -> images`` with
    channels last, values clamped as a decoder's are. Counts its calls."""

    def __init__(self):
        self.calls = 0

    def decode(self, samples):
        self.calls += 1
        return (samples.movedim(1, -1) * 0.5 + 0.5).clamp(0.0, 1.0)


def test_refine_with_a_vae_scores_decoded_images(setup, maps_dir):
    """With the optional vae, the closed-loop check decodes every run it scores (and each uncached
    reference once) and says so in the map."""
    vae = StandInVAE()
    args = (setup["pos"], setup["neg"], {"samples": setup["latent"]}, 0, 12, 2.0, "euler", "simple", 1.0, 1, 2,
            "3", 3, 1, False, "block")
    out = calibrate_node.HyCaCalibrate.execute(setup["model"], *args, "decoded", "", refine="fast", vae=vae).result[0]
    record = out.provenance["closed_loop"]
    assert "decoded image" in record["metric"]
    references = len(record["seeds"]) + max(len(e.get("deciding_seeds", [])) for e in record["intervals"].values())
    assert vae.calls >= record["cached_runs"] > 0
    assert vae.calls <= record["cached_runs"] + references + 1  # + the calibration seed's reference
    plain = calibrate_node.HyCaCalibrate.execute(setup["model"], *args, "latents", "", refine="fast").result[0]
    assert "latent" in plain.provenance["closed_loop"]["metric"]


def test_auto_calibration_writes_one_map_reuses_it_and_recalibrates_on_change(setup, maps_dir, browser):
    """The first run is uncached and calibrates; the next is cached with that map; another step
    count or a patched model (as a LoRA patches it) calibrates a new map; an interrupted first run
    writes nothing. Each run's report says what it did."""
    steps = 16
    auto = apply_as_node(setup["model"], "21", auto_calibrate=True)
    uncached = sample(setup["model"], setup, steps=steps)
    first = sample(auto, setup, steps=steps)
    assert torch.equal(first, uncached)  # the calibrating run is computed uncached
    written = sorted((maps_dir / "auto").glob("*.safetensors"))
    assert len(written) == 1
    second = sample(auto, setup, steps=steps)
    assert not torch.equal(second, uncached) and torch.isfinite(second).all()
    assert sorted((maps_dir / "auto").glob("*.safetensors")) == written  # reused, not rewritten
    notes = [m["notes"] for _, m, _ in browser]
    assert any("this run is computed uncached" in n for n in notes[0])
    assert any("cached with " + written[0].name in n for n in notes[1])
    assert browser[1][1]["predicted"] > 0 and browser[0][1]["predicted"] == 0
    sample(auto, setup, steps=steps + 2)
    assert len(list((maps_dir / "auto").glob("*.safetensors"))) == 2  # another step count
    patched = setup["model"].clone()
    key = next(k for k, _ in patched.model.diffusion_model.named_parameters() if k.endswith("weight"))
    weight = patched.model.diffusion_model.get_parameter(key)
    patched.add_patches({"diffusion_model." + key: (torch.full_like(weight, 1e-3),)}, 1.0)
    sample(apply_as_node(patched, "22", auto_calibrate=True), setup, steps=steps)
    assert len(list((maps_dir / "auto").glob("*.safetensors"))) == 3  # another model

    def interrupt(step, *_):
        if step == 5:
            raise comfy.model_management.InterruptProcessingException()

    with pytest.raises(comfy.model_management.InterruptProcessingException):
        sample(auto, setup, steps=steps + 4, callback=interrupt)
    assert len(list((maps_dir / "auto").glob("*.safetensors"))) == 3
    assert any("no map was written" in n for n in browser[-1][1]["notes"])


def test_calibrated_schedule_is_searched_stored_and_honoured_exactly(setup, maps_dir, browser):
    steps, budget = 16, 5
    m = calibrate_node.HyCaCalibrate.execute(
        setup["model"], setup["pos"], setup["neg"], {"samples": setup["latent"]}, 0, steps, 2.0, "euler", "simple",
        1.0, 1, 2, "2-4", 3, 1, False, "block", "placed", "", refine="off", full_step_budgets=str(budget)).result[0]
    placed = solver_map_mod.placements(m)[budget]
    assert len(placed["full_steps"]) == budget and placed["fit_db"] >= placed["fixed_db"]
    model = apply_as_node(setup["model"], "31", solver_map=m, granularity="block", schedule="calibrated",
                          full_steps=budget)
    out = sample(model, setup, steps=steps)
    assert torch.isfinite(out).all()
    (message,) = (msg for _, msg, _ in browser)
    for cond in message["conds"]:
        assert cond["full"] == budget and cond["predicted"] == steps - budget
        assert [i for i, c in enumerate(cond["timeline"]) if c == "F"] == placed["full_steps"]
    with pytest.raises(ValueError, match=r"no calibrated placement of 7 full steps \(it has: 5\)"):
        apply_as_node(setup["model"], "32", solver_map=m, granularity="block", schedule="calibrated", full_steps=7)
    with pytest.raises(ValueError, match="needs a solver map"):
        apply_as_node(setup["model"], "33", schedule="calibrated")


def test_smaller_anchors_hold_fewer_bytes_and_forecast_nearly_the_same(setup, reference, browser):
    """Issue 26: ``anchor_precision`` through ComfyUI's own sampler: bf16 halves what fp32 anchors
    hold, int8 with a scale per channel holds about a quarter; both stay close to the model-dtype run
    (BENCHMARKS.md, "Anchor precision", measures the cost on held-out prompts)."""
    held, outs = {}, {}
    for i, precision in enumerate(("model", "bf16", "int8")):
        model = apply_as_node(setup["model"], f"4{i}", granularity="module", schedule="interval",
                              anchor_precision=precision)
        outs[precision] = sample(model, setup)
        held[precision] = browser[-1][1]["peak_cache_bytes"]
    assert held["bf16"] * 2 == held["model"] and held["int8"] < 0.3 * held["model"]
    for precision in ("bf16", "int8"):
        assert torch.isfinite(outs[precision]).all()
        error = (outs[precision] - outs["model"]).pow(2).mean() / (outs["model"] - reference).pow(2).mean()
        assert float(error) < 0.05, (precision, float(error))  # far smaller than what caching itself changes
    with pytest.raises(ValueError, match="anchor_precision must be one of model, bf16, int8"):
        apply_as_node(setup["model"], "43", anchor_precision="int4")


def test_map_for_another_family_is_refused(setup):
    from support import small_map

    other = "qwen_image" if setup["family"] != "qwen_image" else "flux"
    m = importlib.import_module("comfyui_hyca.hyca_core.maps").SolverMap
    foreign = small_map()
    foreign = m(**{**foreign.__dict__, "family": other})
    with pytest.raises(solver_map_mod.SolverMapMismatch, match=f"family '{other}', the model is '{setup['family']}'"):
        hyca(setup["model"], solver_map=foreign)


def test_map_of_another_granularity_is_refused(setup):
    from support import small_map

    m = small_map()
    m.family = setup["family"]
    with pytest.raises(solver_map_mod.SolverMapMismatch, match="granularity"):
        hyca(setup["model"], solver_map=m, granularity="block")


def test_broken_map_fails_the_loader_with_the_validator_message(maps_dir):
    (maps_dir / "broken.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="broken.safetensors: file: not a readable safetensors file"):
        loader_node.HyCaSolverMapLoader.execute("broken.safetensors")


def test_unsupported_model_is_reported_at_use():
    class NotADiT(torch.nn.Module):
        pass

    with pytest.raises(families.UnsupportedModel, match="does not support NotADiT"):
        families.detect(NotADiT())


# -- conditioning extras: reference latents, LoRA, ControlNet ---------------------------------------
def snr(out, ref):
    return float(10 * torch.log10(ref.var() / (out - ref).pow(2).mean().clamp_min(1e-30)))


def with_extra(s, **extra):
    pos = [[s["pos"][0][0], {**s["pos"][0][1], **extra}]]
    return {**s, "pos": pos}


@pytest.mark.parametrize("granularity", families.GRANULARITIES)
def test_reference_latents_kontext_and_qwen_edit(setup, granularity):
    if setup["family"] not in ("flux", "qwen_image"):
        pytest.skip("reference latents are a FLUX Kontext / Qwen-Image-Edit feature")
    g = torch.Generator().manual_seed(5)
    ref_latent = torch.randn(setup["latent"].shape, generator=g)
    s = with_extra(setup, reference_latents=[ref_latent])
    plain = sample(setup["model"], s)
    assert not torch.equal(plain, sample(setup["model"], setup))  # the reference does reach the model
    assert torch.equal(sample(hyca(setup["model"], interval=1, granularity=granularity), s), plain)
    cached = sample(hyca(setup["model"], interval=3, granularity=granularity), s)
    assert torch.isfinite(cached).all() and snr(cached, plain) > 10


def test_lora_patches_keep_working(setup):
    model = setup["model"].clone()
    key = next(k for k in model.model_state_dict() if k.endswith(".weight") and "blocks.0." in k
               and ("qkv" in k or "to_q" in k or "self_attn.q." in k))  # FLUX/HunyuanVideo, Qwen, Wan
    weight = model.model_state_dict()[key]
    g = torch.Generator().manual_seed(7)
    model.add_patches({key: (torch.randn(weight.shape, generator=g) * 0.3,)}, 1.0)
    lora_only = sample(model, setup)
    assert not torch.equal(lora_only, sample(setup["model"], setup))
    assert torch.equal(sample(hyca(model, interval=1), setup), lora_only)  # HyCa on top of a LoRA
    hyca_then_lora = hyca(setup["model"], interval=1).clone()
    hyca_then_lora.add_patches({key: (torch.randn(weight.shape, generator=torch.Generator().manual_seed(7)) * 0.3,)}, 1.0)
    assert torch.equal(sample(hyca_then_lora, setup), lora_only)  # a LoRA on top of HyCa
    assert snr(sample(hyca(model, interval=3), setup), lora_only) > 10


class FakeControlNet:
    """A ControlNet stand-in that returns fixed residuals scaled by sigma, through ComfyUI's
    ControlBase protocol (so the sampler wires it exactly like a real one)."""

    def __new__(cls, residuals):
        import comfy.controlnet

        class Control(comfy.controlnet.ControlBase):
            def __init__(self, residuals):
                super().__init__()
                self.residuals = residuals

            def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
                scale = float(t.max())
                return {key: [r * scale for r in value] for key, value in self.residuals.items()}

            def copy(self):
                c = Control(self.residuals)
                self.copy_to(c)
                return c

            def get_models(self):
                return []

            def inference_memory_requirements(self, dtype):
                return 0

        control = Control(residuals)
        control.set_cond_hint(torch.zeros(1, 3, 8, 8))
        return control


def test_controlnet_residuals_keep_working(setup):
    if setup["family"] not in ("flux", "qwen_image"):
        pytest.skip("ControlNet is tested for FLUX and Qwen-Image")
    tokens = 64  # 16x16 latent, patch 2
    g = torch.Generator().manual_seed(9)
    residuals = {"input": [torch.randn(1, tokens, 64, generator=g) * 0.5 for _ in range(2)], "output": []}
    if setup["family"] == "flux":
        residuals["output"] = [torch.randn(1, tokens, 64, generator=g) * 0.5 for _ in range(2)]
    s = with_extra(setup, control=FakeControlNet(residuals))
    controlled = sample(setup["model"], s)
    assert not torch.equal(controlled, sample(setup["model"], setup))
    for granularity in families.GRANULARITIES:
        assert torch.equal(sample(hyca(setup["model"], interval=1, granularity=granularity), s), controlled)
        cached = sample(hyca(setup["model"], interval=3, granularity=granularity), s)
        assert snr(cached, controlled) > 10, granularity


def test_comfyui_loader_registers_the_three_nodes():
    import asyncio
    from pathlib import Path

    import nodes

    root = Path(__file__).resolve().parents[2]
    assert asyncio.run(nodes.load_custom_node(str(root), module_parent="custom_nodes"))
    for node_id, display in (("HyCaCalibrate", "HyCa Calibrate"), ("HyCaSolverMapLoader", "HyCa Solver Map Loader"),
                             ("HyCaApply", "HyCa Apply")):
        cls = nodes.NODE_CLASS_MAPPINGS[node_id]
        schema = cls.GET_SCHEMA()
        assert schema.display_name == display
        assert all(i.tooltip for i in schema.inputs), node_id  # every input explains itself
    assert nodes.EXTENSION_WEB_DIRS  # WEB_DIRECTORY was picked up


# -- Wan 2.2 14B: two expert models, each sampling its part of the steps ------------------------------
def ksampler_advanced(model, s, lat, start, end, add_noise, leftover, steps=12, seed=0):
    """ComfyUI's own KSamplerAdvanced, as Wan 2.2's two-expert workflows chain it."""
    import nodes

    return nodes.KSamplerAdvanced().sample(model, "enable" if add_noise else "disable", seed, steps, 2.0, "euler",
                                           "simple", s["pos"], s["neg"], {"samples": lat}, start, end,
                                           "enable" if leftover else "disable")[0]["samples"]


def two_experts(high, low, s, split=6):
    noisy = ksampler_advanced(high, s, s["latent"], 0, split, add_noise=True, leftover=True)
    return noisy, ksampler_advanced(low, s, noisy, split, 10000, add_noise=False, leftover=False)


def test_wan22_two_experts_each_cache_their_own_steps_and_calibrate_their_own_map(maps_dir, caplog):
    s = dict(pos=conditioning("wan", 1), neg=conditioning("wan", 2), latent=latent("wan"))
    high, low = build("wan", seed=0), build("wan", seed=1)  # two experts: same architecture, other weights
    noisy, plain = two_experts(high, low, s)
    _, same = two_experts(hyca(high, interval=1, warmup=1), hyca(low, interval=1, warmup=1), s)
    assert torch.equal(same, plain)  # interval 1: nothing forecast, bit-identical

    with caplog.at_level(logging.INFO, logger="hyca"):
        _, cached = two_experts(hyca(high, interval=3, warmup=1), hyca(low, interval=3, warmup=1), s)
    lines = reports(caplog)
    assert len(lines) == 2  # one run per expert, each over its own 6 steps: 1 warm-up, then full every 3rd
    full = len(patch.Schedule(interval=3, warmup=1).full_steps(6))
    for line in lines:
        assert f"{full} full + {6 - full} predicted" in line and ", module]" in line, line
    assert torch.isfinite(cached).all() and snr(cached, plain) > 10

    # the low-noise expert is calibrated on its own steps, from the high-noise expert's output
    node = calibrate_node.HyCaCalibrate.execute(
        low, s["pos"], s["neg"], {"samples": noisy}, 0, 12, 2.0, "euler", "simple", 1.0, 1, 2, "2-3", 1, 1, False,
        "module", "wan22-low", "low-noise expert", refine="off", start_at_step=6, end_at_step=10000, add_noise=False)
    solver_map, first_output, _ = node.result
    assert torch.equal(first_output["samples"], plain)  # its uncached run is the low expert's own part
    assert solver_map.provenance["step_range"] == [6, 12, 12] and solver_map.provenance["steps"] == 6
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hyca"):
        out = ksampler_advanced(hyca(low, interval=3, warmup=1, cooldown=1, solver_map=solver_map), s, noisy, 6,
                                10000, add_noise=False, leftover=False)
    (line,) = reports(caplog)
    assert torch.isfinite(out).all() and "predicted" in line and ", module]" in line


# -- a DiT of no known family: LTXV, cached through its block list -------------------------------------
@pytest.mark.parametrize("granularity", families.GRANULARITIES)
def test_ltxv_is_cached_at_block_and_stack_through_its_block_list(granularity, caplog):
    s = dict(pos=conditioning("ltxv", 1), neg=conditioning("ltxv", 2), latent=latent("ltxv"))
    model = build("ltxv")
    plain = sample(model, s)
    assert torch.equal(sample(hyca(model, interval=1, granularity=granularity), s), plain)
    with caplog.at_level(logging.INFO, logger="hyca"):
        cached = sample(hyca(model, interval=3, warmup=2, granularity=granularity), s)
    (line,) = reports(caplog)
    used = "block" if granularity == "module" else granularity  # module needs per-family code
    assert f", {used}]" in line and "predicted" in line, line
    messages = [r.getMessage() for r in caplog.records if r.name == "hyca"]
    assert (granularity == "module") == any("not a family HyCa knows" in m for m in messages)
    assert torch.isfinite(cached).all() and snr(cached, plain) > 10
    with pytest.raises(families.UnsupportedModel, match="LTXVModel"):  # maps need a known family
        calibrate_node.HyCaCalibrate.execute(model, s["pos"], s["neg"], {"samples": s["latent"]}, 0, 8, 2.0, "euler",
                                             "simple", 1.0, 1, 2, "2-3", 2, 1, False, "block", "ltxv", refine="off")


def test_calibrating_a_block_hyca_cannot_split_falls_back_to_block(maps_dir, monkeypatch, caplog):
    """Module granularity on a block variant whose branches HyCa cannot find: HyCa Calibrate
    calibrates whole blocks instead, and auto-calibration finishes its run and writes no map."""
    family = families.FAMILIES["Flux"]
    adapter = family.adapters["double_block"]
    unknown = families.ModuleAdapter((families.Branch("img_attn", "no_such_module"),) + adapter.branches[1:],
                                     adapter.rebuild)
    monkeypatch.setitem(family.adapters, "double_block", unknown)
    s = dict(pos=conditioning("flux", 1), neg=conditioning("flux", 2), latent=latent("flux"))
    model = build("flux")
    with caplog.at_level(logging.WARNING, logger="hyca"):
        node = calibrate_node.HyCaCalibrate.execute(model, s["pos"], s["neg"], {"samples": s["latent"]}, 0, 12, 2.0,
                                                    "euler", "simple", 1.0, 1, 2, "2-3", 2, 1, False, "module",
                                                    "unsplittable", refine="off")
    assert node.result[0].granularity == "block" and (maps_dir / "unsplittable.safetensors").is_file()
    assert any("calibrating at block granularity instead" in r.getMessage() for r in caplog.records)

    out = apply_node.HyCaApply.execute(model, 3, 2, 1, 0.0, 1.0, "module", "auto", True, auto_calibrate=True)
    plain = sample(model, s)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hyca"):
        assert torch.equal(sample(out.result[0], s), plain)  # the auto-calibrating run is computed uncached
    assert any("no map written; use granularity block" in r.getMessage() for r in caplog.records)
    assert not list((maps_dir / "auto").glob("*.safetensors"))


def test_free_memory_is_asked_of_the_model_patcher_where_it_can_tell(monkeypatch):
    """Newer ComfyUI's ModelPatcher.get_free_memory counts VRAM that Dynamic VRAM would free
    (comfy/model_patcher.py at 08d0e510; 0.26 has it); 0.3.64's has none and model_management answers."""
    session = importlib.import_module("comfyui_hyca.hyca_core.model.session")
    seen = []
    monkeypatch.setattr(session.RunState, "close", lambda self, status="done": seen.append(self.free_memory) or [])
    s = dict(pos=conditioning("flux", 1), neg=conditioning("flux", 2), latent=latent("flux"))
    model = hyca(build("flux"), interval=3)
    sample(model, s, steps=4)
    native = getattr(type(model), "get_free_memory", None)
    if native is None:  # 0.3.64
        assert seen[-1] is patch._comfy_free_memory
    else:  # the patcher that sampled answers
        assert seen[-1].__func__ is native and seen[-1].__self__ is model
    asked = lambda device: 123  # noqa: E731
    model.get_free_memory = asked
    sample(model, s, steps=4)
    assert seen[-1] is asked


def test_calibrating_on_the_workflows_own_sigmas(maps_dir):
    """A SamplerCustomAdvanced workflow (FLUX.2's Flux2Scheduler, say) hands HyCa Calibrate its sigmas."""
    s = dict(pos=conditioning("flux", 1), neg=conditioning("flux", 2), latent=latent("flux"))
    model = build("flux")
    sigmas = torch.linspace(1.0, 0.0, 11) ** 1.5  # any schedule: 10 steps, not a ComfyUI scheduler's
    node = calibrate_node.HyCaCalibrate.execute(model, s["pos"], s["neg"], {"samples": s["latent"]}, 0, 30, 2.0,
                                                "euler", "simple", 1.0, 1, 2, "2-3", 2, 1, False, "module",
                                                "own-sigmas", refine="off", sigmas=sigmas)
    solver_map, first, _ = node.result
    assert solver_map.provenance["steps"] == 10 and solver_map.provenance["custom_sigmas"]
    noise = comfy.sample.prepare_noise(s["latent"], 0)
    expected = comfy.sample.sample(model, noise, 10, 2.0, "euler", "simple", s["pos"], s["neg"], s["latent"],
                                   sigmas=sigmas, seed=0, disable_pbar=True)
    assert torch.equal(first["samples"], expected)  # the uncached run used exactly those sigmas


def test_calibrate_passes_the_latents_downscale_ratios_where_comfyui_takes_them(monkeypatch):
    """Newer ``comfy.sample.fix_empty_latent_channels(model, latent, spatial, temporal)`` (nodes.py's
    common_ksampler at Comfy-Org/ComfyUI 02217e36 passes the latent's own ratios); 0.3.64's takes two."""
    seen = []

    def newer(model, latent_image, downscale_ratio_spacial=None, downscale_ratio_temporal=None):
        seen.append((downscale_ratio_spacial, downscale_ratio_temporal))
        return latent_image

    monkeypatch.setattr(comfy.sample, "fix_empty_latent_channels", newer)
    samples = latent("flux")
    out = calibrate_node.fix_empty_latent(None, {"samples": samples, "downscale_ratio_spacial": 16,
                                                 "downscale_ratio_temporal": 4})
    assert out is samples and seen == [(16, 4)]
    monkeypatch.setattr(comfy.sample, "fix_empty_latent_channels", lambda model, latent_image: latent_image * 0)
    assert torch.equal(calibrate_node.fix_empty_latent(None, {"samples": samples + 1}), samples * 0)


def test_cost_and_speed_scripts_run_on_comfyuis_classes(tmp_path, capsys):
    """``tests/comfy_cost.py`` (issue 14's counts for Qwen-Image, HunyuanVideo, Wan) on tiny widths:
    every forecast finds its gates (the script asserts it), and ``--speed`` times a run."""
    import json

    import comfy_cost

    comfy_cost.main(["--tiny", "--models", "HunyuanVideo", "Wan 2.1 14B", "--out", str(tmp_path / "cost.json")])
    rows = json.loads((tmp_path / "cost.json").read_text())
    forecast = {(r["model"], r["granularity"]): r["value"] for r in rows if r["step"] == "forecast" and r["what"] == "param_bytes"}
    hv, wan = "HunyuanVideo (tiny)", "Wan 2.1 14B (tiny)"
    assert forecast[(hv, "module")] == forecast[(hv, "block")] < forecast[(hv, "module-step")]  # no block weight
    # Wan's gates: each of its 40 blocks' modulation parameter, 6 x 64 in bf16, and nothing else
    assert forecast[(wan, "module")] - forecast[(wan, "block")] == pytest.approx(40 * 6 * 64 * 2)
    comfy_cost.main(["--tiny", "--speed", "--device", "cpu", "--models", "Qwen-Image", "--steps", "6", "--intervals", "3",
                     "--granularities", "module", "--out", str(tmp_path / "speed.json")])
    speed = json.loads((tmp_path / "speed.json").read_text())
    assert [r["method"] for r in speed] == ["uncached", "HyCa"] and speed[1]["full"] < 6


@pytest.mark.parametrize("change, words", [(dict(denoise=0.0), "denoise is 0"),
                                           (dict(description="ok \udcff"), "lone surrogate"),
                                           (dict(description="d" * 4001), "a map keeps at most 4000")])
def test_calibrate_refuses_what_it_cannot_calibrate_or_store_before_sampling(change, words, monkeypatch):
    """issue 24, item 4: denoise 0 used to end in "nothing was observed" after the run; a lone
    surrogate in the description was written into a map no tool could then show."""
    monkeypatch.setattr(comfy.sample, "sample", lambda *a, **k: pytest.fail("sampled"))
    s = dict(pos=conditioning("flux", 1), neg=conditioning("flux", 2), latent=latent("flux"))
    args = dict(denoise=1.0, description="")
    args.update(change)
    with pytest.raises(ValueError, match=words):
        calibrate_node.HyCaCalibrate.execute(build("flux"), s["pos"], s["neg"], {"samples": s["latent"]}, 0, 12, 2.0,
                                             "euler", "simple", args["denoise"], 1, 2, "2-3", 2, 1, False, "block",
                                             "never-written", args["description"], refine="off")
