"""The UI path in a real browser: Prefect's run form starts `adapt-pipeline`, MLflow shows champion.

Playwright drives Debian's Chromium (``/usr/bin/chromium``, no browser download) against the
servers `adaptflow up` starts on free loopback ports in a temporary ADAPTFLOW_HOME. In the Prefect
UI the test opens the `adapt-pipeline` deployment, Run -> Custom run, switches ``spec_path`` to
None and fills the inline ``spec`` form (rendered from the pydantic Spec), submits, and follows
the flow-run page until it shows Completed; then it finds the registered version with its
``champion`` alias on the MLflow UI's model page. Screenshots of each step are kept in
``$ADAPTFLOW_TEST_ARTIFACTS/browser/`` (default: ``test-artifacts/browser/`` in the repo).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from helpers import clean_env, missing_dependency

from adaptflow import servers
from adaptflow.samples import write_tiny_icl_spec

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium's own connections get refused on a closed
# network, and the page loads stall behind them.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MODEL = "browser-tiny"
FINAL_STATES = {"Completed", "Failed", "Crashed", "Cancelled", "TimedOut"}
RUN_TIMEOUT = 240  # seconds from Submit to a final state; the ICL run takes ~30 s here


def adaptflow(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "adaptflow", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=REPO,
    )


def artifacts_dir() -> Path:
    """Where the screenshots go: ``$ADAPTFLOW_TEST_ARTIFACTS/browser`` or the repo's."""
    root = os.environ.get("ADAPTFLOW_TEST_ARTIFACTS") or REPO / "test-artifacts"
    folder = Path(root) / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    return folder


def field(scope: Any, label: str) -> Any:
    """The schema-form property titled ``label`` (the UI appends " (Optional)") under ``scope``.

    The form's <label for=...> does not point at its input, so ``get_by_label`` finds nothing;
    the property's own header span is the stable handle.
    """
    title = f"normalize-space()='{label}' or normalize-space()='{label} (Optional)'"
    prop = "contains(concat(' ', normalize-space(@class), ' '), ' schema-form-property ')"
    header = "./div[contains(@class, 'p-label__header')]"
    name = f"span[contains(@class, 'schema-form-property__label')][{title}]"
    return scope.locator(f"xpath=.//div[{prop}][{header}//{name}]").first


def pick_type(prop: Any, kind: str) -> None:
    """Click the anyOf switch of ``prop`` (e.g. ``str``/``None``, ``Spec``/``None``)."""
    prop.get_by_role("button", name=kind, exact=True).first.click()


def choose(page: Any, prop: Any, option: str) -> None:
    """Pick ``option`` in the enum select of ``prop`` (a mouse click does not open its list)."""
    from playwright.sync_api import expect

    prop.locator("button.p-select-button__control").first.focus()
    page.keyboard.press("ArrowDown")
    page.get_by_role("option", name=option, exact=True).click()
    expect(prop.locator(".p-select-button__value").first).to_have_text(option)  # updates async


def fill_text(prop: Any, value: str) -> None:
    prop.locator("textarea").first.fill(value)


def flow_run_state(page: Any) -> str:
    badge = page.locator(".page-heading-flow-run__meta .state-badge").first
    return badge.inner_text().strip() if badge.count() else ""


def wait_for_final_state(page: Any, timeout: float) -> str:
    """Poll the flow-run page's state badge (reloading now and then) until a final state."""
    deadline = time.monotonic() + timeout
    last_reload = time.monotonic()
    state = ""
    while time.monotonic() < deadline:
        state = flow_run_state(page)
        if state in FINAL_STATES:
            return state
        if time.monotonic() - last_reload > 20:  # the page polls too; a reload is a fallback
            page.reload()
            last_reload = time.monotonic()
        page.wait_for_timeout(1000)
    return state


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.load(answer)


