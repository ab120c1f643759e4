"""Rebuild the generated tables of README.md and docs/ from the measurements committed in artifacts/reference/.

    .venv/bin/python scripts/make_docs.py            # rewrite the table blocks in place (`make docs`)
    .venv/bin/python scripts/make_docs.py --check    # write nothing; exit 1 and name the files that would change

Every table that holds a measurement sits between two marker lines, and only the text between them is rewritten
(the prose around the markers is hand-written and left alone). The opening marker names either results files and a
template table (`embedfm.tables` renders it; its docstring has the syntax), e.g.

    <!-- table: study/fastcnn/summary.csv "where=method!~^kNN on raw pixels"
    | method | test acc % | shirt recall |
    | {method} | {test acc softmax %} | {recall 6:.3f} |
    -->
    ... generated, then "Source:" and links to the files read ...
    <!-- /table -->

or, where a table needs code (joins across files, verdicts in words), a renderer of TABLES: `<!-- table: NAME -->`.
The study summaries (artifacts/reference/study/*/summary.md and .csv) are first regenerated from their runs'
report.json files with `embedfm.summarize`; the other study results (runs.csv, last_epoch.json,
contrasts.json, unseen.json, paired.json, curve.json) are read as `embedfm study publish` wrote them (`embedfm study
check` rebuilds them byte for byte); then every block is rendered from files under artifacts/reference/, or
from the config schema and `embedfm.tune.SPACE` for the flag and search-space tables. The output depends on those
alone: running it twice, or on a fresh clone, changes nothing. It needs no dataset and trains nothing.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from embedfm import tables
from embedfm.config import FIELDS, GROUPS
from embedfm.errors import EmbedfmError
from embedfm.floor import per_run_span
from embedfm.markdown import md_table as table
from embedfm.study import verdict
from embedfm.summarize import summarize

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^(<!-- table: (.*?)-->\n)(.*?)^(<!-- /table -->)$", re.S | re.M)
PIXEL_ROW = "kNN on raw pixels"


class DocsError(Exception):
    """An artifact a table needs is missing or not in the expected shape."""


@dataclass
class Ctx:
    """Where the artifacts are, where the fresh study summaries are, and which file a table lands in."""

    ref: Path  # artifacts/reference
    summaries: dict[str, Path]  # backbone → dir holding the summary.csv to render from
    here: Path  # dir of the Markdown file being filled (links are relative to it)

    def link(self, path: Path, text: str | None = None) -> str:
        rel = os.path.relpath(path, self.here).replace(os.sep, "/")
        return f"[{text or path.name}]({rel})"

    def open_as(self, rel: str) -> Path:
        """A file a marker names: a study summary as regenerated this run, anything else as committed."""
        parts = rel.split("/")
        if len(parts) == 3 and parts[0] == "study" and parts[2].startswith("summary.") and parts[1] in self.summaries:
            return self.summaries[parts[1]] / parts[2]
        return self.ref / rel

    def summary(self, backbone: str) -> list[dict[str, str]]:
        path = self.summaries.get(backbone, self.ref / "study" / backbone) / "summary.csv"
        if not path.is_file():
            raise DocsError(f"{path} is missing: run `embedfm summarize {self.ref / 'study' / backbone}`")
        with open(path, newline="") as fh:
            return list(csv.DictReader(fh))


# ---------------------------------------------------------------------------------------------- helpers


def load(path: Path):
    if not path.is_file():
        raise DocsError(f"{path} is missing")
    return json.loads(path.read_text())


def jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise DocsError(f"{path} is missing")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def pct(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}"


def num(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}"


def column(row: dict[str, str], name: str, source: str) -> str:
    if name not in row:
        raise DocsError(f"{source}: no column {name!r} (columns: {', '.join(row)})")
    return row[name]


def find_row(ctx: Ctx, backbone: str, prefix: str) -> dict[str, str]:
    rows = [r for r in ctx.summary(backbone) if r["method"].startswith(prefix)]
    if len(rows) != 1:
        raise DocsError(f"study/{backbone}/summary.csv: expected one row starting {prefix!r}, found {len(rows)}")
    return rows[0]


def describe_method(method: str) -> str:
    """'triplet / resnet20 / 30 ep (epochs=30)' → '`resnet20`, CE + triplet, 30 epochs'."""
    loss, backbone, rest = (s.strip() for s in method.split(" / ", 2))
    epochs = rest.split(" ep", 1)[0]
    return f"`{backbone}`, {'CE + triplet' if loss == 'triplet' else 'CE'}, {epochs} epochs"


def runs_of(ref: Path, backbone: str, pattern: str) -> list[tuple[Path, dict]]:
    """(run dir, report entry) of every committed run of a study matching a glob, in name order."""
    out = []
    for rep in sorted((ref / "study" / backbone).glob(f"{pattern}/report.json")):
        (entry,) = load(rep)["runs"].values()
        out.append((rep.parent, entry))
    if not out:
        raise DocsError(f"no runs matching study/{backbone}/{pattern}")
    return out


def committed_run(ref: Path, recorded: str) -> tuple[str, Path] | None:
    """The committed copy of a run that an artifact names by the path it was written to (a report's run_dir):
    (short label, its report.json), or None."""
    for rep in sorted(ref.glob("**/report.json")):
        runs = load(rep)["runs"]
        for name, r in runs.items():
            if r.get("run_dir") == recorded:
                where = rep.parent.relative_to(ref).as_posix()
                return (f"{where} ({name})" if len(runs) > 1 else where), rep
    return None


def run_label(ctx: Ctx, recorded: str) -> str:
    found = committed_run(ctx.ref, recorded)
    return ctx.link(found[1], found[0]) if found else f"`{recorded}`"


def study_run_by_name(ctx: Ctx, backbone: str, name: str) -> str:
    """A study run named as in its report (e.g. in umap.json), shown as its committed folder."""
    for run_dir, _ in runs_of(ctx.ref, backbone, "*"):
        if name in load(run_dir / "report.json")["runs"]:
            return ctx.link(run_dir / "report.json", f"study/{backbone}/{run_dir.name}")
    return f"`{name}`"


# ------------------------------------------------------------------------------------------------ README


def t_headline(ctx: Ctx) -> str:
    ref = ctx.ref
    demo = load(ref / "demo" / "report.json")["runs"]
    header = ["model", "seeds", "test accuracy %", "focus-group error %", "shirt recall", "MAP@R", "from"]
    rows = []
    for run, what in (("ce", "CE"), ("triplet", "CE + triplet")):
        r = demo[run]
        sm = r["classifiers"]["softmax"]
        rows.append(
            [
                f"`{r['backbone']}`, {what}, {r['epochs']} epochs (`make demo`)",
                "1",
                pct(sm["accuracy"]),
                pct(sm["focus_group_error"]),
                num(sm["per_class"]["6"]["recall"]),
                num(r["retrieval"]["map_at_r"]),
                ctx.link(ref / "demo" / "report.md", "demo report"),
            ]
        )
    rows.append(best_recipe_headline(ctx))
    summary_md = ref / "study" / "resnet20" / "summary.md"
    for prefix, note in (("ce / resnet20 / 30 ep", " (plain classifier)"),):
        r = find_row(ctx, "resnet20", prefix)
        rows.append(
            [
                describe_method(r["method"]) + note,
                r["seeds"],
                r["test acc softmax %"],
                r["focus-group err softmax %"],
                r["recall 6"],
                r["MAP@R"],
                ctx.link(summary_md, "resnet20 study"),
            ]
        )
    rows += best_headline(ctx)
    rows += loss_study_headline(ctx)  # the raw-pixel baseline lives in the study page
    return table(header, rows)


def best_recipe_headline(ctx: Ctx) -> list[str]:
    """The best recipe (ResNet-20, CE + triplet, 30 epochs) pooled over every seed of it, study/best's and the
    resnet20 study's: the figure docs/results/best.md holds against the published ones."""
    ours, study = recipe_runs(ctx)
    runs = ours + study
    figs = [mean_std([get(e) for e in runs], scale, digits) for _, get, scale, digits, _ in RECIPE_FIGURES.values()]
    best_md = ctx.ref.parents[1] / "docs" / "results" / "best.md"
    return ["`resnet20`, CE + triplet, 30 epochs (best recipe, every seed)", str(len(runs)), *figs,
            mean_std([e["retrieval"]["map_at_r"] for e in runs], 1, 3),
            ctx.link(best_md, "best-model study") + " (" + ctx.link(ref_summary(ctx, "best"), "summary") + ", "
            + ctx.link(ref_summary(ctx, "resnet20"), "resnet20 study") + ")"]  # fmt: skip


def best_headline(ctx: Ctx) -> list[list[str]]:
    """The best recipe's class-balanced CE control and the ensemble of its CE + triplet seeds (study/best), each
    once it has been measured; the ensemble is declared as one."""
    root = ctx.ref / "study" / "best"
    rows = []
    if (root / "summary.csv").is_file():
        link = ctx.link(root / "summary.md", "best-model study")
        r = find_row(ctx, "best", "ce-balanced")
        rows.append(["`resnet20`, CE, class-balanced batches, 30 epochs", r["seeds"], r["test acc softmax %"],
                     r["focus-group err softmax %"], r["recall 6"], r["MAP@R"], link])  # fmt: skip
    if (path := root / "ensemble_triplet" / "ensemble.json").is_file():
        e, link = load(path), ctx.link(path.with_suffix(".md"), "ensemble")
        sm = e["softmax_average"]
        rows.append([f"`resnet20`, CE + triplet, 30 epochs: **ensemble** of {len(e['runs'])} seeds (softmax averaged; "
                     "MAP@R: the concatenated embeddings)",
                     "–", pct(sm["accuracy"]), pct(sm["focus_group_error"]), num(sm["per_class"]["6"]["recall"]),
                     num(e["retrieval_concatenated"]["map_at_r"]), link])  # fmt: skip
    return rows


def best_metric_loss(ctx: Ctx) -> dict[str, str]:
    """The summary row of the loss study's best metric loss: first of protocol.json's ranking (mean final
    validation kNN accuracy over its seeds; validation chooses, not test)."""
    _, p = study_protocol(ctx, "losses")
    return find_row(ctx, "losses", next(iter(p["ranking"])))


def loss_study_headline(ctx: Ctx) -> list[list[str]]:
    """The class-balanced CE control and the best metric loss of the loss comparison (same tuning, same budget)."""
    link = ctx.link(ctx.ref / "study" / "losses" / "summary.md", "loss comparison")
    epochs = load(ctx.ref / "study" / "losses" / "protocol.json")["final_epochs"]
    best = best_metric_loss(ctx)
    out = []
    for r, what in ((find_row(ctx, "losses", "ce-balanced"), "CE, class-balanced batches"),
                    (best, f"CE + {best['method']}, best metric loss (validation kNN)")):  # fmt: skip
        out.append([f"`fastcnn`, {what}, tuned, {epochs} epochs", r["seeds"], r["test acc softmax %"],
                    r["focus-group err softmax %"], r["recall 6"], r["MAP@R"], link])  # fmt: skip
    return out


# -------------------------------------------------------------------------------------------------- demo


def t_demo_runs(ctx: Ctx) -> str:
    runs = load(ctx.ref / "demo" / "report.json")["runs"]
    sil = load(ctx.ref / "demo" / "umap.json")["focus_silhouette"]
    header = ["run", "loss", "backbone", "epochs", "seed", "training s", "eval s", "focus-class silhouette"]
    rows = [
        [
            run,
            r["loss"],
            f"`{r['backbone']}`",
            str(r["epochs"]),
            str(r["seed"]),
            f"{r['train_seconds']:.1f}",
            f"{r['eval_seconds']:.1f}",
            num(sil[run]) if run in sil else "–",
        ]
        for run, r in runs.items()
    ]
    src = ", ".join(ctx.link(ctx.ref / "demo" / f) for f in ("report.json", "umap.json"))
    return table(header, rows) + "\n\nSource: " + src


def t_demo_history(ctx: Ctx) -> str:
    hist = {run: load(ctx.ref / "demo" / f"{run}_history.json") for run in ("ce", "triplet")}
    header = ["epoch", "CE val accuracy %", "CE training s", "CE + triplet val accuracy %", "CE + triplet training s"]
    rows = []
    for a, b in zip(hist["ce"], hist["triplet"]):
        rows.append(
            [
                str(a["epoch"]),
                pct(a["val_acc"]),
                f"{a['train_seconds']:.1f}",
                pct(b["val_acc"]),
                f"{b['train_seconds']:.1f}",
            ]
        )
    src = ", ".join(ctx.link(ctx.ref / "demo" / f"{run}_history.json") for run in hist)
    return table(header, rows) + "\n\nTraining seconds are cumulative, validation excluded. Source: " + src


def t_demo_time(ctx: Ctx) -> str:
    path = ctx.ref / "demo" / "make_demo_time.txt"
    if not path.is_file():
        raise DocsError(f"{path} is missing")
    fields = dict(line.strip().rsplit(": ", 1) for line in path.read_text().splitlines() if ": " in line)
    wall = fields["Elapsed (wall clock) time (h:mm:ss or m:ss)"]
    rss_kib = int(fields["Maximum resident set size (kbytes)"])
    rows = [
        ["wall time of `make demo` (venv set-up included), m:ss", wall],
        ["peak resident memory", f"{rss_kib / 2**20:.2f} GiB"],
    ]
    return table(["measurement (`/usr/bin/time -v`)", "value"], rows) + "\n\nSource: " + ctx.link(path)


# ------------------------------------------------------------------------------------------------- study


def summary_links(ctx: Ctx, backbones: list[str]) -> str:
    return ", ".join(ctx.link(ctx.ref / "study" / b / "summary.md", f"study/{b}/summary.md") for b in backbones)


def t_study_resnet20_umap(ctx: Ctx) -> str:
    path = ctx.ref / "study" / "resnet20" / "umap.json"
    u = load(path)
    rows = [[study_run_by_name(ctx, "resnet20", run), num(s)] for run, s in u["focus_silhouette"].items()]
    return table(["run", "focus-class silhouette"], rows) + "\n\nSource: " + ctx.link(path)


# ------------------------------------------------------------------------------------------- performance


def t_bench_meta(ctx: Ctx) -> str:
    b = load(ctx.ref / "bench.json")
    dates = b.get("section_dates", {})
    rows = [["machine", b["machine"]], ["date of the run", b["date"]]]
    machines = b.get("section_machines", {})
    rows += [[f"section `{s}` last measured", f"{d} on {machines.get(s, b['machine'])}"] for s, d in dates.items()]
    return table(["item", "value"], rows) + "\n\nSource: " + ctx.link(ctx.ref / "bench.json")


# ------------------------------------------------------------------------------------------ index scaling


def search_setting(r: dict) -> str:
    if "nprobe" in r:
        return f"nprobe={r['nprobe']}"
    if "ef_search" in r:
        return f"efSearch={r['ef_search']}"
    return "exact"


def t_index_meta(ctx: Ctx) -> str:
    path = ctx.ref / "bench_index.json"
    b = load(path)
    rows = [
        ["date", b["date"]],
        ["machine", f"{b['machine']}, faiss {b['faiss']} with {b['threads']} threads"],
        ["embeddings of", run_label(ctx, b["run"])],
        ["wall time of the whole benchmark", f"{b['seconds']:.0f} s"],
    ]
    return table(["item", "value"], rows) + "\n\nSource: " + ctx.link(path)


def t_index_compact(ctx: Ctx) -> str:
    path = ctx.ref / "bench_index.json"
    groups: dict[tuple, list[dict]] = {}
    for r in load(path)["rows"]:
        groups.setdefault((r["data"], r["n"], r["factory"]), []).append(r)
    header = ["data", "n", "index", "search", "queries/s", "recall@10", "B/vector", "build s"]
    rows = [
        [
            data,
            f"{n:,}",
            factory,
            " / ".join(search_setting(r) for r in rs),
            " / ".join(f"{r['qps']:,}" for r in rs),
            " / ".join(f"{r['recall_at_10']:.4f}" for r in rs),
            f"{rs[0]['bytes_per_vector']:.1f}",
            f"{rs[0]['build_s']:.2f}",
        ]
        for (data, n, factory), rs in groups.items()
    ]
    return table(header, rows) + "\n\nSource: " + ctx.link(path)


def t_serve_load(ctx: Ctx) -> str:
    """embedfm serve under load: searches/s and latency percentiles per index, clients and concurrent adds."""
    path = ctx.ref / "bench_serve.json"
    b = load(path)
    header = ["data", "n", "index", "clients", "adds meanwhile", "searches", "searches/s", "p50 ms", "p95 ms",
              "p99 ms", "in-process p50 ms (served ×)"]  # fmt: skip
    rows = []
    for ix in b["indexes"]:
        for c in ix["cells"]:
            first = c["clients"] == 1 and not c["concurrent_adds"]
            rows.append([ix["data"], f"{ix['n']:,}", ix["factory"], str(c["clients"]),
                         f"{c['adds']} adds ({c['adds_per_s']:.0f}/s)" if c["concurrent_adds"] else "–",
                         f"{c['requests']:,}", f"{c['searches_per_s']:,.0f}", f"{c['p50_ms']:.1f}",
                         f"{c['p95_ms']:.1f}", f"{c['p99_ms']:.1f}",
                         f"{ix['in_process']['p50_ms']:.1f} (× {ix['served_over_in_process_p50']:.2f})" if first
                         else ""])  # fmt: skip
    load_avg = " → ".join(f"{x:.1f}" for x in b.get("load_average_1min", []))
    calls = b["indexes"][0]["in_process"]["requests"]
    return (table(header, rows) + f"\n\n{b['query']}; at most {b['max_requests_per_cell']} searches or "
            f"{b['max_seconds_per_cell']:g} s a cell; in-process: `Model.search` of {calls} "
            f"single images. {b['date']}, {b['machine']}, faiss {b['faiss']}; 1-minute load average {load_avg}; "
            f"{b['seconds']} s in all. Source: " + ctx.link(path))  # fmt: skip


# ------------------------------------------------------------------------------------------------ tuning


def tune_dir(ctx: Ctx) -> Path:
    return ctx.ref / "tune" / "triplet"


def trials(ctx: Ctx) -> list[dict[str, str]]:
    path = tune_dir(ctx) / "trials.csv"
    if not path.is_file():
        raise DocsError(f"{path} is missing")
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def t_tune_summary(ctx: Ctx) -> str:
    s = load(tune_dir(ctx) / "summary.json")
    ts = trials(ctx)
    states = {st: sum(t["state"] == st for t in ts) for st in sorted({t["state"] for t in ts})}
    best, dflt = s["best"], s["defaults"]
    rows = [
        ["study", f"`{s['study']}`, objective `{s['objective']}`"],
        ["trials", f"{s['finished']} finished: " + ", ".join(f"{n} {st}" for st, n in states.items())],
        ["defaults (trial 0)", f"val acc {pct(dflt['val_acc'])} %, val focus-group err {pct(dflt['val_focus_err'])} %"],
        [
            f"best (trial {best['number']})",
            f"val acc {pct(best['val_acc'])} %, val focus-group err {pct(best['val_focus_err'])} %",
        ],
        [
            "best − defaults",
            f"val acc {100 * (best['val_acc'] - dflt['val_acc']):+.2f} points, "
            f"val focus-group err {100 * (best['val_focus_err'] - dflt['val_focus_err']):+.2f} points",
        ],
    ]
    src = ", ".join(ctx.link(tune_dir(ctx) / f) for f in ("summary.json", "trials.csv"))
    return table(["item", "value"], rows) + "\n\nSource: " + src


# ------------------------------------------------------------------------------------------------ probes


def first_reaching(points: list[dict], key: str, level: float) -> str:
    for p in points:
        if p.get(key, 0) >= level:
            return f"{p['epoch']:.2f} ep, {p['train_s']:.0f} s"
    return "never"


def t_probe_trajectory(ctx: Ctx) -> str:
    header = ["probe", "optimizer", "peak lr", "batch", "val acc % at the end", "first ≥ 91 %", "training s"]
    rows = []
    for path in sorted((ctx.ref / "probe").glob("ce_*.jsonl")):
        cfg, *points = jsonl(path)
        cfg = cfg["config"]
        end = points[-1]
        emas = [k for k in end if k.startswith("ema")]
        final = pct(end["raw"]) + "".join(f"; EMA {k[3:]}: {pct(end[k])}" for k in emas)
        rows.append(
            [
                ctx.link(path, path.stem),
                cfg["opt"],
                "default" if cfg.get("lr") is None else f"{cfg['lr']:g}",
                str(cfg["batch_size"]),
                final,
                first_reaching(points, "raw", 0.91),
                f"{end['train_s']:.0f}",
            ]
        )
    note = (
        "One run each of the demo CE configuration (seed 0, 3 epochs), validated every quarter epoch; "
        "`default` is the train config's peak lr."
    )
    return table(header, rows) + "\n\n" + note


def t_probe_knn_flip(ctx: Ctx) -> str:
    path = ctx.ref / "probe" / "knn_flip.jsonl"
    keys = [
        ("val_softmax", "softmax"),
        ("val_knn", "kNN"),
        ("val_knn_flip_queries", "kNN, flip-averaged queries"),
        ("val_knn_flip_queries_and_refs", "kNN, queries and references flip-averaged"),
        ("val_blend_2fold_cv", "softmax + kNN blend (2-fold CV)"),
    ]
    rows = [[run_label(ctx, r["run"]), *[pct(r[k]) for k, _ in keys]] for r in jsonl(path)]
    header = ["run (validation accuracy, %)", *[h for _, h in keys]]
    return table(header, rows) + "\n\nSource: " + ctx.link(path)


# ------------------------------------------------------------------------------------------------- usage


def default_text(d) -> str:
    if isinstance(d, bool):
        return str(d).lower()
    if isinstance(d, tuple):
        return ",".join(map(str, d))
    if isinstance(d, float):
        return f"{d:g}"
    return "unset" if d is None else str(d)


def t_train_flags(ctx: Ctx) -> str:
    """Every TrainConfig field as a flag, grouped as `embedfm train --help` groups them."""
    rows = []
    for group, title in GROUPS.items():
        rows.append([f"**{title}**", "", ""])
        for f in FIELDS.values():
            if f.metadata["group"] == group:
                choices = f.metadata.get("choices")
                help_text = f.metadata["help"] + (f" (one of {', '.join(choices)})" if choices else "")
                rows.append([f"`--{f.name.replace('_', '-')}`", f"`{default_text(f.default)}`", help_text])
    return table(["flag", "default", "meaning"], rows)


def t_tune_space(ctx: Ctx) -> str:
    """embedfm.tune.SPACE: what `embedfm tune` searches, per loss (the schema, not a measurement)."""
    from embedfm.tune import PARAMS, SPACE

    kinds = {"log": "log-uniform", "float": "uniform", "int": "integer"}
    rows = []
    for name, (kind, *args) in SPACE.items():
        shown = ", ".join(map(str, args[0])) if kind == "choice" else f"{args[0]:g} – {args[1]:g}"
        losses = ", ".join(loss for loss, params in PARAMS.items() if name in params)
        rows.append([f"`--{name.replace('_', '-')}`", kinds.get(kind, "one of"), shown, losses])
    return table(["setting", "drawn", "range", "searched for the method"], rows)


# ---------------------------------------------------------------------------------------------- speed run


def mean_std(xs: list[float], scale: float = 1.0, digits: int = 2) -> str:
    """'m ± s' over seeds (population std of 1 value is shown as '± 0'); '–' for none."""
    xs = [scale * x for x in xs if x is not None]
    if not xs:
        return "–"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.{digits}f} ± {sd:.{digits}f}"


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


