"""embedfm.inference: test-time augmentation (flips, shifts) against a per-view loop."""

import pytest
import torch

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
