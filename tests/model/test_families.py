"""The family registry (``hyca_core.model.families``): one file per family, found without a list
to edit; every family it finds is complete enough for ``architecture``."""

from types import SimpleNamespace

import pytest

from hyca_core.model import families
from hyca_core.model.families import collect
from hyca_core.model.families.base import Family


def test_every_family_file_is_found():
    assert set(families.FAMILIES) == {"Flux", "Chroma", "HunyuanVideo", "QwenImageTransformer2DModel", "WanModel"}
    assert set(families.UNROUTED) == {"NextDiT", "Kandinsky5", "QwenImage21Transformer2DModel"}
    assert set(families.NOT_YET) == {"LTXAVModel"}
    for family in families.FAMILIES.values():
        assert family.known and set(family.adapters) == {kind for kind, _ in family.blocks}
        assert set(family.outputs) == {kind for kind, _ in family.blocks}


def test_a_new_family_module_adds_its_family_and_a_clash_is_refused():
    new = SimpleNamespace(__name__="families.zeta", FAMILIES=(Family("zeta", "ZetaDiT", (), {}, {}),),
                          NOT_YET={"OmegaDiT": "not yet"})
    found, unrouted, not_yet = collect([*families._family_modules(), new])
    assert found["ZetaDiT"].name == "zeta" and not_yet["OmegaDiT"] == "not yet" and unrouted == families.UNROUTED
    clash = SimpleNamespace(__name__="families.flux2", FAMILIES=(Family("flux2", "Flux", (), {}, {}),))
    with pytest.raises(ValueError, match="Flux already claimed"):
        collect([*families._family_modules(), clash])
