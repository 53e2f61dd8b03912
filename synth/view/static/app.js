// synth view: the page over a run. Every value from the run is put into the page as text
// (textContent, text nodes), never as markup: LLM answers may hold <script>. Markdown and code
// are rendered by building elements, not by writing HTML.
"use strict";

const state = {run: null, stage: null, tab: "rows", offset: 0, limit: 20, filters: [], q: "", sort: "",
  desc: false, diff: true, total: 0, open: null};
const $ = (id) => document.getElementById(id);
const FOLD_CHARS = 700;
const SCORE = /score|reward|margin|rating|verdict/;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

async function api(path, params, body) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params || {})) if (v !== "" && v !== null && v !== undefined) url.searchParams.set(k, v);
  const init = body === undefined ? {} : {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  const response = await fetch(url, init);
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function showError(err) { $("error").textContent = err ? String(err.message || err) : ""; }

// ---- text: markdown and code as elements, folded when long, differences marked ----

function inline(text) {
  const out = [];
  for (const piece of text.split(/(`[^`\n]+`|\*\*[^*\n]+\*\*)/)) {
    if (!piece) continue;
    if (piece.length > 2 && piece.startsWith("`") && piece.endsWith("`")) out.push(el("code", {text: piece.slice(1, -1)}));
    else if (piece.length > 4 && piece.startsWith("**") && piece.endsWith("**")) out.push(el("strong", {text: piece.slice(2, -2)}));
    else out.push(document.createTextNode(piece));
  }
  return out;
}

function markdown(text) {
  const root = el("div", {class: "text md"});
  const lines = text.split("\n");
  let para = [], list = null;
  const flush = () => {
    if (para.length) root.append(el("p", {}, inline(para.join("\n"))));
    para = [];
    list = null;
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const fence = line.match(/^\s*```(\S*)/);
    if (fence) {
      flush();
      const code = [];
      for (i++; i < lines.length && !/^\s*```/.test(lines[i]); i++) code.push(lines[i]);
      root.append(el("pre", {}, el("code", {class: fence[1] ? `language-${fence[1]}` : null, text: code.join("\n")})));
      continue;
    }
    const heading = line.match(/^(#{1,6})\s+(.*)$/);
    const item = line.match(/^\s*([-*+]|\d+[.)])\s+(.*)$/);
    if (heading) { flush(); root.append(el("h5", {}, inline(heading[2]))); }
    else if (item) {
      if (para.length) { root.append(el("p", {}, inline(para.join("\n")))); para = []; }
      const ordered = /\d/.test(item[1]);
      if (!list || list.ordered !== ordered) { list = {ordered, node: el(ordered ? "ol" : "ul")}; root.append(list.node); }
      list.node.append(el("li", {}, inline(item[2])));
    } else if (!line.trim()) flush();
    else { list = null; para.push(line); }
  }
  flush();
  return root;
}

// Which words of a and b are common to both (a longest common subsequence of words).
function commonWords(a, b) {
  const n = a.length, m = b.length;
  if (n * m > 4e6) return null;
  const table = new Uint32Array((n + 1) * (m + 1));
  for (let i = n - 1; i >= 0; i--)
    for (let j = m - 1; j >= 0; j--)
      table[i * (m + 1) + j] = a[i] === b[j] ? table[(i + 1) * (m + 1) + j + 1] + 1
        : Math.max(table[(i + 1) * (m + 1) + j], table[i * (m + 1) + j + 1]);
  const inA = new Array(n).fill(false), inB = new Array(m).fill(false);
  let i = 0, j = 0;
  while (i < n && j < m) {
    if (a[i] === b[j]) { inA[i++] = true; inB[j++] = true; }
    else if (table[(i + 1) * (m + 1) + j] >= table[i * (m + 1) + j + 1]) i++;
    else j++;
  }
  return [inA, inB];
}

function diffText(tokens, common) {
  const root = el("div", {class: "text"});
  let run = [], marked = false;
  const flush = () => {
    if (!run.length) return;
    root.append(marked ? el("mark", {class: "diff", text: run.join("")}) : document.createTextNode(run.join("")));
    run = [];
  };
  tokens.forEach((t, k) => {
    const mark = !common[k] && t.trim() !== "";
    if (mark !== marked && t.trim() !== "") { flush(); marked = mark; }
    run.push(t);
  });
  flush();
  return root;
}

function folded(node, length) {
  if (length <= FOLD_CHARS) return node;
  node.classList.add("fold");
  const button = el("button", {class: "unfold", type: "button", text: `show all (${length.toLocaleString()} characters)`});
  button.addEventListener("click", () => {
    const open = node.classList.toggle("fold");
    button.textContent = open ? `show all (${length.toLocaleString()} characters)` : "fold";
  });
  return el("div", {}, node, button);
}

function textBlock(text) { return folded(markdown(text), text.length); }

function valueBlock(value) {
  if (value === null || value === undefined) return el("span", {class: "meta", text: "null"});
  if (typeof value === "string") return textBlock(value);
  if (typeof value === "number" || typeof value === "boolean") return el("span", {text: String(value)});
  const scalar = (v) => v === null || ["number", "boolean"].includes(typeof v);
  if (Array.isArray(value) && value.every(scalar)) return el("span", {text: JSON.stringify(value)});
  if (Array.isArray(value) && value.length && value.every((v) => typeof v === "string"))
    return el("ol", {start: "0"}, value.map((v) => el("li", {}, textBlock(v))));
  if (!Array.isArray(value) && Object.values(value).every((v) => scalar(v) || typeof v === "string" || (Array.isArray(v) && v.every(scalar))))
    return el("table", {class: "kv"}, Object.entries(value).map(([k, v]) => el("tr", {}, el("td", {text: k}),
      el("td", {text: typeof v === "string" ? v : JSON.stringify(v)}))));
  const json = JSON.stringify(value, null, 2);
  return folded(el("pre", {text: json}), json.length);
}

function textOf(value) {
  if (typeof value === "string") return value;
  if (Array.isArray(value) && value.every((m) => m && typeof m === "object" && "content" in m)) {
    const answers = value.filter((m) => m.role === "assistant");
    return (answers.length ? answers : value).map((m) => String(m.content)).join("\n\n");
  }
  return JSON.stringify(value);
}

function kvTable(row, keys) {
  return el("table", {class: "kv"}, keys.map((k) => el("tr", {}, el("td", {text: k}), el("td", {}, valueBlock(row[k])))));
}

// ---- the shapes of a row: a preference pair, a conversation, or a table of columns ----

function responsesOf(row) {
  for (const name of ["response", "responses"]) if (Array.isArray(row[name])) return name;
  return null;
}

function pairView(row, shown) {
  const promptKey = ["prompt", "instruction", "question"].find((k) => k in row);
  const parts = [];
  if (row.system) { parts.push(el("div", {class: "turn system"}, el("div", {class: "role", text: "system"}), textBlock(String(row.system)))); shown.add("system"); }
  if (promptKey) {
    shown.add(promptKey);
    const prompt = row[promptKey];
    parts.push(el("div", {class: "prompt"}, el("div", {class: "role", text: `prompt (${promptKey})`}),
      typeof prompt === "string" ? textBlock(prompt) : conversation(prompt)));
  }
  const chosen = textOf(row.chosen), rejected = textOf(row.rejected);
  shown.add("chosen"); shown.add("rejected");
  const responses = responsesOf(row);
  const sides = {chosen: row.chosen_index, rejected: row.rejected_index};
  let bodies = {chosen: textBlock(chosen), rejected: textBlock(rejected)};
  if (state.diff) {
    const a = chosen.split(/(\s+)/), b = rejected.split(/(\s+)/);
    const common = commonWords(a, b);
    if (common) bodies = {chosen: folded(diffText(a, common[0]), chosen.length), rejected: folded(diffText(b, common[1]), rejected.length)};
  }
  const column = (side) => {
    const facts = [];
    for (const k of [`score_${side}`]) if (k in row) { facts.push(`score ${row[k]}`); shown.add(k); }
    const index = sides[side];
    const notes = [];
    if (Number.isInteger(index) && responses) {
      const count = row[responses].length;
      for (const [k, v] of Object.entries(row)) {
        if (k === responses || !Array.isArray(v) || v.length !== count) continue;
        shown.add(k);
        const item = v[index];
        if (typeof item === "string" && item.length > 40) notes.push(el("div", {}, el("strong", {text: `${k}: `}), textBlock(item)));
        else if (item && typeof item === "object" && !Array.isArray(item)) {  // per criterion: a judge's rationales
          notes.push(el("div", {class: "scores"}, el("strong", {text: `${k}: `}),
            Object.entries(item).map(([a, b]) => `${a}: ${typeof b === "object" ? JSON.stringify(b) : b}`).join(" · ")));
        } else facts.push(`${k} ${item === null ? "null" : typeof item === "object" ? JSON.stringify(item) : item}`);
      }
      shown.add(`${side}_index`);
      facts.push(`response #${index}`);
    }
    for (const [k, v] of Object.entries(row)) {
      if (k.endsWith(`_${side}`) && !shown.has(k)) {
        shown.add(k);
        if (typeof v === "string" && v.length > 40) notes.push(el("div", {}, el("strong", {text: `${k}: `}), textBlock(v)));
        else facts.push(`${k} ${JSON.stringify(v)}`);
      }
    }
    return el("div", {class: `side ${side}`}, el("h4", {text: side}), el("div", {class: "scores", text: facts.join(" · ")}),
      bodies[side], notes);
  };
  const margin = "margin" in row ? el("div", {class: "scores", text: `margin ${row.margin}`}) : null;
  shown.add("margin");
  if (responses) shown.add(responses);
  const both = [column("chosen"), column("rejected")];
  const judge = Object.keys(row).filter((k) => !shown.has(k) && /verdict|rationale|^judge|critique|explanation/.test(k));
  judge.forEach((k) => shown.add(k));
  return el("div", {}, parts, margin, el("div", {class: "pair"}, both),
    judge.length ? el("div", {class: "judge"}, el("h4", {text: "judge"}), kvTable(row, judge)) : null);
}

function conversation(messages) {
  return el("div", {}, messages.map((m) => el("div", {class: `turn ${m.role === "user" || m.role === "human" ? "user" : m.role === "system" ? "system" : "assistant"}`},
    el("div", {class: "role", text: String(m.role ?? m.from ?? "")}), textBlock(String(m.content ?? m.value ?? "")))));
}

function conversationView(row, shown) {
  if (Array.isArray(row.messages)) { shown.add("messages"); return conversation(row.messages); }
  const turns = [];
  if (typeof row.system === "string" && row.system) { turns.push({role: "system", content: row.system}); shown.add("system"); }
  const responses = responsesOf(row);
  for (let k = 1; ; k++) {
    const q = k === 1 ? "instruction" : `instruction_${k}`, a = k === 1 ? "response" : `response_${k}`;
    if (!(q in row)) break;
    shown.add(q);
    turns.push({role: "user", content: row[q]});
    if (typeof row[a] === "string") { shown.add(a); turns.push({role: "assistant", content: row[a]}); }
  }
  const node = conversation(turns.filter((t) => typeof t.content === "string"));
  if (responses) {
    shown.add(responses);
    const count = row[responses].length;
    const aligned = Object.keys(row).filter((k) => k !== responses && Array.isArray(row[k]) && row[k].length === count);
    aligned.forEach((k) => shown.add(k));
    row[responses].forEach((text, i) => {
      const facts = aligned.map((k) => `${k} ${typeof row[k][i] === "object" ? JSON.stringify(row[k][i]) : row[k][i]}`);
      node.append(el("div", {class: "turn assistant"}, el("div", {class: "role", text: `response #${i}`}),
        facts.length ? el("div", {class: "scores", text: facts.join(" · ")}) : null, textBlock(String(text ?? ""))));
    });
  }
  return node;
}

function rowView(row) {
  const shown = new Set(["provenance"]);
  let main = null;
  if ("chosen" in row && "rejected" in row) main = pairView(row, shown);
  else if (Array.isArray(row.messages) || "instruction" in row) main = conversationView(row, shown);
  const rest = Object.keys(row).filter((k) => !shown.has(k));
  const scores = rest.filter((k) => SCORE.test(k) && typeof row[k] !== "object");
  return el("div", {}, main,
    scores.length ? el("div", {class: "scores", text: scores.map((k) => `${k} ${row[k]}`).join(" · ")}) : null,
    main ? el("details", {}, el("summary", {text: `other columns (${rest.length})`}), kvTable(row, rest)) : kvTable(row, rest),
    row.provenance ? el("details", {}, el("summary", {text: "provenance"}), valueBlock(row.provenance)) : null);
}

// ---- labels ----

function labeler(entry) {
  const note = el("input", {placeholder: "note", value: entry.label ? entry.label.note : "", "aria-label": "note"});
  const buttons = {};
  const set = async (label) => {
    try {
      const done = await api("/api/label", {}, {stage: state.stage, position: entry.position, label, note: note.value});
      entry.label = done.label;
      paint();
      refreshSummary();
    } catch (err) { showError(err); }
  };
  const paint = () => {
    for (const [name, b] of Object.entries(buttons)) b.classList.toggle("on", !!entry.label && entry.label.label === name);
    const card = note.closest(".card");
    if (card) {
      card.classList.toggle("label-good", !!entry.label && entry.label.label === "good");
      card.classList.toggle("label-bad", !!entry.label && entry.label.label === "bad");
    }
  };
  buttons.good = el("button", {type: "button", class: "label-good-button", text: "good", onclick: () => set("good")});
  buttons.bad = el("button", {type: "button", class: "label-bad-button", text: "bad", onclick: () => set("bad")});
  const clear = el("button", {type: "button", text: "clear", onclick: () => set(null)});
  const from = entry.label && entry.label.from ? el("span", {class: "meta", text: `labelled ${entry.label.label} at ${entry.label.from}`}) : null;
  const box = el("span", {class: "labeler"}, from, buttons.good, buttons.bad, note, clear);
  setTimeout(paint);
  return box;
}

async function refreshSummary() {
  try { $("labels-summary").textContent = (await api("/api/labels")).labels; } catch (err) { showError(err); }
}

// ---- the page ----

function stageInfo() { return state.run.stages.find((s) => s.name === state.stage); }

function card(entry) {
  const head = el("div", {class: "card-head"}, el("span", {class: "pos", text: `#${entry.position}`}),
    el("button", {type: "button", class: "lineage-button", text: "lineage & prompts", onclick: () => openRow(entry.position)}),
    labeler(entry));
  const cls = entry.label ? ` label-${entry.label.label}` : "";
  return el("div", {class: `card${cls}`, "data-position": String(entry.position)}, head, rowView(entry.row));
}

function droppedCard(record) {
  let row = null;
  try { row = record.row ? JSON.parse(record.row) : null; } catch { row = null; }
  return el("div", {class: "card dropped"},
    el("div", {class: "card-head"}, el("span", {class: "reason", text: `${record.failed ? "failed" : "filtered"}: ${record.reason}`}),
      record.detail ? el("span", {class: "meta", text: String(record.detail).slice(0, 300)}) : null),
    row ? rowView(row) : el("div", {class: "meta", text: "(the row is not kept)"}));
}

function writeHash() {
  const params = new URLSearchParams();
  params.set("stage", state.stage);
  if (state.tab !== "rows") params.set("tab", state.tab);
  if (state.offset) params.set("offset", state.offset);
  if (state.limit !== 20) params.set("limit", state.limit);
  if (state.q) params.set("q", state.q);
  if (state.sort) params.set("sort", state.sort);
  if (state.desc) params.set("desc", "1");
  if (state.filters.length) params.set("filters", JSON.stringify(state.filters));
  if (state.open !== null) params.set("row", state.open);
  history.replaceState(null, "", `#${params}`);
}

function readHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.get("stage")) state.stage = params.get("stage");
  state.tab = params.get("tab") || "rows";
  state.offset = Number(params.get("offset") || 0);
  state.limit = Math.max(1, Math.min(200, Number(params.get("limit") || 20)));
  state.q = params.get("q") || "";
  state.sort = params.get("sort") || "";
  state.desc = params.get("desc") === "1";
  try { state.filters = JSON.parse(params.get("filters") || "[]"); } catch { state.filters = []; }
  state.open = params.has("row") ? Number(params.get("row")) : null;
}

