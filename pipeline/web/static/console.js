// tts-pipeline console: plain JS, no build step, no dependencies. Every DOM node is built with
// createElement/textContent (never innerHTML with data), so job text cannot inject markup.
"use strict";

const STATES = ["QUEUED", "PROCESSING", "COMPLETED", "FAILED", "CANCELLED", "EXPIRED"];
const TERMINAL = new Set(["COMPLETED", "FAILED", "CANCELLED", "EXPIRED"]);
const LIST_POLL_MS = 2000;
const JOB_POLL_MS = 1500;
const PAGE = 20;

let view = null; // {stop()} of the current view
let session = null;

// -- helpers ----------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error && body.error.code;
  }
}

async function api(path, opts = {}) {
  const init = { credentials: "same-origin", ...opts, headers: { ...(opts.headers || {}) } };
  if (init.method && init.method !== "GET") init.headers["X-Console"] = "1";
  const resp = await fetch(path, init);
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  if (resp.status === 401) { location.assign("/login"); throw new ApiError(401, body); }
  if (!resp.ok) throw new ApiError(resp.status, body);
  return body;
}

function toast(msg, isError) {
  const t = document.getElementById("toast");
  t.textContent = msg;
  t.className = "show" + (isError ? " error" : "");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.className = ""; }, 5000);
}

