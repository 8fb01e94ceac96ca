"""LM-Steer: masking, chunked loss vs full logits, per-row values, files, memory planning, config errors.

Unit tests use a tiny random Llama with a word-level tokenizer built here; the slow test trains on the
real SmolLM2 and checks the direction of the effect on VADER sentiment.
"""

import json
import re
import time
from importlib import resources
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from steerlab.config import ConfigError, build_config, load_config
from steerlab.data import ContrastiveDataset, ContrastivePair
from steerlab.generation import GenerationConfig, generate
from steerlab.methods import get_method
from steerlab.methods.lm_steer import InsufficientMemoryError, LabelledTexts, LMSteer, LMSteerConfig, fit
from steerlab.methods.lm_steer.train import (
    TrainingSet,
    check_memory,
    chunked_loss,
    encode_examples,
    final_hidden_states,
    memory_parts,
)
from steerlab.models import LoadedModel
from steerlab.vector import SteeringVector, VectorFileError, VectorMeta

WORDS = [
    "<pad>",
    "</s>",
    "<unk>",
    "user",
    "assistant",
    ":",
    "the",
    "movie",
    "film",
    "was",
    "is",
    "very",
    "good",
    "bad",
    "great",
    "awful",
    "a",
    "plot",
    "and",
    "i",
    "liked",
    "hated",
    "it",
    "story",
    "ending",
]
TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)


def tiny_lm(chat: bool = True, seed: int = 0) -> LoadedModel:
    """A 2-layer random Llama (hidden 16) with a word-level tokenizer and a one-line chat template."""
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    tok.chat_template = TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(WORDS),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
    )
    return LoadedModel(LlamaForCausalLM(config).eval(), tok, name="tiny", use_chat_template=chat)


def ids(lm: LoadedModel, text: str) -> list[int]:
    return lm.tokenizer(text, add_special_tokens=False)["input_ids"]


PAIRS = ContrastiveDataset(
    [
        ContrastivePair("the movie", "was very good", "was awful"),
        ContrastivePair("the plot", "is great and i liked it", "is bad"),
        ContrastivePair("a story", "good", "i hated the ending"),
    ],
    "tiny-pairs",
    "0" * 64,
)


def random_steer(lm: LoadedModel, num_steers: int = 2, rank: int = 3, epsilon: float = 0.5, seed: int = 1) -> LMSteer:
    g = torch.Generator().manual_seed(seed)
    shape = (num_steers, lm.hidden_size, rank)
    meta = VectorMeta.for_model(lm, "lm_steer", config={"epsilon": epsilon}, task="sentiment")
    return LMSteer(torch.randn(shape, generator=g), torch.randn(shape, generator=g), meta)


def reference_logits(lm: LoadedModel, input_ids: torch.Tensor, mask: torch.Tensor, p1, p2, row_values, epsilon):
    """Full [batch, length, vocab] logits with h -> h + eps * sum_k s_k P1_k P2_k^T h, written out per steer."""

    def hook(module, args):
        h = args[0]
        delta = torch.zeros_like(h)
        for k in range(p1.shape[0]):
            delta = delta + row_values[:, k, None, None] * ((h @ p1[k]) @ p2[k].T)
        return (h + epsilon * delta,)

    handle = lm.model.get_output_embeddings().register_forward_pre_hook(hook)
    try:
        return lm.model(input_ids=input_ids, attention_mask=mask).logits
    finally:
        handle.remove()


# ---- config -----------------------------------------------------------------------------------------
def test_shipped_config_file_is_the_defaults():
    path = Path(str(resources.files("steerlab") / "methods" / "configs" / "lm_steer.yaml"))
    assert load_config(LMSteerConfig, path) == LMSteerConfig()
    assert get_method("lm_steer").config_cls is LMSteerConfig and get_method("lm_steer").fit is fit


