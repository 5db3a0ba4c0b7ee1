"""Superposition: why one neuron can mean several things, shown with the smallest models that do it.

Read this file top to bottom; each section uses only what came before it.

    1. Sparse features       the synthetic data of "Toy Models of Superposition" (Elhage et al.
                             2022, section "Demonstrating Superposition")
    2. The toy models        linear  x' = WᵀWx + b  and ReLU output  x' = ReLU(WᵀWx + b),
                             forward and backward written by hand
    3. Many models at once   an instance axis, so a sweep over sparsities is one computation;
                             training with transformer.Adam
    4. Measuring it          feature norms, superposition, dimensions per feature, feature
                             dimensionality; checked exactly on known geometries
    5. The three results     n = 20 features in m = 5 dimensions, a sweep over sparsity
    6. Five features in two  the pentagon, the n = 2, m = 1 phase diagram, the "sticky" 1/2
    7. A pentagon by hand    the superposition network of Menon, "Attention as a Kronecker
                             product", Example 26
    8. Johnson-Lindenstrauss why so many nearly orthogonal directions fit in few dimensions
    9. Polysemantic neurons  cosine distances between the neurons of a real MLP layer
                             (Borovoy, "Investigating Polysemantic Neurons", 2024)
   10. Sparse autoencoder    taking features back out of superposition (dictionary learning),
                             scored by mean max cosine similarity against the true features; on
                             a real model's activations, judged on held-out rows (variance
                             explained, L0, feature density) and by a token-level measure of
                             monosemanticity applied to neurons and features alike
    Appendix                 checking arguments: every public function refuses bad input with
                             a ValueError or TypeError naming the argument, before it changes
                             anything

Conventions:
    * Papers write features as columns, h = W x with W of shape (m, n); so does this file.
      Column W[:, i] is feature i's direction in the hidden space. With an instance axis the
      weights are W (K, m, n) and biases b (K, n): K independent models trained side by side.
      (I_i is feature i's importance, as in the paper; K counts instances.)
    * A batch has rows as examples, as tokens are rows in transformer.py: x (K, B, n) with the
      instance axis first so np.matmul batches over it. Then h = x @ Wᵀ is (K, B, m).
    * Every layer keeps in forward what backward needs; backward(dout) returns the input's
      gradient and adds (+=) into self.grads, as in transformer.py. The optimizer is
      transformer.Adam.
    * Randomness only through np.random.default_rng(seed). float64 for gradient checks,
      float32 for speed: nothing in a forward or backward pass changes the dtype.
    * No plotting here; demo.py draws the figures.
"""

import math

import numpy as np

import transformer


# ----------------------------------------------------------------------------------------------
# 1. Sparse features
# ----------------------------------------------------------------------------------------------
# The data is made up so that we know the true features. There are n of them. In each example
# feature i is present with probability p_i = 1 - S_i (S is the sparsity) and then takes a value
# uniform in [0, 1]; otherwise it is 0. Each feature has an importance I_i that weights its
# error in the loss; the paper uses I_i = 0.9^i, so feature 0 matters most.
#
# Sampling is a large part of the training time, so it uses one uniform draw per entry, not two:
# u ~ U[0, 1) is below p with probability p, and given that it is, u / p is uniform on [0, 1).
# So x = u / p where u / p < 1, and 0 elsewhere, is exactly the distribution above (up to
# rounding: u/p is computed as u · (1/p), which may round a u just below p up to 1).

def sparse_features(rng, inverse_probability, batch_size, dtype):
    """inverse_probability (K, 1, n) holds 1/p (0 where p = 0) -> x (K, batch_size, n)."""
    rng, inverse, batch_size, dtype = _check_sparse_features(rng, inverse_probability, batch_size, dtype)
    n_instances, _, n_features = inverse.shape
    x = rng.random((n_instances, batch_size, n_features), dtype=dtype)
    x *= inverse
    x *= x < 1                      # u >= p: the feature is absent in this example
    return x


def importance_decay(n_features, base=0.9):
    """I_i = base^i: the paper's importances, (n,)."""
    n_features, base = transformer.check_count("n_features", n_features), transformer.check_positive("base", base)
    return base ** np.arange(n_features, dtype=np.float64)


# ----------------------------------------------------------------------------------------------
# 2. The toy models, and 3. many of them at once
# ----------------------------------------------------------------------------------------------
# Squeeze n features into m < n hidden dimensions and read them back with the same matrix:
#     h = W x              (m,)   the hidden representation
#     x' = Wᵀh + b         (n,)   the linear model
#     x' = ReLU(Wᵀh + b)   (n,)   the ReLU output model
# Loss, per model: the importance-weighted squared error, summed over features and averaged over
# the batch, L = (1/B) Σ_b Σ_i I_i (x_i - x'_i)².
#
# Backward, by hand, for one example (columns, as in the paper). With z = Wᵀh + b and
# g = ∂L/∂z = (2/B) I ⊙ (x' - x) ⊙ 1[z > 0] (drop the indicator for the linear model):
#     ∂L/∂b = Σ_batch g
#     ∂L/∂h = W g                                   (m,)
#     ∂L/∂W = h gᵀ + (W g) xᵀ   summed over the batch: W is used twice, as the decoder in
#             z = Wᵀh and as the encoder in h = W x, and the two gradients add.
# With rows as examples the same lines read dh = g @ Wᵀ and dW = hᵀ g + dhᵀ x.
# The instance axis is just a leading batch axis of np.matmul, so K models cost one computation.
# The instances share nothing: the total loss is Σ_instances L, whose gradient with respect to
# one instance's weights is that instance's own gradient.

ACTIVATIONS = ("relu", "linear")


