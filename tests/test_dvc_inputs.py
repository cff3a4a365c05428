"""``data.train: dvc://REPO#PATH@REV``: inputs read from a DVC data registry (``adaptflow.inputs``).

A real registry: a git repository with DVC, a local-folder default remote, the data tracked by
``dvc add``, tag ``v1`` then a second commit. The spec names a file in it; the run reads that
revision, fetched through ``dvc.api``, and its tags name the URL, the commit and the md5.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_cli

from adaptflow.errors import SpecError
from adaptflow.inputs import display, parse
from adaptflow.provenance import input_lineage
from adaptflow.samples import write_tiny_icl_spec
from adaptflow.spec import load_spec, parse_spec


def _run(folder: Path, *args: str) -> str:
    done = subprocess.run(args, cwd=folder, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def _git(folder: Path, *args: str) -> str:
    return _run(folder, "git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args)


def _dvc(folder: Path, *args: str) -> str:
    return _run(folder, sys.executable, "-m", "dvc", *args)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A DVC data registry: ``data/chars.jsonl`` with 12 records at tag v1, 24 at HEAD."""
    root = tmp_path_factory.mktemp("dvc-inputs")
    repo = root / "registry"
    source = write_tiny_icl_spec(root / "source", "unused").parent / "data" / "chars.jsonl"
    lines = source.read_text().splitlines(keepends=True)
    (repo / "data").mkdir(parents=True)
    _git(repo, "init", "-q")
    _dvc(repo, "init", "-q")
    _dvc(repo, "remote", "add", "-d", "store", str(root / "store"))
    versions = {}
    for tag, count in (("v1", 12), ("v2", 24)):
        (repo / "data" / "chars.jsonl").write_text("".join(lines[:count]))
        _dvc(repo, "add", "-q", "data/chars.jsonl")
        _dvc(repo, "push", "-q")
        _git(repo, "add", "-A")
        _git(repo, "commit", "-qm", f"data {tag}")
        _git(repo, "tag", tag)
        versions[tag] = (repo / "data" / "chars.jsonl").read_bytes()
    return {
        "repo": repo,
        "root": root,
        "versions": versions,
        "commit": _git(repo, "rev-parse", "v1"),
    }


def _spec(folder: Path, train: str, name: str = "dvc-input") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "spec.yaml"
    spec.write_text(
        f"name: {name}\ntask: classification\nbase_model: minilm\nmethod: icl\n"
        f"data: {{train: '{train}', id_field: id, text_field: text, label_field: label}}\n"
        "target: {metric: f1_macro, min: 0.1}\nseed: 7\n"
    )
    return spec


def test_references_parse_into_repository_path_and_revision(tmp_path: Path) -> None:
    (tmp_path / "reg").mkdir()
    local = parse("dvc:///srv/registry#data/train.jsonl@v2")
    assert (local.repo, local.path, local.rev) == ("/srv/registry", "data/train.jsonl", "v2")
    relative = parse("dvc://../reg#data/train.jsonl", tmp_path / "specs")
    assert (relative.repo, relative.rev) == (str((tmp_path / "reg").resolve()), None)
    assert parse("dvc://reg#a.jsonl", tmp_path).repo == str((tmp_path / "reg").resolve())
    url = parse("dvc://https://example.com/org/registry.git#data/x.jsonl@main")
    assert (url.repo, url.path, url.rev) == (
        "https://example.com/org/registry.git",
        "data/x.jsonl",
        "main",
    )
    assert parse("dvc://github.com/org/registry#x.csv").repo == "https://github.com/org/registry"
    assert (
        parse("dvc://git@github.com:org/registry#x.csv@abc").repo == "git@github.com:org/registry"
    )
    for broken, reason in (
        ("dvc:///srv/registry", "expected dvc://REPO#PATH"),
        ("dvc://#data.jsonl", "expected dvc://REPO#PATH"),
        ("dvc:///srv/registry#data.jsonl@", "empty revision after @"),
    ):
        with pytest.raises(ValueError, match=reason):
            parse(broken)


