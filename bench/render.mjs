// Renderer benchmark: DM.Renderer (web/assets/render.js) in Debian's Chromium, fed a steady
// stream of danmaku, measuring what a viewer would notice: frame rate, dropped frames, and
// whether the page's memory stays flat.
//
//   node bench/render.mjs [--rate 300] [--seconds 60] [--max 150] [--width 1280] [--height 720]
//                         [--server http://127.0.0.1:7100]
//
// Without --server the danmaku are made in the page (a local feed: 300/s in batches every
// 20 ms, as a busy room's coalesced frames arrive), and the page with the renderer is served
// from web/assets by a small node server: it measures the renderer alone. With --server the
// page is that server's OBS overlay (/overlay/bench-render?max=MAX) and this script sends the
// danmaku to the room over HTTP (the server must exempt loopback from its rate limits, e.g.
// `[limits] exempt_ips = ["127.0.0.0/8"]`): it measures the whole path, server included.
//
// Prints one JSON object: frames and fps (requestAnimationFrame callbacks), long frames (gaps
// over 1.5 x 16.7 ms) and dropped frames (the vsyncs those gaps missed), the renderer's own
// script time per frame, the JS heap after a forced garbage collection (CDP
// HeapProfiler.collectGarbage, then Performance.getMetrics JSHeapUsedSize) at the start, once
// the stage is full (a sixth into the run) and at the end, DOM nodes, the renderer's counters
// and the machine's load average (other work on the machine shows as dropped frames).
import http from 'node:http';
import os from 'node:os';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, '../tests/clients/package.json'));
const { chromium } = require('playwright-core');

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc), [])
);
const rate = Number(args.rate || 300);
const seconds = Number(args.seconds || 60);
const max = Number(args.max || 150);
const width = Number(args.width || 1280);
const height = Number(args.height || 720);
const server = args.server || null;
const FRAME_MS = 1000 / 60;

const TEXTS = ['666', '哈哈哈哈哈', 'first!', '弹幕护体 🎉', 'this scene is so good', '前方高能', 'lol', 'GG WP', '草', 'こんにちは世界', 'wow 🔥🔥🔥', 'a somewhat longer comment that takes more room'];

