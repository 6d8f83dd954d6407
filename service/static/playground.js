// Atelier playground: plain JavaScript over the JSON API (docs/PLAYGROUND.md). No build step, no
// dependencies; every call goes to this server, with the API key from the page when one is given.
"use strict";

const $ = (id) => document.getElementById(id);

const state = {
  key: "",
  models: {},          // name -> its /v1/models entry
  signing: false,      // whether this server signs Content Credentials
  images: new Map(),   // id -> image record (gallery, session and previews alike)
  nextId: 1,
  parents: new Set(),  // gallery ids picked for breeding
  session: null,       // {token, round, ids: [...]} of the interactive session
  liked: new Set(),    // session candidate ids picked this round
  shown: null,         // id of the image whose provenance is shown
  samplerModel: null,  // the diffusion model whose defaults fill steps and guidance
};

// ---------------------------------------------------------------------------------------------- API

class ApiError extends Error {
  constructor(status, message, retryAfter) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

function headers(json) {
  const result = {};
  if (json) result["content-type"] = "application/json";
  if (state.key) result.authorization = `Bearer ${state.key}`;
  return result;
}

async function errorOf(response) {
  let message = response.statusText || "request failed";
  try {
    const body = await response.json();
    const error = body && body.error;
    message = typeof error === "string" ? error : (error && error.message) || JSON.stringify(body);
  } catch (_) {
    // not JSON: keep the status text
  }
  return new ApiError(response.status, message, response.headers.get("retry-after"));
}

async function call(path, body) {
  const response = await fetch(path, body === undefined
    ? { headers: headers(false) }
    : { method: "POST", headers: headers(true), body: JSON.stringify(body) });
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

// A server-sent event stream read from fetch's body (EventSource cannot POST or send a key): calls
// onEvent(name, data) for each `event:` + `data:` block, in order.
async function readEvents(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    }
  }
}

// ------------------------------------------------------------------------------------- messages

function say(text) {
  $("status").textContent = text;
}

function clearError() {
  $("errors").hidden = true;
  $("errors").textContent = "";
}

function report(what, error) {
  let text = `${what} failed`;
  if (error instanceof ApiError) {
    text += ` (${error.status}): ${error.message}`;
    if (error.status === 429) {
      text += error.retryAfter ? ` The server is busy: try again in ${error.retryAfter} s.`
        : " The server is busy: try again shortly.";
    } else if (error.status === 401) {
      text += " Enter the server's API key at the top of the page.";
    }
  } else {
    text += `: ${error && error.message ? error.message : error}`;
  }
  $("errors").textContent = text;
  $("errors").hidden = false;
  say("");
}

// Runs `work` with `button` disabled and its section marked busy; reports any failure as `what`.
async function busy(button, what, work) {
  const section = button.closest("section");
  button.disabled = true;
  section.setAttribute("aria-busy", "true");
  clearError();
  try {
    await work();
  } catch (error) {
    report(what, error);
  } finally {
    section.removeAttribute("aria-busy");
    button.disabled = false;
    refreshButtons();
  }
}

// -------------------------------------------------------------------------------- image records

