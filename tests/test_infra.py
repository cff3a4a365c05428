"""Static checks of infra/: the compose stack, the Dockerfiles and the Kubernetes job template.

Docker does not run on the machines that run these tests, so the files are checked the way
``docker compose config`` and a reviewer would: parsed, cross-checked against each other and
against what adaptflow, Prefect and MLflow actually read. Each checker returns a list of
problems (empty when the file is right), and each has a test that feeds it a broken copy and
expects the exact problem, so a checker that passes everything would fail here.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import shlex
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import postgres_cluster

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
COMPOSE = INFRA / "docker-compose.yml"
AUTH_OVERRIDE = INFRA / "docker-compose.mlflow-auth.yml"
ENV_EXAMPLE = INFRA / ".env.example"
WORKER_DOCKERFILE = INFRA / "Dockerfile"
MLFLOW_DOCKERFILE = INFRA / "mlflow" / "Dockerfile"
MLFLOW_REQUIREMENTS = INFRA / "mlflow" / "requirements.txt"
INIT_SCRIPT = INFRA / "postgres" / "create-databases.sh"
K8S_TEMPLATE = INFRA / "k8s" / "base-job-template.json"

# Secrets never get a default: an empty PREFECT_SERVER_API_AUTH_STRING, for one, switches the
# server's basic auth on with an empty credential instead of off.
SECRETS = {
    "POSTGRES_PASSWORD",
    "MINIO_ROOT_PASSWORD",
    "PREFECT_SERVER_API_AUTH_STRING",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
}
# The variables that point adaptflow at servers instead of the embedded default (DESIGN §3).
SERVER_VARIABLES = ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "ADAPTFLOW_CHROMA_URL")
LOOPBACK = {"localhost", "127.0.0.1", "0.0.0.0"}


# --- compose variable interpolation -------------------------------------------------------------

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)


class InterpolationError(ValueError):
    """A required variable (``${VAR:?message}``) has no value."""


def variable_uses(text: str) -> list[tuple[str, str | None]]:
    """The ``(name, operator)`` of every variable compose interpolates in ``text``."""
    uses = []
    for match in _VARIABLE.finditer(text):
        if match["escaped"]:
            continue
        uses.append((match["braced"] or match["plain"], match["op"]))
    return uses


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Resolve ``text`` the way docker compose does (``$$``, ``:-``, ``-``, ``:?``, ``:+``...)."""

    def resolve(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["plain"]
        op, arg = match["op"], match["arg"] or ""
        value = env.get(name)
        present = value is not None if op in ("-", "?", "+") else bool(value)
        if op in (":-", "-"):
            return value if present else arg  # type: ignore[return-value]
        if op in (":?", "?"):
            if not present:
                raise InterpolationError(f"{name}: {arg}")
            return value  # type: ignore[return-value]
        if op in (":+", "+"):
            return arg if present else ""
        return value or ""

    return _VARIABLE.sub(resolve, text)


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    """``interpolate`` every string value in a parsed compose file."""
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    return node


def env_example() -> dict[str, str]:
    """``infra/.env.example`` as a dict (blank values kept as empty strings)."""
    entries = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            entries[name.strip()] = value.strip()
    return entries


def filled_env() -> dict[str, str]:
    """``.env.example`` with each blank secret filled in, as a user's ``infra/.env`` would be."""
    return {name: value or f"{name.lower()}-value" for name, value in env_example().items()}


def load_compose(path: Path = COMPOSE) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def resolved_compose() -> dict[str, Any]:
    return interpolate_tree(load_compose(), filled_env())


# --- compose checkers ---------------------------------------------------------------------------


def is_one_shot(service: Mapping[str, Any]) -> bool:
    """A job that runs to completion (``restart: "no"``; YAML reads a bare ``no`` as False)."""
    return service.get("restart") in ("no", False)


def check_depends_on(compose: Mapping[str, Any]) -> list[str]:
    """Every dependency exists and waits for health (or for completion of a one-shot job)."""
    services = compose["services"]
    problems = []
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            problems.append(f"{name}: depends_on without conditions: {depends}")
            continue
        for target, spec in depends.items():
            if target not in services:
                problems.append(f"{name}: depends on undefined service {target!r}")
                continue
            wanted = (
                "service_completed_successfully"
                if is_one_shot(services[target])
                else "service_healthy"
            )
            condition = (spec or {}).get("condition")
            if condition != wanted:
                problems.append(f"{name}: depends on {target} with {condition!r}, not {wanted!r}")
    return problems


def check_healthchecks(compose: Mapping[str, Any]) -> list[str]:
    """Every long-running service has an enabled healthcheck.

    Each service states its restart policy, so a forgotten one cannot pass for a one-shot job.
    """
    problems = []
    for name, service in compose["services"].items():
        if "restart" not in service:
            problems.append(f'{name}: no restart policy ("no" for a one-shot job)')
            continue
        if is_one_shot(service):
            continue
        check = service.get("healthcheck") or {}
        test = check.get("test")
        if check.get("disable") or not test or test == ["NONE"]:
            problems.append(f"{name}: long-running service without a healthcheck")
    return problems


def check_variables_documented(texts: Mapping[str, str], example: Mapping[str, str]) -> list[str]:
    """Each variable the compose files use is in .env.example, and secrets have no default."""
    problems = []
    used = set()
    for source, text in texts.items():
        for name, op in variable_uses(text):
            used.add(name)
            if name not in example:
                problems.append(f"{source}: ${{{name}}} is not in infra/.env.example")
            if name in SECRETS and op != ":?":
                problems.append(f"{source}: secret {name} must be required (${{{name}:?...}})")
    for name in sorted(set(example) - used):
        problems.append(f".env.example: {name} is not used by any compose file")
    for name in sorted(SECRETS & set(example)):
        if example[name]:
            problems.append(f".env.example: secret {name} has a value; leave it blank")
    return problems


def published_ports(service: Mapping[str, Any]) -> list[tuple[str | None, str]]:
    """``(host_ip, container_port)`` of each published port (short or long syntax)."""
    found = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            found.append((entry.get("host_ip"), str(entry["target"])))
            continue
        parts = str(entry).split("/")[0].rsplit(":", 2)
        host_ip = parts[0] if len(parts) == 3 else None
        found.append((host_ip, parts[-1]))
    return found


def container_ports(service: Mapping[str, Any]) -> set[str]:
    """Ports a service listens on for others: published targets and ``expose``."""
    exposed = {str(port).split("/")[0] for port in service.get("expose") or []}
    return exposed | {port for _, port in published_ports(service)}


def check_ports_loopback(compose: Mapping[str, Any]) -> list[str]:
    """Published ports bind to 127.0.0.1 (``compose`` is already interpolated)."""
    problems = []
    for name, service in compose["services"].items():
        for host_ip, port in published_ports(service):
            if host_ip != "127.0.0.1":
                problems.append(f"{name}: port {port} binds to {host_ip or 'all interfaces'}")
    return problems


_URL = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*)://(?:[^@/\s'\"]*@)?(?P<host>[\w.-]+):(?P<port>\d+)"
)


