"""Split documents into retrieval chunks that respect headings and paragraphs.

A document becomes sections (a Markdown heading starts a section; its title path is kept as
the chunk's ``title``), sections become paragraphs (blank-line separated), and paragraphs are
packed into chunks of at most ``size`` tokens *of the embedder's tokenizer*, so a chunk never
gets truncated by the model it is embedded with. Consecutive chunks of a section share up to
``overlap`` tokens of whole trailing paragraphs; a paragraph longer than ``size`` is cut into
token windows that overlap by ``overlap`` tokens. Chunks never cross a heading.

Each chunk is indexed with its heading path in front (``indexed_text``: "Guide > Install", a
blank line, then the paragraphs): a paragraph deep in a section often never names what the
section is about, and both the embedding and BM25 see the path. The path costs at most a
quarter of ``size`` (longer ones are cut at the end, keeping the outer headings) and counts
against it. On the benchmark's development questions this alone moved dense recall@1 from
0.64 to 0.71 (``benchmarks/bench_rag.py``; the held-out set is reported there too).

Written here rather than taken from a text-splitter library: the ones that install here
(LangChain's and LlamaIndex's splitters) pull in their whole frameworks for one function,
and none respects Markdown heading paths and a Hugging Face tokenizer's budget together.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tasks.curate.documents import html_to_text, markdown_to_text

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


@dataclass(frozen=True)
class Section:
    """A run of paragraphs under one heading path (``""`` before the first heading)."""

    title: str
    paragraphs: tuple[str, ...]


@dataclass(frozen=True)
class Chunk:
    """One retrieval unit with its provenance; ``id`` is a content hash (source + text)."""

    id: str
    text: str  # the paragraphs
    source: str  # path relative to the knowledge folder
    title: str
    position: int  # order within the source
    header: str = ""  # the heading path as indexed (``title``, cut to the header budget)

    @property
    def indexed_text(self) -> str:
        """What is embedded, searched by BM25 and stored: the header, then the paragraphs."""
        return f"{self.header}\n\n{self.text}" if self.header else self.text

    @property
    def metadata(self) -> dict[str, str | int]:
        """What Chroma stores next to the text."""
        return {
            "source": self.source,
            "title": self.title,
            "position": self.position,
            "header": self.header,
        }


def chunk_id(source: str, text: str) -> str:
    """Stable id of a chunk: the same indexed text from the same file always gets the same id."""
    return hashlib.sha256(f"{source}\x00{text}".encode()).hexdigest()[:32]


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs, whitespace collapsed."""
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]


def markdown_sections(markdown: str) -> list[Section]:
    """Sections of a Markdown document by ATX heading (headings inside code fences ignored)."""
    sections: list[Section] = []
    path: list[tuple[int, str]] = []
    body: list[str] = []
    fenced = False

    def close() -> None:
        # the rendered text has one line per block element (paragraph, list item, code line)
        paragraphs = tuple(_lines(markdown_to_text("\n".join(body))))
        if paragraphs:
            sections.append(Section(" > ".join(t for _, t in path), paragraphs))
        body.clear()

    for line in markdown.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        heading = None if fenced else _HEADING.match(line)
        if heading is None:
            body.append(line)
            continue
        close()
        level = len(heading.group(1))
        path = [(lv, t) for lv, t in path if lv < level] + [(level, heading.group(2))]
    close()
    return sections


def document_sections(path: Path, raw: str) -> list[Section]:
    """Sections of one knowledge file by its type (.md by heading; .txt/.html one section)."""
    suffix = path.suffix.lower()
    if suffix in (".md", ".markdown"):
        return markdown_sections(raw)
    if suffix in (".html", ".htm"):
        found = tuple(_lines(html_to_text(raw)))  # one line per block element
    else:
        found = tuple(paragraphs(raw.removeprefix("\ufeff")))
    return [Section("", found)] if found else []


@dataclass(frozen=True)
class Tokenizer:
    """Token counting and token-window cutting with a Hugging Face (fast) tokenizer."""

    count: Callable[[Sequence[str]], list[int]]
    offsets: Callable[[str], list[tuple[int, int]]]

    @classmethod
    def of(cls, hf_tokenizer: object) -> Tokenizer:
        """Wrap a ``transformers`` fast tokenizer (special tokens are not counted)."""

        def count(texts: Sequence[str]) -> list[int]:
            ids = hf_tokenizer(list(texts), add_special_tokens=False)["input_ids"]  # type: ignore[operator]
            return [len(i) for i in ids]

        def offsets(text: str) -> list[tuple[int, int]]:
            encoded = hf_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)  # type: ignore[operator]
            return [tuple(o) for o in encoded["offset_mapping"]]

        return cls(count, offsets)


def _windows(text: str, tokenizer: Tokenizer, size: int, overlap: int) -> list[str]:
    """Cut one long paragraph into windows of ``size`` tokens overlapping by ``overlap``."""
    spans = tokenizer.offsets(text)
    pieces, start = [], 0
    while start < len(spans):
        end = min(start + size, len(spans))
        pieces.append(text[spans[start][0] : spans[end - 1][1]].strip())
        if end == len(spans):
            break
        start = max(end - overlap, start + 1)
    return [p for p in pieces if p]


def _pack(paragraphs: Sequence[str], tokenizer: Tokenizer, size: int, overlap: int) -> list[str]:
    """Chunk texts of one section: paragraphs packed up to ``size`` tokens, with overlap."""
    out: list[str] = []
    packed: list[tuple[str, int]] = []
    for paragraph, n in zip(paragraphs, tokenizer.count(paragraphs), strict=True):
        if n > size:
            if packed:
                out.append("\n\n".join(p for p, _ in packed))
            packed = []
            out += _windows(paragraph, tokenizer, size, overlap)
            continue
        if packed and sum(m for _, m in packed) + n > size:
            out.append("\n\n".join(p for p, _ in packed))
            tail: list[tuple[str, int]] = []
            for item in reversed(packed):  # whole trailing paragraphs within the overlap
                if sum(m for _, m in tail) + item[1] > overlap:
                    break
                tail.insert(0, item)
            packed = tail if sum(m for _, m in tail) + n <= size else []
        packed.append((paragraph, n))
    if packed:
        out.append("\n\n".join(p for p, _ in packed))
    return out


def header_of(title: str, tokenizer: Tokenizer, size: int) -> tuple[str, int]:
    """The heading path as indexed (cut to ``size // 4`` tokens) and what it costs.

    The cost counts the path with its blank-line separator, since a tokenizer may merge the
    two into one token.
    """
    if not title:
        return "", 0
    spans = tokenizer.offsets(title)
    if len(spans) > size // 4:
        title = title[: spans[max(size // 4, 1) - 1][1]].rstrip() + " …"
    return title, tokenizer.count([f"{title}\n\n"])[0]


def chunk_sections(
    sections: Sequence[Section], source: str, tokenizer: Tokenizer, size: int, overlap: int
) -> list[Chunk]:
    """Chunks of one document, in order (see the module docstring for the rules)."""
    chunks: list[Chunk] = []
    seen: set[str] = set()
    for section in sections:
        header, cost = header_of(section.title, tokenizer, size)
        body = size - cost  # >= 3/4 of size
        for text in _pack(section.paragraphs, tokenizer, body, min(overlap, body - 1)):
            chunk = Chunk("", text, source, section.title, len(chunks), header)
            cid = chunk_id(source, chunk.indexed_text)
            if cid in seen:  # the same text twice in one file is one chunk
                continue
            seen.add(cid)
            chunks.append(Chunk(cid, text, source, section.title, len(chunks), header))
    return chunks
