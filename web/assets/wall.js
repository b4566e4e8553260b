// The event wall (web/pages/wall.html, /wall/{room}): a room's danmaku big on a screen, the
// number of people online, and a QR code of the phone send page (/m/{room}) in the corner.
//
//   ?qr=0       hides the QR code and the phone address
//   ?title=TEXT shows a heading (as text)
//   ?name=0     hides senders' names
//
// Runs for a whole event: DM.Room reconnects for ever, resuming after the last id seen, and
// the renderer's queues are capped, so a long night or a flaky link loses nothing and grows
// nothing.
'use strict';
(function () {
  const q = new URLSearchParams(location.search);
  const off = (key) => ['0', 'false', 'no', 'off'].includes((q.get(key) || '').toLowerCase());
  const $ = (id) => document.getElementById(id);

  // A broken escape gives '': the server refuses it, and the state says so.
  const roomName = DM.pageRoom();
  const roomPath = '/wall/' + encodeURIComponent(roomName);

  const title = (q.get('title') || '').trim().slice(0, 200);
  if (title) {
    $('title').textContent = title;
    $('title').hidden = false;
    document.title = title + ' · danmaku';
  }

  // Readable across a hall: a fifteenth of the stage's height (72 px on a 1080p screen).
  const stage = $('stage');
  const sizeFor = () => Math.max(20, Math.round(stage.clientHeight / 15));
  const renderer = new DM.Renderer(stage, {
    fontSize: sizeFor(),
    showName: !off('name'),
    maxOnScreen: 120,
    scrollSeconds: 10, // far-away readers need a little longer than a player's 8 s
  });
  window.addEventListener('resize', () => renderer.setOptions({ fontSize: sizeFor() }));

  const online = $('online');
  function showOnline(count) {
    online.textContent = Number(count).toLocaleString();
  }

  const state = $('state');
  function showState(name, detail) {
    state.className = 'wall-state ' + name;
    document.documentElement.dataset.state = name;
    if (name === 'live') state.textContent = 'live';
    else if (name === 'reconnecting') {
      const wait = detail && detail.delay ? ' in ' + Math.ceil(detail.delay / 1000) + ' s' : '';
      state.textContent = 'connection lost, reconnecting' + wait + '…';
    } else if (name === 'refused') {
      // Styled as a lost connection; tried again every 30 s (nobody may be at the screen).
      state.className = 'wall-state reconnecting refused';
      state.textContent = (detail && detail.words) || 'refused';
    } else state.textContent = name === 'closed' ? 'closed' : 'connecting…';
  }

  const room = new DM.Room(roomName, {
    retryRefused: true, // a wall runs unattended: once the server admits it again, it comes back
    onState: showState,
    onHello: (hello) => showOnline(hello.online),
    onOnline: showOnline,
    onDanmaku: (items) => {
      for (const item of items) {
        // Everyone without a name is "guest": a wall full of "guest:" says nothing.
        renderer.add(item.name === 'guest' ? Object.assign({}, item, { name: '' }) : item);
      }
    },
    onDelete: (ids) => ids.forEach((id) => renderer.remove(id)),
  });
  room.connect();

  // The QR code and the address under it. The server knows the address phones should use
  // ([web] public_url), which may not be the one this screen loaded the wall from.
  const qr = $('qr');
  if (off('qr')) {
    qr.hidden = true;
  } else {
    $('qr-img').src = roomPath + '/qr.svg';
    const showAddress = () =>
      fetch(roomPath + '/phone')
        .then((res) => (res.ok ? res.json() : Promise.reject(new Error('HTTP ' + res.status))))
        .then((body) => {
          const url = String(body.url || '');
          // Host and path apart, so a narrow column breaks the line between them.
          const at = url.indexOf('/', url.indexOf('//') + 2);
          const cut = at < 0 ? url.length : at;
          $('phone-url').replaceChildren(url.slice(0, cut), document.createElement('wbr'), url.slice(cut));
          $('qr-img').alt = 'QR code of ' + url;
        })
        .catch(() => setTimeout(showAddress, 5000)); // the server may be restarting
    showAddress();
  }

  DM.wall = { renderer, room };
})();
