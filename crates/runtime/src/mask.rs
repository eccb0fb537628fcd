//! The additive attention bias fed to every partition: causal over one contiguous sequence.

/// `[seq, past + seq]` row-major: query `i` (at position `past + i`) sees keys `0..=past + i`.
pub fn causal_bias(past: usize, seq: usize) -> Vec<f32> {
    let total = past + seq;
    let mut bias = vec![f32::NEG_INFINITY; seq * total];
    for i in 0..seq {
        bias[i * total..i * total + past + i + 1].fill(0.0);
    }
    bias
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_query_sees_the_past_and_itself_but_not_the_future() {
        let b = causal_bias(2, 2);
        let inf = f32::NEG_INFINITY;
        assert_eq!(b, vec![0.0, 0.0, 0.0, inf, 0.0, 0.0, 0.0, 0.0]);
    }
}
