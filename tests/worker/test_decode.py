"""Decoding a record value into a `Comment`, or the stable reason it cannot be scored."""

from __future__ import annotations

import orjson
import pytest

from schemas import ErrorKind
from worker.pipeline.decode import InvalidMessage, decode_comment


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
