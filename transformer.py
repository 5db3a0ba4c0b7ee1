"""The 2017 transformer in NumPy, every forward next to its hand-written backward.

Read this file top to bottom: each idea comes before the ones built on it, and the plumbing
(faster forms of two operations, argument checks) waits in two appendices at the end.

    1. Modules             the small base class: parameters, gradients (made on first use),
                           zero_grad; state_kept, which puts a model back as it was
    2. Embedding           one-hot times a matrix is a table lookup; backward scatters
    3. Positions           sinusoidal encoding (Vaswani et al. 2017, section 3.5)
    4. Elementwise layers  Linear, ReLU, GELU (exact, with a vectorised erf, and the tanh
                           form); stable softmax and log-softmax
    5. Layer norm          (Ba et al. 2016), the backward written out
    6. Attention           scaled dot-product with causal and padding masks (section 3.2.1),
                           multi-head attention (3.2.2) used for self- and cross-attention
    7. Feed-forward        position-wise two-layer network (3.3)
    8. Blocks              residual connections, Post-LN (the paper) or Pre-LN (GPT-2)
    9. Models              DecoderOnlyTransformer (a GPT) and Transformer (encoder-decoder),
                           with greedy decoding, beam search and a key/value cache
   9b. Hooks               named activations in TransformerLens's spelling; run_with_cache,
                           run_with_hooks: read or replace any of them for one call
   10. The next token      temperature, top-k, top-p (nucleus) sampling
   11. Loss                softmax cross-entropy with padding and label smoothing
   12. Optimizers          SGD, Adam with decoupled weight decay, clipping, one training step,
                           the warm-up schedule
   13. Tokenizing          characters, words, byte-pair encoding (Rohrer; Sennrich et al. 2016);
                           real text: the prose of Python's documentation topics
   14. Saving and loading  np.savez / np.load(allow_pickle=False), safe on a stranger's file
   15. Gradient checking   central differences, as used by the tests
    A. Making it fast      erf in float32, elementwise chains in cache-sized blocks
    B. Checking arguments  the checks at every public entry point, shared by the other files

Conventions, used everywhere in this file:
    * Tokens are rows. An activation has shape (B, T, d_model): batch, position, feature.
      A weight maps rows to rows, y = x @ W, so W has shape (d_in, d_out). (Papers on circuits
      write tokens as columns; circuits.py translates, in one place.)
    * Attention tensors carry heads as a separate axis: (B, H, T, d_head).
    * A mask is boolean and True where attention is allowed; it broadcasts to (B, H, T_q, T_k).
    * Every layer is a class: forward(x) keeps in self.saved what backward needs; backward(dout)
      returns the gradient of the input and adds (+=) parameter gradients into self.grads.
    * Randomness only through a np.random.Generator passed in (models take a seed).
    * float64 for checking gradients, float32 for speed: parameters have the model's dtype and
      nothing in a forward or backward pass changes it.
"""
import contextlib
import functools
import heapq
import json
import math
import numbers
import os
import pathlib
import re
import stat
import tempfile
import zipfile
import zlib
from collections import Counter

import numpy as np


# ----------------------------------------------------------------------------------------------
# 1. Modules
# ----------------------------------------------------------------------------------------------
# A layer is a small object: forward(x) computes its output and keeps what backward will need;
# backward(dout) takes the gradient of the loss with respect to that output, returns the
# gradient with respect to the input, and adds the gradients of its parameters into grads.
# A gradient is made when it is first needed, so a model that is only run forward (a loaded
# BERT, say) holds its weights and nothing more.

class Gradients(dict):
    """{name: gradient} of one module's parameters. A name not yet here gets zeros of its
    parameter's shape and dtype when first asked for, and keeps them: a backward's
    grads[name] += ... adds into them, and an optimizer holds them."""

    def __init__(self, params):
        super().__init__()
        self._params = params

    def __missing__(self, name):
        value = self._params[name]
        grad = self[name] = np.zeros(value.shape, value.dtype)
        return grad


class Module:
    """Base class: a layer owns `params` and `grads` (same names, same shapes) and child modules.

    parameters() walks the module tree in the order attributes were set and yields
    (dotted_name, value, grad), making every gradient not made yet; weights() yields
    (dotted_name, value) and makes none. Values and grads are the arrays themselves, so an
    optimizer updates them in place. Attributes whose name starts with "_" are references, not
    children (a tied output layer keeps its embedding that way), so every array is yielded once.
    """

    def __init__(self):
        self.params = {}
        self.grads = Gradients(self.params)

    def add_param(self, name, value):
        self.params[name] = value

    def children(self):
        for name, value in vars(self).items():
            if name.startswith("_"):
                continue
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    if isinstance(item, Module):
                        yield f"{name}.{i}", item

    def parameters(self, prefix=""):
        for name, value in self.params.items():
            yield prefix + name, value, self.grads[name]
        for name, child in self.children():
            yield from child.parameters(prefix + name + ".")

    def weights(self, prefix=""):
        for name, value in self.params.items():
            yield prefix + name, value
        for name, child in self.children():
            yield from child.weights(prefix + name + ".")

    def modules(self):
        """This module and every module below it, parents first."""
        yield self
        for _, child in self.children():
            yield from child.modules()

    def zero_grad(self):
        """Zero the gradients made so far, in place (an optimizer may hold them); a gradient
        not made yet is zeros when it is."""
        for module in self.modules():
            for grad in module.grads.values():
                grad[...] = 0

    _hooks = None     # {hook name: function}, set only during a hooked run (section 9b)

    def hook(self, name, x):
        """A hook point: returns x itself, unless a hooked run (section 9b) has set a function
        for this name, which then returns the activation to use instead."""
        return x if self._hooks is None or name not in self._hooks else self._hooks[name](x)

    def _saved(self):
        """What forward kept for backward; a backward before any forward is an error."""
        if getattr(self, "saved", None) is None:
            raise ValueError(f"{type(self).__name__}.backward called before forward")
        return self.saved


@contextlib.contextmanager
def state_kept(model):
    """Inside `with state_kept(model):` the layers may run freely; when the block ends, normally
    or by an error, every attribute of every module of model is as it was before: what each
    layer kept for backward, the logits' shape, hooks. Decoding (section 9) and hooked runs
    (section 9b) run inside it, so neither changes what a following backward differentiates."""
    kept = [(module, dict(vars(module))) for module in model.modules()]
    try:
        yield model
    finally:
        for module, attributes in kept:
            vars(module).clear()
            vars(module).update(attributes)


def _normal(rng, shape, std, dtype):
    """Initial weights drawn from N(0, std²); rng None draws nothing and gives zeros, for a
    model whose weights are read from a file next (pretrained.load_bert)."""
    if rng is None:
        return np.zeros(shape, check_float_dtype(dtype))
    return (check_rng(rng).standard_normal(shape) * std).astype(check_float_dtype(dtype))


# ----------------------------------------------------------------------------------------------
# 2. Embedding
# ----------------------------------------------------------------------------------------------
# A one-hot vector has a single 1 at the token's id. Multiplying it by a matrix E (vocab, d)
# picks out one row: onehot(i) @ E == E[i]. So an embedding is a table lookup, and its backward
# is the transpose of the lookup: each output gradient is added to the row it came from. A
# token seen twice gets both gradients, hence np.add.at (a plain `grad[ids] += dout` would keep
# only one of them).

def one_hot(ids, n):
    """(...,) int -> (..., n) float64 with a single 1 per row."""
    ids = check_id_array("ids", ids, _check_size("n", n, per_entry=np.size(ids)))
    return (ids[..., None] == np.arange(n)).astype(np.float64)


class Embedding(Module):
    def __init__(self, vocab_size, d_model, rng, dtype=np.float64):
        super().__init__()
        vocab_size, d_model = check_count("vocab_size", vocab_size), check_count("d_model", d_model)
        self.add_param("W", _normal(rng, (vocab_size, d_model), d_model ** -0.5, dtype))
        self.saved = None

    def forward(self, ids):
        """(B, T) int -> (B, T, d_model)"""
        self.saved = check_id_array("ids", ids, self.params["W"].shape[0])
        return self.params["W"][self.saved]

    def backward(self, dout):
        """(B, T, d_model) -> None: ids have no gradient."""
        ids = self._saved()
        _check_dout(dout, ids.shape + self.params["W"].shape[1:], type(self).__name__)
        np.add.at(self.grads["W"], ids, dout)          # dW[ids[b, t]] += dout[b, t], every (b, t)


# ----------------------------------------------------------------------------------------------
# 3. Positional encoding
# ----------------------------------------------------------------------------------------------
# Attention is blind to order, so position is added to each embedding (Vaswani et al. 3.5):
#     PE(pos, 2i) = sin(pos / 10000^(2i/d)),   PE(pos, 2i+1) = cos(pos / 10000^(2i/d)).
# The wavelengths grow geometrically from 2*pi to 10000*2*pi, and PE(pos + k) is a rotation of
# PE(pos) for every fixed k, so relative offsets are linear functions of the code. An odd d
# works too: the last column is a sine with no cosine partner.

def sinusoidal_encoding(max_len, d_model):
    """-> (max_len, d_model) float64"""
    max_len, d_model = check_count("max_len", max_len), _check_size("d_model", d_model, max_len)
    pos = np.arange(max_len)[:, None]
    two_i = (np.arange(d_model) // 2 * 2)[None, :]        # 0, 0, 2, 2, 4, 4, ...
    angle = pos / 10000.0 ** (two_i / d_model)
    return np.where(np.arange(d_model) % 2 == 0, np.sin(angle), np.cos(angle))


# ----------------------------------------------------------------------------------------------
# 4. Linear, activations, softmax
# ----------------------------------------------------------------------------------------------

def matmul_rows(x, W):
    """x (..., k) @ W (k, n) -> (..., n). Rows are independent, so this is one 2-D product of
    all rows at once: a 3-D @ 2-D product would make NumPy call BLAS once per batch entry,
    which is much slower."""
    return (x.reshape(-1, x.shape[-1]) @ W).reshape(*x.shape[:-1], W.shape[-1])


class Linear(Module):
    """y = x @ W + b, applied to the last axis of x of any rank."""

    def __init__(self, d_in, d_out, rng, dtype=np.float64, bias=True):
        super().__init__()
        d_in, d_out = check_count("d_in", d_in), check_count("d_out", d_out)
        self.add_param("W", _normal(rng, (d_in, d_out), d_in ** -0.5, dtype))
        if bias:
            self.add_param("b", np.zeros(d_out, dtype))
        self.saved = None

    def forward(self, x):
        """(..., d_in) -> (..., d_out)"""
        _check_width(x, self.params["W"].shape[0], type(self).__name__)
        self.saved = x
        y = matmul_rows(x, self.params["W"])
        if "b" in self.params:
            y += self.params["b"]
        return y

    def backward(self, dout):
        """(..., d_out) -> (..., d_in).  dW = xᵀ dout summed over all rows, db = Σ dout over
        the rows."""
        x = self._saved()
        _check_dout(dout, x.shape[:-1] + self.params["W"].shape[1:], type(self).__name__)
        x2, d2 = x.reshape(-1, x.shape[-1]), dout.reshape(-1, dout.shape[-1])
        self.grads["W"] += x2.T @ d2
        if "b" in self.params:
            self.grads["b"] += d2.sum(axis=0)
        return matmul_rows(dout, self.params["W"].T)


class ReLU(Module):
    def forward(self, x):
        self.saved = x > 0
        return np.maximum(x, 0)

    def backward(self, dout):
        # multiplying by the boolean mask is the same as np.where(mask, dout, 0), but np.where
        # is ten times slower on an unpredictable mask like this one
        return dout * self._saved()


# GELU(x) = x Φ(x), where Φ is the standard normal CDF (Hendrycks & Gimpel 2016, "Gaussian
# Error Linear Units"): the input scaled by the probability that a standard normal is below it.
# Φ(x) = ½ (1 + erf(x / √2)), and NumPy has no erf, so here is one, vectorised. W. J. Cody,
# "Rational Chebyshev approximations for the error function" (Math. Comp. 23, 1969) splits the
# line at |x| = 0.46875 and 4 and fits each piece with a ratio of polynomials, p(y) / q(y):
#     |x| <= 0.46875:  erf(x)  = x p1(x²) / q1(x²)
#     |x| <= 4:        erfc(x) = exp(-x²) p2(|x|) / q2(|x|)
#     |x| > 4:         erfc(x) = exp(-x²) / |x| · (1/√π - z p3(z) / q3(z)),  z = 1/x²
# with erf(x) = 1 - erfc(x) for x > 0 and erf(-x) = -erf(x). In float64 it agrees with
# math.erf to about 1e-16. Coefficients from highest power to lowest; each q has leading 1.

_ERF_P1 = (1.85777706184603153e-1, 3.16112374387056560e0, 1.13864154151050156e2,
           3.77485237685302021e2, 3.20937758913846947e3)
_ERF_Q1 = (1.0, 2.36012909523441209e1, 2.44024637934444173e2, 1.28261652607737228e3,
           2.84423683343917062e3)
_ERF_P2 = (2.15311535474403846e-8, 5.64188496988670089e-1, 8.88314979438837594e0,
           6.61191906371416295e1, 2.98635138197400131e2, 8.81952221241769090e2,
           1.71204761263407058e3, 2.05107837782607147e3, 1.23033935479799725e3)
_ERF_Q2 = (1.0, 1.57449261107098347e1, 1.17693950891312499e2, 5.37181101862009858e2,
           1.62138957456669019e3, 3.29079923573345963e3, 4.36261909014324716e3,
           3.43936767414372164e3, 1.23033935480374942e3)
_ERF_P3 = (1.63153871373020978e-2, 3.05326634961232344e-1, 3.60344899949804439e-1,
           1.25781726111229246e-1, 1.60837851487422766e-2, 6.58749161529837803e-4)
_ERF_Q3 = (1.0, 2.56852019228982242e0, 1.87295284992346047e0, 5.27905102951428412e-1,
           6.05183413124413191e-2, 2.33520497626869185e-3)


def polynomial(coefficients, y):
    """c0 y^n + c1 y^(n-1) + ... + cn by Horner's rule, in y's float type (np.polyval would
    turn a float32 y into float64)."""
    result = np.full_like(y, coefficients[0])
    for c in coefficients[1:]:
        result *= y
        result += c
    return result


def erf(x):
    """The error function erf(x) = 2/√π ∫₀ˣ exp(-t²) dt, elementwise, in x's float type and to
    its precision: about 1e-16 in float64, 5.3e-7 in float32."""
    x = np.asarray(x)
    if x.dtype == np.float32:       # a cheaper formula, as accurate as float32 (Appendix A)
        return erf_float32(x)
    y = np.abs(x).reshape(-1)                     # flat: indexing by positions is fastest
    out = np.empty_like(y)
    inner = np.flatnonzero(y <= 0.46875)
    middle = np.flatnonzero((y > 0.46875) & (y <= 4))
    outer = np.flatnonzero(~(y <= 4))             # also NaN, which stays NaN
    y1 = y[inner]
    out[inner] = y1 * polynomial(_ERF_P1, y1 * y1) / polynomial(_ERF_Q1, y1 * y1)
    y2 = y[middle]
    out[middle] = 1 - np.exp(-y2 * y2) * polynomial(_ERF_P2, y2) / polynomial(_ERF_Q2, y2)
    y3 = y[outer]
    z = 1 / (y3 * y3)
    tail = (1 / math.sqrt(math.pi) - z * polynomial(_ERF_P3, z) / polynomial(_ERF_Q3, z)) / y3
    out[outer] = 1 - np.exp(-y3 * y3) * tail
    return np.copysign(out.reshape(x.shape), x)


def normal_cdf(x):
    """Φ(x) = ½ (1 + erf(x / √2)), the probability that a standard normal is below x."""
    return 0.5 * (1 + erf(x * (1 / math.sqrt(2))))


class GELU(Module):
    """GELU(x) = x Φ(x) = ½ x (1 + erf(x/√2)), the exact form BERT uses.
    d/dx = Φ(x) + x φ(x), with the normal density φ(x) = exp(-x²/2) / √(2π)."""

    def forward(self, x):
        if x.size > BLOCK:          # the same numbers, a cache-sized block at a time (Appendix A)
            cdf = blockwise(normal_cdf, x)
        else:
            cdf = normal_cdf(x)                   # Φ(x), kept for backward
        self.saved = (x, cdf)
        return x * cdf

    def backward(self, dout):
        x, cdf = self._saved()
        density = np.exp(-0.5 * (x * x)) * (1 / math.sqrt(2 * math.pi))
        return dout * (cdf + x * density)


class TanhGELU(Module):
    """GELU in the tanh approximation GPT-2 uses (Hendrycks & Gimpel 2016, section 2):
    0.5 x (1 + tanh(u)),  u = √(2/π) (x + 0.044715 x³); within 1e-3 of x Φ(x), and cheaper."""

    C = math.sqrt(2 / math.pi)

    def forward(self, x):
        # x * x * x rather than x ** 3: NumPy sends ** 3 to the general pow(), far slower
        t = np.tanh(self.C * (x + 0.044715 * (x * x * x)))
        self.saved = (x, t)
        return 0.5 * x * (1 + t)

    def backward(self, dout):
        # d/dx = 0.5 (1 + t) + 0.5 x (1 - t²) du/dx,  du/dx = √(2/π) (1 + 3·0.044715 x²)
        x, t = self._saved()
        du = self.C * (1 + 3 * 0.044715 * x * x)
        return dout * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du)


