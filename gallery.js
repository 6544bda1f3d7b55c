"use strict";
const T0 = performance.now();
const D = JSON.parse(document.getElementById("data").textContent);
const CFG = JSON.parse(document.getElementById("settings").textContent);
const CHUNK = 60;
const $ = (id) => document.getElementById(id);
const SVGNS = "http://www.w3.org/2000/svg";

// Every node is built here; data only ever becomes text (textContent) or an attribute value.
function el(tag, attrs, text, ns) {
  const e = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}
const sv = (tag, attrs, text) => el(tag, attrs, text, SVGNS);
const fmt = (v) => (v === null || v === undefined) ? "–" : (Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(2) : +v.toPrecision(4) + "");
const key = (n) => n.r + "-" + n.n;

const N = D.neurons, RUNS = D.runs;
const byKey = new Map();
N.forEach((n, i) => {
  n.i = i;
  n.q = n.c.map((c) => c[0].toLowerCase());
  const g = RUNS[n.r].tops;
  if (g !== undefined) {  // a rival's own top-k images, shared by the rivals of its selection with the same k
    const T = D.tops[g];
    n.x = T.x[n.n] || [];
    n.t = T.t[n.n] === undefined ? null : T.t[n.n];
    n.mp = T.mp[n.n] || 0;
  }
  byKey.set(key(n), n);
});
// Scores of different describers are on different scales and units (MAMMI's mean score per example,
// CLIP-Dissect's soft-WPMI, AUROC, IoU): a neuron's score (n.v) is compared across runs by where it stands
// in its own run, the share of the run's scored neurons whose score is at least its own: "top 5%" is near
// the best. A dead neuron has no score and no place.
RUNS.forEach((run, r) => {
  const mine = N.filter((n) => n.r === r && n.v !== null), vs = mine.map((n) => n.v).sort((a, b) => b - a);
  mine.forEach((n) => {
    let lo = 0, hi = vs.length;
    while (lo < hi) { const m = (lo + hi) >> 1; if (vs[m] >= n.v) lo = m + 1; else hi = m; }
    n.pct = 100 * lo / vs.length;
  });
  // A run's short name on its cards: describer, layer, model and what tells it from runs of the same three
  // (the folder only in the neuron view).
  run.short = [run.describer, run.layer, run.model, run.variant].filter((x) => x).join(" · ");
});

$("title").textContent = D.title;
document.title = D.title;
const layers = [...new Set(RUNS.map((r) => r.layer))];
layers.forEach((l) => $("layer").appendChild(el("option", {value: l}, l)));
RUNS.forEach((r, i) => $("run").appendChild(el("option", {value: String(i), title: r.folder}, r.short + (r.label ? ` (${r.label})` : ""))));
if (RUNS.length < 2) $("runbox").style.display = "none";
if (!RUNS.some((r) => r.fc)) $("hitbox").style.display = "none";
if (!N.some((n) => n.ev) && !RUNS.some((r) => r.evidence)) $("evbox").style.display = "none";
// The page opens on one run, not on every run pooled (a re-initialised target's names beside the trained
// one's): a trained target's before an untrained one's, MAMMI's before a rival's, then the most neurons;
// "all" stays in the menu.
const size = RUNS.map((r, i) => N.filter((n) => n.r === i).length);
const first = RUNS.map((r, i) => i).sort((a, b) => RUNS[a].untrained - RUNS[b].untrained ||
  (RUNS[a].describer !== "MAMMI") - (RUNS[b].describer !== "MAMMI") || size[b] - size[a] || a - b)[0];
if (RUNS.length > 1) $("run").value = String(first);

// The significance test's verdict on a neuron's name: "sig", "nsig", "nt" (named, in a layer where the test
// cannot reach significance: never "not significant") or null (not tested: dead, no name, a rival describer).
function verdict(n) {
  if (n.ev) return n.ev.sig ? "sig" : "nsig";
  const E = RUNS[n.r].evidence;
  return E && E.testable === false && n.s === "ok" ? "nt" : null;
}

let shown = [], rendered = 0;
const list = $("list");
const more = el("div", {id: "more"});
const observer = new IntersectionObserver((es) => { if (es.some((e) => e.isIntersecting)) fill(); }, {rootMargin: "800px"});

function apply() {
  const q = $("q").value.trim().toLowerCase(), st = $("status").value, ly = $("layer").value,
        run = $("run").value, hs = $("hitsel").value, ev = $("evsel").value, sort = $("sort").value;
  const idq = /^#\d+$/.test(q) ? +q.slice(1) : null;
  shown = N.filter((n) => (!st || n.s === st) && (!ly || RUNS[n.r].layer === ly) && (!run || n.r === +run)
    && (!hs || (n.cls !== undefined && (hs === "hit") === n.hit))
    && (!ev || verdict(n) === ev)
    && (!q || (idq !== null ? n.n === idq : n.q.some((c) => c.includes(q)))));
  const pct = (n) => n.pct === undefined ? Infinity : n.pct, v = (n) => n.v === null ? -Infinity : n.v,
        qv = (n) => n.ev && n.ev.q !== null ? n.ev.q : Infinity;
  const by = {id: (a, b) => a.r - b.r || a.n - b.n, ex: (a, b) => b.e - a.e || a.i - b.i,
              exa: (a, b) => a.e - b.e || a.i - b.i,
              top: (a, b) => pct(a) - pct(b) || v(b) - v(a) || a.i - b.i,
              q: (a, b) => qv(a) - qv(b) || a.i - b.i}[sort];
  shown.sort(by);
  list.textContent = "";
  rendered = 0;
  list.appendChild(more);
  fill();
  // Trained and untrained targets counted apart: a random network's names are no evidence for a trained one's.
  const trained = shown.filter((n) => !RUNS[n.r].untrained), untrained = shown.filter((n) => RUNS[n.r].untrained);
  const parts = [[trained, "trained target"], [untrained, "untrained target"]].filter(([ns]) => ns.length);
  $("count").textContent = `${shown.length} of ${N.length} neurons shown · ` + parts.map(([ns, what]) =>
    (parts.length > 1 || ns === untrained ? what + ": " : "") + tally(ns)).join(" | ");
}

