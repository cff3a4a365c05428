"""The ``rag`` method: index the knowledge, package the retriever, score it on the questions.

A RAG candidate is a *package* like every other method's: a folder with ``adaptflow_model.json``
(kind ``rag-retriever``) naming the embedder, the Chroma collection and its index version (the
DVC hash of the index manifest), the retriever settings, the prompt template and the generator
(``None``, or the model that answers from the passages), plus a copy of the manifest. The
vectors stay in Chroma (the persistent store under ``ADAPTFLOW_HOME``, or the
server at ``ADAPTFLOW_CHROMA_URL``); the package points at them.

``runtime.rag.RagRetriever`` is the one implementation of search behind evaluation, the
baseline, the champion's re-scoring and ``predict`` (through
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

from adaptflow.errors import DataError
from runtime.index import check_chroma, chroma_client, public_url
from runtime.rag import PROMPT_TEMPLATE, RagRetriever
from runtime.text_metrics import groundedness
from tasks.curate.records import read_jsonl, write_jsonl
from tasks.curate.version import version_with_dvc
from tasks.evaluate.retrieval import answer_metrics, retrieval_metrics, source_rank
from tasks.rag.index import IndexSettings, build_index, collection_name, open_collection

KIND = "rag-retriever"
#: Chunks retrieved per question when scoring, so that source-level recall@10 and nDCG@10 see
#: enough distinct sources even when one document fills several of the top chunks.
EVAL_DEPTH = 50
RRF_K = 60
#: BM25's analyzer for new packages (``runtime.retrieve.LexicalAnalyzer``).
ANALYZER = "code"
ANSWERS_FILE = "rag_answers.jsonl"


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


def score_answers(rag: RagRetriever, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Generate an answer per question, as ``predict`` does, and score the answers.

    Returns:
        ``metrics`` (``groundedness``; ``answer_exact_match`` and ``answer_token_f1`` when
        rows carry a reference ``answer``) and ``answers``: per question its id, question,
        retrieved ``sources``, the ``passages`` (rank, source, text) the prompt held, the
        ``answer``, the ``reference`` and the answer's ``groundedness`` in those passages.
    """
    questions = [row["question"] for row in rows]
    hits = rag.search_many(questions)
    answered = rag.answer(questions, hits)
    contexts = ["\n\n".join(h.text for h in used) for _, used in answered]
    references = [row.get("answer") for row in rows]
    metrics = answer_metrics([a for a, _ in answered], contexts, references)
    records = [
        {"id": row["id"], "question": row["question"], "sources": [h.source for h in found],
         "passages": [{"rank": n, "source": h.source, "text": h.text}
                      for n, h in enumerate(used, start=1)],
         "answer": answer, "reference": row.get("answer"),
         "groundedness": groundedness(answer, context)}
        for row, found, (answer, used), context in zip(rows, hits, answered, contexts, strict=True)
    ]  # fmt: skip
    return {"metrics": metrics, "answers": records}


def score_retriever(rag: RagRetriever, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Retrieval metrics of ``rag`` on curated question rows, and the per-question ranks.

    With a generator in the package, the answer metrics of ``score_answers`` join the metrics
    and its per-question records come back as ``answers``.
    """
    if not rows:
        raise DataError("no questions to evaluate")
    hits = rag.search_many([row["question"] for row in rows], EVAL_DEPTH)
    rankings = [[h.source for h in found] for found in hits]
    examples = [
        {"id": row["id"], "question": row["question"], "source": row["source"],
         "rank": source_rank(ranked, row["source"]), "top_sources": list(dict.fromkeys(ranked))[:5]}
        for row, ranked in zip(rows, rankings, strict=True)
    ]  # fmt: skip
    scored: dict[str, Any] = {
        "metrics": retrieval_metrics(rankings, [row["source"] for row in rows]),
        "examples": examples,
    }
    if rag.generator_settings is not None:
        answered = score_answers(rag, rows)
        scored["metrics"] |= answered["metrics"]
        scored["answers"] = answered["answers"]
    return scored


def evaluate_rag(
    package_dir: Path, questions_file: Path, out_dir: Path, mode: str | None = None
) -> dict[str, Any]:
    """Score a RAG package on the questions; writes the per-question ranks.

    Args:
        package_dir: The candidate's package.
        questions_file: Curated questions (``questions.jsonl``).
        out_dir: Where ``eval_examples.jsonl`` (or ``baseline_<mode>.jsonl``) goes.
        mode: Score with another search mode over the same index (the baseline).

    Returns:
        ``metrics``, ``method`` (the mode that was scored), ``eval_examples`` (path) and
        ``artifacts``: the generated answers (``rag_answers.jsonl``) when there is a generator.
    """
    rag = RagRetriever(package_dir, mode)
    scored = score_retriever(rag, read_jsonl(questions_file))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ("eval_examples.jsonl" if mode is None else f"baseline_{mode}.jsonl")
    write_jsonl(path, scored["examples"])
    artifacts = []
    if "answers" in scored:
        answers = out_dir / (ANSWERS_FILE if mode is None else f"baseline_{mode}_answers.jsonl")
        write_jsonl(answers, scored["answers"])
        artifacts.append(str(answers))
    return {"metrics": scored["metrics"], "method": rag.mode, "eval_examples": str(path),
            "artifacts": artifacts}  # fmt: skip


def baseline_mode(mode: str) -> str:
    """The plain search a ``mode`` must beat: keyword search (BM25), or dense for BM25 itself."""
    return "dense" if mode == "bm25" else "bm25"


index_knowledge_task = task(name="index_knowledge", cache_policy=NO_CACHE)(index_knowledge)
build_rag_task = task(name="index_corpus", cache_policy=NO_CACHE)(build_rag)
evaluate_rag_task = task(name="evaluate_retrieval", cache_policy=NO_CACHE)(evaluate_rag)
