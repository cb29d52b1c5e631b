"""Readable results: rich tables, a comparison table across models, and ``--out`` files.

``--out DIR`` writes ``report.json`` (everything), ``report.csv`` (one row per model × benchmark), ``roc.png``
(one curve per model × benchmark on a log-FAR axis), ``pairs.csv`` (every verification pair's distance, cosine,
fold and decision, for error analysis) and, with ``--worst N``, ``worst_<model>_<benchmark>.jpg`` contact sheets
of the N hardest false accepts and false rejects. Values that were not computed print as "—", never as 0.0.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facecli.eval import ijb as ijb_lib
from facecli.eval import roc as roc_lib
from facecli.eval.runner import IJBRun, VerificationRun
from facecli.eval.verification import VerificationResult, fold_slices
from facecli.fileio import atomic_write_bytes, atomic_write_text
from facecli.jsonable import to_jsonable

TABLE_FARS: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


@dataclass
class Entry:
    """One model × benchmark result, whichever protocol produced it."""

    model: str
    benchmark: str
    verification: VerificationResult | None = None
    ijb: IJBRun | None = None
    run: VerificationRun | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "benchmark": self.benchmark, **self.info}
        if self.verification is not None:
            out["protocol"] = "verification"
            out.update(self.verification.to_dict())
            if self.run is not None:
                out["flip"] = self.run.flip
                out["no_face"] = list(self.run.no_face)
        if self.ijb is not None:
            out["protocol"] = "ijb"
            out["one_to_one"] = self.ijb.verification.to_dict()
            if self.ijb.identification is not None:
                out["one_to_n"] = self.ijb.identification.to_dict()
        return out


def pct(value: float | None, digits: int = 2) -> str:
    """``99.50`` for 0.995; "—" for anything not computed (never a misleading 0.0)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{100 * value:.{digits}f}"


def far_label(far: float) -> str:
    return f"{far:.0e}".replace("e-0", "e-")


# ------------------------------------------------------------------------------------------------ tables
def verification_table(entries: list[Entry], title: str):
    """Accuracy ± std and VAL from the folds; TAR (only at FARs some entry can resolve), AUC, EER from all pairs."""
    from rich.table import Table

    fars = [far for far in TABLE_FARS if any(_tar(e.verification, far) is not None for e in entries)]
    table = Table(title=title, title_justify="left")
    table.add_column("model", no_wrap=True)
    table.add_column("benchmark", no_wrap=True)
    for column in ["accuracy %", "VAL@1e-3 %", "threshold cos"] + [f"TAR@{far_label(f)} %" for f in fars]:
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("AUC %", justify="right", no_wrap=True)
    table.add_column("EER %", justify="right", no_wrap=True)
    for e in entries:
        r = e.verification
        assert r is not None
        table.add_row(
            e.model,
            e.benchmark,
            f"{pct(r.accuracy)} ± {pct(r.accuracy_std)}",
            pct(r.val),
            f"{r.threshold_cosine:.3f}",
            *[pct(_tar(r, far)) for far in fars],
            pct(r.auc, 3),
            pct(r.eer),
        )
    return table


def _tar(result: VerificationResult | None, far: float) -> float | None:
    if result is None:
        return None
    return next((p.tar for p in result.tar_at_far if p.far_target == far), None)


def ijb_table(entries: list[Entry], title: str):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in ("model", "benchmark", "config"):
        table.add_column(column)
    for far in ijb_lib.IJB_FAR_TARGETS:
        table.add_column(f"TAR@{far_label(far)}", justify="right")
    table.add_column("AUC %", justify="right")
    for e in entries:
        v = e.ijb.verification if e.ijb else None
        assert v is not None
        cells = [pct(v.tar_at_far[f]) + ("" if v.measurable(f) else "*") for f in ijb_lib.IJB_FAR_TARGETS]
        table.add_row(e.model, e.benchmark, v.flags.name, *cells, pct(v.auc, 4))
    table.caption = "* FAR below 1/#impostor pairs: read off at FPR 0, as insightface does"
    return table


