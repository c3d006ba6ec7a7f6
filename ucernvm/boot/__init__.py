"""The PID-1 boot pipeline: stages run in order by one runner, side effects through a System."""
