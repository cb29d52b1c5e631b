"""``facecli pack``: golden byte equality, layouts, filters, skipping bad images, workers, shards, round trip."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import unicodedata
from pathlib import Path

import cv2
import numpy as np
import pytest

from facecli.data.layouts import KFaceLayout, Selection, build_layout
from facecli.data.pack import PackOptions, lazy_plan, plan_pack, write_pack
from facecli.data.pack_request import PackRequest, pack_dataset, parse_shard, parse_size
from facecli.data.recordio import RecordReader, read_ms1m_layout, read_property, unpack
from facecli.data.unpack import unpack_records
from facecli.errors import UsageError
from facecli.imageio import decode_image
from facecli.progress import Silent

OUTPUTS = ("train.rec", "train.idx", "property", "labels.csv", "records.csv")


@pytest.fixture(scope="module")
def golden(shared_dir: Path) -> Path:
    return shared_dir / "golden" / "recordio"


@pytest.fixture(scope="module")
def jpegs(golden: Path) -> list[bytes]:
    """The 22 real 112x112 face JPEGs of the golden source tree, in sorted path order."""
    return [p.read_bytes() for p in sorted((golden / "src").rglob("*.jpg"))]


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _bytes(folder: Path, names=OUTPUTS) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in names}


def _pack(src: Path, out: Path, layout_out: str = "ms1m", **selection) -> None:
    plan = lazy_plan(build_layout("folders", src), Selection(**selection))
    write_pack(plan, out, PackOptions(layout_out=layout_out), source=str(src))


def test_cli_ms1m_default_matches_insightface_recbuilder(golden, tmp_path, run_cli):
    out = tmp_path / "ms1m"
    res = run_cli("pack", golden / "src", out, "--exclude", "김민준/*", "--json")
    assert res.returncode == 0, res.stderr
    for name in ("train.rec", "train.idx", "property"):
        assert (out / name).read_bytes() == (golden / "ms1m_style" / name).read_bytes(), name
    summary = res.json()
    assert summary["num_classes"] == 4 and summary["num_images"] == 20
    meta = json.loads((out / "pack.json").read_text(encoding="utf-8"))
    for name, info in meta["files"].items():
        data = (out / name).read_bytes()
        assert info == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    with open(out / "labels.csv", encoding="utf-8") as fh:
        assert list(csv.reader(fh)) == [["label", "identity", "images"]] + [[str(i), f"id_{i:04d}", "5"] for i in range(4)]
    # what arcface_torch's MXFaceDataset would read
    keys, labels = read_ms1m_layout(RecordReader(out / "train.rec"))
    assert keys == list(range(1, 21)) and labels.tolist() == [i // 5 for i in range(20)]
    assert read_property(out) == (4, 112, 112)


def test_cli_flat_matches_mxnet_flat(golden, tmp_path, run_cli):
    out = tmp_path / "flat"
    res = run_cli("pack", golden / "src", out, "--layout-out", "flat", "--quiet")
    assert res.returncode == 0, res.stderr
    assert (out / "train.rec").read_bytes() == (golden / "flat" / "data.rec").read_bytes()
    assert (out / "train.idx").read_bytes() == (golden / "flat" / "data.idx").read_bytes()
    assert read_property(out) == (5, 112, 112)


def test_cli_lst_matches_im2rec_pass_through(golden, tmp_path, run_cli):
    """MXNet's own im2rec output (shuffled .lst order, keys = .lst index) from its .lst and the same images."""
    res = run_cli("pack", golden / "src", tmp_path, "--lst", golden / "im2rec" / "passthrough.lst",
                  "--name", "passthrough", "--workers", "2", "-q")
    assert res.returncode == 0, res.stderr
    for suffix in (".rec", ".idx"):
        assert (tmp_path / f"passthrough{suffix}").read_bytes() == (golden / "im2rec" / f"passthrough{suffix}").read_bytes()


