/* 我的消息 (主动服务 / 免申即享): the citizen's inbox. Plain JS like the other pages: the applicant's
 * token comes in the URL fragment (#token=…), is kept in sessionStorage and sent as a bearer token;
 * every value from the server is written with textContent (never HTML). Accepting an offer submits
 * the merged form in one step (what the government holds is prefilled; the page asks only for the
 * rest); declining a granted benefit within its window cancels the department's task. */
(function () {
  "use strict";
  var KEY = "onething.applicant.token", LANG_KEY = "onething.lang";
  var token = (function () {
    var m = /(?:^|[#&])token=([^&]+)/.exec(location.hash);
    if (m) {
      try { sessionStorage.setItem(KEY, decodeURIComponent(m[1])); } catch (e) {}
      history.replaceState(null, "", location.pathname + location.search);
      return decodeURIComponent(m[1]);
    }
    try { return sessionStorage.getItem(KEY); } catch (e) { return null; }
  })();
  var lang = (function () { try { return localStorage.getItem(LANG_KEY) || "zh"; } catch (e) { return "zh"; } })();
  var T = {
    zh: { title: "我的消息 · 主动服务", subtitle: "免申即享 · 快申快享 · 三预清单", heading: "政府为您主动办理的事项",
          hint: "无需申请：符合条件的待遇已为您办理，不需要可在期限内谢绝；其余事项已按政府掌握的信息预填，确认即可提交。",
          empty: "暂无消息", accept: "确认提交", decline: "不需要，谢绝", grant: "免申即享", offer: "主动服务",
          pre_service: "三预清单", offered: "待确认", granted: "已为您办理", accepted: "已提交", declined: "已谢绝",
          lapsed: "已过期", will_do: "将为您办理：", prefilled: "已为您预填：", to_fill: "还需您填写：",
          list: "您将需要：", opens: "将于 {d} 开放办理", lapses: "请于 {d} 前确认", decline_until: "如不需要，请于 {d} 前谢绝",
          department: "办理部门：", sent: "正在提交…", done: "已提交，受理编号 {r}", declined_ok: "已谢绝",
          failed: "提交失败：", no_token: "请从政务服务平台登录后打开（链接中含有您的登录凭证）。",
          src: { id_card: "身份证", household_register: "户口簿", marriage_certificate: "结婚证", rule: "按政策",
                 person_register: "人口登记" }, required: "（必填）", case: "办件：", follow: "查看办理进度",
          task: { decline_window: "谢绝期满后交部门办理", to_execute: "即将交部门办理", sent: "部门办理中",
                  executed: "部门已办结", failed: "部门未能办理，请联系办理部门", cancelled: "已取消，部门不再办理" } },
    en: { title: "My inbox · proactive services", subtitle: "granted without asking · offered, prefilled · pre-service lists",
          heading: "What the government does for you, unasked",
          hint: "Benefits you qualify for are granted without an application; decline one you do not want within its window. Offers come with the form filled from what the government holds: confirm and it is filed.",
          empty: "Nothing here yet", accept: "Confirm and file", decline: "No thanks, decline", grant: "Granted",
          offer: "Offered", pre_service: "Pre-service list", offered: "to confirm", granted: "granted",
          accepted: "filed", declined: "declined", lapsed: "lapsed", will_do: "What will be done:",
          prefilled: "Filled in for you:", to_fill: "Still needed from you:", list: "What you will need:",
          opens: "opens on {d}", lapses: "confirm by {d}", decline_until: "decline by {d} if you do not want it",
          department: "Department: ", sent: "Filing…", done: "Filed, receipt {r}", declined_ok: "Declined",
          failed: "Not filed: ", no_token: "Open this page from the government service portal after logging in (the link carries your login).",
          src: { id_card: "ID card", household_register: "household register", marriage_certificate: "marriage certificate",
                 rule: "by the rule", person_register: "person register" }, required: " (required)", case: "Case: ", follow: "follow the case",
          task: { decline_window: "sent to the department when the decline window ends", to_execute: "being sent to the department",
                  sent: "with the department", executed: "done by the department",
                  failed: "the department could not do it; please contact it", cancelled: "cancelled; the department will not do it" } }
  };
  var timer = null, busy = 0, last = null;

  function $(id) { return document.getElementById(id); }
  function t(k) { return T[lang][k]; }
  function text(el, v) { el.textContent = v == null ? "" : String(v); return el; }
  function lbl(l) { return l ? (lang === "zh" ? l.zh : l.en) : ""; }
  function fmt(s, d) { return s.replace("{d}", d).replace("{r}", d); }
  function notice(msg) { var n = $("notice"); n.hidden = !msg; n.className = "notice error"; text(n, msg || ""); }
  function headers(extra) { var h = extra || {}; h.Authorization = "Bearer " + token; return h; }
  function errors(b) {
    try { return (b.errors || []).map(function (e) { return (lang === "zh" ? e.message_zh : e.message_en) +
                                                             (e.path ? " (" + e.path + ")" : ""); }).join(lang === "zh" ? "；" : "; "); }
    catch (e) { return ""; }
  }
  function el(tag, cls, value) { var e = document.createElement(tag); if (cls) e.className = cls; if (value != null) text(e, value); return e; }

  function chrome() {
    document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
    document.querySelectorAll("[data-i18n]").forEach(function (e) { text(e, t(e.getAttribute("data-i18n"))); });
    text($("lang"), lang === "zh" ? "EN" : "中文");
    $("lang").setAttribute("aria-label", lang === "zh" ? "English" : "中文");
  }

  function field(f) {
    var wrap = el("label", "field"), name = el("span", null, lbl(f.label) + (f.required ? t("required") : ""));
    var input;
    if (f.options && f.options.length) {
      input = document.createElement("select");
      input.appendChild(el("option", null, "—")).value = "";
      f.options.forEach(function (o) { var op = el("option", null, lbl(o.label)); op.value = o.value; input.appendChild(op); });
    } else {
      input = document.createElement("input");
      input.type = f.type === "date" ? "date" : "text";
    }
    input.name = f.field;
    wrap.appendChild(name); wrap.appendChild(input);
    var row = el("div", "item-field"); row.appendChild(wrap);   // one field a line on a phone
    return row;
  }

  function render(data) {
    var list = $("items");
    list.textContent = "";
    $("empty").hidden = data.items.length > 0;
    data.items.forEach(function (it) {
      var li = $("item-tpl").content.firstElementChild.cloneNode(true);
      li.setAttribute("data-offer", it.offer_id);
      li.setAttribute("data-rule", it.rule);
      li.setAttribute("data-state", it.state);
      li.classList.add(it.state === "granted" || it.state === "accepted" ? "st-approved" :
                       it.state === "offered" ? "st-accepted" : "st-cancelled");
      text(li.querySelector(".item-title"), t(it.outcome) + " · " + lbl(it.title));
      var badge = li.querySelector(".item-state");
      text(badge, t(it.state));
      badge.classList.add(it.state === "declined" || it.state === "lapsed" ? "st-cancelled" :
                          it.state === "offered" ? "st-accepted" : "st-approved");
      var meta = [];
      if (it.outcome === "grant") {   // and where its execution is: the department's worklist says the same
        meta.push(lbl(it.benefit), t("department") + lbl(it.department_label), T[lang].task[it.task] || "");
        li.setAttribute("data-task", it.task);
        if (it.can_decline) meta.push(fmt(t("decline_until"), it.decline_until));
      } else if (it.state === "offered") {
        meta.push(it.available_on > data.today ? fmt(t("opens"), it.available_on) : fmt(t("lapses"), it.lapses_on));
      }
      if (it.receipt_no) meta.push(t("case") + it.receipt_no);
      text(li.querySelector(".item-meta"), meta.join(" · "));
      if (it.case_id) {   // the case it became, on the status page (the applicant's own login opens it)
        var link = el("a", "status-link", t("follow"));
        link.href = "/status/" + encodeURIComponent(it.case_id) + "#token=" + encodeURIComponent(token);
        li.querySelector(".item-meta").appendChild(document.createTextNode(" "));
        li.querySelector(".item-meta").appendChild(link);
      }
      var body = li.querySelector(".item-body");
      if (it.outcome === "pre_service" && it.items.length) {
        body.appendChild(el("div", "service-dept", t("list")));
        var ul = el("ul", "missing-list");
        it.items.forEach(function (x) { ul.appendChild(el("li", "missing-item item-list", lang === "zh" ? x.reason_zh : x.reason_en)); });
        body.appendChild(ul);
      }
      if (it.outcome !== "grant" && it.state === "offered") {
        body.appendChild(el("div", "service-dept", t("will_do")));
        var sv = el("ul", "missing-list");
        it.services.forEach(function (s) { sv.appendChild(el("li", "missing-item", lbl(s.label))); });
        body.appendChild(sv);
        if (it.prefilled && it.prefilled.length) {
          body.appendChild(el("div", "service-dept", t("prefilled")));
          var dl = el("dl", "facts");
          it.prefilled.forEach(function (p) {
            var d = el("div"); d.appendChild(el("dt", null, lbl(p.label) + " · " + (t("src")[p.source] || p.source)));
            d.appendChild(el("dd", "prefilled-value", p.value === true ? "✓" :
                                             p.value && typeof p.value === "object" ? lbl(p.value) : p.value)); d.setAttribute("data-field", p.field);
            dl.appendChild(d);
          });
          body.appendChild(dl);
        }
      }
      var form = li.querySelector("form"), fields = li.querySelector(".item-fields");
      var acc = form.querySelector("[data-act=accept]"), dec = form.querySelector("[data-act=decline]");
      text(acc, t("accept")); text(dec, t("decline"));
      acc.hidden = !it.can_accept;
      dec.hidden = !it.can_decline;
      form.hidden = !(it.can_accept || it.can_decline);
      if (it.can_accept && it.to_fill) {
        fields.appendChild(el("div", "service-dept", t("to_fill")));
        it.to_fill.filter(function (f) { return f.required; }).forEach(function (f) { fields.appendChild(field(f)); });
      }
      form.addEventListener("click", function (ev) {
        var act = ev.target.getAttribute && ev.target.getAttribute("data-act");
        if (act) answer(it, act, form);
      });
      list.appendChild(li);
    });
  }

  function answer(it, act, form) {
    var state = form.querySelector(".upload-state"), body = {};
    if (act === "accept") {
      body.form = {};
      form.querySelectorAll("input, select").forEach(function (i) { if (i.value) body.form[i.name] = i.value; });
    } else {
      body.reason_code = "not_needed";
    }
    busy++;
    state.className = "upload-state"; text(state, t("sent"));
    fetch("/api/v1/inbox/" + encodeURIComponent(it.offer_id) + "/" + act, {
      method: "POST", headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(body)
    }).then(function (r) { return r.json().then(function (b) { if (!r.ok) throw b; return b; }); })
      .then(function (b) {
        state.className = "upload-state ok";
        text(state, act === "accept" ? fmt(t("done"), b.receipt_no) : t("declined_ok"));
      })
      .catch(function (b) { state.className = "upload-state error"; text(state, t("failed") + errors(b)); })
      .then(function () { busy = Math.max(0, busy - 1); setTimeout(load, 1500); });
  }

  function load() {
    clearTimeout(timer);
    if (!token) { notice(t("no_token")); return; }
    var focused = document.activeElement && /^(INPUT|SELECT)$/.test(document.activeElement.tagName);
    if (busy || focused) { timer = setTimeout(load, 3000); return; }
    fetch("/api/v1/inbox", { headers: headers() })
      .then(function (r) { return r.json().then(function (b) { if (!r.ok) throw b; return b; }); })
      .then(function (b) {
        notice(null);
        if (last && JSON.stringify(last) === JSON.stringify(b)) return;   // keep what is being typed
        last = b; render(b);
      })
      .catch(function (b) { notice(errors(b) || t("failed")); })
      .then(function () { timer = setTimeout(load, 5000); });
  }

  $("lang").addEventListener("click", function () {
    lang = lang === "zh" ? "en" : "zh";
    try { localStorage.setItem(LANG_KEY, lang); } catch (e) {}
    chrome();
    if (last) render(last);
  });
  chrome();
  load();
})();
