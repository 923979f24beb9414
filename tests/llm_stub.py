"""A stand-in LLM provider: a real HTTP server on loopback speaking the OpenAI
chat-completions and Anthropic messages shapes, scripted per request with faults.

It refuses what the real providers refuse (tests/provider_rules.py: OpenAI's strict
structured-output subset and parameter rules, Anthropic's request rules), with HTTP
400 and the provider's error shape, before any scripted mode applies."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from streamproc.brief.prompt import load_template
from streamproc.config import BriefPII
from streamproc.contracts.schemas import SchemaSet
from streamproc.llm.briefer import LLMBriefer
from streamproc.llm.client import LLMClient
from streamproc.privacy.redact import Redactor
from tests.provider_rules import (
    Refusal,
    anthropic_error,
    check_anthropic,
    check_openai,
    openai_error,
)

GOOD_ANSWER: dict[str, Any] = {
    "risk_level": "HIGH",
    "risk_score": 80,
    "reason_codes": ["CARD_TESTING"],
    "summary": "Card testing, then a large purchase.",
    "recommended_actions": ["BLOCK_CARD"],
    "key_facts": [{"text": "Eight small probes", "evidence_event_ids": ["E1"], "reason_codes": []}],
    "confidence": "HIGH",
}
MODES = (
    "ok",
    "429",
    "429-ms",
    "429-long",
    "quota",
    "500",
    "529",
    "hang",
    "nonjson",
    "badschema",
    "refusal",
)


def masked_briefer(client: LLMClient, max_prompt_tokens: int = 8000) -> LLMBriefer:
    """The worker's briefer for tests: the shipped prompt, the input schemas' redactor,
    PII masked in the brief."""
    return LLMBriefer(
        client,
        load_template(),
        Redactor.for_inputs(SchemaSet()),
        policy=BriefPII.MASKED,
        max_prompt_tokens=max_prompt_tokens,
    )


class StubLLM:
    def __init__(
        self,
        answer: dict[str, Any] | None = None,
        delay_s: float = 0.0,
        delay_fn: Callable[[], float | None] | None = None,
    ) -> None:
        self.answer = answer or GOOD_ANSWER
        self.delay_s = delay_s
        # When set, each request's delay (None: it hangs), e.g. a slow model that
        # sometimes never answers.
        self.delay_fn = delay_fn
        # Per caller (its Authorization header): requests in flight, and when the last
        # answer went out: the chaos suite kills a worker during a call or just after.
        self.in_flight_by: dict[str, int] = {}
        self.answered_at: dict[str, float] = {}
        self.script: list[str] = []  # one mode per request; `default` once it is empty
        self.default = "ok"
        # When set, answers "ok" requests from the user message (a model that obeys).
        self.responder: Callable[[str], dict[str, Any]] | None = None
        self.refused: list[dict[str, Any]] = []  # the provider errors answered
        self.requests: list[dict[str, Any]] = []
        self.concurrent = self.max_concurrent = 0
        self.connections: set[object] = set()  # each caller's (host, port): TCP connections
        self._runner: web.AppRunner | None = None
        self._release = asyncio.Event()  # ends "hang" handlers when the stub stops
        self.url = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._openai)
        app.router.add_post("/v1/messages", self._anthropic)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    def base_url(self, shape: str) -> str:
        """The base URL a client of `shape` (openai, anthropic) is configured with."""
        return f"{self.url}/v1" if shape == "openai" else self.url

    def sent(self) -> bytes:
        """Every request's bytes as they arrived: headers, then body.

        Left out are the two headers the transport writes from the test's own
        choices, not from what it sends: Host (the stub's random port, whose
        digits can spell anything) and Content-Length.
        """
        out = bytearray()
        for r in self.requests:
            for name, value in r["headers"].items():
                if name.lower() not in ("host", "content-length"):
                    out += f"{name}: {value}\n".encode()
            out += r["raw"] + b"\n"
        return bytes(out)

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _enter(self, request: web.Request, shape: str) -> tuple[str, web.Response | None]:
        raw = await request.read()
        if request.transport is not None:
            self.connections.add(request.transport.get_extra_info("peername"))
        body = json.loads(raw)
        self.requests.append(
            {"shape": shape, "headers": dict(request.headers), "body": body, "raw": raw}
        )
        try:
            if shape == "openai":
                check_openai(body)
            else:
                check_anthropic(body, dict(request.headers))
        except Refusal as refusal:
            error = openai_error(refusal) if shape == "openai" else anthropic_error(refusal)
            self.refused.append(error)
            return "refused", web.json_response(error, status=400)
        mode = self.script.pop(0) if self.script else self.default
        delay = self.delay_fn() if self.delay_fn is not None else self.delay_s
        if delay is None:
            mode = "hang"
        caller = request.headers.get("Authorization") or request.headers.get("x-api-key") or ""
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        self.in_flight_by[caller] = self.in_flight_by.get(caller, 0) + 1
        try:
            if mode == "hang":
                await asyncio.wait_for(self._release.wait(), 60)
            else:
                await asyncio.sleep(delay or 0.0)
        finally:
            self.concurrent -= 1
            self.in_flight_by[caller] -= 1
            self.answered_at[caller] = time.monotonic()
        return mode, _fault(mode, shape)

    async def _openai(self, request: web.Request) -> web.Response:
        mode, fault = await self._enter(request, "openai")
        if fault is not None:
            return fault
        content = {"foo": 1} if mode == "badschema" else self._answer(request)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": json.dumps(content),
            "refusal": None,
        }
        if mode == "refusal":
            message = {"role": "assistant", "content": None, "refusal": "I can't help."}
        return web.json_response(
            {
                "id": "c1",
                "model": "stub-gpt",
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1200, "completion_tokens": 150},
            }
        )

    def _answer(self, request: web.Request) -> dict[str, Any]:
        if self.responder is None:
            return self.answer
        body = self.requests[-1]["body"]
        user = next(m["content"] for m in body["messages"] if m["role"] == "user")
        return self.responder(user)

    async def _anthropic(self, request: web.Request) -> web.Response:
        mode, fault = await self._enter(request, "anthropic")
        if fault is not None:
            return fault
        content = {"foo": 1} if mode == "badschema" else self._answer(request)
        blocks: list[dict[str, Any]] = [
            {"type": "tool_use", "id": "t1", "name": "write_case_brief", "input": content}
        ]
        if mode == "refusal":
            blocks = [{"type": "text", "text": "I can't help with that."}]
        return web.json_response(
            {
                "id": "m1",
                "model": "stub-claude",
                "type": "message",
                "content": blocks,
                "stop_reason": "tool_use",
                "usage": {"input_tokens": 1100, "output_tokens": 140},
            }
        )


def _fault(mode: str, shape: str) -> web.Response | None:
    err = {
        "error": {
            "type": "rate_limit_error" if shape == "anthropic" else "requests",
            "code": "rate_limit_exceeded",
            "message": "slow down",
        }
    }
    if mode == "429":
        return web.json_response(err, status=429, headers={"retry-after": "1"})
    if mode == "429-ms":
        return web.json_response(err, status=429, headers={"retry-after-ms": "250"})
    if mode == "429-long":
        return web.json_response(err, status=429, headers={"retry-after": "120"})
    if mode == "quota":
        return web.json_response(
            {"error": {"type": "insufficient_quota", "code": "insufficient_quota"}}, status=429
        )
    if mode in ("500", "529"):
        return web.json_response({"error": {"type": "overloaded_error"}}, status=int(mode))
    if mode == "nonjson":
        return web.Response(text="<html>gateway says hi</html>", content_type="text/html")
    return None


class StubInThread:
    """The stand-in provider on its own event loop in a thread, for worker processes."""

    def __init__(self, **kwargs: Any) -> None:
        import threading

        self.stub = StubLLM(**kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> StubLLM:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.stub.start(), self._loop).result(10)
        return self.stub

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self.stub.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
