"""Training CLI: fit, distill, evaluate and export on tiny data with a tiny random model."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers.utils import logging as hf_logging

from schemas.artifact import ONNX_META_WEIGHTS, ArtifactContract, weights_version
from testing.pipeline import pipeline_scores
from testing.training_data import TOKENIZER_FILES, tiny_bert_dir, tiny_rows, write_csv
from training import JIGSAW_LABELS, provenance
from training.cli import main
from training.data import DataError, load_dataset, split_dataset
from training.distill import soft_target_loss
from training.evaluate import choose_thresholds, compute_metrics
from training.modeling import length_grouped_batches
from training.onnx_export import read_metadata
from training.provenance import portable_command, portable_path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[2]
TOKENIZER_DIR = REPO / "worker" / "default_model"
COMMON = ["--epochs", "1", "--batch-size", "8", "--lr", "1e-3", "--no-progress", "--seed", "3"]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("training")


@pytest.fixture(scope="module")
def tiny_model(work: Path) -> Path:
    """A tiny random BERT config + the real BERT-Tiny tokenizer (no weights: built from config)."""
    return tiny_bert_dir(work / "tiny-bert")


@pytest.fixture(scope="module")
def data_file(work: Path) -> Path:
    return write_csv(work / "train.csv.gz", tiny_rows(80))


@pytest.fixture(scope="module")
def fitted(work: Path, tiny_model: Path, data_file: Path) -> Path:
    """A fit run from a checkout and a current directory that hold none of its sources, wherever
    this clone and the temporary folder live."""
    out = work / "fit-run"
    argv = ["fit", "--base-model", str(tiny_model), "--train", str(data_file),
            "--output-dir", str(out), "--max-length", "32", *COMMON]  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(provenance, "CHECKOUT", work / "checkout")
        (work / "cwd").mkdir()
        patch.chdir(work / "cwd")
        assert main(argv) == 0
    return out


# -- data --------------------------------------------------------------------------------------
def test_jigsaw_csv_and_split(data_file: Path) -> None:
    ds = load_dataset(data_file)
    assert len(ds) == 80 and ds.label_names == JIGSAW_LABELS
    assert ds.labels is not None and ds.labels.shape == (80, 6) and ds.labels.dtype == np.float32
    train, val = split_dataset(ds)
    assert (len(train), len(val)) == (64, 16)
    assert set(train.ids).isdisjoint(val.ids)
    # same split as sklearn's train_test_split(test_size=0.2, random_state=42)
    from sklearn.model_selection import train_test_split

    _, expected_val = train_test_split(ds.ids, test_size=0.2, random_state=42)
    assert val.ids == list(expected_val)


def test_generic_jsonl_with_columns(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"body": "hello", "a": 1, "b": 0}\n\n{"body": "bye", "a": 0.5, "b": true}\n')
    ds = load_dataset(path, text_column="body", label_columns=["a", "b"])
    assert ds.texts == ["hello", "bye"]
    assert ds.labels is not None and ds.labels.tolist() == [[1.0, 0.0], [0.5, 1.0]]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("id,comment_text,toxic\n1,hi,0\n", r"missing column\(s\) severe_toxic"),
        (
            "id,comment_text,"
            + ",".join(JIGSAW_LABELS)
            + "\n1,ok,0,0,0,0,0,0\n2,bad,0,2,0,0,0,0\n",
            r"row 2: label 'severe_toxic' is 2, outside \[0, 1\]$",
        ),
        (
            "id,comment_text," + ",".join(JIGSAW_LABELS) + "\n1,ok,0,0,0,0,0,0\n2,short,0\n"
            "3,ok,0,0,0,0,0,0\n",
            r"row 2: has 3 fields, the header has 8",
        ),
        (
            "id,comment_text," + ",".join(JIGSAW_LABELS) + "\n1,  ,0,0,0,0,0,0\n",
            r"row 1: empty text",
        ),
        (
            "id,comment_text," + ",".join(JIGSAW_LABELS) + "\n1,x,0,0,yes,0,0,0\n",
            r"row 1: label 'obscene' is 'yes', not a number$",
        ),
    ],
)
def test_bad_csv_rows_are_named(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_dataset(path)


def test_bad_jsonl_row_and_skip(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"comment_text": "fine", **dict.fromkeys(JIGSAW_LABELS, 0)})
    path.write_text(f"{good}\n{{not json\n[1, 2]\n{good}\n")
    with pytest.raises(DataError, match=r"bad.jsonl: row 2: invalid JSON"):
        load_dataset(path)
    ds = load_dataset(path, skip_bad_rows=True)
    assert len(ds) == 2 and ds.skipped_rows == 2


def test_cli_bad_data_is_one_line_error(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(
        "id,comment_text," + ",".join(JIGSAW_LABELS) + "\n1,ok,0,0,0,0,0,0\n2,x,0,0,0,0,0\n"
    )
    code = main(
        [
            "fit",
            "--base-model",
            str(tiny_model),
            "--train",
            str(path),
            "--output-dir",
            str(tmp_path / "out"),
            *COMMON,
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and "bad.csv: row 2: has 7 fields" in err
    assert not (tmp_path / "out" / "model").exists()


def test_cli_bad_arguments_exit_nonzero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--train", "x.csv", "--output-dir", "o", "--batch-size", "0"])
    assert exc.value.code == 2
    assert "must be a positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["distill", "--train", "x.csv", "--output-dir", "o", "--student", "s"])
    assert exc.value.code != 0


@pytest.mark.parametrize("command", ["fit", "distill", "evaluate", "export", "baseline"])
def test_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: moderation-train " + command in capsys.readouterr().out


# -- pieces ------------------------------------------------------------------------------------
def test_length_grouped_batches_cover_everything_once() -> None:
    lengths = list(np.random.default_rng(1).integers(1, 100, size=103))
    batches = length_grouped_batches(lengths, batch_size=8, seed=5, mega=4)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(103))
    assert batches == length_grouped_batches(lengths, batch_size=8, seed=5, mega=4)
    spread = np.mean([np.ptp([lengths[i] for i in b]) for b in batches])
    assert spread < 40  # grouped: far less than random batches (~75)


def test_thresholds_and_metrics() -> None:
    y = np.array([[1, 0], [1, 0], [0, 1], [0, 0]], dtype=np.float32)
    p = np.array([[0.9, 0.1], [0.6, 0.2], [0.3, 0.8], [0.1, 0.3]], dtype=np.float32)
    thresholds = choose_thresholds(y, p, ["a", "b"])
    assert thresholds == {"a": pytest.approx(0.6), "b": pytest.approx(0.8)}
    metrics = compute_metrics(y, p, ["a", "b"], thresholds)
    assert metrics["mean_roc_auc"] == pytest.approx(1.0)
    assert metrics["labels"]["a"]["f1"] == pytest.approx(1.0)  # type: ignore[index]
    assert metrics["bce"] == pytest.approx(
        float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))), rel=1e-5
    )


def test_soft_target_loss_is_minimised_at_the_teacher() -> None:
    teacher = torch.tensor([[0.9, 0.2, 0.01]])
    at_teacher = torch.logit(teacher).requires_grad_(True)
    loss = soft_target_loss(at_teacher, teacher, t=2.0)
    loss.backward()
    assert at_teacher.grad is not None and at_teacher.grad.abs().max() < 1e-5
    assert soft_target_loss(torch.zeros(1, 3), teacher, 2.0) > loss


def test_training_imports_nothing_from_worker() -> None:
    for path in (REPO / "training").glob("*.py"):
        assert not re.search(r"^\s*(from|import)\s+worker\b", path.read_text(), re.M), path


def test_portable_paths_name_sources_as_a_user_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkout, cwd, elsewhere = tmp_path / "checkout", tmp_path / "cwd", tmp_path / "tmp"
    for folder in (checkout, cwd, elsewhere):
        folder.mkdir()
    monkeypatch.setattr(provenance, "CHECKOUT", checkout)
    monkeypatch.chdir(cwd)
    site = "/opt/venv/lib/python3.11/site-packages/some_model/model"
    assert portable_path(site) == "some_model/model"
    assert portable_path(cwd / "data" / "x.csv") == "data/x.csv"
    assert portable_path(checkout / "runs" / "teacher") == "runs/teacher"
    assert portable_path(tmp_path / "shared" / "d.csv") == "../shared/d.csv"  # the project's data
    data = elsewhere / "train.csv"
    data.write_bytes(b"id,text\n")
    digest = hashlib.sha256(b"id,text\n").hexdigest()
    assert portable_path(data) == f"train.csv (sha256 {digest})"  # never `../tmp/train.csv`
    assert portable_path(elsewhere / "base-model") == "base-model"
    assert portable_path(Path.home() / "downloads" / "x.csv") == "x.csv"
    assert portable_path("google/bert_uncased_L-2_H-128_A-2") == "google/bert_uncased_L-2_H-128_A-2"
    assert portable_path("runs/a") == "runs/a"
    argv = ["t", "--train", str(checkout / "a b.csv"), f"--val={checkout / 'v.csv'}", str(data)]
    assert portable_command(argv) == "t --train 'a b.csv' --val=v.csv train.csv"


def test_no_pickle_loading_in_training_code() -> None:
    for path in (REPO / "training").glob("*.py"):
        source = path.read_text()
        assert not re.search(
            r"torch\.(load|save)\(|import pickle|pickle\.|joblib|allow_pickle=True", source
        ), path
        assert "trust_remote_code=True" not in source


@pytest.fixture
def collapse_rule_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 1-epoch tiny models give every text the same scores: `training.collapse` rightly
    calls them collapsed, and export refuses them. Tests of export's files and of the recipe's
    plumbing export them anyway, with the rule's cutoffs at 0 (tests/training/test_own_data.py
    tests the rule)."""
    from training import collapse

    monkeypatch.setattr(collapse, "MIN_SPREAD", 0.0)
    monkeypatch.setattr(collapse, "MIN_MACRO_ROC_AUC", 0.0)


