"""Tokens kept in Prefect Secret blocks reach the flows' environment, and then its redaction."""

from __future__ import annotations

import pytest

from adaptflow.errors import SpecError
from adaptflow.secrets import load_secret_blocks, parse_secret_blocks
from registry import tracking

CANARY = "block-canary-5d1e0b7a93c2"


def test_the_mapping_is_parsed_and_only_secret_names_are_accepted() -> None:
    assert parse_secret_blocks(" HF_TOKEN = hf-token ,MLFLOW_TRACKING_PASSWORD=mlflow-pw,") == {
        "HF_TOKEN": "hf-token",
        "MLFLOW_TRACKING_PASSWORD": "mlflow-pw",
    }
    assert parse_secret_blocks("") == {}
    with pytest.raises(SpecError, match="'HF_TOKEN' is not VARIABLE=block-name"):
        parse_secret_blocks("HF_TOKEN")
    with pytest.raises(SpecError, match="HF_TOKEN is listed twice"):
        parse_secret_blocks("HF_TOKEN=a,HF_TOKEN=b")
    with pytest.raises(SpecError, match="DATABASE_URL does not look like a secret's name"):
        parse_secret_blocks("DATABASE_URL=db-url")


@pytest.mark.integration
def test_blocks_fill_what_the_environment_lacks_and_get_redacted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prefect.blocks.system import Secret

    Secret(value=CANARY).save("af-test-service-token", overwrite=True)
    Secret(value="not-this-one-4242").save("af-test-overridden", overwrite=True)
    env = {
        "ADAPTFLOW_SECRET_BLOCKS": "AF_SERVICE_TOKEN=af-test-service-token,"
        "AF_OTHER_TOKEN=af-test-overridden",
        "AF_OTHER_TOKEN": "from-the-environment-77",
    }
    assert load_secret_blocks(env) == ["AF_SERVICE_TOKEN"]
    assert env["AF_SERVICE_TOKEN"] == CANARY
    assert env["AF_OTHER_TOKEN"] == "from-the-environment-77"  # the environment wins
    assert load_secret_blocks(env) == []  # nothing left to load

    # once in the process environment, the value is redacted like any other secret
    monkeypatch.setenv("AF_SERVICE_TOKEN", env["AF_SERVICE_TOKEN"])
    assert tracking.redact(f"url?key={CANARY}&x=1") == "url?key=***&x=1"

    env = {"ADAPTFLOW_SECRET_BLOCKS": "AF_MISSING_TOKEN=af-no-such-block"}
    with pytest.raises(SpecError, match="no Secret block named 'af-no-such-block'"):
        load_secret_blocks(env)
    assert "AF_MISSING_TOKEN" not in env
