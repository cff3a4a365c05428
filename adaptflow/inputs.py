"""Data inputs named by reference: a file or folder in a DVC data registry, ``dvc://``.

``data.train: dvc://REPO#PATH@REV`` reads ``PATH`` as it was at git revision ``REV`` (a tag,
branch or commit; default: the repository's HEAD) of the DVC repository ``REPO``: the data
registry pattern DVC recommends for sharing datasets between projects (``dvc get`` /
``dvc.api``). ``REPO`` is

- a folder: ``dvc:///abs/path#data/train.jsonl``, or relative to the spec's folder,
  ``dvc://../registry#data/train.jsonl``;
- a git URL: ``dvc://https://github.com/org/registry#data/train.jsonl@v2`` (also ``ssh://``,
  ``git@host:org/repo``, ``file://``);
- ``HOST/ORG/NAME`` without a scheme, read as ``https://HOST/ORG/NAME``.

The file is fetched through ``dvc.api.DVCFileSystem`` (DVC-tracked data comes from the
registry's cache or its default remote, git-tracked files from git) into
``ADAPTFLOW_HOME/work/inputs/KEY/``, keyed by repository, path and the commit ``REV`` resolved
to, so a fetched revision is read once and a moved branch fetches anew. Beside the data,
``source.json`` records where it came from (the URL, the resolved commit, DVC's md5):
``adaptflow.provenance.input_lineage`` turns that into the run's tags, so a version trained on a
registry file names the exact revision it read.

Three more ways to name training data, each read by ``tasks.curate.records`` with the same
quarantine rules (``resolve`` picks the form):

- ``path/dataset_info.json#NAME``: entry ``NAME`` of a LLaMA-Factory dataset registry. Its
  ``file_name`` (beside the json) is read through the entry's ``formatting`` (``alpaca`` or
  ``sharegpt``), ``ranking``, ``columns`` and ``tags``: ``ADAPTFLOW_HOME/work/inputs/KEY/`` holds a
  link to the file and, in ``source.json``, that mapping (``DatasetView``), which the readers
  apply record by record (renaming columns and roles to the shapes adaptflow reads). As in
  LLaMA-Factory, an alpaca entry with ``columns`` reads only the columns it names, and one that
  names no response column is pre-training data (``"columns": {"prompt": "text"}``): its
  records are documents, read as text (``DatasetView.documents``). Entries that load from
  elsewhere (``hf_hub_url``, ``ms_hub_url``, ``script_url``, …) are refused.
- a folder written by ``datasets``' ``save_to_disk`` (a ``Dataset``, or a ``DatasetDict`` with
  ``folder#SPLIT``, default ``train``), and
- ``hf://ORG/NAME[:CONFIG][@REVISION][#SPLIT]``: a dataset loaded by
  ``datasets.load_dataset(ORG/NAME, name=CONFIG, revision=REVISION, split=SPLIT)``, from the
  hub or the Hugging Face cache (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` respected; a
  revision must be shown to be the cached one, ``load_hub``); ``ORG/NAME`` naming a folder
  beside the spec reads that folder (with a config, not a revision).

The last two are written out once per dataset fingerprint as JSON lines, one row at a time, into
``ADAPTFLOW_HOME/work/inputs/KEY/``; a row that JSON cannot hold (an image, bytes) becomes a
marker line the reader quarantines with the reason, so every row is accounted for.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from adaptflow.settings import load_settings

SCHEME = "dvc://"
HF_SCHEME = "hf://"
#: Written beside fetched data: where it came from (see the module docstring).
SOURCE_FILE = "source.json"
#: LLaMA-Factory's dataset registry, named ``path/dataset_info.json#NAME``.
DATASET_INFO = "dataset_info.json"
#: The key of a materialized row JSON could not hold: its value is the reason (records.py
#: quarantines the line with it).
UNREADABLE_KEY = "_adaptflow_unreadable"


@dataclass(frozen=True)
class DvcSource:
    """Where a ``dvc://`` input lives, and the revision that was read."""

    url: str  # as written in the spec
    repo: str  # a folder or a git URL, as DVC takes it
    path: str  # inside the repository
    rev: str | None  # as written; None = HEAD
    commit: str = ""  # the git commit ``rev`` resolved to
    md5: str = ""  # DVC's hash of the data (empty for a git-tracked file)


def is_reference(value: Any) -> bool:
    """Whether ``value`` is a ``dvc://`` reference rather than a path."""
    return isinstance(value, str) and value.startswith(SCHEME)


