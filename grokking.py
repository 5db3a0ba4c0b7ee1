"""Grokking: a one-layer transformer learns modular addition by heart, then by a Fourier algorithm.

Nanda, Chan, Lieberum, Smith and Steinhardt, "Progress measures for grokking via mechanistic
interpretability" (ICLR 2023), train a one-layer transformer on a + b mod p. It first memorises
its training pairs (train accuracy 100%, test accuracy near chance), then slowly builds an
algorithm made of sines and cosines, and only when weight decay has cleaned the memorisation
away does the test loss fall off a cliff. This file trains that model with transformer.py's own
layers and hand-written gradients, and reads the algorithm off its weights while it learns.
Read top to bottom:

    1. The data               every pair (a, b), the tokens [a, b, =], the label (a + b) mod p,
                              a random split into training and test pairs
    2. The model              transformer.DecoderOnlyTransformer with the paper's sizes; its
                              last position alone, forward and backward (the loss reads no
                              other)
    3. Training               full batch AdamW with a short warm-up; the progress measures at
                              every checkpoint; train() with no arguments is the tour's run
    4. The Fourier basis      over Z_p: the constant, cos(2πka/p), sin(2πka/p), orthonormal
    5. The algorithm          the trig identity the circuit computes, written out
    6. Progress measures      the embedding's norm per frequency, the key frequencies, each
                              neuron's frequency, the restricted and excluded losses, the total
                              squared weight
    7. The three phases       memorisation, circuit formation, cleanup, located by events in
                              the measured curves
    Appendix                  checking arguments: every public function refuses bad input with
                              a ValueError or TypeError naming the argument, before it trains

Conventions are transformer.py's: tokens are rows, activations (B, T, d_model), a weight maps
rows to rows (y = x @ W). A pair (a, b) sits at row a·p + b of every (p², ...) array, so a
reshape to (p, p, ...) puts a on the first axis and b on the second. Training runs in float32;
the tests check the gradients in float64. Randomness only through the seed.
"""

import math
from collections import namedtuple

import numpy as np

import transformer


# ----------------------------------------------------------------------------------------------
# 1. The data
# ----------------------------------------------------------------------------------------------
# The task of the paper: p = 113, the input is three tokens [a, b, =], where a and b are the
# numbers 0 .. p-1 (token ids 0 .. p-1) and "=" is the token id p; the label is (a + b) mod p,
# predicted at the last position. The data set is every one of the p² pairs exactly once; a
# random 30% of them train and the rest are the test set.

ModularAddition = namedtuple("ModularAddition", "tokens labels train")
ModularAddition.__doc__ = """tokens (p², 3) int [a, b, p], labels (p²,) int (a + b) mod p,
train (p²,) bool: True for the training pairs. Row a·p + b holds the pair (a, b)."""


def modular_addition_data(p, train_fraction=0.3, seed=0):
    """-> ModularAddition(tokens, labels, train): all p² pairs, round(train_fraction · p²) of them
    (a random choice made with seed) for training."""
    p, train_fraction, seed = _check_data(p, train_fraction, seed)
    a, b = np.divmod(np.arange(p * p), p)
    tokens = np.stack([a, b, np.full(p * p, p)], axis=1)
    labels = (a + b) % p
    n_train = min(max(round(train_fraction * p * p), 1), p * p - 1)     # both sets non-empty
    train = np.zeros(p * p, bool)
    train[np.random.default_rng(seed).permutation(p * p)[:n_train]] = True
    return ModularAddition(tokens, labels, train)


