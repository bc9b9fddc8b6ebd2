"""Where and in which precision models run: devices, dtypes and the precision profiles
``exact`` (the reproduction, fp32) or ``fast`` (the fastest measured setting).

The encoder is almost all of a prompt's cost on a CPU, and reduced precision buys speed there at a
small, measured cost in scores (``scripts/benchmark_precision.py``, ``docs/precision.md``). A profile
only picks the encoder's dtype; the mapping layer always runs in fp32. Because the dtype is part of
the encoder's identity, a store or cache built in one precision is never read for another.

* ``exact``: ``encoder.dtype`` as configured (float32 by default): reproduction unchanged.
* ``fast``: bfloat16 on CPUs with native bf16 (AVX512-BF16 or AMX), float16 on CUDA, else float32.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..constants import PRECISIONS
from ..errors import LatentGuardError

# CPU flags (Linux /proc/cpuinfo) that mean bf16 matrix products run natively, not emulated.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")

# Measured by scripts/benchmark_precision.py on this project's development CPU (2 shared cores of an
# Intel Xeon with AVX512-BF16 and AMX; figures and caveats in docs/precision.md). Drift is against fp32
# on real text: all-MiniLM-L6-v2 with a briefly trained mapping layer (scores' std about 3), 528 CoPro
# ID and OOD test prompts; ΔAUC is the larger of the two domains. Speed: store build .. check(), ViT-L/14.
MEASURED: dict[str, dict[str, Any] | None] = {
    "bfloat16": {"max_abs_dscore": 0.112, "d_auc": -0.0006, "speedup": "3.9-4.5x"},
    "float16": None,  # no GPU was lent to us: not measured yet
}


def resolve_device(device: str | None = None) -> "torch.device":  # noqa: F821
    """``None``/``'auto'`` picks CUDA when present, else CPU; anything else must be a device this machine can use.

    torch accepts any device type it knows by name (``meta``, ``mps``, ``xpu``, ``hpu``, ...) whether or not this
    build and machine have it, and then failed deep in the load with a traceback, after ``score`` had claimed its
    output directory (a hostile review): such a device is refused here, in one line, before anything is loaded.
    """
    import torch

    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise LatentGuardError(f"unknown device '{device}' (use auto, cpu, cuda or cuda:N)") from None
    why = _unusable(resolved)
    if why is not None:
        raise LatentGuardError(f"device '{device}' cannot be used here ({why}); available here: "
                               f"{', '.join(available_devices())} (use --device with one of them, or auto)")
    return resolved


def _backend(kind: str):
    """torch's module for a device type (``torch.cuda``, ``torch.mps``, ...), or None when it has none."""
    import torch

    module = getattr(torch, kind, None)
    return module if callable(getattr(module, "is_available", None)) else None


def _count(kind: str) -> int:
    """How many devices of ``kind`` this machine has (0: none, or no backend for it in this torch build)."""
    if kind == "cpu":
        return 1
    module = _backend(kind)
    try:
        if module is None or not module.is_available():
            return 0
        return int(module.device_count()) if callable(getattr(module, "device_count", None)) else 1
    except Exception:  # noqa: BLE001 - a backend that cannot even say: not usable here
        return 0


def available_devices() -> list[str]:
    """The devices this machine can run on, as ``--device`` names them: cpu, then cuda:N, mps, xpu:N."""
    names = ["cpu"]
    for kind in ("cuda", "mps", "xpu"):
        count = _count(kind)
        names += [kind] if kind == "mps" and count else [f"{kind}:{i}" for i in range(count)]
    return names


def _unusable(device: "torch.device") -> str | None:  # noqa: F821
    """Why ``device`` cannot run a guard on this machine, or None when it can."""
    if device.type == "cpu":
        return None
    if device.type == "meta":
        return "a meta device holds no data, so nothing can be scored on it"
    count = _count(device.type)
    if count == 0:
        return f"this machine or torch build has no {device.type.upper()} device"
    if device.index is not None and device.index >= count:
        return f"{device.type} device {device.index} requested, but there {'is' if count == 1 else 'are'} {count}"
    return None


