# ruff: noqa: E501  (one case per line reads best as a table)
"""The hostile-input catalog: records upstream should never send, and what the worker does.

Each case is a record (key, value) and its expected fate: `SCORED` (an output with that id) or
the dead-letter reason (`error.kind`). The decisions behind the less obvious ones:

- empty and whitespace-only text is a valid comment and is scored (the model sees only [CLS] and
  [SEP]); dropping it would leave its id without an answer, and upstream may well send it.
- duplicate keys: the last occurrence wins (orjson, like JavaScript's JSON.parse).
- NaN/Infinity, numbers beyond a double, lone surrogates, a BOM: not JSON (`invalid_json`).
- metadata nested deeper than the worker can write back out (254 levels): `invalid_field`;
  deeper than orjson parses (1024): `invalid_json`.
- a text over `MODERATION_MAX_TEXT_BYTES`: `text_too_large`; when the record itself is also over
  the producer's `max_request_size` (e.g. 10 MB), the dead letter carries the headers but not the
  original key and value (they stay readable at `source.topic/partition/offset`).
- metadata over `MODERATION_MAX_METADATA_BYTES` as JSON (64 KiB): `metadata_too_large` (it is
  copied into the output, and parsed it takes several times its size in memory).
- a valid comment whose output cannot be published (a 1 MB key is copied to the output):
  `output_too_large`.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

SCORED = "scored"
MAX_TEXT_BYTES = 65_536  # the worker's default MODERATION_MAX_TEXT_BYTES
MAX_METADATA_BYTES = 65_536  # the worker's default MODERATION_MAX_METADATA_BYTES
MiB = 1_048_576


@dataclass(frozen=True)
class Case:
    name: str
    value: bytes | None
    expected: str  # SCORED or an ErrorKind value
    key: bytes | None = None  # default: the case name
    id: str | None = None  # the output id when scored (default: the case name)

    @property
    def record_key(self) -> bytes | None:
        return self.key if self.key is not None else self.name.encode()

    @property
    def output_id(self) -> str:
        return self.id or self.name

    @property
    def size(self) -> int:
        return len(self.value or b"") + len(self.record_key or b"")


def obj(name: str, text: object = "a harmless comment", **extra: object) -> bytes:
    return orjson.dumps({"id": name, "text": text, **extra})


def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def catalog(include_huge: bool = True) -> list[Case]:
    """All cases; `include_huge=False` leaves out the ones over 1 MB (10 MB text, 1 MB key)."""
    cases = [
        # not text / not JSON
        Case("not-utf8", b"\xff\xfe\xfd garbage", "invalid_utf8"),
        Case("utf8-broken-in-string", b'{"id": "x", "text": "caf\xc3\x28"}', "invalid_utf8"),
        Case("utf8-bom", b'\xef\xbb\xbf{"id": "utf8-bom", "text": "hi"}', "invalid_json"),
        Case("not-json", b"hello, I am not JSON", "invalid_json"),
        Case("empty-value", b"", "invalid_json"),
        Case("trailing-garbage", obj("trailing-garbage") + b" extra", "invalid_json"),
        Case("tombstone", None, "not_an_object"),
        Case("json-array", b'[{"id": "a", "text": "b"}]', "not_an_object"),
        Case("json-number", b"42", "not_an_object"),
        Case("json-null", b"null", "not_an_object"),
        Case("json-string", b'"just a string"', "not_an_object"),
        Case("json-bool", b"true", "not_an_object"),
        # wrong fields
        Case("missing-id", b'{"text": "hello"}', "invalid_field"),
        Case("null-id", b'{"id": null, "text": "hello"}', "invalid_field"),
        Case("missing-text", b'{"id": "missing-text"}', "invalid_field"),
        Case("null-text", b'{"id": "null-text", "text": null}', "invalid_field"),
        Case("id-number", b'{"id": 12345, "text": "hello"}', "invalid_field"),
        Case("id-empty", b'{"id": "", "text": "hello"}', "invalid_field"),
        Case("text-number", obj("text-number", 5), "invalid_field"),
        Case("text-list", obj("text-list", ["a", "b"]), "invalid_field"),
        Case("text-object", obj("text-object", {"a": "b"}), "invalid_field"),
        Case("id-too-long", obj("i" * 257), "invalid_field"),
        Case("id-max-length", obj("L" * 256), SCORED, id="L" * 256),
        Case("metadata-array", obj("metadata-array", metadata=[1, 2]), "invalid_field"),
        Case("created-at-garbage", obj("created-at-garbage", created_at="yesterday"), "invalid_field"),
        Case("created-at-bool", obj("created-at-bool", created_at=True), "invalid_field"),
        # numbers and escapes JSON does not have
        Case("nan", b'{"id": "nan", "text": "t", "metadata": {"v": NaN}}', "invalid_json"),
        Case("infinity", b'{"id": "infinity", "text": "t", "score": Infinity}', "invalid_json"),
        Case("number-overflow", b'{"id": "number-overflow", "text": "t", "n": 1e400}', "invalid_json"),
        Case("lone-surrogate", b'{"id": "lone-surrogate", "text": "\\ud800"}', "invalid_json"),
        # sizes
        Case("text-over-limit", obj("text-over-limit", "x" * (MAX_TEXT_BYTES + 1)), "text_too_large"),
        Case("text-at-limit", obj("text-at-limit", "y" * MAX_TEXT_BYTES), SCORED),
        Case("text-many-tokens", obj("text-many-tokens", "word " * 10_000), SCORED),
        Case("metadata-huge", obj("metadata-huge", metadata={f"k{i}": "v" * 100 for i in range(7000)}), "metadata_too_large"),
        Case("metadata-under-limit", obj("metadata-under-limit", metadata={f"k{i:03d}": "v" * 100 for i in range(500)}), SCORED),
        Case("metadata-over-limit", obj("metadata-over-limit", metadata={"k": "m" * MAX_METADATA_BYTES}), "metadata_too_large"),
        Case("metadata-deep-254", obj("metadata-deep-254", metadata=orjson.loads(nested(253))), SCORED),
        Case("metadata-deep-300", b'{"id": "metadata-deep-300", "text": "t", "metadata": ' + nested(300) + b"}", "invalid_field"),
        Case("metadata-deep-5000", b'{"id": "metadata-deep-5000", "text": "t", "metadata": ' + nested(5000) + b"}", "invalid_json"),
        # odd but valid text
        Case("text-empty", obj("text-empty", ""), SCORED),
        Case("text-whitespace", obj("text-whitespace", " \t\n\r  \u00a0\u2003"), SCORED),
        Case("text-control-chars", obj("text-control-chars", "a\u0000b\u0007c\u001b[31md\u007f"), SCORED),
        Case("text-emoji", obj("text-emoji", "\U0001f600\U0001f4a9 \U0001f469\u200d\U0001f469\u200d\U0001f467 \U0001f1fa\U0001f1f8"), SCORED),
        Case("text-rtl", obj("text-rtl", "\u202eevil\u202c \u0645\u0631\u062d\u0628\u0627 \u05e9\u05dc\u05d5\u05dd"), SCORED),
        Case("text-combining", obj("text-combining", "Z\u0351\u0300\u0301\u0302a\u0303\u0304\u0305\u0306l\u0307\u0308g\u0309o" * 50), SCORED),
        Case("text-noncharacters", obj("text-noncharacters", "\ufffe\uffff\U0010ffff\ufeff"), SCORED),
        Case("duplicate-keys", b'{"id": "ignored", "text": "a", "id": "duplicate-keys", "text": "b"}', SCORED),
        Case("unknown-fields", obj("unknown-fields", extra={"x": 1}, lang="en"), SCORED),
        Case("created-at-epoch", obj("created-at-epoch", created_at=1_700_000_000_000), SCORED),
    ]  # fmt: skip
    if include_huge:
        cases += [
            Case("text-10mb", obj("text-10mb", "z" * (10 * MiB)), "text_too_large"),
            Case("key-1mb", obj("key-1mb"), "output_too_large", key=b"k" * MiB),
        ]
    return cases