function bytesOf(base64) {
  const binary = atob(base64);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

// The PNG's text chunks (tEXt, and uncompressed iTXt): the provenance the server wrote into the file.
function pngText(bytes) {
  const text = {};
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const latin1 = new TextDecoder("latin1");
  const utf8 = new TextDecoder("utf-8");
  let offset = 8;  // after the signature
  while (offset + 8 <= bytes.length) {
    const length = view.getUint32(offset);
    const type = latin1.decode(bytes.subarray(offset + 4, offset + 8));
    const data = bytes.subarray(offset + 8, Math.min(offset + 8 + length, bytes.length));
    const nul = data.indexOf(0);
    if (type === "tEXt" && nul > 0) {
      text[latin1.decode(data.subarray(0, nul))] = latin1.decode(data.subarray(nul + 1));
    } else if (type === "iTXt" && nul > 0 && data[nul + 1] === 0) {
      const language = data.indexOf(0, nul + 3);
      const translated = language < 0 ? -1 : data.indexOf(0, language + 1);
      if (translated >= 0) text[latin1.decode(data.subarray(0, nul))] = utf8.decode(data.subarray(translated + 1));
    } else if (type === "IEND") {
      break;
    }
    offset += 12 + length;
  }
  return text;
}

function className(model, classId) {
  const classes = (state.models[model] && state.models[model].classes) || [];
  return classId === null || classId === undefined ? null : classes[classId] || `class ${classId}`;
}

// What the image shows, for alt text and captions: prompt or class, or how it was made.
function subjectOf(record) {
  const p = record.parameters || {};
  if (record.origin === "style") return `photo in the style ${record.styleName}`;
  if (record.origin === "upscale") return `4× upscale of ${record.sourceSubject}`;
  const parts = [];
  if (p.prompt) parts.push(`prompt “${p.prompt}”`);
  const name = className(record.model, p.class_id);
  if (name) parts.push(`class ${name}`);
  if (!parts.length) parts.push("no condition");
  if (record.origin === "breed") parts.push("bred");
  if (record.origin === "session") parts.push(`session round ${record.round}`);
  return parts.join(", ");
}

// Made from a seed (an upscale or a styled photo records seed 0: it draws no noise).
function seeded(record) {
  return record.origin === "generate" || record.origin === "breed" || record.origin === "session";
}

function altOf(record) {
  const seed = seeded(record) ? `, seed ${record.seed}` : "";
  return `${record.model} ${record.version} image: ${subjectOf(record)}${seed}`;
}

// One image of an API answer as a record; its provenance read from its own PNG text chunks.
function record(png, extra) {
  const bytes = bytesOf(png.png_base64);
  const text = pngText(bytes);
  let parameters = null;
  try {
    parameters = text.parameters ? JSON.parse(text.parameters) : null;
  } catch (_) {
    parameters = null;
  }
  const item = {
    ...extra,
    id: state.nextId++,
    base64: png.png_base64,
    text,
    model: text.model || extra.model,
    version: text.version || extra.version,
    seed: text.seed !== undefined ? text.seed : (png.seed !== undefined ? String(png.seed) : undefined),
    parameters,
    genome: png.genome || null,
    verdict: null,
  };
  item.alt = altOf(item);
  state.images.set(item.id, item);
  return item;
}

function imageElement(item) {
  const img = document.createElement("img");
  img.className = "art";
  img.src = `data:image/png;base64,${item.base64}`;
  img.alt = item.alt;
  img.width = 128;
  img.height = 128;
  return img;
}

function button(label, onClick, attributes = {}) {
  const element = document.createElement("button");
  element.type = "button";
  element.textContent = label;
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
  element.addEventListener("click", onClick);
  return element;
}

// A card: the image (a toggle button when it can be picked), a caption and its actions.
function card(item, pickable, picked, onPick) {
  const li = document.createElement("li");
  li.className = "card";
  li.dataset.id = item.id;
  let face;
  if (pickable) {
    face = button("", () => {
      const now = face.getAttribute("aria-pressed") !== "true";
      face.setAttribute("aria-pressed", String(now));
      onPick(item, now);
    }, { class: "pick", "aria-pressed": String(picked) });
  } else {
    face = document.createElement("div");
    face.className = "still";
  }
  face.appendChild(imageElement(item));
  li.appendChild(face);
  const caption = document.createElement("span");
  caption.className = "caption";
  caption.textContent = `${item.model} · ${seeded(item) ? `seed ${item.seed}` : subjectOf(item)}`;
  li.appendChild(caption);
  const actions = document.createElement("div");
  actions.className = "card-actions";
  actions.appendChild(button("Details", () => showDetails(item.id), { "aria-label": `Details of ${item.alt}` }));
  if (item.origin !== "upscale" && item.origin !== "style" && !(item.parameters && item.parameters.upscale)) {
    const upscaleButton = button("Upscale 4×", () => busy(upscaleButton, "Upscale", () => upscale(item)),
      { "aria-label": `Upscale 4× ${item.alt}` });
    actions.appendChild(upscaleButton);
  }
  li.appendChild(actions);
  return li;
}

function addToGallery(items) {
  const gallery = $("gallery");
  for (const item of items) {
    gallery.prepend(card(item, Boolean(item.genome), false, (picked, on) => {
      if (on) state.parents.add(picked.id); else state.parents.delete(picked.id);
      refreshButtons();
    }));
  }
  $("gallery-empty").hidden = gallery.children.length > 0;
  refreshButtons();
}

function refreshButtons() {
  const breed = $("breed");
  if (!breed.closest("section").hasAttribute("aria-busy")) breed.disabled = state.parents.size < 2;
  breed.textContent = state.parents.size ? `Breed selected (${state.parents.size})` : "Breed selected";
  $("clear-selection").disabled = state.parents.size === 0;
  const next = $("session-next");
  if (!next.closest("section").hasAttribute("aria-busy")) next.disabled = !state.session || state.liked.size === 0;
}

// --------------------------------------------------------------------------------------- models

function generators() {
  return Object.values(state.models).filter((model) => {
    const kind = model.conditioning && model.conditioning.type;
    return kind === "class" || kind === "class+text" || kind === "none";
  });
}

async function loadModels() {
  try {
    const described = await call("/v1/models");
    state.models = Object.fromEntries(described.models.map((model) => [model.name, model]));
    const credentials = described.content_credentials || {};
    state.signing = Boolean(credentials.enabled);
    const names = generators().map((model) => `${model.name} ${model.version}`).join(", ");
    $("server-info").textContent = `Models: ${names}. Content Credentials: ${state.signing
      ? `signed by ${credentials.signer}` : "off (this server has no signing key)"}.`;
    fillModels();
    setUpStyle(state.models.style);
    clearError();
  } catch (error) {
    $("server-info").textContent = "Could not read the server's models.";
    report("Reading the models", error);
  }
}

function fillModels() {
  const select = $("gen-model");
  const current = select.value;
  select.replaceChildren(...generators().map((model) => new Option(`${model.name} (${model.family})`, model.name)));
  const preferred = generators().some((m) => m.name === current) ? current
    : generators().some((m) => m.name === "diffusion") ? "diffusion" : select.value;
  select.value = preferred;
  modelChanged();
}

function modelChanged() {
  const model = state.models[$("gen-model").value];
  if (!model) return;
  const kind = (model.conditioning && model.conditioning.type) || "none";
  const classSelect = $("gen-class");
  const chosenClass = classSelect.value;
  const classes = kind.includes("class") ? model.classes || [] : [];
  classSelect.replaceChildren(new Option("any class", ""), ...classes.map((name) => new Option(name, name)));
  classSelect.value = classes.includes(chosenClass) ? chosenClass : "";
  classSelect.disabled = !kind.includes("class");
  const text = kind.includes("text");
  $("gen-prompt").disabled = !text;
  $("gen-prompt-field").hidden = !text;
  const sampler = Boolean(model.defaults);
  for (const field of document.querySelectorAll(".sampler-only")) {
    field.hidden = !sampler;
    field.querySelector("input").disabled = !sampler;
  }
  if (sampler && state.samplerModel !== model.name) {  // the model's own defaults, once per choice of model
    $("gen-steps").value = model.defaults.steps;
    $("gen-guidance").value = model.defaults.guidance;
  }
  state.samplerModel = sampler ? model.name : null;
}

// ------------------------------------------------------------------------------------- generate

function numberOf(id) {
  const input = $(id);
  if (input.value.trim() === "") return null;
  const value = Number(input.value);
  if (!Number.isFinite(value) || !input.checkValidity()) {
    input.focus();
    throw new Error(`${input.labels[0].textContent.trim()} must be a number between ${input.min} and ${input.max}`);
  }
  return value;
}

// The model, condition and settings the generate form says (also the session's template).
function conditionOf() {
  const model = state.models[$("gen-model").value];
  if (!model) throw new Error("the server's models are not loaded yet");
  const body = { model: model.name };
  if ($("gen-class").value && !$("gen-class").disabled) body.class = $("gen-class").value;
  const prompt = $("gen-prompt").value.trim();
  if (prompt && !$("gen-prompt").disabled) body.prompt = prompt;
  if (model.defaults) {
    body.steps = numberOf("gen-steps") ?? model.defaults.steps;
    body.guidance = numberOf("gen-guidance") ?? model.defaults.guidance;
  }
  return body;
}

function generateBody() {
  const body = { ...conditionOf(), n: numberOf("gen-n") ?? 1, genome: true, stream: true };
  // a seed the page draws itself when none is given, so it is shown exactly and can be typed in again
  body.seed = numberOf("gen-seed") ?? Math.floor(Math.random() * 2 ** 31);
  if ($("gen-upscale").checked) body.upscale = 4;
  return body;
}

async function generate() {
  const body = generateBody();
  const progress = $("gen-progress");
  const previews = $("gen-previews");
  progress.max = 1;
  progress.value = 0;
  previews.replaceChildren();
  $("gen-step").textContent = "waiting for the server…";
  say(`Generating ${body.n} with ${body.model}, seed ${body.seed}…`);
  const response = await fetch("/v1/generate", { method: "POST", headers: headers(true), body: JSON.stringify(body) });
  if (!response.ok) throw await errorOf(response);  // refused before the stream began: 4xx, 429, 503
  let result = null;
  let failure = null;
  await readEvents(response, (name, data) => {
    if (name === "start") {
      progress.max = Math.max(1, data.total);
      $("gen-step").textContent = data.total ? `step 0 of ${data.total}` : "drawing…";
    } else if (name === "progress") {
      progress.max = data.total;
      progress.value = data.step;
      $("gen-step").textContent = `step ${data.step} of ${data.total}`;
    } else if (name === "preview") {
      previews.replaceChildren(...data.images.map((image, index) => {
        const item = { base64: image.png_base64, alt: `preview after step ${data.step} of ${data.total}, ` +
          `image ${index + 1} (${body.model}, seed ${image.seed})` };
        return imageElement(item);
      }));
    } else if (name === "result") {
      result = data;
    } else if (name === "error") {
      failure = new ApiError(data.status, data.error, null);
    }
  });
  if (failure) throw failure;
  if (!result) throw new Error("the stream ended before the result");
  progress.value = progress.max;
  $("gen-step").textContent = "done";
  const items = result.images.map((image) => record(image, { model: result.model, version: result.version,
    origin: "generate" }));
  addToGallery(items);
  say(`Generated ${items.length} image${items.length === 1 ? "" : "s"} with ${result.model} ${result.version}, ` +
    `seed ${items[0].seed}.`);
}

// -------------------------------------------------------------------------------- breed, upscale

async function breed() {
  const parents = [...state.parents].map((id) => state.images.get(id));
  const body = { parents: parents.map((item) => item.genome), children: numberOf("breed-children") ?? 4,
    mutation: numberOf("breed-mutation") ?? 0.2 };
  say(`Breeding ${parents.length} parents…`);
  const result = await call("/v1/breed", body);
  const items = result.images.map((image) => record(image, { model: result.model, version: result.version,
    origin: "breed" }));
  addToGallery(items);
  say(`Bred ${items.length} children (breeding seed ${result.seed}).`);
}

function clearSelection() {
  state.parents.clear();
  for (const pick of document.querySelectorAll("#gallery .pick")) pick.setAttribute("aria-pressed", "false");
  refreshButtons();
}

async function upscale(item) {
  say(`Upscaling seed ${item.seed}…`);
  const result = await call("/v1/upscale", { image: item.base64 });
  const items = result.images.map((image) => record(image, { model: result.model, version: result.version,
    origin: "upscale", sourceSubject: `${item.model} seed ${item.seed}` }));
  addToGallery(items);
  say(`Upscaled ${item.model} seed ${item.seed} 4× with ${result.model} ${result.version}.`);
}

// -------------------------------------------------------------------------------------- session

function showRound(result) {
  state.session = { token: result.session, round: result.round };
  state.liked.clear();
  const items = result.images.map((image) => record(image, { model: result.model, version: result.version,
    origin: "session", round: result.round }));
  state.session.ids = items.map((item) => item.id);
  $("session-grid").replaceChildren(...items.map((item) => card(item, true, false, (picked, on) => {
    if (on) state.liked.add(picked.id); else state.liked.delete(picked.id);
    refreshButtons();
  })));
  $("session-round").textContent = `Round ${result.round}: pick what you like.`;
  refreshButtons();
}

async function startSession() {
  const body = { ...conditionOf(), population: numberOf("session-population") ?? 8 };
  const seed = numberOf("gen-seed");
  if (seed !== null) body.seed = seed;
  say("Starting a session…");
  showRound(await call("/v1/sessions", body));
  say(`Session started: ${state.session.ids.length} candidates.`);
}

async function nextRound() {
  const scores = state.session.ids.map((id) => (state.liked.has(id) ? 1 : 0));
  say(`Sending round ${state.session.round}'s picks…`);
  showRound(await call("/v1/sessions/feedback", { session: state.session.token, scores }));
  say(`Round ${state.session.round}: ${state.session.ids.length} new candidates.`);
}

// ---------------------------------------------------------------------------------------- style

const OWN_STYLE = "__own__";

function setUpStyle(model) {
  const available = Boolean(model);
  $("style-form").hidden = !available;
  $("style-unavailable").hidden = available;
  if (!available) return;
  const styles = model.styles || [];
  $("style-name").replaceChildren(...styles.map((style) => new Option(style.title || style.name, style.name)),
    new Option("my own style image", OWN_STYLE));
  styleChoiceChanged();
}

function styleChoiceChanged() {
  const own = $("style-name").value === OWN_STYLE;
  $("style-image-field").hidden = !own;
  $("style-image").disabled = !own;
}

function fileBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1]);
    reader.onerror = () => reject(new Error(`cannot read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

async function stylePhoto() {
  const photo = $("style-photo").files[0];
  if (!photo) {
    $("style-photo").focus();
    throw new Error("choose a photo to style");
  }
  const body = { image: await fileBase64(photo), strength: Number($("style-strength").value), output: "png" };
  let styleName = $("style-name").value;
  if (styleName === OWN_STYLE) {
    const styleFile = $("style-image").files[0];
    if (!styleFile) {
      $("style-image").focus();
      throw new Error("choose a style image, or one of the built-in styles");
    }
    body.style_image = await fileBase64(styleFile);
    styleName = styleFile.name;
  } else {
    body.style = styleName;
  }
  say(`Styling ${photo.name}…`);
  const result = await call("/v1/style", body);
  const items = result.images.map((image) => record(image, { model: result.model, version: result.version,
    origin: "style", styleName }));
  addToGallery(items);
  say(`Styled ${photo.name} in the style ${styleName}.`);
}

// ---------------------------------------------------------------------------------------- details

function row(list, term, value) {
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  if (value instanceof Node) dd.appendChild(value); else dd.textContent = value;
  list.append(dt, dd);
  return dd;
}

function pre(text) {
  const element = document.createElement("pre");
  element.textContent = text;
  return element;
}

const CHUNKS_SHOWN = new Set(["model", "version", "seed", "parameters"]);

function showDetails(id) {
  const item = state.images.get(id);
  state.shown = id;
  const details = $("details");
  const list = document.createElement("dl");
  row(list, "Model", `${item.model} ${item.version}`);
  if (seeded(item)) row(list, "Seed", item.seed);
  row(list, "Shows", subjectOf(item));
  const verdict = row(list, "Content Credentials", "checking…");
  verdict.id = "verdict";
  verdict.setAttribute("aria-live", "polite");
  // the chunk's own text, not the parsed JSON: a seed past 2^53 would lose digits in a JavaScript number
  row(list, "Parameters", pre(item.text.parameters || "{}"));
  row(list, "Genome", item.genome ? pre(item.genome) : "none (made from an upload)").className = "genome";
  for (const [key, value] of Object.entries(item.text)) {
    if (!CHUNKS_SHOWN.has(key)) row(list, key.replace(/_/g, " "), value);
  }
  details.replaceChildren(imageElement(item), list);
  // focus follows the choice (keyboard and screen reader users land on the details); on a phone, where the
  // panel is below the images, it is scrolled into view
  details.focus({ preventScroll: true });
  const box = details.getBoundingClientRect();
  if (box.top < 0 || box.top > window.innerHeight) details.scrollIntoView({ block: "start" });
  verify(item).then((text) => {
    if (state.shown === id) showVerdict(verdict, text);
  });
}

function showVerdict(element, { text, good }) {
  element.replaceChildren();
  const strong = document.createElement("span");
  strong.className = `verdict ${good === true ? "good" : good === false ? "bad" : ""}`;
  strong.textContent = text;
  element.appendChild(strong);
}

// The server's verdict on the image's Content Credentials (POST /v1/credentials/verify), once per image.
function verify(item) {
  if (!item.verdict) {
    item.verdict = call("/v1/credentials/verify", { image: item.base64 }).then(verdictText, (error) => {
      if (error instanceof ApiError && error.status === 404) {
        return { text: "cannot be checked: this server has no verification route", good: null };
      }
      item.verdict = null;  // ask again next time
      return { text: `not checked: ${error.message}`, good: null };
    });
  }
  return item.verdict;
}

function verdictText(verdict) {
  const signer = [verdict.signer, verdict.issuer].filter(Boolean).join(", ");
  switch (verdict.state) {
    case "Trusted":
      return { text: `✓ verified: signed by ${signer}; trusted by this server`, good: true };
    case "Valid":
      return { text: `✓ intact and signed by ${signer}` +
        (verdict.trust_anchored ? ", but not by a certificate this server trusts" : " (this server trusts no signer)"),
      good: true };
    case "absent":
      return { text: state.signing ? "✗ none: this image carries no Content Credentials"
        : "none: signing is off on this server (no key configured)", good: state.signing ? false : null };
    default:
      return { text: `✗ does not verify: ${verdict.failures.map((f) => f.explanation || f.code).join("; ") ||
        verdict.state}`, good: false };
  }
}

// ----------------------------------------------------------------------------------------- wiring

const KEY_ITEM = "atelier.apiKey";  // sessionStorage: this tab only, gone when it closes

function start() {
  state.key = sessionStorage.getItem(KEY_ITEM) || "";
  $("api-key").value = state.key;
  $("api-key").addEventListener("change", () => {
    state.key = $("api-key").value.trim();
    if (state.key) sessionStorage.setItem(KEY_ITEM, state.key); else sessionStorage.removeItem(KEY_ITEM);
    loadModels();
  });
  $("gen-model").addEventListener("change", modelChanged);
  $("generate-form").addEventListener("submit", (event) => {
    event.preventDefault();
    busy($("gen-submit"), "Generate", generate);
  });
  $("breed").addEventListener("click", () => busy($("breed"), "Breeding", breed));
  $("clear-selection").addEventListener("click", clearSelection);
  $("session-start").addEventListener("click", () => busy($("session-start"), "Starting a session", startSession));
  $("session-next").addEventListener("click", () => busy($("session-next"), "The next round", nextRound));
  $("style-name").addEventListener("change", styleChoiceChanged);
  $("style-strength").addEventListener("input", () => {
    $("style-strength-value").textContent = Number($("style-strength").value).toFixed(2);
  });
  $("style-form").addEventListener("submit", (event) => {
    event.preventDefault();
    busy($("style-submit"), "Styling", stylePhoto);
  });
  refreshButtons();
  loadModels();
}

start();
