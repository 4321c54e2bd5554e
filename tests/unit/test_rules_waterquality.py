"""GB 3838-2002 classes from the standard's Table 1: limits land in the better class."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rules.waterquality import TABLE, Bound, WaterClass, classify

CLASSES = [WaterClass.I, WaterClass.II, WaterClass.III, WaterClass.IV, WaterClass.V]

# The standard's numbers, written out again here so a typo in the table is caught.
AT_MOST = {
    "codmn_mgl": (2, 4, 6, 10, 15),
    "nh3n_mgl": (0.15, 0.5, 1.0, 1.5, 2.0),
    "tp_mgl": (0.02, 0.1, 0.2, 0.3, 0.4),
}
DO_AT_LEAST = (7.5, 6, 5, 3, 2)


@pytest.mark.parametrize("field", sorted(AT_MOST))
def test_pollutant_limits_land_in_the_better_class(field: str) -> None:
    for cls, limit in zip(CLASSES, AT_MOST[field], strict=True):
        assert classify({field: limit}).water_class is cls
        just_over = classify({field: limit * 1.0001}).water_class
        assert just_over is WaterClass(cls + 1)  # the next class, or 劣Ⅴ after V
    assert classify({field: 0.0}).water_class is WaterClass.I


def test_dissolved_oxygen_limits_land_in_the_better_class() -> None:
    for cls, limit in zip(CLASSES, DO_AT_LEAST, strict=True):
        assert classify({"do_mgl": limit}).water_class is cls
        assert classify({"do_mgl": limit - 0.001}).water_class is WaterClass(cls + 1)
    assert classify({"do_mgl": 1.99}).water_class is WaterClass.WORSE_THAN_V
    assert classify({"do_mgl": 12.0}).water_class is WaterClass.I


def test_ph_is_6_to_9_for_every_class_and_worse_than_v_outside() -> None:
    for ph in (6.0, 7.0, 9.0):
        assert classify({"ph": ph}).water_class is WaterClass.I
    for ph in (5.99, 9.01, 0.0, 14.0):
        assert classify({"ph": ph}).water_class is WaterClass.WORSE_THAN_V


def test_class_is_the_worst_parameter_and_says_which() -> None:
    sample = {"ph": 7.5, "do_mgl": 6.5, "codmn_mgl": 3.0, "nh3n_mgl": 1.2, "tp_mgl": 0.15}
    result = classify(sample)
    assert result.water_class is WaterClass.IV
    assert result.decided_by == ("nh3n_mgl",)
    assert result.classes["do_mgl"] is WaterClass.II
    assert result.describe(sample) == "class IV: NH3-N 1.2 mg/L"
    tie = classify({"codmn_mgl": 20.0, "tp_mgl": 0.9, "ph": 7.0})
    assert tie.water_class is WaterClass.WORSE_THAN_V
    assert tie.decided_by == ("codmn_mgl", "tp_mgl")
    assert tie.water_class.label == "劣Ⅴ"


def test_absent_parameters_and_other_fields_are_ignored() -> None:
    result = classify({"ph": 7.0, "do_mgl": None, "water_level_m": 300.0})
    assert result.water_class is WaterClass.I and set(result.classes) == {"ph"}
    with pytest.raises(ValueError, match="no parameter"):
        classify({"water_level_m": 1.0})


def test_class_names_parse() -> None:
    assert WaterClass.parse("III") is WaterClass.III
    assert WaterClass.parse("Ⅲ") is WaterClass.III
    assert WaterClass.parse("iv类") is WaterClass.IV
    assert WaterClass.parse("劣Ⅴ") is WaterClass.WORSE_THAN_V
    with pytest.raises(ValueError):
        WaterClass.parse("VI")


def test_table_rows_are_monotonic() -> None:
    for row in TABLE:
        if row.bound is Bound.AT_MOST:
            assert list(row.limits) == sorted(row.limits)
        elif row.bound is Bound.AT_LEAST:
            assert list(row.limits) == sorted(row.limits, reverse=True)


@given(
    st.dictionaries(
        st.sampled_from(["ph", "do_mgl", "codmn_mgl", "nh3n_mgl", "tp_mgl"]),
        st.floats(0, 50, allow_nan=False),
        min_size=1,
    )
)
def test_worsening_one_parameter_never_improves_the_class(values: dict[str, float]) -> None:
    before = classify(values).water_class
    for field in values:
        worse = dict(values)
        worse[field] = values[field] - 1 if field == "do_mgl" else values[field] + 1
        if field == "ph":
            continue  # pH is a band: moving it can go either way
        assert classify(worse).water_class >= before