def parse(url: str, base_dir: Path | None = None) -> DvcSource:
    """Split ``dvc://REPO#PATH@REV`` (see the module docstring); relative folders from ``base_dir``.

    Raises:
        ValueError: When the reference has no ``#PATH`` or an empty part.
    """
    rest = url[len(SCHEME) :]
    repo, hash_sign, path_rev = rest.partition("#")
    if not hash_sign or not repo or not path_rev:
        raise ValueError(
            f"'{url}' is not a DVC reference: expected dvc://REPO#PATH or dvc://REPO#PATH@REV "
            "(REPO a folder or a git URL)"
        )
    path, at, rev = path_rev.rpartition("@") if "@" in path_rev else (path_rev, "", "")
    if not path or (at and not rev):
        raise ValueError(f"'{url}': empty {'path' if not path else 'revision after @'}")
    return DvcSource(url=url, repo=_repo(repo, base_dir), path=path.strip("/"), rev=rev or None)


def _repo(repo: str, base_dir: Path | None) -> str:
    if "://" in repo or repo.startswith("git@"):
        return repo
    local = Path(repo).expanduser()
    if repo.startswith(("/", ".", "~")) or (base_dir is not None and (base_dir / local).is_dir()):
        if not local.is_absolute() and base_dir is not None:
            local = base_dir / local
        return str(local.resolve())
    return "https://" + repo


def fetch(url: str, base_dir: Path | None = None, inputs_dir: Path | None = None) -> Path:
    """Fetch a ``dvc://`` input into the inputs folder; the local path of the file or folder.

    Args:
        url: ``dvc://REPO#PATH@REV``.
        base_dir: Where a relative ``REPO`` folder is resolved (the spec's folder).
        inputs_dir: Where fetched inputs live (default ``ADAPTFLOW_HOME/work/inputs``).

    Raises:
        ValueError: A malformed reference, or a repository, revision or path DVC cannot read,
            with DVC's reason.
    """
    from dvc.api import DVCFileSystem
    from dvc.exceptions import DvcException

    source = parse(url, base_dir)
    root = inputs_dir or load_settings().work_dir / "inputs"
    try:
        fs = DVCFileSystem(source.repo, rev=source.rev)
        commit = str(fs.repo.get_rev())
        info = fs.info(source.path)
    except FileNotFoundError:
        raise ValueError(
            f"'{url}': no '{source.path}' in {source.repo} at {source.rev or 'HEAD'}"
        ) from None
    except (DvcException, OSError) as error:
        reason = str(error) or type(error).__name__
        raise ValueError(
            f"'{url}': cannot read the DVC repository {source.repo} at "
            f"{source.rev or 'HEAD'}: {reason}"
        ) from None
    source = DvcSource(**{**asdict(source), "commit": commit, "md5": str(info.get("md5") or "")})
    key = hashlib.sha256(f"{source.repo}\0{source.path}\0{commit}".encode()).hexdigest()[:16]
    folder = root / key
    name = Path(source.path).name
    if not (folder / SOURCE_FILE).is_file():  # written last: its presence means complete
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
        try:
            if info.get("type") == "directory":
                fs.get(source.path, str(staging / name), recursive=True)
            else:
                fs.get_file(source.path, str(staging / name))
            (staging / SOURCE_FILE).write_text(json.dumps(asdict(source), indent=2) + "\n")
            if folder.is_dir() and not (folder / SOURCE_FILE).is_file():
                shutil.rmtree(folder)  # incomplete (source.json is written before the rename)
            try:
                os.rename(staging, folder)
            except OSError:  # another run fetched the same revision first: theirs is the same
                shutil.rmtree(staging, ignore_errors=True)
        except (DvcException, OSError) as error:
            shutil.rmtree(staging, ignore_errors=True)
            hint = (
                " (the data is in neither the registry's DVC cache nor its default remote: "
                "was it `dvc push`ed?)"
                if isinstance(error, FileNotFoundError)
                else ""
            )
            raise ValueError(f"'{url}': fetching {source.path} failed: {error}{hint}") from None
    return folder / name


