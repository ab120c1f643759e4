"""Multi-seed study: N seeds of each loss on one backbone and budget, each evaluated on the test set, then
summarised (mean ± std over seeds, `embedfm summarize`).

    .venv/bin/python scripts/reproduce.py [--backbone fastcnn] [--seeds 3] [--epochs 3] [--losses ce,triplet]
                                          [--out artifacts/study] [-- extra embedfm train flags]

Writes <out>/<backbone>/<loss>_s<seed>/ (run dirs with their report.json) and <out>/<backbone>/summary.{md,csv}.
Resumable, by the package's notion of a run's state (`embedfm.rundir.state`): an evaluated run is skipped, a
finished one is evaluated, a started one resumes from its last checkpoint, a new one is trained. The extra flags
after `--` are parsed by `embedfm train`'s own parser, so they are checked like the command's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from embedfm import commands
from embedfm.cli import build_parser
from embedfm.errors import EmbedfmError
from embedfm.summarize import summarize


def train_flags(extra: list[str]) -> dict:
    """Extra `embedfm train` flags → the config values they set (the ones left out stay None)."""
    from embedfm.config import FIELDS

    args = build_parser().parse_args(["train", *extra])
    return {name: getattr(args, name) for name in FIELDS}


def study(backbone: str, seeds: int, epochs: int, losses: list[str], out: str, extra: list[str]) -> Path:
    root = Path(out) / backbone
    flags = train_flags(extra)
    for seed in range(seeds):
        for loss in losses:
            given = {**flags, "loss": loss, "backbone": backbone, "epochs": epochs, "seed": seed}
            commands.ensure_evaluated(str(root / f"{loss}_s{seed}"), None, given, log=lambda m: print(m, flush=True))
    summarize([str(root)], out=str(root))
    return root


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="fastcnn", help="network of every run")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 of each loss")
    p.add_argument("--epochs", type=int, default=3, help="epochs of every run")
    p.add_argument("--losses", default="ce,triplet", help="comma-separated losses to run for each seed")
    p.add_argument("--out", default="artifacts/study", help="study root; runs go to <out>/<backbone>/")
    a = p.parse_args(own)
    try:
        study(a.backbone, a.seeds, a.epochs, [s for s in a.losses.replace(" ", ",").split(",") if s], a.out, extra)
    except EmbedfmError as e:
        print(f"reproduce: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