def t_speedrun_ablation(ctx: Ctx) -> str:
    path = ctx.ref / "speedrun" / "ablation.jsonl"
    head, *lines = jsonl(path)
    rows, order = {}, []
    for r in lines:
        if r["row"] not in rows:
            order.append(r["row"])
        rows.setdefault(r["row"], []).append(r)
    header = ["row", "builds on", "adds", "seeds", "epochs", "training s", "val acc % (final)", "to 92 % val",
              "to 93 % val"]  # fmt: skip
    out = []
    for name in order:
        runs = rows[name]
        epochs = runs[0]["settings"].get("epochs", FIELDS["epochs"].default)
        out.append([
            f"`{name}`", f"`{runs[0]['on']}`" if runs[0].get("on") else "–", runs[0]["change"], str(len(runs)),
            f"{epochs:g}", mean_std([r["train_s"] for r in runs], digits=0),
            mean_std([r["val_acc"] for r in runs], 100),
            *(["re-scored"] * 2 if runs[0].get("rescored_from") else [reached(runs, t) for t in ("0.92", "0.93")]),
        ])  # fmt: skip
    note = (
        f"Validation split only, mean ± std over seeds; each row adds its change to the row it builds on. Machine: "
        f"{cpu_line(head['machine'])}. Source: {ctx.link(path)}"
    )
    return table(header, out) + "\n\n" + note


