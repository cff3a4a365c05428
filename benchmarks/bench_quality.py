"""Benchmark: adaptflow with no ``train`` or ``retrieval`` block against bare scripts (issue 18).

On fresh real sets nobody here tuned on (``benchmarks/quality/``, built and committed before
anything ran on them), adaptflow's result sits next to the scripts a practitioner would write
in twenty lines, on the same splits with the same models, in one table:

- classification (macro-F1 on the curated eval split adaptflow made; the bare scripts read the
  same ``train.jsonl`` / ``eval.jsonl``):
  - ``adaptflow``: ``adaptflow run`` with ``method: lora`` and no ``train`` block, so the
    settings are chosen on a validation part of the training split (``search.auto``);
  - ``adaptflow fixed``: the same with ``search: {auto: false}``: the fixed defaults alone;
  - ``adaptflow old``: the defaults before issue 18 (3 epochs, learning rate 5e-4, r 8 on
    peft's default modules), the "default run" the wall-time target compares with;
  - ``icl``: adaptflow's nearest-neighbour vote (the run's no-training baseline);
  - bare: TF-IDF (word 1-2-grams, sublinear tf) + logistic regression; kNN (k = 5, majority)
    over all-MiniLM-L6-v2 embeddings; logistic regression on those embeddings (C = 10); a
    plain peft LoRA script (r 16, alpha 32, all linear layers, learning rate 2e-3, 3 epochs,
    batch 16, transformers' Trainer), the settings the issue quotes as a common recipe.
- retrieval (recall@1, recall@5 and MRR per source document, on the questions adaptflow's
  gate scored: the validation share that chose the settings is never among them):
  - ``adaptflow``: ``adaptflow run`` with ``method: rag`` and no ``retrieval`` block;
  - ``adaptflow fixed``: the package of a ``search: {auto: false}`` run scored on the same
    questions;
  - bare: MiniLM over 200-word windows with a 150-word stride, cosine, the first distinct pages
    (what the issue's anchor did); BM25 (bm25s, its default tokenizer) over whole pages.
- curation (language modelling over a folder of real documents): kept and dropped per rule
  with today's defaults, next to Gopher's web limits and GPT-3's any-shared-8-gram
  decontamination (set through the spec, so the same code runs both); and how many documents
  with no near-duplicate anywhere in the corpus (exact Jaccard of word 5-grams < 0.8 to every
  other document) were dropped: the goal is at most 5%.

- generation (summarization on the tiny T5 that adaptflow builds, full fine-tuning, ROUGE-L,
  token F1 and exact match on the curated eval split):
  - ``adaptflow``: ``adaptflow run`` with no ``train`` block but the lengths (``max_length``
    128, ``max_new_tokens`` 32), so the epochs are chosen on validation answers;
  - ``adaptflow fixed``: ``search: {auto: false}`` (3 epochs); ``untrained base``: the
    run's baseline;
  - bare: a plain transformers fine-tune of the same model (raw text in, 3 epochs at 1e-3,
    batch 16, greedy answers), and the lead baseline (the text's first six words).

Frozen sets (``gcloud-groups``, ``linux-syscalls``, ``man3-libc``, ``debian-descriptions``)
run only with ``--frozen``:
judging them is a deliberate, final act (see ``benchmarks/quality/README.md``).

Usage (from the repository root; run it alone, ~1 h for everything on 2 idle cores)::

    .venv/bin/python benchmarks/bench_quality.py                    # development sets
    .venv/bin/python benchmarks/bench_quality.py --frozen           # and the frozen sets
    .venv/bin/python benchmarks/bench_quality.py --sets cmake-docs,man3-libc

Results: a table on stdout and ``benchmarks/results/quality.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
QUALITY = REPO_ROOT / "benchmarks" / "quality"
RESULTS_FILE = REPO_ROOT / "benchmarks" / "results" / "quality.json"

#: name -> (kind, role)
SETS: dict[str, tuple[str, str]] = {
    "man-sections": ("classification", "development"),
    "aws-services": ("classification", "development"),
    "gcloud-groups": ("classification", "frozen"),
    "cmake-docs": ("retrieval", "development"),
    "linux-syscalls": ("retrieval", "frozen"),
    "aws-examples": ("curation", "development"),
    "man3-libc": ("curation", "frozen"),
    "docstring-summaries": ("generation", "development"),
    "debian-descriptions": ("generation", "frozen"),
}
#: Where each generation set's pairs are (the development one is an example's data).
GENERATION_DATA = {
    "docstring-summaries": REPO_ROOT / "examples" / "docstring-summaries" / "data" / "pairs.jsonl",
    "debian-descriptions": QUALITY / "generation" / "debian-descriptions" / "pairs.jsonl",
}
#: Words the lead baseline copies from the start of the text (a summary's typical length).
LEAD_WORDS = 6
#: The encoder-classifier defaults before issue 18 (what a spec without a train block got).
OLD_TRAIN = {"epochs": 3, "learning_rate": 5e-4, "lora_r": 8, "lora_alpha": 16}
#: Gopher's web limits and GPT-3's decontamination, as spec settings over today's code.
OLD_CURATION = {
    "quality": {
        "min_words": 50,
        "max_mean_word_length": 10,
        "min_alpha_word_ratio": 0.8,
        "max_duplicate_line_ratio": 0.3,
        "max_duplicate_line_chars": None,
        "max_top_ngram_ratio": 0.2,
    },
    "decontaminate": {"min_share": 1e-9, "boilerplate": 0.999},
}
SEED = 42


def log(message: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def adaptflow(args: list[str], home: Path) -> tuple[dict[str, Any], float]:
    """``adaptflow ARGS --json`` in a subprocess on ``home``: (its JSON, wall seconds)."""
    env = os.environ | {"ADAPTFLOW_HOME": str(home), "PYTHONWARNINGS": "ignore"}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "adaptflow", *args, "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=4 * 3600,
    )
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 4):
        raise RuntimeError(f"adaptflow {' '.join(args)} failed ({done.returncode}):\n"
                           f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}")  # fmt: skip
    return json.loads(done.stdout), seconds


def write_spec(folder: Path, name: str, spec: dict[str, Any]) -> Path:
    """A spec file ``<name>.yaml`` in ``folder``."""
    import yaml

    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name} | spec, sort_keys=False))
    return path


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------
# classification
# --------------------------------------------------------------------------------------------


def macro_f1(truth: list[str], predicted: list[str]) -> float:
    """Macro-F1 over the eval labels, as adaptflow's evaluation computes it."""
    from tasks.evaluate.classification import classification_metrics

    return classification_metrics(truth, predicted)["f1_macro"]


