// Drives the video player page (web/pages/player.html) in Debian's Chromium, for
// tests/e2e/web/player.rs.
//
//   node pages/player.mjs play  SERVER ROOM   plays, seeks, sends, watches live danmaku and the
//                                             density graph; prints {"phase":"live","t":T} once
//                                             at the live step and waits for a line of ids
//                                             (danmaku the test posted) on stdin
//   node pages/player.mjs nosrc SERVER ROOM   no src, a src that is not http(s), one that 404s
//
// The video is a WAV file made here (120 s of silence, 8 kHz mono 8-bit): Chromium plays audio
// in a <video>, with an exact duration and seeking, and nothing else has to be installed. It is
// served by a tiny HTTP server on another port (the page's CSP takes media from anywhere).
// With PLAYER_SCREENSHOT=FILE the play scenario saves a screenshot with danmaku on the stage.
//
// Prints one JSON report on stdout (the live phase line comes before it).
import http from 'node:http';
import readline from 'node:readline';
import { launch, open } from './browser.mjs';

const [scenario, server, room] = process.argv.slice(2);
const WAIT = 20000;
const SECONDS = 120;

function wav(seconds) {
  const rate = 8000;
  const data = rate * seconds;
  const buf = Buffer.alloc(44 + data, 128); // 128: silence in unsigned 8-bit PCM
  buf.write('RIFF', 0);
  buf.writeUInt32LE(36 + data, 4);
  buf.write('WAVEfmt ', 8);
  buf.writeUInt32LE(16, 16); // fmt chunk size
  buf.writeUInt16LE(1, 20); // PCM
  buf.writeUInt16LE(1, 22); // mono
  buf.writeUInt32LE(rate, 24);
  buf.writeUInt32LE(rate, 28); // bytes per second
  buf.writeUInt16LE(1, 32); // block align
  buf.writeUInt16LE(8, 34); // bits per sample
  buf.write('data', 36);
  buf.writeUInt32LE(data, 40);
  return buf;
}

// Serves /film.wav with byte ranges (what lets the browser seek); anything else is 404.
async function videoServer() {
  const body = wav(SECONDS);
  const srv = http.createServer((req, res) => {
    if (req.url !== '/film.wav') {
      res.writeHead(404).end();
      return;
    }
    const range = /^bytes=(\d*)-(\d*)$/.exec(req.headers.range || '');
    const head = { 'content-type': 'audio/wav', 'accept-ranges': 'bytes', 'access-control-allow-origin': '*' };
    if (!range) {
      res.writeHead(200, { ...head, 'content-length': body.length }).end(body);
      return;
    }
    const start = range[1] ? Number(range[1]) : body.length - Number(range[2]);
    const end = range[1] && range[2] ? Math.min(Number(range[2]), body.length - 1) : body.length - 1;
    res
      .writeHead(206, { ...head, 'content-length': end - start + 1, 'content-range': `bytes ${start}-${end}/${body.length}` })
      .end(body.subarray(start, end + 1));
  });
  await new Promise((resolve) => srv.listen(0, '127.0.0.1', resolve));
  return { srv, base: `http://127.0.0.1:${srv.address().port}` };
}

// Console errors other than the browser's own line for a refused request (the page meets
// 400s and 404s on purpose: the history's page size, a missing video).
function trouble(problems) {
  return {
    errors: problems.errors.filter((e) => !e.startsWith('Failed to load resource')),
    dialogs: problems.dialogs,
    csp: problems.csp,
  };
}

const now = (page) => page.evaluate(() => document.getElementById('video').currentTime);

async function until(page, fn, arg) {
  await page.waitForFunction(fn, arg, { timeout: WAIT, polling: 50 });
}

async function playTo(page, t) {
  await page.evaluate(() => document.getElementById('video').play());
  await until(page, (t) => document.getElementById('video').currentTime >= t, t);
}

async function seek(page, t) {
  await page.evaluate((t) => (document.getElementById('video').currentTime = t), t);
  await until(page, () => !document.getElementById('video').seeking);
}

