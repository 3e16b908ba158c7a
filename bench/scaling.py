#!/usr/bin/env python3
"""How cost grows with work: forward-with-per-sample-loss throughput against batch size and
thread count, vigil and PyTorch in one run, small CNN (or --arch) on 1x28x28 inputs.

For each thread count T and batch size B, runs `vigil throughput --json --threads T --batch B` and
`bench/peer/bench_torch.py --threads T --batch B` with about --images images per timed loop,
and prints one Markdown table of images per second for the forward path (the other two loops'
figures are kept in the JSON lines written with --raw).

Usage: python3 bench/scaling.py [--threads 1,2] [--batches 32,64,128,256,512,1024]
                                [--images 4096] [--arch small-cnn] [--raw FILE]
Run it on an idle machine (check `uptime` first): PyTorch's threads collapse under load.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def last_json(text):
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError(f"no JSON line in output:\n{text[-2000:]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batches", default="32,64,128,256,512,1024")
    ap.add_argument("--images", type=int, default=4096, help="images per timed loop (iters = images / batch, at least 3)")
    ap.add_argument("--arch", default="small-cnn")
    ap.add_argument("--vigil", default=os.path.join(ROOT, "target", "release", "vigil"))
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--raw", help="append one JSON line per measurement to this file")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    batches = [int(b) for b in args.batches.split(",")]

    rows = []
    load = os.getloadavg()
    print(f"# bench/scaling.py {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} "
          f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} arch {args.arch}", flush=True)
    for t in threads:
        for b in batches:
            iters = max(3, args.images // b)
            common = ["--batch", str(b), "--threads", str(t), "--iters", str(iters), "--arch", args.arch]
            v = last_json(subprocess.run([args.vigil, "throughput", "--json", "--warmup", "2", *common],
                                         check=True, capture_output=True, text=True).stdout)
            p = last_json(subprocess.run([args.python, os.path.join(ROOT, "bench", "peer", "bench_torch.py"),
                                          "--warmup", "2", *common],
                                         check=True, capture_output=True, text=True).stdout)
            record = {"threads": t, "batch": b, "iters": iters, "vigil": v, "pytorch": p}
            rows.append(record)
            if args.raw:
                with open(args.raw, "a") as f:
                    f.write(json.dumps(record) + "\n")
            print(f"# threads {t} batch {b}: vigil {v['forward_loss_img_per_s']:.0f} "
                  f"pytorch {p['forward_loss_img_per_s']:.0f} img/s", file=sys.stderr, flush=True)

    print("| threads | batch | vigil img/s | PyTorch img/s | vigil / PyTorch |")
    print("|---|---|---|---|---|")
    for r in rows:
        a, b = r["vigil"]["forward_loss_img_per_s"], r["pytorch"]["forward_loss_img_per_s"]
        print(f"| {r['threads']} | {r['batch']} | {a:,.0f} | {b:,.0f} | {a / b:.2f}x |")


if __name__ == "__main__":
    main()
