"""The image builder's parts, without a VM: cpio, compression, ELF closure, module order, Python runtime."""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
import shutil
import site
import stat
import struct
import subprocess
import sys
from pathlib import Path, PosixPath
from typing import Any

import pytest

from media_images import iso_image

from ucernvm.errors import ConfigError, UcernvmError
from ucernvm.image import cpio
from ucernvm.image.builder import BuildOptions, build_image
from ucernvm.image.compress import compress
from ucernvm.image.cpio import Entry
from ucernvm.image.elfdeps import LibraryResolver, elf_info
from ucernvm.image.kernel import bzimage_release, extract_vmlinux
from ucernvm.image.kmods import ModuleIndex, modname
from ucernvm.image.pyc import compile_files
from ucernvm.image.tools import find_tool
from ucernvm.launch.media import create_sparse_disk, parse_size
from ucernvm.launch.qemu import LaunchOptions, qemu_command

needs_cpio = pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio is not installed (apt-get install cpio)")
needs_zstd = pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd is not installed (apt-get install zstd)")


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("UCERNVM_CACHE", str(cache))
    return cache


def sample_entries(tree: Path) -> list[Entry]:
    (tree / "payload.bin").write_bytes(bytes(range(256)) * 41 + b"odd")  # not a multiple of 4
    return [
        Entry.file("usr/bin/tool", tree / "payload.bin", "test", perm=0o755),
        Entry.blob("etc/config", b"key = value\n", "test"),
        Entry.symlink("bin", "usr/bin"),
        Entry.directory("tmp", perm=0o1777),
        Entry.chardev("dev/null", 1, 3),
    ]


def newc_headers(data: bytes) -> list[dict[str, int | str]]:
    """Headers of a newc archive, read straight from the bytes (independently of the writer)."""
    names = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize", "devmajor", "devminor",
             "rdevmajor", "rdevminor", "namesize", "check")
    headers, offset = [], 0
    while True:
        assert data[offset:offset + 6] == b"070701"
        fields = {n: int(data[offset + 6 + 8 * i: offset + 14 + 8 * i], 16) for i, n in enumerate(names)}
        start = offset + 110
        name = data[start:start + fields["namesize"] - 1].decode()
        fields["name"] = name
        offset = (start + fields["namesize"] + 3) & ~3
        offset = (offset + fields["filesize"] + 3) & ~3
        if name == "TRAILER!!!":
            return headers
        headers.append(fields)


@needs_cpio
def test_cpio_round_trip_with_gnu_cpio(tmp_path: Path) -> None:
    entries = sample_entries(tmp_path)
    archive = tmp_path / "a.cpio"
    with archive.open("wb") as out:
        written = cpio.write(entries, out, mtime=1234567890)
    assert written == archive.stat().st_size and written % 4 == 0

    listing = subprocess.run(["cpio", "-t", "--quiet"], stdin=archive.open("rb"), capture_output=True, text=True,
                             check=True).stdout.split()
    assert listing == ["bin", "dev", "dev/null", "etc", "etc/config", "tmp", "usr", "usr/bin", "usr/bin/tool"]

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    subprocess.run(["cpio", "-i", "-d", "--quiet", "--no-absolute-filenames"], stdin=archive.open("rb"),
                   cwd=out_dir, check=os.geteuid() != 0)  # as non-root only mknod fails
    assert (out_dir / "usr/bin/tool").read_bytes() == (tmp_path / "payload.bin").read_bytes()
    assert stat.S_IMODE((out_dir / "usr/bin/tool").stat().st_mode) == 0o755
    assert (out_dir / "etc/config").read_text() == "key = value\n"
    assert os.readlink(out_dir / "bin") == "usr/bin"
    assert stat.S_IMODE((out_dir / "tmp").stat().st_mode) == 0o1777

    headers = {h["name"]: h for h in newc_headers(archive.read_bytes())}
    assert [h["ino"] for h in headers.values()] == list(range(1, len(headers) + 1))
    assert {(h["uid"], h["gid"], h["mtime"]) for h in headers.values()} == {(0, 0, 1234567890)}
    assert (headers["dev/null"]["rdevmajor"], headers["dev/null"]["rdevminor"]) == (1, 3)
    assert stat.S_ISCHR(headers["dev/null"]["mode"])


