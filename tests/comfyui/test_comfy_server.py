"""The pack in a real ComfyUI server on localhost: the map-details route, its refusals, the
calibration chart and the run report message, over HTTP and the websocket as the browser sees them.

Skipped with the reason when no ComfyUI is found (set COMFYUI_PATH; see README).
"""

import os
import time
from pathlib import Path

import pytest
import torch
from comfy_env import require_comfyui

require_comfyui()

from comfy_server import apply_prompt  # noqa: E402
from hyca_core.model.session import DEFAULT_SOLVER  # noqa: E402
from hyca_core.maps import load_solver_map, save_solver_map  # noqa: E402

MAP = "tiny-flux.safetensors"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def server(comfy_server):
    return comfy_server


def test_calibrate_writes_the_map_and_outputs_its_chart(server):
    assert (server.maps_dir / MAP).is_file()
    executed = [m["data"] for m in server.calibration if m["type"] == "executed"]
    previews = [d for d in executed if d["node"] == "6"]
    assert previews and previews[0]["output"]["images"], "PreviewImage shows the calibration chart"


@pytest.mark.parametrize("prefix", ["", "/api"])
def test_route_describes_a_map(server, prefix):
    status, body = server.get(prefix + "/hyca/map", name=MAP)
    assert status == 200, body
    assert body["name"] == MAP and body["family"] == "flux" and body["granularity"] == "module"
    assert body["intervals"] == [2, 3, 4] and body["warmup"] == 2
    assert body["provenance"]["cooldown"] == 1 and body["provenance"]["steps"] == 12
    assert body["description"] == "written by the server tests"
    scope = body["scopes"][0]
    assert scope["clusters"] == 2 and sum(scope["cluster_sizes"]) == scope["channels"]
    assert all(len(row["solvers"]) == 2 and set(row["solvers"]) <= set(body["pool"]) for row in scope["intervals"])


def test_chart_route_draws_the_map(server):
    import urllib.request

    with urllib.request.urlopen(f"{server.url}/api/hyca/map/chart?name={MAP}") as page:
        assert page.status == 200 and page.headers["Content-Type"] == "image/png"
        assert page.read().startswith(b"\x89PNG\r\n\x1a\n")
    status, body = server.get("/hyca/map/chart", name="../outside.safetensors")
    assert status == 400 and "not a map name" in body["error"]  # the same checks as the details
    assert server.get("/hyca/map/chart", name="broken.safetensors")[0] == 422


@pytest.mark.parametrize("name, status, words", [
    (None, 400, "missing map name"),
    ("", 400, "missing map name"),
    ("../outside.safetensors", 400, "not a map name"),
    ("../../outside.safetensors", 400, "not a map name"),
    ("sub/../../outside.safetensors", 400, "not a map name"),
    ("..\\outside.safetensors", 400, "not a map name"),
    ("/etc/passwd", 400, "not a map name"),
    ("C:/maps/x.safetensors", 400, "not a map name"),
    ("notes.txt", 400, "maps are .safetensors files"),
    ("missing.safetensors", 404, "no solver map named"),
    ("broken.safetensors", 422, "is unusable: file: not a readable safetensors file"),
])
def test_route_refuses_with_a_clear_message(server, name, status, words):
    got, body = server.get("/hyca/map", **({} if name is None else {"name": name}))
    assert got == status, body
    assert words in body["error"]
    assert "outside" not in body or "family" not in body  # nothing of a file outside the folders leaks


