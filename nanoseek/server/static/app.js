// nanoseek chat: conversations in localStorage, answers streamed from /v1/chat/completions (SSE over fetch),
// reasoning_content shown in a collapsible "Thinking" section. Model output is only ever set as textContent
// (answers through renderMarkdown, which builds nodes, never HTML).

const $ = (id) => document.getElementById(id);
const store = {
  get: (key, fallback) => {
    try {
      const value = localStorage.getItem(`nanoseek.${key}`);
      return value === null ? fallback : JSON.parse(value);
    } catch {
      return fallback;
    }
  },
  set: (key, value) => localStorage.setItem(`nanoseek.${key}`, JSON.stringify(value)),
};

const state = {
  conversations: store.get("conversations", []),
  currentId: store.get("current", null),
  model: null,
  controller: null, // AbortController of the answer being streamed
};

// ---- settings

const settings = {
  temperature: () => Number($("temperature").value),
  // empty: no limit but the context (a fixed default could exceed a small model's context)
  maxTokens: () => ($("max-tokens").value ? Math.max(1, Math.floor(Number($("max-tokens").value))) : null),
  apiKey: () => $("api-key").value.trim(),
  thinking: () => $("thinking").checked, // off: DeepSeek's thinking {"type": "disabled"}, no reasoning
};

function initSettings() {
  $("temperature").value = store.get("temperature", 0.6);
  $("max-tokens").value = store.get("maxTokens", "") ?? "";
  $("api-key").value = store.get("apiKey", "");
  $("thinking").checked = store.get("thinking", true);
  $("thinking").addEventListener("change", () => store.set("thinking", settings.thinking()));
  const showTemperature = () => ($("temperature-value").textContent = settings.temperature().toFixed(2));
  showTemperature();
  $("temperature").addEventListener("input", () => {
    showTemperature();
    store.set("temperature", settings.temperature());
  });
  $("max-tokens").addEventListener("change", () => store.set("maxTokens", settings.maxTokens() ?? ""));
  $("api-key").addEventListener("change", () => {
    store.set("apiKey", settings.apiKey());
    hideError();
    loadModel();
  });
}

function headers() {
  const h = { "Content-Type": "application/json" };
  if (settings.apiKey()) h.Authorization = `Bearer ${settings.apiKey()}`;
  return h;
}

// ---- errors

function showError(text) {
  $("error-text").textContent = text;
  $("error").hidden = false;
}

function hideError() {
  $("error").hidden = true;
}

async function httpError(response) {
  let message = response.statusText || "request failed";
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch {
    // not JSON: keep the status text
  }
  return `Error ${response.status}: ${message}`;
}

async function loadModel() {
  try {
    const response = await fetch("/v1/models", { headers: headers() });
    if (!response.ok) {
      showError(await httpError(response));
      return;
    }
    const body = await response.json();
    state.model = body.data && body.data.length ? body.data[0].id : null;
    $("model-name").textContent = state.model ? `Model: ${state.model}` : "";
  } catch (e) {
    showError(`Network error: cannot reach the server (${e.message})`);
  }
}

// ---- conversations

const current = () => state.conversations.find((c) => c.id === state.currentId) || null;

function save() {
  store.set("conversations", state.conversations);
  store.set("current", state.currentId);
}

function newConversation() {
  const conversation = { id: crypto.randomUUID(), title: "New chat", messages: [], updated: Date.now() };
  state.conversations.unshift(conversation);
  state.currentId = conversation.id;
  save();
  render();
  $("input").focus();
  return conversation;
}

function deleteConversation(id) {
  if (state.controller && state.currentId === id) state.controller.abort();
  state.conversations = state.conversations.filter((c) => c.id !== id);
  if (state.currentId === id) state.currentId = state.conversations.length ? state.conversations[0].id : null;
  save();
  render();
}

function switchTo(id) {
  if (state.controller) state.controller.abort();
  state.currentId = id;
  save();
  render();
}

