"""The Chroma client a RAG package searches through, and paged reads of a collection.

Building and refreshing the index is ``tasks/rag/index.py``.
"""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse, urlunparse

from adaptflow.errors import ServiceError, SettingsError

#: Chroma's liveness endpoint, under the server's base URL.
HEARTBEAT = "/api/v2/heartbeat"


def server_address(chroma_url: str) -> tuple[str, dict[str, str]]:
    """``(base URL, headers)`` of a Chroma server URL such as ``https://user:pw@host/chroma``.

    The base URL keeps the scheme, host, port (Chroma's 8000 when none is given over http, 443
    over https) and path (a server behind a reverse proxy at ``/chroma`` is reached there); user
    info becomes an HTTP Basic ``Authorization`` header, so the password never sits in a URL
    that a library could log.

    Raises:
        SettingsError: When the URL is not an http(s) URL with a host.
    """
    url = urlparse(chroma_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise SettingsError(
            f"ADAPTFLOW_CHROMA_URL '{public_url(chroma_url)}' is not an http(s) URL with a host "
            "(e.g. http://127.0.0.1:8000)"
        )
    host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
    port = url.port or (443 if url.scheme == "https" else 8000)
    base = urlunparse((url.scheme, f"{host}:{port}", url.path.rstrip("/"), "", "", ""))
    headers = {}
    if url.username is not None or url.password is not None:
        pair = f"{unquote(url.username or '')}:{unquote(url.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    return base, headers


def public_url(chroma_url: str) -> str:
    """``chroma_url`` without its user info: what may be shown, logged and stored."""
    url = urlparse(chroma_url)
    if "@" not in url.netloc:
        return chroma_url
    return urlunparse(url._replace(netloc=url.netloc.rpartition("@")[2]))


def check_chroma(chroma_url: str, timeout: float = 5.0) -> None:
    """Fail fast with one clear message when the Chroma server at ``chroma_url`` is down.

    Raises:
        ServiceError: The server does not answer its heartbeat (refused, timed out, HTTP error;
            a 401/403 says the credentials were refused).
    """
    base, headers = server_address(chroma_url)
    shown = public_url(chroma_url)
    hint = "Start it, or unset ADAPTFLOW_CHROMA_URL to use the embedded store."
    request = urllib.request.Request(base + HEARTBEAT, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ServiceError(
            f"Chroma server is not reachable at {shown} ({reason}). {hint}"
        ) from None
    if status in (401, 403):
        raise ServiceError(
            f"Chroma server at {shown} refused the credentials (HTTP {status}): put the right "
            "user and password in ADAPTFLOW_CHROMA_URL (http://USER:PASSWORD@host:port)"
        )
    if status >= 400:
        raise ServiceError(f"Chroma server at {shown} answered HTTP {status}. {hint}")


def chroma_client(chroma_url: str | None, chroma_dir: Path) -> Any:
    """A Chroma server client when ``chroma_url`` is set, else the persistent store.

    The server URL keeps its path and credentials (see ``server_address``).
    """
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    settings = ChromaSettings(anonymized_telemetry=False)
    if chroma_url:
        base, headers = server_address(chroma_url)
        return chromadb.HttpClient(
            host=base,
            ssl=base.startswith("https://"),
            headers=headers or None,
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
