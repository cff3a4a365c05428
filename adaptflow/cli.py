"""The ``adaptflow`` command line.

``--json`` prints exactly one JSON object on stdout; logs, progress bars and tables go to
stderr. User mistakes (bad spec, bad data, unreachable server) print one message and exit
non-zero without a traceback. Heavy libraries are imported inside commands so that
``adaptflow --help`` starts fast.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, redirect_stdout
from pathlib import Path
from typing import Annotated, Any, cast

import click
import typer
from rich.console import Console
from rich.table import Table

from adaptflow.errors import INTERNAL_ERROR_EXIT, TARGET_NOT_MET_EXIT, AdaptflowError

app = typer.Typer(
    help="Adapt open language models to your own data: curate -> adapt -> evaluate -> register.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]


@contextmanager
def _guard(json_mode: bool) -> Iterator[None]:
    """Run a command's work with stdout kept clean; turn user errors into one message.

    Libraries print progress and logs to stdout (the transformers Trainer's loss lines, DVC's
    notices); while the work runs, stdout is pointed at stderr so that stdout carries only the
    command's own result.
    """
    try:
        with redirect_stdout(sys.stderr):
            yield
    except AdaptflowError as exc:
        if json_mode:
            print(json.dumps({"error": str(exc), "kind": type(exc).__name__}))
        err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None
    except (click.exceptions.Exit, click.exceptions.ClickException, click.exceptions.Abort):
        raise
    except Exception as exc:  # a bug, not a user mistake: still one JSON object on stdout
        import traceback

        traceback.print_exc(file=sys.stderr)  # what a bug report needs
        message = f"internal error ({type(exc).__name__}: {exc}); this is a bug in adaptflow"
        if json_mode:
            print(json.dumps({"error": message, "kind": "InternalError"}))
        err.print(f"[bold red]error:[/] {message}", highlight=False, markup=False)
        raise typer.Exit(INTERNAL_ERROR_EXIT) from None


def _emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, indent=2, default=str))


class _HideUserTracebacks(logging.Filter):
    """Prefect logs every task/flow failure with a traceback; user mistakes need none."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, AdaptflowError):
            record.exc_info = None
            record.exc_text = None
            record.msg = f"{type(exc).__name__}: {exc}"
            record.args = ()
        return True


def _quiet_libraries() -> None:
    """Silence library chatter meant for library authors (before those libraries import)."""
    import os
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # Weight-loading and artifact-download bars flash by in well under a second; the bars
    # that matter (training, embedding) are drawn by tqdm directly and stay.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


#: The embedded Prefect server, starting in the background (``_prepare``), if one is.
_EMBEDDED: Any = None
#: Contexts entered once for the rest of the process (see ``_prefect_ready``).
_PROCESS_CONTEXTS = ExitStack()


def _prefect_ready() -> None:
    """Wait for the embedded Prefect server ``_prepare`` started, if any, before a flow runs.

    Its flows then run without heartbeats for the rest of this process (the settings context
    stays entered: nothing outlives the process to read them; ``flows.embedded``).
    """
    if _EMBEDDED is not None:
        _EMBEDDED.wait()
        from flows.embedded import without_heartbeats

        _PROCESS_CONTEXTS.enter_context(without_heartbeats())


def _reuse_running_servers(settings: Any, prefect: bool) -> Any:
    """The settings with the servers ``adaptflow up`` runs for this home, where they run.

    With no ``MLFLOW_TRACKING_URI`` set, the home's MLflow server (the runs its worker
    records keep their artifacts behind it, as ``mlflow-artifacts:`` URIs the bare store
    cannot read); with ``prefect`` and no ``PREFECT_API_URL``, its Prefect server, so flows
    run there (seen in its UI) instead of on a fresh ephemeral server, whose start is most of
    a short run's fixed cost. Set before MLflow and Prefect are imported.
    """
    import dataclasses
    import os

    from adaptflow.servers import running_url

    if not os.environ.get("MLFLOW_TRACKING_URI") and (url := running_url(settings, "mlflow")):
        os.environ["MLFLOW_TRACKING_URI"] = url
        settings = dataclasses.replace(settings, mlflow_tracking_uri=url)
    if prefect and not settings.prefect_api_url and (url := running_url(settings, "prefect")):
        os.environ["PREFECT_API_URL"] = url
        settings = dataclasses.replace(settings, prefect_api_url=url)
    return settings