_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16",
           "fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def resolve_dtype(dtype: "str | torch.dtype | None", device: "torch.device") -> "torch.dtype":  # noqa: F821
    """fp32 unless asked otherwise; half precision only where it is fast and supported (GPU)."""
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise LatentGuardError(f"unknown dtype '{dtype}' (use float32, float16 or bfloat16)")
        dtype = getattr(torch, _DTYPES[dtype])
    if dtype == torch.float16 and device.type == "cpu":
        raise LatentGuardError("float16 encoding needs a GPU; on the CPU set encoder.dtype to float32 or bfloat16")
    return dtype


@dataclass(frozen=True)
class PrecisionChoice:
    """What a profile resolved to: the encoder dtype and, for ``fast``, the line a CLI prints."""

    precision: str
    dtype: str
    note: str | None


def cpu_supports_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16); bf16 is slower than fp32 elsewhere.

    Reads the kernel's CPU flags; where there are none (not Linux), asks oneDNN, which checks the
    same instructions.
    """
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return any(flag in flags for flag in BF16_CPU_FLAGS)
    try:
        import torch

        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # an older or trimmed torch build: be conservative
        return False


def fast_dtype(device_type: str, bf16_cpu: bool) -> str:
    """The fastest measured encoder dtype for a device type: fp16 on CUDA, bf16 on capable CPUs, else fp32."""
    if device_type == "cuda":
        return "float16"
    if device_type == "cpu" and bf16_cpu:
        return "bfloat16"
    return "float32"


def drift_note(dtype: str, device_type: str) -> str:
    """The one line a CLI prints when ``fast`` is chosen: what it picked and the drift measured for it."""
    where = "this GPU" if device_type == "cuda" else f"this {device_type.upper()}"
    if dtype == "float32":
        why = ("no native bf16 here, so bf16 would be slower" if device_type == "cpu"
               else "no faster setting measured for it")
        return f"precision fast: float32 encoder on {where} ({why}); scores are exact"
    figures = MEASURED.get(dtype)
    if not figures or figures.get("max_abs_dscore") is None:
        drift = "not measured yet (no GPU was available to us)"
    else:
        drift = f"max |Δscore| {figures['max_abs_dscore']:.3g}, ΔAUC {figures['d_auc']:+.4f}"
        if figures.get("speedup"):
            drift += f"; {figures['speedup']} the fp32 speed on our CPU"
    return f"precision fast: {dtype} encoder on {where}; measured drift vs fp32: {drift} (docs/precision.md)"


def resolve_precision(precision: str, device_type: str, dtype: str = "float32", *,
                      bf16_cpu: bool | None = None) -> PrecisionChoice:
    """The encoder dtype for ``precision`` on ``device_type`` (``cpu``/``cuda``/...).

    ``exact`` keeps ``dtype`` (the configured ``encoder.dtype``). ``fast`` chooses the dtype itself,
    so it refuses a configured non-fp32 ``dtype`` other than its own choice rather than silently
    overriding it (its own choice: the config a fast run saved, e.g. ``main.py``'s config.yaml).
    ``bf16_cpu`` defaults to :func:`cpu_supports_bf16`.
    """
    if precision not in PRECISIONS:
        raise LatentGuardError(f"unknown precision '{precision}' (use {' or '.join(PRECISIONS)})")
    if precision == "exact":
        return PrecisionChoice(precision, dtype, None)
    if bf16_cpu is None:
        bf16_cpu = device_type == "cpu" and cpu_supports_bf16()
    chosen = fast_dtype(device_type, bf16_cpu)
    if dtype not in ("float32", chosen):
        raise LatentGuardError(f"precision 'fast' picks the encoder dtype itself ({chosen} here), but encoder.dtype "
                               f"is {dtype}; set encoder.dtype back to float32 or use --precision exact")
    return PrecisionChoice(precision, chosen, drift_note(chosen, device_type))


def apply_precision(cfg: "Config") -> tuple["Config", str | None]:  # noqa: F821
    """A loaded config with its ``precision`` resolved into ``encoder.dtype``, and the line to print, if any."""
    choice = resolve_precision(cfg.precision, resolve_device(cfg.device).type, cfg.encoder.dtype)
    return cfg.updated({"encoder.dtype": choice.dtype}), choice.note
