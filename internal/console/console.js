// The operator and finance console. Every value from the API is written
// with textContent (never as markup); the key is kept in sessionStorage
// and sent only as the Authorization header.
"use strict";

const $ = (id) => document.getElementById(id);
let role = "";

// el builds an element: attrs are properties or on* listeners; children
// are nodes or strings (text nodes).
function el(tag, attrs, ...children) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k.startsWith("on")) n.addEventListener(k.slice(2), v);
    else if (k === "class") n.className = v;
    else if (k === "testid") n.dataset.testid = v;
    else n[k] = v;
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    n.append(typeof c === "string" || typeof c === "number" ? String(c) : c);
  }
  return n;
}

// text shows a value: numbers and strings as they are, null as "-",
// anything else as JSON.
function text(v) {
  if (v === null || v === undefined || v === "") return "-";
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

function when(s) {
  if (!s) return "-";
  return s.replace("T", " ").replace(/\.\d+Z$/, "Z");
}

// table renders rows under headers; cols are [header, row => value or
// node, class].
function table(id, cols, rows, empty) {
  if (!rows.length) return el("p", { className: "muted", id: id + "-empty" }, empty || "Nothing here.");
  return el("table", { id },
    el("thead", {}, el("tr", {}, cols.map(([h, , c]) => el("th", { className: c || "" }, h)))),
    el("tbody", {}, rows.map((r) => el("tr", {}, cols.map(([, f, c]) => {
      const v = f(r);
      return el("td", { className: c || "" }, v instanceof Node ? v : text(v));
    })))));
}

function pill(s) { return el("span", { className: "pill " + s }, s || "-"); }

function key() { return sessionStorage.getItem("consoleKey") || ""; }

// parse reads JSON keeping integers past 2^53 exact (as their text).
function parse(body) {
  return JSON.parse(body, (k, v, ctx) =>
    typeof v === "number" && !Number.isSafeInteger(v) && ctx && ctx.source && /^-?\d+$/.test(ctx.source) ? ctx.source : v);
}

class APIError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

async function request(path, opts) {
  opts = opts || {};
  const headers = { Authorization: "Bearer " + key() };
  if (opts.body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, { method: opts.method || "GET", headers, body: opts.body === undefined ? undefined : JSON.stringify(opts.body) });
  if (!r.ok) {
    let code = "http_" + r.status, msg = r.status + " " + r.statusText;
    try { const e = parse(await r.text()).error; code = e.code; msg = e.message; } catch (_) { /* not JSON */ }
    if (r.status === 401) signOut("This key is not accepted (" + msg + "); sign in again.");
    throw new APIError(r.status, code, msg);
  }
  return r;
}

async function api(path, opts) { return parse(await (await request(path, opts)).text()); }

function showError(e) { $("error").textContent = e ? (e.message || String(e)) : ""; }
function notice(s) { $("notice").textContent = s || ""; }

// download fetches path with the key in the header and saves the body as
// a file through a Blob, so the key never goes into a URL.
async function download(path, fallbackName) {
  const r = await request(path);
  const cd = r.headers.get("Content-Disposition") || "";
  const m = /filename="([^"]+)"/.exec(cd);
  const url = URL.createObjectURL(await r.blob());
  const a = el("a", { href: url, download: m ? m[1] : fallbackName });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// confirmAction asks for a note and resolves to it, or to null when the
// operator cancels. withNote false is for a route that records no note:
// the dialog only asks to confirm, and resolves to "".
function confirmAction(title, what, verb, withNote) {
  withNote = withNote !== false;
  return new Promise((resolve) => {
    const box = $("confirm"), note = $("confirm-note"), ok = $("confirm-ok"), cancel = $("confirm-cancel");
    $("confirm-title").textContent = title;
    $("confirm-text").textContent = what;
    ok.textContent = verb;
    note.value = "";
    note.hidden = $("confirm-note-label").hidden = !withNote;
    ok.disabled = withNote;
    box.hidden = false;
    (withNote ? note : ok).focus();
    const done = (v) => {
      box.hidden = true;
      note.oninput = ok.onclick = cancel.onclick = null;
      resolve(v);
    };
    note.oninput = () => { ok.disabled = note.value.trim() === ""; };
    ok.onclick = () => done(note.value.trim());
    cancel.onclick = () => done(null);
  });
}

