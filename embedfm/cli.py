"""The `embedfm` command: parses arguments and dispatches to train / eval / viz / tune / index / search.
Nothing else.

Errors a user can fix (`EmbedfmError`) print one line on stderr and exit with code 2; `--debug`
shows the traceback instead. Ctrl-C exits with 130 after saying how to resume.
"""

from __future__ import annotations

import argparse
import sys

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


class _ShowDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" only where a flag has a default: not for unset (None) or off switches."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train one model (CE or CE + triplet) into a run dir",
                       description="Train one model. Defaults come from the built-in config, then --config FILE, "
                                   "then the flags given here. The resolved config is printed and saved in the run dir. "
                                   "Built-in defaults are shown in [brackets].")
    a = p.add_argument
    a("--config", help="JSON file of config values (flags given here override it)")
    a("--loss", choices=["ce", "triplet"], help="ce: plain classifier; triplet: CE + weight × triplet loss over "
                                                "distance-weighted-mined triplets")
    a("--backbone", help="network before the embedding head")
    a("--out", help="run dir to write (checkpoint, config, history)")
    a("--data-dir", help="dir with the four Fashion-MNIST IDX .gz files (else $EMBEDFM_DATA, "
                         "/usr/share/datasets/fashion-mnist, else download)")
    a("--epochs", type=int, help="passes over the train split")
    a("--batch-size", type=int, help="images per step")
    a("--lr", type=float, help="peak learning rate of the one-cycle schedule (AdamW)")
    a("--weight-decay", type=float, help="AdamW weight decay on conv/linear weights")
    a("--label-smoothing", type=float, help="cross-entropy label smoothing")
    a("--embedding-dim", type=int, help="embedding size; low dims suit distance-weighted sampling")
    a("--margin", type=float, help="triplet margin on unit-norm embeddings")
    a("--triplet-weight", type=float, help="weight of the triplet loss next to CE")
    a("--metric-loss", choices=["triplet", "margin"], help="metric loss next to CE: TripletMarginLoss or "
                                                              "MarginLoss with boundary --beta (Wu et al.)")
    a("--beta", type=float, help="MarginLoss boundary β between positive and negative distances")
    a("--mining", choices=["all", "focus"], help="all: mine the whole batch; focus: triplets only among "
                                                 "focus-class images")
    a("--miner-cutoff", type=float, help="DistanceWeightedMiner: clip distances below this")
    a("--miner-nonzero-loss-cutoff", type=float, help="DistanceWeightedMiner: never draw negatives farther")
    a("--sampler", choices=["auto", "random", "balanced"], help="batch sampler; auto = balanced for triplet, "
                                                                 "random for ce")
    a("--m-per-class", type=int, help="least images per class in a balanced batch")
    a("--focus-classes", type=_classes, help="confusable classes to report on and over-sample")
    a("--focus-oversample", type=float, help="balanced sampler draws focus classes this many times as often; "
                                             "1 = off")
    a("--val-size", type=int, help="images in the fixed stratified validation split")
    a("--limit", type=int, help="train on a stratified subset of N images (smoke tests, quick looks)")
    a("--crop-pad", type=int, help="random-crop padding in pixels, 0 = no crop")
    a("--flip", type=_bool, help="random horizontal flips")
    a("--tta-flip", type=_bool, help="softmax predictions average image and mirror")
    a("--knn-k", type=int, help="k of the per-epoch validation kNN")
    a("--seed", type=int, help="seed for weights, batches, augmentation and mining")
    a("--device", choices=["auto", "cpu", "cuda"], help="auto = CUDA when present")
    a("--threads", type=int, help="torch CPU threads")
    a("--compile", type=_bool, help="torch.compile the training step (needs a C++ compiler on CPU; "
                                    "pays off on long resnet20 runs, not on the 3-epoch default)")
    a("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
      help="continue a run from its last checkpoint: RUN_DIR, or --out when no dir is given")
    a("--overwrite", action="store_true", help="replace a run already in --out")
    a("--no-progress", action="store_true", help="no progress bars (logs only)")
    _show_config_defaults(p)