# ----------------------------------------------------------------------------------------------
# 2. The model
# ----------------------------------------------------------------------------------------------
# The paper's model, from transformer.py's parts: one layer, d_model 128, 4 heads of 32, an MLP
# of 512 ReLU neurons, learned positions, no layer norm and no biases. grokking_model's
# docstring says where it differs from the paper's.
#
# Only the last position's logits enter the loss, so the MLP and the unembedding of the first
# two positions would be wasted work. logits_at_last runs the attention with the last position
# as the only query (MultiHeadAttention's cross-attention path: queries from the last position,
# keys and values from all three), then the MLP and the unembedding on that position alone. The
# last query may look at every key, so no mask is needed, and the result is exactly
# model.forward(tokens)[:, -1] (the tests prove it, and check its gradient). With the residual
# h = x_T + attn(x_T, x) and out = h + MLP(h), backward is the chain rule read backwards:
#     dh = W_Uᵀ dlogits;  dh += MLP'(dh);  (dq, dx) = attn'(dh);  dx_T += dh + dq.

def grokking_model(p, d_model=128, n_heads=4, d_mlp=512, seed=0, dtype=np.float32):
    """The paper's one-layer transformer over the p + 1 tokens 0 .. p-1 and "=" (id p), a
    transformer.DecoderOnlyTransformer. Where it would differ from the paper's model:
      * DecoderOnlyTransformer multiplies the embedding by √d_model (Vaswani et al. 3.4). The
        paper does not, and its table starts at std 1/√d_model, as ours does, so embed_scale is
        set to 1: the same numbers enter the residual stream, and Adam's steps, which have a size
        of about lr whatever the weight's scale, move the embedding as fast as the paper's.
      * Its output layer has a logit for each of the p + 1 tokens, "=" too; the paper's has one
        per answer. The loss and the accuracy read the first p logits only (answer_logits), so
        the logit of "=" gets no gradient, weight decay shrinks its column towards zero, and it
        never enters a softmax: in effect the paper's output layer.
      * The weights start as transformer.py starts every matrix, with std 1/√d_in; the paper's
        code may scale some matrices differently at the start. We did not measure whether that
        changes when the model groks.
    (model.save and transformer.load keep the weights but not embed_scale: build a model with
    grokking_model and copy the weights in.)"""
    p = _check_p(p)
    model = transformer.DecoderOnlyTransformer(
        p + 1, d_model, n_heads, 1, d_mlp, 3, activation="relu", layer_norm=False, bias=False,
        positional="learned", dtype=dtype, seed=seed)
    model.embed_scale = 1.0                                  # the paper's embedding: see above
    return model


def logits_at_last(model, tokens):
    """tokens (N, 3) -> the logits of the last position (N, p + 1), the same numbers as
    model.forward(tokens)[:, -1]; the MLP's neurons stay in model.blocks[0].ffn.hidden (N, 1,
    d_mlp)."""
    _check_model(model)
    tokens = transformer.check_tokens("tokens", tokens, model.vocab_size, model.max_len)
    block = model.blocks[0]
    x = model.embed.forward(tokens) * model.embed_scale                   # (N, T, d)
    x += model.pos_embed.forward(np.arange(tokens.shape[1]))
    last = x[:, -1:]                                                       # (N, 1, d)
    h = last + block.self_attn.forward(last, memory=x)                    # one query, T keys
    h = h + block.ffn.forward(h)
    model.saved = (tokens.shape[0], 1, model.vocab_size)                 # the logits' shape
    return model.unembed.forward(h)[:, 0]


def backward_at_last(model, dlogits):
    """dlogits (N, p + 1), the gradient of the loss with respect to logits_at_last's output ->
    None; adds into every parameter's grad."""
    dlogits = _check_dlogits(model, dlogits)[:, None]                      # (N, 1, p + 1)
    block = model.blocks[0]
    dh = model.unembed.backward(dlogits)                                   # (N, 1, d)
    dh = dh + block.ffn.backward(dh)
    dlast, dx = block.self_attn.backward(dh)                               # (N, 1, d), (N, T, d)
    dx[:, -1:] += dh + dlast
    model.pos_embed.backward(dx.sum(axis=0))
    model.embed.backward(dx * model.embed_scale)