def service_strings(service: Mapping[str, Any]) -> list[str]:
    """Environment values, command, entrypoint and healthcheck of a service, as strings."""
    strings: list[str] = []
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        strings += [entry.partition("=")[2] for entry in environment]
    else:
        strings += [str(value) for value in environment.values()]
    for key in ("command", "entrypoint"):
        value = service.get(key)
        strings += value if isinstance(value, list) else [value] if value else []
    strings += [str(part) for part in (service.get("healthcheck") or {}).get("test") or []]
    return [str(text) for text in strings]


def check_service_urls(compose: Mapping[str, Any]) -> list[str]:
    """Every ``scheme://host:port`` names a service and a port it listens on."""
    services = compose["services"]
    problems = []
    for name, service in services.items():
        for text in service_strings(service):
            for url in _URL.finditer(text):
                host, port = url["host"], url["port"]
                target = name if host in LOOPBACK else host
                if target not in services:
                    problems.append(f"{name}: {url[0]} names no service {host!r}")
                elif port not in container_ports(services[target]):
                    problems.append(
                        f"{name}: {url[0]} uses port {port}, {target} listens on "
                        f"{sorted(container_ports(services[target]))}"
                    )
    return problems


def check_databases(compose: Mapping[str, Any]) -> list[str]:
    """Each PostgreSQL URL names a database the postgres service creates."""
    postgres = compose["services"]["postgres"]
    env = postgres["environment"]
    created = {
        env["POSTGRES_DB"],
        *env.get("ADAPTFLOW_EXTRA_DATABASES", "").replace(",", " ").split(),
    }
    problems = []
    if not any("/docker-entrypoint-initdb.d/" in str(volume) for volume in postgres["volumes"]):
        problems.append("postgres: no init script in /docker-entrypoint-initdb.d")
    for name, service in compose["services"].items():
        for text in service_strings(service):
            for url in re.finditer(r"postgres(?:ql)?(?:\+\w+)?://[^@\s]+@postgres:\d+/(\w+)", text):
                if url[1] not in created:
                    problems.append(f"{name}: database {url[1]!r} is never created")
    return problems


def image_pin_problem(image: str) -> str | None:
    """Why an image reference is not pinned, or None when it is."""
    if "@sha256:" in image:
        return None
    tag = image.rsplit("/", 1)[-1].partition(":")[2]
    if not tag:
        return f"{image} has no tag"
    if tag == "latest" or "$" in tag:
        return f"{image} is not pinned"
    return None


def check_images_pinned(compose: Mapping[str, Any]) -> list[str]:
    """Each service names a pinned image (built ones too, so the build is tagged)."""
    problems = []
    for name, service in compose["services"].items():
        image = service.get("image")
        if not image:
            problems.append(f"{name}: no image name")
        elif problem := image_pin_problem(image):
            problems.append(f"{name}: {problem}")
    return problems


def worker_services(compose: Mapping[str, Any]) -> dict[str, Any]:
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("command", [])[:3] == ["prefect", "worker", "start"]
    }


def option(command: list[str], flag: str) -> str | None:
    return command[command.index(flag) + 1] if flag in command else None


# --- adaptflow settings -------------------------------------------------------------------------


