"""The field count reported for a malformed line: regexes Spark evaluates, checked against Python's csv module.

The same two steps as in ``explained_lines`` (remove well-formed quoted fields, split on the
delimiter keeping empty trailing fields) run here with ``re``; the patterns use only syntax
that Java and Python read alike.
"""

from __future__ import annotations

import csv
import re

import pytest

from backup.table_backup.columns import delimiter_regex, quoted_field_regex


def spark_like_count(line: str, delimiter: str, quote: str, escape: str) -> int:
    outside = re.sub(quoted_field_regex(quote, escape), "", line)
    return len(re.split(delimiter_regex(delimiter), outside))


@pytest.mark.parametrize("line", [
    "1;a;b",
    '1;"semi;colon";b',
    '1;"say ""hi"" ; twice";b;',
    '"";"";""',
    ";;;",
    '1;"a;b";"c;d";"e"";""f"',
    "only",
])
def test_counts_match_csv_module_rfc4180(line):
    expected = len(next(csv.reader([line], delimiter=";", quotechar='"', doublequote=True)))
    assert spark_like_count(line, ";", '"', '"') == expected


def test_an_empty_line_is_one_empty_field():
    """Python's csv yields no row for it; the split gives one field (data_lines skips such lines before any count)."""
    assert list(csv.reader([""], delimiter=";")) == [[]]
    assert spark_like_count("", ";", '"', '"') == 1


@pytest.mark.parametrize("line, expected", [
    ('1|"a|b"|c', 3),
    ('1|"a\\"|b"|c', 3),  # backslash-escaped quote inside a quoted field
    ("1|a|b|c|", 5),
])
def test_other_delimiter_and_backslash_escape(line, expected):
    assert spark_like_count(line, "|", '"', "\\") == expected


def test_regex_metacharacters_are_literal():
    assert spark_like_count("a.b.c", ".", "'", "'") == 3
    assert spark_like_count("a*'x*y'*c", "*", "'", "'") == 3
    assert spark_like_count("a$b", "$", '"', '"') == 2


def test_unclosed_quote_stays_visible():
    # explained_lines reports "unbalanced quote" when a quote survives the removal of quoted fields.
    outside = re.sub(quoted_field_regex('"', '"'), "", '1;"open;2;3')
    assert '"' in outside
