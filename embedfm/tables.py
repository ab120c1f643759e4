"""File-driven results tables: a doc's table marker names results files under artifacts/reference/ and gives a
template table; `render` fills the template from the files' rows and appends the source line
(scripts/make_docs.py calls it for every marker that names a file rather than a renderer).

    <!-- table: bench_index.json#rows where=data~^Fashion
    | data | n | search | recall@10 |
    | `{data}` | {n:,} | nprobe={nprobe} ?? efSearch={ef_search} ?? exact | {recall_at_10:.4f} |
    Free text after the template, formatted with the first file's top-level fields ({date}).
    -->

First line: one or more file globs (relative to artifacts/reference/, matches in path order, rows concatenated),
each optionally `#a.b` to take the list or dict at that key path (a dict's entries become rows, the key as `_key`);
then options, shell-quoted: `where=FIELD~REGEX` keeps the rows whose field matches, `where=FIELD!~REGEX` drops them
(repeatable); `with=NAME=GLOB#keys` gives each row the row of that file with the same `_key` (else the one at the
same position) as field NAME (repeatable); `source=GLOB,GLOB` links those files instead of the ones read, and
`links=name` names each link by the file's name alone; `as=text` includes `.md` files whole
(the fragments a study's publish writes, `embedfm.sections`), their relative links rebased to the doc, with no
template and no source line of its own. A CSV's or JSON-lines file's rows are its lines; a JSON document without `#`
is one row; a `.md` file contributes its table lines unchanged.

The template: a header line (formatted with the first file's top-level fields), then one or more row templates,
each applied to every row in turn (one row shown as several lines: a record as item / value lines). A cell is
str.format over the row, with `.` reaching into nested fields (`{classifiers.softmax.accuracy}`), conversions `!p`
(× 100, a fraction shown in percent), `!k` (/ 1024), `!m` (× 1000), `!j` (a list's items joined with commas),
`!c` (the same, each in backticks), `!n` (a list's length), `!u` (the text after the first `_`: `{_dir!u}` of
ensemble_ce/ is ce), numeric format specs applied to CSV strings as numbers, the spec `?TEXT` (TEXT where the
field is true, nothing where it is false, "False" or 0: `{number}{defaults:? (defaults)}`), and alternatives
separated by ` ?? `: the first whose fields all exist and are not null; "–" when none does. A row template is left
out for a row where none of its cells that name fields has its fields (one table of a record's fixed rows and a
dict's entries). Every row gets `_file` (its file, relative to artifacts/reference/) and `_dir` (that file's dir
name).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import string
from collections.abc import Callable
from pathlib import Path

from embedfm.markdown import md_table

MISSING = "–"
ALTERNATIVE = " ?? "


class TableError(Exception):
    """A marker that cannot be rendered: no such file, field or option."""


class Missing(Exception):
    """A field a cell names is absent or null (the cell tries its next alternative)."""


class Row(dict):
    """A row whose nested fields a format field reaches with dots ({a.b.6})."""

    def __getattr__(self, key):
        try:
            return wrap(self[key])
        except KeyError:
            raise AttributeError(key) from None


class Seq(list):
    """A list whose items a format field reaches by position ({load_average.0})."""

    def __getattr__(self, key):
        try:
            return wrap(self[int(key)])
        except (ValueError, IndexError):
            raise AttributeError(key) from None


def wrap(v):
    if isinstance(v, dict) and not isinstance(v, Row):
        return Row(v)
    return Seq(v) if isinstance(v, list) and not isinstance(v, Seq) else v


class Cells(string.Formatter):
    def get_value(self, key, args, kwargs):
        if key not in kwargs:
            raise Missing(key)
        return wrap(kwargs[key])

    def get_field(self, field_name, args, kwargs):
        if field_name in kwargs:  # a key that holds a dot itself ({ema0.99})
            return self.get_field_value(kwargs[field_name], field_name)
        try:
            obj, used = super().get_field(field_name, args, kwargs)
        except (AttributeError, KeyError, IndexError):
            raise Missing(field_name) from None
        if obj is None or obj == "":
            raise Missing(field_name)
        return obj, used

    def get_field_value(self, obj, field_name):
        if obj is None or obj == "":
            raise Missing(field_name)
        return wrap(obj), field_name

    def convert_field(self, value, conversion):
        if conversion == "n":
            return len(value)
        if conversion == "u":
            return str(value).partition("_")[2]
        if conversion in ("j", "c"):  # a list: its items joined, in backticks with !c
            return ", ".join(f"`{v}`" if conversion == "c" else str(v) for v in value)
        scale = {"p": 100, "k": 1 / 1024, "m": 1000}.get(conversion)
        return scale * float(value) if scale else super().convert_field(value, conversion)

    def format_field(self, value, format_spec):
        if format_spec.startswith("?"):  # a flag shown as text where it is set
            return format_spec[1:] if value and str(value) not in ("False", "0") else ""
        if isinstance(value, str) and format_spec[-1:] in ("d", "f", "g", "e", "%", ","):
            value = int(value) if re.fullmatch(r"-?\d+", value) else float(value)
        return super().format_field(value, format_spec)


CELLS = Cells()


def cell(template: str, row: dict) -> str:
    """One template cell over one row: its first alternative whose fields are all there."""
    found = first_alternative(template, row)
    return MISSING if found is None else found


def first_alternative(template: str, row: dict) -> str | None:
    for alt in template.split(ALTERNATIVE):
        try:
            return CELLS.vformat(alt, (), row)
        except Missing:
            continue
    return None


def line(cells: list[str], row: dict) -> list[str] | None:
    """One row template over one row; None where every cell that names a field has none of its fields (a record's
    fixed rows and a dict's entries in one table: each row template shows the rows it applies to)."""
    out = [first_alternative(t, row) for t in cells]
    named = [v for t, v in zip(cells, out) if any(f for _, f, _, _ in string.Formatter().parse(t))]
    return None if named and all(v is None for v in named) else [MISSING if v is None else v for v in out]


def read(path: Path) -> object:
    if path.suffix == ".csv":
        with open(path, newline="") as fh:
            return list(csv.DictReader(fh))
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if path.suffix == ".md":
        return [line for line in path.read_text().splitlines() if line.startswith("|")]
    return json.loads(path.read_text())


def rows_of(doc, keys: str, where: str) -> list:
    for k in filter(None, keys.split(".")):
        if not isinstance(doc, dict) or k not in doc:
            raise TableError(f"{where}: no field {keys!r}")
        doc = doc[k]
    if isinstance(doc, dict) and keys:
        return [{**v, "_key": k} if isinstance(v, dict) else {"_key": k, "value": v} for k, v in doc.items()]
    return doc if isinstance(doc, list) else [doc]


def keep(row: dict, rule: str) -> bool:
    m = re.fullmatch(r"(.+?)(!?)~(.*)", rule)
    if not m:
        raise TableError(f"where={rule!r}: expected FIELD~REGEX or FIELD!~REGEX")
    field, negate, pattern = m.groups()
    return bool(re.search(pattern, str(row.get(field, "")))) != bool(negate)


def parse(spec: str) -> tuple[list[str], dict[str, list[str]], list[str], list[str]]:
    """A marker's text → (file globs, options, template lines, note lines)."""
    first, *rest = spec.strip().splitlines()
    globs, options = [], {}
    for token in shlex.split(first):
        key, eq, value = token.partition("=")
        if eq and re.fullmatch(r"[a-z]+", key):
            options.setdefault(key, []).append(value)
        else:
            globs.append(token)
    unknown = set(options) - {"where", "source", "as", "with", "links"}
    if unknown:
        raise TableError(f"unknown option {sorted(unknown)[0]!r} (where, source, as, with, links)")
    lines = [line.strip() for line in rest if line.strip()]
    template = [line for line in lines if line.startswith("|")]
    return globs, options, template, [line for line in lines if not line.startswith("|")]


def split_row(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split(" | ")]


def render(spec: str, ref: Path, here: Path, open_as: Callable[[str], Path] | None = None) -> str:
    """The Markdown a file-driven marker stands for: the filled table, the note, then `Source:` and links to the
    files read, relative to `here` (the doc's dir). `open_as` maps a file (relative to ref) to the path read instead
    (make_docs --check renders the study summaries it regenerated into a temp dir)."""
    globs, options, template, note = parse(spec)
    if not globs:
        raise TableError("a file-driven table names at least one file under artifacts/reference/")
    if options.get("as"):
        if options["as"] != ["text"] or template or note:
            raise TableError("as=text includes Markdown files whole: no template, no note")
        return "\n\n".join(include(ref, rel, here, open_as) for g in globs for rel in matched(ref, g))
    files: list[str] = []
    docs, rows = [], []
    for g in globs:
        for doc, rs in read_rows(g, ref, files, open_as):
            docs.append(doc)
            rows += rs
    first = docs[0]
    for joined in options.get("with", []):  # NAME=GLOB#keys: that file's rows, matched by _key or by position
        name, _, g = joined.partition("=")
        others = [r for _, rs in read_rows(g, ref, files, open_as) for r in rs]
        by_key = {o.get("_key"): o for o in others if isinstance(o, dict) and "_key" in o}
        for i, r in enumerate(r for r in rows if isinstance(r, dict)):
            o = by_key.get(r.get("_key")) if by_key else (others[i] if i < len(others) else None)
            if o is not None:
                r[name] = o
    for rule in options.get("where", []):
        rows = [r for r in rows if keep(r, rule)]
    top = first if isinstance(first, dict) else {}
    if all(isinstance(r, str) for r in rows) and not template:  # a Markdown table included as it is
        text = "\n".join(rows)
    else:
        if len(template) < 2:
            raise TableError("the template needs a header line and at least one row line")
        header, cells = [cell(h, top) for h in split_row(template[0])], [split_row(t) for t in template[1:]]
        if any(len(c) != len(header) for c in cells):
            raise TableError(f"a template row has another number of cells than the header {template[0]!r}")
        text = md_table(header, [b for r in rows for c in cells if (b := line(c, r)) is not None])
    shown = (lambda rel: Path(rel).name) if options.get("links") == ["name"] else (lambda rel: rel)
    links = [link(ref / rel, here, shown(rel)) for g in ",".join(options.get("source", [])).split(",") if g
             for rel in matches(ref, g)] or [link(ref / f, here, shown(f)) for f in files]  # fmt: skip
    lead = " ".join(cell(line, top) for line in note)
    return text + "\n\n" + (lead + " " if lead else "") + "Source: " + ", ".join(links)


def read_rows(g: str, ref: Path, files: list[str], open_as=None) -> list[tuple[object, list]]:
    """(document, its rows) of every file a glob (`#a.b` keys) matches; each file noted once in `files`."""
    pattern, _, keys = g.partition("#")
    out = []
    for rel in matched(ref, pattern):
        doc = read(open_as(rel) if open_as else ref / rel)
        files += [] if rel in files else [rel]
        rows = rows_of(doc, keys, rel)
        out.append((doc, [{**r, "_file": rel, "_dir": Path(rel).parent.name} if isinstance(r, dict) else r
                          for r in rows]))  # fmt: skip
    return out


def matched(ref: Path, pattern: str) -> list[str]:
    """matches, at least one."""
    if not (found := matches(ref, pattern)):
        raise TableError(f"no file matches {ref / pattern}")
    return found


def include(ref: Path, rel: str, here: Path, open_as: Callable[[str], Path] | None = None) -> str:
    """A Markdown fragment's whole text, its relative links (written from its own dir) rebased to `here`."""

    def rebase(m: re.Match) -> str:
        target = m.group(1)
        if re.match(r"[a-z]+:|#", target):
            return m.group(0)
        path, hash_, anchor = target.partition("#")
        return "](" + os.path.relpath((ref / rel).parent / path, here).replace(os.sep, "/") + hash_ + anchor + ")"

    text = (open_as(rel) if open_as else ref / rel).read_text().rstrip("\n")
    return re.sub(r"\]\(([^)\s]+)\)", rebase, text)


def matches(ref: Path, pattern: str) -> list[str]:
    """The files under ref a glob matches, relative to it, in path order (ensemble_ce/ before ensemble_ce-balanced/)."""
    return [p.as_posix() for p in sorted(p.relative_to(ref) for p in ref.glob(pattern) if p.is_file())]


def link(path: Path, here: Path, text: str) -> str:
    return f"[{text}]({os.path.relpath(path, here).replace(os.sep, '/')})"
