"""The machine at hand, as every measured speed decision is keyed: CPU model, torch's kernel level, native bf16.

Speed knobs (precision, prediction backend) are decided by measuring here and cached under this key, because
CPUs of one name differ (an AVX2 EPYC without bf16, an AVX-512 one with it)."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class CpuInfo:
    name: str  # the model name, e.g. "AMD EPYC" (the same name has covered AVX2 and AVX-512/bf16 parts)
    capability: str  # torch's kernel dispatch level: DEFAULT, AVX2, AVX512, ...
    bf16: bool  # oneDNN runs bf16 kernels (AVX-512 core or AMX); without it autocast emulates bf16

    @classmethod
    def here(cls) -> CpuInfo:
        return cls(_cpu_name(), torch.backends.cpu.get_cpu_capability(), _mkldnn_bf16())


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mkldnn_bf16() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
