// asapnet paint: the page. Plain JS, no build step; talks only to the server that served it.
//
// The label map lives in `state.labels` (class indices, row-major Uint16Array); the canvas shows
// it in the classes' colours, one canvas pixel per label pixel (scaled by CSS). Every change asks
// for a frame: at most three requests of this tab are out at once (one running, one waiting on
// the server, one replacing it), a newer request replaces the waiting one there (answered 204,
// "stale"), and a photo older than the one on show is never shown. Latest request wins, nothing queues up.
"use strict";

const $ = (id) => document.getElementById(id);

const state = {
  model: null,
  width: 0, height: 0,
  labels: null,        // Uint16Array, class indices
  base: null,          // what the eraser restores: the map as loaded, created or cleared
  image: null,         // image-input models: the uploaded image on the canvas
  cls: 0, tool: "brush", brush: 12,
  undo: [], redo: [], undoBytes: 64 * 2 ** 20,
  clientId: (crypto.randomUUID ? crypto.randomUUID() : String(Math.random()).slice(2)).replace(/[^A-Za-z0-9_-]/g, ""),
  seq: 0, shownSeq: 0, outstanding: 0, dirty: false, timer: null, lastSend: 0, frameMs: 0,
  frames: 0, dropped: 0, errors: 0,
  photoBlob: null, photoUrl: null,
  mapLoads: 0,         // map loads begun (examples, uploads, new canvases): the latest one wins
  staleLoads: 0,       // loads that finished after a newer one began, and were dropped
};
window.paintState = state;  // for the end-to-end test and the curious

const ctx = $("canvas").getContext("2d", { willReadFrequently: false });
let imageData = null;
let colourTable = null;  // Uint32Array: class -> RGBA as the canvas stores it

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function errorText(response) {
  try { return (await response.json()).error || response.statusText; } catch { return response.statusText; }
}

// -- the label map -----------------------------------------------------------------------------

function setLabels(width, height, labels, { keepHistory = false } = {}) {
  state.width = width; state.height = height;
  state.labels = labels;
  state.base = labels.slice();
  if (!keepHistory) { state.undo = []; state.redo = []; }
  const canvas = $("canvas");
  canvas.width = width; canvas.height = height;
  imageData = ctx.createImageData(width, height);
  render(0, 0, width, height);
  updateHistoryButtons();
  requestFrame();
}

function render(x0, y0, x1, y1) {
  x0 = Math.max(0, Math.floor(x0)); y0 = Math.max(0, Math.floor(y0));
  x1 = Math.min(state.width, Math.ceil(x1)); y1 = Math.min(state.height, Math.ceil(y1));
  if (x1 <= x0 || y1 <= y0) return;
  const pixels = new Uint32Array(imageData.data.buffer);
  const { labels, width } = state;
  for (let y = y0; y < y1; y++) {
    for (let x = x0, i = y * width + x0; x < x1; x++, i++) pixels[i] = colourTable[labels[i]];
  }
  ctx.putImageData(imageData, 0, 0, x0, y0, x1 - x0, y1 - y0);
}

function pushUndo() {
  state.undo.push(state.labels.slice());
  state.redo = [];
  const limit = Math.max(1, Math.min(100, Math.floor(state.undoBytes / state.labels.byteLength)));
  while (state.undo.length > limit) state.undo.shift();
  updateHistoryButtons();
}

function updateHistoryButtons() {
  $("undo").disabled = state.undo.length === 0;
  $("redo").disabled = state.redo.length === 0;
}

function undo() {
  if (!state.undo.length) return;
  state.redo.push(state.labels);
  state.labels = state.undo.pop();
  render(0, 0, state.width, state.height); updateHistoryButtons(); requestFrame();
}

function redo() {
  if (!state.redo.length) return;
  state.undo.push(state.labels);
  state.labels = state.redo.pop();
  render(0, 0, state.width, state.height); updateHistoryButtons(); requestFrame();
}

