//! Names of partition inputs and outputs: the contract between the exporter and the runtime.

pub const INPUT_IDS: &str = "input_ids";
pub const POSITION_IDS: &str = "position_ids";
/// Additive attention bias `[1, 1, seq, past + seq]` (0 = attend, -inf = masked).
pub const ATTENTION_BIAS: &str = "attention_bias";
/// How many trailing positions get logits (1 while decoding, all of them when scoring).
pub const LOGITS_COUNT: &str = "logits_count";
/// Hidden state at the split layer: edge output, cloud input.
pub const HIDDEN: &str = "hidden";
/// Cloud output: next-token logits of the trailing `logits_count` positions.
pub const LOGITS: &str = "logits";
/// Cloud output: the final hidden state RMS-normalised without gain (exit-head training target).
pub const FINAL_STATE: &str = "final_state";

pub fn past_key(layer: usize) -> String {
    format!("past_key.{layer}")
}
pub fn past_value(layer: usize) -> String {
    format!("past_value.{layer}")
}
pub fn present_key(layer: usize) -> String {
    format!("present_key.{layer}")
}
pub fn present_value(layer: usize) -> String {
    format!("present_value.{layer}")
}
/// Edge output: logits of the exit head after `layer` layers.
pub fn exit_logits(layer: usize) -> String {
    format!("exit_logits.{layer}")
}
/// Edge output: the raw hidden state after `layer` layers (exit-head training input).
pub fn exit_state(layer: usize) -> String {
    format!("exit_state.{layer}")
}
/// Initializers of an exit head's translator (`weight` is `[in, out]`).
pub fn translator_weight(layer: usize) -> String {
    format!("exit.{layer}.translator.weight")
}
pub fn translator_bias(layer: usize) -> String {
    format!("exit.{layer}.translator.bias")
}
/// Whether an initializer is an exit head's translator (what `collm calibrate` rewrites).
pub fn is_translator(name: &str) -> bool {
    name.starts_with("exit.") && name.contains(".translator.")
}