const isAdmin = () => role === "admin";

// adminButton is an action button for admins; viewers get none.
function adminButton(label, testid, onclick, danger) {
  if (!isAdmin()) return null;
  return el("button", { type: "button", testid, className: danger ? "danger" : "", onclick }, label);
}

// ---- pages ----

const pages = {
  async tenants(view) {
    const data = await api("/v1/admin/tenants");
    const detail = el("div", { id: "tenant-detail" });
    view.append(el("h2", {}, "Tenants"),
      table("tenants", [
        ["Tenant", (t) => t.tenant, "mono"],
        ["Plan", (t) => t.plan],
        ["Stripe customer", (t) => t.stripe_customer_id, "mono"],
        ["Updated", (t) => when(t.updated_at), "date"],
        ["", (t) => el("button", { type: "button", testid: "history-" + t.tenant, onclick: () => tenantHistory(detail, t.tenant) }, "Plan history")],
      ], data.tenants, "No tenants yet."),
      detail);
  },

  async plans(view) {
    const data = await api("/v1/admin/plans");
    const detail = el("div", { id: "plan-detail" });
    view.append(el("h2", {}, "Plans"),
      table("plans", [
        ["Plan", (p) => p.name, "mono"],
        ["Version", (p) => p.version, "num"],
        ["Currency", (p) => p.currency],
        ["Quotas", (p) => quotaList(p.quotas)],
        ["Effective from", (p) => p.effective_from ? when(p.effective_from) : "(always)"],
        ["Proration", (p) => p.proration],
        ["", (p) => el("button", { type: "button", testid: "versions-" + p.name, onclick: () => planVersions(detail, p.name) }, "Versions")],
      ], data.plans, "No plans yet."),
      detail);
  },

  async reconciliation(view) {
    const period = el("input", { type: "month", id: "period", value: new Date().toISOString().slice(0, 7) });
    const out = el("div", { id: "recon-out" });
    const drill = el("div", { id: "drill" });
    const load = async () => {
      showError(null);
      out.replaceChildren(el("p", { className: "muted" }, "Reading Postgres and Stripe..."));
      drill.replaceChildren();
      try {
        const data = await api("/v1/reconciliation?period=" + encodeURIComponent(period.value));
        out.replaceChildren(el("p", { className: "muted" }, data.rows.length + " rows for " + data.period),
          table("recon", [
            ["Tenant", (r) => r.tenant, "mono"],
            ["Meter", (r) => r.meter || r.metric, "mono"],
            ["Group", (r) => r.group],
            ["Metered", (r) => r.metered, "num"],
            ["Reported", (r) => r.reported, "num"],
            ["In flight", (r) => r.in_flight, "num"],
            ["Stripe", (r) => r.stripe, "num"],
            ["Drift", (r) => r.drift, "num"],
            ["Status", (r) => el("span", { title: r.note || "" }, pill(r.status))],
            ["Period", (r) => el("span", { title: r.completeness || "" }, pill(r.complete ? "complete" : "open"))],
            ["", (r) => el("button", { type: "button", testid: "pushes-" + r.tenant + "-" + r.metric, onclick: () => pushesOf(drill, r) }, "Pushes")],
          ], data.rows, "No usage was billed in this month."));
      } catch (e) { out.replaceChildren(); showError(e); }
    };
    view.append(el("h2", {}, "Reconciliation"),
      el("div", { className: "toolbar" },
        el("label", {}, "Month", period),
        el("button", { type: "button", id: "recon-load", onclick: load }, "Load"),
        el("button", { type: "button", id: "recon-csv", onclick: () => download("/v1/reconciliation?format=csv&period=" + encodeURIComponent(period.value), "reconciliation.csv").catch(showError) }, "Download CSV")),
      out, drill);
    await load();
  },

  async "dlq-usage"(view) {
    const status = el("select", { id: "dlq-usage-status" }, ["pending", "replayed", "discarded", "all"].map((s) => el("option", { value: s }, s)));
    const out = el("div", { id: "dlq-usage-out" });
    const detail = el("div", { id: "dlq-usage-detail" });
    const load = async () => {
      const data = await api("/v1/admin/dlq/usage?status=" + status.value);
      out.replaceChildren(table("dlq-usage", [
        ["Id", (d) => d.id, "num"],
        ["Failed at", (d) => when(d.failed_at), "date"],
        ["Status", (d) => pill(d.status)],
        ["Tenant", (d) => d.tenant, "mono"],
        ["Kind", (d) => d.kind],
        ["Class", (d) => d.error_class],
        ["Error", (d) => d.error],
        ["Resolved", (d) => when(d.resolved_at), "date"],
        ["", (d) => el("span", {},
          el("button", { type: "button", testid: "show-usage-" + d.id, onclick: () => showUsageLetter(detail, d.id) }, "Show"),
          d.status === "pending" ? adminButton("Replay", "replay-usage-" + d.id, () => resolveLetter("usage", d.id, "replay", load, detail)) : null,
          d.status === "pending" ? adminButton("Discard", "discard-usage-" + d.id, () => resolveLetter("usage", d.id, "discard", load, detail), true) : null), "actions"],
      ], data.dead_letters, "No dead letters with this status."));
    };
    status.addEventListener("change", () => load().catch(showError));
    view.append(el("h2", {}, "Usage dead letters (usage.events)"),
      el("p", { className: "muted" }, "Records the aggregator could not count. Replaying sends the record back to usage.events (the ledger counts an event id once); discarding closes it. Both need a note and are audited."),
      el("div", { className: "toolbar" }, el("label", {}, "Status", status)), out, detail);
    await load();
  },

  async "dlq-billing"(view) {
    const out = el("div", { id: "dlq-billing-out" });
    const detail = el("div", { id: "dlq-billing-detail" });
    const load = async () => {
      const data = await api("/v1/admin/dlq/billing");
      out.replaceChildren(table("dlq-billing", [
        ["Id", (d) => d.id, "num"],
        ["Dead since", (d) => when(d.dead_since), "date"],
        ["Tenant", (d) => d.tenant, "mono"],
        ["Metric", (d) => d.metric, "mono"],
        ["Period", (d) => d.period, "date"],
        ["Value", (d) => d.value, "num"],
        ["Attempts", (d) => d.attempts, "num"],
        ["Last error", (d) => d.last_error],
        ["", (d) => el("span", {},
          el("button", { type: "button", testid: "show-billing-" + d.id, onclick: () => showBillingLetter(detail, d.id) }, "Show"),
          adminButton("Replay", "replay-billing-" + d.id, () => resolveLetter("billing", d.id, "replay", load, detail)),
          adminButton("Discard", "discard-billing-" + d.id, () => resolveLetter("billing", d.id, "discard", load, detail), true)), "actions"],
      ], data.dead_letters, "The billing DLQ is empty."));
    };
    view.append(el("h2", {}, "Billing dead letters (pushes to Stripe)"),
      el("p", { className: "muted" }, "Pushes Stripe refused until retries ran out. Replaying sends the push again under its identifier; discarding leaves its usage unbilled (it shows as drift). Both need a note and are audited."),
      out, detail);
    await load();
  },

  async holds(view) {
    const out = el("div", { id: "holds-out" });
    const load = async () => {
      const data = await api("/v1/admin/holds");
      out.replaceChildren(el("div", { className: "wide" }, table("holds", [
        ["Id", (h) => h.id, "num"],
        ["Held since", (h) => when(h.held_since), "date"],
        ["Tenant", (h) => h.tenant, "mono"],
        ["Meter", (h) => h.meter, "mono"],
        ["Group", (h) => h.group_key],
        ["Period", (h) => h.period, "date"],
        ["Delta", (h) => h.value, "num"],
        ["Month total", (h) => h.cumulative_total, "num"],
        ["Reason", (h) => el("span", {}, h.reason, h.waiting ? el("br") : null,
          h.waiting ? el("span", { className: "muted" }, h.waiting + " later pushes wait for this decision") : null)],
        ["", (h) => el("span", {},
          adminButton("Approve", "approve-hold-" + h.id, () => decideHold(h, "approve", load)),
          adminButton("Reject", "reject-hold-" + h.id, () => decideHold(h, "reject", load), true)), "actions"],
      ], data.holds, "No pushes are held.")));
    };
    view.append(el("h2", {}, "Held pushes"),
      el("p", { className: "muted" }, "Pushes to Stripe whose delta is beyond the plan's hold_on_anomaly factor times the tenant's baseline. They wait, with the pushes planned after them, until an admin approves (sent to Stripe now) or rejects (never sent; the usage stays unbilled and shows as drift). Both need a note and are audited."),
      out);
    await load();
  },

  async breaches(view) {
    const tenants = (await api("/v1/admin/tenants")).tenants;
    const pick = el("select", { id: "breach-tenant" }, tenants.map((t) => el("option", { value: t.tenant }, t.tenant)));
    const out = el("div", { id: "breaches-out" });
    const load = async () => {
      if (!pick.value) { out.replaceChildren(el("p", { className: "muted" }, "No tenants yet.")); return; }
      const data = await api("/v1/breaches?tenant=" + encodeURIComponent(pick.value));
      out.replaceChildren(table("breaches", [
        ["Detected", (b) => when(b.detected_at), "date"],
        ["Meter", (b) => b.meter || b.metric, "mono"],
        ["Group", (b) => groupText(b.group)],
        ["Threshold", (b) => pill(b.threshold)],
        ["Value", (b) => b.value, "num"],
        ["Limit", (b) => b.limit, "num"],
        ["Period", (b) => when(b.period_start).slice(0, 10) + " to " + when(b.period_end).slice(0, 10)],
      ], data.breaches, "No breaches for this tenant."));
    };
    pick.addEventListener("change", () => load().catch(showError));
    view.append(el("h2", {}, "Quota breaches"), el("div", { className: "toolbar" }, el("label", {}, "Tenant", pick)), out);
    await load();
  },

  async audit(view) {
    const target = el("input", { id: "audit-target", placeholder: "tenant, plan, key id..." });
    const action = el("input", { id: "audit-action", placeholder: "action" });
    const limit = el("input", { id: "audit-limit", type: "number", min: 1, max: 1000, value: 100 });
    const out = el("div", { id: "audit-out" });
    const load = async () => {
      const q = new URLSearchParams({ target: target.value, action: action.value, limit: limit.value || "100" });
      const data = await api("/v1/admin/audit?" + q);
      out.replaceChildren(table("audit", [
        ["Id", (e) => e.id, "num"],
        ["At", (e) => when(e.at), "date"],
        ["Actor", (e) => e.actor, "mono"],
        ["Action", (e) => e.action, "mono"],
        ["Target", (e) => e.target, "mono"],
        ["Note", (e) => e.note || "-"],
        ["Before", (e) => e.before, "json"],
        ["After", (e) => e.after, "json"],
      ], data.entries, "No entries match."));
    };
    view.append(el("h2", {}, "Audit log"),
      el("div", { className: "toolbar" }, el("label", {}, "Target", target), el("label", {}, "Action", action), el("label", {}, "Limit", limit),
        el("button", { type: "button", id: "audit-filter", onclick: () => load().catch(showError) }, "Filter")),
      out);
    await load();
  },

  async anomalies(view) {
    const tenants = (await api("/v1/admin/tenants")).tenants;
    const pick = el("select", { id: "anomaly-tenant" }, el("option", { value: "" }, "(all tenants)"),
      tenants.map((t) => el("option", { value: t.tenant }, t.tenant)));
    const meter = el("input", { id: "anomaly-meter", placeholder: "meter (all)" });
    const limit = el("input", { id: "anomaly-limit", type: "number", min: 1, max: 1000, value: 200 });
    const out = el("div", { id: "anomalies-out" });
    const load = async () => {
      const q = new URLSearchParams({ limit: limit.value || "200" });
      if (pick.value) q.set("tenant", pick.value);
      if (meter.value.trim()) q.set("meter", meter.value.trim());
      const data = await api("/v1/anomalies?" + q);
      out.replaceChildren(el("p", { className: "muted" }, data.anomalies.length + " episodes, newest first"), el("div", { className: "wide" },
        table("anomalies", [
          ["First hour", (a) => hourText(a.hour), "date"],
          ["Last hour", (a) => hourText(a.last_hour), "date"],
          ["Tenant", (a) => a.tenant, "mono"],
          ["Meter", (a) => a.meter, "mono"],
          ["Kind", (a) => pill(a.type === "anomaly.drop" ? "drop" : "spike")],
          ["Observed", (a) => a.observed, "num"],
          ["Expected", (a) => a.expected, "num"],
          ["Score", (a) => a.score, "num"],
          ["Sensitivity", (a) => a.sensitivity, "num"],
          ["Detected", (a) => when(a.detected_at)],
          ["State", (a) => a.ended_at ? el("span", {}, pill("ended"), el("br"), el("span", { className: "muted" }, hourText(a.ended_at))) : pill("ongoing"), "date"],
        ], data.anomalies, "No anomalies match.")));
    };
    pick.addEventListener("change", () => load().catch(showError));
    view.append(el("h2", {}, "Usage anomalies"),
      el("p", { className: "muted" }, "Hours whose usage jumped (spike) or fell (drop) against the same hours of the weeks before. Observed is the first anomalous hour's total; expected is its baseline's median."),
      el("div", { className: "toolbar" }, el("label", {}, "Tenant", pick), el("label", {}, "Meter", meter), el("label", {}, "Limit", limit),
        el("button", { type: "button", id: "anomaly-filter", onclick: () => load().catch(showError) }, "Filter")),
      out);
    await load();
  },

  async webhooks(view) {
    const tenants = (await api("/v1/admin/tenants")).tenants;
    const pick = el("select", { id: "webhook-tenant" }, tenants.map((t) => el("option", { value: t.tenant }, t.tenant)));
    const out = el("div", { id: "webhooks-out" });
    const detail = el("div", { id: "webhook-detail" });
    const load = async () => {
      detail.replaceChildren();
      if (!pick.value) { out.replaceChildren(el("p", { className: "muted" }, "No tenants yet.")); return; }
      const data = await api("/v1/admin/tenants/" + encodeURIComponent(pick.value) + "/webhooks");
      out.replaceChildren(el("div", { className: "wide" }, table("webhooks", [
        ["URL", (e) => e.url, "mono"],
        ["Description", (e) => e.description],
        ["Kinds", (e) => e.kinds.join(", ")],
        ["Spend thresholds", (e) => e.spend_thresholds && e.spend_thresholds.length ? e.spend_thresholds.join(", ") : "-"],
        ["State", (e) => pill(e.state)],
        ["Failing since", (e) => when(e.failing_since), "date"],
        ["Last success", (e) => when(e.last_success_at), "date"],
        ["", (e) => el("button", { type: "button", testid: "deliveries-" + e.id, onclick: () => deliveriesOf(detail, pick.value, e, load).catch(showError) }, "Deliveries"), "actions"],
      ], data.webhooks, "This tenant has no webhook endpoints.")));
    };
    pick.addEventListener("change", () => load().catch(showError));
    view.append(el("h2", {}, "Webhook notifications"),
      el("p", { className: "muted" }, "Each tenant's endpoints (secrets are never shown) and what was sent to them. Redelivering queues a delivery again, due now, with the same event id and body; it is audited (webhook.redeliver)."),
      el("div", { className: "toolbar" }, el("label", {}, "Tenant", pick)), out, detail);
    await load();
  },
};