def t_speedrun_targets(ctx: Ctx) -> str:
    """The speed-run targets against speedrun.json: met or not, with the figures that decide it."""
    path = ctx.ref / "speedrun.json"
    entries = {e["name"]: list(e["seeds"].values()) for e in load(path)["entries"]}
    rows = []
    for name, acc, budget in (("fast", 0.94, 600), ("fast_short", 0.93, 240)):
        seeds = entries.get(name)
        if not seeds:
            raise DocsError(f"{path}: no {name!r} entry")
        test = statistics.mean(s["test_acc"] for s in seeds)
        slowest = max(s["train_s"] for s in seeds)
        met = test >= acc and slowest <= budget
        rows.append([f"≥ {100 * acc:.1f} % test in ≤ {budget // 60} min (`{name}`, {len(seeds)} seeds)",
                     f"{mean_std([s['test_acc'] for s in seeds], 100)} % test; slowest seed {slowest:.0f} s",
                     "**met**" if met else "not met"])  # fmt: skip
    ce, trip = entries.get("fast_short"), entries.get("fast_short_triplet")
    if ce and trip:
        level = statistics.mean(s["points"][-1]["val_acc"] for s in ce)
        ce_s = statistics.mean(s["train_s"] for s in ce)
        hits = [next((p["train_s"] for p in s["points"] if p["val_acc"] >= level), None) for s in trip]
        got = [h for h in hits if h is not None]
        verdict = "never reached" if not got else f"{statistics.mean(got):.0f} s = ×{statistics.mean(got) / ce_s:.2f}"
        met = len(got) == len(hits) and statistics.mean(got) <= 1.2 * ce_s
        rows.append([f"CE + triplet reaches CE's final validation accuracy ({100 * level:.2f} %) within 1.2× CE's "
                     f"time (4-minute budget, {len(trip)} seed)",
                     f"CE {ce_s:.0f} s; CE + triplet {verdict}", "**met**" if met else "not met"])  # fmt: skip
    best = [(p["train_s"], name) for name, seeds in entries.items() for s in seeds for p in s["points"]
            if p["val_acc"] >= 0.94]  # fmt: skip
    first = f"{min(best)[0]:.0f} s (`{min(best)[1]}`)" if best else "not reached by any run"
    rows.append(["fastest time to 94 % validation accuracy", first, "–"])
    return table(["target", "measured", ""], rows) + "\n\nSource: " + ctx.link(path)


