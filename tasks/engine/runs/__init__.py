"""Runs: the pipelines (migrate, refresh, restore) written once, carried out step by step by a `Steps`."""
