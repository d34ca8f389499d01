"""The alert console in a real browser: headless Chromium (Debian's) driven by Playwright,
against a real `urbanpulse api` process and a database holding the demo scenario with the alerts
the rule engine raised. Screenshots at phone and desktop sizes are written to
$URBANPULSE_SCREENSHOTS (default build/screenshots; `make screenshots` refreshes docs/console)."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

from tests.apiserver import PONDING_POINT, ApiServer, api_server, notification_link, raise_ponding
from urbanpulse import serve
from urbanpulse.db.tokens import Role, create_token
from urbanpulse.rulefmt.aqi import iaqi, load_standard
from urbanpulse.serve import free_port

AIR = "区生态环境局"
WATER = "区住房城乡建委"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
SHOTS = Path(os.environ.get("URBANPULSE_SCREENSHOTS", "build/screenshots"))
# as the machine's closed network wants it: no background connections, no sandbox as root
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    return os.environ.get("URBANPULSE_CHROMIUM") or shutil.which("chromium")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    path = chromium_path()
    if path is None:
        if os.environ.get("URBANPULSE_REQUIRE_BROWSER"):
            pytest.fail("Chromium is needed: apt-get install chromium fonts-wqy-microhei")
        pytest.skip("no Chromium here (apt-get install chromium fonts-wqy-microhei)")
    with sync_playwright() as p:
        yield _launch(p, path)


def _launch(p: Playwright, path: str) -> Browser:
    return p.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)


@pytest.fixture(scope="module")
def server() -> Iterator[ApiServer]:
    with api_server() as s:
        with psycopg.connect(s.db_url) as conn:
            s.tokens["air_operator"], _ = create_token(
                conn, "air-operator", Role.OPERATOR, department=AIR
            )
            s.tokens["air_viewer"], _ = create_token(
                conn, "air-viewer", Role.VIEWER, department=AIR
            )
        yield s


def open_page(browser: Browser, size: dict[str, int] | None = None, **extra: Any) -> Page:
    context = browser.new_context(
        viewport=size or DESKTOP,  # type: ignore[arg-type]
        locale="zh-CN",
        timezone_id="UTC",  # the page shows the city's times whatever the phone's zone
        **extra,
    )
    if os.environ.get("URBANPULSE_TEST_CLOCK_SHIFT_S"):
        # under tests/clockshift.py the page keeps the servers' moved clock, as a phone's
        # agrees with the servers' (time still runs; only the date moves)
        context.clock.install(time=time.time())
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.errors = errors  # type: ignore[attr-defined]
    return page


def sign_in(page: Page, server: ApiServer, who: str, url: str | None = None) -> None:
    page.goto((url or server.url) + "/console")
    page.get_by_label("访问令牌").fill(server.tokens[who])
    page.get_by_role("button", name="登录").click()
    expect(page.locator("#live")).to_have_attribute("data-state", "on")
    expect(page.locator("main")).to_have_attribute("data-loaded", "true")


def alerts_of(server: ApiServer, owner: str, rule_id: str | None = None) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"owner": owner, "status": ["firing", "pending"], "limit": 100}
    if rule_id:
        params["rule_id"] = rule_id
    with server.client("admin") as c:
        items: list[dict[str, Any]] = c.get("/api/v1/alerts", params=params).json()["items"]
    return sorted(items, key=lambda a: a["id"])


def card(page: Page, alert_id: int) -> Any:
    return page.locator(f"#alert-{alert_id}")


def shot(page: Page, name: str) -> None:
    """What the screen shows (not the whole page: that is what a person sees first)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def no_serious_violations(page: Page) -> None:
    found = Axe().run(page)
    bad = [
        (v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
        for v in found.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert not bad, bad


# --- the link of a notification ----------------------------------------------------------------


def test_a_notification_link_opens_the_alert_and_a_second_session_sees_it_acknowledged(
    server: ApiServer, browser: Browser
) -> None:
    alert = alerts_of(server, AIR, "air.pm25_24h_75")[0]
    link = notification_link(server, alert["id"])

    watcher = open_page(browser, DESKTOP)
    sign_in(watcher, server, "air_operator")
    watched = card(watcher, alert["id"])
    expect(watched).to_have_attribute("data-acked", "false")
    listings: list[str] = []
    watcher.on("request", lambda r: listings.append(r.url) if "/api/v1/alerts?" in r.url else None)

    phone = open_page(browser, PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
    phone.goto(link)
    expect(phone.locator("h3")).to_have_text(alert["title_zh"])
    expect(phone.locator(".spark")).to_be_visible()  # the series behind the alert
    button = phone.get_by_role("button", name="确认处理")
    expect(button).to_be_focused()  # one tap, or Enter, acknowledges
    no_serious_violations(phone)
    shot(phone, "link-phone")
    button.tap()
    expect(phone.locator(".done")).to_contain_text("已确认")
    expect(phone.get_by_role("button", name="确认处理")).to_have_count(0)
    shot(phone, "link-phone-acknowledged")

    # the other session follows the stream: the card turns acknowledged without a reload
    expect(watched).to_have_attribute("data-acked", "true", timeout=15_000)
    expect(watched.locator(".badge.st-acked")).to_have_text("已确认")
    expect(watched.get_by_role("button", name="确认")).to_have_count(0)
    assert listings == [], "updated by reloading the listing, not by the stream"
    with server.client("viewer") as c:
        stored = c.get(f"/api/v1/alerts/{alert['id']}").json()
    assert stored["acknowledged"]["acked_by"] == f"link:{AIR}"

    # the link opened again says so and offers nothing to press
    again = open_page(browser, PHONE)
    again.goto(link)
    expect(again.get_by_role("status").filter(has_text="确认")).to_contain_text(f"link:{AIR}")
    expect(again.get_by_role("button", name="确认处理")).to_have_count(0)
    assert watcher.errors == [] and phone.errors == [] and again.errors == []  # type: ignore[attr-defined]


def test_a_forged_link_is_refused_on_the_page(server: ApiServer, browser: Browser) -> None:
    alert = alerts_of(server, AIR)[0]
    token = notification_link(server, alert["id"]).rsplit("/", 1)[1]
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    page = open_page(browser, PHONE)
    response = page.goto(f"{server.url}/ack/{forged}")
    assert response is not None and response.status == 403
    expect(page.get_by_role("alert")).to_contain_text("链接无效")
    expect(page.locator("button#link-ack")).to_have_count(0)


# --- the console -------------------------------------------------------------------------------


def test_a_new_alert_appears_live_and_leaves_when_resolved(
    server: ApiServer, browser: Browser
) -> None:
    page = open_page(browser, PHONE, is_mobile=True, has_touch=True)
    sign_in(page, server, "operator")
    before = page.locator("article.alert").count()
    rule = raise_ponding(server)
    raised = page.locator("article.alert").filter(has_text=PONDING_POINT)
    expect(raised).to_have_count(1, timeout=15_000)
    expect(raised.locator("h3")).to_have_text(rule.title.zh)
    expect(raised).to_contain_text("30")
    expect(page.locator("#live-region")).to_contain_text(f"新告警：{rule.title.zh}")
    expect(page.locator("article.alert")).to_have_count(before + 1)
    alert_id = int((raised.get_attribute("id") or "").removeprefix("alert-"))
    with server.client("operator") as c:
        done = c.post(f"/api/v1/alerts/{alert_id}/resolve", json={"note": "积水已排除"})
        assert done.status_code == 200, done.text
    expect(raised).to_have_count(0, timeout=15_000)
    expect(page.locator("#live-region")).to_contain_text(f"已恢复：{rule.title.zh}")
    assert page.errors == []  # type: ignore[attr-defined]


def test_the_console_reconnects_after_the_api_restarts_and_catches_up(
    server: ApiServer, browser: Browser, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "api.log"
    proc, url = serve.start_api(server.db_url, port, log=log)
    try:
        page = open_page(browser, DESKTOP)
        sign_in(page, server, "air_operator", url)
        target = next(a for a in alerts_of(server, AIR) if not a["acknowledged"])
        box = card(page, target["id"])
        expect(box).to_have_attribute("data-acked", "false")
        serve.stop_process(proc)
        expect(page.locator("#live")).to_have_attribute("data-state", "off")
        with server.client("air_operator") as c:  # meanwhile, through another API process
            assert c.post(f"/api/v1/alerts/{target['id']}/ack").status_code == 200
        proc, _ = serve.start_api(server.db_url, port, log=log)
        expect(page.locator("#live")).to_have_attribute("data-state", "on", timeout=30_000)
        expect(box).to_have_attribute("data-acked", "true")
        # resumed with Last-Event-ID: the acknowledgement itself was replayed and announced
        expect(page.locator("#live-region")).to_contain_text(
            f"air-operator 已确认：{target['title_zh']}"
        )
        assert page.errors == []  # type: ignore[attr-defined]
    finally:
        serve.stop_process(proc)


def test_operator_sees_the_department_and_acts_with_keyboard_and_dialogs(
    server: ApiServer, browser: Browser
) -> None:
    page = open_page(browser, DESKTOP)
    sign_in(page, server, "air_operator")
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    expect(page.locator("#dept-name")).to_have_text(AIR)
    ours = alerts_of(server, AIR)
    assert ours and all(a["owner"] == AIR for a in ours)
    expect(page.locator("article.alert")).to_have_count(len(ours))
    # the department's KPIs against their targets, nobody else's
    kpi_rows = page.locator("table.kpis tbody tr")
    assert kpi_rows.count() > 0
    assert all("空气" in t or "污染" in t or "AQI" in t for t in kpi_rows.all_inner_texts())

    target = next(a for a in ours if not a["acknowledged"])
    box = card(page, target["id"])
    expect(box.locator("h3")).to_have_text(target["title_zh"])
    expect(box).to_contain_text(target["clause"])
    expect(box).to_contain_text(target["threshold"])
    expect(box.locator(".spark polyline")).to_have_count(1)

    # keyboard: Tab reaches the card's first button, Enter acknowledges
    ack = box.locator('[data-action="ack"]')
    page.locator("h2#alerts-h").click()
    for _ in range(60):
        page.keyboard.press("Tab")
        if ack.evaluate("b => b === document.activeElement"):
            break
    else:
        pytest.fail("the acknowledge button is not reachable with Tab")
    page.keyboard.press("Enter")
    expect(box).to_have_attribute("data-acked", "true")
    expect(page.locator("#toast")).to_contain_text(target["title_zh"])

    # assign and comment through the dialog; Escape leaves it without a change
    box.locator('[data-action="assign"]').click()
    dialog = page.locator("dialog[open]")
    expect(dialog).to_be_visible()
    expect(page.get_by_label("负责人姓名")).to_be_focused()
    page.keyboard.press("Escape")
    expect(dialog).to_have_count(0)
    box.locator('[data-action="assign"]').click()
    page.get_by_role("button", name="保存").click()  # empty: refused in the dialog
    expect(page.locator("#dialog-error")).to_have_text("请填写此项。")
    page.get_by_label("负责人姓名").fill("王工")
    page.get_by_role("button", name="保存").click()
    expect(box).to_contain_text("王工")

    hostile = '<img src=x onerror="window.pwned=1">已派人现场'
    box.locator('[data-action="comment"]').click()
    page.get_by_label("备注内容").fill(hostile)
    page.get_by_role("button", name="保存").click()
    expect(page.locator("#toast")).to_contain_text("备注已保存")
    box.locator("details.history summary").click()
    expect(box.locator("details.history")).to_contain_text(hostile)  # shown as text
    assert page.evaluate("window.pwned") is None
    assert box.locator("img").count() == 0

    with server.client("viewer") as c:
        stored = c.get(f"/api/v1/alerts/{target['id']}").json()
    assert stored["acknowledged"]["acked_by"] == "air-operator"
    assert stored["assignee"] == "王工"
    assert [e["kind"] for e in stored["events"]][-3:] == ["acknowledged", "assigned", "commented"]
    assert page.errors == []  # type: ignore[attr-defined]


def test_silencing_with_a_reason(server: ApiServer, browser: Browser) -> None:
    page = open_page(browser, PHONE, is_mobile=True, has_touch=True)
    sign_in(page, server, "air_operator")
    target = alerts_of(server, AIR, "air.pm25_24h_75")[-1]
    box = card(page, target["id"])
    box.locator('[data-action="silence"]').click()
    page.get_by_label("时长").select_option("4")
    page.get_by_role("button", name="保存").click()
    expect(page.locator("#dialog-error")).to_have_text("请填写此项。")  # the reason is required
    page.get_by_label("原因（必填）").fill("传感器校准中")
    page.get_by_role("button", name="保存").click()
    expect(page.locator("#toast")).to_contain_text("已静默至")
    listed = page.locator("#silence-box li").filter(has_text="传感器校准中")
    expect(listed).to_contain_text(target["entity"])
    with psycopg.connect(server.db_url) as conn:
        row = conn.execute(
            "SELECT matchers, author, reason, round(extract(epoch FROM ends_at - starts_at)) "
            "FROM silences WHERE reason = %s",
            ("传感器校准中",),
        ).fetchone()
    assert row is not None
    matchers, author, reason, seconds = row
    assert matchers == {"rule_id": target["rule_id"], "entity": target["entity"], "owner": AIR}
    assert (author, reason) == ("air-operator", "传感器校准中")
    assert abs(float(seconds) - 4 * 3600) < 120

    listed.get_by_role("button", name="结束静默").click()
    expect(page.locator("#toast")).to_contain_text("静默已结束")
    expect(page.locator("#silence-box li").filter(has_text="传感器校准中")).to_have_count(0)


def test_role_rules_a_viewer_sees_no_buttons(server: ApiServer, browser: Browser) -> None:
    page = open_page(browser, DESKTOP)
    sign_in(page, server, "air_viewer")
    expect(page.locator("article.alert").first).to_be_visible()
    expect(page.locator("article .actions button")).to_have_count(0)
    expect(page.get_by_role("button", name="结束静默")).to_have_count(0)

    # an operator of another department sees the alerts it may follow, but acts on none of them
    admin = open_page(browser, DESKTOP)
    sign_in(admin, server, "admin")
    admin.locator("#dept").select_option(WATER)
    water = alerts_of(server, WATER)
    expect(admin.locator("article.alert")).to_have_count(len(water))
    expect(admin.locator('[data-action="assign"]')).to_have_count(len(water))

    flood = open_page(browser, DESKTOP)
    sign_in(flood, server, "flood_operator")
    expect(flood.locator("#dept")).to_have_count(0)  # its token names its department
    flood.goto(server.url + f"/console#alert={water[0]['id']}")
    flood.reload()
    expect(flood.locator("#live")).to_have_attribute("data-state", "on")
    expect(flood.locator(f"#alert-{water[0]['id']}")).to_have_count(0)
    # and the API refuses it anyway
    with server.client("flood_operator") as c:
        assert c.post(f"/api/v1/alerts/{water[0]['id']}/ack").status_code == 403


def test_a_card_keeps_its_open_history_and_the_focus_when_events_arrive(
    server: ApiServer, browser: Browser
) -> None:
    page = open_page(browser, DESKTOP)
    sign_in(page, server, "operator")
    cards = page.locator("article.alert")
    first_id = int((cards.nth(0).get_attribute("id") or "").removeprefix("alert-"))
    other_id = int((cards.nth(1).get_attribute("id") or "").removeprefix("alert-"))
    box = card(page, first_id)
    box.locator("details.history summary").click()
    expect(box.locator("details.history")).to_have_attribute("open", "")
    expect(box.locator("summary")).to_be_focused()
    with server.client("operator") as c:
        c.post(f"/api/v1/alerts/{other_id}/comments", json={"body": "另一条"})
        c.post(f"/api/v1/alerts/{first_id}/comments", json={"body": "现场已确认积水"})
    expect(box.locator("details.history")).to_contain_text("现场已确认积水")  # redrawn
    expect(box.locator("details.history")).to_have_attribute("open", "")
    expect(box.locator("summary")).to_be_focused()
    expect(card(page, other_id).locator("details.history")).not_to_have_attribute("open", "")


def test_departments_follow_the_selector_and_the_address(
    server: ApiServer, browser: Browser
) -> None:
    page = open_page(browser, DESKTOP)
    sign_in(page, server, "admin")
    page.locator("#dept").select_option(WATER)
    expect(page.locator("main")).to_have_attribute("data-loaded", "true")
    assert "dept=" in page.evaluate("location.hash")
    expect(page.locator("article.alert")).to_have_count(len(alerts_of(server, WATER)))
    page.evaluate(f"location.hash = 'dept={AIR}'")
    expect(page.locator("#dept")).to_have_value(AIR)
    expect(page.locator("main")).to_have_attribute("data-loaded", "true")
    expect(page.locator("article.alert")).to_have_count(len(alerts_of(server, AIR)))
    expect(page.locator("#live")).to_have_attribute("data-state", "on")
    # the stream now follows the new department: an assignment there shows at once
    target = alerts_of(server, AIR)[0]
    with server.client("operator") as c:
        c.post(f"/api/v1/alerts/{target['id']}/assign", json={"assignee": "陈工"})
    expect(card(page, target["id"])).to_contain_text("陈工")
    page.locator(".skip").focus()
    page.keyboard.press("Enter")  # the skip link moves the focus, and changes no department
    expect(page.locator("main")).to_be_focused()
    expect(page.locator("#dept")).to_have_value(AIR)

    # signing out forgets the department; the next person starts afresh
    page.get_by_role("button", name="退出").click()
    page.get_by_label("访问令牌").fill(server.tokens["operator"])
    page.get_by_role("button", name="登录").click()
    expect(page.locator("main")).to_have_attribute("data-loaded", "true")
    expect(page.locator("#dept")).to_have_value("")
    with server.client("admin") as c:
        every = c.get("/api/v1/alerts", params={"status": ["firing", "pending"]}).json()
    expect(page.locator("article.alert")).to_have_count(len(every["items"]))


def test_a_token_revoked_mid_session_returns_to_sign_in(
    server: ApiServer, browser: Browser
) -> None:
    with psycopg.connect(server.db_url) as conn:
        server.tokens["short_lived"], _ = create_token(conn, "short-lived", Role.OPERATOR)
    page = open_page(browser, DESKTOP)
    sign_in(page, server, "short_lived")
    with server.client("admin") as c:
        assert c.delete("/api/v1/tokens/short-lived").status_code == 204
    # the stream is closed by the server and its reconnection refused: no click needed
    expect(page.get_by_label("访问令牌")).to_be_visible(timeout=30_000)
    expect(page.locator("form.signin [role=status]")).to_contain_text("令牌无效")
    assert page.evaluate("sessionStorage.length") == 0


def test_the_link_works_without_javascript(server: ApiServer, browser: Browser) -> None:
    alert = alerts_of(server, WATER)[-1]
    link = notification_link(server, alert["id"])
    context = browser.new_context(viewport=PHONE, java_script_enabled=False)  # type: ignore[arg-type]
    page = context.new_page()
    page.goto(link)
    expect(page.locator("main")).to_contain_text(alert["title_zh"])
    page.get_by_role("button", name="确认处理 / Acknowledge").click()
    expect(page.locator("main")).to_contain_text("已确认 / Acknowledged")
    with server.client("viewer") as c:
        stored = c.get(f"/api/v1/alerts/{alert['id']}").json()
    assert stored["acknowledged"]["acked_by"] == f"link:{WATER}"


def test_kpi_trends_run_forward_in_time(server: ApiServer, browser: Browser) -> None:
    # two earlier months of one DMA's leakage KPI: a history to draw (the scorecard gives it
    # newest first; the chart must run left to right)
    with psycopg.connect(server.db_url) as conn:
        start = conn.execute(
            "SELECT max(period_start) FROM kpi_values WHERE kpi_id = 'water.leakage_month' "
            "AND entity = 'DMA-FHH'"
        ).fetchone()
        assert start is not None and start[0] is not None
        for months, value in ((2, 12.5), (1, 9.5)):
            conn.execute(
                "INSERT INTO kpi_values (kpi_id, entity, period, period_start, value, target, "
                "compliant) VALUES ('water.leakage_month', 'DMA-FHH', 'month', "
                "(%(s)s - make_interval(months => %(m)s))::date, %(v)s, 10, %(v)s < 10)",
                {"s": start[0], "m": months, "v": value},
            )
    page = open_page(browser, DESKTOP)
    sign_in(page, server, "admin")
    page.locator("#dept").select_option(WATER)
    row = page.locator("table.kpis tbody tr").filter(has_text="DMA-FHH")
    line = row.locator("svg.spark polyline")
    expect(line).to_have_count(1)
    xs = [float(p.split(",")[0]) for p in (line.get_attribute("points") or "").split()]
    assert len(xs) >= 3 and xs == sorted(xs) and xs[0] >= 0 and xs[-1] <= 120, xs
    assert xs[0] == 0 and xs[-1] == 120


def test_english_switch_persists_and_signing_out_forgets_the_token(
    server: ApiServer, browser: Browser
) -> None:
    page = open_page(browser, DESKTOP)
    sign_in(page, server, "operator")
    page.get_by_role("button", name="Switch to English").click()
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page.locator("#alerts-h")).to_contain_text("Alerts")
    expect(page.locator("#lang")).to_be_focused()
    first = page.locator("article.alert h3").first
    expect(first).to_have_text(re.compile(r"^[\x20-\x7e°µ³²%–—·’]+$"))  # English titles
    page.reload()
    expect(page.locator("#alerts-h")).to_contain_text("Alerts")  # remembered
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("Access token")).to_be_visible()
    page.reload()
    expect(page.get_by_label("Access token")).to_be_visible()  # the token is gone
    page.get_by_label("Access token").fill("not-a-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#signin-error")).to_contain_text("invalid, expired or revoked")


def test_air_alerts_carry_the_hj633_colour_of_their_level(
    server: ApiServer, browser: Browser
) -> None:
    page = open_page(browser, DESKTOP)
    sign_in(page, server, "air_operator")
    std = load_standard()
    for a in alerts_of(server, AIR, "air.pm25_24h_75"):
        index = iaqi(std, std.daily["pm25"], a["value"])
        assert index is not None
        level = std.level_of(index)
        badge = card(page, a["id"]).locator(".badge.aqi")
        expect(badge).to_have_text(f"AQI {index} {level.category}")
        r, g, b = (int(level.colour[i : i + 2], 16) for i in (1, 3, 5))
        expect(badge).to_have_css("background-color", f"rgb({r}, {g}, {b})")


@pytest.mark.parametrize("size", ["phone", "desktop"])
def test_screens_are_accessible_and_photographed(
    server: ApiServer, browser: Browser, size: str
) -> None:
    phone = size == "phone"
    extra: dict[str, Any] = {"is_mobile": True, "has_touch": True} if phone else {}
    page = open_page(
        browser, PHONE if phone else DESKTOP, device_scale_factor=2 if phone else 1, **extra
    )
    sign_in(page, server, "operator")
    expect(page.locator(".spark").first).to_be_visible()
    # nothing wider than the screen: no sideways scrolling on a phone
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    no_serious_violations(page)
    shot(page, f"console-{size}")
    page.get_by_role("button", name="Switch to English").click()
    expect(page.locator("#alerts-h")).to_contain_text("Alerts")
    no_serious_violations(page)
    shot(page, f"console-{size}-en")
    page.locator('[data-action="silence"]').first.click()
    expect(page.locator("dialog[open]")).to_be_visible()
    no_serious_violations(page)
    shot(page, f"silence-{size}-en")


def test_the_page_runs_only_its_own_code(server: ApiServer) -> None:
    page = httpx.get(server.url + "/console")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["referrer-policy"] == "no-referrer"
    script = re.search(r'src="(/console/app\.js\?v=[0-9a-f]+)"', page.text)
    assert script, page.text
    first = httpx.get(server.url + script.group(1))
    assert first.status_code == 200 and first.headers["content-type"].startswith("text/javascript")
    again = httpx.get(
        server.url + "/console/app.js", headers={"If-None-Match": first.headers["etag"]}
    )
    assert again.status_code == 304
    # compressed for whoever accepts it, the same script once decompressed
    assert first.headers["content-encoding"] == "gzip"  # httpx asks for gzip by default
    assert int(first.headers["content-length"]) < len(first.content) / 2
    plain = httpx.get(server.url + "/console/app.js", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.content == first.content
    assert plain.headers["etag"] != first.headers["etag"]
    assert httpx.get(server.url + "/console/other.js").status_code == 404
    assert httpx.get(server.url + "/").headers["location"] == "/console"
