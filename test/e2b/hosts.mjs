// Preloaded (node --import) by the domain tests: names under e2b.test
// resolve to 127.0.0.1, as a wildcard DNS record for a banger host's
// E2B domain would make them.
import dns from 'node:dns'

const lookup = dns.lookup
dns.lookup = function (host, opts, cb) {
  if (typeof opts === 'function') { cb = opts; opts = {} }
  if (/(^|\.)e2b\.test$/.test(host)) {
    if (opts?.all) return process.nextTick(cb, null, [{ address: '127.0.0.1', family: 4 }])
    return process.nextTick(cb, null, '127.0.0.1', 4)
  }
  return lookup.call(this, host, opts, cb)
}
