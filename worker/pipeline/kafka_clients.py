"""Every Kafka client of the worker and of its dead-letter tools, built in one place: the
brokers, the client id and the security settings (SASL, TLS) are set here, once."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from worker.config import Settings

Headers = list[tuple[str, bytes]]  # a record's headers, as aiokafka takes and gives them


def _common(settings: Settings, client_suffix: str = "") -> dict[str, Any]:
    """What every client shares: where the brokers are, who it is, how it authenticates."""
    return {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id + client_suffix,
        **settings.kafka_security_kwargs(),
    }


def build_consumer(settings: Settings) -> AIOKafkaConsumer:
    """The worker's consumer: in its group, committing by hand (worker/pipeline/checkpoint.py)."""
    return AIOKafkaConsumer(
        **_common(settings),
        group_id=settings.group_id,
        enable_auto_commit=False,
        auto_offset_reset=settings.auto_offset_reset,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=max(1000, settings.session_timeout_ms // 10),
        max_poll_records=settings.max_poll_records,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
    )


def build_producer(settings: Settings) -> AIOKafkaProducer:
    """The worker's producer (outputs, dead letters, shadow outputs): acknowledged by all
    in-sync replicas."""
    return AIOKafkaProducer(
        **_common(settings),
        acks="all",
        enable_idempotence=settings.producer_idempotence,
        linger_ms=settings.producer_linger_ms,
        max_batch_size=settings.producer_max_batch_bytes,
        compression_type=None
        if settings.producer_compression == "none"
        else settings.producer_compression,
    )


def build_dlq_consumer(settings: Settings, group_id: str | None) -> AIOKafkaConsumer:
    """`dlq inspect` (no group) and `dlq redrive` (its own group): from the earliest record."""
    return AIOKafkaConsumer(
        **_common(settings, "-dlq"),
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )


def build_dlq_producer(settings: Settings) -> AIOKafkaProducer:
    """`dlq redrive --execute`: re-produces dead letters, acknowledged by all in-sync replicas."""
    return AIOKafkaProducer(**_common(settings, "-dlq"), acks="all")


def build_feedback_consumer(settings: Settings, fetch_max_bytes: int) -> AIOKafkaConsumer:
    """Live quality (worker/quality/consumer.py): the feedback topic in a group of its own,
    `<group_id>-feedback`, committing automatically, from the latest offset the first time."""
    return AIOKafkaConsumer(
        **_common(settings, "-feedback"),
        group_id=f"{settings.group_id}-feedback",
        enable_auto_commit=True,
        auto_offset_reset="latest",
        fetch_max_bytes=fetch_max_bytes,
        max_partition_fetch_bytes=min(fetch_max_bytes, 1024 * 1024),
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=max(1000, settings.session_timeout_ms // 10),
    )
