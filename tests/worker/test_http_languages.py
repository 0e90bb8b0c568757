"""Coral Talk's requests to the Perspective-compatible HTTP API of the real worker process (real
broker, tiny model): each of Coral's languages under the default policy (refuse) and under a
policy whose mode is `score`, tenants' own modes (`communityId`), Google's Python client with an
undeclared French comment, `dropUnsupportedAttributes`, and 404/405 in Google's error shape."""

from __future__ import annotations

import json
import posixpath
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from testing.http import HttpResult, http_post, metric_sample
from testing.ports import free_port
from testing.topics import fresh_topics
from testing.worker_process import QUICK_ENV, WorkerProcess, start_worker
from worker.backends.model import ServedModel, load_served_model

pytestmark = pytest.mark.integration

KEY = "coral-key"
ERROR_TYPE = "type.googleapis.com/google.commentanalyzer.v1alpha1.Error"
# A comment in each language Coral sends (its `PerspectiveLanguage`), by the tenant locale that
# Coral turns into it (`convertLanguage` in coralproject/talk perspective.ts)
CORAL = {
    "en-US": ("en", "You are a complete idiot and everybody here knows it."),
    "es": ("es", "Eres un idiota y todo el mundo aquí lo sabe perfectamente."),
    "fr-FR": ("fr", "Tu es un imbécile et tout le monde ici le sait très bien."),
    "de": ("de", "Du bist ein kompletter Idiot und alle hier wissen das ganz genau."),
    "pt-BR": ("pt", "Você é um completo idiota e todo mundo aqui sabe disso muito bem."),
}
FRENCH = "Espèce d'imbécile, tu ne comprends jamais rien à ce qu'on te dit."
POLICY = {
    "version": "coral-score",
    "unsupported_language": "score",  # Coral's analyze sends no communityId: the default applies
    "tenants": {
        "strict": {"unsupported_language": "refuse"},
        "review": {"unsupported_language": "hold"},
    },
}


def start_api_worker(bootstrap: str, model_dir: Path, log_path: Path, **env: str) -> WorkerProcess:
    topics = fresh_topics(bootstrap, "http-lang")
    overrides = QUICK_ENV | {
        "MODERATION_MODEL": str(model_dir),
        "MODERATION_HTTP_API_PORT": str(free_port()),
        "MODERATION_LOG_LEVEL": "DEBUG",
    }
    return start_worker(bootstrap, topics, log_path=log_path, overrides=overrides | env)


def analyze(worker: WorkerProcess, body: Any, query: str = "") -> tuple[int, dict[str, Any]]:
    result = http_post(f"{worker.api_url}/v1alpha1/comments:analyze{query}", orjson.dumps(body))
    return result.status, json.loads(result.body)


def expected(scorer: ServedModel, text: str) -> dict[str, float]:
    """Each attribute the artifact maps, as the model scores its label."""
    row = scorer.score([text])[0]
    labels, attributes = scorer.contract.labels, scorer.contract.api_attributes
    return {name: float(row[labels.index(label)]) for name, label in attributes.items()}


def request(method: str, url: str, body: bytes | None = None, **headers: str) -> HttpResult:
    """Any method; an HTTP error status is a result, with its headers in the body's place
    when asked for (`Allow`)."""
    req = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return HttpResult(response.status, response.read().decode())
    except urllib.error.HTTPError as exc:
        allow = exc.headers.get("Allow")
        text = exc.read().decode()
        return HttpResult(exc.code, text if allow is None else f"{allow}\n{text}")


def coral_analyze(endpoint: str, key: str, text: str, locale: str) -> tuple[int, dict[str, Any]]:
    """What Coral's `sendToPerspective` sends for `comments:analyze` (defaults: model TOXICITY,
    doNotStore true): the endpoint's path joined with the operation, `?key=`, this JSON body."""
    language = {"en-US": "en", "es": "es", "fr-FR": "fr", "de": "de", "pt-BR": "pt"}.get(
        locale, "en"
    )
    url = urllib.parse.urlsplit(endpoint.strip())
    path = posixpath.join(url.path, "/comments:analyze".lstrip("/"))
    query = urllib.parse.urlencode({"key": key.strip()})
    target = urllib.parse.urlunsplit((url.scheme, url.netloc, path, query, ""))
    body = {
        "comment": {"text": text},
        "doNotStore": True,
        "requestedAttributes": {"TOXICITY": {}},
        "languages": [language],
    }
    result = request(
        "POST", target, orjson.dumps(body),
        **{"Content-Type": "application/json", "User-Agent": "Coral Perspective/9.0.0"},
    )  # fmt: skip
    return result.status, json.loads(result.body)


