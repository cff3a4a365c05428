"""Read a folder of documents (.txt, .md, .html): one record per file, markup removed.

Markdown is rendered with markdown-it-py (CommonMark, already installed with rich) and the
HTML is reduced to text with the standard library's HTML parser: scripts, styles and the
document head are skipped, block elements become line breaks. For classification, a file's
label is the name of its sub-folder (``data/<label>/<file>``, as scikit-learn's
``load_files`` does). Every file is a record or a quarantine entry, never neither.
"""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

from tasks.curate.records import Quarantined, ReadResult, Record

DOCUMENT_SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm")
_SKIP = {"script", "style", "head", "noscript", "template"}
_BLOCK = {
    "p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "table",
    "section", "article", "header", "footer", "pre", "blockquote", "hr", "title",
}  # fmt: skip


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0
        self.preformatted = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self.skipping += 1
        elif tag in _BLOCK:
            self.parts.append("\n")
        self.preformatted += tag == "pre"

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in _BLOCK:
            self.parts.append("\n")
        if tag == "pre":
            self.preformatted = max(0, self.preformatted - 1)

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        # As a browser shows it: a line break inside a paragraph is a space; only <pre> keeps
        # its lines (one per line of code).
        self.parts.append(data if self.preformatted else data.replace("\n", " "))


def html_to_text(html: str) -> str:
    """Visible text of an HTML document, one line per block element."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line)


def markdown_to_text(markdown: str) -> str:
    """Text of a Markdown document (rendered by markdown-it, then stripped of tags)."""
    from markdown_it import MarkdownIt

    return html_to_text(MarkdownIt("commonmark").render(markdown))


def document_text(path: Path) -> str:
    """The text of one document file (raises UnicodeDecodeError / OSError on bad files)."""
    raw = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix in (".html", ".htm"):
        return html_to_text(raw)
    if suffix in (".md", ".markdown"):
        return markdown_to_text(raw)
    return raw.removeprefix("\ufeff")


def read_folder(folder: Path, labelled: bool) -> ReadResult:
    """Read every file under ``folder`` (sorted); ids are paths relative to the folder.

    Args:
        folder: The data folder.
        labelled: Take each file's label from its sub-folder (classification).

    Returns:
        One record per readable document; everything else quarantined with the reason.
    """
    result = ReadResult()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if path.name.startswith("."):
            continue  # hidden files (.DS_Store, .gitkeep) are not data
        reason = None
        text = ""
        if path.suffix.lower() not in DOCUMENT_SUFFIXES:
            reason = f"unsupported file type '{path.suffix or '(none)'}'"
        else:
            try:
                text = document_text(path)
            except UnicodeDecodeError:
                reason = "invalid UTF-8"
            except OSError as exc:
                reason = f"cannot read: {exc.strerror or exc}"
        label = None
        if reason is None and not text.strip():
            reason = "no text after removing markup"
        if reason is None and labelled:
            parts = Path(relative).parts
            if len(parts) < 2:
                reason = "no label: put documents in one sub-folder per label"
            else:
                label = parts[0]
        if reason is not None:
            preview = text[:200] if text else ""
            result.quarantined.append(Quarantined(str(path), 0, reason, preview))
            continue
        result.records.append(Record(id=relative, text=text, label=label, file=str(path), line=0))
    return result
