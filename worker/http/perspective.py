"""The Perspective API's `comments:analyze` (v1alpha1), as data: request checks, the response,
errors in Google's shape, sentence spans and the discovery document. No I/O: the HTTP server
(`worker/http/api.py`) calls these around the shared batch queue.

Attribute names map to model labels through the artifact contract (`api_attributes`,
`schemas/artifact.py`). Span offsets are UTF-16 code units, end exclusive, as Perspective's.

Languages (`judge_language`): the request's `languages`, when given, say which language the text
is (as Perspective); else the detection (`worker/pipeline/language.py`) when it is reliable, else
the model's main served language. A language the model does not serve (the artifact's
`served_languages`) follows the tenant's mode (`communityId` is the tenant; `UnsupportedLanguage`
of the policy): `refuse` answers 400 LANGUAGE_NOT_SUPPORTED_BY_ATTRIBUTE, `score` and `hold`
answer the scores with `unsupportedLanguage` added to the response.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from schemas import ArtifactContract, UnsupportedLanguage
from worker.pipeline.language import Detection, is_served, served_language

API_VERSION = "v1alpha1"
ANALYZE_PATH = f"/{API_VERSION}/comments:analyze"
# The same methods under a tenant's own endpoint, for clients that send no `communityId` (Coral's
# analyze does not): its operator gives it `http://HOST:PORT/tenants/NAME/v1alpha1`.
TENANT_PREFIX = "/tenants/{tenant}"
MAX_TENANT_CHARS = 256
PROBABILITY = "PROBABILITY"
MAX_SPANS = 64  # more sentences than this: adjacent sentences share a span
ERROR_TYPE = "type.googleapis.com/google.commentanalyzer.v1alpha1.Error"


class ApiError(Exception):
    """An answer in Google's error shape: `{"error": {"code", "message", "status", ...}}`.

    `error_type` is Perspective's `ErrorType` (COMMENT_EMPTY, COMMENT_TOO_LONG, ...), sent in
    `details` as Perspective does. Messages never quote the comment's text."""

    def __init__(
        self,
        code: int,
        status: str,
        message: str,
        error_type: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code, self.status, self.message = code, status, message
        self.error_type, self.extra = error_type, extra or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message, "status": self.status}
        if self.error_type is not None:
            error["details"] = [{"@type": ERROR_TYPE, "errorType": self.error_type} | self.extra]
        return {"error": error}


def invalid(message: str, error_type: str = "INVALID_REQUEST", **extra: Any) -> ApiError:
    return ApiError(400, "INVALID_ARGUMENT", message, error_type, extra)


# --- the request ---------------------------------------------------------------------------


