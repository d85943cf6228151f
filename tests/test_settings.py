"""Settings from the environment and a TOML file; unusable settings are one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.platform.settings import ConfigError, Settings

BAD_PEM = "-----BEGIN PUBLIC KEY-----\nabc\n-----END PUBLIC KEY-----\n"
BASE = {
    "GATEWAY_PROVIDER_API_KEY": "k",
    "GATEWAY_PROVIDER_USERNAME": "u",
    "GATEWAY_PROVIDER_PASSWORD": "p",
    "GATEWAY_JWT_SECRET": "s" * 32,
    "GATEWAY_SECRET_KEY": "k" * 32,
}


def test_defaults_and_names() -> None:
    s = Settings.from_env(BASE)
    assert (s.host, s.port, s.database) == ("127.0.0.1", 8080, "gateway.db")
    assert s.provider_url == "https://bulksms.schooldream.co.rw/api/v2/sms/send"
    assert (s.provider_timeout, s.provider_batch_size, s.price_per_segment) == (15.0, 100, 75)
    assert s.public_url == "http://127.0.0.1:8080"
    assert s.jwt_algorithms == ("HS256",) and s.jwt_audience == "sms-gateway"
    assert s.timezone == "Africa/Kigali"
    assert s.webhook_retry_schedule[:3] == (0, 5, 300) and len(s.webhook_retry_schedule) == 10
    full = Settings.from_env(
        {
            **BASE,
            "GATEWAY_HOST": "0.0.0.0",
            "GATEWAY_PORT": "9000",
            "GATEWAY_PROVIDER_SENDER": "ACME",
            "GATEWAY_PROVIDER_TIMEOUT": "3.5",
            "GATEWAY_PROVIDER_BATCH_SIZE": "50",
            "GATEWAY_PUBLIC_URL": "https://sms.internal/",
            "GATEWAY_JWT_ALGORITHMS": "HS256,RS256",
            "GATEWAY_JWKS_URL": "https://idp/jwks",
            "GATEWAY_JWT_ISSUER": "https://idp",
            "GATEWAY_JWT_AUDIENCE": "gw",
            "GATEWAY_TIMEZONE": "UTC",
            "GATEWAY_PRICE_PER_SEGMENT": "80",
            "GATEWAY_WEBHOOK_RETRY_SCHEDULE": "0, 10, 60",
        }
    )
    assert full.port == 9000 and full.public_url == "https://sms.internal"
    assert full.jwt_algorithms == ("HS256", "RS256") and full.webhook_retry_schedule == (0, 10, 60)
    assert full.provider_timeout == 3.5 and full.price_per_segment == 80


def test_secrets_are_hidden_from_repr() -> None:
    s = Settings.from_env(
        {
            **BASE,
            "GATEWAY_PROVIDER_PASSWORD": "hunter2-password",
            "GATEWAY_PROVIDER_API_KEY": "api-key-xyz",
        }
    )
    assert "hunter2-password" not in repr(s) and "api-key-xyz" not in repr(s)
    assert "s" * 32 not in repr(s)


def test_toml_file_and_environment_precedence(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('port = 9100\nprovider_sender = "FILE"\ndatabase = "from-file.db"\n')
    s = Settings.from_env({**BASE, "GATEWAY_PROVIDER_SENDER": "ENV"}, str(config))
    assert (s.port, s.provider_sender, s.database) == (9100, "ENV", "from-file.db")


def test_pem_path_is_read(tmp_path: Path) -> None:
    pem = tmp_path / "key.pem"
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem.write_bytes(key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    s = Settings.from_env(
        {
            **BASE,
            "GATEWAY_JWT_SECRET": "",
            "GATEWAY_JWT_ALGORITHMS": "RS256",
            "GATEWAY_JWT_PUBLIC_KEY": str(pem),
        }
    )
    assert s.jwt_public_key is not None and s.jwt_public_key.startswith("-----BEGIN")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"GATEWAY_PROVIDER_PASSWORD": ""}, "GATEWAY_PROVIDER_PASSWORD must be set"),
        ({"GATEWAY_JWT_SECRET": "short"}, "at least 32 bytes"),
        ({"GATEWAY_JWT_SECRET": ""}, "no JWT key"),
        ({"GATEWAY_JWT_ALGORITHMS": "none"}, "may not contain 'none'"),
        ({"GATEWAY_JWT_ALGORITHMS": "HS256,RS256"}, "needs GATEWAY_JWT_PUBLIC_KEY"),
        ({"GATEWAY_PORT": "eighty"}, "GATEWAY_PORT must be a number"),
        ({"GATEWAY_TIMEZONE": "Mars/Olympus"}, "not a known time zone"),
        ({"GATEWAY_PROVIDER_BATCH_SIZE": "0"}, "BATCH_SIZE"),
        ({"GATEWAY_PUBLIC_URL": "gateway.internal"}, "GATEWAY_PUBLIC_URL must be an http"),
        ({"GATEWAY_SANDBOX": "maybe"}, "GATEWAY_SANDBOX must be a boolean"),
        ({"GATEWAY_JWT_PUBLIC_KEY": "/no/such/file.pem"}, "cannot read"),
        ({"GATEWAY_JWT_AUDIENCE": ""}, "GATEWAY_JWT_AUDIENCE is empty"),
        ({"GATEWAY_PORT": "0"}, "GATEWAY_PORT must be between 1 and 65535"),
        ({"GATEWAY_PORT": "70000"}, "GATEWAY_PORT must be between 1 and 65535"),
        ({"GATEWAY_ALLOWED_REGIONS": "RW,XX"}, "unknown region"),
        ({"GATEWAY_DEFAULT_REGION": "Rwanda"}, "unknown region"),
        ({"GATEWAY_PROVIDER_TIMEOUT": "-1"}, "GATEWAY_PROVIDER_TIMEOUT must be positive"),
        ({"GATEWAY_SANDBOX_DLR_DELAY": "-1"}, "must not be negative"),
        ({"GATEWAY_LOG_LEVEL": "chatty"}, "GATEWAY_LOG_LEVEL must be one of"),
        ({"GATEWAY_JWT_ISSUER": " "}, "GATEWAY_JWT_ISSUER is empty"),
        ({"GATEWAY_CALLBACK_ALLOWED_NETWORKS": "10.0.0.0/8,intranet"}, "'intranet' is not a"),
        ({"GATEWAY_LEASE_SECONDS": "120"}, "GATEWAY_LEASE_SECONDS must be between"),
        ({"GATEWAY_DATABASE_BUSY_TIMEOUT": "0"}, "BUSY_TIMEOUT must be positive"),
        (
            {
                "GATEWAY_JWT_ALGORITHMS": "RS256",
                "GATEWAY_JWT_SECRET": "",
                "GATEWAY_JWT_PUBLIC_KEY": BAD_PEM,
            },
            "not a PEM public key",
        ),
    ],
)
def test_unusable_settings(change: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        Settings.from_env({**BASE, **change})
    assert "\n" not in str(info.value)


def test_sandbox_needs_no_provider_credentials() -> None:
    s = Settings.from_env({"GATEWAY_JWT_SECRET": "s" * 32}, sandbox=True)
    assert s.sandbox and s.provider_password and s.provider_api_key


def test_the_config_file_is_strict_and_takes_every_setting(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('log_level = "WARNING"\nlease_seconds = 10\nport = 9001\n')
    s = Settings.from_env(BASE, str(config))
    assert (s.log_level, s.lease_seconds, s.port) == ("WARNING", 10.0, 9001)
    config.write_text('port = 9001\nprovider_pasword = "typo"\n')
    with pytest.raises(ConfigError, match=r"unknown setting.*provider_pasword") as info:
        Settings.from_env(BASE, str(config))
    assert "\n" not in str(info.value)
