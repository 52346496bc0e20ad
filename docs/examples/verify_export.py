#!/usr/bin/env python3
"""Independent verifier of MedLedger exports and receipts.

Written from docs/ledger-format.md alone, with the Python 3 standard library only, to show that
an export can be checked without MedLedger's Rust code. Ed25519 verification is the reference code
of RFC 8032 section 6 (pure Python, slow: a few milliseconds per signature), with the extra checks
that MedLedger's format requires (canonical S, no small-order key or R, R compared as bytes).

Usage:
    verify_export.py [--skip-signatures] [--trusted-key NODE_ID=HEX]... [--quorum N]
                     [--site-root ROOT.crt] [--known-head FILE] FILE
    verify_export.py --self-test

Exit status: 0 the document verifies, 1 it does not (the first problem is printed on stderr),
2 bad usage or the file cannot be read.

--skip-signatures checks everything except the ed25519 signatures (entry bytes, commitments,
Merkle root or inclusion proof, sizes, sequence numbers). It says so in its output: without
signatures nothing ties the document to a node's key.

A document cut at a co-signed checkpoint (section 9.6: it carries `voters` and `cosignatures`)
must be signed by a majority of its voters; --quorum N requires at least N signers (of those
voters, when there are any). --site-root ROOT.crt checks every key the document carries against
the site's root certificate (section 9.5): an export's own ledger-key `certificate-issued`
entries, or a receipt's `endorsements`, each signed (ECDSA P-256) by that node's issuing CA,
itself signed by the root.

--known-head FILE checks that the document is consistent with a tree head seen before (section
9.4): FILE is a signed tree head as `GET /v1/head` serves it, or an earlier export or receipt
whose tree head (with its voter set and co-signatures) is used. The known head must verify with
the document's keys; a document whose head is older is refused as a rollback, one whose tree does
not extend the known tree as a fork (an export carries every leaf: the root of its first
known-size leaves must be the known root; a receipt newer than the known head must carry a
consistency proof from the known size).
"""

import base64
import calendar
import hashlib
import json
import sys

# ---------------------------------------------------------------------------------------------
# Ed25519 verification: RFC 8032 section 6 reference code, plus the strict checks of section 8.
# ---------------------------------------------------------------------------------------------

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493  # the group order, called q in RFC 8032


def _inv(x):
    return pow(x, P - 2, P)


D = -121665 * _inv(121666) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)
IDENTITY = (0, 1, 1, 0)


def _add(p1, p2):
    a = (p1[1] - p1[0]) * (p2[1] - p2[0]) % P
    b = (p1[1] + p1[0]) * (p2[1] + p2[0]) % P
    c = 2 * p1[3] * p2[3] * D % P
    d = 2 * p1[2] * p2[2] % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _mul(s, pt):
    q = IDENTITY
    while s > 0:
        if s & 1:
            q = _add(q, pt)
        pt = _add(pt, pt)
        s >>= 1
    return q


def _neg(pt):
    return ((-pt[0]) % P, pt[1], pt[2], (-pt[3]) % P)


def _equal(p1, p2):
    return (p1[0] * p2[2] - p2[0] * p1[2]) % P == 0 and (p1[1] * p2[2] - p2[1] * p1[2]) % P == 0


def _recover_x(y, sign):
    if y >= P:
        return None
    x2 = (y * y - 1) * _inv(D * y * y + 1)
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P != 0:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P != 0:
        return None
    if (x & 1) != sign:
        x = P - x
    return x


_GY = 4 * _inv(5) % P
_GX = _recover_x(_GY, 0)
G = (_GX, _GY, 1, _GX * _GY % P)


