"""Reading a transformer's algorithm from its weights: attention as a Kronecker product, the QK
and OV circuits, the path expansion, skip-trigrams and induction heads.

Every identity of "A Mathematical Framework for Transformer Circuits" (Elhage et al. 2021) that
this file uses is computed and checked to machine precision, then applied to small
attention-only models trained with transformer.py. Read top to bottom:

    1. The Kronecker product      (P ⊗ Q) X = Q X Pᵀ as an operator on matrices; np.kron on
                                  the column-stacked vec(X); the mixed-product property
    2. One head, three ways       H = W_O (W_V X) Aᵀ = (A ⊗ W_O W_V) X = the explicit
                                  (n·d × n·d) matrix; "move" (A ⊗ I) and "process" (I ⊗ W_OV);
                                  virtual weights I ⊗ W
    3. From rows to columns       the ONE place where transformer.py's weights (tokens are
                                  rows) become the paper's matrices (tokens are columns)
    4. Training                   the simplified transformer built from transformer.py's parts
                                  and trained with its Adam; no attention written here
    5. Zero layers                W_U W_E is a bigram table
    6. One layer                  the path expansion, the QK and OV circuits, skip-trigrams
    7. Two layers                 induction heads: data with repeats, induction and
                                  previous-token scores, composition, copying, ablation
    8. Training dynamics          a small GPT trained on real text (the prose of CPython's
       on real text               documentation) and watched: the n-gram entropy floors it
                                  passes, Olsson's in-context-learning score, each head's
                                  prefix-matching score, the induction bump located in the curve
    9. Causal interventions       on transformer.py's named activations: activation patching
                                  of the residual stream and of heads, the logit lens, direct
                                  logit attribution
    Appendix                      checking arguments: every public function refuses bad input
                                  with a ValueError or TypeError naming the argument, before
                                  it changes anything

Shapes. Sections 1-2 and every circuit use the paper's convention: a sequence is a matrix
X (d, n) whose n columns are tokens, a weight acts on the left, W_Q, W_K, W_V (d_head, d),
W_O (d, d_head), W_E (d, V), W_U (V, d). An attention pattern A (n, n) has A[i, j] = how much
destination (query) i attends to source (key) j, so each row sums to one: this is the same
matrix as transformer.py's `pattern`, (B, H, n, n). Batches in the paper's convention are
(B, d, n). Anything handed back to be compared with model.forward (logits, losses) is in
transformer.py's layout (B, n, V). Section 3 does both translations.
"""

import math
import numbers
import re
from contextlib import contextmanager

import numpy as np

import transformer


# ----------------------------------------------------------------------------------------------
# 1. The Kronecker product as an operator on matrices
# ----------------------------------------------------------------------------------------------
# For P (p, n) and Q (q, d), P ⊗ Q is the (p·q, n·d) block matrix whose block (i, j) is
# P[i, j] Q. Acting on a matrix X (d, n) the framework reads it as
#     (P ⊗ Q) X = Q X Pᵀ,
# Q mixes the features inside every column (every token) and P mixes the columns (the
# positions) (Menon, Attention as a Kronecker product, Remark 14). The same statement in plain
# vectors: with vec(X) stacking the columns of X,
#     np.kron(P, Q) @ vec(X) == vec(Q X Pᵀ).
# Two consequences carry the whole file (Elhage et al., "Notation"; Menon, Lemmas 16 and 17):
#     mixed product   (A ⊗ B)(C ⊗ D) = (AC) ⊗ (BD)
#     sandwich        M X N = (Nᵀ ⊗ M) X

def vec(X):
    """(d, n) -> (n·d,): the columns of X stacked, first column first."""
    return _check_matrix("X", X).reshape(-1, order="F")


def unvec(x, shape):
    """(n·d,) -> (d, n): the inverse of vec."""
    x, shape = _check_unvec(x, shape)
    return x.reshape(shape, order="F")


def kron_apply(P, Q, X):
    """(P ⊗ Q) X = Q X Pᵀ without building P ⊗ Q.
    P (p, n) acts on positions, Q (q, d) on features, X (d, n) -> (q, p)."""
    P, Q, X = _check_kron(P, Q, X)
    return Q @ X @ P.T


# ----------------------------------------------------------------------------------------------
# 2. One attention head, three ways
# ----------------------------------------------------------------------------------------------
# The simplified transformer of the framework has no MLP, no layer norm and no biases:
#     Attn(X) = X + Σ_h W_O^h (W_V^h X) A^hᵀ,   A^h = softmax_rows((W_Q^h X)ᵀ (W_K^h X) / √d_head)
# (the 1/√d_head is optional in the paper; transformer.py always applies it, so we do too).
# One head's output is H = W_O W_V X Aᵀ, which by the sandwich rule is
#     H = (A ⊗ W_O W_V) X = (A ⊗ I)(I ⊗ W_O W_V) X
# and the mixed-product property splits it into "process every token with W_OV = W_O W_V" and
# "move information between positions with A". The factors commute: (I ⊗ W_OV)(A ⊗ I) is the
# same operator, because mixing positions and mixing features act on different axes.
# A per-token matrix W (d', d) acts on the whole sequence as I_n ⊗ W, the "virtual weight" of
# Menon, Attention as a Kronecker product, Definition 19. Elhage et al. use "virtual weights"
# for products such as W_I W_O of a later layer's input and an earlier layer's output matrix;
# the same mixed product, (I ⊗ W_I)(I ⊗ W_O) = I ⊗ W_I W_O, turns one into the other (section
# 7 scores such products).

def attention_pattern(X, W_Q, W_K, causal=True):
    """A = softmax over each row of (W_Q X)ᵀ (W_K X) / √d_head, X (d, n) -> A (n, n).
    A[i, j] is the weight destination i puts on source j; causal masks j > i."""
    X, W_Q, W_K, causal = _check_attention(X, W_Q, W_K, causal)
    scores = (W_Q @ X).T @ (W_K @ X) / np.sqrt(W_Q.shape[0])
    return transformer.softmax(scores, axis=-1, mask=transformer.causal_mask(X.shape[1]) if causal else None)


def head_output(X, A, W_V, W_O):
    """Plain matrix products: H = W_O (W_V X) Aᵀ.  X (d, n), A (n, n) -> H (d, n)."""
    X, A, W_V, W_O = _check_head(X, A, W_V, W_O)
    return W_O @ (W_V @ X) @ A.T


def head_output_kronecker(X, A, W_V, W_O, explicit=False):
    """The same head as one Kronecker operator: H = (A ⊗ W_O W_V) X.
    explicit=False applies it as Q X Pᵀ (kron_apply); explicit=True builds the (n·d × n·d)
    matrix np.kron(A, W_O W_V) and multiplies vec(X), as a check that the operator reading is
    right. X (d, n) -> H (d, n)."""
    X, A, W_V, W_O = _check_head(X, A, W_V, W_O)
    W_OV = W_O @ W_V
    if _check_flag("explicit", explicit):                  # unvec(np.kron(A, W_OV) @ vec(X))
        return (np.kron(A, W_OV) @ X.reshape(-1, order="F")).reshape(X.shape, order="F")
    return W_OV @ X @ A.T                                   # (A ⊗ W_OV) X = W_OV X Aᵀ, section 1


def virtual_weight(W, n):
    """I_n ⊗ W (n·d', n·d): the per-token matrix W applied at every one of n positions."""
    W, n = _check_matrix("W", W), transformer.check_count("n", n)
    return np.kron(np.eye(n), W)


def kronecker_identity_errors(seed=0):
    """Check every identity of sections 1-2 on random matrices of different shapes.
    Returns {identity: largest absolute difference between its two sides}."""
    rng = np.random.default_rng(transformer.check_count("seed", seed, minimum=0))

    def r(*shape):
        return rng.standard_normal(shape)

    P, Q, X = r(3, 4), r(5, 2), r(2, 4)
    A, B, C, D = r(2, 3), r(4, 2), r(3, 5), r(2, 3)
    M, Y, N = r(3, 2), r(2, 4), r(4, 5)
    d, d_head, n = 6, 3, 5
    Xh = r(d, n)
    W_Q, W_K, W_V, W_O = r(d_head, d), r(d_head, d), r(d_head, d), r(d, d_head)
    Ah = attention_pattern(Xh, W_Q, W_K)
    H = head_output(Xh, Ah, W_V, W_O)
    W_OV, I_n, I_d = W_O @ W_V, np.eye(n), np.eye(d)
    move, process = np.kron(Ah, I_d), np.kron(I_n, W_OV)
    errors = {
        "(P⊗Q)X = Q X Pᵀ vs np.kron on vec(X)":
            vec(kron_apply(P, Q, X)) - np.kron(P, Q) @ vec(X),
        "(A⊗B)(C⊗D) = (AC)⊗(BD)": np.kron(A, B) @ np.kron(C, D) - np.kron(A @ C, B @ D),
        "M X N = (Nᵀ⊗M) X, np.kron on vec(X)": vec(M @ Y @ N) - np.kron(N.T, M) @ vec(Y),
        "head: W_O W_V X Aᵀ vs (A⊗W_O W_V) X": H - head_output_kronecker(Xh, Ah, W_V, W_O),
        "head: W_O W_V X Aᵀ vs np.kron(A, W_OV) vec(X)":
            H - head_output_kronecker(Xh, Ah, W_V, W_O, explicit=True),
        "move·process: (A⊗I)(I⊗W_OV) = A⊗W_OV": move @ process - np.kron(Ah, W_OV),
        "process·move: (I⊗W_OV)(A⊗I) = A⊗W_OV": process @ move - np.kron(Ah, W_OV),
        "virtual weight: (I⊗W) vec(X) = vec(W X)": virtual_weight(W_OV, n) @ vec(Xh) - vec(W_OV @ Xh),
    }
    return {name: float(np.max(np.abs(diff))) for name, diff in errors.items()}


# ----------------------------------------------------------------------------------------------
# 3. From transformer.py's rows to the paper's columns (the only translation in this file)
# ----------------------------------------------------------------------------------------------
# transformer.py keeps tokens as rows and multiplies weights on the right: y = x @ W, with
# W (d_in, d_out). The paper keeps tokens as columns and multiplies on the left: y = W x. So
# every paper matrix is the transpose of a transformer.py matrix:
#     W_Q^h = query.W[:, h·d_k:(h+1)·d_k]ᵀ   (d_k, d)     W_O^h = out.W[h·d_k:(h+1)·d_k, :]ᵀ (d, d_k)
#     W_E   = (embed.W · embed_scale)ᵀ         (d, V)     W_U   = unembed.Wᵀ                  (V, d)
# (with tied weights the unembedding is h embed.Wᵀ, so W_U = embed.W, without the scale),
# and the positional code enters the residual stream as a matrix P = posᵀ (d, max_len), or
# pos_embed.Wᵀ for learned positions:
#     X_0 = W_E[:, tokens] + P[:, :n]        (the model's x = embed.W[tok]·√d + pos[t]).
# Attention patterns need no translation: pattern[b, h, i, j] is already "destination i reads
# source j". Results meant to be compared with model.forward go back to rows with to_rows.
# The circuits below are exact only for the simplified transformer; check_simplified (in the
# appendix) refuses any other model.

