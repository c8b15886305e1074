/* 办件进度: the citizen status page. Plain JS, no libraries, no external requests.
 *
 * Opened from the receipt as /status/{case_id}#token=...: the token is moved from the URL
 * fragment into sessionStorage at once (and the fragment removed), then every request to
 * /api/v1/cases/{case_id} carries it as a bearer token. The page polls every few seconds, and
 * with the case /api/v1/cases/{case_id}/reads: 谁查看了我的数据 (which department, in which staff
 * role, when and why; never the staff member).
 * Everything from the server is written with textContent, never as HTML.
 */
(function () {
  "use strict";

  // the page's sentences in both languages: portal/status_strings.js
  var POLL_MS = window.ONETHING_STATUS.POLL_MS;
  var STRINGS = window.ONETHING_STATUS.STRINGS;
  var FINAL = { approved: 1, rejected: 1, blocked: 1, cancelled: 1 };
  var GRADES = [["very_satisfied", "非常满意", "Very satisfied"], ["satisfied", "满意", "Satisfied"],
                ["basically_satisfied", "基本满意", "Basically satisfied"], ["dissatisfied", "不满意", "Dissatisfied"],
                ["very_dissatisfied", "非常不满意", "Very dissatisfied"]];
  var oversightSignature = null;
  var sendingForm = 0;

  var caseId = decodeURIComponent((location.pathname.split("/status/")[1] || "").split("/")[0]);
  var tokenKey = "onething.token." + caseId;
  var lang = pickLang();
  var view = null;
  var lastError = null;
  var timer = null;
  var busyUploads = 0;
  var missingSignature = null;
  var TIMELINE_SHORT = 6;
  var timelineAll = false;
  var lastRefreshed = null;
  var reads = null;

  function pickLang() {
    var q = new URLSearchParams(location.search).get("lang");
    if (q === "en" || q === "zh") return q;
    try { var saved = localStorage.getItem("onething.lang"); if (saved === "en" || saved === "zh") return saved; } catch (e) {}
    return "zh";
  }

  function takeToken() {
    var m = /(?:^|[#&])token=([^&]+)/.exec(location.hash);
    if (m) {
      try { sessionStorage.setItem(tokenKey, decodeURIComponent(m[1])); } catch (e) {}
      history.replaceState(null, "", location.pathname + location.search);  // keep it out of the address bar
      return decodeURIComponent(m[1]);
    }
    try { return sessionStorage.getItem(tokenKey); } catch (e) { return null; }
  }
  var token = takeToken();

  // The receipt's link carries a read-only token (scope "status:read", bound to this case): it shows
  // the case, and the forms that act on it (supply, rate, report) ask for the applicant's own login.
  function readOnlyToken(tok) {
    try {
      var claims = JSON.parse(atob(tok.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
      return claims.scope === "status:read" || !!claims.case_id;
    } catch (e) { return false; }
  }
  var readOnly = !!token && readOnlyToken(token);

  function t(key) { return STRINGS[lang][key]; }
  function pick(label) { return label ? (label[lang] || label.zh || label.en || "") : ""; }
  function $(id) { return document.getElementById(id); }
  function text(el, value) { el.textContent = value == null ? "" : String(value); return el; }
  function el(tag, cls, value) { var e = document.createElement(tag); if (cls) e.className = cls; if (value != null) e.textContent = value; return e; }

  // times as the applicant's clock shows them in China, whatever the phone's time zone
  var CHINA_TIME = (function () {
    try {
      return new Intl.DateTimeFormat("en-CA", { timeZone: "Asia/Shanghai", year: "numeric", month: "2-digit",
        day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });
    } catch (e) { return null; }
  })();

  function chinaParts(d) {
    var out = {};
    if (CHINA_TIME) {
      CHINA_TIME.formatToParts(d).forEach(function (part) { out[part.type] = part.value; });
      return out;
    }
    function p(n) { return (n < 10 ? "0" : "") + n; }
    return { year: d.getFullYear(), month: p(d.getMonth() + 1), day: p(d.getDate()), hour: p(d.getHours()),
             minute: p(d.getMinutes()), second: p(d.getSeconds()) };
  }

  function fmtTime(iso) {
    if (!iso) return "—";
    var d = new Date(iso);
    if (isNaN(d)) return iso;
    var p = chinaParts(d);
    return p.year + "-" + p.month + "-" + p.day + " " + p.hour + ":" + p.minute;
  }

  function clock(d) { var p = chinaParts(d); return p.hour + ":" + p.minute + ":" + p.second; }

  function daysText(n) {
    if (n == null) return "";
    if (n < 0) return t("days_over")(-n);
    if (n === 0) return t("due_today");
    return t("days_left")(n);
  }

  function paren(s) { return lang === "zh" ? "（" + s + "）" : " (" + s + ")"; }

  function statusClass(status) { return "st-" + String(status || "unknown").replace(/[^a-z_]/g, ""); }

  function applyStaticText() {
    document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
    document.title = t("title");
    var nodes = document.querySelectorAll("[data-i18n]");
    for (var i = 0; i < nodes.length; i++) text(nodes[i], t(nodes[i].getAttribute("data-i18n")));
    var b = $("lang");
    text(b, t("lang_button"));
    b.setAttribute("aria-label", t("lang_aria"));
  }

  function notice(message, kind) {
    var n = $("notice");
    if (!message) { n.hidden = true; return; }
    n.hidden = false;
    n.className = "notice " + (kind || "info");
    text(n, message);
  }

  function render() {
    applyStaticText();
    text($("refresh-state"), lastRefreshed && view && !lastError ? t("refreshed")(clock(lastRefreshed)) : "");
    if (!view) {
      notice(lastError ? t(lastError) : t("loading"), lastError ? "error" : "info");
      return;
    }
    // summary
    $("summary").hidden = false;
    text($("bundle-label"), pick(view.bundle_label));
    var badge = $("case-status");
    badge.className = "badge " + statusClass(view.outcome && view.outcome !== "all_approved" ? view.outcome : view.status);
    text(badge, pick(view.status_label));
    text($("receipt-no"), view.receipt_no);
    text($("submitted-at"), fmtTime(view.submitted_at));
    var open = view.status === "open" || view.status === "awaiting_applicant";
    var due = "—";
    if (view.status === "completed" && view.completed_at) due = t("completed_at") + fmtTime(view.completed_at);
    else if (view.due_date) due = view.due_date + (open && view.working_days_left != null ? paren(daysText(view.working_days_left)) : "");
    text($("due-date"), due);
    var services = view.services || [];
    var decided = services.filter(function (s) { return FINAL[s.status]; }).length;
    text($("progress"), t("done_of")(decided, services.length));
    $("meter-bar").style.width = (services.length ? Math.round(100 * decided / services.length) : 0) + "%";

    // banner
    if (lastError === "offline") notice(t("offline"), "warn");
    else if (view.status === "awaiting_applicant") notice(t("awaiting"), "warn");
    else if (view.status === "completed" && view.outcome === "partly_approved") notice(t("partly"), "warn");
    else if (view.status === "completed" && view.outcome === "none_approved") notice(t("none_done"), "error");
    else if (view.status === "completed") notice(t("completed"), "ok");
    else if (view.status === "withdrawn") notice(t("withdrawn"), "info");
    else if (view.provisional) notice(t("provisional"), "info");
    else if (view.refused) notice(t("refused_open"), "warn");
    else notice(null);

    renderReadOnly();
    renderMissing(view.missing || []);
    renderRefused(view.refused);
    renderServices(shownOrder(services));
    renderOversight();
    renderReads();
    renderTimeline(view.timeline || []);
  }

  // 谁查看了我的数据: each line is a department and a staff role, when, what and why
  function renderReads() {
    $("reads-card").hidden = reads === null;
    if (reads === null) return;
    var ul = $("reads");
    ul.textContent = "";
    $("reads-empty").hidden = reads.length > 0;
    reads.forEach(function (r) {
      var li = el("li", "oversight-item");
      li.setAttribute("data-read-kind", r.kind);
      li.appendChild(el("div", "oversight-head", pick(r.department_label) + " · " + pick(r.role_label)));
      var when = fmtTime(r.last_at) + (r.times > 1 ? paren(t("reads_times")(r.times)) : "");
      li.appendChild(el("div", "oversight-meta", when));
      li.appendChild(el("p", "oversight-text", pick(r.kind_label) + (lang === "zh" ? "，" : ", ") + pick(r.purpose_label)));
      if ((r.field_labels || []).length) {
        li.appendChild(el("div", "oversight-meta", t("reads_what") + r.field_labels.map(pick).join(lang === "zh" ? "、" : ", ")));
      }
      ul.appendChild(li);
    });
  }

  function refreshReads() {
    fetch("/api/v1/cases/" + encodeURIComponent(caseId) + "/reads", { headers: authHeaders(), cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (body) { if (body) { reads = body.reads || []; if (view) renderReads(); } })
      .catch(function () {});
  }

  function renderReadOnly() {
    var note = $("read-only-note");
    if (!note) {
      note = el("p", "notice info");
      note.id = "read-only-note";
      $("summary").parentNode.insertBefore(note, $("summary").nextSibling);
    }
    note.hidden = !readOnly;
    text(note, t("read_only"));
  }

  function gradeLabel(code) {
    for (var i = 0; i < GRADES.length; i++) if (GRADES[i][0] === code) return lang === "zh" ? GRADES[i][1] : GRADES[i][2];
    return code;
  }

  function departmentName(code) {
    var s = (view.services || []).filter(function (x) { return x.department === code; })[0];
    return s ? pick(s.department_label) : code;
  }

  // 好差评 and 办不成事: the forms are built once per language and state, never while in use
  function renderOversight() {
    var canEscalate = !readOnly && !view.provisional && view.status !== "withdrawn";
    var canRate = !readOnly && !!view.can_rate;
    var rating = view.rating;
    var signature = lang + "|" + view.status + "|" + canRate + "|" + !!rating + "|" + canEscalate;
    if (!sendingForm && signature !== oversightSignature) {
      oversightSignature = signature;
      buildRatingForm();
      buildEscalationForm();
    }
    $("rating-card").hidden = !(canRate || rating);
    $("rating-form").hidden = !canRate;
    $("rating-result").hidden = !rating;
    if (rating) {
      text($("rating-grade"), t("rated") + gradeLabel(rating.grade));
      var list = $("rectifications");
      list.textContent = "";
      (rating.rectifications || []).forEach(function (r) {
        var li = el("li", "oversight-item " + (r.status === "replied" ? "st-approved" : "st-accepted"));
        var who = departmentName(r.department);
        if (r.status === "replied") {
          li.appendChild(el("div", null, t("rect_replied")(who)));
          li.appendChild(el("p", "oversight-text", r.reply));
        } else {
          li.appendChild(el("div", null, t("rect_open")(who, r.due_date)));
        }
        list.appendChild(li);
      });
    }
    var escalations = view.escalations || [];
    $("escalation-card").hidden = !(canEscalate || escalations.length);
    $("escalate").hidden = !canEscalate;
    var ul = $("escalations");
    ul.textContent = "";
    escalations.slice().reverse().forEach(function (e) {
      var li = el("li", "oversight-item " + (e.status === "resolved" ? "st-approved" : e.overdue ? "st-rejected" : "st-accepted"));
      li.setAttribute("data-escalation", e.escalation_id);
      var what = e.origin === "deadline" ? t("esc_auto") : t("esc_mine");
      if (e.service_id) {
        var s = (view.services || []).filter(function (x) { return x.service_id === e.service_id; })[0];
        if (s) what += lang === "zh" ? "：" + pick(s.label) : ": " + pick(s.label);
      }
      li.appendChild(el("div", "oversight-head", what));
      li.appendChild(el("span", "badge " + (e.status === "resolved" ? "st-approved" : "st-accepted"), t("esc_status")[e.status] || e.status));
      if (e.status !== "resolved") li.appendChild(el("div", "oversight-meta", t("esc_due")(e.reply_due, e.resolve_due)));
      if (e.reply) li.appendChild(el("p", "oversight-text", t("esc_reply") + e.reply));
      if (e.resolution) li.appendChild(el("p", "oversight-text", t("esc_resolution") + e.resolution));
      ul.appendChild(li);
    });
  }

  function gradeSelect(name) {
    var select = el("select");
    select.name = name;
    select.appendChild(el("option", null, t("not_rated"))).value = "";
    GRADES.forEach(function (g) { select.appendChild(el("option", null, lang === "zh" ? g[1] : g[2])).value = g[0]; });
    return select;
  }

  function buildRatingForm() {
    var box = $("grades");
    while (box.children.length > 1) box.removeChild(box.lastChild);
    GRADES.forEach(function (g) {
      var label = el("label", "grade");
      var input = el("input");
      input.type = "radio"; input.name = "grade"; input.value = g[0];
      label.appendChild(input);
      label.appendChild(el("span", null, lang === "zh" ? g[1] : g[2]));
      box.appendChild(label);
    });
    var per = $("service-grades");
    per.textContent = "";
    (view.services || []).forEach(function (s) {
      if (s.status !== "approved" && s.status !== "rejected") return;
      var label = el("label", "field service-grade");
      label.appendChild(el("span", null, pick(s.label) + " · " + pick(s.department_label)));
      var select = gradeSelect("service:" + s.service_id);
      label.appendChild(select);
      per.appendChild(label);
    });
    text($("rating-form").querySelector(".form-state"), "");
  }

  function buildEscalationForm() {
    var form = $("escalation-form");
    var select = form.querySelector("select[name=service_id]");
    while (select.options.length > 1) select.remove(1);
    (view.services || []).forEach(function (s) {
      var o = el("option", null, pick(s.label));
      o.value = s.service_id;
      select.appendChild(o);
    });
    text(form.querySelector(".form-state"), "");
  }

  function send(form, path, body, done) {
    var state = form.querySelector(".form-state");
    var button = form.querySelector("button[type=submit]");
    sendingForm++;
    button.disabled = true;
    state.className = "form-state";
    text(state, t("sending"));
    fetch(path, { method: "POST", headers: authHeaders({ "Content-Type": "application/json" }), body: JSON.stringify(body) })
      .then(function (r) { return r.json().then(function (b) { if (!r.ok) throw b; return b; }); })
      .then(function () { state.className = "form-state ok"; text(state, done); form.reset(); })
      .catch(function (b) { state.className = "form-state error"; text(state, t("failed") + (errorText(b) || "")); })
      .then(function () { button.disabled = false; sendingForm = Math.max(0, sendingForm - 1); setTimeout(refresh, 500); });
  }

  $("rating-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var form = ev.target;
    var picked = form.querySelector("input[name=grade]:checked");
    if (!picked) { var st = form.querySelector(".form-state"); st.className = "form-state error"; text(st, t("pick_grade")); return; }
    var services = [];
    form.querySelectorAll("select[name^='service:']").forEach(function (sel) {
      if (sel.value) services.push({ service_id: sel.name.slice(8), grade: sel.value });
    });
    var comment = form.querySelector("textarea[name=comment]").value.trim();
    send(form, "/api/v1/cases/" + encodeURIComponent(caseId) + "/rating",
         { grade: picked.value, comment: comment || null, services: services }, t("rating_thanks"));
  });

  $("escalation-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var form = ev.target;
    var comment = form.querySelector("textarea[name=comment]").value.trim();
    var service = form.querySelector("select[name=service_id]").value;
    send(form, "/api/v1/cases/" + encodeURIComponent(caseId) + "/escalations",
         { reason: form.querySelector("select[name=reason]").value, service_id: service || null, comment: comment || null },
         t("escalated"));
  });

  function renderMissing(missing) {
    var card = $("missing");
    var list = $("missing-list");
    var open = view.status === "open" || view.status === "awaiting_applicant";
    card.hidden = !missing.length || !open;
    // never rebuild the forms while the applicant is using them: only when what is missing changed
    var signature = lang + "|" + view.status + "|" + JSON.stringify(missing.map(function (m) { return [m.code, m.services]; }));
    if (busyUploads || signature === missingSignature) return;
    missingSignature = signature;
    list.textContent = "";
    var byId = {};
    (view.services || []).forEach(function (s) { byId[s.service_id] = s; });
    missing.forEach(function (m) {
      var node = document.getElementById("missing-tpl").content.firstElementChild.cloneNode(true);
      node.setAttribute("data-material", m.code);
      text(node.querySelector(".missing-label"), pick(m.label) || m.code);
      var names = (m.services || []).map(function (sid) { return byId[sid] ? pick(byId[sid].label) : sid; });
      text(node.querySelector(".missing-for"), names.length ? t("needed_by") + names.join(lang === "zh" ? "、" : ", ") : "");
      var form = node.querySelector("form");
      if (readOnly) {  // what is missing is shown; supplying it needs the applicant's own login
        form.hidden = true;
        list.appendChild(node);
        return;
      }
      var input = form.querySelector("input[type=file]");
      input.id = "file-" + m.code;
      input.setAttribute("aria-label", (pick(m.label) || m.code) + " — " + t("choose_file"));
      text(form.querySelector(".file-name"), t("choose_file"));
      text(form.querySelector("button"), t("upload"));
      input.addEventListener("change", function () {
        text(form.querySelector(".file-name"), input.files.length ? input.files[0].name : t("choose_file"));
      });
      form.addEventListener("submit", function (ev) { ev.preventDefault(); upload(m.code, form, input); });
      list.appendChild(node);
    });
  }

  // the refused services first, then what they blocked, then the rest (each group in its order)
  var ORDER = { rejected: 0, blocked: 1 };
  function shownOrder(services) {
    return services.map(function (s, i) { return [s, i]; }).sort(function (a, b) {
      var ra = ORDER[a[0].status] != null ? ORDER[a[0].status] : 2, rb = ORDER[b[0].status] != null ? ORDER[b[0].status] : 2;
      return ra - rb || a[1] - b[1];
    }).map(function (p) { return p[0]; });
  }

  function reasonText(s) { return s.reason_label ? pick(s.reason_label) : (s.reason || ""); }

  // 未办成的事项: what was refused, why (in this page's language), what it blocked, and what to do
  function renderRefused(refused) {
    var card = $("refused");
    card.hidden = !refused;
    if (!refused) return;
    var list = $("refused-list");
    list.textContent = "";
    var sep = lang === "zh" ? "、" : ", ";
    refused.services.forEach(function (r) {
      var li = el("li", "refused-item");
      li.setAttribute("data-refused", r.service_id);
      li.appendChild(el("div", "refused-head", pick(r.label) + " · " + pick(r.department_label)));
      li.appendChild(el("p", "refused-reason", t("refused_why") + reasonText(r)));
      if (r.advice) li.appendChild(el("p", "refused-advice", t("refused_advice") + pick(r.advice)));
      if ((r.blocked || []).length) {
        li.appendChild(el("p", "refused-blocked", t("refused_blocked") + r.blocked.map(function (b) { return pick(b.label); }).join(sep)));
      }
      list.appendChild(li);
    });
    var steps = $("refused-steps");
    steps.textContent = "";
    (refused.next_steps || []).forEach(function (step) {
      var li = el("li", "refused-step");
      li.setAttribute("data-step", step.kind);
      li.appendChild(el("span", null, pick(step.label)));
      if (step.kind === "escalate" && !readOnly && view.status !== "withdrawn") {
        var b = el("button", "more", t("refused_escalate"));
        b.type = "button";
        b.addEventListener("click", function () { openEscalation(step.service_id); });
        li.appendChild(b);
      }
      if (step.kind === "reapply" && (step.services || []).length) {
        var names = step.services.map(function (sid) {
          var s = (view.services || []).filter(function (x) { return x.service_id === sid; })[0];
          return s ? pick(s.label) : sid;
        });
        li.appendChild(el("div", "oversight-meta", t("refused_reapply_services") + names.join(sep)));
      }
      steps.appendChild(li);
    });
  }

  function openEscalation(serviceId) {
    var details = $("escalate");
    details.open = true;
    var form = $("escalation-form");
    form.querySelector("select[name=reason]").value = "rejected";
    if (serviceId) form.querySelector("select[name=service_id]").value = serviceId;
    details.scrollIntoView({ block: "start" });
  }

  function renderServices(services) {
    var list = $("services");
    $("services-card").hidden = !services.length;
    list.textContent = "";
    var labels = view.output_labels || {};
    services.forEach(function (s) {
      var node = document.getElementById("service-tpl").content.firstElementChild.cloneNode(true);
      node.setAttribute("data-service", s.service_id);
      node.classList.add(statusClass(s.status));
      text(node.querySelector(".service-label"), pick(s.label));
      text(node.querySelector(".service-dept"), pick(s.department_label));
      var badge = node.querySelector(".badge");
      badge.className = "badge " + statusClass(s.status);
      text(badge, pick(s.status_label) || s.status);
      var meta = [];
      if (s.attempt > 1) meta.push(t("attempt")(s.attempt));
      if (s.due_date && !FINAL[s.status]) meta.push(t("due") + s.due_date + (s.working_days_left != null ? paren(daysText(s.working_days_left)) : ""));
      text(node.querySelector(".service-meta"), meta.join(" · "));
      if (reasonText(s)) {
        var r = node.querySelector(".service-reason"); r.hidden = false;
        // a correction's advice says how to supply (a refusal's is in the 未办成的事项 card above)
        var advice = s.status === "correction_requested" && s.reason_advice ? " " + t("refused_advice") + pick(s.reason_advice) : "";
        text(r, t("reason") + reasonText(s) + advice);
      }
      if (s.missing && s.missing.length) {
        var ul = node.querySelector(".service-missing"); ul.hidden = false;
        s.missing.forEach(function (m) { ul.appendChild(el("li", null, t("missing_here") + (pick(m.label) || m.code))); });
      }
      var outputs = s.outputs || {};
      var keys = Object.keys(outputs);
      if (keys.length) {
        var dl = node.querySelector(".service-outputs"); dl.hidden = false;
        keys.forEach(function (k) {
          var row = el("div");
          row.appendChild(el("dt", null, pick(labels[k]) || k));
          row.appendChild(el("dd", null, outputs[k]));
          dl.appendChild(row);
        });
      }
      list.appendChild(node);
    });
  }

  function renderTimeline(items) {
    var list = $("timeline");
    $("timeline-card").hidden = !items.length;
    list.textContent = "";
    var newestFirst = items.slice().reverse();
    var more = $("timeline-more");
    more.hidden = timelineAll || newestFirst.length <= TIMELINE_SHORT;
    text(more, t("show_all")(newestFirst.length));
    if (!timelineAll) newestFirst = newestFirst.slice(0, TIMELINE_SHORT);
    newestFirst.forEach(function (item) {
      var li = el("li", "tl-item");
      li.appendChild(el("time", "tl-time", fmtTime(item.occurred_at)));
      li.appendChild(el("div", "tl-text", lang === "zh" ? (item.text_zh || item.text_en) : (item.text_en || item.text_zh)));
      list.appendChild(li);
    });
  }

  function authHeaders(extra) {
    var h = extra || {};
    h.Authorization = "Bearer " + token;
    return h;
  }

  function errorText(body) {
    try { return (body.errors || []).map(function (e) { return lang === "zh" ? e.message_zh : e.message_en; }).join("；"); }
    catch (e) { return ""; }
  }

  function upload(code, form, input) {
    var state = form.querySelector(".upload-state");
    var button = form.querySelector("button");
    if (!input.files.length) { state.className = "upload-state error"; text(state, t("pick_first")); return; }
    var file = input.files[0];
    if (file.size > 10 * 1024 * 1024) { state.className = "upload-state error"; text(state, t("too_large")); return; }
    busyUploads++;
    button.disabled = true;
    state.className = "upload-state";
    text(state, t("uploading"));
    fetch("/api/v1/documents", { method: "POST", body: file, headers: authHeaders({ "Content-Type": file.type || "application/octet-stream" }) })
      .then(function (r) { return r.json().then(function (b) { if (!r.ok) throw b; return b; }); })
      .then(function (doc) {
        var materials = {};
        materials[code] = { source: "uploaded", ref: doc.ref };
        return fetch("/api/v1/cases/" + encodeURIComponent(caseId) + "/materials", {
          method: "POST", headers: authHeaders({ "Content-Type": "application/json" }),
          body: JSON.stringify({ materials: materials })
        });
      })
      .then(function (r) { return r.json().then(function (b) { if (!r.ok) throw b; return b; }); })
      .then(function () {
        state.className = "upload-state ok";
        text(state, t("uploaded"));
        form.classList.add("done");
      })
      .catch(function (body) {
        state.className = "upload-state error";
        text(state, t("upload_failed") + (errorText(body) || ""));
        button.disabled = false;
      })
      .then(function () { busyUploads = Math.max(0, busyUploads - 1); setTimeout(refresh, 300); });
  }

  function refresh() {
    clearTimeout(timer);
    if (!caseId || !token) { lastError = "no_token"; view = null; render(); return; }
    fetch("/api/v1/cases/" + encodeURIComponent(caseId), { headers: authHeaders(), cache: "no-store" })
      .then(function (r) {
        if (r.status === 401) { lastError = "expired"; view = null; return null; }
        if (r.status === 404) { lastError = "not_found"; view = null; return null; }
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      })
      .then(function (body) {
        if (body) { view = body; lastError = null; lastRefreshed = new Date(); refreshReads(); }
        render();
        if (body || lastError === null) timer = setTimeout(refresh, POLL_MS);
      })
      .catch(function () {
        lastError = "offline";
        render();
        timer = setTimeout(refresh, POLL_MS);
      });
  }

  $("lang").addEventListener("click", function () {
    lang = lang === "zh" ? "en" : "zh";
    try { localStorage.setItem("onething.lang", lang); } catch (e) {}
    render();
  });
  $("timeline-more").addEventListener("click", function () { timelineAll = true; render(); });
  document.addEventListener("visibilitychange", function () { if (!document.hidden) refresh(); });

  render();
  refresh();
})();