def identification_table(entries: list[Entry], title: str):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in ("model", "benchmark", "mode", "gallery", "mated/non-mated"):
        table.add_column(column)
    for k in ijb_lib.RANKS:
        table.add_column(f"rank-{k} %", justify="right")
    for f in ijb_lib.FPIR_TARGETS:
        table.add_column(f"TPIR@{f:g} %", justify="right")
    for e in entries:
        ident = e.ijb.identification if e.ijb else None
        if ident is None:
            continue
        for g in ident.galleries:
            table.add_row(
                e.model,
                e.benchmark,
                ident.mode,
                g.name,
                f"{g.n_mated}/{g.n_nonmated}",
                *[pct(g.rank_counts[k] / g.rank_denominator if g.rank_denominator else None) for k in ijb_lib.RANKS],
                *[pct(g.tpir[f]) for f in ijb_lib.FPIR_TARGETS],
            )
        if ident.mode == "open" and len(ident.galleries) > 1:
            table.add_row(
                e.model, e.benchmark, ident.mode, "mean", "",
                *[pct(ident.mean_rank(k)) for k in ijb_lib.RANKS],
                *[pct(ident.mean_tpir(f)) for f in ijb_lib.FPIR_TARGETS],
            )
    return table


def comparison_table(entries: list[Entry]):
    """Models as rows, benchmarks as columns: the headline number of each (accuracy, or TAR@1e-4 for IJB)."""
    from rich.table import Table

    models = list(dict.fromkeys(e.model for e in entries))
    benches = list(dict.fromkeys(e.benchmark for e in entries))
    cell = {(e.model, e.benchmark): e for e in entries}
    table = Table(title="Comparison (accuracy %; IJB: TAR@FAR=1e-4 %)", title_justify="left")
    table.add_column("model")
    for b in benches:
        table.add_column(b, justify="right")
    best: dict[str, float] = {}
    for b in benches:
        values = [headline(cell[(m, b)]) for m in models if (m, b) in cell]
        numbers = [v for v in values if v is not None]
        if numbers:
            best[b] = max(numbers)
    for m in models:
        row = [m]
        for b in benches:
            value = headline(cell[(m, b)]) if (m, b) in cell else None
            text = pct(value)
            row.append(f"[bold]{text}[/bold]" if value is not None and value == best.get(b) else text)
        table.add_row(*row)
    return table


def headline(entry: Entry) -> float | None:
    if entry.verification is not None:
        return entry.verification.accuracy
    if entry.ijb is not None:
        return entry.ijb.verification.tar_at_far[1e-4]
    return None


def render(console, entries: list[Entry]) -> None:
    """Print the tables; piped output gets a wide line instead of columns squeezed into 80 characters."""
    if not console.is_terminal:
        console.width = max(console.width, 220)
    print_ = console.print
    verif = [e for e in entries if e.verification is not None]
    ijbs = [e for e in entries if e.ijb is not None]
    if verif:
        print_(verification_table(verif, "Verification (accuracy, VAL: k-fold protocol; TAR, AUC, EER: all pairs)"))
    if ijbs:
        print_(ijb_table(ijbs, "IJB 1:1 verification (TAR %)"))
        if any(e.ijb.identification for e in ijbs if e.ijb):
            print_(identification_table(ijbs, "IJB 1:N identification"))
    if len({e.model for e in entries}) > 1:
        print_(comparison_table(entries))
    for e in verif:
        if e.run is not None and e.run.no_face:
            console.print(
                f"[yellow]{e.model} / {e.benchmark}: no face found in {len(e.run.no_face)} photo(s); "
                f"their centre crop was used:[/yellow] " + ", ".join(e.run.no_face[:5])
                + (" ..." if len(e.run.no_face) > 5 else "")
            )