function dab(cx, cy) {
  // a disc of diameter `brush` label pixels centred on (cx, cy): the class, or the base map
  const r = state.brush / 2;
  const x0 = Math.max(0, Math.floor(cx - r)), x1 = Math.min(state.width, Math.ceil(cx + r));
  const y0 = Math.max(0, Math.floor(cy - r)), y1 = Math.min(state.height, Math.ceil(cy + r));
  const { labels, base, width, cls } = state;
  const erase = state.tool === "eraser";
  for (let y = y0; y < y1; y++) {
    const dy = y + 0.5 - cy;
    for (let x = x0; x < x1; x++) {
      const dx = x + 0.5 - cx;
      if (dx * dx + dy * dy <= r * r || state.brush <= 1) {
        const i = y * width + x;
        labels[i] = erase ? base[i] : cls;
      }
    }
  }
  render(x0, y0, x1, y1);
}

function strokeTo(from, to) {
  const step = Math.max(0.5, state.brush / 4);
  const dist = Math.hypot(to.x - from.x, to.y - from.y);
  const n = Math.max(1, Math.ceil(dist / step));
  for (let k = 1; k <= n; k++) dab(from.x + (to.x - from.x) * k / n, from.y + (to.y - from.y) * k / n);
}

function floodFill(sx, sy) {
  const { labels, width, height, cls } = state;
  const start = sy * width + sx;
  const target = labels[start];
  if (target === cls) return false;
  const stack = [start];
  let x0 = sx, x1 = sx + 1, y0 = sy, y1 = sy + 1;
  while (stack.length) {
    const i = stack.pop();
    if (labels[i] !== target) continue;
    const y = (i / width) | 0;
    let left = i, right = i;
    const rowStart = y * width, rowEnd = rowStart + width;
    while (left > rowStart && labels[left - 1] === target) left--;
    while (right + 1 < rowEnd && labels[right + 1] === target) right++;
    for (let j = left; j <= right; j++) {
      labels[j] = cls;
      if (y > 0 && labels[j - width] === target) stack.push(j - width);
      if (y + 1 < height && labels[j + width] === target) stack.push(j + width);
    }
    x0 = Math.min(x0, left - rowStart); x1 = Math.max(x1, right - rowStart + 1);
    y0 = Math.min(y0, y); y1 = Math.max(y1, y + 1);
  }
  render(x0, y0, x1, y1);
  return true;
}

function fillAll(cls) {
  pushUndo();
  state.labels.fill(cls);
  state.base = state.labels.slice();
  render(0, 0, state.width, state.height);
  requestFrame();
}

function labelPoint(event) {
  const rect = $("canvas").getBoundingClientRect();
  return { x: (event.clientX - rect.left) * state.width / rect.width,
           y: (event.clientY - rect.top) * state.height / rect.height };
}

let lastPoint = null;

function onPointerDown(event) {
  if (!state.labels || event.button !== 0) return;
  const p = labelPoint(event);
  if (state.tool === "fill") {
    const x = Math.floor(p.x), y = Math.floor(p.y);
    if (x < 0 || y < 0 || x >= state.width || y >= state.height) return;
    pushUndo();
    if (floodFill(x, y)) requestFrame(); else { state.undo.pop(); updateHistoryButtons(); }
    return;
  }
  $("canvas").setPointerCapture(event.pointerId);
  pushUndo();
  lastPoint = p;
  dab(p.x, p.y);
  requestFrame();
}

function onPointerMove(event) {
  if (state.labels) {
    const p = labelPoint(event);
    const x = Math.floor(p.x), y = Math.floor(p.y);
    if (x >= 0 && y >= 0 && x < state.width && y < state.height) {
      const c = state.labels[y * state.width + x];
      $("cursor-info").textContent = `(${x}, ${y}) ${state.model.class_names[c]} [${c}]`;
    }
  }
  if (!lastPoint) return;
  const p = labelPoint(event);
  strokeTo(lastPoint, p);
  lastPoint = p;
  requestFrame();
}

function onPointerUp() { lastPoint = null; }

// -- what is sent: the label map as a PNG of raw label values (or the image) ----------------------

