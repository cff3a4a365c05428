"""The HTTP server of ``adaptflow serve``: OpenAI-compatible routes over the alias's version.

FastAPI on uvicorn (the ASGI stack the project already ships). Every route answers with the
package code the gate scored (``runtime.predictor``): the same prompt rendering, chat template,
truncation and EOS, and the package's decoding settings (its spec's ``generation``: greedy
unless it set a temperature) for whatever the request does not set. Each answer names the
version that gave it (the ``model`` field, ``NAME/VERSION``, and the ``X-Adaptflow-Version``
header); its ``id`` is the interaction id that ``POST /v1/feedback`` names. Every answered
request is written to the interaction store (texts redacted first). User mistakes get a 4xx
with an OpenAI-style error body, never a traceback.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from adaptflow.errors import DataError
from runtime.generate import Sampling
from runtime.interactions import InteractionStore
from serve.follow import GENERATIVE, AliasFollower, Loaded
from serve.recorder import Recorder
from serve.schemas import (
    ChatRequest,
    ClassifyRequest,
    CompletionRequest,
    Decoding,
    FeedbackRequest,
    Message,
    invocation_inputs,
)

log = logging.getLogger("adaptflow.serve")
VERSION_HEADER = "X-Adaptflow-Version"
ID_HEADER = "X-Adaptflow-Interaction-Id"
CLASSIFIERS = ("encoder-classifier", "knn-classifier", "reward-model")


@dataclass(frozen=True)
class ServeConfig:
    """Limits and access of one server."""

    token: str | None = None  # bearer token every /v1 and /invocations request must carry
    max_tokens: int = 512  # the most new tokens a request may ask for
    max_request_bytes: int = 1_000_000
    max_inputs: int = 64  # texts per classify / invocations / completions request


class ApiError(Exception):
    """A request the server refuses, with the OpenAI error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = (
            status,
            message,
            param,
            code,
            type,
        )


def _error_body(status: int, message: str, **fields: Any) -> JSONResponse:
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    error |= {k: v for k, v in fields.items() if v is not None}
    return JSONResponse({"error": error}, status_code=status)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0] if exc.errors() else {}
    where = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return "request body is not valid JSON", None
    param = ".".join(where) or None
    return f"{param or 'body'}: {first.get('msg', 'invalid value')}", param


def _conversation(messages: list[Message]) -> tuple[str, list[dict[str, str]] | None]:
    """The last user turn and the turns before it (system turns first), as the package reads."""
    *earlier, last = messages
    if last.role != "user":
        raise ApiError(400, "the last message must be the user's", param="messages")
    if not last.text.strip():
        raise ApiError(400, "the last user message is empty", param="messages")
    context: list[dict[str, str]] = []
    for index, message in enumerate(earlier):
        role = "system" if message.role == "developer" else message.role
        if role == "system" and any(m["role"] != "system" for m in context):
            raise ApiError(
                400, f"messages[{index}]: a system message must come first", param="messages"
            )
        context.append({"role": role, "content": message.text})
    return last.text, context or None


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _stripped(pieces: Iterator[str]) -> Iterator[str]:
    """The pieces of a streamed answer, with its leading and trailing whitespace left out.

    Together they spell exactly what the non-streamed answer (``.strip()``-ed) says.
    """
    started, pending = False, ""
    for piece in pieces:
        if not started:
            piece = piece.lstrip()
            if not piece:
                continue
            started = True
        body = piece.rstrip()
        if body:
            yield pending + body
            pending = piece[len(body) :]
        else:
            pending += piece


class BodyTooLarge(Exception):
    """A request body over the server's limit."""


class BodyLimit:
    """Refuse a body over ``limit`` bytes, declared or chunked, before all of it is read.

    A pure ASGI middleware: a declared ``Content-Length`` over the limit is refused at once;
    a chunked body is counted as it arrives and stops at the limit (never held whole).
    """

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    def _message(self, size: int) -> str:
        return f"request body is over {self.limit} bytes (at least {size}); it is refused"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Pass the request on, its body counted."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await _error_body(413, self._message(int(declared)), code="request_too_large")(
                scope, receive, send
            )
            return
        received = 0

        async def counted() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self._message(received))
            return message

        await self.app(scope, counted, send)


