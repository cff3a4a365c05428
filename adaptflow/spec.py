"""The use-case spec: one pydantic model, YAML in, validated before any work starts.

Fields follow the contract in DESIGN.md §3. Extensions (``seed``, ``data.eval_fraction``,
``data.format``, the ``train``, ``curation`` and ``retrieval`` blocks) only add optional keys
with defaults, and ``data.train`` may be left out for ``retrieval-qa`` (which reads
``data.knowledge`` and ``data.questions`` instead). Unknown keys are errors. Relative paths
resolve against the spec file's folder.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from adaptflow.catalogue import (
    is_package,
    known_family,
    normalize_reference,
    registered_reference,
)
from adaptflow.errors import InvariantError, SpecError
from adaptflow.inputs import resolve, view_of
from adaptflow.methods import ALIGNMENT_METHODS, GENERATIVE_TASKS, LM_TASKS, REWARD_METHODS

Task = Literal[
    "classification", "instruction", "qa", "summarization", "language-modeling", "retrieval-qa"
]
Method = Literal[
    "auto",
    "ladder",
    "icl",
    "rag",
    "lora",
    "dora",
    "ia3",
    "prefix",
    "prompt-tuning",
    "p-tuning",
    "qlora",
    "freeze",
    "full",
    "cpt",
    "pretrain",
    "dpo",
    "orpo",
    "simpo",
    "kto",
    "grpo",
    "reward",
    "prune",
    "distill",
]
Hardware = Literal["cpu", "t4", "a10", "l4", "a100", "h100"]

# Metrics each task can be judged on; the first is the default target.
#: Metrics of the answers a ``rag`` candidate generates (only with ``retrieval.generator``).
ANSWER_METRICS = ("answer_token_f1", "answer_exact_match", "groundedness")
#: Metrics of preference data (pairs, or KTO's labelled answers): the first is the default
#: target of the alignment methods (``adaptflow.methods.ALIGNMENT_METHODS``).
ALIGNMENT_METRICS = ("preference_accuracy", "reward_margin")
#: Metrics of ``grpo``: the mean of the spec's weighted rewards over the held-out prompts'
#: greedy answers (each reward also gets ``reward_mean.<kind>``).
RL_METRICS = ("reward_mean",)
#: Metrics judged by a reward model (``align.judge``): how often it prefers the candidate's
#: answers to the starting model's (``tasks.evaluate.win_rate``); any generative method.
JUDGED_METRICS = ("win_rate",)
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("f1_macro", "accuracy", "precision_macro", "recall_macro"),
    "instruction": (
        "rougeL",
        "exact_match",
        "token_f1",
        "perplexity",
        *ALIGNMENT_METRICS,
        *RL_METRICS,
        *JUDGED_METRICS,
    ),
    "qa": ("token_f1", "exact_match", "rougeL", *ALIGNMENT_METRICS, *RL_METRICS, *JUDGED_METRICS),
    "summarization": (
        "rougeL",
        "rouge1",
        "rouge2",
        *ALIGNMENT_METRICS,
        *RL_METRICS,
        *JUDGED_METRICS,
    ),
    "language-modeling": ("perplexity",),
    "retrieval-qa": ("recall@5", "recall@1", "recall@10", "mrr", "ndcg@10", *ANSWER_METRICS),
}
# Metrics where smaller is better; the promotion gate flips its comparison for these.
LOWER_IS_BETTER = frozenset({"perplexity"})
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def data_suffix(path: Path) -> str:
    """A data file's type: its suffix, or the one before ``.gz`` (``x.jsonl.gz`` is JSONL)."""
    suffixes = [s.lower() for s in path.suffixes]
    if len(suffixes) > 1 and suffixes[-1] == ".gz":
        return suffixes[-2]
    return path.suffix.lower()


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


def _resolve(value: Path | None, info: ValidationInfo) -> Path | None:
    if value is None:
        return None
    base = (info.context or {}).get("base_dir")
    path = value.expanduser()
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return path.resolve()


