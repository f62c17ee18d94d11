"""The logger type every engine function takes: a standard `logging.Logger`, or Prefect's run logger
(a `LoggerAdapter`) when a Prefect task hands its own in."""

from __future__ import annotations

import logging

Log = logging.Logger | logging.LoggerAdapter
