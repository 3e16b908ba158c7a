#!/usr/bin/env python3
"""What a MAD-FA run of K chains x d draws would give, emulated from one pool of independent
chains (issue 26: measure AUROC against chains and draws, and the seed spread of each design,
before choosing a default).

    OPENBLAS_NUM_THREADS=1 scripts/madfa-pool.py POOL_RUN_DIR [--json OUT.json] [--permutations 20]

POOL_RUN_DIR is a `vigil sample` output folder of many chains at one setting (for example
`--lr 2e-5 --gamma 1e4 --n-beta 100 --burn-in 100 --thinning 1 --draws 300 --chains 10`: the
calibrated default's settings, with more chains and draws than any default run takes). Chains
of one run are independent (each has its own random stream and burn-in), so a run of K chains
and d draws per chain is emulated by K chains of the pool cut to their first d draws, and
disjoint groups of K chains are independent replicates of that run: their AUROC spread is the
seed spread a user would see. The chain-to-group assignment is drawn --permutations times and
the replicate variances averaged (each permutation's variance is unbiased; averaging lowers its
noise).

For every design it prints the CLC AUROC mean and sd over replicates, the mean split-run
reliability of CLC on the test inputs and on the trusted samples (label-free, as
`vigil sample` prints it), and the cost of one run from the pool run's own timings
(`chains[].step_seconds` and `trace_seconds`: K x (burn-in + d) steps plus K x d trace passes;
calibration not included).

Designs: "K x d" (chains concatenated, vigil's scores), "K x d within" (each chain z-scored on
its own, correlations averaged over chains), and sequential rules "seq K tau": K chains grown 25
draws at a time until the test-input split-run reliability of CLC reaches tau (or the pool's
draws run out).

--log EPS scores log(trace + EPS) instead of the trace (vigil's `--loss log` on a pool recorded
with `--loss precise`: EPS 0; on a pool recorded with the float32 reference loss, a small EPS keeps
its exact zeros finite). --designs "4x150,2x300" keeps only those plain designs.

Scores are computed in numpy, independently of vigil's Rust code; the whole pool's CLC is checked
against the AUROC in the run's --json output when it is given (--run-json).
"""
import argparse
import json
import math
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
variants = __import__("madfa-trace-variants")

from sklearn.metrics import roc_auc_score  # noqa: E402


def clc_auroc(test_chains, trusted_chains, labels, flags, within=False):
    pearson = (variants.pearson_within if within else variants.pearson_concat)(
        test_chains, trusted_chains)
    return roc_auc_score(flags, variants.clc_from_pearson(pearson, labels))


