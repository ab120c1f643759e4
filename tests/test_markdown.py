"""embedfm.markdown: the one table helper of every report and generated doc."""

from embedfm.markdown import md_table


def test_md_table_by_hand_escapes_a_bar_inside_a_cell():
    table = md_table(["run", "acc"], [["a|b", 0.5], ["c", 1]])
    assert table == "| run | acc |\n|---|---|\n| a\\|b | 0.5 |\n| c | 1 |"
    assert md_table(["x"], []) == "| x |\n|---|"  # a header alone: no trailing newline
