"""Conv arithmetic: the course's output-size formula, used to derive flatten sizes (never hard-coded)."""

from __future__ import annotations


def conv_output_size(size: int, kernel: int, *, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """W_out = floor((W_in + 2P - D(F-1) - 1) / S) + 1, for a convolution or a pooling layer.

    >>> conv_output_size(28, 3, padding=1)
    28
    >>> conv_output_size(28, 2, stride=2)
    14
    """
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
