"""Per-layer key/value caches for decoding: ring buffers for local layers, full length for global.

A cache is a `(key, value)` pair of tensors `(batch, cache_size, num_key_value_heads, head_dim)`.
Position `p` always lives in slot `p % cache_size`; a global layer's cache is as long as the
sequence, so the formula reduces to slot `p`. A sliding-window layer only ever needs the last
`sliding_window_size` keys, so its cache is that long (KerasHub gives every layer the full length).
"""

from keras import ops


def cache_length(sliding_window_size, max_length):
    """Slots a layer needs to decode up to `max_length` tokens."""
    if sliding_window_size is None:
        return max_length
    return min(sliding_window_size, max_length)


def empty_cache(batch_size, cache_size, num_key_value_heads, head_dim, dtype):
    shape = (batch_size, cache_size, num_key_value_heads, head_dim)
    return ops.zeros(shape, dtype=dtype), ops.zeros(shape, dtype=dtype)


def slot_positions(cache_size, last_position):
    """Token position held in each slot after writing `last_position`; negative if empty.

    Slot `s` holds the latest position `p <= last_position` with `p % cache_size == s`.
    """
    slots = ops.arange(cache_size, dtype="int32")
    last_position = ops.cast(last_position, "int32")
    return last_position - ops.mod(last_position - slots, cache_size)


def write_prefill(cache, new):
    """Write positions `0 .. P-1` (static P) into an empty cache."""
    cache_size, prompt_length = cache.shape[1], new.shape[1]
    new = ops.cast(new, cache.dtype)
    if prompt_length <= cache_size:
        return ops.slice_update(cache, (0, 0, 0, 0), new)
    # Only the last `cache_size` positions survive; rotate them into their slots.
    tail = new[:, prompt_length - cache_size :]
    return ops.roll(tail, shift=(prompt_length - cache_size) % cache_size, axis=1)


def write_decode(cache, new, index, update_mask=None):
    """Write one position `index` (scalar tensor) into slot `index % cache_size`.

    `update_mask` `(batch,)`: rows where it is False keep the slot's old content (a prompt
    token already written by the prefill, whose prefill keys must not be replaced).
    """
    cache_size = ops.shape(cache)[1]
    slot = ops.mod(ops.cast(index, "int32"), cache_size)
    zero = ops.zeros((), "int32")
    new = ops.cast(new, cache.dtype)
    if update_mask is not None:
        old = ops.slice(cache, (zero, slot, zero, zero), ops.shape(new))
        new = ops.where(ops.cast(update_mask, "bool")[:, None, None, None], new, old)
    return ops.slice_update(cache, (zero, slot, zero, zero), new)
