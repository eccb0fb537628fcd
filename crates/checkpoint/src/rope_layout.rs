//! The Q/K row permutation llama.cpp's converter applies for interleaved rotary: per head, rows
//! viewed as `(2, head_dim/2)` are transposed to `(head_dim/2, 2)`.

use crate::model::Weight;

/// `order[r]` is the Hugging Face row that lands at GGUF row `r`.
pub fn interleaved_rope_row_order(n_heads: usize, head_dim: usize) -> Vec<usize> {
    let half = head_dim / 2;
    (0..n_heads)
        .flat_map(|h| (0..half).flat_map(move |j| (0..2).map(move |i| h * head_dim + i * half + j)))
        .collect()
}

/// Hugging Face (rotate-half) Q/K rows → GGUF (interleaved) rows.
pub fn to_interleaved_rope(w: &Weight, n_heads: usize) -> Weight {
    w.permute_rows(&interleaved_rope_row_order(n_heads, w.rows() / n_heads))
}

/// GGUF (interleaved) Q/K rows → Hugging Face (rotate-half) rows.
pub fn from_interleaved_rope(w: &Weight, n_heads: usize) -> Weight {
    let order = interleaved_rope_row_order(n_heads, w.rows() / n_heads);
    let mut inverse = vec![0; order.len()];
    for (dst, &src) in order.iter().enumerate() {
        inverse[src] = dst;
    }
    w.permute_rows(&inverse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_pairs_the_two_halves_of_each_head() {
        assert_eq!(interleaved_rope_row_order(2, 4), [0, 2, 1, 3, 4, 6, 5, 7]);
    }

    #[test]
    fn permutation_round_trips() {
        let w = Weight::Dense { rows: 8, cols: 2, data: (0..16).map(|v| v as f32).collect() };
        assert_eq!(from_interleaved_rope(&to_interleaved_rope(&w, 2), 2), w);
    }
}