def bare_tfidf(train: list[dict[str, Any]], evaluation: list[dict[str, Any]]) -> float:
    """TF-IDF word 1-2-grams + logistic regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    x = vectorizer.fit_transform([r["text"] for r in train])
    model = LogisticRegression(max_iter=2000).fit(x, [r["label"] for r in train])
    predicted = model.predict(vectorizer.transform([r["text"] for r in evaluation]))
    return macro_f1([r["label"] for r in evaluation], list(predicted))


def bare_embeddings(train: list[dict[str, Any]], evaluation: list[dict[str, Any]]) -> dict:
    """kNN (k = 5, majority) and logistic regression (C = 10) over MiniLM embeddings."""
    import numpy as np
    from sentence_transformers import SentenceTransformer
    from sklearn.linear_model import LogisticRegression

    from adaptflow.catalogue import resolve_base_model

    encoder = SentenceTransformer(resolve_base_model("minilm"), device="cpu")
    a = encoder.encode([r["text"] for r in train], normalize_embeddings=True)
    b = encoder.encode([r["text"] for r in evaluation], normalize_embeddings=True)
    labels = [r["label"] for r in train]
    nearest = np.argsort(-(b @ a.T), axis=1, kind="stable")[:, :5]
    knn = [Counter(labels[j] for j in row).most_common(1)[0][0] for row in nearest]
    probe = LogisticRegression(max_iter=2000, C=10).fit(a, labels).predict(b)
    truth = [r["label"] for r in evaluation]
    return {"knn": macro_f1(truth, knn), "embeddings+lr": macro_f1(truth, list(probe))}


def train_plainly(model: Any, rows: list[dict[str, Any]], collator: Any, rate: float) -> float:
    """The bare scripts' training: transformers' Trainer, 3 epochs, batch 16; its seconds."""
    from transformers import Trainer, TrainingArguments

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, num_train_epochs=3, learning_rate=rate,
                                 per_device_train_batch_size=16, seed=SEED, save_strategy="no",
                                 report_to="none", use_cpu=True, disable_tqdm=True)  # fmt: skip
        trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collator)
        started = time.perf_counter()
        trainer.train()
        return time.perf_counter() - started


def run_contender(name: str, label: str, spec: dict[str, Any], work: Path) -> tuple[dict, float]:
    """``adaptflow run`` of one contender's spec in its own home: (its JSON, wall seconds)."""
    log(f"{name}: {label}")
    home = work / name / label.replace(" ", "-")
    path = write_spec(work, f"q-{name}-{label.replace(' ', '-')}", spec)
    return adaptflow(["run", str(path)], home)