def test_values_a_newc_header_cannot_hold_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """newc fields are 8 hex digits: a ninth would shift every later field and corrupt the archive."""
    with pytest.raises(ConfigError, match="mtime 4294967296"):
        cpio.write(sample_entries(tmp_path), io.BytesIO(), mtime=1 << 32)
    cpio.write(sample_entries(tmp_path), io.BytesIO(), mtime=(1 << 32) - 1)  # 2106-02-07, the last one
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(1 << 32))
    with pytest.raises(ConfigError, match="SOURCE_DATE_EPOCH=4294967296 is after"):
        build_image(BuildOptions(output=tmp_path / "image"))
    assert not (tmp_path / "image").exists()


def test_a_file_of_4_gib_is_refused_by_its_names(tmp_path: Path) -> None:
    big = tmp_path / "big.so"
    with big.open("wb") as sparse:
        sparse.truncate(1 << 32)
    with pytest.raises(ConfigError) as refused:
        cpio.write([Entry.file("usr/lib/big.so", big, "libraries")], io.BytesIO())
    assert refused.value.message == (f"/usr/lib/big.so (from {big}) has 4294967296 bytes: "
                                     "an initramfs's cpio (newc) archive holds files under 4 GiB")


class ShrinkingPath(PosixPath):
    """A file that something truncates right after the archive first stat()s it."""

    def stat(self, *args: Any, **kwargs: Any) -> os.stat_result:
        result = super().stat(*args, **kwargs)
        os.truncate(self, 3)
        return result


class ShrinkingOnOpenPath(PosixPath):
    """A file that something truncates as the archive opens it to copy."""

    def open(self, *args: Any, **kwargs: Any) -> Any:
        os.truncate(self, 3)
        return super().open(*args, **kwargs)


@pytest.mark.parametrize("shrinking", [ShrinkingPath, ShrinkingOnOpenPath])
def test_a_file_that_changes_size_while_archived_is_a_one_line_error(tmp_path: Path, shrinking: type[Path]) -> None:
    """Whenever it changes after its header is written, the archive would be broken: it is refused."""
    source = tmp_path / "payload.bin"
    source.write_bytes(b"0123456789")
    with pytest.raises(UcernvmError) as changed:
        cpio.write([Entry.file("usr/lib/payload.bin", shrinking(source), "libraries")], io.BytesIO())
    assert changed.value.message == (f"/usr/lib/payload.bin (from {source}) changed size while being archived: "
                                     "10 bytes when its header was written, 3 read")
    assert "\n" not in changed.value.message and changed.value.hint


def test_a_failed_initramfs_leaves_no_partial_file(tmp_path: Path) -> None:
    """The build stops at a file the cpio archive cannot hold, and the output keeps no half-written initrd."""
    inputs = tmp_path / "inputs"
    (inputs / "keys").mkdir(parents=True)
    shutil.copyfile(Path(__file__).parent.parent / "initramfs" / "init.template", inputs / "init.template")
    for listing in ("modules.txt", "python-modules.txt", "python-modules-left-out.txt"):
        (inputs / listing).write_text("")
    big = tmp_path / "big.dat"
    with big.open("wb") as sparse:
        sparse.truncate(1 << 32)
    (inputs / "tools.txt").write_text(f"file usr/share/big.dat {big} data some-package\n")
    (tmp_path / "tiny_init.py").write_text("def main():\n    return 0\n")
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(fake_bzimage(Path(find_tool("true")).read_bytes(), "6.1.0-test-amd64"))  # any ELF
    output = tmp_path / "image"
    with pytest.raises(ConfigError, match="has 4294967296 bytes"):
        build_image(BuildOptions(output=output, kernel=kernel, inputs=inputs, init="tiny_init:main",
                                 init_paths=(tmp_path,)))
    assert list(output.iterdir()) == []


