"""Short summaries for the notify step besides a migration run's: a baseline that adopted a database, a drift
check that found the live schema changed. Each renders itself for Slack and the console, as messages.py's
summaries do, so the one notify step serves them too."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tasks.engine.messages import format_duration, mrkdwn

MAX_LINES = 20  # detail lines shown before "… and N more"


@dataclass(frozen=True)
class Notice:
    """What happened, in a title, a few labelled facts and detail lines; every text already free of secrets."""

    title: str  # "Baseline", "Drift check"
    environment: str
    tier: str
    outcome: str  # "succeeded" | "failed" | "drifted" | "nothing-to-do" | "dry-run"
    facts: tuple[tuple[str, str], ...] = ()
    details: tuple[str, ...] = ()
    error: str | None = None
    duration_seconds: float = 0.0
    run_url: str | None = None

    def _status(self) -> str:
        return self.outcome.replace("-", " ").upper()

    def slack_message(self) -> tuple[str, str]:
        subject = f"*{mrkdwn(self.title)} {self._status()}* on `{mrkdwn(self.environment)}` ({mrkdwn(self.tier)})"
        lines = [f"*{mrkdwn(label)}:* {mrkdwn(value)}" for label, value in self.facts]
        lines.append(f"*Duration:* {format_duration(self.duration_seconds)}")
        if self.run_url:
            lines.append(f"*Run:* <{self.run_url}|Prefect flow run>")
        if self.details:
            lines.append("```" + "\n".join(mrkdwn(line) for line in self._shown()) + "```")
        if self.error:
            lines += ["*Error:*", f"```{mrkdwn(self.error.strip()[:2000])}```"]
        return subject, "\n".join(lines)

    def console_text(self) -> str:
        lines = [f"{self.title} {self._status()} on {self.environment} ({self.tier})"]
        lines += [f"  {label + ':':<12} {value}" for label, value in self.facts]
        lines.append(f"  {'duration:':<12} {format_duration(self.duration_seconds)}")
        if self.run_url:
            lines.append(f"  {'run:':<12} {self.run_url}")
        lines += [f"    {line}" for line in self._shown()]
        if self.error:
            lines += ["  error:", *(f"    {line}" for line in self.error.strip()[:2000].splitlines())]
        return "\n".join(lines)

    def _shown(self) -> list[str]:
        shown = list(self.details[:MAX_LINES])
        if len(self.details) > MAX_LINES:
            shown.append(f"… and {len(self.details) - MAX_LINES} more")
        return shown

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "environment": self.environment, "tier": self.tier, "outcome": self.outcome,
                "facts": dict(self.facts), "details": list(self.details), "error": self.error,
                "duration_seconds": round(self.duration_seconds, 3), "run_url": self.run_url}
