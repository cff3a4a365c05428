"""The ``harvest-and-retrain`` flow: served feedback -> KTO data -> a gated version of the champion.

A LoRA champion of ``feedback-loop`` (tiny-gpt, 1 epoch on 40 unicode-lowercase pairs) is
registered by the real pipeline. Its interaction store (the SQLite file ``adaptflow serve``
writes) gets 24 answered chats with thumbs: the right name up, the same name in lower case
down. The flow harvests them, writes a KTO spec starting from ``models:/feedback-loop@champion``
and runs ``scheduled-retrain`` on it; run again with no new feedback, it trains nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import REPO

from adaptflow.settings import load_settings

pytestmark = pytest.mark.integration

NAME = "feedback-loop"
LOWERCASE = REPO / "examples" / "unicode-lowercase"


def _champion(folder: Path) -> dict[str, Any]:
    from flows.pipeline import adapt_pipeline
    from registry.models import promote

    spec = yaml.safe_load((LOWERCASE / "spec.yaml").read_text())
    pairs = folder / "pairs.jsonl"
    pairs.write_text("\n".join((LOWERCASE / "data" / "pairs.jsonl").read_text().splitlines()[:40]))
    spec |= {"name": NAME, "method": "lora", "base_model": "tiny-gpt"}
    spec["data"]["train"] = str(pairs)
    spec["train"] |= {"epochs": 1, "learning_rate": 0.01, "batch_size": 8, "max_new_tokens": 8}
    (folder / "sft.yaml").write_text(yaml.safe_dump(spec))
    result = adapt_pipeline(str(folder / "sft.yaml"))
    if not result["promoted"]:  # one epoch may not beat the base; the loop needs a champion
        promote(NAME, result["model_version"])
    return result


def _served_feedback() -> None:
    """24 prompts answered twice by version 1, rated up (right name) and down (lower case)."""
    from runtime.interactions import InteractionStore

    store = InteractionStore(load_settings().interactions_url, redact=lambda text: text)
    lines = (LOWERCASE / "data" / "pairs.jsonl").read_text().splitlines()[100:124]
    for n, line in enumerate(lines):
        pair = json.loads(line)
        for kind, answer, rating in (
            ("good", pair["target"], "up"),
            ("bad", pair["target"].lower(), "down"),
        ):
            ident = f"chatcmpl-{n}-{kind}"
            request = {"messages": [{"role": "user", "content": pair["text"]}]}
            response = {
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]
            }
            store.log(ident, NAME, "1", "chat", request, response, 12.0)
            store.add_feedback(ident, rating=rating)
    store.dispose()


def test_feedback_retrains_the_champion_once_and_not_again(tmp_path: Path) -> None:
    from flows.harvest import harvest_and_retrain
    from registry.models import version_tags

    first = _champion(tmp_path)
    _served_feedback()
    done = harvest_and_retrain(NAME, dataset="kto", epochs=2, learning_rate=0.005)
    assert done["harvest"]["datasets"]["kto"]["records"] == 48
    assert done["skipped"] is False
    retrained = done["retrain"]
    assert retrained["method"] == "kto" and retrained["model_version"] == "2"
    assert {"preference_accuracy", "reward_margin"} <= retrained["metrics"].keys()
    assert retrained["baseline"]["reward_margin"] == 0.0  # the champion is the reference
    tags = version_tags(NAME, "2")
    assert tags["adaptflow.parent"] == f"{NAME}/{first['model_version']}"
    assert tags["adaptflow.base_model_uri"] == f"models:/{NAME}@champion"
    spec = yaml.safe_load(Path(done["spec"]).read_text())
    assert spec["data"]["format"] == "kto" and spec["base_model"] == f"models:/{NAME}@champion"

    # no new feedback: the same curated data as the version trained on it -> nothing trains
    # (when version 2 became champion; otherwise the champion's data differs and it would
    # train again, so the check is on a forced comparison of the hashes below)
    again = harvest_and_retrain(NAME, dataset="kto", epochs=2, learning_rate=0.005)
    if retrained["promoted"]:
        assert again["skipped"] is True and "unchanged" in again["reason"]
    else:
        assert again["retrain"]["data_hash"] == retrained["curation"]["data_hash"]

    # too little feedback of a kind: nothing trains, and it says why
    pairs = harvest_and_retrain(NAME, dataset="dpo")
    assert pairs["skipped"] is True
    assert pairs["reason"].startswith("0 dpo records harvested from 48 feedback")
