"""The Python API (`embedfm.load`; docs/api.md's examples: e2e/test_api_docs.py): embedding file paths equals embedding
the arrays they load to; kNN and softmax predictions equal `KNNClassifier`'s and `embedfm eval`'s; search equals
brute force over the catalogue; bad input gives one line; `import embedfm` stays torch-free."""

import subprocess
import sys

import numpy as np
import pytest
from conftest import DEMO_RUN
from PIL import Image

from embedfm.api import as_images
from embedfm.errors import EmbedfmError


@pytest.fixture(scope="module")
def model(demo_dir):
    import embedfm

    return embedfm.load(demo_dir / DEMO_RUN, device="cpu")


@pytest.mark.slow
def test_embed_of_file_paths_equals_embed_of_the_loaded_arrays(model, tmp_path):
    from embedfm.images import load_image
    from embedfm.inference import embed_images

    images, _ = model.split("test")
    paths = []
    for i, img in enumerate(images[:4]):
        p = tmp_path / f"{i}.png"
        Image.fromarray(img).save(p)
        paths.append(p)
    photo = np.full((90, 60, 3), 250, dtype=np.uint8)  # a dark garment on a light background, not 28 × 28
    photo[10:80, 15:45] = (120, 60, 30)
    Image.fromarray(photo).save(tmp_path / "photo.jpg")
    paths.append(tmp_path / "photo.jpg")

    loaded = np.stack([load_image(p) for p in paths])
    by_path = model.embed([str(p) for p in paths])
    assert by_path.shape == (5, model.embedding_dim) and by_path.dtype == np.float32
    assert np.array_equal(by_path, model.embed(loaded))
    assert np.array_equal(by_path, embed_images(model.network, loaded, progress=False))  # the commands' path
    # one path, one (28, 28) image: a batch of one may take other CPU kernels than a batch of five
    assert np.array_equal(model.embed(paths[0]), model.embed(loaded[0]))
    assert np.allclose(model.embed(paths[0]), by_path[:1], atol=1e-6)
    assert np.allclose(np.linalg.norm(by_path, axis=1), 1, atol=1e-5)


@pytest.mark.slow
def test_predictions_equal_eval_and_knn_classifier(model, demo_dir, fake_run):
    import embedfm
    from embedfm.knn import KNNClassifier

    saved = np.load(demo_dir / DEMO_RUN / "embeddings.npz")
    images, labels = model.split("test")
    assert np.array_equal(labels, saved["test_labels"])
    assert np.array_equal(model.predict(images), saved["pred_softmax"])  # softmax, with the run's flip TTA
    assert np.array_equal(model.predict(images, classifier="knn"), saved["pred_knn"])  # eval's k=10, cosine
    assert model.reference_source == "embeddings.npz"

    queries = model.embed(images)
    for k, metric in ((1, "cosine"), (5, "l2")):
        knn = KNNClassifier(k=k, metric=metric).fit(saved["train_embeddings"], saved["train_labels"])
        assert np.array_equal(model.predict(images, classifier="knn", k=k, metric=metric), knn.predict(queries))

    proba = model.predict_proba(images)
    assert proba.shape == (len(images), 10) and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert np.array_equal(proba.argmax(1), saved["pred_softmax"])
    shares = model.predict_proba(images, classifier="knn", k=5)
    assert np.allclose(shares.sum(1), 1) and set(np.unique(shares * 5)) <= set(range(6))

    # the unevaluated original embeds its train split instead, to the same references
    fresh = embedfm.load(fake_run[0], device="cpu")
    emb, ref_labels = fresh.reference()
    assert fresh.reference_source == "embedded"
    assert np.array_equal(ref_labels, saved["train_labels"])
    assert np.allclose(emb, saved["train_embeddings"], atol=1e-6)
    assert np.array_equal(fresh.predict(images, classifier="knn"), saved["pred_knn"])


@pytest.mark.slow
def test_search_equals_brute_force_over_the_catalogue(model, demo_dir):
    cat = np.load(demo_dir / DEMO_RUN / "index" / "catalogue.npz")
    queries = model.split("test")[0][:6]
    hits = model.search(queries, k=4)
    sims = model.embed(queries) @ model.embed(cat["images"]).T  # (6, catalogue)
    brute = np.argsort(-sims, axis=1, kind="stable")[:, :4]
    assert hits.ids.shape == (6, 4) and np.array_equal(hits.ids, brute)
    assert np.allclose(hits.similarities, np.take_along_axis(sims, brute, axis=1), atol=1e-5)
    assert np.array_equal(hits.labels, cat["labels"][brute])
    assert np.array_equal(hits.sources, cat["sources"][brute])
    assert np.array_equal(hits.images, cat["images"][brute])
    with pytest.raises(EmbedfmError, match="k must be in"):
        model.search(queries, k=10**6)
    with pytest.raises(EmbedfmError, match="no index here"):
        model.search(queries, index_dir=demo_dir / "nowhere")


@pytest.mark.slow
def test_config_class_names_and_bad_arguments(model):
    assert model.config.backbone == "fastcnn" and len(model.class_names) == 10 and model.class_names[6] == "Shirt"
    assert model.embed(np.zeros((0, 28, 28), np.uint8)).shape == (0, model.embedding_dim)
    with pytest.raises(EmbedfmError, match="unknown classifier"):
        model.predict(np.zeros((1, 28, 28), np.uint8), classifier="svm")
    with pytest.raises(EmbedfmError, match="unknown split"):
        model.split("holdout")


def test_as_images_accepts_arrays_and_refuses_what_is_not_an_image(tmp_path):
    assert as_images(np.zeros((28, 28), np.uint8)).shape == (1, 28, 28)
    assert as_images(np.zeros((3, 28, 28), np.uint8)).shape == (3, 28, 28)
    assert as_images([]).shape == (0, 28, 28)
    with pytest.raises(EmbedfmError, match="expected uint8"):
        as_images(np.zeros((2, 28, 28), np.float32))
    with pytest.raises(EmbedfmError, match=r"shape \(N, 28, 28\)"):
        as_images(np.zeros((2, 32, 32), np.uint8))
    with pytest.raises(EmbedfmError, match="not found"):
        as_images([tmp_path / "missing.png"])


def test_import_embedfm_stays_torch_free():
    code = "import sys, embedfm; assert callable(embedfm.__getattr__); print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


def test_load_a_bad_run_is_one_line(tmp_path):
    import embedfm

    with pytest.raises(EmbedfmError, match="no such run dir"):
        embedfm.load(tmp_path / "nothing")
