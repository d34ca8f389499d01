"""The digest's bar chart (notify.digest.bar_chart), drawn with matplotlib: pure, no services.

The bars are found in the picture itself: the lowest row that holds a bar colour is the base
of the bars, and just above it each bar is a run of its colour, left to right."""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator
from datetime import date
from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from notify import digest
from notify.digest import MET, NO_VERDICT, NOT_MET, bar_chart
from urbanpulse.db.scorecard import ScoreLine
from urbanpulse.rulefmt.kpis import Target

LEAKAGE = "供水管网漏损率（本月累计，修正后）"
PLACES = ["兴龙湖片区", "城南片区", "开发区片区"]
BELOW_10 = Target(better="lower", op="<", value=10)
DAY = date(2026, 11, 27)


def pixels(png: bytes) -> np.ndarray:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(png)) as img:
        assert img.format == "PNG"
        assert img.size == (800, 400)
        return np.asarray(img.convert("RGB"))


def bar_colours(png: bytes) -> list[str]:
    """The colours of the bars, left to right (bars of height 0 are not seen)."""
    img = pixels(png)[90:]  # below the heading (and its legend's swatches)
    rgb = {
        c: np.round(np.array(to_rgb(c)) * 255).astype(np.uint8) for c in (MET, NOT_MET, NO_VERDICT)
    }
    # a pixel of a bar: its colour, and the same for the 8 pixels on its right (not text)
    masks = {
        c: np.pad(
            sliding_window_view((img == v).all(axis=2), 9, axis=1).all(axis=2), ((0, 0), (0, 8))
        )
        for c, v in rgb.items()
    }
    rows = np.flatnonzero(np.logical_or.reduce(list(masks.values())).any(axis=1))
    if rows.size == 0:
        return []
    row = int(rows.max()) - 2  # just above the base of the bars
    found: list[tuple[int, str]] = []  # (first column, colour) of each run
    for colour, mask in masks.items():
        xs = np.flatnonzero(mask[row])
        found += [(int(x), colour) for i, x in enumerate(xs) if i == 0 or x != xs[i - 1] + 1]
    return [colour for _, colour in sorted(found)]


@pytest.fixture
def fresh_font_choice() -> Iterator[None]:
    digest._cjk_family.cache_clear()
    yield
    digest._cjk_family.cache_clear()


def test_the_chart_is_an_800_by_400_png_and_the_same_for_the_same_data() -> None:
    png = bar_chart(LEAKAGE, "%", PLACES, [30.5, 8.1, 17.4], BELOW_10, day=DAY)
    pixels(png)
    assert png == bar_chart(LEAKAGE, "%", PLACES, [30.5, 8.1, 17.4], BELOW_10, day=DAY)
    assert len(png) < 100_000
    assert b"Matplotlib" not in png  # no software version in the metadata


def test_bars_above_a_lower_is_better_target_are_red_and_those_meeting_it_green() -> None:
    png = bar_chart(LEAKAGE, "%", PLACES, [30.5, 8.1, 10.0], BELOW_10, day=DAY)
    assert bar_colours(png) == [NOT_MET, MET, NOT_MET]  # 10 is not < 10


def test_a_higher_is_better_target_flips_the_colours() -> None:
    at_least_10 = Target(better="higher", op=">=", value=10)
    png = bar_chart("空气质量优良天数比例", "%", PLACES, [30.5, 8.1, 10.0], at_least_10)
    assert bar_colours(png) == [MET, NOT_MET, MET]


def test_a_target_with_a_direction_only_gives_grey_bars() -> None:
    lower = Target(better="lower")
    png = bar_chart("本月停车场占用率超过85%的小时数", "hours", PLACES[:2], [40.0, 300.0], lower)
    assert bar_colours(png) == [NO_VERDICT, NO_VERDICT]


def test_no_places_or_no_values_still_give_a_chart() -> None:
    assert bar_colours(bar_chart(LEAKAGE, "%", [], [], BELOW_10, day=DAY)) == []
    assert bar_colours(bar_chart(LEAKAGE, "", PLACES[:2], [None, None], BELOW_10)) == []
    png = bar_chart(LEAKAGE, "%", PLACES, [None, 0.0, 12.0], BELOW_10, day=DAY)
    assert bar_colours(png) == [NOT_MET]  # no value and 0 have no height
    with pytest.raises(ValueError, match="2 labels for 1 values"):
        bar_chart(LEAKAGE, "%", PLACES[:2], [1.0], BELOW_10)


def test_many_long_place_names_slant_and_stay_inside_the_picture() -> None:
    names = [f"{n}停车场" for n in ("万达广场地下", "兴龙湖公园", "区人民医院", "高铁站P1")] * 4
    png = bar_chart("停车场占用率", "%", names, [float(i) for i in range(16)], BELOW_10)
    assert len(bar_colours(png)) == 15  # the first is 0 high
    img = pixels(png)
    assert (img[:, :3] == 255).all()  # nothing cut at the left edge


def test_chinese_text_renders_with_a_cjk_font(caplog: pytest.LogCaptureFixture) -> None:
    if digest._cjk_family() is None:
        pytest.skip("no CJK font installed (apt-get install -y fonts-wqy-microhei)")
    with warnings.catch_warnings(record=True) as said, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        bar_chart(LEAKAGE, "%", [*PLACES, "全区"], [30.5, 8.1, 17.4, 12.0], BELOW_10, day=DAY)
    assert not [w for w in said if "missing from font" in str(w.message)]
    assert not caplog.records  # e.g. matplotlib's findfont: Font family ... not found


def test_without_a_cjk_font_the_chart_is_drawn_after_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fresh_font_choice: None
) -> None:
    monkeypatch.setattr(digest, "CJK_FAMILIES", ("No Such CJK Font",))
    with warnings.catch_warnings(record=True) as said, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        for _ in range(2):
            png = bar_chart(LEAKAGE, "%", PLACES, [30.5, 8.1, 17.4], BELOW_10, day=DAY)
            assert bar_colours(png) == [NOT_MET, MET, NOT_MET]
    [record] = [r for r in caplog.records if r.name == "notify.digest"]
    assert "fonts-wqy-microhei" in record.getMessage()
    assert not [w for w in said if "missing from font" in str(w.message)]


def test_values_that_are_not_numbers_are_drawn_as_no_data() -> None:
    png = bar_chart(LEAKAGE, "%", PLACES, [float("-inf"), float("nan"), 12.0], BELOW_10, day=DAY)
    assert bar_colours(png) == [NOT_MET]
    png = bar_chart(LEAKAGE, "%", PLACES[:2], [float("inf"), 3.0], BELOW_10, day=DAY)
    assert bar_colours(png) == [MET]


def test_a_thousand_places_chart_the_farthest_from_their_target() -> None:
    kpi = SimpleNamespace(id="k")
    lines = [
        ScoreLine(kpi, f"p{i}", DAY, float(i % 97), None, None, "new", [], {})  # type: ignore[arg-type]
        for i in range(1000)
    ]
    lines[5] = ScoreLine(kpi, "broken", DAY, float("nan"), None, None, "new", [], {})  # type: ignore[arg-type]
    worst = digest.worst_first(lines, BELOW_10)
    assert len(worst) == digest.MAX_BARS
    assert [s.value for s in worst[:11]] == [96.0] * 10 + [95.0]
    higher = digest.worst_first(lines, Target(better="higher", op=">=", value=50))
    assert {s.value for s in higher[:10]} == {0.0}
    assert all(s.entity != "broken" for s in worst + higher)
