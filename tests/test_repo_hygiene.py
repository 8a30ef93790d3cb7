"""Repository-wide rules from the production-readiness audit, checked on every run."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = sorted(p.parent for p in (ROOT / "packages").glob("*/pyproject.toml"))
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


@pytest.mark.parametrize(
    "path",
    [
        "data/server-cert.der",
        "data/qpq.db",
        "packages/qpq-server/data/x",
        "server-key.pem",
        "tls.key",
        "state.db",
        "state.db-wal",
        "state.db-shm",
        "packages/qpq-core/target/release/x",
        ".tox/py/x",
        ".venv/bin/python",
        ".wheelhouse/qpq_core.whl",
        "secrets/auth_token",
    ],
)
def test_gitignore_covers_secrets_state_and_build_output(path: str) -> None:
    result = subprocess.run(
        ["git", "check-ignore", "--no-index", "-q", path], cwd=ROOT, check=False
    )
    assert result.returncode == 0, f"{path} is not ignored"


def test_every_package_has_the_same_shape() -> None:
    assert PACKAGES
    for package in PACKAGES:
        import_name = package.name.replace("-", "_")
        for relative in ("README.md", "CHANGELOG.md", "tests", f"src/{import_name}/py.typed"):
            assert (package / relative).exists(), f"{package.name} lacks {relative}"


def test_codeowners_maps_every_package_and_sensitive_path() -> None:
    owners = (ROOT / "CODEOWNERS").read_text("utf-8")
    patterns = {line.split()[0] for line in owners.splitlines() if line and not line.startswith("#")}
    for package in PACKAGES:
        assert f"/packages/{package.name}/" in patterns, package.name
    for sensitive in ("/packages/qpq-core/rust/", "/Dockerfile", "/.github/", "/deny.toml"):
        assert sensitive in patterns, sensitive


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_is_hardened(workflow: Path) -> None:
    text = workflow.read_text("utf-8")
    assert re.search(r"^permissions:\n  contents: read$", text, re.MULTILINE)
    assert "concurrency:" in text
    for uses in re.findall(r"uses:\s*(\S+)", text):
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", uses), f"not pinned by SHA: {uses}"
    jobs = re.findall(r"^  ([\w-]+):\n    (?:needs|runs-on)", text, re.MULTILINE)
    assert jobs
    assert text.count("timeout-minutes:") >= len(jobs)


def test_ci_jobs_only_call_tox() -> None:
    text = (ROOT / ".github" / "workflows" / "ci.yml").read_text("utf-8")
    for command in re.findall(r"- run: (.+)", text):
        assert command.startswith(("tox -e", "python -m pip install 'tox", "rustup component")), (
            command
        )


def test_no_bare_assert_in_production_code() -> None:
    offenders = []
    for package in PACKAGES:
        for source in (package / "src").rglob("*.py"):
            tree = ast.parse(source.read_text("utf-8"), str(source))
            offenders += [f"{source}:{n.lineno}" for n in ast.walk(tree) if isinstance(n, ast.Assert)]
    assert offenders == []


def test_ci_run_calls_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text("utf-8")
    ci_run = (ROOT / ".ci" / "run").read_text("utf-8")
    command = "python3 -m pip install --quiet 'tox>=4.20' && python3 -m tox"
    assert command in readme
    assert command in ci_run
