window.EFM = (function () {
  const D = JSON.parse(document.getElementById("efm-data").textContent);
  const bytes = (s) => {
    const bin = atob(s), out = new Uint8Array(bin.length);
    for (let j = 0; j < bin.length; j++) out[j] = bin.charCodeAt(j);
    return out;
  };
  // the sprites: base64 in <script> blocks, shown through Blob URLs (Chromium ignores a style sheet's
  // multi-megabyte data: URI); custom properties inherit into Bokeh's shadow DOM too
  for (const kind of ["test", "train"]) {
    const b64 = document.getElementById("efm-sprite-" + kind).textContent.trim();
    const png = new Blob([bytes(b64)], {type: "image/png"});
    document.documentElement.style.setProperty("--efm-" + kind, `url(${URL.createObjectURL(png)})`);
  }
  const uint = (s, size) => size === 2 ? new Uint16Array(bytes(s).buffer) : new Uint32Array(bytes(s).buffer);
  const labels = bytes(D.labels), preds = D.preds.map(bytes), testIds = uint(D.testIds, D.testIdBytes);
  const trainIds = uint(D.trainIds, D.trainIdBytes), trainLabels = bytes(D.trainLabels);
  const nbrs = D.neighbors.map((s) => uint(s, D.neighborBytes));
  const K = D.k, N = D.n, side = D.sprites.side;
  const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"})[c]);
  const cname = (c) => esc(D.classNames[c]);
  let M = null, quiet = null, hovered = -1;

  function thumb(kind, i, cls, extra) {
    const cols = D.sprites[kind].cols, s = D.scales[cls] * side;
    const x = (i % cols) * s, y = Math.floor(i / cols) * s;
    const style = `background-position:-${x}px -${y}px`;
    return `<div class="efm-${kind} ${cls}" data-i="${i}" style="${style}"${extra || ""}></div>`;
  }
  function describe(i) {
    const runs = D.names.map((n, r) => {
      const ok = preds[r][i] === labels[i];
      return `<div class="l">${esc(n)}: <span class="${ok ? "ok-t" : "bad-t"}">${cname(preds[r][i])}</span></div>`;
    });
    return `<div class="l">test #${testIds[i]}, true: <b>${cname(labels[i])}</b></div>` + runs.join("");
  }
  function title(i) {
    return ` title="test #${testIds[i]}: ${cname(labels[i])}; ` +
      D.names.map((n, r) => `${esc(n)} → ${cname(preds[r][i])}`).join("; ") + `"`;
  }
  function hover(cb, r, plot) {
    const tip = document.getElementById("efm-tip");
    const hit = cb.index.indices;
    if (!hit.length) { tip.hidden = true; hovered = -1; return; }
    const g = cb.geometry, xs = M.source.data["x" + r], ys = M.source.data["y" + r];
    const w = plot.x_range.end - plot.x_range.start, h = plot.y_range.end - plot.y_range.start;
    let best = hit[0], bd = Infinity;
    for (const i of hit) {
      const d = ((xs[i] - g.x) / w) ** 2 + ((ys[i] - g.y) / h) ** 2;
      if (d < bd) { bd = d; best = i; }
    }
    hovered = best;
    tip.innerHTML = thumb("test", best, "p") + `<div>${describe(best)}</div>`;
    tip.dataset.i = best;
    tip.hidden = false;
    const canvas = Bokeh.index.find_one(plot).canvas_view.el.getBoundingClientRect();
    const mx = canvas.left + g.sx, my = canvas.top + g.sy, tw = tip.offsetWidth, th = tip.offsetHeight;
    tip.style.left = (mx + 16 + tw > innerWidth ? mx - 16 - tw : mx + 16) + "px";
    tip.style.top = Math.max(0, Math.min(my + 16, innerHeight - th - 4)) + "px";
  }
  function showPoint(i) {
    const rows = D.names.map((n, r) => {
      const figs = [];
      for (let j = 0; j < K; j++) {
        const t = nbrs[r][i * K + j], c = trainLabels[t];
        figs.push(`<div class="efm-fig ${c === labels[i] ? "ok" : "bad"}">` +
          thumb("train", t, "n", ` title="train #${trainIds[t]}: ${cname(c)}"`) +
          `<div class="efm-cap">${cname(c)}</div></div>`);
      }
      const ok = preds[r][i] === labels[i];
      return `<div class="efm-run" data-run="${r}"><b>${esc(n)}</b> predicts ` +
        `<span class="${ok ? "ok-t" : "bad-t"}">${cname(preds[r][i])}</span>; ${K} nearest training images:<br>` +
        figs.join("") + `</div>`;
    });
    const box = document.getElementById("efm-point");
    box.innerHTML = `<h2>Point</h2><div class="efm-q" data-i="${i}">` + thumb("test", i, "p") +
      `<div>${describe(i)}</div></div>` + rows.join("");
    box.dataset.i = i;
  }
  function gallery(what, head, ids, caption) {
    document.getElementById("efm-gallery-title").textContent = head;
    const parts = new Array(ids.length);
    for (let j = 0; j < ids.length; j++) {
      const i = ids[j];
      parts[j] = caption ? `<div class="efm-fig">${thumb("test", i, "g", title(i))}<div class="efm-cap">` +
        `${caption(i)}</div></div>` : thumb("test", i, "g", title(i));
    }
    const g = document.getElementById("efm-gallery");
    g.innerHTML = parts.join("");
    g.dataset.count = ids.length;
    g.dataset.what = what;
    g.parentElement.querySelector(".efm-hint")?.remove();
  }
  function highlight(ids) {  // select in the panels without the selection replacing the gallery
    quiet = Array.from(ids);
    M.source.selected.indices = quiet;
  }
  function selected(ids) {
    if (!M || (quiet && ids.length === quiet.length && ids.every((v, j) => v === quiet[j]))) return;
    quiet = null;
    if (!ids.length) return;
    const sorted = Array.from(ids).sort((a, b) => a - b);
    if (ids.length > 1) gallery("selection", `${ids.length} selected images`, sorted);
    // a tap selects every point under the mouse: show the one the preview showed
    showPoint(ids.includes(hovered) ? hovered : sorted[0]);
  }
  function cell(r, sel) {
    if (!M || !sel.length) return;
    const src = M.cms[r], c = sel[0], t = src.data.true[c], p = src.data.pred[c], pr = preds[r], ids = [];
    for (let i = 0; i < N; i++) if (labels[i] === t && pr[i] === p) ids.push(i);
    gallery(`cell ${r} ${t} ${p}`, `${D.names[r]}: true ${D.classNames[t]}, predicted ${D.classNames[p]}: ` +
      `${ids.length} images`, ids);
    highlight(ids);
  }
  function list(b, c, kind) {
    const cmp = D.comparisons.find((x) => x.b === b), ids = cmp.classes[c][kind], a = cmp.a;
    const wrong = kind === "fixed" ? a : b;  // the run that gets them wrong: its prediction under each image
    gallery(`${kind} ${b} ${c}`, `${kind}: ${ids.length} ${D.classNames[c]} images ` +
      (kind === "fixed" ? `${D.names[a]} gets wrong and ${D.names[b]} right` :
        `${D.names[a]} gets right and ${D.names[b]} wrong`) + ` (under each: ${D.names[wrong]}'s prediction)`,
      ids, (i) => cname(preds[wrong][i]));
    highlight(ids);
  }
  function focusOnly(on) {
    const f = D.focus;
    M.filter.booleans = Array.from(labels, (c) => !on || f.includes(c));
    for (const src of M.cms) {
      const keep = Array.from(src.data.true, (t, j) => !on || (f.includes(t) && f.includes(src.data.pred[j])));
      src.data.alpha = keep.map((k) => k ? 1 : 0.12);
      src.data.text_alpha = keep.map((k) => k ? 1 : 0.3);
      src.change.emit();
    }
  }
  function init(models) {
    M = models;
    document.getElementById("efm-gallery").addEventListener("click", (e) => {
      const el = e.target.closest("[data-i]");
      if (el) { const i = +el.dataset.i; showPoint(i); highlight([i]); }
    });
    const box = document.getElementById("efm-focus-only");
    box.addEventListener("change", () => focusOnly(box.checked));
    if (box.checked) focusOnly(true);  // a reload can keep the box ticked
    for (const btn of document.querySelectorAll("button.efm-list")) {
      btn.addEventListener("click", () => list(+btn.dataset.b, btn.dataset.class, btn.dataset.kind));
    }
    for (const p of M.umaps) {  // the preview hides when the mouse leaves a panel
      const v = Bokeh.index.find_one(p);
      v && v.el.addEventListener("mouseleave", () => { document.getElementById("efm-tip").hidden = true; });
    }
    for (const p of [...M.umaps, ...M.cmplots]) {  // no focus ring after a mouse click (keyboard focus keeps it)
      const root = Bokeh.index.find_one(p)?.canvas_view.el.shadowRoot;
      if (!root) continue;
      const css = document.createElement("style");
      css.textContent = ".bk-events:focus:not(:focus-visible){outline:none}";
      root.appendChild(css);
    }
    EFM.readyAt = performance.now();
    EFM.ready = true;
  }
  return {D, hover, selected, cell, list, focusOnly, showPoint, init, ready: false};
})();
