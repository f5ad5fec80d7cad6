// The playground: a completion streamed from /v1/completions token by token, each token
// coloured by the probability it was sampled with; hover for the alternatives, click one
// to branch from there (the old branch stays one click away).
import {
  authHeaders, clearError, errorMessage, info, readSse, readUrl, showError, tokenElement, writeUrl,
} from './common.js';

const TOP_LOGPROBS = 5;
const branches = []; // {params, tokens: [{text, id, prob, top, forced}], label, finish}
let current = -1;
let controller = null;
let hideTimer = null;
let quiet = false; // focus returning from the alternatives does not reopen them

const $ = (id) => document.getElementById(id);

/** The settings in the form, named as in the API (strings, as the URL holds them). */
export function formParams() {
  const p = {};
  for (const k of ['prompt', 'temperature', 'top_k', 'top_p', 'max_tokens', 'seed', 'stop']) {
    p[k] = $(k).value;
  }
  return p;
}

export function setForm(state) {
  for (const [k, v] of Object.entries(state)) if (k !== 'view' && $(k)) $(k).value = v;
}

/** The text the other views look at: the prompt plus the shown branch's completion. */
export function currentText() {
  const b = branches[current];
  if (!b) return $('prompt').value;
  return b.params.prompt + b.tokens.map((t) => t.text).join('');
}

/** The request body for `params` (strings from the form) continuing after `prefix`. */
function requestBody(params, prefix, maxTokens) {
  const num = (s) => (s === '' || s === undefined ? undefined : Number(s));
  const body = {
    prompt: params.prompt + prefix, max_tokens: maxTokens, stream: true, logprobs: TOP_LOGPROBS,
  };
  for (const k of ['temperature', 'top_p', 'seed']) if (num(params[k]) !== undefined) body[k] = num(params[k]);
  if (num(params.top_k)) body.top_k = num(params.top_k);
  if (params.stop) body.stop = [params.stop.replace(/\\n/g, '\n').replace(/\\t/g, '\t')];
  return body;
}

/** Tokens of one streamed chunk's `logprobs` (OpenAI's completions shape). */
function chunkTokens(lp) {
  if (!lp || !lp.tokens) return [];
  return lp.tokens.map((text, i) => {
    const top = Object.entries((lp.top_logprobs && lp.top_logprobs[i]) || {})
      .map(([t, l]) => ({ text: t, prob: Math.exp(l) }))
      .sort((a, b) => b.prob - a.prob);
    return { text, id: info.vocab.get(text), prob: Math.exp(lp.token_logprobs[i]), top };
  });
}

function renderBranches() {
  const box = $('branches');
  box.replaceChildren();
  if (branches.length < 2) return;
  branches.forEach((b, i) => {
    const btn = document.createElement('button');
    btn.type = 'button';
    btn.textContent = b.label;
    btn.dataset.testid = 'branch';
    btn.setAttribute('aria-current', String(i === current));
    btn.addEventListener('click', () => { current = i; renderCompletion(); renderBranches(); });
    box.append(btn);
  });
}

function renderCompletion() {
  const box = $('completion');
  box.replaceChildren();
  const b = branches[current];
  if (!b) return;
  const prompt = document.createElement('span');
  prompt.className = 'tok prompt';
  prompt.textContent = b.params.prompt;
  prompt.title = 'the prompt';
  box.append(prompt);
  b.tokens.forEach((t, i) => box.append(genElement(t, i)));
  $('finish').textContent = b.finish || '';
}

function genElement(t, i) {
  const el = tokenElement(t, `gen${t.forced ? ' forced' : ''}`);
  el.dataset.testid = 'token';
  el.dataset.index = i;
  el.tabIndex = 0;
  el.addEventListener('mouseenter', () => showAlternatives(el, i));
  el.addEventListener('focus', () => { if (!quiet) showAlternatives(el, i); });
  el.addEventListener('mouseleave', scheduleHide);
  // From the keyboard: Enter or ↓ moves into the alternatives, Escape closes them.
  el.addEventListener('keydown', (e) => {
    const box = $('alternatives');
    if (e.key === 'Enter' || e.key === 'ArrowDown') {
      e.preventDefault();
      box.querySelector('button')?.focus();
    } else if (e.key === 'Escape') box.hidden = true;
  });
  return el;
}

function scheduleHide() {
  clearTimeout(hideTimer);
  hideTimer = setTimeout(() => { $('alternatives').hidden = true; }, 400);
}