def _show_config_defaults(parser: argparse.ArgumentParser) -> None:
    """Append each flag's built-in default, read from TrainConfig's fields, so --help never drifts from it.

    Read from the dataclass fields rather than a validated TrainConfig(): validation imports the models
    (torch, ~3 s), which `--help` has no need of.
    """
    from embedfm.config import FIELDS

    for action in parser._actions:
        if action.dest in FIELDS and action.help:
            d = FIELDS[action.dest].default
            shown = ",".join(map(str, d)) if isinstance(d, tuple) else ("unset" if d is None else d)
            action.help += f" [{shown}]"


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="test-set report comparing runs: softmax vs kNN, confusion, focus-group error",
                       description="Evaluate runs on the test set and compare them side by side. Writes report.md, "
                                   "report.json and confusion PNGs into --out, embeddings.npz into each run dir.",
                       formatter_class=_ShowDefaults)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run dirs; the first is the baseline for difference plots")
    p.add_argument("--out", help="report dir (default: the run dir, or the runs' common parent)")
    p.add_argument("--k", type=int, default=10, help="neighbours of the kNN classifier")
    p.add_argument("--metric", choices=["cosine", "l2"], default="cosine", help="kNN metric")
    p.add_argument("--focus-classes", type=_classes, help="override the runs' focus classes")
    p.add_argument("--data-dir", help="where the IDX files are (default: as at training)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_viz(sub) -> None:
    p = sub.add_parser("viz", help="UMAP of test embeddings, runs side by side",
                       description="Draw umap.png: UMAP of each run's test embeddings side by side, focus classes "
                                   "highlighted, focus-class silhouette in each title. Uses embeddings.npz from "
                                   "`embedfm eval` (computed if missing).",
                       formatter_class=_ShowDefaults)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run dirs")
    p.add_argument("--out", help="figure dir (default: the run dir, or the runs' common parent)")
    p.add_argument("--max-points", type=int, default=10_000, help="test points per panel (random subset)")
    p.add_argument("--seed", type=int, default=0, help="UMAP and subset seed")
    p.add_argument("--focus-classes", type=_classes, help="override the runs' focus classes")


def add_index(sub) -> None:
    p = sub.add_parser("index", help="embed a catalogue with a run's model and save a FAISS index",
                       description="Embed a catalogue (the train set, the test set, a folder of images or an IDX "
                                   "file) with RUN's model and save a FAISS index, the id → label/source mapping and "
                                   "the images beside it (default RUN/index/). Index types are faiss factory "
                                   "strings: Flat (exact), IVF<nlist>,Flat, HNSW<M>, IVF<nlist>,PQ<m>.",
                       formatter_class=_ShowDefaults)
    p.add_argument("run", metavar="RUN", help="run dir whose model embeds the catalogue")
    p.add_argument("--catalogue", default="train", help="train, test, a folder of images (labels from sub-folder "
                                                         "names) or an IDX image file")
    p.add_argument("--labels", help="IDX label file for an IDX catalogue")
    p.add_argument("--type", dest="factory", default="Flat", help="faiss factory string, e.g. Flat, IVF256,Flat, "
                                                                  "HNSW32, IVF256,PQ16")
    p.add_argument("--out", help="index dir (default RUN/index)")
    p.add_argument("--nprobe", type=int, help="IVF lists searched by default (saved with the index)")
    p.add_argument("--ef-search", type=int, help="HNSW search breadth by default (saved with the index)")
    p.add_argument("--threads", type=int, help="faiss threads (default: all cores)")
    p.add_argument("--data-dir", help="where the Fashion-MNIST IDX files are")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_search(sub) -> None:
    p = sub.add_parser("search", help="nearest catalogue items of query images (needs `embedfm index` first)",
                       description="Find the k nearest catalogue items of each QUERY: an image file (any size; "
                                   "converted to 28×28 grey like Fashion-MNIST) or test:N for the N-th test image. "
                                   "Prints the neighbours with label and cosine similarity and writes a PNG grid.",
                       formatter_class=_ShowDefaults)
    p.add_argument("run", metavar="RUN", help="run dir whose model embeds the queries")
    p.add_argument("queries", nargs="+", metavar="QUERY", help="image file or test:N")
    p.add_argument("--index", help="index dir (default RUN/index)")
    p.add_argument("--k", type=int, default=10, help="neighbours per query")
    p.add_argument("--nprobe", type=int, help="IVF lists to search (default: as saved)")
    p.add_argument("--ef-search", type=int, help="HNSW search breadth (default: as saved)")
    p.add_argument("--out", help="grid PNG (default <index dir>/search.png)")
    p.add_argument("--data-dir", help="where the Fashion-MNIST IDX files are (for test:N)")


def add_tune(sub) -> None:
    from embedfm.tune import OBJECTIVES, PRUNERS, TRIAL_DEFAULTS, TuneConfig

    d = TuneConfig()
    p = sub.add_parser("tune", help="hyper-parameter search on the validation split (Optuna)",
                       description="Search the loss's hyper-parameters (embedfm.tune.SPACE) with Optuna's TPE "
                                   "sampler on the validation split, pruning bad trials by their per-epoch "
                                   "validation figure. The study lives in a SQLite file in --out: rerun the same "
                                   "command to resume it or add trials; point several workers at one --storage "
                                   "to share it. Writes best_config.json (for `embedfm train --config`), "
                                   "trials.csv/md and plots. The test set is never read. Trials default to "
                                   f"--epochs {TRIAL_DEFAULTS['epochs']} --limit {TRIAL_DEFAULTS['limit']}.")
    a = p.add_argument
    a("--loss", choices=["ce", "triplet"], default="triplet", help="which loss's space to search [triplet]")
    a("--trials", type=int, default=d.trials, help=f"finished trials the study should hold [{d.trials}]")
    a("--timeout", type=float, help="seconds after which no new trial starts [none]")
    a("--objective", choices=list(OBJECTIVES), default=d.objective,
      help=f"val_acc (maximise) or focus_error: validation focus-group error (minimise) [{d.objective}]")
    a("--pruner", choices=list(PRUNERS), default=d.pruner, help=f"early stopping of bad trials [{d.pruner}]")
    a("--out", help="study dir [artifacts/tune/<loss>]")
    a("--storage", help="Optuna storage URL [sqlite:///<out>/study.db]")
    a("--study", dest="study_name", help="study name [<loss>-<backbone>-<objective>]")
    a("--sampler-seed", type=int, default=0, help="TPE seed; give each worker of a shared study its own [0]")
    a("--config", help="JSON config the trials start from (searched keys are overridden)")
    a("--backbone", help="network before the embedding head [fastcnn]")
    a("--epochs", type=int, help=f"epochs per trial [{TRIAL_DEFAULTS['epochs']}]")
    a("--limit", type=int, help=f"train images per trial [{TRIAL_DEFAULTS['limit']}]")
    a("--batch-size", type=int, help="images per step [256]")
    a("--val-size", type=int, help="validation images [5000]")
    a("--data-dir", help="dir with the four Fashion-MNIST IDX .gz files")
    a("--seed", type=int, help="training seed of every trial [0]")
    a("--device", choices=["auto", "cpu", "cuda"], help="auto = CUDA when present")
    a("--threads", type=int, help="torch CPU threads")


class OneLineErrors(argparse.ArgumentParser):
    """argparse prints the whole usage block on a bad flag; we print one line and point at --help."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrors(prog="embedfm", description="Metric-learning embeddings for Fashion-MNIST: train CE "
                                "and CE + triplet (distance-weighted sampling), evaluate with FAISS kNN, draw UMAP.")
    p.add_argument("--version", action="version", version=f"embedfm {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="{train,eval,viz,tune,index,search}", parser_class=OneLineErrors)
    add_train(sub)
    add_eval(sub)
    add_viz(sub)
    add_tune(sub)
    add_index(sub)
    add_search(sub)
    return p


TRAIN_ONLY = {"config", "resume", "overwrite", "no_progress", "command", "debug"}


def cmd_train(args) -> None:
    from embedfm.config import resolve
    from embedfm.train import train

    overrides = {k: v for k, v in vars(args).items() if k not in TRAIN_ONLY}
    if args.resume:
        run = args.resume if isinstance(args.resume, str) else args.out
        if not run:
            raise EmbedfmError("--resume needs a run dir: --resume RUN_DIR")
        from embedfm.config import TrainConfig
        cfg = TrainConfig(out=run)  # the real config comes from the checkpoint
    else:
        cfg = resolve(args.config, overrides)
    try:
        train(cfg, overwrite=args.overwrite, resume=bool(args.resume), progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"\ninterrupted; the last finished epoch is saved. Continue with: "
              f"embedfm train --resume {cfg.out}", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None


def cmd_eval(args) -> None:
    from embedfm.evaluate import evaluate

    evaluate(args.runs, out=args.out, k=args.k, metric=args.metric, focus=args.focus_classes,
             data_dir=args.data_dir, progress=not args.no_progress)


def cmd_viz(args) -> None:
    from embedfm.viz import visualize

    visualize(args.runs, out=args.out, max_points=args.max_points, seed=args.seed, focus=args.focus_classes)


def cmd_tune(args) -> None:
    from embedfm.tune import TuneConfig, resolve_base, tune

    keys = ("loss", "backbone", "epochs", "limit", "batch_size", "val_size", "data_dir", "seed", "device", "threads")
    base = resolve_base(args.config, {k: getattr(args, k) for k in keys})
    tc = TuneConfig(base=base, trials=args.trials, timeout=args.timeout, out=args.out or f"artifacts/tune/{base.loss}",
                    storage=args.storage, study_name=args.study_name, objective=args.objective, pruner=args.pruner,
                    sampler_seed=args.sampler_seed)
    try:
        tune(tc)
    except KeyboardInterrupt:
        print(f"\ninterrupted; finished trials are in the study. Continue by rerunning the same command "
              f"(study dir {tc.out})", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None


def cmd_index(args) -> None:
    from embedfm.index import build

    build(args.run, catalogue=args.catalogue, factory=args.factory, out=args.out, nprobe=args.nprobe,
          ef_search=args.ef_search, threads=args.threads, data_dir=args.data_dir, labels_file=args.labels,
          progress=not args.no_progress)


def cmd_search(args) -> None:
    from embedfm.search import search

    search(args.run, args.queries, index_dir=args.index, k=args.k, nprobe=args.nprobe, ef_search=args.ef_search,
           out=args.out, data_dir=args.data_dir)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"train": cmd_train, "eval": cmd_eval, "viz": cmd_viz, "tune": cmd_tune, "index": cmd_index,
                "search": cmd_search}
    try:
        commands[args.command](args)
    except EmbedfmError as e:
        if args.debug:
            raise
        print(f"embedfm {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return 0
