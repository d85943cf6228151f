"""What a send request must be: the body's fields, recipients, text and Idempotency-Key. Pure."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from ..delivery import callbacks
from ..errors import InvalidRecipient, ValidationFailed
from ..platform.clock import utcnow
from ..platform.settings import Settings
from . import numbers, segments

MAX_RECIPIENTS = 1000
MAX_SEGMENTS = 10
SEND_FIELDS = frozenset(
    {
        "to",
        "text",
        "sender",
        "reference",
        "callback_url",
        "queue",
        "send_at",
        "validity_period",
        "metadata",
        "purpose",
    }
)
PURPOSES = frozenset({"otp"})
METADATA_KEYS = 16
METADATA_KEY_LENGTH = 40
METADATA_VALUE_LENGTH = 500
METADATA_BYTES = 4096
MAX_SCHEDULE_AHEAD = timedelta(days=35)
# A send_at this far in the past is taken as "now" (the client's clock may lag the gateway's);
# further back it is refused, as it is most likely a mistake.
SEND_AT_SLACK = timedelta(minutes=1)
_ALPHA_SENDER = re.compile(r"[A-Za-z0-9][A-Za-z0-9 .\-&_]{0,10}")
_NUMERIC_SENDER = re.compile(r"\+?[0-9]{1,15}")
_IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,255}")
T = TypeVar("T")


def check_idempotency_key(value: str | None) -> str | None:
    """An Idempotency-Key is 1-255 printable ASCII characters."""
    if value is None:
        return None
    if not _IDEMPOTENCY_KEY.fullmatch(value):
        raise ValidationFailed(
            "Idempotency-Key must be 1 to 255 printable ASCII characters",
            code="invalid_idempotency_key",
        )
    return value


def request_hash(body: Any) -> str:
    """A fingerprint of a request body's meaning (key order and spacing do not matter)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class SendRequest:
    """A validated send: normalised, de-duplicated recipients and the text's segment info."""

    recipients: list[str]
    text: str
    info: segments.SegmentInfo
    sender: str | None
    reference: str | None
    callback_url: str | None
    queue: bool = False  # accepted now, sent by the dispatcher
    send_at: datetime | None = None  # scheduled: not before this (implies queue)
    validity: int | None = None  # seconds a queued message may wait once due (None: the default)
    metadata: str | None = None  # the team's own data, as compact JSON text
    purpose: str | None = None  # `otp`: passes the team's own suppression list


def _field_error(field: str, reason: str, code: str = "validation_error") -> ValidationFailed:
    return ValidationFailed(
        f"{field}: {reason}", code=code, extra={"errors": [{"field": field, "reason": reason}]}
    )


def _optional_string(body: Mapping[str, Any], name: str, max_len: int) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _field_error(name, "must be a string")
    if not value.strip():
        raise _field_error(name, "must not be empty")
    if len(value) > max_len:
        raise _field_error(name, f"must be at most {max_len} characters")
    return value


def callback_guard(settings: Settings) -> callbacks.CallbackPolicy:
    """Where this gateway's callbacks may point (loopback only in the sandbox or if allowed)."""
    return callbacks.policy(settings.callback_allowed_networks, settings.sandbox)


def check_callback_url(
    value: str | None, guard: callbacks.CallbackPolicy, field: str = "callback_url"
) -> str | None:
    """A callback URL must be absolute http(s) and may not point at the gateway's own edge."""
    if value is None:
        return None
    reason = guard.url_refusal(value)
    if reason is not None:
        raise _field_error(field, reason, code="invalid_callback_url")
    return value


def validate(body: Any, settings: Settings, now: datetime | None = None) -> SendRequest:
    """Check a POST /messages body: the send, or one 422 that lists every problem in it
    (unknown fields, each bad recipient, the text, the other fields); its `code` is the
    first problem's. `now` bounds `send_at` (the real clock by default)."""
    if not isinstance(body, dict):
        raise ValidationFailed("the body must be a JSON object")
    problems: list[ValidationFailed | InvalidRecipient] = []

    def check(step: Callable[[], T]) -> T | None:
        try:
            return step()
        except (ValidationFailed, InvalidRecipient) as exc:
            problems.append(exc)
            return None

    unknown = sorted(set(body) - SEND_FIELDS)
    if unknown:
        problems.append(
            ValidationFailed(
                f"unknown field(s): {', '.join(unknown)}",
                code="unknown_field",
                extra={"errors": [{"field": f, "reason": "unknown field"} for f in unknown]},
            )
        )
    recipients = check(lambda: _recipients(body.get("to"), settings))
    counted = check(lambda: _text(body.get("text")))
    sender = check(lambda: _sender(body.get("sender")))
    reference = check(lambda: _optional_string(body, "reference", 255))
    callback_url = check(
        lambda: check_callback_url(
            _optional_string(body, "callback_url", 2048), callback_guard(settings)
        )
    )
    queued = check(lambda: _queueing(body, settings, now or utcnow()))
    metadata = check(lambda: _metadata(body.get("metadata")))
    purpose = check(lambda: _purpose(body.get("purpose")))
    if problems:
        first = problems[0]
        raise type(first)(
            "; ".join(p.detail for p in problems),
            code=first.code,
            extra={"errors": [e for p in problems for e in p.extra.get("errors", [])]},
        )
    assert recipients is not None and counted is not None and queued is not None
    text, info = counted
    queue, send_at, validity = queued
    return SendRequest(
        recipients,
        text,
        info,
        sender,
        reference,
        callback_url,
        queue,
        send_at,
        validity,
        metadata,
        purpose,
    )


