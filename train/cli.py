"""`tumor-train`: a thin click command over tumor_train.trainer.run."""

from __future__ import annotations

import os
import sys
import time
import warnings

import click
from click.core import ParameterSource

from tumor_runtime.core.command import FiniteFloat, fail, version_option
from tumor_runtime.core.contract import CROPS, MODEL_FILE, RESUME_FILE
from tumor_runtime.core.errors import EXIT_INTERRUPTED, EXIT_TERMINATED, UsageError
from tumor_train.architectures import ARCHITECTURES
from tumor_train.config import TrainConfig, flag

DEFAULTS = TrainConfig()


def int_range(field: str) -> click.IntRange:
    return click.IntRange(*TrainConfig.INT_RANGES[field])


def float_range(field: str) -> FiniteFloat:
    low, high, low_open = TrainConfig.FLOAT_RANGES[field]
    return FiniteFloat(low, high, low_open=low_open)


# Options that may differ when a run is resumed: where the data and the threads are on this machine.
RESUME_MAY_CHANGE = {"data", "threads", "out", "device"}


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--data",
    default=DEFAULTS.data,
    show_default=True,
    type=click.Path(file_okay=False),
    help="Dataset root: Train/ (or Training/), optional Validation/ and Testing/, one folder per class; "
    "or a plain folder of class folders.",
)
@click.option(
    "--out",
    "-o",
    default=None,
    type=click.Path(file_okay=False),
    help="Output folder for model.pth, model_quantized.pth, metrics.json, history.csv and plots "
    "[default: a new runs/<date-time>/]. Replacing the shipped model is explicit: --out artifacts.",
)
@click.option(
    "--arch",
    default=DEFAULTS.arch,
    show_default=True,
    type=click.Choice(list(ARCHITECTURES)),
    help="Architecture: " + "; ".join(f"{k}: {a.summary}" for k, a in ARCHITECTURES.items()) + ".",
)
@click.option(
    "--pretrained",
    type=click.Choice(["imagenet", "none"]),
    default=None,
    help="Start from torchvision's ImageNet weights (read from the torch hub cache, never downloaded) "
    "[default: imagenet for mobilenet_v2, none for the others].",
)
@click.option(
    "--pretrained-file",
    default=None,
    type=click.Path(dir_okay=False),
    help="A downloaded mobilenet_v2-b0353104.pth to place in the torch hub cache first (its hash is "
    "checked), for machines without network.",
)
@click.option(
    "--init",
    default=None,
    type=click.Path(dir_okay=False, exists=True),
    help="Start from the weights of a model.pth, e.g. artifacts/model.pth, to fine-tune the shipped model on "
    "your images (same --arch, --width and class folders).",
)
@click.option("--epochs", default=DEFAULTS.epochs, show_default=True, type=int_range("epochs"))
@click.option("--batch-size", default=DEFAULTS.batch_size, show_default=True, type=int_range("batch_size"))
@click.option(
    "--lr",
    default=DEFAULTS.lr,
    show_default=True,
    type=float_range("lr"),
    help="Peak AdamW learning rate (warm-up, then cosine decay).",
)
@click.option(
    "--width",
    default=DEFAULTS.width,
    show_default=True,
    type=int_range("width"),
    help="Channels of the compact model's stem.",
)
@click.option(
    "--size",
    "image_size",
    default=DEFAULTS.image_size,
    show_default=True,
    type=int_range("image_size"),
    help="Square input side in pixels; stored with the model, which the runtime reads (alexnet: 227).",
)
@click.option(
    "--crop",
    default=DEFAULTS.crop,
    show_default=True,
    type=click.Choice(CROPS),
    help="brain: cut each slice to the square around the head before resizing (the runtime does the "
    "same, from the model's metadata); none: the whole frame.",
)
@click.option(
    "--val-fraction",
    default=DEFAULTS.val_fraction,
    show_default=True,
    type=float_range("val_fraction"),
    help="Validation share when there is no Validation folder (duplicates grouped). 0 = final fit: "
    "every image trains for --epochs and the last weight average is the model.",
)
@click.option(
    "--val-list",
    default=None,
    type=click.Path(dir_okay=False, exists=True),
    help="Text file naming the validation images (paths relative to --data, one a line): a fixed "
    "split, e.g. to compare recipes on the same images.",
)
@click.option(
    "--dup-threshold",
    default=DEFAULTS.dup_threshold,
    show_default=True,
    type=float_range("dup_threshold"),
    help="Thumbnail correlation at which two images count as near-duplicates.",
)
@click.option("--seed", default=DEFAULTS.seed, show_default=True, type=int)
@click.option(
    "--bf16/--no-bf16", default=DEFAULTS.bf16, show_default=True, help="bf16 autocast on CPUs with native bf16."
)
@click.option(
    "--device",
    default=DEFAULTS.device,
    show_default=True,
    help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N. Under torchrun each process uses "
    "its LOCAL_RANK's GPU (NCCL), or the CPU (gloo).",
)
@click.option(
    "--threads",
    default=DEFAULTS.threads,
    show_default=True,
    type=int_range("threads"),
    help="Torch threads; 0 = all cores available.",
)
@click.option(
    "--max-per-class",
    default=DEFAULTS.max_per_class,
    show_default=True,
    type=int_range("max_per_class"),
    help="Use at most this many training images per class (quick trials); 0 = all.",
)
@click.option(
    "--teacher",
    "teachers",
    multiple=True,
    type=click.Path(exists=True),
    help="A model.pth to distil from (repeat for an ensemble, e.g. the fold models of a --cv run): the loss "
    "also matches the teachers' mean softened probabilities on each augmented batch. With --cv, the folder of "
    "a --cv run of the teacher on the same folds: fold k distils from its fold-k/model.pth, which never saw "
    "fold k's validation images.",
)
@click.option(
    "--distill-weight",
    default=DEFAULTS.distill_weight,
    show_default=True,
    type=float_range("distill_weight"),
    help="Share of the distillation term in the loss.",
)
@click.option(
    "--distill-temperature",
    default=DEFAULTS.distill_temperature,
    show_default=True,
    type=float_range("distill_temperature"),
    help="Softening temperature of the distillation term.",
)
@click.option(
    "--cv",
    "folds",
    default=0,
    type=click.IntRange(0, 20),
    help="Grouped K-fold cross-validation instead of one run: trains K models into OUT/fold-<k>/ and "
    "writes OUT/cv.json (mean ± std macro F2, accuracy, tumor sensitivity) and cv.png; 0 = off.",
)
@click.option(
    "--cv-fold",
    "only_folds",
    multiple=True,
    type=click.IntRange(1, 20),
    help="With --cv K: train only fold N of K (repeat for several), e.g. folds 1-2 and 3-5 in two processes or on "
    "two machines into the same --out; then the same --cv command without --cv-fold reuses them and writes the "
    "complete cv.json.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run in --out from its checkpoint.pth, with the configuration it was started "
    "with (only --data, --threads and --device may change).",
)
@click.option("--overwrite", is_flag=True, help="Train into an --out that already holds a run, replacing it.")
@version_option("tumor-train")
def main(resume: bool, overwrite: bool, folds: int, only_folds: tuple[int, ...], **options) -> None:
    """Train a brain-tumor MRI classifier (glioma, meningioma, notumor, pituitary).

    Selects the epoch with the best validation macro F2 and writes model.pth, the dynamic
    int8 model_quantized.pth, metrics.json, history.csv and plots into --out.
    """
    from tumor_runtime.core.command import guarded

    try:
        guarded(train_command, resume, overwrite, (folds, only_folds), options)
    except KeyboardInterrupt:  # Ctrl-C while torch is still loading: 130, not click's "Aborted!" and 1
        click.echo("Stopped: interrupted before training started", err=True)
        sys.exit(EXIT_INTERRUPTED)