ACTIVATIONS = {"relu": ReLU, "gelu": GELU, "gelu_tanh": TanhGELU}


def softmax(x, axis=-1, mask=None):
    """Numerically stable softmax. Masked-out entries (mask False) get probability 0, and a row
    whose entries are all masked is all zeros, not NaN: its max is -inf, which we replace by 0
    so that exp(-inf - 0) = 0 and the empty sum is divided by 1."""
    # The mask is added as 0 (allowed) or -inf (masked): five times faster on attention scores
    # than np.where(mask, x, -inf). The later steps then work in place on that one new array.
    x = np.asarray(x)
    bias = np.where(True if mask is None else mask, 0, -np.inf)
    e = x + bias.astype(np.result_type(x, np.float32))
    m = np.max(e, axis=axis, keepdims=True)
    e -= np.where(np.isfinite(m), m, 0)
    np.exp(e, out=e)
    s = np.sum(e, axis=axis, keepdims=True)
    e /= np.where(s == 0, 1, s)
    return e


def log_softmax(x, axis=-1):
    """log softmax(x) = x - max - log Σ exp(x - max): finite for any finite x. A row that is all
    -inf (every entry masked) stays -inf, the log of the zeros softmax gives it, not NaN."""
    m = np.max(x, axis=axis, keepdims=True)
    z = x - np.where(np.isfinite(m), m, 0)
    s = np.sum(np.exp(z), axis=axis, keepdims=True)
    return z - np.log(np.where(s == 0, 1, s))


def row_dot(a, b):
    """Σ_j a_j b_j over the last axis, kept as (..., 1) so that it broadcasts back onto the rows.
    einsum adds up the products as it goes, without building the array a ⊙ b first."""
    return np.einsum("...j,...j->...", a, b)[..., None]


def softmax_backward(p, dp):
    """Given p = softmax(s) over the last axis and dL/dp, return dL/ds = p ⊙ (dp - Σ_j p_j dp_j).
    (The Jacobian is diag(p) - p pᵀ.) Masked entries have p = 0 and get no gradient."""
    ds = dp - row_dot(p, dp)
    ds *= p                                             # in place, as in softmax
    return ds


# ----------------------------------------------------------------------------------------------
# 5. Layer normalization
# ----------------------------------------------------------------------------------------------
# y = g ⊙ (x - μ) / √(σ² + eps) + b over the last axis, with the biased variance σ² and eps
# inside the square root. Forward keeps only x̂ and 1/√(σ² + eps); the backward rebuilds the
# rest. With x̂ = (x - μ) r and upstream gradient dy:
#     dx̂ = dy ⊙ g
#     dx = r (dx̂ - mean(dx̂) - x̂ ⊙ mean(dx̂ ⊙ x̂))
# (the two means are the gradient flowing back through μ and through σ).

class LayerNorm(Module):
    """eps is 1e-5 in most models; BERT uses 1e-12 (Devlin et al. 2019's released code)."""

    def __init__(self, d_model, dtype=np.float64, eps=1e-5):
        super().__init__()
        d_model = check_count("d_model", d_model)
        self.add_param("g", np.ones(d_model, dtype))
        self.add_param("b", np.zeros(d_model, dtype))
        self.eps = check_positive("eps", eps, or_zero=True)
        self.saved = None

    def forward(self, x):
        """(..., d) -> (..., d)"""
        _check_width(x, self.params["g"].shape[0], type(self).__name__)
        xhat = x - x.mean(axis=-1, keepdims=True)                        # centred: x - μ
        r = 1 / np.sqrt(row_dot(xhat, xhat) / x.shape[-1] + self.eps)    # σ² = mean((x - μ)²)
        xhat *= r        # now (x - μ) r, in place (as below): each new (B, T, d) array costs time
        self.saved = (xhat, r)
        y = xhat * self.params["g"]
        y += self.params["b"]
        return y

    def backward(self, dout):
        xhat, r = self._saved()
        _check_dout(dout, xhat.shape, type(self).__name__)
        rows = tuple(range(dout.ndim - 1))                               # every axis but the last
        self.grads["g"] += (dout * xhat).sum(axis=rows)
        self.grads["b"] += dout.sum(axis=rows)
        dxhat = dout * self.params["g"]
        dx = dxhat - dxhat.mean(axis=-1, keepdims=True)
        dx -= xhat * (row_dot(dxhat, xhat) / dout.shape[-1])
        dx *= r
        return dx


class Identity(Module):
    """Stands in for LayerNorm when a model is built without normalisation."""

    def forward(self, x):
        return x

    def backward(self, dout):
        return dout


def layer_norm_or_identity(d_model, dtype, eps, enabled):
    return LayerNorm(d_model, dtype, eps) if enabled else Identity()


# ----------------------------------------------------------------------------------------------
# 6. Attention
# ----------------------------------------------------------------------------------------------
# Scaled dot-product attention (Vaswani et al. eq. 1):  Attention(Q, K, V) = softmax(QKᵀ/√d_k) V.
# Each query row scores every key row; the softmax turns the scores into weights that sum to
# one; the output is the weighted average of the value rows. Masked keys get weight 0.

def causal_mask(t_q, t_k=None):
    """(t_q, t_k) bool, True where query i may look at key j. Queries are the last t_q of the
    t_k positions (t_k > t_q while decoding with a cache), so query i sits at t_k - t_q + i."""
    t_q = check_count("t_q", t_q)
    t_k = _check_size("t_q", t_q, t_q) if t_k is None else _check_size("t_k", t_k, t_q, minimum=t_q)
    return np.arange(t_k)[None, :] <= np.arange(t_k - t_q, t_k)[:, None]


def padding_mask(tokens, pad_id):
    """(B, T) int -> (B, 1, 1, T) bool, False on padding keys."""
    tokens = _check_padding_args(tokens, pad_id)
    return (tokens != pad_id)[:, None, None, :]


class ScaledDotProductAttention(Module):
    def forward(self, q, k, v, mask=None):
        """q (B, H, Tq, dk), k (B, H, Tk, dk), v (B, H, Tk, dv) -> (B, H, Tq, dv)"""
        scale = 1 / math.sqrt(q.shape[-1])
        # (q·scale) kᵀ = (q kᵀ)·scale: scale q, which is smaller than the scores when Tk > dk.
        p = softmax((q * scale) @ k.swapaxes(-1, -2), mask=mask)   # (B, H, Tq, Tk)
        p = self.hook("hook_pattern", p)
        self.saved = (q, k, v, p, scale)
        return p @ v

    @property
    def pattern(self):
        """The attention weights (B, H, Tq, Tk) of the last forward, for plots and circuits."""
        return self._saved()[3]

    def backward(self, dout):
        """-> dq, dk, dv.  With S = QKᵀ·scale, P = softmax(S), O = PV:
        dV = Pᵀ dO,  dP = dO Vᵀ,  dS = softmax_backward(P, dP),  dQ = dS K·scale,  dK = dSᵀ Q·scale."""
        q, k, v, p, scale = self._saved()
        dv = p.swapaxes(-1, -2) @ dout
        ds = softmax_backward(p, dout @ v.swapaxes(-1, -2))
        return (ds @ k) * scale, (ds.swapaxes(-1, -2) @ q) * scale, dv   # scale the small factors


