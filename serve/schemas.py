"""Request bodies of the served routes, in the OpenAI API's shapes (pydantic validates them).

Fields OpenAI clients may send that adaptflow does not use (``logprobs``, ``presence_penalty``,
``stream_options``…) are accepted and ignored, as most OpenAI-compatible servers do, so a
stock client works unchanged. The decoding fields a request leaves out (``temperature``,
``top_p``, ``max_tokens``, ``repetition_penalty``) take the package's own settings (its spec's
``generation`` block: greedy unless it set a temperature), the decoding the gate scored, rather
than OpenAI's defaults: served answers are the scored answers unless a client asks.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Lenient):
    """One part of a message's content (only text parts are understood)."""

    type: Literal["text"]
    text: str


class Message(_Lenient):
    """One chat turn."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    @property
    def text(self) -> str:
        """The content as one string (text parts joined)."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class Decoding(_Lenient):
    """Generation settings shared by chat and plain completions (None: the package's)."""

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    #: An extension (vLLM and TGI take it too); OpenAI's ``frequency_penalty`` and
    #: ``presence_penalty`` are other penalties, accepted and ignored
    repetition_penalty: float | None = Field(default=None, gt=0.0)
    n: int = Field(default=1, ge=1, le=8)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stream: bool = False
    user: str | None = None

    @property
    def token_limit(self) -> int | None:
        """The requested cap on new tokens (``max_completion_tokens`` wins)."""
        return self.max_completion_tokens or self.max_tokens


class ChatRequest(Decoding):
    """``POST /v1/chat/completions``."""

    messages: list[Message] = Field(min_length=1)


class CompletionRequest(Decoding):
    """``POST /v1/completions``."""

    prompt: str | list[str]


class ClassifyRequest(_Lenient):
    """``POST /v1/classify``: one text or several."""

    model: str | None = None
    input: str | list[str]
    #: A reward model's only: the prompt each input answers (one, or one per input)
    prompt: str | list[str] | None = None


class FeedbackRequest(BaseModel):
    """``POST /v1/feedback``: what a user said about one answer (at least one field)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    rating: Literal["up", "down"] | None = None
    correction: str | None = Field(default=None, min_length=1)
    preferred: int | None = Field(default=None, ge=0)


def invocation_inputs(body: Any) -> list[str]:
    """The texts of an MLflow scoring-server request (``/invocations``).

    Accepts ``{"inputs": [...]}``, ``{"instances": [...]}``, ``{"dataframe_split": {"columns",
    "data"}}`` and ``{"dataframe_records": [{column: text}]}``; the first column holds the text.

    Raises:
        ValueError: When the body is none of these shapes, or an input is not a string.
    """
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    if "inputs" in body or "instances" in body:
        values = body.get("inputs", body.get("instances"))
        values = [values] if isinstance(values, str) else values
    elif "dataframe_split" in body:
        split = body["dataframe_split"]
        if not isinstance(split, dict) or not isinstance(split.get("data"), list):
            raise ValueError("dataframe_split needs 'data' (a list of rows)")
        values = [row[0] if isinstance(row, list) and row else row for row in split["data"]]
    elif "dataframe_records" in body:
        records = body["dataframe_records"]
        if not isinstance(records, list) or not all(isinstance(r, dict) and r for r in records):
            raise ValueError("dataframe_records must be a list of non-empty objects")
        values = [next(iter(r.values())) for r in records]
    else:
        raise ValueError(
            "expected one of 'inputs', 'instances', 'dataframe_split', 'dataframe_records'"
        )
    if not isinstance(values, list) or not values:
        raise ValueError("no inputs")
    bad = [i for i, v in enumerate(values) if not isinstance(v, str)]
    if bad:
        raise ValueError(f"input {bad[0]} is not a string")
    return values
