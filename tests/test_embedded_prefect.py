"""The embedded Prefect server's flows run without heartbeats; a shared server's keep them."""

from __future__ import annotations

from prefect import flow
from prefect.settings import get_current_settings


@flow(name="heartbeat-probe-inner")
def _inner() -> int | None:
    return get_current_settings().flows.heartbeat_frequency


@flow(name="heartbeat-probe")
def _outer() -> tuple[int | None, int | None]:
    return get_current_settings().flows.heartbeat_frequency, _inner()


def test_flows_and_subflows_run_without_heartbeats_inside_and_with_them_outside() -> None:
    from prefect.settings import temporary_settings

    from flows.embedded import without_heartbeats

    # the test session itself runs inside ``without_heartbeats`` (conftest): restore Prefect's
    # default first, to see both sides
    with temporary_settings(restore_defaults={"flows.heartbeat_frequency"}):
        assert _outer() == (180, 180)  # Prefect's default: a heartbeat every 180 s
        with without_heartbeats():
            assert _outer() == (None, None)  # the flow and its subflow: no heartbeat thread
        assert get_current_settings().flows.heartbeat_frequency == 180
