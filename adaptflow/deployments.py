"""``adaptflow deploy``: work pool, ``gpu`` concurrency limit and prefect.yaml's deployments.

Deployments are applied through Prefect's client API rather than ``prefect deploy --all``: with
the pinned Prefect (3.8.8) the command stops after the first deployment, on a request its own
server rejects (``read_workers_for_work_pool`` sends ``limit: null``). The result is the same
deployment ``prefect deploy`` makes: prefect.yaml's pull steps (kept as templates, resolved by
the worker at run time), entrypoint, parameters and their schema, schedules, work pool.

Prefect is imported inside the functions: callers set ``PREFECT_API_URL`` first.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import yaml

from adaptflow.errors import AdaptflowError, ServiceError

POOL_TYPE = "process"
#: Training tasks carry this tag; a tag concurrency limit of 1 keeps two of them off one GPU.
GPU_TAG = "gpu"
GPU_LIMIT = 1
#: prefect.yaml keys this command applies; anything else is refused rather than ignored.
DEPLOYMENT_KEYS = {
    "name",
    "entrypoint",
    "description",
    "parameters",
    "schedules",
    "work_pool",
    "tags",
    "version",
    "paused",
    "concurrency_limit",
    "enforce_parameter_schema",
}
PROJECT_KEYS = {"name", "prefect-version", "pull", "deployments", "build", "push"}


def load_project(repo: Path) -> dict[str, Any]:
    """Read and check ``repo/prefect.yaml``.

    Raises:
        AdaptflowError: Missing file, or keys this command does not apply.
    """
    path = repo / "prefect.yaml"
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise AdaptflowError(f"cannot read {path}: {exc}") from None
    if not isinstance(config, dict) or not config.get("deployments"):
        raise AdaptflowError(f"{path}: no deployments")
    unknown = set(config) - PROJECT_KEYS
    if config.get("build") or config.get("push"):
        unknown |= {key for key in ("build", "push") if config.get(key)}
    for deployment in config["deployments"]:
        unknown |= {f"{deployment.get('name')}.{k}" for k in set(deployment) - DEPLOYMENT_KEYS}
    if unknown:
        raise AdaptflowError(
            f"{path}: adaptflow deploy does not apply {', '.join(sorted(unknown))}"
        )
    return config


def _schedules(deployment: dict[str, Any]) -> list[Any]:
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import construct_schedule

    made = []
    for entry in deployment.get("schedules") or []:
        entry = dict(entry)
        active = entry.pop("active", True)
        parameters = entry.pop("parameters", {})
        made.append(
            DeploymentScheduleCreate(
                schedule=construct_schedule(**entry), active=active, parameters=parameters
            )
        )
    return made


def _schedule_text(deployment: dict[str, Any]) -> list[str]:
    return [
        " ".join(f"{k}={v}" for k, v in entry.items())
        for entry in deployment.get("schedules") or []
    ]


async def _ensure_pool(client: Any, name: str) -> bool:
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    try:
        await client.read_work_pool(name)
        return False
    except ObjectNotFound:
        pass
    template = ProcessWorker.get_default_base_job_template()
    await client.create_work_pool(
        WorkPoolCreate(name=name, type=POOL_TYPE, base_job_template=template)
    )
    return True


async def _ensure_tag_limit(client: Any, tag: str, limit: int) -> dict[str, Any]:
    from prefect.exceptions import ObjectNotFound

    try:
        found = await client.read_concurrency_limit_by_tag(tag)
        # an existing limit is the team's decision: leave its value alone
        return {"tag": tag, "limit": found.concurrency_limit, "created": False}
    except ObjectNotFound:
        await client.create_concurrency_limit(tag=tag, concurrency_limit=limit)
        return {"tag": tag, "limit": limit, "created": True}


async def _apply(config: dict[str, Any], repo: Path) -> dict[str, Any]:
    from prefect import get_client
    from prefect.flows import load_flow_from_entrypoint

    result: dict[str, Any] = {"work_pools": {}, "deployments": []}
    async with get_client() as client:
        for pool in sorted({d["work_pool"]["name"] for d in config["deployments"]}):
            result["work_pools"][pool] = "created" if await _ensure_pool(client, pool) else "exists"
        result["concurrency_limit"] = await _ensure_tag_limit(client, GPU_TAG, GPU_LIMIT)
        for deployment in config["deployments"]:
            entrypoint = deployment["entrypoint"]
            path, _, _ = entrypoint.partition(":")
            if not (repo / path).is_file():
                raise AdaptflowError(f"prefect.yaml: {deployment['name']}: no file {path}")
            flow: Any = load_flow_from_entrypoint(str(repo / entrypoint))
            flow_id = await client.create_flow_from_name(flow.name)
            pool = deployment["work_pool"]
            deployment_id = await client.create_deployment(
                flow_id=flow_id,
                name=deployment["name"],
                version=deployment.get("version"),
                schedules=_schedules(deployment),
                concurrency_limit=deployment.get("concurrency_limit"),
                parameters=deployment.get("parameters") or {},
                description=deployment.get("description") or flow.description,
                work_pool_name=pool["name"],
                work_queue_name=pool.get("work_queue_name"),
                job_variables=pool.get("job_variables") or {},
                tags=deployment.get("tags") or [],
                entrypoint=entrypoint,
                parameter_openapi_schema=flow.parameters.model_dump_for_openapi(),
                paused=deployment.get("paused"),
                pull_steps=config.get("pull") or [],
                enforce_parameter_schema=deployment.get("enforce_parameter_schema", True),
            )
            result["deployments"].append(
                {
                    "name": f"{flow.name}/{deployment['name']}",
                    "id": str(deployment_id),
                    "schedules": _schedule_text(deployment),
                    "parameters": deployment.get("parameters") or {},
                }
            )
    return result


def deploy(repo: Path, api_url: str) -> dict[str, Any]:
    """Create missing work pools and the ``gpu`` limit, then apply prefect.yaml's deployments.

    Idempotent: existing pools and limits are left as they are; deployments are updated in place
    (same ids).

    Args:
        repo: The checkout with ``prefect.yaml`` (entrypoints are relative to it).
        api_url: The Prefect server's API URL.

    Returns:
        ``prefect_api_url``, ``work_pools`` (``{name: "created" | "exists"}``),
        ``concurrency_limit`` (``tag``, ``limit``, ``created``) and ``deployments``
        (``name``, ``id``, ``schedules``, ``parameters``).

    Raises:
        AdaptflowError: prefect.yaml cannot be applied.
        ServiceError: The Prefect server refused a request or could not be reached.
    """
    import httpx
    from prefect.settings import PREFECT_API_URL, temporary_settings

    config = load_project(repo)
    try:
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            result = asyncio.run(_apply(config, repo))
    except httpx.HTTPError as exc:
        raise ServiceError(f"Prefect server at {api_url}: {exc}") from None
    return {"prefect_api_url": api_url, **result}