class ToyModel(transformer.Module):
    """K = n_instances toy models of n_features in n_hidden dimensions, trained side by side.

    feature_probability (1 - sparsity): a number, one per instance (K,), or (K, n).
    importance: a number, one per feature (n,), or (K, n); must be >= 0.
    activation: "relu" (x' = ReLU(WᵀWx + b)) or "linear" (x' = WᵀWx + b).
    n_hidden >= n_features is allowed (every feature then fits in its own dimension and there is
    nothing to superpose); superposition is about n_hidden < n_features.

    Parameters: W (K, n_hidden, n_features), Xavier-normal; b (K, n_features), zeros.
    Each method checks its arguments and then holds the math, except that fit and evaluate
    compute the loss with _loss, unchecked: a model that diverged gives a NaN x', which fit
    reports as FloatingPointError (and loss would refuse as bad input).
    """

    def __init__(self, n_features, n_hidden, n_instances=1, feature_probability=1.0,
                 importance=1.0, activation="relu", seed=0, dtype=np.float64):
        super().__init__()
        n, m, k, p, imp, inverse, dtype, seed = _check_toy_model(
            n_features, n_hidden, n_instances, feature_probability, importance, activation, seed, dtype)
        self.dtype = dtype
        self.activation = activation
        self.feature_probability = p.astype(self.dtype)         # (K, n)
        self.importance = imp.astype(self.dtype)                # (K, n)
        self._inverse_probability = inverse[:, None, :]                      # (K, 1, n)
        self._importance = self.importance[:, None, :]                       # (K, 1, n)
        self.rng = np.random.default_rng(seed)
        std = math.sqrt(2.0 / (m + n))                          # Xavier (Glorot) normal
        self.add_param("W", (self.rng.standard_normal((k, m, n)) * std).astype(self.dtype))
        self.add_param("b", np.zeros((k, n), self.dtype))
        self.saved = None

    @property
    def W(self):
        return self.params["W"]

    @property
    def b(self):
        return self.params["b"]

    def sample(self, batch_size):
        """A fresh batch from each instance's own distribution: (K, batch_size, n)."""
        return sparse_features(self.rng, self._inverse_probability, batch_size, self.dtype)

    def hidden(self, x):
        """h = W x for every row: (K, B, n) -> (K, B, m)."""
        return _check_batch(self, "x", x) @ self.W.transpose(0, 2, 1)

    def forward(self, x):
        """(K, B, n) -> x' (K, B, n)."""
        x = _check_batch(self, "x", x)
        h = x @ self.W.transpose(0, 2, 1)                       # (K, B, m)  h = W x, one row each
        out = h @ self.W                                        # (K, B, n)  Wᵀh, one row each
        out += self.b[:, None, :]
        if self.activation == "relu":
            np.maximum(out, 0, out=out)
        self.saved = (x, h, out)
        return out

    def loss(self, x, x_hat):
        """Per-instance loss (K,) and ∂(Σ_instances L)/∂x' (K, B, n)."""
        x = _check_batch(self, "x", x)
        return self._loss(x, _check_same_shape("x_hat", x_hat, x.shape))

    def _loss(self, x, x_hat):
        batch = x.shape[1]
        error = x_hat - x
        weighted = self._importance * error                     # I_i (x'_i - x_i)
        losses = np.einsum("kbn,kbn->k", weighted, error) / batch
        weighted *= 2 / batch
        return losses, weighted

    def backward(self, dout):
        """(K, B, n) -> ∂L/∂x (K, B, n); adds into grads["W"], grads["b"]."""
        dout = _check_same_shape("dout", dout, self._saved()[2].shape)
        x, h, out = self._saved()
        dz = dout * (out > 0) if self.activation == "relu" else dout    # ReLU passes where z > 0
        self.grads["b"] += np.einsum("kbn->kn", dz)             # Σ over the batch
        dh = dz @ self.W.transpose(0, 2, 1)                     # (K, B, m)
        # W as decoder (z = h @ W) and as encoder (h = x @ Wᵀ): the two gradients add.
        self.grads["W"] += h.transpose(0, 2, 1) @ dz + dh.transpose(0, 2, 1) @ x
        return dh @ self.W

    def evaluate(self, batch_size=10_000):
        """Per-instance loss (K,) on one fresh batch, without touching the gradients."""
        x = self.sample(transformer.check_count("batch_size", batch_size))
        return self._loss(x, self.forward(x))[0]

    def fit(self, steps, batch_size, lr=1e-3, progress=None):
        """Adam on fresh batches (each call starts a new Adam); returns the loss history
        (steps, K). Stops with FloatingPointError as soon as any instance's loss is not finite,
        before that step's update (the weights stay those that gave it). progress(step, mean loss over instances), if given, is called
        at every step, before its update."""
        steps, batch_size, lr = _check_fit(steps, batch_size, lr)
        _check_callable("progress", progress, "progress(step, loss)", optional=True)
        optimizer = transformer.Adam(self.parameters(), lr=lr)
        history = np.empty((steps, self.W.shape[0]), self.dtype)
        for step in range(steps):      # forward's and backward's checks: ~3% of a step, measured
            x = self.sample(batch_size)
            self.zero_grad()
            history[step], dx_hat = self._loss(x, self.forward(x))
            _check_loss("the loss", history[step], step, lr)
            if progress is not None:
                progress(step, float(history[step].mean()))
            self.backward(dx_hat)
            optimizer.step()
        return history


# ----------------------------------------------------------------------------------------------
# 4. Measuring superposition
# ----------------------------------------------------------------------------------------------
# All of these take W of shape (..., m, n): one model (m, n) or many (K, m, n).
#     ‖W_i‖                         is feature i represented at all? (≈ 1 yes, ≈ 0 no)
#     Σ_{j≠i} (Ŵ_i · W_j)²          how much of the other features leaks into feature i's
#                                   direction (Ŵ_i = W_i / ‖W_i‖): 0 when W_i is orthogonal to the
#                                   rest, ≥ 1 when some other feature activates it as strongly.
#     m / ‖W‖_F²                    dimensions per feature: 1 for one feature per dimension,
#                                   1/2 for antipodal pairs, 2/5 for a pentagon. A W that is all
#                                   zero represents no feature at all and has no such ratio
#                                   (m/0): it is refused rather than reported as inf.
#     D_i = ‖W_i‖² / Σ_j (Ŵ_i·W_j)² feature i's share of a dimension ("Feature Dimensionality");
#                                   for a feature of norm 0 we set D_i = 0.

def feature_norms(W):
    """‖W_i‖: (..., m, n) -> (..., n)."""
    return np.linalg.norm(_check_weights(W), axis=-2)


def _overlaps(W):
    """(..., m, n) -> (..., n, n) with entry (i, j) = Ŵ_i · W_j. A zero column stays zero."""
    norms = feature_norms(W)
    unit = W / np.where(norms > 0, norms, 1)[..., None, :]
    return np.swapaxes(unit, -1, -2) @ W


def superposition(W):
    """Σ_{j≠i} (Ŵ_i · W_j)²: (..., m, n) -> (..., n)."""
    squared = _overlaps(_check_weights(W)) ** 2
    return squared.sum(axis=-1) - np.diagonal(squared, axis1=-2, axis2=-1)


def dimensions_per_feature(W):
    """m / ‖W‖_F²: (..., m, n) -> (...). An all-zero model is refused (see above)."""
    W = _check_weights(W)
    squared_norm = np.sum(W * W, axis=(-2, -1))
    _check_some_feature(squared_norm)
    return W.shape[-2] / squared_norm


def feature_dimensionality(W):
    """D_i = ‖W_i‖² / Σ_j (Ŵ_i · W_j)²: (..., m, n) -> (..., n); 0 for a zero column."""
    W = _check_weights(W)
    norms_sq = feature_norms(W) ** 2
    total = np.sum(_overlaps(W) ** 2, axis=-1)          # includes j = i, which is ‖W_i‖²
    return np.divide(norms_sq, total, out=np.zeros_like(norms_sq), where=total > 0)


def represented(W, threshold=0.5):
    """Which features have ‖W_i‖ > threshold: (..., m, n) -> bool (..., n)."""
    threshold = transformer.check_positive("threshold", threshold, or_zero=True)
    return feature_norms(W) > threshold


def regular_polygon(k):
    """k unit vectors at angles 2πj/k: (2, k)."""
    k = transformer.check_count("k", k)
    angles = 2 * np.pi * np.arange(k) / k
    return np.stack([np.cos(angles), np.sin(angles)])


def known_geometries():
    """{name: (W (m, n) with unit columns, the exact feature dimensionality of every column)}.

    Each is a unit-norm tight frame, Σ_j W_j W_jᵀ = (n/m) Id, so Σ_j (W_i·W_j)² = n/m and
    D_i = m/n exactly: the fractions the paper finds features "sticking" to."""
    # Square antiprism: a square at height h and one at -h turned by 45°. It is a tight frame
    # when x and z carry the same energy, 8 r²/2 = 8 h², with r² + h² = 1: h² = 1/3.
    h, r = math.sqrt(1 / 3), math.sqrt(2 / 3)
    turns = np.pi / 2 * np.arange(4)
    top = np.stack([r * np.cos(turns), r * np.sin(turns), np.full(4, h)])
    bottom = np.stack([r * np.cos(turns + np.pi / 4), r * np.sin(turns + np.pi / 4), np.full(4, -h)])
    tetrahedron = np.array([[1, 1, -1, -1], [1, -1, 1, -1], [1, -1, -1, 1]]) / math.sqrt(3)
    return {
        "orthogonal": (np.eye(2), 1.0),
        "antipodal pair": (np.array([[1.0, -1.0]]), 1 / 2),
        "triangle": (regular_polygon(3), 2 / 3),
        "tetrahedron": (tetrahedron, 3 / 4),
        "pentagon": (regular_polygon(5), 2 / 5),
        "square antiprism": (np.concatenate([top, bottom], axis=1), 3 / 8),
    }


