"""Numerical tolerances of the tests, derived from float32 rounding at the scale compared.

A tolerance states what float32 arithmetic can do, not what one machine printed: other
CPUs run other kernels (AVX-512, AVX2, SSE, scalar; oneDNN's and ATen's), which round
in other orders. Where both sides do the same arithmetic a test compares exactly
(``torch.equal``, ``==``); elementwise ``+ - * /`` and ``sqrt`` are correctly rounded in
IEEE arithmetic, so a chain of separate torch ops gives the same bits on every kernel.
What may differ between kernels:

- reductions (sums, dot products, matmul, convolution, pooling means): the summation
  order (blocking, SIMD width, threads) changes with the kernel;
- transcendental functions (exp, log, pow, cos): vectorised (SLEEF) and scalar libm
  agree only within about one ulp;
- fused multiply-adds inside one kernel (one rounding instead of two).

Every tolerance is built from `EPS` with the two functions below, at the magnitude of
what is compared, and a comment at the site says which operations it covers.
"""

import math

import torch

EPS = torch.finfo(torch.float32).eps  # 2**-23 ~ 1.19e-7; one rounding errs by <= EPS / 2 relative
EPS64 = torch.finfo(torch.float64).eps  # 2**-52 ~ 2.2e-16: for what is computed in float64 (metrics)

# F(4x4, 3x3)'s transforms: in one dimension, sum_j |A^T_ij| (|G| 1)_j (|B^T| 1)_j reaches 48
# where the direct convolution's sum of |terms| is 3 (all ones): 16x. In two dimensions
# the worst case is 16^2 for rounding errors all of one sign; of random signs, its square
# root. So a Winograd output errs by <= WINOGRAD_GAIN times the direct sum's bound.
WINOGRAD_GAIN = 16


def rounding(scale, ops=1, eps=EPS):
    """Error bound of ``ops`` float32 roundings on values of magnitude <= ``scale``.

    Each elementwise operation (``+ - * /``, ``sqrt``, and exp/log within an ulp) rounds
    its result with a relative error <= EPS / 2; errors carried through a chain of
    ``ops`` operations with no cancellation add up to <= ops * EPS / 2 * scale. Returns
    ``ops * EPS * scale``: the worst case with a factor 2 to spare. (A mean of ``k``
    values <= ``scale`` summed one by one is within ``rounding(scale, ops=k)``: each
    partial sum is <= k * scale, each rounding <= EPS/2 of it, and the division by k.)
    ``eps=EPS64`` for float64 arithmetic.
    """
    return ops * eps * scale


def reduction(k, scale, margin=8, eps=EPS):
    """Error bound of a float32 sum of ``k`` terms whose absolute values sum to ``scale``.

    A dot product, a convolution output or a matrix product entry with ``k`` products,
    summed in any order (kernels differ in blocking, SIMD width and threads). Each
    addition rounds with a relative error <= EPS / 2 of its partial sum; the errors have
    random signs, so their total grows like ``sqrt(k) * EPS / 2 * scale`` (the
    worst case ``k * EPS / 2 * scale`` needs every rounding to go the same way, which no
    real data does). Returns ``margin * sqrt(k) * EPS * scale``: twice the typical error
    with a further ``margin`` (8 unless said) to spare.
    """
    return margin * math.sqrt(k) * eps * scale


def network(model, scale, margin=8):
    """Error bound of a float32 convolutional network's outputs of magnitude <= ``scale``.

    Every convolution output is a sum of ``k`` products (``k`` = input channels x kernel
    area, the largest in the model), rounded as in `reduction`; in these ReLU networks a
    layer's sum of |terms| is of the size of its outputs, and the following layers carry
    its error to the outputs at the outputs' own relative size. The ``depth`` layers'
    errors (all convolutions counted, the parallel heads too: an overestimate) are
    independent and add in quadrature: ``margin * sqrt(depth * k) * EPS * scale``.
    """
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    k = max(c.in_channels // c.groups * c.kernel_size[0] * c.kernel_size[1] for c in convs)
    return margin * math.sqrt(len(convs) * k) * EPS * scale
