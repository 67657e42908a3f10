"""Independent NumPy references used by the tests (no keras.ops inside)."""

import numpy as np


def rms_norm(x, scale, epsilon=1e-6):
    x = x.astype(np.float64)
    return x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + epsilon) * (1 + scale)


def rope(x, positions, max_wavelength=10000, scaling_factor=1.0):
    """x: (B, T, N, H), positions: (T,). Rotate-half layout."""
    half = x.shape[-1] // 2
    freq = 1.0 / max_wavelength ** (np.arange(half) * 2.0 / x.shape[-1])
    angles = (np.asarray(positions, np.float64) / scaling_factor)[:, None] * freq
    cos, sin = np.cos(angles)[None, :, None, :], np.sin(angles)[None, :, None, :]
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)


def attention(q, k, v, causal=True, window=None, soft_cap=None, padding_mask=None, scale=None):
    """Loop-free but explicit: q (B, Tq, N, H), k/v (B, Tk, K, H); queries are the last Tq."""
    q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
    batch, q_len, num_heads, head_dim = q.shape
    kv_len, num_kv = k.shape[1], k.shape[2]
    groups = num_heads // num_kv
    scale = head_dim**-0.5 if scale is None else scale
    out = np.zeros_like(q)
    for b in range(batch):
        for h in range(num_heads):
            kh = h // groups
            scores = q[b, :, h] @ k[b, :, kh].T * scale
            if soft_cap is not None:
                scores = soft_cap * np.tanh(scores / soft_cap)
            i = np.arange(kv_len - q_len, kv_len)[:, None]
            j = np.arange(kv_len)[None, :]
            allowed = np.ones((q_len, kv_len), bool)
            if causal:
                allowed &= j <= i
            if window is not None:
                allowed &= i - j < window
            if padding_mask is not None:
                allowed &= np.asarray(padding_mask[b], bool)[None, :]
            scores = np.where(allowed, scores, -np.inf)
            row_max = np.max(scores, axis=-1, keepdims=True)
            row_max = np.where(np.isfinite(row_max), row_max, 0.0)
            weights = np.exp(scores - row_max)
            denom = weights.sum(-1, keepdims=True)
            weights = np.where(denom > 0, weights / np.where(denom > 0, denom, 1), 0)
            out[b, :, h] = weights @ v[b, :, kh]
    return out


def project_qkv(layer, x):
    """Queries, keys, values of a GroupedQueryAttention layer, in NumPy (norm + RoPE)."""
    import keras

    def weight(v):
        return keras.ops.convert_to_numpy(v)

    q = np.einsum("btd,dnh->btnh", x, weight(layer.query_dense.kernel))
    k = np.einsum("btd,dnh->btnh", x, weight(layer.key_dense.kernel))
    v = np.einsum("btd,dnh->btnh", x, weight(layer.value_dense.kernel))
    if layer.use_query_key_norm:
        q = rms_norm(q, weight(layer.query_norm.scale))
        k = rms_norm(k, weight(layer.key_norm.scale))
    positions = np.arange(x.shape[1])
    q = rope(q, positions, layer.rope_max_wavelength, layer.rope_scaling_factor)
    k = rope(k, positions, layer.rope_max_wavelength, layer.rope_scaling_factor)
    return q, k, v, weight(layer.output_dense.kernel)


def masked_attention(q, k, v, allowed, scale, soft_cap=None):
    """q (B,T,N,H), k/v (B,S,K,H), allowed (T,S) bool."""
    groups = q.shape[2] // k.shape[2]
    k = np.repeat(k, groups, axis=2)
    v = np.repeat(v, groups, axis=2)
    scores = np.einsum("btnh,bsnh->bnts", q, k) * scale
    if soft_cap is not None:
        scores = soft_cap * np.tanh(scores / soft_cap)
    scores = np.where(allowed, scores, -np.inf)
    scores = scores - scores.max(-1, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bnts,bsnh->btnh", weights, v)
