// The faceprompt page: identities, generation jobs with live progress, and a gallery, on the service's /v1 API.
// Plain JavaScript without a build step. Every API call goes through fetch() with the bearer token, so images are
// shown from blob URLs and the event stream is read with fetch() streaming: the token never appears in a URL.
"use strict";

const TOKEN_KEY = "faceprompt.token";
const FINAL = new Set(["succeeded", "failed", "cancelled"]);
const STATUS_TITLES = {
  401: "Token refused (401)",
  403: "Forbidden (403)",
  404: "Not found (404)",
  413: "Too large (413)",
  422: "Invalid request (422)",
  429: "Too many requests (429)",
};
const FORM_FIELDS = ["prompt", "negative_prompt", "task", "scale", "steps", "guidance", "seed", "width", "height", "num_images", "strength"];
// The image inputs each task needs (uploaded with POST /v1/uploads, sent as {"upload": id}); strength goes with them.
const TASK_IMAGES = { txt2img: [], img2img: ["image"], inpaint: ["image", "mask_image"], controlnet: ["control_image"] };
const IMAGE_FIELDS = ["image", "mask_image", "control_image", "style_image"];
const JOBS_PAGE = 50;
const FORM_OF_ERROR = { "generate-error": "generate-form", "identity-error": "identity-form" };
const NUMBER_FIELDS = new Set(["scale", "steps", "guidance", "seed", "width", "height", "num_images", "strength"]);

const state = {
  identities: [],
  jobs: new Map(), // id -> job JSON, as last read or updated by its event stream
  jobItems: new Map(), // id -> <li> of the job list
  galleryJobs: new Set(), // ids of jobs whose images are in the gallery
  jobsListed: 0, // jobs read from the paged list so far
  streams: new Map(), // id -> AbortController of its open event stream
  blobs: new Map(), // API path -> object URL of the fetched image
  uploads: {}, // image field -> upload id the next job uses when no new file is chosen ("make again" sets them)
  styleImage: false, // whether the server takes style images
};

const $ = (id) => document.getElementById(id);

/** A DOM element with attributes (`on*` functions become listeners) and children (strings become text). */
function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "className") node.className = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

// --- talking to the service -------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message, fields = []) {
    super(message);
    this.status = status;
    this.fields = fields; // [{field, msg}] of a 422
  }
}

function token() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

/** Calls the API; returns the parsed JSON (or the Response with `raw`), throws ApiError with the server's message. */
async function api(path, { method = "GET", json, form, raw = false, signal } = {}) {
  const headers = {};
  if (token()) headers.Authorization = `Bearer ${token()}`;
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form) {
    body = form;
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body, signal });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, `Cannot reach the server (${error.message}): is faceprompt serve running?`);
  }
  if (!response.ok) throw await errorFrom(response);
  if (raw) return response;
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

/** The server's message for a failed response: FastAPI's `detail` (text, or a list of field errors for 422). */
async function errorFrom(response) {
  const text = await response.text();
  let detail = text;
  try {
    const parsed = JSON.parse(text);
    detail = parsed.detail !== undefined ? parsed.detail : parsed.error !== undefined ? parsed.error : parsed;
  } catch {
    // not JSON: a proxy's or the server's plain text is shown as it is
  }
  const fields = [];
  let message;
  if (Array.isArray(detail)) {
    for (const item of detail) {
      const loc = Array.isArray(item.loc) ? item.loc.filter((part) => part !== "body") : [];
      fields.push({ field: loc.join("."), msg: item.msg || JSON.stringify(item) });
    }
    message = fields.map(({ field, msg }) => (field ? `${field}: ${msg}` : msg)).join("; ");
  } else if (typeof detail === "string") {
    message = detail;
  } else {
    message = JSON.stringify(detail);
  }
  if (!message) message = response.statusText || "no message";
  const title = STATUS_TITLES[response.status] || `Server error (${response.status})`;
  if (response.status === 401) message += " (paste a valid token at the top)";
  return new ApiError(response.status, `${title}: ${message}`, fields);
}

/** An object URL for an authenticated image path, fetched once. */
async function imageUrl(path) {
  if (!state.blobs.has(path)) {
    const response = await api(path, { raw: true });
    state.blobs.set(path, URL.createObjectURL(await response.blob()));
  }
  return state.blobs.get(path);
}

/** The items of a list response ({"items": [...], ...}). */
function listOf(payload) {
  return (payload && payload.items) || [];
}

// --- messages next to the forms ---------------------------------------------------------------------------

