"""Comparison servers for end-to-end benchmarks of fastws.

- :mod:`benchmarks.reference.websockets_server`: the same protocol on the
  ``websockets`` library (asyncio API), written as one would ship it on that
  stack: what fastws is measured against.
- :mod:`benchmarks.reference.floor`: a raw picows + uvloop fan-out writer with
  no protocol beyond publish and ack: the cost below which no server on
  fastws's stack can go.

Both print ``WebSocket ws://HOST:PORT/ws?tenant_id=..&user_id=..`` to stderr
once listening, as ``fastws serve`` does, and stop on SIGTERM or SIGINT.
"""
