"""Turn a consumed record's value into a `Comment`, or say precisely why not."""

from __future__ import annotations

import orjson
from pydantic import ValidationError

from schemas import Comment, ErrorKind


class InvalidMessage(ValueError):
    """A record that cannot be scored; it goes to the dead-letter topic with this reason."""

    def __init__(self, kind: ErrorKind, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "message"
    more = f" (and {error.error_count() - 1} more problems)" if error.error_count() > 1 else ""
    return f"field '{where}': {first['msg']}{more}"


DEFAULT_MAX_METADATA_BYTES = 65_536  # MODERATION_MAX_METADATA_BYTES's default


def decode_comment(
    value: bytes | None, max_text_bytes: int, max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES
) -> Comment:
    """Parse and validate one record value. Raises `InvalidMessage`."""
    if value is None:
        raise InvalidMessage(ErrorKind.NOT_AN_OBJECT, "record has no value (tombstone)")
    try:
        payload = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as utf_exc:
            raise InvalidMessage(
                ErrorKind.INVALID_UTF8, f"value is not valid UTF-8: {utf_exc.reason}"
            ) from None
        raise InvalidMessage(ErrorKind.INVALID_JSON, f"value is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidMessage(
            ErrorKind.NOT_AN_OBJECT, f"value is a JSON {type(payload).__name__}, not an object"
        )
    try:
        comment = Comment.model_validate(payload)
    except ValidationError as exc:
        raise InvalidMessage(ErrorKind.INVALID_FIELD, _describe(exc)) from None
    size = len(comment.text.encode("utf-8", errors="surrogatepass"))
    if size > max_text_bytes:
        raise InvalidMessage(
            ErrorKind.TEXT_TOO_LARGE, f"text is {size} bytes, over the limit of {max_text_bytes}"
        )
    if comment.metadata is not None:  # it is copied into the output: it must serialize again
        try:
            size = len(orjson.dumps(comment.metadata))
        except orjson.JSONEncodeError as exc:  # nested deeper than orjson writes (254 levels)
            raise InvalidMessage(
                ErrorKind.INVALID_FIELD, f"field 'metadata': cannot be passed through: {exc}"
            ) from None
        if size > max_metadata_bytes:
            raise InvalidMessage(
                ErrorKind.METADATA_TOO_LARGE,
                f"metadata is {size} bytes as JSON, over the limit of {max_metadata_bytes}",
            )
    return comment
