"""Generated sections of the results pages that take code (verdicts, joins across studies, targets met or not,
pooled figures): Markdown fragments a study's `publish` writes beside its results (`Study.sections` names them), so
that `embedfm study check` rebuilds them byte for byte and `make docs` only includes them
(`<!-- table: study/best/curve.md as=text -->`, links rebased to the page).

Each section is a function (study, dest) → {file name: Markdown}: it reads the study's fresh results from `dest`,
its committed runs and protocol from `study.out`, other studies' committed results from artifacts/reference/, and
writes its links relative to where the fragment is committed (`study.out`). Paths are relative to the repository
root, the directory every `embedfm study` command runs from.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
from pathlib import Path

from embedfm.fileio import read_json
from embedfm.markdown import md_table as table

REF, DOCS = Path("artifacts/reference"), Path("docs")
RESULTS = DOCS / "results"
INTERVALS = "how-to-read-the-intervals"


# ------------------------------------------------------------------------------------------------ helpers


def link(path: Path, frag: Path, text: str | None = None, anchor: str = "") -> str:
    """A Markdown link to `path` from the fragment `frag` (both relative to the repository root)."""
    rel = os.path.relpath(path, frag.parent).replace(os.sep, "/")
    return f"[{text or path.name}]({rel}{'#' + anchor if anchor else ''})"


def pct(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}"


def mean_std(xs: list[float], scale: float = 1.0, digits: int = 2) -> str:
    """'m ± s' over seeds (sample std; one value is shown as '± 0'); '–' for none."""
    xs = [scale * x for x in xs if x is not None]
    if not xs:
        return "–"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.{digits}f} ± {sd:.{digits}f}"


def span(xs: list[float], digits: int = 5) -> str:
    """'lo – hi' of some values, or the one value where they are all equal."""
    lo, hi = min(xs), max(xs)
    return f"{lo:.{digits}f}" if lo == hi else f"{lo:.{digits}f} – {hi:.{digits}f}"


def setting(v) -> str:
    """A config value as a flag takes it: true/false, comma-joined lists, floats in %g, unset for None."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, tuple | list):
        return ",".join(map(str, v))
    if isinstance(v, float):
        return f"{v:g}"
    return "unset" if v is None else str(v)


def summary_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def find_row(rows: list[dict[str, str]], prefix: str) -> dict[str, str]:
    """The one summary row whose method starts with `prefix`."""
    found = [r for r in rows if r["method"].startswith(prefix)]
    if len(found) != 1:
        raise ValueError(f"expected one summary row starting {prefix!r}, found {len(found)}")
    return found[0]


def ticks(names: list[str]) -> str:
    return ", ".join(f"`{m}`" for m in names) or "**none**"


def paired_delta(c: dict, fig: str, scale: float = 100, digits: int = 2) -> str:
    """One figure of one paired.json comparison: 'Δ [lo, hi]' in points, with the paired table's ✓ / ✗ mark."""
    d, (lo, hi) = c[fig]["difference"], c[fig]["interval"]
    mark = " ✓" if c[fig]["helps"] else " ✗" if c[fig]["hurts"] else ""
    return f"{scale * d:+.{digits}f} [{scale * lo:+.{digits}f}, {scale * hi:+.{digits}f}]{mark}"


FIGURE_NAMES = {"accuracy": "accuracy", "focus_group_error": "focus-group error", "shirt_recall": "shirt recall",
                "map_at_r": "MAP@R"}  # fmt: skip


def paired_marks(comparisons: list[dict]) -> str:
    """Which comparisons of a paired.json earn a ✓ or ✗ (its `helps` / `hurts`), in words."""
    marked = []
    for c in comparisons:
        figs = [f"{FIGURE_NAMES[f]} {'✓' if c[f]['helps'] else '✗'}" for f in FIGURE_NAMES if c[f]["helps"] or
                c[f]["hurts"]]  # fmt: skip
        if figs:
            marked.append(f"`{c['method']}` against `{c['control']}`: {', '.join(figs)}")
    return "; ".join(marked) if marked else "none: no difference in the table earns a ✓ or ✗"


# ------------------------------------------------------------------------------------------------ paired


def paired_table(study, dest: Path) -> dict[str, str]:
    """paired.json as the study page shows it: every method against each CE control over the same test images; the
    seed-level intervals (what ✓ rests on), the validation column and the per-seed focus-group error test, then the
    image-only intervals given the trained models."""
    from embedfm.summarize import focus_test_cell, paired_cell, validation_cell

    out, frag = Path(study.out), Path(study.out) / "paired_table.md"
    paired = read_json(dest / "paired.json")
    figs, comps = paired["figures"], paired["comparisons"]
    heads = ["Δ accuracy", "Δ focus-group error", "Δ shirt recall", "Δ MAP@R"]
    rows = [[f"`{c['method']}`", f"`{c['control']}`", str(c["pairs"]), *(paired_cell(c[f], f) for f in figs),
             validation_cell(c), focus_test_cell(c)] for c in comps]  # fmt: skip
    images = [[f"`{c['method']}`", f"`{c['control']}`", *(paired_cell(c[f], f, "interval_images") for f in figs)]
              for c in comps]  # fmt: skip
    note = (
        "Method − control over the same test images (softmax head; MAP@R: the embedding), mean over seed pairs, in "
        f"points. Interval: 95 %, two-level bootstrap over seed pairs and test images ({paired['draws']} draws; "
        f"{link(RESULTS / 'README.md', frag, 'how to read it', INTERVALS)}). ✓ / ✗: Holm-adjusted p < 0.05 in the "
        f"method's favour / against it, the family being this table's {paired['family']} comparison × figure cells; "
        "an interval may exclude zero without a ✓. Validation: the same difference of the final epoch on the "
        "validation split (accuracy / focus-group error). Focus-group error test, per seed pair: images on which "
        "only the control / only the method makes a focus-group error, exact sign-flip p. Source: "
        f"{link(out / 'paired.json', frag)} (`embedfm summarize --names --paired {out.as_posix()}`)"
    )
    given = (
        "Given these trained models (test images resampled, the models fixed; 95 % percentile interval, conditional "
        "on these runs: it says nothing about another seed):"
    )
    header = ["method", "control", "seed pairs", *heads, "validation Δ acc / Δ focus err", "focus-group error test"]
    text = table(header, rows) + "\n\n" + note + "\n\n" + given + "\n\n" + table(["method", "control", *heads], images)
    return {frag.name: text}


