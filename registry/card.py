"""Model cards: a Markdown page per registered version."""

from __future__ import annotations

from typing import Any


def _metric_rows(metrics: dict[str, float], baseline: dict[str, float] | None) -> list[str]:
    rows = ["| metric | candidate | no-training baseline |", "|---|--:|--:|"]
    for key in sorted(metrics):
        base = f"{baseline[key]:.4f}" if baseline and key in baseline else "–"
        rows.append(f"| {key} | {metrics[key]:.4f} | {base} |")
    return rows


def _task_limit(task: str, generation: dict[str, Any] | None = None) -> str:
    if generation and generation["temperature"] > 0:
        return (
            "- Answers are sampled: the scores are one seeded draw, other draws differ; lexical "
            "metrics (EM, F1, ROUGE) miss paraphrases."
        )
    if task == "classification":
        return "- Labels outside the training label set can never be predicted."
    if task == "language-modeling":
        return (
            "- Domain perplexity measures fit to the domain's text, not usefulness on a task; "
            "continue with SFT for one."
        )
    return "- Answers are greedy generations; lexical metrics (EM, F1, ROUGE) miss paraphrases."


def _forgetting_rows(report: dict[str, Any] | None) -> list[str]:
    if not report or not report.get("measured"):
        return []
    return [
        "## Forgetting (held-out general text, base model → candidate)",
        "| measure | before | after |",
        "|---|--:|--:|",
        f"| perplexity | {report['general_perplexity_before']:.3f} | "
        f"{report['general_perplexity_after']:.3f} |",
        f"| next-token accuracy | {report['general_accuracy_before']:.4f} | "
        f"{report['general_accuracy_after']:.4f} |",
        f"- Perplexity change {report['perplexity_increase']:+.1%}; allowed "
        f"{report['max_increase']:+.1%}: **{'passed' if report['passed'] else 'failed'}** "
        f"({report['check_texts']} general texts, none of them replayed in training).",
        "",
    ]


def _generation_rows(generation: dict[str, Any] | None) -> list[str]:
    """How a generative version answers by default (what was scored and is served)."""
    if not generation:
        return []
    if generation["temperature"] > 0:
        decoding = (
            f"sampled at temperature {generation['temperature']}, top_p {generation['top_p']} "
            f"(the evaluation's draw seeded with {generation['seed']})"
        )
    else:
        decoding = "greedy"
    return [
        "## Generation (scored by the gate; served unless a request sets its own)",
        f"- Decoding: {decoding}; repetition penalty {generation['repetition_penalty']}; at "
        f"most {generation['max_new_tokens']} new tokens",
        "",
    ]


def _choice_rows(choice: dict[str, Any] | None) -> list[str]:
    """What was chosen on validation, on what, and why (empty when nothing was)."""
    if not choice:
        return []
    chosen = ", ".join(f"{k} = {v}" for k, v in choice["chosen"].items()) or "the defaults"
    return [
        "## Settings chosen on validation",
        f"- Chosen: {chosen}; {choice['reason']}.",
        "- The validation part is never scored by the evaluation below.",
        "",
    ]