def t_speedrun_recipe(ctx: Ctx) -> str:
    """embedfm.config.RECIPES["fast"]: what --recipe fast sets (the schema, not a measurement)."""
    from embedfm.config import RECIPES

    rows = [[f"`--{k.replace('_', '-')}`", f"`{default_text(v)}`", f"`{default_text(FIELDS[k].default)}`"]
            for k, v in RECIPES["fast"].items()]  # fmt: skip
    return table(["setting", "--recipe fast", "default"], rows)


def t_speedrun_race(ctx: Ctx) -> str:
    path = ctx.ref / "speedrun.json"
    race = load(path)
    header = ["recipe", "seeds", "training s", "val acc % (final)", "test acc %", "to 92 % val", "to 93 % val",
              "to 94 % val"]  # fmt: skip
    out = []
    for e in race["entries"]:
        seeds = list(e["seeds"].values())
        stopped = all(s["stopped"] for s in seeds)
        out.append([
            f"`{e['name']}`: {e['what']}", str(len(seeds)), mean_std([s["train_s"] for s in seeds], digits=0),
            mean_std([s["val_acc"] for s in seeds], 100),
            "– (stopped)" if stopped else mean_std([s["test_acc"] for s in seeds], 100),
            *(reached(seeds, t) for t in ("0.92", "0.93", "0.94")),
        ])  # fmt: skip
    note = (
        f"Measured one after the other in one run on {race['date']}: {cpu_line(race['machine'])}. Test accuracy of "
        f"the final epoch (softmax, the recipe's test-time augmentation), mean ± std over seeds. Source: "
        f"{ctx.link(path)}, plot {ctx.link(ctx.ref / 'speedrun.png')}"
    )
    return table(header, out) + "\n\n" + note


# ---------------------------------------------------------------------------------------------- loss study

# studies whose methods differ in many tuned settings: summarised with `embedfm summarize --names`
LOSS_COLUMNS = [
    ("method", "method"),
    ("seeds", "seeds"),
    ("val acc %", "val acc %"),
    ("test acc softmax %", "test acc %"),
    ("test acc kNN %", "test acc kNN %"),
    ("focus-group err softmax %", "focus-group err %"),
    ("focus-group err kNN %", "focus-group err kNN %"),
    ("recall 6", "shirt recall"),
    ("MAP@R", "MAP@R"),
    ("train s/run", "train s/run"),
]


def study_protocol(ctx: Ctx, study: str) -> tuple[Path, dict]:
    """A scripted study's dir and its protocol.json (what studies/losses.py or studies/best.py declares)."""
    root = ctx.ref / "study" / study
    return root, load(root / "protocol.json")


def t_losses_tune(ctx: Ctx) -> str:
    root, p = study_protocol(ctx, "losses")
    rows = []
    for m in p["methods"]:
        s = load(root / "tune" / m / "summary.json")
        best, dflt = s["best"], s["defaults"]
        if not (best and dflt):
            raise DocsError(f"{root / 'tune' / m / 'summary.json'}: no completed best or defaults trial")
        params = ", ".join(f"{k} {default_text(round(v, 4) if isinstance(v, float) else v)}"
                           for k, v in best["params"].items())  # fmt: skip
        rows.append([f"`{m}`", str(s["finished"]), pct(dflt["val_acc"]), pct(best["val_acc"]),
                     "defaults" if best["number"] == dflt["number"] else str(best["number"]), params])  # fmt: skip
    note = "Validation accuracy of the tuning trials (a reduced budget, see the protocol). Source: " + ", ".join(
        ctx.link(root / "tune" / m / "best_config.json", f"{m}") for m in p["methods"]
    )
    return table(["method", "trials", "defaults val acc %", "best val acc %", "best trial", "tuned settings"], rows) + (
        "\n\n" + note
    )


def t_losses_paired(ctx: Ctx) -> str:
    """paired.json (`embedfm summarize --names --paired`): every method against the two CE controls."""
    return paired_table(ctx, "losses")


def paired_table(ctx: Ctx, study: str) -> str:
    """A named study's paired.json: every method against each CE control, over the same test images; the seed-level
    intervals (what ✓ rests on), the validation column and the per-seed focus-group error test, then the
    image-only intervals given the trained models (cells rendered by `embedfm.summarize`, as in paired.md)."""
    from embedfm.summarize import focus_test_cell, paired_cell, validation_cell

    root = ctx.ref / "study" / study
    path = root / "paired.json"
    paired = load(path)
    figs, comps = paired["figures"], paired["comparisons"]
    heads = ["Δ accuracy", "Δ focus-group error", "Δ shirt recall", "Δ MAP@R"]
    rows = [[f"`{c['method']}`", f"`{c['control']}`", str(c["pairs"]), *(paired_cell(c[f], f) for f in figs),
             validation_cell(c), focus_test_cell(c)] for c in comps]  # fmt: skip
    images = [[f"`{c['method']}`", f"`{c['control']}`", *(paired_cell(c[f], f, "interval_images") for f in figs)]
              for c in comps]  # fmt: skip
    note = (
        "Method − control over the same test images (softmax head; MAP@R: the embedding), mean over seed pairs, in "
        f"points. Interval: 95 %, two-level bootstrap over seed pairs and test images ({paired['draws']} draws; "
        "[how to read it](README.md#how-to-read-the-intervals)). ✓ / ✗: Holm-adjusted p < 0.05 in the method's "
        f"favour / against it, the family being this table's {paired['family']} comparison × figure cells; an "
        "interval may exclude zero without a ✓. Validation: the same difference of the final epoch on the "
        "validation split (accuracy / focus-group error). Focus-group error test, per "
        "seed pair: images on which only the control / only the method makes a focus-group error, exact sign-flip "
        f"p. Source: {ctx.link(path)} (`embedfm summarize --names --paired {root.relative_to(ctx.ref.parent.parent)}`)"
    )
    given = (
        "Given these trained models (test images resampled, the models fixed; 95 % percentile interval, conditional "
        "on these runs: it says nothing about another seed):"
    )
    header = ["method", "control", "seed pairs", *heads, "validation Δ acc / Δ focus err", "focus-group error test"]
    return table(header, rows) + "\n\n" + note + "\n\n" + given + "\n\n" + table(["method", "control", *heads], images)


