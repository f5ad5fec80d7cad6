// The inside view of the current text, all from one POST /v1/explain: attention as a
// layers × heads grid of heat maps, the per-position top-k, and the logit lens.
import { api, clearError, probColours, showError, tokenElement, viridisRgb } from './common.js';

const $ = (id) => document.getElementById(id);
let view = null; // the last /v1/explain answer

/** Paints one head's map into `canvas` (one pixel per query × key). `focus`: a query row
 * to keep bright while the others dim. Weights are drawn on a √ scale so that small
 * but real attention stays visible; the masked upper triangle is light grey. */
function paintMap(canvas, rows, focus) {
  const t = rows.length;
  canvas.width = t;
  canvas.height = t;
  const ctx = canvas.getContext('2d');
  const img = ctx.createImageData(t, t);
  for (let q = 0; q < t; q++) {
    for (let k = 0; k < t; k++) {
      const o = 4 * (q * t + k);
      const dim = focus !== null && focus !== q;
      if (k > q) { img.data.set([235, 235, 235, 255], o); continue; }
      const [r, g, b] = viridisRgb(Math.sqrt(rows[q][k]));
      img.data.set(dim ? [r * 0.35 + 160, g * 0.35 + 160, b * 0.35 + 160, 255] : [r, g, b, 255], o);
    }
  }
  ctx.putImageData(img, 0, 0);
}

function renderGrid() {
  const grid = $('attention-grid');
  grid.replaceChildren();
  grid.style.gridTemplateColumns = `repeat(${view.n_head}, max-content)`;
  view.attention.forEach((layer, l) => layer.forEach((rows, h) => {
    const fig = document.createElement('figure');
    const canvas = document.createElement('canvas');
    canvas.dataset.testid = 'heatmap';
    canvas.dataset.layer = l;
    canvas.dataset.head = h;
    canvas.tabIndex = 0;
    canvas.setAttribute('role', 'button');
    canvas.setAttribute('aria-label', `attention of layer ${l}, head ${h}; press Enter to enlarge`);
    paintMap(canvas, rows, null);
    canvas.addEventListener('click', () => enlarge(l, h));
    canvas.addEventListener('keydown', (e) => { if (e.key === 'Enter') enlarge(l, h); });
    const cap = document.createElement('figcaption');
    cap.textContent = `layer ${l} · head ${h}`;
    fig.append(canvas, cap);
    grid.append(fig);
  }));
}

/** Every head shows query `q`'s row; the others dim (null: all rows again). */
function focusQuery(q) {
  for (const c of $('attention-grid').querySelectorAll('canvas')) {
    paintMap(c, view.attention[c.dataset.layer][c.dataset.head], q);
  }
  for (const el of $('inside-tokens').children) el.classList.toggle('hl', q !== null && Number(el.dataset.pos) === q);
}

/** One head's map drawn large, with the tokens as row and column labels. */
function enlarge(l, h) {
  const rows = view.attention[l][h];
  const t = rows.length;
  const canvas = $('attention-big-canvas');
  const size = 640;
  const margin = 60;
  canvas.width = size;
  canvas.height = size;
  canvas.dataset.layer = l;
  canvas.dataset.head = h;
  const ctx = canvas.getContext('2d');
  ctx.fillStyle = '#fff';
  ctx.fillRect(0, 0, size, size);
  const cell = (size - margin) / t;
  for (let q = 0; q < t; q++) {
    for (let k = 0; k <= q; k++) {
      const [r, g, b] = viridisRgb(Math.sqrt(rows[q][k]));
      ctx.fillStyle = `rgb(${r},${g},${b})`;
      ctx.fillRect(margin + k * cell, margin + q * cell, Math.ceil(cell), Math.ceil(cell));
    }
  }
  ctx.fillStyle = '#000';
  ctx.font = `${Math.max(7, Math.min(12, cell))}px monospace`;
  const step = Math.max(1, Math.ceil(9 / cell));
  for (let i = 0; i < t; i += step) {
    const label = view.tokens[i].display;
    ctx.textAlign = 'right';
    ctx.fillText(label, margin - 3, margin + (i + 0.8) * cell);
    ctx.save();
    ctx.translate(margin + (i + 0.7) * cell, margin - 3);
    ctx.rotate(-Math.PI / 2);
    ctx.textAlign = 'left';
    ctx.fillText(label, 0, 0);
    ctx.restore();
  }
  ctx.textAlign = 'left';
  ctx.fillText(`L${l} H${h}`, 4, 14);
  $('attention-big').hidden = false;
  $('attention-big-close').focus();
}