function tally(ns) {
  const c = {ok: 0, none: 0, dead: 0}, v = {sig: 0, nsig: 0, nt: 0};
  ns.forEach((n) => { c[n.s]++; const w = verdict(n); if (w) v[w]++; });
  return `${c.ok} named · ${c.none} none · ${c.dead} dead` +
    (v.sig + v.nsig ? ` · ${v.sig} of ${v.sig + v.nsig} tested significant` : "") + (v.nt ? ` · ${v.nt} not testable` : "");
}

function fill() {
  // Render one chunk, and more while the list's end is still within reach of the viewport.
  do {
    const frag = document.createDocumentFragment();
    const end = Math.min(rendered + CHUNK, shown.length);
    for (; rendered < end; rendered++) frag.appendChild(card(shown[rendered]));
    list.insertBefore(frag, more);
  } while (rendered < shown.length && more.getBoundingClientRect().top < innerHeight + 800);
  more.textContent = rendered < shown.length ? `showing ${rendered} of ${shown.length}; scroll for more` :
    (shown.length ? "" : "no neuron matches");
  observer.disconnect();
  if (rendered < shown.length) observer.observe(more);
}

// "ok" says only that the neuron has a name (a random network's neurons get names too): shown as "named".
const STATUS = {ok: "named", none: "none", dead: "dead"};
function statusBadge(s) { return el("span", {class: "badge s-" + s}, STATUS[s] || s); }

const UNTRAINED = "the target's weights are random (--checkpoint random, or sanity_check.py's re-initialised copy): " +
  "its neurons' names say what untrained features respond to, not what a trained model learned";
function untrainedBadge() { return el("span", {class: "badge untrained", title: UNTRAINED}, "untrained model"); }

// Describer, layer and model of a neuron's run, each a label of its own.
function runTags(run) {
  const t = el("div", {class: "tags"});
  [["describer", run.describer], ["layer", run.layer], ["model", run.model], ["variant", run.variant]].forEach(([k, v]) => { if (v) t.appendChild(el("span", {class: "tag " + k, title: k}, v)); });
  if (run.untrained) t.appendChild(untrainedBadge());
  return t;
}

// The significance test's verdict on a name, with its q: significant at the run's false discovery rate or
// not; "not testable" where no neuron of the layer could reach it.
function evidenceBadge(n) {
  const w = verdict(n), e = n.ev;
  if (w === "nt") return el("span", {class: "badge nt", title: untestable(RUNS[n.r].evidence)}, "not testable");
  return el("span", {class: "badge " + w, title: `m ${fmt(e.m)} · p ${fmt(e.p)} · q ${fmt(e.q)}`},
            (w === "sig" ? "significant" : "not significant") + ` q ${fmt(e.q)}`);
}

// Why a layer's names are not testable, from concepts.json's "evidence".
function untestable(E) {
  return `with a pool of ${E.pool} probing images and ${E.draws} random draws, the smallest p any neuron could reach ` +
    `is ${fmt(E.p_min)}: no name of this layer can reach q ≤ ${E.fdr}, so none is called significant or not` +
    (E.pool_needed ? `; a probing set of ${E.pool_needed} images could` : `; no probing set could with ${E.draws} draws`);
}

// A neuron's score as its card shows it: the name and unit of its describer's score (MAMMI's S(k, c), a
// sum over the examples, as the mean per example) and where it stands in its run.
function scoreText(n, run) {
  if (n.v === null) return `${run.per_example ? "mean S per example" : run.score[0]} –`;
  return (run.per_example ? `mean S ${fmt(n.v)} per example` : `${run.score[0]} ${fmt(n.v)}`) +
    ` · top ${Math.max(1, Math.round(n.pct))}% of its run`;
}


