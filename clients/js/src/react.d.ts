// Types of fastws-client/react (src/react.js).
import type { Ack, FastWSEvent, Filters, PublishAck, SubscribeAck, Welcome } from './index.js';

/** The seed's connection states. */
export type ConnectionStatus = 'connecting' | 'connected' | 'disconnected' | 'error';

export interface UseWebSocketOptions {
  /** default: ws(s)://<page host>/ws in a browser; required elsewhere */
  url?: string;
  tenantId?: string;
  userId?: string;
  /** sent as ?token= when the server requires tokens */
  token?: string;
  /** compared by value: a changed value is applied on the open connection, without reconnecting */
  filters?: Pick<Filters, 'eventTypes' | 'sources' | 'priority'> & Filters;
  onMessage?: (message: FastWSEvent) => void;
  onOpen?: (welcome: Welcome) => void;
  onClose?: (event: { code: number; reason: string }) => void;
  onError?: (error: Error) => void;
  /** ms before the first reconnect, doubled each attempt (capped, with jitter) */
  reconnectInterval?: number;
  maxReconnectAttempts?: number;
  /** connect on mount (default true); with false, call connect() */
  enabled?: boolean;
  autoReconnect?: boolean;
}

export interface UseWebSocketResult {
  isConnected: boolean;
  connectionStatus: ConnectionStatus;
  lastMessage: FastWSEvent | null;
  reconnectAttempts: number;
  error: Error | null;
  connect: () => Promise<Welcome>;
  disconnect: () => Promise<void>;
  /** e.g. sendMessage({ type: 'custom_event', data: {...} }): published to the tenant channel, acked */
  sendMessage: (message: { type: string; [field: string]: any }) => Promise<Ack | PublishAck>;
  updateFilters: (filters: Filters) => Promise<Ack & { filters: Filters }>;
  subscribe: (channel: string, eventTypes?: string[]) => Promise<SubscribeAck>;
  unsubscribe: (channel: string) => Promise<Ack & { channel: string }>;
}

export function useWebSocket(options?: UseWebSocketOptions): UseWebSocketResult;

/** ws(s)://host/ws of the page, in a browser; undefined elsewhere. */
export function defaultUrl(): string | undefined;

export default useWebSocket;
