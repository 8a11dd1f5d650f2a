// Measurements of the E2B endpoint with the real SDK (not a test: run by
// bench/e2b.sh through test/integration's BenchmarkE2B). Prints one
// JSON line of samples in milliseconds:
//   tti: Sandbox.create() until the first commands.run('true') returns
//        (ComputeSDK's time to interactive), ROUNDS in a row;
//   ttiKill: the same plus the sandbox's kill;
//   burst: BURST sandboxes at once, each one's time to interactive;
//   rtt: commands.run('true') in a running sandbox, again and again.
import { Sandbox } from 'e2b'

const template = process.env.TEMPLATE ?? 'base'
const rounds = Number(process.env.ROUNDS ?? 20)
const burstN = Number(process.env.BURST ?? 10)
const rttN = Number(process.env.RTT ?? 50)

async function tti () {
  const t0 = performance.now()
  const s = await Sandbox.create(template, { timeoutMs: 300_000 })
  await s.commands.run('true')
  const t1 = performance.now()
  await s.kill()
  return [t1 - t0, performance.now() - t0]
}

const out = { template, tti: [], ttiKill: [], burst: [], rtt: [] }
// One unmeasured sandbox first: the warm template of this shape is made
// by the first cold boot, as for `banger vm run`.
await tti()
for (let i = 0; i < rounds; i++) {
  const [a, b] = await tti()
  out.tti.push(a)
  out.ttiKill.push(b)
}
out.burst = (await Promise.all(Array.from({ length: burstN }, () => tti()))).map(([a]) => a)
const s = await Sandbox.create(template, { timeoutMs: 300_000 })
await s.commands.run('true')
for (let i = 0; i < rttN; i++) {
  const t0 = performance.now()
  await s.commands.run('true')
  out.rtt.push(performance.now() - t0)
}
await s.kill()
console.log(JSON.stringify(out))
