// FastWSClient against a real fastws server: connect, commands, acks, errors, iteration.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import { FastWSClient, FastWSError } from '../src/index.js';
import { Server, next, tenant, until } from './helpers.js';

let server;
const clients = [];

before(async () => {
  server = await Server.start();
});

after(async () => {
  await Promise.all(clients.map((client) => client.close()));
  await server.stop();
});

function client(options) {
  const made = new FastWSClient({ url: server.url, userId: 'alice', ...options });
  clients.push(made);
  return made;
}

test('connect resolves with the welcome event and the tenant channel position', async () => {
  const t = tenant();
  const alice = client({ tenantId: t });
  const statuses = [];
  alice.on('status', (status) => statuses.push(status));
  const opened = next(alice, 'open');
  const welcome = await alice.connect();
  assert.equal(welcome.eventType, 'connection');
  assert.equal(welcome.channel, `tenant:${t}`);
  assert.equal(typeof welcome.data.connectionId, 'string');
  assert.equal(await opened, welcome);
  assert.equal(alice.status, 'connected');
  assert.deepEqual(statuses, ['connecting', 'connected']);
  assert.deepEqual(alice.positions.get(`tenant:${t}`), { epoch: welcome.data.epoch, offset: welcome.data.offset });
});

test('publish resolves with the ack (id, offset) before the event is delivered to subscribers', async () => {
  const t = tenant();
  const alice = client({ tenantId: t });
  const bob = client({ tenantId: t, userId: 'bob' });
  await Promise.all([alice.connect(), bob.connect()]);
  const delivered = next(bob, 'message');
  const ack = await alice.publish('idea_created', { title: 'New Idea' }, { source: 'idea_service', priority: 'high' });
  assert.equal(ack.type, 'ack');
  assert.equal(ack.offset, 1);
  const event = await delivered;
  assert.equal(event.id, ack.id);
  assert.equal(event.eventType, 'idea_created');
  assert.deepEqual(event.data, { title: 'New Idea' });
  assert.equal(event.source, 'idea_service');
  assert.equal(event.priority, 'high');
  assert.equal(event.userId, 'alice');
  assert.equal(bob.positions.get(`tenant:${t}`).offset, 1);
});

test('subscribe, unsubscribe and updateFilters are acknowledged; events follow the subscription', async () => {
  const t = tenant();
  const alice = client({ tenantId: t });
  await alice.connect();
  const subscribed = await alice.subscribe('ideas', ['idea_created']);
  assert.equal(subscribed.channel, `ideas:${t}`);
  assert.equal(subscribed.offset, 0);
  assert.deepEqual(alice.positions.get(`ideas:${t}`), { epoch: subscribed.epoch, offset: 0 });
  assert.deepEqual([...alice.subscriptions], [[`ideas:${t}`, ['idea_created']]]);
  const filtered = await alice.updateFilters({ sources: ['idea_service'] });
  assert.deepEqual(filtered.filters.sources, ['idea_service']);
  assert.deepEqual(alice.filters, { sources: ['idea_service'] });

  const got = next(alice, 'message');
  await alice.publish('idea_updated', {}, { channel: 'ideas', source: 'idea_service' }); // not its event type
  await alice.publish('idea_created', {}, { channel: 'ideas', source: 'other' }); // not its source
  await alice.publish('idea_created', { n: 3 }, { channel: 'ideas', source: 'idea_service' });
  const event = await got;
  assert.deepEqual([event.channel, event.offset, event.data], [`ideas:${t}`, 3, { n: 3 }]);

  const left = await alice.unsubscribe('ideas');
  assert.equal(left.channel, `ideas:${t}`);
  assert.equal(alice.subscriptions.size, 0);
});

test('a refused command rejects with FastWSError carrying the server code and the ref', async () => {
  const alice = client({ tenantId: tenant() });
  await alice.connect();
  await assert.rejects(alice.subscribe('ideas:othertenant'), (error) => {
    assert.ok(error instanceof FastWSError);
    assert.equal(error.code, 'forbidden_channel');
    assert.match(String(error.ref), /^c\d+$/);
    return true;
  });
  await assert.rejects(alice.publish('connection', {}), { code: 'reserved_type' });
  await assert.rejects(alice.request({ type: 'no_such_command' }), { code: 'unknown_type' });
  assert.equal(alice.status, 'connected'); // a refused command changes nothing
  assert.equal((await alice.request({ type: 'ping' })).type, 'pong');
});

test('commands before connect reject with not_connected', async () => {
  const alice = client({ tenantId: tenant() });
  await assert.rejects(alice.publish('x', {}), { code: 'not_connected' });
  assert.equal(alice.status, 'idle');
});

test('channels given to the constructor are subscribed before connect resolves', async () => {
  const t = tenant();
  const alice = client({ tenantId: t, channels: ['ideas', `users:${t}`] });
  await alice.connect();
  assert.deepEqual([...alice.subscriptions.keys()].sort(), [`ideas:${t}`, `users:${t}`]);
});

test('the async iterator yields events in order and ends on close()', async () => {
  const t = tenant();
  const alice = client({ tenantId: t });
  await alice.connect();
  for (let n = 1; n <= 3; n++) await alice.publish('tick', { n });
  const seen = [];
  const reading = (async () => {
    for await (const event of alice) seen.push(event.data.n);
  })();
  await until(() => seen.length === 3, 'three events');
  await alice.close();
  await reading;
  assert.deepEqual(seen, [1, 2, 3]);
  assert.equal(alice.status, 'disconnected');
});

test('the iterator queue is bounded: past maxQueue the oldest events go and are counted', async () => {
  const t = tenant();
  const alice = client({ tenantId: t, maxQueue: 2 });
  await alice.connect();
  const last = next(alice, 'message', (event) => event.data.n === 5);
  for (let n = 1; n <= 5; n++) await alice.publish('tick', { n });
  await last;
  assert.equal(alice.dropped, 3);
  const iterator = alice[Symbol.asyncIterator]();
  assert.deepEqual([(await iterator.next()).value.data.n, (await iterator.next()).value.data.n], [4, 5]);
});

test('a refused connect rejects with the HTTP status and code, learned with fetch, and is not retried', async () => {
  const alice = client({ userId: 'alice' }); // no tenant id
  await assert.rejects(alice.connect(), (error) => {
    assert.ok(error instanceof FastWSError);
    assert.equal(error.status, 400);
    assert.equal(error.code, 'invalid_tenant_id');
    return true;
  });
  assert.equal(alice.status, 'failed');
});

test('filters given to the constructor apply from the first event (on the connect URL)', async () => {
  const t = tenant();
  const alice = client({ tenantId: t, filters: { eventTypes: ['wanted'], priority: ['high', 'critical'] } });
  await alice.connect();
  const got = next(alice, 'message');
  await alice.publish('unwanted', {}, { priority: 'high' });
  await alice.publish('wanted', {}, { priority: 'low' });
  await alice.publish('wanted', { ok: true }, { priority: 'critical' });
  assert.deepEqual((await got).data, { ok: true });
});

test('close() during a connect, then connect() again: the second attempt is a fresh one and succeeds', async () => {
  const alice = client({ tenantId: tenant() });
  const first = alice.connect();
  const closing = alice.close();
  await assert.rejects(first, { code: 'closed' });
  await closing;
  const welcome = await alice.connect();
  assert.equal(welcome.eventType, 'connection');
  assert.equal(alice.status, 'connected');
});