def test_cpio_refuses_two_different_entries_for_one_path(tmp_path: Path) -> None:
    same = [Entry.blob("etc/a", b"1", "x"), Entry.blob("etc/a", b"1", "y")]
    assert [e.path for e in cpio.normalize(same)] == ["etc", "etc/a"]
    (tmp_path / "one").write_bytes(b"1")
    (tmp_path / "two").write_bytes(b"2")
    with pytest.raises(ConfigError) as refused:
        cpio.normalize([Entry.file("etc/a", tmp_path / "one", "tools"), Entry.file("etc/a", tmp_path / "two", "libraries")])
    assert str(refused.value) == (f"two different files for the same place in the image: /etc/a (from {tmp_path}/one) "
                                  f"of tools and /etc/a (from {tmp_path}/two) of libraries")


@needs_zstd
@needs_cpio
def test_cpio_and_compression_are_reproducible(tmp_path: Path) -> None:
    outputs = []
    for run in range(2):
        tree = tmp_path / f"tree{run}"
        tree.mkdir()
        entries = sample_entries(tree)
        os.utime(tree / "payload.bin", (run * 1000, run * 1000))  # host metadata must not leak
        archive = tmp_path / f"{run}.cpio"
        with archive.open("wb") as out:
            cpio.write(list(reversed(entries)) if run else entries, out)
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        packed, cached = compress(archive, digest, "zstd", use_cache=False)
        assert not cached
        outputs.append(packed.read_bytes())
    assert outputs[0] == outputs[1]
    listing = subprocess.run("zstd -dc | cpio -t --quiet", shell=True, input=outputs[0], capture_output=True,
                             check=True).stdout.decode().split()
    assert "usr/bin/tool" in listing


@pytest.mark.skipif(shutil.which("xz") is None, reason="xz is not installed (apt-get install xz-utils)")
def test_xz_segments_use_crc32_for_the_kernel(tmp_path: Path) -> None:
    archive = tmp_path / "a.cpio"
    with archive.open("wb") as out:
        cpio.write(sample_entries(tmp_path), out)
    packed, _ = compress(archive, "digest", "xz")
    info = subprocess.run(["xz", "--robot", "--list", str(packed)], capture_output=True, text=True, check=True)
    assert "CRC32" in info.stdout and "CRC64" not in info.stdout
    assert lzma.decompress(packed.read_bytes()) == archive.read_bytes()
    assert compress(archive, "digest", "xz")[1]  # the second time it comes from the cache


@pytest.mark.skipif(shutil.which("lz4") is None, reason="lz4 is not installed (apt-get install lz4)")
def test_lz4_segments_use_the_legacy_frame_the_kernel_reads(tmp_path: Path) -> None:
    archive = tmp_path / "a.cpio"
    with archive.open("wb") as out:
        cpio.write(sample_entries(tmp_path), out)
    packed, _ = compress(archive, "digest", "lz4", use_cache=False)
    assert packed.read_bytes()[:4] == bytes.fromhex("02214c18")  # lib/decompress_unlz4.c: ARCHIVE_MAGICNUMBER
    unpacked = subprocess.run(["lz4", "-dc", str(packed)], capture_output=True, check=True).stdout
    assert unpacked == archive.read_bytes()


def test_elf_closure_of_the_running_python_matches_ldd() -> None:
    executable = Path(sys.executable).resolve()
    closure = LibraryResolver().closure([executable])
    assert "libc.so.6" in closure.libraries
    for soname, path in closure.libraries.items():
        assert path.name == soname  # copied under the soname, not the versioned file name
        assert elf_info(path.resolve()).soname in (soname, None)
    assert closure.interpreter == elf_info(executable).interpreter
    if shutil.which("ldd"):
        ldd = subprocess.run(["ldd", str(executable)], capture_output=True, text=True, check=True).stdout
        sonames = {line.split()[0] for line in ldd.splitlines() if "=>" in line}
        assert sonames == set(closure.libraries)


def test_elf_closure_reports_a_missing_library(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"needs lib[\w.+-]+\.so\.\d+, which is not in {tmp_path}"):
        LibraryResolver(system_dirs=[str(tmp_path)]).closure([Path(sys.executable).resolve()])