def bare_lora(train: list[dict[str, Any]], evaluation: list[dict[str, Any]]) -> dict:
    """A plain peft LoRA script with common settings; macro-F1 and training seconds."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        set_seed,
    )

    from adaptflow.catalogue import resolve_base_model

    set_seed(SEED)
    names = sorted({r["label"] for r in train})
    path = resolve_base_model("minilm")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(names))
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=16, lora_alpha=32, lora_dropout=0.1,
                        target_modules="all-linear")  # fmt: skip
    model = get_peft_model(model, config)
    encoded = tokenizer([r["text"] for r in train], truncation=True, max_length=128)
    rows = [
        {"input_ids": ids, "attention_mask": mask, "labels": names.index(r["label"])}
        for ids, mask, r in zip(encoded["input_ids"], encoded["attention_mask"], train, strict=True)
    ]
    seconds = train_plainly(model, rows, DataCollatorWithPadding(tokenizer), 2e-3)
    model.eval()
    predicted = []
    with torch.inference_mode():
        for start in range(0, len(evaluation), 64):
            texts = [r["text"] for r in evaluation[start : start + 64]]
            batch = tokenizer(
                texts, truncation=True, max_length=128, padding=True, return_tensors="pt"
            )
            predicted += [names[i] for i in model(**batch).logits.argmax(-1).tolist()]
    return {"f1": macro_f1([r["label"] for r in evaluation], predicted), "train_seconds": seconds}


def classification(name: str, work: Path) -> dict[str, Any]:
    """Every classification contender on one set."""
    data = QUALITY / "classification" / name / "data.jsonl"
    base = {"task": "classification", "base_model": "minilm", "method": "lora",
            "data": {"train": str(data), "id_field": "id"}, "seed": SEED}  # fmt: skip
    runs = {
        "adaptflow": base,
        "adaptflow fixed": base | {"search": {"auto": False}},
        "adaptflow old": base | {"search": {"auto": False}, "train": OLD_TRAIN},
    }
    out: dict[str, Any] = {"kind": "classification", "role": SETS[name][1], "runs": {}}
    for label, spec in runs.items():
        summary, seconds = run_contender(name, label, spec, work)
        out["runs"][label] = {
            "f1_macro": summary["metrics"]["f1_macro"],
            "wall_seconds": seconds,
            "train_seconds": summary["train"]["train_seconds"],
            "search": _search_brief(summary.get("search")),
        }
        if label == "adaptflow":
            out["runs"]["icl"] = {"f1_macro": summary["baseline"]["f1_macro"],
                                  "method": summary["baseline_method"]}  # fmt: skip
            curation = summary["curation"]
    train, evaluation = read_jsonl(curation["train_file"]), read_jsonl(curation["eval_file"])
    out["sizes"] = {"train": len(train), "eval": len(evaluation),
                    "labels": len({r["label"] for r in train})}  # fmt: skip
    log(f"{name}: bare scripts")
    bare = {"tf-idf+lr": bare_tfidf(train, evaluation), **bare_embeddings(train, evaluation)}
    lora = bare_lora(train, evaluation)
    bare["lora script"] = lora["f1"]
    out["bare"] = bare
    out["bare_lora_train_seconds"] = lora["train_seconds"]
    best = max(bare, key=bare.__getitem__)
    ours = out["runs"]["adaptflow"]["f1_macro"]
    out["best_bare"] = {"name": best, "f1_macro": bare[best]}
    out["wins"] = ours >= bare[best]
    old = out["runs"]["adaptflow old"]["wall_seconds"]
    out["wall_ratio_vs_old_default"] = out["runs"]["adaptflow"]["wall_seconds"] / old
    out["wall_ratio_vs_fixed"] = (
        out["runs"]["adaptflow"]["wall_seconds"] / out["runs"]["adaptflow fixed"]["wall_seconds"]
    )
    return out


def _search_brief(search: dict[str, Any] | None) -> dict[str, Any] | None:
    if not search:
        return None
    return {k: search.get(k) for k in ("reason", "chosen", "trials_brief") if k in search}


# --------------------------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------------------------


def bare_seq2seq(train: list[dict[str, Any]], evaluation: list[dict[str, Any]]) -> dict:
    """A plain transformers fine-tune of the same tiny T5 with common settings; its metrics.

    Raw text in, target out (no prompt format), 3 epochs at learning rate 1e-3 (a common T5
    recipe), batch 16, greedy answers of up to 32 tokens, scored by adaptflow's metrics.
    """
    import torch
    from transformers import (
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        set_seed,
    )

    from adaptflow.catalogue import resolve_base_model
    from runtime.text_metrics import generation_metrics

    set_seed(SEED)
    path = resolve_base_model("tiny-t5")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSeq2SeqLM.from_pretrained(path)
    rows = []
    for r in train:
        ids = tokenizer(r["text"], truncation=True, max_length=128)
        ids["labels"] = tokenizer(r["target"], truncation=True, max_length=64)["input_ids"]
        rows.append(dict(ids))
    seconds = train_plainly(model, rows, DataCollatorForSeq2Seq(tokenizer), 1e-3)
    model.eval()
    predicted: list[str] = []
    with torch.inference_mode():
        for start in range(0, len(evaluation), 32):
            texts = [r["text"] for r in evaluation[start : start + 32]]
            batch = tokenizer(texts, truncation=True, max_length=128, padding=True,
                              return_tensors="pt")  # fmt: skip
            out_ids = model.generate(**batch, max_new_tokens=32, do_sample=False)
            predicted += tokenizer.batch_decode(out_ids, skip_special_tokens=True)
    metrics = generation_metrics(predicted, [r["target"] for r in evaluation])
    return {"metrics": metrics, "train_seconds": seconds}


def lead_baseline(evaluation: list[dict[str, Any]]) -> dict[str, float]:
    """The classic lead baseline: the first ``LEAD_WORDS`` words of the text as the summary."""
    from runtime.text_metrics import generation_metrics

    predicted = [" ".join(r["text"].split()[:LEAD_WORDS]) for r in evaluation]
    metrics: dict[str, float] = generation_metrics(predicted, [r["target"] for r in evaluation])
    return metrics


def generation(name: str, work: Path) -> dict[str, Any]:
    """Summarization on the tiny T5, full fine-tuning with no ``train`` block but the lengths."""
    data = GENERATION_DATA[name]
    base = {"task": "summarization", "base_model": "tiny-t5", "method": "full",
            "data": {"train": str(data), "id_field": "id", "target_field": "summary"},
            "target": {"metric": "rougeL"}, "seed": SEED,
            "train": {"max_length": 128, "max_new_tokens": 32}}  # fmt: skip
    runs = {"adaptflow": base, "adaptflow fixed": base | {"search": {"auto": False}}}
    out: dict[str, Any] = {"kind": "generation", "role": SETS[name][1], "runs": {}}
    for label, spec in runs.items():
        summary, seconds = run_contender(name, label, spec, work)
        out["runs"][label] = {
            "metrics": summary["metrics"],
            "wall_seconds": seconds,
            "train_seconds": summary["train"]["train_seconds"],
            "search": _search_brief(summary.get("search")),
        }
        if label == "adaptflow":
            out["runs"]["untrained base"] = {"metrics": summary["baseline"]}
            curation = summary["curation"]
    train, evaluation = read_jsonl(curation["train_file"]), read_jsonl(curation["eval_file"])
    out["sizes"] = {"train": len(train), "eval": len(evaluation)}
    log(f"{name}: bare scripts")
    script = bare_seq2seq(train, evaluation)
    out["bare"] = {
        "seq2seq script": script["metrics"],
        f"lead-{LEAD_WORDS}": lead_baseline(evaluation),
    }
    out["bare_train_seconds"] = script["train_seconds"]
    ours = out["runs"]["adaptflow"]["metrics"]["rougeL"]
    best = max(out["bare"], key=lambda k: out["bare"][k]["rougeL"])
    out["best_bare"] = {"name": best, "rougeL": out["bare"][best]["rougeL"]}
    out["wins"] = ours >= out["bare"][best]["rougeL"]
    out["beats_fixed"] = ours >= out["runs"]["adaptflow fixed"]["metrics"]["rougeL"]
    out["wall_ratio_vs_fixed"] = (
        out["runs"]["adaptflow"]["wall_seconds"] / out["runs"]["adaptflow fixed"]["wall_seconds"]
    )
    return out


# --------------------------------------------------------------------------------------------
# retrieval
# --------------------------------------------------------------------------------------------


def _rankings_metrics(rankings: list[list[str]], rows: list[dict[str, Any]]) -> dict[str, float]:
    from tasks.evaluate.retrieval import retrieval_metrics

    return retrieval_metrics(rankings, [r["source"] for r in rows])


def bare_dense_windows(knowledge: Path, rows: list[dict[str, Any]]) -> dict[str, float]:
    """MiniLM over 200-word windows, 150-word stride; cosine; distinct pages in order."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from adaptflow.catalogue import resolve_base_model

    sources, texts = [], []
    for path in sorted(knowledge.rglob("*")):
        if not path.is_file():
            continue
        words = path.read_text(errors="replace").split()
        for start in range(0, max(1, len(words)), 150):
            sources.append(path.relative_to(knowledge).as_posix())
            texts.append(" ".join(words[start : start + 200]))
            if start + 200 >= len(words):
                break
    encoder = SentenceTransformer(resolve_base_model("minilm"), device="cpu")
    vectors = encoder.encode(texts, batch_size=64, normalize_embeddings=True)
    queries = encoder.encode([r["question"] for r in rows], normalize_embeddings=True)
    order = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :200]
    return _rankings_metrics([[sources[i] for i in row] for row in order], rows)


