// Reveals streamed text at a reading pace. A local model answers in a few milliseconds, which
// shows nothing streaming; a hosted one can be slower than reading. The pacer shows what arrived
// at BASE_CHARS_PER_S, faster when it falls behind (never more than about MAX_LAG_S behind what
// arrived), and at once when the user prefers reduced motion. The server is never slowed.

const BASE_CHARS_PER_S = 80;
const MAX_LAG_S = 1.2;
const TICK_MS = 33;
const reducedMotion = () => window.matchMedia?.("(prefers-reduced-motion: reduce)").matches;

export class Pacer {
  /** `show(text)` is called with the part of the text to display, growing. */
  constructor(show) {
    this.show = show;
    this.text = "";
    this.shown = 0;
    this.budget = 0;
    this.timer = null;
    this.idle = [];
  }

  /** Text that is already known to the user (restored after a reload): shown at once. */
  restore(text) {
    this.text = text;
    this.shown = text.length;
    this.show(text);
  }

  push(delta) {
    this.text += delta;
    if (reducedMotion()) {
      this.shown = this.text.length;
      this.show(this.text);
      return;
    }
    this.timer ??= setInterval(() => this.tick(), TICK_MS);
  }

  tick() {
    const backlog = this.text.length - this.shown;
    const rate = Math.max(BASE_CHARS_PER_S, backlog / MAX_LAG_S);
    this.budget += (rate * TICK_MS) / 1000;
    const step = Math.min(backlog, Math.floor(this.budget));
    this.budget -= step;
    if (step > 0) {
      this.shown += step;
      this.show(this.text.slice(0, this.shown));
    }
    if (this.shown >= this.text.length) {
      clearInterval(this.timer);
      this.timer = null;
      for (const resolve of this.idle.splice(0)) resolve();
    }
  }

  /** Resolves once everything pushed so far is shown. */
  drained() {
    return this.shown >= this.text.length ? Promise.resolve() : new Promise((resolve) => this.idle.push(resolve));
  }
}
