"""The `embedfm` command: parses arguments and dispatches to the commands. Nothing else.

`COMMANDS` is the one table of commands: each entry names the function that adds its own arguments, the one that
runs it, its help and the shared flags it takes. A flag several commands take (`--out`, `--data-dir`,
`--no-progress`, ...) is declared once, in `SHARED`, and reaches each command through argparse's `parents=`, with
that command's help where it means something particular there. A new command is one entry of `COMMANDS`.

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
from collections.abc import Callable
from dataclasses import dataclass, field

from embedfm import __version__
from embedfm.errors import EmbedfmError

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130


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


def _names(s: str) -> list[str]:
    names = [x.strip() for x in s.split(",") if x.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names like ce,triplet, got {s!r}")
    return names


def _seeds(s: str) -> list[int]:
    try:
        return [int(x) for x in s.split(",") if x.strip() != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated seeds like 0,1,2, got {s!r}") from None


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


# Flags several commands take, each declared once: flag → argparse keywords. A command lists the ones it takes in
# its COMMANDS entry, with its own help (or other keywords) where the flag means something particular there.
SHARED: dict[str, dict] = {
    "--config": {"metavar": "FILE", "help": "JSON file of config values (flags given here override it)"},
    "--out": {"help": "where to write"},
    "--data-dir": {"help": "where the Fashion-MNIST IDX files are (default: as at training)"},
    "--no-progress": {"action": "store_true", "help": "no progress bars"},
    "--k": {"type": int, "default": 10, "help": "neighbours"},
    "--seed": {"type": int, "default": 0, "help": "UMAP and subset seed"},
    "--max-points": {"type": int, "help": "show a random subset of this many test images (default: all)"},
    "--focus-classes": {"type": _classes, "help": "override the runs' focus classes"},
    "--index": {"help": "index dir (default RUN/index)"},
    "--nprobe": {"type": int, "help": "IVF lists to search (default: as saved)"},
    "--ef-search": {"type": int, "help": "HNSW search breadth (default: as saved)"},
    "--threads": {"type": int, "help": "threads (default: all cores)"},
}


def shared_parent(flag: str, changes: str | dict | None = None) -> argparse.ArgumentParser:
    """A parent parser holding one SHARED flag; `changes`: the command's help for it, or keywords to change."""
    changes = {"help": changes} if isinstance(changes, str) else changes or {}
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(flag, **{**SHARED[flag], **changes})
    return parent


# ---------------------------------------------------------------------------------------------- each command's own
# arguments (the shared ones come from its COMMANDS entry)


def add_train(p: argparse.ArgumentParser) -> None:
    from embedfm.config import FIELDS, GROUPS, TrainConfig

    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="RUN_DIR",
        help="continue a run from its last checkpoint: RUN_DIR, or --out when no dir is given",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    defaults = {n: f.default for n, f in FIELDS.items()}
    add_schema_flags(p, [f for f in dataclasses.fields(TrainConfig)], defaults, GROUPS)


def add_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="run dirs; the first is the baseline for difference plots")
    p.add_argument(
        "--metric", choices=["cosine", "l2"], default="cosine", help="kNN distance: cosine (unit vectors) or l2"
    )


def add_viz(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="run dirs to draw, one panel each")


def add_tune(p: argparse.ArgumentParser) -> None:
    from embedfm.config import FIELDS, GROUPS
    from embedfm.tune import BASE_FLAGS, TRIAL_DEFAULTS, TuneConfig

    tune_fields = [f for f in dataclasses.fields(TuneConfig) if f.name != "base"]
    add_schema_flags(p, tune_fields, {f.name: f.default for f in tune_fields}, {"study": "study"})
    base_defaults = {n: f.default for n, f in FIELDS.items()} | TRIAL_DEFAULTS
    titles = dict.fromkeys(GROUPS, "training of each trial")
    add_schema_flags(p, [FIELDS[n] for n in BASE_FLAGS], base_defaults, titles)


