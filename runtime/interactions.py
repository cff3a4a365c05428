"""The interaction log of served models: what was asked, what answered, and what users said.

``adaptflow serve`` writes one row per answered request (request, response, the version that
answered, latency) and one row per piece of feedback (thumbs up/down, a corrected answer, the
preferred one of several choices); ``adaptflow harvest`` reads them back as training data.
Every text goes through the store's ``redact`` function before it is written, so a secret or
a card number a user typed never reaches the database. SQLite under ``ADAPTFLOW_HOME`` by
default; any SQLAlchemy URL (PostgreSQL for a team: ``ADAPTFLOW_INTERACTIONS_URL``) otherwise.
SQLAlchemy Core rather than hand-written SQL, so the same code runs on both.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaptflow.errors import DataError, ServiceError

RATINGS = ("up", "down")


@dataclass(frozen=True)
class Interaction:
    """One answered request, as the store keeps it (texts already redacted)."""

    id: str
    model: str
    version: str
    endpoint: str  # "chat", "completion", "classify", "invocations"
    request: dict[str, Any]
    response: dict[str, Any]
    latency_ms: float
    created: float


@dataclass(frozen=True)
class Feedback:
    """One piece of feedback on an interaction."""

    interaction_id: str
    rating: str | None
    correction: str | None
    preferred: int | None
    created: float

    def as_dict(self) -> dict[str, Any]:
        """What was recorded, as the feedback route and command answer it."""
        return {
            "id": self.interaction_id,
            "rating": self.rating,
            "correction": self.correction,
            "preferred": self.preferred,
        }


def _redact_value(value: Any, redact: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_redact_value(v, redact) for v in value]
    if isinstance(value, dict):
        return {k: _redact_value(v, redact) for k, v in value.items()}
    return value


class InteractionStore:
    """Interactions and feedback in one SQL database (tables created on first use)."""

    def __init__(self, url: str, redact: Callable[[str], str]) -> None:
        """Open (and create if needed) the store at ``url``.

        Args:
            url: A SQLAlchemy URL (``sqlite:///…``, ``postgresql+psycopg://…``).
            redact: Applied to every text before it is written (PII and secret rules).

        Raises:
            ServiceError: When the database cannot be reached or created.
        """
        import sqlalchemy as sa

        self.redact = redact
        options: dict[str, Any] = {}
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            # request threads write concurrently: wait for the lock instead of failing
            options["connect_args"] = {"timeout": 30, "check_same_thread": False}
        try:
            self.engine = sa.create_engine(url, **options)
        except Exception as exc:  # an unknown dialect, a missing driver, a malformed URL
            raise ServiceError(f"interaction store URL is not usable: {exc}") from None
        meta = sa.MetaData()
        self.interactions = sa.Table(
            "adaptflow_interactions",
            meta,
            sa.Column("id", sa.String(64), primary_key=True),
            sa.Column("model", sa.String(256), nullable=False, index=True),
            sa.Column("version", sa.String(32), nullable=False),
            sa.Column("endpoint", sa.String(32), nullable=False),
            sa.Column("request", sa.Text, nullable=False),
            sa.Column("response", sa.Text, nullable=False),
            sa.Column("latency_ms", sa.Float, nullable=False),
            sa.Column("created", sa.Float, nullable=False),
        )
        self.feedback_table = sa.Table(
            "adaptflow_feedback",
            meta,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column(
                "interaction_id",
                sa.String(64),
                sa.ForeignKey("adaptflow_interactions.id"),
                nullable=False,
                index=True,
            ),
            sa.Column("rating", sa.String(8)),
            sa.Column("correction", sa.Text),
            sa.Column("preferred", sa.Integer),
            sa.Column("created", sa.Float, nullable=False),
        )
        try:
            if url.startswith("sqlite"):
                with self.engine.begin() as conn:
                    conn.exec_driver_sql("PRAGMA journal_mode=WAL")
            meta.create_all(self.engine)
        except Exception as exc:
            where = self.engine.url.render_as_string(hide_password=True)
            raise ServiceError(f"interaction store at {where} is not reachable: {exc}") from None

    def log(
        self,
        id: str,
        model: str,
        version: str,
        endpoint: str,
        request: dict[str, Any],
        response: dict[str, Any],
        latency_ms: float,
    ) -> None:
        """Record one answered request (its texts redacted first)."""
        row = {
            "id": id,
            "model": model,
            "version": version,
            "endpoint": endpoint,
            "request": json.dumps(_redact_value(request, self.redact), ensure_ascii=False),
            "response": json.dumps(_redact_value(response, self.redact), ensure_ascii=False),
            "latency_ms": latency_ms,
            "created": time.time(),
        }
        with self.engine.begin() as conn:
            conn.execute(self.interactions.insert(), row)

    def get(self, id: str) -> Interaction | None:
        """The interaction ``id``, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(
                self.interactions.select().where(self.interactions.c.id == id)
            ).first()
        return None if row is None else _interaction(row._mapping)

    def add_feedback(
        self,
        interaction_id: str,
        rating: str | None = None,
        correction: str | None = None,
        preferred: int | None = None,
    ) -> Feedback:
        """Record feedback on an interaction.

        Raises:
            DataError: When the interaction does not exist, the feedback says nothing, the
                rating is not ``up``/``down``, or ``preferred`` names no choice it had.
        """
        if rating is None and correction is None and preferred is None:
            raise DataError("feedback needs at least one of: rating, correction, preferred")
        if rating is not None and rating not in RATINGS:
            raise DataError(f"rating must be 'up' or 'down', got {rating!r}")
        if correction is not None and not correction.strip():
            raise DataError("correction is empty")
        found = self.get(interaction_id)
        if found is None:
            raise DataError(f"no interaction with id '{interaction_id}'")
        if preferred is not None:
            choices = len(found.response.get("choices", []))
            if not 0 <= preferred < choices:
                raise DataError(
                    f"preferred must name one of the interaction's {choices} choice(s) "
                    f"(0..{choices - 1}), got {preferred}"
                )
        feedback = Feedback(
            interaction_id,
            rating,
            None if correction is None else self.redact(correction),
            preferred,
            time.time(),
        )
        with self.engine.begin() as conn:
            conn.execute(
                self.feedback_table.insert(),
                {
                    "interaction_id": feedback.interaction_id,
                    "rating": feedback.rating,
                    "correction": feedback.correction,
                    "preferred": feedback.preferred,
                    "created": feedback.created,
                },
            )
        return feedback

    def iter_interactions(self, model: str) -> Iterator[Interaction]:
        """Every interaction of registered model ``model``, oldest first."""
        table = self.interactions
        query = table.select().where(table.c.model == model).order_by(table.c.created, table.c.id)
        with self.engine.connect() as conn:
            for row in conn.execute(query):
                yield _interaction(row._mapping)

    def feedback_of(self, model: str) -> list[Feedback]:
        """Every piece of feedback on ``model``'s interactions, oldest first."""
        fb, it = self.feedback_table, self.interactions
        query = (
            fb.select()
            .join(it, fb.c.interaction_id == it.c.id)
            .where(it.c.model == model)
            .order_by(fb.c.created, fb.c.id)
        )
        with self.engine.connect() as conn:
            return [
                Feedback(r.interaction_id, r.rating, r.correction, r.preferred, float(r.created))
                for r in conn.execute(query)
            ]

    def dispose(self) -> None:
        """Close the connection pool."""
        self.engine.dispose()


def _interaction(row: Any) -> Interaction:
    return Interaction(
        row["id"],
        row["model"],
        row["version"],
        row["endpoint"],
        json.loads(row["request"]),
        json.loads(row["response"]),
        float(row["latency_ms"]),
        float(row["created"]),
    )