def _metadata(value: Any) -> str | None:
    """`metadata`: an object of up to 16 string keys (1-40 characters) and string values (up to
    500), at most 4 KB as compact JSON; stored and returned as sent. Every violation is listed."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _field_error("metadata", "must be an object of string keys and string values")
    errors: list[dict[str, str]] = []
    if len(value) > METADATA_KEYS:
        errors.append({"field": "metadata", "reason": f"at most {METADATA_KEYS} keys"})
    for key, item in value.items():
        field = f"metadata.{key}"
        if not 1 <= len(key) <= METADATA_KEY_LENGTH:
            errors.append(
                {"field": field, "reason": f"keys are 1 to {METADATA_KEY_LENGTH} characters"}
            )
        if not isinstance(item, str):
            errors.append({"field": field, "reason": "must be a string"})
        elif len(item) > METADATA_VALUE_LENGTH:
            errors.append(
                {"field": field, "reason": f"must be at most {METADATA_VALUE_LENGTH} characters"}
            )
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if len(text.encode()) > METADATA_BYTES:
        errors.append(
            {"field": "metadata", "reason": f"must be at most {METADATA_BYTES} bytes as JSON"}
        )
    if errors:
        raise ValidationFailed(
            "; ".join(f"{e['field']}: {e['reason']}" for e in errors),
            code="invalid_metadata",
            extra={"errors": errors},
        )
    return text if value else None


def _purpose(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and value in PURPOSES:
        return value
    raise _field_error("purpose", 'must be "otp" or absent', code="invalid_purpose")


def granted_sender(sender: str | None, granted: Sequence[str], default: str | None) -> str | None:
    """The sender a team's send goes under: the one it named if it is granted (none granted:
    only the gateway's `default`), or else the first granted (none granted: None, the
    gateway's own). Raises the 422 `sender_not_allowed` for any other."""
    if sender is None:
        return granted[0] if granted else None
    if sender in granted or (not granted and sender == default):
        return sender
    allowed = ", ".join(granted or [default or "the gateway's own sender"])
    raise ValidationFailed(
        f"sender: {sender!r} is not granted to this team (it may send as {allowed})",
        code="sender_not_allowed",
        extra={"errors": [{"field": "sender", "reason": "is not granted to this team"}]},
    )


def for_team(request: SendRequest, granted: Sequence[str], default: str | None) -> SendRequest:
    """The send under the sender the team may use (see granted_sender)."""
    sender = granted_sender(request.sender, granted, default)
    return request if sender == request.sender else replace(request, sender=sender)


def valid_sender(sender: Any) -> bool:
    """Whether a value is a sender ID the provider takes: 1-11 letters, digits, spaces or
    .-&_, or a number of up to 15 digits."""
    return isinstance(sender, str) and bool(
        _ALPHA_SENDER.fullmatch(sender) or _NUMERIC_SENDER.fullmatch(sender)
    )


def _queueing(
    body: Mapping[str, Any], settings: Settings, now: datetime
) -> tuple[bool, datetime | None, int | None]:
    """`queue`, `send_at` and `validity_period`: whether the send is queued, from when, and for
    how long it may wait (every problem among them in one 422)."""
    problems: list[ValidationFailed] = []
    queue = body.get("queue")
    if queue is not None and not isinstance(queue, bool):
        problems.append(_field_error("queue", "must be true or false"))
    send_at = None
    raw = body.get("send_at")
    if raw is not None:
        try:
            send_at = _send_at(raw, now)
        except ValidationFailed as exc:
            problems.append(exc)
        if queue is False:
            problems.append(
                _field_error("queue", "must not be false with send_at (a scheduled send is queued)")
            )
    validity = body.get("validity_period")
    if validity is not None:
        limit = settings.queue_validity
        if (
            isinstance(validity, bool)
            or not isinstance(validity, int)
            or not 1 <= validity <= limit
        ):
            problems.append(
                _field_error(
                    "validity_period", f"must be a whole number of seconds from 1 to {limit}"
                )
            )
        elif not queue and raw is None:
            problems.append(
                _field_error(
                    "validity_period",
                    'applies to queued sends only: add "queue": true or "send_at"',
                )
            )
    if problems:
        raise ValidationFailed(
            "; ".join(p.detail for p in problems),
            code=problems[0].code,
            extra={"errors": [e for p in problems for e in p.extra["errors"]]},
        )
    return queue is True or send_at is not None, send_at, validity