function card(n) {
  const run = RUNS[n.r];
  const c = el("div", {class: "card", tabindex: "0", "data-key": key(n), "data-neuron": String(n.n)});
  const h = el("div", {class: "head"});
  h.append(el("span", {class: "nid"}, "neuron " + n.n), statusBadge(n.s));
  if (verdict(n)) h.append(evidenceBadge(n));
  if (n.cls !== undefined) h.append(el("span", {class: "layer"}, n.cls), el("span", {class: "badge " + (n.hit ? "hit" : "miss")}, n.hit ? "hit" : "miss"));
  c.appendChild(h);
  c.appendChild(runTags(run));
  c.appendChild(el("div", {class: "meta score"}, (run.selects ? `${n.e} example${n.e === 1 ? "" : "s"} · ` : "") + scoreText(n, run)));
  const chips = el("div", {class: "chips"});
  if (!n.c.length) chips.appendChild(el("span", {class: "meta"}, n.s === "dead" ? "dead: constant over the probing set" : "no concept above the cut"));
  n.c.slice(0, 8).forEach(([w, s]) => { const ch = el("span", {class: "chip"}, w); ch.appendChild(el("small", {}, fmt(s))); chips.appendChild(ch); });
  if (n.c.length > 8) chips.appendChild(el("span", {class: "meta"}, `+${n.c.length - 8} more`));
  c.appendChild(chips);
  const mini = el("div", {class: "mini"});
  n.x.slice(0, CFG.cardThumbs).forEach(([im]) => { const img = D.images[im]; if (img[1]) mini.appendChild(el("img", {src: img[1], loading: "lazy", alt: img[0], title: img[0]})); });
  if (mini.childNodes.length) c.appendChild(mini);
  return c;
}

list.addEventListener("click", (ev) => { const c = ev.target.closest(".card"); if (c) location.hash = "n" + c.dataset.key; });
list.addEventListener("keydown", (ev) => { const c = ev.target.closest(".card"); if (c && ev.key === "Enter") location.hash = "n" + c.dataset.key; });
$("summarybtn").addEventListener("click", () => { location.hash = "summary"; });
$("auditbtn").addEventListener("click", () => { location.hash = "audit"; });
["q", "status", "layer", "run", "hitsel", "evsel", "sort"].forEach((id) => $(id).addEventListener(id === "q" ? "input" : "change", apply));

// ---- a neuron's view --------------------------------------------------------------------------
function neighbours(n) {
  let seq = shown.includes(n) ? shown : N.filter((m) => m.r === n.r);
  const i = seq.indexOf(n);
  return [seq[i - 1], seq[i + 1]];
}

function histogram(n, cut) {
  const W = 480, H = 210, L = 44, R = 12, Tp = 24, B = 34, pw = W - L - R, ph = H - Tp - B;
  const s = sv("svg", {width: W, height: H, viewBox: `0 0 ${W} ${H}`, class: "hist", role: "img"});
  const lo = n.lo, hi = n.hi, span = hi > lo ? hi - lo : 1, nb = n.h.length;
  const maxc = Math.max(...n.h, 1), ly = (c) => Math.log1p(c) / Math.log1p(maxc);
  const X = (v) => L + (v - lo) / span * pw;
  n.h.forEach((c, j) => {
    if (!c) return;
    const x0 = L + j / nb * pw, x1 = L + (j + 1) / nb * pw, y = ly(c) * ph;
    const above = n.t !== null && lo + (j + 1) / nb * span > n.t;
    const r = sv("rect", {x: x0 + 0.5, y: Tp + ph - y, width: Math.max(x1 - x0 - 1, 1), height: y, fill: above ? "#2f6db5" : "#aab4bf"});
    r.appendChild(sv("title", {}, `${c} image${c === 1 ? "" : "s"} in [${fmt(lo + j / nb * span)}, ${fmt(lo + (j + 1) / nb * span)}]`));
    s.appendChild(r);
  });
  s.appendChild(sv("line", {x1: L, x2: L + pw, y1: Tp + ph, y2: Tp + ph, stroke: "#555"}));
  s.appendChild(sv("text", {x: L, y: H - 18, "text-anchor": "start"}, fmt(lo)));
  s.appendChild(sv("text", {x: L + pw, y: H - 18, "text-anchor": "end"}, fmt(hi)));
  s.appendChild(sv("text", {x: L + pw / 2, y: H - 4, "text-anchor": "middle"}, "activation"));
  s.appendChild(sv("text", {x: 12, y: Tp + ph / 2, transform: `rotate(-90 12 ${Tp + ph / 2})`, "text-anchor": "middle"}, "images (log scale)"));
  s.appendChild(sv("text", {x: L - 4, y: Tp + 4, "text-anchor": "end"}, String(maxc)));
  if (n.t !== null && hi > lo) {
    const x = X(Math.min(Math.max(n.t, lo), hi));
    s.appendChild(sv("line", {x1: x, x2: x, y1: Tp - 6, y2: Tp + ph, stroke: "#c0392b", "stroke-width": 2, "stroke-dasharray": "5 3"}));
    s.appendChild(sv("text", {x: x, y: Tp - 9, "text-anchor": x > L + pw * 0.7 ? "end" : "start", fill: "#c0392b"}, cut + " " + fmt(n.t)));
  }
  return s;
}

