"""Fleets: one run over many databases (targets), in waves, with a concurrency bound and stop rules."""
