"""Terminal tables (trainctl.table): columns line up in drawn cells whatever the characters."""

from __future__ import annotations

from trainctl.table import cell_width, fit, short_names, table


def test_columns_line_up_with_wide_and_combining_characters() -> None:
    rows = [["größe", "1"], ["日本語", "22"], ["🚀 go", "333"], ["e\u0301te\u0301", "4"]]  # é as e + accent
    lines = table(["NOTE", "N"], rows, right={1})
    assert [cell_width(line) for line in lines] == [cell_width(lines[0])] * 5, lines
    assert lines[0] == "  NOTE      N" and lines[2] == "  日本語   22" and lines[4] == "  e\u0301te\u0301       4"


def test_fit_cuts_at_a_cell_count_with_an_ellipsis() -> None:
    assert fit("short", 10) == "short"
    assert fit("日本語のテキスト", 7) == "日本語…" and cell_width(fit("日本語のテキスト", 7)) == 7
    assert fit("a" * 50, 40) == "a" * 39 + "…"


def test_short_names_are_the_shortest_distinct_tails() -> None:
    assert short_names(["model.init_args.lr", "model.init_args.hidden"]) == {
        "model.init_args.lr": "lr", "model.init_args.hidden": "hidden"}
    assert short_names(["model.init_args.lr", "data.init_args.lr", "trainer.max_epochs"]) == {
        "model.init_args.lr": "model.init_args.lr", "data.init_args.lr": "data.init_args.lr",
        "trainer.max_epochs": "max_epochs"}
    assert short_names(["lr", "opt.lr"]) == {"lr": "lr", "opt.lr": "opt.lr"}