class DataSpec(_Strict):
    """Where the data is and which fields hold what."""

    train: Path | None = Field(
        None,
        description="Training data: .jsonl, .json (one array of records), .csv, .parquet, or a "
        "folder of text "
        "(required for every task but retrieval-qa)",
    )
    eval: Path | None = Field(None, description="Optional eval data; else a held-out split")
    id_field: str | None = Field(None, description="Record id field; default: the line number")
    text_field: str = "text"
    label_field: str | None = "label"
    target_field: str | None = None
    format: Literal["auto", "fields", "alpaca", "messages", "sharegpt", "preference", "kto"] = (
        Field(
            "auto",
            description="Input format of generative data (JSONL/JSON/Parquet): 'fields' "
            "(text_field / target_field), 'alpaca' (instruction, input, output), 'messages' "
            "(OpenAI chat turns, with tool_calls and tool turns), 'sharegpt' (conversations "
            "of from/value turns: system, human, gpt, function_call, observation; optional "
            "system and tools), 'preference' (prompt, chosen, rejected; TRL's implicit-prompt "
            "and ShareGPT ranking forms too), 'kto' (prompt, completion, boolean label), or "
            "'auto' (per file, from its first JSON object)",
        )
    )
    knowledge: Path | None = Field(None, description="RAG corpus folder")
    questions: Path | None = Field(
        None, description="RAG eval questions: JSONL of {question, source (file under knowledge)}"
    )
    general: Path | None = Field(None, description="General-domain text for the forgetting check")
    eval_fraction: float = Field(
        0.2, gt=0, lt=1, description="Share held out for evaluation when no eval file is given"
    )
    version_in: Literal["home", "project"] = Field(
        "home",
        description="Where DVC versions the curated data: 'home' (the private repository under "
        "ADAPTFLOW_HOME) or 'project' (the git + DVC repository holding the spec: "
        "curated/NAME/ beside a curated/NAME.dvc file to commit)",
    )

    @field_validator("train", "eval", "questions", "general", "knowledge", mode="before")
    @classmethod
    def _fetch_reference(cls, value: Any, info: ValidationInfo) -> Any:
        """An input named by reference, as a local path (``adaptflow.inputs.resolve``).

        ``dvc://REPO#PATH@REV`` for every input; for files of records also ``hf://ORG/NAME``,
        a ``save_to_disk`` folder (``#SPLIT``) and ``dataset_info.json#NAME``.
        """
        base = (info.context or {}).get("base_dir")
        records = info.field_name != "knowledge"  # the RAG corpus is a folder of documents
        return resolve(value, Path(base) if base is not None else None, datasets=records)

    @field_validator("train", "eval", "questions", "general")
    @classmethod
    def _data_path(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        # a dataset_info.json entry is a link beside its mapping: resolving it would lose that
        path = value if view_of(value) is not None else _resolve(value, info)
        if path is None:
            return None
        if not path.exists():
            raise ValueError(f"not found: {path}")
        if path.is_file() and data_suffix(path) not in DATA_SUFFIXES:
            raise ValueError(
                f"unsupported file type '{path.suffix}' ({path}); expected one of "
                f"{', '.join(DATA_SUFFIXES)} (gzip-compressed as .gz too) or a folder of "
                ".txt/.md/.html"
            )
        return path

    @field_validator("knowledge")
    @classmethod
    def _folder(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        path = _resolve(value, info)
        if path is not None and not path.is_dir():
            raise ValueError(f"expected an existing folder: {path}")
        return path


class Needs(_Strict):
    """The advisor's questions about the use case."""

    external_knowledge: bool = False
    knowledge_changes_often: bool = False
    custom_behavior: bool = False
    new_domain_language: bool = False
    hallucination_tolerance: Literal["low", "medium", "high"] = "medium"
    low_latency: bool = Field(
        False,
        description="Serving cost matters: the advisor adds a compression rung (prune the "
        "champion, int8) after the quality rungs",
    )
    latency_budget_ms: float | None = Field(
        None,
        gt=0,
        description="Per-example CPU latency the served model must meet, in milliseconds; like "
        "low_latency, it adds the advisor's compression rung",
    )


class Budget(_Strict):
    """What the team can spend on training."""

    gpu_hours: float = Field(0, ge=0)
    hardware: Hardware = "cpu"


class Target(_Strict):
    """The metric that decides success and promotion."""

    metric: str | None = Field(None, description="Default: the task's first metric")
    min: float | None = Field(None, description="The value that counts as good enough")


class GenerationSpec(_Strict):
    """How a generative candidate answers (an extension; tasks instruction, qa, summarization).

    The settings are recorded in the package (its manifest's ``generation`` option), logged as
    the run's ``generation.*`` params and shown on its card. They are what serving uses when a
    request sets none, and what the gate scores: greedy by default; with a temperature the eval
    answers are sampled, seeded with the spec's ``seed``.
    """

    temperature: float = Field(
        0.0,
        ge=0,
        le=2,
        description="0: greedy decoding (the default); above 0: sampled at this temperature, "
        "and scored sampled with the spec's seed",
    )
    top_p: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Sampling only: draw from the smallest set of tokens holding this much "
        "probability (1: all of them)",
    )
    max_new_tokens: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="Longest answer. None: train.max_new_tokens; when set it wins, and "
        "train.max_new_tokens takes its value (validation, evaluation and the baseline answer "
        "as long)",
    )
    repetition_penalty: float = Field(
        1.0,
        gt=0,
        description="Scores of tokens already in the prompt or answer are divided by it "
        "(transformers' repetition_penalty): above 1 discourages repeats, 1 is none; greedy or "
        "sampled",
    )

    def changed(self) -> list[str]:
        """The settings given values other than the defaults (``generation.KEY``)."""
        defaults = GenerationSpec().model_dump()
        return [f"generation.{k}" for k, v in self.model_dump().items() if v != defaults[k]]


class TrainSpec(_Strict):
    """Training hyperparameters (an extension of the contract; all optional).

    For LoRA/DoRA/IA3 encoder classifiers, unset epochs, learning rate, rank, alpha and target
    modules are not these defaults: they are chosen on a validation part of the training split
    (``search.auto``), or take the measured defaults of ``tasks/train/tune.py``. Generative
    methods and continued pre-training choose their unset epochs the same way.
    """

    epochs: float = Field(
        3.0,
        gt=0,
        description="Unset: chosen by early stopping on validation (search.auto) for classifier "
        "and generative methods and CPT; without validation 3, classifiers 8",
    )
    learning_rate: float = Field(
        5e-4, gt=0, description="Default 5e-4; LoRA/DoRA classifiers: 1e-3, checked on validation"
    )
    batch_size: int = Field(16, ge=1)
    max_length: int = Field(128, ge=8, le=8192)
    lora_r: int = Field(8, ge=1, description="Default 8; LoRA/DoRA classifiers: 16")
    lora_alpha: int = Field(16, ge=1, description="Default 16; LoRA/DoRA classifiers: 32")
    lora_dropout: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    packing: bool = Field(
        False,
        description="Bin-pack decoder examples into rows of max_length (no cross-example "
        "attention; batch_size then counts rows); 2.4x the tokens/s of padding on CPU "
        "(benchmarks/bench_sft.py)",
    )
    virtual_tokens: int = Field(16, ge=1, le=512, description="prefix / prompt-tuning / p-tuning")
    unfrozen_layers: int = Field(2, ge=1, description="freeze: top blocks left trainable")
    checkpoint_steps: int = Field(
        50, ge=1, description="Steps between resumable checkpoints (generative recipes)"
    )
    max_new_tokens: int = Field(64, ge=1, le=4096, description="Answer length when evaluating")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="Training precision: auto (bf16 on a CUDA GPU that supports it, else fp32), "
        "fp32, bf16 (also on CPU) or fp16 (CUDA only); mixed precision over fp32 weights",
    )
    devices: int = Field(
        1,
        ge=1,
        le=64,
        description="Training processes (one per GPU, or CPU processes without CUDA), launched "
        "with torchrun; batch_size is the global batch, split evenly across them",
    )
    target_modules: Literal["default", "all-linear"] | list[str] = Field(
        "default",
        description="Layers LoRA/DoRA adapt: 'default' (peft's per-architecture table: the "
        "attention projections; the fused qkv_proj of Phi-3 and Wqkv of ModernBERT, which "
        "peft has no entry for), 'all-linear' (every linear layer but the head; the default "
        "of LoRA/DoRA classifiers), or names (a module's name or its last dotted parts; a "
        "name matching no layer fails when the model is set up, before training)",
    )
    patience: int = Field(
        3,
        ge=1,
        le=100,
        description="With a validation part (search.auto): epochs without improvement on it "
        "before training stops; the best epoch is kept",
    )

    @field_validator("target_modules")
    @classmethod
    def _modules(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and (not value or not all(m.strip() for m in value)):
            raise ValueError("give at least one module name, and no blank ones")
        return value


class NearDedupSpec(_Strict):
    """Near-duplicate removal with MinHash LSH over word n-grams."""

    enabled: bool = True
    ngram: int = Field(5, ge=1, le=50, description="Words per shingle")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations")
    threshold: float = Field(0.8, gt=0, le=1, description="Jaccard similarity that counts")


class SemanticDedupSpec(_Strict):
    """Optional removal of paraphrases by embedding cosine (uses the base model's encoder)."""

    enabled: bool = False
    threshold: float = Field(0.95, gt=0, le=1)


class QualitySpec(_Strict):
    """Quality heuristics. Keys left out take the task's defaults; ``null`` switches one off."""

    enabled: bool = True
    min_words: int | None = Field(None, ge=0)
    max_words: int | None = Field(None, ge=1)
    min_mean_word_length: float | None = Field(None, ge=0)
    max_mean_word_length: float | None = Field(None, ge=0)
    max_symbol_ratio: float | None = Field(None, ge=0)
    min_alpha_word_ratio: float | None = Field(None, ge=0, le=1)
    max_duplicate_line_ratio: float | None = Field(None, ge=0, le=1)
    max_duplicate_line_chars: float | None = Field(
        None, ge=0, le=1, description="Share of characters in lines that repeat an earlier line"
    )
    max_top_ngram_ratio: float | None = Field(None, ge=0, le=1)

    def overrides(self) -> dict[str, Any]:
        """The limits the spec sets explicitly (``None`` included: that rule is off)."""
        return {k: getattr(self, k) for k in self.model_fields_set if k != "enabled"}


class DecontaminateSpec(_Strict):
    """Drop training records that are largely eval content (``tasks/curate/decontaminate.py``)."""

    enabled: bool = True
    ngram: int = Field(8, ge=1, le=50, description="Words per n-gram")
    min_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="A training record is dropped when this share of its content n-grams is in "
        "the eval set, or it holds this share of one eval record's",
    )
    boilerplate: float = Field(
        0.01,
        ge=0,
        lt=1,
        description="An n-gram held by more than this share of records (and more than 5) is "
        "boilerplate and ignored",
    )


