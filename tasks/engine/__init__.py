"""The engine: plain Python modules, split by concern, that never import Prefect (see README: layout)."""