class MultiHeadAttention(Module):
    """Multi-head attention (Vaswani et al. 3.2.2).

    W_Q, W_K, W_V are (d_model, d_model); head h uses columns h·d_k .. (h+1)·d_k of each, so the
    H heads attend independently in d_k = d_model / H dimensions. Their outputs are concatenated
    and mixed by W_O.

    Self-attention: forward(x). Cross-attention: forward(x, memory), queries from x (the
    decoder), keys and values from memory (the encoder output). backward returns (dx, dmemory);
    for self-attention dmemory is None and both paths are already summed into dx.

    The key projection has no bias: q·(k + b) = q·k + q·b adds the same number to every score
    of a query's row, and softmax ignores such a shift, so a key bias could never be learned.

    A key/value cache (a dict, one per layer) lets a decoder feed one new token at a time: the
    keys and values of earlier positions are kept and the new ones appended.
    """

    def __init__(self, d_model, n_heads, rng, dtype=np.float64, bias=True):
        super().__init__()
        _check_heads(d_model, n_heads)
        self.n_heads = n_heads
        self.query = Linear(d_model, d_model, rng, dtype, bias)
        self.key = Linear(d_model, d_model, rng, dtype, bias=False)   # see the note above
        self.value = Linear(d_model, d_model, rng, dtype, bias)
        self.out = Linear(d_model, d_model, rng, dtype, bias)
        self.attention = ScaledDotProductAttention()
        self.saved = None

    def split_heads(self, x):
        """(B, T, d_model) -> (B, H, T, d_k)"""
        B, T, D = x.shape
        return x.reshape(B, T, self.n_heads, D // self.n_heads).transpose(0, 2, 1, 3)

    @staticmethod
    def merge_heads(x):
        """(B, H, T, d_k) -> (B, T, H·d_k): the concatenation of the heads."""
        B, H, T, dk = x.shape
        return x.transpose(0, 2, 1, 3).reshape(B, T, H * dk)

    def forward(self, x, memory=None, mask=None, kv_cache=None):
        """x (B, T, d) queries; memory (B, S, d) or None -> (B, T, d)"""
        _check_attention_inputs(x, memory, self.query.params["W"].shape[0])
        self.saved = cross = memory is not None        # backward: is there a dmemory to return?
        source = memory if cross else x
        q = self.hook("hook_q", self.split_heads(self.query.forward(x)))        # (B, H, T, d_k)
        k = self.hook("hook_k", self.split_heads(self.key.forward(source)))     # (B, H, S, d_k)
        v = self.hook("hook_v", self.split_heads(self.value.forward(source)))
        if kv_cache is not None:
            if "k" in kv_cache:
                k = np.concatenate([kv_cache["k"], k], axis=2)
                v = np.concatenate([kv_cache["v"], v], axis=2)
            kv_cache["k"], kv_cache["v"] = k, v
        z = self.hook("hook_z", self.attention.forward(q, k, v, mask))         # (B, H, T, d_k)
        return self.out.forward(self.merge_heads(z))

    def hook_sites(self):
        """{local hook name: (module, its name there)}, for section 9b."""
        sites = {name: (self, name) for name in ("hook_q", "hook_k", "hook_v", "hook_z")}
        return {**sites, "hook_pattern": (self.attention, "hook_pattern")}

    def backward(self, dout):
        cross = self._saved()
        dq, dk, dv = self.attention.backward(self.split_heads(self.out.backward(dout)))
        dx = self.query.backward(self.merge_heads(dq))
        dsource = self.key.backward(self.merge_heads(dk)) + self.value.backward(self.merge_heads(dv))
        return (dx, dsource) if cross else (dx + dsource, None)


# ----------------------------------------------------------------------------------------------
# 7. Position-wise feed-forward network
# ----------------------------------------------------------------------------------------------

class FeedForward(Module):
    """FFN(x) = act(x W1 + b1) W2 + b2, the same two-layer network at every position (3.3)."""

    def __init__(self, d_model, d_ff, rng, dtype=np.float64, activation="relu", bias=True):
        super().__init__()
        check_activation(activation)
        self.fc1 = Linear(d_model, d_ff, rng, dtype, bias)
        self.act = ACTIVATIONS[activation]()
        self.fc2 = Linear(d_ff, d_model, rng, dtype, bias)

    def forward(self, x):
        """(B, T, d_model) -> (B, T, d_model); the hidden activations (B, T, d_ff) are kept
        in self.hidden for readers who want to look at the neurons (demo.py's chapter 7 does)."""
        pre = self.hook("hook_pre", self.fc1.forward(x))                    # (B, T, d_ff)
        self.hidden = self.hook("hook_post", self.act.forward(pre))
        return self.fc2.forward(self.hidden)

    def backward(self, dout):
        return self.fc1.backward(self.act.backward(self.fc2.backward(dout)))

    def hook_sites(self):
        """{local hook name: (module, its name there)}, for section 9b."""
        return {name: (self, name) for name in ("hook_pre", "hook_post")}


# ----------------------------------------------------------------------------------------------
# 8. Blocks: residual connections and where the layer norm goes
# ----------------------------------------------------------------------------------------------
# Every sublayer f (attention or feed-forward) is wrapped in a residual connection.
#   Post-LN (Vaswani et al. 2017):  y = LN(x + f(x))
#       backward: dz = LN'(dy),  dx = dz + f'(dz)
#   Pre-LN (GPT-2, Xiong et al. 2020):  y = x + f(LN(x)), with one more LN after the last block
#       backward: dx = dy + LN'(f'(dy))
# Pre-LN leaves an identity path from input to output, which makes deep stacks train without
# the careful warm-up that Post-LN needs.

class Block(Module):
    """Self-attention, optional cross-attention, optional feed-forward; each with a residual.

    Encoder block: Block(...) used with a padding mask. Decoder-only block: the same with a
    causal mask. Decoder block of the encoder-decoder model: Block(..., cross_attention=True).
    attention_only=True drops the feed-forward sublayer and layer_norm=False the norms, which
    gives the simplified transformer that circuits.py reads from its weights.
    """

    def __init__(self, d_model, n_heads, d_ff, rng, dtype=np.float64, norm_first=True,
                 activation="relu", cross_attention=False, attention_only=False,
                 layer_norm=True, bias=True, norm_eps=1e-5):
        super().__init__()
        self.norm_first = norm_first

        def norm():
            return layer_norm_or_identity(d_model, dtype, norm_eps, layer_norm)

        self.self_attn = MultiHeadAttention(d_model, n_heads, rng, dtype, bias)
        self.norm1 = norm()
        self.cross_attn = MultiHeadAttention(d_model, n_heads, rng, dtype, bias) if cross_attention else None
        self.norm2 = norm() if cross_attention else None
        self.ffn = None if attention_only else FeedForward(d_model, d_ff, rng, dtype, activation, bias)
        self.norm3 = None if attention_only else norm()

    def _residual(self, norm, f, x, names):
        """names: the hook names (section 9b) of the norm's output, of f's output and of the
        sum x + f(...)."""
        normalized, out, resid = names
        if self.norm_first:                                           # x + f(LN(x))
            h = self.hook(normalized, norm.forward(x))
            return self.hook(resid, x + self.hook(out, f(h)))
        y = self.hook(resid, x + self.hook(out, f(x)))                # LN(x + f(x))
        return self.hook(normalized, norm.forward(y))

    def _residual_backward(self, norm, f_backward, dy):
        if self.norm_first:
            return dy + norm.backward(f_backward(dy))
        dz = norm.backward(dy)
        return dz + f_backward(dz)

    def forward(self, x, mask=None, memory=None, memory_mask=None, kv_cache=None):
        """x (B, T, d); memory (B, S, d) is the encoder output for cross-attention."""
        x = self.hook("hook_resid_pre", x)
        names = self._sublayer_hooks()
        x = self._residual(self.norm1, lambda h: self.self_attn.forward(h, mask=mask, kv_cache=kv_cache), x, names[0])
        if self.cross_attn is not None:
            x = self._residual(self.norm2, lambda h: self.cross_attn.forward(h, memory, memory_mask), x, names[1])
        if self.ffn is not None:
            x = self._residual(self.norm3, self.ffn.forward, x, names[-1])
        return x

    def _sublayer_hooks(self):
        """Per sublayer (self-attention, cross-attention if any, feed-forward if any): the hook
        names of its norm's output, its output and the residual sum after it; the last sum
        is hook_resid_post (section 9b)."""
        names = [("ln1.hook_normalized", "hook_attn_out", "hook_resid_mid")]
        if self.cross_attn is not None:
            names.append(("ln_cross.hook_normalized", "hook_cross_attn_out", "hook_resid_mid_cross"))
        if self.ffn is not None:
            names.append(("ln2.hook_normalized", "hook_mlp_out", "hook_resid_post"))
        names[-1] = names[-1][:2] + ("hook_resid_post",)
        return names

    def hook_sites(self):
        """{local hook name: (module, its name there)}, for section 9b."""
        sites = {"hook_resid_pre": (self, "hook_resid_pre")}
        sites.update((name, (self, name)) for names in self._sublayer_hooks() for name in names)
        children = (("attn.", self.self_attn), ("cross_attn.", self.cross_attn), ("mlp.", self.ffn))
        for prefix, child in children:
            if child is not None:
                sites.update((prefix + name, site) for name, site in child.hook_sites().items())
        return sites

    def backward(self, dout):
        """-> (dx, dmemory); dmemory is None without cross-attention."""
        dmemory = None
        if self.ffn is not None:
            dout = self._residual_backward(self.norm3, self.ffn.backward, dout)
        if self.cross_attn is not None:
            def cross_backward(d):
                nonlocal dmemory
                dx, dmemory = self.cross_attn.backward(d)
                return dx
            dout = self._residual_backward(self.norm2, cross_backward, dout)
        dout = self._residual_backward(self.norm1, lambda d: self.self_attn.backward(d)[0], dout)
        return dout, dmemory


# ----------------------------------------------------------------------------------------------
# 9. Models
# ----------------------------------------------------------------------------------------------
# Input: embedding · √d_model + positional encoding (Vaswani et al. 3.4 scale the embedding so
# it is not drowned by the encoding; our table starts at std 1/√d, so the product has unit
# scale). Output: a linear "de-embedding" to one logit per vocabulary entry, optionally tied to
# the embedding: logits = h Eᵀ, so the same table turns ids into vectors and vectors into ids.

class TiedUnembedding(Module):
    """logits = h @ Eᵀ using the embedding table E (vocab, d); gradients go into E's grad."""

    def __init__(self, embedding):
        super().__init__()
        self._embedding = embedding      # a reference, not a child: E is listed once
        self.saved = None

    def forward(self, h):
        self.saved = h
        return matmul_rows(h, self._embedding.params["W"].T)

    def backward(self, dout):
        h = self._saved()
        W, dW = self._embedding.params["W"], self._embedding.grads["W"]
        dW += dout.reshape(-1, dout.shape[-1]).T @ h.reshape(-1, h.shape[-1])
        return matmul_rows(dout, W)


POSITIONAL_CODES = ("sinusoidal", "learned", None)


def _keeps_forward(decode):
    """For the decoding methods. Decoding runs the layers on steps of its own (one new token, a
    batch of beams), which overwrite what each layer kept for backward. The decorated method
    runs inside state_kept (section 1), which puts back every attribute of every layer when it
    returns and when it raises part-way: a backward after decoding differentiates the last
    forward."""
    @functools.wraps(decode)
    def decode_keeping_forward(model, *args, **kwargs):
        with state_kept(model):
            return decode(model, *args, **kwargs)
    return decode_keeping_forward


class DecoderOnlyTransformer(Module):
    """A GPT: tokens -> embedding + position -> causal blocks -> logits for the next token.

    attention_only, layer_norm=False and bias=False build the simplified model of "A
    Mathematical Framework for Transformer Circuits" (n_layers=0 is the zero-layer model).
    positional is "sinusoidal" (Vaswani et al. 3.5, fixed: self.pos), "learned" (a table with one
    trained row per position, as GPT-2 and BERT have: self.pos_embed, an Embedding indexed by
    position) or None, no positional code at all (self.pos is then zeros), as that paper's
    zero-layer model has.
    """

    hook_points = ("hook_embed", "hook_pos_embed", "ln_final.hook_normalized")   # section 9b

    def __init__(self, vocab_size, d_model, n_heads, n_layers, d_ff, max_len, norm_first=True,
                 activation="relu", tie_weights=False, attention_only=False, layer_norm=True,
                 bias=True, positional="sinusoidal", norm_eps=1e-5, dtype=np.float64, seed=0):
        super().__init__()
        self.config = _model_config(locals())     # the arguments, checked, as save() writes them
        rng = np.random.default_rng(seed)
        self.vocab_size, self.max_len, self.dtype = vocab_size, max_len, np.dtype(dtype)
        self.embed_scale = math.sqrt(d_model)
        self.embed = Embedding(vocab_size, d_model, rng, dtype)
        pe = sinusoidal_encoding(max_len, d_model) if positional == "sinusoidal" else np.zeros((max_len, d_model))
        self.pos = pe.astype(dtype)
        self.pos_embed = Embedding(max_len, d_model, rng, dtype) if positional == "learned" else None
        self.blocks = [Block(d_model, n_heads, d_ff, rng, dtype, norm_first, activation,
                             attention_only=attention_only, layer_norm=layer_norm, bias=bias,
                             norm_eps=norm_eps)
                       for _ in range(n_layers)]
        self.norm = layer_norm_or_identity(d_model, dtype, norm_eps, norm_first and layer_norm)
        self.unembed = TiedUnembedding(self.embed) if tie_weights else Linear(d_model, vocab_size, rng, dtype, bias)
        self.saved = None                        # the logits' shape, once there was a forward

    def _run(self, tokens, start=0, kv_caches=None):
        """Forward pass without checks; start is the position of tokens[:, 0] (nonzero only
        when feeding new tokens to a filled cache)."""
        T = tokens.shape[1]
        x = self.hook("hook_embed", self.embed.forward(tokens) * self.embed_scale)      # (B, T, d)
        if self.pos_embed is None:
            pos = self.pos[start:start + T]
        else:
            pos = self.pos_embed.forward(np.arange(start, start + T))
        x = x + self.hook("hook_pos_embed", pos)                         # (T, d), onto every row
        mask = causal_mask(T, start + T)
        for i, block in enumerate(self.blocks):
            x = block.forward(x, mask, kv_cache=None if kv_caches is None else kv_caches[i])
        logits = self.unembed.forward(self.hook("ln_final.hook_normalized", self.norm.forward(x)))
        self.saved = logits.shape
        return logits

    def forward(self, tokens):
        """(B, T) int -> (B, T, vocab_size) logits; position t predicts token t + 1."""
        tokens = check_tokens("tokens", tokens, self.vocab_size, self.max_len)
        return self._run(tokens)

    def backward(self, dlogits):
        """(B, T, vocab_size) -> None; adds into every parameter's grad."""
        dlogits = check_output_gradient("dlogits", dlogits, self)
        dx = self.norm.backward(self.unembed.backward(dlogits))
        for block in reversed(self.blocks):
            dx, _ = block.backward(dx)
        if self.pos_embed is not None:
            self.pos_embed.backward(dx.sum(axis=0))    # one position row served every batch row
        self.embed.backward(dx * self.embed_scale)

    @_keeps_forward
    def generate(self, prompt, max_new_tokens, temperature=0.0, top_k=None, top_p=None,
                 use_cache=True, seed=0, return_logits=False):
        """Extend prompt (T0,) or (B, T0) by max_new_tokens tokens, one at a time.

        With use_cache the prompt is run once (prefill) and then each new token alone, reusing
        the keys and values of earlier positions; without it, the whole sequence is recomputed
        every step. Both give the same tokens and logits. temperature, top_k and top_p choose
        each token as in sample_next. return_logits also returns the (B, max_new_tokens, vocab)
        logits each new token was chosen from.
        """
        squeeze = np.ndim(prompt) == 1
        tokens, max_new_tokens, temperature, top_k, top_p, seed = _check_generate(
            self, prompt, max_new_tokens, temperature, top_k, top_p, use_cache, seed, return_logits)
        rng = np.random.default_rng(seed)
        kv_caches = [{} for _ in self.blocks] if use_cache else None
        logits = self._run(tokens, 0, kv_caches)[:, -1]
        chosen = []
        for step in range(max_new_tokens):
            check_finite("logits", logits)      # NaN logits: the model's weights hold NaN or inf
            chosen.append(logits)
            nxt = _sample(logits, temperature, top_k, top_p, rng)
            tokens = np.concatenate([tokens, nxt[:, None]], axis=1)
            if step + 1 < max_new_tokens:
                new = self._run(nxt[:, None], tokens.shape[1] - 1, kv_caches) if use_cache else self._run(tokens)
                logits = new[:, -1]
        out = tokens[0] if squeeze else tokens
        if return_logits:
            stacked = np.stack(chosen, axis=1) if chosen else np.zeros((tokens.shape[0], 0, self.vocab_size))
            return out, (stacked[0] if squeeze else stacked)
        return out

    def save(self, path):
        save(self, path)


class Transformer(Module):
    """The encoder-decoder of Vaswani et al.: the encoder reads src with self-attention, the
    decoder reads the target so far with masked self-attention and looks at the encoder output
    with cross-attention. pad_id marks padding in both src and tgt; padded keys are masked.
    tie_weights ties the target embedding to the output layer."""

    hook_points = tuple(f"{side}.{name}" for side in ("encoder", "decoder")       # section 9b
                        for name in DecoderOnlyTransformer.hook_points)

    def __init__(self, src_vocab_size, tgt_vocab_size, d_model, n_heads, n_layers, d_ff, max_len,
                 norm_first=True, activation="relu", pad_id=None, tie_weights=False,
                 norm_eps=1e-5, dtype=np.float64, seed=0):
        super().__init__()
        self.config = _model_config(locals())     # the arguments, checked, as save() writes them
        rng = np.random.default_rng(seed)
        self.src_vocab_size, self.tgt_vocab_size = src_vocab_size, tgt_vocab_size
        self.max_len, self.pad_id, self.dtype = max_len, pad_id, np.dtype(dtype)
        self.embed_scale = math.sqrt(d_model)
        self.pos = sinusoidal_encoding(max_len, d_model).astype(dtype)

        self.src_embed = Embedding(src_vocab_size, d_model, rng, dtype)
        self.encoder = [Block(d_model, n_heads, d_ff, rng, dtype, norm_first, activation,
                              norm_eps=norm_eps) for _ in range(n_layers)]
        self.encoder_norm = layer_norm_or_identity(d_model, dtype, norm_eps, norm_first)
        self.tgt_embed = Embedding(tgt_vocab_size, d_model, rng, dtype)
        self.decoder = [Block(d_model, n_heads, d_ff, rng, dtype, norm_first, activation,
                              cross_attention=True, norm_eps=norm_eps) for _ in range(n_layers)]
        self.decoder_norm = layer_norm_or_identity(d_model, dtype, norm_eps, norm_first)
        self.unembed = TiedUnembedding(self.tgt_embed) if tie_weights else Linear(d_model, tgt_vocab_size, rng, dtype)
        self.saved = None                        # the logits' shape, once there was a forward

    def _key_mask(self, tokens):
        return None if self.pad_id is None else padding_mask(tokens, self.pad_id)

    def encode(self, src):
        """(B, S) int -> memory (B, S, d), and the key mask for attending to it."""
        src_mask = self._key_mask(src)
        x = self.hook("encoder.hook_embed", self.src_embed.forward(src) * self.embed_scale)
        x = x + self.hook("encoder.hook_pos_embed", self.pos[:src.shape[1]])
        for block in self.encoder:
            x = block.forward(x, src_mask)
        return self.hook("encoder.ln_final.hook_normalized", self.encoder_norm.forward(x)), src_mask

    def decode(self, tgt_in, memory, src_mask):
        """(B, T) int, memory (B, S, d) -> (B, T, tgt_vocab_size) logits."""
        T = tgt_in.shape[1]
        mask = causal_mask(T)
        if self.pad_id is not None:
            mask = mask & padding_mask(tgt_in, self.pad_id)
        x = self.hook("decoder.hook_embed", self.tgt_embed.forward(tgt_in) * self.embed_scale)
        x = x + self.hook("decoder.hook_pos_embed", self.pos[:T])
        for block in self.decoder:
            x = block.forward(x, mask, memory, src_mask)
        x = self.hook("decoder.ln_final.hook_normalized", self.decoder_norm.forward(x))
        return self.unembed.forward(x)

    def forward(self, src, tgt_in):
        """src (B, S), tgt_in (B, T) int -> (B, T, tgt_vocab_size) logits."""
        src, tgt_in = _check_pair(self, src, tgt_in)
        logits = self.decode(tgt_in, *self.encode(src))
        self.saved = logits.shape
        return logits

    def backward(self, dlogits):
        """Backward through the decoder, collecting the gradient of the encoder output from every
        cross-attention, then through the encoder."""
        dlogits = check_output_gradient("dlogits", dlogits, self)
        dx = self.decoder_norm.backward(self.unembed.backward(dlogits))
        dmemory = 0
        for block in reversed(self.decoder):
            dx, dm = block.backward(dx)
            dmemory = dmemory + dm
        self.tgt_embed.backward(dx * self.embed_scale)
        dx = self.encoder_norm.backward(dmemory)
        for block in reversed(self.encoder):
            dx, _ = block.backward(dx)
        self.src_embed.backward(dx * self.embed_scale)

    @_keeps_forward
    def greedy_decode(self, src, bos_id, eos_id, max_new_tokens):
        """(B, S) -> (B, L) int, L <= max_new_tokens: the most likely token at every step. The
        decoder starts from <bos>, which is not counted and not returned. The encoder runs once.
        A sequence that has emitted eos_id is padded with eos_id afterwards."""
        src, bos_id, eos_id, max_new_tokens = _check_decode_args(self, src, bos_id, eos_id,
                                                                max_new_tokens)
        memory, src_mask = self.encode(src)
        out = np.full((src.shape[0], 1), bos_id)
        done = np.zeros(src.shape[0], bool)
        for _ in range(max_new_tokens):
            logits = self.decode(out, memory, src_mask)[:, -1]
            check_finite("logits", logits)      # NaN logits: the model's weights hold NaN or inf
            nxt = np.argmax(logits, axis=-1)
            nxt = np.where(done, eos_id, nxt)
            out = np.concatenate([out, nxt[:, None]], axis=1)
            done |= nxt == eos_id
            if done.all():
                break
        return out[:, 1:]

    @_keeps_forward
    def beam_search(self, src, bos_id, eos_id, max_new_tokens, beam_size):
        """(B, S) -> (B, L) int, L <= max_new_tokens (<bos> not counted, not returned): keep the
        beam_size most likely partial targets (sum of log-probabilities) at every step, and
        return the best. Finished beams are extended by eos_id at no cost, so they keep their
        score. Vectorised over batch and beams: row b·K + j of the decoder batch is beam j of
        example b. beam_size=1 is greedy decoding."""
        src, bos_id, eos_id, max_new_tokens = _check_decode_args(self, src, bos_id, eos_id,
                                                                max_new_tokens)
        beam_size = check_count("beam_size", beam_size, 1, self.tgt_vocab_size)   # more: idle beams
        B, K, V = src.shape[0], beam_size, self.tgt_vocab_size
        memory, src_mask = self.encode(src)
        memory = np.repeat(memory, K, axis=0)
        src_mask = None if src_mask is None else np.repeat(src_mask, K, axis=0)
        seqs = np.full((B, K, 1), bos_id)
        scores = np.full((B, K), -np.inf)
        scores[:, 0] = 0                       # all beams start equal: only one is alive
        done = np.zeros((B, K), bool)
        rows = np.arange(B)[:, None]
        for _ in range(max_new_tokens):
            logits = self.decode(seqs.reshape(B * K, -1), memory, src_mask)[:, -1]
            check_finite("logits", logits)      # NaN logits: the model's weights hold NaN or inf
            logp = log_softmax(logits).reshape(B, K, V)
            stay = np.full(V, -np.inf)
            stay[eos_id] = 0
            logp = np.where(done[..., None], stay, logp)
            cand = (scores[..., None] + logp).reshape(B, K * V)
            top = np.argsort(-cand, axis=1, kind="stable")[:, :K]
            scores = np.take_along_axis(cand, top, axis=1)
            beam, tok = top // V, top % V
            seqs = np.concatenate([seqs[rows, beam], tok[..., None]], axis=2)
            done = done[rows, beam] | (tok == eos_id)
            if done.all():
                break
        return seqs[np.arange(B), np.argmax(scores, axis=1), 1:]

    def save(self, path):
        save(self, path)


# ----------------------------------------------------------------------------------------------
# 9b. Named activations and hooks
# ----------------------------------------------------------------------------------------------
# To find out which part of a model does what, we read its activations and change them: run a
# prompt, keep what every layer wrote into the residual stream, run another prompt with one of
# those activations put back (activation patching, circuits.py). Each activation worth reading
# has a name, and a hook point in the forward where it is computed: the line
#     x = self.hook("hook_resid_pre", x)
# returns x itself, unless a hooked run has set a function for that name; then the forward goes
# on with what the function returns. The names are those of TransformerLens (Nanda & Bloom
# 2022), so what a student learns here reads the same there:
#
#   name                               shape              what it is
#   hook_embed                         (B, T, d)          token embeddings (times √d_model here)
#   hook_pos_embed                     (T, d)             the positional code, added onto every row
#   blocks.{l}.hook_resid_pre          (B, T, d)          the residual stream entering block l
#   blocks.{l}.ln1.hook_normalized     (B, T, d)          the first norm's output: attention's input
#                                                         (Pre-LN), the stream after it (Post-LN)
#   blocks.{l}.attn.hook_q, hook_k,    (B, H, T, d_head)  queries, keys and values, per head
#                       hook_v
#   blocks.{l}.attn.hook_pattern       (B, H, T_q, T_k)   the attention weights
#   blocks.{l}.attn.hook_z             (B, H, T, d_head)  each head's mix of values, before W_O
#   blocks.{l}.hook_attn_out           (B, T, d)          what attention adds to the stream
#   blocks.{l}.hook_resid_mid          (B, T, d)          the sum x + attention, when an MLP follows
#   blocks.{l}.ln2.hook_normalized     (B, T, d)          the MLP's norm's output, as ln1 for attention
#   blocks.{l}.mlp.hook_pre            (B, T, d_ff)       before the activation function
#   blocks.{l}.mlp.hook_post           (B, T, d_ff)       after it (FeedForward.hidden)
#   blocks.{l}.hook_mlp_out            (B, T, d)          what the MLP adds to the stream
#   blocks.{l}.hook_resid_post         (B, T, d)          the sum after the block's last sublayer
#   ln_final.hook_normalized           (B, T, d)          the final norm's output, which the
#                                                         unembedding reads (Pre-LN)
#
# A hook_resid_* is always a sum x + f(...), a ln*.hook_normalized always a norm's output. In a
# Pre-LN block the sum is the block's output, so hook_resid_post of layer l is hook_resid_pre of
# layer l + 1; in a Post-LN block (the 2017 paper, BERT) the output is LN(sum), the last
# ln*.hook_normalized, as TransformerLens's BERT has it. Without layer norms the ln points are
# the identity. The encoder-decoder puts "encoder." or "decoder." before every name
# (encoder.blocks.0.attn.hook_pattern, decoder.hook_embed); its decoder blocks also have
# cross_attn.hook_q ... hook_z (queries from the decoder, keys and values from the encoder),
# ln_cross.hook_normalized, hook_cross_attn_out and hook_resid_mid_cross. A model with one stack
# of blocks calls it "blocks". pretrained.Bert adds embed.hook_embed, embed.hook_pos_embed,
# embed.hook_token_type_embed and embed.ln.hook_normalized (its embeddings' layer norm).
#
# A hooked run is for analysis. It leaves no trace: hooks are set for one call and removed in a
# `finally`, and everything the forward rebinds in the layers (what backward needs, the logits'
# shape) is put back, so the model's state after it is what it was before. A backward after it
# therefore differentiates the model's last ordinary forward, exactly as if the hooked run had not
# happened, and refuses ("called before forward") when there was none; the hooked forward itself
# is never differentiated. Each hook gets a copy of the activation (so it may edit it in place)
# and what it returns is copied before the forward uses it (so a cache is never overwritten).

def hook_names(model):
    """The hook names valid for model (a DecoderOnlyTransformer, Transformer or pretrained.Bert)."""
    return list(_check_hooked_model(model))


def run_with_hooks(model, *inputs, hooks):
    """model.forward(*inputs) with hooks {name: fn}: at the point `name` the forward goes on with
    fn(activation, name), an array of the activation's shape and dtype (replace it, add to it,
    zero it). -> the forward's output. inputs as forward takes them: (tokens,) for the GPT,
    (src, tgt_in) for the encoder-decoder, (tokens, attention_mask[, token_type_ids]) for BERT."""
    sites = _check_hooks(model, hooks)
    with state_kept(model):          # saved, hidden and the hooks go back
        for name, fn in hooks.items():
            module, local = sites[name]
            if module._hooks is None:
                module._hooks = {}                         # on the instance, gone at the end
            module._hooks[local] = _hook_call(fn, name)
        return model.forward(*inputs)


def run_with_cache(model, *inputs):
    """-> (output, cache): cache {name: activation} of every named activation of this run, in
    the order the forward reached them."""
    cache = {}

    def keep(activation, name):
        cache[name] = activation
        return activation

    output = run_with_hooks(model, *inputs, hooks=dict.fromkeys(hook_names(model), keep))
    return output, cache


def _hook_sites(model):
    """{full hook name: (module, its local name)}: the model's own points, then each block's,
    named blocks.{l}. (one stack) or encoder.blocks.{l}. and decoder.blocks.{l}. (two)."""
    stacks = [(attribute, blocks) for attribute, blocks in vars(model).items()
              if isinstance(blocks, list) and blocks and all(isinstance(b, Block) for b in blocks)]
    sites = {name: (model, name) for name in model.hook_points}
    for attribute, blocks in stacks:
        prefix = "blocks" if len(stacks) == 1 else f"{attribute}.blocks"
        for l, block in enumerate(blocks):
            sites.update((f"{prefix}.{l}.{name}", site) for name, site in block.hook_sites().items())
    return sites


def _hook_call(fn, name):
    """The function a hook point calls: fn on a copy, its result checked and copied."""
    def call(activation):
        result = fn(activation.copy(), name)
        _check_hook_result(name, result, activation)
        return result.copy()
    return call


# ----------------------------------------------------------------------------------------------
# 10. Choosing the next token
# ----------------------------------------------------------------------------------------------
# A model gives logits for the next token; a decoding strategy turns them into a choice.
# Greedy takes the most likely; sampling draws from softmax(logits / temperature), where a
# temperature below 1 sharpens the distribution and above 1 flattens it; top-k keeps only the
# k most likely tokens, top-p the smallest set whose probabilities add up to p. Beam search
# (in Transformer above) keeps several partial outputs at once.

def sample_next(logits, temperature=0.0, top_k=None, rng=None, top_p=None):
    """(B, V) logits -> (B,) ids. temperature 0 is greedy (argmax); otherwise sample from
    softmax(logits / temperature), keeping only the top_k largest logits if top_k is given and
    then only the nucleus of probability top_p if top_p is given (1 keeps every token)."""
    logits, temperature, top_k, top_p = _check_sample_next(logits, temperature, top_k, top_p)
    return _sample(logits, temperature, top_k, top_p, rng)


def _sample(logits, temperature, top_k, top_p, rng):
    if temperature == 0:
        return np.argmax(logits, axis=-1)
    check_rng(rng)
    logits = logits / temperature
    if top_k is not None:
        kth = np.sort(logits, axis=-1)[:, -top_k][:, None]
        logits = np.where(logits >= kth, logits, -np.inf)
    if top_p is not None and top_p < 1:
        # Nucleus sampling (Holtzman et al. 2020, "The Curious Case of Neural Text
        # Degeneration"): keep the smallest set of most likely tokens whose probabilities add
        # up to top_p. Going down the tokens from the most likely, a token belongs to the set
        # while the tokens before it hold less than top_p; the first token always does.
        p = softmax(logits)
        order = np.argsort(-p, axis=-1, kind="stable")                  # most likely first
        p_sorted = np.take_along_axis(p, order, axis=-1)
        inside = np.cumsum(p_sorted, axis=-1) - p_sorted < top_p        # mass before each token
        keep = np.zeros(p.shape, bool)
        np.put_along_axis(keep, order, inside, axis=-1)
        logits = np.where(keep, logits, -np.inf)
    cdf = np.cumsum(softmax(logits), axis=-1)
    u = rng.random((logits.shape[0], 1)) * cdf[:, -1:]
    return np.minimum((cdf < u).sum(axis=-1), logits.shape[-1] - 1)


# ----------------------------------------------------------------------------------------------
# 11. Loss
# ----------------------------------------------------------------------------------------------
# Cross-entropy of the softmax: L = -Σ_v q_v log p_v averaged over counted positions, where q is
# the target distribution: one-hot, or with label smoothing ε (Vaswani et al. 5.4, Szegedy et al.
# 2016) (1 - ε) one-hot + ε / V. Its gradient with respect to the logits is the famous
# dL/dz = (p - q) / N. Positions whose target is ignore_index (padding) count for nothing.

def cross_entropy(logits, targets, ignore_index=None, label_smoothing=0.0):
    """logits (..., V), targets (...) int -> (loss, dlogits of the same shape as logits)."""
    logits, targets, keep, label_smoothing = _check_loss(logits, targets, ignore_index, label_smoothing)
    return _softmax_cross_entropy(logits, targets, keep, label_smoothing)


def _softmax_cross_entropy(logits, targets, keep, label_smoothing):
    check_finite("logits", logits)          # NaN logits mean training diverged: lower the lr
    V = logits.shape[-1]
    safe = np.where(keep, targets, 0)[..., None]
    logp = log_softmax(logits)
    n = max(int(keep.sum()), 1)
    per_token = -(1 - label_smoothing) * np.take_along_axis(logp, safe, -1)[..., 0]
    if label_smoothing:                 # (else 0 · mean could be 0 · -inf: logits near float's max)
        per_token -= label_smoothing * logp.mean(axis=-1)
    loss = float(np.sum(per_token * keep)) / n
    if not math.isfinite(loss):
        raise ValueError(f"logits lie too far apart: the loss overflows {logits.dtype} ({loss})")
    dlogits = np.exp(logp)
    np.put_along_axis(dlogits, safe, np.take_along_axis(dlogits, safe, -1) - (1 - label_smoothing), -1)
    dlogits -= label_smoothing / V
    dlogits *= keep[..., None] / np.asarray(n, logits.dtype)
    return loss, dlogits


# ----------------------------------------------------------------------------------------------
# 12. Optimizers and the training step
# ----------------------------------------------------------------------------------------------
# An optimizer holds the (name, value, grad) triples of parameters() in self.triples (a Module's
# params is its own {name: value}) and updates the values in place. lr is a plain attribute, so
# a schedule just sets it before each step.

class SGD:
    """v = μ v + g;  w -= lr (v + λ w)."""

    def __init__(self, parameters, lr, momentum=0.0, weight_decay=0.0):
        lr = check_positive("lr", lr, or_zero=True)
        momentum = _check_decay_rate("momentum", momentum)
        weight_decay = check_positive("weight_decay", weight_decay, or_zero=True)
        self.triples = _check_parameters(parameters)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.velocity = [np.zeros_like(p) for _, p, _ in self.triples]

    def step(self):
        _check_step(self, self.velocity)
        for (_, p, g), v in zip(self.triples, self.velocity):
            v *= self.momentum
            v += g
            p -= self.lr * (v + self.weight_decay * p)


class Adam:
    """Adam (Kingma & Ba 2015) with decoupled weight decay (AdamW, Loshchilov & Hutter 2019):
        m = β1 m + (1-β1) g,  v = β2 v + (1-β2) g²,  m̂ = m / (1-β1ᵗ),  v̂ = v / (1-β2ᵗ)
        w -= lr (m̂ / (√v̂ + eps) + λ w)
    The decay acts on the weight directly instead of being added to the gradient, so it is not
    rescaled by √v̂."""

    def __init__(self, parameters, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        lr, betas, eps, weight_decay = _check_adam(lr, betas, eps, weight_decay)
        self.triples = _check_parameters(parameters)
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.m = [np.zeros_like(p) for _, p, _ in self.triples]
        self.v = [np.zeros_like(p) for _, p, _ in self.triples]
        self.t = 0

    def step(self):
        _check_step(self, self.m, self.v)
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        for (_, p, g), m, v in zip(self.triples, self.m, self.v):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * (g * g)
            if self.weight_decay:
                p -= (self.lr * self.weight_decay) * p
            p -= (self.lr / c1) * m / (np.sqrt(v / c2) + self.eps)


def clip_grad_norm(parameters, max_norm):
    """Scale all gradients together so their global L2 norm is at most max_norm; returns the norm
    before clipping."""
    max_norm = check_positive("max_norm", max_norm)
    grads = [g for _, _, g in _check_parameters(parameters)]
    norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads))
    if not math.isfinite(norm):
        raise ValueError(f"the gradients must be finite to be clipped, got a norm of {norm} (a NaN "
                         f"or inf gradient, or squares beyond the float type's range)")
    if norm > max_norm:
        for g in grads:
            g *= max_norm / norm
    return norm