function ago(iso, now) {
  const s = Math.max(0, ((now || Date.now()) - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

function secs(s) {
  if (s === null || s === undefined) return "";
  if (s < 60) return `${s.toFixed(1)} s`;
  return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

function stateBadge(state, id) {
  return h("span", { class: `state state-${state}`, id }, state);
}

function navigate(url) {
  history.pushState(null, "", url);
  route();
}

document.addEventListener("click", (ev) => {
  const a = ev.target.closest && ev.target.closest("a[data-nav]");
  if (!a || ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.button !== 0) return;
  ev.preventDefault();
  navigate(a.getAttribute("href"));
});
window.addEventListener("popstate", route);

function route() {
  if (view) view.stop();
  const main = document.getElementById("main");
  main.replaceChildren();
  const m = location.pathname.match(/^\/jobs\/([A-Za-z0-9._-]{1,128})$/);
  view = m ? jobView(main, decodeURIComponent(m[1])) : homeView(main);
  if (!m && location.hash === "#voices") {
    const v = document.getElementById("voices");
    if (v) v.scrollIntoView();
  }
}

// -- home: submit, jobs, voices -----------------------------------------------------------------

function homeView(main) {
  let stopped = false;
  let timer = null;
  let offset = 0;
  let filter = "";
  const voicesChanged = [];

  const submitCard = submitForm(voicesChanged);
  const tbody = h("tbody");
  const info = h("span", { class: "muted", "aria-live": "polite" });
  const prev = h("button", { type: "button", class: "secondary", onclick: () => { offset = Math.max(0, offset - PAGE); refresh(); } }, "← Newer");
  const next = h("button", { type: "button", class: "secondary", onclick: () => { offset += PAGE; refresh(); } }, "Older →");
  const stateSel = h("select", { id: "filter-state", onchange: () => { filter = stateSel.value; offset = 0; refresh(); } },
    h("option", { value: "" }, "All states"), STATES.map((s) => h("option", { value: s }, s)));
  const jobsCard = h("section", { class: "card", "aria-labelledby": "jobs-h" },
    h("h2", { id: "jobs-h" }, "Recent jobs"),
    h("div", { class: "row" }, h("div", {}, h("label", { for: "filter-state" }, "State"), stateSel)),
    h("table", { id: "jobs" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Job"), h("th", { scope: "col" }, "State"),
        h("th", { scope: "col", class: "opt" }, "Age"), h("th", { scope: "col", class: "opt" }, "Duration"),
        h("th", { scope: "col" }, "Voice"), h("th", { scope: "col" }, "Error"))),
      tbody),
    h("div", { class: "pager" }, prev, next, info));
  const voicesCard = voicesSection(voicesChanged);
  main.append(h("div", { class: "grid" }, submitCard, voicesCard), jobsCard);

  async function refresh() {
    clearTimeout(timer);
    try {
      const q = new URLSearchParams({ offset, limit: PAGE });
      if (filter) q.set("state", filter);
      const body = await api(`/console/api/jobs?${q}`);
      if (stopped) return;
      const now = Date.parse(body.now) || Date.now();
      tbody.replaceChildren(...body.jobs.map((j) => h("tr", { "data-job": j.job_id },
        h("td", { class: "id" }, h("a", { href: `/jobs/${encodeURIComponent(j.job_id)}`, "data-nav": true }, j.job_id)),
        h("td", {}, stateBadge(j.state), j.progress && j.progress.chunks_total
          ? h("progress", { max: j.progress.chunks_total, value: j.progress.chunks_done, "aria-label": `progress of ${j.job_id}` }) : null),
        h("td", { class: "opt" }, h("time", { datetime: j.created_at, title: j.created_at }, ago(j.created_at, now))),
        h("td", { class: "opt" }, secs(j.duration_s)),
        h("td", {}, j.voice || ""),
        h("td", { class: "error" }, j.error_code || ""))));
      if (!body.jobs.length) tbody.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No jobs.")));
      const last = offset + body.jobs.length;
      info.textContent = body.total ? `${offset + 1}–${last} of ${body.total}${body.total_exact ? "" : "+"}` : "";
      prev.disabled = offset === 0;
      next.disabled = last >= body.total;
    } catch (e) {
      if (!stopped) info.textContent = `Could not load jobs: ${e.message}`;
    }
    if (!stopped) timer = setTimeout(refresh, LIST_POLL_MS);
  }
  refresh();
  return { stop() { stopped = true; clearTimeout(timer); } };
}

function submitForm(voicesChanged) {
  const voiceSel = h("select", { id: "voice", name: "voice", required: true });
  const clipBox = h("div", { hidden: true },
    h("label", { for: "clip" }, "Reference clip"),
    h("input", { id: "clip", name: "clip", type: "file", accept: "audio/*,.wav,.flac,.mp3,.ogg" }),
    h("label", { for: "ref_text" }, "Transcript of the clip (empty: the worker transcribes it)"),
    h("input", { id: "ref_text", name: "ref_text", type: "text" }));
  const msg = h("p", { class: "error", role: "alert" });
  async function loadVoices() {
    const current = voiceSel.value;
    let voices = [];
    try { voices = (await api("/console/api/voices")).voices; } catch (e) { msg.textContent = e.message; }
    voiceSel.replaceChildren(...voices.map((v) => h("option", { value: v.name }, v.name)),
      h("option", { value: "" }, "Upload a clip…"));
    if ([...voiceSel.options].some((o) => o.value === current)) voiceSel.value = current;
    clipBox.hidden = voiceSel.value !== "";
  }
  voicesChanged.push(loadVoices);
  voiceSel.addEventListener("change", () => { clipBox.hidden = voiceSel.value !== ""; });
  const form = h("form", { id: "submit-form", "aria-labelledby": "submit-h" },
    h("label", { for: "text" }, "Text"),
    h("textarea", { id: "text", name: "text", required: true, placeholder: "What should the voice say?" }),
    h("label", { for: "voice" }, "Voice"), voiceSel, clipBox,
    h("div", { class: "row" },
      h("div", {}, h("label", { for: "speed" }, "Speed"),
        h("input", { id: "speed", name: "speed", type: "number", min: "0.25", max: "4", step: "0.05", value: "1" })),
      h("div", {}, h("label", { for: "output_format" }, "Format"),
        h("select", { id: "output_format", name: "output_format" }, ["wav", "mp3", "flac", "ogg"].map((f) => h("option", { value: f }, f))))),
    h("fieldset", {}, h("legend", {}, "Subtitles"),
      h("input", { id: "sub-srt", type: "checkbox", name: "subtitles", value: "srt" }), h("label", { for: "sub-srt" }, "SRT"),
      h("input", { id: "sub-vtt", type: "checkbox", name: "subtitles", value: "vtt" }), h("label", { for: "sub-vtt" }, "WebVTT")),
    msg,
    h("button", { type: "submit", id: "submit-job" }, "Submit job"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    msg.textContent = "";
    const data = new FormData(form);
    if (voiceSel.value !== "") { data.delete("clip"); data.delete("ref_text"); }
    else if (!form.clip.files.length) { msg.textContent = "Choose a reference clip or a library voice."; return; }
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const body = await api("/console/api/jobs", { method: "POST", body: data });
      toast(`Submitted ${body.job_id}`);
      navigate(`/jobs/${encodeURIComponent(body.job_id)}`);
    } catch (e) {
      msg.textContent = e.message;
    } finally {
      button.disabled = false;
    }
  });
  loadVoices();
  return h("section", { class: "card" }, h("h2", { id: "submit-h" }, "New job"), form);
}

function voicesSection(voicesChanged) {
  const list = h("ul", { class: "voices", "aria-live": "polite" });
  const msg = h("p", { class: "error", role: "alert" });
  async function load() {
    try {
      const { voices } = await api("/console/api/voices");
      list.replaceChildren(...voices.map((v) => h("li", { "data-voice": v.name },
        h("strong", {}, v.name), " ", h("span", { class: "muted" }, `${v.duration_s.toFixed(1)} s`), " ",
        v.url ? h("audio", { controls: true, preload: "none", src: v.url, "aria-label": `voice ${v.name}` }) : null, " ",
        h("button", { type: "button", class: "secondary", "aria-label": `Remove voice ${v.name}`, onclick: () => remove(v.name) }, "Remove"),
        h("div", { class: "muted" }, v.ref_text ? `“${v.ref_text}” (${v.ref_text_source || "user"})` : "no transcript yet"))));
      if (!voices.length) list.append(h("li", { class: "muted" }, "The library is empty."));
    } catch (e) { msg.textContent = e.message; }
  }
  async function remove(name) {
    if (!confirm(`Remove voice ${name}?`)) return;
    try {
      await api(`/console/api/voices/${encodeURIComponent(name)}`, { method: "DELETE" });
      toast(`Removed ${name}`);
      changed();
    } catch (e) { msg.textContent = e.message; }
  }
  function changed() { load(); for (const f of voicesChanged) f(); }
  const form = h("form", { id: "voice-form" },
    h("div", { class: "row" },
      h("div", {}, h("label", { for: "voice-name" }, "Name"), h("input", { id: "voice-name", name: "name", type: "text", required: true, pattern: "[A-Za-z0-9][A-Za-z0-9._-]{0,63}" })),
      h("div", {}, h("label", { for: "voice-file" }, "Audio file"), h("input", { id: "voice-file", name: "file", type: "file", required: true, accept: "audio/*,.wav,.flac,.mp3,.ogg" }))),
    h("label", { for: "voice-ref" }, "Transcript (optional)"),
    h("input", { id: "voice-ref", name: "ref_text", type: "text" }),
    h("p", {}, h("button", { type: "submit" }, "Add voice")));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    msg.textContent = "";
    try {
      const rec = await api("/console/api/voices", { method: "POST", body: new FormData(form) });
      toast(`Added ${rec.name}`);
      form.reset();
      changed();
    } catch (e) { msg.textContent = e.message; }
  });
  load();
  return h("section", { class: "card", id: "voices", "aria-labelledby": "voices-h" },
    h("h2", { id: "voices-h" }, "Voice library"), list, h("h3", {}, "Add a voice"), form, msg);
}