def test_run_report_reaches_the_apply_node(server):
    messages = server.run(apply_prompt(MAP, apply_id="8", seed=101))
    reports = [m["data"] for m in messages if m["type"] == "hyca.report"]
    assert len(reports) == 1, [m["type"] for m in messages]
    report = reports[0]
    prompt_ids = {m["data"].get("prompt_id") for m in messages if m["type"] == "execution_start"}
    assert report["node"] == "8" and report["prompt_id"] in prompt_ids and report["status"] == "done"
    assert report["map"] == MAP and report["interval"] == 3 and report["cooldown"] == 1
    (cond,) = report["conds"]  # cfg 2: positive and negative share one batched call
    assert sorted(cond["cond"].split("+")) == ["negative", "positive"]
    assert cond["full"] + cond["predicted"] == 12 and cond["predicted"] > 0
    # warm-up 2, then one full step every 3, and the full last step
    assert cond["timeline"] == "FF··F··F··FF" and cond["full_reasons"]["cooldown"] == 1
    assert report["flops_speedup"] == pytest.approx(12 / cond["full"], rel=1e-3)
    assert report["peak_cache_bytes"] > 0
    # before the first step the node was shown the anchors' plan, with the estimate the report holds
    types = [m["type"] for m in messages]
    (plan,) = [m["data"] for m in messages if m["type"] == "hyca.plan"]
    assert types.index("hyca.plan") < types.index("hyca.report") and plan["node"] == "8"
    assert plan["memory"] == report["memory"] and report["memory"]["estimated_bytes"] == report["peak_cache_bytes"]


def test_report_names_the_node_that_patched_the_model(server):
    messages = server.run(apply_prompt(None, apply_id="42", seed=102))
    (report,) = [m["data"] for m in messages if m["type"] == "hyca.report"]
    assert report["node"] == "42" and report["map"] is None and report["solver"] == DEFAULT_SOLVER


@pytest.mark.parametrize("node", ["HyCaApply", "HyCaSolverMapLoader", "HyCaCalibrate"])
def test_help_pages_and_schema_read_well(server, node):
    status, info = server.get(f"/object_info/{node}")
    assert status == 200 and info[node]["category"] == "sampling/HyCa" and len(info[node]["description"]) > 40
    import urllib.request

    # where both frontends look first (then docs/<node>.md): no 404 before the page
    with urllib.request.urlopen(f"{server.url}/extensions/ComfyUI-HyCa/docs/{node}/en.md") as page:
        assert page.status == 200 and page.read().decode().startswith("# HyCa")


def test_template_browser_lists_the_workflows_with_their_thumbnails(server):
    """What the template browser asks for: the pack's workflow names, each one's JSON and JPEG."""
    import urllib.parse
    import urllib.request

    status, listing = server.get("/api/workflow_templates")
    expected = sorted(p.stem for p in (ROOT / "example_workflows").glob("*.json"))
    assert status == 200 and sorted(listing["ComfyUI-HyCa"]) == expected
    for name in expected:
        for suffix, kind in ((".json", "application/json"), (".jpg", "image/jpeg")):
            url = f"{server.url}/api/workflow_templates/ComfyUI-HyCa/{urllib.parse.quote(name + suffix)}"
            with urllib.request.urlopen(url) as response:
                assert response.status == 200 and response.headers["Content-Type"].startswith(kind), url


def test_two_sampling_passes_send_two_reports_of_one_prompt(server):
    messages = server.run(apply_prompt(None, apply_id="8", second_pass=True, seed=103))
    first, second = [m["data"] for m in messages if m["type"] == "hyca.report"]
    assert first["node"] == second["node"] == "8" and first["prompt_id"] == second["prompt_id"]
    assert len(first["conds"][0]["timeline"]) == 12 and len(second["conds"][0]["timeline"]) == 8


def test_identical_apply_nodes_each_get_their_own_reports(server):
    """Two HyCa Apply nodes with the same inputs: ComfyUI must not reuse one's output (and so its
    node id) for the other."""
    prompt = apply_prompt(None, apply_id="8", seed=104)
    prompt["21"] = dict(prompt["8"])
    prompt["22"] = {"class_type": "KSampler", "inputs": {**prompt["9"]["inputs"], "model": ["21", 0], "seed": 105}}
    prompt["23"] = {"class_type": "SaveLatent", "inputs": {"samples": ["22", 0], "filename_prefix": "hyca-twin"}}
    messages = server.run(prompt)
    assert sorted(m["data"]["node"] for m in messages if m["type"] == "hyca.report") == ["21", "8"]


def test_report_says_when_the_map_lacks_the_interval(server):
    prompt = apply_prompt(MAP, apply_id="8", seed=106)
    prompt["8"]["inputs"]["interval"] = 5  # the map covers 2-4
    (report,) = [m["data"] for m in server.run(prompt) if m["type"] == "hyca.report"]
    assert f"{MAP} has no solvers for interval 5: using those chosen for N=4" in report["notes"][0]


