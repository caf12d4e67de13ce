"""A real ComfyUI server on localhost with this pack installed, for the server and browser tests.

The server runs ComfyUI's own ``main.py`` (CPU) with ``--base-directory`` set to a temporary folder
whose ``custom_nodes/`` links this pack and the test-only nodes of ``comfy_test_nodes`` (a tiny
random-weight model, its conditioning and latent: no weights are ever downloaded).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACK_DIR_NAME = "ComfyUI-HyCa"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_tracked_files(source: Path, target: Path) -> None:
    """The files git tracks (with changes not yet committed): what a clone of the pack holds."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=source,
                            capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        if (source / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, target / name)


class ComfyServer:
    def __init__(self, comfyui: str, base: Path, python: str = sys.executable, front_end_root: str | None = None,
                 with_pack: bool = True, copy_pack: bool = False):
        """``front_end_root``: a frontend's static folder (``--front-end-root``), else the pinned one;
        ``with_pack=False``: the same server without the pack, for the browser test's baseline;
        ``copy_pack``: copy the pack's tracked files, as a ``git clone`` has them, instead of a link."""
        self.comfyui, self.base, self.python = comfyui, Path(base), python
        self.front_end_root, self.with_pack, self.copy_pack = front_end_root, with_pack, copy_pack
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = None
        self.log_path = self.base / "server.log"

    @property
    def maps_dir(self) -> Path:
        return self.base / "models" / "hyca"

    def start(self, timeout: float = 240.0) -> "ComfyServer":
        nodes = self.base / "custom_nodes"
        nodes.mkdir(parents=True, exist_ok=True)
        self.maps_dir.mkdir(parents=True, exist_ok=True)
        # ComfyUI ships input/example.png, which the Qwen-Image-Edit workflows load: as on a real install
        example = Path(self.comfyui) / "input" / "example.png"
        if example.is_file() and not (self.base / "input" / "example.png").exists():
            (self.base / "input").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(example, self.base / "input" / "example.png")
        links = [("hyca_test_nodes", ROOT / "tests" / "comfy_test_nodes")]
        if self.with_pack and self.copy_pack:
            copy_tracked_files(ROOT, nodes / PACK_DIR_NAME)
        elif self.with_pack:
            links.append((PACK_DIR_NAME, ROOT))
        for name, target in links:
            if not (nodes / name).exists():
                (nodes / name).symlink_to(target, target_is_directory=True)
        command = [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                   "--base-directory", str(self.base), "--disable-auto-launch"]
        if self.front_end_root:
            command += ["--front-end-root", str(self.front_end_root)]
        ready = "/object_info/HyCaApply" if self.with_pack else "/object_info/HyCaTestModel"
        log = open(self.log_path, "w")
        self.process = subprocess.Popen(command, cwd=self.comfyui, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                status, info = self.get(ready)
                if status == 200 and ready.rsplit("/", 1)[1] in info:
                    return self
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not serve {ready} within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def get(self, path: str, **query) -> tuple[int, dict]:
        """(status, JSON body) of a GET; 4xx/5xx are returned, not raised."""
        url = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            body = error.read()
            try:
                return error.code, json.loads(body)
            except ValueError:
                return error.code, {"raw": body.decode(errors="replace")}

    def run(self, prompt: dict, timeout: float = 300.0) -> list[dict]:
        """Queue an API-format prompt as a websocket client and return every JSON message the server
        sent that client until the prompt finished. Raises with the server's error if it failed."""
        return asyncio.run(self._run(prompt, timeout))

    async def _run(self, prompt: dict, timeout: float) -> list[dict]:
        import aiohttp

        client_id = uuid.uuid4().hex
        messages = []
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{self.url}/ws?clientId={client_id}") as ws:
                async with session.post(f"{self.url}/prompt", json={"prompt": prompt, "client_id": client_id}) as r:
                    body = await r.json()
                    if r.status != 200:
                        raise RuntimeError(f"prompt refused ({r.status}): {json.dumps(body)[:2000]}")
                prompt_id = body["prompt_id"]
                async with asyncio.timeout(timeout):
                    async for msg in ws:
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            continue  # binary previews
                        message = json.loads(msg.data)
                        messages.append(message)
                        data = message.get("data") or {}
                        if data.get("prompt_id") != prompt_id:
                            continue
                        if message["type"] == "execution_error":
                            raise RuntimeError(f"prompt failed: {data.get('exception_message')}\n{self.log_tail()}")
                        if message["type"] == "execution_success" or (
                                message["type"] == "executing" and data.get("node") is None):
                            return messages
        raise RuntimeError("the websocket closed before the prompt finished")


# -- API-format prompts over the tiny test model --------------------------------------------------
def _inputs(family: str = "flux") -> dict:
    return {
        "1": {"class_type": "HyCaTestModel", "inputs": {"family": family, "seed": 0}},
        "2": {"class_type": "HyCaTestConditioning", "inputs": {"family": family, "seed": 1}},
        "3": {"class_type": "HyCaTestConditioning", "inputs": {"family": family, "seed": 2}},
        "4": {"class_type": "HyCaTestLatent", "inputs": {"family": family}},
    }


SAMPLING = {"seed": 0, "steps": 12, "cfg": 2.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}


def calibrate_prompt(name: str) -> dict:
    prompt = _inputs()
    prompt["5"] = {"class_type": "HyCaCalibrate", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], **SAMPLING,
        "runs": 1, "clusters": 2, "intervals": "2-4", "warmup_steps": 2, "cooldown_steps": 1, "fit": False,
        "granularity": "module", "refine": "off", "name": name, "description": "written by the server tests"}}
    prompt["6"] = {"class_type": "PreviewImage", "inputs": {"images": ["5", 2]}}
    return prompt


