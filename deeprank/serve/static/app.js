// deeprank search page: upload / drop / paste an image or click a result; everything goes to POST /search.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { k: 12, query: null, seq: 0, imageSearch: true, count: 0 };

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function setStatus(text) {
  $("status").textContent = text;
}

function formatDistance(d) {
  if (d === 0) return "0";
  return Math.abs(d) < 1e-3 ? d.toExponential(1) : d.toFixed(4);
}

// Small images (e.g. 28 px) scaled up look right with crisp pixels; photos keep smooth scaling.
function pixelateIfSmall(img) {
  img.addEventListener("load", () => {
    if (img.naturalWidth && img.naturalWidth * 2 <= img.clientWidth) img.classList.add("pixelated");
  });
}

async function postSearch(form) {
  const response = await fetch("/search", { method: "POST", body: form });
  let body = null;
  try {
    body = await response.json();
  } catch (err) {
    body = null;
  }
  if (!response.ok) {
    const detail = body && typeof body.detail === "string" ? body.detail : response.statusText;
    throw new Error(`${detail} (HTTP ${response.status})`);
  }
  return body;
}

// Id queries are in the address (#id=...), so Back returns to the previous item and links can be shared.
function remember(query) {
  if (query.kind !== "id") return;
  const hash = `#id=${encodeURIComponent(query.id)}`;
  if (location.hash !== hash) history.pushState({ id: query.id }, "", hash);
}

function idFromHash() {
  const match = /^#id=(.+)$/.exec(location.hash);
  if (!match) return null;
  try {
    return decodeURIComponent(match[1]);
  } catch (err) {
    return null;
  }
}

async function runQuery(query, { fromHistory = false } = {}) {
  if (!fromHistory) remember(query);
  state.query = query;
  const seq = ++state.seq;
  // Ids go URL-encoded: multipart form data turns every "\n" in a value into "\r\n".
  const form = query.kind === "image" ? new FormData() : new URLSearchParams();
  if (query.kind === "image") form.append("image", query.file, query.file.name || "pasted-image");
  else form.append("id", query.id);
  form.append("k", String(state.k));
  showQuery(query);
  document.body.classList.add("busy");
  setStatus("searching…");
  try {
    const result = await postSearch(form);
    if (seq !== state.seq) return; // a newer query was started meanwhile
    showError("");
    renderHits(result, query);
    setStatus(`${result.hits.length} nearest of ${state.count} in ${result.took_ms.toFixed(1)} ms`);
  } catch (err) {
    if (seq !== state.seq) return;
    showError(err.message);
    setStatus("");
  } finally {
    if (seq === state.seq) document.body.classList.remove("busy");
  }
}

function showQuery(query) {
  const img = $("query-image");
  if (img.dataset.objectUrl) URL.revokeObjectURL(img.dataset.objectUrl);
  delete img.dataset.objectUrl;
  const caption = $("query-caption");
  caption.textContent = "";
  const title = document.createElement("strong");
  if (query.kind === "image") {
    const url = URL.createObjectURL(query.file);
    img.dataset.objectUrl = url;
    img.src = url;
    title.textContent = "Your image";
    caption.append(title, query.file.name || "pasted image");
  } else {
    img.src = query.imageUrl || `/images?id=${encodeURIComponent(query.id)}`;
    title.textContent = "Item of the collection";
    caption.append(title, query.id);
  }
  pixelateIfSmall(img);
  $("query").hidden = false;
}

function renderHits(result, query) {
  const list = $("results");
  list.textContent = "";
  list.dataset.query = query.kind === "image" ? `image:${query.file.name || ""}` : `id:${query.id}`;
  for (const hit of result.hits) {
    const item = document.createElement("li");
    item.className = "hit";
    item.tabIndex = 0;
    item.dataset.id = String(hit.id);
    item.dataset.distance = String(hit.distance);
    item.title = `${hit.id}\ndistance ${hit.distance}\nclick to search from this image`;
    const img = document.createElement("img");
    img.src = hit.image_url;
    img.alt = String(hit.id);
    img.loading = "lazy";
    pixelateIfSmall(img);
    const meta = document.createElement("div");
    meta.className = "meta";
    const rank = document.createElement("span");
    rank.className = "rank";
    rank.textContent = `#${hit.rank}`;
    const dist = document.createElement("span");
    dist.className = "dist";
    dist.textContent = formatDistance(hit.distance);
    meta.append(rank, dist);
    const name = document.createElement("div");
    name.className = "name";
    name.textContent = String(hit.id);
    item.append(img, meta, name);
    const open = () => runQuery({ kind: "id", id: String(hit.id), imageUrl: hit.image_url });
    item.addEventListener("click", open);
    item.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        open();
      }
    });
    list.append(item);
  }
  $("empty").hidden = result.hits.length > 0;
}

function searchFile(file) {
  if (!file) return;
  if (!state.imageSearch) {
    showError("This server has no model, so it cannot search by uploaded image; click a result instead.");
    return;
  }
  runQuery({ kind: "image", file });
}

async function randomItem() {
  if (!state.count) return;
  const offset = Math.floor(Math.random() * state.count);
  try {
    const response = await fetch(`/items?offset=${offset}&limit=1`);
    const body = await response.json();
    if (!response.ok) throw new Error(body.detail || response.statusText);
    runQuery({ kind: "id", id: String(body.ids[0]) });
  } catch (err) {
    showError(err.message);
  }
}

function wireInputs() {
  $("file").addEventListener("change", (event) => {
    searchFile(event.target.files[0]);
    event.target.value = ""; // choosing the same file again still fires "change"
  });
  $("random").addEventListener("click", randomItem);
  const k = $("k");
  k.addEventListener("input", () => {
    $("k-value").textContent = k.value;
  });
  k.addEventListener("change", () => {
    $("k-value").textContent = k.value;
    state.k = Number(k.value);
    if (state.query) runQuery(state.query);
  });
  const drop = $("drop");
  for (const type of ["dragenter", "dragover"]) {
    document.addEventListener(type, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const type of ["dragleave", "dragend"]) {
    document.addEventListener(type, () => drop.classList.remove("over"));
  }
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const files = event.dataTransfer ? event.dataTransfer.files : null;
    if (files && files.length) searchFile(files[0]);
  });
  document.addEventListener("paste", (event) => {
    const files = event.clipboardData ? event.clipboardData.files : null;
    if (files && files.length) searchFile(files[0]);
  });
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      $("file").click();
    }
  });
}

async function init() {
  wireInputs();
  window.addEventListener("popstate", () => {
    const id = idFromHash();
    if (id !== null) runQuery({ kind: "id", id }, { fromHistory: true });
  });
  try {
    const response = await fetch("/health");
    const health = await response.json();
    state.count = health.count;
    state.imageSearch = health.image_search;
    state.k = health.default_k;
    const k = $("k");
    k.max = String(Math.min(health.max_k, health.count));
    k.value = String(state.k);
    $("k-value").textContent = String(state.k);
    const mb = (health.max_upload_bytes / (1024 * 1024)).toFixed(health.max_upload_bytes < 1048576 ? 2 : 0);
    $("facts").textContent =
      `${health.count.toLocaleString()} images · ${health.dim}-d embeddings · uploads up to ${mb} MB` +
      (health.image_search ? "" : " · no model: search from collection items only");
    if (!health.image_search) $("file").disabled = true;
    const id = idFromHash();
    if (id !== null) runQuery({ kind: "id", id }, { fromHistory: true });
  } catch (err) {
    showError(`cannot reach the server: ${err.message}`);
  }
}

init();