# -- a map changed on disk while a prompt uses it (issue 11) --------------------------------------
def gated_prompt(map_name: str, flag: str) -> dict:
    """Two sampling passes through one HyCa Apply with the map, held between them at a gate."""
    prompt = apply_prompt(map_name, apply_id="8", second_pass=True, seed=107)
    prompt["13"] = {"class_type": "HyCaTestGate", "inputs": {"samples": ["9", 0], "flag": flag}}
    prompt["11"]["inputs"]["latent_image"] = ["13", 0]
    prompt["12"]["inputs"]["filename_prefix"] = "hyca-gated-" + _token(flag)
    return prompt


def _token(flag: str) -> str:
    """A file-name token unique to the flag's full path (tests share one server's output folder)."""
    import hashlib

    return hashlib.sha256(flag.encode()).hexdigest()[:12]


def second_pass_latent(server, flag: str):
    from safetensors.torch import load_file

    (path,) = (server.base / "output").glob(f"hyca-gated-{_token(flag)}_*.latent")
    return load_file(str(path))["latent_tensor"]


def run_gated(server, map_name, flag, change=None):
    """Run ``gated_prompt`` in a thread; once it waits at the gate, ``change()`` the disk, open the gate."""
    import threading

    result = {}

    def run():
        try:
            result["messages"] = server.run(gated_prompt(map_name, flag))
        except Exception as exc:  # noqa: BLE001 - raised in the test's thread below
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 120
    while not os.path.exists(flag + ".waiting"):
        assert time.monotonic() < deadline and thread.is_alive(), server.log_tail()
        time.sleep(0.05)
    if change is not None:
        change()
    open(flag, "w").close()
    thread.join(180)
    if "error" in result:
        raise AssertionError(f"the prompt failed: {result['error']}")
    return result["messages"]


@pytest.mark.parametrize("change", ["overwrite", "truncate", "replace"])
def test_a_map_changed_on_disk_mid_prompt_harms_neither_the_prompt_nor_the_server(server, tmp_path, change):
    """The running prompt finishes with the map it loaded (its second pass equals an undisturbed
    run's), the server stays up, and the next prompt sees the new file, or a clear error."""
    import shutil

    name = f"mid-{change}.safetensors"
    path = server.maps_dir / name
    shutil.copy(server.maps_dir / MAP, path)
    calm = str(tmp_path / "calm")
    run_gated(server, name, calm)
    other = server.maps_dir / "other.safetensors"

    def disturb():
        if change == "overwrite":  # same size, other bytes
            path.write_bytes(b"\x7f" * path.stat().st_size)
        elif change == "truncate":
            with open(path, "r+b") as f:
                f.truncate(100)
        else:  # a different valid map copied over it
            data = (server.maps_dir / MAP).read_bytes()
            other_map = load_solver_map_from_bytes(data)
            other_map.description = "the replacement"
            save_solver_map(other_map, str(other))
            os.replace(other, path)

    disturbed = str(tmp_path / "disturbed")
    messages = run_gated(server, name, disturbed, disturb)
    # ComfyUI serves the loader, HyCa Apply and the first pass from its cache (same inputs as the
    # calm run): the second pass samples with the map loaded before the file changed
    assert [m["data"]["node"] for m in messages if m["type"] == "hyca.report"] == ["8"]
    assert torch.equal(second_pass_latent(server, disturbed), second_pass_latent(server, calm))
    status, body = server.get("/hyca/map", name=MAP)
    assert status == 200  # the server is up and serves other maps
    status, body = server.get("/hyca/map", name=name)
    if change == "replace":
        assert status == 200 and body["description"] == "the replacement"
        run_gated(server, name, str(tmp_path / "after"))  # the next prompt loads the new map
    else:
        assert status == 422 and "not a readable safetensors file" in body["error"]
        with pytest.raises(RuntimeError, match="HyCa solver map unusable"):
            run_gated_or_fail(server, name, str(tmp_path / "after"))