function renderSidebar() {
  const nav = $("conversations");
  nav.replaceChildren();
  for (const conversation of state.conversations) {
    const item = document.createElement("div");
    item.className = "conversation" + (conversation.id === state.currentId ? " active" : "");
    const open = document.createElement("button");
    open.type = "button";
    open.className = "conversation-title";
    open.textContent = conversation.title;
    open.title = conversation.title;
    open.addEventListener("click", () => switchTo(conversation.id));
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "conversation-delete";
    remove.textContent = "×";
    remove.title = "Delete this chat";
    remove.setAttribute("aria-label", `Delete chat ${conversation.title}`);
    remove.addEventListener("click", () => deleteConversation(conversation.id));
    item.append(open, remove);
    nav.append(item);
  }
}

// ---- messages

function messageView(message, isLast) {
  const row = document.createElement("div");
  row.className = `message ${message.role}`;
  if (message.role === "user") {
    const bubble = document.createElement("div");
    bubble.className = "bubble";
    bubble.textContent = message.content;
    row.append(bubble);
    return row;
  }
  const thinking = document.createElement("details");
  thinking.className = "thinking";
  const summary = document.createElement("summary");
  const thoughts = document.createElement("div");
  thoughts.className = "thinking-text";
  thinking.append(summary, thoughts);
  // Once the user opens or closes the section, it stays that way (also across re-renders).
  summary.addEventListener("click", () => (message.showThinking = !thinking.open));
  const answer = document.createElement("div");
  answer.className = "answer";
  const footer = document.createElement("div");
  footer.className = "message-footer";
  row.append(thinking, answer, footer);
  row.view = { thinking, summary, thoughts, answer, footer };
  updateMessage(row, message);
  if (isLast && !message.streaming) addRegenerate(row);
  return row;
}

function updateMessage(row, message) {
  const { thinking, summary, thoughts, answer, footer } = row.view;
  const answering = Boolean(message.content);
  const live = Boolean(message.streaming) && !answering;
  thinking.hidden = !message.reasoning;
  thinking.classList.toggle("live", live);
  thoughts.textContent = message.reasoning || "";
  if (live) summary.textContent = "Thinking…";
  else summary.textContent = message.thoughtSeconds ? `Thought for ${message.thoughtSeconds.toFixed(1)} s` : "Thoughts";
  const open = message.showThinking ?? live; // open while reasoning streams, collapsed once the answer starts
  if (thinking.open !== open) thinking.open = open;
  renderMarkdown(answer, message.content || "");
  answer.classList.toggle("pending", Boolean(message.streaming) && !answering && !message.reasoning);
  footer.textContent = message.note || "";
}

// A small Markdown subset (```code blocks```, `code`, **bold**), built as DOM nodes whose text is only ever set
// through textContent: model output can never become markup.
function renderMarkdown(element, text) {
  const nodes = [];
  text.split(/```[^\n]*\n?/).forEach((part, i) => {
    if (i % 2 === 1) {
      const pre = document.createElement("pre");
      const code = document.createElement("code");
      code.textContent = part.replace(/\n$/, "");
      pre.append(code);
      nodes.push(pre);
      return;
    }
    for (const piece of part.split(/(`[^`\n]+`|\*\*[^*\n]+\*\*)/)) {
      if (!piece) continue;
      const tag = piece.startsWith("`") ? "code" : piece.startsWith("**") && piece.length > 4 ? "strong" : null;
      if (!tag) {
        nodes.push(document.createTextNode(piece));
        continue;
      }
      const node = document.createElement(tag);
      node.textContent = tag === "code" ? piece.slice(1, -1) : piece.slice(2, -2);
      nodes.push(node);
    }
  });
  element.replaceChildren(...nodes);
}

function addRegenerate(row) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "regenerate";
  button.textContent = "↻ Regenerate";
  button.addEventListener("click", regenerate);
  row.view.footer.append(" ", button);
}

