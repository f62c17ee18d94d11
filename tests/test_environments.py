"""The environments file: parsed strictly, errors name the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.engine.environments import load_environment, load_environments
from tasks.engine.errors import ConfigError

PROJECT = Path(__file__).parents[1]

BASE = """
[environments.x]
tier = "staging"
credentials = { kind = "url_env" }
snapshot = { kind = "none" }
notify = { kind = "console" }
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "environments.toml"
    path.write_text(text)
    return path


def test_the_shipped_file_parses_and_holds_no_secret() -> None:
    environments = load_environments(PROJECT / "deployments" / "environments.toml")
    assert {"staging", "production", "local", "local-production", "database-url"} <= set(environments)
    assert environments["production"].policy.snapshot_required
    text = (PROJECT / "deployments" / "environments.toml").read_text().lower()
    assert "password" not in text and "postgresql://" not in text


def test_unknown_key_names_the_field_and_the_setting_it_is_nearest_to(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"environments\.toml: environments\.x\.colour: not a setting here$"):
        load_environments(write(tmp_path, BASE + 'colour = "blue"\n'))
    with pytest.raises(ConfigError) as raised:
        load_environments(write(tmp_path, BASE + 'policy = { lint_block_on = "error", snapshot_reuse_minute = 5 }\n'))
    assert str(raised.value).endswith(
        "environments.x.policy.lint_block_on: not a setting here (did you mean lint_blocks_on?); "
        "environments.x.policy.snapshot_reuse_minute: not a setting here (did you mean snapshot_reuse_minutes?)")


def test_bad_values_name_the_field(tmp_path: Path) -> None:
    bad = BASE.replace('kind = "none"', 'kind = "rds_instance", instance_id = "bad--name-"')
    with pytest.raises(ConfigError, match="snapshot.rds_instance.instance_id.*not a valid RDS identifier"):
        load_environments(write(tmp_path, bad))
    with pytest.raises(ConfigError, match=r"policy.lock_timeout_ms"):
        load_environments(write(tmp_path, BASE + "policy = { lock_timeout_ms = 0 }\n"))
    with pytest.raises(ConfigError, match=r"policy.migrations_per_message"):
        load_environments(write(tmp_path, BASE + "policy = { migrations_per_message = 0 }\n"))
    assert load_environments(write(tmp_path, BASE + "policy = { migrations_per_message = 20 }\n"))[
        "x"].policy.migrations_per_message == 20
    with pytest.raises(ConfigError, match="must not exceed statement_timeout_ms"):
        load_environments(write(tmp_path, BASE + "policy = { lock_timeout_ms = 5000, statement_timeout_ms = 1000 }\n"))
    with pytest.raises(ConfigError, match="snapshot_required is true but snapshot.kind is 'none'"):
        load_environments(write(tmp_path, BASE + "policy = { snapshot_required = true }\n"))
    with pytest.raises(ConfigError, match=r"an \[aws\] section"):
        load_environments(write(tmp_path, BASE.replace('{ kind = "url_env" }',
                                                        '{ kind = "secrets_manager", secret_id = "a" }')))


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_environments(write(tmp_path, "[environments.x\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_environments(tmp_path / "nope.toml")


def test_unknown_and_hostile_environment_names(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    with pytest.raises(ConfigError, match=r"no environment named 'y' \(known: x\)"):
        load_environment("y", path)
    with pytest.raises(ConfigError, match=r"no environment named 'stagin' \(did you mean staging\? known: "):
        load_environment("stagin", PROJECT / "deployments" / "environments.toml")
    with pytest.raises(ConfigError, match="not valid") as raised:
        load_environment("x'; DROP TABLE users; --", path)
    assert "DROP TABLE" not in str(raised.value)