def test_a_spec_reads_the_revision_it_names_and_the_tags_say_which(
    registry: dict, tmp_path: Path, adaptflow_home: Path
) -> None:
    repo, versions = registry["repo"], registry["versions"]
    at_v1 = f"dvc://{repo}#data/chars.jsonl@v1"
    spec = load_spec(_spec(tmp_path / "a", at_v1))
    assert spec.data.train.read_bytes() == versions["v1"]
    assert spec.data.train.is_relative_to(adaptflow_home / "work" / "inputs")
    assert display(spec.data.train) == at_v1
    md5 = hashlib.md5(versions["v1"]).hexdigest()
    assert input_lineage("train", spec.data.train) == {
        "adaptflow.input.train.dvc_url": at_v1,
        "adaptflow.input.train.dvc_commit": registry["commit"],
        "adaptflow.input.train.dvc_md5": md5,
        "adaptflow.input.train.dvc_matches": "true",
    }
    # no revision: the registry's HEAD; a relative registry folder, from the spec's folder
    head = load_spec(_spec(registry["root"] / "specs", "dvc://../registry#data/chars.jsonl"))
    assert head.data.train.read_bytes() == versions["v2"]
    # the same revision is fetched once: a second load reads the same folder
    assert load_spec(_spec(tmp_path / "b", at_v1)).data.train == spec.data.train


def test_a_clone_of_the_registry_reads_dvc_data_from_its_remote(
    registry: dict, tmp_path: Path
) -> None:
    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", str(registry["repo"]), str(clone))
    # through git, as from another machine: the clone has no DVC cache, only the remote
    url = f"dvc://file://{clone}#data/chars.jsonl@v1"
    assert not (clone / ".dvc" / "cache").exists()
    spec = load_spec(_spec(tmp_path / "s", url))
    assert spec.data.train.read_bytes() == registry["versions"]["v1"]
    # the data really came from the remote: without it, another clone cannot read v1
    other = tmp_path / "other"
    _git(tmp_path, "clone", "-q", str(registry["repo"]), str(other))
    store = registry["root"] / "store"
    store.rename(store.with_name("store-away"))
    try:
        with pytest.raises(SpecError, match=r"data\.train: .*fetching data/chars\.jsonl failed"):
            load_spec(_spec(tmp_path / "t", f"dvc://file://{other}#data/chars.jsonl@v1"))
    finally:
        store.with_name("store-away").rename(store)


def test_an_unreadable_reference_is_a_spec_error_naming_the_field(
    registry: dict, tmp_path: Path
) -> None:
    repo = registry["repo"]
    cases = {
        f"dvc://{repo}#data/chars.jsonl@v9": "unknown Git revision 'v9'",
        f"dvc://{repo}#data/missing.jsonl@v1": "no 'data/missing.jsonl' in",
        f"dvc://{tmp_path / 'nowhere'}#data/chars.jsonl": "cannot read the DVC repository",
        f"dvc://{repo}": "expected dvc://REPO#PATH",
    }
    for reference, reason in cases.items():
        raw = {"name": "x", "task": "classification", "method": "icl", "data": {"train": reference}}
        with pytest.raises(SpecError, match=r"data\.train: .*" + reason.replace("'", ".")):
            parse_spec(raw, base_dir=tmp_path)
    # on the command line: the same message, exit 2, no traceback
    spec = _spec(tmp_path / "cli", f"dvc://{repo}#data/chars.jsonl@v9")
    done = run_cli("recommend", str(spec), "--json")
    assert done.returncode == 2, done.stderr[-2000:]
    said = " ".join(done.stderr.split())  # the console wraps long lines
    assert "data.train" in said and "unknown Git revision 'v9'" in said
    assert "Traceback" not in said


def test_a_fetched_input_without_its_source_record_is_fetched_again(
    registry: dict, tmp_path: Path
) -> None:
    """``source.json`` marks a complete fetch: a folder without it is not trusted."""
    url = f"dvc://{registry['repo']}#data/chars.jsonl@v2"
    first = load_spec(_spec(tmp_path / "a", url)).data.train
    (first.parent / "source.json").unlink()
    first.write_text("damaged")
    again = load_spec(_spec(tmp_path / "b", url)).data.train
    assert again == first and again.read_bytes() == registry["versions"]["v2"]


@pytest.mark.integration
@pytest.mark.slow  # a pipeline run; the fetch, the tags and the display are tested above
def test_a_run_on_a_registry_input_logs_its_url_and_revision(
    registry: dict, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    from flows.pipeline import adapt_pipeline

    url = f"dvc://{registry['repo']}#data/chars.jsonl@v1"
    result = adapt_pipeline(str(_spec(tmp_path / "run", url, name="dvc-input-run")))
    assert result["curation"]["input"] == 12
    run = MlflowClient().get_run(result["mlflow_run_id"])
    assert run.data.params["data.train"] == url
    assert run.data.tags["adaptflow.input.train.dvc_commit"] == registry["commit"]
    version = MlflowClient().get_model_version("dvc-input-run", result["model_version"])
    assert version.tags["adaptflow.input.train.dvc_url"] == url
