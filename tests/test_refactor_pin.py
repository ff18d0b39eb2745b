"""Pinned results of four short CPU runs with fixed seeds: GP-TS masking, INGENIOUS subsets,
progressive growth, and all three together. For each: the interaction history (without its
timing field), the logged training and validation losses, and a sha256 of the final weights.

The expected values were produced by the code before the task became a driver of training
extensions; a change of any of them means that a refactor changed what training does."""

import hashlib
import json

import pytest
import torch

from conftest import TINY_MODEL, json_log, run_fairseq

TASK = ["--task", "gpts_mlm", "--criterion", "gpts_masked_lm", "--num-workers", "0", "--max-update", "12",
        "--no-epoch-checkpoints"]
GP_TS = ["--gpts-policy", "gp-ts", "--gpts-interaction-updates", "3", "--gpts-reward-batches", "2"]
INGENIOUS = ["--subset-selector", "ingenious", "--subset-partition-size", "40", "--subset-warmup-epochs", "1"]
GROWTH = ["--arch", "gpts_roberta_grow", "--grow-stages", "0:layers=1,ffn=16,tokens=32;4:layers=2,ffn=32;8:ffn=64,tokens=64",
          "--grow-rewarm-updates", "2"]
RUNS = {"gp-ts": GP_TS, "subsets": INGENIOUS, "growth": GROWTH, "all": [*GP_TS, *INGENIOUS, *GROWTH]}
TIMING_FIELDS = ("decision_time_s",)


def weights_sha256(path) -> str:
    """sha256 over the model's parameters and buffers (names sorted, little-endian bytes)."""
    state = torch.load(path, map_location="cpu", weights_only=False)["model"]
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().contiguous().cpu().reshape(-1)
        digest.update(name.encode() + str(tensor.dtype).encode() + str(tuple(tensor.shape)).encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def history(save_dir) -> list[dict]:
    path = save_dir / "gpts_history.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{key: value for key, value in record.items() if key not in TIMING_FIELDS} for record in records]


def observe(data, save_dir, extra) -> dict:
    """What a run pins: its losses, its history (a digest of the whole and the decisions in
    clear) and its final weights."""
    proc = run_fairseq([data, *TINY_MODEL, *TASK, *extra, "--save-dir", save_dir])
    records = history(save_dir)
    return {
        "train_loss": [record["loss"] for record in json_log(proc, "train_inner")],
        "valid_loss": [record["valid_loss"] for record in json_log(proc, "valid")],
        "interactions": [(r["update"], r["end_update"], r["psi"]["mask_prob"], r["val_loss"], r["reward"],
                          (r["next_psi"] or {}).get("mask_prob")) for r in records],
        "history_sha256": hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest(),
        "weights_sha256": weights_sha256(save_dir / "checkpoint_last.pt"),
    }


EXPECTED = {'gp-ts': {'train_loss': ['10.008', '9.948', '9.927', '9.847', '9.75', '9.852', '9.662', '9.445', '9.742', '9.438',
                          '9.429', '9.376'],
           'valid_loss': ['8.857'],
           'interactions': [[0, 3, 0.15, 9.721068168913265, 0.02374701627041684, 0.1],
                            [3, 6, 0.1, 9.467977276915818, 0.026035296492087075, 0.05],
                            [6, 9, 0.05, 9.144370440595267, 0.034179088822862594, 0.5],
                            [9, 12, 0.5, 8.818137238104208, 0.035675851564672845, None]],
           'history_sha256': '90d84356a3f1baa75a463fe6bbed912fdf425a943eb93a152952c357a5ba52fc',
           'weights_sha256': 'df36f15c581c76cf4e6ae1abcff91360c0156356c9466cb829406c4607fba769'},
 'subsets': {'train_loss': ['10.004', '9.948', '9.924', '9.861', '9.81', '9.787', '9.777', '9.564', '9.426', '9.439',
                            '9.196', '9.512'],
             'valid_loss': ['9.783', '9.543', '9.244', '8.925'],
             'interactions': [],
             'history_sha256': '4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945',
             'weights_sha256': 'b2b0ee39b52248e8cff7e34e0acc0be999b3cb012535808a0fd014ade7d1a543'},
 'growth': {'train_loss': ['9.995', '9.958', '9.925', '9.861', '9.72', '9.786', '9.646', '9.513', '9.567', '9.449',
                           '9.332', '9.584'],
            'valid_loss': ['8.865'],
            'interactions': [],
            'history_sha256': '4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945',
            'weights_sha256': 'fcf2568697018399911f2d4c05b2b9564d7753ae975a79bcf8dd0d2a4fcabd5b'},
 'all': {'train_loss': ['10.003', '9.95', '9.923', '9.875', '9.837', '9.818', '9.745', '9.636', '9.391', '9.619',
                        '9.589', '9.353'],
         'valid_loss': ['9.789', '9.616', '9.392', '9.069'],
         'interactions': [[0, 3, 0.15, 9.776380235406222, 0.018175848452827232, 0.1],
                          [3, 6, 0.1, 9.59279999181003, 0.0187779361252067, 0.05],
                          [6, 9, 0.05, 9.370284099046238, 0.0231961359513144, 0.5],
                          [9, 12, 0.5, 9.044506459488133, 0.03476710376276256, None]],
         'history_sha256': '7fb6fe18fa11b981dbfc4486b83f928b86743facf2412c58042782fa5f9a985d',
         'weights_sha256': '831e6488fedd3d457b9a0ee948ca89a438e190cef5437abde10b961a1d37dee0'}}


@pytest.mark.parametrize("name", list(RUNS))
def test_run_is_pinned(tiny_corpus, tmp_path, name):
    observed = json.loads(json.dumps(observe(tiny_corpus, tmp_path, RUNS[name])))  # tuples as lists
    assert observed == EXPECTED[name]
