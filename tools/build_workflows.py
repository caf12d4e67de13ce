"""Write example_workflows/*.json: FLUX.1-dev text-to-image, Qwen-Image-Edit and HunyuanVideo
text-to-video, each as a calibrate and an apply variant, in ComfyUI's workflow format.

    python tools/build_workflows.py

Only core ComfyUI nodes plus ours. Widget values follow each node's input order (a seed widget
with control_after_generate carries one extra value, as ComfyUI saves it).
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "example_workflows"


class Graph:
    def __init__(self):
        self.nodes, self.links, self.groups = [], [], []
        self.growth = {}  # node id -> height a node grows by on the page (HyCa Apply's run report)

    def node(self, type_, inputs=(), outputs=(), widgets=(), title=None, x=0, y=0, width=320, mode=0, height=None):
        node = {
            "id": len(self.nodes) + 1, "type": type_, "pos": [x, y],
            "size": [width, height or 60 + 26 * (len(widgets) + len(inputs))],
            "flags": {}, "order": len(self.nodes), "mode": mode,
            "inputs": [{"name": n, "type": t, "link": None} for n, t in inputs],
            "outputs": [{"name": n, "type": t, "links": [], "slot_index": i} for i, (n, t) in enumerate(outputs)],
            "properties": {"Node name for S&R": type_}, "widgets_values": list(widgets),
        }
        if title:
            node["title"] = title
        self.nodes.append(node)
        return node

    def link(self, source, slot, target, input_name):
        index = next(i for i, inp in enumerate(target["inputs"]) if inp["name"] == input_name)
        link_id = len(self.links) + 1
        type_ = source["outputs"][slot]["type"]
        self.links.append([link_id, source["id"], slot, target["id"], index, type_])
        source["outputs"][slot]["links"].append(link_id)
        target["inputs"][index]["link"] = link_id

    def stack(self) -> None:
        """Push nodes of one column down until none overlaps the one above it, title bars included."""
        columns = {}
        for n in self.nodes:
            columns.setdefault(n["pos"][0], []).append(n)
        for column in columns.values():
            column.sort(key=lambda n: n["pos"][1])
            for above, below in zip(column, column[1:]):
                lowest = above["pos"][1] + above["size"][1] + self.growth.get(above["id"], 0) + TITLE + GAP
                below["pos"][1] = max(below["pos"][1], lowest)

    def group(self, title: str, nodes, color: str = "#3f3f8f") -> None:
        """A frame around ``nodes`` with room for its own title above their title bars."""
        x0 = min(n["pos"][0] for n in nodes) - 10
        y0 = min(n["pos"][1] for n in nodes) - TITLE - 46
        x1 = max(n["pos"][0] + n["size"][0] for n in nodes) + 10
        y1 = max(n["pos"][1] + n["size"][1] + self.growth.get(n["id"], 0) for n in nodes) + 10
        self.groups.append({"id": len(self.groups) + 1, "title": title, "bounding": [x0, y0, x1 - x0, y1 - y0],
                            "color": color, "font_size": 24, "flags": {}})

    def dump(self, path: Path, note: str, requires: dict | None = None):
        extra = {"hyca_note": note, **({"hyca_requires": requires} if requires else {})}
        data = {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                "links": self.links, "groups": self.groups, "config": {}, "extra": extra, "version": 0.4}
        path.write_text(json.dumps(data, indent=1) + "\n")


CALIBRATE_IO = dict(
    inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent_image", "LATENT")],
    outputs=[("solver_map", "HYCA_SOLVER_MAP"), ("LATENT", "LATENT"), ("chart", "IMAGE")],
)
APPLY_IO = dict(inputs=[("model", "MODEL"), ("solver_map", "HYCA_SOLVER_MAP")], outputs=[("MODEL", "MODEL")])
KSAMPLER_IO = dict(inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                           ("latent_image", "LATENT")], outputs=[("LATENT", "LATENT")])


GRANULARITY = "final"  # HyCa Apply's default: the workflows calibrate and sample at it


def calibrate_widgets(steps, cfg, sampler, scheduler, name, warmup, full_steps, intervals="2-8", description="",
                      step_range=(0, 10000), add_noise=True):
    # seed, control, steps, cfg, sampler, scheduler, denoise, runs, clusters, intervals, warmup_steps,
    # cooldown_steps, fit, granularity, refine, name, description, full_step_budgets, start_at_step,
    # end_at_step, add_noise; the budget is the apply workflow's full_steps, so that its map holds a
    # calibrated placement (with learned step weights) for schedule = calibrated
    return [0, "fixed", steps, cfg, sampler, scheduler, 1.0, 1, 2, intervals, warmup, 1, False, GRANULARITY, "fast",
            name, description, str(full_steps), *step_range, add_noise]


def apply_widgets(interval, warmup, full_steps):
    # interval, warmup_steps, cooldown_steps, start_percent, end_percent, granularity, cache_device, enabled,
    # auto_calibrate, schedule, full_steps, anchor_precision, max_cache_gb: HyCa Apply's defaults (granularity
    # auto: the map's), the spread schedule of full_steps
    return [interval, warmup, 1, 0.0, 1.0, "auto", "auto", True, False, "spread", full_steps, "model", 0.0]


def flux(variant):
    g = Graph()
    unet = g.node("UNETLoader", outputs=[("MODEL", "MODEL")], widgets=["flux1-dev.safetensors", "default"], y=0)
    clip = g.node("DualCLIPLoader", outputs=[("CLIP", "CLIP")], widgets=["clip_l.safetensors", "t5xxl_fp16.safetensors", "flux", "default"], y=130)
    vae = g.node("VAELoader", outputs=[("VAE", "VAE")], widgets=["ae.safetensors"], y=330)
    text = g.node("CLIPTextEncode", inputs=[("clip", "CLIP")], outputs=[("CONDITIONING", "CONDITIONING")],
                  widgets=["a red fox in a snowy forest at dawn, detailed fur, soft light"], x=360, y=0)
    guidance = g.node("FluxGuidance", inputs=[("conditioning", "CONDITIONING")], outputs=[("CONDITIONING", "CONDITIONING")], widgets=[3.5], x=720, y=0)
    negative = g.node("ConditioningZeroOut", inputs=[("conditioning", "CONDITIONING")], outputs=[("CONDITIONING", "CONDITIONING")], x=720, y=120)
    empty = g.node("EmptySD3LatentImage", outputs=[("LATENT", "LATENT")], widgets=[1024, 1024, 1], x=360, y=220)
    g.link(clip, 0, text, "clip")
    g.link(text, 0, guidance, "conditioning")
    g.link(text, 0, negative, "conditioning")
    return g, unet, vae, guidance, negative, empty, dict(steps=50, cfg=1.0, sampler="euler", scheduler="simple", interval=6,
                                                         warmup=3, full_steps=12)


def qwen_edit(variant):
    g = Graph()
    unet = g.node("UNETLoader", outputs=[("MODEL", "MODEL")], widgets=["qwen_image_edit_fp8_e4m3fn.safetensors", "default"], y=0)
    shift = g.node("ModelSamplingAuraFlow", inputs=[("model", "MODEL")], outputs=[("MODEL", "MODEL")], widgets=[3.1], x=360, y=0)
    clip = g.node("CLIPLoader", outputs=[("CLIP", "CLIP")], widgets=["qwen_2.5_vl_7b_fp8_scaled.safetensors", "qwen_image", "default"], y=130)
    vae = g.node("VAELoader", outputs=[("VAE", "VAE")], widgets=["qwen_image_vae.safetensors"], y=330)
    image = g.node("LoadImage", outputs=[("IMAGE", "IMAGE"), ("MASK", "MASK")], widgets=["example.png", "image"], y=470)
    scale = g.node("ImageScaleToTotalPixels", inputs=[("image", "IMAGE")], outputs=[("IMAGE", "IMAGE")], widgets=["lanczos", 1.0], x=360, y=470)
    positive = g.node("TextEncodeQwenImageEdit", inputs=[("clip", "CLIP"), ("vae", "VAE"), ("image", "IMAGE")],
                      outputs=[("CONDITIONING", "CONDITIONING")], widgets=["make it a watercolor painting"], x=720, y=130)
    negative = g.node("TextEncodeQwenImageEdit", inputs=[("clip", "CLIP"), ("vae", "VAE"), ("image", "IMAGE")],
                      outputs=[("CONDITIONING", "CONDITIONING")], widgets=[""], x=720, y=330)
    encode = g.node("VAEEncode", inputs=[("pixels", "IMAGE"), ("vae", "VAE")], outputs=[("LATENT", "LATENT")], x=720, y=560)
    g.link(unet, 0, shift, "model")
    g.link(image, 0, scale, "image")
    for node in (positive, negative):
        g.link(clip, 0, node, "clip")
        g.link(vae, 0, node, "vae")
        g.link(scale, 0, node, "image")
    g.link(scale, 0, encode, "pixels")
    g.link(vae, 0, encode, "vae")
    return g, shift, vae, positive, negative, encode, dict(steps=50, cfg=4.0, sampler="euler", scheduler="simple", interval=6,
                                                           warmup=3, full_steps=12)


def hunyuan(variant):
    g = Graph()
    unet = g.node("UNETLoader", outputs=[("MODEL", "MODEL")], widgets=["hunyuan_video_t2v_720p_bf16.safetensors", "default"], y=0)
    shift = g.node("ModelSamplingSD3", inputs=[("model", "MODEL")], outputs=[("MODEL", "MODEL")], widgets=[7.0], x=360, y=0)
    clip = g.node("DualCLIPLoader", outputs=[("CLIP", "CLIP")], widgets=["clip_l.safetensors", "llava_llama3_fp8_scaled.safetensors", "hunyuan_video", "default"], y=130)
    vae = g.node("VAELoader", outputs=[("VAE", "VAE")], widgets=["hunyuan_video_vae_bf16.safetensors"], y=330)
    text = g.node("CLIPTextEncode", inputs=[("clip", "CLIP")], outputs=[("CONDITIONING", "CONDITIONING")],
                  widgets=["a paper boat drifting down a rainy street, cinematic"], x=360, y=130)
    guidance = g.node("FluxGuidance", inputs=[("conditioning", "CONDITIONING")], outputs=[("CONDITIONING", "CONDITIONING")], widgets=[6.0], x=720, y=130)
    negative = g.node("ConditioningZeroOut", inputs=[("conditioning", "CONDITIONING")], outputs=[("CONDITIONING", "CONDITIONING")], x=720, y=250)
    empty = g.node("EmptyHunyuanLatentVideo", outputs=[("LATENT", "LATENT")], widgets=[848, 480, 33, 1], x=360, y=330)
    g.link(unet, 0, shift, "model")
    g.link(clip, 0, text, "clip")
    g.link(text, 0, guidance, "conditioning")
    g.link(text, 0, negative, "conditioning")
    return g, shift, vae, guidance, negative, empty, dict(steps=50, cfg=1.0, sampler="euler", scheduler="simple", interval=6,
                                                          warmup=1, full_steps=12)


BYPASS = 4  # LiteGraph node mode: skipped, its links left out of the prompt
TITLE = 30  # the frontend draws a node's title bar above its position
GAP = 20
PANEL = 330  # the pack's page panels (web/hyca.js): up to 320 px, then they scroll
APPLY_NOTE = """## HyCa on this model

