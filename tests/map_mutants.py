"""Mutants of valid solver map files, for the fuzz test (tests/maps/test_map_fuzz.py): what a damaged
download, a hand edit or a hostile share can make of a map. Deterministic for a seed.

Each mutant is (description, bytes). Mutations that edit the ``hyca`` JSON or the tensors
recompute both checksums, so they reach validation and use instead of stopping at the checksum."""

from __future__ import annotations

import json
import random
import struct

import torch
from safetensors.torch import save

from hyca_core.maps.format import _checksum, _text_checksum

JSON_VALUES = [None, True, False, 0, -1, 1, 2, 3, 2 ** 31, 2 ** 63, -(2 ** 63), 1e308, -1e308, 1e-308, 0.5,
               "", "x", "flux", "module", "fit", "choose", "reuse", "\u0000", "é" * 3, "<script>alert(1)</script>",
               [], [1], [2, 3], ["a"], [None], {}, {"a": 1}, {"double": 2}, {"features": []}, "9" * 40,
               "x" * 10_000]
DTYPES = ["F64", "F16", "BF16", "I8", "U8", "BOOL", "I16", "U32", "XX", 5, None]


def _split(data: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def _join(layout: dict, body: bytes) -> bytes:
    text = json.dumps(layout).encode()
    return struct.pack("<Q", len(text)) + text + body


def _tensors_and_meta(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors.torch import load

    layout, _ = _split(data)
    return {k: v.clone() for k, v in load(data).items()}, dict(layout.get("__metadata__", {}))


def _write(tensors: dict[str, torch.Tensor], meta: dict[str, str], fix: bool = True) -> bytes:
    if fix:
        meta["checksum"] = _checksum(tensors)
        meta["header_checksum"] = _text_checksum(meta.get("hyca", ""))
    return save(tensors, metadata=meta)


def _paths(value, prefix=()):
    """Every path into nested JSON (dict keys and list indices)."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value[:4]):
            yield from _paths(v, prefix + (i,))


def _set(root, path, value, delete=False):
    node = root
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value


def _deep(depth: int):
    out = []
    for _ in range(depth):
        out = [out]
    return out


# -- the mutations ---------------------------------------------------------------------------------
def truncate(rng, data):
    cut = rng.randrange(len(data))
    return f"truncated at {cut}", data[:cut]


def flip_bytes(rng, data):
    out = bytearray(data)
    where = []
    for _ in range(rng.randint(1, 6)):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
        where.append(i)
    return f"bits flipped at {where}", bytes(out)


def flip_header_byte(rng, data):
    n = struct.unpack("<Q", data[:8])[0]
    out = bytearray(data)
    i = 8 + rng.randrange(n)
    out[i] = rng.randrange(32, 127)
    return f"header byte {i} set to {chr(out[i])!r}", bytes(out)


def splice(rng, data):
    i, j = sorted(rng.randrange(len(data)) for _ in range(2))
    junk = bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
    return f"bytes {i}:{j} replaced by {len(junk)} random", data[:i] + junk + data[j:]


def header_length(rng, data):
    value = rng.choice([0, 1, 7, len(data), len(data) - 8, 2 ** 63, 2 ** 64 - 1, 100_000_000])
    return f"header length set to {value}", struct.pack("<Q", value) + data[8:]


def layout_edit(rng, data):
    layout, body = _split(data)
    names = [k for k in layout if k != "__metadata__"]
    name = rng.choice(names)
    entry = layout[name]
    kind = rng.randrange(6)
    if kind == 0:
        entry["dtype"] = rng.choice(DTYPES)
        what = f"dtype {entry['dtype']}"
    elif kind == 1:
        entry["shape"] = rng.choice([[], [0], [1], [10 ** 9], [-1], [2, -2], "x", [1.5], [3] * 9, None])
        what = f"shape {entry['shape']}"
    elif kind == 2:
        entry["data_offsets"] = rng.choice([[0, 0], [0, 10 ** 12], [-4, 4], [5], None, ["a", "b"], [8, 4]])
        what = f"offsets {entry['data_offsets']}"
    elif kind == 3:
        del layout[name]
        what = "entry removed"
    elif kind == 4:
        layout[name + "_copy"] = dict(entry)
        what = "entry duplicated"
    else:
        layout["__metadata__"] = rng.choice([None, [], {"format": 1}, "x", {}])
        what = f"metadata replaced by {layout['__metadata__']!r}"
    return f"layout {name}: {what}", _join(layout, body)


def metadata_edit(rng, data):
    tensors, meta = _tensors_and_meta(data)
    key = rng.choice(["format", "format_version", "hyca", "checksum", "header_checksum", "extra"])
    if rng.random() < 0.3 and key in meta:
        del meta[key]
        return f"metadata {key} removed", _write(tensors, meta, fix=False)
    meta[key] = rng.choice(["", "x", "0", "1", "2", "-1", "99999", "1" * 5000, "٣", " 1", "hyca-solver-map",
                            "{}", "[]", "null", "{\"a\": NaN}"])
    return f"metadata {key} = {meta[key][:20]!r}", _write(tensors, meta, fix=key != "checksum")


def hyca_edit(rng, data):
    tensors, meta = _tensors_and_meta(data)
    header = json.loads(meta["hyca"])
    paths = [p for p in _paths(header) if p]
    path = rng.choice(paths)
    kind = rng.randrange(4)
    if kind == 0:
        _set(header, path, None, delete=True)
        what = "removed"
    elif kind == 1:
        value = rng.choice(JSON_VALUES)
        _set(header, path, value)
        what = f"= {str(value)[:24]!r}"
    elif kind == 2:
        _set(header, path, _deep(rng.choice([3, 30, 33, 200])))
        what = "= deep list"
    else:
        text = json.dumps(header)
        raw = rng.choice(["NaN", "Infinity", "1e999", "9" * 5000, "-0", "[" * 50 + "]" * 50])
        meta["hyca"] = text[:-1] + f', "injected": {raw}' + "}"
        return f"hyca injected {raw[:12]!r}", _write(tensors, meta)
    meta["hyca"] = json.dumps(header)
    return f"hyca {'.'.join(map(str, path))} {what}", _write(tensors, meta)


def tensor_edit(rng, data):
    tensors, meta = _tensors_and_meta(data)
    name = rng.choice(sorted(tensors))
    t = tensors[name]
    kind = rng.randrange(10)
    if kind == 9 and "/fit/" in name and t.numel():
        # weights that still sum to 1 per row but are huge: predictions overflow
        w = rng.choice([1e30, 1e12, 1e6, -1e20])
        flat = t.clone()
        flat[..., 0], flat[..., 1], flat[..., 2] = w, 1 - w, 0.0
        tensors[name] = flat
        return f"tensor {name} rows = [{w:g}, 1 - {w:g}, 0]", _write(tensors, meta)
    if kind == 0:
        tensors[name] = torch.full_like(t, rng.choice([-1, 2 ** 31 - 1, 7, 0, 1]))
        what = "filled"
    elif kind == 1 and t.is_floating_point():
        flat = t.flatten().clone()
        flat[rng.randrange(max(flat.numel(), 1))] = rng.choice([float("nan"), float("inf"), -1e38, 3e38, -0.0, 1e6])
        tensors[name] = flat.view_as(t)
        what = "one value replaced"
    elif kind == 2:
        tensors[name] = t.flatten()[: max(t.numel() - 1, 0)].clone()
        what = "shortened"
    elif kind == 3:
        tensors[name] = torch.cat([t.flatten(), t.flatten()]).clone()
        what = "doubled"
    elif kind == 4:
        tensors[name] = t.to(rng.choice([torch.int64, torch.float64, torch.float16, torch.int8, torch.float32,
                                         torch.int32]))
        what = f"as {tensors[name].dtype}"
    elif kind == 5:
        del tensors[name]
        what = "removed"
    elif kind == 6:
        tensors[name + rng.choice(["x", "/fit/3", "/fit/99", "/fit/０"])] = tensors.pop(name)
        what = "renamed"
    elif kind == 7:
        tensors[rng.choice(["stray", name.rsplit("/", 1)[0] + "/fit/4"])] = torch.zeros(2, 4, 3)
        what = "stray tensor added"
    else:
        tensors[name] = t.reshape(-1).flip(0).reshape(t.shape).clone() if t.numel() else t
        what = "reversed"
    return f"tensor {name} {what}", _write(tensors, meta)


# -- fields added since the first fuzz: placements, gains, checksums; and sizes no map needs --------
HUGE_LISTS = {
    ("intervals",): lambda: list(range(2, 200_002)),
    ("pool",): lambda: ["reuse"] * 100_000,
    ("architecture", "features"): lambda: [f"double_blocks.{i}.img_attn" for i in range(100_000)],
    ("architecture", "blocks"): lambda: {f"kind{i}": 1 for i in range(10_000)},
    ("scopes",): lambda: {f"s{i}": {"features": []} for i in range(20_000)},
    ("provenance", "schedules"): lambda: {str(i): {"full_steps": [0], "steps": 4, "interval": 2} for i in range(1, 20_000)},
    ("provenance", "schedules", "4", "full_steps"): lambda: list(range(200_000)),
    ("provenance", "closed_loop", "intervals"): lambda: {str(i): {"kept": "map", "gain_db": 1.0} for i in range(100_000)},
    ("provenance", "notes"): lambda: ["x" * 100] * 20_000,
}
TEXT_FIELDS = [("family",), ("granularity",), ("mode",), ("author",), ("description",), ("license",),
               ("pack_version",), ("pool", 0), ("provenance", "sampler"), ("provenance", "schedules", "4", "solver"),
               ("provenance", "closed_loop", "intervals", "2", "kept"), ("architecture", "features", 0)]


def _with_header(data: bytes, edit, escape: bool = True) -> bytes:
    """The file with its ``hyca`` JSON edited and both checksums recomputed (``escape``: written
    with ASCII escapes, which is how a lone surrogate gets into JSON)."""
    tensors, meta = _tensors_and_meta(data)
    header = json.loads(meta["hyca"])
    edit(header)
    meta["hyca"] = json.dumps(header, ensure_ascii=escape)
    return _write(tensors, meta)


def _reach(header, path):
    node = header
    for key in path[:-1]:
        node = node[key] if isinstance(node, dict) else node[int(key)]
    return node


def huge_list(rng, data):
    path = rng.choice(sorted(HUGE_LISTS))

    def edit(header):
        node = _reach(header, path)
        node[path[-1]] = HUGE_LISTS[path]()

    return f"huge {'.'.join(path)}", _with_header(data, edit)


def huge_or_odd_text(rng, data):
    path = rng.choice(TEXT_FIELDS)
    value = rng.choice(["x" * 2 ** 20, "\udcff", "a\udcffb", "\ud800", "é" * 5000, "\u0000" * 100, "\u202e" * 10])

    def edit(header):
        node = _reach(header, path)
        node[path[-1]] = value

    return f"{'.'.join(map(str, path))} = {value[:12]!r} ({len(value)} chars)", _with_header(data, edit)


def huge_name(rng, data):
    name = rng.choice(["n" * 100_000, "\udcff", "s\ud800"])

    def edit(header):
        kind = rng.randrange(2)
        if kind == 0:
            header["scopes"][name] = {"features": []}
        else:
            first = sorted(header["scopes"])[0]
            header["scopes"][first]["features"].append(name)

    return f"a scope or feature named {name[:12]!r} ({len(name)} chars)", _with_header(data, edit)


def checksum_edit(rng, data):
    tensors, meta = _tensors_and_meta(data)
    kind = rng.randrange(6)
    if kind == 0:
        meta["Header_Checksum"] = meta.pop("header_checksum")
        what = "header_checksum renamed"
    elif kind == 1:
        meta["header_checksum"] = meta["header_checksum"].upper()
        what = "header_checksum in upper case"
    elif kind == 2:
        header = json.loads(meta["hyca"])
        header["description"] = "edited after signing"
        meta["hyca"] = json.dumps(header)
        what = "header edited, checksum kept"
    elif kind == 3:
        meta["header_checksum"] = " " + meta["header_checksum"]
        what = "header_checksum with a leading space"
    elif kind == 4:
        meta["sha"] = meta.pop("checksum")
        what = "checksum renamed"
    else:
        meta["header_checksum"] = _text_checksum(meta["hyca"] + " ")
        what = "header_checksum of other text"
    return what, save(tensors, metadata=meta)


def gains_edit(rng, data):
    value = rng.choice([float("nan"), 1e308, -1e308, "1.5", True, None, [], {"x": 1}, 10 ** 40, -0.0, 7])
    path = rng.choice([("provenance", "closed_loop", "intervals", "2", "gain_db"),
                       ("provenance", "schedules", "4", "fit_db"), ("provenance", "schedules", "4", "fixed_db"),
                       ("provenance", "schedules", "4", "checked_db"), ("provenance", "schedules", "4", "learned"),
                       ("provenance", "schedules", "4", "interval"), ("provenance", "schedules", "4", "steps")])

    def edit(header):
        node = _reach(header, path)
        node[path[-1]] = value

    return f"{'.'.join(path)} = {value!r}", _with_header(data, edit)  # NaN: json.dumps writes it, readers refuse


def foreign(rng, data):
    kind = rng.randrange(5)
    if kind == 0:
        return "empty file", b""
    if kind == 1:
        return "random bytes", bytes(rng.randrange(256) for _ in range(rng.randint(1, 4096)))
    if kind == 2:
        return "a JSON document", json.dumps({"format": "hyca-solver-map"}).encode()
    if kind == 3:
        return "a PNG header", b"\x89PNG\r\n\x1a\n" + bytes(64)
    return "a plain safetensors file", save({"weight": torch.randn(4, 4)}, metadata={"format": "pt"})


MUTATIONS = (truncate, flip_bytes, flip_header_byte, splice, header_length, layout_edit, metadata_edit,
             hyca_edit, hyca_edit, tensor_edit, tensor_edit, foreign, huge_list, huge_or_odd_text, huge_name,
             checksum_edit, gains_edit)


def mutants(bases: dict[str, bytes], count: int, seed: int = 0):
    """``count`` (name, bytes) mutants of the base files, cycling through the mutations."""
    rng = random.Random(seed)
    names = sorted(bases)
    for i in range(count):
        base = names[i % len(names)]
        mutation = MUTATIONS[(i // len(names)) % len(MUTATIONS)]
        data = bases[base]
        description, out = mutation(rng, data)
        if rng.random() < 0.15:  # now and then a second mutation on top
            more, out2 = rng.choice((truncate, flip_bytes, splice))(rng, out) if len(out) > 8 else ("", out)
            description, out = f"{description}; {more}", out2
        yield f"#{i} {base}: {mutation.__name__}: {description}", out
