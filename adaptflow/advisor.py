"""The method advisor: DESIGN.md §1 as a table of rules, plus a cost model with stated formulas.

Inputs are the spec's ``task``, ``needs`` and ``budget`` plus facts measured from the data
(labelled examples, tokens, unlabelled corpus size) and the base model (parameter count and
shape from its config). The output ranks *every* method: suitable or not, the reasons (each
quoting the inputs it used), and an estimate of training cost, peak memory and inference tokens.

How a method is judged, in order:

1. Every rule in ``RULES`` whose condition holds adds its reason; its effect either makes the
   method unsuitable (``BLOCK``) or moves its score.
2. A method's score starts at minus its cost rank (``COST_RANK``: cheapest first), so with no
   rule firing the cheapest suitable method ranks first: *start simple*.
3. Suitable methods rank above unsuitable ones, then by score, then by cost rank.

Cost model (each number comes from one of these formulas; the constants are below):

- training FLOPs: ``6·N·D`` for full training (``full``, ``cpt``, ``pretrain``) and ``4·N·D``
  for LoRA-style methods whose base weights are frozen (no weight gradients);
  ``freeze`` is ``2·N·D + 4·N_top·D``. N is the base model's parameter count, D the training
  tokens (labelled tokens × epochs; for ``cpt`` the corpus plus replay; for ``pretrain`` at least
  20 tokens per parameter).
- preference tuning (``dpo``, ``kto``): ``6·N·D`` with D the tokens of prompt + answer for both
  answers of a pair: the policy's forward and backward on an adapter (``4·N·D``) plus the
  reference's forward (``2·N·D``, the base with the adapter disabled); ``orpo`` and ``simpo``
  have no reference: ``4·N·D``.
- ``reward`` (a reward model): ``4·N·D`` with D the tokens of prompt + answer for both
  answers of a pair: the scalar model's forward and backward on an adapter, no reference.
- ``grpo``: ``8·N·D`` with ``D = G·(prompt + max_new_tokens)·epochs``: sampling G answers
  per prompt (``2·N`` per token), the policy update (``4·N·D``) and the KL reference (``2·N·D``).
- ``prune`` (compression): ``6·N_student·D + 2·N·D``: the student (the teacher less a share
  of its blocks: ``compress.prune.blocks`` over the depth, else ``compress.prune.ratio``, else
  ``PRUNE_SHARE``; ``N_student = N·(1 - share)``) trains every weight on the distillation loss,
  and the teacher's logits take one forward pass over the data. Quantize-only
  (``compress.prune.blocks: 0`` with ``compress.quantize: int8``) trains nothing:
  ``2·N·D_calibration``, the teacher's forward over the Block Influence calibration texts
  (``min(labelled, PRUNE_CALIBRATION)·mean tokens``); int8 rounds each weight once (~0 FLOPs).
- ``distill`` (compression): the spec's ``base_model`` is the student (N), ``compress.teacher``
  the teacher (``N_teacher``; when its size is not read, assumed ``N / (1 - PRUNE_SHARE)``, the
  size ratio a prune rung makes). ``D`` is the input tokens of the training records plus
  ``compress.unlabelled``; ``S·D`` the student's training FLOPs per token of its
  ``compress.student_method`` (``6·N`` full, ``4·N`` LoRA-style, ``2·N + 4·N_top`` freeze; a
  classifier student trains in full).
  Classification: ``2·N_teacher·D + 6·N·D·epochs`` (the teacher's soft labels once, then the
  student). Generative, ``objective: sequence``: ``2·N_teacher·D_gen + S·D_gen·epochs`` with
  ``D_gen = D + prompts·max_new_tokens`` (the teacher answers every prompt once, KV-cached,
  ~2·N_teacher per token; the student fine-tunes on prompts and answers). ``objective: logit``
  (on-policy, every step): ``epochs·(2·N·prompts·max_new_tokens + 2·N_teacher·D_gen + S·D_gen)``
  (the student samples, the teacher scores the sample, the student learns). Peak memory: the
  frozen teacher (2 bytes/parameter) plus the student's training memory.
- hours = FLOPs / (peak FLOP/s × utilisation) / 3600, for the hardware in ``HARDWARE``.
- peak training memory: AdamW full training 16 bytes/parameter; LoRA-style 2 bytes/parameter of
  frozen 16-bit weights plus 16 bytes per trainable parameter (QLoRA: 0.516 bytes/parameter of
  frozen 4-bit NF4 weights with double-quantized constants, Dettmers et al. 2023); plus
  activations of
  ``s·b·h·(34 + 5·a·s/h)`` bytes per layer (Korthikanti et al. 2022, 16-bit, no recomputation).
- inference tokens per query: the query itself, plus shown examples (decoder ICL), retrieved
  passages (RAG) or virtual tokens (prefix / prompt tuning).

Serving cost: the compression rung. ``prune`` and ``distill`` compress a trained model, so
``auto`` and the ladder never run them (``BY_NAME_ONLY``): their input is a teacher, which the
quality rungs have to make and register first. When the spec says serving cost matters
(``needs.low_latency`` or ``needs.latency_budget_ms``) and names no teacher, but a trained quality
method is suitable (and runnable, when runnability is given), ``prune`` is judged as if
``compress.teacher`` were this run's champion (``Facts.champion_teacher``): it becomes suitable,
marked ``then`` (ranked after every other suitable method, never ``recommended``), and
``Advice.compression_rung`` (``then`` in ``recommend --json``) names it as the step after the
ladder, with its estimate (half the blocks, int8) and the spec lines that run it:
``method: prune`` with ``compress.teacher: models:/NAME@champion``. It is a separate run, not a
last ladder rung: the teacher must be a registered (or packaged) trained version, and the
ladder's winner is registered only after every rung. ``distill`` is not offered there: its
student is ``base_model``, the champion's own size, so it would shrink nothing; the rung's
reasons say to distill the champion into a smaller ``base_model`` instead. Without a
serving-cost need nothing of this applies and compression is judged as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import yaml

from adaptflow.spec import CptSpec, TrainSpec

# --- constants the rules and the cost model use (documented, so the advice can be argued with)

#: Labelled examples below which fine-tuning of any kind is not suggested ("hundreds+", §1).
MIN_LABELLED_FINE_TUNE = 100
#: Below this, full fine-tuning overfits and forgets more than it gains over PEFT.
MIN_LABELLED_FULL = 1_000
#: Unlabelled tokens below which continued pre-training cannot move a model's language
#: (published domain-adaptive pre-training uses 1e8-1e10 tokens; below 1e8 use PEFT or RAG).
CPT_MIN_CORPUS_TOKENS = 100_000_000
#: Share of training tokens of general-domain "replay" text mixed into CPT to limit
#: forgetting: the spec's default ``cpt.replay`` (one value, read from the spec).
CPT_REPLAY: float = CptSpec.model_fields["replay"].default
#: Tokens per parameter for compute-optimal pre-training (Hoffmann et al. 2022, "Chinchilla").
CHINCHILLA_TOKENS_PER_PARAM = 20
#: When ``budget.gpu_hours`` is 0 (unstated), assume this many hours: a quick experiment.
UNSTATED_BUDGET_HOURS = 1.0
#: Models above this size make full fine-tuning an expensive first choice.
LARGE_MODEL_PARAMS = 1_000_000_000
#: Decoder few-shot prompts show at most this many examples (and stay within the context).
FEW_SHOT_EXAMPLES = 8
#: RAG prompt: passages retrieved per query, tokens per passage, answer tokens.
RAG_PASSAGES, RAG_PASSAGE_TOKENS, ANSWER_TOKENS = 5, 256, 64
#: Virtual tokens prepended by prefix / prompt / p-tuning: the spec's default.
VIRTUAL_TOKENS: int = TrainSpec.model_fields["virtual_tokens"].default
#: LoRA rank assumed when the spec sets none, and the attention matrices it adapts per layer.
LORA_MATRICES_PER_LAYER = 2
#: Parameters of the embedder RAG indexes with (all-MiniLM-L6-v2).
EMBEDDER_PARAMS = 22_700_000
#: Bytes per frozen parameter under QLoRA: 4-bit NF4 values plus double-quantized block
#: constants (0.127 bits/parameter), Dettmers et al. 2023. Layers bitsandbytes leaves in 16 bits
#: (embeddings, the output head, norms) are not counted apart: an underestimate for models whose
#: embeddings are a large share of their parameters (small models with large vocabularies).
QLORA_BYTES_PER_PARAM = (4 + 0.127) / 8


@dataclass(frozen=True)
class Hardware:
    """Peak dense 16-bit FLOP/s (fp32 for CPU), memory, and the utilisation assumed."""

    peak_flops: float
    memory_gb: float
    utilisation: float
    note: str


HARDWARE: dict[str, Hardware] = {
    "cpu": Hardware(4e11, 24, 0.40, "2 cores with AVX-512 FMA, fp32 (the CI machine)"),
    "t4": Hardware(65e12, 16, 0.35, "NVIDIA T4, fp16 tensor cores"),
    "a10": Hardware(125e12, 24, 0.35, "NVIDIA A10, bf16 tensor cores"),
    "l4": Hardware(121e12, 24, 0.35, "NVIDIA L4, bf16 tensor cores"),
    "a100": Hardware(312e12, 80, 0.35, "NVIDIA A100 80GB, bf16 tensor cores"),
    "h100": Hardware(989e12, 80, 0.35, "NVIDIA H100 SXM, bf16 tensor cores"),
}

PEFT = ("lora", "dora", "ia3", "prefix", "prompt-tuning", "p-tuning", "qlora")
FINE_TUNING = (*PEFT, "freeze", "full")
#: Offline preference tuning on pairs; KTO on thumbs; GRPO on rewards (all through TRL).
PAIRED = ("dpo", "orpo", "simpo")
PREFERENCE = (*PAIRED, "kto")
RL = ("grpo",)
#: A reward model: a scalar head trained on pairs (a judge, and GRPO's reward).
REWARD = ("reward",)
#: Compression of a trained model: blocks pruned, then distilled from it (``prune``), or a
#: smaller student taught by it (``distill``).
COMPRESS = ("prune", "distill")
#: Asked for by name, never picked by ``auto`` or the ladder: their metrics or their input
#: (a judge of answers; a model to compress) are not what those choose between.
BY_NAME_ONLY = (*REWARD, *COMPRESS)
TRAINED = (*FINE_TUNING, "cpt", "pretrain", *PREFERENCE, *RL, *REWARD, *COMPRESS)
METHODS = ("icl", "rag", *FINE_TUNING, "cpt", "pretrain", *PREFERENCE, *RL, *REWARD, *COMPRESS)
#: Methods that train the task's model from the data: the quality rungs a compression rung
#: follows (their champion is its teacher).
QUALITY_TRAINED = tuple(m for m in TRAINED if m not in BY_NAME_ONLY)
#: The share of the teacher's blocks ``prune`` removes by default (``compress.prune.ratio``).
PRUNE_SHARE = 0.5
#: Texts the teacher reads to measure Block Influence (``tasks.train.compress.CALIBRATION``).
PRUNE_CALIBRATION = 256
#: Methods with a reference policy in the loss: one more forward pass per sequence.
WITH_REFERENCE = ("dpo", "kto")

#: Cheapest first; a method's score starts at minus its rank.
COST_RANK: dict[str, float] = {
    "icl": 0,
    "rag": 1,
    "lora": 2,
    "ia3": 2.1,
    "dora": 2.2,
    "prefix": 2.3,
    "prompt-tuning": 2.4,
    "p-tuning": 2.5,
    "qlora": 2.6,  # LoRA's cost plus dequantizing every step: chosen when LoRA does not fit
    "freeze": 3,
    "full": 4,
    "cpt": 5,
    "pretrain": 6,
    # preference tuning after SFT: LoRA-priced, plus a second answer (and a reference pass)
    "orpo": 3.3,
    "simpo": 3.4,
    "kto": 3.5,
    "dpo": 3.6,
    "grpo": 4.5,  # G sampled answers per prompt: the costliest fine-tuning
    "reward": 3.2,  # LoRA-priced on both answers of a pair; answers nothing itself
    "prune": 3.8,  # a half-size student trained in full, plus the teacher's logits
    "distill": 3.9,  # a student trained in full, plus a larger teacher's outputs
}
#: Which family a method belongs to (the ladder climbs one rung per family).
FAMILY = (
    {m: "peft" for m in PEFT}
    | {
        "icl": "icl",
        "rag": "rag",
        "freeze": "freeze",
        "full": "full",
        "cpt": "cpt",
        "pretrain": "pretrain",
    }
    | {m: "preference" for m in PREFERENCE}
    | {"grpo": "rl", "reward": "reward", "prune": "compress", "distill": "compress"}
)


@dataclass(frozen=True)
class Facts:
    """Everything the advisor decides from (spec fields + measured facts)."""

    task: str
    family: str  # encoder | decoder | encoder-decoder (of the base model)
    params: int | None  # base-model parameters; None when its config could not be read
    layers: int = 0
    hidden: int = 0
    heads: int = 0
    labelled: int = 0  # usable labelled examples (text + label, or text + target)
    labelled_tokens: int = 0  # tokens over those examples (inputs and targets)
    mean_tokens: float = 0.0  # mean tokens per example
    corpus_tokens: int = 0  # unlabelled domain text (language-modelling data or knowledge)
    knowledge_tokens: int = 0  # the RAG corpus (data.knowledge)
    has_knowledge: bool = False
    external_knowledge: bool = False
    knowledge_changes_often: bool = False
    custom_behavior: bool = False
    new_domain_language: bool = False
    hallucination_tolerance: str = "medium"
    gpu_hours: float = 0.0
    hardware: str = "cpu"
    epochs: float = 3.0
    batch_size: int = 16
    max_length: int = 128
    lora_r: int = 8
    pairs: int = 0  # preference pairs (prompt, chosen, rejected) in the data
    thumbs: int = 0  # answers labelled good or bad (KTO records)
    rewards: int = 0  # rewards the spec declares (grpo)
    tuned_base: bool = False  # the base is a registered (fine-tuned) version, models:/...
    teacher: bool = False  # the spec names a trained model to compress (compress.teacher)
    num_generations: int = 4  # grpo's G
    max_new_tokens: int = 64  # the longest answer sampled
    low_latency: bool = False  # needs.low_latency: serving cost matters
    latency_budget_ms: float | None = None  # needs.latency_budget_ms (per example, CPU)
    name: str = ""  # the spec's name: the registered model a compression rung compresses
    teacher_params: int | None = None  # compress.teacher's parameters, when read
    unlabelled: int = 0  # compress.unlabelled: inputs the teacher labels or answers (distill)
    unlabelled_tokens: int = 0  # their tokens
    prune_blocks: int | None = None  # compress.prune.blocks
    prune_ratio: float | None = None  # compress.prune.ratio
    quantize: str | None = None  # compress.quantize
    distill_objective: str = "sequence"  # compress.objective (generative distill)
    student_method: str = "full"  # compress.student_method (generative distill)
    champion_teacher: bool = False  # set by advise(): the champion a quality rung trains can
    # be the teacher of a compression rung (serving cost matters, no compress.teacher)
    notes: tuple[str, ...] = ()  # how the facts were measured (shown with the advice)

    @property
    def budget_hours(self) -> float:
        """The training budget in hours on ``hardware`` (unstated: ``UNSTATED_BUDGET_HOURS``)."""
        return self.gpu_hours if self.gpu_hours > 0 else UNSTATED_BUDGET_HOURS

    @property
    def generative(self) -> bool:
        """Whether the task produces text (rather than a label)."""
        return self.task != "classification"

    @property
    def serving_cost_matters(self) -> bool:
        """Whether the spec asks for a cheaper served model (low latency or a latency budget)."""
        return self.low_latency or self.latency_budget_ms is not None

    @property
    def prune_share(self) -> float:
        """The share of the teacher's blocks ``prune`` removes (0: quantize-only)."""
        if self.prune_blocks is not None and self.layers:
            return min(1.0, self.prune_blocks / self.layers)
        if self.prune_blocks == 0:
            return 0.0
        return self.prune_ratio if self.prune_ratio is not None else PRUNE_SHARE

    @property
    def distill_teacher_params(self) -> float:
        """``N_teacher`` for ``distill``: read, else assumed ``N / (1 - PRUNE_SHARE)``."""
        if self.teacher_params is not None:
            return float(self.teacher_params)
        return (self.params or 0) / (1 - PRUNE_SHARE)