@pytest.fixture(scope="module")
def scorer(tiny_model_dir: Path) -> ServedModel:
    return load_served_model(tiny_model_dir, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def default_api(
    kafka_bootstrap: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """No policy file: the HTTP API's default mode, refuse (as Perspective answered)."""
    log = tmp_path_factory.mktemp("http-lang-default") / "worker.log"
    worker = start_api_worker(kafka_bootstrap, tiny_model_dir, log)
    yield worker
    assert worker.stop() == 0, worker.log()[-3000:]


@pytest.fixture(scope="module")
def score_api(
    kafka_bootstrap: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """A policy whose default mode is `score`, a tenant `strict` (refuse), a tenant `review`
    (hold), and an API key."""
    where = tmp_path_factory.mktemp("http-lang-score")
    policy = where / "policy.json"
    policy.write_bytes(orjson.dumps(POLICY))
    worker = start_api_worker(
        kafka_bootstrap, tiny_model_dir, where / "worker.log",
        MODERATION_POLICY_FILE=str(policy), MODERATION_HTTP_API_KEY=KEY,
    )  # fmt: skip
    yield worker
    assert worker.stop() == 0, worker.log()[-3000:]


def assert_refused(body: dict[str, Any], language: str, detected: str) -> None:
    error = body["error"]
    assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT")
    assert error["message"] == f"Attribute TOXICITY does not support request languages: {language}"
    assert error["details"] == [
        {
            "@type": ERROR_TYPE,
            "errorType": "LANGUAGE_NOT_SUPPORTED_BY_ATTRIBUTE",
            "languageNotSupportedByAttributeError": {
                "detectedLanguages": [detected],
                "attribute": "TOXICITY",
            },
        }
    ]


def assert_scored(body: dict[str, Any], scorer: ServedModel, text: str) -> None:
    assert set(body["attributeScores"]) == {"TOXICITY"}
    value = body["attributeScores"]["TOXICITY"]["summaryScore"]["value"]
    assert value == pytest.approx(expected(scorer, text)["TOXICITY"], abs=1e-5)


# ------------------------------------------------------------------- Coral's requests


@pytest.mark.parametrize("locale", list(CORAL))
def test_coral_request_under_the_default_policy(
    default_api: WorkerProcess, scorer: ServedModel, locale: str
) -> None:
    """English is scored; es/fr/de/pt are refused as Perspective refused a language it did not
    serve (Coral then stores no score and lets the comment through its other phases)."""
    language, text = CORAL[locale]
    status, body = coral_analyze(f"{default_api.api_url}/v1alpha1", "any-key", text, locale)
    if language == "en":
        assert status == 200, body
        assert_scored(body, scorer, text)
        assert (body["languages"], body["detectedLanguages"]) == (["en"], ["en"])
        assert "unsupportedLanguage" not in body
    else:
        assert status == 400, body
        assert_refused(body, language, language)


@pytest.mark.parametrize("locale", list(CORAL))
def test_coral_request_under_a_score_policy(
    score_api: WorkerProcess, scorer: ServedModel, locale: str
) -> None:
    """Every language is scored; a language the model does not serve is marked."""
    language, text = CORAL[locale]
    endpoint = f"{score_api.api_url}/v1alpha1/"  # a trailing slash, as an operator may type it
    status, body = coral_analyze(endpoint, f" {KEY} ", text, locale)
    assert status == 200, body
    assert_scored(body, scorer, text)
    assert (body["languages"], body["detectedLanguages"]) == ([language], [language])
    if language == "en":
        assert "unsupportedLanguage" not in body
    else:
        assert body["unsupportedLanguage"] == {
            "mode": "score",
            "languages": [language],
            "servedLanguages": ["en"],
        }


def test_a_tenants_own_mode_and_declared_languages_over_the_detection(
    score_api: WorkerProcess, scorer: ServedModel
) -> None:
    url = f"?key={KEY}"
    base = {"comment": {"text": FRENCH}, "requestedAttributes": {"TOXICITY": {}}}
    status, body = analyze(score_api, base | {"communityId": "strict"}, url)
    assert status == 400
    assert_refused(body, "fr", "fr")
    status, body = analyze(score_api, base | {"communityId": "review"}, url)
    assert status == 200, body
    assert_scored(body, scorer, FRENCH)
    assert body["unsupportedLanguage"]["mode"] == "hold"
    # declared English wins over the detection: scored, not marked; detectedLanguages honest
    status, body = analyze(score_api, base | {"communityId": "strict", "languages": ["en"]}, url)
    assert status == 200, body
    assert (body["languages"], body["detectedLanguages"]) == (["en"], ["fr"])
    assert "unsupportedLanguage" not in body
    # a declared language not served is refused even where the text reads as English
    english = {"comment": {"text": CORAL["en-US"][1]}, "requestedAttributes": {"TOXICITY": {}}}
    status, body = analyze(score_api, english | {"communityId": "strict", "languages": ["es"]}, url)
    assert status == 400
    assert_refused(body, "es", "en")
    metrics = score_api.get("/metrics").body
    languages, modes = (
        "moderation_comments_by_language_total",
        "moderation_unsupported_language_total",
    )
    assert metric_sample(metrics, languages, front_door="http", language="fr") >= 2
    assert metric_sample(metrics, languages, front_door="http", language="es") >= 1
    assert metric_sample(metrics, modes, front_door="http", mode="hold") >= 1
    assert metric_sample(metrics, modes, front_door="http", mode="refuse") >= 2
    assert metric_sample(metrics, modes, front_door="kafka", mode="refuse") == 0


def test_a_tenant_endpoint_gives_coral_its_tenants_mode(
    score_api: WorkerProcess, scorer: ServedModel
) -> None:
    """Coral's analyze sends no communityId: its operator names the tenant in the endpoint
    (`/tenants/NAME/v1alpha1`), and that tenant's mode applies; the path wins over the body."""
    _, text = CORAL["es"]
    status, body = coral_analyze(f"{score_api.api_url}/v1alpha1", KEY, text, "es")
    assert status == 200, body  # the policy's default: score
    assert body["unsupportedLanguage"]["mode"] == "score"
    status, body = coral_analyze(f"{score_api.api_url}/tenants/strict/v1alpha1", KEY, text, "es")
    assert status == 400, body
    assert_refused(body, "es", "es")
    status, body = coral_analyze(f"{score_api.api_url}/tenants/review/v1alpha1/", KEY, text, "es")
    assert status == 200, body
    assert_scored(body, scorer, text)
    assert body["unsupportedLanguage"]["mode"] == "hold"
    url = f"{score_api.api_url}/tenants/strict/v1alpha1/comments:analyze?key={KEY}"
    with_body_tenant = {"comment": {"text": text}, "languages": ["es"], "communityId": "review"}
    result = http_post(
        url, orjson.dumps(with_body_tenant | {"requestedAttributes": {"TOXICITY": {}}})
    )
    assert result.status == 400, result.body  # the path's tenant (strict), not the body's


def test_a_short_unsure_comment_is_scored_as_english(default_api: WorkerProcess) -> None:
    """An unreliable detection is not a refusal: the text is taken as the served language."""
    status, body = analyze(
        default_api, {"comment": {"text": "lol ok"}, "requestedAttributes": {"TOXICITY": {}}}
    )
    assert status == 200, body
    assert body["languages"] == ["en"] and len(body["detectedLanguages"]) == 1


# ------------------------------------------------------------ Google's Python client


def google_client(worker: WorkerProcess, key: str) -> Any:
    from googleapiclient import discovery

    return discovery.build(
        "commentanalyzer", "v1alpha1", developerKey=key,
        discoveryServiceUrl=f"{worker.api_url}/$discovery/rest?version=v1alpha1",
        static_discovery=False,
    )  # fmt: skip


def test_googles_client_undeclared_french_refused_by_default(default_api: WorkerProcess) -> None:
    from googleapiclient.errors import HttpError

    client = google_client(default_api, "any-key")
    body = {"comment": {"text": FRENCH}, "requestedAttributes": {"TOXICITY": {}}}
    with pytest.raises(HttpError) as failed:
        client.comments().analyze(body=body).execute()
    assert failed.value.resp.status == 400
    [detail] = failed.value.error_details
    assert detail["errorType"] == "LANGUAGE_NOT_SUPPORTED_BY_ATTRIBUTE"
    assert detail["languageNotSupportedByAttributeError"] == {
        "detectedLanguages": ["fr"],
        "attribute": "TOXICITY",
    }


def test_googles_client_undeclared_french_scored_and_marked_under_score(
    score_api: WorkerProcess, scorer: ServedModel
) -> None:
    client = google_client(score_api, KEY)
    body = {"comment": {"text": FRENCH}, "requestedAttributes": {"TOXICITY": {}}}
    response = client.comments().analyze(body=body).execute()
    assert_scored(response, scorer, FRENCH)
    assert (response["languages"], response["detectedLanguages"]) == (["fr"], ["fr"])
    assert response["unsupportedLanguage"]["mode"] == "score"
    discovery = f"{score_api.api_url}/$discovery/rest?version=v1alpha1&key={KEY}"
    document = json.loads(request("GET", discovery).body)
    response_schema = document["schemas"]["AnalyzeCommentResponse"]["properties"]
    assert response_schema["unsupportedLanguage"] == {"$ref": "UnsupportedLanguage"}


# ---------------------------------------------------------- dropUnsupportedAttributes


def test_drop_unsupported_attributes(default_api: WorkerProcess, scorer: ServedModel) -> None:
    text = "You are a complete idiot."
    requested = {"TOXICITY": {}, "SEXUALLY_EXPLICIT": {}, "FLIRTATION": {}}
    base = {"comment": {"text": text}, "requestedAttributes": requested}
    status, body = analyze(default_api, base | {"dropUnsupportedAttributes": True})
    assert status == 200, body
    assert_scored(body, scorer, text)
    for kept in (False, None):
        status, body = analyze(
            default_api, base if kept is None else base | {"dropUnsupportedAttributes": kept}
        )
        assert status == 400
        assert body["error"]["message"].startswith("Unknown requested attribute: SEXUALLY_EXPLICIT")
    status, body = analyze(
        default_api,
        {
            "comment": {"text": text},
            "requestedAttributes": {"SEXUALLY_EXPLICIT": {}},
            "dropUnsupportedAttributes": True,
        },
    )
    assert (status, body["attributeScores"]) == (200, {})


# ------------------------------------------------------------------- 404 and 405


def assert_google_error(result: HttpResult, code: int, status: str) -> dict[str, Any]:
    assert result.status == code, result.body
    error = json.loads(result.body.splitlines()[-1])["error"]
    assert (error["code"], error["status"]) == (code, status)
    assert error["message"]
    return error


def test_every_404_and_405_is_in_googles_shape(default_api: WorkerProcess) -> None:
    base = default_api.api_url
    body = orjson.dumps({"comment": {"text": "hi"}, "requestedAttributes": {"TOXICITY": {}}})
    json_type = {"Content-Type": "application/json"}
    # Coral's endpoint without /v1alpha1: the answer says what to set
    error = assert_google_error(
        request("POST", f"{base}/comments:analyze?key=k", body, **json_type), 404, "NOT_FOUND"
    )
    assert "/v1alpha1" in error["message"] and "k" not in error["message"].split(":")[0]
    for method, path in (
        ("GET", "/"),
        ("GET", "/nope"),
        ("POST", "/v1alpha1/comments:nope"),
        ("POST", "/v1/comments:analyze"),
        ("GET", "/v1alpha1/comments:analyze/extra"),
    ):
        assert_google_error(request(method, base + path, body, **json_type), 404, "NOT_FOUND")
    for method, path, allowed in (
        ("GET", "/v1alpha1/comments:analyze", "POST"),
        ("PUT", "/v1alpha1/comments:analyze", "POST"),
        ("DELETE", "/v1alpha1/comments:suggestscore", "POST"),
        ("POST", "/$discovery/rest?version=v1alpha1", "GET,HEAD"),
    ):
        result = request(method, base + path, body, **json_type)
        error = assert_google_error(result, 405, "UNIMPLEMENTED")
        assert result.body.splitlines()[0] == allowed
        assert method in error["message"]
    # and the server still serves
    assert analyze(default_api, orjson.loads(body))[0] == 200


# ------------------------------------------------------------------- detection off


def test_with_detection_off_only_declared_languages_count(
    kafka_bootstrap: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """MODERATION_LANGUAGE_DETECTION=0: the behaviour before detection. An undeclared French
    comment is scored as English; a declared Spanish one is refused; `detectedLanguages` is the
    served language."""
    worker = start_api_worker(
        kafka_bootstrap, tiny_model_dir, tmp_path / "worker.log",
        MODERATION_LANGUAGE_DETECTION="0",
    )  # fmt: skip
    try:
        base = {"comment": {"text": FRENCH}, "requestedAttributes": {"TOXICITY": {}}}
        status, body = analyze(worker, base)
        assert status == 200, body
        assert (body["languages"], body["detectedLanguages"]) == (["en"], ["en"])
        assert "unsupportedLanguage" not in body
        status, body = coral_analyze(f"{worker.api_url}/v1alpha1", "k", CORAL["es"][1], "es")
        assert status == 400
        assert_refused(body, "es", "en")
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]