function render() {
  renderSidebar();
  const conversation = current();
  const list = $("messages");
  list.replaceChildren();
  if (!conversation || !conversation.messages.length) {
    list.append(emptyView());
    return;
  }
  conversation.messages.forEach((message, i) => {
    list.append(messageView(message, i === conversation.messages.length - 1));
  });
  list.scrollTop = list.scrollHeight;
}

function emptyView() {
  const box = document.createElement("div");
  box.className = "empty";
  const title = document.createElement("h1");
  title.textContent = "What can I help with?";
  const text = document.createElement("p");
  text.textContent = "Answers stream in as they are generated; the model's reasoning appears under “Thinking”.";
  box.append(title, text);
  return box;
}

// ---- streaming

async function* sseEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (data) yield data; // ": keep-alive" comments have no data
    }
  }
}

function setBusy(busy) {
  $("send").hidden = busy;
  $("stop").hidden = !busy;
}

async function answer(conversation) {
  const message = { role: "assistant", content: "", reasoning: "", streaming: true };
  const history = conversation.messages.map(({ role, content }) => ({ role, content }));
  conversation.messages.push(message);
  render();
  const row = $("messages").lastElementChild;
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  hideError();
  const started = performance.now();
  const refresh = () => {
    const list = $("messages");
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
    updateMessage(row, message);
    if (atBottom) list.scrollTop = list.scrollHeight;
  };
  try {
    const body = { messages: history, stream: true, temperature: settings.temperature() };
    if (settings.maxTokens()) body.max_tokens = settings.maxTokens();
    body.thinking = { type: settings.thinking() ? "enabled" : "disabled" };
    if (state.model) body.model = state.model;
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) throw new Error(await httpError(response));
    for await (const data of sseEvents(response)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(`Error: ${chunk.error.message}`);
      for (const choice of chunk.choices || []) {
        const delta = choice.delta || {};
        if (delta.reasoning_content) message.reasoning += delta.reasoning_content;
        if (delta.content) {
          if (!message.content) message.thoughtSeconds = (performance.now() - started) / 1000;
          message.content += delta.content;
        }
        if (choice.finish_reason === "length") message.note = "(stopped at the max-tokens limit)";
      }
      refresh();
    }
  } catch (e) {
    if (e.name === "AbortError") {
      message.note = "(stopped)";
    } else if (e instanceof TypeError) {
      showError(`Network error: cannot reach the server (${e.message})`);
      message.note = "(failed)";
    } else {
      showError(e.message);
      message.note = "(failed)";
    }
  } finally {
    message.streaming = false;
    if (!message.thoughtSeconds && message.reasoning) message.thoughtSeconds = (performance.now() - started) / 1000;
    if (state.controller === controller) state.controller = null;
    setBusy(false);
    conversation.updated = Date.now();
    save();
    if (state.currentId === conversation.id) render();
  }
}

async function send(text) {
  if (state.controller) return;
  const conversation = current() || newConversation();
  if (!conversation.messages.length) conversation.title = text.length > 40 ? `${text.slice(0, 40)}…` : text;
  conversation.messages.push({ role: "user", content: text });
  save();
  await answer(conversation);
}

async function regenerate() {
  const conversation = current();
  if (!conversation || state.controller) return;
  const last = conversation.messages[conversation.messages.length - 1];
  if (last && last.role === "assistant") conversation.messages.pop();
  await answer(conversation);
}

// ---- composer

function initComposer() {
  const input = $("input");
  const grow = () => {
    input.style.height = "auto";
    input.style.height = `${Math.min(input.scrollHeight, 200)}px`;
  };
  input.addEventListener("input", grow);
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || state.controller) return;
    input.value = "";
    grow();
    send(text);
  });
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("new-chat").addEventListener("click", () => {
    if (state.controller) state.controller.abort();
    newConversation();
  });
  $("error-close").addEventListener("click", hideError);
}

initSettings();
initComposer();
render();
loadModel();