def rfc3339(raw: Any) -> datetime | None:
    """A client's RFC 3339 date and time with an offset (`Z` or `+02:00`); None if it is not
    one."""
    if not isinstance(raw, str) or "T" not in raw.upper():
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo is not None else None


def _send_at(raw: Any, now: datetime) -> datetime:
    value = rfc3339(raw)
    if value is None:
        reason = "must be an RFC 3339 time with an offset, e.g. 2026-11-27T08:00:00+02:00"
        raise _field_error("send_at", reason)
    if value < now - SEND_AT_SLACK:
        raise _field_error("send_at", "is in the past")
    if value > now + MAX_SCHEDULE_AHEAD:
        raise _field_error("send_at", "is more than 35 days ahead")
    # (not moved up to this process's now: the database's clock judges when it is due)
    return value


def _recipients(raw_to: Any, settings: Settings) -> list[str]:
    if isinstance(raw_to, str):
        raw_to = [raw_to]
    if not isinstance(raw_to, list) or not raw_to:
        raise _field_error(
            "to", "must be a phone number or a list of 1 to 1000 of them", code="invalid_recipient"
        )
    if len(raw_to) > MAX_RECIPIENTS:
        raise _field_error(
            "to", f"at most {MAX_RECIPIENTS} recipients per request", code="too_many_recipients"
        )
    recipients, bad = numbers.normalise_all(
        raw_to, settings.default_region, settings.allowed_regions
    )
    if bad:
        raise InvalidRecipient(
            f"{len(bad)} of {len(raw_to)} recipients are not valid; nothing was sent",
            extra={
                "errors": [
                    {
                        "field": f"to[{b.index}]",
                        "value": b.value if isinstance(b.value, str) else None,
                        "reason": b.reason,
                    }
                    for b in bad
                ]
            },
        )
    return recipients


def _text(text: Any) -> tuple[str, segments.SegmentInfo]:
    if not isinstance(text, str) or not text:
        raise _field_error("text", "must be a non-empty string", code="invalid_text")
    if len(text) > MAX_SEGMENTS * 160:
        raise _field_error("text", f"is longer than {MAX_SEGMENTS} segments", code="text_too_long")
    info = segments.count(text)
    if info.segments > MAX_SEGMENTS:
        raise _field_error(
            "text",
            f"needs {info.segments} segments ({info.encoding}); at most {MAX_SEGMENTS}",
            code="text_too_long",
        )
    return text, info


def _sender(sender: Any) -> str | None:
    if sender is None:
        return None
    if not valid_sender(sender):
        raise _field_error(
            "sender",
            "must be 1-11 letters, digits, spaces or .-&_, or a number of up to 15 digits",
            code="invalid_sender",
        )
    return str(sender)


def _unstorable(text: str) -> bool:
    """Whether a string holds what the databases cannot store as text: NUL (PostgreSQL refuses
    it) or a lone surrogate (not UTF-8)."""
    if "\x00" in text:
        return True
    if text.isascii():
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


def unstorable_fields(value: Any, path: str = "") -> list[str]:
    """The paths (`text`, `to[1]`, `meta.key`) of the strings in a JSON value that cannot be
    stored; keys count as strings too."""
    if isinstance(value, str):
        return [path or "body"] if _unstorable(value) else []
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            name = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and _unstorable(key):
                found.append(path or "body")
                continue
            found += unstorable_fields(item, name)
    elif isinstance(value, list):
        for n, item in enumerate(value):
            found += unstorable_fields(item, f"{path}[{n}]")
    return found


def refuse_unstorable(fields: list[str], where: str = "") -> None:
    """Raise the 422 that names each field whose text cannot be stored (nothing is changed)."""
    if not fields:
        return
    reason = "must not contain a NUL character (\\u0000) or a lone surrogate"
    names = [f"{where}{f}" for f in fields]
    raise ValidationFailed(
        f"{', '.join(names)}: {reason}",
        code="invalid_character",
        extra={"errors": [{"field": n, "reason": reason} for n in names]},
    )