def run_gated_or_fail(server, name, flag):
    """The next prompt with a broken map fails at the loader, before it reaches the gate."""
    prompt = gated_prompt(name, flag)
    prompt["9"]["inputs"]["seed"] = 108  # not served from the cache
    return server.run(prompt)


def load_solver_map_from_bytes(data: bytes):
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "m.safetensors")
        with open(path, "wb") as f:
            f.write(data)
        return load_solver_map(path)


# -- a map auto-calibration cannot write (issue 24, item 1) ----------------------------------------
def test_an_unwritable_auto_folder_never_costs_the_image(server):
    """``models/hyca/auto`` a plain file: the prompt still saves its image, the report says why no
    map was written and what to do, and the next run neither calibrates nor fails."""
    auto = server.maps_dir / "auto"
    moved = auto.with_name("auto-moved-by-test")
    if auto.exists():
        auto.rename(moved)
    auto.write_text("a file where the folder should be")
    try:
        for seed in (131, 132):
            prompt = apply_prompt(None, apply_id="8", seed=seed)
            prompt["8"]["inputs"]["auto_calibrate"] = True
            prompt["10"]["inputs"]["filename_prefix"] = f"hyca-unwritable-{seed}"
            (report,) = [m["data"] for m in server.run(prompt) if m["type"] == "hyca.report"]
            assert list((server.base / "output").glob(f"hyca-unwritable-{seed}_*.latent"))  # the image is kept
            assert any("auto is not a writable folder" in n and "writable folder" in n for n in report["notes"]), report
            assert report["status"] == "done" and all(c["predicted"] == 0 for c in report["conds"])
        assert auto.read_text() == "a file where the folder should be"
    finally:
        auto.unlink()
        if moved.exists():
            moved.rename(auto)


