// The OBS overlay (web/pages/overlay.html, /overlay/{room}): a room's danmaku on a transparent
// page, settings from the query string. Runs for days: the client keeps only the last id
// seen (no growing id set) and the renderer's queues are capped, so memory stays flat.
'use strict';
(function () {
  const q = new URLSearchParams(location.search);
  const MODES = ['scroll', 'reverse', 'top', 'bottom'];

  function num(key, dflt, lo, hi) {
    const raw = q.get(key);
    const n = raw === null || raw === '' ? NaN : Number(raw);
    return Number.isFinite(n) ? Math.min(hi, Math.max(lo, n)) : dflt;
  }

  function list(key) {
    return (q.get(key) || '')
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean);
  }

  function flag(key) {
    return ['1', 'true', 'yes', 'on'].includes((q.get(key) || '').toLowerCase());
  }

  // A broken escape gives '': the server refuses it, and the overlay stays empty.
  const roomName = DM.pageRoom();

  const stage = document.getElementById('stage');
  const settings = {
    lanes: num('lanes', 0, 0, 100),
    fontFamily: (q.get('font') || '').slice(0, 200),
    fontSize: num('size', 0, 8, 200), // 0: a thirtieth of the height (36 px at 1080p)
    speed: num('speed', 1, 0.25, 4),
    scrollSeconds: num('duration', 8, 2, 30),
    opacity: num('opacity', 1, 0, 1),
    maxOnScreen: num('max', 100, 1, 1000),
    showName: flag('name'),
  };
  const autoSize = settings.fontSize === 0;
  function sizeFor() {
    return autoSize ? Math.max(16, Math.round(window.innerHeight / 30)) : settings.fontSize;
  }
  const renderer = new DM.Renderer(stage, Object.assign({}, settings, { fontSize: sizeFor() }));
  if (autoSize) window.addEventListener('resize', () => renderer.setOptions({ fontSize: sizeFor() }));

  const hiddenModes = new Set(list('hide').filter((m) => MODES.includes(m)));
  const blocked = list('block').map((w) => w.toLowerCase());
  const muted = new Set(list('mute'));

  function wanted(item) {
    if (hiddenModes.has(item.mode || 'scroll')) return false;
    if (muted.has(String(item.user)) || muted.has(String(item.name))) return false;
    const text = String(item.text || '').toLowerCase();
    return !blocked.some((w) => text.includes(w));
  }

  const room = new DM.Room(roomName, {
    token: q.get('token') || '',
    // OBS has nobody to click "sign in": a refused overlay (an expired token, watching needs a
    // token) keeps trying every 30 s, so it comes back by itself once the server admits it.
    retryRefused: true,
    // Not shown (an overlay has no chrome); there for whoever inspects the page.
    onState: (state) => (document.documentElement.dataset.state = state),
    onDanmaku: (items) => {
      for (const item of items) if (wanted(item)) renderer.add(item);
    },
    onDelete: (ids) => ids.forEach((id) => renderer.remove(id)),
  });
  room.connect();
  DM.overlay = { renderer, room, settings };
})();
