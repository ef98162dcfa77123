//! Answer metrics. Exact match and F1 follow the official SQuAD v2.0 evaluation script
//! (normalise, then compare whole strings or bags of tokens; the best gold answer counts), so
//! our numbers compare with published ones.

use std::collections::HashMap;

/// SQuAD's normalisation: lower case, no punctuation, no articles (a, an, the), single spaces.
pub fn normalize_answer(text: &str) -> String {
    let lowered = text.to_lowercase();
    // Python's `string.punctuation`, as the official script: ASCII only, so "—" stays.
    let without_punctuation: String = lowered
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    remove_articles(&without_punctuation)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The official `re.sub(r"\b(a|an|the)\b", " ", text)`: an article is a whole run of word
/// characters, which may touch punctuation that survived (the "the" of "the—normans" goes).
fn remove_articles(text: &str) -> String {
    let is_word_char = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(is_word_char) {
        out.push_str(&rest[..start]);
        let word_len = rest[start..]
            .find(|c: char| !is_word_char(c))
            .unwrap_or(rest.len() - start);
        let word = &rest[start..start + word_len];
        out.push_str(if matches!(word, "a" | "an" | "the") {
            " "
        } else {
            word
        });
        rest = &rest[start + word_len..];
    }
    out.push_str(rest);
    out
}

fn tokens(text: &str) -> Vec<String> {
    normalize_answer(text)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// 1 when the normalised prediction equals a normalised gold answer, else 0.
pub fn exact_match(prediction: &str, golds: &[String]) -> f64 {
    let prediction = normalize_answer(prediction);
    let hit = golds
        .iter()
        .any(|gold| normalize_answer(gold) == prediction);
    if hit {
        1.0
    } else {
        0.0
    }
}

/// The best token F1 of the prediction against any gold answer (0 without golds).
pub fn token_f1(prediction: &str, golds: &[String]) -> f64 {
    golds
        .iter()
        .map(|gold| f1_one(prediction, gold))
        .fold(0.0, f64::max)
}

fn f1_one(prediction: &str, gold: &str) -> f64 {
    let predicted = tokens(prediction);
    let expected = tokens(gold);
    if predicted.is_empty() || expected.is_empty() {
        // As the official script: both empty is a match, one empty is not.
        return if predicted.is_empty() && expected.is_empty() {
            1.0
        } else {
            0.0
        };
    }
    let mut gold_counts: HashMap<&str, usize> = HashMap::new();
    for token in &expected {
        *gold_counts.entry(token.as_str()).or_default() += 1;
    }
    let mut common = 0usize;
    for token in &predicted {
        if let Some(count) = gold_counts.get_mut(token.as_str()) {
            if *count > 0 {
                *count -= 1;
                common += 1;
            }
        }
    }
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / predicted.len() as f64;
    let recall = common as f64 / expected.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// Whether every key fact occurs in the prediction as a run of whole normalised tokens
/// ("Dolores Park" in "sit in dolores park", but "park" not in "parking").
pub fn contains_key_facts(prediction: &str, key_facts: &[String]) -> bool {
    let predicted = tokens(prediction);
    key_facts.iter().all(|fact| {
        let fact = tokens(fact);
        !fact.is_empty() && predicted.windows(fact.len()).any(|window| window == fact)
    })
}

/// 1 when one gold answer occurs in the prediction as a run of whole normalised tokens, else 0:
/// a sentence that states the answer counts, one that only shares words with it does not.
pub fn contains_answer(prediction: &str, golds: &[String]) -> f64 {
    let hit = golds
        .iter()
        .any(|gold| contains_key_facts(prediction, std::slice::from_ref(gold)));
    f64::from(u8::from(hit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golds(answers: &[&str]) -> Vec<String> {
        answers.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn normalisation_drops_case_punctuation_articles_and_extra_spaces() {
        assert_eq!(normalize_answer("The Normans!"), "normans");
        assert_eq!(
            normalize_answer("  in the 10th,  and 11th centuries. "),
            "in 10th and 11th centuries"
        );
        assert_eq!(normalize_answer("A cat and an owl"), "cat and owl");
        // Articles only as whole words: "theatre" and "Anna" stay.
        assert_eq!(normalize_answer("Theatre of Anna"), "theatre of anna");
        // Outputs of the official script (Python) for the same inputs: the em dash is not ASCII
        // punctuation, so it stays, but it bounds the word "the", which goes; the apostrophe
        // goes first, so "l'the" becomes one word "lthe" and stays.
        assert_eq!(normalize_answer("The—Normans"), "—normans");
        assert_eq!(normalize_answer("l'the end"), "lthe end");
        assert_eq!(normalize_answer("the«an»a"), "« »");
    }

    #[test]
    fn exact_match_takes_the_best_gold() {
        assert_eq!(exact_match("the Normans", &golds(&["Normans"])), 1.0);
        assert_eq!(
            exact_match("Normans.", &golds(&["Vikings", "normans"])),
            1.0
        );
        assert_eq!(exact_match("Norman", &golds(&["Normans"])), 0.0);
        assert_eq!(exact_match("anything", &[]), 0.0);
    }

    #[test]
    fn f1_counts_common_tokens() {
        // prediction "10th century" vs gold "10th and 11th centuries":
        // common {10th} = 1; precision 1/2, recall 1/4; F1 = 2*(1/2*1/4)/(1/2+1/4) = 1/3.
        let f1 = token_f1("10th century", &golds(&["10th and 11th centuries"]));
        assert!((f1 - 1.0 / 3.0).abs() < 1e-12, "{f1}");
        // "in France" vs "France": common 1; precision 1/2, recall 1; F1 = 2/3.
        let f1 = token_f1("in France", &golds(&["France"]));
        assert!((f1 - 2.0 / 3.0).abs() < 1e-12, "{f1}");
        // Articles vanish before counting: "the Normans" vs "Normans" = 1.
        assert_eq!(token_f1("the Normans", &golds(&["Normans"])), 1.0);
        assert_eq!(token_f1("Vikings", &golds(&["Normans"])), 0.0);
    }

    #[test]
    fn f1_counts_repeated_tokens_once_per_occurrence() {
        // prediction "paris paris paris" vs gold "paris london": common = min(3,1) = 1;
        // precision 1/3, recall 1/2; F1 = 2*(1/6)/(5/6) = 2/5.
        let f1 = token_f1("paris paris paris", &golds(&["paris london"]));
        assert!((f1 - 0.4).abs() < 1e-12, "{f1}");
    }

    #[test]
    fn f1_takes_the_best_gold_and_handles_empty_answers() {
        // vs "Denmark": precision 1/3, recall 1 -> F1 1/2; vs "Denmark, Iceland and Norway":
        // common 3, precision 3/3, recall 3/4 -> F1 2*(3/4)/(7/4) = 6/7, the best.
        let f1 = token_f1(
            "Denmark Iceland Norway",
            &golds(&["Denmark", "Denmark, Iceland and Norway"]),
        );
        assert!((f1 - 2.0 * 1.0 * 0.75 / 1.75).abs() < 1e-12, "{f1}");
        assert_eq!(token_f1("", &golds(&[""])), 1.0);
        assert_eq!(token_f1("", &golds(&["France"])), 0.0);
        assert_eq!(token_f1("the", &golds(&["France"])), 0.0);
    }

    #[test]
    fn key_facts_must_all_occur_as_whole_tokens() {
        let facts = golds(&["sandwich", "Dolores Park"]);
        assert!(contains_key_facts(
            "Eat a sandwich and sit in Dolores Park on a sunny day.",
            &facts
        ));
        assert!(!contains_key_facts(
            "Eat a sandwich in the Mission.",
            &facts
        ));
        assert!(!contains_key_facts("sandwiches at Dolores Parking", &facts));
        assert!(!contains_key_facts("anything", &golds(&[""])));
    }

    #[test]
    fn an_answer_is_contained_when_one_gold_answer_is_a_run_of_its_words() {
        let gold = golds(&["King Charles III", "Charles III"]);
        assert_eq!(
            contains_answer(
                "The treaty was signed by King Charles III of West Francia.",
                &gold
            ),
            1.0
        );
        assert_eq!(contains_answer("Charles the Simple signed it.", &gold), 0.0);
        assert_eq!(contains_answer("In 9110.", &golds(&["911"])), 0.0);
        assert_eq!(contains_answer("anything", &[]), 0.0);
    }
}
