"""tasks/kit/markdown.py: values can never become markdown structure (or Slack formatting)."""

from __future__ import annotations

from markdown_it import MarkdownIt

from tasks.kit import markdown as md

HOSTILE = '<script>x</script> ``` \n# PASSED\n| a | b |\n[x](javascript:alert(1)) \x07 *b* _i_ ~s~ &amp;'
PARSER = MarkdownIt("commonmark").enable("table")


def kinds(text: str) -> set[str]:
    found = set()
    for token in PARSER.parse(text):
        found.add(token.type)
        found.update(child.type for child in token.children or [])
    return found


def test_text_is_one_line_of_plain_text() -> None:
    shown = md.text(HOSTILE)
    assert "\n" not in shown and "\x07" not in shown
    assert kinds(shown) <= {"paragraph_open", "paragraph_close", "inline", "text", "softbreak"}
    assert md.text("row_count") == "row_count" and md.text(md.Md("**kept**")) == "**kept**"


def test_code_and_code_blocks_have_longer_fences_than_the_value() -> None:
    span = md.code("a```b")
    assert span.startswith("````") and kinds(span) >= {"code_inline"}
    block = md.code_block(HOSTILE, "json`x")
    tokens = PARSER.parse(block)
    assert [t.type for t in tokens] == ["fence"] and tokens[0].info == "jsonx"
    assert "# PASSED" in tokens[0].content
    assert md.code("") == "–"


def test_links_only_for_http_urls_and_tables_keep_their_shape() -> None:
    assert md.link("t", "javascript:alert(1)") == "t"
    assert md.link("a](javascript:1)", "https://x/(y)") == "[a\\](javascript:1)](https://x/%28y%29)"
    table = md.table(["k", "v"], [[HOSTILE, md.code("a|b")], ["only one"]])
    rows = [t for t in PARSER.parse(table) if t.type == "tr_open"]
    cells = [t for t in PARSER.parse(table) if t.type in ("th_open", "td_open")]
    assert len(rows) == 3 and len(cells) == 6
    assert "html_inline" not in kinds(table) and "link_open" not in kinds(table)


def test_slack_mrkdwn_is_escaped() -> None:
    text = md.slack_text(HOSTILE)
    assert "<" not in text and ">" not in text and "&amp;amp;" in text
    assert "*b*" not in text and "_i_" not in text and "~s~" not in text
    assert md.slack_text("expect_objects") == "expect_objects"
    block = md.slack_code_block("a ``` b")
    assert block.startswith("```\n") and block.endswith("\n```") and block.count("```") == 2
    assert md.slack_link("go", "javascript:x") == "go" and md.slack_link("go", "https://x/a|b") == "<https://x/a%7Cb|go>"
