"""The Prefect REST API as `rds-migrations trigger` uses it (flows/trigger.py), without importing Prefect: where
the API is (the environment or Prefect's active profile), a client that asks again while the API is
unavailable, and the run's parameters checked and typed by the deployment's schema."""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from tasks.engine.errors import ConfigError, UsageError

if TYPE_CHECKING:
    import httpx

HTTP_TIMEOUT_SECONDS = 30.0
# What the flows refuse as a parameter (tasks/engine/runs/parameters.py CREDENTIAL: a URL carrying a password,
# or a libpq keyword string with one), repeated here because importing that module loads psycopg and pydantic
# (0.2 s of this command's start); tests/test_trigger.py checks the two are the same.
CREDENTIAL = re.compile(r"://[^/\s@]*:[^/\s@]*@|\b(password|passwd|pwd)\s*=", re.IGNORECASE)
# Well-known token shapes, never a flow parameter either.
TOKEN = re.compile(r"\bpn[ub]_[A-Za-z0-9]{20,}|\bA(KI|SI)A[0-9A-Z]{16}\b|hooks\.slack\.com/services/|\bxox[abprs]-")


# ---- where the API is -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiSettings:
    url: str | None
    key: str | None
    auth_string: str | None = None  # a self-hosted server's basic auth (PREFECT_API_AUTH_STRING)


def api_settings(environ: dict[str, str] | None = None) -> ApiSettings:
    """PREFECT_API_URL, PREFECT_API_KEY and PREFECT_API_AUTH_STRING from the environment, else from Prefect's
    active profile (`prefect cloud login` writes there), as Prefect reads them; without importing Prefect."""
    environ = os.environ if environ is None else environ
    names = ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_API_AUTH_STRING")
    values = {name: environ.get(name) or None for name in names}
    if values["PREFECT_API_URL"] is None:
        profile = _active_profile(environ)
        values = {name: values[name] or (str(profile[name]) if profile.get(name) else None) for name in names}
    return ApiSettings(values["PREFECT_API_URL"], values["PREFECT_API_KEY"], values["PREFECT_API_AUTH_STRING"])


def _active_profile(environ: dict[str, str]) -> dict[str, Any]:
    import tomllib

    home = Path(environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    path = Path(environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        profiles = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    name = environ.get("PREFECT_PROFILE") or profiles.get("active") or "ephemeral"
    profile = profiles.get("profiles", {}).get(name, {})
    return profile if isinstance(profile, dict) else {}


def check_api_url(url: str) -> str:
    """`url` when it can be an API's (http or https, a host, a number for a port); else ConfigError, without
    repeating it (it may hold a key someone pasted)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - read to be checked: a port that is not a number raises here
    except ValueError:
        raise ConfigError("PREFECT_API_URL is not a URL (a malformed host or port): e.g. "
                          "http://127.0.0.1:4200/api") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("PREFECT_API_URL must be an http(s) URL ending in /api")
    return url


def shown_url(url: str) -> str:
    """The API URL as printed: no user info, no query."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.hostname + (f":{parts.port}" if parts.port else "")
                       if parts.hostname else parts.netloc, parts.path, "", ""))


def ui_url(api_url: str, environ: dict[str, str] | None = None) -> str:
    """The UI's base URL: PREFECT_UI_URL, else derived from the API URL as Prefect does (Cloud: api. → app.)."""
    environ = os.environ if environ is None else environ
    if environ.get("PREFECT_UI_URL"):
        return environ["PREFECT_UI_URL"].rstrip("/")
    url = shown_url(api_url).rstrip("/")
    url = url.replace("https://api.prefect.cloud/api", "https://app.prefect.cloud")
    if url.endswith("/api"):
        url = url[:-4]
    return url.replace("/api/", "/").replace("/accounts/", "/account/").replace("/workspaces/", "/workspace/")


# ---- the API ------------------------------------------------------------------------------------------------


class ApiUnavailable(Exception):
    """The API did not answer usefully before the given time (the last reason, without a URL or a key)."""


class NotFound(Exception):
    pass


