"""Secrets from Prefect Secret blocks, for teams that keep tokens in Prefect.

Not every team can put tokens in each worker's environment.

``ADAPTFLOW_SECRET_BLOCKS`` maps environment variables to Secret block names, comma separated::

    ADAPTFLOW_SECRET_BLOCKS="HF_TOKEN=hf-token,MLFLOW_TRACKING_PASSWORD=mlflow-password"

At the start of each flow, every listed variable that the environment does not already set is
loaded from its block (the environment wins, so a developer can override a block locally). The
value then lives where every other secret lives, in the process environment, so everything that
reads tokens from there (huggingface_hub, MLflow's client, boto3) uses it, and the redaction in
``registry.tracking`` keeps it out of MLflow and Prefect's logs. The policy of what counts as a
secret (``SECRET_VARIABLES``, ``SECRET_NAME``) lives here, below both. That is why a variable
whose name does not look like a secret (``*_TOKEN``, ``*_KEY``, ``*_SECRET``, ``*_PASSWORD``,
``*_AUTH_STRING`` or a known one) is refused: its value would not be redacted.
"""

from __future__ import annotations

import os
import re
from collections.abc import MutableMapping
from typing import Any

from adaptflow.errors import SpecError

VARIABLE = "ADAPTFLOW_SECRET_BLOCKS"

#: Variables whose values are secrets by name; plus any variable matching ``SECRET_NAME``.
SECRET_VARIABLES = frozenset(
    {
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_TRACKING_TOKEN",
        "PREFECT_API_KEY",
        "PREFECT_API_AUTH_STRING",
        "PREFECT_SERVER_API_AUTH_STRING",
        "OPENAI_API_KEY",
        "PGPASSWORD",
        "MINIO_ROOT_PASSWORD",
    }
)
SECRET_NAME = re.compile(r".*(_TOKEN|_KEY|_SECRET|_PASSWORD|_AUTH_STRING)$", re.IGNORECASE)
MIN_SECRET_LENGTH = 8


def secret_values(env: dict[str, str] | None = None) -> list[str]:
    """Current values of secret-looking environment variables, longest first."""
    env = dict(os.environ) if env is None else env
    values = {
        value
        for name, value in env.items()
        if (name.upper() in SECRET_VARIABLES or SECRET_NAME.match(name))
        and len(value) >= MIN_SECRET_LENGTH
    }
    return sorted(values, key=len, reverse=True)


def parse_secret_blocks(text: str) -> dict[str, str]:
    """``{variable: block name}`` from ``ADAPTFLOW_SECRET_BLOCKS``.

    Raises:
        SpecError: On an entry that is not ``NAME=block``, a repeated variable, or a variable
            whose name is not a secret's (its value would escape redaction).
    """
    mapping: dict[str, str] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        name, _, block = (part.strip() for part in entry.partition("="))
        if not name or not block:
            raise SpecError(f"{VARIABLE}: '{entry}' is not VARIABLE=block-name")
        if name in mapping:
            raise SpecError(f"{VARIABLE}: {name} is listed twice")
        if not (name.upper() in SECRET_VARIABLES or SECRET_NAME.match(name)):
            raise SpecError(
                f"{VARIABLE}: {name} does not look like a secret's name (it should end in "
                "_TOKEN, _KEY, _SECRET, _PASSWORD or _AUTH_STRING), so its value would not be "
                "redacted from MLflow and the logs; rename the variable"
            )
        mapping[name] = block
    return mapping


def load_secret_blocks(env: MutableMapping[str, str] | None = None) -> list[str]:
    """Set each variable of ``ADAPTFLOW_SECRET_BLOCKS`` the environment lacks from its block.

    Args:
        env: The environment to read and update; defaults to ``os.environ``.

    Returns:
        The variables that were loaded from blocks (never their values).

    Raises:
        SpecError: When the mapping is malformed or a named block does not exist.
    """
    env = os.environ if env is None else env
    mapping = parse_secret_blocks(env.get(VARIABLE, ""))
    missing = {name: block for name, block in mapping.items() if not env.get(name)}
    if not missing:
        return []
    from prefect.blocks.system import Secret

    loaded = []
    for name, block in missing.items():
        try:
            secret: Any = Secret.load(block)  # sync here: flows and the CLI are sync
        except ValueError as exc:  # Prefect: "Unable to find block document named ..."
            raise SpecError(
                f"{VARIABLE}: no Secret block named '{block}' (for {name}) on the Prefect "
                f"server: create it in the UI (Blocks > Secret) or with Secret(value=...)"
                f".save('{block}') ({exc})"
            ) from None
        env[name] = str(secret.get())
        loaded.append(name)
    return loaded
