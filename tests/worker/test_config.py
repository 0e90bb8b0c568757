"""Settings from the environment and flags; bad values fail with one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.config import SettingsError, deprecated_variables, load_settings, unknown_variables


def test_settings_from_environment_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker-1:9092,broker-2:9092")
    monkeypatch.setenv("MODERATION_MAX_BATCH_SIZE", "32")
    settings = load_settings(max_wait_ms=3)
    assert settings.bootstrap_servers == "broker-1:9092,broker-2:9092"
    assert settings.max_batch_size == 32 and settings.max_wait_ms == 3
    assert load_settings(bootstrap_servers="other:1").bootstrap_servers == "other:1"


def test_inference_threads_under_its_new_and_its_deprecated_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings().inference_threads == "auto"
    monkeypatch.setenv("MODERATION_TORCH_THREADS", "3")
    assert load_settings().inference_threads == 3  # the old name still works
    monkeypatch.setenv("MODERATION_INFERENCE_THREADS", "2")
    assert load_settings().inference_threads == 2  # where both are set, the new name wins
    assert load_settings(inference_threads=1).inference_threads == 1  # the flag/override
    monkeypatch.delenv("MODERATION_INFERENCE_THREADS")
    monkeypatch.setenv("MODERATION_TORCH_THREADS", "many")
    with pytest.raises(SettingsError, match=r"invalid inference_threads \(MODERATION_INFER"):
        load_settings()


def test_deprecated_and_removed_variables_are_named() -> None:
    environ = {
        "MODERATION_TORCH_THREADS": "2",
        "MODERATION_INFERENCE_THREADS": "2",
        "MODERATION_GIL_SWITCH_INTERVAL_MS": "1",
        "MODERATION_SHADOW_FLIP_RATE_ALERT": "0.1",
    }
    [deprecated] = deprecated_variables(environ)
    assert deprecated.startswith("MODERATION_TORCH_THREADS is deprecated: set MODERATION_INFE")
    assert deprecated_variables({"MODERATION_INFERENCE_THREADS": "2"}) == []
    ignored = unknown_variables(environ)
    assert [w.split()[0] for w in ignored] == [
        "MODERATION_GIL_SWITCH_INTERVAL_MS", "MODERATION_SHADOW_FLIP_RATE_ALERT",
    ]  # fmt: skip
    assert all("is ignored: removed in issue 21" in w for w in ignored)


@pytest.mark.parametrize(
    ("overrides", "env", "message"),
    [
        ({"max_batch_size": 0}, {}, "invalid max_batch_size (MODERATION_MAX_BATCH_SIZE)"),
        ({}, {"MODERATION_MAX_WAIT_MS": "soon"}, "invalid max_wait_ms (MODERATION_MAX_WAIT_MS)"),
        ({"device": "tpu"}, {}, "invalid device (MODERATION_DEVICE)"),
        ({}, {"MODERATION_AUTO_OFFSET_RESET": "middle"}, "MODERATION_AUTO_OFFSET_RESET"),
        ({"security_protocol": "SASL_SSL"}, {}, "needs sasl_mechanism"),
        ({"ssl_cafile": "/nonexistent/ca.pem", "security_protocol": "SSL"}, {}, "does not exist"),
        ({"max_batch_size": 64, "max_in_flight": 8}, {}, "max_in_flight must be at least"),
    ],
)
def test_bad_settings_fail_with_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, overrides: dict, env: dict, message: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError) as caught:
        load_settings(**overrides)
    text = str(caught.value)
    assert message in text
    assert "\n" not in text


def test_sasl_settings_reach_aiokafka_and_secrets_stay_hidden(tmp_path: Path) -> None:
    password_file = tmp_path / "password"
    password_file.write_text("s3cret\n")
    settings = load_settings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="worker",
        sasl_password_file=str(password_file),
    )
    kwargs = settings.kafka_security_kwargs()
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["sasl_plain_username"] == "worker"
    assert kwargs["sasl_plain_password"] == "s3cret"
    assert kwargs["ssl_context"] is not None
    env_secret = load_settings(
        security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
        sasl_username="u", sasl_password="hunter2",
    )  # fmt: skip
    assert "hunter2" not in repr(env_secret) and "hunter2" not in str(env_secret.redacted())


def test_the_http_api_binds_loopback_unless_a_key_or_a_host_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 22: both ports bound every interface, the API with no key. The API without a key
    now answers only inside the pod unless its host is set; the metrics and health port still
    binds every interface (the kubelet's probes and Prometheus reach the pod's address)."""
    for name in ("MODERATION_HTTP_API_HOST", "MODERATION_HTTP_API_KEY", "MODERATION_METRICS_HOST"):
        monkeypatch.delenv(name, raising=False)
    assert load_settings(http_api_port=8080).http_api_bind_host == "127.0.0.1"
    assert load_settings(http_api_port=8080, http_api_key="k").http_api_bind_host == "0.0.0.0"
    assert load_settings(http_api_port=8080, http_api_host="0.0.0.0").http_api_bind_host == (
        "0.0.0.0"
    )
    assert load_settings(http_api_key="k", http_api_host="::1").http_api_bind_host == "::1"
    assert load_settings().metrics_host == "0.0.0.0"
    with pytest.raises(SettingsError, match="http_api_max_connections"):
        load_settings(http_api_max_connections=0)
    with pytest.raises(SettingsError, match="http_api_body_timeout_s"):
        load_settings(http_api_body_timeout_s=0)
