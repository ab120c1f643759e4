"""embedfm.tables: file-driven tables rendered from hand-made results files, checked against hand-written Markdown."""

import json

import pytest

from embedfm.tables import TableError, render


@pytest.fixture
def ref(tmp_path):
    ref = tmp_path / "ref"
    (ref / "study" / "a").mkdir(parents=True)
    (ref / "study" / "a" / "summary.csv").write_text("method,seeds,recall 6\nce,3,0.750\nkNN on raw pixels,1,0.5\n")
    (ref / "bench.json").write_text(json.dumps({
        "date": "2026-01-02", "n": 100000, "load": [3.84, 5.51],
        "rows": [{"name": "Flat", "qps": 13050, "acc": 0.91234, "nprobe": 8, "cpu": {"ms": 0.0123}},
                 {"name": "HNSW", "qps": 900, "acc": 0.5, "ef_search": None, "cpu": {"ms": 0.5}}],
        "runs": {"ce": {"acc": 0.9}, "triplet": {"acc": 0.95}},
    }))  # fmt: skip
    (ref / "log.jsonl").write_text('{"config": {}}\n{"epoch": 1, "ema0.99": 0.5}\n')
    (ref / "bench.md").write_text("# x\n\n| a |\n|---|\n| 1 |\n")
    return ref


def test_rows_of_a_json_list_with_formats_alternatives_and_a_note(ref):
    spec = """bench.json#rows
    | index | queries/s | acc % | search | ms | {n:,} vectors |
    | `{name}` | {qps:,} | {acc!p:.2f} | nprobe={nprobe} ?? efSearch={ef_search} ?? exact | {cpu.ms!m:.1f} | x |
    Measured {date}, load {load.0:.1f} → {load.1:.1f}."""
    assert render(spec, ref, ref / "docs") == (
        "| index | queries/s | acc % | search | ms | 100,000 vectors |\n|---|---|---|---|---|---|\n"
        "| `Flat` | 13,050 | 91.23 | nprobe=8 | 12.3 | x |\n| `HNSW` | 900 | 50.00 | exact | 500.0 | x |\n\n"
        "Measured 2026-01-02, load 3.8 → 5.5. Source: [bench.json](../bench.json)"
    )


def test_csv_rows_filtered_and_renamed_and_a_dict_of_runs(ref):
    spec = 'study/a/summary.csv "where=method!~^kNN on raw"\n| method | shirt recall |\n| {method} | {recall 6:.2f} |'
    assert render(spec, ref, ref) == (
        "| method | shirt recall |\n|---|---|\n| ce | 0.75 |\n\nSource: [study/a/summary.csv](study/a/summary.csv)"
    )
    runs = render("bench.json#runs\n| run | acc |\n| {_key} | {acc!p:.1f} |", ref, ref)
    assert runs.startswith("| run | acc |\n|---|---|\n| ce | 90.0 |\n| triplet | 95.0 |\n\n")


def test_a_record_as_fixed_rows_a_dotted_key_a_markdown_include_and_source_override(ref):
    fixed = render("bench.json\n| item | value |\n| date | {date} |\n| n | {n:,} |", ref, ref)
    assert fixed.startswith("| item | value |\n|---|---|\n| date | 2026-01-02 |\n| n | 100,000 |\n\n")
    jsonl = render("log.jsonl where=epoch~.\n| epoch | EMA |\n| {epoch} | {ema0.99!p:.0f} |", ref, ref)
    assert jsonl.startswith("| epoch | EMA |\n|---|---|\n| 1 | 50 |\n\n")
    md = render("bench.md source=bench.md,bench.json", ref, ref)
    assert md == "| a |\n|---|\n| 1 |\n\nSource: [bench.md](bench.md), [bench.json](bench.json)"


def test_errors_name_what_is_wrong(ref):
    with pytest.raises(TableError, match="no file matches"):
        render("nope.json\n| a |\n| {a} |", ref, ref)
    with pytest.raises(TableError, match="unknown option 'sort'"):
        render("bench.json sort=a\n| a |\n| {a} |", ref, ref)
    with pytest.raises(TableError, match="number of cells"):
        render("bench.json#rows\n| a | b |\n| {name} |", ref, ref)
    with pytest.raises(TableError, match="no field 'nothing'"):
        render("bench.json#nothing\n| a |\n| {a} |", ref, ref)


