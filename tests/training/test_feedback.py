"""The offline feedback loop: feedback-export (file and real broker), calibrate, thresholds and
fit --init-from on a tiny random model; every bad input is one line and exit 2."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch
import yaml
from safetensors.torch import load_file

from schemas import ScoredComment, ThresholdPolicy
from schemas.artifact import read_contract
from testing.kafka import comment, create_topics, produce, read_all
from testing.models import build_tiny_model
from testing.topics import Topics
from training.cli import main
from training.feedback_thresholds import Target, choose_threshold, next_version
from training.fit import masked_bce

os.environ.setdefault("HF_HUB_OFFLINE", "1")
LABELS = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
WORDS = [
    "idiot",
    "stupid",
    "kill",
    "thanks",
    "edit",
    "page",
    "citation",
    "moron",
    "article",
    "nice",
    "loser",
    "talk",
]


def _decision(id_: str, labels: dict, at: int, text: str | None = "t", **extra: object) -> bytes:
    record = {"id": id_, "labels": labels, "source": "test", "decided_at": at, **extra}
    if text is not None:
        record["text"] = text
    return orjson.dumps(record)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as raised:
        code = main(argv)
        raise SystemExit(code)
    err = capsys.readouterr().err.strip()
    assert raised.value.code == 2, err
    assert len(err.splitlines()) == 1, err
    return err


# --- feedback-export ------------------------------------------------------------------------


def test_export_from_a_file_folds_decisions_per_comment_and_label(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [
        _decision("a", {"toxic": 1, "insult": 1}, 100, "first text"),
        _decision("a", {"toxic": 0}, 300, "later text"),  # later: toxic overridden, insult kept
        _decision("a", {"toxic": 1}, 200),  # older than the one above: loses despite order
        _decision("b", {"obscene": 1}, 100, text=None),  # no text anywhere: left out
        b"not json",
        orjson.dumps({"id": "c", "labels": {}, "source": "x", "decided_at": 1}),  # no labels
        _decision("d", {"threat": 1}, 50, "old", tenant="kids"),
        _decision("e", {"toxic": 1}, 100, "same time"),
        _decision("e", {"toxic": 0}, 100, "same time, read later"),  # tie: order read wins
        _decision("f", {"spam": 1}, 100),  # only a label outside the columns
        b"",
    ]
    source = tmp_path / "feedback.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out.csv"
    assert main(["feedback-export", "--file", str(source), "--output", str(out)]) == 0
    captured = capsys.readouterr()
    rows = {row["id"]: row for row in _read_csv(out)}
    assert list(_read_csv(out)[0]) == ["id", "comment_text", *LABELS]
    assert set(rows) == {"a", "d", "e"}
    assert rows["a"]["comment_text"] == "later text"
    assert (rows["a"]["toxic"], rows["a"]["insult"], rows["a"]["obscene"]) == ("0", "1", "")
    assert rows["e"]["toxic"] == "0" and rows["e"]["comment_text"] == "same time, read later"
    assert "1 comment(s) left out" in captured.err and "2 of 10 record(s)" in captured.err
    assert "spam" in captured.err
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["rows"] == 3 and summary["bad"] == 2 and summary["without_text"] == 1

    # a tenant and a start time filter before folding
    kids = tmp_path / "kids.csv"
    assert (
        main(["feedback-export", "--file", str(source), "--tenant", "kids", "--output", str(kids)])
        == 0
    )
    assert [row["id"] for row in _read_csv(kids)] == ["d"]
    recent = tmp_path / "recent.csv"
    assert (
        main(
            [
                "feedback-export",
                "--file",
                str(source),
                "--since",
                "1970-01-01T00:00:00.150Z",
                "--output",
                str(recent),
            ]
        )
        == 0
    )
    recent_rows = {row["id"]: row for row in _read_csv(recent)}
    assert set(recent_rows) == {"a"} and recent_rows["a"]["toxic"] == "0"
    assert recent_rows["a"]["insult"] == ""  # the insult decision was before --since


def test_export_reads_the_feedback_topic_from_the_beginning_to_the_end(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = f"feedback-{os.urandom(4).hex()}"
    asyncio.run(create_topics(kafka_bootstrap, {topic: 3}))
    records = [
        (f"c{i}".encode(), _decision(f"c{i}", {"toxic": i % 2}, 1000 + i, f"text {i}"))
        for i in range(30)
    ]
    records.append((b"c3", _decision("c3", {"toxic": 0, "threat": 1}, 5000, "text 3")))
    records.append((b"junk", b"{"))
    asyncio.run(produce(kafka_bootstrap, topic, records))
    out = tmp_path / "topic.csv"
    argv = ["feedback-export", "--bootstrap-servers", kafka_bootstrap, "--topic", topic]
    assert main([*argv, "--output", str(out)]) == 0
    rows = {row["id"]: row for row in _read_csv(out)}
    assert len(rows) == 30
    assert rows["c3"]["toxic"] == "0" and rows["c3"]["threat"] == "1"
    assert rows["c4"]["toxic"] == "0" and rows["c5"]["toxic"] == "1"
    assert "1 of 32 record(s)" in capsys.readouterr().err
    err = _one_line_exit_2(
        [
            "feedback-export",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--topic",
            "no-such-topic-x",
            "--output",
            str(out),
        ],
        capsys,
    )
    assert "no such topic" in err


def test_export_bad_arguments_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "f.jsonl"
    source.write_bytes(_decision("a", {"toxic": 1}, 1) + b"\n")
    out = str(tmp_path / "o.csv")
    assert "--since" in _one_line_exit_2(
        ["feedback-export", "--file", str(source), "--since", "last week", "--output", out], capsys
    )
    assert "no such file" in _one_line_exit_2(
        ["feedback-export", "--file", str(tmp_path / "none.jsonl"), "--output", out], capsys
    )


# --- a tiny model and feedback that its scores predict ----------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-feedback"))


def _texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=5)) + f" {i}" for i in range(n)]


def _logits(model_dir: Path, texts: list[str]) -> np.ndarray:
    from training.modeling import load_classifier, load_tokenizer, predict

    return predict(load_classifier(model_dir), load_tokenizer(model_dir), texts, logits=True)[0]


def _feedback_csv(
    path: Path, model_dir: Path, n: int, seed: int, judged: tuple[str, ...] = ("toxic", "insult")
) -> Path:
    """Decisions drawn from the model's own scores, standardised (the tiny random model's
    logits differ little between texts): its scores rank well but are far off in scale and
    rate."""
    texts = _texts(n, seed)
    z = _logits(model_dir, texts)
    reference = _logits(model_dir, _texts(400, 0))  # one fixed scale for every file
    standard = (z - reference.mean(0)) / reference.std(0)
    rng = np.random.default_rng(seed + 100)
    truth = rng.random(z.shape) < 1 / (1 + np.exp(-(2.0 * standard - 1.0)))
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["id", "comment_text", *LABELS])
        for i, text in enumerate(texts):
            cells = [str(int(truth[i, j])) if LABELS[j] in judged else "" for j in range(6)]
            writer.writerow([f"r{i}", text, *cells])
    return path


def _ece(model_dir: Path, feedback: Path, label: str) -> float:
    from training.calibration import expected_calibration_error

    rows = _read_csv(feedback)
    z = _logits(model_dir, [r["comment_text"] for r in rows])
    y = np.array([int(r[label]) for r in rows])
    p = 1 / (1 + np.exp(-z[:, LABELS.index(label)]))
    return expected_calibration_error(y, p)


# --- calibrate --------------------------------------------------------------------------------


def test_calibrate_refits_judged_labels_and_keeps_the_rest(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train = _feedback_csv(tmp_path / "fb.csv", tiny, 600, seed=1)
    held = _feedback_csv(tmp_path / "held.csv", tiny, 600, seed=2)
    first = tmp_path / "first"
    assert (
        main(["calibrate", "--model", str(tiny), "--feedback", str(train), "--output", str(first)])
        == 0
    )
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for label in ("toxic", "insult"):
        assert report["labels"][label]["ece_after"] < report["labels"][label]["ece_before"]
        assert _ece(first, held, label) < _ece(tiny, held, label) / 2  # on rows it never saw
    old, new = read_contract(tiny), read_contract(first)
    assert new.model_version != old.model_version and new.calibration is not None
    assert set(new.calibration.labels) == set(LABELS)
    assert not new.calibration.labels["threat"].fitted  # not judged: nothing fitted
    assert (
        new.calibration.labels["toxic"].fitted and new.calibration.labels["toxic"].prior_shift == 0
    )
    rate = np.mean([int(r["toxic"]) for r in _read_csv(train)])
    assert new.label_base_rates is not None and new.label_base_rates["toxic"] == pytest.approx(
        rate, abs=1e-6
    )
    # the weights below the head are untouched; the head of unjudged labels too
    before, after = (
        load_file(str(tiny / "model.safetensors")),
        load_file(str(first / "model.safetensors")),
    )
    for key, tensor in before.items():
        if not key.startswith("classifier."):
            assert torch.equal(tensor, after[key]), key
    for j, label in enumerate(LABELS):
        same = torch.allclose(before["classifier.weight"][j], after["classifier.weight"][j])
        assert same == (label not in ("toxic", "insult")), label
    # no flag decision changes: thresholds are mapped through the same increasing map
    texts = _texts(200, 7)
    flags_before = 1 / (1 + np.exp(-_logits(tiny, texts))) >= np.array(
        [old.label_thresholds[x] for x in LABELS]
    )
    flags_after = 1 / (1 + np.exp(-_logits(first, texts))) >= np.array(
        [new.label_thresholds[x] for x in LABELS]
    )
    assert (flags_before == flags_after).mean() > 0.995

    # a second round on feedback judging only toxic keeps the first round's insult calibration
    only_toxic = _feedback_csv(tmp_path / "toxic.csv", first, 600, seed=3, judged=("toxic",))
    second = tmp_path / "second"
    assert (
        main(
            [
                "calibrate",
                "--model",
                str(first),
                "--feedback",
                str(only_toxic),
                "--output",
                str(second),
            ]
        )
        == 0
    )
    again = read_contract(second)
    assert again.calibration is not None and new.calibration is not None
    assert again.calibration.labels["insult"] == new.calibration.labels["insult"]
    assert again.calibration.labels["toxic"] != new.calibration.labels["toxic"]


def test_calibrate_refuses_bad_feedback_in_one_line(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _feedback_csv(tmp_path / "fb.csv", tiny, 300, seed=1)
    rows = _read_csv(good)

    def variant(name: str, header: list[str], cell) -> Path:
        path = tmp_path / name
        with path.open("w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(header)
            for row in rows:
                writer.writerow([cell(row, column) for column in header])
        return path

    out = str(tmp_path / "out")

    def refused(path: Path, *extra: str) -> str:
        return _one_line_exit_2(
            ["calibrate", "--model", str(tiny), "--feedback", str(path), "--output", out, *extra],
            capsys,
        )

    no_text = variant("no_text.csv", ["id", *LABELS], lambda r, c: r[c])
    assert "missing column comment_text" in refused(no_text)
    unknown = variant(
        "unknown.csv", ["id", "comment_text", "toxic", "spam"], lambda r, c: r.get(c, "1")
    )
    assert "unknown label column(s) spam" in refused(unknown)
    nothing = variant(
        "none.csv",
        ["id", "comment_text", *LABELS],
        lambda r, c: r[c] if c in ("id", "comment_text") else "",
    )
    assert "no label judged" in refused(nothing)
    no_labels = variant("nolabels.csv", ["id", "comment_text"], lambda r, c: r[c])
    assert "no label columns" in refused(no_labels)
    no_positives = variant(
        "nopos.csv", ["id", "comment_text", "toxic"], lambda r, c: "0" if c == "toxic" else r[c]
    )
    err = refused(no_positives)
    assert "label toxic: 0 judged positives and 300 negatives" in err and "at least 30" in err
    few = variant(
        "few.csv",
        ["id", "comment_text", "toxic"],
        lambda r, c: ("1" if r["id"] in ("r1", "r2") else "0") if c == "toxic" else r[c],
    )
    assert "2 judged positives" in refused(few)
    assert "unknown label(s) spam" in refused(good, "--labels", "spam")
    assert "no such directory" in _one_line_exit_2(
        ["calibrate", "--model", str(tmp_path / "nope"), "--feedback", str(good), "--output", out],
        capsys,
    )


# --- thresholds -------------------------------------------------------------------------------


def test_choose_threshold_meets_the_lower_bound_and_stops_there() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(4000) < 0.3
    scores = np.clip(rng.normal(np.where(y, 0.7, 0.3), 0.15), 0, 1)
    choice = choose_threshold(scores, y, Target("toxic", "precision", 0.9), rounds=300)
    assert choice.precision >= 0.9 and choice.precision_interval[0] >= 0.9 - 0.01
    lower = scores < choice.threshold
    assert y[~lower].mean() == pytest.approx(choice.precision, abs=1e-3)
    # fresh rows of the same distribution: the precision there lies in the stated range
    y2 = rng.random(4000) < 0.3
    s2 = np.clip(rng.normal(np.where(y2, 0.7, 0.3), 0.15), 0, 1)
    fresh = y2[s2 >= choice.threshold].mean()
    low, high = choice.precision_range
    assert low <= fresh <= high and fresh >= 0.88
    recall = choose_threshold(scores, y, Target("toxic", "recall", 0.8), rounds=300)
    assert recall.recall_interval[0] >= 0.79 and recall.threshold > 0.4
    with pytest.raises(ValueError, match=r"no threshold reaches precision >= 0\.999"):
        choose_threshold(scores, y, Target("toxic", "precision", 0.999), rounds=300)
    assert next_version(None) == "feedback.1"
    assert next_version("2026-12-01") == "2026-12-01-feedback.1"
    assert next_version("2026-12-01-feedback.9") == "2026-12-01-feedback.10"


def test_thresholds_write_a_policy_the_worker_hot_reloads(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from worker.metrics import Metrics
    from worker.policy import PolicyHolder, PolicyWatcher, load_policy_file

    feedback = _feedback_csv(tmp_path / "fb.csv", tiny, 800, seed=4)
    live = tmp_path / "policy.yaml"
    live.write_text(
        "version: 2026-12-01\nthresholds: {toxic: 0.5, threat: 0.4}\nunsupported_language: hold\n"
        "tenants: {kids: {thresholds: {toxic: 0.2}, unsupported_language: refuse},"
        " forum: {thresholds: {insult: 0.7}, precision_targets: {insult: 0.8}}}\n"
    )
    contract = read_contract(tiny)
    metrics = Metrics()
    holder = PolicyHolder(contract, load_policy_file(live, contract.labels), metrics=metrics)
    watcher = PolicyWatcher(live, holder, metrics, interval_s=1.0)
    argv = ["thresholds", "--model", str(tiny), "--feedback", str(feedback)]
    assert (
        main(
            [
                *argv,
                "--target-precision",
                "toxic=0.7",
                "--target-recall",
                "insult=0.6",
                "--tenant",
                "kids",
                "--policy-in",
                str(live),
                "--policy-out",
                str(live),
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    toxic = report["labels"]["toxic"]
    assert toxic["precision_interval"][0] >= 0.7 - 0.02 and toxic["precision"] >= 0.7
    assert report["labels"]["insult"]["recall"] >= 0.6
    policy = load_policy_file(live, contract.labels)  # what the worker parses
    assert policy.version == "2026-12-01-feedback.1" == report["policy_version"]
    assert policy.thresholds == {"toxic": 0.5, "threat": 0.4}  # defaults kept
    assert policy.tenants["forum"].thresholds == {"insult": 0.7}  # other tenants kept
    assert policy.tenants["kids"].thresholds == {
        "toxic": toxic["threshold"],
        "insult": report["labels"]["insult"]["threshold"],
    }
    # the precision target met is written for the worker to alert on; a recall target is not
    assert policy.tenants["kids"].precision_targets == {"toxic": 0.7}
    assert policy.precision_targets == {}
    assert policy.tenants["forum"].precision_targets == {"insult": 0.8}  # kept
    assert policy.unsupported_language == "hold"  # the rest of the file kept
    assert policy.tenants["kids"].unsupported_language == "refuse"
    assert watcher.check() and holder.current.version == "2026-12-01-feedback.1"
    # again, for the defaults, into a JSON file: the version moves on
    out = tmp_path / "policy.json"
    assert (
        main(
            [
                *argv,
                "--target-precision",
                "toxic=0.7",
                "--policy-in",
                str(live),
                "--policy-out",
                str(out),
            ]
        )
        == 0
    )
    again = load_policy_file(out, contract.labels)
    assert (
        again.version == "2026-12-01-feedback.2" and again.thresholds["toxic"] == toxic["threshold"]
    )
    assert again.precision_targets == {"toxic": 0.7}


def test_thresholds_refuse_bad_input_in_one_line(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    feedback = _feedback_csv(tmp_path / "fb.csv", tiny, 400, seed=5)
    base = [
        "thresholds",
        "--model",
        str(tiny),
        "--feedback",
        str(feedback),
        "--policy-out",
        str(tmp_path / "p.yaml"),
    ]
    assert "no threshold reaches precision >= 0.999" in _one_line_exit_2(
        [*base, "--target-precision", "toxic=0.999"], capsys
    )
    for bad in ("toxic", "toxic=1.5", "=0.9", "toxic=high"):
        assert "expected LABEL=VALUE" in _one_line_exit_2(
            [*base, "--target-precision", bad], capsys
        )
    assert "at least one --target" in _one_line_exit_2(base, capsys)
    assert "unknown label(s) spam" in _one_line_exit_2(
        [*base, "--target-recall", "spam=0.5"], capsys
    )
    assert "label threat: no judged rows" in _one_line_exit_2(
        [*base, "--target-recall", "threat=0.5"], capsys
    )
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: v1\nthresholds: {toxic: 1.5}\n")
    err = _one_line_exit_2(
        [*base, "--target-precision", "toxic=0.7", "--policy-in", str(broken)], capsys
    )
    assert "does not validate: thresholds.toxic" in err
    broken.write_text("version: [unclosed\n")
    assert "not valid YAML" in _one_line_exit_2(
        [*base, "--target-precision", "toxic=0.7", "--policy-in", str(broken)], capsys
    )
    rows = _read_csv(feedback)
    no_positives = tmp_path / "nopos.csv"
    with no_positives.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["id", "comment_text", "toxic"])
        writer.writerows([[r["id"], r["comment_text"], "0"] for r in rows])
    base[4] = str(no_positives)
    assert "0 judged positives" in _one_line_exit_2(
        [*base, "--target-precision", "toxic=0.7"], capsys
    )
    assert not (tmp_path / "p.yaml").exists()  # nothing written by a refused run


# --- fit --init-from --------------------------------------------------------------------------


def test_masked_bce_ignores_unjudged_cells_and_equals_bce_when_all_are_judged() -> None:
    logits = torch.randn(8, 6, requires_grad=True)
    full = (torch.rand(8, 6) > 0.5).float()
    assert torch.allclose(
        masked_bce(logits, full, None), torch.nn.BCEWithLogitsLoss()(logits, full)
    )
    partial = full.clone()
    partial[:, 1:] = float("nan")
    loss = masked_bce(logits, partial, None)
    assert torch.allclose(loss, torch.nn.BCEWithLogitsLoss()(logits[:, 0], full[:, 0]))
    loss.backward()
    assert (
        logits.grad is not None
        and torch.all(logits.grad[:, 1:] == 0)
        and torch.any(logits.grad[:, 0] != 0)
    )


def test_fit_init_from_trains_on_partial_feedback_with_a_mix_and_compares(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    feedback = _feedback_csv(tmp_path / "fb.csv", tiny, 160, seed=6)
    original = _feedback_csv(tmp_path / "orig.csv", tiny, 200, seed=7, judged=tuple(LABELS))
    start = tmp_path / "start"  # the served model, with thresholds of its own (not 0.5)
    shutil.copytree(tiny, start)
    config = json.loads((start / "config.json").read_text())
    config["label_thresholds"] = dict.fromkeys(LABELS, 0.123)
    (start / "config.json").write_text(json.dumps(config))
    run = tmp_path / "run"
    common = ["--epochs", "1", "--batch-size", "16", "--lr", "1e-3", "--no-progress"]
    argv = [
        "fit",
        "--init-from",
        str(start),
        "--data",
        str(feedback),
        "--mix",
        f"{original}:0.5",
        "--output-dir",
        str(run),
        *common,
    ]
    assert main(argv) == 0
    comparison = json.loads((run / "eval" / "candidate_vs_current.json").read_text())
    assert comparison["rows"] == 32 and set(comparison["labels"]) == set(LABELS)
    assert (
        comparison["labels"]["toxic"]["judged"] == 32
        and comparison["labels"]["threat"]["judged"] == 0
    )
    assert comparison["labels"]["toxic"]["roc_auc_current"] is not None
    assert (run / "eval" / "candidate_vs_current.md").is_file()
    info = json.loads((run / "model" / "training_info.json").read_text())
    assert info["train_rows"] == 128 + 128 and "50% of the training rows" in info["details"]["mix"]
    assert info["details"]["unjudged_label_cells"] == 128 * 4
    candidate = read_contract(run / "model")
    assert candidate.labels == read_contract(tiny).labels
    # no validation row judges threat: it keeps the served model's threshold, toxic is chosen
    assert candidate.label_thresholds["threat"] == 0.123
    assert candidate.label_thresholds["toxic"] != 0.123
    before, after = (
        load_file(str(tiny / "model.safetensors")),
        load_file(str(run / "model" / "model.safetensors")),
    )
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])  # it trained
    capsys.readouterr()
    assert "--mix: expected ORIGINAL.csv:FRACTION" in _one_line_exit_2(
        [*argv[:5], "--mix", "orig.csv", "--output-dir", str(run), *common], capsys
    )
    shutil.rmtree(run)


def test_large_feedback_is_cut_on_a_grid_and_drawn_in_chunks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Beyond MAX_CUTS distinct scores the candidates are an even grid of ranks; the resamples
    are drawn in chunks: the choice still meets its bound, close to the full search's."""
    from training import feedback_thresholds

    rng = np.random.default_rng(1)
    y = rng.random(3000) < 0.3
    scores = np.clip(rng.normal(np.where(y, 0.7, 0.3), 0.15), 0, 1)
    target = Target("toxic", "precision", 0.9)
    full = choose_threshold(scores, y, target, rounds=250)
    monkeypatch.setattr(feedback_thresholds, "MAX_CUTS", 60)
    monkeypatch.setattr(feedback_thresholds, "BOOTSTRAP_CHUNK", 7)
    grid = choose_threshold(scores, y, target, rounds=250)
    assert grid.precision_interval[0] >= 0.9 - 0.01 and grid.precision >= 0.9
    assert abs(grid.threshold - full.threshold) < 0.05 and grid.threshold >= full.threshold - 1e-9


