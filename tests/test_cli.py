import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ADAPTFLOW = [sys.executable, "-m", "adaptflow"]


def run_cli(
    *args: str, env: dict | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*ADAPTFLOW, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        input=stdin,
        timeout=300,
        cwd=REPO,
    )


def test_help_imports_no_heavy_library() -> None:
    probe = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from adaptflow.cli import app\n"
        "result = CliRunner().invoke(app, ['--help'])\n"
        "assert result.exit_code == 0, result.output\n"
        "assert 'run' in result.output and 'predict' in result.output\n"
        "heavy = ('torch', 'transformers', 'prefect', 'mlflow', 'dvc', 'peft')\n"
        "heavy = [m for m in heavy if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_schema_prints_json_schema() -> None:
    result = run_cli("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert schema["title"] == "Spec"
    assert "train" in schema["$defs"]["DataSpec"]["properties"]


def test_bad_spec_is_one_message_without_traceback(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: x\ntask: classification\nbase_model: minilm\ndata: {train: nope.jsonl}\nextra: 1\n"
    )
    result = run_cli("run", str(spec), "--json")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "data.train: not found" in result.stderr and "extra: unknown key" in result.stderr
    payload = json.loads(result.stdout)
    assert payload["kind"] == "SpecError" and str(spec) in payload["error"]


def test_method_not_runnable_yet_fails_before_work(tmp_path: Path) -> None:
    (tmp_path / "t.jsonl").write_text('{"text": "a", "label": "b"}\n')
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: x\ntask: classification\ndata: {train: t.jsonl}\nmethod: cpt\n")
    result = run_cli("run", str(spec))
    assert result.returncode == 2
    assert "method 'cpt' is not available for task 'classification'" in result.stderr
    assert "Traceback" not in result.stderr


def test_mlflow_server_down_is_a_clear_error(tmp_path: Path) -> None:
    result = run_cli(
        "promote", "some-model", "1", env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    )
    assert result.returncode == 3
    assert "MLflow tracking server is not reachable at http://127.0.0.1:9/health" in result.stderr
    assert "Traceback" not in result.stderr


def test_chroma_server_down_is_a_clear_error_with_no_password_shown(tmp_path: Path) -> None:
    from adaptflow.servers import free_port

    url = f"http://reader:hunter2-in-url@127.0.0.1:{free_port()}/chroma"
    result = run_cli("promote", "m", "1", "--json", env={"ADAPTFLOW_CHROMA_URL": url})
    assert result.returncode == 3
    error = json.loads(result.stdout)["error"]
    assert error.startswith(
        f"Chroma server is not reachable at {url.replace('reader:hunter2-in-url@', '')} ("
    )
    assert "hunter2" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_model_for_promote_and_rollback() -> None:
    result = run_cli("promote", "no-such-model", "1", "--json")
    assert result.returncode == 2
    assert json.loads(result.stdout)["error"] == "no registered model named 'no-such-model'"
    result = run_cli("rollback", "no-such-model")
    assert result.returncode == 2
    assert "no registered model named 'no-such-model'" in result.stderr


def test_predict_without_input_is_an_error() -> None:
    result = run_cli("predict", "models:/x@champion", stdin="")
    assert result.returncode == 2
    assert "no input" in result.stderr


def test_recommend_prints_the_ranking_of_every_method() -> None:
    spec = REPO / "examples" / "unicode-categories" / "spec.yaml"
    result = run_cli("recommend", str(spec), "--json")
    assert result.returncode == 0, result.stderr
    advice = json.loads(result.stdout)
    assert advice["recommended"] == "lora"  # the spec asks for custom behaviour
    assert advice["ladder"] == ["icl", "lora"]
    methods = [item["method"] for item in advice["ranking"]]
    assert sorted(methods) == sorted(
        ["icl", "rag", "lora", "dora", "ia3", "prefix", "prompt-tuning", "p-tuning", "qlora"]
        + ["freeze", "full", "cpt", "pretrain", "dpo", "orpo", "simpo", "kto", "grpo", "reward"]
        + ["prune", "distill"]
    )
    by_method = {item["method"]: item for item in advice["ranking"]}
    assert by_method["cpt"]["suitable"] is False and by_method["icl"]["suitable"] is True
    assert all(item["reasons"] for item in advice["ranking"])
    assert advice["facts"]["labelled"] == 780
    table = run_cli("recommend", str(spec))
    assert table.returncode == 0
    assert "recommended: lora" in table.stdout and "ladder: icl → lora" in table.stdout


def test_ladder_and_another_method_contradict(tmp_path: Path) -> None:
    (tmp_path / "t.jsonl").write_text('{"text": "a", "label": "b"}\n')
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: x\ntask: classification\ndata: {train: t.jsonl}\n")
    result = run_cli("run", str(spec), "--ladder", "--method", "lora")
    assert result.returncode == 2
    assert "--ladder and --method lora contradict each other" in result.stderr


def test_export_of_a_rag_package_is_one_clear_json_error(tmp_path: Path) -> None:
    """A RAG package's manifest names a collection, not weights: refused by kind, no crash."""
    package = tmp_path / "rag-package"
    package.mkdir()
    manifest = {
        "kind": "rag-retriever",
        "embedder": "minilm",
        "allow_pickle": False,
        "index": {"collection": "c", "chunks": 3},
        "retrieval": {"mode": "dense"},
    }
    (package / "adaptflow_model.json").write_text(json.dumps(manifest))
    result = run_cli("export", str(package), str(tmp_path / "out"), "--json")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert json.loads(result.stdout) == {
        "error": f"{package}: export works for generative packages (causal-lm, seq2seq-lm), "
        "not 'rag-retriever'",
        "kind": "AdaptflowError",
    }


def test_an_unexpected_failure_still_prints_one_json_error_object(tmp_path: Path) -> None:
    """Not an AdaptflowError (a hand-edited manifest breaks export): exit 1, one JSON object."""
    package = tmp_path / "broken"
    package.mkdir()
    manifest = {"kind": "causal-lm", "method": "full", "base_model": str(tmp_path / "gone"),
                "labels": [], "max_length": 16, "options": "not an object"}  # fmt: skip
    (package / "adaptflow_model.json").write_text(json.dumps(manifest))
    result = run_cli("export", str(package), str(tmp_path / "out"), "--json")
    assert result.returncode == 1, result.stderr[-2000:]
    payload = json.loads(result.stdout)  # exactly one object: json.loads refuses trailing text
    assert payload["kind"] == "InternalError"
    assert payload["error"].startswith("internal error (AttributeError: ")
    assert payload["error"].endswith("this is a bug in adaptflow")
    assert "Traceback" in result.stderr  # a bug keeps its traceback, on stderr only


_EXIT_PROBE = """
import atexit, os, sys
from pathlib import Path
import typer
from adaptflow import cli

marker = Path(sys.argv[1])

teardown = os.open(marker.with_suffix(".teardown"), os.O_WRONLY | os.O_CREAT)

def audit(event, _args, write=os.write):  # the interpreter's teardown raises this event
    if event == "cpython.PyInterpreterState_Clear":
        write(teardown, b"teardown ran")

sys.addaudithook(audit)

def probe(fail: bool = False) -> None:
    # a library's exit handler, registered while the command runs (after main's own)
    atexit.register(lambda: marker.write_text("handler ran"))
    print("x" * 200_000)  # more than a pipe holds: it must be flushed before the process ends
    if fail:
        raise RuntimeError("not a SystemExit: Python reports it and ends as usual")
    raise typer.Exit(5)

cli.app.command("probe")(probe)
sys.argv = ["adaptflow", "probe", *sys.argv[2:]]
cli.main()
"""


def test_a_command_ends_after_every_exit_handler_and_skips_the_teardown(tmp_path: Path) -> None:
    """``main``: the exit code and the piped output are kept, library exit handlers run, and
    the interpreter's teardown (module objects' destructors) is skipped; a command that raised
    something typer does not turn into an exit code ends as Python ends it."""
    marker = tmp_path / "handler"
    ended = subprocess.run([sys.executable, "-c", _EXIT_PROBE, str(marker)],
                           capture_output=True, text=True, timeout=120, cwd=REPO)  # fmt: skip
    assert ended.returncode == 5, ended.stderr[-2000:]
    assert ended.stdout == "x" * 200_000 + "\n"
    assert marker.read_text() == "handler ran"
    assert marker.with_suffix(".teardown").read_text() == ""
    marker.unlink()
    raised = subprocess.run([sys.executable, "-c", _EXIT_PROBE, str(marker), "--fail"],
                            capture_output=True, text=True, timeout=120, cwd=REPO)  # fmt: skip
    assert raised.returncode == 1
    assert "RuntimeError: not a SystemExit" in raised.stderr
    assert marker.read_text() == "handler ran"
    assert marker.with_suffix(".teardown").read_text() == "teardown ran"


def test_a_run_imports_with_no_cyclic_collection_and_freezes_what_it_imported() -> None:
    """``adaptflow run``'s checks and imports run with the collector off (they make almost no
    garbage); what is alive after is frozen, and collection is on again however they end."""
    import gc

    from adaptflow.cli import _imports_then_frozen

    collections: list[int] = []

    def count(phase: str, info: dict) -> None:
        if phase == "start":
            collections.append(info["generation"])

    class Cycle:
        def __init__(self) -> None:
            self.me = self

    gc.callbacks.append(count)
    try:
        frozen = gc.get_freeze_count()
        with _imports_then_frozen():
            assert not gc.isenabled()
            kept = [Cycle() for _ in range(50_000)]  # five young generations' worth
            for _ in range(50_000):
                Cycle()  # unreachable cycles: garbage the collector would have found
        assert collections == []
        assert gc.isenabled()
        assert gc.get_freeze_count() >= frozen + len(kept)
        try:
            with _imports_then_frozen():
                raise RuntimeError("a failed check")
        except RuntimeError:
            pass
        assert gc.isenabled()
        Cycle()
        gc.collect(0)
        assert collections == [0]  # collecting again after the block
    finally:
        gc.callbacks.remove(count)
        gc.unfreeze()