def paired_table_marked(study, dest: Path) -> dict[str, str]:
    """paired_table, then which comparisons earn a ✓ or ✗, in words (no page states a verdict the table lacks)."""
    (name, text), = paired_table(study, dest).items()  # fmt: skip
    return {name: text + "\n\nMarked: " + paired_marks(read_json(dest / "paired.json")["comparisons"]) + "."}


# ------------------------------------------------------------------------------------------------ floor

FLOOR_RUNS = {"best": "every seed of every method of this study", "losses": "every method and seed of the comparison"}
FLOOR_STUDIES = {"best": "best-model", "losses": "loss"}
GALLERY = "the 64 most confident suspected label issues among the four focus classes"


def floor_table(study, dest: Path) -> dict[str, str]:
    """floor/floor.json (`embedfm floor`, from `extras`) and the fresh floor/crossfit.json: shared errors,
    suspected label issues, the best run, the other studies' suspects, the cross-fit per rule."""
    from embedfm.floor import per_run_span

    out = Path(study.out)
    frag, path = out / "floor_table.md", out / "floor" / "floor.json"
    r = read_json(path, "run the study's extras")
    s, t, tr, b = r["shared"], r["test_label_issues"], r["train_label_issues"], r["best_run"]
    by = lambda d: ", ".join(f"{c} {v}" for c, v in d.items())
    rows = [
        ["runs", f"{len(r['runs'])} ({FLOOR_RUNS[study.name]})"],
        ["focus-class test images", f"{s['focus_images']:,}"],
        ["wrong in every run (softmax)", f"{s['all_wrong']:,}"],
        ["… with the same predicted class in every run", f"{s['all_wrong_same_way']:,}"],
        ["suspected test label issues in the focus classes", f"{t['count']:,} ({by(t['by_class'])})"],
        ["… of them wrong the same way in every run", f"{t['all_wrong_same_way_among_them']:,}"],
        *floor_overlap_rows(study.name, t, frag),
        [f"suspected train label issues (kNN leave-one-out, k = {tr['k']}, `{tr['from_run']}`; in-sample)",
         f"{tr['count']:,} ({by(tr['by_class'])})"],
        [f"best run by validation accuracy: `{b['name']}`, its focus-group error",
         f"{pct(b['focus_error'])} % ({b['focus_errors']:,} images)"],
        ["… of its focus-group errors on suspected issues (in-sample)",
         f"{b['errors_on_suspected_issues']:,} ({100 * b['share_on_suspected_issues']:.1f} %)"],
        ["… its focus-group error on the other focus images (in-sample)", f"{pct(b['focus_error_on_the_rest'])} %"],
        ["every run: share of its focus-group errors on suspected issues (in-sample)",
         per_run_span(r, "share_on_suspected_issues")],
        ["every run: its focus-group error on the other focus images (in-sample)",
         per_run_span(r, "focus_error_on_the_rest")],
    ]  # fmt: skip
    gallery = out / "floor" / "label_issues.png"
    text = (
        table(["", "value"], rows)
        + "\n\nIn-sample (circular): the suspects are found from the same runs whose errors are then split, so an "
        "image a run gets wrong is more likely to be among them and the error on the other images is low by "
        "construction. The suspects depend on the models that find them (the row on the other study's suspects)."
        + f"\n\n{floor_crossfit(read_json(dest / 'floor' / 'crossfit.json'), r)}"
        + f"\n\nSource: {link(path, frag)}, {link(out / 'floor' / 'crossfit.json', frag)}; gallery of the 64 most "
        f"confident: {link(gallery, frag)}"
    )
    if study.name == "best":
        text += f"\n\n![{GALLERY}]({link(gallery, frag).split('](', 1)[1]}"
    return {frag.name: text}


def floor_overlap_rows(study: str, t: dict, frag: Path) -> list[list[str]]:
    """Model dependence: how many of this study's suspected test label issues the other study's floor.json also
    lists (the same test images, other models); no row while the other study has no floor."""
    rows = []
    for other, what in FLOOR_STUDIES.items():
        path = REF / "study" / other / "floor" / "floor.json"
        if other == study or not path.is_file():
            continue
        theirs = read_json(path)["test_label_issues"]["indices"]
        both = len(set(t["indices"]) & set(theirs))
        rows.append([f"… of them also suspected by the {what} study's models ({link(path, frag)}: {len(theirs):,} "
                     "suspects)", f"{both:,} of {t['count']:,}"])  # fmt: skip
    return rows


