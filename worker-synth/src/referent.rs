//! Who "she" or "he" is. A reader asks "When did van Rensmaar die?", never "When did she
//! die?", but a sentence's templated questions keep its words, pronoun included, and a question
//! that names nobody fits every person of the document. The subject pronoun of a sentence is
//! taken to stand for the name an earlier sentence opens with: sentences that use any form of
//! the same pronoun are passed over (they speak of the same person, and the names they give
//! are often others: "Her tutor, Captain O'Maille, ..."), and so are sentences that name no
//! one. The nearest one left gives the name when a name is its subject, and nothing when its
//! names stand further in (an object or an apposition is often someone else). A sentence that
//! opens with "Her" or "His" is asked about the name's ("Who was Edda Marrowby's best
//! apprentice?"). Without a name the question keeps its pronoun.

use crate::facts::{fact_spans, sentences_backwards, words, FactKind};
use crate::templates::place_noun;

/// Pronouns that stand for a person: the subject, the possessive and every form. "It" and
/// "they" are left alone: "it" is often no one ("It was a cold morning"), and "they" is as
/// often a group the text never names.
const PERSONAL_PRONOUNS: &[Pronoun] = &[
    Pronoun {
        subject: "she",
        possessive: "her",
        forms: &["she", "her", "hers", "herself"],
    },
    Pronoun {
        subject: "he",
        possessive: "his",
        forms: &["he", "him", "his", "himself"],
    },
];

struct Pronoun {
    subject: &'static str,
    possessive: &'static str,
    forms: &'static [&'static str],
}

/// A name this far into an earlier sentence is taken as its subject ("Her tutor there,
/// Captain Lorcan O'Maille, ..."); one further in is mostly an object or a place.
const NAME_AS_SUBJECT_WITHIN_WORDS: usize = 6;

/// A pronoun counts as the sentence's subject within its first words, after a short opening
/// ("In 1919 she married ...", "For six years she redrew ..."); later it is often someone else.
const SUBJECT_WITHIN_WORDS: usize = 5;

/// Earlier sentences looked at for the name, nearest first.
const LOOK_BACK_SENTENCES: usize = 8;

/// The pronoun a sentence opens with, as its subject ("She", "In 1919 she") or the possessive
/// of its subject ("Her best apprentice"), and the name it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referent {
    pronoun: &'static str,
    /// "van Rensmaar" for "she", "van Rensmaar's" for "her".
    replacement: String,
}

impl Referent {
    /// The question with its first use of the pronoun replaced by the name.
    pub fn named_in(&self, question: &str) -> String {
        let mut at = 0;
        for word in question.split_inclusive(|c: char| !c.is_alphanumeric()) {
            let bare = word.trim_end_matches(|c: char| !c.is_alphanumeric());
            if bare.eq_ignore_ascii_case(self.pronoun) {
                return format!(
                    "{}{}{}",
                    &question[..at],
                    self.replacement,
                    &question[at + bare.len()..]
                );
            }
            at += word.len();
        }
        question.to_string()
    }
}

/// The name a sentence's opening pronoun stands for, found in the text before it; none when
/// the sentence opens without one or no earlier sentence within reach has a name as subject.
pub fn pronoun_referent(sentence: &str, left_context: &str) -> Option<Referent> {
    let opening: Vec<String> = sentence
        .split_whitespace()
        .take(SUBJECT_WITHIN_WORDS)
        .map(bare_lowercase)
        .collect();
    let (pronoun, possessive) = opening.iter().enumerate().find_map(|(at, word)| {
        PERSONAL_PRONOUNS.iter().find_map(|pronoun| {
            if *word == pronoun.subject {
                Some((pronoun, false))
            } else {
                (at == 0 && *word == pronoun.possessive).then_some((pronoun, true))
            }
        })
    })?;
    let (earlier, (is_subject, name)) = sentences_backwards(left_context)
        .take(LOOK_BACK_SENTENCES)
        .filter(|earlier| !uses_any_form(earlier, pronoun))
        // The nearest sentence that names someone decides.
        .find_map(|earlier| Some((earlier, person_names(earlier).next()?)))?;
    // One that speaks of a person of the other pronoun ("who paid his fare") may be naming
    // that person, not ours.
    let speaks_of_another = PERSONAL_PRONOUNS
        .iter()
        .any(|other| other.subject != pronoun.subject && uses_any_form(earlier, other));
    if !is_subject || speaks_of_another {
        return None;
    }
    Some(if possessive {
        Referent {
            pronoun: pronoun.possessive,
            replacement: format!("{name}'s"),
        }
    } else {
        Referent {
            pronoun: pronoun.subject,
            replacement: name.to_string(),
        }
    })
}

