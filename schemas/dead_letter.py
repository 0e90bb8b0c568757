"""Dead letters: the original record untouched, the reason and origin in headers.

Modelled on Kafka Connect's dead letter queue: the key and value bytes are copied as they were
consumed, and the headers below say why and where from.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class ErrorKind(StrEnum):
    """Stable codes for why a record was dead-lettered (header `error.kind`)."""

    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    INVALID_FIELD = "invalid_field"
    TEXT_TOO_LARGE = "text_too_large"
    METADATA_TOO_LARGE = "metadata_too_large"  # its metadata is over MODERATION_MAX_METADATA_BYTES
    INFERENCE_FAILED = "inference_failed"
    OUTPUT_TOO_LARGE = "output_too_large"  # valid, but its output is over the producer's limit
    UNSUPPORTED_LANGUAGE = "unsupported_language"  # its tenant's policy refuses its language


class DeadLetterHeaders(BaseModel):
    """The Kafka headers of a dead letter (all values are UTF-8 strings on the wire)."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    error_kind: Annotated[ErrorKind, Field(alias="error.kind")]
    error_detail: Annotated[str, Field(alias="error.detail", description="A human sentence.")]
    source_topic: Annotated[str, Field(alias="source.topic")]
    source_partition: Annotated[int, Field(alias="source.partition", ge=0)]
    source_offset: Annotated[int, Field(alias="source.offset", ge=0)]

    def to_kafka(self) -> list[tuple[str, bytes]]:
        """Headers as aiokafka expects them: (name, bytes) pairs."""
        return [
            (name, str(value).encode())
            for name, value in self.model_dump(by_alias=True, mode="json").items()
        ]

    @classmethod
    def from_kafka(cls, headers: list[tuple[str, bytes]] | tuple) -> DeadLetterHeaders:
        return cls.model_validate({name: value.decode() for name, value in headers})


class RedriveHeaders(BaseModel):
    """Headers a re-driven record carries (`moderation-worker dlq redrive`), beside the original
    record's own: which dead letter it came from, why it was dead-lettered, where it was first
    consumed, and how many times it has been re-driven."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    count: Annotated[int, Field(alias="redrive.count", ge=1, description="1 on the first.")]
    at: Annotated[int, Field(alias="redrive.at", ge=0, description="Epoch milliseconds.")]
    error_kind: Annotated[ErrorKind, Field(alias="redrive.error.kind")]
    dlq_topic: Annotated[str, Field(alias="redrive.dlq.topic")]
    dlq_partition: Annotated[int, Field(alias="redrive.dlq.partition", ge=0)]
    dlq_offset: Annotated[int, Field(alias="redrive.dlq.offset", ge=0)]
    source_topic: Annotated[str, Field(alias="redrive.source.topic")]
    source_partition: Annotated[int, Field(alias="redrive.source.partition", ge=0)]
    source_offset: Annotated[int, Field(alias="redrive.source.offset", ge=0)]

    def to_kafka(self) -> list[tuple[str, bytes]]:
        """Headers as aiokafka expects them: (name, bytes) pairs."""
        return [
            (name, str(value).encode())
            for name, value in self.model_dump(by_alias=True, mode="json").items()
        ]

    @classmethod
    def names(cls) -> set[str]:
        return {field.alias for field in cls.model_fields.values() if field.alias}
