#!/usr/bin/env python3
"""Writes N preventive-maintenance events as JSON Lines, the shape docs/benchmarks.md measures:
4 components (two maintenance, one device, one patient), ~494 bytes a line.

    python3 docs/examples/gen_events.py 1000000 events-1m.jsonl
"""
import json
import sys

n, out = int(sys.argv[1]), sys.argv[2]
with open(out, "w") as f:
    for i in range(n):
        f.write(json.dumps({
            "event_id": f"WO-{i}",
            "kind": "preventive-maintenance",
            "device_id": f"(01)00884838035249(21)PMP{i % 200:06}",
            "occurred_at": "2024-11-18T14:00:00Z",
            "components": [
                {"name": "procedure", "class": "maintenance",
                 "value": "IEC 62353 electrical safety + flow check"},
                {"name": "technician", "class": "maintenance",
                 "value": f"biomed:a.okafor (clinical eng.) #{i % 97}"},
                {"name": "location", "class": "device",
                 "value": f"ICU-2 bed {i % 12}, building C, level 2"},
                {"name": "patient_mrn", "class": "patient",
                 "value": f"MRN{i:07} / encounter 2024-11"},
            ],
        }, separators=(",", ":")) + "\n")