def render_model_card(facts: dict[str, Any]) -> str:
    """Render the model card for one candidate.

    Args:
        facts: ``name``, ``task``, ``method``, ``base_model``, ``target`` (metric, min),
            ``needs``, ``data`` (paths), ``curation`` (summary), ``metrics``, ``baseline``,
            ``trainable_params``, ``total_params``, ``gate`` (reasons), ``git_commit``,
            ``flow_run_id``, ``mlflow_run_id``; a generative version's ``generation``
            (``temperature``, ``top_p``, ``max_new_tokens``, ``repetition_penalty``, ``seed``).

    Returns:
        Markdown text.
    """
    if facts["task"] == "retrieval-qa":
        return _rag_card(facts)
    lower = facts["target"]["metric"] == "perplexity"
    cur = facts["curation"]
    target = facts["target"]
    needs = ", ".join(k for k, v in facts.get("needs", {}).items() if v is True) or "none stated"
    share = 100 * facts["trainable_params"] / max(1, facts["total_params"])
    lines = [
        f"# {facts['name']} — model card",
        "",
        "## Intended use",
        f"- Task: **{facts['task']}**"
        + (f", labels: {', '.join(cur['labels'])}" if cur.get("labels") else ""),
        f"- Success metric: `{target['metric']}`"
        + (
            f", target {'≤' if lower else '≥'} {target['min']}"
            if target.get("min") is not None
            else ""
        ),
        f"- Needs declared in the spec: {needs}",
        "- Inputs should resemble the training data (language, length, domain); see limits.",
        "",
        "## Method",
        f"- Adaptation: **{facts['method']}** on base model `{facts['base_model']}`",
        f"- Trainable parameters: {facts['trainable_params']:,} of {facts['total_params']:,}"
        f" ({share:.2f}%)",
        "",
        *_generation_rows(facts.get("generation")),
        "## Data provenance",
        f"- Training source: `{facts['data'].get('train')}`",
        f"- Eval source: `{facts['data'].get('eval') or 'held-out split of the training source'}`",
        f"- Curated data DVC hash: `{cur['data_hash']}`; " + _fetch_hint(facts["name"], cur),
        f"- Records: input {cur['input']}, kept {cur['kept']} (train {cur['train_examples']}, "
        f"eval {cur['eval_examples']}), dropped {sum(cur.get('dropped', {}).values())} "
        f"({', '.join(f'{k}: {v}' for k, v in cur.get('dropped', {}).items()) or 'none'}), "
        f"quarantined {cur['quarantined']}",
        f"- Code: git commit `{facts.get('git_commit') or 'unknown'}`; Prefect flow run "
        f"`{facts.get('flow_run_id') or 'none'}`; MLflow run `{facts['mlflow_run_id']}`",
        "",
        *_choice_rows(facts.get("choice")),
        "## Evaluation (held-out split)",
        *_metric_rows(facts["metrics"], facts.get("baseline")),
        "",
        *_forgetting_rows(facts.get("forgetting")),
        *_compression_rows(facts.get("compression")),
        "## Promotion gate",
        *[f"- {reason}" for reason in facts.get("gate", [])],
        "",
        "## Known limits",
        f"- Evaluated on {cur['eval_examples']} examples; small eval sets give wide error bars.",
        _task_limit(facts["task"], facts.get("generation")),
        "- Inherits the base model's biases and its language coverage.",
        "",
    ]
    return "\n".join(lines)


def _rag_card(facts: dict[str, Any]) -> str:
    """The card of a RAG package: what it searches, how, and how well."""
    cur, target, index, retrieval = (
        facts["curation"],
        facts["target"],
        facts["index"],
        facts["retrieval"],
    )
    knowledge = cur["knowledge"]
    needs = ", ".join(k for k, v in facts.get("needs", {}).items() if v is True) or "none stated"
    lines = [
        f"# {facts['name']} — model card",
        "",
        "## Intended use",
        "- Task: **retrieval-qa**: a question in, ranked passages with their sources out, and a",
        "  prompt that fences the passages as data for a generator.",
        f"- Success metric: `{target['metric']}`"
        + (f", target ≥ {target['min']}" if target.get("min") is not None else ""),
        f"- Needs declared in the spec: {needs}",
        "",
        "## Method",
        f"- Adaptation: **rag**, embedder `{facts['base_model']}` "
        f"({facts['total_params']:,} parameters, none trained)",
        f"- Search: {retrieval['mode']}"
        + (
            f" ({retrieval['fusion']} fusion, BM25 weight {retrieval['lexical_weight']})"
            if retrieval["mode"] == "hybrid" and retrieval.get("fusion") == "convex"
            else " (reciprocal rank fusion)"
            if retrieval["mode"] == "hybrid"
            else ""
        )
        + (
            f", top {retrieval['rerank_depth']} reranked by `{retrieval['reranker']}`"
            if retrieval.get("reranker")
            else ""
        )
        + f", top {retrieval['k']} passages"
        + (
            f" (at most {retrieval['per_source']} from one source)"
            if retrieval.get("per_source")
            else ""
        )
        + "; chunks of "
        f"{retrieval['chunk_tokens']} tokens with {retrieval['overlap']} overlap",
        f"- Index: Chroma collection `{index['collection']}`, {index['chunks']:,} chunks, "
        f"index version (DVC hash of the manifest) `{index['index_version']}`",
        "- Answers: "
        + (
            f"generated by `{retrieval['generator']}` (greedy, at most "
            f"{retrieval['max_new_tokens']} new tokens) from the fenced passages"
            if retrieval.get("generator")
            else "none generated (passages and prompt only)"
        ),
        "",
        "## Data provenance",
        f"- Knowledge: `{facts['data'].get('knowledge')}`: {knowledge['documents']} documents "
        f"indexed, {len(knowledge['skipped'])} skipped, {len(knowledge['flagged'])} flagged",
        f"- Questions: `{facts['data'].get('questions')}`: input {cur['input']}, kept "
        f"{cur['kept']}, dropped {sum(cur['dropped'].values())}, quarantined "
        f"{cur['quarantined']}",
        f"- Curated data DVC hash: `{cur['data_hash']}`",
        f"- Code: git commit `{facts.get('git_commit') or 'unknown'}`; Prefect flow run "
        f"`{facts.get('flow_run_id') or 'none'}`; MLflow run `{facts['mlflow_run_id']}`",
        "",
        *_choice_rows(facts.get("choice")),
        "## Evaluation (source-level, on the curated questions)",
        *_metric_rows(facts["metrics"], facts.get("baseline")),
        f"- Baseline: {facts.get('baseline_method')}",
        "",
        "## Promotion gate",
        *[f"- {reason}" for reason in facts.get("gate", [])],
        "",
        "## Known limits",
        f"- Evaluated on {(facts.get('choice') or {}).get('eval_questions', cur['kept'])} "
        "questions; small question sets give wide error bars.",
        "- Serves whatever the collection holds now: re-indexing refreshes the knowledge "
        "without a new version; the index version above is what was evaluated.",
        "- Flagged documents are still indexed; their text reaches a generator only fenced "
        "as data.",
        "",
    ]
    return "\n".join(lines)


