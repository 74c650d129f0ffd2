// The console's pages: plain DOM, every string from the hub set as text (never as HTML), the
// data from the read-only JSON API under /api/v1/ (hub/service/console/api.py).
"use strict";

const main = document.getElementById("main");
let stream = null; // the live event stream of the events page
let charts = [];

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "text") node.textContent = value;
    else if (key === "onclick") node.addEventListener("click", value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

async function api(path) {
  const response = await fetch("/api/v1/" + path, { headers: { Accept: "application/json" } });
  if (!response.ok) throw new Error(path + ": " + response.status);
  return response.json();
}

const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(3) + "%");
const interval = (ci) => pct(ci[0]) + " – " + pct(ci[1]);
const when = (t) => (t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) + "Z" : "–");

function table(headers, rows) {
  const head = el("tr", {}, ...headers.map(([label, cls]) => el("th", { text: label, class: cls || "" })));
  return el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows));
}

function setStatus(text) {
  document.getElementById("status").textContent = text;
}

// -- Links -------------------------------------------------------------------------------

async function showLinks() {
  const data = await api("links");
  const rows = Object.entries(data.links).map(([name, link]) => {
    const expected = data.expected[name] || {};
    const row = el("tr", { "data-link": name, class: link.abnormal.length ? "abnormal" : "" },
      el("td", { text: name }),
      el("td", { text: String(link.received), "data-field": "received" }),
      el("td", { text: pct(link.loss_rate), "data-field": "loss_rate" }),
      el("td", { text: interval(link.loss_rate_ci), class: "wide", "data-field": "loss_rate_ci" }),
      el("td", { text: pct(expected.frame_loss), class: "wide" }),
      el("td", { text: pct(link.corrupt_rate), "data-field": "corrupt_rate" }),
      el("td", { text: pct(expected.corrupt), class: "wide" }),
      el("td", { text: String(link.duplicate), class: "wide", "data-field": "duplicate" }),
      el("td", { text: String(link.reordered), class: "wide", "data-field": "reordered" }),
      el("td", { text: String(link.forged), "data-field": "forged" }),
      el("td", { text: String(link.replay), "data-field": "replay" }),
      el("td", { text: link.burst_mean.toFixed(2), class: "wide", "data-field": "burst_mean" }),
      el("td", { text: link.abnormal.join("; ") || "normal", class: link.abnormal.length ? "reason" : "muted",
                 "data-field": "abnormal" }));
    return row;
  });
  main.replaceChildren(
    el("h1", { text: "Links" }),
    table([["link"], ["received"], ["loss"], ["loss 95% interval", "wide"], ["expected loss", "wide"],
           ["corruption"], ["expected", "wide"], ["duplicates", "wide"], ["reordered", "wide"], ["forged"],
           ["replays"], ["burst mean", "wide"], ["state"]], rows),
    el("p", { class: "muted", text: "Unknown devices: " + data.unknown_device + ". As of " + when(data.generated_at) }),
    ...radioTables(data.links));
}

// Links whose uplinks came with radio figures (LoRaWAN): where records were lost, and how
// each gateway hears the link's devices.
function radioTables(links) {
  const radio = Object.entries(links).filter(([, link]) => link.radio);
  if (!radio.length) return [];
  const num = (x) => (x === null || x === undefined ? "–" : String(x));
  const losses = radio.map(([name, link]) => el("tr", { "data-radio": name },
    el("td", { text: name }), el("td", { text: String(link.radio.uplinks) }),
    el("td", { text: String(link.radio.lost_after_transmission), "data-field": "lost_after_transmission" }),
    el("td", { text: String(link.radio.lost_before_transmission), "data-field": "lost_before_transmission" })));
  const gateways = radio.flatMap(([name, link]) => Object.entries(link.radio.gateways).map(([id, g]) =>
    el("tr", { "data-gateway": id }, el("td", { text: name }), el("td", { text: id }),
      el("td", { text: String(g.frames) }), el("td", { text: pct(g.share) }),
      el("td", { text: num(g.rssi_median) + " dBm" }), el("td", { text: num(g.snr_median) + " dB" }))));
  return [
    el("h2", { text: "Radio" }),
    table([["link"], ["uplinks"], ["lost after sending"], ["never sent"]], losses),
    table([["link"], ["gateway", "text"], ["frames"], ["share"], ["RSSI median"], ["SNR median"]], gateways),
  ];
}

// -- Charts ------------------------------------------------------------------------------