def reliability(test_chains, trusted_chains, labels):
    return variants.split_run_reliability(test_chains, trusted_chains, labels)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pool")
    parser.add_argument("--run-json")
    parser.add_argument("--json")
    parser.add_argument("--permutations", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="only the candidate designs: 2-5 chains of 100-300 draws, 4 x 150 "
                             "within, and the 4-chain sequential rule at 0.95")
    parser.add_argument("--log", type=float, metavar="EPS",
                        help="score log(trace + EPS) (the check against --run-json uses the "
                             "traces as recorded)")
    parser.add_argument("--designs", help='only these "KxD" designs, comma-separated')
    args = parser.parse_args()
    test, trusted, labels, flags = variants.load(pathlib.Path(args.pool))
    only = None
    if args.designs:
        only = {tuple(int(v) for v in d.strip().split("x")) for d in args.designs.split(",")}
    n_chains, n_draws = len(test), test[0].shape[0]
    rng = np.random.default_rng(args.seed)

    if args.run_json:
        run = json.loads(pathlib.Path(args.run_json).read_text())
        whole = clc_auroc(test, trusted, labels, flags)
        if abs(whole - run["auroc"]["clc"]) > 1e-6:
            raise SystemExit(f"numpy CLC {whole} != vigil's {run['auroc']['clc']}")
        chains = run["chains"]
        burn_in = run["settings"]["chain"]["burn_in"]
        steps = burn_in + run["settings"]["chain"]["draws"]
        step_cost = sum(c["step_seconds"] for c in chains) / (len(chains) * steps)
        trace_cost = sum(c["trace_seconds"] for c in chains) / (len(chains) * n_draws)
    else:
        burn_in, step_cost, trace_cost = 100, float("nan"), float("nan")
    if args.log is not None:
        if min(t.min() for t in test + trusted) + args.log <= 0:
            raise SystemExit(f"--log {args.log}: some traces are <= {-args.log}; use a larger EPS")
        test = [np.log(t + args.log) for t in test]
        trusted = [np.log(t + args.log) for t in trusted]

    def cost(k, d):
        return k * ((burn_in + d) * step_cost + d * trace_cost)

    rows = []

    def design(name, k, run_one):
        """run_one(chain indices) -> (auroc, reliability dict, draws per chain)."""
        variances, aurocs, rels, draws = [], [], [], []
        for _ in range(args.permutations):
            groups = variants.disjoint_groups(rng, n_chains, k)
            values = []
            for g in groups:
                a, rel, d = run_one(g)
                values.append(a)
                rels.append(rel)
                draws.append(d)
            aurocs.extend(values)
            if len(values) >= 2:
                variances.append(np.var(values, ddof=1))
        sd = math.sqrt(np.mean(variances)) if variances else float("nan")
        row = {
            "design": name,
            "chains": k,
            "draws_per_chain_mean": float(np.mean(draws)),
            "replicates_per_permutation": n_chains // k,
            "clc_mean": float(np.mean(aurocs)),
            "clc_sd": sd,
            "reliability_test": float(np.mean([r["test"] for r in rels if r])) if any(rels) else None,
            "reliability_trusted": float(np.mean([r["trusted"] for r in rels if r])) if any(rels) else None,
            "seconds": float(np.mean([cost(k, d) for d in draws])),
        }
        rows.append(row)
        rel = (f"{row['reliability_test']:.3f} / {row['reliability_trusted']:.3f}"
               if row["reliability_test"] is not None else "-")
        print(f"| {name} | {k} | {row['draws_per_chain_mean']:.0f} | {row['clc_mean']:.4f} ± "
              f"{sd:.4f} | {rel} | {row['seconds']:.0f} |", flush=True)

    print(f"{args.pool}: {n_chains} chains x {n_draws} draws; per step {step_cost:.3f} s, "
          f"per trace pass {trace_cost:.3f} s")
    print("| design | chains | draws per chain | CLC mean ± sd over replicates | "
          "split-run reliability test / trusted | s / run (no calibration) |")
    print("|---|---|---|---|---|---|")
    for k in (1, 2, 3, 4, 5):
        for d in (50, 100, 150, 200, 300):
            if args.quick and (k == 1 or d == 50):
                continue
            if only is not None and (k, d) not in only:
                continue
            if d > n_draws or k > n_chains // 2 and k != 1:
                continue
            if k * d > 1200:
                continue

            def one(g, d=d):
                te = [test[c][:d] for c in g]
                tr = [trusted[c][:d] for c in g]
                rel = reliability(te, tr, labels) if k >= 2 else None
                return clc_auroc(te, tr, labels, flags), rel, d

            design(f"{k} x {d}", k, one)
    for k, d in ((2, 150), (2, 300), (4, 150)):
        if args.quick and k == 2 or only is not None:
            continue
        if k > n_chains // 2 or d > n_draws:
            continue

        def one_within(g, d=d):
            te = [test[c][:d] for c in g]
            tr = [trusted[c][:d] for c in g]
            return clc_auroc(te, tr, labels, flags, within=True), None, d

        design(f"{k} x {d} within", k, one_within)
    for k in (2, 4):
        for tau in (0.95, 0.97):
            if args.quick and (k == 2 or tau == 0.97) or only is not None:
                continue
            if k > n_chains // 2:
                continue

            def sequential(g, tau=tau):
                d = 50
                while True:
                    te = [test[c][:d] for c in g]
                    tr = [trusted[c][:d] for c in g]
                    rel = reliability(te, tr, labels)
                    if rel["test"] >= tau or d + 25 > n_draws:
                        return clc_auroc(te, tr, labels, flags), rel, d
                    d += 25

            design(f"seq {k} test>={tau}", k, sequential)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(
            {"pool": args.pool, "log_eps": args.log, "chains": n_chains, "draws": n_draws, "step_seconds": step_cost,
             "trace_seconds": trace_cost, "permutations": args.permutations, "rows": rows},
            indent=2) + "\n")


if __name__ == "__main__":
    main()