def train_command(resume: bool, overwrite: bool, cv: tuple[int, tuple[int, ...]], options: dict) -> None:
    from tumor_runtime.core.command import require_extra
    from tumor_runtime.core.signals import interrupted_exit_code, raise_on_sigterm

    require_extra("train", "tumor-train")
    raise_on_sigterm()
    from tumor_train.distributed import launched_by_torchrun
    from tumor_train.trainer import Interrupted, run

    pretrained_file = options.pop("pretrained_file")
    options["init"] = os.path.abspath(options["init"]) if options["init"] else ""
    if not resume:
        architecture_defaults(options)
    if pretrained_file:
        from tumor_train.pretrained import place

        click.echo(f"ImageNet weights placed at {place(pretrained_file)}", err=True)
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"
    folds, only_folds = cv
    if folds == 1:
        fail("--cv needs at least 2 folds")
    if only_folds and not folds:
        fail("--cv-fold picks folds of a --cv K run: give --cv K too")
    if any(k > folds for k in only_folds):
        fail(f"--cv-fold {max(only_folds)}: --cv {folds} has folds 1 to {folds}")
    options["teachers"] = [os.path.abspath(t) for t in options["teachers"]]  # a list, as the checkpoint stores it
    folder = next((t for t in options["teachers"] if os.path.isdir(t)), None)
    if folder and not folds:
        fail(f"--teacher {folder} is a folder: a --cv folder of teachers goes with --cv; otherwise give a model.pth")
    if launched_by_torchrun() and not options["out"]:
        fail("under torchrun, give --out: every process must write to (and resume from) the same folder")
    try:
        if folds:
            return cross_validate(options, folds, overwrite, set(only_folds))
        cfg = resumed_config(options) if resume else new_config(options, overwrite)
        metrics = run(cfg, resume=resume)
    except Interrupted as exc:
        click.echo(f"Stopped: {exc}", err=True)
        sys.exit(EXIT_TERMINATED if exc.terminated else EXIT_INTERRUPTED)
    except KeyboardInterrupt as exc:  # during data preparation: nothing to keep
        click.echo("Stopped: interrupted before training started", err=True)
        sys.exit(interrupted_exit_code(exc))
    if "validation" in metrics:  # absent on the other ranks of a torchrun: rank 0 reports
        for line in finished_lines(metrics, cfg):
            click.echo(line)


