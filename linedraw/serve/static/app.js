// linedraw serve: draw on the canvas (pointer events: mouse, pen, touch) or upload, drop or paste an image; the
// results grid follows, one request in flight at a time. Everything from the server is set with textContent.
"use strict";

(() => {
  const DEBOUNCE_MS = 250;  // quiet time after the last change before searching
  const MAX_WAIT_MS = 700;  // while a stroke goes on, search at least this often
  const $ = (id) => document.getElementById(id);
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");

  // history: strokes {points, size, erase} and clear marks {clear: true}; undo pops the last entry
  const history = [];
  let current = null;        // the stroke being drawn
  let tool = "pen";
  let upload = null;         // {blob, name, url} while an uploaded image is the query
  let k = 24;
  let timer = 0, firstChange = 0, inFlight = false, pending = false, sequence = 0;

  // ------------------------------------------------------------------------------------------- drawing
  function paintBackground() {
    ctx.save();
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.restore();
  }

  function visibleStrokes() {
    let start = 0;
    history.forEach((entry, i) => { if (entry.clear) start = i + 1; });
    return history.slice(start);
  }

  function isBlank() {
    return !visibleStrokes().some((stroke) => !stroke.erase);
  }

  function styleFor(stroke) {
    ctx.strokeStyle = ctx.fillStyle = stroke.erase ? "#fff" : "#000";
    ctx.lineWidth = stroke.size;
    ctx.lineCap = ctx.lineJoin = "round";
  }

  function drawDot(stroke, p) {
    styleFor(stroke);
    ctx.beginPath();
    ctx.arc(p.x, p.y, stroke.size / 2, 0, 2 * Math.PI);
    ctx.fill();
  }

  function drawSegment(stroke, a, b) {
    styleFor(stroke);
    ctx.beginPath();
    ctx.moveTo(a.x, a.y);
    ctx.lineTo(b.x, b.y);
    ctx.stroke();
  }

  function drawStroke(stroke) {
    drawDot(stroke, stroke.points[0]);
    for (let i = 1; i < stroke.points.length; i++) drawSegment(stroke, stroke.points[i - 1], stroke.points[i]);
  }

  function redraw() {
    paintBackground();
    visibleStrokes().forEach(drawStroke);
    updateButtons();
  }

  function pointOf(event) {
    const rect = canvas.getBoundingClientRect();
    return {
      x: (event.clientX - rect.left) * canvas.width / rect.width,
      y: (event.clientY - rect.top) * canvas.height / rect.height,
    };
  }

  canvas.addEventListener("pointerdown", (event) => {
    if (event.pointerType === "mouse" && event.button !== 0) return;
    event.preventDefault();
    try {
      canvas.setPointerCapture(event.pointerId);  // keep the stroke when the pointer leaves the canvas
    } catch (error) {
      // a pointer the browser no longer tracks: draw without capture
    }
    // a pen's eraser end reports button 5 (buttons bit 32)
    const erase = tool === "eraser" || event.button === 5 || (event.buttons & 32) !== 0;
    const size = Number($("size").value) * (erase ? 3 : 1);
    current = { points: [pointOf(event)], size, erase, pointer: event.pointerId };
    history.push(current);
    drawDot(current, current.points[0]);
    useSketch();
    changed();
  });

  canvas.addEventListener("pointermove", (event) => {
    if (!current || event.pointerId !== current.pointer) return;
    const events = typeof event.getCoalescedEvents === "function" ? event.getCoalescedEvents() : [];
    for (const e of events.length ? events : [event]) {
      const p = pointOf(e);
      drawSegment(current, current.points[current.points.length - 1], p);
      current.points.push(p);
    }
    changed();
  });

  function endStroke(event) {
    if (!current || event.pointerId !== current.pointer) return;
    delete current.pointer;
    current = null;
    changed();
  }
  canvas.addEventListener("pointerup", endStroke);
  canvas.addEventListener("pointercancel", endStroke);

  function undo() {
    if (upload) { useSketch(); changed(); return; }
    if (!history.length) return;
    history.pop();
    current = null;
    redraw();
    changed();
  }

  function clearAll() {
    useSketch();
    if (visibleStrokes().length) history.push({ clear: true });
    current = null;
    redraw();
    changed();
  }

  function setTool(name) {
    tool = name;
    $("pen").setAttribute("aria-pressed", String(name === "pen"));
    $("eraser").setAttribute("aria-pressed", String(name === "eraser"));
  }

  function updateButtons() {
    $("undo").disabled = !history.length && !upload;
  }

  $("pen").addEventListener("click", () => setTool("pen"));
  $("eraser").addEventListener("click", () => setTool("eraser"));
  $("undo").addEventListener("click", undo);
  $("clear").addEventListener("click", clearAll);

  document.addEventListener("keydown", (event) => {
    const mod = event.ctrlKey || event.metaKey;
    const key = event.key.toLowerCase();
    if (mod && key === "z" && !event.shiftKey) {
      event.preventDefault();
      undo();
    } else if (!mod && (event.key === "Delete" || event.key === "Escape")) {
      event.preventDefault();
      clearAll();
    } else if (!mod && !event.altKey && event.target.tagName !== "SELECT") {
      const size = $("size");
      if (key === "b") setTool("pen");
      else if (key === "e") setTool("eraser");
      else if (key === "[") size.value = String(Number(size.value) - 2);
      else if (key === "]") size.value = String(Number(size.value) + 2);
    }
  });

  // ------------------------------------------------------------------------------------------- uploads
  function useUpload(file, name) {
    if (upload) URL.revokeObjectURL(upload.url);
    upload = { blob: file, name, url: URL.createObjectURL(file) };
    $("upload-image").src = upload.url;
    $("upload-name").textContent = name;
    $("upload-preview").hidden = false;
    updateButtons();
    search();
  }

  function useSketch() {
    if (!upload) return;
    URL.revokeObjectURL(upload.url);
    upload = null;
    $("upload-preview").hidden = true;
    $("upload-image").removeAttribute("src");
    $("file").value = "";
    updateButtons();
  }

  $("file").addEventListener("change", () => {
    const file = $("file").files[0];
    if (file) useUpload(file, file.name);
  });
  $("back").addEventListener("click", () => { useSketch(); changed(); });

  const box = $("canvas-box");
  box.addEventListener("dragover", (event) => { event.preventDefault(); box.classList.add("dragging"); });
  box.addEventListener("dragleave", () => box.classList.remove("dragging"));
  box.addEventListener("drop", (event) => {
    event.preventDefault();
    box.classList.remove("dragging");
    const file = [...event.dataTransfer.files].find((f) => f.type.startsWith("image/"));
    if (file) useUpload(file, file.name);
    else showError("drop an image file (PNG, JPEG, WebP, ...)");
  });
  document.addEventListener("paste", (event) => {
    const item = [...(event.clipboardData ? event.clipboardData.items : [])].find((i) => i.type.startsWith("image/"));
    const file = item ? item.getAsFile() : null;
    if (!file) return;
    event.preventDefault();
    useUpload(file, "pasted image");
  });

  // ------------------------------------------------------------------------------------------- searching
  function changed() {
    updateButtons();
    const now = performance.now();
    if (!firstChange) firstChange = now;
    clearTimeout(timer);
    if (now - firstChange >= MAX_WAIT_MS) search();
    else { timer = setTimeout(search, DEBOUNCE_MS); markSettled(false); }
  }

  // #results[data-settled="1"]: no search waiting or running, so the grid shows the current query
  function markSettled(settled) {
    $("results").dataset.settled = settled ? "1" : "0";
  }

  async function search() {
    clearTimeout(timer);
    firstChange = 0;
    markSettled(false);
    if (inFlight) { pending = true; return; }
    inFlight = true;
    try {
      await runSearch();
    } finally {
      inFlight = false;
      if (pending) { pending = false; search(); } else markSettled(true);
    }
  }

  function canvasBlob() {
    return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  }

  async function runSearch() {
    const query = upload ? upload.blob : (isBlank() ? null : await canvasBlob());
    const mine = ++sequence;
    if (!query) { showResults(null); return; }
    const params = new URLSearchParams({ index: $("index").value || "0", k: String(k), raw: $("raw").checked ? "1" : "0" });
    setStatus("Searching…");
    let response, data;
    try {
      response = await fetch(`/api/search?${params}`, {
        method: "POST", body: query, headers: { "Content-Type": query.type || "application/octet-stream" },
      });
      data = await response.json().catch(() => ({}));
    } catch (error) {
      if (mine === sequence) showError(`the server did not answer: ${error.message}`);
      return;
    }
    if (mine !== sequence) return;  // a newer query has been sent since
    if (!response.ok) showError(data.error || `the server answered ${response.status}`);
    else showResults(data);
  }

  function setStatus(text) {
    $("status").textContent = text;
  }

  function showError(message) {
    const box = $("error");
    box.textContent = message;
    box.hidden = false;
    $("results").replaceChildren();  // older results would seem to answer the refused query
    setStatus("");
  }

  function showResults(data) {
    $("error").hidden = true;
    const list = $("results");
    list.replaceChildren();
    if (!data) {
      setStatus("Draw a sketch, or upload, drop or paste an image.");
      return;
    }
    setStatus(`${data.results.length} matches for the ${data.query} (${data.seconds.toFixed(2)} s)`);
    data.results.forEach((hit, rank) => {
      const item = document.createElement("li");
      item.className = "hit";
      item.dataset.id = String(hit.id);
      const link = document.createElement("a");
      link.href = hit.photo;
      link.target = "_blank";
      link.rel = "noopener";
      link.title = hit.path;
      const image = document.createElement("img");
      image.src = hit.thumb;
      image.alt = hit.name;
      image.loading = "lazy";
      link.append(image);
      const meta = document.createElement("div");
      meta.className = "meta";
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = `${rank + 1}. ${hit.name}${hit.object ? ` [${hit.object}]` : ""}`;
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = hit.score.toFixed(3);
      meta.append(name, score);
      const path = document.createElement("div");
      path.className = "path";
      path.textContent = hit.path;
      item.append(link, meta, path);
      list.append(item);
    });
  }

  // ------------------------------------------------------------------------------------------- start
  async function start() {
    paintBackground();
    updateButtons();
    $("index").addEventListener("change", search);
    $("raw").addEventListener("change", () => { if (upload) search(); });
    try {
      const response = await fetch("/api/indexes");
      const data = await response.json();
      k = data.k;
      for (const index of data.indexes) {
        const option = document.createElement("option");
        option.value = String(index.id);
        option.textContent = `${index.name} (${index.count} photos)`;
        option.title = `${index.path}: ${index.embedder}, ${index.checkpoint || "raw photos"}`;
        $("index").append(option);
      }
      $("index").disabled = data.indexes.length < 2;
      const first = data.indexes[0];
      $("index-info").textContent = first ? `embedder ${first.embedder}, drawings by ${first.checkpoint || "none (raw photos)"}` : "";
      $("index").addEventListener("change", () => {
        const chosen = data.indexes[Number($("index").value)];
        $("index-info").textContent = `embedder ${chosen.embedder}, drawings by ${chosen.checkpoint || "none (raw photos)"}`;
      });
      showResults(null);
      document.body.dataset.ready = "1";
    } catch (error) {
      showError(`cannot list the indexes: ${error.message}`);
    }
  }

  start();
})();
