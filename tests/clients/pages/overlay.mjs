// Drives the OBS overlay (web/pages/overlay.html) in Debian's Chromium, for tests/e2e/web/overlay.rs.
//
//   node pages/overlay.mjs show SERVER ROOM QUERY
//   node pages/overlay.mjs motion SERVER ROOM
//
// Opens /overlay/ROOM?QUERY at 640x360, sends a fixed set of danmaku (modes, a word, a name),
// waits until the visible ones are on screen, then screenshots with a transparent background.
// Prints {"shown":[texts ever drawn], "lowest":[lowest danmaku edge, px], "state", "alpha":{"clear":[alpha at points no danmaku
// covers], "text":[alpha near danmaku glyphs]}, "problems", "imgs"}.
//
// motion: one danmaku scrolling, its x over time, through the renderer's pause() and resume(),
// and another one recalled (DELETE) while on screen: {"x":{"before","paused","later","resumed"},
// "step", "recalled":{"before","after"}, "problems"}.
import zlib from 'node:zlib';
import { launch, open, report } from './browser.mjs';

const [scenario, server, room, query] = process.argv.slice(2);
const WAIT = 20000;

// The danmaku sent, and whether the test's query (hide=top&block=secret&mute=troll) shows them.
const SENDS = [
  { text: 'visible scroll', mode: 'scroll' },
  { text: 'visible bottom', mode: 'bottom' },
  { text: 'hidden at the top', mode: 'top' },
  { text: 'a SECRET word', mode: 'scroll' },
  { text: 'from the troll', mode: 'scroll', name: 'troll' },
  { text: 'visible reverse', mode: 'reverse', color: '#000000' },
];

const browser = await launch();
const result = await ({ show, motion })[scenario]();
await browser.close();
report(result);

async function show() {
  const url = server + '/overlay/' + room + (query ? '?' + query : '');
  const { page, problems } = await open(browser, url, { viewport: { width: 640, height: 360 } });
  await page.waitForFunction(() => document.documentElement.dataset.state === 'live', null, { timeout: WAIT });
  // Every danmaku ever drawn, however briefly (nothing is drawn before the sends below).
  await page.evaluate(() => {
    window.__shown = new Set();
    new MutationObserver((records) => {
      for (const r of records) for (const n of r.addedNodes) if (n.classList && n.classList.contains('dm')) window.__shown.add(n.textContent);
    }).observe(document.getElementById('stage'), { childList: true });
  });
  for (const body of SENDS) {
    const res = await fetch(server + '/api/v1/rooms/' + room + '/danmaku', { method: 'POST', body: JSON.stringify(body) });
    if (res.status !== 201) throw new Error('send ' + res.status + ' ' + (await res.text()));
  }
  await page.waitForFunction(
    () => [...document.querySelectorAll('.dm:not(.dm-measure)')].filter((e) => e.textContent.startsWith('visible')).length === 3,
    null,
    { timeout: WAIT }
  );
  await page.waitForTimeout(400); // the hidden ones would be drawn by now
  // Freeze, then find points no danmaku (or its outline) covers, and the danmaku's centres.
  const points = await page.evaluate(() => {
    DM.overlay.renderer.pause();
    const boxes = [...document.querySelectorAll('.dm:not(.dm-measure)')].map((e) => e.getBoundingClientRect());
    const W = innerWidth;
    const H = innerHeight;
    const candidates = [[1, 1], [W - 2, 1], [1, H - 2], [W - 2, H - 2], [W / 2, H / 2], [W / 4, H / 3], [(3 * W) / 4, (2 * H) / 3]];
    const near = (x, y) => boxes.some((b) => x > b.left - 8 && x < b.right + 8 && y > b.top - 8 && y < b.bottom + 8);
    return {
      clear: candidates.filter(([x, y]) => !near(x, y)).map(([x, y]) => [Math.round(x), Math.round(y)]),
      text: [...document.querySelectorAll('.dm:not(.dm-measure)')].map((e) => {
        // The middle of the first glyph's stroke: a range over the first character.
        const range = document.createRange();
        const node = [...e.childNodes].find((n) => n.nodeType === 3);
        range.setStart(node, 0);
        range.setEnd(node, 1);
        const r = range.getBoundingClientRect();
        return [Math.round(r.left + r.width / 2), Math.round(r.top + r.height / 2)];
      }).filter(([x, y]) => x > 4 && x < W - 4 && y > 4 && y < H - 4), // on screen (a scroll may be entering)
    };
  });
  const png = await page.screenshot({ omitBackground: true });
  const image = decodePng(png);
  // Most opaque pixel within 3 px of each danmaku's point: a glyph's stroke is thin.
  const around = ([x, y]) => {
    let best = 0;
    for (let dy = -3; dy <= 3; dy++) for (let dx = -3; dx <= 3; dx++) best = Math.max(best, image.alpha(x + dx, y + dy));
    return best;
  };
  return {
    shown: await page.evaluate(() => [...window.__shown].sort()),
    // The lowest edge of any danmaku on the (frozen) stage, in px from the top.
    lowest: await page.evaluate(() => Math.max(0, ...[...document.querySelectorAll('.dm:not(.dm-measure)')].map((e) => e.getBoundingClientRect().bottom))),
    state: await page.evaluate(() => document.documentElement.dataset.state),
    size: [image.width, image.height],
    alpha: { clear: points.clear.map(([x, y]) => image.alpha(x, y)), text: points.text.map(around) },
    problems,
    imgs: await page.evaluate(() => document.querySelectorAll('img').length),
  };
}