function labelPNG() {
  const raw = state.model.raw_values;
  const values = new Uint16Array(state.labels.length);
  let top = 0;
  for (let c = 0; c < raw.length; c++) top = Math.max(top, raw[c]);
  for (let i = 0; i < values.length; i++) values[i] = raw[state.labels[i]];
  return encodeGreyPNG(state.width, state.height, values, top < 256 ? 8 : 16);
}

function imagePNG() {
  return new Promise((resolve) => $("canvas").toBlob(resolve, "image/png"));
}

function inputPNG() {
  return state.model.input === "labels" ? labelPNG() : imagePNG();
}

// -- frames: latest request wins --------------------------------------------------------------

// While painting, one request per interval: 40 ms, or a quarter of the model's time for its
// latest frame (X-Frame-Ms, on every answer) when that is longer, up to 1 s. A request waiting on
// the server is thus replaced at most about four times per frame the model computes (each
// replacement is an upload the server decodes), and is at most a quarter of a frame old when its
// turn comes.
// Requests out at once: one the model runs, one waiting on the server, and a newer one on its way
// to replace the waiting one (which is then answered 204 and frees its place). With two, the
// waiting request could not be replaced while the other ran, and would be a whole frame old.
const MAX_OUTSTANDING = 3;
const MIN_INTERVAL_MS = 40;
const MAX_INTERVAL_MS = 1000;

function sendInterval() {
  return Math.min(MAX_INTERVAL_MS, Math.max(MIN_INTERVAL_MS, state.frameMs / 4));
}

function requestFrame() {
  state.dirty = true;
  pump();
}

function pump() {
  if (!state.dirty || state.outstanding >= MAX_OUTSTANDING || state.timer !== null) return;
  if (!state.labels && !state.image) return;
  const wait = state.lastSend + sendInterval() - performance.now();
  if (wait > 0) {
    state.timer = setTimeout(() => { state.timer = null; pump(); }, wait);
    return;
  }
  state.dirty = false;
  sendFrame();
}

async function sendFrame() {
  const seq = ++state.seq;
  state.outstanding++;
  state.lastSend = performance.now();
  const size = $("output-size").value;
  try {
    const body = await inputPNG();
    const started = performance.now();
    const response = await fetch(`/api/translate?client=${state.clientId}&seq=${seq}&size=${size}`,
                                 { method: "POST", body, headers: { "Content-Type": "image/png" } });
    if (response.headers.has("X-Frame-Ms")) state.frameMs = Number(response.headers.get("X-Frame-Ms"));
    if (response.status === 204) {
      state.dropped++;
    } else if (!response.ok) {
      state.errors++;
      setStatus(`frame ${seq}: ${response.status} ${await errorText(response)}`, true);
    } else {
      const blob = await response.blob();
      if (seq < state.shownSeq) {
        state.dropped++;  // a newer photo is already on show
      } else {
        showPhoto(seq, blob, response, performance.now() - started);
      }
    }
  } catch (error) {
    state.errors++;
    setStatus(`frame ${seq}: the server cannot be reached (${error.message})`, true);
  } finally {
    state.outstanding--;
    $("dropped").textContent = state.dropped;
    pump();
  }
}

function showPhoto(seq, blob, response, roundTripMs) {
  if (state.photoUrl) URL.revokeObjectURL(state.photoUrl);
  state.photoBlob = blob;
  state.photoUrl = URL.createObjectURL(blob);
  state.shownSeq = seq;
  state.frames++;
  const photo = $("photo");
  photo.src = state.photoUrl;
  photo.dataset.seq = seq;
  const ms = (name) => `${Number(response.headers.get(name)).toFixed(1)} ms`;
  $("lr-ms").textContent = ms("X-LR-Stream-Ms");
  $("hr-ms").textContent = ms("X-HR-Stream-Ms");
  $("queue-ms").textContent = ms("X-Queue-Ms");
  $("round-trip-ms").textContent = `${roundTripMs.toFixed(1)} ms`;
  $("photo-size").textContent = `${response.headers.get("X-Photo-Width")} × ${response.headers.get("X-Photo-Height")}`;
  $("frames").textContent = state.frames;
  $("download-photo").disabled = false;
  setStatus("");
}

