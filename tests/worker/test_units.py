"""Unit tests of the worker's pure parts: decoding, batching policy, offsets, settings."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest
from aiokafka import TopicPartition

from schemas import ErrorKind
from worker.batching import BatchPolicy, MicroBatcher
from worker.config import SettingsError, load_settings
from worker.decode import InvalidMessage, decode_comment
from worker.offsets import OffsetTracker

# --- decoding ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (None, ErrorKind.NOT_AN_OBJECT),
        (b"\xff\xfe\x00", ErrorKind.INVALID_UTF8),
        (b"{", ErrorKind.INVALID_JSON),
        (b'{"id": "1", "text": "a", "x": NaN}', ErrorKind.INVALID_JSON),
        (b"[]", ErrorKind.NOT_AN_OBJECT),
        (b"null", ErrorKind.NOT_AN_OBJECT),
        (b"3", ErrorKind.NOT_AN_OBJECT),
        (b'{"id": "1"}', ErrorKind.INVALID_FIELD),
        (b'{"id": null, "text": "a"}', ErrorKind.INVALID_FIELD),
        (orjson.dumps({"id": "1", "text": "\u00e9" * 6}), ErrorKind.TEXT_TOO_LARGE),  # 12 bytes
    ],
)
def test_decode_rejects_with_stable_reason(value: bytes | None, kind: ErrorKind) -> None:
    with pytest.raises(InvalidMessage) as caught:
        decode_comment(value, max_text_bytes=10)
    assert caught.value.kind == kind
    assert caught.value.detail


def test_decode_accepts_a_valid_comment_at_the_byte_limit() -> None:
    comment = decode_comment(orjson.dumps({"id": "1", "text": "\u00e9" * 5}), max_text_bytes=10)
    assert comment.text == "\u00e9" * 5


def test_invalid_field_detail_names_the_field() -> None:
    with pytest.raises(InvalidMessage) as caught:
        decode_comment(b'{"id": "1", "text": 5}', max_text_bytes=100)
    assert "text" in caught.value.detail


# --- batching policy ---------------------------------------------------------------------


async def test_batch_closes_at_max_size_without_waiting() -> None:
    batcher: MicroBatcher[int] = MicroBatcher(BatchPolicy(max_batch_size=4, max_wait_s=10))
    for i in range(10):
        batcher.put(i)
    started = time.monotonic()
    first = await batcher.next_batch()
    second = await batcher.next_batch()
    assert [i for i, _ in first] == [0, 1, 2, 3]
    assert [i for i, _ in second] == [4, 5, 6, 7]
    assert time.monotonic() - started < 1.0


async def test_partial_batch_closes_at_the_deadline() -> None:
    batcher: MicroBatcher[int] = MicroBatcher(BatchPolicy(max_batch_size=100, max_wait_s=0.2))
    batcher.put(1)
    started = time.monotonic()
    batch = await batcher.next_batch()
    elapsed = time.monotonic() - started
    assert [i for i, _ in batch] == [1]
    assert 0.15 <= elapsed < 2.0


async def test_late_items_join_the_open_batch_until_the_deadline() -> None:
    batcher: MicroBatcher[int] = MicroBatcher(BatchPolicy(max_batch_size=100, max_wait_s=0.5))
    batcher.put(1)

    async def feed() -> None:
        await asyncio.sleep(0.05)
        batcher.put(2)

    feeder = asyncio.create_task(feed())
    batch = await batcher.next_batch()
    await feeder
    assert [i for i, _ in batch] == [1, 2]


async def test_items_that_already_waited_go_out_at_once() -> None:
    batcher: MicroBatcher[int] = MicroBatcher(BatchPolicy(max_batch_size=100, max_wait_s=0.3))
    batcher.put(1)
    await asyncio.sleep(0.35)  # e.g. the previous batch was being scored meanwhile
    started = time.monotonic()
    batch = await batcher.next_batch()
    assert [i for i, _ in batch] == [1]
    assert time.monotonic() - started < 0.1


async def test_closed_batcher_returns_the_rest_then_empty() -> None:
    batcher: MicroBatcher[int] = MicroBatcher(BatchPolicy(max_batch_size=2, max_wait_s=10))
    for i in range(3):
        batcher.put(i)
    batcher.close()
    assert [i for i, _ in await batcher.next_batch()] == [0, 1]
    assert [i for i, _ in await batcher.next_batch()] == [2]
    assert await batcher.next_batch() == []
    assert await batcher.next_batch() == []
    with pytest.raises(RuntimeError):
        batcher.put(9)


def test_batch_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        BatchPolicy(max_batch_size=0, max_wait_s=1)
    with pytest.raises(ValueError):
        BatchPolicy(max_batch_size=1, max_wait_s=-1)


# --- offsets -----------------------------------------------------------------------------

TP = TopicPartition("t", 0)


def test_commit_point_never_passes_an_unacknowledged_offset() -> None:
    tracker = OffsetTracker()
    handles = {offset: tracker.track(TP, offset) for offset in (10, 11, 12, 13)}
    assert tracker.committable() == {TP: 10}  # nothing done: the first offset itself
    tracker.ack(handles[12], 12)
    tracker.ack(handles[11], 11)
    assert tracker.committable() == {TP: 10}  # 10 still in flight
    tracker.ack(handles[10], 10)
    assert tracker.committable() == {TP: 13}
    tracker.mark_committed({TP: 13})
    assert tracker.committable() == {}
    assert tracker.in_flight() == 1
    tracker.ack(handles[13], 13)
    assert tracker.committable() == {TP: 14}
    assert tracker.in_flight() == 0


def test_out_of_order_tracking_is_refused() -> None:
    tracker = OffsetTracker()
    tracker.track(TP, 5)
    with pytest.raises(ValueError):
        tracker.track(TP, 5)


async def test_forgotten_partition_ignores_late_acks_and_drain_waits() -> None:
    tracker = OffsetTracker()
    other = TopicPartition("t", 1)
    a = tracker.track(TP, 0)
    b = tracker.track(other, 0)
    assert not await tracker.wait_drained({TP}, timeout=0.05)
    asyncio.get_running_loop().call_later(0.05, tracker.ack, a, 0)
    assert await tracker.wait_drained({TP}, timeout=2)
    assert tracker.in_flight() == 1
    tracker.forget({other})
    tracker.ack(b, 0)  # late ack after revocation: ignored
    assert tracker.committable() == {TP: 1}


# --- settings ----------------------------------------------------------------------------


def test_settings_from_environment_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker-1:9092,broker-2:9092")
    monkeypatch.setenv("MODERATION_MAX_BATCH_SIZE", "32")
    settings = load_settings(max_wait_ms=3)
    assert settings.bootstrap_servers == "broker-1:9092,broker-2:9092"
    assert settings.max_batch_size == 32 and settings.max_wait_ms == 3
    assert load_settings(bootstrap_servers="other:1").bootstrap_servers == "other:1"


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