# ----------------------------------------------------------------------------------------------
# 5. The three results (n = 20 features, m = 5 dimensions, I_i = 0.9^i)
# ----------------------------------------------------------------------------------------------
# (a) A linear model keeps the m most important features, orthogonal: no superposition. Its
#     loss only sees WᵀW, and the best rank-m approximation of the identity (weighted by I) is
#     the projection on the m most important coordinates.
# (b) A ReLU model on dense features (S = 0) does the same.
# (c) As S rises, the ReLU model represents more than m features, in superposition: with sparse
#     features, a negative bias and the ReLU filter out most of the interference.

SWEEP_SPARSITIES = (0.0, 0.7, 0.9, 0.97, 0.99, 0.997, 0.999, 0.9997)


def sparsity_sweep(sparsities=SWEEP_SPARSITIES, n_features=20, n_hidden=5, activation="relu",
                   steps=10_000, batch_size=1024, lr=1e-3, seed=0, dtype=np.float32):
    """Train one instance per sparsity at once; returns (model, loss history (steps, K))."""
    s = _check_probabilities("sparsities", sparsities)
    model = ToyModel(n_features, n_hidden, n_instances=s.size, feature_probability=1 - s,
                     importance=importance_decay(n_features), activation=activation, seed=seed,
                     dtype=dtype)
    return model, model.fit(steps, batch_size, lr)


def summarize(W, threshold=0.5):
    """Per model: features represented, largest superposition among the represented ones, and
    dimensions per feature. W (K, m, n) -> dict of (K,) arrays."""
    threshold = transformer.check_positive("threshold", threshold, or_zero=True)
    W = _check_weights(W)
    shown = feature_norms(W) > threshold
    return {"represented": shown.sum(axis=-1),
            "max_superposition": np.where(shown, superposition(W), 0).max(axis=-1),
            "dimensions_per_feature": dimensions_per_feature(W)}


# ----------------------------------------------------------------------------------------------
# 6. Five features in two dimensions; the phase diagram; sticky 1/2
# ----------------------------------------------------------------------------------------------
# In m = 2 dimensions the whole W can be drawn: each feature is an arrow. Dense features: two
# orthogonal arrows, the rest zero. Sparser: antipodal pairs. Sparse (p ≲ 0.07): five arrows at
# the vertices of a regular pentagon, with negative biases to cut off the interference
# (cos 72° ≈ 0.31 from each neighbour). Gradient descent does not always find it: some seeds
# stop in a local minimum (e.g. pairs plus a lone feature), so we train a few seeds per
# probability as extra instances and keep the one with the lowest loss.

def pentagon_probabilities(k=8):
    """p = 20^(-t) for t evenly from 0 to 1: from dense (1) to 0.05."""
    return 20.0 ** -np.linspace(0, 1, transformer.check_count("k", k))


def best_of_seeds(model, n_seeds, eval_batch=20_000):
    """Instances laid out as (setting, seed), seed fastest: the index (settings,) of the
    instance with the lowest loss on a fresh batch, for every setting."""
    n_seeds, eval_batch = _check_best_of_seeds(model, n_seeds, eval_batch)
    losses = model.evaluate(eval_batch).reshape(-1, n_seeds)
    return np.arange(losses.shape[0]) * n_seeds + losses.argmin(axis=1)


def five_in_two(probabilities, n_seeds=4, steps=3000, batch_size=512, lr=1e-2, seed=0,
                dtype=np.float32):
    """n = 5, m = 2, I_i = 0.9^i, n_seeds instances per probability (instance = probability
    index * n_seeds + seed). Returns the trained model and the index (k,) of the best seed of
    each probability: model.W[best] is (k, 2, 5)."""
    p = _check_probabilities("probabilities", probabilities)
    n_seeds = transformer.check_count("n_seeds", n_seeds)
    model = ToyModel(5, 2, n_instances=p.size * n_seeds, feature_probability=np.repeat(p, n_seeds),
                     importance=importance_decay(5), seed=seed, dtype=dtype)
    model.fit(steps, batch_size, lr)
    return model, best_of_seeds(model, n_seeds)


def polygon_angles(W):
    """Angles between neighbouring feature arrows, in degrees, for W (2, n); they sum to 360."""
    W = _check_array("W", W, (2, "n"))
    angles = np.sort(np.degrees(np.arctan2(W[1], W[0])))
    return np.diff(np.append(angles, angles[0] + 360))


def is_regular_pentagon(W, b, tolerance=5.0):
    """Five arrows 72° ± tolerance apart, all norms within 20% of their mean, all biases < 0.
    W is (m, n) and b (n,); a W of any shape but (2, 5) is simply not a pentagon."""
    W = _check_array("W", W, ("m", "n"))
    b = _check_array("b", b, (W.shape[1],))
    tolerance = transformer.check_positive("tolerance", tolerance, or_zero=True)
    norms = feature_norms(W)
    return bool(W.shape == (2, 5) and np.all(np.abs(polygon_angles(W) - 72) <= tolerance)
                and np.all(np.abs(norms / norms.mean() - 1) <= 0.2) and np.all(b < 0))


# The n = 2, m = 1 phase diagram ("Superposition as a Phase Change"): feature 1 has importance 1,
# feature 2 a relative importance r; both have density p. With one dimension the model can
# ignore feature 2, give the dimension to feature 2 instead of feature 1, or store both as an
# antipodal pair W = (w, -w), which the ReLU and a negative bias make work when features are
# rarely present together. Every (r, p) cell is a few instances of the same computation.

PHASES = ("feature 2 not learned", "feature 2 takes the dimension", "antipodal pair")


def classify_phase(W, threshold=0.5):
    """W (..., 1, 2) -> int (...): index into PHASES, or -1 for none of them."""
    W = _check_array("W", W, ("...", 1, 2))
    threshold = transformer.check_positive("threshold", threshold, or_zero=True)
    w1, w2 = W[..., 0, 0], W[..., 0, 1]
    strong1, strong2 = np.abs(w1) > threshold, np.abs(w2) > threshold
    return np.select([~strong2, strong2 & ~strong1, strong1 & strong2 & (w1 * w2 < 0)],
                     [0, 1, 2], default=-1)


def phase_diagram(densities, relative_importances, n_seeds=3, steps=4000, batch_size=256, lr=1e-2,
                  seed=0, dtype=np.float32):
    """Returns phases (len(relative_importances), len(densities)) as indices into PHASES, and
    the best W of each cell (R, D, 1, 2)."""
    p = _check_probabilities("densities", densities)
    r = _check_nonnegative("relative_importances", relative_importances)
    n_seeds = transformer.check_count("n_seeds", n_seeds)
    rr, pp = np.meshgrid(r, p, indexing="ij")                         # (R, D), cells row-major
    importance = np.stack([np.ones(rr.size), rr.ravel()], axis=1)      # (cells, 2)
    model = ToyModel(2, 1, n_instances=rr.size * n_seeds,
                     feature_probability=np.repeat(np.stack([pp.ravel()] * 2, axis=1), n_seeds, axis=0),
                     importance=np.repeat(importance, n_seeds, axis=0), seed=seed, dtype=dtype)
    model.fit(steps, batch_size, lr)
    W = model.W[best_of_seeds(model, n_seeds)].reshape(r.size, p.size, 1, 2)
    return classify_phase(W), W