def train_step(model, optimizer, inputs, targets, ignore_index=None, label_smoothing=0.0,
               max_grad_norm=None):
    """One step of training: forward, loss, zero the grads, backward, clip, update.
    inputs is the tuple of forward's arguments: (tokens,) for the decoder-only model, (src,
    tgt_in) for the encoder-decoder; targets has the shape of the last of them. optimizer must
    update this model's parameters. Returns the loss (before the update).

    Bad arguments are refused before anything changes, the layers' saved forward included (an
    Adam or SGD optimizer is checked first: its lr, and every parameter writeable and its own).
    Logits that are NaN or inf mean that training has diverged: the step is refused with a
    ValueError before the gradients change, and the weights stay as the previous step left
    them, already diverged (restore a copy saved earlier and lower the lr). A gradient that
    overflows to inf is refused by clipping or by optimizer.step before any weight changes,
    with the gradients of this step left in place."""
    vocab_size = getattr(model, "tgt_vocab_size" if isinstance(model, Transformer) else "vocab_size",
                         None)
    if not isinstance(model, Module) or vocab_size is None:
        raise TypeError(f"model must be a model that gives logits, such as a "
                        f"DecoderOnlyTransformer, got {type(model).__name__}")
    triples = getattr(optimizer, "triples", None)
    if not callable(getattr(optimizer, "step", None)) or not isinstance(triples, list):
        raise TypeError(f"optimizer must be an optimizer such as Adam(model.parameters()), got "
                        f"{type(optimizer).__name__}")
    ours = {id(value) for _, value in model.weights()}
    if not all(isinstance(t, tuple) and len(t) == 3 and id(t[1]) in ours for t in triples):
        raise ValueError("optimizer must update this model's parameters (Adam(model.parameters())), "
                         "but it holds arrays that are not this model's")
    if isinstance(optimizer, (SGD, Adam)):
        _check_update(optimizer, optimizer.velocity if isinstance(optimizer, SGD) else optimizer.m)
    if not isinstance(inputs, tuple) or not inputs:
        raise TypeError(f"inputs must be the tuple of forward's arguments, such as (tokens,), "
                        f"got {type(inputs).__name__}")
    if max_grad_norm is not None:
        max_grad_norm = check_positive("max_grad_norm", max_grad_norm)
    targets, keep, label_smoothing = _check_targets(targets, np.shape(inputs[-1]), vocab_size,
                                                    ignore_index, label_smoothing)
    loss, dlogits = _softmax_cross_entropy(model.forward(*inputs), targets, keep, label_smoothing)
    model.zero_grad()
    model.backward(dlogits)
    if max_grad_norm is not None:
        clip_grad_norm(optimizer.triples, max_grad_norm)
    optimizer.step()
    return loss


