"""Serving a read-only file system over FUSE.

``operations`` is the interface a file system implements, ``kernel`` speaks the kernel's FUSE
protocol on /dev/fuse (no libfuse), ``memory`` is an in-memory tree for tests and benchmarks.
Nothing is imported here, so each user pays only for the modules it needs.
"""
