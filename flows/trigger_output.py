"""What `rds-migrations trigger` prints (flows/trigger.py): the flow run's log lines as Prefect's console prints
them, each once and in time order with the state changes, and in GitHub Actions the markers, annotation and
step summary around them."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta
from typing import IO, Any

from flows.trigger_api import Api, ApiUnavailable, NotFound
from tasks.engine.errors import ConfigError

# Logs of one process arrive in order; another process's (the worker's) may arrive up to a batch interval
# late, with an earlier timestamp than some already read. Every SWEEP_EVERY_SECONDS, and once at the end, the
# read starts SWEEP_OVERLAP_SECONDS before the newest log seen (ids de-duplicated).
SWEEP_EVERY_SECONDS = 5.0
SWEEP_OVERLAP_SECONDS = 10.0
LOG_PAGE = 200  # the server's largest page
# A state is known at once, the logs before it come in the flow process's next batch: a state line waits until
# the logs have caught up with it, at most this long, so that the job's log reads in time order.
STATE_HOLD_SECONDS = 2.5
LEVELS = {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL"}
FINISHED_PREFIX = "Finished in state "


# ---- printing ---------------------------------------------------------------------------------------------


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def clock(value: str | None) -> str:
    if not value:
        return " " * 12
    moment = parse_time(value).astimezone()
    return moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def annotation(text: str, prop: bool = False) -> str:
    """Escaped for a GitHub workflow command: its message, or (`prop`) a property such as its title."""
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if prop else text


class Output:
    """The lines the job shows. In GitHub Actions the run's own lines go between `::stop-commands::` markers
    (a log line cannot act as a workflow command) and the outcome becomes an annotation."""

    def __init__(self, out: IO[str], environ: dict[str, str]) -> None:
        self.out = out
        self.github = environ.get("GITHUB_ACTIONS") == "true"
        self.summary = environ.get("GITHUB_STEP_SUMMARY") if self.github else None
        self._token: str | None = None

    def line(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def stop_commands(self) -> None:
        if self.github and self._token is None:
            self._token = uuid.uuid4().hex
            self.line(f"::stop-commands::{self._token}")

    def resume_commands(self) -> None:
        if self._token is not None:
            self.line(f"::{self._token}::")
            self._token = None

    def outcome(self, level: str, title: str, text: str) -> None:
        self.resume_commands()
        if self.github:
            self.line(f"::{level} title={annotation(title, prop=True)}::{annotation(text)}")
        self.line(text)

    def step_summary(self, markdown: str) -> None:
        if self.summary:
            try:
                with open(self.summary, "a", encoding="utf-8") as summary:
                    summary.write(markdown + "\n")
            except OSError:
                pass


class LogFollower:
    """The flow run's logs, each printed once, in the order the server has them."""

    def __init__(self, api: Api, flow_run_id: str, output: Output) -> None:
        self.api, self.flow_run_id, self.output = api, flow_run_id, output
        self.seen: set[str] = set()
        self.newest: datetime | None = None
        self.finished = False  # the engine's "Finished in state …" line was read
        self.flow_run_name = ""
        self.task_names: dict[str, str] = {}
        self.held: list[tuple[datetime, float, str]] = []  # state lines waiting for the logs: (time, seen, line)
        self.next_sweep = time.monotonic() + SWEEP_EVERY_SECONDS

    def read(self, *, until: float, sweep: bool = False, state_line: tuple[datetime, str] | None = None) -> None:
        """Print what arrived since the last read (with `sweep`, also what arrived late), in time order with the
        state lines the logs have caught up with."""
        if state_line is not None:
            self.held.append((state_line[0], time.monotonic(), state_line[1]))
        if time.monotonic() >= self.next_sweep:
            sweep, self.next_sweep = True, time.monotonic() + SWEEP_EVERY_SECONDS
        after = None
        if self.newest is not None:
            after = self.newest - timedelta(seconds=SWEEP_OVERLAP_SECONDS if sweep else 0)
        new = [log for log in self._fetch(after, until) if log["id"] not in self.seen]
        self._name_tasks({log["task_run_id"] for log in new if log.get("task_run_id")}, until)
        lines = []
        for log in new:
            self.seen.add(log["id"])
            moment = parse_time(log["timestamp"])
            self.newest = moment if self.newest is None or moment > self.newest else self.newest
            if not log.get("task_run_id") and str(log.get("message", "")).startswith(FINISHED_PREFIX):
                self.finished = True
            lines.append((moment, self.format(log)))
        now = time.monotonic()
        ready = [held for held in self.held
                 if (self.newest is not None and held[0] <= self.newest) or now - held[1] >= STATE_HOLD_SECONDS]
        self.held = [held for held in self.held if held not in ready]
        self._print(lines + [(moment, line) for moment, _, line in ready])

    def release(self) -> None:
        """The state lines still held: printed now (the end)."""
        self._print([(moment, line) for moment, _, line in self.held])
        self.held = []

    def _print(self, lines: list[tuple[datetime, str]]) -> None:
        for _, line in sorted(lines, key=lambda line: line[0]):  # stable: equal times keep their order
            self.output.line(line)

    def _fetch(self, after: datetime | None, until: float) -> list[dict[str, Any]]:
        flt: dict[str, Any] = {"flow_run_id": {"any_": [self.flow_run_id]}}
        if after is not None:  # inclusive: the newest log seen comes again, and is skipped by its id
            flt["timestamp"] = {"after_": after.isoformat()}
        logs: list[dict[str, Any]] = []
        while True:
            page = self.api.call("POST", "/logs/filter", {"logs": flt, "sort": "TIMESTAMP_ASC", "limit": LOG_PAGE,
                                                          "offset": len(logs)}, until=until)
            logs += page
            if len(page) < LOG_PAGE:
                return logs

    def _name_tasks(self, ids: set[str], until: float) -> None:
        unknown = sorted(ids - set(self.task_names))
        if not unknown:
            return
        try:
            runs = self.api.call("POST", "/task_runs/filter", {"task_runs": {"id": {"any_": unknown}},
                                                               "limit": LOG_PAGE},
                                 until=min(until, time.monotonic() + 2))
        except (ApiUnavailable, NotFound, ConfigError):
            runs = []
        for run in runs:
            self.task_names[run["id"]] = run.get("name") or run["id"][-12:]

    def format(self, log: dict[str, Any]) -> str:
        """As Prefect's console handler prints a run's line: `time | LEVEL | Flow run 'name' - message`."""
        level = LEVELS.get(log.get("level"), f"Level {log.get('level')}")
        task = log.get("task_run_id")
        who = f"Task run {self.task_names.get(task, task[-12:])!r}" if task else f"Flow run {self.flow_run_name!r}"
        return f"{clock(log.get('timestamp'))} | {level:<7} | {who} - {log.get('message', '')}"