def split_line(name: str, scores: dict) -> str:
    sensitivity = scores["tumor_sensitivity"]
    return (
        f"{name} macro F2 {scores['f2_macro']:.4f}, accuracy {scores['accuracy']:.4f}, tumor sensitivity "
        f"{'n/a' if sensitivity is None else format(sensitivity, '.4f')}"
    )


def finished_lines(metrics: dict, cfg: TrainConfig) -> list[str]:
    """What a finished run prints: its scores (validation, and Testing/ when the data has one), where the
    outputs are, and the command that comes next."""
    val, test = metrics["validation"], metrics.get("test")
    if val is None:
        epochs = f"{cfg.epochs} epoch{'s' * (cfg.epochs != 1)}"
        lines = [f"Final fit: {epochs} on every image, no validation split."]
    else:
        lines = [f"Best epoch {metrics['best_epoch']}: {split_line('validation', val)}."]
    if test is not None:
        lines.append(f"Testing/ ({metrics['data']['test_images']} images): {split_line('test', test)}.")
    model = os.path.join(cfg.out, MODEL_FILE)
    evaluate = "" if val is not None else " --evaluate LABELLED_DIR"  # a final fit records no validation split
    lines.append(
        f"Wrote model.pth, metrics.json and plots to {cfg.out}/. "
        f"Next: tumor-export --checkpoint {model} --int8{evaluate}"
    )
    return lines


