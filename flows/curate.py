"""Stage flow: curate the spec's data (validate, quarantine, split, version)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from adaptflow.settings import load_settings
from adaptflow.spec import Spec
from tasks.curate.records import Fields
from tasks.curate.stage import CurationInputs, curate_dataset_task


@flow(name="curate")
def curate(spec: Spec) -> dict[str, Any]:
    """Curate ``spec``'s data (read, blocks, split, version); returns the curation summary."""
    settings = load_settings()
    data = spec.data
    inputs = CurationInputs(
        name=spec.name,
        train=data.train,
        eval=data.eval,
        fields=Fields(
            text=data.text_field,
            label=data.label_field if spec.task == "classification" else None,
            target=data.target_field,
            id=data.id_field,
        ),
        eval_fraction=data.eval_fraction,
        seed=spec.seed,
        needs_labels=spec.task == "classification",
        task=spec.task,
        base_model=spec.base_model,
        blocks=spec.curation,
    )
    return curate_dataset_task(inputs, settings.curated_dir, settings.home)
