// fastws-client: a WebSocket client for fastws that reconnects and recovers by itself.
//
// The JavaScript twin of fastws.Client (fastws/client.py), for browsers and Node (20 with
// --experimental-websocket, 22+ as is, or any WebSocket constructor given as an option).
//
// Theory of operation:
//  1. One FastWSClient owns at most one socket at a time (`#ws`). Every handler of a socket
//     first checks that the socket is still the current one, so a late event of a socket
//     given up (heartbeat timeout, welcome timeout, close()) changes nothing.
//  2. A connection counts as open on the welcome event, not on the socket's `open`: the
//     welcome carries the tenant channel's position, and `connect()` resolves with it.
//  3. Positions are (epoch, offset) per channel. They come from the welcome and from every
//     subscribe ack (those without `recovered:true`: a recovered channel keeps ours, the
//     replay brings it forward), and move forward with each event's offset.
//  4. On reconnect the connect URL carries the filters and the tenant channel's position
//     (since/epoch); every other subscription is restored with a subscribe carrying its
//     position. The server replays what was missed in order, then continues live.
//  5. Events are deduplicated by offset per channel (a bounded set), so a replay that
//     overlaps what was already delivered is not delivered twice.
//  6. `recovered:false` (welcome or ack) is reported: a 'recovery' event, the channel in
//     `recoveryFailures`, and an 'error' with code 'recovery_failed'; the position jumps to
//     the one the server gave, so the client goes on from there.
//  7. Backoff: attempt n waits between half and all of min(maxReconnectInterval,
//     reconnectInterval * 2^(n-1)). A refusal that waiting cannot fix (HTTP 400, 401, 403)
//     ends in status 'failed'; so does running out of attempts.
//  8. A browser cannot read the status of a refused upgrade, so after a handshake that
//     failed the client asks the same URL with a plain fetch: fastws answers it with the
//     refusal an upgrade would get (JSON), e.g. 503 rolled_back with a legacy_url.

/** @typedef {'idle'|'connecting'|'connected'|'reconnecting'|'disconnected'|'failed'} Status */

const FILTER_KEYS = ['eventTypes', 'sources', 'priority', 'users'];
const RECENT_LIMIT = 4096; // offsets remembered per channel for deduplication
const MAX_REDIRECTS = 3; // legacy URLs followed in a row before giving up on the attempt
const FINAL_STATUSES = new Set([400, 401, 403]); // refusals that retrying cannot fix

/** An error of the server (its `code`, the command's `ref`, the HTTP `status`) or of the client. */
export class FastWSError extends Error {
  /**
   * @param {string} message
   * @param {{code?: string, ref?: any, status?: number, body?: any, cause?: any}} [details]
   */
  constructor(message, { code, ref, status, body, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'FastWSError';
    this.code = code;
    this.ref = ref;
    this.status = status;
    this.body = body;
  }
}

/**
 * The delay before reconnect attempt `attempt` (1, 2, ...): capped exponential backoff with
 * jitter, between half and all of min(max, base * 2^(attempt-1)), as fastws.Client does.
 */
export function backoffDelay(attempt, base, max, random = Math.random) {
  const delay = Math.min(max, base * 2 ** Math.max(0, attempt - 1));
  return delay * (0.5 + 0.5 * random());
}

/** The legacy URL named by a 4002 close reason ("websocket_v2 off: URL"), or ''. */
export function legacyUrlFromReason(reason) {
  const at = (reason || '').indexOf(': ');
  return at < 0 ? '' : reason.slice(at + 2).trim();
}

export class FastWSClient {
  #ws = null;
  #retired = new WeakSet(); // sockets whose end was handled (#onClosed)
  #inflight = null; // the connection attempt under way
  #abortAttempt = null; // ends the attempt's wait for its welcome
  #listeners = new Map();
  #pending = new Map();
  #refs = 0;
  #recent = new Map();
  #closing = false;
  #reconnectTimer = null;
  #heartbeatTimer = null;
  #lastSeen = 0;
  #pingSentAt = 0;
  #queue = [];
  #waiters = [];
  #ended = false;

