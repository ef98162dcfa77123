//! Needle-in-a-haystack documents: whole sentences of Paul Graham's essays up to a target
//! length, with one made-up sentence (the needle) inserted at a given depth.

use std::path::Path;

use crate::EvalError;

#[derive(Debug, Clone, PartialEq)]
pub struct Haystack {
    pub text: String,
    /// Where the needle starts in `text`, in bytes.
    pub needle_offset: usize,
    /// Length of `text` as the caller's token counter measures it.
    pub tokens: usize,
    pub depth_percent: u32,
}

/// Every essay (`*.txt` under `dir`, by file name) joined with blank lines.
pub fn load_essays(dir: &Path) -> Result<String, EvalError> {
    let missing = |detail: String| EvalError::DataMissing {
        path: dir.display().to_string(),
        detail,
    };
    let entries = std::fs::read_dir(dir).map_err(|e| missing(e.to_string()))?;
    let mut paths: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "txt"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(missing("no .txt essays in it".to_string()));
    }
    let mut essays = Vec::with_capacity(paths.len());
    for path in paths {
        let text = std::fs::read_to_string(&path).map_err(|e| EvalError::DataMalformed {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        essays.push(text.trim().to_string());
    }
    Ok(essays.join("\n\n"))
}

/// Sentences of `text` with their whitespace collapsed: a sentence ends at `.`, `!` or `?`
/// followed by whitespace.
fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let words: Vec<&str> = text.split_whitespace().collect();
    for word in words {
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(word);
        if word.ends_with(['.', '!', '?']) {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// A haystack of about `target_tokens` tokens (the last whole sentence may overshoot by one
/// sentence) with `needle` as its own sentence at the sentence boundary nearest to
/// `depth_percent` of the text (0: first sentence, 100: last).
pub fn build_haystack(
    corpus: &str,
    needle: &str,
    target_tokens: usize,
    depth_percent: u32,
    count_tokens: &dyn Fn(&str) -> usize,
) -> Result<Haystack, EvalError> {
    let needle = needle.split_whitespace().collect::<Vec<_>>().join(" ");
    if needle.is_empty() {
        return Err(EvalError::InvalidOption("the needle is empty".to_string()));
    }
    if depth_percent > 100 {
        return Err(EvalError::InvalidOption(format!(
            "depth {depth_percent} % is not within 0..=100"
        )));
    }
    let needle_tokens = count_tokens(&needle);
    if target_tokens <= needle_tokens {
        return Err(EvalError::InvalidOption(format!(
            "{target_tokens} tokens cannot hold the needle ({needle_tokens} tokens)"
        )));
    }
    // Sentences are counted one by one (a separator costs about one token, which the final
    // count of the whole text settles).
    let mut chosen: Vec<(String, usize)> = Vec::new();
    let mut total = needle_tokens;
    for sentence in sentences(corpus) {
        if total >= target_tokens {
            break;
        }
        let tokens = count_tokens(&sentence);
        total += tokens;
        chosen.push((sentence, tokens));
    }
    if total < target_tokens {
        return Err(EvalError::InvalidOption(format!(
            "the corpus has only about {total} tokens; {target_tokens} were asked for"
        )));
    }
    // The boundary whose share of haystack tokens before it is nearest to the depth.
    let haystack_tokens: usize = chosen.iter().map(|(_, t)| t).sum();
    let wanted_before = haystack_tokens as f64 * f64::from(depth_percent) / 100.0;
    let mut before = 0usize;
    let mut best = (0usize, f64::MAX);
    for boundary in 0..=chosen.len() {
        let distance = (before as f64 - wanted_before).abs();
        if distance < best.1 {
            best = (boundary, distance);
        }
        if let Some((_, tokens)) = chosen.get(boundary) {
            before += tokens;
        }
    }
    let insert_at = best.0;
    let mut parts: Vec<&str> = chosen.iter().map(|(s, _)| s.as_str()).collect();
    parts.insert(insert_at, &needle);
    let text = parts.join(" ");
    let needle_offset = parts[..insert_at].iter().map(|part| part.len() + 1).sum();
    Ok(Haystack {
        tokens: count_tokens(&text),
        text,
        needle_offset,
        depth_percent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEEDLE: &str = "The secret ingredient of the Vellmar pie is blue marrowflower.";

    fn words(text: &str) -> usize {
        text.split_whitespace().count()
    }

    /// 400 sentences of 8 words each, numbered so every one is distinct.
    fn corpus() -> String {
        (0..400)
            .map(|i| format!("Essay line number {i} talks about startups and users."))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn needle_is_present_once_at_the_requested_depth() {
        let corpus = corpus();
        for depth in [0, 25, 50, 75, 100] {
            let haystack = build_haystack(&corpus, NEEDLE, 1_000, depth, &words).unwrap();
            assert_eq!(haystack.text.matches(NEEDLE).count(), 1, "depth {depth}");
            assert!(haystack.text[haystack.needle_offset..].starts_with(NEEDLE));
            let before = words(&haystack.text[..haystack.needle_offset]);
            let haystack_words = haystack.tokens - words(NEEDLE);
            let measured = before as f64 / haystack_words as f64 * 100.0;
            // Sentences are 9 words: the nearest boundary is within one sentence (< 1 %).
            assert!(
                (measured - f64::from(depth)).abs() <= 1.0,
                "depth {depth}: needle after {measured:.1} % of the text"
            );
        }
    }

    #[test]
    fn length_is_within_one_sentence_of_the_target() {
        let corpus = corpus();
        for target in [200, 1_000, 2_500] {
            let haystack = build_haystack(&corpus, NEEDLE, target, 50, &words).unwrap();
            assert!(haystack.tokens >= target, "{} < {target}", haystack.tokens);
            assert!(
                haystack.tokens < target + 9,
                "{} vs {target}",
                haystack.tokens
            );
        }
    }

    #[test]
    fn bad_requests_are_refused() {
        let corpus = corpus();
        assert!(build_haystack(&corpus, NEEDLE, 100_000, 50, &words).is_err());
        assert!(build_haystack(&corpus, NEEDLE, 1_000, 101, &words).is_err());
        assert!(build_haystack(&corpus, "  ", 1_000, 50, &words).is_err());
        assert!(build_haystack(&corpus, NEEDLE, 5, 50, &words).is_err());
    }

    #[test]
    fn essays_load_in_name_order_and_a_missing_dir_names_the_script() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.txt"), "Second essay.\n").unwrap();
        std::fs::write(dir.path().join("a.txt"), "First essay.").unwrap();
        std::fs::write(dir.path().join("notes.md"), "not an essay").unwrap();
        assert_eq!(
            load_essays(dir.path()).unwrap(),
            "First essay.\n\nSecond essay."
        );
        let error = load_essays(&dir.path().join("nope")).unwrap_err();
        assert!(error.to_string().contains("fetch-eval-data.sh"), "{error}");
    }
}
