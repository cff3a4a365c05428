"""``adaptflow serve``: the OpenAI-compatible server over a registered version, on loopback.

One instruction model is trained and registered by the real pipeline (version 1, champion);
the server runs as ``python -m adaptflow serve`` in its own process, and clients nobody here
wrote talk to it: the ``openai`` package, httpx, and MLflow's own scoring server for the same
registered version.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml
from helpers import REPO, Server, run_cli, write_jsonl

pytestmark = pytest.mark.integration

NAME = "serve-lower"
TOKEN = "serve-test-token-" + secrets.token_hex(8)
CANARY = "canary-" + secrets.token_hex(6)
LOWERCASE = REPO / "examples" / "unicode-lowercase"


def _lowercase_spec(folder: Path) -> Path:
    spec = yaml.safe_load((LOWERCASE / "spec.yaml").read_text())
    lines = (LOWERCASE / "data" / "pairs.jsonl").read_text().splitlines()[:160]
    (folder / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    spec |= {"name": NAME, "method": "full"}
    spec["data"]["train"] = str(folder / "pairs.jsonl")
    spec["train"] |= {"epochs": 4}
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """Version 1 of ``serve-lower`` (tiny-gpt, full fine-tuning), champion, and its answers."""
    from flows.pipeline import adapt_pipeline

    result = adapt_pipeline(str(_lowercase_spec(tmp_path_factory.mktemp("serve-spec"))))
    assert result["promoted"] and result["champion_version"] == "1"
    eval_file = next(Path(result["train"]["package_dir"]).parent.glob("eval/*.jsonl"))
    result["answers"] = [json.loads(line) for line in eval_file.read_text().splitlines()]
    return result


@pytest.fixture(scope="module")
def server(trained) -> Iterator[Server]:
    env = os.environ.copy() | {"ADAPTFLOW_SERVE_TOKEN": TOKEN, "ADAPTFLOW_CANARY_TOKEN": CANARY}
    running = Server(NAME, env)
    yield running
    running.stop()


def _client(server: Server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server.url}/v1", api_key=TOKEN, max_retries=0, timeout=120)


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def test_greedy_answers_over_http_are_the_answers_the_gate_scored(trained, server) -> None:
    client = _client(server)
    scored = trained["answers"][:4]
    for row in scored:
        reply = client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": row["text"]}]
        )
        assert reply.choices[0].message.content == row["prediction"]
        assert reply.model == f"{NAME}/1"
        assert reply.id.startswith("chatcmpl-")
        assert reply.usage.prompt_tokens > 0
    plain = client.completions.create(model=NAME, prompt=[r["text"] for r in scored])
    assert [c.text for c in plain.choices] == [r["prediction"] for r in scored]
    # the content may come as a list of text parts, as the OpenAI API allows
    parts = [
        {"type": "text", "text": scored[0]["text"][:10]},
        {"type": "text", "text": scored[0]["text"][10:]},
    ]
    reply = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": parts}]
    )
    assert reply.choices[0].message.content == scored[0]["prediction"]
    models = client.models.list()
    assert [(m.id, m.model_extra["version"]) for m in models.data] == [(NAME, "1")]


def test_streaming_sends_the_same_answer_token_by_token(trained, server) -> None:
    client = _client(server)
    row = trained["answers"][0]
    chunks = list(
        client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": row["text"]}], stream=True
        )
    )
    deltas = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert "".join(deltas) == row["prediction"]
    assert len(deltas) > 1  # really streamed, not one block
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].model == f"{NAME}/1"
    # the streamed answer is in the log by the time the stream ends: feedback finds it
    rated = httpx.post(
        f"{server.url}/v1/feedback", json={"id": chunks[0].id, "rating": "up"}, headers=_auth()
    )
    assert rated.status_code == 200 and rated.json()["rating"] == "up"


def test_bad_requests_get_a_4xx_with_an_openai_error_body(trained, server) -> None:
    chat = f"{server.url}/v1/chat/completions"
    ok = {"model": NAME, "messages": [{"role": "user", "content": "Name the lowercase form of: X"}]}
    cases = [
        (httpx.post(chat, content=b"{not json", headers=_auth()), 400, None),
        (httpx.post(chat, json={"model": NAME}, headers=_auth()), 400, None),
        (
            httpx.post(chat, json=ok | {"model": "someone-else"}, headers=_auth()),
            404,
            "model_not_found",
        ),
        (httpx.post(chat, json=ok | {"max_tokens": 100_000}, headers=_auth()), 400, None),
        (httpx.post(chat, json=ok | {"temperature": -1}, headers=_auth()), 400, None),
        (httpx.post(chat, json=ok), 401, "invalid_api_key"),
        (
            httpx.post(chat, json=ok, headers={"Authorization": "Bearer wrong"}),
            401,
            "invalid_api_key",
        ),
        (
            httpx.post(
                chat,
                json=ok | {"messages": [{"role": "user", "content": "word " * 400}]},
                headers=_auth(),
            ),
            400,
            "context_length_exceeded",
        ),
        (
            httpx.post(
                chat,
                json=ok | {"messages": [{"role": "assistant", "content": "hi"}]},
                headers=_auth(),
            ),
            400,
            None,
        ),
        (httpx.post(chat, content=b"x" * 1_100_000, headers=_auth()), 413, "request_too_large"),
        (httpx.post(f"{server.url}/v1/classify", json={"input": "a"}, headers=_auth()), 400, None),
        (
            httpx.post(
                f"{server.url}/v1/feedback", json={"id": "nope", "rating": "up"}, headers=_auth()
            ),
            404,
            "interaction_not_found",
        ),
        (httpx.post(f"{server.url}/v1/feedback", json={"id": "x"}, headers=_auth()), 400, None),
        (httpx.post(f"{server.url}/invocations", json={"rows": []}, headers=_auth()), 400, None),
        (httpx.get(f"{server.url}/v1/nothing-here", headers=_auth()), 404, "not_found"),
    ]
    for response, status, code in cases:
        body = response.json()
        assert response.status_code == status, body
        assert set(body["error"]) >= {"message", "type", "param", "code"}, body
        assert body["error"]["message"] and "Traceback" not in response.text
        assert body["error"]["code"] == code or code is None, body
    assert "Traceback" not in server.log.read_text()


def test_interactions_are_logged_redacted_and_feedback_is_harvested(
    trained, server, adaptflow_home
) -> None:
    client = _client(server)
    texts = [row["text"] for row in trained["answers"][4:8]]
    asked = f"key {CANARY} mail jo.bloggs@example.com"
    first = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": asked}]
    )
    second = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": texts[1]}]
    )
    third = client.completions.create(model=NAME, prompt=texts[2])
    sampled = client.chat.completions.create(
        model=NAME,
        messages=[{"role": "user", "content": texts[3]}],
        n=3,
        temperature=1.5,
        seed=11,
        max_tokens=12,
    )
    answers = [c.message.content for c in sampled.choices]
    assert len(answers) == 3 and len(set(answers)) > 1  # sampling, not greedy

    def feedback(**body) -> httpx.Response:
        return httpx.post(f"{server.url}/v1/feedback", json=body, headers=_auth())

    assert feedback(id=first.id, correction="latin small letter fixed").status_code == 200
    assert feedback(id=second.id, rating="down").status_code == 200
    assert feedback(id=second.id, rating="up").status_code == 200  # supersedes the "down"
    assert feedback(id=sampled.id, preferred=2).status_code == 200
    assert feedback(id=sampled.id, preferred=7).status_code == 400  # it had 3 choices
    # the canary secret and the e-mail address never reach the store (feedback flushed the
    # server's log writer: every answer given is in it)
    store = adaptflow_home / "serve" / "interactions.db"
    with sqlite3.connect(store) as db:  # every row of every table, the WAL's included
        everything = "\n".join(db.iterdump())
        rows = dict(db.execute("SELECT id, request FROM adaptflow_interactions").fetchall())
    assert first.id in everything and sampled.id in everything
    assert CANARY not in everything and "jo.bloggs@example.com" not in everything
    assert "<EMAIL>" in rows[first.id] and "***" in rows[first.id]

    done = run_cli("feedback", third.id, "--rating", "down", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == {
        "id": third.id,
        "rating": "down",
        "correction": None,
        "preferred": None,
    }

    done = run_cli("harvest", NAME, "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    # five pieces of feedback here, and the thumbs up on the streamed answer earlier
    assert summary["feedback"] == 6 and summary["interactions"] >= 5
    assert summary["dropped"] == {"superseded": 1} and summary["quarantined"] == 0
    assert (summary["input"], summary["kept"]) == (6, 5)
    folder = Path(summary["output"])
    sft = [json.loads(line) for line in (folder / "sft.jsonl").read_text().splitlines()]
    kto = [json.loads(line) for line in (folder / "kto.jsonl").read_text().splitlines()]
    dpo = [json.loads(line) for line in (folder / "dpo.jsonl").read_text().splitlines()]
    assert sft == [
        {
            "id": f"{first.id}-sft",
            "messages": [
                {
                    "role": "user",
                    "content": asked.replace("jo.bloggs@example.com", "<EMAIL>").replace(
                        CANARY, "***"
                    ),
                },
                {"role": "assistant", "content": "latin small letter fixed"},
            ],
        }
    ]
    streamed = trained["answers"][0]
    assert [(r["label"], r["completion"][0]["content"]) for r in kto] == [
        (True, streamed["prediction"]),
        (True, second.choices[0].message.content),
        (False, third.choices[0].text),
    ]
    assert [r["id"] for r in kto[1:]] == [f"{second.id}-kto", f"{third.id}-kto"]
    assert kto[0]["prompt"] == [{"role": "user", "content": streamed["text"]}]
    assert kto[2]["prompt"] == [{"role": "user", "content": texts[2]}]
    chosen = answers[2]
    rejected = list(dict.fromkeys(a for a in answers[:2] if a != chosen))
    assert [r["rejected"][0]["content"] for r in dpo] == rejected
    assert all(r["chosen"] == [{"role": "assistant", "content": chosen}] for r in dpo)
    assert summary["datasets"]["sft"]["records"] == 1 and summary["datasets"]["kto"]["records"] == 3
    assert (folder.parent / f"{folder.name}.dvc").is_file()
    assert summary["data_hash"].endswith(".dir")
    again = json.loads(run_cli("harvest", NAME, "--json").stdout)
    assert again["data_hash"] == summary["data_hash"]  # nothing new: the same version


def test_the_server_follows_the_alias_under_load_with_no_failed_request(trained, server) -> None:
    from mlflow import MlflowClient

    from registry.tracking import client as registry_client

    mlflow_client: MlflowClient = registry_client()
    first = mlflow_client.get_model_version(NAME, "1")
    # a second version of the same weights, as a user registers one in the MLflow UI
    second = str(mlflow_client.create_model_version(NAME, first.source, first.run_id).version)
    prompt = trained["answers"][0]["text"]
    seen: list[tuple[int, str]] = []  # (client thread, version), in each thread's order
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    total, clients, after = 480, 8, 80
    sent = itertools.count()
    answered_by_new = 0

    def one(i: int) -> None:
        nonlocal answered_by_new
        if i == total // 3:
            mlflow_client.set_registered_model_alias(NAME, "champion", second)
        started = time.perf_counter()
        try:
            response = httpx.post(
                f"{server.url}/v1/chat/completions",
                json={
                    "model": NAME,
                    "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": 8,
                },
                headers=_auth(),
                timeout=120,
            )
            body = response.json()
            assert response.status_code == 200, body
            assert body["model"] == f"{NAME}/{response.headers['X-Adaptflow-Version']}"
        except Exception as exc:  # counted, not raised: the test reports every failure
            with lock:
                failures.append(f"{type(exc).__name__}: {exc}")
            return
        with lock:
            latencies.append(time.perf_counter() - started)
            seen.append((threading.get_ident(), response.headers["X-Adaptflow-Version"]))
            answered_by_new += response.headers["X-Adaptflow-Version"] == second

    def client() -> None:
        # at least `total` requests, and on until `after` were answered by the new version
        # (however long loading it takes on a busy machine), at most 10 x total
        while (i := next(sent)) < total or (answered_by_new < after and i < 10 * total):
            one(i)

    try:
        with ThreadPoolExecutor(clients) as pool:
            for done in [pool.submit(client) for _ in range(clients)]:
                done.result()
        _check_the_switch(server, seen, failures, latencies, second, prompt)
        assert len(latencies) >= total and answered_by_new >= after
    finally:  # the later tests serve version 1
        mlflow_client.set_registered_model_alias(NAME, "champion", "1")


def _check_the_switch(
    server: Server,
    seen: list[tuple[int, str]],
    failures: list[str],
    latencies: list[float],
    second: str,
    prompt: str,
) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the poller may need one more period
        last = httpx.get(f"{server.url}/health").json()["version"]
        if last == second:
            break
        time.sleep(0.5)
    assert failures == []
    versions = [v for _, v in seen]
    assert set(versions) == {"1", second} and versions[0] == "1"
    assert last == second
    for thread in {t for t, _ in seen}:
        # one client's requests run one after another: once one was answered by the new
        # version, none of its later ones goes back to the old
        mine = [v for t, v in seen if t == thread]
        assert mine == sorted(mine, key=lambda v: v == second), mine
    latest = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": NAME, "messages": [{"role": "user", "content": prompt}]},
        headers=_auth(),
    )
    assert latest.headers["X-Adaptflow-Version"] == second
    assert latest.json()["model"] == f"{NAME}/{second}"
    ms = sorted(1000 * x for x in latencies)
    p50, p95 = statistics.median(ms), ms[int(0.95 * len(ms)) - 1]
    print(f"\nload: {len(ms)} requests, 8 clients: p50 {p50:.0f} ms, p95 {p95:.0f} ms")
    assert len(ms) == len(seen)


def test_mlflow_models_serve_answers_invocations_like_adaptflow(trained, server, tmp_path) -> None:
    import mlflow

    from adaptflow.servers import free_port
    from registry.tracking import client

    # what a fresh environment needs: published requirements, and the project's code inside
    where = mlflow.artifacts.download_artifacts(
        f"models:/{NAME}/1", dst_path=str(tmp_path), tracking_uri=client().tracking_uri
    )
    requirements = (Path(where) / "requirements.txt").read_text().split()
    assert not [r for r in requirements if r.startswith("adaptflow")]
    assert "torch==2.13.0" in requirements
    assert (Path(where) / "code" / "runtime" / "predictor.py").is_file()
    assert (Path(where) / "code" / "adaptflow" / "errors.py").is_file()

    port = free_port()
    log = Path(os.environ["ADAPTFLOW_HOME"]) / "mlflow-serve.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}/1",
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO,
        # MLflow execs `uvicorn` by name: the environment's bin folder must be on PATH, as it
        # is in an activated virtual environment
        env=os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        texts = [row["text"] for row in trained["answers"][:3]]
        deadline = time.monotonic() + 240
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        theirs = httpx.post(
            f"http://127.0.0.1:{port}/invocations", json={"inputs": texts}, timeout=120
        )
        assert theirs.status_code == 200, theirs.text
        ours = httpx.post(f"{server.url}/invocations", json={"inputs": texts}, headers=_auth())
        assert ours.status_code == 200, ours.text
        expected = [row["prediction"] for row in trained["answers"][:3]]
        assert theirs.json()["predictions"] == expected == ours.json()["predictions"]
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_classifier_is_served_with_labels_and_scores(tmp_path: Path) -> None:
    from flows.pipeline import adapt_pipeline

    topics = {
        "fruit": ["apples", "ripe bananas", "sweet cherries", "juicy oranges", "green pears"],
        "vehicles": [
            "a red bus",
            "the old tractor",
            "a fast motorbike",
            "the night train",
            "a small van",
        ],
    }
    rows = [
        {"id": f"{label}-{i}-{j}", "text": f"{template.format(thing)}", "label": label}
        for label, things in topics.items()
        for i, thing in enumerate(things)
        for j, template in enumerate(
            ("I like {}.", "Look at {} over there.", "We talked about {}.")
        )
    ]
    write_jsonl(tmp_path / "topics.jsonl", rows)
    spec = {
        "name": "serve-topics",
        "task": "classification",
        "base_model": "minilm",
        "method": "icl",
        "data": {"train": str(tmp_path / "topics.jsonl"), "id_field": "id"},
        "target": {"metric": "f1_macro", "min": 0.5},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = adapt_pipeline(str(tmp_path / "spec.yaml"))
    assert result["promoted"], result
    running = Server("serve-topics", os.environ.copy(), "--no-log")
    try:
        reply = httpx.post(
            f"{running.url}/v1/classify",
            json={"input": ["I like sweet apples.", "A fast red bus."]},
        )
        assert reply.status_code == 200, reply.text
        data = reply.json()["data"]
        assert [d["label"] for d in data] == ["fruit", "vehicles"]
        for d in data:
            assert set(d["scores"]) == {"fruit", "vehicles"}
            assert sum(d["scores"].values()) == pytest.approx(1.0)
            assert d["scores"][d["label"]] > 0.5
        assert reply.headers["X-Adaptflow-Version"] == "1"
        chat = httpx.post(
            f"{running.url}/v1/chat/completions",
            json={"model": "serve-topics", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert chat.status_code == 400 and "classify" in chat.json()["error"]["message"]
        feedback = httpx.post(f"{running.url}/v1/feedback", json={"id": "x", "rating": "up"})
        assert feedback.status_code == 400 and feedback.json()["error"]["code"] == "no_store"
    finally:
        running.stop()