def test_lists_joined(ref):
    (ref / "p.json").write_text(json.dumps({"methods": ["ce", "triplet"], "seeds": [0, 1]}))
    out = render("p.json\n| | x |\n| methods | {methods!c} |\n| seeds | {seeds!j} |", ref, ref)
    assert out.startswith("|  | x |\n|---|---|\n| methods | `ce`, `triplet` |\n| seeds | 0, 1 |\n\n")


def test_several_row_templates_apply_to_every_row_with_lengths_and_dir_suffixes(ref):
    for m, runs in (("ce", [1, 2, 3]), ("ce-balanced", [1, 2])):
        (ref / f"ensemble_{m}").mkdir()
        (ref / f"ensemble_{m}" / "e.json").write_text(json.dumps({"runs": runs, "a": 0.5, "b": None}))
    spec = "ensemble_*/e.json\n| ensemble | figure |\n| `{_dir!u}` × {runs!n} | a {a} |\n| `{_dir!u}` | {b} ?? – |"
    assert render(spec, ref, ref).startswith(  # path order: ensemble_ce/ before ensemble_ce-balanced/
        "| ensemble | figure |\n|---|---|\n| `ce` × 3 | a 0.5 |\n| `ce` | – |\n| `ce-balanced` × 2 | a 0.5 |\n"
        "| `ce-balanced` | – |\n\n"
    )


def test_a_flag_shown_as_text_where_it_is_set(ref):
    (ref / "t.csv").write_text("number,defaults,lr\n0,True,0.004\n1,False,0.00518123\n")
    out = render("t.csv\n| trial | lr |\n| {number}{defaults:? (defaults)} | {lr:.3g} |", ref, ref)
    assert out.startswith("| trial | lr |\n|---|---|\n| 0 (defaults) | 0.004 |\n| 1 | 0.00518 |\n\n")


def test_a_fragment_included_whole_with_its_links_rebased_to_the_doc(ref):
    (ref / "study" / "a" / "verdict.md").write_text(
        "| q | a |\n|---|---|\n| x | see [paired](paired.json) |\n\nSource: [s](../../bench.json), "
        "[doc](../../../docs/x.md#part), [web](https://x.org), [here](#top)\n"
    )
    out = render("study/a/verdict.md as=text", ref, ref.parent / "docs" / "results")
    assert out == (
        "| q | a |\n|---|---|\n| x | see [paired](../../ref/study/a/paired.json) |\n\n"
        "Source: [s](../../ref/bench.json), [doc](../x.md#part), [web](https://x.org), [here](#top)"
    )
    with pytest.raises(TableError, match="no template"):
        render("study/a/verdict.md as=text\n| a |\n| {a} |", ref, ref)


def test_rows_joined_by_key_or_position_and_links_named_by_file(ref):
    (ref / "sil.json").write_text(json.dumps({"s": {"triplet": 0.25}}))
    (ref / "b.json").write_text(json.dumps([{"x": 1}, {"x": 2}]))
    (ref / "c.json").write_text(json.dumps([{"x": 10}]))
    by_key = render(
        "bench.json#runs with=u=sil.json#s links=name\n| run | s |\n| {_key} | {u.value:.2f} ?? – |", ref, ref
    )
    assert by_key == (
        "| run | s |\n|---|---|\n| ce | – |\n| triplet | 0.25 |\n\n"
        "Source: [bench.json](bench.json), [sil.json](sil.json)"
    )
    by_position = render("b.json with=c=c.json\n| x | c |\n| {x} | {c.x} |", ref, ref)
    assert by_position.startswith("| x | c |\n|---|---|\n| 1 | 10 |\n| 2 | – |\n\n")


def test_a_row_template_shows_only_the_rows_that_have_its_fields(ref):
    (ref / "m.json").write_text(json.dumps({"machine": "m1", "dates": {"knn": "d1", "io": "d2"}}))
    out = render("m.json m.json#dates\n| item | value |\n| machine | {machine} |\n| `{_key}` | {value} |", ref, ref)
    assert (
        out
        == "| item | value |\n|---|---|\n| machine | m1 |\n| `knn` | d1 |\n| `io` | d2 |\n\nSource: [m.json](m.json)"
    )