def floor_crossfit(c: dict, r: dict) -> str:
    """crossfit.json: per rule, each run's focus-group errors split on its own half's suspects (in-sample) and on
    the other half's (cross-fitted), beside the halves' suspect counts."""
    from embedfm.floor import per_run_span

    if sorted(c["runs"]) != sorted(r["runs"]):
        raise ValueError("crossfit.json's runs differ from floor.json's; rerun `embedfm floor --crossfit-only`")
    b, parts, both_parts = c["best_run"]["name"], [], ("in_sample", "cross_fitted")
    for name, rule in c["rules"].items():
        h, n, mine = rule["halves"], rule["suspects"], rule["per_run"][b]
        both = lambda key, digits, mine=mine: [f"{100 * mine[part][key]:.{digits}f} %" for part in both_parts]
        rows = [
            [f"best run `{b}` (half {mine['half']}): share of its focus-group errors on suspects",
             *both("share_on_suspected_issues", 1)],
            [f"best run `{b}`: its focus-group error on the other focus images", *both("focus_error_on_the_rest", 2)],
            ["every run: share of its focus-group errors on suspects",
             *(per_run_span(rule, "share_on_suspected_issues", part) for part in both_parts)],
            ["every run: its focus-group error on the other focus images",
             *(per_run_span(rule, "focus_error_on_the_rest", part) for part in both_parts)],
        ]  # fmt: skip
        parts.append(
            f"Cross-fit, rule `{name}` (suspects: {rule['rule']}). Halves: the runs sorted by name, alternately; "
            f"A {len(h['A'])} runs ({', '.join(h['A'])}), B {len(h['B'])} runs ({', '.join(h['B'])}). Suspects: "
            f"{n['A']:,} from half A, {n['B']:,} from half B, {n['both']:,} in both.\n\n"
            + table(["", "in-sample (own half's suspects)", "cross-fitted (other half's suspects)"], rows)
        )
    return "\n\n".join(parts)


# ------------------------------------------------------------------------------------------------ loss study

RELATIVE_TARGET = 0.15  # the loss-comparison question: ≥ 15 % relative fewer focus-group errors than balanced CE
CONTROL, CONTROLS = "ce-balanced", ("ce", "ce-balanced")


def loss_verdict(study, dest: Path) -> dict[str, str]:
    """The loss comparison's questions answered from its paired.json and summary.csv (`embedfm.study.verdict`) and
    the unseen-class study, with the best-model study's paired comparison of the same two methods beside it."""
    from embedfm.study import verdict

    out, frag = Path(study.out), Path(study.out) / "verdict.md"
    p, paired_doc = read_json(out / "protocol.json"), read_json(dest / "paired.json")
    paired = paired_doc["comparisons"]
    summary = {r["method"]: r for r in summary_rows(dest / "summary.csv")}
    metric = [m for m in summary if m not in CONTROLS]
    vs = {c["method"]: c for c in paired if c["control"] == CONTROL}
    v = verdict(paired_doc, list(summary.values()), CONTROL, metric, RELATIVE_TARGET)
    rel, meets, best_rel, best_map = v["relative"], v["meets"], v["largest_cut"], v["best_map"]
    helps, hurts, epochs = v["helps"], v["hurts"], p["final_epochs"]
    sampler = next(c for c in paired if c["method"] == CONTROL and c["control"] == "ce")
    rows = [
        [f"Does a metric loss cut the focus-group error by ≥ {100 * RELATIVE_TARGET:.0f} % relative against "
         f"`{CONTROL}` (✓ in the paired table), at {epochs} epochs?",
         ("**yes**: " + ticks(meets)) if meets else
         f"**no**. The largest cut is `{best_rel}`'s, {rel[best_rel]:+.1f} % relative: "
         f"Δ {paired_delta(vs[best_rel], 'focus_group_error')} points against `{CONTROL}`'s "
         f"{v['control_focus_error']:.2f} %"],
        [f"Which lower the focus-group error against `{CONTROL}` (✓)? Which raise it (✗)?",
         f"lower: {ticks(helps['focus_group_error'])}; raise: {ticks(hurts['focus_group_error'])}"],
        [f"Which raise test accuracy against `{CONTROL}` (✓)? Which lower it (✗)?",
         f"raise: {ticks(helps['accuracy'])}; lower: {ticks(hurts['accuracy'])}"],
        [f"Which raise shirt recall against `{CONTROL}` (✓) without a ✓ on the focus-group error?",
         ticks(v["shirt_only"])],
        ["Best retrieval (test MAP@R, mean of seeds)",
         f"`{best_map}`: {summary[best_map]['MAP@R']} against `{CONTROL}`'s {summary[CONTROL]['MAP@R']}; "
         f"Δ {paired_delta(vs[best_map], 'map_at_r', 1, 3)}"],
        [f"`{CONTROL}` against `ce`: the class-balanced batches together with `{CONTROL}`'s own tuned settings "
         "(see the caveats below)",
         f"focus-group error Δ {paired_delta(sampler, 'focus_group_error')} points"],
    ]  # fmt: skip
    best = REF / "study" / "best"
    b = next((c for c in read_json(best / "paired.json")["comparisons"] if c["method"] == "triplet"
              and c["control"] == CONTROL), None) if (best / "paired.json").is_file() else None  # fmt: skip
    if b is not None:
        recipe = read_json(best / "protocol.json")["recipe"]
        page = link(RESULTS / "best.md", frag, "paired table", "the-loss-and-the-sampler-paired-over-the-test-images")
        rows.append([f"The same two methods at another budget: `triplet` against `{CONTROL}`, "
                     f"`{recipe['backbone']}`, {recipe['epochs']} epochs (best-model study)",
                     f"focus-group error Δ {paired_delta(b, 'focus_group_error')}, accuracy Δ "
                     f"{paired_delta(b, 'accuracy')}, MAP@R Δ {paired_delta(b, 'map_at_r', 1, 3)} ({page}). "
                     f"A different network and budget from this {epochs}-epoch screen: neither result stands in "
                     "for the other"])  # fmt: skip
    shirt = {g["method"]: g for g in read_json(REF / "study" / "unseen" / "unseen.json")["groups"]
             if g["held_out"] == "6"}  # fmt: skip
    if shirt:
        score, shot = (lambda m: shirt[m]["map_at_r"]["mean"]), (lambda m: shirt[m]["shot_20"]["mean"])
        ranked = sorted(shirt, key=score, reverse=True)
        rows.append(["Best on Shirt when it was never trained on (held-out MAP@R; 20-shot kNN recall)",
                     "; ".join(f"`{m}` {score(m):.3f}, {100 * shot(m):.1f} %" for m in ranked)
                     + f" (best: `{max(shirt, key=score)}`)"])  # fmt: skip
    note = (
        f"A short-training screen: `{p['tune']['backbone']}`, {epochs} epochs a run. Generated from the paired "
        "comparisons (softmax head; MAP@R: the embedding), the summary and the unseen-class runs; Δ = method − "
        "control in points, with the paired table's 95 % interval and its ✓ / ✗ marks (how to read them: "
        f"{link(RESULTS / 'README.md', frag, 'the intervals', INTERVALS)})."
    )
    return {frag.name: table(["question", "answer"], rows) + "\n\n" + note}


