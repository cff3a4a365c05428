#!/usr/bin/env python3
"""Build knowledge/*.md from CMake 3.25's own reference documentation.

Source: /usr/share/cmake-3.25/Help/command/*.rst and Help/module/*.rst.
Module stubs (``.. cmake-module:: ../../Modules/X.cmake``) are resolved by reading
the reStructuredText documentation block(s) of Modules/X.cmake (the text between
``#[==...==[.rst:`` and the matching ``#]==...==]``).

The conversion is deliberately light (stdlib only, deterministic):

* section titles (underlined, or over- and underlined, with = - ^ ~ " * # + ...)
  become ATX headings; levels follow the order in which each adornment style
  first appears in the file, so the file's first title is ``#``;
* ``.. command::`` / ``.. variable::`` (and other object directives) become a
  heading one level below the current section (at least ``##``);
* inline markup (:command:`x`, :variable:`x`, :prop_tgt:`x`, ``literal``,
  `link <url>`_, `target`_) becomes its plain text;
* ``::`` literal blocks, ``.. code-block::``, ``.. parsed-literal::`` and
  ``.. productionlist::`` become fenced code blocks;
* simple and grid tables become Markdown pipe tables;
* ``.. include::`` lines are dropped (includes are not resolved), as are
  ``.. contents::``, ``.. raw::`` (LaTeX only), hyperlink targets, substitution
  definitions and comments; every other directive keeps its text as plain
  paragraphs (``.. versionadded:: 3.19`` -> "New in version 3.19.", ``.. note::``
  -> "Note:" ...).

Files that end up with fewer than 40 words are skipped.

Usage: python3 build_knowledge.py [--src /usr/share/cmake-3.25] [--out knowledge]
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

MIN_WORDS = 40
ADORN_CHARS = set('=-^~"*#+`:.\'_!<>')

DIRECTIVE_RE = re.compile(r'^\.\.\s+([A-Za-z][\w:.-]*)::(?:\s+(.*))?$')
BULLET_RE = re.compile(r'^([*+-]|#\.|\d+\.|\d+\))( +)(\S.*)$')
SIMPLE_TABLE_BORDER_RE = re.compile(r'^=+( +=+)+$')
GRID_BORDER_RE = re.compile(r'^\+([-=]+\+)+$')

HEADING_DIRECTIVES = {
    'command', 'variable', 'envvar', 'module', 'cmake-module-title',
    'cmake:command', 'cmake:variable', 'cmake:envvar', 'cmake:module',
    'genex', 'signature', 'prop_tgt', 'prop_dir', 'prop_gbl', 'prop_sf',
    'prop_test', 'prop_cache', 'prop_inst', 'policy',
}
CODE_DIRECTIVES = {'code-block', 'code', 'sourcecode', 'parsed-literal', 'productionlist'}
DROP_DIRECTIVES = {'include', 'contents', 'raw', 'toctree', 'index', 'highlight', 'default-role'}
ADMONITION_LABELS = {
    'note': 'Note:', 'warning': 'Warning:', 'important': 'Important:', 'tip': 'Tip:',
    'hint': 'Hint:', 'caution': 'Caution:', 'attention': 'Attention:', 'danger': 'Danger:',
    'error': 'Error:', 'seealso': 'See also:',
}


# ---------------------------------------------------------------------------
# source loading

def extract_cmake_doc(path: Path) -> str:
    """Concatenate the .rst bracket-comment blocks of a .cmake module."""
    lines = path.read_text(encoding='utf-8', errors='replace').split('\n')
    blocks, cur, closer = [], None, None
    for line in lines:
        if cur is None:
            m = re.match(r'^#\[(=*)\[\.rst:\s*$', line)
            if m:
                cur, closer = [], '#]' + m.group(1) + ']'
        else:
            if line.rstrip() == closer:
                blocks.append('\n'.join(cur))
                cur = None
            else:
                cur.append(line)
    return '\n\n'.join(blocks)


def load_sources(src: Path):
    """Yield (kind, name, rst_text) sorted by kind then name."""
    help_dir = src / 'Help'
    for kind in ('command', 'module'):
        for path in sorted((help_dir / kind).glob('*.rst')):
            text = path.read_text(encoding='utf-8', errors='replace')
            out_lines = []
            for line in text.split('\n'):
                m = re.match(r'^\.\.\s+cmake-module::\s+(\S+)\s*$', line)
                if m:
                    target = (path.parent / m.group(1)).resolve()
                    out_lines.extend(extract_cmake_doc(target).split('\n'))
                else:
                    out_lines.append(line)
            yield kind, path.stem, '\n'.join(out_lines)


# ---------------------------------------------------------------------------
# inline markup

INLINE_RE = re.compile(
    r'(?P<lit>``(?P<lit_body>[^`](?:[^`]|`(?!`))*?)``(?![\w`]))'
    r'|(?P<role>:(?P<role_name>[A-Za-z][\w:+.-]*):`(?P<role_body>(?:[^`\\]|\\.)+)`)'
    r'|(?P<fnref>\[#(?P<fn_label>[\w-]*)\]_)'
    r'|(?P<ref>`(?P<ref_body>(?:[^`\\]|\\.)+)`__?)'
    r'|(?P<interp>`(?P<interp_body>(?:[^`\\]|\\.)+)`)'
)
ESCAPE_RE = re.compile(r'\\(.)')


def _unescape(s: str) -> str:
    return ESCAPE_RE.sub(r'\1', s)


def _role_text(body: str) -> str:
    body = body.strip()
    m = re.match(r'^(.*\S)\s+<([^<>]*)>$', body, re.S)
    if m:
        body = m.group(1)
    if body.startswith(('~', '!')):
        body = body[1:]
    return _unescape(body)


def _ref_text(body: str) -> str:
    body = body.strip()
    m = re.match(r'^(.*\S)\s+<([^<>]*)>$', body, re.S)
    if m:
        text, url = _unescape(m.group(1)), m.group(2)
        if re.match(r'^(https?|ftp)://', url):
            return f'[{text}]({url})'
        return text
    if re.match(r'^<?(https?|ftp)://', body):
        return body.strip('<>')
    return _unescape(body)


def inline(text: str) -> str:
    out, pos = [], 0
    for m in INLINE_RE.finditer(text):
        out.append(_unescape(text[pos:m.start()]))
        if m.group('lit') is not None:
            out.append(m.group('lit_body'))
        elif m.group('role') is not None:
            out.append(_role_text(m.group('role_body')))
        elif m.group('fnref') is not None:
            out.append('[' + (m.group('fn_label') or '*') + ']')
        elif m.group('ref') is not None:
            out.append(_ref_text(m.group('ref_body')))
        else:
            out.append(_unescape(m.group('interp_body')))
        pos = m.end()
    out.append(_unescape(text[pos:]))
    return ''.join(out)


# ---------------------------------------------------------------------------
# block helpers

def indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(' '))


def dedent(lines):
    ind = [indent_of(l) for l in lines if l.strip()]
    n = min(ind) if ind else 0
    return [l[n:] if l.strip() else '' for l in lines]


def strip_blank_edges(lines):
    lines = list(lines)
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def gather_indented(lines, start):
    """Index just past the indented block (blank or indent>0 lines) starting at start,
    not counting trailing blank lines."""
    j = start
    last = start
    while j < len(lines) and (not lines[j].strip() or indent_of(lines[j]) > 0):
        if lines[j].strip():
            last = j + 1
        j += 1
    return max(last, start)


def fence(code_lines, lang=''):
    code_lines = strip_blank_edges(code_lines)
    if not code_lines:
        return []
    mark = '```'
    while any(l.lstrip().startswith(mark) for l in code_lines):
        mark += '`'
    return ['', mark + lang] + code_lines + [mark, '']


def is_adornment(line: str) -> bool:
    s = line.rstrip()
    return len(s) >= 2 and s[0] in ADORN_CHARS and s == s[0] * len(s)


def pipe_table(rows):
    """rows: list of lists of cell strings; first row is the header."""
    if not rows:
        return []
    width = max(len(r) for r in rows)
    rows = [r + [''] * (width - len(r)) for r in rows]

    def fmt(r):
        return '| ' + ' | '.join(inline(c.strip()).replace('|', '\\|') for c in r) + ' |'

    out = ['', fmt(rows[0]), '|' + '|'.join(['---'] * width) + '|']
    out += [fmt(r) for r in rows[1:]]
    return out + ['']


def parse_simple_table(lines, i):
    """lines[i] is a simple-table border at indent 0. Returns (md_lines, next_i)."""
    border = lines[i]
    spans = [(m.start(), m.end()) for m in re.finditer(r'=+', border)]
    j = i + 1
    borders_seen = 1
    body = []
    while j < len(lines):
        line = lines[j]
        if SIMPLE_TABLE_BORDER_RE.match(line.rstrip()):
            borders_seen += 1
            body.append(None)  # separator marker
            j += 1
            if j >= len(lines) or not lines[j].strip():
                break
            continue
        body.append(line)
        j += 1
    rows, header_rows = [], 0
    for k, line in enumerate(body):
        if line is None:
            if header_rows == 0 and k < len(body) - 1:
                header_rows = len(rows)
            continue
        if not line.strip():
            continue
        cells = []
        for n, (a, b) in enumerate(spans):
            end = spans[n + 1][0] if n + 1 < len(spans) else len(line)
            cells.append(line[a:end].strip())
        if rows and not cells[0]:  # continuation line
            rows[-1] = [(p + ' ' + c).strip() for p, c in zip(rows[-1], cells)]
        else:
            rows.append(cells)
    if header_rows == 0:  # no header: use an empty one
        rows = [[''] * len(spans)] + rows
    elif header_rows > 1:
        head = [' '.join(c) for c in zip(*rows[:header_rows])]
        rows = [head] + rows[header_rows:]
    return pipe_table(rows), j


def parse_grid_table(lines, i):
    j = i
    groups, cur = [], []
    while j < len(lines) and lines[j].strip() and lines[j].lstrip()[0] in '+|':
        line = lines[j].rstrip()
        if GRID_BORDER_RE.match(line):
            if cur:
                groups.append(cur)
            cur = []
        else:
            cur.append([c.strip() for c in line.strip('|').split('|')])
        j += 1
    if cur:
        groups.append(cur)
    rows = [[' '.join(x for x in col if x).strip() for col in zip(*g)] for g in groups]
    return pipe_table(rows), j


# ---------------------------------------------------------------------------
# block converter

class Ctx:
    def __init__(self):
        self.styles = []
        self.level = 0


def convert_block(lines, ctx: Ctx, top: bool):
    out = []
    i, n = 0, len(lines)
    literal_next = False
    while i < n:
        line = lines[i]
        stripped = line.strip()
        if not stripped:
            out.append('')
            i += 1
            continue
        ind = indent_of(line)
        prev_blank = i == 0 or not lines[i - 1].strip()

        # -- indented block (literal block, definition body or block quote)
        if ind > 0:
            j = gather_indented(lines, i)
            chunk = dedent(lines[i:j])
            if literal_next:
                out += fence(chunk)
            else:
                if not prev_blank:
                    out.append('')
                out += convert_block(chunk, ctx, top=False) + ['']
            literal_next = False
            i = j
            continue

        # -- section titles (only at the top level of the document)
        if top and is_adornment(line) and i + 2 < n and lines[i + 1].strip() \
                and is_adornment(lines[i + 2]) and lines[i + 2].rstrip()[0] == line.rstrip()[0] \
                and prev_blank:
            out += heading(ctx, ('over', line[0]), lines[i + 1].strip())
            i += 3
            literal_next = False
            continue
        if top and not is_adornment(line) and i + 1 < n and is_adornment(lines[i + 1]) \
                and len(lines[i + 1].rstrip()) >= len(line.rstrip()) and prev_blank \
                and (i + 2 >= n or not lines[i + 2].strip() or not is_adornment(lines[i + 2])):
            out += heading(ctx, ('under', lines[i + 1][0]), stripped)
            i += 2
            literal_next = False
            continue
        if is_adornment(line) and len(stripped) >= 4 and prev_blank \
                and (i + 1 >= n or not lines[i + 1].strip()):
            out += ['', '---', '']  # transition
            i += 1
            continue

        # -- tables
        if SIMPLE_TABLE_BORDER_RE.match(line.rstrip()):
            md, i = parse_simple_table(lines, i)
            out += md
            literal_next = False
            continue
        if GRID_BORDER_RE.match(line.rstrip()):
            md, i = parse_grid_table(lines, i)
            out += md
            literal_next = False
            continue

        # -- explicit markup: directives, targets, substitutions, footnotes, comments
        if line.startswith('..') and (line == '..' or line.startswith('.. ')):
            j = gather_indented(lines, i + 1)
            body = dedent(lines[i + 1:j])
            out += directive(line, body, ctx)
            literal_next = False
            i = j
            continue

        # -- list items
        m = BULLET_RE.match(line)
        if m:
            marker, spaces, rest = m.groups()
            w = len(marker) + len(spaces)
            j = i + 1
            last = j
            while j < n and (not lines[j].strip() or indent_of(lines[j]) >= w):
                if lines[j].strip():
                    last = j + 1
                j += 1
            body = [rest] + [l[w:] if l.strip() else '' for l in lines[i + 1:last]]
            sub = strip_blank_edges(convert_block(body, ctx, top=False))
            md_marker = '1.' if marker == '#.' else ('*' if marker in '*+-' else marker)
            pad = ' ' * (len(md_marker) + 1)
            if sub:
                out.append(md_marker + ' ' + sub[0])
                out += [(pad + s) if s else '' for s in sub[1:]]
            literal_next = False
            i = last
            continue

        # -- ordinary paragraph: consecutive non-blank lines at indent 0
        j = i + 1
        while j < n and lines[j].strip() and indent_of(lines[j]) == 0:
            j += 1
        para = [l.strip() for l in lines[i:j]]
        literal_next = False
        last = para[-1]
        if last.endswith('::'):
            literal_next = True
            if last == '::':
                para.pop()
            elif last[:-2].endswith((' ', '\t')):
                para[-1] = last[:-2].rstrip()
            else:
                para[-1] = last[:-1]
        if para:
            out += inline('\n'.join(para)).split('\n')
        i = j
    return out


def heading(ctx: Ctx, style, title):
    if style not in ctx.styles:
        ctx.styles.append(style)
    level = min(ctx.styles.index(style) + 1, 6)
    ctx.level = level
    return ['', '#' * level + ' ' + inline(title), '']


def directive(line, body, ctx: Ctx):
    m = DIRECTIVE_RE.match(line)
    if not m:
        # hyperlink targets (.. _x:), substitution definitions (.. |x| replace::),
        # footnotes (.. [#x] text) and comments
        fm = re.match(r'^\.\.\s+\[(#?[\w-]*|\*)\]\s*(.*)$', line)
        if fm:
            label = fm.group(1).lstrip('#') or '*'
            sub = strip_blank_edges(convert_block([fm.group(2)] + body, ctx, top=False))
            if sub:
                return ['', f'[{label}] ' + sub[0]] + sub[1:] + ['']
        return []
    name, arg = m.group(1).lower(), (m.group(2) or '').strip()
    # directive options (":caption: x") come first in the body
    k = 0
    while k < len(body) and re.match(r'^:[\w-]+:(\s|$)', body[k]):
        k += 1
    content = body[k:]
    if name in DROP_DIRECTIVES:
        return []
    if name in CODE_DIRECTIVES:
        if name == 'parsed-literal':
            return fence([inline(l) for l in dedent(content)])
        if name == 'productionlist':
            return fence(([arg] if arg else []) + dedent(content))
        return fence(dedent(content), arg.split()[0] if arg else '')
    if name in HEADING_DIRECTIVES:
        level = min(max(ctx.level + 1, 2), 6)
        out = ['', '#' * level + ' ' + inline(arg), '']
        return out + convert_block(content, ctx, top=False) + ['']
    if name in ('versionadded', 'versionchanged', 'deprecated'):
        version, _, extra = arg.partition(' ')
        label = {'versionadded': 'New in version', 'versionchanged': 'Changed in version',
                 'deprecated': 'Deprecated since version'}[name]
        out = ['', f'{label} {version}.' + (' ' + inline(extra.strip()) if extra.strip() else ''), '']
        return out + convert_block(content, ctx, top=False) + ['']
    if name in ADMONITION_LABELS:
        sub = convert_block(([arg] if arg else []) + content, ctx, top=False)
        return ['', ADMONITION_LABELS[name], ''] + sub + ['']
    if name == 'rubric':
        return ['', inline(arg), '']
    if name == 'only':
        return convert_block(content, ctx, top=False)
    # any other directive: keep its argument and text as plain paragraphs
    out = ['']
    if arg:
        out += [inline(arg), '']
    return out + convert_block(content, ctx, top=False) + ['']


def rst_to_markdown(text: str) -> str:
    lines = [l.rstrip() for l in text.expandtabs(8).replace('\r\n', '\n').split('\n')]
    md = convert_block(lines, Ctx(), top=True)
    return '\n'.join(collapse_blank_lines(md)).strip() + '\n'


def collapse_blank_lines(md):
    """Collapse blank-line runs outside fenced code; keep code blocks verbatim."""
    res, in_code, fence_mark, blank = [], False, '', False
    for l in md:
        s = l.strip()
        if in_code:
            res.append(l.rstrip())
            if s == fence_mark:
                in_code = False
                blank = False
            continue
        mm = re.match(r'^(`{3,})', s)
        if mm and not in_code:
            in_code, fence_mark = True, mm.group(1)
            res.append(l.rstrip())
            blank = False
            continue
        if not s:
            if not blank and res:
                res.append('')
            blank = True
        else:
            res.append(l.rstrip())
            blank = False
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--src', default='/usr/share/cmake-3.25')
    ap.add_argument('--out', default=str(Path(__file__).resolve().parent / 'knowledge'))
    args = ap.parse_args(argv)
    src, out_dir = Path(args.src), Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob('*.md'):
        old.unlink()
    written, skipped = {'command': 0, 'module': 0}, []
    for kind, name, rst in load_sources(src):
        md = rst_to_markdown(rst)
        words = len(md.split())
        if words < MIN_WORDS:
            skipped.append(f'{kind}-{name} ({words} words)')
            continue
        (out_dir / f'{kind}-{name}.md').write_text(md, encoding='utf-8')
        written[kind] += 1
    total = sum(written.values())
    print(f'wrote {total} files to {out_dir} '
          f'({written["command"]} commands, {written["module"]} modules); '
          f'skipped {len(skipped)} with < {MIN_WORDS} words: {", ".join(skipped)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
