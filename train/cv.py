"""Grouped K-fold cross-validation: `tumor-train --cv K`.

The training images are decoded and grouped once (duplicates and near-duplicates stay in
one fold, each class spread evenly); then one ordinary run per fold (`trainer.train_on`)
writes OUT/fold-<k>/. cv.json holds per-fold and mean ± std macro F2, accuracy, tumor
sensitivity and best epoch; cv.png plots them. Each fold folder holds fold.json, what the
fold is (its number, K, the recipe, its files); run again, a finished fold with the same record
is reused and an interrupted one resumes from its checkpoint, and a folder whose record differs
is refused (or, with --overwrite, trained again): never a fold of another split or recipe.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from tumor_runtime.core.contract import CV_REPORT, FOLD_RECORD, METRICS, MODEL_FILE
from tumor_runtime.core.errors import UsageError
from tumor_runtime.core.fileio import atomic_write_text
from tumor_runtime.core.signals import Terminated
from tumor_train.config import TrainConfig, flag
from tumor_train.data import PreparedData, class_names, find_splits, grouping_images, load_split, relative_to_root
from tumor_train.dedup import duplicate_groups, grouped_kfold
from tumor_train.distributed import launched_by_torchrun, setup
from tumor_train.trainer import CHECKPOINT, Interrupted, check_writable, train_on

FIELDS = ("f2_macro", "accuracy", "tumor_sensitivity")
PER_MACHINE = ("out", "data", "threads", "device")  # options that may change between reruns of one --cv


def fold_identity(cfg: TrainConfig, folds: int, k: int, train_files: list[str], val_files: list[str]) -> dict:
    """The fold as a JSON-ready record: its place among K, the recipe, and which files train and validate."""
    recipe = {key: value for key, value in asdict(cfg).items() if key not in PER_MACHINE}
    names = hashlib.sha256("\n".join(sorted(train_files)).encode()).hexdigest()
    return json.loads(
        json.dumps(
            {"fold": k, "folds": folds, "recipe": recipe, "train_files_sha256": names, "val_files": sorted(val_files)}
        )
    )


def fold_difference(saved: dict, identity: dict) -> str:
    """What the fold in a folder is, said against the fold this run wants there."""
    if not saved:
        return "a fold of an older run (it has no fold record)"
    if saved.get("folds") != identity["folds"]:
        return f"a fold of a {saved.get('folds')}-fold run"
    recipe = saved.get("recipe", {})
    if recipe != identity["recipe"]:
        return "a fold trained with other options: " + ", ".join(
            f"{flag(key)} {recipe.get(key)}" for key in identity["recipe"] if recipe.get(key) != identity["recipe"][key]
        )
    return "a fold of other images"


def fold_teachers(teachers: list[str], identity: dict) -> list[str]:
    """The teachers of one fold: a model.pth as given, and for a folder (a --cv run of the teacher) its
    fold-<k>/model.pth, which must be the same fold (K and validation files): a teacher that trained on this
    fold's validation images would leak them into the student's score. UsageError otherwise."""
    chosen = []
    for teacher in teachers:
        if not Path(teacher).is_dir():
            chosen.append(teacher)
            continue
        fold = Path(teacher) / f"fold-{identity['fold']}"
        record = fold / FOLD_RECORD
        saved = json.loads(record.read_text()) if record.is_file() else {}
        if not (fold / METRICS).is_file() or not (fold / MODEL_FILE).is_file():
            raise UsageError(f"--teacher {teacher}: its {fold.name} is not finished (no {METRICS} and {MODEL_FILE})")
        if saved.get("folds") != identity["folds"] or saved.get("val_files") != identity["val_files"]:
            raise UsageError(
                f"--teacher {teacher}: its {fold.name} validated other images than this run's fold "
                f"{identity['fold']} (another K, --seed or data): its model may have trained on them"
            )
        chosen.append(str(fold / MODEL_FILE))
    return chosen


def fold_plan(folder: Path, identity: dict, overwrite: bool) -> str:
    """ "reuse" a finished fold, "resume" an interrupted one, or "train" it; UsageError for a folder that holds
    another fold (other K, recipe or files), which reusing would mix into this cross-validation."""
    if overwrite or not folder.is_dir() or not any(folder.iterdir()):
        return "train"
    record = folder / FOLD_RECORD
    saved = json.loads(record.read_text()) if record.is_file() else {}
    if saved != identity:
        raise UsageError(
            f"{folder} holds {fold_difference(saved, identity)}: --overwrite trains every fold again, "
            "or choose another --out"
        )
    if (folder / METRICS).is_file():
        return "reuse"
    return "resume" if (folder / CHECKPOINT).is_file() else "train"


def fold_record(fold: int, metrics: dict) -> dict:
    val = metrics["validation"]
    return {
        "fold": fold,
        "best_epoch": metrics["best_epoch"],
        "validation_images": val["n_images"],
        **{key: val[key] for key in FIELDS},
    }


def summarize_folds(folds: list[dict]) -> dict:
    """Mean and (sample) standard deviation of every figure over the folds."""
    summary = {}
    for key in (*FIELDS, "best_epoch"):
        values = np.array([f[key] for f in folds if f[key] is not None], dtype=np.float64)
        summary[key] = {
            "mean": float(values.mean()) if len(values) else None,
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        }
    return summary


def check_folds(splits: list, labels: np.ndarray, classes: list[str]) -> None:
    """DataError unless every fold validates on some images and trains on every class."""
    from tumor_train.data import DataError

    for k, (train_idx, val_idx) in enumerate(splits, start=1):
        missing = [c for i, c in enumerate(classes) if not np.any(labels[train_idx] == i)]
        if len(val_idx) == 0 or missing:
            raise DataError(
                f"{len(splits)}-fold cross-validation needs more images: fold {k} would have "
                f"{len(val_idx)} validation images"
                + (f" and no training image of {', '.join(missing)}" if missing else "")
                + "; use fewer folds"
            )


def run_cv(cfg: TrainConfig, folds: int, overwrite: bool = False, only: set[int] | None = None) -> dict:
    """Train one model per fold into cfg.out/fold-<k>/ (or only the folds in `only`, so that several processes
    share the folds); returns (and writes) the cv.json record."""
    cfg.check()
    if launched_by_torchrun():
        raise UsageError("--cv runs its folds one after another in one process: start it without torchrun")
    out = Path(cfg.out)
    check_writable(out)
    place = setup(cfg.device)
    root = Path(cfg.data).absolute()
    train_dir = find_splits(root)["train"]
    assert train_dir is not None  # find_splits always finds the training folder
    classes = class_names(train_dir)
    everything = load_split(train_dir, classes, cfg.image_size, "train", cfg.max_per_class, cfg.crop)
    groups = duplicate_groups(everything.paths, grouping_images(everything, cfg), cfg.dup_threshold)
    splits = grouped_kfold(everything.labels, groups, folds, cfg.seed)
    check_folds(splits, everything.labels, classes)  # before the first fold trains, not after the second
    records = []
    for k, (train_idx, val_idx) in enumerate(splits, start=1):
        if only and k not in only:
            continue
        fold_cfg = replace(cfg, out=str(out / f"fold-{k}"))
        records.append(
            fold_record(
                k,
                run_fold(
                    fold_cfg, everything, (train_idx, val_idx), (k, folds), overwrite, place, root, train_dir, classes
                ),
            )
        )
        report = {
            "folds": records,
            "summary": summarize_folds(records),
            "k": folds,
            "config": asdict(cfg),
            "complete": len(records) == folds,
        }
        atomic_write_text(out / CV_REPORT, json.dumps(report, indent=2))
    try:
        plot_cv(records, out / "cv.png")
    except KeyboardInterrupt as exc:  # every fold is trained and cv.json written: only the figure is missing
        raise Interrupted(
            f"interrupted while drawing {out / 'cv.png'}; the {folds} folds and {out / 'cv.json'} are written: run "
            "the same tumor-train --cv command again to draw it (the folds are reused)",
            terminated=isinstance(exc, Terminated),
        ) from None
    return report


def run_fold(
    cfg: TrainConfig,
    everything,
    split: tuple,
    position: tuple[int, int],
    overwrite: bool,
    place,
    root: Path,
    train_dir: Path,
    classes: list[str],
) -> dict:
    """Reuse, resume or train fold k of K (`position`) into cfg.out; returns its metrics."""
    (train_idx, val_idx), (k, folds) = split, position
    folder, train, val = Path(cfg.out), everything.subset(train_idx), everything.subset(val_idx)
    val_files = [relative_to_root(p, root) for p in val.paths]
    identity = fold_identity(cfg, folds, k, [relative_to_root(p, root) for p in train.paths], val_files)
    plan = fold_plan(folder, identity, overwrite)
    if plan == "reuse":
        print(f"fold {k}/{folds}: reusing {folder / 'metrics.json'}")
        return json.loads((folder / METRICS).read_text())
    cfg = replace(cfg, teachers=fold_teachers(cfg.teachers, identity))  # the fold record keeps the folder as given
    print(
        f"fold {k}/{folds}: {len(train_idx)} train / {len(val_idx)} validation images"
        + (" (resuming its checkpoint)" if plan == "resume" else "")
    )
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / FOLD_RECORD, json.dumps(identity, indent=1))
    data = PreparedData(
        classes,
        train,
        val,
        None,
        root,
        train_dir,
        val_files,
        {"train_dir": str(train_dir), "cv_fold": k, "cv_folds": folds, "skipped_files": []},
    )
    try:
        return train_on(cfg, data, resume=plan == "resume", place=place)
    except Interrupted as exc:
        raise Interrupted(
            f"fold {k} of {folds}: {str(exc).split(';')[0]}; run the same tumor-train --cv {folds} "
            f"command again: finished folds are reused and fold {k} continues from its last "
            "checkpoint, if one was saved",
            terminated=exc.terminated,
        ) from None


def plot_cv(records: list[dict], path: Path) -> None:
    from tumor_train.plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(6, 3.5))  # pragma: no mutate (layout)
    x = np.arange(len(records))
    summary = summarize_folds(records)
    for i, key in enumerate(FIELDS):
        values = [r[key] if r[key] is not None else np.nan for r in records]
        mean, std = summary[key]["mean"], summary[key]["std"]
        label = f"{key.replace('_', ' ')}: {mean:.4f} ± {std:.4f}" if mean is not None else key.replace("_", " ")
        ax.bar(x + (i - 1) * 0.27, values, width=0.27, label=label)
    ax.set_xticks(x, [f"fold {r['fold']}" for r in records])
    ax.set_xlabel("fold (its own held-out validation part)")
    ax.set_ylabel("score")
    lows = [r[k] for r in records for k in FIELDS if r[k] is not None]
    ax.set_ylim(max(0.0, min(lows) - 0.06) if lows else 0, 1.0)
    ax.legend(fontsize=8, loc="lower left", title="mean ± std over folds", title_fontsize=8)
    ax.set_title(f"Grouped {len(records)}-fold cross-validation")
    save_figure(fig, path)
