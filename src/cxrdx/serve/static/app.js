// cxrdx web page: upload a chest X-ray or CT slice, show class probabilities as bars and the Grad-CAM overlay,
// and which served model answered. Self-contained (no network beyond this server).
(() => {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const drop = $("drop"), input = $("file-input"), status = $("status"), tokenInput = $("token");
  let canExplain = false;

  tokenInput.value = sessionStorage.getItem("cxrdx-token") || "";
  tokenInput.addEventListener("change", () => { sessionStorage.setItem("cxrdx-token", tokenInput.value); loadModel(); });

  function headers() {
    const t = tokenInput.value.trim();
    return t ? { Authorization: "Bearer " + t } : {};
  }

  function setStatus(text, isError) {
    status.textContent = text;
    status.className = "status" + (isError ? " error" : "");
  }

  async function errorText(resp) {
    try {
      const body = await resp.json();
      if (body.error) return `${resp.status} ${body.error.code}: ${body.error.message}`;
    } catch (e) { /* not JSON */ }
    return `${resp.status} ${resp.statusText}`;
  }

  const MODALITY = { xray: "chest X-ray", ct: "chest CT slice", "xray+ct": "chest X-ray or CT slice" };

  async function loadModel() {
    const resp = await fetch("/v1/models", { headers: headers() });
    if (!resp.ok) { $("model").textContent = "model: " + (await errorText(resp)); return; }
    const listing = await resp.json();
    const models = listing.models;
    canExplain = models.some((m) => m.explain);
    const describe = (m) => `${m.run} (${MODALITY[m.modality] || m.modality}): ${m.id} ${m.version}, runtime ${m.runtime}, classes: ${m.classes.join(", ")}`;
    $("model").textContent = models.length === 1 ? "model " + describe(models[0])
      : `${models.length} models, ${listing.routing === "guard" ? "the input guard routes each image" : "choose one below"}: ` + models.map(describe).join("; ");
    const choice = $("model-choice");
    choice.replaceChildren();
    if (listing.routing !== "request") choice.append(new Option(models.length > 1 ? "automatic (input guard)" : models[0].run, ""));
    if (models.length > 1) for (const m of models) choice.append(new Option(`${m.run} (${MODALITY[m.modality] || m.modality})`, m.run));
    $("model-choice-label").hidden = models.length === 1;
    const kinds = [...new Set(models.flatMap((m) => m.modality.split("+")))].map((k) => MODALITY[k] || k);
    $("drop-what").textContent = "Drop a " + kinds.join(" or ") + " here";
  }

  function showProbabilities(probs, predicted) {
    const box = $("probabilities");
    box.replaceChildren();
    for (const [cls, p] of Object.entries(probs).sort((a, b) => b[1] - a[1])) {
      const row = document.createElement("div");
      row.className = "prob" + (cls === predicted ? " top" : "");
      row.dataset.class = cls;
      const name = document.createElement("span"); name.className = "name"; name.textContent = cls;
      const track = document.createElement("div"); track.className = "track";
      const bar = document.createElement("div"); bar.className = "bar"; bar.style.width = (100 * p).toFixed(1) + "%";
      track.appendChild(bar);
      const value = document.createElement("span"); value.className = "value"; value.textContent = (100 * p).toFixed(1) + "%";
      row.append(name, track, value);
      box.appendChild(row);
    }
    $("predicted").textContent = `(highest: ${predicted})`;
  }

  async function analyse(file) {
    if (!file) return;
    $("result").hidden = true;
    setStatus(`analysing ${file.name}…`);
    const isDicom = /\.(dcm|dicom)$/i.test(file.name) || file.type === "application/dicom";
    const original = $("original");
    if (original.src) URL.revokeObjectURL(original.src);
    if (isDicom) { original.removeAttribute("src"); $("original-caption").textContent = "DICOM: no browser preview (see the overlay)"; }
    else { original.src = URL.createObjectURL(file); $("original-caption").textContent = "uploaded image"; }

    const form = new FormData();
    form.append("file", file, file.name);
    if ($("model-choice").value) form.append("model", $("model-choice").value);
    const url = canExplain ? "/v1/explain" : "/v1/predict";
    let resp;
    try {
      resp = await fetch(url, { method: "POST", body: form, headers: headers() });
    } catch (e) {
      setStatus("the server cannot be reached: " + e, true); return;
    }
    if (!resp.ok) { setStatus(await errorText(resp), true); return; }
    const r = await resp.json();
    showProbabilities(r.probabilities, r.predicted);
    const overlayFig = $("overlay-figure");
    if (r.overlay_png_base64) { $("overlay").src = "data:image/png;base64," + r.overlay_png_base64; overlayFig.hidden = false; }
    else { overlayFig.hidden = true; }
    const why = { guard: `the input guard read it as a ${MODALITY[r.routing.modality] || r.routing.modality}`,
                  request: "chosen in the request", only_model: "the only model" }[r.routing.by];
    $("answered-by").textContent = `answered by ${r.model_run} (${MODALITY[r.modality] || r.modality}; ${why})`;
    $("answered-by").dataset.model = r.model_run;
    $("answered-by").dataset.modality = r.modality;
    $("meta").textContent = `model ${r.model_id} ${r.model_version} (${r.runtime}); ${r.latency_ms.toFixed(0)} ms on the server; input SHA-256 ${r.input_sha256.slice(0, 16)}…  ${r.disclaimer}`;
    $("result").hidden = false;
    setStatus("done");
  }

  input.addEventListener("change", () => analyse(input.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); analyse(e.dataTransfer.files[0]); });
  loadModel();
})();
