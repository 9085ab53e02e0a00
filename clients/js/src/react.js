// useWebSocket: the React hook of the Next.js module fastws replaces, on FastWSClient.
//
// The options and return values are the seed hook's, plus `token`. One FastWSClient per
// mounted hook and identity (url, tenantId, userId, token, reconnect settings):
//  1. The connection opens a tick after the effect runs, and the effect's cleanup cancels it,
//     so StrictMode's mount-unmount-mount opens exactly one connection; unmount closes it.
//  2. Changed `filters` (compared by value, not identity) are sent on the open connection
//     (updateFilters): no reconnect. Before the connection is up they go on its connect URL.
//  3. Callbacks live in a ref: a new onMessage every render does not reconnect.
//  4. The methods return promises that reject with FastWSError; a rejection nobody awaits
//     still sets `error` and calls onError, and never goes unhandled.
import { useCallback, useEffect, useLayoutEffect, useRef, useState } from 'react';

import { FastWSClient, FastWSError } from './index.js';

/** The client's status as the seed's connectionStatus. */
const CONNECTION_STATUS = {
  idle: 'disconnected',
  connecting: 'connecting',
  reconnecting: 'connecting',
  connected: 'connected',
  disconnected: 'disconnected',
  failed: 'error',
};

const useIsomorphicLayoutEffect = typeof window === 'undefined' ? useEffect : useLayoutEffect;

/** ws(s)://host/ws of the page, in a browser; undefined elsewhere. */
export function defaultUrl() {
  const location = typeof window === 'undefined' ? undefined : window.location;
  if (!location || !location.host) return undefined;
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
}

/** A key equal for equal filters, whatever the key order. */
function filtersKey(filters) {
  if (!filters) return '';
  return JSON.stringify(
    Object.keys(filters)
      .sort()
      .map((key) => [key, filters[key]]),
  );
}

function notConnected() {
  return new FastWSError('not connected', { code: 'not_connected' });
}

export function useWebSocket(options = {}) {
  const {
    url = defaultUrl(),
    tenantId,
    userId,
    token,
    filters,
    onMessage,
    onOpen,
    onClose,
    onError,
    reconnectInterval,
    maxReconnectAttempts,
    enabled = true,
    autoReconnect = true,
  } = options;

  const [connectionStatus, setConnectionStatus] = useState(enabled && url ? 'connecting' : 'disconnected');
  const [lastMessage, setLastMessage] = useState(null);
  const [reconnectAttempts, setReconnectAttempts] = useState(0);
  const [error, setError] = useState(null);

  const clientRef = useRef(null);
  const callbacks = useRef({ onMessage, onOpen, onClose, onError });
  useIsomorphicLayoutEffect(() => {
    callbacks.current = { onMessage, onOpen, onClose, onError };
  });
  const filtersRef = useRef(filters);
  const key = filtersKey(filters);

  const report = useCallback((failure) => {
    setError(failure);
    if (callbacks.current.onError) callbacks.current.onError(failure);
  }, []);

  useEffect(() => {
    let client;
    try {
      client = new FastWSClient({
        url,
        tenantId,
        userId,
        token,
        filters: filtersRef.current,
        autoReconnect,
        ...(reconnectInterval === undefined ? {} : { reconnectInterval }),
        ...(maxReconnectAttempts === undefined ? {} : { maxReconnectAttempts }),
      });
    } catch (failure) {
      setConnectionStatus('error');
      report(failure);
      return undefined;
    }
    clientRef.current = client;
    const offs = [
      client.on('status', (status) => {
        setConnectionStatus(CONNECTION_STATUS[status]);
        setReconnectAttempts(client.reconnectAttempts);
      }),
      client.on('open', (welcome) => {
        setError(null);
        setReconnectAttempts(0);
        if (callbacks.current.onOpen) callbacks.current.onOpen(welcome);
      }),
      client.on('message', (message) => {
        setLastMessage(message);
        if (callbacks.current.onMessage) callbacks.current.onMessage(message);
      }),
      client.on('close', (event) => {
        if (callbacks.current.onClose) callbacks.current.onClose(event);
      }),
      client.on('error', report),
    ];
    const timer = enabled ? setTimeout(() => client.connect().catch(() => {}), 0) : null; // errors: 'error' above
    if (!enabled) setConnectionStatus('disconnected');
    return () => {
      clearTimeout(timer);
      for (const off of offs) off();
      if (clientRef.current === client) clientRef.current = null;
      client.close();
    };
  }, [url, tenantId, userId, token, enabled, autoReconnect, reconnectInterval, maxReconnectAttempts, report]);

  useEffect(() => {
    filtersRef.current = filters;
    const client = clientRef.current;
    if (!client) return;
    if (client.status === 'connected') {
      client.updateFilters(filters || {}).catch(report);
    } else {
      client.filters = { ...(filters || {}) }; // the connect URL carries them
    }
    // `key` stands for `filters`: compared by value
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [key, report]);

  /** Run `command` on the client; a rejection is reported even if nobody awaits it. */
  const run = useCallback(
    (command) => {
      const client = clientRef.current;
      const promise = client ? command(client) : Promise.reject(notConnected());
      promise.catch(report);
      return promise;
    },
    [report],
  );

  const connect = useCallback(() => run((client) => client.connect()), [run]);
  const disconnect = useCallback(() => {
    const client = clientRef.current;
    return client ? client.close() : Promise.resolve();
  }, []);
  const sendMessage = useCallback((message) => run((client) => client.request(message)), [run]);
  const updateFilters = useCallback((next) => run((client) => client.updateFilters(next)), [run]);
  const subscribe = useCallback((channel, eventTypes) => run((client) => client.subscribe(channel, eventTypes)), [run]);
  const unsubscribe = useCallback((channel) => run((client) => client.unsubscribe(channel)), [run]);

  return {
    isConnected: connectionStatus === 'connected',
    connectionStatus,
    lastMessage,
    reconnectAttempts,
    error,
    connect,
    disconnect,
    sendMessage,
    updateFilters,
    subscribe,
    unsubscribe,
  };
}

export default useWebSocket;
