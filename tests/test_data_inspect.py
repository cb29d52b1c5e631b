"""``facecli inspect`` (summaries, --check on damaged files, --grid) and ``unpack`` of MXNet's own im2rec output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from facecli.data.inspect import inspect_path


@pytest.fixture(scope="module")
def golden(shared_dir: Path) -> Path:
    return shared_dir / "golden" / "recordio"


def test_inspect_ms1m_and_flat_records(golden):
    info, _ = inspect_path(golden / "ms1m_face2rec2")
    assert info["layout"].startswith("insightface MS1M")
    assert info["header"] == {"first_identity_key": 21, "end_identity_key": 25, "id2": 0}
    assert (info["records"], info["images"], info["identities"], info["identity_records"]) == (25, 20, 4, 4)
    assert info["label_range"] == [0, 3]
    assert info["images_per_identity"] == {"min": 5, "median": 5.0, "max": 5, "bins": {"5-9": 4}}
    assert info["property"] == {"num_classes": 4, "height": 112, "width": 112}
    assert info["image_sizes"] == {"112x112 jpeg": 20}
    info, _ = inspect_path(golden / "im2rec" / "passthrough.rec")
    assert info["layout"].startswith("flat") and info["images"] == 22 and info["identities"] == 5
    assert info["images_per_identity"]["bins"] == {"2": 1, "5-9": 4}


@pytest.mark.parametrize("case", ["truncated", "bad_magic", "idx_past_end", "idx_inside_record"])
def test_check_reports_every_bad_record(golden, run_cli, case):
    expected = json.loads((golden / "expected.json").read_text(encoding="utf-8"))["sets"]["corrupt"][case]
    res = run_cli("inspect", golden / "corrupt" / f"{case}.rec", "--check", "--json")
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1].startswith("facecli: error:")
    bad = res.json()["check"]["bad"]
    bad_keys = {item["key"] for item in bad}
    assert expected["bad_key"] in bad_keys
    assert not bad_keys & set(expected["keys_ok"])  # the good records are not blamed
    first = next(item for item in bad if item["key"] == expected["bad_key"])
    assert first["offset"] == expected["bad_offset"]
    if case == "truncated":
        assert bad_keys == {10, *map(int, expected["keys_past_eof"])}
    else:
        assert bad_keys == {expected["bad_key"]}


def test_check_clean_file_and_bin_and_folder(golden, shared_dir, run_cli, tmp_path):
    res = run_cli("inspect", golden / "flat" / "data.rec", "--check", "--json")
    assert res.returncode == 0, res.stderr
    assert res.json()["check"] == {"records_checked": 22, "bad": [], "scan": [], "ok": True}
    info, sampled = inspect_path(shared_dir / "golden" / "verification" / "tiny.bin", check=True, samples=8)
    assert (info["pairs"], info["genuine"], info["images"]) == (40, 20, 80) and info["check"]["ok"]
    assert len(sampled) == 8
    info, _ = inspect_path(golden / "src")
    assert (info["kind"], info["identities"], info["images"]) == ("folder", 5, 22)
    assert info["image_sizes"] == {"112x112 jpeg": 22}


def test_grid_contact_sheet(golden, run_cli, tmp_path):
    sheet = tmp_path / "sheet.png"
    res = run_cli("inspect", golden / "ms1m_style", "--grid", sheet, "--samples", "12", "-q")
    assert res.returncode == 0, res.stderr
    with Image.open(sheet) as im:
        assert im.size == (8 * 112, 2 * (112 + 14))
        # the tiles hold real faces (not blank): the first tile has texture
        tile = im.crop((0, 0, 112, 112)).convert("L")
        assert max(tile.getextrema()) - min(tile.getextrema()) > 100


def test_unpack_im2rec_output(golden, run_cli, tmp_path):
    res = run_cli("unpack", golden / "im2rec" / "passthrough.rec", tmp_path / "out", "--json")
    assert res.returncode == 0, res.stderr
    assert res.json()["images"] == 22 and res.json()["layout"] == "flat"
    files = sorted((tmp_path / "out").rglob("*.jpg"))
    assert len(files) == 22
    # the .lst order is shuffled, yet each image lands in its label's folder with its original bytes
    sources = {p.read_bytes() for p in (golden / "src").rglob("*.jpg")}
    assert {f.read_bytes() for f in files} == sources
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["000000", "000001", "000002", "000003", "000004"]


@pytest.mark.parametrize("case", ["truncated", "bad_magic", "idx_past_end", "idx_inside_record"])
def test_unpack_writes_every_readable_record_and_names_the_bad_ones(golden, run_cli, tmp_path, case):
    expected = json.loads((golden / "expected.json").read_text(encoding="utf-8"))["sets"]["corrupt"][case]
    check = run_cli("inspect", golden / "corrupt" / f"{case}.rec", "--check", "--json").json()["check"]["bad"]
    res = run_cli("unpack", golden / "corrupt" / f"{case}.rec", tmp_path / "out", "--json")
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1].startswith("facecli: error:") and "damaged record" in res.stderr
    result = res.json()
    bad = {item["key"]: item["offset"] for item in result["bad"]}
    assert bad == {item["key"]: item["offset"] for item in check}  # by key and offset, as inspect --check
    assert expected["bad_key"] in bad and not set(bad) & set(expected["keys_ok"])
    written = sorted(p for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert result["images"] == len(written) > 0
    from facecli.data.recordio import RecordReader

    records = len(RecordReader(golden / "corrupt" / f"{case}.rec"))  # flat files: every record is an image
    assert len(written) == records - len(bad)  # every readable record is written
