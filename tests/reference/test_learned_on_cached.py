"""The lab's experiment on step weights learned on the cached sampler's states, at a tiny size."""

import re

from hyca_core.reference import learned_on_cached


def test_every_variant_is_sampled_on_the_placement(capsys):
    assert learned_on_cached.main(["--model", "flux", "--steps", "6", "--full-at", "0,2,4,5", "--runs", "2",
                                   "--pairs", "2", "--granularity", "final"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "psnr" in line]
    assert len(lines) == 4
    # every variant computes exactly the placement's four steps and forecasts the rest
    assert all(re.search(r"full +4 ", line) for line in lines), lines
    psnr = [float(line.split("psnr")[1].split()[0]) for line in lines]
    assert all(p > 10 for p in psnr)
