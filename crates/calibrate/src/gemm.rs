//! Dense matrix products through ndarray's safe front end to the `matrixmultiply` kernels, so
//! the crate stays free of `unsafe` while every big product runs as a real GEMM. The crate turns
//! on matrixmultiply's threading (both cores; `MATMUL_NUM_THREADS` overrides): measured 1.6× on an
//! idle 2-core machine for the KL epoch.

use ndarray::LinalgScalar;
use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};

/// How an operand's slice is laid out relative to the shape the product needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// Stored exactly as the `[rows, cols]` the product needs.
    RowMajor,
    /// Stored as the transpose, `[cols, rows]` row-major.
    Transposed,
}

fn view<T>(data: &[T], rows: usize, cols: usize, layout: Layout) -> ArrayView2<'_, T> {
    let shape = match layout {
        Layout::RowMajor => (rows, cols),
        Layout::Transposed => (cols, rows),
    };
    // Shapes are checked where the data enters the crate; a mismatch here is a bug.
    let v = ArrayView2::from_shape(shape, data).expect("gemm operand shape");
    match layout {
        Layout::RowMajor => v,
        Layout::Transposed => v.reversed_axes(),
    }
}

/// `c[m,n] = a[m,k] · b[k,n] + beta · c`, with `c` row-major.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul<T: LinalgScalar>(
    m: usize,
    k: usize,
    n: usize,
    a: &[T],
    a_layout: Layout,
    b: &[T],
    b_layout: Layout,
    beta: T,
    c: &mut [T],
) {
    let a = view(a, m, k, a_layout);
    let b = view(b, k, n, b_layout);
    let mut c = ArrayViewMut2::from_shape((m, n), c).expect("gemm output shape");
    general_mat_mul(T::one(), &a, &b, beta, &mut c);
}
