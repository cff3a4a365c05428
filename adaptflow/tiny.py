"""Recipe ``pretrain``: tiny base models built here, from a config and local text.

There is no model hub on this machine class, so the decoder (``tiny-gpt``, GPT-2 style) and the
encoder-decoder (``tiny-t5``, T5 style) that tests and demos adapt are made here: a byte-level
BPE tokenizer is trained on local text, a model is built from a config, pre-trained for a few
hundred steps on the same text, and saved in Hugging Face format with safetensors. From then on
they load like any model (``from_pretrained`` on their folder), so a real hub model needs no code
change.

The text is the documentation CPython ships with itself (the docstrings of a fixed list of
standard-library modules, read in a fresh interpreter so that what the building process imported
cannot change it), so a build needs nothing but the interpreter and its text is the same on every
machine with the same Python version and platform. Builds are seeded; the tokenizer and the
weights only depend on the text, the seed and the CPU's kernels.

This is the one place we train a tokenizer: ``tokenizers`` does the work, we only choose the
special tokens and the chat template.
"""

from __future__ import annotations

import fcntl
import json
import math
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from adaptflow.errors import check

#: Standard-library modules whose documentation is the tiny models' pre-training text. Chosen
#: to import without side effects on any platform (no ``this``, no ``antigravity``).
MODULES = (
    "abc", "argparse", "array", "ast", "asyncio", "base64", "bisect", "bz2", "calendar", "cmath",
    "codecs", "collections", "colorsys", "concurrent.futures", "configparser", "contextlib",
    "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "email", "enum", "fnmatch",
    "fractions", "ftplib", "functools", "getopt", "gettext", "glob", "graphlib", "gzip",
    "hashlib", "heapq", "hmac", "html", "http.client", "imaplib", "inspect", "io",
    "ipaddress", "itertools", "json", "locale", "logging", "lzma", "mailbox", "math",
    "mimetypes", "numbers", "operator", "os", "pathlib", "pickle", "platform", "plistlib",
    "pprint", "queue", "quopri", "random", "re", "sched", "secrets", "selectors", "shelve",
    "shlex", "shutil", "signal", "smtplib", "socket", "sqlite3", "statistics", "string",
    "struct", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize",
    "trace", "traceback", "types", "typing", "unicodedata", "urllib.parse", "uuid", "warnings",
    "wave", "weakref", "xml.dom.minidom", "zipfile", "zlib",
)  # fmt: skip