def loss_caveats(study, dest: Path) -> dict[str, str]:
    """Where the loss comparison is unequal, from its own files: protocol.json, the final runs' config.json and the
    tuning trials (tune/<method>/trials.csv)."""
    from embedfm.config import resolved_sampler

    out, frag = Path(study.out), Path(study.out) / "caveats.md"
    p = read_json(out / "protocol.json")
    methods, seed = list(p["methods"]), p["seeds"][0]
    cfg = {m: read_json(out / f"{m}_s{seed}" / "config.json") for m in methods}

    def groups(key) -> str:
        by: dict[str, list[str]] = {}
        for m in methods:
            if (v := key(m)) is not None:
                by.setdefault(v, []).append(f"`{m}`")
        return "; ".join(f"{v}: {', '.join(ms)}" for v, ms in by.items())

    balanced = [m for m in methods if resolved_sampler(cfg[m]["loss"], cfg[m]["sampler"]) == "balanced"]
    oversample = groups(lambda m: f"{cfg[m]['focus_oversample']:.2f}×" if m in balanced else None)
    shared_keys = ("lr", "weight_decay", "label_smoothing")
    trials = {m: {int(r["number"]): tuple(r[k] for k in shared_keys) for r in summary_rows(out / "tune" / m /
              "trials.csv")} for m in methods}  # fmt: skip
    numbers = sorted(set.intersection(*(set(t) for t in trials.values())))
    alike = [n for n in numbers if len({trials[m][n] for m in methods}) == 1]
    differ = [n for n in numbers if n not in alike]
    tuned = lambda m: ", ".join(f"{k.replace('_', ' ')} {setting(round(cfg[m][k], 4))}" for k in shared_keys)
    rows = [
        ["budget", f"a short-training screen: every final run is {p['final_epochs']} epochs of "
         f"`{p['tune']['backbone']}`, every tuning trial {p['tune']['epochs']} epochs on {p['tune']['limit']:,} "
         "train images; what holds at this budget need not hold for longer training"],
        ["starting point", "trial 0 of every search is embedfm's default settings, which an earlier 20-trial search "
         f"of the triplet loss kept ({link(RESULTS / 'tuning.md', frag, 'tuning')}): the shared settings start where "
         "the triplet loss was tuned, the other losses' own parameters at pytorch-metric-learning's defaults"],
        ["search", f"trial 0 is the defaults for every method; of the searched trials, only "
         f"{', '.join(str(n) for n in alike if n != 0) or 'none'} drew the same "
         f"{', '.join(k.replace('_', ' ') for k in shared_keys)} for every method; trials "
         f"{', '.join(map(str, differ))} differ between methods, so the searches tried different points"],
        ["embedding size", groups(lambda m: f"{cfg[m]['embedding_dim']}-d")],
        ["batches", f"class-balanced batches oversample the four focus classes ({oversample}); random batches: "
         f"{', '.join(f'`{m}`' for m in methods if m not in balanced)}"],
        [f"`{CONTROL}` against `ce`", f"not the batches alone: `ce` trained with {tuned('ce')}, `{CONTROL}` with "
         f"{tuned(CONTROL)} (each its own tuning's best), so that row measures the batches and the settings together"],
    ]  # fmt: skip
    note = (
        f"Source: the final runs' config.json (seed {seed}; every seed of a method shares them), "
        + ", ".join(link(out / "tune" / m / "trials.csv", frag, m) for m in methods)
        + f" (tuning trials), {link(out / 'protocol.json', frag)}"
    )
    return {frag.name: table(["", "unequal or limited"], rows) + "\n\n" + note}


def loss_tuning(study, dest: Path) -> dict[str, str]:
    """Each method's `embedfm tune` search: trials, the defaults' and the best trial's validation accuracy, the
    settings it kept (tune/<method>/summary.json)."""
    out, frag = Path(study.out), Path(study.out) / "tuning.md"
    methods, rows = list(read_json(out / "protocol.json")["methods"]), []
    for m in methods:
        s = read_json(out / "tune" / m / "summary.json")
        best, dflt = s["best"], s["defaults"]
        if not (best and dflt):
            raise ValueError(f"{out / 'tune' / m / 'summary.json'}: no completed best or defaults trial")
        params = ", ".join(f"{k} {setting(round(v, 4) if isinstance(v, float) else v)}"
                           for k, v in best["params"].items())  # fmt: skip
        rows.append([f"`{m}`", str(s["finished"]), pct(dflt["val_acc"]), pct(best["val_acc"]),
                     "defaults" if best["number"] == dflt["number"] else str(best["number"]), params])  # fmt: skip
    note = "Validation accuracy of the tuning trials (a reduced budget, see the protocol). Source: " + ", ".join(
        link(out / "tune" / m / "best_config.json", frag, m) for m in methods
    )
    header = ["method", "trials", "defaults val acc %", "best val acc %", "best trial", "tuned settings"]
    return {frag.name: table(header, rows) + "\n\n" + note}


