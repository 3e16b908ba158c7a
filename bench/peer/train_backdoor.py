#!/usr/bin/env python3
"""Trains a backdoored SmallCnn on Fashion-MNIST in plain PyTorch, independently of vigil, and
exports it the way a user would bring their own model to vigil: a plain state_dict in
safetensors plus image folders (`<root>/<class>/<image>.png`).

    python3 bench/peer/train_backdoor.py --attack {badnets,blended} --seed S --out DIR \
        [--epochs 10] [--rate 0.1] [--target 0] [--threads 1] [--train-limit N]

Data: the gzipped idx files of the Debian package dataset-fashion-mnist
(/usr/share/datasets/fashion-mnist); nothing is downloaded.

Model: SmallCnn of tests/fixtures/torch/reference_models.py (width 32, hidden 128, 1x28x28,
10 classes) with PyTorch's default init under torch.manual_seed(seed).

Poisoning (BackdoorBench's all-to-one settings, written here from its description, not from
vigil's code): round(rate * n_train) training images are drawn without replacement among ALL
training images (numpy Generator seeded with `seed`), so images already of the target class
stay in the draw (BackdoorBench: "in train state, all2one non-clean-label case NO NEED TO AVOID
target class img"); they get the trigger and the label `target` (a no-op label change for those
already of the target class). Triggered images are quantised to 8 bits (round(x*255)/255), in
training as in the exported PNGs and in the attack success rate.
  badnets: a 3x3 white patch (1.0) on the last 3 rows and last 3 columns.
  blended: x' = 0.8 x + 0.2 pattern, pattern = np.random.default_rng(12345).random((28, 28))
           (uniform [0, 1), fixed; a different pattern from the one vigil's own attack uses).

Training: SGD lr 0.01, momentum 0.9, Nesterov, weight decay 5e-4, batch 128 (reshuffled every
epoch, last partial batch kept), cosine annealing of the lr over --epochs (stepped per epoch,
T_max = epochs), mean cross-entropy, inputs normalised as (x - 0.2860) / 0.3530, no augmentation.
A plain state_dict does not record the normalisation: give vigil
`--norm-mean 0.2860 --norm-std 0.3530`.

Output in --out (model.safetensors and results.json written atomically, results.json last):
  model.safetensors  safetensors.torch.save_file(model.state_dict()), no metadata
  results.json       clean accuracy (10k test), attack success rate (triggered, quantised
                     non-target test images), settings, seconds, torch version
  trusted/ sampling/ test/   100 clean test images per class each, disjoint (seeded draws)
  anomalous/         triggered versions of 100 further test images of every non-target class,
                     each in its TRUE class folder
Class folders are named "0".."9" (vigil ties folders named by class numbers to a plain
state_dict's classes "0".."9" by number); files are `<test index, 5 digits>.png`, 8-bit
grayscale, pixel = round(x * 255).
"""

import argparse
import gzip
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "fixtures" / "torch"))
from reference_models import SmallCnn  # noqa: E402

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
NORM_MEAN = 0.2860
NORM_STD = 0.3530
BLEND_ALPHA = 0.2
PATTERN_SEED = 12345
PATCH = 3
PER_CLASS = 100
NUM_CLASSES = 10
BATCH = 128
EVAL_BATCH = 1000


def log(message):
    print(message, file=sys.stderr, flush=True)


