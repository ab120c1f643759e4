"""Runs read back: a run dir as one object, its evaluation arrays, and the checks that runs fit the data and each
other, each written once with one message.

- `Run.open(dir)` (a run dir or its checkpoint.safetensors): the run's parts by name, `config` (its `TrainConfig`),
  `model_args`, `history`, `epoch`, `data_fingerprint`, `splits`, `name`, `dir`, read from the checkpoint's JSON
  header alone (`checkpoint.read_meta`: no tensors, no pickle), so describing a run costs no weights. The network
  (`model(device)`) and the training state `--resume` needs (weights, optimizer, scheduler, RNG, objective) are
  loaded from the whole checkpoint when asked for. No other module indexes a checkpoint dict by key.
- `Run.check_data(data)`: was this run trained on these images? (`api`, `evaluate`, `explore`); `Run.load_data()`
  reads the set the run's config names (`sources.for_config`) and checks it; `Run.class_names` its class names.
- `check_same_data(runs)`: were these runs trained on the same data? (`evaluate`, `EvaluatedRuns`)
- `check_same_images(names, labels)`: were these runs evaluated on the same images, given each run's labels in image
  order (embeddings.npz or report.json's per-image record)? (`ensemble`, `floor`, `explore`, `paired`)
- `read_embeddings(dir, keys)`: the one checked reader of a run's embeddings.npz; `EvaluatedRuns.open(dirs, keys)`
  reads several and runs both comparisons above once.

Torch-free at import: `summarize`-like callers and `--help` do not pay for torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embedfm import CLASS_NAMES, checkpoint, rundir
from embedfm.errors import EmbedfmError
from embedfm.report import is_number

if TYPE_CHECKING:
    import torch

    from embedfm.config import TrainConfig


class Run:
    """A trained run, read from its checkpoint (made by `Run.open`)."""

    def __init__(self, path: Path, meta: dict):
        self.path = path  # the checkpoint file
        self.dir = path.parent
        self.name = self.dir.resolve().name
        self._meta = meta
        self._state: dict | None = None  # the whole checkpoint, once the training state was asked for

    @classmethod
    def open(cls, run_dir: str | Path) -> Run:
        """Read a run (a run dir or its checkpoint file); one line if it is missing, old, damaged or its config or
        model arguments are not this embedfm's."""
        run = cls(checkpoint.checkpoint_path(run_dir), checkpoint.read_meta(run_dir))
        run.config  # noqa: B018 — parsed now: an incompatible config is one line before anything else happens
        run.model_args  # noqa: B018
        return run

    def __repr__(self) -> str:
        return f"<embedfm.Run {self.dir}: epoch {self.epoch}>"

    # ------------------------------------------------------------------------------------------ description

    @property
    def config(self) -> TrainConfig:
        if not hasattr(self, "_config"):
            from embedfm.config import from_dict

            try:
                self._config = from_dict(self._meta["config"], source=f"{self.dir}/{rundir.CHECKPOINT}")
            except EmbedfmError as e:
                raise EmbedfmError(f"{self.dir}: checkpoint holds an incompatible config ({e})") from None
        return self._config

    @property
    def model_args(self) -> dict:
        """The checked arguments that rebuild the network (`models.build_model`)."""
        return checkpoint.model_args(self._meta, self.dir)

    @property
    def embedding_dim(self) -> int:
        return self.model_args.get("embedding_dim", 64)

    @property
    def num_classes(self) -> int:
        return self.model_args.get("num_classes", 10)

    @property
    def history(self) -> list[dict]:
        """One row of figures per finished epoch; one line if the checkpoint's history is not that."""
        history = self._meta.get("history", [])
        last = history[-1] if isinstance(history, list) and history else {}
        seconds = last.get("train_seconds") if isinstance(last, dict) else None
        if not (
            isinstance(history, list)
            and all(isinstance(h, dict) for h in history)
            and (seconds is None or is_number(seconds))
        ):
            raise EmbedfmError(f"{self.dir}: checkpoint's history is malformed (not a list of epochs with figures)")
        return history

    @property
    def epoch(self):
        """The last finished epoch (0-based) as saved; `--resume` checks it against the config."""
        return self._meta.get("epoch")

    @property
    def data_fingerprint(self) -> dict | None:
        """What `data.FashionMNIST.fingerprint` gave for the data the run trained on (None for runs from before)."""
        return self._meta.get("data")

    @property
    def class_names(self) -> tuple[str, ...]:
        """The names of classes 0..K-1 of the set the run trained on (Fashion-MNIST's for runs that record none)."""
        names = self._meta.get("classes")
        if isinstance(names, list) and all(isinstance(n, str) for n in names) and len(names) == self.num_classes:
            return tuple(names)
        return CLASS_NAMES if self.num_classes == len(CLASS_NAMES) else tuple(str(c) for c in range(self.num_classes))

    @property
    def data_notes(self) -> dict:
        """What reading a folder / CSV set found (files skipped, train-test duplicates, how the test split was made);
        empty for Fashion-MNIST."""
        notes = self._meta.get("data_notes")
        return notes if isinstance(notes, dict) else {}

    def load_data(self, data_dir: str | None = None, progress: bool = True):
        """The image set this run trained on (its config's --data and reading options), checked against the run's
        fingerprint: one line if it changed. `data_dir`: where Fashion-MNIST is, over the config's."""
        from embedfm import sources

        data = sources.for_config(self.config, data_dir, progress)
        self.check_data(data)
        return data

    @property
    def splits(self) -> dict:
        """Sizes of the run's splits as trained ({"n_train", "n_val", ...}; empty for runs from before)."""
        splits = self._meta.get("splits")
        return splits if isinstance(splits, dict) else {}

    def check_data(self, data) -> None:
        """One line if the run was trained on other data than `data` (a `data.FashionMNIST`) holds."""
        if self.data_fingerprint is not None and self.data_fingerprint != data.fingerprint():
            if self.config.data != "fashion-mnist":
                raise EmbedfmError(
                    f"{self.dir}: trained on other images than --data {self.config.data} holds now (files added, "
                    "removed or changed since); train again on the set as it is"
                )
            raise EmbedfmError(
                f"{self.dir}: trained on different data than {data.source} holds; give the data dir it was trained "
                "on (--data-dir)"
            )

    # ------------------------------------------------------------------------------------------ tensors

    def model(self, device: str | torch.device = "cpu"):
        """The network with the run's weights, in eval mode on `device` (`checkpoint.build_network`)."""
        return checkpoint.build_network(self._state or checkpoint.load_checkpoint(self.path), self.dir, device)

    def verify(self) -> None:
        """Load the whole checkpoint once and keep nothing: one line now if its tensors are damaged."""
        checkpoint.load_checkpoint(self.path)

    def load(self) -> Run:
        """Load the whole checkpoint now and keep it (weights, optimizer, scheduler, RNG states): what `--resume`
        reads, so a damaged file is one line before anything is written."""
        if self._state is None:
            self._state = checkpoint.load_checkpoint(self.path)
        return self

    def _training(self, key: str):
        return self.load()._state[key]  # a KeyError: the checkpoint lacks that part of the training state

    def weights(self) -> dict:
        """The network's state dict."""
        return self._training("model")

    def optimizer_state(self) -> dict:
        return self._training("optimizer")

    def scheduler_state(self) -> dict:
        return self._training("scheduler")

    def rng_state(self) -> dict:
        """{"python", "numpy", "torch", "data", "cuda"}: every random-number state at the end of the epoch."""
        return self._training("rng")

    def objective_state(self) -> dict:
        """The loss's own parameters (ProxyAnchor, ArcFace), as saved: name → nested lists of numbers."""
        return self._training("objective")