// deliveriesOf shows endpoint ep's deliveries under its table; reload
// reads the tenant's endpoints again (a redelivery reactivates a failing
// endpoint).
async function deliveriesOf(detail, tenant, ep, reload) {
  const status = el("select", { id: "delivery-status" }, ["all", "pending", "delivered", "dead"].map((s) => el("option", { value: s }, s)));
  const list = el("div", { id: "deliveries-out" });
  const shown = el("div", { id: "delivery-event" });
  const load = async () => {
    const q = new URLSearchParams({ limit: "200" });
    if (status.value !== "all") q.set("status", status.value);
    const data = await api("/v1/admin/tenants/" + encodeURIComponent(tenant) + "/webhooks/" + encodeURIComponent(ep.id) + "/deliveries?" + q);
    list.replaceChildren(el("div", { className: "wide" }, table("deliveries", [
      ["Id", (d) => d.id, "num"],
      ["Created", (d) => when(d.created_at)],
      ["Event", (d) => el("span", {}, d.event_type, el("br"), el("span", { className: "muted" }, d.event_id)), "mono"],
      ["Status", (d) => pill(failing(d) ? "failing" : d.status)],
      ["Attempts", (d) => d.attempts, "num"],
      ["Next attempt", (d) => d.status === "pending" ? el("span", { title: "retried until " + when(d.retry_until) }, when(d.next_attempt_at)) : "-"],
      ["Last attempt", (d) => d.last_attempt_at ? when(d.last_attempt_at) + (d.last_status === null ? " (no answer)" : " (" + d.last_status + ")") : "-"],
      ["Last error", (d) => d.last_error],
      ["Delivered", (d) => when(d.delivered_at)],
      ["", (d) => el("span", {},
        el("button", { type: "button", testid: "event-" + d.id, onclick: () => shown.replaceChildren(el("h3", {}, "Event of delivery " + d.id),
          el("pre", { id: "delivery-body" }, JSON.stringify(d.event, null, 2))) }, "Event"),
        d.status === "dead" || failing(d) ? adminButton("Redeliver", "redeliver-" + d.id, () => redeliver(d, async () => { await reload(); await deliveriesOf(detail, tenant, ep, reload); })) : null), "actions"],
    ], data.deliveries, "No deliveries with this status.")));
  };
  status.addEventListener("change", () => load().catch(showError));
  detail.replaceChildren(el("div", { className: "detail" },
    el("h3", {}, "Deliveries to " + ep.url),
    el("div", { className: "toolbar" }, el("label", {}, "Status", status)), list, shown));
  await load();
}