/** The popup of token i's alternatives; clicking one branches from token i. */
function showAlternatives(el, i) {
  clearTimeout(hideTimer);
  const t = branches[current].tokens[i];
  const box = $('alternatives');
  box.replaceChildren();
  const head = document.createElement('div');
  head.className = 'muted';
  head.textContent = `token ${i}: p=${t.prob.toFixed(3)}${t.forced ? ' (forced by a branch)' : ''}`;
  box.append(head);
  for (const alt of t.top) {
    const btn = document.createElement('button');
    btn.type = 'button';
    btn.dataset.testid = 'alternative';
    btn.dataset.token = alt.text;
    btn.dataset.prob = alt.prob.toFixed(6);
    if (alt.text === t.text) btn.className = 'chosen';
    const name = document.createElement('span');
    name.textContent = info.displayById?.get(info.vocab.get(alt.text)) ?? JSON.stringify(alt.text);
    const p = document.createElement('span');
    p.textContent = alt.prob.toFixed(3);
    btn.append(name, p);
    btn.setAttribute('aria-label', `branch with ${JSON.stringify(alt.text)} (p=${alt.prob.toFixed(3)})`);
    btn.addEventListener('click', () => { box.hidden = true; branchAt(i, alt); });
    box.append(btn);
  }
  const r = el.getBoundingClientRect();
  box.style.left = `${r.left + window.scrollX}px`;
  box.style.top = `${r.bottom + window.scrollY + 2}px`;
  box.hidden = false;
  box.onmouseenter = () => clearTimeout(hideTimer);
  box.onfocusin = () => clearTimeout(hideTimer);
  box.onkeydown = (e) => {
    if (e.key === 'Escape') { quiet = true; box.hidden = true; el.focus(); quiet = false; }
  };
  box.onmouseleave = scheduleHide;
}

/** A new branch: the shown branch's tokens before i, then `alt` forced, then sampling. */
function branchAt(i, alt) {
  const from = branches[current];
  const kept = from.tokens.slice(0, i);
  const forced = { text: alt.text, id: info.vocab.get(alt.text), prob: alt.prob, top: from.tokens[i].top, forced: true };
  const label = `${branches.length + 1}: at ${i} → ${JSON.stringify(alt.text)}`;
  generate(from.params, [...kept, forced], label);
}

/** Runs the form's settings from scratch (a fresh first branch list). */
export function runFromForm() {
  const params = formParams();
  writeUrl({ ...params, view: 'playground' });
  branches.length = 0;
  generate(params, [], '1: sampled');
}

async function generate(params, prefixTokens, label) {
  if (controller) controller.abort();
  clearError();
  const branch = { params, tokens: [...prefixTokens], label, finish: '' };
  branches.push(branch);
  current = branches.length - 1;
  renderBranches();
  renderCompletion();
  const prefix = prefixTokens.map((t) => t.text).join('');
  const maxTokens = Math.max(1, Number(params.max_tokens || 16) - prefixTokens.length);
  await stream(branch, requestBody(params, prefix, maxTokens));
}

async function stream(branch, body) {
  controller = new AbortController();
  const started = performance.now();
  let first = null;
  let generated = 0;
  let text = '';
  $('run').disabled = true;
  $('stop-button').disabled = false;
  $('speed').textContent = 'waiting for the first token…';
  $('completion').dataset.done = 'false';
  delete $('speed').dataset.firstTokenMs;
  const speed = $('speed');
  try {
    const res = await fetch('/v1/completions', {
      method: 'POST', headers: { 'content-type': 'application/json', ...authHeaders() },
      body: JSON.stringify(body), signal: controller.signal,
    });
    if (!res.ok) throw new Error(await errorMessage(res));
    await readSse(res, (chunk) => {
      if (chunk.error) throw new Error(`error: ${chunk.error.message}`);
      const choice = chunk.choices && chunk.choices[0];
      if (!choice) return;
      text += choice.text || '';
      for (const t of chunkTokens(choice.logprobs)) {
        if (first === null) { first = performance.now(); speed.dataset.firstTokenMs = (first - started).toFixed(1); }
        branch.tokens.push(t);
        generated += 1;
        if (branches[current] === branch) $('completion').append(genElement(t, branch.tokens.length - 1));
      }
      if (choice.finish_reason) branch.finish = `finished: ${choice.finish_reason}`;
      const secs = first === null ? 0 : (performance.now() - first) / 1000;
      speed.textContent = `${generated} tokens · first after ${speed.dataset.firstTokenMs ?? '–'} ms`
        + (secs > 0 ? ` · ${((generated - 1) / secs).toFixed(1)} tokens/s` : '');
    });
    branch.text = text;
    $('completion').dataset.text = text;
  } catch (e) {
    if (e.name === 'AbortError') branch.finish = 'stopped';
    else { showError(e.message); branch.finish = 'failed'; }
  } finally {
    controller = null;
    $('run').disabled = false;
    $('stop-button').disabled = true;
    $('finish').textContent = branch.finish;
    $('completion').dataset.done = 'true';
  }
}

export function initPlayground() {
  $('controls').addEventListener('submit', (e) => { e.preventDefault(); runFromForm(); });
  $('stop-button').addEventListener('click', () => controller && controller.abort());
  $('prompt').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); runFromForm(); }
  });
  const state = readUrl();
  setForm(state);
  return state.prompt !== undefined;
}

/** After the dashboard loaded another checkpoint: the old branches were its model's. */
export function modelChanged() {
  branches.length = 0;
  current = -1;
  renderCompletion();
  renderBranches();
}