// The local page: the renderer on a full-window stage, like the overlay.
async function localServer() {
  const assets = path.join(here, '../web/assets');
  const page = `<!doctype html><meta charset="utf-8"><title>render bench</title>
<link rel="stylesheet" href="/assets/danmaku.css"><link rel="stylesheet" href="/assets/overlay.css">
<body><div id="stage" class="overlay-stage"></div><script src="/assets/render.js"></script>`;
  const srv = http.createServer((req, res) => {
    const name = req.url.startsWith('/assets/') ? path.basename(req.url.split('?')[0]) : null;
    if (name && fs.existsSync(path.join(assets, name))) {
      res.setHeader('content-type', name.endsWith('.css') ? 'text/css' : 'text/javascript');
      res.end(fs.readFileSync(path.join(assets, name)));
    } else {
      res.setHeader('content-type', 'text/html; charset=utf-8');
      res.end(page);
    }
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  return srv;
}

async function heap(cdp) {
  await cdp.send('HeapProfiler.collectGarbage');
  const { metrics } = await cdp.send('Performance.getMetrics');
  const get = (name) => metrics.find((m) => m.name === name)?.value ?? null;
  return { js_heap_used_bytes: get('JSHeapUsedSize'), dom_nodes: get('Nodes'), listeners: get('JSEventListeners') };
}

const local = server ? null : await localServer();
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: ['--no-sandbox'] });
try {
  const page = await browser.newPage({ viewport: { width, height } });
  const url = server ? `${server}/overlay/bench-render?max=${max}` : `http://127.0.0.1:${local.address().port}/`;
  await page.goto(url);
  if (server) await page.waitForFunction(() => document.documentElement.dataset.state === 'live');
  else await page.evaluate((max) => (window.renderer = new DM.Renderer(document.getElementById('stage'), { fontSize: 25, maxOnScreen: max })), max);
  // Time spent in the renderer's frame callback (script only; style, layout and paint come
  // after it): tells the renderer's own cost apart from a busy machine's.
  await page.evaluate(() => {
    const r = window.renderer || DM.overlay.renderer;
    const tick = r.tick;
    window.__tick = { ms: 0, n: 0, worst: 0 };
    r.tick = (t) => {
      const t0 = performance.now();
      tick(t);
      const ms = performance.now() - t0;
      window.__tick.ms += ms;
      window.__tick.n++;
      window.__tick.worst = Math.max(window.__tick.worst, ms);
    };
  });
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('Performance.enable');
  const start = await heap(cdp);

  // Frame timing, recorded in the page from requestAnimationFrame.
  await page.evaluate(() => {
    window.__frames = { n: 0, long: 0, dropped: 0, worst: 0, last: 0 };
    const f = window.__frames;
    const step = (t) => {
      if (f.last) {
        const gap = t - f.last;
        if (gap > 1.5 * (1000 / 60)) {
          f.long++;
          f.dropped += Math.round(gap / (1000 / 60)) - 1;
        }
        f.worst = Math.max(f.worst, gap);
      }
      f.last = t;
      f.n++;
      if (!f.stop) requestAnimationFrame(step);
    };
    requestAnimationFrame(step);
  });

  const t0 = Date.now();
  let sent = 0;
  let failed = 0;
  // The heap once the stage is full (after a sixth of the run): growth from there on is what
  // a long stream would accumulate. Its forced GC costs one long frame.
  const warm = new Promise((r) => setTimeout(r, (seconds * 1000) / 6)).then(() => heap(cdp));
  if (server) {
    // 20 ms ticks, each sending what the rate owes by then.
    const agent = new http.Agent({ keepAlive: true, maxSockets: 16 });
    const post = (body) =>
      new Promise((resolve) => {
        const req = http.request(`${server}/api/v1/rooms/bench-render/danmaku`, { method: 'POST', agent }, (res) => {
          res.resume();
          if (res.statusCode !== 201) failed++;
          resolve();
        });
        req.on('error', () => {
          failed++;
          resolve();
        });
        req.end(JSON.stringify(body));
      });
    while (Date.now() - t0 < seconds * 1000) {
      const owed = Math.floor(((Date.now() - t0) / 1000) * rate) - sent;
      for (let i = 0; i < owed; i++) {
        const n = sent++;
        post({ text: TEXTS[n % TEXTS.length] + ' ' + n, mode: n % 10 === 0 ? 'top' : n % 10 === 1 ? 'reverse' : 'scroll', size: [25, 25, 18, 36][n % 4] });
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    agent.destroy();
  } else {
    sent = await page.evaluate(
      ({ rate, seconds, TEXTS }) =>
        new Promise((done) => {
          let n = 0;
          const t0 = performance.now();
          const timer = setInterval(() => {
            const owed = Math.floor(((performance.now() - t0) / 1000) * rate) - n;
            for (let i = 0; i < owed; i++, n++) {
              const mode = n % 10 === 0 ? 'top' : n % 10 === 1 ? 'reverse' : 'scroll';
              window.renderer.add({ id: n + 1, text: TEXTS[n % TEXTS.length] + ' ' + n, mode, size: [25, 25, 18, 36][n % 4], color: n % 7 ? '#ffffff' : '#ff6699' });
            }
            if (performance.now() - t0 >= seconds * 1000) {
              clearInterval(timer);
              done(n);
            }
          }, 20);
        }),
      { rate, seconds, TEXTS }
    );
  }
  const elapsed = (Date.now() - t0) / 1000;
  const heapWarm = await warm;
  const frames = await page.evaluate(() => {
    window.__frames.stop = true;
    return window.__frames;
  });
  const stats = await page.evaluate(() => (window.renderer || DM.overlay.renderer).stats());
  const tick = await page.evaluate(() => window.__tick);
  const end = await heap(cdp);
  const summary = {
    feed: server ? 'server: HTTP sends to a real room, drawn by its /overlay page' : 'local: generated in the page',
    rate_per_s: rate,
    seconds: Number(elapsed.toFixed(1)),
    viewport: [width, height],
    max_on_screen: max,
    sent,
    send_failures: server ? failed : undefined,
    frames: frames.n,
    fps: Number((frames.n / elapsed).toFixed(1)),
    long_frames: frames.long,
    dropped_frames: frames.dropped,
    worst_frame_ms: Number(frames.worst.toFixed(1)),
    renderer: stats,
    renderer_ms_per_frame: Number((tick.ms / Math.max(1, tick.n)).toFixed(3)),
    renderer_worst_ms: Number(tick.worst.toFixed(1)),
    load_average: os.loadavg().map((l) => Number(l.toFixed(2))),
    heap_start: start,
    heap_warm: heapWarm,
    heap_end: end,
    heap_growth_after_warm_bytes: end.js_heap_used_bytes - heapWarm.js_heap_used_bytes,
    chromium: browser.version(),
  };
  process.stdout.write(JSON.stringify(summary, null, 2) + '\n');
} finally {
  await browser.close();
  if (local) local.close();
}