function drawStages() {
  const nav = $("stages");
  nav.replaceChildren(...state.run.stages.map((s) => {
    const dropped = Object.values(s.filtered || {}).reduce((a, b) => a + b, 0) + Object.values(s.failed || {}).reduce((a, b) => a + b, 0);
    return el("button", {type: "button", class: s.name === state.stage ? "active" : null, "data-stage": s.name,
      onclick: () => { state.stage = s.name; state.offset = 0; state.filters = []; state.q = ""; state.sort = ""; state.open = null; load(); }},
      s.name, el("small", {text: `${s.rows.toLocaleString()} rows${dropped ? `, ${dropped.toLocaleString()} dropped` : ""}`}));
  }));
}

function drawToolbar() {
  const columns = Object.entries(stageInfo().columns);
  const filterable = columns.filter(([, k]) => k !== "other");
  const picked = $("filter-column").value;
  $("filter-column").replaceChildren(...filterable.map(([n, k]) => el("option", {value: n, text: `${n} (${k})`})));
  if (filterable.some(([n]) => n === picked)) $("filter-column").value = picked;
  const sortable = columns.filter(([, k]) => k === "text" || k === "number");
  $("sort").replaceChildren(el("option", {value: "", text: "(run order)"}), ...sortable.map(([n]) => el("option", {value: n, text: n})));
  $("sort").value = state.sort;
  $("desc").checked = state.desc;
  $("search").value = state.q;
  $("filters").replaceChildren(...state.filters.map((f, i) => el("span", {class: "chip"}, `${f[0]} ${f[1]} ${f[2]}`,
    el("button", {type: "button", title: "remove", text: "✕", onclick: () => { state.filters.splice(i, 1); state.offset = 0; load(); }}))));
  $("tab-rows").classList.toggle("active", state.tab === "rows");
  $("tab-dropped").classList.toggle("active", state.tab === "dropped");
}

