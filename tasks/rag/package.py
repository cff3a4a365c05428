"""The ``rag`` method: index the knowledge and package the retriever (scoring: ``score.py``).

A RAG candidate is a *package* like every other method's: a folder with ``adaptflow_model.json``
(kind ``rag-retriever``) naming the embedder, the Chroma collection and its index version (the
DVC hash of the index manifest), the retriever settings, the prompt template and the generator
(``None``, or the model that answers from the passages), plus a copy of the manifest. The
vectors stay in Chroma (the persistent store under ``ADAPTFLOW_HOME``, or the
server at ``ADAPTFLOW_CHROMA_URL``); the package points at them.

``runtime.rag.RagRetriever`` is the one implementation of search behind evaluation
(``tasks/rag/score.py``), the baseline, the champion's re-scoring and ``predict`` (through
``registry/serving/rag_retriever.py``), so the numbers the gate compares are the numbers
serving gives.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from runtime.index import check_chroma, chroma_client, public_url
from runtime.rag import PROMPT_TEMPLATE
from tasks.curate.version import version_with_dvc
from tasks.rag.index import IndexSettings, build_index, collection_name, open_collection

KIND = "rag-retriever"
RRF_K = 60
#: BM25's analyzer for new packages (``runtime.retrieve.LexicalAnalyzer``).
ANALYZER = "code"


def generator_settings(retrieval: dict[str, Any]) -> dict[str, Any] | None:
    """The package's ``generator`` entry of a spec's ``retrieval`` block (None: no generator)."""
    if not retrieval.get("generator"):
        return None
    return {"model": retrieval["generator"], "max_new_tokens": int(retrieval["max_new_tokens"])}


def index_settings(embedder: str, retrieval: dict[str, Any]) -> IndexSettings:
    """The index settings of a spec's ``base_model`` and ``retrieval`` block."""
    return IndexSettings(embedder, retrieval["chunk_tokens"], retrieval["overlap"])


def index_knowledge(
    name: str,
    knowledge: Path,
    embedder: str,
    retrieval: dict[str, Any],
    home: Path,
    chroma_url: str | None,
    allow_pickle: bool = False,
) -> dict[str, Any]:
    """Bring the spec's collection in line with ``knowledge`` and version its manifest.

    Args:
        name: The spec's name.
        knowledge: The knowledge folder.
        embedder: The sentence-transformers model (catalogue alias, path or hub id).
        retrieval: The spec's ``retrieval`` block (``chunk_tokens``, ``overlap`` used here).
        home: ``ADAPTFLOW_HOME`` (Chroma's persistent store, the manifests, the DVC repo).
        chroma_url: A Chroma server to use instead of the persistent store.
        allow_pickle: The spec's flag: the embedder may load from pickle-based weights.

    Returns:
        The ``IndexResult`` as a dict plus ``index_version`` (DVC hash of the manifest folder),
        ``settings`` and where the collection lives (``chroma_url`` / ``chroma_path``).
    """
    from runtime.loading import load_encoder

    settings = index_settings(embedder, retrieval)
    collection = collection_name(name, settings)
    folder = home / "indexes" / collection
    if chroma_url:
        check_chroma(chroma_url)  # one clear message, not a client error deep in indexing
    client = chroma_client(chroma_url, home / "chroma")
    encoder = load_encoder(embedder, allow_pickle)
    result = build_index(
        knowledge, open_collection(client, collection), encoder, settings, folder / "manifest.json"
    )
    return asdict(result) | {
        "index_version": version_with_dvc(folder, home),
        "settings": asdict(settings),
        # without user info: the manifest is uploaded to MLflow (the environment keeps it)
        "chroma_url": public_url(chroma_url) if chroma_url else None,
        "chroma_path": None if chroma_url else str(home / "chroma"),
        "embedder_params": sum(p.numel() for p in encoder.parameters()),
        "allow_pickle": allow_pickle,
    }


def write_package(out: Path, index: dict[str, Any], retrieval: dict[str, Any]) -> Path:
    """Write the RAG package for an index built by ``index_knowledge``."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copy(index["manifest"], out / "index_manifest.json")
    manifest = {
        "kind": KIND,
        "embedder": index["settings"]["embedder"],
        "allow_pickle": index.get("allow_pickle", False),
        "index": {
            "collection": index["collection"],
            "version": index["index_version"],
            "chunks": index["chunks"],
            "settings": index["settings"],
            "chroma_url": index["chroma_url"],
            "chroma_path": index["chroma_path"],
        },
        "retrieval": {
            "mode": retrieval["mode"],
            "k": retrieval["k"],
            "candidates": retrieval["candidates"],
            "rrf_k": RRF_K,
            "fusion": retrieval["fusion"],
            "lexical_weight": retrieval["lexical_weight"],
            "analyzer": ANALYZER,
            "reranker": retrieval["reranker"],
            "rerank_depth": retrieval["rerank_depth"],
            "per_source": retrieval["per_source"],
        },
        "prompt_template": PROMPT_TEMPLATE,
        "generator": generator_settings(retrieval),
    }
    (out / "adaptflow_model.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return out


def build_rag(
    name: str,
    knowledge: Path,
    embedder: str,
    retrieval: dict[str, Any],
    home: Path,
    chroma_url: str | None,
    out: Path,
    allow_pickle: bool = False,
) -> dict[str, Any]:
    """The ``rag`` recipe: index (incrementally), then package; returns what it cost.

    Returns:
        ``package_dir``, ``index`` (counts, version, seconds), ``trainable_params`` (0),
        ``total_params`` (the embedder's) and ``train_seconds`` (indexing time).
    """
    started = time.perf_counter()
    index = index_knowledge(name, knowledge, embedder, retrieval, home, chroma_url, allow_pickle)
    package = write_package(out, index, retrieval)
    return {
        "package_dir": str(package),
        "index": {
            k: v for k, v in index.items() if k not in ("ingest", "settings", "allow_pickle")
        },
        "trainable_params": 0,
        "total_params": index["embedder_params"],
        "train_seconds": time.perf_counter() - started,
    }


index_knowledge_task = task(name="index_knowledge", cache_policy=NO_CACHE)(index_knowledge)
build_rag_task = task(name="index_corpus", cache_policy=NO_CACHE)(build_rag)
