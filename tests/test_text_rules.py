"""The edge's text rule (producers/text_rules.py): ordinary text passes, a forbidden character is
refused with the field's path, and no reason ever repeats the value. No broker, no database."""
from __future__ import annotations

import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

from producers import text_rules
from producers.text_rules import MULTILINE_FIELDS, text_errors, text_problems

C0 = [chr(c) for c in range(0x20)]
FORBIDDEN_EVERYWHERE = ([c for c in C0 if c not in "\t\n\r"] + ["\x7f"] + [chr(c) for c in range(0x80, 0xA0)]
                        + ["\ud800", "\udbff", "\udc00", "\udfff", "\ufdd0", "\ufdef", "\ufffe", "\uffff",
                           "\U0001fffe", "\U0010ffff", "\u202a", "\u202e", "\u2066", "\u2069",
                           "\u2028", "\u2029"])
CODES = set(text_rules.CODES)


def _allowed(ch: str) -> bool:
    o = ord(ch)
    return not (unicodedata.category(ch) in ("Cc", "Cs") or 0xFDD0 <= o <= 0xFDEF or (o & 0xFFFE) == 0xFFFE
                or 0x202A <= o <= 0x202E or 0x2066 <= o <= 0x2069 or o in (0x2028, 0x2029))


# any code point except the forbidden ones: Chinese, emoji, combining marks, ZWJ, private use, unassigned
allowed_text = st.text(st.characters(blacklist_categories=("Cc", "Cs")).filter(_allowed), max_size=40)
chinese = st.text(st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF), min_size=1, max_size=12)
emoji = st.sampled_from(["😀", "👨‍👩‍👧", "🇨🇳", "❤️", "👍🏽", "\u200d", "\ufe0f", "\u200b"])
prose = st.lists(st.one_of(allowed_text, chinese, emoji, st.sampled_from(["\t", "\n", "\r\n"])),
                 max_size=12).map("".join)
single = st.lists(st.one_of(allowed_text, chinese, emoji), max_size=8).map("".join)
forbidden = st.sampled_from(FORBIDDEN_EVERYWHERE)
field_ids = st.from_regex(r"[a-z][a-z_]{0,20}", fullmatch=True).filter(lambda k: k not in MULTILINE_FIELDS)


def body(form_values, comment, services_comment):
    return {"bundle_code": "newborn", "form": form_values, "comment": comment,
            "services": [{"service_id": "health.birth_certificate", "comment": services_comment}],
            "materials": {"birth_certificate": {"source": "uploaded", "ref": "doc-1"}}}


@settings(max_examples=150, deadline=None)
@given(form=st.dictionaries(field_ids, single, max_size=6), comment=prose, sc=prose)
def test_any_allowed_text_passes(form, comment, sc):
    assert text_problems(body(form, comment, sc)) == []


@settings(max_examples=150, deadline=None)
@given(form=st.dictionaries(field_ids, single, min_size=1, max_size=6), data=st.data(),
       pre=single, post=single, bad=forbidden)
def test_a_forbidden_character_in_a_form_field_is_refused_with_its_path(form, data, pre, post, bad):
    target = data.draw(st.sampled_from(sorted(form)))
    value = pre + bad + post
    form[target] = value
    problems = text_problems(body(form, "", ""))
    assert [p for p, _ in problems] == [f"form.{target}"]
    reason = problems[0][1]
    assert value not in reason and reason.isascii() and reason.isprintable()
    assert f"U+{ord(bad):04X}" in reason and f"character {len(pre) + 1}" in reason
    assert problems[0].code in CODES


@settings(max_examples=100, deadline=None)
@given(pre=prose, post=prose, bad=forbidden, where=st.sampled_from(["comment", "services"]))
def test_a_multi_line_field_still_refuses_everything_but_tab_lf_and_crlf(pre, post, bad, where):
    value = pre + bad + post
    b = body({}, value, "") if where == "comment" else body({}, "", value)
    problems = text_problems(b)
    assert [p for p, _ in problems] == ["comment" if where == "comment" else "services[0].comment"]
    assert value not in problems[0][1]