def test_shards_merged_by_the_cli_equal_one_run(golden, tmp_path, run_cli):
    layout = build_layout("folders", golden / "src")
    settings = {"layout": "folders"}
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    write_pack(lazy_plan(layout, Selection()), single, PackOptions(), source="s", settings=settings)
    for i in range(3):
        write_pack(plan_pack(layout, Selection()), sharded, PackOptions(shard=(i, 3)), source="s", settings=settings)
    parts = sorted(p.name for p in sharded.glob("train.part-*-of-003.rec"))
    assert parts == [f"train.part-00{i}-of-003.rec" for i in range(3)]
    assert all(RecordReader(sharded / p).size > 0 for p in parts)  # every shard got images
    res = run_cli("pack", "--merge", sharded, "--json")
    assert res.returncode == 0, res.stderr
    assert res.json()["num_images"] == 22
    assert _bytes(sharded, OUTPUTS + ("pack.json",)) == _bytes(single, OUTPUTS + ("pack.json",))
    assert not list(sharded.glob("*.part-*"))  # parts are removed after a successful merge


def test_listed_and_lazy_plans_write_the_same(golden, tmp_path):
    """The library's two entry points (a full first pass, or listing while writing) give identical files."""
    layout = build_layout("folders", golden / "src")
    selection = Selection(exclude=("김민준/*",))
    write_pack(plan_pack(layout, selection), tmp_path / "listed", PackOptions(), source="s")
    write_pack(lazy_plan(layout, selection), tmp_path / "lazy", PackOptions(workers=2), source="s")
    names = OUTPUTS + ("pack.json",)
    assert _bytes(tmp_path / "listed", names) == _bytes(tmp_path / "lazy", names)
    assert (tmp_path / "lazy" / "train.rec").read_bytes() == (golden / "ms1m_style" / "train.rec").read_bytes()


def test_merge_refuses_missing_parts(golden, tmp_path, run_cli):
    plan = plan_pack(build_layout("folders", golden / "src"), Selection())
    write_pack(plan, tmp_path, PackOptions(shard=(1, 2)), source="x")
    res = run_cli("pack", "--merge", tmp_path)
    assert res.returncode == 2 and "shard(s) 0 of 2 are missing" in res.stderr
    assert "Traceback" not in res.stderr