def launch_chromium(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


@pytest.mark.integration
def test_custom_run_from_the_prefect_ui_then_champion_in_mlflow(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not CHROMIUM.exists():
        missing_dependency(f"Chromium is not installed ({CHROMIUM}; apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing_dependency("the playwright package is not installed (pip install -e '.[dev]')")
    from mlflow import MlflowClient

    shots = artifacts_dir()
    with capsys.disabled():
        print(f"\nbrowser test screenshots: {shots}")
    spec_file = write_tiny_icl_spec(tmp_path / "spec", MODEL)
    data = spec_file.parent / "data" / "chars.jsonl"
    home = tmp_path / "home"
    env = clean_env(
        home,
        PREFECT_WORKER_QUERY_SECONDS="2",  # a short poll keeps Submit-to-running short
        PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",  # no cron deployment fires meanwhile
    )
    ports = ("--prefect-port", str(servers.free_port()), "--mlflow-port", str(servers.free_port()))
    worker_log = home / "servers" / "worker.log"
    try:
        started = adaptflow("up", *ports, "--json", env=env)
        assert started.returncode == 0, started.stderr
        up = json.loads(started.stdout)
        prefect_ui, mlflow_ui, api = (
            up["prefect_ui_url"],
            up["mlflow_tracking_uri"],
            up["prefect_api_url"],
        )
        deployed = adaptflow("deploy", "--json", env=env)
        assert deployed.returncode == 0, deployed.stderr
        deployment = {d["name"]: d for d in json.loads(deployed.stdout)["deployments"]}[
            "adapt-pipeline/adapt-pipeline"
        ]

        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(30_000)
            # what the UI's requests got wrong, for the failure message
            refused: list[str] = []
            page.on(
                "response",
                lambda r: (
                    refused.append(f"{r.status} {r.url}: {r.text()[:500]}")
                    if r.status >= 400
                    else None
                ),
            )
            try:
                # 1. the deployment page, and its Run -> Custom run form
                page.goto(f"{prefect_ui}/deployments/deployment/{deployment['id']}")
                run_button = page.get_by_role("button", name="Run", exact=True)
                run_button.wait_for()
                page.screenshot(path=shots / "1-deployment.png")
                run_button.click()
                page.get_by_text("Custom run", exact=True).click()
                page.wait_for_url(re.compile(r"/deployments/deployment/[^/]+/run"))

                # 2. spec_path -> None; the inline spec's form, from the pydantic Spec (a tall
                # window, so that the screenshot shows the fields filled)
                page.set_viewport_size({"width": 1400, "height": 2000})
                pick_type(field(page, "spec_path"), "None")
                spec = field(page, "spec")
                pick_type(spec, "Spec")
                fill_text(field(spec, "Name"), MODEL)
                choose(page, field(spec, "Task"), "classification")
                choose(page, field(spec, "Method"), "icl")
                data_form = field(spec, "Data")
                train = field(data_form, "Train")
                pick_type(train, "path")
                fill_text(train, str(data))
                id_field = field(data_form, "Id Field")
                pick_type(id_field, "str")
                fill_text(id_field, "id")
                page.screenshot(path=shots / "2-custom-run-form.png")
                with page.expect_response(
                    lambda r: r.request.method == "POST" and r.url.endswith("/create_flow_run")
                ) as created:
                    page.get_by_role("button", name="Submit", exact=True).click()
                assert created.value.ok, f"{created.value.status}: {created.value.text()}"
                run_id = created.value.json()["id"]

                # 3. follow the new flow run until it is final (the toast's "View run" link is
                # animated and doubled while it appears: the run's page is opened by its id)
                page.set_viewport_size({"width": 1400, "height": 1000})
                page.goto(f"{prefect_ui}/runs/flow-run/{run_id}")
                state = wait_for_final_state(page, RUN_TIMEOUT)
                page.screenshot(path=shots / "3-flow-run.png")
                assert state == "Completed", f"flow run {state!r}\n{worker_log.read_text()[-3000:]}"
                sent = get_json(f"{api}/flow_runs/{run_id}")["parameters"]
                (shots / "flow-run-parameters.json").write_text(json.dumps(sent, indent=2))
                assert sent["spec_path"] is None and sent["spec"]["name"] == MODEL
                assert sent["spec"]["task"] == "classification"

                # 4. the MLflow model page shows champion on the version this run registered
                registry = MlflowClient(tracking_uri=mlflow_ui, registry_uri=mlflow_ui)
                champion = registry.get_model_version_by_alias(MODEL, "champion")
                assert champion.tags["adaptflow.flow_run_id"] == run_id
                page.set_viewport_size({"width": 1800, "height": 1000})  # untruncated columns
                page.goto(f"{mlflow_ui}/#/models/{MODEL}")
                row = page.get_by_role("row").filter(
                    has=page.get_by_role("link", name=f"Version {champion.version}", exact=True)
                )
                alias = row.get_by_role("status").filter(has_text=re.compile(r"^@\s*champion$"))
                alias.wait_for()
                page.screenshot(path=shots / "4-mlflow-model.png")
                assert alias.count() == 1
            except BaseException as exc:
                page.screenshot(path=shots / "failure.png")
                if refused:
                    exc.add_note("refused requests:\n" + "\n".join(refused))
                raise
            finally:
                browser.close()

        # 5. `adaptflow run` in the same home runs its flow on the server `up` runs (seen in
        # its UI), not on an ephemeral server of its own
        ran = adaptflow("run", str(spec_file), "--json", env=env)
        assert ran.returncode == 0, ran.stderr[-3000:]
        banner = " ".join(ran.stderr.split())  # the banner wraps at the terminal's width
        assert f"Prefect {api}" in banner
        # ... and records it in the MLflow server `up` runs (the same store the UI shows)
        recorded = registry.get_run(json.loads(ran.stdout)["mlflow_run_id"])
        flow_run = get_json(f"{api}/flow_runs/{recorded.data.tags['adaptflow.flow_run_id']}")
        assert flow_run["state"]["type"] == "COMPLETED"
        assert f"MLflow {mlflow_ui}" in banner
        assert "Starting temporary server" not in ran.stderr
    finally:
        stopped = adaptflow("down", "--json", env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert sorted(p.name for p in shots.glob("*.png")) == [
        "1-deployment.png",
        "2-custom-run-form.png",
        "3-flow-run.png",
        "4-mlflow-model.png",
    ]
