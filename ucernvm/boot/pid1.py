"""PID 1 of the image: run the boot pipeline; on failure, the failure screen and ``ucernvm.panic``."""

from __future__ import annotations

import sys

from ucernvm import __version__
from ucernvm.boot.log import BootLog
from ucernvm.boot.pipeline import BootFailure, Stage, run_stages
from ucernvm.boot.stages import MODULES, STAGES
from ucernvm.boot.state import BootState
from ucernvm.boot.system import RealSystem
from ucernvm.client import lazylog

# What the image must carry beyond this module's own imports: the stages' code, imported as they
# run, and what is imported only when first used: urllib3 for https servers (plain HTTP does without
# it), which encodes host names with the idna codec; pacparser for the proxy 'auto'; the email
# package for multipart user-data (and its generator, for the user-data cloud-init gets); tarfile (with
# extraction filters) for cernvm_inject; html for the boot report's timeline; ntplib unless ucernvm.ntp=off;
# subprocess for the tools a first boot or a file system check runs; the rescue shell
# and failure screen, imported when a break point or a failure needs them (a boot that works imports
# them with the handoff stage's code, while the network comes up); the context search, which only a
# first boot runs, and glideinWMS detection, for boots with user-data; yaml for NoCloud meta-data that
# is more than simple lines and for the OS's cloud-init configuration, and _strptime (which
# datetime.strptime imports when first called) for expiry dates, read only where GCE's ssh-keys name users.
IMAGE_MODULES = (*MODULES, "ucernvm.boot.rescue", "urllib3", "encodings.idna", "pacparser", "email.policy", "email.generator",
                 "ucernvm.tarfiles", "ucernvm.context.online", "ucernvm.context.cluster", "html", "ntplib",
                 "ucernvm.context.sources", "ucernvm.context.glideinwms", "yaml", "_strptime", "subprocess")


def main() -> int:
    state = BootState(RealSystem(), BootLog(sys.stdout, kmsg="/dev/kmsg"))
    state.log.info(f"ucernvm boot loader {__version__}")  # as µCernVM's banner names its release
    lazylog.route(state.log.warn, state.log.info)  # the client's server and proxy choices as the boot's lines

    def break_point(stage: Stage) -> None:
        if state.config.break_stage == stage.name:
            from ucernvm.boot.rescue import rescue_shell

            rescue_shell(state, f"ucernvm.break={stage.name}: exit the shell to continue the boot")

    try:
        run_stages(state, list(STAGES), before_stage=break_point)
        failure = BootFailure(STAGES[-1].name, "the OS's init did not start", "")
    except BootFailure as error:
        failure = error
    from ucernvm.boot.rescue import failure_screen, panic, save_logs

    print(failure_screen(state, failure), flush=True)
    where = save_logs(state, f"failed in {failure.stage}")
    if where:
        state.log.info(f"the log and status.json are in {where} on the scratch disk")
    panic(state)
    return 1