// hourText shows the start of an hour without its zero seconds.
function hourText(s) { return when(s).replace(/:00:00Z$/, ":00Z"); }

// failing says whether delivery d is still being retried after failed
// attempts.
function failing(d) { return d.status === "pending" && d.attempts > 0 && d.last_error !== null && d.last_error !== undefined; }

async function redeliver(d, reload) {
  const ok = await confirmAction("Redeliver webhook delivery " + d.id + "?",
    "The " + d.event_type + " event " + d.event_id + " is queued again, due now and retried anew, with the same event id and body (receivers deduplicate on it); a failing endpoint is made active again. The audit log records it as webhook.redeliver with your key.",
    "Redeliver", false);
  if (ok === null) return;
  showError(null);
  try {
    const r = await api("/v1/admin/webhooks/deliveries/" + encodeURIComponent(d.id) + "/redeliver", { method: "POST" });
    await reload();
    notice("Delivery " + d.id + " is " + r.status + " again, next attempt " + when(r.next_attempt_at));
  } catch (e) { showError(e); }
}

// groupText shows a breach's group: "-" for a whole meter.
function groupText(g) {
  if (!g || (typeof g === "object" && Object.keys(g).length === 0)) return "-";
  return typeof g === "object" ? Object.entries(g).map(([k, v]) => k + "=" + v).join(", ") : String(g);
}

