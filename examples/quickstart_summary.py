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


def pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def main(out: Path, seconds: str = "") -> None:
    rows: list[tuple[str, str, str]] = []

    manifest = out / "aligned" / "manifest.csv"
    statuses = Counter(row["status"] for row in csv.DictReader(manifest.open())) if manifest.is_file() else Counter()
    rows.append(("align", ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())), "aligned/"))

    pack = read_json(out / "pack" / "pack.json")
    rows.append(("pack", f"{pack.get('num_images', '?')} images of {pack.get('num_classes', '?')} people", "pack/train.rec"))

    metrics = list(csv.DictReader((out / "run" / "metrics.csv").open())) if (out / "run" / "metrics.csv").is_file() else []
    loss = f"loss {float(metrics[0]['loss']):.2f} -> {float(metrics[-1]['loss']):.2f}" if metrics else "-"
    rows.append(("train", f"{metrics[-1]['step'] if metrics else '?'} steps, {loss}", "run/"))

    onnx = out / "model.onnx"
    rows.append(("export", f"{onnx.stat().st_size / 1e6:.1f} MB" if onnx.is_file() else "missing", "model.onnx"))

    results = read_json(out / "eval" / "report.json").get("results") or [{}]
    r = results[0]
    rows.append((
        "eval",
        f"accuracy {pct(r.get('accuracy'))} +- {pct(r.get('accuracy_std'))}, AUC {pct(r.get('auc'))}",
        "eval/report.json",
    ))

    gallery = Gallery.load(out / "gallery.npz")
    t = gallery.threshold or {}
    rows.append((
        "gallery calibrate",
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
        "A model trained for a minute on 16 people is a smoke test, not a face recognizer: expect chance-level "
        "numbers. Train longer on real data, or fine-tune a pretrained backbone (--init); see the README.",
        highlight=False,
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "")
