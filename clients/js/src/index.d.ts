// Types of fastws-client (src/index.js).

export type Status = 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'disconnected' | 'failed';

export type Priority = 'low' | 'normal' | 'high' | 'critical';

/** Connection filters: an empty or missing list means any; an event must match every non-empty list. */
export interface Filters {
  eventTypes?: string[];
  sources?: string[];
  priority?: Priority[] | string[];
  /** publisher user ids */
  users?: string[];
}

/** An event as the server delivers it. */
export interface FastWSEvent<T = any> {
  id: string;
  eventType: string;
  data: T;
  timestamp: string;
  source: string;
  priority: Priority;
  tenantId: string;
  userId: string;
  channel: string;
  /** the event's position in its channel's stream */
  offset: number;
}

export interface Welcome extends Omit<FastWSEvent<WelcomeData>, 'offset'> {
  eventType: 'connection';
}

export interface WelcomeData {
  connectionId: string;
  channels: string[];
  limits: { maxMessageSize: number; maxSubscriptions: number; maxSendBuffer: number };
  epoch: string;
  offset: number;
  worker: number;
  /** present when the connect URL carried since/epoch */
  recovered?: boolean;
}

export interface Ack {
  type: 'ack' | 'pong';
  ref: string;
  [extra: string]: any;
}

export interface PublishAck extends Ack {
  id: string;
  offset: number;
}

export interface SubscribeAck extends Ack {
  /** canonical: NAME:TENANT */
  channel: string;
  epoch: string;
  /** the latest offset */
  offset: number;
  recovered?: boolean;
}

export interface Position {
  epoch: string;
  offset: number;
}

export interface ClientOptions {
  /** ws(s)://host:port/ws */
  url: string;
  tenantId?: string;
  userId?: string;
  /** sent as ?token= (browsers cannot set headers on a WebSocket) */
  token?: string;
  filters?: Filters;
  /** channels to subscribe on connect (a bare NAME means NAME:tenant) */
  channels?: string[];
  autoReconnect?: boolean;
  /** ms; the first retry's delay, doubled each attempt */
  reconnectInterval?: number;
  /** ms; the cap of the delay */
  maxReconnectInterval?: number;
  maxReconnectAttempts?: number;
  /** ms of silence before a ping (0: no heartbeats) */
  heartbeatInterval?: number;
  /** ms without an answer to the ping before the connection is given up */
  heartbeatTimeout?: number;
  /** ms to wait for a welcome or an ack */
  requestTimeout?: number;
  /** follow a websocket_v2 rollback to the legacy URL */
  followLegacy?: boolean;
  /** events kept for the async iterator; past it the oldest go (counted in `dropped`) */
  maxQueue?: number;
  /** a WebSocket constructor, when there is no global one */
  WebSocket?: { new (url: string): any };
}

export interface ClientEvents {
  message: FastWSEvent;
  open: Welcome;
  close: { code: number; reason: string };
  error: Error;
  status: Status;
  recovery: { channel: string; recovered: boolean };
}

export class FastWSError extends Error {
  constructor(message: string, details?: { code?: string; ref?: any; status?: number; body?: any; cause?: any });
  /** the server's error code (e.g. 'forbidden_channel'), or the client's ('timeout', 'not_connected', ...) */
  code?: string;
  /** the ref of the command it answers */
  ref?: any;
  /** the HTTP status of a refused connect, when it could be learned */
  status?: number;
  /** the refusal's JSON body (e.g. with legacy_url) */
  body?: any;
}

export function backoffDelay(attempt: number, base: number, max: number, random?: () => number): number;

export function legacyUrlFromReason(reason: string): string;

export class FastWSClient implements AsyncIterable<FastWSEvent> {
  constructor(options: ClientOptions);
  url: string;
  tenantId?: string;
  userId?: string;
  token?: string;
  filters: Filters;
  readonly status: Status;
  readonly isConnected: boolean;
  readonly tenantChannel: string | null;
  reconnectAttempts: number;
  welcome: Welcome | null;
  positions: Map<string, Position>;
  subscriptions: Map<string, string[] | null>;
  recoveryFailures: string[];
  lastError: Error | null;
  dropped: number;

  on<K extends keyof ClientEvents>(type: K, fn: (value: ClientEvents[K]) => void): () => void;
  connect(): Promise<Welcome>;
  close(code?: number): Promise<void>;
  publish(
    event: string,
    payload?: any,
    options?: { channel?: string; priority?: Priority; source?: string; targetUserId?: string },
  ): Promise<PublishAck>;
  subscribe(channel: string, eventTypes?: string[]): Promise<SubscribeAck>;
  unsubscribe(channel: string): Promise<Ack & { channel: string }>;
  updateFilters(filters: Filters): Promise<Ack & { filters: Filters }>;
  request(message: { type: string; [field: string]: any }): Promise<Ack>;
  [Symbol.asyncIterator](): AsyncIterator<FastWSEvent>;
}

export default FastWSClient;
