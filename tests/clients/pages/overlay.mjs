// Drives the OBS overlay (web/pages/overlay.html) in Debian's Chromium, for tests/e2e/web/overlay.rs.
//
//   node pages/overlay.mjs show SERVER ROOM QUERY
//
// Opens /overlay/ROOM?QUERY at 640x360, sends a fixed set of danmaku (modes, a word, a name),
// waits until the visible ones are on screen, then screenshots with a transparent background.
// Prints {"shown":[texts ever drawn], "state", "alpha":{"clear":[alpha at points no danmaku
// covers], "text":[alpha at danmaku centres]}, "html", alerts, csp, imgs}.
import zlib from 'node:zlib';
import { launch } from './browser.mjs';

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
try {
  if (scenario !== 'show') throw new Error('unknown scenario ' + scenario);
  process.stdout.write(JSON.stringify(await show()) + '\n');
} finally {
  await browser.close();
}

async function show() {
  const context = await browser.newContext({ viewport: { width: 640, height: 360 } });
  const page = await context.newPage();
  const alerts = [];
  page.on('dialog', (d) => {
    alerts.push(d.message());
    d.dismiss().catch(() => {});
  });
  await page.addInitScript(() => {
    window.__csp = [];
    document.addEventListener('securitypolicyviolation', (e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));
    // Every danmaku ever drawn, however briefly.
    window.__shown = new Set();
    new MutationObserver((records) => {
      for (const r of records) for (const n of r.addedNodes) if (n.classList && n.classList.contains('dm')) window.__shown.add(n.textContent);
    }).observe(document, { childList: true, subtree: true });
  });
  await page.goto(server + '/overlay/' + room + (query ? '?' + query : ''));
  await page.waitForFunction(() => document.documentElement.dataset.state === 'live', null, { timeout: WAIT });
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
    state: await page.evaluate(() => document.documentElement.dataset.state),
    size: [image.width, image.height],
    alpha: { clear: points.clear.map(([x, y]) => image.alpha(x, y)), text: points.text.map(around) },
    alerts,
    csp: await page.evaluate(() => window.__csp),
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
