"""Loads a vigil text run folder (config.json, model.safetensors, tokenizer.json) with
transformers and compares its logits and token ids with `vigil generate --logits` on the same
prompts: the check that a model vigil trains is a Hugging Face model as it stands.

    vigil generate --model RUN --prompt "..." --prompt "..." --max-new 8 \
        --out /tmp/v.json --logits /tmp/v.npz
    python3 bench/peer/lm_run_folder.py RUN /tmp/v.json /tmp/v.npz
"""
import json
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast


def main():
    run, vigil_json, vigil_npz = sys.argv[1:4]
    model = AutoModelForCausalLM.from_pretrained(run, dtype=torch.float32).eval()
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=f"{run}/tokenizer.json")
    results = json.load(open(vigil_json))
    logits_v = np.load(vigil_npz)
    worst = 0.0
    for i, r in enumerate(results):
        ids = tokenizer(r["text"], add_special_tokens=False)["input_ids"]
        assert ids == r["ids"], f"prompt {i}: token ids differ: {ids} vs {r['ids']}"
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].numpy()
        diff = float(np.abs(logits - logits_v[f"logits_{i}"]).max())
        worst = max(worst, diff)
        greedy = model.generate(
            torch.tensor([ids]), max_new_tokens=len(r["generated"]), do_sample=False,
            eos_token_id=None, pad_token_id=0,
        )[0, len(ids):].tolist()
        same = greedy == r["generated"]
        print(f"prompt {i}: {len(ids)} tokens, max |logit diff| {diff:.2e}, greedy equal: {same}")
        assert same, f"greedy differs: {greedy} vs {r['generated']}"
    print(f"worst logit difference {worst:.2e}")
    assert worst < 1e-4


if __name__ == "__main__":
    main()
