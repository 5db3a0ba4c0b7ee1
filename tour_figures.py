"""The figures of the tour: demo.py computes and prints, this file draws.

One function per chapter of demo.py, in the tour's order, each called the same way at the end of
its chapter: figure(save, data...), where save(fig, name) writes outdir/name.png (saver, below)
and the data are what the chapter computed (arrays, labels, numbers). Nothing here trains or runs
a model. Every figure has the one style FIGURE_STYLE.

    0. The style, the saver, a labelled heatmap and a loss curve (used by several chapters)
    1. onehot  2. rohrer  3. translate  4. charlm  5. circuits  6. superposition
    7. polysemantic (also drawn for the BERT layer)  8. bert
    9. interventions: patching grids, the logit lens, direct logit attribution (drawn for
       chapters 2, 4 and 5), and the heads of chapter patching
   10. grokking  11. features

matplotlib is imported on the first figure, not with this file, so `demo.py --no-plots` never
imports it.
"""

import numpy as np

# ----------------------------------------------------------------------------------------------
# 0. The style, the saver, and the drawings several chapters share
# ----------------------------------------------------------------------------------------------

FIGURE_STYLE = {
    "figure.dpi": 150, "savefig.dpi": 150, "font.size": 11, "axes.titlesize": 13,
    "axes.labelsize": 12, "xtick.labelsize": 10, "ytick.labelsize": 10, "legend.fontsize": 10,
    "axes.spines.top": False, "axes.spines.right": False, "image.cmap": "viridis",
}


def pyplot():
    """matplotlib.pyplot in FIGURE_STYLE, imported on the first call. The Agg backend writes
    files only, no window, so the tour runs without a display."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update(FIGURE_STYLE)
    return plt


def saver(outdir):
    """-> save(fig, name): writes fig as outdir/name.png at 150 dpi, closes it, prints and
    returns the path. outdir is a pathlib.Path."""
    plt = pyplot()

    def save(fig, name):
        path = outdir / f"{name}.png"
        fig.savefig(path, dpi=150, bbox_inches="tight")
        plt.close(fig)
        print(f"  figure: {path}")
        return path
    return save


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


def loss_figure(save, losses, name, title, floor=None, floor_label=None, log=True):
    """draw_loss on a figure of its own, saved as name."""
    fig, ax = pyplot().subplots(figsize=(6, 3.6))
    draw_loss(ax, losses, title, floor, floor_label, log)
    return save(fig, name)


# ----------------------------------------------------------------------------------------------
# 1. From one-hot vectors to attention
# ----------------------------------------------------------------------------------------------

def onehot(save, M, vocab, W, vocab2, decisive, votes):
    """M (V, V) the first-order transition matrix over vocab; W (V2², V2) the second-order votes
    over vocab2, decisive (V2²,) bool the rows Rohrer's mask keeps; votes {prefix ending in
    "ran": (votes before masking, after masking)}, each (V2,)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.2, 5))
    heatmap(ax, M, vocab, vocab, "next word", "current word",
            "First-order transition matrix of\n\"show me my {photos, files, directories} please\"",
            "probability of the next word", annotate=True)
    save(fig, "onehot_transition")

    # Rohrer's view of the table: only the rows (earlier word, "ran") that hold any vote.
    V2, ran = len(vocab2), vocab2.index("ran")
    earlier = [w for i, w in enumerate(vocab2) if W[i * V2 + ran].any()]
    rows = np.array([vocab2.index(w) * V2 + ran for w in earlier])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for ax, masked in zip(axes, (False, True)):
        table = W[rows] * (decisive[rows, None] if masked else 1)
        heatmap(ax, table, vocab2, [f"{w}, ran" for w in earlier], "next word",
                "feature (earlier word, most recent word)" if not masked else "",
                "after masking: only decisive features" if masked else "before masking",
                "vote", annotate=True)
    fig.suptitle("Second-order-with-skips votes for the word after \"ran\"", y=1.02)
    save(fig, "onehot_skip_votes")

    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    labels = ["program ... ran", "battery ... ran"]
    x = np.arange(2)
    for k, (stage, shift) in enumerate((("before masking", -0.3), ("after masking", 0.1))):
        for j, word in enumerate(("down", "please")):
            heights = [votes[p][k][vocab2.index(word)] for p in votes]
            bars = ax.bar(x + shift + 0.2 * j, heights, width=0.18, color=f"C{j}",
                          alpha=0.45 if k == 0 else 1.0, label=f"{word}, {stage}")
            ax.bar_label(bars, fmt="%g")
    ax.set_xticks(x, labels)
    ax.set_ylim(0, 7)
    ax.set_xlabel("sentence, cut after \"ran\"")
    ax.set_ylabel("vote total (sum of feature rows)")
    ax.set_title("Masking turns 4 vs 5 into 0 vs 1")
    ax.legend(ncol=2, loc="upper center")
    save(fig, "onehot_masking")


