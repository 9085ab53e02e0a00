"""The Redis data model of a fastws cluster, sans I/O: keys, scripts, messages, shards.

Several fastws hosts (each with its workers) share one or more Redis servers
(``--broker redis://...``). Redis numbers every channel's events, keeps their
history, carries them to every worker, and holds the cluster's flags and
rows. This module says what lives where; ``fastws.server.redis_broker`` does
the I/O. docs/design.md ("Scale-out over Redis") is the long form.

Keys (``P`` is ``--redis-prefix``, ``T`` the tenant, ``N`` the channel's name,
so a channel ``N:T`` of tenant ``T`` has every key under ``P:t:T:``)::

    P:t:T:c:N:m     hash     e: the stream's epoch, o: its last offset, b: bytes kept
    P:t:T:c:N:s     stream   one entry per kept event, id "<offset>-0", field m: the message tail
    P:t:T:c:N       pub/sub  per script call, the channel's events in offset order, each as
                             its length and "<offset> <epoch> <tail>"
    P:t:T:channels  zset     the tenant's channels with history (member: the meta key, score:
                             last use, ms), for max_channels_per_tenant
    P:held          string   events held in all streams (see held())
    P:flags         string   the cluster's flags (JSON), written by PUT /api/websocket
    P:control       pub/sub  commands to every worker: flags changed, disconnect
    P:reply:ID      list     answers to one command (one entry per worker), expires
    P:workers       zset     live worker rows (member: row key, score: expiry, ms)
    P:w:HOST:I      string   worker I of HOST: its counters (JSON), with a TTL
    P:canary:HOST:I pub/sub  the worker's own probe

Every stream key and its meta expire ``history_ttl`` after the channel's last
use; all of one channel's keys live on one Redis (its shard: ``shard_of``).

Invariants:

1. Offsets are assigned by the PUBLISH script alone, under Redis' one-script-
   at-a-time rule: per channel they are consecutive from 1 within an epoch,
   the same for every host.
2. The script appends the event to the stream and publishes it in the same
   step, so a worker subscribed to the channel's pub/sub sees its events in
   offset order, and whatever it misses (a lost connection) is in the stream
   until trimmed: a gap is repaired from there, or reported, never skipped.
3. A stream's epoch is random and starts with it (first publish or position
   read); when its meta is gone (expired, evicted, Redis restarted empty) the
   next use starts a new epoch, so an old position is answered
   ``recovered:false``.
4. Keys and pub/sub channels of different prefixes, or of different tenants,
   never overlap: a tenant id is ``[A-Za-z0-9_.-]`` (fastws.channels), so
   ``:t:T:`` cannot be forged by another tenant's channel name.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import NamedTuple

from .history import Record

__all__ = [
    "Keys", "Message", "PUBLISH_SCRIPT", "POSITION_SCRIPT", "READ_SCRIPT",
    "encode_tail", "decode_message", "decode_messages", "decode_tail", "shard_of", "split_channel",
]


def split_channel(channel: str) -> tuple[str, str]:
    """(name, tenant) of a canonical channel ``NAME:TENANT``."""
    name, _, tenant = channel.rpartition(":")
    return name, tenant


def shard_of(channel: str, shards: int) -> int:
    """The Redis (0..shards-1) a channel lives on: a stable hash of (tenant, name), the same on
    every host and after every restart."""
    if shards == 1:
        return 0
    name, tenant = split_channel(channel)
    return zlib.crc32(f"{tenant}\0{name}".encode()) % shards


class Keys:
    """Names of a prefix's keys and pub/sub channels."""

    __slots__ = ("prefix", "flags", "control", "workers", "held")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.flags = f"{prefix}:flags"
        self.control = f"{prefix}:control"
        self.workers = f"{prefix}:workers"
        self.held = f"{prefix}:held"

    def channel(self, channel: str) -> str:
        """The pub/sub channel of a fastws channel (its keys add ``:m`` and ``:s``)."""
        name, tenant = split_channel(channel)
        return f"{self.prefix}:t:{tenant}:c:{name}"

    def tenant_channels(self, channel: str) -> str:
        return f"{self.prefix}:t:{split_channel(channel)[1]}:channels"

    def script_keys(self, channel: str) -> tuple[str, str, str]:
        """(meta, stream, tenant's channels) of a channel: the KEYS the scripts take per channel."""
        base = self.channel(channel)
        return f"{base}:m", f"{base}:s", self.tenant_channels(channel)

    def worker(self, host: str, index: int) -> str:
        return f"{self.prefix}:w:{host}:{index}"

    def canary(self, host: str, index: int) -> str:
        return f"{self.prefix}:canary:{host}:{index}"

    def reply(self, request: str) -> str:
        return f"{self.prefix}:reply:{request}"


