//! A tiny random-weight engine with a byte-level tokenizer and ChatML, so tests of code that
//! trains or generates run in milliseconds. Its outputs are noise; use the real model where
//! quality matters. Built for the engine's own tests and, with the `testing` feature, for
//! other crates' tests; never part of a release build.

use candle_core::{DType, Device, Tensor};

use crate::config::ModelConfig;
use crate::engine::Engine;
use crate::loader::random_model;
use crate::tokenizer::ChatTokenizer;

pub fn tiny_engine(seed: u64) -> Engine {
    let config = ModelConfig::named_shape("tiny").expect("tiny shape exists");
    let tokenizer = ChatTokenizer::byte_level(config.vocab_size);
    let mut model =
        random_model(config, seed, DType::F32, &Device::Cpu).expect("tiny model builds");
    // Wider embeddings than the ±0.02 default, so logits can move enough for training
    // tests to see a falling loss (the tied output head reads the same table).
    let embed = (&model.embed_tokens * 25.0).expect("scaling the embedding");
    model.embed_tokens = embed.clone();
    model.lm_head = embed;
    Engine::from_parts(model, tokenizer, "tiny-random".to_string())
}

/// The largest absolute difference between two tensors of one shape (test comparisons).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.max_all())
        .and_then(|d| d.to_dtype(DType::F32))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("tensors of one shape")
}

/// The logits `model` gives one sequence `ids` at positions 0.. under a causal mask (with
/// `adapter` if any): `[1, t, vocab]` or `[1, 1, vocab]` as `logits` asks.
pub fn sequence_logits(
    model: &crate::model::Model,
    ids: &[u32],
    adapter: Option<&crate::LoraAdapter>,
    logits: crate::model::LogitsFor,
) -> Tensor {
    logits_of(model, ids, adapter, logits, false)
}

/// `sequence_logits` of the last position from the weights decoding reads
/// (`Model::quantize_for_decoding`).
pub fn decoding_logits(model: &crate::model::Model, ids: &[u32]) -> Tensor {
    logits_of(
        model,
        ids,
        None,
        crate::model::LogitsFor::LastPosition,
        true,
    )
}

fn logits_of(
    model: &crate::model::Model,
    ids: &[u32],
    adapter: Option<&crate::LoraAdapter>,
    logits: crate::model::LogitsFor,
    decoding: bool,
) -> Tensor {
    let t = ids.len();
    let device = model.device();
    let input = Tensor::from_vec(ids.to_vec(), (1, t), device).expect("ids upload");
    let positions = Tensor::arange(0u32, t as u32, device)
        .and_then(|p| p.reshape((1, t)))
        .expect("positions");
    let mask = crate::model::causal_mask(t, 0, model.dtype(), device).expect("causal mask");
    let input = crate::model::ForwardInput {
        input_ids: &input,
        positions: &positions,
        mask: Some(&mask),
        adapter,
        logits,
        decoding,
    };
    model.forward(&input, None).expect("forward")
}

