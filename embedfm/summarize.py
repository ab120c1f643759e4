"""`embedfm summarize`: evaluated run dirs → a study table, per method mean ± sample std over seeds.

A method is a run's config minus the settings of the `run` group (seed, output dir, device, threads, ...: see
`config.GROUPS`), so runs that differ only in seed are grouped. Columns: validation accuracy and focus-group error
of the final epoch (what a method may be chosen by), then test figures: accuracy (softmax, kNN), focus-group error
(softmax, kNN), recall of each focus class (softmax), shirt recall (kNN), P@1, MAP@R, train seconds per run, and
the kNN with flip-averaged queries (accuracy, focus-group error, shirt recall; "–" for reports that predate it).
One seed prints its value without "±". Writes summary.md and summary.csv.

`--paired` (`summarize_paired`) also writes paired.md / paired.json: every method against every CE control on the
same test images, from the per-image records `embedfm eval` keeps in report.json (`embedfm.paired`). Two CE
controls are compared once, the random-batch one as the control (what the other's sampler adds), not both ways.

`--pixels` measures the zero-training baseline, FAISS kNN (k=10, L2) on the raw 784-d pixels of the train split,
and saves it as `pixels.json` beside the summary; a saved `pixels.json` is shown as the last row.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from embedfm import rundir
from embedfm.config import FIELDS, FOCUS_CLASSES, SHIRT, TrainConfig, resolved_sampler, run_keys
from embedfm.errors import EmbedfmError
from embedfm.fileio import atomic_write_csv, atomic_write_json, atomic_write_text
from embedfm.markdown import md_table
from embedfm.report import read_json, require
from embedfm.run import check_same_images

PIXELS = "pixels.json"
# settings a CE run never reads (the metric group): left out of CE rows' labels
METRIC_ONLY = {n for n, f in FIELDS.items() if f.metadata["group"] == "metric"}
HEADER = [
    "method", "seeds", "val acc %", "val focus err %", "test acc softmax %", "test acc kNN %",
    "focus-group err softmax %", "focus-group err kNN %", *[f"recall {c}" for c in FOCUS_CLASSES],
    "shirt recall kNN", "P@1", "MAP@R", "train s/run", "test acc kNN flip-avg %", "focus-group err kNN flip-avg %",
    "shirt recall kNN flip-avg",
]  # fmt: skip


def find_reports(paths: list[str]) -> list[dict]:
    reports = []
    for p in map(Path, paths):
        for rep in sorted([p / "report.json"] if (p / "report.json").exists() else p.glob("*/report.json")):
            for name, r in require(read_json(rep), ("runs",), "dict", str(rep)).items():
                check_run(r, f"{rep}: run {name!r}")
                reports.append({"name": name, **r, "val": last_val(rep.parent)})
    return reports


def check_run(r, where: str) -> None:
    """What `figures` and the method's label read from a report's run, checked (one line naming the file)."""
    config = require(r, ("config",), "dict", where)
    for key in ("loss", "backbone"):
        if key in config:
            require(config, (key,), "str", f"{where}: config")
    for clf in ("softmax", "knn", "knn_flip"):
        if clf == "knn_flip" and require(r, ("classifiers",), "dict", where).get(clf) is None:
            continue  # reports written before 2026-11-25 lack it
        for key in ("accuracy", "focus_group_error"):
            require(r, ("classifiers", clf, key), "number", where)
        per_class = require(r, ("classifiers", clf, "per_class"), "dict", where)
        for c in FOCUS_CLASSES if clf != "knn_flip" else (SHIRT,):
            if str(c) in per_class or len(per_class) >= 10:  # a set of fewer classes lacks Fashion-MNIST's ids
                require(r, ("classifiers", clf, "per_class", str(c), "recall"), "number", where)
    for key in ("precision_at_1", "map_at_r"):
        require(r, ("retrieval", key), "number", where)
    if r.get("train_seconds") is not None:
        require(r, ("train_seconds",), "number", where)


def last_val(run_dir: Path) -> dict:
    """Validation figures of the final epoch (history.json beside report.json): what selection may use."""
    hist = run_dir / rundir.HISTORY
    if not hist.exists():
        return dict.fromkeys(("val_acc", "val_focus_err"), float("nan"))
    history = read_json(hist, "retrain the run")
    if not (isinstance(history, list) and history and isinstance(history[-1], dict)):
        raise EmbedfmError(f"{hist}: not a list of epochs; retrain the run")
    last = history[-1]
    for k in ("val_acc", "val_focus_err"):
        if last.get(k) is not None:
            require(last, (k,), "number", f"{hist}: last epoch", "retrain the run")
    return {k: float("nan") if last.get(k) is None else last[k] for k in ("val_acc", "val_focus_err")}


def full_config(r: dict) -> dict:
    """A report's config with today's defaults filled in where it predates a key, so a run from before a
    setting existed groups (and is labelled) like runs that leave it at its default."""
    defaults = {n: list(f.default) if isinstance(f.default, tuple) else f.default for n, f in FIELDS.items()}
    return {**defaults, **r["config"]}


def method_key(r: dict) -> str:
    cfg = {k: v for k, v in full_config(r).items() if k not in run_keys()}
    return json.dumps(cfg, sort_keys=True)


def method_label(runs: list[dict], all_keys: list[str]) -> str:
    """Loss + backbone + the config values that differ between the methods being compared."""
    cfgs = [json.loads(k) for k in all_keys]
    varying = sorted(k for k in cfgs[0] if len({json.dumps(c.get(k)) for c in cfgs}) > 1 and k not in ("loss",))
    cfg = full_config(runs[0])
    if cfg.get("sampler") == "auto":  # show what "auto" meant for this loss
        cfg["sampler"] = resolved_sampler(cfg["loss"], "auto")
    extra = ", ".join(f"{k}={cfg.get(k)}" for k in varying if not (cfg["loss"] == "ce" and k in METRIC_ONLY))
    return f"{cfg['loss']} / {cfg['backbone']} / {cfg['epochs']} ep" + (f" ({extra})" if extra else "")


def name_label(runs: list[dict]) -> str:
    """A method named by its run dirs: their common name without the `_s<seed>` suffix (ce-balanced_s0,
    ce-balanced_s1 → ce-balanced). For studies whose methods differ in many tuned settings, where
    `method_label` would list them all."""
    stems = {re.sub(r"_s\d+$", "", r["name"]) for r in runs}
    if len(stems) != 1:
        raise EmbedfmError(
            f"--names: runs of one method are named {', '.join(sorted(r['name'] for r in runs))}: "
            "name run dirs <method>_s<seed>"
        )
    return stems.pop()


def given_label(runs: list[dict], names: dict[str, str]) -> str:
    """A method named by the caller (a study's manifest: report run name → method), one name per method."""
    given = {names.get(r["name"]) for r in runs}
    if len(given) != 1 or None in given:
        raise EmbedfmError(f"runs {', '.join(sorted(r['name'] for r in runs))} are not one method of the manifest")
    return given.pop()


def labels_of(groups: dict[str, list[dict]], names: bool | dict[str, str]) -> dict[str, str]:
    """method key → its label: given (`names` a dict: report run name → method, from a study's manifest), by run dir
    names (`names` True) or by the config values that tell methods apart."""
    keys = list(groups)
    label = (lambda g: given_label(g, names)) if isinstance(names, dict) else name_label if names else None
    labels = {k: label(g) if label else method_label(g, keys) for k, g in groups.items()}
    if names and len(set(labels.values())) < len(labels):
        raise EmbedfmError("--names: two methods share a name; name each method's run dirs <method>_s<seed>")
    return labels


def figures(r: dict) -> dict:
    sm, kn = r["classifiers"]["softmax"], r["classifiers"]["knn"]
    out = {
        "acc_softmax": sm["accuracy"],
        "acc_knn": kn["accuracy"],
        "focus_err_softmax": sm["focus_group_error"],
        "focus_err_knn": kn["focus_group_error"],
    }
    nan = {"recall": float("nan")}  # a set of fewer classes than Fashion-MNIST's: "–" in the table
    for c in FOCUS_CLASSES:
        out[f"recall_{c}"] = sm["per_class"].get(str(c), nan)["recall"]
        out[f"recall_{c}_knn"] = kn["per_class"].get(str(c), nan)["recall"]
    kf = r["classifiers"].get("knn_flip")  # reports written before 2026-11-25 lack it: "–" in the table
    out.update(
        acc_knn_flip=kf["accuracy"] if kf else float("nan"),
        focus_err_knn_flip=kf["focus_group_error"] if kf else float("nan"),
        recall_6_knn_flip=kf["per_class"].get(str(SHIRT), nan)["recall"] if kf else float("nan"),
    )
    out.update(
        p_at_1=r["retrieval"]["precision_at_1"],
        map_at_r=r["retrieval"]["map_at_r"],
        train_seconds=r.get("train_seconds") or float("nan"),
        **r["val"],
    )
    return out


def pixel_baseline(data_dir: str | None = None) -> dict:
    """FAISS kNN (k=10, L2) on raw pixels: train split as reference, the test set as queries."""
    from embedfm.data import load_fashion_mnist
    from embedfm.knn import KNNClassifier
    from embedfm.metrics import classifier_metrics
    from embedfm.sampling import make_splits

    s = make_splits(load_fashion_mnist(data_dir), TrainConfig().val_size)
    ref = s.train_x.reshape(len(s.train_x), -1).float().numpy() / 255
    q = s.test_x.reshape(len(s.test_x), -1).float().numpy() / 255
    pred = KNNClassifier(k=10, metric="l2").fit(ref, s.train_y.numpy()).predict(q)
    m = classifier_metrics(s.test_y.numpy(), pred, FOCUS_CLASSES)
    return {
        "acc_knn": m["accuracy"],
        "focus_err_knn": m["focus_group_error"],
        **{f"recall_{c}_knn": m["per_class"][str(c)]["recall"] for c in FOCUS_CLASSES},
        "k": 10,
        "metric": "l2",
    }


def fmt(vals: list[float], pct: bool = True) -> str:
    v = np.array(vals, dtype=float)
    if np.isnan(v).all():
        return "–"
    scale = 100 if pct else 1
    n = int(np.isfinite(v).sum())  # older histories lack some validation figures
    mean = scale * np.nanmean(v)
    if n == 1:  # one seed has no spread to report: the value alone, not a misleading "± 0.00"
        return f"{mean:.2f}" if pct else f"{mean:.3f}"
    std = scale * np.nanstd(v, ddof=1)
    return f"{mean:.2f} ± {std:.2f}" if pct else f"{mean:.3f} ± {std:.3f}"


def method_row(runs: list[dict], label: str) -> list[str]:
    f = [figures(r) for r in runs]

    def col(name: str) -> list[float]:
        return [x[name] for x in f]

    return [
        label, str(len(runs)), fmt(col("val_acc")), fmt(col("val_focus_err")),
        fmt(col("acc_softmax")), fmt(col("acc_knn")), fmt(col("focus_err_softmax")), fmt(col("focus_err_knn")),
        *[fmt(col(f"recall_{c}"), pct=False) for c in FOCUS_CLASSES], fmt(col(f"recall_{SHIRT}_knn"), pct=False),
        fmt(col("p_at_1"), pct=False), fmt(col("map_at_r"), pct=False), f"{np.nanmean(col('train_seconds')):.0f}",
        fmt(col("acc_knn_flip")), fmt(col("focus_err_knn_flip")), fmt(col(f"recall_{SHIRT}_knn_flip"), pct=False),
    ]  # fmt: skip


def pixel_row(b: dict) -> list[str]:
    row = dict.fromkeys(HEADER, "–")
    row.update({"method": "kNN on raw pixels (no training)", "test acc kNN %": f"{100 * b['acc_knn']:.2f}",
                "focus-group err kNN %": f"{100 * b['focus_err_knn']:.2f}",
                "shirt recall kNN": f"{b[f'recall_{SHIRT}_knn']:.3f}", "train s/run": "0"})  # fmt: skip
    return list(row.values())


def summarize(
    paths: list[str],
    out: str | None = None,
    pixels: bool = False,
    data_dir: str | None = None,
    names: bool = False,
    log=print,
) -> list[list[str]]:
    """Write summary.md / summary.csv into `out` (default: the first path). Returns the rows under HEADER.
    `names`: label methods by their run dirs' names (`name_label`) instead of their distinguishing settings."""
    reports = find_reports(paths)
    if not reports:
        raise EmbedfmError(f"no report.json under {', '.join(paths)}; run `embedfm eval` on the runs first")
    groups: dict[str, list[dict]] = {}
    for r in reports:
        groups.setdefault(method_key(r), []).append(r)
    labels = labels_of(groups, names)
    if names:  # the order the runs are found in (their names), CE controls first
        order = sorted(groups, key=lambda k: (json.loads(k)["loss"] != "ce", labels[k]))
    else:
        order = sorted(groups, key=lambda k: (json.loads(k)["backbone"], json.loads(k)["loss"]))
    rows = [method_row(groups[k], labels[k]) for k in order]
    out_dir = Path(out or paths[0])
    if pixels:
        atomic_write_json(out_dir / PIXELS, pixel_baseline(data_dir))
    if (out_dir / PIXELS).is_file():
        again = "measure it again with `embedfm summarize --pixels`"
        b = read_json(out_dir / PIXELS, again)
        for key in ("acc_knn", "focus_err_knn", f"recall_{SHIRT}_knn"):
            require(b, (key,), "number", str(out_dir / PIXELS), again)
        rows.append(pixel_row(b))
    md = md_table(HEADER, rows)
    atomic_write_text(out_dir / "summary.md", md + "\n")
    atomic_write_csv(out_dir / "summary.csv", rows, header=HEADER)
    log(md)
    return rows


def summarize_paired(
    paths: list[str], out: str | None = None, draws: int = 2000, names: bool = False, log=print
) -> dict:
    """paired.md / paired.json in `out` (default: the first path): each method against each CE control, Holm-adjusted
    over the table (every comparison × figure is one family)."""
    from embedfm.paired import FIGURES, adjust, compare, score

    reports = find_reports(paths)
    groups: dict[str, list[dict]] = {}
    for r in reports:
        groups.setdefault(method_key(r), []).append(r)
    keys = list(groups)
    # random-batch controls first: a later control is compared against them, never the other way round as well
    controls = sorted(
        (k for k in keys if json.loads(k)["loss"] == "ce"),
        key=lambda k: resolved_sampler("ce", json.loads(k).get("sampler", "auto")) != "random",
    )
    if not controls:
        raise EmbedfmError(f"no CE runs under {', '.join(paths)}: --paired compares every method with the CE controls")
    focus = tuple(json.loads(keys[0])["focus_classes"])
    scored = {k: [score(r, "softmax", focus, f"run {r['name']!r}") for r in groups[k]] for k in keys}
    check_same_images([r["name"] for k in keys for r in groups[k]], [s.labels for k in keys for s in scored[k]])
    labels = labels_of(groups, names)
    results = []
    for i, ctrl in enumerate(controls):
        for k in keys:
            if k == ctrl or k in controls[:i]:  # itself, or a control it was already the method against
                continue
            stats = compare(scored[k], scored[ctrl], draws=draws)
            results.append({"method": labels[k], "control": labels[ctrl], **stats})
    adjust(results)
    n_images = len(scored[controls[0]][0].num)
    out_dir = Path(out or paths[0])
    payload = {"draws": draws, "figures": list(FIGURES), "family": len(results) * len(FIGURES),
               "images": n_images, "comparisons": results}  # fmt: skip
    atomic_write_json(out_dir / "paired.json", payload)
    md = paired_markdown(payload)
    atomic_write_text(out_dir / "paired.md", md)
    log(md.rstrip("\n"))
    return {"comparisons": results}


def paired_cell(fig: dict, name: str, interval: str = "interval") -> str:
    """One figure of one comparison: "Δ [low, high]" in points (MAP@R: in its own unit), ✓ / ✗ after Holm."""
    scale, digits = (1, 3) if name == "map_at_r" else (100, 2)
    cell = f"{scale * fig['difference']:+.{digits}f}"
    if fig[interval] is not None:
        lo, hi = fig[interval]
        cell += f" [{scale * lo:+.{digits}f}, {scale * hi:+.{digits}f}]"
    if interval != "interval":  # only the seed-level interval carries a verdict
        return cell
    return cell + (" ✓" if fig["helps"] else " ✗" if fig["hurts"] else "")


def validation_cell(c: dict) -> str:
    """The paired difference on the validation split (final epoch): accuracy / focus-group error, in points."""
    parts = [f"{100 * c[f]['validation']['difference']:+.2f}" if c[f]["validation"] else "–"
             for f in ("accuracy", "focus_group_error")]  # fmt: skip
    return " / ".join(parts)


def focus_test_cell(c: dict) -> str:
    return "; ".join(f"s{t['seed']}: {t['b']}/{t['c']}, p={t['p']:.2g}" for t in c["focus_error_test"]) or "–"


def paired_markdown(payload: dict) -> str:
    """paired.md: the seed-level table (what ✓ rests on), then the image-only intervals given the trained models."""
    from embedfm.markdown import md_table

    figures, comps = payload["figures"], payload["comparisons"]
    heads = [f"Δ {f.replace('_', ' ')}" for f in figures]
    main = [[c["method"], c["control"], str(c["pairs"]), *(paired_cell(c[f], f) for f in figures),
             validation_cell(c), focus_test_cell(c)] for c in comps]  # fmt: skip
    images = [[c["method"], c["control"], *(paired_cell(c[f], f, "interval_images") for f in figures)] for c in comps]
    return (
        f"Paired over the same {payload['images']} test images, softmax head (MAP@R: the embedding); difference = "
        "method − control, mean over seed pairs, in points. Interval: 95 %, two-level bootstrap over seed pairs and "
        f"test images ({payload['draws']} draws), t quantile with seed pairs − 1 degrees of freedom. ✓ / ✗: Holm-"
        f"adjusted p < 0.05 in the method's favour / against it, family = the {payload['family']} comparison × "
        "figure cells of this table. Validation: the same difference on the validation split (final epoch), "
        "accuracy / focus-group error. Focus-group error test: per seed pair, b = images only the control gets "
        "wrong within the focus group, c = only the method; exact two-sided sign-flip p.\n\n"
        + md_table(
            ["method", "control", "seed pairs", *heads, "validation Δ acc / Δ focus err", "focus-group error test"],
            main,
        )
        + "\n\nGiven these trained models (test images resampled, models fixed; 95 % percentile interval; it says "
        "nothing about another seed):\n\n" + md_table(["method", "control", *heads], images) + "\n"
    )
