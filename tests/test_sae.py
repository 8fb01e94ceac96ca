"""SAEs: files in both published layouts, the model/hook-point rule, feature ranking, the feature vector, the clamp."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from steerlab import IncompatibleVectorError, SAEFileError, UsageError
from steerlab.activations import record_pair_activations
from steerlab.data import pairs_from_texts
from steerlab.sae.clamp import FeatureClamp
from steerlab.sae.feature_vector import feature_vector
from steerlab.sae.features import pair_feature_means, rank_features, top_snippets
from steerlab.sae.formats import read_sae, write_gemma_scope, write_saelens
from steerlab.sae.model import SAE
from steerlab.sae.train import TrainConfig, explained_variance, train_sae
from steerlab.steers import load_steer
from steerlab.vector import SteeringVector
from tiny_model import tiny_lm


def random_sae(d: int = 16, n: int = 48, activation: str = "relu", layer: int = 2, seed: int = 0, **kw) -> SAE:
    g = torch.Generator().manual_seed(seed)
    if activation == "jumprelu":
        kw.setdefault("threshold", torch.rand(n, generator=g) * 0.1)
    if activation == "topk":
        kw.setdefault("k", 6)
    return SAE(
        torch.randn(d, n, generator=g) / d**0.5,
        torch.randn(n, generator=g) * 0.1,
        torch.randn(n, d, generator=g) / d**0.5,
        torch.randn(d, generator=g) * 0.1,
        layer=layer,
        activation=activation,
        **kw,
    )


def same_weights(a: SAE, b: SAE) -> bool:
    return a.tensors().keys() == b.tensors().keys() and all(
        torch.equal(a.tensors()[k], b.tensors()[k]) for k in a.tensors()
    )


def count_forwards(lm) -> list[int]:
    calls = [0]
    lm.model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


# ---- files -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["relu", "jumprelu", "topk"])
def test_saelens_round_trip_is_exact(tmp_path, activation):
    sae = random_sae(activation=activation, model_name="tiny", model_fingerprint="abc", apply_b_dec_to_input=True)
    back = read_sae(write_saelens(sae, tmp_path / "sae"))
    assert same_weights(sae, back)
    assert (
        back.layer,
        back.activation,
        back.k,
        back.model_name,
        back.model_fingerprint,
        back.apply_b_dec_to_input,
    ) == (
        2,
        activation,
        sae.k,
        "tiny",
        "abc",
        True,
    )
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.2.hook_resid_post"  # sae-lens 6.x's own layout


@pytest.mark.parametrize("name", ["params.npz", "params.safetensors"])
def test_gemma_scope_round_trip_is_exact_and_layer_comes_from_the_path(tmp_path, name):
    sae = random_sae(activation="jumprelu", layer=5)
    path = write_gemma_scope(sae, tmp_path / "layer_5" / "width_16k" / "average_l0_82" / name)
    back = read_sae(path)
    assert same_weights(sae, back) and back.layer == 5 and back.activation == "jumprelu"
    assert read_sae(path.parent, layer=3).layer == 3  # the folder holding it, the layer given
    flat = write_gemma_scope(sae, tmp_path / "layer_7_width_16k_l0_big" / name)  # Gemma Scope 2's folder names
    assert read_sae(flat).layer == 7


def test_saelens_hooks_map_to_steerlab_layers_and_others_are_refused(tmp_path):
    folder = write_saelens(random_sae(), tmp_path / "sae")
    cfg_path = folder / "cfg.json"
    cfg = json.loads(cfg_path.read_text())

    def with_hook(hook: str):
        cfg["metadata"]["hook_name"] = hook
        cfg_path.write_text(json.dumps(cfg))
        return read_sae(folder)

    assert with_hook("blocks.3.hook_resid_pre").layer == 2
    assert with_hook("blocks.3.hook_resid_post").layer == 3
    with pytest.raises(SAEFileError) as exc:
        with_hook("blocks.3.hook_mlp_out")
    assert str(exc.value) == (
        f"{cfg_path}: hook 'blocks.3.hook_mlp_out' is not a residual-stream hook (blocks.L.hook_resid_post or "
        "blocks.L.hook_resid_pre); steerlab steers the residual stream only"
    )
    with pytest.raises(SAEFileError, match=re.escape("reads the embeddings (before block 0)")):
        with_hook("blocks.0.hook_resid_pre")


def test_bad_sae_files_are_refused_in_one_line_naming_the_path(tmp_path):
    sae = random_sae(activation="jumprelu")
    tensors = {k: v.clone() for k, v in sae.tensors().items()}
    path = tmp_path / "layer_1" / "params.safetensors"
    path.parent.mkdir()

    def refused(**change) -> str:
        save_file({k: v for k, v in {**tensors, **change}.items() if v is not None}, str(path))
        with pytest.raises(SAEFileError) as exc:
            read_sae(path)
        return str(exc.value)

    assert refused(threshold=None) == f"{path}: no 'threshold'; Gemma Scope SAEs are JumpReLU"
    assert refused(W_dec=torch.zeros(48, 15)) == (
        f"{path}: W_dec has shape (48, 15); expected (48, 16) for W_enc of shape (16, 48)"
    )
    assert (
        refused(b_dec=torch.full((16,), float("nan"))) == f"{path}: tensor 'b_dec' has non-finite values (NaN or Inf)"
    )
    assert refused(b_enc=torch.zeros(48, dtype=torch.int32)) == (
        f"{path}: tensor 'b_enc' is int32; expected float32, float16, bfloat16 or float64"
    )
    assert refused(W_gate=torch.zeros(2)) == (
        f"{path}: unexpected tensor 'W_gate' (expected W_dec, W_enc, b_dec, b_enc, threshold)"
    )
    unnamed = write_gemma_scope(sae, tmp_path / "somewhere" / "params.npz")
    with pytest.raises(SAEFileError) as exc:
        read_sae(unnamed)
    assert str(exc.value) == f"{unnamed}: the path names no layer (layer_N/...); give the layer the SAE reads"
    with pytest.raises(SAEFileError) as exc:
        read_sae(tmp_path)
    assert str(exc.value).startswith(f"{tmp_path}: not an SAE layout steerlab reads")
    folder = write_saelens(random_sae(), tmp_path / "gated")
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "architecture": "gated"}))
    with pytest.raises(SAEFileError) as exc:
        read_sae(folder)
    assert str(exc.value) == (
        f"{folder / 'cfg.json'}: architecture 'gated' is not one steerlab reads (standard, relu, jumprelu, topk)"
    )


def test_encoding_matches_the_published_formulas():
    x = torch.randn(5, 16)
    jump = random_sae(activation="jumprelu", apply_b_dec_to_input=True)
    pre = (x - jump.b_dec) @ jump.W_enc + jump.b_enc
    assert torch.allclose(jump.encode(x), torch.where(pre > jump.threshold, pre.clamp(min=0), torch.zeros(())))
    top = random_sae(activation="topk", k=4)
    f = top.encode(x)
    pre = x @ top.W_enc + top.b_enc
    for row in range(5):
        kept = set(pre[row].argsort(descending=True)[:4].tolist())
        assert {i for i in range(48) if f[row, i] != 0} <= kept
        assert all(torch.isclose(f[row, i], pre[row, i].clamp(min=0)) for i in kept)


# ---- the model rule --------------------------------------------------------------------------------------


def test_hook_point_mismatch_is_refused_before_any_model_work():
    lm = tiny_lm(num_layers=4, hidden=16)
    forwards = count_forwards(lm)
    deep = random_sae(layer=9)
    pairs = pairs_from_texts(["good day"], ["bad day"])
    message = "layer 9 is out of range: tiny-llama-4x16 has layers 0..3 (the SAE reads layer 9)"
    for attempt in (
        lambda: pair_feature_means(lm, deep, pairs.pairs),
        lambda: feature_vector(lm, deep, 0),
        lambda: FeatureClamp(deep, 0, 1.0).attach(lm),
        lambda: top_snippets(lm, deep, [0], ["text"]),
    ):
        with pytest.raises(IncompatibleVectorError) as exc:
            attempt()
        assert str(exc.value) == message
    with pytest.raises(IncompatibleVectorError, match="cannot read tiny-llama-4x16"):
        pair_feature_means(lm, random_sae(model_fingerprint="0" * 16), pairs.pairs)
    with pytest.raises(IncompatibleVectorError, match="set its model_name to 'tiny-llama-4x16'"):
        pair_feature_means(lm, random_sae(model_name="google/gemma-2-2b"), pairs.pairs)
    with pytest.raises(IncompatibleVectorError, match="hidden size 8"):
        pair_feature_means(lm, random_sae(d=8), pairs.pairs)
    assert forwards[0] == 0


# ---- features from pairs ---------------------------------------------------------------------------------

POSITIVE = ["what a good day", "good food here", "a good friend", "so good to see", "good work today", "good news"]
NEGATIVE = ["what a bad day", "bad food here", "a bad friend", "so bad to see", "bad work today", "bad news"]


def test_ranking_recovers_a_planted_feature():
    lm = tiny_lm(num_layers=4, hidden=16)
    pairs = pairs_from_texts(POSITIVE, NEGATIVE)
    acts = record_pair_activations(lm, pairs.pairs, [2])
    pos, neg = acts.layer(2)
    planted = (pos - neg).mean(0)
    sae = random_sae(n=48, layer=2, seed=3)
    sae.W_enc[:, 17] = planted / planted.norm() * sae.W_enc.norm(dim=0).mean()
    sae.W_dec[17] = planted / planted.norm()
    positive, negative = pair_feature_means(lm, sae, pairs.pairs)
    ranked = rank_features(positive, negative)
    assert ranked[0].feature == 17 and ranked[0].sign == 1
    assert ranked[0].auroc == 1.0 > ranked[1].auroc or abs(ranked[0].difference) > abs(ranked[1].difference)
    # the means are each side's answer tokens, encoded one by one (an independent reading, from plain transformers)
    ids = lm.tokenizer("\n", add_special_tokens=True)["input_ids"]
    answer = lm.tokenizer(POSITIVE[0], add_special_tokens=False)["input_ids"]
    hidden = lm.model(input_ids=torch.tensor([ids + answer]), output_hidden_states=True).hidden_states[3][0]
    assert torch.allclose(positive[0], sae.encode(hidden[len(ids) :]).mean(0), atol=1e-5)


def test_top_snippets_mark_the_token_where_a_feature_fires_most():
    lm = tiny_lm(num_layers=4, hidden=16)
    sae = random_sae(layer=1, seed=5)
    texts = ["hello world", "steering vectors", "abc"]
    found = top_snippets(lm, sae, [0, 1], texts, per_feature=2, context=3)
    start = lm.tokenizer.bos_token_id
    for feature, snippets in found.items():
        best = max(
            (float(sae.encode(h[1:].detach())[:, feature].max()), t)
            for t, h in enumerate(
                lm.model(
                    input_ids=torch.tensor([[start] + lm.tokenizer(x, add_special_tokens=False)["input_ids"]]),
                    output_hidden_states=True,
                ).hidden_states[2][0]
                for x in texts
            )
        )
        assert snippets[0].text == best[1] and snippets[0].activation == pytest.approx(best[0], abs=1e-3)
        assert snippets[0].snippet.count("«") == 1


def test_a_feature_saves_as_an_ordinary_vector(tmp_path):
    lm = tiny_lm(num_layers=4, hidden=16)
    sae = random_sae(layer=2, model_name=lm.name, model_fingerprint=lm.fingerprint)
    vector = feature_vector(lm, sae, 7, sign=-1, source="my-sae", stats={"auroc": 0.1})
    loaded = load_steer(vector.save(tmp_path / "f.safetensors"))
    assert isinstance(loaded, SteeringVector) and loaded.kind == "vector" and loaded.layers == [2]
    assert torch.equal(loaded.directions[2], -sae.W_dec[7])
    assert loaded.meta.method == "sae_feature" and loaded.meta.config["feature"] == 7
    assert loaded.meta.fit_stats == {"auroc": 0.1} and set(loaded.meta.residual_norms) == {"2"}


# ---- clamping --------------------------------------------------------------------------------------------


def layer_output(lm, layer: int, steer=None, rows: int = 1, row_scale=None) -> torch.Tensor:
    """The block's output as the next block receives it (read by a hook after the steer's; hidden_states would
    show it before the steer)."""
    ids = torch.tensor([lm.tokenizer("the clamp test", add_special_tokens=True)["input_ids"]] * rows)
    seen = []
    handle = steer.attach(lm, row_scale=row_scale) if steer else None
    reader = lm.layers[layer].register_forward_hook(
        lambda m, a, out: seen.append(out[0] if isinstance(out, tuple) else out)
    )
    try:
        with torch.no_grad():
            lm.model(input_ids=ids)
        return seen[0]
    finally:
        reader.remove()
        if handle:
            handle.remove()


@pytest.mark.parametrize("activation", ["relu", "jumprelu"])
@pytest.mark.parametrize("value", [2.5, 0.0])
def test_clamping_sets_the_feature_to_the_value_by_re_encoding(activation, value):
    lm = tiny_lm(num_layers=4, hidden=16)
    sae = random_sae(layer=1, activation=activation, apply_b_dec_to_input=True, seed=2)
    sae.W_dec[4] = sae.W_enc[:, 4] * 1.7  # encoder and decoder agree in direction, not in scale (gain != 1)
    before = layer_output(lm, 1)
    after = layer_output(lm, 1, FeatureClamp(sae, 4, value))
    read = sae.encode(after)[0, 1:, 4]
    assert torch.allclose(read, torch.full_like(read, value), atol=1e-4)
    assert torch.equal(after[:, 0], before[:, 0])  # the first token (the attention sink) is left alone
    change = after - before  # only along the feature's decoder row
    along = (change @ sae.W_dec[4]) / sae.W_dec[4].norm() ** 2
    assert torch.allclose(change, along[..., None] * sae.W_dec[4], atol=1e-5)


def test_clamp_leaves_rows_scaled_zero_bit_for_bit_and_round_trips(tmp_path):
    lm = tiny_lm(num_layers=4, hidden=16)
    sae = random_sae(layer=1, activation="topk", k=5, model_name=lm.name, model_fingerprint=lm.fingerprint)
    sae.W_dec[4] = sae.W_enc[:, 4]
    clamp = FeatureClamp(sae, 4, 3.0)
    out = layer_output(lm, 1, clamp, rows=2, row_scale=torch.tensor([1.0, 0.0]))
    assert torch.equal(out[1], layer_output(lm, 1)[0]) and not torch.equal(out[0], out[1])
    loaded = load_steer(clamp.save(tmp_path / "c.safetensors", lm, source="sae"))
    assert isinstance(loaded, FeatureClamp) and loaded.kind == "sae_clamp"
    assert same_weights(loaded.sae, sae) and (loaded.feature, loaded.value, loaded.sae.k) == (4, 3.0, 5)
    assert torch.equal(layer_output(lm, 1, loaded), layer_output(lm, 1, clamp))


def test_clamp_refuses_values_the_feature_cannot_read():
    sae = random_sae(activation="jumprelu")
    sae.threshold[3] = 0.5
    with pytest.raises(UsageError, match=r"value 0.2: feature 3 reads 0 or a finite value above 0.5"):
        FeatureClamp(sae, 3, 0.2)
    sae.W_dec[3] = -sae.W_enc[:, 3]
    with pytest.raises(UsageError, match="its encoder and decoder point apart"):
        FeatureClamp(sae, 3, 1.0)


# ---- training --------------------------------------------------------------------------------------------


def test_explained_variance_against_its_definition():
    x, r = torch.randn(50, 8), torch.randn(50, 8)
    xn, rn = x.double().numpy(), r.double().numpy()
    reference = 1 - ((xn - rn) ** 2).sum() / ((xn - xn.mean(0)) ** 2).sum()
    assert explained_variance(x, r) == pytest.approx(reference, rel=1e-5)


def test_training_reconstructs_the_tiny_models_residuals(tmp_path):
    lm = tiny_lm(num_layers=4, hidden=16)
    torch.manual_seed(0)
    texts = ["".join(chr(97 + int(i)) for i in torch.randint(0, 26, (40,))) for _ in range(60)]
    sae, report = train_sae(lm, texts, TrainConfig(layer=1, width=64, k=8, epochs=30, batch=256, lr=3e-3))
    assert (
        report.l0 == 8
        and report.d_sae == 64
        and report.train_tokens + report.held_out_tokens == 60 * 40
        and report.held_out_tokens == 3 * 40
    )
    assert report.explained_variance > 0.8
    assert (sae.layer, sae.model_name, sae.model_fingerprint) == (1, lm.name, lm.fingerprint)
    back = read_sae(write_saelens(sae, tmp_path / "sae"))
    assert same_weights(sae, back) and back.k == 8
    np.testing.assert_allclose(back.W_dec.norm(dim=1).numpy(), 1.0, rtol=1e-5)


# ---- a real model ----------------------------------------------------------------------------------------


def block_outputs(lm, ids: torch.Tensor, steer=None) -> list[torch.Tensor]:
    """Every block's output as the next block receives it, with `steer` attached."""
    seen: list[torch.Tensor] = []
    handle = steer.attach(lm) if steer else None
    readers = [
        block.register_forward_hook(lambda m, a, out: seen.append(out[0] if isinstance(out, tuple) else out))
        for block in lm.layers
    ]
    try:
        with torch.no_grad():
            lm.model(input_ids=ids)
        return seen
    finally:
        for reader in readers:
            reader.remove()
        if handle:
            handle.remove()


