// DM.Renderer: draws danmaku on a stage element, each one a DOM element.
//
//   const r = new DM.Renderer(stageEl, {fontSize: 25, speed: 1, opacity: 1, maxOnScreen: 150, ...});
//   r.add(item, {own: false, elapsed: 0}); r.remove(id); r.pause(); r.resume(); r.clear();
//   r.setOptions({...}); r.stats(); r.destroy();
//
// How it stays smooth at hundreds of danmaku a second:
// - one requestAnimationFrame loop moves everything with transform: translate3d (no layout);
// - add() only queues; the loop inserts the frame's new elements together, reads all their
//   widths at once (one layout per frame at most), then writes positions;
// - each element is measured once; finished elements are recycled through a small pool;
// - every queue has a cap, so memory stays bounded whatever the input rate.
//
// Lanes: a scrolling danmaku moves at (stageWidth + width) / duration, so wider ones are faster.
// A new one takes the first lane where, over the time both are on the stage, it stays clear of
// every danmaku already in that lane (positions are linear in time, so checking both ends of that
// interval is exact). Top and bottom danmaku are centred and hold their rows for their display time.
'use strict';
(function () {
  const DM = (window.DM = window.DM || {});

  const MODES = { scroll: 'dm-scroll', reverse: 'dm-reverse', top: 'dm-top', bottom: 'dm-bottom' };
  const COLOR_RE = /^#[0-9a-fA-F]{6}$/;
  const LINE = 1.25; // line-height of .dm in danmaku.css: a normal-size danmaku is one lane high
  const DEFAULTS = {
    fontSize: 25, // px of a size-25 ("normal") danmaku; protocol sizes scale from it
    fontFamily: '', // empty: the stack in danmaku.css
    speed: 1, // scroll speed factor: a scroll takes scrollSeconds / speed
    opacity: 1,
    maxOnScreen: 150,
    lanes: 0, // 0: as many lanes as fit the stage's height
    showName: false,
    scrollSeconds: 8,
    fixedSeconds: 4, // how long a top or bottom danmaku stays
    waitSeconds: 1.5, // how long a danmaku may wait for a free lane before it counts as overflow
    maxWaiting: 64, // danmaku waiting for a lane at most (more: overflow at once)
  };
  const POOL_MAX = 64; // spare elements kept for reuse
  const INCOMING_MAX = 2000; // add() calls not yet taken by a frame (a hidden tab takes none)

  function clamp(x, lo, hi) {
    return Math.min(hi, Math.max(lo, x));
  }

  // Near-black text would vanish in a dark outline: it gets a light one instead.
  function isDark(hex) {
    const n = parseInt(hex.slice(1), 16);
    return 0.2126 * (n >> 16) + 0.7152 * ((n >> 8) & 255) + 0.0722 * (n & 255) < 80;
  }

  class Renderer {
    constructor(stage, options) {
      this.stage = stage;
      this.o = Object.assign({}, DEFAULTS);
      this.incoming = []; // [item, own, elapsed] not yet taken by a frame
      this.waiting = []; // measured records with no lane yet
      this.active = []; // records on the stage
      this.fixed = []; // the top and bottom ones among them, as of fixedAt (fixedOnStage)
      this.fixedAt = -1;
      this.byId = new Map(); // id -> record on the stage or waiting (bounded by both)
      this.scrollLanes = []; // lane -> records in it
      this.pool = [];
      this.counts = { overflow: 0, shown: 0 };
      this.pausedAt = null; // clock time when paused, or null
      this.pausedTotal = 0;
      this.hiddenPause = false;
      this.frame = 0;
      this.W = 0;
      this.H = 0;
      stage.classList.add('dm-stage');
      this.setOptions(options || {});
      this.measureStage();
      this.resizeObserver = new ResizeObserver(() => this.measureStage());
      this.resizeObserver.observe(stage);
      // A hidden tab gets no frames: freeze the clock so nothing jumps when it comes back.
      this.onVisibility = () => {
        if (document.hidden && this.pausedAt === null) {
          this.hiddenPause = true;
          this.pause();
        } else if (!document.hidden && this.hiddenPause) {
          this.hiddenPause = false;
          this.resume();
        }
      };
      document.addEventListener('visibilitychange', this.onVisibility);
      this.tick = this.tick.bind(this);
      this.frame = requestAnimationFrame(this.tick);
    }

    /** Changes settings; size, speed and lane settings apply to danmaku added from now on. */
    setOptions(options) {
      for (const key of Object.keys(DEFAULTS)) {
        if (options[key] !== undefined && options[key] !== null) this.o[key] = options[key];
      }
      const o = this.o;
      o.fontSize = clamp(Number(o.fontSize) || DEFAULTS.fontSize, 6, 200);
      o.speed = clamp(Number(o.speed) || 1, 0.1, 10);
      o.opacity = clamp(Number(o.opacity), 0, 1);
      if (Number.isNaN(o.opacity)) o.opacity = 1;
      o.maxOnScreen = clamp(Math.floor(Number(o.maxOnScreen)) || 0, 1, 5000);
      o.lanes = clamp(Math.floor(Number(o.lanes)) || 0, 0, 500);
      o.scrollSeconds = clamp(Number(o.scrollSeconds) || DEFAULTS.scrollSeconds, 1, 60);
      o.fixedSeconds = clamp(Number(o.fixedSeconds) || DEFAULTS.fixedSeconds, 0.5, 60);
      o.waitSeconds = clamp(Number(o.waitSeconds) || 0, 0, 10);
      o.maxWaiting = clamp(Math.floor(Number(o.maxWaiting)) || 0, 0, 1000);
      o.showName = Boolean(o.showName);
      // Custom properties through the CSSOM: allowed by the pages' style-src 'self'.
      this.stage.style.setProperty('--dm-opacity', String(o.opacity));
      if (o.fontFamily) this.stage.style.setProperty('--dm-font', String(o.fontFamily));
      else this.stage.style.removeProperty('--dm-font');
      this.layoutLanes();
    }

    measureStage() {
      this.W = this.stage.clientWidth;
      this.H = this.stage.clientHeight;
      this.layoutLanes();
    }

    // A new font size or stage height changes the lanes' height: the danmaku already on the stage
    // keep their y, so which lanes they cover is worked out again from their pixels (else a new
    // one could be put over an old one, lane numbers meaning other heights than when it was put).
    layoutLanes() {
      this.laneH = this.o.fontSize * LINE;
      const fit = Math.max(1, Math.floor(this.H / this.laneH));
      this.laneCount = this.o.lanes > 0 ? Math.min(this.o.lanes, fit) : fit;
      this.scrollLanes = Array.from({ length: this.laneCount }, () => []);
      for (const rec of this.active) {
        if (rec.fixed) continue;
        const last = Math.min(this.laneCount, Math.ceil((rec.y + rec.h) / this.laneH - 0.01));
        for (let j = Math.max(0, Math.floor(rec.y / this.laneH)); j < last; j++) this.scrollLanes[j].push(rec);
      }
    }

    // Lanes a danmaku `h` px high covers, at the lane height of now.
    lanesFor(h) {
      return Math.max(1, Math.ceil(h / this.laneH - 0.01));
    }

    /** Queues a danmaku; the next frame puts it on the stage (or counts it as overflow). */
    add(item, opts) {
      if (!item || typeof item !== 'object') return;
      const own = Boolean(opts && opts.own);
      const elapsed = Math.max(0, Number(opts && opts.elapsed) || 0);
      if (this.incoming.length >= INCOMING_MAX) {
        this.counts.overflow++;
        return;
      }
      this.incoming.push([item, own, elapsed]);
    }

    /** Takes a danmaku off the stage (a recall). */
    remove(id) {
      const rec = this.byId.get(String(id));
      if (rec) this.drop(rec);
      const key = String(id);
      this.incoming = this.incoming.filter((e) => String(e[0].id) !== key);
    }

    /** Marks a danmaku as the viewer's own (its ack may come after it is drawn). */
    setOwn(id) {
      const rec = this.byId.get(String(id));
      if (rec) {
        rec.el.classList.add('dm-own');
        return;
      }
      const key = String(id);
      for (const e of this.incoming) if (String(e[0].id) === key) e[1] = true;
    }

    pause() {
      if (this.pausedAt === null) this.pausedAt = performance.now();
    }

    resume() {
      this.hiddenPause = false;
      if (this.pausedAt !== null) {
        this.pausedTotal += performance.now() - this.pausedAt;
        this.pausedAt = null;
      }
    }

    /** Removes every danmaku (on the stage, waiting, queued). */
    clear() {
      for (const rec of this.active) this.release(rec);
      for (const rec of this.waiting) this.release(rec);
      this.active = [];
      this.waiting = [];
      this.incoming = [];
      this.byId.clear();
      this.fixedAt = -1;
      for (const lane of this.scrollLanes) lane.length = 0;
    }

    stats() {
      return {
        onScreen: this.active.length,
        overflow: this.counts.overflow,
        shown: this.counts.shown,
        waiting: this.waiting.length + this.incoming.length,
      };
    }

    destroy() {
      cancelAnimationFrame(this.frame);
      this.clear();
      this.pool = [];
      this.resizeObserver.disconnect();
      document.removeEventListener('visibilitychange', this.onVisibility);
      this.stage.classList.remove('dm-stage');
    }

    // The renderer's clock in ms: stands still while paused.
    now() {
      return (this.pausedAt === null ? performance.now() : this.pausedAt) - this.pausedTotal;
    }

    tick() {
      this.frame = requestAnimationFrame(this.tick);
      if (this.pausedAt !== null) return; // frozen: elements keep their last transforms
      const now = this.now();
      this.expire(now);
      this.place(now);
      this.move(now);
    }

    // Finished danmaku leave the stage.
    expire(now) {
      let keep = 0;
      const active = this.active;
      for (let i = 0; i < active.length; i++) {
        const rec = active[i];
        if (now >= rec.end) {
          this.byId.delete(rec.key);
          this.release(rec);
        } else {
          active[keep++] = rec;
        }
      }
      active.length = keep;
    }

    // Inserts this frame's new danmaku: writes (append), one read pass (widths), then lanes.
    place(now) {
      const o = this.o;
      // Waiting ones first (oldest first), each already measured.
      if (this.waiting.length) {
        const still = [];
        for (const rec of this.waiting) {
          if (this.byId.get(rec.key) !== rec) continue; // recalled meanwhile
          if (this.active.length < o.maxOnScreen && this.tryPlace(rec, now)) continue;
          if (now - rec.queuedAt > o.waitSeconds * 1000) {
            this.byId.delete(rec.key);
            this.counts.overflow++;
            this.release(rec);
          } else {
            still.push(rec);
          }
        }
        this.waiting = still;
      }
      if (!this.incoming.length) return;
      // Only as many new elements as could still be shown or wait: the rest is overflow
      // without ever touching the DOM.
      const room = Math.max(0, o.maxOnScreen - this.active.length) + Math.max(0, o.maxWaiting - this.waiting.length);
      const batch = this.incoming.length > room ? this.incoming.slice(0, room) : this.incoming;
      this.counts.overflow += this.incoming.length - batch.length;
      this.incoming = [];
      const recs = [];
      for (const [item, own, elapsed] of batch) {
        const rec = this.build(item, own, elapsed, now);
        if (!rec) continue;
        this.stage.appendChild(rec.el);
        recs.push(rec);
      }
      for (const rec of recs) rec.w = rec.el.offsetWidth; // one layout for the whole batch
      for (const rec of recs) {
        if (rec.end <= now) {
          this.release(rec); // started before its time was up (a seek): nothing to show
          continue;
        }
        if (this.active.length < o.maxOnScreen && this.tryPlace(rec, now)) continue;
        if (rec.elapsed === 0 && this.waiting.length < o.maxWaiting && o.waitSeconds > 0) {
          rec.queuedAt = now;
          rec.el.remove(); // waits off the stage, its width known
          this.byId.set(rec.key, rec);
          this.waiting.push(rec);
        } else {
          this.counts.overflow++;
          this.release(rec);
        }
      }
    }

    build(item, own, elapsed, now) {
      const o = this.o;
      const mode = Object.prototype.hasOwnProperty.call(MODES, item.mode) ? item.mode : 'scroll';
      const color = typeof item.color === 'string' && COLOR_RE.test(item.color) ? item.color : '#ffffff';
      const size = clamp(Number(item.size) || 25, 12, 64);
      const px = (size / 25) * o.fontSize;
      const el = this.pool.pop() || document.createElement('div');
      el.className = 'dm dm-measure ' + MODES[mode] + (own ? ' dm-own' : '') + (isDark(color) ? ' dm-dark' : '');
      el.dataset.id = String(item.id);
      el.textContent = '';
      if (o.showName && item.name) {
        const name = document.createElement('span');
        name.className = 'dm-name';
        name.textContent = String(item.name); // user text: a text node, never markup
        el.appendChild(name);
      }
      el.appendChild(document.createTextNode(String(item.text == null ? '' : item.text)));
      el.style.fontSize = px + 'px';
      el.style.color = color;
      el.style.transform = '';
      const fixed = mode === 'top' || mode === 'bottom';
      const duration = (fixed ? o.fixedSeconds : o.scrollSeconds / o.speed) * 1000;
      const t0 = now - elapsed * 1000;
      return {
        key: String(item.id),
        el,
        mode,
        fixed,
        h: px * LINE,
        w: 0,
        t0,
        duration,
        end: t0 + duration,
        elapsed,
        queuedAt: 0,
        x0: 0, // position at t0 (scroll) or fixed x
        v: 0, // px per ms, signed
        y: 0,
      };
    }

    tryPlace(rec, now) {
      const ok = rec.fixed ? this.placeFixed(rec, now) : this.placeScroll(rec, now);
      if (!ok) return false;
      if (!rec.el.parentNode) this.stage.appendChild(rec.el);
      rec.el.classList.remove('dm-measure');
      if (rec.fixed) rec.el.style.transform = `translate3d(${rec.x0}px,${rec.y}px,0)`;
      else this.position(rec, now);
      this.active.push(rec);
      if (rec.fixed && this.fixedAt === now) this.fixed.push(rec);
      this.byId.set(rec.key, rec);
      this.counts.shown++;
      return true;
    }

    placeScroll(rec, now) {
      const W = this.W;
      // A danmaku that waited starts its run now, at the edge.
      if (rec.queuedAt) {
        rec.t0 = now;
        rec.end = now + rec.duration;
      }
      rec.v = ((W + rec.w) / rec.duration) * (rec.mode === 'reverse' ? 1 : -1);
      rec.x0 = rec.mode === 'reverse' ? -rec.w : W;
      const k = this.lanesFor(rec.h); // the lane height may have changed while it waited
      const gap = Math.max(8, this.o.fontSize * 0.5);
      for (let i = 0; i + k <= this.laneCount; i++) {
        let free = true;
        for (let j = i; j < i + k && free; j++) free = this.laneFree(j, rec, now, gap);
        if (!free || this.coversFixed(rec, i * this.laneH, now)) continue;
        for (let j = i; j < i + k; j++) this.scrollLanes[j].push(rec);
        rec.y = i * this.laneH;
        return true;
      }
      return false;
    }

    // Whether `rec` keeps clear of everything in lane j while both are on the stage.
    laneFree(j, rec, now, gap) {
      const lane = this.scrollLanes[j];
      let keep = 0;
      let free = true;
      for (let i = 0; i < lane.length; i++) {
        const other = lane[i];
        if (other.end <= now || this.byId.get(other.key) !== other) continue; // gone: forget it
        lane[keep++] = other;
        if (free && !clearOf(rec, other, now, gap)) free = false;
      }
      lane.length = keep;
      return free;
    }

    placeFixed(rec, now) {
      if (rec.queuedAt) {
        rec.t0 = now;
        rec.end = now + rec.duration;
      }
      rec.x0 = (this.W - rec.w) / 2;
      // Rows are lane-high steps from the top (top) or from the bottom of the lanes in use
      // (bottom): with `lanes` set that is the bottom of those lanes' band, not of the stage, so
      // the part of the picture below it stays clear. A row is free when no fixed danmaku on
      // the stage covers any of its height.
      const floor = this.o.lanes > 0 && this.o.lanes === this.laneCount ? this.laneCount * this.laneH : this.H;
      const rows = this.laneCount - this.lanesFor(rec.h) + 1;
      for (let i = 0; i < rows; i++) {
        const y = rec.mode === 'top' ? i * this.laneH : floor - rec.h - i * this.laneH;
        if (y < 0) break;
        let free = true;
        for (const other of this.active) {
          if (other.end <= now || !(y < other.y + other.h - 0.5 && other.y < y + rec.h - 0.5)) continue;
          // A fixed one in the row, or a scrolling one that crosses this one's place while
          // both are on the stage.
          if (other.fixed || crosses(other, rec.x0, rec.w, now, Math.min(rec.end, other.end))) {
            free = false;
            break;
          }
        }
        if (free) {
          rec.y = y;
          return true;
        }
      }
      return false;
    }

    // The top and bottom danmaku on the stage at `now`: found once a frame (placing tries
    // every lane of every waiting danmaku against them), kept up to date as they are placed.
    fixedOnStage(now) {
      if (this.fixedAt !== now) {
        this.fixedAt = now;
        this.fixed = this.active.filter((r) => r.fixed && r.end > now);
      }
      return this.fixed;
    }

    // Whether scrolling `rec`, placed at height y, would cross a top or bottom danmaku on the
    // stage while both are there: then it takes another lane.
    coversFixed(rec, y, now) {
      for (const other of this.fixedOnStage(now)) {
        if (!(y < other.y + other.h - 0.5 && other.y < y + rec.h - 0.5)) continue;
        if (crosses(rec, other.x0, other.w, now, Math.min(rec.end, other.end))) return true;
      }
      return false;
    }

    position(rec, now) {
      const x = rec.x0 + rec.v * (now - rec.t0);
      rec.el.style.transform = `translate3d(${x.toFixed(1)}px,${rec.y}px,0)`;
    }

    // Writes only: every scrolling danmaku's transform for this frame.
    move(now) {
      for (const rec of this.active) if (!rec.fixed) this.position(rec, now);
    }

    drop(rec) {
      this.byId.delete(rec.key);
      const i = this.active.indexOf(rec);
      if (i >= 0) this.active.splice(i, 1);
      const w = this.waiting.indexOf(rec);
      if (w >= 0) this.waiting.splice(w, 1);
      this.release(rec);
    }

    release(rec) {
      const el = rec.el;
      el.remove();
      if (this.pool.length < POOL_MAX) this.pool.push(el);
      rec.el = null;
      rec.end = -Infinity; // lanes forget it
    }
  }

  // Two scrolling danmaku in one lane keep `gap` px apart over the time both are on the stage.
  // Positions are linear in time, so the distance is too: checking both ends is enough.
  // Whether scrolling `rec` covers any of [x, x + w) at some moment from `from` to `to`: it
  // moves at a steady speed, so the places it takes over that time are one span, from its
  // place at `from` to its place at `to`, each with its width.
  function crosses(rec, x, w, from, to) {
    if (to <= from) return false;
    const a = rec.x0 + rec.v * (from - rec.t0);
    const b = rec.x0 + rec.v * (to - rec.t0);
    return Math.min(a, b) < x + w - 0.5 && x < Math.max(a, b) + rec.w - 0.5;
  }

  function clearOf(a, b, now, gap) {
    const from = Math.max(now, a.t0, b.t0);
    const to = Math.min(a.end, b.end);
    if (to <= from) return true;
    const ahead = (t) => a.x0 + a.v * (t - a.t0) - (b.x0 + b.v * (t - b.t0) + b.w); // a right of b
    const behind = (t) => b.x0 + b.v * (t - b.t0) - (a.x0 + a.v * (t - a.t0) + a.w); // b right of a
    return (ahead(from) >= gap && ahead(to) >= gap) || (behind(from) >= gap && behind(to) >= gap);
  }

  DM.Renderer = Renderer;
})();
