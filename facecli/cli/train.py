"""``facecli train`` and ``facecli export``: option parsing and rendering only; the work is in ``facecli.train``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, List, Optional

import typer

from facecli.cli.common import UI
from facecli.cli.options import BgrOpt, JsonOpt, MeanOpt, QuietOpt, StdOpt, VerboseOpt, out_option, registry_help

if TYPE_CHECKING:  # pragma: no cover
    from rich.progress import Progress, TaskID

Opt = typer.Option
BACKBONE_HELP = "Backbone architecture."
HEAD_HELP = "Margin head or embedding loss (papers and parameters: --list-heads)."
OPTIMIZER_HELP = "Optimiser (default sgd: momentum 0.9, weight decay 5e-4)."
SCHEDULE_HELP = "LR schedule (default poly, arcface_torch's)."


def _backbone_help() -> str:
    from facecli.nn.backbones import BACKBONES

    return f"{BACKBONE_HELP} One of: {', '.join(BACKBONES.names())}."


def _optimizer_help() -> str:
    from facecli.train.optimizers import OPTIMIZERS

    return f"{OPTIMIZER_HELP} One of: {', '.join(OPTIMIZERS.names())}."


def _schedule_help() -> str:
    from facecli.train.schedule import SCHEDULES

    return f"{SCHEDULE_HELP} One of: {', '.join(SCHEDULES.names())}."


def _head_help() -> str:
    from facecli.nn.heads import HEADS

    return f"{HEAD_HELP} One of: {', '.join(HEADS.names())}."


def train(
    ctx: typer.Context,
    args: Annotated[Optional[List[str]], typer.Argument(
        help="DATA (a .rec, its folder, or a folder of aligned identity sub-folders), then key=value overrides "
             "such as optim.lr=0.05 head.m=0.4. With --resume: RUN instead of DATA.", show_default=False)] = None,
    out: Annotated[Optional[Path], out_option("Run directory (checkpoints, metrics.csv, config.toml).")] = None,
    backbone: Annotated[Optional[str], Opt(help=BACKBONE_HELP)] = None,
    head: Annotated[Optional[str], Opt(help=HEAD_HELP)] = None,
    batch_size: Annotated[Optional[int], Opt("--batch-size", help="Images per process per micro-batch.")] = None,
    steps: Annotated[Optional[int], Opt(help="Optimiser steps (default 100).")] = None,
    epochs: Annotated[Optional[float], Opt(help="Train this many epochs instead of --steps.")] = None,
    lr: Annotated[Optional[float], Opt(help="Base learning rate.")] = None,
    seed: Annotated[Optional[int], Opt(help="Seed of initialisation, data order and flips.")] = None,
    config: Annotated[Optional[Path], Opt("--config", "-c", help="A .toml or .yaml config file.")] = None,
    resume: Annotated[bool, Opt("--resume", help="Continue the run in --out (or RUN) exactly where it stopped.")] = False,
    partial_fc: Annotated[Optional[float], Opt("--partial-fc", help="Partial FC with this sample rate (0.1-1.0).")] = None,
    precision: Annotated[Optional[str], Opt("--precision", help="fp32, fp16 (AMP with loss scaling, GPU) or bf16 (AMP, GPU or CPU).")] = None,
    fp16: Annotated[bool, Opt("--fp16", help="Same as --precision fp16.")] = False,
    bf16: Annotated[bool, Opt("--bf16", help="Same as --precision bf16.")] = False,
    channels_last: Annotated[bool, Opt("--channels-last", help="NHWC memory format (faster convolutions under AMP on GPUs).")] = False,
    grad_checkpoint: Annotated[bool, Opt("--grad-checkpoint", help="Recompute block activations in backward (iresnet, vit): less memory.")] = False,
    optimizer: Annotated[Optional[str], Opt(help=OPTIMIZER_HELP)] = None,
    schedule: Annotated[Optional[str], Opt(help=SCHEDULE_HELP)] = None,
    warmup_steps: Annotated[Optional[int], Opt("--warmup-steps", help="Linear LR warm-up steps.")] = None,
    embedding_size: Annotated[Optional[int], Opt("--embedding-size", help="Embedding dimension (default 512).")] = None,
    workers: Annotated[Optional[int], Opt(help="DataLoader worker processes.")] = None,
    val: Annotated[Optional[List[Path]], Opt("--val", help="Verification .bin file (repeatable).")] = None,
    val_every: Annotated[Optional[int], Opt("--val-every", help="Evaluate --val every N steps (and at the end).")] = None,
    val_split: Annotated[Optional[float], Opt(
        "--val-split", help="Hold this fraction of the people out of training; validate on pairs of them.")] = None,
    init: Annotated[Optional[Path], Opt(
        "--init", help="Fine-tune a pretrained backbone: an ONNX recognition model, a facecli run/checkpoint or an "
                       "arcface_torch .pt (sets the fine-tuning defaults, see docs/train.md).")] = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    bgr: BgrOpt = None,
    augment: Annotated[Optional[str], Opt(
        "--augment", help="Comma-separated: lowres, crop, photometric, grayscale (options: augment.KEY=VALUE).")] = None,
    freeze_backbone_steps: Annotated[Optional[int], Opt("--freeze-backbone-steps", help="Train only the head for the first N steps.")] = None,
    backbone_lr_scale: Annotated[Optional[float], Opt("--backbone-lr-scale", help="Backbone LR = lr × this (e.g. 0.1 when fine-tuning).")] = None,
    head_opt: Annotated[Optional[List[str]], Opt("--head-opt", help="A head parameter, key=value (repeatable), e.g. m=0.4.")] = None,
    easy_margin: Annotated[bool, Opt("--easy-margin", help="ArcFace: apply the margin only where cos θ > 0.")] = False,
    neck: Annotated[Optional[str], Opt("--neck", help="Architecture option around the backbone (e.g. groupface).")] = None,
    accumulate: Annotated[Optional[int], Opt("--accumulate", help="Gradient accumulation micro-batches per step.")] = None,
    clip_grad: Annotated[Optional[float], Opt("--clip-grad", help="Backbone gradient-norm clip (0 = off; default 5).")] = None,
    compile_: Annotated[bool, Opt("--compile", help="torch.compile the backbone.")] = False,
    skip_bad_batches: Annotated[bool, Opt("--skip-bad-batches", help="Skip batches with NaN/Inf instead of stopping.")] = False,
    checkpoint_every: Annotated[Optional[int], Opt("--checkpoint-every", help="Save the full state every N steps.")] = None,
    log_every: Annotated[Optional[int], Opt("--log-every", help="Write a metrics row every N steps.")] = None,
    device: Annotated[Optional[str], Opt(help="auto, cpu, cuda, cuda:1 ...")] = None,
    tensorboard: Annotated[bool, Opt("--tensorboard", help="Also write TensorBoard events (needs tensorboard).")] = False,
    dry_run: Annotated[bool, Opt("--dry-run", help="Print the resolved config and exit.")] = False,
    list_heads: Annotated[bool, Opt("--list-heads", help="List the heads and losses with their papers and defaults.")] = False,
    json_: JsonOpt = False,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Train a face-recognition model (ArcFace and its family) on a .rec or an image folder."""
    ui = UI(json=json_, verbose=verbose, quiet=quiet)
    if list_heads:
        _list_heads(ui)
        return
    from facecli.train import TrainRequest, resolve
    from facecli.train.config import to_toml

    request = TrainRequest.from_arguments(args or [], **ctx.params)
    cfg = resolve(request, dry_run=dry_run, feedback=ui)
    if dry_run:
        ui.result(cfg.to_dict(), lambda console: console.print(to_toml(cfg), markup=False, highlight=False))
        return
    _run(cfg, request.resume, ui)