def t_losses_diag_epochs(ctx: Ctx) -> str:
    """The diagnostics runs (study/losses/diagnostics/): the probe at every epoch, triplet + DWS beside balanced CE."""
    root, p = study_protocol(ctx, "losses")
    runs = {m: load(root / "diagnostics" / f"{m}_s0" / "history.json") for m in p["diagnostics"]["methods"]}
    shown = ("active ff %", "d(a,p) ff", "d(a,n) ff", "loss parts", "train acc %", "val focus err %")
    header = ["epoch"] + [f"{m}: {h}" for m in runs for h in shown]
    rows = []
    for i in range(max(len(h) for h in runs.values())):
        row = [str(i + 1)]
        for h in runs.values():
            e = h[i] if i < len(h) else {}
            parts = " / ".join(f"{k} {e[k]:.3f}" for k in ("ce", "triplet") if e.get(k) is not None)
            row += [
                pct(e.get("diag_active_ff"), 1), num(e["diag_ap_ff"]) if "diag_ap_ff" in e else "–",
                num(e["diag_an_ff"]) if "diag_an_ff" in e else "–", parts or "–", pct(e.get("train_acc"), 1),
                pct(e.get("val_focus_err")),
            ]  # fmt: skip
        rows.append(row)
    d = p["diagnostics"]
    note = (
        f"One seed each, the method's tuned settings, {d['epochs']} epochs on {d['limit']:,} train images. ff: "
        "probe triplets whose anchor and negative are both focus classes; loss parts: the epoch's mean CE and "
        "metric-loss terms (unweighted). Source: "
        + ", ".join(ctx.link(root / "diagnostics" / f"{m}_s0" / "history.json", m) for m in runs)
    )
    return table(header, rows) + "\n\n" + note


RELATIVE_TARGET = 0.15  # the loss-comparison question: ≥ 15 % relative fewer focus-group errors than balanced CE
CONTROL, CONTROLS = "ce-balanced", ("ce", "ce-balanced")


def paired_delta(c: dict, fig: str, scale: float = 100, digits: int = 2) -> str:
    """One figure of one paired.json comparison: 'Δ [lo, hi]' in points, with the paired table's ✓ / ✗ mark."""
    d, (lo, hi) = c[fig]["difference"], c[fig]["interval"]
    mark = " ✓" if c[fig]["helps"] else " ✗" if c[fig]["hurts"] else ""
    return f"{scale * d:+.{digits}f} [{scale * lo:+.{digits}f}, {scale * hi:+.{digits}f}]{mark}"


def t_losses_verdict(ctx: Ctx) -> str:
    """The loss comparison's questions answered from paired.json, summary.csv and study/unseen (generated), and the
    best-model study's paired comparison of the same two methods at another budget beside it."""
    root, p = study_protocol(ctx, "losses")
    paired = load(root / "paired.json")["comparisons"]
    summary = {r["method"]: r for r in ctx.summary("losses")}
    metric = [m for m in summary if m not in CONTROLS]
    vs = {c["method"]: c for c in paired if c["control"] == CONTROL}
    delta = lambda m, fig, scale=100, digits=2: paired_delta(vs[m], fig, scale, digits)
    v = verdict(load(root / "paired.json"), list(summary.values()), CONTROL, metric, RELATIVE_TARGET)
    base, rel, meets, best_rel, best_map = (v[k] for k in ("control_focus_error", "relative", "meets", "largest_cut",
                                                            "best_map"))  # fmt: skip
    helps, hurts, shirt_only = v["helps"].__getitem__, v["hurts"].__getitem__, v["shirt_only"]
    names = lambda ms: ", ".join(f"`{m}`" for m in ms) or "**none**"
    epochs = p["final_epochs"]
    sampler = next(c for c in paired if c["method"] == CONTROL and c["control"] == "ce")
    rows = [
        [f"Does a metric loss cut the focus-group error by ≥ {100 * RELATIVE_TARGET:.0f} % relative against "
         f"`{CONTROL}` (✓ in the paired table), at {epochs} epochs?",
         ("**yes**: " + names(meets)) if meets else
         f"**no**. The largest cut is `{best_rel}`'s, {rel[best_rel]:+.1f} % relative: "
         f"Δ {delta(best_rel, 'focus_group_error')} points against `{CONTROL}`'s {base:.2f} %"],
        [f"Which lower the focus-group error against `{CONTROL}` (✓)? Which raise it (✗)?",
         f"lower: {names(helps('focus_group_error'))}; raise: {names(hurts('focus_group_error'))}"],
        [f"Which raise test accuracy against `{CONTROL}` (✓)? Which lower it (✗)?",
         f"raise: {names(helps('accuracy'))}; lower: {names(hurts('accuracy'))}"],
        [f"Which raise shirt recall against `{CONTROL}` (✓) without a ✓ on the focus-group error?",
         names(shirt_only)],
        ["Best retrieval (test MAP@R, mean of seeds)",
         f"`{best_map}`: {summary[best_map]['MAP@R']} against `{CONTROL}`'s {summary[CONTROL]['MAP@R']}; "
         f"Δ {delta(best_map, 'map_at_r', 1, 3)}"],
        [f"`{CONTROL}` against `ce`: the class-balanced batches together with `{CONTROL}`'s own tuned settings "
         "(see the caveats below)",
         f"focus-group error Δ {paired_delta(sampler, 'focus_group_error')} points"],
    ]  # fmt: skip
    best_path = ctx.ref / "study" / "best" / "paired.json"
    if best_path.is_file():
        b = next((c for c in load(best_path)["comparisons"] if c["method"] == "triplet" and c["control"] == CONTROL),
                 None)  # fmt: skip
        if b is not None:
            _, bp = study_protocol(ctx, "best")
            page = ctx.link(ctx.ref.parents[1] / "docs" / "results" / "best.md", "paired table").replace(
                ")", "#the-loss-and-the-sampler-paired-over-the-test-images)"
            )
            rows.append([f"The same two methods at another budget: `triplet` against `{CONTROL}`, "
                         f"`{bp['recipe']['backbone']}`, {bp['recipe']['epochs']} epochs (best-model study)",
                         f"focus-group error Δ {paired_delta(b, 'focus_group_error')}, accuracy Δ "
                         f"{paired_delta(b, 'accuracy')}, MAP@R Δ {paired_delta(b, 'map_at_r', 1, 3)} ({page}). "
                         f"A different network and budget from this {epochs}-epoch screen: neither result stands in "
                         "for the other"])  # fmt: skip
    shirt = {
        g["method"]: g for g in load(ctx.ref / "study" / "unseen" / "unseen.json")["groups"] if g["held_out"] == "6"
    }
    if shirt:
        score, shot = (lambda m: shirt[m]["map_at_r"]["mean"]), (lambda m: shirt[m]["shot_20"]["mean"])
        best = max(shirt, key=score)
        rows.append(["Best on Shirt when it was never trained on (held-out MAP@R; 20-shot kNN recall)",
                     "; ".join(f"`{m}` {score(m):.3f}, {100 * shot(m):.1f} %" for m in sorted(shirt, key=score,
                               reverse=True)) + f" (best: `{best}`)"])  # fmt: skip
    note = (
        f"A short-training screen: `{p['tune']['backbone']}`, {epochs} epochs a run. Generated from the paired "
        "comparisons (softmax head; MAP@R: the embedding), the summary and the unseen-class runs; Δ = method − "
        "control in points, with the paired table's 95 % interval and its ✓ / ✗ marks (how to read them: "
        + ctx.link(ctx.ref.parents[1] / "docs" / "results" / "README.md", "the intervals").replace(
            ")", "#how-to-read-the-intervals)"
        )
        + ")."
    )
    return table(["question", "answer"], rows) + "\n\n" + note


