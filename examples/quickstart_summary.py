"""Summary table of a quick-start run (examples/quickstart.sh): what each step produced, read from its files.

    python examples/quickstart_summary.py OUTDIR [SECONDS]
"""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from facecli.gallery.store import Gallery


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def read_metrics(run: Path) -> list[dict]:
    path = run / "metrics.csv"
    return list(csv.DictReader(path.open())) if path.is_file() else []


def pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def main(out: Path, seconds: str = "") -> None:
    rows: list[tuple[str, str, str]] = []

    manifest = out / "aligned" / "manifest.csv"
    statuses = Counter(row["status"] for row in csv.DictReader(manifest.open())) if manifest.is_file() else Counter()
    rows.append(("align", ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())), "aligned/"))

    pack = read_json(out / "pack" / "pack.json")
    rows.append(("pack", f"{pack.get('num_images', '?')} images of {pack.get('num_classes', '?')} people", "pack/train.rec"))

    metrics = [r for r in read_metrics(out / "run") if r.get("loss")]
    loss = f"loss {float(metrics[0]['loss']):.2f} -> {float(metrics[-1]['loss']):.2f}" if metrics else "-"
    rows.append(("train (from scratch)", f"{metrics[-1]['step'] if metrics else '?'} steps, {loss}", "run/"))

    tuned = read_metrics(out / "finetune")
    val = [float(r["val_heldout"]) for r in tuned if r.get("val_heldout")]
    rows.append((
        "train (fine-tune)",
        f"{tuned[-1]['step'] if tuned else '?'} steps from the pretrained model; held-out accuracy "
        f"{pct(val[0]) if val else '-'} -> {pct(val[-1]) if val else '-'}",
        "finetune/",
    ))

    sizes = [f"{p.name} {p.stat().st_size / 1e6:.1f} MB" for p in (out / "model.onnx", out / "finetuned.onnx")
             if p.is_file()]
    rows.append(("export", ", ".join(sizes) or "missing", "model.onnx, finetuned.onnx"))

    evaluated = [("pretrained", (read_json(out / "eval-pretrained" / "report.json").get("results") or [{}])[0])]
    for r in read_json(out / "eval" / "report.json").get("results") or []:
        evaluated.append(("from scratch" if Path(r.get("model", "")).name == "model.onnx" else "fine-tuned", r))
    for name, r in evaluated:
        rows.append((
            f"eval ({name})",
            f"accuracy {pct(r.get('accuracy'))} +- {pct(r.get('accuracy_std'))}, AUC {pct(r.get('auc'))}",
            "eval-pretrained/" if name == "pretrained" else "eval/report.json",
        ))

    gallery = Gallery.load(out / "gallery.npz")
    t = gallery.threshold or {}
    rows.append((
        "gallery calibrate (pretrained)",
        f"{gallery.size} people enrolled; cosine threshold {t.get('threshold', float('nan')):.6f} for FPIR "
        f"{t.get('target')} on {t.get('n_probes')} stranger photos",
        "gallery.npz",
    ))

    enrolled = set(gallery.identities.tolist())
    found = mated = rejected = strangers = 0
    for row in csv.DictReader((out / "search.csv").open()):
        person = Path(row["probe"]).parent.name
        if person in enrolled:
            mated += 1
            found += row["decision"] == person
        else:
            strangers += 1
            rejected += row["decision"] == "unknown"
    rows.append(("gallery search", f"found {found}/{mated} enrolled, rejected {rejected}/{strangers} strangers", "search.csv"))

    report = read_json(out / "gallery-eval" / "report.json")
    at = report.get("at_threshold") or {}
    rows.append((
        "gallery evaluate",
        f"rank-1 {pct(report.get('rank1'))}; at the threshold DIR {pct(at.get('dir'))}, FPIR {pct(at.get('fpir'))}",
        "gallery-eval/",
    ))

    table = Table(title=f"facecli quick start{f' ({seconds} s)' if seconds else ''} - outputs in {out}")
    table.add_column("step")
    table.add_column("result")
    table.add_column("file")
    for row in rows:
        table.add_row(*row)
    console = Console()
    console.print(table)
    console.print(
        "The model trained from scratch for a minute on 16 people is a smoke test: expect chance-level numbers. The "
        "pretrained MobileFaceNet recognises faces; the short fine-tune adapts it to the training people (on so few "
        "photos and steps, expect it to stay close to the pretrained model). See docs/tutorial.md.",
        highlight=False,
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "")
