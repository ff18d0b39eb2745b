"""FlexiBERT / BOSHNAS without fairseq-train: each operation against an independent reference
with padding kept out, the grammar and the design space (bad input named), the edit distance
is a metric, MDS, weight transfer, and the search loop resuming after a kill."""

import itertools
import json
import random

import numpy as np
import pytest
import scipy.fft
import torch

from gpts_fairseq.flexibert.embedding import classical_mds, distance_matrix, edit_distance
from gpts_fairseq.flexibert.model import resolve_layers
from gpts_fairseq.flexibert.ops import AttentionMixer, ConvMixer, TransformMixer, build_mixer
from gpts_fairseq.flexibert.search import Search, SearchConfig
from gpts_fairseq.flexibert.space import OPS, DesignSpace, LayerSpec, format_layers, parse_layers
from gpts_fairseq.flexibert.transfer import build_model, transfer_weights

LENGTHS = (9, 6, 3)  # a batch of three sequences, right-padded to 9


def padded_batch(hidden, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(max(LENGTHS), len(LENGTHS), hidden, generator=generator, dtype=dtype)
    padding = torch.arange(max(LENGTHS)).unsqueeze(0) >= torch.tensor(LENGTHS).unsqueeze(1)
    return x, padding


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_dft_is_the_real_part_of_numpy_fft2_per_sequence_and_head(heads):
    x, padding = padded_batch(8)
    out = TransformMixer("dft", 8, heads)(x, padding)
    width = 8 // heads
    for b, length in enumerate(LENGTHS):
        for h in range(heads):
            block = slice(h * width, (h + 1) * width)
            reference = np.fft.fft2(x[:length, b, block].numpy()).real
            np.testing.assert_allclose(out[:length, b, block].numpy(), reference, atol=1e-10)
        assert out[length:, b].abs().max().item() == 0.0 if length < max(LENGTHS) else True


@pytest.mark.parametrize("heads", [1, 2])
def test_dct_is_scipys_orthonormal_dct2_and_a_hand_built_matrix(heads):
    x, padding = padded_batch(8)
    out = TransformMixer("dct", 8, heads)(x, padding)
    width = 8 // heads
    for b, length in enumerate(LENGTHS):
        n = np.arange(length)
        hand = np.sqrt(2 / length) * np.cos(np.pi * (2 * n[None, :] + 1) * n[:, None] / (2 * length))
        hand[0] /= np.sqrt(2)
        for h in range(heads):
            block = x[:length, b, h * width:(h + 1) * width].numpy()
            reference = scipy.fft.dctn(block, type=2, norm="ortho")
            np.testing.assert_allclose(out[:length, b, h * width:(h + 1) * width].numpy(), reference, atol=1e-10)
            m = np.arange(width)
            hand_h = np.sqrt(2 / width) * np.cos(np.pi * (2 * m[None, :] + 1) * m[:, None] / (2 * width))
            hand_h[0] /= np.sqrt(2)
            np.testing.assert_allclose(hand @ block @ hand_h.T, reference, atol=1e-10)
        assert float(out[length:, b].abs().sum()) == 0.0


@pytest.mark.parametrize("op", ["c5", "c9", "c13"])
def test_dynamic_convolution_matches_a_direct_loop(op):
    torch.manual_seed(0)
    hidden, heads = 8, 2
    mixer = ConvMixer(op, hidden, heads, weight_dropout=0.0).double().eval()
    x, padding = padded_batch(hidden)
    out = mixer(x, padding)
    kernel = int(op[1:])
    with torch.no_grad():
        for b, length in enumerate(LENGTHS):
            h = mixer.in_proj(x[:length, b])  # length x C
            weights = torch.softmax(mixer.conv.weight_linear(h).view(length, heads, kernel), dim=-1)
            conv = torch.zeros_like(h)
            for t, c, k in itertools.product(range(length), range(hidden), range(kernel)):
                source = t + k - kernel // 2
                if 0 <= source < length:
                    conv[t, c] += weights[t, c // (hidden // heads), k] * h[source, c]
            torch.testing.assert_close(out[:length, b], mixer.out_proj(conv), rtol=1e-9, atol=1e-9)
            assert float(out[length:, b].abs().sum()) == 0.0


def test_weighted_attention_with_identity_weight_is_scaled_dot_product():
    torch.manual_seed(0)
    sdp, wma = AttentionMixer("sdp", 8, 2, 0.0).double().eval(), AttentionMixer("wma", 8, 2, 0.0).double().eval()
    wma.attention.load_state_dict(sdp.attention.state_dict())
    x, padding = padded_batch(8)
    torch.testing.assert_close(wma(x, padding), sdp(x, padding))
    with torch.no_grad():
        wma.score_weight.mul_(3.0)
    assert not torch.allclose(wma(x, padding), sdp(x, padding))


@pytest.mark.parametrize("op", OPS)
def test_every_operation_keeps_padding_out(op):
    torch.manual_seed(0)
    mixer = build_mixer(LayerSpec(op, 8, 2, 16, 1)).double().eval()
    x, padding = padded_batch(8)
    x[padding.transpose(0, 1)] = 1e3  # garbage at padded positions must not leak
    with torch.no_grad():
        out = mixer(x, padding)
    for b, length in enumerate(LENGTHS):
        with torch.no_grad():
            alone = mixer(x[:length, b:b + 1], None)
        torch.testing.assert_close(out[:length, b:b + 1], alone, rtol=1e-9, atol=1e-9)
        assert float(out[length:, b].abs().sum()) == 0.0


def test_whole_model_logits_ignore_padding():
    layers = parse_layers("sdp:h8:a2:f16x1,dft:h16:a2:f16x2,c5:h16:a4:f8x1,dct:h8:a2:f16x1,wma:h8:a2:f16x1")
    model = build_model(layers, vocab=20, max_positions=16, seed=3).eval()
    tokens = torch.tensor([[0, 5, 6, 7, 8, 2], [0, 9, 10, 2, 1, 1]])
    with torch.no_grad():
        batch, _ = model(tokens)
        alone, _ = model(tokens[1:, :4])
    torch.testing.assert_close(batch[1, :4], alone[0], rtol=1e-5, atol=1e-5)


def test_layer_string_round_trips_and_yaml_file(tmp_path):
    text = "sdp:h256:a4:f1024x1,dft:h128:a2:f512x3,c13:h128:a2:f512x1"
    assert format_layers(parse_layers(text)) == text
    path = tmp_path / "layers.yaml"
    path.write_text("- sdp:h256:a4:f1024x1\n- dft:h128:a2:f512x3\n- c13:h128:a2:f512x1\n")
    assert resolve_layers(str(path)) == parse_layers(text)


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("attn:h128:a2:f512x1", "unknown operation 'attn'"),
    ("sdp:h128:f512x1", "does not read as"),
    ("sdp:h130:a4:f512x1", "hidden 130 is not divisible by heads 4"),
    ("sdp:h128:a2:f0x1", "ffn_dim must be >= 1"),
])
def test_bad_layer_string_is_refused_naming_the_option(text, message):
    with pytest.raises(ValueError, match="--flexi-layers") as error:
        parse_layers(text)
    assert message in str(error.value)