def run_config(root: Path, method: str, seed: int) -> dict:
    return load(root / f"{method}_s{seed}" / "config.json")


def t_losses_caveats(ctx: Ctx) -> str:
    """Where the loss comparison is unequal, from its own files: protocol.json, the final runs' config.json and the
    tuning trials (study/losses/tune/<method>/trials.csv)."""
    from embedfm.config import resolved_sampler

    root, p = study_protocol(ctx, "losses")
    methods, seed = list(p["methods"]), p["seeds"][0]
    cfg = {m: run_config(root, m, seed) for m in methods}

    def groups(key) -> str:
        by: dict[str, list[str]] = {}
        for m in methods:
            if (v := key(m)) is not None:
                by.setdefault(v, []).append(f"`{m}`")
        return "; ".join(f"{v}: {', '.join(ms)}" for v, ms in by.items())

    balanced = [m for m in methods if resolved_sampler(cfg[m]["loss"], cfg[m]["sampler"]) == "balanced"]
    oversample = groups(lambda m: f"{cfg[m]['focus_oversample']:.2f}×" if m in balanced else None)
    random_ = [f"`{m}`" for m in methods if m not in balanced]
    shared_keys = ("lr", "weight_decay", "label_smoothing")
    trials = {}
    for m in methods:
        with open(root / "tune" / m / "trials.csv", newline="") as fh:
            trials[m] = {int(r["number"]): tuple(r[k] for k in shared_keys) for r in csv.DictReader(fh)}
    numbers = sorted(set.intersection(*(set(t) for t in trials.values())))
    alike = [n for n in numbers if len({trials[m][n] for m in methods}) == 1]
    differ = [n for n in numbers if n not in alike]
    tuned = lambda m: ", ".join(f"{k.replace('_', ' ')} {default_text(round(cfg[m][k], 4))}" for k in shared_keys)
    tuning = ctx.link(ctx.ref.parents[1] / "docs" / "results" / "tuning.md", "tuning")
    rows = [
        ["budget", f"a short-training screen: every final run is {p['final_epochs']} epochs of "
         f"`{p['tune']['backbone']}`, every tuning trial {p['tune']['epochs']} epochs on {p['tune']['limit']:,} "
         "train images; what holds at this budget need not hold for longer training"],
        ["starting point", "trial 0 of every search is embedfm's default settings, which an earlier 20-trial search "
         f"of the triplet loss kept ({tuning}): the shared settings start where the triplet loss was tuned, the other "
         "losses' own parameters at pytorch-metric-learning's defaults"],
        ["search", f"trial 0 is the defaults for every method; of the searched trials, only "
         f"{', '.join(str(n) for n in alike if n != 0) or 'none'} drew the same "
         f"{', '.join(k.replace('_', ' ') for k in shared_keys)} for every method; trials "
         f"{', '.join(map(str, differ))} differ between methods, so the searches tried different points"],
        ["embedding size", groups(lambda m: f"{cfg[m]['embedding_dim']}-d")],
        ["batches", f"class-balanced batches oversample the four focus classes ({oversample}); random batches: "
         f"{', '.join(random_)}"],
        [f"`{CONTROL}` against `ce`", f"not the batches alone: `ce` trained with {tuned('ce')}, `{CONTROL}` with "
         f"{tuned(CONTROL)} (each its own tuning's best), so that row measures the batches and the settings together"],
    ]  # fmt: skip
    note = (
        "Source: the final runs' config.json (seed "
        + f"{seed}; every seed of a method shares them), "
        + ", ".join(ctx.link(root / "tune" / m / "trials.csv", m) for m in methods)
        + " (tuning trials), "
        + ctx.link(root / "protocol.json")
    )
    return table(["", "unequal or limited"], rows) + "\n\n" + note


def t_losses_floor(ctx: Ctx) -> str:
    """study/losses/floor/floor.json (`embedfm floor` over every run of the comparison)."""
    return floor_table(ctx, "losses", "every method and seed of the comparison")


