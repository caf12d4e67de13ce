"""A module seen through a subclass of its own class: how HyCa changes what a module of ComfyUI's
model does without copying it or touching the shared model.

ComfyUI swaps the twin in with ``ModelPatcher.add_object_patch`` while it loads the model and puts
the module back when it unloads it. The twin shares the module's ``__dict__`` contents (the same
parameter, buffer, child and hook dicts), so every parameter keeps its name and storage: LoRA keys,
weight streaming and state dicts see one unchanged module. Only ``forward`` differs.
"""

from __future__ import annotations

from typing import Callable

import torch

_CLASSES: dict = {}


def twin(module: torch.nn.Module, forward: Callable, kind: str, **attrs) -> torch.nn.Module:
    """``module`` as an instance of ``HyCa<kind><its class>`` whose forward is ``forward``; the twin
    also holds ``hyca_forward`` (its class's own forward), ``hyca_original`` and ``attrs``."""
    module = getattr(module, "hyca_original", module)  # a twin already in place (the model is loaded)
    cls = type(module)
    twin_class = _CLASSES.get((kind, cls))
    if twin_class is None:
        twin_class = _CLASSES[(kind, cls)] = type(f"HyCa{kind}{cls.__name__}", (cls,),
                                                  {"forward": forward, "__module__": forward.__module__})
    seen = object.__new__(twin_class)
    seen.__dict__.update(module.__dict__)
    seen.__dict__.update(hyca_forward=cls.forward, hyca_original=module, **attrs)
    return seen