function quotaList(qs) {
  if (!qs || !qs.length) return "none";
  return qs.map((q) => (q.meter || q.metric) + ": " + (q.limit === null ? "unlimited" : q.limit) + "/" + q.period + (q.hard ? " hard" : "")).join(", ");
}

async function tenantHistory(detail, tenant) {
  try {
    const data = await api("/v1/admin/tenants/" + encodeURIComponent(tenant) + "/plans");
    detail.replaceChildren(el("div", { className: "detail" }, el("h3", {}, "Plan history of " + tenant),
      table("tenant-plans", [
        ["Plan", (a) => a.plan === null ? "(none)" : a.plan],
        ["From", (a) => a.valid_from ? when(a.valid_from) : "(always)"],
        ["To", (a) => a.valid_to ? when(a.valid_to) : "(in force)"],
        ["Source", (a) => a.source],
        ["Recorded", (a) => when(a.created_at), "date"],
      ], data.plans, "No plan was ever assigned.")));
  } catch (e) { showError(e); }
}

async function planVersions(detail, plan) {
  try {
    const data = await api("/v1/admin/plans/" + encodeURIComponent(plan) + "/versions");
    detail.replaceChildren(el("div", { className: "detail" }, el("h3", {}, "Versions of " + plan),
      table("plan-versions", [
        ["Version", (v) => v.version, "num"],
        ["Effective from", (v) => v.effective_from ? when(v.effective_from) : "(always)"],
        ["Proration", (v) => v.proration],
        ["Scheduled", (v) => v.scheduled ? "yes" : "no"],
        ["Quotas", (v) => quotaList(v.quotas)],
      ], data.versions)));
  } catch (e) { showError(e); }
}

