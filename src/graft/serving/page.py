"""The page ``GET /`` serves: pick or drop images, see each one's classes as bars. No external files."""

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>graft: __TITLE__</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:760px;margin:2rem auto;
padding:0 1rem;color:#1f2328}
#drop{display:block;border:2px dashed #8c959f;border-radius:10px;padding:2rem;text-align:center;color:#57606a;
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
// One request per file, so a file the server refuses shows its own error beside the others' results.
async function predictOne(file) {
  const form = new FormData();
  form.append("file", file, file.name);
  const response = await fetch("predict?top_k=5", {method: "POST", body: form});
  let body;
  try { body = await response.json(); } catch (err) { throw new Error(response.statusText); }
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body.predictions[0];
}
function card(file, p) {
  const c = el("div", "pred"); c.dataset.label = p.label;
  const img = el("img"); img.src = URL.createObjectURL(file); img.alt = p.filename;
  const rows = el("div", "rows"); rows.append(el("strong", "filename", p.filename));
  // The answer (a multi-label model's may hold several labels, or none), then the bars.
  const answer = p.labels.map(t => t.label).join(", ");
  rows.append(el("div", "answer muted", answer ? "answer: " + answer : "answer: none of the classes"));
  for (const t of p.top) {
    const row = el("div", "row"); row.append(el("span", "name", t.label));
    const bar = el("div", "bar"); bar.style.width = (t.prob * 60).toFixed(1) + "%";
    row.append(bar, el("span", "prob", t.prob.toFixed(3))); rows.append(row);
  }
  c.append(img, rows); return c;
}
async function send(files) {
  if (!files.length) return;
  status.textContent = "predicting " + files.length + " image" + (files.length > 1 ? "s" : "") + "…";
  const shown = await Promise.all(files.map(f => predictOne(f).then(p => card(f, p),
    err => el("p", "error", f.name + ": " + err.message))));
  status.textContent = "";
  results.prepend(...shown);
}
input.addEventListener("change", () => send([...input.files]));
drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", e => { e.preventDefault(); drop.classList.remove("over");
  send([...e.dataTransfer.files]); });
</script></body></html>
"""
