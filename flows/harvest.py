"""Harvest the served model's feedback and retrain from its champion when the feedback changed.

The loop issue 21 asks for, as one deployment (``harvest-and-retrain`` in prefect.yaml):

1. ``tasks.harvest.harvest`` turns the interaction store's feedback on ``NAME`` into SFT (the
   corrections), KTO (thumbs up/down) and DPO (preferred choices) datasets, PII redacted and
   DVC-versioned.
2. The chosen dataset becomes a spec: ``base_model: models:/NAME@champion`` (the served
   model itself is the start and the baseline), the method that fits the feedback (``kto``
   for thumbs, ``dpo`` for choices, ``lora`` for corrections), the data in the format harvest
   wrote. It is written next to the harvested files, so the run can be repeated by hand.
3. ``scheduled-retrain`` runs on that spec: curation yields a DVC hash, and when it equals the
   hash the champion was trained on (no new feedback) nothing trains; otherwise the whole
   pipeline runs, through the gate, and the new version carries ``adaptflow.parent``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from prefect import flow, get_run_logger

from adaptflow.secrets import load_secret_blocks
from adaptflow.settings import load_settings
from flows.retrain import scheduled_retrain
from runtime.interactions import InteractionStore
from tasks.harvest import harvest

#: The method that learns from each harvested dataset, and the format harvest writes it in.
DATASETS: dict[str, tuple[str, str]] = {
    "kto": ("kto", "kto"),
    "dpo": ("dpo", "preference"),
    "sft": ("lora", "messages"),
}


def retrain_spec(
    name: str,
    dataset: str,
    train_file: Path,
    task: str,
    alias: str,
    epochs: float,
    learning_rate: float,
) -> dict[str, Any]:
    """The spec that tunes ``models:/NAME@ALIAS`` on one harvested dataset."""
    method, data_format = DATASETS[dataset]
    return {
        "name": name,
        "task": task,
        "base_model": f"models:/{name}@{alias}",
        "method": method,
        "data": {"train": str(train_file), "format": data_format},
        "train": {"epochs": epochs, "learning_rate": learning_rate},
    }


@flow(name="harvest-and-retrain")
def harvest_and_retrain(
    name: str,
    dataset: Literal["kto", "dpo", "sft"] = "kto",
    task: Literal["instruction", "qa", "summarization"] = "instruction",
    alias: str = "champion",
    min_records: int = 20,
    epochs: float = 1.0,
    learning_rate: float = 5e-4,
    force: bool = False,
) -> dict[str, Any]:
    """Harvest ``name``'s feedback; retrain from ``models:/NAME@ALIAS`` when it changed.

    Args:
        name: The registered (and served) model.
        dataset: Which feedback to learn from: ``kto`` (thumbs), ``dpo`` (preferred choices)
            or ``sft`` (corrections).
        task: The model's task (the spec's ``task``).
        alias: The version to start from (and compare with).
        min_records: Fewer harvested records than this: nothing trains (too little feedback).
        epochs: Training epochs on the harvested data.
        learning_rate: Its learning rate.
        force: Train even when the curated data equals the champion's.

    Returns:
        ``harvest`` (the harvest summary), ``skipped``, ``reason``; when training was
        considered, ``spec`` and ``scheduled-retrain``'s result.
    """
    logger = get_run_logger()
    load_secret_blocks()
    settings = load_settings()
    # what the store holds was redacted when the server wrote it; nothing to redact on reading
    store = InteractionStore(settings.interactions_url, redact=lambda text: text)
    try:
        summary = harvest(name, store, settings.harvest_dir, settings.home)
    finally:
        store.dispose()
    info = summary["datasets"][dataset]
    if info["records"] < min_records:
        reason = (
            f"{info['records']} {dataset} records harvested from {summary['feedback']} "
            f"feedback; fewer than min_records {min_records}: nothing trains"
        )
        logger.info("%s: %s", name, reason)
        return {"harvest": summary, "skipped": True, "reason": reason}
    spec = retrain_spec(name, dataset, Path(info["path"]), task, alias, epochs, learning_rate)
    spec_path = Path(info["path"]).parent / f"retrain-{dataset}.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    result = scheduled_retrain(str(spec_path), force=force)
    return {
        "harvest": summary,
        "spec": str(spec_path),
        "skipped": bool(result["skipped"]),
        "reason": result["reason"],
        "retrain": result,
    }