def test_a_gemma_scope_file_loads_and_steers_gemma3_at_its_layer(gemma3_270m, tmp_path):
    from steerlab.steering import SpecSteering, SteeringSpec

    lm = gemma3_270m
    g = torch.Generator().manual_seed(0)
    d, n, layer = lm.hidden_size, 256, 6
    w_dec = torch.randn(n, d, generator=g)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    written = SAE(
        w_dec.T.clone(),
        torch.zeros(n),
        w_dec,
        torch.zeros(d),
        layer=layer,
        activation="jumprelu",
        threshold=torch.full((n,), 0.05),
    )
    sae = read_sae(write_gemma_scope(written, tmp_path / f"layer_{layer}" / "width_256" / "params.npz"))
    assert same_weights(sae, written) and (sae.layer, sae.d_model) == (6, 640)
    ids = torch.tensor([lm.tokenizer("The weather today is", add_special_tokens=True)["input_ids"]])
    plain = block_outputs(lm, ids)
    vector = feature_vector(lm, sae, 3)
    added = block_outputs(lm, ids, SpecSteering(SteeringSpec(vector, multiplier=8.0)))
    assert all(torch.equal(added[i], plain[i]) for i in range(layer))  # blocks before the hook's layer: untouched
    # float32 sums at the attention sink (norm ~5e4) round at ~1e-3
    assert torch.allclose(added[layer] - plain[layer], 8.0 * sae.W_dec[3].expand_as(plain[layer]), atol=1e-2)
    assert not torch.allclose(added[layer + 1], plain[layer + 1])
    clamped = block_outputs(lm, ids, FeatureClamp(sae, 3, 30.0))
    assert all(torch.equal(clamped[i], plain[i]) for i in range(layer))
    read = sae.encode(clamped[layer])[0, 1:, 3]  # every token but the attention sink
    assert torch.allclose(read, torch.full_like(read, 30.0), atol=1e-2)


