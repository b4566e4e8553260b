// The video player page (web/pages/player.html, /v/{room}?src=VIDEO_URL): a video with the
// room's danmaku shown at each one's video time (vt), loaded window by window as it plays,
// live danmaku as they come, sending at the current moment, and a density graph to seek by.
//
// Timing is driven by the video itself: every animation frame (and every timeupdate) reads
// video.currentTime and shows the danmaku whose vt the playhead has just passed, each started
// as far into its flight as the playhead is past its vt. No timers schedule danmaku, so pause,
// seek, stalls and playback rate are followed exactly.
'use strict';
(function () {
  const $ = (id) => document.getElementById(id);
  const WINDOW_S = 30; // history is loaded in windows of this much video time
  const PREFETCH_S = 10; // the next window is fetched when the playhead is this close to its start
  const CATCH_UP_S = 1; // after a seek to t, danmaku from [t - 1 s, t] join mid-flight
  const JUMP_S = 1.5; // the playhead moving more than this between two steps is a seek
  const PAGE_MAX = 1000; // limits.max_history by default; halved if the server takes fewer
  const WINDOW_MAX = 10000; // danmaku kept per window at most, so memory stays bounded
  const SHOWN_MAX = 5000; // ids remembered as shown since the last seek (bounded)
  const OWN_MAX = 200;
  const RETRY_MS = 5000; // a window that failed to load is asked again after this
  const SCROLL_S = 8; // a scrolling danmaku crosses the stage in 8 s of video time
  const FIXED_S = 4; // a top or bottom danmaku stays 4 s of video time
  const PAUSED_LIVE_S = 1; // how far into its flight a live danmaku starts on a paused video
  const REF_HEIGHT = 540; // a normal danmaku is 25 px on a 540 px high stage
  const SVG_NS = 'http://www.w3.org/2000/svg';

  const video = $('video');
  const stage = $('stage');

  /* ---------- words on the page ---------- */

  function problem(text) {
    const el = $('problem');
    el.textContent = text;
    el.hidden = !text;
  }

  function formMsg(text, kind) {
    const el = $('formMsg');
    el.textContent = text;
    el.className = 'msg ' + (kind || '');
  }

  function clock(s) {
    s = Math.max(0, Math.floor(Number(s) || 0));
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const sec = String(s % 60).padStart(2, '0');
    return h ? h + ':' + String(m).padStart(2, '0') + ':' + sec : m + ':' + sec;
  }

  function setStatus(state, detail) {
    const el = $('status');
    el.className = 'pill ' + state;
    let text = state;
    if (state === 'reconnecting' && detail && detail.delay) text = 'reconnecting in ' + Math.max(1, Math.round(detail.delay / 1000)) + ' s';
    el.textContent = text;
  }

  /* ---------- the room and the video, from the address ---------- */

  function videoSource() {
    const raw = new URLSearchParams(location.search).get('src');
    if (raw === null || !raw.trim()) {
      return {
        error:
          'No video to play: this page needs the address of a video file, as ?src=VIDEO_URL ' +
          '(for example /v/' + (roomName || 'ROOM') + '?src=https://example.com/film.mp4).',
      };
    }
    let url = null;
    try {
      url = new URL(raw.trim(), location.href);
    } catch (_) {
      /* reported below */
    }
    if (!url || (url.protocol !== 'http:' && url.protocol !== 'https:')) {
      return { error: 'The video address "' + raw + '" is not an http or https link to a video file.' };
    }
    return { url: url.href };
  }

  const MEDIA_ERRORS = {
    1: 'loading was stopped',
    2: 'a network error interrupted it',
    3: 'the file could not be decoded',
    4: 'the address does not point to a video this browser can play, or it cannot be reached',
  };

  const roomName = DM.pageRoom();
  if (!DM.isRoomName(roomName)) {
    problem('That is not a valid room name: room names are 1–64 characters, letters, digits, _ . : - (not only dots).');
    $('player').hidden = true;
    return;
  }
  $('roomName').textContent = roomName;
  document.title = roomName + ' · danmaku player';

  const source = videoSource();
  if (source.error) {
    problem(source.error);
    $('player').hidden = true;
    return;
  }

  /* ---------- drawing ---------- */

  const renderer = new DM.Renderer(stage, { maxOnScreen: 150, scrollSeconds: SCROLL_S, fixedSeconds: FIXED_S });
  new ResizeObserver(() => {
    const h = stage.clientHeight;
    if (h > 0) renderer.setOptions({ fontSize: Math.max(14, Math.min(40, (h / REF_HEIGHT) * 25)) });
  }).observe(stage);
  setInterval(() => ($('onScreen').textContent = String(renderer.stats().onScreen)), 500);

  const own = new Set(); // ids this viewer sent (bounded)
  let shown = new Set(); // ids shown since the last seek: nothing shows twice (bounded)
  let enabled = true;
  let speed = 1; // the renderer's speed: the video's playback rate
  let lastT = 0; // video time up to which danmaku have been shown
  let seekPending = false;
  let thawFrames = 0; // frames left before a paused renderer freezes again (see thaw)
  // Whether the playhead is moving. The renderer's clock runs only then: it starts once the
  // playhead has really moved (play() returns before it does), and stops on pause, seek or
  // stall, so that it never runs ahead of the video.
  let running = false;
  let armedAt = null; // the playhead when the video became ready to play, until it moves
  // How far the renderer's clock has run ahead of the video (s): it is held while ahead, so
  // that danmaku stay where their vt puts them whatever the video's own start-up and latency.
  let lead = 0;
  let held = false;
  let lastClock = null; // {r: renderer clock (ms), t: playhead} at the previous frame

  function show(item, elapsed) {
    // A hidden tab draws nothing: what would pile up meanwhile would all fly at once, out of
    // place, on return. Coming back is a seek to the playhead instead (see visibilitychange).
    if (document.hidden) return;
    const key = String(item.id);
    shown.add(key);
    if (shown.size > SHOWN_MAX) shown.delete(shown.values().next().value);
    if (enabled) renderer.add(item, { own: own.has(key), elapsed: Math.max(0, elapsed) });
  }

  // The renderer places new danmaku only on its frames, which stop while it is paused: let
  // it run two frames so that danmaku added at a paused playhead are drawn, then freeze again.
  function thaw() {
    if (running || document.hidden) return;
    renderer.resume();
    thawFrames = 2;
  }

  /* ---------- history, one window of video time at a time ---------- */

  // k -> {k, items (ascending vt), ids, state: idle|loading|ready|failed, retryAt, ctrl}
  const windows = new Map();
  let pageSize = PAGE_MAX;
  const byVt = (a, b) => a.vt - b.vt || a.id - b.id;

  function windowOf(vt) {
    return Math.floor(Math.max(0, vt) / WINDOW_S);
  }

  // Index of the first item with vt > t.
  function after(items, t) {
    let lo = 0;
    let hi = items.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (items[mid].vt > t) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  }

  // Every known danmaku with vt in (a, b].
  function each(a, b, fn) {
    if (b < 0) return;
    for (let k = windowOf(a); k <= windowOf(b); k++) {
      const w = windows.get(k);
      if (!w) continue;
      for (let i = after(w.items, a); i < w.items.length && w.items[i].vt <= b; i++) fn(w.items[i]);
    }
  }

  // Shows those with vt in (a, b] not shown yet, each as far into its flight as the playhead
  // (at t) is past its vt: in real seconds, video seconds over the playback rate.
  function emit(a, b, t) {
    each(a, b, (item) => {
      if (!shown.has(String(item.id))) show(item, (t - item.vt) / speed);
    });
  }

  function store(w, item, sorted) {
    const key = String(item.id);
    if (w.ids.has(key) || w.items.length >= WINDOW_MAX) return;
    w.ids.add(key);
    if (sorted) w.items.splice(after(w.items, item.vt), 0, item);
    else w.items.push(item);
  }

  function usable(item) {
    if (!item || typeof item !== 'object' || item.id == null) return null;
    const vt = Number(item.vt);
    if (!Number.isFinite(vt)) return null;
    item.vt = vt;
    return item;
  }

  function historyUrl(from, to, limit) {
    return '/api/v1/rooms/' + encodeURIComponent(roomName) + '/danmaku?from=' + from + '&to=' + to + '&limit=' + limit;
  }

  // The danmaku with vt in [from, to), page after page (a window may hold more than a page).
  async function fetchRange(from, to, signal) {
    const out = [];
    let cursor = from;
    for (;;) {
      const limit = pageSize;
      const res = await fetch(historyUrl(cursor, to, limit), { signal, cache: 'no-store' });
      const data = await res.json().catch(() => null);
      if (res.status === 400 && data && data.error && data.error.code === 'invalid_query' && limit > 1) {
        pageSize = Math.max(1, Math.floor(limit / 2)); // this server's max_history is lower
        continue;
      }
      if (!res.ok || !data) throw new Error('HTTP ' + res.status);
      const items = (Array.isArray(data.items) ? data.items : []).map(usable).filter(Boolean);
      out.push(...items);
      if (items.length < limit || out.length >= WINDOW_MAX) return out;
      // The next page starts at the last vt (those at that very vt come again: ids dedupe them).
      // History pages by vt only, so a whole page at one vt can only move past it, or the same
      // page would come back for ever: the rest at that vt cannot be read. Said, not hidden.
      const last = items[items.length - 1].vt;
      if (items[0].vt === last) {
        formMsg('More than ' + limit + ' danmaku share the moment ' + clock(last) + '; only ' + limit + ' of them are shown.', 'err');
      }
      cursor = last > cursor ? last : cursor + Math.max(1e-6, Math.abs(cursor) * 1e-12);
    }
  }

  async function load(w) {
    const ctrl = new AbortController();
    w.state = 'loading';
    w.ctrl = ctrl;
    try {
      const items = await fetchRange(w.k * WINDOW_S, (w.k + 1) * WINDOW_S, ctrl.signal);
      if (windows.get(w.k) !== w) return; // dropped meanwhile
      for (const item of items) store(w, item, false);
      w.items.sort(byVt);
      w.state = 'ready';
      // Those the playhead passed while the window was loading, if only just.
      emit(lastT - CATCH_UP_S - 1e-9, lastT, lastT);
      thaw();
    } catch (_) {
      if (ctrl.signal.aborted || windows.get(w.k) !== w) return;
      w.state = 'failed';
      w.retryAt = performance.now() + RETRY_MS;
      formMsg('Could not load the danmaku near ' + clock(w.k * WINDOW_S) + '; trying again.', 'err');
    }
  }

  function want(k) {
    let w = windows.get(k);
    if (!w) {
      w = { k, items: [], ids: new Set(), state: 'idle', retryAt: 0, ctrl: null };
      windows.set(k, w);
    }
    if (w.state === 'idle' || (w.state === 'failed' && performance.now() >= w.retryAt)) load(w);
  }

  // The window under the playhead, the next one when it is near, the one before just after a
  // window starts (for catch-up); every other window is dropped.
  function ensureWindows(t) {
    const duration = Number.isFinite(video.duration) ? video.duration : Infinity;
    const k = windowOf(t);
    want(k);
    const next = (k + 1) * WINDOW_S;
    if (t >= next - PREFETCH_S && next < duration) want(k + 1);
    if (k > 0 && t - k * WINDOW_S < CATCH_UP_S) want(k - 1);
    for (const [j, w] of windows) {
      if (j < k - 1 || j > k + 1) {
        if (w.ctrl) w.ctrl.abort();
        windows.delete(j);
      }
    }
  }

  /* ---------- following the video ---------- */

  function seekTo(t) {
    seekPending = false;
    renderer.clear();
    shown = new Set();
    lastT = t;
    ensureWindows(t);
    emit(t - CATCH_UP_S - 1e-9, t, t);
    thaw();
  }

  function step() {
    const t = video.currentTime;
    if (!Number.isFinite(t)) return;
    ensureWindows(t);
    if (video.seeking || document.hidden) return; // hidden: timeupdate still comes, frames not
    if (seekPending || t < lastT - 0.05 || t - lastT > JUMP_S) {
      seekTo(t);
      return;
    }
    if (t > lastT) {
      emit(lastT, t, t);
      lastT = t;
    }
  }

  function sync() {
    const t = video.currentTime;
    const playable = !video.paused && !video.seeking && !video.ended && video.readyState >= 3;
    if (!playable) {
      armedAt = null;
      held = false;
      if (running) {
        running = false;
        renderer.pause();
      }
    } else if (!running) {
      if (armedAt === null) armedAt = t;
      else if (t !== armedAt) {
        running = true;
        thawFrames = 0;
        renderer.resume();
      }
    }
  }

  // Holds the renderer for as long as its clock is ahead of the playhead.
  function keepPace() {
    const r = renderer.now();
    const t = video.currentTime;
    if (running && lastClock) lead += (r - lastClock.r) / 1000 - (t - lastClock.t) / speed;
    else lead = 0;
    lastClock = { r, t };
    const hold = running && lead > 0.02;
    if (hold === held) return;
    held = hold;
    if (hold) renderer.pause();
    else renderer.resume();
  }

  function frame() {
    requestAnimationFrame(frame);
    sync();
    step();
    keepPace();
    if (thawFrames > 0 && --thawFrames === 0 && !running) renderer.pause();
    drawHead();
  }

  // A hidden tab gets no frames, and the renderer freezes its own clock; the video may play on,
  // pause or end meanwhile. Either way the renderer starts from scratch: held until the playhead
  // is seen to move, and on return the stage is as after a seek to the playhead (the last
  // second's danmaku mid-flight), not what piled up.
  document.addEventListener('visibilitychange', () => {
    running = false;
    armedAt = null;
    held = false;
    lead = 0;
    lastClock = null;
    thawFrames = 0;
    renderer.pause();
    if (document.hidden) return;
    seekPending = true;
    sync();
    step();
  });
  video.addEventListener('timeupdate', step);
  video.addEventListener('seeking', () => (seekPending = true));
  video.addEventListener('seeked', step);
  for (const type of ['pause', 'waiting', 'seeking', 'playing', 'ended']) video.addEventListener(type, sync);
  video.addEventListener('ratechange', () => {
    speed = Math.min(10, Math.max(0.1, video.playbackRate || 1));
    // Scrolling ones already cross in SCROLL_S / speed; top and bottom ones last as long in
    // video time too.
    renderer.setOptions({ speed, fixedSeconds: FIXED_S / speed });
    // Those in flight start again where they are, moving at the new speed.
    const t = video.currentTime;
    each(t - SCROLL_S, t, (item) => {
      const key = String(item.id);
      if (!shown.has(key)) return;
      renderer.remove(key);
      show(item, (t - item.vt) / speed);
    });
    thaw();
  });
  video.addEventListener('error', () => {
    const err = video.error;
    problem('The video could not be played: ' + ((err && MEDIA_ERRORS[err.code]) || 'it failed to load') + ' (' + source.url + ').');
  });
  video.addEventListener('loadedmetadata', loadDensity);
  video.src = source.url;
  renderer.pause(); // until the video plays
  requestAnimationFrame(frame);

  /* ---------- the density graph ---------- */

  const graph = $('densityGraph');
  const slider = $('density');
  let bucket = 0;
  let counts = [];

  function duration() {
    return Number.isFinite(video.duration) && video.duration > 0 ? video.duration : 0;
  }

  async function loadDensity() {
    const d = duration();
    if (!d) {
      $('densityNote').textContent = 'This video has no known length, so there is no density graph.';
      return;
    }
    bucket = Math.max(0.5, Math.round(d) / 100);
    slider.setAttribute('aria-valuemax', String(Math.floor(d)));
    // Only the video's length is counted (`to`): a danmaku with a vt far past the end would
    // otherwise ask for more buckets than the server gives. A server that still refuses (one
    // without `to`) is asked once more with buckets twice as large.
    const to = Math.ceil(d);
    const ask = (b) =>
      fetch('/api/v1/rooms/' + encodeURIComponent(roomName) + '/density?bucket=' + b + '&to=' + to, { cache: 'no-store' });
    try {
      let res = await ask(bucket);
      if (res.status === 400) {
        bucket *= 2;
        res = await ask(bucket);
      }
      const data = res.ok ? await res.json() : null;
      if (!data || !Array.isArray(data.counts)) throw new Error('HTTP ' + res.status);
      if (Number(data.bucket_s) > 0) bucket = Number(data.bucket_s);
      counts = data.counts.map((c) => Math.max(0, Number(c) || 0));
    } catch (_) {
      counts = [];
      $('densityNote').textContent = 'The danmaku density could not be loaded; the bar still seeks.';
    }
    drawDensity();
  }

  function drawDensity() {
    const d = duration();
    if (!d || !bucket) return;
    const n = Math.max(1, Math.ceil(d / bucket));
    graph.setAttribute('viewBox', '0 0 ' + n + ' 100');
    graph.dataset.bucketS = String(bucket);
    let max = 0;
    for (let i = 0; i < n; i++) max = Math.max(max, counts[i] || 0);
    const bars = [];
    for (let i = 0; i < n; i++) {
      const c = counts[i] || 0;
      if (!c) continue;
      const h = Math.max(3, (c / max) * 100);
      const rect = document.createElementNS(SVG_NS, 'rect');
      rect.setAttribute('x', String(i + 0.1));
      rect.setAttribute('width', '0.8');
      rect.setAttribute('y', String(100 - h));
      rect.setAttribute('height', String(h));
      rect.setAttribute('data-bucket', String(i));
      rect.setAttribute('data-count', String(c));
      bars.push(rect);
    }
    graph.replaceChildren(...bars);
  }

  // A danmaku that came live adds to its bucket at once.
  function countLive(vt) {
    if (!bucket) return;
    const i = Math.floor(vt / bucket);
    if (i < 0 || i > 100000) return;
    while (counts.length <= i) counts.push(0);
    counts[i]++;
    drawDensity();
  }

  function seekVideo(t) {
    const d = duration();
    if (!d) return;
    video.currentTime = Math.min(Math.max(0, t), d);
  }

  let headShownAt = -1;
  function drawHead() {
    const d = duration();
    const t = video.currentTime || 0;
    if (!d || Math.abs(t - headShownAt) < 0.05) return;
    headShownAt = t;
    $('densityHead').style.left = ((t / d) * 100).toFixed(3) + '%';
    slider.setAttribute('aria-valuenow', String(Math.floor(t)));
    slider.setAttribute('aria-valuetext', clock(t) + ' of ' + clock(d));
  }

  slider.addEventListener('click', (e) => {
    const d = duration();
    const box = slider.getBoundingClientRect();
    if (!d || !bucket || box.width <= 0) return;
    const frac = Math.min(1, Math.max(0, (e.clientX - box.left) / box.width));
    seekVideo(Math.floor((frac * d) / bucket) * bucket); // the start of the clicked bar
  });
  slider.addEventListener('keydown', (e) => {
    const d = duration();
    if (!d || !bucket) return;
    const t = video.currentTime;
    const to = {
      ArrowLeft: t - bucket,
      ArrowDown: t - bucket,
      ArrowRight: t + bucket,
      ArrowUp: t + bucket,
      PageDown: t - 10 * bucket,
      PageUp: t + 10 * bucket,
      Home: 0,
      End: d,
    }[e.key];
    if (to === undefined) return;
    e.preventDefault();
    seekVideo(to);
  });

  /* ---------- live danmaku and sending ---------- */

  function markOwn(id) {
    const key = String(id);
    own.add(key);
    if (own.size > OWN_MAX) own.delete(own.values().next().value);
    renderer.setOwn(key);
  }

  const room = new DM.Room(roomName, {
    onState: setStatus,
    onDanmaku: (items) => {
      for (const item of items) {
        const vt = Number(item.vt);
        if (item.vt != null && Number.isFinite(vt)) {
          // New, so shown now; kept in its window (if loaded) so that a seek back finds it,
          // and marked shown so that the playhead passing its vt does not show it again.
          item.vt = vt;
          const w = windows.get(windowOf(vt));
          if (w) store(w, item, true);
          countLive(vt);
        }
        // While the video is paused the stage stands still: a new one is put a little way in,
        // where it can be seen, rather than frozen at the edge.
        if (!shown.has(String(item.id))) show(item, video.paused ? PAUSED_LIVE_S : 0);
      }
      thaw();
    },
    onDelete: (ids) => {
      for (const id of ids) {
        const key = String(id);
        renderer.remove(key);
        for (const w of windows.values()) {
          if (!w.ids.delete(key)) continue;
          w.items = w.items.filter((item) => String(item.id) !== key);
        }
      }
    },
    onError: (err) => formMsg(err.words, 'err'),
  });
  room.connect();

  $('sendForm').addEventListener('submit', async (e) => {
    e.preventDefault();
    const input = $('text');
    const text = input.value.trim();
    if (!text) {
      formMsg(DM.describeError('empty_text'), 'err');
      return;
    }
    const vt = video.currentTime || 0;
    const btn = $('sendBtn');
    btn.disabled = true;
    formMsg('sending…');
    try {
      const res = await room.send({ text, vt, mode: $('mode').value, color: $('color').value, name: $('name').value.trim() });
      if (input.value.trim() === text) input.value = '';
      if (res.held != null) formMsg(DM.describeError('held'), 'ok');
      else {
        markOwn(res.id);
        formMsg('Sent at ' + clock(vt) + '.', 'ok');
      }
    } catch (err) {
      formMsg(err.words || DM.describeError('network'), 'err');
    } finally {
      btn.disabled = false;
      input.focus();
    }
  });

  /* ---------- showing or hiding danmaku, full screen ---------- */

  $('toggle').addEventListener('click', () => {
    enabled = !enabled;
    const btn = $('toggle');
    btn.setAttribute('aria-pressed', String(enabled));
    btn.textContent = enabled ? 'Danmaku on' : 'Danmaku off';
    stage.hidden = !enabled;
    if (!enabled) renderer.clear();
  });
  $('fullscreen').addEventListener('click', () => {
    const screen = $('screen');
    if (document.fullscreenElement) document.exitFullscreen();
    else if (screen.requestFullscreen) screen.requestFullscreen().catch(() => formMsg('Full screen is not allowed here.', 'err'));
  });
})();