def add_index(p: argparse.ArgumentParser) -> None:
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
    change = p.add_argument_group("change an existing index without a rebuild (logged, as `embedfm serve` does)")
    change.add_argument("--add", nargs="+", metavar="IMAGE", help="image files or folders to add")
    change.add_argument("--ids", type=_classes, metavar="N,N,...", help="ids of the added images (default: next free)")
    change.add_argument("--label", type=int, help="class id of every added image (default: folder name or unknown)")
    change.add_argument("--remove", type=_classes, metavar="N,N,...", help="ids of items to remove")


def add_search(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run dir whose model embeds the queries")
    p.add_argument("queries", nargs="+", metavar="QUERY", help="image file or test:N")


def add_serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run dir whose model embeds the queries")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; not loopback: needs a token")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--token", help="token the write endpoints need (default: $EMBEDFM_TOKEN)")


def add_summarize(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="DIR", help="study dirs (holding run dirs) or run dirs with report.json")
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
    p.add_argument(
        "--paired",
        action="store_true",
        help="also write paired.md / paired.json: every method against every CE control on the same test images "
        "(per-seed differences; 95%% intervals from a two-level bootstrap over seed pairs and test images, Holm-"
        "corrected verdicts; image-only intervals given the models; validation differences; an exact per-seed test "
        "of the focus-group error)",
    )
    p.add_argument("--draws", type=int, default=2000, help="bootstrap draws (with --paired)")


def add_convert(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="run dirs holding a last.pt to convert")


def add_export(p: argparse.ArgumentParser) -> None:
    from embedfm.export import DEFAULT_SPLIT, FORMATS, SPLITS

    p.add_argument("run", metavar="RUN", help="run dir to export")
    p.add_argument(
        "--format",
        dest="fmt",
        required=True,
        choices=FORMATS,
        help="what to write: the projector's files, the ONNX network or eval's arrays",
    )
    p.add_argument(
        "--split",
        choices=SPLITS,
        help=f"tensorboard: whose images to show, the test set or the run's train split [{DEFAULT_SPLIT}]",
    )


def _export_shared() -> dict:
    from embedfm.export import DEFAULT_MAX_POINTS

    return {
        "--out": "output dir (default RUN/export)",
        "--max-points": {
            "metavar": "N",
            "help": f"tensorboard: at most N points, a seeded random subset [{DEFAULT_MAX_POINTS}]",
        },
        "--seed": "tensorboard: seed of the random subset",
        "--data-dir": None,
        "--no-progress": None,
    }


def add_floor(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="evaluated run dirs (at least 2; the first gives the kNN)")
    p.add_argument(
        "--crossfit-only",
        action="store_true",
        help="only the cross-fit from hard predictions (each run's report.json and history.json; no embeddings.npz, "
        "no data): writes crossfit.json / crossfit.md",
    )


def add_ensemble(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="evaluated run dirs (at least 2)")


def add_confusions(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="a trained run dir")
    p.add_argument("--sizes", type=_seeds, default=[2, 3, 4], metavar="K,K,...", help="group sizes to show")
    p.add_argument("--top", type=int, default=10, help="most-confused pairs to show")


def add_explore(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="run dirs, one panel each; the first is the baseline")
    p.add_argument(
        "--classifier",
        choices=["knn", "softmax", "knn_flip"],
        default="knn",
        help="whose predictions the page shows (as eval saved them)",
    )


def add_study(p: argparse.ArgumentParser) -> None:
    from embedfm.study import STAGES

    p.add_argument(
        "stage",
        choices=STAGES,
        help="run: train and evaluate every run; extras: ensembles and the floor from the runs' embeddings; "
        "publish: copy the runs (no checkpoints), write manifest.json, rebuild the results; check: rebuild the "
        "results into a temporary dir and compare them byte for byte with the published ones",
    )
    p.add_argument("definitions", nargs="+", metavar="STUDY", help="study definition files (studies/NAME.py)")
    p.add_argument("--methods", type=_names, metavar="M,M,...", help="run: only these methods (default: every one)")
    p.add_argument("--seeds", type=_seeds, metavar="S,S,...", help="run: only these seeds (default: every one)")