  constructor({
    url,
    tenantId,
    userId,
    token,
    filters,
    channels = [],
    autoReconnect = true,
    reconnectInterval = 1000,
    maxReconnectInterval = 30000,
    maxReconnectAttempts = Infinity,
    heartbeatInterval = 20000,
    heartbeatTimeout = 10000,
    requestTimeout = 10000,
    followLegacy = true,
    maxQueue = 10000,
    WebSocket: WebSocketImpl,
  } = {}) {
    if (!url) throw new FastWSError('url is required', { code: 'missing_field' });
    this.url = url;
    this.tenantId = tenantId;
    this.userId = userId;
    this.token = token;
    this.filters = { ...(filters || {}) };
    this.channels = [...channels];
    this.autoReconnect = autoReconnect;
    this.reconnectInterval = reconnectInterval;
    this.maxReconnectInterval = maxReconnectInterval;
    this.maxReconnectAttempts = maxReconnectAttempts;
    this.heartbeatInterval = heartbeatInterval;
    this.heartbeatTimeout = heartbeatTimeout;
    this.requestTimeout = requestTimeout;
    this.followLegacy = followLegacy;
    this.maxQueue = maxQueue;
    this.WebSocket = WebSocketImpl || globalThis.WebSocket;
    if (typeof this.WebSocket !== 'function') {
      throw new FastWSError('no WebSocket: pass the WebSocket option (Node 20: run with --experimental-websocket)', {
        code: 'no_websocket',
      });
    }
    /** @type {Status} */
    this.status = 'idle';
    this.reconnectAttempts = 0;
    /** the welcome event of the current connection */
    this.welcome = null;
    /** @type {Map<string, {epoch: string, offset: number}>} where to resume each channel from */
    this.positions = new Map();
    /** @type {Map<string, string[]|null>} channel -> its subscription's event types */
    this.subscriptions = new Map();
    /** channels whose missed events the server could not replay */
    this.recoveryFailures = [];
    this.lastError = null;
    /** events the iterator's queue dropped (the oldest first) past maxQueue */
    this.dropped = 0;
  }

  get isConnected() {
    return this.status === 'connected';
  }

  get tenantChannel() {
    if (this.welcome) return this.welcome.channel;
    return this.tenantId ? `tenant:${this.tenantId}` : null;
  }

  // -- events ------------------------------------------------------------------------------

  /** Listen to 'message', 'open', 'close', 'error', 'status' or 'recovery'; returns off(). */
  on(type, fn) {
    let set = this.#listeners.get(type);
    if (!set) this.#listeners.set(type, (set = new Set()));
    set.add(fn);
    return () => set.delete(fn);
  }

