"""``facecli pack`` as library calls: a :class:`PackRequest` in, :func:`pack_dataset` writes the pack; a
:class:`PairsRequest` in, :func:`pack_pairs` writes the verification ``.bin``.

The command only parses its options into a request and renders the :class:`~facecli.data.pack.PackResult`; a
Python user who builds the same request gets the same files and the same errors::

    from facecli.data.pack_request import PackRequest, pack_dataset

    result = pack_dataset(PackRequest(src=Path("aligned"), out=Path("packed"), resize=(112, 112), workers=4))
    print(result.num_images, result.files["train.rec"]["sha256"])

One request covers the three ways to pack: a folder layout (the default), an im2rec ``.lst`` (``lst``) and the
merge of ``shard`` parts (``merge``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from facecli.data import pack as packing
from facecli.data import pairs as pairlib
from facecli.data.layouts import Layout, Selection, build_layout, parse_ranges, read_exclude_list
from facecli.data.payloads import VERIFY_MODES
from facecli.errors import FacecliError, UsageError
from facecli.progress import SILENT, Feedback
from facecli.requests import PathFields


def parse_size(text: str | None, flag: str = "--resize") -> tuple[int, int] | None:
    """``112`` or ``112x96`` (width x height) → (width, height); None stays None."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", text)
    if not match or int(match.group(1)) < 1:
        raise UsageError(f"{flag} {text!r}: expected N or WxH, e.g. 112")
    width = int(match.group(1))
    return width, int(match.group(2) or width)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``I/N`` (0-based I) → (I, N); None stays None."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or int(match.group(2)) < 1:
        raise UsageError(f"--shard {text!r}: expected I/N, e.g. 0/4")
    index, count = int(match.group(1)), int(match.group(2))
    if index >= count:
        raise UsageError(f"--shard {text}: I must be in 0..N-1")
    return index, count


@dataclass
class PackRequest(PathFields):
    """Everything ``facecli pack dataset`` is told; the fields are its options, already parsed.

    The K-Face filters stay range texts (``"1-3"``) because ``pack.json`` records the user's words.
    """

    src: Path
    out: Path | None = None  # with ``merge``: defaults to ``src``
    layout: str = "folders"  # folders, kface or csv
    labels: Path | None = None  # layout csv: the path,label CSV
    identity_depth: int = 1
    kface_accessories: str | None = None
    kface_lights: str | None = None
    kface_expressions: str | None = None
    kface_cameras: str | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    exclude_list: Path | None = None
    min_images: int = 1
    max_images: int | None = None
    seed: int = 0
    use_manifest: bool = True  # a SRC/manifest.csv from facecli align lists the images
    layout_out: str = "ms1m"
    resize: tuple[int, int] | None = None  # (width, height)
    quality: int = 95
    verify: str = "header"
    workers: int = 1
    shard: tuple[int, int] | None = None  # (index, count)
    merge: bool = False
    lst: Path | None = None
    name: str = packing.REC_NAME

    def options(self) -> packing.PackOptions:
        """The writer's options (what shapes the bytes written, not what is selected)."""
        return packing.PackOptions(layout_out=self.layout_out, quality=self.quality, resize=self.resize,
                                   verify=self.verify, workers=self.workers, shard=self.shard, name=self.name)

    def settings(self) -> dict:
        """The selection recorded in ``pack.json``: nothing run-specific, so that ``pack.json`` is reproducible."""
        return {
            "layout": self.layout,
            "identity_depth": self.identity_depth,
            "labels": str(self.labels) if self.labels else None,
            "kface": {"accessories": self.kface_accessories, "lights": self.kface_lights,
                      "expressions": self.kface_expressions, "cameras": self.kface_cameras},
            "include": list(self.include),
            "exclude": list(self.exclude),
            "exclude_list": str(self.exclude_list) if self.exclude_list else None,
            "min_images": self.min_images,
            "max_images": self.max_images,
            "seed": self.seed,
            "resize": list(self.resize) if self.resize else None,
            "quality": self.quality,
            "verify": self.verify,
        }

    def source_layout(self) -> Layout:
        return build_layout(
            self.layout,
            self.src,
            use_manifest=self.use_manifest,
            identity_depth=self.identity_depth,
            labels=self.labels,
            accessories=parse_ranges(self.kface_accessories, "--kface-accessories"),
            lights=parse_ranges(self.kface_lights, "--kface-lights"),
            expressions=parse_ranges(self.kface_expressions, "--kface-expressions"),
            cameras=parse_ranges(self.kface_cameras, "--kface-cameras"),
        )

    def selection(self) -> Selection:
        return Selection(
            include=tuple(self.include),
            exclude=tuple(self.exclude),
            excluded_paths=read_exclude_list(self.exclude_list, self.src) if self.exclude_list else frozenset(),
            min_images=max(self.min_images, 1),
            max_images=self.max_images,
            seed=self.seed,
        )


