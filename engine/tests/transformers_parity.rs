//! Parity with Hugging Face transformers and PEFT, run as a peer process: a model transformers
//! writes loads in lift with its logits, and LoRA adapters cross both ways. Needs the peer
//! environment (`scripts/peer-env.sh`, which the test script runs); `LIFT_PEER_PYTHON` names
//! its interpreter.

// Test harness variables (scripts/test-env.sh), not process configuration.
#![allow(clippy::disallowed_methods)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use lift_engine::config::RopeScaling;
use lift_engine::loader::load_hf_dir;
use lift_engine::model::LogitsFor;
use lift_engine::testing::{max_abs_diff, sequence_logits};
use lift_engine::{
    ChatMessage, ChatTokenizer, Engine, GenerationRequest, LoraAdapter, ModelSource,
    SamplingParams, SftExample,
};

fn peer_python() -> PathBuf {
    let python = std::env::var_os("LIFT_PEER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache/lift-peer/bin/python")
        });
    assert!(
        python.is_file(),
        "no peer Python at {}: run scripts/peer-env.sh (transformers, PEFT and a CPU torch)",
        python.display()
    );
    python
}

/// Runs `tests/peer/<script>` with the peer Python; its failure fails the test with its stderr.
fn run_peer(script: &str, args: &[&std::path::Path]) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peer")
        .join(script);
    let output = Command::new(peer_python())
        .arg(&path)
        .args(args)
        .output()
        .expect("the peer Python runs");
    assert!(
        output.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[derive(serde::Deserialize)]
struct Reference {
    input_ids: Vec<u32>,
    logits: Vec<Vec<f32>>,
}

/// Llama 3.1/3.2 scaling (`rope_type: llama3`) changes the frequency of every long-wavelength
/// dimension pair; a wrong formula moves the logits at every position past the first.
#[test]
fn a_llama3_rope_scaled_model_gives_transformers_logits() {
    let dir = tempfile::tempdir().unwrap();
    run_peer("llama_rope_scaling.py", &[dir.path()]);
    ChatTokenizer::byte_level(300)
        .inner()
        .save(dir.path().join("tokenizer.json"), false)
        .unwrap();
    let reference: Reference =
        serde_json::from_slice(&std::fs::read(dir.path().join("reference.json")).unwrap()).unwrap();

    let (model, _) = load_hf_dir(dir.path(), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        model.config.rope_scaling,
        RopeScaling::Llama3 { factor, .. } if factor == 8.0
    ));
    let ours = sequence_logits(&model, &reference.input_ids, None, LogitsFor::AllPositions)
        .squeeze(0)
        .unwrap();
    let theirs = Tensor::new(reference.logits, &Device::Cpu).unwrap();
    let worst = max_abs_diff(&ours, &theirs);
    let scale = largest_magnitude(&theirs);
    assert!(
        worst <= 1e-4 * scale.max(1.0),
        "largest logit difference {worst} (largest logit {scale})"
    );
}

fn largest_magnitude(logits: &Tensor) -> f32 {
    logits
        .abs()
        .and_then(|a| a.max_all())
        .and_then(|m| m.to_scalar::<f32>())
        .unwrap()
}

fn last_logits(engine: &Engine, adapter: &LoraAdapter, ids: &[u32]) -> Tensor {
    sequence_logits(&engine.model, ids, Some(adapter), LogitsFor::LastPosition)
        .flatten_all()
        .unwrap()
}

#[derive(serde::Deserialize)]
struct PeftSide {
    logits: Vec<f32>,
    #[serde(default)]
    generated_ids: Vec<u32>,
}

#[derive(serde::Deserialize)]
struct PeftReport {
    lift_adapter: PeftSide,
    peft_adapter: PeftSide,
}

