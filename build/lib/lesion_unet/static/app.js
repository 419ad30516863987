// The page of app.py: sends each dropped or chosen image to /api/segment, one at a time, and shows
// one card per image. Names and messages are put in with textContent, never as HTML.
"use strict";

const state = { info: null, queue: Promise.resolve() };
const $ = (id) => document.getElementById(id);

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function megabytes(bytes) {
  return `${(bytes / 1e6).toFixed(bytes < 1e7 ? 1 : 0)} MB`;
}

function newCard(name) {
  const card = element("article", "result");
  card.dataset.name = name;
  const title = element("h2", null, name);
  title.append(" ", element("span", "status", "waiting…"));
  card.append(title);
  $("results").prepend(card);
  return card;
}

function showError(card, message) {
  card.classList.add("failed");
  card.querySelector(".status").textContent = "failed";
  const error = element("p", "error", message);
  error.setAttribute("role", "alert");
  card.append(error);
}

function figure(src, caption, small, extra) {
  const node = element("figure");
  const image = element("img", small ? "small" : null);
  image.src = src;
  image.alt = caption;
  node.append(image);
  if (extra) node.append(extra);
  node.append(element("figcaption", null, caption));
  return node;
}

// The quality estimate (quality.py): the Dice that images the model was as unsure about had, and
// whether to check the mask by eye. Unknown for a model that carries no quality estimate.
function qualityText(result) {
  if (result.review === null) return "unknown (this model carries no quality estimate)";
  if (result.area_pixels === 0) return "0 — check this mask: no lesion found";
  const expected = result.expected_dice.toFixed(2);
  return result.review ? `${expected} — check this mask: the model was unsure about this one`
    : `${expected} (the Dice of images the model was as sure about)`;
}

function showResult(card, result) {
  card.querySelector(".status").textContent = "done";
  const small = Math.max(result.width, result.height) < 256;
  const figures = element("div", "figures");
  figures.append(
    figure(result.files.overlay, "outline on the image", small),
    figure(result.files.mask, "mask (white: lesion)", small),
    figure(result.files.heatmap, "lesion probability, 0 (dark) to 1 (light)", small, element("div", "legend")),
  );
  const stats = element("dl", "stats");
  const percent = result.area_percent.toFixed(2);
  const rows = [
    ["image", `${result.width} × ${result.height} px`, "size"],
    ["lesion area", `${result.area_pixels.toLocaleString("en")} px (${percent}% of the image)`, "area"],
    ["expected Dice", qualityText(result), "quality"],
    ["time", `${result.seconds.toFixed(2)} s` + (result.waited_seconds > 0.05
      ? ` (after ${result.waited_seconds.toFixed(1)} s waiting for other images)` : ""), "time"],
    ["settings", `TTA ${result.tta ? "on" : "off"}, post-processing ${result.postprocess ? "on" : "off"}, `
      + `hair removal ${result.remove_hair ? "on" : "off"}, threshold ${result.threshold}`, "settings"],
  ];
  for (const [label, value, key] of rows) {
    stats.append(element("dt", null, label), element("dd", key, value));
  }
  if (result.review) card.classList.add("review");
  card.append(figures, stats);
  if (result.notes.length) {
    const notes = element("ul", "notes");
    for (const note of result.notes) notes.append(element("li", null, note));
    card.append(notes);
  }
  const downloads = element("p", "downloads");
  for (const [key, label, className] of [["mask_png", "download mask (ISIC PNG)", "download-mask"],
                                         ["overlay_png", "download overlay", "download-overlay"]]) {
    const link = element("a", className, label);
    link.href = result.files[key];
    link.download = result.download_names[key];
    downloads.append(link);
  }
  card.append(downloads);
}

async function segment(file, card) {
  card.querySelector(".status").textContent = "segmenting…";
  if (state.info && file.size > state.info.max_upload_bytes) {
    showError(card, `${file.name}: ${megabytes(file.size)} is more than this server takes `
      + `(${megabytes(state.info.max_upload_bytes)}; app.py --max-upload-mb raises it)`);
    return;
  }
  const params = new URLSearchParams({
    name: file.name, tta: $("tta").checked ? "1" : "0", postprocess: $("postprocess").checked ? "1" : "0",
    remove_hair: $("remove-hair").checked ? "1" : "0",
  });
  let response;
  try {
    response = await fetch(`/api/segment?${params}`, {
      method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" },
    });
  } catch (error) {
    showError(card, `${file.name}: could not reach the server (${error.message}); is app.py still running?`);
    return;
  }
  let body;
  try {
    body = await response.json();
  } catch (error) {
    body = { error: `${file.name}: the server answered ${response.status} without a result` };
  }
  if (!response.ok) showError(card, body.error);
  else showResult(card, body);
}

function submit(files) {
  for (const file of files) {
    const card = newCard(file.name);
    state.queue = state.queue.then(() => segment(file, card));
  }
}

async function start() {
  const dropZone = $("drop-zone");
  for (const type of ["dragenter", "dragover"]) {
    dropZone.addEventListener(type, (event) => { event.preventDefault(); dropZone.classList.add("dragging"); });
  }
  dropZone.addEventListener("dragleave", () => dropZone.classList.remove("dragging"));
  dropZone.addEventListener("drop", (event) => {
    event.preventDefault();
    dropZone.classList.remove("dragging");
    submit(event.dataTransfer.files);
  });
  dropZone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") { event.preventDefault(); $("file-input").click(); }
  });
  // A file dropped beside the zone must not make the browser leave the page to show it.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  $("file-input").addEventListener("change", (event) => {
    submit(event.target.files);
    event.target.value = "";
  });

  try {
    state.info = await (await fetch("/api/info")).json();
  } catch (error) {
    $("model-name").textContent = "the server does not answer; is app.py running?";
    return;
  }
  const info = state.info;
  $("model-name").textContent = `${info.model} (input ${info.input_size[1]} × ${info.input_size[0]})`;
  $("tta").checked = info.tta;
  $("postprocess").checked = info.postprocess;
  $("remove-hair").checked = info.remove_hair;
  $("threshold").textContent = `threshold ${info.threshold}`;
  for (const example of info.examples) {
    const button = element("button");
    button.type = "button";
    button.title = example.name;
    const image = element("img");
    image.src = example.url;
    image.alt = example.name;
    button.append(image);
    button.addEventListener("click", async () => {
      const blob = await (await fetch(example.url)).blob();
      submit([new File([blob], example.name, { type: "image/png" })]);
    });
    $("example-list").append(button);
  }
  document.body.dataset.ready = "true";
}

start();
