"""ucernvm: the micro-CernVM boot loader and the CernVM-FS repository format, in Python."""

__version__ = "0.1.0"
