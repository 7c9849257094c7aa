/* The analyst dashboard: log in (key -> session cookie), then read the analytics API and draw it.
 * The key is read from the form once, posted as JSON and cleared; it is never put in a URL or in
 * localStorage/sessionStorage. Every later request carries only the HttpOnly session cookie.
 * All text from the API is placed with textContent, never as HTML. */
"use strict";

(function () {
  const $ = id => document.getElementById(id);
  const num = v => (v === null || v === undefined || v === "" ? NaN : Number(v));
  const money = v => (Number.isFinite(num(v)) ? "¥" + num(v).toLocaleString("zh-CN", { maximumFractionDigits: 2 }) : "—");
  const interval = iv => (Array.isArray(iv) && iv.length === 2 ? `[${money(iv[0])}, ${money(iv[1])}]` : "—");
  let campaignNames = new Map();

  class HttpError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function getJson(path) {
    const response = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } });
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok) {
      throw new HttpError(response.status, (body && body.message) || `${path}: HTTP ${response.status}`);
    }
    return body;
  }

  function show(loggedIn, session) {
    $("login").hidden = loggedIn;
    $("dashboard").hidden = !loggedIn;
    $("who").hidden = !loggedIn;
    $("who-text").textContent = loggedIn ? `${session.tenant} · ${session.role}` : "";
  }

  async function login(event) {
    event.preventDefault();
    const input = $("key");
    const key = input.value.trim();
    input.value = "";  // the page keeps no copy of the key
    $("login-error").textContent = "";
    const response = await fetch("/dashboard/login", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ key: key }),
    });
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok) {
      $("login-error").textContent = (body && body.message) || `login failed (HTTP ${response.status})`;
      return;
    }
    show(true, body);
    await loadAll();
  }

  async function logout() {
    await fetch("/dashboard/logout", { method: "POST", credentials: "same-origin" });
    clearAll();
    show(false);
  }

  function clearAll() {
    for (const id of ["campaigns-table", "assets-table", "events-table"]) $(id).querySelector("tbody").textContent = "";
    for (const node of document.querySelectorAll(".chart")) node.textContent = "";
  }

  function filterQuery() {
    const params = new URLSearchParams();
    for (const [id, name] of [["f-campaign", "campaign_id"], ["f-model", "model_version"], ["f-source", "source"],
                              ["f-from", "date_from"], ["f-to", "date_to"]]) {
      if ($(id).value) params.set(name, $(id).value);
    }
    const q = params.toString();
    return q ? "?" + q : "";
  }

  async function loadAll() {
    $("load-error").textContent = "";
    try {
      const [revenue, assets, events] = await Promise.all([
        getJson("/v1/analytics/revenue" + filterQuery()),
        getJson("/v1/assets"),
        getJson("/v1/analytics/events?limit=50"),
      ]);
      renderRevenue(revenue);
      renderAssets(assets.assets || []);
      renderEvents(events.events || []);
    } catch (error) {
      if (error instanceof HttpError && error.status === 401) {  // the session expired or its key was revoked
        clearAll();
        show(false);
        $("login-error").textContent = "Your session has ended; log in again.";
        return;
      }
      $("load-error").textContent = error.message;
    }
  }

  function campaignLabel(id) {
    if (id === null || id === undefined) return "recommendations (no campaign)";
    return campaignNames.get(String(id)) || `campaign ${id}`;
  }

  function versionLabel(v) {
    return v === null || v === undefined ? "no model version" : `model ${v}`;
  }

  function fillSelect(select, values, label) {
    const keep = select.value;
    while (select.options.length > 1) select.remove(1);
    for (const v of values) {
      const option = document.createElement("option");
      option.value = v;
      option.textContent = label ? label(v) : v;
      select.appendChild(option);
    }
    select.value = values.map(String).includes(keep) ? keep : "";
  }

  /* Sum revenue per (group, day) from the daily rows. */
  function seriesBy(daily, keyOf, labelOf) {
    const groups = new Map();
    for (const row of daily) {
      const key = keyOf(row);
      if (!groups.has(key)) groups.set(key, new Map());
      const days = groups.get(key);
      days.set(row.day, (days.get(row.day) || 0) + num(row.revenue_cny));
    }
    return [...groups.entries()].map(([key, days]) => ({ name: labelOf(key), points: [...days.entries()] }));
  }

  function renderRevenue(data) {
    const C = window.WenlvCharts;
    const campaigns = data.campaigns || [], versions = data.model_versions || [], daily = data.daily || [];
    for (const c of campaigns) campaignNames.set(String(c.campaign_id), c.name || `campaign ${c.campaign_id}`);
    if (!$("f-campaign").dataset.filled) {  // the choices come from the unfiltered first load
      fillSelect($("f-campaign"), campaigns.map(c => String(c.campaign_id)), campaignLabel);
      fillSelect($("f-model"), [...new Set(versions.map(v => v.model_version).filter(v => v !== null))]);
      $("f-campaign").dataset.filled = "1";
    }
    C.line($("chart-revenue-campaign"), seriesBy(daily, r => r.campaign_id ?? null, campaignLabel),
           { label: "daily revenue by campaign" });
    C.line($("chart-revenue-model"), seriesBy(daily, r => r.model_version ?? null, versionLabel),
           { label: "daily revenue by model version" });
    const names = campaigns.map(c => campaignLabel(c.campaign_id));
    C.bar($("chart-arms"), names, [
      { name: "treated mean", values: campaigns.map(c => num(c.treated_mean_cny)) },
      { name: "holdout mean", values: campaigns.map(c => num(c.holdout_mean_cny)) },
    ], { label: "treatment vs holdout" });
    C.bar($("chart-incremental"), names, [
      { name: "incremental (95% CI)", values: campaigns.map(c => num(c.incremental_revenue_cny)),
        intervals: campaigns.map(c => (c.ci95 || []).map(num)) },
      { name: "last touch (associative)", values: campaigns.map(c => num(c.last_touch_revenue_cny)) },
    ], { label: "incremental revenue with 95% intervals" });
    C.bar($("chart-model-incremental"), versions.map(v => versionLabel(v.model_version)), [
      { name: "incremental (95% CI)", values: versions.map(v => num(v.incremental_revenue_cny)),
        intervals: versions.map(v => (v.ci95 || []).map(num)) },
      { name: "last touch (associative)", values: versions.map(v => num(v.last_touch_revenue_cny)) },
    ], { label: "incremental revenue by model version" });
    const sources = ["tourism", "carrier", "internet"];
    const returns = data.returns_by_source || {};
    const hasReturns = sources.some(s => Number.isFinite(num(returns[s])));
    if (hasReturns) {
      C.bar($("chart-sources"), sources, [{ name: "attributed returns", values: sources.map(s => num(returns[s]) || 0) }],
            { label: "returns by data source" });
    } else {
      C.empty($("chart-sources"));
    }
    const body = $("campaigns-table").querySelector("tbody");
    body.textContent = "";
    for (const c of campaigns) {
      addRow(body, [campaignLabel(c.campaign_id), c.treated, c.holdout, money(c.incremental_revenue_cny),
                    interval(c.ci95), c.incremental_visits ?? "—",
                    Array.isArray(c.visits_ci95) ? `[${c.visits_ci95.join(", ")}]` : "—",
                    money(c.last_touch_revenue_cny), c.method ?? "—"]);
    }
  }

  function renderAssets(assets) {
    window.WenlvCharts.bar($("chart-assets"), assets.map(a => a.name), [
      { name: "cost approach", values: assets.map(a => num(a.value && a.value.cost)) },
      { name: "income approach", values: assets.map(a => num(a.value && a.value.income)) },
    ], { label: "data-asset value", empty: "No data assets registered." });
    const body = $("assets-table").querySelector("tbody");
    body.textContent = "";
    for (const a of assets) {
      const roi = num(a.roi);
      addRow(body, [a.name, a.source, money(a.cost_cny), money(a.capitalised_cny), money(a.expensed_cny),
                    money(a.amortised_cny), money(a.carrying_cny), money(a.attributed_returns_cny),
                    Number.isFinite(roi) ? (roi * 100).toFixed(1) + "%" : "—", money(a.value && a.value.income)]);
    }
  }

  function renderEvents(events) {
    const body = $("events-table").querySelector("tbody");
    body.textContent = "";
    for (const e of events) {
      addRow(body, [e.ts, e.kind, e.event_id, e.poi_id ?? "—", money(e.amount_cny), e.campaign_id ?? "—",
                    e.recommendation_id ?? "—"]);
    }
  }

  function addRow(body, cells) {
    const tr = document.createElement("tr");
    for (const cell of cells) {
      const td = document.createElement("td");
      td.textContent = cell === null || cell === undefined ? "—" : String(cell);
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }

  async function start() {
    $("login-form").addEventListener("submit", login);
    $("logout").addEventListener("click", logout);
    $("filters").addEventListener("submit", event => { event.preventDefault(); loadAll(); });
    const session = await getJson("/dashboard/session");
    if (session.authenticated) {
      show(true, session);
      await loadAll();
    } else {
      show(false);
    }
  }

  document.addEventListener("DOMContentLoaded", start);
})();
