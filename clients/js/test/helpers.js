// Test helpers: a real `fastws serve` per test file, on 127.0.0.1 and a port of its choosing.
import { spawn } from 'node:child_process';

export const PYTHON = process.env.FASTWS_PYTHON || 'python3';
export const TIMEOUT = 15000;
const URL_LINE = /WebSocket (ws:\/\/\S+?)\?/;

/** A fastws server process (its own process group, so that SIGSTOP and kill reach its workers). */
export class Server {
  constructor(child, url) {
    this.child = child;
    this.url = url;
    this.httpUrl = url.replace(/^ws:/, 'http:').replace(/\/ws$/, '');
    this.port = Number(new URL(this.httpUrl).port);
    this.exited = new Promise((resolve) => child.once('exit', resolve));
  }

  /** Start `python -m fastws serve`; resolves once it logs its WebSocket URL. */
  static start({ port = 0, args = [], env = {} } = {}) {
    const child = spawn(
      PYTHON,
      ['-m', 'fastws', 'serve', '--host', '127.0.0.1', '--port', String(port), '--workers', '1', ...args],
      { detached: true, stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...env } },
    );
    const log = [];
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        signal(child, 'SIGKILL');
        reject(new Error(`fastws did not start within ${TIMEOUT} ms:\n${log.join('')}`));
      }, TIMEOUT);
      child.once('error', (error) => {
        clearTimeout(timer);
        reject(new Error(`cannot run ${PYTHON} -m fastws (set FASTWS_PYTHON): ${error.message}`));
      });
      child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`fastws exited with ${code} before serving:\n${log.join('')}`));
      });
      let buffered = '';
      child.stderr.setEncoding('utf8');
      child.stderr.on('data', (chunk) => {
        log.push(chunk);
        buffered += chunk;
        const found = URL_LINE.exec(buffered);
        if (found) {
          clearTimeout(timer);
          child.removeAllListeners('exit');
          const server = new Server(child, found[1]);
          server.log = log;
          resolve(server);
          buffered = '';
        }
      });
    });
  }

  /** Stop the server (SIGTERM: it drains, clients see 1001; SIGKILL: they see the TCP drop). */
  async stop(how = 'SIGTERM') {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    signal(this.child, 'SIGCONT');
    signal(this.child, how);
    const timer = setTimeout(() => signal(this.child, 'SIGKILL'), 5000);
    await this.exited;
    clearTimeout(timer);
  }

  pause() {
    signal(this.child, 'SIGSTOP');
  }

  resume() {
    signal(this.child, 'SIGCONT');
  }

  /** One REST request; the status and the JSON body. */
  async http(method, path, { headers = {}, body } = {}) {
    const response = await fetch(this.httpUrl + path, {
      method,
      headers: body === undefined ? headers : { 'Content-Type': 'application/json', ...headers },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: response.status, body: await response.json() };
  }

  /** Publish over REST (POST /api/websocket) as tenant/user; the answer's body. */
  async publish(tenantId, userId, event) {
    const { status, body } = await this.http('POST', '/api/websocket', {
      headers: { 'X-Tenant-ID': tenantId, 'X-User-ID': userId },
      body: event,
    });
    if (status !== 200) throw new Error(`publish answered ${status}: ${JSON.stringify(body)}`);
    return body;
  }

  /** Open WebSocket connections of a tenant on this server (GET /api/websocket/status?detailed=true). */
  async connections(tenantId) {
    const { body } = await this.http('GET', '/api/websocket/status?detailed=true');
    const tenant = body.websocket.tenants && body.websocket.tenants[tenantId];
    return tenant ? tenant.connections : 0;
  }
}

function signal(child, name) {
  try {
    process.kill(-child.pid, name);
  } catch {
    // gone already
  }
}

/** Resolves when `predicate()` is true, polling; rejects after `timeout` ms saying `what`. */
export async function until(predicate, what, timeout = TIMEOUT) {
  const deadline = Date.now() + timeout;
  for (;;) {
    if (await predicate()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** The next `type` event of `client` for which `accept(value)` holds. */
export function next(client, type, accept = () => true, timeout = TIMEOUT) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`timed out waiting for '${type}'`));
    }, timeout);
    const off = client.on(type, (value) => {
      if (!accept(value)) return;
      clearTimeout(timer);
      off();
      resolve(value);
    });
  });
}

/** A unique tenant id per test, so tests sharing a server do not see each other's events. */
let counter = 0;
export function tenant(prefix = 't') {
  counter += 1;
  return `${prefix}${process.pid}-${counter}`;
}