  #emit(type, value) {
    const set = this.#listeners.get(type);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(value);
      } catch (error) {
        if (type === 'error') console.error('fastws-client: an error listener threw', error);
        else this.#report(error);
      }
    }
  }

  #setStatus(status) {
    if (this.status === status) return;
    this.status = status;
    this.#emit('status', status);
  }

  #report(error) {
    this.lastError = error;
    this.#emit('error', error);
  }

  // -- connecting --------------------------------------------------------------------------

  /** Connect (and keep the connection up); resolves with the welcome event. */
  connect() {
    if (this.status === 'connected' && this.welcome) return Promise.resolve(this.welcome);
    if (this.#inflight) return this.#inflight;
    this.#closing = false;
    this.#ended = false;
    this.#clearReconnect();
    this.#setStatus('connecting');
    return this.#attempt().catch((error) => {
        if (this.#closing) throw error;
        this.lastError = error;
        if (this.autoReconnect && !isFinal(error)) {
          // The first attempt failed (the server may be starting): the caller hears of it, and
          // the client keeps trying in the background, as after a drop. close() stops it.
          this.#report(error);
          this.#scheduleReconnect();
        } else {
          this.#setStatus(isFinal(error) ? 'failed' : 'disconnected');
          this.#end();
        }
        throw error;
      });
  }

  /** One attempt (following a rollback to the legacy URL), shared by whoever asks meanwhile. */
  #attempt() {
    if (!this.#inflight) {
      const attempt = this.#openFollowingLegacy().finally(() => {
        if (this.#inflight === attempt) this.#inflight = null;
      });
      this.#inflight = attempt;
    }
    return this.#inflight;
  }

  /** Close with `code` (1000), stop reconnecting, and end iteration. */
  close(code = 1000) {
    this.#closing = true;
    this.#inflight = null; // it fails with 'closed'; a connect() after this starts afresh
    if (this.#abortAttempt) this.#abortAttempt(new FastWSError('the client was closed', { code: 'closed' }));
    this.#clearReconnect();
    this.#stopHeartbeat();
    const ws = this.#ws;
    this.#ws = null;
    this.#rejectPending(new FastWSError('the client was closed', { code: 'closed' }));
    this.#setStatus('disconnected');
    this.#end();
    if (!ws || ws.readyState === 3 /* CLOSED */) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(done, this.requestTimeout);
      ws.addEventListener('close', done);
      closeSocket(ws, code, 'client closed');
    });
  }

  #connectUrl() {
    const url = new URL(this.url, globalThis.location?.href);
    const query = url.searchParams;
    if (this.tenantId) query.set('tenant_id', this.tenantId);
    if (this.userId) query.set('user_id', this.userId);
    if (this.token) query.set('token', this.token);
    for (const key of FILTER_KEYS) {
      const values = this.filters[key];
      if (values && values.length) query.set(key, values.join(','));
      else query.delete(key);
    }
    const home = this.tenantChannel;
    const position = home && this.positions.get(home);
    if (position) {
      query.set('since', String(position.offset));
      query.set('epoch', position.epoch);
    } else {
      query.delete('since');
      query.delete('epoch');
    }
    if (!url.pathname || url.pathname === '/') url.pathname = '/ws';
    if (url.protocol === 'http:') url.protocol = 'ws:';
    if (url.protocol === 'https:') url.protocol = 'wss:';
    return url.toString();
  }

  async #openFollowingLegacy() {
    for (let redirects = 0; ; redirects++) {
      try {
        return await this.#open();
      } catch (error) {
        const legacy = error.code === 'rolled_back' && error.body && error.body.legacy_url;
        if (legacy && this.followLegacy && redirects < MAX_REDIRECTS) {
          this.url = legacy;
          continue;
        }
        throw error;
      }
    }
  }

  /** One connection attempt: the handshake, the welcome, then the subscriptions restored. */
  async #open() {
    const url = this.#connectUrl();
    let ws;
    try {
      ws = new this.WebSocket(url);
    } catch (error) {
      throw new FastWSError(`cannot connect to ${url}: ${error.message}`, { code: 'invalid_url', cause: error });
    }
    this.#ws = ws;
    let opened = false;
    let welcomed = false;
    let failed = false;
    const welcome = await new Promise((resolve, reject) => {
      const fail = (error) => {
        if (welcomed || failed) return;
        failed = true;
        if (this.#abortAttempt === fail) this.#abortAttempt = null;
        clearTimeout(timer);
        this.#retired.add(ws);
        if (this.#ws === ws) this.#ws = null;
        reject(error);
      };
      const timer = setTimeout(() => {
        closeSocket(ws, 1000, 'welcome timeout');
        fail(new FastWSError(`no welcome within ${this.requestTimeout} ms`, { code: 'timeout' }));
      }, this.requestTimeout);
      this.#abortAttempt = fail;
      ws.addEventListener('open', () => {
        opened = true;
      });
      ws.addEventListener('message', (event) => {
        if (this.#ws !== ws) return;
        const message = this.#onText(event.data);
        if (!welcomed && !failed && message && message.eventType === 'connection') {
          welcomed = true;
          if (this.#abortAttempt === fail) this.#abortAttempt = null;
          clearTimeout(timer);
          resolve(message);
        }
      });
      let refusing = false;
      const refused = () => {
        if (refusing || failed) return;
        refusing = true;
        this.#refusal(url).then(fail, fail);
      };
      ws.addEventListener('close', (event) => {
        if (welcomed) {
          this.#onClosed(ws, event.code, event.reason);
        } else if (!failed) {
          if (this.#closing) fail(new FastWSError('the client was closed', { code: 'closed' }));
          else if (opened) fail(closedError(event.code, event.reason));
          else refused();
        }
      });
      ws.addEventListener('error', () => {
        // Browsers follow an error with a close event; Node 20's WebSocket does not when the
        // handshake is refused, so a refusal is taken from whichever comes first.
        if (!opened && !this.#closing) refused();
      });
    });
    this.reconnectAttempts = 0;
    this.lastError = null;
    this.#startHeartbeat(ws);
    this.#setStatus('connected');
    this.#emit('open', welcome);
    const wanted = new Map(this.subscriptions);
    for (const channel of this.channels) {
      if (![...wanted.keys()].some((c) => c === channel || c === this.#canonical(channel))) wanted.set(channel, null);
    }
    await Promise.all(
      [...wanted].map(([channel, eventTypes]) =>
        this.#subscribe(channel, eventTypes).then(
          (ack) => this.subscriptions.set(ack.channel, eventTypes),
          (error) => {
            if (error.code !== 'connection_lost' && error.code !== 'closed') this.#report(error);
          },
        ),
      ),
    );
    return welcome;
  }

  /** Why a handshake failed: fastws answers a plain GET of the same URL with the refusal. */
  async #refusal(url) {
    const failed = new FastWSError(`could not connect to ${this.url}`, { code: 'connection_failed' });
    if (typeof globalThis.fetch !== 'function') return failed;
    const httpUrl = url.replace(/^ws(s?):/, 'http$1:');
    let response;
    try {
      response = await globalThis.fetch(httpUrl, { cache: 'no-store', credentials: 'same-origin' });
    } catch {
      return failed; // unreachable, or a cross-origin answer the browser does not show
    }
    let body = null;
    try {
      body = await response.json();
    } catch {
      // not fastws, or no body
    }
    const code = body && body.error && body.error.code;
    if (!code || response.status === 426) return failed; // the upgrade would be accepted now
    return new FastWSError(`connection refused with HTTP ${response.status}: ${code}: ${body.error.message || ''}`, {
      code,
      status: response.status,
      body,
    });
  }

  // -- heartbeats --------------------------------------------------------------------------

  #startHeartbeat(ws) {
    this.#stopHeartbeat();
    if (!(this.heartbeatInterval > 0)) return;
    this.#lastSeen = Date.now();
    this.#pingSentAt = 0;
    const check = () => {
      if (this.#ws !== ws) return;
      const now = Date.now();
      if (this.#pingSentAt) {
        if (this.#lastSeen >= this.#pingSentAt) {
          this.#pingSentAt = 0; // answered (by the pong or anything else)
        } else if (now - this.#pingSentAt >= this.heartbeatTimeout) {
          closeSocket(ws, 1000, 'heartbeat timeout');
          this.#onClosed(ws, 1006, 'heartbeat timeout'); // now: a silent peer may never finish closing
          return;
        } else {
          this.#heartbeatTimer = setTimeout(check, this.#pingSentAt + this.heartbeatTimeout - now);
          return;
        }
      }
      const quiet = now - this.#lastSeen;
      if (quiet < this.heartbeatInterval) {
        this.#heartbeatTimer = setTimeout(check, this.heartbeatInterval - quiet);
        return;
      }
      this.#pingSentAt = now;
      try {
        ws.send('{"type":"ping"}');
      } catch {
        // closing already: the deadline below still applies
      }
      this.#heartbeatTimer = setTimeout(check, this.heartbeatTimeout);
    };
    this.#heartbeatTimer = setTimeout(check, this.heartbeatInterval);
  }

  #stopHeartbeat() {
    clearTimeout(this.#heartbeatTimer);
    this.#heartbeatTimer = null;
  }

  // -- commands ----------------------------------------------------------------------------

  /** Send a command with a fresh ref; resolves with its ack (or pong), rejects with FastWSError. */
  request(message) {
    if (this.status !== 'connected') {
      return Promise.reject(new FastWSError('not connected', { code: 'not_connected' }));
    }
    return this.#request(message);
  }

  #request(message) {
    const ws = this.#ws;
    if (!ws || ws.readyState !== 1 /* OPEN */) {
      return Promise.reject(new FastWSError('not connected', { code: 'not_connected' }));
    }
    const ref = `c${++this.#refs}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(ref);
        reject(new FastWSError(`no answer to ${message.type} within ${this.requestTimeout} ms`, { code: 'timeout', ref }));
      }, this.requestTimeout);
      this.#pending.set(ref, { resolve, reject, timer });
      try {
        ws.send(JSON.stringify({ ...message, ref }));
      } catch (error) {
        clearTimeout(timer);
        this.#pending.delete(ref);
        reject(new FastWSError('could not send', { code: 'not_connected', ref, cause: error }));
      }
    }).then((reply) => {
      if (reply.type === 'error') {
        throw new FastWSError(`${reply.code}: ${reply.message || ''}`, { code: reply.code, ref });
      }
      return reply;
    });
  }

  /** Publish; resolves with the ack ({id, offset}). */
  publish(event, payload, { channel, priority, source, targetUserId } = {}) {
    const message = { type: 'publish', event, payload: payload === undefined ? {} : payload };
    if (channel !== undefined) message.channel = channel;
    if (priority !== undefined) message.priority = priority;
    if (source !== undefined) message.source = source;
    if (targetUserId !== undefined) message.targetUserId = targetUserId;
    return this.request(message);
  }

  /** Subscribe (kept across reconnects and resumed from the last offset seen). */
  async subscribe(channel, eventTypes) {
    if (this.status !== 'connected') throw new FastWSError('not connected', { code: 'not_connected' });
    const types = eventTypes && eventTypes.length ? [...eventTypes] : null;
    const ack = await this.#subscribe(channel, types);
    this.subscriptions.set(ack.channel, types);
    return ack;
  }

  #subscribe(channel, eventTypes) {
    const message = { type: 'subscribe', channel };
    if (eventTypes && eventTypes.length) message.eventTypes = eventTypes;
    const position = this.positions.get(this.#canonical(channel));
    if (position) {
      message.since = position.offset;
      message.epoch = position.epoch;
    }
    return this.#request(message);
  }

  /** Unsubscribe; the channel is not restored on reconnect, nor resumed if subscribed again. */
  async unsubscribe(channel) {
    const ack = await this.request({ type: 'unsubscribe', channel });
    this.subscriptions.delete(ack.channel);
    if (ack.channel !== this.tenantChannel) {
      this.positions.delete(ack.channel);
      this.#recent.delete(ack.channel);
    }
    return ack;
  }

  /** Replace the connection's filters (kept across reconnects: they go on the connect URL). */
  async updateFilters(filters) {
    const ack = await this.request({ type: 'filters', filters });
    this.filters = { ...(filters || {}) };
    return ack;
  }

  #canonical(channel) {
    if (channel.includes(':')) return channel;
    const tenant = (this.welcome && this.welcome.tenantId) || this.tenantId;
    return tenant ? `${channel}:${tenant}` : channel;
  }

  // -- receiving ---------------------------------------------------------------------------

  /** One text message of the current socket; returns it when it was the welcome event. */
  #onText(data) {
    this.#lastSeen = Date.now();
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return null; // not JSON: fastws sends none
    }
    if (!message || typeof message !== 'object') return null;
    const kind = message.type;
    if (kind === 'ack' && 'epoch' in message && message.channel) {
      this.#track(message.channel, message); // before any replayed event that follows it
    }
    if ((kind === 'ack' || kind === 'error' || kind === 'pong') && this.#pending.has(message.ref)) {
      const pending = this.#pending.get(message.ref);
      this.#pending.delete(message.ref);
      clearTimeout(pending.timer);
      pending.resolve(message);
      return null;
    }
    if (kind === 'ack' || kind === 'pong') return null;
    if (kind === 'error') {
      this.#report(new FastWSError(`${message.code}: ${message.message || ''}`, { code: message.code, ref: message.ref }));
      return null;
    }
    if (kind === 'missed') {
      this.#recoverMissed(message);
      return null;
    }
    if (message.eventType === 'connection' && message.data && 'connectionId' in message.data) {
      this.welcome = message;
      this.#track(message.channel, message.data);
      return message;
    }
    const { channel, offset } = message;
    if (channel != null && typeof offset === 'number') {
      let recent = this.#recent.get(channel);
      if (!recent) this.#recent.set(channel, (recent = new Set()));
      if (recent.has(offset)) return null; // a replay overlapping what was already delivered
      recent.add(offset);
      if (recent.size > RECENT_LIMIT) {
        const sorted = [...recent].sort((a, b) => a - b);
        for (const old of sorted.slice(0, RECENT_LIMIT / 2)) recent.delete(old);
      }
      const position = this.positions.get(channel);
      if (position && offset > position.offset) position.offset = offset;
    }
    this.#emit('message', message);
    this.#push(message);
    return null;
  }

  /** A position from a welcome or a subscribe ack: resume from ours, or start from the server's. */
  #track(channel, position) {
    const { recovered } = position;
    if (recovered === true) this.#emit('recovery', { channel, recovered: true });
    if (recovered === false) this.#recoveryFailed(channel);
    if (recovered !== true && typeof position.epoch === 'string') {
      const known = this.positions.get(channel);
      if (known && known.epoch !== position.epoch) this.#recent.delete(channel); // a new stream
      this.positions.set(channel, { epoch: position.epoch, offset: position.offset });
    }
  }

  #recoveryFailed(channel) {
    this.recoveryFailures.push(channel);
    this.#emit('recovery', { channel, recovered: false });
    this.#report(new FastWSError(`could not recover the events missed on ${channel}`, { code: 'recovery_failed' }));
  }

  /** The server dropped events for this slow client: replay them from history. */
  async #recoverMissed(notice) {
    for (const [channel, window] of Object.entries(notice.channels || {})) {
      const position = this.positions.get(channel);
      if (!position) continue;
      const message = { type: 'subscribe', channel, epoch: position.epoch, since: window.first - 1 };
      const eventTypes = this.subscriptions.get(channel);
      if (eventTypes && eventTypes.length) message.eventTypes = eventTypes;
      try {
        await this.#request(message); // the ack says whether it recovered (see #track)
      } catch {
        this.#recoveryFailed(channel);
      }
    }
  }

  // -- iteration ---------------------------------------------------------------------------

  #push(message) {
    if (this.#waiters.length) {
      this.#waiters.shift()({ value: message, done: false });
      return;
    }
    if (this.#queue.length >= this.maxQueue) {
      this.#queue.shift(); // bounded: the oldest unread event goes
      this.dropped++;
    }
    this.#queue.push(message);
  }

  #end() {
    this.#ended = true;
    for (const waiter of this.#waiters.splice(0)) waiter({ value: undefined, done: true });
  }

  /** Events as they come; ends after close(), or when the client gives up. */
  [Symbol.asyncIterator]() {
    return {
      next: () => {
        if (this.#queue.length) return Promise.resolve({ value: this.#queue.shift(), done: false });
        if (this.#ended) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => this.#waiters.push(resolve));
      },
      return: () => Promise.resolve({ value: undefined, done: true }),
      [Symbol.asyncIterator]() {
        return this;
      },
    };
  }

  // -- reconnecting ------------------------------------------------------------------------

  #onClosed(ws, code, reason) {
    if (this.#retired.has(ws)) return;
    this.#retired.add(ws);
    if (this.#ws === ws) this.#ws = null;
    this.#stopHeartbeat();
    this.#rejectPending(new FastWSError('connection lost', { code: 'connection_lost' }));
    this.#emit('close', { code, reason });
    if (this.#closing) return;
    if (code === 4002 && this.followLegacy) {
      const legacy = legacyUrlFromReason(reason);
      if (legacy) this.url = legacy;
    }
    if (!this.autoReconnect) {
      this.#setStatus('disconnected');
      this.#end();
      return;
    }
    this.#scheduleReconnect();
  }

  #scheduleReconnect() {
    if (this.#closing) return;
    if (this.reconnectAttempts >= this.maxReconnectAttempts) {
      this.#setStatus('failed');
      this.#report(new FastWSError(`gave up after ${this.reconnectAttempts} attempts`, { code: 'reconnect_failed' }));
      this.#end();
      return;
    }
    this.reconnectAttempts++;
    this.#setStatus('reconnecting');
    const delay = backoffDelay(this.reconnectAttempts, this.reconnectInterval, this.maxReconnectInterval);
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = null;
      this.#attempt().then(
        () => {},
        (error) => {
          if (this.#closing) return;
          if (isFinal(error)) {
            this.#setStatus('failed');
            this.#report(error);
            this.#end();
            return;
          }
          this.#report(error);
          this.#scheduleReconnect();
        },
      );
    }, delay);
  }

  #clearReconnect() {
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = null;
  }

  #rejectPending(error) {
    for (const [ref, pending] of this.#pending) {
      clearTimeout(pending.timer);
      pending.reject(new FastWSError(error.message, { code: error.code, ref }));
    }
    this.#pending.clear();
  }
}

function isFinal(error) {
  return error instanceof FastWSError && (FINAL_STATUSES.has(error.status) || error.code === 'invalid_url');
}

function closedError(code, reason) {
  return new FastWSError(`closed before the welcome (${code}${reason ? `: ${reason}` : ''})`, {
    code: 'connection_lost',
  });
}

function closeSocket(ws, code, reason) {
  try {
    ws.close(code, reason);
  } catch {
    try {
      ws.close(); // a browser allows only 1000 and 3000-4999
    } catch {
      // already closed
    }
  }
}

export default FastWSClient;