def test_config_errors_name_the_key_and_the_fix():
    with pytest.raises(ConfigError) as err:
        build_config(LMSteerConfig, {"rnak": 8})
    assert str(err.value) == (
        "config: unknown key 'rnak' for LMSteerConfig; allowed keys: rank, num_steers, epsilon, init_var, lr, "
        "steps, batch_size, max_length, chunk_size, cache_hidden_states, max_memory_gb, seed"
    )
    with pytest.raises(ConfigError, match=r"^config: rank must be at least 1, got 0$"):
        build_config(LMSteerConfig, {"rank": 0})
    with pytest.raises(ConfigError, match=r"^config: epsilon must be positive, got -0.1$"):
        build_config(LMSteerConfig, {"epsilon": -0.1})
    with pytest.raises(ConfigError, match=r"^config: key 'steps': expected an integer, got 'many'$"):
        build_config(LMSteerConfig, {"steps": "many"})
    with pytest.raises(ConfigError, match=r"max_length must be at least 2"):
        load_config(LMSteerConfig, None, ["max_length=1"])
    assert load_config(LMSteerConfig, None, ["rank=4", "max_memory_gb=2"]).max_memory_gb == 2.0


def test_one_training_set_per_steer():
    lm = tiny_lm()
    with pytest.raises(
        ValueError, match=r"^num_steers is 2 but 1 training set\(s\) were given; give one set per steer$"
    ):
        fit(lm, PAIRS, LMSteerConfig(num_steers=2, rank=2, steps=1))
    with pytest.raises(ValueError, match="needs both positive and negative texts"):
        fit(lm, LabelledTexts(["good"], []), LMSteerConfig(rank=2, steps=1))


# ---- masking ----------------------------------------------------------------------------------------
def test_only_answer_tokens_are_trained_and_padding_changes_nothing():
    lm = tiny_lm(chat=True)
    examples = encode_examples(lm, [TrainingSet.of(PAIRS)], max_length=64, report=print)
    assert len(examples) == 6
    for example, (pair, side) in zip(
        examples, [(p, s) for p in PAIRS.pairs for s in ("positive", "negative")], strict=False
    ):
        context = ids(lm, f"user : {pair.prompt} assistant : ")  # the template, written out by hand
        answer = ids(lm, getattr(pair, side))
        assert example.ids == context + answer and example.start == len(context)
        assert example.value == (1.0 if side == "positive" else -1.0)
    batched = final_hidden_states(lm, examples)  # different lengths: right padding
    for example, (hidden, targets) in zip(examples, batched, strict=False):
        seq = torch.tensor([example.ids])
        with torch.no_grad():
            full = lm.model.model(input_ids=seq).last_hidden_state[0]  # the LM head's input, unpadded
        n_answer = len(example.ids) - example.start
        assert targets.tolist() == example.ids[-n_answer:]
        torch.testing.assert_close(hidden, full[example.start - 1 : -1], rtol=1e-5, atol=1e-5)


def test_stand_alone_texts_train_every_token_but_the_first_and_cut_at_max_length():
    lm = tiny_lm(chat=True)
    texts = LabelledTexts(["the movie was very good and i liked it"], ["awful", "bad plot"], name="reviews")
    messages = []
    examples = encode_examples(lm, [TrainingSet.of(texts)], max_length=4, report=messages.append)
    assert [(e.ids, e.start, e.value) for e in examples] == [
        (ids(lm, "the movie was very"), 1, 1.0),
        (ids(lm, "bad plot"), 1, -1.0),
    ]
    assert messages == ["1 of 3 texts have no token to train on within max_length=4 and are skipped"]
    with pytest.raises(ValueError, match="only positive ones are left"):
        encode_examples(lm, [TrainingSet.of(LabelledTexts(["good movie"], ["bad"]))], 4, report=print)