// pushesOf drills from a reconciliation row to its pushes.
async function pushesOf(drill, row) {
  try {
    const q = new URLSearchParams({ tenant: row.tenant, period: row.period, metric: row.metric });
    const data = await api("/v1/lineage/pushes?" + q);
    const more = el("div", { id: "push-lineage" });
    drill.replaceChildren(el("div", { className: "detail" },
      el("h3", {}, "Pushes of " + row.tenant + " / " + (row.meter || row.metric) + " in " + row.period),
      table("pushes", [
        ["Identifier", (p) => p.identifier, "mono"],
        ["Group", (p) => p.group],
        ["Delta", (p) => p.delta, "num"],
        ["Status", (p) => pill(p.status)],
        ["Created", (p) => when(p.created_at), "date"],
        ["", (p) => el("button", { type: "button", testid: "lineage-" + p.identifier, onclick: () => pushLineage(more, p.identifier) }, "Window and events")],
      ], data.pushes, "No pushes: nothing of this row was sent to Stripe."), more));
  } catch (e) { showError(e); }
}

async function pushLineage(out, identifier) {
  try {
    const base = "/v1/lineage/pushes/" + encodeURIComponent(identifier);
    const push = await api(base);
    const body = await (await request(base + "/events")).text();
    const items = body.split("\n").filter((l) => l.trim() !== "").map(parse);
    out.replaceChildren(el("h3", {}, "Push " + identifier),
      el("p", { className: "muted" }, "Brings the month to " + push.cumulative_total + ", a delta of " + push.delta + (push.previous_identifier
        ? " from the previous push " + push.previous_identifier + " at " + push.previous_cumulative_total : ": the month's first push") + (push.complete ? "" : "; part of its history predates lineage")),
      table("push-windows", [
        ["Meter", (w) => w.meter, "mono"], ["Window", (w) => w.window], ["Start", (w) => when(w.start)], ["End", (w) => when(w.end)],
      ], push.windows),
      table("push-events", [
        ["Kind", (i) => i.kind], ["Id", (i) => i.id, "mono"], ["Value", (i) => i.value, "num"], ["Time", (i) => when(i.time)],
        ["Partition", (i) => i.partition, "num"], ["Offset", (i) => i.offset, "num"],
      ], items, "No events: this push carried none."));
  } catch (e) {
    out.replaceChildren(el("p", { className: "muted", id: "lineage-unavailable" }, e.message));
  }
}