/** The error's message in the box next to a form; the fields a 422 names are marked in that form. */
function showError(targetId, error) {
  const target = $(targetId);
  target.replaceChildren(error.message || String(error));
  target.hidden = false;
  const form = $(FORM_OF_ERROR[targetId]);
  for (const { field, msg } of error.fields || []) {
    const input = form.elements.namedItem(field.split(".")[0]);
    if (input && input.classList) {
      input.classList.add("invalid");
      input.title = msg;
    }
  }
  if (error.status === 401) showTokenError(error);
}

function showTokenError(error) {
  $("token-error").textContent = error.message;
  $("token-error").hidden = false;
}

function clearError(targetId) {
  $(targetId).hidden = true;
  $(targetId).replaceChildren();
  for (const input of $(FORM_OF_ERROR[targetId]).querySelectorAll(".invalid")) {
    input.classList.remove("invalid");
    input.removeAttribute("title");
  }
}

// --- server info: which models are loaded -----------------------------------------------------------------

async function loadInfo() {
  const health = await api("/healthz");
  const model = health.model || {};
  const modes = [];
  // options left at their defaults are not listed: an absent adapter is the default one, null is none
  if (model.adapter !== null) modes.push(["adapter", model.adapter ? `FaceID adapter (${model.adapter})` : "FaceID adapter"]);
  if (model.adaface) modes.push(["adaface", `AdaFace (${model.adaface})`]);
  fillSelect($("mode"), modes);
  fillSelect($("task"), (health.tasks || ["txt2img"]).map((task) => [task, task]));
  state.styleImage = Boolean(health.style_image);
  updateTaskFields();
  const described = [model.model || model.base, model.adapter, model.adaface && `adaface ${model.adaface}`];
  $("server-info").textContent = `models: ${described.filter(Boolean).join(" · ")}`;
  updateModeFields();
}

function fillSelect(select, options) {
  const current = select.value;
  select.replaceChildren(...options.map(([value, label]) => el("option", { value }, label)));
  if (options.some(([value]) => value === current)) select.value = current;
}

/** The image inputs of the chosen task (and the style image when the server takes one). */
function imageFieldsOfTask() {
  return [...(TASK_IMAGES[$("task").value] || []), ...(state.styleImage ? ["style_image"] : [])];
}

function updateTaskFields() {
  const shown = new Set(imageFieldsOfTask());
  for (const field of IMAGE_FIELDS) $(`${field}-label`).hidden = !shown.has(field);
  $("strength-label").hidden = !["img2img", "inpaint"].includes($("task").value);
}

/** The note beside an image input: the upload the next job uses unless another file is chosen. */
function showKeptUpload(field) {
  const id = state.uploads[field];
  $(`${field}-kept`).textContent = id ? `using upload ${id.slice(0, 8)} (choose a file to replace it)` : "";
}

/** Uploads the chosen files of the task's image inputs; puts {"upload": id} references into the job body. */
async function attachImages(body) {
  for (const field of imageFieldsOfTask()) {
    const file = $(field).files[0];
    if (file) {
      const form = new FormData();
      form.append("file", file);
      const upload = await api("/v1/uploads", { method: "POST", form });
      state.uploads[field] = upload.id;
      $(field).value = "";
      showKeptUpload(field);
    }
    if (state.uploads[field]) body[field] = { upload: state.uploads[field] };
  }
  if (body.strength !== undefined && $("strength-label").hidden) delete body.strength;
  return body;
}

function updateModeFields() {
  $("placeholder-label").hidden = $("mode").value !== "adaface";
}

// --- identities -------------------------------------------------------------------------------------------

async function loadIdentities() {
  state.identities = listOf(await api("/v1/identities"));
  renderIdentities();
}

function renderIdentities() {
  $("identities").replaceChildren(...state.identities.map(identityCard));
  const select = $("identity");
  const current = select.value;
  select.replaceChildren(
    el("option", { value: "" }, "(none)"),
    ...state.identities.map((identity) => el("option", { value: identity.id }, identity.name || identity.id)),
  );
  if (state.identities.some((identity) => identity.id === current)) select.value = current;
  else if (state.identities.length) select.value = state.identities[0].id;
}

