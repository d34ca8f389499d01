"""`python -m bench NAME [options]`: run one benchmark; its options are its own (--help)."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "ingest": "the ingest rate beside the broker and COPY ceilings and Node-RED",
    "rules": "the rule engine over a simulated fleet (10 000 and 100 000 devices)",
    "api": "the HTTP API's latency and throughput",
    "simulators": "the simulators' publishing rate",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in BENCHMARKS:
        print("usage: python -m bench NAME [options]   (NAME --help lists its options)\n")
        for name, what in BENCHMARKS.items():
            print(f"  {name:<11} {what}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(f"bench.{argv[0]}")
    sys.argv = [f"python -m bench {argv[0]}", *argv[1:]]
    code = module.main(argv[1:])
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
