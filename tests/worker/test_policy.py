"""Threshold policies: parsing and checking files, thresholds per tenant, and hot reload in a
worker on the real broker (outputs before and after a reload, a bad file, a ConfigMap-style
symlink swap), and the CLI refusing a policy the model cannot follow."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from schemas import (
    HTTP_DEFAULT_UNSUPPORTED_LANGUAGE,
    KAFKA_DEFAULT_UNSUPPORTED_LANGUAGE,
    ScoredComment,
    ThresholdPolicy,
    UnsupportedLanguage,
)
from schemas.artifact import read_contract
from testing.in_process import settings_for
from testing.kafka import comment, produce, read_all
from testing.models import LABELS
from testing.topics import Topics
from testing.wait import wait_until_async
from testing.worker_process import refusal_line
from worker.app import Worker
from worker.backends.model import DEFAULT_MODEL_DIR, ServedModel, load_served_model
from worker.config import Settings
from worker.policy import (
    Policy,
    PolicyError,
    PolicyHolder,
    TenantSource,
    load_policy_file,
    parse_policy,
)

EXAMPLE = {
    "version": "2026-12-01",
    "thresholds": {"toxic": 0.8, "threat": 0.5},
    "tenants": {"kids": {"thresholds": {"toxic": 0.3}}},
}


# ----------------------------------------------------------------------------- files


def test_the_issue_example_parses_as_json_and_yaml(tmp_path: Path) -> None:
    json_file = tmp_path / "policy.json"
    json_file.write_bytes(orjson.dumps(EXAMPLE))
    yaml_file = tmp_path / "policy.yaml"
    yaml_file.write_text(  # an unquoted date stays the version string it reads as
        "version: 2026-12-01\nthresholds: {toxic: 0.8, threat: 0.5}\n"
        "tenants:\n  kids:\n    thresholds:\n      toxic: 0.3\n"
    )
    expected = ThresholdPolicy.model_validate(EXAMPLE)
    assert load_policy_file(json_file, tuple(LABELS)) == expected
    assert load_policy_file(yaml_file, tuple(LABELS)) == expected
    assert expected.version == "2026-12-01"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (EXAMPLE | {"thresholds": {"toxicity": 0.8}}, "the model has no label 'toxicity'"),
        (EXAMPLE | {"tenants": {"k": {"thresholds": {"spam": 0.1}}}}, "no label 'spam'"),
        (EXAMPLE | {"thresholds": {"toxic": 1.5}}, "thresholds.toxic: Input should be less"),
        ({"thresholds": {"toxic": 0.5}}, "version: Field required"),
        (EXAMPLE | {"treshold": {}}, "treshold: Extra inputs are not permitted"),
        ([1, 2], "Input should be a valid dictionary"),
    ],
)
def test_invalid_policies_are_one_line_errors(document: object, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(orjson.dumps(document), "p.json", tuple(LABELS))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_unparsable_files_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="not valid YAML"):
        parse_policy(b"version: [unclosed\n  x: 1", "p.yaml", tuple(LABELS))
    with pytest.raises(PolicyError, match="not valid JSON"):
        parse_policy(b"{nope", "p.json", tuple(LABELS))
    with pytest.raises(PolicyError, match="cannot read it"):
        load_policy_file(tmp_path / "missing.yaml", tuple(LABELS))


# ----------------------------------------------------------------------------- thresholds


class _Record:
    def __init__(self, headers: list[tuple[str, bytes]]) -> None:
        self.headers = headers


def _item(tenant_meta: str | None = None, header: bytes | None = None) -> Any:
    from schemas import Comment
    from worker.pipeline.records import InFlight

    metadata = {"tenant": tenant_meta} if tenant_meta is not None else None
    headers = [("x-tenant", header)] if header is not None else []
    return InFlight(
        record=_Record(headers),
        ticket=None,
        comment=Comment(id="1", text="t", metadata=metadata),
    )


def test_thresholds_per_tenant_fall_back_to_defaults_then_the_model(tiny_model_dir: Path) -> None:
    contract = read_contract(tiny_model_dir).model_copy(
        update={"label_thresholds": dict.fromkeys(LABELS, 0.5) | {"obscene": 0.6}}
    )
    policy = Policy.build(contract, ThresholdPolicy.model_validate(EXAMPLE))
    expected_default = dict.fromkeys(LABELS, 0.5) | {"obscene": 0.6, "toxic": 0.8, "threat": 0.5}
    assert dict(zip(LABELS, policy.thresholds(None), strict=True)) == expected_default
    assert dict(zip(LABELS, policy.thresholds("kids"), strict=True)) == expected_default | {
        "toxic": 0.3
    }
    assert policy.thresholds("unknown-tenant") is policy.default
    scores = np.array([0.5, 0.1, 0.59, 0.5, 0.9, 0.0])  # toxic 0.5: over kids' 0.3 only
    assert policy.flagged(_item("kids"), scores) == ["toxic", "threat", "insult"]
    assert policy.flagged(_item("adults"), scores) == ["threat", "insult"]
    assert policy.flagged(_item(), scores) == ["threat", "insult"]
    # no policy file: the model's thresholds, version "model"
    model_only = Policy.build(contract, None)
    assert model_only.version == "model"
    assert model_only.flagged(_item("kids"), scores) == ["toxic", "threat", "insult"]


def test_language_mode_tenant_then_policy_then_the_front_door(tiny_model_dir: Path) -> None:
    contract = read_contract(tiny_model_dir)
    spec = ThresholdPolicy.model_validate(
        {
            "version": "v1",
            "unsupported_language": "hold",
            "tenants": {"es-site": {"unsupported_language": "score"}, "kids": {}},
        }
    )
    policy = Policy.build(contract, spec)
    assert policy.language_mode("es-site", UnsupportedLanguage.REFUSE) == "score"
    assert policy.language_mode("kids", UnsupportedLanguage.REFUSE) == "hold"
    assert policy.language_mode(None, UnsupportedLanguage.REFUSE) == "hold"
    unset = Policy.build(contract, ThresholdPolicy.model_validate({"version": "v2"}))
    assert unset.language_mode("es-site", HTTP_DEFAULT_UNSUPPORTED_LANGUAGE) == "refuse"
    assert unset.language_mode("es-site", KAFKA_DEFAULT_UNSUPPORTED_LANGUAGE) == "score"
    assert Policy.build(contract, None).language_mode(None, UnsupportedLanguage.HOLD) == "hold"
    with pytest.raises(ValueError, match="unsupported_language"):
        ThresholdPolicy.model_validate({"version": "v3", "unsupported_language": "drop"})


def test_tenant_from_a_header_wins_over_metadata() -> None:
    source = TenantSource(metadata_field="tenant", header="x-tenant")
    assert source.tenant_of(_item("meta", b"head")) == "head"
    assert source.tenant_of(_item("meta")) == "meta"
    assert TenantSource("community").tenant_of(_item("meta")) is None


# ----------------------------------------------------------------------------- hot reload


def write_atomically(path: Path, document: object) -> None:
    """What a deploy tool does: write beside, then rename over (a new inode)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(document))
    os.replace(tmp, path)


