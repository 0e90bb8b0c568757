"""The default model's recipe: its settings (`Recipe`), its resumable steps (`Steps`), and the
teacher, student and export steps that the 80/20 build and the all-rows refit share."""

from __future__ import annotations

import csv
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from schemas.artifact import CONFIG_FILE, ONNX_FILES, WEIGHTS_FILE
from training.artifact_files import CARD_FILE, INFO_FILE
from training.data import DataOptions, TextDataset
from training.distill import DistillOptions, distill
from training.export import export_model
from training.fit import fit
from training.loop import LoopConfig
from training.run import PosWeight, RunOptions

log = logging.getLogger("training.default_model")  # the build's log, as before the split
T = TypeVar("T")

TEACHER_NAME = "minilm-l6-jigsaw-teacher"
SPLIT_SEED = 42  # the 80/20 split the settings were chosen on, and the export calibrates on
STUDENT_NAME = "bert-tiny-jigsaw-distilled"
# both ONNX graphs ship: int8 (4.5 MB, ONNX Runtime) and fp32 (8.8 MB, which OpenVINO serves
# in bf16 where the CPU has native bf16: the fastest backend there)
ARTIFACT_FILES = (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE, INFO_FILE, *ONNX_FILES.values())
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)


@dataclass
class Recipe:
    """The settings of `make default-model` (its command-line flags)."""

    data: Path
    work_dir: Path
    output: Path
    teacher_base: str
    student_config: str
    seed: int = 42
    teacher_epochs: float = 4
    student_epochs: float = 3
    student_lr: float = 4e-4
    augment: int = 8
    alpha: float = 0.1
    temperature: float = 2.0
    pos_weight: PosWeight = "auto"
    hidden_distill: float = 0.5
    teacher_weights: tuple[float, float] = (2.0, 1.0)  # MiniLM, TF-IDF
    split_seed: int = SPLIT_SEED  # of the 80/20 split; another: an estimate only (no export)


class Steps:
    """The recipe's steps with their wall times, kept in `summary.json` across invocations."""

    def __init__(self, work: Path) -> None:
        self.file = work / "summary.json"
        self.summary: dict[str, Any] = (
            json.loads(self.file.read_text()) if self.file.is_file() else {}
        )
        self.seconds: dict[str, float] = self.summary.setdefault("seconds", {})

    def run(self, name: str, action: Callable[[], T], *, done: Path | None = None) -> T | None:
        """Run `action` and record its wall time, unless its output `done` exists already."""
        if done is not None and done.exists():
            log.info("step %s: done already (%s)", name, done)
            return None
        log.info("step %s", name)
        started = time.perf_counter()
        result = action()
        self.seconds[name] = round(time.perf_counter() - started, 1)
        self.save()
        return result

    def save(self) -> None:
        self.file.write_text(json.dumps(self.summary, indent=2) + "\n")


def train_models(recipe: Recipe, data: DataOptions, steps: Steps, command: str) -> None:
    """The recipe's teacher and student steps on `data`, into the work directory."""
    work = recipe.work_dir
    progress = sys.stderr.isatty()
    steps.run(
        "teacher",
        lambda: fit(
            data,
            RunOptions(output_dir=work / "teacher", model_name=TEACHER_NAME, command=command),
            LoopConfig(
                epochs=recipe.teacher_epochs,
                batch_size=32,
                learning_rate=5e-5,
                bf16=True,
                checkpoint_every=200,
                seed=recipe.seed,
                progress=progress,
            ),
            base_model=recipe.teacher_base,
            pooling="mean",
        ),
        done=work / "teacher" / "model" / CONFIG_FILE,
    )
    steps.run(
        "student",
        lambda: distill(
            data,
            RunOptions(output_dir=work / "student", model_name=STUDENT_NAME, command=command),
            LoopConfig(
                epochs=recipe.student_epochs,
                batch_size=32,
                learning_rate=recipe.student_lr,
                checkpoint_every=500,
                seed=recipe.seed,
                progress=progress,
            ),
            DistillOptions(
                student=recipe.student_config,
                student_from_config=True,
                init_embeddings=recipe.teacher_base,
                teachers=[work / "teacher"],
                tfidf_teacher=True,
                teacher_weights=recipe.teacher_weights,
                teacher_cache=work / "cache",
                teacher_batch_size=64,
                teacher_bf16=True,
                alpha=recipe.alpha,
                temperature=recipe.temperature,
                hidden_distill=recipe.hidden_distill,
                augment=recipe.augment,
                pos_weight=recipe.pos_weight,
            ),
        ),
        done=work / "student" / "model" / CONFIG_FILE,
    )


def export_student(
    run_dir: Path, out: Path, staging: Path, data: Path, calibration_from: Path | None = None
) -> None:
    """Export the student (fp16 storage keeps it under 10 MB) through `staging` into `out`:
    weights calibrated on the validation split of `data` (base rates: the full Jigsaw
    set's, `--base-rates jigsaw`), or matched to the artifact `calibration_from`, config,
    card, info, the fp32 ONNX graph
    (OpenVINO serves it) and the int8 one (if it passes the accuracy rule on the same split);
    tokenizer files only where missing (they are the same)."""
    if staging.exists():
        shutil.rmtree(staging)
    export_model(
        run_dir,
        staging,
        fp16=True,
        model_name=STUDENT_NAME,
        onnx=True,
        onnx_check=data,
        calibration_data=data,
        calibration_from=calibration_from,
        base_rates="jigsaw" if calibration_from is None else None,
    )
    for graph in ONNX_FILES.values():  # a stale graph would be refused
        (out / graph).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    for item in staging.iterdir():
        if item.name in ARTIFACT_FILES or (
            item.name in TOKENIZER_FILES and not (out / item.name).exists()
        ):
            shutil.copyfile(item, out / item.name)


def write_csv(path: Path, dataset: TextDataset) -> Path:
    """`dataset` as a Jigsaw-format CSV at `path`."""
    assert dataset.labels is not None
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "comment_text", *dataset.label_names])
        for row_id, text, labels in zip(dataset.ids, dataset.texts, dataset.labels, strict=True):
            writer.writerow([row_id, text, *(int(v) for v in labels)])
    return path
