"""Masking throughput: the compiled op vs HuggingFace-style torch masking vs fairseq's
MaskTokensDataset vs a plain copy of the same bytes, in million tokens per second.

    python -m benchmarks.masking [--quick] [--out benchmarks/results/masking.json]

All methods side by side in one run: vocabulary 50k, ``PSI``, batches ``SHAPES``; fairseq has
only its exact per-sequence count, so its number is the baseline for both modes.
"""

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import harness
from gpts_fairseq.masking import MaskingSpec, MaskTokensArgs, Psi, ops
from gpts_fairseq.runtime import single_thread

VOCAB = 50_000
BOS, PAD, EOS, UNK = 0, 1, 2, 3
MASK = VOCAB - 1
PSI = Psi(0.15, 0.1, 0.1)
SHAPES = ((64, 512), (256, 128))
TARGETS = {"bernoulli": {"hf": 10.0, "fairseq": 200.0}, "exact": {"hf": 5.0}}


def token_rows(batch, length, seed=0):
    tokens = np.random.default_rng(seed).integers(4, MASK, size=(batch, length))
    tokens[:, 0], tokens[:, -1] = BOS, EOS
    return torch.from_numpy(tokens)


def seconds_per_call(function, *, min_time, min_calls=5):
    """Median wall time of one call, after a warm-up call."""
    function()
    times, started = [], time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - started < min_time:
        begin = time.perf_counter()
        function()
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def op_masking(tokens, exact):
    spec = MaskingSpec.build(vocab_size=VOCAB, special_ids=[BOS, PAD, EOS, UNK], mask_idx=MASK, pad_idx=PAD, exact=exact)
    args = MaskTokensArgs.build(tokens, torch.arange(tokens.shape[0]), spec, PSI, seed=1, step=1)
    step = iter(range(1, 2**31))
    return lambda: ops.mask_tokens(args._replace(step=next(step)))  # a new masking epoch each call, as in training


def huggingface_masking(tokens):
    """HuggingFace DataCollatorForLanguageModeling.torch_mask_tokens, written for this batch:
    three torch.bernoulli passes (select, <mask> 80%, random half of the rest)."""
    special = torch.zeros(VOCAB, dtype=torch.bool)
    special[[BOS, PAD, EOS, UNK, MASK]] = True
    mask_share = 1.0 - PSI.leave_unmasked_prob - PSI.random_token_prob
    random_share = PSI.random_token_prob / (PSI.random_token_prob + PSI.leave_unmasked_prob)

    def run():
        source, target = tokens.clone(), tokens.clone()
        probability = torch.full(tokens.shape, PSI.mask_prob)
        probability.masked_fill_(special[tokens], 0.0)
        selected = torch.bernoulli(probability).bool()
        target[~selected] = PAD
        to_mask = torch.bernoulli(torch.full(tokens.shape, mask_share)).bool() & selected
        source[to_mask] = MASK
        to_random = torch.bernoulli(torch.full(tokens.shape, random_share)).bool() & selected & ~to_mask
        source[to_random] = torch.randint(4, MASK, tokens.shape)[to_random]
        return source, target

    return run


def fairseq_masking(tokens):
    """fairseq's MaskTokensDataset.apply_mask (source and target datasets) over the rows."""
    from fairseq.data import Dictionary, MaskTokensDataset

    dictionary = Dictionary()
    for index in range(4, MASK):
        dictionary.add_symbol(f"w{index}")
    assert dictionary.add_symbol("<mask>") == MASK
    rows = list(tokens)
    source_set, target_set = MaskTokensDataset.apply_mask(
        rows, dictionary, pad_idx=PAD, mask_idx=MASK, seed=1, mask_prob=PSI.mask_prob,
        leave_unmasked_prob=PSI.leave_unmasked_prob, random_token_prob=PSI.random_token_prob)
    epoch = iter(range(1, 2**31))

    def run():
        current = next(epoch)  # a new epoch each call: no LRU cache hits
        for dataset in (source_set, target_set):
            dataset.set_epoch(current)
        return [(source_set[i], target_set[i]) for i in range(len(rows))]

    return run


def machine_info():
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "load_average": list(os.getloadavg()), "time": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def measure(min_time):
    rows = []
    for batch, length in SHAPES:
        tokens = token_rows(batch, length)
        common = {"hf": seconds_per_call(huggingface_masking(tokens), min_time=min_time),
                  "fairseq": seconds_per_call(fairseq_masking(tokens), min_time=min_time, min_calls=3),
                  "copy": seconds_per_call(lambda: (tokens.clone(), tokens.clone()), min_time=min_time)}
        for mode in ("bernoulli", "exact"):
            op_time = seconds_per_call(op_masking(tokens, mode == "exact"), min_time=min_time)
            with single_thread():
                op_one_thread = seconds_per_call(op_masking(tokens, mode == "exact"), min_time=min_time)
            seconds = {**common, "op": op_time, "op_1_thread": op_one_thread}
            mtok = {name: tokens.numel() / s / 1e6 for name, s in seconds.items()}
            rows.append({"batch": f"{batch}x{length}", "mode": mode, "mtokens_per_s": mtok,
                         "speedup": {name: mtok["op"] / mtok[name] for name in ("hf", "fairseq", "copy")}})
    return rows


def table(rows):
    def cells(row):
        m, r = row["mtokens_per_s"], row["speedup"]
        return [row["batch"], row["mode"], f"{m['op']:.0f}", f"{m['op_1_thread']:.0f}", f"{m['hf']:.1f}",
                f"{m['fairseq']:.2f}", f"{m['copy']:.0f}", f"{r['hf']:.1f}x", f"{r['fairseq']:.0f}x"]

    return harness.md_table(["batch", "mode", "op", "op (1 thread)", "HF torch (b)", "fairseq (c)", "copy (d)",
                             "op / HF", "op / fairseq"], "l" * 9, map(cells, rows))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short timing (a smoke run)")
    parser.add_argument("--out", type=Path, default=harness.RESULTS_ROOT / "masking.json")
    options = parser.parse_args()
    if not ops.is_available():
        raise SystemExit("the extension is not built: pip install --no-build-isolation -e .")
    rows = measure(min_time=0.05 if options.quick else 1.0)
    for row in rows:
        row["targets_met"] = {name: row["speedup"][name] >= target for name, target in TARGETS[row["mode"]].items()}
    print("million tokens / s (source and target)")
    print(table(rows))
    harness.write_json(options.out, {"machine": machine_info(), "psi": PSI.as_dict(), "vocab": VOCAB, "targets": TARGETS,
                                     "rows": rows})
    print(f"wrote {options.out}")


if __name__ == "__main__":
    main()
