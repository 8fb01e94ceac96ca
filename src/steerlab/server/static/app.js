// steerlab playground: choose vectors, stream original and steered side by side, chart a metric.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { token: localStorage.getItem("steerlab-token") || "", vectors: [], model: null };

class ApiError extends Error {}

async function api(path, body) {
  const headers = { "Content-Type": "application/json" };
  if (state.token) headers.Authorization = "Bearer " + state.token;
  const response = await fetch(path, body === undefined ? { headers } : { method: "POST", headers, body: JSON.stringify(body) });
  if (response.status === 401) {
    $("auth").hidden = false;
  }
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { message = (await response.json()).error.message; } catch (_) { /* not JSON */ }
    throw new ApiError(message);
  }
  return response;
}

function showError(error) {
  $("error").hidden = !error;
  $("error").textContent = error ? String(error.message || error) : "";
}

// ---- steering rows --------------------------------------------------------------------------------

function usableVectors() {
  return state.vectors.filter((v) => v.usable && v.object !== "steering_condition");
}

// CAST conditions (files of kind "condition"): a row steers only the prompts its condition selects.
function usableConditions() {
  return state.vectors.filter((v) => v.usable && v.object === "steering_condition");
}

function addRow(vectorId) {
  const vectors = usableVectors();
  if (!vectors.length) return;
  const chosen = vectors.find((v) => v.id === vectorId) || vectors[0];
  const row = document.createElement("div");
  row.className = "steer-row";
  row.innerHTML = `
    <div class="line">
      <select class="vector" aria-label="vector"></select>
      <button type="button" class="remove" title="remove">✕</button>
    </div>
    <div class="line">
      <input class="mult" type="range" min="-12" max="12" step="0.5" aria-label="multiplier">
      <span class="mult-value"></span>
      <select class="unit" aria-label="unit" title="strength: fraction of the layer's mean residual norm; multiplier: raw">
        <option value="multiplier">multiplier</option><option value="strength">strength</option>
      </select>
    </div>
    <div class="line small">
      <label>layers <input class="layers" type="text" placeholder="default"></label>
      <label>positions <select class="positions">
        <option value="all">all</option><option value="prompt">prompt</option><option value="generated">generated</option>
        <option value="system">system turn</option><option value="user">user turn</option><option value="assistant">assistant turn</option>
      </select></label>
      <label>operator <select class="operator" title="add: + m·v; ablate: remove the component at these layers; clamp: set it to m; rotate: turn by m degrees; ablate at every layer: remove the direction from the whole residual stream (Arditi et al.)">
        <option value="">file default</option><option value="add">add</option><option value="ablate">ablate</option>
        <option value="clamp">clamp</option><option value="rotate">rotate</option>
        <option value="every-layer">ablate at every layer</option>
      </select></label>
      <label class="condition-label">only if <select class="condition" title="CAST: steer only prompts whose activation meets this condition">
        <option value="">always</option>
      </select></label>
    </div>`;
  const select = row.querySelector(".vector");
  for (const v of vectors) {
    const option = new Option(`${v.id} (${v.method}, layers ${v.layers.join(",")})`, v.id);
    select.add(option);
  }
  select.value = chosen.id;
  const condition = row.querySelector(".condition");
  for (const c of usableConditions()) {
    condition.add(new Option(`${c.id} (layer ${c.condition.layer}, cos ${c.condition.comparison} ${c.condition.threshold.toFixed(3)})`, c.id));
  }
  row.querySelector(".condition-label").hidden = !usableConditions().length;
  const operator = row.querySelector(".operator");
  // Ablating at every layer takes no multiplier, positions or condition: those controls rest while it is chosen.
  const everyLayer = () => {
    for (const el of [slider, unit, row.querySelector(".positions"), condition]) el.disabled = operator.value === "every-layer";
  };
  operator.addEventListener("change", () => { everyLayer(); updateSummary(); });
  condition.addEventListener("change", updateSummary);
  const slider = row.querySelector(".mult");
  const shown = row.querySelector(".mult-value");
  const unit = row.querySelector(".unit");
  // One slider, two units: a norm-relative strength (-1..1) or a raw multiplier (-12..12).
  const setUnit = (name, value) => {
    unit.value = name;
    Object.assign(slider, name === "strength" ? { min: -1, max: 1, step: 0.02 } : { min: -12, max: 12, step: 0.5 });
    slider.value = value;
    shown.textContent = Number(slider.value).toFixed(name === "strength" ? 2 : 1);
  };
  const setDefaults = () => {
    // What the server steers this vector at when a request names nothing (steering.default_steering, one rule).
    const d = state.vectors.find((x) => x.id === select.value).default;
    if (d.strength !== null) setUnit("strength", d.strength);
    else setUnit("multiplier", d.multiplier);
    row.querySelector(".layers").placeholder = `default ${d.layers.join(",")}`;
    row.title = `default: ${d.source}`;
  };
  unit.addEventListener("change", () => { setUnit(unit.value, unit.value === "strength" ? 0.2 : 4); updateSummary(); });
  slider.addEventListener("input", () => {
    shown.textContent = Number(slider.value).toFixed(unit.value === "strength" ? 2 : 1); updateSummary();
  });
  select.addEventListener("change", () => { setDefaults(); updateSummary(); });
  row.querySelector(".remove").addEventListener("click", () => { row.remove(); updateSummary(); });
  row.querySelector(".layers").addEventListener("input", updateSummary);
  setDefaults();
  $("steer-rows").append(row);
  updateSummary();
}