def _prepare(check_prefect: bool = True) -> Any:
    """Apply settings (before prefect/mlflow import) and check configured servers."""
    from adaptflow.settings import apply_settings, load_settings
    from registry import health

    _quiet_libraries()
    settings = apply_settings(_reuse_running_servers(load_settings(), check_prefect))
    health.check_mlflow(settings.mlflow_tracking_uri)
    if settings.chroma_url:
        health.check_chroma(settings.chroma_url)
    if check_prefect:
        health.check_prefect(settings.prefect_api_url)
        if not settings.prefect_api_url:
            from flows.embedded import Starting

            global _EMBEDDED
            _EMBEDDED = Starting(settings.prefect_home)  # waited for in _prefect_ready
        # Logger-level filters see every record these loggers create, whichever handlers
        # Prefect's logging set-up attaches later.
        for name in ("prefect.flow_runs", "prefect.task_runs"):
            logging.getLogger(name).addFilter(_HideUserTracebacks())
    where = settings.prefect_api_url or "embedded (ephemeral)"
    err.print(
        f"[dim]adaptflow: home {settings.home} | MLflow {settings.mlflow_tracking_uri} | "
        f"Prefect {where}[/]",
        highlight=False,
    )
    return settings


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "–" if value is None else str(value)


def _summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title=f"{summary['name']}: {summary['method']}", title_justify="left")
    table.add_column("metric")
    table.add_column("candidate", justify="right")
    table.add_column("baseline (no training)", justify="right")
    table.add_column("champion before", justify="right")
    before = summary.get("champion_metrics_before") or {}
    for key, value in summary["metrics"].items():
        table.add_row(key, _fmt(value), _fmt(summary["baseline"].get(key)), _fmt(before.get(key)))
    return table


