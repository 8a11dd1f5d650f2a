// After its key is removed (banger e2b key rm), the key reaches nothing;
// the sandbox it made stays its owner's. Run by test/integration/e2b_test.go.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { Sandbox, AuthenticationError } from 'e2b'

test('a removed key is refused', async () => {
  const other = { apiKey: process.env.OTHER_KEY }
  await assert.rejects(Sandbox.list(other).nextItems(), AuthenticationError)
  await assert.rejects(Sandbox.getInfo(process.env.ALICE_SANDBOX, other), AuthenticationError)
  await assert.rejects(Sandbox.create('bb', other), AuthenticationError)
})
