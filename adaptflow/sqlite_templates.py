"""Migrated, empty SQLite databases of the pinned MLflow and Prefect, as SQL text.

A new home's first run used to spend seconds migrating two empty databases: MLflow's store
(~2 s: its initial tables, then every Alembic migration since) and the embedded Prefect
server's (~4 s of a first run's wait for the server: ~150 migrations). Both end at the same
schema on every machine for a given library version, so the result is kept here once, per
version, as the SQL text of ``sqlite3``'s ``iterdump`` (tables, indexes, triggers and the
rows the migrations insert, ``alembic_version`` among them), and a new database is created
from it in ~10 ms. The libraries then open it as their own: each checks that its schema is at
the latest revision and goes on (MLflow creates its default experiment, Prefect registers its
block types).

- Only for the exact version a template was written with; any other version (an upgrade not
  yet followed by ``make templates``) migrates as before.
- Never over an existing file, and atomically: the database is written beside its final name
  and renamed into place, so a reader sees no database or a whole one. Where the text does not
  apply (an SQLite too old for a statement), nothing is left behind and the library migrates.
- ``make templates`` rewrites them from the libraries' own migrations
  (``python -m flows.embedded``); ``tests/test_sqlite_templates.py`` checks that a database
  made from each template has the schema and revision a migrated one has, and that the
  committed text is what the pinned versions produce.

This module knows files and SQL only (it is the bottom import layer); the code that migrates
with MLflow lives in ``registry.tracking``, with Prefect in ``flows.embedded``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from pathlib import Path

#: Where the templates live, one file per library and version: ``mlflow-3.17.2.sql``.
TEMPLATES = Path(__file__).parent / "sqlite_templates"


def template_path(library: str, version: str) -> Path:
    """The template of ``library`` (``mlflow`` or ``prefect``) at ``version``."""
    return TEMPLATES / f"{library}-{version}.sql"


def dump(database: Path) -> str:
    """The SQL text that recreates ``database`` (schema and rows), one statement a line."""
    connection = sqlite3.connect(database)
    try:
        return "\n".join(connection.iterdump()) + "\n"
    finally:
        connection.close()


def restore(library: str, version: str, database: Path) -> bool:
    """Create ``database`` from the template of ``library`` at ``version``.

    Returns:
        True when it did; False when the file already exists, there is no template for this
        version, or the template did not apply (then nothing is left behind).
    """
    template = template_path(library, version)
    if database.exists() or not template.is_file():
        return False
    database.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(prefix=f".{database.name}.", dir=database.parent)
    os.close(handle)
    try:
        connection = sqlite3.connect(partial)
        try:
            connection.executescript(template.read_text(encoding="utf-8"))
        finally:
            connection.close()
        # a database that appeared meanwhile wins (os.link fails where the name is taken)
        os.link(partial, database)
    except (sqlite3.Error, OSError):
        return False
    finally:
        with contextlib.suppress(OSError):
            os.unlink(partial)
    return True