def test_paper_space_and_library():
    space = DesignSpace.load()
    assert space.size() == 112 ** 2 + 112 ** 4
    library = space.library(500, seed=1)
    assert len(library) == 500 == len(set(library)) and library == space.library(500, seed=1)
    assert all(space.contains(model) for model in library)
    assert sum(len(set(model)) == 1 for model in library) == 2 * 112  # every homogeneous model
    small = DesignSpace.from_dict({"layers": [1, 2], "ops": ["dft", "sdp"], "hidden": [8], "heads": [2],
                                   "ffn_dim": [16], "ffn_stacks": [1]})
    assert small.ops == ("sdp", "dft") and len(small.library(100, seed=1)) == 2 + 4  # enumerated


@pytest.mark.parametrize("change, field", [
    ({"ops": ["sdp", "lstm"]}, "'ops' has unknown operation"),
    ({"heads": []}, "'heads' must be a non-empty list"),
    ({"hidden": [128, "big"]}, "'hidden' must hold integers"),
    ({"hidden": [130]}, "fields 'hidden' and 'heads'"),
    ({"depth": [2]}, "unknown field(s) depth"),
    ({"layers": [2, 2]}, "'layers' repeats a value"),
])
def test_bad_design_space_is_refused_naming_the_field(tmp_path, change, field):
    data = {**DesignSpace.load().to_dict(), **change}
    path = tmp_path / "space.yaml"
    path.write_text(json.dumps(data))  # JSON is YAML
    with pytest.raises(ValueError, match="--space") as error:
        DesignSpace.load(path)
    assert field in str(error.value)


