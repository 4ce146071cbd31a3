// The coordinator's dashboard: plain JavaScript, no library. Two views, chosen by the URL hash:
//   #/            the cluster (coordinator, parameter servers, workers) and the jobs, with a submit form
//   #/jobs/ID     one job: progress, loss and accuracy curves, per-worker step phases, epochs
// Live data comes from the coordinator's server-sent events (GET /api/events, GET /api/jobs/ID/events),
// read with fetch rather than EventSource so that a 401 (expired session) can be told apart from a dropped connection.
'use strict';

// ---- Access: the page itself loads only after log-in (the coordinator answers 401 with its log-in
// form otherwise), and the session cookie it set goes with every request of this page. A 401 later
// means the session has expired: reloading shows the log-in form again.
function needLogin() {
  setConnection('error', 'log in');
  const last = Number(sessionStorage.getItem('login-reload') || 0);
  if (Date.now() - last > 5000) {  // never a reload loop
    sessionStorage.setItem('login-reload', String(Date.now()));
    window.location.reload();
  }
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  if (response.status === 401) { needLogin(); throw new Error('not logged in'); }
  const text = await response.text();
  const body = text ? JSON.parse(text) : null;
  if (!response.ok) throw new Error(body && body.errors ? body.errors.join('\n') : `${response.status} ${response.statusText}`);
  return body;
}

// Reads a server-sent event stream; calls onEvent(type, data) for each event. Resolves when the stream ends.
async function stream(path, onEvent, signal) {
  const response = await fetch(path, { headers: { Accept: 'text/event-stream' }, signal });
  if (response.status === 401) { needLogin(); return false; }
  if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
  setConnection('live', 'live');
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return true;
    buffer += value;
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let type = 'message', data = '';
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) type = line.slice(6).trim();
        else if (line.startsWith('data:')) data += line.slice(5).trim();
      }
      if (data) onEvent(type, JSON.parse(data));
    }
  }
}

// Follows a stream, reconnecting after a pause until the view changes (signal) or the stream ends for good.
async function follow(path, onEvent, signal, reconnect = true) {
  while (!signal.aborted) {
    try {
      const ended = await stream(path, onEvent, signal);
      if (!reconnect || ended === false) return;
    } catch (e) {
      if (signal.aborted) return;
      setConnection('error', 'disconnected, retrying');
    }
    await new Promise(resolve => setTimeout(resolve, 1000));
  }
}

function setConnection(state, text) {
  const element = document.getElementById('connection');
  element.dataset.state = state;
  element.textContent = text;
}