def loss_diagnostics(study, dest: Path) -> dict[str, str]:
    """The diagnostics runs (diagnostics/<method>_s0/history.json): the probe at every epoch, side by side."""
    out, frag = Path(study.out), Path(study.out) / "diagnostics.md"
    d = read_json(out / "protocol.json")["diagnostics"]
    paths = {m: out / "diagnostics" / f"{m}_s0" / "history.json" for m in d["methods"]}
    runs = {m: read_json(path) for m, path in paths.items()}
    shown = ("active ff %", "d(a,p) ff", "d(a,n) ff", "loss parts", "train acc %", "val focus err %")
    fig = lambda e, k: f"{e[k]:.3f}" if k in e else "–"
    rows = []
    for i in range(max(len(h) for h in runs.values())):
        row = [str(i + 1)]
        for h in runs.values():
            e = h[i] if i < len(h) else {}
            parts = " / ".join(f"{k} {e[k]:.3f}" for k in ("ce", "triplet") if e.get(k) is not None)
            row += [pct(e.get("diag_active_ff"), 1), fig(e, "diag_ap_ff"), fig(e, "diag_an_ff"), parts or "–",
                    pct(e.get("train_acc"), 1), pct(e.get("val_focus_err"))]  # fmt: skip
        rows.append(row)
    note = (
        f"One seed each, the method's tuned settings, {d['epochs']} epochs on {d['limit']:,} train images. ff: "
        "probe triplets whose anchor and negative are both focus classes; loss parts: the epoch's mean CE and "
        "metric-loss terms (unweighted). Source: " + ", ".join(link(path, frag, m) for m, path in paths.items())
    )
    return {frag.name: table(["epoch"] + [f"{m}: {h}" for m in runs for h in shown], rows) + "\n\n" + note}


TRIPLET_HISTORIES = [  # the recorded CE + triplet runs before the diagnostics, as globs under artifacts/reference/
    "demo/triplet_history.json",
    "study/fastcnn/triplet_s*/history.json",
    "study/fastcnn/triplet-focusmine_s*/history.json",
    "study/linear/triplet_s*/history.json",
    "study/mlp/triplet_s*/history.json",
    "study/lenet/triplet_s*/history.json",
    "study/resnet20/triplet_s*/history.json",
    "study/resnet20/triplet_e60_s0/history.json",
]


def triplet_histories(study, dest: Path) -> dict[str, str]:
    """The triplet and CE columns of the recorded CE + triplet histories: first and last epoch, range over seeds."""
    rows, every = [], []
    for pattern in TRIPLET_HISTORIES:
        paths = sorted(REF.glob(pattern))
        if not paths:
            raise ValueError(f"no history matches {REF / pattern}")
        hs = [read_json(p) for p in paths]
        every += hs
        shown = pattern.replace("/history.json", "/")
        if "_s*" in pattern:  # the seeds found, as the glob matched them
            shown = shown.replace("_s*", "_s{" + ",".join(p.parent.name.rsplit("_s", 1)[1] for p in paths) + "}")
        rows.append([
            f"`{shown}`", str(len(hs[0])), span([h[0]["triplet"] for h in hs]), span([h[-1]["triplet"] for h in hs]),
            f"{span([h[0]['ce'] for h in hs])} → {span([h[-1]['ce'] for h in hs])}",
        ])  # fmt: skip
    header = ["runs (`history.json` under `artifacts/reference/`)", "epochs", "`triplet` first epoch",
              "`triplet` last epoch", "`ce` first → last epoch"]  # fmt: skip
    rng = lambda xs, d: f"{min(xs):.{d}f} – {max(xs):.{d}f}"
    margin = read_json(REF / "study" / "fastcnn" / "triplet-margin_s0" / "history.json")
    note = (
        f"Over these {len(every)} runs the `triplet` term falls by "
        f"{rng([h[0]['triplet'] - h[-1]['triplet'] for h in every], 4)} "
        f"from the first epoch to the last and ends at {rng([h[-1]['triplet'] for h in every], 3)}, while the `ce` "
        f"part falls by {rng([h[0]['ce'] - h[-1]['ce'] for h in every], 2)}. The last epoch's `triplet` minus the "
        f"margin (0.2), the mean d(a, p) − d(a, n) of the active triplets, lies at "
        f"{rng([h[-1]['triplet'] - 0.2 for h in every], 3)}. The margin-loss run (`study/fastcnn/triplet-margin_s0/`, "
        f"MarginLoss: another per-triplet loss and divisor, not comparable with the column) falls from "
        f"{margin[0]['triplet']:.5f} to {margin[-1]['triplet']:.5f} over its {len(margin)} epochs."
    )
    return {"triplet_histories.md": table(header, rows) + "\n\n" + note}


# ------------------------------------------------------------------------------------------------ best model

# what each report figure is called, how it is read from a report entry, and how it is shown (scale, digits, unit)
RECIPE_FIGURES = {
    "accuracy": ("test accuracy", lambda e: e["classifiers"]["softmax"]["accuracy"], 100, 2, " %"),
    "focus_group_error": ("focus-group error", lambda e: e["classifiers"]["softmax"]["focus_group_error"], 100, 2,
                          " %"),
    "shirt_recall": ("shirt recall", lambda e: e["classifiers"]["softmax"]["per_class"]["6"]["recall"], 1, 3, ""),
}  # fmt: skip
SUMMARY_COLUMNS = ["seeds", "val acc %", "test acc softmax %", "test acc kNN %", "focus-group err softmax %",
                   "focus-group err kNN %", "recall 6", "MAP@R", "train s/run"]  # fmt: skip


