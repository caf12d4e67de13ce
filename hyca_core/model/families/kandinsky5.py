"""Kandinsky 5: its own "dit" route calls its blocks with names they do not take (ComfyUI 0.26:
``block(x=...)``, a TypeError), so HyCa routes them through its own twins."""

from __future__ import annotations

from ..routes import Unrouted


UNROUTED = {"Kandinsky5": Unrouted((("double_block", "visual_transformer_blocks"),))}
