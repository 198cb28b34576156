// The chat page: keeps the conversation, sends it to /v1/chat/completions, renders replies.
// Every asset comes from this server; audio (uploaded or recorded) is decoded by the browser
// and sent as 16-bit WAV, which the server's tokenizers read.
"use strict";

const $ = (id) => document.getElementById(id);
const history = [];        // API messages sent so far (user and assistant turns)
let pending = [];          // content parts attached to the next message
let recorder = null;

function apiHeaders() {
  const headers = { "Content-Type": "application/json" };
  const key = $("api_key").value || localStorage.getItem("anygpt_api_key") || "";
  if (key) headers.Authorization = "Bearer " + key;
  return headers;
}

function status(text) { $("status").textContent = text; }

function addTurn(role, parts, extraClass) {
  const div = document.createElement("div");
  div.className = "turn " + role + (extraClass ? " " + extraClass : "");
  for (const part of parts) {
    if (part.text !== undefined) {
      const span = document.createElement("span");
      span.className = "text";
      span.textContent = part.text;
      div.appendChild(span);
    } else if (part.image) {
      const img = document.createElement("img");
      img.src = part.image;
      img.alt = part.alt || "image";
      div.appendChild(img);
    } else if (part.audio) {
      const audio = document.createElement("audio");
      audio.controls = true;
      audio.src = part.audio;
      div.appendChild(audio);
    } else if (part.link) {
      const a = document.createElement("a");
      a.href = part.link;
      a.textContent = part.label;
      a.target = "_blank";
      div.appendChild(a);
    }
  }
  $("conversation").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function readAsBase64(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1]);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

function wavBytes(buffer) {
  // Mono 16-bit PCM WAV of an AudioBuffer (channels averaged).
  const n = buffer.length, rate = buffer.sampleRate, channels = buffer.numberOfChannels;
  const out = new DataView(new ArrayBuffer(44 + 2 * n));
  const text = (offset, s) => { for (let i = 0; i < s.length; i++) out.setUint8(offset + i, s.charCodeAt(i)); };
  text(0, "RIFF"); out.setUint32(4, 36 + 2 * n, true); text(8, "WAVE"); text(12, "fmt ");
  out.setUint32(16, 16, true); out.setUint16(20, 1, true); out.setUint16(22, 1, true);
  out.setUint32(24, rate, true); out.setUint32(28, 2 * rate, true); out.setUint16(32, 2, true);
  out.setUint16(34, 16, true); text(36, "data"); out.setUint32(40, 2 * n, true);
  const data = [];
  for (let c = 0; c < channels; c++) data.push(buffer.getChannelData(c));
  for (let i = 0; i < n; i++) {
    let v = 0;
    for (let c = 0; c < channels; c++) v += data[c][i];
    v = Math.max(-1, Math.min(1, v / channels));
    out.setInt16(44 + 2 * i, v < 0 ? v * 0x8000 : v * 0x7fff, true);
  }
  return new Blob([out.buffer], { type: "audio/wav" });
}

async function toWav(blob) {
  const context = new (window.AudioContext || window.webkitAudioContext)();
  try {
    const decoded = await context.decodeAudioData(await blob.arrayBuffer());
    return wavBytes(decoded);
  } finally {
    context.close();
  }
}

function showAttachments() {
  $("attachments").textContent = pending.length
    ? "attached: " + pending.map((p) => p.label).join(", ") : "";
}

async function attachImage(file) {
  const data = await readAsBase64(file);
  pending.push({ label: file.name || "image", preview: { image: URL.createObjectURL(file) },
                 part: { type: "image_url", image_url: { url: "data:" + (file.type || "image/png") + ";base64," + data } } });
  showAttachments();
}

async function attachAudio(blob, name) {
  let wav = blob;
  try {
    wav = await toWav(blob);
  } catch (e) {
    status("could not decode " + name + " in the browser; sending it as it is");
  }
  const kind = $("audio_kind").value;
  pending.push({ label: name + " (" + kind + ")", preview: { audio: URL.createObjectURL(wav) },
                 part: { type: "media", modality: kind, data: await readAsBase64(wav) } });
  showAttachments();
}

function settings() {
  const out = {};
  for (const [id, cast] of [["temperature", parseFloat], ["top_p", parseFloat],
                            ["top_k", (v) => parseInt(v, 10)], ["max_tokens", (v) => parseInt(v, 10)]]) {
    if ($(id).value !== "") out[id] = cast($(id).value);
  }
  return out;
}

