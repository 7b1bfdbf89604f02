"""The page ``GET /`` serves: pick or drop images, see each one's classes as bars. No external files."""

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>graft: __TITLE__</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:760px;margin:2rem auto;
padding:0 1rem;color:#1f2328}
#drop{border:2px dashed #8c959f;border-radius:10px;padding:2rem;text-align:center;color:#57606a;
cursor:pointer}
#drop.over{background:#ddf4ff;border-color:#0969da}
.pred{display:flex;gap:1rem;margin:1rem 0;align-items:flex-start}
.pred img{width:128px;height:128px;object-fit:cover;border-radius:6px;border:1px solid #d0d7de}
.rows{flex:1}.row{display:flex;align-items:center;gap:.5rem;margin:.25rem 0;font-size:.9rem}
.row .name{width:9rem;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.bar{height:.9rem;background:#0969da;border-radius:3px}.error{color:#cf222e}.muted{color:#57606a}
</style></head><body>
<h1>__TITLE__</h1>
<p class="muted">__SUBTITLE__</p>
<label id="drop" for="file">Drop images here, or click to pick them
<input id="file" type="file" accept="image/*" multiple hidden></label>
<div id="status" class="muted"></div>
<div id="results"></div>
<script>
const drop = document.getElementById("drop"), input = document.getElementById("file");
const results = document.getElementById("results"), status = document.getElementById("status");
function el(tag, cls, text) { const e = document.createElement(tag); if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text; return e; }
async function send(files) {
  if (!files.length) return;
  const form = new FormData();
  for (const f of files) form.append("file", f, f.name);
  status.textContent = "predicting " + files.length + " image(s)…";
  let body;
  try {
    const response = await fetch("predict?top_k=5", {method: "POST", body: form});
    body = await response.json();
    if (!response.ok) throw new Error(body.error || response.statusText);
  } catch (err) {
    status.textContent = ""; results.prepend(el("p", "error", "error: " + err.message)); return;
  }
  status.textContent = "";
  body.predictions.forEach((p, i) => {
    const card = el("div", "pred"); card.dataset.label = p.label;
    const img = el("img"); img.src = URL.createObjectURL(files[i]); img.alt = p.filename;
    const rows = el("div", "rows"); rows.append(el("strong", "filename", p.filename));
    for (const t of p.top) {
      const row = el("div", "row"); row.append(el("span", "name", t.label));
      const bar = el("div", "bar"); bar.style.width = (t.prob * 60).toFixed(1) + "%";
      row.append(bar, el("span", "prob", t.prob.toFixed(3))); rows.append(row);
    }
    card.append(img, rows); results.prepend(card);
  });
}
input.addEventListener("change", () => send([...input.files]));
drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", e => { e.preventDefault(); drop.classList.remove("over");
  send([...e.dataTransfer.files]); });
</script></body></html>
"""