def apply_prompt(map_name: str | None, apply_id: str = "8", second_pass: bool = False, seed: int = 0) -> dict:
    """Loader -> Apply -> KSampler -> SaveLatent; ``second_pass``: a second KSampler (8 steps, denoise 0.5) on
    the first one's result through the same HyCa Apply, like a hires-fix pass. Give each test its own
    ``seed``: ComfyUI serves a sampler whose inputs it has seen from its cache, and then no run happens."""
    prompt = _inputs()
    apply_inputs = {"model": ["1", 0], "interval": 3, "warmup_steps": 2, "cooldown_steps": 1, "start_percent": 0.0,
                    "end_percent": 1.0, "granularity": "module", "cache_device": "auto", "enabled": True}
    if map_name is not None:
        prompt["7"] = {"class_type": "HyCaSolverMapLoader", "inputs": {"map_name": map_name}}
        apply_inputs["solver_map"] = ["7", 0]
    prompt[apply_id] = {"class_type": "HyCaApply", "inputs": apply_inputs}
    prompt["9"] = {"class_type": "KSampler", "inputs": {
        "model": [apply_id, 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], **SAMPLING,
        "seed": seed}}
    prompt["10"] = {"class_type": "SaveLatent", "inputs": {"samples": ["9", 0], "filename_prefix": "hyca-test"}}
    if second_pass:
        prompt["11"] = {"class_type": "KSampler", "inputs": {
            "model": [apply_id, 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["9", 0],
            **SAMPLING, "steps": 8, "denoise": 0.5}}
        prompt["12"] = {"class_type": "SaveLatent", "inputs": {"samples": ["11", 0], "filename_prefix": "hyca-pass2"}}
    return prompt


def all_nodes_prompt(map_name: str) -> dict:
    """Calibrate with its chart previewed, and Loader -> Apply -> two KSampler passes: the three HyCa nodes."""
    return {**calibrate_prompt(map_name.removesuffix(".safetensors")), **apply_prompt(map_name, second_pass=True)}


def core_prompt() -> dict:
    """The tiny model sampled without the pack: what the browser test's baseline page runs."""
    prompt = _inputs()
    prompt["9"] = {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], **SAMPLING}}
    prompt["10"] = {"class_type": "SaveLatent", "inputs": {"samples": ["9", 0], "filename_prefix": "baseline"}}
    return prompt


def start_pack_server(comfyui: str, base: Path, front_end_root: str | None = None) -> ComfyServer:
    """A server with the pack, a calibrated map ``tiny-flux.safetensors`` (made by a HyCa Calibrate
    prompt, its messages kept in ``.calibration``), a broken map and a file outside the map folders."""
    import struct

    server = ComfyServer(comfyui, base, front_end_root=front_end_root).start()
    try:
        (server.maps_dir / "broken.safetensors").write_bytes(struct.pack("<Q", 12) + b'{"oops": 1}')
        (Path(base) / "outside.safetensors").write_bytes(b"not in a map folder")
        server.calibration = server.run(calibrate_prompt("tiny-flux"))
    except BaseException:
        server.stop()
        raise
    return server