# ----------------------------------------------------------------------------------------------
# comparing runs


def check_same_data(runs: list[Run], names: list[str] | None = None) -> None:
    """One line if these runs were trained on different data (their checkpoints' data fingerprints differ)."""
    names = names or [str(r.dir) for r in runs]
    if len({json.dumps(r.data_fingerprint, sort_keys=True) for r in runs}) > 1:
        raise EmbedfmError("these runs were trained on different data and cannot be compared: " + ", ".join(names))


def check_same_images(names: list[str], labels: list[np.ndarray], what: str = "test images") -> None:
    """One line if these runs were evaluated on different images: each run's labels (N,) in image order, from its
    embeddings.npz or its report.json's per-image record. `what` names the images ("test images", "train images")."""
    for name, y in zip(names[1:], labels[1:]):
        if not np.array_equal(np.asarray(y), np.asarray(labels[0])):
            raise EmbedfmError(
                f"{names[0]} and {name} were evaluated on different {what} and cannot be compared; evaluate them on "
                "the same data (embedfm eval --data-dir)"
            )


def read_embeddings(run_dir: str | Path, keys: tuple[str, ...]) -> dict:
    """The named arrays of a run's embeddings.npz (`fileio.read_npz`: no pickles, sizes checked before
    allocating), each checked against what `evaluate.evaluate_run` writes: labels and predictions (N,) class ids,
    embeddings (N, D) finite with one D for train and test, test_probs (N, 10) finite. One line if not."""
    from embedfm.fileio import read_npz

    path = Path(run_dir) / rundir.EMBEDDINGS
    rerun = f"rerun `embedfm eval {run_dir}`"
    a = read_npz(path, ("test_labels", "train_labels", *keys), rerun, what="embeddings file")
    if any(v.ndim == 0 for v in a.values()):
        raise EmbedfmError(f"{path}: arrays of the wrong shapes, types or values; {rerun}")
    n = {"test": len(a["test_labels"]), "train": len(a["train_labels"])}
    C = len(CLASS_NAMES)
    ids = lambda v, rows: v.shape == (rows,) and v.dtype.kind in "iu" and ((v >= 0) & (v < C)).all()
    ok = ids(a["test_labels"], n["test"]) and ids(a["train_labels"], n["train"])
    dims = set()
    for key, v in a.items():
        split = "train" if key.startswith("train_") else "test"
        if key.startswith("pred_"):
            ok = ok and ids(v, n["test"])
        elif key.endswith("_embeddings"):
            ok = ok and v.ndim == 2 and len(v) == n[split] and v.dtype.kind == "f" and bool(np.isfinite(v).all())
            dims.add(v.shape[-1] if v.ndim == 2 else None)
        elif key == "test_probs":
            ok = ok and v.shape == (n["test"], C) and v.dtype.kind == "f" and bool(np.isfinite(v).all())
    if not ok or len(dims) > 1:
        raise EmbedfmError(f"{path}: arrays of the wrong shapes, types or values; {rerun}")
    return a