# ------------------------------------------------------------------------------------------------ files
def report_rows(entries: list[Entry]) -> list[dict[str, Any]]:
    rows = []
    for e in entries:
        row: dict[str, Any] = {"model": e.model, "benchmark": e.benchmark}
        if e.verification is not None:
            r = e.verification
            tars = {p.far_target: p.tar for p in r.tar_at_far}
            row.update(
                {
                    "protocol": "verification",
                    "accuracy": r.accuracy,
                    "accuracy_std": r.accuracy_std,
                    "val_at_far_1e-3": r.val,
                    "threshold_l2sq": r.threshold,
                    "threshold_cosine": r.threshold_cosine,
                    "auc": r.auc,
                    "eer": r.eer,
                    **{f"tar_at_far_{far:g}": tars.get(far) for far in TABLE_FARS},
                }
            )
        elif e.ijb is not None:
            v = e.ijb.verification
            row.update(
                {
                    "protocol": f"ijb {v.flags.name}",
                    "auc": v.auc,
                    "eer": v.eer,
                    **{f"tar_at_far_{far:g}": v.tar_at_far[far] for far in TABLE_FARS},
                }
            )
            if e.ijb.identification is not None:
                ident = e.ijb.identification
                row.update({f"rank{k}": ident.mean_rank(k) for k in ijb_lib.RANKS})
                row.update({f"tpir_at_fpir_{f:g}": ident.mean_tpir(f) for f in ijb_lib.FPIR_TARGETS})
        rows.append(row)
    return rows


