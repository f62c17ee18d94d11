"""Which commit a run applies, decided before anything reads migrations/.

A deployment run is pinned: given a commit's SHA it checks that commit out in its clone (fetching it from
origin when the shallow clone of the branch lacks it) and applies exactly its migrations/; a commit that cannot
be fetched fails the run there, naming the SHA, before the database is touched. Given no SHA ("unknown"), it
applies the clone's checked-out commit and records that one. A deployment whose code is not a git checkout
(baked into an image) applies its files as they are, with a warning. A run from a person's terminal applies the
working tree as it is and records the SHA it was given (HEAD by default), with a warning when migrations/ holds
changes that commit does not.
"""

from __future__ import annotations

from pathlib import Path

from tasks.engine.git import check_out, head_sha, is_checkout, is_commit, uncommitted
from tasks.engine.runs.steps import Steps


def commit_of_run(steps: Steps, git_sha: str, project_root: Path, migrations_dir: str) -> str:
    """The SHA this run applies and records (the full id when a commit is known)."""
    if steps.run_info().deployment is not None:
        if not is_checkout(project_root):  # code baked into an image, or deployed from a directory
            steps.log.warning("%s is not a git checkout: applying the deployment's %s/ as it is, recorded as %s",
                              project_root, migrations_dir, git_sha)
            return git_sha
        if is_commit(git_sha):
            pinned = check_out(project_root, git_sha)
            steps.log.info("Checked out commit %s: its %s/ is what this run applies", pinned, migrations_dir)
            return pinned
        pinned = head_sha(project_root)
        steps.log.warning("No git_sha given: applying the deployment's checked-out commit %s", pinned)
        return pinned
    if not is_checkout(project_root):
        return git_sha
    changed = uncommitted(project_root, migrations_dir)
    if changed:
        steps.log.warning(
            "%s/ has %d uncommitted change(s) (%s): the run applies them, but the history records %s, which does "
            "not hold them; commit first for a history that tells the truth",
            migrations_dir, len(changed), ", ".join(changed[:5]) + (", ..." if len(changed) > 5 else ""), git_sha)
    head = head_sha(project_root)
    if is_commit(git_sha) and not head.startswith(git_sha):
        steps.log.warning("--git-sha %s is not the checked-out commit %s: the history records %s", git_sha, head,
                          git_sha)
    return git_sha