// ---- Formatting helpers ----
const esc = s => String(s ?? '').replace(/[&<>"']/g, c => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
const fixed = (x, digits = 1) => (x == null || !isFinite(x)) ? '–' : Number(x).toFixed(digits);
const thousands = x => (x == null || !isFinite(x)) ? '–' : Math.round(x).toLocaleString('en-US');
const percent = x => (x == null) ? '–' : `${(x * 100).toFixed(2)} %`;
const state = s => `<span class="state state-${esc(s)}">${esc(s)}</span>`;
const bytes = n => n >= 1 << 30 ? `${(n / (1 << 30)).toFixed(2)} GiB` : n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MiB` : `${thousands(n / 1024)} KiB`;
function ago(seconds) {
  if (seconds == null) return '–';
  return seconds < 1 ? 'just now' : seconds < 120 ? `${seconds.toFixed(0)} s ago` : `${(seconds / 60).toFixed(0)} min ago`;
}
function jobFraction(job) {
  if (job.state === 'succeeded') return 1;
  const p = job.progress;
  if (!p || !p.stepsTotal) return 0;
  return Math.min(1, (p.epoch + p.stepsDone / p.stepsTotal) / p.epochs);
}

// ---- SVG line chart ----
const svgNs = 'http://www.w3.org/2000/svg';
function lineChart(svg, series, { xLabel, yLabel, yMin, yMax, xMax }) {
  const width = svg.clientWidth || 600, height = svg.clientHeight || 260;
  const pad = { left: 52, right: 12, top: 10, bottom: 34 };
  const all = series.flatMap(s => s.points);
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.replaceChildren();
  svg.dataset.points = all.length;
  if (all.length === 0) { text(svg, width / 2, height / 2, 'waiting for data', 'middle'); return; }
  const xs = all.map(p => p[0]), ys = all.map(p => p[1]);
  let x0 = Math.min(0, ...xs), x1 = Math.max(...xs, xMax ?? 0, x0 + 1e-9);
  let y0 = yMin ?? Math.min(...ys), y1 = yMax ?? Math.max(...ys);
  if (y1 - y0 < 1e-9) { y0 -= 0.5; y1 += 0.5; }
  const sx = x => pad.left + (x - x0) / (x1 - x0) * (width - pad.left - pad.right);
  const sy = y => height - pad.bottom - (y - y0) / (y1 - y0) * (height - pad.top - pad.bottom);
  for (let i = 0; i <= 4; i++) {
    const y = y0 + (y1 - y0) * i / 4;
    line(svg, pad.left, sy(y), width - pad.right, sy(y), 'axis');
    text(svg, pad.left - 6, sy(y) + 4, y.toFixed(y1 - y0 < 0.1 ? 3 : 2), 'end');
  }
  for (let i = 0; i <= 5; i++) {
    const x = x0 + (x1 - x0) * i / 5;
    text(svg, sx(x), height - pad.bottom + 14, x.toFixed(x1 - x0 <= 1 ? 2 : x1 - x0 <= 5 ? 1 : 0), 'middle');
  }
  text(svg, (pad.left + width - pad.right) / 2, height - 4, xLabel, 'middle');
  const label = text(svg, 12, (pad.top + height - pad.bottom) / 2, yLabel, 'middle');
  label.setAttribute('transform', `rotate(-90 12 ${(pad.top + height - pad.bottom) / 2})`);
  for (const s of series) {
    if (s.points.length === 0) continue;
    const path = document.createElementNS(svgNs, 'polyline');
    path.setAttribute('points', s.points.map(p => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(' '));
    path.setAttribute('fill', 'none');
    path.setAttribute('stroke', s.color);
    path.setAttribute('stroke-width', s.width ?? 1.5);
    path.setAttribute('class', `series series-${s.name}`);
    path.dataset.points = s.points.length;
    svg.appendChild(path);
    if (s.dots) for (const p of s.points) {
      const dot = document.createElementNS(svgNs, 'circle');
      dot.setAttribute('cx', sx(p[0])); dot.setAttribute('cy', sy(p[1])); dot.setAttribute('r', 3.5);
      dot.setAttribute('fill', s.color);
      svg.appendChild(dot);
    }
  }
}
function line(svg, x1, y1, x2, y2, cls) {
  const l = document.createElementNS(svgNs, 'line');
  Object.entries({ x1, y1, x2, y2 }).forEach(([k, v]) => l.setAttribute(k, v));
  l.setAttribute('class', cls);
  svg.appendChild(l);
}
function text(svg, x, y, content, anchor) {
  const t = document.createElementNS(svgNs, 'text');
  t.setAttribute('x', x); t.setAttribute('y', y); t.setAttribute('text-anchor', anchor);
  t.textContent = content;
  svg.appendChild(t);
  return t;
}

// ---- Overview: cluster and jobs ----
function renderOverview(view) {
  view.innerHTML = `
    <section class="card"><h2>Cluster</h2>
      <table id="members"><thead><tr><th>Role</th><th>Id</th><th>Host / address</th><th>Device</th><th>State</th><th>Job</th><th>Last heartbeat</th><th>Metrics</th></tr></thead><tbody></tbody></table>
    </section>
    <section class="card"><h2>Jobs</h2>
      <table id="jobs"><thead><tr><th>Job</th><th>State</th><th>Model</th><th>Workers</th><th>Progress</th><th class="num">Loss</th><th class="num">Samples/s</th><th class="num">Test accuracy</th><th></th></tr></thead><tbody></tbody></table>
    </section>
    <section class="card"><h2>Submit a job</h2>
      <form class="submit" id="submit">
        <label>Model <select name="model"><option>cnn</option><option>mlp</option></select></label>
        <label>Dataset <select name="dataset"><option>fashion-mnist</option><option>mnist</option></select></label>
        <label>Epochs <input name="epochs" type="number" min="1" value="2" size="4"></label>
        <label>Workers <input name="workers" type="number" min="1" value="2" size="4"></label>
        <label>Batch size <input name="batchSize" type="number" min="1" value="64" size="5"></label>
        <label>Optimizer <select name="optimizer"><option>adam</option><option>sgd</option></select></label>
        <label>Learning rate <input name="learningRate" type="number" step="any" value="0.001" size="7"></label>
        <label>Train limit <input name="trainLimit" type="number" min="0" value="0" size="7"></label>
        <label>Test limit <input name="testLimit" type="number" min="0" value="0" size="7"></label>
        <button type="submit">Submit</button>
      </form>
      <p id="submit-result" class="muted"></p>
    </section>`;
  view.querySelector('#submit').addEventListener('submit', submitJob);
  view.querySelector('#jobs').addEventListener('click', cancelClicked);
}

function updateOverview(view, { members, jobs }) {
  const rows = [];
  const c = members.coordinator;
  rows.push(`<tr data-testid="member-row" data-role="coordinator"><td>coordinator</td><td>–</td><td>${esc(c.host)} · gRPC ${esc(c.grpcUrl)} · HTTP ${esc(c.httpUrl)}</td><td>–</td><td>${state('up')}</td><td>–</td><td>up since ${esc(new Date(c.startedAt).toLocaleTimeString())}</td><td><a href="/metrics">/metrics</a></td></tr>`);
  for (const s of members.parameterServers)
    rows.push(`<tr data-testid="member-row" data-role="parameter-server" data-id="${esc(s.id)}"><td>parameter server</td><td>${esc(s.id)}</td><td>${esc(s.address)}</td><td>–</td><td>${state(s.state)}</td><td>${s.jobsHeld} held · ${bytes(s.pushedBytes)} in · ${bytes(s.pulledBytes)} out</td><td>${s.lastSeen ? esc(new Date(s.lastSeen).toLocaleTimeString()) : '–'}</td><td>${s.httpUrl ? `<a href="${esc(s.httpUrl)}/metrics">/metrics</a>` : '–'}</td></tr>`);
  for (const w of members.workers)
    rows.push(`<tr data-testid="member-row" data-role="worker" data-id="${esc(w.id)}"><td>worker</td><td>${esc(w.id)}</td><td>${esc(w.host)} (pid ${w.processId})</td><td>${esc(w.deviceDetail || w.device)}</td><td>${state(w.state)}</td><td>${w.jobId ? `<a href="#/jobs/${esc(w.jobId)}">${esc(w.jobId)}</a> rank ${w.rank}` : '–'}</td><td>${ago(w.heartbeatAgeSeconds)}</td><td>${w.httpUrl ? `<a href="${esc(w.httpUrl)}/metrics">/metrics</a>` : '–'}</td></tr>`);
  view.querySelector('#members tbody').innerHTML = rows.join('');

  view.querySelector('#jobs tbody').innerHTML = jobs.map(j => {
    const p = j.progress, last = j.epochs[j.epochs.length - 1];
    const open = j.state === 'queued' || j.state === 'running';
    return `<tr data-testid="job-row" data-id="${esc(j.id)}"><td><a href="#/jobs/${esc(j.id)}">${esc(j.id)}</a></td><td>${state(j.state)}</td><td>${esc(j.spec.model)} on ${esc(j.spec.dataset)}</td><td>${j.spec.workers}</td>
      <td><div class="progress"><div style="width:${(jobFraction(j) * 100).toFixed(1)}%"></div></div></td>
      <td class="num">${p ? fixed(p.loss, 4) : '–'}</td><td class="num">${p ? thousands(p.samplesPerSecond) : '–'}</td><td class="num">${last ? percent(last.accuracy) : '–'}</td>
      <td>${open ? `<button class="danger" data-cancel="${esc(j.id)}">Cancel</button>` : ''}</td></tr>`;
  }).join('') || '<tr><td colspan="9" class="muted">no jobs yet</td></tr>';
}

async function submitJob(e) {
  e.preventDefault();
  const f = new FormData(e.target), n = name => Number(f.get(name));
  const spec = {
    model: f.get('model'), dataset: f.get('dataset'), epochs: n('epochs'), workers: n('workers'), batchSize: n('batchSize'),
    optimizer: { kind: f.get('optimizer'), learningRate: n('learningRate') }, trainLimit: n('trainLimit'), testLimit: n('testLimit'),
  };
  const result = document.getElementById('submit-result');
  try {
    const job = await api('/api/jobs', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(spec) });
    result.className = 'muted';
    result.innerHTML = `Submitted <a href="#/jobs/${esc(job.id)}">${esc(job.id)}</a> (${esc(job.state)}).`;
  } catch (error) {
    result.className = 'error';
    result.textContent = error.message;
  }
}

async function cancelClicked(e) {
  const id = e.target.dataset && e.target.dataset.cancel;
  if (!id) return;
  e.target.disabled = true;
  try { await api(`/api/jobs/${encodeURIComponent(id)}/cancel`, { method: 'POST' }); }
  catch (error) { alert(error.message); }
}

// ---- One job ----
function renderJob(view, id) {
  view.innerHTML = `
    <section class="card">
      <div style="display:flex;align-items:center;gap:1rem"><h1>${esc(id)}</h1><span id="job-state"></span><span id="job-spec" class="muted"></span>
        <span style="margin-left:auto"><a href="/api/jobs/${esc(id)}/timeline" download="${esc(id)}-timeline.json">Timeline (Chrome trace)</a>
        <button class="danger" id="job-cancel" hidden>Cancel</button></span></div>
      <p id="job-error" class="error"></p>
      <div class="stats">
        <div class="stat"><div class="value" id="job-epoch">–</div><div class="label">epoch</div></div>
        <div class="stat"><div class="value" id="job-step">–</div><div class="label">step of epoch</div></div>
        <div class="stat"><div class="value" id="job-rate">–</div><div class="label">samples/s</div></div>
        <div class="stat"><div class="value" id="job-loss">–</div><div class="label">recent training loss</div></div>
        <div class="stat"><div class="value" id="job-accuracy">–</div><div class="label">test accuracy</div></div>
        <div class="stat"><div class="value" id="job-rejected">–</div><div class="label">rejected gradients (refused pushes)</div></div>
      </div>
      <div class="progress" style="margin-top:.6rem"><div id="job-progress" style="width:0"></div></div>
    </section>
    <div class="grid2">
      <section class="card"><h2>Loss</h2>
        <div class="legend"><span><i style="background:#2f6fed"></i>training, one line per rank</span><span><i style="background:#d64545"></i>test (per epoch)</span></div>
        <svg class="chart" id="loss-chart"></svg></section>
      <section class="card"><h2>Test accuracy</h2><svg class="chart" id="accuracy-chart"></svg></section>
    </div>
    <section class="card"><h2>Step time per worker <span class="muted">(mean ms per step)</span></h2>
      <div class="legend"><span><i class="phase-compute"></i>compute</span><span><i class="phase-push"></i>push</span><span><i class="phase-wait"></i>wait</span><span><i class="phase-pull"></i>pull</span></div>
      <table id="ranks"><thead><tr><th>Rank</th><th>Worker</th><th class="num">Steps</th><th class="num">Compute</th><th class="num">Push</th><th class="num">Wait</th><th class="num">Pull</th><th class="num">Step</th><th>Split</th></tr></thead><tbody></tbody></table>
    </section>
    <section class="card"><h2>Epochs</h2>
      <table id="epochs"><thead><tr><th>Epoch</th><th class="num">Train loss</th><th class="num">Test loss</th><th class="num">Accuracy</th><th class="num">Precision</th><th class="num">Recall</th><th class="num">F1</th><th class="num">Samples/s</th><th class="num">Seconds</th></tr></thead><tbody></tbody></table>
    </section>`;
  view.querySelector('#job-cancel').addEventListener('click', async e => {
    e.target.disabled = true;
    try { await api(`/api/jobs/${encodeURIComponent(id)}/cancel`, { method: 'POST' }); } catch (error) { alert(error.message); }
  });
}

function updateJob(view, { job, telemetry }) {
  const p = job.progress, last = job.epochs[job.epochs.length - 1];
  view.querySelector('#job-state').innerHTML = state(job.state);
  view.querySelector('#job-spec').textContent = `${job.spec.model} on ${job.spec.dataset}, ${job.spec.workers} worker(s), batch ${job.spec.batchSize}, ${job.spec.optimizer.kind} lr ${job.spec.optimizer.learningRate}`;
  view.querySelector('#job-error').textContent = job.error || '';
  view.querySelector('#job-cancel').hidden = !(job.state === 'queued' || job.state === 'running');
  view.querySelector('#job-epoch').textContent = p ? `${p.epoch + 1} / ${p.epochs}` : `– / ${job.spec.epochs}`;
  view.querySelector('#job-step').textContent = p ? `${p.stepsDone} / ${p.stepsTotal}` : '–';
  view.querySelector('#job-rate').textContent = p ? thousands(p.samplesPerSecond) : '–';
  view.querySelector('#job-loss').textContent = p ? fixed(p.loss, 4) : '–';
  view.querySelector('#job-accuracy').textContent = last ? percent(last.accuracy) : '–';
  // The servers' count while they hold the job; the workers' reports, kept by the coordinator, once it ended.
  view.querySelector('#job-rejected').textContent = `${Math.max(telemetry.rejectedGradients, job.rejectedGradients)} (${telemetry.refusedPushes})`;
  view.querySelector('#job-progress').style.width = `${(jobFraction(job) * 100).toFixed(1)}%`;

  // One training-loss line per rank (each rank reports the loss of its own samples), then the test loss per epoch.
  const rankBlues = ['#2f6fed', '#6f9bff', '#1c47a8', '#9bb9ff', '#3d5c99', '#5a87e6'];
  const trainSeries = [...new Set(telemetry.loss.map(l => l.rank))].sort((a, b) => a - b).map(rank => ({
    name: `train-rank-${rank}`, color: rankBlues[rank % rankBlues.length],
    points: telemetry.loss.filter(l => l.rank === rank).map(l => [l.epoch, l.loss]).sort((a, b) => a[0] - b[0]),
  }));
  lineChart(view.querySelector('#loss-chart'), [
    ...trainSeries,
    { name: 'test', color: '#d64545', width: 2, dots: true, points: job.epochs.map(e => [e.epoch + 1, e.testLoss]) },
  ], { xLabel: 'epoch', yLabel: 'loss', yMin: 0, xMax: job.spec.epochs });
  lineChart(view.querySelector('#accuracy-chart'), [
    { name: 'accuracy', color: '#25a36f', width: 2, dots: true, points: job.epochs.map(e => [e.epoch + 1, e.accuracy * 100]) },
  ], { xLabel: 'epoch', yLabel: 'test accuracy (%)', xMax: job.spec.epochs });

  const longest = Math.max(1e-9, ...telemetry.ranks.map(r => r.stepMillis));
  const segment = (phase, ms) => `<span class="phase-${phase}" title="${phase} ${fixed(ms, 2)} ms" style="width:${(ms / longest * 100).toFixed(2)}%"></span>`;
  view.querySelector('#ranks tbody').innerHTML = telemetry.ranks.map(r => `
    <tr data-testid="rank-row" data-rank="${r.rank}" data-worker="${esc(r.workerId)}" data-slowest="${r.slowest}" class="${r.slowest ? 'slowest' : ''}">
      <td>${r.rank}${r.slowest ? '<span class="badge">slowest</span>' : ''}</td><td>${esc(r.workerId)}</td><td class="num">${thousands(r.steps)}</td>
      <td class="num">${fixed(r.computeMillis, 2)}</td><td class="num">${fixed(r.pushMillis, 2)}</td><td class="num">${fixed(r.waitMillis, 2)}</td><td class="num">${fixed(r.pullMillis, 2)}</td><td class="num">${fixed(r.stepMillis, 2)}</td>
      <td><div class="bar">${segment('compute', r.computeMillis)}${segment('push', r.pushMillis)}${segment('wait', r.waitMillis)}${segment('pull', r.pullMillis)}</div></td></tr>`).join('')
    || '<tr><td colspan="9" class="muted">no steps reported yet</td></tr>';

  view.querySelector('#epochs tbody').innerHTML = job.epochs.map(e => `<tr><td>${e.epoch + 1}</td><td class="num">${fixed(e.trainLoss, 4)}</td><td class="num">${fixed(e.testLoss, 4)}</td>
    <td class="num">${percent(e.accuracy)}</td><td class="num">${fixed(e.precision, 4)}</td><td class="num">${fixed(e.recall, 4)}</td><td class="num">${fixed(e.f1, 4)}</td>
    <td class="num">${thousands(e.samplesPerSecond)}</td><td class="num">${fixed(e.seconds, 1)}</td></tr>`).join('')
    || '<tr><td colspan="9" class="muted">no epoch finished yet</td></tr>';
}

// ---- Routing ----
let current = null;
function route() {
  if (current) current.abort();
  current = new AbortController();
  const view = document.getElementById('view');
  const match = location.hash.match(/^#\/jobs\/(.+)$/);
  if (match) {
    const id = decodeURIComponent(match[1]);
    renderJob(view, id);
    // The job stream ends once the job is over (after one last event); no reconnect then.
    follow(`/api/jobs/${encodeURIComponent(id)}/events`, (_, data) => updateJob(view, data), current.signal, false)
      .then(() => { if (!current.signal.aborted) setConnection('live', 'job over'); });
  } else {
    renderOverview(view);
    follow('/api/events', (_, data) => updateOverview(view, data), current.signal);
  }
}
window.addEventListener('hashchange', route);
route();
