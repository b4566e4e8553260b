// Drives the live room page (web/pages/live.html) in Debian's Chromium, for tests/e2e/web/live.rs.
//
//   node pages/live.mjs two     SERVER ROOM    two pages send to each other (markup as text and name)
//   node pages/live.mjs badroom SERVER         a room name that is markup, in the path
//   node pages/live.mjs burst   SERVER ROOM N  N danmaku at once: are any two (scroll, reverse, top, bottom) ever on top of each other?
//   node pages/live.mjs errors  SERVER ROOM    a blocked word, then sends until rate limited
//   node pages/live.mjs token   SERVER ROOM TOKEN   sign in with ?token=, send
//   node pages/live.mjs refused SERVER ROOM EXPIRED OTHER GOOD   a server that needs a token to
//                                             watch: no token, an expired one, one for room
//                                             "elsewhere" only (then that room), a good one
//   node pages/live.mjs roomsfocus SERVER ROOM  a keyboard user on the active rooms' list
//   node pages/live.mjs restart SERVER ROOM    prints {"live":true} once live, then waits for a
//                                             line "TEXT1\tTEXT2..." on stdin (sent after the
//                                             server restarted) and reports when all are shown
//
// Prints one JSON report on stdout. Every page also reports errors, CSP violations, dialogs
// (an alert from injected markup) and how many <img> elements it has.
import readline from 'node:readline';
import { launch, open as openPage, report } from './browser.mjs';

const [scenario, server, room, ...rest] = process.argv.slice(2);
const MARKUP = '<img src=x onerror=alert(1)>';
const WAIT = 20000;

const browser = await launch();
const result = await ({ two, badroom, burst, errors, token, restart, refused, roomsfocus })[scenario]();
await browser.close();
report(result);

// A page, with what the browser complained about in `page.problems`.
async function open(path) {
  const { page, problems } = await openPage(browser, server + path, { viewport: { width: 1280, height: 900 } });
  page.problems = problems;
  return page;
}

async function live(page) {
  await page.waitForFunction(() => document.getElementById('status').textContent === 'live', null, { timeout: WAIT });
}

// What a user could notice went wrong on a page.
async function hygiene(page) {
  return { ...page.problems, imgs: await page.evaluate(() => document.querySelectorAll('img').length) };
}

async function send(page, text, name) {
  if (name !== undefined) await page.getByLabel('display name').fill(name);
  const box = page.getByLabel('danmaku', { exact: true });
  await box.fill(text);
  await box.press('Enter');
  // The answer, in words, replaces "sending…".
  await page.waitForFunction(() => {
    const m = document.getElementById('formMsg').textContent;
    return m && m !== 'sending…';
  }, null, { timeout: WAIT });
  return page.evaluate(() => document.getElementById('formMsg').textContent);
}

function stageTexts(page) {
  return page.evaluate(() =>
    [...document.querySelectorAll('#stage .dm')].map((e) => ({ id: e.dataset.id, text: e.textContent, own: e.classList.contains('dm-own') }))
  );
}

function recent(page) {
  return page.evaluate(() =>
    [...document.querySelectorAll('#recent li')].map((li) => ({
      id: Number(li.dataset.id),
      who: li.querySelector('.who').textContent,
      text: li.querySelector('.text').textContent,
      own: li.classList.contains('own'),
    }))
  );
}

async function waitShown(page, texts) {
  await page.waitForFunction(
    (want) => {
      const have = new Set([...document.querySelectorAll('#stage .dm')].map((e) => e.textContent));
      return want.every((t) => have.has(t));
    },
    texts,
    { timeout: WAIT }
  );
}