EOS = "<|endoftext|>"
PAD = "<|pad|>"
UNK = "<|unk|>"
ROLES = ("system", "user", "assistant")
#: A minimal chat template: each turn is ``<|role|>`` then its text; an assistant turn ends
#: with the end-of-text token, which is what generation stops on. (Chat templates render with
#: ``trim_blocks``, so a newline right after a block tag must be written as an expression.)
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}" + EOS + "{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass(frozen=True)
class TinyRecipe:
    """How one tiny base model is built (part of its identity: a change rebuilds it)."""

    alias: str
    family: str  # decoder | encoder-decoder
    vocab_size: int = 4096
    width: int = 128
    layers: int = 4
    heads: int = 4
    context: int = 512
    steps: int = 300
    batch_size: int = 16
    block: int = 128
    learning_rate: float = 3e-3
    seed: int = 7
    version: int = 4  # bump when the build code changes what it produces


RECIPES: dict[str, TinyRecipe] = {
    "tiny-gpt": TinyRecipe(alias="tiny-gpt", family="decoder"),
    "tiny-t5": TinyRecipe(alias="tiny-t5", family="encoder-decoder", layers=2, steps=300),
}
BUILD_MARKER = "adaptflow_build.json"


def module_texts(names: tuple[str, ...] | list[str]) -> list[str]:
    """The documentation of standard-library modules ``names``, one text each, in order.

    Read in a fresh, isolated interpreter (``adaptflow/stdlib_docs.py``): inside this process
    the text would depend on what was imported before (libraries patch standard-library members).
    """
    script = Path(__file__).with_name("stdlib_docs.py")
    check(bool(sys.executable), "no Python interpreter to read the standard library's docs with")
    done = subprocess.run(  # noqa: S603 - this interpreter, our own script, module names
        [sys.executable, "-I", "-S", "-X", "utf8", str(script), *names],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=300,
        check=False,
    )
    last = (done.stderr.strip().splitlines() or ["no output"])[-1]  # the exception's line
    check(
        done.returncode == 0,
        f"reading the standard library's documentation failed (exit {done.returncode}): {last}",
    )
    texts: list[str] = json.loads(done.stdout)
    check(len(texts) == len(names), f"read {len(texts)} module texts for {len(names)} modules")
    return texts


def general_text() -> list[str]:
    """The pre-training documents: one per module, in a fixed order."""
    return module_texts(MODULES)


def train_tokenizer(texts: list[str], recipe: TinyRecipe) -> Any:
    """A byte-level BPE tokenizer trained on ``texts``, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, EOS, UNK] + [f"<|{role}|>" for role in ROLES]
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=recipe.vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=EOS,
        model_max_length=recipe.context,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


#: Special tokens come first in the vocabulary, so their ids are fixed by the recipe.
PAD_ID, EOS_ID = 0, 1


def build_config(recipe: TinyRecipe) -> Any:
    """The model config of ``recipe`` (GPT-2 for decoders, T5 for encoder-decoders)."""
    from transformers import GPT2Config, T5Config

    if recipe.family == "decoder":
        return GPT2Config(
            vocab_size=recipe.vocab_size,
            n_positions=recipe.context,
            n_embd=recipe.width,
            n_layer=recipe.layers,
            n_head=recipe.heads,
            bos_token_id=EOS_ID,
            eos_token_id=EOS_ID,
            pad_token_id=PAD_ID,
            tie_word_embeddings=True,
        )
    return T5Config(
        vocab_size=recipe.vocab_size,
        d_model=recipe.width,
        d_kv=recipe.width // recipe.heads,
        d_ff=recipe.width * 2,
        num_layers=recipe.layers,
        num_decoder_layers=recipe.layers,
        num_heads=recipe.heads,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        decoder_start_token_id=PAD_ID,  # type: ignore[call-arg]  # a PretrainedConfig kwarg
    )


def _blocks(ids: list[int], size: int) -> list[list[int]]:
    return [ids[i : i + size] for i in range(0, len(ids) - size + 1, size)]


def pretrain(model: Any, tokenizer: Any, texts: list[str], recipe: TinyRecipe) -> list[float]:
    """Pre-train ``model`` on ``texts`` for ``recipe.steps`` steps; returns the loss per step.

    Decoders learn next-token prediction on packed blocks; encoder-decoders learn to continue a
    block (first half in, second half out), a plain span-continuation objective.
    """
    import torch
    from tqdm.auto import tqdm

    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text)["input_ids"] + [eos]
    blocks = torch.tensor(_blocks(ids, recipe.block))
    generator = torch.Generator().manual_seed(recipe.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=0.01)
    warmup = max(1, recipe.steps // 10)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, recipe.steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model.train()
    losses = []
    for _ in tqdm(range(recipe.steps), desc=f"pretrain {recipe.alias}", leave=False):
        batch = blocks[torch.randint(len(blocks), (recipe.batch_size,), generator=generator)]
        if recipe.family == "decoder":
            loss = model(input_ids=batch, labels=batch).loss
        else:
            half = recipe.block // 2
            loss = model(
                input_ids=batch[:, :half].contiguous(), labels=batch[:, half:].contiguous()
            ).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def build_tiny(recipe: TinyRecipe, out: Path, texts: list[str] | None = None) -> dict[str, Any]:
    """Build ``recipe`` into ``out`` (tokenizer, config, safetensors weights, build record).

    Args:
        recipe: What to build.
        out: The model folder to write (replaced if present).
        texts: Pre-training text; default: ``general_text()``.

    Returns:
        The build record written to ``out/adaptflow_build.json``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, set_seed

    texts = general_text() if texts is None else texts
    random.seed(recipe.seed)
    set_seed(recipe.seed)
    tokenizer = train_tokenizer(texts, recipe)
    special = (tokenizer.pad_token_id, tokenizer.eos_token_id)
    check(special == (PAD_ID, EOS_ID), f"tiny tokenizer's pad/eos ids are {special}")
    check(len(tokenizer) == recipe.vocab_size, f"tiny tokenizer has {len(tokenizer)} tokens")
    config = build_config(recipe)
    auto = AutoModelForCausalLM if recipe.family == "decoder" else AutoModelForSeq2SeqLM
    model = auto.from_config(config)
    with torch.random.fork_rng():
        losses = pretrain(model, tokenizer, texts, recipe)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(str(staging), safe_serialization=True)
    tokenizer.save_pretrained(str(staging))
    record = {
        "recipe": asdict(recipe),
        "parameters": sum(p.numel() for p in model.parameters()),
        "documents": len(texts),
        "characters": sum(len(t) for t in texts),
        "loss_first": losses[0],
        "loss_last": sum(losses[-20:]) / len(losses[-20:]),
    }
    (staging / BUILD_MARKER).write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)  # the folder appears complete or not at all
    return record


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # two processes resolving one alias build it once
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_built(recipe: TinyRecipe, folder: Path) -> bool:
    """Whether ``folder`` holds a complete build of exactly ``recipe``."""
    marker = folder / BUILD_MARKER
    if not marker.is_file():
        return False
    return bool(json.loads(marker.read_text()).get("recipe") == asdict(recipe))


def ensure_tiny(alias: str, models_dir: Path) -> Path:
    """The folder of tiny model ``alias``, built first if missing or built by another recipe."""
    recipe = RECIPES[alias]
    folder = models_dir / alias
    if is_built(recipe, folder):
        return folder
    with _locked(models_dir / f".{alias}.lock"):
        if not is_built(recipe, folder):
            build_tiny(recipe, folder)
    return folder
