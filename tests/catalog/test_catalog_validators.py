"""Resident ID, USCC, mobile: published examples pass, every single-character typo is caught,
and no error message ever repeats the value."""
from __future__ import annotations

import string
from datetime import date, timedelta

from hypothesis import given, settings, strategies as st

from catalog.validators import (PROVINCE_CODES, USCC_ALPHABET, check_mobile, check_region_code,
                                check_resident_id, check_uscc, mask_mobile, mask_resident_id, message,
                                resident_id_check_char, uscc_check_char)

RESIDENT_ID = "11010519491231002X"   # the worked example of GB 11643-1999
USCC = "91350100M000100Y43"          # a published example (check character verified below)
# every character someone could type in place of another: ASCII, lower case, full-width and Arabic-Indic digits
TYPOS = string.ascii_letters + string.digits + " -_.*/" + "０１２３４５６７８９" + "٠١٢٣" + "Ｘ"


def test_published_examples_are_valid():
    assert resident_id_check_char(RESIDENT_ID[:17]) == "X"   # the standard's own example, computed
    assert uscc_check_char(USCC[:17]) == "3"
    assert check_resident_id(RESIDENT_ID) is None
    assert check_uscc(USCC) is None
    assert check_mobile("13812345678") is None
    assert check_region_code("110105") is None


def _single_changes(value: str):
    for i, original in enumerate(value):
        for c in TYPOS:
            if c != original:
                yield value[:i] + c + value[i + 1:]


def test_every_single_character_change_of_the_resident_id_is_rejected():
    changed = list(_single_changes(RESIDENT_ID))
    assert len(changed) > 18 * 60
    accepted = [v for v in changed if check_resident_id(v) is None]
    assert accepted == []


def test_every_single_character_change_of_the_uscc_is_rejected():
    accepted = [v for v in _single_changes(USCC) if check_uscc(v) is None]
    assert accepted == []


def test_lost_or_extra_characters_are_rejected():
    for value in (RESIDENT_ID[:-1], RESIDENT_ID + "1", USCC[1:], USCC + "0", ""):
        assert check_resident_id(value) is not None and check_uscc(value) is not None


@st.composite
def resident_ids(draw):
    province = draw(st.sampled_from(sorted(PROVINCE_CODES)))
    rest = draw(st.text("0123456789", min_size=4, max_size=4))
    born = draw(st.dates(date(1900, 1, 1), date(2024, 12, 31)))
    seq = draw(st.text("0123456789", min_size=3, max_size=3))
    first17 = province + rest + born.strftime("%Y%m%d") + seq
    return first17 + resident_id_check_char(first17)


@settings(max_examples=150, deadline=None)
@given(resident_ids(), st.integers(0, 17), st.sampled_from(list("0123456789X")))
def test_generated_resident_ids_pass_and_any_substitution_fails(rid, position, replacement):
    assert check_resident_id(rid) is None
    if rid[position] != replacement:
        assert check_resident_id(rid[:position] + replacement + rid[position + 1:]) is not None


@settings(max_examples=150, deadline=None)
@given(st.text(USCC_ALPHABET, min_size=2, max_size=2), st.text("0123456789", min_size=6, max_size=6),
       st.text(USCC_ALPHABET, min_size=9, max_size=9), st.integers(0, 17), st.sampled_from(USCC_ALPHABET))
def test_generated_usccs_pass_and_any_substitution_fails(head, region, org, position, replacement):
    first17 = head + region + org
    code = first17 + uscc_check_char(first17)
    assert check_uscc(code) is None
    if code[position] != replacement:
        assert check_uscc(code[:position] + replacement + code[position + 1:]) is not None


def test_resident_id_reasons_are_specific():
    assert check_resident_id(RESIDENT_ID.lower()) == "resident_id.lowercase_x"
    assert check_resident_id("99" + RESIDENT_ID[2:]) == "resident_id.province"
    bad_date = "110105" + "19490231" + "002"
    assert check_resident_id(bad_date + resident_id_check_char(bad_date)) == "resident_id.birth_date"
    early = "110105" + "18991231" + "002"
    assert check_resident_id(early + resident_id_check_char(early)) == "resident_id.birth_date_too_early"
    tomorrow = date.today() + timedelta(days=1)
    future = "110105" + tomorrow.strftime("%Y%m%d") + "002"
    assert check_resident_id(future + resident_id_check_char(future)) == "resident_id.birth_date_future"
    born_2024 = "110105" + "20240301" + "002"
    rid = born_2024 + resident_id_check_char(born_2024)
    assert check_resident_id(rid, today=date(2024, 2, 1)) == "resident_id.birth_date_future"
    assert check_resident_id(rid, today=date(2024, 3, 1)) is None
    assert check_resident_id(RESIDENT_ID[:17] + "1") == "resident_id.checksum"
    assert check_resident_id(11010519491231002) == "not_text"


def test_uscc_and_mobile_reasons_are_specific():
    assert check_uscc("91350100M000100Y4") == "uscc.length"
    assert check_uscc("91350100M000100I43") == "uscc.alphabet"   # I is never used
    assert check_uscc("91350100m000100Y43") == "uscc.alphabet"
    assert check_uscc("9135A100M000100Y43") == "uscc.region"
    assert check_uscc("91350100M000100Y44") == "uscc.checksum"
    for bad in ("12812345678", "1381234567", "+8613812345678", "138 1234 5678", "１３８１２３４５６７８"):
        assert check_mobile(bad) == "mobile.format", bad
    assert check_region_code("990000") == "region_code.province"
    assert check_region_code("11010") == "region_code.format"


def test_messages_are_bilingual_and_never_contain_the_value():
    values = [RESIDENT_ID[:17] + "1", "99" + RESIDENT_ID[2:], USCC[:-1] + "4", "12812345678"]
    for value in values:
        code = check_resident_id(value) or check_uscc(value) or check_mobile(value)
        zh, en = message(code)
        assert zh and en and zh != en
        for text in (zh, en, code):
            assert value not in text
            assert not any(value[i:i + 6] in text for i in range(len(value) - 5))


def test_masks_hide_the_identifying_part():
    masked = mask_resident_id(RESIDENT_ID)
    assert masked == "110**************X" and len(masked) == 18
    assert "19491231" not in masked
    assert mask_mobile("13812345678") == "138****5678"
    assert mask_resident_id("123") == "***"
