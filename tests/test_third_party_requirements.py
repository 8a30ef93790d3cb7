from __future__ import annotations

from pathlib import Path

from tools.third_party_requirements import third_party_requirements


def test_own_packages_are_left_out_and_duplicates_merged(tmp_path: Path) -> None:
    for name, deps in {
        "a": '["qpq-proto>=0.1", "aioquic>=1.2", "qpq_core"]',
        "b": '["aioquic>=1.2", "click>=8"]',
    }.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "pyproject.toml").write_text(
            f'[project]\nname = "{name}"\ndependencies = {deps}\n'
        )
    assert third_party_requirements(tmp_path) == ["aioquic>=1.2", "click>=8"]


def test_optional_extras_are_included(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "pyproject.toml").write_text(
        '[project]\nname = "a"\ndependencies = ["aioquic>=1.2"]\n'
        '[project.optional-dependencies]\npg = ["psycopg[binary]>=3.2", "qpq-proto"]\n'
    )
    assert third_party_requirements(tmp_path) == ["aioquic>=1.2", "psycopg[binary]>=3.2"]


def test_reads_the_real_manifests() -> None:
    requirements = third_party_requirements(Path(__file__).resolve().parent.parent / "packages")
    assert any(r.startswith("pycapnp") for r in requirements)
    assert not any(r.startswith("qpq") for r in requirements)