# The paper reports that dimensions per feature "sticks" at 1/2 (antipodal pairs) over a range
# of sparsities when many features share the space. Its notebook's setup: n = 200, m = 20, equal
# importance, 20 instances with p = 20^(-t) for t evenly from 0 to 1 (the same sweep as the
# pentagon row above: 1/(1-S) from 1 to 20), 10,000 Adam steps, batch 1024, lr 1e-3. The
# defaults here take a quarter of the batch at three times the learning rate, which traces the
# same curve at less cost; demo.py runs it only when asked (--long) and prints it. (The
# notebook also uses AdamW's default weight decay of 0.01 and averages the loss over features
# as well as examples; neither is done here.)

def sticky_half(n_sparsities=20, steps=10_000, batch_size=256, lr=3e-3, seed=0, dtype=np.float32,
                progress=None):
    """Returns (1/(1-S) (k,), dimensions per feature (k,)) for n = 200, m = 20, importance 1,
    feature probabilities pentagon_probabilities(n_sparsities). progress: as in ToyModel.fit."""
    probabilities = pentagon_probabilities(transformer.check_count("n_sparsities", n_sparsities))
    model = ToyModel(200, 20, n_instances=probabilities.size, feature_probability=probabilities,
                     importance=1.0, seed=seed, dtype=dtype)
    model.fit(steps, batch_size, lr, progress)
    return 1 / probabilities, dimensions_per_feature(model.W)


# ----------------------------------------------------------------------------------------------
# 7. The pentagon network by hand (Menon, Attention as a Kronecker product, Example 26)
# ----------------------------------------------------------------------------------------------
# x̂ = ReLU(W₂ ReLU(W₁x + b₁) + b₂), five features in two neurons:
#   * W₁ (2, 5): column k is v_k = (cos 2πk/5, sin 2πk/5), k = 1..5, a vertex of a pentagon.
#   * b₁ (2,): large enough that v_k + b₁ > 0 for every k, so the hidden ReLU never cuts a
#     single feature: b₁ = -min_k v_k + 0.01 ≈ (0.82, 0.96). (Two neighbours can still fall
#     below zero: e₂ + e₃ gives v₂ + v₃ + b₁ ≈ (-0.80, 0.96).)
#   * W₂ = 1.5 W₁ᵀ and b₂ = -W₂ b₁ - β·1 with β = 0.5: while the hidden ReLU does not cut, the
#     hidden bias cancels exactly and the output pre-activation is z = 1.5 W₁ᵀW₁x - 0.5.
# One feature e_k: z_k = 1.5·1 - 0.5 = 1, and z_j ≤ 1.5 cos 72° - 0.5 ≈ -0.04 for j ≠ k, which
# the ReLU removes: x̂ = e_k exactly. Two features e₁ + e₃ (144° apart): z₁ = 1.5(1 + cos 144°)
# - 0.5 ≈ -0.21, so feature 1 is erased (and feature 3 with it), while feature 2, the vertex
# between them, appears from nowhere: z₂ = 1.5 · 2 cos 72° - 0.5 ≈ 0.43. Superposition works
# for sparse inputs only.

class PentagonNetwork:
    """Rows are examples: x (B, 5) -> hidden (B, 2) -> output (B, 5)."""

    def __init__(self, scale=1.5, threshold=0.5):
        self.W1 = regular_polygon(5)[:, [1, 2, 3, 4, 0]]      # columns v_1..v_5, angles 2πk/5
        self.b1 = -self.W1.min(axis=1) + 0.01
        self.W2 = scale * self.W1.T
        self.b2 = -self.W2 @ self.b1 - threshold

    def hidden(self, x):
        """x (..., 5) -> (..., 2)."""
        return np.maximum(_check_array("x", x, ("...", 5)) @ self.W1.T + self.b1, 0)

    def preactivation(self, x):
        """z = W₂ h + b₂ (B, 5), before the output ReLU."""
        return self.hidden(x) @ self.W2.T + self.b2

    def __call__(self, x):
        return np.maximum(self.preactivation(x), 0)


def pentagon_network(scale=1.5, threshold=0.5):
    """The hand-built network of Menon, Attention as a Kronecker product, Example 26 (see above)."""
    return PentagonNetwork(transformer.check_positive("scale", scale), transformer.check_positive("threshold", threshold))


# ----------------------------------------------------------------------------------------------
# 8. Johnson-Lindenstrauss
# ----------------------------------------------------------------------------------------------
# N points in any dimension can be mapped to m ≈ O(log N / ε²) dimensions by a random matrix
# with every squared distance kept within a factor 1 ± ε. Achlioptas (2003, Theorem 1): entries
# ±1/√m, each with probability 1/2, give
#     (1 - ε)‖x - y‖² ≤ ‖f(x) - f(y)‖² ≤ (1 + ε)‖x - y‖²  for all pairs
# with probability ≥ 1 - N^-β as soon as m ≥ (4 + 2β) ln N / (ε²/2 - ε³/3). We take β = 1.
# Read backwards, for a given m this is the ε the theorem guarantees. The same geometry says
# exponentially many directions in m dimensions can be nearly orthogonal, |cos| < ε: room for
# far more features than dimensions, which is what superposition uses (Menon, Attention as a
# Kronecker product, Theorem 27 and Corollary 28).

def random_projection(n_in, m, rng):
    """(n_in, m) with entries ±1/√m, each sign with probability 1/2; rows are points, so
    f(x) = x @ P."""
    n_in, m = transformer.check_count("n_in", n_in), transformer.check_count("m", m)
    return np.where(transformer.check_rng(rng).random((n_in, m)) < 0.5, -1.0, 1.0) / math.sqrt(m)


def squared_distances(points):
    """(N, d) -> (N, N) of ‖x_i - x_j‖²."""
    points = _check_array("points", points, ("N", "d"))
    sq = np.sum(points * points, axis=1)
    return np.maximum(sq[:, None] + sq[None, :] - 2 * points @ points.T, 0)


def jl_distortion(points, m, rng):
    """The worst |‖f(x)-f(y)‖² / ‖x-y‖² - 1| over all pairs, for one random ±1/√m projection."""
    points = np.asarray(_check_array("points", points, ("N", "d")), dtype=np.float64)
    before = squared_distances(points)
    pairs = np.triu_indices(points.shape[0], k=1)
    _check_distinct(points, before[pairs])
    after = squared_distances(points @ random_projection(points.shape[1], m, rng))
    return float(np.max(np.abs(after[pairs] / before[pairs] - 1)))


def jl_epsilon(n_points, m, beta=1.0):
    """The ε guaranteed (with probability ≥ 1 - N^-β) in m dimensions: the root in (0, 1) of
    ε²/2 - ε³/3 = (4 + 2β) ln N / m, by bisection; inf where the bound says nothing (the left
    side is at most 1/6). m may be an array."""
    dims, beta = _check_dimensions(m), transformer.check_positive("beta", beta)
    target = (4 + 2 * beta) * math.log(transformer.check_count("n_points", n_points, minimum=2)) / dims
    lo, hi = np.zeros_like(target), np.ones_like(target)
    for _ in range(60):                                  # ε²/2 - ε³/3 increases on [0, 1]
        mid = (lo + hi) / 2
        below = mid ** 2 / 2 - mid ** 3 / 3 < target
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return np.where(target <= 1 / 6, hi, np.inf)