class CurationSpec(_Strict):
    """Which curation blocks run, in this order (an extension of the contract)."""

    normalize: bool = Field(True, description="Unicode NFC, mojibake repair, whitespace")
    quality: QualitySpec = Field(default_factory=QualitySpec)
    pii: bool = Field(True, description="Redact e-mails, phones, IPs, card numbers, API keys")
    label_conflicts: bool = Field(True, description="Quarantine one text with several labels")
    exact_dedup: bool = True
    near_dedup: NearDedupSpec = Field(default_factory=NearDedupSpec)
    semantic_dedup: SemanticDedupSpec = Field(default_factory=SemanticDedupSpec)
    decontaminate: DecontaminateSpec = Field(default_factory=DecontaminateSpec)
    shard_size: int = Field(
        50_000,
        ge=1,
        description="Records per shard; shards run as parallel mapped tasks (Dask when several)",
    )

    @model_validator(mode="before")
    @classmethod
    def _switches(cls, value: Any) -> Any:
        """A block with settings takes ``false``/``true`` as ``{enabled: false}``/``true``."""
        if not isinstance(value, dict):
            return value
        blocks = ("quality", "near_dedup", "semantic_dedup", "decontaminate")
        return {
            k: {"enabled": v} if k in blocks and isinstance(v, bool) else v
            for k, v in value.items()
        }