# ----------------------------------------------------------------------------------------------
# 2. A decoder-only transformer learns Rohrer's sentences
# ----------------------------------------------------------------------------------------------

def rohrer(save, head, weights, sentences, keyword, ran, looks, one_sided, losses, floor,
           patching):
    """weights (2, T, T): head's attention weights in the padded batch; sentences[b]: the
    tokens of sentence b, without its padding; keyword: the position where the two sentences
    differ; ran[b]: the position of "ran"; looks (2,): the weight from "ran" to the keyword;
    losses per training step, floor the lowest loss the data allows; patching: (grid
    (rows, T), row labels, words, heads (H,)), the shares restored by activation patching."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.8), layout="constrained")
    for b, ax in enumerate(axes):
        labels, word, n = sentences[b], sentences[b][keyword], len(sentences[b])
        heatmap(ax, weights[b, :n, :n], labels, labels, "key (earlier token)",
                "query (current token)" if b == 0 else "",
                f"\"{word}\" sentence: ran \u2192 {word} {looks[b]:.2f}", "attention weight")
        ax.add_patch(plt.Rectangle((-0.5, ran[b] - 0.5), ran[b] + 1, 1, fill=False,
                                   edgecolor="red", lw=2))
    strong = int(np.argmax(looks))
    fig.suptitle(f"Head {head}: \"ran\" (red box) looks back to "
                 f"\"{sentences[strong][keyword]}\"" + (
                     "\nIn the other sentence it looks elsewhere: one of the two words is enough "
                     "to choose \"down\" or \"please\"" if one_sided else ""))
    save(fig, "rohrer_attention")
    loss_figure(save, losses, "rohrer_loss", "Learning Rohrer's two sentences", floor,
                "floor: 2 ln 2 / tokens (the coin toss)")
    grid, rows, words, heads = patching
    patching_grids(save, "rohrer_patching", [
        (grid, words, rows, "position (the clean sentence)", "residual stream",
         "One vector of the residual stream"),
        (heads[None], [f"head {h}" for h in range(len(heads))], ["block 1"], "head", "",
         "One head's output (hook_z)")],
        "Patching \"program \u2026 ran\" into \"battery \u2026 ran\": share of the logit "
        "difference restored")


# ----------------------------------------------------------------------------------------------
# 3. Encoder-decoder: reversing digit strings
# ----------------------------------------------------------------------------------------------

def translate(save, cross, source, output, n_heads, losses, floor, smoothing):
    """cross (len(output), len(source)): the decoder's cross-attention on one held-out string,
    mean of its n_heads heads; source, output: the digits read and the tokens written."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    heatmap(axes[0], cross, source, output, "source digit (encoder position)",
            "decoder step (token it outputs)", f"Cross-attention, mean of {n_heads} heads",
            "attention weight")
    draw_loss(axes[1], losses, "Training loss", floor, f"floor with label smoothing {smoothing}")
    fig.suptitle(f"Reversing \"{''.join(source)}\": each output digit looks at its mirror "
                 f"position", y=1.02)
    fig.tight_layout()
    save(fig, "translate_cross_attention")