**Runs as loaded**: HyCa Apply without a map computes {full_steps} of the {steps} steps (the first, the
last two, the rest spread between) and forecasts the others' final hidden state with `hermite1`.

**Calibrating adds** a solver per channel cluster, checked against every uniform solver on held-out
seeds, and a placement of the {full_steps} full steps with step weights learned for it: run the template
**{calibrate}** (Templates, ComfyUI-HyCa) once. It writes `models/hyca/{name}.safetensors`.

Then select the **HyCa Solver Map Loader** and press **Ctrl+B** to stop bypassing it (press **R** first
if the map is not listed), and set HyCa Apply's **schedule** to **calibrated**."""


def finish(g, model, vae, positive, negative, latent, s, variant, name, video, calibrate=""):
    x = 1100
    if variant == "calibrate":
        # images: the closed-loop check compares decoded images (the optional vae input); video: it
        # compares latents, since decoding every checked video would cost more than sampling it
        slots = dict(CALIBRATE_IO, inputs=CALIBRATE_IO["inputs"] + ([] if video else [("vae", "VAE")]))
        sampler = g.node("HyCaCalibrate", **slots, x=x, y=0, width=360,
                         widgets=calibrate_widgets(s["steps"], s["cfg"], s["sampler"], s["scheduler"], name, s["warmup"],
                                                   s["full_steps"],
                                                   description=f"{name}: calibrated with the example workflow"))
        if not video:
            g.link(vae, 0, sampler, "vae")
        chart = g.node("PreviewImage", inputs=[("images", "IMAGE")], title="Calibration chart", x=x,
                       y=sampler["size"][1] + TITLE + GAP, width=380, height=300)
        g.link(sampler, 2, chart, "images")
    else:
        # bypassed (mode 4) until the calibrate workflow has written the map: the workflow then runs
        # as loaded, at the uniform default; the note says what calibrating adds
        # sized as the page draws them: the loader's details panel (440 wide, up to 320 high) and
        # HyCa Apply's run report (up to 320 high) below their widgets
        loader = g.node("HyCaSolverMapLoader", outputs=[("solver_map", "HYCA_SOLVER_MAP")], widgets=[f"{name}.safetensors"],
                        x=x, y=0, mode=BYPASS, width=440, height=60 + 26 + PANEL)
        note = APPLY_NOTE.format(name=name, calibrate=calibrate, full_steps=s["full_steps"], steps=s["steps"])
        g.node("MarkdownNote", widgets=[note], title="HyCa: read me", x=x - 400, y=-(300 + TITLE + GAP), width=380,
               height=300)
        widgets = apply_widgets(s["interval"], s["warmup"], s["full_steps"])
        # saved at its size before a run; its report appears after one, below it, inside the group
        apply = g.node("HyCaApply", **APPLY_IO, widgets=widgets, x=x, y=loader["size"][1] + TITLE + GAP,
                       height=60 + 26 * (len(widgets) + 2))
        g.growth[apply["id"]] = PANEL
        g.link(model, 0, apply, "model")
        g.link(loader, 0, apply, "solver_map")
        model = apply
        sampler = g.node("KSampler", **KSAMPLER_IO, x=x + 480, y=0,
                         widgets=[0, "fixed", s["steps"], s["cfg"], s["sampler"], s["scheduler"], 1.0])
    g.link(model, 0, sampler, "model")
    g.link(positive, 0, sampler, "positive")
    g.link(negative, 0, sampler, "negative")
    g.link(latent, 0, sampler, "latent_image")
    slot = 1 if variant == "calibrate" else 0
    right = x + 860
    if video:
        decode = g.node("VAEDecodeTiled", inputs=[("samples", "LATENT"), ("vae", "VAE")], outputs=[("IMAGE", "IMAGE")],
                        widgets=[256, 64, 64, 8], x=right, y=0)
    else:
        decode = g.node("VAEDecode", inputs=[("samples", "LATENT"), ("vae", "VAE")], outputs=[("IMAGE", "IMAGE")], x=right, y=0)
    g.link(sampler, slot, decode, "samples")
    g.link(vae, 0, decode, "vae")
    if video:  # as core video workflows do: frames -> CreateVideo -> SaveVideo
        frames = g.node("CreateVideo", inputs=[("images", "IMAGE")], outputs=[("VIDEO", "VIDEO")], widgets=[24.0],
                        x=right + 360, y=0)
        g.link(decode, 0, frames, "images")
        save = g.node("SaveVideo", inputs=[("video", "VIDEO")], widgets=[f"hyca/{name}-{variant}", "auto", "auto"],
                      x=right + 720, y=0, height=300)
        g.link(frames, 0, save, "video")
    else:
        save = g.node("SaveImage", inputs=[("images", "IMAGE")], widgets=[f"hyca/{name}-{variant}"], x=right + 360,
                      y=0, height=300)
        g.link(decode, 0, save, "images")
    g.stack()
    g.group("HyCa", [n for n in g.nodes if n["type"].startswith("HyCa") or n.get("title") == "Calibration chart"])


