"""The LLM client: one retry loop, a circuit breaker and a concurrency cap over httpx.

Retries (capped exponential backoff with full jitter) cover timeouts, connection
errors, 408/409/5xx/529 and 429; a Retry-After (or retry-after-ms) is honoured up to
`retry_after_cap_s`, beyond which the call fails at once so the case falls back
instead of waiting. A quota-exhausted 429 and other 4xx are not retried. Retries
live here only: nothing above or below this loop retries again. A call that still
fails counts once towards the breaker, which then refuses calls until a probe
succeeds. Errors from httpx are translated at this boundary.

A call may carry a deadline (the case's): attempts, backoff and Retry-After waits are
fitted into it, and a call that reaches it fails here with LLMTimeout, counted by the
breaker like any failed call. Were the caller to cancel it at the deadline instead, a
provider that hangs would never be counted and never open the circuit. A call that is
cancelled all the same (a rebalance hands its case back) counts neither way, and a
half-open probe that is cancelled lets the next call probe.

The concurrency cap is the model slots: a call holds one only while it is with the
provider (its attempts and their backoff). A caller may bound the wait for a free slot
(`slot_by`); past it the call fails with LLMNoSlot, nothing sent, the breaker not told.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

import httpx
from aiolimiter import AsyncLimiter

from streamproc.errors import (
    LLMBudgetExhausted,
    LLMCircuitOpen,
    LLMError,
    LLMNoSlot,
    LLMOutputError,
    LLMQuotaExhausted,
    LLMRateLimited,
    LLMRequestError,
    LLMTimeout,
    LLMTransportError,
)
from streamproc.llm.providers import LLMRequest, LLMResponse, Provider
from streamproc.privacy.detect import DEFAULT_REGIONS, find_all

RETRYABLE_STATUS = frozenset({408, 409, 500, 502, 503, 504, 529})
MIN_ATTEMPT_S = 0.05  # an attempt with less time than this left before the deadline is not sent
PROVIDER_MESSAGE_MAX = 300
log = logging.getLogger(__name__)


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Opens after `threshold` failed calls in a row; after `reset_after_s` lets one probe
    through (half-open); the probe's outcome closes or re-opens it."""

    def __init__(
        self,
        threshold: int = 5,
        reset_after_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold, self.reset_after_s, self.clock = threshold, reset_after_s, clock
        self.failures = 0
        self.opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> CircuitState:
        if self.opened_at is None:
            return CircuitState.CLOSED
        if self.clock() - self.opened_at >= self.reset_after_s:
            return CircuitState.HALF_OPEN
        return CircuitState.OPEN

    def allow(self) -> bool:
        state = self.state
        if state is CircuitState.CLOSED:
            return True
        if state is CircuitState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    @property
    def probing(self) -> bool:
        """A half-open probe is under way (right after allow(): this call is it)."""
        return self._probing

    def release_probe(self) -> None:
        """The probe ended with no outcome (cancelled): the next call may probe."""
        self._probing = False

    def success(self) -> None:
        self.failures, self.opened_at, self._probing = 0, None, False

    def failure(self) -> None:
        self.failures += 1
        self._probing = False
        if self.failures >= self.threshold or self.opened_at is not None:
            self.opened_at = self.clock()


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3
    base_s: float = 0.5
    cap_s: float = 8.0
    retry_after_cap_s: float = 20.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0, min(self.cap_s, self.base_s * 2**attempt))


class Budget:
    """Request and token limits per minute (token buckets) and tokens per UTC day."""

    def __init__(
        self,
        requests_per_minute: int = 0,
        tokens_per_minute: int = 0,
        tokens_per_day: int = 0,
        wait_cap_s: float = 20.0,
        today: Callable[[], str] = lambda: time.strftime("%Y-%m-%d", time.gmtime()),
    ) -> None:
        self.rpm = AsyncLimiter(requests_per_minute, 60) if requests_per_minute else None
        self.tpm = AsyncLimiter(tokens_per_minute, 60) if tokens_per_minute else None
        self.tokens_per_day, self.wait_cap_s, self.today = tokens_per_day, wait_cap_s, today
        self.day, self.spent = today(), 0

    def check_day_rollover(self) -> None:
        if self.today() != self.day:
            self.day, self.spent = self.today(), 0

    def check_day(self) -> None:
        self.check_day_rollover()
        if self.tokens_per_day and self.spent >= self.tokens_per_day:
            raise LLMBudgetExhausted(f"daily budget of {self.tokens_per_day} tokens spent")

    async def admit(self, estimated_tokens: int) -> None:
        """Wait for a request slot and tokens, up to the cap; LLMRateLimited beyond it."""
        try:
            if self.rpm is not None:
                await asyncio.wait_for(self.rpm.acquire(), self.wait_cap_s)
            if self.tpm is not None:
                amount = min(estimated_tokens, self.tpm.max_rate)
                await asyncio.wait_for(self.tpm.acquire(amount), self.wait_cap_s)
        except TimeoutError:
            raise LLMRateLimited("local rate limit (requests or tokens per minute)") from None

    def spend(self, tokens: int) -> None:
        self.spent += tokens