def source_of(path: Path | None) -> DvcSource | None:
    """The ``dvc://`` source a fetched input came from (None for an ordinary path)."""
    if path is None:
        return None
    record = path.parent / SOURCE_FILE
    try:
        source = DvcSource(**json.loads(record.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None
    fetched = source.url.startswith(SCHEME) and Path(source.path).name == path.name
    return source if fetched else None


def display(path: Path | None) -> str | None:
    """How an input is shown in params and cards: its reference as written, else the path.

    A ``dvc://`` or ``hf://`` URL, ``path/dataset_info.json#NAME``, or a ``save_to_disk``
    folder (with ``#SPLIT`` when written so).
    """
    if path is None:
        return None
    source = source_of(path)
    if source is not None:
        return source.url
    other = view_of(path) or hf_source_of(path)
    return other.url if other is not None else str(path)


def origin(path: Path) -> str | None:
    """The file a quarantined record is reported in, when ``path`` stands for another.

    A ``dataset_info.json`` entry's records are in the entry's file (its line numbers hold);
    a materialized dataset's in its reference (line N is the split's row N, from 1).
    """
    view = view_of(path)
    if view is not None:
        return view.file
    source = hf_source_of(path)
    return source.url if source is not None else None


def lineage(path: Path) -> tuple[dict[str, str], Path | None]:
    """Tags naming where a resolved input came from, and the file with its git/DVC history.

    The tags lack the ``adaptflow.input.KEY.`` prefix; the file is None when there is none here.

    - ``hf://`` or a ``save_to_disk`` folder: ``hf_dataset`` (the hub id or the folder),
      ``hf_config`` when a config was named, ``hf_split`` when one was chosen,
      ``hf_fingerprint`` (``datasets``' fingerprint of the rows read) and, for a hub dataset,
      ``hf_revision`` (the commit its cache was built from, whatever revision was written).
    - a ``dataset_info.json#NAME`` entry: ``dataset_info`` (the reference), and the entry's file
      for its git/DVC tags.
    - anything else: no tags, and ``path`` itself.
    """
    view = view_of(path)
    if view is not None:
        return {"dataset_info": view.url}, Path(view.file)
    source = hf_source_of(path)
    if source is None:
        return {}, path
    tags = {"hf_dataset": source.dataset, "hf_fingerprint": source.fingerprint}
    if source.config:
        tags["hf_config"] = source.config
    if source.split:
        tags["hf_split"] = source.split
    if source.revision:
        tags["hf_revision"] = source.revision
    return tags, None


def _source_record(path: Path, kind: str) -> dict[str, Any] | None:
    """``source.json`` beside ``path`` when it describes ``path`` as an input of ``kind``."""
    try:
        record = json.loads((path.parent / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("kind") != kind:
        return None
    return record if record.get("name") == path.name else None


def resolve(value: Any, base_dir: Path | None, datasets: bool = True) -> Any:
    """A data input as the spec names it, turned into a local path when it is a reference.

    ``dvc://`` inputs are fetched (``fetch``); with ``datasets`` (files of records, not the RAG
    knowledge folder) also ``hf://`` inputs, ``save_to_disk`` folders (``folder`` or
    ``folder#SPLIT``) and ``dataset_info.json#NAME`` entries. Other values come back as given.

    Raises:
        ValueError: A reference that cannot be read, with the reason.
    """
    if not isinstance(value, str | Path):
        return value
    text = str(value)
    if text.startswith(SCHEME):
        return fetch(text, base_dir)
    if not datasets:
        return value
    if text.startswith(HF_SCHEME):
        return load_hub(text, base_dir)
    whole = _local(text, base_dir)
    if whole.exists():  # an ordinary path, even one whose name holds a '#'
        if whole.is_dir() and is_saved_dataset(whole):
            return load_saved(text, whole, None)
        if whole.name == DATASET_INFO and whole.is_file():
            _registry_without_name(text, whole)
        return value
    before, hash_sign, fragment = text.rpartition("#")
    if hash_sign and before:
        local = _local(before, base_dir)
        if local.name == DATASET_INFO and local.is_file():
            return dataset_info(text, local, fragment)
        if local.is_dir() and is_saved_dataset(local):
            return load_saved(text, local, fragment)
    return value


def _local(text: str, base_dir: Path | None) -> Path:
    path = Path(text).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path.absolute()


def _inputs_root() -> Path:
    return load_settings().work_dir / "inputs"


def _publish(key: str, name: str, source: dict[str, Any], write: Any) -> Path:
    """``ADAPTFLOW_HOME/work/inputs/KEY/NAME``, made once by ``write(staging_path)``.

    ``source.json`` is written last and the folder renamed into place, so a folder holding it
    is complete, and two runs making the same input at once leave one copy.
    """
    root = _inputs_root()
    folder = root / key
    if not (folder / SOURCE_FILE).is_file():
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
        try:
            write(staging / name)
            (staging / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
            if folder.is_dir() and not (folder / SOURCE_FILE).is_file():
                shutil.rmtree(folder)
            try:
                os.rename(staging, folder)
            except OSError:  # another run made the same input first: theirs is the same
                shutil.rmtree(staging, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return folder / name


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


# LLaMA-Factory's dataset_info.json ---------------------------------------------------------

#: Entry keys that load data from somewhere other than a file beside the json.
REMOTE_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
#: Entry keys read (``file_sha1`` is LLaMA-Factory's optional checksum: it ignores it too).
ENTRY_KEYS = ("file_name", "file_sha1", "formatting", "ranking", "columns", "tags", "split")
FORMATTINGS = ("alpaca", "sharegpt")
#: The columns of each formatting and their defaults (LLaMA-Factory's data/README.md);
#: None: not read unless the entry names it.
COLUMNS: dict[str, dict[str, str | None]] = {
    "alpaca": {
        "prompt": "instruction", "query": "input", "response": "output", "history": None,
        "system": None, "tools": None, "chosen": None, "rejected": None, "kto_tag": None,
    },
    "sharegpt": {
        "messages": "conversations", "system": None, "tools": None, "chosen": None,
        "rejected": None, "kto_tag": None,
    },
}  # fmt: skip
#: ShareGPT's tags and their defaults: the keys of a turn, and the role names it uses.
TAGS = {
    "role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
    "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system",
}  # fmt: skip
#: Columns of images, video or audio: only text is trained on.
MEDIA_COLUMNS = ("images", "videos", "audios")
#: File types an entry's ``file_name`` may have (what the shaped readers read).
ENTRY_SUFFIXES = (".json", ".jsonl", ".parquet")


@dataclass(frozen=True)
class DatasetView:
    """A ``dataset_info.json#NAME`` entry, resolved: the file and how to read its records."""

    url: str  # as written in the spec
    file: str  # the entry's data file (absolute)
    name: str  # the link's name in the inputs folder (the file's name)
    formatting: str  # alpaca or sharegpt
    ranking: bool
    columns: dict[str, str]  # LLaMA-Factory's column role -> the file's column (those read)
    tags: dict[str, str]  # ShareGPT's tags (TAGS, defaults filled in)
    kind: str = "dataset_info"

    @property
    def shape(self) -> str:
        """The ``data.format`` its records are renamed to (``tasks.curate.records``).

        ``text`` for a pre-training entry (``documents``): records of one text field.
        """
        if self.ranking:
            return "preference"
        if "kto_tag" in self.columns:
            return "kto"
        if self.formatting == "sharegpt":
            return "sharegpt"
        if "response" not in self.columns:
            return "text"  # pre-training documents: read by data.format fields, not a shape
        chat = any(c in self.columns for c in ("system", "history", "tools"))
        return "messages" if chat else "alpaca"

    @property
    def documents(self) -> bool:
        """Whether the entry is pre-training data: an alpaca entry with no response column.

        Its records are documents (the prompt column, then the query column after a line
        break when it names one), as LLaMA-Factory's ``stage: pt`` reads them.
        """
        return self.shape == "text"


def view_of(path: Path | None) -> DatasetView | None:
    """The ``dataset_info.json`` entry ``path`` (a link in the inputs folder) reads, or None."""
    if path is None:
        return None
    record = _source_record(path, "dataset_info")
    try:
        return DatasetView(**record) if record is not None else None
    except TypeError:
        return None


def _registry_without_name(url: str, path: Path) -> None:
    """Raise when ``path`` is a LLaMA-Factory registry named without ``#NAME``."""
    try:
        registry = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # not one: read (and reported) as a .json data file
    if isinstance(registry, dict):
        names = ", ".join(list(registry)[:10]) or "none"
        raise ValueError(
            f"'{url}' is a dataset registry (LLaMA-Factory's dataset_info.json): name the "
            f"dataset to read, {url}#NAME (entries: {names})"
        )


def _mapping(where: str, value: Any, allowed: dict[str, Any], what: str) -> dict[str, str]:
    """An entry's ``columns`` or ``tags`` object, checked: known keys, string values."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{where}: '{what}' must be an object, got {type(value).__name__}")
    media = sorted(set(value) & set(MEDIA_COLUMNS))
    if media:
        raise ValueError(
            f"{where}: columns {', '.join(media)} hold media; adaptflow trains on text only"
        )
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise ValueError(
            f"{where}: unsupported {what} {', '.join(map(repr, unknown))} (read: "
            f"{', '.join(allowed)})"
        )
    for key, column in value.items():
        if not isinstance(column, str) or not column:
            raise ValueError(f"{where}: {what}.{key} must be a non-empty string, got {column!r}")
    return dict(value)


#: The columns a pre-training entry reads: its documents are ``prompt`` (then ``query``).
DOCUMENT_COLUMNS = ("prompt", "query")


def _pretraining(where: str, name: str, columns: dict[str, str]) -> None:
    """Check an alpaca entry with no response column: LLaMA-Factory's pre-training data.

    LLaMA-Factory's ``stage: pt`` trains on the prompt column alone (its data/README.md,
    "Pre-training Dataset": ``"columns": {"prompt": "text"}``), joined with the query column
    when one is named; other stages drop such records as unsupervised. Columns only a chat or
    an answer uses are refused rather than silently not read.
    """
    if "kto_tag" in columns:
        raise ValueError(f"{where}: entry '{name}' has kto_tag but no response column to label")
    other = sorted(set(columns) - set(DOCUMENT_COLUMNS))
    if other:
        raise ValueError(
            f"{where}: entry '{name}' names no response column, so it is pre-training data "
            f"(documents: its prompt column), which does not read {', '.join(other)}; name a "
            "response column to read it as instruction data"
        )


def dataset_info(url: str, registry: Path, name: str) -> Path:
    """Resolve entry ``name`` of LLaMA-Factory's ``registry`` to a link to its file.

    Beside the link, ``source.json`` holds the mapping its records are read through
    (``DatasetView``).

    Raises:
        ValueError: The registry or entry cannot be read, names data adaptflow cannot read
            offline or a formatting it does not read, or its file is missing.
    """
    where = f"'{url}'"
    try:
        entries = json.loads(registry.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{where}: cannot read {registry}: {error}") from None
    if not isinstance(entries, dict):
        raise ValueError(f"{where}: {registry} must hold one object of dataset entries")
    if not name or name not in entries:
        known = ", ".join(list(entries)[:10]) or "none"
        raise ValueError(f"{where}: no dataset '{name}' in {registry} (entries: {known})")
    entry = entries[name]
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: entry '{name}' must be an object")
    remote = [k for k in REMOTE_KEYS if k in entry]
    if remote:
        hub = entry.get("hf_hub_url")
        hint = f"; for the hub use data.train: hf://{hub}" if "hf_hub_url" in remote else ""
        raise ValueError(
            f"{where}: entry '{name}' loads its data through {remote[0]}, which adaptflow does "
            f"not read from a dataset_info.json (it reads a file_name beside the json, offline)"
            f"{hint}"
        )
    unknown = sorted(set(entry) - set(ENTRY_KEYS))
    if unknown:
        raise ValueError(
            f"{where}: entry '{name}' sets {', '.join(map(repr, unknown))}, which adaptflow does "
            f"not support (read: {', '.join(ENTRY_KEYS)})"
        )
    if entry.get("split", "train") != "train":
        raise ValueError(f"{where}: a file entry has one split, 'train'; got {entry['split']!r}")
    formatting = entry.get("formatting", "alpaca")
    if formatting not in FORMATTINGS:
        raise ValueError(
            f"{where}: entry '{name}' has formatting {formatting!r}; adaptflow reads "
            f"{' or '.join(FORMATTINGS)}"
        )
    ranking = entry.get("ranking", False)
    if not isinstance(ranking, bool):
        raise ValueError(f"{where}: entry '{name}': 'ranking' must be true or false")
    defaults = COLUMNS[formatting]
    named = _mapping(f"{where} entry '{name}'", entry.get("columns"), defaults, "columns")
    if formatting == "alpaca" and entry.get("columns") is not None:
        # LLaMA-Factory: with "columns" given, an alpaca role it does not name is not read
        columns = dict(named)
        if "prompt" not in columns:
            raise ValueError(
                f"{where}: entry '{name}' has columns but no 'prompt' column (with columns "
                "given, LLaMA-Factory reads only the columns named)"
            )
    else:
        columns = {k: v for k, v in defaults.items() if v is not None} | named
    if formatting == "alpaca" and not ranking and "response" not in columns:
        _pretraining(where, name, columns)
    if ranking:
        columns = {"chosen": "chosen", "rejected": "rejected"} | columns
        columns.pop("response", None)  # a pair's answers are its chosen and rejected ones
        if "tools" in columns or "kto_tag" in columns:
            raise ValueError(f"{where}: a ranking entry with tools or kto_tag is not supported")
    if formatting == "sharegpt" and "kto_tag" in columns:
        raise ValueError(f"{where}: kto_tag is read for alpaca entries only")
    if formatting == "alpaca" and "kto_tag" in columns and "history" in columns:
        raise ValueError(f"{where}: kto_tag with history is not supported")
    tags = TAGS | _mapping(f"{where} entry '{name}'", entry.get("tags"), TAGS, "tags")
    file_name = entry.get("file_name")
    if not isinstance(file_name, str) or not file_name:
        raise ValueError(f"{where}: entry '{name}' has no file_name")
    file = (registry.parent / file_name).absolute()
    if not file.is_file():
        what = "a folder; name one file" if file.is_dir() else "not found"
        raise ValueError(f"{where}: entry '{name}' file_name {file}: {what}")
    suffixes = [s.lower() for s in file.suffixes]
    suffix = suffixes[-2] if len(suffixes) > 1 and suffixes[-1] == ".gz" else file.suffix.lower()
    if suffix not in ENTRY_SUFFIXES:
        raise ValueError(
            f"{where}: entry '{name}' file_name {file.name}: adaptflow reads "
            f"{', '.join(ENTRY_SUFFIXES)} files through a dataset_info.json"
        )
    view = DatasetView(url, str(file), file.name, formatting, ranking, columns, tags)
    key = _key("dataset_info", str(registry.absolute()), name, json.dumps(asdict(view)))
    return _publish(key, file.name, asdict(view), lambda link: link.symlink_to(file))


# Hugging Face datasets ------------------------------------------------------------------------


@dataclass(frozen=True)
class HfSource:
    """A dataset read through ``datasets`` and written out as JSON lines."""

    url: str  # as written in the spec
    kind: str  # "hf" (load_dataset) or "saved" (load_from_disk)
    dataset: str  # the hub id (or folder) given to load_dataset, or the saved folder
    split: str | None  # None: a saved Dataset (it has no splits)
    fingerprint: str  # ``datasets``' fingerprint of the rows
    name: str  # the JSON-lines file's name
    revision: str = ""  # the hub commit the cached dataset was built from, when known
    rows: int = 0
    config: str = ""  # the config (subset) named, hf://ORG/NAME:CONFIG
    rev: str = ""  # the revision as written, hf://ORG/NAME@REV (``revision`` is its commit)


def hf_source_of(path: Path | None) -> HfSource | None:
    """The ``hf://`` or ``save_to_disk`` source ``path`` was written from, or None."""
    if path is None:
        return None
    for kind in ("hf", "saved"):
        record = _source_record(path, kind)
        if record is not None:
            try:
                return HfSource(**record)
            except TypeError:
                return None
    return None


def is_saved_dataset(folder: Path) -> bool:
    """Whether ``folder`` was written by ``Dataset.save_to_disk`` or ``DatasetDict``'s."""
    if (folder / "dataset_dict.json").is_file():
        return True
    return (folder / "state.json").is_file() and (folder / DATASET_INFO).is_file()


def load_saved(url: str, folder: Path, split: str | None) -> Path:
    """A ``save_to_disk`` folder's rows as JSON lines in the inputs folder.

    A DatasetDict's split ``split`` (default ``train``); a Dataset has no splits.

    Raises:
        ValueError: The folder cannot be loaded, or has no such split.
    """
    from datasets import Dataset, DatasetDict, load_from_disk

    try:
        loaded = load_from_disk(str(folder))
    except Exception as error:  # datasets raises many types; its reason is what matters
        raise ValueError(f"'{url}': cannot load the datasets folder {folder}: {error}") from None
    if isinstance(loaded, DatasetDict):
        split = split or "train"
        if split not in loaded:
            raise ValueError(
                f"'{url}': no split '{split}' in {folder} (splits: {', '.join(loaded)}); "
                "name one as FOLDER#SPLIT"
            )
        loaded = loaded[split]
    elif split:
        raise ValueError(f"'{url}': {folder} holds one Dataset, not a DatasetDict: drop '#{split}'")
    if not isinstance(loaded, Dataset):
        raise ValueError(f"'{url}': {folder} is not a saved Dataset or DatasetDict")
    return _write_rows(loaded, url, "saved", str(folder), split)


@dataclass(frozen=True)
class HubReference:
    """The parts of ``hf://DATASET[:CONFIG][@REVISION][#SPLIT]`` (empty: not given)."""

    dataset: str
    config: str
    rev: str
    split: str


#: The form of an ``hf://`` reference (``parse_hub``).
HUB_FORM = "hf://ORG/NAME[:CONFIG][@REVISION][#SPLIT]"


def parse_hub(url: str) -> HubReference:
    """Split an ``hf://`` reference into its parts.

    Hub dataset ids hold only letters, digits, ``-``, ``_`` and ``.`` (one ``/`` between
    owner and name; ``huggingface_hub.utils.validate_repo_id``), so ``:``, ``@`` and ``#``
    can only be separators: the split is after the first ``#``, the revision after the first
    ``@`` before it, the config after the first ``:`` before that.

    Raises:
        ValueError: An empty dataset, config, revision or split after its separator.
    """
    rest, hash_sign, split = url[len(HF_SCHEME) :].partition("#")
    rest, at, rev = rest.partition("@")
    dataset, colon, config = rest.partition(":")
    empty = [
        what
        for what, sign, part in (
            ("config after ':'", colon, config),
            ("revision after '@'", at, rev),
            ("split after '#'", hash_sign, split),
        )
        if sign and not part.strip()
    ]
    if not dataset.strip("/") or empty:
        what = f"empty {empty[0]}" if empty else "no dataset"
        raise ValueError(f"'{url}': {what}; expected {HUB_FORM}")
    return HubReference(dataset=dataset, config=config, rev=rev, split=split)


def load_hub(url: str, base_dir: Path | None) -> Path:
    """``hf://ORG/NAME[:CONFIG][@REVISION][#SPLIT]`` as JSON lines in the inputs folder.

    ``datasets.load_dataset(ORG/NAME, name=CONFIG, revision=REVISION, split=SPLIT)``: the
    config (subset) the dataset's card declares (default: its default one), the revision a
    branch, tag or commit of the hub repository (default: ``main``), the split default
    ``train``.

    ``load_dataset`` answers from its cache when the hub cannot be reached (``HF_HUB_OFFLINE``)
    with the newest cached copy of the config, whatever revision was asked for; so a revision
    is checked against the commit the rows were cached from: the same commit, or a branch or
    tag the Hugging Face hub cache records at that commit (``refs/REVISION``), else the
    reference is refused. ``ORG/NAME`` naming a folder (beside the spec) loads that folder as
    it is on disk: ``load_dataset`` ignores a revision there, so one is refused.

    Raises:
        ValueError: A malformed reference, a revision on a folder, or one ``load_dataset``
            cannot load (an unknown config names those there), with the reason.
    """
    from datasets import Dataset, load_dataset

    ref = parse_hub(url)
    split = ref.split or "train"
    local = _local(ref.dataset, base_dir)
    path = str(local) if base_dir is not None and local.is_dir() else ref.dataset
    folder = Path(path).is_dir()  # load_dataset reads a folder (even one beside the cwd)
    if folder and ref.rev:
        raise ValueError(
            f"'{url}': {path} is a folder, read as it is on disk: datasets.load_dataset "
            f"ignores a revision for a folder, so '@{ref.rev}' cannot be honoured; drop it "
            "(check the folder out at that revision instead)"
        )
    if not folder:
        _check_hub_id(url, ref.dataset)
    call = _call(path, ref.config, ref.rev, split)
    try:
        loaded = load_dataset(path, name=ref.config or None, revision=ref.rev or None, split=split)
    except Exception as error:  # hub, cache and builder errors alike: report the reason
        raise ValueError(f"'{url}': {call} failed: {_load_reason(error, ref)}") from None
    if not isinstance(loaded, Dataset):
        raise ValueError(f"'{url}': load_dataset returned {type(loaded).__name__}, not a split")
    commit = _revision(loaded)
    if ref.rev:
        _check_revision(url, ref, commit)
    return _write_rows(loaded, url, "hf", path, split, config=ref.config, rev=ref.rev)


def _call(path: str, config: str, rev: str, split: str) -> str:
    """The ``load_dataset`` call made, as shown in errors."""
    extra = "".join(f", {k}={v!r}" for k, v in (("name", config), ("revision", rev)) if v)
    return f"datasets.load_dataset({path!r}{extra}, split={split!r})"


def _check_hub_id(url: str, dataset: str) -> None:
    """Raise when ``dataset`` (not a folder) is not a valid hub dataset id."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(dataset)
    except HFValidationError as error:
        raise ValueError(
            f"'{url}': '{dataset}' is neither a folder nor a hub dataset id ({error}); "
            f"expected {HUB_FORM}"
        ) from None


#: ``datasets``' messages listing a dataset's configs (unknown, missing or not cached).
_CONFIGS = re.compile(r"(?:Available(?: configs in the cache)?|available configs): \[(.*?)\]")


def _load_reason(error: Exception, ref: HubReference) -> str:
    """Why ``load_dataset`` failed, in one line; naming the configs when ``datasets`` lists them."""
    reason = " ".join((str(error) or type(error).__name__).split())
    listed = _CONFIGS.search(str(error))
    names = listed.group(1).split(",") if listed else []
    configs = ", ".join(name.strip().strip("'\"") for name in names)
    if configs and ref.config and "not found" in reason:
        return f"no config '{ref.config}' (configs: {configs})"
    if configs and ref.config and "cache" in reason:
        return f"config '{ref.config}' is not in the Hugging Face cache (cached: {configs})"
    if configs and not ref.config:
        return f"the dataset has several configs, name one as hf://{ref.dataset}:CONFIG ({configs})"
    if ref.rev and isinstance(error, ConnectionError):
        return (
            f"{reason}; revision '{ref.rev}' of {ref.dataset} is not in the Hugging Face cache "
            "and the hub cannot be reached (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE, or no network)"
        )
    return reason


#: A hub dataset's cache folder is named by the commit it was built from (40 hex digits).
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def _revision(rows: Any) -> str:
    """The hub commit ``rows`` were prepared from (their cache folder's name), or ""."""
    files = getattr(rows, "cache_files", None) or []
    if not files:
        return ""
    folder = Path(files[0]["filename"]).parent.name
    return folder if _COMMIT.match(folder) else ""


def _ref_commit(dataset: str, rev: str) -> str:
    """The commit the Hugging Face hub cache records for branch or tag ``rev``, or ""."""
    from huggingface_hub import constants

    folder = Path(constants.HF_HUB_CACHE) / ("datasets--" + dataset.replace("/", "--"))
    try:
        return (folder / "refs" / rev).read_text(encoding="utf-8").strip()
    except (OSError, ValueError):
        return ""


def _check_revision(url: str, ref: HubReference, commit: str) -> None:
    """Raise unless the rows read are revision ``ref.rev`` (see ``load_hub``)."""
    if commit and (ref.rev.lower() == commit or _ref_commit(ref.dataset, ref.rev) == commit):
        return
    read = f"commit {commit}" if commit else "a copy whose commit is unknown"
    raise ValueError(
        f"'{url}': revision '{ref.rev}' was asked for, but datasets returned {read} "
        f"from its cache (without the hub it serves the newest cached copy, whatever the "
        f"revision) and the cache does not show that this is '{ref.rev}'; load the revision "
        "once with the hub reachable, or name the cached commit"
    )


def _write_rows(
    rows: Any,
    url: str,
    kind: str,
    dataset: str,
    split: str | None,
    config: str = "",
    rev: str = "",
) -> Path:
    """Write ``rows`` (a ``datasets.Dataset``) as JSON lines once per fingerprint."""
    fingerprint = str(getattr(rows, "_fingerprint", "") or "")
    name = f"{split or 'dataset'}.jsonl"
    source = HfSource(
        url=url, kind=kind, dataset=dataset, split=split, fingerprint=fingerprint, name=name,
        revision=_revision(rows) if kind == "hf" else "", rows=len(rows), config=config, rev=rev,
    )  # fmt: skip
    # the URL is part of the key: source.json says how the spec wrote it (params, cards)
    key = _key(kind, url, dataset, config, rev, split or "", fingerprint)

    def write(target: Path) -> None:
        # one row at a time: the memory-mapped dataset is never copied into memory
        with target.open("w", encoding="utf-8") as out:
            out.writelines(_row_line(row) + "\n" for row in rows)

    return _publish(key, name, asdict(source), write)


def _row_line(row: dict[str, Any]) -> str:
    """One row as a JSON line; a row JSON cannot hold, as a marker with the reason."""
    try:
        return json.dumps(row)
    except (TypeError, ValueError):
        pass
    for column, value in row.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError) as error:
            reason = (
                f"column '{column}' holds {type(value).__name__}, which is not text or JSON "
                f"({error}); only text can be trained on"
            )
            return json.dumps({UNREADABLE_KEY: reason})
    return json.dumps({UNREADABLE_KEY: "the row cannot be written as JSON"})