# ----------------------------------------------------------------------------------------------
# 4. A character-level language model and the key/value cache
# ----------------------------------------------------------------------------------------------

def charlm(save, losses, vocab_size, lengths, cached_seconds, recompute_seconds, lens):
    """losses per training step; the seconds to generate lengths[i] tokens with and without
    the key/value cache; lens: the logit lens and attribution, lens_and_attribution's
    arguments."""
    loss_figure(save, losses, "charlm_loss", "Character-level language model on TEXT",
                np.log(vocab_size), "uniform guess, ln(vocabulary size)", log=False)
    fig, ax = pyplot().subplots(figsize=(6, 3.6))
    for seconds, label in ((recompute_seconds, "recompute every position"),
                           (cached_seconds, "key/value cache")):
        ax.plot(lengths, np.array(seconds) * 1000, "o-", label=label)
    ax.set_xlabel("tokens generated")
    ax.set_ylabel("time (ms)")
    ax.set_title(f"Generating with the cache: {recompute_seconds[-1] / cached_seconds[-1]:.1f}x "
                 f"faster at {lengths[-1]} tokens")
    ax.legend()
    ax.grid(alpha=0.3)
    save(fig, "charlm_kv_cache")
    lens_and_attribution(save, "charlm_logit_lens", **lens)


# ----------------------------------------------------------------------------------------------
# 5. Circuits
# ----------------------------------------------------------------------------------------------

def circuits(save, letters, qk_ov, stripe, position_losses, repeat_start, vocab_size, two_log,
             one_log, head_patching):
    """letters: the token names; qk_ov {head: (QK (V, V), OV (V, V))} of the skip-trigram
    model; stripe: (tokens, [(layer, head, weights (n, n), caption)]) on one sequence whose
    second half repeats its first; position_losses {label: (n - 1,) mean loss per position} on
    such sequences, whose repeat starts at repeat_start;
    two_log, one_log (records, 5): the monitor's (step, loss inside repeats, loss elsewhere,
    best induction score, best previous-token score) for two layers and one; head_patching
    (2, H): the share each head's output restores on prompts that end inside a repeat."""
    plt = pyplot()
    fig, axes = plt.subplots(2, len(qk_ov), figsize=(6 * len(qk_ov), 10), squeeze=False)
    for col, (h, (qk, ov)) in enumerate(qk_ov.items()):
        for ax, matrix, ylabel, kind, unit in (
                (axes[0, col], qk, "destination (query) token", "QK", "score"),
                (axes[1, col], ov - ov.mean(axis=0), "out token", "OV", "logit boost")):
            m = np.abs(matrix).max()
            heatmap(ax, matrix, letters, letters, "source token", ylabel,
                    f"head {h}: {kind} circuit", unit, vmin=-m, vmax=m, cmap="RdBu_r")
    fig.suptitle("Planted a…e→g, b…e→h, c…f→i, d…f→j: QK says where to look,\n"
                 "OV what to write (centred per source)")
    fig.tight_layout()
    save(fig, "circuits_qk_ov")

    # attention on one sequence whose second half repeats its first half: the induction stripe
    tokens, heads = stripe
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.8))
    for ax, (layer, head, weights, caption) in zip(axes, heads):
        heatmap(ax, weights, tokens, tokens, "source (key) token", "destination (query) token",
                f"layer {layer} head {head}: {caption}", "attention weight")
    fig.suptitle("A random half repeated: the induction head attends to the token after the "
                 "earlier copy (the stripe below the diagonal)")
    fig.tight_layout()
    save(fig, "circuits_induction_stripe")

    # loss at every position of such sequences, two layers against one
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, losses in position_losses.items():
        ax.plot(np.arange(len(losses)), losses, marker="o", ms=3, label=label)
    ax.axhline(np.log(vocab_size), color="grey", ls="--", lw=1, label="ln V (a uniform guess)")
    ax.axvline(repeat_start - 0.5, color="grey", ls=":", lw=1)
    ax.set_xlabel("position (tokens n/2 .. n-1 repeat tokens 0 .. n/2-1)")
    ax.set_ylabel("loss of the next token (nats)")
    ax.set_title("Per-position loss on repeated random sequences\n(one layer can only favour every "
                 "earlier token, and guess the offset by position)", fontsize=11)
    ax.legend()
    ax.grid(alpha=0.3)
    save(fig, "circuits_position_loss")

    # the phase change: loss and scores over training
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    for log, label, style in ((two_log, "two layers", "-"), (one_log, "one layer", "--")):
        axes[0].plot(log[:, 0], log[:, 1], style, color="C0", label=f"{label}: inside repeats")
        axes[0].plot(log[:, 0], log[:, 2], style, color="C1", label=f"{label}: elsewhere")
    axes[0].set_ylabel("loss (nats)")
    axes[0].set_title("Loss on held-out sequences")
    for log, column, style, color, label in (
            (two_log, 3, "-", "C2", "best layer-1 induction score"),
            (two_log, 4, "-", "C3", "best layer-0 previous-token score"),
            (one_log, 3, "--", "C2", "one layer: best induction score")):
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
    save(fig, "circuits_training")
    H = head_patching.shape[1]
    patching_grids(save, "circuits_head_patching", [
        (head_patching, [f"head {h}" for h in range(H)], ["layer 0", "layer 1"], "head", "",
         "One head's output (hook_z), all positions")],
        "Head patching on repeats: the previous-token head\nand the induction head it feeds")


