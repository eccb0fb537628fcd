//! The uniform draw that picks the token at a position, as a pure function of the generation's
//! seed and that position (counter-based, like Philox or Threefry, here a SplitMix64 mix of
//! the two). Whoever picks the token at a position — an exit head, the cloud verifying a draft,
//! the edge regenerating it after a rollback — uses the same draw, so a seeded generation is
//! the same however many times a position was decoded, and whichever side answered it.

/// The draw in `[0, 1)` that picks the token placed at `position` in a generation seeded with
/// `seed`.
pub fn uniform(seed: u64, position: u64) -> f64 {
    let mixed = mix(mix(seed ^ 0x6a09_e667_f3bc_c909).wrapping_add(position));
    // The top 53 bits, as a double in [0, 1).
    (mixed >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// SplitMix64's finaliser: a bijection on u64 that spreads every input bit over the output.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_always_gets_the_same_draw_and_neighbours_differ() {
        assert_eq!(uniform(7, 42), uniform(7, 42));
        assert_ne!(uniform(7, 42), uniform(7, 43));
        assert_ne!(uniform(7, 42), uniform(8, 42));
    }

    #[test]
    fn draws_are_in_the_unit_interval_and_look_uniform() {
        let n = 20_000;
        let draws: Vec<f64> = (0..n).map(|p| uniform(3, p)).collect();
        assert!(draws.iter().all(|u| (0.0..1.0).contains(u)));
        let mean = draws.iter().sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
        // Every tenth of the interval gets its share (± 10%).
        let mut bins = [0usize; 10];
        for u in &draws {
            bins[(u * 10.0) as usize] += 1;
        }
        assert!(bins.iter().all(|&b| (1800..2200).contains(&b)), "{bins:?}");
    }
}