async function showUsageLetter(detail, id) {
  try {
    const d = await api("/v1/admin/dlq/usage/" + id);
    detail.replaceChildren(el("div", { className: "detail" }, el("h3", {}, "Usage dead letter " + id),
      el("p", {}, "From " + d.source_topic + " partition " + d.source_partition + " offset " + d.source_offset + "; " + d.error_class + ": " + d.error),
      el("p", { className: "muted" }, "Key" + (d.key_null ? " (null)" : "")), el("pre", { id: "dlq-usage-key" }, d.key),
      el("p", { className: "muted" }, "Payload" + (d.payload_null ? " (null: a tombstone)" : "")), el("pre", { id: "dlq-usage-payload" }, d.payload)));
  } catch (e) { showError(e); }
}

async function showBillingLetter(detail, id) {
  try {
    const d = await api("/v1/admin/dlq/billing/" + id);
    detail.replaceChildren(el("div", { className: "detail" }, el("h3", {}, "Billing dead letter " + id),
      el("pre", { id: "dlq-billing-push" }, JSON.stringify(d, null, 2))));
  } catch (e) { showError(e); }
}

async function resolveLetter(queue, id, action, reload, detail) {
  const verb = action === "replay" ? "Replay" : "Discard";
  const what = action === "replay"
    ? (queue === "usage" ? "The record goes back to usage.events; an event already counted is not counted twice." : "The push is sent to Stripe again.")
    : (queue === "usage" ? "The record is closed without being counted." : "The push is closed unsent: its usage stays unbilled and shows as drift.");
  const note = await confirmAction(verb + " " + queue + " dead letter " + id + "?", what, verb);
  if (note === null) return;
  showError(null);
  try {
    const r = await api("/v1/admin/dlq/" + queue + "/" + id + "/" + action, { method: "POST", body: { note } });
    detail.replaceChildren();
    await reload();
    notice(verb + " of " + queue + " dead letter " + id + ": " + (r.status || "done") + (r.sent !== undefined ? " (" + r.sent + " sent, " + r.dead + " back in the queue)" : ""));
  } catch (e) { showError(e); }
}