# ----------------------------------------------------------------------------------------------
# 3. Training
# ----------------------------------------------------------------------------------------------
# The paper's recipe: full batch (every training pair at every step), AdamW (transformer.Adam
# with decoupled weight decay, Loshchilov & Hutter 2019) with lr 1e-3, weight decay 1, betas
# (0.9, 0.98), the rate ramped up linearly over the first 10 steps; cross-entropy on the last
# position only. Every measure_every steps the model is run on all p² pairs and the progress
# measures of section 6 are recorded. The restricted and excluded losses need the key
# frequencies, which only the trained model shows, so each checkpoint keeps a copy of the
# weights and those two losses are computed at the end.

WARMUP_STEPS = 10

# The tour's default run, chosen by measurement so that it groks in seconds: a smaller p, a
# narrower model and a larger learning rate than the paper's, half the pairs for training. It
# memorises by step 75 and passes 99% test accuracy at step 1,275 (measured; the README has the
# rest). Measured on the way: p = 53, d_model 64, d_mlp 256, lr 3e-3 reached 41% test accuracy in
# 1,500 steps with 40% of the pairs and 6% in 2,500 with 30%; with lr 1e-2 and 40% it grokked by
# step 475, but its test accuracy was already 21% when it memorised.
DEFAULT = dict(p=31, train_fraction=0.5, d_model=32, n_heads=4, d_mlp=64, lr=1e-2,
               weight_decay=1.0, steps=1500, measure_every=25, seed=0)
# The paper's configuration (Nanda et al. 2023, section 3 and appendix).
PAPER = dict(p=113, train_fraction=0.3, d_model=128, n_heads=4, d_mlp=512, lr=1e-3,
             weight_decay=1.0, steps=40_000, measure_every=100, seed=0)
# The tour's --long run: the paper's configuration for as many of its steps as fit in about ten
# minutes on two cores.
LONG = dict(PAPER, steps=5000)


class GrokkingRun:
    """What train() returns: model (the trained DecoderOnlyTransformer, vocabulary p + 1), data
    (modular_addition_data's ModularAddition), history (a dict of arrays, one entry per
    checkpoint along the first axis: step, train_loss, test_loss, train_accuracy,
    test_accuracy, embedding_norms (checkpoints, p // 2), total_squared_weight,
    neuron_frequency and neuron_fve (checkpoints, d_mlp), restricted_loss, excluded_loss),
    key_frequencies (the trained model's) and config (train's arguments)."""

    def __init__(self, model, data, history, key_frequencies, config):
        self.model, self.data, self.history = model, data, history
        self.key_frequencies, self.config = key_frequencies, config


def train(p=DEFAULT["p"], train_fraction=DEFAULT["train_fraction"], steps=DEFAULT["steps"],
          weight_decay=DEFAULT["weight_decay"], lr=DEFAULT["lr"], d_model=DEFAULT["d_model"],
          n_heads=DEFAULT["n_heads"], d_mlp=DEFAULT["d_mlp"], seed=DEFAULT["seed"],
          measure_every=DEFAULT["measure_every"], progress=None):
    """Train the model on modular addition, full batch; -> GrokkingRun. With no arguments this
    is the tour's default run; train(**PAPER) is the paper's. progress(step, loss), if given, is
    called after every step with the step's index (from 0) and its training loss."""
    config = dict(p=p, train_fraction=train_fraction, steps=steps, weight_decay=weight_decay,
                  lr=lr, d_model=d_model, n_heads=n_heads, d_mlp=d_mlp, seed=seed,
                  measure_every=measure_every)
    _check_train(config, progress)
    data = modular_addition_data(p, train_fraction, seed)
    model = grokking_model(p, d_model, n_heads, d_mlp, seed)
    optimizer = adamw(model, lr, weight_decay)
    tokens, labels = data.tokens[data.train], data.labels[data.train]
    records, snapshots = [], []
    for step in range(steps + 1):
        if step % measure_every == 0 or step == steps:
            records.append(checkpoint_measures(model, data, step))
            snapshots.append([value.copy() for _, value in model.weights()])
        if step == steps:
            break
        optimizer.lr = lr * min((step + 1) / WARMUP_STEPS, 1.0)
        loss = training_step(model, optimizer, tokens, labels)
        if progress is not None:
            progress(step, loss)
    history = {name: np.array([r[name] for r in records]) for name in records[0]}
    keys = key_frequencies(history["embedding_norms"][-1])
    history["restricted_loss"], history["excluded_loss"] = _fourier_losses(
        snapshots, model, data, keys)
    return GrokkingRun(model, data, history, keys, config)