class _RecordingEnv(dict):  # type: ignore[type-arg]
    """An environment that remembers which names were looked up."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.read.add(str(key))
        return super().__contains__(key)


def names_settings_read() -> set[str]:
    """The environment variables ``adaptflow.settings.load_settings`` looks up."""
    from adaptflow.settings import load_settings

    env = _RecordingEnv()
    load_settings(env)
    return env.read


def check_adaptflow_env(env: Mapping[str, str]) -> list[str]:
    """The environment points adaptflow at the servers, with names adaptflow actually reads."""
    from adaptflow.settings import load_settings

    read = names_settings_read()
    problems = [
        f"{name} is not read by adaptflow.settings"
        for name in sorted(env)
        if name.startswith("ADAPTFLOW_") and name not in read
    ]
    problems += [
        f"{name} is not set" for name in ("ADAPTFLOW_HOME", *SERVER_VARIABLES) if not env.get(name)
    ]
    if problems:
        return problems
    settings = load_settings(dict(env))
    resolved = {
        "ADAPTFLOW_HOME": str(settings.home),
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "PREFECT_API_URL": settings.prefect_api_url,
        "ADAPTFLOW_CHROMA_URL": settings.chroma_url,
    }
    return [
        f"{name}={env[name]!r} resolves to {resolved[name]!r}"
        for name in resolved
        if name in env and resolved[name] != env[name]
    ]


# --- Dockerfiles --------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined, comments dropped."""
    logical, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    pairs = []
    for line in logical:
        instruction, _, arguments = line.partition(" ")
        pairs.append((instruction.upper(), arguments.strip()))
    return pairs


def dockerfile_args(instructions: list[tuple[str, str]]) -> dict[str, str]:
    return dict(argument.partition("=")[::2] for kind, argument in instructions if kind == "ARG")


def base_images(instructions: list[tuple[str, str]]) -> list[str]:
    """FROM images with ARG defaults substituted."""
    args = dockerfile_args(instructions)
    images = []
    for kind, argument in instructions:
        if kind == "FROM":
            image = argument.split()[0]
            images.append(re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m[1], m[0]), image))
    return images