def test_unicode_identities_sorted_and_nfc(tmp_path, jpegs):
    src = tmp_path / "src"
    names = ["zoe", unicodedata.normalize("NFD", "김민준"), "Émile", "adam"]
    for i, name in enumerate(names):
        for j in range(2):
            _write(src / name / f"사진_{j}.jpg", jpegs[2 * i + j])
    _pack(src, tmp_path / "out")
    with open(tmp_path / "out" / "labels.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["identity"] for r in rows] == sorted(["zoe", "김민준", "Émile", "adam"])  # code-point order, NFC
    assert [r["identity"] for r in rows] == ["adam", "zoe", "Émile", "김민준"]
    with open(tmp_path / "out" / "records.csv", encoding="utf-8") as fh:
        paths = [r["path"] for r in csv.DictReader(fh)]
    assert paths[-1] == "김민준/사진_1.jpg"


def test_records_csv_quotes_like_the_csv_module(tmp_path, jpegs):
    """records.csv rows are written directly when nothing needs quoting; names with commas or quotes must still
    come out exactly as csv.writer writes them."""
    src = tmp_path / "src"
    files = [("plain", "0.jpg"), ("plain", "1 two.jpg"), ("smith, john", "0.jpg"), ('say "cheese"', 'a"b.jpg'),
             ("plain2", "x,y.jpg"), ("plain2", "z.jpg")]
    for i, (identity, name) in enumerate(files):
        _write(src / identity / name, jpegs[i])
    _pack(src, tmp_path / "out", layout_out="flat")
    rows = [["key", "label", "identity", "path", "source"]]
    for key, (identity, name) in enumerate(sorted(files)):
        label = sorted({f[0] for f in files}).index(identity)
        rows.append([key, label, identity, f"{identity}/{name}", ""])
    expected = tmp_path / "expected.csv"
    with open(expected, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)
    assert (tmp_path / "out" / "records.csv").read_bytes() == expected.read_bytes()


def _kface_tree(root: Path, jpegs: list[bytes]) -> None:
    for person in ("19062421", "19062431"):
        for s in (1, 2):
            for light in (1, 5, 12):
                for e in (1, 2):
                    for cam in (1, 4, 7, 10, 14):
                        _write(root / person / f"S00{s}" / f"L{light}" / f"E0{e}" / f"C{cam}.jpg",
                               jpegs[(s + light + e + cam) % len(jpegs)])
    _write(root / "19062421" / "notes.txt", b"not an image")


def test_kface_layout_filters(tmp_path, jpegs, run_cli):
    src = tmp_path / "kface"
    _kface_tree(src, jpegs)
    layout = KFaceLayout(src, accessories=frozenset({1}), lights=frozenset(range(1, 11)),
                         cameras=frozenset(range(4, 11)))
    identities = layout.identities()
    assert [i.name for i in identities] == ["19062421", "19062431"]
    rels = [s.rel for s in layout.samples(identities[0])]
    # S001 only, lights 1 and 5, both expressions, cameras 4, 7, 10
    assert len(rels) == 1 * 2 * 2 * 3
    assert all("/S001/" in r and "/L12/" not in r and not r.endswith(("C1.jpg", "C14.jpg")) for r in rels)
    out = tmp_path / "out"
    res = run_cli("pack", src, out, "--layout", "kface", "--kface-cameras", "4-10", "--kface-lights", "1-10",
                  "--kface-accessories", "1", "--json")
    assert res.returncode == 0, res.stderr
    assert res.json()["num_images"] == 24 and res.json()["num_classes"] == 2


def test_identity_depth_include_exclude_and_max_images(tmp_path, jpegs):
    src = tmp_path / "src"
    for split in ("a", "b"):
        for person in ("p1", "p2", "p3"):
            for j in range(3):
                _write(src / split / person / f"{j}.jpg", jpegs[j])
    layout = build_layout("folders", src, identity_depth=2)
    ids = layout.identities()
    assert [i.name for i in ids] == ["p1", "p2", "p3"]  # same name under two parents = one identity
    assert len(layout.samples(ids[0])) == 6
    sel = Selection(exclude=("p3",), include=("a/*", "b/p1/*"))
    plan = plan_pack(layout, sel)
    assert [(p.name, p.planned) for p in plan.identities] == [("p1", 6), ("p2", 3)]
    capped = [Selection(max_images=2, seed=s).apply(layout.samples(ids[0])) for s in (0, 0, 1, 2, 3)]
    assert capped[0] == capped[1] and len(capped[0]) == 2
    assert [s.rel for s in capped[0]] == sorted(s.rel for s in capped[0])  # order kept
    assert len({tuple(s.rel for s in c) for c in capped}) > 1  # the seed matters
    plan = plan_pack(layout, Selection(min_images=4))
    assert [p.name for p in plan.identities] == ["p1", "p2", "p3"]
    plan = plan_pack(build_layout("folders", src / "a"), Selection(min_images=4))
    assert plan.identities == [] and plan.dropped_identities == 3


def test_bad_images_are_skipped_and_listed(tmp_path, jpegs, run_cli):
    src = tmp_path / "src"
    _write(src / "a" / "0.jpg", jpegs[0])
    _write(src / "a" / "1_truncated.jpg", jpegs[1][:2000])
    _write(src / "a" / "2_text.jpg", b"hello, not an image")
    rgb = decode_image(jpegs[2])
    _write(src / "b" / "0.png", cv2.imencode(".png", rgb[..., ::-1])[1].tobytes())  # right size, not JPEG
    _write(src / "b" / "1_big.jpg", cv2.imencode(".jpg", cv2.resize(rgb, (150, 150))[..., ::-1])[1].tobytes())
    out = tmp_path / "out"
    res = run_cli("pack", src, out, "--json")
    assert res.returncode == 0, res.stderr
    result = res.json()
    assert result["statuses"] == {"ok": 1, "reencoded": 1, "unreadable": 2, "wrong_size": 1}
    assert sorted(s["path"] for s in result["skipped"]) == ["a/1_truncated.jpg", "a/2_text.jpg", "b/1_big.jpg"]
    meta = json.loads((out / "pack.json").read_text(encoding="utf-8"))
    assert meta["skipped"] == result["skipped"]
    reader = RecordReader(out / "train.rec")
    assert unpack(reader.read(1))[1] == jpegs[0]  # stored as is
    reencoded = decode_image(unpack(reader.read(2))[1])
    assert reencoded.shape == (112, 112, 3) and np.abs(reencoded.astype(int) - rgb).mean() < 3
    # --resize brings the 150x150 image in; --verify decode still rejects the damaged ones
    res = run_cli("pack", src, tmp_path / "resized", "--resize", "112", "--verify", "decode", "--json")
    assert res.json()["statuses"] == {"ok": 1, "reencoded": 1, "resized": 1, "unreadable": 2}
    resized = decode_image(unpack(RecordReader(tmp_path / "resized" / "train.rec").read(3))[1])
    assert resized.shape == (112, 112, 3)


def test_align_manifest_and_exclude_list(tmp_path, jpegs, run_cli):
    src = tmp_path / "aligned"
    rows = []
    for i, person in enumerate(("ann", "bob")):
        for j in range(3):
            rel = f"{person}/{j}.jpg"
            _write(src / rel, jpegs[3 * i + j])
            rows.append({"source": f"/photos/{person}/{j}.png", "output": rel, "status": "ok"})
    rows[1]["status"] = "no_face"
    rows[4]["status"] = "skipped_existing"  # a crop kept from an earlier align run: packed too
    _write(src / "ann" / "stray.jpg", jpegs[10])  # on disk but not in the manifest
    with open(src / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["source", "output", "status"])
        writer.writeheader()
        writer.writerows(rows)
    exclude = tmp_path / "exclude.csv"
    exclude.write_text(f"path,reason\n{src / 'bob' / '2.jpg'}\n", encoding="utf-8")
    out = tmp_path / "out"
    res = run_cli("pack", src, out, "--exclude-list", exclude, "--json")
    assert res.returncode == 0, res.stderr
    with open(out / "records.csv", encoding="utf-8") as fh:
        records = [(r["path"], r["source"]) for r in csv.DictReader(fh)]
    assert records == [("ann/0.jpg", "/photos/ann/0.png"), ("ann/2.jpg", "/photos/ann/2.png"),
                       ("bob/0.jpg", "/photos/bob/0.png"), ("bob/1.jpg", "/photos/bob/1.png")]
    assert f"using {src / 'manifest.csv'} from facecli align" in res.stderr
    res = run_cli("pack", src, tmp_path / "plain", "--no-manifest", "--json")
    assert res.json()["num_images"] == 7 and "manifest" not in res.stderr

    # the library call a Python user makes writes the same files and says the same about the manifest
    class Notes(Silent):
        def __init__(self) -> None:
            self.said: list[str] = []

        def info(self, message: str) -> None:
            self.said.append(message)

    notes = Notes()
    result = pack_dataset(PackRequest(src=src, out=tmp_path / "library", exclude_list=exclude), notes)
    assert result.num_images == 4
    assert notes.said == [f"using {src / 'manifest.csv'} from facecli align (only 'ok' faces)"]
    for name in (*OUTPUTS, "pack.json"):
        assert (tmp_path / "library" / name).read_bytes() == (out / name).read_bytes(), name


def test_pack_request_refuses_what_the_cli_refuses(tmp_path, jpegs):
    src = tmp_path / "src"
    _write(src / "ann" / "0.jpg", jpegs[0])
    with pytest.raises(UsageError, match="must not be inside SRC"):
        pack_dataset(PackRequest(src=src, out=src / "out"))
    with pytest.raises(UsageError, match="--verify 'all': choose one of"):
        pack_dataset(PackRequest(src=src, out=tmp_path / "out", verify="all"))
    with pytest.raises(UsageError, match="missing argument OUT"):
        pack_dataset(PackRequest(src=src))
    assert parse_size("112x96") == (112, 96) and parse_shard("1/4") == (1, 4)
    import facecli.data

    assert facecli.data.pack_dataset is pack_dataset and facecli.data.PackRequest is PackRequest
    with pytest.raises(UsageError, match="expected I/N"):
        parse_shard("4")


def test_csv_layout_numeric_labels(tmp_path, jpegs):
    src = tmp_path / "imgs"
    lines = ["path,label"]
    for i in range(6):
        _write(src / f"{i}.jpg", jpegs[i])
        lines.append(f"{i}.jpg,{[10, 2, 2, 10, 0, 2][i]}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    layout = build_layout("csv", src, labels=tmp_path / "labels.csv")
    plan = plan_pack(layout, Selection())
    assert [(p.name, p.planned) for p in plan.identities] == [("0", 1), ("2", 3), ("10", 2)]  # numeric order


def test_round_trip_pack_unpack_pack(golden, tmp_path, run_cli):
    first, unpacked, second = tmp_path / "first", tmp_path / "unpacked", tmp_path / "second"
    _pack(golden / "src", first)
    res = run_cli("unpack", first, unpacked, "--json")
    assert res.returncode == 0, res.stderr
    assert res.json()["images"] == 22
    assert (unpacked / "김민준" / "1.jpg").read_bytes() == (golden / "src" / "김민준" / "1.jpg").read_bytes()
    assert run_cli("pack", unpacked, second, "-q").returncode == 0
    names = ("train.rec", "train.idx", "property", "labels.csv")
    assert _bytes(second, names) == _bytes(first, names)
    # without labels.csv/records.csv (e.g. a downloaded dataset) the round trip still holds
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("train.rec", "train.idx"):
        shutil.copyfile(golden / "ms1m_style" / name, bare / name)
    assert unpack_records(bare, tmp_path / "bare_un").images == 20
    _pack(tmp_path / "bare_un", tmp_path / "bare_re")
    assert (tmp_path / "bare_re" / "train.rec").read_bytes() == (golden / "ms1m_style" / "train.rec").read_bytes()


def test_cli_errors_are_one_line(tmp_path, run_cli):
    res = run_cli("pack", tmp_path / "missing", tmp_path / "out")
    assert res.returncode == 2 and res.stderr.strip().endswith("source folder not found: " + str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    res = run_cli("pack", tmp_path / "empty", tmp_path / "out", "--shard", "3/2")
    assert res.returncode == 2 and "--shard" in res.stderr and "Traceback" not in res.stderr
    res = run_cli("pack", tmp_path / "empty", tmp_path / "out")
    assert res.returncode == 2 and "no images selected" in res.stderr
    res = run_cli("pack", tmp_path / "empty", tmp_path / "empty" / "data")
    assert res.returncode == 2 and "must not be inside SRC" in res.stderr
    assert not (tmp_path / "out" / "train.rec").exists()


def test_pack_help_lists_both_forms(run_cli):
    res = run_cli("pack", "--help")
    assert res.returncode == 0
    assert "dataset" in res.stdout and "pairs" in res.stdout and "facecli pack SRC OUT" in res.stdout


def test_jpeg_size_from_headers_matches_pil(shared_dir, tmp_path):
    """Sizes read from JPEG headers (no decoding) agree with PIL on real photos, progressive and EXIF files."""
    import io

    from PIL import Image

    from facecli.data.payloads import jpeg_size

    files = sorted((shared_dir / "data").rglob("*.jpg"))[:60]
    blobs = [f.read_bytes() for f in files]
    rgb = Image.open(io.BytesIO(blobs[0])).convert("RGB").resize((97, 61))
    exif = Image.Exif()
    exif[0x010F] = "facecli"  # camera make
    for options in ({"progressive": True}, {"exif": exif.tobytes()}, {"quality": 30}):
        buf = io.BytesIO()
        rgb.save(buf, "JPEG", **options)
        blobs.append(buf.getvalue())
    for blob in blobs:
        assert jpeg_size(blob) == Image.open(io.BytesIO(blob)).size
    assert jpeg_size(b"\x89PNG\r\n") is None and jpeg_size(blobs[0][:10]) is None


def test_outputs_get_the_usual_file_permissions(tmp_path, jpegs):
    """Every output, records.csv included (streamed through a mkstemp file), gets 0666 minus the umask."""
    import os
    import stat

    from facecli.fileio import new_file_mode

    src = tmp_path / "src"
    for i in range(4):
        _write(src / f"id{i % 2}" / f"{i}.jpg", jpegs[i])
    old = os.umask(0o022)
    try:
        _pack(src, tmp_path / "out")
    finally:
        os.umask(old)
    assert new_file_mode() == 0o666 & ~old
    for name in OUTPUTS:
        assert stat.S_IMODE((tmp_path / "out" / name).stat().st_mode) == 0o644, name