// Whether every change so far is on show (the test waits for this).
state.idle = () => !state.dirty && state.outstanding === 0 && state.timer === null && state.shownSeq === state.seq;

// -- loading maps: held-out examples, uploads, new canvases ------------------------------------

async function readGrid(response) {
  const width = Number(response.headers.get("X-Label-Width"));
  const height = Number(response.headers.get("X-Label-Height"));
  const bytes = new Uint8Array(await response.arrayBuffer());
  const labels = new Uint16Array(width * height);
  for (let i = 0; i < labels.length; i++) labels[i] = bytes[2 * i] | (bytes[2 * i + 1] << 8);
  return { width, height, labels };
}

// A map load that finishes after a newer one began (the held-out example the page opens on, still
// on its way when "new canvas" is clicked; a slow upload overtaken by another) must not replace
// the newer map, perhaps mid-stroke: each load takes a ticket, and only the latest is shown.
function beginMapLoad() { return ++state.mapLoads; }

function isStale(ticket) {
  if (ticket === state.mapLoads) return false;
  state.staleLoads++;
  return true;
}

async function loadExample(index) {
  const ticket = beginMapLoad();
  const response = await fetch(`/api/examples/${index}`);
  if (!response.ok) { setStatus(`example ${index}: ${await errorText(response)}`, true); return; }
  const grid = await readGrid(response);
  if (isStale(ticket)) return;
  setLabels(grid.width, grid.height, grid.labels);
}

async function uploadLabels(file) {
  const ticket = beginMapLoad();
  const response = await fetch("/api/labels", { method: "POST", body: file, headers: { "Content-Type": "image/png" } });
  if (!response.ok) { setStatus(`${file.name}: ${await errorText(response)}`, true); return; }
  const grid = await readGrid(response);
  if (isStale(ticket)) return;
  setLabels(grid.width, grid.height, grid.labels);
  setStatus(`loaded ${file.name} (${grid.width} × ${grid.height})`);
}

async function uploadImage(file) {
  const ticket = beginMapLoad();
  let bitmap;
  try { bitmap = await createImageBitmap(file); } catch {
    setStatus(`${file.name}: the browser cannot read it as an image`, true); return;
  }
  if (isStale(ticket)) return;
  const max = state.model.max_size;
  const scale = Math.min(1, max / Math.max(bitmap.width, bitmap.height));
  const canvas = $("canvas");
  canvas.width = Math.max(1, Math.round(bitmap.width * scale));
  canvas.height = Math.max(1, Math.round(bitmap.height * scale));
  ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  state.image = bitmap; state.width = canvas.width; state.height = canvas.height;
  requestFrame();
}

function newCanvas() {
  beginMapLoad();
  const side = Number($("canvas-size").value);
  setLabels(side, side, new Uint16Array(side * side).fill(state.model.background_class));
}

