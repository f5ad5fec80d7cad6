// The training dashboard (`sympathy serve --run RUN_DIR`): curves that grow as
// metrics.jsonl grows (server-sent events carry each new line), the run's config and
// `inspect` summary, loading the newest checkpoint, and comparing two checkpoints.
import {
  api, authHeaders, clearError, errorMessage, info, loadInfo, probColours, readSse, showError,
} from './common.js';

const $ = (id) => document.getElementById(id);
const records = [];
let redrawQueued = false;

/** A small line chart: each series is [values, colour]; x is the step. */
function lineChart(canvas, steps, series, log) {
  const w = canvas.clientWidth || 400;
  const h = canvas.clientHeight || 170;
  canvas.width = w * devicePixelRatio;
  canvas.height = h * devicePixelRatio;
  const ctx = canvas.getContext('2d');
  ctx.scale(devicePixelRatio, devicePixelRatio);
  ctx.clearRect(0, 0, w, h);
  const f = (v) => (log ? Math.log10(v) : v);
  const pts = series.flatMap(([vals]) => vals.filter((v) => v !== null && Number.isFinite(v) && (!log || v > 0)));
  if (!pts.length || !steps.length) { ctx.fillStyle = '#888'; ctx.fillText('no data yet', 10, 20); return; }
  let lo = Math.min(...pts.map(f));
  let hi = Math.max(...pts.map(f));
  if (hi === lo) { hi += 1; lo -= 1; }
  const x0 = steps[0];
  const x1 = Math.max(steps[steps.length - 1], x0 + 1);
  const L = 48; const R = 8; const T = 8; const B = 18;
  const px = (s) => L + ((s - x0) / (x1 - x0)) * (w - L - R);
  const py = (v) => T + (1 - (f(v) - lo) / (hi - lo)) * (h - T - B);
  ctx.strokeStyle = '#ccc';
  ctx.strokeRect(L, T, w - L - R, h - T - B);
  ctx.fillStyle = '#444';
  ctx.font = '10px sans-serif';
  const fmt = (v) => { const x = log ? 10 ** v : v; return Math.abs(x) >= 1000 || Math.abs(x) < 0.01 ? x.toExponential(1) : x.toFixed(3); };
  ctx.fillText(fmt(hi), 2, T + 8);
  ctx.fillText(fmt(lo), 2, h - B);
  ctx.fillText(`step ${x0}`, L, h - 4);
  ctx.textAlign = 'right';
  ctx.fillText(`step ${x1}`, w - R, h - 4);
  for (const [vals, colour] of series) {
    ctx.strokeStyle = colour;
    ctx.fillStyle = colour;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let open = false;
    vals.forEach((v, i) => {
      if (v === null || !Number.isFinite(v) || (log && v <= 0)) return;
      if (open) ctx.lineTo(px(steps[i]), py(v)); else ctx.moveTo(px(steps[i]), py(v));
      open = true;
    });
    ctx.stroke();
    // Sparse series (validation) also get dots.
    const shown = vals.filter((v) => v !== null).length;
    if (shown < vals.length / 4) vals.forEach((v, i) => { if (v !== null) ctx.fillRect(px(steps[i]) - 2, py(v) - 2, 4, 4); });
  }
}

function redraw() {
  redrawQueued = false;
  const steps = records.map((r) => r.step);
  const col = (k) => records.map((r) => (r[k] === undefined ? null : r[k]));
  // Two viridis ends for train/val: distinct in lightness, not only in hue.
  lineChart($('chart-loss'), steps, [[col('loss'), '#3b528b'], [col('val_loss'), '#b07a00']], false);
  lineChart($('chart-lr'), steps, [[col('lr'), '#21918c']], false);
  lineChart($('chart-tps'), steps, [[col('tokens_per_s'), '#440154']], false);
  lineChart($('chart-mfu'), steps, [[col('mfu'), '#5ec962']], false);
  const last = records[records.length - 1];
  $('run-points').dataset.count = records.length;
  $('run-points').textContent = last
    ? `${records.length} steps logged · step ${last.step} · loss ${last.loss?.toFixed(4) ?? '–'}`
      + (last.val_loss !== undefined ? ` · val ${last.val_loss.toFixed(4)}` : '')
    : 'no steps logged yet';
}

