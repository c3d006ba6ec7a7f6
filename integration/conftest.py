"""Slow tests: complete image builds and QEMU boots. Select them with ``-m vm`` or ``-m slow``.

Run from the repository root: ``python -m pytest integration -m "vm or slow"``.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from debian_os import DebianRoot, build_root
from debian_stream import StreamedOs, recorded_prefetch_list, served
from floor import FloorBoots, boot_floor_twice

from ucernvm.errors import UcernvmError
from ucernvm.image.builder import BuildOptions, BuildResult, build_image

INTEGRATION_DIR = Path(__file__).resolve().parent
# The real components the unit tests start (squid, fake metadata services) serve the boot tests too.
sys.path.insert(0, str(INTEGRATION_DIR.parent / "tests"))
SMOKE_INIT = "smoke_init:main"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vm: boots a real image in QEMU (slow; needs qemu-system-x86_64)")
    config.addinivalue_line("markers", "slow: builds complete images (kernel via apt, compression)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failure's hint (for a VM that hung: its last console lines) shown with the failure, where the
    exception's text alone has only the message."""
    outcome = yield
    error = call.excinfo.value if call.excinfo is not None else None
    if isinstance(error, UcernvmError) and error.hint:
        outcome.get_result().sections.append(("hint", error.hint))


def _build_smoke(output: Path, use_cache: bool = True) -> BuildResult:
    return build_image(BuildOptions(output=output, init=SMOKE_INIT, init_paths=(INTEGRATION_DIR,),
                                    use_cache=use_cache))


@pytest.fixture(scope="session")
def build_smoke() -> Callable[..., BuildResult]:
    """build_smoke(output, use_cache=True): build the image with the smoke init into *output*."""
    return _build_smoke


@pytest.fixture(scope="session")
def smoke_image(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    """The image with the smoke init instead of the boot pipeline, built once per session."""
    return _build_smoke(tmp_path_factory.mktemp("smoke-image"))


def _qemu() -> str:
    path = shutil.which("qemu-system-x86_64")
    if path is None:
        pytest.skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    return path


@pytest.fixture
def qemu() -> str:
    return _qemu()


@pytest.fixture(scope="session")
def debian_root() -> DebianRoot:
    """The Debian appliance root, built with mmdebstrap on the first run and cached (debian_os.py)."""
    if os.geteuid() != 0:
        pytest.skip("building the Debian root needs root (mmdebstrap --mode=root)")
    if shutil.which("mmdebstrap") is None:
        pytest.skip("mmdebstrap is not installed (apt-get install mmdebstrap)")
    return build_root()


@pytest.fixture(scope="session")
def debian_prefetch_list(debian_root: DebianRoot) -> Path:
    """The root's prefetch list, recorded by a cold streamed boot the first time (debian_stream.py)."""
    _qemu()
    return recorded_prefetch_list(debian_root)


@pytest.fixture(scope="session")
def debian_streamed(debian_root: DebianRoot, debian_prefetch_list: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[StreamedOs]:
    """The root published once per run, with its prefetch list, and served on 127.0.0.1."""
    with served(debian_root, tmp_path_factory.mktemp("debian-stream"), debian_prefetch_list) as (keys, server):
        yield StreamedOs(debian_root, keys, server)


@pytest.fixture(scope="session")
def debian_floor(debian_root: DebianRoot, tmp_path_factory: pytest.TempPathFactory) -> FloorBoots:
    """The floor of this run, booted once: the streamed boot's time target is relative to it."""
    _qemu()
    return boot_floor_twice(debian_root, tmp_path_factory.mktemp("floor"))
