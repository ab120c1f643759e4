"""The `embedfm` command: parses arguments and dispatches to the commands. Nothing else.

`train`'s and `tune`'s flags, their defaults, choices and help are generated from the config schema
(`config.TrainConfig`, `tune.TuneConfig`), so `--help` cannot drift from the defaults a run uses.
Errors a user can fix (`EmbedfmError`) print one line on stderr and exit with code 2; `--debug` shows the
traceback instead. Ctrl-C exits with 130 after saying how to continue.

Nothing here imports torch: `embedfm --help` and `embedfm COMMAND --help` answer at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from embedfm import __version__
from embedfm.errors import EmbedfmError

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130
COMMANDS = (
    "train", "eval", "viz", "tune", "index", "search", "serve", "summarize", "convert", "export", "explore", "floor",
    "ensemble",
)  # fmt: skip


def _classes(s: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in s.split(",") if x.strip() != "")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated class ids like 0,2,4,6, got {s!r}") from None


def _bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


# a field's annotation (a string under `from __future__ import annotations`) → (argparse type, metavar)
_TYPES = {
    "int": (int, "N"),
    "float": (float, "X"),
    "str": (str, None),
    "bool": (_bool, "{true,false}"),
    "tuple[int, ...]": (_classes, "C,C,..."),
}


def _shown(value) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def add_schema_flags(parser: argparse.ArgumentParser, fields, defaults: dict, titles: dict) -> None:
    """One flag per schema field, in argument groups by the field's group, help ending in [its default].

    Every flag defaults to None, so the resolver can tell the flags a user gave from the ones left out
    (config files sit between defaults and flags)."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in fields:
        title = titles.get(f.metadata["group"], f.metadata["group"])
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        kind, metavar = _TYPES[f.type.replace(" | None", "")]
        metavar = f.metadata.get("metavar") or metavar
        choices = f.metadata["choices"]
        groups[title].add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=kind,
            choices=choices,
            metavar=None if choices else metavar,
            help=f.metadata["help"] + ("" if defaults[f.name] is None else f" [{_shown(defaults[f.name])}]"),
        )


class _ShowDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" only where a flag has a default: not for unset (None) or off switches."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def add_train(sub) -> None:
    from embedfm.config import FIELDS, GROUPS, TrainConfig

    p = sub.add_parser(
        "train",
        help="train one model (CE or CE + triplet) into a run dir",
        description="Train one model. Settings come from the built-in defaults (shown in [brackets]), then the "
        "--recipe preset, then --config FILE, then the flags given here. The resolved config is printed and saved "
        "in the run dir.",
    )
    p.add_argument("--config", metavar="FILE", help="JSON file of config values (flags given here override it)")
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="RUN_DIR",
        help="continue a run from its last checkpoint: RUN_DIR, or --out when no dir is given",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    defaults = {n: f.default for n, f in FIELDS.items()}
    add_schema_flags(p, [f for f in dataclasses.fields(TrainConfig)], defaults, GROUPS)