function bars(n) {
  const rows = n.b, W = 520, L = 170, R = 60, Tp = 26, rh = 17, H = Tp + rows.length * rh + 22, pw = W - L - R;
  const s = sv("svg", {width: W, height: H, viewBox: `0 0 ${W} ${H}`, class: "bars", role: "img"});
  const vals = rows.map((r) => r[1]).concat([0], n.cut === undefined ? [] : [n.cut]);
  const lo = Math.min(...vals), hi = Math.max(...vals), span = hi > lo ? hi - lo : 1, X = (v) => L + (v - lo) / span * pw;
  const chosen = new Set(n.c.map((c) => c[0]));
  rows.forEach(([ci, v], j) => {
    const y = Tp + j * rh, name = D.vocab[ci], x0 = X(Math.min(0, v)), x1 = X(Math.max(0, v));
    const label = sv("text", {x: L - 6, y: y + 12, "text-anchor": "end"}, name.length > 26 ? name.slice(0, 25) + "…" : name);
    label.appendChild(sv("title", {}, name));
    s.appendChild(label);
    s.appendChild(sv("rect", {x: x0, y: y + 2, width: Math.max(x1 - x0, 1), height: rh - 5, fill: chosen.has(name) ? "#2f6db5" : "#b9c2cc"}));
    s.appendChild(sv("text", {x: Math.max(x1, X(0)) + 4, y: y + 12}, fmt(v)));
  });
  s.appendChild(sv("line", {x1: X(0), x2: X(0), y1: Tp - 2, y2: Tp + rows.length * rh, stroke: "#555"}));
  if (n.cut !== undefined) {
    const x = X(n.cut), a = RUNS[n.r].alpha;
    s.appendChild(sv("line", {x1: x, x2: x, y1: Tp - 8, y2: Tp + rows.length * rh + 4, stroke: "#c0392b", "stroke-width": 2, "stroke-dasharray": "5 3"}));
    s.appendChild(sv("text", {x: x, y: Tp - 11, "text-anchor": x > L + pw * 0.6 ? "end" : "start", fill: "#c0392b"}, `alpha cut ${fmt(n.cut)} (${a}% of max)`));
  }
  const score = RUNS[n.r].score;
  s.appendChild(sv("text", {x: L + pw / 2, y: H - 4, "text-anchor": "middle"}, `${score[0]}: ${score[1]}`));
  return s;
}

function openView(n) {
  const run = RUNS[n.r], p = $("panel");
  p.textContent = "";
  const [prev, next] = neighbours(n);
  const nav = el("div", {class: "nav"});
  const link = (m, text, id) => m ? el("a", {href: "#n" + key(m), id: id, title: "neuron " + m.n}, text) : el("a", {class: "off", id: id}, text);
  nav.append(link(prev, "← previous", "prev"), link(next, "next →", "next"), el("button", {id: "close", type: "button"}, "close ✕"));
  nav.lastChild.addEventListener("click", closeView);
  p.appendChild(nav);
  const h = el("div", {class: "head"});
  h.append(el("h2", {id: "vtitle"}, "neuron " + n.n), statusBadge(n.s));
  if (verdict(n)) h.append(evidenceBadge(n));
  if (n.cls !== undefined) h.append(el("span", {class: "layer"}, "class " + n.cls), el("span", {class: "badge " + (n.hit ? "hit" : "miss")}, n.hit ? "hit" : "miss"));
  p.appendChild(h);
  p.appendChild(runTags(run));
  if (run.untrained) p.appendChild(el("div", {class: "warning", id: "untrained"}, "Untrained model: " + UNTRAINED + "."));
  p.appendChild(el("div", {class: "meta", id: "runpath"}, run.folder));
  const of = run.n_images ? ` of ${run.n_images} probing images` : "";
  const used = {mammi: `${n.e} example${n.e === 1 ? "" : "s"} (${run.selection})${of}`,
                topk: `${n.e} example${n.e === 1 ? "" : "s"} (${run.selection})${of}`,
                none: `scored over all ${run.n_images ? run.n_images + " " : ""}probing images; it selects no examples`,
                unrecorded: `${n.e} image${n.e === 1 ? "" : "s"} scored; which ones, ${run.describer} did not record`}[run.examples];
  p.appendChild(el("div", {class: "meta", id: "used"}, `${used} · named by ${run.describer}` + (run.vlm ? ` with VLM ${run.vlm}` : "") +
    (run.concept_set ? ` · concept set ${run.concept_set}` : "") + ` · score: ${run.score[0]}, ${run.score[1]}`));
  const chips = el("div", {class: "chips"});
  if (!n.c.length) chips.appendChild(el("span", {class: "meta"}, n.s === "dead" ? "dead: its activation is constant over the probing set, so it has no examples" : "none: no concept scored above zero"));
  n.c.forEach(([w, v]) => { const ch = el("span", {class: "chip"}, w); ch.appendChild(el("small", {}, fmt(v))); chips.appendChild(ch); });
  p.appendChild(chips);
  p.appendChild(evidence(n, run));

  const figs = el("div", {class: "figs"});
  if (n.h) {
    const f = el("div", {class: "fig"});
    const top = run.top_k, caption = {
      mammi: "Blue bins reach above the selection threshold (red): the examples.",
      topk: `Blue bins reach above the lowest activation of its top ${top} images (red): the images ${run.describer} scored.`,
      none: `${run.describer} scores this activation over every probing image: no threshold, no examples.`,
      unrecorded: `${run.describer} did not record which images it scored.`}[run.examples];
    f.append(el("h3", {}, "activation over the probing set"), histogram(n, run.examples === "topk" ? `top-${top} cut` : "threshold"),
      el("p", {}, caption + " Counts on a log scale" + (n.x.length ? ", so the few examples stay visible." : ".")));
    figs.appendChild(f);
  }
  if (n.b.length) {
    const f = el("div", {class: "fig"});
    f.append(el("h3", {}, `top ${n.b.length} concept scores`), bars(n),
      el("p", {}, n.cut !== undefined ? "Blue: the neuron's concepts, those above the alpha cut (red)." : "Scores as the describer reported them."));
    figs.appendChild(f);
  }
  p.appendChild(figs);

  p.appendChild(el("h3", {}, n.x.length < n.e ? `examples, in order (first ${n.x.length} of ${n.e})` : "examples, in order"));
  const th = el("div", {class: "thumbs"});
  n.x.forEach(([im, a, pr], r) => {
    const img = D.images[im], fig = el("figure");
    if (img[1]) fig.appendChild(el("img", {src: img[1], alt: img[0], title: img[0], width: "160", height: "160"}));
    else fig.appendChild(el("div", {class: "meta"}, "(image not found)"));
    const cap = el("figcaption");
    cap.append(el("b", {}, `#${r + 1} ${fmt(a)}`), document.createTextNode(" " + img[0]), el("br"),
               document.createTextNode((img[2] || "").split("|").join(", ")));
    if (pr !== undefined) cap.append(el("br"), document.createTextNode(`p(${n.cls}) = ${fmt(pr)}`));
    fig.appendChild(cap);
    th.appendChild(fig);
  });
  if (!n.x.length) th.appendChild(el("div", {class: "meta"}, n.s === "dead" ? "no examples: the neuron is dead" :
    {none: `no examples: ${run.describer} selects none`, unrecorded: `no examples: ${run.describer} did not record them`}[run.examples] || "no examples"));
  p.appendChild(th);
  drawMaps(n, th);

  if (n.p.length) {
    p.appendChild(el("h3", {}, `visualization panels where it is the top neuron (${n.p.length})`));
    const pl = el("div", {class: "panels"});
    n.p.forEach((j) => {
      const P = D.panels[j], fig = el("figure"), a = el("a", {href: P.f, target: "_blank"});
      a.appendChild(el("img", {src: P.f, loading: "lazy", alt: P.i + " " + P.c}));
      fig.append(a, el("figcaption", {}, `${P.i}: ${P.c}` + (P.pr !== null ? ` (p = ${fmt(P.pr)})` : "")));
      pl.appendChild(fig);
    });
    p.appendChild(pl);
  }
  if (run.ablation) p.appendChild(ablationTable(n, run));
  else if (run.ablation_note) p.appendChild(el("p", {class: "meta", id: "ablation"}, "No ablation at this layer: " + run.ablation_note + "."));
  $("view").classList.add("open");
  $("view").scrollTop = 0;
  document.body.style.overflow = "hidden";
}