def test_bad_design_space_is_refused_by_the_search_command(tmp_path, capsys):
    from gpts_fairseq.flexibert.__main__ import main

    path = tmp_path / "space.yaml"
    path.write_text("layers: [2]\nops: [sdp]\nhidden: [128]\nheads: [2]\nffn_dim: [512]\n")
    code = main(["search", "--data", str(tmp_path), "--out", str(tmp_path / "out"), "--space", str(path)])
    assert code == 2 and "field 'ffn_stacks' must be a non-empty list" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_edit_distance_is_a_metric_on_random_samples():
    library = DesignSpace.load().library(300, seed=2)
    sample = random.Random(0).sample(library, 40)
    d = distance_matrix(sample)
    for i, j in itertools.product(range(len(sample)), repeat=2):
        assert d[i, j] == pytest.approx(edit_distance(sample[i], sample[j]))
        assert (d[i, j] == 0) == (sample[i] == sample[j])
        assert d[i, j] == pytest.approx(d[j, i])
    assert (d[:, None, :] <= d[:, :, None] + d[None, :, :] + 1e-12).all()  # d(i,k) <= d(i,j) + d(j,k)


def test_mds_recovers_euclidean_distances():
    points = np.random.default_rng(0).normal(size=(30, 3))
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
    coordinates = classical_mds(distances, dims=16)
    assert coordinates.shape == (30, 16)
    recovered = np.linalg.norm(coordinates[:, None] - coordinates[None], axis=-1)
    np.testing.assert_allclose(recovered, distances, atol=1e-8)


def test_weight_transfer_copies_exactly_the_matching_layers():
    source = parse_layers("sdp:h8:a2:f16x1,dft:h16:a2:f16x2,c5:h16:a4:f8x1")
    target = parse_layers("sdp:h8:a2:f16x1,dft:h16:a2:f16x2,c9:h16:a4:f8x1,dct:h8:a2:f16x1")
    trained = build_model(source, vocab=20, max_positions=16, seed=1)
    with torch.no_grad():
        for param in trained.parameters():
            param.add_(1.0)  # "trained": far from any fresh initialisation
    model = build_model(target, vocab=20, max_positions=16, seed=2)
    fresh = {name: p.clone() for name, p in model.state_dict().items()}
    transfer = transfer_weights(model, target, trained.layer_specs, trained.state_dict())
    assert (transfer.layers, transfer.embeddings) == (2, True)
    copied = {name for name, p in model.state_dict().items() if not torch.equal(p, fresh[name])}
    source_state = trained.state_dict()
    for name, value in model.state_dict().items():
        inherited = (".layers.0." in name or ".layers.1." in name or ".projections.1." in name
                     or ".layers." not in name and ".projections." not in name)
        if inherited:
            assert torch.equal(value, source_state[name]), name
        else:
            assert torch.equal(value, fresh[name]), name
    assert copied and all(".layers.2." not in n and ".layers.3." not in n and ".projections.3" not in n
                          for n in copied)
    layer_params = sum(p.numel() for n, p in model.named_parameters() if ".layers." in n or ".projections." in n)
    shared = sum(p.numel() for n, p in model.named_parameters()
                 if ".layers.0." in n or ".layers.1." in n or ".projections.1." in n)
    assert (transfer.shared_parameters, transfer.layer_parameters) == (shared, layer_params)
    other = transfer_weights(build_model(target, 20, 16, seed=2), target,
                             parse_layers("sdp:h16:a2:f16x1"), build_model(parse_layers("sdp:h16:a2:f16x1"), 20, 16, 1)
                             .state_dict())
    assert (other.layers, other.embeddings, other.shared_parameters) == (0, False, 0)


def synthetic_loss(layers):
    """A smooth made-up loss over the space (no training): the loop's behaviour only."""
    return (sum(OPS.index(layer.op) * 0.1 + (layer.hidden == 128) * 0.3 + layer.ffn_stacks * 0.05
                for layer in layers) + 0.2 * len(layers))


class Killed(Exception):
    pass


def synthetic_trainer(kill_at=None):
    def train(layers, number, source):
        if number == kill_at:
            raise Killed
        return {"loss": synthetic_loss(layers), "params": sum(layer.hidden * layer.ffn_dim for layer in layers),
                "source": None if source is None else format_layers(source[0])}
    return train


QUICK_SURROGATE = {"hidden": 16, "dropout": 0.1, "mc_samples": 8, "epochs": 60, "lr": 3e-3,
                   "gobi_restarts": 3, "gobi_steps": 20, "gobi_lr": 0.05, "gobi_tolerance": 1e-4}