# ----------------------------------------------------------------------------------------------
# 6. Superposition
# ----------------------------------------------------------------------------------------------

def superposition(save, sweep, dimensions, pentagons, phases, jl, sae):
    """One figure per experiment of chapter 6, each argument a dict of its arrays (keys as the
    drawing functions below name them)."""
    plt = pyplot()
    save(_sweep_figure(plt, **sweep), "superposition_sweep")
    save(_dimensions_figure(plt, **dimensions), "superposition_dimensions_per_feature")
    save(_pentagon_row_figure(plt, **pentagons), "superposition_five_in_two")
    save(_phase_figure(plt, **phases), "superposition_phase_diagram")
    save(_jl_figure(plt, **jl), "johnson_lindenstrauss")
    save(_sae_figure(plt, **sae), "sae_recovery")


def _sweep_figure(plt, grams, norms, interference, titles):
    """Per model: WᵀW (grams) as a heatmap above the bar chart of the feature norms ‖W_i‖,
    coloured by each feature's superposition Σ_j≠i (Ŵ_i·W_j)² (interference)."""
    fig, axes = plt.subplots(2, len(grams), figsize=(2.3 * len(grams) + 1.5, 7.2),
                             gridspec_kw={"height_ratios": [1, 1.25]})
    bar_colours = plt.get_cmap("viridis")
    for col, (gram, norm, shown, title) in enumerate(zip(grams, norms, interference, titles)):
        n = len(norm)
        image = axes[0, col].imshow(gram, cmap="RdBu", vmin=-1, vmax=1)
        axes[0, col].set_title(title)
        axes[0, col].set_xticks([])
        axes[0, col].set_yticks([])
        axes[1, col].barh(np.arange(n), norm, color=bar_colours(np.clip(shown, 0, 1)))
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


def _pentagon_row_figure(plt, probabilities, W, descriptions):
    """W (probabilities, 2, 5): the columns W_i, one panel per probability."""
    fig, axes = plt.subplots(1, len(probabilities), figsize=(2.4 * len(probabilities), 3.2))
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, 5))
    for ax, p, w, description in zip(axes, probabilities, W, descriptions):
        for i in range(5):
            ax.plot([0, w[0, i]], [0, w[1, i]], color=colours[i], lw=2.5)
            ax.plot(w[0, i], w[1, i], "o", color=colours[i], ms=6)
        ax.set_xlim(-1.4, 1.4)
        ax.set_ylim(-1.4, 1.4)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"p = {p:.3f}\n{description}", fontsize=11)
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