function evidence(n, run) {
  const d = el("div", {class: "evidence", id: "evidence"}), e = n.ev, E = run.evidence;
  const text = (t) => document.createTextNode(t);
  if (!e) {
    if (verdict(n) === "nt") d.append(el("b", {}, "Not testable."), text(" The name is not tested: " + untestable(E) + "."));
    else d.textContent = n.s === "dead" ? "No significance test: a dead neuron has no examples." :
      n.s === "none" ? "No significance test: the neuron has no name to test." :
      `No significance test: ${run.describer} does not test its names.`;
    return d;
  }
  const fdr = E && E.fdr !== null && E.fdr !== undefined ? E.fdr : run.fdr, k = n.e, ex = `${k} example${k === 1 ? "" : "s"}`;
  d.append(el("b", {}, e.sig ? `Significant at q ≤ ${fdr}.` : `Not significant at q ≤ ${fdr}.`));
  if (e.tested !== null && e.tested !== undefined) d.append(text(` Tested: the name “${e.tested}”.`));
  if (e.m !== null && e.m !== undefined) d.append(text(` Its mean score over the ${ex}, m = ${fmt(e.m)}, against ${fmt(e.p95)}: ` +
    `the 95th percentile of the best mean score (the naming replayed) of random ${k}-image subsets, the m a neuron ` +
    `with ${ex} must pass for p < 0.05.`));
  d.append(text(` p = ${fmt(e.p)}, q = ${fmt(e.q)} (Benjamini–Hochberg over the layer's named neurons).`),
    el("br"), text(`H0: its ${ex} ${k === 1 ? "is a random image" : `are a random ${k}-image subset`} of the probing set` +
      (E && E.pool ? ` (the null draws from a pool of ${E.pool} probing images, ${E.draws} draws).` : ".")));
  if (k <= 2) d.append(text(" With one or two examples the test has little power."));
  return d;
}

