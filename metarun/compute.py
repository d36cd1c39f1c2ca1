"""How a run computes on its device: precision and memory format resolved here, once, with the
device (tasks per pass are planned by memory.py and carried here too).

No method and no loader reads these settings: the trainer runs every step under `autocast()`,
the algorithm's weights are laid out by `place()`, and methods turn autocast off (`float32`)
only around the arithmetic that needs the bits (distances, softmaxes, losses, inner updates).
"""

from __future__ import annotations

import platform
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import torch
from torch import Tensor, nn

from metarun.errors import MetarunError

Precision = Literal["fp32", "bf16", "fp16"]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Compute:
    """The resolved settings. tasks_per_pass / eval_tasks_per_pass: how many tasks one forward
    pass may take in training / evaluation (None: the whole meta-batch / eval_batch_size)."""

    device: torch.device
    precision: Precision = "fp32"
    channels_last: bool = False
    tasks_per_pass: int | None = None
    eval_tasks_per_pass: int | None = None

    def autocast(self) -> AbstractContextManager:
        """The context every training and evaluation step runs in."""
        if self.precision == "fp32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.precision])

    def place(self, module: nn.Module) -> nn.Module:
        """The module on the device, its 4-D weights channels-last if chosen (convolutions then
        produce channels-last maps from ordinary NCHW inputs, so no loader needs to know)."""
        module = module.to(self.device)
        if self.channels_last:
            for layer in module.modules():
                if isinstance(layer, nn.Conv2d):  # only their weights: a method's own 4-D tensors keep their layout
                    layer.to(memory_format=torch.channels_last)
        return module

    def grad_scaler(self) -> torch.amp.GradScaler:
        """fp16 needs its loss scaled against underflow; for any other precision a no-op scaler.
        It scales what the trainer backpropagates: gradients a method takes inside its step (inner
        loops, MAML's per-task loop) stay unscaled, one reason auto never picks fp16."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def describe(self) -> dict:
        return {"precision": self.precision, "channels_last": self.channels_last,
                "tasks_per_pass": self.tasks_per_pass, "eval_tasks_per_pass": self.eval_tasks_per_pass}


def float32(device: torch.device) -> AbstractContextManager:
    """Autocast off: what runs inside computes in the dtype of its inputs (see `full`)."""
    return torch.autocast(device.type, enabled=False)


def full(x: Tensor) -> Tensor:
    """x in float32 if autocast made it bf16 or fp16; float32 and float64 stay as they are."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def resolve_task_batching(setting: str, device: torch.device) -> str:
    """algo.task_batching for this device; auto: a per-task loop on a CPU (the fastest on a small
    one, measured in benchmarks/), vmap on a GPU (it fills one)."""
    if setting != "auto":
        return setting
    return "vmap" if device.type == "cuda" else "loop"


def resolve_precision(setting: str, device: torch.device, input_shape: tuple[int, ...], inner_loop: bool = False) -> Precision:
    """trainer.precision on this device. auto: bf16 for image backbones where the device has
    native bf16 (an avx512_bf16/AMX CPU, or a GPU that supports it), else fp32. Measured in
    benchmarks/precision.py and tests/test_compute.py: bf16 makes metric and sequence methods
    1.8-3.6x faster on this project's CPU with their meta-gradients within cosine 0.95 of fp32's;
    methods with an inner loop gain 1.1-1.4x while the rounding compounds through their steps
    (cosine 0.4-0.7 after 5 MAML steps), and a tiny MLP runs slower; those stay in fp32."""
    if setting not in ("auto", "fp32", "bf16", "fp16"):
        raise MetarunError(f"trainer.precision={setting!r} is not known; use auto, fp32, bf16 or fp16")
    if setting == "auto":
        return "bf16" if len(input_shape) == 3 and not inner_loop and native_bf16(device) else "fp32"
    if setting == "fp16" and device.type != "cuda":
        raise MetarunError(f"trainer.precision=fp16 runs only on a CUDA GPU, not on {device.type}; use bf16 or fp32")
    if setting == "bf16" and not bf16_runs(device):
        raise MetarunError(f"trainer.precision=bf16 is not supported by this {device_name(device)}; use fp32"
                           + (" or fp16" if device.type == "cuda" else ""))
    return setting


def resolve_channels_last(setting: bool | str, device: torch.device, input_shape: tuple[int, ...], precision: Precision,
                          inner_loop: bool = False) -> bool:
    """trainer.channels_last. auto: on for image inputs on a CPU and on a GPU under bf16/fp16 (what
    tensor cores read), except for inner-loop methods: on this project's CPU channels-last made
    the other methods' steps 1.1-1.3x faster in fp32 (1.5-2.0x on top of bf16), but first-order
    inner loops gained 1.0-1.06x and second-order MAML lost (0.86-0.98x: the double backward of
    pooling and ReLU copies between layouts)."""
    if setting not in (True, False, "auto"):
        raise MetarunError(f"trainer.channels_last={setting!r} is not known; use auto, true or false")
    if setting != "auto":
        return bool(setting) and len(input_shape) == 3
    return len(input_shape) == 3 and not inner_loop and (device.type == "cpu" or precision != "fp32")


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 runs in hardware (not emulated) on the device."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and bool({"avx512_bf16", "amx_bf16", "bf16"} & cpu_flags()) and bf16_runs(device)


def bf16_runs(device: torch.device) -> bool:
    """Whether bf16 kernels exist for the device at all (possibly emulated, and then slow)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()})"
