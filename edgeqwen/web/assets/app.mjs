// The chat page: loads the artifact this page sits in, streams answers into the DOM, shows backend and tokens/s.
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

function bubble(role, text) {
  const div = document.createElement('div');
  div.className = `msg ${role}`;
  div.textContent = text;
  $('messages').appendChild(div);
  return div;
}

async function main() {
  if (location.protocol === 'file:') {
    $('status').textContent = 'This page was opened from a file. Serve the artifact instead: edgeqwen web ARTIFACT (then open the URL it prints).';
    $('backend').textContent = 'backend: none';
    document.body.dataset.state = 'file';
    return;
  }
  const { load } = await import('./edgeqwen.mjs');
  const model = await load(new URL('../', location.href).href, {
    backend: params.get('backend') || 'auto', graph: params.get('graph') || 'auto',
    onProgress: (m) => { $('status').textContent = m; } });
  window.edgeqwenModel = model;
  $('backend').textContent = `backend: ${model.reason}`;
  $('backend').dataset.backend = model.backend;
  $('title').textContent = `edgeqwen · ${model.config.name || 'chat'}`;
  $('status').textContent = 'ready';
  $('prompt').disabled = $('send').disabled = false;
  document.body.dataset.state = 'ready';
  const history = [];
  const maxNewTokens = params.get('max_tokens') ? Number(params.get('max_tokens')) : undefined;  // else the recipe's
  $('chat').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const text = $('prompt').value.trim();
    if (!text) return;
    $('prompt').value = '';
    $('prompt').disabled = $('send').disabled = true;
    document.body.dataset.state = 'generating';
    history.push({ role: 'user', content: text });
    bubble('user', text);
    const out = bubble('assistant', '');
    $('status').textContent = 'generating…';
    try {
      for await (const piece of model.generate(history, { maxNewTokens })) out.textContent += piece;
      history.push({ role: 'assistant', content: out.textContent });
      const s = model.stats;
      $('tps').textContent = `${s.tokens} tokens · ${s.tokensPerSecond.toFixed(1)} tok/s decode · `
        + `${s.prefillTokensPerSecond.toFixed(1)} tok/s prefill (${s.promptTokens} prompt tokens) · ${model.backend} · ${s.finishReason}`;
      $('status').textContent = 'ready';
    } catch (e) {
      bubble('error', String(e));
      $('status').textContent = 'error';
    }
    $('prompt').disabled = $('send').disabled = false;
    document.body.dataset.state = 'ready';
  });
}

main().catch((e) => {
  $('status').textContent = `error: ${e.message || e}`;
  document.body.dataset.state = 'error';
});
