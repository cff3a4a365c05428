"""A new home's MLflow and Prefect databases start from migrated templates.

Each template must be what the pinned library's own migrations produce (schema and rows), and
the libraries must open a database made from it as their own.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from adaptflow import sqlite_templates
from adaptflow.sqlite_templates import restore, template_path

REPO = Path(__file__).resolve().parents[1]
REGENERATE = "run `make templates` after upgrading it"


def schema(database: Path) -> list[tuple[str, str, tuple[str, ...]]]:
    """Every table, index, trigger and view as ``(type, name, lines)``, sorted; to compare.

    ``lines`` are the statement's lines, stripped of indentation and trailing commas, sorted:
    Alembic's batch migrations on SQLite (Prefect's) recreate a table with its constraints in
    an order that changes from run to run, the same schema written two ways.
    """
    connection = sqlite3.connect(database)
    try:
        rows = connection.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
        ).fetchall()
    finally:
        connection.close()
    return sorted((str(kind), str(name), _lines(str(sql))) for kind, name, sql in rows)


def _lines(sql: str) -> tuple[str, ...]:
    return tuple(sorted(line.strip().rstrip(",").strip() for line in sql.splitlines()))


def rows(database: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every table's rows, sorted; to compare."""
    connection = sqlite3.connect(database)
    try:
        tables = [
            name
            for (name,) in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return {
            table: sorted(connection.execute(f'SELECT * FROM "{table}"').fetchall(), key=repr)  # noqa: S608
            for table in tables
        }
    finally:
        connection.close()


def _from_text(text: str, database: Path) -> Path:
    connection = sqlite3.connect(database)
    connection.executescript(text)
    connection.close()
    return database


@pytest.mark.parametrize("library", ["mlflow", "prefect"])
def test_the_template_is_what_the_pinned_library_migrates(library: str, tmp_path: Path) -> None:
    from flows.embedded import migrated_database_dump
    from registry.tracking import migrated_store_dump

    assert template_path(library, version(library)).is_file(), (
        f"no template for {library} {version(library)}: {REGENERATE}"
    )
    (tmp_path / "migrated").mkdir()
    make = migrated_store_dump if library == "mlflow" else migrated_database_dump
    migrated = _from_text(make(tmp_path / "migrated"), tmp_path / "migrated.db")
    templated = tmp_path / "templated.db"
    assert restore(library, version(library), templated)

    assert schema(templated) == schema(migrated), f"{library}'s schema moved: {REGENERATE}"
    assert rows(templated) == rows(migrated)
    assert len(schema(templated)) > 100  # the tables and indexes are there, not an empty file
    assert len(rows(templated)["alembic_version"]) == 1


def test_a_new_mlflow_store_starts_from_the_template_and_mlflow_opens_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from mlflow.tracking import MlflowClient

    from registry.tracking import _init_sqlite_store

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    with caplog.at_level(logging.INFO, logger="mlflow.store.db.utils"):
        _init_sqlite_store(uri)
    # MLflow logs these when it creates and migrates tables itself
    assert "Creating initial MLflow database tables" not in caplog.text
    assert "Updating database tables" not in caplog.text

    store = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert [e.name for e in store.search_experiments()] == ["Default"]  # MLflow's own, on open
    experiment = store.create_experiment("templated", artifact_location=tmp_path.as_uri())
    run = store.create_run(experiment)
    store.log_metric(run.info.run_id, "f1_macro", 0.75)
    assert store.get_run(run.info.run_id).data.metrics == {"f1_macro": 0.75}
    store.create_registered_model("templated-model")
    assert [m.name for m in store.search_registered_models()] == ["templated-model"]


def test_restore_never_overwrites_and_leaves_nothing_behind_when_it_cannot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    existing = tmp_path / "existing.db"
    existing.write_bytes(b"a user's database")
    assert not restore("mlflow", version("mlflow"), existing)
    assert existing.read_bytes() == b"a user's database"

    assert not restore("mlflow", "0.0.0-no-such-version", tmp_path / "other.db")
    assert not (tmp_path / "other.db").exists()

    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "broken-1.0.sql").write_text("CREATE TABLE t (a INTEGER);\nNOT SQL AT ALL;\n")
    monkeypatch.setattr(sqlite_templates, "TEMPLATES", templates)
    target = tmp_path / "store"
    target.mkdir()
    assert not restore("broken", "1.0", target / "broken.db")
    assert list(target.iterdir()) == []  # neither the database nor its partial copy


_START = """
import os, sqlite3
from pathlib import Path
from flows.embedded import Starting, without_heartbeats

home = Path(os.environ["PREFECT_HOME"])
server = Starting(home)
from prefect import flow

@flow(name="templated-home")
def probe():
    return 42

server.wait()
with without_heartbeats():
    assert probe() == 42
server.stop()
database = sqlite3.connect(home / "prefect.db")
runs = database.execute("select count(*) from flow_run").fetchone()[0]
blocks = database.execute("select count(*) from block_type").fetchone()[0]
print(server.restored, runs, blocks > 0)
"""


@pytest.mark.integration
def test_a_new_home_s_prefect_server_starts_on_the_template(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONPATH": str(REPO)}
    seen = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", _START], env=env, cwd=REPO, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        seen.append(done.stdout.strip())
    # a new home: its database from the template, then the server's own block types and the
    # flow's run in it; the next start finds the database and restores nothing
    assert seen == ["True 1 True", "False 2 True"]