MODELS = {"flux-dev-t2i": "FLUX.1-dev", "qwen-image-edit": "Qwen-Image-Edit", "hunyuan-video-t2v": "HunyuanVideo",
          "wan22-t2v": "Wan 2.2 14B", "flux2-dev-t2i": "FLUX.2-dev"}
STEPS = {"calibrate": "1 calibrate a solver map", "apply": "2 sample with the map"}


def template_name(stem: str, variant: str) -> str:
    """The file name, which is what the template browser shows: its cards' title and description are
    the name (ComfyUI frontend 1.27 and 1.58: ``getTemplateTitle``), and newer servers list a pack's
    workflows sorted by name (``collect_workflow_templates`` in app/custom_node_manager.py,
    Comfy-Org/ComfyUI fcd026bf), so each model's calibrate card comes before its apply card."""
    return f"HyCa {MODELS[stem]} {STEPS[variant]}"


def thumbnail(g: Graph, title: str, path: Path) -> None:
    """The template browser's card (``<workflow>.jpg``): the workflow's nodes as a small map, HyCa's
    in the pack colour, under its title. Drawn with Pillow from the graph itself, so it stays true."""
    from PIL import Image, ImageDraw, ImageFont

    width, height, top = 512, 384, 124
    image = Image.new("RGB", (width, height), (32, 34, 38))
    draw = ImageDraw.Draw(image)
    # readable at card size (about 230 px wide): Pillow's own scalable font, no system font needed
    draw.text((16, 12), "ComfyUI-HyCa", fill=(150, 160, 255), font=ImageFont.load_default(size=22))
    draw.multiline_text((16, 42), title, fill=(235, 235, 235), font=ImageFont.load_default(size=28), spacing=6)
    shown = [n for n in g.nodes if n["type"] != "MarkdownNote"]
    x0 = min(n["pos"][0] for n in shown)
    y0 = min(n["pos"][1] for n in shown)
    x1 = max(n["pos"][0] + n["size"][0] for n in shown)
    y1 = max(n["pos"][1] + n["size"][1] for n in shown)
    scale = min((width - 32) / (x1 - x0), (height - top - 16) / (y1 - y0))
    at = lambda x, y: (16 + (x - x0) * scale, top + (y - y0) * scale)  # noqa: E731
    for source, target in ((l[1], l[3]) for l in g.links):
        a, b = g.nodes[source - 1], g.nodes[target - 1]
        draw.line([at(a["pos"][0] + a["size"][0], a["pos"][1] + 12), at(b["pos"][0], b["pos"][1] + 12)],
                  fill=(110, 110, 120), width=1)
    for n in shown:
        hyca = n["type"].startswith("HyCa")
        fill = (60, 70, 170) if hyca else (58, 60, 66)
        if n.get("mode") == BYPASS:
            fill = (110, 50, 120)
        box = [*at(*n["pos"]), *at(n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])]
        draw.rectangle(box, fill=fill, outline=(200, 200, 210) if hyca else (90, 92, 100))
        draw.text((box[0] + 3, box[1] + 2), n.get("title") or n["type"], fill=(240, 240, 240))
    image.save(path, quality=88)


