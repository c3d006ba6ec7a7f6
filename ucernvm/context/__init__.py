"""User-data: where it comes from (sources) and what the boot loader reads in it (the ucernvm section)."""
