// The chat page: streams POST /api/chat with fetch + ReadableStream, parses SSE itself.
//
// * Bytes are decoded with one TextDecoder and {stream: true}, so a UTF-8 sequence split across
//   network reads is never decoded early (no U+FFFD).
// * SSE is parsed per the WHATWG HTML Standard §9.2.6: LF, CR and CRLF line ends (a CRLF may be
//   split across reads), comments, multi-line data, an event dispatched only at a blank line.
// * Every event's FULL delta text is appended: after re-chunking one event carries many tokens.
// * The DOM is touched at most once per animation frame, never per event.
// * Stop aborts the fetch (AbortController): the connection closes, streamhop cancels the
//   handler, and the provider's stream is closed.
"use strict";

class SSEParser {
  /** @param {(event: {type: string, data: string}) => void} onEvent */
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.partial = ""; // an unterminated line carried over to the next chunk
    this.skipLF = false; // the last chunk ended with CR: a leading LF belongs to that line end
    this.data = [];
    this.type = "";
  }

  /** Feed decoded text (any split). */
  feed(text) {
    let start = 0;
    if (this.skipLF && text.charCodeAt(0) === 10) start = 1;
    this.skipLF = false;
    for (let i = start; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c !== 10 && c !== 13) continue;
      this.line(this.partial + text.slice(start, i));
      this.partial = "";
      if (c === 13) {
        if (i + 1 === text.length) this.skipLF = true;
        else if (text.charCodeAt(i + 1) === 10) i++;
      }
      start = i + 1;
    }
    this.partial += text.slice(start);
  }

  line(line) {
    if (line === "") {
      if (this.data.length) this.onEvent({ type: this.type || "message", data: this.data.join("\n") });
      this.data = [];
      this.type = "";
      return;
    }
    if (line.charCodeAt(0) === 58) return; // ":" comment (keep-alive)
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.charCodeAt(0) === 32) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.type = value;
    // id and retry matter to EventSource reconnection only; unknown fields are ignored.
  }
}

const $ = (selector) => document.querySelector(selector);
const form = $("#ask");
const questionInput = $("#question");
const sendButton = $("#send");
const stopButton = $("#stop");
const statusEl = $("#status");
const transcript = $("#transcript");
const history = []; // {role, content} turns sent with each question
let controller = null;

function setStatus(state, text) {
  statusEl.dataset.state = state;
  statusEl.textContent = text || state;
}

function newTurn(question) {
  const turn = document.createElement("section");
  turn.className = "turn";
  const q = document.createElement("p");
  q.className = "question";
  q.textContent = question;
  const answer = document.createElement("div");
  answer.className = "answer";
  const stats = document.createElement("p");
  stats.className = "stats";
  turn.append(q, answer, stats);
  transcript.append(turn);
  transcript.scrollTop = transcript.scrollHeight;
  return { answer, stats };
}

async function ask(question) {
  const { answer, stats } = newTurn(question);
  const text = document.createTextNode("");
  answer.append(text);
  history.push({ role: "user", content: question });
  const body = { messages: history.slice() };
  const maxTokens = parseInt($("#max-tokens").value, 10);
  if (maxTokens > 0) body.max_tokens = maxTokens;
  const headers = { "content-type": "application/json" };
  if ($("#passthrough").checked) headers["x-streamhop-mode"] = "passthrough";

  controller = new AbortController();
  sendButton.disabled = true;
  stopButton.disabled = false;
  setStatus("streaming", "streaming…");

  const started = performance.now();
  let firstTokenAt = null;
  let pending = ""; // received, not rendered yet
  let full = ""; // everything received, for the conversation history
  let events = 0;
  let reads = 0;
  let frame = 0;

  const render = () => {
    frame = 0;
    if (pending) {
      // Follow the answer while the reader is at the bottom; leave them be if they scrolled up.
      const atBottom = transcript.scrollHeight - transcript.scrollTop - transcript.clientHeight < 48;
      text.appendData(pending);
      pending = "";
      if (atBottom) transcript.scrollTop = transcript.scrollHeight;
    }
    const now = performance.now();
    const tokens = Math.round(full.length / 4);
    const parts = [];
    if (firstTokenAt !== null) {
      const seconds = Math.max((now - firstTokenAt) / 1000, 0.001);
      parts.push(`TTFT ${Math.round(firstTokenAt - started)} ms`);
      parts.push(`≈${tokens} tokens (est.)`);
      parts.push(`≈${Math.round(tokens / seconds)} tokens/s`);
    }
    parts.push(`${events} SSE events in ${reads} reads`);
    stats.textContent = parts.join(" · ");
  };
  const schedule = () => {
    if (!frame) frame = requestAnimationFrame(render);
  };

  const parser = new SSEParser((event) => {
    events++;
    if (event.data === "[DONE]") return;
    const obj = JSON.parse(event.data);
    if (obj.error) throw new Error(obj.error.message || "the stream failed");
    for (const choice of obj.choices || []) {
      const delta = choice.delta && choice.delta.content;
      if (!delta) continue;
      if (firstTokenAt === null) firstTokenAt = performance.now();
      pending += delta; // the whole delta: one event may carry many tokens
      full += delta;
    }
    schedule();
  });

  let outcome = "done";
  let message = "";
  try {
    const response = await fetch("/api/chat", {
      method: "POST",
      headers,
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) {
      let detail = `${response.status}`;
      try {
        detail = (await response.json()).error.message || detail;
      } catch (_) { /* not JSON */ }
      throw new Error(detail);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder("utf-8");
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      reads++;
      parser.feed(decoder.decode(value, { stream: true }));
    }
    parser.feed(decoder.decode()); // flush; an unterminated last event is dropped, as per spec
  } catch (err) {
    if (err.name === "AbortError") outcome = "stopped";
    else {
      outcome = "error";
      message = err.message;
    }
  } finally {
    if (frame) cancelAnimationFrame(frame);
    render(); // what arrived before the end (or the abort) is shown; nothing after it
    controller = null;
    sendButton.disabled = false;
    stopButton.disabled = true;
    history.push({ role: "assistant", content: full });
    setStatus(outcome, outcome === "error" ? `error: ${message}` : outcome);
  }
}

form.addEventListener("submit", (e) => {
  e.preventDefault();
  const question = questionInput.value.trim();
  if (!question || controller) return;
  questionInput.value = "";
  ask(question);
});

stopButton.addEventListener("click", () => {
  if (controller) controller.abort();
});
