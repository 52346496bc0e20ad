// MedLedger receipt check, run in the staff's browser (no library; WebCrypto only).
// Copyright the MedLedger authors. Licensed under the Apache License, Version 2.0.
//
// Each button.receipt[data-seq] on the page gets its entry's receipt (docs/ledger-format.md §8)
// from /data/entries/{seq}/receipt and checks it here as §9.2 says: the entry bytes decode
// strictly, the entry's Ed25519 signature, every disclosed component's commitment (SHA-256),
// the RFC 9162 inclusion proof of its leaf up to the tree head's root, and the tree head's
// Ed25519 signature, each against the gateways' keys (/data/keys). The keys are pinned in this
// browser (localStorage) the first time it sees them, so a server that later shows other keys,
// or a receipt signed with a key the site never had, shows INVALID: the check does not rest
// on the server that served the page.
'use strict';
(function () {
  const enc = new TextEncoder();
  const ENTRY_DS = enc.encode('medledger/entry/v1\0');
  const COMPONENT_DS = enc.encode('medledger/component/v1\0');
  const HEAD_DS = enc.encode('medledger/tree-head/v1\0');
  const PIN_KEY = 'medledger.gateway-keys';

  function fail(why) { throw new Error(why); }

  function fromHex(s, len, what) {
    if (typeof s !== 'string' || !/^(?:[0-9a-f]{2})*$/.test(s)) fail(what + ' is not lowercase hex');
    const b = new Uint8Array(s.length / 2);
    for (let i = 0; i < b.length; i++) b[i] = parseInt(s.substr(2 * i, 2), 16);
    if (len !== undefined && b.length !== len) fail(what + ' is not ' + len + ' bytes');
    return b;
  }

  function toHex(b) {
    return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  }

  function cat(...parts) {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let i = 0;
    for (const p of parts) { out.set(p, i); i += p.length; }
    return out;
  }

  function u64(n) {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, BigInt.asUintN(64, BigInt(n)));
    return b;
  }

  function u32(n) {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, n);
    return b;
  }

  function str(s) {
    const b = enc.encode(s);
    return cat(u32(b.length), b);
  }

  function same(a, b) {
    if (a.length !== b.length) return false;
    let d = 0;
    for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
    return d === 0;
  }

  async function sha256(...parts) {
    return new Uint8Array(await crypto.subtle.digest('SHA-256', cat(...parts)));
  }

  // A bounds-checked reader of the entry bytes (§4): every read past the end fails.
  class Reader {
    constructor(b) { this.b = b; this.i = 0; this.dec = new TextDecoder('utf-8', { fatal: true }); }
    take(n) {
      if (this.i + n > this.b.length) fail('entry bytes are truncated');
      const s = this.b.subarray(this.i, this.i + n);
      this.i += n;
      return s;
    }
    u8() { return this.take(1)[0]; }
    u32() { return new DataView(this.take(4).slice().buffer).getUint32(0); }
    u64() { return new DataView(this.take(8).slice().buffer).getBigUint64(0); }
    str() {
      const n = this.u32();
      if (n > 65536) fail('entry field is longer than 65536 bytes');
      try { return this.dec.decode(this.take(n)); } catch (e) { fail('entry field is not UTF-8'); }
    }
    opt(read) {
      const tag = this.u8();
      if (tag === 0) return null;
      if (tag !== 1) fail('bad option tag in the entry');
      return read();
    }
  }

  function decodeEntry(bytes) {
    const r = new Reader(bytes);
    if (r.u8() !== 1) fail('unknown entry version');
    const seq = r.u64();
    r.take(8); // recorded_at_ms
    const nodeId = r.u64();
    r.str(); r.str(); r.str(); // author, kind, device_id
    r.opt(() => r.str()); // occurred_at
    const corrects = r.opt(() => r.u64());
    r.opt(() => r.str()); // event_id
    const count = r.u32();
    if (count > 256) fail('more than 256 components');
    const components = [];
    for (let i = 0; i < count; i++) {
      components.push({ name: r.str(), cls: r.str(), commitment: r.take(32) });
    }
    const bodyEnd = r.i;
    const signature = r.take(64);
    if (r.i !== bytes.length) fail('trailing bytes after the entry signature');
    return { seq, nodeId, corrects, components, body: bytes.subarray(9, bodyEnd), signature };
  }

  async function ed25519(publicKey, signature, message) {
    const key = await crypto.subtle.importKey('raw', publicKey, { name: 'Ed25519' }, false, ['verify']);
    return crypto.subtle.verify({ name: 'Ed25519' }, key, signature, message);
  }

  // RFC 9162 §2.1.3.2.
  async function inclusion(leaf, index, size, path, root) {
    let fn = index;
    let sn = size - 1n;
    if (index >= size) return false;
    let r = leaf;
    for (const p of path) {
      if (sn === 0n) return false;
      if ((fn & 1n) === 1n || fn === sn) {
        r = await sha256(Uint8Array.of(1), p, r);
        if ((fn & 1n) === 0n) {
          while ((fn & 1n) === 0n && fn !== 0n) { fn >>= 1n; sn >>= 1n; }
        }
      } else {
        r = await sha256(Uint8Array.of(1), r, p);
      }
      fn >>= 1n;
      sn >>= 1n;
    }
    return sn === 0n && same(r, root);
  }

  function pinned() {
    try { return JSON.parse(localStorage.getItem(PIN_KEY) || '{}'); } catch (e) { return {}; }
  }

  let siteKeys = null;
  async function keys() {
    if (!siteKeys) {
      siteKeys = fetch('/data/keys', { credentials: 'same-origin' }).then(async (resp) => {
        if (!resp.ok) fail('the gateways\' keys are not available (' + resp.status + ')');
        const list = await resp.json();
        const pins = pinned();
        const out = new Map();
        for (const k of list) {
          const id = String(k.node_id);
          if (pins[id] !== undefined && pins[id] !== k.public_key) {
            fail('the key of gateway ' + id + ' differs from the one this browser pinned');
          }
          pins[id] = k.public_key;
          out.set(id, k.public_key);
        }
        try { localStorage.setItem(PIN_KEY, JSON.stringify(pins)); } catch (e) { /* private mode */ }
        return out;
      });
    }
    return siteKeys;
  }

  // Checks one receipt document; resolves to a description of what was proven, or rejects
  // with the first reason it is invalid.
  async function verify(receipt) {
    if (!receipt || receipt.format !== 'medledger-receipt/1') fail('not a medledger-receipt/1 document');
    const site = await keys();
    const carried = new Map();
    for (const k of receipt.node_keys || []) {
      const id = String(k.node_id);
      if (carried.has(id)) fail('node ' + id + ' appears twice in node_keys');
      fromHex(k.public_key, 32, 'node key');
      if (site.get(id) !== k.public_key) fail('the receipt carries a key of gateway ' + id + ' that is not the site\'s');
      carried.set(id, fromHex(k.public_key, 32, 'node key'));
    }
    const line = receipt.entry;
    const bytes = fromHex(line.entry, undefined, 'entry');
    const e = decodeEntry(bytes);
    if (e.seq !== BigInt(line.seq)) fail('the entry\'s bytes name seq ' + e.seq + ', not ' + line.seq);
    const entryKey = carried.get(String(e.nodeId));
    if (!entryKey) fail('no key for gateway ' + e.nodeId);
    if (!(await ed25519(entryKey, e.signature, cat(ENTRY_DS, e.body)))) fail('the entry\'s signature does not verify');
    if (e.corrects !== null && e.corrects >= e.seq) fail('corrects is not an earlier entry');
    const openings = line.openings || [];
    if (openings.length !== e.components.length) fail('openings do not match the components');
    for (let i = 0; i < openings.length; i++) {
      const o = openings[i];
      if (o === null) continue;
      const c = e.components[i];
      const got = await sha256(COMPONENT_DS, fromHex(o.salt, 32, 'salt'), str(c.name), str(c.cls), str(o.value));
      if (!same(got, c.commitment)) fail('component ' + c.name + ' does not match its commitment');
    }
    const head = receipt.tree_head;
    const root = fromHex(head.root, 32, 'root');
    const leaf = await sha256(Uint8Array.of(0), bytes);
    const path = (receipt.inclusion_proof || []).map((h) => fromHex(h, 32, 'proof hash'));
    if (!(await inclusion(leaf, e.seq, BigInt(head.size), path, root))) fail('the inclusion proof does not lead to the tree head\'s root');
    const headKey = carried.get(String(head.node_id));
    if (!headKey) fail('no key for gateway ' + head.node_id);
    const msg = cat(HEAD_DS, u64(head.size), root, u64(head.time_ms), u64(head.node_id));
    if (!(await ed25519(headKey, fromHex(head.signature, 64, 'signature'), msg))) fail('the tree head\'s signature does not verify');
    // docs/ledger-format.md §9.6: a head co-signed by the voters needs a majority of them.
    const signers = [String(head.node_id)];
    for (const c of receipt.cosignatures || []) {
      const id = String(c.node_id);
      if (c.size !== head.size || c.root !== head.root) fail('the co-signature of gateway ' + id + ' is over another tree');
      if (signers.includes(id)) fail('gateway ' + id + ' signs the tree head twice');
      const k = carried.get(id);
      if (!k) fail('no key for gateway ' + id);
      const m = cat(HEAD_DS, u64(c.size), root, u64(c.time_ms), u64(c.node_id));
      if (!(await ed25519(k, fromHex(c.signature, 64, 'signature'), m))) fail('the co-signature of gateway ' + id + ' does not verify');
      signers.push(id);
    }
    const voters = (receipt.voters || []).map(String);
    if (signers.length > 1 && voters.length === 0) fail('co-signatures without a voter set');
    if (voters.length > 0) {
      const signed = voters.filter((v) => signers.includes(v));
      if (signed.length < Math.floor(voters.length / 2) + 1) {
        fail('the tree head is signed by ' + signed.length + ' of its ' + voters.length + ' voters; gateways ' +
          voters.filter((v) => !signers.includes(v)).join(', ') + ' did not sign it');
      }
      return 'entry #' + e.seq + ' is in the ledger of ' + head.size + ' entries signed by gateways ' +
        signed.join(', ') + ' of the ' + voters.length + ' voters';
    }
    return 'entry #' + e.seq + ' is in the ledger of ' + head.size + ' entries signed by gateway ' + head.node_id;
  }

  async function check(button, receipt) {
    button.dataset.state = 'checking';
    button.textContent = 'Receipt: checking…';
    try {
      const doc = receipt || await fetch('/data/entries/' + encodeURIComponent(button.dataset.seq) + '/receipt', { credentials: 'same-origin' })
        .then((r) => { if (!r.ok) fail('receipt not available (' + r.status + ')'); return r.json(); });
      const what = await verify(doc);
      button.dataset.state = 'valid';
      button.textContent = 'Receipt: valid';
      button.title = what;
      button.setAttribute('aria-label', 'Receipt valid: ' + what);
    } catch (err) {
      button.dataset.state = 'invalid';
      button.textContent = 'Receipt: INVALID';
      button.title = err.message;
      button.setAttribute('aria-label', 'Receipt invalid: ' + err.message);
    }
    return button.dataset.state;
  }

  window.MedLedgerReceipt = { verify, check, toHex };

  // The newest AUTO entries are checked at once; older ones when their badge is pressed, so a
  // long history does not cost a request per entry on every visit.
  const AUTO = 50;

  function start() {
    const all = [...document.querySelectorAll('button.receipt[data-seq]')];
    all.sort((a, b) => Number(b.dataset.seq) - Number(a.dataset.seq));
    all.forEach((b, i) => {
      b.addEventListener('click', () => { check(b); });
      if (i < AUTO) check(b);
      else b.textContent = 'Receipt: press to check';
    });
  }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
