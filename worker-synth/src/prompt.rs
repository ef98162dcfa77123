//! Prompt templates, one set per backend (ARCHITECTURE.md, "A 135M model is a weak question
//! writer"): the built-in engine gets a few-shot text recipe, HTTP generators a system + user
//! prompt asking for JSON. The texts live in `prompts/` so they can be read and tuned without
//! touching code.

use std::sync::LazyLock;

use minijinja::{context, Environment};

use crate::generator::{GeneratorError, QaRequest};

const BUILTIN_FEWSHOT: &str = "builtin_fewshot.j2";
const BUILTIN_ANSWER_FIRST: &str = "builtin_answer_first.j2";
const JSON_SYSTEM: &str = "json_system.j2";
const JSON_USER: &str = "json_user.j2";
const RESTATE: &str = "restate.j2";

static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    for (name, source) in [
        (
            BUILTIN_FEWSHOT,
            include_str!("../prompts/builtin_fewshot.j2"),
        ),
        (
            BUILTIN_ANSWER_FIRST,
            include_str!("../prompts/builtin_answer_first.j2"),
        ),
        (JSON_SYSTEM, include_str!("../prompts/json_system.j2")),
        (JSON_USER, include_str!("../prompts/json_user.j2")),
        (RESTATE, include_str!("../prompts/restate.j2")),
    ] {
        // The sources are compiled in; `every_template_renders` proves they parse.
        env.add_template(name, source)
            .expect("built-in prompt templates are valid minijinja");
    }
    env
});

/// The user message of the built-in few-shot recipe; the reply is prefilled with `Question:`.
pub(crate) fn builtin_fewshot_user(sentence: &str) -> Result<String, GeneratorError> {
    render(BUILTIN_FEWSHOT, context! { sentence => sentence.trim() })
}

/// The user message of the built-in answer-first recipe: a question for a given answer; the
/// reply is prefilled with `Question:`.
pub(crate) fn builtin_answer_first_user(
    sentence: &str,
    answer: &str,
) -> Result<String, GeneratorError> {
    render(
        BUILTIN_ANSWER_FIRST,
        context! { sentence => sentence.trim(), answer => answer.trim() },
    )
}

/// The user message asking for a rewording of a sentence, for every backend; the reply is
/// the rewording alone.
pub(crate) fn restate_user(sentence: &str) -> Result<String, GeneratorError> {
    render(RESTATE, context! { sentence => sentence.trim() })
}

/// The system and user messages for an HTTP generator asked for JSON pairs.
pub(crate) fn json_messages(request: &QaRequest) -> Result<(String, String), GeneratorError> {
    let system = render(JSON_SYSTEM, context! {})?;
    let user = render(
        JSON_USER,
        context! {
            title => request.title.trim(),
            left_context => request.left_context.trim(),
            sentence => request.sentence.trim(),
            pairs_wanted => request.pairs_wanted.max(1),
            answer => request.answer.as_deref().map(str::trim),
        },
    )?;
    Ok((system, user))
}

fn render(name: &str, values: minijinja::Value) -> Result<String, GeneratorError> {
    TEMPLATES
        .get_template(name)
        .and_then(|template| template.render(values))
        .map(|text| text.trim().to_string())
        .map_err(|error| GeneratorError::Prompt(format!("{name}: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(pairs_wanted: u32, left_context: &str) -> QaRequest {
        QaRequest {
            title: "Eiffel Tower".to_string(),
            sentence: " It was completed in 1889. ".to_string(),
            left_context: left_context.to_string(),
            pairs_wanted,
            temperature: 0.2,
            seed: 0,
            model: None,
            answer: None,
        }
    }

    #[test]
    fn every_template_renders() {
        let fewshot = builtin_fewshot_user("Paris is in France.").unwrap();
        assert!(fewshot.ends_with("Sentence: Paris is in France."));
        assert!(fewshot.matches("Question:").count() == 2);
        let answer_first = builtin_answer_first_user("Paris is in France.", "France").unwrap();
        assert!(answer_first.ends_with("Sentence: Paris is in France.\nAnswer: France"));
        let restate = restate_user(" Paris is in France. ").unwrap();
        assert!(
            restate.ends_with("numbers:\n\nParis is in France."),
            "{restate}"
        );
        let (system, user) = json_messages(&request(3, "The tower stands in Paris.")).unwrap();
        assert!(system.contains(r#"{"pairs": [{"question": "...", "answer": "..."}]}"#));
        assert!(user.starts_with("Document: \"Eiffel Tower\""));
        assert!(
            user.contains("Text before the sentence:\n\"\"\"\nThe tower stands in Paris.\n\"\"\"")
        );
        assert!(user.contains("\"\"\"\nIt was completed in 1889.\n\"\"\""));
        assert!(user.ends_with("Write 3 question/answer pairs about the sentence."));
    }

    #[test]
    fn user_prompt_without_context_omits_the_section() {
        let (_, user) = json_messages(&request(1, "  ")).unwrap();
        assert!(!user.contains("Text before"));
        assert!(user.ends_with("Write 1 question/answer pair about the sentence."));
    }
}
