#!/usr/bin/env python3
"""MAD-FA's seed stability over a set of validation models (issue 26).

    scripts/madfa-validation.py RESULTS_DIR [--plot FILE.svg] [--tuned NAME,NAME]
                                [--pools DIR]

RESULTS_DIR holds one folder per model and setting, named MODEL-SETTING (for example
`wanet-default`, `wanet-reference`), each with the seed-K.json files of
`scripts/madfa-seeds.sh` (the `vigil sample --json` output). Prints a Markdown table with, per
model and setting, the CLC AUROC's mean, sample sd and range over seeds, the other scores' means,
the draws per run, the mean seconds per run, and the mean split-run reliability of CLC that
`vigil sample` printed (on the test inputs and on the trusted samples, both label-free). Writes
validation.json beside the folders.

With --plot it draws, per model and setting, the seed sd of the CLC AUROC against one minus the
mean split-run reliability on the test inputs (the unreliable share of the scores' variance), and
prints the Spearman rank correlation between the two over the rows: does the figure a user sees
after one run say how much a second seed would move the AUROC?

--pools DIR adds, to the plot and the correlation, the emulated designs of
`scripts/madfa-pool.py` (every DIR/MODEL-designs.json): each design's sd over independent
replicates against its mean split-run reliability, one colour per model.

--tuned names the models that took part in choosing the defaults; the table marks them, so the
held-out rows can be read separately.
"""
import argparse
import json
import math
import pathlib

SCORES = ["clc", "class_ccc", "mean_corr", "mean_ccc"]


def sd(values):
    n = len(values)
    if n < 2:
        return float("nan")
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def reliability(record, where):
    stability = record.get("stability") or {}
    value = (stability.get(where) or {}).get("clc") or {}
    return value.get("full")


def draws_per_run(record):
    chain = record["settings"]["chain"]
    return chain["draws"] * len(record["settings"]["chains"])


def summarize(folder):
    runs = sorted(folder.glob("seed-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    records = [json.loads(p.read_text()) for p in runs]
    if not records:
        return None
    model, _, setting = folder.name.rpartition("-")
    clc = [r["auroc"]["clc"] for r in records]
    test_rel = [x for x in (reliability(r, "test") for r in records) if x is not None]
    trusted_rel = [x for x in (reliability(r, "trusted") for r in records) if x is not None]
    return {
        "model": model,
        "setting": setting,
        "seeds": [r["settings"]["chain"]["seed"] for r in records],
        "clc": clc,
        "clc_mean": sum(clc) / len(clc),
        "clc_sd": sd(clc),
        "means": {s: sum(r["auroc"][s] for r in records) / len(records) for s in SCORES},
        "draws": [draws_per_run(r) for r in records],
        "seconds": sum(r["seconds"] for r in records) / len(records),
        "reliability_test": test_rel,
        "reliability_trusted": trusted_rel,
        "reliability_test_mean": sum(test_rel) / len(test_rel) if test_rel else None,
        "reliability_trusted_mean": sum(trusted_rel) / len(trusted_rel) if trusted_rel else None,
    }


def spearman(x, y):
    from scipy.stats import spearmanr

    if len(x) < 3:
        return float("nan"), float("nan")
    result = spearmanr(x, y)
    return result.statistic, result.pvalue


def pool_points(folder):
    """(model, design, 1 - test reliability, sd) of every multi-chain design of every pool."""
    points = []
    for path in sorted(pathlib.Path(folder).glob("*-designs.json")):
        model = path.name[: -len("-designs.json")]
        for row in json.loads(path.read_text())["rows"]:
            if row.get("reliability_test") is None or math.isnan(row["clc_sd"]):
                continue
            points.append((model, row["design"], 1 - row["reliability_test"], row["clc_sd"]))
    return points


def plot(rows, path, pools=()):
    import matplotlib

    matplotlib.use("svg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    markers = {"default": "o", "reference": "s"}
    for row in rows:
        if row["reliability_test_mean"] is None or math.isnan(row["clc_sd"]):
            continue
        x = 1 - row["reliability_test_mean"]
        ax.scatter(x, row["clc_sd"], marker=markers.get(row["setting"], "^"),
                   color="tab:blue" if row["setting"] == "default" else "tab:orange")
        ax.annotate(row["model"], (x, row["clc_sd"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    models = sorted({p[0] for p in pools})
    colours = plt.get_cmap("tab10")
    for i, model in enumerate(models):
        xs = [p[2] for p in pools if p[0] == model]
        ys = [p[3] for p in pools if p[0] == model]
        ax.scatter(xs, ys, marker=".", color=colours(i % 10), alpha=0.7,
                   label=f"{model}: emulated designs")
    ax.axhline(0.01, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("1 - split-run reliability of CLC on the test inputs (mean over seeds)")
    ax.set_ylabel("sd of CLC AUROC over seeds")
    ax.set_title("Does vigil sample's stability figure predict the seed spread?")
    for setting, marker in markers.items():
        ax.scatter([], [], marker=marker,
                   color="tab:blue" if setting == "default" else "tab:orange", label=setting)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results")
    parser.add_argument("--plot")
    parser.add_argument("--tuned", default="")
    parser.add_argument("--pools")
    args = parser.parse_args()
    tuned = {t for t in args.tuned.split(",") if t}
    root = pathlib.Path(args.results)
    rows = [s for s in (summarize(f) for f in sorted(root.iterdir()) if f.is_dir()) if s]
    print("| model | setting | seeds | CLC mean ± sd | CLC range | Class CCC | Mean Corr | "
          "draws per run | s / run | split-run reliability, test / trusted |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        name = r["model"] + (" (tuned on)" if r["model"] in tuned else "")
        rel = lambda v: "n/a" if v is None else f"{v:.3f}"
        print(f"| {name} | {r['setting']} | {len(r['seeds'])} | {r['clc_mean']:.4f} ± "
              f"{r['clc_sd']:.4f} | {min(r['clc']):.3f}-{max(r['clc']):.3f} | "
              f"{r['means']['class_ccc']:.4f} | {r['means']['mean_corr']:.4f} | "
              f"{min(r['draws'])}-{max(r['draws'])} | {r['seconds']:.0f} | "
              f"{rel(r['reliability_test_mean'])} / {rel(r['reliability_trusted_mean'])} |")
    usable = [r for r in rows
              if r["reliability_test_mean"] is not None and not math.isnan(r["clc_sd"])]
    pools = pool_points(args.pools) if args.pools else []
    rho, p = spearman([1 - r["reliability_test_mean"] for r in usable] + [q[2] for q in pools],
                      [r["clc_sd"] for r in usable] + [q[3] for q in pools])
    rho_t, p_t = spearman([1 - r["reliability_trusted_mean"] for r in usable
                           if r["reliability_trusted_mean"] is not None],
                          [r["clc_sd"] for r in usable
                           if r["reliability_trusted_mean"] is not None])
    print(f"\nSpearman rho between 1 - reliability and the seed sd of CLC over {len(usable)} "
          f"seed rows and {len(pools)} emulated designs: test inputs {rho:.3f} (p {p:.3g}); "
          f"trusted samples, seed rows only: {rho_t:.3f} (p {p_t:.3g})")
    (root / "validation.json").write_text(json.dumps(
        {"rows": rows, "pool_points": pools, "spearman_test": [rho, p],
         "spearman_trusted": [rho_t, p_t]},
        indent=2) + "\n")
    if args.plot:
        plot(rows, args.plot, pools)


if __name__ == "__main__":
    main()
