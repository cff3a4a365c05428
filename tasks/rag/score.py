"""Scoring a RAG package on curated questions: retrieval metrics, generated answers, baseline.

The candidate, the no-training baseline (another search mode over the same index) and the
champion are all scored here, through ``runtime.rag.RagRetriever``, the code ``predict`` runs.
Building the package is ``tasks/rag/package.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from adaptflow.errors import DataError
from runtime.rag import RagRetriever
from runtime.text_metrics import groundedness
from tasks.curate.records import read_jsonl, write_jsonl
from tasks.evaluate.retrieval import answer_metrics, retrieval_metrics, source_rank

#: Chunks retrieved per question when scoring, so that source-level recall@10 and nDCG@10 see
#: enough distinct sources even when one document fills several of the top chunks.
EVAL_DEPTH = 50
ANSWERS_FILE = "rag_answers.jsonl"


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


evaluate_rag_task = task(name="evaluate_retrieval", cache_policy=NO_CACHE)(evaluate_rag)
