/*! wsrelay.js: the browser client of wsrelay, served by every service at
 * GET /wsrelay.js (a classic script: the global WsRelay) and GET /wsrelay.mjs
 * (the same file as an ES module: `import { WsRelay } from "/wsrelay.mjs"`).
 * docs/guide.md, "The browser client: wsrelay.js", is its manual. MIT licence.
 *
 *   const relay = new WsRelay("/ws/chat?room=lobby");
 *   relay.on("publication", (p) => show(p.channel, p.data));
 *   relay.on("state", (s) => status(s.state));
 *   relay.send("hello");
 *
 * It reconnects by itself (exponential back-off with jitter), keeps each
 * channel's position (the last offset and epoch it handed the page), names
 * those positions in the `recover` query parameter of each reconnection, and
 * hands the page each publication of a channel with history once, in offset
 * order; a loss it cannot hide is told as a `gap` event. No dependencies.
 */

// `var`, not `const`: a classic script's top-level var is a property of
// window (window.WsRelay); in the module form it stays the module's own,
// exported by the line the server adds after this file.
var WsRelay = (function () {
  "use strict";

  // The events a page can listen to; on() refuses any other name.
  const EVENTS = ["state", "publication", "message", "subscribed", "unsubscribed", "join", "leave", "gap"];

  // The events of a channel's envelope ({"channel", "event", ...}). Any other
  // message (what a process sends with ws.send) is the application's own.
  const CHANNEL_EVENTS = ["publication", "subscribed", "unsubscribed", "join", "leave"];

  // A client's life, one state machine: each state and the states it may go
  // to. "reconnecting" covers the wait before an attempt and the attempt;
  // a failed attempt goes from it to itself, with the next delay.
  const TRANSITIONS = {
    connecting: ["open", "reconnecting", "closed"],
    open: ["reconnecting", "closed"],
    reconnecting: ["reconnecting", "open", "closed"],
    closed: [],
  };

  // The options and their defaults; any other option name is refused.
  const DEFAULTS = {
    minDelay: 500, // ms: the first retry waits between half of it and all of it
    maxDelay: 30000, // ms: each failed attempt doubles the delay, up to this
    finalCodes: [], // close codes from the server after which it stays closed
    sendQueue: 100, // messages send() keeps while there is no open socket
    protocols: [], // WebSocket subprotocols, as for new WebSocket()
  };

  // The server refuses a whole `recover` that names more channels than one
  // connection may have (WSRELAY_MAX_CHANNELS_PER_CONNECTION, 128 by
  // default): the most recently subscribed are sent, at most this many.
  const MAX_RECOVER = 128;

  // A listener that throws must not stop the others nor the client: its
  // error is reported as an uncaught one would be, and dispatch goes on.
  const report = typeof reportError === "function" ? (err) => reportError(err) : (err) => setTimeout(() => { throw err; });

  // The envelope in a text message, or null: the application's own message.
  function envelope(text) {
    if (text.charCodeAt(0) !== 123 /* "{" */) return null;
    let value;
    try {
      value = JSON.parse(text);
    } catch (err) {
      return null; // an application message that merely starts with "{"
    }
    if (value === null || typeof value.channel !== "string" || !CHANNEL_EVENTS.includes(value.event)) return null;
    return value;
  }

  class WsRelay {
    /** `url`: ws:, wss:, http:, https: or relative to the page (the scheme
     * is made ws: or wss:). `options`: see DEFAULTS. It connects at once. */
    constructor(url, options = {}) {
      for (const name of Object.keys(options)) {
        if (!(name in DEFAULTS)) {
          throw new TypeError(`WsRelay: unknown option ${name}; known: ${Object.keys(DEFAULTS).join(", ")}`);
        }
      }
      this._options = Object.assign({}, DEFAULTS, options);
      this._url = new URL(url, globalThis.location ? globalThis.location.href : undefined);
      if (this._url.protocol === "http:") this._url.protocol = "ws:";
      else if (this._url.protocol === "https:") this._url.protocol = "wss:";
      this._handlers = new Map(EVENTS.map((event) => [event, []]));
      this._state = "connecting";
      this._socket = null; // the current WebSocket; a replaced one's events are ignored
      this._timer = null; // the pending reconnection
      this._attempt = 0; // failed attempts since the last open
      this._queue = []; // what send() keeps until a socket opens
      // channel -> {epoch, offset}: the last publication handed to the page,
      // or where its subscription began. Sent as `recover` on reconnection.
      this._positions = new Map();
      // channel -> position this connection's `recover` named, until the
      // channel's `subscribed` event says whether it was recovered.
      this._asked = new Map();
      // channel -> the latest offset when this connection's subscription
      // began: publications up to it are a recovery's replay.
      this._replayUntil = new Map();
      this._connect();
    }

    /** "connecting", "open", "reconnecting" or "closed". */
    get state() {
      return this._state;
    }

    /** The current WebSocket (its `extensions`, `protocol`), or null. */
    get socket() {
      return this._socket;
    }

    /** The last position handed to the page on `channel`, {epoch, offset}, or null. */
    position(channel) {
      const known = this._positions.get(channel);
      return known ? { epoch: known.epoch, offset: known.offset } : null;
    }

    /** Call `fn(detail)` on each `event` (one of EVENTS); returns a function that removes it. */
    on(event, fn) {
      const handlers = this._handlers.get(event);
      if (!handlers) throw new TypeError(`WsRelay: unknown event ${event}; known: ${EVENTS.join(", ")}`);
      if (typeof fn !== "function") throw new TypeError(`WsRelay: the handler of ${event} must be a function`);
      handlers.push(fn);
      return () => this.off(event, fn);
    }

    off(event, fn) {
      const handlers = this._handlers.get(event);
      if (!handlers) throw new TypeError(`WsRelay: unknown event ${event}; known: ${EVENTS.join(", ")}`);
      const index = handlers.indexOf(fn);
      if (index >= 0) handlers.splice(index, 1);
    }

    /** Send `data` (what WebSocket.send takes) to the connection's target.
     * While there is no open socket it is kept, in order, and sent once one
     * opens: true when sent or kept, false when refused (the client is
     * closed, or `sendQueue` messages are already waiting). */
    send(data) {
      if (this._state === "closed") return false;
      if (this._socket && this._socket.readyState === WebSocket.OPEN) {
        this._socket.send(data);
        return true;
      }
      if (this._queue.length >= this._options.sendQueue) return false;
      this._queue.push(data);
      return true;
    }

    /** Close for good: no reconnection. `code` is 1000 or 3000-4999. */
    close(code = 1000, reason = "") {
      if (code !== 1000 && !(code >= 3000 && code <= 4999)) {
        throw new RangeError(`WsRelay: close code ${code}: a browser may close with 1000 or 3000-4999`);
      }
      if (this._state === "closed") return;
      if (this._socket) this._socket.close(code, reason);
      this._socket = null;
      clearTimeout(this._timer);
      this._timer = null;
      this._queue = [];
      this._setState("closed", { code, reason, initiator: "client" });
    }

    // -- the connection --------------------------------------------------------------

    _connect() {
      this._timer = null;
      const url = new URL(this._url);
      this._asked = new Map(this._recoverFrom());
      this._replayUntil.clear();
      if (this._asked.size) url.searchParams.set("recover", JSON.stringify(Object.fromEntries(this._asked)));
      const sock = new WebSocket(url.href, this._options.protocols);
      sock.binaryType = "arraybuffer";
      this._socket = sock;
      // Assigned (not addEventListener) so that these are the socket's only
      // handlers; each ignores a socket that is no longer the current one.
      sock.onopen = () => {
        if (sock === this._socket) this._onOpen();
      };
      sock.onmessage = (e) => {
        if (sock === this._socket) this._onMessage(e.data);
      };
      sock.onclose = (e) => {
        if (sock === this._socket) this._onClose(e.code, e.reason);
      };
      // No onerror: an error event is always followed by a close event, which decides.
    }

    /** The positions to name in `recover`: those of the MAX_RECOVER channels subscribed most recently. */
    _recoverFrom() {
      const entries = Array.from(this._positions.entries());
      return entries.slice(Math.max(0, entries.length - MAX_RECOVER));
    }

    _onOpen() {
      this._attempt = 0;
      // What was kept goes first, in order: a handler of "open" that sends
      // comes after it.
      const queue = this._queue;
      this._queue = [];
      for (const data of queue) this._socket.send(data);
      this._setState("open", {});
    }

    _onClose(code, reason) {
      this._socket = null;
      if (this._options.finalCodes.includes(code)) {
        this._queue = [];
        this._setState("closed", { code, reason, initiator: "server" });
        return;
      }
      // Equal jitter: between half the ceiling and all of it, so that clients
      // cut together do not all come back together, and none without waiting.
      const ceiling = Math.min(this._options.maxDelay, this._options.minDelay * 2 ** Math.min(this._attempt, 30));
      const delay = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
      this._attempt += 1;
      this._timer = setTimeout(() => this._connect(), delay);
      this._setState("reconnecting", { code, reason, delay, attempt: this._attempt });
    }

    _setState(next, detail) {
      const previous = this._state;
      if (!TRANSITIONS[previous].includes(next)) throw new Error(`WsRelay: no transition from ${previous} to ${next}`);
      this._state = next;
      this._emit("state", Object.assign({ state: next, previous }, detail));
    }

    // -- what arrives ----------------------------------------------------------------

    _onMessage(data) {
      const ev = typeof data === "string" ? envelope(data) : null;
      if (ev === null) this._emit("message", { data });
      else if (ev.event === "publication") this._onPublication(ev);
      else if (ev.event === "subscribed") this._onSubscribed(ev);
      else if (ev.event === "unsubscribed") this._onUnsubscribed(ev);
      else this._emit(ev.event, { channel: ev.channel, info: ev.info });
    }

    _onPublication(ev) {
      const channel = ev.channel;
      if (typeof ev.offset !== "number") {
        // A channel without history: nothing to order by, nothing to recover.
        this._emit("publication", { channel, data: ev.data, offset: null, epoch: null, replayed: false });
        return;
      }
      const known = this._positions.get(channel);
      if (known && known.epoch === ev.epoch) {
        if (ev.offset <= known.offset) return; // handed to the page already
        if (ev.offset > known.offset + 1) {
          this._emit("gap", { channel, reason: "offset", epoch: ev.epoch, missed: ev.offset - known.offset - 1 });
        }
      } else if (known) {
        // Another history than the one this client followed: its offsets say
        // nothing of what was missed in between.
        this._emit("gap", { channel, reason: "epoch", epoch: ev.epoch, missed: null });
      }
      this._positions.set(channel, { epoch: ev.epoch, offset: ev.offset });
      const until = this._replayUntil.get(channel);
      this._emit("publication", {
        channel, data: ev.data, offset: ev.offset, epoch: ev.epoch, replayed: until !== undefined && ev.offset <= until,
      });
    }

    _onSubscribed(ev) {
      const channel = ev.channel;
      const asked = this._asked.get(channel);
      this._asked.delete(channel);
      const recovered = ev.recovered === true;
      // Re-inserted, so that the Map's order is the order of subscription (_recoverFrom).
      this._positions.delete(channel);
      if (recovered && asked) {
        // The publications after `asked` follow, up to ev.offset, then the live ones.
        this._positions.set(channel, { epoch: ev.epoch, offset: asked.offset });
        this._replayUntil.set(channel, ev.offset);
      } else {
        this._positions.set(channel, { epoch: ev.epoch, offset: ev.offset });
        this._replayUntil.delete(channel);
      }
      this._emit("subscribed", { channel, offset: ev.offset, epoch: ev.epoch, recovered });
      if (asked && !recovered) {
        const missed = asked.epoch === ev.epoch ? ev.offset - asked.offset : null;
        this._emit("gap", { channel, reason: "not_recovered", epoch: ev.epoch, missed });
      }
    }

    _onUnsubscribed(ev) {
      this._positions.delete(ev.channel);
      this._replayUntil.delete(ev.channel);
      this._emit("unsubscribed", { channel: ev.channel });
    }

    _emit(event, detail) {
      for (const fn of this._handlers.get(event).slice()) {
        try {
          fn(detail);
        } catch (err) {
          report(err);
        }
      }
    }
  }

  WsRelay.EVENTS = EVENTS.slice();
  WsRelay.STATES = Object.keys(TRANSITIONS);
  return WsRelay;
})();
