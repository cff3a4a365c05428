"""Stage flow: curate the spec's data (read -> shards -> global blocks, split, version).

Shards run as mapped ``curate_shard`` tasks. With one shard, or one worker, they run in this
process; with several, on a Dask cluster through prefect-dask's ``DaskTaskRunner``: a local
one of ``ADAPTFLOW_CURATION_WORKERS`` processes (default: one per core), or the cluster at
``ADAPTFLOW_DASK_ADDRESS``. Results are the same either way (tested).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prefect import flow, unmapped
from prefect.context import FlowRunContext

from adaptflow.errors import SpecError
from adaptflow.settings import Settings, load_settings
from adaptflow.spec import Spec
from tasks.curate.records import Fields
from tasks.curate.shards import ShardJob, ShardResult
from tasks.curate.stage import (
    CurationInputs,
    curate_shard_task,
    finish_curation_task,
    plan_curation_task,
)
from tasks.curate.version import dvc_project_root


def curation_inputs(spec: Spec) -> CurationInputs:
    """The curation arguments a spec asks for."""
    data = spec.data
    if data.train is None:  # retrieval-qa curates its knowledge and questions (flows.rag)
        raise SpecError(f"{spec.source or spec.name}: data.train is not set; nothing to curate")
    return CurationInputs(
        name=spec.name,
        train=data.train,
        eval=data.eval,
        fields=Fields(
            text=data.text_field,
            label=data.label_field if spec.task == "classification" else None,
            target=data.target_field,
            id=data.id_field,
            format=spec.input_format,
        ),
        eval_fraction=data.eval_fraction,
        seed=spec.seed,
        needs_labels=spec.task == "classification",
        task=spec.task,
        base_model=spec.base_model,
        allow_pickle=spec.allow_pickle,
        blocks=spec.curation,
        version_in=spec.data.version_in,
    )


def data_homes(spec: Spec) -> tuple[Path, Path]:
    """(the DVC repository that versions the curated data, the folder it is written under).

    ``data.version_in: project`` puts it in the git + DVC repository holding the spec (an
    inline spec: the working directory), under ``curated/``; else ``ADAPTFLOW_HOME``.

    Raises:
        SpecError: ``project`` when no DVC repository holds the spec.
    """
    settings = load_settings()
    if spec.data.version_in == "home":
        return settings.home, settings.curated_dir
    folder = spec.source.parent if spec.source else Path.cwd()
    root = dvc_project_root(folder)
    if root is None:
        raise SpecError(
            f"data.version_in: project versions the curated data in the DVC repository that "
            f"holds the spec, and there is none at or above {folder} (run `git init && dvc "
            "init` there, or use version_in: home)"
        )
    return root, root / "curated"


def map_shards(jobs: list[ShardJob], inputs: CurationInputs) -> list[ShardResult]:
    """The per-record blocks over every shard, as mapped tasks on the current task runner."""
    return [future.result() for future in curate_shard_task.map(jobs, unmapped(inputs))]


@flow(name="curate-shards")
def curate_shards(jobs: list[ShardJob], inputs: CurationInputs) -> list[ShardResult]:
    """``map_shards`` in a subflow, so it can run on a Dask task runner."""
    return map_shards(jobs, inputs)


def dask_runner(settings: Settings, shards: int) -> Any | None:
    """The Dask task runner for ``shards`` shards, or None to run them in this process."""
    from prefect_dask import DaskTaskRunner

    # distributed logs every connection and worker start/stop at INFO; keep warnings only
    logging.getLogger("distributed").setLevel(logging.WARNING)
    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    workers = min(settings.curation_workers, shards)
    if workers < 2:
        return None
    context = FlowRunContext.get()
    # Workers are fresh processes: point them at this run's Prefect API (the ephemeral
    # server's URL included), or each would start a server of its own.
    api_url = str(context.client.api_url) if context else settings.prefect_api_url
    cluster = {
        "n_workers": workers,
        "threads_per_worker": 1,
        "processes": True,
        "dashboard_address": None,
        "silence_logs": logging.ERROR,
        "env": {"PREFECT_API_URL": api_url} if api_url else {},
    }
    return DaskTaskRunner(cluster_kwargs=cluster)


@flow(name="curate")
def curate(spec: Spec) -> dict[str, Any]:
    """Curate ``spec``'s data (read, blocks, split, version); returns the curation summary."""
    settings = load_settings()
    inputs = curation_inputs(spec)
    dvc_root, out_root = data_homes(spec)
    plan = plan_curation_task(inputs, out_root)
    # One shard never needs Dask: skip importing it (and starting a cluster) altogether.
    runner = dask_runner(settings, len(plan.jobs)) if len(plan.jobs) > 1 else None
    if runner is None:
        results = map_shards(plan.jobs, inputs)
    else:
        results = curate_shards.with_options(task_runner=runner)(plan.jobs, inputs)
    return finish_curation_task(inputs, plan, results, dvc_root)
