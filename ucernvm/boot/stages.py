"""The boot pipeline: the stages in order, with their policy and the hint shown when they fail.

The order is µCernVM's: the network and the context come before the scratch disk, because the context
decides how a new scratch disk is laid out (resize_rootfs, use_boothd); the clock is set (NTP) right
after the network, before HTTPS or the whitelist check a date. The storage stage also settles
the context: the first boot saves it on the new disk, later boots read back what the first one saved.

In a real boot the network and the clock run in a child process (background.py) while the context and
the storage stages go on: those wait for the network only where they use it (a metadata service, a
CernVM Online PIN); the servers stage and every one after it need it, or the cache of an earlier boot.
"""

from __future__ import annotations

from ucernvm.boot.pipeline import Stage

STAGES = (
    Stage("early", ("ucernvm.boot.early:early_stage",), hint="the kernel lacks proc, sysfs or devtmpfs support"),
    Stage("modules", ("ucernvm.boot.kmod:modules_stage",), hint="the image lacks modules for this kernel; rebuild it"),
    # Not critical, as in µCernVM: a later boot of a pinned snapshot starts from its cache without a
    # network (offline); a first one stops where it needs a server, its screen naming this failure.
    Stage("network", ("ucernvm.boot.network:network_stage",), critical=False, background=True),
    Stage("clock", ("ucernvm.boot.clock:clock_stage",), critical=False, background=True),
    Stage("context", ("ucernvm.boot.contextualize:context_stage",), critical=False, alongside=True),
    Stage("storage", ("ucernvm.boot.storage:storage_stage", "ucernvm.boot.contextualize:settle_context"),
          hint="attach an empty disk of at least 20 GB for the scratch file system", alongside=True),
    Stage("servers", ("ucernvm.boot.servers:servers_stage",), hint="check cvmfs_server= / cvmfs_url= and cvmfs_proxy="),
    Stage("snapshot", ("ucernvm.boot.snapshot:snapshot_stage",),
          hint="check the servers, the repository keys in the image and the tag",
          ahead=("ucernvm.boot.snapshot:load_bulk_hashes",)),
    Stage("mount", ("ucernvm.boot.rootfs:mount_stage",), hint="check cernvm_path= and the scratch disk"),
    Stage("handoff", ("ucernvm.boot.handoff:handoff_stage",), hint="the OS in the snapshot cannot be started"),
)  # fmt: skip

MODULES = tuple(dict.fromkeys(module for stage in STAGES for module in stage.modules))
