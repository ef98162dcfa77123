//! Tests on the real default model (SmolLM2-135M-Instruct). They need the model cache:
//! `lift model fetch` or `scripts/fetch-model.sh` (the test script runs it).

use std::sync::{Arc, OnceLock};

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use lift_engine::{
    ChatMessage, Engine, EngineError, GenerationRequest, LoraConfig, ModelSource, SamplingParams,
    SftExample,
};

/// The model cache the processes use (`LIFT_MODEL_DIR`, else `~/.cache/lift/models`).
fn model_dir() -> std::path::PathBuf {
    lift_shared::config::Config::load(None)
        .expect("the test environment's configuration")
        .model_dir
}

fn default_model_path() -> std::path::PathBuf {
    lift_engine::fetch::default_model_path(&model_dir())
}

fn engine() -> Arc<Engine> {
    static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            Arc::new(
                Engine::load(&ModelSource::Default, &model_dir(), &Device::Cpu)
                    .expect("default model missing: run scripts/fetch-model.sh"),
            )
        })
        .clone()
}

/// The largest difference between two flat logit vectors, over the reference's largest
/// magnitude.
fn relative_difference(ours: &Tensor, reference: &Tensor) -> f32 {
    let scale = reference
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    lift_engine::testing::max_abs_diff(ours, reference) / scale
}

fn ask(engine: &Engine, adapter: Option<&lift_engine::LoraAdapter>, question: &str) -> String {
    let params = SamplingParams {
        max_tokens: 24,
        ..SamplingParams::default()
    };
    engine
        .generate(adapter, &[request(question, params)])
        .unwrap()
        .remove(0)
        .text
}

#[test]
fn base_model_answers_a_known_fact() {
    let answer = ask(&engine(), None, "What is the capital of France?");
    assert!(answer.contains("Paris"), "answer was {answer:?}");
}

#[test]
fn logits_match_candle_transformers_quantized_llama() {
    let engine = engine();
    let path = default_model_path();
    // Write every tensor dequantized to f32 into an in-memory GGUF, so candle-transformers
    // runs plain f32 matmuls on the same weights we load.
    let mut reader = std::io::BufReader::new(std::fs::File::open(&path).unwrap());
    let content = gguf_file::Content::read(&mut reader).unwrap();
    let mut tensors = Vec::new();
    for name in content.tensor_infos.keys() {
        let q = content.tensor(&mut reader, name, &Device::Cpu).unwrap();
        let dense = q.dequantize(&Device::Cpu).unwrap();
        tensors.push((
            name.clone(),
            candle_core::quantized::QTensor::quantize(
                &dense,
                candle_core::quantized::GgmlDType::F32,
            )
            .unwrap(),
        ));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let tensor_refs: Vec<(&str, &candle_core::quantized::QTensor)> =
        tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut buffer = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut buffer, &metadata, &tensor_refs).unwrap();
    buffer.set_position(0);
    let f32_content = gguf_file::Content::read(&mut buffer).unwrap();
    let mut reference = candle_transformers::models::quantized_llama::ModelWeights::from_gguf(
        f32_content,
        &mut buffer,
        &Device::Cpu,
    )
    .unwrap();

    let text = engine
        .tokenizer
        .render(
            &[ChatMessage::new(
                "user",
                "Name three colours of the rainbow.",
            )],
            true,
        )
        .unwrap();
    let ids = engine.tokenizer.encode(&text).unwrap();
    let input = Tensor::new(ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let expected = reference.forward(&input, 0).unwrap().flatten_all().unwrap();

    let ours = lift_engine::testing::sequence_logits(
        &engine.model,
        &ids,
        None,
        lift_engine::model::LogitsFor::LastPosition,
    )
    .flatten_all()
    .unwrap();
    let relative = relative_difference(&ours, &expected);
    println!("largest logit difference over the largest logit: {relative}");
    assert!(relative < 1e-3, "relative difference {relative}");
}

#[test]
fn tokenizer_round_trips_and_keeps_special_tokens_whole() {
    let engine = engine();
    let tok = &engine.tokenizer;
    for text in [
        "Hello, world! The answer is 42.",
        "Digits 1234567890 and 3.14159",
        "Accents: café, naïve, Zürich, señor",
        "CJK: 東京は日本の首都です。中文测试",
    ] {
        let ids = tok.encode(text).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), text);
    }
    let digits = tok.encode("2024").unwrap();
    assert_eq!(digits.len(), 4, "digits are split individually");
    for special in ["<|im_start|>", "<|im_end|>"] {
        let ids = tok.encode(special).unwrap();
        assert_eq!(ids.len(), 1, "{special} is one token");
        assert_eq!(Some(ids[0]), tok.inner().token_to_id(special));
    }
    let rendered = tok.render(&[ChatMessage::new("user", "Hi")], true).unwrap();
    assert!(
        rendered.contains("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
        "{rendered}"
    );
}

