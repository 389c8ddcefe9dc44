"""`tumor-train`: a thin click command over tumor_train.trainer.run."""

from __future__ import annotations

import sys
import warnings
from dataclasses import fields

import click

from tumor_train.config import TrainConfig

DEFAULTS = TrainConfig()


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--data", default=DEFAULTS.data, show_default=True, type=click.Path(file_okay=False),
              help="Dataset root: Train/ (or Training/), optional Validation/ and Testing/, one folder per class; "
                   "or a plain folder of class folders.")
@click.option("--out", default=DEFAULTS.out, show_default=True, type=click.Path(file_okay=False),
              help="Output folder for model.pth, model_quantized.pth, metrics.json, history.csv and plots.")
@click.option("--arch", default=DEFAULTS.arch, show_default=True,
              help="Architecture: compact (~0.9M parameters at width 40) or alexnet (the ~58M reference).")
@click.option("--epochs", default=DEFAULTS.epochs, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=DEFAULTS.batch_size, show_default=True, type=click.IntRange(1))
@click.option("--lr", default=DEFAULTS.lr, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Peak AdamW learning rate (warm-up, then cosine decay).")
@click.option("--width", default=DEFAULTS.width, show_default=True, type=click.IntRange(4),
              help="Channels of the compact model's stem.")
@click.option("--val-fraction", default=DEFAULTS.val_fraction, show_default=True,
              type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Validation share when there is no Validation folder (duplicates grouped).")
@click.option("--dup-threshold", default=DEFAULTS.dup_threshold, show_default=True, type=click.FloatRange(0, 1),
              help="Thumbnail correlation at which two images count as near-duplicates.")
@click.option("--seed", default=DEFAULTS.seed, show_default=True, type=int)
@click.option("--bf16/--no-bf16", default=DEFAULTS.bf16, show_default=True,
              help="bf16 autocast on CPUs with native bf16.")
@click.option("--threads", default=DEFAULTS.threads, show_default=True, type=click.IntRange(0),
              help="Torch threads; 0 = all cores available.")
@click.option("--max-per-class", default=DEFAULTS.max_per_class, show_default=True, type=click.IntRange(0),
              help="Use at most this many training images per class (quick trials); 0 = all.")
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.pth.")
def main(resume: bool, **options) -> None:
    """Train a brain-tumour MRI classifier (glioma, meningioma, notumor, pituitary).

    Selects the epoch with the best validation macro F2 and writes model.pth, the dynamic
    int8 model_quantized.pth, metrics.json, history.csv and plots into --out.
    """
    from tumor_train.models import ARCHITECTURES

    if options["arch"] not in ARCHITECTURES:
        fail(f"unknown --arch {options['arch']!r}; choose one of: {', '.join(ARCHITECTURES)}")
    known = {f.name for f in fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in options.items() if k in known})
    from tumor_train.checkpoint import CheckpointError
    from tumor_train.data import DataError
    from tumor_train.trainer import Interrupted, run

    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"
    try:
        metrics = run(cfg, resume=resume)
    except (DataError, CheckpointError) as exc:
        fail(str(exc))
    except Interrupted as exc:
        click.echo(f"Stopped: {exc}", err=True)
        sys.exit(130)
    val = metrics["validation"]
    click.echo(f"Best epoch {metrics['best_epoch']}: validation macro F2 {val['f2_macro']:.4f}, accuracy "
               f"{val['accuracy']:.4f}, tumour sensitivity {val['tumor_sensitivity']}. Outputs in {cfg.out}/")


def fail(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(2)