async function showCharts(span) {
  span = span || "1h";
  const links = Object.keys((await api("links")).links);
  const buttons = ["15m", "1h", "24h", "7d", "90d"].map((s) =>
    el("button", { text: s, class: s === span ? "active" : "", onclick: () => { location.hash = "charts/" + s; } }));
  const holder = el("div");
  main.replaceChildren(el("h1", { text: "Loss and corruption over time" }), el("div", { class: "controls" }, ...buttons),
                       holder);
  charts.forEach((chart) => chart.destroy());
  charts = [];
  for (const link of links) {
    const series = await api("series?link=" + encodeURIComponent(link) + "&span=" + span);
    const box = el("div", { class: "chart", "data-chart": link }, el("h2", { text: link }));
    holder.append(box);
    const width = Math.max(280, Math.min(900, main.clientWidth - 40));
    charts.push(new uPlot({
      width, height: 180,
      series: [{}, { label: "loss", stroke: "#d64545", value: (u, v) => pct(v) },
               { label: "corruption", stroke: "#3d5afe", value: (u, v) => pct(v) },
               { label: "forged + replays", stroke: "#8d6e63", scale: "n" }],
      axes: [{}, { values: (u, ticks) => ticks.map((v) => (100 * v).toFixed(2) + "%") }, { side: 1, scale: "n" }],
    }, [series.t, series.loss_rate, series.corrupt_rate, series.security_events], box));
  }
}

// -- Security events (live) ---------------------------------------------------------------

function eventRow(event) {
  return el("tr", { "data-kind": event.kind },
    el("td", { text: when(event.t) }), el("td", { text: event.kind, class: "text" }),
    el("td", { text: event.link || "–", class: "text" }), el("td", { text: event.device || "–", class: "text" }),
    el("td", { text: event.reason, class: "text reason" }));
}

async function showEvents() {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const filter = (event) => ["kind", "link", "device"].every((key) => !params.get(key) || event[key] === params.get(key));
  const body = el("tbody", { id: "events-body" });
  const audit = await api("audit");
  const first = await api("events?limit=500&" + params.toString());
  first.events.forEach((event) => body.prepend(eventRow(event)));
  const inputs = ["kind", "link", "device"].map((key) => el("input", { placeholder: key, name: key, "aria-label": key,
                                                                        value: params.get(key) || "" }));
  const apply = el("button", { text: "Filter", onclick: () => {
    const query = new URLSearchParams();
    inputs.forEach((input) => { if (input.value) query.set(input.name, input.value); });
    location.hash = "events?" + query.toString();
  } });
  main.replaceChildren(
    el("h1", { text: "Security events" }),
    el("p", { id: "audit", class: audit.chain_intact ? "muted" : "reason",
              text: audit.chain_intact ? "Hash chain verified: " + audit.events_checked + " events intact."
                                       : "Hash chain BROKEN: " + audit.problem }),
    el("div", { class: "controls" }, ...inputs, apply),
    el("table", {}, el("thead", {}, el("tr", {}, el("th", { text: "time" }), ...["kind", "link", "device", "reason"]
      .map((h) => el("th", { text: h, class: "text" })))), body));
  // Everything after the last event shown arrives live; none is read twice.
  stream = new EventSource("/api/v1/stream?after=" + first.last_id);
  stream.onmessage = (message) => {
    const event = JSON.parse(message.data);
    if (filter(event)) body.prepend(eventRow(event));
  };
}

// -- Devices ------------------------------------------------------------------------------

async function showDevices(query) {
  const box = el("input", { id: "device-search", placeholder: "device id contains…", value: query || "",
                            "aria-label": "device id contains" });
  const go = () => { location.hash = "devices?q=" + encodeURIComponent(box.value); };
  box.addEventListener("keydown", (e) => { if (e.key === "Enter") go(); });
  const data = await api("devices?limit=200&q=" + encodeURIComponent(query || ""));
  const rows = Object.entries(data.devices).map(([id, d]) => {
    const status = d.status || {};
    const link = el("a", { href: "#device/" + encodeURIComponent(id), text: id });
    return el("tr", { "data-device": id }, el("td", {}, link), el("td", { text: d.link, class: "text" }),
      el("td", { text: d.liveness || "–", class: "text" }),
      el("td", { text: when(status.t), class: "wide" }), el("td", { text: status.fw || "–", class: "wide" }),
      el("td", { text: status.queued === undefined ? "–" : String(status.queued), class: "wide" }),
      el("td", { text: String(d.source_drops), class: "wide" }), el("td", { text: pct(d.loss_rate) }));
  });
  main.replaceChildren(el("h1", { text: "Devices" }),
    el("div", { class: "controls" }, box, el("button", { text: "Search", onclick: go })),
    el("p", { class: "muted", text: data.total + " matching" }),
    table([["device"], ["link", "text"], ["liveness", "text"], ["last seen", "wide"], ["firmware", "wide"],
           ["queued", "wide"], ["source drops", "wide"], ["loss"]], rows));
}

