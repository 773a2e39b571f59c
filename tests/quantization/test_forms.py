"""How layer kernels map to the K-major matrices of the quantized kernels: exact inverses, and
rows x matrix reproduces the layer's own einsum (property-based over equations and sizes)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mpq.quantization._forms import ConvForm, EinsumForm

# Equations of every form EinsumDense accepts; sizes are drawn per letter.
EQUATIONS = [
    "...k,kn->...n",
    "abc,cd->abd",
    "abc,cde->abde",
    "abc,bcd->abd",  # b shared: one matrix per index of b
    "abcd,cde->abe",  # two contracted letters
    "ab...,bc->ac...",  # trailing ellipsis
    "...bc,cd->...bd",
    "abc,cd->ad",  # b summed away in the input
]


@settings(max_examples=40, deadline=None)
@given(
    equation=st.sampled_from(EQUATIONS),
    sizes=st.lists(st.integers(1, 4), min_size=8, max_size=8),
    ellipsis=st.lists(st.integers(1, 3), min_size=0, max_size=2),
)
def test_rows_times_matrix_is_the_einsum(equation, sizes, ellipsis):
    in_spec, rest = equation.split(",")
    w_spec = rest.split("->")[0]
    letters = sorted(set(in_spec.replace(".", "") + w_spec))
    size = dict(zip(letters, sizes, strict=False))
    x_shape = []
    for part in in_spec.split("..."):
        x_shape.append([size[c] for c in part])
    if "..." in in_spec:
        ell = list(ellipsis) or [2]
        x_shape = x_shape[0] + ell + x_shape[1]
    else:
        x_shape = x_shape[0]
    w = torch.randn([size[c] for c in w_spec], dtype=torch.float64)
    x = torch.randn(x_shape, dtype=torch.float64)
    form = EinsumForm.create(equation, tuple(w.shape))
    m = form.to_matrix(w)
    assert m.is_contiguous() and tuple(m.shape) == form.matrix_shape
    assert torch.equal(form.from_matrix(m), w)
    rows, meta = form.to_rows(x)
    m3 = m if form.S else m.unsqueeze(0)
    y = form.from_rows(torch.bmm(rows, m3.transpose(1, 2)), meta)
    torch.testing.assert_close(y, torch.einsum(equation, x, w))


@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(1, 5)))
@settings(max_examples=20, deadline=None)
def test_conv_kernels_become_output_channel_major(shape):
    w = torch.randn(shape)  # [kh, kw, cin, cout]
    form = ConvForm(shape)
    stored = form.to_stored(w)
    assert tuple(stored.shape) == (shape[3], shape[0], shape[1], shape[2])
    assert torch.equal(stored, w.permute(3, 0, 1, 2))
    assert torch.equal(form.from_matrix(form.to_matrix(w)), w)