def nearly_orthogonal_directions(m, eps, n_candidates, rng):
    """Greedily keep random unit vectors in m dimensions whose |cos| with every kept one is
    < eps. Returns the kept ones (k, m); k is a lower bound on how many fit."""
    m, eps, n_candidates = _check_directions(m, eps, n_candidates, rng)
    candidates = rng.standard_normal((n_candidates, m))
    candidates /= np.linalg.norm(candidates, axis=1, keepdims=True)
    kept = np.empty_like(candidates)
    count = 0
    for v in candidates:                 # greedy: each decision depends on the ones before it
        if count == 0 or np.max(np.abs(kept[:count] @ v)) < eps:
            kept[count] = v
            count += 1
    return kept[:count]


# ----------------------------------------------------------------------------------------------
# 9. Polysemantic neurons
# ----------------------------------------------------------------------------------------------
# Borovoy (2024) runs text through BERT and records the first MLP layer: a matrix A (tokens,
# neurons). Neuron j is the column A[:, j], a vector over tokens. If every neuron stood for one
# feature, these vectors would be nearly orthogonal (cosine distance ≈ 1). Cosine distance
# 1 - Â_iᵀÂ_j near 0 means two neurons fire on the same tokens: the features are spread over
# many neurons, and each neuron takes part in many features. demo.py draws the matrix, its
# histogram, the activations of sampled neurons across tokens, and the per-neuron sums.

def cosine_distance_matrix(activations):
    """(tokens, neurons) -> (neurons, neurons) of 1 - cos between neuron columns, in [0, 2].
    A neuron that never fires has no direction; it gets distance 1 (as if orthogonal) to all
    others and 0 to itself."""
    a = np.asarray(_check_array("activations", activations, ("tokens", "neurons")),
                   dtype=np.float64)
    norms = np.linalg.norm(a, axis=0)
    unit = a / np.where(norms > 0, norms, 1)
    distance = 1 - np.clip(unit.T @ unit, -1, 1)
    np.fill_diagonal(distance, 0)
    return distance


# ----------------------------------------------------------------------------------------------
# 10. A sparse autoencoder
# ----------------------------------------------------------------------------------------------
# If a layer stores n sparse features in m < n dimensions, a wider autoencoder with a sparsity
# penalty can find them again ("Towards Monosemanticity", Bricken et al. 2023). For rows h (B, d):
#     z  = ReLU((h - b_dec) W_enc + b_enc)      (B, F)   latents, F = n_latents
#     ĥ  = z W_dec + b_dec                      (B, d)   rows of W_dec are the dictionary
#     L  = (1/B) Σ_b ‖h - ĥ‖² + λ (1/B) Σ_b ‖z‖₁
# The rows of W_dec are kept at unit norm (renormalised after every step), or the L1 penalty
# could be dodged by shrinking z and growing W_dec. A latent that stops firing gets no gradient
# and would stay dead; every `resample_every` steps dead latents are re-aimed at the inputs the
# autoencoder reconstructs worst.
#
# Backward, by hand (dĥ = ∂L/∂ĥ = 2(ĥ - h)/B, dz_L1 = λ/B):
#     ∂W_dec = zᵀ dĥ,   ∂b_dec = Σ_b dĥ - Σ_b dh_c,
#     dpre   = (dĥ W_decᵀ + dz_L1) · 1[z > 0],
#     ∂W_enc = (h - b_dec)ᵀ dpre,   ∂b_enc = Σ_b dpre,   dh_c = dpre W_encᵀ.
#
# The unit norm is a constraint, so the decoder should move along the unit sphere. For a row d
# (‖d‖ = 1) with gradient g, the part (g·d) d only changes the row's length, which the
# renormalisation then undoes; left in, it would still enter Adam's moment estimates and bend or
# shrink the useful step. So before each step we keep only the tangent part,
#     g ← g - (g·d) d,
# which is exactly the gradient of L(d / ‖d‖) at ‖d‖ = 1: the Jacobian of d ↦ d/‖d‖ there is
# I - d dᵀ (Bricken et al. 2023 do the same).

LATENT_AXIS = {"W_enc": 1, "b_enc": 0, "W_dec": 0}       # where each parameter indexes latents