def _csv_text(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return buf.getvalue()


def roc_curve_of(entry: Entry) -> tuple[np.ndarray, np.ndarray] | None:
    if entry.verification is not None:
        r = entry.verification
        fpr, tpr, _ = roc_lib.roc(r.similarities, r.issame)
        return fpr, tpr
    if entry.ijb is not None:
        return entry.ijb.verification.fpr, entry.ijb.verification.tpr
    return None


def _impostor_count(entry: Entry) -> int:
    if entry.verification is not None:
        return entry.verification.n_impostor
    return entry.ijb.verification.n_impostor if entry.ijb is not None else 0


def write_roc_png(path: Path, entries: list[Entry]) -> None:
    """One ROC curve per model × benchmark on a log-FAR axis; FAR 0 is drawn at half of 1/#impostor pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    left = 1e-2
    for e in entries:
        curve = roc_curve_of(e)
        if curve is None:
            continue
        fpr, tpr = curve
        floor = max(1e-6, 0.5 / max(_impostor_count(e), 1))
        left = min(left, floor)
        area = e.verification.auc if e.verification is not None else e.ijb.verification.auc  # type: ignore[union-attr]
        ax.plot(np.maximum(fpr, floor), tpr, lw=1.2, label=f"{e.model} / {e.benchmark} (AUC {100 * area:.3f}%)")
    ax.set_xscale("log")
    ax.set_xlim(left, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("False accept rate (log scale)")
    ax.set_ylabel("True accept rate")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def pairs_rows(entries: list[Entry]) -> list[dict[str, Any]]:
    """Per-pair distances with the fold, the fold's threshold and whether the pair was decided correctly."""
    rows = []
    for e in entries:
        r = e.verification
        if r is None:
            continue
        labels = e.run.image_labels if e.run is not None else None
        for fold, (_, test) in enumerate(fold_slices(r.n_pairs, r.nfolds)):
            threshold = r.fold_thresholds[fold]
            for i in test:
                same = bool(r.issame[i])
                accepted = bool(r.distances[i] < threshold)
                rows.append(
                    {
                        "model": e.model,
                        "benchmark": e.benchmark,
                        "pair": int(i),
                        "image1": labels[2 * i] if labels else 2 * i,
                        "image2": labels[2 * i + 1] if labels else 2 * i + 1,
                        "issame": int(same),
                        "distance_l2sq": f"{r.distances[i]:.6f}",
                        "cosine": f"{1 - r.distances[i] / 2:.6f}",
                        "fold": fold,
                        "fold_threshold": threshold,
                        "accepted": int(accepted),
                        "correct": int(accepted == same),
                    }
                )
    return rows


def hardest_pairs(result: VerificationResult, n: int) -> tuple[list[int], list[int]]:
    """Indices of the ``n`` impostor pairs with the highest and genuine pairs with the lowest cosine."""
    cos = result.similarities
    impostors = np.flatnonzero(~result.issame)
    genuines = np.flatnonzero(result.issame)
    false_accepts = impostors[np.argsort(-cos[impostors], kind="stable")][:n]
    false_rejects = genuines[np.argsort(cos[genuines], kind="stable")][:n]
    return false_accepts.tolist(), false_rejects.tolist()


def contact_sheet(entry: Entry, n: int, tile: int = 112) -> np.ndarray:
    """An RGB image: left the impostor pairs with the highest cosine (the false accepts first), right the genuine
    pairs with the lowest; each pair captioned with its cosine, "WRONG" where the chosen threshold errs."""
    import cv2

    assert entry.verification is not None and entry.run is not None
    result, run = entry.verification, entry.run
    false_accepts, false_rejects = hardest_pairs(result, n)
    caption = 22
    rows = max(len(false_accepts), len(false_rejects), 1)
    width = 4 * tile + 3 * 8
    sheet = np.full((caption + rows * (tile + caption), width, 3), 255, dtype=np.uint8)
    threshold = result.threshold_cosine
    cv2.putText(sheet, f"impostors, highest cos (accept > {threshold:.3f})", (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.36,
                (200, 0, 0), 1)
    cv2.putText(sheet, "genuine pairs, lowest cos", (2 * tile + 16, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.36, (0, 0, 200), 1)
    for column, pairs in enumerate((false_accepts, false_rejects)):
        x0 = column * (2 * tile + 16)
        for row, pair in enumerate(pairs):
            y0 = caption + row * (tile + caption)
            for k in range(2):
                face = np.ascontiguousarray(run.load_face(2 * pair + k))
                if face.shape[:2] != (tile, tile):
                    face = cv2.resize(face, (tile, tile))
                sheet[y0 : y0 + tile, x0 + k * tile : x0 + (k + 1) * tile] = face
            cos = float(result.similarities[pair])
            wrong = (cos > threshold) != bool(result.issame[pair])
            text = f"#{pair} cos {cos:.3f}" + (" WRONG" if wrong else "")
            cv2.putText(sheet, text, (x0 + 2, y0 + tile + 15), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                        (200, 0, 0) if wrong else (0, 0, 0), 1)
    return sheet


def safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def report_dict(entries: list[Entry], models: list[dict[str, Any]]) -> dict[str, Any]:
    return to_jsonable({"models": models, "results": [e.to_dict() for e in entries]})


def write_outputs(
    out_dir: str | Path, entries: list[Entry], models: list[dict[str, Any]], worst: int = 0
) -> list[Path]:
    """Write every ``--out`` file atomically; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    full = report_dict(entries, models)
    for result, entry in zip(full["results"], entries, strict=True):  # the curves belong in the file, not on stdout
        if entry.verification is not None:
            result.update(to_jsonable({"tpr": entry.verification.tpr, "fpr": entry.verification.fpr}))
        elif entry.ijb is not None:
            curve = entry.ijb.verification
            result["one_to_one"].update(to_jsonable({"fpr": curve.fpr, "tpr": curve.tpr}))
    atomic_write_text(out / "report.json", json.dumps(full, indent=1, ensure_ascii=False))
    written.append(out / "report.json")
    atomic_write_text(out / "report.csv", _csv_text(report_rows(entries)))
    written.append(out / "report.csv")
    if entries:
        write_roc_png(out / "roc.png", entries)
        written.append(out / "roc.png")
    pair_rows = pairs_rows(entries)
    if pair_rows:
        atomic_write_text(out / "pairs.csv", _csv_text(pair_rows))
        written.append(out / "pairs.csv")
    if worst > 0:
        from facecli.imageio import encode_image

        for e in entries:
            if e.verification is None or e.run is None:
                continue
            path = out / f"worst_{safe_name(e.model)}_{safe_name(e.benchmark)}.jpg"
            atomic_write_bytes(path, encode_image(contact_sheet(e, worst), "jpg", 92))
            written.append(path)
    return written