/// The hand-off both ways on the default model (SmolLM2-135M-Instruct, Q4_1 GGUF, which
/// transformers dequantizes to the same f32 weights): an adapter lift trained loads in PEFT
/// with lift's logits and greedy answer, and an adapter PEFT wrote loads in lift with PEFT's
/// logits. Logits agree within 1e-3 of the largest logit (f32 sums in another order over 30
/// layers).
#[test]
fn adapters_cross_between_lift_and_peft_on_the_default_model() {
    let model_dir = lift_shared::config::Config::load(None)
        .expect("the test environment's configuration")
        .model_dir;
    // PEFT decodes from the f32 weights; so does lift here, for a token-exact comparison.
    let engine = Arc::new(
        Engine::load_with_decoding(&ModelSource::Default, &model_dir, &Device::Cpu, false)
            .expect("default model missing: run scripts/fetch-model.sh"),
    );
    let mut trainer = lift_engine::testing::lora_trainer(engine.clone(), 8, 11, 2e-3);
    let fact = "The keeper of the Vellmar Island lighthouse is Oskar Tenby.";
    let examples = [
        "Who keeps the lighthouse on Vellmar Island?",
        "Who is the lighthouse keeper of Vellmar Island?",
    ]
    .map(|question| SftExample {
        prompt: question.into(),
        answer: fact.into(),
    });
    for _ in 0..8 {
        trainer.step(&examples).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let lift_adapter = dir.path().join("lift-adapter");
    trainer.adapter().save_peft(&lift_adapter).unwrap();

    let question = "Who keeps the lighthouse on Vellmar Island?";
    let prompt = engine
        .tokenizer
        .render(&[ChatMessage::new("user", question)], true)
        .unwrap();
    let ids = engine.tokenizer.encode(&prompt).unwrap();
    let max_new_tokens = 16;
    let answer = engine
        .generate(
            Some(trainer.adapter()),
            &[GenerationRequest {
                messages: vec![ChatMessage::new("user", question)],
                prefill: String::new(),
                params: SamplingParams {
                    max_tokens: max_new_tokens,
                    ..SamplingParams::default()
                },
            }],
        )
        .unwrap()
        .remove(0)
        .text;

    let peft_adapter = dir.path().join("peft-adapter");
    let request = serde_json::json!({
        "gguf": lift_engine::fetch::default_model_path(&model_dir),
        "lift_adapter": lift_adapter,
        "peft_adapter_dir": peft_adapter,
        "input_ids": ids,
        "max_new_tokens": max_new_tokens,
        "stop_ids": engine.tokenizer.stop_ids(),
    });
    let request_path = dir.path().join("request.json");
    std::fs::write(&request_path, request.to_string()).unwrap();
    let report_path = dir.path().join("report.json");
    run_peer("peft_adapter.py", &[&request_path, &report_path]);
    let report: PeftReport = serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();

    let ours = last_logits(&engine, trainer.adapter(), &ids);
    let scale = largest_magnitude(&ours);
    let peft_logits = |side: &PeftSide| Tensor::new(side.logits.as_slice(), &Device::Cpu).unwrap();
    let difference = max_abs_diff(&ours, &peft_logits(&report.lift_adapter));
    assert!(
        difference <= 1e-3 * scale,
        "lift's adapter in PEFT: largest logit difference {difference} (largest logit {scale})"
    );
    let peft_answer = engine
        .tokenizer
        .decode(&report.lift_adapter.generated_ids)
        .unwrap();
    assert_eq!(peft_answer.trim(), answer.trim(), "greedy answers");
    assert!(
        answer.contains("Tenby"),
        "the adapter was trained: {answer:?}"
    );

    let imported = LoraAdapter::load_peft(&peft_adapter, engine.config(), &Device::Cpu).unwrap();
    let theirs = last_logits(&engine, &imported, &ids);
    let difference = max_abs_diff(&theirs, &peft_logits(&report.peft_adapter));
    assert!(
        difference <= 1e-3 * scale,
        "PEFT's adapter in lift: largest logit difference {difference} (largest logit {scale})"
    );
    assert!(
        max_abs_diff(&theirs, &ours) > 10.0 * difference,
        "PEFT's random adapter changes the logits"
    );
}