def head_weights(model, layer, head):
    """Paper-convention (float64) weights of one head: W_Q, W_K, W_V (d_k, d) and W_O (d, d_k)."""
    layer, head = _check_layer_head(model, layer, head)
    attn = model.blocks[layer].self_attn
    cols = _head_block(model, head)
    W_Q, W_K, W_V = (lin.params["W"][:, cols].T for lin in (attn.query, attn.key, attn.value))
    W_O = attn.out.params["W"][cols, :].T
    return tuple(np.asarray(W, np.float64) for W in (W_Q, W_K, W_V, W_O))


def _head_block(model, head):
    """Head h's block of d_k = d_model / n_heads columns of query.W, key.W, value.W, which is
    also its block of rows of out.W."""
    d_k = model.config["d_model"] // model.config["n_heads"]
    return slice(head * d_k, (head + 1) * d_k)


def embedding_weights(model):
    """Paper-convention (float64) W_E (d, V) with the embedding scale folded in, W_U (V, d),
    and the positional code P (d, max_len)."""
    check_simplified(model)
    W_E = model.embed.params["W"].T * model.embed_scale
    pos = model.pos if model.pos_embed is None else model.pos_embed.params["W"]
    return np.asarray(W_E, np.float64), unembedding_weights(model), np.asarray(pos.T, np.float64)


def unembedding_weights(model):
    """W_U (V, d) in float64, of any DecoderOnlyTransformer: logits = W_U h (+ a bias)."""
    if isinstance(model.unembed, transformer.TiedUnembedding):
        W_U = model.embed.params["W"]                    # logits = h Eᵀ: E itself is W_U
    else:
        W_U = model.unembed.params["W"].T
    return np.asarray(W_U, np.float64)


def run_with_patterns(model, tokens):
    """One forward pass; returns the logits (B, n, V) and a list with every layer's attention
    pattern (B, H, n, n), read from block.self_attn.attention.pattern."""
    _check_model(model)
    logits = model.forward(tokens)                 # model.forward checks the tokens
    return logits, [block.self_attn.attention.pattern for block in model.blocks]


def to_rows(Y):
    """(B, V, n) paper layout -> (B, n, V), the layout of model.forward's logits."""
    return np.swapaxes(_check_real("Y", Y, "have shape (..., V, n)", min_ndim=2), -1, -2)


@contextmanager
def ablated(model, layer, head):
    """Inside `with ablated(model, layer, head):` that head writes nothing: its rows of out.W,
    the only way its output reaches the residual stream, are zero. They are restored on exit,
    even after an exception."""
    layer, head = _check_layer_head(model, layer, head)
    W_out = model.blocks[layer].self_attn.out.params["W"]
    rows = _head_block(model, head)
    saved = W_out[rows].copy()
    W_out[rows] = 0
    try:
        yield model
    finally:
        W_out[rows] = saved


# ----------------------------------------------------------------------------------------------
# 4. Training the simplified transformer (transformer.py's parts and optimizer)
# ----------------------------------------------------------------------------------------------
# Attention-only, no layer norm, no biases: DecoderOnlyTransformer has switches for all three,
# so nothing here re-implements attention or Adam. d_ff is unused without an MLP.

def attention_only_model(vocab_size, d_model, n_heads, n_layers, max_len, dtype=np.float64, seed=0,
                         positional="sinusoidal"):
    """The simplified transformer of the framework, built by transformer.py."""
    return transformer.DecoderOnlyTransformer(vocab_size, d_model, n_heads, n_layers, d_ff=1, max_len=max_len,
                                    attention_only=True, layer_norm=False, bias=False,
                                    positional=positional, dtype=dtype, seed=seed)


def train(model, sample, steps, lr=3e-3, seed=0, every=0, monitor=None):
    """Next-token training with transformer.Adam.

    sample(rng) -> (B, n + 1) int tokens; the model reads tokens[:, :-1] and predicts
    tokens[:, 1:]. Every `every` steps (and after the last) monitor(step, model) is called and
    its result kept. Returns (losses (steps,), records).
    The arguments and the first batch are checked before the first update; a later batch that
    does not fit the model is refused by model.forward, and the updates made until then stay."""
    steps, seed, every = _check_train(model, sample, steps, lr, seed, every, monitor)
    rng = np.random.default_rng(seed)
    tokens = _check_sequences(model, "sample(rng)", sample(rng)) if steps else None
    optimizer = transformer.Adam(list(model.parameters()), lr=lr)
    losses, records = np.empty(steps), []
    for step in range(steps):
        tokens = sample(rng) if step else tokens
        losses[step] = transformer.train_step(model, optimizer, (tokens[:, :-1],), tokens[:, 1:])
        if every and (step % every == 0 or step == steps - 1):
            records.append(monitor(step, model))
    return losses, records


def to_float64(model):
    """A float64 copy of a model (train in float32 for speed, check identities in float64)."""
    _check_model(model)
    copy = transformer.DecoderOnlyTransformer(**{**model.config, "dtype": np.float64})
    for (_, value), (_, source) in zip(copy.weights(), model.weights()):
        value[...] = source
    return copy


def next_token_losses(logits, targets):
    """logits (B, n, V), targets (B, n) -> (B, n) float64: -log p(target) at every position."""
    logits, targets = _check_logits_targets(logits, targets)
    transformer.check_finite("logits", logits)
    logp = transformer.log_softmax(np.asarray(logits, np.float64))
    return -np.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def token_losses(model, tokens):
    """(B, n + 1) tokens -> (B, n) float64: -log p(tokens[:, t+1] | tokens[:, :t+1])."""
    _check_model(model)
    tokens = _check_sequences(model, "tokens", tokens)
    return next_token_losses(model.forward(tokens[:, :-1]), tokens[:, 1:])


# ----------------------------------------------------------------------------------------------
# 5. Zero layers: the bigram model
# ----------------------------------------------------------------------------------------------
# With no attention, logits = (I ⊗ W_U W_E) x: every position predicts the next token from the
# current one alone. The best such model is the corpus's bigram table, so W_U W_E, read column
# by column through a softmax, should approximate log p(next | current) (Elhage et al.,
# "Zero-Layer Transformers"; Menon, section "Zero-Layer Transformers"). The paper's zero-layer
# model is embedding then unembedding, with no positional code, and so is ours
# (positional=None). With the code, its slow cosines hardly change over a short sequence, so
# W_U P would act as a bias, a per-next-token offset (how common each token is), and training
# would put part of that offset there instead of in W_U W_E.

def markov_corpus(rng, vocab_size, n_seqs, length, successors=3):
    """A corpus from a random bigram chain: each token is followed by one of `successors`
    tokens drawn for it, with random (Dirichlet) probabilities. -> (n_seqs, length) int."""
    vocab_size, n_seqs, length, successors = _check_markov(rng, vocab_size, n_seqs, length, successors)
    nxt = np.argsort(rng.random((vocab_size, vocab_size)), axis=1)[:, :successors]
    probs = np.zeros((vocab_size, vocab_size))
    np.put_along_axis(probs, nxt, rng.dirichlet(np.ones(successors), vocab_size), axis=1)
    cdf = np.cumsum(probs, axis=1)
    tokens = np.empty((n_seqs, length), np.int64)
    tokens[:, 0] = rng.integers(0, vocab_size, n_seqs)
    for t in range(1, length):                       # a chain: each step needs the previous one
        u = rng.random((n_seqs, 1)) * cdf[tokens[:, t - 1], -1:]
        tokens[:, t] = (cdf[tokens[:, t - 1]] < u).sum(axis=1)
    return tokens


