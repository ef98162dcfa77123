//! The base form of a verb in the simple past ("turned" -> "turn", "raised" -> "raise", "took"
//! -> "take"), so that a sentence without an auxiliary can be asked with "did" the way a reader
//! asks ("When did the mill first turn?"). By rule for regular verbs, from a table for the common
//! irregular ones; a word that is neither is not taken for a verb.
//!
//! The rule for a silent "e" ("raised" -> "raise" but "turned" -> "turn") reads the letters
//! before "-ed"; it is right for common verbs, and a verb it gets wrong ("visited" is read as
//! "visit", right, but "hoped" as "hop") still leaves the question's other words to lead to
//! the sentence.

/// Irregular past forms and their base forms. Forms that are also common nouns or adjectives
/// ("left", "found", "saw", "lay") are left out: taken for verbs they would make wrong
/// questions of sentences that do not use them as verbs.
const IRREGULAR: &[(&str, &str)] = &[
    ("began", "begin"),
    ("became", "become"),
    ("bought", "buy"),
    ("brought", "bring"),
    ("built", "build"),
    ("caught", "catch"),
    ("chose", "choose"),
    ("came", "come"),
    ("drew", "draw"),
    ("drove", "drive"),
    ("ate", "eat"),
    ("fell", "fall"),
    ("flew", "fly"),
    ("forgot", "forget"),
    ("froze", "freeze"),
    ("gave", "give"),
    ("got", "get"),
    ("grew", "grow"),
    ("heard", "hear"),
    ("held", "hold"),
    ("hung", "hang"),
    ("kept", "keep"),
    ("knew", "know"),
    ("led", "lead"),
    ("lost", "lose"),
    ("made", "make"),
    ("meant", "mean"),
    ("met", "meet"),
    ("paid", "pay"),
    ("ran", "run"),
    ("rang", "ring"),
    ("rode", "ride"),
    ("rose", "rise"),
    ("said", "say"),
    ("sold", "sell"),
    ("sent", "send"),
    ("shook", "shake"),
    ("shot", "shoot"),
    ("sang", "sing"),
    ("sank", "sink"),
    ("slept", "sleep"),
    ("spent", "spend"),
    ("spoke", "speak"),
    ("stole", "steal"),
    ("stood", "stand"),
    ("struck", "strike"),
    ("swam", "swim"),
    ("taught", "teach"),
    ("told", "tell"),
    ("thought", "think"),
    ("threw", "throw"),
    ("took", "take"),
    ("understood", "understand"),
    ("went", "go"),
    ("won", "win"),
    ("wore", "wear"),
    ("wrote", "write"),
];

/// Words in "-ed" that are not past forms of a verb.
const NOT_PAST: &[&str] = &[
    "bed", "red", "shed", "seed", "need", "feed", "speed", "hundred",
];

/// The base form of a simple past, or None for a word that is not one.
pub fn base_form(word: &str) -> Option<String> {
    if !word.chars().all(|c| c.is_ascii_lowercase()) {
        return None;
    }
    if let Some((_, base)) = IRREGULAR.iter().find(|(past, _)| *past == word) {
        return Some(base.to_string());
    }
    if NOT_PAST.contains(&word) {
        return None;
    }
    let stem = word.strip_suffix("ed")?;
    if stem.len() < 2 {
        return None;
    }
    // "died", "tied": the stem keeps its "e".
    if stem.len() == 2 && stem.ends_with('i') {
        return Some(format!("{stem}e"));
    }
    if let Some(base) = stem.strip_suffix('i') {
        return Some(format!("{base}y"));
    }
    let letters: Vec<char> = stem.chars().collect();
    let last = letters[letters.len() - 1];
    let before = letters[letters.len() - 2];
    // "stopped", "occurred"; "filled", "passed" double their last letter in the base too.
    if last == before && !"aeioulsfz".contains(last) {
        return Some(stem[..stem.len() - 1].to_string());
    }
    // "agreed", "freed": "-d" after a base in "e".
    if last == 'e' {
        return Some(format!("{stem}e"));
    }
    Some(if takes_silent_e(&letters) {
        format!("{stem}e")
    } else {
        stem.to_string()
    })
}

fn is_vowel(c: char) -> bool {
    "aeiou".contains(c)
}

/// Whether a regular verb's base ends in a silent "e" that "-ed" absorbed, read from the
/// letters before "-ed" (at least two).
fn takes_silent_e(stem: &[char]) -> bool {
    let n = stem.len();
    let last = stem[n - 1];
    let before = stem[n - 2];
    // "served", "seized", "continued", "issued".
    if matches!(last, 'v' | 'z' | 'u') {
        return true;
    }
    // "danced", "changed", "judged" (but "longed" has no "e").
    if last == 'c' || (last == 'g' && before == 'd') || (last == 'g' && before == 'n' && n > 4) {
        return stem[n - 3..] != ['o', 'n', 'g'];
    }
    // "handled", "settled", "cycled".
    if last == 'l' && "bptdkgfzc".contains(before) {
        return true;
    }
    // A single vowel between consonants: "raised" keeps its "e" ("rais" has two vowels but
    // "s" after a vowel takes one), "named", "retired", "located", "decided", "baked".
    let single_vowel = is_vowel(before) && (n < 3 || !is_vowel(stem[n - 3]));
    match last {
        's' => is_vowel(before),
        'm' | 'n' => single_vowel && before != 'e' && before != 'o',
        'r' => single_vowel && before != 'e',
        't' => single_vowel && before != 'i' && before != 'e',
        'd' | 'k' | 'b' => single_vowel,
        'p' => single_vowel && before != 'o',
        'l' => single_vowel && before != 'e',
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_and_irregular_past_forms_give_their_base() {
        for (past, base) in [
            ("turned", "turn"),
            ("raised", "raise"),
            ("measured", "measure"),
            ("ordered", "order"),
            ("carried", "carry"),
            ("died", "die"),
            ("stopped", "stop"),
            ("filled", "fill"),
            ("agreed", "agree"),
            ("served", "serve"),
            ("continued", "continue"),
            ("changed", "change"),
            ("handled", "handle"),
            ("named", "name"),
            ("opened", "open"),
            ("retired", "retire"),
            ("covered", "cover"),
            ("located", "locate"),
            ("visited", "visit"),
            ("started", "start"),
            ("decided", "decide"),
            ("founded", "found"),
            ("joined", "join"),
            ("used", "use"),
            ("voted", "vote"),
            ("collected", "collect"),
            ("developed", "develop"),
            ("took", "take"),
            ("paid", "pay"),
            ("built", "build"),
            ("belonged", "belong"),
            ("longed", "long"),
        ] {
            assert_eq!(base_form(past).as_deref(), Some(base), "{past}");
        }
        for not_past in ["hundred", "red", "mill", "Turned", "ed", "the"] {
            assert_eq!(base_form(not_past), None, "{not_past}");
        }
    }
}