// -- one job ------------------------------------------------------------------------------------

function jobView(main, jobId) {
  let stopped = false;
  let timer = null;
  let player = null;
  let live = null;
  const stateEl = stateBadge("…", "job-state");
  const cancelBtn = h("button", { type: "button", class: "danger", id: "cancel", hidden: true, onclick: cancel }, "Cancel job");
  const errorBox = h("div", { id: "job-error", class: "error", role: "alert" });
  const progressBox = h("div", { id: "job-progress" });
  const history_ = h("ol", { class: "history", id: "history" });
  const details = h("dl", { class: "kv", id: "job-details" });
  const playerCard = h("section", { class: "card", id: "player-card", hidden: true, "aria-label": "Audio" });
  const voiceCard = h("section", { class: "card", id: "voice-card", hidden: true, "aria-labelledby": "voice-h" });
  const statusPre = h("pre", { id: "raw-status" });
  const resultPre = h("pre", { id: "raw-result" });
  main.append(
    h("p", {}, h("a", { href: "/", "data-nav": true }, "← All jobs")),
    h("h1", {}, jobId),
    h("section", { class: "card", "aria-label": "Status" },
      h("div", { class: "row" }, h("div", {}, "State: ", stateEl), h("div", { class: "actions" }, cancelBtn)),
      progressBox, errorBox, details),
    playerCard, voiceCard,
    h("section", { class: "card", "aria-labelledby": "history-h" }, h("h2", { id: "history-h" }, "History"), history_),
    h("section", { class: "card", "aria-label": "Raw documents" },
      h("details", {}, h("summary", {}, "Status JSON"), statusPre),
      h("details", {}, h("summary", {}, "Result JSON"), resultPre)));

  async function cancel() {
    cancelBtn.disabled = true;
    try {
      await api(`/console/api/jobs/${encodeURIComponent(jobId)}/cancel`, { method: "POST" });
      toast(`Cancellation requested for ${jobId}`);
      refresh();
    } catch (e) { toast(e.message, true); cancelBtn.disabled = false; }
  }

  async function refresh() {
    clearTimeout(timer);
    let body;
    try {
      body = await api(`/console/api/jobs/${encodeURIComponent(jobId)}`);
    } catch (e) {
      if (stopped) return;
      errorBox.textContent = e.status === 404 ? `No job ${jobId}.` : `Could not load the job: ${e.message}`;
      if (e.status !== 404 && e.status !== 400) timer = setTimeout(refresh, JOB_POLL_MS * 2);
      return;
    }
    if (stopped) return;
    const st = body.status;
    stateEl.textContent = st.state;
    stateEl.className = `state state-${st.state}`;
    cancelBtn.hidden = TERMINAL.has(st.state);
    cancelBtn.disabled = false;
    errorBox.replaceChildren(st.error ? h("span", {}, h("strong", { id: "error-code" }, st.error.code), ": ", st.error.message) : "");
    const p = st.progress;
    progressBox.replaceChildren(st.state === "PROCESSING"
      ? h("div", {}, h("label", { for: "job-progress-bar" }, p && p.chunks_total ? `Chunk ${p.chunks_done} of ${p.chunks_total}` : "Working…"),
        p && p.chunks_total ? h("progress", { id: "job-progress-bar", max: p.chunks_total, value: p.chunks_done })
          : h("progress", { id: "job-progress-bar" }))
      : "");
    const rows = [["Created", st.created_at], ["Started", st.started_at], ["Finished", st.finished_at],
      ["Attempt", st.attempt], ["Worker", st.worker]];
    if (body.result) {
      const r = body.result;
      rows.push(["Audio", `${secs(r.audio.duration_s)}, ${r.audio.format}, ${r.audio.sample_rate} Hz`],
        ["Model", `${r.model.name} ${r.model.version} (${r.model.device})${r.model.random_weights ? " — random weights: the audio is noise" : ""}`],
        ["Total time", `${(r.timings_ms.total / 1000).toFixed(1)} s`]);
    }
    details.replaceChildren(...rows.filter(([, v]) => v !== null && v !== undefined && v !== "")
      .flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))]));
    history_.replaceChildren(...st.history.map((t) => h("li", {}, h("strong", {}, t.state), ` ${t.at}`,
      t.worker ? ` · ${t.worker}` : "", t.note ? ` — ${t.note}` : "")));
    statusPre.textContent = JSON.stringify(st, null, 2);
    resultPre.textContent = body.result ? JSON.stringify(body.result, null, 2) : "(no result)";
    showVoice(body.voice);
    if (st.state === "PROCESSING" && !live && !player) live = setupLive(playerCard, jobId);
    if (body.result && !player) {
      if (live) { live.stop(); live = null; }
      player = setupPlayer(playerCard, jobId, body);
    }
    if (!TERMINAL.has(st.state) || (st.state === "COMPLETED" && !body.result)) timer = setTimeout(refresh, JOB_POLL_MS);
  }

  let voiceShown = null;
  function showVoice(v) {
    if (!v) return;
    const key = JSON.stringify(v && { n: v.name, t: v.ref_text, u: !!v.url });
    if (key === voiceShown) return;
    voiceShown = key;
    voiceCard.hidden = false;
    voiceCard.replaceChildren(h("h2", { id: "voice-h" }, "Reference voice"),
      h("p", {}, h("strong", {}, v.name || v.key || "")),
      v.url ? h("audio", { controls: true, preload: "none", src: v.url, id: "ref-audio", "aria-label": "reference voice" }) : h("p", { class: "muted" }, "The reference audio is not available."),
      h("p", { id: "ref-text" }, v.ref_text ? `“${v.ref_text}”` : "No transcript yet (the worker transcribes it)."),
      v.ref_text_source ? h("p", { class: "muted" }, `transcript source: ${v.ref_text_source}`) : null);
  }

  refresh();
  return { stop() { stopped = true; clearTimeout(timer); if (player) player.stop(); if (live) live.stop(); } };
}

