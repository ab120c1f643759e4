"""embedfm.cli: bad input is one line and exit 2 (through `main` in this process, and once through the embedfm
program), --help for every command and flag, the COMMANDS table."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, make_fake_dataset, write_idx

from embedfm.cli import main
from embedfm.data import FILES


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "embedfm", *map(str, args)], capture_output=True, text=True)


def run_main(capsys, *args) -> subprocess.CompletedProcess:
    """`embedfm ARGS` through `main` in this process (no interpreter importing torch each time), as run_cli gives it:
    the exit status (argparse's SystemExit included), stdout, stderr."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["embedfm", *map(str, args)], code, out, err)


def _bad_data(kind: str, tmp: Path) -> Path:
    d = make_fake_dataset(tmp / "bad")
    f = d / FILES["train_images"]
    if kind == "missing":
        f.unlink()
    elif kind == "truncated":
        f.write_bytes(f.read_bytes()[:1000])
    elif kind == "not_gzip":
        f.write_bytes(b"hello")
    elif kind == "magic":
        import gzip

        f.write_bytes(gzip.compress(b"\x00\x00\x08\x99" + b"\x00" * 100))
    elif kind == "dims":
        write_idx(f, np.zeros((200, 32, 32)))
    elif kind == "length":
        write_idx(f, np.zeros((150, 28, 28)))
    elif kind == "label":
        write_idx(d / FILES["train_labels"], np.full(200, 11))
    elif kind == "dir_is_file":
        (tmp / "afile").write_text("x")
        return tmp / "afile"
    return d


BAD_TRAIN = {
    "missing": "file not found",
    "truncated": "truncated or corrupt",
    "not_gzip": "not a gzip file",
    "magic": "wrong IDX magic",
    "dims": "expected 28x28",
    "length": "holds 200 labels",
    "label": "outside 0-9",
    "dir_is_file": "is a file",
}


@pytest.mark.parametrize("kind", list(BAD_TRAIN))
def test_bad_data_is_one_line_exit_2(tmp_path, kind, capsys):
    d = _bad_data(kind, tmp_path)
    r = run_main(capsys, "train", "--data-dir", d, "--out", tmp_path / "out", "--epochs", "1", "--no-progress")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and BAD_TRAIN[kind] in lines[0], r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--epochs", "0"], "--epochs must be positive"),
        (["--lr", "-0.1"], "--lr must be positive"),
        (["--loss", "triplet", "--batch-size", "30"], "too small for the balanced sampler"),
        (["--backbone", "nope"], "--backbone 'nope' is not one of fastcnn"),
        (["--focus-classes", "0,10"], "class ids in 0-9"),
        (["--loss", "arcface"], "invalid choice: 'arcface'"),
        (["--epochs", "three"], "invalid int value"),
    ],
)
def test_bad_train_flags(tmp_path, flags, message, capsys):
    r = run_main(capsys, "train", "--out", tmp_path / "out", *flags)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_refuses_to_overwrite_finished_run(fake_run, capsys):
    out, data = fake_run
    before = (out / "checkpoint.safetensors").read_bytes()
    r = run_main(capsys, "train", "--out", out, "--data-dir", data, "--epochs", "1", "--no-progress")
    assert r.returncode == 2 and "already holds a finished run" in r.stderr
    assert (out / "checkpoint.safetensors").read_bytes() == before


def test_bad_data_with_overwrite_keeps_the_existing_run(tmp_path, fake_run, capsys):
    src, _ = fake_run
    before = (src / "checkpoint.safetensors").read_bytes()
    r = run_main(
        capsys, "train", "--out", src, "--overwrite", "--data-dir", _bad_data("truncated", tmp_path), "--no-progress"
    )
    assert r.returncode == 2 and "truncated" in r.stderr
    assert (src / "checkpoint.safetensors").read_bytes() == before and (src / "DONE").exists()


def test_eval_bad_run_dirs(tmp_path, fake_run, capsys):
    out, data = fake_run
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_main(capsys, "eval", empty)
    assert r.returncode == 2 and "no checkpoint" in r.stderr
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "checkpoint.safetensors").write_bytes((out / "checkpoint.safetensors").read_bytes()[:500])
    r = run_main(capsys, "eval", corrupt)
    assert r.returncode == 2 and "corrupt" in r.stderr and "Traceback" not in r.stderr
    r = run_main(capsys, "eval", out, "--k", "1000", "--data-dir", data)
    assert r.returncode == 2 and "larger than the number of reference embeddings" in r.stderr


@pytest.mark.slow
def test_the_embedfm_program_says_one_line_and_exits_2(tmp_path):
    """The console script end to end, for the in-process cases above: bad data (raised in the command) and a bad
    flag (argparse's) are one line on stderr, exit status 2, no traceback."""
    program = Path(sys.executable).with_name("embedfm")
    for args, message in (
        (["train", "--data-dir", _bad_data("truncated", tmp_path), "--out", tmp_path / "out", "--no-progress"],
         BAD_TRAIN["truncated"]),
        (["train", "--out", tmp_path / "out", "--epochs", "three"], "invalid int value"),
    ):  # fmt: skip
        r = subprocess.run([program, *map(str, args)], capture_output=True, text=True)
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_debug_flag_shows_traceback(tmp_path):
    r = run_cli("--debug", "eval", tmp_path / "nothing")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_help_explains_every_flag(capsys):
    """Every flag of every command has help text, and --help runs for each command."""
    import argparse

    from embedfm.cli import COMMANDS, build_parser

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert set(commands) == set(COMMANDS)
    for name, parser in commands.items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help and len(action.help) > 8, f"embedfm {name} {action.option_strings or action.dest}"
    for cmd in COMMANDS:
        r = run_main(capsys, cmd, "--help")
        assert r.returncode == 0 and f"usage: embedfm {cmd}" in r.stdout
        assert "(default: None)" not in r.stdout and "(default: False)" not in r.stdout  # unset says nothing
    assert "--triplet-weight" in run_main(capsys, "train", "--help").stdout