# -- maps whose text no page could show (issue 24, item 4) -----------------------------------------
@pytest.mark.parametrize("kind, words", [("surrogate", "lone surrogate"), ("huge family", "characters long")])
def test_routes_refuse_a_map_with_unshowable_text_clearly(server, kind, words):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from hyca_core.maps.format import _checksum, _text_checksum

    with safe_open(str(server.maps_dir / MAP), "pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    if kind == "surrogate":
        meta["hyca"] = meta["hyca"].replace('"description": "', '"description": "\\udcff', 1)
    else:
        header = json.loads(meta["hyca"])
        header["family"] = "f" * 500_000  # under the header cap: the field itself is refused
        meta["hyca"] = json.dumps(header)
    meta["checksum"], meta["header_checksum"] = _checksum(tensors), _text_checksum(meta["hyca"])
    name = f"unshowable-{kind.replace(' ', '-')}.safetensors"
    save_file(tensors, str(server.maps_dir / name), metadata=meta)
    try:
        for route in ("/hyca/map", "/hyca/map/chart"):
            status, body = server.get(route, name=name)
            assert status == 422 and words in body["error"] and len(json.dumps(body)) < 2000, (route, status, body)
    finally:
        (server.maps_dir / name).unlink()


# -- issue 24, items 2-5: what a shared map can do to the server -----------------------------------
def write_variant(server, name: str, edit_header=None, edit_meta=None, sign: bool = True) -> Path:
    """A copy of the server's calibrated map, its ``hyca`` JSON and metadata edited; both checksums
    recomputed unless ``sign`` is False (then the header checksum is left out, as an older map)."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from hyca_core.maps.format import _checksum, _text_checksum

    with safe_open(str(server.maps_dir / MAP), "pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    header = json.loads(meta["hyca"])
    if edit_header:
        edit_header(header)
    meta["hyca"] = json.dumps(header)
    meta["checksum"] = _checksum(tensors)
    if sign:
        meta["header_checksum"] = _text_checksum(meta["hyca"])
    else:
        meta.pop("header_checksum", None)
    if edit_meta:
        edit_meta(meta)
    path = server.maps_dir / name
    save_file(tensors, str(path), metadata=meta)
    return path


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def test_concurrent_requests_for_a_large_map_parse_it_once(server):
    """Item 2: eight concurrent requests for a 201 MiB map took a server from 1.0 to 4.1 GB. Now the
    first parses and the others wait for its answer, so the server grows by about one parse."""
    import threading
    import urllib.request

    from hyca_core.maps import ScopeAssignment, SolverMap
    from hyca_core.forecast.solvers import MAX_ANCHORS

    if not os.path.exists(f"/proc/{server.process.pid}/status"):
        pytest.skip("reads the server's memory from /proc (Linux)")
    hidden, intervals = 3072, tuple(range(2, 21))  # per channel, fitted at every interval: FLUX-sized
    scopes = {}
    for s in range(4):
        fitted = {n: torch.zeros(hidden, n, MAX_ANCHORS).index_fill_(2, torch.tensor([0]), 1.0) for n in intervals}
        scopes[f"scope{s}"] = ScopeAssignment(
            torch.arange(hidden, dtype=torch.int32), torch.zeros(len(intervals), hidden, dtype=torch.int32),
            torch.rand(3, hidden, len(intervals)), fitted, [f"double_blocks.{s}.img_attn"])
    big = SolverMap(family="flux", architecture={"hidden_size": hidden, "blocks": {"double": 4}},
                    granularity="module", pool=("reuse", "taylor1"), intervals=intervals, warmup=2, scopes=scopes,
                    mode="fit")
    path = server.maps_dir / "large.safetensors"
    save_solver_map(big, str(path))
    size = path.stat().st_size
    try:
        before = peak = rss_bytes(server.process.pid)
        answers, done = [], threading.Event()

        def watch():
            nonlocal peak
            while not done.is_set():
                peak = max(peak, rss_bytes(server.process.pid))
                time.sleep(0.005)

        def ask(route):
            with urllib.request.urlopen(f"{server.url}{route}?name=large.safetensors", timeout=120) as page:
                answers.append((page.status, len(page.read())))

        watcher = threading.Thread(target=watch)
        watcher.start()
        started = time.perf_counter()
        threads = [threading.Thread(target=ask, args=(route,)) for route in ["/hyca/map", "/hyca/map/chart"] * 4]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        seconds = time.perf_counter() - started
        done.set()
        watcher.join()
        grown = peak - before
        print(f"8 concurrent requests for a {size / 2 ** 20:.0f} MiB map: {seconds:.1f} s, the server grew "
              f"{grown / 2 ** 20:.0f} MiB")
        assert len(answers) == 8 and all(status == 200 for status, _ in answers)
        assert grown < 4 * size, (grown, size)  # each concurrent parse holds about 3x the file
        again = time.perf_counter()
        assert server.get("/hyca/map", name="large.safetensors")[0] == 200
        assert time.perf_counter() - again < 0.5 * seconds  # the second time: the kept answer
    finally:
        path.unlink()


@pytest.mark.parametrize("kind", ["200,000 intervals", "20,000 scopes"])
def test_a_map_of_absurd_lists_is_refused_at_once_with_a_short_answer(server, kind):
    """Item 3: a valid 33 MB map of 200,000 intervals took the details 28-43 s (60 MB of JSON) and
    the chart 132 s. Its tensors match its header here, so only the bounds refuse it."""
    import json

    from safetensors.torch import save_file

    from hyca_core.maps.format import _checksum, _text_checksum

    channels, pool = 16, ["reuse", "taylor1"]
    if kind.endswith("intervals"):
        intervals, names = list(range(2, 200_002)), ["double_blocks.*.img_attn"]
    else:
        intervals, names = [2, 3], [f"s{i}" for i in range(20_000)]
    header = {"family": "flux", "architecture": {"hidden_size": channels, "blocks": {"double": 2}},
              "granularity": "module", "pool": pool, "intervals": intervals, "warmup": 2, "mode": "choose",
              "provenance": {}, "scopes": {n: {"features": []} for n in names}}
    tensors = {}
    for n in names:
        tensors[f"scopes/{n}/labels"] = torch.zeros(channels, dtype=torch.int32)
        tensors[f"scopes/{n}/choices"] = torch.zeros(len(intervals), 1, dtype=torch.int32)
        tensors[f"scopes/{n}/errors"] = torch.ones(len(pool), 1, len(intervals))
    text = json.dumps(header)
    name = f"absurd-{kind.split()[1]}.safetensors"
    save_file(tensors, str(server.maps_dir / name), metadata={
        "format": "hyca-solver-map", "format_version": "1", "hyca": text, "header_checksum": _text_checksum(text),
        "checksum": _checksum(tensors)})
    try:
        for route in ("/hyca/map", "/hyca/map/chart"):
            started = time.perf_counter()
            status, body = server.get(route, name=name)
            assert time.perf_counter() - started < 3.0
            assert status == 422 and len(json.dumps(body)) < 1000, (route, status, body)
            assert "at most" in body["error"], body
    finally:
        (server.maps_dir / name).unlink()


def test_a_placement_sampled_at_another_step_count_is_noted_in_the_report(server):
    """Item 4: a calibrated placement was rescaled to the run's step count without a word."""
    name = "placed.safetensors"
    write_variant(server, name, lambda h: h["provenance"].update(
        schedules={"4": {"full_steps": [0, 3, 7, 11], "steps": 12, "interval": 3}}))
    try:
        prompt = apply_prompt(name, apply_id="8", seed=141)
        prompt["8"]["inputs"].update(schedule="calibrated", full_steps=4)
        prompt["9"]["inputs"]["steps"] = 6
        (report,) = [m["data"] for m in server.run(prompt) if m["type"] == "hyca.report"]
        note = next(n for n in report["notes"] if "was calibrated for 12 steps" in n)
        assert "this run samples 6, so the full steps moved to 0, 1, 3, 5 (4 full)" in note, note
        assert report["schedule"] == "calibrated"
        prompt["9"]["inputs"].update(steps=12, seed=142)  # the placement's own step count: no note
        (report,) = [m["data"] for m in server.run(prompt) if m["type"] == "hyca.report"]
        assert not any("was calibrated for 12 steps" in n for n in report["notes"]), report["notes"]
    finally:
        (server.maps_dir / name).unlink()


def test_calibrate_refuses_denoise_0_before_sampling(server):
    """Item 4: denoise 0 sampled the whole run, then said "nothing was observed"."""
    from comfy_server import calibrate_prompt

    prompt = calibrate_prompt("never-written")
    prompt["5"]["inputs"]["denoise"] = 0.0
    with pytest.raises(RuntimeError, match="denoise is 0"):
        server.run(prompt)
    assert not (server.maps_dir / "never-written.safetensors").exists()


def test_a_linked_file_that_is_no_map_is_refused_without_echoing_it(server, tmp_path):
    """Item 4: a symlinked /etc/passwd showed as "root:x:0" in the refusal."""
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n" * 4)
    link = server.maps_dir / "linked.safetensors"
    link.symlink_to(secret)
    try:
        for route in ("/hyca/map", "/hyca/map/chart"):
            status, body = server.get(route, name="linked.safetensors")
            assert status == 422 and "not a readable safetensors file" in body["error"], body
            assert "root" not in body["error"] and str(int.from_bytes(b"root:x:0", "little")) not in body["error"]
    finally:
        link.unlink()


def test_an_unsigned_map_is_refused_until_signed(server):
    """Item 5: without ``header_checksum`` (or with the key renamed) an edited header loaded silently."""
    import subprocess
    import sys

    name = "unsigned.safetensors"
    path = write_variant(server, name, lambda h: h.update(description="edited by hand"), sign=False)
    try:
        status, body = server.get("/hyca/map", name=name)
        assert status == 422 and "header_checksum" in body["error"] and "hyca_core.maps sign" in body["error"], body
        with pytest.raises(RuntimeError, match="hyca_core.maps sign"):
            server.run(apply_prompt(name, apply_id="8", seed=143))  # the loader node says the same
        signed = subprocess.run([sys.executable, "-m", "hyca_core.maps", "sign", str(path)], cwd=ROOT,
                                capture_output=True, text=True)
        assert signed.returncode == 0, signed.stderr
        status, body = server.get("/hyca/map", name=name)
        assert status == 200 and body["description"] == "edited by hand"
        renamed = write_variant(server, name, edit_meta=lambda m: m.update(sha=m.pop("header_checksum")))
        assert renamed == path and server.get("/hyca/map", name=name)[0] == 422
    finally:
        path.unlink()
