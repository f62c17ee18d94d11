"""Snapshots: taking them before a run, and restoring one to a new name then swapping it in."""
