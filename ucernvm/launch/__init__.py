"""Launching images in QEMU: accelerator choice (KVM canary, TCG fallback), media, the Vm handle."""

from __future__ import annotations

from ucernvm.launch.qemu import LaunchError, LaunchOptions, Vm, qemu_command

__all__ = ["LaunchError", "LaunchOptions", "Vm", "qemu_command"]
