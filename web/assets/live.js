// The live room page (web/pages/live.html): watch a room's danmaku fly, send your own.
// The room comes from the path (/r/{room}; / is "lobby"). A token signs in: pasted in the
// field, or given as ?token= (then taken out of the address bar); it is kept in
// sessionStorage only, so it ends with the tab.
'use strict';
(function () {
  const $ = (id) => document.getElementById(id);
  const MAX_RECENT = 100;
  const MAX_OWN = 200; // own ids remembered for highlighting (bounded)
  const TOKEN_KEY = 'danmaku.token';
  const NAME_KEY = 'danmaku.name';
  const REF_HEIGHT = 540; // a normal danmaku is 25 px on a 540 px high stage

  const stage = $('stage');
  const renderer = new DM.Renderer(stage, { maxOnScreen: 150 });
  const own = new Set();
  let room = null;
  let roomName = '';

  // Danmaku grow with the stage, as on a video.
  new ResizeObserver(() => {
    const h = stage.clientHeight;
    if (h > 0) renderer.setOptions({ fontSize: Math.max(14, Math.min(40, (h / REF_HEIGHT) * 25)) });
  }).observe(stage);

  /* ---------- token ---------- */

  function storage(kind) {
    try {
      return window[kind];
    } catch (_) {
      return null; // storage disabled
    }
  }

  function readToken() {
    const params = new URLSearchParams(location.search);
    const fromUrl = params.get('token');
    if (fromUrl) {
      saveToken(fromUrl);
      // Out of the address bar (and so out of history, bookmarks and shared links).
      params.delete('token');
      const rest = params.toString();
      history.replaceState(history.state, '', location.pathname + (rest ? '?' + rest : '') + location.hash);
      return fromUrl;
    }
    const s = storage('sessionStorage');
    return (s && s.getItem(TOKEN_KEY)) || '';
  }

  function saveToken(token) {
    const s = storage('sessionStorage');
    if (!s) return;
    if (token) s.setItem(TOKEN_KEY, token);
    else s.removeItem(TOKEN_KEY);
  }

  // Who the token says we are: shown only, never trusted (the server checks the token).
  function tokenSubject(token) {
    try {
      const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      const bytes = Uint8Array.from(atob(part), (c) => c.charCodeAt(0));
      const claims = JSON.parse(new TextDecoder().decode(bytes));
      return typeof claims.sub === 'string' ? claims.sub : '';
    } catch (_) {
      return '';
    }
  }

  let token = readToken();

  function showSignedIn() {
    const form = $('signin');
    form.classList.toggle('in', Boolean(token));
    $('signoutBtn').hidden = !token;
    $('who').textContent = token ? 'signed in' + (tokenSubject(token) ? ' as ' + tokenSubject(token) : '') : '';
  }

  $('signin').addEventListener('submit', (e) => {
    e.preventDefault();
    const value = $('token').value.trim();
    if (!value) return;
    token = value;
    $('token').value = '';
    saveToken(token);
    showSignedIn();
    join(roomName, true);
  });
  $('signoutBtn').addEventListener('click', () => {
    token = '';
    saveToken('');
    showSignedIn();
    join(roomName, true);
    $('token').focus();
  });

  /* ---------- messages ---------- */

  function formMsg(text, kind) {
    const el = $('formMsg');
    el.textContent = text;
    el.className = 'msg ' + (kind || '');
  }

  let noticeTimer = 0;
  function notice(text) {
    $('notice').textContent = text;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => ($('notice').textContent = ''), 8000);
  }

  function setStatus(state, detail) {
    const el = $('status');
    el.className = 'pill ' + state;
    let text = state;
    if (state === 'reconnecting' && detail && detail.delay) text = 'reconnecting in ' + Math.max(1, Math.round(detail.delay / 1000)) + ' s';
    // Refused (signed out, an expired token, a token for other rooms, a ban): the page stops
    // trying until the user signs in again or picks another room, and says why.
    if (state === 'refused') text = (detail && detail.words) || DM.describeError(detail && detail.code);
    el.textContent = text;
    // Signed in with a token the server refuses: the token field comes back, to paste another.
    $('signin').classList.toggle('in', Boolean(token) && state !== 'refused');
  }

  function showLastId() {
    $('lastId').textContent = room && room.lastId ? String(room.lastId) : '–';
  }

  setInterval(() => {
    const s = renderer.stats();
    $('onScreen').textContent = String(s.onScreen);
    $('overflow').textContent = String(s.overflow);
  }, 500);

  /* ---------- recent list ---------- */

  function addRecent(item) {
    const li = DM.el(
      'li',
      { 'data-id': item.id, title: '#' + item.id, class: own.has(String(item.id)) ? 'own' : null },
      DM.el('time', null, new Date(Number(item.ts) || Date.now()).toTimeString().slice(0, 8)),
      DM.el('span', { class: 'who' }, item.name || item.user || 'guest'),
      DM.el('span', { class: 'text' }, item.text == null ? '' : item.text)
    );
    if (/^#[0-9a-fA-F]{6}$/.test(item.color)) li.style.borderLeftColor = item.color;
    const list = $('recent');
    list.prepend(li); // newest on top
    while (list.children.length > MAX_RECENT) list.lastElementChild.remove();
  }

  function markOwn(id) {
    const key = String(id);
    own.add(key);
    if (own.size > MAX_OWN) own.delete(own.values().next().value);
    renderer.setOwn(key);
    const li = $('recent').querySelector('li[data-id="' + Number(id) + '"]');
    if (li) li.classList.add('own');
  }

  /* ---------- the room ---------- */

  function join(name, force) {
    name = String(name || '').trim();
    if (!DM.isRoomName(name)) {
      $('roomErr').textContent = 'Room names are 1–64 characters: letters, digits, _ . : - (not only dots).';
      return;
    }
    $('roomErr').textContent = '';
    $('room').value = name;
    if (name === roomName && !force && !(room && room.state === 'refused')) return;
    if (room) room.close();
    if (name !== roomName) {
      renderer.clear();
      $('recent').textContent = '';
      $('online').textContent = '–';
      $('hint').hidden = false;
      own.clear();
    }
    roomName = name;
    document.title = name + ' · danmaku';
    $('overlayLink').href = '/overlay/' + encodeURIComponent(name);
    // A rejoin (sign-in change) resumes where the old connection was.
    const since = room && room.name === name ? room.lastId : null;
    room = new DM.Room(name, {
      token,
      since,
      onState: setStatus,
      onHello: (h) => {
        if (typeof h.online === 'number') $('online').textContent = String(h.online);
        showLastId();
      },
      onDanmaku: (items) => {
        $('hint').hidden = true;
        for (const item of items) {
          renderer.add(item, { own: own.has(String(item.id)) });
          addRecent(item);
        }
        showLastId();
      },
      onDelete: (ids) => {
        for (const id of ids) {
          renderer.remove(id);
          const li = $('recent').querySelector('li[data-id="' + Number(id) + '"]');
          if (li) li.remove();
        }
      },
      onOnline: (n) => ($('online').textContent = String(n)),
      onLagged: (n) => notice('Your connection is slow: the server skipped ' + n + ' danmaku.'),
      onError: (err) => formMsg(err.words, 'err'),
    });
    room.connect();
    markCurrentRoom();
  }

  /** `/r/{room}`, or at `/` the `?room=` asked for, else lobby. */
  function roomFromPath() {
    if (location.pathname.startsWith('/r/')) return DM.pageRoom();
    return new URLSearchParams(location.search).get('room') || 'lobby';
  }

  function go(name) {
    if (!DM.isRoomName(name)) return join(name);
    if (name !== roomName) history.pushState(null, '', '/r/' + encodeURIComponent(name) + location.search);
    join(name);
  }

  $('roomForm').addEventListener('submit', (e) => {
    e.preventDefault();
    go($('room').value.trim());
  });
  window.addEventListener('popstate', () => join(roomFromPath()));

  /* ---------- active rooms ---------- */

  function markCurrentRoom() {
    for (const b of $('rooms').querySelectorAll('button')) b.setAttribute('aria-current', String(b.dataset.room === roomName));
  }

  function roomsMessage(text) {
    $('rooms').replaceChildren(DM.el('li', { class: 'empty' }, text));
  }

  async function refreshRooms() {
    if (document.hidden) return;
    try {
      const res = await fetch('/api/v1/rooms?sort=online&limit=50', { cache: 'no-store' });
      if (!res.ok) throw new Error('HTTP ' + res.status);
      const rooms = ((await res.json()).rooms || []).filter((r) => r && typeof r.room === 'string' && DM.isRoomName(r.room));
      if (!rooms.length) return roomsMessage('no active rooms');
      // The list is rebuilt: a keyboard user on a room's button keeps focus on that room's new one.
      const focused = document.activeElement && $('rooms').contains(document.activeElement) ? document.activeElement.dataset.room : null;
      $('rooms').replaceChildren(
        ...rooms.map((r) => {
          const b = DM.el('button', { type: 'button', 'data-room': r.room, 'aria-label': r.room + ', ' + r.online + ' online' }, r.room, DM.el('small', null, '· ' + r.online));
          b.addEventListener('click', () => go(r.room));
          return DM.el('li', null, b);
        })
      );
      markCurrentRoom();
      if (focused != null) {
        const again = [...$('rooms').querySelectorAll('button')].find((b) => b.dataset.room === focused);
        if (again) again.focus();
      }
    } catch (_) {
      roomsMessage('room list unavailable');
    }
  }

  /* ---------- sending ---------- */

  function loadName() {
    const s = storage('localStorage');
    return (s && s.getItem(NAME_KEY)) || '';
  }

  function saveName(name) {
    const s = storage('localStorage');
    if (!s) return;
    if (name) s.setItem(NAME_KEY, name);
    else s.removeItem(NAME_KEY);
  }

  $('sendForm').addEventListener('submit', async (e) => {
    e.preventDefault();
    if (!room) {
      formMsg('Join a room first.', 'err');
      return;
    }
    const input = $('text');
    const text = input.value.trim();
    if (!text) {
      formMsg(DM.describeError('empty_text'), 'err');
      return;
    }
    const name = $('name').value.trim();
    saveName(name);
    const btn = $('sendBtn');
    btn.disabled = true;
    formMsg('sending…');
    try {
      const res = await room.send({ text, mode: $('mode').value, color: $('color').value, size: Number($('size').value), name });
      if (input.value.trim() === text) input.value = '';
      if (res.held != null) formMsg(DM.describeError('held'), 'ok');
      else {
        markOwn(res.id);
        formMsg('Sent.', 'ok');
      }
    } catch (err) {
      formMsg(err.words || DM.describeError('network'), 'err');
    } finally {
      btn.disabled = false;
      input.focus();
    }
  });

  /* ---------- start ---------- */

  $('name').value = loadName();
  showSignedIn();
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden) refreshRooms();
  });
  setInterval(refreshRooms, 5000);
  join(roomFromPath());
  refreshRooms();
})();
