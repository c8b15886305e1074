/* 办不成事督办台: the supervisor queue. Plain JS; a supervisor's token comes in the URL fragment
 * (#token=…), is kept in sessionStorage and sent as a bearer token; every value from the server
 * is written with textContent. Every action is an event (EscalationReplied / Extended / Resolved). */
(function () {
  "use strict";
  var KEY = "onething.supervisor.token";
  var token = (function () {
    var m = /(?:^|[#&])token=([^&]+)/.exec(location.hash);
    if (m) {
      try { sessionStorage.setItem(KEY, decodeURIComponent(m[1])); } catch (e) {}
      history.replaceState(null, "", location.pathname + location.search);
      return decodeURIComponent(m[1]);
    }
    try { return sessionStorage.getItem(KEY); } catch (e) { return null; }
  })();
  var REASONS = { stuck: "办件停滞", overdue: "超期", rejected: "未办成", other: "其他" };
  var STATUS = { open: "待答复", replied: "已答复", resolved: "已办结" };
  var busy = 0;
  var timer = null;

  function $(id) { return document.getElementById(id); }
  function text(el, v) { el.textContent = v == null ? "" : String(v); return el; }
  function notice(msg) { var n = $("notice"); n.hidden = !msg; n.className = "notice error"; text(n, msg || ""); }
  function headers(extra) { var h = extra || {}; h.Authorization = "Bearer " + token; return h; }
  function errors(b) {
    try { return (b.errors || []).map(function (e) { return e.message_zh + " (" + e.path + ")"; }).join("；"); }
    catch (e) { return ""; }
  }

  function render(items, total) {
    var list = $("queue");
    text($("count"), "（" + items.length + (total > items.length && !$("search").value.trim() ? " / " + total : "") + "）");
    list.textContent = "";
    items.forEach(function (q) {
      var li = $("item-tpl").content.firstElementChild.cloneNode(true);
      li.setAttribute("data-escalation", q.escalation_id);
      li.classList.add(q.resolved_at ? "st-approved" : q.overdue ? "st-rejected" : "st-accepted");
      text(li.querySelector(".oversight-head"),
           (q.origin === "deadline" ? "【超期自动】" : "【群众反映】") + (REASONS[q.reason] || q.reason) +
           " · " + (q.receipt_no || q.case_id) + (q.service_id ? " · " + q.service_id : "") +
           (q.department ? " · " + q.department : "") + " · " + (STATUS[q.status] || q.status));
      text(li.querySelector(".oversight-meta"),
           "答复时限 " + q.reply_due + (q.reply_overdue ? "（已超期）" : "") + " · 办结时限 " + q.resolve_due +
           "（" + q.resolve_within + "个工作日" + (q.resolve_overdue ? "，已超期" : "") + "）");
      [["comment", q.comment, "反映内容："], ["reply", q.reply, "答复："], ["resolution", q.resolution, "办理结果："]]
        .forEach(function (f) { var p = li.querySelector("." + f[0]); p.hidden = !f[1]; text(p, f[1] ? f[2] + f[1] : ""); });
      var form = li.querySelector("form");
      form.hidden = !!q.resolved_at;
      li.querySelector("[data-act=reply]").disabled = !!q.replied_at;
      li.querySelector("[data-act=extend]").disabled = !q.extendable;
      form.addEventListener("click", function (ev) {
        var act = ev.target.getAttribute && ev.target.getAttribute("data-act");
        if (act) act_on(q, act, form);
      });
      list.appendChild(li);
    });
  }

  function act_on(q, act, form) {
    var value = form.querySelector("textarea").value.trim();
    var state = form.querySelector(".form-state");
    var body = act === "reply" ? { reply: value } : act === "resolve" ? { resolution: value }
      : { resolve_within_working_days: parseInt(form.querySelector("select[name=within]").value, 10), reason: value };
    busy++;
    text(state, "正在提交…");
    fetch("/api/v1/escalations/" + encodeURIComponent(q.escalation_id) + "/" + act, {
      method: "POST", headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(body)
    }).then(function (r) { return r.json().then(function (b) { if (!r.ok) throw b; return b; }); })
      .then(function () { state.className = "form-state ok"; text(state, "已提交"); })
      .catch(function (b) { state.className = "form-state error"; text(state, "提交失败：" + errors(b)); })
      .then(function () { busy = Math.max(0, busy - 1); setTimeout(load, 1500); });
  }

  function load() {
    clearTimeout(timer);
    if (!token) { notice("请从督办入口链接打开（链接中含有督办人员凭证）。"); return; }
    if (busy || document.activeElement && document.activeElement.tagName === "TEXTAREA") {
      timer = setTimeout(load, 5000);
      return;
    }
    var query = "status=" + $("filter").value;
    var receipt = $("search").value.trim();
    if (receipt) query += "&receipt_no=" + encodeURIComponent(receipt);
    fetch("/api/v1/escalations?" + query, { headers: headers(), cache: "no-store" })
      .then(function (r) { return r.json().then(function (b) { if (!r.ok) throw b; return b; }); })
      .then(function (b) { notice(null); render(b.items || [], b.total); })
      .catch(function (b) { notice("无法读取督办队列：" + (errors(b) || "网络错误")); })
      .then(function () { timer = setTimeout(load, 5000); });
  }

  $("filter").addEventListener("change", load);
  $("search").addEventListener("change", load);
  load();
})();