class SparseAutoencoder(transformer.Module):
    """d_in inputs, n_latents ReLU latents, L1 coefficient l1.
    Each method checks its arguments and then holds the math, except that fit computes the loss
    with _loss, unchecked: an SAE that diverged gives a NaN ĥ, which fit reports as
    FloatingPointError (and loss would refuse as bad input)."""

    def __init__(self, d_in, n_latents, l1=1e-2, seed=0, dtype=np.float64):
        super().__init__()
        d, f = transformer.check_count("d_in", d_in), transformer.check_count("n_latents", n_latents)
        transformer.check_numbers(f"W_enc and W_dec of d_in·n_latents = {d}·{f}", 2 * d * f)
        l1, dtype = transformer.check_positive("l1", l1, or_zero=True), transformer.check_float_dtype(dtype)
        seed = transformer.check_count("seed", seed, minimum=0)
        self.l1, self.dtype = l1, dtype
        self.rng = np.random.default_rng(seed)
        W_dec = self.rng.standard_normal((f, d))
        W_dec /= np.linalg.norm(W_dec, axis=1, keepdims=True)
        self.add_param("W_enc", W_dec.T.astype(self.dtype))       # start as the decoder's transpose
        self.add_param("b_enc", np.zeros(f, self.dtype))
        self.add_param("W_dec", W_dec.astype(self.dtype))
        self.add_param("b_dec", np.zeros(d, self.dtype))
        self.saved = None

    def encode(self, h):
        """(B, d) -> z (B, F)."""
        h = _check_rows(self, "h", h)
        return np.maximum((h - self.params["b_dec"]) @ self.params["W_enc"] + self.params["b_enc"], 0)

    def forward(self, h):
        """(B, d) -> ĥ (B, d); the latents z (B, F) are kept in self.saved."""
        h = _check_rows(self, "h", h)
        z = self.encode(h)
        self.saved = (h - self.params["b_dec"], z)
        return z @ self.params["W_dec"] + self.params["b_dec"]

    def loss(self, h, h_hat):
        """L, ∂L/∂ĥ (B, d) and the L1 term's ∂L/∂z (B, F), for the last forward."""
        shape = self._saved()[0].shape                            # the h of the last forward
        return self._loss(_check_same_shape("h", h, shape), _check_same_shape("h_hat", h_hat, shape))

    def _loss(self, h, h_hat):
        _, z = self._saved()
        batch = h.shape[0]
        error = h_hat - h
        value = (np.sum(error * error) + self.l1 * np.sum(z)) / batch     # z ≥ 0: ‖z‖₁ = Σ z
        return float(value), error * (2 / batch), np.full_like(z, self.l1 / batch)

    def backward(self, dh_hat, dz):
        """dh_hat (B, d), dz (B, F) -> ∂L/∂h (B, d) through the encoder."""
        h_centred, z = self._saved()
        dh_hat, dz = (_check_same_shape("dh_hat", dh_hat, h_centred.shape),
                      _check_same_shape("dz", dz, z.shape))
        p, g = self.params, self.grads
        g["W_dec"] += z.T @ dh_hat
        g["b_dec"] += dh_hat.sum(axis=0)
        dpre = (dh_hat @ p["W_dec"].T + dz) * (z > 0)
        g["W_enc"] += h_centred.T @ dpre
        g["b_enc"] += dpre.sum(axis=0)
        dh_centred = dpre @ p["W_enc"].T
        g["b_dec"] -= dh_centred.sum(axis=0)                # h - b_dec: the bias enters with -
        return dh_centred

    def remove_parallel_decoder_gradient(self):
        """g_j ← g_j - (g_j·d_j) d_j for every decoder row d_j (unit norm): the gradient on the
        unit sphere (see above)."""
        W_dec, g = self.params["W_dec"], self.grads["W_dec"]
        g -= np.sum(g * W_dec, axis=1, keepdims=True) * W_dec

    def normalize_decoder(self):
        """Every decoder row back to unit norm, after the optimizer's step."""
        W_dec = self.params["W_dec"]
        W_dec /= np.linalg.norm(W_dec, axis=1, keepdims=True)

    def resample_dead(self, h, dead, optimizer):
        """Point each dead latent at an input the model reconstructs badly (picked with
        probability ∝ squared error): decoder row = the normalised residual h - ĥ, encoder
        column = the same direction scaled to 0.2 × the mean encoder norm of live latents,
        bias 0, and the Adam moments of those entries zeroed. (Bricken et al. 2023 aim at the
        input h itself; the residual aims at the part of h the dictionary is missing.)"""
        h, dead = _check_resample(self, h, dead, optimizer)
        p = self.params
        residual = h - self.forward(h)
        error = np.sum(residual * residual, axis=1).astype(np.float64)
        if error.sum() == 0:
            return                      # reconstruction is perfect: nothing to aim them at
        picked = self.rng.choice(h.shape[0], size=dead.size, p=error / error.sum())
        direction = residual[picked] / np.linalg.norm(residual[picked], axis=1, keepdims=True)
        alive = np.setdiff1d(np.arange(p["b_enc"].size), dead)
        scale = 0.2 * np.linalg.norm(p["W_enc"][:, alive], axis=0).mean() if alive.size else 0.2
        p["W_dec"][dead] = direction
        p["W_enc"][:, dead] = direction.T * scale
        p["b_enc"][dead] = 0
        for (name, _, _), m, v in zip(optimizer.params, optimizer.m, optimizer.v):
            if name in LATENT_AXIS:
                index = (slice(None),) * LATENT_AXIS[name] + (dead,)
                m[index] = 0
                v[index] = 0

    def fit(self, sample, steps, batch_size, lr=1e-3, resample_every=1000):
        """sample(batch_size) -> h (B, d). Adam on the decoder's tangent gradient, decoder
        renormalised after every step, dead latents resampled every resample_every steps up to
        the last quarter of training. Returns the loss history (steps,). Stops with
        FloatingPointError if the loss is not finite, before that step's update (the weights
        stay those that gave it)."""
        steps, batch_size, lr = _check_fit(steps, batch_size, lr)
        resample_every = transformer.check_count("resample_every", resample_every)
        _check_callable("sample", sample, "sample(batch_size) -> h (B, d)")
        optimizer = transformer.Adam(self.parameters(), lr=lr)
        history = np.empty(steps)
        fired = np.zeros(self.params["b_enc"].size, dtype=bool)
        for step in range(steps):      # forward's and backward's checks: ~5% of a step, measured
            h = _check_rows(self, "sample(batch_size)", sample(batch_size))
            self.zero_grad()
            history[step], dh_hat, dz = self._loss(h, self.forward(h))
            _check_loss("the SAE loss", history[step], step, lr)
            self.backward(dh_hat, dz)
            self.remove_parallel_decoder_gradient()
            optimizer.step()
            self.normalize_decoder()
            fired |= np.any(self.saved[1] > 0, axis=0)
            if (step + 1) % resample_every == 0:
                dead = np.flatnonzero(~fired)
                if dead.size and step < 0.75 * steps:
                    self.resample_dead(h, dead, optimizer)
                fired[:] = False
        return history

    def dead_latents(self, h):
        """How many latents never fire on the rows of h."""
        return int(np.sum(~np.any(self.encode(h) > 0, axis=0)))


def max_cosine_similarity(dictionary, features):
    """For every true feature (row of features (n, d)), the largest cosine with any dictionary
    row (F, d): (n,)."""
    dictionary, features = _check_dictionary(dictionary, features)
    features = features / np.linalg.norm(features, axis=-1, keepdims=True)
    dictionary = dictionary / np.linalg.norm(dictionary, axis=-1, keepdims=True)
    return np.max(features @ dictionary.T, axis=1)


def mean_max_cosine_similarity(dictionary, features):
    """MMCS: max_cosine_similarity averaged over the true features. 1 means every feature was
    found exactly."""
    return float(np.mean(max_cosine_similarity(dictionary, features)))


def sae_experiment(n_features=64, n_hidden=32, feature_probability=0.02, n_latents=64, l1=0.2,
                   toy_steps=2000, sae_steps=3000, batch_size=128, lr=3e-3, seed=0, dtype=np.float32):
    """Train a ReLU toy model in superposition (equal importances), then an SAE on its hidden
    activations h = W x. Returns a dict: mmcs of the SAE dictionary against the represented
    true directions W_i, the same for a random dictionary of the same size (what chance
    gives), the number of represented features, and dead latents on a fresh batch. Every
    argument is checked before the toy model trains."""
    transformer.check_count("toy_steps", toy_steps)
    transformer.check_count("sae_steps", sae_steps)
    transformer.check_positive("lr", lr)
    toy = ToyModel(n_features, n_hidden, feature_probability=feature_probability, importance=1.0,
                   seed=seed, dtype=dtype)
    sae = SparseAutoencoder(n_hidden, n_latents, l1=l1, seed=seed + 1, dtype=dtype)
    toy.fit(toy_steps, batch_size, lr=1e-2)
    W = toy.W[0]                                                    # (m, n)
    true = W[:, represented(W)].T                                   # (n_represented, m)

    def sample(size):
        return toy.hidden(toy.sample(size))[0]                      # (size, m)

    sae.fit(sample, sae_steps, batch_size, lr=lr)
    random_dictionary = np.random.default_rng(seed + 2).standard_normal((n_latents, n_hidden))
    return {"mmcs": mean_max_cosine_similarity(sae.params["W_dec"], true),
            "random_mmcs": mean_max_cosine_similarity(random_dictionary, true),
            "represented": true.shape[0],
            "dead_latents": sae.dead_latents(sample(20_000)),
            "sae": sae, "toy": toy, "true_directions": true, "random_dictionary": random_dictionary}


# The same autoencoder on a real model's activations. There are no true features to compare
# with, so a dictionary is judged the way "Towards Monosemanticity" judges it, on held-out rows
# it was not trained on:
#   * the fraction of variance explained, 1 - Σ‖h - ĥ‖² / Σ‖h - h̄‖² (1: perfect; 0: no better
#     than the mean row h̄);
#   * L0, the mean number of latents active on a row (the sparsity the L1 penalty buys);
#   * the feature density: each latent's firing frequency, the share of rows on which it is
#     > 0, drawn as a histogram of its log10. A latent that never fires on the held-out rows is
#     dead; one that fires on fewer than RARE of them is ultra-rare (Bricken et al. find a
#     cluster of such latents, around 10⁻⁵ of tokens, that a few thousand rows cannot resolve;
#     RARE = 10⁻³ is what they can).
# The decoder bias starts at the mean row: Bricken et al. start it at the geometric median, the
# point the reconstruction falls back to when no latent fires; the mean is its L2 counterpart.

RARE = 1e-3


