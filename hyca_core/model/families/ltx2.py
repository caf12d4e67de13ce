"""LTX-2 (``LTXAVModel``): found by its block lists, refused at HyCa Apply until HyCa's block code
splits its video and audio streams."""

from __future__ import annotations


NOT_YET = {"LTXAVModel": "LTX-2's blocks carry its video and audio streams as one tuple, which HyCa's block "
                         "code does not split yet"}
