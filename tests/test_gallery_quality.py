"""``facecli gallery build --quality-threshold``: enrolment skips faces whose raw embedding norm is low."""

from __future__ import annotations

import numpy as np

from facecli.gallery.store import Gallery

IMAGENET = ["--mean", "123.675,116.28,103.53", "--std", "58.395,57.12,57.375", "--rgb"]


def test_build_skips_low_quality_faces(run_cli, shared_dir, tmp_path):
    from facecli.align import align_image
    from facecli.eval import embed, load_model
    from facecli.imageio import encode_image, read_image

    src = shared_dir / "data" / "lfw-sample"
    people = sorted(p.name for p in src.iterdir() if p.is_dir())[:3]
    crops, paths = [], []
    for name in people:
        (tmp_path / "enrol" / name).mkdir(parents=True)
        for photo in sorted((src / name).glob("*.jpg"))[:3]:
            crop, _ = align_image(read_image(photo), select="center")
            assert crop is not None
            path = tmp_path / "enrol" / name / (photo.stem + ".png")
            path.write_bytes(encode_image(crop, "png"))
            crops.append(crop)
            paths.append(path)
    model_path = shared_dir / "models" / "mobilefacenet_foamliu.onnx"
    model = load_model(model_path, mean="123.675,116.28,103.53", std="58.395,57.12,57.375", bgr=False)
    quality = np.linalg.norm(embed(model, np.stack(crops), flip="none").astype(np.float64), axis=1)
    threshold = float(np.median(quality))
    low = {str(p) for p, q in zip(paths, quality) if q < threshold}
    assert len(low) == 4

    out = tmp_path / "g.npz"
    res = run_cli("gallery", "build", tmp_path / "enrol", "--out", out, "-m", model_path, *IMAGENET,
                  "--quality-threshold", repr(threshold), "--json")
    assert res.returncode == 0, res.stderr
    assert "may not encode face quality" in res.stderr
    summary = res.json()
    assert summary["images"] == 5 and summary["skipped"] == 4
    assert {f["path"] for f in summary["failures"]} == low
    assert {f["status"] for f in summary["failures"]} == {"low_quality"}
    gallery = Gallery.load(out)
    assert sorted(gallery.paths.tolist()) == sorted(str(p.resolve()) for p in paths if str(p) not in low)

    res = run_cli("gallery", "build", tmp_path / "enrol", "--out", tmp_path / "none.npz", "-m", model_path,
                  *IMAGENET, "--quality-threshold", "1e9")
    assert res.returncode == 2 and "low_quality: 9" in res.stderr
    assert not (tmp_path / "none.npz").exists()