async function showDevice(id) {
  const data = await api("devices/" + encodeURIComponent(id));
  const d = data.device;
  const facts = [["link", d.link], ["received", d.received], ["valid", d.valid], ["lost", d.lost],
                 ["loss", pct(d.loss_rate)], ["forged", d.forged], ["replays", d.replay],
                 ["lost on device", d.lost_on_device], ["unencrypted", d.unencrypted],
                 ["epoch reuse", d.epoch_reuse], ["liveness", (d.liveness || "–") + " since " + when(d.liveness_since)],
                 ["status", JSON.stringify(d.status)]];
  if (d.radio) {
    facts.push(["uplinks", d.radio.uplinks], ["lost after sending", d.radio.lost_after_transmission],
               ["never sent", d.radio.lost_before_transmission], ["gateways", JSON.stringify(d.radio.gateways)]);
  }
  const box = el("div", { class: "chart" });
  main.replaceChildren(el("h1", { text: id }),
    table([["what"], ["value", "text"]], facts.map(([k, v]) => el("tr", {}, el("td", { text: k }),
                                                            el("td", { text: String(v), class: "text" })))),
    el("h2", { text: "Loss, last 24 h" }), box,
    el("h2", { text: "Security events" }),
    el("table", {}, el("tbody", {}, ...data.events.slice().reverse().map(eventRow))));
  const s = data.series;
  charts.push(new uPlot({ width: Math.max(280, Math.min(900, main.clientWidth - 40)), height: 160,
    series: [{}, { label: "loss", stroke: "#d64545", value: (u, v) => pct(v) }] }, [s.t, s.loss_rate], box));
}

// -- Watch: who is silent, offline or in behaviour alarm now (docs/behaviour.md) ----------

async function showWatch() {
  const data = await api("watch");
  const silent = Object.entries(data.silent_by_link).map(([link, n]) =>
    el("tr", { "data-silent-link": link }, el("td", { text: link, class: "text" }), el("td", { text: String(n) })));
  const quiet = data.quiet.map((q) => el("tr", { "data-quiet": q.device, class: q.liveness === "silent" ? "abnormal" : "" },
    el("td", {}, el("a", { href: "#device/" + encodeURIComponent(q.device), text: q.device })),
    el("td", { text: q.link || "–", class: "text" }), el("td", { text: q.liveness, class: "text" }),
    el("td", { text: when(q.since), class: "wide" })));
  const alarms = data.alarms.map((a) => el("tr", { "data-alarm": a.device + "/" + a.behaviour, class: "abnormal" },
    el("td", {}, el("a", { href: "#device/" + encodeURIComponent(a.device), text: a.device })),
    el("td", { text: a.link || "–", class: "text" }), el("td", { text: a.behaviour, class: "text" }),
    el("td", { text: when(a.since), class: "wide" }), el("td", { text: a.reason, class: "text reason" })));
  main.replaceChildren(
    el("h1", { text: "Watch" }),
    el("h2", { text: "Silent devices by link" }),
    silent.length ? table([["link", "text"], ["silent"]], silent) : el("p", { class: "muted", text: "No device is silent." }),
    el("h2", { text: "Silent or offline (" + data.quiet_total + ")" }),
    table([["device"], ["link", "text"], ["liveness", "text"], ["since", "wide"]], quiet),
    el("h2", { text: "In behaviour alarm (" + data.alarms_total + ")" }),
    table([["device"], ["link", "text"], ["behaviour", "text"], ["since", "wide"], ["reason", "text"]], alarms),
    el("p", { class: "muted", text: "As of " + when(data.generated_at) }));
}

// -- routing ------------------------------------------------------------------------------

async function route() {
  if (stream) { stream.close(); stream = null; }
  charts.forEach((chart) => chart.destroy());
  charts = [];
  const hash = decodeURIComponent(location.hash.slice(1)) || "links";
  const [page, rest] = [hash.split(/[/?]/)[0], hash.slice(hash.split(/[/?]/)[0].length + 1)];
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.id === "nav-" + page));
  try {
    if (page === "charts") await showCharts(rest);
    else if (page === "events") await showEvents();
    else if (page === "devices") await showDevices(new URLSearchParams(rest).get("q"));
    else if (page === "device") await showDevice(rest);
    else if (page === "watch") await showWatch();
    else await showLinks();
    setStatus("updated " + when(Date.now() / 1000));
  } catch (error) {
    main.replaceChildren(el("p", { class: "reason", text: String(error) }));
  }
}

window.addEventListener("hashchange", route);
route();