def dockerignore_patterns(dockerfile: Path) -> list[str]:
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    if not ignore.is_file():
        return []
    return [
        line.strip().rstrip("/")
        for line in ignore.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def check_copy_sources(dockerfile: Path, text: str, context: Path) -> list[str]:
    """Every COPY source exists in the build context and is not excluded by its .dockerignore."""
    ignored = dockerignore_patterns(dockerfile)
    problems = []
    for kind, argument in dockerfile_instructions(text):
        if kind not in ("COPY", "ADD"):
            continue
        words = shlex.split(argument)
        if any(word.startswith("--from") for word in words):
            continue
        for source in [word for word in words if not word.startswith("--")][:-1]:
            if not (context / source).exists():
                problems.append(f"{dockerfile.name}: COPY source {source} does not exist")
            elif any(fnmatch.fnmatch(source.rstrip("/"), pattern) for pattern in ignored):
                problems.append(f"{dockerfile.name}: COPY source {source} is in .dockerignore")
    return problems


def pyproject_pin(package: str) -> str:
    import tomllib

    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(dep.split("==")[1] for dep in dependencies if dep.startswith(f"{package}=="))


def constraints_pin(package: str) -> str:
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.lower().startswith(f"{package}=="):
            return line.split("==")[1].strip()
    raise LookupError(package)


def check_worker_dockerfile(text: str) -> list[str]:
    """torch before the project, the project against constraints.txt, non-root, a worker CMD."""
    instructions = dockerfile_instructions(text)
    problems = []
    runs = [
        (index, argument) for index, (kind, argument) in enumerate(instructions) if kind == "RUN"
    ]
    torch = [(i, m[1]) for i, run in runs for m in [re.search(r"torch==([\w.+]+)", run)] if m]
    project = [
        i for i, run in runs if re.search(r"pip install\b[^&;|]*\s(?:-e\s+)?\.(?:\s|$)", run)
    ]
    if not torch:
        problems.append("torch is not installed by a RUN")
    elif torch[0][1] != pyproject_pin("torch"):
        problems.append(f"installs torch=={torch[0][1]}, pyproject pins {pyproject_pin('torch')}")
    if not project:
        problems.append("the project is not installed by a RUN")
    else:
        if torch and torch[0][0] > project[0]:
            problems.append("installs the project before torch")
        if not re.search(r"pip install\b[^&;|]*\s-c\s", instructions[project[0]][1]):
            problems.append("installs the project without -c constraints")
    copies_constraints = [
        i
        for i, (kind, arg) in enumerate(instructions)
        if kind == "COPY" and "constraints.txt" in arg
    ]
    if not copies_constraints or (project and copies_constraints[0] > project[0]):
        problems.append("constraints.txt is not copied before the project is installed")
    users = [argument for kind, argument in instructions if kind == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("runs as root")
    commands = [argument for kind, argument in instructions if kind == "CMD"]
    command = json.loads(commands[-1]) if commands else []
    if command[:3] != ["prefect", "worker", "start"] or option(command, "--type") != "process":
        problems.append(f"CMD is not a Prefect process worker: {command}")
    return problems


def dockerfile_env(text: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for kind, argument in dockerfile_instructions(text):
        if kind == "ENV":
            env.update(word.partition("=")[::2] for word in shlex.split(argument))
    return env


# --- command lines, parsed by the real CLIs (nothing is executed) ------------------------------


def check_prefect_command(command: list[str]) -> list[str]:
    """``command`` (``prefect ...``) parses with Prefect's own CLI parser."""
    import prefect.cli  # noqa: F401  (registers the subcommands)
    from prefect.cli._app import _app

    try:
        _app.parse_args(command[1:], exit_on_error=False, print_error=False)
    except Exception as error:  # cyclopts' errors share no public base class
        return [f"{' '.join(command)}: {error}"]
    return []


def parse_mlflow_server(command: list[str], env: Mapping[str, str]) -> dict[str, Any]:
    """The options ``mlflow server`` would run with, given the service's environment."""
    from unittest import mock

    from mlflow.cli import cli

    assert command[:2] == ["mlflow", "server"], command
    with mock.patch.dict(os.environ, env):
        return dict(cli.commands["server"].make_context("server", list(command[2:])).params)


def check_mlflow_command(command: list[str], env: Mapping[str, str]) -> list[str]:
    """``mlflow server`` accepts the command; backend in PostgreSQL, artifacts proxied to S3."""
    import click

    try:
        params = parse_mlflow_server(command, env)
    except click.ClickException as error:
        return [f"mlflow server: {error.format_message()}"]
    problems = []
    if not str(params["backend_store_uri"]).startswith("postgresql://"):
        problems.append(f"backend store is {params['backend_store_uri']!r}, not PostgreSQL")
    if (
        not str(params["artifacts_destination"]).startswith("s3://")
        or not params["serve_artifacts"]
    ):
        problems.append("artifacts are not proxied to S3")
    return problems


# --- the Kubernetes base job template -----------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{\{\s*([\w.$-]+)\s*\}\}")


def check_job_template(template: Mapping[str, Any]) -> list[str]:
    """Prefect's base-job-template shape; every placeholder declared; a valid Kubernetes Job."""
    if not isinstance(template.get("job_configuration"), dict):
        return ["no job_configuration"]
    if not isinstance(template.get("variables"), dict):
        return ["no variables"]
    declared = set(template["variables"].get("properties", {}))
    used = set(_PLACEHOLDER.findall(json.dumps(template["job_configuration"])))
    problems = [
        f"placeholder {{{{ {name} }}}} is not declared in variables"
        for name in sorted(used - declared)
    ]
    manifest = template["job_configuration"].get("job_manifest", {})
    pod = manifest.get("spec", {}).get("template", {}).get("spec", {})
    # What prefect-kubernetes' worker requires of a job manifest (_get_base_job_manifest).
    required = {
        "apiVersion": (manifest.get("apiVersion"), "batch/v1"),
        "kind": (manifest.get("kind"), "Job"),
        "restartPolicy": (pod.get("restartPolicy"), "Never"),
        "parallelism": (pod.get("parallelism"), 1),
        "completions": (pod.get("completions"), 1),
        "containers[0].name": ((pod.get("containers") or [{}])[0].get("name"), "prefect-job"),
    }
    problems += [
        f"job_manifest {key} is {got!r}, not {want!r}"
        for key, (got, want) in required.items()
        if got != want
    ]
    return problems


def check_variables_schema(variables: Mapping[str, Any]) -> list[str]:
    """``variables`` is a JSON schema (Draft 2020-12, as Prefect uses) and its defaults fit it."""
    import jsonschema

    try:
        jsonschema.Draft202012Validator.check_schema(variables)
    except jsonschema.SchemaError as error:
        return [f"variables is not a valid JSON schema: {error.message}"]
    problems = []
    for name, prop in variables.get("properties", {}).items():
        if "default" in prop:
            for error in jsonschema.Draft202012Validator(prop).iter_errors(prop["default"]):
                problems.append(f"default of {name}: {error.message}")
    return problems


def render_job(template: Mapping[str, Any], values: Mapping[str, Any]) -> Any:
    """The job configuration a Kubernetes worker would get for a deployment's ``values``.

    Prefect's own ``from_template_and_values`` fills it (variable defaults, deployment values,
    the ``env`` merge); the configuration class mirrors prefect-kubernetes' fields, which is not
    installed here. The template has no block or variable references, so no API client is used.
    """
    import asyncio

    from prefect.workers.base import BaseJobConfiguration

    class KubernetesJobConfiguration(BaseJobConfiguration):
        namespace: str = "default"
        job_manifest: dict[str, Any]
        job_watch_timeout_seconds: int | None = None
        pod_watch_timeout_seconds: int = 60
        stream_output: bool = True

    configure = KubernetesJobConfiguration.from_template_and_values
    return asyncio.run(configure(dict(template), dict(values), client=object()))


# --- tests: the files as committed --------------------------------------------------------------


def test_compose_parses_and_has_the_stack() -> None:
    services = load_compose()["services"]
    assert {
        "postgres",
        "prefect-server",
        "worker",
        "mlflow",
        "minio",
        "minio-init",
        "chroma",
    } <= set(services)
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_compose_dependencies_wait_for_health() -> None:
    assert check_depends_on(load_compose()) == []


def test_long_running_services_have_healthchecks() -> None:
    assert check_healthchecks(load_compose()) == []


def test_every_compose_variable_is_documented_and_secrets_are_required() -> None:
    texts = {path.name: path.read_text() for path in (COMPOSE, AUTH_OVERRIDE)}
    assert check_variables_documented(texts, env_example()) == []


def test_compose_refuses_to_start_without_secrets() -> None:
    with pytest.raises(InterpolationError, match="POSTGRES_PASSWORD"):
        interpolate_tree(load_compose(), {**filled_env(), "POSTGRES_PASSWORD": ""})


def test_ports_bind_to_loopback_by_default() -> None:
    without_env = {name: value for name, value in filled_env().items() if name != "ADAPTFLOW_BIND"}
    assert check_ports_loopback(interpolate_tree(load_compose(), without_env)) == []
    assert check_ports_loopback(resolved_compose()) == []


def test_urls_name_services_and_their_ports() -> None:
    assert check_service_urls(resolved_compose()) == []


def test_databases_in_urls_are_created() -> None:
    assert check_databases(resolved_compose()) == []
    assert "ADAPTFLOW_EXTRA_DATABASES" in INIT_SCRIPT.read_text()


def test_images_are_pinned() -> None:
    assert check_images_pinned(load_compose()) == []
    for dockerfile in (WORKER_DOCKERFILE, MLFLOW_DOCKERFILE):
        for image in base_images(dockerfile_instructions(dockerfile.read_text())):
            assert image_pin_problem(image) is None, (dockerfile.name, image)


def test_the_worker_image_copies_every_package_the_project_installs() -> None:
    """A package missing from the image installs nothing and fails at the first import."""
    import tomllib

    found = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {p.rstrip("*") for p in found["packages"]["find"]["include"]}
    assert {"adaptflow", "runtime", "serve"} <= packages
    copied = {
        args.split()[0]
        for instruction, args in dockerfile_instructions(WORKER_DOCKERFILE.read_text())
        if instruction == "COPY" and not args.startswith("--")
    }
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"


def test_server_images_match_the_client_versions() -> None:
    services = load_compose()["services"]
    prefect_tag = services["prefect-server"]["image"].split(":")[1]
    assert prefect_tag.split("-")[0] == constraints_pin("prefect")
    assert services["chroma"]["image"].split(":")[1] == constraints_pin("chromadb")
    mlflow = constraints_pin("mlflow")
    assert services["mlflow"]["image"] == f"adaptflow-mlflow:{mlflow}"
    assert base_images(dockerfile_instructions(MLFLOW_DOCKERFILE.read_text())) == [
        f"ghcr.io/mlflow/mlflow:v{mlflow}"
    ]
    requirements = MLFLOW_REQUIREMENTS.read_text().split()
    assert f"mlflow[auth]=={mlflow}" in requirements
    # postgresql:// names psycopg 3 under SQLAlchemy 2.1 and psycopg2 under 2.0: the image gets
    # the pair the PostgreSQL-backed integration test runs the server with.
    assert f"SQLAlchemy=={constraints_pin('sqlalchemy')}" in requirements
    assert f"psycopg[binary]=={constraints_pin('psycopg')}" in requirements


def test_worker_environment_is_what_adaptflow_reads() -> None:
    compose = resolved_compose()
    for name, worker in worker_services(compose).items():
        env = worker["environment"]
        assert check_adaptflow_env(env) == [], name
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        assert env["ADAPTFLOW_CHROMA_URL"] == "http://chroma:8000"
        # Prefect's client sends the server's auth string.
        server = compose["services"]["prefect-server"]["environment"]
        assert env["PREFECT_API_AUTH_STRING"] == server["PREFECT_SERVER_API_AUTH_STRING"]
        assert any(str(v).endswith(":" + env["ADAPTFLOW_HOME"]) for v in worker["volumes"])


def test_mlflow_accepts_the_host_names_clients_use() -> None:
    from mlflow.server.security_utils import is_allowed_host_header

    compose = resolved_compose()
    allowed = compose["services"]["mlflow"]["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    worker_uri = compose["services"]["worker"]["environment"]["MLFLOW_TRACKING_URI"]
    assert is_allowed_host_header(allowed, worker_uri.split("://")[1].rstrip("/"))
    assert is_allowed_host_header(allowed, "127.0.0.1:5000")
    assert not is_allowed_host_header(allowed, "evil.example:5000")


def test_artifact_bucket_is_the_one_minio_init_creates() -> None:
    services = load_compose()["services"]
    destination = option(services["mlflow"]["command"], "--artifacts-destination")
    bucket = re.fullmatch(r"s3://([\w.-]+)/?", destination or "")
    assert bucket, destination
    assert f"mc mb --ignore-existing local/{bucket[1]}" in " ".join(
        services["minio-init"]["command"]
    )


def test_worker_pools_serve_prefect_yaml_deployments() -> None:
    compose = load_compose()
    pools = {option(w["command"], "--pool") for w in worker_services(compose).values()}
    deployments = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    assert {d["work_pool"]["name"] for d in deployments} <= pools
    cmd = [
        json.loads(a)
        for k, a in dockerfile_instructions(WORKER_DOCKERFILE.read_text())
        if k == "CMD"
    ]
    assert option(cmd[-1], "--pool") in pools
    for worker in worker_services(compose).values():
        assert option(worker["command"], "--type") == "process"
        assert "--with-healthcheck" in worker["command"]
    gpu = compose["services"]["worker-gpu"]["command"]
    assert option(gpu, "--work-queue") == "gpu" and option(gpu, "--limit") == "1"


def test_mlflow_auth_override_extends_the_main_file() -> None:
    base, override = load_compose(), load_compose(AUTH_OVERRIDE)
    assert set(override["services"]) <= set(base["services"])
    assert override["services"]["mlflow"]["command"] == [
        *base["services"]["mlflow"]["command"],
        "--app-name",
        "basic-auth",
    ]
    for worker in ("worker", "worker-gpu"):
        env = override["services"][worker]["environment"]
        assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= set(env)
    mounts = override["services"]["mlflow"]["volumes"]
    assert (INFRA / mounts[0].split(":")[0].removeprefix("./")).is_file()


def test_worker_dockerfile() -> None:
    text = WORKER_DOCKERFILE.read_text()
    assert check_worker_dockerfile(text) == []
    assert check_copy_sources(WORKER_DOCKERFILE, text, REPO) == []
    # prefect.yaml's pull step runs deployments from {{ $ADAPTFLOW_REPO }}: the image sets it to
    # the folder the repository was copied to.
    env = dockerfile_env(text)
    needed = re.findall(r"\{\{\s*\$(\w+)\s*\}\}", (REPO / "prefect.yaml").read_text())
    assert needed and all(name in env for name in needed)
    workdirs = [a for k, a in dockerfile_instructions(text) if k == "WORKDIR"]
    assert env["ADAPTFLOW_REPO"] == workdirs[-1]
    assert (
        env["ADAPTFLOW_HOME"]
        == load_compose()["services"]["worker"]["environment"]["ADAPTFLOW_HOME"]
    )


def test_mlflow_dockerfile_copies_what_exists() -> None:
    text = MLFLOW_DOCKERFILE.read_text()
    assert check_copy_sources(MLFLOW_DOCKERFILE, text, MLFLOW_DOCKERFILE.parent) == []


def test_k8s_template_is_a_prefect_base_job_template() -> None:
    from prefect.server.schemas.actions import validate_base_job_template

    template = json.loads(K8S_TEMPLATE.read_text())
    assert check_job_template(template) == []
    validate_base_job_template(template)  # what the Prefect server runs on `work-pool create`


def test_k8s_variables_are_a_valid_json_schema() -> None:
    pytest.importorskip("jsonschema")
    template = json.loads(K8S_TEMPLATE.read_text())
    assert check_variables_schema(template["variables"]) == []


def test_k8s_gpu_variable_sets_the_gpu_limit_and_env() -> None:
    template = json.loads(K8S_TEMPLATE.read_text())
    cpu = render_job(template, {})
    gpu = render_job(template, {"gpu": 1, "env": {"EXTRA": "1"}})

    def container(job: Any) -> dict[str, Any]:
        return job.job_manifest["spec"]["template"]["spec"]["containers"][0]

    assert container(cpu)["resources"]["limits"]["nvidia.com/gpu"] == 0
    assert container(gpu)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu.env["EXTRA"] == "1" and gpu.env["ADAPTFLOW_HOME"] == cpu.env["ADAPTFLOW_HOME"]
    assert gpu.namespace == gpu.job_manifest["metadata"]["namespace"] == "adaptflow"
    mounts = {m["mountPath"] for m in container(cpu)["volumeMounts"]}
    assert cpu.env["ADAPTFLOW_HOME"] in mounts
    # The Kubernetes worker adds PREFECT_API_URL (and its auth) from its own settings.
    env = {**cpu.env, "PREFECT_API_URL": "http://prefect-server:4200/api"}
    assert check_adaptflow_env(env) == []
    image = template["variables"]["properties"]["image"]["default"]
    assert container(cpu)["image"] == image == load_compose()["services"]["worker"]["image"]


def test_commands_parse_with_the_real_clis() -> None:
    compose = resolved_compose()
    services = compose["services"]
    assert check_prefect_command(services["prefect-server"]["command"]) == []
    for worker in worker_services(compose).values():
        assert check_prefect_command(worker["command"]) == []
    cmd = [
        json.loads(a)
        for k, a in dockerfile_instructions(WORKER_DOCKERFILE.read_text())
        if k == "CMD"
    ]
    assert check_prefect_command(cmd[-1]) == []
    mlflow = services["mlflow"]
    assert check_mlflow_command(mlflow["command"], mlflow["environment"]) == []
    override = interpolate_tree(load_compose(AUTH_OVERRIDE), filled_env())["services"]["mlflow"]
    assert check_mlflow_command(override["command"], mlflow["environment"]) == []
    assert (
        parse_mlflow_server(override["command"], mlflow["environment"])["app_name"] == "basic-auth"
    )


def test_postgres_init_script_syntax() -> None:
    subprocess.run(["sh", "-n", str(INIT_SCRIPT)], check=True)


@pytest.mark.integration
def test_postgres_init_script_creates_the_databases() -> None:
    """The init script, run as the image's entrypoint runs it, against a throwaway cluster."""
    with postgres_cluster(("prefect",)) as cluster:  # "prefect": what POSTGRES_DB does
        env = {
            "POSTGRES_USER": cluster.user,
            "POSTGRES_DB": "prefect",
            "ADAPTFLOW_EXTRA_DATABASES": "mlflow",
        }
        cluster.run("sh", str(INIT_SCRIPT), env=env)
        assert {"prefect", "mlflow"} <= cluster.databases()


# --- tests: each checker catches what it claims -------------------------------------------------


def _mutated(mutate: Any) -> dict[str, Any]:
    compose = copy.deepcopy(load_compose())
    mutate(compose["services"])
    return compose


def test_depends_on_checker_catches_missing_services_and_conditions() -> None:
    broken = _mutated(
        lambda s: s["worker"]["depends_on"].update({"redis": {"condition": "service_healthy"}})
    )
    # worker and worker-gpu share their depends_on (a YAML anchor), so both report it.
    assert check_depends_on(broken) == [
        "worker: depends on undefined service 'redis'",
        "worker-gpu: depends on undefined service 'redis'",
    ]
    broken = _mutated(
        lambda s: s["mlflow"]["depends_on"].update({"postgres": {"condition": "service_started"}})
    )
    assert check_depends_on(broken) == [
        "mlflow: depends on postgres with 'service_started', not 'service_healthy'"
    ]
    broken = _mutated(
        lambda s: s["mlflow"]["depends_on"].update({"minio-init": {"condition": "service_healthy"}})
    )
    assert check_depends_on(broken) == [
        "mlflow: depends on minio-init with 'service_healthy', not 'service_completed_successfully'"
    ]
    broken = _mutated(lambda s: s["prefect-server"].update(depends_on=["postgres"]))
    assert check_depends_on(broken) == [
        "prefect-server: depends_on without conditions: ['postgres']"
    ]


def test_healthcheck_checker_catches_a_missing_healthcheck() -> None:
    assert check_healthchecks(_mutated(lambda s: s["chroma"].pop("healthcheck"))) == [
        "chroma: long-running service without a healthcheck"
    ]
    disabled = _mutated(lambda s: s["mlflow"].update(healthcheck={"disable": True}))
    assert check_healthchecks(disabled) == ["mlflow: long-running service without a healthcheck"]
    assert check_healthchecks(_mutated(lambda s: s["postgres"].pop("restart"))) == [
        'postgres: no restart policy ("no" for a one-shot job)'
    ]


def test_variable_checker_catches_undocumented_variables_and_secret_defaults() -> None:
    example = env_example()
    text = "a: ${ADAPTFLOW_BIND:-127.0.0.1}\nb: ${NEW_SETTING}\nc: ${POSTGRES_PASSWORD:-postgres}\n"
    problems = check_variables_documented({"x.yml": text}, example)
    assert "x.yml: ${NEW_SETTING} is not in infra/.env.example" in problems
    assert (
        "x.yml: secret POSTGRES_PASSWORD must be required (${POSTGRES_PASSWORD:?...})" in problems
    )
    assert ".env.example: MINIO_ROOT_USER is not used by any compose file" in problems
    leaked = {**example, "MINIO_ROOT_PASSWORD": "hunter22"}
    texts = {path.name: path.read_text() for path in (COMPOSE, AUTH_OVERRIDE)}
    assert check_variables_documented(texts, leaked) == [
        ".env.example: secret MINIO_ROOT_PASSWORD has a value; leave it blank"
    ]


def test_interpolation_follows_compose_rules() -> None:
    env = {"SET": "v", "EMPTY": ""}
    assert interpolate("${SET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d}", env) == "v d  d"
    assert interpolate("${SET:+r}|${EMPTY:+r}|${EMPTY+r}|$$SET|$SET", env) == "r||r|$SET|v"
    with pytest.raises(InterpolationError, match="EMPTY: needed"):
        interpolate("${EMPTY:?needed}", env)
    assert interpolate("${EMPTY?needed}", env) == ""


def test_port_checker_catches_ports_open_to_every_interface() -> None:
    broken = _mutated(lambda s: s["mlflow"].update(ports=["5000:5000"]))
    assert check_ports_loopback(interpolate_tree(broken, filled_env())) == [
        "mlflow: port 5000 binds to all interfaces"
    ]
    lan = interpolate_tree(load_compose(), {**filled_env(), "ADAPTFLOW_BIND": "0.0.0.0"})
    assert "prefect-server: port 4200 binds to 0.0.0.0" in check_ports_loopback(lan)


def test_url_checker_catches_wrong_hosts_and_ports() -> None:
    def mutate(services: dict[str, Any]) -> None:
        services["worker"]["environment"]["MLFLOW_TRACKING_URI"] = "http://mlflow:8080"
        services["worker"]["environment"]["ADAPTFLOW_CHROMA_URL"] = "http://chromadb:8000"

    assert check_service_urls(interpolate_tree(_mutated(mutate), filled_env())) == [
        "worker: http://mlflow:8080 uses port 8080, mlflow listens on ['5000']",
        "worker: http://chromadb:8000 names no service 'chromadb'",
        "worker-gpu: http://mlflow:8080 uses port 8080, mlflow listens on ['5000']",
        "worker-gpu: http://chromadb:8000 names no service 'chromadb'",
    ]
    health = _mutated(
        lambda s: s["chroma"]["healthcheck"].update(test=["CMD", "curl", "http://localhost:9000/"])
    )
    assert check_service_urls(interpolate_tree(health, filled_env())) == [
        "chroma: http://localhost:9000 uses port 9000, chroma listens on ['8000']"
    ]


def test_database_checker_catches_a_database_nobody_creates() -> None:
    broken = _mutated(lambda s: s["postgres"]["environment"].update(ADAPTFLOW_EXTRA_DATABASES=""))
    assert check_databases(interpolate_tree(broken, filled_env())) == [
        "mlflow: database 'mlflow' is never created"
    ]


def test_image_checker_catches_unpinned_images() -> None:
    broken = _mutated(
        lambda s: (
            s["chroma"].update(image="chromadb/chroma:latest"),
            s["postgres"].update(image="postgres"),
        )
    )
    assert check_images_pinned(broken) == [
        "postgres: postgres has no tag",
        "chroma: chromadb/chroma:latest is not pinned",
    ]
    assert (
        image_pin_problem("localhost:5000/adaptflow-worker")
        == "localhost:5000/adaptflow-worker has no tag"
    )
    assert image_pin_problem("postgres@sha256:" + "0" * 64) is None


def test_env_checker_catches_names_adaptflow_does_not_read() -> None:
    env = dict(resolved_compose()["services"]["worker"]["environment"])
    env["ADAPTFLOW_CHROMA_ENDPOINT"] = env.pop("ADAPTFLOW_CHROMA_URL")
    assert check_adaptflow_env(env) == [
        "ADAPTFLOW_CHROMA_ENDPOINT is not read by adaptflow.settings",
        "ADAPTFLOW_CHROMA_URL is not set",
    ]
    assert {"ADAPTFLOW_HOME", *SERVER_VARIABLES} <= names_settings_read()


def test_dockerfile_checker_catches_order_constraints_root_and_copies() -> None:
    good = WORKER_DOCKERFILE.read_text()
    torch_run = next(a for k, a in dockerfile_instructions(good) if k == "RUN" and "torch==" in a)
    project_run = next(
        a
        for k, a in dockerfile_instructions(good)
        if k == "RUN" and "-c /tmp/constraints.txt ." in a
    )
    swapped = "\n".join(
        [
            "FROM python:3.11-slim",
            "COPY constraints.txt ./",
            f"RUN {project_run}",
            f"RUN {torch_run}",
            "USER adaptflow",
            'CMD ["prefect", "worker", "start", "--type", "process"]',
        ]
    )
    assert check_worker_dockerfile(swapped) == ["installs the project before torch"]
    assert check_worker_dockerfile(
        good.replace("pip install -c /tmp/constraints.txt .", "pip install .")
    ) == ["installs the project without -c constraints"]
    assert check_worker_dockerfile(good.replace('"torch==2.13.0"', '"torch==2.12.0"')) == [
        f"installs torch==2.12.0, pyproject pins {pyproject_pin('torch')}"
    ]
    assert check_worker_dockerfile(good.replace("USER adaptflow", "USER root")) == ["runs as root"]
    missing = good.replace(
        "COPY registry ./registry", "COPY registry ./registry\nCOPY scripts ./scripts"
    )
    assert check_copy_sources(WORKER_DOCKERFILE, missing, REPO) == [
        "Dockerfile: COPY source scripts does not exist"
    ]
    ignored = good + "COPY .venv /venv\n"
    assert check_copy_sources(WORKER_DOCKERFILE, ignored, REPO) == [
        "Dockerfile: COPY source .venv is in .dockerignore"
    ]


def test_command_checkers_catch_options_the_clis_reject() -> None:
    worker = ["prefect", "worker", "start", "--pool", "adaptflow-process", "--limitt", "1"]
    problems = check_prefect_command(worker)
    assert len(problems) == 1 and "Unknown option: --limitt" in problems[0]
    mlflow = resolved_compose()["services"]["mlflow"]
    typo = [
        arg.replace("--artifacts-destination", "--artifact-destination")
        for arg in mlflow["command"]
    ]
    (problem,) = check_mlflow_command(typo, mlflow["environment"])
    assert (
        problem.startswith("mlflow server: No such option") and "--artifact-destination" in problem
    )
    assert check_mlflow_command(
        [*mlflow["command"], "--app-name", "oauth"], mlflow["environment"]
    ) == ["mlflow server: Invalid value for '--app-name': 'oauth' is not one of 'basic-auth'."]
    no_backend = {k: v for k, v in mlflow["environment"].items() if k != "MLFLOW_BACKEND_STORE_URI"}
    assert check_mlflow_command(mlflow["command"], no_backend) == [
        "backend store is None, not PostgreSQL"
    ]


def test_job_template_checker_catches_undeclared_placeholders_and_bad_manifests() -> None:
    from prefect.server.schemas.actions import validate_base_job_template

    template = json.loads(K8S_TEMPLATE.read_text())
    broken = copy.deepcopy(template)
    del broken["variables"]["properties"]["gpu"]
    assert check_job_template(broken) == ["placeholder {{ gpu }} is not declared in variables"]
    with pytest.raises(ValueError, match="gpu"):
        validate_base_job_template(broken)
    broken = copy.deepcopy(template)
    broken["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["restartPolicy"] = (
        "OnFailure"
    )
    assert check_job_template(broken) == ["job_manifest restartPolicy is 'OnFailure', not 'Never'"]
    assert check_job_template({"variables": {}}) == ["no job_configuration"]


def test_variables_schema_checker_catches_invalid_schemas_and_defaults() -> None:
    pytest.importorskip("jsonschema")
    variables = json.loads(K8S_TEMPLATE.read_text())["variables"]
    broken = copy.deepcopy(variables)
    broken["properties"]["gpu"]["type"] = "int"
    assert check_variables_schema(broken)[0].startswith("variables is not a valid JSON schema:")
    broken = copy.deepcopy(variables)
    broken["properties"]["gpu"]["default"] = -1
    assert check_variables_schema(broken) == ["default of gpu: -1 is less than the minimum of 0"]