def entries(root: Path, pattern: str) -> list[dict]:
    """The report entry of every committed run under root matching a glob, in name order."""
    return [e for rep in sorted(root.glob(f"{pattern}/report.json")) for e in read_json(rep)["runs"].values()]


def recipe_runs(study) -> tuple[list[dict], list[dict]]:
    """The report entries of every 30-epoch CE + triplet seed of the best recipe: this study's, then the resnet20
    study's (the same recipe)."""
    return entries(Path(study.out), "triplet_s*"), entries(REF / "study" / "resnet20", "triplet_s*")


def best_targets(study, dest: Path) -> dict[str, str]:
    """The best single-model recipe (every 30-epoch CE + triplet seed, this study's and the resnet20 study's)
    against the published figures of targets.json, the one place those figures and their sources live."""
    out, frag = Path(study.out), Path(study.out) / "targets.md"
    t = read_json(out / "targets.json")
    ours, theirs = recipe_runs(study)
    runs, rows = ours + theirs, []
    for fig, (name, get, scale, digits, unit) in RECIPE_FIGURES.items():
        xs = [get(e) for e in runs]
        measured = mean_std(xs, scale, digits) + unit
        target = next((x for x in t["targets"] if x["figure"] == fig), None)
        if target is None:
            rows.append([name, f"no published figure ({t['no_target'][fig].split(': ', 1)[-1]})", measured, "–"])
            continue
        above = statistics.fmean(xs) >= target["value"]
        rows.append([name, f"{target['published']}, {target['system']} {target['source']}; {target['split']}, "
                     f"{target['selection']}", measured,
                     ("above" if above else "below") + " the published figure"])  # fmt: skip
    note = (
        f"ResNet-20, CE + triplet, 30 epochs, final epoch, single models (softmax, flip TTA): mean ± sample std over "
        f"all {len(runs)} seeds of the recipe ({len(ours)} in study/best, {len(theirs)} in the resnet20 study). The "
        f"published figures are quoted as published, with their split and selection "
        f"({link(DOCS / 'references.md', frag, 'references')}); a best-epoch figure is selected on the test set, so "
        f"it is not like for like with a final-epoch mean. Source: {link(out / 'targets.json', frag)}"
    )
    header = ["figure", "published figure, source, split and selection", "measured", ""]
    return {frag.name: table(header, rows) + "\n\n" + note}


THREADS = {"1": "1 thread", "default": "torch's default threads"}


def best_curve(study, dest: Path) -> dict[str, str]:
    """curve.json: the measured points only (runs, final test accuracy, seconds per epoch of those runs, the gain
    from one measured length to the next); nothing fitted or extrapolated."""
    out, frag = Path(study.out), Path(study.out) / "curve.md"
    c = read_json(dest / "curve.json")
    gain_to, rows = {str(g["to"]): g for g in c["gains"]}, []
    shown = lambda x: round(100 * x, 2)  # the difference of the two means as shown, so that the row adds up
    for e, v in c["lengths"].items():
        acc = f"{100 * v['test_acc_mean']:.2f}" + (f" ± {100 * v['test_acc_std']:.2f}" if v["test_acc_std"] is not
                                                    None else "")  # fmt: skip
        g = gain_to.get(e)
        prev = c["lengths"][str(g["from"])]["test_acc_mean"] if g else None
        gain = f"{shown(v['test_acc_mean']) - shown(prev):+.2f} (from {g['from']})" if g else "–"
        cost = "; ".join(f"{t['mean']:.0f} ({t['runs']} run{'s' if t['runs'] > 1 else ''}, "
                         f"{THREADS.get(k, k + ' threads')})" for k, t in v["seconds_per_epoch"].items())  # fmt: skip
        rows.append([e, str(v["runs"]), acc, gain, cost])
    singles = [e for e, v in c["lengths"].items() if v["runs"] == 1]
    note = (
        "CE + triplet at the recipe, final test accuracy (softmax, flip TTA) of each measured schedule length: the "
        "mean over its runs, ± the sample std where there are two runs or more. Gain: the shown mean minus the "
        "previous measured length's, in points. Training seconds per epoch: each length's own runs (last epoch's "
        "train_seconds / epochs), grouped by their thread setting; the machine's load differed between runs."
    )
    if singles:
        note += (
            f" With one run at {' and at '.join(singles)} epochs, these points support no slope and no "
            "extrapolation beyond the measured lengths."
        )
    note += f" Source: {link(out / 'curve.json', frag)}, plot {link(out / 'curve.png', frag)}"
    header = ["epochs", "runs", "test acc %", "gain, points", "training s / epoch (runs, threads)"]
    return {frag.name: table(header, rows) + "\n\n" + note}