def expected_flags(message: ScoredComment, thresholds: dict[str, float]) -> list[str]:
    return [label for label in LABELS if message.scores[label] >= thresholds[label]]


async def wait_for_version(worker: Worker, version: str, timeout: float = 20) -> None:
    await wait_until_async(
        lambda: worker.policies.current.version == version,
        timeout,
        message=f"policy {version} never put in force",
    )


def policy_worker(settings: Settings, model: ServedModel) -> Worker:
    """A worker with the policy file of `settings` read first, as `worker.cli` does."""
    assert settings.policy_file is not None
    policy = load_policy_file(settings.policy_file, model.contract.labels)
    return Worker(settings, model, policy=policy)


def info_version(worker: Worker) -> str:
    [sample] = [
        s
        for family in worker.metrics.registry.collect()
        if family.name == "moderation_policy"
        for s in family.samples
    ]
    return sample.labels["version"]


TEXTS = [
    "You are a complete idiot and everybody here knows it.",
    "Thanks for fixing the citation, much appreciated.",
    "I will find you and hurt you.",
    "short",
]

V1 = {"version": "v1", "thresholds": dict.fromkeys(LABELS, 0.0)}  # every label flagged
V2 = {
    "version": "v2",
    "thresholds": dict.fromkeys(LABELS, 1.0) | {"toxic": 0.0},  # only toxic (unless p == 1)
    "tenants": {"kids": {"thresholds": dict.fromkeys(LABELS, 0.0)}},
}


async def produce_round(bootstrap: str, topic: str, tag: str) -> dict[str, dict]:
    sent = {}
    for i, text in enumerate(TEXTS * 2):
        tenant = "kids" if i % 2 else "adults"
        sent[f"{tag}-{i}"] = {"text": text, "metadata": {"tenant": tenant}}
    await produce(bootstrap, topic, [comment(k, **v) for k, v in sent.items()])
    return sent