def noam_lr(step, d_model, warmup=4000, factor=1.0):
    """Vaswani et al. 5.3: lr = factor · d_model^-0.5 · min(step^-0.5, step · warmup^-1.5):
    a linear warm-up for `warmup` steps, then decay as 1/√step. step counts from 1."""
    step, warmup = check_count("step", step), check_count("warmup", warmup)
    d_model, factor = check_count("d_model", d_model), check_positive("factor", factor)
    return factor * d_model ** -0.5 * min(step ** -0.5, step * warmup ** -1.5)


# ----------------------------------------------------------------------------------------------
# 13. Tokenizing: from text to ids and back
# ----------------------------------------------------------------------------------------------
# A model sees integers, not text. A tokenizer cuts text into pieces and numbers them. Special
# tokens carry meaning the text does not: <pad> fills short sequences in a batch, <bos> and <eos>
# mark the beginning and end of a sequence, <unk> stands for anything not in the vocabulary.

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")


class Tokenizer:
    """Vocabulary of pieces built from a text; subclasses say how text is cut and glued.

    Ids 0..3 are the special tokens <pad>, <bos>, <eos>, <unk>; the pieces of the training text
    follow in sorted order, so the same text always gives the same ids.
    """

    def __init__(self, text):
        pieces = sorted(set(self.split(check_text(text))) - set(SPECIAL_TOKENS))
        self.itos = list(SPECIAL_TOKENS) + pieces
        self.stoi = {piece: i for i, piece in enumerate(self.itos)}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = range(4)

    @property
    def vocab_size(self):
        return len(self.itos)

    def encode(self, text, bos=False, eos=False):
        """str -> list of ids; pieces never seen in training become <unk>."""
        bos, eos = check_flag("bos", bos), check_flag("eos", eos)
        ids = [self.stoi.get(piece, self.unk_id) for piece in self.split(check_text(text))]
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def decode(self, ids, skip_special=True):
        """list of ids -> str; special tokens are dropped unless skip_special is False."""
        ids, skip_special = _check_ids(ids, self.vocab_size), check_flag("skip_special", skip_special)
        pieces = [self.itos[i] for i in ids if not (skip_special and i < len(SPECIAL_TOKENS))]
        return self.join(pieces)


class CharTokenizer(Tokenizer):
    """One token per character: tiny vocabulary, long sequences."""

    def split(self, text):
        return list(text)

    def join(self, pieces):
        return "".join(pieces)


class WordTokenizer(Tokenizer):
    """One token per word or punctuation mark (Rohrer's examples are word-level)."""

    def split(self, text):
        return re.findall(r"\w+|[^\w\s]", text)

    def join(self, pieces):
        return re.sub(r" ([^\w\s])", r"\1", " ".join(pieces))  # no space before punctuation


