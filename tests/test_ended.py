"""The frame every pipeline runs its steps in (tasks/engine/runs/ended.py): which endings are announced."""

from __future__ import annotations

import pytest

from tasks.engine.errors import ConfigError, Interrupted, UsageError
from tasks.engine.runs.ended import Ended


def test_a_usage_mistake_goes_straight_out_and_every_other_failure_is_kept_for_the_announcement() -> None:
    with pytest.raises(UsageError), Ended():  # said on the command line, announced to nobody
        raise UsageError("--target '9' names no migration")

    with Ended() as ended:
        raise ConfigError("the environments file says no")
    assert isinstance(ended.error, ConfigError)
    with pytest.raises(ConfigError) as raised:
        ended.raise_if_failed({"applied": []})
    assert raised.value.result == {"applied": []}  # what was done, for --json

    with Ended(on_interrupt=lambda: Interrupted("interrupted (Ctrl-C) at step migrate")) as stopped:
        raise KeyboardInterrupt
    assert isinstance(stopped.error, Interrupted)
    with pytest.raises(KeyboardInterrupt), Ended():  # a pipeline that says nothing more about Ctrl-C
        raise KeyboardInterrupt

    with Ended() as finished:
        pass
    assert finished.error is None
    finished.raise_if_failed("anything")  # nothing to raise
