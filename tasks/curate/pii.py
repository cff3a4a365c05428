"""PII redaction: e-mail addresses, phone numbers, IP addresses, card numbers and API keys.

Each match becomes a typed placeholder (``<EMAIL>``, ``<PHONE>``, ``<IP_ADDRESS>``,
``<CARD_NUMBER>``, ``<API_KEY>``) and is counted per type; the record is kept. Hand-written
patterns rather than Microsoft Presidio: Presidio needs a spaCy language model (no model hub
here) and its recognisers for these five types are regular expressions and checksums too.
Card numbers must pass the Luhn checksum and IP addresses must parse (``ipaddress``), so
order numbers and version strings are left alone.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

from tasks.curate.blocks import Outcome
from tasks.curate.records import Record

PLACEHOLDERS = {
    "api_key": "<API_KEY>",
    "email": "<EMAIL>",
    "card_number": "<CARD_NUMBER>",
    "ip_address": "<IP_ADDRESS>",
    "phone": "<PHONE>",
}

_API_KEY = re.compile(
    r"\b(?:"
    r"sk-(?:proj-|live-|test-)?[A-Za-z0-9_-]{20,}"  # OpenAI-style / Stripe secret keys
    r"|(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})"  # GitHub tokens
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"  # AWS access key ids
    r"|AIza[0-9A-Za-z_-]{35}"  # Google API keys
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"  # Slack tokens
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"  # JWTs
    r"|hf_[A-Za-z0-9]{30,}"  # Hugging Face tokens
    r")"
    r"|(?i:(?<=bearer )|(?<=api_key=)|(?<=api-key: )|(?<=apikey=)|(?<=token=)|(?<=secret=))"
    r"[A-Za-z0-9._~+/-]{16,}=*"
)
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}\b")
_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]\d{2,4}){1,4}(?![\w-])"
)


def luhn_valid(digits: str) -> bool:
    """Whether a digit string passes the Luhn checksum (every real card number does)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(match: re.Match[str]) -> bool:
    digits = re.sub(r"\D", "", match.group())
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def _ip(match: re.Match[str]) -> bool:
    try:
        ipaddress.ip_address(match.group())
    except ValueError:
        return False
    return True


def _phone(match: re.Match[str]) -> bool:
    text = match.group()
    digits = re.sub(r"\D", "", text)
    # 9-15 digits (E.164), with a separator or a leading + so plain numbers are left alone
    return 9 <= len(digits) <= 15 and (
        text.startswith(("+", "(")) or bool(re.search(r"[\s.-]", text))
    )


def _always(match: re.Match[str]) -> bool:
    return True


#: (type, pattern, check) in the order applied: the most specific first.
RULES: tuple[tuple[str, re.Pattern[str], Callable[[re.Match[str]], bool]], ...] = (
    ("api_key", _API_KEY, _always),
    ("email", _EMAIL, _always),
    ("card_number", _CARD, _card),
    ("ip_address", _IPV4, _ip),
    ("ip_address", _IPV6, _ip),
    ("phone", _PHONE, _phone),
)


def redact_text(text: str) -> tuple[str, Counter[str]]:
    """``text`` with every PII match replaced by its placeholder, and the counts per type."""
    counts: Counter[str] = Counter()
    for kind, pattern, check in RULES:

        def substitute(match: re.Match[str], kind: str = kind, check=check) -> str:
            if not check(match):
                return match.group()
            counts[kind] += 1
            return PLACEHOLDERS[kind]

        text = pattern.sub(substitute, text)
    return text, counts


def redact_pii(records: list[Record]) -> Outcome:
    """The PII block: never drops; counts redactions per type (``pii.<type>``).

    The text, the target, a preference pair's rejected answer and every earlier turn of a
    conversation are redacted.
    """
    kept, total = [], Counter[str]()
    for record in records:
        text, counts = redact_text(record.text)
        target, rejected = record.target, record.rejected
        if target is not None:
            target, target_counts = redact_text(target)
            counts.update(target_counts)
        if rejected is not None:
            rejected, rejected_counts = redact_text(rejected)
            counts.update(rejected_counts)
        context = None
        if record.context is not None:
            context = []
            for turn in record.context:
                content, turn_counts = redact_text(turn["content"])
                counts.update(turn_counts)
                context.append(turn | {"content": content})
        total.update({f"pii.{kind}": n for kind, n in counts.items()})
        changed = replace(record, text=text, target=target, rejected=rejected, context=context)
        kept.append(changed if counts else record)
    return Outcome(kept=kept, counts=total)