# ---- chunked loss -----------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk_size", [1, 3, 1000])
def test_chunked_loss_and_gradients_equal_the_full_logits_loss(chunk_size):
    lm = tiny_lm(chat=True)
    steer = random_steer(lm, num_steers=2, rank=3, epsilon=0.5)
    sets = [TrainingSet.of(PAIRS), TrainingSet.of(LabelledTexts(["good film", "great story and ending"], ["bad plot"]))]
    examples = encode_examples(lm, sets, max_length=64, report=print)
    parts = final_hidden_states(lm, examples)
    values = torch.cat(
        [
            torch.zeros(len(t), 2).index_fill_(1, torch.tensor([e.steer]), e.value)
            for e, (_, t) in zip(examples, parts, strict=False)
        ]
    )
    p1 = steer.projector1.clone().requires_grad_()
    p2 = steer.projector2.clone().requires_grad_()
    loss = chunked_loss(
        lm,
        torch.cat([h for h, _ in parts]),
        torch.cat([t for _, t in parts]),
        values,
        p1,
        p2,
        0.5,
        chunk_size,
        backward=True,
    )

    # Reference: the whole padded batch through the hooked model, labels masked by hand, mean over tokens.
    width = max(len(e.ids) for e in examples)
    input_ids = torch.zeros(len(examples), width, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, -100)
    for i, e in enumerate(examples):
        input_ids[i, : len(e.ids)] = torch.tensor(e.ids)
        mask[i, : len(e.ids)] = 1
        labels[i, e.start : len(e.ids)] = torch.tensor(e.ids[e.start :])
    row_values = torch.zeros(len(examples), 2)
    for i, e in enumerate(examples):
        row_values[i, e.steer] = e.value
    q1 = steer.projector1.clone().requires_grad_()
    q2 = steer.projector2.clone().requires_grad_()
    logits = reference_logits(lm, input_ids, mask, q1, q2, row_values, 0.5)
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)
    ref.backward()
    assert loss == pytest.approx(float(ref.detach()), rel=1e-5)
    torch.testing.assert_close(p1.grad, q1.grad, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(p2.grad, q2.grad, rtol=1e-4, atol=1e-7)


def test_training_lowers_the_loss_moves_the_right_way_and_leaves_the_base_alone():
    lm = tiny_lm(chat=False)
    flags = [p.requires_grad for p in lm.model.parameters()]
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    texts = LabelledTexts(
        ["the movie was very good", "great story and i liked it", "a good film"],
        ["the movie was awful", "bad plot and i hated it", "a bad film"],
    )
    steer = fit(lm, texts, LMSteerConfig(rank=4, steps=60, batch_size=4, lr=0.05, epsilon=0.1), task="sentiment")
    assert steer.meta.fit_stats["loss_end"] < steer.meta.fit_stats["loss_start"]
    assert [p.requires_grad for p in lm.model.parameters()] == flags
    assert all(p.grad is None for p in lm.model.parameters())
    assert all(torch.equal(v, lm.model.state_dict()[k]) for k, v in before.items())
    # The positive side is more likely at +1 than at -1.
    good, bad = WORDS.index("good"), WORDS.index("bad")
    seq = torch.tensor([ids(lm, "the movie was")])
    with torch.no_grad():
        logp = {}
        for value in (-1.0, 1.0):
            with steer.with_multiplier(value).attach(lm):
                logp[value] = lm.model(input_ids=seq).logits[0, -1].log_softmax(-1)
    assert logp[1.0][good] - logp[1.0][bad] > logp[-1.0][good] - logp[-1.0][bad]
    assert steer.meta.method == "lm_steer" and steer.meta.config["rank"] == 4 and steer.meta.dataset["positive"] == 3


# ---- applying -----------------------------------------------------------------------------------------
def test_each_row_gets_its_value_and_zero_is_exactly_off():
    lm = tiny_lm()
    steer = random_steer(lm)
    seq = torch.tensor([ids(lm, "the movie was very good")] * 4)
    mask = torch.ones_like(seq)
    with torch.no_grad():
        plain = lm.model(input_ids=seq).logits
        with steer.with_multiplier([1.0, 0.0, -2.0, 0.5], steer_weights=[1.0, -0.5]).attach(lm):
            steered = lm.model(input_ids=seq).logits
        expected = reference_logits(
            lm,
            seq,
            mask,
            steer.projector1,
            steer.projector2,
            torch.tensor([[1.0, -0.5], [0.0, 0.0], [-2.0, 1.0], [0.5, -0.25]]),
            0.5,
        )
        # generate()'s side-by-side original: row scale 0 on the second half of the rows
        with steer.with_multiplier(3.0).attach(lm, row_scale=torch.tensor([1.0, 1.0, 0.0, 0.0])):
            halves = lm.model(input_ids=seq).logits
    assert torch.equal(steered[1], plain[1])
    assert not torch.allclose(steered[0], plain[0], atol=1e-3)
    torch.testing.assert_close(steered, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(halves[2:], plain[2:]) and not torch.allclose(halves[:2], plain[:2], atol=1e-3)
    assert lm.model.get_output_embeddings()._forward_pre_hooks == {}


def test_generate_gives_unsteered_originals_beside_the_steered_rows():
    lm = tiny_lm(chat=False)
    steer = random_steer(lm, epsilon=5.0)
    cfg = GenerationConfig(max_new_tokens=6)
    prompts = ["the movie was", "a story"]
    both = generate(lm, prompts, steer, generate_orig_output=True, config=cfg)
    plain = generate(lm, prompts, None, config=cfg)
    assert [r.original for r in both] == [r.steered for r in plain]
    assert [r.steered for r in both] != [r.steered for r in plain]
    rows = generate(lm, prompts * 2, steer.with_multiplier([0.0, 0.0, 1.0, 1.0]), config=cfg, batch_size=4)
    assert [r.steered for r in rows] == [r.steered for r in plain] + [r.steered for r in both]


def test_save_load_round_trip_and_refusals(tmp_path):
    lm = tiny_lm()
    steer = random_steer(lm)
    path = steer.save(tmp_path / "sentiment.lmsteer.safetensors")
    loaded = LMSteer.load(path)
    assert torch.equal(loaded.projector1, steer.projector1) and torch.equal(loaded.projector2, steer.projector2)
    assert loaded.meta == steer.meta and loaded.epsilon == 0.5 and loaded.multiplier == 1.0
    seq = torch.tensor([ids(lm, "the plot was bad")])
    with torch.no_grad(), steer.attach(lm):
        a = lm.model(input_ids=seq).logits
    with torch.no_grad(), loaded.with_multiplier(1.0).attach(lm):
        b = lm.model(input_ids=seq).logits
    assert torch.equal(a, b)
    with pytest.raises(FileExistsError, match="already exists; choose another path or pass overwrite=True"):
        steer.save(path)
    steer.with_multiplier(2.0).save(path, overwrite=True)
    vector = SteeringVector({1: torch.ones(16)}, VectorMeta.for_model(lm, "caa"))
    vector.save(tmp_path / "v.safetensors")
    with pytest.raises(
        VectorFileError,
        match=r"a steer of kind 'vector', not an LM-Steer file; read any steer file with steerlab.load_steer",
    ):
        LMSteer.load(tmp_path / "v.safetensors")
    with pytest.raises(
        VectorFileError,
        match=r"a steer of kind 'lm_steer', not a steering vector; read any steer file with steerlab.load_steer",
    ):
        SteeringVector.load(path)
    from safetensors.torch import save_file

    save_file(
        {"projector1": steer.projector1},
        str(tmp_path / "half.safetensors"),
        metadata={"steerlab": json.dumps(steer.meta.to_json())},
    )
    with pytest.raises(
        VectorFileError, match=r"half.safetensors: expected tensors projector1, projector2, found projector1$"
    ):
        LMSteer.load(tmp_path / "half.safetensors")
    with pytest.raises(VectorFileError, match="no such LM-Steer file"):
        LMSteer.load(tmp_path / "missing.safetensors")


def test_another_hidden_size_is_refused():
    steer = random_steer(tiny_lm())
    wide = LoadedModel(
        LlamaForCausalLM(
            LlamaConfig(
                vocab_size=len(WORDS), hidden_size=32, intermediate_size=32, num_hidden_layers=1, num_attention_heads=4
            )
        ),
        tiny_lm().tokenizer,
        name="wide",
    )
    with pytest.raises(
        ValueError,
        match=r"this LM-Steer steer was built for tiny \(hidden size 16, 2 layers\) "
        r"and cannot be applied to wide \(hidden size 32, 1 layers\)",
    ):
        steer.attach(wide)


# ---- memory planning ----------------------------------------------------------------------------------
def test_memory_estimate_is_reported_and_a_plan_that_does_not_fit_proposes_one_that_does():
    lm = tiny_lm()
    # A huge rank makes P1, P2 with their gradients and Adam state (4 * 2 * 16 * rank floats = 128 MiB) and
    # their products with each token's hidden state the parts that matter.
    config = LMSteerConfig(rank=2**18, batch_size=16, max_length=32)
    examples = encode_examples(lm, [TrainingSet.of(PAIRS)], config.max_length, report=print)
    parts = memory_parts(lm, examples, config)
    assert parts["steer and Adam"] == 4 * 2 * 16 * 2**18 * 4
    need = sum(parts.values())
    messages = []
    check_memory(lm, examples, LMSteerConfig(**{**config.__dict__, "max_memory_gb": need / 1024**3}), messages.append)
    assert re.fullmatch(
        r"LM-Steer training needs about 0.35 GiB beyond the model \(frozen forward 0.00 GiB, "
        r"hidden states 0.00 GiB, logits chunk 0.04 GiB, steer and Adam 0.12 GiB, runtime 0.19 GiB\); "
        r"0.35 GiB available \(max_memory_gb\)",
        messages[0],
    )
    tight = LMSteerConfig(**{**config.__dict__, "max_memory_gb": 0.8 * need / 1024**3})
    with pytest.raises(InsufficientMemoryError) as err:
        fit(lm, PAIRS, tight, report=messages.append)
    assert re.fullmatch(
        r"LM-Steer training needs about 0.35 GiB .*; 0.28 GiB available \(max_memory_gb\), so it "
        r"will not fit; try rank=131072 \(about 0.27 GiB\)",
        str(err.value),
    )
    check_memory(lm, examples, LMSteerConfig(**{**tight.__dict__, "rank": 131072}), messages.append)
    with pytest.raises(InsufficientMemoryError, match=r"try a machine with more memory: even batch_size=1"):
        check_memory(lm, examples, LMSteerConfig(**{**config.__dict__, "max_memory_gb": 0.1}), messages.append)


# ---- the real model -----------------------------------------------------------------------------------
def _status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(key)).split()[1]) / 1024


