"""The Python part of the image: the interpreter running the builder, trimmed to what /init imports.

The import closure comes from a probe: the target interpreter, started clean (``-I -S``, as the
/init shebang starts it), imports the init module and the declared extra modules, then reports
``sys.modules`` and the shared objects it has mapped. Every module goes under ``/usr/lib/pythonX.Y/``
as a file, where an isolated interpreter looks (``os.pyc`` there is the landmark that lets Python find
its prefix, /usr): pure-Python modules of the standard library and of third-party packages as
sourceless hash-based .pyc files, extension modules under ``lib-dynload/`` or beside their package, and
the ``ucernvm`` package with its sources. Not a zip: Python 3.11's zipimport reads and unmarshals a
module's code twice (once to name its file, once to run it); from files, a TCG boot's imports took 0.3-0.5 s
less (docs/benchmarks.md, "Boot").
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ucernvm.errors import ConfigError
from ucernvm.image.cpio import Entry
from ucernvm.image.pyc import compile_files

_PROBE = r"""
import sys
out, paths, left_out, *names = sys.argv[1:]
sys.path.extend(p for p in paths.split(":") if p)
left_out = set(left_out.split(",")) - {""}


class LeftOut:  # as the image will be: these modules are not there
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name in left_out:
            raise ModuleNotFoundError(f"No module named {name!r} (left out of the image)", name=name)
        return None


sys.meta_path.insert(0, LeftOut)
for name in names:
    __import__(name)
    for extra in getattr(sys.modules[name], "IMAGE_MODULES", ()):
        __import__(extra)
snapshot = list(sys.modules.items())
with open("/proc/self/maps") as maps:  # before importing json, whose _json.so is not the init's
    mapped = sorted({line.split(None, 5)[5].strip() for line in maps if line.count(" ") >= 5 and ".so" in line})
import json
modules = []
for name, module in snapshot:
    spec = getattr(module, "__spec__", None)
    modules.append({
        "name": name,
        "origin": getattr(spec, "origin", None),
        "file": getattr(module, "__file__", None),
        "package": hasattr(module, "__path__"),
        "path": list(getattr(module, "__path__", []) or []),
    })
with open(out, "w") as stream:
    json.dump({"modules": modules, "mapped": mapped}, stream)
