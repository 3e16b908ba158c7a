#!/usr/bin/env python3
"""Hostile-input run against a `vigil` binary (issue 24, "Hardening").

Generates tiny data and a collection of bad files in a temporary folder, runs one `vigil`
command per case and classifies each outcome automatically against the expectation encoded
for that case:

  CLEAR_ERROR       nonzero exit, a stderr line starting with "error:" (naming the problem
                    when the case asks for a keyword), no "panicked", no backtrace
  OK                success, and the case's own check of the output passed
  PANIC             "panicked" on stderr, exit code 101, or death by SIGABRT/SIGSEGV/SIGBUS/
                    SIGILL/SIGFPE/SIGKILL (an abort, or the memory limit)
  SILENT_WRONG      success where an error, a warning or a specific output was expected
  LOST_FILE         an input file changed or vanished, or a refused run changed or left files
                    in its --out
  UNCLEAR_ERROR     nonzero exit, but no "error:" line or the message does not name the problem
  UNEXPECTED_ERROR  a clear error where the issue asks for success (e.g. int32 labels refused)
  KILLED            ended by a signal that should have been handled (SIGTERM)
  HANG              did not finish within the case's time limit
  NOT_MET           success, but a requirement of the issue that is not a wrong result is
                    unmet (a missing column, a wrong help text)

A case passes if its outcome is one it allows (CLEAR_ERROR for refusals, OK for inputs that
must work, either for inputs where converting and refusing are both honest answers). The bar
of issue 24 is 0 PANIC, 0 SILENT_WRONG, 0 LOST_FILE.

Usage:
    scripts/hostile-inputs.py target/release/vigil [--label before] [--results results/hostile-inputs]
                              [--keep] [--only SUBSTRING]

Writes <results>/<label>.txt (one line per case and the summary), <label>.json and <label>.csv.
Every command runs with RAYON_NUM_THREADS=2, a 6 GiB address-space limit (so a huge allocation
fails instead of exhausting the machine) and a per-case timeout. The whole run takes about a
minute on two cores.

Needs: python3 (3.8 or newer), standard library only: the IDX, PNG, npy/npz, safetensors and
PyTorch-pickle files are written by hand (no numpy, Pillow or torch).
"""

import argparse
import collections
import csv
import hashlib
import json
import os
import pickle
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import types
import zipfile
import zlib
from ast import literal_eval

# ---------------------------------------------------------------------------------------------
# Small file writers and readers (standard library only)
# ---------------------------------------------------------------------------------------------

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]


def xorshift(state):
    state ^= (state << 13) & 0xFFFFFFFF
    state ^= state >> 17
    state ^= (state << 5) & 0xFFFFFFFF
    return state


def class_pixels(cls, salt, size=28):
    """A learnable gray image of class `cls`: a bright bar at row 2 + 2 cls plus noise (the
    pattern of crates/vigil-cli/tests/cli.rs write_idx_dataset)."""
    state = (0x12345678 ^ salt) & 0xFFFFFFFF or 1
    out = bytearray()
    for r in range(size):
        for _ in range(size):
            state = xorshift(state)
            out.append((190 if r == 2 + 2 * cls else 0) + state % 60)
    return bytes(out)


def write_idx(folder, prefix, n, salt, dims=(28, 28)):
    images = bytearray([0, 0, 8, 3]) + struct.pack(">III", n, *dims)
    labels = bytearray([0, 0, 8, 1]) + struct.pack(">I", n)
    state = (0x12345678 ^ salt) & 0xFFFFFFFF
    for i in range(n):
        cls = i % 10
        labels.append(cls)
        for r in range(dims[0]):
            for _ in range(dims[1]):
                state = xorshift(state)
                images.append((190 if r == 2 + 2 * cls else 0) + state % 60)
    os.makedirs(folder, exist_ok=True)
    write(os.path.join(folder, f"{prefix}-images-idx3-ubyte"), bytes(images))
    write(os.path.join(folder, f"{prefix}-labels-idx1-ubyte"), bytes(labels))