// Each frame, for each danmaku id on the stage: the playhead when it first appeared, its x
// then, how many times it appeared (gone in between) and the most copies seen at once.
function watchStage() {
  const video = document.getElementById('video');
  const stage = document.getElementById('stage');
  window.__seen = {};
  if (window.__watching) return;
  window.__watching = true;
  const tick = () => {
    requestAnimationFrame(tick);
    const here = {};
    for (const el of stage.querySelectorAll('.dm:not(.dm-measure)')) {
      const id = el.dataset.id;
      here[id] = (here[id] || 0) + 1;
      const rec = window.__seen[id];
      if (!rec) {
        const x = Number((/translate3d\(([-\d.]+)px/.exec(el.style.transform) || [])[1]);
        window.__seen[id] = { t: video.currentTime, x, w: stage.clientWidth, text: el.textContent, episodes: 0, max: 0, on: false };
      }
    }
    for (const [id, rec] of Object.entries(window.__seen)) {
      const n = here[id] || 0;
      if (n && !rec.on) rec.episodes++;
      rec.on = n > 0;
      rec.max = Math.max(rec.max, n);
    }
  };
  requestAnimationFrame(tick);
}

const seen = (page) => page.evaluate(() => window.__seen);

async function play() {
  const src = `${media.base}/film.wav`;
  const requests = [];
  const browserOpen = await open(browser, 'about:blank');
  const { page, problems } = browserOpen;
  // Each history request with the playhead when it was made.
  page.on('request', (req) => {
    const url = new URL(req.url());
    if (!url.pathname.endsWith('/danmaku')) return;
    const entry = { from: url.searchParams.get('from'), to: url.searchParams.get('to'), limit: url.searchParams.get('limit'), t: null };
    requests.push(entry);
    now(page).then((t) => (entry.t = t), () => {});
  });
  await page.goto(`${server}/v/${encodeURIComponent(room)}?src=${encodeURIComponent(src)}`);
  await until(page, () => document.getElementById('video').readyState >= 1 && document.getElementById('status').textContent === 'live');
  const report = { duration: await page.evaluate(() => document.getElementById('video').duration) };
  await page.evaluate(watchStage);

  // Playing from 0: each danmaku appears once the playhead passes its vt.
  await playTo(page, 7.6);
  report.fromStart = await seen(page);

  // A seek to 5.5 while playing: the vt 5.0 one joins mid-flight, vt 7.0 waits, vt 4.0 is too old.
  await seek(page, 5.5);
  await page.evaluate(watchStage);
  await page.waitForTimeout(400);
  report.afterSeek = { seen: await seen(page), t: await now(page) };
  await page.evaluate(() => document.getElementById('video').pause());
  report.requestsBeforeLate = requests.slice();

  // The tab hidden from 8 s while the video plays on past "ten a/b/c" (10.2 to 10.6) and is
  // paused at about 11.5; then shown again. Headless Chromium keeps a background tab visible,
  // so hiding is told to the page as the browser would (document.hidden and visibilitychange).
  await seek(page, 8);
  await page.evaluate(watchStage);
  const setHidden = (hidden) =>
    page.evaluate((hidden) => {
      Object.defineProperty(document, 'hidden', { configurable: true, get: () => hidden });
      Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => (hidden ? 'hidden' : 'visible') });
      document.dispatchEvent(new Event('visibilitychange'));
    }, hidden);
  await setHidden(true);
  await playTo(page, 11.45);
  await page.evaluate(() => document.getElementById('video').pause());
  report.hidden = { whileHidden: await seen(page) };
  await setHidden(false);
  await page.waitForTimeout(300);
  const onStage = () =>
    page.evaluate(() =>
      [...document.querySelectorAll('#stage .dm:not(.dm-measure)')].map((el) => ({
        id: el.dataset.id,
        x: Number((/translate3d\(([-\d.]+)px/.exec(el.style.transform) || [])[1]),
        stage: el.parentNode.clientWidth,
      }))
    );
  report.hidden.back = { t: await now(page), stage: await onStage() };
  await page.waitForTimeout(400);
  report.hidden.later = await onStage();

  // The next window is fetched only as the playhead nears it (from 20 s on).
  await seek(page, 18);
  await playTo(page, 21);
  await page.waitForTimeout(100);
  report.requestsAt21 = requests.slice();

  // A send from the player, at the current moment.
  await page.evaluate(watchStage);
  const box = page.getByLabel('danmaku', { exact: true });
  await box.fill('sent from the player');
  const sentAt = await now(page);
  await box.press('Enter');
  await until(page, () => !['', 'sending…'].includes(document.getElementById('formMsg').textContent));
  report.send = { sentAt, msg: await page.evaluate(() => document.getElementById('formMsg').textContent) };
  await until(page, () => document.querySelector('#stage .dm.dm-own:not(.dm-measure)'));
  report.send.own = await page.evaluate(() => {
    const el = document.querySelector('#stage .dm.dm-own');
    return { id: el.dataset.id, text: el.textContent };
  });

  // Live danmaku, posted by the test now: one without vt, one 2 s ahead of the playhead.
  process.stdout.write(JSON.stringify({ phase: 'live', t: await now(page) }) + '\n');
  const input = readline.createInterface({ input: process.stdin });
  const line = await new Promise((resolve) => input.once('line', resolve));
  input.close();
  const [plain, ahead, aheadVt] = line.trim().split(/\s+/);
  await until(page, (ids) => ids.every((id) => window.__seen[id]), [plain, ahead]);
  const liveSeen = await seen(page);
  report.live = { plain: liveSeen[plain], aheadFirst: liveSeen[ahead] };
  await until(page, (vt) => document.getElementById('video').currentTime > vt + 0.5, Number(aheadVt));
  report.live.ahead = (await seen(page))[ahead];

  // Through the busiest second (more danmaku than a page of history): every one shows.
  await page.evaluate(watchStage);
  await page.evaluate(() => document.getElementById('video').pause());
  await seek(page, 39.5);
  await playTo(page, 41.2);
  await page.evaluate(() => document.getElementById('video').pause());
  report.peak = await seen(page);
  if (process.env.PLAYER_SCREENSHOT) await page.screenshot({ path: process.env.PLAYER_SCREENSHOT, fullPage: true });

  // Paused, the stage stands still; at twice the speed, each danmaku is where its vt puts it.
  const where = () =>
    page.evaluate(() =>
      [...document.querySelectorAll('#stage .dm:not(.dm-measure)')].map((el) => ({
        id: el.dataset.id,
        x: Number((/translate3d\(([-\d.]+)px/.exec(el.style.transform) || [])[1]),
        w: el.offsetWidth,
        stage: el.parentNode.clientWidth,
        t: document.getElementById('video').currentTime,
      }))
    );
  const paused = await where();
  await page.waitForTimeout(300);
  report.paused = { before: paused, after: await where() };
  await page.evaluate(() => {
    const video = document.getElementById('video');
    video.playbackRate = 2;
    return video.play();
  });
  await page.waitForTimeout(600);
  await page.evaluate(() => document.getElementById('video').pause());
  report.doubleSpeed = await where();
  await page.evaluate(() => (document.getElementById('video').playbackRate = 1));

  // At 70 s window 0 is dropped (memory stays bounded): a seek back to it fetches it again.
  await seek(page, 70);
  await page.waitForTimeout(300);
  const before = requests.length;
  await seek(page, 5.5);
  await page.waitForTimeout(300);
  report.requestsAfterSeekBack = requests.slice(before);
  report.requests = requests;

  // The density graph: its bars, a click on the tallest, the keyboard.
  await until(page, () => document.querySelectorAll('#densityGraph rect').length > 0);
  report.bars = await page.evaluate(() =>
    [...document.querySelectorAll('#densityGraph rect')].map((r) => ({
      bucket: Number(r.dataset.bucket),
      count: Number(r.dataset.count),
      height: r.getBoundingClientRect().height,
    }))
  );
  report.bucketS = await page.evaluate(() => Number(document.getElementById('densityGraph').dataset.bucketS));
  const tallest = report.bars.reduce((a, b) => (b.height > a.height ? b : a));
  const box2 = await page.locator(`#densityGraph rect[data-bucket="${tallest.bucket}"]`).boundingBox();
  await page.mouse.click(box2.x + box2.width / 2, box2.y + box2.height / 2);
  await until(page, () => !document.getElementById('video').seeking);
  report.clicked = { bucket: tallest.bucket, t: await now(page) };
  await page.getByRole('slider', { name: /danmaku density/ }).focus();
  await page.keyboard.press('Home');
  await until(page, () => document.getElementById('video').currentTime === 0);
  await page.keyboard.press('ArrowRight');
  await until(page, () => document.getElementById('video').currentTime > 0);
  report.keyboard = { afterRight: await now(page) };

  report.unnamed = await page.evaluate(() =>
    [...document.querySelectorAll('button, input, select, video, [tabindex]')]
      .filter((el) => {
        const labelled = (el.labels && el.labels.length) || el.getAttribute('aria-label') || el.getAttribute('aria-labelledby');
        return !labelled && !el.textContent.trim();
      })
      .map((el) => el.outerHTML.slice(0, 80))
  );
  report.stageImgs = await page.evaluate(() => document.querySelectorAll('#stage img').length);
  report.problems = trouble(problems);
  return report;
}

async function nosrc() {
  const cases = {
    missing: `/v/${room}`,
    notHttp: `/v/${room}?src=${encodeURIComponent('javascript:alert(1)')}`,
    notFound: `/v/${room}?src=${encodeURIComponent(media.base + '/nothing.mp4')}`,
  };
  const report = {};
  for (const [name, path] of Object.entries(cases)) {
    const { context, page, problems } = await open(browser, server + path);
    await until(page, () => !document.getElementById('problem').hidden);
    report[name] = {
      message: await page.evaluate(() => document.getElementById('problem').textContent),
      visible: await page.locator('#problem').isVisible(),
      problems: trouble(problems),
    };
    await context.close();
  }
  return report;
}

const browser = await launch();
const media = await videoServer();
let out;
try {
  out = await ({ play, nosrc })[scenario]();
} finally {
  await browser.close();
  media.srv.close();
}
// Exits at once: the test's stdin stays open, and would keep node running.
process.stdout.write(JSON.stringify(out) + '\n', () => process.exit(0));
