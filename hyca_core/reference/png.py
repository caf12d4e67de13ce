"""A minimal PNG writer (RGB, 8 bit), so grids and plots need no imaging library."""

from __future__ import annotations

import struct
import zlib

import torch


def write_png(path: str, image: torch.Tensor) -> None:
    """``image``: [3, H, W] or [H, W, 3], values in [0, 1]."""
    if image.shape[0] == 3 and image.dim() == 3:
        image = image.permute(1, 2, 0)
    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).contiguous().numpy()
    height, width, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[row].tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def grid(images: torch.Tensor, columns: int, pad: int = 2, scale: int = 1) -> torch.Tensor:
    """[N, 3, H, W] -> one [3, rows*(H+pad)+pad, columns*(W+pad)+pad] image on white."""
    n, c, h, w = images.shape
    if scale > 1:
        images = images.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
        h, w = h * scale, w * scale
    rows = (n + columns - 1) // columns
    out = torch.ones(c, rows * (h + pad) + pad, columns * (w + pad) + pad)
    for i in range(n):
        r, col = divmod(i, columns)
        out[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = images[i]
    return out