async function two() {
  const a = await open('/r/' + room);
  const b = await open('/r/' + room);
  await live(a);
  await live(b);
  const sentA = await send(a, 'hello from A', 'alice');
  const sentB = await send(b, MARKUP, MARKUP);
  await waitShown(a, ['hello from A', MARKUP]);
  await waitShown(b, ['hello from A', MARKUP]);
  const out = {};
  for (const [key, page, sent] of [['a', a, sentA], ['b', b, sentB]]) {
    out[key] = { sent, stage: await stageTexts(page), recent: await recent(page), ...(await hygiene(page)) };
  }
  // Every visible control has an accessible name (a label, aria-label or its text).
  out.unnamed = await a.evaluate(() =>
    [...document.querySelectorAll('input, select, button')]
      .filter((e) => e.offsetParent !== null && !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
      .map((e) => e.outerHTML)
  );
  out.sendButtons = await a.getByRole('button', { name: 'Send', exact: true }).count();
  return out;
}

// The server refuses such a room before any page is served; the live page's own room box
// refuses it too, in words.
async function badroom() {
  const { page, problems } = await openPage(browser, server + '/r/' + encodeURIComponent(MARKUP));
  const status = await page.evaluate(() => performance.getEntriesByType('navigation')[0].responseStatus);
  const shown = await page.evaluate(() => document.body.innerText);
  const lobby = await open('/r/lobby');
  await lobby.getByLabel('Room', { exact: true }).fill(MARKUP);
  await lobby.getByLabel('Room', { exact: true }).press('Enter');
  const roomErr = await lobby.evaluate(() => document.getElementById('roomErr').textContent);
  return {
    status,
    shown,
    imgs: await page.evaluate(() => document.querySelectorAll('img').length),
    problems,
    roomErr,
    lobby: await hygiene(lobby),
  };
}

async function burst() {
  const n = Number(rest[0]) || 100;
  const page = await open('/r/' + room);
  await live(page);
  // Watch every frame for a while, starting before the burst arrives.
  const watching = page.evaluate((frames) => {
    return new Promise((done) => {
      const overlaps = [];
      const seen = new Set();
      let frame = 0;
      let most = 0;
      const step = () => {
        frame++;
        const boxes = [...document.querySelectorAll('#stage .dm:not(.dm-measure)')].map((e) => [
          e.dataset.id,
          e.getBoundingClientRect(),
        ]);
        most = Math.max(most, boxes.length);
        for (const [id] of boxes) seen.add(id);
        for (let i = 0; i < boxes.length; i++) {
          for (let j = i + 1; j < boxes.length; j++) {
            const [ia, a] = boxes[i];
            const [ib, b] = boxes[j];
            // Touching edges are not an overlap; half a pixel covers rounding.
            if (a.left < b.right - 0.5 && b.left < a.right - 0.5 && a.top < b.bottom - 0.5 && b.top < a.bottom - 0.5) {
              if (overlaps.length < 20) overlaps.push({ frame, a: ia, b: ib, ra: [a.left, a.top, a.width, a.height], rb: [b.left, b.top, b.width, b.height] });
            }
          }
        }
        if (frame < frames) requestAnimationFrame(step);
        else done({ frames: frame, overlaps, seen: seen.size, most });
      };
      requestAnimationFrame(step);
    });
  }, 360);
  const modes = ['scroll', 'top', 'scroll', 'reverse', 'scroll', 'bottom'];
  const sendAll = (from, to) => {
    const sends = [];
    for (let i = from; i < to; i++) {
      const body = { text: 'burst ' + i + ' ' + '弹幕🎉'.repeat(i % 7) + 'x'.repeat((i * 13) % 40), mode: modes[i % modes.length], size: [18, 25, 36, 25][i % 4] };
      sends.push(fetch(server + '/api/v1/rooms/' + room + '/danmaku', { method: 'POST', body: JSON.stringify(body) }).then((r) => r.status));
    }
    return Promise.all(sends);
  };
  const stageHeight = () => page.evaluate(() => document.getElementById('stage').clientHeight);
  const heights = [await stageHeight()];
  // Half the burst, then the window narrows (a smaller stage: smaller danmaku, lower lanes)
  // while the first half is still crossing, then the other half.
  const statuses = await sendAll(0, n >> 1);
  await page.waitForTimeout(400);
  await page.setViewportSize({ width: 1000, height: 900 });
  await page.waitForFunction((h) => document.getElementById('stage').clientHeight !== h, heights[0], { timeout: WAIT });
  heights.push(await stageHeight());
  statuses.push(...(await sendAll(n >> 1, n)));
  const watched = await watching;
  const stats = await page.evaluate(() => ({
    onScreen: Number(document.getElementById('onScreen').textContent),
    overflow: Number(document.getElementById('overflow').textContent),
  }));
  return { stored: statuses.filter((s) => s === 201).length, heights, ...watched, stats, ...(await hygiene(page)) };
}

async function errors() {
  const page = await open('/r/' + room);
  await live(page);
  const blocked = await send(page, 'this has forbiddenword in it');
  const answers = [];
  for (let i = 0; i < 8; i++) {
    const answer = await send(page, 'quick send ' + i);
    answers.push(answer);
    if (/too fast/.test(answer)) break;
    // Wait for the next send to be told apart from this answer.
    await page.evaluate(() => (document.getElementById('formMsg').textContent = ''));
  }
  return { blocked, answers, ...(await hygiene(page)) };
}

async function token() {
  const page = await open('/r/' + room + '?token=' + encodeURIComponent(rest[0]) + '&keep=1');
  await live(page);
  const sent = await send(page, 'signed in and sending');
  await waitShown(page, ['signed in and sending']);
  return {
    href: await page.evaluate(() => location.href),
    stored: await page.evaluate(() => sessionStorage.getItem('danmaku.token')),
    local: await page.evaluate(() => Object.keys(localStorage).filter((k) => localStorage.getItem(k).includes('.'))),
    who: await page.evaluate(() => document.getElementById('who').textContent),
    sent,
    stage: await stageTexts(page),
    ...(await hygiene(page)),
  };
}

// What the pill says once the page has stopped at a refusal, or is live.
async function settled(page) {
  await page.waitForFunction(
    () => /\b(refused|live)\b/.test(document.getElementById('status').className),
    null,
    { timeout: WAIT }
  );
  return page.evaluate(() => {
    const pill = document.getElementById('status');
    return { state: pill.className.replace('pill', '').trim(), text: pill.textContent };
  });
}

async function signIn(page, jwt) {
  await page.getByLabel('Token').fill(jwt);
  await page.getByLabel('Token').press('Enter');
}

async function refused() {
  const [expired, other, good] = rest;
  const page = await open('/r/' + room);
  let sockets = 0;
  page.on('websocket', () => sockets++);
  const probes = [];
  page.on('request', (r) => {
    if (r.url().includes('/stream')) probes.push({ url: r.url(), auth: r.headers()['authorization'] || null });
  });
  const out = {};
  out.anonymous = await settled(page);
  // Stopped: no more attempts while nobody does anything.
  const before = sockets;
  await page.waitForTimeout(3000);
  out.socketsWhileRefused = sockets - before;
  await signIn(page, expired);
  // The pill first goes back to connecting, then says why the new token is refused.
  await page.waitForFunction(() => !/Please sign in/.test(document.getElementById('status').textContent), null, { timeout: WAIT });
  out.expired = await settled(page);
  await signIn(page, other);
  await page.waitForFunction(() => !/expired/.test(document.getElementById('status').textContent), null, { timeout: WAIT });
  out.other = await settled(page);
  // Another room, the one this token admits: the page connects again by itself.
  await page.getByLabel('Room', { exact: true }).fill('elsewhere');
  await page.getByLabel('Room', { exact: true }).press('Enter');
  await page.waitForFunction(() => !/does not admit/.test(document.getElementById('status').textContent), null, { timeout: WAIT });
  out.elsewhere = await settled(page);
  // Back to the first room with a token that admits it.
  await page.getByLabel('Room', { exact: true }).fill(room);
  await page.getByLabel('Room', { exact: true }).press('Enter');
  await signIn(page, good);
  await live(page);
  out.good = await settled(page);
  out.probes = probes;
  // Each refused handshake is logged by Chromium, and each refused probe too.
  const expected = (e) => /WebSocket connection to .* failed|status of 40[013]/.test(e);
  page.problems.errors = page.problems.errors.filter((e) => !expected(e));
  return { ...out, ...(await hygiene(page)) };
}

// A keyboard user tabbed onto a room in the active rooms' list stays there while the list
// refreshes (every 5 s).
async function roomsfocus() {
  const page = await open('/r/' + room);
  await live(page);
  await page.waitForSelector('#rooms button[data-room="' + room + '"]', { timeout: WAIT });
  await page.focus('#rooms button[data-room="' + room + '"]');
  await page.evaluate(() => (window.__old = document.activeElement));
  // The list is rebuilt (new buttons) at the next refresh, and again at the one after.
  await page.waitForFunction(() => !document.contains(window.__old), null, { timeout: WAIT });
  await page.waitForTimeout(5500);
  const focused = await page.evaluate(() => ({
    rebuilt: !document.contains(window.__old),
    room: document.activeElement.dataset.room || null,
    tag: document.activeElement.tagName,
  }));
  return { focused, ...(await hygiene(page)) };
}

async function restart() {
  const page = await open('/r/' + room);
  await live(page);
  // Every state the page shows, in order.
  await page.evaluate(() => {
    window.__states = ['live'];
    const pill = document.getElementById('status');
    new MutationObserver(() => {
      const s = pill.className.replace('pill', '').trim();
      if (window.__states[window.__states.length - 1] !== s) window.__states.push(s);
    }).observe(pill, { attributes: true, childList: true, characterData: true, subtree: true });
  });
  process.stdout.write(JSON.stringify({ live: true }) + '\n');
  const lines = readline.createInterface({ input: process.stdin });
  const [line] = await lines[Symbol.asyncIterator]().next().then((r) => [r.value]);
  lines.close();
  const texts = line.split('\t');
  await page.waitForFunction(
    (want) => {
      const have = new Set([...document.querySelectorAll('#recent .text')].map((e) => e.textContent));
      return want.every((t) => have.has(t));
    },
    texts,
    { timeout: WAIT }
  );
  await page.waitForTimeout(300); // a duplicate would arrive now, if at all
  // Reconnecting (and the room list's refresh) while the server is down are expected to fail,
  // and Chromium logs each try.
  const refused = (e) => /WebSocket connection to .* failed|ERR_CONNECTION_REFUSED/.test(e);
  const wsFailures = page.problems.errors.filter(refused).length;
  page.problems.errors = page.problems.errors.filter((e) => !refused(e));
  return { states: await page.evaluate(() => window.__states), recent: await recent(page), wsFailures, ...(await hygiene(page)) };
}
