// Helpers every view shares: the colour scale, talking to the server, the page state
// in the URL, and token elements.

// Viridis at 9 stops (matplotlib's values); linear in between. Perceptually uniform and
// readable by colour-blind eyes, so a probability is never told by red against green.
const VIRIDIS = [
  [68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
  [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37],
];

/** The viridis colour of x in [0, 1] as [r, g, b]. */
export function viridisRgb(x) {
  const t = Math.min(1, Math.max(0, Number.isFinite(x) ? x : 0)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(t));
  const f = t - i;
  return VIRIDIS[i].map((c, j) => Math.round(c + f * (VIRIDIS[i + 1][j] - c)));
}

/** Background and a readable text colour (by relative luminance) for probability p. */
export function probColours(p) {
  const [r, g, b] = viridisRgb(p);
  const lin = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
  const lum = 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
  return { bg: `rgb(${r},${g},${b})`, fg: lum > 0.2 ? '#000' : '#fff' };
}

/** Shows the server's (or the network's) message at the top of the page. */
export function showError(message) {
  const box = document.getElementById('error');
  box.textContent = message;
  box.hidden = false;
}

export function clearError() {
  const box = document.getElementById('error');
  box.hidden = true;
  box.textContent = '';
}

const KEY = 'sympathy-api-key';

/** The Authorization header when the user gave the server's API key (`--api-key`). */
export function authHeaders() {
  const key = sessionStorage.getItem(KEY);
  return key ? { authorization: `Bearer ${key}` } : {};
}

/** A 401: the server wants its API key. Asks for it below the message, once per tab. */
function askForKey() {
  const box = document.getElementById('error');
  if (box.querySelector('form')) return;
  const form = document.createElement('form');
  form.className = 'row';
  const label = document.createElement('label');
  label.textContent = 'API key ';
  const input = document.createElement('input');
  input.type = 'password';
  input.dataset.testid = 'api-key';
  label.append(input);
  const use = document.createElement('button');
  use.type = 'submit';
  use.textContent = 'Use this key';
  form.append(label, use);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY, input.value);
    location.reload();
  });
  box.append(form);
}

/** The readable message of a failed response: OpenAI's `{error: {message}}` shape. */
export async function errorMessage(res) {
  const text = await res.text();
  if (res.status === 401) setTimeout(askForKey);
  try {
    const body = JSON.parse(text);
    if (body && body.error && body.error.message) {
      const param = body.error.param ? ` (${body.error.param})` : '';
      return `error ${res.status}: ${body.error.message}${param}`;
    }
  } catch (_) { /* not JSON: fall through */ }
  return `error ${res.status} ${res.statusText}: ${text.slice(0, 300) || 'no message'}`;
}

/** POSTs (or GETs, without body) JSON and returns the parsed answer; throws a readable Error. */
export async function api(path, body) {
  let res;
  try {
    res = await fetch(path, body === undefined ? { headers: authHeaders() } : {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...authHeaders() },
      body: JSON.stringify(body),
    });
  } catch (e) {
    throw new Error(`the server did not answer (${e.message}); is sympathy serve still running?`);
  }
  if (!res.ok) throw new Error(await errorMessage(res));
  return res.json();
}

/** Reads an SSE body (`data: …` events) and calls onData with each parsed JSON event. */
export async function readSse(res, onData) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf('\n\n')) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = event.split('\n').filter((l) => l.startsWith('data:'))
        .map((l) => l.slice(5).trimStart()).join('\n');
      if (!data) continue;
      if (data === '[DONE]') return;
      onData(JSON.parse(data));
    }
  }
}

// The settings that live in the URL, named as in the API.
export const PARAMS = ['prompt', 'temperature', 'top_k', 'top_p', 'max_tokens', 'seed', 'stop'];

/** The page state from the URL (`?prompt=…&temperature=0&view=inside`). */
export function readUrl() {
  const q = new URLSearchParams(location.search);
  const state = {};
  for (const k of [...PARAMS, 'view']) if (q.has(k)) state[k] = q.get(k);
  return state;
}

/** Writes the settings (and the view) into the URL without reloading. */
export function writeUrl(state) {
  const q = new URLSearchParams();
  for (const k of [...PARAMS, 'view']) {
    if (state[k] !== undefined && state[k] !== '') q.set(k, state[k]);
  }
  history.replaceState(null, '', `${location.pathname}?${q}`);
}

/** How a token's text is shown: visible spaces stay spaces, specials are named. */
export function tokenLabel(text) {
  if (text === '\n') return '\n';
  if (text === '\t') return '\t';
  if (text === '\uFFFD') return '\uFFFD';
  return text;
}

/**
 * One token element. `t`: {text, id, prob, display}. Carries data-prob and
 * data-token-id; the background is its probability on the viridis scale.
 */
export function tokenElement(t, cls) {
  const span = document.createElement('span');
  span.className = `tok ${cls || ''}`;
  span.textContent = tokenLabel(t.text);
  if (t.text === '\n') span.classList.add('newline');
  if (t.text === '\uFFFD' || t.text === '') span.classList.add('special');
  if (t.id !== undefined && t.id !== null) span.dataset.tokenId = t.id;
  if (t.prob !== undefined && t.prob !== null) {
    span.dataset.prob = t.prob.toFixed(6);
    const c = probColours(t.prob);
    span.style.background = c.bg;
    span.style.color = c.fg;
  }
  const shown = t.display || JSON.stringify(t.text);
  span.title = t.prob === undefined || t.prob === null
    ? `${shown} (id ${t.id})` : `${shown} (id ${t.id}) p=${t.prob.toFixed(3)}`;
  return span;
}

/** What the server says about the model and its vocabulary (text → id for the char tokenizer). */
export const info = { vocab: new Map(), model: '', context: 0, run: false };

export async function loadInfo() {
  const got = await api('/v1/web/info');
  info.model = got.model;
  info.context = got.context;
  info.run = got.run;
  info.vocab = new Map();
  for (const v of got.vocab) if (!info.vocab.has(v.text)) info.vocab.set(v.text, v.id);
  info.displayById = new Map(got.vocab.map((v) => [v.id, v.display]));
  document.getElementById('model-name').textContent =
    `${got.model} · ${got.params} · context ${got.context}`;
  return got;
}
