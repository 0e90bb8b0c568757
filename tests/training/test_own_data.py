"""A user's own labeled data (issue 23, point 6): a collapsed model is said so at the end of
training and refused by export unless forced; export takes --text-column and says which base
rates it assumed; evaluate says when it is scoring the model's own training file; the README
says what to run with a few thousand rows. Tiny random models, as in test_training.py."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from testing.training_data import tiny_bert_dir, tiny_rows, write_csv
from training.cli import build_parser, main
from training.collapse import MIN_MACRO_ROC_AUC, MIN_SPREAD, check_collapse

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[2]
TOKENIZER_DIR = REPO / "worker" / "default_model"
COMMON = ["--epochs", "1", "--batch-size", "8", "--lr", "1e-3", "--no-progress", "--seed", "3"]
HEALTHY = [*COMMON, "--epochs", "4", "--lr", "5e-3", "--max-length", "32"]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("own-data")


@pytest.fixture(scope="module")
def tiny_model(work: Path) -> Path:
    return tiny_bert_dir(work / "tiny-bert")


@pytest.fixture(scope="module")
def own_rows(work: Path) -> Path:
    return write_csv(work / "own.csv", tiny_rows(400))


@pytest.fixture(scope="module")
def healthy_run(work: Path, tiny_model: Path, own_rows: Path) -> Path:
    """Trained long enough to rank the rows (macro ROC-AUC ~0.8, scores spread ~0.4)."""
    run = work / "healthy"
    argv = ["fit", "--base-model", str(tiny_model), "--train", str(own_rows)]
    assert main([*argv, "--output-dir", str(run), *HEALTHY]) == 0
    return run


def last_json(out: str) -> dict[str, object]:
    return json.loads(out.strip().splitlines()[-1])


# -- the collapse rule -------------------------------------------------------------------------
def test_the_rule_tells_constant_and_chance_scores_from_a_working_model() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random((500, 3)) < [0.3, 0.1, 0.05]).astype(float)
    labels = ["a", "b", "c"]
    working = np.clip(0.6 * y + 0.4 * rng.random(y.shape), 0, 1)
    # near-constant scores whose last digits still rank the rows (a collapsed student: 0.67)
    constant = 0.418 + 1e-4 * working
    chance = rng.random(y.shape)
    good, flat, random = (check_collapse(y, p, labels) for p in (working, constant, chance))
    assert not good.collapsed and good.max_spread is not None and good.max_spread > MIN_SPREAD
    assert flat.collapsed and flat.constant and not flat.chance
    assert flat.macro_roc_auc is not None and flat.macro_roc_auc > 0.9
    assert random.collapsed and random.chance and not random.constant
    assert random.macro_roc_auc is not None and random.macro_roc_auc < MIN_MACRO_ROC_AUC


# -- training and export of a collapsed model ----------------------------------------------------
def test_a_collapsed_fit_and_distill_say_so_and_export_refuses_them_unless_forced(
    work: Path,
    tiny_model: Path,
    healthy_run: Path,
    own_rows: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One epoch of eight steps leaves the tiny model giving every text the same scores:
    fit and distill finish (exit 0: the run is kept to inspect or resume) but say so last,
    and export refuses it (one line, exit 2) unless --force."""
    data = write_csv(work / "small.csv", tiny_rows(80))
    common = ["--train", str(data), "--max-length", "32", *COMMON]
    collapsed = work / "collapsed"
    assert (
        main(["fit", "--base-model", str(tiny_model), "--output-dir", str(collapsed), *common]) == 0
    )
    out, err = capsys.readouterr()
    assert last_json(out)["collapsed"] is True
    warning = err.strip().splitlines()[-1]
    assert warning.startswith("moderation-train: warning: ") and "looks collapsed" in warning
    assert "export refuses it without --force" in warning
    info = json.loads((collapsed / "model" / "training_info.json").read_text())
    record = info["metrics"]["collapse"]
    assert record["collapsed"] is True and max(record["spread"].values()) < MIN_SPREAD
    assert (
        "**Warning:** This model looks collapsed" in (collapsed / "model" / "README.md").read_text()
    )

    student = work / "collapsed-student"
    distill = ["distill", "--teacher", str(healthy_run), "--student-config", str(tiny_model)]
    assert main([*distill, "--output-dir", str(student), *common]) == 0
    out, err = capsys.readouterr()
    assert last_json(out)["collapsed"] is True and "looks collapsed" in err.splitlines()[-1]

    for source in (collapsed, student):
        target = work / f"export-{source.name}"
        assert main(["export", str(source), str(target)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "looks collapsed" in err and "--force" in err, err
        assert "fit --base-model worker/default_model" in err  # what to try
        assert not target.exists()
    forced = work / "export-forced"
    assert main(["export", str(collapsed), str(forced), "--force"]) == 0
    assert (forced / "model.safetensors").is_file()

    # an artifact whose training figures do not show it (only the macro ROC-AUC of an older
    # run, above the cutoff) is caught on the calibration data's validation split
    info["metrics"].pop("collapse")
    info["metrics"]["mean_roc_auc"] = 0.7
    (forced / "training_info.json").write_text(json.dumps(info))
    capsys.readouterr()
    target = work / "export-calibrated"
    assert main(["export", str(forced), str(target), "--calibration-data", str(own_rows)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"the validation split of {own_rows}" in err, err
    assert not target.exists()

    # a working model passes: no warning, exported
    capsys.readouterr()
    assert main(["export", str(healthy_run), str(work / "export-healthy")]) == 0
    summary = json.loads((healthy_run / "model" / "training_info.json").read_text())
    assert summary["metrics"]["collapse"]["collapsed"] is False


# -- export: --text-column and the base rates it assumes ---------------------------------------
def test_export_reads_calibration_data_with_another_text_column(
    work: Path, healthy_run: Path, own_rows: Path
) -> None:
    renamed = work / "own-body.csv"
    text = own_rows.read_text().replace("id,comment_text,", "id,body,", 1)
    renamed.write_text(text)
    plain, moved = work / "text-column-a", work / "text-column-b"
    assert main(["export", str(healthy_run), str(plain), "--calibration-data", str(own_rows)]) == 0
    argv = ["export", str(healthy_run), str(moved), "--calibration-data", str(renamed)]
    assert main([*argv, "--text-column", "body"]) == 0
    a = json.loads((plain / "config.json").read_text())
    b = json.loads((moved / "config.json").read_text())
    assert a["calibration"]["labels"] == b["calibration"]["labels"]  # the same rows read


def test_export_says_which_base_rates_it_assumed_and_where_from(
    work: Path, healthy_run: Path, own_rows: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Without --base-rates, the calibration data's own rates (no prior shift); `jigsaw` for
    the full Jigsaw set's; named labels as given, the others from the data; one log line
    names the source each time."""
    from schemas.artifact import read_contract
    from training.calibration import JIGSAW_BASE_RATES

    def export(name: str, *extra: str) -> tuple[dict[str, float], str]:
        caplog.clear()
        out = work / f"rates-{name}"
        with caplog.at_level(logging.INFO, logger="training.export_calibration"):
            argv = ["export", str(healthy_run), str(out), "--calibration-data", str(own_rows)]
            assert main([*argv, *extra]) == 0
        [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("base rates")]
        contract = read_contract(out)
        assert contract.label_base_rates is not None
        return dict(contract.label_base_rates), line

    own, line = export("own")
    contract = read_contract(work / "rates-own")
    assert own == contract.label_training_rates  # the validation split's rates: no shift
    assert own["toxic"] == pytest.approx(0.5, abs=0.1)  # half the rows are toxic, not 9.6 %
    assert "from the calibration data (80 rows of" in line
    assert all(e.prior_shift == 0 for e in (contract.calibration.labels.values()))  # type: ignore[union-attr]

    jigsaw, line = export("jigsaw", "--base-rates", "jigsaw")
    assert jigsaw == JIGSAW_BASE_RATES and "Jigsaw's full train set" in line

    mixed, line = export("mixed", "--base-rates", "toxic=0.2")
    assert mixed["toxic"] == 0.2 and mixed["insult"] == own["insult"]
    assert line.startswith("base rates given (--base-rates); severe_toxic, obscene,")
    assert "from the calibration data" in line


# -- evaluate on the model's own training file -------------------------------------------------
def test_evaluate_warns_when_the_data_is_the_models_training_file(
    work: Path, healthy_run: Path, own_rows: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = write_csv(work / "other.csv", tiny_rows(60)[::-1])
    results = {}
    for name, data in (("own", own_rows), ("other", other)):
        out = work / f"eval-{name}"
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="training.evaluate"):
            argv = ["evaluate", "--model", str(healthy_run), "--data", str(data)]
            assert main([*argv, "--output-dir", str(out)]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        results[name] = (metrics, [r.getMessage() for r in caplog.records], out)
    metrics, warnings, out = results["own"]
    [warning] = [w for w in warnings if "trained on" in w]
    assert "optimistic" in warning and str(own_rows) in warning
    assert metrics["warning"] == warning
    assert "**warning**" in (out / "report.md").read_text()
    metrics, warnings, _ = results["other"]
    assert "warning" not in metrics and not [w for w in warnings if "trained on" in w]

    # a source recorded by name and digest (outside the checkout) is recognised in a copy
    from training.provenance import is_recorded_source

    copy = work / "copy" / "anything.csv"
    copy.parent.mkdir()
    copy.write_bytes(own_rows.read_bytes())
    assert is_recorded_source(f"own.csv (sha256 {_digest(own_rows)})", copy)
    assert not is_recorded_source(f"own.csv (sha256 {_digest(other)})", copy)
    # and the bundled model's source, `../shared/data/jigsaw/train.csv.gz`, where it is here
    recorded = json.loads((REPO / "worker" / "default_model" / "training_info.json").read_text())
    jigsaw = REPO.parent / "shared" / "data" / "jigsaw" / "train.csv.gz"
    if jigsaw.is_file():
        assert is_recorded_source(recorded["train_data"], jigsaw)
    assert not is_recorded_source(recorded["train_data"], copy)


def _digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the README --------------------------------------------------------------------------------
def test_readme_says_what_to_run_with_a_few_thousand_rows() -> None:
    """The own-data section exists, recommends fine-tuning the default model, and each of its
    commands parses."""
    readme = (REPO / "training" / "README.md").read_text()
    match = re.search(r"^## Your own labeled data.*?(?=^## |\Z)", readme, re.S | re.M)
    assert match, "no 'Your own labeled data' section"
    section = match.group(0)
    [block] = re.findall(r"```bash\n(.*?)```", section, re.S)
    commands = [
        shlex.split(re.sub(r"#.*", "", line))
        for line in block.replace("\\\n", " ").splitlines()
        if line.strip().startswith("moderation-train ")
    ]
    assert {cmd[1] for cmd in commands} >= {"fit", "evaluate", "export"}
    [fit] = [cmd for cmd in commands if cmd[1] == "fit"]
    assert fit[fit.index("--base-model") + 1] == "worker/default_model"
    parser = build_parser()
    for cmd in commands:
        parser.parse_args(cmd[1:])
    assert "steers" not in section and "collapsed" in section


def test_fine_tuning_a_six_label_model_on_other_labels_trains_a_new_head(
    work: Path, healthy_run: Path, own_rows: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`fit --base-model worker/default_model` with one's own label columns: the encoder is
    kept, the head replaced (transformers alone stops at the size mismatch)."""
    out = work / "two-labels"
    argv = ["fit", "--base-model", str(healthy_run / "model"), "--train", str(own_rows)]
    with caplog.at_level(logging.WARNING, logger="training.modeling"):
        assert (
            main([*argv, "--label-columns", "toxic,insult", "--output-dir", str(out), *HEALTHY])
            == 0
        )
    assert any(
        "training a new head for ['toxic', 'insult']" in r.getMessage() for r in caplog.records
    )
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["id2label"] == {"0": "toxic", "1": "insult"}
