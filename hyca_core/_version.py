"""The pack's version: written into every solver map (``pack_version``)."""

__version__ = "0.2.0"
