//! What a benchmark ran on: the CPU model and its vector extensions (which kernels ONNX Runtime
//! and llama.cpp can pick), and how busy the machine was. Ratios between engines depend on the
//! CPU, so every result names it.

/// Vector extensions that decide which matrix kernels run, in the order they are reported.
const VECTOR_FLAGS: &[&str] = &[
    "sse4_2",
    "avx",
    "f16c",
    "fma",
    "avx2",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
];

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Cpu {
    pub model: String,
    pub logical_cores: usize,
    /// The vector extensions of [`VECTOR_FLAGS`] the CPU has.
    pub vector_extensions: Vec<String>,
}

/// Parses `/proc/cpuinfo` text (x86 layout; other layouts give an unknown model).
pub fn parse_cpuinfo(text: &str) -> Cpu {
    let field = |name: &str| {
        text.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().to_string())
    };
    let flags: Vec<String> = field("flags")
        .map(|f| f.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    Cpu {
        model: field("model name").unwrap_or_else(|| "unknown CPU".to_string()),
        logical_cores: text.lines().filter(|l| l.starts_with("processor")).count(),
        vector_extensions: VECTOR_FLAGS
            .iter()
            .filter(|f| flags.iter().any(|g| g == *f))
            .map(|f| f.to_string())
            .collect(),
    }
}

pub fn cpu() -> Cpu {
    parse_cpuinfo(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default())
}

/// The 1-, 5- and 15-minute load averages.
pub fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_cores_and_vector_extensions_come_from_cpuinfo() {
        let text = "processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_vnni amx_tile\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 9R14\n";
        let cpu = parse_cpuinfo(text);
        assert_eq!(cpu.model, "AMD EPYC 9R14");
        assert_eq!(cpu.logical_cores, 2);
        assert_eq!(
            cpu.vector_extensions,
            ["sse4_2", "avx", "fma", "avx2", "avx512f", "avx512_vnni", "amx_tile"]
        );
        assert_eq!(parse_cpuinfo("").model, "unknown CPU");
    }
}