@given(pre=single, post=single, ch=st.sampled_from(["\t", "\n", "\r\n"]))
def test_tab_and_newlines_are_refused_in_single_line_fields(pre, post, ch):
    problems = text_problems({"form": {"child_name": pre + ch + post}})
    assert [p for p, _ in problems] == ["form.child_name"] and problems[0].code == "text.control_character"


def test_a_lone_cr_is_refused_even_in_a_comment():
    assert [p for p, _ in text_problems({"comment": "第一行\r第二行"})] == ["comment"]
    assert [p for p, _ in text_problems({"comment": "第一行\r"})] == ["comment"]
    assert text_problems({"comment": "第一行\r\n第二行\n\t第三行"}) == []


@settings(max_examples=100, deadline=None)
@given(a=single, b=single, bad=forbidden)
def test_the_reason_depends_on_the_character_and_its_position_only(a, b, bad):
    """Never on the value: two values that differ everywhere except at the bad character get one reason."""
    filler = "x" * len(a)
    assert text_problems([a + bad]) == text_problems([filler + bad])


def test_paths_for_lists_nested_dicts_and_keys():
    value = {"materials": [{"ref": "ok"}, {"ref": "ok"}, {"ref": "doc\x00"}],
             "form": {"child\x1bname": "李小满", "deep": [[{"x": ["\x7f"]}]]}}
    problems = text_problems(value)
    assert [p for p, _ in problems] == ["materials[2].ref", "form", "form.deep[0][0].x[0]"]
    assert problems[1][1].startswith("key no. 1 ")  # the key is not quoted in the path either
    assert "child" not in problems[1][1]


def test_a_predicate_or_an_empty_set_decides_what_is_multi_line():
    assert text_problems({"note": "a\nb"}, multiline=lambda path: path[-1] == "note") == []
    assert text_problems({"comment": "a\nb"}, multiline=frozenset()) != []
    assert text_problems("a\nb", ("withdraw", "reason"), multiline=frozenset({"withdraw.reason"})) == []


def test_other_values_and_deep_nesting_do_not_raise():
    deep: object = "\x00"
    for _ in range(5000):
        deep = [deep]
    assert len(text_problems({"n": 1, "f": 1.5, "b": True, "z": None, "deep": deep})) == 1
    assert len(text_problems(["\x00"] * 500)) == 50  # bounded


def test_error_entries_have_the_api_shape():
    errors = text_errors(text_problems({"form": {"mother_name": "王\x00芳"}, "\x01": 1}))
    assert errors == [  # a mapping's keys are checked before its values
        {"path": "body", "code": "text.control_character",
         "message_zh": "第2个键名第1个字符是不可见的控制字符（U+0001 SOH）",
         "message_en": "key no. 2 contains an invisible control character (U+0001 SOH) at character 1"},
        {"path": "form.mother_name", "code": "text.control_character",
         "message_zh": "内容第2个字符是不可见的控制字符（U+0000 NUL）",
         "message_en": "the text contains an invisible control character (U+0000 NUL) at character 2"},
    ]
    plain = text_errors([("form.x", "some reason")])  # a bare pair gets the default code
    assert plain == [{"path": "form.x", "code": "text.control_character",
                      "message_zh": "some reason", "message_en": "some reason"}]


def test_the_register_uses_the_same_rule():
    from datetime import date

    from catalog.subscriptions import load_subscriptions
    from producers.register_values import check_value

    subs = load_subscriptions()
    text_field = next(f for reg in subs.registers.values() for f in reg.fields.values() if f.type == "text")
    today = date(2026, 12, 1)
    assert check_value(text_field, "广东省韶关市", today) == ("广东省韶关市", None)
    for bad in ("a\x1bb", "a\u202eb", "a\x85b", "a\ud800b", "a\nb"):
        assert check_value(text_field, bad, today) == (None, "text.control")
