// Unit tests, no sockets: the backoff delay and the 4002 reason.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { backoffDelay, legacyUrlFromReason } from '../src/index.js';

test('attempt n waits within [0.5, 1] x min(max, base * 2^(n-1))', () => {
  const base = 1000;
  const max = 30000;
  for (let attempt = 1; attempt <= 12; attempt++) {
    const capped = Math.min(max, base * 2 ** (attempt - 1));
    assert.equal(backoffDelay(attempt, base, max, () => 0), capped / 2);
    assert.equal(backoffDelay(attempt, base, max, () => 0.999999), capped * (0.5 + 0.5 * 0.999999));
    for (let i = 0; i < 200; i++) {
      const delay = backoffDelay(attempt, base, max);
      assert.ok(delay >= capped / 2 && delay <= capped, `attempt ${attempt}: ${delay} not in [${capped / 2}, ${capped}]`);
    }
  }
  assert.equal(backoffDelay(40, base, max, () => 1), max); // no overflow past the cap
});

test('the 4002 close reason names the legacy URL after ": "', () => {
  assert.equal(legacyUrlFromReason('websocket_v2 off: wss://legacy.example/ws'), 'wss://legacy.example/ws');
  assert.equal(legacyUrlFromReason('websocket_v2 off'), '');
  assert.equal(legacyUrlFromReason(''), '');
});
