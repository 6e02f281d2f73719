"""Print each benchmark group's speed-ups against the reference measured in the same run.

    python benchmarks/ratios.py bench.json
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict


def main(path: str) -> None:
    with open(path) as f:
        report = json.load(f)
    groups: dict[str, list[dict]] = defaultdict(list)
    for b in report["benchmarks"]:
        groups[b["group"]].append(b)
    info = report["machine_info"].get("histofast", {})
    print(f"histofast {info.get('version')} @ {info.get('git_sha', '')[:10]}, {info.get('cores')} cores, "
          f"avx2={info.get('avx2')}, cuda_compiled={info.get('cuda_compiled')}, gpu={info.get('gpu', 'none')}")
    for group, items in groups.items():
        ref = next((b for b in items if b["extra_info"].get("role") == "reference"), None)
        print(f"\n{group}")
        for b in sorted(items, key=lambda b: b["stats"]["median"]):
            median = b["stats"]["median"] * 1e3
            iqr = b["stats"]["iqr"] * 1e3
            ratio = f"{ref['stats']['median'] / b['stats']['median']:7.1f}×" if ref else ""
            print(f"  {b['name']:<55} {median:9.2f} ms  (IQR {iqr:6.2f})  {ratio}  {b['extra_info'].get('role', '')}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench.json")
