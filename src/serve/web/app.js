// The page's entry point: three views (Playground, Inside, Training) switched without
// reloading; the text and settings travel between them and live in the URL.
import { clearError, loadInfo, readUrl, showError, writeUrl } from './common.js';
import { currentText, formParams, initPlayground, modelChanged, runFromForm } from './playground.js';
import { explainText, initInside } from './inside.js';
import { initTraining, trainingShown } from './training.js';

const VIEWS = ['playground', 'inside', 'training'];

function show(name) {
  for (const v of VIEWS) {
    document.getElementById(`view-${v}`).hidden = v !== name;
    document.querySelector(`nav button[data-view="${v}"]`).setAttribute('aria-pressed', String(v === name));
  }
  writeUrl({ ...formParams(), view: name });
  if (name === 'training') trainingShown();
}

async function main() {
  for (const b of document.querySelectorAll('nav button')) {
    b.addEventListener('click', () => {
      show(b.dataset.view);
      if (b.dataset.view === 'inside') explainText(currentText());
    });
  }
  try {
    await loadInfo();
  } catch (e) {
    showError(e.message);
    return;
  }
  const hasPrompt = initPlayground();
  initInside(currentText);
  await initTraining(currentText);
  document.addEventListener('model-changed', () => {
    modelChanged();
    show('playground');
    clearError();
  });
  const view = VIEWS.includes(readUrl().view) ? readUrl().view : 'playground';
  show(view);
  document.body.dataset.readyMs = performance.now().toFixed(1);
  document.body.dataset.ready = 'true';
  // Opening a shared link runs it.
  if (hasPrompt && view === 'playground') runFromForm();
  if (hasPrompt && view === 'inside') explainText(currentText());
}

main();