function identityCard(identity) {
  const photos = identity.photos || [];
  const faces = el("div", { className: "faces" });
  for (const photo of photos) {
    if (!photo.face_url) continue;
    const image = el("img", { className: "face", alt: `face in ${photo.file}`, title: photo.file });
    faces.append(image);
    imageUrl(photo.face_url).then((url) => (image.src = url), (error) => (image.title = error.message));
  }
  return el(
    "li",
    { className: "card identity", "data-id": identity.id },
    el("strong", {}, identity.name || "(no name)"),
    el("span", { className: "muted" }, identity.id),
    faces,
    el("div", { className: "muted" }, `${photos.length} photo(s) · ${identity.face_model || ""}`),
    el("button", { type: "button", className: "delete", onclick: () => deleteIdentity(identity) }, "Delete"),
  );
}

async function uploadIdentity(event) {
  event.preventDefault();
  clearError("identity-error");
  const files = $("identity-photos").files;
  if (!files.length) {
    showError("identity-error", new Error("Choose one or more photos of the person (or an identity .safetensors file)."));
    return;
  }
  const form = new FormData();
  for (const file of files) form.append(file.name.endsWith(".safetensors") ? "identity" : "photos", file, file.name);
  if ($("identity-name").value.trim()) form.append("name", $("identity-name").value.trim());
  $("identity-submit").disabled = true;
  $("identity-busy").hidden = false;
  try {
    const identity = await api("/v1/identities", { method: "POST", form });
    state.identities.unshift(identity);
    renderIdentities();
    $("identity").value = identity.id;
    $("identity-form").reset();
  } catch (error) {
    showError("identity-error", error);
  } finally {
    $("identity-submit").disabled = false;
    $("identity-busy").hidden = true;
  }
}

async function deleteIdentity(identity) {
  if (!window.confirm(`Delete identity ${identity.name || identity.id} and its files?`)) return;
  clearError("identity-error");
  try {
    await api(`/v1/identities/${encodeURIComponent(identity.id)}`, { method: "DELETE" });
    state.identities = state.identities.filter((item) => item.id !== identity.id);
    renderIdentities();
  } catch (error) {
    showError("identity-error", error);
  }
}

// --- the generation form ----------------------------------------------------------------------------------

/** The job body from the form: blank fields are left out (the server's defaults apply). */
function requestFromForm() {
  const body = {};
  for (const name of FORM_FIELDS) {
    const input = $(name);
    if (input.validity && input.validity.badInput) throw new ApiError(0, `${name}: not a number`, [{ field: name, msg: "not a number" }]);
    const value = input.value.trim();
    if (value === "") continue;
    body[name] = NUMBER_FIELDS.has(name) ? Number(value) : value;
  }
  const identity = $("identity").value;
  if (identity && $("mode").value === "adaface") {
    body.identities = { [$("placeholder").value.trim()]: identity };
  } else if (identity) {
    body.identity = identity;
  }
  return body;
}

async function submitJob(event) {
  event.preventDefault();
  clearError("generate-error");
  $("generate-submit").disabled = true;
  try {
    const accepted = await api("/v1/jobs", { method: "POST", json: await attachImages(requestFromForm()) });
    const job = await api(`/v1/jobs/${accepted.id}`).catch(() => accepted);
    updateJob({ ...accepted, ...job });
    watch(accepted.id);
  } catch (error) {
    showError("generate-error", error);
  } finally {
    $("generate-submit").disabled = false;
  }
}

/** The id a job request names, whether sent as an id or as {"id": ...}. */
function identityId(value) {
  return value && typeof value === "object" ? value.id : value;
}

function promptText(request) {
  return Array.isArray(request.prompt) ? request.prompt.join(" | ") : request.prompt || "";
}

/** Who a job shows: the identity's name (FaceID) or each placeholder word and its identity (AdaFace). */
function whoText(request) {
  const name = (value) => {
    const id = identityId(value);
    const identity = state.identities.find((item) => item.id === id);
    return identity ? identity.name || id : `${id} (deleted)`;
  };
  if (request.identities) return `AdaFace: ${Object.entries(request.identities).map(([word, value]) => `${word} = ${name(value)}`).join(", ")}`;
  if (request.identity) return `FaceID: ${[].concat(request.identity).map(name).join(", ")}`;
  return "no identity";
}