def fit_dictionary(activations, n_latents, l1, steps, batch_size, lr=1e-3, seed=0,
                   resample_every=1000):
    """A SparseAutoencoder (in the activations' float dtype) fit to the rows of activations
    (N, d), batches drawn at random with replacement. -> (sae, loss history (steps,))."""
    a = _check_array("activations", activations, ("N", "d"))
    sae = SparseAutoencoder(a.shape[1], n_latents, l1=l1, seed=seed, dtype=a.dtype)
    sae.params["b_dec"][...] = a.mean(axis=0)
    rng = np.random.default_rng(seed)
    history = sae.fit(lambda size: a[rng.integers(0, a.shape[0], size)], steps, batch_size, lr=lr,
                      resample_every=resample_every)
    return sae, history


def variance_explained(h, h_hat):
    """h, h_hat (N, d) -> 1 - Σ‖h - ĥ‖² / Σ‖h - h̄‖², in float64."""
    h = np.asarray(_check_array("h", h, ("N", "d")), np.float64)
    h_hat = np.asarray(_check_same_shape("h_hat", h_hat, h.shape), np.float64)
    total = np.sum((h - h.mean(axis=0)) ** 2)
    _check_varies(total)
    return float(1 - np.sum((h - h_hat) ** 2) / total)


def firing_frequency(latents):
    """(N, units) -> (units,): the share of rows on which each unit is > 0."""
    return np.mean(_check_array("latents", latents, ("N", "units")) > 0, axis=0)


def mean_l0(latents):
    """(N, units) -> the mean number of units > 0 on a row."""
    return float(np.mean(np.sum(_check_array("latents", latents, ("N", "units")) > 0, axis=1)))


def density_shares(frequency, rare=RARE):
    """Firing frequencies (units,) -> (share of dead units, share of ultra-rare units: firing,
    but on fewer than `rare` of the rows)."""
    f = _check_probabilities("frequency", frequency)
    rare = transformer.check_positive("rare", rare)
    return float(np.mean(f == 0)), float(np.mean((f > 0) & (f < rare)))


# Neurons or features: which are more monosemantic? Bricken et al. call a feature monosemantic
# when one property of the input explains its activations (their "activation specificity"),
# and judge that with human and model raters. A measure that needs no rater can test one
# property, the simplest there is: which token it is. For each unit take its k strongest
# activations on held-out text and look at the word pieces there: if they are all one piece,
# the piece predicts the firing; if they are k different pieces, it does not. We count the
# distinct pieces and take the entropy of their distribution, H = -Σ p log2 p (Shannon 1948):
# 0 for a unit of one piece, log2 k for k different ones. Lower is more monosemantic at the
# level of tokens. The blind spots are plain: a unit with one meaning spread over many pieces
# (any number, any plural noun) scores as polysemantic, and one piece with two senses scores
# as monosemantic. Only units positive on at least k rows are measured (a rarer unit has fewer
# than k examples, and fewer examples would mean a smaller entropy by construction).

def top_token_entropy(activations, token_ids, k=20):
    """activations (N, units), token_ids (N,) -> (distinct (units,), entropy in bits (units,),
    measured (units,) bool): among the k rows where each unit is largest, the number of distinct
    token ids and the entropy of their distribution; a unit positive on fewer than k rows is not
    measured (its distinct and entropy are nan)."""
    a, ids, k = _check_token_activations(activations, token_ids, k)
    top = np.argpartition(-a, k - 1, axis=0)[:k]                     # (k, units)
    measured = np.sum(a > 0, axis=0) >= k
    distinct, entropy = np.full(a.shape[1], np.nan), np.full(a.shape[1], np.nan)
    for unit in np.flatnonzero(measured):
        counts = np.unique(ids[top[:, unit]], return_counts=True)[1]
        p = counts / k
        distinct[unit], entropy[unit] = len(counts), -np.sum(p * np.log2(p))
    return distinct, entropy, measured


# ----------------------------------------------------------------------------------------------
# Appendix: checking arguments
# ----------------------------------------------------------------------------------------------
# Every public entry point checks its input before it changes any state (parameters,
# gradients, Adam moments, the model's random generator), and names the argument. Counts,
# numbers, float types, finiteness and random generators go through transformer.py's shared
# checks; the array layouts below are this file's own. Integer arrays are read as float64, so
# that a sum of squares of int8 entries cannot overflow.

def _check_array(name, value, axes):
    """A non-empty array of finite real numbers laid out as axes -> the array (a float dtype
    kept, integers as float64). axes names every axis, e.g. ("N", "d"); an int fixes that
    axis's size, and a leading "..." allows any number of extra leading axes: ("...", "m", "n")
    is one model or many."""
    a = np.asarray(transformer.check_plain_array(name, value))
    any_leading = axes[0] == "..."
    named = axes[1:] if any_leading else axes                  # the axes that must be there
    fits = a.ndim >= len(named) if any_leading else a.ndim == len(named)
    if fits:                                                   # and the fixed sizes match
        last = a.shape[a.ndim - len(named):]
        fits = all(size == got for size, got in zip(named, last) if isinstance(size, int))
    if a.dtype.kind not in "iuf" or a.size == 0 or not fits:
        layout = "(" + ", ".join(map(str, axes)) + ("," if len(axes) == 1 else "") + ")"
        raise ValueError(f"{name} must have shape {layout} and hold real numbers, not empty; "
                         f"got a {a.dtype} array of shape {a.shape}")
    transformer.check_finite(name, a)
    return a.astype(np.float64) if a.dtype.kind in "iu" else a


def _check_same_shape(name, value, shape):
    """An array of finite real numbers of exactly this shape: no silent broadcasting."""
    return _check_array(name, value, tuple(shape))


def _check_weights(W):
    """Every measurement takes W (..., m, n): one model (m, n) or many (K, m, n)."""
    return _check_array("W", W, ("...", "m", "n"))


def _check_batch(model, name, x):
    """x (K, B, n) for a ToyModel of K instances and n features."""
    n_instances, _, n_features = model.W.shape
    return _check_array(name, x, (n_instances, "B", n_features))


def _check_rows(sae, name, h):
    """h (B, d) for a SparseAutoencoder of d inputs."""
    return _check_array(name, h, ("B", sae.params["b_dec"].shape[0]))


def _check_real_list(name, values, what):
    """A non-empty 1-D list of real numbers -> float64 array (then checked to be `what`)."""
    a = np.asarray(transformer.check_plain_array(name, values))
    if a.ndim != 1 or a.size == 0 or a.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be a non-empty list of numbers {what}, got {values!r}")
    transformer.check_finite(name, a)
    return a.astype(np.float64)


def _check_probabilities(name, values):
    a = _check_real_list(name, values, "in [0, 1]")
    if not np.all((a >= 0) & (a <= 1)):
        raise ValueError(f"{name} must be a non-empty list of numbers in [0, 1], got {values!r}")
    return a


def _check_nonnegative(name, values):
    a = _check_real_list(name, values, ">= 0")
    if not np.all(a >= 0):
        raise ValueError(f"{name} must be a non-empty list of numbers >= 0, got {values!r}")
    return a


def _instance_feature_array(name, value, n_instances, n_features, vector_means):
    """Broadcast a number, a vector or a (K, n) array of real numbers to (K, n). A vector is
    read as one value per instance or one per feature, as vector_means says ("instance" or
    "feature")."""
    a = np.asarray(transformer.check_plain_array(name, value))
    if a.dtype.kind not in "iuf" or a.size == 0:
        raise ValueError(f"{name} must be a real number, a vector or an array of them, got {value!r}")
    a = a.astype(np.float64)
    if a.ndim == 1:
        expected = n_instances if vector_means == "instance" else n_features
        if a.shape[0] != expected:
            raise ValueError(f"{name} as a vector needs one value per {vector_means} "
                             f"({expected}), got length {a.shape[0]}")
        a = a[:, None] if vector_means == "instance" else a[None, :]
    elif a.ndim > 2 or (a.ndim == 2 and a.shape != (n_instances, n_features)):
        raise ValueError(f"{name} must be a number, a vector of one value per {vector_means}, "
                         f"or an array of shape {(n_instances, n_features)}; got shape {a.shape}")
    transformer.check_finite(name, a)
    return np.broadcast_to(a, (n_instances, n_features)).copy()


