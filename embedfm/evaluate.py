"""Evaluation: test-set metrics of each run's softmax head and FAISS kNN, compared side by side.

The only module that touches the test set. For every run it embeds the run's train split (the kNN
reference) and the test set, classifies the test set with the softmax head and with a kNN over the
train embeddings (and, when the run uses flip test-time augmentation, a second kNN whose queries
average each test image's embedding with its mirror's, `knn_flip`), and computes:
- accuracy, per-class precision / recall / F1, confusion matrix (scikit-learn),
- focus-group error: among test images whose label is a focus class, the share predicted as a
  *different* focus class (the T-shirt / pullover / coat / shirt confusion),
- retrieval metrics with pytorch-metric-learning's AccuracyCalculator (precision@1, R-precision,
  MAP@R), test queries against the rest of the test set.
Outputs: `report.json`, `report.md`, confusion PNGs in the report dir; `embeddings.npz` per run.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from embedfm import rundir
from embedfm.errors import EmbedfmError
from embedfm.fileio import atomic_save_npz
from embedfm.gallery import most_confused
from embedfm.inference import embed, select_device
from embedfm.knn import KNNClassifier
from embedfm.metrics import ap_at_r, classifier_metrics, retrieval_metrics
from embedfm.run import Run, check_same_data, read_embeddings  # noqa: F401 — read_embeddings: evaluate's reader
from embedfm.rundir import default_out, run_names
from embedfm.sampling import make_splits
from embedfm.unseen import unseen_figures

# ----------------------------------------------------------------------------------------------
# one run


def evaluate_run(
    run_dir: str | Path,
    data=None,
    k: int = 10,
    metric: str = "cosine",
    focus: tuple[int, ...] | None = None,
    progress: bool = True,
    run: Run | None = None,
) -> tuple[dict, dict]:
    """Evaluate one run (`run`: the run dir's `Run` where it is already open). Returns (report entry, arrays for
    embeddings.npz)."""
    run = run or Run.open(run_dir)
    cfg, history = run.config, run.history
    last = history[-1] if history else {}
    focus = tuple(focus or cfg.focus_classes)
    device = select_device("auto")
    model = run.model(device)
    data = data or run.load_data(progress=progress)
    run.check_data(data)
    num_classes = run.num_classes
    splits = make_splits(data, cfg.val_size, cfg.limit, holdout=cfg.holdout_classes)
    if k > len(splits.train_y):
        raise EmbedfmError(f"k={k} is larger than the number of reference embeddings ({len(splits.train_y)})")

    t0 = time.perf_counter()
    # under the run's --precision, as it validated while training
    train_emb = embed(model, splits.train_x, device, progress=progress, desc="embed train", precision=cfg.precision).emb
    test_logits, test_emb, test_emb_flip = embed(
        model,
        splits.test_x,
        device,
        tta_flip=cfg.tta_flip,
        tta_shift=cfg.tta_shift,
        precision=cfg.precision,
        progress=progress,
        desc="embed test",
    )
    y_train, y_test = splits.train_y.numpy(), splits.test_y.numpy()
    knn = KNNClassifier(k=k, metric=metric, num_classes=num_classes).fit(train_emb.numpy(), y_train)
    pred_knn = knn.predict(test_emb.numpy())
    pred_softmax = test_logits.argmax(1).numpy()
    scores = lambda pred: classifier_metrics(y_test, pred, focus, num_classes=num_classes)
    knn_metrics = lambda pred: {**scores(pred), "k": k, "metric": metric}
    classifiers = {"softmax": scores(pred_softmax), "knn": knn_metrics(pred_knn)}
    # test_probs: out-of-sample class probabilities, what `embedfm floor` (confident learning) reads
    arrays = {"pred_softmax": pred_softmax, "pred_knn": pred_knn, "test_probs": test_logits.float().softmax(1).numpy()}
    if test_emb_flip is not None:
        # the same index queried with each test image's embedding averaged with its mirror's (references
        # stay single images: averaging them too measured no better on validation and costs a second pass)
        arrays["pred_knn_flip"] = knn.predict(test_emb_flip.numpy())
        classifiers["knn_flip"] = knn_metrics(arrays["pred_knn_flip"])
    entry = {
        "run_dir": str(run_dir),
        "loss": cfg.loss,
        "backbone": cfg.backbone,
        "seed": cfg.seed,
        "embedding_dim": cfg.embedding_dim,
        "epochs": len(history),
        "train_seconds": last.get("train_seconds"),
        "complete": rundir.is_done(run.dir),
        "config": cfg.to_dict(),
        "classifiers": classifiers,
        "retrieval": retrieval_metrics(test_emb.numpy(), y_test),
    }
    entry["per_image"] = per_image(y_test, arrays, ap_at_r(test_emb.numpy(), y_test))
    if cfg.holdout_classes:  # the unseen-class test (embedfm.unseen): the train images of each held-out class
        pools = {
            c: embed(model, data.train_images[data.train_labels == c], device).emb.numpy() for c in cfg.holdout_classes
        }
        entry["unseen"] = unseen_figures(knn, test_emb.numpy(), y_test, pools, seed=cfg.seed)
    entry["eval_seconds"] = round(time.perf_counter() - t0, 2)
    arrays = {
        "train_embeddings": train_emb.numpy(),
        "train_labels": y_train,
        "test_embeddings": test_emb.numpy(),
        "test_labels": y_test,
        **arrays,
    }
    return entry, arrays


def digits(labels: np.ndarray) -> str | list[int]:
    """Class ids (N,) as one string of N digits where every id is 0-9 (a test set's predictions in 10 kB of
    readable JSON), else as a list of ids (a set of more than ten classes)."""
    ids = np.asarray(labels, dtype=np.int64).tolist()
    return "".join(map(str, ids)) if all(0 <= c <= 9 for c in ids) else ids


def per_image(y_test: np.ndarray, preds: dict, ap: np.ndarray) -> dict:
    """What a paired comparison of runs needs (`embedfm summarize --paired`): the test labels and each classifier's
    prediction per test image (`digits`, image order), and each image's AP@R as a query (4 decimals)."""
    return {
        "labels": digits(y_test),
        **{name.removeprefix("pred_"): digits(p) for name, p in preds.items() if name.startswith("pred_")},
        "ap_at_r": [round(float(v), 4) for v in ap],
    }


