// Drives the event wall (web/pages/wall.html) and its phone send page (phone.html) in Debian's
// Chromium, for tests/e2e/web/wall.rs. Prints one JSON report.
//
//   node pages/wall.mjs qr SERVER ROOM       the wall's QR code, decoded with zbarimg
//   node pages/wall.mjs flow SERVER ROOM     QR → phone page (360x740) → a send → on the wall;
//                                            a second viewer in the online count
//   node pages/wall.mjs refuse SERVER ROOM   the phone page's answers to a blocked word and
//                                            to sending too fast; the nickname kept
//   node pages/wall.mjs xss SERVER ROOM      markup as text, nickname and ?title= on the wall
//
//   node pages/wall.mjs restart SERVER ROOM  prints {"live":true} once the wall is live, then reads
//                                            a line of tab-separated texts from stdin (sent while
//                                            the server restarted) and waits for them on the wall
//   node pages/wall.mjs shots SERVER ROOM DIR  saves wall.png and phone.png in DIR (docs/img)
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { launch, open, report } from './browser.mjs';

const [scenario, server, room, dir] = process.argv.slice(2);
const WAIT = 20000;
const PHONE = { viewport: { width: 360, height: 740 }, mobile: true };
const XSS = '<img src=x onerror=alert(1)>';

const browser = await launch();
try {
  const scenarios = { qr, flow, refuse, xss, restart, shots };
  if (!scenarios[scenario]) throw new Error('unknown scenario ' + scenario);
  const out = await scenarios[scenario]();
  await browser.close();
  report(out);
} catch (e) {
  await browser.close();
  throw e;
}

/** Opens the wall and waits until it is live and shows its phone address. */
async function openWall(query = '') {
  const wall = await open(browser, server + '/wall/' + room + query);
  await wall.page.waitForFunction(() => document.documentElement.dataset.state === 'live', null, { timeout: WAIT });
  return wall;
}

/** The wall's QR code as zbarimg reads it from a screenshot of the element, and the text beside it. */
async function readQr(page) {
  await page.waitForFunction(
    () => {
      const img = document.getElementById('qr-img');
      return img.complete && img.naturalWidth > 0 && document.getElementById('phone-url').textContent;
    },
    null,
    { timeout: WAIT }
  );
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'wall-qr-')), 'qr.png');
  await page.locator('#qr-img').screenshot({ path: file });
  const decoded = execFileSync('zbarimg', ['--raw', '-q', file], { encoding: 'utf8' }).trim();
  fs.rmSync(path.dirname(file), { recursive: true });
  return page.evaluate((decoded) => {
    const box = (el) => {
      const r = el.getBoundingClientRect();
      return { left: r.left, top: r.top, right: r.right, bottom: r.bottom };
    };
    const de = document.documentElement;
    return {
      decoded,
      text: document.getElementById('phone-url').textContent,
      alt: document.getElementById('qr-img').alt,
      qrBox: box(document.getElementById('qr-img')),
      stageBox: box(document.getElementById('stage')),
      overflow: { x: de.scrollWidth > innerWidth, y: de.scrollHeight > innerHeight },
      viewport: { width: innerWidth, height: innerHeight },
    };
  }, decoded);
}

async function qr() {
  const { page, problems } = await openWall();
  return Object.assign(await readQr(page), { problems });
}

/** The online count on the wall, as shown. */
function onlineShown(page) {
  return page.locator('#online').textContent();
}

async function waitOnline(page, n) {
  await page.waitForFunction((n) => document.getElementById('online').textContent === String(n), n, { timeout: WAIT });
  return onlineShown(page);
}

/** Waits until the wall shows a danmaku whose text includes `text`; returns {name, text} as shown. */
async function onWall(page, text) {
  const handle = await page.waitForFunction(
    (text) => {
      const el = [...document.querySelectorAll('#stage .dm:not(.dm-measure)')].find((e) => e.textContent.includes(text));
      if (!el) return null;
      const name = el.querySelector('.dm-name');
      return { name: name ? name.textContent : null, text: el.lastChild.textContent };
    },
    text,
    { timeout: WAIT }
  );
  return handle.jsonValue();
}

/** Fills the phone form and presses Enter in the danmaku field; returns the answer shown. */
async function phoneSend(page, text, { colour, mode, name } = {}) {
  if (name !== undefined) {
    await page.getByLabel('Nickname').fill(name);
    await page.getByLabel('Nickname').dispatchEvent('change');
  }
  if (colour) await page.getByRole('radio', { name: colour }).check({ force: true });
  if (mode) await page.getByRole('radio', { name: mode }).check({ force: true });
  const field = page.getByLabel('danmaku', { exact: true });
  await field.fill(text);
  await page.evaluate(() => (document.getElementById('status').textContent = ''));
  await field.press('Enter');
  await page.waitForFunction(
    () => {
      const s = document.getElementById('status');
      return s.textContent && s.textContent !== 'Sending…';
    },
    null,
    { timeout: WAIT }
  );
  return {
    status: await page.locator('#status').textContent(),
    kind: await page.locator('#status').getAttribute('class'),
    left: await field.inputValue(),
  };
}

