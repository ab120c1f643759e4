"""embedfm.viz: the test embeddings it reads (embeddings.npz), damaged at the byte or the zip level, give one line or
correct arrays."""

import io
import shutil

import numpy as np
import pytest
from fuzzing import CKPT, SEED, ZIP_VARIANTS, _npz_hot, _zip_variant, byte_mutation, fuzz, one_line_error

from embedfm import rundir, viz


@pytest.mark.usefixtures("no_hang")
def test_fuzzed_embeddings_load_correctly_or_fail_in_one_line(tmp_path, tiny):
    """220 byte mutations (half in the zip and npy headers), then hand-made arrays of the wrong kind."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny[0] / CKPT, run / CKPT)
    raw = (tiny[0] / rundir.EMBEDDINGS).read_bytes()
    hot = _npz_hot(raw)
    with np.load(tiny[0] / rundir.EMBEDDINGS) as z:
        arrays = dict(z)
    n, dim = arrays["test_embeddings"].shape

    def attempt(data):
        (run / rundir.EMBEDDINGS).write_bytes(data)
        emb, labels, cfg = viz.load_test_embeddings(run)
        assert emb.dtype == np.float32 and emb.shape == (n, dim) and labels.shape == (n,) and labels.dtype.kind == "i"
        assert cfg["backbone"] == "linear"

    fuzz(220, np.random.default_rng(SEED), lambda rng: byte_mutation(raw, rng, hot), attempt)

    def npz(**changes) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, **{k: v for k, v in {**arrays, **changes}.items() if v is not None})
        return buf.getvalue()

    emb, labels = arrays["test_embeddings"], arrays["test_labels"]
    for bad in [
        npz(test_embeddings=None),
        npz(test_labels=None),
        npz(test_embeddings=emb.astype(np.int64)),
        npz(test_embeddings=emb[:, 0]),
        npz(test_embeddings=emb[None]),
        npz(test_embeddings=emb[:-1]),
        npz(test_embeddings=np.where(np.eye(n, dim, dtype=bool), np.nan, emb)),
        npz(test_embeddings=emb.astype("U8")),
        npz(test_labels=labels.astype(np.float32)),
        npz(test_labels=labels[:, None]),
        npz(test_labels=labels + 100),
        npz(test_embeddings=np.zeros((0, dim), np.float32), test_labels=np.zeros(0, np.int64)),
        b"",
        b"PK\x05\x06" + bytes(18),  # an empty zip
    ]:
        (run / rundir.EMBEDDINGS).write_bytes(bad)
        one_line_error(viz.load_test_embeddings, run)


@pytest.mark.parametrize("how", ZIP_VARIANTS)
@pytest.mark.usefixtures("no_hang")
def test_an_embeddings_npz_damaged_at_the_zip_level_is_one_line(tmp_path, tiny, how):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny[0] / CKPT, run / CKPT)
    (run / rundir.EMBEDDINGS).write_bytes(_zip_variant((tiny[0] / rundir.EMBEDDINGS).read_bytes(), how))
    one_line_error(viz.load_test_embeddings, run)
