"""ProviderClient: the only code that speaks the Bulk SMS DSC protocol."""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Literal
from urllib.parse import quote_plus, urlencode

from ..platform import tracing
from ..platform.jsonio import loads
from ..platform.metrics import Metrics
from .transport import ConnectFailed, ResponseLost, Upstream

log = logging.getLogger("gateway.provider")
_FORM = "application/x-www-form-urlencoded"

FailureKind = Literal["error", "unavailable", "timeout"]


@dataclass(frozen=True)
class RecipientResult:
    """The provider's answer for one recipient."""

    recipient: str
    status: Literal["sent", "failed"]
    message_id: str | None
    cost: int | None  # None when the provider did not say, or said something unusable
    message: str | None
    cost_given: bool = False  # the answer had a `cost` (usable or not)


@dataclass(frozen=True)
class SendResult:
    """One provider call's outcome: per-recipient results, or a failure of the whole call.

    `failure` is `error` (the provider refused the call: nothing was sent), `unavailable` (the
    request never reached it: nothing was sent) or `timeout` (it may or may not have been sent).
    """

    results: dict[str, RecipientResult]
    failure: FailureKind | None = None
    detail: str | None = None


class ProviderClient:
    """Posts sends to the provider with the account credentials, and reads its answers."""

    def __init__(
        self,
        upstream: Upstream,
        *,
        api_key: str,
        username: str,
        password: str,
        timeout: float,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._upstream = upstream
        # The credentials part of every form body, encoded once.
        self._form_prefix = urlencode(
            {"api_key": api_key, "username": username, "password": password}
        )
        self._timeout = timeout

    async def send(
        self, recipients: Sequence[str], message: str, *, sender: str | None, dlrurl: str | None
    ) -> SendResult:
        """Send one call; never raises for provider or network trouble, it reports it."""
        started = time.perf_counter()
        with tracing.span("provider send", "client", self._span_attributes(recipients)) as current:
            result = await self._send(recipients, message, sender=sender, dlrurl=dlrurl)
            if current is not None and result.failure is not None:
                tracing.failed(current, result.failure)
        if self._metrics is not None:
            self._metrics.provider_latency.observe(time.perf_counter() - started)
            if result.failure is not None:
                self._metrics.provider_errors.labels(result.failure).inc()
        return result

    def _span_attributes(self, recipients: Sequence[str]) -> dict[str, Any] | None:
        if not tracing.active():
            return None
        return {"server.address": self._upstream.host, "gateway.recipients": len(recipients)}

    async def _send(
        self, recipients: Sequence[str], message: str, *, sender: str | None, dlrurl: str | None
    ) -> SendResult:
        parts = [
            self._form_prefix,
            "recipients=" + quote_plus(",".join(recipients), safe=""),
            "message=" + quote_plus(message, safe=""),
        ]
        if sender:
            parts.append("sender=" + quote_plus(sender, safe=""))
        if dlrurl:
            parts.append("dlrurl=" + quote_plus(dlrurl, safe=""))
        try:
            answer = await self._upstream.post("&".join(parts).encode(), _FORM, self._timeout)
        except ConnectFailed as exc:
            # The connection was never made, so the provider cannot have sent anything.
            log.warning("provider unreachable: %s", exc)
            return SendResult({}, "unavailable", "the provider could not be reached")
        except TimeoutError:
            log.warning("provider call timed out")
            return SendResult({}, "timeout", "the provider did not answer in time")
        except ResponseLost as exc:
            # The request may have left: a broken connection mid-answer is an unknown outcome.
            log.warning("provider connection failed: %s", exc)
            return SendResult({}, "timeout", "the connection to the provider broke")
        except Exception:
            # A fault of ours mid-call: whether the send left is unknown, so it stays charged.
            log.exception("provider call failed unexpectedly")
            return SendResult({}, "timeout", "the provider call failed in the gateway")
        return _interpret(answer.status, answer.body)


def _interpret(status: int, body: bytes) -> SendResult:
    """Turn the provider's HTTP answer into a SendResult, defensively."""
    data: Any = None
    try:
        data = loads(body) if body.strip() else None
    except ValueError:
        data = None
    message = _text(data.get("message")) if isinstance(data, dict) else None
    if isinstance(data, dict) and str(data.get("status", "")).lower() == "error":
        if status in (429, 503):
            # The provider's own word that it is busy: it took nothing (SPEC, POST /messages).
            busy = f"the provider is busy (HTTP {status})"
            return SendResult({}, "unavailable", f"{busy}: {message}" if message else busy)
        if status >= 500:
            # A 5xx could come from a proxy after the provider acted; do not assume nothing left.
            return SendResult({}, "timeout", message or f"the provider answered HTTP {status}")
        return SendResult({}, "error", message or "the provider refused the send")
    if 300 <= status < 400:
        # A redirect is answered before the send is looked at; sends are not re-posted.
        return SendResult(
            {}, "error", f"the provider answered HTTP {status} (a redirect): check the provider URL"
        )
    if 400 <= status < 500:
        return SendResult({}, "error", message or f"the provider answered HTTP {status}")
    if status >= 500:
        return SendResult({}, "timeout", f"the provider answered HTTP {status}")
    if not isinstance(data, dict) or str(data.get("status", "")).lower() != "success":
        return SendResult({}, "timeout", "the provider's answer could not be read")
    entries = data.get("response")
    results: dict[str, RecipientResult] = {}
    if isinstance(entries, list):
        for entry in entries:
            parsed = _recipient(entry)
            if parsed is not None:
                results[parsed.recipient] = parsed
    return SendResult(results)


def _recipient(entry: Any) -> RecipientResult | None:
    if not isinstance(entry, dict):
        return None
    recipient = _text(entry.get("recipient"), MAX_ID)
    if not recipient:
        return None
    recipient = recipient.lstrip("+")
    status = str(entry.get("status", "")).lower()
    return RecipientResult(
        recipient=recipient,
        status="sent" if status in ("sent", "success", "queued", "accepted") else "failed",
        message_id=_text(entry.get("messageid"), MAX_ID),
        cost=parse_cost(entry.get("cost")),
        message=_text(entry.get("message")),
        cost_given=entry.get("cost") is not None,
    )


def parse_cost(value: Any) -> int | None:
    """The provider's cost as whole RWF (it has no smaller unit); None if missing or unreadable."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):  # the usual answer: no Decimal needed
        return value if 0 <= value < 10**16 else None
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    if not amount.is_finite() or amount < 0 or amount.adjusted() > 15:
        return None  # (sanity against the estimate is the accounting rule's, in settlement)
    return int(amount.to_integral_value(rounding=ROUND_HALF_UP))


# What a provider string may not bring into a stored row: control characters (NUL among them,
# which PostgreSQL cannot store), lone surrogates (not UTF-8), and length without end.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
MAX_ID = 128  # characters of a provider message id
MAX_TEXT = 500  # characters of a provider message or status


def clean(text: str, limit: int = MAX_TEXT) -> str:
    """A provider string as the gateway stores it: control characters and lone surrogates
    removed, surrounding space stripped, at most `limit` characters."""
    return _UNSAFE.sub("", text).strip()[:limit]


def _text(value: Any, limit: int = MAX_TEXT) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    text = str(value)
    if not text.isascii() or not text.isprintable():
        text = clean(text, limit)
    text = text.strip()[:limit]
    return text or None
