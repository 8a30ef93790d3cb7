"""The Dockerfile, read as text: the audit's container findings cannot come back.

No Docker engine runs here, so these checks read the file: every package is
built, the runtime user is not root and owns the data dir, and no secret has
a default.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests._dockerfile import Stage, parse

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = sorted(p.parent.name for p in (ROOT / "packages").glob("*/pyproject.toml"))


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return {stage.name: stage for stage in parse(ROOT / "Dockerfile")}


def _cache_layer_copies(builder: Stage) -> set[str]:
    """Sources copied before the full `COPY packages/ packages/`."""
    sources: set[str] = set()
    for instruction in builder.instructions:
        if instruction.keyword != "COPY":
            continue
        words = shlex.split(instruction.arguments)
        if words[:-1] == ["packages/"]:
            break
        sources.update(w for w in words[:-1] if not w.startswith("--"))
    return sources


def test_there_are_packages_to_check() -> None:
    assert {"qpq-proto", "qpq-core", "qpq-server", "qpq-client"} <= set(PACKAGES)


def test_cache_layer_copies_every_package_manifest(stages: dict[str, Stage]) -> None:
    copied = _cache_layer_copies(stages["builder"])
    expected = {f"packages/{name}/pyproject.toml" for name in PACKAGES}
    assert expected - copied == set(), "package manifests missing from the cache layer"
    stale = {s for s in copied if s.endswith("pyproject.toml")} - expected
    assert stale == set(), "the cache layer copies manifests of packages that do not exist"


def test_cache_layer_copies_every_rust_manifest(stages: dict[str, Stage]) -> None:
    copied = _cache_layer_copies(stages["builder"])
    for cargo in (ROOT / "packages").glob("*/Cargo.toml"):
        package = cargo.parent.name
        assert f"packages/{package}/Cargo.toml" in copied
        assert f"packages/{package}/Cargo.lock" in copied


def test_every_package_is_built(stages: dict[str, Stage]) -> None:
    runs = " ".join(stages["builder"].all("RUN"))
    assert "for pkg in packages/*/" in runs, "wheels must be built for every package dir"
    assert "maturin build --release --locked" in runs
    assert "COPY packages/ packages/" in [
        f"COPY {i.arguments}" for i in stages["builder"].instructions if i.keyword == "COPY"
    ]


def test_runtime_user_is_dedicated_and_not_root(stages: dict[str, Stage]) -> None:
    runtime = stages["runtime"]
    users = runtime.all("USER")
    assert users, "the runtime stage must switch user"
    user = users[-1]
    assert user.split(":")[0] not in {"root", "0", "nobody"}
    args = dict(a.split("=", 1) for a in runtime.all("ARG") if "=" in a)
    assert user == "${QPQ_UID}:${QPQ_GID}"
    assert int(args["QPQ_UID"]) >= 1000
    assert int(args["QPQ_GID"]) >= 1000
    runs = " ".join(runtime.all("RUN"))
    assert '--uid "${QPQ_UID}"' in runs
    assert '--gid "${QPQ_GID}"' in runs


def test_data_dir_belongs_to_the_runtime_user(stages: dict[str, Stage]) -> None:
    runtime = stages["runtime"]
    env = " ".join(runtime.all("ENV"))
    assert "QPQ_DATA_DIR=/var/lib/qpq" in env
    runs = " ".join(runtime.all("RUN"))
    assert re.search(r"install -d -o qpq -g qpq -m 0700 /var/lib/qpq", runs)
    assert runtime.all("VOLUME") == ['["/var/lib/qpq"]']


def test_runtime_runs_the_server_in_production(stages: dict[str, Stage]) -> None:
    runtime = stages["runtime"]
    assert "QPQ_PRODUCTION=1" in " ".join(runtime.all("ENV"))
    assert runtime.all("EXPOSE") == ["7000/udp"]
    assert runtime.all("ENTRYPOINT") == ['["qpq-server"]']
    (healthcheck,) = runtime.all("HEALTHCHECK")
    assert '"qpq-server", "health"' in healthcheck


def test_no_secret_has_a_default() -> None:
    text = (ROOT / "Dockerfile").read_text("utf-8")
    assert "devtoken" not in text.lower()
    for name in ("QPQ_AUTH_TOKEN", "QPQ_DB_KEY", "QPQ_STATE_KEY", "QPQ_TOKEN"):
        assert not re.search(rf"\b{name}(_FILE)?\s*=", text), f"{name} must not be set in the image"
    for stage in parse(ROOT / "Dockerfile"):
        for arg in stage.all("ARG"):
            assert not re.search(r"(token|key|secret|password)", arg, re.IGNORECASE), arg


def test_dockerignore_keeps_state_and_vcs_out() -> None:
    ignored = set((ROOT / ".dockerignore").read_text("utf-8").split())
    for pattern in (".git", "data", "**/data", "*.db", "*.pem", "*.key", "*.der", "**/target"):
        assert pattern in ignored, pattern


def test_compose_reads_secrets_from_files() -> None:
    compose = (ROOT / "docker-compose.yml").read_text("utf-8")
    assert "QPQ_AUTH_TOKEN_FILE" in compose
    assert "QPQ_DB_KEY_FILE" in compose
    assert not re.search(r"QPQ_(AUTH_TOKEN|DB_KEY):", compose), "secrets must come from files"


def test_the_postgres_compose_example_reads_secrets_from_files() -> None:
    compose = (ROOT / "deploy" / "docker-compose.postgres.yml").read_text("utf-8")
    assert "QPQ_DATABASE_URL_FILE" in compose
    assert "POSTGRES_PASSWORD_FILE" in compose
    assert not re.search(r"QPQ_(AUTH_TOKEN|DATABASE_URL):", compose), "secrets come from files"
    assert not re.search(r"POSTGRES_PASSWORD:", compose), "secrets come from files"
    assert compose.count("<<: *qpq-node") == 2  # two nodes


def test_the_image_installs_the_postgres_driver() -> None:
    assert "'qpq-server[postgres]'" in (ROOT / "Dockerfile").read_text("utf-8")
