// The admin dashboard (web/pages/admin.html, docs/web.md "Admin dashboard").
//
// The admin token lives in sessionStorage only and travels only in the Authorization header of
// fetch calls: never in an address. A WebSocket takes a token only in its address, so the
// room's live stream (DM.Room) goes without one, as a guest: it needs the server to let guests
// watch (auth.anonymous_watch, on by default), and says so in words when it is refused.
// Everything users wrote (danmaku, names, user ids, room names) is put in the page as text,
// through DM.el / textContent.
'use strict';
(function () {
  const DM = window.DM;
  const KEY = 'dm-admin-token';
  const WINDOW = 300; // points kept per chart: five minutes at one a second
  const STREAM_MAX = 300;
  const ROOMS_SHOWN = 200; // buttons in the room list at most; the search box finds the rest
  const $ = (id) => document.getElementById(id);
  const el = DM.el;

  let token = sessionStorage.getItem(KEY) || '';
  // Each sign-in is a generation: a poll or listing still in flight from an earlier one ends
  // when it sees the number has moved on, so signing out and back in never runs two loops.
  let generation = 0;
  let intervals = []; // the setInterval handles of this generation (a fixed handful)
  let statsTimer = 0; // the one pending stats poll
  let statsAfter = null;
  let statsNode = null; // the node_id the charts' samples came from
  let statRooms = []; // the busiest rooms, as the last stats answer had them
  let listedRooms = []; // the rooms as the last GET /api/v1/rooms had them
  let current = null; // {name, viewer}
  let rooms = new Map(); // name -> {online, rate}: rebuilt from the latest listings
  let roomsShown = ''; // what the room list shows, to skip rebuilding it when nothing changed

  /* ---------- the API ---------- */

  /** An API failure, in words. */
  class ApiError extends Error {
    constructor(status, code, message) {
      super(code + (message ? ': ' + message : ''));
      this.status = status;
      this.code = code;
    }
  }

  /** One call with the admin token in its header; resolves the JSON answer (null for 204). */
  async function api(method, path, body) {
    const headers = { authorization: 'Bearer ' + token };
    if (body !== undefined) headers['content-type'] = 'application/json';
    let res;
    try {
      res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (_) {
      throw new ApiError(0, 'network', 'could not reach the server');
    }
    const data = res.status === 204 ? null : await res.json().catch(() => null);
    if (res.ok) return data;
    const e = (data && data.error) || {};
    const err = new ApiError(res.status, e.code || 'http_' + res.status, e.message || res.statusText);
    // A token that stops working (expired, key rotated) ends the session, in words.
    if (res.status === 401 && token) signOut('unauthorized: ' + (e.message || 'the token was refused'));
    throw err;
  }

  const roomPath = (room) => '/api/v1/admin/rooms/' + encodeURIComponent(room);

  function say(text, kind) {
    const m = $('msg');
    m.textContent = text;
    m.className = 'msg ' + (kind || '');
  }

  /** Runs an action, saying how it went; resolves whether it worked. */
  async function act(done, fn) {
    try {
      await fn();
      say(done, 'ok');
      refreshAudit();
      return true;
    } catch (e) {
      say(String(e.message || e), 'err');
      return false;
    }
  }

  /* ---------- sign in and out ---------- */

  async function signIn(candidate) {
    const msg = $('signinMsg');
    msg.textContent = '';
    token = candidate;
    try {
      await api('GET', '/api/v1/admin/audit?limit=1');
    } catch (e) {
      token = '';
      msg.textContent =
        e.status === 401
          ? 'unauthorized: ' + e.message.replace(/^unauthorized: /, '')
          : e.status === 403
            ? 'forbidden: this token is not an admin’s'
            : String(e.message);
      $('token').focus();
      return;
    }
    sessionStorage.setItem(KEY, token);
    $('token').value = '';
    start();
  }

  function signOut(why) {
    token = '';
    sessionStorage.removeItem(KEY);
    stop();
    $('dash').hidden = true;
    $('signout').hidden = true;
    $('signin').hidden = false;
    $('node').textContent = '';
    $('signinMsg').textContent = why || '';
    $('token').focus();
  }

  function start() {
    $('signin').hidden = true;
    $('dash').hidden = false;
    $('signout').hidden = false;
    stop();
    const gen = generation;
    charts.create();
    pollStats(gen);
    refreshRooms();
    refreshBans();
    refreshAudit(true);
    every(5000, refreshRooms);
    every(1000, roomPoint);
    every(2000, () => current && refreshHeld());
    every(10000, () => current && refreshMutes());
    every(30000, refreshBans);
  }

  function every(ms, fn) {
    intervals.push(setInterval(fn, ms));
  }

  function stop() {
    generation++;
    for (const t of intervals) clearInterval(t);
    intervals = [];
    clearTimeout(statsTimer);
    statsTimer = 0;
    statsAfter = null;
    statsNode = null;
    statRooms = [];
    listedRooms = [];
    closeRoom();
    rebuildRooms();
    charts.destroy();
  }

  /* ---------- charts (uPlot) ---------- */

  const charts = {
    list: [],
    byId: {},
    create() {
      this.destroy();
      const spec = {
        cRate: [
          ['in /s', '#3160e0'],
          ['out /s', '#1a7f45'],
        ],
        cOnline: [
          ['this node', '#7a3fd0'],
          ['all nodes', '#c8a8f0'],
        ],
        cLat: [
          ['ack p50', '#3160e0'],
          ['ack p99', '#9db3f0'],
          ['fan-out p50', '#b45a12'],
          ['fan-out p99', '#e8b07a'],
        ],
        cLoss: [
          ['lagged /s', '#9a6412'],
          ['dropped /s', '#b42323'],
          ['rejected /s', '#5f6778'],
        ],
        cRoom: [
          ['danmaku /s', '#3160e0'],
          ['online', '#7a3fd0'],
        ],
      };
      for (const [id, series] of Object.entries(spec)) {
        const box = $(id);
        const data = [[]].concat(series.map(() => []));
        const plot = new uPlot(
          {
            width: Math.max(240, box.clientWidth || 300),
            height: 150,
            cursor: { drag: { x: false, y: false } },
            scales: { x: { time: true } },
            axes: [{}, { size: 44 }],
            series: [{}].concat(series.map(([label, stroke]) => ({ label, stroke, width: 1.5, spanGaps: true }))),
          },
          data,
          box
        );
        const chart = { plot, data, box };
        this.list.push(chart);
        this.byId[id] = chart;
      }
      if (!this.onResize) {
        this.onResize = () => {
          for (const c of this.list) c.plot.setSize({ width: Math.max(240, c.box.clientWidth), height: 150 });
        };
        window.addEventListener('resize', this.onResize);
      }
    },
    /** Appends one point (x in seconds) to a chart, keeping the last WINDOW. */
    push(id, x, ys) {
      const c = this.byId[id];
      if (!c) return;
      c.data[0].push(x);
      ys.forEach((y, i) => c.data[i + 1].push(y == null || isNaN(y) ? null : Number(y)));
      if (c.data[0].length > WINDOW) for (const col of c.data) col.splice(0, col.length - WINDOW);
    },
    draw(id) {
      const c = this.byId[id];
      if (c) c.plot.setData(c.data);
    },
    clear(id) {
      const c = this.byId[id];
      if (!c) return;
      for (const col of c.data) col.length = 0;
      c.plot.setData(c.data);
    },
    destroy() {
      for (const c of this.list) {
        c.plot.destroy();
        c.box.textContent = '';
      }
      this.list = [];
      this.byId = {};
    },
  };

  const pick = (o, k) => (o && o[k] != null ? o[k] : null);

  const SERVER_CHARTS = ['cRate', 'cOnline', 'cLat', 'cLoss'];

  async function pollStats(gen) {
    let next = 1000;
    try {
      const asked = statsAfter;
      const q = asked == null ? '' : '?after=' + encodeURIComponent(asked);
      const s = await api('GET', '/api/v1/admin/stats' + q);
      if (gen !== generation) return; // signed out (and maybe back in) meanwhile
      const node = s.node_id == null ? '' : String(s.node_id);
      $('node').textContent = node ? 'node ' + node : '';
      // Behind a load balancer each poll may reach another node, with figures of its own:
      // its samples start the charts afresh rather than interleave with the other's. Those
      // answered after the other node's cursor are not the whole story: ask again at once.
      const switched = statsNode !== null && node !== statsNode;
      statsNode = node;
      if (switched) {
        for (const id of SERVER_CHARTS) charts.clear(id);
        statsAfter = null;
      }
      const samples = switched && asked != null ? [] : s.samples || [];
      if (switched && asked != null) next = 0;
      for (const p of samples) {
        const x = p.t / 1000;
        charts.push('cRate', x, [p.received_per_s, p.deliveries_per_s]);
        charts.push('cOnline', x, [p.online, p.online_cluster]);
        charts.push('cLat', x, [
          pick(p.send_ack_ms, 'p50'),
          pick(p.send_ack_ms, 'p99'),
          pick(p.fanout_ms, 'p50'),
          pick(p.fanout_ms, 'p99'),
        ]);
        charts.push('cLoss', x, [p.lagged_per_s, p.dropped_per_s, p.rejected_per_s]);
        statsAfter = p.t;
      }
      for (const id of SERVER_CHARTS) charts.draw(id);
      statRooms = s.rooms || [];
      rebuildRooms();
      $('statsMsg').textContent =
        (node ? 'from node ' + node + (switched ? ' (another node answered: charts restarted)' : '') + ', ' : '') +
        'updated ' + new Date().toLocaleTimeString();
    } catch (e) {
      if (gen !== generation || !token) return;
      statRooms = [];
      rebuildRooms();
      $('statsMsg').textContent =
        e.status === 404 ? 'this server has no stats endpoint' : 'stats: ' + String(e.message);
      next = e.status === 404 ? 10000 : 2000;
    }
    if (gen === generation && token) statsTimer = setTimeout(() => pollStats(gen), next);
  }

  /** One point a second of the open room's chart: from the stats' rooms, else the room's own figures. */
  async function roomPoint() {
    if (!current) return;
    const name = current.name;
    let r = statRooms.find((x) => x.room === name);
    if (!r) r = await api('GET', '/api/v1/rooms/' + encodeURIComponent(name)).catch(() => null);
    if (!r || !current || current.name !== name) return;
    charts.push('cRoom', Date.now() / 1000, [r.rate_per_s, r.online]);
    charts.draw('cRoom');
  }

  /* ---------- rooms ---------- */

  async function refreshRooms() {
    const gen = generation;
    try {
      const list = await api('GET', '/api/v1/rooms?sort=online&limit=1000');
      if (gen !== generation) return;
      listedRooms = list.rooms || [];
      rebuildRooms();
    } catch (_) {
      /* shown by the stats line; the list keeps what it had */
    }
  }

  /**
   * The room list from the latest listing and the latest stats only: a room gone from both is
   * gone from the list (the open room stays, with the figures it last had).
   */
  function rebuildRooms() {
    const next = new Map();
    for (const r of listedRooms.concat(statRooms)) next.set(r.room, { online: r.online, rate: r.rate_per_s });
    if (current && !next.has(current.name)) next.set(current.name, rooms.get(current.name) || { online: null, rate: null });
    rooms = next;
    renderRooms();
  }

  function filtered() {
    const q = $('roomSearch').value.trim().toLowerCase();
    return [...rooms.entries()]
      .filter(([name]) => name.toLowerCase().includes(q))
      .sort((a, b) => (b[1].online || 0) - (a[1].online || 0) || a[0].localeCompare(b[0]));
  }

  function renderRooms() {
    const ul = $('roomList');
    const all = filtered();
    const open = current ? current.name : '';
    const shownNow = JSON.stringify([open, rooms.size, all.slice(0, ROOMS_SHOWN), all.length]);
    if (shownNow === roomsShown) return; // unchanged: no new buttons, focus left alone
    roomsShown = shownNow;
    const focused = ul.contains(document.activeElement) ? document.activeElement.dataset.room : null;
    const items = all.slice(0, ROOMS_SHOWN).map(([name, r]) => {
      const b = el(
        'button',
        { type: 'button', class: 'roomBtn', 'aria-current': current && current.name === name ? 'true' : null },
        el('span', { class: 'name' }, name),
        el('small', {}, ' ' + (r.online || 0) + ' online · ' + Number(r.rate || 0).toFixed(1) + '/s')
      );
      b.dataset.room = name;
      return el('li', {}, b);
    });
    if (!items.length) items.push(el('li', { class: 'hint' }, rooms.size ? 'no room matches' : 'no active rooms'));
    if (all.length > ROOMS_SHOWN) items.push(el('li', { class: 'hint' }, (all.length - ROOMS_SHOWN) + ' more: type to narrow'));
    ul.replaceChildren(...items);
    if (focused) {
      const again = [...ul.querySelectorAll('button')].find((b) => b.dataset.room === focused);
      if (again) again.focus();
    }
  }

  /** Enter in the search box: the room typed, else the one match. */
  function openFromSearch() {
    const typed = $('roomSearch').value.trim();
    $('roomErr').textContent = '';
    const matches = filtered();
    const name = rooms.has(typed) || DM.isRoomName(typed) ? typed : matches.length === 1 ? matches[0][0] : null;
    if (!name) {
      $('roomErr').textContent = 'not a valid room name: ' + typed;
      return;
    }
    openRoom(name);
  }

  /* ---------- one room ---------- */

  function closeRoom() {
    if (current && current.viewer) current.viewer.close();
    current = null;
    $('room').hidden = true;
  }

  async function openRoom(name) {
    closeRoom();
    const ticket = {};
    current = { name, viewer: null, held: [], selected: 0, ticket };
    $('roomName').textContent = name;
    $('roomLink').href = '/r/' + encodeURIComponent(name);
    $('roomOnline').textContent = '–';
    $('stream').textContent = '';
    streamMsg('');
    $('held').textContent = '';
    $('mutes').textContent = '';
    charts.clear('cRoom');
    $('room').hidden = false;
    renderRooms();
    // The stream starts with the room's last 50 danmaku, so there is something to moderate at once.
    const figures = await api('GET', '/api/v1/rooms/' + encodeURIComponent(name)).catch(() => null);
    if (!current || current.ticket !== ticket) return;
    const since = figures && figures.last_id != null ? Math.max(0, Number(figures.last_id) - 50) : null;
    current.viewer = new DM.Room(name, {
      since,
      onHello: (h) => ($('roomOnline').textContent = String(h.online)),
      onDanmaku: (items) => items.forEach(addLine),
      onDelete: (ids) => ids.forEach(markRecalled),
      onOnline: (n) => ($('roomOnline').textContent = String(n)),
      onState: (state, detail) => {
        const s = $('roomState');
        s.textContent = state;
        s.className = 'pill ' + state;
        if (!current || current.ticket !== ticket) return;
        if (state === 'live') streamMsg('');
        // DM.Room stops at a refusal only a person can lift, and says why.
        else if (state === 'refused') streamMsg(refusedWords(detail));
      },
    });
    current.viewer.connect();
    refreshSettings();
    refreshHeld();
    refreshMutes();
    $('roomTitle').scrollIntoView({ block: 'nearest' });
  }

  function streamMsg(text) {
    const m = $('streamMsg');
    m.textContent = text;
    m.hidden = !text;
  }

  /**
   * Why the stream was refused, in words. A guest refused (401) means the server lets only
   * signed-in viewers watch: the dashboard watches as a guest, since a WebSocket would carry
   * the admin token in its address.
   */
  function refusedWords(detail) {
    if (detail && detail.status === 401) {
      return (
        'The live stream cannot connect: this server lets only signed-in viewers watch ' +
        '(auth.anonymous_watch = false), and the dashboard watches as a guest, since a WebSocket ' +
        'would carry the admin token in its address. Held sends, settings and mutes still work.'
      );
    }
    return 'The live stream cannot connect: ' + ((detail && detail.words) || 'the server refused it') + '.';
  }

  const clock = (ts) => new Date(Number(ts)).toLocaleTimeString();

  function addLine(item) {
    const room = current.name;
    const recall = el('button', { type: 'button', class: 'small', 'aria-label': 'Recall danmaku ' + item.id }, 'Recall');
    recall.addEventListener('click', () =>
      act('recalled #' + item.id, () =>
        api('DELETE', '/api/v1/rooms/' + encodeURIComponent(room) + '/danmaku/' + Number(item.id))
      )
    );
    const mute = el('button', { type: 'button', class: 'small quiet', 'aria-label': 'Mute user ' + item.user }, 'Mute');
    mute.addEventListener('click', () => muteUser(item.user, $('scope').value === 'global'));
    // A ban keeps the author out of every room for the duration: a mute
    // everywhere, in one click (an address ban needs the address, which a
    // danmaku does not carry).
    const ban = el('button', { type: 'button', class: 'small quiet', 'aria-label': 'Ban user ' + item.user + ' from every room' }, 'Ban');
    ban.addEventListener('click', () => muteUser(item.user, true));
    const li = el(
      'li',
      { 'data-id': item.id },
      el('time', {}, clock(item.ts)),
      el('span', { class: 'name' }, item.name || 'guest'),
      el('span', { class: 'user' }, item.user || ''),
      el('span', { class: 'text' }, item.text == null ? '' : item.text),
      el('span', { class: 'acts' }, recall, mute, ban)
    );
    const list = $('stream');
    list.prepend(li);
    while (list.children.length > STREAM_MAX) list.lastElementChild.remove();
  }

  function markRecalled(id) {
    const li = $('stream').querySelector('li[data-id="' + Number(id) + '"]');
    if (!li || li.classList.contains('recalled')) return;
    li.classList.add('recalled');
    li.querySelector('.acts').replaceChildren(el('span', { class: 'tag' }, 'recalled'));
  }

  function muteUser(user, global) {
    const seconds = Number($('duration').value);
    const path = global ? '/api/v1/admin/mutes' : roomPath(current.name) + '/mutes';
    const where = global ? 'everywhere' : 'in ' + current.name;
    act('muted ' + user + ' ' + where + ' for ' + $('duration').selectedOptions[0].textContent, async () => {
      await api('POST', path, { user, seconds });
      refreshMutes();
    });
  }

  /* settings */

  function showSettings(s) {
    $('slow').value = String(s.slow_mode_s || 0);
    $('closed').checked = Boolean(s.closed);
    $('premod').checked = Boolean(s.premod);
  }

  async function refreshSettings() {
    const name = current.name;
    const s = await api('GET', roomPath(name)).catch((e) => say(String(e.message), 'err'));
    if (s && current && current.name === name) showSettings(s);
  }

  function patch(body, done) {
    const name = current.name;
    act(done, async () => {
      const s = await api('PATCH', roomPath(name), body);
      if (current && current.name === name) showSettings(s);
    }).then((ok) => {
      // A refused change leaves the controls as the server has them.
      if (!ok && current && current.name === name) refreshSettings();
    });
  }

  /* held queue */

  async function refreshHeld() {
    const name = current.name;
    let data;
    try {
      data = await api('GET', roomPath(name) + '/held');
    } catch (_) {
      return;
    }
    if (!current || current.name !== name) return;
    const items = data.items || [];
    const same = items.length === current.held.length && items.every((h, i) => h.held === current.held[i].held);
    if (same) return; // unchanged: leave focus and selection alone
    const selectedId = current.held[current.selected] && current.held[current.selected].held;
    current.held = items;
    const at = items.findIndex((h) => h.held === selectedId);
    current.selected = Math.max(0, Math.min(at >= 0 ? at : current.selected, items.length - 1));
    renderHeld();
  }

  function renderHeld() {
    const list = $('held');
    const hadFocus = list.contains(document.activeElement);
    const items = current.held.map((h, i) => {
      const approve = el('button', { type: 'button', class: 'small', tabindex: '-1', 'aria-label': 'Approve held ' + h.held }, 'Approve');
      const reject = el('button', { type: 'button', class: 'small quiet', tabindex: '-1', 'aria-label': 'Reject held ' + h.held }, 'Reject');
      approve.addEventListener('click', () => decide(i, 'approve'));
      reject.addEventListener('click', () => decide(i, 'reject'));
      return el(
        'li',
        { id: 'held-' + h.held, role: 'option', 'aria-selected': i === current.selected ? 'true' : 'false', 'data-held': h.held },
        el('time', {}, clock(h.ts)),
        el('span', { class: 'name' }, h.name || 'guest'),
        el('span', { class: 'user' }, h.user || ''),
        el('span', { class: 'text' }, h.text == null ? '' : h.text),
        el('span', { class: 'acts' }, approve, reject)
      );
    });
    list.replaceChildren(...items);
    if (items.length) list.setAttribute('aria-activedescendant', items[current.selected].id);
    else list.removeAttribute('aria-activedescendant');
    $('heldCount').textContent = items.length ? '(' + items.length + ')' : '(none)';
    if (hadFocus) list.focus();
  }

  function select(i) {
    if (!current.held.length) return;
    current.selected = Math.max(0, Math.min(i, current.held.length - 1));
    renderHeld();
    const li = $('held').children[current.selected];
    if (li) li.scrollIntoView({ block: 'nearest' });
  }

  function decide(i, verb) {
    const h = current.held[i];
    if (!h) return;
    const name = current.name;
    act((verb === 'approve' ? 'approved' : 'rejected') + ' held #' + h.held, async () => {
      await api('POST', roomPath(name) + '/held/' + Number(h.held) + '/' + verb);
      if (!current || current.name !== name) return;
      current.held = current.held.filter((x) => x.held !== h.held);
      current.selected = Math.min(current.selected, Math.max(0, current.held.length - 1));
      renderHeld();
    });
  }

  function heldKeys(ev) {
    if (ev.ctrlKey || ev.metaKey || ev.altKey || !current) return;
    const keys = { j: 1, ArrowDown: 1, k: -1, ArrowUp: -1 };
    if (ev.key in keys) select(current.selected + keys[ev.key]);
    else if (ev.key === 'a') decide(current.selected, 'approve');
    else if (ev.key === 'r') decide(current.selected, 'reject');
    else return;
    ev.preventDefault();
  }

  /* mutes */

  async function refreshMutes() {
    const name = current.name;
    let here, everywhere;
    try {
      [here, everywhere] = await Promise.all([api('GET', roomPath(name) + '/mutes'), api('GET', '/api/v1/admin/mutes')]);
    } catch (_) {
      return;
    }
    if (!current || current.name !== name) return;
    const rows = [];
    for (const [m, global] of [
      ...(here.items || []).map((m) => [m, false]),
      ...(everywhere.items || []).map((m) => [m, true]),
    ]) {
      const lift = el('button', { type: 'button', class: 'small quiet', 'aria-label': 'Unmute ' + m.user + (global ? ' everywhere' : '') }, 'Unmute');
      lift.addEventListener('click', () =>
        act('unmuted ' + m.user, async () => {
          const base = global ? '/api/v1/admin/mutes/' : roomPath(name) + '/mutes/';
          await api('DELETE', base + encodeURIComponent(m.user));
          refreshMutes();
        })
      );
      rows.push(
        el(
          'li',
          {},
          el('span', { class: 'user' }, m.user),
          ' ' + (global ? 'everywhere' : 'here') + ' until ' + (m.until ? new Date(m.until).toLocaleString() : 'for good') + ' ',
          lift
        )
      );
    }
    if (!rows.length) rows.push(el('li', { class: 'hint' }, 'nobody'));
    $('mutes').replaceChildren(...rows);
  }

  /* ---------- bans ---------- */

  async function refreshBans() {
    let data;
    try {
      data = await api('GET', '/api/v1/admin/bans');
    } catch (_) {
      return;
    }
    const rows = (data.items || []).map((b) => {
      const lift = el('button', { type: 'button', class: 'small quiet', 'aria-label': 'Lift ban on ' + b.ip }, 'Lift');
      lift.addEventListener('click', () =>
        act('lifted the ban on ' + b.ip, async () => {
          await api('DELETE', '/api/v1/admin/bans/' + encodeURIComponent(b.ip));
          refreshBans();
        })
      );
      return el('li', {}, el('span', { class: 'user' }, b.ip), ' until ' + (b.until ? new Date(b.until).toLocaleString() : 'for good') + ' ', lift);
    });
    if (!rows.length) rows.push(el('li', { class: 'hint' }, 'none'));
    $('bans').replaceChildren(...rows);
  }

  /* ---------- audit log ---------- */

  let auditPages = [null]; // the `before` of each page shown so far; the last is the one on screen
  const AUDIT_PAGE = 20;

  async function loadAudit(before) {
    const q = '?limit=' + AUDIT_PAGE + (before == null ? '' : '&before=' + Number(before));
    const data = await api('GET', '/api/v1/admin/audit' + q);
    const items = data.items || [];
    const rows = items.map((a) =>
      el(
        'tr',
        {},
        el('td', {}, String(a.id)),
        el('td', { class: 'nowrap' }, new Date(a.ts).toLocaleString()),
        el('td', {}, a.actor || ''),
        el('td', { class: 'nowrap' }, a.action || ''),
        el('td', {}, a.room || ''),
        el('td', {}, a.target || ''),
        el('td', { class: 'detail' }, a.detail == null ? '' : JSON.stringify(a.detail))
      )
    );
    if (!rows.length) rows.push(el('tr', {}, el('td', { colspan: '7', class: 'hint' }, 'no entries')));
    $('audit').replaceChildren(...rows);
    $('auditOlder').disabled = items.length < AUDIT_PAGE;
    $('auditOlder').dataset.before = items.length ? String(items[items.length - 1].id) : '';
    $('auditNewest').disabled = before == null;
  }

  /** Reloads the newest page after an action, unless the admin is reading older ones. */
  function refreshAudit(force) {
    if (force) auditPages = [null];
    if (auditPages.length === 1) loadAudit(null).catch(() => {});
  }

  /* ---------- wiring ---------- */

  document.addEventListener('DOMContentLoaded', () => {
    $('signinForm').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const t = $('token').value.trim();
      if (t) signIn(t);
    });
    $('signout').addEventListener('click', () => signOut('signed out'));
    $('roomForm').addEventListener('submit', (ev) => {
      ev.preventDefault();
      openFromSearch();
    });
    $('roomSearch').addEventListener('input', () => {
      $('roomErr').textContent = '';
      renderRooms();
    });
    $('roomList').addEventListener('click', (ev) => {
      const b = ev.target.closest('button');
      if (b && b.dataset.room) openRoom(b.dataset.room);
    });
    $('settings').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const n = Math.max(0, Math.floor(Number($('slow').value) || 0));
      patch({ slow_mode_s: n }, n ? 'slow mode: one danmaku per ' + n + ' s each' : 'slow mode off');
    });
    $('closed').addEventListener('change', (ev) =>
      patch({ closed: ev.target.checked }, ev.target.checked ? 'room closed' : 'room reopened')
    );
    $('premod').addEventListener('change', (ev) =>
      patch({ premod: ev.target.checked }, 'pre-moderation ' + (ev.target.checked ? 'on' : 'off'))
    );
    $('held').addEventListener('keydown', heldKeys);
    $('banForm').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const ip = $('banIp').value.trim();
      const body = { ip };
      if ($('banFor').value) body.seconds = Number($('banFor').value);
      act('banned ' + ip, async () => {
        await api('POST', '/api/v1/admin/bans', body);
        $('banIp').value = '';
        refreshBans();
      });
    });
    $('auditOlder').addEventListener('click', () => {
      const before = $('auditOlder').dataset.before;
      if (!before) return;
      auditPages.push(Number(before));
      loadAudit(Number(before)).catch((e) => say(String(e.message), 'err'));
    });
    $('auditNewest').addEventListener('click', () => {
      auditPages = [null];
      loadAudit(null).catch((e) => say(String(e.message), 'err'));
    });
    if (token) signIn(token);
    else $('token').focus();
  });
})();
