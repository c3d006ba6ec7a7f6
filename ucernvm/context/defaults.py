"""Where the OS keeps what contextualization hands it, and the default CernVM Online service.

Shared by the boot loader (which installs the #PIN login hook into the OS) and `ucernvm pin`, in a
module of its own so that the boot's hand-off imports neither the online client's HTTP stack nor the
command line's argparse just for these names.
"""

SERVICE_URL = "https://cernvm-online.cern.ch"
CONTEXT_DIR = "/mnt/.rw/context"  # the scratch disk's context/ directory, as the OS sees it
SEED_DIR = "/var/lib/cloud/seed/nocloud"  # NoCloud looks here before nocloud-net