class _Message(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


M = TypeVar("M", bound=BaseModel)  # a request message (`validated`)


class TextEntry(_Message):
    text: str | None = None
    type: str | None = None


class AttributeParameters(_Message):
    score_type: str | None = None
    score_threshold: float | None = Field(default=None, ge=0.0, le=1.0)


class AnalyzeCommentRequest(_Message):
    """The fields Perspective accepts; unknown ones are ignored. `context` and `sessionId` are
    accepted and have no effect; `communityId` is the tenant (its policy's language mode)."""

    comment: TextEntry | None = None
    requested_attributes: dict[str, AttributeParameters | None] | None = None
    languages: list[str] | None = None
    do_not_store: bool | None = None
    span_annotations: bool | None = None
    client_token: str | None = None
    session_id: str | None = None
    community_id: str | None = None
    context: dict[str, Any] | None = None
    drop_unsupported_attributes: bool | None = None


@dataclass(frozen=True)
class Analysis:
    """A request that passed every check: what to score and how to answer."""

    text: str
    attributes: dict[str, tuple[str, float | None]]  # attribute -> (label, scoreThreshold)
    languages: list[str]  # as declared (`languages`; empty: not declared)
    spans: bool
    client_token: str | None
    tenant: str | None = None  # `communityId`
    dropped: tuple[str, ...] = ()  # attributes not served, left out (`dropUnsupportedAttributes`)


def validated(model: type[M], body: Any) -> M:
    """A decoded JSON body as `model`; raises `ApiError` (400) naming the field, never quoting
    a value (the text may be the value)."""
    if not isinstance(body, dict):
        raise invalid("Invalid JSON payload received. Expected an object.")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        error = exc.errors()[0]  # its "input" may be the text: never put it in the message
        where = ".".join(str(part) for part in error["loc"])
        raise invalid(f"Invalid value at '{where}': {error['msg']}") from None


def comment_text(comment: TextEntry | None, max_text_bytes: int) -> str:
    """The comment's plain text, or `ApiError` (400): empty, not plain text, or too long."""
    if comment is None or not comment.text:
        raise invalid("Comment must be non-empty.", "COMMENT_EMPTY")
    if comment.type not in (None, "PLAIN_TEXT", "TEXT_TYPE_UNSPECIFIED"):
        if comment.type == "HTML":
            raise invalid("Currently, only 'PLAIN_TEXT' comments are supported")
        raise invalid("Unknown text type")
    size = len(comment.text.encode("utf-8", "surrogatepass"))
    if size > max_text_bytes:
        raise invalid(
            f"Comment text too long ({size} bytes; at most {max_text_bytes}).", "COMMENT_TOO_LONG"
        )
    return comment.text


def parse_request(body: Any, contract: ArtifactContract, max_text_bytes: int) -> Analysis:
    """Check a decoded JSON body; raises `ApiError` (400) naming what is wrong."""
    request = validated(AnalyzeCommentRequest, body)
    text = comment_text(request.comment, max_text_bytes)
    if not request.requested_attributes:
        raise invalid("Missing requested_attributes", "NO_REQUESTED_ATTRIBUTES")
    attributes: dict[str, tuple[str, float | None]] = {}
    dropped: list[str] = []
    for name, parameters in request.requested_attributes.items():
        label = contract.api_attributes.get(name)
        if label is None:
            if request.drop_unsupported_attributes:  # as Perspective: left out, no error
                dropped.append(name)
                continue
            served = ", ".join(sorted(contract.api_attributes)) or "none"
            raise invalid(f"Unknown requested attribute: {name} (served: {served})")
        parameters = parameters or AttributeParameters()
        if parameters.score_type not in (None, PROBABILITY):
            raise invalid(
                f"Requested score type {parameters.score_type} is not supported by attribute {name}"
            )
        attributes[name] = (label, parameters.score_threshold)
    return Analysis(
        text=text,
        attributes=attributes,
        languages=[lang for lang in request.languages or [] if lang.strip()],
        spans=bool(request.span_annotations),
        client_token=request.client_token,
        tenant=request.community_id or None,
        dropped=tuple(dropped),
    )


@dataclass(frozen=True)
class LanguageVerdict:
    """Which language a request's text is taken to be, and what its tenant's mode makes of it.

    `languages` and `detected` are the response's `languages` and `detectedLanguages`;
    `unsupported` the languages among `languages` the model does not serve (empty: served);
    `mode` the tenant's mode for them (None when nothing is unsupported)."""

    languages: list[str]
    detected: list[str]
    unsupported: list[str]
    mode: UnsupportedLanguage | None
    served: tuple[str, ...]

    @property
    def refused(self) -> bool:
        return self.mode is UnsupportedLanguage.REFUSE


def judge_language(
    declared: list[str],
    detection: Detection | None,
    served: tuple[str, ...],
    mode: UnsupportedLanguage,
) -> LanguageVerdict:
    """Declared languages win over the detection (as Perspective); undeclared, the detection
    when reliable, else the main served language (a short or messy comment is not refused on an
    unsure guess). `detection` None (detection off): `detectedLanguages` is the main served
    language, and only declared languages can be unsupported."""
    detected = [detection.code] if detection is not None else [served[0]]
    if declared:
        languages = declared
    else:
        languages = [served_language(detection, served) if detection is not None else served[0]]
    unsupported = [lang for lang in languages if not is_served(lang, served)]
    return LanguageVerdict(languages, detected, unsupported, mode if unsupported else None, served)


def language_refusal(verdict: LanguageVerdict, attribute: str) -> ApiError:
    """Perspective's answer to a language its attribute does not support: 400 with
    `languageNotSupportedByAttributeError {detectedLanguages, attribute}` in `details`."""
    return invalid(
        f"Attribute {attribute} does not support request languages: "
        f"{', '.join(verdict.unsupported)}",
        "LANGUAGE_NOT_SUPPORTED_BY_ATTRIBUTE",
        languageNotSupportedByAttributeError={
            "detectedLanguages": verdict.detected,
            "attribute": attribute,
        },
    )


# --- spans -----------------------------------------------------------------------------------

# A sentence ends at a run of . ! ? (and closing quotes or brackets) followed by whitespace or
# the end, or at a run of line breaks. The pattern has no lookahead and only greedy runs of
# disjoint classes, so each match is found without backtracking and the scan resumes where it
# ended: linear in the text (a lookahead here made 20,000 dots take 12 s, issue 22). Whether the
# run is followed by whitespace is checked after the match.
_SENTENCE_END = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*|[\r\n]+")


def sentence_spans(text: str, max_spans: int = MAX_SPANS) -> list[tuple[int, int]]:
    """[begin, end) character offsets of the sentences of `text`, surrounding whitespace left
    out; more than `max_spans` sentences are grouped into `max_spans` runs of neighbours.
    Linear time in `len(text)`."""
    spans: list[tuple[int, int]] = []
    start = 0
    size = len(text)
    for match in _SENTENCE_END.finditer(text):
        end = match.end()
        if text[match.start()] not in "\r\n" and end < size and not text[end].isspace():
            continue  # "3.5", "e.g.x", "...x": punctuation inside a sentence
        _add_span(spans, text, start, end)
        start = end
    _add_span(spans, text, start, size)
    if len(spans) > max_spans:
        per = -(-len(spans) // max_spans)
        spans = [
            (spans[i][0], spans[min(i + per, len(spans)) - 1][1]) for i in range(0, len(spans), per)
        ]
    return spans


def _add_span(spans: list[tuple[int, int]], text: str, start: int, end: int) -> None:
    segment = text[start:end]
    stripped = segment.strip()
    if stripped:
        begin = start + len(segment) - len(segment.lstrip())
        spans.append((begin, begin + len(stripped)))


def utf16_offsets(text: str, offsets: list[int]) -> list[int]:
    """Character offsets of `text` as UTF-16 code unit offsets (what JavaScript and Java index
    strings by, and Perspective's spans count in). Linear in `len(text)`."""
    out, position, units = [], 0, 0
    for offset in sorted(set(offsets)):
        units += len(text[position:offset].encode("utf-16-le", "surrogatepass")) // 2
        position = offset
        out.append((offset, units))
    found = dict(out)
    return [found[offset] for offset in offsets]


@dataclass(frozen=True)
class Sentences:
    """What `spanAnnotations` scores: each sentence's text and its UTF-16 [begin, end). A text
    of one sentence (or none) has no sentence texts and one span, scored as the whole text."""

    texts: list[str]
    spans: list[tuple[int, int]]


def split_sentences(text: str, max_spans: int = MAX_SPANS) -> Sentences:
    """`sentence_spans` with the texts to score and UTF-16 offsets: the work `spanAnnotations`
    adds, linear in `len(text)`, done off the event loop (worker/http/api.py)."""
    spans = sentence_spans(text, max_spans)
    if len(spans) <= 1:
        begin, end = spans[0] if spans else (0, len(text))
        return Sentences([], [tuple(utf16_offsets(text, [begin, end]))])  # type: ignore[list-item]
    units = utf16_offsets(text, [offset for span in spans for offset in span])
    return Sentences(
        [text[b:e] for b, e in spans],
        [(units[2 * i], units[2 * i + 1]) for i in range(len(spans))],
    )


# --- the response ----------------------------------------------------------------------------


def build_response(
    analysis: Analysis,
    labels: tuple[str, ...],
    summary: Any,
    spans: list[tuple[int, int, Any]] | None,
    verdict: LanguageVerdict,
) -> dict[str, Any]:
    """`summary`: the text's row of probabilities (in `labels` order); `spans`: (begin, end,
    row) in UTF-16 units, or None when not asked for. `scoreThreshold` drops scores below it,
    and an attribute left with none, as Perspective does. A text in a language the model does
    not serve (scored under `score` or `hold`) gets `unsupportedLanguage`: `{mode, languages,
    servedLanguages}` (an addition to Perspective's response)."""
    column = {label: i for i, label in enumerate(labels)}
    scores: dict[str, Any] = {}
    for name, (label, threshold) in analysis.attributes.items():
        floor = threshold if threshold is not None else 0.0
        i = column[label]
        entry: dict[str, Any] = {}
        if spans is not None:
            kept = [
                {"begin": b, "end": e, "score": _score(row[i])}
                for b, e, row in spans
                if float(row[i]) >= floor
            ]
            if kept:
                entry["spanScores"] = kept
        if float(summary[i]) >= floor:
            entry["summaryScore"] = _score(summary[i])
        if entry:
            scores[name] = entry
    response: dict[str, Any] = {
        "attributeScores": scores,
        "languages": verdict.languages,
        "detectedLanguages": verdict.detected,
    }
    if verdict.mode is not None:
        response["unsupportedLanguage"] = {
            "mode": verdict.mode.value,
            "languages": verdict.unsupported,
            "servedLanguages": list(verdict.served),
        }
    if analysis.client_token is not None:
        response["clientToken"] = analysis.client_token
    return response


def _score(value: Any) -> dict[str, Any]:
    return {"value": float(value), "type": PROBABILITY}


# --- the discovery document ------------------------------------------------------------------


def discovery_document(root_url: str, attributes: list[str]) -> dict[str, Any]:
    """The REST discovery document of `commentanalyzer v1alpha1` as this server serves it
    (`comments.analyze` and `comments.suggestscore`), with `rootUrl` pointing here: Google's
    client libraries build their client from it
    (`googleapiclient.discovery.build(..., discoveryServiceUrl=...)`)."""

    def string(description: str) -> dict[str, str]:
        return {"type": "string", "description": description}

    score = {
        "id": "Score",
        "type": "object",
        "properties": {
            "value": {"type": "number", "format": "float"},
            "type": {"type": "string", "enum": [PROBABILITY]},
        },
    }
    return {
        "kind": "discovery#restDescription",
        "discoveryVersion": "v1",
        "id": f"commentanalyzer:{API_VERSION}",
        "name": "commentanalyzer",
        "version": API_VERSION,
        "title": "Perspective Comment Analyzer API (moderation-worker)",
        "description": "Perspective-compatible comments:analyze and comments:suggestscore "
        "served by moderation-worker; "
        f"attributes: {', '.join(attributes)}.",
        "protocol": "rest",
        "rootUrl": root_url,
        "servicePath": "",
        "baseUrl": root_url,
        "batchPath": "batch",
        "parameters": {
            "key": {"type": "string", "location": "query", "description": "API key."},
            "alt": {
                "type": "string",
                "location": "query",
                "default": "json",
                "enum": ["json"],
                "description": "Data format for the response.",
            },
            "prettyPrint": {"type": "boolean", "location": "query", "default": "true"},
            "fields": {"type": "string", "location": "query"},
            "quotaUser": {"type": "string", "location": "query"},
            "$.xgafv": {"type": "string", "location": "query", "enum": ["1", "2"]},
        },
        "schemas": {
            "TextEntry": {
                "id": "TextEntry",
                "type": "object",
                "properties": {
                    "text": string("UTF-8 text."),
                    "type": {"type": "string", "enum": ["TEXT_TYPE_UNSPECIFIED", "PLAIN_TEXT"]},
                },
            },
            "AttributeParameters": {
                "id": "AttributeParameters",
                "type": "object",
                "properties": {
                    "scoreType": {"type": "string", "enum": [PROBABILITY]},
                    "scoreThreshold": {"type": "number", "format": "float"},
                },
            },
            "AnalyzeCommentRequest": {
                "id": "AnalyzeCommentRequest",
                "type": "object",
                "properties": {
                    "comment": {"$ref": "TextEntry"},
                    "context": {"type": "object", "description": "Accepted, not used."},
                    "requestedAttributes": {
                        "type": "object",
                        "additionalProperties": {"$ref": "AttributeParameters"},
                    },
                    "languages": {"type": "array", "items": {"type": "string"}},
                    "doNotStore": {"type": "boolean"},
                    "spanAnnotations": {"type": "boolean"},
                    "clientToken": {"type": "string"},
                    "sessionId": {"type": "string"},
                    "communityId": {
                        "type": "string",
                        "description": "The tenant: its policy's mode for unsupported languages.",
                    },
                    "dropUnsupportedAttributes": {"type": "boolean"},
                },
            },
            "SuggestCommentScoreRequest": {
                "id": "SuggestCommentScoreRequest",
                "type": "object",
                "description": "A moderator's decision, recorded as a Feedback record: each "
                "attribute's summaryScore.value >= 0.5 means its label applies.",
                "properties": {
                    "comment": {"$ref": "TextEntry"},
                    "context": {"type": "object", "description": "Accepted, not kept."},
                    "attributeScores": {
                        "type": "object",
                        "additionalProperties": {"$ref": "AttributeScores"},
                    },
                    "languages": {"type": "array", "items": {"type": "string"}},
                    "communityId": string("The tenant the decision is from."),
                    "clientToken": string(
                        "Echoed; also the id of the decision's record (else a hash of the text)."
                    ),
                    "sessionId": string("Accepted, not used."),
                    "doNotStore": {
                        "type": "boolean",
                        "description": "Keep the comment's text out of the record.",
                    },
                },
            },
            "SuggestCommentScoreResponse": {
                "id": "SuggestCommentScoreResponse",
                "type": "object",
                "properties": {
                    "clientToken": {"type": "string"},
                    "detectedLanguages": {"type": "array", "items": {"type": "string"}},
                    "requestedLanguages": {"type": "array", "items": {"type": "string"}},
                },
            },
            "Score": score,
            "SpanScore": {
                "id": "SpanScore",
                "type": "object",
                "properties": {
                    "begin": {"type": "integer", "format": "int32"},
                    "end": {"type": "integer", "format": "int32"},
                    "score": {"$ref": "Score"},
                },
            },
            "AttributeScores": {
                "id": "AttributeScores",
                "type": "object",
                "properties": {
                    "summaryScore": {"$ref": "Score"},
                    "spanScores": {"type": "array", "items": {"$ref": "SpanScore"}},
                },
            },
            "AnalyzeCommentResponse": {
                "id": "AnalyzeCommentResponse",
                "type": "object",
                "properties": {
                    "attributeScores": {
                        "type": "object",
                        "additionalProperties": {"$ref": "AttributeScores"},
                    },
                    "languages": {"type": "array", "items": {"type": "string"}},
                    "detectedLanguages": {"type": "array", "items": {"type": "string"}},
                    "clientToken": {"type": "string"},
                    "unsupportedLanguage": {"$ref": "UnsupportedLanguage"},
                },
            },
            "UnsupportedLanguage": {
                "id": "UnsupportedLanguage",
                "type": "object",
                "description": "Only when the text's language is one the model does not serve "
                "and the tenant's mode scored it anyway (not part of Perspective's API).",
                "properties": {
                    "mode": {"type": "string", "enum": ["score", "hold"]},
                    "languages": {"type": "array", "items": {"type": "string"}},
                    "servedLanguages": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
        "resources": {
            "comments": {
                "methods": {
                    "analyze": {
                        "id": "commentanalyzer.comments.analyze",
                        "path": f"{API_VERSION}/comments:analyze",
                        "flatPath": f"{API_VERSION}/comments:analyze",
                        "httpMethod": "POST",
                        "description": "Analyzes the provided text and returns scores for "
                        "requested attributes.",
                        "parameters": {},
                        "parameterOrder": [],
                        "request": {"$ref": "AnalyzeCommentRequest"},
                        "response": {"$ref": "AnalyzeCommentResponse"},
                    },
                    "suggestscore": {
                        "id": "commentanalyzer.comments.suggestscore",
                        "path": f"{API_VERSION}/comments:suggestscore",
                        "flatPath": f"{API_VERSION}/comments:suggestscore",
                        "httpMethod": "POST",
                        "description": "Suggest comment scores as training data: a moderator's "
                        "decision, answered once it is stored.",
                        "parameters": {},
                        "parameterOrder": [],
                        "request": {"$ref": "SuggestCommentScoreRequest"},
                        "response": {"$ref": "SuggestCommentScoreResponse"},
                    },
                }
            }
        },
    }
