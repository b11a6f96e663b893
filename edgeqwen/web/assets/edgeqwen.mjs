// edgeqwen in the browser: load(url) -> Model; model.generate(messages, options) is an async iterator of text.
// onnxruntime-web (WebGPU or WebAssembly) runs the artifact's graph; transformers.js tokenizes and renders the chat
// template. Everything is loaded from this artifact (web/vendor/), nothing from a CDN.
// Each backend has its own onnxruntime-web build (config.backends[name].module): the WebGPU one (asyncify) has no
// WebAssembly kernel for GatherBlockQuantized, the plain WebAssembly one has.
const VENDOR = new URL('./vendor/', import.meta.url).href;

async function importOrt(module) {
  const ort = await import(VENDOR + module);
  ort.env.wasm.wasmPaths = VENDOR;  // never a CDN (transformers.js points one there when this is unset)
  return ort;
}

async function fetchJSON(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

async function fetchText(url) {
  const r = await fetch(url);
  return r.ok ? r.text() : null;
}

// 'webgpu' when the adapter has every feature the graph needs, else 'wasm'; `reason` says why (shown on the page)
export async function chooseBackend(config, wanted = 'auto') {
  if (wanted === 'wasm') return { backend: 'wasm', reason: 'WebAssembly (asked for)' };
  const needs = config.backends.webgpu.requires_features;
  let adapter = null;
  if (typeof navigator !== 'undefined' && navigator.gpu) {
    try { adapter = await navigator.gpu.requestAdapter(); } catch (e) { adapter = null; }
  }
  const missing = adapter ? needs.filter((f) => !adapter.features.has(f)) : needs;
  if (adapter && missing.length === 0) {
    const info = adapter.info || {};
    const what = [info.vendor, info.architecture, info.description].filter(Boolean).join(' ') || 'adapter';
    const soft = adapter.isFallbackAdapter || info.isFallbackAdapter ? ', software fallback adapter' : '';
    return { backend: 'webgpu', reason: `WebGPU (${what}${soft})` };
  }
  if (wanted === 'webgpu') throw new Error('WebGPU asked for, but ' + (adapter ? `the adapter lacks ${missing.join(', ')}` : 'this browser has no WebGPU adapter'));
  const why = adapter ? `the WebGPU adapter lacks ${missing.join(', ')}` : 'no WebGPU adapter in this browser';
  return { backend: 'wasm', reason: `WebAssembly (${why})` };
}

// a small seeded generator (mulberry32), so that a seed gives the same sampled tokens
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function argmax(logits) {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}

// greedy, or temperature + top-k + top-p (nucleus) sampling, with the repetition penalty over `history`
export function sampleToken(logits, s, random, history = []) {
  const x = Float64Array.from(logits);
  if (s.repetition_penalty && s.repetition_penalty !== 1) {
    for (const t of new Set(history)) x[t] = x[t] > 0 ? x[t] / s.repetition_penalty : x[t] * s.repetition_penalty;
  }
  if (!s.do_sample || !(s.temperature > 0)) return argmax(x);
  let order = Array.from(x.keys()).sort((a, b) => x[b] - x[a]);
  if (s.top_k > 0) order = order.slice(0, s.top_k);
  const top = x[order[0]];
  let probs = order.map((i) => Math.exp((x[i] - top) / s.temperature));
  let total = probs.reduce((a, b) => a + b, 0);
  if (s.top_p > 0 && s.top_p < 1) {
    let cum = 0, keep = 0;
    while (keep < probs.length && cum < s.top_p * total) cum += probs[keep++];
    order = order.slice(0, Math.max(keep, 1));
    probs = probs.slice(0, order.length);
    total = probs.reduce((a, b) => a + b, 0);
  }
  let u = random() * total;
  for (let i = 0; i < order.length; i++) {
    u -= probs[i];
    if (u <= 0) return order[i];
  }
  return order[order.length - 1];
}

export class Model {
  constructor(ort, base, config, session, tokenizer, choice) {
    Object.assign(this, { ort, base, config, session, tokenizer, ...choice });
    this.maxStep = choice.maxStep || Infinity;
    this.eos = new Set(config.eos_token_id);
    this.stats = null;
  }

  encodeChat(messages, { enableThinking } = {}) {
    const msgs = messages.length && messages[0].role !== 'system' && this.config.system_prompt
      ? [{ role: 'system', content: this.config.system_prompt }, ...messages] : messages;
    const kwargs = enableThinking === undefined ? {} : { enable_thinking: enableThinking };
    const text = this.tokenizer.apply_chat_template(msgs, { add_generation_prompt: true, tokenize: false, ...kwargs });
    return this.tokenizer.encode(text, { add_special_tokens: false });
  }

  encode(text) { return this.tokenizer.encode(text, { add_special_tokens: false }); }

  decode(ids) { return this.tokenizer.decode(ids, { skip_special_tokens: true }); }

  emptyKV() {
    const c = this.config, kv = [];
    for (let i = 0; i < c.num_layers; i++) {
      const shape = [1, c.kv_heads, 0, c.head_size];
      kv.push([new this.ort.Tensor('float32', new Float32Array(0), shape), new this.ort.Tensor('float32', new Float32Array(0), shape)]);
    }
    return kv;
  }

  // one forward pass over `ids` after `pos` cached positions; returns [logits of the last position, new KV]
  async forward(ids, pos, kv) {
    const n = ids.length;
    const feeds = {
      input_ids: new this.ort.Tensor('int64', BigInt64Array.from(ids, BigInt), [1, n]),
      attention_mask: new this.ort.Tensor('int64', new BigInt64Array(pos + n).fill(1n), [1, pos + n]),
    };
    if (this.session.inputNames.includes('position_ids')) {
      feeds.position_ids = new this.ort.Tensor('int64', BigInt64Array.from({ length: n }, (_, i) => BigInt(pos + i)), [1, n]);
    }
    const fetches = ['logits'];
    kv.forEach(([k, v], i) => {
      feeds[`past_key_values.${i}.key`] = k;
      feeds[`past_key_values.${i}.value`] = v;
      fetches.push(`present.${i}.key`, `present.${i}.value`);
    });
    const out = await this.session.run(feeds, fetches);
    kv.forEach(([k, v]) => { k.dispose?.(); v.dispose?.(); });
    const logits = out.logits, V = logits.dims[logits.dims.length - 1];
    const last = logits.data.slice(logits.data.length - V);
    logits.dispose?.();
    return [last, kv.map((_, i) => [out[`present.${i}.key`], out[`present.${i}.value`]])];
  }

  // the prompt in passes of at most maxStep tokens (the backend's limit)
  async prefill(ids, kv) {
    let logits = null;
    for (let i = 0; i < ids.length; i += Math.min(this.maxStep, ids.length)) {
      [logits, kv] = await this.forward(ids.slice(i, i + this.maxStep), i, kv);
    }
    return [logits, kv];
  }

  // token by token: yields {token, text, logits?}; `this.stats` holds tokens/s and the finish reason at the end
  async *stream(promptIds, options = {}) {
    const s = { ...this.config.generation, ...options.sampling };
    if (options.temperature !== undefined) Object.assign(s, { temperature: options.temperature, do_sample: options.temperature > 0 });
    const maxNew = Math.min(options.maxNewTokens ?? s.max_new_tokens ?? 256, this.config.context_length - promptIds.length);
    if (maxNew <= 0) throw new Error(`the prompt's ${promptIds.length} tokens fill the artifact's context of ${this.config.context_length}`);
    const random = rng(options.seed ?? (Math.random() * 2 ** 32));
    const t0 = performance.now();
    let [logits, kv] = await this.prefill(promptIds, this.emptyKV());
    const t1 = performance.now();
    const out = [];
    let shown = '', finish = 'length';
    while (out.length < maxNew) {
      const token = sampleToken(logits, s, random, [...promptIds, ...out]);
      if (this.eos.has(token) && !options.ignoreEos) { finish = 'stop'; break; }
      out.push(token);
      const full = this.decode(out);
      const text = full.endsWith('\uFFFD') ? '' : full.slice(shown.length);
      if (text) shown = full;
      yield { token, text, logits: options.logits ? logits : undefined };
      if (options.signal?.aborted) { finish = 'abort'; break; }
      if (out.length < maxNew) [logits, kv] = await this.forward([token], promptIds.length + out.length - 1, kv);
    }
    kv.forEach(([k, v]) => { k.dispose?.(); v.dispose?.(); });
    const t2 = performance.now();
    this.stats = { promptTokens: promptIds.length, tokens: out.length, finishReason: finish, backend: this.backend,
                   prefillSeconds: (t1 - t0) / 1000, decodeSeconds: (t2 - t1) / 1000,
                   prefillTokensPerSecond: promptIds.length / ((t1 - t0) / 1000),
                   tokensPerSecond: out.length > 1 ? (out.length - 1) / ((t2 - t1) / 1000) : 0 };
  }

  // the answer to a conversation, as an async iterator of text pieces
  async *generate(messages, options = {}) {
    for await (const r of this.stream(this.encodeChat(messages, options), options)) if (r.text) yield r.text;
  }
}

// url: the artifact's root (default: the folder above web/); options.backend: 'auto' | 'webgpu' | 'wasm';
// options.graph: 'auto' (each backend's own graph) | 'decoder'
export async function load(url = new URL('../', import.meta.url).href, options = {}) {
  if (typeof location !== 'undefined' && location.protocol === 'file:') {
    throw new Error('this page cannot load the model from file://; serve the artifact with `edgeqwen web ARTIFACT`');
  }
  const base = new URL(url, typeof location !== 'undefined' ? location.href : undefined).href.replace(/\/?$/, '/');
  const progress = options.onProgress || (() => {});
  const config = await fetchJSON(base + 'web/config.json');
  const choice = await chooseBackend(config, options.backend || 'auto');
  progress(`backend: ${choice.reason}`);
  await importOrt(config.backends.webgpu.module);  // the build transformers.js imports: wasmPaths set first
  const { PreTrainedTokenizer } = await import(VENDOR + 'transformers.web.min.js');
  const ort = await importOrt(config.backends[choice.backend].module);
  ort.env.wasm.numThreads = options.threads ?? (self.crossOriginIsolated ? Math.min(navigator.hardwareConcurrency || 1, 4) : 1);
  const [tokJSON, tokConfig, template] = await Promise.all([
    fetchJSON(base + config.tokenizer), fetchJSON(base + config.tokenizer_config), fetchText(base + config.chat_template)]);
  if (template && !tokConfig.chat_template) tokConfig.chat_template = template;
  const tokenizer = new PreTrainedTokenizer(tokJSON, tokConfig);
  // each backend's own graph: on WebAssembly an int8 one where the artifact has it (onnxruntime-web's WebAssembly
  // build has no fast MatMulNBits kernel; DynamicQuantizeMatMul has one), else the decoder graph (options.graph:
  // 'decoder' takes the decoder graph on every backend, for comparisons)
  const own = config.backends[choice.backend];
  const graph = own.model && options.graph !== 'decoder' ? own : config;
  // tokens per pass: the graph's own; an artifact written before per-backend graphs has only the provider's
  choice.maxStep = graph === own || own.decoder_max_step_tokens === undefined ? own.max_step_tokens
    : own.decoder_max_step_tokens;
  progress(`loading the model (${graph.model})`);
  const session = await ort.InferenceSession.create(base + graph.model, {
    executionProviders: [choice.backend],
    graphOptimizationLevel: 'all',
    externalData: graph.external_data.map((path) => ({ path, data: base + path })),
  });
  choice.graph = graph.model;
  return new Model(ort, base, config, session, tokenizer, choice);
}