def bare_bm25(knowledge: Path, rows: list[dict[str, Any]]) -> dict[str, float]:
    """BM25 (bm25s, default tokenizer and English stopwords) over whole pages."""
    import bm25s

    paths = sorted(p for p in knowledge.rglob("*") if p.is_file())
    texts = [p.read_text(errors="replace") for p in paths]
    index = bm25s.BM25()
    index.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    found, _ = index.retrieve(bm25s.tokenize([r["question"] for r in rows], stopwords="en",
                                             show_progress=False),
                              k=min(50, len(paths)), show_progress=False)  # fmt: skip
    names = [p.relative_to(knowledge).as_posix() for p in paths]
    return _rankings_metrics([[names[int(i)] for i in row] for row in found], rows)


def retrieval(name: str, work: Path) -> dict[str, Any]:
    """Every retrieval contender on one set, scored on adaptflow's eval questions."""
    from tasks.rag.score import evaluate_rag

    folder = QUALITY / "retrieval" / name
    base = {"task": "retrieval-qa", "base_model": "minilm", "method": "rag", "seed": SEED,
            "data": {"knowledge": str(folder / "knowledge"),
                     "questions": str(folder / "questions.jsonl"), "id_field": "id"}}  # fmt: skip
    out: dict[str, Any] = {"kind": "retrieval", "role": SETS[name][1], "runs": {}}
    home = work / name
    log(f"{name}: adaptflow")
    summary, seconds = adaptflow(["run", str(write_spec(work, f"q-{name}", base))], home)
    choice = summary["choice"]
    eval_file = summary["curation"]["questions_file"]
    if choice["validation_questions"]:
        eval_file = str(Path(summary["train"]["package_dir"]).parent / "choice" /
                        "eval_questions.jsonl")  # fmt: skip
    rows = read_jsonl(eval_file)
    out["runs"]["adaptflow"] = summary["metrics"] | {"wall_seconds": seconds,
                                                     "choice": choice["reason"]}  # fmt: skip
    out["runs"]["bm25 baseline"] = summary["baseline"]
    log(f"{name}: adaptflow fixed")
    fixed = base | {"search": {"auto": False}}
    summary2, seconds2 = adaptflow(["run", str(write_spec(work, f"q-{name}-fixed", fixed))], home)
    os.environ["ADAPTFLOW_HOME"] = str(home)  # the fixed package's BM25 cache lives there
    scored = evaluate_rag(Path(summary2["train"]["package_dir"]), Path(eval_file),
                          work / f"{name}-fixed-eval")  # fmt: skip
    out["runs"]["adaptflow fixed"] = scored["metrics"] | {"wall_seconds": seconds2}
    log(f"{name}: bare scripts")
    knowledge = folder / "knowledge"
    out["bare"] = {"dense windows": bare_dense_windows(knowledge, rows),
                   "bm25 pages": bare_bm25(knowledge, rows)}  # fmt: skip
    out["eval_questions"] = len(rows)
    out["validation_questions"] = choice["validation_questions"]
    ours = out["runs"]["adaptflow"]
    out["wins"] = {
        key: all(ours[key] >= bare[key] for bare in out["bare"].values())
        for key in ("recall@1", "recall@5")
    }
    out["wall_ratio_vs_fixed"] = seconds / seconds2
    return out