/// The names of a sentence that may be people (not places), each with whether it stands
/// where the sentence's subject does, within its first words.
fn person_names(sentence: &str) -> impl Iterator<Item = (bool, &str)> {
    let sentence_words = words(sentence);
    let subject_ends = sentence_words
        .get(NAME_AS_SUBJECT_WITHIN_WORDS - 1)
        .or(sentence_words.last())
        .map_or(0, |word| word.start);
    fact_spans(sentence)
        .into_iter()
        .filter(move |span| {
            span.kind == FactKind::Name
                && !span.is_place
                && place_noun(span.text(sentence)).is_none()
        })
        .map(move |span| (span.start <= subject_ends, span.text(sentence)))
}

fn uses_any_form(sentence: &str, pronoun: &Pronoun) -> bool {
    sentence
        .split_whitespace()
        .any(|word| pronoun.forms.contains(&bare_lowercase(word).as_str()))
}

fn bare_lowercase(word: &str) -> String {
    word.trim_matches(|c: char| !c.is_alphanumeric())
        .to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIFE: &str = "Ottilie van Rensmaar was born in 1887 in the fishing village of \
        Klaverhaven. In 1906 she became a draughtswoman at the Chart Office. \
        She married the botanist Casimir de la Fontaine in 1919.";

    /// A question from `sentence`, as asked after `left_context`; none without a referent.
    fn asked(sentence: &str, left_context: &str, question: &str) -> Option<String> {
        pronoun_referent(sentence, left_context).map(|referent| referent.named_in(question))
    }

    #[test]
    fn she_stands_for_the_person_named_before_the_sentences_about_her() {
        let died = "She died at her home in 1961, aged seventy-three.";
        let expected = |question: &str| Some(question.to_string());
        assert_eq!(
            asked(died, LIFE, "When did she die at her home?"),
            expected("When did Ottilie van Rensmaar die at her home?")
        );
        assert_eq!(
            asked(died, LIFE, "She died at her home in what year?"),
            expected("Ottilie van Rensmaar died at her home in what year?")
        );
        // "her" is not the subject, and a question without the pronoun is kept as it is.
        assert_eq!(
            asked(died, LIFE, "Who was born in 1887?"),
            expected("Who was born in 1887?")
        );
    }

    #[test]
    fn he_is_the_man_named_before_and_not_a_man_named_beside_her() {
        let professor = "In 1921 he became a professor.";
        let question = "In what year did he become a professor?";
        assert_eq!(
            asked(
                professor,
                "Casimir de la Fontaine studied botany at Selvingham.",
                question
            )
            .as_deref(),
            Some("In what year did Casimir de la Fontaine become a professor?")
        );
        // The sentence that names him speaks of her too: he may be her, or someone else.
        assert_eq!(asked(professor, LIFE, question), None);
    }

    #[test]
    fn her_at_the_opening_is_the_possessive_of_the_name_past_a_sentence_naming_no_one() {
        let workshop = "Edda Marrowby was born in 1902. She opened a workshop in 1921. \
            The furnace burned coal.";
        let apprentice = "Her best apprentice was Ivo Chance.";
        assert_eq!(
            asked(apprentice, workshop, "Who was her best apprentice?").as_deref(),
            Some("Who was Edda Marrowby's best apprentice?")
        );
        // "Her" there is someone else, and the name may be hers: "he" keeps its pronoun.
        let ran = "He later ran the workshop for eleven years.";
        assert_eq!(pronoun_referent(ran, apprentice), None);
    }

    #[test]
    fn no_referent_without_a_subject_pronoun_or_an_earlier_name() {
        assert_eq!(pronoun_referent("The mill was built in 1761.", LIFE), None);
        // The pronoun comes too late to be the subject.
        let late = "The chart that the Office issued in 1917 was hers, and she kept it.";
        assert_eq!(pronoun_referent(late, LIFE), None);
        let arrived = "She arrived in 1889.";
        assert_eq!(
            pronoun_referent(arrived, "the light was lit at dusk."),
            None
        );
        // A place names nobody, and neither does a name deep in the sentence.
        let cottage = "The keeper's cottage stands in Harrow Point.";
        assert_eq!(pronoun_referent(arrived, cottage), None);
        let settled = "The couple settled in a house on Gullcliff Terrace in Selvingham and had \
            two daughters, Josefien and Margit.";
        assert_eq!(pronoun_referent(arrived, settled), None);
        let terrace = "On Gullcliff Terrace the couple lived.";
        assert_eq!(pronoun_referent(arrived, terrace), None);
    }
}
