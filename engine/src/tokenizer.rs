//! Tokenizer plus the model's own chat template (Jinja, rendered with minijinja).

use minijinja::{context, Environment, Error as JinjaError, ErrorKind};
use serde::{Deserialize, Serialize};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

use crate::error::{EngineError, Result};

/// Used when a model ships no chat template.
const CHATML_TEMPLATE: &str = "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.to_string(),
            content: content.into(),
        }
    }
}

/// Vocabulary pieces read from a GGUF file (`tokenizer.ggml.*`).
pub struct GgufVocab {
    pub tokens: Vec<String>,
    pub merges: Vec<String>,
    pub token_types: Vec<i32>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub chat_template: Option<String>,
}

pub struct ChatTokenizer {
    tokenizer: Tokenizer,
    template: String,
    bos_token: String,
    eos_token: String,
    /// Ids that end an assistant turn.
    stop_ids: Vec<u32>,
    pad_id: u32,
}

impl ChatTokenizer {
    pub fn new(
        tokenizer: Tokenizer,
        template: Option<String>,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self> {
        let template = template.unwrap_or_else(|| CHATML_TEMPLATE.to_string());
        let bos_token = bos_token.unwrap_or_default();
        let eos_token = eos_token.unwrap_or_default();
        let mut stop_ids: Vec<u32> = [
            "<|im_end|>",
            "<|eot_id|>",
            "<|end_of_text|>",
            "<|endoftext|>",
        ]
        .iter()
        .chain(std::iter::once(&eos_token.as_str()))
        .filter_map(|t| tokenizer.token_to_id(t))
        .collect();
        stop_ids.sort_unstable();
        stop_ids.dedup();
        let pad_id = stop_ids.first().copied().unwrap_or(0);
        let this = Self {
            tokenizer,
            template,
            bos_token,
            eos_token,
            stop_ids,
            pad_id,
        };
        // Fail at load, not at the first request, when the template cannot be rendered.
        this.render(&[ChatMessage::new("user", "hi")], true)?;
        Ok(this)
    }

    /// A byte-level tokenizer without merges, with ChatML specials, padded to `vocab_size`
    /// entries so it fits a model of any vocabulary: for models of random weights (the
    /// benchmarks' shapes and the tests' tiny engine), which have no vocabulary of their own.
    pub fn byte_level(vocab_size: usize) -> Self {
        let mut bytes: Vec<char> = ByteLevel::alphabet().into_iter().collect();
        bytes.sort_unstable();
        let mut tokens: Vec<String> = bytes.into_iter().map(String::from).collect();
        let mut token_types = vec![1; tokens.len()];
        for special in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] {
            tokens.push(special.to_string());
            token_types.push(3);
        }
        while tokens.len() < vocab_size {
            // Plain entries: without merges the tokenizer never produces them.
            tokens.push(format!("<unused_{}>", tokens.len()));
            token_types.push(1);
        }
        let vocab = GgufVocab {
            tokens,
            merges: Vec::new(),
            token_types,
            bos_id: None,
            eos_id: Some(258),
            chat_template: None,
        };
        Self::from_gguf_vocab(vocab).expect("a byte-level vocabulary always builds")
    }

    /// Rebuilds a byte-level BPE tokenizer from GGUF metadata (no tokenizer.json ships in a
    /// GGUF). The pre-tokenizer is SmolLM2's: individual digits, then byte-level.
    pub fn from_gguf_vocab(vocab: GgufVocab) -> Result<Self> {
        let ids: tokenizers::models::bpe::Vocab = vocab
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let merges = vocab
            .merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| EngineError::Tokenizer(format!("malformed merge `{m}`")))
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(ids, merges)
            .build()
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        let mut tokenizer = Tokenizer::new(bpe);
        tokenizer.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
        ]))));
        tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
        let special: Vec<AddedToken> = vocab
            .token_types
            .iter()
            .enumerate()
            .filter(|(_, &kind)| kind == 3)
            .filter_map(|(i, _)| vocab.tokens.get(i))
            .map(|t| AddedToken::from(t.clone(), true))
            .collect();
        tokenizer.add_special_tokens(&special);
        let token = |id: Option<u32>| id.and_then(|i| vocab.tokens.get(i as usize).cloned());
        Self::new(
            tokenizer,
            vocab.chat_template,
            token(vocab.bos_id),
            token(vocab.eos_id),
        )
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Renders a conversation with the model's template.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<String, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template("chat", &self.template)
            .map_err(|e| EngineError::Template(e.to_string()))?;
        let template = env
            .get_template("chat")
            .map_err(|e| EngineError::Template(e.to_string()))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .map_err(|e| EngineError::Template(e.to_string()))
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| EngineError::Tokenizer(e.to_string()))
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::{ChatMessage, ChatTokenizer};

    /// Meta-Llama-3-8B-Instruct's template, as shipped in its tokenizer_config.json.
    const LLAMA3_TEMPLATE: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

    #[test]
    fn llama3_and_chatml_templates_render() {
        let inner = ChatTokenizer::byte_level(300).inner().clone();
        let llama3 = ChatTokenizer::new(
            inner.clone(),
            Some(LLAMA3_TEMPLATE.to_string()),
            Some("<|begin_of_text|>".into()),
            Some("<|eot_id|>".into()),
        )
        .unwrap();
        let messages = [
            ChatMessage::new("system", "Be brief. "),
            ChatMessage::new("user", "Hi"),
        ];
        assert_eq!(
            llama3.render(&messages, true).unwrap(),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        let chatml = ChatTokenizer::new(inner, None, None, None).unwrap();
        assert_eq!(
            chatml.render(&messages[1..], true).unwrap(),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn a_template_that_raises_is_a_clear_error() {
        let inner = ChatTokenizer::byte_level(300).inner().clone();
        let template = "{{ raise_exception('only user messages') }}".to_string();
        let error = ChatTokenizer::new(inner, Some(template), None, None)
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("only user messages"), "{error}");
    }
}
