"""`rds-migrations trigger`: run a deployment through the Prefect REST API and follow it to its end (the GitHub check).

    rds-migrations trigger migrate-production/production --param git_sha=$GITHUB_SHA [--timeout S] [--env NAME]

What `prefect deployment run --watch` does, without its cost: no `import prefect` (2.4 s of start here; this
module imports the standard library, then httpx and our own small modules when called) and no fixed 3 s wait
for late logs after the run ends. It
1. refuses a parameter that looks like a credential before anything is sent (the API stores parameters in
   plain text), types each `--param` by the deployment's parameter schema, and refuses unknown names; refuses
   a rollback, restore, baseline or drift check for another environment than its deployment sets, naming the
   deployment that runs it (the flow would refuse it too);
2. creates the flow run (`POST /deployments/{id}/create_flow_run`, with an idempotency key, so a retried
   request never makes a second run), prints its id, parameters and UI link;
3. follows it: its state (`GET /flow_runs/{id}`) and its logs (`POST /logs/filter` by flow run id and a
   timestamp cursor, ids de-duplicated) every 0.25 s for the first minute, then every second, printed as
   Prefect's console prints them, state changes among them in time order;
4. once the run is in a final state, reads its logs every 0.05 s until the engine's own last line ("Finished in
   state …", logged after the final state is set and sent when the flow's process exits: every line of that
   process is then in); at most 3 s when it never comes (a killed process: then one more read for stragglers);
5. exits 0 on Completed; 1 on Failed, Crashed or Cancelled; 1 when the deadline passes first, saying the run
   is still going and NOT cancelling it; 2 on a usage or configuration error (an unknown deployment, an API
   that cannot be reached or refuses the key, a refused parameter): one line, no traceback.

The deadline (`--timeout`, else `watch_timeout(environment, kind)` from the environment's policy and the kind of
run the deployment's flow is: a refresh or a restore waits for RDS too; a fleet needs `--timeout`) counts from
the command's start, except the time the run waits for its deployment's concurrency slot behind another run of
it (up to one more deadline). Nothing secret is printed: the API key never, the API
URL without user info, parameters only after the credential check, and a refused value is never repeated. In
GitHub Actions the flow run's log lines are printed between `::stop-commands::` markers, so a log line cannot
act as a workflow command.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import threading
import time
import uuid
from datetime import datetime
from typing import IO, Any
from urllib.parse import quote

from flows.trigger_api import (
    Api,
    ApiSettings,
    ApiUnavailable,
    NotFound,
    api_settings,
    check_api_url,
    parse_params,
    refuse_credentials,
    typed_parameters,
    ui_url,
)
from flows.trigger_output import LOG_PAGE, LogFollower, Output, clock, parse_time
from tasks.engine.errors import EXIT_FAILED, EXIT_OK, ConfigError, RdsMigrationsError, UsageError

FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
# Following: every POLL_SECONDS for the first FAST_POLL_FOR_SECONDS (a no-op run ends in about 5 s), then
# every SLOW_POLL_SECONDS (two small requests a second for a long run, not eight).
POLL_SECONDS = 0.25
FAST_POLL_FOR_SECONDS = 60.0
SLOW_POLL_SECONDS = 1.0
# After the final state: the engine's last line, "Finished in state …", arrives when the flow's process exits
# (its logs go out in batches, every 2 s and at exit). Wait for it at most this long (Prefect's CLI always
# waits 3 s), reading every LAST_LOGS_POLL_SECONDS.
LAST_LOGS_WAIT_SECONDS = 3.0
LAST_LOGS_POLL_SECONDS = 0.05
# Before a run exists, an API that does not answer (refused connection, 5xx, 429) is asked again for this
# long, then it is a configuration error (exit 2). While following, until the deadline.
START_RETRY_SECONDS = 10.0
WAITING_FOR_WORKER_HINT_SECONDS = 30.0


# ---- trigger ------------------------------------------------------------------------------------------------


def _resolve(api: Api, deployment: str, until: float) -> dict[str, Any]:
    flow_name, sep, name = deployment.partition("/")
    if not sep or not flow_name or not name or "/" in name:
        raise UsageError(f"a deployment is named FLOW/DEPLOYMENT, e.g. migrate-production/production "
                         f"({len(deployment)} characters given)")
    try:
        return api.call("GET", f"/deployments/name/{quote(flow_name, safe='')}/{quote(name, safe='')}", until=until)
    except NotFound:
        raise ConfigError(f"no deployment {deployment!r} on the Prefect API at {api.url}{_known(api, until)}. "
                          "Deploy with `prefect deploy --all`, or check PREFECT_API_URL") from None


def _known(api: Api, until: float) -> str:
    """The deployments the server has, by name (the message of an unknown deployment)."""
    try:
        flows = {f["id"]: f["name"] for f in api.call("POST", "/flows/filter", {"limit": LOG_PAGE}, until=until)}
        names = sorted(f"{flows.get(d['flow_id'], '?')}/{d['name']}"
                       for d in api.call("POST", "/deployments/filter", {"limit": LOG_PAGE}, until=until))
    except (ApiUnavailable, NotFound, ConfigError):
        return ""
    shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
    return f" (it has: {shown})" if names else " (it has none)"


def _refuse_other_environment(api: Api, deployment: str, found: dict[str, Any], parameters: dict[str, Any],
                              until: float) -> None:
    """The flow of a rollback, restore, baseline or drift check refuses a run for another environment than its
    deployment sets (parameters.PINNED_KINDS): refused here with the flow's words, before a flow run exists,
    naming the deployment of the flow that runs the environment asked for."""
    from tasks.engine.runs.kinds import FLOW_KINDS
    from tasks.engine.runs.parameters import PINNED_KINDS, refuse_other_environment

    flow = deployment.partition("/")[0]
    pinned = (found.get("parameters") or {}).get("environment")
    asked = parameters.get("environment", pinned)
    if FLOW_KINDS.get(flow) not in PINNED_KINDS or not isinstance(pinned, str) or asked == pinned:
        return
    from tasks.engine.environments import ENVIRONMENT_NAME

    if not isinstance(asked, str) or not ENVIRONMENT_NAME.match(asked):  # never repeated: it may be a secret
        raise UsageError(f"deployment {deployment} runs environment {pinned} only; the environment asked for "
                         f"({len(str(asked))} characters) is not an environment name: no flow run was created")
    try:
        others = api.call("POST", "/deployments/filter", {"flows": {"name": {"any_": [flow]}}, "limit": LOG_PAGE},
                          until=until)
    except (ApiUnavailable, NotFound):
        others = []
    own = sorted(d["name"] for d in others if (d.get("parameters") or {}).get("environment") == asked)
    instead = (f"Run rds-migrations trigger {shlex.quote(f'{flow}/{own[0]}')} --env {asked} instead" if own else
               f"No deployment of {flow} runs {asked}: run the rds-migrations command with --env {asked} from a "
               "terminal")
    refuse_other_environment(deployment, pinned, asked, instead=f"{instead}; no flow run was created")


def _default_timeout(parameters: dict[str, Any], deployment: dict[str, Any], flow: str = "") -> tuple[float, str]:
    """The deadline of a run of the deployment (of the flow `flow`: a refresh's or a restore's adds its waits
    for RDS), from the policy of the environment it is given."""
    from tasks.engine.environments import load_environment
    from tasks.engine.runs.budget import deadline_parts
    from tasks.engine.runs.kinds import FLOW_KINDS

    name = parameters.get("environment", (deployment.get("parameters") or {}).get("environment"))
    if not isinstance(name, str):
        raise UsageError("this deployment takes no environment parameter to read a policy from: give --timeout")
    environment = load_environment(name)
    if environment.fleet is not None:
        raise UsageError(f"environment {name!r} is a fleet: how long its run takes depends on its targets and "
                         "waves, so give --timeout")
    kind = FLOW_KINDS.get(flow, "migration")
    source = load_environment(environment.refresh.source_environment) \
        if kind == "refresh" and environment.refresh is not None else None
    parts = deadline_parts(environment, kind, source)
    explained = " + ".join(f"{label} {seconds}" for label, seconds in parts.items())
    return float(sum(parts.values())), f"from environment {name!r}'s policy: {explained}"


def trigger(deployment: str, parameters: dict[str, Any], *, timeout: float | None, api_url: str | None,
            api_key: str | None, out: IO[str] = sys.stdout, err: IO[str] | None = None,
            auth_string: str | None = None, environ: dict[str, str] | None = None) -> int:
    """Run `deployment` ("flow/deployment") with `parameters` and follow the flow run to its end.

    `timeout`: seconds from now before giving up watching (the run is never cancelled); None: from the policy
    of the run's `environment` parameter (`watch_timeout`). Text values of non-string parameters are read as
    JSON. Returns the exit code: 0 Completed; 1 Failed, Crashed, Cancelled, or still going at the deadline;
    2 a usage or configuration error (printed to `err`, stderr by default, as one line).
    """
    started = time.monotonic()
    environ = os.environ if environ is None else environ
    err = err if err is not None else sys.stderr
    output = Output(out, environ)
    api = None
    try:
        if not api_url:
            raise ConfigError("PREFECT_API_URL is not set (and no Prefect profile names an API): the trigger needs "
                              "a Prefect server or Prefect Cloud, e.g. PREFECT_API_URL=http://127.0.0.1:4200/api")
        check_api_url(api_url)
        if timeout is not None and not timeout > 0:
            raise UsageError("--timeout must be a positive number of seconds")
        refuse_credentials({"deployment name": deployment, **parameters}, api_key)
        api = Api(ApiSettings(api_url, api_key, auth_string))
        start_until = started + START_RETRY_SECONDS
        try:
            found = _resolve(api, deployment, start_until)
            typed = typed_parameters(parameters, found)
            _refuse_other_environment(api, deployment, found, typed, start_until)
            if timeout is None:
                timeout, why = _default_timeout(typed, found, deployment.partition("/")[0])
            else:
                why = "from --timeout"
            deadline = started + timeout
            created = api.call("POST", f"/deployments/{found['id']}/create_flow_run",
                               {"parameters": typed, "idempotency_key": f"rds-migrations-trigger-{uuid.uuid4()}"},
                               until=max(start_until, time.monotonic() + 5))
        except ApiUnavailable as exc:
            raise ConfigError(f"cannot reach the Prefect API at {api.url} ({exc}); is PREFECT_API_URL right and "
                              "the server up?") from None
        except NotFound:  # the deployment went away between the two calls
            raise ConfigError(f"deployment {deployment!r} was not found on the Prefect API at {api.url}") from None
        link = f"{ui_url(api_url, environ)}/runs/flow-run/{created['id']}"
        output.stop_commands()  # from here on, what is printed comes from parameters and the run's own lines
        output.line(f"Created flow run {created.get('name')!r} of {deployment}")
        output.line(f"  id:         {created['id']}")
        output.line(f"  parameters: {json.dumps(created.get('parameters') or {}, sort_keys=True, default=str)}")
        output.line(f"  url:        {link}")
        output.line(f"  deadline:   {timeout:g} s {why}; reaching it never cancels the run")
        return _follow(api, created, deployment, link, output, started, deadline)
    except RdsMigrationsError as exc:
        output.resume_commands()
        print(f"rds-migrations: {exc}", file=err, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        output.resume_commands()
        print("rds-migrations: interrupted before a flow run was followed (one may have been created)", file=err,
              flush=True)
        return EXIT_FAILED
    finally:
        if api is not None:
            api.close()


def _follow(api: Api, run: dict[str, Any], deployment: str, link: str, output: Output, started: float,
            deadline: float) -> int:
    flow_run_id = run["id"]
    logs = LogFollower(api, flow_run_id, output)
    logs.flow_run_name = run.get("name") or ""
    shown: tuple[str, str] | None = None
    state: dict[str, Any] = run.get("state") or {}
    hinted: set[str] = set()
    api_trouble: str | None = None
    # A run queued behind another run of its deployment (one at a time) is not late: that wait does not count,
    # up to one more deadline's length (the run ahead is bounded by its own budget).
    queue_allowance, queued, last_seen = deadline - started, 0.0, time.monotonic()
    try:
        while True:
            tick = time.monotonic()
            state_line, hints = None, []
            try:
                current = api.call("GET", f"/flow_runs/{flow_run_id}", until=deadline)
                state = current.get("state") or {}
                logs.flow_run_name = current.get("name") or logs.flow_run_name
                kind = state.get("type", "")
                if (kind, state.get("name", "")) != shown:
                    shown = (kind, state.get("name", ""))
                    moment = parse_time(state["timestamp"]) if state.get("timestamp") else None
                    state_line = (moment or datetime.now().astimezone(),
                                  f"{clock(state.get('timestamp'))} | STATE   | Flow run {logs.flow_run_name!r} - "
                                  f"{state.get('name') or kind.title()}")
                    if kind == "PAUSED" and "paused" not in hinted:  # printed with its state line
                        hinted.add("paused")
                        state_line = (state_line[0], state_line[1] + "\n  paused: waiting for input (an approval?). "
                                      f"Resume it in the UI: {link}")
                waiting = time.monotonic() - started
                if kind == "SCHEDULED" and waiting > WAITING_FOR_WORKER_HINT_SECONDS and "worker" not in hinted:
                    hinted.add("worker")
                    hints.append("  waiting for the deployment's concurrency slot (another run of it is going)"
                                 if state.get("name") == "AwaitingConcurrencySlot" else
                                 f"  still {state.get('name') or 'Scheduled'} after {waiting:.0f} s: is a worker "
                                 f"polling work pool {current.get('work_pool_name')!r}?")
                if state.get("name") == "AwaitingConcurrencySlot" and queued < queue_allowance:
                    grant = min(time.monotonic() - last_seen, queue_allowance - queued)
                    deadline, queued = deadline + grant, queued + grant
                last_seen = time.monotonic()
                api_trouble = None
            except ApiUnavailable as exc:  # the deadline came while the API was not answering
                api_trouble = str(exc)
            except NotFound:
                logs.release()
                output.outcome("error", "flow run gone", f"flow run {logs.flow_run_name!r} ({flow_run_id}) no "
                               "longer exists on the Prefect API (deleted?)")
                return EXIT_FAILED
            try:
                logs.read(until=deadline, state_line=state_line)
            except ApiUnavailable as exc:
                api_trouble = str(exc)
            for hint in hints:
                output.line(hint)
            if state.get("type") in FINAL_STATES:
                break
            now = time.monotonic()
            if now >= deadline:
                logs.release()
                return _still_running(output, logs, state, link, now - started, api_trouble)
            pause = POLL_SECONDS if now - started < FAST_POLL_FOR_SECONDS else SLOW_POLL_SECONDS
            time.sleep(max(0.0, min(tick + pause - now, deadline - now)))
        _last_logs(logs)
    except KeyboardInterrupt:
        logs.release()
        output.outcome("warning", "stopped watching",
                       f"stopped watching flow run {logs.flow_run_name!r} (interrupted); not cancelled: see {link}")
        return EXIT_FAILED
    return _finished(output, logs, state, deployment, link, time.monotonic() - started)


def _last_logs(logs: LogFollower) -> None:
    """Until the engine's own last line, at most LAST_LOGS_WAIT_SECONDS. Without it (a killed process, logs not
    sent to the API), the late ones once more."""
    until = time.monotonic() + LAST_LOGS_WAIT_SECONDS
    try:
        while not logs.finished and time.monotonic() < until:
            time.sleep(LAST_LOGS_POLL_SECONDS)
            logs.read(until=until)
        if not logs.finished:
            logs.read(until=time.monotonic() + 2, sweep=True)
    except ApiUnavailable:
        pass
    logs.release()


def _finished(output: Output, logs: LogFollower, state: dict[str, Any], deployment: str, link: str,
              seconds: float) -> int:
    kind, name = state.get("type", ""), state.get("name") or state.get("type", "").title()
    text = f"flow run {logs.flow_run_name!r} of {deployment} finished in state {name} after {seconds:.1f} s"
    if kind == "COMPLETED":
        output.resume_commands()
        output.line(f"{text}: {link}")
        output.step_summary(f"Flow run [{logs.flow_run_name}]({link}) of `{deployment}`: **{name}**")
        return EXIT_OK
    message = " ".join(str(state.get("message") or "").split())[:1000]
    output.outcome("error", f"{deployment}: {name}", f"{text}: {message or 'no message'}; see {link}")
    output.step_summary(f"Flow run [{logs.flow_run_name}]({link}) of `{deployment}`: **{name}**"
                        + (f": {message}" if message else ""))
    return EXIT_FAILED


def _still_running(output: Output, logs: LogFollower, state: dict[str, Any], link: str, seconds: float,
                   api_trouble: str | None) -> int:
    where = state.get("name") or state.get("type", "").title() or "unknown"
    reason = f" (the API stopped answering: {api_trouble}; last state seen {where})" if api_trouble else \
        f" (state {where})"
    output.outcome("error", "flow run still running",
                   f"flow run {logs.flow_run_name!r} still running after {seconds:.0f} s{reason}; "
                   f"not cancelled: see {link}")
    output.step_summary(f"Flow run [{logs.flow_run_name}]({link}): still {where} at the check's deadline "
                        "(not cancelled)")
    return EXIT_FAILED


# ---- the command line ---------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("deployment", metavar="DEPLOYMENT", help="FLOW/DEPLOYMENT, e.g. migrate-production/production")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="a flow parameter (repeatable); a non-string parameter's value is JSON")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="stop watching (exit 1; the run is NOT cancelled) after this long; default: from the "
                             "policy of the run's environment")
    parser.add_argument("--env", metavar="NAME", default=None,
                        help="the environment to migrate: sets the `environment` parameter (and so the policy the "
                             "default deadline comes from)")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    """`rds-migrations trigger`, from parsed arguments. SIGTERM (a cancelled GitHub job) stops watching like
    Ctrl-C: the run goes on."""
    try:
        parameters: dict[str, Any] = parse_params(args.param)
        if args.env is not None:
            if parameters.get("environment", args.env) != args.env:
                raise UsageError("--env and --param environment=… name different environments")
            parameters["environment"] = args.env
    except RdsMigrationsError as exc:
        print(f"rds-migrations: {exc}", file=sys.stderr)
        return exc.exit_code
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    settings = api_settings()
    return trigger(args.deployment, parameters, timeout=args.timeout, api_url=settings.url, api_key=settings.key,
                   auth_string=settings.auth_string)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rds-migrations trigger", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