@pytest.mark.parametrize("method", ["boshnas", "gp-bo", "random"])
def test_search_resumes_after_a_kill_with_the_same_next_query(tmp_path, method):
    config = SearchConfig(method=method, seed=3, budget=9, initial=4, patience=0, library_size=300,
                          surrogate=QUICK_SURROGATE)
    full = Search(tmp_path / "full", config, synthetic_trainer(), log=lambda line: None).run()
    assert len(full) == 9 and len({q["index"] for q in full}) == 9
    with pytest.raises(Killed):
        Search(tmp_path / "killed", config, synthetic_trainer(kill_at=6), log=lambda line: None).run()
    state = json.loads((tmp_path / "killed" / "search.json").read_text())
    assert len(state["queries"]) == 6 and state["pending"]["index"] == full[6]["index"]
    resumed = Search(tmp_path / "killed", config, synthetic_trainer(), log=lambda line: None).run()
    assert [q["index"] for q in resumed] == [q["index"] for q in full]
    assert [q["kind"] for q in full[:4]] == ["initial"] * 4
    assert full[0]["neighbour"] is None and all(q["neighbour"] == q["source"] for q in full[1:])
    with pytest.raises(ValueError, match="another configuration"):
        Search(tmp_path / "full", SearchConfig(method=method, seed=4, budget=9, initial=4, library_size=300,
                                               surrogate=QUICK_SURROGATE), synthetic_trainer())


def test_search_stops_after_patience_non_improving_queries(tmp_path):
    config = SearchConfig(method="random", seed=1, budget=200, initial=3, patience=2, library_size=300)
    queries = Search(tmp_path, config, synthetic_trainer(), log=lambda line: None).run()
    losses = [q["loss"] for q in queries]
    assert 5 <= len(queries) < 200
    assert min(losses[-2:]) >= min(losses[:-2])
    assert all(min(losses[k - 2:k]) < min(losses[:k - 2]) for k in range(5, len(losses)))


def test_benchmark_criteria_on_synthetic_results(tmp_path):
    """benchmarks/flexibert.py's scoring: B from the search states (a stopped search carried to
    the budget), A with its plateau rule, C from the transfer ratio."""
    from benchmarks import flexibert as driver

    budget = driver.SEARCH["budget"]
    losses = {"boshnas": [5.0, 4.9, 4.7] + [4.8] * 5, "gp-bo": [5.0] * budget, "random": [5.0, 4.95] + [4.9] * (budget - 2)}
    for seed in (1, 2):
        for method, items in losses.items():
            path = tmp_path / "searches" / f"seed{seed}" / method / "search.json"
            path.parent.mkdir(parents=True)
            layers = ["sdp:h8:a2:f16x1", "sdp:h8:a2:f16x1,dft:h8:a2:f16x1"]
            path.write_text(json.dumps({"queries": [{"loss": x, "layers": layers[n % 2]} for n, x in enumerate(items)]}))
        ratio = 0.5 if seed == 1 else 0.8
        final = {"heterogeneous": layers[1], "heterogeneous_params": 1000, "homogeneous": layers[0],
                 "homogeneous_params": 990, "homogeneous_candidates": 1,
                 "heterogeneous_final": {"valid": 3.5, "test": 3.6}, "homogeneous_final": {"valid": 3.6, "test": 3.7},
                 "transfer": {"ratio": ratio, "neighbour": layers[0], "shared_fraction": 0.0, "target": 3.6,
                              "updates_to_target": 500 * ratio}}
        (tmp_path / f"finals-seed{seed}.json").write_text(json.dumps(final))
    summary = driver.summarise(tmp_path, [1, 2], entropy=3.9)
    assert summary["search"]["boshnas"]["final_mean"] == pytest.approx(4.7)
    assert summary["search"]["boshnas"]["pass"] is True and summary["search"]["gp-bo"]["pass"] is False
    assert summary["search"]["boshnas"]["trained_to_reach_random_final"] == [2, 2]  # 4.9 at its 2nd
    assert summary["search"]["gp-bo"]["trained_to_reach_random_final"] == [None, None]
    assert summary["A"]["verdict"] == "PASS" and summary["C"]["verdict"] == "FAIL"
    assert driver.summarise(tmp_path, [1, 2], entropy=3.55)["A"]["verdict"] == "INCONCLUSIVE (plateau)"
    page = "\n".join(driver.summary_lines(tmp_path, summary))
    assert "| 1 | boshnas | 8 | 4 | 4.700 | – |" in page and "- B, boshnas: mean best after 10 = 4.700 bits" in page
    assert "| heterogeneous | 3.500 | 3.600 |" in page and "- C: FAIL" in page