class Api:
    """The few Prefect REST calls the trigger makes: each asked again while the API is unavailable (connection
    refused or reset, a timeout, 5xx such as a local server's "database is locked", 429 with its Retry-After),
    until a given time. A 401/403 or a refused request is a configuration error."""

    def __init__(self, settings: ApiSettings) -> None:
        import httpx

        self._httpx = httpx
        headers = {"User-Agent": "rds-migrations-trigger"}
        if settings.key:
            headers["Authorization"] = f"Bearer {settings.key}"
        auth = None
        if settings.auth_string and not settings.key:
            user, _, password = settings.auth_string.partition(":")
            auth = httpx.BasicAuth(user, password)
        self.url = shown_url(settings.url or "")
        self._client = httpx.Client(base_url=(settings.url or "").rstrip("/"), headers=headers, auth=auth,
                                    timeout=HTTP_TIMEOUT_SECONDS)

    def close(self) -> None:
        self._client.close()

    def call(self, method: str, path: str, body: Any = None, *, until: float) -> Any:
        delay, reason = 0.25, "no answer"
        while True:
            remaining = until - time.monotonic()
            try:
                response = self._client.request(method, path, json=body,
                                                timeout=max(1.0, min(HTTP_TIMEOUT_SECONDS, remaining + 1)))
            except self._httpx.TransportError as exc:
                reason = _transport_reason(exc)
                wait = delay
            else:
                status = response.status_code
                if status in (401, 403):
                    raise ConfigError(f"the Prefect API at {self.url} refused the request ({status}): check "
                                      "PREFECT_API_KEY (Prefect Cloud) or PREFECT_API_AUTH_STRING")
                if status == 404:
                    raise NotFound(path)
                if status == 429 or status >= 500:
                    reason = f"HTTP {status}"
                    wait = _retry_after(response) or delay
                elif status >= 400:
                    raise ConfigError(f"the Prefect API refused {method} {path.split('?')[0]} ({status}): "
                                      f"{_detail(response)}")
                elif not response.content:
                    return None
                else:
                    try:
                        return response.json()
                    except ValueError:
                        raise ConfigError(f"{self.url} answered {method} {path.split('?')[0]} with something that is "
                                          "not JSON: is PREFECT_API_URL the API (ending in /api), not the UI?"
                                          ) from None
            if time.monotonic() + wait > until:
                raise ApiUnavailable(reason)
            time.sleep(wait)
            delay = min(delay * 2, 2.0)


def _transport_reason(exc: Exception) -> str:
    text = str(exc).strip()
    # httpx's texts name the error, not the URL; keep them short all the same.
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return min(10.0, max(0.0, float(response.headers.get("Retry-After", ""))))
    except ValueError:
        return None


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = None
    return str(detail)[:500] if detail else response.reason_phrase


# ---- parameters -------------------------------------------------------------------------------------------


def refuse_credentials(parameters: dict[str, Any], api_key: str | None) -> None:
    """A parameter that looks like a credential is never sent (the Prefect API stores parameters in plain text),
    and its value is never repeated."""
    for name, value in parameters.items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        if CREDENTIAL.search(text) or TOKEN.search(text) or (api_key and api_key in text):
            raise ConfigError(
                f"parameter {name} looks like a credential (a URL or keyword string with a password, an API key "
                "or a token): nothing was sent and the value is not repeated here. The Prefect API stores flow "
                "parameters in plain text; the environment says where credentials come from")


def _schema_types(schema: dict[str, Any]) -> set[str]:
    kind = schema.get("type")
    types = set(kind) if isinstance(kind, list) else {kind} if isinstance(kind, str) else set()
    for key in ("anyOf", "oneOf"):
        for option in schema.get(key) or ():
            if isinstance(option, dict):
                types |= _schema_types(option)
    return types


def typed_parameters(parameters: dict[str, Any], deployment: dict[str, Any]) -> dict[str, Any]:
    """Each parameter checked against the deployment's schema: an unknown name is refused; a text value for a
    parameter that is not a string (a boolean, a number, a list) is read as JSON, as `prefect deployment run
    --param` reads it; a string parameter keeps its text (a commit SHA made of digits stays a string)."""
    schema = deployment.get("parameter_openapi_schema") or {}
    properties = schema.get("properties") or {}
    unknown = sorted(set(parameters) - set(properties))
    if unknown:
        known = ", ".join(sorted(properties)) or "none"
        raise UsageError(f"the deployment has no parameter {', '.join(unknown)} (its parameters: {known})")
    typed = {}
    for name, value in parameters.items():
        types = _schema_types(properties[name])
        if isinstance(value, str) and types and "string" not in types:
            try:
                value = json.loads(value)
            except ValueError:
                raise UsageError(f"parameter {name} takes {' or '.join(sorted(t for t in types if t))}: the "
                                 f"{len(value)} characters given are not JSON") from None
        typed[name] = value
    return typed


def parse_params(items: list[str]) -> dict[str, str]:
    """`--param key=value` pairs (the values typed later, by the deployment's schema)."""
    parameters = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise UsageError(f"--param takes key=value with a parameter name first ({len(item)} characters given)")
        parameters[key] = value
    return parameters