@dataclass(frozen=True)
class Estimate:
    """The cost of one method under the stated formulas (None: not computable)."""

    train_flops: float | None
    train_hours: float | None
    hardware: str
    peak_memory_gb: float | None
    inference_tokens_per_query: float
    trainable_params: int | None
    formula: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (``train_gpu_hours`` is the hours on the stated hardware)."""
        out = asdict(self)
        out["train_gpu_hours"] = out.pop("train_hours")
        return out


def _trainable(method: str, f: Facts) -> int | None:
    """Parameters a method trains (adapter sizes from the model's shape)."""
    if f.params is None:
        return None
    h, layers = f.hidden, f.layers
    sizes: dict[str, float] = {
        "lora": layers * LORA_MATRICES_PER_LAYER * f.lora_r * 2 * h,
        "qlora": layers * LORA_MATRICES_PER_LAYER * f.lora_r * 2 * h,
        "dora": layers * LORA_MATRICES_PER_LAYER * (f.lora_r * 2 * h + h),
        "ia3": layers * 3 * h,
        "prefix": layers * 2 * VIRTUAL_TOKENS * h,
        "prompt-tuning": VIRTUAL_TOKENS * h,
        "p-tuning": VIRTUAL_TOKENS * h + 2 * h * h,
        "freeze": f.params / max(1, layers) * max(1, layers // 4) if layers else f.params / 4,
        "full": f.params,
        "cpt": f.params,
        "pretrain": f.params,
    } | {m: layers * LORA_MATRICES_PER_LAYER * f.lora_r * 2 * h for m in (*PREFERENCE, *RL)}
    sizes["reward"] = sizes["lora"] + h  # the adapter and the new scalar head
    # every weight of the student trains; quantize-only (no block removed) trains nothing
    sizes["prune"] = f.params * (1 - f.prune_share) if f.prune_share > 0 else 0
    # the student is base_model: a classifier trains in full, a generator by student_method
    sizes["distill"] = f.params if not f.generative else sizes.get(f.student_method, f.params)
    value = sizes.get(method)
    return None if value is None else int(value)


def _activation_bytes(f: Facts) -> float:
    s, b, h, a = f.max_length, f.batch_size, f.hidden, max(1, f.heads)
    if not h:
        return 0.0
    return f.layers * s * b * h * (34 + 5 * a * s / h)


def _train_tokens(method: str, f: Facts) -> float:
    if method == "cpt":
        return f.corpus_tokens / (1 - CPT_REPLAY)  # replay is a share of all tokens
    if method == "pretrain":
        return max(f.corpus_tokens, CHINCHILLA_TOKENS_PER_PARAM * (f.params or 0))
    if method in RL:  # G sampled answers of up to max_new_tokens after each prompt
        return f.num_generations * (f.labelled_tokens + f.labelled * f.max_new_tokens) * f.epochs
    return f.labelled_tokens * f.epochs


def _inference_tokens(method: str, f: Facts) -> float:
    query = f.mean_tokens or 0.0
    answer = ANSWER_TOKENS if f.generative else 0
    if method == "icl":
        shots = FEW_SHOT_EXAMPLES * query if f.family != "encoder" else 0
        return query + shots + answer
    if method == "rag":
        return query + RAG_PASSAGES * RAG_PASSAGE_TOKENS + answer
    if method in ("prefix", "prompt-tuning", "p-tuning"):
        return query + VIRTUAL_TOKENS + answer
    return query + answer


def _student_rate(f: Facts, n: float, trainable: float) -> tuple[float, str]:
    """Training FLOPs per token of a distilled student (``S``) and how it is written."""
    how = f.student_method if f.generative else "full"
    if how == "full":
        return 6.0 * n, "6·N"
    if how == "freeze":
        return 2.0 * n + 4.0 * trainable, "(2·N + 4·N_top)"
    return 4.0 * n, "4·N"


def _distill_cost(f: Facts, n: float, trainable: float) -> tuple[float, str, float]:
    """``distill``'s FLOPs, formula and peak memory (see the module docstring)."""
    teacher = f.distill_teacher_params
    d = f.labelled_tokens + f.unlabelled_tokens
    rate, s = _student_rate(f, n, trainable)
    assumed = "" if f.teacher_params is not None else "; N_teacher = 2·N assumed (size not read)"
    if not f.generative:
        flops = 2.0 * teacher * d + rate * d * f.epochs
        formula = f"2·N_teacher·D + {s}·D·epochs (teacher soft labels once, then the student)"
    else:
        prompts = f.labelled + f.unlabelled
        d_gen = d + prompts * f.max_new_tokens
        if f.distill_objective == "logit":
            sampled = 2.0 * n * prompts * f.max_new_tokens
            flops = f.epochs * (sampled + 2.0 * teacher * d_gen + rate * d_gen)
            formula = (
                f"epochs·(2·N·prompts·max_new_tokens + 2·N_teacher·D_gen + {s}·D_gen), "
                "D_gen = D + prompts·max_new_tokens (on-policy: the student samples, the "
                "teacher scores)"
            )
        else:
            flops = 2.0 * teacher * d_gen + rate * d_gen * f.epochs
            formula = (
                f"2·N_teacher·D_gen + {s}·D_gen·epochs, D_gen = D + prompts·max_new_tokens "
                "(the teacher answers once, the student fine-tunes)"
            )
    full = not f.generative or f.student_method == "full"
    student = 16 * n if full else 2 * n + 16 * trainable
    memory = 2 * teacher + student + _activation_bytes(f)
    return flops, formula + assumed, memory


def estimate(method: str, f: Facts) -> Estimate:
    """The cost of ``method`` for these facts (see the module docstring for the formulas)."""
    hw = HARDWARE[f.hardware]
    tokens_per_query = round(_inference_tokens(method, f), 1)
    if f.params is None:
        return Estimate(None, None, f.hardware, None, tokens_per_query, None, "unknown model size")
    n = f.params
    trainable = _trainable(method, f)
    if method == "icl":
        flops, formula = 2.0 * n * f.labelled_tokens, "index build 2·N·D_labelled (forward only)"
        memory = 2.0 * n
    elif method == "rag":
        flops = 2.0 * EMBEDDER_PARAMS * f.knowledge_tokens
        formula = "index build 2·N_embedder·D_knowledge (forward only)"
        memory = 2.0 * n + 2 * EMBEDDER_PARAMS
    else:
        d = _train_tokens(method, f)
        if method in ("full", "cpt", "pretrain"):
            flops, formula = 6.0 * n * d, "6·N·D"
            memory = 16 * n + _activation_bytes(f)
        elif method == "qlora":
            flops, formula = 4.0 * n * d, "4·N·D"
            memory = QLORA_BYTES_PER_PARAM * n + 16 * (trainable or 0) + _activation_bytes(f)
        elif method in PREFERENCE:
            # policy forward + backward (4·N·D, adapter) on both answers; DPO/KTO add the
            # reference's forward (2·N·D): the base with the adapter disabled
            extra = 2.0 if method in WITH_REFERENCE else 0.0
            flops = (4.0 + extra) * n * d
            formula = "6·N·D (policy 4·N·D + reference 2·N·D)" if extra else "4·N·D (no reference)"
            memory = 2 * n + 16 * (trainable or 0) + _activation_bytes(f)
        elif method in REWARD:
            # the scalar model's forward + backward on both answers of every pair (adapter)
            flops, formula = 4.0 * n * d, "4·N·D, D = chosen + rejected tokens"
            memory = 2 * n + 16 * (trainable or 0) + _activation_bytes(f)
        elif method == "prune" and f.prune_share == 0:
            # quantize-only: nothing trains; Block Influence still reads the calibration texts
            # (the teacher's forward) and int8 rounds each weight once
            calibration = min(f.labelled, PRUNE_CALIBRATION) * f.mean_tokens
            flops = 2.0 * n * calibration
            formula = "2·N·D_calibration (forward only; nothing trains; int8 ~0 FLOPs)"
            memory = 2.0 * n
        elif method == "prune":
            # the student (the teacher less a share of its blocks) trains in full; the
            # teacher's logits are computed once (a forward pass over the data)
            student = n * (1 - f.prune_share)
            flops, formula = 6.0 * student * d + 2.0 * n * d, "6·N_student·D + 2·N·D"
            memory = 2 * n + 16 * student + _activation_bytes(f)
        elif method == "distill":
            flops, formula, memory = _distill_cost(f, n, trainable or 0)
        elif method in RL:
            # sampling (2·N per token), the policy update (4·N·D) and the KL reference (2·N·D)
            flops, formula = 8.0 * n * d, "8·N·D, D = G·(prompt + answer)·epochs"
            memory = 2 * n + 16 * (trainable or 0) + f.num_generations * _activation_bytes(f)
        elif method == "freeze":
            flops, formula = 2.0 * n * d + 4.0 * (trainable or 0) * d, "2·N·D + 4·N_top·D"
            memory = 2 * n + 16 * (trainable or 0) + _activation_bytes(f)
        else:
            flops, formula = 4.0 * n * d, "4·N·D"
            memory = 2 * n + 16 * (trainable or 0) + _activation_bytes(f)
    hours = flops / (hw.peak_flops * hw.utilisation) / 3600
    return Estimate(
        train_flops=flops,
        train_hours=hours,
        hardware=f.hardware,
        peak_memory_gb=memory / 1e9,
        inference_tokens_per_query=tokens_per_query,
        trainable_params=0 if method in ("icl", "rag") else trainable,
        formula=formula,
    )


# --- the rules: (methods, condition, effect, reason). Data, read top to bottom. ---------------

BLOCK = None  # an effect that makes the method unsuitable
Condition = Callable[[Facts, Estimate], bool]


@dataclass(frozen=True)
class Rule:
    """When ``when`` holds for a method in ``methods``: apply ``effect`` and say ``reason``.

    ``reason`` is a format string over the facts, the estimate and a few derived values
    (``hours``, ``budget``, ``memory``, ``device_memory``, ``tokens_needed``).
    """

    methods: tuple[str, ...]
    when: Condition
    effect: float | None
    reason: str


def _chinchilla_tokens(f: Facts) -> int:
    return CHINCHILLA_TOKENS_PER_PARAM * (f.params or 0)


def _over_budget(f: Facts, e: Estimate) -> bool:
    return e.train_hours is not None and e.train_hours > f.budget_hours


def _over_memory(f: Facts, e: Estimate) -> bool:
    return e.peak_memory_gb is not None and e.peak_memory_gb > HARDWARE[f.hardware].memory_gb


# fmt: off
RULES: tuple[Rule, ...] = (
    # In-context learning: always the first rung when there is anything to show.
    Rule(("icl",), lambda f, e: f.task == "language-modeling", BLOCK,
         "language modelling has no input -> output examples to show"),
    Rule(("icl",), lambda f, e: f.labelled == 0 and f.task != "language-modeling", BLOCK,
         "no labelled examples to show or vote with"),
    Rule(("icl",), lambda f, e: f.labelled > 0 and f.task != "language-modeling", 0,
         "cheapest: no training; draws on {labelled:,} labelled examples at inference"),
    # Retrieval: external or changing knowledge, grounded answers.
    Rule(("rag",), lambda f, e: not f.has_knowledge, BLOCK,
         "no knowledge corpus to retrieve from (data.knowledge is not set)"),
    Rule(("rag",), lambda f, e: f.task in ("classification", "language-modeling"), BLOCK,
         "task '{task}' does not answer from documents"),
    Rule(("rag",), lambda f, e: f.has_knowledge, 0,
         "a knowledge corpus of {knowledge_tokens:,} tokens to retrieve from; "
         "indexing it takes ~{hours} h on {hardware}"),
    Rule(("rag",), lambda f, e: f.external_knowledge, 3,
         "answers depend on external knowledge (needs.external_knowledge)"),
    Rule(("rag",), lambda f, e: f.knowledge_changes_often, 2,
         "the knowledge changes often: re-index instead of retraining "
         "(needs.knowledge_changes_often)"),
    Rule(("rag",), lambda f, e: f.hallucination_tolerance == "low", 1,
         "low hallucination tolerance: retrieved passages ground and cite the answer"),
    # Fine-tuning: custom behaviour from labelled data.
    Rule(FINE_TUNING, lambda f, e: f.labelled < MIN_LABELLED_FINE_TUNE, BLOCK,
         "{labelled:,} labelled examples; fine-tuning needs at least "
         f"{MIN_LABELLED_FINE_TUNE}"),
    Rule(PEFT, lambda f, e: f.labelled >= MIN_LABELLED_FINE_TUNE, 0,
         "{labelled:,} labelled examples: enough for parameter-efficient fine-tuning, "
         "which changes few weights and forgets little"),
    Rule(PEFT, lambda f, e: f.custom_behavior, 2.5,
         "custom behaviour (needs.custom_behavior) is what fine-tuning teaches"),
    Rule(("freeze", "full"), lambda f, e: f.custom_behavior, 1.5,
         "custom behaviour (needs.custom_behavior) is what fine-tuning teaches"),
    Rule(FINE_TUNING, lambda f, e: f.knowledge_changes_often, -1,
         "the knowledge changes often: a fine-tuned model goes stale between retrainings"),
    Rule(PEFT, lambda f, e: f.new_domain_language, -1,
         "a new language or domain vocabulary is more than a small adapter learns"),
    Rule(("qlora",), lambda f, e: f.hardware == "cpu", BLOCK,
         "4-bit QLoRA needs a CUDA GPU and bitsandbytes; budget.hardware is cpu"),
    Rule(("qlora",), lambda f, e: f.family == "encoder", BLOCK,
         "QLoRA here adapts decoders and encoder-decoders, not an encoder classifier"),
    Rule(("qlora",), lambda f, e: f.hardware != "cpu", 0,
         "the frozen base in 4 bits: ~{memory} GB at peak on {hardware}, about a quarter of "
         "LoRA's 16-bit base; slower per step (weights are dequantized on the fly)"),
    Rule(("full",), lambda f, e: MIN_LABELLED_FINE_TUNE <= f.labelled < MIN_LABELLED_FULL, -1,
         "{labelled:,} labelled examples (< " f"{MIN_LABELLED_FULL:,}" "): full fine-tuning "
         "tends to overfit and forget more than PEFT"),
    Rule(("full",), lambda f, e: (f.params or 0) > LARGE_MODEL_PARAMS, -1,
         "{params:,} parameters: full fine-tuning is costly at this size; PEFT first"),
    Rule(("freeze",), lambda f, e: 0 < (f.params or 0) <= LARGE_MODEL_PARAMS, 0,
         "small model ({params:,} parameters): training the top layers is a cheap middle way"),
    # Continued pre-training: a new language or domain vocabulary, a large corpus, a budget.
    Rule(("cpt",), lambda f, e: not f.new_domain_language, BLOCK,
         "the model needs no new language or vocabulary (needs.new_domain_language is false)"),
    Rule(("cpt",), lambda f, e: f.corpus_tokens < CPT_MIN_CORPUS_TOKENS, BLOCK,
         "{corpus_tokens:,} unlabelled tokens; continued pre-training needs at least "
         f"{CPT_MIN_CORPUS_TOKENS:,}"),
    Rule(("cpt",), lambda f, e: f.new_domain_language, 4,
         "a new language or domain vocabulary (needs.new_domain_language) is what CPT teaches; "
         f"mix in {CPT_REPLAY:.0%} general text against catastrophic forgetting"),
    # Pre-training from scratch: almost never.
    Rule(("pretrain",), lambda f, e: f.corpus_tokens < _chinchilla_tokens(f), BLOCK,
         "{corpus_tokens:,} tokens; pre-training a model this size needs ~{tokens_needed:,}"
         f" ({CHINCHILLA_TOKENS_PER_PARAM} per parameter)"),
    Rule(("pretrain",), lambda f, e: True, -3,
         "from scratch discards everything the base model knows; for a small team almost never"),
    # Preference tuning and RL: which feedback the data holds decides the method.
    Rule((*PREFERENCE, *RL), lambda f, e: not f.generative or f.task == "language-modeling",
         BLOCK, "task '{task}' does not generate answers to prefer or reward"),
    Rule(PAIRED, lambda f, e: f.pairs == 0, BLOCK,
         "no preference pairs (prompt, chosen, rejected) in the data"),
    Rule(PAIRED, lambda f, e: f.pairs > 0, 4,
         "{pairs:,} preference pairs: learnt directly, with no reward model"),
    Rule(("dpo",), lambda f, e: f.pairs > 0, 1,
         "DPO: the most tested offline method; the base (adapter disabled) is its reference"),
    Rule(("orpo",), lambda f, e: f.pairs > 0 and not f.tuned_base, 0.5,
         "ORPO adds the SFT loss to the preference loss: suits a base not fine-tuned yet"),
    Rule(("kto",), lambda f, e: f.thumbs == 0, BLOCK,
         "no answers labelled good or bad (KTO records: prompt, completion, label)"),
    Rule(("kto",), lambda f, e: f.thumbs > 0, 4.5,
         "{thumbs:,} answers marked good or bad (thumbs up/down): KTO learns from unpaired "
         "feedback"),
    Rule(RL, lambda f, e: f.rewards == 0, BLOCK,
         "no rewards declared (rewards: a check against the reference, or a python function)"),
    Rule(RL, lambda f, e: f.rewards > 0 and not f.tuned_base, BLOCK,
         "the base is not fine-tuned: RL needs SFT'd behaviour to start from (a plain model "
         "rarely samples a rewarded answer); fine-tune first, then set base_model: "
         "models:/NAME@champion"),
    Rule(RL, lambda f, e: f.rewards > 0 and f.tuned_base, 5.5,
         "{rewards} reward(s) score sampled answers of {labelled:,} prompts: GRPO samples "
         "{num_generations} per prompt and learns from the better ones"),
    # Compression: a teacher (named, or the champion a quality rung trains) made cheaper to serve.
    Rule(("prune",), lambda f, e: f.task in ("retrieval-qa", "language-modeling"), BLOCK,
         "task '{task}' has no trained classifier or generator to prune"),
    Rule(("prune",), lambda f, e: f.generative and f.family == "encoder-decoder", BLOCK,
         "prunes encoder classifiers and decoder generators in this version, not "
         "encoder-decoders (distill one into a smaller base_model instead)"),
    Rule(("distill",), lambda f, e: f.task in ("retrieval-qa", "language-modeling"), BLOCK,
         "task '{task}' has no classifier or generator to distill"),
    Rule(("prune",), lambda f, e: not f.teacher and not f.champion_teacher, BLOCK,
         "no trained model to compress (compress.teacher: models:/NAME@champion)"),
    Rule(("distill",), lambda f, e: not f.teacher, BLOCK,
         "no teacher to imitate (compress.teacher): distill trains base_model, a smaller "
         "student, on a trained or larger model's outputs"),
    Rule(("distill",), lambda f, e: not f.teacher and f.champion_teacher, BLOCK,
         "this run's champion is base_model's own size: distilled into base_model it serves no "
         "cheaper; once registered, distill it into a smaller base_model "
         "(compress.teacher: {champion})"),
    Rule(("distill",), lambda f, e: f.teacher and (f.teacher_params or 0) > 0
         and (f.teacher_params or 0) <= (f.params or 0), BLOCK,
         "the student ({params:,} parameters) is not smaller than the teacher "
         "({teacher_params:,}): serving cost would not drop"),
    Rule(("prune",), lambda f, e: f.teacher and f.prune_share > 0, 1,
         "compress.teacher is made cheaper to serve: its least influential blocks removed, "
         "then distilled from it; gated on retained quality and speed-up"),
    Rule(("prune",), lambda f, e: f.teacher and f.prune_share == 0, 1,
         "compress.teacher itself in int8 (compress.prune.blocks: 0): nothing trains; gated on "
         "retained quality and speed-up"),
    Rule(("distill",), lambda f, e: f.teacher, 1,
         "base_model, the student, learns to imitate compress.teacher (classification: its "
         "soft labels; generative: objective {distill_objective}); serving costs the student's "
         "size; gated on retained quality and speed-up"),
    Rule(COMPRESS, lambda f, e: f.teacher and f.serving_cost_matters, 1,
         "serving cost matters ({serving}): what compression buys"),
    Rule(("prune",), lambda f, e: f.champion_teacher, 1,
         "serving cost matters ({serving}): a rung after the quality rungs prunes the champion "
         "they register (compress.teacher: {champion}), distills it and stores it in int8; a "
         "separate run, gated on retained quality and speed-up"),
    Rule(REWARD, lambda f, e: not f.generative or f.task == "language-modeling", BLOCK,
         "task '{task}' has no answers to judge"),
    Rule(REWARD, lambda f, e: f.pairs == 0, BLOCK,
         "no preference pairs (prompt, chosen, rejected) to learn a reward from"),
    Rule(REWARD, lambda f, e: f.pairs > 0, 2,
         "{pairs:,} preference pairs teach a reward model: a judge of answers and GRPO's "
         "reward (rewards: kind model); it changes no answer by itself"),
    # Cost and fit, from the estimate.
    Rule(TRAINED, _over_budget, BLOCK,
         "needs ~{hours} h on {hardware}; the budget is {budget} h"),
    Rule(TRAINED, lambda f, e: not _over_budget(f, e) and (e.train_hours or 0) > 0, 0,
         "~{hours} h on {hardware}, within the {budget} h budget"),
    Rule(METHODS, _over_memory, BLOCK,
         "needs ~{memory} GB at peak; {hardware} has {device_memory} GB"),
    Rule(TRAINED, lambda f, e: e.train_hours is None, 0,
         "cost unknown: the base model's size could not be read"),
)
# fmt: on


@dataclass
class Assessment:
    """One method's verdict."""

    method: str
    suitable: bool
    score: float
    reasons: list[str]
    estimate: Estimate
    runnable: bool = False
    #: Suitable only after this run: it compresses the champion the quality rungs register.
    then: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The contract's ranking entry (plus ``runnable``, ``then`` and ``score``)."""
        return {
            "method": self.method,
            "suitable": self.suitable,
            "runnable": self.runnable,
            "then": self.then,
            "score": round(self.score, 2),
            "reasons": self.reasons,
            "estimate": self.estimate.as_dict(),
        }


@dataclass
class Advice:
    """The ranking of every method, best first."""

    ranking: list[Assessment]
    facts: Facts
    notes: list[str] = field(default_factory=list)

    @property
    def recommended(self) -> str | None:
        """The best suitable method (runnable or not); None if none is suitable.

        Never a ``then`` method: compressing the champion is a step after this run.
        """
        return next((a.method for a in self.ranking if a.suitable and not a.then), None)

    @property
    def recommended_runnable(self) -> str | None:
        """The best suitable method this version can run (what ``method: auto`` runs).

        A reward model is never picked: it judges answers instead of giving them, so it is
        asked for by name (``method: reward``), never chosen for a generative task.
        """
        return next(
            (
                a.method
                for a in self.ranking
                if a.suitable and a.runnable and a.method not in BY_NAME_ONLY
            ),
            None,
        )

    def ladder(self) -> list[Assessment]:
        """Rungs: suitable, runnable methods, cheapest first, one per family (its best).

        No reward-model rung: its metrics are not the task's (see ``recommended_runnable``).
        """
        best: dict[str, Assessment] = {}
        for item in self.ranking:  # ranking is best first, so the first per family wins
            if item.suitable and item.runnable and item.method not in BY_NAME_ONLY:
                best.setdefault(FAMILY[item.method], item)
        return sorted(best.values(), key=lambda a: COST_RANK[a.method])

    def compression_rung(self) -> dict[str, Any] | None:
        """The step after the quality rungs when serving cost matters: compress their champion.

        None unless a method was judged against this run's champion (``then``; see the module
        docstring). Not run by ``auto`` or the ladder: it is its own run once a trained champion
        is registered, with this spec's ``method`` replaced by ``spec_lines``.

        Returns:
            ``method``, ``after`` (the quality rung whose champion it compresses), ``reasons``,
            ``estimate`` (for ``spec``'s settings), ``spec`` and ``spec_lines`` (the same as YAML).
        """
        rung = next((a for a in self.ranking if a.then), None)
        if rung is None:
            return None
        f = replace(self.facts, prune_blocks=None, prune_ratio=PRUNE_SHARE, quantize="int8")
        climbed = [a.method for a in self.ladder()]
        trained = [m for m in climbed if m in QUALITY_TRAINED] or [
            a.method for a in self.ranking if a.suitable and a.method in QUALITY_TRAINED
        ]
        after = trained[-1] if trained else None
        champion = _champion(f)
        spec = {
            "method": rung.method,
            "compress": {"teacher": champion, "prune": {"ratio": PRUNE_SHARE}, "quantize": "int8"},
        }
        cost = estimate(rung.method, f)
        reasons = [
            f"serving cost matters ({_serving(f)}): compression comes after the quality rungs "
            f"({' → '.join(climbed or trained)}), not among them: their champion is its teacher",
            f"its own run once this one has registered a trained champion (a {after} version): "
            f"this spec with the lines below; ~{_fmt_hours(cost.train_hours)} h on {f.hardware} "
            f"({cost.formula}: half the blocks removed, distilled from the champion; int8 "
            "trains nothing)",
            "the gate keeps it only if it retains compress.min_retained of the champion's metric "
            "(default 95%) at compress.min_speedup of its CPU throughput (default: no slower)",
        ]
        if "icl" in climbed:
            reasons.append(
                "if the champion is icl (an example vote, no weights) there is nothing to prune: "
                f"compress a trained version instead (compress.teacher: models:/"
                f"{f.name or 'NAME'}/VERSION)"
            )
        if f.latency_budget_ms is not None:
            reasons.append(
                f"needs.latency_budget_ms: {f.latency_budget_ms:g}: measure the champion's "
                f"per-example CPU latency L; compress.min_speedup: L / {f.latency_budget_ms:g} "
                "makes the gate hold the budget"
            )
        reasons.append(
            "or distill the champion into a smaller base_model (method: distill, "
            f"compress.teacher: {champion})"
        )
        return {
            "method": rung.method,
            "after": after,
            "reasons": reasons,
            "estimate": cost.as_dict(),
            "spec": spec,
            "spec_lines": yaml.safe_dump(spec, sort_keys=False),
        }

    def as_dict(self) -> dict[str, Any]:
        """JSON for ``adaptflow recommend --json`` (``then``: ``compression_rung``, or None)."""
        facts = asdict(self.facts)
        facts["budget_hours"] = self.facts.budget_hours
        return {
            "recommended": self.recommended,
            "recommended_runnable": self.recommended_runnable,
            "ranking": [a.as_dict() for a in self.ranking],
            "ladder": [a.method for a in self.ladder()],
            "then": self.compression_rung(),
            "facts": facts,
            "notes": list(self.notes),
        }


def _fmt_hours(hours: float | None) -> str:
    if hours is None:
        return "?"
    if hours == 0:
        return "0"
    digits = max(0, 2 - int(math.floor(math.log10(hours))))
    return f"{hours:,.{min(digits, 6)}f}"


def _context(f: Facts, e: Estimate) -> dict[str, Any]:
    return asdict(f) | {
        "params": f.params or 0,
        "hours": _fmt_hours(e.train_hours),
        "budget": _fmt_hours(f.budget_hours),
        "memory": f"{e.peak_memory_gb:.1f}" if e.peak_memory_gb is not None else "?",
        "device_memory": f"{HARDWARE[f.hardware].memory_gb:g}",
        "tokens_needed": CHINCHILLA_TOKENS_PER_PARAM * (f.params or 0),
        "teacher_params": f.teacher_params or 0,
        "serving": _serving(f),
        "champion": _champion(f),
    }


def _serving(f: Facts) -> str:
    """The needs that make serving cost matter, as the spec writes them."""
    said = ["needs.low_latency"] if f.low_latency else []
    if f.latency_budget_ms is not None:
        said.append(f"needs.latency_budget_ms: {f.latency_budget_ms:g}")
    return ", ".join(said)


def _champion(f: Facts) -> str:
    """The registered champion a compression rung compresses."""
    return f"models:/{f.name or 'NAME'}@champion"


def assess(method: str, f: Facts, runnable: bool = False) -> Assessment:
    """Apply every rule to one method."""
    e = estimate(method, f)
    context = _context(f, e)
    suitable, score, reasons = True, -COST_RANK[method], []
    for rule in RULES:
        if method in rule.methods and rule.when(f, e):
            reasons.append(rule.reason.format(**context))
            if rule.effect is BLOCK:
                suitable = False
            else:
                score += rule.effect
    return Assessment(method, suitable, score, reasons, e, runnable)


def advise(f: Facts, runnable: tuple[str, ...] = ()) -> Advice:
    """Rank every method for these facts.

    Args:
        f: The spec's fields and the measured facts.
        runnable: Methods this version can run for the task (marks ``runnable`` in the ranking).

    Returns:
        Every method, suitable ones first (``then`` methods last among them), then by score,
        then cheapest first. When serving cost matters and no teacher is named, ``prune`` is
        judged against the champion a suitable quality method would train (see the module
        docstring).
    """
    items = [assess(m, f, m in runnable) for m in METHODS]
    notes = list(f.notes)
    if f.serving_cost_matters and not f.teacher:
        quality = [
            a
            for a in items
            if a.suitable and a.method in QUALITY_TRAINED and (a.runnable or not runnable)
        ]
        if quality:
            f = replace(f, champion_teacher=True)
            items = [assess(m, f, m in runnable) for m in METHODS]
            for item in items:
                item.then = item.method in COMPRESS and item.suitable
        if not any(item.then for item in items):
            prune = next(a for a in items if a.method == "prune")
            why = f"prune: {prune.reasons[0]}" if quality else "no suitable method trains one"
            notes.append(
                f"serving cost matters ({_serving(f)}) but no compression rung follows ({why}); "
                "once a trained champion is registered, distill it into a smaller base_model "
                f"(method: distill, compress.teacher: {_champion(f)})"
            )
    items.sort(key=lambda a: (not a.suitable, a.then, -a.score, COST_RANK[a.method]))
    return Advice(ranking=items, facts=f, notes=notes)
