"""What a user-data source yields: the source name the OS keys on, the user-data, meta-data, and the
extras a medium can carry. Plain data, shared by the media reader, the metadata clients and the search."""

from __future__ import annotations

from ucernvm.records import NamedTuple

# The exact strings µCernVM wrote to context/source; the OS's .ucernvm_bootstrap enables the matching
# cloud-init datasource by them. NoCloud is this project's addition (cloud-init's own name for it).
CONFIG_DRIVE = "ConfigDrive"
OPEN_NEBULA = "OpenNebula"
VSPHERE = "vSphere"
AZURE = "Azure"
NOCLOUD = "NoCloud"
GCE = "GCE"
EC2 = "EC2"
OPENSTACK = "OpenStack"
CLOUDSTACK = "CloudStack"

LOCAL_SOURCES = (CONFIG_DRIVE, OPEN_NEBULA, VSPHERE, AZURE, NOCLOUD)  # µCernVM's order, then NoCloud
NETWORK_SOURCES = (GCE, EC2, OPENSTACK, CLOUDSTACK)
NO_SOURCE = "(none)"  # what µCernVM reports when nothing was found
PICKUP_LIMIT = 64 << 20  # a tarball baked into an image; held in memory until it is extracted


class BlockDevice(NamedTuple):
    """A candidate medium: its device node, file system type (blkid's names) and label."""

    path: str
    fstype: str
    label: str = ""


class MetaData(NamedTuple):
    """The meta-data cloud-init's NoCloud seed needs; empty strings where the source has none."""

    instance_id: str = ""
    hostname: str = ""
    public_keys: tuple[str, ...] = ()
    # GCE's ssh-keys lines, "user:key": cloud-init gives the default user those of two users, one of
    # them the default user itself, whose name only the OS's cloud-init configuration holds. The seed,
    # written once the OS is mounted, picks them (boot/seed.py); until then they are kept as they came.
    user_keys: tuple[str, ...] = ()

    def as_nocloud(self) -> dict[str, object]:
        """NoCloud's meta-data keys, for those the source had; ``user-keys`` too while they are unpicked
        (the copy saved for later boots), never in a seed."""
        document: dict[str, object] = {"instance-id": self.instance_id, "local-hostname": self.hostname,
                                       "public-keys": list(self.public_keys), "user-keys": list(self.user_keys)}
        return {key: value for key, value in document.items() if value}

    @classmethod
    def from_nocloud(cls, document: object) -> MetaData:
        """The inverse of ``as_nocloud``; what is not a string (or a list of them) is left out."""
        if not isinstance(document, dict):
            return cls()

        def text(key: str) -> str:
            value = document.get(key)
            return value if isinstance(value, str) else ""

        def texts(key: str) -> tuple[str, ...]:
            values = document.get(key)
            return tuple(value for value in values if isinstance(value, str)) if isinstance(values, list) else ()

        return cls(text("instance-id"), text("local-hostname"), texts("public-keys"), texts("user-keys"))


class StaticInterface(NamedTuple):
    """Static settings of one NIC from OpenNebula's context.sh (ETH<n>_*), validated."""

    name: str  # "eth0": OpenNebula's numbering, not necessarily the kernel's; match by mac when given
    mac: str = ""
    address: str = ""  # "10.0.0.5/24"
    gateway: str = ""
    dns: tuple[str, ...] = ()
    mtu: int | None = None


class FoundContext(NamedTuple):
    """The result of a search: the source that won and what it carried, plus the extras found on any
    partition. ``source`` is None when only extras were found."""

    source: str | None
    user_data: bytes = b""  # gunzipped once found; b"" when the source has meta-data only
    meta: MetaData = MetaData()
    network: tuple[StaticInterface, ...] = ()
    device: str | None = None  # the medium it came from (Azure's is copied to context/azure.iso on the first boot)
    extra_user_data: bytes = b""  # every partition's /cernvm/extra-user-data, concatenated
    pickup: bytes | None = None  # the first /cernvm/pickup.tar.gz

    @property
    def source_name(self) -> str:
        return self.source or NO_SOURCE
