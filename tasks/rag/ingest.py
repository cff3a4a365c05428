"""Read a knowledge folder for RAG: every file is indexed, or skipped with a reason.

Supported: .txt, .md/.markdown, .html/.htm and .pdf (text layer, via pypdf). Files that are
unreadable, binary, empty or larger than ``max_bytes`` are reported, skipped and counted; a
bad file never stops ingestion. Documents that carry instructions aimed at a model ("ignore
previous instructions", agent-instruction blocks) are *flagged* in the report: they are still
indexed (they may be legitimate documentation), and retrieved text is always fenced as data.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from tasks.rag.chunk import Section, document_sections, paragraphs

SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf")
MAX_BYTES = 20_000_000

#: Patterns of text addressed to a language model rather than to a reader.
INJECTION_PATTERNS = {
    "ignore-instructions": re.compile(
        r"\b(ignore|disregard|forget)\b.{0,40}\b(previous|prior|above|earlier|all)\b.{0,40}"
        r"\b(instructions?|prompts?|rules|directions)\b",
        re.IGNORECASE | re.DOTALL,
    ),
    "system-prompt": re.compile(r"(<\|?(system|im_start)\|?>|\[INST\]|<<SYS>>)", re.IGNORECASE),
    "agent-instructions": re.compile(
        r"(^|\n)\s*(#+\s*)?(instructions for (the )?(ai|assistant|agent|llm|model)s?|"
        r"(ai|llm) (agents?|assistants?)[:,] )",
        re.IGNORECASE,
    ),
    "role-override": re.compile(
        r"\byou are now\b|\bact as (an?|the) (unrestricted|jailbroken)\b", re.IGNORECASE
    ),
}


@dataclass(frozen=True)
class Document:
    """One readable knowledge file: its path relative to the folder, sections and content hash."""

    source: str
    sections: list[Section]
    sha256: str


@dataclass
class IngestReport:
    """What was read, skipped (with why) and flagged."""

    documents: list[Document] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # source -> reason
    flagged: dict[str, list[str]] = field(default_factory=dict)  # source -> pattern names

    def as_dict(self) -> dict[str, object]:
        """Counts and details, for the run summary and MLflow."""
        return {
            "files": len(self.documents) + len(self.skipped),
            "documents": len(self.documents),
            "skipped": dict(sorted(self.skipped.items())),
            "flagged": dict(sorted(self.flagged.items())),
        }


def flags(text: str) -> list[str]:
    """Names of the injection patterns found in ``text``."""
    return [name for name, pattern in INJECTION_PATTERNS.items() if pattern.search(text)]


def _pdf_sections(path: Path) -> list[Section]:
    from pypdf import PdfReader

    sections = []
    for number, page in enumerate(PdfReader(path).pages, start=1):
        found = tuple(paragraphs(page.extract_text() or ""))
        if found:
            sections.append(Section(f"page {number}", found))
    return sections


def read_document(path: Path, source: str, max_bytes: int = MAX_BYTES) -> Document | str:
    """A Document, or the reason the file is skipped."""
    if path.suffix.lower() not in SUFFIXES:
        return f"unsupported file type '{path.suffix or '(none)'}'"
    try:
        size = path.stat().st_size
        if size > max_bytes:
            return f"too large ({size:,} bytes > {max_bytes:,})"
        raw = path.read_bytes()
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    digest = hashlib.sha256(raw).hexdigest()
    if path.suffix.lower() == ".pdf":
        try:
            sections = _pdf_sections(path)
        except Exception as exc:  # pypdf raises many types for a corrupt file
            return f"cannot parse PDF: {exc}"
    else:
        if b"\x00" in raw[:8192]:
            return "binary content"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return f"invalid UTF-8 at byte {exc.start}"
        sections = document_sections(path, text)
    if not sections:
        return "no text"
    return Document(source, sections, digest)


def ingest(folder: Path, max_bytes: int = MAX_BYTES) -> IngestReport:
    """Read every file under ``folder`` (sorted; hidden files ignored)."""
    report = IngestReport()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        source = path.relative_to(folder).as_posix()
        if any(part.startswith(".") for part in Path(source).parts):
            continue
        outcome = read_document(path, source, max_bytes)
        if isinstance(outcome, str):
            report.skipped[source] = outcome
            continue
        report.documents.append(outcome)
        found = flags("\n".join(p for s in outcome.sections for p in s.paragraphs))
        if found:
            report.flagged[source] = found
    return report