# -- fit / evaluate / export -------------------------------------------------------------------
def test_fit_writes_a_complete_artifact(fitted: Path) -> None:
    model_dir = fitted / "model"
    for name in ("model.safetensors", "config.json", "README.md", *TOKENIZER_FILES):
        assert (model_dir / name).is_file(), name
    config = json.loads((model_dir / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert [config["id2label"][str(i)] for i in range(6)] == JIGSAW_LABELS
    assert set(config["label_thresholds"]) == set(JIGSAW_LABELS)
    assert all(0.0 < t <= 1.0 for t in config["label_thresholds"].values())
    assert re.fullmatch(r"[0-9a-f]{12}", config["model_version"])
    # config.json carries exactly the artifact contract's entries, as the worker reads them
    contract = ArtifactContract.from_config(config, default_name="-", default_version="-")
    assert contract.config_entries() == {key: config[key] for key in contract.config_entries()}
    assert config["served_languages"] == ["en"]  # Jigsaw is English
    assert contract.model_version == weights_version(model_dir / "model.safetensors")
    assert contract.model_name == "model" and contract.labels == tuple(JIGSAW_LABELS)
    ckpt = fitted / "checkpoint"
    assert {p.name for p in ckpt.iterdir()} == {
        "model.safetensors",
        "optimizer.safetensors",
        "trainer_state.json",
    }
    opt = load_file(ckpt / "optimizer.safetensors")
    assert any(k.endswith("exp_avg_sq") for k in opt) and "rng.torch" in opt
    history = json.loads((fitted / "history.json").read_text())
    assert history[-1]["step"] == 8
    assert "mean ROC-AUC" in (model_dir / "README.md").read_text()
    info = json.loads((model_dir / "training_info.json").read_text())
    assert info["command"].startswith("moderation-train fit --base-model ")  # how it was made
    assert " --train train.csv.gz " in info["command"]
    digest = hashlib.sha256((fitted.parent / "train.csv.gz").read_bytes()).hexdigest()
    assert info["train_data"] == f"train.csv.gz (sha256 {digest})"  # outside the checkout


def test_resume_reproduces_an_uninterrupted_run(
    work: Path, tiny_model: Path, data_file: Path
) -> None:
    args = [
        "fit",
        "--base-model",
        str(tiny_model),
        "--train",
        str(data_file),
        "--max-length",
        "32",
        "--checkpoint-every",
        "0",
        *COMMON,
    ]
    straight, resumed = work / "straight", work / "resumed"
    assert main([*args, "--output-dir", str(straight)]) == 0
    assert main([*args, "--output-dir", str(resumed), "--stop-after-steps", "3"]) == 0
    state = json.loads((resumed / "checkpoint" / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and not (resumed / "model").exists()
    assert main([*args, "--output-dir", str(resumed)]) == 0
    a = load_file(straight / "model" / "model.safetensors")
    b = load_file(resumed / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


def test_evaluate_writes_metrics_report_and_plots(
    work: Path, fitted: Path, data_file: Path
) -> None:
    out = work / "eval"
    assert (
        main(
            ["evaluate", "--model", str(fitted), "--data", str(data_file), "--output-dir", str(out)]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 80
    assert 0.0 <= metrics["mean_roc_auc"] <= 1.0 and metrics["bce"] > 0
    assert set(metrics["labels"]) == set(JIGSAW_LABELS)
    for label in metrics["labels"].values():
        assert {"roc_auc", "pr_auc", "f1", "threshold", "ece"} <= set(label)
        assert 0.0 <= label["ece"] <= 1.0
    for png in ("pr_curves.png", "training_loss.png", "reliability.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "| toxic |" in report and "## Calibration" in report and "reliability.png" in report
    table = metrics["calibration"]["table"]
    assert set(table) == set(JIGSAW_LABELS)
    assert table["toxic"]["ece_before"] == pytest.approx(metrics["labels"]["toxic"]["ece"])
    assert table["toxic"]["ece_after"] is not None  # 40 positives: 5 folds can be cross-fitted


@pytest.mark.usefixtures("collapse_rule_off")
def test_export_round_trips_through_pipeline_and_worker(work: Path, fitted: Path) -> None:
    out = work / "exported"
    assert main(["export", str(fitted), str(out), "--fp16", "--model-name", "tiny-test"]) == 0
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys())  # noqa: SIM118
    config = json.loads((out / "config.json").read_text())
    assert config["model_name"] == "tiny-test"
    original = json.loads((fitted / "model" / "config.json").read_text())
    assert config["label_thresholds"] == original["label_thresholds"]

    texts = ["you are a stupid idiot", "thanks for the citation", "i will kill you " * 40, "ok"]
    pipe = pipeline_scores(out, texts)  # columns: the artifact's labels (JIGSAW_LABELS below)

    from worker.backends.model import load_served_model

    served = load_served_model(out, device="cpu", precision="fp32")
    contract = served.contract
    assert list(contract.labels) == JIGSAW_LABELS and contract.model_name == "tiny-test"
    assert contract.label_thresholds == pytest.approx(config["label_thresholds"])
    assert contract.model_version == config["model_version"]
    np.testing.assert_allclose(served.score(texts), pipe, rtol=1e-4, atol=1e-5)

    # fp16 storage changes scores by at most fp16 rounding of the weights
    fp32 = load_served_model(fitted / "model", device="cpu", precision="fp32").score(texts)
    np.testing.assert_allclose(fp32, pipe, atol=2e-3)


@pytest.mark.usefixtures("collapse_rule_off")
def test_export_refuses_a_directory_it_did_not_write_unless_forced(
    work: Path, fitted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Export writes into a new, empty or earlier-export directory; anything else (another
    model's artifact, the source itself, unrelated files) is one line and exit 2 unless
    --force, and a forced export leaves no stale artifact file behind."""
    out = work / "export-target"
    assert main(["export", str(fitted), str(out)]) == 0
    capsys.readouterr()
    assert main(["export", str(fitted), str(out), "--fp16"]) == 0  # its own earlier export
    capsys.readouterr()

    other = work / "other-model"  # another model's artifact: the bundled default
    shutil.copytree(TOKENIZER_DIR, other)
    for target, message in [
        (other, "is not an earlier export of"),
        (fitted / "model", "is the source itself"),
    ]:
        before = sorted(p.name for p in target.iterdir())
        assert main(["export", str(fitted), str(target)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err and "--force" in err, err
        assert sorted(p.name for p in target.iterdir()) == before  # untouched

    unrelated = work / "notes"
    unrelated.mkdir()
    (unrelated / "notes.txt").write_text("mine\n")
    assert main(["export", str(fitted), str(unrelated)]) == 2
    assert "1 entries: notes.txt" in capsys.readouterr().err

    assert (other / "model.int8.onnx").is_file()
    assert main(["export", str(fitted), str(other), "--force"]) == 0
    assert not (other / "model.int8.onnx").exists(), "a stale graph of the other model was left"
    assert not (other / "training_info.json").read_text().count("bert-tiny-jigsaw")
    assert (unrelated / "notes.txt").is_file()


def test_evaluate_and_export_of_a_missing_directory_exit_2_with_one_line(
    work: Path, data_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = work / "no-such-run"
    for argv in (
        ["evaluate", "--model", str(missing), "--data", str(data_file), "--output-dir", "o"],
        ["export", str(missing), str(work / "out-missing")],
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert (
            err == f"moderation-train: error: {'--model' if argv[0] == 'evaluate' else 'source'}"
            f" '{missing}': no such directory"
        )


def test_skipped_rows_are_counted_without_a_validation_file(
    work: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--skip-bad-rows without --val: the count survives the split into the CLI's summary,
    training_info.json and the model card."""
    rows = tiny_rows(40)
    path = work / "with-bad-rows.csv"
    write_csv(path, rows)
    with path.open("a") as handle:
        handle.write("x1,too,few\n")
        handle.write("x2,bad label,0,0,7,0,0,0\n")
    out = work / "fit-skipped"
    argv = ["fit", "--base-model", str(tiny_model), "--train", str(path), "--skip-bad-rows",
            "--output-dir", str(out), "--max-length", "32", *COMMON]  # fmt: skip
    assert "--no-progress" in argv
    hf_logging.enable_progress_bar()  # as in a fresh process (other tests hid them)
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "Writing model shards" not in captured.err  # transformers' bars hidden too
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["skipped_rows"] == 2
    info = json.loads((out / "model" / "training_info.json").read_text())
    assert info["skipped_rows"] == 2 and info["train_rows"] + info["val_rows"] == 40
    card = (out / "model" / "README.md").read_text()
    [skipped] = [line for line in card.splitlines() if "`--skip-bad-rows`" in line]
    assert skipped.endswith(": 2")  # the card says how many rows the option skipped

    hf_logging.enable_progress_bar()  # without --no-progress the same run shows them
    argv = [arg for arg in argv if arg != "--no-progress"]
    assert main([*argv, "--no-resume"]) == 0
    assert "Writing model shards" in capsys.readouterr().err


# -- calibration -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def calibrated(work: Path, tiny_model: Path) -> tuple[Path, Path, Path]:
    """A fitted model exported plain and calibrated (both with model.onnx), and the labeled
    file whose validation split the calibration was fitted on."""
    rows = write_csv(work / "calibration.csv", tiny_rows(400))
    run = work / "calibration-run"  # trained long enough to have signal in every label
    argv = ["fit", "--base-model", str(tiny_model), "--train", str(rows), "--output-dir", str(run)]
    assert main([*argv, *COMMON, "--epochs", "4", "--lr", "5e-3", "--max-length", "32"]) == 0
    plain, calibrated = work / "plain", work / "calibrated"
    assert main(["export", str(run), str(plain), "--onnx"]) == 0
    args = ["export", str(run), str(calibrated), "--onnx", "--calibration-data", str(rows)]
    assert main([*args, "--base-rates", "jigsaw"]) == 0
    return plain, calibrated, rows


def test_calibration_is_folded_into_the_head_for_every_consumer(
    calibrated: tuple[Path, Path, Path],
) -> None:
    from schemas.artifact import read_contract
    from training.calibration import JIGSAW_BASE_RATES, sigmoid
    from training.modeling import load_classifier, load_tokenizer, predict
    from worker.backends.model import load_served_model

    plain, folded, rows = calibrated
    before, after = read_contract(plain), read_contract(folded)
    assert before.calibration is None and before.label_base_rates is None  # old-style: valid
    calibration = after.calibration
    assert calibration is not None and calibration.method == "platt" and calibration.folded
    assert after.label_base_rates == JIGSAW_BASE_RATES
    _, val = split_dataset(load_dataset(rows))
    assert val.labels is not None and calibration.rows == len(val) == 80
    assert after.label_training_rates == pytest.approx(
        dict(zip(JIGSAW_LABELS, val.labels.mean(axis=0).tolist(), strict=True)), abs=1e-6
    )
    config = json.loads((folded / "config.json").read_text())
    assert config["label_base_rates"] == JIGSAW_BASE_RATES
    assert set(config["label_training_rates"]) == set(config["calibration"]["labels"])

    # the stock pipeline on the folded artifact gives sigmoid(a * z + b + shift) of the plain one
    z, _ = predict(load_classifier(plain), load_tokenizer(plain), val.texts, logits=True)
    slope = np.array([calibration.labels[label].slope for label in JIGSAW_LABELS])
    offset = np.array([calibration.total_offset(label) for label in JIGSAW_LABELS])
    expected = sigmoid(slope * z + offset)
    assert not np.allclose(expected, sigmoid(z), atol=1e-2)  # the calibration does something
    np.testing.assert_allclose(pipeline_scores(folded, val.texts), expected, atol=1e-5)
    # and so does the worker, torch and ONNX backends alike, with no calibration code of its own
    for backend in ("torch", "onnx"):
        served = load_served_model(folded, backend=backend, device="cpu", precision="fp32")
        assert served.backend.kind == backend
        np.testing.assert_allclose(served.score(val.texts), expected, atol=1e-4)

    # thresholds mapped through the same increasing map: every flag decision stays, on all
    # 400 rows (except within float rounding of a threshold)
    texts = load_dataset(rows).texts
    old = load_served_model(plain, backend="torch", device="cpu", precision="fp32").score(texts)
    new = load_served_model(folded, backend="torch", device="cpu", precision="fp32").score(texts)
    old_t = np.array([before.label_thresholds[label] for label in JIGSAW_LABELS])
    new_t = np.array([after.label_thresholds[label] for label in JIGSAW_LABELS])
    np.testing.assert_allclose(new_t, sigmoid(slope * logit_of(old_t) + offset), atol=1e-8)
    clear = np.abs(old - old_t) > 1e-5
    assert clear.mean() > 0.9
    assert ((old >= old_t) == (new >= new_t))[clear].all()
    assert (new >= new_t).any() and (new < new_t).any()

    # fp16 storage keeps the calibrated head in float32 (fp16 rounding would move the scores)
    half = folded.parent / "calibrated-fp16"
    assert main(["export", str(folded), str(half), "--fp16"]) == 0
    with safe_open(str(half / "model.safetensors"), "pt") as f:
        dtypes = {k: f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118
    assert dtypes.pop("classifier.weight") == dtypes.pop("classifier.bias") == torch.float32
    assert set(dtypes.values()) == {torch.float16}
    assert read_contract(half).calibration == calibration
    np.testing.assert_allclose(pipeline_scores(half, val.texts), expected, atol=2e-3)

    card = (folded / "README.md").read_text()
    assert "## Calibration" in card and "training rate" in card and "base rate" in card
    for label in JIGSAW_LABELS:  # each label's row names its two rates
        training, base = after.label_training_rates[label], JIGSAW_BASE_RATES[label]
        assert re.search(rf"^\| {label} \| {training:.4f} \| {base:.4f} \|", card, re.M), label
    info = json.loads((folded / "training_info.json").read_text())
    assert set(info["calibration"]["table"]) == set(JIGSAW_LABELS)
    assert info["calibration"]["table"]["toxic"]["ece_after"] is not None


def logit_of(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def test_base_rates_reshift_a_calibrated_artifact(
    work: Path, calibrated: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from schemas.artifact import read_contract
    from training.modeling import load_classifier, load_tokenizer, predict

    plain, folded, rows = calibrated
    moved = work / "moved"
    assert main(["export", str(folded), str(moved), "--base-rates", "toxic=0.2"]) == 0
    source, target = read_contract(folded), read_contract(moved)
    assert target.label_base_rates is not None and source.label_base_rates is not None
    assert target.label_base_rates["toxic"] == 0.2
    assert target.label_base_rates["insult"] == source.label_base_rates["insult"]  # kept
    assert target.label_training_rates == source.label_training_rates
    texts = load_dataset(rows).texts[:40]
    z_source, _ = predict(load_classifier(folded), load_tokenizer(folded), texts, logits=True)
    z_target, _ = predict(load_classifier(moved), load_tokenizer(moved), texts, logits=True)
    shift = z_target - z_source
    toxic = JIGSAW_LABELS.index("toxic")
    np.testing.assert_allclose(shift[:, toxic], logit_of(0.2) - logit_of(0.096), atol=1e-4)
    np.testing.assert_allclose(np.delete(shift, toxic, axis=1), 0.0, atol=1e-5)

    # usage errors: one line, exit 2
    for argv, message in (
        (
            ["export", str(plain), str(work / "x"), "--base-rates", "toxic=0.2"],
            "already calibrated",
        ),
        (
            ["export", str(plain), str(work / "x"), "--calibration-data", str(rows),
             "--base-rates", "spam=0.1"],
            "names label(s) the model does not have: ['spam']",
        ),
    ):  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err
    for bad in ("toxic=1.5", "toxic", "toxic=abc"):
        with pytest.raises(SystemExit) as exited:
            main(["export", str(folded), str(work / "x"), "--base-rates", bad])
        assert exited.value.code == 2
    assert not (work / "x").exists()


def test_calibration_from_a_reference_reproduces_its_probabilities(
    work: Path, calibrated: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """`export --calibration-from`, the path of a model refitted on all rows: the same weights
    the reference was calibrated from, matched on the training split's texts, serve the
    reference's probabilities and flags, with its thresholds and base rates and their own
    training rates, and the card says where the maps and the ECE figures come from."""
    from schemas.artifact import read_contract
    from worker.backends.model import load_served_model

    plain, reference, rows = calibrated
    run = work / "calibration-run"  # what `reference` was exported from, uncalibrated
    matched = work / "matched"
    argv = ["export", str(run), str(matched), "--calibration-data", str(rows)]
    assert main([*argv, "--calibration-from", str(reference)]) == 0
    ours, theirs = read_contract(matched), read_contract(reference)
    assert ours.label_thresholds == theirs.label_thresholds
    assert ours.label_base_rates == theirs.label_base_rates
    trained = json.loads((run / "model" / "training_info.json").read_text())
    assert ours.label_training_rates == trained["label_positive_rates"]
    assert ours.calibration is not None and ours.calibration.rows == 320  # the training split
    texts = load_dataset(rows).texts
    scores = {
        name: load_served_model(path, backend="torch", device="cpu", precision="fp32").score(texts)
        for name, path in (("plain", plain), ("ours", matched), ("theirs", reference))
    }
    np.testing.assert_allclose(scores["ours"], scores["theirs"], atol=2e-3)
    assert not np.allclose(scores["plain"], scores["theirs"], atol=2e-2)
    info = json.loads((matched / "training_info.json").read_text())
    agreement = info["calibration"]["agreement_with_reference"]
    assert all(row["mean_abs_difference"] < 2e-3 for row in agreement.values())
    assert info["calibration"]["reference"]["model_version"] == theirs.model_version
    # the ECE figures are the reference's, measured on its held-out rows (this one has none)
    reference_info = json.loads((reference / "training_info.json").read_text())
    assert info["calibration"]["table"] == reference_info["calibration"]["table"]
    assert f"`{theirs.model_version}`" in (matched / "README.md").read_text()

    for argv, message in (
        (
            ["export", str(run), str(work / "y"), "--calibration-from", str(reference)],
            "--calibration-from needs --calibration-data",
        ),
        (
            ["export", str(run), str(work / "y"), "--calibration-data", str(rows),
             "--calibration-from", str(plain)],
            "that artifact is not calibrated",
        ),
    ):  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err
    assert not (work / "y").exists()


# -- distill -----------------------------------------------------------------------------------
def test_distill_with_ensemble_teacher_augmentation_and_hidden_loss(
    work: Path, tiny_model: Path, data_file: Path, fitted: Path
) -> None:
    unlabeled = work / "extra.txt"
    unlabeled.write_text("what a lovely day\nyou absolute idiot\n")
    cache = work / "teacher-cache"
    out = work / "distill-run"
    args = [
        "distill",
        "--teacher",
        str(fitted),
        "--tfidf-teacher",
        "--teacher-weights",
        "2,1",
        "--teacher-cache",
        str(cache),
        "--student-config",
        str(tiny_model),
        "--init-embeddings",
        str(fitted / "model"),
        "--alpha",
        "0.3",
        "--temperature",
        "2",
        "--hidden-distill",
        "0.5",
        "--augment",
        "1",
        "--unlabeled",
        str(unlabeled),
        "--train",
        str(data_file),
        "--output-dir",
        str(out),
        "--max-length",
        "32",
        *COMMON,
    ]
    assert main(args) == 0
    cached = sorted(p.name for p in cache.iterdir())
    assert any(n.startswith("teacher-model-") for n in cached)
    assert any(n.startswith("tfidf-oof-") for n in cached)
    info = json.loads((out / "model" / "training_info.json").read_text())
    # 64 labeled + 64 augmented + 2 unlabeled texts
    assert info["details"]["transfer_set"].startswith("130 texts (64 labeled")
    assert info["details"]["teacher_weights"] == [2.0, 1.0]
    history = json.loads((out / "history.json").read_text())
    assert history[-1]["step"] == 17  # ceil(130 / 8) steps for one epoch
    ckpt = {p.name for p in (out / "checkpoint").iterdir()}
    assert "projection.safetensors" in ckpt  # the learned student->teacher projection
    exported = load_file(out / "model" / "model.safetensors")
    assert not any("projection" in k for k in exported)
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["hidden_size"] == 32 and set(config["label_thresholds"]) == set(JIGSAW_LABELS)

    from worker.backends.model import load_served_model

    probs = load_served_model(out / "model", device="cpu", precision="fp32").score(["hello there"])
    assert probs.shape == (1, 6) and np.all((probs >= 0) & (probs <= 1))


def test_mean_pooled_teacher_round_trips_and_teaches(
    work: Path, tiny_model: Path, data_file: Path
) -> None:
    """`fit --pooling mean` (for teachers): the artifact reloads to the same probabilities,
    distill learns from it, and the worker refuses to serve it."""
    from training.modeling import load_classifier, load_tokenizer, predict

    teacher = work / "mean-teacher"
    common = ["--train", str(data_file), "--max-length", "32", *COMMON]
    assert main(["fit", "--base-model", str(tiny_model), "--pooling", "mean",
                 "--output-dir", str(teacher), *common]) == 0  # fmt: skip
    model_dir = teacher / "model"
    assert json.loads((model_dir / "config.json").read_text())["pooling"] == "mean"
    assert set(load_file(model_dir / "head.safetensors")) == {"weight", "bias"}
    _, val = split_dataset(load_dataset(data_file))
    probs, _ = predict(
        load_classifier(model_dir), load_tokenizer(model_dir), val.texts, max_length=32
    )
    np.testing.assert_allclose(probs, np.load(teacher / "val_probs.npy"), atol=1e-5)
    assert np.ptp(probs) > 0  # a real head, not a constant
    student = work / "from-mean-teacher"
    distill = ["distill", "--teacher", str(teacher), "--student-config", str(tiny_model)]
    assert main([*distill, "--hidden-distill", "0.5", "--output-dir", str(student), *common]) == 0
    assert (student / "model" / "model.safetensors").is_file()

    from worker.backends.backend import ModelLoadError
    from worker.backends.model import load_served_model

    with pytest.raises(ModelLoadError, match="this is a teacher checkpoint"):  # refused first
        load_served_model(model_dir, device="cpu", precision="fp32")


def test_distill_rejects_mismatched_teacher_labels(
    work: Path, tiny_model: Path, fitted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = work / "generic.csv"
    path.write_text("text,spam\n" + "".join(f"message {i},{i % 2}\n" for i in range(20)))
    code = main(
        [
            "distill",
            "--teacher",
            str(fitted),
            "--student-config",
            str(tiny_model),
            "--train",
            str(path),
            "--text-column",
            "text",
            "--label-columns",
            "spam",
            "--output-dir",
            str(work / "bad-distill"),
            *COMMON,
        ]
    )
    assert code == 1
    assert "lacks label(s) spam" in capsys.readouterr().err


# -- default-model recipe ----------------------------------------------------------------------
@pytest.mark.usefixtures("collapse_rule_off")
def test_default_model_recipe_runs_end_to_end_on_tiny_data(
    work: Path,
    tiny_model: Path,
    data_file: Path,
    fitted: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The recipe's function calls fit together (the real runs take hours): the 80/20 build
    (baseline, a mean-pooled teacher, the distilled student, export and re-evaluation), a
    second estimate on another split, and the refit on all rows that ships."""
    from training.default_model import build
    from training.recipe import Recipe

    out = work / "recipe-artifact"
    recipe = Recipe(
        data=data_file,
        work_dir=work / "recipe",
        output=out,
        teacher_base=str(fitted / "model"),  # stands in for MiniLM (weights + tokenizer)
        student_config=str(tiny_model),
        seed=3,
        teacher_epochs=1,
        student_epochs=1,
        augment=1,
    )
    summary = build(recipe, "python -m training.default_model --tiny")
    assert set(summary["seconds"]) == {"baseline", "teacher", "student", "export", "evaluate"}
    validation = summary["validation"]
    assert {"tfidf_lr", "teacher", "student", "exported_fp16"} <= set(validation)
    info = json.loads((out / "training_info.json").read_text())
    assert info["command"] == "python -m training.default_model --tiny"
    assert info["details"]["teacher_weights"] == [2.0, 1.0]
    assert "reference_validation" in info and len(info["notes"]) == 5
    teacher_info = json.loads(
        (work / "recipe" / "teacher" / "model" / "training_info.json").read_text()
    )
    assert teacher_info["details"]["pooling"] == "mean"
    card = (out / "README.md").read_text()
    assert "bert-tiny-jigsaw-distilled" in card and "TF-IDF" in card
    config = json.loads((out / "config.json").read_text())  # calibrated in the export step
    assert config["calibration"]["method"] == "platt" and "label_base_rates" in config
    assert "## Calibration" in card and "calibration" in summary

    # a second estimate: the recipe on another 80/20 split, figures only, nothing exported
    from schemas.artifact import read_contract
    from training.default_model import main as default_model_main

    tiny = [
        "--data", str(data_file), "--teacher-base", str(fitted / "model"),
        "--student-config", str(tiny_model), "--seed", "3", "--teacher-epochs", "1",
        "--student-epochs", "1", "--augment", "1",
    ]  # fmt: skip
    unused = work / "split-artifact"
    split = ["--split-seed", "1", "--work-dir", str(work / "split1"), "--output", str(unused)]
    assert default_model_main([*split, *tiny]) == 0
    assert not unused.exists()
    split_summary = json.loads((work / "split1" / "summary.json").read_text())
    _, seed1 = split_dataset(load_dataset(data_file), random_state=1)
    assert seed1.ids != split_dataset(load_dataset(data_file))[1].ids
    split_student = work / "split1" / "student" / "model"
    split_info = json.loads((split_student / "training_info.json").read_text())
    assert split_info["val_data"].endswith("(random_state=1)")
    assert split_info["val_rows"] == len(seed1)
    with pytest.raises(SystemExit) as exited:
        default_model_main([*split, *tiny, "--recalibrate"])
    assert exited.value.code == 2
    assert "--split-seed trains an estimate only" in capsys.readouterr().err

    # the refit that ships: the same recipe on all rows, calibrated to match the 80/20 build
    refitted = work / "refit-artifact"
    argv = [
        "--all-rows", "--calibration-from", str(out), "--work-dir", str(work / "refit"),
        "--output", str(refitted), "--other-split", str(work / "split1"), *tiny,
    ]  # fmt: skip
    assert default_model_main(argv) == 0
    rows = len(load_dataset(data_file))
    student = json.loads((work / "refit" / "student" / "model" / "training_info.json").read_text())
    assert student["train_rows"] == rows  # all of them: none held out
    info = json.loads((refitted / "training_info.json").read_text())
    built = json.loads((out / "training_info.json").read_text())
    assert info["metrics"] == built["metrics"]  # the card's figures: the 80/20 build's estimate
    assert info["in_sample_validation"]["mean_roc_auc"] is not None
    ours, theirs = read_contract(refitted), read_contract(out)
    assert ours.label_thresholds == theirs.label_thresholds
    assert ours.model_version != theirs.model_version
    assert info["calibration"]["reference"]["model_version"] == theirs.model_version
    assert info["command"].startswith("python -m training.default_model --all-rows")
    card = (refitted / "README.md").read_text()
    assert all(note in card for note in info["notes"])  # the refit says what it is
    [other] = info["estimate_from"]["other_splits"]
    assert other["split_seed"] == 1 and other["student"] == split_summary["validation"]["student"]
    assert f"student mean ROC-AUC {other['student']['mean_roc_auc']:.4f}" in card
    assert (refitted / "model.int8.onnx").is_file() or "int8_check" in info["onnx"]
    # both builds ship the fp32 graph too (OpenVINO serves it), exported from their own weights
    for artifact in (out, refitted):
        graph = read_metadata(artifact / "model.onnx")
        assert graph[ONNX_META_WEIGHTS] == weights_version(artifact / "model.safetensors")
    for bad in (["--all-rows"], ["--calibration-from", str(out)], ["--other-split", str(out)]):
        with pytest.raises(SystemExit) as exited:
            default_model_main([*bad, "--data", str(data_file)])
        assert exited.value.code == 2


# -- training-loop benchmark -------------------------------------------------------------------
def test_loop_benchmark_runs_both_loops_side_by_side(
    work: Path, tiny_model: Path, data_file: Path
) -> None:
    from training.bench_loop import main as bench_main

    out = work / "bench-loop"
    argv = ["--data", str(data_file), "--model", str(tiny_model), "--rows", "64"]
    argv += ["--batch-size", "16", "--max-length", "32", "--repeats", "2", "--threads", "1"]
    assert bench_main([*argv, "--precisions", "fp32", "--output-dir", str(out)]) == 0
    summary = json.loads((out / "bench.json").read_text())
    assert summary["setup"]["rows"] == 64
    fp32 = summary["results"]["fp32"]
    for loop in ("plain", "hf_trainer"):
        assert len(fp32[loop]["examples_per_s"]) == 2
        assert all(v > 0 for v in fp32[loop]["examples_per_s"])
        # both trained the same model from the same weights: finite losses near ln 2 or below
        assert all(0 < loss < 1.0 for loss in fp32[loop]["last_loss"])
    report = (out / "REPORT.md").read_text()
    assert re.search(r"^\| fp32 \| [\d,]+ \| [\d,]+ \| \d+\.\d\d \|$", report, re.M)


def test_loop_benchmark_bad_arguments_exit_nonzero(capsys: pytest.CaptureFixture[str]) -> None:
    from training.bench_loop import main as bench_main

    with pytest.raises(SystemExit) as exc:
        bench_main(["--precisions", "fp8"])
    assert exc.value.code == 2
    assert "--precisions" in capsys.readouterr().err