def floor_table(ctx: Ctx, study: str, runs_note: str) -> str:
    """study/<study>/floor/floor.json (`embedfm floor`): shared errors, suspected label issues, the best run."""
    path = ctx.ref / "study" / study / "floor" / "floor.json"
    r = load(path)
    s, t, tr, b = r["shared"], r["test_label_issues"], r["train_label_issues"], r["best_run"]
    by = lambda d: ", ".join(f"{c} {v}" for c, v in d.items())
    rows = [
        ["runs", f"{len(r['runs'])} ({runs_note})"],
        ["focus-class test images", f"{s['focus_images']:,}"],
        ["wrong in every run (softmax)", f"{s['all_wrong']:,}"],
        ["… with the same predicted class in every run", f"{s['all_wrong_same_way']:,}"],
        ["suspected test label issues in the focus classes", f"{t['count']:,} ({by(t['by_class'])})"],
        ["… of them wrong the same way in every run", f"{t['all_wrong_same_way_among_them']:,}"],
        *floor_overlap_rows(ctx, study, t),
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
    gallery = ctx.link(path.parent / "label_issues.png")
    return (
        table(["", "value"], rows)
        + "\n\nIn-sample (circular): the suspects are found from the same runs whose errors are then split, so an "
        "image a run gets wrong is more likely to be among them and the error on the other images is low by "
        "construction. The suspects depend on the models that find them (the row on the other study's suspects)."
        + f"\n\n{floor_crossfit(ctx, study, r)}"
        + f"\n\nSource: {ctx.link(path)}, {ctx.link(path.parent / 'crossfit.json')}; gallery of the 64 most "
        f"confident: {gallery}"
    )


FLOOR_STUDIES = {"best": "best-model", "losses": "loss"}


def floor_overlap_rows(ctx: Ctx, study: str, t: dict) -> list[list[str]]:
    """Model dependence: how many of this study's suspected test label issues the other study's floor.json also
    lists (the same test images, other models); no row while the other study has no floor."""
    rows = []
    for other, what in FLOOR_STUDIES.items():
        path = ctx.ref / "study" / other / "floor" / "floor.json"
        if other == study or not path.is_file():
            continue
        theirs = load(path)["test_label_issues"]["indices"]
        both = len(set(t["indices"]) & set(theirs))
        rows.append([f"… of them also suspected by the {what} study's models ({ctx.link(path)}: {len(theirs):,} "
                     "suspects)", f"{both:,} of {t['count']:,}"])  # fmt: skip
    return rows


def floor_crossfit(ctx: Ctx, study: str, r: dict) -> str:
    """study/<study>/floor/crossfit.json (`embedfm floor`, or `embedfm floor --crossfit-only` from the runs'
    report.json): per rule, each run's focus-group errors split on its own half's suspects (in-sample) and on the
    other half's (cross-fitted), beside the halves' suspect counts."""
    path = ctx.ref / "study" / study / "floor" / "crossfit.json"
    c = load(path)
    if sorted(c["runs"]) != sorted(r["runs"]):
        raise DocsError(f"{path}: its runs differ from floor.json's; rerun `embedfm floor --crossfit-only`")
    b = c["best_run"]["name"]
    parts = []
    for name, rule in c["rules"].items():
        h, n = rule["halves"], rule["suspects"]
        mine = rule["per_run"][b]
        both = lambda key, digits, mine=mine: [
            f"{100 * mine[part][key]:.{digits}f} %" for part in ("in_sample", "cross_fitted")
        ]
        rows = [
            [f"best run `{b}` (half {mine['half']}): share of its focus-group errors on suspects",
             *both("share_on_suspected_issues", 1)],
            [f"best run `{b}`: its focus-group error on the other focus images",
             *both("focus_error_on_the_rest", 2)],
            ["every run: share of its focus-group errors on suspects",
             *(per_run_span(rule, "share_on_suspected_issues", part) for part in ("in_sample", "cross_fitted"))],
            ["every run: its focus-group error on the other focus images",
             *(per_run_span(rule, "focus_error_on_the_rest", part) for part in ("in_sample", "cross_fitted"))],
        ]  # fmt: skip
        parts.append(
            f"Cross-fit, rule `{name}` (suspects: {rule['rule']}). Halves: the runs sorted by name, alternately; "
            f"A {len(h['A'])} runs ({', '.join(h['A'])}), B {len(h['B'])} runs ({', '.join(h['B'])}). Suspects: "
            f"{n['A']:,} from half A, {n['B']:,} from half B, {n['both']:,} in both.\n\n"
            + table(["", "in-sample (own half's suspects)", "cross-fitted (other half's suspects)"], rows)
        )
    return "\n\n".join(parts)


TRIPLET_HISTORIES = [  # (history files under artifacts/reference/, as a glob) of the runs before the diagnostics
    "demo/triplet_history.json",
    "study/fastcnn/triplet_s*/history.json",
    "study/fastcnn/triplet-focusmine_s*/history.json",
    "study/linear/triplet_s*/history.json",
    "study/mlp/triplet_s*/history.json",
    "study/lenet/triplet_s*/history.json",
    "study/resnet20/triplet_s*/history.json",
    "study/resnet20/triplet_e60_s0/history.json",
]


def t_losses_triplet_histories(ctx: Ctx) -> str:
    """The triplet and CE columns of the recorded CE + triplet histories: first and last epoch, range over seeds."""

    def span(xs: list[float]) -> str:
        lo, hi = min(xs), max(xs)
        return f"{lo:.5f}" if lo == hi else f"{lo:.5f} – {hi:.5f}"

    rows, every = [], []
    for pattern in TRIPLET_HISTORIES:
        paths = sorted(ctx.ref.glob(pattern))
        if not paths:
            raise DocsError(f"no history matches {ctx.ref / pattern}")
        hs = [load(p) for p in paths]
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
    margin = load(ctx.ref / "study" / "fastcnn" / "triplet-margin_s0" / "history.json")
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
    return table(header, rows) + "\n\n" + note


# ----------------------------------------------------------------------------------------------- best model

BEST_METHODS = {  # method (run-dir prefix in study/best) → what it is, in words
    "triplet": "CE + triplet (distance-weighted sampling), class-balanced batches",
    "ce-balanced": "CE only, the same class-balanced batches",
    "ce": "CE only, random batches",
}


def t_best_protocol(ctx: Ctx) -> str:
    root, p = study_protocol(ctx, "best")
    r = p["recipe"]
    seeds = ", ".join(map(str, p["seeds"]))
    rows = [
        ["recipe", f"`{r['backbone']}`, {r['epochs']} epochs, {r['crop_pad']}-pixel random crops and flips; every "
         "other setting embedfm's default (AdamW, one-cycle schedule, label smoothing 0.1, flip test-time "
         "augmentation): the resnet20 study's recipe, set rather than chosen: no other ResNet-20 settings were "
         "compared on the validation split"],
        *([f"`{m}`", f"{BEST_METHODS[m]}: seeds {seeds}"] for m in p["methods"]),
        *([f"`{m}`", f"CE + triplet at {c['epochs']} epochs, otherwise the recipe: a point of the curve below, not a "
           "method of the tables (run when `--methods` names it)"] for m, c in p.get("curve", {}).items()),
        ["the study's CE control", f"the same recipe, random batches, seeds {seeds}, evaluated before reports kept "
         f"per-image predictions (means only): {ctx.link(ref_summary(ctx, 'resnet20'), 'study/resnet20')}"],
    ]  # fmt: skip
    return table(["", "what"], rows) + "\n\nSource: " + ctx.link(root / "protocol.json")


def ref_summary(ctx: Ctx, study: str) -> Path:
    return ctx.ref / "study" / study / "summary.md"


def t_best_summary(ctx: Ctx) -> str:
    """study/best's runs beside the resnet20 study's runs of the same network (the same recipe at 30 epochs)."""
    cols = LOSS_COLUMNS[1:]
    rows = [[f"`{r['method']}` (best/)", *(column(r, c, "study/best/summary.csv") for c, _ in cols)]
            for r in ctx.summary("best")]  # fmt: skip
    for prefix, what in (("triplet / resnet20 / 30 ep", "`triplet` (study)"), ("ce / resnet20 / 30 ep", "`ce` (study)"),
                         ("triplet / resnet20 / 60 ep", "`triplet`, 60 epochs (study)")):  # fmt: skip
        r = find_row(ctx, "resnet20", prefix)
        rows.append([what, *(column(r, c, "study/resnet20/summary.csv") for c, _ in cols)])
    note = (
        "Final epoch, mean ± std over seeds; best/: this study (1 thread a run, two runs side by side, so its train "
        "seconds are not comparable with the study's 2-thread runs); study: the resnet20 study's runs of the same "
        "recipe. Source: " + summary_links(ctx, ["best", "resnet20"])
    )
    return table(["method", *(h for _, h in cols)], rows) + "\n\n" + note


# The best-model study's runs take hours each and land a seed at a time: a table whose source does not exist
# yet says what it waits for instead of failing the build.
NOT_YET = "Not measured yet: {}. Source, once it is: {}"


FIGURE_NAMES = {"accuracy": "accuracy", "focus_group_error": "focus-group error", "shirt_recall": "shirt recall",
                "map_at_r": "MAP@R"}  # fmt: skip


def paired_marks(comparisons: list[dict]) -> str:
    """Which comparisons of a paired.json earn a ✓ or ✗ (its `helps` / `hurts`), in words; generated, so that no page
    states a verdict the table does not carry."""
    marked = []
    for c in comparisons:
        figs = [f"{FIGURE_NAMES[f]} {'✓' if c[f]['helps'] else '✗'}" for f in FIGURE_NAMES if c[f]["helps"] or
                c[f]["hurts"]]  # fmt: skip
        if figs:
            marked.append(f"`{c['method']}` against `{c['control']}`: {', '.join(figs)}")
    return "; ".join(marked) if marked else "none: no difference in the table earns a ✓ or ✗"


def t_best_paired(ctx: Ctx) -> str:
    path = ctx.ref / "study" / "best" / "paired.json"
    if not (path.is_file() and load(path)["comparisons"]):
        return NOT_YET.format("it needs a second method of the study on the same test images", "`paired.json`")
    return paired_table(ctx, "best") + "\n\nMarked: " + paired_marks(load(path)["comparisons"]) + "."


def t_best_floor(ctx: Ctx) -> str:
    if not (ctx.ref / "study" / "best" / "floor" / "floor.json").is_file():
        return NOT_YET.format("the floor needs two evaluated runs of the study", "`floor/floor.json`")
    gallery = ctx.link(ctx.ref / "study" / "best" / "floor" / "label_issues.png").split("](", 1)[1]
    return (
        floor_table(ctx, "best", "every seed of every method of this study")
        + f"\n\n![the 64 most confident suspected label issues among the four focus classes]({gallery}"
    )


THREADS = {"1": "1 thread", "default": "torch's default threads"}


def t_best_curve(ctx: Ctx) -> str:
    """study/best/curve.json: the measured points only (runs, final test accuracy, seconds per epoch of those runs,
    the gain from one measured length to the next); nothing fitted or extrapolated."""
    root, _ = study_protocol(ctx, "best")
    c = load(root / "curve.json")
    gain_to = {str(g["to"]): g for g in c["gains"]}
    rows = []
    for e, v in c["lengths"].items():
        acc = f"{100 * v['test_acc_mean']:.2f}"
        if v["test_acc_std"] is not None:
            acc += f" ± {100 * v['test_acc_std']:.2f}"
        g = gain_to.get(e)
        if g:  # the difference of the two means as shown (rounded first), so that the row adds up on the page
            shown = lambda x: round(100 * x, 2)
            prev = c["lengths"][str(g["from"])]["test_acc_mean"]
            gain = f"{shown(v['test_acc_mean']) - shown(prev):+.2f} (from {g['from']})"
        else:
            gain = "–"
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
    note += " Source: " + ctx.link(root / "curve.json") + ", plot " + ctx.link(root / "curve.png")
    header = ["epochs", "runs", "test acc %", "gain, points", "training s / epoch (runs, threads)"]
    return table(header, rows) + "\n\n" + note


def recipe_runs(ctx: Ctx) -> tuple[list[dict], list[dict]]:
    """The report entries of every 30-epoch CE + triplet seed of the best recipe: study/best's, then the resnet20
    study's (the same recipe)."""
    has_ours = list((ctx.ref / "study" / "best").glob("triplet_s*/report.json"))
    ours = [e for _, e in runs_of(ctx.ref, "best", "triplet_s*")] if has_ours else []
    return ours, [e for _, e in runs_of(ctx.ref, "resnet20", "triplet_s*")]


# what each report figure is called, how it is read from a report entry, and how it is shown (scale, digits, unit)
RECIPE_FIGURES = {
    "accuracy": ("test accuracy", lambda e: e["classifiers"]["softmax"]["accuracy"], 100, 2, " %"),
    "focus_group_error": ("focus-group error", lambda e: e["classifiers"]["softmax"]["focus_group_error"], 100, 2,
                          " %"),
    "shirt_recall": ("shirt recall", lambda e: e["classifiers"]["softmax"]["per_class"]["6"]["recall"], 1, 3, ""),
}  # fmt: skip


def t_best_targets(ctx: Ctx) -> str:
    """The best single-model recipe (every 30-epoch CE + triplet seed, study/best and study) against the published
    figures of study/best/targets.json, the one place those figures and their sources live."""
    path = ctx.ref / "study" / "best" / "targets.json"
    t = load(path)
    ours, study = recipe_runs(ctx)
    runs = ours + study
    refs = ctx.link(ctx.ref.parents[1] / "docs" / "references.md", "references")
    rows = []
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
        f"all {len(runs)} seeds of the recipe ({len(ours)} in study/best, {len(study)} in the resnet20 study). The "
        f"published figures are quoted as published, with their split and selection ({refs}); a best-epoch figure is "
        "selected on the test set, so it is not like for like with a final-epoch mean. Source: " + ctx.link(path)
    )
    return table(["figure", "published figure, source, split and selection", "measured", ""], rows) + "\n\n" + note


