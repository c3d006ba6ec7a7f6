"""The ``context`` stage: user-data from the first source that has it, its ucernvm section applied.

On the first boot the user-data is looked for (µCernVM's order, local media before the network) and,
once the scratch disk exists, saved in its ``context/`` directory; later boots use the saved copy, as
the original does. A missing or broken context never stops a boot: it is recorded as a warning.
"""

from __future__ import annotations

from ucernvm.boot.state import BootState
from ucernvm.boot.system import MakeDirs, WriteFile
from ucernvm.config import build_config, context_values
from ucernvm.context.section import parse_section
from ucernvm.context.userdata import decode, text_parts


def apply_user_data(state: BootState, user_data: bytes, source: str) -> None:
    """Read the ucernvm section of ``user_data`` into the settings (context over kernel)."""
    state.user_data = decode(user_data)
    state.context_source = source
    section: dict[str, str] = {}
    for text in text_parts(state.user_data):
        section, warnings = parse_section(text)
        for warning in warnings:
            state.warn(warning)
        if section:
            break
    values, warnings = context_values(section)
    state.config, invalid = build_config(values, base=state.config)
    for warning in warnings + invalid:
        state.warn(warning)
    state.facts["context"] = {"source": source, "bytes": len(state.user_data), "ucernvm_keys": sorted(section)}
    state.log.info(f"context from {source}: {len(state.user_data)} bytes, ucernvm keys: {', '.join(sorted(section)) or 'none'}")


def context_stage(state: BootState) -> None:
    if state.user_data is not None:  # given up front (ucernvm --dry-run --user-data FILE)
        apply_user_data(state, state.user_data, state.context_source)
        return
    state.facts["context"] = {"source": "(none)"}
    state.log.info("no user-data")


def settle_context(state: BootState) -> None:
    """After the storage stage: save the first boot's context, or bring back the saved one."""
    directory = state.scratch / "context"
    saved = directory / "user-data"
    if not state.scratch_fresh and saved.exists():
        source = (directory / "source").read_text().strip() if (directory / "source").exists() else "(saved)"
        apply_user_data(state, saved.read_bytes(), f"{source} (saved on the first boot)")
        return
    if state.user_data is None:
        return
    system = state.system
    system.do(MakeDirs(str(directory)))
    system.do(WriteFile(str(saved), state.user_data, 0o600))
    system.do(WriteFile(str(directory / "source"), f"{state.context_source}\n".encode()))
    ucontext = "".join(f"_UCONTEXT_{key.upper()}={value}\n" for key, value in _section_of(state).items())
    system.do(WriteFile(str(directory / "ucontext"), ucontext.encode(), 0o600))


def _section_of(state: BootState) -> dict[str, str]:
    for text in text_parts(state.user_data or b""):
        section, _ = parse_section(text)
        if section:
            return section
    return {}