def test_clamped_generation_is_the_same_batched_with_padding_and_alone():
    from steerlab.generation import GenerationConfig, generate

    lm = tiny_lm(num_layers=4, hidden=16)
    sae = random_sae(layer=1, seed=2)
    sae.W_dec[4] = sae.W_enc[:, 4]
    clamp = FeatureClamp(sae, 4, 5.0)
    prompts, config = ["hi", "a much longer prompt here"], GenerationConfig(max_new_tokens=8)
    together = [r.steered for r in generate(lm, prompts, clamp, config=config)]
    alone = [generate(lm, [p], clamp, config=config)[0].steered for p in prompts]
    assert together == alone and together != [r.steered for r in generate(lm, prompts, None, config=config)]


# ---- the command line ------------------------------------------------------------------------------------


def test_command_line_trains_finds_saves_and_clamps(model_dir, tmp_path, capsys):
    from steerlab.cli import main

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(f"{w} day number {i}, all told" for i in range(30) for w in ("good", "bad")))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"positive": f"good {w}", "negative": f"bad {w}"}) + "\n" for w in "abcdefgh"))
    sae_dir, vec, clamp = tmp_path / "sae", tmp_path / "f.safetensors", tmp_path / "c.safetensors"
    model = ["--model", str(model_dir)]
    assert main(["sae", "train", *model, "--texts", str(texts), "--layer", "2", "--width", "64", "--k", "4",
                 "--epochs", "2", "--out", str(sae_dir)]) == 0  # fmt: skip
    report = json.loads((sae_dir / "steerlab.json").read_text())["report"]
    assert read_sae(sae_dir).layer == 2 and report["l0"] == 4 and report["d_sae"] == 64
    capsys.readouterr()
    assert main(["sae", "features", *model, "--sae", str(sae_dir), "--data", str(pairs), "--texts", str(texts),
                 "--top", "3", "--save-feature", "best", "--out", str(vec), "--json"]) == 0  # fmt: skip
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 3 and all(len(r["snippets"]) >= 1 for r in rows)
    saved = SteeringVector.load(vec)
    assert saved.meta.config["feature"] == rows[0]["feature"] and saved.meta.method == "sae_feature"
    assert main(["sae", "clamp", *model, "--sae", str(sae_dir), "--feature", str(rows[0]["feature"]),
                 "--value", "1.5", "--out", str(clamp)]) == 0  # fmt: skip
    assert main(["generate", *model, "--vector", str(clamp), "--prompt", "hello", "--max-new-tokens", "3"]) == 0
    capsys.readouterr()
    assert main(["vector", "info", str(clamp), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["kind"], info["feature"], info["value"], info["layer"]) == ("sae_clamp", rows[0]["feature"], 1.5, 2)
    assert main(["generate", *model, "--vector", str(clamp), "--prompt", "hello", "--multiplier", "2"]) == 1
    assert capsys.readouterr().err.strip() == (
        "error: an SAE clamp sets its feature to its stored value; drop --multiplier (steerlab sae clamp --value)"
    )


def test_command_line_refuses_bad_arguments_before_the_model_loads(tmp_path, capsys):
    from steerlab.cli import main

    args = ["--model", "no/such/model", "--layer", "2", "--out", str(tmp_path / "o")]
    assert main(["sae", "train", "--texts", str(tmp_path / "missing.txt"), *args]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path / 'missing.txt'}: no such text file and not a named set (dexperts-sentiment); "
        "give a .txt or .jsonl file"
    )
    assert main(["sae", "features", "--sae", "x", "--positive", "a", "--negative", "b", "--save-feature", "1"]) == 1
    assert (
        capsys.readouterr().err.strip()
        == "error: --save-feature and --out go together: which feature to save, and where"
    )