def adamw(model, lr, weight_decay):
    """The paper's optimizer: AdamW with betas (0.9, 0.98) over every parameter of model."""
    return transformer.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=weight_decay)


def training_step(model, optimizer, tokens, labels):
    """One full-batch step: the loss of the p answer logits at the last position, its gradient
    (zero for the logit of "="), backward, the optimizer's update. -> the loss."""
    p = model.vocab_size - 1
    logits = logits_at_last(model, tokens)
    dlogits = np.zeros_like(logits)
    loss, dlogits[:, :p] = transformer.cross_entropy(logits[:, :p], labels)
    model.zero_grad()
    backward_at_last(model, dlogits)
    optimizer.step()
    return loss


def answer_logits(model, tokens):
    """The logits of the p answers at the last position, (N, p): the loss reads these."""
    return logits_at_last(model, tokens)[:, :model.vocab_size - 1]


def losses_and_accuracy(logits, labels):
    """logits (N, p), labels (N,) -> (the cross-entropy of each row (N,), whether its largest
    logit is the label (N,) bool)."""
    logp = transformer.log_softmax(logits.astype(np.float64))
    return -logp[np.arange(len(labels)), labels], logits.argmax(axis=1) == labels


def checkpoint_measures(model, data, step):
    """The progress measures at one checkpoint, from one run of the model on all p² pairs."""
    logits = answer_logits(model, data.tokens)
    hidden = model.blocks[0].ffn.hidden[:, 0]                               # (p², d_mlp)
    loss, correct = losses_and_accuracy(logits, data.labels)
    frequency, fve = neuron_frequencies(hidden)
    return dict(step=step, train_loss=loss[data.train].mean(), test_loss=loss[~data.train].mean(),
                train_accuracy=correct[data.train].mean(), test_accuracy=correct[~data.train].mean(),
                embedding_norms=embedding_norms(model), total_squared_weight=total_squared_weight(model),
                neuron_frequency=frequency, neuron_fve=fve)


def _fourier_losses(snapshots, model, data, keys):
    """The restricted and excluded losses of every checkpoint's weights, for the key
    frequencies keys; model's own weights are put back afterwards."""
    values = [value for _, value in model.weights()]
    final = [value.copy() for value in values]
    restricted, excluded = [], []
    for snapshot in snapshots + [final]:
        for value, saved in zip(values, snapshot):
            value[...] = saved
        if snapshot is final:
            break
        logits = answer_logits(model, data.tokens)
        restricted.append(restricted_loss(logits, data.labels, keys))
        excluded.append(excluded_loss(logits, data.labels, keys, data.train))
    return np.array(restricted), np.array(excluded)


# ----------------------------------------------------------------------------------------------
# 4. The Fourier basis over Z_p
# ----------------------------------------------------------------------------------------------
# A function f on the numbers 0 .. p-1 is a vector of p values. The discrete Fourier basis writes
# it as a sum of waves: the constant, and for each frequency k = 1 .. p // 2 the pair
# cos(2πka/p), sin(2πka/p) (for an even p the frequency p/2 has only its cosine, (-1)^a; its sine
# is zero). Normalised, these p vectors are an orthonormal basis (Nanda et al. 2023, section 4.1),
# so a matrix whose rows are indexed by a number, such as the embedding, can be read frequency
# by frequency: B @ W_E.