# ------------------------------------------------------------------------------------------------ tables

TABLES: dict[str, Callable[[Ctx], str]] = {
    "headline": t_headline,  # demo/report.json, study/resnet20 + study/fastcnn summary.csv
    "demo-runs": t_demo_runs,  # demo/report.json, demo/umap.json
    "demo-history": t_demo_history,  # demo/*_history.json
    "demo-time": t_demo_time,  # demo/make_demo_time.txt
    "study-resnet20-umap": t_study_resnet20_umap,  # study/resnet20/umap.json
    "bench-meta": t_bench_meta,  # bench.json
    "index-meta": t_index_meta,  # bench_index.json
    "index-compact": t_index_compact,  # bench_index.json
    "serve-load": t_serve_load,  # bench_serve.json (scripts/bench_serve.py)
    "tune-summary": t_tune_summary,  # tune/triplet/summary.json, trials.csv
    "probe-trajectory": t_probe_trajectory,  # probe/ce_*.jsonl
    "probe-knn-flip": t_probe_knn_flip,  # probe/knn_flip.jsonl
    "speedrun-ablation": t_speedrun_ablation,  # speedrun/ablation.jsonl (studies/speedrun.py)
    "speedrun-race": t_speedrun_race,  # speedrun.json (scripts/bench.py --only speedrun)
    "speedrun-targets": t_speedrun_targets,  # speedrun.json
    "speedrun-recipe": t_speedrun_recipe,  # embedfm.config.RECIPES (the schema, not a measurement)
    "losses-verdict": t_losses_verdict,  # study/losses/paired.json, summary.csv; study/unseen/unseen.json
    "losses-caveats": t_losses_caveats,  # study/losses/*_s0/config.json, tune/*/trials.csv, protocol.json
    "losses-tune": t_losses_tune,  # study/losses/tune/*/summary.json
    "losses-paired": t_losses_paired,  # study/losses/paired.json
    "losses-diag-epochs": t_losses_diag_epochs,  # study/losses/diagnostics/*/history.json
    "losses-floor": t_losses_floor,  # study/losses/floor/floor.json (embedfm floor)
    "losses-triplet-histories": t_losses_triplet_histories,  # demo/ and study/*/triplet*/history.json
    "best-protocol": t_best_protocol,  # study/best/protocol.json (studies/best.py)
    "best-summary": t_best_summary,  # study/best/summary.csv, study/resnet20/summary.csv
    "best-paired": t_best_paired,  # study/best/paired.json
    "best-floor": t_best_floor,  # study/best/floor/floor.json
    "best-curve": t_best_curve,  # study/best/curve.json
    "best-targets": t_best_targets,  # study/best/triplet_s*, study/resnet20/triplet_s*/report.json
    "train-flags": t_train_flags,  # embedfm.config (the schema, not a measurement)
    "tune-space": t_tune_space,  # embedfm.tune.SPACE (the schema, not a measurement)
}


def fill(text: str, ctx: Ctx, source: Path) -> str:
    """The text with every marked table block re-rendered; everything outside the markers kept as it is."""

    def render(m: re.Match) -> str:
        name = m.group(2).strip()
        if re.fullmatch(r"[\w-]+", name):
            if name not in TABLES:
                raise DocsError(f"{source}: unknown table {name!r} (known: {', '.join(TABLES)})")
            return f"{m.group(1)}\n{TABLES[name](ctx)}\n\n{m.group(4)}"
        try:
            text = tables.render(name, ctx.ref, ctx.here, ctx.open_as)
        except (tables.TableError, OSError, ValueError) as e:
            raise DocsError(f"{source}: table {name.splitlines()[0]!r}: {e}") from None
        return f"{m.group(1)}\n{text}\n\n{m.group(4)}"

    parts = re.split(r"(^```.*?^```$)", text, flags=re.S | re.M)  # a marker inside a code block is an example
    return "".join(p if i % 2 else BLOCK.sub(render, p) for i, p in enumerate(parts))


def doc_files(root: Path) -> list[Path]:
    return [p for p in [root / "README.md", *sorted((root / "docs").rglob("*.md"))] if p.is_file()]


def manifest_runs(study: Path) -> tuple[list[str], dict[str, str] | bool]:
    """A study's evaluated table runs (name order) and how to label them, from its manifest.json: the manifest's
    method labels, or False for a study labelled by the settings that tell its methods apart."""
    from embedfm.study import labels, read_manifest

    m = read_manifest(study)
    table = [r for r in m["runs"] if r["method"] in m["methods"]]
    runs = sorted(str(study / r["run"]) for r in table if (study / r["run"] / "report.json").is_file())
    return runs, labels(runs, table, study) if m["labels"] == "names" else False


def regenerate_summaries(ref: Path, into: Path | None) -> dict[str, Path]:
    """Rewrite each study's summary.md / summary.csv from its runs' report.json files (into `into`/<backbone>
    instead when given, leaving the committed ones alone). Returns backbone → dir of the summary to render from."""
    dirs = {}
    studies = sorted(p.parent for p in (ref / "study").glob("*/manifest.json"))
    for study in studies:
        out = study if into is None else into / study.name
        if out != study:  # what summarize reads beside the summary (the saved raw-pixel baseline)
            out.mkdir(parents=True, exist_ok=True)
            for saved in study.glob("*.json"):
                shutil.copy2(saved, out / saved.name)
        try:
            runs, names = manifest_runs(study)
            summarize(runs, out=str(out), names=names, log=lambda _text: None)
        except EmbedfmError as e:
            raise DocsError(f"summarize {study}: {e}") from None
        dirs[study.name] = out
    return dirs


def run(root: Path, check: bool) -> list[Path]:
    """Regenerate everything under `root`; return the files that changed (or, with check, would change)."""
    ref = root / "artifacts" / "reference"
    committed = {p: p.read_bytes() for p in sorted((ref / "study").glob("*/summary.*"))}
    changed = []
    with tempfile.TemporaryDirectory() as tmp:
        summaries = regenerate_summaries(ref, Path(tmp) if check else None)
        for name, d in summaries.items():
            for f in ("summary.md", "summary.csv"):
                path = ref / "study" / name / f
                if (d / f).read_bytes() != committed.get(path):
                    changed.append(path)
        for path in doc_files(root):
            old = path.read_text()
            new = fill(old, Ctx(ref=ref, summaries=summaries, here=path.parent), path)
            if new != old:
                changed.append(path)
                if not check:
                    path.write_text(new)
    return changed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file would change")
    p.add_argument("--root", type=Path, default=REPO, help="repository root to work on (default: this checkout)")
    args = p.parse_args(argv)
    try:
        changed = run(args.root.resolve(), args.check)
    except DocsError as e:
        print(f"make_docs: error: {e}", file=sys.stderr)
        return 2
    for path in changed:
        print(f"{'would change' if args.check else 'updated'}: {path.relative_to(args.root.resolve())}")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