class BPETokenizer:
    """Byte-pair encoding on UTF-8 bytes, trained to a requested vocabulary size.

    Start from the 256 single bytes, so every string, in any script, can be written down. Then
    repeatedly count every adjacent pair of tokens in the training text, give the most frequent
    pair a new id, and replace it everywhere (Rohrer, "Byte pair encoding"; Sennrich et al.
    2016). Ties go to the pair with the smallest first id, then the smallest second id. Encoding
    a new string replays the learned merges in the order they were learned; decoding concatenates
    the bytes each id stands for, so decode(encode(s)) == s for every s.

    Recounting all pairs after each merge costs a pass over the whole corpus per merge. A merge
    only changes the words that contain the merged pair, so training keeps the pair counts and
    updates just the counts of those words, as Sennrich's subword-nmt learner does; a heap then
    hands out the most frequent pair.
    """

    def __init__(self, text, vocab_size):
        check_text(text)
        vocab_size = check_count("vocab_size", vocab_size, minimum=256)     # the byte alphabet
        self.merges = {}                              # (id, id) -> new id, in order of creation
        self.pieces = [bytes([b]) for b in range(256)]  # id -> the bytes it stands for
        # Merges never cross a word boundary: count pairs inside each distinct word only.
        distinct = Counter(tuple(w.encode("utf-8")) for w in self._words(text))
        _check_bpe_work([len(word) for word in distinct], vocab_size - len(self.pieces))
        words, counts = list(distinct), list(distinct.values())   # word i occurs counts[i] times
        pairs = Counter()                             # (id, id) -> occurrences in the whole text
        words_with = {}                               # (id, id) -> indices of words that contain it
        for i, word in enumerate(words):
            for pair in zip(word, word[1:]):
                pairs[pair] += counts[i]
                words_with.setdefault(pair, set()).add(i)
        # The most frequent pair is the smallest (-count, first id, second id). Every change of a
        # count pushes a new entry; an entry whose count is no longer current is skipped.
        heap = [(-count, pair) for pair, count in pairs.items()]
        heapq.heapify(heap)
        while len(self.pieces) < vocab_size and heap:
            minus_count, best = heapq.heappop(heap)
            if pairs[best] != -minus_count:
                continue                              # a stale entry
            new_id = len(self.pieces)
            self.merges[best] = new_id
            self.pieces.append(self.pieces[best[0]] + self.pieces[best[1]])
            change = Counter()                        # pair -> change of its count by this merge
            for i in words_with.pop(best):
                old, new = words[i], self._merge(words[i], best, new_id)
                words[i] = new
                for pair in zip(old, old[1:]):
                    change[pair] -= counts[i]
                for pair in zip(new, new[1:]):
                    change[pair] += counts[i]
                    words_with.setdefault(pair, set()).add(i)
            for pair, delta in change.items():
                pairs[pair] += delta
                if delta and pairs[pair]:
                    heapq.heappush(heap, (-pairs[pair], pair))
        self._word_ids = {}                           # word -> its ids, each word encoded once

    @property
    def vocab_size(self):
        return len(self.pieces)

    @staticmethod
    def _words(text):
        # a word keeps the single space in front of it; runs of whitespace stand alone
        return re.findall(r" ?\S+|\s+", text)

    @staticmethod
    def _merge(word, pair, new_id):
        out, i = [], 0
        while i < len(word):
            if word[i:i + 2] == pair:
                out.append(new_id)
                i += 2
            else:
                out.append(word[i])
                i += 1
        return tuple(out)

    def _encode_word(self, word):
        if word not in self._word_ids:
            ids = tuple(word.encode("utf-8"))
            while len(ids) > 1:
                # apply the earliest-learned merge present in the word, as training did
                pair = min(zip(ids, ids[1:]), key=lambda p: self.merges.get(p, math.inf))
                if pair not in self.merges:
                    break
                ids = self._merge(ids, pair, self.merges[pair])
            self._word_ids[word] = list(ids)
        return self._word_ids[word]

    def encode(self, text):
        """str -> list of ids."""
        return [i for word in self._words(check_text(text)) for i in self._encode_word(word)]

    def decode(self, ids):
        """list of ids -> str (bytes that do not form valid UTF-8 become U+FFFD)."""
        ids = _check_ids(ids, self.vocab_size)
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")


# Real text that every Python has: the documentation topics of the standard library
# (pydoc_data.topics, the pages `help("assignment")` shows; about 465 KB of English prose from
# the CPython reference manual). Each topic is plain text in paragraphs separated by blank
# lines; besides prose it holds headings (a line underlined with *, = or -), grammar rules
# ("::="), interactive examples (">>>") and short code lines. We keep the prose: a paragraph
# with at least six words of which at least 90% of the characters are letters, spaces or
# ordinary punctuation, its lines joined by single spaces.

_PROSE_CHARACTERS = frozenset(" .,;:'\"“”’()-")


def prose_paragraphs(text):
    """str -> list of the prose paragraphs of a documentation page, in order."""
    kept = []
    for block in re.split(r"\n[ \t]*\n", check_text(text)):
        lines = [line.strip() for line in block.split("\n") if line.strip()]
        paragraph = " ".join(" ".join(lines).split())
        heading = len(lines) == 2 and set(lines[1]) <= set("*=-~^")
        code = "::=" in paragraph or any(line.startswith((">>>", "...")) for line in lines)
        if heading or code or len(paragraph.split()) < 6:
            continue
        prose = sum(c.isalpha() or c in _PROSE_CHARACTERS for c in paragraph)
        if prose >= 0.9 * len(paragraph):
            kept.append(paragraph)
    return kept


def pydoc_paragraphs():
    """The prose paragraphs of every pydoc topic, topics in sorted order: the same list every
    time on the same Python (about 1,700 paragraphs and 360,000 characters on CPython 3.11)."""
    try:
        from pydoc_data.topics import topics
    except ImportError as error:
        raise ModuleNotFoundError(
            "the corpus is CPython's pydoc_data.topics, which this Python lacks; it is part of "
            "the standard library of every CPython build (Debian and Ubuntu: libpython3-stdlib)"
        ) from error
    return [paragraph for name in sorted(topics) for paragraph in prose_paragraphs(topics[name])]


# ----------------------------------------------------------------------------------------------
# 14. Saving and loading
# ----------------------------------------------------------------------------------------------
# One .npz file: the constructor arguments as a JSON string, then every parameter by its dotted
# name. Nothing in the file is ever run: the arrays are raw numbers (.npy), never pickles. A
# file from a stranger may still lie, so load reads nothing it has not measured: it must be a
# regular file (not a FIFO or a device), each member must declare how much it inflates to and
# its .npy header must account for exactly those bytes, and the config must ask for no more
# numbers than the file's arrays hold, all before any model is built.

MODELS = {"DecoderOnlyTransformer": DecoderOnlyTransformer, "Transformer": Transformer}
MAX_CONFIG_BYTES = 10 ** 5
MAX_INFLATION = 20              # a file's members inflate to at most 20 times its size
MAX_COMPUTED = 10 ** 6          # numbers a config may ask to compute beyond what its arrays hold


def _npz_path(path):
    """np.savez adds ".npz" to a name without it; load looks for the same file."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or a pathlib.Path, got {type(path).__name__}")
    path = pathlib.Path(path)
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def save(model, path):
    """Write model to path (".npz" is added unless path ends with it, as np.savez does).

    The save is atomic: the file is written under a temporary name in the same folder, flushed
    and fsynced to the disk, and only then renamed over path (os.replace, a single step), so a
    save that fails part-way (a full disk, an interrupt) leaves the old file as it was and no
    temporary behind. A model with a NaN or inf weight is refused before anything is opened:
    load would refuse the file."""
    if type(model) not in MODELS.values():
        raise TypeError(f"model must be one of {sorted(MODELS)}, got {type(model).__name__}")
    path = _npz_path(path)
    for name, value in model.weights():
        check_finite(f"the model's {name} (save writes only what load accepts)", value)
    if not path.parent.is_dir():
        raise ValueError(f"path {str(path)!r} is in a folder that does not exist")
    if path.exists() and not path.is_file():
        raise ValueError(f"path {str(path)!r} is not a regular file (a folder, FIFO or device), "
                         f"so it is not replaced")
    config = json.dumps({"class": type(model).__name__, **model.config})
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, __config__=np.array(config), **dict(model.weights()))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, 0o644)          # as np.savez's own file would be (mkstemp's is 0o600)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _members(archive, file_size):
    """{array name: ZipInfo}: each member a .npy, stored or deflated, not encrypted, named once,
    all of them declared to inflate to at most MAX_INFLATION times the file's size."""
    members = {}
    for info in archive.infolist():
        name = info.filename.removesuffix(".npy")
        if name in members:
            raise ValueError(f"it holds {info.filename} twice")
        if info.flag_bits & 0x1:
            raise ValueError(f"{info.filename} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ValueError(f"{info.filename} uses compression method {info.compress_type}; only "
                             f"stored (0) and deflated (8) are read")
        members[name] = info
    inflated = sum(info.file_size for info in members.values())
    if inflated > MAX_INFLATION * file_size:
        raise ValueError(f"its members inflate to {inflated} bytes, more than {MAX_INFLATION} "
                         f"times its {file_size}")
    return members


def _npy_header(archive, info):
    """-> (shape, fortran_order, dtype) from one member's .npy header, which must account for
    every byte the member declares. Only the header is inflated."""
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"{info.filename} is .npy version {version}, not 1.0 or 2.0")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) \
            else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(f)
        data_bytes = info.file_size - f.tell()
    if dtype.hasobject or math.prod(shape) * dtype.itemsize != data_bytes:
        raise ValueError(f"{info.filename} claims shape {shape} of {dtype}, but it holds "
                         f"{data_bytes} bytes of data")
    return shape, fortran_order, dtype


def _read_npy(archive, info, header):
    """One member's array. zipfile inflates no more than the member's declared size and checks
    its CRC; the header said how many of those bytes are the array's."""
    shape, fortran_order, dtype = header
    with archive.open(info) as f:
        f.seek(info.file_size - math.prod(shape) * dtype.itemsize)
        data = f.read()
    return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran_order else "C")


def load(path):
    """Rebuild a model saved with save(); raises ValueError, naming the path, for a file that
    is not one: missing, not a regular file, damaged, or lying about its contents. Time and
    memory are bounded by the file's size: every member's header is read and checked first,
    then the config, then the model is built, and only then are the arrays inflated."""
    path = _npz_path(path)
    try:
        with open_regular_file("path", path) as f, zipfile.ZipFile(f) as archive:
            members = _members(archive, os.fstat(f.fileno()).st_size)
            headers = {name: _npy_header(archive, info) for name, info in members.items()}
            shape, _, dtype = headers.get("__config__", ((), False, np.dtype(float)))
            if dtype.kind != "U" or shape != () or dtype.itemsize > 4 * MAX_CONFIG_BYTES:
                raise ValueError(f"no __config__ string of at most {MAX_CONFIG_BYTES} characters")
            config = parse_json("its __config__", str(_read_npy(archive, members["__config__"],
                                                                  headers["__config__"])[()]))
            if not isinstance(config, dict) or config.get("class") not in MODELS:
                got = config.get("class") if isinstance(config, dict) else type(config).__name__
                raise ValueError(f"its __config__ must name a class of {sorted(MODELS)}, got {got!r}")
            cls = MODELS[config.pop("class")]
            config = _model_config(config)
            held = sum(math.prod(s) for name, (s, _, _) in headers.items() if name != "__config__")
            weights = _weights_lower_bound(config)
            positions = config["max_len"] * config["d_model"]        # computed, not stored
            if weights > held or positions > max(held, MAX_COMPUTED):
                raise ValueError(f"its config asks for at least {weights} weights and a position "
                                 f"table of {positions} numbers; its arrays hold {held}")
            model = cls(**config)
            expected = dict(model.weights())
            if set(expected) != set(members) - {"__config__"}:
                raise ValueError("its arrays are not the parameters its config describes")
            for name, value in expected.items():
                shape, _, dtype = headers[name]
                if shape != value.shape or dtype.kind != "f":
                    raise ValueError(f"{name} must be finite floats of shape {value.shape}, got "
                                     f"{dtype} of shape {shape}")
                with np.errstate(over="ignore", invalid="ignore"):   # 1e300 is inf in float32
                    value[...] = _read_npy(archive, members[name], headers[name])
                if not np.all(np.isfinite(value)):
                    raise ValueError(f"{name} must be finite floats of shape {value.shape}, and "
                                     f"finite in {value.dtype}, got NaN or inf")
    except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile,
            zlib.error) as err:
        raise ValueError(f"path {str(path)!r} is not a model saved by transformer.save ({err})"[:500]) from None
    return model


# ----------------------------------------------------------------------------------------------
# 15. Gradient checking
# ----------------------------------------------------------------------------------------------
# The proof that a hand-written backward is right: nudge one number by ±eps, recompute the loss
# and compare (L(w + eps) - L(w - eps)) / 2eps with the analytic gradient. Central differences
# have O(eps²) error; in float64 with eps = 1e-5 the two agree to about 1e-9 relative error.

def relative_error(analytic, numeric):
    """‖a - n‖ / (‖a‖ + ‖n‖): 0 when they agree, 1 when they are unrelated. Measured over a
    whole set of entries, so one entry whose true gradient happens to be ~0 (where the
    difference quotient is all rounding noise) does not decide the verdict alone."""
    a, n = np.asarray(analytic, np.float64), np.asarray(numeric, np.float64)
    return float(np.linalg.norm(a - n) / max(1e-12, np.linalg.norm(a) + np.linalg.norm(n)))


def gradient_check(loss_fn, parameters, num_checks=10, eps=1e-5, seed=0):
    """loss_fn() -> float recomputes the loss from the current values. parameters yields
    (name, value, grad) with grad already holding the analytic gradient (an input can be checked
    the same way, as ("x", x, dx)). Compares num_checks random entries of each array (all of
    them if it is smaller) and returns {name: relative error}."""
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be a function loss_fn() -> float, got {type(loss_fn).__name__}")
    num_checks, eps = check_count("num_checks", num_checks), check_positive("eps", eps)
    rng = np.random.default_rng(check_count("seed", seed, minimum=0))
    errors = {}
    for name, value, grad in _check_parameters(parameters):
        picked = rng.choice(value.size, min(num_checks, value.size), replace=False)
        numeric = []
        for i in picked:
            old = value.flat[i]
            value.flat[i] = old + eps
            plus = loss_fn()
            value.flat[i] = old - eps
            minus = loss_fn()
            value.flat[i] = old
            numeric.append((plus - minus) / (2 * eps))
        check_finite(f"loss_fn()'s differences for {name}", numeric)
        errors[name] = relative_error(grad.flat[picked], numeric)
    return errors