def fourier_basis(p):
    """-> (p, p) float64, one unit-length basis vector per row: the constant, then cos and sin of
    frequency 1, of frequency 2, ... (row i has frequency basis_frequencies(p)[i])."""
    p = _check_p(p)
    a = np.arange(p)
    rows = [np.ones(p)]
    for k in range(1, p // 2 + 1):
        rows.append(np.cos(2 * np.pi * k * a / p))
        if 2 * k != p:
            rows.append(np.sin(2 * np.pi * k * a / p))
    basis = np.array(rows)
    return basis / np.linalg.norm(basis, axis=1, keepdims=True)


def basis_frequencies(p):
    """-> (p,) int: the frequency k of each row of fourier_basis(p) (0 for the constant)."""
    p = _check_p(p)
    return (np.arange(p) + 1) // 2


# ----------------------------------------------------------------------------------------------
# 5. The algorithm: Fourier multiplication
# ----------------------------------------------------------------------------------------------
# The paper's reading of the trained model (section 4, figure 1). The embedding maps a to
# cos(wa), sin(wa) for a few key frequencies w = 2πk/p. Attention and the MLP multiply the
# waves of a and b, and the product formulas give the waves of a + b:
#     cos(w(a + b)) = cos(wa) cos(wb) - sin(wa) sin(wb)
#     sin(w(a + b)) = sin(wa) cos(wb) + cos(wa) sin(wb)
# The unembedding reads off the logit of each answer c by rotating back by c:
#     cos(w(a + b - c)) = cos(w(a + b)) cos(wc) + sin(w(a + b)) sin(wc)
#                       = cos(wa) cos(wb) cos(wc) - sin(wa) sin(wb) cos(wc)
#                       + sin(wa) cos(wb) sin(wc) + cos(wa) sin(wb) sin(wc),
# which is 1 exactly when c = a + b mod p and smaller for every other c (w is a multiple of 2π/p
# and k is not 0 mod p). Summed over a few key frequencies, the wrong answers interfere
# destructively and the right one stands out: the logits are Σ_k λ_k cos(w_k(a + b - c)).

def fourier_multiplication(a, b, c, k, p):
    """cos(w(a + b - c)) with w = 2πk/p, computed as the model does: from products of the cos and
    sin of a, b and c alone (the identity above), elementwise over arrays a, b, c."""
    w = 2 * np.pi * k / p
    ca, sa = np.cos(w * a), np.sin(w * a)
    cb, sb = np.cos(w * b), np.sin(w * b)
    cc, sc = np.cos(w * c), np.sin(w * c)
    cos_sum, sin_sum = ca * cb - sa * sb, sa * cb + ca * sb       # cos(w(a + b)), sin(w(a + b))
    return cos_sum * cc + sin_sum * sc


# ----------------------------------------------------------------------------------------------
# 6. Progress measures (Nanda et al. 2023, section 5.1)
# ----------------------------------------------------------------------------------------------
# Measures that move smoothly while the test loss seems stuck, computed from the weights and
# activations the model has at a checkpoint.
#
# The embedding's norm per frequency: ‖(B W_E)_row‖ over the two rows (cos, sin) of frequency k,
# for the p number tokens (the "=" row is no number). A memorising model spreads its norm over
# all frequencies; the algorithm puts nearly all of it on a few key frequencies.

def embedding_norms(model):
    """-> (p // 2,) float64: the norm of the embedding of the numbers along each frequency
    k = 1 .. p // 2."""
    W = model.embed.params["W"][:model.vocab_size - 1].astype(np.float64)    # (p, d)
    p = W.shape[0]
    squares = np.sum((fourier_basis(p) @ W) ** 2, axis=1)                      # (p,) per basis row
    return np.sqrt(np.bincount(basis_frequencies(p), squares)[1:])


# The key frequencies are the ones the algorithm uses. We read them off the embedding: sorted by
# norm, the key frequencies are the strongest ones down to the largest drop in squared norm from
# one frequency to the next (the ratio), looked for among the strongest half. A model that has
# found the algorithm has a few frequencies far above the rest and that drop is unmistakable; a
# memorising model has none, and the rule then picks an arbitrary few, which is why it is applied
# to the trained model.

def key_frequencies(norms):
    """norms (p // 2,) from embedding_norms -> the key frequencies (sorted ints, 1-based)."""
    norms = _check_norms(norms)
    order = np.argsort(-norms)
    squares = norms[order] ** 2
    half = max(len(norms) // 2, 1)
    drops = squares[:half] / np.maximum(squares[1:half + 1], 1e-300)
    n_key = int(np.argmax(drops)) + 1
    return np.sort(order[:n_key] + 1)


def norm_share(norms, frequencies):
    """The share of the embedding's squared norm (over all non-constant frequencies) that the
    given frequencies hold."""
    norms = np.asarray(norms, np.float64)
    return float(np.sum(norms[np.asarray(frequencies) - 1] ** 2) / np.sum(norms ** 2))


# Each neuron's frequency. A neuron's activation at the last position over all pairs is a p x p
# grid N[a, b]. In the two-dimensional Fourier basis, B N Bᵀ, the coefficients of one frequency k
# are the terms 1·(cos, sin)(w_k b), (cos, sin)(w_k a)·1 and the four products of the waves of
# a and of b. The paper finds that a single frequency explains most of each neuron's variance
# (the sum of its squared coefficients, the constant left out): the neurons cluster by frequency.

def neuron_frequencies(hidden):
    """hidden (p², d_mlp), row a·p + b: each neuron's activation on the pair (a, b) ->
    (frequency (d_mlp,) int, fve (d_mlp,) float64): the frequency that explains the largest
    fraction of each neuron's variance over the pairs, and that fraction."""
    hidden = _check_hidden(hidden)
    n = hidden.shape[-1]
    p = math.isqrt(hidden.shape[0])
    grid = hidden.astype(np.float64).reshape(p, p, n)
    B = fourier_basis(p)
    coefficients = np.einsum("ia,abn,jb->ijn", B, grid, B, optimize=True) ** 2    # (p, p, n)
    group = np.eye(p // 2 + 1)[basis_frequencies(p)]                               # (p, k + 1)
    by_frequency = np.einsum("ik,ijn,jl->kln", group, coefficients, group, optimize=True)
    total = coefficients.sum(axis=(0, 1)) - coefficients[0, 0]
    explained = by_frequency[1:, 0] + by_frequency[0, 1:] + np.einsum("kkn->kn", by_frequency)[1:]
    fve = explained / np.maximum(total, 1e-300)                                    # (k, n)
    return fve.argmax(axis=0) + 1, fve.max(axis=0)


# The restricted and excluded losses (section 5.1). The logits over (a, b, c), c the answer,
# are split along the directions cos(w_k(a + b - c)) and sin(w_k(a + b - c)) of the key
# frequencies: on the grid of all p³ triples these directions are orthogonal to each other, so
# the component along one is its dot product with the logits over the grid divided by its
# squared norm (p³/2; for an even p the frequency p/2 has only its cosine, of squared norm p³).
#   restricted loss: the logits keep only their key-frequency components (every other direction
#       is ablated); the loss over all pairs. The paper finds that it falls while the circuit
#       forms, long before the test loss does.
#   excluded loss: the key-frequency components are removed and the rest kept; the loss over
#       the training pairs. The paper finds that it rises while the circuit forms: the model
#       comes to rely on the circuit for the pairs it memorised, too.
# A constant added to all the logits of one pair changes no softmax, so the restricted logits
# need no constant term.

def key_frequency_logits(logits, frequencies):
    """logits (p², p) over all pairs -> their component along cos and sin(w_k(a + b - c)) for the
    frequencies k, (p², p)."""
    logits, frequencies = _check_logits(logits), _check_frequencies(frequencies, len(logits[0]))
    p = logits.shape[1]
    a, b = np.divmod(np.arange(p * p), p)
    phase = (a + b)[:, None] - np.arange(p)[None, :]                       # (p², p): a + b - c
    component = np.zeros_like(logits)
    for k in frequencies:
        waves = [np.cos(2 * np.pi * k * phase / p), np.sin(2 * np.pi * k * phase / p)]
        for wave in waves[:1 if 2 * k == p else 2]:                # sin(π(a + b - c)) is 0
            component += wave * (np.sum(logits * wave) / np.sum(wave * wave))
    return component


def restricted_loss(logits, labels, frequencies):
    """The mean loss over all pairs of the logits kept only along the key frequencies."""
    logits = _check_logits(logits)
    labels = _check_labels(labels, logits.shape)
    loss, _ = losses_and_accuracy(key_frequency_logits(logits, frequencies), labels)
    return float(loss.mean())


def excluded_loss(logits, labels, frequencies, train):
    """The mean loss over the training pairs of the logits with the key frequencies removed."""
    logits = _check_logits(logits)
    labels, train = _check_labels(labels, logits.shape), _check_train_mask(train, logits.shape)
    loss, _ = losses_and_accuracy(logits - key_frequency_logits(logits, frequencies), labels)
    return float(loss[train].mean())


def total_squared_weight(model):
    """Σ w² over every parameter: weight decay pulls it down, most visibly in the cleanup."""
    return float(sum(np.sum(value.astype(np.float64) ** 2) for _, value in model.weights()))


# ----------------------------------------------------------------------------------------------
# 7. The three phases (Nanda et al. 2023, section 5.2)
# ----------------------------------------------------------------------------------------------
# The paper splits training into memorisation, circuit formation and cleanup. We locate the
# boundaries by three events in the measured curves, and then report what the progress measures
# did in each phase, whatever they did:
#   memorisation      from the start to the first checkpoint with train accuracy 100%;
#   circuit formation from there to the first checkpoint whose test loss is below log p, the
#                     loss of a uniform guess: before it the model is confidently wrong about
#                     the held-out pairs, and all the while the restricted loss can fall and
#                     the excluded loss rise;
#   cleanup           from there to the first checkpoint with test accuracy 99%, while weight
#                     decay removes the memorisation and the total squared weight falls.
# A phase whose event never happened is None, and so are the phases after it.

def phases(history, p):
    """history from train() for modular addition mod p -> {"memorisation": (start, end),
    "circuit_formation": ..., "cleanup": ...}, each a pair of steps, or None where its closing
    event was not seen."""
    step, p = _check_history(history), _check_p(p)
    events = [history["train_accuracy"] >= 1, history["test_loss"] < math.log(p),
              history["test_accuracy"] >= 0.99]
    found, start = {}, 0
    for name, event in zip(("memorisation", "circuit_formation", "cleanup"), events):
        later = [] if start is None else np.flatnonzero(event & (step >= start))
        found[name] = (start, int(step[later[0]])) if len(later) else None
        start = found[name][1] if found[name] else None
    return found


# ----------------------------------------------------------------------------------------------
# Appendix. Checking arguments
# ----------------------------------------------------------------------------------------------

# Every pair's logits are p² · (p + 1) numbers; p is bounded so that they stay within
# transformer.MAX_NUMBERS (10⁸): p <= 463.
MAX_P = 463


def _check_p(p):
    return transformer.check_count("p", p, minimum=3, maximum=MAX_P)


def _check_data(p, train_fraction, seed):
    p = _check_p(p)
    if isinstance(train_fraction, bool) or not isinstance(train_fraction, (int, float, np.floating)) \
            or not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be a number in (0, 1), got {train_fraction!r}")
    return p, float(train_fraction), transformer.check_count("seed", seed, minimum=0)


def _check_train(config, progress):
    _check_data(config["p"], config["train_fraction"], config["seed"])
    transformer.check_count("steps", config["steps"])
    transformer.check_count("measure_every", config["measure_every"])
    transformer.check_positive("weight_decay", config["weight_decay"], or_zero=True)
    transformer.check_positive("lr", config["lr"])
    for name in ("d_model", "n_heads", "d_mlp"):
        transformer.check_count(name, config[name])
    if config["d_model"] % config["n_heads"]:
        raise ValueError(f"d_model must be divisible by n_heads, got d_model={config['d_model']}, "
                         f"n_heads={config['n_heads']}")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be None or a function progress(step, loss), "
                        f"got {type(progress).__name__}")


def _check_logits(logits):
    """Logits over all pairs: (p², p) finite floats, row a·p + b."""
    logits = np.asarray(logits)
    p = logits.shape[1] if logits.ndim == 2 else 0
    if logits.dtype.kind not in "fiu" or p < 3 or logits.shape[0] != p * p:
        raise ValueError(f"logits must be the (p², p) logits of every pair with p >= 3, got dtype "
                         f"{logits.dtype}, shape {logits.shape}")
    transformer.check_finite("logits", logits)
    return logits.astype(np.float64)


def _check_frequencies(frequencies, p):
    frequencies = np.asarray(frequencies)
    if frequencies.ndim != 1 or not frequencies.size or frequencies.dtype.kind not in "iu" \
            or frequencies.min() < 1 or frequencies.max() > p // 2:
        raise ValueError(f"frequencies must be a non-empty list of ints in [1, {p // 2}] (p = {p}), "
                         f"got {frequencies.tolist()!r}"[:300])
    return frequencies


def _check_labels(labels, shape):
    labels = np.asarray(labels)
    if labels.shape != shape[:1] or labels.dtype.kind not in "iu" \
            or labels.min() < 0 or labels.max() >= shape[1]:
        raise ValueError(f"labels must be {shape[:1]} ints in [0, {shape[1]}), one per pair, got "
                         f"dtype {labels.dtype}, shape {labels.shape}")
    return labels


def _check_train_mask(train, shape):
    train = np.asarray(train)
    if train.shape != shape[:1] or train.dtype != bool or not train.any():
        raise ValueError(f"train must be a {shape[:1]} bool mask with at least one pair, got dtype "
                         f"{train.dtype}, shape {train.shape}")
    return train


def _check_hidden(hidden):
    hidden = np.asarray(hidden)
    p = math.isqrt(hidden.shape[0]) if hidden.ndim == 2 else 0
    if hidden.dtype.kind != "f" or p < 3 or p * p != hidden.shape[0]:
        raise ValueError(f"hidden must be (p², d_mlp) float activations, one row per pair with "
                         f"p >= 3, got dtype {hidden.dtype}, shape {hidden.shape}")
    transformer.check_finite("hidden", hidden)
    return hidden


def _check_norms(norms):
    norms = np.asarray(norms)
    if norms.ndim != 1 or not norms.size or norms.dtype.kind not in "fiu":
        raise ValueError(f"norms must be embedding_norms' (p // 2,) array, got shape {norms.shape}")
    transformer.check_finite("norms", norms)
    return norms.astype(np.float64)


HISTORY_NAMES = ("step", "train_accuracy", "test_accuracy", "test_loss")


def _check_history(history):
    missing = HISTORY_NAMES if not isinstance(history, dict) else [
        name for name in HISTORY_NAMES if name not in history]
    if missing:
        raise ValueError(f"history must be train()'s dict of arrays, with {', '.join(HISTORY_NAMES)}; "
                         f"missing: {', '.join(missing)}")
    return np.asarray(history["step"])


def _check_model(model):
    """logits_at_last runs the layers of grokking_model's architecture by hand: one block with
    attention and an MLP, no layer norm, learned positions."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(model, transformer.DecoderOnlyTransformer) or len(blocks) != 1 \
            or blocks[0].ffn is None or model.pos_embed is None \
            or not isinstance(blocks[0].norm1, transformer.Identity):
        raise TypeError(f"model must be a grokking_model (one block with an MLP, no layer norm, "
                        f"learned positions), got {type(model).__name__}")


def _check_dlogits(model, dlogits):
    """The gradient of logits_at_last's last output: (N, p + 1), finite."""
    shape = getattr(model, "saved", None)
    if shape is None or len(shape) != 3 or shape[1] != 1:
        raise ValueError("backward_at_last called before logits_at_last")
    if np.shape(dlogits) != (shape[0], shape[2]):
        raise ValueError(f"dlogits must have the shape of logits_at_last's output "
                         f"{(shape[0], shape[2])}, got {np.shape(dlogits)}")
    transformer.check_finite("dlogits", dlogits)
    return np.asarray(dlogits)