# ---------------------------------------------------------------------------------------------- running each command


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


def cmd_confusions(args) -> None:
    from embedfm import confusions
    from embedfm.run import Run

    run = Run.open(args.run)
    cm = confusions.validation_confusion(run, args.data_dir, progress=not args.no_progress)
    print(f"{run.dir}: confusions on its validation split ({int(cm.sum()):,} images)\n")
    print(confusions.table(cm, run.class_names, tuple(args.sizes), args.top))


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


def cmd_study(args) -> int:
    from embedfm.study import run_command

    return run_command(args.stage, args.definitions, args.methods, args.seeds, args.threads)


# ---------------------------------------------------------------------------------------------- the command table


@dataclass(frozen=True)
class Command:
    """One `embedfm` command. add: adds its own arguments; run: runs it on the parsed arguments (returning None, or
    the exit status where it can be other than 0 without an error); help: its line in
    `embedfm --help`; description: the top of `embedfm COMMAND --help`; shared: the SHARED flags it takes, each
    mapped to its help there, keywords to change, or None (as declared), or a function returning that mapping (for
    help that reads a command module's constants when the parser is built); show_defaults: "(default: X)" after each
    flag's help (off where the help shows [defaults] from a schema, or there are none)."""

    add: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]
    help: str
    description: str
    shared: dict[str, str | dict | None] | Callable[[], dict] = field(default_factory=dict)
    show_defaults: bool = True