# ----------------------------------------------------------------------------------------------
# 7. Polysemantic neurons (Borovoy's four figures), for chapter 7 and for BERT in chapter 8
# ----------------------------------------------------------------------------------------------

def polysemantic(save, name, activations, labels, distance, seed):
    """activations (tokens, neurons) of a feed-forward layer, labels one string per token,
    distance (neurons, neurons) the cosine distance between neurons; saved as name_*.png."""
    plt = pyplot()
    n_tokens, n_neurons = activations.shape
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    image = ax.imshow(distance, cmap="RdBu_r", vmin=0, vmax=2)
    fig.colorbar(image, ax=ax, label="cosine distance 1 - cos")
    ax.set_xlabel("neuron")
    ax.set_ylabel("neuron")
    ax.set_title("Cosine distance between neurons\n(each neuron: its activations over the tokens)")
    save(fig, f"{name}_cosine_heatmap")

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    ax.hist(distance[np.triu_indices(n_neurons, k=1)], bins=50, range=(0, 2), color="#3b6fb6")
    ax.axvline(1, color="k", ls="--", lw=1, label="orthogonal (1)")
    ax.set_xlabel("cosine distance between two neurons")
    ax.set_ylabel("number of neuron pairs")
    ax.set_title("Histogram of neuron-neuron cosine distances")
    ax.legend()
    save(fig, f"{name}_cosine_histogram")

    sampled_neurons(save, name, activations, labels, seed)

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    ax.hist(activations.sum(axis=0), bins=40, color="#d6604d")
    ax.set_xlabel(f"activation summed over all {n_tokens} tokens")
    ax.set_ylabel("number of neurons")
    ax.set_title("Summed activation per neuron")
    save(fig, f"{name}_summed_activations")


def sampled_neurons(save, name, activations, labels, seed, padding=None):
    """50 randomly chosen neurons (drawn with seed) across the first 80 tokens, as Borovoy's
    figure 6; padding (tokens,) bool shades the padded positions of a batch."""
    n_tokens, n_neurons = activations.shape
    sampled = np.random.default_rng(seed).choice(n_neurons, size=min(50, n_neurons),
                                                 replace=False)
    shown = min(n_tokens, 80)
    fig, ax = pyplot().subplots(figsize=(12, 4.8))
    for j in sampled:
        ax.plot(np.arange(shown), activations[:shown, j], lw=1, alpha=0.6)
    if padding is not None:
        for t in np.flatnonzero(padding[:shown]):
            ax.axvspan(t - 0.5, t + 0.5, color="grey", alpha=0.2, lw=0)
    characters = max(map(len, labels)) == 1            # a character model's tokens, or words
    ax.set_xticks(np.arange(shown))
    ax.set_xticklabels([repr(t)[1:-1] if t.strip() else "␣" for t in labels[:shown]],
                       fontsize=10 if characters else 7, family="monospace",
                       rotation=0 if characters else 90)
    ax.set_xlabel("token" + (" (grey: padding)" if padding is not None else ""))
    ax.set_ylabel("activation")
    ax.set_title(f"Activations of {len(sampled)} randomly sampled neurons across the first "
                 f"{shown} tokens")
    save(fig, f"{name}_sampled_neurons")


# ----------------------------------------------------------------------------------------------
# 8. A real pretrained BERT
# ----------------------------------------------------------------------------------------------