async function flow() {
  const wall = await openWall();
  const qrCode = await readQr(wall.page);
  const alone = await waitOnline(wall.page, 1);

  // The phone opens what the code says, as a phone would.
  const phone = await open(browser, qrCode.decoded, PHONE);
  const layout = await phone.page.evaluate(() => ({
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth,
    send: (() => {
      const r = document.getElementById('send').getBoundingClientRect();
      return { width: r.width, height: r.height };
    })(),
    label: document.getElementById('send').textContent,
    field: document.getElementById('text').labels[0].textContent,
  }));
  const sent = await phoneSend(phone.page, 'hello from a phone 你好 🎉', { colour: 'Red', mode: 'Scroll', name: 'Ana' });
  const shown = await onWall(wall.page, 'hello from a phone');
  const colour = await wall.page.evaluate(() => {
    const el = [...document.querySelectorAll('#stage .dm')].find((e) => e.textContent.includes('hello from a phone'));
    return getComputedStyle(el).color;
  });
  const top = await phoneSend(phone.page, 'pinned at the top', { mode: 'Top' });
  await onWall(wall.page, 'pinned at the top');
  const topClass = await wall.page.evaluate(
    () => [...document.querySelectorAll('#stage .dm')].find((e) => e.textContent.includes('pinned at the top')).className
  );
  // The phone sends over HTTP: it is not a viewer. A second wall is.
  const withPhone = await onlineShown(wall.page);
  const second = await openWall();
  const two = await waitOnline(wall.page, 2);
  await second.context.close();
  const back = await waitOnline(wall.page, 1);
  return {
    qr: qrCode,
    online: { alone, withPhone, two, back },
    phone: { layout, sent, top },
    wall: { shown, colour, topClass, state: await wall.page.locator('#state').textContent() },
    problems: { wall: wall.problems, phone: phone.problems },
  };
}

async function refuse() {
  const { page, problems } = await open(browser, server + '/m/' + room, PHONE);
  const blocked = await phoneSend(page, 'this has a forbiddenword in it', { name: 'Bo' });
  const empty = await phoneSend(page, '   ');
  // The default limits: a burst of 3 sends a person, then one every 2 s.
  const fast = [];
  for (let i = 0; i < 6; i++) {
    const answer = await phoneSend(page, 'quick ' + i);
    fast.push(answer);
    if (answer.kind.includes('err')) break;
  }
  await page.reload();
  const nameAfterReload = await page.getByLabel('Nickname').inputValue();
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth > innerWidth);
  return { blocked, empty, fast, nameAfterReload, overflow, problems };
}

async function xss() {
  const { page, problems } = await openWall('?title=' + encodeURIComponent(XSS) + '&qr=0');
  const phone = await open(browser, server + '/m/' + room, PHONE);
  const sent = await phoneSend(phone.page, XSS, { name: XSS });
  const shown = await onWall(page, XSS);
  await page.waitForTimeout(500); // an onerror would have fired by now
  return Object.assign(
    await page.evaluate(() => ({
      imgsInStage: document.querySelectorAll('#stage img').length,
      imgsInPage: document.querySelectorAll('img').length,
      title: document.getElementById('title').textContent,
      titleVisible: !document.getElementById('title').hidden,
      qrHidden: document.getElementById('qr').hidden && document.getElementById('qr').offsetParent === null,
    })),
    { sent, shown, problems, phoneProblems: phone.problems }
  );
}

async function shots() {
  const wall = await openWall('?title=' + encodeURIComponent('Rust Meetup · Q&A'));
  const phone = await open(browser, server + '/m/' + room, PHONE);
  const sends = [
    ['Great talk!', 'White', 'Scroll', 'Ana'],
    ['こんにちは 👋', 'Cyan', 'Scroll', 'Ken'],
    ['Where are the slides?', 'Yellow', 'Scroll', ''],
    ['+1 to async traits', 'White', 'Scroll', 'Lee'],
    ['Welcome everyone!', 'Pink', 'Scroll', 'Host'],
    ['弾幕 is so much fun', 'Green', 'Scroll', ''],
    ['Loving this 🎉', 'Orange', 'Scroll', 'Mia'],
    ['Can you zoom in a bit?', 'White', 'Scroll', 'Ana'],
  ];
  for (const [text, colour, mode, name] of sends) {
    await phoneSend(phone.page, text, { colour, mode, name });
    await wall.page.waitForTimeout(700);
  }
  await wall.page.waitForTimeout(1200);
  await wall.page.screenshot({ path: path.join(dir, 'wall.png') });
  await phone.page.screenshot({ path: path.join(dir, 'phone.png') });
  return { saved: [path.join(dir, 'wall.png'), path.join(dir, 'phone.png')] };
}

async function restart() {
  const { context, problems } = await open(browser, 'about:blank');
  const page = context.pages()[0];
  await page.addInitScript(() => {
    // Every state the page showed, and every danmaku it drew, however briefly.
    window.__states = [];
    window.__drawn = [];
    new MutationObserver(() => {
      const s = document.getElementById('state');
      if (s && window.__states[window.__states.length - 1] !== s.textContent) window.__states.push(s.textContent);
      for (const el of document.querySelectorAll('#stage .dm:not(.dm-measure)')) {
        if (!el.dataset.seen) {
          el.dataset.seen = el.dataset.id;
          window.__drawn.push(el.lastChild.textContent);
        }
      }
    }).observe(document, { childList: true, subtree: true, characterData: true, attributes: true });
  });
  await page.goto(server + '/wall/' + room);
  await page.waitForFunction(() => document.documentElement.dataset.state === 'live', null, { timeout: WAIT });
  process.stdout.write(JSON.stringify({ live: true }) + '\n');
  const lines = readline.createInterface({ input: process.stdin });
  const want = (await lines[Symbol.asyncIterator]().next()).value.split('\t');
  lines.close();
  await page.waitForFunction((want) => want.every((t) => window.__drawn.includes(t)), want, { timeout: WAIT });
  await page.waitForFunction(() => document.documentElement.dataset.state === 'live', null, { timeout: WAIT });
  await page.waitForTimeout(500); // a duplicate would be drawn by now
  return Object.assign(await page.evaluate(() => ({ states: window.__states, drawn: window.__drawn })), { problems });
}