def read_idx(path):
    """An idx file (gzipped or not) as a numpy uint8 array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[0:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    values = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if values.size != int(np.prod(shape)):
        raise ValueError(f"{path}: {values.size} values for shape {shape}")
    return values.reshape(shape)


def idx_path(prefix, kind):
    for name in (f"{prefix}-{kind}-ubyte.gz", f"{prefix}-{kind}-ubyte"):
        if (DATA_DIR / name).exists():
            return DATA_DIR / name
    raise FileNotFoundError(
        f"no {prefix}-{kind}-ubyte[.gz] in {DATA_DIR} (apt-get install dataset-fashion-mnist)"
    )


def load_split(prefix):
    """Images as float64 [n, 28, 28] in [0, 1] and labels as int64 [n]."""
    images = read_idx(idx_path(prefix, "images-idx3")).astype(np.float64) / 255.0
    labels = read_idx(idx_path(prefix, "labels-idx1")).astype(np.int64)
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise ValueError(f"{prefix}: images {images.shape}, labels {labels.shape}")
    return images, labels


def quantise(x):
    """What an 8-bit PNG keeps of x in [0, 1]."""
    return np.round(np.clip(x, 0.0, 1.0) * 255.0) / 255.0


def make_trigger(attack):
    """The trigger function on float64 images [n, 28, 28], quantised to 8 bits."""
    if attack == "badnets":
        def trigger(x):
            out = x.copy()
            out[..., -PATCH:, -PATCH:] = 1.0
            return quantise(out)
    else:
        pattern = np.random.default_rng(PATTERN_SEED).random((28, 28))

        def trigger(x):
            return quantise((1.0 - BLEND_ALPHA) * x + BLEND_ALPHA * pattern)
    return trigger


def to_input(images):
    """float64 [n, 28, 28] in [0, 1] -> normalised float32 tensor [n, 1, 28, 28]."""
    x = torch.from_numpy(images.astype(np.float32)).unsqueeze(1)
    return (x - NORM_MEAN) / NORM_STD


@torch.no_grad()
def predict(model, x):
    model.eval()
    out = [model(x[i: i + EVAL_BATCH]).argmax(1) for i in range(0, len(x), EVAL_BATCH)]
    return torch.cat(out).numpy()


def atomic_write_bytes(path, write):
    """Calls write(tmp_path), then renames tmp_path to path."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        # safetensors creates its file 0600; give it the usual mode (0666 less the umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_folder(out, name, images, labels, indices):
    """PNG folder `out/name/<label>/<index:05d>.png`, built under a hidden name and renamed."""
    final = out / name
    tmp = out / f".{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    for image, label, index in zip(images, labels, indices):
        folder = tmp / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{int(index):05d}.png")  # 2-D uint8: mode L
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def test_splits(test_labels, target, seed):
    """Per class, disjoint seeded draws of test indices: trusted, sampling, test (every class)
    and anomalous sources (non-target classes), PER_CLASS each."""
    rng = np.random.default_rng([seed, 1])
    parts = {"trusted": [], "sampling": [], "test": [], "anomalous": []}
    for c in range(NUM_CLASSES):
        members = rng.permutation(np.flatnonzero(test_labels == c))
        needed = 4 * PER_CLASS if c != target else 3 * PER_CLASS
        if len(members) < needed:
            raise ValueError(f"class {c} has {len(members)} test images, {needed} needed")
        for k, name in enumerate(["trusted", "sampling", "test"]):
            parts[name].append(members[k * PER_CLASS: (k + 1) * PER_CLASS])
        if c != target:
            parts["anomalous"].append(members[3 * PER_CLASS: 4 * PER_CLASS])
    return {name: np.concatenate(p) for name, p in parts.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--attack", choices=["badnets", "blended"], required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--rate", type=float, default=0.1, help="fraction of training images poisoned")
    p.add_argument("--target", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--train-limit", type=int, default=None,
                   help="train on the first N training images only (smoke tests)")
    args = p.parse_args()
    if not 0 <= args.target < NUM_CLASSES:
        p.error(f"--target must be a class 0..{NUM_CLASSES - 1}")
    if not 0.0 <= args.rate <= 1.0:
        p.error("--rate must be in [0, 1]")
    if args.epochs < 1:
        p.error("--epochs must be at least 1")

    started = time.time()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    trigger = make_trigger(args.attack)

    train_x, train_y = load_split("train")
    test_x, test_y = load_split("t10k")
    if args.train_limit is not None:
        train_x, train_y = train_x[: args.train_limit], train_y[: args.train_limit]
    n_train = len(train_x)

    # Poisoning: BackdoorBench all-to-one, drawn among ALL training images (target class included).
    rng = np.random.default_rng(args.seed)
    n_poison = int(round(args.rate * n_train))
    poison = np.sort(rng.choice(n_train, size=n_poison, replace=False))
    already_target = int((train_y[poison] == args.target).sum())
    train_x = train_x.copy()
    train_y = train_y.copy()
    train_x[poison] = trigger(train_x[poison])
    train_y[poison] = args.target
    log(f"{args.attack}: {n_poison} of {n_train} training images poisoned "
        f"({already_target} of them already of target class {args.target})")

    # Test sets: clean accuracy on all 10k; ASR on the triggered, quantised non-target images.
    non_target = np.flatnonzero(test_y != args.target)
    test_triggered = trigger(test_x[non_target])
    x_test = to_input(test_x)
    x_trig = to_input(test_triggered)

    torch.manual_seed(args.seed)
    model = SmallCnn(in_channels=1, num_classes=NUM_CLASSES, width=32, hidden=128)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    shuffle = torch.Generator().manual_seed(args.seed)
    x_train = to_input(train_x)
    y_train = torch.from_numpy(train_y)

    history = []
    for epoch in range(args.epochs):
        t0 = time.time()
        model.train()
        lr = opt.param_groups[0]["lr"]
        order = torch.randperm(n_train, generator=shuffle)
        loss_sum, correct = 0.0, 0
        for i in range(0, n_train, BATCH):
            idx = order[i: i + BATCH]
            xb, yb = x_train[idx], y_train[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
        sched.step()
        clean_acc = float((predict(model, x_test) == test_y).mean())
        asr = float((predict(model, x_trig) == args.target).mean())
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": loss_sum / n_train,
               "train_accuracy": correct / n_train, "clean_accuracy": clean_acc,
               "attack_success_rate": asr, "seconds": time.time() - t0}
        history.append(row)
        log(f"epoch {epoch + 1}/{args.epochs}: lr {lr:.5f}, train loss {row['train_loss']:.4f}, "
            f"train acc {row['train_accuracy']:.4f}, clean acc {clean_acc:.4f}, ASR {asr:.4f} "
            f"({row['seconds']:.1f}s)")

    model.eval()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(args.out / "model.safetensors", lambda tmp: save_file(state, str(tmp)))

    # Image folders from the test set, disjoint per-class draws.
    parts = test_splits(test_y, args.target, args.seed)
    for name in ["trusted", "sampling", "test"]:
        idx = parts[name]
        write_folder(args.out, name, test_x[idx], test_y[idx], idx)
    anomalous_idx = parts["anomalous"]
    anomalous_images = trigger(test_x[anomalous_idx])
    # True class folders: vigil labels anomalous images by their folder, only for its accuracy
    # line; MAD-FA traces every test sample against the model's own prediction at w*.
    write_folder(args.out, "anomalous", anomalous_images, test_y[anomalous_idx], anomalous_idx)

    exported_test_acc = float(
        (predict(model, to_input(test_x[parts["test"]])) == test_y[parts["test"]]).mean())
    exported_asr = float((predict(model, to_input(anomalous_images)) == args.target).mean())
    final = history[-1] if history else {}
    results = {
        "attack": args.attack,
        "seed": args.seed,
        "target": args.target,
        "rate": args.rate,
        "epochs": args.epochs,
        "train_images": n_train,
        "poisoned": n_poison,
        "poisoned_already_target": already_target,
        "clean_accuracy": final.get("clean_accuracy"),
        "attack_success_rate": final.get("attack_success_rate"),
        "asr_images": int(len(non_target)),
        "exported": {
            "test_accuracy": exported_test_acc,
            "anomalous_attack_success_rate": exported_asr,
            "per_class": PER_CLASS,
            "anomalous_images": int(len(anomalous_idx)),
        },
        "trigger": ({"patch": "3x3 white, bottom-right"} if args.attack == "badnets" else
                    {"alpha": BLEND_ALPHA, "pattern": "np.random.default_rng(12345).random((28, 28))"}),
        "quantised": "triggered images round(x*255)/255 in training, ASR and PNGs",
        "normalisation": {"mean": NORM_MEAN, "std": NORM_STD},
        "optimiser": {"sgd_lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
                      "batch": BATCH, "schedule": "cosine per epoch, T_max = epochs"},
        "history": history,
        "seconds": time.time() - started,
        "torch_version": torch.__version__,
        "threads": args.threads,
    }
    atomic_write_bytes(
        args.out / "results.json",
        lambda tmp: tmp.write_text(json.dumps(results, indent=2) + "\n"),
    )
    log(f"clean acc {results['clean_accuracy']:.4f}, ASR {results['attack_success_rate']:.4f} "
        f"(exported test acc {exported_test_acc:.4f}, exported anomalous ASR {exported_asr:.4f}); "
        f"wrote {args.out} in {results['seconds']:.0f}s")
    print(json.dumps({k: results[k] for k in
                      ["attack", "seed", "clean_accuracy", "attack_success_rate", "seconds"]}))


if __name__ == "__main__":
    main()