async function load() {
  showError(null);
  drawStages();
  drawToolbar();
  writeHash();
  const rows = $("rows");
  rows.replaceChildren(el("p", {class: "meta", text: "loading…"}));
  try {
    if (state.tab === "dropped") {
      const page = await api("/api/dropped", {stage: state.stage, offset: state.offset, limit: state.limit});
      $("range").textContent = page.rows.length ? `dropped rows ${state.offset + 1}–${state.offset + page.rows.length}` : "no dropped rows";
      $("next").disabled = !page.more;
      rows.replaceChildren(...page.rows.map(droppedCard));
    } else {
      const started = performance.now();
      const query = {stage: state.stage, offset: state.offset, limit: state.limit, q: state.q, sort: state.sort,
        desc: state.desc ? "1" : "", filters: state.filters.length ? JSON.stringify(state.filters) : ""};
      // A filter or search shows its first rows as soon as they are found, then counts them all.
      const page = await api("/api/rows", {...query, count: query.q || query.filters ? "0" : ""});
      const end = state.offset + page.rows.length;
      const seconds = () => ` (${((performance.now() - started) / 1000).toFixed(2)} s)`;
      const range = (total) => total === 0 ? "no rows match" : total === null
        ? `rows ${state.offset + 1}–${end} of … (counting)` : `rows ${state.offset + 1}–${end} of ${total.toLocaleString()}`;
      $("range").textContent = range(page.total) + seconds();
      $("next").disabled = page.total === null ? page.rows.length < state.limit : end >= page.total;
      rows.replaceChildren(...page.rows.map(card));
      if (page.total === null) {
        const asked = location.hash;
        api("/api/rows", {...query, limit: 1, offset: 0}).then((counted) => {
          if (location.hash !== asked) return;  // the user has moved on
          $("range").textContent = range(counted.total) + seconds();
          $("next").disabled = end >= counted.total;
        }).catch(showError);
      }
    }
    $("prev").disabled = state.offset <= 0;
  } catch (err) { rows.replaceChildren(); showError(err); }
  document.body.dataset.loads = String(Number(document.body.dataset.loads || 0) + 1);  // for tests: a page is drawn
  if (state.open !== null) openRow(state.open);
}

