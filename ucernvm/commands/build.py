"""``ucernvm build``: write vmlinuz, vmlinux, initrd.img and manifest.json, and print their sizes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ucernvm.image.builder import DEFAULT_INIT, BuildOptions, build_image
from ucernvm.image.compress import COMPRESSORS
from ucernvm.image.kernel import DEFAULT_PACKAGE
from ucernvm.image.kernel_source import DEFAULT_SOURCE_PACKAGE

SIZE_GOAL = 20_000_000  # vmlinuz + initrd.img, as the original µCernVM images
# Size table rows, in the order the image is described; unknown components follow.
_ROWS = ("kernel", "python", "stdlib", "extensions", "third-party", "shared-libs", "kernel-modules",
         "busybox", "storage-tools", "keys", "ca-certs", "ucernvm", "init")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "build",
        help="build the boot image (kernel + initramfs)",
        description="Build the boot image: the kernel (by default Debian's linux-image-amd64 via apt, cached), "
                    "and an initramfs holding the running Python trimmed to the init's imports, the "
                    "ucernvm package, kernel modules, busybox, e2fsprogs, keys and CA certificates. "
                    "Writes vmlinuz, vmlinux (the ELF that `ucernvm launch` boots under TCG), initrd.img and "
                    "manifest.json (what went in, sizes, and the build's timings), and prints their sizes. "
                    "Same inputs give the same vmlinuz, vmlinux and initrd.img, byte for byte "
                    "(SOURCE_DATE_EPOCH sets the file times).",
    )
    kernel = parser.add_mutually_exclusive_group()
    kernel.add_argument("--kernel", type=Path, metavar="PATH",
                        help="a linux-image .deb, an unpacked package tree, or a bare bzImage (no modules)")
    kernel.add_argument("--kernel-package", default=DEFAULT_PACKAGE, metavar="NAME",
                        help="Debian kernel package to fetch with apt (default: %(default)s)")
    kernel.add_argument("--kernel-source", nargs="?", const=DEFAULT_SOURCE_PACKAGE, metavar="PACKAGE",
                        help="build the ucernvm kernel instead: Debian's kernel source (PACKAGE, default "
                        f"{DEFAULT_SOURCE_PACKAGE}) with initramfs/kernel.config, every boot driver built in, "
                        "no modules; built once per source version and configuration, then cached. With "
                        "--compression lz4 it boots fastest and still fits the 20 MB goal")
    parser.add_argument("--keys", type=Path, metavar="DIR",
                        help="repository public keys (*.pub) for /etc/cvmfs/keys, in its subdirectories as given: the boot "
                        "trusts those of keys/FQRN/, keys/DOMAIN/ (cvmfs's layout: a site's /etc/cvmfs/keys "
                        "will do) and keys/ (default: initramfs/keys)")
    parser.add_argument("-o", "--output", type=Path, default=Path("image"), metavar="DIR",
                        help="output directory (default: %(default)s)")
    parser.add_argument("--compression", choices=sorted(COMPRESSORS), default=BuildOptions.compression,
                        help="initramfs compression (default: %(default)s)")
    parser.add_argument("--signed-modules", action="store_true",
                        help="keep the kernel modules' signatures (needed where the kernel enforces them, e.g. "
                        "Secure Boot lockdown); by default they are dropped, which spares their check at every boot")
    parser.add_argument("--no-cache", action="store_true",
                        help="compress every initramfs segment again instead of reusing cached ones")
    parser.add_argument("--init-module", default=DEFAULT_INIT, metavar="MODULE[:FUNCTION]",
                        help="what /init runs (default: %(default)s); tests boot their own small init")
    parser.add_argument("--init-path", type=Path, action="append", default=[], metavar="DIR",
                        help="directory holding the init module when it is outside the package (repeatable)")
    parser.add_argument("--extra-module", action="append", default=[], metavar="NAME",
                        help="also pack this Python module and its imports (repeatable)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    options = BuildOptions(
        output=args.output,
        kernel=args.kernel,
        kernel_package=args.kernel_package,
        kernel_source=args.kernel_source,
        keys=args.keys,
        init=args.init_module,
        init_paths=tuple(p.resolve() for p in args.init_path),
        extra_modules=tuple(args.extra_module),
        compression=args.compression,
        use_cache=not args.no_cache,
        signed_modules=args.signed_modules,
    )
    result = build_image(options, progress=lambda step: print(f"build: {step}", file=sys.stderr, flush=True))
    print(size_table(result.manifest))
    if "keys" not in result.manifest["components"]:
        print("note: no repository public keys packed (pass --keys DIR with *.pub files)", file=sys.stderr)
    print(f"wrote {result.vmlinuz}, {result.vmlinux}, {result.initrd}, {result.output / 'manifest.json'}")
    return 0


def _mb(size: int) -> str:
    return f"{size / 1e6:8.2f} MB"


def size_table(manifest: dict) -> str:
    components: dict[str, dict[str, int]] = manifest["components"]
    names = [n for n in _ROWS if n in components] + sorted(set(components) - set(_ROWS))
    lines = [f"{'component':<18}{'files':>7}{'size':>12}"]
    for name in names:
        row = components[name]
        label = "kernel (vmlinuz)" if name == "kernel" else name
        lines.append(f"{label:<18}{row['files']:>7}{_mb(row['bytes']):>12}")
    largest = ", ".join(f"/{path} {size / 1e6:.1f}" for path, _, size in manifest["files"][:5])
    lines.append(f"largest files (MB): {largest}")
    initrd = manifest["initrd"]
    unpacked = sum(segment["cpio_bytes"] for segment in initrd["segments"])
    parts = ", ".join(
        f"{s['name']} {s['compressed_bytes'] / 1e6:.2f} MB{' (cached)' if s['from_cache'] else ''}"
        for s in initrd["segments"]
    )
    lines.append(f"{'initramfs (cpio)':<25}{_mb(unpacked):>12}")
    lines.append(f"{'initrd.img':<25}{_mb(initrd['bytes']):>12}  {initrd['compression']}: {parts}")
    total = manifest["boot_bytes"]
    verdict = "within" if total <= SIZE_GOAL else "OVER"
    lines.append(f"{'vmlinuz + initrd.img':<25}{_mb(total):>12}  {verdict} the {SIZE_GOAL / 1e6:.0f} MB goal")
    phases = ", ".join(f"{k} {v:.1f}" for k, v in manifest["build"]["phases"].items())
    lines.append(f"build time {manifest['build']['seconds']:.1f} s ({phases})")
    return "\n".join(lines)
