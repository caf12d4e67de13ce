"""Z-Image and Lumina 2 (``NextDiT``): ``layers[i](img, mask, freqs_cis, adaln_input, ...)`` with no
"dit" lookup, so HyCa routes its blocks through its own twins (block and stack granularity)."""

from __future__ import annotations

from ..routes import Unrouted


UNROUTED = {"NextDiT": Unrouted((("double_block", "layers"),))}