KSAMPLER_ADVANCED_IO = KSAMPLER_IO  # the same sockets; its widgets differ
WAN22_NOTE = """## HyCa on Wan 2.2's two experts

Each expert samples half of the 20 steps (KSamplerAdvanced), and each has its own **HyCa Apply**:
each caches only its own steps.

**Runs as loaded**: without maps, each expert computes 4 of its 10 steps (the first, the last two and
one between) and forecasts the others' final hidden state with `hermite1`.

**Calibrating adds** a map per expert, with a placement of its 4 full steps and step weights learned
for it: run the template **{calibrate}** (Templates, ComfyUI-HyCa) once. It writes
`models/hyca/wan22-high.safetensors` and `wan22-low.safetensors`.

Then select both **HyCa Solver Map Loader** nodes and press **Ctrl+B** (press **R** first if the
maps are not listed), and set each HyCa Apply's **schedule** to **calibrated**."""


def wan22(variant: str) -> Graph:
    """Wan 2.2 14B text to video: a high-noise expert for steps 0-10, a low-noise one for 10-20, as
    ComfyUI's own Wan 2.2 template chains them (KSamplerAdvanced), with HyCa on each expert."""
    g = Graph()
    steps, split, cfg = 20, 10, 3.5
    high = g.node("UNETLoader", outputs=[("MODEL", "MODEL")], title="high-noise expert",
                  widgets=["wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", "default"], y=0)
    low = g.node("UNETLoader", outputs=[("MODEL", "MODEL")], title="low-noise expert",
                 widgets=["wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors", "default"], y=130)
    clip = g.node("CLIPLoader", outputs=[("CLIP", "CLIP")], widgets=["umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan", "default"], y=260)
    vae = g.node("VAELoader", outputs=[("VAE", "VAE")], widgets=["wan_2.1_vae.safetensors"], y=390)
    shifts = [g.node("ModelSamplingSD3", inputs=[("model", "MODEL")], outputs=[("MODEL", "MODEL")], widgets=[8.0], x=360, y=y)
              for y in (0, 130)]
    positive = g.node("CLIPTextEncode", inputs=[("clip", "CLIP")], outputs=[("CONDITIONING", "CONDITIONING")],
                      widgets=["a red fox trotting through fresh snow at dawn, cinematic"], x=360, y=260)
    negative = g.node("CLIPTextEncode", inputs=[("clip", "CLIP")], outputs=[("CONDITIONING", "CONDITIONING")],
                      widgets=["blurry, static, low quality"], x=360, y=390)
    empty = g.node("EmptyHunyuanLatentVideo", outputs=[("LATENT", "LATENT")], widgets=[832, 480, 33, 1], x=360, y=520)
    for expert, shift in zip((high, low), shifts):
        g.link(expert, 0, shift, "model")
    g.link(clip, 0, positive, "clip")
    g.link(clip, 0, negative, "clip")
    x = 760
    ranges = {"high": (0, split, True), "low": (split, 10000, False)}
    hyca_nodes, last = [], empty
    for (expert, (start, end, first)), shift in zip(ranges.items(), shifts):
        if variant == "calibrate":
            slots = dict(CALIBRATE_IO, inputs=CALIBRATE_IO["inputs"])
            node = g.node("HyCaCalibrate", **slots, x=x, y=0, width=360, title=f"HyCa Calibrate ({expert}-noise expert)",
                          widgets=calibrate_widgets(steps, cfg, "euler", "simple", f"wan22-{expert}", 1, 4, intervals="2-6",
                                                    description=f"Wan 2.2 14B {expert}-noise expert, steps {start}-{min(end, steps)} of {steps}",
                                                    step_range=(start, end), add_noise=first))
            g.link(shift, 0, node, "model")
            out_slot = 1
            hyca_nodes.append(node)
        else:
            loader = g.node("HyCaSolverMapLoader", outputs=[("solver_map", "HYCA_SOLVER_MAP")], x=x, y=0, mode=BYPASS,
                            widgets=[f"wan22-{expert}.safetensors"], width=440, height=60 + 26 + PANEL,
                            title=f"HyCa Solver Map Loader ({expert})")
            widgets = apply_widgets(5, 1, 4)
            apply = g.node("HyCaApply", **APPLY_IO, widgets=widgets, x=x, y=loader["size"][1] + TITLE + GAP,
                           height=60 + 26 * (len(widgets) + 2), title=f"HyCa Apply ({expert}-noise expert)")
            g.growth[apply["id"]] = PANEL
            g.link(shift, 0, apply, "model")
            g.link(loader, 0, apply, "solver_map")
            node = g.node("KSamplerAdvanced", **KSAMPLER_ADVANCED_IO, x=x + 480, y=0, title=f"KSampler ({expert}-noise expert)",
                          widgets=["enable" if first else "disable", 0, "fixed", steps, cfg, "euler", "simple", start, end,
                                   "enable" if first else "disable"])
            g.link(apply, 0, node, "model")
            out_slot = 0
            hyca_nodes += [loader, apply]
        g.link(positive, 0, node, "positive")
        g.link(negative, 0, node, "negative")
        g.link(last, 0 if last is empty else last_slot, node, "latent_image")
        last, last_slot = node, out_slot
        x += 480 if variant == "calibrate" else 960
    decode = g.node("VAEDecode", inputs=[("samples", "LATENT"), ("vae", "VAE")], outputs=[("IMAGE", "IMAGE")], x=x, y=0)
    g.link(last, last_slot, decode, "samples")
    g.link(vae, 0, decode, "vae")
    video = g.node("CreateVideo", inputs=[("images", "IMAGE")], outputs=[("VIDEO", "VIDEO")], widgets=[16.0], x=x + 360, y=0)
    g.link(decode, 0, video, "images")
    save = g.node("SaveVideo", inputs=[("video", "VIDEO")], widgets=[f"hyca/wan22-{variant}", "auto", "auto"],
                  x=x + 720, y=0, height=300)
    g.link(video, 0, save, "video")
    if variant == "calibrate":
        for node in hyca_nodes:
            chart = g.node("PreviewImage", inputs=[("images", "IMAGE")], title="Calibration chart", x=node["pos"][0],
                           y=node["size"][1] + TITLE + GAP, width=380, height=300)
            g.link(node, 2, chart, "images")
    else:
        g.node("MarkdownNote", widgets=[WAN22_NOTE.format(calibrate=template_name("wan22-t2v", "calibrate"))],
               title="HyCa: read me", x=360, y=-(300 + TITLE + GAP), width=380, height=300)
    g.stack()
    g.group("HyCa", [n for n in g.nodes if n["type"].startswith("HyCa") or n.get("title") == "Calibration chart"])
    return g