@dataclass
class _Attempts:
    sent: int = 0  # attempts sent to the provider
    judged: bool = False  # the breaker was told how the call went


@dataclass(frozen=True)
class CallResult:
    response: LLMResponse
    retries: int
    latency_ms: int  # from the slot's taking to the answer
    slot_wait_ms: int = 0  # waiting for a free model slot before it


POOL_SIZE = 8  # connections per httpx pool (see LLMClient.__init__)


class LLMClient:
    def __init__(
        self,
        provider: Provider,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 20.0,
        max_concurrency: int = 8,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        budget: Budget | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.provider, self.model = provider, model
        self._api_key = api_key
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self.breaker = breaker or CircuitBreaker()
        self.budget = budget or Budget()
        self._limit = asyncio.Semaphore(max_concurrency)
        self._sleep = sleep
        self._rng = rng or random.Random()
        # Connections in pools of at most POOL_SIZE, a call taking the least busy pool:
        # httpcore's pool walks all its connections, polling each idle socket, on every
        # request and release (encode/httpcore#1035, open), so one pool of 64 cost the
        # worker 4 times the CPU per call of one of 8. Each pool keeps its connections
        # alive (httpx keeps 20 by default: above that, every call would open, and to a
        # provider TLS-handshake, a connection of its own).
        n = max(1, -(-max_concurrency // POOL_SIZE))
        per_pool = -(-max_concurrency // n)
        limits = httpx.Limits(max_connections=per_pool, max_keepalive_connections=per_pool)
        self._pools = [
            httpx.AsyncClient(
                base_url=base_url, transport=transport, timeout=timeout_s, limits=limits
            )
            for _ in range(n)
        ]
        self._pool_load = [0] * n
        self.in_flight = 0

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()

    async def complete(
        self,
        req: LLMRequest,
        deadline: float | None = None,
        slot_by: float | None = None,
        on_slot: Callable[[], None] | None = None,
    ) -> CallResult:
        """One structured answer, or an LLMError saying why not (after the retries), by
        `deadline` (time.monotonic()) when one is given; LLMNoSlot when no model slot is
        free by `slot_by` (time.monotonic()). With `slot_by`, the deadline counts from the
        slot's taking: the wait for it is bounded by `slot_by` alone. Without, the
        deadline bounds that wait too. `on_slot` is called when the call has its slot
        and is about to be sent."""
        self.budget.check_day()
        if self.breaker.state is CircuitState.OPEN:  # no wait for a slot to be refused
            raise LLMCircuitOpen("circuit open after repeated LLM failures")
        asked = time.monotonic()
        await self._acquire_slot(slot_by, None if slot_by is not None else deadline)
        started = time.monotonic()
        # The breaker is asked once the slot is taken: the circuit may have opened while
        # the call waited for it. Whether this call is the half-open probe is what allow()
        # did, not a second reading of the clock.
        if not self.breaker.allow():
            self._limit.release()
            raise LLMCircuitOpen("circuit open after repeated LLM failures")
        probing = self.breaker.probing
        if slot_by is not None and deadline is not None:
            deadline += started - asked
        attempts = _Attempts()
        try:
            try:
                if on_slot is not None:
                    on_slot()
                self.in_flight += 1
                try:
                    response, retries = await self._with_retries(req, deadline, attempts)
                except LLMOutputError as exc:
                    exc.slot_wait_ms = int((started - asked) * 1000)
                    self.breaker.success()  # the provider is up; a bad answer is for repair
                    attempts.judged = True
                    raise
                except LLMError as exc:
                    exc.slot_wait_ms = int((started - asked) * 1000)
                    if attempts.sent:  # not the provider's fault when nothing was sent
                        self.breaker.failure()
                        attempts.judged = True
                    raise
                finally:
                    self.in_flight -= 1
            finally:
                self._limit.release()
            self.breaker.success()
            attempts.judged = True
        finally:
            if probing and not attempts.judged:  # cancelled, or never sent
                self.breaker.release_probe()
        waited_ms = int((started - asked) * 1000)
        return CallResult(response, retries, int((time.monotonic() - started) * 1000), waited_ms)

    async def _acquire_slot(self, slot_by: float | None, deadline: float | None) -> None:
        """Take a model slot: LLMNoSlot if none is free by `slot_by`, LLMTimeout if none
        is by the case's deadline (nothing sent either way)."""
        limits = [
            t
            for t in (slot_by, None if deadline is None else deadline - MIN_ATTEMPT_S)
            if t is not None
        ]
        if not limits:
            await self._limit.acquire()
            return
        until, asked = min(limits), time.monotonic()
        try:
            async with asyncio.timeout(max(0.0, until - asked)):
                await self._limit.acquire()
        except TimeoutError:
            error: LLMError = (
                LLMNoSlot("no model slot came free within the queue's longest wait")
                if slot_by is not None and until == slot_by
                else LLMTimeout("case deadline reached while waiting for a model slot")
            )
            error.slot_wait_ms = int((time.monotonic() - asked) * 1000)
            raise error from None

    async def _with_retries(
        self, req: LLMRequest, deadline: float | None, attempts: _Attempts
    ) -> tuple[LLMResponse, int]:
        for attempt in range(self.retry.max_retries + 1):
            timeout = self._attempt_timeout(deadline, attempts)
            try:
                return await self._once(req, timeout, attempts), attempt
            except LLMRateLimited as exc:
                wait = exc.retry_after
                if wait is not None and wait > self.retry.retry_after_cap_s:
                    raise  # waiting that long would stall the case: fall back now
                if attempt == self.retry.max_retries:
                    raise
                await self._wait(wait if wait is not None else self._backoff(attempt), deadline)
            except (LLMTimeout, LLMTransportError):
                if attempt == self.retry.max_retries:
                    raise
                await self._wait(self._backoff(attempt), deadline)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _backoff(self, attempt: int) -> float:
        return self.retry.backoff(attempt, self._rng)

    def _attempt_timeout(self, deadline: float | None, attempts: _Attempts) -> float:
        """This attempt's timeout: the client's, or what is left before the deadline."""
        if deadline is None:
            return self.timeout_s
        left = deadline - time.monotonic()
        if left < MIN_ATTEMPT_S:
            raise LLMTimeout(
                f"case deadline reached after {attempts.sent} attempt(s)"
                if attempts.sent
                else "case deadline reached before the call was sent"
            )
        return min(self.timeout_s, left)

    async def _wait(self, seconds: float, deadline: float | None) -> None:
        """Back off for `seconds`, unless that would pass the deadline: fail now instead."""
        if deadline is not None and time.monotonic() + seconds >= deadline - MIN_ATTEMPT_S:
            raise LLMTimeout("case deadline reached while backing off")
        await self._sleep(seconds)

    async def _once(self, req: LLMRequest, timeout_s: float, attempts: _Attempts) -> LLMResponse:
        await self.budget.admit((len(req.system) + len(req.user)) // 4 + req.max_output_tokens)
        attempts.sent += 1
        response = await self._post(req, timeout_s)
        self.budget.spend(response.prompt_tokens + response.completion_tokens)
        return response

    async def _post(self, req: LLMRequest, timeout_s: float) -> LLMResponse:
        path, headers, body = self.provider.build(req, self.model, self._api_key)
        i = min(range(len(self._pools)), key=self._pool_load.__getitem__)
        self._pool_load[i] += 1
        try:
            r = await self._pools[i].post(path, json=body, headers=headers, timeout=timeout_s)
        except httpx.TimeoutException as exc:
            raise LLMTimeout(f"no answer within {timeout_s:.3g}s") from exc
        except httpx.TransportError as exc:
            raise LLMTransportError(f"connection failed ({type(exc).__name__})") from exc
        finally:
            self._pool_load[i] -= 1
        if r.status_code == 200:
            return self.provider.parse(r.text)
        error = _refusal(r)
        error.provider_message = provider_message(self.provider.error_message(r.text))
        if error.provider_message and isinstance(error, LLMRequestError):
            log.warning(
                "the LLM provider refused the request",
                extra={"status": r.status_code, "provider_message": error.provider_message},
            )
        raise error


def _refusal(r: httpx.Response) -> LLMError:
    """The error for a non-200 answer."""
    if r.status_code == 429:
        if _is_quota(r):
            return LLMQuotaExhausted("provider quota exhausted (429 insufficient_quota)")
        return LLMRateLimited("rate limited (429)", retry_after=_retry_after(r.headers))
    if r.status_code in RETRYABLE_STATUS:
        return LLMTransportError(f"provider answered {r.status_code}")
    return LLMRequestError(f"provider refused the request ({r.status_code})")


def provider_message(message: str | None) -> str | None:
    """A provider's error text fit for the audit record and the log: one line, at most
    PROVIDER_MESSAGE_MAX characters, with PII-shaped strings removed."""
    if not message:
        return None
    text = " ".join(message.split())[: PROVIDER_MESSAGE_MAX * 2]
    for span in reversed(find_all(text, None, DEFAULT_REGIONS)):
        text = text[: span.start] + "[removed]" + text[span.end :]
    return text if len(text) <= PROVIDER_MESSAGE_MAX else text[: PROVIDER_MESSAGE_MAX - 1] + "…"


def _is_quota(r: httpx.Response) -> bool:
    try:
        error = r.json().get("error") or {}
    except ValueError:
        return False
    return "insufficient_quota" in (error.get("type"), error.get("code"))


def _retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait from retry-after-ms, or Retry-After (seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
