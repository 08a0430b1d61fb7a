"""The migrations agree with the models (`choreo db check`, on scratch in-memory SQLite: this is
what makes `make check` fail on a model changed without a revision), and `choreo db revision`
writes the next revision of a changed model, which then upgrades and agrees."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner
from sqlalchemy import Column, MetaData, String


def choreo(*args: str):
    from choreo.cli import cli

    return CliRunner().invoke(cli, list(args))


def test_every_service_s_migrations_build_its_models():
    result = choreo("db", "check")
    assert result.exit_code == 0, result.output
    assert "models and migrations agree" in result.output


def test_each_service_has_one_branch_whose_base_is_its_baseline():
    from choreo.infra import schema
    from config.settings import SERVICES

    for service in SERVICES:
        assert schema.baseline_of(service) == f"{service}_0001"
        assert schema.head_of(service).startswith(f"{service}_")
        assert schema.scripts(service).get_revision(f"{service}_0001").branch_labels == {service}


@pytest.fixture
def changed_order_model(tmp_path, monkeypatch):
    """A copy of the migrations, and the order models with one more column in order_view."""
    from choreo.infra import schema

    scripts = tmp_path / "migrations"
    shutil.copytree(schema.SCRIPTS, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(schema, "SCRIPTS", scripts)
    real = schema.target_metadata

    def with_note(service: str) -> MetaData:
        metadata = real(service)
        if service == "order":
            metadata.tables["order_view"].append_column(Column("note", String(64), nullable=True))
        return metadata

    monkeypatch.setattr(schema, "target_metadata", with_note)
    schema.scripts.cache_clear()
    yield scripts
    schema.scripts.cache_clear()


def test_a_changed_model_fails_the_check_until_its_revision_is_written(changed_order_model):
    from choreo.infra import schema

    drift = choreo("db", "check", "--service", "order")
    assert drift.exit_code == 1
    assert "note" in drift.output and "choreo db revision" in drift.output

    before = schema.head_of("order")  # order_000N: the next one is N + 1
    following = f"order_{int(before.rsplit('_', 1)[1]) + 1:04d}"
    written = choreo("db", "revision", "-m", "order view note")
    assert written.exit_code == 0, written.output
    path = changed_order_model / "versions" / "order" / f"{following}_order_view_note.py"
    assert f"order: wrote {path}" in written.output.replace("\n", "")
    text = path.read_text()
    assert "batch_alter_table" in text and "add_column" in text and '"note"' in text
    schema.scripts.cache_clear()
    assert schema.head_of("order") == following

    again = choreo("db", "check")
    assert again.exit_code == 0, again.output
    nothing = choreo("db", "revision", "-m", "nothing")
    assert nothing.exit_code == 2 and "nothing to write" in nothing.output