// A minimal PNG reader: 8-bit RGBA (what Chromium writes with a transparent background).
function decodePng(buf) {
  let pos = 8;
  let width = 0;
  let height = 0;
  let colorType = 0;
  const idat = [];
  while (pos < buf.length) {
    const len = buf.readUInt32BE(pos);
    const type = buf.toString('latin1', pos + 4, pos + 8);
    const data = buf.subarray(pos + 8, pos + 8 + len);
    if (type === 'IHDR') {
      width = data.readUInt32BE(0);
      height = data.readUInt32BE(4);
      if (data[8] !== 8) throw new Error('bit depth ' + data[8]);
      colorType = data[9];
    } else if (type === 'IDAT') idat.push(data);
    pos += 12 + len;
  }
  if (colorType !== 6) throw new Error('PNG without alpha (colour type ' + colorType + ')');
  const raw = zlib.inflateSync(Buffer.concat(idat));
  const bpp = 4;
  const stride = width * bpp;
  const out = Buffer.alloc(height * stride);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)];
    const line = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    for (let i = 0; i < stride; i++) {
      const a = i >= bpp ? out[y * stride + i - bpp] : 0;
      const b = y > 0 ? out[(y - 1) * stride + i] : 0;
      const c = y > 0 && i >= bpp ? out[(y - 1) * stride + i - bpp] : 0;
      let v = line[i];
      if (filter === 1) v += a;
      else if (filter === 2) v += b;
      else if (filter === 3) v += (a + b) >> 1;
      else if (filter === 4) {
        const p = a + b - c;
        const pa = Math.abs(p - a);
        const pb = Math.abs(p - b);
        const pc = Math.abs(p - c);
        v += pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      }
      out[y * stride + i] = v & 255;
    }
  }
  return {
    width,
    height,
    alpha: (x, y) => (x < 0 || y < 0 || x >= width || y >= height ? 0 : out[(y * width + x) * bpp + 3]),
  };
}

async function motion() {
  const { page, problems } = await open(browser, server + '/overlay/' + room, { viewport: { width: 640, height: 360 } });
  await page.waitForFunction(() => document.documentElement.dataset.state === 'live', null, { timeout: WAIT });
  const ids = {};
  for (const text of ['moving', 'to be recalled']) {
    const res = await fetch(server + '/api/v1/rooms/' + room + '/danmaku', { method: 'POST', body: JSON.stringify({ text }) });
    ids[text] = (await res.json()).id;
  }
  const x = () => page.evaluate(() => {
    const el = [...document.querySelectorAll('.dm')].find((e) => e.textContent === 'moving');
    return el ? el.getBoundingClientRect().left : null;
  });
  const frames = (n) => page.evaluate((n) => new Promise((done) => {
    const step = () => (--n > 0 ? requestAnimationFrame(step) : done());
    requestAnimationFrame(step);
  }), n);
  await page.waitForFunction(() => [...document.querySelectorAll('.dm:not(.dm-measure)')].length === 2, null, { timeout: WAIT });
  await frames(30);
  const before = await x();
  await frames(10);
  const moved = await x();
  await page.evaluate(() => DM.overlay.renderer.pause());
  const paused = await x();
  await page.waitForTimeout(700);
  const later = await x();
  await page.evaluate(() => DM.overlay.renderer.resume());
  await frames(2);
  const resumed = await x();
  const on = () => page.evaluate(() => [...document.querySelectorAll('.dm')].filter((e) => e.textContent === 'to be recalled').length);
  const recalledBefore = await on();
  const del = await fetch(server + '/api/v1/rooms/' + room + '/danmaku/' + ids['to be recalled'], { method: 'DELETE' });
  await page.waitForFunction(() => ![...document.querySelectorAll('.dm')].some((e) => e.textContent === 'to be recalled'), null, { timeout: WAIT });
  return {
    x: { before, moved, paused, later, resumed },
    // How far it moves in a frame at 60 Hz: (width + stage) / 8 s.
    step: await page.evaluate(() => {
      const el = [...document.querySelectorAll('.dm')].find((e) => e.textContent === 'moving');
      return ((innerWidth + el.offsetWidth) / 8000) * (1000 / 60);
    }),
    recalled: { before: recalledBefore, status: del.status, after: await on() },
    problems,
  };
}
