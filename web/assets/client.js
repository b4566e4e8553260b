// DM.Room: one room over the server's WebSocket, reconnecting for ever without gaps or duplicates.
//
//   const room = new DM.Room(name, {token, onHello, onDanmaku, onDelete, onOnline, onLagged,
//                                   onState, onError, retryRefused});
//   room.connect(); room.send({text, mode, color, size, vt, name}) -> Promise<{id}|{held}>;
//   room.close();
//
// DM.SendError {code, message, retryAfter, words}; DM.describeError(code, message, retryAfter);
// DM.el(tag, attrs, ...children) builds DOM without ever parsing markup.
'use strict';
(function () {
  const DM = (window.DM = window.DM || {});

  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 10000;
  const PING_MS = 25000; // a quiet room sends nothing JS can see: ping to notice a dead link
  const SILENCE_MS = 60000; // nothing heard for this long (not even a pong): reconnect
  // A connection up this long was a real one: the next drop starts the backoff afresh. Resetting
  // at `hello` instead would let a viewer the server drops at once (a slow consumer) reconnect
  // every half second for ever.
  const STABLE_MS = 10000;
  // A browser sees a handshake the server refused (401, 403, 400 before the upgrade) only as a
  // close 1006. After this many attempts in a row that never reached `hello`, one HTTP request to
  // the room's SSE route, which admits viewers by the same rules, tells why.
  const PROBE_AFTER = 2;
  const PROBE_TIMEOUT_MS = 10000;
  const REFUSED_RETRY_MS = 30000; // with retryRefused: how often a refused room is tried again
  // Refusals only a person can lift (sign in again, pick another room): retrying cannot help.
  const REFUSALS = [400, 401, 403];

  /** The server refused a send, or it could not be made. */
  class SendError extends Error {
    constructor(code, message, retryAfter) {
      super(message || code);
      this.name = 'SendError';
      this.code = code;
      this.retryAfter = retryAfter == null ? null : Number(retryAfter);
      this.words = describeError(code, message, retryAfter);
    }
  }

  function seconds(n) {
    n = Math.max(1, Math.ceil(Number(n) || 0));
    if (n < 90) return n === 1 ? '1 second' : n + ' seconds';
    const m = Math.ceil(n / 60);
    if (m < 90) return m + ' minutes';
    const h = Math.round(n / 3600);
    return h < 48 ? h + ' hours' : Math.round(n / 86400) + ' days';
  }

  /**
   * The server's stable error codes in plain words for people. `message` is the server's own
   * text (it tells muted from room closed under `forbidden`); `retryAfter` is in seconds.
   */
  function describeError(code, message, retryAfter) {
    const msg = String(message || '');
    const wait = retryAfter != null && Number(retryAfter) > 0 ? ' Try again in ' + seconds(retryAfter) + '.' : '';
    switch (code) {
      case 'rate_limited': {
        const slow = /^slow mode: one send per (\d+) s/.exec(msg);
        if (slow) return 'Slow mode: this room takes one danmaku every ' + seconds(slow[1]) + ' from each person.' + wait;
        return "You're sending too fast." + (wait || ' Wait a moment and try again.');
      }
      case 'forbidden': {
        if (/^muted/.test(msg)) {
          const left = /(\d+) s from now/.exec(msg);
          return 'You are muted' + (left ? ' for another ' + seconds(left[1]) : '') + ': your danmaku are not taken.';
        }
        if (/^room closed/.test(msg)) return 'This room is closed: it takes no danmaku for now.';
        if (/banned/.test(msg)) return 'Your address is banned from sending here.';
        if (/does not admit room/.test(msg)) return 'Your token does not admit this room: pick another room or sign in with another token.';
        return 'You may not send to this room.';
      }
      case 'blocked_content':
        return 'Your danmaku contains a blocked word. Please rephrase it.';
      case 'text_too_long': {
        const limit = /limit is (\d+)/.exec(msg);
        return 'Too long: ' + (limit ? 'at most ' + limit[1] + ' characters.' : 'please shorten it.');
      }
      case 'empty_text':
        return 'Type something first.';
      case 'invalid_field':
        return 'The danmaku was not accepted: ' + (msg || 'a field is invalid') + '.';
      case 'invalid_room':
        return 'That is not a valid room name.';
      case 'unauthorized':
        if (/expired/.test(msg)) return 'Your sign-in has expired: please sign in again.';
        if (/needs a token to watch/.test(msg)) return 'Please sign in: this server needs a token to watch.';
        return 'Please sign in: your token is missing, invalid or expired.';
      case 'payload_too_large':
        return 'Too long: the danmaku is larger than the server takes.';
      case 'held':
        return 'Held for review: a moderator will look at it before it is shown.';
      case 'held_queue_full':
        return 'This room holds too many danmaku for review already.' + (wait || ' Try again later.');
      case 'store_full':
        return 'The server cannot store anything right now (its disk is full).' + (wait || ' Try again later.');
      case 'store_unavailable':
      case 'internal':
        return 'The server could not store it.' + (wait || ' Try again in a moment.');
      case 'shutting_down':
        return 'The server is restarting.' + (wait || ' Try again in a moment.');
      case 'too_many_connections':
        return 'The server is full right now.' + (wait || ' Try again later.');
      case 'disconnected':
        return 'The connection dropped before the server answered: it may or may not have been sent.';
      case 'network':
        return 'Could not reach the server. Check your connection and try again.';
      default:
        return (msg || 'Something went wrong') + (code ? ' (' + code + ')' : '') + '.';
    }
  }

  /** Builds an element: attrs are set as attributes (or `class`), children as text or nodes. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === false || value == null) continue;
      if (/^on/i.test(key)) throw new Error('DM.el: no inline handlers (' + key + ')');
      node.setAttribute(key, value === true ? '' : String(value));
    }
    for (const child of children) {
      if (child == null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  class Room {
    constructor(name, opts) {
      this.name = String(name);
      this.opts = opts || {};
      this.token = this.opts.token || '';
      this.lastId = this.opts.since == null ? null : Number(this.opts.since); // null: start at "now"
      this.ws = null;
      this.state = 'closed';
      this.closed = true;
      this.backoff = BACKOFF_MIN_MS;
      this.retryTimer = 0;
      this.pingTimer = 0;
      this.heardAt = 0;
      this.refs = 0;
      this.pending = new Map(); // ref -> {resolve, reject}: at most limits.max_in_flight-ish, cleared on close
      this.attempt = 0;
      this.failures = 0; // attempts in a row that ended before `hello`
      this.liveAt = 0; // when the current connection said hello; 0: it has not
      this.gen = 0; // bumped by teardown: a probe answering after it is stale
    }

    /** Opens the connection (and keeps it open until close()); after a refusal, tries again. */
    connect() {
      this.closed = false;
      this.failures = 0;
      this.backoff = BACKOFF_MIN_MS;
      this.open();
    }

    /** Closes for good: no more reconnects; sends waiting for an answer are rejected. */
    close() {
      this.closed = true;
      this.teardown();
      this.failPending();
      this.setState('closed');
    }

    setState(state, detail) {
      this.state = state;
      if (this.opts.onState) this.opts.onState(state, detail || {});
    }

    url() {
      const base = this.opts.base || location.origin;
      const u = new URL('/ws', base.replace(/^http/, 'ws'));
      u.searchParams.set('room', this.name);
      if (this.lastId !== null) u.searchParams.set('since', String(this.lastId));
      if (this.token) u.searchParams.set('token', this.token);
      return u.toString();
    }

    open() {
      this.teardown();
      this.liveAt = 0;
      this.setState(this.attempt === 0 ? 'connecting' : 'reconnecting', { attempt: this.attempt });
      let ws;
      try {
        ws = new WebSocket(this.url());
      } catch (_) {
        this.retry();
        return;
      }
      this.ws = ws;
      ws.onopen = () => {
        this.heardAt = Date.now();
        this.pingTimer = setInterval(() => this.keepAlive(), PING_MS);
      };
      ws.onmessage = (ev) => {
        this.heardAt = Date.now();
        let msg;
        try {
          msg = JSON.parse(ev.data);
        } catch (_) {
          return;
        }
        if (msg && typeof msg === 'object') this.handle(msg);
      };
      // Every close (1001 at a restart, 1008 slow consumer, a dropped link) resumes with since.
      ws.onclose = (ev) => {
        if (this.ws !== ws) return;
        this.ws = null;
        this.failPending();
        this.retry(ev.code, ev.reason);
      };
    }

    keepAlive() {
      const ws = this.ws;
      if (!ws || ws.readyState !== WebSocket.OPEN) return;
      if (Date.now() - this.heardAt > SILENCE_MS) {
        ws.close(4000, 'silent');
        return;
      }
      ws.send('{"type":"ping"}');
    }

    retry(code, reason) {
      clearInterval(this.pingTimer);
      if (this.closed) return;
      this.attempt++;
      if (this.liveAt) {
        if (Date.now() - this.liveAt >= STABLE_MS) this.backoff = BACKOFF_MIN_MS;
        this.failures = 0;
      } else {
        this.failures++;
      }
      this.liveAt = 0;
      const delay = this.backoff;
      this.backoff = Math.min(this.backoff * 2, BACKOFF_MAX_MS);
      const later = () => {
        this.setState('reconnecting', { attempt: this.attempt, delay, code, reason });
        this.retryTimer = setTimeout(() => this.open(), delay);
      };
      if (this.failures < PROBE_AFTER) return later();
      const gen = this.gen;
      this.setState('reconnecting', { attempt: this.attempt, code, reason });
      this.probe().then((refusal) => {
        if (this.closed || gen !== this.gen) return; // closed or reopened meanwhile
        if (!refusal) return later();
        if (this.opts.retryRefused) {
          this.setState('refused', Object.assign({ delay: REFUSED_RETRY_MS }, refusal));
          this.retryTimer = setTimeout(() => this.open(), REFUSED_RETRY_MS);
        } else {
          this.setState('refused', refusal); // until connect() again
        }
      });
    }

    /**
     * Asks the SSE route whether the server admits us to the room: resolves {status, code,
     * message, words} when it refuses in a way only a person can fix, else null (it admits us,
     * is busy or restarting, or cannot be reached: keep trying). The token goes in a header,
     * never in an address a log could keep.
     */
    async probe() {
      const base = this.opts.base || location.origin;
      const abort = new AbortController();
      const timer = setTimeout(() => abort.abort(), PROBE_TIMEOUT_MS);
      const headers = { accept: 'text/event-stream' };
      if (this.token) headers.authorization = 'Bearer ' + this.token;
      try {
        const res = await fetch(new URL('/api/v1/rooms/' + encodeURIComponent(this.name) + '/stream', base), {
          headers,
          cache: 'no-store',
          signal: abort.signal,
        });
        if (!REFUSALS.includes(res.status)) return null; // 200: the stream is not read, only aborted
        const data = await res.json().catch(() => null);
        const e = (data && data.error) || {};
        const code = e.code || 'http_' + res.status;
        return { status: res.status, code, message: e.message || '', words: describeError(code, e.message) };
      } catch (_) {
        return null;
      } finally {
        clearTimeout(timer);
        abort.abort();
      }
    }

    teardown() {
      this.gen++;
      clearTimeout(this.retryTimer);
      clearInterval(this.pingTimer);
      const ws = this.ws;
      this.ws = null;
      if (ws) {
        ws.onopen = ws.onmessage = ws.onclose = null;
        try {
          ws.close(1000);
        } catch (_) {
          /* already closed */
        }
      }
    }

    failPending() {
      const pending = this.pending;
      this.pending = new Map();
      for (const p of pending.values()) p.reject(new SendError('disconnected'));
    }

    handle(msg) {
      const o = this.opts;
      switch (msg.type) {
        case 'hello':
          // Resume point when nothing has arrived yet: the room's newest id at join. A room
          // whose newest id is below ours lost its history (a new store): follow it, or every
          // new danmaku would look like one already seen.
          if (this.lastId === null || Number(msg.last_id) < this.lastId) this.lastId = Number(msg.last_id) || 0;
          this.liveAt = Date.now(); // the backoff resets only once this stays up (see retry)
          this.failures = 0;
          this.attempt = 0;
          this.setState('live', { online: msg.online });
          if (o.onHello) o.onHello(msg);
          break;
        case 'danmaku': {
          const fresh = [];
          for (const item of msg.items || []) {
            const id = Number(item.id);
            if (this.lastId !== null && !(id > this.lastId)) continue; // already had it
            this.lastId = id;
            fresh.push(item);
          }
          // A thinned frame stands for ids up to `last`: resume after them, not before.
          if (msg.last != null && Number(msg.last) > (this.lastId || 0)) this.lastId = Number(msg.last);
          if (fresh.length && o.onDanmaku) o.onDanmaku(fresh, { thinned: Number(msg.thinned) || 0 });
          break;
        }
        case 'delete':
          if (o.onDelete) o.onDelete(msg.ids || []);
          break;
        case 'online':
          if (o.onOnline) o.onOnline(Number(msg.count) || 0);
          break;
        case 'lagged':
          if (o.onLagged) o.onLagged(Number(msg.dropped) || 0);
          break;
        case 'ack':
        case 'held':
        case 'error': {
          const p = msg.ref == null ? undefined : this.pending.get(String(msg.ref));
          if (p) this.pending.delete(String(msg.ref));
          if (msg.type === 'ack') {
            if (p) p.resolve({ id: msg.id, ts: msg.ts });
          } else if (msg.type === 'held') {
            if (p) p.resolve({ held: msg.held });
          } else {
            const e = msg.error || {};
            const err = new SendError(e.code || 'error', e.message, e.retry_after_s);
            if (p) p.reject(err);
            else if (o.onError) o.onError(err);
          }
          break;
        }
        default:
          break; // pong, and types a newer server may add
      }
    }

    /**
     * Sends a danmaku. Over the open WebSocket when there is one, else over HTTP; resolves
     * {id} (stored) or {held} (waits for a moderator), rejects a DM.SendError.
     */
    send(fields) {
      const body = {};
      for (const key of ['text', 'mode', 'color', 'size', 'vt', 'name']) {
        if (fields[key] !== undefined && fields[key] !== null && fields[key] !== '') body[key] = fields[key];
      }
      const ws = this.ws;
      if (ws && ws.readyState === WebSocket.OPEN && this.state === 'live') {
        const ref = 'r' + ++this.refs;
        return new Promise((resolve, reject) => {
          this.pending.set(ref, { resolve, reject });
          ws.send(JSON.stringify(Object.assign({ type: 'send', ref }, body)));
        });
      }
      return this.post(body);
    }

    async post(body) {
      const base = this.opts.base || location.origin;
      const headers = { 'content-type': 'application/json' };
      if (this.token) headers.authorization = 'Bearer ' + this.token;
      let res;
      try {
        res = await fetch(new URL('/api/v1/rooms/' + encodeURIComponent(this.name) + '/danmaku', base), {
          method: 'POST',
          headers,
          body: JSON.stringify(body),
        });
      } catch (_) {
        throw new SendError('network');
      }
      const data = await res.json().catch(() => null);
      if (res.status === 201 && data) return { id: data.id, ts: data.ts };
      if (res.status === 202 && data) return { held: data.held };
      const e = (data && data.error) || {};
      throw new SendError(e.code || 'http_' + res.status, e.message || res.statusText, e.retry_after_s);
    }
  }

  /** The room grammar the server checks (docs/protocol.md "Room names"). */
  const ROOM_NAME = /^(?!\.+$)[A-Za-z0-9_.:-]{1,64}$/;

  /** Whether `name` is a room name the server takes. */
  function isRoomName(name) {
    return typeof name === 'string' && ROOM_NAME.test(name);
  }

  /**
   * The room a page is for: the last segment of its address (`/wall/hall` → `hall`),
   * decoded once; '' when the address has no room or a broken escape (the server then
   * refuses the name, and the page says so).
   */
  function pageRoom() {
    const segs = location.pathname.split('/').filter(Boolean);
    if (segs.length < 2) return '';
    try {
      return decodeURIComponent(segs[segs.length - 1]);
    } catch (_) {
      return '';
    }
  }

  DM.Room = Room;
  DM.SendError = SendError;
  DM.isRoomName = isRoomName;
  DM.pageRoom = pageRoom;
  DM.describeError = describeError;
  DM.el = el;
})();