def best_beside_study(study, dest: Path) -> dict[str, str]:
    """This study's summary rows beside the resnet20 study's runs of the same network (the same recipe)."""
    out, frag, resnet20 = Path(study.out), Path(study.out) / "beside_study.md", REF / "study" / "resnet20"
    rows = [[f"`{r['method']}` (best/)", *(r[c] for c in SUMMARY_COLUMNS)] for r in summary_rows(dest / "summary.csv")]
    theirs = summary_rows(resnet20 / "summary.csv")
    for prefix, what in (("triplet / resnet20 / 30 ep", "`triplet` (study)"), ("ce / resnet20 / 30 ep", "`ce` (study)"),
                         ("triplet / resnet20 / 60 ep", "`triplet`, 60 epochs (study)")):  # fmt: skip
        rows.append([what, *(find_row(theirs, prefix)[c] for c in SUMMARY_COLUMNS)])
    note = (
        "Final epoch, mean ± std over seeds; best/: this study (1 thread a run, two runs side by side, so its train "
        "seconds are not comparable with the study's 2-thread runs); study: the resnet20 study's runs of the same "
        f"recipe. Source: {link(out / 'summary.md', frag, 'study/best/summary.md')}, "
        f"{link(resnet20 / 'summary.md', frag, 'study/resnet20/summary.md')}"
    )
    header = ["method", "seeds", "val acc %", "test acc %", "test acc kNN %", "focus-group err %",
              "focus-group err kNN %", "shirt recall", "MAP@R", "train s/run"]  # fmt: skip
    return {frag.name: table(header, rows) + "\n\n" + note}


def describe_method(method: str) -> str:
    """'triplet / resnet20 / 30 ep (epochs=30)' → '`resnet20`, CE + triplet, 30 epochs'."""
    loss, backbone, rest = (s.strip() for s in method.split(" / ", 2))
    return f"`{backbone}`, {'CE + triplet' if loss == 'triplet' else 'CE'}, {rest.split(' ep', 1)[0]} epochs"


def headline(study, dest: Path) -> dict[str, str]:
    """The README's headline: the two demo models, the best recipe pooled over every seed of it, its plain and
    class-balanced CE controls and the ensemble of its seeds, the loss comparison's balanced CE control and best
    metric loss on validation."""
    frag = Path(study.out) / "headline.md"
    row = lambda r, what, src: [what, r["seeds"], r["test acc softmax %"], r["focus-group err softmax %"],
                                r["recall 6"], r["MAP@R"], src]  # fmt: skip
    rows = []
    for run, what in (("ce", "CE"), ("triplet", "CE + triplet")):
        r = read_json(REF / "demo" / "report.json")["runs"][run]
        sm = r["classifiers"]["softmax"]
        rows.append([f"`{r['backbone']}`, {what}, {r['epochs']} epochs (`make demo`)", "1", pct(sm["accuracy"]),
                     pct(sm["focus_group_error"]), f"{sm['per_class']['6']['recall']:.3f}",
                     f"{r['retrieval']['map_at_r']:.3f}",
                     link(REF / "demo" / "report.md", frag, "demo report")])  # fmt: skip
    ours, theirs = recipe_runs(study)
    runs = ours + theirs
    summary = lambda s: REF / "study" / s / "summary.md"
    rows.append(["`resnet20`, CE + triplet, 30 epochs (best recipe, every seed)", str(len(runs)),
                 *(mean_std([get(e) for e in runs], scale, digits) for _, get, scale, digits, _ in
                   RECIPE_FIGURES.values()), mean_std([e["retrieval"]["map_at_r"] for e in runs], 1, 3),
                 link(RESULTS / "best.md", frag, "best-model study") + f" ({link(summary('best'), frag, 'summary')}, "
                 f"{link(summary('resnet20'), frag, 'resnet20 study')})"])  # fmt: skip
    r = find_row(summary_rows(REF / "study" / "resnet20" / "summary.csv"), "ce / resnet20 / 30 ep")
    rows.append(row(r, describe_method(r["method"]) + " (plain classifier)",
                    link(summary("resnet20"), frag, "resnet20 study")))  # fmt: skip
    balanced = find_row(summary_rows(dest / "summary.csv"), "ce-balanced")
    rows.append(
        row(
            balanced,
            "`resnet20`, CE, class-balanced batches, 30 epochs",
            link(summary("best"), frag, "best-model study"),
        )
    )
    e = read_json(Path(study.out) / "ensemble_triplet" / "ensemble.json")
    sm = e["softmax_average"]
    rows.append([f"`resnet20`, CE + triplet, 30 epochs: **ensemble** of {len(e['runs'])} seeds (softmax averaged; "
                 "MAP@R: the concatenated embeddings)", "–", pct(sm["accuracy"]), pct(sm["focus_group_error"]),
                 f"{sm['per_class']['6']['recall']:.3f}", f"{e['retrieval_concatenated']['map_at_r']:.3f}",
                 link(Path(study.out) / "ensemble_triplet" / "ensemble.md", frag, "ensemble")])  # fmt: skip
    losses = REF / "study" / "losses"
    p, theirs = read_json(losses / "protocol.json"), summary_rows(losses / "summary.csv")
    best = find_row(theirs, next(iter(p["ranking"])))  # validation chooses the best metric loss, not test
    for r, what in ((find_row(theirs, "ce-balanced"), "CE, class-balanced batches"),
                    (best, f"CE + {best['method']}, best metric loss (validation kNN)")):  # fmt: skip
        rows.append(
            row(
                r,
                f"`fastcnn`, {what}, tuned, {p['final_epochs']} epochs",
                link(summary("losses"), frag, "loss comparison"),
            )
        )
    header = ["model", "seeds", "test accuracy %", "focus-group error %", "shirt recall", "MAP@R", "from"]
    return {frag.name: table(header, rows)}


# ------------------------------------------------------------------------------------------------ speed run


def reached(seeds: list[dict], target: str) -> str:
    """Mean training seconds (and epochs) to a validation target over the seeds that reached it, 'k/n' if not all."""
    hits = [s["time_to"].get(target) for s in seeds]
    got = [h for h in hits if h]
    if not got:
        return "never"
    text = f"{statistics.mean(h['train_s'] for h in got):.0f} s ({statistics.mean(h['epoch'] for h in got):.2f} ep)"
    return text if len(got) == len(hits) else f"{text}, {len(got)}/{len(hits)} seeds"


