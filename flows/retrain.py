"""Scheduled retraining: curate, compare the data hash with the champion's, train if it changed."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from adaptflow.hardware import check_capabilities
from adaptflow.methods import check_method
from adaptflow.secrets import load_secret_blocks
from adaptflow.settings import load_settings
from adaptflow.spec import Method, load_spec
from flows.curate import curate
from flows.pipeline import adapt_pipeline
from flows.rag import curate_knowledge
from registry.health import check_mlflow
from tasks.retrain import champion_data_task, retrain_decision


@flow(name="scheduled-retrain")
def scheduled_retrain(
    spec_path: str, force: bool = False, method: Method | None = None
) -> dict[str, Any]:
    """Retrain the spec's model when its curated data differs from the champion's.

    Curation runs first (it is what yields the DVC hash); when the hash equals the champion's
    ``adaptflow.data_hash`` tag and ``force`` is false, nothing trains and the reason is logged
    and returned. Otherwise the whole ``adapt-pipeline`` runs as a subflow.

    Args:
        spec_path: Path to the use-case spec (YAML).
        force: Train even when the data is unchanged.
        method: Overrides the spec's ``method`` when training (as in ``adapt-pipeline``).

    Returns:
        ``skipped``, ``reason``, ``data_hash`` and ``champion_version``; when it trained, the
        pipeline's summary as well.
    """
    logger = get_run_logger()
    load_secret_blocks()  # tokens kept in Prefect Secret blocks (ADAPTFLOW_SECRET_BLOCKS)
    spec = load_spec(spec_path)
    check_method(spec.task, method or spec.method)
    train = spec.train
    check_capabilities(spec.task, method or spec.method, train.precision, train.devices)
    # A registry that cannot be read would look like "no champion" and retrain every time.
    check_mlflow(load_settings().mlflow_tracking_uri)
    curation = curate_knowledge(spec) if spec.task == "retrieval-qa" else curate(spec)
    champion = champion_data_task(spec.name)
    decision = retrain_decision(
        curation["data_hash"], champion["version"], champion["data_hash"], force
    )
    facts = {
        "name": spec.name,
        "data_hash": curation["data_hash"],
        "champion_data_hash": champion["data_hash"],
        "reason": decision.reason,
    }
    if not decision.retrain:
        logger.info("%s: skipping training: %s", spec.name, decision.reason)
        return facts | {"skipped": True, "champion_version": champion["version"]}
    logger.info("%s: training: %s", spec.name, decision.reason)
    return adapt_pipeline(spec_path, method) | facts | {"skipped": False}
