/* UrbanPulse alert console: a department's open alerts, KPIs and silences, kept current by the
 * API's event stream; and the page an acknowledgement link opens. No build step, no library:
 * every text from the server goes through textContent, never through HTML. */
"use strict";
(function () {
  const API = "/api/v1";
  const TOKEN_KEY = "urbanpulse.token";
  const LANG_KEY = "urbanpulse.lang";
  const OPEN = ["pending", "firing"];
  const SEVERITY_RANK = { critical: 0, major: 1, warning: 2, info: 3 };
  const LIST_LIMIT = 200;
  const CLOSED_DAYS = 7;
  const REPLAY_FETCH_MAX = 50; // more changed alerts than this after a reconnect: reload instead

  const I18N = {
    zh: {
      console: "告警台", skip: "跳到内容", switchLang: "English", switchLangLabel: "Switch to English",
      oldBrowser: "此浏览器版本过旧，无法使用告警台，请升级浏览器。",
      signInTitle: "登录告警台", token: "访问令牌",
      tokenHint: "由管理员用 urbanpulse tokens create 发放。只保存在此标签页中，关闭即忘记。",
      signIn: "登录", signOut: "退出", signedOut: "已退出。",
      expired: "令牌无效、已过期或已吊销，请重新登录。", department: "部门", allDepartments: "全部部门",
      role_viewer: "只读", role_operator: "值班员", role_admin: "管理员",
      live_on: "实时", live_off: "已断开，正在重连", live_connecting: "连接中",
      open: "进行中", closed: "近7天已结束", alerts: "告警", kpis: "规划指标", silences: "静默",
      noAlerts: "没有进行中的告警。", noClosed: "近7天没有已结束的告警。", noKpis: "没有指标。",
      noSilences: "没有生效的静默。", loading: "加载中…", truncated: "只显示最新的 {n} 条。",
      sev_info: "提示", sev_warning: "一般", sev_major: "重要", sev_critical: "紧急",
      st_pending: "观察中", st_firing: "告警中", st_resolved: "已恢复", st_cancelled: "已取消",
      st_acked: "已确认",
      where: "对象", value: "当前值", threshold: "阈值", since: "开始", clause: "依据",
      owner: "责任单位", assignee: "负责人", ackedBy: "确认", ended: "结束",
      ackedByText: "{who}（{at}）", ack: "确认", assign: "指派", comment: "备注", silence: "静默",
      history: "处理记录", ev_pending: "进入观察", ev_firing: "开始告警", ev_resolved: "已恢复",
      ev_cancelled: "已取消", ev_acknowledged: "已确认", ev_assigned: "已指派", ev_commented: "备注",
      engine: "规则引擎", noSeries: "暂无数据曲线", sparkLabel: "{name} 曲线：最低 {min}，最高 {max}{unit}",
      assignTitle: "指派告警", assigneeLabel: "负责人姓名", commentTitle: "添加备注", commentLabel: "备注内容",
      silenceTitle: "静默告警通知", reason: "原因（必填）", duration: "时长", scope: "范围",
      scopeEntity: "仅此对象的此规则", scopeRule: "此规则的全部对象",
      h1: "1 小时", h4: "4 小时", h12: "12 小时", h24: "24 小时", h72: "3 天",
      cancel: "取消", save: "保存", required: "请填写此项。", close: "关闭",
      acked: "已确认：{title}", assigned: "已指派给 {who}", commented: "备注已保存",
      silenced: "已静默至 {until}", silenceEnded: "静默已结束",
      newAlert: "新告警：{title}", resolvedAlert: "已恢复：{title}", ackedAlert: "{who} 已确认：{title}",
      endSilence: "结束静默", until: "至 {at}", by: "{who}：{reason}",
      kpi: "指标", entity: "对象", current: "当前", target: "目标", status: "状态", trend: "趋势",
      compliant: "达标", notCompliant: "未达标", noData: "无数据", noTarget: "不设限值",
      lowerBetter: "越低越好", higherBetter: "越高越好",
      linkTitle: "确认告警", ackBig: "确认处理", ackDone: "已确认，谢谢。",
      linkAlready: "此告警已由 {who} 于 {at} 确认。", linkClosed: "此告警已结束（{status}），无需确认。",
      linkInvalid: "链接无效", openConsole: "在告警台中打开",
      failed: "操作失败：{why}", minutesAgo: "{n} 分钟前", hoursAgo: "{n} 小时前", daysAgo: "{n} 天前",
      justNow: "刚刚",
      unit_days: "天", unit_hours: "小时", unit_points: "处",
    },
    en: {
      console: "Alert console", skip: "Skip to content", switchLang: "中文", switchLangLabel: "切换到中文",
      oldBrowser: "This browser is too old for the alert console; please update it.",
      signInTitle: "Sign in to the alert console", token: "Access token",
      tokenHint: "Issued by an administrator with urbanpulse tokens create. Kept in this tab only, forgotten when it closes.",
      signIn: "Sign in", signOut: "Sign out", signedOut: "Signed out.",
      expired: "The token is invalid, expired or revoked; please sign in again.", department: "Department",
      allDepartments: "All departments",
      role_viewer: "viewer", role_operator: "operator", role_admin: "admin",
      live_on: "Live", live_off: "Disconnected, reconnecting", live_connecting: "Connecting",
      open: "Open", closed: "Closed, last 7 days", alerts: "Alerts", kpis: "Plan KPIs", silences: "Silences",
      noAlerts: "No open alerts.", noClosed: "No alerts closed in the last 7 days.", noKpis: "No KPIs.",
      noSilences: "No active silences.", loading: "Loading…", truncated: "Showing the newest {n} only.",
      sev_info: "info", sev_warning: "warning", sev_major: "major", sev_critical: "critical",
      st_pending: "Pending", st_firing: "Firing", st_resolved: "Resolved", st_cancelled: "Cancelled",
      st_acked: "Acknowledged",
      where: "Where", value: "Value", threshold: "Threshold", since: "Since", clause: "Clause",
      owner: "Department", assignee: "Assignee", ackedBy: "Acknowledged", ended: "Ended",
      ackedByText: "{who} ({at})", ack: "Acknowledge", assign: "Assign", comment: "Comment", silence: "Silence",
      history: "History", ev_pending: "pending", ev_firing: "firing", ev_resolved: "resolved",
      ev_cancelled: "cancelled", ev_acknowledged: "acknowledged", ev_assigned: "assigned",
      ev_commented: "comment", engine: "rule engine", noSeries: "No series to draw",
      sparkLabel: "{name} series: low {min}, high {max}{unit}",
      assignTitle: "Assign alert", assigneeLabel: "Assignee's name", commentTitle: "Add a comment",
      commentLabel: "Comment", silenceTitle: "Silence notifications", reason: "Reason (required)",
      duration: "Duration", scope: "Scope", scopeEntity: "This rule on this entity only",
      scopeRule: "This rule everywhere",
      h1: "1 hour", h4: "4 hours", h12: "12 hours", h24: "24 hours", h72: "3 days",
      cancel: "Cancel", save: "Save", required: "Please fill this in.", close: "Close",
      acked: "Acknowledged: {title}", assigned: "Assigned to {who}", commented: "Comment saved",
      silenced: "Silenced until {until}", silenceEnded: "Silence ended",
      newAlert: "New alert: {title}", resolvedAlert: "Resolved: {title}", ackedAlert: "{who} acknowledged: {title}",
      endSilence: "End silence", until: "until {at}", by: "{who}: {reason}",
      kpi: "KPI", entity: "Entity", current: "Current", target: "Target", status: "Status", trend: "Trend",
      compliant: "On target", notCompliant: "Off target", noData: "No data", noTarget: "No limit",
      lowerBetter: "lower is better", higherBetter: "higher is better",
      linkTitle: "Acknowledge alert", ackBig: "Acknowledge", ackDone: "Acknowledged, thank you.",
      linkAlready: "{who} acknowledged this alert at {at}.",
      linkClosed: "This alert has ended ({status}); nothing to acknowledge.", linkInvalid: "Invalid link",
      openConsole: "Open in the console", failed: "Failed: {why}", minutesAgo: "{n} min ago",
      hoursAgo: "{n} h ago", daysAgo: "{n} d ago", justNow: "just now",
    },
  };

  let lang = localStorage.getItem(LANG_KEY) === "en" ? "en" : "zh";

  // Everything a signed-in session knows. Signing out replaces the whole object, so that work
  // still in flight for the old session (it holds the old object) can tell and stop.
  function fresh() {
    return {
      token: null, me: null, dept: "", view: "open", departments: [], rules: new Map(),
      alerts: new Map(), truncated: false, kpis: null, silences: null, loaded: false,
      series: new Map(), seriesData: new Map(),
      live: "connecting", stream: null, lastEventId: null, loadSeq: 0,
      changed: new Map(), draining: false, eventCount: 0, touched: new Map(), announced: new Set(),
      focusAlert: null,
    };
  }
  let S = fresh();
  const L = { token: null, alert: null, message: "" }; // the page of an acknowledgement link
  let dialogDone = null;

  // --- helpers -------------------------------------------------------------------------------

  function t(key, vars) {
    let s = I18N[lang][key];
    if (s === undefined) s = I18N.zh[key] === undefined ? key : I18N.zh[key];
    if (vars) for (const [k, v] of Object.entries(vars)) s = s.split("{" + k + "}").join(String(v));
    return s;
  }

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  function svg(tag, attrs) {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    return el;
  }

  const $ = (sel) => document.querySelector(sel);
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  function num(v) {
    if (v === null || v === undefined) return "–";
    return Number(v).toLocaleString(lang === "zh" ? "zh-CN" : "en-GB", { maximumFractionDigits: 1 });
  }

  // the contract's unit spellings as people write them; the KPIs' count units in Chinese
  function unit(u) {
    const text = (u || "").replace(/^ug\//, "µg/").replace(/m3(\/h)?$/, "m³$1").replace(/m2$/, "m²");
    return lang === "zh" && I18N.zh["unit_" + text] ? I18N.zh["unit_" + text] : text;
  }

  function paren(text) { return lang === "zh" ? `（${text}）` : ` (${text})`; }

  // the API gives times in the city's offset: show that wall-clock time, whatever the phone's zone
  function when(iso) {
    if (!iso) return "–";
    const m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})/.exec(iso);
    return m ? `${m[2]}-${m[3]} ${m[4]}:${m[5]}` : iso;
  }

  function ago(iso) {
    const minutes = Math.floor((Date.now() - Date.parse(iso)) / 60000);
    if (!(minutes >= 1)) return t("justNow");
    if (minutes < 60) return t("minutesAgo", { n: minutes });
    if (minutes < 48 * 60) return t("hoursAgo", { n: Math.floor(minutes / 60) });
    return t("daysAgo", { n: Math.floor(minutes / 1440) });
  }

  function title(a) { return lang === "zh" ? a.title_zh : a.title_en; }
  function isOpen(a) { return OPEN.includes(a.status); }
  function inView(a) {
    if (S.dept && a.owner !== S.dept) return false;
    if (S.view === "open") return isOpen(a);
    return !isOpen(a) && Date.now() - Date.parse(a.ended_at || a.updated_at) < CLOSED_DAYS * 86400e3;
  }

  // the screen reader's news: new, acknowledged and resolved alerts
  function announce(text) {
    const region = $("#live-region");
    region.textContent = "";
    setTimeout(() => { region.textContent = text; }, 50);
  }

  // the outcome of what the user did, where they can see it (fixed at the bottom of the screen)
  let toastTimer = null;
  function flash(text, kind) {
    const ok = $("#toast"), bad = $("#toast-error");
    clearTimeout(toastTimer);
    ok.textContent = ""; bad.textContent = "";
    ok.hidden = true; bad.hidden = true;
    const box = kind === "error" ? bad : ok;
    box.hidden = false;
    box.textContent = text;
    box.append(h("button", { type: "button", class: "toast-close", "aria-label": t("close"), onclick: () => { box.hidden = true; } }, "×"));
    if (kind !== "error") toastTimer = setTimeout(() => { box.hidden = true; }, 8000);
  }

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  function describe(detail) {
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) return detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
    return "";
  }

  async function api(path, opts) {
    opts = opts || {};
    const session = S;
    const headers = { Accept: "application/json" };
    if (!opts.anonymous) {
      if (!session.token) throw new ApiError(401, t("expired"));
      headers.Authorization = "Bearer " + session.token;
    }
    if (opts.body !== undefined) headers["Content-Type"] = "application/json";
    const res = await fetch(API + path, {
      method: opts.method || "GET", headers, cache: "no-store",
      body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
    });
    let data = null;
    try { data = await res.json(); } catch (_) { /* an empty or non-JSON answer */ }
    if (res.status === 401 && !opts.anonymous) {
      if (session === S && !opts.probe) signOut(t("expired")); // not for an answer to a session already gone
      throw new ApiError(401, t("expired"));
    }
    if (!res.ok) throw new ApiError(res.status, describe(data && data.detail) || res.statusText);
    return data;
  }

  // --- the dialog (assign, comment, silence) ---------------------------------------------------

  function ask(spec) {
    const dialog = $("#dialog");
    const fields = $("#dialog-fields");
    const error = $("#dialog-error");
    const opener = document.activeElement;
    const openerCard = opener && opener.closest ? opener.closest("article") : null;
    const openerAction = opener && opener.getAttribute ? opener.getAttribute("data-action") : null;
    $("#dialog-title").textContent = spec.title;
    $("#dialog-ok").textContent = spec.ok || t("save");
    $("#dialog-cancel").textContent = t("cancel");
    error.textContent = "";
    fields.replaceChildren(...spec.fields.map((f) => {
      const id = "field-" + f.name;
      let input;
      if (f.type === "select") {
        input = h("select", { id, name: f.name }, f.options.map(([value, label]) => h("option", { value }, label)));
      } else if (f.type === "textarea") {
        input = h("textarea", { id, name: f.name, rows: 3, maxlength: f.maxlength, required: f.required });
      } else {
        input = h("input", { id, name: f.name, type: "text", maxlength: f.maxlength, required: f.required, autocomplete: "off" });
      }
      if (f.value) input.value = f.value;
      return h("div", { class: "field" }, h("label", { for: id }, f.label), input);
    }));
    return new Promise((resolve) => {
      const form = $("#dialog-form");
      const done = (value) => {
        dialogDone = null;
        form.removeEventListener("submit", submit);
        $("#dialog-cancel").removeEventListener("click", cancel);
        dialog.removeEventListener("cancel", cancel);
        if (dialog.open) dialog.close();
        // back to the button that opened it, or its successor if the card was redrawn meanwhile
        let back = opener && opener.isConnected ? opener : null;
        if (!back && openerCard && openerAction) back = document.querySelector(`#${openerCard.id} [data-action="${openerAction}"]`);
        if (back) back.focus();
        resolve(value);
      };
      const submit = (ev) => {
        ev.preventDefault();
        const values = {};
        for (const f of spec.fields) {
          const v = form.elements[f.name].value.trim();
          if (f.required && !v) {
            error.textContent = t("required");
            form.elements[f.name].focus();
            return;
          }
          values[f.name] = v;
        }
        done(values);
      };
      const cancel = (ev) => { if (ev) ev.preventDefault(); done(null); };
      dialogDone = () => cancel(null);
      form.addEventListener("submit", submit);
      $("#dialog-cancel").addEventListener("click", cancel);
      dialog.addEventListener("cancel", cancel);
      dialog.showModal();
      const first = fields.querySelector("input, textarea, select");
      if (first) first.focus();
    });
  }

  // --- sparkline ---------------------------------------------------------------------------------

  function sparkline(series) {
    const points = (series.points || []).slice().sort((p, q) => Date.parse(p.ts) - Date.parse(q.ts));
    if (!points.length) return h("p", { class: "hint" }, t("noSeries"));
    const W = 120, H = 32;
    const x0 = Math.min(Date.parse(series.start), Date.parse(points[0].ts));
    const x1 = Math.max(Date.parse(series.end), Date.parse(points[points.length - 1].ts));
    const ys = points.map((p) => p.value);
    let lo = Math.min(...ys), hi = Math.max(...ys);
    const low = lo, high = hi;
    const limit = series.threshold === null || series.threshold === undefined ? null : series.threshold;
    if (limit !== null) { lo = Math.min(lo, limit); hi = Math.max(hi, limit); }
    if (hi === lo) { hi += 1; lo -= 1; }
    const X = (ts) => ((Date.parse(ts) - x0) / Math.max(1, x1 - x0)) * W;
    const Y = (v) => H - 2 - ((v - lo) / (hi - lo)) * (H - 4);
    const coords = points.map((p) => `${X(p.ts).toFixed(1)},${Y(p.value).toFixed(1)}`);
    const label = t("sparkLabel", { name: series.name || "", min: num(low), max: num(high), unit: series.unit ? " " + unit(series.unit) : "" });
    const el = svg("svg", { class: "spark", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img", "aria-label": label });
    const tip = svg("title"); tip.textContent = label; el.append(tip);
    const first = X(points[0].ts).toFixed(1), last = X(points[points.length - 1].ts).toFixed(1);
    el.append(svg("path", { class: "area", d: `M${first},${H} L${coords.join(" L")} L${last},${H} Z` }));
    if (limit !== null) {
      const y = Y(limit).toFixed(1);
      el.append(svg("line", { class: "limit", x1: 0, x2: W, y1: y, y2: y }));
    }
    el.append(svg("polyline", { class: "line", points: coords.join(" ") }));
    if (points.length === 1) {
      const [x, y] = coords[0].split(",");
      el.append(svg("ellipse", { class: "dot", cx: x, cy: y, rx: 1.5, ry: 2.5 }));
    }
    return el;
  }

  function aqiBadge(band) {
    // HJ 633 colours; dark text on the light ones, white on purple and maroon (WCAG AA both)
    const rgb = parseInt(band.colour.slice(1), 16);
    const lum = 0.2126 * ((rgb >> 16) & 255) + 0.7152 * ((rgb >> 8) & 255) + 0.0722 * (rgb & 255);
    const badge = h("span", { class: "badge aqi" + (lum < 60 ? " dark" : "") }, `AQI ${band.aqi} ${lang === "zh" ? band.category : band.en}`);
    badge.style.backgroundColor = band.colour;
    return badge;
  }

  function fillSeries(el, series) {
    const holder = el.querySelector(".spark-holder");
    if (holder) holder.replaceChildren(sparkline(series));
    const unitEl = el.querySelector(".unit");
    if (unitEl && series.value_unit) unitEl.textContent = " " + unit(series.value_unit);
    const head = el.querySelector(".alert-head");
    if (head && series.aqi && !head.querySelector(".aqi")) head.append(aqiBadge(series.aqi));
  }

  // each alert's series once (one request however often its card is redrawn), when it is shown
  function loadSeries(id) {
    const session = S;
    if (!session.series.has(id)) {
      const path = L.token ? `/ack/${L.token}/series` : `/alerts/${id}/series`;
      session.series.set(id, api(path, { anonymous: !!L.token }).then((found) => {
        session.seriesData.set(id, found);
        return found;
      }));
    }
    session.series.get(id).then((found) => {
      const el = document.getElementById(`alert-${id}`);
      if (el && session === S) fillSeries(el, found);
    }).catch(() => {
      session.series.delete(id); // try again when the card is drawn next
      const holder = document.querySelector(`#alert-${id} .spark-holder`);
      if (holder) holder.replaceChildren();
    });
  }

  const watcher = "IntersectionObserver" in window ? new IntersectionObserver((entries) => {
    for (const e of entries) {
      if (!e.isIntersecting) continue;
      watcher.unobserve(e.target);
      loadSeries(Number(e.target.getAttribute("data-id")));
    }
  }, { rootMargin: "300px" }) : null;

  // --- an alert --------------------------------------------------------------------------------

  function canAct(a) {
    if (!S.me || S.me.role === "viewer") return false;
    return S.me.role === "admin" || !S.me.department || S.me.department === a.owner;
  }

  function statusBadge(a) {
    if (a.acknowledged && isOpen(a)) return h("span", { class: "badge st-acked" }, t("st_acked"));
    return h("span", { class: `badge st-${a.status}` }, t("st_" + a.status));
  }

  function fact(label, ...value) { return [h("dt", {}, label), h("dd", {}, ...value)]; }

  function eventText(ev) {
    const who = ev.actor || t("engine");
    const d = ev.detail || {};
    const extra = d.body || d.assignee || d.note || "";
    return `${when(ev.at)} ${t("ev_" + ev.kind)} · ${who}${extra ? "：" + extra : ""}`;
  }

  function card(a, opts) {
    opts = opts || {};
    const headingId = `alert-${a.id}-title`;
    const el = h("article", {
      class: `alert sev-${a.severity}` + (S.focusAlert === a.id ? " highlight" : ""),
      id: `alert-${a.id}`, "data-id": a.id, "aria-labelledby": headingId, "data-status": a.status,
      "data-acked": a.acknowledged ? "true" : "false",
    });
    el.append(h("div", { class: "alert-head" },
      h("span", { class: `badge sev-${a.severity}` }, t("sev_" + a.severity)), statusBadge(a)));
    el.append(h("h3", { id: headingId, tabindex: "-1" }, title(a)));
    const ack = a.acknowledged;
    el.append(h("dl", { class: "facts" },
      fact(t("where"), a.zone && a.zone !== a.entity ? a.entity + paren(a.zone) : a.entity),
      fact(t("value"), h("span", { class: "value" }, num(a.value)), h("span", { class: "unit" })),
      fact(t("threshold"), a.threshold),
      fact(t("since"), when(a.started_at || a.pending_at) + paren(ago(a.started_at || a.pending_at))),
      a.ended_at ? fact(t("ended"), when(a.ended_at)) : null,
      fact(t("clause"), a.clause),
      fact(t("owner"), a.owner),
      a.assignee ? fact(t("assignee"), a.assignee) : null,
      ack ? fact(t("ackedBy"), t("ackedByText", { who: ack.acked_by, at: when(ack.acked_at) }) + (ack.note ? "：" + ack.note : "")) : null));
    el.append(h("div", { class: "spark-holder" }, h("p", { class: "hint" }, t("loading"))));
    if (!opts.link && canAct(a)) {
      const act = (name, handler) => h("button", { type: "button", class: "btn", "data-action": name, "aria-describedby": headingId, onclick: () => handler(a) }, t(name));
      const buttons = [];
      if (isOpen(a) && !ack) buttons.push(act("ack", doAck));
      if (isOpen(a)) buttons.push(act("assign", doAssign));
      buttons.push(act("comment", doComment));
      if (isOpen(a)) buttons.push(act("silence", doSilence));
      el.append(h("div", { class: "actions" }, buttons));
    }
    if (!opts.link) {
      const list = h("ol", {});
      const history = h("details", { class: "history" },
        h("summary", { "data-action": "history" }, t("history"), h("span", { class: "visually-hidden" }, "：" + title(a))), list);
      const fill = (events) => list.replaceChildren(...events.map((ev) => h("li", {}, eventText(ev))));
      if (a.events) fill(a.events); // oldest first, as the API gives them
      history.addEventListener("toggle", async () => {
        if (!history.open || a.events) return;
        try { a.events = await api(`/alerts/${a.id}/events`); fill(a.events); } catch (e) { flash(t("failed", { why: e.message }), "error"); }
      });
      el.append(history);
    }
    if (S.seriesData.has(a.id)) fillSeries(el, S.seriesData.get(a.id));
    else if (watcher && !opts.link) watcher.observe(el);
    else setTimeout(() => loadSeries(a.id), 0);
    return el;
  }

  function order(a, b) {
    const acked = (x) => (x.acknowledged ? 1 : 0);
    return acked(a) - acked(b)
      || (b.status === "firing") - (a.status === "firing")
      || SEVERITY_RANK[a.severity] - SEVERITY_RANK[b.severity]
      || Date.parse(b.started_at || b.pending_at) - Date.parse(a.started_at || a.pending_at);
  }

  // where the keyboard is, in terms that survive a redraw: the card and the control in it
  function focusPlace() {
    const active = document.activeElement;
    const article = active && active.closest ? active.closest("article") : null;
    if (!article) return null;
    return { id: article.id, action: active.getAttribute("data-action") };
  }

  function restoreFocus(place) {
    if (!place) return;
    const el = document.getElementById(place.id);
    const target = el && ((place.action && el.querySelector(`[data-action="${place.action}"]`)) || el.querySelector("h3"));
    if (target) target.focus({ preventScroll: true });
    else { const heading = $("#alerts-h"); if (heading) heading.focus(); }
  }

  function updateCount(n) {
    const count = $("#alert-count");
    if (count) count.textContent = ` (${n})`;
  }

  function renderAlerts() {
    const list = $("#alert-list");
    if (!list) return;
    const alerts = [...S.alerts.values()].filter(inView).sort(order);
    const place = focusPlace();
    const open = new Set([...list.querySelectorAll("details[open]")].map((d) => d.closest("article").id));
    if (!alerts.length) list.replaceChildren(h("p", { class: "empty" }, t(S.view === "open" ? "noAlerts" : "noClosed")));
    else list.replaceChildren(...alerts.map((a) => card(a)));
    for (const id of open) { const d = document.querySelector(`#${id} details`); if (d) d.open = true; }
    restoreFocus(place);
    updateCount(alerts.length);
    const cut = $("#alert-truncated");
    if (cut) cut.textContent = S.truncated ? t("truncated", { n: LIST_LIMIT }) : "";
  }

  // one alert changed: its card is redrawn in place (history kept open, focus kept), or leaves,
  // or, new, joins the list in its order
  function upsert(a) {
    S.alerts.set(a.id, a);
    const old = document.getElementById(`alert-${a.id}`);
    if (!old) { if (inView(a)) renderAlerts(); return; }
    const place = focusPlace();
    if (!inView(a)) {
      const next = old.nextElementSibling || old.previousElementSibling;
      old.remove();
      if (place && place.id === old.id) {
        const target = next && next.querySelector("h3");
        if (target) target.focus({ preventScroll: true }); else $("#alerts-h").focus();
      }
      const left = [...S.alerts.values()].filter(inView).length;
      updateCount(left);
      if (!left) renderAlerts();
      return;
    }
    const wasOpen = old.querySelector("details[open]") !== null;
    const neu = card(a);
    if (wasOpen) neu.querySelector("details").open = true;
    old.replaceWith(neu);
    restoreFocus(place && place.id === neu.id ? place : null);
  }

  // --- actions ---------------------------------------------------------------------------------

  async function act(a, path, body, message) {
    try {
      const updated = await api(`/alerts/${a.id}/${path}`, { method: "POST", body });
      S.touched.set(updated.id, ++S.eventCount); // newer than any listing already on its way
      upsert(updated);
      flash(message(updated), "ok");
    } catch (e) {
      if (e.status !== 401) flash(t("failed", { why: e.message }), "error");
    }
  }

  function doAck(a) { return act(a, "ack", { note: "" }, (u) => t("acked", { title: title(u) })); }

  async function doAssign(a) {
    const v = await ask({ title: t("assignTitle"), fields: [{ name: "assignee", label: t("assigneeLabel"), required: true, maxlength: 100, value: a.assignee || "" }] });
    if (v) await act(a, "assign", { assignee: v.assignee }, () => t("assigned", { who: v.assignee }));
  }

  async function doComment(a) {
    const v = await ask({ title: t("commentTitle"), fields: [{ name: "body", label: t("commentLabel"), type: "textarea", required: true, maxlength: 4000 }] });
    if (v) await act(a, "comments", { body: v.body }, () => t("commented"));
  }

  async function doSilence(a) {
    const v = await ask({
      title: t("silenceTitle"),
      fields: [
        { name: "reason", label: t("reason"), type: "textarea", required: true, maxlength: 2000 },
        { name: "hours", label: t("duration"), type: "select", options: [["1", t("h1")], ["4", t("h4")], ["12", t("h12")], ["24", t("h24")], ["72", t("h72")]] },
        { name: "scope", label: t("scope"), type: "select", options: [["entity", t("scopeEntity")], ["rule", t("scopeRule")]] },
      ],
    });
    if (!v) return;
    const matchers = { rule_id: a.rule_id };
    if (v.scope === "entity") matchers.entity = a.entity;
    const ends = new Date(Date.now() + Number(v.hours) * 3600 * 1000).toISOString();
    try {
      const made = await api("/silences", { method: "POST", body: { matchers, ends_at: ends, reason: v.reason } });
      flash(t("silenced", { until: when(made.ends_at) }), "ok");
      await loadSilences();
    } catch (e) {
      if (e.status !== 401) flash(t("failed", { why: e.message }), "error");
    }
  }

  async function endSilence(s) {
    try {
      await api(`/silences/${s.id}/expire`, { method: "POST" });
      flash(t("silenceEnded"), "ok");
      await loadSilences();
      const heading = $("#silences-h");
      if (heading) heading.focus();
    } catch (e) {
      if (e.status !== 401) flash(t("failed", { why: e.message }), "error");
    }
  }

  // --- KPIs and silences -----------------------------------------------------------------------

  function renderKpis() {
    const box = $("#kpi-box");
    if (!box) return;
    if (S.kpis === null) { box.replaceChildren(h("p", { class: "hint" }, t("loading"))); return; }
    if (!S.kpis.length) { box.replaceChildren(h("p", { class: "empty" }, t("noKpis"))); return; }
    const rows = S.kpis.map((k) => {
      const aim = /^(lower|higher) is better$/.exec(k.target);
      const state = k.compliant === true ? h("span", { class: "ok" }, "✓ " + t("compliant"))
        : k.compliant === false ? h("span", { class: "bad" }, "✗ " + t("notCompliant"))
          : h("span", { class: "na" }, k.value === null ? t("noData") : aim ? t("noTarget") : "–");
      // the scorecard gives its history newest first
      const history = (k.history || []).filter((p) => p.value !== null)
        .sort((p, q) => Date.parse(p.period_start) - Date.parse(q.period_start));
      const trend = history.length > 1 ? sparkline({
        name: lang === "zh" ? k.title_zh : k.title_en, unit: k.unit,
        start: history[0].period_start, end: history[history.length - 1].period_start,
        points: history.map((p) => ({ ts: p.period_start, value: p.value })),
      }) : "";
      return h("tr", {},
        h("td", { "data-label": t("kpi") }, lang === "zh" ? k.title_zh : k.title_en),
        h("td", { "data-label": t("entity") }, k.entity),
        h("td", { "data-label": t("current") }, k.value === null ? "–" : `${num(k.value)} ${unit(k.unit)}`),
        h("td", { "data-label": t("target") }, aim ? t(aim[1] + "Better") : `${k.target} ${unit(k.unit)}`),
        h("td", { "data-label": t("status") }, state),
        h("td", { "data-label": t("trend") }, trend));
    });
    box.replaceChildren(h("table", { class: "kpis" },
      h("thead", {}, h("tr", {}, [t("kpi"), t("entity"), t("current"), t("target"), t("status"), t("trend")].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows)));
  }

  function concerns(s) {
    if (!S.dept) return true;
    const m = s.matchers || {};
    if (m.owner) return m.owner === S.dept;
    const rule = m.rule_id && S.rules.get(m.rule_id);
    return !rule || rule.owner === S.dept;
  }

  function mayEnd(s) {
    if (!S.me || S.me.role === "viewer") return false;
    return S.me.role === "admin" || !S.me.department || (s.matchers || {}).owner === S.me.department;
  }

  function renderSilences() {
    const box = $("#silence-box");
    if (!box) return;
    if (S.silences === null) { box.replaceChildren(h("p", { class: "hint" }, t("loading"))); return; }
    const shown = S.silences.filter(concerns);
    if (!shown.length) { box.replaceChildren(h("p", { class: "empty" }, t("noSilences"))); return; }
    box.replaceChildren(h("ul", { class: "silences" }, shown.map((s) => h("li", {},
      h("div", {},
        h("strong", {}, Object.entries(s.matchers).map(([k, v]) => `${k}=${v}`).join(", ")),
        h("div", {}, t("until", { at: when(s.ends_at) }) + " · " + t("by", { who: s.author, reason: s.reason }))),
      mayEnd(s) ? h("button", { type: "button", class: "btn secondary", onclick: () => endSilence(s) }, t("endSilence")) : null))));
  }

  async function loadSilences() {
    const session = S;
    const found = await api("/silences");
    if (session !== S) return;
    S.silences = found;
    renderSilences();
  }

  // --- loading and the live stream -------------------------------------------------------------

  async function loadAll() {
    const session = S;
    const seq = ++S.loadSeq;
    const q = new URLSearchParams();
    if (S.view === "open") OPEN.forEach((s) => q.append("status", s));
    else {
      q.append("status", "resolved"); q.append("status", "cancelled");
      // began within a month (the listing filters on the start): those that ended in the week
      q.set("since", new Date(Date.now() - 31 * 86400e3).toISOString());
    }
    if (S.dept) q.set("owner", S.dept);
    q.set("limit", String(LIST_LIMIT));
    const kq = new URLSearchParams({ history: "12" });
    if (S.dept) kq.set("owner", S.dept);
    const mark = S.eventCount;
    try {
      const [page, kpis, silences] = await Promise.all([api("/alerts?" + q), api("/kpis?" + kq), api("/silences")]);
      if (session !== S || seq !== S.loadSeq) return; // signed out, or a newer load won
      // an alert an event or an action refreshed while the listing was on its way is newer
      const fresh = new Map(page.items.map((a) => [a.id, a]));
      for (const [id, count] of S.touched) {
        if (count > mark && S.alerts.has(id)) fresh.set(id, S.alerts.get(id));
      }
      if (S.focusAlert && !fresh.has(S.focusAlert)) {
        try {
          const one = await api(`/alerts/${S.focusAlert}`);
          if (session !== S || seq !== S.loadSeq) return;
          if (!S.dept || one.owner === S.dept) {
            fresh.set(one.id, one);
            if (!inView(one) && S.view === "open") { S.view = "closed"; renderConsole(); loadAll(); return; }
          }
        } catch (_) { /* gone or not ours: show the rest */ }
      }
      S.alerts = fresh;
      S.truncated = Boolean(page.next);
      S.kpis = kpis; S.silences = silences;
      renderAlerts(); renderKpis(); renderSilences();
      S.loaded = true;
      $("#main").setAttribute("data-loaded", "true");
      if (S.focusAlert) {
        const el = document.getElementById(`alert-${S.focusAlert}`);
        if (el) { el.scrollIntoView({ block: "center" }); const d = el.querySelector("details"); if (d) d.open = true; }
      }
    } catch (e) {
      if (e.status !== 401 && session === S) flash(t("failed", { why: e.message }), "error");
    }
  }

  function setLive(state) {
    S.live = state;
    const el = $("#live");
    if (el) { el.className = "live " + state; el.textContent = t("live_" + state); el.setAttribute("data-state", state); }
  }

  // the alerts the stream says changed, fetched one by one (once each however many events
  // name them), in the order the stream named them
  function changed(ev) {
    const kinds = S.changed.get(ev.alert_id) || [];
    kinds.push({ kind: ev.kind, actor: ev.actor });
    S.changed.set(ev.alert_id, kinds);
    drain();
  }

  async function drain() {
    const session = S;
    if (session.draining) return;
    session.draining = true;
    try {
      while (session.changed.size && session === S) {
        if (session.changed.size > REPLAY_FETCH_MAX) { // a long replay: one listing is cheaper
          session.changed.clear();
          await loadAll();
          break;
        }
        const [id, kinds] = session.changed.entries().next().value;
        session.changed.delete(id);
        let a;
        try { a = await api(`/alerts/${id}`); } catch (_) { continue; }
        if (session !== S) return;
        if (S.dept && a.owner !== S.dept) continue; // the department changed meanwhile
        if (kinds.some((k) => ["pending", "firing", "resolved"].includes(k.kind))) {
          S.series.delete(id); S.seriesData.delete(id);
        }
        S.touched.set(id, ++S.eventCount);
        upsert(a);
        for (const k of kinds) {
          const key = `${id}:${k.kind}`; // news once, even when replayed or already loaded
          if (S.announced.has(key)) continue;
          if (S.announced.size > 10000) S.announced.clear();
          S.announced.add(key);
          if (k.kind === "firing") announce(t("newAlert", { title: title(a) }));
          else if (k.kind === "resolved") announce(t("resolvedAlert", { title: title(a) }));
          else if (k.kind === "acknowledged") announce(t("ackedAlert", { who: k.actor || "", title: title(a) }));
        }
      }
    } finally {
      session.draining = false;
    }
  }

  function handleBlock(block) {
    let id = null, event = "message", comment = null;
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) { comment = line.slice(1).trim(); continue; }
      const at = line.indexOf(":");
      const field = at < 0 ? line : line.slice(0, at);
      const value = at < 0 ? "" : line.slice(at + 1).replace(/^ /, "");
      if (field === "id") id = value;
      else if (field === "event") event = value;
      else if (field === "data") data.push(value);
    }
    if (id) S.lastEventId = id; // ": live" carries the position too, for a quiet stream's resume
    if (comment === "live") { setLive("on"); loadAll(); return true; }
    if (event === "alert" && data.length) {
      let ev = null;
      try { ev = JSON.parse(data.join("\n")); } catch (_) { /* a malformed event: skip it */ }
      if (ev && (!S.dept || ev.owner === S.dept)) changed(ev);
    }
    return false;
  }

  // fetch, not EventSource: the stream needs the Authorization header
  async function follow() {
    const session = S;
    if (session.stream) session.stream.abort();
    const ctrl = new AbortController();
    session.stream = ctrl;
    let delay = 1000;
    while (!ctrl.signal.aborted && session === S) {
      setLive(S.live === "off" ? "off" : "connecting");
      try {
        const q = S.dept ? "?owner=" + encodeURIComponent(S.dept) : "";
        const headers = { Authorization: "Bearer " + S.token, Accept: "text/event-stream" };
        if (S.lastEventId) headers["Last-Event-ID"] = S.lastEventId;
        const res = await fetch(API + "/events/alerts" + q, { headers, signal: ctrl.signal, cache: "no-store" });
        if (res.status === 401) { if (session === S) signOut(t("expired")); return; }
        if (!res.ok || !res.body) throw new Error("stream " + res.status);
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += decoder.decode(value, { stream: true });
          // one line ending (\r\n, \r or \n) for the parser; a lone \r at the end may be half
          const tail = buf.endsWith("\r") ? "\r" : "";
          buf = buf.slice(0, buf.length - tail.length).replace(/\r\n?/g, "\n") + tail;
          let at;
          while ((at = buf.indexOf("\n\n")) >= 0) {
            const block = buf.slice(0, at);
            buf = buf.slice(at + 2);
            if (ctrl.signal.aborted || session !== S) return;
            if (handleBlock(block)) delay = 1000;
          }
        }
        if (!ctrl.signal.aborted && session === S) setLive("off");
      } catch (_) {
        if (ctrl.signal.aborted || session !== S) return;
        setLive("off");
      }
      await sleep(delay * (0.75 + Math.random() / 2)); // jittered: a restart is not a stampede
      delay = Math.min(delay * 2, 15000);
    }
  }

  // --- pages -----------------------------------------------------------------------------------

  function applyLang() {
    document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
    document.title = "UrbanPulse " + t(L.token ? "linkTitle" : "console");
    $("#brand-sub").textContent = t(L.token ? "linkTitle" : "console");
    const skip = $(".skip");
    if (skip) skip.textContent = t("skip");
  }

  function renderTools() {
    const tools = $("#tools");
    const items = [];
    if (S.me) {
      items.push(h("span", { id: "live", class: "live " + S.live, "data-state": S.live }, t("live_" + S.live)));
      items.push(h("span", { class: "who" }, `${S.me.name} · ${t("role_" + S.me.role)}`));
      if (!S.me.department && S.departments.length) {
        const select = h("select", { id: "dept", "aria-label": t("department"), onchange: (e) => chooseDept(e.target.value) },
          h("option", { value: "" }, t("allDepartments")), S.departments.map((d) => h("option", { value: d }, d)));
        select.value = S.dept;
        items.push(select);
      } else if (S.me.department) {
        items.push(h("span", { class: "who", id: "dept-name" }, S.me.department));
      }
    }
    items.push(h("button", { type: "button", class: "btn secondary", id: "lang", lang: lang === "zh" ? "en" : "zh-CN", "aria-label": t("switchLangLabel"), onclick: switchLang }, t("switchLang")));
    if (S.me) items.push(h("button", { type: "button", class: "btn secondary", id: "signout", onclick: () => signOut(t("signedOut")) }, t("signOut")));
    tools.replaceChildren(...items);
  }

  function switchLang() {
    lang = lang === "zh" ? "en" : "zh";
    localStorage.setItem(LANG_KEY, lang);
    applyLang();
    renderTools();
    if (L.token) renderLink();
    else if (S.me) { renderConsole(); renderAlerts(); renderKpis(); renderSilences(); }
    else renderSignIn();
    $("#lang").focus();
  }

  function renderConsole() {
    const tab = (view) => h("button", { type: "button", class: "btn", "aria-pressed": S.view === view ? "true" : "false", "data-view": view, onclick: () => chooseView(view) }, t(view));
    const main = $("#main");
    if (S.loaded) main.setAttribute("data-loaded", "true"); else main.removeAttribute("data-loaded");
    main.replaceChildren(
      h("section", { "aria-labelledby": "alerts-h" },
        h("h2", { id: "alerts-h", tabindex: "-1" }, t("alerts"), h("span", { id: "alert-count" })),
        h("div", { class: "tabs", role: "group", "aria-label": t("alerts") }, tab("open"), tab("closed")),
        h("p", { class: "hint", id: "alert-truncated" }),
        h("div", { id: "alert-list", class: "grid" }, h("p", { class: "hint" }, t("loading")))),
      h("section", { "aria-labelledby": "kpis-h" }, h("h2", { id: "kpis-h" }, t("kpis")), h("div", { id: "kpi-box" })),
      h("section", { "aria-labelledby": "silences-h" }, h("h2", { id: "silences-h", tabindex: "-1" }, t("silences")), h("div", { id: "silence-box" })));
  }

  function chooseView(view) {
    S.view = view;
    S.loaded = false;
    renderConsole();
    renderKpis(); renderSilences();
    loadAll();
    const b = document.querySelector(`[data-view="${view}"]`);
    if (b) b.focus();
  }

  function chooseDept(dept) {
    if (S.me && S.me.department) dept = S.me.department; // a department's token sees its own
    S.dept = dept;
    S.changed.clear(); S.touched.clear();
    S.kpis = null; S.loaded = false;
    writeHash();
    renderTools();
    renderConsole(); renderKpis(); renderSilences();
    const select = $("#dept");
    if (select) select.focus();
    S.lastEventId = null; // the new department's stream starts now; the listing has the rest
    follow();
  }

  function readHash() {
    const p = new URLSearchParams(location.hash.slice(1));
    if (!p.has("alert") && !p.has("dept")) return null; // not ours (the skip link, say)
    const id = Number(p.get("alert"));
    return { alert: Number.isInteger(id) && id > 0 ? id : null, dept: p.get("dept") || "" };
  }

  function writeHash() {
    const p = new URLSearchParams();
    if (S.dept && !(S.me && S.me.department)) p.set("dept", S.dept);
    if (S.focusAlert) p.set("alert", String(S.focusAlert));
    history.replaceState(null, "", p.toString() ? "#" + p : location.pathname);
  }

  function onHashChange() {
    const wanted = readHash();
    if (!wanted || !S.me) return;
    S.focusAlert = wanted.alert;
    const dept = S.me.department || wanted.dept;
    if (dept !== S.dept) chooseDept(dept);
    else loadAll();
  }

  function renderSignIn(message) {
    applyLang();
    renderTools();
    const form = h("form", { class: "signin", "aria-labelledby": "signin-h" },
      h("h2", { id: "signin-h" }, t("signInTitle")),
      message ? h("p", { class: "notice", role: "status" }, message) : null,
      h("div", { class: "field" },
        h("label", { for: "token" }, t("token")),
        h("input", { id: "token", name: "token", type: "password", autocomplete: "off", required: true, spellcheck: "false", "aria-describedby": "token-hint" }),
        h("p", { class: "hint", id: "token-hint" }, t("tokenHint"))),
      h("p", { class: "error", id: "signin-error", role: "alert" }),
      h("button", { type: "submit", class: "btn primary" }, t("signIn")));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const token = form.elements.token.value.trim();
      if (!token) { $("#signin-error").textContent = t("required"); return; }
      const session = S;
      session.token = token;
      try {
        session.me = await api("/me", { probe: true }); // a wrong token is this form's business
      } catch (e) {
        if (session !== S) return;
        session.token = null;
        renderSignIn(); // the same form, without the token just refused
        $("#signin-error").textContent = e.status === 401 ? t("expired") : t("failed", { why: e.message });
        return;
      }
      sessionStorage.setItem(TOKEN_KEY, token);
      start();
    });
    const main = $("#main");
    main.removeAttribute("data-loaded");
    main.replaceChildren(form);
    form.elements.token.focus();
  }

  function signOut(message) {
    if (dialogDone) dialogDone();
    if (S.stream) S.stream.abort();
    const keep = { focusAlert: S.focusAlert };
    S = fresh(); // whatever is still on its way belongs to the old object and stops there
    S.focusAlert = keep.focusAlert; // the alert asked for, not the department chosen
    if (!L.token) writeHash();
    sessionStorage.removeItem(TOKEN_KEY);
    if (!L.token) renderSignIn(message);
  }

  async function start() {
    const session = S;
    try {
      if (!session.me) session.me = await api("/me");
      const rules = await api("/rules");
      if (session !== S) return;
      S.rules = new Map(rules.map((r) => [r.id, r]));
      S.departments = [...new Set(rules.filter((r) => r.kind === "alert" && r.owner).map((r) => r.owner))].sort();
    } catch (e) {
      if (e.status !== 401 && session === S) renderSignIn(t("failed", { why: e.message }));
      return;
    }
    const wanted = readHash();
    if (wanted) S.focusAlert = wanted.alert;
    S.dept = S.me.department || (wanted ? wanted.dept : "");
    applyLang();
    renderTools();
    renderConsole(); renderKpis(); renderSilences();
    // the stream's first ": live" loads the lists (so nothing falls between the two); if the
    // stream cannot connect, load them anyway
    follow();
    setTimeout(() => { if (session === S && !S.loaded) loadAll(); }, 3000);
  }

  // --- the page of an acknowledgement link ---------------------------------------------------

  function renderLink(error) {
    const a = L.alert;
    const parts = [];
    if (error) parts.push(h("p", { class: "notice error", role: "alert" }, `${t("linkInvalid")}: ${error}`));
    if (a) {
      if (L.message) parts.push(h("p", { class: "notice done", role: "status", tabindex: "-1" }, L.message));
      else if (a.acknowledged) parts.push(h("p", { class: "notice", role: "status" }, t("linkAlready", { who: a.acknowledged.acked_by, at: when(a.acknowledged.acked_at) })));
      else if (!isOpen(a)) parts.push(h("p", { class: "notice", role: "status" }, t("linkClosed", { status: t("st_" + a.status) })));
      parts.push(card(a, { link: true }));
      if (isOpen(a) && !a.acknowledged) {
        const button = h("button", { type: "button", class: "btn primary big", id: "link-ack", "aria-describedby": `alert-${a.id}-title` }, t("ackBig"));
        button.addEventListener("click", () => linkAck(button));
        parts.push(h("p", {}, button));
      }
      parts.push(h("p", {}, h("a", { href: `/console#alert=${a.id}` }, t("openConsole"))));
    }
    $("#main").replaceChildren(h("section", { class: "link-card", "aria-label": t("linkTitle") }, parts));
  }

  async function linkAck(button) {
    button.disabled = true;
    try {
      const a = await api(`/ack/${L.token}`, { method: "POST", anonymous: true });
      L.alert = a;
      // ours, or did someone else acknowledge it a moment before?
      const ours = a.acknowledged && a.acknowledged.acked_by.startsWith("link:");
      L.message = ours ? "✓ " + t("ackDone") : "";
      renderLink();
      announce(L.message || t("linkAlready", { who: a.acknowledged.acked_by, at: when(a.acknowledged.acked_at) }));
    } catch (e) {
      // resolved meanwhile (409), or the link expired while the page was open (403)
      try { L.alert = await api(`/ack/${L.token}`, { anonymous: true }); } catch (_) { /* keep it */ }
      L.message = "";
      renderLink();
      flash(t("failed", { why: e.message }), "error");
    }
    const done = $(".notice");
    if (done) { done.setAttribute("tabindex", "-1"); done.focus(); }
  }

  async function linkMode() {
    applyLang();
    renderTools();
    try {
      L.alert = await api(`/ack/${L.token}`, { anonymous: true });
      renderLink();
      const button = $("#link-ack");
      if (button) button.focus();
    } catch (e) {
      renderLink(e.message);
    }
  }

  function supported() {
    return "fetch" in window && "AbortController" in window && "TextDecoder" in window
      && typeof Element.prototype.replaceChildren === "function"
      && typeof HTMLDialogElement === "function" && "sessionStorage" in window;
  }

  function boot() {
    // without what the page needs, the server's plain page (the link's form) stays
    if (!supported()) {
      if (!/^\/ack\//.test(location.pathname)) $("#main").textContent = t("oldBrowser");
      return;
    }
    const skip = $(".skip");
    skip.addEventListener("click", (ev) => { ev.preventDefault(); $("#main").focus(); });
    const m = /^\/ack\/([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)$/.exec(location.pathname);
    if (m) { L.token = m[1]; linkMode(); return; }
    S.token = sessionStorage.getItem(TOKEN_KEY);
    window.addEventListener("hashchange", onHashChange);
    if (S.token) start();
    else renderSignIn();
  }

  boot();
})();