@app.command()
def run(
    spec: Annotated[Path, typer.Argument(help="Use-case spec (YAML).")],
    method: Annotated[
        str | None, typer.Option(help="Override the spec's method (auto, ladder, icl, lora, ...).")
    ] = None,
    ladder: Annotated[
        bool, typer.Option("--ladder", help="Climb the escalation ladder (= --method ladder).")
    ] = False,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="Set a spec field over the file's, by dotted key (repeatable): "
            "--set train.learning_rate=3e-4 --set train.epochs=2. The value is read as YAML.",
        ),
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Run the whole pipeline (curate -> adapt -> evaluate -> register) as a Prefect flow.

    Exits 4 when the ladder ran and no rung met the target (the best is registered as
    challenger, not promoted).
    """
    with _guard(json_out):
        from adaptflow.catalogue import base_family, registered_reference
        from adaptflow.hardware import check_capabilities
        from adaptflow.methods import check_method
        from adaptflow.spec import Method, load_spec, parse_overrides

        if ladder and method not in (None, "ladder"):
            raise AdaptflowError(f"--ladder and --method {method} contradict each other")
        method = "ladder" if ladder else method
        overrides = parse_overrides(set_ or [])
        parsed = load_spec(spec, overrides)  # a bad spec fails here, before any server starts
        registered = registered_reference(parsed.base_model) is not None
        if parsed.task == "retrieval-qa":
            parsed.require_questions()
        # the embedded Prefect server starts in the background from here: the checks and
        # imports below (torch's first, ~1 s) overlap with it
        with _imports_then_frozen():
            _prepare()
            requested = method or parsed.method
            train = parsed.train
            check_capabilities(parsed.task, requested, train.precision, train.devices)
            pinned = parsed
            if registered:  # no such version, or not a generative one, fails before any work
                from flows.steps import with_registered_base

                pinned = with_registered_base(parsed, requested)
            # the base model's config, read before any work: a typo or an unreachable hub fails
            # here in seconds, and an encoder base rules out the generative methods
            family = base_family(pinned.base_model)
            check_method(parsed.task, requested, family)
            from flows.pipeline import adapt_pipeline, adapter_of
            from registry.tracking import client

            client()  # the MLflow store's set-up, while the embedded Prefect server starts
            if requested not in ("auto", "ladder", "rag"):  # those choose their methods in the flow
                from tasks.train.methods import check_target_modules

                # the flow checks it again; here a typo fails before the wait for the server, and
                # the transformers and peft imports the check needs (~2 s, which training needs
                # anyway) overlap with a new home's first server start
                check_target_modules(
                    pinned.base_model,
                    family,
                    adapter_of(pinned, requested),
                    pinned.train.target_modules,
                )
            _prefect_ready()
        # check_method above let through only names in the spec's Method literal
        summary = adapt_pipeline(str(spec), cast("Method | None", method), overrides=overrides)
    ladder_missed = summary["ladder"] is not None and not summary["ladder"]["target_met"]
    if json_out:
        _emit(summary)
    else:
        _print_run(summary)
    if ladder_missed:
        err.print(
            f"[bold yellow]no rung met the target[/] {summary['target']['metric']} ≥ "
            f"{summary['target']['min']}; the best, {summary['method']}, is registered as "
            f"challenger version {summary['model_version']}, not promoted "
            f"(exit code {TARGET_NOT_MET_EXIT})",
            highlight=False,
        )
        raise typer.Exit(TARGET_NOT_MET_EXIT)


def _ladder_table(summary: dict[str, Any]) -> Table:
    ladder = summary["ladder"]
    metric = summary["target"]["metric"]
    table = Table(title=f"escalation ladder (target {metric} ≥ {summary['target']['min']})")
    for column in ("rung", "method", metric, "meets target", "est. train h", "train s"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for i, rung in enumerate(ladder["rungs"], start=1):
        hours = rung["estimate"].get("train_gpu_hours")
        table.add_row(
            str(i),
            rung["method"],
            _fmt(rung["metrics"][metric]),
            "yes" if rung["met_target"] else "no",
            "?" if hours is None else f"{hours:.3g}",
            f"{rung['train_seconds']:.1f}",
        )
    for method in ladder["planned"][len(ladder["rungs"]) :]:
        table.add_row("", f"[dim]{method}[/]", "[dim]not needed[/]", "", "", "")
    return table


def _print_run(summary: dict[str, Any]) -> None:
    if summary["ladder"] is not None:
        err.print(_ladder_table(summary))
    err.print(_summary_table(summary))
    cur = summary["curation"]
    index = summary["train"].get("index")
    if index is not None:
        err.print(
            f"index: {index['chunks']} chunks in {index['collection']} ({index['embedded']} "
            f"embedded, {index['deleted']} deleted this run; version {index['index_version']})",
            highlight=False,
        )
    err.print(
        f"{'questions' if index else 'curation'}: input {cur['input']}, kept {cur['kept']}, "
        f"dropped {sum(cur['dropped'].values())}, quarantined {cur['quarantined']}"
        f" (data {cur['data_hash']})\n"
        f"registered [bold]{summary['name']}[/] version {summary['model_version']} "
        f"(challenger); champion is version {summary['champion_version']}"
        f" — {'promoted' if summary['promoted'] else 'not promoted'}: {'; '.join(summary['gate'])}"
        f"\nMLflow run {summary['mlflow_run_id']}",
        highlight=False,
    )


@app.command()
def recommend(
    spec: Annotated[Path, typer.Argument(help="Use-case spec (YAML).")],
    json_out: JsonFlag = False,
) -> None:
    """Rank every adaptation method for the spec (advice only; nothing runs)."""
    with _guard(json_out):
        from adaptflow.spec import load_spec

        parsed = load_spec(spec)
        _quiet_libraries()
        from adaptflow.catalogue import registered_reference

        if registered_reference(parsed.base_model) is not None:
            _prepare(check_prefect=False)  # the registry holds the base model
            from flows.steps import with_registered_base

            parsed = with_registered_base(parsed, parsed.method)
        from tasks.advise import recommend as advise_spec

        advice = advise_spec(parsed).as_dict()
    if json_out:
        _emit(advice)
        return
    console = Console()
    if not console.is_terminal:  # piped or captured: no terminal width to respect
        console = Console(width=160)
    console.print(_advice_table(advice))
    for note in advice["notes"]:
        err.print(f"[dim]note: {note}[/]", highlight=False)


def _count(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def _advice_table(advice: dict[str, Any]) -> Table:
    facts = advice["facts"]
    table = Table(
        title=f"recommended: [bold]{advice['recommended'] or 'nothing suitable'}[/]"
        + (
            f" (runs here: {advice['recommended_runnable']})"
            if advice["recommended_runnable"] not in (None, advice["recommended"])
            else ""
        )
        + f" — ladder: {' → '.join(advice['ladder']) or 'none'}",
        caption=f"{facts['labelled']:,} labelled examples, {facts['labelled_tokens']:,} tokens; "
        f"model {_count(facts['params'])} params; budget {facts['budget_hours']:g} h on "
        f"{facts['hardware']}",
        title_justify="left",
        show_lines=True,
    )
    table.caption = (table.caption or "") + " | * suitable, not runnable in this version"
    table.add_column("method", no_wrap=True)
    table.add_column("suitable", justify="center", no_wrap=True)
    table.add_column("train h", justify="right")
    table.add_column("peak GB", justify="right")
    table.add_column("tokens/query", justify="right")
    table.add_column("reasons", min_width=50, ratio=1)
    for item in advice["ranking"]:
        est = item["estimate"]
        hours = est["train_gpu_hours"]
        memory = est["peak_memory_gb"]
        verdict = "[green]yes[/]" if item["suitable"] else "[red]no[/]"
        if item["suitable"] and not item["runnable"]:
            verdict += "[dim]*[/]"
        table.add_row(
            item["method"],
            verdict,
            "?" if hours is None else f"{hours:.3g}",
            "?" if memory is None else f"{memory:.2f}",
            f"{est['inference_tokens_per_query']:g}",
            "\n".join(f"• {reason}" for reason in item["reasons"]),
        )
    return table


@app.command()
def curate(
    spec: Annotated[Path, typer.Argument(help="Use-case spec (YAML).")],
    json_out: JsonFlag = False,
) -> None:
    """Curate the spec's data only: read, run the curation blocks, split, version with DVC."""
    with _guard(json_out):
        from adaptflow.spec import load_spec

        parsed = load_spec(spec)
        if parsed.task == "retrieval-qa":
            parsed.require_questions()  # before any server starts
        _prepare()
        _prefect_ready()
        if parsed.task == "retrieval-qa":
            from flows.rag import curate_knowledge

            summary = curate_knowledge(parsed)
        else:
            from flows.curate import curate as curate_flow

            summary = curate_flow(parsed)
    if json_out:
        _emit(summary)
        return
    if parsed.task == "retrieval-qa":
        _print_knowledge(summary)
        return
    funnel = Table("step", "records", title="curation funnel", title_justify="left")
    for step, count in summary["funnel"]:
        funnel.add_row(step, f"{count:,}")
    err.print(funnel)
    dropped = ", ".join(f"{k} {v}" for k, v in summary["dropped"].items()) or "none"
    pii = ", ".join(f"{k} {v}" for k, v in summary["pii"].items()) or "none"
    err.print(
        f"input {summary['input']}: kept {summary['kept']} (train {summary['train_examples']}, "
        f"eval {summary['eval_examples']}), dropped {sum(summary['dropped'].values())} "
        f"({dropped}), quarantined {summary['quarantined']}; PII redacted: {pii}\n"
        f"{summary['shards']} shard(s) on {summary['shard_processes']} process(es)\n"
        f"output {summary['output']}\nreport {summary['report']}\nDVC hash {summary['data_hash']}",
        highlight=False,
    )


