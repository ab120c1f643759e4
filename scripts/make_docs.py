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

or a Markdown fragment a study's publish wrote (`embedfm.sections`: verdicts, joins across studies, targets met or
not), included whole with `as=text`; a few tables of the benchmarks, probes and the config schema that need code are
renderers of TABLES: `<!-- table: NAME -->`. The study summaries (artifacts/reference/study/*/summary.md and .csv) are
first regenerated from their runs' report.json files with `embedfm.summarize`; the other study results (runs.csv,
last_epoch.json, contrasts.json, unseen.json, paired.json, curve.json, the sections' fragments) are read as `embedfm
study publish` wrote them (`embedfm study check` rebuilds them byte for byte); then every block is rendered from files
under artifacts/reference/, or from the config schema and `embedfm.tune.SPACE` for the flag and search-space tables.
The output depends on those alone: running it twice, or on a fresh clone, changes nothing. It needs no dataset and
trains nothing.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from embedfm import tables
from embedfm.config import FIELDS, GROUPS
from embedfm.errors import EmbedfmError
from embedfm.markdown import md_table as table
from embedfm.sections import pct
from embedfm.sections import setting as default_text
from embedfm.summarize import summarize

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^(<!-- table: (.*?)-->\n)(.*?)^(<!-- /table -->)$", re.S | re.M)


class DocsError(Exception):
    """An artifact a table needs is missing or not in the expected shape."""


@dataclass
class Ctx:
    """Where the artifacts are, where the fresh study summaries are, and which file a table lands in."""

    ref: Path  # artifacts/reference
    summaries: dict[str, Path]  # study → dir holding the summary.csv / .md to render from
    here: Path  # dir of the Markdown file being filled (links are relative to it)

    def link(self, path: Path, text: str | None = None) -> str:
        return tables.link(path, self.here, text or path.name)

    def open_as(self, rel: str) -> Path:
        """A file a marker names: a study summary as regenerated this run, anything else as committed."""
        parts = rel.split("/")
        if len(parts) == 3 and parts[0] == "study" and parts[2].startswith("summary.") and parts[1] in self.summaries:
            return self.summaries[parts[1]] / parts[2]
        return self.ref / rel


def load(path: Path):
    if not path.is_file():
        raise DocsError(f"{path} is missing")
    return tables.read(path)


def run_label(ctx: Ctx, recorded: str | None = None, study: str = "", name: str = "") -> str:
    """The committed copy of a run an artifact names by the path it was written to (a report's run_dir), or by its
    name in a study's reports, as a link to its report.json; the name as code where none is committed."""
    for rep in sorted((ctx.ref / study).glob("**/report.json")):
        runs = load(rep)["runs"]
        for key, r in runs.items():
            if (recorded and r.get("run_dir") == recorded) or key == name:
                where = rep.parent.relative_to(ctx.ref).as_posix()
                return ctx.link(rep, f"{where} ({key})" if len(runs) > 1 and recorded else where)
    return f"`{recorded or name}`"


def t_demo_time(ctx: Ctx) -> str:
    """`/usr/bin/time -v make demo`'s wall time and peak memory."""
    path = ctx.ref / "demo" / "make_demo_time.txt"
    if not path.is_file():
        raise DocsError(f"{path} is missing")
    fields = dict(line.strip().rsplit(": ", 1) for line in path.read_text().splitlines() if ": " in line)
    rss = int(fields["Maximum resident set size (kbytes)"]) / 2**20
    rows = [["wall time of `make demo` (venv set-up included), m:ss", fields["Elapsed (wall clock) time (h:mm:ss or "
             "m:ss)"]], ["peak resident memory", f"{rss:.2f} GiB"]]  # fmt: skip
    return table(["measurement (`/usr/bin/time -v`)", "value"], rows) + "\n\nSource: " + ctx.link(path)


def t_study_resnet20_umap(ctx: Ctx) -> str:
    """umap.json's focus-class silhouettes, each run shown as its committed folder."""
    path = ctx.ref / "study" / "resnet20" / "umap.json"
    rows = [[run_label(ctx, study="study/resnet20", name=run), f"{s:.3f}"]
            for run, s in load(path)["focus_silhouette"].items()]  # fmt: skip
    return table(["run", "focus-class silhouette"], rows) + "\n\nSource: " + ctx.link(path)


def t_index_meta(ctx: Ctx) -> str:
    path = ctx.ref / "bench_index.json"
    b = load(path)
    rows = [["date", b["date"]], ["machine", f"{b['machine']}, faiss {b['faiss']} with {b['threads']} threads"],
            ["embeddings of", run_label(ctx, b["run"])],
            ["wall time of the whole benchmark", f"{b['seconds']:.0f} s"]]  # fmt: skip
    return table(["item", "value"], rows) + "\n\nSource: " + ctx.link(path)


def t_index_compact(ctx: Ctx) -> str:
    """bench_index.json's rows, one line per index: its search settings side by side."""
    path, groups = ctx.ref / "bench_index.json", {}
    for r in load(path)["rows"]:
        groups.setdefault((r["data"], r["n"], r["factory"]), []).append(r)
    search = lambda r: f"nprobe={r['nprobe']}" if "nprobe" in r else f"efSearch={r['ef_search']}" if "ef_search" in r \
        else "exact"  # fmt: skip
    rows = [[data, f"{n:,}", factory, " / ".join(map(search, rs)), " / ".join(f"{r['qps']:,}" for r in rs),
             " / ".join(f"{r['recall_at_10']:.4f}" for r in rs), f"{rs[0]['bytes_per_vector']:.1f}",
             f"{rs[0]['build_s']:.2f}"] for (data, n, factory), rs in groups.items()]  # fmt: skip
    header = ["data", "n", "index", "search", "queries/s", "recall@10", "B/vector", "build s"]
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


def t_tune_summary(ctx: Ctx) -> str:
    """tune/triplet: the search, its trials by state, the defaults against the best trial."""
    s, ts = load(ctx.ref / "tune" / "triplet" / "summary.json"), load(ctx.ref / "tune" / "triplet" / "trials.csv")
    states = {st: sum(t["state"] == st for t in ts) for st in sorted({t["state"] for t in ts})}
    best, dflt = s["best"], s["defaults"]
    val = lambda t: f"val acc {pct(t['val_acc'])} %, val focus-group err {pct(t['val_focus_err'])} %"
    rows = [["study", f"`{s['study']}`, objective `{s['objective']}`"],
            ["trials", f"{s['finished']} finished: " + ", ".join(f"{n} {st}" for st, n in states.items())],
            ["defaults (trial 0)", val(dflt)], [f"best (trial {best['number']})", val(best)],
            ["best − defaults", f"val acc {100 * (best['val_acc'] - dflt['val_acc']):+.2f} points, val focus-group err "
             f"{100 * (best['val_focus_err'] - dflt['val_focus_err']):+.2f} points"]]  # fmt: skip
    src = ", ".join(ctx.link(ctx.ref / "tune" / "triplet" / f) for f in ("summary.json", "trials.csv"))
    return table(["item", "value"], rows) + "\n\nSource: " + src


def t_probe_trajectory(ctx: Ctx) -> str:
    """probe/ce_*.jsonl: each probe's settings, its final validation accuracy (and its EMAs'), when it first
    reached 91 %."""
    rows = []
    for path in sorted((ctx.ref / "probe").glob("ce_*.jsonl")):
        head, *points = load(path)
        cfg, end = head["config"], points[-1]
        final = pct(end["raw"]) + "".join(f"; EMA {k[3:]}: {pct(end[k])}" for k in end if k.startswith("ema"))
        hit = next((f"{p['epoch']:.2f} ep, {p['train_s']:.0f} s" for p in points if p.get("raw", 0) >= 0.91), "never")
        rows.append([ctx.link(path, path.stem), cfg["opt"], "default" if cfg.get("lr") is None else f"{cfg['lr']:g}",
                     str(cfg["batch_size"]), final, hit, f"{end['train_s']:.0f}"])  # fmt: skip
    header = ["probe", "optimizer", "peak lr", "batch", "val acc % at the end", "first ≥ 91 %", "training s"]
    return table(header, rows) + (
        "\n\nOne run each of the demo CE configuration (seed 0, 3 epochs), validated every quarter epoch; "
        "`default` is the train config's peak lr."
    )


def t_probe_knn_flip(ctx: Ctx) -> str:
    path = ctx.ref / "probe" / "knn_flip.jsonl"
    keys = [
        ("val_softmax", "softmax"),
        ("val_knn", "kNN"),
        ("val_knn_flip_queries", "kNN, flip-averaged queries"),
        ("val_knn_flip_queries_and_refs", "kNN, queries and references flip-averaged"),
        ("val_blend_2fold_cv", "softmax + kNN blend (2-fold CV)"),
    ]
    rows = [[run_label(ctx, r["run"]), *[pct(r[k]) for k, _ in keys]] for r in load(path)]
    header = ["run (validation accuracy, %)", *[h for _, h in keys]]
    return table(header, rows) + "\n\nSource: " + ctx.link(path)


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


def t_speedrun_recipe(ctx: Ctx) -> str:
    """embedfm.config.RECIPES["fast"]: what --recipe fast sets (the schema, not a measurement)."""
    from embedfm.config import RECIPES

    rows = [[f"`--{k.replace('_', '-')}`", f"`{default_text(v)}`", f"`{default_text(FIELDS[k].default)}`"]
            for k, v in RECIPES["fast"].items()]  # fmt: skip
    return table(["setting", "--recipe fast", "default"], rows)


# ------------------------------------------------------------------------------------------------ tables

TABLES: dict[str, Callable[[Ctx], str]] = {
    "demo-time": t_demo_time,  # demo/make_demo_time.txt
    "study-resnet20-umap": t_study_resnet20_umap,  # study/resnet20/umap.json
    "index-meta": t_index_meta,  # bench_index.json
    "index-compact": t_index_compact,  # bench_index.json
    "serve-load": t_serve_load,  # bench_serve.json (scripts/bench_serve.py)
    "tune-summary": t_tune_summary,  # tune/triplet/summary.json, trials.csv
    "probe-trajectory": t_probe_trajectory,  # probe/ce_*.jsonl
    "probe-knn-flip": t_probe_knn_flip,  # probe/knn_flip.jsonl
    "speedrun-recipe": t_speedrun_recipe,  # embedfm.config.RECIPES (the schema, not a measurement)
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
