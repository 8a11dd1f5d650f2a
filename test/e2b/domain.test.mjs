// The SDK as against E2B itself: E2B_DOMAIN only, so envd is reached at
// https://49983-SANDBOXID.DOMAIN and ports at getHost's names, over TLS.
// Run by test/integration/e2b_test.go (TestE2BDomainTLS) with
// hosts.mjs preloaded and the test CA trusted.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { Sandbox, SandboxNotFoundError } from 'e2b'

test('domain mode over TLS: envd and a port by host name', async () => {
  assert.equal(process.env.E2B_SANDBOX_URL ?? '', '')
  const s = await Sandbox.create('bb', { timeoutMs: 120_000 })
  try {
    assert.equal(s.envdApiUrl, `https://49983-${s.sandboxId}.${process.env.E2B_DOMAIN}`)
    assert.equal((await s.commands.run('echo $USER')).stdout, 'user\n')
    await s.files.write('/home/user/www/index.html', 'over tls')
    assert.equal(await s.files.read('/home/user/www/index.html'), 'over tls')
    const srv = await s.commands.run('/bin/busybox httpd -f -p 8080 -h /home/user/www', { background: true, timeoutMs: 0 })
    const url = `https://${s.getHost(8080)}/index.html`
    let body
    for (let i = 0; i < 100 && body === undefined; i++) {
      const r = await fetch(url).catch(() => undefined)
      if (r?.ok) body = await r.text()
      else await new Promise((resolve) => setTimeout(resolve, 200))
    }
    assert.equal(body, 'over tls')
    await srv.kill()
  } finally {
    await s.kill()
  }
  assert.equal(await s.isRunning(), false)
  await assert.rejects(s.commands.run('true'), SandboxNotFoundError)
})
