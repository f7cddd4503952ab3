//! ocellus: a real-time vision-language perception runtime for robots.
//!
//! (The crate documentation with the real-time contract is written as the modules land.)

pub mod config;
pub mod frame;
pub mod infer;
pub mod manifest;
pub mod pipeline;
pub mod prepare;
pub mod prompts;
pub mod scene;
pub mod sink;
pub mod source;
pub mod stats;
