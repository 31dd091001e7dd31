"""The detected memory budget, per kind of machine (the arithmetic; the facts are probed)."""

from __future__ import annotations

from llmstack.models.machine import Machine, detected_budget, metal_default_mb, reserve_mb


def test_the_detected_budget_per_machine() -> None:
    linux = Machine(physical_mb=24105)
    assert detected_budget(linux, offloaded=True) == detected_budget(linux, offloaded=False)
    assert detected_budget(linux, False).mb == 24105 - 2410
    assert reserve_mb(8192) == 2048 and reserve_mb(3000) == 1500  # at least 2 GiB, at most half
    mac16, mac64 = Machine(16384, apple_silicon=True), Machine(65536, apple_silicon=True)
    assert detected_budget(mac16, True).mb == metal_default_mb(16384) == 10922  # Metal's 2/3
    assert detected_budget(mac64, True).mb == 49152  # 3/4 above 36 GiB
    assert detected_budget(mac64, False).mb == 65536 - 6554  # layers on the CPU
    wired = detected_budget(Machine(65536, True, wired_limit_mb=57344), True)
    assert (wired.mb, wired.source) == (57344, "detected: iogpu.wired_limit_mb")
    cuda = detected_budget(Machine(65536, gpu_mb=(24576, 24576)), True)
    assert cuda.mb == 49152 - 2458
    assert cuda.source == "detected: 2 GPUs' 48.0 GiB (nvidia-smi) - 2.4 GiB reserve"
    assert detected_budget(Machine(65536, gpu_mb=(24576,)), False).mb == 65536 - 6554