def bert(save, similarity, sentences, head_weights, pieces, layer, head, neurons,
         padded_neurons, seed):
    """similarity (12, 12): cosines of the sentence embeddings; head_weights (T, T): the
    previous-token head (layer, head) on the word pieces of one sentence; neurons and
    padded_neurons: (activations, labels, distance) of layer 0's feed-forward neurons, each
    sentence alone, and (activations, labels, padding) for one padded batch."""
    plt = pyplot()
    short = [s if len(s) < 34 else s[:31] + "..." for s in sentences]
    fig, ax = plt.subplots(figsize=(9, 7.5))
    heatmap(ax, similarity, short, short, "", "", "Cosine similarity of the sentence embeddings",
            "cosine", annotate=True, vmin=-0.2, vmax=1, cmap="viridis")
    save(fig, "bert_sentence_similarity")
    fig, ax = plt.subplots(figsize=(7, 6))
    heatmap(ax, head_weights, pieces, pieces, "key", "query",
            f"Layer {layer}, head {head} of all-MiniLM-L6-v2: the previous token", "attention")
    save(fig, "bert_previous_token_head")
    polysemantic(save, "bert_polysemantic", *neurons, seed)
    activations, labels, padding = padded_neurons
    sampled_neurons(save, "bert_polysemantic_padded", activations, labels, seed, padding)


# ----------------------------------------------------------------------------------------------
# 9. Interventions: patching grids, the logit lens, direct logit attribution (chapters 2, 4, 5
#    and patching)
# ----------------------------------------------------------------------------------------------

def patching_grids(save, name, panels, title):
    """panels: (matrix, xlabels, ylabels, xlabel, ylabel, panel title), each matrix the share
    of the clean run's metric that patching restores (0: as corrupt, 1: as clean), drawn side by
    side on one colour scale."""
    plt = pyplot()
    widths = [max(3.0, 0.55 * len(p[1]) + 2) for p in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(sum(widths), 3.8), squeeze=False,
                             width_ratios=widths)
    for ax, (matrix, xlabels, ylabels, xlabel, ylabel, panel_title) in zip(axes[0], panels):
        heatmap(ax, matrix, xlabels, ylabels, xlabel, ylabel, panel_title, "share restored",
                vmin=-1, vmax=1, cmap="RdBu_r")
        if matrix.size <= 64:                       # the numbers too, dark on the pale middle
            for (i, j), value in np.ndenumerate(matrix):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=9,
                        color="white" if abs(value) > 0.6 else "black")
    fig.suptitle(title)
    fig.tight_layout()
    return save(fig, name)


def lens_and_attribution(save, name, p_right, text, top, layers, labels, parts, title):
    """The logit lens as a heatmap, p_right (layers, T): the probability of the right next token
    read after each layer, text the T tokens read and top (layers, T) the top prediction at each
    (written in the cells); and the direct logit attribution of one prediction, parts (n,) with
    their labels, as bars."""
    plt = pyplot()
    fig, (lens, bars) = plt.subplots(2, 1, figsize=(max(8, 0.3 * len(text) + 2), 6.5),
                                     height_ratios=[1, 1.3])
    heatmap(lens, p_right, text, layers, "token read (the next one is to be predicted)", "",
            "Logit lens: p(right next token) from the residual stream after each layer",
            "probability")
    for (i, j), token in np.ndenumerate(top):
        lens.text(j, i, token, ha="center", va="center", fontsize=8,
                  color="black" if p_right[i, j] > 0.6 else "white")
    bars.bar(range(len(parts)), parts, color=["C3" if v < 0 else "C0" for v in parts])
    bars.set_xticks(range(len(parts)), labels, rotation=60, ha="right", rotation_mode="anchor")
    bars.axhline(0, color="grey", lw=1)
    bars.set_ylabel("direct contribution (logits)")
    bars.set_title(title)
    bars.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return save(fig, name)