def save_embeddings(run_dir: str | Path, arrays: dict) -> None:
    atomic_save_npz(Path(run_dir) / rundir.EMBEDDINGS, arrays)


def evaluate(
    run_dirs: list[str],
    out: str | Path | None = None,
    k: int = 10,
    metric: str = "cosine",
    focus: tuple[int, ...] | None = None,
    data_dir: str | None = None,
    progress: bool = True,
    log=print,
) -> dict:
    """Evaluate runs, write report.json / report.md / figures into `out`. Returns the report."""
    from embedfm.report import write_report

    names = run_names(run_dirs)
    # fail on a bad run dir, or runs that cannot be compared, before spending minutes on the others
    opened = [Run.open(r) for r in run_dirs]
    for run in opened:
        run.verify()
    check_same_data(opened, names)
    out = Path(out) if out else default_out(run_dirs)
    with rundir.lock(out, "eval", log):  # one writer per report dir
        data = opened[0].load_data(data_dir, progress=progress)
        runs, preds = {}, {}
        for name, r, run in zip(names, run_dirs, opened):
            entry, arrays = evaluate_run(r, data=data, k=k, metric=metric, focus=focus, progress=progress, run=run)
            save_embeddings(r, arrays)
            runs[name], preds[name], labels = entry, arrays["pred_knn"], arrays["test_labels"]
            sm, kn = entry["classifiers"]["softmax"], entry["classifiers"]["knn"]
            kf = entry["classifiers"].get("knn_flip")
            log(
                f"{name}: softmax acc {sm['accuracy']:.4f}, kNN acc {kn['accuracy']:.4f}"
                + (f" ({kf['accuracy']:.4f} flip-averaged)" if kf else "")
                + ", "
                f"focus-group error {sm['focus_group_error']:.4f} / {kn['focus_group_error']:.4f}, "
                f"MAP@R {entry['retrieval']['map_at_r']:.4f} ({entry['eval_seconds']:.0f} s)"
            )
        focus_used = tuple(focus or opened[0].config.focus_classes)
        report = {"focus_classes": list(focus_used), "class_names": list(opened[0].class_names), "runs": runs}
        if opened[0].config.data != "fashion-mnist":  # the set, named in report.md (Fashion-MNIST's report as ever)
            report = {"data": opened[0].config.data, "data_notes": opened[0].data_notes, **report}
        # the faces behind the focus-class confusions: the test images of each confusion, run by run
        most_confused(
            data.test_images.numpy(), labels, preds, focus_used, out / "most_confused.png", class_names=data.class_names
        )
        write_report(report, out)
    log(f"report: {out / 'report.md'}")
    return report