function ablationTable(n, run) {
  const box = el("div", {class: "ablation", id: "ablation"});
  box.appendChild(el("h3", {}, `ablation of the named neurons, ${run.layer} layer`));
  box.appendChild(el("p", {class: "meta"}, "Each finding's named neurons zeroed: the drop of its logit on the held-out images " +
    "positive for it (in SDs of that logit), against random sets of as many live neurons; z = (effect − random mean) / random SD. " +
    "Rows in bold are the findings this neuron is zeroed for."));
  const t = el("table"), head = el("tr");
  ["finding", "neurons", "effect", "random (mean ± SD)", "z", "other classes"].forEach((h) => head.appendChild(el("th", {}, h)));
  t.appendChild(head);
  run.ablation.forEach(([f, k, eff, rm, rs, z, oth, named]) => {
    const tr = el("tr", named.includes(n.n) ? {class: "mine"} : {});
    [f, k, fmt(eff), rm === null ? "–" : `${fmt(rm)} ± ${fmt(rs)}`, fmt(z), fmt(oth)].forEach((v) => tr.appendChild(el("td", {}, v)));
    t.appendChild(tr);
  });
  box.appendChild(t);
  return box;
}

// ---- the layer summary: per run (a layer, as one describer named it), how many neurons carry each concept ----
const SUMMARY_TOP = 25;  // concepts drawn per run; the rest are counted in a line below the chart

function conceptCounts(r) {
  const counts = new Map();
  N.forEach((n) => { if (n.r === r) new Set(n.c.map((c) => c[0])).forEach((w) => counts.set(w, (counts.get(w) || 0) + 1)); });
  return [...counts].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
}

function countBars(rows, total) {
  const W = 560, L = 190, R = 70, Tp = 8, rh = 17, H = Tp + rows.length * rh + 22, pw = W - L - R;
  const s = sv("svg", {width: W, height: H, viewBox: `0 0 ${W} ${H}`, class: "counts", role: "img"});
  const hi = Math.max(1, ...rows.map((r) => r[1]));
  rows.forEach(([name, k], j) => {
    const y = Tp + j * rh, label = sv("text", {x: L - 6, y: y + 12, "text-anchor": "end", class: "concept"}, name.length > 28 ? name.slice(0, 27) + "…" : name);
    label.appendChild(sv("title", {}, name));
    s.appendChild(label);
    const bar = sv("rect", {x: L, y: y + 2, width: Math.max(k / hi * pw, 1), height: rh - 5, fill: "#2f6db5"});
    bar.appendChild(sv("title", {}, `${k} of ${total} neurons`));
    s.appendChild(bar);
    s.appendChild(sv("text", {x: L + k / hi * pw + 4, y: y + 12, class: "count"}, String(k)));
  });
  s.appendChild(sv("line", {x1: L, x2: L, y1: Tp - 2, y2: Tp + rows.length * rh, stroke: "#555"}));
  s.appendChild(sv("text", {x: L + pw / 2, y: H - 4, "text-anchor": "middle"}, "neurons carrying the concept"));
  return s;
}

function openSummary() {
  const p = $("panel");
  p.textContent = "";
  viewNav(p, "layer summary");
  p.appendChild(el("p", {class: "meta"}, "Per layer and describer: how many of its neurons carry each concept among their names " +
    "(a neuron with several concepts counts for each)."));
  RUNS.forEach((run, r) => {
    const rows = conceptCounts(r), total = N.filter((n) => n.r === r).length;
    const named = N.filter((n) => n.r === r && n.c.length).length;
    const box = el("div", {class: "summary", "data-run": String(r)});
    box.append(el("h3", {}, run.short), runTags(run),
      el("div", {class: "meta"}, `${named} of ${total} neurons named, with ${rows.length} distinct concept${rows.length === 1 ? "" : "s"}`));
    if (rows.length) box.appendChild(countBars(rows.slice(0, SUMMARY_TOP), total));
    if (rows.length > SUMMARY_TOP) box.appendChild(el("div", {class: "meta"}, `${rows.length - SUMMARY_TOP} more concept${rows.length - SUMMARY_TOP === 1 ? "" : "s"} not drawn, ` +
      `each carried by ${rows[SUMMARY_TOP][1]} neuron${rows[SUMMARY_TOP][1] === 1 ? "" : "s"} or fewer`));
    p.appendChild(box);
  });
  showView();
}

// ---- the shortcut audit (audit.py's audit.json): per run, a view per class of the concepts its logit rests on ----
const AUDITED = RUNS.map((run, r) => r).filter((r) => RUNS[r].audit || RUNS[r].audit_note);
if (!AUDITED.length) $("auditbtn").style.display = "none";
const num = (v, d) => (v === null || v === undefined) ? "–" : v.toFixed(d);
const interval = (ci) => ci ? `${num(ci[0], 3)} to ${num(ci[1], 3)}` : "–";

function viewNav(p, title) {
  const nav = el("div", {class: "nav"});
  nav.appendChild(el("button", {id: "close", type: "button"}, "close ✕"));
  nav.lastChild.addEventListener("click", closeView);
  p.append(nav, el("h2", {id: "vtitle"}, title));
}

function showView() {
  $("view").classList.add("open");
  $("view").scrollTop = 0;
  document.body.style.overflow = "hidden";
}

// Why a concept is flagged, with the numbers and thresholds that made it so, to 4 significant digits: a share
// of 0.103 rounded to 0.10 would read as not above 0.1.
function flagText(A, share, z) {
  return `possible shortcut: not the class's own word, share ${fmt(share)} > ${A.share_min}, z ${fmt(z)} ≥ ${A.z_min}`;
}