function cell(pred, actual) {
  const td = document.createElement('td');
  if (!pred) return td;
  const c = probColours(pred.prob);
  td.style.background = c.bg;
  td.style.color = c.fg;
  td.textContent = pred.text;
  td.title = `${pred.text} (id ${pred.token}) p=${pred.prob.toFixed(3)}`;
  td.dataset.prob = pred.prob.toFixed(6);
  td.dataset.tokenId = pred.token;
  if (actual !== undefined && actual === pred.token) td.classList.add('actual');
  return td;
}

function textCell(text) {
  const td = document.createElement('td');
  td.textContent = String(text);
  return td;
}

/** A table whose columns are positions: a header of the tokens, then `rows`. */
function positionTable(rows) {
  const table = document.createElement('table');
  table.className = 'grid';
  const head = document.createElement('tr');
  head.append(document.createElement('th'));
  for (const t of view.tokens) {
    const th = document.createElement('th');
    th.textContent = t.display;
    head.append(th);
  }
  table.append(head);
  for (const [name, cells] of rows) {
    const tr = document.createElement('tr');
    const th = document.createElement('th');
    th.textContent = name;
    tr.append(th, ...cells);
    table.append(tr);
  }
  return table;
}

function renderTopK() {
  const k = Math.max(...view.positions.map((p) => p.top.length));
  const rows = [];
  for (let r = 0; r < k; r++) {
    rows.push([`#${r + 1}`, view.positions.map((p) => cell(p.top[r], p.actual?.token))]);
  }
  rows.push(['p(next)', view.positions.map((p) => (p.actual ? cell(p.actual) : cell(null)))]);
  // The CLI's columns: each position's share of the loss, and the real token's rank.
  rows.push(['-ln p', view.positions.map((p) => textCell(p.actual ? (-Math.log(Math.max(p.actual.prob, 1e-300))).toFixed(2) : ''))]);
  rows.push(['rank', view.positions.map((p) => textCell(p.actual_rank ?? ''))]);
  $('topk').replaceChildren(positionTable(rows));
}

function renderLens() {
  const rows = view.lens.map((stage, i) => [
    i + 1 === view.lens.length ? `${stage.stage} (output)` : stage.stage,
    stage.positions.map((top, pos) => cell(top[0], view.positions[pos]?.actual?.token)),
  ]);
  $('lens').replaceChildren(positionTable(rows));
}

function renderTokens() {
  const box = $('inside-tokens');
  box.replaceChildren();
  view.tokens.forEach((t, pos) => {
    const p = pos > 0 ? view.positions[pos - 1]?.actual?.prob : undefined;
    const el = tokenElement({ text: t.text, id: t.id, prob: p, display: t.display });
    el.dataset.pos = pos;
    el.tabIndex = 0;
    el.addEventListener('mouseenter', () => focusQuery(pos));
    el.addEventListener('focus', () => focusQuery(pos));
    el.addEventListener('mouseleave', () => focusQuery(null));
    el.addEventListener('blur', () => focusQuery(null));
    box.append(el);
  });
}

/** Asks the server about `text` and draws the three parts. */
export async function explainText(text) {
  clearError();
  $('explain-summary').textContent = 'computing…';
  try {
    view = await api('/v1/explain', { prompt: text, top_k: 5 });
  } catch (e) {
    $('explain-summary').textContent = '';
    showError(e.message);
    return;
  }
  const loss = view.mean_loss === null ? '' : ` · mean loss ${view.mean_loss.toFixed(3)} nats (${view.mean_bits.toFixed(3)} bits/token)`;
  const notes = view.notes && view.notes.length ? ` · ${view.notes.join(' ')}` : '';
  $('explain-summary').textContent = `${view.tokens.length} tokens · ${view.n_layer} layers × ${view.n_head} heads${loss}${notes}`;
  renderTokens();
  renderGrid();
  renderTopK();
  renderLens();
  $('view-inside').dataset.ready = 'true';
}

export function initInside(currentText) {
  $('explain-run').addEventListener('click', () => explainText(currentText()));
  $('attention-big-close').addEventListener('click', () => { $('attention-big').hidden = true; });
  document.addEventListener('keydown', (e) => { if (e.key === 'Escape') $('attention-big').hidden = true; });
}