// -- live: the job's chunks as they are synthesised, until the finished audio replaces them --------

function setupLive(card, jobId) {
  const audio = h("audio", { controls: true, autoplay: true, preload: "auto", id: "live-audio", "aria-label": "audio so far",
    src: `/console/api/jobs/${encodeURIComponent(jobId)}/live.wav` });
  card.hidden = false;
  card.replaceChildren(h("h2", {}, "Listen while it renders"), audio,
    h("p", { class: "muted" }, "Playing the chunks synthesised so far; the finished audio replaces this when the job completes."));
  return { stop() { audio.pause(); audio.removeAttribute("src"); audio.load(); } };
}

// -- the quality gate's verdict: the chunks a person should listen to ------------------------------

function badChunks(result, seek) {
  const q = result.quality;
  const bad = q && q.chunks ? q.chunks.filter((c) => c.problems && c.problems.length) : [];
  if (!q) return null;
  if (!bad.length) {
    return h("p", { id: "quality", class: "muted" }, `Quality: all ${q.chunks_checked} chunks passed` +
      (q.transcribed ? ` (worst error rate ${q.worst_score === null ? "n/a" : q.worst_score.toFixed(2)})` : " the signal checks") +
      (q.chunks_regenerated ? `; ${q.chunks_regenerated} regenerated` : "") + ".");
  }
  return h("div", { id: "quality", role: "region", "aria-label": "Chunks to listen to" },
    h("h3", {}, `Listen to these ${bad.length} chunk${bad.length > 1 ? "s" : ""}: still failing after ${q.max_retries} retr${q.max_retries === 1 ? "y" : "ies"}`),
    h("ul", {}, ...bad.map((c) => h("li", { class: "bad-chunk", "data-chunk": String(c.chunk) },
      h("button", { type: "button", onclick: () => seek(c.start || 0) }, `${secs(c.start || 0)}`), " ",
      h("strong", {}, `chunk ${c.chunk + 1}`), `: ${c.problems.join(", ")}`,
      c.transcript !== null && c.transcript !== undefined ? ` — heard “${c.transcript}”` : "",
      h("div", { class: "muted" }, c.text)))));
}

