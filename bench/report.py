"""The tables and the plot, from the results of one run (`bench/out/results.json`)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from bench.apply import ALONE, CANDIDATE, KNEX, OURS, PSQL, PSQL_ONE, YOYO

# The bar (issue 5). Linear in N: the cost of one migration at N = 1,000 is within 25% of its cost at N = 100.
APPLY_FLOOR_RATIO = 1.0  # issue 15 (round one asked for 1.2)
YOYO_SPEEDUP = 3.5
LINEARITY = 1.25
STALL_OVER_LOCK_TIMEOUT = 1.25
NOOP_BODY_SECONDS = 1.0
TRIGGER_SECONDS = 6.0
VALIDATION_SECONDS = 2.0
REHEARSAL_SECONDS = 1.0


@dataclass(frozen=True)
class Row:
    figure: str
    measured: str
    compared_with: str
    ratio: str
    target: str
    met: bool | None  # None: no target, for information


def _s(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds < 100 else f"{seconds:.0f} s"


def _ms(milliseconds: float) -> str:
    return f"{milliseconds:,.0f} ms"


def _x(ratio: float) -> str:
    return f"{ratio:.2f}×"


def median_time(results: dict, tool: str, n: int) -> float | None:
    values = results["apply"]["times"].get(tool, {}).get(str(n))
    return statistics.median(values) if values else None


def median_cpu(results: dict, tool: str, n: int) -> float | None:
    """Client + server CPU seconds: what the work costs, less sensitive than wall time to other load."""
    values = results["apply"].get("cpu", {}).get(tool, {}).get(str(n))
    return statistics.median(sum(v) for v in values) if values else None


def ratio(results: dict, tool: str, reference: str, n: int, *, cpu: bool = False) -> float | None:
    of = median_cpu if cpu else median_time
    value, base = of(results, tool, n), of(results, reference, n)
    return value / base if value and base else None


def apply_table(results: dict) -> str:
    apply = results["apply"]
    tools = [t for t in (PSQL_ONE, OURS, ALONE, CANDIDATE, KNEX, YOYO) if t in apply["times"]]
    header = (["N", PSQL] + [f"{t} (× floor)" for t in tools]
              + ["yoyo ÷ rds-migrations", "CPU: rds-migrations ÷ psql", "reading the files"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for n in apply["sizes"]:
        floor = median_time(results, PSQL, n)
        cells = [f"{n:,}", _s(floor) if floor else "–"]
        for tool in tools:
            value, times_floor = median_time(results, tool, n), ratio(results, tool, PSQL, n)
            cells.append(f"{_s(value)} ({_x(times_floor)})" if value and times_floor else "–")
        speedup = ratio(results, YOYO, OURS, n)
        cells.append(_x(speedup) if speedup else "–")
        ours_cpu, floor_cpu = median_cpu(results, OURS, n), median_cpu(results, PSQL, n)
        cpu_ratio = ratio(results, OURS, PSQL, n, cpu=True)
        cells.append(f"{ours_cpu:.2f} s ÷ {floor_cpu:.2f} s ({_x(cpu_ratio)})" if ours_cpu and floor_cpu and cpu_ratio
                     else "–")
        cells.append(_s(apply["catalog_seconds"][str(n)]))
        lines.append("| " + " | ".join(cells) + " |")
    per = []
    for tool in [PSQL, *tools]:
        costs = [f"{median_time(results, tool, n) / n * 1000:.1f}" for n in apply["sizes"]
                 if median_time(results, tool, n)]
        per.append(f"{tool} {' / '.join(costs)}")
    sizes = " / ".join(f"{n:,}" for n in apply["sizes"])
    lines += ["", f"Milliseconds per migration at N = {sizes}: " + "; ".join(per) + "."]
    runs = "; ".join(f"{tool} {'/'.join(str(len(v)) for v in by_n.values())}" for tool, by_n in apply["times"].items())
    spread = []
    for tool in (PSQL, OURS):
        walls = apply["times"].get(tool, {}).get(str(max(apply["sizes"])), [])
        if len(walls) > 1:
            spread.append(f"{tool} {min(walls):.2f}–{max(walls):.2f} s")
    skipped = "".join(f" {tool} skipped: {why}." for tool, why in apply["skipped"].items())
    version = f" Knex {apply['knex_version']}." if apply.get("knex_version") else ""
    lines.append(f"Runs per N: {runs}. Spread at N = {max(apply['sizes']):,}: {', '.join(spread) or '–'}."
                 f"{version}{skipped}")
    return "\n".join(lines)


def _apply_rows(results: dict) -> list[Row]:
    out: list[Row] = []
    sizes = results["apply"]["sizes"]
    big, small = max(sizes), min(sizes)
    floor, ours, yoyo = (median_time(results, t, big) for t in (PSQL, OURS, YOYO))
    times_floor = ratio(results, OURS, PSQL, big)
    if floor and ours and times_floor:
        out.append(Row(f"apply {big:,} migrations", _s(ours), f"psql floor {_s(floor)}", _x(times_floor),
                       f"≤ {APPLY_FLOOR_RATIO}× floor", times_floor <= APPLY_FLOOR_RATIO))
    ours_cpu, floor_cpu = median_cpu(results, OURS, big), median_cpu(results, PSQL, big)
    cpu_ratio = ratio(results, OURS, PSQL, big, cpu=True)
    if ours_cpu and floor_cpu and cpu_ratio:
        out.append(Row(f"apply {big:,}, CPU time (client + server)", _s(ours_cpu), f"psql floor {_s(floor_cpu)}",
                       _x(cpu_ratio), "(for information)", None))
    one, one_ratio = median_time(results, PSQL_ONE, big), ratio(results, PSQL_ONE, PSQL, big)
    if floor and one and one_ratio and ours:
        # What one message a migration saves (this against the floor) and what the history rows and the session
        # reset cost (rds-migrations against this).
        out.append(Row(f"apply {big:,}: {PSQL_ONE}, no history", _s(one), f"psql floor {_s(floor)}", _x(one_ratio),
                       f"(reference: rds-migrations is {_x(ours / one)} of it)", None))
    alone, alone_ratio = median_time(results, ALONE, big), ratio(results, ALONE, PSQL, big)
    if floor and alone and alone_ratio:
        out.append(Row(f"apply {big:,}: {ALONE}", _s(alone), f"psql floor {_s(floor)}", _x(alone_ratio),
                       "(for information: migrations_per_message = 1, the default until 2026-12-01)", None))
    candidate, candidate_ratio = median_time(results, CANDIDATE, big), ratio(results, CANDIDATE, PSQL, big)
    if floor and candidate and candidate_ratio:
        out.append(Row(f"apply {big:,}, candidate engine", _s(candidate), f"psql floor {_s(floor)}",
                       _x(candidate_ratio), f"≤ {APPLY_FLOOR_RATIO}× floor", candidate_ratio <= APPLY_FLOOR_RATIO))
    speedup = ratio(results, YOYO, OURS, big)
    if yoyo and ours and speedup:
        out.append(Row(f"apply {big:,}: yoyo CLI", _s(yoyo), f"rds-migrations {_s(ours)}",
                       f"{_x(speedup)} slower", f"≥ {YOYO_SPEEDUP}× slower than ours", speedup >= YOYO_SPEEDUP))
    ours_small = median_time(results, OURS, small)
    if ours and ours_small:
        growth = (ours / big) / (ours_small / small)
        out.append(Row(f"growth: cost per migration at N={big:,} vs N={small:,}", f"{ours / big * 1000:.2f} ms",
                       f"{ours_small / small * 1000:.2f} ms", _x(growth), f"≤ {LINEARITY}× (linear)",
                       growth <= LINEARITY))
    return out


def rows(results: dict) -> list[Row]:
    out: list[Row] = []
    if "apply" in results:
        out += _apply_rows(results)
    stall = {s["scenario"]: s for s in results.get("stall", [])}
    for scenario in stall.values():
        if scenario["scenario"].startswith("rds-migrations"):
            timeout_ms = float(scenario["scenario"].split("lock_timeout ")[1].split()[0])
            over = scenario["worst_ms"] / timeout_ms
            target = timeout_ms == results["lock_timeout_ms"]
            out.append(Row(f"worst query stall, {scenario['scenario']}", _ms(scenario["worst_ms"]),
                           f"lock_timeout {_ms(timeout_ms)}", _x(over),
                           f"≤ lock_timeout + {STALL_OVER_LOCK_TIMEOUT - 1:.0%}" if target else "(for information)",
                           over <= STALL_OVER_LOCK_TIMEOUT if target else None))
        elif scenario["scenario"].startswith("yoyo"):
            ours_stall = next((s for s in stall.values() if s["scenario"].endswith(f"{results['lock_timeout_ms']} ms")),
                              None)
            out.append(Row(f"worst query stall, {scenario['scenario']}", _ms(scenario["worst_ms"]),
                           f"rds-migrations {_ms(ours_stall['worst_ms'])}" if ours_stall else "–",
                           _x(scenario["worst_ms"] / ours_stall["worst_ms"]) if ours_stall else "–",
                           "unbounded: as long as the blocking transaction", None))
        else:
            out.append(Row(f"worst query latency, {scenario['scenario']}", _ms(scenario["worst_ms"]), "–", "–",
                           "(the noise floor)", None))
    prefect = results.get("prefect") or {}
    if prefect.get("noop_in_process"):
        bodies = [r["body_seconds"] for r in prefect["noop_in_process"]["runs"]]
        walls = [r["wall_seconds"] for r in prefect["noop_in_process"]["runs"]]
        body = min(bodies)
        out.append(Row("no-op flow body (nothing pending; Running→Completed)", _s(body),
                       f"budget {_s(NOOP_BODY_SECONDS)}", _x(body / NOOP_BODY_SECONDS), f"≤ {_s(NOOP_BODY_SECONDS)}",
                       body <= NOOP_BODY_SECONDS))
        out.append(Row("no-op flow call in process (incl. Prefect's run bookkeeping)", _s(min(walls)),
                       f"body {_s(body)}", _x(min(walls) / body), "(for information)", None))
    worker_bodies = [r["body_seconds"] for key in ("triggered_cli", "triggered_api") for r in prefect.get(key, [])
                     if r.get("body_seconds") is not None]
    if worker_bodies:
        out.append(Row("no-op flow body in the worker's new process", _s(min(worker_bodies)),
                       f"budget {_s(NOOP_BODY_SECONDS)}", _x(min(worker_bodies) / NOOP_BODY_SECONDS),
                       "(for information: a cold process)", None))
    # Trigger→done: from the trigger creating the run to the run Completed, through server and worker (median
    # over every triggered run). The commands' own wall time adds their start and, for --watch, its wait.
    runs = [r["run_seconds"] for key in ("triggered_cli", "triggered_api") for r in prefect.get(key, [])
            if r.get("run_seconds") is not None]
    if runs:
        run = statistics.median(runs)
        out.append(Row("no-op trigger→done: run created → Completed, server + worker (median)", _s(run),
                       f"budget {_s(TRIGGER_SECONDS)}", _x(run / TRIGGER_SECONDS), f"≤ {_s(TRIGGER_SECONDS)}",
                       run <= TRIGGER_SECONDS))
    for key, label in (("triggered_cli", "`prefect deployment run --watch` (the GitHub check)"),
                       ("triggered_api", "REST create_flow_run + poll 0.25 s")):
        if prefect.get(key):
            wall = statistics.median(r["wall_seconds"] for r in prefect[key])
            out.append(Row(f"no-op, command start → exit: {label} (median)", _s(wall),
                           f"trigger→done {_s(run)}" if runs else "–", _x(wall / run) if runs else "–",
                           "(for information)", None))
    if prefect.get("log_lines_seconds") is not None:
        out.append(Row(f"{prefect['log_lines']:,} run-logger lines in a task (one per migration applied)",
                       _s(prefect["log_lines_seconds"]), "–", "–", "(for information)", None))
    validation = results.get("validation")
    if validation:
        out.append(Row(f"static checks + lint of {validation['files']:,} files", _s(validation["total_seconds"]),
                       f"budget {_s(VALIDATION_SECONDS)}", _x(validation["total_seconds"] / VALIDATION_SECONDS),
                       f"≤ {_s(VALIDATION_SECONDS)}", validation["total_seconds"] <= VALIDATION_SECONDS))
    rehearsal = results.get("rehearsal")
    if rehearsal:
        out.append(Row(f"rehearsal of 1 new on {rehearsal['base']:,} (cached)", _s(rehearsal["incremental_seconds"]),
                       f"from nothing {_s(rehearsal['scratch_seconds'])}",
                       _x(rehearsal["incremental_seconds"] / rehearsal["scratch_seconds"]),
                       f"≤ {_s(REHEARSAL_SECONDS)}", rehearsal["incremental_seconds"] <= REHEARSAL_SECONDS))
    return out


def realistic_rows(results: dict) -> list[Row]:
    """Issue 15: the realistic corpus end to end through the CLI, and the large inputs."""
    real = results.get("realistic")
    if not real:
        return []
    targets, corpus = real["targets"], real["corpus"]
    out: list[Row] = []
    floor = statistics.median(real["floor_seconds"]) if real.get("floor_seconds") else None
    if floor:
        out.append(Row(f"psql floor: {corpus['migrations']} realistic migrations (median)", _s(floor), "–", "–",
                       "(the floor)", None))
    if real.get("first_run_seconds") and floor:
        first = statistics.median(real["first_run_seconds"])
        limit = targets["first_run_floor_ratio"]
        out.append(Row(f"first `rds-migrations run`, {corpus['migrations']} migrations, empty database, end to end "
                       "(median)", _s(first), f"psql floor {_s(floor)}", _x(first / floor), f"≤ {limit:g}× floor",
                       first / floor <= limit))
    if real.get("first_run_unrehearsed_seconds") and floor:
        unrehearsed = statistics.median(real["first_run_unrehearsed_seconds"])
        out.append(Row("the same first run with the rehearsal turned off (`rehearsal = { kind = \"none\" }`, "
                       "`rehearsal_required = false`: a user's opt-out)", _s(unrehearsed), f"psql floor {_s(floor)}",
                       _x(unrehearsed / floor), "(for information: what the rehearsal costs)", None))
    cpu = real.get("cpu") or {}
    if cpu.get("first_run") and cpu.get("floor"):
        ours_cpu = statistics.median(sum(c) for c in cpu["first_run"])
        floor_cpu = statistics.median(sum(c) for c in cpu["floor"])
        out.append(Row("first run, CPU time (the CLI's process + the server)", _s(ours_cpu),
                       f"psql floor {_s(floor_cpu)}", _x(ours_cpu / floor_cpu),
                       "(for information: less sensitive to other load)", None))
    if real.get("incremental_seconds"):
        incremental = statistics.median(real["incremental_seconds"])
        budget = targets["incremental_seconds"]
        out.append(Row(f"`run` with 1 new migration on top of {corpus['migrations']} (median)", _s(incremental),
                       f"budget {_s(budget)}", _x(incremental / budget), f"≤ {_s(budget)}", incremental <= budget))
    backfill = real.get("backfill")
    if backfill:
        read = statistics.median(backfill["seconds"])
        budget = targets["backfill_read_seconds"]
        out.append(Row(f"reading a {backfill['bytes'] / 1e6:.0f} MB backfill migration "
                       f"({backfill['statements']:,} INSERTs)", _s(read), f"budget {_s(budget)}", _x(read / budget),
                       f"≤ {_s(budget)}", read <= budget))
    many = real.get("many")
    if many:
        validate = statistics.median(many["seconds"])
        budget = targets["many_validation_seconds"]
        out.append(Row(f"static checks + lint of {many['files']:,} files", _s(validate), f"budget {_s(budget)}",
                       _x(validate / budget), f"≤ {_s(budget)}", validate <= budget))
    return out


def _median_run_phases(real: dict, key: str, phases_key: str) -> tuple[float, dict[str, float]] | None:
    """(wall seconds, phases) of the run whose wall time is the median (the lower one of an even count)."""
    walls, phases = real.get(key) or [], real.get(phases_key) or []
    if not walls or len(phases) != len(walls):
        return None
    index = sorted(range(len(walls)), key=lambda i: walls[i])[(len(walls) - 1) // 2]
    return (walls[index], phases[index]) if phases[index] else None


def realistic_table(results: dict) -> str:
    real = results["realistic"]
    corpus = real["corpus"]
    marks = {True: "met", False: "**missed**", None: "–"}
    lines = ["| figure | measured | compared with | ratio | target | |", "|---|---|---|---|---|---|"]
    lines += [f"| {r.figure} | {r.measured} | {r.compared_with} | {r.ratio} | {r.target} | {marks[r.met]} |"
              for r in realistic_rows(results)]
    kinds = ", ".join(f"{kind.replace('_', ' ')} {n}" for kind, n in corpus["kinds"].items())
    text = ["\n".join(lines), (
        f"The corpus (bench/corpus.py, seed {corpus['seed']}): {corpus['migrations']} migrations in "
        f"{corpus['files']} files ({corpus['rollback_files']} rollback files, {corpus['non_transactional']} "
        f"`-- transactional: false`), {corpus['bytes'] / 1024:.0f} KiB. By kind: {kinds}.")]
    spread = []
    for key, label in (("floor_seconds", "psql floor"), ("first_run_seconds", "first run"),
                       ("first_run_unrehearsed_seconds", "first run without rehearsal"),
                       ("incremental_seconds", "1 new on top")):
        values = real.get(key) or []
        if values:
            spread.append(f"{label} {min(values):.2f}–{max(values):.2f} s ({len(values)} runs)")
    if real.get("new_migration"):
        floor_new = real.get("incremental_floor_seconds") or []
        spread.append(f"the new migration {real['new_migration']}"
                      + (f" (psql applies it in {statistics.median(floor_new):.2f} s)" if floor_new else ""))
    text.append("Spread: " + "; ".join(spread) + ".")
    for key, phases_key, label in (("first_run_seconds", "first_run_phases", "the first run"),
                                   ("incremental_seconds", "incremental_phases", "the run with 1 new")):
        split = _median_run_phases(real, key, phases_key)
        if split:
            wall, phases = split
            text.append(f"Where {label} spent its median run ({wall:.2f} s), from the timestamps of the CLI's log: "
                        + "; ".join(f"{name} {seconds:.2f} s" for name, seconds in phases.items()) + ".")
    parts = real.get("breakdown")
    if parts:
        text.append(f"Beside it: a new Python process importing the CLI and its run command takes "
                    f"{parts['python_start_seconds']:.2f} s "
                    f"(`rds-migrations --help` {parts['cli_help_seconds']:.2f} s"
                    + (f", `uv run rds-migrations --help` {parts['uv_run_help_seconds']:.2f} s: the runs above start "
                       "the venv's `rds-migrations` directly, without `uv run`" if parts.get("uv_run_help_seconds")
                       else "")
                    + f"); in process, the static checks of "
                    f"the {corpus['migrations']} files take {parts['static_seconds']:.2f} s and their lint "
                    f"{parts['lint_seconds']:.2f} s.")
    many, backfill = real.get("many"), real.get("backfill")
    if many:
        text.append(f"{many['files']:,} files ({many['migrations']:,} migrations and their rollback files, the corpus "
                    f"continued): static checks {many['static_seconds']:.2f} s, lint {many['lint_seconds']:.2f} s "
                    f"(the median run; runs: {', '.join(f'{s:.2f}' for s in many['seconds'])} s).")
    if backfill:
        text.append(f"The backfill: one INSERT per row, as `pg_dump --inserts` writes them; runs: "
                    f"{', '.join(f'{s:.2f}' for s in backfill['seconds'])} s (one run when the first is over twice "
                    "the budget).")
    text.append(f"This section took {real['section_seconds']:.0f} s.")
    return "\n\n".join(text)


def targets_table(results: dict) -> str:
    marks = {True: "met", False: "**missed**", None: "–"}
    lines = ["| figure | measured | compared with | ratio | target | |", "|---|---|---|---|---|---|"]
    lines += [f"| {r.figure} | {r.measured} | {r.compared_with} | {r.ratio} | {r.target} | {marks[r.met]} |"
              for r in rows(results)]
    return "\n".join(lines)


def trigger_breakdown(results: dict) -> str:
    prefect = results.get("prefect") or {}
    runs = prefect.get("triggered_cli") or []
    if not runs:
        return ""
    parts = [("CLI start → run created", "cli_until_created_seconds"), ("waiting for the worker", "queued_seconds"),
             ("worker subprocess start + flow load", "start_seconds"), ("flow body", "body_seconds"),
             ("--watch exit after Completed", "completed_until_cli_exit_seconds")]
    best = min(runs, key=lambda r: r["wall_seconds"])
    cells = [f"{label} {best[key]:.2f} s" for label, key in parts if best.get(key) is not None]
    imports = prefect.get("import_seconds", {})
    uncached = prefect.get("import_seconds_without_bytecode", {}).get("prefect")
    text = f"Where `prefect deployment run --watch` spent its best run ({best['wall_seconds']:.2f} s): " + "; ".join(
        cells) + "."
    if imports:
        text += (" A fresh Python process takes " + ", ".join(f"{_s(v)} to import `{k}`" for k, v in imports.items())
                 + (f" with compiled bytecode cached ({_s(uncached)} for `prefect` without)" if uncached else "")
                 + f". Worker: PREFECT_WORKER_QUERY_SECONDS={prefect['worker_query_seconds']:g}, "
                 f"--prefetch-seconds {prefect['worker_prefetch_seconds']:g}.")
    return text


def write_plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(13, 9))
    (apply_axis, stall_axis), (budget_axis, trigger_axis) = axes

    sizes = results["apply"]["sizes"] if "apply" in results else []
    styles = ((PSQL, "k--o"), (PSQL_ONE, "k:."), (OURS, "C0-o"), (ALONE, "C0:o"), (CANDIDATE, "C4-d"),
              (KNEX, "C2-s"), (YOYO, "C3-^"))
    for tool, style in styles:
        points = [(n, median_time(results, tool, n)) for n in sizes if median_time(results, tool, n)]
        if points:
            apply_axis.plot([p[0] for p in points], [p[1] for p in points], style, label=tool)
    apply_axis.set(title="Apply N migrations on a fresh database", xlabel="N (a table and an index each)",
                   ylabel="seconds (median)")
    apply_axis.grid(alpha=0.3)
    apply_axis.legend()

    stall = results.get("stall", [])
    if stall:
        labels = [s["scenario"].replace(" (", "\n(").replace(", ", ",\n") for s in stall]
        stall_axis.barh(labels, [s["worst_ms"] for s in stall], color=["0.6", "C3"] + ["C0"] * (len(stall) - 2))
        stall_axis.axvline(results["lock_timeout_ms"] * STALL_OVER_LOCK_TIMEOUT, color="C0", linestyle=":",
                           label=f"target: {results['lock_timeout_ms']} ms lock_timeout + 25%")
        stall_axis.set(title="Worst app-query latency during the migration", xlabel="ms")
        stall_axis.invert_yaxis()
        stall_axis.legend(loc="lower right")
        stall_axis.tick_params(axis="y", labelsize=8)

    budget_rows = [r for r in rows(results) if r.met is not None and r.compared_with.startswith("budget")]
    rehearsal = results.get("rehearsal")
    names, values, budgets = [], [], []
    for row in budget_rows:
        names.append(row.figure.replace(" (", "\n("))
        values.append(float(row.measured.split()[0]))
        budgets.append(float(row.compared_with.split()[1]))
    if rehearsal:
        names.append(f"rehearsal 1 new on {rehearsal['base']:,}\n(cached)")
        values.append(rehearsal["incremental_seconds"])
        budgets.append(REHEARSAL_SECONDS)
    colors = ["C0" if v <= b else "C3" for v, b in zip(values, budgets, strict=True)]
    budget_axis.barh(names, values, color=colors)
    budget_axis.scatter(budgets, names, marker="|", s=400, color="k", label="target")
    budget_axis.set(title="Time budgets (blue: met, red: missed)", xlabel="seconds")
    budget_axis.invert_yaxis()
    budget_axis.tick_params(axis="y", labelsize=8)
    budget_axis.legend(loc="lower right")

    prefect = results.get("prefect") or {}
    runs = prefect.get("triggered_cli") or []
    if runs:
        parts = [("CLI start", "cli_until_created_seconds"), ("worker poll", "queued_seconds"),
                 ("subprocess start + flow load", "start_seconds"), ("flow body", "body_seconds"),
                 ("--watch exit", "completed_until_cli_exit_seconds")]
        left, best = 0.0, min(runs, key=lambda r: r["wall_seconds"])
        for index, (label, key) in enumerate(parts):
            value = best.get(key) or 0.0
            trigger_axis.barh(["trigger→done"], [value], left=left, color=f"C{index}", label=f"{label} {value:.1f} s")
            left += value
        created = best.get("cli_until_created_seconds") or 0.0
        trigger_axis.axvline(created + TRIGGER_SECONDS, color="k", linestyle=":",
                             label=f"target: done {TRIGGER_SECONDS:g} s after the run is created")
        trigger_axis.set(title="No-op run, triggered like GitHub does", xlabel="seconds")
        trigger_axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=2, fontsize=8)

    figure.suptitle(f"rds-migrations benchmarks — {results['machine_line']}", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