# --------------------------------------------------------------------------------------------
# curation
# --------------------------------------------------------------------------------------------


def near_duplicate_partners(folder: Path, threshold: float = 0.8) -> set[str]:
    """Documents with a near duplicate (exact Jaccard of word 5-grams >= threshold) elsewhere."""
    from tasks.curate.dedup import jaccard, shingles
    from tasks.curate.normalize import normalize_text

    docs = {p.name: shingles(normalize_text(p.read_text(errors="replace")), 5)
            for p in sorted(folder.iterdir()) if p.is_file()}  # fmt: skip
    names = list(docs)
    paired: set[str] = set()
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            small, large = sorted((len(docs[a]), len(docs[b])))
            if large and small / large < threshold:  # Jaccard <= small / large
                continue
            if jaccard(docs[a], docs[b]) >= threshold:
                paired |= {a, b}
    return paired


def curation(name: str, work: Path) -> dict[str, Any]:
    """Curate one corpus for language modelling with today's defaults and with the old rules."""
    docs = QUALITY / "curation" / name / "docs"
    base = {"task": "language-modeling", "base_model": "tiny-gpt", "method": "cpt",
            "cpt": {"replay": 0}, "seed": SEED, "data": {"train": str(docs)}}  # fmt: skip
    partners = near_duplicate_partners(docs)
    total = sum(1 for p in docs.iterdir() if p.is_file())
    out: dict[str, Any] = {"kind": "curation", "role": SETS[name][1], "documents": total,
                           "with_near_duplicate": len(partners), "runs": {}}  # fmt: skip
    for label, spec in {
        "today": base,
        "gopher + any 8-gram": base | {"curation": OLD_CURATION},
    }.items():
        log(f"{name}: curate ({label})")
        home = work / name / label.split()[0]
        summary, seconds = adaptflow(["curate", str(write_spec(work, f"q-{name}", spec))], home)
        dropped = read_jsonl(Path(summary["output"]) / "dropped.jsonl")
        lone = [d for d in dropped if Path(d["id"]).name not in partners]
        out["runs"][label] = {
            "kept": summary["kept"],
            "dropped": summary["dropped"],
            "quarantined": summary["quarantined"],
            "dropped_without_near_duplicate": len(lone),
            "share_of_lone_documents_dropped": len(lone) / max(1, total - len(partners)),
            "seconds": seconds,
        }
    out["meets_goal"] = out["runs"]["today"]["share_of_lone_documents_dropped"] <= 0.05
    return out