// decideHold approves or rejects held push h after a confirmation with a
// note, then reads the list again.
async function decideHold(h, action, reload) {
  const verb = action === "approve" ? "Approve" : "Reject";
  const what = (action === "approve"
    ? "The push is sent to Stripe now, with the pushes that waited behind it."
    : "The push is never sent: its usage stays unbilled and shows as drift.") +
    " " + h.tenant + " / " + h.meter + (h.group_key ? " [" + h.group_key + "]" : "") + " in " + h.period + ", delta " + h.value + ".";
  const note = await confirmAction(verb + " held push " + h.id + "?", what, verb);
  if (note === null) return;
  showError(null);
  try {
    const r = await api("/v1/admin/holds/" + encodeURIComponent(h.id) + "/" + action, { method: "POST", body: { note } });
    await reload();
    notice((action === "approve" ? "Approved" : "Rejected") + " held push " + h.id + ": " + r.status +
      (action === "approve" ? " (" + r.sent + " sent now, " + r.dead + " to the billing DLQ)" : ", never sent"));
  } catch (e) { showError(e); }
}

// ---- navigation and sign-in ----

async function route() {
  showError(null);
  notice(null);
  if (!role) return;
  const name = (location.hash || "#tenants").slice(1);
  const page = pages[name] ? name : "tenants";
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("current", a.id === "nav-" + page);
  const view = $("view");
  view.replaceChildren();
  view.dataset.page = page;
  view.dataset.ready = "";
  try { await pages[page](view); } catch (e) { showError(e); }
  view.dataset.ready = page;
}

function signOut(message) {
  sessionStorage.removeItem("consoleKey");
  role = "";
  $("nav").hidden = true;
  $("logout").hidden = true;
  $("who").textContent = "";
  $("view").replaceChildren();
  $("login").hidden = false;
  if (message) showError({ message });
}

async function signIn() {
  let me;
  try { me = await api("/v1/whoami"); } catch (e) { if (e.status !== 401) showError(e); return; }
  if (me.role !== "admin" && me.role !== "viewer") {
    signOut("This is a key of tenant " + me.tenant + ": the console needs an admin or viewer key. A tenant's usage page is /ui?tenant=" + me.tenant + ".");
    return;
  }
  role = me.role;
  document.body.dataset.role = role;
  $("who").textContent = "signed in with " + (role === "viewer" ? "a viewer key (read-only)" : "an admin key");
  $("login").hidden = true;
  $("nav").hidden = false;
  $("logout").hidden = false;
  await route();
}

$("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const k = $("key").value.trim();
  $("key").value = "";
  if (!k) return;
  sessionStorage.setItem("consoleKey", k);
  showError(null);
  signIn();
});
$("logout").addEventListener("click", () => signOut(""));
window.addEventListener("hashchange", route);

if (key()) signIn(); else $("login").hidden = false;