# -- messages -------------------------------------------------------------------------------
#
# A message tail: publish time (unix seconds), priority, the lengths of event type, source,
# publisher and target (0xFFFF: none), the publishing worker's tag (8 bytes) and its sequence
# number, then those strings, then the event's JSON without its offset. The script prefixes
# "<offset> <epoch> " when it publishes; the stream keeps the tail alone (its id is the offset).

_TAIL = struct.Struct("<dBHHHH8sQ")
_NO_TARGET = 0xFFFF


def new_tag() -> bytes:
    """A worker's tag in its messages (random: a restarted worker is another publisher)."""
    return os.urandom(8)


def encode_tail(
    published_at: float, priority: int, event_type: str, source: str, publisher: str, target: str | None,
    tag: bytes, sequence: int, payload: bytes,
) -> bytes:
    event_bytes, source_bytes, publisher_bytes = event_type.encode(), source.encode(), publisher.encode()
    target_bytes = b"" if target is None else target.encode()
    return b"".join((
        _TAIL.pack(published_at, priority, len(event_bytes), len(source_bytes), len(publisher_bytes),
                   _NO_TARGET if target is None else len(target_bytes), tag, sequence),
        event_bytes, source_bytes, publisher_bytes, target_bytes, payload,
    ))


class Message(NamedTuple):
    """One event as a worker receives it."""

    offset: int
    epoch: str
    published_at: float
    priority: int
    event_type: str
    source: str
    publisher: str
    target: str | None
    tag: bytes
    sequence: int
    #: the event's JSON without its offset
    payload: bytes


def decode_tail(offset: int, epoch: str, tail: bytes) -> Message:
    published_at, priority, n_event, n_source, n_publisher, n_target, tag, sequence = _TAIL.unpack_from(tail)
    at = _TAIL.size
    event_type = tail[at:at + n_event].decode()
    at += n_event
    source = tail[at:at + n_source].decode()
    at += n_source
    publisher = tail[at:at + n_publisher].decode()
    at += n_publisher
    if n_target == _NO_TARGET:
        target = None
    else:
        target = tail[at:at + n_target].decode()
        at += n_target
    return Message(offset, epoch, published_at, priority, event_type, source, publisher, target, tag, sequence,
                   tail[at:])


def decode_message(data: bytes) -> Message:
    """One event of a pub/sub message: ``<offset> <epoch> <tail>``."""
    offset, epoch, tail = data.split(b" ", 2)
    return decode_tail(int(offset), epoch.decode(), tail)


_LENGTH = struct.Struct(">I")


def decode_messages(data: bytes) -> list[Message]:
    """The events of a pub/sub message: one script call's events of one channel, in offset
    order, each as its length (4 bytes, big-endian) and ``<offset> <epoch> <tail>``."""
    messages = []
    at, end = 0, len(data)
    while at < end:
        (length,) = _LENGTH.unpack_from(data, at)
        at += 4
        messages.append(decode_message(data[at:at + length]))
        at += length
    return messages


def encode_messages(items: list[bytes]) -> bytes:
    """What the script publishes for ``items`` (each ``<offset> <epoch> <tail>``): for tests."""
    return b"".join(_LENGTH.pack(len(item)) + item for item in items)


def record_of(message: Message, frame: bytes) -> Record:
    """The history record (fastws.history.Record) of a message, given its frame."""
    return (message.offset, message.event_type, message.source, message.priority, message.publisher,
            message.target, frame)


# -- scripts --------------------------------------------------------------------------------
#
# Lua, run by EVALSHA (loaded once per connection pool, reloaded on NOSCRIPT). Times are
# milliseconds from the caller's clock (Redis 7 scripts may call TIME, but one clock per call
# keeps the ttl arithmetic in one place).

