"""The memory budget of the resident local models: models.ini's, else what this machine has.

``memory_budget_mb`` unset (or 0) in models.ini means the budget is detected here, the one
place that asks the machine:

- **Physical memory** (psutil: ``/proc/meminfo`` on Linux, ``hw.memsize`` on macOS) minus a
  reserve for the system, the stack itself and your editor: :func:`reserve_mb` (10 %, at least
  2 GiB, at most half).
- **Apple silicon** with layers offloaded (``n_gpu_layers > 0``): Metal's recommended working
  set, the memory the GPU may wire. That is ``sysctl iogpu.wired_limit_mb`` when set (macOS 14
  and later), else macOS's default: 2/3 of memory up to 36 GiB, 3/4 above
  (:func:`metal_default_mb`, what Metal's ``recommendedMaxWorkingSetSize`` reports).
- **NVIDIA GPUs** with layers offloaded and a CUDA build of llama-server (recognised by the
  ``libggml-cuda`` library beside the binary, as llama.cpp's CUDA releases ship it; a static
  CUDA build is not recognised, set ``memory_budget_mb``): the memory of every GPU
  ``nvidia-smi --query-gpu=memory.total`` lists, minus 5 % (at least 512 MiB) for CUDA's own
  buffers.

:func:`probe` gathers the facts (the only I/O); :func:`detected_budget` is arithmetic on them.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..config.schema import Stack
from ..settings import Settings

MIB = 1024 * 1024
RESERVE_FRACTION = 0.10
RESERVE_MIN_MB = 2048
GPU_RESERVE_FRACTION = 0.05
GPU_RESERVE_MIN_MB = 512
METAL_SMALL_LIMIT_MB = 36 * 1024
"""Up to this much memory macOS lets the GPU wire 2/3 of it; above, 3/4."""
PROBE_TIMEOUT = 5.0
"""Seconds ``sysctl`` / ``nvidia-smi`` may take before their answer is ignored."""
MAX_GPUS = 64
SYSCTL = "/usr/sbin/sysctl"


@dataclass(frozen=True)
class MemoryBudget:
    """The budget in MB (MiB) and where it came from, as ``status`` and ``/ui`` show it."""

    mb: int
    source: str

    @property
    def detected(self) -> bool:
        return self.source.startswith("detected")


@dataclass(frozen=True)
class Machine:
    """What decides a detected budget."""

    physical_mb: int
    apple_silicon: bool = False
    wired_limit_mb: int = 0
    """``iogpu.wired_limit_mb`` (0: unset, macOS's default applies)."""
    gpu_mb: tuple[int, ...] = ()
    """Each NVIDIA GPU's memory, when llama-server is a CUDA build; else empty."""


def reserve_mb(physical_mb: int) -> int:
    """What the budget leaves the rest of the machine: 10 %, at least 2 GiB, at most half."""
    return min(max(round(physical_mb * RESERVE_FRACTION), RESERVE_MIN_MB), physical_mb // 2)


def metal_default_mb(physical_mb: int) -> int:
    """macOS's default GPU working set: 2/3 of memory up to 36 GiB, 3/4 above."""
    return physical_mb * 2 // 3 if physical_mb <= METAL_SMALL_LIMIT_MB else physical_mb * 3 // 4


def _gib(mb: int) -> str:
    return f"{mb / 1024:.1f} GiB"


def detected_budget(machine: Machine, offloaded: bool) -> MemoryBudget:
    """The budget for ``machine``; ``offloaded``: models.ini's ``n_gpu_layers > 0``."""
    if offloaded and machine.gpu_mb:
        total = sum(machine.gpu_mb)
        reserve = max(round(total * GPU_RESERVE_FRACTION), GPU_RESERVE_MIN_MB)
        gpus = f"{len(machine.gpu_mb)} GPUs'" if len(machine.gpu_mb) > 1 else "the GPU's"
        return MemoryBudget(max(total - reserve, 0),
                            f"detected: {gpus} {_gib(total)} (nvidia-smi) - {_gib(reserve)} reserve")
    if offloaded and machine.apple_silicon:
        if machine.wired_limit_mb:
            return MemoryBudget(machine.wired_limit_mb, "detected: iogpu.wired_limit_mb")
        return MemoryBudget(metal_default_mb(machine.physical_mb),
                            f"detected: Metal's working set of {_gib(machine.physical_mb)}")
    reserve = reserve_mb(machine.physical_mb)
    return MemoryBudget(machine.physical_mb - reserve, f"detected: {_gib(machine.physical_mb)} "
                                                       f"physical - {_gib(reserve)} reserve")


def stack_budget(stack: Stack, settings: Settings, server: str | None) -> MemoryBudget:
    """models.ini's ``memory_budget_mb``, else the one detected on this machine (``server``:
    the llama-server binary, to tell a CUDA build)."""
    if stack.memory_budget_mb:
        return MemoryBudget(stack.memory_budget_mb, f"from {Path(stack.path).name or 'models.ini'}")
    return detected_budget(probe(settings, server, stack.n_gpu_layers > 0), stack.n_gpu_layers > 0)


def probe(settings: Settings, server: str | None, offloaded: bool) -> Machine:
    """This machine's facts; the GPUs are asked only when layers are offloaded."""
    import psutil

    physical = psutil.virtual_memory().total // MIB
    apple = platform.system() == "Darwin" and platform.machine() == "arm64"
    if not offloaded:
        return Machine(physical)
    if apple:
        return Machine(physical, True, _number(_run([SYSCTL, "-n", "iogpu.wired_limit_mb"])))
    smi = shutil.which("nvidia-smi", path=settings.search_path)
    if smi is None or server is None or not cuda_build(Path(server)):
        return Machine(physical)
    out = _run([smi, "--query-gpu=memory.total", "--format=csv,noheader,nounits"])
    sizes = [int(line) for line in out.splitlines()[:MAX_GPUS] if re.fullmatch(r"\d{1,9}", line.strip())]
    return Machine(physical, gpu_mb=tuple(sizes))


def cuda_build(server: Path) -> bool:
    """``server`` ships llama.cpp's CUDA backend library beside it (or in ``../lib``)."""
    try:
        binary = server.resolve()
        return any(any(folder.glob("libggml-cuda*")) for folder in
                   (binary.parent, binary.parent.parent / "lib"))
    except OSError:
        return False


def _run(argv: list[str]) -> str:
    """What ``argv`` prints (bounded), "" when it fails, hangs or is absent."""
    try:
        done = subprocess.run(argv, capture_output=True, timeout=PROBE_TIMEOUT, check=False,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout[:4096].decode(errors="replace") if done.returncode == 0 else ""


def _number(text: str) -> int:
    text = text.strip()
    return int(text) if re.fullmatch(r"\d{1,9}", text) else 0
