// useWebSocket in jsdom (global-jsdom) with @testing-library/react, against a real fastws server.
import 'global-jsdom/register';
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import React from 'react';
import { act, renderHook, waitFor } from '@testing-library/react';

import useWebSocket, { useWebSocket as named } from '../src/react.js';
import { Server, tenant, until } from './helpers.js';

let server;

before(async () => {
  server = await Server.start();
});

after(async () => {
  await server.stop();
});

const strict = ({ children }) => React.createElement(React.StrictMode, null, children);
const connected = (result) => waitFor(() => assert.equal(result.current.connectionStatus, 'connected'), { timeout: 10000 });

test('the default export is the named hook', () => {
  assert.equal(useWebSocket, named);
});

test('under StrictMode the double mount leaves exactly one open connection; unmount closes it', async () => {
  const t = tenant('strict');
  const opens = [];
  const { result, unmount } = renderHook(
    () => useWebSocket({ url: server.url, tenantId: t, userId: 'alice', onOpen: (welcome) => opens.push(welcome) }),
    { wrapper: strict },
  );
  await connected(result);
  assert.equal(result.current.isConnected, true);
  assert.equal(await server.connections(t), 1);
  assert.equal(opens.length, 1);
  unmount();
  await until(async () => (await server.connections(t)) === 0, 'the connection to close');
});

test('changed filters apply on the open connection without reconnecting; new callbacks do not reconnect', async () => {
  const t = tenant('filters');
  const opens = [];
  const seen = [];
  let filters = { eventTypes: ['a'] };
  const { result, rerender, unmount } = renderHook(
    () => useWebSocket({
      url: server.url, tenantId: t, userId: 'alice', filters,
      onOpen: (welcome) => opens.push(welcome.data.connectionId),
      onMessage: (message) => seen.push(message.eventType), // a new function every render
    }),
    { wrapper: strict },
  );
  await connected(result);
  await act(() => result.current.sendMessage({ type: 'a', data: {} }));
  await waitFor(() => assert.deepEqual(seen, ['a']));

  filters = { eventTypes: ['b'] };
  rerender();
  rerender(); // an equal object again: nothing more is sent
  await act(async () => {
    await result.current.sendMessage({ type: 'a', data: {} }); // after the filters command: filtered out
    await result.current.sendMessage({ type: 'b', data: {} });
  });
  await waitFor(() => assert.equal(result.current.lastMessage?.eventType, 'b'));
  assert.deepEqual(seen, ['a', 'b']);
  assert.equal(opens.length, 1);
  assert.equal(await server.connections(t), 1);
  unmount();
});

test('subscribe and unsubscribe through the hook; events of the channel arrive as lastMessage', async () => {
  const t = tenant('subs');
  const { result, unmount } = renderHook(() => useWebSocket({ url: server.url, tenantId: t, userId: 'alice' }));
  await connected(result);
  let ack;
  await act(async () => {
    ack = await result.current.subscribe('ideas', ['idea_created', 'idea_updated']);
  });
  assert.equal(ack.channel, `ideas:${t}`);
  await server.publish(t, 'svc', { channel: `ideas:${t}`, event: 'idea_created', payload: { idea_id: '123' } });
  await waitFor(() => assert.equal(result.current.lastMessage?.channel, `ideas:${t}`));
  assert.deepEqual(result.current.lastMessage.data, { idea_id: '123' });
  await act(async () => {
    ack = await result.current.unsubscribe('ideas');
  });
  assert.equal(ack.channel, `ideas:${t}`);
  unmount();
});

test('sendMessage publishes a custom event (acked); a refused one rejects and sets error', async () => {
  const t = tenant('send');
  const errors = [];
  const { result, unmount } = renderHook(() =>
    useWebSocket({ url: server.url, tenantId: t, userId: 'alice', onError: (error) => errors.push(error.code) }),
  );
  await connected(result);
  let ack;
  await act(async () => {
    ack = await result.current.sendMessage({ type: 'custom_event', data: { message: 'Hello WebSocket!' } });
  });
  assert.equal(typeof ack.id, 'string');
  await waitFor(() => assert.equal(result.current.lastMessage?.id, ack.id));
  assert.equal(result.current.lastMessage.eventType, 'custom_event');

  await act(async () => {
    await assert.rejects(result.current.subscribe('ideas:othertenant'), { code: 'forbidden_channel' });
  });
  assert.equal(result.current.error.code, 'forbidden_channel');
  assert.deepEqual(errors, ['forbidden_channel']);
  unmount();
});

test('enabled:false opens nothing until connect(); disconnect() closes', async () => {
  const t = tenant('manual');
  const { result, unmount } = renderHook(() => useWebSocket({ url: server.url, tenantId: t, userId: 'alice', enabled: false }));
  assert.equal(result.current.connectionStatus, 'disconnected');
  assert.equal(await server.connections(t), 0);
  await act(() => result.current.connect());
  assert.equal(result.current.connectionStatus, 'connected');
  await act(() => result.current.disconnect());
  assert.equal(result.current.connectionStatus, 'disconnected');
  await until(async () => (await server.connections(t)) === 0, 'the connection to close');
  unmount();
});
