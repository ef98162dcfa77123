//! Contracts between stages that are not messages: LIFT's question prompt, which a trainer
//! trains on and `lift ask` asks with, and the JSON shape of question/answer pairs, which the
//! synthesis client asks a generator for and `lift serve` decodes under constraint.

use std::sync::LazyLock;

/// LIFT's prompt, the same at training and at question time (no document in it).
pub fn qa_prompt(title: &str, question: &str) -> String {
    format!("Please answer the question based on \"{title}\".\nQuestion: {question}\nAnswer:")
}

static QA_PAIRS_SCHEMA: LazyLock<serde_json::Value> = LazyLock::new(|| {
    serde_json::from_str(include_str!("qa_pairs.schema.json"))
        .expect("built-in QA pairs schema is valid JSON")
});

/// The JSON schema of a generator reply, `{"pairs": [{"question", "answer"}]}`, asking for
/// exactly `pairs` entries (`minItems` = `maxItems`), which vLLM's guided decoding enforces.
pub fn qa_pairs_schema(pairs: u32) -> serde_json::Value {
    let mut schema = QA_PAIRS_SCHEMA.clone();
    schema["properties"]["pairs"]["minItems"] = pairs.into();
    schema["properties"]["pairs"]["maxItems"] = pairs.into();
    schema
}

/// How many pairs a request's JSON schema asks for, if it is the QA pairs shape of
/// `qa_pairs_schema` (with or without item counts; 1 when it has none). `lift serve` uses it
/// to switch to the engine's constrained QA decoding.
pub fn qa_pairs_count(schema: &serde_json::Value) -> Option<usize> {
    let pairs = schema.get("properties")?.get("pairs")?;
    let count = |key: &str| pairs.get(key).and_then(serde_json::Value::as_u64);
    let wanted = count("maxItems").or(count("minItems")).unwrap_or(1);
    let mut shape = schema.clone();
    let pairs_shape = shape["properties"]["pairs"].as_object_mut()?;
    pairs_shape.remove("minItems");
    pairs_shape.remove("maxItems");
    if shape != *QA_PAIRS_SCHEMA {
        return None;
    }
    usize::try_from(wanted).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_describes_pairs() {
        let schema = qa_pairs_schema(3);
        assert_eq!(schema["required"], serde_json::json!(["pairs"]));
        assert_eq!(
            schema["properties"]["pairs"]["items"]["required"],
            serde_json::json!(["question", "answer"])
        );
        assert_eq!(schema["properties"]["pairs"]["minItems"], 3);
        assert_eq!(schema["properties"]["pairs"]["maxItems"], 3);
    }

    #[test]
    fn qa_pairs_shape_is_recognised_with_its_count() {
        assert_eq!(qa_pairs_count(&qa_pairs_schema(4)), Some(4));
        assert_eq!(qa_pairs_count(&QA_PAIRS_SCHEMA), Some(1));
        let mut other = qa_pairs_schema(2);
        other["properties"]["pairs"]["items"]["properties"]["source"] =
            serde_json::json!({"type": "string"});
        assert_eq!(qa_pairs_count(&other), None);
        assert_eq!(qa_pairs_count(&serde_json::json!({"type": "object"})), None);
    }

    #[test]
    fn the_prompt_names_the_document_and_ends_where_the_answer_starts() {
        let prompt = qa_prompt("Vellmar Island", "Who keeps the light?");
        assert!(prompt.contains("\"Vellmar Island\""));
        assert!(prompt.ends_with("Question: Who keeps the light?\nAnswer:"));
    }
}
