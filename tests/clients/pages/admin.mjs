// Drives the admin dashboard (web/pages/admin.html) in Debian's Chromium, for tests/e2e/web/admin.rs.
//
//   node pages/admin.mjs SERVER ADMIN_TOKEN ROOM SCREENSHOT
//
// Before it runs, the room is pre-moderated and holds two guest sends: "held hello" and one whose
// text and name are markup. The admin: is refused with a wrong token; signs in; watches the charts;
// opens the room from the search box; approves both held sends with the keyboard (j/k/a) while the
// room page (/r/ROOM, a second browser) shows them; recalls one; turns pre-moderation off; mutes
// the guest, who then sends from the room page; types markup as a room name; signs out.
// Prints one JSON report: what each step saw, every request and WebSocket address the admin's
// browser opened, and each page's CSP violations, errors and dialogs.
import { launch, open, report } from './browser.mjs';

const [server, adminToken, room, screenshot] = process.argv.slice(2);
const MARKUP = '<img src=x onerror=alert(1)>';
const WAIT = 20000;

const browser = await launch();
const out = {};
try {
  const admin = await open(browser, server + '/admin', { viewport: { width: 1400, height: 1000 } });
  const page = admin.page;
  const urls = [];
  admin.context.on('request', (r) => urls.push(r.url()));
  page.on('websocket', (ws) => urls.push(ws.url()));
  // The stats as a load balancer may serve them: when `stats.node` is set, the answers say they
  // come from that node (one server stands for two); `stats.delayMs` holds each answer back.
  const stats = { node: null, delayMs: 0, at: [] };
  await page.route('**/api/v1/admin/stats*', async (route) => {
    stats.at.push({ ms: Date.now(), url: route.request().url() });
    const res = await route.fetch();
    const body = await res.json();
    if (stats.node) body.node_id = stats.node;
    if (stats.delayMs) await new Promise((r) => setTimeout(r, stats.delayMs));
    await route.fulfill({ response: res, json: body });
  });

  // A wrong token: refused in words, still on the sign-in form.
  await page.getByLabel('admin token').fill('not-a-token');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForFunction(() => document.getElementById('signinMsg').textContent.length > 0, null, { timeout: WAIT });
  out.wrong = {
    message: await page.textContent('#signinMsg'),
    signinVisible: await page.isVisible('#signinForm'),
    dashVisible: await page.isVisible('#dash'),
    stored: await page.evaluate(() => sessionStorage.length),
  };

  // The right one, typed and submitted with Enter.
  await page.getByLabel('admin token').fill(adminToken);
  await page.getByLabel('admin token').press('Enter');
  await page.waitForSelector('#dash', { state: 'visible', timeout: WAIT });
  out.storedInSession = await page.evaluate((t) => Object.values(sessionStorage).includes(t), adminToken);
  out.inLocalStorage = await page.evaluate(() => localStorage.length);

  // Charts: uPlot canvases, fed by a poll a second.
  await page.waitForFunction(() => document.querySelectorAll('#dash canvas').length >= 4, null, { timeout: WAIT });
  await page.waitForTimeout(3500);
  out.canvases = await page.locator('#dash canvas').count();
  out.statsPolls = urls.filter((u) => u.includes('/api/v1/admin/stats')).length;
  out.statsAfter = urls.some((u) => /\/api\/v1\/admin\/stats\?after=\d+/.test(u));
  out.statsMsg = await page.textContent('#statsMsg');
  // An empty uPlot chart draws nothing (no ticks, no grid): inked pixels mean lines were drawn.
  out.inked = await page.$$eval('#dash .charts canvas', (cs) =>
    cs.map((c) => {
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      let n = 0;
      for (let i = 3; i < d.length; i += 4) if (d[i]) n++;
      return n;
    })
  );

  // Another node answers: its name is shown, the charts start afresh from its samples.
  out.nodeBefore = await page.textContent('#node');
  const switchedAt = stats.at.length;
  stats.node = 'other-node';
  await page.waitForFunction(() => /other-node/.test(document.getElementById('node').textContent), null, { timeout: WAIT });
  await page.waitForTimeout(2500);
  out.afterSwitch = stats.at.slice(switchedAt).map((s) => new URL(s.url).search);
  out.statsMsgSwitched = await page.textContent('#statsMsg');
  stats.node = null;

  // The room, found with the search box and opened with Enter.
  await page.getByLabel('search rooms').fill(room);
  await page.getByLabel('search rooms').press('Enter');
  await page.waitForSelector('#room', { state: 'visible', timeout: WAIT });
  out.roomName = await page.textContent('#roomName');

  // The room page, as a viewer in another browser context.
  const viewer = await open(browser, server + '/r/' + encodeURIComponent(room));
  const vpage = viewer.page;
  await vpage.waitForFunction(() => /live/.test(document.getElementById('status').textContent), null, { timeout: WAIT });

  // The held queue: both sends, markup as text; approve with the keyboard.
  await page.waitForFunction(() => document.querySelectorAll('#held li').length === 2, null, { timeout: WAIT });
  out.heldTexts = await page.$$eval('#held li .text', (els) => els.map((e) => e.textContent));
  out.heldNames = await page.$$eval('#held li .name', (els) => els.map((e) => e.textContent));
  await page.focus('#held');
  await page.keyboard.press('j');
  out.selectedAfterJ = await page.$eval('#held li[aria-selected=true] .text', (e) => e.textContent);
  await page.keyboard.press('a'); // the markup one
  await page.waitForFunction(() => document.querySelectorAll('#held li').length === 1, null, { timeout: WAIT });
  await page.keyboard.press('k');
  await page.keyboard.press('a'); // "held hello"
  await page.waitForFunction(() => document.querySelectorAll('#held li').length === 0, null, { timeout: WAIT });
  out.approvedMsg = await page.textContent('#msg');

  // Both reach the room page, as text.
  const shown = (text) =>
    vpage.waitForFunction(
      (t) => [...document.querySelectorAll('.dm, #recent li .text')].some((e) => e.textContent.includes(t)),
      text,
      { timeout: WAIT }
    );
  await shown('held hello');
  await shown(MARKUP);
  out.roomPageDm = await vpage.$$eval('.dm', (els) => els.map((e) => e.textContent));
  out.roomPageRecent = await vpage.$$eval('#recent li .text', (els) => els.map((e) => e.textContent));

  // The admin's stream has them; recall "held hello" from the keyboard.
  const line = (text) => page.locator('#stream li', { has: page.locator('.text', { hasText: text }) });
  await line('held hello').waitFor({ timeout: WAIT });
  await line(MARKUP).waitFor({ timeout: WAIT });
  out.streamNames = await page.$$eval('#stream li .name', (els) => els.map((e) => e.textContent));
  await line('held hello').getByRole('button', { name: /^Recall/ }).focus();
  await page.keyboard.press('Enter');
  await vpage.waitForFunction(
    () => ![...document.querySelectorAll('.dm, #recent li .text')].some((e) => e.textContent.includes('held hello')),
    null,
    { timeout: WAIT }
  );
  out.recalledGone = true;
  await page.waitForSelector('#stream li.recalled', { timeout: WAIT });
  out.recalledStruck = await page.$eval('#stream li.recalled .text', (e) => e.textContent);

  // Pre-moderation off (Space on the checkbox), then mute the guest for an hour in this room.
  await page.getByLabel('pre-moderation').focus();
  await page.keyboard.press('Space');
  await page.waitForFunction(() => /pre-moderation off/.test(document.getElementById('msg').textContent), null, { timeout: WAIT });
  await page.getByLabel('mute or ban for').selectOption({ label: '1 hour' });
  const user = await line(MARKUP).locator('.user').textContent();
  out.mutedUser = user;
  await line(MARKUP).getByRole('button', { name: /^Mute/ }).click();
  await page.waitForFunction(() => /^muted /.test(document.getElementById('msg').textContent), null, { timeout: WAIT });
  out.muteMsg = await page.textContent('#msg');
  await page.waitForFunction((u) => [...document.querySelectorAll('#mutes .user')].some((e) => e.textContent === u), user, { timeout: WAIT });

  // The muted guest sends from the room page and is told in words.
  await vpage.getByLabel('danmaku', { exact: true }).fill('am I muted?');
  await vpage.getByLabel('danmaku', { exact: true }).press('Enter');
  await vpage.waitForFunction(() => /muted/i.test(document.getElementById('formMsg').textContent), null, { timeout: WAIT });
  out.mutedWords = await vpage.textContent('#formMsg');

  // Ban, one click on the line: the author is kept out of every room.
  await line(MARKUP).getByRole('button', { name: /^Ban/ }).click();
  await page.waitForFunction(() => / everywhere /.test(document.getElementById('msg').textContent), null, { timeout: WAIT });
  out.banMsg = await page.textContent('#msg');

  // The audit log shows what was done, newest first.
  await page.waitForFunction(() => /mute/.test(document.getElementById('audit').textContent), null, { timeout: WAIT });
  out.auditActions = await page.$$eval('#audit tr td:nth-child(4)', (els) => els.map((e) => e.textContent));

  // Markup typed as a room name: refused, as text.
  await page.getByLabel('search rooms').fill(MARKUP);
  await page.getByLabel('search rooms').press('Enter');
  await page.waitForFunction(() => document.getElementById('roomErr').textContent.length > 0, null, { timeout: WAIT });
  out.badRoom = await page.textContent('#roomErr');
  await page.getByLabel('search rooms').fill(room);

  if (screenshot) {
    await page.waitForTimeout(1500);
    await page.screenshot({ path: screenshot, fullPage: true });
  }
  out.imgs = await page.evaluate(() => document.querySelectorAll('img').length);
  out.viewerImgs = await vpage.evaluate(() => document.querySelectorAll('img').length);

  // Sign out: the token is gone from the tab.
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.waitForSelector('#signinForm', { state: 'visible', timeout: WAIT });
  out.afterSignOut = await page.evaluate(() => sessionStorage.length);

  // Signed out and straight back in while a stats answer is on its way (held back 800 ms):
  // one poll loop, not two.
  stats.delayMs = 800;
  await page.getByLabel('admin token').fill(adminToken);
  await page.getByLabel('admin token').press('Enter');
  await page.waitForSelector('#dash', { state: 'visible', timeout: WAIT });
  await page.waitForTimeout(1200);
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByLabel('admin token').fill(adminToken);
  await page.getByLabel('admin token').press('Enter');
  await page.waitForSelector('#dash', { state: 'visible', timeout: WAIT });
  const from = stats.at.length;
  await page.waitForTimeout(6000);
  out.pollsIn6s = stats.at.length - from;
  stats.delayMs = 0;

  out.urls = urls;
  out.tokenInUrl = urls.filter((u) => u.includes(adminToken));
  out.problems = admin.problems;
  out.viewerProblems = viewer.problems;
} catch (e) {
  out.failure = String(e && e.stack ? e.stack : e);
}
await browser.close();
report(out);
