"""Independent numpy references, written from the formulas with loops in float64.

The SISWS formula, a locally connected layer and its gradients, the low-rank
locally connected layer, and local response normalisation.
"""

import numpy as np


def same_padding(length, kernel, stride):
    out = -(-length // stride)
    total = max((out - 1) * stride + kernel - length, 0)
    return out, total // 2


def conv2d(x, kernel, stride, padding):
    """Plain cross-correlation, NHWC, as Keras's Conv2D."""
    batch, rows, cols, _ = x.shape
    kh, kw, _, out_channels = kernel.shape
    if padding == "same":
        out_rows, top = same_padding(rows, kh, stride)
        out_cols, left = same_padding(cols, kw, stride)
        pad_rows = max((out_rows - 1) * stride + kh - rows, 0)
        pad_cols = max((out_cols - 1) * stride + kw - cols, 0)
        x = np.pad(x, [(0, 0), (top, pad_rows - top), (left, pad_cols - left), (0, 0)])
    else:
        out_rows, out_cols = (rows - kh) // stride + 1, (cols - kw) // stride + 1
    out = np.zeros((batch, out_rows, out_cols, out_channels), np.float64)
    for i in range(out_rows):
        for j in range(out_cols):
            patch = x[:, i * stride : i * stride + kh, j * stride : j * stride + kw, :]
            out[:, i, j] = np.tensordot(patch, kernel, axes=([1, 2, 3], [0, 1, 2]))
    return out


def similarities(centroids, sigma, rows, cols, scaling, kind, normalize):
    """`(rows, cols, G, S)`: d = Sigma_s (c_s - p_ij), exp(-|d|^2) or 1/(1+|d|)."""
    ys, xs = np.linspace(0, scaling, rows), np.linspace(0, scaling, cols)
    groups, count = centroids.shape[:2]
    out = np.zeros((rows, cols, groups, count))
    for i in range(rows):
        for j in range(cols):
            p = np.array([ys[i], xs[j]])
            for g in range(groups):
                for s in range(count):
                    d = sigma[g, s] @ (centroids[g, s] - p)
                    norm2 = float(d @ d)
                    out[i, j, g, s] = np.exp(-norm2) if kind == "exp" else 1 / (1 + np.sqrt(norm2))
    if normalize:
        out /= out.sum(-1, keepdims=True)
    return out


def sisws(
    x,
    kernel,
    bias,
    centroids,
    sigma,
    filters,
    stride,
    padding,
    scaling=1.0,
    kind="exp",
    normalize=True,
    activation=lambda v: v,
):
    """activation(sum_s S[i, j, f or 0, s] * (conv(x)[..., f*S+s] + bias[f*S+s]))."""
    count = centroids.shape[1]
    conv = conv2d(x.astype(np.float64), kernel.astype(np.float64), stride, padding) + bias
    rows, cols = conv.shape[1:3]
    sims = similarities(centroids, sigma, rows, cols, scaling, kind, normalize)
    out = np.zeros(conv.shape[:3] + (filters,))
    for f in range(filters):
        g = f if centroids.shape[0] > 1 else 0
        for s in range(count):
            out[..., f] += sims[:, :, g, s] * conv[..., f * count + s]
    return activation(out)


def locally_connected(x, kernel, bias, strides, padding):
    """Unshared-weight 2D layer, NHWC: a `(H', W', kh, kw, C, F)` kernel, `(H', W', F)` bias.

    Each output cell is the dot product of its own kernel with the input
    window under it, the input padded as Keras's Conv2D pads (odd pixel at
    the bottom and right for "same").
    """
    _, rows, cols, _ = x.shape
    out_rows, out_cols, kh, kw = kernel.shape[:4]
    (sh, sw) = strides
    if padding == "same":
        pad_rows = max((out_rows - 1) * sh + kh - rows, 0)
        pad_cols = max((out_cols - 1) * sw + kw - cols, 0)
        x = np.pad(
            x,
            [
                (0, 0),
                (pad_rows // 2, pad_rows - pad_rows // 2),
                (pad_cols // 2, pad_cols - pad_cols // 2),
                (0, 0),
            ],
        )
    x = x.astype(np.float64)
    out = np.zeros((x.shape[0], out_rows, out_cols, kernel.shape[-1]))
    for i in range(out_rows):
        for j in range(out_cols):
            window = x[:, i * sh : i * sh + kh, j * sw : j * sw + kw, :]
            out[:, i, j] = np.tensordot(window, kernel[i, j], axes=([1, 2, 3], [0, 1, 2]))
    return out + (0 if bias is None else bias)


def locally_connected_gradients(x, kernel, upstream, strides, padding):
    """Gradients of `sum(locally_connected(x, kernel, bias) * upstream)`: input, kernel, bias."""
    _, rows, cols, _ = x.shape
    out_rows, out_cols, kh, kw = kernel.shape[:4]
    (sh, sw) = strides
    top = left = 0
    if padding == "same":
        top = max((out_rows - 1) * sh + kh - rows, 0) // 2
        left = max((out_cols - 1) * sw + kw - cols, 0) // 2
    # Zeros wherever a window reaches past the input (the padding).
    padded_rows = max(top + rows, (out_rows - 1) * sh + kh)
    padded_cols = max(left + cols, (out_cols - 1) * sw + kw)
    x_pad = np.zeros((x.shape[0], padded_rows, padded_cols, x.shape[3]))
    x_pad[:, top : top + rows, left : left + cols] = x
    d_pad = np.zeros_like(x_pad)
    d_kernel = np.zeros(kernel.shape)
    for i in range(out_rows):
        for j in range(out_cols):
            rs, cs = slice(i * sh, i * sh + kh), slice(j * sw, j * sw + kw)
            g = upstream[:, i, j].astype(np.float64)  # (batch, F)
            d_kernel[i, j] = np.tensordot(x_pad[:, rs, cs], g, axes=([0], [0]))
            d_pad[:, rs, cs] += np.tensordot(g, kernel[i, j], axes=([1], [3]))
    d_inputs = d_pad[:, top : top + rows, left : left + cols]
    return d_inputs, d_kernel, upstream.sum(0)


def low_rank_locally_connected(
    x,
    bases,
    strides,
    padding,
    bias=None,
    row_logits=None,
    col_logits=None,
    logits=None,
    row_bias=None,
    col_bias=None,
    cell_bias=None,
):
    """LRLC, NHWC: `(kh, kw, C, F, K)` bases mixed per output cell by a softmax over K.

    The logits of cell `(i, j)` are `row_logits[i] + col_logits[j]`, or
    `logits[i, j]`; its kernel is `sum_k softmax(logits)_k * bases[..., k]`,
    its bias `bias[f]` plus `row_bias[i] + col_bias[j]` or `cell_bias[i, j]`.
    Each cell's kernel and bias then go through `locally_connected`.
    """
    if logits is None:
        out_rows, out_cols = len(row_logits), len(col_logits)
    else:
        out_rows, out_cols = logits.shape[:2]
    kh, kw, channels, filters, rank = bases.shape
    kernels = np.zeros((out_rows, out_cols, kh, kw, channels, filters))
    biases = np.zeros((out_rows, out_cols, filters))
    for i in range(out_rows):
        for j in range(out_cols):
            if logits is None:
                z = np.asarray(row_logits[i], np.float64) + col_logits[j]
            else:
                z = np.asarray(logits[i, j], np.float64)
            weights = np.exp(z - z.max())
            weights /= weights.sum()
            for k in range(rank):
                kernels[i, j] += weights[k] * bases[..., k]
            if bias is not None:
                biases[i, j] += bias
            if row_bias is not None:
                biases[i, j] += row_bias[i] + col_bias[j]
            if cell_bias is not None:
                biases[i, j] += cell_bias[i, j]
    return locally_connected(x, kernels, biases, strides, padding)


def local_response_normalization(x, radius=5, bias=1.0, alpha=1e-4, beta=0.75):
    """`x / (bias + alpha * sum of x^2 over channels d - radius .. d + radius) ** beta`."""
    squares = np.square(x.astype(np.float64))
    channels = x.shape[-1]
    window = np.stack(
        [squares[..., max(0, d - radius) : d + radius + 1].sum(-1) for d in range(channels)], -1
    )
    return x / (bias + alpha * window) ** beta