def write_index(directory: Path) -> Path:
    (directory / "modules.dep").write_text(
        "kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko\n"
        "kernel/fs/jbd2/jbd2.ko:\n"
        "kernel/fs/mbcache.ko:\n"
        "kernel/lib/crc16.ko:\n"
        "kernel/crypto/crc32c_generic.ko:\n"
        "kernel/arch/x86/crypto/crc32c-intel.ko:\n"
        "kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko\n"
        "kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n"
        "kernel/net/core/failover.ko:\n"
        "kernel/drivers/char/hw_random/virtio-rng.ko:\n"
    )
    (directory / "modules.softdep").write_text("# comment\nsoftdep ext4 pre: crypto-crc32c\n")
    (directory / "modules.alias").write_text(
        "alias crypto-crc32c crc32c_intel\nalias crypto-crc32c crc32c_generic\n"
        "alias virtio:d00000001v* virtio_net\n"
    )
    (directory / "modules.builtin").write_text("kernel/fs/unix.ko\n")
    return directory


def test_module_load_order_follows_modules_dep_and_softdeps(tmp_path: Path) -> None:
    index = ModuleIndex.load(write_index(tmp_path))
    order = index.load_order(["ext4", "virtio_net"], preferred=["crc32c_generic"])
    assert order == ["crc32c_generic", "jbd2", "mbcache", "crc16", "ext4", "failover", "net_failover", "virtio_net"]
    # Without a preference a softdep alias brings every module it names.
    assert index.load_order(["ext4"])[:2] == ["crc32c_intel", "crc32c_generic"]
    assert index.load_order(["virtio-rng", "unix"]) == ["virtio_rng"]  # dashes match; built-ins are skipped
    assert index.resolve("virtio:d00000001v00001AF4") == ["virtio_net"]
    assert modname("kernel/drivers/char/hw_random/virtio-rng.ko.xz") == "virtio_rng"
    with pytest.raises(KeyError):
        index.load_order(["no_such_module"])


def fake_bzimage(elf: bytes, release: str) -> bytes:
    """A bzImage-shaped file: boot header (protocol 2.15), release string, xz payload + size."""
    setup_sects = 1
    image = bytearray((setup_sects + 1) * 512)
    image[0x1F1] = setup_sects
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, 0x20F)
    struct.pack_into("<H", image, 0x20E, 0x300 - 0x200)  # kernel_version points at 0x300
    image[0x300:0x300 + len(release) + 1] = release.encode() + b"\0"
    payload = lzma.compress(elf, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32) + struct.pack("<I", len(elf))
    struct.pack_into("<II", image, 0x248, 16, len(payload))
    return bytes(image) + b"\0" * 16 + payload


def test_vmlinux_extraction_follows_the_boot_header() -> None:
    elf = b"\x7fELF" + bytes(range(200)) * 50
    image = fake_bzimage(elf, "6.1.0-test-amd64 (builder@host) #1 SMP")
    assert extract_vmlinux(image) == elf
    assert bzimage_release(image) == "6.1.0-test-amd64"
    with pytest.raises(ConfigError, match="bzImage"):
        extract_vmlinux(b"\0" * 1024)


