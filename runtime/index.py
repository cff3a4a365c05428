"""The Chroma client a RAG package searches through, and paged reads of a collection.

Building and refreshing the index is ``tasks/rag/index.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse


def chroma_client(chroma_url: str | None, chroma_dir: Path) -> Any:
    """A Chroma server client when ``chroma_url`` is set, else the persistent store."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    settings = ChromaSettings(anonymized_telemetry=False)
    if chroma_url:
        url = urlparse(chroma_url)
        return chromadb.HttpClient(
            host=url.hostname or "localhost",
            port=url.port or (443 if url.scheme == "https" else 8000),
            ssl=url.scheme == "https",
            settings=settings,
        )
    chroma_dir.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(chroma_dir), settings=settings)


#: Rows per ``collection.get`` page: one call for a whole large collection fails in Chroma's
#: SQLite backend ("too many SQL variables", measured at 100k chunks).
PAGE = 5000


def read_all(collection: Any, include: list[str]) -> dict[str, list[Any]]:
    """Every row of ``collection`` (``ids`` plus the ``include`` fields), read page by page."""
    rows: dict[str, list[Any]] = {"ids": [], **{field: [] for field in include}}
    offset = 0
    while True:
        page = collection.get(include=include, limit=PAGE, offset=offset)
        for field in rows:
            rows[field] += page[field]
        if len(page["ids"]) < PAGE:
            return rows
        offset += PAGE
