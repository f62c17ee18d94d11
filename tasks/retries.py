"""The `@task` retry settings of every step that talks to AWS or the database: exponential backoff with
jitter, and only for transient failures (the engine's `is_transient` decides which)."""

from __future__ import annotations

from prefect.tasks import exponential_backoff

from tasks.engine.transient import is_transient


def retry_on_transient(task: object, task_run: object, state: object) -> bool:
    """Prefect `retry_condition_fn`: retry only when the task failed for a transient reason."""
    try:
        state.result()  # type: ignore[attr-defined]  # raises the task's exception again
    except Exception as exc:  # noqa: BLE001 - classified, not swallowed
        return is_transient(exc)
    return False


def transient_retries(retries: int = 2, backoff_factor: float = 5) -> dict[str, object]:
    return {
        "retries": retries,
        "retry_delay_seconds": exponential_backoff(backoff_factor=backoff_factor),
        "retry_jitter_factor": 0.5,
        "retry_condition_fn": retry_on_transient,
    }