def test_the_vllm_plugin_refuses_a_clamp_by_name(tmp_path):
    from steerlab.interop.vllm.library import SteerLibrary
    from steerlab.interop.vllm.request import SteeringRequestError, resolve

    lm = tiny_lm(num_layers=4, hidden=16)
    sae = random_sae(layer=1)
    sae.W_dec[4] = sae.W_enc[:, 4]
    FeatureClamp(sae, 4, 2.0).save(tmp_path / "clamp.safetensors", lm)
    with pytest.raises(
        SteeringRequestError, match="'clamp' is an SAE clamp: it re-encodes every token through its SAE"
    ):
        resolve({"vector": "clamp"}, SteerLibrary(tmp_path), hidden_size=16, num_layers=4)


def test_the_named_text_set_joins_each_dexperts_prompt_and_continuation(shared_data):
    from steerlab.sae.texts import load_texts

    texts = load_texts("dexperts-sentiment", shared_data)
    first = json.loads((shared_data / "sentiment" / "positive_prompts.jsonl").read_text().splitlines()[0])
    assert len(texts) == 5000 and texts[0] == first["prompt"]["text"] + " " + first["continuation"]["text"]


def test_the_server_skips_a_clamp_naming_its_kind(tmp_path, caplog):
    from steerlab.server.registry import VectorRegistry

    lm = tiny_lm(num_layers=4, hidden=16)
    sae = random_sae(layer=1)
    sae.W_dec[4] = sae.W_enc[:, 4]
    FeatureClamp(sae, 4, 2.0).save(tmp_path / "clamp.safetensors", lm)
    with caplog.at_level("WARNING"):
        registry = VectorRegistry.from_dir(lm, tmp_path)
    assert not registry.entries
    assert (
        "skipping clamp.safetensors: a steer of kind 'sae_clamp'; the server applies vectors and conditions"
        in caplog.text
    )