async def _round(bootstrap: str, topics: Topics, tag: str, seen: int) -> list[ScoredComment]:
    """Score texts of two tenants (kids, adults) and read their outputs back."""
    texts = _texts(12, 11)
    sent = [
        comment(f"{tag}-{i}", text, metadata={"tenant": "kids" if i % 2 else "adults"})
        for i, text in enumerate(texts)
    ]
    await produce(bootstrap, topics.input, sent)
    records = await read_all(bootstrap, topics.output, seen + len(sent), settle=0.3)
    assert len(records) == seen + len(sent)
    return [ScoredComment.model_validate_json(r.value) for r in records[seen:]]


def _follows(outputs: list[ScoredComment], version: str, thresholds: dict, kids: dict) -> None:
    for out in outputs:
        limits = thresholds | (kids if out.metadata == {"tenant": "kids"} else {})
        assert out.policy_version == version
        assert out.flagged == [x for x in LABELS if out.scores[x] >= limits[x]], out


@pytest.mark.integration
async def test_a_running_worker_puts_the_policy_thresholds_writes_in_force(
    kafka_bootstrap: str, topics: Topics, tiny: Path, tmp_path: Path
) -> None:
    """A worker serving with a policy file; `thresholds` rewrites that file in place for one
    tenant: the worker's outputs follow the new version and thresholds, without a restart."""
    from testing.in_process import settings_for
    from testing.wait import wait_until_async
    from worker.app import Worker
    from worker.backends.model import load_served_model
    from worker.policy import load_policy_file

    feedback = _feedback_csv(tmp_path / "fb.csv", tiny, 800, seed=4)
    live = tmp_path / "policy.yaml"
    live.write_text("version: v1\n")
    model = load_served_model(tiny, device="cpu", precision="fp32")
    settings = settings_for(
        kafka_bootstrap, topics, policy_file=str(live), policy_poll_interval_s=0.1
    )
    worker = Worker(settings, model, policy=load_policy_file(live, model.contract.labels))
    running = asyncio.create_task(worker.run())
    defaults = dict(model.contract.label_thresholds)
    try:
        _follows(await _round(kafka_bootstrap, topics, "a", 0), "v1", defaults, {})
        argv = ["thresholds", "--model", str(tiny), "--feedback", str(feedback)]
        argv += ["--target-precision", "toxic=0.7", "--target-recall", "insult=0.6"]
        argv += ["--tenant", "kids", "--policy-in", str(live), "--policy-out", str(live)]
        assert await asyncio.to_thread(main, argv) == 0
        await wait_until_async(
            lambda: worker.policies.current.version == "v1-feedback.1",
            20,
            message="the new policy was never put in force",
        )
        written = ThresholdPolicy.model_validate(yaml.safe_load(live.read_text()))
        kids = written.tenants["kids"].thresholds
        assert set(kids) == {"toxic", "insult"} and kids["toxic"] != defaults["toxic"]
        outputs = await _round(kafka_bootstrap, topics, "b", 12)
        _follows(outputs, "v1-feedback.1", defaults, kids)
        changed = [
            out for out in outputs if out.metadata == {"tenant": "kids"}
            and out.flagged != [x for x in LABELS if out.scores[x] >= defaults[x]]
        ]  # fmt: skip
        assert changed, "the kids' new thresholds changed no flag: nothing was checked"
        assert worker.metrics.policy_reload_failures._value.get() == 0
    finally:
        worker.request_stop()
        assert await asyncio.wait_for(running, 30) == 0