// The list of audited runs, each with its classes (links to their views) and the concepts flagged for each.
function openAudit() {
  const p = $("panel");
  p.textContent = "";
  viewNav(p, "shortcut audit");
  p.appendChild(el("p", {class: "meta"}, "Per run with an audit (audit.py): each class, and the concepts flagged as " +
    "possible shortcuts for it. Open a class for all its concepts and the stratified AUROCs."));
  AUDITED.forEach((r) => {
    const run = RUNS[r], A = run.audit, box = el("div", {class: "audit", "data-run": String(r)});
    box.append(el("h3", {}, run.short), runTags(run));
    if (!A) {
      box.appendChild(el("p", {class: "meta note"}, "Its audit is not shown: " + run.audit_note));
      p.appendChild(box);
      return;
    }
    const ul = el("ul", {class: "classes"});
    A.classes.forEach((C, i) => {
      const li = el("li"), flagged = C.c.filter((c) => c[5]).map((c) => c[0]);
      li.append(el("a", {href: `#a${r}-${i}`}, C.class),
        document.createTextNode(` (${C.n} ${A.split} positives): flagged ` + (flagged.length ? flagged.join(", ") : "none")));
      ul.appendChild(li);
    });
    box.appendChild(ul);
    p.appendChild(box);
  });
  showView();
}

function openClass(r, i) {
  const run = RUNS[r], A = run.audit, C = A.classes[i], p = $("panel");
  p.textContent = "";
  viewNav(p, C.class);
  p.append(runTags(run), el("div", {class: "meta", id: "runpath"}, run.folder));
  p.appendChild(el("p", {class: "meta", id: "auditwhat"}, `Shortcut audit of ${A.target} at the ${A.layer} layer, on ` +
    `its ${C.n} ${A.split} positives for ${C.class} (${A.method === "linear" ? "through the linear head" : "by zeroing the neurons in the model"}). ` +
    `share: the share of the evidence the ${A.layer} layer gives for ${C.class} on its ${C.n} ${A.split} positives ` +
    `(${fmt(C.ev)}: the sum of its channels' positive mean contributions to the logit) that the concept's neurons carry: ` +
    `the mean fall of the logit when they are zeroed together, over that evidence. z: that fall, in SDs of the logit, ` +
    `against ${A.draws} random sets of as many live neurons. Flagged (a possible shortcut): not the class's own word, ` +
    `share > ${A.share_min} and z ≥ ${A.z_min}. In the audit's order, by share.`));
  const t = el("table", {class: "auditrows"}), head = el("tr");
  ["concept", "neurons", "share", "z", "own word", "flag"].forEach((h) => head.appendChild(el("th", {}, h)));
  t.appendChild(head);
  C.c.forEach(([w, k, share, z, own, flagged]) => {
    const neurons = A.neurons[w] || [];
    const tr = el("tr", flagged ? {class: "flagged"} : {}), links = el("td", {class: "neurons"});
    links.appendChild(document.createTextNode(`${k}: `));
    neurons.forEach((m, j) => {
      if (j) links.appendChild(document.createTextNode(" "));
      links.appendChild(el("a", {href: `#n${r}-${m}`, title: `neuron ${m}`}, "#" + m));
    });
    tr.append(el("td", {}, w), links, el("td", {}, num(share, 3)), el("td", {}, num(z, 2)),
      el("td", {}, own ? "own" : ""), el("td", {class: "flag"}, flagged ? flagText(A, share, z) : ""));
    t.appendChild(tr);
  });
  p.appendChild(t);
  p.appendChild(el("h3", {}, "hidden stratification: AUROC with and without the concept"));
  if (!C.st.length) {
    p.appendChild(el("p", {class: "meta", id: "nostrata"}, `No concept flagged for ${C.class} or asked for: no stratified AUROC.`));
  } else {
    p.appendChild(el("p", {class: "meta", id: "stratawhat"}, `The AUROC of ${C.class}'s logit on the ${A.split} positives ` +
      "the VLM sees the concept in (among an image's best-scored concepts), each against all the negatives; the same on " +
      "the positives it does not see it in; gap = with − without. 95% intervals: percentile bootstrap, " +
      `${A.boot} resamples of positives with, positives without and negatives apart.`));
    const s = el("table", {class: "strata"}), sh = el("tr");
    ["concept", "positives with / without", "negatives", "AUROC with (95% CI)", "AUROC without (95% CI)",
     "gap with − without (95% CI)"].forEach((h) => sh.appendChild(el("th", {}, h)));
    s.appendChild(sh);
    C.st.forEach((S) => {
      const tr = el("tr");
      [S.concept, `${S.n_with} / ${S.n_without}`, String(S.n_negatives), `${num(S.auroc_with, 3)} (${interval(S.ci_with)})`,
       `${num(S.auroc_without, 3)} (${interval(S.ci_without)})`, `${num(S.gap, 3)} (${interval(S.ci)})`]
        .forEach((v) => tr.appendChild(el("td", {}, v)));
      s.appendChild(tr);
    });
    p.appendChild(s);
  }
  showView();
}

function closeView() {
  if (location.hash) history.pushState("", document.title, location.pathname + location.search);
  route();
}