@pytest.mark.slow
def test_help_does_not_import_torch():
    """`--help` only parses: building the parsers (config defaults, tune's defaults) must not pull in torch."""
    code = "import sys; from embedfm.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


def _subcommands():
    from embedfm.cli import build_parser

    return next(a for a in build_parser()._actions if a.dest == "command").choices


@pytest.mark.parametrize("command", ["train", "eval", "viz", "tune", "index", "search", "serve", "summarize",
                                     "convert", "export", "explore", "floor", "ensemble", "study"])  # fmt: skip
def test_every_command_answers_help(command, capsys):
    """Each command's --help exits 0 with its usage (in-process: main parses like the embedfm program)."""
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0 and f"usage: embedfm {command}" in capsys.readouterr().out


def test_no_flag_is_declared_twice():
    """Every flag literal in cli.py is added once; a flag that two commands take outside the config schema comes
    from SHARED (argparse parents), so its declaration is one."""
    import ast
    from collections import Counter
    from pathlib import Path

    import embedfm.cli as cli
    from embedfm.config import FIELDS
    from embedfm.tune import BASE_FLAGS, TuneConfig

    tree = ast.parse(Path(cli.__file__).read_text())
    literals = Counter(
        call.args[0].value
        for call in ast.walk(tree)
        if isinstance(call, ast.Call)
        and getattr(call.func, "attr", None) == "add_argument"
        and call.args
        and isinstance(call.args[0], ast.Constant)
        and str(call.args[0].value).startswith("--")
    )
    assert literals and max(literals.values()) == 1, literals.most_common(3)
    assert not set(literals) & set(cli.SHARED), "a SHARED flag is also added on its own"

    schema = {"train": set(FIELDS), "tune": {*BASE_FLAGS, *(f.name for f in dataclasses.fields(TuneConfig))}}
    takers: dict[str, set[str]] = {}
    for name, parser in _subcommands().items():
        for action in parser._actions:
            if action.dest not in schema.get(name, ()) and action.dest != "help":
                for option in action.option_strings:
                    takers.setdefault(option, set()).add(name)
    for option, commands in takers.items():
        assert len(commands) == 1 or option in cli.SHARED, (option, commands)
    for name, command in cli.COMMANDS.items():  # and every command takes the shared flags it names
        shared = command.shared() if callable(command.shared) else command.shared
        assert set(shared) <= {o for a in _subcommands()[name]._actions for o in a.option_strings}, name


def test_a_command_is_one_table_entry(monkeypatch, capsys):
    """A new command needs only its COMMANDS entry: the parser, the shared flags, --help and dispatch follow."""
    import embedfm.cli as cli

    seen = {}
    entry = cli.Command(
        lambda p: p.add_argument("thing", help="what to act on"),
        lambda args: seen.update(vars(args)),
        "act on a thing",
        "Act on a thing, for the test.",
        {"--out": "where the result goes", "--data-dir": None, "--no-progress": None},
    )
    monkeypatch.setitem(cli.COMMANDS, "act", entry)
    assert main(["act", "x", "--out", "o", "--no-progress"]) == 0
    assert (seen["command"], seen["thing"], seen["out"], seen["data_dir"], seen["no_progress"]) == (
        "act",
        "x",
        "o",
        None,
        True,
    )
    with pytest.raises(SystemExit):
        main(["act", "--help"])
    out = capsys.readouterr().out
    assert "where the result goes" in out and "where the Fashion-MNIST IDX files are" in out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "act on a thing" in capsys.readouterr().out


@pytest.mark.slow
def test_study_is_a_command(monkeypatch, capsys):
    """`embedfm study STAGE studies/NAME.py` runs embedfm.study's stages (check: seconds for the mlp study), with
    check's exit status; `python -m embedfm.study` is the same command."""
    import embedfm.study as study

    monkeypatch.chdir(ROOT)
    assert main(["study", "check", "studies/mlp.py"]) == 0
    assert "same: artifacts/reference/study/mlp/summary.csv" in capsys.readouterr().out
    assert study.main(["check", "studies/mlp.py"]) == 0
    monkeypatch.setattr(study, "check", lambda s: ["summary.md"])
    assert main(["study", "check", "studies/mlp.py"]) == 1
    assert (
        "1 result files differ from their rebuild: artifacts/reference/study/mlp/summary.md" in capsys.readouterr().err
    )

    seen = {}
    monkeypatch.setattr(study, "run_stage", lambda s, methods, seeds, threads: seen.update(
        study=s.name, methods=methods, seeds=seeds, threads=threads))  # fmt: skip
    assert main(["study", "run", "studies/mlp.py", "--methods", "triplet", "--seeds", "0,2", "--threads", "1"]) == 0
    assert seen == {"study": "mlp", "methods": ["triplet"], "seeds": [0, 2], "threads": 1}
    assert main(["study", "run", "studies/mlp.py", "--methods", "arcface"]) == 2
    assert "embedfm study: error: --methods: unknown method 'arcface'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main(["study", "run", "studies/mlp.py", "--seeds", "a"])
    assert done.value.code == 2