def add_eval(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="test-set report comparing runs: softmax vs kNN, confusion, focus-group error",
        description="Evaluate runs on the test set and compare them side by side. Writes report.md, "
        "report.json and confusion PNGs into --out, embeddings.npz into each run dir.",
        formatter_class=_ShowDefaults,
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run dirs; the first is the baseline for difference plots")
    p.add_argument("--out", help="report dir (default: the run dir, or the runs' common parent)")
    p.add_argument("--k", type=int, default=10, help="neighbours of the kNN classifier")
    p.add_argument(
        "--metric", choices=["cosine", "l2"], default="cosine", help="kNN distance: cosine (unit vectors) or l2"
    )
    p.add_argument("--focus-classes", type=_classes, help="override the runs' focus classes")
    p.add_argument("--data-dir", help="where the IDX files are (default: as at training)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_viz(sub) -> None:
    p = sub.add_parser(
        "viz",
        help="UMAP of test embeddings, runs side by side",
        description="Draw umap.png: UMAP of each run's test embeddings side by side, focus classes "
        "highlighted, focus-class silhouette in each title. Uses embeddings.npz from "
        "`embedfm eval` (computed if missing).",
        formatter_class=_ShowDefaults,
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run dirs to draw, one panel each")
    p.add_argument("--out", help="figure dir (default: the run dir, or the runs' common parent)")
    p.add_argument("--max-points", type=int, default=10_000, help="test points per panel (random subset)")
    p.add_argument("--seed", type=int, default=0, help="UMAP and subset seed")
    p.add_argument("--focus-classes", type=_classes, help="override the runs' focus classes")


def add_index(sub) -> None:
    p = sub.add_parser(
        "index",
        help="embed a catalogue with a run's model and save a FAISS index",
        description="Embed a catalogue (the train set, the test set, a folder of images or an IDX "
        "file) with RUN's model and save a FAISS index, the id → label/source mapping and "
        "the images beside it (default RUN/index/). Index types are faiss factory "
        "strings: Flat (exact), IVF<nlist>,Flat, HNSW<M>, IVF<nlist>,PQ<m>.",
        formatter_class=_ShowDefaults,
    )
    p.add_argument("run", metavar="RUN", help="run dir whose model embeds the catalogue")
    p.add_argument(
        "--catalogue",
        default="train",
        help="train, test, a folder of images (labels from sub-folder names) or an IDX image file",
    )
    p.add_argument("--labels", help="IDX label file for an IDX catalogue")
    p.add_argument(
        "--type",
        dest="factory",
        default="Flat",
        help="faiss factory string, e.g. Flat, IVF256,Flat, HNSW32, IVF256,PQ16",
    )
    p.add_argument("--out", help="index dir (default RUN/index)")
    p.add_argument("--nprobe", type=int, help="IVF lists searched by default (saved with the index)")
    p.add_argument("--ef-search", type=int, help="HNSW search breadth by default (saved with the index)")
    p.add_argument("--threads", type=int, help="faiss threads (default: all cores)")
    p.add_argument("--data-dir", help="where the Fashion-MNIST IDX files are")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    change = p.add_argument_group("change an existing index without a rebuild (logged, as `embedfm serve` does)")
    change.add_argument("--add", nargs="+", metavar="IMAGE", help="image files or folders to add")
    change.add_argument("--ids", type=_classes, metavar="N,N,...", help="ids of the added images (default: next free)")
    change.add_argument("--label", type=int, help="class id of every added image (default: folder name or unknown)")
    change.add_argument("--remove", type=_classes, metavar="N,N,...", help="ids of items to remove")


def add_serve(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve similarity search over HTTP (needs `embedfm index` first)",
        description="Serve RUN's model and its index over HTTP: POST /search, /embed, /items, DELETE /items/ID, "
        "GET /health, /info; the OpenAPI page at /docs. Adds and removals are durable when they answer. "
        "Needs pip install 'embedfm[serve]'.",
        formatter_class=_ShowDefaults,
    )
    p.add_argument("run", metavar="RUN", help="run dir whose model embeds the queries")
    p.add_argument("--index", help="index dir (default RUN/index)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; not loopback: needs a token")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--token", help="token the write endpoints need (default: $EMBEDFM_TOKEN)")


def add_search(sub) -> None:
    p = sub.add_parser(
        "search",
        help="nearest catalogue items of query images (needs `embedfm index` first)",
        description="Find the k nearest catalogue items of each QUERY: an image file (any size; "
        "converted to 28×28 grey like Fashion-MNIST) or test:N for the N-th test image. "
        "Prints the neighbours with label and cosine similarity and writes a PNG grid.",
        formatter_class=_ShowDefaults,
    )
    p.add_argument("run", metavar="RUN", help="run dir whose model embeds the queries")
    p.add_argument("queries", nargs="+", metavar="QUERY", help="image file or test:N")
    p.add_argument("--index", help="index dir (default RUN/index)")
    p.add_argument("--k", type=int, default=10, help="neighbours per query")
    p.add_argument("--nprobe", type=int, help="IVF lists to search (default: as saved)")
    p.add_argument("--ef-search", type=int, help="HNSW search breadth (default: as saved)")
    p.add_argument("--out", help="grid PNG (default <index dir>/search.png)")
    p.add_argument("--data-dir", help="where the Fashion-MNIST IDX files are (for test:N)")


def add_tune(sub) -> None:
    from embedfm.config import FIELDS, GROUPS
    from embedfm.tune import BASE_FLAGS, TRIAL_DEFAULTS, TuneConfig

    p = sub.add_parser(
        "tune",
        help="hyper-parameter search on the validation split (Optuna)",
        description="Search the loss's hyper-parameters (embedfm.tune.SPACE) with Optuna's TPE "
        "sampler on the validation split, pruning bad trials by their per-epoch "
        "validation figure. The study lives in a SQLite file in the study dir: rerun the same "
        "command to resume it or add trials; point several workers at one --storage "
        "to share it. Writes best_config.json (for `embedfm train --config`), "
        "trials.csv/md and plots. The test set is never read. Defaults are shown in [brackets]; a trial's "
        "training defaults are train's, with a smaller budget.",
    )
    p.add_argument("--config", metavar="FILE", help="JSON config the trials start from (searched keys are overridden)")
    tune_fields = [f for f in dataclasses.fields(TuneConfig) if f.name != "base"]
    add_schema_flags(p, tune_fields, {f.name: f.default for f in tune_fields}, {"study": "study"})
    base_defaults = {n: f.default for n, f in FIELDS.items()} | TRIAL_DEFAULTS
    titles = dict.fromkeys(GROUPS, "training of each trial")
    add_schema_flags(p, [FIELDS[n] for n in BASE_FLAGS], base_defaults, titles)


def add_summarize(sub) -> None:
    p = sub.add_parser(
        "summarize",
        help="study table from evaluated runs: mean ± std over seeds per method",
        description="Group evaluated run dirs by method (their config minus seed and run settings) and write "
        "summary.md / summary.csv: validation and test figures as mean ± sample std over seeds.",
        formatter_class=_ShowDefaults,
    )
    p.add_argument("paths", nargs="+", metavar="DIR", help="study dirs (holding run dirs) or run dirs with report.json")
    p.add_argument("--out", help="where summary.md / summary.csv go (default: the first DIR)")
    p.add_argument(
        "--names",
        action="store_true",
        help="label each method by its run dirs' name without the _s<seed> suffix (<method>_s<seed>), not by the "
        "settings that differ between methods: for studies of tuned methods",
    )
    p.add_argument(
        "--pixels",
        action="store_true",
        help="measure the zero-training baseline (FAISS kNN on raw pixels) and save it as pixels.json in --out; "
        "a saved pixels.json is always shown",
    )
    p.add_argument("--data-dir", help="where the Fashion-MNIST IDX files are (for --pixels)")
    p.add_argument(
        "--paired",
        action="store_true",
        help="also write paired.md / paired.json: every method against every CE control on the same test images "
        "(per-seed differences; 95%% intervals from a two-level bootstrap over seed pairs and test images, Holm-"
        "corrected verdicts; image-only intervals given the models; validation differences; an exact per-seed test "
        "of the focus-group error)",
    )
    p.add_argument("--draws", type=int, default=2000, help="bootstrap draws (with --paired)")


def add_convert(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="rewrite an old-format run (pickled last.pt) as checkpoint.safetensors",
        description="Convert a run dir written by an older embedfm (a pickled last.pt, which can run code when "
        "loaded) to the safe format every command reads (checkpoint.safetensors). The old file is read with "
        "torch's restricted weights-only unpickler, which runs nothing from the file; a file that needs more is "
        "refused. The old file is left in place.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run dirs holding a last.pt to convert")


def add_export(sub) -> None:
    from embedfm.export import DEFAULT_MAX_POINTS, DEFAULT_SPLIT, FORMATS, SPLITS

    p = sub.add_parser(
        "export",
        help="write a run for other tools: TensorBoard's Embedding Projector, ONNX, npz",
        description="Export RUN into --out (default RUN/export): tensorboard = the Embedding Projector's files "
        "(tensors.tsv, metadata.tsv, sprite.png, projector_config.pbtxt; `tensorboard --logdir DIR`); onnx = "
        "model.onnx, the embedding network (input float (N, 1, 28, 28) normalised like training, outputs logits and "
        "embedding; needs `pip install 'embedfm[export]'`); npz = embeddings.npz as `embedfm eval` writes it.",
        formatter_class=_ShowDefaults,
    )
    p.add_argument("run", metavar="RUN", help="run dir to export")
    p.add_argument(
        "--format",
        dest="fmt",
        required=True,
        choices=FORMATS,
        help="what to write: the projector's files, the ONNX network or eval's arrays",
    )
    p.add_argument("--out", help="output dir (default RUN/export)")
    p.add_argument(
        "--split",
        choices=SPLITS,
        help=f"tensorboard: whose images to show, the test set or the run's train split [{DEFAULT_SPLIT}]",
    )
    p.add_argument(
        "--max-points",
        type=int,
        metavar="N",
        help=f"tensorboard: at most N points, a seeded random subset [{DEFAULT_MAX_POINTS}]",
    )
    p.add_argument("--seed", type=int, default=0, help="tensorboard: seed of the random subset")
    p.add_argument("--data-dir", help="where the Fashion-MNIST IDX files are (default: as at training)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_floor(sub) -> None:
    p = sub.add_parser(
        "floor",
        help="where the four-class floor is: errors every run shares, suspected label issues (cleanlab), a gallery",
        description="From several evaluated runs: the focus-class test images every run gets wrong (the same way), "
        "suspected label issues among the test images (cleanlab's find_label_issues on the runs' averaged test "
        "probabilities) and the train images (kNN leave-one-out votes of the first run's embedding), and the share "
        "of the best run's (by validation accuracy) focus-group errors on suspected issues, in-sample (the suspects "
        "come from the same runs) and cross-fitted (suspects from one half of the runs, errors of the other half). "
        "Writes floor.json, floor.md, crossfit.json, crossfit.md and label_issues.png (the 64 most confident "
        "suspected issues).",
        formatter_class=_ShowDefaults,
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="evaluated run dirs (at least 2; the first gives the kNN)")
    p.add_argument("--out", help="dir for floor.json / floor.md / label_issues.png (default: the runs' parent)")
    p.add_argument("--k", type=int, default=10, help="neighbours of the leave-one-out vote on the train split")
    p.add_argument("--data-dir", help="where the Fashion-MNIST IDX files are (default: as at training)")
    p.add_argument(
        "--crossfit-only",
        action="store_true",
        help="only the cross-fit from hard predictions (each run's report.json and history.json; no embeddings.npz, "
        "no data): writes crossfit.json / crossfit.md",
    )


def add_ensemble(sub) -> None:
    p = sub.add_parser(
        "ensemble",
        help="an ensemble of evaluated runs: softmax probabilities averaged, kNN over concatenated embeddings",
        description="Combine evaluated runs (e.g. the seeds of one recipe) from their embeddings.npz: the test "
        "softmax probabilities averaged, and a cosine kNN over the runs' unit-norm embeddings side by side. Writes "
        "ensemble.json / ensemble.md with the single runs' mean beside it.",
        formatter_class=_ShowDefaults,
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="evaluated run dirs (at least 2)")
    p.add_argument("--out", help="dir for ensemble.json / ensemble.md (default: the runs' common parent)")
    p.add_argument("--k", type=int, default=10, help="neighbours of the kNN over the concatenated embeddings")


def add_explore(sub) -> None:
    p = sub.add_parser(
        "explore",
        help="one interactive HTML page: runs' UMAPs side by side with the images, neighbours, confusion galleries",
        description="Write one self-contained HTML page (opens from disk, offline) to look at runs side by side: "
        "linked UMAP panels of the test embeddings, hover for the image and every run's prediction, click for its "
        "nearest training images in each run, clickable confusion matrices, fixed/broken lists of the focus "
        "classes against the first run. Uses embeddings.npz from `embedfm eval` (computed if missing).",
        formatter_class=_ShowDefaults,
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run dirs, one panel each; the first is the baseline")
    p.add_argument("--out", help="HTML file (default: explore.html in the run dir, or the runs' common parent)")
    p.add_argument(
        "--classifier",
        choices=["knn", "softmax", "knn_flip"],
        default="knn",
        help="whose predictions the page shows (as eval saved them)",
    )
    p.add_argument("--k", type=int, default=10, help="nearest training images shown per run")
    p.add_argument("--max-points", type=int, help="show a random subset of this many test images (default: all)")
    p.add_argument("--seed", type=int, default=0, help="UMAP and subset seed")
    p.add_argument("--focus-classes", type=_classes, help="override the runs' focus classes")
    p.add_argument("--data-dir", help="where the Fashion-MNIST IDX files are (default: as at training)")


class OneLineErrors(argparse.ArgumentParser):
    """argparse prints the whole usage block on a bad flag; we print one line and point at --help."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrors(
        prog="embedfm",
        description="Metric-learning embeddings for Fashion-MNIST: train CE "
        "and CE + triplet (distance-weighted sampling), evaluate with FAISS kNN, draw UMAP.",
    )
    p.add_argument("--version", action="version", version=f"embedfm {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = p.add_subparsers(
        dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}", parser_class=OneLineErrors
    )
    for add in (
        add_train,
        add_eval,
        add_viz,
        add_tune,
        add_index,
        add_search,
        add_serve,
        add_summarize,
        add_convert,
        add_export,
        add_explore,
        add_floor,
        add_ensemble,
    ):
        add(sub)
    return p


def _given(args, names) -> dict:
    return {n: getattr(args, n) for n in names}


def cmd_train(args) -> None:
    from embedfm.commands import train

    train(
        args.config,
        _given(args, _config_names()),
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )


def _config_names() -> list[str]:
    from embedfm.config import FIELDS

    return list(FIELDS)


def cmd_tune(args) -> None:
    from embedfm.commands import tune
    from embedfm.tune import BASE_FLAGS, TuneConfig

    study = [f.name for f in dataclasses.fields(TuneConfig) if f.name != "base"]
    tune(args.config, _given(args, BASE_FLAGS), _given(args, study))


def cmd_eval(args) -> None:
    from embedfm.evaluate import evaluate

    evaluate(
        args.runs,
        out=args.out,
        k=args.k,
        metric=args.metric,
        focus=args.focus_classes,
        data_dir=args.data_dir,
        progress=not args.no_progress,
    )


def cmd_viz(args) -> None:
    from embedfm.viz import visualize

    visualize(args.runs, out=args.out, max_points=args.max_points, seed=args.seed, focus=args.focus_classes)


def cmd_index(args) -> None:
    if args.add or args.remove:
        from embedfm.live import add_files, remove_items

        if args.add:
            add_files(args.run, args.add, index_dir=args.out, ids=args.ids, label=args.label)
        if args.remove:
            remove_items(args.out or f"{args.run}/index", list(args.remove))
        return
    from embedfm.index import build

    build(
        args.run,
        catalogue=args.catalogue,
        factory=args.factory,
        out=args.out,
        nprobe=args.nprobe,
        ef_search=args.ef_search,
        threads=args.threads,
        data_dir=args.data_dir,
        labels_file=args.labels,
        progress=not args.no_progress,
    )


def cmd_search(args) -> None:
    from embedfm.search import search

    search(
        args.run,
        args.queries,
        index_dir=args.index,
        k=args.k,
        nprobe=args.nprobe,
        ef_search=args.ef_search,
        out=args.out,
        data_dir=args.data_dir,
    )


def cmd_serve(args) -> None:
    from embedfm.serve import serve

    serve(args.run, index_dir=args.index, host=args.host, port=args.port, token=args.token)


def cmd_summarize(args) -> None:
    from embedfm.summarize import summarize

    summarize(args.paths, out=args.out, pixels=args.pixels, data_dir=args.data_dir, names=args.names)
    if args.paired:
        from embedfm.summarize import summarize_paired

        summarize_paired(args.paths, out=args.out, draws=args.draws, names=args.names)


def cmd_convert(args) -> None:
    from embedfm.checkpoint import convert

    for run in args.runs:
        convert(run)


def cmd_export(args) -> None:
    from embedfm.export import export

    export(
        args.run,
        args.fmt,
        out=args.out,
        split=args.split,
        max_points=args.max_points,
        seed=args.seed,
        data_dir=args.data_dir,
        progress=not args.no_progress,
    )


def cmd_floor(args) -> None:
    from embedfm.floor import crossfit_reports, floor

    if args.crossfit_only:
        crossfit_reports(args.runs, out=args.out)
    else:
        floor(args.runs, out=args.out, k=args.k, data_dir=args.data_dir)


def cmd_ensemble(args) -> None:
    from embedfm.ensemble import ensemble

    ensemble(args.runs, out=args.out, k=args.k)


def cmd_explore(args) -> None:
    from embedfm.explore import explore

    explore(
        args.runs,
        out=args.out,
        classifier=args.classifier,
        k=args.k,
        focus=args.focus_classes,
        max_points=args.max_points,
        seed=args.seed,
        data_dir=args.data_dir,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = globals()[f"cmd_{args.command}"]
    try:
        command(args)
    except EmbedfmError as e:
        if args.debug:
            raise
        print(f"embedfm {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as e:
        print(f"\ninterrupted; {e}" if str(e) else "\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