/** "Make again": the form refilled from a job's recorded request. */
function refillForm(job) {
  const request = job.request || {};
  for (const name of FORM_FIELDS) {
    let value = request[name];
    if (Array.isArray(value)) value = value[0];
    $(name).value = value === undefined || value === null ? "" : String(value);
    if ($(name).tagName === "SELECT" && $(name).selectedIndex < 0) $(name).selectedIndex = 0; // the default
  }
  if (request.identities && Object.keys(request.identities).length) {
    const [placeholder, identity] = Object.entries(request.identities)[0];
    $("mode").value = "adaface";
    $("placeholder").value = placeholder;
    $("identity").value = identityId(identity) || "";
  } else {
    if ([...$("mode").options].some((option) => option.value === "adapter")) $("mode").value = "adapter";
    $("identity").value = identityId(request.identity) || "";
  }
  for (const field of IMAGE_FIELDS) {
    const reference = request[field];
    state.uploads[field] = reference && typeof reference === "object" ? reference.upload : undefined;
    $(field).value = "";
    showKeptUpload(field);
  }
  updateModeFields();
  updateTaskFields();
  $("generate-section").scrollIntoView({ behavior: "smooth" });
  $("prompt").focus();
}

// --- jobs and their live progress -------------------------------------------------------------------------

/** One page of the job list (newest first); later pages (older jobs) go below the ones shown. */
async function loadJobs(offset = 0) {
  const page = await api(`/v1/jobs?limit=${JOBS_PAGE}&offset=${offset}`);
  const jobs = listOf(page);
  const older = offset > 0;
  for (const job of older ? jobs : [...jobs].reverse()) updateJob(job, older); // the newest ends up on top
  for (const job of jobs) if (!FINAL.has(job.status)) watch(job.id);
  state.jobsListed = offset + jobs.length;
  $("more-jobs").hidden = !(page.total > state.jobsListed);
}

function updateJob(update, older = false) {
  const job = { ...(state.jobs.get(update.id) || {}), ...update };
  state.jobs.set(job.id, job);
  const item = jobItem(job, older);
  const progress = job.progress || {};
  const step = progress.step ?? 0;
  const total = progress.total || 0;
  item.querySelector(".status").textContent = statusText(job);
  item.dataset.status = job.status;
  const bar = item.querySelector("progress");
  if (total) {
    bar.max = total;
    bar.value = step;
  } else if (FINAL.has(job.status)) {
    bar.max = 1;
    bar.value = job.status === "succeeded" ? 1 : 0;
  }
  item.querySelector(".steps").textContent = total ? `${step}/${total}` : "";
  item.querySelector(".prompt").textContent = promptText(job.request || {});
  item.querySelector(".job-error").textContent = job.error || "";
  item.querySelector(".cancel").hidden = FINAL.has(job.status);
  item.querySelector(".again").hidden = !FINAL.has(job.status); // failed and cancelled jobs too
  item.querySelector(".delete").hidden = !FINAL.has(job.status); // the server refuses (409) until a job is finished
  if (job.status === "succeeded" && job.images && job.images.length) addToGallery(job, older);
  return job;
}

function statusText(job) {
  if (job.cancel_requested && !FINAL.has(job.status)) return "cancelling";
  if (job.status === "queued" && job.position != null) return `queued (${job.position} ahead)`;
  return job.status;
}

function jobItem(job, older) {
  if (state.jobItems.has(job.id)) return state.jobItems.get(job.id);
  const item = el(
    "li",
    { className: "job", "data-id": job.id },
    el("span", { className: "status" }),
    el("progress", { max: 1, value: 0, "aria-label": "progress" }),
    el("span", { className: "steps muted" }),
    el("span", { className: "prompt" }),
    el("button", { type: "button", className: "cancel", onclick: () => cancelJob(job.id) }, "Cancel"),
    el("button", { type: "button", className: "again", onclick: () => refillForm(state.jobs.get(job.id)) }, "Make again"),
    el("button", { type: "button", className: "delete", onclick: () => deleteJob(job.id) }, "Delete"),
    el("div", { className: "job-error error" }),
  );
  state.jobItems.set(job.id, item);
  if (older) $("jobs").append(item);
  else $("jobs").prepend(item);
  return item;
}

async function cancelJob(id) {
  try {
    updateJob(await api(`/v1/jobs/${id}/cancel`, { method: "POST" }));
  } catch (error) {
    updateJob({ id, error: error.message });
  }
}

/** Deletes a finished job on the server (its images too) and drops it from the list and the gallery. */
async function deleteJob(id) {
  try {
    await api(`/v1/jobs/${id}`, { method: "DELETE" });
  } catch (error) {
    updateJob({ id, error: error.message });
    return;
  }
  state.jobItems.get(id)?.remove();
  state.jobItems.delete(id);
  state.jobs.delete(id);
  state.galleryJobs.delete(id);
  document.querySelectorAll(`.result-card[data-job="${id}"]`).forEach((card) => card.remove());
}

async function refreshJob(id) {
  try {
    return updateJob(await api(`/v1/jobs/${id}`));
  } catch (error) {
    updateJob({ id, error: error.message });
    return null;
  }
}