# ----------------------------------------------------------------------------------------------
# Appendix A. Making it fast
# ----------------------------------------------------------------------------------------------
# Each function here computes what the textbook line beside it computes (the same numbers, or
# the same to float32's precision), only faster. Only forms that save at least 5% of a whole
# training step or of BERT's forward are kept, each behind one visible `if` next to the line it
# replaces. Both serve the exact GELU, that is
# BERT: with the textbook form instead, its float32 forward of a padded 32 x 64 batch takes
# 19% (erf) and 14% (blockwise) longer, measured side by side in one process.

# erf in float32. float32 holds only 7 digits, and one formula for the whole line is that
# accurate (Abramowitz & Stegun, Handbook of Mathematical Functions, 7.1.26, after Hastings):
#     erf(x) = 1 - t (a1 + a2 t + a3 t² + a4 t³ + a5 t⁴) exp(-x²),  t = 1 / (1 + p x),  x >= 0
# Computed in float32 it is within 5.3e-7 of math.erf (measured on a dense grid over [-8, 8]).
# One exp and no sorting into intervals: on BERT's (32, 64, 1536) feed-forward activations
# about twice as fast as Cody's pieces in float32 (three times Cody's in float64).

_ERF_AS_P = 0.3275911
_ERF_AS_A = (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592)


def erf_float32(x):
    """erf for a float32 array, within 5.3e-7 of the exact value."""
    y = np.abs(x)
    t = 1 / (1 + _ERF_AS_P * y)
    tail = polynomial(_ERF_AS_A, t) * t * np.exp(-y * y)
    return np.copysign(1 - tail, x)


# Elementwise chains in blocks. A chain of elementwise operations such as erf's reads and
# writes the whole array once per operation. Applied to blocks that fit in the processor's
# cache, the same chain gives the same numbers faster on arrays of millions of entries, such
# as BERT's (32, 64, 1536) feed-forward activations.

BLOCK = 1 << 16          # entries per block: 256 KB of float32, 512 KB of float64


def blockwise(f, x, block=BLOCK):
    """f(x) for an elementwise f, computed block by block over the flattened x."""
    flat = x.reshape(-1)
    out = np.empty_like(flat)
    for start in range(0, flat.size, block):
        out[start:start + block] = f(flat[start:start + block])
    return out.reshape(x.shape)


# ----------------------------------------------------------------------------------------------
# Appendix B. Checking arguments
# ----------------------------------------------------------------------------------------------
# Every public function refuses bad input before it changes anything, with a ValueError (or a
# TypeError) that names the argument, what was given and what is allowed. These checks are
# shared by superposition.py and circuits.py too.

MAX_INT = 2 ** 63 - 1           # the largest count, seed or id: what an int64 holds


def _shown(value):
    """A value as a message shows it: a huge int by its size (its digits could fill a page, and
    beyond 4,300 of them Python refuses to print it), anything else by its repr, cut short."""
    if isinstance(value, int) and not -MAX_INT <= value <= MAX_INT:
        return f"an int of {value.bit_length()} bits"
    return repr(value)[:100]


def check_count(name, value, minimum=1, maximum=None):
    """An int >= minimum (and <= maximum, if given, and never above MAX_INT; a bool is not a
    count) -> the Python int. A NumPy integer of any type is the same number: it is converted
    before anything is computed with it, so np.uint8(255) + 1 cannot wrap to 0 later."""
    maximum = MAX_INT if maximum is None else min(maximum, MAX_INT)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
            or not minimum <= int(value) <= maximum:
        allowed = f">= {minimum}" if maximum == MAX_INT else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be an int {allowed}, got {_shown(value)}")
    return int(value)


def check_positive(name, value, or_zero=False):
    """A finite number > 0 (>= 0 if or_zero) -> the Python float. A NumPy float of any type
    (float16, float32, longdouble) is the same number as a float; an int too large for a float
    (10**400) is refused by name, not an OverflowError."""
    try:
        number = float(value) if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) else None
    except OverflowError:
        number = None
    if number is None or not math.isfinite(number) or number < 0 or (number == 0 and not or_zero):
        raise ValueError(f"{name} must be a finite number {'>=' if or_zero else '>'} 0, got "
                         f"{_shown(value)}")
    return number


def check_plain_array(name, x):
    """A subclass of np.ndarray is refused, not unwrapped: a masked array would lose its mask
    (the masked entries, NaN or not, would count), a np.matrix multiplies with *. Pass
    np.asarray(x) to mean the plain numbers."""
    if isinstance(x, np.ndarray) and type(x) is not np.ndarray:
        raise TypeError(f"{name} must be a plain np.ndarray, got a {type(x).__name__} (a subclass; "
                        f"pass np.asarray({name}) to use its numbers as they are)")
    return x


def check_finite(name, x):
    """No NaN or inf: one would travel silently through every later result."""
    a = np.asarray(check_plain_array(name, x))
    if a.dtype.kind not in "biufc":
        raise TypeError(f"{name} must be an array of numbers, got {type(x).__name__} of dtype "
                        f"{a.dtype}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite, got NaN or inf in "
                         f"{np.count_nonzero(~np.isfinite(a))} of its {a.size} entries")


def check_numbers(what, n):
    """An array of n numbers is refused beyond MAX_NUMBERS, before it is allocated: a mistyped
    size is a clear error at once, not a MemoryError (or minutes of swapping) later."""
    if n > MAX_NUMBERS:
        raise ValueError(f"{what} asks for {_shown(n)} numbers, more than {MAX_NUMBERS:.0e} "
                         f"(one was mistyped?)")
    return n


# Files. A path may name a FIFO (opening it blocks until some writer comes), a device (/dev/zero
# never ends) or a folder: each is refused by os.stat before anything opens it. A regular file
# is then opened without blocking and checked again on the open descriptor, in case the path
# was swapped in between.

def open_regular_file(name, path):
    """-> a binary file object reading the regular file at path; ValueError naming it for
    anything else, before it is opened."""
    def refuse(why):
        return ValueError(f"{name} {str(path)!r} {why}")
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise refuse("is not a regular file (a folder, FIFO or device), so it is not opened")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as err:
        raise refuse(f"cannot be read ({err.strerror or err})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise refuse("is not a regular file (a folder, FIFO or device), so it is not read")
    return os.fdopen(fd, "rb")


def read_regular_file(name, path, max_bytes):
    """The bytes of the regular file at path, refused beyond max_bytes before any is read."""
    with open_regular_file(name, path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise ValueError(f"{name} {str(path)!r} has {size} bytes, more than the {max_bytes} "
                             f"allowed for it")
        try:
            data = f.read(size + 1)             # no more than it had: a file that grows is cut
        except OSError as err:
            raise ValueError(f"{name} {str(path)!r} cannot be read ({err.strerror or err})") from None
    if len(data) != size:
        raise ValueError(f"{name} {str(path)!r} changed size while it was read")
    return data


MAX_JSON_DEPTH = 64


def parse_json(name, text):
    """JSON text (str, or UTF-8 bytes) -> its value. Refused with a ValueError naming it: text
    that is not UTF-8 or not JSON, nesting deeper than MAX_JSON_DEPTH (json.loads would recurse
    until a RecursionError), a key given twice (json.loads keeps the last one silently), NaN
    and Infinity (not JSON), a number of more than 4,300 digits (Python refuses to read it)."""
    try:
        text = text.decode("utf-8") if isinstance(text, bytes) else text
        outside = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)      # brackets in strings do not nest
        codes = np.frombuffer(outside.encode("utf-8"), np.uint8)
        depth = np.cumsum(np.isin(codes, (91, 123)).astype(np.int32) - np.isin(codes, (93, 125)))
        if depth.size and depth.max() > MAX_JSON_DEPTH:
            raise ValueError(f"it nests {depth.max()} levels deep, more than {MAX_JSON_DEPTH}")
        return json.loads(text, object_pairs_hook=_json_object, parse_constant=_json_constant)
    except ValueError as err:                  # UnicodeDecodeError and JSONDecodeError are too
        raise ValueError(f"{name} is not JSON that can be read ({err})"[:300]) from None


def _json_object(pairs):
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"the key {next(k for k in keys if keys.count(k) > 1)!r} is given twice")
    return dict(pairs)


def _json_constant(word):
    raise ValueError(f"{word} is not a JSON number")


def check_flag(name, value):
    """True or False (NumPy's bool too) -> bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_float_dtype(dtype):
    """np.float32 (for speed) or np.float64 (for checking gradients) -> the NumPy type."""
    if not any(np.dtype(allowed) == dtype for allowed in (np.float32, np.float64)):
        raise ValueError(f"dtype must be np.float32 or np.float64, got {dtype!r}")
    return np.dtype(dtype).type


def check_rng(rng):
    """All randomness comes from a np.random.Generator passed in."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a np.random.Generator, such as np.random.default_rng(seed), "
                        f"got {type(rng).__name__}")
    return rng


def check_id_array(name, ids, n):
    """An integer array of ids, each a row of an (n, ...) table; returns it as an ndarray.
    (An id outside [0, n) would be an IndexError in a lookup, or a silent row of zeros in a
    one-hot.)"""
    ids = np.asarray(check_plain_array(name, ids))
    if ids.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array of token ids, got dtype {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= n):
        raise ValueError(f"{name} must hold ids in [0, {n}), got values in [{ids.min()}, {ids.max()}]")
    return ids.astype(np.intp, copy=False)      # uint64 ids beside int64 ones would make floats


def check_tokens(name, tokens, vocab_size, max_len):
    """Validate a (B, T) integer array of ids; returns it as an ndarray."""
    tokens = check_id_array(name, tokens, vocab_size)
    if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise ValueError(f"{name} must have shape (B, T) with B, T >= 1, got shape {tokens.shape}")
    if tokens.shape[1] > max_len:
        raise ValueError(f"{name} has length {tokens.shape[1]}, longer than max_len={max_len}")
    return tokens


def check_text(text):
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return text


def _check_ids(ids, vocab_size):
    """A sequence of ids to decode -> list of ints, each in [0, vocab_size)."""
    ids = np.asarray(ids)
    if ids.size == 0:
        return []
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise TypeError(f"ids must be a sequence of int ids, got dtype {ids.dtype}, shape {ids.shape}")
    bad = ids[(ids < 0) | (ids >= vocab_size)].tolist()
    if bad:
        raise ValueError(f"ids must lie in [0, {vocab_size}), got {bad[:5]}")
    return ids.tolist()


def _check_width(x, d, layer):
    check_plain_array("x", x)
    if np.ndim(x) < 1 or np.shape(x)[-1] != d:
        raise ValueError(f"{layer} expects x with {d} features on its last axis, got shape {np.shape(x)}")


def _check_dout(dout, shape, layer):
    """A backward takes the gradient of its last forward's output: an array of that shape."""
    if type(dout) is not np.ndarray or dout.shape != shape:
        raise ValueError(f"{layer}.backward expects dout of shape {shape} (the last forward's "
                         f"output), got {type(dout).__name__} of shape {np.shape(dout)}")


def check_activation(activation):
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    return activation


def _check_attention_inputs(x, memory, d):
    """x (B, T, d) and memory None or (B, S, d), before a layer records anything."""
    for name, a in [("x", x)] + ([] if memory is None else [("memory", memory)]):
        check_plain_array(name, a)
        if np.ndim(a) != 3 or np.shape(a)[2] != d or np.shape(a)[0] != np.shape(x)[0]:
            raise ValueError(f"MultiHeadAttention expects {name} of shape (B, T, {d}) with the batch "
                             f"size of x, got shape {np.shape(a)}")


def check_output_gradient(name, grad, model, output="logits"):
    """A model's backward takes the gradient of its last forward's output (the logits, say), of
    the shape that forward kept in model.saved; finite. (Decoding is not a forward: the layers
    keep the forward before it, see _keeps_forward.)"""
    check_plain_array(name, grad)
    shape = model._saved()
    if np.shape(grad) != shape:
        raise ValueError(f"{name} must have the shape of the last forward's {output} {shape}, "
                         f"got {np.shape(grad)}")
    check_finite(name, grad)
    return np.asarray(grad)


MIN_TEMPERATURE = 1e-3


def _check_decoding(temperature, top_k, top_p, vocab_size):
    """-> temperature, top_k, top_p as Python numbers. A temperature between 0 and
    MIN_TEMPERATURE is refused: logits / temperature would overflow to inf (and the softmax to
    NaN) for a temperature near float's smallest, and below 1e-3 sampling differs from greedy
    only where the best logits lie within 0.04 of each other."""
    temperature = check_positive("temperature", temperature, or_zero=True)
    if 0 < temperature < MIN_TEMPERATURE:
        raise ValueError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}, got "
                         f"{temperature!r}")
    if top_k is not None:
        top_k = check_count("top_k", top_k, maximum=vocab_size)
    if top_p is not None:
        number = top_p if isinstance(top_p, numbers.Real) and not isinstance(top_p, (bool, np.bool_)) else None
        if number is None or not 0 < number <= 1:
            raise ValueError(f"top_p must be None or a number in (0, 1], got {_shown(top_p)}")
        top_p = float(number)
    return temperature, top_k, top_p


# Sizes are bounded so that a mistyped one (or a crafted file) is refused at once, instead of
# hanging or exhausting memory: far beyond any model this file can train.
MAX_LAYERS = 1000
MAX_NUMBERS = 10 ** 8           # parameters and position table: 0.8 GB in float64


VOCABULARIES = ("vocab_size", "src_vocab_size", "tgt_vocab_size")
SWITCHES = ("norm_first", "tie_weights", "attention_only", "layer_norm", "bias")


