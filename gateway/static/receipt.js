// MedLedger receipt check, run in the staff's browser (no library; WebCrypto only).
// Copyright the MedLedger authors. Licensed under the Apache License, Version 2.0.
//
// Each button.receipt[data-seq] on the page gets its entry's receipt (docs/ledger-format.md §8)
// from /data/entries/{seq}/receipt and checks it here as §9.2 says: the entry bytes decode
// strictly, the entry's Ed25519 signature (version 1 entries; a version 2 entry has none and
// rests on the tree head), every disclosed component's commitment (SHA-256),
// the RFC 9162 inclusion proof of its leaf up to the tree head's root, and the tree head's
// Ed25519 signature, each against the gateways' keys (/data/keys). The keys are pinned in this
// browser (localStorage) the first time it sees them, so a server that later shows other keys,
// or a receipt signed with a key the site never had, shows INVALID: the check does not rest
// on the server that served the page.
//
// Then each key the receipt carries must be endorsed by the site (§9.5): the receipt's
// `endorsements` hold, per key, an X.509 certificate from that node's issuing CA ("MedLedger
// issuing CA N", itself signed by the site root) whose subject key is the Ed25519 key and whose
// SAN is urn:medledger:ledger-key:node:N. The site root is the one the gateway serves at
// /data/site-root (the root it trusts, `tls.ca_file`), pinned in this browser the first time
// like the keys; the badge names its subject and SHA-256 fingerprint so that the reader can
// compare it with the fingerprint the site publishes (`medledger ca init` prints it). The
// certificates are read with a small DER walk below and their ECDSA P-256 signatures checked
// with WebCrypto. A key without a valid endorsement shows "NOT endorsed", naming the gateway
// and why.
'use strict';
(function () {
  const enc = new TextEncoder();
  const ENTRY_DS = enc.encode('medledger/entry/v1\0');
  const COMPONENT_DS = enc.encode('medledger/component/v1\0');
  const HEAD_DS = enc.encode('medledger/tree-head/v1\0');
  const PIN_KEY = 'medledger.gateway-keys';
  const ROOT_PIN_KEY = 'medledger.site-root';

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
    // Version 1 carries the entry's Ed25519 signature; version 2 none (the signed tree head
    // covering its leaf authenticates it, §4.5).
    const version = r.u8();
    if (version !== 1 && version !== 2) fail('unknown entry version ' + version);
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
    const signature = version === 1 ? r.take(64) : null;
    if (r.i !== bytes.length) fail('trailing bytes after the entry');
    return { version, seq, nodeId, corrects, components, body: bytes.subarray(9, bodyEnd), signature };
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


  // ---- X.509, only what §9.5 needs: a bounds-checked DER walk (tag, length, contents). ----
  const OID = {
    ecdsaSha256: '2a8648ce3d040302', ecKey: '2a8648ce3d0201', p256: '2a8648ce3d030107',
    ed25519: '2b6570', cn: '550403', basicConstraints: '551d13', san: '551d11',
  };

  // One element at offset i of b: its tag, the start and end of its contents, and where it
  // starts. Lengths of more than 3 bytes (16 MiB) are refused: no certificate is that long.
  function der(b, i) {
    if (i + 2 > b.length) fail('certificate: truncated DER');
    const tag = b[i];
    let n = b[i + 1];
    let p = i + 2;
    if (n & 0x80) {
      const k = n & 0x7f;
      if (k === 0 || k > 3 || p + k > b.length) fail('certificate: bad DER length');
      n = 0;
      for (let j = 0; j < k; j++) n = n * 256 + b[p + j];
      p += k;
    }
    if (p + n > b.length) fail('certificate: truncated DER');
    return { tag, start: p, end: p + n, at: i };
  }

  // The elements inside el, each within it; with tags, exactly those tags in that order.
  function children(b, el, tags) {
    const out = [];
    for (let p = el.start; p < el.end;) {
      const c = der(b, p);
      if (c.end > el.end) fail('certificate: DER element runs past its parent');
      out.push(c);
      p = c.end;
    }
    if (tags && (out.length !== tags.length || out.some((c, i) => c.tag !== tags[i]))) {
      fail('certificate: unexpected DER structure');
    }
    return out;
  }

  const body = (b, el) => b.subarray(el.start, el.end);

  // UTCTime (0x17, YYMMDDHHMMSSZ) or GeneralizedTime (0x18, YYYYMMDDHHMMSSZ), in Unix ms.
  function derTime(b, el) {
    let t = new TextDecoder().decode(body(b, el));
    if (el.tag === 0x17) t = (Number(t.slice(0, 2)) >= 50 ? '19' : '20') + t;
    else if (el.tag !== 0x18) fail('certificate: bad validity');
    if (!/^\d{14}Z$/.test(t)) fail('certificate: unexpected time ' + t);
    const n = (i, j) => Number(t.slice(i, j));
    return Date.UTC(n(0, 4), n(4, 6) - 1, n(6, 8), n(8, 10), n(10, 12), n(12, 14));
  }

  // The parts of a certificate (DER bytes) that §9.5 checks.
  function parseCertificate(b) {
    const top = der(b, 0);
    if (top.tag !== 0x30 || top.end !== b.length) fail('certificate: not a DER certificate');
    const [tbs, alg, sig] = children(b, top, [0x30, 0x30, 0x03]);
    if (b[sig.start] !== 0) fail('certificate: bad signature bit string');
    let f = children(b, tbs);
    if (f.length && f[0].tag === 0xa0) f = f.slice(1); // version
    if (f.length < 6) fail('certificate: truncated tbsCertificate');
    const [validity, subject, spki] = [f[3], f[4], f[5]];
    const [from, to] = children(b, validity);
    const [keyAlg, keyBits] = children(b, spki, [0x30, 0x03]);
    if (b[keyBits.start] !== 0) fail('certificate: bad public key bit string');
    const keyOids = children(b, keyAlg);
    const c = {
      tbs: b.subarray(tbs.at, tbs.end),
      signatureAlgorithm: toHex(body(b, children(b, alg)[0])),
      signature: b.subarray(sig.start + 1, sig.end),
      spki: b.subarray(spki.at, spki.end),
      keyAlgorithm: toHex(body(b, keyOids[0])),
      curve: keyOids.length > 1 && keyOids[1].tag === 0x06 ? toHex(body(b, keyOids[1])) : null,
      publicKey: b.subarray(keyBits.start + 1, keyBits.end),
      notBefore: derTime(b, from),
      notAfter: derTime(b, to),
      cn: null,
      isCa: false,
      uris: [],
    };
    const utf8 = new TextDecoder('utf-8', { fatal: true });
    for (const rdn of children(b, subject)) {
      for (const atv of children(b, rdn)) {
        const [oid, value] = children(b, atv);
        if (oid.tag === 0x06 && toHex(body(b, oid)) === OID.cn) c.cn = utf8.decode(body(b, value));
      }
    }
    for (const ext of f.slice(6).filter((e) => e.tag === 0xa3)) {
      for (const e of children(b, children(b, ext, [0x30])[0])) {
        const parts = children(b, e);
        const value = parts[parts.length - 1];
        if (parts[0].tag !== 0x06 || value.tag !== 0x04) fail('certificate: bad extension');
        const inner = der(b, value.start);
        if (inner.end !== value.end) fail('certificate: bad extension');
        const oid = toHex(body(b, parts[0]));
        if (oid === OID.basicConstraints) {
          const items = children(b, inner);
          c.isCa = items.length > 0 && items[0].tag === 0x01 && b[items[0].start] !== 0;
        } else if (oid === OID.san) {
          c.uris = children(b, inner).filter((g) => g.tag === 0x86)
            .map((g) => new TextDecoder().decode(body(b, g)));
        }
      }
    }
    return c;
  }

  // The DER of the one certificate in a PEM text.
  function pemCertificate(text, what) {
    const blocks = typeof text === 'string' ? text.split('-----BEGIN CERTIFICATE-----').slice(1) : [];
    if (blocks.length !== 1) fail(what + ': expected one PEM certificate, found ' + blocks.length);
    const [b64, end] = blocks[0].split('-----END CERTIFICATE-----');
    if (end === undefined) fail(what + ': unterminated PEM certificate');
    let bin;
    try { bin = atob(b64.replace(/\s+/g, '')); } catch (e) { fail(what + ': PEM that is not base64'); }
    return Uint8Array.from(bin, (ch) => ch.charCodeAt(0));
  }

  // X.509 carries an ECDSA signature as DER SEQUENCE { r, s }; WebCrypto takes r ‖ s, 32 bytes each.
  function rawEcdsa(sig) {
    const out = new Uint8Array(64);
    children(sig, der(sig, 0), [0x02, 0x02]).forEach((n, i) => {
      let v = body(sig, n);
      while (v.length > 32 && v[0] === 0) v = v.subarray(1);
      if (v.length > 32) fail('certificate: bad ECDSA signature');
      out.set(v, 32 * i + 32 - v.length);
    });
    return out;
  }

  async function signedBy(cert, issuer) {
    if (cert.signatureAlgorithm !== OID.ecdsaSha256 || issuer.keyAlgorithm !== OID.ecKey || issuer.curve !== OID.p256) return false;
    try {
      const key = await crypto.subtle.importKey('spki', issuer.spki, { name: 'ECDSA', namedCurve: 'P-256' }, false, ['verify']);
      return await crypto.subtle.verify({ name: 'ECDSA', hash: 'SHA-256' }, key, rawEcdsa(cert.signature), cert.tbs);
    } catch (e) {
      return false;
    }
  }

  // §9.5: `e` endorses `key` as node `id`'s ledger key under `root`, through node `id`'s own
  // issuing CA, at `atMs`. Resolves to null, or to what did not hold.
  async function endorsementProblem(root, e, id, key, atMs) {
    let issuer, cert;
    try {
      issuer = parseCertificate(pemCertificate(e.issuer_certificate, 'the issuing CA certificate'));
      cert = parseCertificate(pemCertificate(e.certificate, 'the endorsement'));
    } catch (err) {
      return 'unreadable certificate: ' + err.message;
    }
    const want = 'MedLedger issuing CA ' + id;
    if (!issuer.isCa) return 'the endorsement\'s issuer is not a CA certificate';
    if (!(await signedBy(issuer, root))) return 'the issuing CA "' + issuer.cn + '" is not signed by the site root';
    if (issuer.cn !== want) return 'the endorsement\'s issuer "' + issuer.cn + '" is not gateway ' + id + '\'s issuing CA';
    if (!(await signedBy(cert, issuer))) return 'the endorsement is not signed by "' + issuer.cn + '"';
    if (cert.keyAlgorithm !== OID.ed25519 || !same(cert.publicKey, key)) return 'the endorsement certifies another key than gateway ' + id + '\'s';
    if (!cert.uris.includes('urn:medledger:ledger-key:node:' + id)) return 'the endorsement does not name gateway ' + id;
    for (const [c, what] of [[issuer, 'the issuing CA'], [cert, 'the endorsement']]) {
      if (atMs < c.notBefore || atMs > c.notAfter) return what + ' was not valid at the tree head\'s time';
    }
    return null;
  }

  // The site root the gateway serves, pinned in this browser like the keys.
  let siteRootDoc = null;
  async function siteRoot() {
    if (!siteRootDoc) {
      siteRootDoc = fetch('/data/site-root', { credentials: 'same-origin' }).then(async (resp) => {
        if (!resp.ok) fail('the site root is not available (' + resp.status + ')');
        const bytes = pemCertificate((await resp.json()).certificate_pem, 'the site root');
        const cert = parseCertificate(bytes);
        const fingerprint = 'sha256:' + toHex(await sha256(bytes));
        let pin = null;
        try { pin = localStorage.getItem(ROOT_PIN_KEY); } catch (e) { /* private mode */ }
        if (pin && pin !== fingerprint) fail('the site root the gateway serves (' + fingerprint + ') differs from the one this browser pinned (' + pin + ')');
        try { localStorage.setItem(ROOT_PIN_KEY, fingerprint); } catch (e) { /* private mode */ }
        return { cert, fingerprint, subject: cert.cn || '(no common name)' };
      });
    }
    return siteRootDoc;
  }

  // Every key the receipt carries has an endorsement that holds under the site root: resolves
  // to { root, problem } where problem is null or names the gateway and why.
  async function endorsed(receipt, carried, atMs) {
    const root = await siteRoot();
    const byNode = new Map();
    for (const e of receipt.endorsements || []) {
      const id = String(e && e.node_id);
      byNode.set(id, (byNode.get(id) || []).concat([e]));
    }
    for (const [id, key] of carried) {
      const found = byNode.get(id) || [];
      if (found.length === 0) return { root, problem: 'gateway ' + id + '\'s key has no endorsement in the receipt: the site did not endorse it' };
      const why = [];
      for (const e of found) {
        const p = await endorsementProblem(root.cert, e, id, key, atMs);
        if (p === null) { why.length = 0; break; }
        why.push(p);
      }
      if (why.length) return { root, problem: 'gateway ' + id + '\'s key is not endorsed by the site root: ' + why.join('; ') };
    }
    return { root, problem: null };
  }

  // Checks one receipt document; resolves to { what: a description of what
  // was proven, endorsement: what endorsed() found }, or rejects
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
    if (e.signature !== null) {
      const entryKey = carried.get(String(e.nodeId));
      if (!entryKey) fail('no key for gateway ' + e.nodeId);
      if (!(await ed25519(entryKey, e.signature, cat(ENTRY_DS, e.body)))) fail('the entry\'s signature does not verify');
    }
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
    }
    const what = voters.length > 0
      ? 'entry #' + e.seq + ' is in the ledger of ' + head.size + ' entries signed by gateways ' +
        voters.filter((v) => signers.includes(v)).join(', ') + ' of the ' + voters.length + ' voters'
      : 'entry #' + e.seq + ' is in the ledger of ' + head.size + ' entries signed by gateway ' + head.node_id;
    return { what, endorsement: await endorsed(receipt, carried, Number(head.time_ms)) };
  }

  async function check(button, receipt) {
    button.dataset.state = 'checking';
    button.textContent = 'Receipt: checking…';
    try {
      const doc = receipt || await fetch('/data/entries/' + encodeURIComponent(button.dataset.seq) + '/receipt', { credentials: 'same-origin' })
        .then((r) => { if (!r.ok) fail('receipt not available (' + r.status + ')'); return r.json(); });
      const { what, endorsement } = await verify(doc);
      const root = endorsement.root;
      const by = root.subject + ' (' + root.fingerprint + ')';
      if (endorsement.problem === null) {
        button.dataset.state = 'valid';
        button.textContent = 'Receipt: valid, endorsed by ' + root.subject;
        button.title = what + '; every key endorsed by ' + by;
      } else {
        // The proofs hold, but a key is not the site's: not to be taken as the site's record.
        button.dataset.state = 'unendorsed';
        button.textContent = 'Receipt: NOT endorsed by the site';
        button.title = endorsement.problem + ' (site root ' + by + '); ' + what;
      }
      button.setAttribute('aria-label', 'Receipt ' + (endorsement.problem === null ? 'valid: ' : 'not endorsed: ') + button.title);
    } catch (err) {
      button.dataset.state = 'invalid';
      button.textContent = 'Receipt: INVALID';
      button.title = err.message;
      button.setAttribute('aria-label', 'Receipt invalid: ' + err.message);
    }
    return button.dataset.state;
  }

  window.MedLedgerReceipt = { verify, check, toHex, parseCertificate, pemCertificate };

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