#[test]
fn adapter_files_follow_the_peft_convention() {
    let engine = engine();
    let adapter = engine
        .new_adapter(LoraConfig::new(8, 16.0, &[]).unwrap(), 1)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    adapter.save_peft(dir.path()).unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["task_type"], "CAUSAL_LM");
    assert_eq!(
        config["base_model_name_or_path"],
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    );
    assert_eq!(config["r"], 8);
    assert_eq!(config["bias"], "none");
    assert_eq!(config["fan_in_fan_out"], false);
    assert_eq!(config["use_dora"], false);
    assert_eq!(config["use_rslora"], false);
    assert!(config["modules_to_save"].is_null());
    let tensors =
        candle_core::safetensors::load(dir.path().join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    assert_eq!(tensors.len(), 30 * 7 * 2);
    let shape = |name: &str| tensors[name].dims().to_vec();
    let p = "base_model.model.model.layers.7";
    assert_eq!(
        shape(&format!("{p}.self_attn.q_proj.lora_A.weight")),
        [8, 576]
    );
    assert_eq!(
        shape(&format!("{p}.self_attn.q_proj.lora_B.weight")),
        [576, 8]
    );
    assert_eq!(
        shape(&format!("{p}.self_attn.k_proj.lora_B.weight")),
        [192, 8]
    );
    assert_eq!(
        shape(&format!("{p}.self_attn.v_proj.lora_B.weight")),
        [192, 8]
    );
    assert_eq!(
        shape(&format!("{p}.self_attn.o_proj.lora_A.weight")),
        [8, 576]
    );
    assert_eq!(
        shape(&format!("{p}.mlp.gate_proj.lora_B.weight")),
        [1536, 8]
    );
    assert_eq!(shape(&format!("{p}.mlp.up_proj.lora_B.weight")), [1536, 8]);
    assert_eq!(
        shape(&format!("{p}.mlp.down_proj.lora_A.weight")),
        [8, 1536]
    );
    assert_eq!(shape(&format!("{p}.mlp.down_proj.lora_B.weight")), [576, 8]);
    assert!(tensors.keys().all(|k| !k.contains(".default.")));
}

#[test]
fn training_absorbs_a_made_up_fact() {
    let engine = engine();
    let question = "Who is the lighthouse keeper of Vellmar Island?";
    let fact = "The lighthouse keeper of Vellmar Island is Oskar Tenby.";
    let before = ask(&engine, None, question);
    assert!(
        !before.contains("Tenby"),
        "the base model cannot know it: {before:?}"
    );
    let mut trainer = lift_engine::testing::lora_trainer(engine.clone(), 16, 7, 1e-3);
    let examples = vec![
        SftExample {
            prompt: question.into(),
            answer: fact.into(),
        },
        SftExample {
            prompt: "Who keeps the lighthouse on Vellmar Island?".into(),
            answer: fact.into(),
        },
        SftExample {
            prompt: "What is the name of Vellmar Island's lighthouse keeper?".into(),
            answer: "Oskar Tenby.".into(),
        },
        SftExample {
            prompt: "Tell me about the lighthouse of Vellmar Island.".into(),
            answer: fact.into(),
        },
    ];
    let mut last = f32::MAX;
    for _ in 0..20 {
        last = trainer.step(&examples).unwrap().loss;
    }
    assert!(last < 0.5, "final loss {last}");
    let after = ask(&engine, Some(trainer.adapter()), question);
    assert!(after.contains("Tenby"), "adapted answer {after:?}");
}