def png_bytes(width, height, channels, pixels, ihdr_size=None):
    """A PNG of 8-bit samples: channels 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA. `ihdr_size`
    overrides the dimensions written in the header (a lying header)."""
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    row = width * channels
    raw = b"".join(b"\x00" + pixels[y * row:(y + 1) * row] for y in range(height))

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    w, h = ihdr_size or (width, height)
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def class_png(cls, salt, channels=1, size=28):
    gray = class_pixels(cls, salt, size)
    if channels == 1:
        return png_bytes(size, size, 1, gray)
    # Colour with unequal channels: the red channel alone is not the image.
    rgb = bytearray()
    for v in gray:
        rgb += bytes([v // 4, v, min(255, v + 20)])
    return png_bytes(size, size, 3, bytes(rgb))


def image_folder(root, per_class, salt, classes=range(10), names=None, channels=1, size=28):
    """root/<name>/<i>.png for each class; `names[c]` names class c's folder (default: c)."""
    for cls in classes:
        name = names[cls] if names else str(cls)
        folder = os.path.join(root, name)
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            write(os.path.join(folder, f"{i:03}.png"),
                  class_png(cls, salt * 1000 + cls * 31 + i, channels, size))
    return root


NPY_FORMATS = {"<f4": "f", "<f8": "d", "<i8": "q", "<i4": "i", "|b1": "?", "|u1": "B",
               "<u8": "Q", "<f2": "e"}


def npy_bytes(descr, shape, values=None, raw=None, header_shape=None):
    """An npy (version 1.0) file. `header_shape` makes the header claim another shape than the
    data holds."""
    if raw is None:
        raw = struct.pack("<%d%s" % (len(values), NPY_FORMATS[descr]), *values)
    shape_text = repr(tuple(header_shape if header_shape is not None else shape))
    header = "{'descr': '%s', 'fortran_order': False, 'shape': %s, }" % (descr, shape_text)
    pad = 64 - (10 + len(header) + 1) % 64
    header = header + " " * pad + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + raw


def parse_npy(data):
    if data[:6] != b"\x93NUMPY":
        raise ValueError("not an npy array")
    major = data[6]
    if major == 1:
        (hlen,), start = struct.unpack("<H", data[8:10]), 10
    else:
        (hlen,), start = struct.unpack("<I", data[8:12]), 12
    header = literal_eval(data[start:start + hlen].decode("latin1"))
    descr, shape = header["descr"], tuple(header["shape"])
    count = 1
    for d in shape:
        count *= d
    body = data[start + hlen:]
    values = list(struct.unpack("<%d%s" % (count, NPY_FORMATS[descr]),
                                body[:count * struct.calcsize(NPY_FORMATS[descr])]))
    return descr, shape, values


def read_npz(path):
    with zipfile.ZipFile(path) as z:
        return {name[:-4]: parse_npy(z.read(name)) for name in z.namelist()
                if name.endswith(".npy")}


def write_npz(path, arrays, compress=False):
    """`arrays`: name -> npy bytes, written in order."""
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", method) as z:
        for name, data in arrays.items():
            z.writestr(name + ".npy", data)


def npz_entries(path):
    with zipfile.ZipFile(path) as z:
        return collections.OrderedDict(
            (n[:-4], z.read(n)) for n in z.namelist() if n.endswith(".npy"))


def read_safetensors(path):
    data = read(path)
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    meta = header.pop("__metadata__", None)
    tensors = collections.OrderedDict()
    for name, info in header.items():
        a, b = info["data_offsets"]
        assert info["dtype"] == "F32", info
        raw = body[a:b]
        tensors[name] = (info["shape"], list(struct.unpack("<%df" % (len(raw) // 4), raw)))
    return meta, tensors


def encode_values(values, dtype):
    if dtype == "F32":
        return struct.pack("<%df" % len(values), *values)
    if dtype == "F64":
        return struct.pack("<%dd" % len(values), *values)
    if dtype == "F16":
        return struct.pack("<%de" % len(values), *values)
    if dtype == "BF16":  # the upper half of the float32, rounded to nearest even
        out = bytearray()
        for v in values:
            (bits,) = struct.unpack("<I", struct.pack("<f", v))
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
            out += struct.pack("<H", bits & 0xFFFF)
        return bytes(out)
    raise ValueError(dtype)


def safetensors_bytes(tensors, dtype="F32", meta=None):
    header, body = {}, bytearray()
    for name, (shape, values) in tensors.items():
        raw = encode_values(values, dtype)
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(body), len(body) + len(raw)]}
        body += raw
    if meta:
        header["__metadata__"] = meta
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + bytes(body)


# A PyTorch zip checkpoint (torch.save's format since 1.6) written without torch: the pickle
# refers to torch._utils._rebuild_tensor_v2 and torch.<Kind>Storage by name only, so stand-in
# modules let Python's pickler write those references.
def _fake_torch():
    if "torch" in sys.modules and getattr(sys.modules["torch"], "_hostile_fake", False):
        return sys.modules["torch"]
    torch = types.ModuleType("torch")
    torch._hostile_fake = True
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise RuntimeError("stand-in only")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    for kind in ["FloatStorage", "HalfStorage", "BFloat16Storage", "DoubleStorage"]:
        cls = type(kind, (), {"__module__": "torch"})
        setattr(torch, kind, cls)
    sys.modules["torch"], sys.modules["torch._utils"] = torch, utils
    return torch


def pt_bytes(tensors, dtype="F32", wrap_key=None):
    torch = _fake_torch()
    storage_kind = {"F32": torch.FloatStorage, "F16": torch.HalfStorage,
                    "BF16": torch.BFloat16Storage, "F64": torch.DoubleStorage}[dtype]

    class StorageRef:
        def __init__(self, key, numel):
            self.key, self.numel = key, numel

    class TensorRef:
        def __init__(self, storage, shape):
            self.storage, self.shape = storage, shape

        def __reduce__(self):
            stride, acc = [], 1
            for d in reversed(self.shape):
                stride.insert(0, acc)
                acc *= d
            return (torch._utils._rebuild_tensor_v2,
                    (self.storage, 0, tuple(self.shape), tuple(stride), False,
                     collections.OrderedDict()))

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, StorageRef):
                return ("storage", storage_kind, obj.key, "cpu", obj.numel)
            return None

    state, blobs = collections.OrderedDict(), {}
    for i, (name, (shape, values)) in enumerate(tensors.items()):
        blobs[str(i)] = encode_values(values, dtype)
        state[name] = TensorRef(StorageRef(str(i), len(values)), shape)
    obj = {wrap_key: state} if wrap_key else state
    buf = __import__("io").BytesIO()
    Pickler(buf, protocol=2).dump(obj)
    out = __import__("io").BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        for key, blob in blobs.items():
            z.writestr(f"archive/data/{key}", blob)
        z.writestr("archive/version", "3\n")
    return out.getvalue()


def write(path, data):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
    return path


def read(path):
    with open(path, "rb") as f:
        return f.read()


def sha(path):
    return hashlib.sha256(read(path)).hexdigest()


def tree_state(path):
    """relative path -> sha256 of every file under `path` (a file: itself); None if absent."""
    if not os.path.lexists(path):
        return None
    if os.path.isfile(path):
        return {".": sha(path)}
    state = {}
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            state[os.path.relpath(p, path)] = sha(p) if os.path.isfile(p) else "special"
    return state


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------
# Running cases
# ---------------------------------------------------------------------------------------------

PANIC_SIGNALS = {signal.SIGABRT, signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE,
                 signal.SIGKILL}
PASS = {"error": {"CLEAR_ERROR"}, "ok": {"OK"}, "either": {"CLEAR_ERROR", "OK"}}
MEMORY_LIMIT = 6 << 30


def limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


class Result:
    def __init__(self, rc, stdout, stderr, seconds, timed_out=False):
        self.rc, self.stdout, self.stderr = rc, stdout, stderr
        self.seconds, self.timed_out = seconds, timed_out


class Runner:
    def __init__(self, binary, work):
        self.binary, self.work = binary, work
        self.env = dict(os.environ, RAYON_NUM_THREADS="2")
        self.env.pop("RUST_BACKTRACE", None)

    def run(self, args, timeout=120):
        start = time.time()
        try:
            p = subprocess.run([self.binary] + [str(a) for a in args], cwd=self.work,
                               env=self.env, capture_output=True, timeout=timeout,
                               preexec_fn=limit_memory)
            return Result(p.returncode, p.stdout.decode("utf-8", "replace"),
                          p.stderr.decode("utf-8", "replace"), time.time() - start)
        except subprocess.TimeoutExpired as e:
            return Result(None, (e.stdout or b"").decode("utf-8", "replace"),
                          (e.stderr or b"").decode("utf-8", "replace"), time.time() - start, True)

    def must(self, args, what):
        r = self.run(args, timeout=300)
        if r.rc != 0:
            sys.exit(f"setup failed ({what}): vigil {' '.join(map(str, args))}\n{r.stderr}")
        return r


class Case:
    def __init__(self, name, args, expect, group, keywords=(), check=None, guard=(), out=None,
                 timeout=120, runner=None, note="", late=()):
        self.name, self.args, self.expect, self.group = name, args, expect, group
        self.keywords = [k.lower() for k in keywords]  # any one must appear in an error
        self.check = check          # Result -> None (fine) or a string (what is wrong)
        self.guard = list(guard)    # inputs that must be unchanged afterwards
        self.out = out              # output path: a refused run must leave it as it was
        self.timeout, self.runner, self.note = timeout, runner, note
        self.late = late            # words showing the work was done before a refusal


def has_error_line(stderr):
    return any(line.startswith("error:") for line in stderr.splitlines())


def classify(case, r, guard_before, out_before, out_after):
    if r.timed_out:
        return "HANG", f"no exit after {case.timeout}s"
    err = r.stderr
    if (r.rc == 101 or "panicked" in err or "stack backtrace" in err
            or (r.rc is not None and r.rc < 0 and -r.rc in PANIC_SIGNALS)):
        line = next((l for l in err.splitlines() if "panicked" in l or "memory" in l), "")
        sig = f" signal {signal.Signals(-r.rc).name}" if r.rc < 0 else ""
        return "PANIC", f"exit {r.rc}{sig} {line.strip()}"[:300]
    changed = [p for p, h in guard_before.items() if tree_state(p) != h]
    if changed:
        return "LOST_FILE", "input changed or vanished: " + ", ".join(
            os.path.basename(p) for p in changed)
    if r.rc != 0:
        if r.rc < 0:
            return "KILLED", f"ended by {signal.Signals(-r.rc).name}"
        if case.out is not None and out_after != out_before:
            if out_before is None and not out_after:
                pass  # an empty folder left behind holds nothing
            else:
                return "LOST_FILE", (f"refused run changed its output "
                                     f"{os.path.basename(case.out)}: {last_error(err)}")
        last = last_error(err)
        if not has_error_line(err):
            return "UNCLEAR_ERROR", f"exit {r.rc} without an 'error:' line: {last}"
        if case.keywords and not any(k in err.lower() for k in case.keywords):
            return "UNCLEAR_ERROR", f"does not name {case.keywords}: {last}"
        if any(w in (r.stdout + err).lower() for w in case.late):
            return "UNCLEAR_ERROR", f"refused only after the work: {last}"
        if case.expect == "ok":
            return "UNEXPECTED_ERROR", last
        return "CLEAR_ERROR", last
    if case.expect == "error":
        return "SILENT_WRONG", "succeeded; expected a clear error" + (
            f" naming {case.keywords}" if case.keywords else "")
    if case.check:
        try:
            problem = case.check(r)
        except Exception as e:  # a missing or unreadable output is a wrong result
            problem = f"output unreadable: {type(e).__name__}: {e}"
        if isinstance(problem, tuple):
            return problem
        if problem:
            return "SILENT_WRONG", problem
    return "OK", ""


def last_error(stderr):
    lines = [l for l in stderr.strip().splitlines() if l.strip()]
    errs = [l for l in lines if l.startswith("error:")]
    return ((errs or lines or [""])[-1]).strip()[:300]


# ---------------------------------------------------------------------------------------------
# Checks of successful outputs
# ---------------------------------------------------------------------------------------------

def same_scores(path, reference, tol=1e-5):
    def check(_r):
        got, want = read_csv(path), read_csv(reference)
        if len(got) != len(want):
            return f"{len(got)} score rows, expected {len(want)}"
        for g, w in zip(got, want):
            for col in ["mean_corr", "clc", "mean_ccc", "class_ccc"]:
                a, b = float(g[col]), float(w[col])
                if not abs(a - b) <= tol * max(1.0, abs(b)):
                    return f"{col} {a} differs from the reference {b}"
        return None
    return check


def stderr_mentions(words, then=None):
    def check(r):
        if not any(w in r.stderr.lower() for w in words):
            return f"succeeded without a word about it (expected one of {words} on stderr)"
        return then(r) if then else None
    return check


def traces_equal(path, reference):
    def check(_r):
        a, b = read_npz(path), read_npz(reference)
        for name in ["trusted", "test", "trusted_labels"]:
            if a[name] != b[name]:
                return f"{name} differs from a fresh run of the same command: old state reused"
        return None
    return check


def content_classes(npy):
    """The class each generated image shows: its brightest row is the bar at 2 + 2 class."""
    _, (n, c, h, w), values = npy
    classes = []
    for i in range(n):
        rows = [sum(values[((i * c + ch) * h + r) * w + x] for ch in range(c) for x in range(w))
                for r in range(h)]
        classes.append((rows.index(max(rows)) - 2) // 2)
    return classes


def labels_match_images(out):
    """The run's labels against what its generated images show (task.npz holds the images and
    the labels taken from the class folders; the trace file the model's predictions at w*,
    which a model that is ~100% accurate on these images gets right when it sees them as they
    are)."""
    def check(_r):
        task = {}
        with zipfile.ZipFile(os.path.join(out, "task.npz")) as z:
            for part in ["trusted", "sampling"]:
                task[part] = (content_classes(parse_npy(z.read(f"{part}_images.npy"))),
                              parse_npy(z.read(f"{part}_labels.npy"))[2])
        predicted = read_npz(os.path.join(out, "traces.npz"))["trusted_labels"][2]
        for what, shown, labels in [
                ("sampling labels from the class folders", *task["sampling"]),
                ("trusted labels from the class folders", *task["trusted"]),
                ("the model's predictions on the trusted images", task["trusted"][0], predicted)]:
            agree = sum(a == b for a, b in zip(shown, labels)) / max(1, len(shown))
            if agree < 0.9:
                return f"{what} agree with the images {agree:.0%} of the time"
        return None
    return check


def anomalous_count(path, want):
    def check(_r):
        flags = read_npz(path)["test_is_anomalous"][2]
        got = sum(1 for f in flags if f)
        return None if got == want else f"{got} anomalous samples traced, expected {want}"
    return check


def all_of(*checks):
    def check(r):
        for c in checks:
            problem = c(r)
            if problem:
                return problem
        return None
    return check


# ---------------------------------------------------------------------------------------------
# The cases
# ---------------------------------------------------------------------------------------------

SAMPLE_FAST = ["--draws", "4", "--burn-in", "2", "--batch-size", "16", "--lr", "1e-5",
               "--gamma", "1000", "--seed", "3"]
CALIBRATE_FAST = ["--batch-size", "16", "--calibrate-gammas", "1e4", "--probe-draws", "4",
                  "--probe-burn-in", "2", "--min-draws", "4", "--max-draws", "6", "--seed", "3"]


def build(v, w):
    """Makes the tiny data, models, record and traces in `w`, then returns the cases."""
    j = lambda *p: os.path.join(w, *p)  # noqa: E731
    data = j("data")
    write_idx(data, "train", 300, 1)
    write_idx(data, "t10k", 200, 2)
    train = ["--data-dir", data, "--epochs", "6", "--width", "8", "--batch-size", "32"]
    v.must(["train", "--out", j("m1")] + train, "train m1")
    v.must(["train", "--out", j("m2"), "--seed", "1", "--lr", "0.02"] + train, "train m2")
    m1, m2 = j("m1", "model.safetensors"), j("m2", "model.safetensors")
    v.must(["attack", "--attack", "badnets", "--data-dir", data, "--out", j("rec"), "--epochs",
            "4", "--width", "8", "--batch-size", "32", "--rate", "0.2", "--patch-size", "4"],
           "attack")
    rec = j("rec")
    record_sample = ["sample", "--record", rec, "--data-dir", data, "--split", "3,3,3"]
    v.must(record_sample + ["--out", j("rs"), "--chains", "2"] + SAMPLE_FAST, "sample")
    base = j("rs", "traces.npz")
    v.must(record_sample + ["--out", j("singles"), "--chain", "0"]
           + SAMPLE_FAST, "sample chain 0")
    v.must(record_sample + ["--out", j("singles"), "--chain", "1"]
           + SAMPLE_FAST, "sample chain 1")
    chain0, chain1 = j("singles", "traces-chain-0.npz"), j("singles", "traces-chain-1.npz")
    ref_csv = j("ref-scores.csv")
    v.must(["score", base, "--out", ref_csv], "score")

    # Image folders (gray 28x28, class k = bar at row 2 + 2k).
    trusted = image_folder(j("img", "trusted"), 3, 1)
    sampling = image_folder(j("img", "sampling"), 3, 2)
    test = image_folder(j("img", "test"), 2, 3)
    anomalous = image_folder(j("img", "anomalous"), 2, 4)
    folders = ["--trusted", trusted, "--sampling", sampling, "--test", test]
    model_sample = lambda model, out, *extra: (  # noqa: E731
        ["sample", "--model", model] + folders + ["--out", out, "--chains", "1"] + SAMPLE_FAST
        + list(extra))
    model_calibrate = lambda model, out, *extra: (  # noqa: E731
        ["calibrate", "--model", model, "--trusted", trusted, "--sampling", sampling,
         "--out", out] + CALIBRATE_FAST + list(extra))

    meta, tensors = read_safetensors(m1)
    plain = ["--arch", "small-cnn", "--width", "8", "--input-shape", "1,28,28",
             "--num-classes", "10", "--norm-mean", "0.5", "--norm-std", "0.5"]
    eval_data = ["--data-dir", data, "--dataset", "fashion-mnist", "--json"]

    def accuracy_near_1(r):
        acc = json.loads(r.stdout)["accuracy"]
        return None if acc > 0.95 else f"accuracy {acc}, the f32 model has 1.0"

    cases = []
    add = lambda *a, **k: cases.append(Case(*a, **k))  # noqa: E731

    # --- Weights in other float types: convert to f32 on load --------------------------------
    for dtype in ["F16", "BF16", "F64"]:
        f = write(j("w", f"m1-{dtype.lower()}.safetensors"),
                  safetensors_bytes(tensors, dtype, meta))
        add(f"safetensors_{dtype.lower()}_weights", ["eval", f] + eval_data, "ok", "weights",
            check=accuracy_near_1, guard=[f])
    for dtype in ["F32", "F16", "BF16", "F64"]:
        f = write(j("w", f"m1-{dtype.lower()}.pt"), pt_bytes(tensors, dtype))
        add(f"pt_{dtype.lower()}_weights", ["eval", f] + plain + eval_data, "ok", "weights",
            check=accuracy_near_1, guard=[f],
            note="F32 is the control: a hand-written torch.save zip")
    pt32 = j("w", "m1-f32.pt")
    add("info_reads_pt", ["info", pt32], "ok", "weights",
        check=lambda r: None if "conv1.weight" in r.stdout or "tensors" in r.stdout
        else "no tensors listed", guard=[pt32])
    wrong_keys = write(j("w", "wrong-keys.safetensors"), safetensors_bytes(
        collections.OrderedDict(("features." + k, t) for k, t in tensors.items())))
    add("state_dict_wrong_keys_lists_file_keys", ["eval", wrong_keys] + plain + eval_data,
        "error", "weights", keywords=["features.conv1"], guard=[wrong_keys])
    bad_shape = collections.OrderedDict(tensors)
    bad_shape["conv1.weight"] = ([8, 1, 5, 5], [0.01] * 200)
    bad_shape_f = write(j("w", "bad-shape.safetensors"), safetensors_bytes(bad_shape))
    add("shape_error_in_pytorch_layout", ["eval", bad_shape_f] + plain + eval_data, "error",
        "weights", keywords=["[8, 1, 5, 5]", "8x1x5x5", "(8, 1, 5, 5)"], guard=[bad_shape_f])
    m1_bytes = read(m1)
    for name, blob in [("truncated", m1_bytes[:len(m1_bytes) // 2]), ("empty", b""),
                       ("header_len_2^60", struct.pack("<Q", 1 << 60) + b"{}"),
                       ("header_not_object", struct.pack("<Q", 8) + b"[1,2,3] "),
                       ("header_not_json", struct.pack("<Q", 8) + b"\xff\xfe{{{{{{")]:
        f = write(j("w", f"{name}.safetensors"), blob)
        add(f"safetensors_{name}", ["eval", f] + eval_data, "error", "weights",
            keywords=[os.path.basename(f)], guard=[f])
    trunc_pt = write(j("w", "truncated.pt"), read(pt32)[:600])
    add("pt_truncated", ["eval", trunc_pt] + plain + eval_data, "error", "weights",
        keywords=["truncated.pt"], guard=[trunc_pt])
    add("model_is_a_directory", ["eval", j("m1")] + eval_data, "error", "weights",
        keywords=["m1"])
    add("eval_missing_checkpoint", ["eval", j("nope.safetensors")] + eval_data, "error",
        "weights", keywords=["nope.safetensors"])

    # --- Trace files --------------------------------------------------------------------------
    entries = npz_entries(base)
    arrays = read_npz(base)
    _, tshape, tvalues = arrays["trusted"]
    _, xshape, xvalues = arrays["test"]
    labels = arrays["trusted_labels"][2]

    def variant(name, **replace):
        e = collections.OrderedDict(entries)
        compress = replace.pop("_compress", False)
        for key, value in replace.items():
            if value is None:
                e.pop(key, None)
            else:
                e[key] = value
        path = j("traces", f"{name}.npz")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_npz(path, e, compress)
        return path

    def score_case(name, path, expect, keywords=(), check=None, extra=(), note=""):
        out = j("traces", f"{name}.csv")
        add(name, ["score", path, "--out", out] + list(extra), expect, "traces",
            keywords=keywords, check=check(out) if check else None, guard=[path], out=out,
            note=note)

    score_case("npz_compressed", variant("compressed", _compress=True), "ok",
               check=lambda out: same_scores(out, ref_csv))
    score_case("trusted_labels_int32", variant(
        "int32-labels", trusted_labels=npy_bytes("<i4", [len(labels)], labels)), "ok",
        check=lambda out: same_scores(out, ref_csv))
    score_case("traces_float64", variant(
        "f64", trusted=npy_bytes("<f8", tshape, tvalues), test=npy_bytes("<f8", xshape, xvalues)),
        "ok", check=lambda out: same_scores(out, ref_csv))
    nan = list(tvalues)
    nan[tshape[2] + 7] = float("nan")
    score_case("nan_in_one_trusted_trace", variant("nan", trusted=npy_bytes("<f4", tshape, nan)),
               "error", keywords=["nan", "not finite", "non-finite"],
               check=None, note="must name the array and sample, and write no scores.csv")
    inf = list(xvalues)
    inf[3] = float("inf")
    score_case("inf_in_test_trace", variant("inf", test=npy_bytes("<f4", xshape, inf)), "error",
               keywords=["inf", "not finite", "non-finite"])
    for name, bad in [("negative", -1), ("2^40", 1 << 40)]:
        lab = list(labels)
        lab[0] = bad
        score_case(f"trusted_label_{name}", variant(
            f"label-{name}", trusted_labels=npy_bytes("<i8", [len(lab)], lab)), "error",
            keywords=["label"])
    score_case("npy_header_claims_1e15_elements", variant(
        "huge-header", trusted=npy_bytes("<f4", tshape, tvalues,
                                         header_shape=(1000, 1000, 10 ** 9))),
        "error", keywords=["trusted", "memory", "size", "large"])
    const = [0.5] * len(tvalues)
    score_case("constant_trusted_traces", variant(
        "constant", trusted=npy_bytes("<f4", tshape, const)), "either",
        keywords=["constant"],
        check=lambda out: stderr_mentions(["constant"]),
        note="AUROC 0.5 without a word is silent")
    score_case("trusted_labels_length_mismatch", variant(
        "short-labels", trusted_labels=npy_bytes("<i8", [len(labels) - 1], labels[:-1])),
        "error", keywords=["trusted_labels", "label"])
    score_case("no_trusted_array", variant("no-trusted", trusted=None), "error",
               keywords=["trusted"])
    score_case("zero_draws", variant(
        "zero-draws", trusted=npy_bytes("<f4", (tshape[0], 0, tshape[2]), []),
        test=npy_bytes("<f4", (xshape[0], 0, xshape[2]), [])), "error", keywords=["draw"])
    score_case("complex_dtype", variant(
        "complex", trusted=npy_bytes("<c8", tshape, raw=b"\0" * (8 * len(tvalues)))), "error",
        keywords=["trusted", "dtype", "type"])
    score_case("npy_bad_magic", variant("bad-magic", trusted=b"NOTNUMPY" + b"\0" * 64),
               "error", keywords=["trusted"])
    trunc = j("traces", "truncated.npz")
    write(trunc, read(base)[:len(read(base)) // 2])
    score_case("npz_truncated", trunc, "error", keywords=["truncated.npz"])
    empty = write(j("traces", "empty.npz"), b"")
    score_case("npz_empty_file", empty, "error", keywords=["empty.npz"])
    score_case("npz_is_a_directory", j("traces-dir.npz"), "error", keywords=["traces-dir"])
    os.makedirs(j("traces-dir.npz"), exist_ok=True)
    score_case("score_every_0", base, "error", keywords=["--every", "every"], extra=["--every", "0"])
    score_case("score_draws_0", base, "error", keywords=["--draws", "draws"], extra=["--draws", "0"])
    score_case("score_burn_in_beyond_draws", base, "error", keywords=["burn"],
               extra=["--burn-in", "10"])

    # Outputs that are inputs.
    def own_copy(source, name):
        # Every case that may destroy its input gets its own copy, so one case's damage does
        # not change the next case's outcome.
        path = j("same", name)
        os.makedirs(j("same"), exist_ok=True)
        shutil.copy(source, path)
        return path

    copy_a = own_copy(base, "t.npz")
    add("score_out_equals_input", ["score", copy_a, "--out", copy_a], "error", "outputs",
        keywords=["t.npz"], guard=[copy_a])
    a0, a1 = j("same", "chain-0.npz"), j("same", "chain-1.npz")
    shutil.copy(chain0, a0)
    shutil.copy(chain1, a1)
    add("merge_out_equals_input", ["merge", a0, a1, "--out", a0], "error", "outputs",
        keywords=["chain-0.npz"], guard=[a0, a1])
    copy_b = own_copy(base, "t-top-k.npz")
    att = j("same", "attribution.csv")
    add("top_k_out_is_attribution_csv", ["score", copy_b, "--top-k", "2", "--out", att],
        "error", "outputs", keywords=["attribution.csv"], guard=[copy_b], out=att)
    copy_c = own_copy(base, "t-dir.npz")
    os.makedirs(j("same", "a-dir"), exist_ok=True)
    add("score_out_is_a_directory", ["score", copy_c, "--out", j("same", "a-dir")], "error",
        "outputs", keywords=["a-dir"], guard=[copy_c])
    copy_d = own_copy(base, "t-top-k-huge.npz")
    out = j("same", "top-k-huge.csv")
    add("score_top_k_99999999999", ["score", copy_d, "--top-k", "99999999999", "--out", out],
        "either", "numbers", keywords=["top-k"], guard=[copy_d], out=out,
        check=lambda r: None)
    other_split = j("rs-fresh-split", "traces.npz")
    copy_e = own_copy(chain0, "chain-0-again.npz")
    out = j("same", "merged-mismatch.npz")
    add("merge_different_samples", ["merge", copy_e, other_split, "--out", out], "error",
        "outputs", keywords=["differ", "sample"], guard=[copy_e, other_split], out=out)
    out = j("same", "merged-missing.npz")
    add("merge_missing_input", ["merge", copy_e, j("same", "nope.npz"), "--out", out], "error",
        "outputs", keywords=["nope.npz"], guard=[copy_e], out=out)

    # --- Image folders against the model ------------------------------------------------------
    # Folders named by the model's class names ("/" cannot be in a folder name): sorted,
    # Ankle boot comes first, while the model's class 0 is T-shirt/top.
    names = [n.replace("/", "_") for n in FASHION_CLASSES]
    by_name = [image_folder(j("img", f"{part}-by-name"), n, salt, names=names)
               for part, n, salt in [("trusted", 3, 1), ("sampling", 3, 2), ("test", 2, 3)]]
    out = j("runs", "by-name")
    add("class_folders_named_by_class_name", [
        "sample", "--model", m1, "--trusted", by_name[0], "--sampling", by_name[1],
        "--test", by_name[2], "--out", out, "--chains", "1"] + SAMPLE_FAST, "either", "images",
        keywords=["t-shirt_top", "class name", "folder"],
        check=labels_match_images(out), out=out,
        note="sorted names give Ankle_boot label 0; labels must follow the model's names")
    out = j("runs", "by-name-test-only")
    add("class_folder_naming_differs_between_sets", [
        "sample", "--model", m1, "--trusted", trusted, "--sampling", sampling,
        "--test", by_name[2], "--out", out, "--chains", "1"] + SAMPLE_FAST, "either", "images",
        keywords=["class name", "folder"],
        check=labels_match_images(out), out=out)
    for label, size in [("32px", 32), ("20px", 20)]:
        folder = image_folder(j("img", f"test-{label}"), 1, 5, size=size)
        out = j("runs", f"size-{label}")
        add(f"test_images_{label}_on_28px_model", ["sample", "--model", m1] + folders[:4]
            + ["--test", folder, "--out", out, "--chains", "1"] + SAMPLE_FAST, "error",
            "images", keywords=["28", str(size)], out=out)
    mixed = image_folder(j("img", "mixed-sizes"), 2, 6)
    write(os.path.join(mixed, "3", "zz-big.png"), class_png(3, 9, size=30))
    out = j("runs", "mixed")
    add("mixed_image_sizes_in_one_folder", ["sample", "--model", m1] + folders[:4]
        + ["--test", mixed, "--out", out, "--chains", "1"] + SAMPLE_FAST, "error", "images",
        keywords=["zz-big.png"], out=out)
    rgb = [image_folder(j("img", f"{part}-rgb"), n, salt, channels=3)
           for part, n, salt in [("trusted", 3, 1), ("sampling", 3, 2), ("test", 2, 3)]]
    out = j("runs", "rgb-on-gray")
    add("rgb_png_on_1_channel_model", ["sample", "--model", m1, "--trusted", rgb[0],
        "--sampling", rgb[1], "--test", rgb[2], "--out", out, "--chains", "1"] + SAMPLE_FAST,
        "either", "images", keywords=["channel", "grayscale", "greyscale", "model"],
        check=stderr_mentions(["channel", "grayscale", "greyscale"]), out=out,
        note="red channel silently used before")
    out = j("runs", "rgb-on-gray-mixed")
    add("rgb_test_gray_trusted_on_1_channel_model", ["sample", "--model", m1] + folders[:4]
        + ["--test", rgb[2], "--out", out, "--chains", "1"] + SAMPLE_FAST, "either",
        "images", keywords=["channel", "grayscale", "greyscale", "3x28x28"],
        check=stderr_mentions(["channel", "grayscale", "greyscale"]), out=out)
    # A 3-channel model equivalent to m1 on gray inputs: conv1's weights spread over RGB.
    t3 = collections.OrderedDict(tensors)
    shape, values = tensors["conv1.weight"]
    w3 = []
    for o in range(8):
        k = values[o * 9:(o + 1) * 9]
        w3 += [x / 3 for x in k] * 3
    t3["conv1.weight"] = ([8, 3, 3, 3], w3)
    m3 = write(j("w", "rgb-model.safetensors"), safetensors_bytes(t3))
    plain3 = ["--arch", "small-cnn", "--width", "8", "--input-shape", "3,28,28",
              "--num-classes", "10", "--norm-mean", "0.5,0.5,0.5", "--norm-std", "0.5,0.5,0.5"]
    out = j("runs", "gray-on-rgb")
    add("gray_png_on_3_channel_model", ["sample", "--model", m3] + plain3 + folders
        + ["--out", out, "--chains", "1"] + SAMPLE_FAST, "either", "images",
        keywords=["channel"], check=labels_match_images(out),
        guard=[m3], out=out, note="index out of bounds in the convolution before")
    add("eval_3_channel_model_on_gray_idx", ["eval", m3] + plain3 + eval_data, "either",
        "images", keywords=["channel", "1x28x28", "3x28x28"], check=accuracy_near_1, guard=[m3],
        note="index out of bounds in the convolution")
    wide = j("idx", "wide-images")
    write_idx(wide, "train", 20, 1, dims=(32, 32))
    write_idx(wide, "t10k", 20, 2, dims=(32, 32))
    add("eval_32px_idx_on_28px_model", ["eval", m1, "--data-dir", wide, "--json"], "error",
        "images", keywords=["32", "28"])
    out = j("runs", "plain-no-norm")
    add("plain_state_dict_without_norm_warns", ["sample", "--model", pt32, "--arch",
        "small-cnn", "--width", "8", "--input-shape", "1,28,28"] + folders
        + ["--out", out, "--chains", "1"] + SAMPLE_FAST, "either", "images",
        keywords=["norm"], check=stderr_mentions(["normalis", "normaliz", "--norm"]),
        out=out, note="runs unnormalised without a word before")
    out = j("runs", "default-input-shape")
    add("small_cnn_without_input_shape", ["sample", "--model", pt32, "--arch", "small-cnn",
        "--width", "8", "--norm-mean", "0.5", "--norm-std", "0.5"] + folders
        + ["--out", out, "--chains", "1"] + SAMPLE_FAST, "either", "images",
        keywords=["input-shape", "input shape", "3,32,32", "28"], out=out,
        note="--input-shape defaults to 3,32,32 even for small-cnn")
    flat = j("img", "anomalous-flat")
    os.makedirs(flat, exist_ok=True)
    for i in range(5):
        write(os.path.join(flat, f"a{i}.png"), class_png(i, 70 + i))
    out = j("runs", "flat-anomalous")
    add("flat_anomalous_folder", model_sample(m1, out, "--anomalous", flat), "ok", "images",
        check=anomalous_count(os.path.join(out, "traces.npz"), 5), out=out)
    some = image_folder(j("img", "anomalous-some"), 2, 8, classes=[1, 2, 3])
    os.makedirs(os.path.join(some, "4"), exist_ok=True)  # an empty class folder too
    out = j("runs", "some-classes")
    add("anomalous_missing_and_empty_class_folders", model_sample(m1, out, "--anomalous", some),
        "ok", "images", check=anomalous_count(os.path.join(out, "traces.npz"), 6), out=out)

    def scores_have_paths_and_unique_ids(out):
        def check(_r):
            rows = read_csv(os.path.join(out, "scores.csv"))
            cols = list(rows[0].keys())
            if not any("path" in c or "file" in c for c in cols):
                return "NOT_MET", f"scores.csv has no file path column ({','.join(cols)})"
            ids = [r.get("source_id") or r.get("id") for r in rows]
            if len(set(ids)) != len(ids):
                return "NOT_MET", "ids repeat between test and anomalous"
            return None
        return check

    out = j("runs", "scores-paths")
    v_ = model_sample(m1, out, "--anomalous", anomalous)
    add("scores_csv_paths_and_unique_ids", v_, "ok", "images",
        check=lambda r, out=out: (
            "vigil score failed on the traces" if v.run(
                ["score", os.path.join(out, "traces.npz")]).rc
            else scores_have_paths_and_unique_ids(out)(r)))
    # Single-class trusted set, one image per class: calibration must not report nonsense.
    single = image_folder(j("img", "trusted-one-class"), 6, 11, classes=[0])
    out = j("runs", "single-class")
    add("single_class_trusted_calibrate", ["calibrate", "--model", m1, "--trusted", single,
        "--sampling", sampling, "--out", out] + CALIBRATE_FAST, "error", "numbers",
        keywords=["class"], out=out, note="reliability 1.015, 'chosen' before")
    one = image_folder(j("img", "trusted-one-each"), 1, 12)
    out = j("runs", "one-per-class")
    add("one_image_per_class_calibrate", ["calibrate", "--model", m1, "--trusted", one,
        "--sampling", sampling, "--out", out] + CALIBRATE_FAST, "error", "numbers",
        keywords=["per class", "image"], out=out, note="self-contradicting message before")
    # Bad image files.
    for name, blob in [("zero-byte", b""), ("truncated", class_png(1, 5)[:60]),
                       ("text", b"this is not a picture\n"),
                       ("huge-ihdr", png_bytes(28, 28, 1, class_pixels(1, 5),
                                               ihdr_size=(100000, 100000)))]:
        folder = image_folder(j("img", f"trusted-{name}"), 2, 13)
        bad = write(os.path.join(folder, "1", f"bad-{name}.png"), blob)
        out = j("runs", f"png-{name}")
        add(f"png_{name.replace('-', '_')}_in_trusted", ["sample", "--model", m1, "--trusted",
            folder, "--sampling", sampling, "--test", test, "--out", out, "--chains", "1"]
            + SAMPLE_FAST, "error", "images", keywords=[f"bad-{name}.png"], guard=[bad],
            out=out)
    out = j("runs", "missing-trusted")
    add("trusted_folder_missing", ["sample", "--model", m1, "--trusted", j("img", "nope"),
        "--sampling", sampling, "--test", test, "--out", out] + SAMPLE_FAST, "error", "images",
        keywords=["nope"], out=out)
    empty_folder = j("img", "empty")
    os.makedirs(empty_folder, exist_ok=True)
    out = j("runs", "empty-trusted")
    add("trusted_folder_empty", ["sample", "--model", m1, "--trusted", empty_folder,
        "--sampling", sampling, "--test", test, "--out", out] + SAMPLE_FAST, "error", "images",
        keywords=["empty"], out=out)

    # --- Run identity: reruns into an existing --out ------------------------------------------
    out = j("runs", "rerun-model")
    v.must(model_sample(m1, out), "sample m1 for the rerun")
    fresh = j("runs", "fresh-m2")
    v.must(model_sample(m2, fresh), "sample m2 fresh")
    add("rerun_sample_other_model_same_out", model_sample(m2, out), "either", "identity",
        keywords=["model", "weights"], check=traces_equal(os.path.join(out, "traces.npz"),
                                                           os.path.join(fresh, "traces.npz")),
        out=out, note="reused m1's chain and said done before")
    out = j("rs-rerun")
    shutil.copytree(j("rs"), out)
    fresh_split = j("rs-fresh-split")
    v.must(record_sample[:-1] + ["2,2,2", "--out", fresh_split, "--chains", "2"] + SAMPLE_FAST,
           "sample other split fresh")
    add("rerun_sample_other_split_same_out", record_sample[:-1] + ["2,2,2", "--out", out,
        "--chains", "2"] + SAMPLE_FAST, "either", "identity", keywords=["split", "data"],
        check=traces_equal(os.path.join(out, "traces.npz"),
                           os.path.join(fresh_split, "traces.npz")),
        out=out, note="refusal overwrote task.json/task.npz before")
    sample_calibrate = lambda model, out: (  # noqa: E731
        ["sample", "--calibrate", "--model", model] + folders + ["--out", out, "--chains", "1"]
        + CALIBRATE_FAST)
    cal = j("runs", "calib-reuse")
    v.must(sample_calibrate(m1, cal), "sample --calibrate m1")
    cal_fresh = j("runs", "calib-fresh-m2")
    v.must(sample_calibrate(m2, cal_fresh), "sample --calibrate m2 fresh")

    def same_calibration(r):
        a = json.load(open(os.path.join(cal, "calibration.json")))
        b = json.load(open(os.path.join(cal_fresh, "calibration.json")))
        if a.get("recommended") != b.get("recommended") or a.get("candidates") != b.get(
                "candidates"):
            return "calibration.json is not m2's own: another model's calibration reused"
        return None
    add("calibrate_reuses_other_models_calibration", sample_calibrate(m2, cal), "either",
        "identity", keywords=["calibration", "model", "weights"], check=same_calibration,
        out=cal)
    out = j("runs", "calib-not-object")
    write(os.path.join(out, "calibration.json"), "[1, 2, 3]\n")
    add("calibration_json_not_an_object", ["sample", "--calibrate", "--model", m1] + folders
        + ["--out", out, "--chains", "1"] + CALIBRATE_FAST, "either", "identity",
        keywords=["calibration.json"], out=out)
    bad_rec = j("rec-bad-json")
    shutil.copytree(rec, bad_rec)
    write(os.path.join(bad_rec, "attack.json"), "[]")
    out = j("runs", "bad-record")
    add("record_attack_json_not_an_object", ["sample", "--record", bad_rec, "--data-dir", data,
        "--split", "3,3,3", "--out", out] + SAMPLE_FAST, "error", "identity",
        keywords=["attack.json"], out=out)
    out = j("runs", "chain-above-i64")
    add("chain_above_i64", record_sample + ["--out", out, "--chain", str(1 << 63)] + SAMPLE_FAST, "error", "numbers", keywords=["chain"], out=out,
        note="stored as -1 before")
    out = j("runs", "draws-huge")
    add("draws_99999999999", record_sample + ["--out", out, "--chains", "1", "--draws",
        "99999999999", "--burn-in", "2", "--batch-size", "16", "--lr", "1e-5", "--gamma",
        "1000"], "error", "numbers", keywords=["memory", "draws", "large"], out=out,
        timeout=60)

    # --- Training data and options ------------------------------------------------------------
    out = j("runs", "lr-negative")
    add("train_lr_negative", ["train", "--out", out, "--lr=-1"] + train[:2] + [
        "--epochs", "1", "--width", "4"], "error", "numbers", keywords=["lr", "learning rate"],
        out=out)
    out = j("runs", "batch-size-0")
    add("train_batch_size_0", ["train", "--out", out, "--batch-size", "0", "--data-dir", data,
        "--epochs", "1", "--width", "4"], "error", "numbers", keywords=["batch"], out=out)
    add("bench_batch_0", ["bench", "--batch", "0", "--iters", "1", "--warmup", "0"], "error",
        "numbers", keywords=["batch"])
    for name, mutate in [
            ("idx_huge_count", lambda b: b[:4] + struct.pack(">I", 1 << 31) + b[8:]),
            ("idx_huge_dims", lambda b: b[:8] + struct.pack(">II", 1 << 20, 1 << 20) + b[16:]),
            ("idx_truncated", lambda b: b[:len(b) // 2]),
            ("idx_bad_magic", lambda b: b"\x00\x00\x09\x03" + b[4:]),
            ("idx_empty", lambda b: b"")]:
        folder = j("idx", name)
        write_idx(folder, "train", 50, 1)
        write_idx(folder, "t10k", 20, 2)
        f = os.path.join(folder, "train-images-idx3-ubyte")
        write(f, mutate(read(f)))
        out = j("runs", name)
        add(name, ["train", "--out", out, "--data-dir", folder, "--epochs", "1", "--width", "4"],
            "error", "data", keywords=["train-images-idx3-ubyte"], guard=[f], out=out,
            timeout=60)
    folder = j("idx", "label_count_mismatch")
    write_idx(folder, "train", 50, 1)
    write_idx(folder, "t10k", 20, 2)
    lab = os.path.join(folder, "train-labels-idx1-ubyte")
    write(lab, read(lab)[:8 + 40])
    write(lab, read(lab)[:4] + struct.pack(">I", 40) + read(lab)[8:])
    out = j("runs", "label-count")
    add("idx_label_count_mismatch", ["train", "--out", out, "--data-dir", folder, "--epochs",
        "1", "--width", "4"], "error", "data", keywords=["label"], out=out)
    folder = j("idx", "label_11")
    write_idx(folder, "train", 50, 1)
    write_idx(folder, "t10k", 20, 2)
    lab = os.path.join(folder, "train-labels-idx1-ubyte")
    write(lab, read(lab)[:8] + bytes([200]) + read(lab)[9:])
    out = j("runs", "label-200")
    add("idx_label_200_of_10_classes", ["train", "--out", out, "--data-dir", folder,
        "--epochs", "1", "--width", "4"], "error", "data", keywords=["label", "200"], out=out)
    out = j("runs", "epochs-0")
    add("train_epochs_0", ["train", "--out", out, "--data-dir", data, "--epochs", "0",
        "--width", "4"], "either", "numbers", keywords=["epoch"], out=out,
        check=lambda r: None)
    out = j("runs", "train-limit-0")
    add("train_limit_0", ["train", "--out", out, "--data-dir", data, "--epochs", "1",
        "--width", "4", "--train-limit", "0"], "error", "numbers", keywords=["limit", "empty"],
        out=out)
    add("threads_0", ["--threads", "0", "bench", "--iters", "1", "--warmup", "0", "--batch",
        "4", "--width", "4"], "either", "numbers", keywords=["threads"],
        check=lambda r: None)
    out = j("runs", "attack-rate")
    add("attack_rate_1.5", ["attack", "--attack", "badnets", "--rate", "1.5", "--data-dir",
        data, "--out", out, "--epochs", "1", "--width", "4"], "error", "numbers",
        keywords=["rate"], out=out)
    out = j("runs", "split-0")
    add("sample_split_0", record_sample[:-1] + ["0,0,0", "--out", out] + SAMPLE_FAST, "error",
        "numbers", keywords=["split"], out=out)
    out = j("runs", "split-huge")
    add("sample_split_beyond_the_data", record_sample[:-1] + ["1000,1000,1000", "--out", out]
        + SAMPLE_FAST, "error", "numbers", keywords=["split", "images", "class"], out=out)
    bad_results = j("rec-bad-results")
    shutil.copytree(rec, bad_results)
    write(os.path.join(bad_results, "results.json"), "\"just a string\"")
    add("table_results_json_not_an_object", ["table", bad_results], "error", "data",
        keywords=["results.json"], guard=[bad_results])
    blocker = write(j("runs", "a-file"), "not a folder\n")
    add("train_out_unwritable", ["train", "--out", os.path.join(blocker, "sub")] + train,
        "error", "outputs", keywords=["a-file"], guard=[blocker], late=["epoch"],
        note="must fail before training")
    add("calibrate_out_unwritable", model_calibrate(m1, os.path.join(blocker, "sub")), "error",
        "outputs", keywords=["a-file"], guard=[blocker], late=["candidate", "probe", "reliab"],
        note="must fail before the probes")

    # --- Process behaviour ----------------------------------------------------------------------
    add("info_into_closed_pipe", None, "ok", "process", runner="closed_pipe",
        check=lambda r: None, note="vigil info m | head -1")
    add("sample_help_opens_with_its_own_doc", ["sample", "--help"], "ok", "docs",
        check=lambda r: (("NOT_MET", "--help opens with another struct's doc ('The sampler's"
                          " settings that calibration keeps')") if r.stdout.startswith(
                              "The sampler's settings") else None))
    add("sigterm_during_train", None, "ok", "process", runner="sigterm",
        check=lambda r: None, note="SIGTERM checkpoints like SIGINT")
    add("sigint_during_train_control", None, "ok", "process", runner="sigint",
        check=lambda r: None)

    special = {"closed_pipe": lambda: closed_pipe(v, m1),
               "sigterm": lambda: interrupted_train(v, j, data, signal.SIGTERM),
               "sigint": lambda: interrupted_train(v, j, data, signal.SIGINT)}
    for c in cases:
        if c.runner:
            c.runner = special[c.runner]
    return cases


def closed_pipe(v, model):
    """`vigil info --tensors m | head -1`, deterministically: the reading end is closed before
    vigil writes, so every write fails with EPIPE."""
    r_fd, w_fd = os.pipe()
    os.close(r_fd)  # before the start: a reader closed later would race vigil's writes
    start = time.time()
    p = subprocess.Popen([v.binary, "info", "--tensors", model], stdout=w_fd,
                         stderr=subprocess.PIPE, env=v.env, cwd=v.work, preexec_fn=limit_memory)
    os.close(w_fd)
    _, err = p.communicate(timeout=60)
    # Exiting quietly is fine: any exit code but a panic's 101, or death by SIGPIPE itself
    # (what `cat` and ripgrep do); a panic, an abort or any other signal is classified as such.
    rc = p.returncode
    quiet = rc is not None and ((rc > 0 and rc != 101) or rc == -signal.SIGPIPE)
    return Result(0 if quiet else rc, "",
                  err.decode("utf-8", "replace"), time.time() - start)


def interrupted_train(v, j, data, sig):
    """A training run sent `sig` after 2 s. It must stop by itself (not be killed by the
    signal), leave a checkpoint in resume/, and continue from it on the next run."""
    out = j("runs", f"train-{sig.name}")
    args = ["train", "--out", out, "--data-dir", data, "--epochs", "400", "--width", "8",
            "--batch-size", "32"]
    start = time.time()
    p = subprocess.Popen([v.binary] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=v.env, cwd=v.work, preexec_fn=limit_memory)
    time.sleep(2.0)
    p.send_signal(sig)
    try:
        out_s, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        out_s, err = p.communicate()
        return Result(None, "", err.decode("utf-8", "replace"), time.time() - start, True)
    err = err.decode("utf-8", "replace")
    rc = p.returncode
    if rc is not None and rc < 0:
        return Result(rc, "", err, time.time() - start)
    if not os.path.exists(os.path.join(out, "resume", "state.json")):
        return Result(0, "", err + "\n[no resume/state.json after the signal]",
                      time.time() - start)
    # Interrupted with a checkpoint: a nonzero exit (130 for SIGINT) is the convention, so
    # report it as success for the classification and check the message instead.
    stopped = "stopped" in err or "checkpoint" in err
    return Result(0, out_s.decode("utf-8", "replace"),
                  err if stopped else err + "\n[no word of the stop]", time.time() - start)


def run_case(v, case):
    guard_before = {p: tree_state(p) for p in case.guard}
    out_before = tree_state(case.out) if case.out else None
    if case.runner:
        r = case.runner()
    else:
        r = v.run(case.args, timeout=case.timeout)
    out_after = tree_state(case.out) if case.out else None
    if case.runner and r.rc == 0 and "[no " in r.stderr:
        return r, "SILENT_WRONG", r.stderr.strip().splitlines()[-1]
    outcome, detail = classify(case, r, guard_before, out_before, out_after)
    return r, outcome, detail


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("binary", help="the vigil binary to test, e.g. target/release/vigil")
    ap.add_argument("--label", default="run", help="name of the result files")
    ap.add_argument("--results", default=None,
                    help="folder for the results (default: results/hostile-inputs)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--only", default=None, help="run only cases whose name contains this")
    args = ap.parse_args()

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    results = args.results or os.path.join(repo, "results", "hostile-inputs")
    binary = os.path.abspath(args.binary)
    version = subprocess.run([binary, "--version"], capture_output=True, text=True)
    if version.returncode != 0:
        sys.exit(f"{binary} --version failed: {version.stderr}")
    work = tempfile.mkdtemp(prefix="vigil-hostile-")
    v = Runner(binary, work)
    started = time.time()
    print(f"vigil: {binary} ({version.stdout.strip()}, sha256 {sha(binary)[:16]}, "
          f"built {time.strftime('%Y-%m-%d %H:%M', time.localtime(os.path.getmtime(binary)))})",
          flush=True)
    cases = build(v, work)
    print(f"setup: {time.time() - started:.0f}s in {work}; {len(cases)} cases", flush=True)
    if args.only:
        cases = [c for c in cases if args.only in c.name]

    rows, lines = [], []
    for case in cases:
        r, outcome, detail = run_case(v, case)
        detail = detail.replace(work + "/", "")  # paths relative to the temporary folder
        passed = outcome in PASS[case.expect]
        line = (f"{'pass' if passed else 'FAIL'}  {outcome:<16} {case.group:<9} {case.name:<46}"
                f" {r.seconds:5.1f}s  {detail}")
        print(line, flush=True)
        lines.append(line)
        rows.append({"case": case.name, "group": case.group, "expect": case.expect,
                     "outcome": outcome, "pass": passed, "exit": r.rc,
                     "seconds": round(r.seconds, 2), "detail": detail, "note": case.note,
                     "command": "vigil " + " ".join(os.path.relpath(str(a), work)
                                                    if str(a).startswith(work) else str(a)
                                                    for a in (case.args or ["<special>"]))})
    counts = collections.Counter(r["outcome"] for r in rows)
    bar = {k: counts.get(k, 0) for k in ["PANIC", "SILENT_WRONG", "LOST_FILE"]}
    summary = [
        "",
        f"cases: {len(rows)}, passed: {sum(r['pass'] for r in rows)}, "
        f"failed: {sum(not r['pass'] for r in rows)}",
        "outcomes: " + ", ".join(f"{k} {counts[k]}" for k in sorted(counts)),
        "bar (issue 24: all zero): " + ", ".join(f"{k} {n}" for k, n in bar.items()),
        f"total time {time.time() - started:.0f}s",
    ]
    for line in summary:
        print(line)
    os.makedirs(results, exist_ok=True)
    header = [f"# hostile inputs, label {args.label}: {time.strftime('%Y-%m-%d %H:%M')}",
              f"# vigil {binary} ({version.stdout.strip()}, sha256 {sha(binary)[:16]}, built "
              f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(os.path.getmtime(binary)))})",
              "# columns: pass/FAIL, outcome, group, case, seconds, detail"]
    with open(os.path.join(results, f"{args.label}.txt"), "w") as f:
        f.write("\n".join(header + lines + summary) + "\n")
    with open(os.path.join(results, f"{args.label}.json"), "w") as f:
        json.dump({"label": args.label, "binary_sha256": sha(binary), "counts": dict(counts),
                   "bar": bar, "cases": rows}, f, indent=1)
        f.write("\n")
    with open(os.path.join(results, f"{args.label}.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    if args.keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if any(bar.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
