"""Harvest: turn a served model's interactions and feedback into training datasets.

What users said becomes data, in the formats TRL's trainers read (conversational form, so the
base model's chat template renders them):

- a **correction** of an answer → an SFT record: ``{"id", "messages": [...turns, the correction]}``
  (adaptflow's ``messages`` format: ``data.format: messages``);
- a **thumbs up/down** → a KTO record: ``{"id", "prompt": [...turns], "completion": [answer],
  "label": true | false}``;
- a **preferred choice** of several → DPO pairs: ``{"id", "prompt", "chosen", "rejected"}``, one
  per other choice.

Curation as everywhere: each feedback's share of a dataset is kept (one or more records),
dropped with a reason
(``superseded`` by later feedback of the same kind on the same answer, ``exact_duplicate``,
``chosen_equals_rejected``) or quarantined with a reason (``no_conversation``, ``empty_answer``
…); input = kept + dropped + quarantined. Texts went through the PII and secret rules when the
server logged them; the PII block runs again here, so a store filled by another writer is
redacted too, and counts what it replaced. The folder is versioned with DVC; its hash changes
only when the data does (the scheduled retraining keys on it).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from runtime.interactions import Feedback, Interaction, InteractionStore
from tasks.curate.pii import redact_text
from tasks.curate.version import version_with_dvc

KINDS = ("sft", "kto", "dpo")


def _turns(interaction: Interaction) -> list[dict[str, str]] | None:
    """The conversation up to the answer, as messages (None when there is none to learn from)."""
    request = interaction.request
    if interaction.endpoint == "chat":
        messages = request.get("messages")
        if isinstance(messages, list) and messages:
            return [
                {
                    "role": "system" if m["role"] == "developer" else m["role"],
                    "content": m["content"],
                }
                for m in messages
            ]
    if interaction.endpoint == "completion" and isinstance(request.get("prompt"), str):
        return [{"role": "user", "content": request["prompt"]}]
    return None


def _answers(interaction: Interaction) -> list[str]:
    choices = interaction.response.get("choices") or []
    return [
        str(c.get("message", {}).get("content") if "message" in c else c.get("text", ""))
        for c in choices
    ]


def _redacted(value: Any, counts: Counter[str]) -> Any:
    if isinstance(value, str):
        text, found = redact_text(value)
        counts.update(found)
        return text
    if isinstance(value, list):
        return [_redacted(v, counts) for v in value]
    if isinstance(value, dict):
        return {k: _redacted(v, counts) for k, v in value.items()}
    return value


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _records(
    fb: Feedback, interaction: Interaction, turns: list[dict[str, str]], answers: list[str]
) -> dict[str, list[dict[str, Any]] | str]:
    """The records one feedback gives, per kind, or per kind the reason it gives none."""
    out: dict[str, list[dict[str, Any]] | str] = {}
    if fb.correction is not None:
        out["sft"] = [
            {"id": f"{interaction.id}-sft", "messages": turns + _assistant(fb.correction)}
        ]
    if fb.rating is not None:
        if not answers or not answers[0].strip():
            out["kto"] = "empty_answer"
        else:
            out["kto"] = [
                {
                    "id": f"{interaction.id}-kto",
                    "prompt": turns,
                    "completion": _assistant(answers[0]),
                    "label": fb.rating == "up",
                }
            ]
    if fb.preferred is not None:
        chosen = answers[fb.preferred] if fb.preferred < len(answers) else ""
        others = [(j, a) for j, a in enumerate(answers) if j != fb.preferred and a.strip()]
        first: dict[str, int] = {}
        for j, a in others:  # one pair per different text (its first choice)
            first.setdefault(a, j)
        others = [(j, a) for a, j in first.items()]
        if not chosen.strip():
            out["dpo"] = "empty_answer"
        elif not others or all(a == chosen for _, a in others):
            out["dpo"] = "chosen_equals_rejected"
        else:
            out["dpo"] = [
                {
                    "id": f"{interaction.id}-dpo-{j}",
                    "prompt": turns,
                    "chosen": _assistant(chosen),
                    "rejected": _assistant(a),
                }
                for j, a in others
                if a != chosen
            ]
    return out


def _kinds(fb: Feedback) -> list[str]:
    """The datasets a feedback feeds: sft (a correction), kto (a rating), dpo (a preferred)."""
    given = (("sft", fb.correction), ("kto", fb.rating), ("dpo", fb.preferred))
    return [kind for kind, value in given if value is not None]


def _content_key(record: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in record.items() if k != "id"}, sort_keys=True)


def harvest(name: str, store: InteractionStore, out_root: Path, dvc_root: Path) -> dict[str, Any]:
    """Write ``name``'s feedback as SFT, KTO and DPO datasets under ``out_root/name``.

    Args:
        name: The registered model whose served interactions to read.
        store: The interaction store the server wrote.
        out_root: Folder of harvested datasets (under the DVC root).
        dvc_root: The DVC repository that versions them (``ADAPTFLOW_HOME``).

    Returns:
        ``name, interactions, feedback, input, kept, datasets{sft, kto, dpo: {path, records}},
        dropped{reason: n}, quarantined, pii{type: n}, data_hash, output``. The unit of
        ``input``, ``kept``, ``dropped`` and ``quarantined`` is one dataset's share of one
        feedback (a feedback with a rating and a correction is two), and input = kept +
        dropped + quarantined; ``records`` counts the rows written (a preferred choice gives one
        DPO pair per other choice).
    """
    # feedback first: an interaction is written before any feedback on it, so every one the
    # feedback names is in the second read, even while a server keeps answering
    feedback = store.feedback_of(name)
    interactions = {i.id: i for i in store.iter_interactions(name)}
    # the latest feedback of each kind on an answer wins; earlier ones are dropped as superseded
    latest: dict[tuple[str, str], int] = {}
    for index, fb in enumerate(feedback):
        for kind in _kinds(fb):
            latest[(fb.interaction_id, kind)] = index
    kept: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    seen: dict[str, set[str]] = {kind: set() for kind in KINDS}
    dropped: list[dict[str, Any]] = []
    quarantined: list[dict[str, Any]] = []
    items = kept_items = 0
    pii: Counter[str] = Counter()
    for index, fb in enumerate(feedback):
        interaction = interactions.get(fb.interaction_id)
        where = {"interaction": fb.interaction_id, "feedback": index}
        items += len(_kinds(fb))
        turns = None if interaction is None else _turns(interaction)
        if interaction is None or turns is None:
            reason = (
                "interaction_missing"
                if interaction is None
                else f"no_conversation: a {interaction.endpoint} interaction"
            )
            quarantined += [where | {"kind": kind, "reason": reason} for kind in _kinds(fb)]
            continue
        for kind, result in _records(fb, interaction, turns, _answers(interaction)).items():
            if latest[(fb.interaction_id, kind)] != index:
                dropped.append(where | {"kind": kind, "reason": "superseded"})
            elif isinstance(result, str):
                target = quarantined if result == "empty_answer" else dropped
                target.append(where | {"kind": kind, "reason": result})
            else:
                fresh = []
                for record in result:
                    record = _redacted(record, pii)
                    key = _content_key(record)
                    if key not in seen[kind]:
                        seen[kind].add(key)
                        fresh.append(record)
                if not fresh:  # everything it gives is already in the dataset
                    dropped.append(where | {"kind": kind, "reason": "exact_duplicate"})
                    continue
                kept[kind] += fresh
                kept_items += 1
    out = out_root / name
    out.mkdir(parents=True, exist_ok=True)
    datasets = {}
    for kind in KINDS:
        path = out / f"{kind}.jsonl"
        path.write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept[kind]), encoding="utf-8"
        )
        datasets[kind] = {"path": str(path), "records": len(kept[kind])}
    for file, rows in (("dropped.jsonl", dropped), ("quarantine.jsonl", quarantined)):
        (out / file).write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
        )
    summary: dict[str, Any] = {
        "name": name,
        "interactions": len(interactions),
        "feedback": len(feedback),
        "input": items,
        "kept": kept_items,
        "datasets": datasets,
        "dropped": dict(Counter(r["reason"] for r in dropped)),
        "quarantined": len(quarantined),
        "pii": dict(pii),
        "output": str(out),
    }
    (out / "report.md").write_text(_report(summary), encoding="utf-8")
    summary["data_hash"] = version_with_dvc(out, dvc_root)
    return summary


def _report(summary: dict[str, Any]) -> str:
    lines = [
        f"# Harvest of {summary['name']}",
        "",
        f"{summary['interactions']} interactions, {summary['feedback']} pieces of feedback.",
        "",
        "| dataset | records |",
        "|---|---|",
        *(f"| {k} | {v['records']} |" for k, v in summary["datasets"].items()),
        "",
        f"Dropped: {summary['dropped'] or 'none'}; quarantined: {summary['quarantined']}; "
        f"PII replaced: {summary['pii'] or 'none'}.",
    ]
    return "\n".join(lines) + "\n"
