"""The boot pipeline: the stages in order, with their policy and the hint shown when they fail.

The order is µCernVM's: the network and the context come before the scratch disk, because the context
decides how a new scratch disk is laid out (resize_rootfs, use_boothd).
"""

from __future__ import annotations

from ucernvm.boot.contextualize import context_stage, settle_context
from ucernvm.boot.early import early_stage
from ucernvm.boot.handoff import handoff_stage
from ucernvm.boot.kmod import modules_stage
from ucernvm.boot.network import network_stage
from ucernvm.boot.pipeline import Stage
from ucernvm.boot.rootfs import mount_stage
from ucernvm.boot.servers import servers_stage
from ucernvm.boot.snapshot import snapshot_stage
from ucernvm.boot.state import BootState
from ucernvm.boot.storage import storage_stage


def storage_and_context(state: BootState) -> None:
    storage_stage(state)
    settle_context(state)


STAGES = (
    Stage("early", early_stage, hint="the kernel lacks proc, sysfs or devtmpfs support"),
    Stage("modules", modules_stage, hint="the image lacks modules for this kernel; rebuild it"),
    Stage("network", network_stage, hint="check the VM's network (DHCP) or set ucernvm.net=static:..."),
    Stage("context", context_stage, critical=False),
    Stage("storage", storage_and_context, hint="attach an empty disk of at least 20 GB for the scratch file system"),
    Stage("servers", servers_stage, hint="check cvmfs_server= / cvmfs_url= and cvmfs_proxy="),
    Stage("snapshot", snapshot_stage, hint="check the servers, the repository keys in the image and the tag"),
    Stage("mount", mount_stage, hint="check cernvm_path= and the scratch disk"),
    Stage("handoff", handoff_stage, hint="the OS in the snapshot cannot be started"),
)