def architecture_defaults(options: dict) -> None:
    """Fill in what the architecture decides (its fixed input side, whether it starts from ImageNet), and
    refuse a --size it cannot take or --pretrained imagenet where there are no weights, before any data is read."""
    from tumor_train.architectures import check_input_size

    ctx = click.get_current_context()
    arch = ARCHITECTURES[options["arch"]]
    if arch.input_size and ctx.get_parameter_source("image_size") != ParameterSource.COMMANDLINE:
        options["image_size"] = arch.input_size
    check_input_size(options["arch"], options["image_size"])
    if options["pretrained"] is None:
        options["pretrained"] = "imagenet" if arch.pretrained and not options["init"] else "none"
    if options["pretrained"] == "imagenet" and not arch.pretrained:
        raise UsageError(
            f"--pretrained imagenet: there are no ImageNet weights for --arch {options['arch']} "
            f"(only for {', '.join(k for k, a in ARCHITECTURES.items() if a.pretrained)})"
        )
    if options["pretrained"] == "imagenet" and options["init"]:
        raise UsageError("--init and --pretrained imagenet both set the starting weights: give one")


def cross_validate(options: dict, folds: int, overwrite: bool, only_folds: set[int]) -> None:
    from tumor_train.cv import run_cv

    if options["val_list"]:
        raise UsageError("--val-list with --cv: the folds choose the validation images; give one of them")
    cfg = TrainConfig(
        **TrainConfig.known(options | {"out": options["out"] or f"runs/cv-{time.strftime('%Y%m%d-%H%M%S')}"})
    )
    report = run_cv(cfg, folds, overwrite, only_folds)
    summary, done = report["summary"], [r["fold"] for r in report["folds"]]

    def figure(key: str) -> str:  # mean ± sample std; one fold has no spread to give
        stat = summary[key]
        return f"{stat['mean']:.4f}" + (f" ± {stat['std']:.4f}" if len(done) > 1 else "")

    if report["complete"]:
        scope, rest = f"{folds}-fold grouped CV", ""
    else:
        scope = f"fold{'s' * (len(done) > 1)} {', '.join(map(str, done))} of {folds}"
        rest = f"; once every fold is trained, the same --cv {folds} command without --cv-fold writes the complete one"
    click.echo(
        f"{scope}: macro F2 {figure('f2_macro')}, accuracy {figure('accuracy')}, tumor sensitivity "
        f"{figure('tumor_sensitivity')}. Report: {cfg.out}/cv.json{rest}"
    )


def new_config(options: dict, overwrite: bool) -> TrainConfig:
    from pathlib import Path

    out = options["out"] or f"runs/{time.strftime('%Y%m%d-%H%M%S')}"
    if not overwrite and any((Path(out) / name).exists() for name in (MODEL_FILE, RESUME_FILE)):
        raise UsageError(
            f"{out} already holds a training run: --resume continues it, --overwrite replaces it, "
            "or choose another --out"
        )
    return TrainConfig(**TrainConfig.known(options | {"out": out}))


def resumed_config(options: dict) -> TrainConfig:
    """The configuration saved in OUT/checkpoint.pth; options given explicitly must agree with it."""
    from pathlib import Path

    from tumor_train.model_file import read_checkpoint
    from tumor_train.trainer import CHECKPOINT

    if not options["out"]:
        raise UsageError("--resume needs --out: the run folder that holds checkpoint.pth")
    from tumor_runtime.core.contract import FOLD_RECORD

    fold = Path(options["out"]) / FOLD_RECORD
    if fold.is_file():
        raise UsageError(
            f"{options['out']} is a fold of a --cv run: resumed alone it would train on a new split "
            f"of its own validation images; run the same tumor-train --cv command with --out "
            f"{Path(options['out']).parent} again, which continues it"
        )
    saved = TrainConfig.known(read_checkpoint(Path(options["out"]) / CHECKPOINT)["config"])
    ctx = click.get_current_context()
    explicit = {k for k in options if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
    conflicts = [
        f"{flag(k)} {options[k]} (the run has {saved[k]})"
        for k in sorted(explicit)
        if k in saved and k not in RESUME_MAY_CHANGE and options[k] != saved[k]
    ]
    if conflicts:
        raise UsageError(
            f"--resume continues the run as it was configured; these options differ: {'; '.join(conflicts)}"
        )
    changes = {k: options[k] for k in RESUME_MAY_CHANGE & explicit}
    return TrainConfig(**(TrainConfig.known(saved) | changes | {"out": options["out"]}))