def _print_knowledge(summary: dict[str, Any]) -> None:
    knowledge = summary["knowledge"]
    skipped = "".join(f"\n  skipped {s}: {why}" for s, why in knowledge["skipped"].items())
    flagged = "".join(f"\n  flagged {s}: {', '.join(n)}" for s, n in knowledge["flagged"].items())
    err.print(
        f"knowledge: {knowledge['files']} files, {knowledge['documents']} readable{skipped}"
        f"{flagged}\nquestions: input {summary['input']}: kept {summary['kept']}, dropped "
        f"{sum(summary['dropped'].values())}, quarantined {summary['quarantined']}\n"
        f"output {summary['output']}\nreport {summary['report']}\nDVC hash {summary['data_hash']}",
        highlight=False,
    )


@app.command()
def index(
    spec: Annotated[Path, typer.Argument(help="A retrieval-qa spec (YAML).")],
    json_out: JsonFlag = False,
) -> None:
    """Index (or re-index) the spec's knowledge folder: only added or changed files are embedded.

    The collection is the one the spec's registered RAG versions search, so this refreshes
    what they serve without a new version.
    """
    with _guard(json_out):
        from adaptflow.spec import load_spec

        parsed = load_spec(spec)
        if parsed.data.knowledge is None:
            raise AdaptflowError(f"{spec}: data.knowledge is not set; nothing to index")
        settings = _prepare(check_prefect=False)
        from tasks.rag.package import index_knowledge
        from tasks.tracking import refresh_retrieval

        retrieval = refresh_retrieval(
            parsed.name, parsed.retrieval.model_dump(), parsed.retrieval_to_choose()
        )
        result = index_knowledge(
            parsed.name,
            parsed.data.knowledge,
            parsed.base_model,
            retrieval,
            settings.home,
            settings.chroma_url,
            parsed.allow_pickle,
        )
    if json_out:
        _emit(result)
        return
    files = ", ".join(f"{k} {v}" for k, v in result["files"].items())
    err.print(
        f"{result['collection']}: {result['chunks']} chunks; embedded {result['embedded']}, "
        f"deleted {result['deleted']}, moved {result['updated']} in {result['seconds']:.1f} s\n"
        f"files: {files}; skipped {len(result['ingest']['skipped'])}, flagged "
        f"{len(result['ingest']['flagged'])}\nindex version {result['index_version']}",
        highlight=False,
    )


def _passages(prediction: dict[str, Any]) -> str:
    return "\n".join(
        f"[{p['rank']}] {p['source']}" + (f" — {p['title']}" if p["title"] else "")
        for p in prediction["passages"]
    )


