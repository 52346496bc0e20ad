#!/usr/bin/env python3
"""CycloneDX 1.5 SBOM (JSON, on stdout) of the `medledger` binary, from `cargo metadata` and
Cargo.lock: every crate compiled into it (normal dependencies of medledger-gateway for this
machine's target, proc-macros included; dev- and build-only dependencies left out), with its
version, licence, crates.io checksum and the dependency graph. A few seconds of Python instead
of installing cargo-cyclonedx.

    systemd/sbom.py [--version V] [--deb PATH]

--deb names the package the SBOM describes (its SHA-256 goes into the metadata).
Set SOURCE_DATE_EPOCH for a reproducible timestamp.
"""

import argparse
import datetime
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import tomllib
import uuid

ROOT = pathlib.Path(__file__).resolve().parent.parent
BINARY_CRATE = "medledger-gateway"
CRATES_IO = "registry+https://github.com/rust-lang/crates.io-index"


def cargo(*args):
    exe = os.environ.get("CARGO", "cargo")
    return subprocess.run([exe, *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def host_triple():
    exe = os.environ.get("RUSTC", "rustc")
    out = subprocess.run([exe, "-vV"], check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("host: "):
            return line.split(" ", 1)[1].strip()
    sys.exit("sbom: rustc -vV printed no host triple")


def purl(pkg):
    return f"pkg:cargo/{pkg['name']}@{pkg['version']}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--version", help="the package version (default: the crate's)")
    ap.add_argument("--deb", help="the .deb this SBOM describes")
    args = ap.parse_args()

    meta = json.loads(
        cargo(
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--filter-platform",
            host_triple(),
            "--manifest-path",
            str(ROOT / "Cargo.toml"),
        )
    )
    with open(ROOT / "Cargo.lock", "rb") as f:
        lock = tomllib.load(f)
    checksums = {
        (p["name"], p["version"]): p["checksum"] for p in lock.get("package", []) if "checksum" in p
    }
    packages = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    root_id = next(
        (i for i in meta["workspace_members"] if packages[i]["name"] == BINARY_CRATE), None
    )
    if root_id is None:
        sys.exit(f"sbom: no workspace member named {BINARY_CRATE}")

    # What is linked into the binary: follow normal dependencies only.
    seen, todo, edges = set(), [root_id], {}
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        deps = []
        for d in nodes[pid]["deps"]:
            if any(k["kind"] is None for k in d["dep_kinds"]):
                deps.append(d["pkg"])
                todo.append(d["pkg"])
        edges[pid] = sorted(set(deps))

    def ref(pid):
        return purl(packages[pid])

    components = []
    for pid in sorted(seen - {root_id}, key=lambda i: (packages[i]["name"], packages[i]["version"])):
        p = packages[pid]
        c = {"type": "library", "bom-ref": ref(pid), "name": p["name"], "version": p["version"]}
        if p.get("description"):
            c["description"] = " ".join(p["description"].split())
        if p.get("license"):
            c["licenses"] = [{"expression": p["license"]}]
        elif p.get("license_file"):
            c["licenses"] = [{"license": {"name": "see " + os.path.basename(p["license_file"])}}]
        if p.get("source") == CRATES_IO:
            c["purl"] = ref(pid)
            sha = checksums.get((p["name"], p["version"]))
            if sha:
                c["hashes"] = [{"alg": "SHA-256", "content": sha}]
        else:
            # A workspace crate or a vendored, patched copy (ledger-node/vendor/openraft): not the
            # crates.io package of that name, so no purl that would claim it is.
            rel = os.path.relpath(os.path.dirname(p["manifest_path"]), ROOT)
            c["properties"] = [{"name": "medledger:source-path", "value": rel}]
        if p.get("repository"):
            c["externalReferences"] = [{"type": "vcs", "url": p["repository"]}]
        components.append(c)

    root = packages[root_id]
    version = args.version or root["version"]
    main_component = {
        "type": "application",
        "bom-ref": ref(root_id),
        "name": "medledger",
        "version": version,
        "description": "MedLedger gateway binary /usr/bin/medledger",
        "licenses": [{"expression": root.get("license") or "NOASSERTION"}],
    }
    seed = version
    if args.deb:
        digest = hashlib.sha256(pathlib.Path(args.deb).read_bytes()).hexdigest()
        main_component["hashes"] = [{"alg": "SHA-256", "content": digest}]
        main_component["properties"] = [
            {"name": "medledger:package", "value": os.path.basename(args.deb)}
        ]
        seed = digest
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (
        datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc)
        if epoch
        else datetime.datetime.now(datetime.timezone.utc)
    )
    bom = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        # Derived from the package's hash: the same package always gets the same serial number.
        "serialNumber": "urn:uuid:" + str(uuid.uuid5(uuid.NAMESPACE_URL, "medledger-sbom:" + seed)),
        "version": 1,
        "metadata": {
            "timestamp": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tools": {"components": [{"type": "application", "name": "medledger systemd/sbom.py"}]},
            "component": main_component,
        },
        "components": components,
        "dependencies": [
            {"ref": ref(pid), "dependsOn": [ref(d) for d in edges[pid]]} for pid in sorted(edges)
        ],
    }
    json.dump(bom, sys.stdout, indent=1, sort_keys=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