function queueRedraw() {
  if (!redrawQueued) { redrawQueued = true; requestAnimationFrame(redraw); }
}

/** Follows metrics.jsonl: the server sends every line once, then each new one. A
 * dropped stream (the server restarted) is opened again after a pause. */
async function follow() {
  for (;;) {
    records.length = 0;
    try {
      const res = await fetch('/v1/run/metrics', { headers: authHeaders() });
      if (!res.ok) { showError(await errorMessage(res)); return; }
      await readSse(res, (r) => {
        const at = records.findIndex((old) => old.step >= r.step);
        if (at >= 0) records.splice(at); // a resumed run redoes steps: the later line wins
        records.push(r);
        queueRedraw();
      });
    } catch (e) {
      showError(`the metrics stream stopped (${e.message}); trying again`);
    }
    await new Promise((done) => { setTimeout(done, 2000); });
  }
}

async function loadLatest() {
  clearError();
  $('load-status').textContent = 'loading…';
  delete $('load-status').dataset.loaded;
  try {
    const got = await api('/v1/run/reload', {});
    await loadInfo();
    $('load-status').textContent = `loaded ${got.checkpoint} (step ${got.step})`;
    $('load-status').dataset.loaded = got.checkpoint;
    document.dispatchEvent(new CustomEvent('model-changed'));
  } catch (e) {
    $('load-status').textContent = '';
    showError(e.message);
  }
}

/** Compare: per position, the probability each checkpoint gives the real next token. */
async function compare(text) {
  clearError();
  const box = $('compare');
  box.textContent = 'computing…';
  let got;
  try {
    got = await api('/v1/compare', { prompt: text, a: $('compare-a').value, b: $('compare-b').value });
  } catch (e) {
    box.textContent = '';
    showError(e.message);
    return;
  }
  const table = document.createElement('table');
  table.className = 'grid';
  const row = (name, cells) => {
    const tr = document.createElement('tr');
    const th = document.createElement('th');
    th.textContent = name;
    tr.append(th, ...cells);
    table.append(tr);
  };
  const td = (text, p, disagree) => {
    const c = document.createElement('td');
    c.textContent = text;
    if (p !== undefined && p !== null) {
      const col = probColours(p);
      c.style.background = col.bg;
      c.style.color = col.fg;
      c.dataset.prob = p.toFixed(6);
    }
    if (disagree) c.classList.add('disagree');
    return c;
  };
  const next = got.positions;
  row('next token', next.map((p) => td(p.next)));
  for (const [key, side] of [['a', got.a], ['b', got.b]]) {
    row(`p(next) ${key.toUpperCase()}`, next.map((p) => td(p[`p_${key}`].toFixed(3), p[`p_${key}`])));
    row(`top-1 ${key.toUpperCase()}`, next.map((p) => td(p[`top_${key}`].text, p[`top_${key}`].prob, p.disagree)));
    side.label = `${key.toUpperCase()}: ${side.checkpoint} (step ${side.step}) mean loss ${side.mean_loss.toFixed(4)}`;
  }
  const summary = document.createElement('p');
  summary.dataset.testid = 'compare-summary';
  summary.textContent = `${got.a.label} · ${got.b.label} · top-1 differs at ${got.disagreements} of ${next.length} positions (outlined)`;
  box.replaceChildren(summary, table);
}

export async function initTraining(currentText) {
  $('load-latest').addEventListener('click', loadLatest);
  $('compare-form').addEventListener('submit', (e) => { e.preventDefault(); compare(currentText()); });
  if (!info.run) { $('no-run').hidden = false; return; }
  $('run-panel').hidden = false;
  try {
    const run = await api('/v1/run');
    $('run-dir').textContent = run.run_dir;
    $('run-inspect').textContent = `${run.inspect}\nconfig (state.json of ${run.checkpoint}):\n${JSON.stringify(run.config, null, 2)}`;
  } catch (e) {
    showError(e.message);
  }
  follow();
  window.addEventListener('resize', queueRedraw);
}

/** The charts are sized from the layout, so draw again when the view becomes visible. */
export function trainingShown() { queueRedraw(); }