def _check_toy_model(n_features, n_hidden, n_instances, feature_probability, importance,
                     activation, seed, dtype):
    n = transformer.check_count("n_features", n_features)
    m = transformer.check_count("n_hidden", n_hidden)
    k = transformer.check_count("n_instances", n_instances)
    transformer.check_numbers(f"W of n_instances·n_hidden·n_features = {k}·{m}·{n}", k * m * n)
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    p = _instance_feature_array("feature_probability", feature_probability, k, n, "instance")
    if np.any((p < 0) | (p > 1)):
        raise ValueError(f"feature_probability must lie in [0, 1], got {feature_probability!r}")
    imp = _instance_feature_array("importance", importance, k, n, "feature")
    if np.any(imp < 0):
        raise ValueError(f"importance must be >= 0, got {importance!r}")
    dtype = transformer.check_float_dtype(dtype)
    seed = transformer.check_count("seed", seed, minimum=0)
    with np.errstate(over="ignore"):                      # too small a p: checked next
        inverse = np.divide(1.0, p, out=np.zeros_like(p), where=p > 0).astype(dtype)
    if not np.all(np.isfinite(inverse)):
        raise ValueError(f"feature_probability must be 0 or at least "
                         f"{1 / np.finfo(dtype).max:.2e} (1/p must fit in {np.dtype(dtype)}), "
                         f"got {feature_probability!r}")
    return n, m, k, p, imp, inverse, dtype, seed


def _check_sparse_features(rng, inverse_probability, batch_size, dtype):
    transformer.check_rng(rng)
    inverse = _check_array("inverse_probability", inverse_probability, ("K", 1, "n"))
    K, _, n = inverse.shape
    transformer.check_numbers(f"a batch of K·batch_size·n = {K}·{batch_size}·{n}",
                              K * n * transformer.check_count("batch_size", batch_size))
    if not np.all((inverse == 0) | (inverse >= 1)):      # 1/p >= 1 for every p in (0, 1]
        raise ValueError(f"inverse_probability must hold 1/p for p in (0, 1] (so >= 1) or 0, "
                         f"got {inverse_probability!r}")
    return rng, inverse, transformer.check_count("batch_size", batch_size), transformer.check_float_dtype(dtype)


def _check_fit(steps, batch_size, lr):
    return (transformer.check_count("steps", steps), transformer.check_count("batch_size", batch_size),
            transformer.check_positive("lr", lr))


def _check_callable(name, f, signature, optional=False):
    if not (callable(f) or (optional and f is None)):
        raise TypeError(f"{name} must be a function {signature}{' or None' if optional else ''}, "
                        f"got {f!r}")


def _check_loss(name, losses, step, lr):
    """Training stops at the first loss that is not finite, before that step's update."""
    bad = ~np.isfinite(np.atleast_1d(losses))
    if bad.any():
        which = f" of instance(s) {np.flatnonzero(bad).tolist()}" if bad.size > 1 else ""
        raise FloatingPointError(f"{name}{which} is not finite at step {step}: training "
                                 f"diverged; try a smaller lr than {lr}")


def _check_some_feature(squared_norm):
    if np.any(squared_norm == 0):
        raise ValueError(f"W must represent some feature: m / ‖W‖_F² is undefined for an "
                         f"all-zero W, got {np.count_nonzero(squared_norm == 0)} all-zero "
                         f"model(s) among {squared_norm.size}")


def _check_best_of_seeds(model, n_seeds, eval_batch):
    if not isinstance(model, ToyModel):
        raise TypeError(f"model must be a ToyModel, got {type(model).__name__}")
    n_seeds = transformer.check_count("n_seeds", n_seeds)
    if model.W.shape[0] % n_seeds:
        raise ValueError(f"n_seeds must divide the model's {model.W.shape[0]} instances, "
                         f"got {n_seeds}")
    return n_seeds, transformer.check_count("eval_batch", eval_batch)


def _check_distinct(points, distances):
    if points.shape[0] < 2:
        raise ValueError(f"points must hold N >= 2 points, got shape {points.shape}")
    if not np.all(distances > 0):
        raise ValueError("points must be distinct: a pair at distance 0 has no distortion ratio")


def _check_dimensions(m):
    """A number of dimensions >= 1, or an array of them -> float64."""
    dims = np.asarray(m)
    if dims.dtype.kind not in "iuf" or dims.size == 0 or not np.all(np.isfinite(dims) & (dims >= 1)):
        raise ValueError(f"m must be a number of dimensions >= 1 (or a list of them), got {m!r}")
    return dims.astype(np.float64)


def _check_directions(m, eps, n_candidates, rng):
    m, n_candidates = transformer.check_count("m", m), transformer.check_count("n_candidates", n_candidates)
    transformer.check_numbers(f"n_candidates·m = {n_candidates}·{m} coordinates", n_candidates * m)
    eps = transformer.check_positive("eps", eps)
    if eps >= 1:
        raise ValueError(f"eps must lie in (0, 1), got {eps!r}")
    transformer.check_rng(rng)
    return m, eps, n_candidates


def _check_resample(sae, h, dead, optimizer):
    h = _check_rows(sae, "h", h)
    dead, n_latents = np.asarray(dead), sae.params["b_enc"].size
    if dead.ndim != 1 or dead.dtype.kind not in "iu" or not np.all((dead >= 0) & (dead < n_latents)):
        raise ValueError(f"dead must be a 1-D array of latent indices in [0, {n_latents}), "
                         f"got {dead!r}")
    if not (isinstance(optimizer, transformer.Adam) and len(optimizer.params) == len(sae.params) and all(
            p is q for (_, p, _), (_, q, _) in zip(optimizer.params, sae.parameters()))):
        raise TypeError(f"optimizer must be the transformer.Adam that trains this SAE, "
                        f"got {type(optimizer).__name__}")
    return h, dead


def _check_dictionary(dictionary, features):
    """Rows (F, d) and (n, d) of the same length d, none of them zero -> float64."""
    checked = []
    for name, rows in (("dictionary", dictionary), ("features", features)):
        rows = np.asarray(_check_array(name, rows, ("rows", "d")), dtype=np.float64)
        zero = np.linalg.norm(rows, axis=-1) == 0
        if zero.any():
            raise ValueError(f"{name} must have no zero rows (a zero row has no direction), "
                             f"got {np.count_nonzero(zero)} of {rows.shape[0]}")
        checked.append(rows)
    if checked[0].shape[1] != checked[1].shape[1]:
        raise ValueError(f"dictionary rows ({checked[0].shape[1]}) and features rows "
                         f"({checked[1].shape[1]}) must have the same length")
    return checked


def _check_token_activations(activations, token_ids, k):
    a = _check_array("activations", activations, ("N", "units"))
    ids = np.asarray(token_ids)
    if ids.shape != (a.shape[0],) or ids.dtype.kind not in "iu" or np.any(ids < 0):
        raise ValueError(f"token_ids must be an array of ids >= 0 of shape ({a.shape[0]},), one id "
                         f"per row of activations, got {ids.dtype} of shape {ids.shape}")
    return a, ids, transformer.check_count("k", k, maximum=a.shape[0])


def _check_varies(total):
    if total == 0:
        raise ValueError("h must vary: its rows are all equal, so there is no variance to explain")