def _run(cfg: Any, resume: bool, ui: UI) -> None:
    from facecli.nn.distributed import rank
    from facecli.train import run

    progress = _ProgressCallback(ui)
    try:
        summary = run(cfg, callbacks=[progress], resume=resume, feedback=ui)
    finally:
        progress.close()
    if rank() > 0:
        return

    def render(console: Any) -> None:
        from rich.table import Table

        table = Table(title=f"facecli train: {summary['run']}", show_header=False)
        for key in ("steps", "epochs", "final_loss", "samples_per_s", "initial_accuracy", "best_accuracy",
                    "skipped_batches", "num_classes", "num_images", "world_size", "model", "checkpoint"):
            value = summary.get(key)
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
        console.print(table)

    ui.result(summary, render)


class _ProgressCallback:
    """A rich bar on stderr (rank 0 only) with loss, LR, samples/s and ETA: a :class:`facecli.train.callbacks.Callback`
    by its methods, so that defining it does not import the trainer when the CLI starts."""

    def on_validation_end(self, trainer: Any, result: Any) -> None:
        """Validation reaches the bar through the step's metrics."""

    def __init__(self, ui: UI) -> None:
        self.ui = ui
        self.bar: Progress | None = None
        self.task: TaskID | None = None

    def on_train_start(self, trainer: Any) -> None:
        if not (self.ui.show_progress and trainer.is_main):
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]} lr {task.fields[lr]} {task.fields[speed]}"),
                            TimeRemainingColumn(), console=self.ui.err)
        self.bar.start()
        self.task = self.bar.add_task("train", total=trainer.total_steps, completed=trainer.step,
                                      loss="-", lr="-", speed="")

    def on_step_end(self, trainer: Any, metrics: Mapping[str, Any]) -> None:
        if self.bar is None or self.task is None:
            return
        fields: dict[str, Any] = {"lr": f"{metrics['lr']:.3g}"}
        if metrics.get("logged"):
            fields["loss"] = f"{metrics['loss']:.4f}"
            if "samples_per_s" in metrics:
                fields["speed"] = f"{metrics['samples_per_s']:.1f} img/s"
        self.bar.update(self.task, completed=trainer.step, **fields)

    def on_train_end(self, trainer: Any, summary: dict[str, Any]) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def _list_heads(ui: UI) -> None:
    from facecli.train import head_catalogue

    rows = head_catalogue()

    def render(console: Any) -> None:
        from rich.table import Table

        table = Table(title="facecli heads (facecli train --head NAME --head-opt key=value)")
        for column in ("name", "kind", "paper", "year", "Partial FC", "parameters (defaults)"):
            table.add_column(column, overflow="fold")
        for r in rows:
            params = ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["defaults"].items())
            table.add_row(r["name"], r["kind"], r["paper"], str(r["year"] or ""), "yes" if r["partial_fc"] else "no",
                          params)
        console.print(table)

    ui.result(rows, render)