class RetrievalSpec(_Strict):
    """How a ``rag`` candidate indexes and searches ``data.knowledge`` (an extension).

    The embedder is the spec's ``base_model`` (a sentence-transformers model).
    """

    mode: Literal["dense", "bm25", "hybrid"] = Field(
        "hybrid", description="dense vectors, BM25 keywords, or both fused (see fusion)"
    )
    fusion: Literal["convex", "rrf"] = Field(
        "convex",
        description="hybrid: weighted sum of min-max normalised scores, or reciprocal rank fusion",
    )
    lexical_weight: float = Field(
        0.2, ge=0.0, le=1.0, description="hybrid, convex fusion: the BM25 side's weight"
    )
    reranker: str | None = Field(
        None,
        min_length=1,
        description="A sentence-transformers cross-encoder (alias, folder or hub id) that "
        "re-orders the first rerank_depth passages; None: no reranking",
    )
    rerank_depth: int = Field(20, ge=1, le=1000, description="Passages the reranker re-orders")
    chunk_tokens: int = Field(200, ge=16, le=8192, description="Chunk size in embedder tokens")
    overlap: int = Field(40, ge=0, description="Tokens shared by neighbouring chunks")
    k: int = Field(5, ge=1, le=100, description="Passages returned per question")
    per_source: int | None = Field(
        3,
        ge=1,
        le=100,
        description="Most of the k passages one source file may fill (drawn from the top "
        "candidates of each ranking); None: no limit",
    )
    candidates: int = Field(
        50, ge=1, le=1000, description="Candidates per ranking fused in hybrid mode"
    )
    generator: str | None = Field(
        None,
        min_length=1,
        description="Model that answers from the retrieved passages (catalogue alias, folder "
        "or hub id); None: passages only",
    )
    max_new_tokens: int = Field(64, ge=1, le=4096, description="Longest generated answer")

    @field_validator("generator", "reranker")
    @classmethod
    def _model_named(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not value.strip():
            raise ValueError(f"retrieval.{info.field_name} must name a model (or be left out)")
        return value

    @model_validator(mode="after")
    def _overlap(self) -> RetrievalSpec:
        if self.overlap >= self.chunk_tokens:
            raise ValueError(
                f"retrieval.overlap ({self.overlap}) must be smaller than "
                f"retrieval.chunk_tokens ({self.chunk_tokens})"
            )
        return self


class SearchSpec(_Strict):
    """Hyperparameter search and validation-chosen defaults (an extension).

    With ``space`` set, each configuration of the grid trains on the training split minus a
    validation part and is scored there; the best configuration then trains on the whole
    training split and goes on through evaluation and the gate like any run. With ``space``
    empty and ``auto`` on, the settings the spec leaves unset that matter for quality are
    chosen the same way, on validation, never on the eval split: retrieval settings on a share
    of ``data.questions`` (``tasks/rag/tune.py``); training settings on a share of the training
    split (``tasks/train/tune.py``).
    """

    space: dict[str, list[float | int | bool]] = Field(
        default_factory=dict,
        description="train keys and the values to try, e.g. {learning_rate: [0.001, 0.003]}",
    )
    max_trials: int = Field(
        8, ge=1, le=256, description="Most configurations tried (a seeded sample of the grid)"
    )
    validation_fraction: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Share set aside to choose on: of the training split (default 0.2), or of "
        "data.questions for retrieval-qa (default 0.3)",
    )
    auto: bool = Field(
        True,
        description="Choose the quality settings the spec leaves unset on validation (when "
        "space is empty); false: they take the fixed defaults",
    )
    min_validation: int = Field(
        20,
        ge=1,
        description="Fewest validation examples or questions a choice is made on; with fewer, "
        "the fixed defaults are used and the run says so",
    )

    def fraction(self, task: str) -> float:
        """The validation share for ``task`` (the spec's, else the task's default)."""
        if self.validation_fraction is not None:
            return self.validation_fraction
        return 0.3 if task == "retrieval-qa" else 0.2

    @field_validator("space")
    @classmethod
    def _space(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in value.items():
            if key not in TrainSpec.model_fields:
                raise ValueError(
                    f"'{key}' is not a train key; searchable: {', '.join(TrainSpec.model_fields)}"
                )
            if not values:
                raise ValueError(f"search.space.{key} is empty; give at least one value")
            for item in values:
                try:
                    TrainSpec.model_validate({key: item})
                except ValidationError as exc:
                    reason = exc.errors()[0]["msg"]
                    raise ValueError(f"search.space.{key}: {item!r} is invalid: {reason}") from None
        return value


class CptSpec(_Strict):
    """Continued pre-training (an extension): method ``cpt``, or a CPT stage before SFT.

    For ``language-modeling`` the corpus is ``data.train``. For an SFT task, ``corpus`` makes
    the run a sequential plan: continue pre-training on it first, then fine-tune the result on
    ``data.train`` with the spec's method.
    """

    replay: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="Share of training tokens taken from data.general (replay against "
        "catastrophic forgetting); 0 trains on the domain corpus alone",
    )
    corpus: Path | None = Field(
        None,
        description="SFT tasks: domain text (.jsonl/.csv/.parquet with data.text_field, or a "
        "folder of .txt/.md/.html) to continue pre-training on before fine-tuning",
    )
    epochs: float | None = Field(None, gt=0, description="CPT stage epochs (default: train's)")
    learning_rate: float | None = Field(
        None, gt=0, description="CPT stage learning rate (default: train's)"
    )

    @field_validator("corpus")
    @classmethod
    def _corpus(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        path = _resolve(value, info)
        if path is not None and not path.exists():
            raise ValueError(f"not found: {path}")
        return path


REWARD_KINDS = ("exact_match", "contains", "regex", "token_f1", "model", "python")
#: Reward kinds that compare an answer with the record's reference answer (its target).
REFERENCE_REWARDS = ("exact_match", "contains", "token_f1")
_FUNCTION = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class RewardSpec(_Strict):
    """One reward of ``grpo`` (an extension; ``runtime/rewards.py`` computes them).

    ``exact_match``, ``contains`` and ``token_f1`` compare an answer with the record's
    reference (SQuAD-normalised); ``regex`` scores 1 when ``pattern`` matches the answer;
    ``python`` calls ``function`` (``module:function``, importable from the spec's folder) as
    ``function(prompts=[...], completions=[...], references=[...])``, which returns one number
    per completion. ``model`` names a reward model (method ``reward``): a registered version
    (``models:/NAME@ALIAS``) or a package folder; it scores each answer to its prompt.
    """

    kind: Literal["exact_match", "contains", "regex", "token_f1", "model", "python"]
    weight: float = Field(1.0, description="Weight of this reward in the total")
    pattern: str | None = Field(None, description="kind regex: the pattern (Python re.search)")
    function: str | None = Field(None, description="kind python: module:function")
    model: str | None = Field(None, description="kind model: models:/NAME@ALIAS")

    @model_validator(mode="after")
    def _fields_of_kind(self) -> RewardSpec:
        needs = {"regex": "pattern", "python": "function", "model": "model"}
        for kind, key in needs.items():
            given = getattr(self, key) is not None
            if self.kind == kind and not given:
                raise ValueError(f"kind '{kind}' needs '{key}'")
            if self.kind != kind and given:
                raise ValueError(f"'{key}' applies to kind '{kind}', not '{self.kind}'")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(
                    f"pattern {self.pattern!r} is not a regular expression: {exc}"
                ) from None
        if self.function is not None and not _FUNCTION.match(self.function):
            raise ValueError(f"function must be 'module:function', got {self.function!r}")
        if self.model is not None:
            registered_reference(self.model)  # a malformed models:/ URI fails here
        return self


class AlignSpec(_Strict):
    """Preference tuning and RL (an extension): ``dpo``, ``orpo``, ``simpo``, ``kto``, ``grpo``.

    The methods train through TRL (``tasks/train/align.py``), on preference pairs (``dpo``,
    ``orpo``, ``simpo``), on answers labelled good or bad (``kto``), or on prompts whose
    sampled answers the spec's ``rewards`` score (``grpo``).
    """

    adapter: Literal["lora", "dora", "full"] = Field(
        "lora",
        description="What trains: a LoRA or DoRA adapter (the reference policy is then the base "
        "with the adapter disabled: no second model in memory) or every weight (full: the "
        "reference is a frozen copy)",
    )
    beta: float = Field(
        0.1,
        gt=0,
        description="Strength of the pull towards the reference (DPO/KTO beta, SimPO's reward "
        "scale, ORPO's odds-ratio weight lambda); also scales reward_margin",
    )
    simpo_gamma: float = Field(0.5, ge=0, description="SimPO: the target reward margin")
    num_generations: int = Field(
        4, ge=2, le=64, description="GRPO: answers sampled per prompt (the group G)"
    )
    temperature: float = Field(1.0, gt=0, le=2, description="GRPO: sampling temperature")
    judge: str | None = Field(
        None,
        description="A reward model (models:/NAME@ALIAS, or a package folder) that judges the "
        "candidate's answers against the starting model's: adds win_rate (any generative "
        "method)",
    )
    desirable_weight: float = Field(1.0, gt=0, description="KTO: weight of good answers")
    undesirable_weight: float = Field(1.0, gt=0, description="KTO: weight of bad answers")

    @field_validator("judge")
    @classmethod
    def _judge(cls, value: str | None) -> str | None:
        if value is not None:
            registered_reference(value)  # a malformed models:/ URI fails here
        return value


class ForgettingSpec(_Strict):
    """The forgetting check on ``data.general`` (runs for decoders when it is set; extension)."""

    max_increase: float = Field(
        0.10,
        ge=0,
        description="Largest allowed relative rise of general-text perplexity (0.10 = 10%); "
        "a candidate that forgets more is not promoted",
    )
    check_fraction: float = Field(
        0.2, gt=0, lt=1, description="Share of data.general held out for the check, never replayed"
    )
    max_check_texts: int = Field(200, ge=1, description="Most general texts in the check")


class PruneSpec(_Strict):
    """How much of the teacher ``method: prune`` removes: a block count or a share."""

    blocks: int | None = Field(
        None,
        ge=0,
        description="Transformer blocks to remove; 0 removes none and trains nothing (with "
        "compress.quantize: the teacher itself, quantized)",
    )
    ratio: float | None = Field(
        None, gt=0, lt=1, description="Share of the blocks to remove (default 0.5)"
    )

    @model_validator(mode="after")
    def _one(self) -> PruneSpec:
        if self.blocks is not None and self.ratio is not None:
            raise ValueError("set one of compress.prune.blocks and compress.prune.ratio")
        return self


class CompressSpec(_Strict):
    """Compression (``prune``, ``distill``): the teacher, what goes, int8 or not, the trade."""

    teacher: str | None = Field(
        None,
        description="The model to compress or imitate: a registered version (models:/NAME@ALIAS "
        "or models:/NAME/VERSION) or a package folder; for generative distill also a base model "
        "(catalogue alias or model folder)",
    )
    unlabelled: Path | None = Field(
        None,
        description="distill: more inputs without labels or answers (a JSONL or text file, one "
        "per record; data.text_field or data.prompt_field read from JSONL): the teacher labels "
        "them (classification: its soft labels) or answers them (generative)",
    )
    objective: Literal["sequence", "logit"] = Field(
        "sequence",
        description="Generative distill: sequence (the teacher answers the prompts; the student "
        "is fine-tuned on those answers) or logit (on-policy: the student answers and learns the "
        "teacher's token distributions, TRL's DistillationTrainer; teacher and student must "
        "share a tokenizer)",
    )
    beta: float = Field(
        0.5,
        ge=0,
        le=1,
        description="objective logit: the generalized Jensen-Shannon interpolation (0 forward "
        "KL, 0.5 JSD, 1 reverse KL)",
    )
    student_method: Literal["full", "lora", "dora", "ia3", "freeze"] = Field(
        "full",
        description="Generative distill: how the student (base_model) trains on the teacher's "
        "answers",
    )
    prune: PruneSpec = Field(default_factory=PruneSpec)
    alpha: float = Field(
        0.5, ge=0, le=1, description="Weight of the label loss; 1 - alpha weighs the teacher's"
    )
    temperature: float = Field(
        2.0,
        gt=0,
        description="Distillation temperature (generative distill with objective logit: 1.0 "
        "unless set, as it is also the temperature the student samples its answers at)",
    )
    quantize: Literal["int8"] | None = Field(
        None,
        description="int8: store the candidate dynamically quantized (linear layers int8 per "
        "output channel, embeddings 8-bit per row; CPU inference); none: fp32",
    )
    min_retained: float | None = Field(
        None, gt=0, description="Least share of the teacher's target metric to keep (e.g. 0.95)"
    )
    min_speedup: float | None = Field(
        None, gt=0, description="Least CPU throughput relative to the teacher (e.g. 1.8)"
    )

    @field_validator("teacher")
    @classmethod
    def _teacher(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or registered_reference(value) is not None:
            return value
        base = (info.context or {}).get("base_dir")
        path = Path(value).expanduser()
        if not path.is_absolute() and base is not None:
            path = Path(base) / path
        if is_package(str(path)):
            return str(path.resolve())
        # not a package: a base model (generative distill only; the cross-checks say so)
        try:
            return normalize_reference(value, Path(base) if base is not None else None)
        except ValueError as error:
            raise ValueError(
                f"'{value}' is neither a registered version (models:/NAME@ALIAS) nor a package "
                f"folder (no adaptflow_model.json there), nor a base model: {error}"
            ) from None

    @field_validator("unlabelled")
    @classmethod
    def _unlabelled(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        path = _resolve(value, info)
        if path is not None and not path.is_file():
            raise ValueError(f"expected an existing file of records or lines: {path}")
        return path

    @property
    def distill_temperature(self) -> float:
        """``temperature`` as ``distill`` uses it: 1.0 for the logit objective unless set."""
        if self.objective == "logit" and "temperature" not in self.model_fields_set:
            return 1.0
        return self.temperature

    @model_validator(mode="after")
    def _something_compressed(self) -> CompressSpec:
        if self.prune.blocks == 0 and self.quantize is None:
            raise ValueError(
                "compress.prune.blocks 0 removes no block; without compress.quantize the "
                "candidate would be the teacher itself"
            )
        return self


class Spec(_Strict):
    """A use case: what to adapt, on which data, judged by which metric."""

    name: str = Field(description="MLflow registered model name")
    task: Task
    base_model: str = Field(
        "minilm",
        description="Catalogue alias, local path, hub id, or a registered version "
        "(models:/NAME@ALIAS or models:/NAME/VERSION: the run starts from that version, "
        "materialized as a plain model folder, and tags its lineage)",
    )
    allow_pickle: bool = Field(
        False,
        description="Load base_model from pickle-based weights (pytorch_model.bin) when it has "
        "no safetensors; unpickling can run code, so this is off unless set explicitly",
    )
    method: Method = "auto"
    data: DataSpec
    needs: Needs = Field(default_factory=Needs)
    budget: Budget = Field(default_factory=Budget)
    target: Target = Field(default_factory=Target)
    seed: int = Field(42, description="Seed for splits, initialisation and data order")
    train: TrainSpec = Field(default_factory=TrainSpec)
    curation: CurationSpec = Field(default_factory=CurationSpec)
    retrieval: RetrievalSpec = Field(default_factory=RetrievalSpec)
    search: SearchSpec = Field(default_factory=SearchSpec)
    cpt: CptSpec = Field(default_factory=CptSpec)
    align: AlignSpec = Field(default_factory=AlignSpec)
    rewards: list[RewardSpec] = Field(
        default_factory=list, description="grpo: the rewards, weighted and summed"
    )
    forgetting: ForgettingSpec = Field(default_factory=ForgettingSpec)
    compress: CompressSpec = Field(default_factory=CompressSpec)
    generation: GenerationSpec = Field(
        default_factory=GenerationSpec,
        description="How a generative candidate answers: recorded in its package, served by "
        "default and scored by the gate (greedy unless a temperature is set)",
    )

    _source: Path | None = PrivateAttr(None)
    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)
    _lineage: dict[str, str] = PrivateAttr(default_factory=dict)
    _pins: dict[str, str] = PrivateAttr(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                "expected 1-100 characters of letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        return value

    @field_validator("base_model")
    @classmethod
    def _base_model(cls, value: str, info: ValidationInfo) -> str:
        if registered_reference(value) is not None:  # raises ValueError when malformed
            return value  # a registered version: resolved when the run starts
        base = (info.context or {}).get("base_dir")
        return normalize_reference(value, Path(base) if base is not None else None)

    @model_validator(mode="after")
    def _cross_checks(self) -> Spec:
        allowed = TASK_METRICS[self.task]
        if self.target.metric is None:
            aligning = self.method in ALIGNMENT_METHODS + REWARD_METHODS
            aligning = aligning and self.task in GENERATIVE_TASKS
            rl = self.method == "grpo" and self.task in GENERATIVE_TASKS
            self.target.metric = (
                ALIGNMENT_METRICS[0] if aligning else RL_METRICS[0] if rl else allowed[0]
            )
        elif self.target.metric not in allowed:
            raise ValueError(
                f"target.metric '{self.target.metric}' does not apply to task '{self.task}'; "
                f"expected one of {', '.join(allowed)}"
            )
        self._format_checks()
        if self.method in ("prune", "distill"):
            self._compress_checks()
        if self.task == "classification" and not self.data.label_field:
            raise ValueError("task 'classification' needs data.label_field")
        if self.task == "retrieval-qa":
            # data.questions is checked where it is used (run, curate: require_questions), so
            # recommend and index work on a knowledge folder alone
            if self.data.knowledge is None:
                raise ValueError("task 'retrieval-qa' needs data.knowledge")
            if self.data.questions is not None and self.data.questions.is_dir():
                raise ValueError(f"data.questions is a folder: {self.data.questions}")
            if self.target.metric in ANSWER_METRICS and self.retrieval.generator is None:
                raise ValueError(
                    f"target.metric '{self.target.metric}' scores generated answers; "
                    "set retrieval.generator"
                )
        elif self.data.train is None:
            raise ValueError(f"task '{self.task}' needs data.train")
        if self.cpt.corpus is not None and self.task not in GENERATIVE_TASKS:
            raise ValueError(
                f"cpt.corpus adds a CPT stage before fine-tuning, for {', '.join(GENERATIVE_TASKS)}"
                f"; task '{self.task}' cannot use it (language-modeling trains on data.train)"
            )
        if self.cpt.corpus is not None and self.cpt.replay > 0 and self.data.general is None:
            raise ValueError(
                f"the CPT stage replays general text (cpt.replay {self.cpt.replay}): set "
                "data.general, or cpt.replay: 0"
            )
        lm_cpt = self.method == "cpt" and self.task == "language-modeling"
        if lm_cpt and self.cpt.replay > 0 and self.data.general is None:
            raise ValueError(
                f"method 'cpt' replays general text (cpt.replay {self.cpt.replay}): set "
                "data.general, or cpt.replay: 0 to train on the domain corpus alone"
            )
        self._training_checks()
        self._family_checks()
        self._alignment_checks()
        self._generation_checks()
        return self

    def _generation_checks(self) -> None:
        """``generation`` only where answers are generated; its ``max_new_tokens`` wins.

        The winner is copied into ``train.max_new_tokens``, which every step that answers
        reads (training's validation, the evaluation, the baseline, GRPO's sampling).
        """
        changed = self.generation.changed()
        if changed and (self.task not in GENERATIVE_TASKS or self.method == "reward"):
            if self.task == "retrieval-qa":
                why = "a retrieval-qa generator answers greedily, at most retrieval.max_new_tokens"
            elif self.task in GENERATIVE_TASKS:
                why = "method 'reward' trains a reward model, which scores answers and writes none"
            else:
                why = f"task '{self.task}' generates no answers"
            raise ValueError(
                f"{', '.join(changed)}: generation settings apply to the answers of tasks "
                f"{', '.join(GENERATIVE_TASKS)}; {why}"
            )
        if self.generation.max_new_tokens is not None:
            self.train.max_new_tokens = self.generation.max_new_tokens

    def _alignment_checks(self) -> None:
        """Preference methods against their data format, metric and base model."""
        aligning = self.method in ALIGNMENT_METHODS + REWARD_METHODS
        if self.target.metric in ALIGNMENT_METRICS and not aligning:
            raise ValueError(
                f"target.metric '{self.target.metric}' scores preference tuning; set method to "
                f"one of {', '.join(ALIGNMENT_METHODS + REWARD_METHODS)}"
            )
        if self.target.metric in JUDGED_METRICS and self.align.judge is None:
            raise ValueError(
                f"target.metric '{self.target.metric}' is judged by a reward model: set "
                "align.judge (models:/NAME@ALIAS of a method: reward version)"
            )
        if self.align.judge is not None and (
            self.task not in GENERATIVE_TASKS or self.method in ("ladder", "reward")
        ):
            raise ValueError(
                f"align.judge compares generated answers: for tasks {', '.join(GENERATIVE_TASKS)}"
                f" and any method but ladder and reward (task '{self.task}', method "
                f"'{self.method}')"
            )
        rl = self.method == "grpo"
        if self.target.metric in RL_METRICS and not rl:
            raise ValueError(f"target.metric '{self.target.metric}' scores method 'grpo'")
        if rl and not self.rewards:
            raise ValueError("method 'grpo' needs rewards (a list of {kind, weight, ...})")
        if self.rewards and not rl:
            raise ValueError(f"rewards apply to method 'grpo', not '{self.method}'")
        if rl and self.train.batch_size % self.align.num_generations:
            raise ValueError(
                f"method 'grpo' samples align.num_generations {self.align.num_generations} "
                f"answers per prompt: train.batch_size {self.train.batch_size} must be a "
                "multiple of it"
            )
        if rl and self.data.format in ("preference", "kto"):
            raise ValueError(
                f"method 'grpo' trains on prompts (with reference answers for the checks); "
                f"data.format '{self.data.format}' holds answers to prefer"
            )
        if not aligning and not rl:
            return
        family = known_family(self.base_model)
        if self.method in REWARD_METHODS and family == "encoder-decoder":
            raise ValueError(
                f"method 'reward' puts a scalar head on a decoder or an encoder; base model "
                f"'{self.base_model}' is an encoder-decoder"
            )
        if self.method not in REWARD_METHODS and family is not None and family != "decoder":
            raise ValueError(
                f"method '{self.method}' tunes a decoder (TRL's trainers); base model "
                f"'{self.base_model}' is {'an' if family[0] == 'e' else 'a'} {family}"
            )
        if rl:
            return
        wanted = "kto" if self.method == "kto" else "preference"
        if self.data.format not in (wanted, "auto"):
            raise ValueError(
                f"method '{self.method}' trains on {wanted} records; data.format is "
                f"'{self.data.format}' (use '{wanted}' or 'auto')"
            )

    def _training_checks(self) -> None:
        devices = self.train.devices
        if devices > 1 and self.task not in GENERATIVE_TASKS + LM_TASKS:
            raise ValueError(
                f"train.devices {devices}: multi-process training runs the recipes of tasks "
                f"{', '.join(GENERATIVE_TASKS + LM_TASKS)}; task '{self.task}' trains in one "
                "process (set train.devices: 1)"
            )
        if self.train.batch_size % devices:
            raise ValueError(
                f"train.batch_size {self.train.batch_size} is the global batch and must split "
                f"evenly over train.devices {devices}"
            )

    def _family_checks(self) -> None:
        """Method and task against the base model's family, when known without loading it."""
        family = known_family(self.base_model)
        if family is None:
            return
        base = f"base model '{self.base_model}' is {'an' if family[0] == 'e' else 'a'} {family}"
        if self.task in LM_TASKS and family != "decoder":
            raise ValueError(
                f"task '{self.task}' trains with method 'cpt' (continued next-token "
                f"pre-training), which needs a decoder; {base}"
            )
        if self.cpt.corpus is not None and family != "decoder":
            raise ValueError(
                f"cpt.corpus adds a continued pre-training stage, which needs a decoder; {base}"
            )
        if self.task in GENERATIVE_TASKS and family == "encoder" and self.method != "reward":
            raise ValueError(
                f"task '{self.task}' generates text, which needs a decoder or an "
                f"encoder-decoder (an encoder can be a reward model: method reward); {base}"
            )

    def _compress_checks(self) -> None:
        """``prune`` and ``distill``: a teacher of the right kind for the task."""
        compress = self.compress
        if self.task not in ("classification", *GENERATIVE_TASKS):
            raise ValueError(
                f"method '{self.method}' compresses classifiers and generators, not task "
                f"'{self.task}'"
            )
        if compress.teacher is None:
            raise ValueError(
                f"method '{self.method}' needs compress.teacher: the trained model to "
                "compress (models:/NAME@ALIAS or a package folder)"
            )
        if not is_package(compress.teacher) and (
            self.method == "prune" or self.task == "classification"
        ):
            raise ValueError(
                f"compress.teacher: '{compress.teacher}' is neither a registered version "
                "(models:/NAME@ALIAS) nor a package folder (no adaptflow_model.json there); "
                f"method '{self.method}' on task '{self.task}' needs a trained model"
            )
        if self.method == "prune" and compress.unlabelled is not None:
            raise ValueError("compress.unlabelled is for method 'distill'")
        if self.method == "distill" and compress.quantize is not None:
            raise ValueError(
                "compress.quantize is for method 'prune' (prune.blocks: 0 quantizes the teacher "
                "alone); distill a student, then compress it with method 'prune'"
            )

    def _format_checks(self) -> None:
        data = self.data
        if data.format not in ("alpaca", "messages", "sharegpt", "preference", "kto"):
            return
        if self.task not in GENERATIVE_TASKS:
            raise ValueError(
                f"data.format '{data.format}' applies only to tasks "
                f"{', '.join(GENERATIVE_TASKS)}, not '{self.task}'; use 'fields' or 'auto'"
            )
        for key in ("text_field", "target_field"):
            if key in data.model_fields_set:
                raise ValueError(
                    f"data.{key} does not apply with data.format '{data.format}' (the format "
                    "names its fields); remove it or use data.format 'fields'"
                )
        for key in ("train", "eval"):
            path = getattr(data, key)
            if path is not None and path.is_file() and path.suffix.lower() == ".csv":
                raise ValueError(
                    f"data.format '{data.format}' reads .jsonl, .json or .parquet files, but "
                    f"data.{key} is a .csv file: {path}"
                )
            if path is not None and path.is_dir():
                raise ValueError(
                    f"data.format '{data.format}' reads .jsonl, .json or .parquet files, but "
                    f"data.{key} is a folder: {path}"
                )

    def require_questions(self) -> Path:
        """``data.questions`` of a retrieval-qa spec, for the commands that use it.

        Raises:
            SpecError: When the spec has none (run and curate score and curate them).
        """
        if self.data.questions is None:
            raise SpecError(
                f"{self.name}: task 'retrieval-qa' needs data.questions to curate and to run "
                "(JSONL of {question, source}: the eval set the candidate is scored on); "
                "recommend and index work without it"
            )
        return self.data.questions

    def retrieval_to_choose(self) -> list[str]:
        """The ``retrieval`` keys chosen on validation (``search.auto``): those left unset."""
        if not self.search.auto:
            return []
        return sorted(set(RetrievalSpec.model_fields) - self.retrieval.model_fields_set)

    @property
    def source(self) -> Path | None:
        """The spec file this spec was read from, if any."""
        return self._source

    @property
    def input_format(self) -> str:
        """The ``data.format`` to read with: always ``fields`` for non-generative tasks."""
        return self.data.format if self.task in GENERATIVE_TASKS else "fields"

    @property
    def metric(self) -> str:
        """The target metric (defaulted per task)."""
        if self.target.metric is None:
            raise InvariantError("target.metric is set when the spec is validated")
        return self.target.metric

    @property
    def lineage(self) -> dict[str, str]:
        """Tags naming the registered version this run starts from (empty for other bases)."""
        return dict(self._lineage)

    def with_base_folder(self, folder: Path, lineage: dict[str, str]) -> Spec:
        """This spec starting from ``folder``, a registered base materialized by the run.

        The spec hash stays that of the spec as written (naming ``models:/…``), and every
        run and version of the pipeline is tagged with ``lineage`` (``provenance``).
        """
        pinned = self.model_copy(update={"base_model": str(folder)})
        pinned._raw = self._raw or self.model_dump(mode="json")
        pinned._lineage = dict(lineage)
        pinned._pins = dict(self._pins)
        return pinned

    @property
    def pins(self) -> dict[str, str]:
        """Tags naming the reward models (GRPO's, the judge) the run pinned to a version."""
        return dict(self._pins)

    def with_pinned_reward_models(
        self, rewards: list[RewardSpec], judge: str | None, pins: dict[str, str]
    ) -> Spec:
        """This spec with its reward models pinned (``models:/NAME/N``), tagged with ``pins``.

        An alias moved mid-run would otherwise train the policy against one judge and gate it
        with another. The spec hash stays that of the spec as written.
        """
        pinned = self.model_copy(
            update={"rewards": rewards, "align": self.align.model_copy(update={"judge": judge})}
        )
        pinned._raw = self._raw or self.model_dump(mode="json")
        pinned._lineage = dict(self._lineage)
        pinned._pins = dict(pins)
        return pinned

    def with_pinned_teacher(self, teacher: str) -> Spec:
        """This spec with ``compress.teacher`` pinned to a version (tag ``adaptflow.teacher``)."""
        pinned = self.model_copy(
            update={"compress": self.compress.model_copy(update={"teacher": teacher})}
        )
        pinned._raw = self._raw or self.model_dump(mode="json")
        pinned._source = self._source
        pinned._lineage = dict(self._lineage)
        pinned._pins = dict(self._pins) | {"adaptflow.teacher": teacher}
        return pinned

    def spec_hash(self) -> str:
        """A short, machine-independent hash of the spec as written."""
        canonical = json.dumps(self._raw or self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _describe(error: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in error["loc"]) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{loc}: unknown key"
    if kind == "missing":
        return f"{loc}: required field is missing"
    message = error["msg"].removeprefix("Value error, ")
    shown = error.get("input")
    if kind in {"value_error", "assertion_error"} or isinstance(shown, dict | list):
        return f"{loc}: {message}"
    return f"{loc}: {message} (got {shown!r})"


def parse_spec(raw: Any, base_dir: Path, source: str = "<spec>") -> Spec:
    """Validate a parsed spec mapping.

    Args:
        raw: The parsed YAML (must be a mapping).
        base_dir: Folder that relative paths resolve against.
        source: Name used in error messages.

    Returns:
        The validated spec.

    Raises:
        SpecError: Naming the source, each bad field and what was expected.
    """
    if not isinstance(raw, dict):
        got = "an empty file" if raw is None else type(raw).__name__
        raise SpecError(f"{source}: expected a YAML mapping of spec fields, got {got}")
    try:
        spec = Spec.model_validate(raw, context={"base_dir": base_dir})
    except ValidationError as exc:
        lines = "\n".join(f"  - {_describe(e)}" for e in exc.errors())  # type: ignore[arg-type]
        raise SpecError(f"invalid spec {source}:\n{lines}") from None
    spec._raw = raw
    return spec


class DuplicateKeyError(yaml.YAMLError):
    """A mapping in the spec names one key twice (YAML would silently keep the last)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping, with both lines."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` merges may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader reports it itself
                continue
            if first is not None:
                raise DuplicateKeyError(
                    f"key '{key}' is given twice (lines {first} and {line}); YAML would keep "
                    "only the last: remove one"
                )
            seen[key] = line
        return super().construct_mapping(node, deep)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` settings (``adaptflow run --set``) as a mapping of dotted keys to values.

    The value is read as YAML (``3e-4`` and ``0.0003`` are numbers, ``[1, 2]`` a list, ``null``
    clears a field), so it means what it would in the spec file.

    Raises:
        SpecError: An item without ``=``, with an empty key, or whose value is not YAML.
    """
    overrides: dict[str, Any] = {}
    for item in items:
        key, equals, text = item.partition("=")
        key = key.strip()
        if not equals or not key or any(not part for part in key.split(".")):
            raise SpecError(f"--set {item!r}: expected KEY=VALUE, e.g. train.learning_rate=3e-4")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc)
            raise SpecError(f"--set {item!r}: the value is not YAML: {problem}") from None
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 3e-4 (no dot) as a string; people mean a number
        overrides[key] = value
    return overrides


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of the spec mapping ``raw`` with each dotted key set (mappings made on the way).

    Raises:
        SpecError: When a key runs through a field that is not a mapping (``name.x=1``).
    """
    import copy

    result = copy.deepcopy(raw)
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = result
        for depth, part in enumerate(parents):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parents[: depth + 1])
                raise SpecError(f"--set {key}: '{where}' is not a mapping in the spec")
            node = child
        node[leaf] = value
    return result


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> Spec:
    """Read and validate a spec file.

    Args:
        path: Path to the YAML spec.
        overrides: Dotted keys set over the file's values (``parse_overrides``); the spec hash
            is of the result, so a run with overrides is told apart from one without.

    Returns:
        The validated spec, with relative paths resolved against the spec's folder.

    Raises:
        SpecError: When the file is missing, unreadable, not YAML, or invalid.
    """
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"spec file not found: {path}") from None
    except IsADirectoryError:
        raise SpecError(f"spec path is a folder, expected a YAML file: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read spec {path}: {exc}") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except DuplicateKeyError as exc:
        raise SpecError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{where}: invalid YAML: {problem}") from None
    if overrides and isinstance(raw, dict):
        raw = apply_overrides(raw, overrides)
    spec = parse_spec(raw, base_dir=path.resolve().parent, source=str(path))
    spec._source = path.resolve()
    return spec


def spec_json_schema() -> dict[str, Any]:
    """The spec's JSON schema (what ``adaptflow schema`` prints)."""
    return Spec.model_json_schema()