/** One server-sent event from its text block: {event, data} with the data parsed as JSON where it is JSON. */
function parseEvent(block) {
  let event = "message";
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (!line || line.startsWith(":")) continue; // comments keep the connection alive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  const text = data.join("\n");
  try {
    return { event, data: JSON.parse(text) };
  } catch {
    return { event, data: text };
  }
}

function applyEvent(id, { event, data }) {
  if (!data || typeof data !== "object") return;
  if (event === "progress") updateJob({ id, status: "running", progress: { step: data.step, total: data.total } });
  else if (event === "status") updateJob({ ...data, id });
}

/** Follows a job's event stream until its final status; reconnects (after a pause) when the connection drops. */
async function watch(id, pause = 1000) {
  if (state.streams.has(id)) return;
  const controller = new AbortController();
  state.streams.set(id, controller);
  try {
    const response = await api(`/v1/jobs/${id}/events`, { raw: true, signal: controller.signal });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
        applyEvent(id, parseEvent(block));
      }
    }
  } catch (error) {
    if (error.name === "AbortError") return;
    if (error.status === 401 || error.status === 404) {
      updateJob({ id, error: error.message });
      return;
    }
  } finally {
    state.streams.delete(id);
  }
  const job = await refreshJob(id); // the full record: image URLs, times, the final error
  if (job && !FINAL.has(job.status)) setTimeout(() => watch(id, Math.min(pause * 2, 15000)), pause);
}

// --- the gallery ------------------------------------------------------------------------------------------

function addToGallery(job, older) {
  if (state.galleryJobs.has(job.id)) return;
  state.galleryJobs.add(job.id);
  const cards = job.images.map((path, k) => galleryCard(job, path, k));
  if (older) $("gallery").append(...cards);
  else $("gallery").prepend(...cards);
}

function galleryCard(job, path, k) {
  const request = job.request || {};
  const seed = request.seed;
  const image = el("img", { className: "result", alt: `result ${k} of job ${job.id}` });
  const suffix = job.videos && job.videos.length ? "gif" : "png"; // a video job's images are its GIFs
  const download = el("a", { className: "download", download: `faceprompt-${job.id}-${k}.${suffix}` }, "Download");
  imageUrl(path).then(
    (url) => {
      image.src = url;
      download.href = url;
    },
    (error) => (image.title = error.message),
  );
  const summary = [
    seed != null ? `seed ${Number(seed) + k}` : null,
    request.steps != null ? `${request.steps} steps` : null,
    request.guidance != null ? `guidance ${request.guidance}` : null,
    request.scale != null ? `scale ${request.scale}` : null,
  ].filter(Boolean).join(" · ");
  return el(
    "li",
    { className: "card result-card", "data-job": job.id },
    image,
    el("div", { className: "prompt" }, promptText(request)),
    el("div", { className: "muted who" }, whoText(request)),
    el("div", { className: "muted" }, summary),
    el("details", {}, el("summary", {}, "Parameters"), el("pre", { className: "parameters" }, JSON.stringify(request, null, 2))),
    el("div", { className: "actions" }, download, el("button", { type: "button", className: "again", onclick: () => refillForm(job) }, "Make again")),
  );
}

// --- start ------------------------------------------------------------------------------------------------

async function start() {
  $("token-error").hidden = true;
  for (const controller of state.streams.values()) controller.abort();
  state.streams.clear();
  try {
    await loadInfo();
    await loadIdentities();
    await loadJobs();
  } catch (error) {
    showTokenError(error);
  }
}

function saveToken(event) {
  event.preventDefault();
  localStorage.setItem(TOKEN_KEY, $("token").value.trim());
  for (const url of state.blobs.values()) URL.revokeObjectURL(url);
  state.blobs.clear();
  state.jobs.clear();
  state.jobItems.clear();
  state.galleryJobs.clear();
  $("jobs").replaceChildren();
  state.jobsListed = 0;
  $("gallery").replaceChildren();
  start();
}

document.addEventListener("DOMContentLoaded", () => {
  $("token").value = token();
  $("token-form").addEventListener("submit", saveToken);
  $("identity-form").addEventListener("submit", uploadIdentity);
  $("generate-form").addEventListener("submit", submitJob);
  $("mode").addEventListener("change", updateModeFields);
  $("task").addEventListener("change", updateTaskFields);
  $("more-jobs").addEventListener("click", () => loadJobs(state.jobsListed).catch((error) => showTokenError(error)));
  start();
});