function download(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url; link.download = name;
  document.body.appendChild(link); link.click(); link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// -- set-up ------------------------------------------------------------------------------------

function selectClass(cls) {
  state.cls = cls;
  for (const item of $("palette").children) item.setAttribute("aria-selected", String(Number(item.dataset.cls) === cls));
}

function setTool(tool) {
  state.tool = tool;
  for (const input of document.querySelectorAll('input[name="tool"]')) input.checked = input.value === tool;
}

function setBrush(size) {
  state.brush = Math.max(1, Math.min(128, size));
  $("brush-size").value = state.brush;
  $("brush-size-value").textContent = state.brush;
}

function buildPalette(model) {
  const little = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
  colourTable = new Uint32Array(model.num_classes);
  model.colours.forEach(([r, g, b], c) => {
    colourTable[c] = little ? ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0 : ((r << 24) | (g << 16) | (b << 8) | 255) >>> 0;
    const item = document.createElement("li");
    item.dataset.cls = c;
    item.setAttribute("role", "option");
    if (model.unused_classes.includes(c)) { item.classList.add("unused"); item.title = "not a class of the data set's photos"; }
    item.innerHTML = '<span class="swatch"></span><span class="name"></span><span class="index"></span>';
    item.querySelector(".swatch").style.background = `rgb(${r}, ${g}, ${b})`;
    item.querySelector(".name").textContent = model.class_names[c];
    item.querySelector(".index").textContent = c;
    item.addEventListener("click", () => selectClass(c));
    $("palette").appendChild(item);
  });
}

async function start() {
  let model;
  try {
    const response = await fetch("/api/model");
    if (!response.ok) throw new Error(await errorText(response));
    model = await response.json();
  } catch (error) {
    setStatus(`cannot load the model description: ${error.message}`, true);
    return;
  }
  state.model = model;
  const where = `${model.device}, ${model.backend} backend, ${model.precision}`;
  $("model-info").textContent = model.input === "labels"
    ? `${model.source} · ${model.dataset} · ${model.num_classes} classes · cell ${model.cell_size} · ${where}`
    : `${model.source} · image input · cell ${model.cell_size} · ${where}`;
  $("output-size").addEventListener("change", requestFrame);
  $("download-photo").addEventListener("click", () => state.photoBlob && download(state.photoBlob, "photo.png"));
  if (model.input !== "labels") {
    $("image-tools").hidden = false;
    $("upload-image").addEventListener("change", (e) => {
      const file = e.target.files[0];
      e.target.value = "";
      if (file) uploadImage(file);
    });
    setStatus("upload an image to translate");
    return;
  }
  $("label-tools").hidden = false;
  buildPalette(model);
  // start with the first class that is neither the background nor unused (facades: "facade")
  const first = model.class_names.findIndex((name, c) => c !== model.background_class && !model.unused_classes.includes(c));
  selectClass(first >= 0 ? first : model.background_class);
  for (const input of document.querySelectorAll('input[name="tool"]')) input.addEventListener("change", () => setTool(input.value));
  $("brush-size").addEventListener("input", () => setBrush(Number($("brush-size").value)));
  $("undo").addEventListener("click", undo);
  $("redo").addEventListener("click", redo);
  $("clear").addEventListener("click", () => fillAll(model.background_class));
  $("new-canvas").addEventListener("click", newCanvas);
  $("upload-labels").addEventListener("change", (e) => {
    const file = e.target.files[0];
    e.target.value = "";  // choosing the same file again is a change again
    if (file) uploadLabels(file);
  });
  $("download-labels").addEventListener("click", async () => state.labels && download(await labelPNG(), "labels.png"));
  for (const example of model.examples) {
    const option = document.createElement("option");
    option.value = example.index;
    option.textContent = `#${example.index} (${example.width} × ${example.height})`;
    $("examples").appendChild(option);
  }
  $("examples").addEventListener("change", (e) => e.target.value !== "" && loadExample(e.target.value));
  const canvas = $("canvas");
  canvas.addEventListener("pointerdown", onPointerDown);
  canvas.addEventListener("pointermove", onPointerMove);
  canvas.addEventListener("pointerup", onPointerUp);
  canvas.addEventListener("pointercancel", onPointerUp);
  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT" && e.target.type !== "radio" && e.target.type !== "range") return;
    const key = e.key.toLowerCase();
    if ((e.ctrlKey || e.metaKey) && key === "z") { e.preventDefault(); e.shiftKey ? redo() : undo(); }
    else if ((e.ctrlKey || e.metaKey) && key === "y") { e.preventDefault(); redo(); }
    else if (key === "b") setTool("brush");
    else if (key === "f") setTool("fill");
    else if (key === "e") setTool("eraser");
    else if (key === "[") setBrush(state.brush - 2);
    else if (key === "]") setBrush(state.brush + 2);
  });
  if (model.examples.length) {
    $("examples").value = "0";
    await loadExample(0);
  } else {
    newCanvas();
  }
}

start();
