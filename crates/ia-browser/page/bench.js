// The in-browser half of ia-browser. Rust drives it over WebDriver, one step per call
// (env, load, setFeeds, run, timed), each call with its own timeout on the Rust side.
// Timing is performance.now() inside the page; raw samples and outputs go back to Rust,
// which computes the statistics and stores them like any other result.

// onnxruntime-web logs through the console: keep every line so Rust can read where the
// nodes were placed (a silent fallback from WebGPU/WebNN to wasm shows up there).
const logs = [];
for (const level of ['log', 'info', 'warn', 'error', 'debug']) {
  const original = console[level].bind(console);
  console[level] = (...args) => {
    logs.push(`[${level}] ${args.map((a) => (typeof a === 'string' ? a : String(a))).join(' ')}`);
    original(...args);
  };
}
window.addEventListener('error', (e) => logs.push(`[page-error] ${e.message}`));
window.addEventListener('unhandledrejection', (e) =>
  logs.push(`[page-error] ${e.reason && e.reason.message ? e.reason.message : e.reason}`),
);

// The onnxruntime-web build each execution provider is documented with: the plain wasm build
// for the CPU, the build with ONNX Runtime's own WebGPU EP (`onnxruntime-web/webgpu`) for
// WebGPU, and `onnxruntime-web/all` for WebNN. The `all` build's WebGPU EP is the older JSEP
// one, which on SwiftShader computes a LLaMA's rotated keys wrongly (present.0.key off by 0.5);
// the native EP matches transformers.
const ORT_BUILDS = {
  wasm: 'ort.wasm.min.mjs',
  webgpu: 'ort.webgpu.min.mjs',
  webnn: 'ort.all.min.mjs',
};

// One build per page: the page is reloaded for every model, so a load picks its EP's build.
let ort = null;
let ortBuild = null;
async function loadOrt(ep) {
  if (!ort) {
    ortBuild = ORT_BUILDS[ep];
    if (!ortBuild) throw new Error(`no onnxruntime-web build for execution provider '${ep}'`);
    ort = await import(`/ort/${ortBuild}`);
    ort.env.wasm.wasmPaths = '/ort/';
  }
  return ort;
}

function loadedOrt() {
  if (!ort) throw new Error('no model is loaded on this page');
  return ort;
}

const errorText = (e) => (e && e.name && e.message ? `${e.name}: ${e.message}` : String(e));

async function describeEnvironment() {
  const out = {
    userAgent: navigator.userAgent,
    crossOriginIsolated: self.crossOriginIsolated,
    hardwareConcurrency: navigator.hardwareConcurrency,
    webgpu: { present: !!navigator.gpu },
    webnn: { present: !!navigator.ml, contexts: {} },
  };
  if (navigator.gpu) {
    try {
      const adapter = await navigator.gpu.requestAdapter();
      if (!adapter) {
        out.webgpu.error = 'navigator.gpu.requestAdapter() returned null: the browser has no WebGPU adapter';
      } else {
        const info = adapter.info || {};
        out.webgpu.adapter = {
          vendor: info.vendor || '',
          architecture: info.architecture || '',
          device: info.device || '',
          description: info.description || '',
          isFallbackAdapter: info.isFallbackAdapter ?? adapter.isFallbackAdapter ?? null,
          features: [...adapter.features].sort(),
        };
      }
    } catch (e) {
      out.webgpu.error = errorText(e);
    }
  } else {
    out.webgpu.error = 'navigator.gpu is undefined: this browser does not expose WebGPU';
  }
  if (navigator.ml) {
    for (const deviceType of ['cpu', 'gpu', 'npu']) {
      try {
        await navigator.ml.createContext({ deviceType });
        out.webnn.contexts[deviceType] = { ok: true };
      } catch (e) {
        out.webnn.contexts[deviceType] = { ok: false, error: errorText(e) };
      }
    }
  } else {
    out.webnn.error = 'navigator.ml is undefined: this browser does not expose WebNN';
  }
  return out;
}

const state = { parts: [], feeds: {} };