def test_a_damaged_bzimage_is_a_clear_error() -> None:
    elf = b"\x7fELF" + os.urandom(20000)  # random: the compressed payload is as long as the ELF
    image = fake_bzimage(elf, "6.1.0-test-amd64")
    with pytest.raises(ConfigError, match="cut short"):
        extract_vmlinux(image[:len(image) // 2])
    corrupt = bytearray(image)
    corrupt[len(image) // 2:len(image) // 2 + 64] = bytes(64)
    with pytest.raises(ConfigError, match="does not decompress"):
        extract_vmlinux(bytes(corrupt))
    # A payload that ends before its stream does (the header's length is wrong) is no ELF kernel either.
    header_end = 2 * 512 + 16
    short = bytearray(image)
    struct.pack_into("<I", short, 0x24C, (len(image) - header_end) // 2)
    with pytest.raises(ConfigError, match="does not decompress"):
        extract_vmlinux(bytes(short))


def test_pyc_files_are_reproducible_and_import_without_source(tmp_path: Path) -> None:
    source = tmp_path / "src" / "sample.py"
    source.parent.mkdir()
    source.write_text("NAMES = {'alpha', 'beta', 'gamma', 'delta'}\ndef f():\n    assert True\n    return 42\n")
    outputs = []
    for run in range(2):
        target = tmp_path / f"out{run}" / "sample.pyc"
        compile_files([(source, target, "/usr/lib/python3.11/sample.py")], optimize=0)
        outputs.append(target.read_bytes())
    assert outputs[0] == outputs[1]
    check = (f"import sys; sys.path.insert(0, {str(tmp_path / 'out0')!r}); import sample; "
             "assert sample.f() == 42; print(sample.__spec__.loader.__class__.__name__)")
    result = subprocess.run([sys.executable, "-I", "-S", "-c", check], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "SourcelessFileLoader"


def test_python_runtime_runs_in_a_chroot(tmp_path: Path) -> None:
    """The trimmed interpreter, its modules and libraries, unpacked alone, import the init module."""
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")
    from ucernvm.image.builder import INPUTS_DIR, layout_entries, python_entries

    init_dir = tmp_path / "init"
    init_dir.mkdir()
    (init_dir / "tiny_init.py").write_text(
        "import json, ctypes, sys\nfrom ucernvm.image.kmods import ModuleIndex\n"
        "def main():\n    print(json.dumps({'ok': ctypes.sizeof(ctypes.c_long), 'json': json.__file__, 'prefix': sys.prefix}))\n"
        "    return 0\n"
    )
    entries, python = python_entries("tiny_init:main", [init_dir], [], INPUTS_DIR, tmp_path / "staging", 0)
    assert "json" in python.modules and "ucernvm.image.kmods" in python.modules
    assert "http" not in python.modules  # only what the init imports
    archive = tmp_path / "runtime.cpio"
    with archive.open("wb") as out:
        cpio.write([*entries, *layout_entries()], out)
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["cpio", "-i", "-d", "--quiet"], stdin=archive.open("rb"), cwd=root, check=True)
    assert (root / "init").read_text().startswith(f"#!/usr/bin/python{python.interpreter.version} -SIu\n")
    result = subprocess.run([find_tool("chroot"), str(root), "/init"], capture_output=True, text=True, env={},
                            check=False)
    assert result.returncode == 0, result.stderr
    # The standard library as sourceless .pyc files, found from the prefix their os.pyc marks (no zip).
    lib = f"/usr/lib/python{python.interpreter.version}"
    assert json.loads(result.stdout) == {"ok": 8, "json": f"{lib}/json/__init__.pyc", "prefix": "/usr"}
    assert not (root / lib.lstrip("/") / "json" / "__init__.py").exists() and not list(root.rglob("*.zip"))


def test_modules_left_out_of_the_image_are_missing_for_the_probe() -> None:
    """shutil copes without bz2 and lzma, which the boot never uses: the builder's probe finds them
    missing, as the image will, so neither they nor their extension modules are packed."""
    from ucernvm.image.builder import INPUTS_DIR, _list_file
    from ucernvm.image.pyruntime import Interpreter, probe_imports

    left_out = _list_file(INPUTS_DIR / "python-modules-left-out.txt")
    assert {"bz2", "lzma"} <= set(left_out)
    packed = {m.name for m in probe_imports(Interpreter.current(), ["shutil"], [], left_out=left_out).modules}
    assert "shutil" in packed and not packed & {"bz2", "lzma", "_bz2", "_lzma"}
    assert {"bz2", "lzma"} <= {m.name for m in probe_imports(Interpreter.current(), ["shutil"], []).modules}


# Imports the boot defers that the image leaves out on purpose, each with what happens instead.
NOT_IN_THE_IMAGE = {
    # encrypted CernVM Online contexts: the context stage reports that cryptography is missing
    "cryptography.hazmat.primitives.ciphers", "cryptography.hazmat.primitives.ciphers.modes",
    "cryptography.hazmat.decrepit.ciphers.modes",
}


def test_every_import_the_boot_defers_is_in_the_image() -> None:
    """An import inside a function (kept off the boot's path) is not seen by the builder's probe; the
    image must still carry it, or the boot fails only where that path runs (a PAC file, a multipart
    user-data...)."""
    import ast

    import ucernvm
    from ucernvm.image.builder import INPUTS_DIR, _list_file
    from ucernvm.image.pyruntime import Interpreter, probe_imports

    package = Path(ucernvm.__file__).resolve().parent
    extra = _list_file(INPUTS_DIR / "python-modules.txt")
    left_out = _list_file(INPUTS_DIR / "python-modules-left-out.txt")
    closure = {m.name for m in probe_imports(Interpreter.current(), ["ucernvm.boot.pid1", *extra], [package.parent],
                                             left_out=left_out).modules}
    deferred: dict[str, str] = {}  # module → the module whose function imports it
    names: list[str] = []  # "module:name" of each `from module import name` among them
    for name in sorted(n for n in closure if n.split(".")[0] == "ucernvm"):
        path = package.parent / (name.replace(".", "/") + ".py")
        tree = ast.parse((path if path.exists() else path.with_suffix("") / "__init__.py").read_text())
        for function in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in ast.walk(function):
                if isinstance(node, ast.Import):
                    deferred |= {alias.name: name for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    deferred[node.module] = name
                    names += [f"{node.module}:{alias.name}" for alias in node.names]
    assert "email.policy" in deferred  # the scan finds the deferred imports
    missing = {module: by for module, by in deferred.items() if module not in closure and module not in NOT_IN_THE_IMAGE}
    assert not missing, f"imported inside functions but not packed (add them to IMAGE_MODULES in pid1.py): {missing}"
    # A name can load more modules than its module does: concurrent.futures loads its .thread module only
    # when ThreadPoolExecutor is asked for.
    loaded = _modules_loaded_by([name for name in names if name.partition(":")[0] not in NOT_IN_THE_IMAGE])
    # (Here bz2 and lzma load, with their extensions, where the image has neither.)
    unpacked = {m for m in loaded - closure if m.lstrip("_").split(".")[0] not in left_out}
    assert not unpacked, f"loaded by names imported inside functions but not packed (add them to IMAGE_MODULES): {unpacked}"


# Modules the boot's own path leaves out: under emulation every import costs 15-20x its native time,
# and dataclasses brings inspect, ast, dis and tokenize (~19 ms natively) and compiles methods for each
# class it decorates; the boot's records are named tuples and plain classes. pyroute2's ifinfmsg would
# bring multiprocessing, pickle and platform (net_rtnl.linkmsg declares the link attributes instead),
# uuid platform again (only the geo API needs one).
NOT_ON_THE_BOOT_PATH = ("dataclasses", "inspect", "ast", "multiprocessing", "pickle", "platform", "uuid")


# Modules PID 1 leaves to the processes that need them: logging (with traceback, tokenize, textwrap and
# string) comes with pyroute2's DHCP code into the network stage's child; the client logs through
# lazylog.py, and the FUSE daemon's pools are plain threads (concurrent.futures imports logging). subprocess
# (with locale) is imported where a tool runs, which a later boot does not; OpenSSL's hashes (_hashlib)
# where data in bulk is verified (cvmfs/hashing.py).
NOT_IN_PID_1 = ("logging", "concurrent.futures", "subprocess", "locale", "_hashlib")


def _modules_loaded_by(imports: list[str]) -> set[str]:
    """What ``imports`` load ("module", or "module:name" for ``from module import name``), in an
    interpreter started as the image starts it: no site module, the package and the site directories on
    the path."""
    import ucernvm

    code = ("import sys; sys.path[:0] = sys.argv[1].split(':'); "
            "[exec(f'from {m} import {n}' if n else f'import {m}') "
            "for m, _, n in (i.partition(':') for i in sys.argv[2:])]; "
            "print(' '.join(sys.modules))")
    search = ":".join([str(Path(ucernvm.__file__).resolve().parents[1]), *site.getsitepackages()])
    result = subprocess.run([sys.executable, "-I", "-S", "-c", code, search, *imports], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_the_boot_path_leaves_out_the_modules_it_does_without() -> None:
    from ucernvm.boot.stages import MODULES

    loaded = _modules_loaded_by(["ucernvm.boot.pid1", *MODULES])
    assert "ucernvm.boot.network" in loaded and "ucernvm.client.fetcher" in loaded  # the whole path was imported
    assert not loaded & set(NOT_ON_THE_BOOT_PATH)


def test_pid_1_leaves_out_what_only_its_children_use() -> None:
    from ucernvm.boot.stages import STAGES

    own = [module for stage in STAGES if not stage.background for module in stage.modules]
    loaded = _modules_loaded_by(["ucernvm.boot.pid1", *own])
    assert "ucernvm.boot.rootfs" in loaded and "ucernvm.client.filesystem" in loaded
    assert not loaded & set(NOT_IN_PID_1)


def test_launch_command_boots_pvh_under_tcg(tmp_path: Path) -> None:
    image = tmp_path / "image"
    image.mkdir()
    for name in ("vmlinuz", "vmlinux", "initrd.img"):
        (image / name).write_bytes(b"x")
    (image / "manifest.json").write_text('{"kernel": {"pvh": true}}')
    disk = create_sparse_disk(tmp_path / "disk,1.raw", parse_size("20G"))
    assert disk.stat().st_size == 20 << 30 and disk.stat().st_blocks == 0
    options = LaunchOptions(image=image, disks=(disk,), cmdline="quiet ucernvm.x=1", net_forwards=("tcp:8022:22",))
    argv = qemu_command(options, "tcg")
    assert argv[argv.index("-kernel") + 1] == str(image / "vmlinux")
    assert argv[argv.index("-append") + 1] == "console=ttyS0 panic=-1 libata.force=nodbdelay quiet ucernvm.x=1"
    assert "user,id=net0,hostfwd=tcp:127.0.0.1:8022-:22" in argv
    assert f"file={tmp_path}/disk,,1.raw,if=none,id=disk0,format=raw" in argv
    assert "-no-reboot" in argv
    assert argv[argv.index("-cpu") + 1] == "qemu64,+rdrand"
    assert argv[argv.index("-machine") + 1] == "q35,sata=off"  # virtio disks; the context CD-ROM needs SATA
    with_cdrom = qemu_command(LaunchOptions(image=image, context=iso_image(tmp_path / "context.iso", {"user-data": b""})), "tcg")
    assert with_cdrom[with_cdrom.index("-machine") + 1] == "q35" and "media=cdrom" in ",".join(with_cdrom)
    kvm = qemu_command(options, "kvm")
    assert kvm[kvm.index("-kernel") + 1] == str(image / "vmlinuz")
    assert kvm[kvm.index("-cpu") + 1] == "host"
    chosen = qemu_command(LaunchOptions(image=image, cpu="Nehalem,+rdrand"), "kvm")
    assert chosen[chosen.index("-cpu") + 1] == "Nehalem,+rdrand"
    with pytest.raises(ConfigError, match="port forward"):
        qemu_command(LaunchOptions(image=image, net_forwards=("8022:22",)), "tcg")
    with pytest.raises(ConfigError, match="ISO"):
        qemu_command(LaunchOptions(image=image, context=image / "manifest.json"), "tcg")


def test_keys_and_tool_listing(tmp_path: Path) -> None:
    from ucernvm.image.builder import key_entries, tool_entries

    keys = tmp_path / "keys"
    (keys / "cern.ch").mkdir(parents=True)
    (keys / "cern.ch" / "cernvm-prod.cern.ch.pub").write_text("-----BEGIN PUBLIC KEY-----\n")
    (keys / "README.md").write_text("not a key")
    assert [(e.path, e.component) for e in key_entries(keys)] == [
        ("etc/cvmfs/keys/cern.ch/cernvm-prod.cern.ch.pub", "keys")
    ]
    listing = tmp_path / "tools.txt"
    listing.write_text(f"# comment\nfile usr/bin/py {sys.executable} python python3\nlink usr/bin/python py\n")
    entries = tool_entries(listing)
    assert [(e.path, stat.S_IMODE(e.mode)) for e in entries] == [("usr/bin/py", 0o755), ("usr/bin/python", 0o777)]
    listing.write_text("file usr/sbin/missing /nonexistent/tool storage-tools some-package\n")
    with pytest.raises(ConfigError) as error:
        tool_entries(listing)
    assert "apt-get install some-package" in error.value.hint
