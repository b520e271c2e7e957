"""The Dockerfile parser and word expansion (hpcrun/build/parser.py): pure, no namespaces."""
from __future__ import annotations

import pytest

from hpcrun.build import parser as P
from hpcrun.build.parser import BuildError


def cmds(text):
    return [(i.cmd, i.args, i.line) for i in P.parse(text).instructions]


def look(env):
    return env.get


def test_instructions_are_case_insensitive_and_keep_their_line():
    assert cmds("from busybox\n\nrun echo hi\n") == [("FROM", "busybox", 1),
                                                    ("RUN", "echo hi", 3)]


def test_comment_only_at_line_start_and_hash_in_arguments():
    got = cmds("FROM a\n# a comment\n  # indented comment\nCMD echo ### hi ###\n")
    assert got == [("FROM", "a", 1), ("CMD", "echo ### hi ###", 4)]


def test_continuation_lines_join_and_skip_comments_inside():
    got = cmds("FROM a\nRUN echo one \\\n# dropped\n    two \\\n\n  three\nUSER x\n")
    assert got[1] == ("RUN", "echo one     two   three", 2)
    assert got[2] == ("USER", "x", 7)


def test_escape_directive_changes_the_continuation_character():
    df = P.parse("# escape=`\nFROM a\nRUN dir c:\\ `\n  /w\n")
    assert df.escape == "`"
    assert df.instructions[1].args == "dir c:\\   /w"


def test_syntax_directive_is_noted_and_ignored():
    df = P.parse("# syntax=docker/dockerfile:1\nFROM a\n")
    assert df.directives == {"syntax": "docker/dockerfile:1"}
    assert "ignored" in df.notes[0]


def test_directive_after_an_instruction_is_a_comment():
    df = P.parse("FROM a\n# escape=`\nRUN x \\\n y\n")
    assert df.escape == "\\"
    assert df.instructions[1].args == "x  y"


def test_unknown_instruction_names_file_and_line():
    with pytest.raises(BuildError) as e:
        P.parse("FROM a\nRUNN echo\n", "ctx/Dockerfile")
    assert e.value.what.startswith("ctx/Dockerfile:2: unknown instruction RUNN")


def test_unknown_flag_names_the_instruction():
    with pytest.raises(BuildError) as e:
        P.parse("FROM a\nCOPY --bogus=1 a b\n")
    assert "Dockerfile:2: COPY: unknown flag --bogus" in e.value.what


@pytest.mark.parametrize("text,msg", [
    ("FROM a b c d\n", "expected FROM IMAGE [AS NAME]"),
    ("FROM a\nCOPY onlyone\n", "needs a source and a destination"),
    ("FROM a\nSHELL /bin/bash -c\n", "takes a JSON array"),
    ("FROM a\nONBUILD FROM b\n", "FROM is not allowed as an ONBUILD trigger"),
    ("FROM a\nHEALTHCHECK NONE extra\n", "HEALTHCHECK NONE takes no other arguments"),
    ("FROM a\nHEALTHCHECK echo\n", "expected HEALTHCHECK NONE or"),
    ("FROM a\nRUN\n", "needs a command"),
    ("# escape=x\nFROM a\n", "invalid escape character"),
])
def test_syntax_errors(text, msg):
    with pytest.raises(BuildError) as e:
        P.parse(text)
    assert msg in e.value.what and "Dockerfile:" in e.value.what


def test_json_exec_form_and_invalid_json_falls_back_to_shell_form():
    ins = P.parse('FROM a\nCMD ["echo", "hi there"]\nRUN [not json\n').instructions
    assert ins[1].json == ["echo", "hi there"]
    assert ins[2].json is None and ins[2].args == "[not json"


def test_flags_are_parsed():
    ins = P.parse("FROM --platform=linux/amd64 a AS b\nCOPY --from=b --chown=1:2 x y\n").instructions
    assert ins[0].flags == {"platform": "linux/amd64"} and ins[0].args == "a AS b"
    assert ins[1].flags == {"from": "b", "chown": "1:2"} and ins[1].args == "x y"


# ------------------------------------------------------------------ expansion


@pytest.mark.parametrize("word,want", [
    ("$A", "a"), ("${A}", "a"), ("x${A}y", "xay"), ("$UNSET", ""),
    ("${UNSET:-dflt}", "dflt"), ("${A:-dflt}", "a"), ("${EMPTY:-dflt}", "dflt"),
    ("${A:+alt}", "alt"), ("${UNSET:+alt}", ""), ("${EMPTY:+alt}", ""),
    ("${UNSET:-$A}", "a"), ("${UNSET:-${A}b}", "ab"),
    ("\\$A", "$A"), ("'$A'", "$A"), ('"$A b"', "a b"), ("$", "$"), ("a\\ b", "a b"),
])
def test_expand(word, want):
    assert P.expand(word, look({"A": "a", "EMPTY": ""})) == want


def test_expand_words_splits_outside_quotes():
    assert P.expand_words('a "b c" $X \'d e\'', look({"X": "x y"})) == ["a", "b c", "x", "y",
                                                                        "d e"]


def test_unsupported_substitution_is_an_error():
    with pytest.raises(ValueError, match="supports"):
        P.expand("${A%%x}", look({"A": "1"}))


def test_key_values_both_forms():
    lk = look({"V": "1"})
    assert P.key_values('A=$V B="x y" C=', lk, "\\", True) == [("A", "1"), ("B", "x y"),
                                                               ("C", "")]
    assert P.key_values("KEY some value $V", lk, "\\", True) == [("KEY", "some value 1")]


def test_escape_char_backtick_in_expansion():
    assert P.expand("`$A", look({"A": "a"}), "`") == "$A"


# ------------------------------------------------------------------ .dockerignore


def test_dockerignore_patterns_and_exceptions():
    pats = P.dockerignore("# comment\n*.log\n!keep.log\nbuild/\n**/tmp\n/abs/x\n")
    assert pats == [("*.log", False), ("keep.log", True), ("build", False),
                    ("**/tmp", False), ("abs/x", False)]
    ig = P.Ignore(pats)
    assert ig.excluded("a.log") and not ig.excluded("keep.log")
    assert ig.excluded("build") and ig.excluded("build/x/y")
    assert ig.excluded("tmp") and ig.excluded("a/b/tmp") and ig.excluded("a/tmp/f")
    assert ig.excluded("abs/x") and not ig.excluded("abs/y")
    assert not ig.excluded("sub/a.log")      # * does not cross /
    assert not ig.excluded("src/main.c")


def test_dockerignore_last_match_wins():
    ig = P.Ignore(P.dockerignore("data\n!data/keep\ndata/keep/secret\n"))
    assert ig.excluded("data/x")
    assert not ig.excluded("data/keep/a")
    assert ig.excluded("data/keep/secret")
    assert ig.may_contain_included("data")
