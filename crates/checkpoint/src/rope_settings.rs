//! Rotary settings from GGUF metadata: the base frequency and the scalings llama.cpp applies
//! as plain divisors of each frequency; anything else is refused by name.

use collm_gguf::Metadata;

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct RopeSettings {
    pub theta: f32,
    /// One divisor per rotary frequency, or empty when no scaling applies.
    pub divisors: Vec<f32>,
}

/// Reads `{arch}.rope.*`. `freq_factors` is the `rope_freqs.weight` tensor (Llama 3.1), when
/// the file has one.
pub fn rope_settings(
    md: &Metadata,
    arch: &str,
    head_dim: usize,
    freq_factors: Option<Vec<f32>>,
) -> Result<RopeSettings> {
    let key = |k: &str| format!("{arch}.rope.{k}");
    if let Some(dims) = md.opt(&key("dimension_count"), Metadata::get_u32)?
        && dims as usize != head_dim
    {
        return Err(Error::Config(format!(
            "{} = {dims} rotates part of each head (head_dim {head_dim}): partial rotary is not supported",
            key("dimension_count")
        )));
    }
    let kind = md.opt(&key("scaling.type"), Metadata::get_str)?.unwrap_or("none");
    let factor = match kind {
        "none" => md.opt(&key("scale_linear"), Metadata::get_f32)?.unwrap_or(1.0),
        "linear" => md.opt(&key("scaling.factor"), Metadata::get_f32)?.unwrap_or(1.0),
        other => {
            return Err(Error::Config(format!(
                "{} = {other:?} is not supported (supported: none, linear, and Llama 3 rope_freqs)",
                key("scaling.type")
            )));
        }
    };
    if !(factor.is_finite() && factor > 0.0) {
        return Err(Error::Config(format!("rope scaling factor {factor} is not positive")));
    }
    let half = head_dim / 2;
    let divisors = match freq_factors {
        Some(f) if f.len() != half => {
            return Err(Error::Config(format!(
                "rope_freqs.weight has {} values, expected head_dim / 2 = {half}",
                f.len()
            )));
        }
        Some(f) => f.into_iter().map(|d| d * factor).collect(),
        None if factor != 1.0 => vec![factor; half],
        None => vec![],
    };
    if let Some(bad) = divisors.iter().find(|d| !(d.is_finite() && **d > 0.0)) {
        return Err(Error::Config(format!("rope frequency divisor {bad} is not positive")));
    }
    Ok(RopeSettings {
        theta: md.opt(&key("freq_base"), Metadata::get_f32)?.unwrap_or(10000.0),
        divisors,
    })
}

#[cfg(test)]
mod tests {
    use collm_gguf::Value;

    use super::*;

    fn md(entries: &[(&str, Value)]) -> Metadata {
        let mut md = Metadata::new();
        for (k, v) in entries {
            md.insert(*k, v.clone());
        }
        md
    }

    #[test]
    fn plain_rope_has_no_divisors_and_defaults_its_base() {
        let r = rope_settings(&md(&[]), "llama", 64, None).unwrap();
        assert_eq!(r, RopeSettings { theta: 10000.0, divisors: vec![] });
        let m = md(&[("qwen2.rope.freq_base", Value::F32(1e6))]);
        assert_eq!(rope_settings(&m, "qwen2", 64, None).unwrap().theta, 1e6);
    }

    #[test]
    fn linear_scaling_and_llama3_factors_divide_each_frequency() {
        let m = md(&[
            ("llama.rope.scaling.type", Value::String("linear".into())),
            ("llama.rope.scaling.factor", Value::F32(4.0)),
        ]);
        assert_eq!(rope_settings(&m, "llama", 8, None).unwrap().divisors, [4.0; 4]);
        let f = vec![1.0, 2.0, 8.0, 8.0];
        assert_eq!(rope_settings(&md(&[]), "llama", 8, Some(f.clone())).unwrap().divisors, f);
    }

    #[test]
    fn unsupported_rope_variants_are_refused_by_name() {
        let m = md(&[("llama.rope.scaling.type", Value::String("yarn".into()))]);
        let e = rope_settings(&m, "llama", 64, None).unwrap_err().to_string();
        assert!(e.contains("llama.rope.scaling.type = \"yarn\" is not supported"), "{e}");
        let m = md(&[("llama.rope.dimension_count", Value::U32(32))]);
        let e = rope_settings(&m, "llama", 64, None).unwrap_err().to_string();
        assert!(e.contains("partial rotary is not supported"), "{e}");
        let e = rope_settings(&md(&[]), "llama", 8, Some(vec![1.0; 3])).unwrap_err().to_string();
        assert!(e.contains("rope_freqs.weight has 3 values"), "{e}");
    }
}