def patching(save, table):
    """table {measurement: (L, H)} of chapter patching's heads, one small panel each, every cell
    written out: the shares restored by patching and the direct effects on IO - S in red (up)
    and blue (down), the mean attention weights in grey."""
    plt = pyplot()
    L, H = next(iter(table.values())).shape
    columns = (len(table) + 1) // 2
    fig, axes = plt.subplots(2, columns, figsize=(2.9 * columns, 4.6), squeeze=False)
    for ax, (label, values) in zip(axes.flat, table.items()):
        attention = label.startswith("attention")
        m = 1.0 if not label.startswith("direct") else np.abs(values).max()
        ax.imshow(values, cmap="Greys" if attention else "RdBu_r", vmin=0 if attention else -m,
                  vmax=m, aspect="auto")
        for (i, j), value in np.ndenumerate(values):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=9,
                    color="white" if abs(value) > 0.6 * m else "black")
        ax.set_xticks(range(H), [f"H{h}" for h in range(H)])
        ax.set_yticks(range(L), [f"L{l}" for l in range(L)])
        ax.set_title(label.replace(", ", ",\n"), fontsize=10)
    for ax in axes.flat[len(table):]:
        ax.axis("off")
    fig.suptitle("A toy indirect-object task: what patching each head restores (share of IO - S), "
                 "what it attends to, what it writes (logits)", fontsize=11)
    fig.tight_layout()
    return save(fig, "patching_heads")
# 9. Grokking modular addition
# ----------------------------------------------------------------------------------------------

PHASE_COLOURS = {"memorisation": "#d6604d", "circuit_formation": "#f4a582", "cleanup": "#92c5de"}


def _shade_phases(ax, phases):
    for name, span in phases.items():
        if span is not None:
            ax.axvspan(*span, color=PHASE_COLOURS[name], alpha=0.35, lw=0,
                       label=name.replace("_", " "))


