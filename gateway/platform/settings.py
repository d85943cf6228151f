"""Settings read once from the environment (and an optional TOML file); secrets hidden from repr."""

from __future__ import annotations

import base64
import ipaddress
import tomllib
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import phonenumbers
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from . import tracing

PREFIX = "GATEWAY_"
DEFAULT_PROVIDER_URL = "https://bulksms.schooldream.co.rw/api/v2/sms/send"
DEFAULT_RETRY_SCHEDULE = (0.0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
SUPPORTED_ALGORITHMS = frozenset(
    {
        "HS256",
        "HS384",
        "HS512",
        "RS256",
        "RS384",
        "RS512",
        "ES256",
        "ES384",
        "ES512",
        "PS256",
        "PS384",
        "PS512",
    }
)
# Fixed sandbox credentials: the simulated provider checks them like the real one would.
SANDBOX_CREDENTIALS = ("sandbox-api-key", "sandbox", "sandbox-password")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(Exception):
    """A setting is missing or unusable; the message is one line meant for the operator."""


@dataclass(frozen=True)
class Settings:
    """Everything the gateway is configured with; built by `from_env`, never read elsewhere."""

    host: str = "127.0.0.1"
    port: int = 8080
    database: str = field(default="gateway.db", repr=False)  # a URL may hold a password
    provider_url: str = DEFAULT_PROVIDER_URL
    provider_api_key: str | None = field(default=None, repr=False)
    provider_username: str | None = None
    provider_password: str | None = field(default=None, repr=False)
    provider_sender: str | None = None
    provider_timeout: float = 15.0
    provider_batch_size: int = 100
    public_url: str = ""
    jwt_secret: str | None = field(default=None, repr=False)
    jwt_public_key: str | None = field(default=None, repr=False)  # PEM text, not the path
    jwks_url: str | None = None
    jwks_min_refresh: float = 5.0
    jwt_algorithms: tuple[str, ...] = ("HS256",)
    jwt_issuer: str | None = None
    jwt_audience: str | None = "sms-gateway"
    timezone: str = "Africa/Kigali"
    price_per_segment: int = 75
    webhook_retry_schedule: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE
    webhook_disable_after: float = 5 * 86400.0  # an endpoint failing this long is disabled
    webhook_secret_overlap: float = 86400.0  # a rotated endpoint secret still signs this long
    sandbox: bool = False
    default_region: str = "RW"
    allowed_regions: tuple[str, ...] = ("RW",)
    sandbox_dlr_delay: float = 1.0
    callback_allowed_networks: tuple[str, ...] = ()
    lease_seconds: float = 30.0
    log_level: str = "INFO"
    retention_days: int | None = None
    database_busy_timeout: float = 10.0
    provider_max_rate: float | None = None  # provider calls/s for queued sends, all replicas
    queue_validity: int = 86400  # seconds a queued message may wait before it expires
    max_clock_offset: float = 2.0  # seconds from the database's clock before a warning
    secret_key: str | None = field(default=None, repr=False)  # seals drop-in DLR passwords
    secret_key_file: str | None = None  # a file holding secret_key instead
    operator_webhook_url: str | None = None  # usage alerts go here too (SPEC 8)
    operator_webhook_secret: str | None = field(default=None, repr=False)  # signs them (whsec_)
    tracing: bool = False  # OpenTelemetry's own OTEL_EXPORTER_OTLP_ENDPOINT is set (tracing.py)

    def __post_init__(self) -> None:
        if not self.public_url:
            object.__setattr__(self, "public_url", f"http://{self.host}:{self.port}")
        object.__setattr__(self, "public_url", self.public_url.rstrip("/"))

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret value configured, for redaction and leak checks."""
        database_password = None
        if self.database.startswith(("postgresql://", "postgres://")):
            database_password = urlsplit(self.database).password
        values = (
            self.provider_api_key,
            self.provider_password,
            self.jwt_secret,
            self.secret_key,
            self.operator_webhook_secret,
            database_password,
        )
        return tuple(v for v in values if v)

    def validate(self) -> None:
        """Raise ConfigError with one clear line if the settings cannot run a gateway."""
        self._validate_operator_webhook()
        if self.tracing and not tracing.installed():
            raise ConfigError(tracing.EXTRA_MISSING)
        if not self.sandbox:
            missing = [
                PREFIX + name
                for name, value in (
                    ("PROVIDER_API_KEY", self.provider_api_key),
                    ("PROVIDER_USERNAME", self.provider_username),
                    ("PROVIDER_PASSWORD", self.provider_password),
                )
                if not value
            ]
            if missing:
                raise ConfigError(
                    f"{', '.join(missing)} must be set (or run with --sandbox to use the simulator)"
                )
        _check_url("GATEWAY_PROVIDER_URL", self.provider_url)
        _check_url("GATEWAY_PUBLIC_URL", self.public_url)
        if self.jwks_url:
            _check_url("GATEWAY_JWKS_URL", self.jwks_url)
        algorithms = {a.upper() for a in self.jwt_algorithms}
        if not algorithms:
            raise ConfigError("GATEWAY_JWT_ALGORITHMS must name at least one algorithm")
        if "NONE" in algorithms:
            raise ConfigError("GATEWAY_JWT_ALGORITHMS may not contain 'none'")
        unknown = algorithms - SUPPORTED_ALGORITHMS
        if unknown:
            raise ConfigError(
                f"GATEWAY_JWT_ALGORITHMS has unsupported {', '.join(sorted(unknown))}"
            )
        if not (self.jwt_secret or self.jwt_public_key or self.jwks_url):
            raise ConfigError(
                "no JWT key: set GATEWAY_JWT_SECRET, GATEWAY_JWT_PUBLIC_KEY or GATEWAY_JWKS_URL"
            )
        if self.jwt_secret is not None and len(self.jwt_secret.encode()) < 32:
            raise ConfigError("GATEWAY_JWT_SECRET must be at least 32 bytes long")
        symmetric = {a for a in algorithms if a.startswith("HS")}
        if symmetric and not self.jwt_secret:
            raise ConfigError(f"{', '.join(sorted(symmetric))} needs GATEWAY_JWT_SECRET")
        if algorithms - symmetric and not (self.jwt_public_key or self.jwks_url):
            raise ConfigError(
                f"{', '.join(sorted(algorithms - symmetric))} needs "
                "GATEWAY_JWT_PUBLIC_KEY or GATEWAY_JWKS_URL"
            )
        if self.jwt_public_key:
            try:
                load_pem_public_key(self.jwt_public_key.encode())
            except ValueError:
                raise ConfigError("GATEWAY_JWT_PUBLIC_KEY is not a PEM public key") from None
        if self.jwt_secret and not symmetric:
            raise ConfigError("GATEWAY_JWT_SECRET is set but GATEWAY_JWT_ALGORITHMS allows no HS*")
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                f"GATEWAY_TIMEZONE {self.timezone!r} is not a known time zone"
            ) from None
        if not 1 <= self.provider_batch_size <= 1000:
            raise ConfigError("GATEWAY_PROVIDER_BATCH_SIZE must be between 1 and 1000")
        if self.provider_timeout <= 0:
            raise ConfigError("GATEWAY_PROVIDER_TIMEOUT must be positive")
        if self.price_per_segment < 0:
            raise ConfigError("GATEWAY_PRICE_PER_SEGMENT must not be negative")
        if not self.webhook_retry_schedule or any(s < 0 for s in self.webhook_retry_schedule):
            raise ConfigError("GATEWAY_WEBHOOK_RETRY_SCHEDULE must be non-negative seconds")
        for network in self.callback_allowed_networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ConfigError(
                    f"GATEWAY_CALLBACK_ALLOWED_NETWORKS: {network!r} is not a network (CIDR)"
                ) from None
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"GATEWAY_PORT must be between 1 and 65535, got {self.port}")
        unknown_regions = sorted(
            {self.default_region, *self.allowed_regions} - phonenumbers.SUPPORTED_REGIONS
        )
        if unknown_regions:
            raise ConfigError(
                f"unknown region(s) {', '.join(unknown_regions)} in GATEWAY_DEFAULT_REGION or "
                "GATEWAY_ALLOWED_REGIONS (two-letter ISO codes such as RW)"
            )
        if self.jwks_min_refresh < 0 or self.sandbox_dlr_delay < 0:
            raise ConfigError(
                "GATEWAY_JWKS_MIN_REFRESH and GATEWAY_SANDBOX_DLR_DELAY must not be negative"
            )
        if self.retention_days is not None and self.retention_days < 1:
            raise ConfigError("GATEWAY_RETENTION_DAYS must be a whole number of days, 1 or more")
        if self.log_level.upper() not in LOG_LEVELS:
            raise ConfigError(f"GATEWAY_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
        if not 1 <= self.lease_seconds <= 50:
            raise ConfigError(
                "GATEWAY_LEASE_SECONDS must be between 1 and 50 (a dead process's sends are "
                "swept within a minute)"
            )
        if self.webhook_disable_after <= 0 or self.webhook_secret_overlap < 0:
            raise ConfigError(
                "GATEWAY_WEBHOOK_DISABLE_AFTER must be positive and "
                "GATEWAY_WEBHOOK_SECRET_OVERLAP not negative (seconds)"
            )
        if self.database_busy_timeout <= 0:
            raise ConfigError("GATEWAY_DATABASE_BUSY_TIMEOUT must be positive")
        if self.provider_max_rate is not None and not 0 < self.provider_max_rate <= 10000:
            raise ConfigError(
                "GATEWAY_PROVIDER_MAX_RATE must be a number of calls per second above 0 "
                "(at most 10000), or unset for no limit"
            )
        if self.queue_validity < 1:
            raise ConfigError("GATEWAY_QUEUE_VALIDITY must be a whole number of seconds, 1 or more")
        if not self.sandbox and self.secret_key is None and self.secret_key_file is None:
            raise ConfigError(
                "GATEWAY_SECRET_KEY (or GATEWAY_SECRET_KEY_FILE) must be set outside the sandbox: "
                "it seals drop-in clients' DLR passwords (e.g. `openssl rand -hex 32`)"
            )
        if self.max_clock_offset <= 0:
            raise ConfigError("GATEWAY_MAX_CLOCK_OFFSET must be a positive number of seconds")
        if self.secret_key is not None and self.secret_key_file is not None:
            raise ConfigError("set GATEWAY_SECRET_KEY or GATEWAY_SECRET_KEY_FILE, not both")
        if self.secret_key is not None and len(self.secret_key.encode()) < 32:
            raise ConfigError("GATEWAY_SECRET_KEY must be at least 32 bytes (e.g. 64 hex digits)")

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str],
        config_file: str | None = None,
        *,
        sandbox: bool | None = None,
        check: bool = True,
    ) -> Settings:
        """Build settings from a TOML file (optional) overlaid by the environment.

        `check=False` skips the server's start-up checks (for CLI commands that only need the
        database).
        """
        raw: dict[str, Any] = {}
        if config_file:
            try:
                with open(config_file, "rb") as fh:
                    raw = {str(k).lower(): v for k, v in tomllib.load(fh).items()}
                unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
                if unknown:
                    raise ConfigError(
                        f"config file {config_file}: unknown setting(s) {', '.join(unknown)}"
                    )
            except OSError as exc:
                raise ConfigError(
                    f"cannot read config file {config_file}: {exc.strerror}"
                ) from None
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from None
        for key, value in environ.items():
            if key.startswith(PREFIX):
                raw[key[len(PREFIX) :].lower()] = value
        if sandbox:
            raw["sandbox"] = True
        raw["tracing"] = tracing.wanted(environ)  # the SDK's settings, not a GATEWAY_ one
        settings = cls(**_convert(raw))
        if settings.sandbox:
            api_key, username, password = SANDBOX_CREDENTIALS
            settings = replace(
                settings,
                provider_api_key=settings.provider_api_key or api_key,
                provider_username=settings.provider_username or username,
                provider_password=settings.provider_password or password,
            )
        if check:
            settings.validate()
        return settings

    def _validate_operator_webhook(self) -> None:
        if self.operator_webhook_url is None:
            return
        _check_url("GATEWAY_OPERATOR_WEBHOOK_URL", self.operator_webhook_url)
        secret = self.operator_webhook_secret or ""
        key = secret.removeprefix("whsec_")
        try:
            valid = secret.startswith("whsec_") and len(base64.b64decode(key, validate=True)) >= 24
        except ValueError:
            valid = False
        if not valid:
            raise ConfigError(
                "GATEWAY_OPERATOR_WEBHOOK_URL needs GATEWAY_OPERATOR_WEBHOOK_SECRET to sign the "
                'alerts: whsec_ and the base64 of 24 or more random bytes (python -c "import '
                "base64,os; print('whsec_' + base64.b64encode(os.urandom(32)).decode())\")"
            )


def _check_url(name: str, value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{name} must be an http(s) URL, got {value!r}")


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise ConfigError(f"{PREFIX}{name.upper()} must be a boolean (1/0, true/false), got {value!r}")


def _as_number(name: str, value: Any, kind: type[int] | type[float]) -> Any:
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{PREFIX}{name.upper()} must be a number, got {value!r}") from None


def _as_list(value: Any) -> list[str]:
    if isinstance(value, list | tuple):
        return [str(v).strip() for v in value if str(v).strip()]
    return [part.strip() for part in str(value).replace(" ", ",").split(",") if part.strip()]


def _convert(raw: Mapping[str, Any]) -> dict[str, Any]:
    known = set(Settings.__dataclass_fields__)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            continue  # GATEWAY_* variables the gateway does not know are ignored, like any env
        if key == "retention_days":
            out[key] = None if str(value).strip() == "" else _as_number(key, value, int)
        elif key == "provider_max_rate":
            out[key] = None if str(value).strip() == "" else _as_number(key, value, float)
        elif key in ("port", "provider_batch_size", "price_per_segment", "queue_validity"):
            out[key] = _as_number(key, value, int)
        elif key in (
            "provider_timeout",
            "jwks_min_refresh",
            "sandbox_dlr_delay",
            "lease_seconds",
            "database_busy_timeout",
            "max_clock_offset",
            "webhook_disable_after",
            "webhook_secret_overlap",
        ):
            out[key] = _as_number(key, value, float)
        elif key in ("sandbox", "tracing"):
            out[key] = _as_bool(key, value)
        elif key == "callback_allowed_networks":
            out[key] = tuple(_as_list(value))
        elif key in ("jwt_issuer", "jwt_audience") and str(value).strip() == "":
            # Empty would silently turn the check off: say so instead.
            raise ConfigError(
                f"{PREFIX}{key.upper()} is empty: set a value, or leave it unset"
                + (" to use the default 'sms-gateway'" if key == "jwt_audience" else "")
            )
        elif key == "jwt_algorithms" or key == "allowed_regions":
            out[key] = tuple(a.upper() for a in _as_list(value))
        elif key == "default_region":
            out[key] = str(value).upper()
        elif key == "webhook_retry_schedule":
            out[key] = tuple(_as_number(key, v, float) for v in _as_list(value))
        elif key == "jwt_public_key":
            out[key] = _read_pem(str(value)) if value else None
        elif key in (
            "jwt_issuer",
            "jwt_audience",
            "provider_sender",
            "jwks_url",
            "jwt_secret",
            "provider_api_key",
            "provider_username",
            "provider_password",
            "secret_key",
            "secret_key_file",
            "operator_webhook_url",
            "operator_webhook_secret",
        ):
            out[key] = str(value) if str(value) != "" else None
        else:
            out[key] = str(value)
    return out


def _read_pem(value: str) -> str:
    if value.lstrip().startswith("-----BEGIN"):
        return value
    try:
        return Path(value).read_text()
    except OSError as exc:
        raise ConfigError(
            f"cannot read GATEWAY_JWT_PUBLIC_KEY file {value}: {exc.strerror}"
        ) from None