async def check_round(
    bootstrap: str, topic: str, sent: dict[str, dict], version: str, policy: dict, seen: int
) -> int:
    """Reads the output topic until this round's outputs are there; each follows `policy`."""
    records = await read_all(bootstrap, topic, seen + len(sent), settle=0.3)
    assert len(records) == seen + len(sent), "an output was lost or duplicated"
    mine = [r for r in records[seen:]]
    assert sorted(r.key.decode() for r in mine) == sorted(sent)
    for record in mine:
        message = ScoredComment.model_validate_json(record.value)
        assert message.policy_version == version
        tenant = sent[record.key.decode()]["metadata"]["tenant"]
        thresholds = policy["thresholds"] | policy.get("tenants", {}).get(tenant, {}).get(
            "thresholds", {}
        )
        assert message.flagged == expected_flags(message, thresholds), (tenant, message)
    return len(records)


@pytest.mark.integration
async def test_reload_swaps_versions_and_flags_and_a_bad_file_changes_nothing(
    kafka_bootstrap: str, topics: Topics, tiny_model_dir: Path, tmp_path: Path
) -> None:
    policy_file = tmp_path / "policy.json"
    write_atomically(policy_file, V1)
    model = load_served_model(tiny_model_dir, device="cpu", precision="fp32")
    settings = settings_for(
        kafka_bootstrap, topics, policy_file=str(policy_file), policy_poll_interval_s=0.1
    )
    worker = policy_worker(settings, model)
    running = asyncio.create_task(worker.run())
    try:
        assert info_version(worker) == "v1"
        sent = await produce_round(kafka_bootstrap, topics.input, "a")
        seen = await check_round(kafka_bootstrap, topics.output, sent, "v1", V1, 0)
        first = [ScoredComment.model_validate_json(r.value) for r in
                 await read_all(kafka_bootstrap, topics.output, seen)]  # fmt: skip
        assert all(m.flagged == LABELS for m in first)  # threshold 0: every label

        write_atomically(policy_file, V2)
        await wait_for_version(worker, "v2")
        assert info_version(worker) == "v2"
        assert worker.metrics.policy_reloads._value.get() == 1
        sent = await produce_round(kafka_bootstrap, topics.input, "b")
        seen = await check_round(kafka_bootstrap, topics.output, sent, "v2", V2, seen)
        second = [ScoredComment.model_validate_json(r.value) for r in
                  (await read_all(kafka_bootstrap, topics.output, seen))[-len(sent):]]  # fmt: skip
        adults = [m for m in second if m.metadata == {"tenant": "adults"}]
        assert adults and any(m.flagged != LABELS for m in adults)  # v2 really flags less

        policy_file.write_bytes(orjson.dumps(V2 | {"version": "v3", "thresholds": {"spam": 0.1}}))
        await wait_until_async(
            lambda: worker.metrics.policy_reload_failures._value.get() >= 1,
            20,
            message="the bad file was never noticed",
        )
        sent = await produce_round(kafka_bootstrap, topics.input, "c")
        await check_round(kafka_bootstrap, topics.output, sent, "v2", V2, seen)
        assert info_version(worker) == "v2"
        assert worker.metrics.policy_reload_failures._value.get() == 1  # once, not every poll
    finally:
        worker.request_stop()
        assert await asyncio.wait_for(running, 30) == 0