class EvaluatedRuns:
    """Several evaluated runs' embeddings.npz arrays, checked once to be comparable: trained on the same data (where
    the checkpoints are there to say) and evaluated on the same test images (and, with `references`, the same train
    images, the kNN references)."""

    def __init__(self, dirs: list[str], arrays: list[dict]):
        self.dirs = [str(d) for d in dirs]
        self.arrays = arrays
        self.labels = arrays[0]["test_labels"].astype(np.int64) if arrays else np.zeros(0, np.int64)

    @classmethod
    def open(cls, run_dirs: list[str | Path], keys: tuple[str, ...], references: bool = False) -> EvaluatedRuns:
        arrays = [read_embeddings(r, keys) for r in run_dirs]
        check_comparable(run_dirs, [a["test_labels"] for a in arrays])
        if references:
            names = [str(r) for r in run_dirs]
            check_same_images(names, [a["train_labels"] for a in arrays], "train images")
        return cls([str(r) for r in run_dirs], arrays)

    def __len__(self) -> int:
        return len(self.arrays)


def check_comparable(run_dirs: list[str | Path], test_labels: list[np.ndarray]) -> None:
    """Both comparisons of evaluated runs, once: the same data where every run still has its checkpoint
    (published studies keep only reports), and the same test images."""
    names = [str(r) for r in run_dirs]
    if all((Path(r) / rundir.CHECKPOINT).is_file() for r in run_dirs):
        check_same_data([Run.open(r) for r in run_dirs], names)
    check_same_images(names, test_labels)