FLUX2_REQUIRES = {  # core nodes and values newer than the tested snapshot: ComfyUI's own FLUX.2 template (0.3.75)
    "comfyui": "0.3.75", "nodes": ["EmptyFlux2LatentImage", "Flux2Scheduler"], "values": {"CLIPLoader.type": "flux2"},
}
FLUX2_NOTE = """## HyCa on FLUX.2

Needs ComfyUI 0.3.75 or newer (FLUX.2's own nodes).

**Runs as loaded**: HyCa Apply without a map computes 5 of the 20 steps (the first, the last two, the
rest spread between) and forecasts the others' final hidden state with `hermite1`, between the model
and the guider of ComfyUI's own FLUX.2 workflow (SamplerCustomAdvanced with Flux2Scheduler).

**Calibrating adds** a solver per channel cluster and a placement of the 5 full steps with step
weights learned for it: run the template **{calibrate}** (Templates, ComfyUI-HyCa) once; it
calibrates on the same Flux2Scheduler sigmas and writes `models/hyca/flux2-dev.safetensors`.

Then select the **HyCa Solver Map Loader** and press **Ctrl+B** (press **R** first if the map is not
listed), and set HyCa Apply's **schedule** to **calibrated**."""


def flux2(variant: str) -> Graph:
    """FLUX.2-dev text to image as ComfyUI's own template samples it (SamplerCustomAdvanced,
    Flux2Scheduler), with HyCa between the model and the guider."""
    g = Graph()
    steps, size = 20, 1024
    unet = g.node("UNETLoader", outputs=[("MODEL", "MODEL")], widgets=["flux2_dev_fp8mixed.safetensors", "default"], y=0)
    clip = g.node("CLIPLoader", outputs=[("CLIP", "CLIP")],
                  widgets=["mistral_3_small_flux2_bf16.safetensors", "flux2", "default"], y=130)
    vae = g.node("VAELoader", outputs=[("VAE", "VAE")], widgets=["flux2-vae.safetensors"], y=290)
    text = g.node("CLIPTextEncode", inputs=[("clip", "CLIP")], outputs=[("CONDITIONING", "CONDITIONING")],
                  widgets=["a lighthouse on a basalt cliff at golden hour, spray in the air"], x=360, y=0)
    guidance = g.node("FluxGuidance", inputs=[("conditioning", "CONDITIONING")], outputs=[("CONDITIONING", "CONDITIONING")],
                      widgets=[4.0], x=720, y=0)
    empty = g.node("EmptyFlux2LatentImage", outputs=[("LATENT", "LATENT")], widgets=[size, size, 1], x=360, y=200)
    sigmas = g.node("Flux2Scheduler", outputs=[("SIGMAS", "SIGMAS")], widgets=[steps, size, size], x=360, y=340)
    g.link(clip, 0, text, "clip")
    g.link(text, 0, guidance, "conditioning")
    x = 1100
    if variant == "calibrate":
        negative = g.node("ConditioningZeroOut", inputs=[("conditioning", "CONDITIONING")],
                          outputs=[("CONDITIONING", "CONDITIONING")], x=720, y=130)
        g.link(text, 0, negative, "conditioning")
        slots = dict(CALIBRATE_IO, inputs=CALIBRATE_IO["inputs"] + [("vae", "VAE"), ("sigmas", "SIGMAS")])
        node = g.node("HyCaCalibrate", **slots, x=x, y=0, width=360,
                      widgets=calibrate_widgets(steps, 1.0, "euler", "simple", "flux2-dev", 3, 5, intervals="2-6",
                                                description="flux2-dev: calibrated on the FLUX.2 template's sigmas"))
        for source, name in ((unet, "model"), (guidance, "positive"), (negative, "negative"), (empty, "latent_image"),
                             (vae, "vae"), (sigmas, "sigmas")):
            g.link(source, 0, node, name)
        chart = g.node("PreviewImage", inputs=[("images", "IMAGE")], title="Calibration chart", x=x,
                       y=node["size"][1] + TITLE + GAP, width=380, height=300)
        g.link(node, 2, chart, "images")
        result, slot = node, 1
    else:
        loader = g.node("HyCaSolverMapLoader", outputs=[("solver_map", "HYCA_SOLVER_MAP")], widgets=["flux2-dev.safetensors"],
                        x=x, y=0, mode=BYPASS, width=440, height=60 + 26 + PANEL)
        widgets = apply_widgets(5, 3, 5)
        apply = g.node("HyCaApply", **APPLY_IO, widgets=widgets, x=x, y=loader["size"][1] + TITLE + GAP,
                       height=60 + 26 * (len(widgets) + 2))
        g.growth[apply["id"]] = PANEL
        g.link(unet, 0, apply, "model")
        g.link(loader, 0, apply, "solver_map")
        g.node("MarkdownNote", widgets=[FLUX2_NOTE.format(calibrate=template_name("flux2-dev-t2i", "calibrate"))],
               title="HyCa: read me", x=x - 400, y=-(300 + TITLE + GAP), width=380, height=300)
        guider = g.node("BasicGuider", inputs=[("model", "MODEL"), ("conditioning", "CONDITIONING")],
                        outputs=[("GUIDER", "GUIDER")], x=x + 480, y=0)
        g.link(apply, 0, guider, "model")
        g.link(guidance, 0, guider, "conditioning")
        noise = g.node("RandomNoise", outputs=[("NOISE", "NOISE")], widgets=[0, "fixed"], x=x + 480, y=120)
        sampler = g.node("KSamplerSelect", outputs=[("SAMPLER", "SAMPLER")], widgets=["euler"], x=x + 480, y=250)
        result = g.node("SamplerCustomAdvanced", inputs=[("noise", "NOISE"), ("guider", "GUIDER"), ("sampler", "SAMPLER"),
                                                        ("sigmas", "SIGMAS"), ("latent_image", "LATENT")],
                        outputs=[("output", "LATENT"), ("denoised_output", "LATENT")], x=x + 860, y=0)
        for source, name in ((noise, "noise"), (guider, "guider"), (sampler, "sampler"), (sigmas, "sigmas"),
                             (empty, "latent_image")):
            g.link(source, 0, result, name)
        slot = 0
    right = x + (480 if variant == "calibrate" else 1240)
    decode = g.node("VAEDecode", inputs=[("samples", "LATENT"), ("vae", "VAE")], outputs=[("IMAGE", "IMAGE")], x=right, y=0)
    g.link(result, slot, decode, "samples")
    g.link(vae, 0, decode, "vae")
    save = g.node("SaveImage", inputs=[("images", "IMAGE")], widgets=[f"hyca/flux2-dev-{variant}"], x=right + 360, y=0,
                  height=300)
    g.link(decode, 0, save, "images")
    g.stack()
    g.group("HyCa", [n for n in g.nodes if n["type"].startswith("HyCa") or n.get("title") == "Calibration chart"])
    return g


