// Drives real players in Debian's Chromium (playwright-core) against a
// danmaku server, for tests/e2e/browser.rs. The player page is served from
// its own origin (127.0.0.1 on a port of the kernel's choosing), as on a
// site that embeds a player and fetches danmaku from ours, so CORS is part
// of what is tested.
//
//   node players.mjs dplayer   ROOM SEND_TEXT
//   node players.mjs artplayer ROOM
//
// Once the page site listens, prints {"origin":"http://127.0.0.1:PORT"} on
// a line of its own, then reads the server's URL (http://host:port) from
// the first line of stdin: the test starts its server knowing the page's
// origin (a server allows writes from named origins only). Then prints one
// JSON object on stdout:
// - dplayer: {"loaded":[texts DPlayer loaded], "sent":true|"error message",
//   "drawn":[{"text","html","imgs"}] for every loaded danmaku drawn on
//   screen, "alerts":[...]}
// - artplayer: {"shown":[{"text","at"}]}: each danmaku as it appeared on
//   screen and the video's time then.
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const [player, room, sendText] = process.argv.slice(2);
const modules = path.join(here, 'node_modules');
const assets = {
  '/dplayer.js': path.join(modules, 'dplayer/dist/DPlayer.min.js'),
  '/artplayer.js': path.join(modules, 'artplayer/dist/artplayer.js'),
  '/danmuku.js': path.join(modules, 'artplayer-plugin-danmuku/dist/artplayer-plugin-danmuku.js'),
};

// A video the page records itself (a canvas through MediaRecorder), so no
// media file is needed: the players only need something that plays.
const makeVideo = `
async function makeVideo(seconds) {
  const canvas = document.createElement('canvas');
  canvas.width = 320; canvas.height = 180;
  const g = canvas.getContext('2d');
  const stream = canvas.captureStream(25);
  const rec = new MediaRecorder(stream, { mimeType: 'video/webm' });
  const chunks = [];
  rec.ondataavailable = (e) => chunks.push(e.data);
  const done = new Promise((r) => (rec.onstop = r));
  rec.start(100);
  const t0 = performance.now();
  while (performance.now() - t0 < seconds * 1000) {
    g.fillStyle = 'hsl(' + ((performance.now() - t0) / 10 % 360) + ',60%,40%)';
    g.fillRect(0, 0, 320, 180);
    await new Promise((r) => setTimeout(r, 40));
  }
  rec.stop();
  await done;
  return URL.createObjectURL(new Blob(chunks, { type: 'video/webm' }));
}`;

const site = http.createServer((req, res) => {
  const file = assets[req.url];
  if (file) {
    res.writeHead(200, { 'content-type': 'text/javascript' });
    fs.createReadStream(file).pipe(res);
  } else if (req.url === '/') {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(pages()[player]);
  } else {
    res.writeHead(404).end();
  }
});
await new Promise((r) => site.listen(0, '127.0.0.1', r));
const origin = `http://127.0.0.1:${site.address().port}`;
process.stdout.write(JSON.stringify({ origin }) + '\n');
const input = readline.createInterface({ input: process.stdin });
const server = (await input[Symbol.asyncIterator]().next()).value.trim();
input.close();

// The pages, once the server is known.
const pages = () => ({
  dplayer: `<!doctype html><meta charset="utf-8"><div id="p" style="width:640px;height:360px"></div>
<script src="/dplayer.js"></script><script>
window.alerts = [];
window.alert = (m) => window.alerts.push(String(m));
window.dp = new DPlayer({
  container: document.getElementById('p'),
  video: { url: 'data:video/webm;base64,' },
  danmaku: { id: ${JSON.stringify(room)}, api: ${JSON.stringify(server + '/dplayer/')}, user: 'page' },
});
// Told when DPlayer has read the history: its loader calls this back.
const loadedCallback = window.dp.danmaku.options.callback;
window.dp.danmaku.options.callback = () => { window.loaded = true; loadedCallback(); };
</script>`,
  artplayer: `<!doctype html><meta charset="utf-8"><div id="p" style="width:640px;height:360px"></div>
<script src="/artplayer.js"></script><script src="/danmuku.js"></script><script>
${makeVideo}
window.shown = [];
(async () => {
  const url = await makeVideo(6);
  window.art = new Artplayer({
    container: '#p', url, muted: true, autoplay: true,
    plugins: [artplayerPluginDanmuku({
      danmuku: ${JSON.stringify(server + '/api/v1/rooms/' + room + '/danmaku.xml')},
      speed: 5, synchronousPlayback: false,
    })],
  });
  new MutationObserver((records) => {
    for (const r of records) for (const n of r.addedNodes) {
      if (n.nodeType === 1 && n.textContent) {
        window.shown.push({ text: n.textContent, at: window.art.currentTime });
      }
    }
  }).observe(document.getElementById('p'), { childList: true, subtree: true, characterData: false });
  window.started = true;
})();
</script>`,
});

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--autoplay-policy=no-user-gesture-required'],
});
const out = {};
try {
  const page = await browser.newPage();
  page.on('console', (m) => process.stderr.write(`[page ${m.type()}] ${m.text()}\n`));
  page.on('pageerror', (e) => process.stderr.write(`[page error] ${e}\n`));
  await page.goto(`${origin}/`);
  if (player === 'dplayer') {
    await page.waitForFunction(() => window.loaded === true, null, { timeout: 15000 });
    out.loaded = await page.evaluate(() => window.dp.danmaku.dan.map((d) => d.text));
    // Sent as DPlayer's own send box does.
    out.sent = await page.evaluate((text) => new Promise((resolve) => {
      window.dp.options.danmaku && (window.dp.danmaku.options.error = (m) => resolve(String(m)));
      window.dp.danmaku.send({ text, color: 16777215, type: 0 }, () => resolve(true));
    }), sendText);
    // Every loaded danmaku drawn on screen, as DPlayer draws it when its
    // time comes (draw() takes what read() gave it).
    out.drawn = await page.evaluate(() => {
      window.dp.danmaku.draw(window.dp.danmaku.dan);
      return [...document.querySelectorAll('.dplayer-danmaku-item')].map((e) => ({
        text: e.textContent, html: e.innerHTML, imgs: e.querySelectorAll('img').length,
      }));
    });
    await page.waitForTimeout(300);
    out.alerts = await page.evaluate(() => window.alerts);
  } else {
    await page.waitForFunction(() => window.started === true, null, { timeout: 20000 });
    // The recorded video is 6 s; danmaku at their times within it.
    await page.waitForFunction(() => window.art && window.art.currentTime >= 4.5, null, { timeout: 20000 });
    out.shown = await page.evaluate(() => window.shown);
  }
} finally {
  await browser.close();
  site.close();
}
process.stdout.write(JSON.stringify(out) + '\n');