def _texts(data: Path, name: str, n: int) -> list[str]:
    with open(data / "sentiment" / name) as f:
        rows = [json.loads(line) for _, line in zip(range(n), f, strict=False)]
    return [r["prompt"]["text"] + " " + r["continuation"]["text"] for r in rows]


@pytest.mark.real_model
def test_smollm2_steer_moves_vader_sentiment_both_ways(tmp_path, shared_data):
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    from steerlab.models import load_model

    torch.set_num_threads(2)
    lm = load_model(None)
    with torch.no_grad():  # page the weights in, so the peak below is training's own
        lm.model(input_ids=torch.tensor([[1, 2, 3]]))
    # DExperts' OpenWebText sentences whose GPT-2 continuations were all positive / all negative.
    texts = LabelledTexts(
        _texts(shared_data, "positive_prompts.jsonl", 150),
        _texts(shared_data, "negative_prompts.jsonl", 150),
        "dexperts",
    )
    config = LMSteerConfig(rank=1000, steps=200, batch_size=4, max_length=32, lr=0.01)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset this process's peak RSS
    before, started, messages = _status_mib("VmRSS"), time.time(), []
    steer = fit(lm, texts, config, task="sentiment", report=messages.append)
    peak = _status_mib("VmHWM") - before
    estimate = float(re.search(r"needs about (\d+\.\d+) GiB", messages[-1]).group(1)) * 1024
    print(
        f"\ntrained in {time.time() - started:.0f} s; peak RSS {peak:.0f} MiB above the loaded model, "
        f"estimate {estimate:.0f} MiB; loss {steer.meta.fit_stats['loss_start']} -> {steer.meta.fit_stats['loss_end']}"
    )
    assert peak < estimate
    assert steer.meta.fit_stats["loss_end"] < steer.meta.fit_stats["loss_start"]

    steer = LMSteer.load(steer.save(tmp_path / "sentiment.lmsteer.safetensors"))
    with open(shared_data / "sentiment" / "neutral_prompts.jsonl") as f:
        prompts = [json.loads(line)["prompt"]["text"] for _, line in zip(range(32), f, strict=False)]
    n = len(prompts)
    results = generate(
        lm,
        prompts * 3,
        steer.with_multiplier([-1.0] * n + [0.0] * n + [1.0] * n),
        batch_size=3 * n,
        use_chat_template=False,
        config=GenerationConfig(max_new_tokens=20),
    )
    vader = SentimentIntensityAnalyzer()
    mean = {
        v: sum(vader.polarity_scores(r.steered)["compound"] for r in results[i * n : (i + 1) * n]) / n
        for i, v in enumerate((-1.0, 0.0, 1.0))
    }
    print(f"mean VADER compound at -1 / 0 / +1: {mean[-1.0]:.3f} / {mean[0.0]:.3f} / {mean[1.0]:.3f}")
    assert mean[1.0] > mean[0.0] > mean[-1.0]