def _fetch_hint(name: str, cur: dict[str, Any]) -> str:
    """How to get the exact curated files back (from the remote, or the user's repository)."""
    if cur.get("dvc_file"):  # data.version_in: project
        return (
            f"versioned in the project's DVC repository by `{cur['dvc_file']}` (commit it; "
            "`dvc pull` on that file restores these exact files)"
        )
    return (
        f"fetch these exact files with `adaptflow data pull models:/{name}/VERSION` (this "
        "version's number; from the DVC remote `ADAPTFLOW_DVC_REMOTE` they were pushed to)"
    )


def _compression_rows(report: dict[str, Any] | None) -> list[str]:
    """The compressed candidate next to its teacher: quality and serving cost (CPU)."""
    if not report:
        return []
    metric, ours, theirs = report["metric"], report["metrics"], report["teacher"]
    candidate = report["candidate_cost"] | {metric: report["candidate_metric"]}
    removed = report["removed_blocks"]
    if report.get("method") == "distill":
        how = (
            f"- Distilled: the student `{report['student']}` learned to imitate the teacher"
            + (f" (objective {report['objective']})" if report.get("objective") else "")
            + (
                f", on {report['unlabelled']:,} unlabelled inputs too"
                if report.get("unlabelled")
                else ""
            )
        )
    elif removed:
        how = f"- Removed blocks (the lowest Block Influence): {removed}"
    else:
        how = "- Removed blocks: none (the teacher's weights, quantized; nothing trained)"
    rows = [
        "## Compression (against the teacher, measured in this run on CPU)",
        how,
        *_quantization_rows(report.get("quantization")),
        "",
        "| | candidate | teacher |",
        "|---|---|---|",
        f"| quantize | {report.get('quantize') or 'none (fp32)'} | none (fp32) |",
    ]
    for key, fmt in ((metric, ".4f"), ("params", ",.0f"), ("size_mb", ".1f"),
                     ("latency_p50_ms", ".2f"), ("latency_p95_ms", ".2f"),
                     ("throughput", ".1f")):  # fmt: skip
        rows.append(f"| {key} | {candidate[key]:{fmt}} | {theirs[key]:{fmt}} |")
    rows += [
        "",
        f"- retained {ours['retained']:.3f} of the teacher's {metric}; speed-up "
        f"{ours['speedup']:.2f}× in examples per second (a fixed batch)",
        "",
    ]
    return rows


def _quantization_rows(quantization: dict[str, Any] | None) -> list[str]:
    """What an int8 candidate's quantization made 8-bit (``runtime.int8.quantize_int8``)."""
    if not quantization:
        return []
    total = quantization["params_int8"] + quantization["params_fp32"]
    return [
        f"- Quantized: {quantization['scheme']}; {quantization['linear_layers']} linear and "
        f"{quantization.get('embedding_layers', 0)} embedding layers, "
        f"{quantization['params_int8']:,} of {total:,} weights 8-bit; CPU inference only"
    ]