function parseLayers(text) {
  text = text.trim();
  if (!text) return null;
  const layers = [];
  for (const part of text.split(",").map((p) => p.trim()).filter(Boolean)) {
    const range = part.match(/^(\d+)\s*-\s*(\d+)$/);
    if (range) {
      for (let i = Number(range[1]); i <= Number(range[2]); i++) layers.push(i);
    } else if (/^\d+$/.test(part)) {
      layers.push(Number(part));
    } else {
      throw new Error(`layers "${text}": use numbers like 9 or 9,10 or 9-12`);
    }
  }
  return layers;
}

function steering(overrideFirst) {
  return [...document.querySelectorAll(".steer-row")].map((row, i) => {
    const layers = parseLayers(row.querySelector(".layers").value);
    if (row.querySelector(".operator").value === "every-layer") {
      const item = { vector: row.querySelector(".vector").value, ablate_direction: true };
      if (layers) item.layers = layers;
      return item;
    }
    const item = {
      vector: row.querySelector(".vector").value,
      positions: row.querySelector(".positions").value,
    };
    item[row.querySelector(".unit").value] =
      i === 0 && overrideFirst !== undefined ? overrideFirst : Number(row.querySelector(".mult").value);
    const operator = row.querySelector(".operator").value;
    if (operator) item.operator = operator;
    const condition = row.querySelector(".condition").value;
    if (condition) item.condition = condition;
    if (layers) item.layers = layers;
    return item;
  });
}

function updateSummary() {
  try {
    $("steer-summary").textContent = steering().map((s) =>
      (s.ablate_direction ? `${s.vector} ablated at every layer`
        : s.strength !== undefined ? `${s.vector} strength ${s.strength}` : `${s.vector} ×${s.multiplier}`)
      + (s.condition ? ` if ${s.condition}` : "")).join(", ");
  } catch (_) { /* half-typed layers */ }
}

// ---- generation -----------------------------------------------------------------------------------

function requestBody(extra) {
  const body = {
    messages: [{ role: "user", content: $("prompt").value }],
    max_tokens: Number($("max-tokens").value),
    temperature: Number($("temperature").value),
    ...extra,
  };
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  return body;
}

async function* serverEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

async function generate() {
  showError(null);
  const outputs = { false: $("out-steered"), true: $("out-original") };
  const metas = { false: $("meta-steered"), true: $("meta-original") };
  let body;
  try {
    body = requestBody({ steering: steering(), include_original: true, stream: true });
  } catch (error) {
    showError(error);
    return;
  }
  for (const key of ["false", "true"]) {
    outputs[key].textContent = "";
    outputs[key].dataset.state = "streaming";
    metas[key].textContent = "";
  }
  $("generate").disabled = true;
  const counts = { false: 0, true: 0 };
  try {
    const response = await api("/v1/chat/completions", body);
    for await (const chunk of serverEvents(response)) {
      if (chunk.error) throw new ApiError(chunk.error.message);
      for (const choice of chunk.choices) {
        const key = String(Boolean(choice.original));
        if (choice.delta && choice.delta.content) {
          outputs[key].textContent += choice.delta.content;
          counts[key] += 1;
        }
        if (choice.finish_reason) {
          outputs[key].dataset.state = "done";
          metas[key].textContent = `finish: ${choice.finish_reason} · ${counts[key]} chunks`;
        }
      }
    }
  } catch (error) {
    showError(error);
    for (const key of ["false", "true"]) if (outputs[key].dataset.state !== "done") outputs[key].dataset.state = "error";
  } finally {
    $("generate").disabled = false;
  }
}

