"""embedfm.errors: a library's exception as one short line inside an embedfm message."""

from embedfm.errors import one_line


def test_one_line_joins_lines_and_cuts_a_long_message():
    assert one_line(ValueError("bad\n  header\tfield ")) == "bad header field"
    assert one_line(KeyError()) == "KeyError"  # no text: its type
    long = one_line(RuntimeError("x" * 500))
    assert len(long) == 200 and long.endswith("...") and long.startswith("x" * 197)
