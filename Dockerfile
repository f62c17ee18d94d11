# The image of rds-migrations' Prefect workers and flow runs on an ECS work pool: Python 3.11 with the
# locked dependencies (uv.lock, no dev group) in /opt/venv, compiled to bytecode, first on PATH, run by a
# non-root user. The code is not baked in: each flow run clones the repository (the pull step in
# prefect.yaml), so the image changes only when uv.lock does.
#
#   docker build --platform linux/amd64 -t rds-migrations .     (or deployments/prefect.ecs.yaml's build step)
#   docker run --rm -e PREFECT_API_URL=… rds-migrations          a worker of the `rds-migrations` pool
#
# Written for Docker's classic builder too: no BuildKit-only syntax.
# linux/amd64 only: pgserver, a dependency, publishes no wheel for arm64.

# python:3.11.16-slim-bookworm, pinned by the digest of its multi-platform index (docker-library/repo-info).
FROM python:3.11.16-slim-bookworm@sha256:c425d915a89a6dcd3183b1797ad9bd8878caff5a417f6371c8df93c8ea8b727f AS build

# uv from PyPI, hash-checked (the manylinux x86_64 and aarch64 wheels of 0.13.9).
RUN printf 'uv==0.13.9 --hash=sha256:%s --hash=sha256:%s\n' \
        d7f459fe4fd247d830351c75686d3996ace3c6f3f728eb0e85a30b7ada0cef19 \
        5435c5ce14a56431208ca0996416d310f1598e8c2c8ba707688985a16bb82dbe > /tmp/uv-requirements.txt \
    && pip install --no-cache-dir --disable-pip-version-check --require-hashes -r /tmp/uv-requirements.txt

ENV UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PYTHON_DOWNLOADS=never \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1

WORKDIR /src
COPY pyproject.toml uv.lock ./
# --locked: fail if uv.lock is stale; --no-install-project: dependencies only, the code comes from the clone.
RUN uv sync --locked --no-dev --no-install-project --compile-bytecode


FROM python:3.11.16-slim-bookworm@sha256:c425d915a89a6dcd3183b1797ad9bd8878caff5a417f6371c8df93c8ea8b727f

# git: the pull step (prefect.deployments.steps.git_clone) clones the repository at run time.
# postgresql-client-17 from the PostgreSQL project's own archive (PGDG, signed): pg_dump and pg_restore for
# snapshots of the local kind and for rehearsals on the target's schema. It must be at least as new as the RDS
# server (pg_dump refuses a newer server) and built with TLS (the pgserver wheel's 16.2 is not: it cannot honour
# sslmode=verify-full).
# The RDS CA bundle, where the shipped environments' `tls.root_cert` looks for it.
# Not pinned to versions: the archives' security updates replace old ones, and an exact pin would break builds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends git ca-certificates curl gnupg \
    && install -d /usr/share/postgresql-common/pgdg /etc/ssl/rds \
    && curl --fail --silent --show-error --location -o /usr/share/postgresql-common/pgdg/apt.postgresql.org.asc \
        https://www.postgresql.org/media/keys/ACCC4CF8.asc \
    && echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] https://apt.postgresql.org/pub/repos/apt bookworm-pgdg main" \
        > /etc/apt/sources.list.d/pgdg.list \
    && apt-get update \
    && apt-get install --yes --no-install-recommends postgresql-client-17 \
    && curl --fail --silent --show-error --location -o /etc/ssl/rds/global-bundle.pem \
        https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem \
    && apt-get purge --yes --auto-remove curl gnupg \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 prefect \
    && useradd --system --uid 10001 --gid prefect --create-home --home-dir /home/prefect prefect

COPY --from=build /opt/venv /opt/venv

# The venv first on PATH: `prefect`, and `python -m prefect.engine` (the pool's flow-run command), are the venv's.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PREFECT_WORKER_QUERY_SECONDS=1

USER 10001:10001
WORKDIR /home/prefect

# `docker run IMAGE`: a worker of the ECS pool deployments/prefect.ecs.yaml deploys to (run it as an ECS service).
CMD ["prefect", "worker", "start", "--pool", "rds-migrations-ecs", "--type", "ecs"]
