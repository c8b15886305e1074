/* 智问智搜: the portal's home page. A search box over GET /api/v1/search; each result links to the
   bundle's merged form (一表申报). Chinese or English (?lang=en, remembered like the status page).
   The query goes in the address (?q=…), so a result page can be shared or reloaded. */
(function () {
  "use strict";
  var STRINGS = {
    zh: {
      brand: "高效办成一件事", page_title: "智问智搜", inbox: "我的消息", heading: "您要办什么事？", label: "搜索要办的事",
      placeholder: "说说您的情况，例如：生孩子要办什么", go: "搜索", try: "试试：", results: "为您找到",
      services: "相关单项事项", lang_button: "EN", lang_aria: "Switch to English",
      matched: "匹配：", apply: "一表申报", offline: "暂未开通网上申报", individual: "个人事项",
      enterprise: "企业事项", none: "没有找到相关的事。换个说法试试，比如“生小孩”“开饭店”“退休”。",
      details: "要准备什么", hide: "收起", services_n: "项事项，一表申报", fields_n: "项信息",
      materials: "材料：", e_license: "（电子证照，免提交）", departments: "涉及部门：", searching: "正在查找…", failed: "搜索暂时不可用，请稍后再试。", limited: "搜索太频繁了，请稍等片刻再试。",
      belongs: "属于：", title: "智问智搜 · 高效办成一件事"
    },
    en: {
      brand: "Get one thing done", page_title: "Ask and find", inbox: "My inbox", heading: "What do you need to do?",
      label: "Search for what you need to do", placeholder: "Describe it, e.g. I just had a baby",
      go: "Search", try: "Try:", results: "We found", services: "Related services", lang_button: "中文",
      lang_aria: "切换到中文", matched: "Matched: ", apply: "Merged form", offline: "Not yet online",
      individual: "For individuals", enterprise: "For companies",
      none: "Nothing found. Try other words, e.g. “baby”, “restaurant”, “retire”.", searching: "Searching…",
      details: "What you will need", hide: "Hide", services_n: " services on one form", fields_n: " items to fill in",
      materials: "Documents: ", e_license: " (e-licence, fetched for you)", departments: "Departments: ",
      failed: "Search is not available right now; please try again later.",
      limited: "Too many searches; please wait a moment.", belongs: "Part of: ", title: "Ask and find · Get one thing done"
    }
  };
  var lang = pickLang();
  var timer = null, seq = 0, lastQuery = null, lastBody = null;

  function $(id) { return document.getElementById(id); }
  function t(key) { return STRINGS[lang][key]; }
  function pick(label) { return label ? (label[lang] || label.zh || label.en || "") : ""; }
  function el(tag, cls, value) { var e = document.createElement(tag); if (cls) e.className = cls; if (value != null) e.textContent = value; return e; }

  function pickLang() {
    var q = new URLSearchParams(location.search).get("lang");
    if (q === "en" || q === "zh") return q;
    try { var saved = localStorage.getItem("onething.lang"); if (saved === "en" || saved === "zh") return saved; } catch (e) {}
    return "zh";
  }

  function applyLang() {
    document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
    document.title = t("title");
    var nodes = document.querySelectorAll("[data-i18n]");
    for (var i = 0; i < nodes.length; i++) nodes[i].textContent = t(nodes[i].getAttribute("data-i18n"));
    $("q").setAttribute("placeholder", t("placeholder"));
    var chips = document.querySelectorAll(".chip");
    for (var j = 0; j < chips.length; j++) chips[j].textContent = chips[j].getAttribute("data-" + lang);
    $("lang").textContent = t("lang_button");
    $("lang").setAttribute("aria-label", t("lang_aria"));
    if (lastBody) render(lastBody);
  }

  function notice(message, isError) {
    var n = $("notice");
    n.textContent = message || "";
    n.className = "notice" + (isError ? " error" : "");
    n.hidden = !message;
  }

  function render(body) {
    lastBody = body;
    var list = $("bundles"), services = $("services");
    list.textContent = ""; services.textContent = "";
    if (!body.bundles.length && !body.services.length) {
      $("results").hidden = true;
      notice(t("none"), false);
      return;
    }
    notice("", false);
    body.bundles.forEach(function (b) {
      var li = el("li", "result");
      li.setAttribute("data-code", b.code);
      li.appendChild(el("h3", null, pick(b.label)));
      li.appendChild(el("p", "why", t(b.kind === "enterprise" ? "enterprise" : "individual") + " · " + t("matched") + b.matched));
      if (b.available && b.form_url) {
        var a = el("a", "apply", t("apply"));
        a.href = b.form_url;
        li.appendChild(a);
        var more = el("button", "details", t("details"));
        more.type = "button";
        more.setAttribute("aria-expanded", "false");
        var panel = el("div", "form-summary");
        panel.hidden = true;
        more.addEventListener("click", function () { toggleSummary(b.form_url, more, panel); });
        li.appendChild(more);
        li.appendChild(panel);
      } else {
        li.appendChild(el("span", "offline", t("offline")));
      }
      list.appendChild(li);
    });
    body.services.forEach(function (s) {
      var li = el("li");
      li.setAttribute("data-service", s.service_id);
      var a = el("a", null, pick(s.label));
      a.href = s.form_url;
      li.appendChild(a);
      li.appendChild(el("span", null, " "));
      li.appendChild(el("span", "dept", pick(s.department_label)));
      services.appendChild(li);
    });
    $("services-block").hidden = !body.services.length;
    $("results").hidden = false;
  }

  // 一表申报 at a glance: the merged form's services, how much to fill in, which documents
  function toggleSummary(url, button, panel) {
    var open = panel.hidden;
    panel.hidden = !open;
    button.textContent = open ? t("hide") : t("details");
    button.setAttribute("aria-expanded", String(open));
    if (!open || panel.getAttribute("data-loaded")) return;
    fetch(url, {headers: {"Accept": "application/json"}}).then(function (r) {
      if (!r.ok) throw new Error("failed");
      return r.json();
    }).then(function (form) {
      panel.setAttribute("data-loaded", "1");
      panel.textContent = "";
      panel.appendChild(el("p", "summary-line", form.services.length + t("services_n") + " · " +
                                              form.fields.length + t("fields_n")));
      var depts = [];
      form.services.forEach(function (s) { var d = pick(s.department_label); if (depts.indexOf(d) < 0) depts.push(d); });
      panel.appendChild(el("p", "summary-line", t("departments") + depts.join(lang === "zh" ? "、" : ", ")));
      var needed = form.materials.filter(function (m) { return m.required; });
      if (needed.length) {
        panel.appendChild(el("p", "summary-line", t("materials")));
        var ul = el("ul", "summary-materials");
        needed.forEach(function (m) {
          ul.appendChild(el("li", m.e_license ? "fetched" : null, pick(m.label) + (m.e_license ? t("e_license") : "")));
        });
        panel.appendChild(ul);
      }
    }).catch(function () { panel.textContent = t("failed"); });
  }

  function run(query, push) {
    query = (query || "").trim();
    if (!query) { $("results").hidden = true; notice("", false); lastQuery = null; lastBody = null; return; }
    if (query === lastQuery) return;
    lastQuery = query;
    var mine = ++seq;
    if (push) {
      var url = new URL(location.href);
      url.searchParams.set("q", query);
      history.replaceState(null, "", url);
    }
    fetch("/api/v1/search?limit=5&q=" + encodeURIComponent(query), {headers: {"Accept": "application/json"}})
      .then(function (r) {
        if (r.status === 429) throw new Error("limited");
        return r.json().then(function (body) {
          if (!r.ok) throw new Error((body.errors && body.errors[0] && body.errors[0]["message_" + lang]) || "failed");
          return body;
        });
      })
      .then(function (body) { if (mine === seq) render(body); })
      .catch(function (e) {
        if (mine !== seq) return;
        lastQuery = null;
        $("results").hidden = true;
        notice(e.message === "limited" ? t("limited") : e.message === "failed" || e.message.indexOf("fetch") >= 0 ? t("failed") : e.message, true);
      });
  }

  $("search-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    clearTimeout(timer);
    run($("q").value, true);
  });
  $("q").addEventListener("input", function () {
    clearTimeout(timer);
    var value = $("q").value;
    timer = setTimeout(function () { run(value, true); }, 350);  // as one types, without a request per key
  });
  var chips = document.querySelectorAll(".chip");
  for (var i = 0; i < chips.length; i++) {
    chips[i].addEventListener("click", function (ev) {
      var q = ev.currentTarget.textContent;
      $("q").value = q;
      run(q, true);
    });
  }
  $("lang").addEventListener("click", function () {
    lang = lang === "zh" ? "en" : "zh";
    try { localStorage.setItem("onething.lang", lang); } catch (e) {}
    applyLang();
  });

  applyLang();
  var initial = new URLSearchParams(location.search).get("q");
  if (initial) { $("q").value = initial; run(initial, false); }
})();