#: events of one or more channels, in groups: a group (a REST batch, or one WebSocket publish) is
#: refused whole when it would start more streams than its tenant may have.
#: KEYS: meta, stream, tenant channels of each event (3 per event), then P:held.
#: ARGV: now, ttl, max events, max bytes, max channels per tenant, a random epoch for the streams
#:   this call starts (an epoch need only be new for its channel), then 3 per event:
#:   pub/sub channel, group, tail.
#: Returns, per event, its offset, or 0 for a group refused (too_many_channels).
PUBLISH_SCRIPT = """
local now, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local maxn, maxb, maxc = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local n = (#ARGV - 6) / 3
local candidate = ARGV[6]
local held = KEYS[#KEYS]
local refused, new, seen, purged = {}, {}, {}, {}
for i = 0, n - 1 do
  local meta, zset = KEYS[3 * i + 1], KEYS[3 * i + 3]
  local group = ARGV[6 + 3 * i + 2]
  if not seen[group .. meta] then
    seen[group .. meta] = true
    if redis.call('EXISTS', meta) == 0 then
      if not purged[zset] then
        purged[zset] = true
        redis.call('ZREMRANGEBYSCORE', zset, '-inf', now - ttl)
      end
      local key = group .. '\\0' .. zset
      new[key] = (new[key] or 0) + 1
      if redis.call('ZCARD', zset) + new[key] > maxc then refused[group] = true end
    end
  end
end
local result, touched, out, order = {}, {}, {}, {}
local added = 0
for i = 0, n - 1 do
  local meta, stream, zset = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  local base = 6 + 3 * i
  if refused[ARGV[base + 2]] then
    result[i + 1] = 0
  else
    local epoch = redis.call('HGET', meta, 'e')
    if not epoch then
      epoch = candidate
      added = added - redis.call('XLEN', stream)
      redis.call('DEL', stream)
      redis.call('HSET', meta, 'e', epoch, 'o', 0, 'b', 0)
    end
    local offset = redis.call('HINCRBY', meta, 'o', 1)
    local tail = ARGV[base + 3]
    redis.call('XADD', stream, offset .. '-0', 'm', tail)
    added = added + 1
    local bytes = redis.call('HINCRBY', meta, 'b', #tail)
    local length = redis.call('XLEN', stream)
    if length > maxn or bytes > maxb then
      while length > 0 and (length > maxn or bytes > maxb) do
        local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
        bytes = bytes - #first[2][2]
        redis.call('XDEL', stream, first[1])
        length = length - 1
        added = added - 1
      end
      redis.call('HSET', meta, 'b', bytes)
    end
    touched[meta] = {stream, zset}
    local item = offset .. ' ' .. epoch .. ' ' .. tail
    local channel = ARGV[base + 1]
    local items = out[channel]
    if not items then
      items = {}
      out[channel] = items
      order[#order + 1] = channel
    end
    items[#items + 1] = struct.pack('>I4', #item) .. item
    result[i + 1] = offset
  end
end
for meta, keys in pairs(touched) do
  redis.call('PEXPIRE', meta, ttl)
  redis.call('PEXPIRE', keys[1], ttl)
  redis.call('ZADD', keys[2], now, meta)
  redis.call('PEXPIRE', keys[2], ttl)
end
for _, channel in ipairs(order) do
  redis.call('PUBLISH', channel, table.concat(out[channel]))
end
if added ~= 0 then redis.call('INCRBY', held, added) end
return result
"""

#: a channel's position, and what its stream holds after ``since`` when asked: a subscribe's ack,
#: a welcome, a resume. Starts the stream when it has none (unless its tenant has
#: max_channels_per_tenant already: then nothing is kept and the answer says so).
#: KEYS: meta, stream, tenant channels. ARGV: now, ttl, max channels, candidate epoch,
#: epoch asked for ("" for none), since (-1: the position only).
#: Returns {epoch, last offset, kept (0/1), recovered (0/1), tail, tail, ...}.
POSITION_SCRIPT = """
local meta, stream, zset = KEYS[1], KEYS[2], KEYS[3]
local now, ttl, maxc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local since = tonumber(ARGV[6])
local state = redis.call('HMGET', meta, 'e', 'o')
local epoch, last = state[1], tonumber(state[2] or 0)
if not epoch then
  redis.call('ZREMRANGEBYSCORE', zset, '-inf', now - ttl)
  if redis.call('ZCARD', zset) >= maxc then
    return {ARGV[4], 0, 0, 0}
  end
  epoch, last = ARGV[4], 0
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'e', epoch, 'o', 0, 'b', 0)
end
redis.call('PEXPIRE', meta, ttl)
redis.call('PEXPIRE', stream, ttl)
redis.call('ZADD', zset, now, meta)
redis.call('PEXPIRE', zset, ttl)
local result = {epoch, last, 1, 0}
if since < 0 or ARGV[5] ~= epoch or since > last then return result end
if since == last then result[4] = 1 return result end
local entries = redis.call('XRANGE', stream, '(' .. since .. '-0', '+')
if #entries ~= last - since then return result end
result[4] = 1
for i, entry in ipairs(entries) do result[4 + i] = entry[2][2] end
return result
"""

#: a channel's stream as it is, starting nothing: GET /history, and gap repair.
#: KEYS: meta, stream. ARGV: since, limit. Returns {epoch or false, last offset, first id read or 0,
#: tail, tail, ...}: the tails of up to limit events after since, oldest first.
READ_SCRIPT = """
local state = redis.call('HMGET', KEYS[1], 'e', 'o')
if not state[1] then return {false, 0, 0} end
local since, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local entries = redis.call('XRANGE', KEYS[2], '(' .. since .. '-0', '+', 'COUNT', limit)
local result = {state[1], tonumber(state[2]), 0}
for i, entry in ipairs(entries) do
  if i == 1 then result[3] = tonumber(string.match(entry[1], '^(%d+)')) end
  result[3 + i] = entry[2][2]
end
return result
"""