@app.command()
def predict(
    model_uri: Annotated[str, typer.Argument(help="e.g. models:/NAME@champion")],
    texts: Annotated[
        list[str] | None, typer.Argument(help="Inputs; read from stdin if none.")
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Predict with a registered model (one input per argument or per stdin line)."""
    with _guard(json_out):
        inputs = list(texts or [])
        if not inputs and not sys.stdin.isatty():
            inputs = [line.rstrip("\n") for line in sys.stdin if line.strip()]
        if not inputs:
            raise AdaptflowError("no input: pass texts as arguments or one per line on stdin")
        _prepare(check_prefect=False)
        from registry.models import load_model

        # Classifiers give a label per input; RAG packages give ranked passages and a prompt;
        # reward models a score (a number stays a number in --json)
        raw = list(load_model(model_uri).predict(inputs))
        predictions = [_prediction(p) for p in raw]
    if json_out:
        _emit({"model_uri": model_uri, "predictions": predictions})
        return
    table = Table("input", "prediction")
    for text, found in zip(inputs, predictions, strict=True):
        shown = _passages(found) if isinstance(found, dict) else str(found)
        table.add_row(text if len(text) < 80 else text[:77] + "...", shown)
    Console().print(table)


def _prediction(value: Any) -> Any:
    """A prediction as JSON shows it: a dict or a number as it is, anything else as text."""
    from numbers import Real

    if isinstance(value, dict):
        return value
    if isinstance(value, Real) and not isinstance(value, bool):
        return float(value)
    return str(value)


@app.command()
def export(
    model_uri: Annotated[
        str, typer.Argument(help="models:/NAME@ALIAS, models:/NAME/VERSION, or a package folder.")
    ],
    out_dir: Annotated[Path, typer.Argument(help="Folder for the exported package (new).")],
    int8: Annotated[
        bool, typer.Option("--int8", help="Write a dynamically quantized int8 package (CPU).")
    ] = False,
    eval_file: Annotated[
        Path | None,
        typer.Option("--eval", help="JSONL with text and target: score source, fp32 and int8."),
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Export a generative model as full weights: adapter merged, optionally int8."""
    with _guard(json_out):
        import tempfile

        from adaptflow.errors import DataError

        rows = None
        if eval_file is not None:
            from tasks.curate.records import read_jsonl

            try:
                rows = read_jsonl(eval_file)
            except (OSError, ValueError) as exc:
                raise DataError(f"--eval {eval_file}: {exc}") from None
            if not rows:
                raise DataError(f"--eval {eval_file}: no rows")
            for line, row in enumerate(rows, start=1):
                if not {"text", "target"} <= set(row):
                    raise DataError(f"--eval {eval_file}: row {line} has no 'text' and 'target'")
        with tempfile.TemporaryDirectory(prefix="adaptflow-download-") as scratch:
            if model_uri.startswith("models:/"):
                _prepare(check_prefect=False)
                from registry.models import download_package

                package = download_package(model_uri, Path(scratch))
            else:
                package = Path(model_uri)
                if not (package / "adaptflow_model.json").is_file():
                    raise AdaptflowError(
                        f"{model_uri} is neither a models:/ URI nor a model package folder"
                    )
                _quiet_libraries()
            from tasks.train.export import export_package

            report = export_package(package, out_dir, int8=int8, eval_rows=rows)
        report["source"] = model_uri
    if json_out:
        _emit(report)
        return
    _print_export(report)


def _print_export(report: dict[str, Any]) -> None:
    sizes = report["size_bytes"]
    lines = [f"exported {report['source']} ({report['method']}) to {report['output']}"]
    if report["merge"]:
        merge = report["merge"]
        lines.append(
            f"merged adapter: {merge['greedy_agree']}/{merge['prompts']} greedy answers "
            f"identical, max |logit diff| {merge['max_abs_logit_diff']:.2e}"
        )
    lines.append(f"size: fp32 {sizes['fp32'] / 1e6:.2f} MB")
    if report["quantization"]:
        quant, latency = report["quantization"], report["latency_ms"]
        lines[-1] += f", int8 {sizes['int8'] / 1e6:.2f} MB"
        lines.append(
            f"int8: {quant['linear_layers']} linear layers, {quant['params_int8']:,} of "
            f"{quant['params_int8'] + quant['params_fp32']:,} params; "
            f"{quant['greedy_agree']}/{quant['prompts']} greedy answers as fp32, "
            f"max |logit diff| {quant['max_abs_logit_diff']:.3f}"
        )
        lines.append(
            f"latency: fp32 {latency['fp32']:.1f} ms, int8 {latency['int8']:.1f} ms per answer "
            f"of {latency['new_tokens']} tokens ({latency['threads']} threads)"
        )
    if report["metrics"]:
        metrics = report["metrics"]
        table = Table("metric", "source", "fp32", "int8", "change", title="eval")
        for key, value in metrics["fp32"].items():
            int8_value = metrics["int8"][key] if metrics["int8"] else None
            change = metrics["change"][key] if metrics["change"] else None
            table.add_row(
                key, _fmt(metrics["source"][key]), _fmt(value), _fmt(int8_value), _fmt(change)
            )
        err.print(table)
    err.print("\n".join(lines), highlight=False)


@app.command()
def promote(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="Version to make champion.")],
    json_out: JsonFlag = False,
) -> None:
    """Point the ``champion`` alias at VERSION (a human decision; no gate)."""
    with _guard(json_out):
        _prepare(check_prefect=False)
        from registry.models import promote as do_promote

        result = do_promote(name, version)
    _report_alias(result, json_out)


