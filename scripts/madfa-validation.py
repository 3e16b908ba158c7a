#!/usr/bin/env python3
"""MAD-FA's seed stability over a set of validation models (issue 26).

    scripts/madfa-validation.py RESULTS_DIR [--score NAME] [--plot FILE.svg]
                                [--tuned NAME,NAME] [--pools DIR]

RESULTS_DIR holds one folder per model and setting, named MODEL-SETTING (for example
`wanet-default`, `wanet-reference`), each with the seed-K.json files of
`scripts/madfa-seeds.sh` (the `vigil sample --json` output). Prints a Markdown table with, per
model and setting, the chosen score's AUROC mean, sample sd and range over seeds (--score, default
clc_plus_class_ccc, vigil's recommended score; `clc` for the reference's), CLC's and the other
scores' means, the draws per run, the mean seconds per run, and the mean split-run reliability of
the chosen score that `vigil sample` printed (on the test inputs and on the trusted samples, both
label-free). Folders whose runs lack the score (runs before it existed) are listed and skipped.
Writes validation-SCORE.json beside the folders.

With --plot it draws, per model and setting, the seed sd of the score's AUROC against one minus the
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

SCORES = ["clc", "class_ccc", "mean_corr", "mean_ccc", "clc_plus_class_ccc"]


def sd(values):
    n = len(values)
    if n < 2:
        return float("nan")
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def reliability(record, where, score):
    stability = record.get("stability") or {}
    value = (stability.get(where) or {}).get(score) or {}
    return value.get("full")


def draws_per_run(record):
    chain = record["settings"]["chain"]
    return chain["draws"] * len(record["settings"]["chains"])


def summarize(folder, score):
    runs = sorted(folder.glob("seed-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    records = [json.loads(p.read_text()) for p in runs]
    if not records:
        return None
    if not all(score in r["auroc"] for r in records):
        print(f"{folder.name}: skipped, its runs do not all have the score {score}")
        return None
    model, _, setting = folder.name.rpartition("-")
    values = [r["auroc"][score] for r in records]
    test_rel = [x for x in (reliability(r, "test", score) for r in records) if x is not None]
    trusted_rel = [x for x in (reliability(r, "trusted", score) for r in records)
                   if x is not None]
    return {
        "model": model,
        "setting": setting,
        "score": score,
        "seeds": [r["settings"]["chain"]["seed"] for r in records],
        "auroc": values,
        "auroc_mean": sum(values) / len(values),
        "auroc_sd": sd(values),
        "means": {s: sum(r["auroc"][s] for r in records) / len(records) for s in SCORES
                  if all(s in r["auroc"] for r in records)},
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
            # madfa-pool.py names the column clc_sd whichever score it emulates.
            points.append((model, row["design"], 1 - row["reliability_test"], row["clc_sd"]))
    return points


def plot(rows, path, score, pools=()):
    import matplotlib

    matplotlib.use("svg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    markers = {"default": "o", "reference": "s"}
    for row in rows:
        if row["reliability_test_mean"] is None or math.isnan(row["auroc_sd"]):
            continue
        x = 1 - row["reliability_test_mean"]
        ax.scatter(x, row["auroc_sd"], marker=markers.get(row["setting"], "^"),
                   color="tab:blue" if row["setting"] == "default" else "tab:orange")
        ax.annotate(row["model"], (x, row["auroc_sd"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    models = sorted({p[0] for p in pools})
    colours = plt.get_cmap("tab10")
    for i, model in enumerate(models):
        xs = [p[2] for p in pools if p[0] == model]
        ys = [p[3] for p in pools if p[0] == model]
        ax.scatter(xs, ys, marker=".", color=colours(i % 10), alpha=0.7,
                   label=f"{model}: emulated designs")
    ax.axhline(0.01, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"1 - split-run reliability of {score} on the test inputs (mean over seeds)")
    ax.set_ylabel(f"sd of {score} AUROC over seeds")
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
    parser.add_argument("--score", default="clc_plus_class_ccc")
    parser.add_argument("--plot")
    parser.add_argument("--tuned", default="")
    parser.add_argument("--pools")
    args = parser.parse_args()
    tuned = {t for t in args.tuned.split(",") if t}
    root = pathlib.Path(args.results)
    score = args.score
    rows = [s for s in (summarize(f, score) for f in sorted(root.iterdir()) if f.is_dir()) if s]
    print(f"| model | setting | seeds | {score} mean ± sd | range | CLC | Class CCC | Mean Corr | "
          "draws per run | s / run | split-run reliability, test / trusted |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        name = r["model"] + (" (tuned on)" if r["model"] in tuned else "")
        rel = lambda v: "n/a" if v is None else f"{v:.3f}"
        print(f"| {name} | {r['setting']} | {len(r['seeds'])} | {r['auroc_mean']:.4f} ± "
              f"{r['auroc_sd']:.4f} | {min(r['auroc']):.3f}-{max(r['auroc']):.3f} | "
              f"{r['means']['clc']:.4f} | {r['means']['class_ccc']:.4f} | {r['means']['mean_corr']:.4f} | "
              f"{min(r['draws'])}-{max(r['draws'])} | {r['seconds']:.0f} | "
              f"{rel(r['reliability_test_mean'])} / {rel(r['reliability_trusted_mean'])} |")
    usable = [r for r in rows
              if r["reliability_test_mean"] is not None and not math.isnan(r["auroc_sd"])]
    pools = pool_points(args.pools) if args.pools else []
    rho, p = spearman([1 - r["reliability_test_mean"] for r in usable] + [q[2] for q in pools],
                      [r["auroc_sd"] for r in usable] + [q[3] for q in pools])
    rho_t, p_t = spearman([1 - r["reliability_trusted_mean"] for r in usable
                           if r["reliability_trusted_mean"] is not None],
                          [r["auroc_sd"] for r in usable
                           if r["reliability_trusted_mean"] is not None])
    print(f"\nSpearman rho between 1 - reliability and the seed sd of {score} over {len(usable)} "
          f"seed rows and {len(pools)} emulated designs: test inputs {rho:.3f} (p {p:.3g}); "
          f"trusted samples, seed rows only: {rho_t:.3f} (p {p_t:.3g})")
    (root / f"validation-{score}.json").write_text(json.dumps(
        {"rows": rows, "pool_points": pools, "spearman_test": [rho, p],
         "spearman_trusted": [rho_t, p_t]},
        indent=2) + "\n")
    if args.plot:
        plot(rows, args.plot, score, pools)


if __name__ == "__main__":
    main()
