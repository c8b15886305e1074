/* 晴雨表: the KPIs page. Plain JS; a supervisor's or department's token comes in the URL fragment
 * (#token=…), is kept in sessionStorage and sent as a bearer token; every value from the server is
 * written with textContent (no inline script or style: the page runs under a strict CSP). */
(function () {
  "use strict";
  var KEY = "onething.kpis.token";
  var token = (function () {
    var m = /(?:^|[#&])token=([^&]+)/.exec(location.hash);
    if (m) {
      try { sessionStorage.setItem(KEY, decodeURIComponent(m[1])); } catch (e) {}
      history.replaceState(null, "", location.pathname + location.search);
      return decodeURIComponent(m[1]);
    }
    try { return sessionStorage.getItem(KEY); } catch (e) { return null; }
  })();
  var GRADES = ["very_satisfied", "satisfied", "basically_satisfied", "dissatisfied", "very_dissatisfied"];

  function $(id) { return document.getElementById(id); }
  function text(el, v) { el.textContent = v == null ? "" : String(v); return el; }
  function notice(msg) { var n = $("notice"); n.hidden = !msg; n.className = "notice error"; text(n, msg || ""); }
  function pct(v) { return v == null ? "—" : (Math.round(v * 1000) / 10) + "%"; }
  function num(v, digits) {
    if (v == null) return "—";
    var f = Math.pow(10, digits == null ? 1 : digits);
    return String(Math.round(v * f) / f);
  }
  function label(g) {
    if (g.key == null) return "（未知 unknown）";
    return g.label ? g.label.zh + " " + g.label.en : g.key;
  }
  function cells(tr, values, cls) {
    values.forEach(function (v, i) {
      var td = document.createElement(i === 0 ? "th" : "td");
      text(td, v);
      if (cls && cls[i]) td.className = cls[i];
      tr.appendChild(td);
    });
  }
  function rateClass(v) { return v == null ? "" : v >= 0.95 ? "kpi-good" : v >= 0.8 ? "kpi-warn" : "kpi-bad"; }

  function render(body) {
    var rows = body.groups.slice();
    var total = Object.assign({ key: "__total", label: { zh: "合计", en: "Total" } }, body.total);
    rows.push(total);
    var t1 = $("timeliness").querySelector("tbody"), t2 = $("quality").querySelector("tbody");
    t1.textContent = ""; t2.textContent = "";
    rows.forEach(function (g) {
      var tr = document.createElement("tr");
      if (g.key === "__total") tr.className = "kpi-total";
      cells(tr, [label(g), g.received, g.completed, g.withdrawn, g.open, g.on_time, g.overdue, pct(g.on_time_rate),
                 num(g.days_avg), g.days_p90 == null ? "—" : g.days_p90, num(g.promised_days), num(g.statutory_days)],
            { 7: rateClass(g.on_time_rate), 6: g.overdue ? "kpi-bad" : "" });
      t1.appendChild(tr);
      var tr2 = document.createElement("tr");
      if (g.key === "__total") tr2.className = "kpi-total";
      cells(tr2, [label(g), g.materials_saved, num(g.materials_saved_avg), num(g.materials_uploaded_avg), g.rated,
                  GRADES.map(function (k) { return g.ratings[k]; }).join(" / "), pct(g.satisfaction_rate),
                  g.deadlines_breached, g.escalations + "（" + g.escalations_by_applicant + "）"],
            { 6: rateClass(g.satisfaction_rate) });
      t2.appendChild(tr2);
    });
    text($("scope"), "受理日 " + (body.date_from || "…") + " 至 " + (body.date_to || "…") + " · 统计口径：" +
         (body.level === "service" ? "部门事项 services" : "一件事办件 cases") + " · 超期判断日 as of " + body.today +
         (body.filters.department ? " · 部门 " + body.filters.department : ""));
    var card = $("reform-card"), tb = $("reform").querySelector("tbody");
    tb.textContent = "";
    var bundles = body.group_by === "bundle" ? body.groups.filter(function (g) { return g.catalog; }) : [];
    card.hidden = !bundles.length;
    bundles.forEach(function (g) {
      var c = g.catalog, tr = document.createElement("tr");
      cells(tr, [label(g), num(c.statutory_days) + " → " + num(c.promised_days),
                 num(g.days_avg) + " / " + (g.days_p90 == null ? "—" : g.days_p90),
                 num(c.materials_before, 0) + " → " + num(c.materials_after, 0), num(g.materials_uploaded_avg),
                 pct(c.time_reduction), pct(c.materials_reduction)]);
      tb.appendChild(tr);
    });
  }

  function load() {
    if (!token) { notice("请从晴雨表入口链接打开（链接中含有凭证）。Open this page from a link with a token."); return; }
    var form = $("filters"), params = new URLSearchParams();
    ["group_by", "date_from", "date_to", "bundle", "region"].forEach(function (n) {
      var v = form.elements[n].value.trim();
      if (v) params.set(n, v);
    });
    fetch("/api/v1/kpis?" + params.toString(), { headers: { Authorization: "Bearer " + token } })
      .then(function (r) { return r.json().then(function (b) { if (!r.ok) throw b; return b; }); })
      .then(function (b) { notice(""); render(b); })
      .catch(function (b) {
        var msg = "";
        try { msg = (b.errors || []).map(function (e) { return e.message_zh + " / " + e.message_en + " (" + e.path + ")"; }).join("；"); }
        catch (e) {}
        notice(msg || "无法读取晴雨表 / could not load the KPIs");
      });
  }

  $("filters").addEventListener("submit", function (ev) { ev.preventDefault(); load(); });
  load();
})();