@app.command()
def rollback(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    json_out: JsonFlag = False,
) -> None:
    """Move ``champion`` back to the version it replaced."""
    with _guard(json_out):
        _prepare(check_prefect=False)
        from registry.models import rollback as do_rollback

        result = do_rollback(name)
    _report_alias(result, json_out)


def _report_alias(result: dict[str, Any], json_out: bool) -> None:
    if json_out:
        _emit(result)
    else:
        err.print(
            f"{result['name']}: champion is version {result['champion_version']} "
            f"(was {result['previous']})",
            highlight=False,
        )


@app.command()
def serve(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    alias: Annotated[str, typer.Option(help="The alias to serve and follow.")] = "champion",
    host: Annotated[str, typer.Option(help="Interface to listen on (loopback by default).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    poll_seconds: Annotated[
        float, typer.Option(help="How often to re-read the alias (a move switches versions).")
    ] = 5.0,
    max_tokens: Annotated[int, typer.Option(help="Most new tokens a request may ask for.")] = 512,
    max_request_bytes: Annotated[int, typer.Option(help="Largest request body.")] = 1_000_000,
    no_log: Annotated[
        bool, typer.Option("--no-log", help="Keep no interaction log (feedback is refused).")
    ] = False,
) -> None:
    """Serve a registered model over HTTP (OpenAI-compatible), following its alias.

    Routes: /v1/chat/completions (also stream: true), /v1/completions, /v1/models,
    /v1/classify, /v1/feedback, /invocations (MLflow's shape), /health. Every answer names
    its version; requests and answers are logged (redacted) for `adaptflow harvest`. A bearer
    token is required when ADAPTFLOW_SERVE_TOKEN is set (or mapped to a Prefect Secret block).
    """
    with _guard(False):
        if not 0 < port < 65536:
            raise AdaptflowError(f"--port must be 1..65535, got {port}")
        if poll_seconds <= 0 or max_tokens < 1 or max_request_bytes < 1:
            raise AdaptflowError("--poll-seconds, --max-tokens and --max-request-bytes must be > 0")
        settings = _prepare(check_prefect=False)
        from adaptflow.secrets import load_secret_blocks

        load_secret_blocks()
        from serve.app import ServeConfig
        from serve.run import serve_forever, token_from_env

        serve_forever(
            settings,
            name,
            alias,
            host,
            port,
            poll_seconds,
            ServeConfig(token_from_env(), max_tokens, max_request_bytes),
            log_interactions=not no_log,
            announce=lambda line: err.print(line, highlight=False, markup=False),
        )


def _interaction_store() -> tuple[Any, Any]:
    """The settings and the served models' interaction store, redacting as the server does."""
    settings = _prepare(check_prefect=False)
    from adaptflow.secrets import load_secret_blocks
    from runtime.interactions import InteractionStore
    from serve.run import redactor

    load_secret_blocks()  # a secret kept only in a Prefect block is redacted too
    return settings, InteractionStore(settings.interactions_url, redactor())


@app.command()
def feedback(
    interaction_id: Annotated[str, typer.Argument(help="The `id` of a served answer.")],
    rating: Annotated[str | None, typer.Option(help="up or down.")] = None,
    correction: Annotated[str | None, typer.Option(help="The answer it should have given.")] = None,
    preferred: Annotated[
        int | None, typer.Option(help="Index of the best of the answer's choices (n > 1).")
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Record feedback on a served answer (as POST /v1/feedback does)."""
    with _guard(json_out):
        _, store = _interaction_store()
        saved = store.add_feedback(interaction_id, rating, correction, preferred)
        store.dispose()
    result = saved.as_dict()
    if json_out:
        _emit(result)
        return
    err.print(f"feedback recorded on {interaction_id}", highlight=False)


@app.command()
def harvest(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    json_out: JsonFlag = False,
) -> None:
    """Turn a served model's feedback into SFT, KTO and DPO datasets (curated, DVC-versioned)."""
    with _guard(json_out):
        from tasks.harvest import harvest as harvest_feedback

        settings, store = _interaction_store()
        summary = harvest_feedback(name, store, settings.harvest_dir, settings.home)
        store.dispose()
    if json_out:
        _emit(summary)
        return
    table = Table("dataset", "records", "file")
    for kind, info in summary["datasets"].items():
        table.add_row(kind, str(info["records"]), info["path"])
    Console(stderr=True).print(table)
    err.print(
        f"{summary['interactions']} interactions, {summary['feedback']} feedback; dropped "
        f"{summary['dropped'] or 'none'}; quarantined {summary['quarantined']}; "
        f"DVC {summary['data_hash']}",
        highlight=False,
    )


@app.command()
def schema() -> None:
    """Print the use-case spec's JSON schema."""
    from adaptflow.spec import spec_json_schema

    _emit(spec_json_schema())


@app.command()
def up(
    prefect_port: Annotated[int, typer.Option(help="Prefect server (API and UI) port.")] = 4200,
    mlflow_port: Annotated[int, typer.Option(help="MLflow server port.")] = 5000,
    worker_port: Annotated[
        int, typer.Option(help="Port of the worker's health endpoint (0: a free one).")
    ] = 0,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each to be healthy.")] = 180,
    json_out: JsonFlag = False,
) -> None:
    """Start a Prefect server, an MLflow server and a process worker on 127.0.0.1.

    They run in the background (pid files and logs in ADAPTFLOW_HOME/servers/) on the same
    stores as the embedded default. Prints the URLs, and on stdout the `export` lines that
    point adaptflow at them: eval "$(adaptflow up)". Running again reports what already runs.
    """
    with _guard(json_out):
        from adaptflow.servers import find_repo
        from adaptflow.servers import up as start_servers
        from adaptflow.settings import load_settings

        settings = load_settings()
        result = start_servers(
            settings,
            find_repo(),
            prefect_port,
            mlflow_port,
            worker_port,
            timeout,
            log=lambda line: err.print(f"[dim]{line}[/]", highlight=False),
        )
    if json_out:
        _emit(result)
        return
    state = "already running" if not result["started"] else "running"
    err.print(
        f"Prefect UI   {result['prefect_ui_url']}\nPrefect API  {result['prefect_api_url']}\n"
        f"MLflow       {result['mlflow_tracking_uri']}\n"
        f"worker       pool {result['worker_pool']} ({state}; logs in "
        f"{Path(result['logs']['worker']).parent})",
        highlight=False,
    )
    print("\n".join(result["exports"]))


@app.command()
def down(
    timeout: Annotated[
        float, typer.Option(help="Seconds between SIGTERM and SIGKILL for each.")
    ] = 15,
    json_out: JsonFlag = False,
) -> None:
    """Stop the servers and worker `adaptflow up` started for this ADAPTFLOW_HOME."""
    with _guard(json_out):
        from adaptflow.servers import down as stop_servers
        from adaptflow.settings import load_settings

        result = stop_servers(load_settings(), timeout)
    if json_out:
        _emit(result)
        return
    for name, stopped in result["stopped"].items():
        err.print(f"{name}: stopped pid {stopped['pid']} ({stopped['signal']})", highlight=False)
    if not result["stopped"]:
        err.print("nothing was running", highlight=False)


@app.command()
def deploy(json_out: JsonFlag = False) -> None:
    """Register prefect.yaml's deployments with a Prefect server.

    Creates the work pool (type process) and the `gpu` task concurrency limit (1) when
    missing. The server is PREFECT_API_URL, or the one `adaptflow up` runs for this home.
    """
    with _guard(json_out):
        import os

        from adaptflow.errors import ServiceError
        from adaptflow.servers import find_repo, healthy, running_prefect_url
        from adaptflow.settings import apply_settings, load_settings

        settings = load_settings()
        api_url = settings.prefect_api_url or running_prefect_url(settings)
        if api_url is None:
            raise ServiceError(
                "no Prefect server to deploy to: set PREFECT_API_URL, or start one with "
                "`adaptflow up`"
            )
        if not healthy(api_url.rstrip("/") + "/health", timeout=5):
            raise ServiceError(
                f"Prefect server is not reachable at {api_url}: start one with `adaptflow up`, "
                "or fix PREFECT_API_URL"
            )
        repo = find_repo()
        os.environ["PREFECT_API_URL"] = api_url  # before prefect is imported
        _quiet_libraries()
        apply_settings(settings)
        from adaptflow.deployments import deploy as apply_deployments

        result = apply_deployments(repo, api_url)
    if json_out:
        _emit(result)
        return
    pools = ", ".join(f"{name} ({state})" for name, state in result["work_pools"].items())
    limit = result["concurrency_limit"]
    lines = [f"deployed to {api_url}:"]
    for item in result["deployments"]:
        params = ", ".join(f"{k}={v}" for k, v in item["parameters"].items())
        lines.append(f"  {item['name']}  [{'; '.join(item['schedules']) or 'manual'}]  {params}")
    lines.append(f"work pool: {pools}")
    lines.append(
        f"concurrency limit: tag {limit['tag']} = {limit['limit']} "
        f"({'created' if limit['created'] else 'exists'})"
    )
    err.print("\n".join(lines), highlight=False, markup=False, soft_wrap=True)


data_app = typer.Typer(help="The curated data behind registered versions (DVC).")
app.add_typer(data_app, name="data")


@data_app.command("pull")
def data_pull(
    model_uri: Annotated[str, typer.Argument(help="models:/NAME@ALIAS or models:/NAME/VERSION.")],
    dest: Annotated[
        Path | None,
        typer.Argument(help="An empty or new folder (default: ./NAME-vVERSION-data)."),
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Fetch the exact curated data a registered version was trained and judged on.

    Reads the version's DVC hash (tag adaptflow.data_hash) and pulls that folder (train, eval,
    dropped and quarantined records) from the DVC remote ADAPTFLOW_DVC_REMOTE, every file's
    md5 checked; works from any machine that reaches the registry and the remote.
    """
    with _guard(json_out):
        from adaptflow.errors import DataError, SettingsError

        settings = _prepare(check_prefect=False)
        if not settings.dvc_remote:
            raise SettingsError(
                "ADAPTFLOW_DVC_REMOTE is not set: it names the DVC remote the data was pushed "
                "to (a folder, s3://, gs://, azure://, ssh://)"
            )
        from registry.models import data_hash_of
        from runtime.index import public_url
        from tasks.curate.version import pull_dataset

        name, version, data_hash = data_hash_of(model_uri)
        if not data_hash:
            raise DataError(f"{model_uri} (version {version} of '{name}') has no data hash tag")
        folder = (dest or Path(f"{name}-v{version}-data")).resolve()
        files = pull_dataset(data_hash, folder, settings.dvc_remote, settings.work_dir / "pulls")
        result = {
            "model_uri": model_uri,
            "name": name,
            "version": version,
            "data_hash": data_hash,
            "remote": public_url(settings.dvc_remote),
            "dest": str(folder),
            "files": [str(f.relative_to(folder)) for f in files],
        }
    if json_out:
        _emit(result)
        return
    err.print(
        f"{name} version {version}: data {data_hash} from {result['remote']} -> {folder} "
        f"({', '.join(result['files'])})",
        highlight=False,
    )


@contextmanager
def _imports_then_frozen() -> Iterator[None]:
    """No cyclic collections while a run imports its libraries; what they made is then frozen.

    Importing torch, transformers, Prefect, MLflow and peft creates millions of objects and
    almost no garbage: the collections that ran meanwhile (young ones every 10,000 allocations,
    one full) found ~1,500 unreachable objects and took ~0.4-0.6 s of a demo run's start.
    Without them, the ~23,000 objects the imports leave unreachable stay in memory for the
    process's life (~18 MB of peak memory beside ~550 MB imported), frozen with the rest
    (``_freeze_the_imported``). Collection is back on when the block ends, however it ends.
    """
    import gc

    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        _freeze_the_imported()
        if enabled:
            gc.enable()


def _freeze_the_imported() -> None:
    """Keep the objects alive now out of the cyclic garbage collector's walks (``gc.freeze``).

    Before a pipeline runs, they are the imported libraries (torch, transformers, Prefect,
    MLflow: millions of objects) and the command's settings, all alive until the process exits;
    every full collection walked them again (~0.3 s each, ~2 s of a demo run on 2 cores:
    ``benchmarks/bench_pipeline_overhead.py``). What the run creates afterwards is collected as
    before, so a model or dataset in a reference cycle is still freed when the run drops it.
    """
    import gc

    gc.freeze()


#: The command's garbage-collector thresholds: a young-generation collection every 10,000
#: allocations net, not Python's 700. A command allocates millions of objects while it imports
#: torch, transformers, Prefect and MLflow, and with Python's thresholds it ran ~2,000 young and
#: ~17 full collections in a demo run (1.4 s in all, measured with ``gc.callbacks``); with
#: these, ~150 and 2 (0.5 s). Unreachable cycles wait a little longer to be freed.
GC_THRESHOLDS = (10_000, 10, 10)


def main() -> None:
    """Console-script entry point.

    Everything is frozen before the interpreter exits, so its final collection does not walk
    every object of the libraries the command imported (~1.5 s after a pipeline run); the
    objects' memory goes back with the process, as it would anyway. A command that ends with an
    exit code also skips the interpreter's teardown (``_exit_after_the_exit_handlers``).
    """
    import atexit
    import gc

    # registered before any library's handler but logging's, so it runs after theirs
    atexit.register(_exit_after_the_exit_handlers)
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        app()
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            _EXIT_CODE[:] = [stop.code or 0]
        raise
    finally:
        _freeze_the_imported()


#: The exit code of the command, when it ended with one (empty when it raised anything else).
_EXIT_CODE: list[int] = []


def _exit_after_the_exit_handlers() -> None:
    """End the process once every exit handler has run, skipping the interpreter's teardown.

    The last exit handler (see ``main``): Prefect has stopped its embedded server and flushed
    its logs, MLflow its pending writes, and the command's output is written. What is left is
    the interpreter clearing the modules of torch, transformers, Prefect and MLflow one object
    at a time and running their libraries' destructors (~0.15 s after a pipeline run, for memory
    the process gives back anyway). Logging's own handler (registered before this one, at its
    import) runs here first, and both output streams are flushed. A command that raised an
    unexpected exception has no exit code here and ends as Python ends it.
    """
    import contextlib
    import os

    if not _EXIT_CODE:
        return
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):  # closed, or no stream
            stream.flush()
    os._exit(_EXIT_CODE[0])
