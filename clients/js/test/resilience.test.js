// Reconnect, recovery, heartbeats and the legacy fallback, against real fastws processes.
import { afterEach, test } from 'node:test';
import assert from 'node:assert/strict';

import { FastWSClient } from '../src/index.js';
import { Server, next, tenant, until } from './helpers.js';

const cleanup = [];

afterEach(async () => {
  for (const close of cleanup.splice(0).reverse()) await close();
});

async function serve(options) {
  const server = await Server.start(options);
  cleanup.push(() => server.stop('SIGKILL'));
  return server;
}

function client(options) {
  const made = new FastWSClient({ userId: 'alice', reconnectInterval: 100, maxReconnectInterval: 400, ...options });
  cleanup.push(() => made.close());
  return made;
}

/** Events delivered to `made`, by channel: their offsets in delivery order. */
function record(made) {
  const offsets = new Map();
  made.on('message', (event) => {
    if (!offsets.has(event.channel)) offsets.set(event.channel, []);
    offsets.get(event.channel).push(event.offset);
  });
  return offsets;
}

const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

test('after a drop the client reconnects and recovers every channel: the missed events once, in order', async () => {
  const server = await serve();
  const t = tenant();
  const alice = client({ url: server.url, tenantId: t, reconnectInterval: 1500, maxReconnectInterval: 1500 });
  const offsets = record(alice);
  await alice.connect();
  await alice.subscribe('ideas');
  for (let n = 1; n <= 3; n++) {
    await alice.publish('before', { n });
    await alice.publish('before', { n }, { channel: 'ideas' });
  }
  await until(() => offsets.get(`ideas:${t}`)?.length === 3 && offsets.get(`tenant:${t}`)?.length === 3, 'live events');
  const firstConnection = alice.welcome.data.connectionId;

  // An administrator disconnects the client (4001); while it waits to reconnect (0.75 s at least),
  // events are published over REST.
  const closed = next(alice, 'close');
  const reopened = next(alice, 'open');
  const recoveries = [];
  alice.on('recovery', (value) => recoveries.push(value));
  const { body } = await server.http('DELETE', `/api/websocket?tenant_id=${t}`);
  assert.equal(body.disconnected, 1);
  assert.equal((await closed).code, 4001);
  assert.equal(alice.status, 'reconnecting');
  for (let n = 4; n <= 6; n++) {
    await server.publish(t, 'svc', { event: 'while_away', payload: { n } });
    await server.publish(t, 'svc', { channel: `ideas:${t}`, event: 'while_away', payload: { n } });
  }
  assert.equal(alice.status, 'reconnecting', 'the events were to be published while the client was away');
  await reopened;
  assert.notEqual(alice.welcome.data.connectionId, firstConnection);
  assert.equal(alice.welcome.data.recovered, true);
  await alice.publish('after', {});
  await alice.publish('after', {}, { channel: 'ideas' });
  await until(() => offsets.get(`ideas:${t}`).length >= 7 && offsets.get(`tenant:${t}`).length >= 7, 'replay and live');
  assert.deepEqual(offsets.get(`tenant:${t}`), range(1, 7));
  assert.deepEqual(offsets.get(`ideas:${t}`), range(1, 7));
  assert.deepEqual(
    recoveries.sort((a, b) => a.channel.localeCompare(b.channel)),
    [{ channel: `ideas:${t}`, recovered: true }, { channel: `tenant:${t}`, recovered: true }],
  );
  assert.deepEqual(alice.recoveryFailures, []);
  assert.equal(alice.reconnectAttempts, 0);
});

test('after a server restart on the same port the client reconnects and says recovered:false (new epochs)', async () => {
  const first = await Server.start();
  cleanup.push(() => first.stop('SIGKILL'));
  const t = tenant();
  const alice = client({ url: first.url, tenantId: t });
  await alice.connect();
  await alice.subscribe('ideas');
  await alice.publish('x', {});
  await alice.publish('x', {}, { channel: 'ideas' });
  const oldEpoch = alice.positions.get(`tenant:${t}`).epoch;
  const failures = [];
  alice.on('recovery', (value) => failures.push(value));
  const errors = [];
  alice.on('error', (error) => errors.push(error.code));

  const opened = next(alice, 'open'); // before the new server: the client may reconnect at once
  await first.stop('SIGKILL');
  await until(() => alice.status === 'reconnecting', 'reconnecting');
  const second = await serve({ port: first.port });
  await opened;
  await until(() => failures.length === 2, 'both recovery verdicts');
  assert.deepEqual(
    failures.sort((a, b) => a.channel.localeCompare(b.channel)),
    [{ channel: `ideas:${t}`, recovered: false }, { channel: `tenant:${t}`, recovered: false }],
  );
  assert.deepEqual([...alice.recoveryFailures].sort(), [`ideas:${t}`, `tenant:${t}`]);
  assert.ok(errors.includes('recovery_failed'));
  assert.notEqual(alice.positions.get(`tenant:${t}`).epoch, oldEpoch);
  // The client goes on from the new stream: offsets start again and are delivered.
  const got = next(alice, 'message', (event) => event.channel === `ideas:${t}`);
  await second.publish(t, 'svc', { channel: `ideas:${t}`, event: 'fresh' });
  assert.equal((await got).offset, 1);
});

test('a silent server is detected by the heartbeat: the client closes and reconnects when it answers again', async () => {
  const server = await serve();
  const alice = client({
    url: server.url, tenantId: tenant(), heartbeatInterval: 300, heartbeatTimeout: 300, requestTimeout: 1000,
  });
  await alice.connect();
  const first = alice.welcome.data.connectionId;
  await new Promise((resolve) => setTimeout(resolve, 700)); // quiet: pings are sent and answered
  assert.equal(alice.status, 'connected');
  const reopened = next(alice, 'open', () => true, 10000);
  server.pause(); // SIGSTOP: the TCP connection stays up, nothing answers
  try {
    const closed = await next(alice, 'close', () => true, 5000);
    assert.deepEqual(closed, { code: 1006, reason: 'heartbeat timeout' });
    assert.equal(alice.status, 'reconnecting');
  } finally {
    server.resume();
  }
  await reopened;
  assert.notEqual(alice.welcome.data.connectionId, first);
});

test('close 4002 naming a legacy URL sends the client there; a later connect is refused 503 and follows too', async () => {
  const legacy = await serve();
  const server = await serve({ args: ['--legacy-url', legacy.url] });
  const t = tenant();
  const alice = client({ url: server.url, tenantId: t });
  await alice.connect();
  const closed = next(alice, 'close');
  const reopened = next(alice, 'open');
  const { status } = await server.http('PUT', '/api/websocket', { body: { flags: { existing: 'close', websocket_v2: false } } });
  assert.equal(status, 200);
  assert.deepEqual(await closed, { code: 4002, reason: `websocket_v2 off: ${legacy.url}` });
  await reopened;
  assert.equal(alice.url, legacy.url);
  assert.equal(await legacy.connections(t), 1);

  // A refused upgrade: the client learns 503 rolled_back and its legacy_url with a fetch.
  const bob = client({ url: server.url, tenantId: t, userId: 'bob' });
  await bob.connect();
  assert.equal(bob.url, legacy.url);
  assert.equal(await legacy.connections(t), 2);

  const stays = client({ url: server.url, tenantId: t, userId: 'carol', followLegacy: false, autoReconnect: false });
  await assert.rejects(stays.connect(), { code: 'rolled_back', status: 503 });
});
