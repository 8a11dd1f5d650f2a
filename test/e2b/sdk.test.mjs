// The real e2b SDK (2.51.0, unmodified) against a banger host's E2B
// endpoint, with real VMs. test/integration/e2b_test.go runs it with:
//   E2B_API_KEY, E2B_API_URL, E2B_SANDBOX_URL (the endpoint), E2B_DOMAIN,
//   OTHER_KEY (a key of another host user), BUSYBOX (a static busybox
//   to upload), EGRESS_ALLOWED / EGRESS_OTHER (HOST:PORT of servers that
//   answer with the client's address), E2B_TEST_OUT (a JSON file for the
//   Go side).
// Template "base" is a Debian image; "bb" a busybox one (no bash).
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomUUID } from 'node:crypto'
import { createReadStream, readFileSync, writeFileSync, statSync } from 'node:fs'
import { Readable } from 'node:stream'
import http from 'node:http'
import {
  Sandbox, CommandExitError, FileNotFoundError, SandboxNotFoundError, TimeoutError, AuthenticationError,
  InvalidArgumentError, SandboxError, NotEnoughSpaceError, ALL_TRAFFIC,
} from 'e2b'

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
async function until (what, fn, ms = 20_000) {
  const end = Date.now() + ms
  let last
  for (;;) {
    try { const v = await fn(); if (v) return v } catch (e) { last = e }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}${last ? `: ${last}` : ''}`)
    await sleep(200)
  }
}
const facts = {}
const record = (k, v) => { facts[k] = v; writeFileSync(process.env.E2B_TEST_OUT, JSON.stringify(facts)) }
const api = new URL(process.env.E2B_API_URL)

// hostGet is GET http://HOST/PATH as a browser would send it to a
// sandbox's host name, the name resolved to the endpoint (the wildcard
// DNS record a real domain would have).
function hostGet (host, path = '/', headers = {}) {
  return new Promise((resolve, reject) => {
    const req = http.get({
      host, port: api.port, path, headers,
      lookup: (_h, opts, cb) => opts?.all ? cb(null, [{ address: api.hostname, family: 4 }]) : cb(null, api.hostname, 4),
    }, (res) => {
      let body = ''
      res.on('data', (d) => { body += d })
      res.on('end', () => resolve({ status: res.statusCode, body }))
    })
    req.on('error', reject)
  })
}

const tag = randomUUID()
let sbx
before(async () => {
  sbx = await Sandbox.create({ timeoutMs: 600_000, metadata: { suite: tag, kind: 'main' }, envs: { SANDBOX_WIDE: 'yes' } })
})
after(async () => { await sbx?.kill().catch(() => {}) })

test('create: a sandbox of template base, a command as user', async () => {
  assert.match(sbx.sandboxId, /^[a-z0-9]+$/)
  const r = await sbx.commands.run('echo hi')
  assert.equal(r.exitCode, 0)
  assert.equal(r.stdout, 'hi\n')
  assert.equal(r.stderr, '')
  const who = await sbx.commands.run('whoami; echo $HOME; pwd; echo $SANDBOX_WIDE $E2B_SANDBOX_ID')
  assert.equal(who.stdout, `user\n/home/user\n/home/user\nyes ${sbx.sandboxId}\n`)
  assert.equal((await sbx.commands.run('whoami', { user: 'root' })).stdout, 'root\n')
  assert.equal(sbx.getHost(8080), `8080-${sbx.sandboxId}.e2b.test`)
  const info = await sbx.getInfo()
  assert.equal(info.state, 'running')
  assert.equal(info.templateId, 'base')
  assert.equal(info.metadata.kind, 'main')
  assert.equal(info.sandboxDomain, 'e2b.test')
  assert.ok(info.endAt > new Date(Date.now() + 500_000), `endAt ${info.endAt}`)
  assert.equal(await sbx.isRunning(), true)
})

test('exit codes, stderr, a missing command, a missing user', async () => {
  await assert.rejects(sbx.commands.run('echo boom >&2; exit 3'), (e) => {
    assert.ok(e instanceof CommandExitError, `${e}`)
    assert.equal(e.exitCode, 3)
    assert.equal(e.error, 'exit status 3')
    assert.equal(e.stderr, 'boom\n')
    return true
  })
  await assert.rejects(sbx.commands.run('definitely-not-a-command'), (e) => {
    assert.ok(e instanceof CommandExitError, `${e}`)
    assert.equal(e.exitCode, 127)
    assert.match(e.stderr, /definitely-not-a-command: command not found/)
    return true
  })
  const h = await sbx.commands.run('exit 5', { background: true })
  await assert.rejects(h.wait(), CommandExitError)
  assert.equal(h.exitCode, 5)
  await assert.rejects(sbx.commands.run('true', { user: 'nobody-here' }), AuthenticationError)
})

test('env vars and working directory', async () => {
  const r = await sbx.commands.run('echo "$FOO $SANDBOX_WIDE"; pwd', { envs: { FOO: 'bar' }, cwd: '/tmp' })
  assert.equal(r.stdout, 'bar yes\n/tmp\n')
  await assert.rejects(sbx.commands.run('true', { cwd: '/no/such/dir' }), InvalidArgumentError)
})

test('background command: stdin, list, connect after a disconnect, kill', async () => {
  let out = ''
  const h = await sbx.commands.run('cat', { background: true, stdin: true, timeoutMs: 0, onStdout: (d) => { out += d } })
  assert.ok(h.pid > 0)
  await h.sendStdin('ping\n')
  await until('echoed stdin', () => out.includes('ping\n'))
  const listed = (await sbx.commands.list()).find((p) => p.pid === h.pid)
  assert.ok(listed, 'the process is listed')
  assert.equal(listed.cmd, '/bin/bash')
  assert.deepEqual(listed.args, ['-l', '-c', 'cat'])
  // The client goes away mid-stream: the process runs on, and connect
  // attaches to it again.
  await h.disconnect()
  let again = ''
  const h2 = await sbx.commands.connect(h.pid, { timeoutMs: 0, onStdout: (d) => { again += d } })
  await sbx.commands.sendStdin(h.pid, 'pong\n')
  await until('stdin echoed to the new connection', () => again.includes('pong\n'))
  assert.equal(await h2.kill(), true)
  await assert.rejects(h2.wait(), (e) => e instanceof CommandExitError && e.exitCode === -1 && e.error === 'signal: killed')
  assert.equal(await sbx.commands.kill(h.pid), false)
  // closeStdin: cat ends at EOF.
  const c = await sbx.commands.run('cat', { background: true, stdin: true })
  await c.sendStdin('x')
  await c.closeStdin()
  assert.equal((await c.wait()).stdout, 'x')
})

test('a pty, resized', async () => {
  let out = ''
  const dec = new TextDecoder()
  const t = await sbx.pty.create({ cols: 80, rows: 24, timeoutMs: 0, onData: (d) => { out += dec.decode(d) } })
  const enc = (s) => new TextEncoder().encode(s)
  await sbx.pty.sendInput(t.pid, enc('stty size; tty\n'))
  await until('24 80', () => out.includes('24 80') && out.includes('/dev/pts/'))
  await sbx.pty.resize(t.pid, { cols: 100, rows: 40 })
  await sbx.pty.sendInput(t.pid, enc('stty size\n'))
  await until('40 100', () => out.includes('40 100'))
  await sbx.pty.sendInput(t.pid, enc('exit 0\n'))
  assert.equal((await t.wait()).exitCode, 0)
})

test('files: write, read, list, makeDir, rename, remove, exists', async () => {
  const w = await sbx.files.write('/home/user/dir/a.txt', 'hello') // parents are made
  assert.deepEqual({ name: w.name, path: w.path, type: w.type }, { name: 'a.txt', path: '/home/user/dir/a.txt', type: 'file' })
  assert.equal((await sbx.files.write('rel.txt', 'r')).path, '/home/user/rel.txt') // relative to the user's home
  assert.equal(await sbx.files.read('/home/user/dir/a.txt'), 'hello')
  assert.deepEqual(await sbx.files.read('/home/user/dir/a.txt', { format: 'bytes' }), new TextEncoder().encode('hello'))
  assert.equal((await sbx.commands.run('stat -c %U:%G /home/user/dir/a.txt /home/user/dir')).stdout, 'user:user\nuser:user\n')
  const many = await sbx.files.write([{ path: '/tmp/m/1', data: '1' }, { path: '/tmp/m/2', data: '2' }])
  assert.deepEqual(many.map((f) => f.path), ['/tmp/m/1', '/tmp/m/2'])
  assert.equal((await sbx.commands.run('cat /tmp/m/1 /tmp/m/2')).stdout, '12')
  await sbx.files.write('/home/user/empty', '')
  assert.equal(await sbx.files.read('/home/user/empty'), '')
  const ls = await sbx.files.list('/home/user/dir')
  assert.deepEqual(ls.map((e) => [e.name, e.type, e.path, e.size]), [['a.txt', 'file', '/home/user/dir/a.txt', 5]])
  assert.equal(ls[0].owner, 'user')
  assert.equal(ls[0].permissions, '-rw-r--r--')
  assert.ok(ls[0].modifiedTime instanceof Date && Math.abs(ls[0].modifiedTime - Date.now()) < 600_000, `${ls[0].modifiedTime}`)
  assert.equal(await sbx.files.makeDir('/home/user/dir/sub/deeper'), true)
  assert.equal(await sbx.files.makeDir('/home/user/dir/sub/deeper'), false)
  assert.equal((await sbx.files.list('/home/user/dir', { depth: 3 })).length, 3)
  const moved = await sbx.files.rename('/home/user/dir/a.txt', '/home/user/dir/b.txt')
  assert.equal(moved.path, '/home/user/dir/b.txt')
  assert.equal(await sbx.files.exists('/home/user/dir/a.txt'), false)
  assert.equal(await sbx.files.exists('/home/user/dir/b.txt'), true)
  assert.equal((await sbx.files.getInfo('/home/user/dir')).type, 'dir')
  await sbx.files.remove('/home/user/dir')
  assert.equal(await sbx.files.exists('/home/user/dir'), false)
  await assert.rejects(sbx.files.read('/home/user/dir/b.txt'), FileNotFoundError)
  await assert.rejects(sbx.files.list('/nope'), FileNotFoundError)
  // Where nothing can be written: a file's "directory", a path in /proc.
  await assert.rejects(sbx.files.write('/home/user/rel.txt/x', 'y'), InvalidArgumentError)
  await assert.rejects(sbx.files.write('/proc/version', 'y'), (e) => e instanceof SandboxError)
  await assert.rejects(sbx.files.write('/home/user', 'y'), InvalidArgumentError) // a directory
  await assert.rejects(sbx.files.read('/tmp', {}), InvalidArgumentError)
  await assert.rejects(sbx.files.write('/tmp/u', 'y', { user: 'nobody-here' }), AuthenticationError)
})

test('a large upload and download stream, byte for byte', async () => {
  const size = 24 << 20
  const chunk = Buffer.alloc(1 << 20)
  const hash = createHash('sha256')
  let sent = 0
  const src = new ReadableStream({
    pull (ctl) {
      if (sent === size) { ctl.close(); return }
      for (let i = 0; i < chunk.length; i += 4) chunk.writeUInt32LE((sent + i) * 2654435761 >>> 0, i)
      hash.update(chunk)
      ctl.enqueue(new Uint8Array(chunk))
      sent += chunk.length
    },
  })
  const w = await sbx.files.write('/home/user/big.bin', src)
  assert.equal(w.path, '/home/user/big.bin')
  const want = hash.digest('hex')
  assert.equal((await sbx.commands.run('sha256sum /home/user/big.bin')).stdout, `${want}  /home/user/big.bin\n`)
  const got = createHash('sha256')
  let n = 0
  for await (const part of await sbx.files.read('/home/user/big.bin', { format: 'stream' })) { got.update(part); n += part.length }
  assert.equal(n, size)
  assert.equal(got.digest('hex'), want)
})

test('a full disk: a clean NotEnoughSpaceError, and nothing half written kept in the way', async () => {
  // Every free block taken (root's reserve too: the agent writes as
  // root, as envd does), then an upload.
  await sbx.commands.run("fallocate -l $(( $(stat -f -c '%f * %S' /) )) /fill || true; dd if=/dev/zero of=/fill2 bs=64k 2>/dev/null || true", { user: 'root' })
  try {
    await assert.rejects(sbx.files.write('/home/user/nospace.bin', new Uint8Array(4 << 20)), NotEnoughSpaceError)
  } finally {
    await sbx.commands.run('rm -f /fill /fill2 /home/user/nospace.bin', { user: 'root' })
  }
  await sbx.files.write('/home/user/after', 'room again')
  assert.equal(await sbx.files.read('/home/user/after'), 'room again')
})

test('watchDir sees a write', async () => {
  await sbx.files.makeDir('/home/user/w')
  const events = []
  const h = await sbx.files.watchDir('/home/user/w', (e) => { events.push(e) })
  await sbx.files.write('/home/user/w/x.txt', 'data')
  await until('watch event', () => events.some((e) => e.name === 'x.txt' && (e.type === 'create' || e.type === 'write')))
  await h.stop()
  await assert.rejects(sbx.files.watchDir('/home/user/missing', () => {}), FileNotFoundError)
})

test('getHost(8080) reaches a server in the sandbox', async () => {
  const bb = await sbx.files.write('/home/user/bin/busybox', Readable.toWeb(createReadStream(process.env.BUSYBOX)))
  assert.equal((await sbx.commands.run(`stat -c %s ${bb.path}`)).stdout.trim(), String(statSync(process.env.BUSYBOX).size))
  await sbx.files.write('/home/user/www/index.html', 'from-sandbox')
  const srv = await sbx.commands.run('chmod +x ~/bin/busybox && exec ~/bin/busybox httpd -f -p 8080 -h /home/user/www', { background: true, timeoutMs: 0 })
  const host = sbx.getHost(8080)
  const r = await until('http 200', async () => { const r = await hostGet(host, '/index.html'); return r.status === 200 && r }, 30_000)
  assert.equal(r.body, 'from-sandbox')
  // The same through the SDK's own headers, as with E2B_SANDBOX_URL.
  const viaHeader = await fetch(`${process.env.E2B_SANDBOX_URL}/index.html`, { headers: { 'E2b-Sandbox-Id': sbx.sandboxId, 'E2b-Sandbox-Port': '8080' } })
  assert.equal(await viaHeader.text(), 'from-sandbox')
  // envd itself by its host name, with the access token.
  assert.equal((await hostGet(`49983-${sbx.sandboxId}.e2b.test`, '/health')).status, 204)
  assert.equal((await hostGet(`49983-${sbx.sandboxId}.e2b.test`, '/envs')).status, 401)
  const envs = await hostGet(`49983-${sbx.sandboxId}.e2b.test`, '/envs', { 'X-Access-Token': sbx.envdAccessToken })
  assert.equal(JSON.parse(envs.body).SANDBOX_WIDE, 'yes')
  // A port nothing listens on, an unknown sandbox.
  assert.equal((await hostGet(sbx.getHost(8081))).status, 502)
  assert.equal((await hostGet('8080-inosuchsandbox.e2b.test')).status, 502)
  await srv.kill()
})

test('metrics', async () => {
  const m = await sbx.getMetrics()
  assert.equal(m.length, 1)
  assert.ok(m[0].memTotal > 100 << 20 && m[0].memUsed > 0 && m[0].diskTotal > 0 && m[0].cpuCount === 1, JSON.stringify(m[0]))
})

test('Sandbox.list with a metadata filter, and pages', async () => {
  const page = await Sandbox.list({ query: { metadata: { suite: tag, kind: 'main' } } }).nextItems()
  assert.deepEqual(page.map((s) => s.sandboxId), [sbx.sandboxId])
  assert.equal(page[0].state, 'running')
  assert.equal(page[0].metadata.suite, tag)
  assert.equal((await Sandbox.list({ query: { metadata: { suite: `${tag}-other` } } }).nextItems()).length, 0)
  const second = await Sandbox.create('bb', { timeoutMs: 120_000, metadata: { suite: tag, kind: 'second' } })
  try {
    const p = Sandbox.list({ limit: 1, query: { metadata: { suite: tag } } })
    const first = await p.nextItems()
    assert.equal(first.length, 1)
    assert.equal(p.hasNext, true)
    const rest = await p.nextItems()
    assert.equal(rest.length, 1)
    assert.notEqual(rest[0].sandboxId, first[0].sandboxId)
    assert.equal(p.hasNext, false)
  } finally {
    await second.kill()
  }
})

test('an image without bash: commands run with its sh', async () => {
  const s = await Sandbox.create('bb', { timeoutMs: 120_000 })
  try {
    assert.equal((await s.commands.run('echo $USER $HOME; pwd')).stdout, 'user /home/user\n/home/user\n')
    assert.equal((await s.files.write('note', 'n')).path, '/home/user/note')
  } finally {
    await s.kill()
  }
})

test('pause, then connect', async () => {
  const s = await Sandbox.create('bb', { timeoutMs: 120_000, metadata: { suite: tag, kind: 'pause' } })
  try {
    await s.files.write('/home/user/marker', 'still here')
    await s.commands.run('sleep 600', { background: true, timeoutMs: 0 })
    assert.equal(await s.pause(), true)
    assert.equal(await s.pause(), false) // 409: already paused
    assert.equal((await s.getInfo()).state, 'paused')
    const paused = await Sandbox.list({ query: { state: ['paused'], metadata: { suite: tag } } }).nextItems()
    assert.deepEqual(paused.map((x) => x.sandboxId), [s.sandboxId])
    await assert.rejects(s.commands.run('true'), SandboxNotFoundError) // envd is not there while paused
    const again = await Sandbox.connect(s.sandboxId, { timeoutMs: 120_000 })
    assert.equal((await again.getInfo()).state, 'running')
    assert.equal(await again.files.read('/home/user/marker'), 'still here')
    assert.ok((await again.commands.list()).some((p) => p.args.includes('sleep 600')), 'processes survive the pause')
  } finally {
    await s.kill().catch(() => {})
  }
})

test('a timeout: the sandbox is removed, even in the middle of a command', async () => {
  const s = await Sandbox.create('bb', { timeoutMs: 120_000 })
  const long = s.commands.run('sleep 120', { timeoutMs: 0 })
  await sleep(500)
  await s.setTimeout(2_000)
  await assert.rejects(long, TimeoutError)
  assert.equal(await s.isRunning(), false)
  await assert.rejects(s.commands.run('echo hi'), SandboxNotFoundError)
  await assert.rejects(s.files.read('/etc/hostname'), TimeoutError)
  await assert.rejects(Sandbox.getInfo(s.sandboxId), SandboxNotFoundError)
  assert.equal(await s.kill(), false)
})

test('onTimeout pause: paused at its timeout; autoResume: the next request resumes it', async () => {
  const s = await Sandbox.create('bb', { timeoutMs: 3_000, lifecycle: { onTimeout: 'pause', autoResume: true } })
  try {
    const info = await s.getInfo()
    assert.deepEqual(info.lifecycle, { onTimeout: 'pause', autoResume: true })
    await until('paused', async () => (await s.getInfo()).state === 'paused', 30_000)
    assert.equal((await s.commands.run('echo back')).stdout, 'back\n')
    assert.equal((await s.getInfo()).state, 'running')
  } finally {
    await s.kill().catch(() => {})
  }
})

test('network: allowOut and denyOut become the VM\'s egress rules, and change at once', async () => {
  const [allowed, other] = [process.env.EGRESS_ALLOWED, process.env.EGRESS_OTHER]
  const ip = (hp) => hp.split(':')[0]
  const s = await Sandbox.create('bb', { timeoutMs: 120_000, network: { allowOut: [ip(allowed)], denyOut: [ALL_TRAFFIC] } })
  const reach = async (hp) => (await s.commands.run(`/bin/busybox nc -w 3 ${hp.replace(':', ' ')} </dev/null || true`)).stdout.trim()
  try {
    assert.notEqual(await reach(allowed), '')
    assert.equal(await reach(other), '')
    assert.deepEqual((await s.getInfo()).network?.allowOut, [ip(allowed)])
    await s.updateNetwork({ allowOut: [ip(other)], denyOut: [ALL_TRAFFIC] })
    assert.notEqual(await reach(other), '')
    assert.equal(await reach(allowed), '')
    await s.updateNetwork({})
    assert.notEqual(await reach(allowed), '')
  } finally {
    await s.kill().catch(() => {})
  }
})

test('snapshots: a sandbox made from one, and a fork', async () => {
  const s = await Sandbox.create('bb', { timeoutMs: 120_000 })
  try {
    await s.files.write('/home/user/state', 'snapshotted')
    const snap = await s.createSnapshot()
    assert.ok(snap.snapshotId)
    const listed = await Sandbox.listSnapshots({ sandboxId: s.sandboxId }).nextItems()
    assert.deepEqual(listed.map((x) => x.snapshotId), [snap.snapshotId])
    const fromSnap = await Sandbox.create(snap.snapshotId, { timeoutMs: 120_000 })
    try {
      assert.equal(await fromSnap.files.read('/home/user/state'), 'snapshotted')
    } finally {
      await fromSnap.kill()
    }
    assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId), true)
    assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId), false)
    const [fork] = await s.fork({ timeoutMs: 120_000 })
    assert.ok(fork instanceof Sandbox, `${fork}`)
    try {
      assert.notEqual(fork.sandboxId, s.sandboxId)
      assert.equal(await fork.files.read('/home/user/state'), 'snapshotted')
      await fork.files.write('/home/user/state', 'forked')
      assert.equal(await s.files.read('/home/user/state'), 'snapshotted')
    } finally {
      await fork.kill()
    }
  } finally {
    await s.kill().catch(() => {})
  }
})

test('another user\'s key cannot see or touch a sandbox', async () => {
  const other = { apiKey: process.env.OTHER_KEY }
  await assert.rejects(Sandbox.getInfo(sbx.sandboxId, other), SandboxNotFoundError)
  await assert.rejects(Sandbox.connect(sbx.sandboxId, other), SandboxNotFoundError)
  assert.equal(await Sandbox.kill(sbx.sandboxId, other), false)
  assert.ok(!(await Sandbox.list(other).nextItems()).some((x) => x.sandboxId === sbx.sandboxId))
  const theirs = await Sandbox.create('bb', { ...other, timeoutMs: 600_000, metadata: { who: 'alice' } })
  record('aliceSandbox', theirs.sandboxId)
  record('aliceToken', theirs.envdAccessToken)
  assert.equal((await theirs.commands.run('echo mine')).stdout, 'mine\n')
  await assert.rejects(Sandbox.getInfo(theirs.sandboxId), SandboxNotFoundError)
  assert.equal(await Sandbox.kill(theirs.sandboxId), false)
  // Its envd with the wrong sandbox's access token.
  const r = await fetch(`${process.env.E2B_SANDBOX_URL}/envs`, { headers: { 'E2b-Sandbox-Id': theirs.sandboxId, 'X-Access-Token': sbx.envdAccessToken } })
  assert.equal(r.status, 401)
  assert.equal(await sbx.isRunning(), true)
})

test('bad input: a wrong key, an unknown template or sandbox, template builds', async () => {
  const before = (await Sandbox.list().nextItems()).length
  await assert.rejects(Sandbox.create('bb', { apiKey: 'e2b_0000000000000000000000000000000000000000' }), AuthenticationError)
  // No key at all: the SDK refuses before asking; the endpoint too.
  const nokey = await fetch(`${process.env.E2B_API_URL}/v2/sandboxes`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{"templateID":"bb"}' })
  assert.equal(nokey.status, 401)
  assert.match((await nokey.json()).message, /banger e2b key create/)
  assert.equal((await Sandbox.list().nextItems()).length, before)
  await assert.rejects(Sandbox.create('no-such-template'), (e) => {
    assert.ok(e instanceof SandboxError)
    assert.match(e.message, /^404: template 'no-such-template' not found/)
    return true
  })
  await assert.rejects(Sandbox.connect('inosuchsandbox'), SandboxNotFoundError)
  await assert.rejects(Sandbox.getInfo('inosuchsandbox'), SandboxNotFoundError)
  assert.equal(await Sandbox.kill('inosuchsandbox'), false)
  const build = await fetch(`${process.env.E2B_API_URL}/v3/templates`, { method: 'POST', headers: { 'X-API-Key': process.env.E2B_API_KEY, 'Content-Type': 'application/json' }, body: '{}' })
  assert.equal(build.status, 400)
  assert.match((await build.json()).message, /does not build E2B templates/)
  const tpls = await (await fetch(`${process.env.E2B_API_URL}/templates`, { headers: { 'X-API-Key': process.env.E2B_API_KEY } })).json()
  assert.ok(tpls.some((t) => t.templateID === 'deb' && t.aliases.includes('base')), JSON.stringify(tpls))
  assert.equal((await Sandbox.list().nextItems()).length, before)
})

test('kill', async () => {
  const s = await Sandbox.create('bb', { timeoutMs: 120_000 })
  assert.equal(await s.kill(), true)
  await assert.rejects(s.getInfo(), SandboxNotFoundError)
  assert.equal(await Sandbox.kill(s.sandboxId), false)
  assert.ok(!(await Sandbox.list().nextItems()).some((x) => x.sandboxId === s.sandboxId))
  assert.equal(await s.isRunning(), false)
})