async function send(event) {
  event.preventDefault();
  const text = $("text").value;
  if (!text.trim() && !pending.length) return;
  const content = [];
  if (text.trim()) content.push({ type: "text", text: text });
  for (const p of pending) content.push(p.part);
  const mode = $("mode").value;
  const message = { role: "user", content: content };
  addTurn("user", [...(text.trim() ? [{ text: text }] : []), ...pending.map((p) => p.preview)]);
  const messages = mode === "base" ? [message] : [...history, message];
  const body = { messages: messages, reply_modality: $("reply_modality").value, mode: mode,
                 ...settings() };
  $("text").value = ""; pending = []; showAttachments();
  $("send").disabled = true;
  status("generating ...");
  const started = performance.now();
  try {
    const stream = mode === "chat";
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: apiHeaders(), body: JSON.stringify({ ...body, stream: stream }) });
    if (!response.ok) {
      const reply = await response.json();
      addTurn("assistant", [{ text: (reply.error && reply.error.message) || response.statusText }], "error");
      status("error " + response.status);
      return;
    }
    let final;
    if (stream) {
      const turn = addTurn("assistant", [{ text: "" }]);
      const shown = turn.querySelector(".text");
      for await (const event of events(response)) {
        if (event.error) {
          turn.classList.add("error");
          shown.textContent = event.error.message;
          status("error");
          return;
        }
        const delta = event.choices[0].delta;
        if (delta.content) { shown.textContent += delta.content; turn.scrollIntoView({ block: "end" }); }
        if (event.choices[0].finish_reason) final = event;
      }
      if (!final) throw new Error("the reply ended early");
      shown.textContent = final.content;
      for (const m of final.choices[0].delta.media || []) renderMedia(turn, m);
      if (!final.content && !(final.choices[0].delta.media || []).length) shown.textContent = "(empty reply)";
      history.push(message, { role: "assistant", content: final.content || " " });
      status("replied in " + ((performance.now() - started) / 1000).toFixed(1) + " s, " +
             final.usage.completion_tokens + " tokens");
    } else {
      const reply = await response.json();
      const msg = reply.choices[0].message;
      const turn = addTurn("assistant", msg.content ? [{ text: msg.content }] : []);
      for (const m of msg.media || []) renderMedia(turn, m);
      if (!msg.content && !(msg.media || []).length) turn.textContent = "(empty reply)";
      status("replied in " + ((performance.now() - started) / 1000).toFixed(1) + " s, " +
             reply.usage.completion_tokens + " tokens");
    }
  } catch (e) {
    addTurn("assistant", [{ text: String(e) }], "error");
    status("the server could not be reached");
  } finally {
    $("send").disabled = false;
  }
}

function renderMedia(turn, m) {
  // A generated medium: PNG as an image, WAV as a player, codes as a link to them.
  if (m.format === "png") {
    const img = document.createElement("img"); img.src = m.url; img.alt = m.modality; turn.appendChild(img);
  } else if (m.format === "wav") {
    const audio = document.createElement("audio"); audio.controls = true; audio.src = m.url; turn.appendChild(audio);
  } else {
    const a = document.createElement("a"); a.href = m.url; a.target = "_blank";
    a.textContent = m.modality + " codes" + (m.note ? " (" + m.note + ")" : "");
    turn.appendChild(document.createElement("br")); turn.appendChild(a);
  }
}

async function* events(response) {
  // The server-sent events of a streamed reply, parsed; stops at [DONE].
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, end).trim();
      buffer = buffer.slice(end + 2);
      if (!line.startsWith("data: ")) continue;
      const data = line.slice(6);
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
  }
}

async function toggleRecording() {
  if (recorder) { recorder.stop(); return; }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (e) {
    status("no microphone: " + e.message);
    return;
  }
  const chunks = [];
  recorder = new MediaRecorder(stream);
  recorder.ondataavailable = (e) => chunks.push(e.data);
  recorder.onstop = async () => {
    stream.getTracks().forEach((t) => t.stop());
    recorder = null;
    $("record").classList.remove("recording");
    $("record").textContent = "Record";
    await attachAudio(new Blob(chunks, { type: chunks[0] ? chunks[0].type : "audio/webm" }), "recording");
  };
  recorder.start();
  $("record").classList.add("recording");
  $("record").textContent = "Stop";
}

$("composer").addEventListener("submit", send);
$("text").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
});
$("image").addEventListener("change", async (e) => {
  for (const f of e.target.files) await attachImage(f);
  e.target.value = "";
});
$("audio").addEventListener("change", async (e) => {
  for (const f of e.target.files) await attachAudio(f, f.name);
  e.target.value = "";
});
$("record").addEventListener("click", toggleRecording);
$("api_key").addEventListener("change", () => localStorage.setItem("anygpt_api_key", $("api_key").value));
$("clear").addEventListener("click", () => { history.length = 0; $("conversation").textContent = ""; });
fetch("/health").then((r) => r.json()).then((h) => { $("model").textContent = h.model; })
  .catch(() => status("the server could not be reached"));
