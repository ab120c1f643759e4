"""embedfm.inference: test-time augmentation (flips, shifts) against a per-view loop."""

import pytest
import torch

from embedfm.config import TrainConfig
from embedfm.data import to_float
from embedfm.errors import ConfigError
from embedfm.inference import embed, shifted
from embedfm.models import build_model


@pytest.mark.numeric
def test_embed_flip_tta_matches_a_per_image_loop():
    """embed(tta_flip=True): logits = mean over image and mirror, emb = the image's own, emb_flip =
    normalize(emb(image) + emb(mirror)); checked one image at a time against the unfused model."""
    from embedfm.inference import embed

    torch.manual_seed(0)
    model = build_model(backbone="fastcnn", embedding_dim=8).eval()
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    plain = embed(model, images, torch.device("cpu"), batch_size=2)
    out = embed(model, images, torch.device("cpu"), batch_size=2, tta_flip=True)
    assert plain.emb_flip is None and out.emb_flip.shape == (5, 8)
    torch.testing.assert_close(out.emb, plain.emb)
    from embedfm.data import to_float

    with torch.no_grad():
        for i in range(5):
            x = to_float(images[i : i + 1])
            lg, em = model(x)
            lg_m, em_m = model(x.flip(3))
            torch.testing.assert_close(out.logits[i], ((lg + lg_m) / 2)[0], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(
                out.emb_flip[i], torch.nn.functional.normalize(em + em_m, dim=1)[0], atol=1e-5, rtol=1e-4
            )
    assert torch.allclose(out.emb_flip.norm(dim=1), torch.ones(5))


def test_shifted_moves_pixels_and_brings_in_zeros():
    x = torch.arange(1, 17, dtype=torch.uint8).view(1, 4, 4)
    zeros = lambda *s: torch.zeros(*s, dtype=torch.uint8)
    down = shifted(x, 1, 0)
    assert torch.equal(down[0, 0], zeros(4)) and torch.equal(down[0, 1:], x[0, :3])
    left = shifted(x, 0, -2)
    assert torch.equal(left[0, :, :2], x[0, :, 2:]) and torch.equal(left[0, :, 2:], zeros(4, 2))
    assert torch.equal(shifted(x, 0, 0), x)


@pytest.mark.numeric
def test_embed_shift_tta_matches_a_per_view_loop():
    torch.manual_seed(0)
    model = build_model("fastcnn", 8, 10, {"widths": (4, 8, 8)}).eval()
    images = torch.randint(0, 256, (6, 28, 28), dtype=torch.uint8)
    views = [to_float(images)] + [to_float(shifted(images, dy, dx)) for dy, dx in ((2, 0), (-2, 0), (0, 2), (0, -2))]
    views += [v.flip(3) for v in views]
    with torch.no_grad():
        expected = torch.stack([model(v)[0] for v in views]).mean(0)
    out = embed(model, images, torch.device("cpu"), tta_flip=True, tta_shift=2)
    torch.testing.assert_close(out.logits, expected, atol=1e-4, rtol=1e-4)
    plain = embed(model, images, torch.device("cpu"), tta_flip=True)
    torch.testing.assert_close(out.emb, plain.emb)  # embeddings are the unshifted image's
    with pytest.raises(ConfigError, match="--tta-shift"):
        TrainConfig(tta_shift=9)