@pytest.mark.integration
async def test_a_configmap_symlink_swap_is_reloaded(
    kafka_bootstrap: str, topics: Topics, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The kubelet's layout: policy.yaml -> ..data/policy.yaml, ..data -> ..<timestamp>/; an
    update writes a new timestamped directory and renames a new ..data symlink over the old."""
    mount = tmp_path / "policy"
    (mount / "..2026_12_01_a").mkdir(parents=True)
    (mount / "..2026_12_01_a" / "policy.yaml").write_text("version: '1'\n")
    (mount / "..data").symlink_to("..2026_12_01_a")
    (mount / "policy.yaml").symlink_to("..data/policy.yaml")
    model = load_served_model(tiny_model_dir, device="cpu", precision="fp32")
    settings = settings_for(
        kafka_bootstrap, topics, policy_file=str(mount / "policy.yaml"), policy_poll_interval_s=0.1
    )
    worker = policy_worker(settings, model)
    running = asyncio.create_task(worker.run())
    try:
        sent = await produce_round(kafka_bootstrap, topics.input, "a")
        model_thresholds = dict(model.contract.label_thresholds)
        seen = await check_round(
            kafka_bootstrap, topics.output, sent, "1", {"thresholds": model_thresholds}, 0
        )
        (mount / "..2026_12_01_b").mkdir()
        (mount / "..2026_12_01_b" / "policy.yaml").write_text(
            "version: '2'\nthresholds:\n" + "".join(f"  {label}: 0.0\n" for label in LABELS)
        )
        (mount / "..data_tmp").symlink_to("..2026_12_01_b")
        os.replace(mount / "..data_tmp", mount / "..data")
        (mount / "..2026_12_01_a" / "policy.yaml").unlink()
        (mount / "..2026_12_01_a").rmdir()
        await wait_for_version(worker, "2")
        sent = await produce_round(kafka_bootstrap, topics.input, "b")
        await check_round(
            kafka_bootstrap, topics.output, sent, "2",
            {"thresholds": dict.fromkeys(LABELS, 0.0)}, seen,
        )  # fmt: skip
        assert worker.metrics.policy_reload_failures._value.get() == 0
    finally:
        worker.request_stop()
        assert await asyncio.wait_for(running, 30) == 0


def test_holder_swaps_the_whole_reference(tiny_model_dir: Path) -> None:
    contract = read_contract(tiny_model_dir)
    holder = PolicyHolder(contract)
    before = holder.current
    holder.swap(ThresholdPolicy.model_validate(EXAMPLE))
    assert before.version == "model" and holder.current.version == "2026-12-01"
    assert before.primary.default.tolist() == [contract.label_thresholds[x] for x in LABELS]


# ----------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        (
            "policy.json",
            '{"version": "x", "thresholds": {"toxicity": 0.5}}',
            "the model has no label 'toxicity'",
        ),
        ("policy.json", '{"version": "x", "thresholds": ', "not valid JSON"),
        ("policy.yaml", "[" * 5000 + "]" * 5000, "nested too deeply"),
        ("policy.yaml", "version: !!int abc\n", "(ValueError)"),
        ("policy.yaml", "password: CANARY-9\n  x: y\n", "line 2 column"),
    ],
)
def test_the_worker_refuses_to_start_with_a_bad_policy_in_one_line(
    tiny_model_dir: Path, tmp_path: Path, name: str, content: str, needle: str
) -> None:
    """Invalid for the model, malformed, or hostile (deep nesting, a bad tag, a line that could
    be a secret): one line naming the file and the reason, never the file's content; exit 2."""
    policy_file = tmp_path / name
    policy_file.write_text(content)
    line = refusal_line(
        {"MODERATION_MODEL": str(tiny_model_dir), "MODERATION_POLICY_FILE": str(policy_file)}
    )
    assert needle in line and str(policy_file) in line and "CANARY" not in line


def test_the_watcher_reloads_on_a_content_change_only(tmp_path: Path) -> None:
    """Touching the file, or the same content under a new inode, reloads nothing; a change
    reloads once; a file that disappears is a rejected reload, and so is an invalid one."""
    from worker.metrics import Metrics
    from worker.policy import PolicyWatcher

    contract = read_contract(DEFAULT_MODEL_DIR)
    path = tmp_path / "policy.json"
    write_atomically(path, V1)
    metrics = Metrics()
    holder = PolicyHolder(contract, load_policy_file(path, contract.labels), metrics=metrics)
    watcher = PolicyWatcher(path, holder, metrics, interval_s=1.0)
    os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert not watcher.check()
    write_atomically(path, V1)  # same bytes, new inode
    assert not watcher.check()
    write_atomically(path, V2)
    assert watcher.check() and holder.current.version == "v2"
    assert not watcher.check()  # nothing changed since
    path.unlink()
    assert not watcher.check() and holder.current.version == "v2"
    path.write_text('{"version": "v4", "thresholds": {"toxic": 2}}')
    assert not watcher.check() and holder.current.version == "v2"
    assert metrics.policy_reloads._value.get() == 1
    assert metrics.policy_reload_failures._value.get() == 2
    write_atomically(path, V1)
    assert watcher.check() and holder.current.version == "v1"


async def test_the_worker_reads_tenants_where_the_settings_say(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """MODERATION_TENANT_FIELD / MODERATION_TENANT_HEADER reach the policy the outputs follow
    (the worker is only constructed: nothing connects)."""
    policy_file = tmp_path / "policy.json"
    write_atomically(policy_file, V2)
    settings = settings_for(
        "127.0.0.1:9", Topics.fresh("wiring"), policy_file=str(policy_file),
        tenant_field="community", tenant_header="x-tenant",
    )  # fmt: skip
    worker = policy_worker(
        settings, load_served_model(tiny_model_dir, device="cpu", precision="fp32")
    )
    policy = worker.policies.current.primary
    assert policy.version == "v2"
    assert policy.source == TenantSource(metadata_field="community", header="x-tenant")
    assert worker.policy_watcher is not None and worker.shadow is None


async def test_the_worker_reads_no_policy_file_itself(tiny_model_dir: Path, tmp_path: Path):
    """One start-up path: the caller (`worker.cli`) reads the policy file; a worker given the
    file's name but not its policy refuses, rather than reading it a second way."""
    policy_file = tmp_path / "policy.json"
    write_atomically(policy_file, V2)
    settings = settings_for("127.0.0.1:9", Topics.fresh("wiring"), policy_file=str(policy_file))
    model = load_served_model(tiny_model_dir, device="cpu", precision="fp32")
    with pytest.raises(ValueError, match="pass the policy read from it"):
        Worker(settings, model)


@pytest.mark.integration
async def test_the_tenant_header_wins_over_metadata_on_the_real_broker(
    kafka_bootstrap: str, topics: Topics, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """With MODERATION_TENANT_HEADER set, a record's header names its tenant; a record without
    the header falls back to the metadata field."""
    from aiokafka import AIOKafkaProducer

    policy_file = tmp_path / "policy.json"
    write_atomically(policy_file, V2)  # kids: every label; everyone else: toxic only
    model = load_served_model(tiny_model_dir, device="cpu", precision="fp32")
    settings = settings_for(
        kafka_bootstrap, topics, policy_file=str(policy_file), tenant_header="x-tenant"
    )
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        cases = {  # key: (header tenant, metadata tenant, expected tenant)
            "h-kids": (b"kids", "adults", "kids"),
            "h-adults": (b"adults", "kids", "adults"),
            "m-kids": (None, "kids", "kids"),
            "none": (None, None, None),
        }
        for key, (header, meta, _) in cases.items():
            _, value = comment(key, TEXTS[0], metadata={"tenant": meta} if meta else None)
            headers = [("x-tenant", header)] if header else []
            await producer.send_and_wait(topics.input, value, key=key.encode(), headers=headers)
    finally:
        await producer.stop()
    worker = policy_worker(settings, model)
    running = asyncio.create_task(worker.run())
    try:
        records = await read_all(kafka_bootstrap, topics.output, len(cases), settle=0.3)
    finally:
        worker.request_stop()
        assert await asyncio.wait_for(running, 30) == 0
    for record in records:
        message = ScoredComment.model_validate_json(record.value)
        tenant = cases[record.key.decode()][2]
        thresholds = V2["thresholds"] | V2["tenants"].get(tenant, {}).get("thresholds", {})
        assert message.flagged == expected_flags(message, thresholds), record.key
        assert (message.flagged == LABELS) == (tenant == "kids"), record.key


# ----------------------------------------------------------------------------- hostile files


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"[" * 5000 + b"]" * 5000, "nested too deeply"),  # RecursionError in the composer
        (b"version: !!int abc\n", "cannot build the document (ValueError)"),
        (b"version: v\nthresholds: !!float [1]\n", "not valid YAML"),
    ],
)
def test_every_parse_failure_is_a_one_line_policy_error(content: bytes, needle: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(content, "p.yaml", tuple(LABELS))
    assert needle in str(caught.value) and "\n" not in str(caught.value)


def test_yaml_errors_name_the_position_never_the_content() -> None:
    """A policy path pointed at a secret must not log a line of it."""
    secret = b"api_key: sk-live-CANARY1234\nother: [\n  - : {\n"
    with pytest.raises(PolicyError) as caught:
        parse_policy(secret, "/run/secrets/key", tuple(LABELS))
    assert "CANARY" not in str(caught.value) and "sk-live" not in str(caught.value)
    assert "line 3 column" in str(caught.value)
    with pytest.raises(PolicyError) as caught:
        parse_policy(b"token: CANARY-abc\n  nested: CANARY-def\n", "k.yaml", tuple(LABELS))
    assert "CANARY" not in str(caught.value) and "line 2 column" in str(caught.value)


def _hostile_files(tmp_path: Path) -> dict[str, Path]:
    """Targets a policy symlink may be pointed at: none of them may be read to the end."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.yaml"
    huge.write_bytes(b"version: big\ntenants:\n" + b"  t: {thresholds: {toxic: 0.5}}\n" * 80_000)
    return {"fifo": fifo, "device": Path("/dev/zero"), "huge": huge, "directory": tmp_path}


def test_only_regular_files_under_the_cap_are_read(tmp_path: Path) -> None:
    from worker.policy import read_policy_bytes

    expected = {
        "fifo": "not a regular file (a FIFO)",
        "device": "not a regular file (a device)",
        "huge": "over the limit of 1048576",
        "directory": "not a regular file (a directory)",
    }
    for name, target in _hostile_files(tmp_path).items():
        link = tmp_path / f"policy-{name}.yaml"
        link.symlink_to(target)
        with pytest.raises(
            PolicyError, match=expected[name].replace("(", r"\(").replace(")", r"\)")
        ):
            read_policy_bytes(link)
    small = tmp_path / "small.yaml"
    small.write_bytes(b"version: '1'\n" + b"#" * 2000)
    with pytest.raises(PolicyError, match="over the limit of 1024"):
        read_policy_bytes(small, max_bytes=1024)
    assert load_policy_file(small, tuple(LABELS), max_bytes=4096).version == "1"


async def _wait_for(condition: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def test_the_watcher_survives_every_hostile_file_without_blocking_the_loop(
    tmp_path: Path,
) -> None:
    """A running watcher, its policy name re-pointed at each hostile target in turn: each is
    rejected once (the failure counter +1), the policy in force stays, the watcher goes on to
    apply a valid file after them, and the event loop never stalls meanwhile (a FIFO read on
    the loop would hang it until a writer came: a helper thread plays that writer after 10 s)."""
    import threading

    from worker.metrics import Metrics
    from worker.policy import PolicyWatcher

    contract = read_contract(DEFAULT_MODEL_DIR)
    real = tmp_path / "v1.json"
    write_atomically(real, V1)
    path = tmp_path / "policy.yaml"  # JSON files are YAML too
    path.symlink_to(real)
    metrics = Metrics()
    holder = PolicyHolder(contract, load_policy_file(path, contract.labels), metrics=metrics)
    watcher = PolicyWatcher(path, holder, metrics, interval_s=0.02)
    targets = _hostile_files(tmp_path)
    bad = {
        "deep": b"[" * 5000 + b"]" * 5000,
        "int": b"version: !!int abc\n",
        "secret": b"version: v9\n  CANARY-SECRET: x\n",
    }
    for name, content in bad.items():
        (tmp_path / name).write_bytes(content)
        targets[name] = tmp_path / name
    release = threading.Event()

    def writer() -> None:  # unblocks a reader stuck on the FIFO (the old code's hang)
        if not release.wait(10):
            with open(targets["fifo"], "wb"):
                pass

    threading.Thread(target=writer, daemon=True).start()
    worst = 0.0
    running = asyncio.create_task(watcher.run())
    stop_ticking = asyncio.Event()

    async def tick() -> None:
        nonlocal worst
        loop = asyncio.get_running_loop()
        while not stop_ticking.is_set():
            before = loop.time()
            await asyncio.sleep(0.01)
            worst = max(worst, loop.time() - before)

    ticker = asyncio.create_task(tick())
    try:
        for failures, target in enumerate(targets.values(), start=1):
            swap = tmp_path / "swap"
            swap.symlink_to(target)
            os.replace(swap, path)
            await _wait_for(
                lambda n=failures: metrics.policy_reload_failures._value.get() >= n,
                f"{target} was never rejected",
            )
            assert holder.current.version == "v1"
        release.set()
        write_atomically(tmp_path / "v2.json", V2)
        swap = tmp_path / "swap"
        swap.symlink_to(tmp_path / "v2.json")
        os.replace(swap, path)
        await _wait_for(lambda: holder.current.version == "v2", "the watcher died")
        assert metrics.policy_reload_failures._value.get() == len(targets)
        assert metrics.policy_reloads._value.get() == 1
        assert worst < 1.0, f"the event loop stalled {worst:.2f} s"
    finally:
        release.set()
        stop_ticking.set()
        await watcher.stop()
        await asyncio.wait_for(asyncio.gather(running, ticker), 30)
