"""Incremental Chroma indexing of a knowledge folder.

Chunk ids are content hashes (``tasks.rag.chunk.chunk_id``), so every write is an idempotent
upsert. Each run reconciles the collection with the folder:

- files whose bytes did not change (per the index manifest) are not re-read or re-chunked;
- chunks already in the collection are never re-embedded (a changed file embeds only its new
  chunks; its unchanged ones just get their position updated);
- chunks no current file produces (a deleted file's, an edited paragraph's old version) are
  deleted.

The manifest is written last and atomically, and the decision of what to embed is taken
against the collection itself, so a run killed half-way simply continues on the next run and
ends with exactly the unique chunks. The manifest (settings, per-file hash and chunk ids) is
what DVC versions: its hash names the index version on the MLflow run and registered version.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from runtime.index import read_all
from tasks.rag.chunk import Chunk, Tokenizer, chunk_sections
from tasks.rag.ingest import ingest

#: Bumped whenever ingest or chunking would cut the same file differently, so that indexes built
#: by an older adaptflow are rebuilt rather than silently mixed with new chunks.
CHUNKER_VERSION = 3  # 3: chunks are indexed with their heading path in front
#: Chunks embedded and written per batch (a kill loses at most one batch of work).
BATCH = 256


@dataclass(frozen=True)
class IndexSettings:
    """What shapes the index: a change to any of these rebuilds it from scratch."""

    embedder: str
    chunk_tokens: int = 200
    overlap: int = 40
    chunker: int = CHUNKER_VERSION


@dataclass
class IndexResult:
    """What an indexing run did."""

    collection: str
    chunks: int  # in the collection afterwards
    embedded: int  # chunks embedded by this run
    deleted: int
    updated: int  # chunks kept whose metadata (position) changed
    files: dict[str, int]  # unchanged / changed / added / removed file counts
    seconds: float
    manifest: str
    ingest: dict[str, Any]


def collection_name(name: str, settings: IndexSettings) -> str:
    """The Chroma collection of a spec's index with ``settings``.

    The settings' hash is part of the name, so a run with another embedder or chunking builds
    its own collection and never rewrites the one a registered version serves from; a run with
    the same settings refreshes that collection in place (that is what re-indexing is for).
    Chroma allows [a-zA-Z0-9._-], 3-512 characters; spec names are within that.
    """
    shaped_by = json.dumps(asdict(settings), sort_keys=True).encode()
    return f"adaptflow-{name}-{hashlib.sha256(shaped_by).hexdigest()[:8]}"


def open_collection(client: Any, name: str) -> Any:
    """The collection, created on first use with cosine distance and no embedding function."""
    return client.get_or_create_collection(
        name, embedding_function=None, configuration={"hnsw": {"space": "cosine"}}
    )


def _read_manifest(path: Path, settings: IndexSettings) -> dict[str, Any]:
    if not path.exists():
        return {}
    manifest = json.loads(path.read_text())
    return manifest if manifest.get("settings") == asdict(settings) else {}


def _all_ids(collection: Any) -> set[str]:
    return set(read_all(collection, [])["ids"])


def _progress(total: int, label: str) -> Any:
    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=True)
    progress = Progress(console=console, disable=not sys.stderr.isatty() or total == 0)
    return progress, progress.add_task(label, total=total)


def build_index(
    knowledge: Path,
    collection: Any,
    encoder: Any,
    settings: IndexSettings,
    manifest_path: Path,
) -> IndexResult:
    """Bring ``collection`` in line with ``knowledge`` (see the module docstring).

    Args:
        knowledge: The knowledge folder.
        collection: A Chroma collection (``open_collection``).
        encoder: A sentence-transformers model (its tokenizer sizes the chunks).
        settings: Embedder reference and chunking; a change rebuilds the collection.
        manifest_path: Where the index manifest lives (read, then rewritten).
    """
    started = time.perf_counter()
    old = _read_manifest(manifest_path, settings)
    # The collection remembers the settings its vectors were made with; other settings (another
    # embedder, other chunks) make every stored chunk useless, so it starts over.
    shaped_by = json.dumps(asdict(settings), sort_keys=True)
    if (collection.metadata or {}).get("adaptflow_settings") != shaped_by:
        if collection.count():
            collection.delete(ids=sorted(_all_ids(collection)))
        collection.modify(metadata={"adaptflow_settings": shaped_by})
        old = {}
    report = ingest(knowledge)
    existing = _all_ids(collection)
    tokenizer = Tokenizer.of(encoder.tokenizer)
    files: dict[str, dict[str, Any]] = {}
    fresh: list[Chunk] = []  # chunks of added or changed files
    counts = {"unchanged": 0, "changed": 0, "added": 0, "removed": 0}
    for document in report.documents:
        before = old.get("files", {}).get(document.source)
        if before and before["sha256"] == document.sha256 and existing >= set(before["chunks"]):
            files[document.source] = before
            counts["unchanged"] += 1
            continue
        chunks = chunk_sections(
            document.sections, document.source, tokenizer, settings.chunk_tokens, settings.overlap
        )
        files[document.source] = {"sha256": document.sha256, "chunks": [c.id for c in chunks]}
        fresh += chunks
        counts["changed" if before else "added"] += 1
    counts["removed"] = len(set(old.get("files", {})) - set(files))
    wanted = {cid for entry in files.values() for cid in entry["chunks"]}
    stale = sorted(existing - wanted)
    for start in range(0, len(stale), BATCH * 16):
        collection.delete(ids=stale[start : start + BATCH * 16])
    # Similar token counts side by side, so each encode batch pads little: sentence-transformers
    # sorts only within one call (by characters), and our calls are per upsert batch. Counting
    # is one batched fast-tokenizer call. Ids are content hashes: the order is free.
    new = [c for c in fresh if c.id not in existing]
    lengths = tokenizer.count([c.indexed_text for c in new]) if new else []
    to_embed = [c for _, c in sorted(zip(lengths, new, strict=True), key=lambda pair: pair[0])]
    moved = [c for c in fresh if c.id in existing]
    progress, bar = _progress(len(to_embed), "embedding chunks")
    with progress:
        for start in range(0, len(to_embed), BATCH):
            batch = to_embed[start : start + BATCH]
            vectors = encoder.encode(
                [c.indexed_text for c in batch], batch_size=64, normalize_embeddings=True
            )
            collection.upsert(
                ids=[c.id for c in batch],
                embeddings=vectors.tolist(),
                documents=[c.indexed_text for c in batch],
                metadatas=[c.metadata for c in batch],
            )
            progress.advance(bar, len(batch))
    for start in range(0, len(moved), BATCH * 16):
        batch = moved[start : start + BATCH * 16]
        collection.update(ids=[c.id for c in batch], metadatas=[c.metadata for c in batch])
    manifest = {
        "settings": asdict(settings),
        "collection": collection.name,
        "chunks": len(wanted),
        "files": dict(sorted(files.items())),
    }
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = manifest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    tmp.replace(manifest_path)
    return IndexResult(
        collection=collection.name,
        chunks=collection.count(),
        embedded=len(to_embed),
        deleted=len(stale),
        updated=len(moved),
        files=counts,
        seconds=time.perf_counter() - started,
        manifest=str(manifest_path),
        ingest=report.as_dict(),
    )
