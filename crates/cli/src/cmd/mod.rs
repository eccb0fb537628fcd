pub mod bench;
pub mod calibrate;
pub mod export;
pub mod generate;
pub mod score;
pub mod tiny;