COMMANDS: dict[str, Command] = {
    "train": Command(
        add_train,
        cmd_train,
        "train one model (CE or CE + triplet) into a run dir",
        "Train one model. Settings come from the built-in defaults (shown in [brackets]), then the --recipe preset, "
        "then --config FILE, then the flags given here. The resolved config is printed and saved in the run dir.",
        {"--config": None, "--no-progress": "no progress bars (logs only)"},
        show_defaults=False,
    ),
    "eval": Command(
        add_eval,
        cmd_eval,
        "test-set report comparing runs: softmax vs kNN, confusion, focus-group error",
        "Evaluate runs on the test set and compare them side by side. Writes report.md, report.json and confusion "
        "PNGs into --out, embeddings.npz into each run dir.",
        {
            "--out": "report dir (default: the run dir, or the runs' common parent)",
            "--k": "neighbours of the kNN classifier",
            "--focus-classes": None,
            "--data-dir": None,
            "--no-progress": None,
        },
    ),
    "viz": Command(
        add_viz,
        cmd_viz,
        "UMAP of test embeddings, runs side by side",
        "Draw umap.png: UMAP of each run's test embeddings side by side, focus classes highlighted, focus-class "
        "silhouette in each title. Uses embeddings.npz from `embedfm eval` (computed if missing).",
        {
            "--out": "figure dir (default: the run dir, or the runs' common parent)",
            "--max-points": {"default": 10_000, "help": "test points per panel (random subset)"},
            "--seed": None,
            "--focus-classes": None,
        },
    ),
    "tune": Command(
        add_tune,
        cmd_tune,
        "hyper-parameter search on the validation split (Optuna)",
        "Search the loss's hyper-parameters (embedfm.tune.SPACE) with Optuna's TPE sampler on the validation split, "
        "pruning bad trials by their per-epoch validation figure. The study lives in a SQLite file in the study dir: "
        "rerun the same command to resume it or add trials; point several workers at one --storage to share it. "
        "Writes best_config.json (for `embedfm train --config`), trials.csv/md and plots. The test set is never "
        "read. Defaults are shown in [brackets]; a trial's training defaults are train's, with a smaller budget.",
        {"--config": "JSON config the trials start from (searched keys are overridden)"},
        show_defaults=False,
    ),
    "index": Command(
        add_index,
        cmd_index,
        "embed a catalogue with a run's model and save a FAISS index",
        "Embed a catalogue (the train set, the test set, a folder of images or an IDX file) with RUN's model and "
        "save a FAISS index, the id → label/source mapping and the images beside it (default RUN/index/). Index "
        "types are faiss factory strings: Flat (exact), IVF<nlist>,Flat, HNSW<M>, IVF<nlist>,PQ<m>.",
        {
            "--out": "index dir (default RUN/index)",
            "--nprobe": "IVF lists searched by default (saved with the index)",
            "--ef-search": "HNSW search breadth by default (saved with the index)",
            "--threads": "faiss threads (default: all cores)",
            "--data-dir": "where the Fashion-MNIST IDX files are",
            "--no-progress": None,
        },
    ),
    "search": Command(
        add_search,
        cmd_search,
        "nearest catalogue items of query images (needs `embedfm index` first)",
        "Find the k nearest catalogue items of each QUERY: an image file (any size; converted to 28×28 grey like "
        "Fashion-MNIST) or test:N for the N-th test image. Prints the neighbours with label and cosine similarity "
        "and writes a PNG grid.",
        {
            "--index": None,
            "--k": "neighbours per query",
            "--nprobe": None,
            "--ef-search": None,
            "--out": "grid PNG (default <index dir>/search.png)",
            "--data-dir": "where the Fashion-MNIST IDX files are (for test:N)",
        },
    ),
    "serve": Command(
        add_serve,
        cmd_serve,
        "serve similarity search over HTTP (needs `embedfm index` first)",
        "Serve RUN's model and its index over HTTP: POST /search, /embed, /items, DELETE /items/ID, GET /health, "
        "/info; the OpenAPI page at /docs. Adds and removals are durable when they answer. Needs pip install "
        "'embedfm[serve]'.",
        {"--index": None},
    ),
    "summarize": Command(
        add_summarize,
        cmd_summarize,
        "study table from evaluated runs: mean ± std over seeds per method",
        "Group evaluated run dirs by method (their config minus seed and run settings) and write summary.md / "
        "summary.csv: validation and test figures as mean ± sample std over seeds.",
        {
            "--out": "where summary.md / summary.csv go (default: the first DIR)",
            "--data-dir": "where the Fashion-MNIST IDX files are (for --pixels)",
        },
    ),
    "convert": Command(
        add_convert,
        cmd_convert,
        "rewrite an old-format run (pickled last.pt) as checkpoint.safetensors",
        "Convert a run dir written by an older embedfm (a pickled last.pt, which can run code when loaded) to the "
        "safe format every command reads (checkpoint.safetensors). The old file is read with torch's restricted "
        "weights-only unpickler, which runs nothing from the file; a file that needs more is refused. The old file "
        "is left in place.",
        show_defaults=False,
    ),
    "export": Command(
        add_export,
        cmd_export,
        "write a run for other tools: TensorBoard's Embedding Projector, ONNX, npz",
        "Export RUN into --out (default RUN/export): tensorboard = the Embedding Projector's files (tensors.tsv, "
        "metadata.tsv, sprite.png, projector_config.pbtxt; `tensorboard --logdir DIR`); onnx = model.onnx, the "
        "embedding network (input float (N, 1, 28, 28) normalised like training, outputs logits and embedding; "
        "needs `pip install 'embedfm[export]'`); npz = embeddings.npz as `embedfm eval` writes it.",
        _export_shared,
    ),
    "explore": Command(
        add_explore,
        cmd_explore,
        "one interactive HTML page: runs' UMAPs side by side with the images, neighbours, confusion galleries",
        "Write one self-contained HTML page (opens from disk, offline) to look at runs side by side: linked UMAP "
        "panels of the test embeddings, hover for the image and every run's prediction, click for its nearest "
        "training images in each run, clickable confusion matrices, fixed/broken lists of the focus classes against "
        "the first run. Uses embeddings.npz from `embedfm eval` (computed if missing).",
        {
            "--out": "HTML file (default: explore.html in the run dir, or the runs' common parent)",
            "--k": "nearest training images shown per run",
            "--max-points": None,
            "--seed": None,
            "--focus-classes": None,
            "--data-dir": None,
        },
    ),
    "floor": Command(
        add_floor,
        cmd_floor,
        "where the four-class floor is: errors every run shares, suspected label issues (cleanlab), a gallery",
        "From several evaluated runs: the focus-class test images every run gets wrong (the same way), suspected "
        "label issues among the test images (cleanlab's find_label_issues on the runs' averaged test probabilities) "
        "and the train images (kNN leave-one-out votes of the first run's embedding), and the share of the best "
        "run's (by validation accuracy) focus-group errors on suspected issues, in-sample (the suspects come from "
        "the same runs) and cross-fitted (suspects from one half of the runs, errors of the other half). Writes "
        "floor.json, floor.md, crossfit.json, crossfit.md and label_issues.png (the 64 most confident suspected "
        "issues).",
        {
            "--out": "dir for floor.json / floor.md / label_issues.png (default: the runs' parent)",
            "--k": "neighbours of the leave-one-out vote on the train split",
            "--data-dir": None,
        },
    ),
    "ensemble": Command(
        add_ensemble,
        cmd_ensemble,
        "an ensemble of evaluated runs: softmax probabilities averaged, kNN over concatenated embeddings",
        "Combine evaluated runs (e.g. the seeds of one recipe) from their embeddings.npz: the test softmax "
        "probabilities averaged, and a cosine kNN over the runs' unit-norm embeddings side by side. Writes "
        "ensemble.json / ensemble.md with the single runs' mean beside it.",
        {
            "--out": "dir for ensemble.json / ensemble.md (default: the runs' common parent)",
            "--k": "neighbours of the kNN over the concatenated embeddings",
        },
    ),
    "confusions": Command(
        add_confusions,
        cmd_confusions,
        "the classes a trained model confuses most, on its validation split, as tables",
        "The run's confusion matrix on its own validation split (never the test split): the most-confused pairs (the "
        "share of each class's images predicted as the other, both ways) and, for each group size K, the K classes "
        "whose pairwise confusions sum highest, with the --focus-classes flag that names them. `embedfm train --focus "
        "auto:K` picks its focus classes the same way from a quick CE run.",
        {"--data-dir": None, "--no-progress": None},
    ),
    "study": Command(
        add_study,
        cmd_study,
        "a study from its definition under studies/: train its runs, their extras, publish and check the results",
        "Run one stage of each study (studies/NAME.py: a base recipe, methods as config overrides, seeds, held-out "
        "classes, extras; docs/results/README.md#studies). Each stage resumes: run skips evaluated runs and "
        "continues started ones. check exits with 1 where a published result differs from its rebuild.",
        {"--threads": "run: torch CPU threads of every run (default: each run's config)"},
    ),
}


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
    for name, command in COMMANDS.items():
        shared = command.shared() if callable(command.shared) else command.shared
        parser = sub.add_parser(
            name,
            help=command.help,
            description=command.description,
            parents=[shared_parent(flag, changes) for flag, changes in shared.items()],
            formatter_class=_ShowDefaults if command.show_defaults else argparse.HelpFormatter,
        )
        command.add(parser)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = COMMANDS[args.command].run
    try:
        status = command(args)
    except EmbedfmError as e:
        if args.debug:
            raise
        print(f"embedfm {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as e:
        print(f"\ninterrupted; {e}" if str(e) else "\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return status or 0