def pack_dataset(request: PackRequest, feedback: Feedback = SILENT) -> packing.PackResult:
    """Write the pack ``request`` describes (or merge its shard parts) and return what was written.

    ``feedback`` (:mod:`facecli.progress`) shows the work and the note on which listing was used. Mistakes in the
    request raise :class:`~facecli.errors.UsageError`.
    """
    if request.layout_out not in packing.LAYOUTS_OUT:
        raise UsageError(f"--layout-out {request.layout_out!r}: choose one of {', '.join(packing.LAYOUTS_OUT)}")
    if request.merge:
        folder = request.out or request.src
        if not folder.is_dir():
            raise UsageError(f"folder not found: {folder}")
        with feedback.progress("merging", None) as advance:
            return packing.merge_parts(folder, name=request.name, layout_out=request.layout_out, advance=advance)
    out = request.out
    if out is None:
        raise UsageError("missing argument OUT (the output folder)")
    if request.verify not in VERIFY_MODES:
        raise UsageError(f"--verify {request.verify!r}: choose one of {', '.join(VERIFY_MODES)}")
    if request.lst is not None:
        with feedback.progress("packing", None) as advance:
            return packing.pack_lst(request.lst, request.src, out, request.options(), advance=advance)
    if request.max_images is not None and request.max_images < 1:
        raise UsageError("--max-images must be at least 1")
    if request.src.is_dir() and out.resolve().is_relative_to(request.src.resolve()):
        raise UsageError(f"OUT ({out}) must not be inside SRC ({request.src}): it would be packed as an identity")
    layout = request.source_layout()
    if layout.manifest is not None:
        feedback.info(f"using {layout.manifest} from facecli align (only 'ok' faces)")
    plan = packing.lazy_plan(layout, request.selection(), request.resize)
    total = len(layout.identities()) if request.shard is None else None
    with feedback.progress("packing identities", total) as advance:
        result = packing.write_pack(plan, out, request.options(), source=str(request.src.resolve()),
                                    advance=advance, settings=request.settings())
    if result.num_images == 0:
        raise UsageError(f"no images packed from {request.src} (layout {request.layout}); check the layout and filters")
    return result


@dataclass
class PairsRequest(PathFields):
    """Everything ``facecli pack pairs`` is told: a pairs list (LFW ``pairs.txt`` or a CSV) or, with
    ``make_pairs``, an identity-folder tree to draw N pairs from; ``out`` is the ``.bin`` to write."""

    source: Path
    out: Path
    root: Path | None = None  # the listed images' folder (default: beside the pairs file)
    make_pairs: int | None = None
    seed: int = 0
    ext: str = "jpg"
    resize: tuple[int, int] | None = None  # (width, height)
    quality: int = 95
    strict: bool = False  # problems fail the run (and remove ``out``) instead of being warnings


def _pair_list(request: PairsRequest) -> tuple[list[pairlib.Pair], Path]:
    """The pairs and the folder their paths are relative to."""
    source = request.source
    if request.make_pairs is not None:
        if not source.is_dir():
            raise UsageError(f"--make-pairs needs an identity-folder tree; {source} is not a folder")
        return pairlib.make_pairs(source, request.make_pairs, seed=request.seed), source
    if not source.is_file():
        raise UsageError(f"pairs file not found: {source}")
    base = request.root or source.parent
    if source.suffix.lower() == ".csv":
        return pairlib.read_pairs_csv(source, base), base
    return pairlib.read_pairs_txt(source, base, ext=request.ext), base


def pack_pairs(request: PairsRequest, feedback: Feedback = SILENT) -> pairlib.BinReport:
    """Write the verification ``.bin`` (pair i = images 2i, 2i+1) and, for drawn pairs, ``OUT.pairs.csv``.

    Problems found (missing, unaligned-looking or mislabelled images) go to ``feedback`` as warnings, the affected
    files as details; with ``strict`` they raise :class:`~facecli.errors.FacecliError` and ``out`` is removed.
    """
    pair_list, base = _pair_list(request)
    if not pair_list:
        raise UsageError(f"{request.source}: no pairs")
    with feedback.progress("reading pairs", len(pair_list)) as advance:
        report = pairlib.build_bin(pair_list, request.out, resize=request.resize, quality=request.quality,
                                   advance=advance)
    if request.make_pairs is not None:
        pairlib.write_pairs_csv(pair_list, request.out.with_suffix(".pairs.csv"), base)
    for warning in report.warnings:
        feedback.warn(warning)
    for line in (report.missing + report.unaligned + report.label_mismatch)[:50]:
        feedback.detail(line)
    if request.strict and report.warnings:
        request.out.unlink(missing_ok=True)
        raise FacecliError(f"--strict: {len(report.warnings)} problem(s) found; {request.out} not written")
    return report