function requestView(request) {
  const body = [];
  const facts = [`${request.kind}`, `seed ${request.seed}`];
  if (request.sampling) facts.push(Object.entries(request.sampling).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(" "));
  body.push(el("div", {class: "meta", text: facts.join(" · ")}));
  if (request.prompt !== undefined) body.push(el("div", {class: "role", text: "rendered prompt"}), folded(el("div", {class: "text", text: request.prompt}), request.prompt.length));
  if (request.messages) body.push(el("div", {class: "role", text: "messages"}), conversation(request.messages));
  request.answers.forEach((answer, i) => body.push(el("div", {class: "role", text: `raw answer${request.answers.length > 1 ? ` #${i}` : ""} (${request.finish_reasons[i] || ""})`}),
    folded(el("div", {class: "text answer", text: answer}), answer.length)));
  return el("div", {class: "request"}, body);
}

async function openRow(position) {
  state.open = position;
  writeHash();
  const body = $("detail-body");
  body.replaceChildren(el("p", {text: "loading…"}));
  $("detail").hidden = false;
  try {
    const data = await api("/api/row", {stage: state.stage, position});
    const parts = [el("h2", {text: `${data.stage} row #${data.position}: lineage`})];
    let previous = null;
    for (const step of data.lineage) {
      const rows = step.rows.map((r) => {
        const changed = Object.keys(r.row).filter((k) => k !== "provenance" && (!previous || JSON.stringify(previous[k]) !== JSON.stringify(r.row[k])));
        return el("div", {}, el("div", {class: "meta", text: `row #${r.position}; ${previous ? "written here" : "source"}: ${changed.join(", ") || "(no new values)"}`}),
          kvTable(r.row, changed), el("details", {}, el("summary", {text: "every column"}), rowView(r.row)));
      });
      if (step.rows.length) previous = step.rows[0].row;
      parts.push(el("div", {class: "step lineage-step", "data-stage": step.stage}, el("h3", {text: step.stage}),
        rows.length ? rows : el("div", {class: "meta", text: "no row of this stage comes from it (dropped before, or made elsewhere)"}),
        step.more ? el("div", {class: "meta", text: "more rows come from the same source"}) : null));
    }
    parts.push(el("h2", {text: "LLM requests behind it"}));
    if (!data.requests.length) parts.push(el("p", {class: "meta", text: "the row has no provenance of a stage that prompts"}));
    for (const step of data.requests) {
      const record = step.record;
      const facts = Object.entries(record).map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`);
      parts.push(el("div", {class: "step request-step", "data-stage": step.stage}, el("h3", {text: `${step.stage}${record.model ? ` · ${record.model}` : ""}`}),
        el("div", {class: "meta", text: facts.join(" · ")}),
        step.requests.length ? step.requests.map(requestView) : el("div", {class: "meta", text: "no cached request with these seeds"})));
    }
    body.replaceChildren(...parts);
  } catch (err) { body.replaceChildren(el("p", {text: String(err.message || err)})); }
}

function closeRow() { $("detail").hidden = true; state.open = null; writeHash(); }

async function start() {
  readHash();
  try { state.run = await api("/api/run"); } catch (err) { showError(err); return; }
  document.title = `synth view: ${state.run.name}`;
  $("title").textContent = state.run.name;
  $("status").textContent = `status: ${state.run.status}`;
  $("labels-summary").textContent = state.run.labels;
  if (!state.stage || !state.run.stages.some((s) => s.name === state.stage)) {
    const names = state.run.stages.map((s) => s.name);
    state.stage = names.includes("output") ? "output" : names[names.length - 1];
  }
  $("toolbar").addEventListener("submit", (e) => { e.preventDefault(); apply(); });
  $("filter-add").addEventListener("click", () => {
    state.filters.push([$("filter-column").value, $("filter-op").value, $("filter-value").value]);
    $("filter-value").value = "";
    apply();
  });
  $("show-diff").addEventListener("change", () => { state.diff = $("show-diff").checked; load(); });
  $("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - state.limit); load(); });
  $("next").addEventListener("click", () => { state.offset += state.limit; load(); });
  $("tab-rows").addEventListener("click", () => { state.tab = "rows"; state.offset = 0; load(); });
  $("tab-dropped").addEventListener("click", () => { state.tab = "dropped"; state.offset = 0; load(); });
  $("detail-close").addEventListener("click", closeRow);
  $("detail").addEventListener("click", (e) => { if (e.target === $("detail")) closeRow(); });
  if (state.run.stages.length) load();
  else $("rows").replaceChildren(el("p", {text: "no stage has written rows yet"}));
}

function apply() {
  state.q = $("search").value;
  state.sort = $("sort").value;
  state.desc = $("desc").checked;
  state.offset = 0;
  load();
}

document.addEventListener("DOMContentLoaded", start);