def grokking(save, history, phases, key_frequencies, neuron):
    """history from grokking.train, phases from grokking.phases ({name: (start, end) or None}),
    key_frequencies, and neuron = (grid (p, p), index, frequency, fve): one MLP neuron's
    activation over the pairs (a, b)."""
    plt = pyplot()
    step = history["step"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    _shade_phases(ax1, phases)
    ax1.plot(step, history["train_loss"], lw=1.8, label="train loss")
    ax1.plot(step, history["test_loss"], lw=1.8, label="test loss")
    ax1.set_yscale("log")
    ax1.set_xlabel("training step")
    ax1.set_ylabel("cross-entropy (log scale)")
    ax1.set_title("Memorise, then generalise")
    ax1.legend(loc="lower left")
    _shade_phases(ax2, phases)
    ax2.plot(step, history["train_accuracy"], lw=1.8, label="train accuracy")
    ax2.plot(step, history["test_accuracy"], lw=1.8, label="test accuracy")
    ax2.set_ylim(0, 1.02)
    ax2.set_xlabel("training step")
    ax2.set_ylabel("accuracy")
    ax2.set_title("Train accuracy at once, test accuracy much later")
    ax2.legend(loc="center right")
    fig.tight_layout()
    save(fig, "grokking_curves")

    norms = history["embedding_norms"]
    frequencies = np.arange(1, norms.shape[1] + 1)
    fig, ax = plt.subplots(figsize=(10, 4.8))
    for i, colour in zip((0, len(step) // 2, len(step) - 1), ("#bbbbbb", "#f4a582", "#2166ac")):
        ax.plot(frequencies, norms[i], "o-", ms=3, lw=1.2, color=colour, label=f"step {step[i]}")
    for k in key_frequencies:
        ax.axvline(k, color="k", ls=":", lw=0.8)
    ax.set_xlabel("frequency k (dotted: the key frequencies of the trained model)")
    ax.set_ylabel("norm of the embedding along cos, sin(2πka/p)")
    ax.set_title("The embedding concentrates on a few frequencies")
    ax.legend()
    save(fig, "grokking_embedding_frequencies")

    grid, index, frequency, fve = neuron
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    image = ax.imshow(grid, cmap="viridis", origin="lower")
    fig.colorbar(image, ax=ax, label="activation (ReLU)")
    ax.set_xlabel("b")
    ax.set_ylabel("a")
    ax.set_title(f"Neuron {index} over all pairs (a, b): frequency {frequency},\n"
                 f"{fve:.0%} of its variance")
    save(fig, "grokking_neuron")

    fig, ax = plt.subplots(figsize=(10, 4.8))
    _shade_phases(ax, phases)
    ax.plot(step, history["test_loss"], lw=1.8, color="#ff7f0e", label="test loss")
    ax.plot(step, history["restricted_loss"], lw=1.8, color="#2166ac",
            label="restricted loss (key frequencies only)")
    ax.plot(step, history["excluded_loss"], lw=1.8, color="#b2182b",
            label="excluded loss (key frequencies removed, train)")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("cross-entropy (log scale)")
    ax.set_title("The circuit forms long before the test loss falls")
    ax.legend(loc="lower left")
    save(fig, "grokking_progress_measures")


# 11. Inside the real BERT: sparse features and key-value memories
# ----------------------------------------------------------------------------------------------

def features(save, density, units, examples, memories, layer):
    """density (n_latents,): each latent's firing frequency on held-out tokens; units: name ->
    dict(entropy of the measured units); examples: title -> top contexts of a few features and
    neurons; memories: one dict per layer from pretrained.key_value_memories."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    live = density[density > 0]
    ax.hist(np.log10(live), bins=40, color="#3b6fb6")
    ax.set_xlabel("log10 of the firing frequency (share of held-out tokens)")
    ax.set_ylabel("number of latents")
    ax.set_title(f"Feature density of the layer-{layer} dictionary "
                 f"({np.sum(density == 0)} of {len(density)} latents dead)")
    save(fig, "features_density")

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    bins = np.linspace(0, max(max(u["entropy"].max(initial=0) for u in units.values()), 1), 25)
    for (name, u), color in zip(units.items(), ("#d6604d", "#3b6fb6", "grey")):
        ax.hist(u["entropy"], bins=bins, histtype="step", lw=2, color=color, density=True,
                label=f"{name} (median {np.median(u['entropy']):.2f})")
    ax.set_xlabel("entropy of the word pieces among a unit's strongest tokens (bits)")
    ax.set_ylabel("share of units (density)")
    ax.set_title("Lower is more monosemantic: neurons, SAE features, random directions")
    ax.legend()
    save(fig, "features_monosemanticity")

    fig, ax = plt.subplots(figsize=(12, 0.5 + 0.32 * sum(1 + len(c) for c in examples.values())))
    ax.axis("off")
    lines = [line for title, contexts in examples.items()
             for line in [(f"{title}", True)] + [(f"    {c}", False) for c in contexts]]
    for i, (text, bold) in enumerate(lines):
        ax.text(0, 1 - i / len(lines), text, family="monospace", fontsize=10,
                fontweight="bold" if bold else "normal", va="top", transform=ax.transAxes)
    ax.set_title("Strongest held-out contexts (the firing piece marked «thus»)", loc="left")
    save(fig, "features_top_contexts")

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    x = np.arange(len(memories))
    for key, label, style in (("agree_self", "its own piece", "o-"), ("agree_next", "the next piece", "s-"),
                              ("chance_self", "own piece, another key's value", "o:"),
                              ("chance_next", "next piece, another key's value", "s:")):
        left.plot(x, [100 * m[key] for m in memories], style, label=label)
    left.set_xlabel("layer")
    left.set_ylabel("% of trigger tokens")
    left.set_title("Key-value agreement: the value promotes the trigger's ...")
    left.legend(fontsize=9)
    right.plot(x, [m["same_piece"] for m in memories], "o-", label="triggers of the most common piece")
    right.plot(x, [m["chance_same_piece"] for m in memories], "o:", color="grey",
               label="the same among random tokens")
    right.plot(x, [m["alone"] for m in memories], "s-", label="firing the piece keeps alone (median)")
    right.set_xlabel("layer")
    right.set_ylabel("share")
    right.set_title("Shallow (high) or contextual (low), per layer")
    right.legend(fontsize=9)
    for ax in (left, right):
        ax.set_xticks(x)
        ax.grid(alpha=0.3)
    save(fig, "features_key_value_memories")
