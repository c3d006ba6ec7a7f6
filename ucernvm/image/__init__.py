"""The image builder: kernel, initramfs (Python runtime, kernel modules, tools) and manifest.

Submodules are imported directly (``ucernvm.image.builder``...): ``kmods`` is also used inside the
image, where the build-time dependencies (pyelftools, apt) are absent, so this package imports
nothing on its own.
"""