def export(
    source: Annotated[Path, typer.Argument(help="A run directory, a facecli checkpoint/model file, or an arcface_torch .pt.")],
    target: Annotated[Path, typer.Argument(help="The .onnx file to write.")],
    best: Annotated[bool, Opt("--best", help="Export the run's best.pt (best validation accuracy).")] = False,
    opset: Annotated[int, Opt(help="ONNX opset (11 or later).")] = 17,
    json_: JsonOpt = False,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Export a trained backbone to ONNX for insightface (model_zoo.get_model) and facecli eval/gallery."""
    from facecli.train.export import export_onnx

    ui = UI(json=json_, verbose=verbose, quiet=quiet)
    summary = export_onnx(source, target, which="best" if best else "last", opset=opset)

    def render(console: Any) -> None:
        console.print(f"wrote {summary['onnx']} ({summary['facecli.architecture']}, "
                      f"{summary['facecli.embedding_size']}-d, opset {opset}; max |ONNX - PyTorch| = "
                      f"{summary['max_abs_diff']:.2g})", highlight=False)

    ui.result(summary, render)


def register(app: typer.Typer) -> None:
    """Add ``train`` and ``export`` to the root app."""
    helps = registry_help(backbone=_backbone_help, head=_head_help, optimizer=_optimizer_help, schedule=_schedule_help)
    app.command("train", cls=helps, context_settings={"allow_interspersed_args": True})(train)
    app.command("export")(export)