// "#a{run}-{class}": a class view of a run's audit, when both exist.
function classView(hash) {
  const m = /^#a(\d+)-(\d+)$/.exec(hash), A = m && RUNS[+m[1]] && RUNS[+m[1]].audit;
  return A && A.classes[+m[2]] ? [+m[1], +m[2]] : null;
}

function route() {
  const m = /^#n(\d+-\d+)$/.exec(location.hash), n = m && byKey.get(m[1]);
  if (n) openView(n);
  else if (location.hash === "#summary") openSummary();
  else if (location.hash === "#audit" && AUDITED.length) openAudit();
  else if (classView(location.hash)) openClass(...classView(location.hash));
  else { $("view").classList.remove("open"); document.body.style.overflow = ""; }
}

$("view").addEventListener("click", (ev) => { if (ev.target.id === "view") closeView(); });
document.addEventListener("keydown", (ev) => {
  if (!$("view").classList.contains("open")) return;
  if (ev.key === "Escape") closeView();
  const a = ev.key === "ArrowLeft" ? $("prev") : ev.key === "ArrowRight" ? $("next") : null;
  if (a && a.getAttribute("href")) location.hash = a.getAttribute("href");
});
window.addEventListener("hashchange", route);

// ---- activation maps over a neuron's examples -------------------------------------------------
// Each example's map (D.maps: h x w cells in 256 levels over the neuron's range on its shown examples),
// upsampled bilinearly to the thumbnail (pixel centres aligned, as torch's interpolate) and drawn over
// it on a canvas: transparent and blue at the low end, opaque red at the top. The toggle is remembered.
let mapsShown = true;
const MAP_SIDE = 160, MAP_ALPHA = 0.6;

function jet(t) {
  const c = (v) => Math.round(255 * Math.min(1, Math.max(0, v)));
  return [c(1.5 - Math.abs(4 * t - 3)), c(1.5 - Math.abs(4 * t - 2)), c(1.5 - Math.abs(4 * t - 1))];
}

function paintMap(canvas, cells, h, w) {
  const ctx = canvas.getContext("2d"), im = ctx.createImageData(MAP_SIDE, MAP_SIDE);
  const at = (y, x) => cells[Math.min(h - 1, Math.max(0, y)) * w + Math.min(w - 1, Math.max(0, x))] / 255;
  for (let py = 0; py < MAP_SIDE; py++) {
    const sy = Math.max(0, (py + 0.5) * h / MAP_SIDE - 0.5), y0 = Math.floor(sy), fy = sy - y0;
    for (let px = 0; px < MAP_SIDE; px++) {
      const sx = Math.max(0, (px + 0.5) * w / MAP_SIDE - 0.5), x0 = Math.floor(sx), fx = sx - x0;
      const t = (at(y0, x0) * (1 - fx) + at(y0, x0 + 1) * fx) * (1 - fy) + (at(y0 + 1, x0) * (1 - fx) + at(y0 + 1, x0 + 1) * fx) * fy;
      const [r, g, b] = jet(t), i = 4 * (py * MAP_SIDE + px);
      im.data[i] = r; im.data[i + 1] = g; im.data[i + 2] = b; im.data[i + 3] = Math.round(255 * MAP_ALPHA * t);
    }
  }
  ctx.putImageData(im, 0, 0);
}

function drawMaps(n, th) {
  const run = RUNS[n.r], g = run.maps === undefined ? null : D.maps[run.maps], m = g && g.m[n.n];
  if (!n.x.length) return;
  if (!m) {
    th.before(el("p", {class: "meta", id: "mapnote"}, "No activation maps over the examples: " +
      (run.maps_note || "none stored for this neuron") + "."));
    return;
  }
  const [lo, hi, b64] = m, bytes = Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0)), size = g.h * g.w;
  const box = el("label", {class: "maptoggle"}), cb = el("input", {type: "checkbox", id: "maps"});
  cb.checked = mapsShown;
  th.classList.toggle("nomaps", !mapsShown);
  cb.addEventListener("change", () => { mapsShown = cb.checked; th.classList.toggle("nomaps", !mapsShown); });
  box.append(cb, document.createTextNode(` activation maps: each example's ${g.kind} (${g.h}×${g.w}, upsampled to the crop),` +
    ` blue and clear at ${fmt(lo)} to red at ${fmt(hi)}, the neuron's range over ` + (n.mp !== undefined ?
    `step 2's examples; drawn on the first ${n.mp} of these ${n.x.length} images, which are step 2's first examples too` :
    "these examples")));
  th.before(box);
  // A rival's examples are its own: the first n.mp of them are step 2's first examples, whose maps these are.
  [...th.children].forEach((fig, r) => {
    const img = fig.querySelector("img"), j = n.mp === undefined || r < n.mp ? r : null;
    if (!img || j === null || (j + 1) * size > bytes.length) return;
    const wrap = el("div", {class: "mapbox"}), canvas = el("canvas", {class: "map", width: MAP_SIDE, height: MAP_SIDE});
    paintMap(canvas, bytes.subarray(j * size, (j + 1) * size), g.h, g.w);
    img.replaceWith(wrap);
    wrap.append(img, canvas);
  });
}

apply();
route();
window.galleryTiming = {script_ms: performance.now() - T0, first_cards_ms: performance.now()};
