#!/usr/bin/env python3
"""Writes a ShareGPT-shaped file (a JSON array of {"id", "conversations": [{"from", "value"}]})
of about SIZE_MB megabytes, deterministic for a seed, for start-up and memory benchmarks.

usage: scripts/make-sharegpt.py OUT.json SIZE_MB [SEED]
"""
import json
import random
import sys

WORDS = ("the model serves tokens quickly while queue waits for prefill and decode latency "
         "throughput request response server client trace span metric time first token cache "
         "memory batch river stone light garden window music paper number city market winter "
         "summer history science answer question story water forest engine signal bridge").split()


def text(rng, words):
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def main():
    out, size_mb = sys.argv[1], float(sys.argv[2])
    rng = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 0)
    limit = int(size_mb * 1e6)
    written = 0
    with open(out, "w") as f:
        f.write("[\n")
        n = 0
        while written < limit:
            turns = []
            for i in range(rng.choice([2, 2, 4, 6])):
                turns.append({"from": "human" if i % 2 == 0 else "gpt",
                              "value": text(rng, rng.randint(8, 120) if i % 2 == 0 else rng.randint(20, 300))})
            line = json.dumps({"id": f"gen{n:08d}", "conversations": turns})
            f.write(("," if n else "") + line + "\n")
            written += len(line) + 2
            n += 1
        f.write("]\n")
    print(f"{out}: {n} conversations, {written / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
