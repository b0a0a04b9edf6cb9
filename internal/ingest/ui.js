// The usage page's script; served as /ui/app.js (no inline script: the
// page's CSP forbids it). It reads the API with the visitor's read-only
// tenant key, which stays in this browser tab (sessionStorage).
"use strict";
const params = new URLSearchParams(location.search);
const tenant = params.get("tenant") || "";
const fragmentKey = new URLSearchParams(location.hash.slice(1)).get("key");
if (fragmentKey) { sessionStorage.setItem("metering-key", fragmentKey); history.replaceState(null, "", location.pathname + location.search); }
const key = sessionStorage.getItem("metering-key");

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function cell(text, testid, cls) {
  const attrs = {};
  if (testid) attrs["data-testid"] = testid;
  if (cls) attrs["class"] = cls;
  return el("td", attrs, text);
}
async function api(path) {
  const r = await fetch(path, { headers: { Authorization: "Bearer " + key } });
  const body = await r.json();
  if (!r.ok) throw new Error((body.error && body.error.message) || ("HTTP " + r.status));
  return body;
}
function chart(metric, windows) {
  const w = 900, h = 120, max = Math.max(1, ...windows.map(x => x.value));
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${h + 20}`);
  svg.setAttribute("width", "100%");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `daily ${metric}`);
  const bw = w / 31;
  for (const x of windows) {
    const day = new Date(x.start).getUTCDate();
    const bh = Math.max(1, (x.value / max) * h);
    const r = document.createElementNS(svg.namespaceURI, "rect");
    r.setAttribute("x", (day - 1) * bw + 2); r.setAttribute("y", h - bh);
    r.setAttribute("width", bw - 4); r.setAttribute("height", bh);
    r.setAttribute("data-day", day); r.setAttribute("data-value", x.value);
    const t = document.createElementNS(svg.namespaceURI, "title");
    t.textContent = `${x.start.slice(0, 10)}: ${x.value}`;
    r.appendChild(t); svg.appendChild(r);
  }
  for (const day of [1, 8, 15, 22, 29]) {
    const label = document.createElementNS(svg.namespaceURI, "text");
    label.setAttribute("x", (day - 1) * bw + 2); label.setAttribute("y", h + 16);
    label.setAttribute("font-size", "12"); label.setAttribute("fill", "#66707a");
    label.textContent = "day " + day;
    svg.appendChild(label);
  }
  return svg;
}
async function load() {
  document.getElementById("tenant").textContent = tenant;
  const q = await api(`/v1/quotas/${encodeURIComponent(tenant)}`);
  document.getElementById("plan").textContent = q.plan || "none";
  const rows = document.getElementById("quotas");
  // A quota on a defined meter is labelled with the meter and its groups
  // (a filter, or per group: the state of the group with the most usage).
  const implicit = (x) => !x.meter || x.meter === x.metric;
  q.quotas.forEach((x, i) => {
    const id = implicit(x) ? x.metric : `${x.meter}-${i}`;
    let label = x.metric;
    if (!implicit(x)) {
      const filter = Object.entries(x.filter || {}).map(([k, v]) => `${k}=${v}`).join(", ");
      label += ` · ${x.meter}` + (x.per_group ? " (per group)" : filter ? ` (${filter})` : "");
    }
    const tr = el("tr", { "data-metric": x.metric });
    tr.append(cell(label),
      cell(x.limit === null ? "unlimited" : String(x.limit), `quota-limit-${id}`, "num"),
      cell(String(x.used), `quota-used-${id}`, "num"),
      cell(x.remaining === null ? "unlimited" : String(x.remaining), `quota-remaining-${id}`, "num"));
    const st = el("td"); st.append(el("span", { "class": "state " + x.state, "data-testid": `quota-state-${id}` }, x.state));
    tr.append(st); rows.append(tr);
    // A per-group quota: one row per group the API lists (the busiest).
    for (const g of (x.per_group && x.groups) || []) {
      const gr = el("tr", { "data-testid": `quota-group-${id}` });
      gr.append(cell("↳ " + groupLabel(g.group), undefined, "group"), cell(x.limit === null ? "unlimited" : String(x.limit), undefined, "num"),
        cell(String(g.used), undefined, "num"), cell(g.remaining === null ? "unlimited" : String(g.remaining), undefined, "num"));
      const gs = el("td"); gs.append(el("span", { "class": "state " + g.state }, g.state));
      gr.append(gs); rows.append(gr);
    }
  });
  const now = new Date();
  const from = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1)).toISOString();
  document.getElementById("period").textContent = from.slice(0, 7);
  const charts = document.getElementById("charts");
  for (const x of q.quotas.filter(implicit)) {
    const u = await api(`/v1/usage?tenant=${encodeURIComponent(tenant)}&metric=${encodeURIComponent(x.metric)}&window=day&from=${from}`);
    const box = el("div", { "class": "chart", "data-testid": `chart-${x.metric}` });
    box.append(el("div", {}, x.metric + " · total "), chart(x.metric, u.windows));
    box.firstChild.append(el("strong", { "data-testid": `usage-total-${x.metric}` }, String(u.total)));
    charts.append(box);
  }
  await loadMeters(from);
  const b = await api(`/v1/bill/${encodeURIComponent(tenant)}`);
  document.getElementById("currency").textContent = b.currency.toUpperCase();
  const bill = document.getElementById("bill");
  // A line of a defined meter is labelled with the meter, and with its
  // group (a quota billed per group) or the quota's filter. Group values
  // come from the tenant's events: they go in as textContent. A quota
  // billed per group shows its billTop lines of greatest projected amount,
  // then one line folding the others (amounts added exactly, in cents).
  const quotaOf = (l) => JSON.stringify([l.metric, l.meter || "", l.filter || {}]);
  const perQuota = new Map();
  for (const l of b.lines) {
    const k = quotaOf(l);
    perQuota.set(k, (perQuota.get(k) || []).concat([l]));
  }
  const shown = new Set();
  const folded = new Map();
  for (const [k, ls] of perQuota) {
    if (ls.length <= billTop) { ls.forEach((l) => shown.add(l)); continue; }
    const ranked = ls.slice().sort((x, y) => { const d = cents(y.projected_amount) - cents(x.projected_amount); return d > 0n ? 1 : d < 0n ? -1 : 0; });
    ranked.slice(0, billTop).forEach((l) => shown.add(l));
    folded.set(k, ranked.slice(billTop));
  }
  b.lines.forEach((l, i) => {
    const own = !l.meter || l.meter === l.metric;
    const id = own ? l.metric : `${l.meter}-${i}`;
    const label = own ? l.metric : `${l.metric} · ${l.meter}`;
    if (shown.has(l)) {
      const filter = Object.entries(l.filter || {}).map(([k, v]) => `${k}=${v}`).join(", ");
      const group = Object.keys(l.group || {}).length ? groupLabel(l.group) : filter || "all";
      const tr = el("tr", { "data-testid": "bill-line" });
      tr.append(cell(label), cell(group, `bill-group-${id}`, "group"),
        cell(priceLabel(l), `bill-price-${id}`, "num"), cell(String(l.used), `bill-used-${id}`, "num"),
        cell(l.amount, `bill-amount-${id}`, "num"), cell(String(l.projected_used), `bill-projected-used-${id}`, "num"),
        cell(l.projected_amount, `bill-projected-${id}`, "num"));
      bill.append(tr);
    }
    const k = quotaOf(l);
    const rest = folded.get(k);
    // The folded line goes after the quota's last line.
    if (rest && perQuota.get(k).at(-1) === l) {
      const tr = el("tr", { "data-testid": "bill-other" });
      const sum = (f) => fromCents(rest.reduce((a, x) => a + cents(f(x)), 0n));
      tr.append(cell(label), cell(`other (${rest.length} groups)`, undefined, "group"), cell(priceLabel(l), undefined, "num"),
        cell("—", undefined, "num"), cell(sum((x) => x.amount), `bill-other-amount-${l.meter}`, "num"), cell("—", undefined, "num"),
        cell(sum((x) => x.projected_amount), `bill-other-projected-${l.meter}`, "num"));
      bill.append(tr);
    }
  });
  document.getElementById("bill-total").textContent = b.total;
  document.getElementById("bill-projected").textContent = b.projected_total;
  const br = await api(`/v1/breaches?tenant=${encodeURIComponent(tenant)}`);
  const tb = document.getElementById("breaches");
  for (const x of br.breaches) {
    const tr = el("tr", { "data-testid": "breach" });
    tr.append(cell(x.detected_at.replace("T", " ").slice(0, 19)), cell(x.meter && x.meter !== x.metric ? `${x.metric} · ${x.meter} ${JSON.stringify(x.group)}` : x.metric), cell(x.threshold), cell(`${x.value} / ${x.limit}`, undefined, "num"));
    tb.append(tr);
  }
  if (br.breaches.length === 0) { const tr = el("tr"); tr.append(cell("No breaches.")); tb.append(tr); }
  await loadAnomalies();
  await loadConflicts();
}

// anomaliesShown is how many anomaly episodes the page lists.
const anomaliesShown = 20;

// loadAnomalies lists the tenant's latest usage anomaly episodes: the
// first hour, the meter, spike or drop, that hour's total against its
// expected value, and when the episode ended ("ongoing" while it lasts).
async function loadAnomalies() {
  const an = await api(`/v1/anomalies?tenant=${encodeURIComponent(tenant)}&limit=${anomaliesShown}`);
  const tb = document.getElementById("anomalies");
  const when = (t) => t.replace("T", " ").slice(0, 16);
  for (const x of an.anomalies) {
    const tr = el("tr", { "data-testid": "anomaly" });
    const kind = x.type === "anomaly.drop" ? "drop" : "spike";
    const k = el("td");
    k.append(el("span", { "class": "state anomaly-" + kind }, kind));
    tr.append(cell(when(x.hour)), cell(x.meter), k, cell(x.observed, undefined, "num"), cell(x.expected, undefined, "num"),
      cell(x.ended_at ? when(x.ended_at) : "ongoing"));
    tb.append(tr);
  }
  if (an.anomalies.length === 0) { const tr = el("tr"); tr.append(cell("No unusual usage.")); tb.append(tr); }
}

// billTop is how many lines of a quota billed per group the bill lists
// before "other".
const billTop = 10;

// cents reads an amount of the API ("12.34", two decimals) as whole cents.
function cents(amount) {
  const neg = amount.startsWith("-");
  const [whole, frac = ""] = (neg ? amount.slice(1) : amount).split(".");
  const c = BigInt(whole) * 100n + BigInt((frac + "00").slice(0, 2));
  return neg ? -c : c;
}

// fromCents writes whole cents as an amount with two decimals.
function fromCents(c) {
  const neg = c < 0n;
  const a = neg ? -c : c;
  return (neg ? "-" : "") + String(a / 100n) + "." + String(a % 100n).padStart(2, "0");
}

// priceLabel shows a bill line's price: its unit price, a package's
// amount and size, or a tiered price's tiers ("volume: ≤ 1000 at 0.002;
// rest at 0.001 + 1", a tier's flat amount after the +).
function priceLabel(l) {
  const p = l.price || {};
  if (l.unit_price !== undefined) return l.unit_price;
  if (p.model === "package") return `${p.package_amount} per ${p.package_size}` + (p.round === "down" ? " (whole packages)" : "");
  if (p.model === "graduated" || p.model === "volume") {
    return `${p.model}: ` + (p.tiers || []).map(t => `${t.up_to === null ? "rest" : "≤ " + t.up_to} at ${t.unit_amount}` +
      (t.flat_amount && Number(t.flat_amount) !== 0 ? ` + ${t.flat_amount}` : "")).join("; ");
  }
  return p.model || "";
}

// groupLabel shows a group's values: "model=gpt-4, region=(none)".
function groupLabel(group) {
  const parts = Object.entries(group || {}).map(([k, v]) => `${k}=${v === null ? "(none)" : v}`);
  return parts.length ? parts.join(", ") : "all";
}

// topGroups is how many groups a meter's table lists before "other".
const topGroups = 5;

// otherValue folds the groups past the top ones as the meter folds
// events, or answers null where their values cannot be folded (the
// latest value, or distinct values counted per group).
function otherValue(aggregation, rest) {
  if (aggregation === "sum" || aggregation === "count") return rest.reduce((a, t) => a + t.value, 0);
  if (aggregation === "max") return Math.max(...rest.map(t => t.value));
  return null;
}

// loadMeters fills "Meters this month": per defined meter that counted
// the tenant's usage, its total and its busiest groups, then the others.
// Group values come from the tenant's events: they go in as textContent.
async function loadMeters(from) {
  const box = document.getElementById("meters");
  const ms = await api(`/v1/meters?tenant=${encodeURIComponent(tenant)}`);
  if (ms.meters.length === 0) { box.append(el("p", { "class": "muted" }, "No meter counted your usage this month.")); return; }
  for (const m of ms.meters) {
    const groupBy = m.group_by.map(g => `&group_by=${encodeURIComponent(g)}`).join("");
    const u = await api(`/v1/usage?tenant=${encodeURIComponent(tenant)}&meter=${encodeURIComponent(m.name)}&window=month&from=${from}${groupBy}`);
    const what = `${m.aggregation} of ${m.metric}` + (m.property ? ` (distinct values of ${m.property})` : "");
    box.append(el("h3", { "data-testid": `meter-${m.name}` }, `${m.name} · ${what}` + (m.description ? ` · ${m.description}` : "")));
    const table = el("table", { "data-testid": `meter-table-${m.name}` });
    const head = el("tr");
    head.append(el("th", {}, m.group_by.length ? m.group_by.join(", ") : "Group"), el("th", { "class": "num" }, "Value"), el("th", { "class": "num" }, "Events"));
    const thead = el("thead"); thead.append(head); table.append(thead);
    const body = el("tbody");
    const totals = [...u.totals].sort((a, b) => b.value - a.value);
    for (const t of totals.slice(0, topGroups)) {
      const tr = el("tr", { "data-testid": `meter-group-${m.name}` });
      tr.append(cell(groupLabel(t.group)), cell(String(t.value), undefined, "num"), cell(String(t.events), undefined, "num"));
      body.append(tr);
    }
    const rest = totals.slice(topGroups);
    if (rest.length > 0) {
      const v = otherValue(m.aggregation, rest);
      const tr = el("tr", { "data-testid": `meter-other-${m.name}` });
      tr.append(cell(`other (${rest.length} groups)`), cell(v === null ? "—" : String(v), undefined, "num"),
        cell(String(rest.reduce((a, t) => a + t.events, 0)), undefined, "num"));
      body.append(tr);
    }
    const foot = el("tr");
    foot.append(el("th", {}, "Total"), el("th", { "class": "num", "data-testid": `meter-total-${m.name}` }, String(u.total)), el("th"));
    const tfoot = el("tfoot"); tfoot.append(foot);
    table.append(body, tfoot);
    box.append(table);
  }
}

// The resolutions of a conflicting resend, as GET /v1/conflicts names them.
const resolutions = ["raised", "kept", "held", "counted", "dismissed"];
// conflictsLimit is the most conflicts one GET /v1/conflicts answer holds.
const conflictsLimit = 200;
// recentConflicts is how many of the newest the table lists.
const recentConflicts = 20;

// loadConflicts fills "Conflicting resends". Event ids and metrics come
// from the tenant's own events: every value goes in through textContent.
async function loadConflicts() {
  const base = `/v1/conflicts?tenant=${encodeURIComponent(tenant)}`;
  const all = await api(base + "&status=all");
  document.getElementById("conflicts-alert").hidden = all.alerting !== true;
  const counts = {};
  if (all.conflicts.length < conflictsLimit) {
    for (const r of resolutions) counts[r] = String(all.conflicts.filter(c => c.resolution === r).length);
  } else {
    // More than one answer holds: count each resolution on its own.
    for (const r of resolutions) {
      const n = (await api(`${base}&status=${r}`)).conflicts.length;
      counts[r] = n < conflictsLimit ? String(n) : `${conflictsLimit} or more`;
    }
  }
  for (const r of resolutions) document.getElementById("conflicts-count-" + r).textContent = counts[r];
  const tb = document.getElementById("conflicts");
  const num = v => (v === undefined || v === null ? "-" : String(v));
  for (const c of all.conflicts.slice(0, recentConflicts)) {
    const tr = el("tr", { "data-testid": "conflict" });
    const res = el("td");
    res.append(el("span", { "class": resolutions.includes(c.resolution) ? "state res-" + c.resolution : "state" }, c.resolution));
    tr.append(cell(c.event_id, undefined, "id"), cell(c.metric || "-"),
      cell(c.time ? c.time.replace("T", " ").slice(0, 19) : "-"),
      cell(num(c.value), undefined, "num"), cell(num(c.counted_value), undefined, "num"), res);
    tb.append(tr);
  }
  if (all.conflicts.length === 0) { const tr = el("tr"); tr.append(cell("No conflicting resends.")); tb.append(tr); }
}
if (!tenant) {
  document.getElementById("error").textContent = "Open this page as /ui?tenant=<your tenant>.";
  document.body.dataset.error = "no tenant";
} else if (!key) {
  const f = document.getElementById("login");
  f.hidden = false;
  f.addEventListener("submit", ev => { ev.preventDefault(); sessionStorage.setItem("metering-key", document.getElementById("key").value); location.reload(); });
} else {
  load().then(() => { document.body.dataset.ready = "true"; })
    .catch(err => { document.getElementById("error").textContent = err.message; document.body.dataset.error = err.message; });
}