def _model_config(arguments):
    """A model constructor's arguments (its locals() on entry, or a saved config) -> the config
    save() writes: every size, switch and float type checked (the layers check that n_heads
    divides d_model), NumPy scalars as Python values, the dtype by its name."""
    config = {name: value.item() if isinstance(value, np.generic) else value
              for name, value in arguments.items() if name not in ("self", "__class__")}
    config["dtype"] = np.dtype(check_float_dtype(config["dtype"])).name
    config["seed"] = check_count("seed", config["seed"], minimum=0)
    vocabularies = [name for name in VOCABULARIES if name in config]
    for name in ["d_model", "n_heads", "d_ff", "max_len"] + vocabularies:
        config[name] = check_count(name, config[name])
    encoder_decoder = "src_vocab_size" in config                 # it needs a layer on each side
    config["n_layers"] = check_count("n_layers", config["n_layers"], minimum=int(encoder_decoder),
                                     maximum=MAX_LAYERS)
    config["norm_eps"] = check_positive("norm_eps", config["norm_eps"], or_zero=True)
    check_activation(config["activation"])
    for name in SWITCHES:
        if name in config:
            config[name] = check_flag(name, config[name])
    positional = config.get("positional", "sinusoidal")
    if not (positional is None or isinstance(positional, str)) or positional not in POSITIONAL_CODES:
        raise ValueError(f"positional must be one of {POSITIONAL_CODES}, got {positional!r}")
    if config.get("pad_id") is not None:                          # an id of both vocabularies
        config["pad_id"] = check_count("pad_id", config["pad_id"], 0, min(config[n] for n in vocabularies) - 1)
    if _weights_lower_bound(config) + config["max_len"] * config["d_model"] > MAX_NUMBERS:
        raise ValueError(f"the sizes ({', '.join(f'{n}={config[n]}' for n in ['d_model', 'n_layers', 'd_ff', 'max_len'] + vocabularies)}) "
                         f"ask for more than {MAX_NUMBERS:.0e} numbers (one was mistyped?)")
    return config


def _weights_lower_bound(config):
    """At least this many weights: the embeddings, each layer's four attention matrices and two
    feed-forward ones (one stack of layers per vocabulary)."""
    d, vocabularies = config["d_model"], [config[n] for n in VOCABULARIES if n in config]
    d_ff = 0 if config.get("attention_only") else config["d_ff"]
    return d * sum(vocabularies) + config["n_layers"] * len(vocabularies) * (4 * d + 2 * d_ff) * d


def _check_targets(targets, shape, V, ignore_index, label_smoothing):
    """-> (targets as an integer array of the given shape, keep: True where a target counts,
    label_smoothing as a Python float)."""
    targets = np.asarray(check_plain_array("targets", targets))
    if targets.dtype.kind not in "iu":
        raise TypeError(f"targets must be an integer array, got dtype {targets.dtype}")
    if targets.shape != shape:
        raise ValueError(f"targets must have shape {shape} (logits without the last "
                         f"axis), got {targets.shape}")
    label_smoothing = _check_decay_rate("label_smoothing", label_smoothing)
    if ignore_index is not None and (isinstance(ignore_index, (bool, np.bool_))
                                     or not isinstance(ignore_index, (int, np.integer))):
        raise TypeError(f"ignore_index must be None or an int, got {_shown(ignore_index)}")
    if ignore_index is not None and not -MAX_INT <= ignore_index <= MAX_INT:
        raise ValueError(f"ignore_index must be an int in [-{MAX_INT}, {MAX_INT}], got "
                         f"{_shown(ignore_index)}")
    keep = np.ones(targets.shape, bool) if ignore_index is None else targets != ignore_index
    if keep.any() and (targets[keep].min() < 0 or targets[keep].max() >= V):
        raise ValueError(f"targets must hold ids in [0, {V}) (or ignore_index), got values in "
                         f"[{targets[keep].min()}, {targets[keep].max()}]")
    return targets, keep, label_smoothing


MAX_BPE_WORK = 10 ** 7          # byte rewrites: a few seconds of BPE training


def _check_bpe_work(lengths, merges):
    """A merge rewrites each word that holds its pair, and a word of w bytes can take at most
    w - 1 merges: training rewrites at most min(Σ w², merges · Σ w) bytes over the distinct words.
    A text without spaces is one long word, whose w² grows without bound; refused beyond
    MAX_BPE_WORK before the first merge."""
    work = min(sum(w * w for w in lengths), merges * sum(lengths))
    if work > MAX_BPE_WORK:
        raise ValueError(f"vocab_size asks for {merges} merges on a text whose distinct words hold "
                         f"{sum(lengths)} bytes (the longest {max(lengths)}): up to {work} byte "
                         f"rewrites, more than {MAX_BPE_WORK:.0e}; ask for fewer merges, or give "
                         f"a text of shorter words (BPE never merges across a space)")


def _check_decay_rate(name, value):
    """A momentum or β (the share of the old average kept at each step), or a label smoothing:
    a number in [0, 1) -> the Python float."""
    number = value if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) else None
    if number is None or not 0 <= number < 1:
        raise ValueError(f"{name} must be a number in [0, 1), got {_shown(value)}")
    return float(number)


def _check_parameters(parameters):
    """model.parameters(): (name, value, grad) triples of float32 or float64 arrays (plain
    ndarrays, writeable, each listed once) -> a list of them."""
    try:
        params = list(parameters)
    except TypeError:
        raise TypeError(f"parameters must be the (name, value, grad) triples of model.parameters(), "
                        f"got {type(parameters).__name__}") from None
    for triple in params:
        if not (isinstance(triple, tuple) and len(triple) == 3 and all(
                type(a) is np.ndarray and a.dtype in (np.float32, np.float64) and a.shape == triple[1].shape
                for a in triple[1:])):
            raise TypeError(f"parameters must be the (name, value, grad) triples of "
                            f"model.parameters(), got an item {triple!r}"[:300])
    for name, value, grad in params:
        if not (value.flags.writeable and grad.flags.writeable):
            raise ValueError(f"parameter {name} is read-only: an optimizer updates it in place")
        if np.may_share_memory(value, grad):
            raise ValueError(f"parameter {name} shares memory with its own gradient")
    if len({id(value) for _, value, _ in params}) != len(params):
        raise ValueError("parameters must list each array once: one listed twice would be "
                         "updated twice a step")
    return params


def _check_update(optimizer, moments):
    """Before an update, all it will touch, so that it stops before the first array changes
    (a read-only array half-way would leave the step half done): lr (a plain attribute a
    schedule sets) and each parameter still writeable and the one the optimizer was built
    for, of the shape and float type of its moments."""
    check_positive("lr", optimizer.lr, or_zero=True)
    triples = optimizer.triples
    if isinstance(triples, list) and len(triples) == len(moments) and all(
            isinstance(t, tuple) and len(t) == 3 and type(t[1]) is np.ndarray and type(t[2]) is np.ndarray
            and t[1].shape == t[2].shape == m.shape and t[1].dtype == m.dtype
            and t[1].flags.writeable and t[2].flags.writeable for t, m in zip(triples, moments)):
        return
    _check_parameters(triples)                    # says what is wrong with them, if it can
    raise ValueError(f"{type(optimizer).__name__}.triples must be the parameters it was built "
                     f"with: they changed after it was built")


def _check_step(optimizer, *moments):
    """_check_update, then every gradient finite: one inf gradient would make every weight it
    touches NaN."""
    _check_update(optimizer, moments[0])
    for name, _, grad in optimizer.triples:
        check_finite(f"the gradient of {name}", grad)


def _check_generate(model, prompt, max_new_tokens, temperature, top_k, top_p, use_cache, seed,
                    return_logits):
    """generate's arguments -> the prompt as (B, T0) (a row added if it came as (T0,)),
    max_new_tokens, temperature, top_k, top_p and seed as Python numbers."""
    tokens = np.asarray(check_plain_array("prompt", prompt))
    tokens = check_tokens("prompt", tokens[None] if tokens.ndim == 1 else tokens, model.vocab_size,
                          model.max_len)
    max_new_tokens = check_count("max_new_tokens", max_new_tokens, 0, model.max_len - tokens.shape[1])
    temperature, top_k, top_p = _check_decoding(temperature, top_k, top_p, model.vocab_size)
    seed = check_count("seed", seed, minimum=0)
    check_flag("use_cache", use_cache)
    check_flag("return_logits", return_logits)
    return tokens, max_new_tokens, temperature, top_k, top_p, seed


def _check_pair(model, src, tgt_in):
    src = check_tokens("src", src, model.src_vocab_size, model.max_len)
    tgt_in = check_tokens("tgt_in", tgt_in, model.tgt_vocab_size, model.max_len)
    if src.shape[0] != tgt_in.shape[0]:
        raise ValueError(f"src and tgt_in must have the same batch size, got {src.shape[0]} "
                         f"and {tgt_in.shape[0]}")
    return src, tgt_in


def _check_decode_args(model, src, bos_id, eos_id, max_new_tokens):
    """-> src as an array, bos_id, eos_id and max_new_tokens as Python ints."""
    src = check_tokens("src", src, model.src_vocab_size, model.max_len)
    bos_id, eos_id = (check_count(name, value, 0, model.tgt_vocab_size - 1)
                      for name, value in (("bos_id", bos_id), ("eos_id", eos_id)))
    max_new_tokens = check_count("max_new_tokens", max_new_tokens, 1,
                                 model.max_len - 1)                # the model's, minus <bos>
    return src, bos_id, eos_id, max_new_tokens


def _check_sample_next(logits, temperature, top_k, top_p):
    """-> logits as an array, temperature, top_k, top_p as Python numbers."""
    if np.ndim(logits) != 2 or np.shape(logits)[1] == 0:
        raise ValueError(f"logits must have shape (B, V) with V >= 1, got shape {np.shape(logits)}")
    check_finite("logits", logits)
    return (np.asarray(logits), *_check_decoding(temperature, top_k, top_p, np.shape(logits)[1]))


def _check_loss(logits, targets, ignore_index, label_smoothing):
    """-> logits, targets as arrays, keep (the positions that count), label_smoothing."""
    logits = np.asarray(check_plain_array("logits", logits))
    if logits.ndim < 1 or logits.shape[-1] == 0 or logits.dtype.kind != "f":
        raise TypeError(f"logits must be a float array (..., V) with V >= 1, got dtype "
                        f"{logits.dtype}, shape {logits.shape}")
    return (logits, *_check_targets(targets, logits.shape[:-1], logits.shape[-1], ignore_index,
                                    label_smoothing))


def _check_adam(lr, betas, eps, weight_decay):
    """-> lr, betas, eps, weight_decay as Python floats."""
    lr = check_positive("lr", lr, or_zero=True)
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"betas must be a pair (β1, β2), got {betas!r}"[:200])
    betas = (_check_decay_rate("betas[0]", betas[0]), _check_decay_rate("betas[1]", betas[1]))
    return lr, betas, check_positive("eps", eps), check_positive("weight_decay", weight_decay, or_zero=True)


def _check_heads(d_model, n_heads):
    check_count("d_model", d_model)
    check_count("n_heads", n_heads)
    if d_model % n_heads:
        raise ValueError(f"d_model must be divisible by n_heads, got d_model={d_model}, "
                         f"n_heads={n_heads}")


def _check_size(name, value, per_entry=1, minimum=1):
    """A count whose array, value · per_entry numbers, stays within MAX_NUMBERS."""
    value = check_count(name, value, minimum)
    if value * max(int(per_entry), 1) > MAX_NUMBERS:
        raise ValueError(f"{name}={value} asks for more than {MAX_NUMBERS:.0e} numbers "
                         f"(mistyped?)")
    return value


def _check_padding_args(tokens, pad_id):
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.dtype.kind not in "iu":
        raise ValueError(f"tokens must have shape (B, T) and hold integer ids, got shape "
                         f"{tokens.shape}, dtype {tokens.dtype}")
    check_count("pad_id", pad_id, minimum=0)
    return tokens


# The hooked runs of section 9b: a model with named activations, hooks {name: callable} with
# names of that model, each hook's result an array like the activation it replaces.

def _check_hooked_model(model):
    """-> the model's hook sites."""
    if not isinstance(model, Module) or not isinstance(getattr(model, "hook_points", None), tuple):
        raise TypeError(f"model must be a model with named activations (DecoderOnlyTransformer, "
                        f"Transformer, pretrained.Bert), got {type(model).__name__}")
    return _hook_sites(model)


def _check_hooks(model, hooks):
    """-> the model's hook sites, after checking every name and function in hooks."""
    sites = _check_hooked_model(model)
    if not isinstance(hooks, dict):
        raise TypeError(f"hooks must be a dict {{hook name: function}}, got {type(hooks).__name__}")
    for name, fn in hooks.items():
        if name not in sites:
            n_layers = max([int(n) for n in re.findall(r"\.(\d+)\.", " ".join(sites))] + [-1]) + 1
            valid = ", ".join(dict.fromkeys(re.sub(r"\.\d+\.", ".{l}.", n) for n in sites))
            raise ValueError(f"hooks has an unknown hook name {name!r}; the names of this "
                             f"{type(model).__name__} are (l in 0..{n_layers - 1}): {valid}")
        if not callable(fn):
            raise TypeError(f"hooks[{name!r}] must be a function fn(activation, name), got "
                            f"{type(fn).__name__}")
    return sites


def _check_hook_result(name, result, activation):
    """A hook returns an array of the activation's shape and dtype, finite."""
    if not isinstance(result, np.ndarray) or result.shape != activation.shape \
            or result.dtype != activation.dtype:
        raise ValueError(f"the hook for {name!r} must return an array of shape {activation.shape} "
                         f"and dtype {activation.dtype} (the activation's), got "
                         f"{type(result).__name__} of shape {np.shape(result)}, dtype "
                         f"{getattr(result, 'dtype', None)}")
    check_finite(f"the result of the hook for {name!r}", result)
