//! PEFT adapter import (adapter_config.json plus the safetensors header and data, as a job's
//! adapter comes back from the store or a user) on any bytes, against a tiny model: an error
//! or an adapter of the model's shape, never a panic.
#![no_main]

use std::sync::OnceLock;

use candle_core::Device;
use libfuzzer_sys::fuzz_target;
use lift_engine::{Engine, LoraAdapter, PeftFiles};

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| lift_engine::testing::tiny_engine(1))
}

fuzz_target!(|input: (&[u8], &[u8])| {
    let (config_json, safetensors) = input;
    let engine = engine();
    let files = PeftFiles {
        safetensors: safetensors.to_vec(),
        config_json: config_json.to_vec(),
    };
    let _ = LoraAdapter::from_peft_files(&files, engine.config(), &Device::Cpu);
});