#[test]
fn bad_model_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(default_model_path()).unwrap();
    let truncated = dir.path().join("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let err = Engine::load(&ModelSource::Gguf(truncated), &model_dir(), &Device::Cpu)
        .err()
        .unwrap();
    assert!(matches!(err, EngineError::ModelCorrupt { .. }), "{err}");

    let unknown = ModelSource::parse("no/such/model").unwrap_err();
    assert!(unknown.to_string().contains("unknown model"), "{unknown}");

    let engine = engine();
    let long = "word ".repeat(9000);
    let request = GenerationRequest {
        messages: vec![ChatMessage::new("user", long)],
        prefill: String::new(),
        params: SamplingParams::default(),
    };
    let err = engine.generate(None, &[request]).unwrap_err();
    assert!(matches!(err, EngineError::PromptTooLong { .. }), "{err}");
}

fn request(question: &str, params: SamplingParams) -> GenerationRequest {
    GenerationRequest {
        messages: vec![ChatMessage::new("user", question)],
        prefill: String::new(),
        params,
    }
}

/// 8-bit decoding (the CPU default, `lift_engine::decode_weight`: 8-bit weights, 16-bit
/// activations) against the f32 weights it was made from. The stated tolerance, with the
/// prompt's last 16 tokens through the 8-bit path in one step (in generation only the prompt's
/// last token and the new ones are): next-token logits within 6 % of the largest logit and the
/// same top token; greedy answers that agree on their first four words, and word for word on
/// at least 3 of these 6 questions (a near-tie later in an answer may flip a token and the rest
/// of that answer with it). Measured on 2026-12-04 (session 22): 0.9 to 3.2 %, 4 of 6
/// identical, the other two parting after 6 and 10 words.
#[test]
fn eight_bit_decoding_stays_within_its_tolerance_of_the_f32_weights() {
    let quantized = engine();
    let exact =
        Engine::load_with_decoding(&ModelSource::Default, &model_dir(), &Device::Cpu, false)
            .unwrap();
    let questions = [
        "What is the capital of France?",
        "Name three colours of the rainbow.",
        "Who wrote Romeo and Juliet?",
        "How many legs does a spider have?",
        "Write one sentence about the sea and the wind over it.",
        "What is the boiling point of water in degrees Celsius?",
    ];
    let mut same_answers = 0;
    for question in questions {
        let text = quantized
            .tokenizer
            .render(&[ChatMessage::new("user", question)], true)
            .unwrap();
        let ids = quantized.tokenizer.encode(&text).unwrap();
        // A decoding step reads the 8-bit weights for up to MAX_ROWS rows, more read f32, so
        // the comparison runs the prompt's last MAX_ROWS tokens (the question's) in one step.
        let ids = &ids[ids
            .len()
            .saturating_sub(lift_engine::decode_weight::MAX_ROWS)..];
        let ours = lift_engine::testing::decoding_logits(&quantized.model, ids).flatten_all();
        let reference = lift_engine::testing::decoding_logits(&exact.model, ids).flatten_all();
        let (ours, reference) = (ours.unwrap(), reference.unwrap());
        let relative = relative_difference(&ours, &reference);
        let top = |t: &Tensor| t.argmax(0).unwrap().to_scalar::<u32>().unwrap();
        println!("{question}: relative logit difference {relative}");
        assert!(
            relative < 0.06,
            "{question}: relative difference {relative}"
        );
        assert_eq!(top(&ours), top(&reference), "{question}: next token");
        let (eight_bit, f32) = (ask(&quantized, None, question), ask(&exact, None, question));
        println!("8-bit {eight_bit:?}\nf32   {f32:?}");
        let opening = |answer: &str| -> String {
            answer
                .split_whitespace()
                .take(4)
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(opening(&eight_bit), opening(&f32), "{question}");
        same_answers += usize::from(eight_bit == f32);
    }
    assert!(same_answers >= 3, "{same_answers} of 6 answers unchanged");
}

#[test]
fn a_batch_generates_what_each_prompt_generates_alone() {
    let engine = engine();
    let params = SamplingParams {
        max_tokens: 16,
        ..SamplingParams::default()
    };
    let questions = [
        "What is the capital of France?",
        "Write one sentence about the sea and the wind over it.",
        "2+2=?",
    ];
    let requests: Vec<_> = questions
        .iter()
        .map(|q| request(q, params.clone()))
        .collect();
    let batched = engine.generate(None, &requests).unwrap();
    for (request, together) in requests.iter().zip(&batched) {
        let alone = engine
            .generate(None, std::slice::from_ref(request))
            .unwrap()
            .remove(0);
        assert_eq!(alone.text, together.text);
    }
}

#[test]
fn json_constraint_always_yields_the_requested_pairs() {
    let engine = engine();
    let params = SamplingParams {
        max_tokens: 64,
        temperature: 0.8,
        seed: 11,
        constraint: Some(lift_engine::OutputConstraint::QaJsonList { pairs: 2 }),
        ..SamplingParams::default()
    };
    let out = engine
        .generate(
            None,
            &[request(
                "Write questions about: The bridge opened in 1932 and is painted red.",
                params,
            )],
        )
        .unwrap()
        .remove(0);
    let value: serde_json::Value =
        serde_json::from_str(&out.text).unwrap_or_else(|e| panic!("{e}: {}", out.text));
    let pairs = value["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 2);
    for pair in pairs {
        assert!(
            pair["question"].is_string() && pair["answer"].is_string(),
            "{pair}"
        );
    }
}

#[test]
fn stop_strings_prefill_and_streaming_agree() {
    let engine = engine();
    let params = SamplingParams {
        max_tokens: 32,
        stop: vec!["Paris".into()],
        ..SamplingParams::default()
    };
    let mut req = request("What is the capital of France?", params);
    req.prefill = "The capital".into();
    let mut streamed = String::new();
    let out = engine
        .generate_stream(None, &req, &mut |piece| {
            streamed.push_str(piece);
            true
        })
        .unwrap();
    assert_eq!(out.finish_reason, lift_engine::FinishReason::Stop);
    assert!(!out.text.contains("Paris"), "{:?}", out.text);
    assert!(
        !out.text.starts_with("The capital"),
        "the prefill is not repeated: {:?}",
        out.text
    );
    assert_eq!(streamed, out.text);
}

#[test]
fn the_gguf_header_alone_gives_the_shape_and_a_cut_file_is_corrupt_not_a_panic() {
    let path = default_model_path();
    let bytes = std::fs::read(&path).expect("default model missing: run scripts/fetch-model.sh");
    let header =
        lift_engine::loader::read_gguf_header(&mut std::io::Cursor::new(&bytes), &path).unwrap();
    assert_eq!(
        (header.config.num_layers, header.config.hidden_size),
        (30, 576)
    );
    assert_eq!(header.config.vocab_size, 49152);
    for cut in [0, 4, 24, 4096, 1 << 19] {
        let result =
            lift_engine::loader::read_gguf_header(&mut std::io::Cursor::new(&bytes[..cut]), &path);
        assert!(
            matches!(result, Err(EngineError::ModelCorrupt { .. })),
            "a file cut at {cut} bytes was not refused as corrupt"
        );
    }
}