// -- player: audio, waveform, words highlighted as they are spoken --------------------------------

function placeWords(text, words) {
  // Absolute [from, to) of each word in `text`: text_start/text_end count from the start of the
  // text, or of the word's dialogue turn (turns are joined by newlines); verified against the text.
  const bases = new Map();
  let cursor = 0;
  return words.map((w) => {
    const len = w.word.length;
    if (w.text_start !== null && w.text_start !== undefined) {
      const seg = w.segment === null || w.segment === undefined ? -1 : w.segment;
      if (seg < 0 && text.substr(w.text_start, len) === w.word) { cursor = w.text_start + len; return w.text_start; }
      if (bases.has(seg)) {
        const at = bases.get(seg) + w.text_start;
        if (text.substr(at, len) === w.word) { cursor = at + len; return at; }
      }
      const found = text.indexOf(w.word, cursor);
      if (found >= 0) { bases.set(seg, found - w.text_start); cursor = found + len; return found; }
      return -1;
    }
    const found = text.indexOf(w.word, cursor);
    if (found >= 0) cursor = found + len;
    return found;
  });
}

function setupPlayer(card, jobId, body) {
  const result = body.result;
  const words = (result.word_timings || []).slice();
  const audio = h("audio", { controls: true, preload: "auto", src: body.audio_url, id: "player", "aria-label": "job audio" });
  const canvas = h("canvas", { class: "wave", id: "wave", "aria-hidden": "true" });
  const transcript = h("div", { class: "transcript", id: "transcript", lang: "" });
  const subs = body.subtitles.map((f) => h("a", { href: `/console/api/jobs/${encodeURIComponent(jobId)}/subtitles/${f}`, download: `${jobId}.${f}`, class: "sub" }, `Download .${f}`));

  // The text, with each aligned word as a button (focusable, Enter/Space seeks to it).
  const text = result.text || "";
  const at = placeWords(text, words);
  const spans = [];
  let pos = 0;
  const placed = at.every((p, i) => p >= 0 && (i === 0 || p >= at[i - 1]));
  words.forEach((w, i) => {
    const b = h("button", { type: "button", class: "word", "data-i": i, "data-start": w.start, "data-end": w.end,
      title: `${w.start.toFixed(2)} s${w.spoken ? ` · spoken “${w.spoken}”` : ""}` }, w.word);
    b.addEventListener("click", () => { audio.currentTime = w.start; highlight(); });
    if (placed) {
      if (at[i] > pos) transcript.append(text.slice(pos, at[i]));
      pos = at[i] + w.word.length;
    } else if (i > 0) transcript.append(" ");
    transcript.append(b);
    spans.push(b);
  });
  if (placed) transcript.append(text.slice(pos));
  if (!words.length) transcript.append(h("span", { class: "muted" }, text || "(no word timings)"));

  let current = -1;
  function wordAt(t) {
    let lo = 0, hi = words.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (words[mid].start <= t) lo = mid + 1; else hi = mid - 1;
    }
    for (let i = hi; i >= 0 && i > hi - 3; i--) if (words[i].start <= t && t < words[i].end) return i;
    return -1;
  }
  function highlight() {
    const i = wordAt(audio.currentTime);
    if (i !== current) {
      if (current >= 0) { spans[current].classList.remove("current"); spans[current].removeAttribute("aria-current"); }
      if (i >= 0) { spans[i].classList.add("current"); spans[i].setAttribute("aria-current", "true"); }
      current = i;
    }
    draw();
  }

  let peaks = null;
  function duration() { return isFinite(audio.duration) && audio.duration > 0 ? audio.duration : result.audio.duration_s; }
  function draw() {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(canvas.clientWidth * dpr)), hgt = Math.max(1, Math.round(canvas.clientHeight * dpr));
    if (canvas.width !== w || canvas.height !== hgt) { canvas.width = w; canvas.height = hgt; }
    const g = canvas.getContext("2d");
    g.clearRect(0, 0, w, hgt);
    if (!peaks) return;
    const played = duration() ? audio.currentTime / duration() : 0;
    const n = peaks.length, mid = hgt / 2;
    for (let x = 0; x < w; x++) {
      const p = peaks[Math.min(n - 1, Math.floor((x / w) * n))];
      g.fillStyle = x / w < played ? "#2456c9" : "#9aa7bd";
      const bar = Math.max(1, p * (hgt - 4));
      g.fillRect(x, mid - bar / 2, 1, bar);
    }
    g.fillStyle = "#b3261e";
    g.fillRect(Math.round(played * w), 0, Math.max(1, dpr), hgt);
  }
  canvas.addEventListener("click", (ev) => {
    const r = canvas.getBoundingClientRect();
    audio.currentTime = ((ev.clientX - r.left) / r.width) * duration();
    highlight();
  });
  api(`/console/api/jobs/${encodeURIComponent(jobId)}/peaks?n=1000`).then((b) => { peaks = b.peaks; draw(); })
    .catch(() => { canvas.hidden = true; });

  let raf = 0;
  function tick() { highlight(); raf = audio.paused ? 0 : requestAnimationFrame(tick); }
  for (const ev of ["timeupdate", "seeked", "seeking", "loadedmetadata"]) audio.addEventListener(ev, highlight);
  audio.addEventListener("play", () => { if (!raf) raf = requestAnimationFrame(tick); });
  window.addEventListener("resize", draw);

  card.hidden = false;
  card.replaceChildren(h("h2", {}, "Audio"), audio, canvas,
    h("p", { class: "muted" }, "Words light up as they are spoken; select a word to jump to it."),
    transcript, subs.length ? h("p", { id: "subtitles" }, ...subs.flatMap((a) => [a, " "])) : null,
    badChunks(result, (t) => { audio.currentTime = t; highlight(); }));
  draw();
  return { stop() { cancelAnimationFrame(raf); window.removeEventListener("resize", draw); audio.pause(); } };
}

// -- start ---------------------------------------------------------------------------------------

(async function start() {
  try { session = await api("/console/api/session"); } catch (e) { session = null; }
  if (session && session.auth_required) document.getElementById("logout").hidden = false;
  route();
})();
