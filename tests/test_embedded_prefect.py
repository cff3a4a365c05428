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


#: A command's embedded server, and flows on it; each test's program goes on from here.
_FLOWS = """
import os, signal, sys
from pathlib import Path
from flows.embedded import Starting, without_heartbeats

server = Starting(Path(os.environ["PREFECT_HOME"]))
from prefect import flow, task

@task(tags=["gpu"])
def double(x):
    return 2 * x

@flow(name="recorded-child")
def child(x):
    return double(x) + double(x + 1)

@flow(name="recorded-parent")
def parent():
    return child(1) + double(10)

server.wait()
with without_heartbeats():
    print(parent())
"""
_SCRIPT = (
    _FLOWS
    + """
import sqlite3, time
time.sleep(2)  # the events reached the server; unbatched, the recorder would have written
# the tasks' runs by now (the subflow's own task run is created by an API call, not recorded)
database = sqlite3.connect(Path(os.environ["PREFECT_HOME"]) / "prefect.db")
print(database.execute("select count(*) from task_run where name like 'double-%'").fetchone()[0])
print(database.execute("select count(*) from events").fetchone()[0])
print(database.execute("select count(*) from log").fetchone()[0])
"""
)


def _script_env(tmp_path) -> dict[str, str]:
    """The tests' environment for a program that starts its own embedded server in ``tmp_path``
    (with ``flows.embedded``'s settings, not the test session's)."""
    import os
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_SERVER_SERVICES")}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONPATH": str(repo)}
    env.pop("PREFECT_API_URL", None)
    return env


def test_the_embedded_server_records_every_task_run_event_and_log_when_it_stops(tmp_path) -> None:
    """Task runs, events and logs written at the end (``SERVER_WRITES_AT_STOP``,
    ``LOG_BATCHING``) still reach the home's database, and nothing of them before."""
    import sqlite3
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT], env=_script_env(tmp_path), cwd=Path(__file__).parents[1],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    answer, *written_while_running = done.stdout.strip().splitlines()[-4:]
    assert answer == "26"  # (2 + 4) + 20
    # batched: no task run, event or log written until the process ends and the server stops
    assert written_while_running == ["0", "0", "0"]
    database = sqlite3.connect(tmp_path / "prefect" / "prefect.db")
    events = dict(database.execute("select event, count(*) from events group by event"))
    assert events["prefect.flow-run.Completed"] == 2  # the parent's and the subflow's
    assert events["prefect.task-run.Completed"] == 3
    messages = [m for (m,) in database.execute("select message from log")]
    assert sum(m.startswith("Finished in state Completed") for m in messages) == 5
    flows = dict(database.execute("select f.name, count(*) from flow_run r join flow f "
                                  "on r.flow_id = f.id group by f.name"))  # fmt: skip
    assert flows == {"recorded-parent": 1, "recorded-child": 1}
    names = sorted(
        name.rsplit("-", 1)[0] for (name,) in database.execute("select name from task_run")
    )
    # three runs of the tagged task, and the parent's task run standing for its subflow
    assert names == ["double", "double", "double", "recorded-child"]


def test_the_server_process_imports_prefect_with_no_collection_then_runs_uvicorn(
    tmp_path,
) -> None:
    """``SERVER_BOOT``: the collector is back on after Prefect's server import, what that import
    left is frozen, the parent is watched, uvicorn's own command line reads the arguments, and
    a ``prefect.py`` in the working directory does not shadow Prefect."""
    import subprocess

    from flows.embedded import SERVER_BOOT, server_command

    # the same program, reporting the process's state just before uvicorn's command line runs
    probe = SERVER_BOOT.replace(
        "import uvicorn.main\n",
        "print(gc.isenabled(), gc.get_freeze_count(), sys.argv[0],"
        " [t.name for t in threading.enumerate()])\nimport uvicorn.main\n",
    )
    assert probe != SERVER_BOOT
    (tmp_path / "prefect.py").write_text("raise SystemExit('the working directory shadowed it')\n")
    done = subprocess.run(
        server_command("--version", boot=probe),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    state, version_line = done.stdout.strip().splitlines()[-2:]
    enabled, frozen, program, threads = state.split(maxsplit=3)
    assert (enabled, program) == ("True", "uvicorn")
    assert int(frozen) > 100_000  # Prefect's server and its dependencies, kept out of collections
    assert "'parent-watch'" in threads
    assert version_line.startswith("Running uvicorn ")


_ORPHANING = (
    _FLOWS
    + """
from prefect.events.worker import EventsWorker
EventsWorker.drain_all(timeout=30)  # the server holds the task runs' events, unwritten
print(server._process.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no exit handler runs: the server is never stopped
"""
)


def test_a_server_whose_command_died_stops_itself_and_writes_what_it_held(tmp_path) -> None:
    """A command killed outright leaves no server behind, and its task runs and events land."""
    import os
    import signal
    import sqlite3
    import subprocess
    import sys
    import time
    from pathlib import Path

    # files, not pipes: a server left running would hold a pipe open past the command's end
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with out.open("w") as stdout, err.open("w") as stderr:
        code = subprocess.run(
            [sys.executable, "-c", _ORPHANING], env=_script_env(tmp_path),
            cwd=Path(__file__).parents[1], stdout=stdout, stderr=stderr, timeout=300,
        ).returncode  # fmt: skip
    assert code == -signal.SIGKILL, err.read_text()[-2000:]
    answer, pid = out.read_text().strip().splitlines()[-2:]
    assert answer == "26"

    def alive(pid: int) -> bool:  # a zombie (not reaped by this container's init) has exited
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (FileNotFoundError, IndexError):
            return False

    deadline = time.monotonic() + 30
    while alive(int(pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    if alive(int(pid)):
        os.kill(int(pid), signal.SIGKILL)
        raise AssertionError("the orphaned server kept running")
    database = sqlite3.connect(tmp_path / "prefect" / "prefect.db")
    names = sorted(n.rsplit("-", 1)[0] for (n,) in database.execute("select name from task_run"))
    assert names == ["double", "double", "double", "recorded-child"]
    events = dict(database.execute("select event, count(*) from events group by event"))
    assert events["prefect.flow-run.Completed"] == 2  # the parent's and the subflow's
    assert events["prefect.task-run.Completed"] == 3