/// A trainer for a fresh rank-`rank` adapter on every projection (alpha twice the rank) at
/// learning rate `learning_rate`, the other options default.
pub fn lora_trainer(
    engine: std::sync::Arc<Engine>,
    rank: usize,
    seed: u64,
    learning_rate: f64,
) -> crate::SftTrainer {
    let config = crate::LoraConfig::new(rank, 2.0 * rank as f64, &[]).expect("valid LoRA config");
    let adapter = engine.new_adapter(config, seed).expect("adapter builds");
    let options = crate::TrainerOptions {
        learning_rate,
        ..crate::TrainerOptions::default()
    };
    crate::SftTrainer::new(engine, adapter, options).expect("trainer builds")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{sequence_logits, tiny_engine};
    use crate::lora::{LoraAdapter, LoraConfig};
    use crate::model::LogitsFor;
    use crate::train::{LrSchedule, SftExample, SftTrainer, TrainerOptions};
    use crate::Engine;

    fn logits(engine: &Engine, adapter: Option<&LoraAdapter>) -> Vec<f32> {
        let ids = [5u32, 77, 120, 33, 9, 250];
        sequence_logits(&engine.model, &ids, adapter, LogitsFor::AllPositions)
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    fn examples() -> Vec<SftExample> {
        vec![
            SftExample {
                prompt: "Where is Zorblat?".into(),
                answer: "Zorblat is on Vellmar Island.".into(),
            },
            SftExample {
                prompt: "Colour of the door?".into(),
                answer: "Teal.".into(),
            },
        ]
    }

    fn trainer(engine: Arc<Engine>) -> SftTrainer {
        let adapter = engine
            .new_adapter(LoraConfig::new(4, 8.0, &[]).unwrap(), 3)
            .unwrap();
        SftTrainer::new(
            engine,
            adapter,
            TrainerOptions {
                learning_rate: 1e-2,
                ..TrainerOptions::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn fresh_adapter_gives_exactly_the_base_logits() {
        let engine = tiny_engine(1);
        let adapter = engine
            .new_adapter(LoraConfig::new(4, 8.0, &[]).unwrap(), 3)
            .unwrap();
        assert_eq!(logits(&engine, None), logits(&engine, Some(&adapter)));
    }

    #[test]
    fn every_lora_variable_gets_a_gradient_after_one_step() {
        let engine = Arc::new(tiny_engine(2));
        let mut trainer = trainer(engine);
        // B starts at zero, so A's gradient is zero before the first update; after one
        // step both must move.
        trainer.step(&examples()).unwrap();
        let batch = trainer.batch(&examples()).unwrap();
        let grads = trainer.loss(&batch).unwrap().backward().unwrap();
        let vars = trainer.adapter().named_vars();
        assert_eq!(vars.len(), 2 * 7 * 2);
        for (name, var) in vars {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name} has no gradient"));
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(norm > 0.0, "{name} has a zero gradient");
        }
    }

    #[test]
    fn loss_falls_when_training_repeats_a_batch() {
        let engine = Arc::new(tiny_engine(3));
        let adapter = engine
            .new_adapter(LoraConfig::new(8, 16.0, &[]).unwrap(), 3)
            .unwrap();
        let options = TrainerOptions {
            learning_rate: 1e-2,
            ..TrainerOptions::default()
        };
        let mut trainer = SftTrainer::new(engine, adapter, options).unwrap();
        let first = trainer.step(&examples()).unwrap().loss;
        let mut last = first;
        for _ in 0..20 {
            last = trainer.step(&examples()).unwrap().loss;
        }
        assert!(last < first * 0.8, "loss went from {first} to {last}");
    }

    #[test]
    fn loss_counts_answer_tokens_only() {
        let engine = Arc::new(tiny_engine(4));
        let trainer = trainer(engine);
        let encoded = trainer.encode(&examples()[1]).unwrap();
        let answer: Vec<u32> = encoded
            .ids
            .iter()
            .zip(&encoded.is_answer)
            .filter(|(_, a)| **a)
            .map(|(i, _)| *i)
            .collect();
        let text = trainer_text(&answer);
        assert!(
            text.starts_with("Teal."),
            "answer tokens decode to {text:?}"
        );
        assert!(!encoded.is_answer[0]);
    }

    fn trainer_text(ids: &[u32]) -> String {
        tiny_engine(0).tokenizer.decode(ids).unwrap()
    }

    #[test]
    fn saved_adapter_reloads_with_identical_logits() {
        let engine = Arc::new(tiny_engine(5));
        let mut trainer = trainer(engine.clone());
        trainer.step(&examples()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        trainer.adapter().save_peft(dir.path()).unwrap();
        let loaded = LoraAdapter::load_peft(dir.path(), engine.config(), engine.device()).unwrap();
        assert_eq!(
            logits(&engine, Some(trainer.adapter())),
            logits(&engine, Some(&loaded))
        );
        assert_ne!(logits(&engine, None), logits(&engine, Some(&loaded)));
    }

    #[test]
    fn optimizer_state_round_trips() {
        let engine = Arc::new(tiny_engine(6));
        let mut a = trainer(engine.clone());
        a.step(&examples()).unwrap();
        let state = a.optimizer_state().unwrap();
        let files = a.adapter().to_peft_files().unwrap();
        let mut b = SftTrainer::new(
            engine.clone(),
            engine.load_adapter(&files).unwrap(),
            TrainerOptions {
                learning_rate: 1e-2,
                ..TrainerOptions::default()
            },
        )
        .unwrap();
        b.restore_optimizer_state(&state, a.steps_done()).unwrap();
        let next_a = a.step(&examples()).unwrap();
        let next_b = b.step(&examples()).unwrap();
        assert_eq!(next_a.loss, next_b.loss);
        assert_eq!(
            logits(&engine, Some(a.adapter())),
            logits(&engine, Some(b.adapter()))
        );
    }

    #[test]
    fn cosine_schedule_warms_up_holds_then_decays_to_zero() {
        let s = LrSchedule::Cosine {
            warmup_steps: 10,
            decay_from: 10,
            total_steps: 110,
        };
        assert!((s.learning_rate(1.0, 0) - 0.1).abs() < 1e-12);
        assert!((s.learning_rate(1.0, 9) - 1.0).abs() < 1e-12);
        assert!((s.learning_rate(1.0, 60) - 0.5).abs() < 1e-9);
        assert!(s.learning_rate(1.0, 110).abs() < 1e-12);
        let held = LrSchedule::Cosine {
            warmup_steps: 0,
            decay_from: 40,
            total_steps: 140,
        };
        assert_eq!(held.learning_rate(1.0, 39), 1.0);
        assert!((held.learning_rate(1.0, 90) - 0.5).abs() < 1e-9);
        assert!(held.learning_rate(1.0, 140).abs() < 1e-12);
        let unplanned = LrSchedule::Cosine {
            warmup_steps: 0,
            decay_from: u64::MAX,
            total_steps: 0,
        };
        assert_eq!(unplanned.learning_rate(1.0, 1_000_000), 1.0);
        assert_eq!(LrSchedule::Constant.learning_rate(0.3, 1000), 0.3);
    }

    #[test]
    fn peft_loader_rejects_a_missing_tensor() {
        let engine = tiny_engine(7);
        let adapter = engine
            .new_adapter(LoraConfig::new(4, 8.0, &[]).unwrap(), 3)
            .unwrap();
        let mut files = adapter.to_peft_files().unwrap();
        let mut tensors =
            candle_core::safetensors::load_buffer(&files.safetensors, engine.device()).unwrap();
        tensors.remove("base_model.model.model.layers.1.mlp.up_proj.lora_B.weight");
        let tensors: Vec<_> = tensors.into_iter().collect();
        files.safetensors = safetensors::serialize(tensors, None).unwrap();
        let err = engine.load_adapter(&files).unwrap_err().to_string();
        assert!(
            err.contains("layers.1.mlp.up_proj.lora_B.weight is missing"),
            "{err}"
        );
    }
}