def write(stem: str, variant: str, g: Graph, note: str, requires: dict | None = None) -> None:
    file = template_name(stem, variant)  # has a dot of its own: no Path.with_suffix
    g.dump(OUT / f"{file}.json", note, requires=requires)
    thumbnail(g, f"{MODELS[stem]}\n{STEPS[variant]}", OUT / f"{file}.jpg")


def main():
    OUT.mkdir(exist_ok=True)
    specs = [("flux-dev-t2i", flux, "flux-dev", False), ("qwen-image-edit", qwen_edit, "qwen-image-edit", False),
             ("hunyuan-video-t2v", hunyuan, "hunyuan-video", True)]
    for stem, build, name, video in specs:
        for variant in ("calibrate", "apply"):
            g, model, vae, positive, negative, latent, settings = build(variant)
            finish(g, model, vae, positive, negative, latent, settings, variant, name, video,
                   calibrate=template_name(stem, "calibrate"))
            write(stem, variant, g, f"Run once: HyCa Calibrate samples the uncached model and writes models/hyca/{name}.safetensors."
                  if variant == "calibrate" else
                  f"Needs models/hyca/{name}.safetensors from the calibrate workflow (or any shared map for this model).")
    for variant in ("calibrate", "apply"):
        write("flux2-dev-t2i", variant, flux2(variant),
              "Run once: HyCa Calibrate samples FLUX.2 on the template's Flux2Scheduler sigmas and writes "
              "models/hyca/flux2-dev.safetensors." if variant == "calibrate" else
              "Needs models/hyca/flux2-dev.safetensors from the calibrate workflow (or any shared map for this model).",
              requires=FLUX2_REQUIRES)
        write("wan22-t2v", variant, wan22(variant),
              "Run once: calibrates each expert on its own steps and writes models/hyca/wan22-high.safetensors "
              "and wan22-low.safetensors." if variant == "calibrate" else
              "Needs models/hyca/wan22-high.safetensors and wan22-low.safetensors from the calibrate workflow.")


if __name__ == "__main__":
    main()
