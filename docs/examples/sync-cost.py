#!/usr/bin/env python3
"""What one flush of the store costs the disk, before and after sled was patched
(ledger-node/vendor/sled/PATCHED.md): 4 KiB appends to a file, each followed by
sync_file_range(WAIT_BEFORE|WRITE|WAIT_AFTER) and fdatasync (stock sled's log write, then the
store's own fdatasync) or by fdatasync alone (the patched sled's log write), interleaved so that
both meet the same disk at the same moments.

    python3 docs/examples/sync-cost.py DIR N
"""
import ctypes, os, sys, time, statistics
libc = ctypes.CDLL("libc.so.6", use_errno=True)
libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
d = sys.argv[1]; n = int(sys.argv[2])
res = {"old": [], "new": []}
fds = {k: os.open(os.path.join(d, "sb-" + k), os.O_RDWR | os.O_CREAT | os.O_TRUNC) for k in res}
buf = os.urandom(4096)
off = {k: 0 for k in res}
for i in range(n):
    for k in (("old", "new") if i % 2 == 0 else ("new", "old")):
        fd = fds[k]; t = time.perf_counter()
        os.pwrite(fd, buf, off[k])
        if k == "old":
            if libc.sync_file_range(fd, off[k], 4096, 1 | 2 | 4) != 0:
                raise OSError(ctypes.get_errno(), "sync_file_range")
        os.fdatasync(fd)
        res[k].append((time.perf_counter() - t) * 1000)
        off[k] += 4096
for k, v in res.items():
    v.sort()
    print(f"{k}: n={len(v)} p50={v[len(v)//2]:.3f} ms p99={v[int(len(v)*0.99)]:.3f} ms mean={statistics.mean(v):.3f} ms")
for k in res: os.unlink(os.path.join(d, "sb-" + k))