// ---- sweep chart ----------------------------------------------------------------------------------

async function sweep() {
  showError(null);
  const metricId = $("metric").value;
  const metric = state.metrics.find((m) => m.id === metricId);
  let values;
  try {
    values = $("sweep-values").value.split(",").map((s) => s.trim()).filter(Boolean).map(Number);
    if (!values.length || values.some((v) => !Number.isFinite(v))) throw new Error("multipliers: give numbers like -4,0,4");
    if (!document.querySelector(".steer-row")) throw new Error("add a vector first");
    steering();
  } catch (error) {
    showError(error);
    return;
  }
  $("sweep").disabled = true;
  try {
    // Sent together: the server batches them into shared forward passes.
    const responses = await Promise.all(values.map((m) =>
      api("/v1/chat/completions", requestBody({ steering: steering(m) })).then((r) => r.json())));
    const texts = responses.map((r) => r.choices[0].message.content);
    const scored = await (await api("/v1/score", { metric: metricId, texts })).json();
    drawChart(values, scored.scores, texts, metric);
  } catch (error) {
    showError(error);
  } finally {
    $("sweep").disabled = false;
  }
}

function drawChart(xs, ys, texts, metric) {
  const W = 560, H = 220, L = 46, R = 14, T = 14, B = 34;
  const xMin = Math.min(...xs), xMax = Math.max(...xs);
  let yMin = metric.min !== null ? metric.min : Math.min(...ys);
  let yMax = metric.max !== null ? metric.max : Math.max(...ys);
  if (yMax === yMin) { yMax += 1; yMin -= 1; }
  const px = (x) => L + (xMax === xMin ? 0.5 : (x - xMin) / (xMax - xMin)) * (W - L - R);
  const py = (y) => T + (1 - (y - yMin) / (yMax - yMin)) * (H - T - B);
  const order = xs.map((x, i) => i).sort((a, b) => xs[a] - xs[b]);
  const esc = (s) => s.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
  let svg = `<svg viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(metric.label)} by multiplier">`;
  svg += `<line class="axis" x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}"/><line class="axis" x1="${L}" y1="${T}" x2="${L}" y2="${H - B}"/>`;
  if (yMin < 0 && yMax > 0) svg += `<line class="zero" x1="${L}" y1="${py(0)}" x2="${W - R}" y2="${py(0)}"/>`;
  for (const y of [yMin, (yMin + yMax) / 2, yMax]) {
    svg += `<text x="${L - 6}" y="${py(y) + 4}" text-anchor="end">${y.toFixed(2)}</text>`;
  }
  svg += `<polyline class="line" points="${order.map((i) => `${px(xs[i])},${py(ys[i])}`).join(" ")}"/>`;
  for (const i of order) {
    svg += `<circle cx="${px(xs[i])}" cy="${py(ys[i])}" r="4"><title>×${xs[i]}: ${ys[i].toFixed(3)}\n${esc(texts[i])}</title></circle>`;
    svg += `<text x="${px(xs[i])}" y="${H - B + 15}" text-anchor="middle">${xs[i]}</text>`;
  }
  svg += `<text x="${(L + W - R) / 2}" y="${H - 4}" text-anchor="middle">${steering()[0].strength !== undefined ? "strength" : "multiplier"} of ${esc(steering()[0].vector)} → ${esc(metric.label)}</text></svg>`;
  $("chart").innerHTML = svg;
  $("chart").dataset.points = String(xs.length);
}

// ---- start-up -------------------------------------------------------------------------------------

async function load() {
  try {
    const [models, vectors, metrics] = await Promise.all(["/v1/models", "/v1/vectors", "/v1/metrics"].map(
      (p) => api(p).then((r) => r.json())));
    state.model = models.data[0];
    state.vectors = vectors.data;
    state.metrics = metrics.data;
    $("auth").hidden = true;
    $("model").textContent = `${state.model.id} · ${state.model.num_layers} layers · ${usableVectors().length} vector(s)`;
    $("metric").innerHTML = "";
    for (const m of state.metrics) $("metric").add(new Option(m.label, m.id));
    $("steer-rows").innerHTML = "";
    $("no-vectors").hidden = usableVectors().length > 0;
    addRow();
    showError(null);
  } catch (error) {
    $("model").textContent = "not connected";
    showError(error);
  }
}

$("add-row").addEventListener("click", () => addRow());
$("generate").addEventListener("click", generate);
$("sweep").addEventListener("click", sweep);
$("save-token").addEventListener("click", () => {
  state.token = $("token").value;
  localStorage.setItem("steerlab-token", state.token);
  load();
});
load();
