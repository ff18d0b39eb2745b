"""gpts_flexibert inside fairseq-train: a heterogeneous model with every operation trains with
GP-TS masking and resumes bit for bit; a bad layer string stops before training; a real
search (fairseq-train per query, weight transfer through --finetune-from-model) runs and
resumes. fairseq-train starts cost more than the tiny training, so each run checks several
properties."""

import json

import torch

from conftest import TINY_MODEL, json_log, run_fairseq
from gpts_fairseq.flexibert.runner import TrainSettings
from gpts_fairseq.flexibert.search import Search, SearchConfig, fairseq_trainer

LAYERS = "sdp:h32:a2:f64x1,wma:h32:a2:f64x2,dft:h16:a2:f32x1,dct:h32:a4:f64x1,c5:h32:a2:f64x1,c13:h32:a4:f32x1"
FLEXI = ["--arch", "gpts_flexibert", "--flexi-layers", LAYERS, "--task", "gpts_mlm", "--criterion", "gpts_masked_lm",
         "--num-workers", "0"]
GP_TS = ["--gpts-policy", "gp-ts", "--gpts-interaction-updates", "3", "--gpts-reward-batches", "2"]


def _model_state(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def test_heterogeneous_model_resumes_bit_for_bit_with_gp_ts(tiny_corpus, tmp_path):
    common = [tiny_corpus, *TINY_MODEL, *FLEXI, *GP_TS, "--max-update", "10", "--save-interval-updates", "5",
              "--validate-interval-updates", "5", "--dropout", "0.1"]
    full = run_fairseq([*common, "--save-dir", tmp_path / "full"])
    assert "FlexiRobertaModel" in full.stdout + full.stderr
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    (resumed_dir / "checkpoint_last.pt").write_bytes((tmp_path / "full" / "checkpoint_1_5.pt").read_bytes())
    resumed = run_fairseq([*common, "--save-dir", resumed_dir])
    assert "Loaded checkpoint" in resumed.stdout + resumed.stderr

    def after_5(proc, tag, fields):
        return [tuple(r.get(f) for f in fields) for r in json_log(proc, tag) if int(r[fields[0]]) > 5]

    train = ("num_updates", "loss", "psi_rho", "psi_gamma", "psi_lambda")
    assert len(after_5(full, "train_inner", train)) == 5
    assert after_5(resumed, "train_inner", train) == after_5(full, "train_inner", train)
    assert after_5(resumed, "valid", ("valid_num_updates", "valid_loss")) == \
        after_5(full, "valid", ("valid_num_updates", "valid_loss"))
    final, again = _model_state(tmp_path / "full" / "checkpoint_last.pt"), _model_state(resumed_dir / "checkpoint_last.pt")
    assert final.keys() == again.keys() and all(torch.equal(final[k], again[k]) for k in final)
    saved = torch.load(tmp_path / "full" / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert saved["cfg"]["model"].flexi_layers == LAYERS  # the checkpoint carries its architecture


def test_bad_layer_string_is_named_before_training(tiny_corpus, tmp_path):
    proc = run_fairseq([tiny_corpus, *TINY_MODEL, *FLEXI[:2], "--flexi-layers", "sdp:h32:a2:f64x1,fft:h32:a2:f64x1",
                        *FLEXI[4:], "--max-update", "2", "--no-save", "--save-dir", tmp_path], check=False)
    assert proc.returncode != 0
    assert "argument --flexi-layers: unknown operation 'fft'" in proc.stderr
    assert "num. model params" not in proc.stdout + proc.stderr


def test_real_search_with_weight_transfer_resumes(tiny_corpus, tmp_path):
    """Four queries of 6 updates (3 when inherited); the third query's run is deleted as if
    killed before its result was recorded: the resumed search trains the same model again."""
    space = {"layers": [1, 2], "ops": ["sdp", "dft", "c5"], "hidden": [16], "heads": [2], "ffn_dim": [32],
             "ffn_stacks": [1, 2]}
    config = SearchConfig(method="gp-bo", seed=1, budget=4, initial=2, patience=0, library_size=50, space=space)
    settings = TrainSettings(updates=6, transfer_updates=3, tokens_per_sample=32, batch_size=4, max_valid_steps=2)
    out = tmp_path / "search"
    queries = Search(out, config, fairseq_trainer(out, tiny_corpus, settings, seed=1), log=lambda line: None).run()
    assert len(queries) == 4 and all(q["loss"] > 0 and q["params"] > 0 for q in queries)
    for query in queries[1:]:  # every later query inherits at least the embeddings (one hidden size)
        assert (out / "runs" / f"q{query['query']:03d}" / "transfer.pt").exists()
        log = (out / "runs" / f"q{query['query']:03d}" / "stdout.log").read_text()
        assert "loading pretrained model from" in log
        assert query["updates"] == (3 if query["shared_fraction"] >= 0.8 else 6)
    state = json.loads((out / "search.json").read_text())
    state["pending"] = {"index": queries[3]["index"], "kind": queries[3]["kind"]}
    state["queries"] = state["queries"][:3]
    (out / "search.json").write_text(json.dumps(state))
    resumed = Search(out, config, fairseq_trainer(out, tiny_corpus, settings, seed=1), log=lambda line: None).run()
    assert [q["index"] for q in resumed] == [q["index"] for q in queries]
    assert resumed[3]["loss"] == queries[3]["loss"]  # the finished run is found, not retrained differently