def create_app(
    follower: AliasFollower, store: InteractionStore | None, config: ServeConfig
) -> FastAPI:
    """The server's app: routes, limits, error bodies and interaction logging."""
    # the interactive docs describe the API to anyone; with a token set, they are off
    docs = None if config.token else "/docs"
    app = FastAPI(
        title="adaptflow serve",
        version="1",
        docs_url=docs,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
    )
    name = follower.name
    recorder = Recorder(store) if store is not None else None
    app.state.recorder = recorder

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error_body(exc.status, exc.message, param=exc.param, code=exc.code, type=exc.type)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return _error_body(400, message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else None
        return _error_body(exc.status_code, str(exc.detail), code=code)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed: %s %s", request.method, request.url.path)
        return _error_body(500, "internal error (see the server log)", type="server_error")

    app.add_middleware(BodyLimit, limit=config.max_request_bytes)

    @app.exception_handler(BodyTooLarge)
    async def too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return _error_body(413, str(exc), code="request_too_large")

    def authorised(request: Request) -> None:
        if config.token is None:
            return
        sent = request.headers.get("authorization", "")
        scheme, _, value = sent.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value, config.token):
            raise ApiError(
                401, "missing or wrong bearer token", code="invalid_api_key", type="auth_error"
            )

    guard = [Depends(authorised)]

    def texts_of(value: str | list[str], param: str) -> list[str]:
        """One text or a list of them, within the server's per-request count."""
        texts = [value] if isinstance(value, str) else value
        if not texts or len(texts) > config.max_inputs:
            raise ApiError(400, f"{param} must hold 1 to {config.max_inputs} texts", param=param)
        return texts

    def prompts_for(value: str | list[str] | None, count: int) -> list[str] | None:
        """A reward model's prompts: none, one for every input, or one per input."""
        if value is None or isinstance(value, str):
            return None if value is None else [value] * count
        if len(value) != count:
            raise ApiError(
                400, f"prompt holds {len(value)} texts for {count} inputs", param="prompt"
            )
        return value

    def version_of(requested: str | None) -> Loaded:
        """The version answering now, if ``requested`` names this server's model."""
        loaded = follower.current  # taken once: a switch mid-request does not affect it
        allowed = {name, f"{name}@{follower.alias}", loaded.label}
        if requested is not None and requested not in allowed:
            raise ApiError(
                404,
                f"model '{requested}' is not served here; this server serves '{name}' "
                f"(alias '{follower.alias}', now version {loaded.version})",
                param="model",
                code="model_not_found",
            )
        return loaded

    def headers(loaded: Loaded, interaction: str) -> dict[str, str]:
        return {VERSION_HEADER: loaded.version, ID_HEADER: interaction}

    def record(
        interaction: str,
        loaded: Loaded,
        endpoint: str,
        request: dict[str, Any],
        response: dict[str, Any],
        started: float,
    ) -> None:
        if recorder is None:
            return
        recorder.record(
            id=interaction,
            model=name,
            version=loaded.version,
            endpoint=endpoint,
            request=request,
            response=response,
            latency_ms=(time.perf_counter() - started) * 1000,
        )

    def token_limit(loaded: Loaded, req: Decoding) -> int:
        default: int = getattr(loaded.predictor, "max_new_tokens", 64)
        # the package's own length unless the client asks, within the server's cap
        limit = req.token_limit or min(default, config.max_tokens)
        if limit > config.max_tokens:
            raise ApiError(
                400,
                f"max_tokens is {limit}; this server allows at most {config.max_tokens}",
                param="max_tokens",
            )
        return limit

    def sampling_of(loaded: Loaded, req: Decoding) -> Sampling:
        """The request's decoding: what it sets, the package's settings for the rest.

        The package's seed is not used: a sampled answer repeats only when the request sends a
        seed.
        """
        package: Sampling = getattr(loaded.predictor, "sampling", Sampling())
        return Sampling(
            temperature=package.temperature if req.temperature is None else req.temperature,
            top_p=package.top_p if req.top_p is None else req.top_p,
            seed=req.seed,
            repetition_penalty=package.repetition_penalty
            if req.repetition_penalty is None
            else req.repetition_penalty,
        )

    def check_prompt(
        loaded: Loaded, text: str, context: list[dict[str, str]] | None, param: str = "messages"
    ) -> int:
        generator = loaded.predictor
        used = loaded.prompt_tokens(text, context)
        if used > generator.max_length:
            raise ApiError(
                400,
                f"the prompt is {used} tokens; this model reads at most {generator.max_length}",
                param=param,
                code="context_length_exceeded",
            )
        return used

    def finish_reason(loaded: Loaded, answer: str, limit: int) -> str:
        return "length" if loaded.tokens(answer) >= limit else "stop"

    def answer(
        loaded: Loaded,
        text: str,
        context: list[dict[str, str]] | None,
        req: Decoding,
        param: str = "messages",
    ) -> tuple[list[str], dict[str, Any], int]:
        """``req.n`` answers to one turn, extra response fields, and prompt tokens."""
        if loaded.kind == "rag-retriever":
            with loaded.lock:
                (found,) = loaded.predictor.predict([text])
            passages = found["passages"]
            reply = found.get("answer") or (passages[0]["text"] if passages else "")
            sources = list(dict.fromkeys(p["source"] for p in passages))
            return [reply] * req.n, {"sources": sources, "passages": passages}, 0
        if loaded.kind not in GENERATIVE:
            raise ApiError(
                400,
                f"'{loaded.label}' is a {loaded.kind}: it classifies; use POST /v1/classify",
                param="model",
            )
        limit = token_limit(loaded, req)
        used = check_prompt(loaded, text, context, param)
        sampling = sampling_of(loaded, req)
        if sampling.temperature == 0 and loaded.batcher is not None:
            # greedy: n answers are one answer n times; batched with whatever else queued
            penalty = sampling.repetition_penalty
            replies = [loaded.batcher.answer(text, context, limit, penalty)] * req.n
            return replies, {"limit": limit}, used
        with loaded.lock:
            replies = loaded.predictor.predict(
                [text] * req.n, [context] * req.n, max_new_tokens=limit, sampling=sampling
            )
        return replies, {"limit": limit}, used

    def usage(loaded: Loaded, prompt_tokens: int, replies: list[str]) -> dict[str, int]:
        completion = sum(loaded.tokens(r) for r in replies) if loaded.counter is not None else 0
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
        }

    def stream(
        loaded: Loaded,
        text: str,
        context: list[dict[str, str]] | None,
        req: Decoding,
        chunk: Callable[[str | None, str | None], dict[str, Any]],
        done: Callable[[str, str], None],
        param: str = "messages",
    ) -> Iterator[str]:
        """Server-sent events of one generated answer, token by token as the model writes."""
        from transformers import TextIteratorStreamer

        if req.n != 1:
            raise ApiError(400, "stream: true takes n = 1", param="n")
        failed: list[BaseException] = []
        if loaded.kind == "rag-retriever":
            replies, _, _ = answer(loaded, text, context, req, param)
            pieces: Iterator[str] = iter([replies[0]])
            limit = 0
        else:
            replies, limit = [], token_limit(loaded, req)
            if loaded.kind not in GENERATIVE:
                answer(loaded, text, context, req, param)  # raises the "it classifies" error
            check_prompt(loaded, text, context, param)
            generator = loaded.predictor
            # The model's own tokenizer: the streamer decodes in the generating thread, which
            # holds the model's lock, so no other request uses the tokenizer meanwhile.
            streamer = TextIteratorStreamer(
                generator.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600
            )

            def work() -> None:
                with loaded.lock:
                    try:
                        generator.predict(
                            [text],
                            [context],
                            max_new_tokens=limit,
                            sampling=sampling_of(loaded, req),
                            streamer=streamer,
                        )
                    except BaseException as exc:  # the stream ends with an error event
                        log.exception("streamed generation failed")
                        failed.append(exc)
                        streamer.end()

            threading.Thread(target=work, daemon=True).start()
            pieces = iter(streamer)

        def events() -> Iterator[str]:
            yield _sse(chunk("", None))
            said = []
            for piece in _stripped(pieces):
                said.append(piece)
                yield _sse(chunk(piece, None))
            if failed:  # the status line is sent: say so in the stream, log no answer
                error = {"message": "generation failed (see the server log)", "param": None}
                yield _sse({"error": error | {"type": "server_error", "code": None}})
                return
            full = "".join(said)
            reason = finish_reason(loaded, full, limit) if limit else "stop"
            done(full, reason)  # logged before [DONE]: feedback may follow at once
            yield _sse(chunk(None, reason))
            yield "data: [DONE]\n\n"

        return events()

    @app.get("/health")
    async def health() -> dict[str, Any]:  # on the event loop: busy worker threads don't block it
        loaded = follower.current
        return {"status": "ok", "model": name, "alias": follower.alias, "version": loaded.version}

    @app.get("/v1/models", dependencies=guard)
    def models() -> JSONResponse:
        loaded = follower.current
        card = {
            "id": name,
            "object": "model",
            "created": 0,
            "owned_by": "adaptflow",
            "version": loaded.version,
            "alias": follower.alias,
            "kind": loaded.kind,
        }
        return JSONResponse(
            {"object": "list", "data": [card]}, headers={VERSION_HEADER: loaded.version}
        )

    @app.post("/v1/chat/completions", dependencies=guard)
    def chat(req: ChatRequest) -> Any:
        started = time.perf_counter()
        loaded = version_of(req.model)
        text, context = _conversation(req.messages)
        interaction = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        logged = req.model_dump(exclude_none=True, exclude={"messages"})
        logged["messages"] = [{"role": m.role, "content": m.text} for m in req.messages]
        if req.stream:

            def chunk(content: str | None, reason: str | None) -> dict[str, Any]:
                delta = {} if content is None else {"content": content}
                if content == "":
                    delta = {"role": "assistant", "content": ""}
                return {
                    "id": interaction,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": loaded.label,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
                }

            def done(full: str, reason: str) -> None:
                response = {
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": full}}],
                    "finish_reason": reason,
                    "stream": True,
                }
                record(interaction, loaded, "chat", logged, response, started)

            events = stream(loaded, text, context, req, chunk, done)
            return StreamingResponse(
                events, media_type="text/event-stream", headers=headers(loaded, interaction)
            )
        replies, extra, used = answer(loaded, text, context, req)
        limit = extra.pop("limit", 0)
        body: dict[str, Any] = {
            "id": interaction,
            "object": "chat.completion",
            "created": created,
            "model": loaded.label,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": reply},
                    "finish_reason": finish_reason(loaded, reply, limit) if limit else "stop",
                }
                for i, reply in enumerate(replies)
            ],
            "usage": usage(loaded, used, replies),
            **extra,
        }
        record(interaction, loaded, "chat", logged, body, started)
        return JSONResponse(body, headers=headers(loaded, interaction))

    @app.post("/v1/completions", dependencies=guard)
    def completions(req: CompletionRequest) -> Any:
        started = time.perf_counter()
        loaded = version_of(req.model)
        prompts = texts_of(req.prompt, "prompt")
        if not all(p.strip() for p in prompts):
            raise ApiError(400, "a prompt is empty", param="prompt")
        interaction = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        logged = req.model_dump(exclude_none=True)
        if req.stream:
            if len(prompts) != 1:
                raise ApiError(400, "stream: true takes one prompt", param="prompt")

            def chunk(content: str | None, reason: str | None) -> dict[str, Any]:
                return {
                    "id": interaction,
                    "object": "text_completion",
                    "created": created,
                    "model": loaded.label,
                    "choices": [{"index": 0, "text": content or "", "finish_reason": reason}],
                }

            def done(full: str, reason: str) -> None:
                response = {"choices": [{"index": 0, "text": full}], "finish_reason": reason}
                record(interaction, loaded, "completion", logged, response, started)

            events = stream(loaded, prompts[0], None, req, chunk, done, "prompt")
            return StreamingResponse(
                events, media_type="text/event-stream", headers=headers(loaded, interaction)
            )
        choices: list[dict[str, Any]] = []
        extras: list[dict[str, Any]] = []
        used_total, replies_all = 0, []
        for prompt in prompts:
            replies, extra, used = answer(loaded, prompt, None, req, "prompt")
            limit = extra.pop("limit", 0)
            used_total += used
            replies_all += replies
            extras.append(extra)
            choices += [
                {
                    "index": len(choices) + j,
                    "text": reply,
                    "finish_reason": finish_reason(loaded, reply, limit) if limit else "stop",
                }
                for j, reply in enumerate(replies)
            ]
        body: dict[str, Any] = {
            "id": interaction,
            "object": "text_completion",
            "created": created,
            "model": loaded.label,
            "choices": choices,
            "usage": usage(loaded, used_total, replies_all),
        }
        if any(extras):
            body["retrieved"] = extras
        record(interaction, loaded, "completion", logged, body, started)
        return JSONResponse(body, headers=headers(loaded, interaction))

    @app.post("/v1/classify", dependencies=guard)
    def classify(req: ClassifyRequest) -> JSONResponse:
        started = time.perf_counter()
        loaded = version_of(req.model)
        texts = texts_of(req.input, "input")
        if loaded.kind not in CLASSIFIERS:
            raise ApiError(
                400,
                f"'{loaded.label}' is a {loaded.kind}: it does not classify; "
                "use POST /v1/chat/completions",
                param="model",
            )
        if req.prompt is not None and loaded.kind != "reward-model":
            raise ApiError(
                400,
                f"'{loaded.label}' is a {loaded.kind}: 'prompt' applies to reward models only",
                param="prompt",
            )
        with loaded.lock:
            if loaded.kind == "reward-model":  # scores each input as an answer to its prompt
                results = loaded.predictor.classify(texts, prompts_for(req.prompt, len(texts)))
            else:
                results = loaded.predictor.classify(texts)
        interaction = f"clf-{uuid.uuid4().hex}"
        body = {
            "id": interaction,
            "object": "classification",
            "model": loaded.label,
            "data": [{"index": i, **r} for i, r in enumerate(results)],
        }
        record(interaction, loaded, "classify", req.model_dump(exclude_none=True), body, started)
        return JSONResponse(body, headers=headers(loaded, interaction))

    @app.post("/invocations", dependencies=guard)
    async def invocations(request: Request) -> JSONResponse:
        started = time.perf_counter()
        try:
            body = json.loads(await request.body() or b"null")
            texts = invocation_inputs(body)
        except ValueError as exc:  # JSONDecodeError is a ValueError
            raise ApiError(400, f"bad /invocations body: {exc}") from None
        if len(texts) > config.max_inputs:
            raise ApiError(400, f"at most {config.max_inputs} inputs per request")
        loaded = version_of(None)

        def run() -> list[Any]:
            generator = loaded.predictor
            if loaded.batcher is not None and generator.sampling.temperature == 0:  # batched
                limit, penalty = generator.max_new_tokens, generator.sampling.repetition_penalty
                return loaded.batcher.answer_many(texts, [None] * len(texts), limit, penalty)
            # the package's own decoding (a sampling one seeded as it was scored), as predict
            with loaded.lock:
                return list(loaded.predictor.predict(texts))

        from starlette.concurrency import run_in_threadpool

        predictions = await run_in_threadpool(run)
        interaction = f"inv-{uuid.uuid4().hex}"
        answer_body = {"predictions": predictions}
        record(interaction, loaded, "invocations", {"inputs": texts}, answer_body, started)
        return JSONResponse(answer_body, headers=headers(loaded, interaction))

    @app.post("/v1/feedback", dependencies=guard)
    def feedback(req: FeedbackRequest) -> JSONResponse:
        if store is None:
            raise ApiError(400, "this server keeps no interaction log", code="no_store")
        if req.rating is None and req.correction is None and req.preferred is None:
            raise ApiError(400, "feedback needs a rating, a correction or a preferred choice")
        if recorder is not None:
            recorder.flush()  # an answer just given is in the store before its feedback
        try:
            saved = store.add_feedback(req.id, req.rating, req.correction, req.preferred)
        except DataError as exc:
            missing = str(exc).startswith("no interaction")
            raise ApiError(
                404 if missing else 400,
                str(exc),
                param="id" if missing else None,
                code="interaction_not_found" if missing else None,
            ) from None
        return JSONResponse({"object": "feedback"} | saved.as_dict())

    return app