def cpu_line(m: dict) -> str:
    """machine.describe()'s record as one line: model, cores, the speed-relevant flags."""
    return f"{m.get('cpu_model', '?')}, {m.get('cores', '?')} cores, {' '.join(m.get('speed_flags', [])) or 'no AVX'}"


def speedrun_ablation(study, dest: Path) -> dict[str, str]:
    """ablation.jsonl (studies/speedrun.py): per row, what it adds, and mean ± std over its seeds."""
    from embedfm.config import FIELDS

    out, frag = Path(study.out), Path(study.out) / "ablation.md"
    head, *lines = [json.loads(x) for x in (out / "ablation.jsonl").read_text().splitlines() if x.strip()]
    rows: dict[str, list[dict]] = {}
    for r in lines:
        rows.setdefault(r["row"], []).append(r)
    out_rows = []
    for name, runs in rows.items():
        epochs = runs[0]["settings"].get("epochs", FIELDS["epochs"].default)
        out_rows.append([
            f"`{name}`", f"`{runs[0]['on']}`" if runs[0].get("on") else "–", runs[0]["change"], str(len(runs)),
            f"{epochs:g}", mean_std([r["train_s"] for r in runs], digits=0),
            mean_std([r["val_acc"] for r in runs], 100),
            *(["re-scored"] * 2 if runs[0].get("rescored_from") else [reached(runs, t) for t in ("0.92", "0.93")]),
        ])  # fmt: skip
    note = (
        f"Validation split only, mean ± std over seeds; each row adds its change to the row it builds on. Machine: "
        f"{cpu_line(head['machine'])}. Source: {link(out / 'ablation.jsonl', frag)}"
    )
    header = ["row", "builds on", "adds", "seeds", "epochs", "training s", "val acc % (final)", "to 92 % val",
              "to 93 % val"]  # fmt: skip
    return {frag.name: table(header, out_rows) + "\n\n" + note}


def speedrun_race(study, dest: Path) -> dict[str, str]:
    """speedrun.json (scripts/bench.py --only speedrun): the recipes raced one after the other, mean ± std over
    seeds, and the time each took to the validation targets."""
    frag, path = Path(study.out) / "race.md", REF / "speedrun.json"
    race, rows = read_json(path), []
    for e in race["entries"]:
        seeds = list(e["seeds"].values())
        rows.append([
            f"`{e['name']}`: {e['what']}", str(len(seeds)), mean_std([s["train_s"] for s in seeds], digits=0),
            mean_std([s["val_acc"] for s in seeds], 100),
            "– (stopped)" if all(s["stopped"] for s in seeds) else mean_std([s["test_acc"] for s in seeds], 100),
            *(reached(seeds, t) for t in ("0.92", "0.93", "0.94")),
        ])  # fmt: skip
    note = (
        f"Measured one after the other in one run on {race['date']}: {cpu_line(race['machine'])}. Test accuracy of "
        f"the final epoch (softmax, the recipe's test-time augmentation), mean ± std over seeds. Source: "
        f"{link(path, frag)}, plot {link(REF / 'speedrun.png', frag)}"
    )
    header = ["recipe", "seeds", "training s", "val acc % (final)", "test acc %", "to 92 % val", "to 93 % val",
              "to 94 % val"]  # fmt: skip
    return {frag.name: table(header, rows) + "\n\n" + note}


SPEED_TARGETS = (("fast", 0.94, 600), ("fast_short", 0.93, 240))  # (entry, test accuracy, seconds of training)


def speedrun_targets(study, dest: Path) -> dict[str, str]:
    """The speed-run targets against speedrun.json: met or not, with the figures that decide it."""
    frag, path = Path(study.out) / "targets.md", REF / "speedrun.json"
    entries = {e["name"]: list(e["seeds"].values()) for e in read_json(path)["entries"]}
    rows = []
    for name, acc, budget in SPEED_TARGETS:
        seeds = entries[name]
        test = statistics.mean(s["test_acc"] for s in seeds)
        slowest = max(s["train_s"] for s in seeds)
        rows.append([f"≥ {100 * acc:.1f} % test in ≤ {budget // 60} min (`{name}`, {len(seeds)} seeds)",
                     f"{mean_std([s['test_acc'] for s in seeds], 100)} % test; slowest seed {slowest:.0f} s",
                     "**met**" if test >= acc and slowest <= budget else "not met"])  # fmt: skip
    ce, trip = entries.get("fast_short"), entries.get("fast_short_triplet")
    if ce and trip:
        level = statistics.mean(s["points"][-1]["val_acc"] for s in ce)
        ce_s = statistics.mean(s["train_s"] for s in ce)
        hits = [next((p["train_s"] for p in s["points"] if p["val_acc"] >= level), None) for s in trip]
        got = [h for h in hits if h is not None]
        took = "never reached" if not got else f"{statistics.mean(got):.0f} s = ×{statistics.mean(got) / ce_s:.2f}"
        met = len(got) == len(hits) and statistics.mean(got) <= 1.2 * ce_s
        rows.append([f"CE + triplet reaches CE's final validation accuracy ({100 * level:.2f} %) within 1.2× CE's "
                     f"time (4-minute budget, {len(trip)} seed)",
                     f"CE {ce_s:.0f} s; CE + triplet {took}", "**met**" if met else "not met"])  # fmt: skip
    best = [(p["train_s"], name) for name, seeds in entries.items() for s in seeds for p in s["points"]
            if p["val_acc"] >= 0.94]  # fmt: skip
    first = f"{min(best)[0]:.0f} s (`{min(best)[1]}`)" if best else "not reached by any run"
    rows.append(["fastest time to 94 % validation accuracy", first, "–"])
    return {frag.name: table(["target", "measured", ""], rows) + "\n\nSource: " + link(path, frag)}