# --------------------------------------------------------------------------------------------


def table(results: dict[str, Any]) -> str:
    """The side-by-side table."""
    lines = []
    for name, r in results.items():
        head = f"{name} ({r['kind']}, {r['role']})"
        if r["kind"] == "classification":
            cells = {k: v["f1_macro"] for k, v in r["runs"].items()} | r["bare"]
            lines.append(f"{head}: macro-F1, train {r['sizes']['train']} / eval "
                         f"{r['sizes']['eval']}, {r['sizes']['labels']} labels")  # fmt: skip
            lines += [f"  {k:18s} {v:.3f}" for k, v in cells.items()]
            lines.append(f"  adaptflow >= best bare ({r['best_bare']['name']}): {r['wins']}; wall "
                         f"vs old default {r['wall_ratio_vs_old_default']:.2f}x, vs fixed "
                         f"{r['wall_ratio_vs_fixed']:.2f}x")  # fmt: skip
        elif r["kind"] == "retrieval":
            lines.append(f"{head}: {r['eval_questions']} eval questions "
                         f"({r['validation_questions']} set aside for validation)")  # fmt: skip
            for k, v in {**r["runs"], **r["bare"]}.items():
                lines.append(f"  {k:18s} r@1 {v['recall@1']:.3f}  r@5 {v['recall@5']:.3f}  "
                             f"MRR {v['mrr']:.3f}")  # fmt: skip
            lines.append(f"  adaptflow >= every bare script: {r['wins']}; wall vs fixed "
                         f"{r['wall_ratio_vs_fixed']:.2f}x")  # fmt: skip
        elif r["kind"] == "generation":
            lines.append(f"{head}: train {r['sizes']['train']} / eval {r['sizes']['eval']}")
            cells = {k: v["metrics"] for k, v in r["runs"].items()} | r["bare"]
            for k, v in cells.items():
                lines.append(f"  {k:18s} ROUGE-L {v['rougeL']:.3f}  token F1 "
                             f"{v['token_f1']:.3f}  exact {v['exact_match']:.3f}")  # fmt: skip
            lines.append(f"  adaptflow >= fixed defaults: {r['beats_fixed']}; >= best bare "
                         f"({r['best_bare']['name']}): {r['wins']}; wall vs fixed "
                         f"{r['wall_ratio_vs_fixed']:.2f}x")  # fmt: skip
        else:
            lines.append(f"{head}: {r['documents']} documents, {r['with_near_duplicate']} with "
                         "a near duplicate")  # fmt: skip
            for k, v in r["runs"].items():
                lone = v["dropped_without_near_duplicate"]
                lines.append(f"  {k:20s} kept {v['kept']}, dropped {v['dropped']}; documents "
                             f"with no near duplicate dropped: {lone}"
                             f" ({v['share_of_lone_documents_dropped']:.1%})")  # fmt: skip
            lines.append(f"  at most 5% of lone documents dropped: {r['meets_goal']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frozen", action="store_true", help="also judge the frozen sets")
    parser.add_argument("--sets", help="comma-separated set names (default: all allowed)")
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    args = parser.parse_args(argv)
    names = args.sets.split(",") if args.sets else list(SETS)
    unknown = [n for n in names if n not in SETS]
    if unknown:
        parser.error(f"unknown sets: {', '.join(unknown)}; known: {', '.join(SETS)}")
    frozen = [n for n in names if SETS[n][1] == "frozen"]
    if frozen and not args.frozen:
        if args.sets:
            parser.error(f"{', '.join(frozen)} are frozen: pass --frozen to judge them")
        names = [n for n in names if n not in frozen]
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    runners = {"classification": classification, "retrieval": retrieval, "curation": curation,
               "generation": generation}  # fmt: skip
    results = {}
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    for name in names:
        results[name] = runners[SETS[name][0]](name, work)
        log(json.dumps(results[name], default=str)[:400])
        # written after every set, so a long run that stops keeps what it measured
        previous = json.loads(RESULTS_FILE.read_text()) if RESULTS_FILE.exists() else {}
        RESULTS_FILE.write_text(json.dumps(previous | results, indent=1, default=str) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
