"""Running one function per target over the waves, with the stop rules: the same loop whichever way a wave's
targets are spread out. `MapWave` does that part: `thread_pool` here (the command line, no Prefect), a Prefect
task runner's `map` in flows/fleet.py (threads in the flow run's process, or a flow run per target on the work
pool)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from tasks.engine.fleet.config import Fleet
from tasks.engine.fleet.report import TargetResult, skipped
from tasks.engine.fleet.targets import Target
from tasks.engine.fleet.waves import StopRule, after_wave, plan_waves
from tasks.engine.logs import Log

logger = logging.getLogger(__name__)
RunTarget = Callable[[Target], TargetResult]
# Runs `run` once per target (at most `concurrency` at once) and returns the results in the targets' order.
MapWave = Callable[[Sequence[Target], RunTarget], list[TargetResult]]
# Told (finished, total) after each target.
FleetProgress = Callable[[int, int], None]


def thread_pool(concurrency: int) -> MapWave:
    def map_wave(targets: Sequence[Target], run: RunTarget) -> list[TargetResult]:
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="fleet") as pool:
            return list(pool.map(run, targets))

    return map_wave


def run_waves(
    targets: Sequence[Target],
    run: RunTarget,
    fleet: Fleet,
    map_wave: MapWave,
    progress: FleetProgress | None = None,
    log: Log = logger,
) -> tuple[list[TargetResult], str | None]:
    """Every target through `run`, wave by wave; (results in target order, why some were not started)."""
    rule = StopRule(fleet.stop_after_failures)
    finished: list[TargetResult] = []
    total = len(targets)

    def guarded(target: Target) -> TargetResult:
        reason = rule.reason
        result = skipped(target.name, reason) if reason else run(target)
        rule.record(result)
        finished.append(result)  # list.append is atomic: progress only reads its length
        if progress is not None:
            progress(len(finished), total)
        return result

    results: list[TargetResult] = []
    stopped: str | None = None
    for wave in plan_waves(targets, fleet.canary):
        if stopped:
            results += [skipped(t.name, stopped) for t in wave.targets]
            continue
        log.info("Fleet wave %s: %d target(s), %d at once", wave.name, len(wave.targets), fleet.concurrency)
        wave_results = map_wave(wave.targets, guarded)
        results += wave_results
        stopped = after_wave(wave, wave_results) or rule.reason
        if stopped:
            log.warning("Fleet stopped: %s", stopped)
    return results, stopped
