"""Start ``adaptflow serve``: follow the alias, open the interaction store, run uvicorn."""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Callable
from typing import Any

from adaptflow.secrets import secret_values
from adaptflow.settings import Settings
from registry.tracking import redact
from runtime.interactions import InteractionStore
from serve.app import ServeConfig, create_app
from serve.follow import AliasFollower
from tasks.curate.pii import redact_text

TOKEN_VARIABLE = "ADAPTFLOW_SERVE_TOKEN"
log = logging.getLogger("adaptflow.serve")


def redactor() -> Callable[[str], str]:
    """Curation's rules for logged text: secret values first, then PII placeholders."""
    secrets = secret_values()

    def apply(text: str) -> str:
        return redact_text(redact(text, secrets))[0]

    return apply


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build(
    settings: Settings,
    name: str,
    alias: str,
    poll_seconds: float,
    config: ServeConfig,
    log_interactions: bool = True,
) -> tuple[Any, AliasFollower, InteractionStore | None]:
    """The app, its alias follower (already loaded) and its interaction store."""
    follower = AliasFollower(name, alias, settings.home / "serve" / "packages" / name, poll_seconds)
    follower.start()
    store = InteractionStore(settings.interactions_url, redactor()) if log_interactions else None
    return create_app(follower, store, config), follower, store


def serve_forever(
    settings: Settings,
    name: str,
    alias: str,
    host: str,
    port: int,
    poll_seconds: float,
    config: ServeConfig,
    log_interactions: bool = True,
    announce: Callable[[str], None] = print,
) -> None:
    """Serve until interrupted."""
    import uvicorn

    app, follower, store = build(settings, name, alias, poll_seconds, config, log_interactions)
    if not is_loopback(host) and config.token is None:
        announce(
            f"warning: serving on {host} with no bearer token; set {TOKEN_VARIABLE} "
            "or put the server behind your gateway"
        )
    announce(
        f"serving {follower.current.label} ({follower.current.kind}) at http://{host}:{port} "
        f"- following alias '{alias}' every {poll_seconds:g}s"
    )
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    finally:
        follower.stop()
        if app.state.recorder is not None:
            app.state.recorder.close()  # what was answered is written before the exit
        if store is not None:
            store.dispose()


def token_from_env() -> str | None:
    """The bearer token (``ADAPTFLOW_SERVE_TOKEN``, possibly from a Prefect Secret block)."""
    return os.environ.get(TOKEN_VARIABLE) or None