def _compress(pt):
    zinv = _inv(pt[2])
    x = pt[0] * zinv % P
    y = pt[1] * zinv % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _decompress(b):
    if len(b) != 32:
        return None
    y = int.from_bytes(b, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    x = _recover_x(y, sign)
    if x is None:
        return None
    return (x, y, 1, x * y % P)


def _small_order(pt):
    return _equal(_mul(8, pt), IDENTITY)


def valid_public_key(pk):
    """A public key must decode to a curve point (canonical encoding)."""
    return _decompress(pk) is not None


def ed25519_verify(pk, msg, sig):
    """Strict Ed25519: S < L, A and R decode and are not of small order, [S]B - [k]A encodes to R."""
    if len(pk) != 32 or len(sig) != 64:
        return False
    a = _decompress(pk)
    r = _decompress(sig[:32])
    if a is None or r is None or _small_order(a) or _small_order(r):
        return False
    s = int.from_bytes(sig[32:], "little")
    if s >= L:
        return False
    k = int.from_bytes(hashlib.sha512(sig[:32] + pk + msg).digest(), "little") % L
    return _compress(_add(_mul(s, G), _neg(_mul(k, a)))) == sig[:32]


# ---------------------------------------------------------------------------------------------
# The ledger format.
# ---------------------------------------------------------------------------------------------

EXPORT_FORMAT = "medledger-export/1"
RECEIPT_FORMAT = "medledger-receipt/1"
RECEIPT_FIELDS = ("format", "node_keys", "entry", "inclusion_proof", "tree_head", "consistency",
                  "voters", "cosignatures", "endorsements")
ENTRY_VERSION = 1       # entry with its own Ed25519 signature (section 4.2)
ENTRY_VERSION_2 = 2     # entry without one, authenticated by the signed tree head (section 4.5)
ENTRY_DOMAIN = b"medledger/entry/v1\x00"
COMPONENT_DOMAIN = b"medledger/component/v1\x00"
TREE_HEAD_DOMAIN = b"medledger/tree-head/v1\x00"
MAX_FIELD = 64 * 1024
MAX_COMPONENTS = 256
KINDS = (
    "calibration", "repair", "preventive-maintenance", "inspection", "alarm", "firmware-update",
    "status-change", "device-registered", "device-decommissioned", "certificate-issued",
    "certificate-revoked", "maintenance-due", "review", "approval", "erasure",
)
ERASURE_PREFIX = "erasure:"


def erasure_target(event_id):
    """(seq, component name) an erasure's event id names (section 10), or None."""
    if event_id is None or not event_id.startswith(ERASURE_PREFIX):
        return None
    seq, sep, name = event_id[len(ERASURE_PREFIX):].partition(":")
    if not sep or not name or not seq.isdigit() or not seq.isascii():
        return None
    if len(seq) > 1 and seq.startswith("0"):
        return None
    return int(seq), name
CLASSES = ("device", "maintenance", "patient", "financial")


class Invalid(Exception):
    """The document does not verify; the message says where and why."""


def sha256(b):
    return hashlib.sha256(b).digest()


def leaf_hash(entry_bytes):
    return sha256(b"\x00" + entry_bytes)


def node_hash(left, right):
    return sha256(b"\x01" + left + right)


def _split(n):
    """Largest power of two strictly smaller than n (n >= 2)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(leaves, lo=0, hi=None):
    """RFC 9162 section 2.1.1 Merkle Tree Hash of the leaf hashes leaves[lo:hi]."""
    if hi is None:
        hi = len(leaves)
    n = hi - lo
    if n == 0:
        return sha256(b"")
    if n == 1:
        return leaves[lo]
    k = _split(n)
    return node_hash(mth(leaves, lo, lo + k), mth(leaves, lo + k, hi))


def verify_inclusion(leaf, index, size, proof, root):
    """RFC 9162 section 2.1.3.2."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(first, second, proof, first_root, second_root):
    """RFC 9162 section 2.1.4.2 (used by the self-test; exports and receipts need no consistency)."""
    if first == 0 or first > second:
        return False
    if first == second:
        return not proof and first_root == second_root
    path = list(proof)
    if first & (first - 1) == 0:
        path.insert(0, first_root)
    if not path:
        return False
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == first_root and sr == second_root


def commitment(salt, name, cls, value):
    m = bytearray(COMPONENT_DOMAIN + salt)
    for part in (name, cls, value):
        b = part.encode("utf-8")
        m += len(b).to_bytes(4, "big") + b
    return sha256(bytes(m))


class Reader:
    def __init__(self, buf):
        self.buf, self.pos = buf, 0

    def take(self, n):
        if self.pos + n > len(self.buf):
            raise Invalid("entry bytes end early at offset %d" % self.pos)
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def u8(self):
        return self.take(1)[0]

    def u32(self):
        return int.from_bytes(self.take(4), "big")

    def u64(self):
        return int.from_bytes(self.take(8), "big")

    def i64(self):
        return int.from_bytes(self.take(8), "big", signed=True)

    def string(self):
        at = self.pos
        n = self.u32()
        if n > MAX_FIELD:
            raise Invalid("field at offset %d is longer than allowed" % at)
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError:
            raise Invalid("field at offset %d is not valid UTF-8" % at) from None

    def tag(self):
        at = self.pos
        t = self.u8()
        if t not in (0, 1):
            raise Invalid("bad option tag %d at offset %d" % (t, at))
        return t == 1


def decode_entry(buf):
    """Parses entry bytes (docs/ledger-format.md, "Entry") into a dict."""
    r = Reader(buf)
    version = r.u8()
    if version not in (ENTRY_VERSION, ENTRY_VERSION_2):
        raise Invalid("unknown entry version %d" % version)
    e = {"version": version, "seq": r.u64()}
    e["recorded_at_ms"] = r.i64()
    e["node_id"] = r.u64()
    e["author"] = r.string()
    e["kind"] = r.string()
    if e["kind"] not in KINDS:
        raise Invalid("unknown event kind %r" % e["kind"])
    e["device_id"] = r.string()
    e["occurred_at"] = r.string() if r.tag() else None
    e["corrects"] = r.u64() if r.tag() else None
    e["event_id"] = r.string() if r.tag() else None
    n = r.u32()
    if n > MAX_COMPONENTS:
        raise Invalid("field at offset %d is longer than allowed" % (r.pos - 4))
    comps = []
    for _ in range(n):
        name = r.string()
        cls = r.string()
        if cls not in CLASSES:
            raise Invalid("unknown disclosure class %r" % cls)
        comps.append({"name": name, "class": cls, "commitment": r.take(32)})
    e["components"] = comps
    e["signature"] = r.take(64) if version == ENTRY_VERSION else None
    if r.pos != len(buf):
        raise Invalid("%d trailing bytes after the entry" % (len(buf) - r.pos))
    return e


# ---- strict JSON: no duplicate keys, no NaN/Infinity, no unknown fields, exact types ----

def _no_duplicates(pairs):
    obj = {}
    for k, v in pairs:
        if k in obj:
            raise Invalid("duplicate field %r" % k)
        obj[k] = v
    return obj


def _no_constants(name):
    raise Invalid("%s is not valid JSON" % name)


def parse_json(text):
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except ValueError as e:
        raise Invalid("not JSON: %s" % e) from None


def fields(obj, what, names):
    if not isinstance(obj, dict):
        raise Invalid("%s is not a JSON object" % what)
    for k in obj:
        if k not in names:
            raise Invalid("%s: unknown field %r" % (what, k))
    for k in names:
        if k not in obj:
            raise Invalid("%s: missing field %r" % (what, k))
    return [obj[k] for k in names]


def uint(v, what, bits=64):
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 2**bits:
        raise Invalid("%s is not an unsigned %d-bit integer" % (what, bits))
    return v


def sint64(v, what):
    if not isinstance(v, int) or isinstance(v, bool) or not -2**63 <= v < 2**63:
        raise Invalid("%s is not a signed 64-bit integer" % what)
    return v


def lowhex(v, what, nbytes=None):
    if not isinstance(v, str) or len(v) % 2 or any(c not in "0123456789abcdef" for c in v):
        raise Invalid("%s is not lowercase hex" % what)
    if nbytes is not None and len(v) != 2 * nbytes:
        raise Invalid("%s is not %d hex digits" % (what, 2 * nbytes))
    return bytes.fromhex(v)


def parse_keys(value, trusted):
    if not isinstance(value, list):
        raise Invalid("node_keys is not a list")
    keys = {}
    for i, k in enumerate(value):
        node_id, pk = fields(k, "node_keys[%d]" % i, ("node_id", "public_key"))
        node_id = uint(node_id, "node_keys[%d].node_id" % i)
        pk = lowhex(pk, "node_keys[%d].public_key" % i, 32)
        if not valid_public_key(pk):
            raise Invalid("public key of node %d is not a valid key" % node_id)
        if node_id in keys:
            raise Invalid("node %d has two keys" % node_id)
        if trusted and (node_id, pk) not in trusted:
            raise Invalid("key of node %d is not one of the trusted keys" % node_id)
        keys[node_id] = pk
    return keys


def parse_head(value):
    size, root, time_ms, node_id, sig = fields(
        value, "tree_head", ("size", "root", "time_ms", "node_id", "signature"))
    return {
        "size": uint(size, "tree_head.size"),
        "root": lowhex(root, "tree_head.root", 32),
        "time_ms": sint64(time_ms, "tree_head.time_ms"),
        "node_id": uint(node_id, "tree_head.node_id"),
        "signature": lowhex(sig, "tree_head.signature", 64),
    }


def check_head(head, keys, opts, what="tree head"):
    pk = keys.get(head["node_id"])
    if pk is None:
        raise Invalid("%s signed by node %d, whose key is not in the document"
                      % (what, head["node_id"]))
    msg = (TREE_HEAD_DOMAIN + head["size"].to_bytes(8, "big") + head["root"]
           + head["time_ms"].to_bytes(8, "big", signed=True) + head["node_id"].to_bytes(8, "big"))
    if not opts["skip_signatures"] and not ed25519_verify(pk, msg, head["signature"]):
        raise Invalid("%s signature does not verify" % what)


def parse_voters(value, what):
    if not isinstance(value, list):
        raise Invalid("%s is not a list" % what)
    voters = [uint(v, what) for v in value]
    if any(a >= b for a, b in zip(voters, voters[1:])):
        raise Invalid("%s %s is not in ascending order" % (what, voters))
    return voters


def _nodes(ids):
    if not ids:
        return "no node"
    return ("node %d" if len(ids) == 1 else "nodes %s") % (
        ids[0] if len(ids) == 1 else ", ".join(map(str, ids)))


def describe_signers(voters, signers):
    signed = [v for v in voters if v in signers]
    missing = [v for v in voters if v not in signers]
    return "signed by %d of its %d voters (%s): %s signed it, %s did not" % (
        len(signed), len(voters), _nodes(voters), _nodes(signed), _nodes(missing))


def check_cosignatures(head, value, voters, keys, opts, what_head="tree head"):
    """Section 9.6: co-signatures of the tree head and the quorum (a majority of its voter set
    when it carries one, and --quorum); returns the nodes that signed it."""
    if not isinstance(value, list):
        raise Invalid("cosignatures is not a list")
    signers = [head["node_id"]]
    for i, v in enumerate(value):
        c = parse_head(v)
        what = "co-signature of node %d" % c["node_id"]
        if c["size"] != head["size"] or c["root"] != head["root"]:
            raise Invalid("%s is over another tree than the %s's" % (what, what_head))
        if c["node_id"] in signers:
            raise Invalid("node %d signs the %s twice" % (c["node_id"], what_head))
        check_head(c, keys, opts, what)
        signers.append(c["node_id"])
    quorum = opts.get("quorum", 0)
    if not voters:
        if value:
            raise Invalid("the %s carries co-signatures but no voter set: a verifier cannot know "
                          "the quorum they were meant to meet" % what_head)
        if len(signers) < quorum:
            raise Invalid("the %s of %d entries is signed by node(s) %s only, fewer than "
                          "the %d gateways the quorum requires"
                          % (what_head, head["size"], ", ".join(map(str, signers)), quorum))
        return signers
    majority = len(voters) // 2 + 1
    need = max(majority, quorum)
    if len([v for v in voters if v in signers]) < need:
        raise Invalid("the %s of %d entries is %s: %s" % (
            what_head, head["size"], describe_signers(voters, signers),
            "fewer than a majority (%d)" % majority if need == majority
            else "fewer than the %d gateways the quorum requires" % quorum))
    return signers


def endorsement_of(entry, openings):
    """The site's endorsement of a ledger key that a `certificate-issued` entry records
    (section 9.5), with its values disclosed: (node, key hex, certificate, issuer), or None."""
    if entry["kind"] != "certificate-issued":
        return None
    values = {}
    for c, o in zip(entry["components"], openings):
        if isinstance(o, dict) and isinstance(o.get("value"), str):
            try:
                v = json.loads(o["value"])
            except ValueError:
                continue
            if isinstance(v, str):
                values[c["name"]] = v
    if values.get("profile") != "ledger-key":
        return None
    try:
        node = int(values["node_id"])
        return node, values["public_key"], values["certificate"], values["issuer_certificate"]
    except (KeyError, ValueError):
        return None


def check_record(value, expected_seq, keys, opts, disclosed_classes=None, claims=None):
    """Checks one entry record; returns (leaf hash, entry, disclosed count, withheld count).
    Each opening marked as erased is appended to `claims` as (seq, component, erasure seq)."""
    seq, entry_hex, openings = fields(value, "entry line", ("seq", "entry", "openings"))
    seq = uint(seq, "seq")
    if expected_seq is None:
        expected_seq = seq
    if seq != expected_seq:
        raise Invalid("line carries sequence number %d" % seq)
    raw = lowhex(entry_hex, "entry bytes")
    entry = decode_entry(raw)
    if entry["seq"] != expected_seq:
        raise Invalid("entry bytes carry sequence number %d" % entry["seq"])
    # A version 2 entry has no signature of its own: the signed tree head whose root covers its
    # leaf hash authenticates it (checked by the caller).
    if entry["version"] == ENTRY_VERSION:
        pk = keys.get(entry["node_id"])
        if pk is None:
            raise Invalid("signed by node %d, whose key is not in the document"
                          % entry["node_id"])
        # The signed message: domain separator, then the body, which lies between the 9-byte
        # prefix (version, seq) and the 64-byte signature.
        msg = ENTRY_DOMAIN + raw[9:len(raw) - 64]
        if not opts["skip_signatures"] and not ed25519_verify(pk, msg, entry["signature"]):
            raise Invalid("entry signature does not verify")
    if entry["corrects"] is not None and entry["corrects"] >= expected_seq:
        raise Invalid("corrects entry %d, which is not earlier" % entry["corrects"])
    if not isinstance(openings, list):
        raise Invalid("openings is not a list")
    if len(openings) != len(entry["components"]):
        raise Invalid("%d openings for %d components"
                      % (len(openings), len(entry["components"])))
    if entry["kind"] == "erasure":
        target = erasure_target(entry["event_id"])
        if target is None or target[0] >= expected_seq:
            raise Invalid("erasure entry does not name an earlier entry and component in its "
                          "event id")
    disclosed = withheld = 0
    for i, (o, c) in enumerate(zip(openings, entry["components"])):
        if o is None:
            if disclosed_classes is not None and c["class"] in disclosed_classes:
                raise Invalid("component %r of class %s has no value although the export "
                              "discloses that class, and it is not marked as erased: a value "
                              "stripped without an erasure entry" % (c["name"], c["class"]))
            withheld += 1
            continue
        if isinstance(o, dict) and "erased_by" in o:
            (by,) = fields(o, "openings[%d]" % i, ("erased_by",))
            by = uint(by, "openings[%d].erased_by" % i)
            if by <= expected_seq:
                raise Invalid("component %r is marked as erased by entry %d, which is not later"
                              % (c["name"], by))
            if claims is not None:
                claims.append((expected_seq, c["name"], by))
            continue
        value_text, salt = fields(o, "openings[%d]" % i, ("value", "salt"))
        if not isinstance(value_text, str):
            raise Invalid("openings[%d].value is not a string" % i)
        salt = lowhex(salt, "openings[%d].salt" % i, 32)
        if disclosed_classes is not None and c["class"] not in disclosed_classes:
            raise Invalid("component %r of class %s is opened, but the export does not disclose "
                          "that class" % (c["name"], c["class"]))
        if commitment(salt, c["name"], c["class"], value_text) != c["commitment"]:
            raise Invalid("value of component %r does not match its commitment" % c["name"])
        disclosed += 1
    return leaf_hash(raw), entry, disclosed, withheld


def _where(seq=None, line=None):
    if seq is not None:
        return "entry %d: " % seq
    if line is not None:
        return "line %d: " % line
    return ""


# ---- section 9.4: against a head seen before (rollback and fork) ----

def read_known(data):
    """The head a reader saw before, from the bytes of FILE: a signed tree head as `GET /v1/head`
    serves it, an export (its last line) or a receipt (its tree head), with the voter set and
    co-signatures it came with. Its signature is checked later, with the document's keys."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid("not UTF-8") from None
    first = text.split("\n", 1)[0]
    if is_export_header(first):
        last = [line for line in text.split("\n") if line.strip()][-1]
        try:
            tail = parse_json(last)
            cosignatures = tail.pop("cosignatures", []) if isinstance(tail, dict) else []
            voters = parse_voters(tail.pop("voters", []) if isinstance(tail, dict) else [],
                                  "voters")
            (value,) = fields(tail, "tree head line", ("tree_head",))
            return parse_head(value), voters, cosignatures
        except Invalid as e:
            raise Invalid("the export's last line: %s" % e) from None
    doc = parse_json(text)
    if isinstance(doc, dict) and "tree_head" not in doc:
        try:
            return parse_head(doc), [], []
        except Invalid as e:
            raise Invalid("neither a signed tree head, an export nor a receipt: %s" % e) from None
    if not isinstance(doc, dict) or doc.get("format") != RECEIPT_FORMAT:
        raise Invalid("neither a signed tree head, an export nor a receipt")
    for k in doc:
        if k not in RECEIPT_FIELDS:
            raise Invalid("receipt: unknown field %r" % k)
    voters = parse_voters(doc.get("voters", []), "voters")
    return parse_head(doc["tree_head"]), voters, doc.get("cosignatures", [])


def check_known_head(keys, opts):
    """The known head's signature, and its co-signatures and the majority of its voter set when
    it came with them, with the document's keys (section 9.4)."""
    known = opts.get("known")
    if known is None:
        return
    head, voters, cosignatures = known
    check_head(head, keys, opts, "known head")
    check_cosignatures(head, cosignatures, voters, keys, dict(opts, quorum=0), "known head")


def _rollback(doc, head, known):
    return Invalid("rollback: the %s's tree head has %d entries, older than the known head of %d "
                   "entries" % (doc, head["size"], known["size"]))


def relate_export(known, head, leaves):
    """An export carries every leaf: its tree extends the known head's exactly when the root of
    its first known-size leaves is the known root."""
    if head["size"] < known["size"]:
        raise _rollback("export", head, known)
    prefix = mth(leaves, 0, known["size"])
    if prefix != known["root"]:
        raise Invalid("fork: the export's first %d entries have root %s, the known head of %d "
                      "entries has root %s"
                      % (known["size"], prefix.hex(), known["size"], known["root"].hex()))
    return {"known": known, "newer_by": head["size"] - known["size"]}


def relate_receipt(known, head, consistency):
    """A receipt carries one leaf: its head extends the known head when it is the same head, or
    when its consistency proof from the known size verifies between the two roots."""
    if head["size"] < known["size"]:
        raise _rollback("receipt", head, known)
    check = {"known": known, "newer_by": head["size"] - known["size"]}
    if head["size"] == known["size"]:
        if head["root"] != known["root"]:
            raise Invalid("fork: the receipt's tree head and the known head both have %d entries "
                          "but different roots (%s and %s)"
                          % (head["size"], head["root"].hex(), known["root"].hex()))
        return check
    if known["size"] == 0:
        return check  # every tree extends the empty one
    if consistency is None:
        raise Invalid("the receipt's tree head (%d entries) is newer than the known head (%d "
                      "entries) and the receipt carries no consistency proof from it (make it "
                      "with `medledger ledger receipt --since-size %d`)"
                      % (head["size"], known["size"], known["size"]))
    from_size, proof = consistency
    if from_size != known["size"]:
        raise Invalid("the receipt's consistency proof starts at size %d, the known head has %d "
                      "entries" % (from_size, known["size"]))
    if not verify_consistency(known["size"], head["size"], proof, known["root"], head["root"]):
        raise Invalid("fork: the receipt's tree head (%d entries) is not consistent with the "
                      "known head (%d entries): consistency proof does not verify"
                      % (head["size"], known["size"]))
    return check


def is_export_header(first):
    """Section 8: a first line naming an export format is an export's header."""
    try:
        v = json.loads(first)
    except ValueError:
        return '"medledger-export/' in first
    return isinstance(v, dict) and isinstance(v.get("format"), str) \
        and v["format"].startswith("medledger-export/")


def verify_export(lines, opts):
    try:
        header = parse_json(lines[0])
        fmt, size, node_keys, classes = fields(
            header, "export header", ("format", "size", "node_keys", "disclosed_classes"))
        size = uint(size, "size")
        if not isinstance(classes, list) or any(c not in CLASSES for c in classes):
            raise Invalid("disclosed_classes must be a list of known classes")
        keys = parse_keys(node_keys, opts["trusted"])
    except Invalid as e:
        raise Invalid("line 1: %s" % e) from None
    check_known_head(keys, opts)
    leaves = []
    disclosed = withheld = 0
    claims = []
    erasures = set()
    # Section 9.5: the endorsements the export records, {node: [(origin, key hex, cert, issuer)]}.
    found = {}
    for seq in range(size):
        lineno = seq + 2
        if lineno > len(lines):
            raise Invalid("entry %d: export ends after %d of %d entries" % (seq, seq, size))
        try:
            record = parse_json(lines[lineno - 1])
            leaf, entry, d, w = check_record(record, seq, keys, opts, set(classes), claims)
        except Invalid as e:
            raise Invalid("entry %d: %s" % (seq, e)) from None
        endorsement = endorsement_of(entry, record["openings"])
        if endorsement is not None:
            found.setdefault(endorsement[0], []).append(("entry %d" % seq,) + endorsement[1:])
        if entry["kind"] == "erasure":
            target = erasure_target(entry["event_id"])
            erasures.add((seq, target[0], target[1]))
        leaves.append(leaf)
        disclosed += d
        withheld += w
    lineno = size + 2
    if lineno > len(lines):
        raise Invalid("line %d: the tree head line is missing" % lineno)
    try:
        tail = parse_json(lines[lineno - 1])
        # Optional (section 9.6): the voter set and co-signatures of the checkpoint the export
        # is cut at.
        cosignatures = tail.pop("cosignatures", []) if isinstance(tail, dict) else []
        voters = parse_voters(tail.pop("voters", []) if isinstance(tail, dict) else [], "voters")
        (value,) = fields(tail, "tree head line", ("tree_head",))
        head = parse_head(value)
    except Invalid as e:
        raise Invalid("line %d: %s" % (lineno, e)) from None
    if len(lines) > lineno:
        raise Invalid("line %d: data after the tree head" % (lineno + 1))
    if head["size"] != size:
        raise Invalid("line %d: tree head is for %d entries, the export has %d"
                      % (lineno, head["size"], size))
    if mth(leaves) != head["root"]:
        raise Invalid("line %d: root of the entries does not match the signed tree head" % lineno)
    check_head(head, keys, opts)
    try:
        signers = check_cosignatures(head, cosignatures, voters, keys, opts)
    except Invalid as e:
        raise Invalid("line %d: %s" % (lineno, e)) from None
    # Section 10: every erasure marker points at the erasure entry of its entry and component.
    for seq, name, by in claims:
        if (by, seq, name) not in erasures:
            raise Invalid("entry %d: component %r is marked as erased by entry %d, but entry %d "
                          "is not an erasure of entry %d's component %r"
                          % (seq, name, by, by, seq, name))
    known = None
    if opts.get("known") is not None:
        known = relate_export(opts["known"][0], head, leaves)
    endorsed = None
    if opts.get("site_root") is not None:
        endorsed = check_site_root(keys, found, head["time_ms"], opts["site_root"],
                                   "in the file (no ledger-key certificate-issued entry with its "
                                   "values disclosed)")
    return {"document": "export", "head": head, "keys": keys, "entries": size,
            "disclosed": disclosed, "withheld": withheld, "erased": len(claims),
            "signers": signers, "voters": voters, "endorsed": endorsed, "known": known}


def verify_receipt(text, opts):
    doc = parse_json(text)
    # Optional (section 8): a consistency proof from an older tree size, for a reader who checks
    # the receipt against a head seen before; its structure is checked here.
    consistency = doc.pop("consistency", None) if isinstance(doc, dict) else None
    # Optional (sections 9.5, 9.6): the voter set and co-signatures of the tree head, and the
    # site's endorsements of the keys (X.509, checked against the site root with --site-root).
    cosignatures = doc.pop("cosignatures", []) if isinstance(doc, dict) else []
    voters = parse_voters(doc.pop("voters", []) if isinstance(doc, dict) else [], "voters")
    endorsements = doc.pop("endorsements", []) if isinstance(doc, dict) else []
    if not isinstance(endorsements, list):
        raise Invalid("endorsements is not a list")
    found = {}
    for i, e in enumerate(endorsements):
        node_id, cert, issuer = fields(e, "endorsements[%d]" % i,
                                       ("node_id", "certificate", "issuer_certificate"))
        node_id = uint(node_id, "endorsements[%d].node_id" % i)
        if not isinstance(cert, str) or not isinstance(issuer, str):
            raise Invalid("endorsements[%d]: certificates are PEM text" % i)
        found.setdefault(node_id, []).append(("the receipt", None, cert, issuer))
    fmt, node_keys, record, proof, head = fields(
        doc, "receipt",
        ("format", "node_keys", "entry", "inclusion_proof", "tree_head"))
    if fmt != RECEIPT_FORMAT:
        raise Invalid("unknown format %r" % (fmt,))
    keys = parse_keys(node_keys, opts["trusted"])
    check_known_head(keys, opts)
    head = parse_head(head)
    try:
        erased = []
        leaf, entry, d, w = check_record(record, None, keys, opts, None, erased)
    except Invalid as e:
        seq = record.get("seq") if isinstance(record, dict) else None
        raise Invalid(_where(seq if isinstance(seq, int) else None) + str(e)) from None
    if not isinstance(proof, list):
        raise Invalid("inclusion_proof is not a list")
    proof = [lowhex(h, "inclusion_proof[%d]" % i, 32) for i, h in enumerate(proof)]
    if not verify_inclusion(leaf, entry["seq"], head["size"], proof, head["root"]):
        raise Invalid("entry %d: inclusion proof does not lead to the signed root" % entry["seq"])
    check_head(head, keys, opts)
    signers = check_cosignatures(head, cosignatures, voters, keys, opts)
    if consistency is not None:
        from_size, cproof = fields(consistency, "consistency", ("from_size", "proof"))
        from_size = uint(from_size, "consistency.from_size")
        if not 0 < from_size <= head["size"]:
            raise Invalid("consistency proof from size %d to a tree head of %d entries"
                          % (from_size, head["size"]))
        if not isinstance(cproof, list):
            raise Invalid("consistency.proof is not a list")
        consistency = (from_size, [lowhex(h, "consistency.proof[%d]" % i, 32)
                                    for i, h in enumerate(cproof)])
    known = None
    if opts.get("known") is not None:
        known = relate_receipt(opts["known"][0], head, consistency)
    endorsed = None
    if opts.get("site_root") is not None:
        endorsed = check_site_root(keys, found, head["time_ms"], opts["site_root"],
                                   "in the receipt (it carries none for that node)")
    return {"document": "receipt", "head": head, "keys": keys, "entries": 1,
            "disclosed": d, "withheld": w, "erased": len(erased), "entry": entry,
            "signers": signers, "voters": voters, "endorsed": endorsed, "known": known}


def verify(data, opts):
    """Verifies an export or a receipt given as bytes; returns a report or raises Invalid."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid("the document is not UTF-8") from None
    # Lines end with "\n"; the last one may lack it. A trailing empty line is data after the end.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    first = None
    try:
        first = json.loads(lines[0]) if lines else None
    except ValueError:
        pass
    if isinstance(first, dict) and first.get("format") == EXPORT_FORMAT:
        return verify_export(lines, opts)
    return verify_receipt(text, opts)


# ---------------------------------------------------------------------------------------------
# Keys endorsed by the site (docs/ledger-format.md section 9.5): X.509 certificates in DER, and
# ECDSA P-256 with SHA-256 (FIPS 186-4; the site root and issuing CAs' keys) in pure Python.
# ---------------------------------------------------------------------------------------------

P256_P = 2**256 - 2**224 + 2**192 + 2**96 - 1
P256_A = P256_P - 3
P256_B = 0x5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604b
P256_N = 0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551
P256_G = (0x6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296,
          0x4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5)

OID_ECDSA_SHA256 = "1.2.840.10045.4.3.2"
OID_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
OID_P256 = "1.2.840.10045.3.1.7"
OID_ED25519 = "1.3.101.112"
OID_CN = "2.5.4.3"
OID_BASIC_CONSTRAINTS = "2.5.29.19"
OID_SAN = "2.5.29.17"


def _p256_add(p1, p2):
    """Affine addition on P-256; None is the point at infinity."""
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    (x1, y1), (x2, y2) = p1, p2
    if x1 == x2:
        if (y1 + y2) % P256_P == 0:
            return None
        lam = (3 * x1 * x1 + P256_A) * pow(2 * y1, P256_P - 2, P256_P) % P256_P
    else:
        lam = (y2 - y1) * pow(x2 - x1, P256_P - 2, P256_P) % P256_P
    x3 = (lam * lam - x1 - x2) % P256_P
    return (x3, (lam * (x1 - x3) - y1) % P256_P)


def _p256_mul(k, pt):
    out = None
    while k:
        if k & 1:
            out = _p256_add(out, pt)
        pt = _p256_add(pt, pt)
        k >>= 1
    return out


def ecdsa_p256_verify(point_bytes, msg, sig_der):
    """ECDSA over P-256 with SHA-256: `point_bytes` the uncompressed public point (0x04 || X ||
    Y), `sig_der` the DER SEQUENCE of r and s that X.509 carries."""
    if len(point_bytes) != 65 or point_bytes[0] != 4:
        return False
    x = int.from_bytes(point_bytes[1:33], "big")
    y = int.from_bytes(point_bytes[33:], "big")
    if x >= P256_P or y >= P256_P or (y * y - x * x * x - P256_A * x - P256_B) % P256_P:
        return False
    try:
        tag, body, end = der_read(sig_der, 0)
        if tag != 0x30 or end != len(sig_der):
            return False
        r, s = (der_uint(v) for v in der_children(sig_der, body, end, (0x02, 0x02)))
    except Invalid:
        return False
    if not (0 < r < P256_N and 0 < s < P256_N):
        return False
    e = int.from_bytes(hashlib.sha256(msg).digest(), "big")
    w = pow(s, P256_N - 2, P256_N)
    pt = _p256_add(_p256_mul(e * w % P256_N, P256_G), _p256_mul(r * w % P256_N, (x, y)))
    return pt is not None and pt[0] % P256_N == r


def der_read(buf, pos):
    """One DER element at `pos`: (tag, start of its contents, end of its contents)."""
    if pos + 2 > len(buf):
        raise Invalid("truncated DER")
    tag, n = buf[pos], buf[pos + 1]
    pos += 2
    if n & 0x80:
        k = n & 0x7f
        if k == 0 or k > 4 or pos + k > len(buf):
            raise Invalid("bad DER length")
        n = int.from_bytes(buf[pos:pos + k], "big")
        pos += k
    if pos + n > len(buf):
        raise Invalid("truncated DER")
    return tag, pos, pos + n


def der_children(buf, start, end, tags=None):
    """The contents of the elements between `start` and `end`, as (tag, start, end, element
    start); with `tags`, exactly those tags in that order."""
    out = []
    pos = start
    while pos < end:
        tag, s, e = der_read(buf, pos)
        out.append((tag, s, e, pos))
        pos = e
    if pos != end:
        raise Invalid("DER element runs past its parent")
    if tags is not None:
        if [c[0] for c in out] != list(tags):
            raise Invalid("unexpected DER structure")
        return [buf[c[1]:c[2]] for c in out]
    return out


def der_uint(b):
    if not b or b[0] & 0x80:
        raise Invalid("not a positive DER integer")
    return int.from_bytes(b, "big")


def der_oid(b):
    if not b:
        raise Invalid("empty OID")
    parts, n = [], 0
    for byte in b:
        n = (n << 7) | (byte & 0x7f)
        if not byte & 0x80:
            parts.append(n)
            n = 0
    first = min(parts[0] // 40, 2)
    return ".".join(map(str, [first, parts[0] - 40 * first] + parts[1:]))


def der_time(tag, b):
    """UTCTime or GeneralizedTime (`...Z`) as Unix seconds."""
    text = b.decode("ascii")
    if tag == 0x17:
        year = int(text[:2])
        text = ("19" if year >= 50 else "20") + text
    elif tag != 0x18:
        raise Invalid("not a time")
    if not text.endswith("Z") or len(text) != 15:
        raise Invalid("unexpected time %r" % text)
    return calendar.timegm(tuple(int(text[i:j]) for i, j in
                                 ((0, 4), (4, 6), (6, 8), (8, 10), (10, 12), (12, 14))))


def parse_certificate(der):
    """The parts of an X.509 certificate that section 9.5 checks."""
    tag, s, e = der_read(der, 0)
    if tag != 0x30 or e != len(der):
        raise Invalid("not a DER certificate")
    (tbs_tag, tbs_s, tbs_e, tbs_at), (_, alg_s, alg_e, _), (sig_tag, sig_s, sig_e, _) = \
        der_children(der, s, e)
    if tbs_tag != 0x30 or sig_tag != 0x03 or der[sig_s] != 0:
        raise Invalid("not a DER certificate")
    alg = der_children(der, alg_s, alg_e)
    if not alg or alg[0][0] != 0x06:
        raise Invalid("bad signature algorithm")
    cert = {"tbs": der[tbs_at:tbs_e], "signature": der[sig_s + 1:sig_e],
            "signature_algorithm": der_oid(der[alg[0][1]:alg[0][2]])}
    fields_ = der_children(der, tbs_s, tbs_e)
    if fields_ and fields_[0][0] == 0xa0:
        fields_ = fields_[1:]  # version
    if len(fields_) < 6:
        raise Invalid("truncated tbsCertificate")
    _serial, _alg, _issuer, validity, subject, spki = fields_[:6]
    (t1, a1, b1, _), (t2, a2, b2, _) = der_children(der, validity[1], validity[2])
    cert["not_before"], cert["not_after"] = der_time(t1, der[a1:b1]), der_time(t2, der[a2:b2])
    cert["subject_cn"] = None
    for rdn in der_children(der, subject[1], subject[2]):
        for atv in der_children(der, rdn[1], rdn[2]):
            (ot, os_, oe, _), (_, vs, ve, _) = der_children(der, atv[1], atv[2])
            if ot == 0x06 and der_oid(der[os_:oe]) == OID_CN:
                cert["subject_cn"] = der[vs:ve].decode("utf-8")
    (alg_tag, ks, ke, _), (bit_tag, bs, be, _) = der_children(der, spki[1], spki[2])
    if alg_tag != 0x30 or bit_tag != 0x03 or der[bs] != 0:
        raise Invalid("bad subject public key")
    alg = der_children(der, ks, ke)
    cert["key_algorithm"] = der_oid(der[alg[0][1]:alg[0][2]])
    cert["key_curve"] = der_oid(der[alg[1][1]:alg[1][2]]) if len(alg) > 1 and alg[1][0] == 0x06 \
        else None
    cert["public_key"] = der[bs + 1:be]
    cert["is_ca"] = False
    cert["uris"] = []
    for f in fields_[6:]:
        if f[0] != 0xa3:
            continue
        (_, xs, xe, _), = der_children(der, f[1], f[2])
        for ext in der_children(der, xs, xe):
            parts = der_children(der, ext[1], ext[2])
            oid = der_oid(der[parts[0][1]:parts[0][2]])
            value = parts[-1]
            if value[0] != 0x04:
                raise Invalid("bad extension")
            inner_tag, ins, ine = der_read(der, value[1])
            if oid == OID_BASIC_CONSTRAINTS:
                items = der_children(der, ins, ine)
                cert["is_ca"] = bool(items) and items[0][0] == 0x01 and der[items[0][1]] != 0
            elif oid == OID_SAN:
                cert["uris"] = [der[gs:ge].decode("ascii")
                                for gt, gs, ge, _ in der_children(der, ins, ine) if gt == 0x86]
    return cert


def pem_certificates(text, what):
    """The DER certificates of a PEM text."""
    out = []
    for block in text.split("-----BEGIN CERTIFICATE-----")[1:]:
        body, sep, _ = block.partition("-----END CERTIFICATE-----")
        if not sep:
            raise Invalid("%s: unterminated PEM certificate" % what)
        try:
            out.append(base64.b64decode("".join(body.split()), validate=True))
        except ValueError:
            raise Invalid("%s: PEM that is not base64" % what) from None
    return out


def signed_by(cert, issuer):
    return (cert["signature_algorithm"] == OID_ECDSA_SHA256
            and issuer["key_algorithm"] == OID_EC_PUBLIC_KEY and issuer["key_curve"] == OID_P256
            and ecdsa_p256_verify(issuer["public_key"], cert["tbs"], cert["signature"]))


def check_endorsement(root, issuer_pem, cert_pem, node_id, key, at):
    """Section 9.5: `cert_pem` endorses `key` as node `node_id`'s ledger key under `root`,
    through node `node_id`'s own issuing CA `issuer_pem`, at Unix second `at`. Returns None, or
    what did not hold."""
    try:
        certs_ = []
        for text, what in ((issuer_pem, "the issuing CA certificate"),
                           (cert_pem, "the endorsement")):
            ders = pem_certificates(text, what)
            if len(ders) != 1:
                return "%s: expected one certificate, found %d" % (what, len(ders))
            certs_.append(parse_certificate(ders[0]))
        issuer, cert = certs_
    except (Invalid, ValueError, IndexError, UnicodeDecodeError) as e:
        return "unreadable certificate: %s" % e
    if not issuer["is_ca"]:
        return "the endorsement's issuer is not a CA certificate"
    if not signed_by(issuer, root):
        return "the issuing CA %r is not signed by the site root" % issuer["subject_cn"]
    want_cn = "MedLedger issuing CA %d" % node_id
    if issuer["subject_cn"] != want_cn:
        return ("the endorsement's issuer %r is not node %d's issuing CA (%r): a gateway's CA "
                "endorses its own node's key only" % (issuer["subject_cn"], node_id, want_cn))
    if not signed_by(cert, issuer):
        return "the endorsement is not signed by %r" % issuer["subject_cn"]
    if cert["key_algorithm"] != OID_ED25519 or cert["public_key"] != key:
        return "the endorsement certifies another key than node %d's %s" % (node_id, key.hex())
    if "urn:medledger:ledger-key:node:%d" % node_id not in cert["uris"]:
        return "the endorsement does not name node %d" % node_id
    for c, what in ((issuer, "the issuing CA"), (cert, "the endorsement")):
        if not c["not_before"] <= at <= c["not_after"]:
            return "%s was not valid at the tree head's time" % what
    return None


def check_site_root(keys, found, time_ms, root_der, nowhere):
    """Every key of `keys` has an endorsement in `found` ({node: [(origin, key or None, cert,
    issuer)]}) that holds under the root; returns the nodes, or raises Invalid naming one."""
    root = parse_certificate(root_der)
    at = time_ms // 1000
    for node_id, key in sorted(keys.items()):
        short = key.hex()[:16]
        candidates = [f for f in found.get(node_id, []) if f[1] is None or f[1] == key.hex()]
        if not candidates:
            raise Invalid("node %d's key %s... has no endorsement %s: the site did not endorse it"
                          % (node_id, short, nowhere))
        why = []
        for origin, _, cert, issuer in candidates:
            problem = check_endorsement(root, issuer, cert, node_id, key, at)
            if problem is None:
                break
            why.append("%s: %s" % (origin, problem))
        else:
            raise Invalid("node %d's key %s... is not endorsed by the site root: %s"
                          % (node_id, short, "; ".join(why)))
    return sorted(keys)


# ---------------------------------------------------------------------------------------------
# Self-test: RFC 8032 vectors and the test vectors of docs/ledger-format.md.
# ---------------------------------------------------------------------------------------------

def self_test():
    h = bytes.fromhex
    # RFC 8032 section 7.1, TEST 1 and TEST 2.
    assert ed25519_verify(
        h("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"), b"",
        h("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e397"
          "01cf9b46bd25bf5f0595bbe24655141438e7a100b"))
    pk2 = h("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
    sig2 = h("92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3"
             "613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00")
    assert ed25519_verify(pk2, b"\x72", sig2)
    assert not ed25519_verify(pk2, b"\x73", sig2)
    assert not ed25519_verify(pk2, b"\x72", sig2[:32] + (int.from_bytes(sig2[32:], "little") + L)
                              .to_bytes(32, "little"))
    # docs/ledger-format.md, "Test vectors".
    pk = h("ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c")
    salt = bytes([9]) * 32
    entries = [h(x) for x in (
        "0100000000000000000000019b8d2b8c0000000000000000010000000c6c6f63616c3a696d706f72740000000b"
        "63616c6962726174696f6e0000001f28303129303038383438333830333532343928323129504d50393835363137"
        "0100000014323032362d30312d30345431343a33303a30305a000100000007574f2d3230303100000002000000"
        "06726573756c740000000b6d61696e74656e616e6365158b6191a5298eef070abd1b93ddc02f11203994ee91f9"
        "61269af69bc880957c00000004636f73740000000966696e616e6369616c5ed366ca4172b1efb42819d946867e"
        "19455f4460c22c7730ccadbe3a6426b851a8619a0bd7e8a8f2d04d659521513ec44c29d70469739a68158b1992"
        "5a37e585a2843bb6d423d1dd533f2b8e9ebf2eddcaa4a3c8abc283403df944079550570d",
        "0100000000000000010000019b8d301fe000000000000000010000000c6c6f63616c3a696d706f727400000005"
        "616c61726d0000001f28303129303038383438333830333532343928323129504d503938353631370100000014"
        "323032362d30312d30355430373a35383a30305a00000000000200000005616c61726d0000000b6d61696e7465"
        "6e616e636561bf5b8fa090453c654b5a2324e383b86e9da828631a6b14792406e2a14475fa0000000b70617469"
        "656e745f6d726e0000000770617469656e748261a0a04264b66d6e12b07a28c24628d9a1cfc41e71c225573487"
        "5fee8f8bbf9d52ce63dc07524543f82cd81ae0f66d513ec350c374189f93e52b53f4b02ed713bc1d7e072ad257"
        "6199395e63e29e6a991576f0d543c38e579ce92740b6db0f",
        "0100000000000000020000019b8d34b3c000000000000000010000000c6c6f63616c3a696d706f72740000000b"
        "63616c6962726174696f6e0000001f28303129303038383438333830333532343928323129504d503938353631"
        "3700010000000000000000010000000a574f2d323030312d43310000000100000006726573756c740000000b6d"
        "61696e74656e616e6365fc63301df08fb4e2d08227c56f9d2caa3e017483cb724c43926fb4c5cb1a6aff89427d"
        "c66ef40c4bbb956670fa63a52c1c6ab39cc751c0f6a97d6bdf37328669804a204753d7257c250ded1e3113c31a"
        "e9052ae5c20fe8a6bcac3934365cbf0a",
    )]
    values = [['"pass"', '{"amount":90,"currency":"EUR"}'],
              ['"occlusion downstream"', '"MRN0000001"'], ['"fail"']]
    leaves = []
    for seq, raw in enumerate(entries):
        e = decode_entry(raw)
        assert e["seq"] == seq and e["node_id"] == 1 and e["author"] == "local:import"
        assert ed25519_verify(pk, ENTRY_DOMAIN + raw[9:-64], e["signature"])
        for c, v in zip(e["components"], values[seq]):
            assert commitment(salt, c["name"], c["class"], v) == c["commitment"]
        leaves.append(leaf_hash(raw))
    assert decode_entry(entries[2])["corrects"] == 0
    assert [x.hex() for x in leaves] == [
        "cbfd5d1b4d1a92a15d3fc7a337acb37c8c1001ded83bd618309d186ce8a0e093",
        "dac40b24becb2026185d98e2a69c0b57b03e276f44c2b4f11441d348ded875ab",
        "0e7e0d42944de1004bb0c4203d66a3276bb1e2d27ab97d0700265ae05a5bffb9"]
    root = mth(leaves)
    assert root.hex() == "248b538d56d6f777306b382bae3077932e10031fc7f04afe3d3ee4d334630662"
    assert mth([]).hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert verify_inclusion(leaves[0], 0, 3, [leaves[1], leaves[2]], root)
    assert verify_inclusion(leaves[2], 2, 3, [node_hash(leaves[0], leaves[1])], root)
    assert not verify_inclusion(leaves[1], 0, 3, [leaves[1], leaves[2]], root)
    assert verify_consistency(1, 3, [leaves[1], leaves[2]], leaves[0], root)
    assert verify_consistency(2, 3, [leaves[2]], node_hash(leaves[0], leaves[1]), root)
    assert not verify_consistency(2, 3, [leaves[1]], node_hash(leaves[0], leaves[1]), root)
    head = parse_head(parse_json(
        '{"size":3,"root":"248b538d56d6f777306b382bae3077932e10031fc7f04afe3d3ee4d334630662",'
        '"time_ms":1767603600000,"node_id":1,"signature":"71e76716c194fb51ac7b541bf4f538d5f9d58b1c'
        'a607c53eed460058b90ff2634858246dce4523bd2853cd071e885bf0f3a0fd707925c103687a9120d79f8108"}'))
    check_head(head, {1: pk}, {"skip_signatures": False})
    # Section 11.6: the same entries as version 2 (no signature: byte 0 is 2, the last 64 go).
    v2 = [bytes([2]) + raw[1:-64] for raw in entries]
    leaves2 = []
    for seq, raw in enumerate(v2):
        e = decode_entry(raw)
        assert e["version"] == 2 and e["seq"] == seq and e["signature"] is None
        leaves2.append(leaf_hash(raw))
    assert leaves2[0].hex() == "5064dc82138c6e45cb62fea417bfb3e0bae188c421d468de7bc2b9cd1ead4f5b"
    root2 = mth(leaves2)
    assert root2.hex() == "fec54fc93d1dbd786e511db339d984b5740a4bb3a7865f44ee9bb82c2079aadc"
    head2 = parse_head(parse_json('{"size":3,"root":"fec54fc93d1dbd786e511db339d984b5740a4bb3a7865f44ee9bb82c2079aadc","time_ms":1767603600000,"node_id":1,"signature":"e97245a17ef0c01dc42faa44047bfed04427353f9d258bbd75e5f919758cc643784349a7d04b1bd650006623ba07bb2e865ec9d3d085603bf3ce78f28aed3509"}'))
    check_head(head2, {1: pk}, {"skip_signatures": False})
    for bad in (bytes([2]) + entries[0][1:], bytes([1]) + v2[0][1:]):
        try:
            decode_entry(bad)
            raise AssertionError("a changed version byte decoded")
        except Invalid:
            pass
    # ECDSA P-256 / SHA-256 (the site's CA keys): a signature OpenSSL made over "medledger".
    point = h("040352ce81cb897d08faef21ccf71c69160adb6fd2be56541c579e567afade19b88413d87450b4e315"
              "34b548693370880ef91d3eff1a1555f811b5c0c0f63f6024")
    sig = h("304402207a9b503c4f105cbdf83381692c38dbf0147c2d398c332381994db099e0ad2ac102202d721d61"
            "b6fd4bf16f3904751b295a60f678f9a8f658ac25efa121509d183294")
    assert ecdsa_p256_verify(point, b"medledger", sig)
    assert not ecdsa_p256_verify(point, b"medledgeR", sig)
    print("self-test passed: RFC 8032 vectors, an ECDSA P-256 vector and the vectors of "
          "docs/ledger-format.md")


def main(argv):
    opts = {"skip_signatures": False, "trusted": set(), "quorum": 0, "site_root": None,
            "known": None}
    path = None
    args = list(argv[1:])
    while args:
        a = args.pop(0)
        if a == "--self-test":
            self_test()
            return 0
        if a == "--skip-signatures":
            opts["skip_signatures"] = True
        elif a == "--quorum" and args:
            try:
                opts["quorum"] = int(args.pop(0))
            except ValueError:
                print("--quorum: expected a number of gateways", file=sys.stderr)
                return 2
        elif a == "--site-root" and args:
            root_path = args.pop(0)
            try:
                with open(root_path, encoding="utf-8") as f:
                    roots = pem_certificates(f.read(), root_path)
                if len(roots) != 1:
                    raise Invalid("expected one certificate (the site root), found %d"
                                  % len(roots))
                parse_certificate(roots[0])
            except (OSError, UnicodeDecodeError, Invalid, ValueError, IndexError) as e:
                print("--site-root %s: %s" % (root_path, e), file=sys.stderr)
                return 2
            opts["site_root"] = roots[0]
        elif a == "--known-head" and args:
            known_path = args.pop(0)
            try:
                with open(known_path, "rb") as f:
                    opts["known"] = read_known(f.read())
            except OSError as e:
                print("cannot read %s: %s" % (known_path, e), file=sys.stderr)
                return 2
            except Invalid as e:
                print("known head %s: %s" % (known_path, e), file=sys.stderr)
                return 2
        elif a == "--trusted-key" and args:
            spec = args.pop(0)
            node, _, key = spec.partition("=")
            try:
                kb = lowhex(key.strip(), "--trusted-key", 32)
                opts["trusted"].add((int(node), kb))
            except (ValueError, Invalid):
                print("--trusted-key: expected NODE_ID=64 lowercase hex digits, got %r" % spec,
                      file=sys.stderr)
                return 2
        elif a.startswith("-") or path is not None:
            print(__doc__.split("\n\n")[2], file=sys.stderr)
            return 2
        else:
            path = a
    if path is None:
        print(__doc__.split("\n\n")[2], file=sys.stderr)
        return 2
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        print("cannot read %s: %s" % (path, e), file=sys.stderr)
        return 2
    try:
        report = verify(data, opts)
    except Invalid as e:
        print("invalid: %s" % e, file=sys.stderr)
        return 1
    head = report["head"]
    print("valid %s: %d entr%s checked, tree size %d, root %s, signed by node %d at %d ms"
          % (report["document"], report["entries"], "y" if report["entries"] == 1 else "ies",
             head["size"], head["root"].hex(), head["node_id"], head["time_ms"]))
    print("components: %d disclosed and matching their commitments, %d withheld (commitment only), "
          "%d erased" % (report["disclosed"], report["withheld"], report["erased"]))
    if report["voters"]:
        print("tree head %s" % describe_signers(report["voters"], report["signers"]))
    elif len(report["signers"]) > 1:
        print("tree head signed by %d gateways: nodes %s"
              % (len(report["signers"]), ", ".join(map(str, report["signers"]))))
    if report["endorsed"] is not None:
        print("verified against the site root: the keys of node %s are endorsed by the site"
              % ", ".join(map(str, report["endorsed"])))
    for node_id, pk in sorted(report["keys"].items()):
        print("node %d public key %s" % (node_id, pk.hex()))
    if report["known"] is not None:
        k = report["known"]["known"]
        newer_by = report["known"]["newer_by"]
        print("consistent with the known head of %d entries (root %s, signed by node %d at %d ms): "
              "%s" % (k["size"], k["root"].hex(), k["node_id"], k["time_ms"],
                      "the same tree" if newer_by == 0
                      else "this tree extends it by %d entries" % newer_by))
    if opts["skip_signatures"]:
        print("WARNING: signatures were NOT checked (--skip-signatures): nothing ties this "
              "document to a node's key")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
