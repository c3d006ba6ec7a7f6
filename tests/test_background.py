"""Background stages: run in a child process while the stages after them go on (ucernvm/boot/background.py)."""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

import pytest

from ucernvm.boot.log import BootLog
from ucernvm.boot.pipeline import BootFailure, Stage, run_stages, wait_for_background
from ucernvm.boot.state import BootState
from ucernvm.boot.system import DryRunSystem, MakeDirs, RealSystem
from ucernvm.config import BootConfig
from ucernvm.errors import NetworkError


def boot_state(system=None, **config) -> BootState:  # type: ignore[no-untyped-def]
    return BootState(system or RealSystem(), BootLog(io.StringIO()), config=BootConfig(**config) if config else None)


def wait_for_file(path: Path, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_background_stage_runs_alongside_and_reports_back(tmp_path: Path) -> None:
    marker = tmp_path / "storage-ran"

    def network(state: BootState) -> None:
        # Finishes only once the stage after it has run: proof that the two ran at the same time.
        state.facts["network"] = {"pid": os.getpid(), "saw_storage": wait_for_file(marker)}
        state.system.do(MakeDirs(str(tmp_path / "made-by-network")))
        state.warn("network: a warning from the child")
        state.log.info("network: configured")

    def storage(state: BootState) -> None:
        marker.write_text("x")
        state.facts["storage"] = {"network_done": "network" in state.facts}

    def servers(state: BootState) -> None:
        state.facts["servers"] = {"saw": state.facts.get("network", {}).get("saw_storage")}

    state = boot_state()
    stages = [Stage("network", (network,), background=True), Stage("storage", (storage,), alongside=True),
              Stage("servers", (servers,))]
    run_stages(state, stages)

    assert state.facts["network"]["pid"] != os.getpid() and state.facts["network"]["saw_storage"] is True
    assert state.facts["storage"] == {"network_done": False}
    assert state.facts["servers"] == {"saw": True}  # the stage that needs the network waited for it
    assert [record.name for record in state.stages] == ["network", "storage", "servers"]
    assert [record.status for record in state.stages] == ["ok", "ok", "ok"]
    network_record, storage_record, servers_record = state.stages
    # The child ended after the storage stage began (it waited for its marker; it may end before the
    # parent records the storage stage's end), and the servers stage began only after that.
    assert storage_record.start <= network_record.end <= servers_record.start
    assert (tmp_path / "made-by-network").is_dir()
    assert any(action.startswith("create directory") for action, _ in state.system.timings)
    assert state.warnings == ["network: a warning from the child"]
    messages = [message for _, _, message in state.log.records]
    assert "network: configured" in messages and "storage: started" in messages
    assert [stamp for stamp, _, _ in state.log.records] == sorted(stamp for stamp, _, _ in state.log.records)
    assert state.facts["background"]["stages"] == "network" and state.background is None


def test_consecutive_background_stages_share_one_child_in_order() -> None:
    def first(state: BootState) -> None:
        state.facts["first"] = os.getpid()

    def second(state: BootState) -> None:
        state.facts["second"] = (os.getpid(), state.facts.get("first"))

    state = boot_state()
    run_stages(state, [Stage("first", (first,), background=True), Stage("second", (second,), background=True),
                       Stage("last", (lambda state: None,))])
    child = state.facts["first"]
    assert child != os.getpid() and state.facts["second"] == [child, child]


def test_a_critical_background_failure_stops_the_boot_where_the_network_is_needed() -> None:
    ran: list[str] = []

    def network(state: BootState) -> None:
        raise NetworkError("no DHCP lease on eth0 within 1 s", "check the DHCP server")

    state = boot_state()
    stages = [Stage("network", (network,), background=True, hint="stage hint"),
              Stage("clock", (lambda state: ran.append("clock"),), background=True),
              Stage("storage", (lambda state: ran.append("storage"),), alongside=True),
              Stage("servers", (lambda state: ran.append("servers"),))]
    with pytest.raises(BootFailure) as failure:
        run_stages(state, stages)
    assert failure.value.stage == "network" and failure.value.message == "no DHCP lease on eth0 within 1 s"
    assert failure.value.hint == "check the DHCP server"
    assert ran == ["storage"]
    assert [(record.name, record.status) for record in state.stages] == [
        ("network", "failed"), ("clock", "skipped"), ("storage", "ok")]
    assert any("network: failed after" in message for _, _, message in state.log.records)


def test_a_stage_waiting_inside_gets_the_failure_and_stops() -> None:
    def network(state: BootState) -> None:
        raise NetworkError("no network interface found")

    def context(state: BootState) -> None:
        wait_for_background(state)  # as the context stage does before asking a metadata service

    state = boot_state()
    with pytest.raises(BootFailure) as failure:
        run_stages(state, [Stage("network", (network,), background=True),
                           Stage("context", (context,), critical=False, alongside=True)])
    assert failure.value.stage == "network"
    assert [(record.name, record.status) for record in state.stages] == [("network", "failed"), ("context", "stopped")]


def test_a_best_effort_background_failure_is_a_warning() -> None:
    def clock(state: BootState) -> None:
        raise NetworkError("no NTP server answered")

    state = boot_state()
    run_stages(state, [Stage("clock", (clock,), critical=False, background=True), Stage("servers", (lambda state: None,))])
    assert state.warnings == ["clock: no NTP server answered"]
    assert [record.status for record in state.stages] == ["warning", "ok"]


def test_a_child_that_dies_is_a_failure_not_a_hang() -> None:
    state = boot_state()
    with pytest.raises(BootFailure) as failure:
        run_stages(state, [Stage("network", (lambda state: os._exit(3),), background=True),
                           Stage("servers", (lambda state: None,))])
    assert failure.value.stage == "network"
    assert failure.value.message.endswith("ended without a result (exit status 3)")
    assert state.stages[0].status == "failed"


def test_a_failure_in_the_parent_ends_the_background_child() -> None:
    children: list[int] = []

    def network(state: BootState) -> None:
        time.sleep(60)

    def storage(state: BootState) -> None:
        children.append(state.background.pid)
        raise NetworkError("the scratch disk is gone")

    state = boot_state()
    started = time.monotonic()
    with pytest.raises(BootFailure) as failure:
        run_stages(state, [Stage("network", (network,), background=True), Stage("storage", (storage,), alongside=True)])
    assert failure.value.stage == "storage" and time.monotonic() - started < 30
    assert state.stages[0].status == "cancelled" and state.stages[0].message == "stopped: storage failed"
    with pytest.raises(ChildProcessError):
        os.waitpid(children[0], os.WNOHANG)  # killed and reaped
    assert state.background is None


def test_the_code_of_the_stages_to_come_is_imported_while_waiting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "later_stage_code.py").write_text("def run(state):\n    state.facts['later'] = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "later_stage_code", raising=False)
    state = boot_state()
    run_stages(state, [Stage("network", (lambda state: time.sleep(1),), background=True),
                       Stage("later", ("later_stage_code:run",))])
    assert state.facts["later"] is True
    assert state.facts["background"]["imported_ahead"]["modules"] == ["later_stage_code"]
    assert state.stages[1].imports < 0.05  # imported before the stage started, while the network ran


def test_steps_ahead_run_while_waiting_and_their_failures_are_left_to_the_stage(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "later_stage_ahead.py").write_text(
        "import os\n"
        "def prepare(state):\n    state.facts['prepared_in'] = os.getpid()\n"
        "def broken(state):\n    raise OSError('not yet')\n"
        "def run(state):\n    state.facts['ran'] = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "later_stage_ahead", raising=False)
    state = boot_state()
    run_stages(state, [Stage("network", (lambda state: time.sleep(1),), background=True),
                       Stage("later", ("later_stage_ahead:run",),
                             ahead=("later_stage_ahead:broken", "later_stage_ahead:prepare"))])
    assert state.facts["prepared_in"] == os.getpid() and state.facts["ran"] is True  # in PID 1, before the stage
    assert state.facts["background"]["done_ahead"]["steps"] == ["later_stage_ahead:prepare"]
    assert [record.status for record in state.stages] == ["ok", "ok"]


@pytest.mark.parametrize("how", ["dry run", "break point"])
def test_runs_in_order_in_one_process_without_a_real_boot_or_with_a_break_point(how: str) -> None:
    def early(state: BootState) -> None:  # as the early stage, which reads the kernel command line
        if how == "break point":
            state.config = BootConfig(break_stage="servers")

    def network(state: BootState) -> None:
        state.facts["network"] = os.getpid()

    state = boot_state(DryRunSystem()) if how == "dry run" else boot_state()
    run_stages(state, [Stage("early", (early,)), Stage("network", (network,), background=True),
                       Stage("servers", (lambda state: None,))])
    assert state.facts["network"] == os.getpid() and "background" not in state.facts


def test_a_stage_whose_code_is_missing_fails_with_its_screen_not_while_imported_ahead() -> None:
    state = boot_state()
    with pytest.raises(BootFailure) as failure:
        run_stages(state, [Stage("network", (lambda state: time.sleep(1),), background=True),
                           Stage("servers", ("ucernvm.boot.no_such_module:stage",))])
    assert failure.value.stage == "servers"
    assert "ModuleNotFoundError" in failure.value.message and "ucernvm.boot.no_such_module" in failure.value.message
    assert [record.status for record in state.stages] == ["ok", "failed"]


def test_without_a_new_process_the_stages_run_in_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> int:
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", refuse)
    state = boot_state()
    run_stages(state, [Stage("network", (lambda state: state.facts.update(network=os.getpid()),), background=True),
                       Stage("servers", (lambda state: None,))])
    assert state.facts["network"] == os.getpid()
    assert [(record.name, record.status) for record in state.stages] == [("network", "ok"), ("servers", "ok")]
    assert state.warnings == ["network: cannot run alongside the next stages (Resource temporarily unavailable): "
                              "running them in turn"]


def test_a_network_failure_lets_the_boot_go_on_and_is_named_where_a_later_stage_fails() -> None:
    """As the real pipeline's network stage (not critical): the stages after it run, and the screen of
    the stage that then fails names the network's failure after its own."""
    from ucernvm.boot.rescue import failure_screen
    from ucernvm.boot.stages import STAGES

    (network_policy,) = [stage for stage in STAGES if stage.name == "network"]

    def network(state: BootState) -> None:
        raise NetworkError("no network interface found")

    def snapshot(state: BootState) -> None:
        raise NetworkError("cannot fetch .cvmfspublished from any server: Network is unreachable", "check the servers")

    ran: list[str] = []
    state = boot_state()
    stages = [Stage("network", (network,), critical=network_policy.critical, background=True),
              Stage("storage", (lambda state: ran.append("storage"),), alongside=True),
              Stage("servers", (lambda state: ran.append("servers"),)),
              Stage("snapshot", (snapshot,))]
    with pytest.raises(BootFailure) as failure:
        run_stages(state, stages)
    assert failure.value.stage == "snapshot" and ran == ["storage", "servers"]
    assert state.warnings == ["network: no network interface found"]
    screen = failure_screen(state, failure.value).splitlines()
    assert screen[1:5] == [" ucernvm: the boot failed in stage 'snapshot'",
                           "   error: cannot fetch .cvmfspublished from any server: Network is unreachable",
                           "   hint:  check the servers",
                           "   after: network: no network interface found"]