def bigram_log_probs(tokens, vocab_size):
    """Empirical log p(next | current) of a corpus (n_seqs, length), laid out like W_U W_E:
    (V_next, V_cur), one column per current token. -inf where a pair never occurs, NaN in the
    column of a current token that never occurs."""
    tokens, vocab_size = _check_corpus(tokens, vocab_size)
    counts = np.zeros((vocab_size, vocab_size))
    np.add.at(counts, (tokens[:, 1:].ravel(), tokens[:, :-1].ravel()), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(counts / counts.sum(axis=0, keepdims=True))


def bigram_correlation(model, tokens):
    """Pearson correlation, over the bigrams seen in the corpus tokens (n_seqs, n + 1), between
    the corpus's log p(next | current) and log softmax of the zero-layer model's W_U W_E."""
    check_simplified(model)
    table = bigram_log_probs(tokens, model.vocab_size)
    seen = np.isfinite(table)
    _check_spread(table[seen])
    W_E, W_U, _ = embedding_weights(model)
    return float(np.corrcoef(table[seen], transformer.log_softmax(W_U @ W_E, axis=0)[seen])[0, 1])


def train_bigram_model(vocab_size=16, d_model=16, length=16, n_seqs=2000, steps=300, lr=1e-2,
                       batch=64, seed=0, dtype=np.float32):
    """A zero-layer model, without positional code, trained on a random bigram chain.
    Returns (model, corpus (n_seqs, length + 1), losses)."""
    length, batch = transformer.check_count("length", length), transformer.check_count("batch", batch)
    seed = transformer.check_count("seed", seed, minimum=0)
    corpus = markov_corpus(np.random.default_rng(seed), vocab_size, n_seqs, length + 1)
    model = attention_only_model(vocab_size, d_model, 1, 0, length, dtype, seed, positional=None)
    losses, _ = train(model, lambda rng: corpus[rng.integers(0, n_seqs, batch)], steps, lr, seed)
    return model, corpus, losses


# ----------------------------------------------------------------------------------------------
# 6. One layer: path expansion, QK and OV circuits, skip-trigrams
# ----------------------------------------------------------------------------------------------
# With the attention patterns held at the values the forward pass computed, the model is linear
# in its input, so the logits split into a sum over paths (Elhage et al., "Path Expansion";
# Menon, Proposition 22):
#     logits = W_U X_0 + Σ_h W_U W_OV^h X_0 A^hᵀ + Σ_{h, h'} W_U W_OV^h' W_OV^h X_0 A^hᵀ A^h'ᵀ + ...
# one term per chain of heads at increasing layers. X_0 = W_E x + P splits each term into a
# token part and a position part. For one layer in the Kronecker notation, on one-hot tokens x:
#     logits = (I ⊗ W_U W_E) x + Σ_h (A^h ⊗ W_U W_OV^h W_E) x
#              + (I ⊗ W_U) P + Σ_h (A^h ⊗ W_U W_OV^h) P                 (P the positional code)
# the direct path is the bigram table of section 5 and each head adds skip-trigrams. The QK
# and OV circuits are the two halves of a head read on tokens (Menon, Definition 23).

def path_expansion(model, tokens):
    """Split model.forward(tokens) into the paths through the residual stream.

    Returns a dict {path name: (B, n, V) logits}, in the order: "tok", "pos" (the direct path
    from token embedding and from positions), then "tok > L0H1", "pos > L0H1", ..., and for
    deeper models chains such as "tok > L0H1 > L1H3". The terms sum to model.forward(tokens)
    up to rounding, because the attention patterns are the ones that forward computed. The
    model must be the simplified transformer."""
    _check_path_expansion(model, tokens)
    _, patterns = run_with_patterns(model, tokens)              # L arrays (B, H, n, n)
    tokens = np.asarray(tokens)
    W_E, W_U, P = embedding_weights(model)
    n = tokens.shape[1]
    paths = {"tok": W_E[:, tokens].transpose(1, 0, 2),           # (B, d, n)
             "pos": np.broadcast_to(P[:, :n], (tokens.shape[0], *P[:, :n].shape))}
    H = model.config["n_heads"]
    for layer, A in enumerate(np.asarray(patterns, np.float64)):
        W_OV = np.stack([W_O @ W_V for _, _, W_V, W_O in
                         (head_weights(model, layer, h) for h in range(H))])      # (H, d, d)
        new = {}
        for name, X in paths.items():       # every path so far is in the residual stream
            # head h processes X with W_OV^h and moves it with A^h: W_OV^h X A^hᵀ, all heads at once
            out = (W_OV @ X[:, None]) @ A.swapaxes(-1, -2)                       # (B, H, d, n)
            new.update({f"{name} > L{layer}H{h}": out[:, h] for h in range(H)})
        paths.update(new)
    return {name: np.swapaxes(np.einsum("vd,bdn->bvn", W_U, X), -1, -2) for name, X in paths.items()}


def qk_circuit(model, layer, head):
    """W_Eᵀ W_Qᵀ W_K W_E / √d_k (V_dest, V_src): the attention score destination token b gives
    source token a, from token embeddings alone (positions left out). For heads above layer 0
    this is only the part that reads the embeddings directly."""
    W_Q, W_K, _, _ = head_weights(model, layer, head)         # checks the model, layer and head
    W_E, _, _ = embedding_weights(model)
    return (W_Q @ W_E).T @ (W_K @ W_E) / np.sqrt(W_Q.shape[0])


def ov_circuit(model, layer, head):
    """W_U W_O W_V W_E (V_out, V_src): how attending to source token a changes the logit of
    every out token, if the head attends to a alone."""
    _, _, W_V, W_O = head_weights(model, layer, head)         # checks the model, layer and head
    W_E, W_U, _ = embedding_weights(model)
    return W_U @ W_O @ W_V @ W_E


def skip_trigram_corpus(rng, triples, vocab_size, n_seqs, length):
    """Random sequences with planted skip-trigrams "a ... b -> c". Each sequence draws one
    triple (a, b, c): b sits at a random position j >= 1, and with probability 1/2 the source a
    sits somewhere before it and c right after b; otherwise there is no a and a random token
    follows b. So b alone does not predict c (no bigram can), only a earlier and b now do. The
    filler is every token except the destinations b, so sources and outs also turn up where
    they mean nothing, and the model has to tie them to b. -> (n_seqs, length) int."""
    triples, filler, n_seqs, length = _check_skip_corpus(rng, triples, vocab_size, n_seqs, length)
    tokens = rng.choice(filler, (n_seqs, length))
    a, b, c = triples[rng.integers(0, len(triples), n_seqs)].T
    j = rng.integers(1, length - 1, n_seqs)                 # b at j, the next token at j + 1
    i = rng.integers(0, j)                                  # a at i < j
    rows, planted = np.arange(n_seqs), rng.random(n_seqs) < 0.5
    tokens[rows, j] = b
    tokens[rows[planted], i[planted]] = a[planted]
    tokens[rows[planted], j[planted] + 1] = c[planted]
    return tokens


PLANTED_TRIPLES = ((0, 4, 6), (1, 4, 7), (2, 5, 8), (3, 5, 9))   # (a, b, c): two sources per b


def train_skip_trigram_model(triples=PLANTED_TRIPLES, vocab_size=16, d_model=32, n_heads=4,
                             length=8, steps=800, lr=3e-3, batch=32, seed=0, dtype=np.float32):
    """A one-layer model trained on skip_trigram_corpus. Returns (model, losses)."""
    batch = transformer.check_count("batch", batch)
    length = transformer.check_count("length", length, minimum=2)   # the corpus has length + 1 >= 3 tokens
    model = attention_only_model(vocab_size, d_model, n_heads, 1, length, dtype, seed)

    def sample(rng):
        return skip_trigram_corpus(rng, triples, vocab_size, batch, length + 1)

    losses, _ = train(model, sample, steps, lr, seed)
    return model, losses


def skip_trigrams(model, top_k=10):
    """The strongest "source ... destination -> out" triples of a one-layer model, read off the
    weights, in the form of the paper's Table 1 (Menon, Table 1 and Theorem 25).

    Read each triple on the smallest context that holds it: source a, then destination b, with
    positions left out. Head h splits its attention between a and b itself with the two-token
    softmax s_h = σ(QK^h[b, a] - QK^h[b, b]), so the logits after "a b" are
        with(a, b) = W_U W_E[:, b] + Σ_h OV^h[:, b] + Σ_h s_h (OV^h[:, a] - OV^h[:, b])
    and after b alone (every head on b) the first two terms. The triple's score is how much more
    probable out token c becomes because a came earlier:
        score(a, b, c) = softmax(with(a, b))[c] - softmax(with(b, b))[c]       (in [-1, 1]).
    A triple with a == b scores 0 by construction. Every triple is scored at once, H·V³
    numbers: fine for a toy vocabulary, not for a real one. Returns the top_k as a list of
    (score, head, source a, destination b, out c), best first, where head is the one whose
    term raises c's logit most."""
    top_k = _check_skip_trigrams(model, top_k)
    H = model.config["n_heads"]
    W_E, W_U, _ = embedding_weights(model)
    qk = np.stack([qk_circuit(model, 0, h) for h in range(H)])                  # (H, b, a)
    ov = np.stack([ov_circuit(model, 0, h) for h in range(H)])                  # (H, c, a)
    alone = W_U @ W_E + ov.sum(axis=0)                                          # (c, b)
    self_score = np.diagonal(qk, axis1=1, axis2=2)[:, :, None]                  # QK^h[b, b]
    share = 0.5 * (1 + np.tanh((qk - self_score) / 2))   # s_h (H, b, a); σ(z) = (1 + tanh(z/2)) / 2
                                                          # cannot overflow, unlike 1 / (1 + e^-z)
    moved = share[:, None] * (ov[:, :, None, :] - ov[:, :, :, None])             # (H, c, b, a)
    with_a = transformer.softmax(alone[:, :, None] + moved.sum(axis=0), axis=0)          # (c, b, a)
    score = (with_a - transformer.softmax(alone, axis=0)[:, :, None]).transpose(2, 1, 0)  # (a, b, c)
    best = np.argsort(-score, axis=None, kind="stable")[:top_k]
    rows = []
    for i in best:
        a, b, c = np.unravel_index(i, score.shape)
        rows.append((float(score[a, b, c]), int(np.argmax(moved[:, c, b, a])), int(a), int(b), int(c)))
    return rows


# ----------------------------------------------------------------------------------------------
# 7. Two layers: induction heads
# ----------------------------------------------------------------------------------------------
# An induction head completes "[A][B] ... [A] -> [B]": at the second [A] it attends to the
# token after the first [A] and copies it (Olsson et al. 2022). It needs two layers: a
# layer-0 head writes "the previous token was A" into each position, and a layer-1 head's keys
# read that (K-composition), so the query "A" matches the position after an earlier A.
# The training data repeat a random segment at a random later offset. With a fixed offset
# (say, "the second half repeats the first") position alone would tell a head where to look,
# and a model can solve it with positional attention instead of an induction circuit.

def repeated_segment_batch(rng, batch, length, vocab_size, min_segment, max_segment):
    """Uniform random tokens (batch, length) in which a segment of random length L in
    [min_segment, max_segment] starting at s1 is copied to a random later start s2 >= s1 + L.
    Returns (tokens, inside): inside (batch, length - 1) is True at input positions t whose
    target t + 1 continues the copy (s2 <= t < s2 + L - 1), i.e. predictable by induction."""
    batch, length, vocab_size, min_segment, max_segment = _check_segments(
        rng, batch, length, vocab_size, min_segment, max_segment)
    L = rng.integers(min_segment, max_segment + 1, batch)[:, None]
    s1 = rng.integers(0, length - 2 * L + 1)
    s2 = rng.integers(s1 + L, length - L + 1)
    t = np.arange(length)[None, :]
    copy = (t >= s2) & (t < s2 + L)
    source = np.where(copy, t - (s2 - s1), t)                  # the copy reads the first segment
    tokens = np.take_along_axis(rng.integers(0, vocab_size, (batch, length)), source, axis=1)
    inside = (t[:, :-1] >= s2) & (t[:, :-1] < s2 + L - 1)
    return tokens, inside


def train_induction_model(n_layers=2, vocab_size=16, length=16, d_model=32, n_heads=2, steps=600,
                          lr=1e-2, batch=32, seed=0, dtype=np.float32, every=0, monitor=None):
    """A model trained on repeated_segment_batch (segments of length//4 .. length//2 tokens).
    The defaults are a small setting in which two layers grow an induction head and one layer
    cannot. monitor/every as in train. Returns (model, losses, records)."""
    batch = transformer.check_count("batch", batch)
    length = transformer.check_count("length", length, minimum=8)   # segments of length // 4 >= 2 tokens
    transformer.check_count("vocab_size", vocab_size)
    model = attention_only_model(vocab_size, d_model, n_heads, n_layers, length, dtype, seed)

    def sample(rng):
        return repeated_segment_batch(rng, batch, length + 1, vocab_size, length // 4, length // 2)[0]

    losses, records = train(model, sample, steps, lr, seed, every, monitor)
    return model, losses, records


def split_losses(losses, inside):
    """(B, n) per-token losses -> (mean where inside, mean elsewhere)."""
    losses, inside = _check_split(losses, inside)
    return float(losses[inside].mean()), float(losses[~inside].mean())


def repeat_losses(model, tokens, inside):
    """Mean next-token loss inside repeats and elsewhere: tokens (B, n + 1) and inside (B, n)
    from repeated_segment_batch -> (loss_inside, loss_outside)."""
    _check_model(model)
    tokens, inside = _check_repeats(model, tokens, inside)
    losses = token_losses(model, tokens)
    return float(losses[inside].mean()), float(losses[~inside].mean())


def ablation_losses(model, tokens, inside, layer):
    """(H, 2): repeat_losses with each head of `layer` ablated in turn."""
    _check_layer_head(model, layer, 0)
    tokens, inside = _check_repeats(model, tokens, inside)
    losses = np.empty((model.config["n_heads"], 2))
    for head in range(len(losses)):
        with ablated(model, layer, head):
            per_token = token_losses(model, tokens)
            losses[head] = per_token[inside].mean(), per_token[~inside].mean()
    return losses


# The two attention scores, first on any stack of patterns (L, B, H, n, n), such as
# run_with_patterns gives, then on the patterns a model computes.

def score_induction(patterns, tokens, where=None):
    """patterns (L, B, H, n, n), tokens (B, n) -> (L, H): for every head, the attention a
    destination i puts on the positions right after earlier occurrences of its own token
    (j + 1 for j < i with tokens[j] == tokens[i]), averaged over the destinations where (B, n)
    is True (default: every destination that has an earlier occurrence; pass
    repeated_segment_batch's `inside` to score inside repeats only)."""
    patterns, tokens, where = _check_induction(patterns, tokens, where)
    n = tokens.shape[1]
    earlier = (tokens[:, :, None] == tokens[:, None, :]) & np.tri(n, k=-1, dtype=bool)   # (B, i, j)
    target = np.zeros_like(earlier)
    target[:, :, 1:] = earlier[:, :, :-1]                        # source s = j + 1
    has = target.any(axis=2) & where
    _check_has_earlier(has)
    return np.einsum("lbhis,bis->lh", patterns, target * has[:, :, None]) / has.sum()


def score_previous_token(patterns):
    """patterns (L, B, H, n, n) -> (L, H): mean attention of positions i >= 1 on i - 1."""
    patterns = _check_patterns(patterns, min_n=2)
    return np.diagonal(patterns, offset=-1, axis1=-2, axis2=-1).mean(axis=(1, 3))


def induction_scores(model, tokens, where=None):
    """(n_layers, H): score_induction of the attention patterns the model computes on tokens."""
    tokens, where = _check_tokens_where(model, tokens, where)
    return score_induction(_all_patterns(model, tokens), tokens, where)


def previous_token_scores(model, tokens):
    """(n_layers, H): score_previous_token of the attention patterns the model computes."""
    tokens, _ = _check_tokens_where(model, tokens, None, min_n=2)
    return score_previous_token(_all_patterns(model, tokens))


def _all_patterns(model, tokens):
    return np.asarray(run_with_patterns(model, tokens)[1], np.float64)      # (L, B, H, n, n)


def composition_score(A, B):
    """‖A B‖_F / (‖A‖_F ‖B‖_F), in [0, 1]: how much of what B writes A reads (Elhage et al.,
    "Virtual Weights and Composition")."""
    A, B = _check_composition(A, B)
    return float(np.linalg.norm(A @ B) / (np.linalg.norm(A) * np.linalg.norm(B)))


def composition_scores(model):
    """Q-, K- and V-composition of every layer-1 head (rows) with every layer-0 head (columns):
        Q: comp(W_QKᵀ, W_OV^0)   K: comp(W_QK, W_OV^0)   V: comp(W_OV^1, W_OV^0)
    with W_QK = W_Qᵀ W_K (d, d) of the layer-1 head (score = x_destᵀ W_QK x_src) and W_OV^0 the
    layer-0 head's W_O W_V. -> {"Q": (H, H), "K": (H, H), "V": (H, H)}."""
    _check_two_layers(model)
    H = model.config["n_heads"]
    first = [head_weights(model, 0, h) for h in range(H)]
    second = [head_weights(model, 1, h) for h in range(H)]
    W_OV0 = [W_O @ W_V for _, _, W_V, W_O in first]
    scores = {kind: np.empty((H, H)) for kind in "QKV"}
    for i, (W_Q, W_K, W_V, W_O) in enumerate(second):
        W_QK, W_OV1 = W_Q.T @ W_K, W_O @ W_V
        for j, ov in enumerate(W_OV0):
            scores["Q"][i, j] = composition_score(W_QK.T, ov)
            scores["K"][i, j] = composition_score(W_QK, ov)
            scores["V"][i, j] = composition_score(W_OV1, ov)
    return scores


def random_composition_baseline(d_model, d_head, rng, samples=200):
    """Mean composition score of two random Gaussian rank-d_head products W_1ᵀ W_2 and
    W_3ᵀ W_4 (d_model, d_model), W_i (d_head, d_model), shaped like W_QK = W_Qᵀ W_K and
    W_OV = W_O W_V: the value that means "no more than chance"."""
    d_model, d_head = transformer.check_count("d_model", d_model), transformer.check_count("d_head", d_head)
    samples, rng = transformer.check_count("samples", samples), transformer.check_rng(rng)
    W = rng.standard_normal((samples, 4, d_head, d_model))
    first = W[:, 0].swapaxes(1, 2) @ W[:, 1]
    second = W[:, 2].swapaxes(1, 2) @ W[:, 3]
    norms = np.linalg.norm(first @ second, axis=(1, 2)) / (
        np.linalg.norm(first, axis=(1, 2)) * np.linalg.norm(second, axis=(1, 2)))
    return float(norms.mean())


def copying_score(M):
    """Σλ / Σ|λ| over the eigenvalues λ of a square circuit matrix such as ov_circuit(...):
    near +1 when the head copies (attending to token a raises a's own logit), near -1 when it
    suppresses, near 0 for anything else (Elhage et al., "Copying / Primarily Positive
    Eigenvalues")."""
    lam = np.linalg.eigvals(_check_square("M", M))
    _check_eigenvalues(lam)
    return float(np.sum(lam).real / np.sum(np.abs(lam)))


# ----------------------------------------------------------------------------------------------
# 8. Training dynamics on real text
# ----------------------------------------------------------------------------------------------
# Sections 4-7 read models after training; this one watches a model while it learns. On real
# text a language model is said to pass through phases: it first learns how often each token
# occurs (unigrams), then what follows what (bigrams), then longer n-grams, and later grows
# induction heads, which shows as a sudden rise of in-context learning and a bump in the loss
# curve (Olsson et al. 2022, "In-context Learning and Induction Heads", sections on the phase
# change; Elhage et al. 2021 for the two-layer circuit of section 7).
#
# The text is the prose of CPython's documentation (transformer.pydoc_paragraphs), one token
# per character. Characters, not transformer.BPETokenizer, by measurement on this corpus:
# 107 characters give 358,000 tokens, so each of the 107² bigrams is counted often; BPE with
# 512 pieces gives 162,000 tokens for 512² possible bigrams, so its counted floors (the
# trigram's most: 1.51 nats under a unigram entropy of 5.29) measure the corpus's accidents as
# much as its language, and it costs about 2 s to train, a quarter of the tour's budget.
# Every tenth paragraph is held out; the model trains on the rest, and its loss is measured on
# the held-out paragraphs.
#
# The floors. A model that predicts x_t from the previous n - 1 tokens alone can do no better
# on a text than the conditional entropy of that text's own n-gram counts,
#     H_n = -(1/N) Σ_t log [ c(x_{t-n+1} … x_t) / c(x_{t-n+1} … x_{t-1}) ]     (nats per token)
# summed over the N positions t that have n - 1 tokens before them (Shannon 1951, "Prediction
# and Entropy of Printed English", the N-gram entropies F_N): n = 1 is the unigram entropy,
# n = 2 the bigram conditional entropy H(x_t | x_{t-1}), n = 3 the trigram's H(x_t | x_{t-2},
# x_{t-1}). These are in-sample entropies: counted on the training text and scored on the same
# text, so they are the loss of the best n-gram table fitted to it, lower than that table would
# score on text it has not seen. The model's loss below a floor is therefore measured on the
# held-out paragraphs: beating an n-gram table on its own training text, with text the model
# never saw, is a fair claim that the model knows more than n-grams.

def text_corpus(paragraphs=None, held_out_every=10):
    """Paragraphs (default: transformer.pydoc_paragraphs()) -> (tokenizer, train (N,) int,
    held_out (M,) int): a transformer.CharTokenizer built on every paragraph, paragraph
    held_out_every - 1, 2·held_out_every - 1, ... held out, each side's paragraphs joined by
    newlines and encoded."""
    paragraphs, every = _check_paragraphs(paragraphs, held_out_every)
    tokenizer = transformer.CharTokenizer("\n".join(paragraphs))
    held = [p for i, p in enumerate(paragraphs) if i % every == every - 1]
    train = [p for i, p in enumerate(paragraphs) if i % every != every - 1]
    return tokenizer, *(np.array(tokenizer.encode("\n".join(side)), np.int64) for side in (train, held))


def ngram_entropy(tokens, n):
    """H_n of a token stream (N,) in nats per token, from its own counts (the formula above):
    n = 1 unigram entropy, n = 2 H(x_t | x_{t-1}), n = 3 H(x_t | x_{t-2}, x_{t-1})."""
    tokens, n = _check_stream(tokens, n)
    grams = np.lib.stride_tricks.sliding_window_view(tokens, n)         # (N - n + 1, n)
    return float(-np.mean(np.log(_row_counts(grams) / _row_counts(grams[:, :-1]))))


def _row_counts(rows):
    """(N, k) int -> (N,): how often each row occurs among all N (k = 0: every row is the empty
    context, N times). The rows are numbered one column at a time: code = the number of the
    row's first j entries among the distinct ones, so code < N and code · (max + 1) + next entry
    stays far inside int64 (a row-wise np.unique(axis=0) gives the same, 20 times slower)."""
    code = np.zeros(len(rows), np.int64)
    for column in rows.T:
        code = np.unique(code * (column.max() + 1) + column, return_inverse=True)[1].reshape(-1)
    return np.bincount(code)[code]


NGRAM_FLOORS = {"unigram": 1, "bigram": 2, "trigram": 3}


def entropy_floors(tokens):
    """{"unigram": H_1, "bigram": H_2, "trigram": H_3} of a token stream (N,), nats per token."""
    return {name: ngram_entropy(tokens, n) for name, n in NGRAM_FLOORS.items()}


# In-context learning, measured as Olsson et al. define it: the loss at a late token of the
# context minus the loss at an early one, averaged over examples (their 500th minus 50th token
# of 512). Negative means the model predicts better with more context. Scaled to a context of
# n tokens, the early and late positions are the same fractions of it.

def olsson_positions(n):
    """The 0-based positions of the 50th and the 500th token of 512, scaled to n >= 3 tokens."""
    n = transformer.check_count("n", n, minimum=3)
    return max(0, n * 50 // 512 - 1), n * 500 // 512 - 1


def in_context_learning_score(losses, early=None, late=None):
    """losses (B, n) per-token losses -> (score, standard error): the mean over the B examples
    of losses[:, late] - losses[:, early] (default olsson_positions(n)), and the standard error
    of that mean (its std / √B), so that a reader can tell a change from noise."""
    losses, early, late = _check_icl(losses, early, late)
    difference = losses[:, late] - losses[:, early]
    return float(difference.mean()), float(difference.std() / np.sqrt(len(difference)))


# Prefix matching (Olsson et al., "prefix matching" score): on a sequence of random tokens
# repeated, a head that attends from each token of the repeat to the token right after that
# token's earlier occurrence is doing the induction head's lookup. Random tokens mean no
# n-gram statistics can produce that pattern: only the repeat can. It is section 7's
# score_induction, restricted to the destinations of the second copy.

def repeated_random_tokens(rng, batch, half, low, high):
    """(batch, 2·half) int: half uniform random ids in [low, high), then the same ids again."""
    batch, half, low, high = _check_random_tokens(rng, batch, half, low, high)
    first = rng.integers(low, high, (batch, half))
    return np.concatenate([first, first], axis=1)


def prefix_matching(patterns, tokens):
    """patterns (L, B, H, 2·half, 2·half) on tokens (B, 2·half) from repeated_random_tokens
    -> (L, H): each head's attention, from the second copy, on the tokens that followed the
    destination's token earlier."""
    patterns, tokens, where = _check_induction(patterns, tokens, None)
    where[:, :tokens.shape[1] // 2] = False                    # destinations in the second copy
    return score_induction(patterns, tokens, where)


def prefix_probe(vocab_size, length, seed=0):
    """The repeated random tokens train_text_model scores its heads on: 32 sequences of
    length // 2 characters drawn from np.random.default_rng(seed + 1), special tokens left
    out, each repeated once -> (32, 2 · (length // 2))."""
    specials = len(transformer.SPECIAL_TOKENS)
    vocab_size = transformer.check_count("vocab_size", vocab_size, minimum=specials + 1)
    length = transformer.check_count("length", length, minimum=2)
    seed = transformer.check_count("seed", seed, minimum=0)
    return repeated_random_tokens(np.random.default_rng(seed + 1), 32, length // 2, specials,
                                  vocab_size)


def prefix_matching_scores(model, tokens):
    """(n_layers, H): prefix_matching of the attention patterns any DecoderOnlyTransformer
    (layer norm and MLPs allowed) computes on repeated random tokens (B, 2·half)."""
    _check_model(model)
    return prefix_matching(np.asarray(run_with_patterns(model, tokens)[1], np.float64), tokens)


# The model and its training: transformer.py's GPT (Pre-LN, ReLU MLPs of 4·d_model, sinusoidal
# positions) trained by section 4's train, whose monitor measures at every checkpoint. The
# held-out windows are spread evenly over the held-out text and are the same at every
# checkpoint, so that checkpoints differ by training only.

def text_model(vocab_size, d_model=64, n_heads=4, n_layers=2, length=64, seed=0):
    """A small float32 GPT of transformer.py for a context of `length` tokens."""
    return transformer.DecoderOnlyTransformer(vocab_size, d_model, n_heads, n_layers, 4 * d_model,
                                              length, dtype=np.float32, seed=seed)


def stream_windows(ids, length, count):
    """`count` windows of length + 1 tokens of a stream (N,), their starts spread evenly from
    the first token to the last window that fits (they overlap when count · length > N)
    -> (count, length + 1)."""
    ids, length, count = _check_windows(ids, length, count)
    starts = np.linspace(0, ids.size - length - 1, count).astype(np.int64)
    return ids[starts[:, None] + np.arange(length + 1)]


def train_text_model(steps=300, length=64, batch=16, d_model=64, n_heads=4, n_layers=2, lr=3e-3,
                     every=20, held_out=256, seed=0, paragraphs=None):
    """Train text_model on text_corpus(paragraphs) and measure it every `every` steps (and
    after the last); the defaults are the tour's default run.

    Returns (model, history, floors): floors = entropy_floors of the training stream; history
    a dict of arrays, one entry per checkpoint: "step", "train_loss" (the mean training loss
    since the previous checkpoint), "held_out_loss" (mean over `held_out` windows of held-out
    text), "icl_score" and "icl_error" (in_context_learning_score on those windows),
    "prefix_matching" (checkpoints, n_layers, n_heads) on prefix_probe(vocab, length, seed).
    Every argument is checked before the corpus is read, the corpus before any step."""
    _check_text_training(steps, length, batch, d_model, n_heads, n_layers, lr, every, held_out, seed)
    tokenizer, train_ids, held_ids = text_corpus(paragraphs)
    _check_long_enough(train_ids, held_ids, length)
    held = stream_windows(held_ids, length, held_out)
    probe = prefix_probe(tokenizer.vocab_size, length, seed)
    model = text_model(tokenizer.vocab_size, d_model, n_heads, n_layers, length, seed)

    def sample(rng):
        starts = rng.integers(0, len(train_ids) - length, batch)
        return train_ids[starts[:, None] + np.arange(length + 1)]        # (batch, length + 1)

    def monitor(step, model):
        losses = token_losses(model, held)                                # (held_out, length)
        return (step, losses.mean(), *in_context_learning_score(losses),
                prefix_matching_scores(model, probe))

    losses, records = train(model, sample, steps, lr, seed, every, monitor)
    return model, _history(losses, records), entropy_floors(train_ids)


def _history(losses, records):
    """train's per-step losses and the monitor's records -> the history dict of arrays."""
    step, held_out, icl, error, prefix = (np.array(column) for column in zip(*records))
    starts = np.concatenate([[0], step[:-1] + 1])
    return {"step": step,
            "train_loss": np.array([losses[a:b + 1].mean() for a, b in zip(starts, step)]),
            "held_out_loss": held_out, "icl_score": icl, "icl_error": error,
            "prefix_matching": prefix}


# The phases, found in the history by the code rather than by eye: a floor is passed at the
# first checkpoint whose held-out loss is below it; induction heads form where the best head's
# prefix-matching score rises most between two checkpoints (and in-context learning where the
# ICL score falls most). A bump (Olsson et al.: "a bump in the loss curve" at the phase
# change) is the loss falling faster while the heads form than just before: on a smooth,
# convex loss curve the drop per step only shrinks, so a drop that speeds up again is a
# plateau ending. A loss that does not fall at all there has no bump, whatever it did before.

def phase_events(history, floors):
    """history and floors from train_text_model (at least 3 checkpoints) -> dict:
        "passed"      {floor name: first checkpoint step with held-out loss < floor, or None}
        "prefix_rise" (step a, step b, best score at a, at b): the interval where the best
                      head's prefix-matching score rose most
        "icl_fall"    (step a, step b, ICL score at a, at b): where the ICL score fell most
        "loss_drop"   (before, during): the held-out loss's drop per step in the interval
                      before prefix_rise and in it (before is None if prefix_rise is the first)
        "bump"        whether the loss dropped during the rise, and faster than before it"""
    step, loss, icl, best = _check_history(history, floors)
    passed = {name: next((int(s) for s, l in zip(step, loss) if l < floor), None)
              for name, floor in floors.items()}
    rise, fall = int(np.argmax(np.diff(best))), int(np.argmin(np.diff(icl)))
    drop = -np.diff(loss) / np.diff(step)                        # per interval, loss fallen per step
    before = float(drop[rise - 1]) if rise else None
    return {"passed": passed,
            "prefix_rise": (int(step[rise]), int(step[rise + 1]), float(best[rise]), float(best[rise + 1])),
            "icl_fall": (int(step[fall]), int(step[fall + 1]), float(icl[fall]), float(icl[fall + 1])),
            "loss_drop": (before, float(drop[rise])),
            "bump": bool(before is not None and drop[rise] > max(before, 0))}
# 9. Causal interventions: activation patching, the logit lens, direct logit attribution
# ----------------------------------------------------------------------------------------------
# Reading weights (sections 5-7) says what a head could do; an intervention says what it does on
# a given prompt. Three tools, all on transformer.py's named activations (its section 9b), all
# through hooked runs, so the model is left as it was:
#
# Activation patching (Meng et al. 2022, "causal tracing"; Wang et al. 2022, IOI). Run a clean
# prompt and a corrupted one that differs in the word that decides the answer, and keep the
# clean run's activations. Then run the corrupted prompt again with one activation put back
# from the clean run: a residual-stream vector at one (layer, position), or one head's output.
# If the metric (a logit difference, clean answer minus corrupt answer) comes back, that
# activation carries what the corruption removed. The grids are laid out as
# transformer_lens.patching's: (layer, position) for the residual stream, (layer, head) for
# heads, the raw metric in each cell.
#
# The logit lens (nostalgebraist 2020): the residual stream after each layer, read through the
# final layer norm and the unembedding as if the model stopped there; what would it predict?
#
# Direct logit attribution (Elhage et al. 2021, "residual stream as a sum"). In a Pre-LN model
# the final residual stream is a sum: the token embedding, the positional code, every head's
# output z_h W_O^h, each attention output bias, every MLP's output. The final layer norm is
# LN(x) = (x - mean(x)) r g + b with r = 1/√(var(x) + eps); freeze r at its value on this
# prompt and LN is linear in x, so the logit difference (W_U[:, right] - W_U[:, wrong]) · LN(x)
# splits into one term per part, plus the constant from b and the unembedding's bias. The parts
# sum to the logit difference exactly; the direct effect of a part leaves out what later layers
# make of it.

def logit_difference(right, wrong, position=-1):
    """-> metric(logits (B, T, V)): the batch mean of logits[b, position, right[b]] -
    logits[b, position, wrong[b]]; right and wrong are an id or (B,) ids."""
    right, wrong, position = _check_logit_difference(right, wrong, position)

    def metric(logits):
        _check_logit_difference(right, wrong, position, np.shape(logits))
        rows = np.arange(logits.shape[0])
        at = logits[:, position]                                     # (B, V)
        return float(np.mean(at[rows, right] - at[rows, wrong]))
    return metric


def patch(model, inputs, source, name, index=slice(None)):
    """model's output on inputs (as its forward takes them) with the activation `name` replaced,
    at index (a NumPy index into it: np.s_[:, t] is position t of (B, T, d)), by the same
    entries of source[name], source being run_with_cache's cache of another run."""
    inputs = _as_inputs(inputs)
    if name in transformer.hook_names(model):    # (an unknown name: run_with_hooks lists them)
        _check_patch(source, name, index)

    def put(activation, _):
        _check_source_shape(name, source[name], activation)
        activation[index] = source[name][index]
        return activation
    return transformer.run_with_hooks(model, *inputs, hooks={name: put})


def residual_patching(model, clean, corrupt, metric=None, stack="blocks"):
    """Patch the residual stream from the clean run into the corrupt one, one (layer, position)
    at a time -> (grid (n_layers + 1, T) of metric values, the rows' hook names): row l is the
    stream entering block l (hook_resid_pre), the last row the stream leaving the last block
    (its hook_resid_post). (Patching a whole position after attention, hook_resid_mid, would
    repeat the next row: the MLP reads one position at a time.) stack is "encoder.blocks" or
    "decoder.blocks" for the encoder-decoder. metric(output) -> a number; default:
    logit_difference of the clean run's top token and the corrupt run's at the last position."""
    clean, corrupt = _check_clean_corrupt(model, clean, corrupt, metric)
    names = _residual_rows(model, stack)
    clean_cache, metric = _clean_cache_and_metric(model, clean, corrupt, metric)
    T = clean_cache[names[0]].shape[1]
    grid = [[_metric_value(metric, patch(model, corrupt, clean_cache, name, np.s_[:, t]))
             for t in range(T)] for name in names]
    return np.array(grid), names


def head_patching(model, clean, corrupt, metric=None, stack="blocks"):
    """Patch one head's output (its hook_z at every position, before W_O) from the clean run into
    the corrupt one -> grid (n_layers, H) of metric values. metric and stack as in
    residual_patching."""
    clean, corrupt = _check_clean_corrupt(model, clean, corrupt, metric)
    names = [name.replace("hook_resid_pre", "attn.hook_z") for name in _residual_rows(model, stack)[:-1]]
    clean_cache, metric = _clean_cache_and_metric(model, clean, corrupt, metric)
    H = clean_cache[names[0]].shape[1]
    return np.array([[_metric_value(metric, patch(model, corrupt, clean_cache, name, np.s_[:, h]))
                      for h in range(H)] for name in names])


def _as_inputs(inputs):
    """A token array, or a tuple of the forward's inputs -> a tuple."""
    return inputs if isinstance(inputs, tuple) else (inputs,)


def _residual_rows(model, stack):
    """The hook names of the rows of residual_patching, in the order the forward reaches them."""
    names = transformer.hook_names(model)
    _check_stack(model, stack, names)
    rows = [n for n in names if re.fullmatch(rf"{re.escape(stack)}\.\d+\.hook_resid_pre", n)]
    return rows + [rows[-1].replace("hook_resid_pre", "hook_resid_post")]


def _clean_cache_and_metric(model, clean, corrupt, metric):
    """The clean run's cache, and the metric (the default one built from both runs), checked
    on the corrupt run's output."""
    clean_output, clean_cache = transformer.run_with_cache(model, *clean)
    corrupt_output = transformer.run_with_hooks(model, *corrupt, hooks={})
    if metric is None:
        _check_logits_output(model, clean_output)
        metric = logit_difference(clean_output[:, -1].argmax(-1), corrupt_output[:, -1].argmax(-1))
    _metric_value(metric, corrupt_output)
    return clean_cache, metric


def logit_lens(model, tokens):
    """The residual stream after the embedding and after each block, each read through the final
    layer norm and the unembedding -> (n_layers + 1, B, T, V) logits; the last row is the model's
    logits. Row l is a hooked run whose last block's output is replaced by the stream after l
    blocks: what follows that point is exactly the final norm and the unembedding."""
    _check_pre_ln("logit_lens", model)
    _, cache = transformer.run_with_cache(model, tokens)
    L = len(model.blocks)
    streams = [cache["hook_embed"] + cache["hook_pos_embed"]]        # (B, T, d), after l blocks:
    streams += [cache[f"blocks.{l}.hook_resid_post"] for l in range(L)]
    last = f"blocks.{L - 1}.hook_resid_post"
    return np.stack([transformer.run_with_hooks(model, tokens, hooks={last: lambda a, _, x=x: x})
                     for x in streams])


def direct_logit_attribution(model, tokens, right, wrong, position=-1):
    """The logit difference logits[b, position, right[b]] - logits[b, position, wrong[b]] split
    into the direct contribution of every part of the final residual stream, the final norm's
    scale frozen -> (labels, parts (n_parts, B)): "embed", "pos", "L{l}H{h}" for each head,
    "L{l} attn bias", "L{l} mlp", and "biases" (the final norm's b and the unembedding's bias).
    parts.sum(axis=0) is the logit difference."""
    _check_pre_ln("direct_logit_attribution", model)
    logits, cache = transformer.run_with_cache(model, tokens)
    right, wrong, position = _check_logit_difference(right, wrong, position, logits.shape)
    embed = cache["hook_embed"][:, position]                                   # (B, d)
    labels, parts = ["embed", "pos"], [embed, np.broadcast_to(cache["hook_pos_embed"][position], embed.shape)]
    for l, block in enumerate(model.blocks):
        attn, H = block.self_attn, model.config["n_heads"]
        W_O = attn.out.params["W"].reshape(H, -1, attn.out.params["W"].shape[1])  # (H, d_k, d)
        z = cache[f"blocks.{l}.attn.hook_z"][:, :, position]                   # (B, H, d_k)
        labels += [f"L{l}H{h}" for h in range(H)]
        parts += [z[:, h] @ W_O[h] for h in range(H)]
        if "b" in attn.out.params:
            labels.append(f"L{l} attn bias")
            parts.append(np.broadcast_to(attn.out.params["b"], parts[0].shape))
        if block.ffn is not None:
            labels.append(f"L{l} mlp")
            parts.append(cache[f"blocks.{l}.hook_mlp_out"][:, position])
    W_U = unembedding_weights(model)                                   # (V, d), paper layout
    b_U = model.unembed.params.get("b", np.zeros(len(W_U)))
    direction = W_U[right] - W_U[wrong]                                 # (B, d)
    constant = b_U[right] - b_U[wrong]
    if isinstance(model.norm, transformer.LayerNorm):   # freeze r on this prompt's final stream
        x = cache[f"blocks.{len(model.blocks) - 1}.hook_resid_post"][:, position] \
            if model.blocks else sum(parts)                                    # (B, d)
        centred = x - x.mean(-1, keepdims=True)
        r = 1 / np.sqrt((centred ** 2).mean(-1, keepdims=True) + model.norm.eps)   # (B, 1)
        constant = constant + direction @ model.norm.params["b"]
        direction = direction * model.norm.params["g"]
        parts = [(p - p.mean(-1, keepdims=True)) * r for p in parts]
    values = [np.sum(p * direction, axis=-1) for p in parts] + [constant]
    return labels + ["biases"], np.array(values, np.float64)


# ----------------------------------------------------------------------------------------------
# Appendix: checking arguments
# ----------------------------------------------------------------------------------------------
# Every public function above refuses bad input with a ValueError (or a TypeError) that names
# the argument, what was given and what is allowed, before it changes anything. Counts, numbers,
# finiteness, token ids and random generators go through transformer.py's shared checks; what
# follows are this file's layouts (matrices, heads, patterns, sequences). Integer matrices are
# read as float64, so that a product of int8 entries cannot overflow.

def check_simplified(model):
    """Raise ValueError unless model is a DecoderOnlyTransformer built as the simplified
    transformer (attention_only=True, layer_norm=False, bias=False): only then are the circuits
    exact."""
    _check_model(model)
    c = model.config
    if not c["attention_only"] or c["layer_norm"] or c["bias"]:
        raise ValueError("model must be the simplified transformer (attention_only=True, "
                         "layer_norm=False, bias=False), got attention_only="
                         f"{c['attention_only']}, layer_norm={c['layer_norm']}, bias={c['bias']}")


def _check_model(model):
    if not isinstance(model, transformer.DecoderOnlyTransformer):
        raise ValueError(f"model must be a transformer.DecoderOnlyTransformer, got "
                         f"{type(model).__name__}")


def _check_real(name, value, layout, min_ndim=0, ndim=None, finite=True):
    """A non-empty array of real numbers (not bools) with ndim axes (or at least min_ndim),
    finite unless told -> the array, integers as float64. layout completes "{name} must ...",
    as in "have shape (B, n, V)"."""
    a = np.asarray(transformer.check_plain_array(name, value))
    if a.dtype.kind not in "iuf" or (a.ndim != ndim if ndim is not None else a.ndim < min_ndim) \
            or a.size == 0:
        raise ValueError(f"{name} must {layout} of real numbers, not empty; got a {a.dtype} array "
                         f"of shape {a.shape}")
    if finite:
        transformer.check_finite(name, a)
    return a.astype(np.float64) if a.dtype.kind in "iu" else a


def _check_matrix(name, M):
    return _check_real(name, M, "be a 2-D matrix", ndim=2)


def _check_square(name, M):
    M = _check_matrix(name, M)
    if M.shape[0] != M.shape[1]:
        raise ValueError(f"{name} must be square to have eigenvalues, got shape {M.shape}")
    return M


def _check_flag(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _check_index(name, value, stop, what):
    """An int in [0, stop): a layer, a head."""
    value = transformer.check_count(name, value, minimum=0)
    if value >= stop:
        allowed = f"an int in [0, {stop - 1}]" if stop else f"nothing: the model has no {what}s"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


def _check_unvec(x, shape):
    if not (isinstance(shape, (tuple, list, np.ndarray)) and np.ndim(shape) == 1 and len(shape) == 2):
        raise ValueError(f"shape must be a pair of ints (d, n), got {shape!r}")
    shape = tuple(transformer.check_count(f"shape[{i}]", s, minimum=1) for i, s in enumerate(shape))
    x = _check_real("x", x, "be a vector", ndim=1)
    if x.size != shape[0] * shape[1]:
        raise ValueError(f"x must be a vector of d·n entries for shape = (d, n), got x of shape "
                         f"{x.shape} and shape = {shape}")
    return x, shape


def _check_kron(P, Q, X):
    P, Q, X = _check_matrix("P", P), _check_matrix("Q", Q), _check_matrix("X", X)
    if Q.shape[1] != X.shape[0]:
        raise ValueError(f"Q has {Q.shape[1]} columns but X has {X.shape[0]} rows; (P ⊗ Q) X = "
                         f"Q X Pᵀ needs Q.shape[1] == X.shape[0]")
    if P.shape[1] != X.shape[1]:
        raise ValueError(f"P has {P.shape[1]} columns but X has {X.shape[1]} columns; (P ⊗ Q) X "
                         f"= Q X Pᵀ needs P.shape[1] == X.shape[1]")
    return P, Q, X


def _check_attention(X, W_Q, W_K, causal):
    X, W_Q, W_K = _check_matrix("X", X), _check_matrix("W_Q", W_Q), _check_matrix("W_K", W_K)
    if W_Q.shape != W_K.shape or W_Q.shape[1] != X.shape[0]:
        raise ValueError(f"W_Q and W_K must both be (d_head, {X.shape[0]}) for X of shape "
                         f"{X.shape}, got W_Q {W_Q.shape} and W_K {W_K.shape}")
    return X, W_Q, W_K, _check_flag("causal", causal)


def _check_head(X, A, W_V, W_O):
    X, A = _check_matrix("X", X), _check_matrix("A", A)
    W_V, W_O = _check_matrix("W_V", W_V), _check_matrix("W_O", W_O)
    d, n = X.shape
    if A.shape != (n, n):
        raise ValueError(f"A must be (n, n) = ({n}, {n}) for X of shape {X.shape}, got {A.shape}")
    if W_V.shape[1] != d or W_O.shape != (d, W_V.shape[0]):
        raise ValueError(f"W_V must be (d_head, {d}) and W_O ({d}, d_head) for X with d = {d}, "
                         f"got W_V {W_V.shape} and W_O {W_O.shape}")
    return X, A, W_V, W_O


def _check_layer_head(model, layer, head):
    """-> layer, head as Python ints: a np.uint8 head times d_k could wrap (255 + 1 is 0)."""
    check_simplified(model)
    return (_check_index("layer", layer, len(model.blocks), "layer"),
            _check_index("head", head, model.config["n_heads"], "head"))


MAX_PATHS = 10 ** 4


def _check_path_expansion(model, tokens):
    """The paths grow as (1 + H)^L: each head of each layer extends every path before it, so
    2·(1 + H)^L arrays (B, n, V) come out (a 12-layer model with 4 heads would have 488 million).
    Refused beyond MAX_PATHS paths or transformer.MAX_NUMBERS numbers, before any is computed."""
    check_simplified(model)
    B, n = np.shape(tokens) if np.ndim(tokens) == 2 else (1, 1)   # other shapes: forward refuses
    H, L = model.config["n_heads"], len(model.blocks)
    if 2 * (1 + H) ** L > MAX_PATHS:
        raise ValueError(f"model has {L} layers of {H} heads: its path expansion would have "
                         f"2·(1 + H)^L = {2 * (1 + H) ** L} paths, more than {MAX_PATHS}")
    transformer.check_numbers(f"path_expansion of {L} layers of {H} heads (2·(1 + H)^L = "
                              f"{2 * (1 + H) ** L} paths of B·n·max(V, d) numbers)",
                              2 * (1 + H) ** L * B * n * max(model.vocab_size, model.config["d_model"]))


def _check_sequences(model, name, tokens):
    """tokens (B, n + 1) for next-token prediction: the model reads the first n <= max_len."""
    tokens = transformer.check_id_array(name, tokens, model.vocab_size)
    if tokens.ndim != 2 or tokens.shape[0] < 1 or not 2 <= tokens.shape[1] <= model.max_len + 1:
        raise ValueError(f"{name} must have shape (B, n + 1) with B >= 1 and 1 <= n <= max_len = "
                         f"{model.max_len}, got shape {tokens.shape}")
    return tokens


def _check_train(model, sample, steps, lr, seed, every, monitor):
    _check_model(model)
    if not callable(sample):
        raise TypeError(f"sample must be a function sample(rng) -> tokens, got {type(sample).__name__}")
    steps, seed = transformer.check_count("steps", steps, minimum=0), transformer.check_count("seed", seed, minimum=0)
    every = transformer.check_count("every", every, minimum=0)
    transformer.check_positive("lr", lr)
    if every and not callable(monitor):
        raise TypeError(f"monitor must be a function monitor(step, model) when every > 0, got "
                        f"{type(monitor).__name__}")
    return steps, seed, every


def _check_logits_targets(logits, targets):
    logits = _check_real("logits", logits, "have shape (B, n, V)", min_ndim=1, finite=False)
    targets = transformer.check_id_array("targets", targets, logits.shape[-1])
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"targets must have the shape of logits without the vocabulary axis, "
                         f"{logits.shape[:-1]}, got {targets.shape}")
    return logits, targets


def _check_markov(rng, vocab_size, n_seqs, length, successors):
    transformer.check_rng(rng)
    vocab_size, n_seqs = transformer.check_count("vocab_size", vocab_size), transformer.check_count("n_seqs", n_seqs)
    length, successors = transformer.check_count("length", length), transformer.check_count("successors", successors)
    transformer.check_numbers(f"a corpus of n_seqs·length = {n_seqs}·{length}", n_seqs * length)
    transformer.check_numbers(f"a bigram table of vocab_size² = {vocab_size}²", vocab_size ** 2)
    if successors > vocab_size:
        raise ValueError(f"successors must be an int in [1, vocab_size = {vocab_size}], got "
                         f"{successors!r}")
    return vocab_size, n_seqs, length, successors


def _check_corpus(tokens, vocab_size):
    vocab_size = transformer.check_count("vocab_size", vocab_size)
    transformer.check_numbers(f"a bigram table of vocab_size² = {vocab_size}²", vocab_size ** 2)
    tokens = transformer.check_id_array("tokens", tokens, vocab_size)
    if tokens.ndim != 2 or tokens.shape[0] < 1 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be a corpus (n_seqs, length) with n_seqs >= 1 and length >= 2 "
                         f"(at least one bigram), got shape {tokens.shape}")
    return tokens, vocab_size


def _check_spread(log_probs):
    if np.ptp(log_probs) == 0:
        raise ValueError("tokens must hold bigrams of at least two different probabilities, or "
                         "the correlation is undefined")


def _check_skip_corpus(rng, triples, vocab_size, n_seqs, length):
    transformer.check_rng(rng)
    vocab_size, n_seqs = transformer.check_count("vocab_size", vocab_size), transformer.check_count("n_seqs", n_seqs)
    length = transformer.check_count("length", length, minimum=3)    # a, then b, then the token after b
    transformer.check_numbers(f"a corpus of n_seqs·length = {n_seqs}·{length}", n_seqs * length)
    triples = transformer.check_id_array("triples", triples, vocab_size)
    if triples.ndim != 2 or triples.shape[0] < 1 or triples.shape[1] != 3:
        raise ValueError(f"triples must be a non-empty list of (a, b, c) triples, shape (k, 3), "
                         f"got shape {triples.shape}")
    filler = np.setdiff1d(np.arange(vocab_size), triples[:, 1])
    if filler.size == 0:
        raise ValueError(f"vocab_size = {vocab_size} leaves no filler token: every token is a "
                         f"destination b of the triples")
    return triples, filler, n_seqs, length


def _check_skip_trigrams(model, top_k):
    check_simplified(model)
    if len(model.blocks) != 1:
        raise ValueError(f"model must have exactly 1 layer for skip-trigrams, got {len(model.blocks)}")
    top_k = transformer.check_count("top_k", top_k)
    H, V = model.config["n_heads"], model.vocab_size
    transformer.check_numbers(f"skip_trigrams' table of H·V³ scores (H={H}, V={V})", H * V ** 3)
    if top_k > model.vocab_size ** 3:
        raise ValueError(f"top_k must be an int in [1, {model.vocab_size ** 3}], got {top_k!r}")
    return top_k


def _check_segments(rng, batch, length, vocab_size, min_segment, max_segment):
    transformer.check_rng(rng)
    batch, length = transformer.check_count("batch", batch), transformer.check_count("length", length)
    transformer.check_numbers(f"a batch of batch·length = {batch}·{length}", batch * length)
    vocab_size = transformer.check_count("vocab_size", vocab_size)
    min_segment = transformer.check_count("min_segment", min_segment, 2)
    max_segment = transformer.check_count("max_segment", max_segment, 2)
    if not min_segment <= max_segment <= length // 2:
        raise ValueError(f"min_segment and max_segment must be ints with 2 <= min_segment <= "
                         f"max_segment <= length // 2 = {length // 2}, got min_segment="
                         f"{min_segment!r}, max_segment={max_segment!r}")
    return batch, length, vocab_size, min_segment, max_segment


def _check_split(losses, inside):
    losses = _check_real("losses", losses, "have shape (B, n)", min_ndim=1)
    inside = np.asarray(transformer.check_plain_array("inside", inside))
    if inside.dtype != bool or inside.shape != losses.shape:
        raise ValueError(f"inside must be a bool mask of the losses' shape {losses.shape}, got a "
                         f"{inside.dtype} array of shape {inside.shape}")
    if inside.all() or not inside.any():
        raise ValueError("inside must be True at some positions and False at others: both means "
                         "are needed")
    return losses, inside


def _check_repeats(model, tokens, inside):
    """tokens (B, n + 1) and inside (B, n), for a model already checked."""
    tokens = _check_sequences(model, "tokens", tokens)
    _, inside = _check_split(np.zeros((tokens.shape[0], tokens.shape[1] - 1)), inside)
    return tokens, inside


def _check_patterns(patterns, min_n=1):
    patterns = _check_real("patterns", patterns, "have shape (L, B, H, n, n)", ndim=5)
    if patterns.shape[-1] != patterns.shape[-2]:
        raise ValueError(f"patterns must have shape (L, B, H, n, n), none of them 0, got "
                         f"{patterns.shape}")
    if patterns.shape[-1] < min_n:
        raise ValueError(f"patterns must cover n >= {min_n} positions (tokens) to have a previous "
                         f"token, got shape {patterns.shape}")
    return patterns


def _check_where(where, shape):
    if where is None:
        return np.ones(shape, bool)
    where = np.asarray(where)
    if where.dtype != bool or where.shape != shape:
        raise ValueError(f"where must be a bool mask of the tokens' shape {shape}, got a "
                         f"{where.dtype} array of shape {where.shape}")
    return where


def _check_induction(patterns, tokens, where):
    patterns = _check_patterns(patterns)
    tokens = transformer.check_id_array("tokens", tokens, np.iinfo(np.int64).max)
    if tokens.shape != (patterns.shape[1], patterns.shape[-1]):
        raise ValueError(f"tokens must have shape (B, n) = {(patterns.shape[1], patterns.shape[-1])} "
                         f"to match patterns of shape {patterns.shape}, got {tokens.shape}")
    return patterns, tokens, _check_where(where, tokens.shape)


def _check_has_earlier(has):
    if not has.any():
        raise ValueError("no destination (in `where`) has an earlier occurrence of its token, "
                         "so induction cannot be measured")


def _check_tokens_where(model, tokens, where, min_n=1):
    check_simplified(model)
    if not model.blocks:
        raise ValueError("model must have at least one layer to have attention patterns")
    tokens = transformer.check_tokens("tokens", tokens, model.vocab_size, model.max_len)
    if tokens.shape[1] < min_n:
        raise ValueError(f"tokens must cover n >= {min_n} positions (tokens) to have a previous "
                         f"token, got shape {tokens.shape}")
    return tokens, _check_where(where, tokens.shape)


def _check_composition(A, B):
    A, B = _check_matrix("A", A), _check_matrix("B", B)
    if A.shape[1] != B.shape[0]:
        raise ValueError(f"A has {A.shape[1]} columns but B has {B.shape[0]} rows; "
                         f"the product A B needs them equal")
    if not (A.any() and B.any()):
        raise ValueError("A and B must both be nonzero: the score divides by ‖A‖_F ‖B‖_F")
    return A, B


def _check_two_layers(model):
    check_simplified(model)
    if len(model.blocks) < 2:
        raise ValueError(f"model must have at least 2 layers for composition scores, got "
                         f"{len(model.blocks)}")


def _check_eigenvalues(lam):
    if not np.any(lam):
        raise ValueError("M has only zero eigenvalues (M = 0 or nilpotent), so Σλ / Σ|λ| is undefined")

# Section 9's checks: prompts that fit each other, names and indices of the model's
# activations, metrics that return a number, models whose final stream is a sum.

def _check_clean_corrupt(model, clean, corrupt, metric):
    """-> clean and corrupt as tuples of the forward's inputs, of the same shapes."""
    transformer.hook_names(model)                                    # a model with hook points
    clean, corrupt = _as_inputs(clean), _as_inputs(corrupt)
    shapes = [[np.shape(a) for a in inputs] for inputs in (clean, corrupt)]
    if shapes[0] != shapes[1]:
        raise ValueError(f"clean and corrupt must have the same shapes (prompts of the same "
                         f"length, position by position), got {shapes[0]} and {shapes[1]}")
    if metric is not None and not callable(metric):
        raise TypeError(f"metric must be None or a function metric(output) -> number, got "
                        f"{type(metric).__name__}")
    return clean, corrupt


def _check_stack(model, stack, names):
    stacks = [n[:-len(".0.hook_resid_pre")] for n in names
              if re.fullmatch(r".*blocks\.0\.hook_resid_pre", n)]
    if stack not in stacks:
        raise ValueError(f"stack must be one of this {type(model).__name__}'s stacks of blocks "
                         f"{stacks}, got {stack!r}")


def _metric_value(metric, output):
    """metric(output) as a float: a real number (a NumPy scalar or 0-d array too), finite."""
    value = metric(output)
    if isinstance(value, (bool, np.bool_)) or not (isinstance(value, numbers.Real) or (
            isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf")):
        raise TypeError(f"metric must return a number, got {type(value).__name__} "
                        f"{np.shape(value) if isinstance(value, np.ndarray) else ''}".rstrip())
    if not math.isfinite(value):
        raise ValueError(f"metric must return a finite number, got {value!r}")
    return float(value)


def _check_logits_output(model, output):
    vocab = getattr(model, "tgt_vocab_size", getattr(model, "vocab_size", None))
    if output.shape[-1] != vocab:
        raise ValueError(f"metric is None, and the default logit difference needs logits, but "
                         f"this {type(model).__name__}'s output has shape {output.shape}: pass "
                         f"a metric")


def _check_logit_difference(right, wrong, position, shape=None):
    """right, wrong: an id or (B,) ids; position an int; with shape (B, T, V), each in range,
    and the ids as (B,) arrays."""
    ids = []
    for name, value in (("right", right), ("wrong", wrong)):
        value = np.asarray(value)
        if value.dtype.kind not in "iu" or value.ndim > 1:
            raise TypeError(f"{name} must be a token id or a (B,) array of ids, got {value!r}")
        ids.append(value)
    if isinstance(position, (bool, np.bool_)) or not isinstance(position, (int, np.integer)):
        raise TypeError(f"position must be an int, got {position!r}")
    if shape is not None:
        B, T, V = shape
        for name, value in zip(("right", "wrong"), ids):
            if value.size and (value.min() < 0 or value.max() >= V) or value.ndim and len(value) != B:
                raise ValueError(f"{name} must be an id in [0, {V}) or B = {B} of them, got {value!r}")
        if not -T <= position < T:
            raise ValueError(f"position must be in [-{T}, {T}), got {position}")
        ids = [np.broadcast_to(value, (B,)) for value in ids]          # one id per batch row
    return ids[0], ids[1], int(position)


def _check_patch(source, name, index):
    if not isinstance(source, dict) or not isinstance(source.get(name), np.ndarray):
        keys = f" with keys {list(source)[:5]}..." if isinstance(source, dict) else ""
        raise ValueError(f"source must be a cache of run_with_cache holding {name!r}, got "
                         f"{type(source).__name__}{keys}")
    try:
        source[name][index]
    except (IndexError, TypeError, ValueError):
        raise ValueError(f"index must be a NumPy index into source[{name!r}] of shape "
                         f"{source[name].shape}, got {index!r}") from None


def _check_source_shape(name, cached, activation):
    if cached.shape != activation.shape or cached.dtype != activation.dtype:
        raise ValueError(f"source[{name!r}] must come from a run of the same shapes: it has shape "
                         f"{cached.shape} ({cached.dtype}), this run's activation {activation.shape} "
                         f"({activation.dtype})")


def _check_pre_ln(function, model):
    """The logit lens and attribution read the final stream as a sum: a Pre-LN GPT (or one
    without layer norms)."""
    _check_model(model)
    if not model.config["norm_first"] and model.config["layer_norm"]:
        raise ValueError(f"{function} needs a Pre-LN model (norm_first=True) or one without layer "
                         f"norms: in a Post-LN block the stream is renormalised, not summed")
    if function == "logit_lens" and not model.blocks:
        raise ValueError("logit_lens needs a model with at least one block")

def _check_paragraphs(paragraphs, held_out_every):
    """The corpus of section 8: None (read transformer.pydoc_paragraphs()) or a list of
    non-empty str, at least held_out_every of them so that one is held out."""
    every = transformer.check_count("held_out_every", held_out_every, minimum=2)
    if paragraphs is None:
        paragraphs = transformer.pydoc_paragraphs()      # a clear error if pydoc_data is missing
    if not isinstance(paragraphs, (list, tuple)) or not all(isinstance(p, str) and p for p in paragraphs):
        raise TypeError(f"paragraphs must be a list of non-empty str (the corpus), got "
                        f"{type(paragraphs).__name__}" + (" with an empty or non-str item"
                                                          if isinstance(paragraphs, (list, tuple)) else ""))
    if len(paragraphs) < every:
        raise ValueError(f"paragraphs must hold at least held_out_every = {every} paragraphs, so "
                         f"that one is held out, got {len(paragraphs)}")
    return list(paragraphs), every


def _check_stream(tokens, n):
    tokens = transformer.check_id_array("tokens", tokens, 2 ** 31)     # ids of a vocabulary
    if tokens.ndim != 1 or tokens.size == 0:
        raise ValueError(f"tokens must be a non-empty stream of token ids, shape (N,), got shape "
                         f"{tokens.shape}")
    return tokens, transformer.check_count("n", n, maximum=tokens.size)


def _check_icl(losses, early, late):
    losses = _check_real("losses", losses, "have shape (B, n)", ndim=2)
    n = losses.shape[1]
    default_early, default_late = olsson_positions(n) if n >= 3 else (0, n - 1)
    early = default_early if early is None else _check_index("early", early, n, "position")
    late = default_late if late is None else _check_index("late", late, n, "position")
    if not early < late:
        raise ValueError(f"early must come before late, got early={early}, late={late} for "
                         f"n = {n} positions")
    return losses, early, late


def _check_random_tokens(rng, batch, half, low, high):
    transformer.check_rng(rng)
    batch, half = transformer.check_count("batch", batch), transformer.check_count("half", half)
    low = transformer.check_count("low", low, minimum=0)
    return batch, half, low, transformer.check_count("high", high, minimum=low + 1)


def _check_windows(ids, length, count):
    ids = transformer.check_id_array("ids", ids, np.iinfo(np.int64).max)
    length, count = transformer.check_count("length", length), transformer.check_count("count", count)
    if ids.ndim != 1 or ids.size < length + 1:
        raise ValueError(f"ids must be a stream (N,) of at least length + 1 = {length + 1} ids, "
                         f"got shape {ids.shape}")
    return ids, length, count


def _check_text_training(steps, length, batch, d_model, n_heads, n_layers, lr, every, held_out, seed):
    for name, value, minimum in [("steps", steps, 1), ("length", length, 8), ("batch", batch, 1),
                                 ("d_model", d_model, 1), ("n_heads", n_heads, 1),
                                 ("n_layers", n_layers, 1), ("every", every, 1),
                                 ("held_out", held_out, 1), ("seed", seed, 0)]:
        transformer.check_count(name, value, minimum=minimum)
    if d_model % n_heads:
        raise ValueError(f"d_model must be divisible by n_heads, got d_model={d_model}, "
                         f"n_heads={n_heads}")
    transformer.check_positive("lr", lr)


def _check_long_enough(train_ids, held_ids, length):
    if min(train_ids.size, held_ids.size) < length + 1:
        raise ValueError(f"paragraphs must give at least length + 1 = {length + 1} tokens to train "
                         f"on and as many held out, got {train_ids.size} and {held_ids.size}")


def _check_history(history, floors):
    """A history and floors as train_text_model returns them, with at least 3 checkpoints
    -> (step, held-out loss, ICL score, best head's prefix-matching score), each (checkpoints,)."""
    keys = ("step", "held_out_loss", "icl_score", "prefix_matching")
    if not isinstance(history, dict) or not all(key in history for key in keys):
        raise ValueError(f"history must be the dict train_text_model returns, with keys {keys}")
    step = transformer.check_id_array("history['step']", history["step"], np.iinfo(np.int64).max)
    if step.ndim != 1 or step.size < 3 or np.any(np.diff(step) <= 0):
        raise ValueError(f"history['step'] must hold at least 3 increasing checkpoint steps, got "
                         f"{step.tolist()}")
    loss, icl = (_check_real(f"history[{key!r}]", history[key], "be a vector", ndim=1)
                 for key in ("held_out_loss", "icl_score"))
    prefix = _check_real("history['prefix_matching']", history["prefix_matching"],
                         "have shape (checkpoints, L, H)", ndim=3)
    if not loss.shape == icl.shape == step.shape == prefix.shape[:1]:
        raise ValueError(f"history's arrays must have one entry per checkpoint ({step.size}), got "
                         f"held_out_loss {loss.shape}, icl_score {icl.shape}, prefix_matching "
                         f"{prefix.shape}")
    if not isinstance(floors, dict) or not floors:
        raise ValueError(f"floors must be a non-empty dict {{name: nats}}, got {floors!r}")
    for name, floor in floors.items():
        transformer.check_positive(f"floors[{name!r}]", floor, or_zero=True)
    return step, loss, icl, prefix.max(axis=(1, 2))
