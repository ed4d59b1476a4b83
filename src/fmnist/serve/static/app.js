// The fmnist web page: send an image to /v1/predict, show the answer. No build step, no network but this server.
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_BYTES = 10 * 1024 * 1024; // the server's body limit; checked here too for a quick answer

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  $("seen").hidden = true; // no stale answer beside a new image
  $("bars").replaceChildren();
}

let previewUrl = null; // the object URL of the image on show, released when replaced
function preview(blob, url) {
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = url ? null : URL.createObjectURL(blob);
  $("original").src = url || previewUrl;
  $("original").hidden = false;
}

function clearError() {
  $("error").hidden = true;
}

function percent(p) {
  return (100 * p).toFixed(1) + "%";
}

async function classify(blob, url) {
  clearError();
  preview(blob, url);
  if (blob.size > MAX_BYTES) {
    showError(`That file is ${(blob.size / 1048576).toFixed(1)} MB; the limit is 10 MB. Try a smaller image.`);
    return;
  }
  $("verdict").textContent = "Thinking…";
  const form = new FormData();
  form.append("file", blob, blob.name || "image.png");
  let response;
  try {
    response = await fetch("/v1/predict?explain=true&top_k=10", { method: "POST", body: form });
  } catch (error) {
    $("verdict").textContent = "No prediction.";
    showError("The server could not be reached. Is it still running?");
    return;
  }
  let body = null;
  try {
    body = await response.json();
  } catch (error) {
    body = null;
  }
  if (!response.ok || !body || !body.predictions) {
    $("verdict").textContent = "No prediction.";
    showError((body && body.error) || `The server answered ${response.status}.`);
    return;
  }
  render(body.predictions[0]);
}

function render(prediction) {
  const verdict = $("verdict");
  verdict.textContent = "";
  verdict.append("This looks like ");
  const strong = document.createElement("strong");
  strong.textContent = prediction.label;
  verdict.append(strong, ` (${percent(prediction.probability)} sure).`);
  if (prediction.seen) {
    $("seen").src = prediction.seen;
    $("seen").hidden = false;
  }
  const bars = $("bars");
  bars.replaceChildren();
  for (const item of prediction.top_k) {
    const row = document.createElement("li");
    const name = document.createElement("span");
    name.textContent = item.label;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = percent(item.probability);
    track.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = percent(item.probability);
    row.append(name, track, value);
    bars.append(row);
  }
}

// Choose, drop or paste a file.
$("file").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (file) classify(file);
  event.target.value = "";
});
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  const file = event.dataTransfer.files[0];
  if (file) classify(file);
  else showError("That was not a file. Drop an image file.");
});
drop.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") $("file").click(); });
document.addEventListener("paste", (event) => {
  const item = [...(event.clipboardData || {}).items || []].find((i) => i.type.startsWith("image/"));
  if (item) classify(item.getAsFile());
});

// Draw: white strokes on black, like the dataset's images.
const canvas = $("canvas");
const pen = canvas.getContext("2d");
function clearCanvas() {
  pen.fillStyle = "#000";
  pen.fillRect(0, 0, canvas.width, canvas.height);
}
clearCanvas();
let drawing = false;
function point(event) {
  const box = canvas.getBoundingClientRect();
  return [(event.clientX - box.left) * canvas.width / box.width, (event.clientY - box.top) * canvas.height / box.height];
}
canvas.addEventListener("pointerdown", (event) => {
  drawing = true;
  canvas.setPointerCapture(event.pointerId);
  pen.beginPath();
  pen.moveTo(...point(event));
});
canvas.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  pen.strokeStyle = "#fff";
  pen.lineWidth = 18;
  pen.lineCap = "round";
  pen.lineJoin = "round";
  pen.lineTo(...point(event));
  pen.stroke();
});
canvas.addEventListener("pointerup", () => { drawing = false; });
$("clear").addEventListener("click", clearCanvas);
$("predict-drawing").addEventListener("click", () => {
  canvas.toBlob((blob) => classify(blob, canvas.toDataURL()), "image/png");
});

// The gallery of real test images, and the model card.
async function loadJson(url) {
  const response = await fetch(url);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

async function loadGallery() {
  const items = await loadJson("/v1/gallery");
  const gallery = $("gallery");
  for (const item of items) {
    const button = document.createElement("button");
    button.type = "button";
    button.title = item.label;
    const image = document.createElement("img");
    image.src = item.url;
    image.alt = `test image of a ${item.label}`;
    button.append(image);
    button.addEventListener("click", async () => {
      const blob = await (await fetch(item.url)).blob();
      classify(blob, item.url);
    });
    gallery.append(button);
  }
}

async function loadCard() {
  const card = await loadJson("/v1/model");
  const rows = [
    ["Run", card.run],
    ["Model", `${card.model} (${card.parameters ? card.parameters.toLocaleString() + " parameters" : "?"})`],
    ["Test accuracy", card.test_accuracy == null ? "n/a" : `${percent(card.test_accuracy)} on ${card.test_images} images`],
    ["Validation accuracy", card.validation_accuracy == null ? "n/a" : percent(card.validation_accuracy)],
    ["Backend", `trained on ${card.trained_backend}, serving on ${card.serving_backend}`],
    ["Trained", card.created],
  ];
  const list = $("card");
  list.replaceChildren();
  for (const [term, value] of rows) {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = value;
    list.append(dt, dd);
  }
  const body = document.querySelector("#per-class tbody");
  body.replaceChildren();
  for (const row of card.per_class) {
    const tr = document.createElement("tr");
    for (const text of [row.label, percent(row.accuracy), row.f1.toFixed(3)]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    body.append(tr);
  }
  if (card.confusion_matrix_url) {
    $("confusion").src = card.confusion_matrix_url;
    $("confusion").hidden = false;
  }
}

async function start(attempt = 0) {
  try {
    await loadCard();
    await loadGallery();
  } catch (error) {
    if (attempt < 30) {
      setTimeout(() => start(attempt + 1), 1000); // the model may still be loading
    } else {
      showError(`The model could not be loaded: ${error.message}`);
    }
  }
}
start();
