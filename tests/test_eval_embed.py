"""Streaming embedding with the chunked feature cache: resumed after an interruption without recomputing."""

from __future__ import annotations

import numpy as np
import pytest

from facecli.errors import UsageError
from facecli.eval import load_model
from facecli.eval.embed import FeatureCache, embed_stream


@pytest.fixture(scope="module")
def tiny(shared_dir):
    from facecli.data.benchmarks import load_bin
    from facecli.imageio import decode_image

    bins, _ = load_bin(shared_dir / "golden" / "verification" / "tiny.bin")
    return np.stack([decode_image(b) for b in bins])


def test_cache_resumes_and_reuses(shared_dir, tiny, tmp_path):
    model = load_model(shared_dir / "models" / "mobilefacenet_foamliu.onnx", batch_size=16)
    seen: list[int] = []
    real = model.embed_batch

    def counting(images):
        seen.append(len(images))
        return real(images)

    model.embed_batch = counting  # type: ignore[method-assign]
    load = lambda i: tiny[i]  # noqa: E731
    cache = FeatureCache(tmp_path, model.fingerprint, "tiny", len(tiny), chunk_size=32)
    first = embed_stream(model, len(tiny), load, cache=cache, workers=2)
    assert first.shape == (80, 256) and sum(seen) == 2 * 80  # every face and its mirror
    assert sorted(p.name for p in cache.dir.glob("chunk_*.npy")) == ["chunk_000000.npy", "chunk_000001.npy",
                                                                     "chunk_000002.npy"]
    # the rows are the plain embeddings of the faces and of their mirror images
    np.testing.assert_allclose(first[:5, :128], real(tiny[:5]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(first[:5, 128:], real(tiny[:5, :, ::-1]), rtol=1e-5, atol=1e-5)

    seen.clear()
    again = embed_stream(model, len(tiny), load, cache=cache)
    assert seen == [] and np.array_equal(again, first)  # nothing recomputed

    cache.chunk_path(1).unlink()  # an interrupted run: the middle chunk was never written
    resumed = embed_stream(model, len(tiny), load, cache=cache)
    assert sum(seen) == 2 * 32 and np.array_equal(resumed, first)

    with pytest.raises(UsageError, match="another setup"):
        FeatureCache(tmp_path, model.fingerprint, "tiny", 81, chunk_size=32)


def test_loading_threads_keep_the_order_and_a_failed_load_is_raised(shared_dir, tiny):
    """Faces are loaded on the executor's threads, two batches ahead: every row belongs to its own face whatever
    the thread count, and a face that cannot be loaded stops the run with its own error."""
    from facecli.errors import CorruptFileError

    model = load_model(shared_dir / "models" / "mobilefacenet_foamliu.onnx", batch_size=8)
    loaded: list[int] = []

    def load(i):
        loaded.append(i)
        return tiny[i]

    one = embed_stream(model, len(tiny), load, flip=False, workers=1)
    assert sorted(loaded) == list(range(len(tiny)))
    three = embed_stream(model, len(tiny), load, flip=False, workers=3)
    assert np.array_equal(one, three)
    np.testing.assert_allclose(one[40:48], model.embed_batch(tiny[40:48]), rtol=1e-5, atol=1e-5)

    def broken(i):
        if i == 20:
            raise CorruptFileError("face 20: damaged")
        return tiny[i]

    with pytest.raises(CorruptFileError, match="^face 20: damaged$"):
        embed_stream(model, len(tiny), broken, flip=False, workers=3)
