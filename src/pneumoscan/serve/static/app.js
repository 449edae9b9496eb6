// pneumoscan page: upload a film to /v1/predict and show the answer. No framework, no network
// access beyond this server. Class names and thresholds come from /v1/models, never from here.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const state = { models: [], current: null, file: null, filmUrl: null, busy: false };

  function apiHeaders() {
    const key = $("apikey").value.trim();
    return key ? { "X-API-Key": key } : {};
  }

  function setStatus(text, kind) {
    const box = $("status");
    box.textContent = text;
    box.className = "status" + (kind ? " " + kind : "");
  }

  function formatMB(bytes) {
    return (bytes / (1024 * 1024)).toFixed(0) + " MB";
  }

  function percent(p) {
    return (100 * p).toFixed(1) + "%";
  }

  // --- models -----------------------------------------------------------------------------

  async function loadModels() {
    let response;
    try {
      response = await fetch("/v1/models", { headers: apiHeaders() });
    } catch (error) {
      setStatus("Cannot reach the pneumoscan server.", "error");
      return;
    }
    if (response.status === 401) {
      $("apikey-row").hidden = false;
      $("model-choices").textContent = "Enter the API key to load the models.";
      return;
    }
    const body = await response.json();
    if (!response.ok) {
      setStatus(body.message || "Could not load the models.", "error");
      return;
    }
    state.models = body.models;
    const limits = body.limits || {};
    if (limits.max_upload_bytes) {
      $("limits").textContent = "Up to " + formatMB(limits.max_upload_bytes) + " per file.";
    }
    const choices = $("model-choices");
    choices.textContent = "";
    for (const model of body.models) {
      const label = document.createElement("label");
      const input = document.createElement("input");
      input.type = "radio";
      input.name = "model";
      input.value = model.name;
      input.checked = model.name === body.default;
      input.addEventListener("change", () => selectModel(model.name, true));
      label.append(input, document.createTextNode(model.name + " (" + model.class_names.join(" / ") + ")"));
      choices.append(label);
    }
    selectModel(body.default, false);
  }

  function selectModel(name, rerun) {
    state.current = state.models.find((model) => model.name === name) || null;
    const model = state.current;
    if (!model) return;
    const rule =
      model.threshold === null
        ? "label = the most probable class"
        : "label = " + model.class_names[1] + " when P(" + model.class_names[1] + ") ≥ " +
          model.threshold.toFixed(3) + " (chosen on validation)";
    $("model-info").textContent = "Version " + (model.version || "unknown") + "; " + rule + ".";
    if (rerun && state.file) predict(state.file);
  }

  // --- prediction ---------------------------------------------------------------------------

  async function predict(file) {
    if (!state.current || state.busy) return;
    state.file = file;
    state.busy = true;
    setStatus("Analysing the film…", "busy");
    $("outcome").hidden = true;
    $("figure").hidden = true;
    const form = new FormData();
    form.append("file", file, "upload");
    form.append("model", state.current.name);
    form.append("heatmap", "true");
    let response;
    let body;
    try {
      response = await fetch("/v1/predict", { method: "POST", body: form, headers: apiHeaders() });
      body = await response.json();
    } catch (error) {
      state.busy = false;
      setStatus("The server did not answer; is pneumoscan serve still running?", "error");
      return;
    }
    state.busy = false;
    if (!response.ok) {
      if (response.status === 401) $("apikey-row").hidden = false;
      setStatus("Not analysed (" + response.status + "): " + body.message, "error");
      return;
    }
    showResult(body, file);
  }

  function showResult(result, file) {
    const model = state.current;
    const label = $("label");
    const decision = $("decision");
    const explanation = $("explanation");
    label.className = "label";
    decision.textContent = "";
    explanation.textContent = "";
    $("result-notice").textContent = result.notice;
    if (result.status === "not_chest_xray") {
      label.textContent = "Not a chest X-ray";
      label.classList.add("state");
      explanation.textContent =
        "This image does not look like a frontal pediatric chest radiograph, so no prediction " +
        "is made. Upload a frontal chest film." +
        (result.gate_reason ? " Reason: " + result.gate_reason + "." : "");
      setStatus(
        "Done: no prediction (not a chest X-ray" +
          (result.gate_reason ? ": " + result.gate_reason : "") + ")."
      );
    } else if (result.status === "indeterminate") {
      label.textContent = "Indeterminate";
      label.classList.add("state");
      explanation.textContent =
        "The probability is too close to the threshold to call either way; treat the film as " +
        "unanswered. " + (result.message || "");
      setStatus("Done: indeterminate.");
    } else {
      label.textContent = result.label;
      if (result.threshold !== null && model.class_names.length === 2) {
        const positive = model.class_names[1];
        const p = result.probabilities[positive];
        decision.textContent =
          "P(" + positive + ") = " + p.toFixed(3) + (p >= result.threshold ? " is at or above" : " is below") +
          " the threshold " + result.threshold.toFixed(3) + " chosen on validation.";
      } else {
        decision.textContent = "The most probable class (this model has no threshold).";
      }
      setStatus("Done: " + result.label + ".");
    }
    drawBars(result, model);
    $("outcome").hidden = false;
    showFigure(result, file);
  }

  function drawBars(result, model) {
    const bars = $("bars");
    bars.textContent = "";
    const names = Object.keys(result.probabilities);
    $("bars-heading").hidden = names.length === 0;
    const top = names.reduce((best, name) =>
      best === null || result.probabilities[name] > result.probabilities[best] ? name : best, null);
    names.forEach((name, index) => {
      const p = result.probabilities[name];
      const row = document.createElement("li");
      row.className = "bar-row" + (name === top ? " is-top" : "");
      const caption = document.createElement("span");
      caption.className = "bar-name";
      caption.textContent = name;
      const track = document.createElement("span");
      track.className = "bar-track";
      track.setAttribute("role", "progressbar");
      track.setAttribute("aria-label", "P(" + name + ")");
      track.setAttribute("aria-valuemin", "0");
      track.setAttribute("aria-valuemax", "100");
      track.setAttribute("aria-valuenow", (100 * p).toFixed(1));
      const fill = document.createElement("span");
      fill.className = "bar-fill";
      fill.style.display = "block";
      fill.style.width = percent(p);
      track.append(fill);
      if (result.threshold !== null && model.class_names.length === 2 && index === 1) {
        const mark = document.createElement("span");
        mark.className = "bar-threshold";
        mark.title = "threshold " + result.threshold.toFixed(3);
        mark.style.left = percent(result.threshold);
        track.append(mark);
      }
      const value = document.createElement("span");
      value.className = "bar-value";
      value.textContent = percent(p);
      row.append(caption, track, value);
      bars.append(row);
    });
  }

  function showFigure(result, file) {
    const overlay = $("overlay");
    const film = $("film");
    if (!result.heatmap_png_base64) {
      $("figure").hidden = true;
      return;
    }
    overlay.src = "data:image/png;base64," + result.heatmap_png_base64;
    if (state.filmUrl) URL.revokeObjectURL(state.filmUrl);
    state.filmUrl = null;
    const browserCanShow = /^image\/(png|jpeg|jpg|pjpeg)$/.test(file.type);
    if (browserCanShow) {
      state.filmUrl = URL.createObjectURL(file);
      film.src = state.filmUrl;
      film.hidden = false;
    } else {
      // DICOM: browsers cannot draw it; the overlay image already contains the film.
      film.removeAttribute("src");
      film.hidden = true;
    }
    applyOverlay();
    $("figure").hidden = false;
  }

  function applyOverlay() {
    const on = $("overlay-on").checked;
    const film = $("film");
    const opacity = Number($("opacity").value) / 100;
    $("opacity").setAttribute("aria-valuetext", $("opacity").value + " percent");
    $("opacity").disabled = !on;
    // Without a film layer (DICOM) the overlay, which contains the film, stays fully visible.
    $("overlay").style.opacity = film.hidden ? "1" : on ? String(opacity) : "0";
  }

  // --- wiring -------------------------------------------------------------------------------

  function init() {
    const drop = $("drop");
    const input = $("file");
    input.addEventListener("change", () => {
      if (input.files && input.files[0]) predict(input.files[0]);
    });
    ["dragenter", "dragover"].forEach((type) =>
      drop.addEventListener(type, (event) => {
        event.preventDefault();
        drop.classList.add("dragging");
      }));
    ["dragleave", "drop"].forEach((type) =>
      drop.addEventListener(type, (event) => {
        event.preventDefault();
        drop.classList.remove("dragging");
      }));
    drop.addEventListener("drop", (event) => {
      const files = event.dataTransfer && event.dataTransfer.files;
      if (files && files.length) predict(files[0]);
    });
    // A file dropped outside the zone must not make the browser navigate away from the page.
    window.addEventListener("dragover", (event) => event.preventDefault());
    window.addEventListener("drop", (event) => event.preventDefault());
    $("overlay-on").addEventListener("change", applyOverlay);
    $("opacity").addEventListener("input", applyOverlay);
    $("apikey").addEventListener("change", loadModels);
    loadModels();
  }

  document.addEventListener("DOMContentLoaded", init);
})();