function decodeTensor(o, spec) {
  const bytes = Uint8Array.from(atob(spec.data), (c) => c.charCodeAt(0));
  const data = spec.type === 'int64' ? new BigInt64Array(bytes.buffer)
    : spec.type === 'bool' ? bytes : new Float32Array(bytes.buffer);
  return new o.Tensor(spec.type, data, spec.dims);
}

function encodeBytes(view) {
  const bytes = new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

// Placeholder feeds of the real shapes for precompiling: zeros, except attention masks, which
// are ones. An all-zero mask masks every position, softmax then yields NaN, and on SwiftShader
// the runs after it were twice as slow (CLIP warm p50 230 ms instead of 116 ms).
function placeholderFeeds(o, part) {
  const feeds = {};
  for (const [name, t] of Object.entries(state.feeds[part.name] || {})) {
    const data = t.type === 'int64' ? new BigInt64Array(t.size)
      : t.type === 'bool' ? new Uint8Array(t.size) : new Float32Array(t.size);
    if (name.includes('mask')) data.fill(t.type === 'int64' ? 1n : 1);
    feeds[name] = new o.Tensor(t.type, data, t.dims);
  }
  return feeds;
}

// cfg: { ep: 'wasm'|'webgpu'|'webnn', webnnDevice, numThreads (null: onnxruntime-web's own
//        choice), parallel, parts: [{name, url}],
//        gpuOutputs: [names] (WebGPU: outputs left on the GPU, a decoder's KV cache) }
async function load(cfg) {
  const o = await loadOrt(cfg.ep);
  if (cfg.numThreads) o.env.wasm.numThreads = cfg.numThreads;
  o.env.logLevel = 'verbose';
  let ep = cfg.ep;
  if (cfg.ep === 'webnn') {
    const context = await navigator.ml.createContext({ deviceType: cfg.webnnDevice });
    ep = { name: 'webnn', deviceType: cfg.webnnDevice, context };
  }
  const options = {
    executionProviders: [ep],
    graphOptimizationLevel: 'all',
    logSeverityLevel: 0,
    logVerbosityLevel: 0,
  };
  if (cfg.ep === 'webgpu' && cfg.gpuOutputs && cfg.gpuOutputs.length) {
    options.preferredOutputLocation = Object.fromEntries(cfg.gpuOutputs.map((n) => [n, 'gpu-buffer']));
  }
  const firstLog = logs.length;
  // ONNX Runtime's own WebGPU EP refuses to create two sessions at once ("another WebGPU EP
  // inference session is being created"): there a parallel load fetches the parts together
  // and creates their sessions one after the other.
  const concurrentSessions = cfg.parallel && cfg.ep !== 'webgpu';
  let creating = Promise.resolve();
  const oneAtATime = (make) => {
    const made = creating.then(make);
    creating = made.catch(() => {});
    return made;
  };
  const create = async (part) => {
    const t = performance.now();
    const response = await fetch(part.url);
    if (!response.ok) throw new Error(`${part.url}: HTTP ${response.status} ${response.statusText}`);
    const bytes = new Uint8Array(await response.arrayBuffer());
    const make = () => o.InferenceSession.create(bytes, options);
    const session = await (concurrentSessions ? make() : oneAtATime(make));
    return { name: part.name, session, ms: performance.now() - t };
  };
  const t0 = performance.now();
  let made = [];
  if (cfg.parallel) {
    made = await Promise.all(cfg.parts.map(create));
  } else {
    for (const part of cfg.parts) made.push(await create(part));
  }
  const loadMs = performance.now() - t0;
  state.parts = made;
  state.feeds = {};
  state.generation = null;
  Object.assign(s2s, { encoded: null, mask: null, cache: {} });
  return {
    loadMs,
    ortVersion: o.env.versions ? o.env.versions.web || o.env.versions.common : '',
    ortBuild,
    concurrentSessions,
    wasmThreads: o.env.wasm.numThreads,
    parts: made.map((p) => ({
      name: p.name,
      ms: p.ms,
      inputs: p.session.inputNames,
      // Each input's dims (a symbolic one as -1), null where the runtime does not say.
      inputDims: p.session.inputNames.map((name) => {
        const meta = (p.session.inputMetadata || []).find((m) => m.name === name);
        if (!meta || !meta.isTensor || !meta.shape || !meta.shape.length) return null;
        return meta.shape.map((d) => (typeof d === 'number' ? d : -1));
      }),
      outputs: p.session.outputNames,
    })),
    logs: logs.slice(firstLog),
  };
}

// feeds: { part: { input: { type, dims, data (base64 little-endian) } } }
async function setFeeds(feeds) {
  const o = loadedOrt();
  state.tensors = {};
  for (const [part, inputs] of Object.entries(feeds)) {
    state.tensors[part] = {};
    state.feeds[part] = {};
    for (const [name, spec] of Object.entries(inputs)) {
      const tensor = decodeTensor(o, spec);
      state.tensors[part][name] = tensor;
      state.feeds[part][name] = { type: spec.type, dims: spec.dims, size: tensor.size };
    }
  }
  return true;
}

async function runAll(feedsFor) {
  const results = [];
  for (const part of state.parts) {
    results.push(await part.session.run(feedsFor(part)));
  }
  return results;
}

// Text generation with a decoder export, in the page so no WebDriver round trip sits between
// steps. The graph conventions are ia_engine::exported_decoder's: `input_ids`,
// `attention_mask`, optionally `position_ids` and `use_cache_branch`, `past_key_values.*`
// [batch, heads, past, head_dim] in and `logits`, `present.*` out; the first call feeds an
// empty cache. Greedy, a fixed number of new tokens, timed as the native harness times them.
// g: { prompt: [ids], batch, newTokens, positionIds, cacheBranch, slots: [{input, output, heads, headDim}] }
async function setGeneration(g) {
  if (state.parts.length !== 1) throw new Error('generation needs a single-part model');
  state.generation = g;
  return true;
}

function argmaxRows(logits, batch) {
  const [, len, vocab] = logits.dims;
  const data = logits.data;
  const picked = [];
  for (let b = 0; b < batch; b++) {
    const off = (b * len + len - 1) * vocab;
    let best = 0;
    for (let i = 1; i < vocab; i++) if (data[off + i] > data[off + best]) best = i;
    picked.push(best);
  }
  return picked;
}

async function generateOnce(g) {
  const o = loadedOrt();
  const session = state.parts[0].session;
  const batch = g.batch;
  let cache = {};
  const release = (tensors) => {
    for (const t of Object.values(tensors)) if (t.location === 'gpu-buffer') t.dispose();
  };
  // One call: `rows[b]` are row b's new tokens after `past` cached ones; the next token of
  // each row and how long the call took (run only, and with the argmax).
  const call = async (rows, past) => {
    const len = rows[0].length;
    const ids = new BigInt64Array(batch * len);
    const positions = new BigInt64Array(batch * len);
    rows.forEach((row, b) =>
      row.forEach((id, i) => {
        ids[b * len + i] = BigInt(id);
        positions[b * len + i] = BigInt(past + i);
      }),
    );
    const feeds = {
      input_ids: new o.Tensor('int64', ids, [batch, len]),
      attention_mask: new o.Tensor('int64', new BigInt64Array(batch * (past + len)).fill(1n), [batch, past + len]),
    };
    if (g.positionIds) feeds.position_ids = new o.Tensor('int64', positions, [batch, len]);
    if (g.cacheBranch) feeds.use_cache_branch = new o.Tensor('bool', [past > 0], [1]);
    for (const s of g.slots) {
      feeds[s.input] = past === 0 ? new o.Tensor('float32', new Float32Array(0), [batch, s.heads, 0, s.headDim]) : cache[s.input];
    }
    const t = performance.now();
    const out = await session.run(feeds);
    const runMs = performance.now() - t;
    const next = argmaxRows(out.logits, batch);
    const ms = performance.now() - t;
    release(cache);
    cache = {};
    for (const s of g.slots) cache[s.input] = out[s.output];
    for (const [name, tensor] of Object.entries(out)) {
      if (name !== 'logits' && !g.slots.some((s) => s.output === name)) release([tensor]);
    }
    return { next, runMs, ms };
  };
  const tokens = Array.from({ length: batch }, () => []);
  const t0 = performance.now();
  const first = await call(Array.from({ length: batch }, () => g.prompt), 0);
  const prefillMs = first.runMs;
  const ttftMs = first.ms;
  first.next.forEach((id, b) => tokens[b].push(id));
  const stepMs = [];
  for (let i = 1; i < g.newTokens; i++) {
    const step = await call(tokens.map((row) => [row[row.length - 1]]), g.prompt.length + i - 1);
    step.next.forEach((id, b) => tokens[b].push(id));
    stepMs.push(step.ms);
  }
  const ms = performance.now() - t0;
  // Where the runtime left the cache between steps: 'gpu-buffer' on WebGPU, 'cpu' otherwise.
  const cacheLocation = g.slots.length ? cache[g.slots[0].input].location : '';
  release(cache);
  return { ms, ttftMs, prefillMs, stepMs, tokens, cacheLocation };
}

// Encoder-decoders (Whisper, T5) driven from Rust, one call per decoding step, with the graph
// conventions of ia_engine::exported_seq2seq (encoder_model, decoder_model,
// decoder_with_past_model): the encoder's output and the caches stay in the page, so only
// token ids go in and the last position's logits come back.
const s2s = { encoded: null, mask: null, cache: {} };

function s2sPart(name) {
  const part = state.parts.find((p) => p.name === name);
  if (!part) throw new Error(`the export has no ${name}`);
  return part.session;
}

// Rows `rows` of a batch-first tensor, in that order.
function gatherRows(o, t, rows) {
  const per = t.size / t.dims[0];
  const Data = t.data.constructor;
  const data = new Data(rows.length * per);
  rows.forEach((r, i) => data.set(t.data.subarray(r * per, (r + 1) * per), i * per));
  return new o.Tensor(t.type, data, [rows.length, ...t.dims.slice(1)]);
}

// Each s2s call answers with `ms`, its own time in the page (performance.now()), so that a
// benchmark can leave out the WebDriver transport around it.

// p: { feeds: { name: spec }, mask: spec | null, copies }
async function s2sEncode(p) {
  const t = performance.now();
  const o = loadedOrt();
  const feeds = {};
  for (const [name, spec] of Object.entries(p.feeds)) feeds[name] = decodeTensor(o, spec);
  const out = await s2sPart('encoder_model').run(feeds);
  const h = out.last_hidden_state;
  const order = [];
  for (let c = 0; c < p.copies; c++) for (let r = 0; r < h.dims[0]; r++) order.push(r);
  s2s.encoded = gatherRows(o, h, order);
  s2s.mask = p.mask ? gatherRows(o, decodeTensor(o, p.mask), order) : null;
  s2s.cache = {};
  return { dims: s2s.encoded.dims, ms: performance.now() - t };
}

// p: { ids: spec [rows, tokens], extra: { name: spec } } -> the last position's logits of each
// row. A merged decoder (onnx-community's `decoder_model_merged`) takes the encoder output and
// the extra feeds (`use_cache_branch`, and the empty cache of the first call) on every call;
// its later calls return placeholders for the cross-attention cache, which stays as it was.
async function s2sDecode(p) {
  const t = performance.now();
  const o = loadedOrt();
  const feeds = { input_ids: decodeTensor(o, p.ids) };
  for (const [name, spec] of Object.entries(p.extra || {})) feeds[name] = decodeTensor(o, spec);
  if (s2s.mask) feeds.encoder_attention_mask = s2s.mask;
  if (!s2s.encoded) throw new Error('decoding started before the encoder ran');
  const first = Object.keys(s2s.cache).length === 0;
  const merged = state.parts.some((part) => part.name === 'decoder_model_merged');
  let out;
  if (merged) {
    feeds.encoder_hidden_states = s2s.encoded;
    if (!first) Object.assign(feeds, s2s.cache);
    out = await s2sPart('decoder_model_merged').run(feeds);
  } else if (first) {
    feeds.encoder_hidden_states = s2s.encoded;
    out = await s2sPart('decoder_model').run(feeds);
  } else {
    Object.assign(feeds, s2s.cache);
    out = await s2sPart('decoder_with_past_model').run(feeds);
  }
  for (const [name, c] of Object.entries(out)) {
    if (!first && name.includes('.encoder.')) continue;
    if (name.startsWith('present.')) s2s.cache[`past_key_values.${name.slice(8)}`] = c;
  }
  const [rows, len, vocab] = out.logits.dims;
  const last = new Float32Array(rows * vocab);
  for (let r = 0; r < rows; r++) {
    last.set(out.logits.data.subarray((r * len + len - 1) * vocab, (r * len + len) * vocab), r * vocab);
  }
  const ms = performance.now() - t;
  return { dims: [rows, vocab], data: encodeBytes(last), ms };
}

// p: { rows: [row of each new row] } (beam search)
async function s2sReorder(p) {
  const t = performance.now();
  const o = loadedOrt();
  for (const [name, c] of Object.entries(s2s.cache)) s2s.cache[name] = gatherRows(o, c, p.rows);
  if (s2s.mask) s2s.mask = gatherRows(o, s2s.mask, p.rows);
  // A merged decoder takes the encoder output on every call, batch for batch.
  if (state.parts.some((part) => part.name === 'decoder_model_merged')) {
    s2s.encoded = gatherRows(o, s2s.encoded, p.rows);
  }
  return { ms: performance.now() - t };
}

// Runs every part once on placeholder feeds of the real shapes, so WebGPU compiles its pipelines before
// the first real request. Returns how long that took.
async function precompile() {
  const o = loadedOrt();
  const t = performance.now();
  const g = state.generation;
  if (g) {
    // A prefill of the real length and one cached step, on token 0.
    await generateOnce({ ...g, prompt: g.prompt.map(() => 0), newTokens: Math.min(2, g.newTokens) });
  } else {
    await runAll((part) => placeholderFeeds(o, part));
  }
  return performance.now() - t;
}

// The page's one loop: `p.iterations` iterations back to back, each timed with
// performance.now(). How many, and whether more follow, the harness decides in Rust; nothing
// of WebDriver falls inside a sample. For a decoder one iteration is one generation, and its
// TTFT, prefill and decode steps come back beside the samples. With `returnOutputs`, the last
// iteration's float32 outputs (a decoder: its new tokens and where the cache stayed) too.
async function timed(p) {
  const g = state.generation;
  const samples = [];
  const generations = [];
  let last = null;
  const t0 = performance.now();
  for (let i = 0; i < p.iterations; i++) {
    const t = performance.now();
    last = g ? await generateOnce(g) : await runAll((part) => state.tensors[part.name]);
    samples.push(performance.now() - t);
    if (g) generations.push({ ttftMs: last.ttftMs, prefillMs: last.prefillMs, stepMs: last.stepMs });
  }
  const result = { samples, durationMs: performance.now() - t0, generations };
  if (p.returnOutputs && last) {
    if (g) {
      result.tokens = last.tokens;
      result.cacheLocation = last.cacheLocation;
    } else {
      result.outputs = {};
      state.parts.forEach((part, i) => {
        for (const [name, tensor] of Object.entries(last[i])) {
          if (tensor.type !== 'float32') continue;
          result.outputs[`${part.name}/${name}`] = { dims: tensor.dims, data: encodeBytes(tensor.data) };
        }
      });
    }
  }
  return result;
}

// What timing one iteration costs, ns: the loop's timing around an empty await.
async function overhead() {
  const reps = 1000;
  const spent = [];
  const t0 = performance.now();
  for (let i = 0; i < reps; i++) {
    const t = performance.now();
    await null;
    spent.push(performance.now() - t);
  }
  return ((performance.now() - t0) / reps) * 1e6;
}

async function release() {
  for (const part of state.parts) await part.session.release();
  state.parts = [];
  return true;
}

window.ia = {
  describeEnvironment, load, setFeeds, setGeneration, precompile, timed, overhead, release, logs,
  s2sEncode, s2sDecode, s2sReorder,
};