"""

_CODE_SUFFIXES = (".py", ".pyc", ".pyi", ".so")


@dataclass(frozen=True)
class Interpreter:
    """Where the running interpreter keeps its parts on the build host."""

    executable: Path
    version: str  # "3.11"
    stdlib: Path
    dynload: Path
    site_dirs: tuple[Path, ...]

    @classmethod
    def current(cls) -> Interpreter:
        site_dirs = [Path(p) for p in [*site.getsitepackages(), sysconfig.get_path("purelib"),
                                       sysconfig.get_path("platlib"), site.getusersitepackages()]]
        return cls(
            executable=Path(sys.executable).resolve(),
            version=f"{sys.version_info.major}.{sys.version_info.minor}",
            stdlib=Path(sysconfig.get_path("stdlib")),
            # The compiled-in lib-dynload: a venv's sysconfig paths would point into the venv.
            dynload=Path(sysconfig.get_config_var("DESTSHARED") or Path(sysconfig.get_path("stdlib"), "lib-dynload")),
            site_dirs=tuple(dict.fromkeys(p for p in site_dirs if p.is_dir())),
        )

    @property
    def image_executable(self) -> str:
        return f"usr/bin/python{self.version}"

    @property
    def image_lib(self) -> str:
        return f"usr/lib/python{self.version}"


@dataclass
class LoadedModule:
    name: str
    origin: str | None
    file: str | None
    package: bool
    path: list[str]

    @property
    def source(self) -> Path | None:
        """The file the module was loaded from (frozen stdlib modules included), if any."""
        for candidate in (self.origin, self.file):
            if candidate and candidate not in ("built-in", "frozen") and os.path.isfile(candidate):
                return Path(candidate)
        return None


@dataclass
class Probe:
    modules: list[LoadedModule]
    mapped: list[Path]


def probe_imports(interpreter: Interpreter, modules: Sequence[str], paths: Sequence[Path],
                  left_out: Sequence[str] = ()) -> Probe:
    """Import *modules* in a clean child of *interpreter* and report what got loaded; importing one of
    *left_out* fails there, as it will in the image (for imports whose importer copes without)."""
    search = [*(str(p) for p in paths), *(str(p) for p in interpreter.site_dirs)]
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        # The image has no locale variables; the kernel passes HOME and TERM to init.
        result = subprocess.run(
            [str(interpreter.executable), "-I", "-S", "-c", _PROBE, out.name, ":".join(search), ",".join(left_out),
             *modules],
            capture_output=True, env={"HOME": "/", "TERM": "linux"}, check=False,
        )
        if result.returncode != 0:
            lines = result.stderr.decode(errors="replace").strip().splitlines()
            raise ConfigError(
                f"the init module or an extra module does not import: {lines[-1] if lines else result.returncode}",
                hint=f"these must import cleanly with `python -I -S`: {', '.join(modules)}",
            )
        report = json.loads(Path(out.name).read_text())
    return Probe(
        modules=[LoadedModule(**m) for m in report["modules"]],
        mapped=[Path(p) for p in report["mapped"] if os.path.isfile(p)],
    )


@dataclass
class PythonPayload:
    """The image entries of the Python runtime, and the ELF files whose libraries must come along."""

    interpreter: Interpreter
    entries: list[Entry] = field(default_factory=list)
    elf_roots: list[Path] = field(default_factory=list)
    mapped_libraries: list[Path] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)  # every module in the closure


def _under(path: Path, roots: Iterable[Path]) -> Path | None:
    """The longest of *roots* containing *path*, or None."""
    best: Path | None = None
    for root in roots:
        if path.is_relative_to(root) and (best is None or len(root.parts) > len(best.parts)):
            best = root
    return best


def python_payload(
    interpreter: Interpreter,
    closure: Probe,
    package_dir: Path,
    init_paths: Sequence[Path],
    staging: Path,
    optimize: int,
) -> PythonPayload:
    """Place the probed closure's files in the image; compile every module to .pyc."""
    payload = PythonPayload(interpreter, modules=sorted(m.name for m in closure.modules))
    lib = interpreter.image_lib
    site_dirs = [p.resolve() for p in interpreter.site_dirs]
    stdlib = interpreter.stdlib.resolve()
    dynload = interpreter.dynload.resolve()
    init_roots = [p.resolve() for p in init_paths]
    roots = [stdlib, dynload, *site_dirs, *init_roots]

    files: dict[str, tuple[Path, str]] = {}  # image path -> (source, component)
    loaded_files: set[Path] = set()
    for module in closure.modules:
        source = module.source
        if source is None or module.name.split(".")[0] == package_dir.name:
            continue  # built in, or the ucernvm package, which is added whole below
        real = source.resolve()
        loaded_files.add(real)
        root = _under(real, roots)
        if root is None:
            raise ConfigError(
                f"module {module.name} comes from {source}, outside the stdlib, site-packages and init paths"
            )
        rel = real.relative_to(root).as_posix()
        if real.suffix == ".so":
            target = f"{lib}/lib-dynload/{rel}" if root == dynload else f"{lib}/{rel}"
            files[target] = (real, "extensions")
            payload.elf_roots.append(real)
        elif root in init_roots:
            files[f"{lib}/{rel}"] = (real, "init")
        else:
            files[f"{lib}/{rel}"] = (real, "stdlib" if root == stdlib else "third-party")
        if module.package and root in site_dirs:
            # Data files next to a third-party package's modules (certificates, tables...).
            for data in sorted(real.parent.iterdir()):
                if data.is_file() and data.suffix not in _CODE_SUFFIXES:
                    files[f"{lib}/{data.relative_to(root).as_posix()}"] = (data, "third-party")

    for source in sorted(package_dir.rglob("*")):
        if source.is_file() and "__pycache__" not in source.parts and source.suffix != ".pyc":
            rel = source.relative_to(package_dir.parent).as_posix()
            files[f"{lib}/{rel}"] = (source, "ucernvm")

    # Libraries a module opened itself (ctypes) are not anybody's DT_NEEDED: take them from the maps.
    payload.mapped_libraries = [
        p for p in closure.mapped
        if p.resolve() not in loaded_files and p.resolve() != interpreter.executable and ".so" in p.name
    ]

    compiled = staging / "pyc"
    jobs = [(source, compiled / (target + "c"), f"/{target}")
            for target, (source, _component) in files.items() if source.suffix == ".py"]
    compile_files(jobs, optimize)

    for target, (source, component) in sorted(files.items()):
        if source.suffix == ".py" and component == "ucernvm":
            # The project's own sources too (tracebacks show the lines, and the OS gets copies of some
            # modules: the #PIN login hook runs them with the OS's Python), with the bytecode where
            # Python looks for it next to a source; unchecked hash-based .pyc files are never re-validated.
            directory, _, name = target.rpartition("/")
            cached = f"{directory}/__pycache__/{name[:-3]}.{sys.implementation.cache_tag}.pyc"
            payload.entries.append(Entry.file(target, source, component))
            payload.entries.append(Entry.file(cached, compiled / (target + "c"), component))
        elif source.suffix == ".py":
            payload.entries.append(Entry.file(target + "c", compiled / (target + "c"), component))
        elif source.suffix == ".so":
            payload.entries.append(Entry.file(target, source, component, perm=0o755))
        else:
            payload.entries.append(Entry.file(target, source, component))
    payload.entries.append(Entry.file(interpreter.image_executable, interpreter.executable, "python", perm=0o755))
    payload.elf_roots.append(interpreter.executable)
    return payload

