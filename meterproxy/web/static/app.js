// meterproxy dashboard: /api/costs for the numbers, /api/calls then /api/events for the live calls.
"use strict";
(function () {
  const token = new URLSearchParams(location.search).get("token");
  const form = document.getElementById("filters");
  const $ = (id) => document.getElementById(id);
  const MAX_ROWS = 100;
  let events = null;
  let chart = null;
  let refreshTimer = null;
  let lastCosts = 0;
  const known = { agent: new Set(), model: new Set() };

  function filters() {
    const data = new FormData(form);
    const out = {};
    for (const [name, value] of data.entries()) if (value) out[name] = value;
    return out;
  }

  function url(path, params) {
    const query = new URLSearchParams(params || {});
    if (token) query.set("token", token);
    const text = query.toString();
    return text ? `${path}?${text}` : path;
  }

  async function api(path, params) {
    const response = await fetch(url(path, params), { headers: { Accept: "application/json" } });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || response.statusText);
    return body;
  }

  function money(value) {
    if (value === null || value === undefined) return "unpriced";
    const digits = Math.abs(value) < 1 && value !== 0 ? 4 : 2;
    return "$" + value.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
  }
  const count = (n) => (n || 0).toLocaleString("en-US");
  const plural = (n, word) => `${count(n)} ${word}${n === 1 ? "" : "s"}`;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else node.setAttribute(k, v);
    }
    for (const child of children) node.append(child);
    return node;
  }

  function setMoney(id, value) {
    const node = $(id);
    node.textContent = money(value);
    node.dataset.usd = String(value);
  }

  function mark(node, status) {
    node.classList.remove("warn", "over");
    const old = node.querySelector(".mark");
    if (old) old.remove();
    if (status === "warning" || status === "over") {
      node.classList.add(status === "over" ? "over" : "warn");
      node.append(el("span", { class: "mark", title: `budget ${status}`, text: status === "over" ? "⚠ over" : "⚠" }));
    }
  }

  function budgetNote(state, label) {
    if (!state) return "";
    return `${Math.round(state.used * 100)}% of ${money(state.limit_usd)} ${label}`;
  }

  function renderCards(data) {
    const budgets = data.budgets || {};
    setMoney("today", data.today);
    mark($("today"), budgets.daily && budgets.daily.status);
    $("today-note").textContent = budgetNote(budgets.daily, "daily budget");
    setMoney("yesterday", data.yesterday);
    $("last-month").textContent = `last month ${money(data.lastMonth)}`;
    setMoney("this-month", data.thisMonth);
    mark($("this-month"), budgets.monthly && budgets.monthly.status);
    $("month-note").textContent = budgetNote(budgets.monthly, "monthly budget");
    setMoney("projected", data.projected);
    mark($("projected"), budgets.monthly && budgets.monthly.projected_status);
    const p = data.projection;
    $("projected-note").textContent = data.budget !== null
      ? `by month's end, against ${money(data.budget)}`
      : p ? `${money(p.daily_rate_usd)}/day by month's end` : "";
  }

  function renderBanners(data) {
    const box = $("banners");
    box.replaceChildren();
    const t = data.totals;
    if (t.unpricedCalls) {
      box.append(el("div", { class: "banner", id: "unpriced-banner",
        text: `${plural(t.unpricedCalls, "call")} without a price in this period: their tokens are counted, ` +
              `their cost is not (meterproxy pricing check).` }));
    }
    if (t.estimatedCalls) {
      box.append(el("div", { class: "banner", id: "estimated-banner",
        text: `${plural(t.estimatedCalls, "call")} with estimated usage (the provider reported none; counted with tiktoken).` }));
    }
    if (t.noUsageCalls) {
      box.append(el("div", { class: "banner", text: `${plural(t.noUsageCalls, "call")} with no usage at all.` }));
    }
  }

  function renderShares(id, rows, key) {
    const table = $(id);
    table.replaceChildren();
    if (!rows.length) { table.append(el("caption", { class: "empty", text: "no calls" })); return; }
    table.append(el("thead", {}, el("tr", {}, el("th", { text: key }), el("th", { class: "num", text: "cost" }),
      el("th", { class: "num", text: "tokens" }), el("th", { class: "num", text: "%" }))));
    const body = el("tbody");
    for (const row of rows) {
      const name = el("td", { class: "name", title: row[key], text: row[key] });
      if (row.percentOfTotal !== undefined) name.append(el("span", { class: "bar", style: `width:${row.percentOfTotal}%` }));
      const cost = el("td", { class: "num", text: money(row.cost) });
      if (row.unpricedCalls) cost.append(el("small", { class: "note", text: `+${row.unpricedCalls} unpriced` }));
      body.append(el("tr", {}, name, cost,
        el("td", { class: "num", text: count(row.tokens) }),
        el("td", { class: "num", text: row.percentOfTotal === undefined ? "" : row.percentOfTotal.toFixed(1) })));
    }
    table.append(body);
  }

  function renderChart(daily) {
    const box = $("daily-chart");
    const xs = daily.map((d) => new Date(d.date + "T00:00:00").getTime() / 1000);
    const ys = daily.map((d) => d.cost);
    const width = Math.max(box.clientWidth, 200);
    const height = window.innerWidth < 600 ? 180 : 240;
    if (typeof uPlot === "undefined") { box.textContent = "chart library missing"; return; }
    if (chart) chart.destroy();
    chart = new uPlot({
      width, height,
      scales: { x: { time: true, range: (u, min, max) => [min - 43200, max + 43200] }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
      axes: [{}, { values: (u, values) => values.map((v) => "$" + v.toFixed(v < 1 ? 2 : 0)), size: 60 }],
      series: [{}, { label: "cost", stroke: "#2563eb", fill: "rgba(37,99,235,.35)", width: 1,
                     paths: uPlot.paths.bars({ size: [0.7, 40] }), points: { show: false },
                     value: (u, v) => (v === null ? "" : money(v)) }],
      legend: { show: true },
    }, [xs, ys], box);
  }

  function callRow(call, fresh) {
    const row = el("tr", { "data-id": call.id, class: fresh ? "new" : "" },
      el("td", { text: new Date(call.started_at).toLocaleString() }),
      el("td", { text: call.agent || "" }),
      el("td", { class: "name", title: call.model || call.request_model || "", text: call.model || call.request_model || "?" }),
      el("td", { class: "num", text: count(call.input_tokens) + (call.usage_source === "estimated" ? "~" : "") }),
      el("td", { class: "num", text: count(call.output_tokens) + (call.usage_source === "estimated" ? "~" : "") }),
      el("td", { class: "num", text: money(call.cost_usd) }),
      el("td", { text: call.outcome || "" }),
      el("td", { class: "num", text: call.duration_ms === null ? "" : String(call.duration_ms) }));
    if (fresh) setTimeout(() => row.classList.remove("new"), 50);
    return row;
  }

  function rememberOptions(data) {
    for (const [key, rows] of [["agent", data.byAgent], ["model", data.byModel]]) {
      const select = form.elements[key];
      for (const row of rows) {
        if (known[key].has(row[key])) continue;
        known[key].add(row[key]);
        select.append(el("option", { value: row[key], text: row[key] }));
      }
    }
  }

  // The totals follow the live calls: a second after one lands, at most every 3 seconds.
  function scheduleCosts() {
    if (refreshTimer) return;
    refreshTimer = setTimeout(() => { refreshTimer = null; loadCosts(); },
                              Math.max(1000, lastCosts + 3000 - Date.now()));
  }

  async function loadCosts() {
    lastCosts = Date.now();
    try {
      const data = await api("/api/costs", filters());
      rememberOptions(data);
      renderCards(data);
      renderBanners(data);
      $("range").textContent = `${data.daily.length ? data.daily[0].date + " to " + data.daily[data.daily.length - 1].date : ""} (${data.tz})`;
      renderChart(data.daily);
      renderShares("by-agent", data.byAgent, "agent");
      renderShares("by-model", data.byModel, "model");
      renderShares("by-provider", data.byProvider, "provider");
      renderShares("sessions", data.sessions, "session");
      document.body.dataset.loaded = "true";
    } catch (error) {
      $("status").textContent = "error: " + error.message;
    }
  }

  function callFilters() {
    const f = filters();
    delete f.timeframe;
    return f;
  }

  async function loadCalls() {
    const body = $("calls").tBodies[0];
    const data = await api("/api/calls", { ...callFilters(), limit: 25 });
    body.replaceChildren(...data.calls.map((c) => callRow(c, false)));
    return data.upto;
  }

  function listen(after) {
    if (events) events.close();
    events = new EventSource(url("/api/events", { ...callFilters(), after }));
    events.onopen = () => { $("status").textContent = "live"; $("status").className = "status live"; };
    events.onerror = () => { $("status").textContent = "reconnecting…"; $("status").className = "status"; };
    events.onmessage = (message) => {
      const call = JSON.parse(message.data);
      const body = $("calls").tBodies[0];
      body.prepend(callRow(call, true));
      while (body.rows.length > MAX_ROWS) body.deleteRow(body.rows.length - 1);
      $("live-note").textContent = `last at ${new Date(call.started_at).toLocaleTimeString()}`;
      scheduleCosts();
    };
  }

  async function reload() {
    await loadCosts();
    try { listen(await loadCalls()); } catch (error) { $("status").textContent = "error: " + error.message; }
  }

  form.addEventListener("change", reload);
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => chart && chart.setSize({ width: Math.max($("daily-chart").clientWidth, 200),
      height: window.innerWidth < 600 ? 180 : 240 }), 150);
  });
  setInterval(loadCosts, 60000);  // days and months roll over even when nothing is called
  reload();
})();
