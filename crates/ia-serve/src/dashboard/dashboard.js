// The dashboard's pages: each reads the results service's JSON routes and lays out tables and
// charts. Charts are the chart definitions of `db plot` (/api/charts/{kind}) drawn with
// Chart.js; nothing here decides what a chart shows. `window.dashboard.ready` settles when the
// page has drawn (tests and screenshots wait for it).
'use strict';

const CONFIG = window.IA_DASHBOARD;
const charts = [];

// ---- the JSON API ---------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function readToken() {
  return sessionStorage.getItem('ia-read-token') || '';
}

async function api(path, params = {}) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') url.searchParams.set(k, v);
  }
  const headers = {};
  const token = readToken();
  if (token) headers.Authorization = 'Bearer ' + token;
  const response = await fetch(url, { headers });
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  if (!response.ok) {
    const message = (body && body.error && body.error.message) || response.statusText;
    throw new ApiError(response.status, `${url.pathname}: ${message}`);
  }
  return body;
}

// ---- elements -------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

function formatValue(v) {
  if (v === null || v === undefined) return '';
  if (typeof v === 'number') {
    if (Number.isInteger(v)) return String(v);
    const a = Math.abs(v);
    return a >= 1000 ? v.toFixed(0) : a >= 1 ? v.toPrecision(4) : v.toPrecision(3);
  }
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

/// A table of rows (objects) with the given columns (all keys of the first row when none),
/// sortable by a click on a heading.
function table(rows, columns) {
  columns = columns || (rows.length ? Object.keys(rows[0]) : []);
  if (!rows.length) return el('p', { class: 'empty' }, 'No rows match.');
  const body = el('tbody');
  const fill = (ordered) => {
    body.replaceChildren(...ordered.map((r) => el('tr', { class: 'row' },
      columns.map((c) => el('td', { class: typeof r[c] === 'number' ? 'num' : null },
        formatValue(r[c]))))));
  };
  const heads = columns.map((c) => el('th', { scope: 'col', 'data-column': c }, c));
  heads.forEach((th, i) => th.addEventListener('click', () => {
    const descending = th.getAttribute('aria-sort') === 'ascending';
    heads.forEach((h) => h.removeAttribute('aria-sort'));
    th.setAttribute('aria-sort', descending ? 'descending' : 'ascending');
    const c = columns[i];
    const sign = descending ? -1 : 1;
    fill([...rows].sort((a, b) => {
      const x = a[c];
      const y = b[c];
      if (x === y) return 0;
      if (x === null || x === undefined) return 1;
      if (y === null || y === undefined) return -1;
      if (typeof x === 'number' && typeof y === 'number') return sign * (x - y);
      return sign * String(x).localeCompare(String(y));
    }));
  }));
  fill(rows);
  return el('div', { class: 'scroll' },
    el('table', { class: 'rows' }, el('thead', {}, el('tr', {}, heads)), body));
}

/// A report's table (`{heading, columns, rows}`) in the report's column order.
function tableOf(part) {
  return table(part.rows, part.columns);
}

function section(title, ...content) {
  return el('section', {}, el('h2', {}, title), ...content);
}

// ---- charts ---------------------------------------------------------------------------

function colour(i) {
  return CONFIG.palette[i % CONFIG.palette.length];
}

function chartIsEmpty(chart) {
  const b = chart.body;
  if (b.type === 'lines') return b.series.every((s) => !s.points.length);
  if (b.type === 'bars') return b.groups.every((g) => !g.bars.length);
  return !b.rows.length;
}

/// Draws a chart definition (ia_charts::Chart as JSON) into a new figure. `extra` datasets
/// (change points) are drawn over a line chart.
function drawChart(chart, extra = []) {
  const figure = el('figure', { class: 'chart', 'data-kind': chart.kind },
    el('figcaption', {}, chart.title, chart.note ? el('small', {}, ' · ' + chart.note) : null));
  const b = chart.body;
  if (chartIsEmpty(chart)) {
    figure.append(el('p', { class: 'empty' }, 'Nothing to draw for these filters.'));
    return figure;
  }
  if (b.type === 'grid') {
    const head = el('tr', {}, el('th', {}, ''), b.columns.map((c) => el('th', {}, c)));
    const rows = b.rows.map((r, i) => el('tr', {}, el('th', {}, r), b.cells[i].map((cell) =>
      el('td', { style: `background:${cell ? CONFIG.statusFill[cell] || CONFIG.statusFill.other : CONFIG.statusFill.untried}` },
        cell || ''))));
    figure.append(el('div', { class: 'scroll' }, el('table', { class: 'matrix' }, head, ...rows)));
    return figure;
  }
  if (!window.Chart) {
    figure.append(el('p', { class: 'empty' },
      'Charts need Chart.js on the server (scripts/fetch_web_assets.sh); the tables hold the same numbers.'));
    return figure;
  }
  const canvas = el('canvas', { role: 'img', 'aria-label': chart.title });
  const box = el('div', { class: 'canvas-box' }, canvas);
  figure.append(box);
  let config;
  if (b.type === 'lines') {
    const tickLabels = new Map(b.x_ticks.map(([v, label]) => [v, label]));
    const datasets = b.series.map((s, i) => ({
      label: s.name,
      data: s.points.map(([x, y]) => ({ x, y })),
      borderColor: colour(i),
      backgroundColor: colour(i),
      pointRadius: 3,
      borderWidth: 1.5,
    }));
    config = {
      type: 'line',
      data: { datasets: datasets.concat(extra) },
      options: {
        animation: false,
        maintainAspectRatio: false,
        scales: {
          x: {
            type: b.log_x ? 'logarithmic' : 'linear',
            title: { display: true, text: b.x_label },
            afterBuildTicks: (axis) => {
              if (b.x_ticks.length) axis.ticks = b.x_ticks.map(([value]) => ({ value }));
            },
            ticks: { callback: (value) => tickLabels.get(value) ?? formatValue(value) },
          },
          y: { type: b.log_y ? 'logarithmic' : 'linear', title: { display: true, text: b.y_label } },
        },
        plugins: { legend: { position: 'bottom', labels: { boxWidth: 12 } } },
      },
    };
  } else {
    const bars = b.groups.length * Math.max(1, b.series.length);
    box.style.height = `${Math.max(220, 60 + bars * 16)}px`;
    config = {
      type: 'bar',
      data: {
        labels: b.groups.map((g) => g.label),
        datasets: b.series.map((name, i) => ({
          label: name,
          backgroundColor: colour(i),
          data: b.groups.map((g) => {
            const bar = g.bars.find(([series]) => series === i);
            return bar ? bar[1] : null;
          }),
        })),
      },
      options: {
        indexAxis: 'y',
        animation: false,
        maintainAspectRatio: false,
        scales: { x: { title: { display: true, text: b.value_label } } },
        plugins: {
          legend: { position: 'bottom', labels: { boxWidth: 12 } },
          tooltip: {
            callbacks: {
              label: (ctx) => {
                const bar = b.groups[ctx.dataIndex].bars.find(([s]) => s === ctx.datasetIndex);
                return `${ctx.dataset.label}: ${bar ? bar[2] : ''}`;
              },
            },
          },
        },
      },
    };
  }
  // Chart.js sizes the canvas from its box, which must be in the document first.
  figure.draw = () => charts.push({ kind: chart.kind, chart: new window.Chart(canvas, config) });
  return figure;
}

/// Appends figures to `parent` and draws those that need a canvas.
function place(parent, ...figures) {
  for (const f of figures) {
    parent.append(f);
    if (f.draw) f.draw();
  }
}

async function chartOf(kind, params) {
  return drawChart(await api(`/api/charts/${kind}`, params));
}

/// Marks each drawn chart shows (points of line charts, bars of bar charts), by kind.
function marks() {
  const out = {};
  for (const { kind, chart } of charts) {
    let n = 0;
    chart.data.datasets.forEach((dataset, i) => {
      const meta = chart.getDatasetMeta(i);
      meta.data.forEach((element, j) => {
        const v = dataset.data[j];
        const value = v !== null && typeof v === 'object' ? v.y : v;
        if (value !== null && value !== undefined && !element.skip
            && Number.isFinite(element.x) && Number.isFinite(element.y)) n += 1;
      });
    });
    out[kind] = (out[kind] || 0) + n;
  }
  return out;
}

// ---- filters --------------------------------------------------------------------------

const FILTERS = [
  ['model', 'model (part of the name)'],
  ['class', 'class'],
  ['platform', 'platform or engine'],
  ['engine', 'engine'],
  ['precision', 'precision'],
  ['batch_size', 'batch size'],
  ['run', 'run'],
  ['since', 'since (UTC)'],
  ['until', 'until (UTC)'],
  ['fingerprint', 'machine fingerprint'],
];

function currentParams(names) {
  const q = new URLSearchParams(location.search);
  const out = {};
  for (const n of names) if (q.get(n)) out[n] = q.get(n);
  return out;
}

/// A filter form over `names`; submitting it puts the values in the address and redraws.
function filterForm(names, params, redraw) {
  const inputs = FILTERS.filter(([n]) => names.includes(n)).map(([n, label]) =>
    el('label', {}, label, el('input', { name: n, value: params[n] || '' })));
  const form = el('form', { class: 'filters', id: 'filters' }, inputs,
    el('button', { type: 'submit' }, 'Apply'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const next = {};
    for (const input of form.querySelectorAll('input')) {
      if (input.value.trim()) next[input.name] = input.value.trim();
    }
    history.replaceState(null, '', `${location.pathname}?${new URLSearchParams(next)}`);
    run(() => redraw(next));
  });
  return form;
}

// ---- pages ----------------------------------------------------------------------------

const RESULT_COLUMNS = ['result_id', 'run_id', 'model', 'class', 'platform', 'engine',
  'precision', 'batch_size', 'status', 'latency_p50_ms', 'latency_p99_ms',
  'throughput_items_per_s', 'peak_rss_mb', 'weights', 'host', 'created_at', 'error'];

async function overview(root) {
  const [runs, summary, hardware] = await Promise.all([
    api('/api/runs', { limit: 10000 }),
    api('/api/reports/summary/sections'),
    api('/api/hardware'),
  ]);
  const latest = new Map();
  for (const r of runs) if (!latest.has(r.host)) latest.set(r.host, r);
  const part = (heading) => summary.find((s) => s.heading === heading) || { rows: [] };
  const failures = part('Failures and unavailable platforms');
  const machines = new Set(hardware.map((h) => h.fingerprint));
  root.replaceChildren(
    el('div', { class: 'cards' },
      el('div', { class: 'card' }, el('b', {}, runs.length), 'runs'),
      el('div', { class: 'card' }, el('b', {}, machines.size), 'machines'),
      el('div', { class: 'card' }, el('b', {}, runs.reduce((n, r) => n + r.results, 0)), 'results'),
      el('div', { class: 'card' }, el('b', {}, failures.rows.length), 'failed or unavailable')),
    section('Latest run per machine', table([...latest.values()],
      ['host', 'run_id', 'started_at', 'status', 'results', 'submitted_by', 'tool_version'])),
    section('Best platform per model', tableOf(part('Best platform per model and shape'))),
    section('Failures and unavailable platforms', tableOf(failures)),
  );
}

async function results(root) {
  const names = FILTERS.map(([n]) => n);
  const draw = async (params) => {
    const [rows, latency, throughput] = await Promise.all([
      api('/api/results', { ...params, limit: 1000 }),
      chartOf('latency-vs-batch', params),
      chartOf('throughput-by-platform', params),
    ]);
    charts.length = 0;
    const figures = el('div', { class: 'charts' });
    root.replaceChildren(filterForm(names, params, draw), figures,
      section('Results', el('p', { class: 'note', id: 'result-count' },
        `${rows.length} result${rows.length === 1 ? '' : 's'}${rows.length === 1000 ? ' (the newest 1000)' : ''}`),
      table(rows, RESULT_COLUMNS)));
    place(figures, latency, throughput);
  };
  await draw(currentParams(names));
}

async function model(root) {
  const all = await api('/api/results', { limit: 10000 });
  const models = [...new Set(all.map((r) => r.model))].sort();
  const params = currentParams(['model']);
  const chosen = params.model && models.includes(params.model) ? params.model : models[0];
  const select = el('select', { id: 'model-select' },
    models.map((m) => el('option', { value: m, selected: m === chosen }, m)));
  select.addEventListener('change', () => {
    history.replaceState(null, '', `${location.pathname}?${new URLSearchParams({ model: select.value })}`);
    run(() => model(root));
  });
  if (!chosen) {
    root.replaceChildren(el('p', { class: 'empty' }, 'No results stored yet.'));
    return;
  }
  const filter = { model: chosen };
  const [performance, ...figs] = await Promise.all([
    api('/api/reports/performance/sections', filter),
    chartOf('latency-vs-batch', filter),
    chartOf('throughput-by-platform', filter),
    chartOf('memory', filter),
  ]);
  charts.length = 0;
  const figures = el('div', { class: 'charts' });
  root.replaceChildren(el('label', {}, 'Model ', select), figures,
    section('Latest result on every platform', tableOf(performance[0])));
  place(figures, ...figs);
}

async function compatibility(root) {
  const m = await api('/api/compatibility');
  const cells = new Map(m.cells.map((c) => [`${c.class}\u0000${c.platform}`, c]));
  const head = el('tr', {}, el('th', {}, 'class'), m.platforms.map((p) => el('th', {}, p)));
  const rows = m.classes.map((cls) => el('tr', {}, el('th', { scope: 'row' }, cls),
    m.platforms.map((p) => {
      const c = cells.get(`${cls}\u0000${p}`);
      if (!c) {
        return el('td', { class: 'untried', 'data-status': 'untried', title: 'not tried',
          style: `background:${CONFIG.statusFill.untried}` }, '–');
      }
      const hover = [`${c.models} model${c.models === 1 ? '' : 's'}: ${c.model_names}`,
        `passed ${c.passed}, failed ${c.failed}, unavailable ${c.unavailable}`];
      if (c.reasons) hover.push(c.reasons);
      return el('td', { 'data-status': c.status, title: hover.join('\n'),
        style: `background:${CONFIG.statusFill[c.status] || CONFIG.statusFill.other}` }, c.status);
    })));
  const legend = el('p', { class: 'legend' },
    ['pass', 'fail', 'unavailable', 'untried'].map((s) =>
      el('span', { style: `background:${CONFIG.statusFill[s]}` }, s === 'untried' ? 'not tried' : s)),
    'Best latest status of the class\u2019s models on each platform; hover a cell for the models and the reasons.');
  root.replaceChildren(legend,
    el('div', { class: 'scroll' }, el('table', { class: 'matrix', id: 'matrix' }, head, ...rows)));
}

async function trends(root) {
  const names = ['model', 'platform'];
  const draw = async (params) => {
    const metric = new URLSearchParams(location.search).get('metric') || 'p50';
    const overall = await api('/api/charts/trend', params);
    // The analysis answers 404 when nothing matches: ask only when there is a series.
    const series = chartIsEmpty(overall) ? []
      : await api('/api/analysis/trend', { ...params, metric });
    charts.length = 0;
    const figures = el('div', { class: 'charts' });
    const changes = [];
    // Series with change points first, then the longest; one run makes no trend.
    const drawn = series.filter((s) => s.points.length > 1)
      .sort((a, b) => b.change_points.length - a.change_points.length
        || b.points.length - a.points.length)
      .slice(0, 12);
    const left = series.length - drawn.length;
    const perSeries = drawn.map((s) => {
      const name = s.label;
      const at = (p) => Date.parse(p.started_at.replace(' ', 'T') + 'Z') / 1000;
      const points = s.points.map((p) => [at(p), p.value]);
      const marks = s.change_points.map((c) => {
        changes.push({ ...c, series: name });
        const first = s.points.find((p) => p.run_id === c.first_after.run_id) || c.first_after;
        return { x: at(first), y: first.value ?? c.after_mean };
      });
      const chart = {
        kind: 'trend',
        title: name,
        note: `${s.metric}; ${s.change_points.length} change point${s.change_points.length === 1 ? '' : 's'} marked`,
        body: {
          type: 'lines', x_label: 'run started (UTC)', y_label: s.metric,
          log_x: false, log_y: false,
          x_ticks: s.points.map((p) => [at(p), p.started_at.slice(0, 16)])
            .filter((_, i, all) => i % Math.ceil(all.length / 6) === 0),
          series: [{ name, points }],
        },
      };
      return drawChart(chart, marks.length ? [{
        label: 'change point', data: marks, showLine: false, pointStyle: 'triangle',
        pointRadius: 9, borderColor: '#D55E00', backgroundColor: '#D55E00',
      }] : []);
    });
    root.replaceChildren(filterForm(names, params, draw), figures,
      section('Every series', left ? el('p', { class: 'note' },
        `${left} series with a single run, or beyond the twelfth, not drawn.`) : null,
      el('div', { id: 'series-charts', class: 'charts' })),
      section('Change points', table(changes.map((c) => ({
        series: c.series, direction: c.direction, before_mean: c.before_mean,
        after_mean: c.after_mean, magnitude: c.magnitude, p_value: c.p_value,
        last_before_run: c.last_before && c.last_before.run_id,
        first_after_run: c.first_after && c.first_after.run_id,
      })))));
    place(figures, drawChart(overall));
    place(root.querySelector('#series-charts'), ...perSeries);
  };
  await draw(currentParams(names));
}

async function web(root) {
  const [chart, report] = await Promise.all([
    chartOf('web-vs-native', {}),
    api('/api/reports/web/sections'),
  ]);
  charts.length = 0;
  root.replaceChildren();
  place(root, chart);
  root.append(section('Every browser result beside the native platforms', tableOf(report[0])));
}

async function hardware(root) {
  const rows = await api('/api/hardware');
  const hosts = [...new Set(rows.map((r) => r.host))];
  root.replaceChildren(
    el('p', { class: 'note' }, `${hosts.length} machine${hosts.length === 1 ? '' : 's'}, ${rows.length} platform entries`),
    table(rows, ['host', 'fingerprint', 'platform', 'device', 'cpu_model', 'results', 'hardware_id']));
}

const PAGES = { overview, results, model, compatibility, trends, web, hardware };

// ---- start ----------------------------------------------------------------------------

let settle;
window.dashboard = {
  ready: null,
  marks,
  rows: () => document.querySelectorAll('#page tr.row').length,
};

/// Runs a drawing step; `dashboard.ready` settles when it is done.
function run(step) {
  const root = document.getElementById('page');
  root.setAttribute('aria-busy', 'true');
  window.dashboard.ready = new Promise((resolve) => { settle = resolve; });
  Promise.resolve().then(step).catch((e) => {
    const hint = e.status === 401 ? ' Enter a read token above.' : '';
    root.replaceChildren(el('p', { class: 'error' }, `${e.message}.${hint}`));
  }).finally(() => {
    root.setAttribute('aria-busy', 'false');
    settle();
  });
}

document.getElementById('token').value = readToken();
document.getElementById('token-form').addEventListener('submit', (event) => {
  event.preventDefault();
  sessionStorage.setItem('ia-read-token', document.getElementById('token').value.trim());
  location.reload();
});
run(() => PAGES[CONFIG.page](document.getElementById('page')));
