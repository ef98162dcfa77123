//! Turning one chunk of sentences into training tasks, by one of two recipes: free QA (the
//! generator writes whole pairs about each sentence) or fact-first (fact spans found by rule,
//! questions written for each by the generator and by templates). Both parse and ground what
//! the generator wrote, and add rule-based cloze tasks if the job wants them. The
//! decisions about the delivery (retry, dead-letter, write) are the worker's.
//!
//! Over 600 lines: both recipes share the parsing, grounding and drop accounting of one
//! sentence; 350 of the lines are tests.

use std::borrow::Cow;
use std::collections::HashSet;

use futures::future::join_all;
use lift_shared::messages::{SentenceUnit, SynthChunk, Task};
use lift_shared::metrics;
use lift_shared::spec::QuestionRecipe;

use crate::cloze::cloze_tasks;
use crate::facts::{fact_spans, sentences_backwards, FactKind, FactSpan};
use crate::generator::{GeneratorError, QaGenerator, QaRequest, RestateRequest};
use crate::ground::{about_another_clause, GroundingPolicy, SentenceSource};
use crate::keys::key_phrases;
use crate::parse::{DropCounts, PairCollector, ParseLimits, QaPair};
use crate::referent::pronoun_referent;
use crate::restate::restated_questions;
use crate::templates::{asks_for_kind, capitalise_first, keyed_question, templated_questions};

#[derive(Debug, Clone, PartialEq)]
pub struct SynthesisTuning {
    pub parse_limits: ParseLimits,
    pub grounding: GroundingPolicy,
    /// Generator calls per sentence at most: another round (new seed) runs while fewer
    /// grounded pairs than wanted came back, since small models miss about half the time.
    pub rounds_per_sentence: u32,
    /// Cloze tasks per sentence when the job asks for them.
    pub cloze_per_sentence: usize,
    /// Fact spans per sentence that get templated tasks in the fact-first recipe, most
    /// specific kinds first (dates, amounts, codes, numbers, then names): bounds the tasks of a
    /// long list. At 4, a sentence listing six ingredients never taught the fifth and sixth,
    /// and a name after four numbers was never asked for.
    pub max_facts_per_sentence: usize,
    /// Of those, the ones the generator also writes questions for (a call each). Every one
    /// by default: at 4, the facts past the fourth of a list sentence had only templated
    /// questions, and the dev set's LIFT rate was 36 % against 42.5 % at 12 (docs/results.md,
    /// session 33); only sentences with more than four facts make more calls.
    pub max_generated_facts_per_sentence: usize,
}

impl Default for SynthesisTuning {
    fn default() -> Self {
        Self {
            parse_limits: ParseLimits::default(),
            grounding: GroundingPolicy::default(),
            rounds_per_sentence: 2,
            cloze_per_sentence: 1,
            max_facts_per_sentence: 12,
            max_generated_facts_per_sentence: 12,
        }
    }
}

/// What a chunk produced.
#[derive(Debug)]
pub struct ChunkSynthesis {
    /// In sentence order, question/answer tasks before cloze tasks.
    pub tasks: Vec<Task>,
    pub sentences: u32,
    /// Why each failed sentence failed (its first generator call erred).
    pub failures: Vec<(u32, GeneratorError)>,
    pub pairs_dropped: DropCounts,
    pub facts: FactCoverage,
}

impl ChunkSynthesis {
    pub fn sentences_failed(&self) -> u32 {
        self.failures.len() as u32
    }

    /// Whether some sentence may succeed on a later attempt (the generator was down or busy).
    pub fn has_transient_failure(&self) -> bool {
        self.failures.iter().any(|(_, error)| error.is_transient())
    }

    /// Every sentence failed: the chunk as a whole failed, not a sentence of it.
    pub fn all_failed(&self) -> bool {
        self.sentences > 0 && self.sentences_failed() == self.sentences
    }

    /// The task file: one JSON `Task` per line.
    pub fn task_file(&self) -> serde_json::Result<Vec<u8>> {
        let mut file = Vec::new();
        for task in &self.tasks {
            serde_json::to_writer(&mut file, task)?;
            file.push(b'\n');
        }
        Ok(file)
    }
}

pub async fn synthesize_chunk(
    generator: &dyn QaGenerator,
    chunk: &SynthChunk,
    tuning: &SynthesisTuning,
) -> ChunkSynthesis {
    let fact_first = match chunk.options.recipe {
        QuestionRecipe::Auto => generator.prefers_fact_first(),
        QuestionRecipe::FreeQa => false,
        QuestionRecipe::FactFirst | QuestionRecipe::Templates => true,
    };
    let labels: Vec<bool> = chunk
        .sentences
        .iter()
        .map(|sentence| is_label_line(&sentence.text))
        .collect();
    let outcomes = join_all(chunk.sentences.iter().zip(&labels).map(|(sentence, &label)| async move {
        if label {
            return Ok(SentenceTasks {
                tasks: Vec::new(),
                dropped: DropCounts::default(),
            });
        }
        if fact_first {
            return synthesize_facts(generator, chunk, sentence, tuning).await;
        }
        let free = synthesize_sentence(generator, chunk, sentence, tuning).await;
        if chunk.options.recipe != QuestionRecipe::Auto {
            return free;
        }
        // Auto picked free QA for a server generator, but a weak model behind it may write
        // nothing usable: the sentence's facts still get their questions, as for the built-in
        // generator, rather than a chunk that fails on every retry.
        match free {
            Ok(free) if free.tasks.is_empty() => {
                let mut facts = synthesize_facts(generator, chunk, sentence, tuning).await?;
                facts.dropped.add(&free.dropped);
                Ok(facts)
            }
            Err(error) if !error.is_transient() => {
                tracing::debug!(job_id = %chunk.job_id, sentence = sentence.index, %error, "free questions failed, asking for the sentence's facts");
                synthesize_facts(generator, chunk, sentence, tuning).await
            }
            free => free,
        }
    }))
    .await;

    let traceparent = lift_shared::telemetry::trace_headers()
        .remove("traceparent")
        .unwrap_or_default();
    let mut synthesis = ChunkSynthesis {
        tasks: Vec::new(),
        sentences: chunk.sentences.len() as u32,
        failures: Vec::new(),
        pairs_dropped: DropCounts::default(),
        facts: FactCoverage::default(),
    };
    for ((sentence, outcome), label) in chunk.sentences.iter().zip(outcomes).zip(labels) {
        let mut sentence_tasks: Vec<(TaskKind, QaPair)> = Vec::new();
        match outcome {
            Ok(SentenceTasks { tasks, dropped }) => {
                synthesis.pairs_dropped.add(&dropped);
                if tasks.is_empty() && !label {
                    // The generator answered, but nothing it wrote is usable: the sentence
                    // failed, and the reason says what was wrong with the replies.
                    let reason = format!("no usable question/answer pair ({})", dropped.describe());
                    synthesis
                        .failures
                        .push((sentence.index, GeneratorError::InvalidOutput(reason)));
                }
                sentence_tasks = tasks;
            }
            Err(error) => synthesis.failures.push((sentence.index, error)),
        }
        if chunk.options.cloze_tasks {
            let cloze = cloze_tasks(&sentence.text, tuning.cloze_per_sentence);
            sentence_tasks.extend(cloze.into_iter().map(|task| {
                (
                    TaskKind::Cloze,
                    QaPair {
                        question: task.question,
                        answer: task.answer,
                    },
                )
            }));
        }
        let answers: Vec<&str> = sentence_tasks
            .iter()
            .map(|(_, p)| p.answer.as_str())
            .collect();
        synthesis
            .facts
            .add(&FactCoverage::of(&sentence.text, &answers));
        synthesis
            .tasks
            .extend(sentence_tasks.into_iter().map(|(kind, pair)| Task {
                sentence_index: sentence.index,
                title: chunk.title.clone(),
                question: pair.question,
                answer: pair.answer,
                kind: kind.name().to_string(),
                traceparent: traceparent.clone(),
            }));
    }
    synthesis
}

/// Where a task comes from; written into the task file as `Task::kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TaskKind {
    /// A pair the generator wrote freely about a sentence.
    Qa,
    /// A question the generator wrote for a fact span as the answer.
    FactQa,
    /// A templated question for a fact span.
    FactTemplate,
    /// A templated question on a rewording of the sentence the generator wrote.
    Restated,
    /// A fact asked for by one key phrase of its sentence alone.
    Keyed,
    /// "What does the text say about X?" (X a name or a key phrase) answered by the whole
    /// sentence.
    Recall,
    /// The sentence as what follows the one before it: the document itself, as LIFT trains on
    /// its segments besides the questions.
    Passage,
    Cloze,
}

impl TaskKind {
    fn name(self) -> &'static str {
        match self {
            Self::Qa => "qa",
            Self::FactQa => "fact_qa",
            Self::FactTemplate => "fact_template",
            Self::Restated => "restated",
            Self::Keyed => "keyed",
            Self::Recall => "recall",
            Self::Passage => "passage",
            Self::Cloze => "cloze",
        }
    }
}

/// Fact spans found in sentences, and how many of them some task has as (part of) its answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FactCoverage {
    pub found: u32,
    pub covered: u32,
}

impl FactCoverage {
    /// The fact spans of one sentence against the answers of its tasks.
    pub fn of(sentence: &str, answers: &[&str]) -> Self {
        let answers: Vec<String> = answers.iter().map(|a| normalise_words(a)).collect();
        let mut coverage = Self::default();
        for span in fact_spans(sentence) {
            coverage.found += 1;
            let fact = normalise_words(span.text(sentence));
            let padded = format!(" {fact} ");
            if answers
                .iter()
                .any(|answer| format!(" {answer} ").contains(&padded))
            {
                coverage.covered += 1;
            }
        }
        coverage
    }

    /// The coverage of a task file written for `chunk`.
    pub fn of_tasks(chunk: &SynthChunk, tasks: &[Task]) -> Self {
        let mut coverage = Self::default();
        for sentence in &chunk.sentences {
            let answers: Vec<&str> = tasks
                .iter()
                .filter(|task| task.sentence_index == sentence.index)
                .map(|task| task.answer.as_str())
                .collect();
            coverage.add(&Self::of(&sentence.text, &answers));
        }
        coverage
    }

    pub fn add(&mut self, other: &Self) {
        self.found += other.found;
        self.covered += other.covered;
    }
}

/// Most words of a line that labels what follows rather than saying something.
const MAX_LABEL_WORDS: usize = 3;

/// A line that only labels what follows ("Fixed", "Security", "## Cleaning"), with no fact
/// in it: layout, not text to learn. Trained as the answer of its passage task, a one-word
/// line became what the adapted model said to questions sharing its word ("What is the
/// identifier of the vulnerability fixed by ...?" -> "Fixed"). The sentences under it keep it
/// in their left context, and a Markdown heading with facts ("## 4.2.1 - 18 June 2024") is
/// still asked about.
fn is_label_line(text: &str) -> bool {
    let text = text.trim();
    let short = text.split_whitespace().count() <= MAX_LABEL_WORDS
        && !text.ends_with(['.', '!', '?', '"', '\'', ')']);
    (text.starts_with('#') || short) && fact_spans(text).is_empty()
}

/// Lower case, alphanumeric words only, single spaces: "€1,250" and "1250" compare equal.
fn normalise_words(text: &str) -> String {
    text.split(|c: char| !c.is_alphanumeric() && c != ',')
        .map(|word| word.replace(',', "").to_lowercase())
        .filter(|word| !word.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The sentence as the continuation of the sentence before it (the last one of its left
/// context), or as the start of the document; a list label goes at its end, as in every answer.
fn passage_task(sentence: &SentenceUnit, label: Option<&str>) -> QaPair {
    let before = previous_sentence(&sentence.left_context);
    let question = if before.is_empty() {
        "How does the text begin?".to_string()
    } else {
        format!("What does the text say after \"{before}\"?")
    };
    QaPair {
        question,
        answer: with_suffix(sentence.text.trim(), label),
    }
}

/// The last sentence of a text, at most `PREVIOUS_SENTENCE_CHARS` long (cut at a word).
fn previous_sentence(text: &str) -> &str {
    const PREVIOUS_SENTENCE_CHARS: usize = 200;
    let mut last = sentences_backwards(text).next().unwrap_or("");
    if last.len() > PREVIOUS_SENTENCE_CHARS {
        let mut cut = last.len() - PREVIOUS_SENTENCE_CHARS;
        while !last.is_char_boundary(cut) {
            cut += 1;
        }
        let tail = &last[cut..];
        last = tail[tail.find(' ').map_or(0, |space| space + 1)..].trim_start();
    }
    last
}

/// A fact-first answer: the part of the sentence that states the fact, in the document's
/// words. Recalling trained text is what a small model does best from a question worded
/// unlike the training ones: the question's words lead to the sentence and the fact comes
/// with it. Answers that start with the bare fact made the model pick a value before it
/// recalled anything (on the dev set it then named the right kind of fact from another
/// sentence); every answer of the recipe being document text keeps one answer style.
///
/// The answer is the fact's `evidence` and ends with the sentence's `suffix` (see
/// [`answer_suffix`]).
fn evidence_answer(evidence: &str, suffix: Option<&str>) -> String {
    // A list item's marker is layout, not content.
    let evidence = evidence
        .trim_start_matches(['-', '*', '•', '#'])
        .trim_start();
    with_suffix(evidence, suffix)
}

/// What an answer about a sentence ends with: the Markdown heading it stands under and the
/// list or clause number it opens with. In a changelog, a manual, minutes or a contract these
/// hold facts the sentence relies on ("## 4.2.1" for "Fixed a crash when ...", "7.4" for the
/// clause on late payment), and a question names the sentence's content to ask for them. The
/// model writes an answer left to right, so the sentence the question points at comes first
/// and the heading or number is then recalled from it; answers that opened with them made the
/// model name one before it knew which sentence was asked for (on the dev set's changelog the
/// most frequent heading, on its contract a clause number and then that clause).
fn answer_suffix(heading: Option<&str>, label: Option<&str>) -> Option<String> {
    match (heading, label) {
        (Some(heading), Some(label)) => Some(format!("{heading}, {label}")),
        (heading, label) => heading.or(label).map(str::to_string),
    }
}

/// `text (suffix).`, or the text alone.
fn with_suffix(text: &str, suffix: Option<&str>) -> String {
    match suffix {
        Some(suffix) => {
            let body = text.trim_end_matches(['.', ';', ':', ',']).trim_end();
            format!("{body} ({suffix}).")
        }
        None => text.to_string(),
    }
}

/// The list or clause number a sentence opens with ("7.1 The Customer shall ...", "3. Turn the
/// dial ...", "(b) the Goods ..."), without its dot and brackets, and the sentence after it.
/// A plain number is no label ("14 March 1687 ...", "2024 saw ..."), nor a version before a
/// dash ("4.2.0 - 2 May 2024").
fn list_label(sentence: &str) -> Option<(&str, &str)> {
    const MAX_PART_DIGITS: usize = 3;
    let (first, rest) = sentence.trim_start().split_once(char::is_whitespace)?;
    let rest = rest.trim_start();
    let bracketed = first.strip_prefix('(').unwrap_or(first).strip_suffix(')');
    let label = match bracketed {
        Some(inner) => {
            let short = (1..=MAX_PART_DIGITS).contains(&inner.len());
            (short && inner.chars().all(|c| c.is_ascii_alphanumeric())).then_some(inner)?
        }
        None => {
            let number = first.strip_suffix('.').unwrap_or(first);
            let numeric = number.split('.').all(|part| {
                (1..=MAX_PART_DIGITS).contains(&part.len())
                    && part.chars().all(|c| c.is_ascii_digit())
            });
            let marked = first.ends_with('.') || number.contains('.');
            let opens_a_sentence = rest.starts_with(char::is_uppercase);
            (numeric && marked && opens_a_sentence).then_some(number)?
        }
    };
    (!rest.is_empty()).then_some((label, rest))
}

/// A sentence without its layout: a list's bullet, a run-in heading, and its list or clause
/// number, which it also gives.
fn sentence_body(sentence: &str) -> (&str, Option<&str>) {
    let text = without_bullet(sentence).unwrap_or(sentence);
    let text = without_run_in_heading(text).unwrap_or(text);
    match list_label(text) {
        Some((label, body)) => (body, Some(label)),
        None => (text, None),
    }
}

/// The sentence after a one-word run-in heading ("Methods. Seeds were collected ...",
/// "Funding. The work was ..."), which the splitter keeps with the sentence it labels. In a
/// question it is noise that every question of the sentence would start with; the answer
/// keeps to the sentence too, and the heading stays in the left context of what follows.
fn without_run_in_heading(sentence: &str) -> Option<&str> {
    const MIN_HEADING_LETTERS: usize = 4;
    let (first, rest) = sentence.trim_start().split_once(char::is_whitespace)?;
    let word = first.strip_suffix('.')?;
    let mut letters = word.chars();
    let is_heading = letters.next().is_some_and(|c| c.is_uppercase())
        && letters.all(|c| c.is_lowercase())
        && word.chars().count() >= MIN_HEADING_LETTERS
        && !crate::facts::is_abbreviation(word);
    let rest = rest.trim_start();
    let opens_a_sentence = rest.starts_with(|c: char| c.is_uppercase() || c.is_ascii_digit());
    (is_heading && opens_a_sentence).then_some(rest)
}

/// A Markdown list item's text without its bullet ("- 6 stackable drying trays ..."), which
/// would otherwise open the item's questions ("- 6 stackable drying trays (part number what
/// code)?").
fn without_bullet(sentence: &str) -> Option<&str> {
    let text = sentence.trim_start();
    let rest = text.strip_prefix(['-', '*', '•'])?;
    rest.starts_with(char::is_whitespace)
        .then(|| rest.trim_start())
        .filter(|rest| !rest.is_empty())
}

/// The nearest Markdown heading (`#` line) before a sentence, within its left context; none
/// for a sentence that is a heading itself.
fn section_heading<'a>(sentence: &SentenceUnit, left_context: &'a str) -> Option<&'a str> {
    const MAX_HEADING_CHARS: usize = 120;
    if sentence.text.trim_start().starts_with('#') {
        return None;
    }
    let line = left_context
        .lines()
        .rev()
        .find(|line| line.trim_start().starts_with('#'))?;
    let heading = line.trim().trim_start_matches('#').trim();
    (!heading.is_empty() && heading.chars().count() <= MAX_HEADING_CHARS).then_some(heading)
}

/// Sentences up to this many words are evidence whole; longer ones give the clause of the fact.
const WHOLE_SENTENCE_WORDS: usize = 20;

/// The clause around a span (between commas, semicolons and colons); the whole sentence when
/// it is short. Long sentences would make every training example long, and a CPU step costs
/// time per token. A clause too short to say what it is about gets the sentence's first clause
/// before it, where the subject is: in a list ("For the dough: ..., 430 millilitres of water, 3
/// tablespoons of honey, ...") the clause before an item is another item, and an answer that
/// opened with that item's value would teach the model to name a value before it has recalled
/// which item is asked for.
fn evidence<'a>(span: &FactSpan, sentence: &'a str) -> Cow<'a, str> {
    let sentence = sentence.trim_end();
    if sentence.split_whitespace().count() <= WHOLE_SENTENCE_WORDS {
        return Cow::Borrowed(sentence.trim());
    }
    let boundaries = clause_boundaries(sentence);
    let (start, end) = clause_around(span, &boundaries, sentence.len());
    let clause = sentence[start..end].trim();
    if start == 0 || clause.split_whitespace().count() >= 6 {
        return Cow::Borrowed(clause);
    }
    // The first boundary is the one before the clause, or an earlier one.
    if boundaries[0] + 1 == start {
        return Cow::Borrowed(sentence[..end].trim());
    }
    let first_clause = sentence[..=boundaries[0]].trim();
    Cow::Owned(format!("{first_clause} {clause}"))
}

/// Where a sentence's clauses end: punctuation followed by a space (the comma of "186,000"
/// does not end a clause).
fn clause_boundaries(sentence: &str) -> Vec<usize> {
    sentence
        .char_indices()
        .zip(sentence.chars().skip(1))
        .filter(|((_, c), next)| matches!(c, ',' | ';' | ':') && next.is_whitespace())
        .map(|((index, _), _)| index)
        .collect()
}

/// The byte range of the clause that holds a span: after the boundary before it, up to the
/// first boundary after it.
fn clause_around(span: &FactSpan, boundaries: &[usize], len: usize) -> (usize, usize) {
    let end = boundaries
        .iter()
        .copied()
        .find(|&boundary| boundary >= span.end)
        .unwrap_or(len);
    let start = boundaries
        .iter()
        .rev()
        .find(|&&boundary| boundary < span.start)
        .map_or(0, |boundary| boundary + 1);
    (start, end)
}

/// Longest opening clause that goes before a later clause in its questions.
const MAX_LEAD_WORDS: usize = 6;

/// Words that join a clause to the one before it; a question built from the clause alone
/// drops them.
const JOINING_WORDS: &[&str] = &[
    "and", "but", "or", "then", "so", "yet", "when", "while", "whereas",
];

/// The clause of a long sentence that holds a fact, as a sentence of its own for templated
/// questions, and the fact's span in it. The sentence's templated questions for a fact deep in
/// it carry every clause before ("For the dough: all of the starter, 400 grams of ..., 430
/// millilitres of water, 3 tablespoons of heather honey, how many grams of fine sea salt?"): a
/// long key in which the words that pick this fact are few and last, unlike a reader's question
/// ("How many grams of sea salt go into the dough?"). The clause's question is short and names
/// what the fact is about; a short opening clause, where a list's lead-in or the subject
/// stands, goes before it ("For the dough: how many grams of fine sea salt?", "The mill pond
/// covered how many acres ...?"). None for a sentence whose evidence is the whole of it.
fn clause_question_source(span: &FactSpan, sentence: &str) -> Option<(String, FactSpan)> {
    let sentence = sentence.trim_end();
    if sentence.split_whitespace().count() <= WHOLE_SENTENCE_WORDS {
        return None;
    }
    let boundaries = clause_boundaries(sentence);
    let (start, end) = clause_around(span, &boundaries, sentence.len());
    let first_boundary = boundaries.first().copied().filter(|&first| first < start);
    let lead = first_boundary
        .map(|first| {
            let colon = if sentence[first..].starts_with(':') {
                ":"
            } else {
                ""
            };
            format!("{}{colon}", sentence[..first].trim())
        })
        .filter(|lead| lead.split_whitespace().count() <= MAX_LEAD_WORDS);
    let mut clause_start = start + (sentence[start..].len() - sentence[start..].trim_start().len());
    let mut joined = false;
    if let Some((first, rest)) = sentence[clause_start..span.start].split_once(char::is_whitespace)
    {
        if JOINING_WORDS.contains(&first.to_lowercase().as_str()) {
            clause_start = span.start - rest.trim_start().len();
            joined = true;
        }
    }
    // The sentence's own questions already start at the first clause, or at the lead and the
    // clause right after it.
    let follows_lead = lead.is_some() && first_boundary.is_some_and(|first| first + 1 == start);
    if clause_start == 0 || (follows_lead && !joined) {
        return None;
    }
    let clause = &sentence[clause_start..end];
    let source = match &lead {
        Some(lead) => format!("{lead} {clause}"),
        // ASCII only: the span's offsets stay right.
        None if clause.starts_with(|c: char| c.is_ascii_lowercase()) => capitalise_first(clause),
        None => clause.to_string(),
    };
    let offset = source.len() - clause.len();
    let rebased = FactSpan {
        start: span.start - clause_start + offset,
        end: span.end - clause_start + offset,
        ..span.clone()
    };
    Some((source, rebased))
}

struct SentenceTasks {
    tasks: Vec<(TaskKind, QaPair)>,
    dropped: DropCounts,
}

/// The fact-first recipe for one sentence: per fact span, the generator's questions for it
/// (kept when they fit the sentence), the templated ones and one keyed by a key phrase; a
/// recall task per name and per key phrase; the sentence as the continuation of the one
/// before. A sentence without fact spans gets only the last: what a weak generator writes
/// freely about it is mostly invented.
async fn synthesize_facts(
    generator: &dyn QaGenerator,
    chunk: &SynthChunk,
    sentence: &SentenceUnit,
    tuning: &SynthesisTuning,
) -> Result<SentenceTasks, GeneratorError> {
    // A list's bullet is layout, and so is a list or clause number: facts and questions come
    // from the text after them, and answers name the number at their end.
    let (body, label) = sentence_body(&sentence.text);
    let unlabelled;
    let sentence = if body.len() != sentence.text.len() {
        unlabelled = SentenceUnit {
            text: body.to_string(),
            ..sentence.clone()
        };
        &unlabelled
    } else {
        sentence
    };
    let mut spans = fact_spans(&sentence.text);
    if spans.is_empty() {
        return Ok(SentenceTasks {
            tasks: vec![(TaskKind::Passage, passage_task(sentence, label))],
            dropped: DropCounts::default(),
        });
    }
    let options = &chunk.options;
    // From every span: a value past `max_facts_per_sentence` is still no key.
    let keys = key_phrases(
        &sentence.text,
        &sentence.left_context,
        &spans,
        options.key_phrases as usize,
    );
    spans.sort_by_key(|span| span.kind);
    spans.truncate(tuning.max_facts_per_sentence);
    let generated_facts = match options.recipe {
        QuestionRecipe::Templates => 0,
        _ => tuning.max_generated_facts_per_sentence,
    };
    let generated: Vec<FactSpan> = spans.iter().take(generated_facts).cloned().collect();
    spans.sort_by_key(|span| span.start);

    let suffix = answer_suffix(section_heading(sentence, &sentence.left_context), label);
    let suffix = suffix.as_deref();
    let source = SentenceSource::new(&sentence.text, &sentence.left_context);
    // Each with the index of its fact in `spans`.
    let requests: Vec<(usize, QaRequest)> = spans
        .iter()
        .enumerate()
        .filter(|(_, span)| generated.contains(span))
        .map(|(fact, span)| {
            let request = QaRequest {
                title: chunk.title.clone(),
                sentence: sentence.text.clone(),
                left_context: sentence.left_context.clone(),
                pairs_wanted: options.qa_per_sentence,
                temperature: options.temperature,
                seed: sentence_seed(options.seed, sentence.index, fact as u32),
                model: Some(options.generator_model.clone()).filter(|model| !model.is_empty()),
                answer: Some(span.text(&sentence.text).to_string()),
            };
            (fact, request)
        })
        .collect();
    let restate = RestateRequest {
        sentence: sentence.text.clone(),
        samples: options.restatements,
        seed: sentence_seed(options.seed, sentence.index, spans.len() as u32),
        model: Some(options.generator_model.clone()).filter(|model| !model.is_empty()),
    };
    let (replies, restated) = futures::join!(
        join_all(
            requests
                .iter()
                .map(|(_, request)| metered(generator.generate(request)))
        ),
        async {
            if restate.samples == 0 {
                return Ok(Vec::new());
            }
            metered(generator.restate(&restate)).await
        }
    );

    let clauses: Vec<Cow<str>> = spans
        .iter()
        .map(|span| evidence(span, &sentence.text))
        .collect();
    let clauses: Vec<&str> = clauses.iter().map(|clause| clause.as_ref()).collect();
    // Every question about a fact, whoever wrote it, is trained with the same answer.
    let fact_answers: Vec<String> = clauses
        .iter()
        .map(|clause| evidence_answer(clause, suffix))
        .collect();
    let mut tasks: Vec<(TaskKind, QaPair)> = Vec::new();
    let mut dropped = DropCounts::default();
    let mut seen_questions = HashSet::new();
    let mut keep = |kind: TaskKind, pair: QaPair, tasks: &mut Vec<(TaskKind, QaPair)>| {
        if seen_questions.insert(pair.question.to_lowercase()) {
            tasks.push((kind, pair));
        }
    };

    let referent = pronoun_referent(&sentence.text, &sentence.left_context);
    let mut requests = requests.iter().zip(replies).peekable();
    for (fact, span) in spans.iter().enumerate() {
        let answer = span.text(&sentence.text).to_string();
        if let Some(((_, request), generated)) = requests.next_if(|((at, _), _)| *at == fact) {
            match generated {
                Ok(replies) => {
                    let mut collector = PairCollector::new(tuning.parse_limits);
                    replies.iter().for_each(|reply| collector.add_reply(reply));
                    let (pairs, parse_dropped) = collector.into_parts();
                    dropped.add(&parse_dropped);
                    let mut kept = 0;
                    let clause = clauses[fact];
                    for pair in pairs {
                        let fits = source
                            .check_question(&pair.question, &answer, clause, &chunk.title)
                            .map_err(|reason| reason.to_string())
                            .and_then(|()| {
                                (!about_another_clause(&pair.question, clause, &clauses))
                                    .then_some(())
                                    .ok_or_else(|| {
                                        "question is about another fact's clause".to_string()
                                    })
                            })
                            .and_then(|()| {
                                asks_for_kind(&pair.question, &sentence.text, span)
                                    .then_some(())
                                    .ok_or_else(|| {
                                        "question word does not fit the fact".to_string()
                                    })
                            });
                        if fits.is_err() || kept >= request.pairs_wanted {
                            if let Err(reason) = fits {
                                tracing::debug!(job_id = %chunk.job_id, sentence = sentence.index, question = %pair.question, %reason, "dropped question");
                                dropped.ungrounded += 1;
                            }
                            continue;
                        }
                        kept += 1;
                        let pair = QaPair {
                            question: pair.question,
                            answer: fact_answers[fact].clone(),
                        };
                        keep(TaskKind::FactQa, pair, &mut tasks);
                    }
                }
                // The generator may come back: the chunk is retried for its questions.
                Err(error) if error.is_transient() => return Err(error),
                // It will fail again (say, the prompt is too long): the templates stand in.
                Err(error) => {
                    tracing::debug!(job_id = %chunk.job_id, sentence = sentence.index, %error, "no generated question for a fact");
                }
            }
        }
        let clause_questions = clause_question_source(span, &sentence.text)
            .map(|(clause, span)| templated_questions(&clause, &span, Some(&chunk.title)))
            .unwrap_or_default();
        for templated in templated_questions(&sentence.text, span, Some(&chunk.title))
            .into_iter()
            .chain(clause_questions)
        {
            let question = match &referent {
                Some(referent) => referent.named_in(&templated.question),
                None => templated.question,
            };
            let pair = QaPair {
                question,
                answer: fact_answers[fact].clone(),
            };
            keep(TaskKind::FactTemplate, pair, &mut tasks);
        }
    }
    let restatements = match restated {
        Ok(restatements) => restatements,
        Err(error) if error.is_transient() => return Err(error),
        // The sentence's own questions stand without them.
        Err(error) => {
            tracing::debug!(job_id = %chunk.job_id, sentence = sentence.index, %error, "no rewording of the sentence");
            Vec::new()
        }
    };
    for restatement in &restatements {
        match restated_questions(&sentence.text, &spans, &restatement.text) {
            Ok(questions) => {
                for (fact, templated) in questions {
                    let pair = QaPair {
                        question: templated.question,
                        answer: fact_answers[fact].clone(),
                    };
                    keep(TaskKind::Restated, pair, &mut tasks);
                }
            }
            Err(reason) => {
                tracing::debug!(job_id = %chunk.job_id, sentence = sentence.index, restatement = %restatement.text, %reason, "dropped rewording");
                dropped.unusable_rewording += 1;
            }
        }
    }
    for (fact, span) in spans.iter().enumerate() {
        // One key per fact, taken in turn, so a sentence's facts are asked by different keys
        // and the tasks grow with the keys, not with keys x facts.
        let key = (0..keys.len())
            .map(|turn| keys[(fact + turn) % keys.len()])
            .find(|key| !span.overlaps(key.start, key.end));
        if let Some(key) = key {
            let keyed = keyed_question(&sentence.text, span, key.text(&sentence.text));
            let pair = QaPair {
                question: keyed.question,
                answer: fact_answers[fact].clone(),
            };
            keep(TaskKind::Keyed, pair, &mut tasks);
        }
    }
    let names = spans
        .iter()
        .filter(|span| span.kind == FactKind::Name)
        .map(|span| span.text(&sentence.text));
    for subject in names.chain(keys.iter().map(|key| key.text(&sentence.text))) {
        let pair = QaPair {
            question: format!("What does the text say about {subject}?"),
            answer: with_suffix(sentence.text.trim(), suffix),
        };
        keep(TaskKind::Recall, pair, &mut tasks);
    }
    if options.recite_fact_sentences {
        keep(TaskKind::Passage, passage_task(sentence, label), &mut tasks);
    }
    metrics::QA_PAIRS_PER_SENTENCE.observe(tasks.len() as f64);
    Ok(SentenceTasks { tasks, dropped })
}

/// A generator call, timed and its failure counted.
async fn metered<T>(
    call: impl std::future::Future<Output = Result<T, GeneratorError>>,
) -> Result<T, GeneratorError> {
    let timer = metrics::GENERATOR_REQUEST_SECONDS.start_timer();
    let result = call.await;
    timer.observe_duration();
    if result.is_err() {
        metrics::GENERATOR_ERRORS.inc();
    }
    result
}

/// The free recipe for one sentence: the generator writes whole pairs, rounds of samples
/// until enough are grounded.
async fn synthesize_sentence(
    generator: &dyn QaGenerator,
    chunk: &SynthChunk,
    sentence: &SentenceUnit,
    tuning: &SynthesisTuning,
) -> Result<SentenceTasks, GeneratorError> {
    let options = &chunk.options;
    let wanted = options.qa_per_sentence as usize;
    let source = SentenceSource::new(&sentence.text, &sentence.left_context);
    let mut collector = PairCollector::new(tuning.parse_limits);
    let mut request = QaRequest {
        title: chunk.title.clone(),
        sentence: sentence.text.clone(),
        left_context: sentence.left_context.clone(),
        pairs_wanted: options.qa_per_sentence,
        temperature: options.temperature,
        seed: 0,
        model: Some(options.generator_model.clone()).filter(|model| !model.is_empty()),
        answer: None,
    };
    // Only answers are checked here: the question check of the fact-first recipe drops most of
    // what SmolLM2 writes behind `lift serve`, and a strong generator needs it less.
    let grounded = |pair: &QaPair| -> Result<(), String> {
        source
            .check(&pair.answer, tuning.grounding)
            .map_err(|reason| reason.to_string())
    };
    for round in 0..tuning.rounds_per_sentence.max(1) {
        request.seed = sentence_seed(options.seed, sentence.index, round);
        match metered(generator.generate(&request)).await {
            Ok(replies) => replies.iter().for_each(|reply| collector.add_reply(reply)),
            Err(error) if round == 0 => return Err(error),
            // Later rounds only top up; what the first round gave is kept.
            Err(error) => {
                tracing::debug!(
                    job_id = %chunk.job_id,
                    sentence = sentence.index,
                    %error,
                    "extra generation round failed"
                );
                break;
            }
        }
        let usable = collector
            .pairs()
            .iter()
            .filter(|pair| grounded(pair).is_ok())
            .count();
        if usable >= wanted {
            break;
        }
    }

    let (candidates, mut dropped) = collector.into_parts();
    let mut pairs = Vec::new();
    for pair in candidates {
        match grounded(&pair) {
            Ok(()) => pairs.push((TaskKind::Qa, pair)),
            Err(reason) => {
                tracing::debug!(
                    job_id = %chunk.job_id,
                    sentence = sentence.index,
                    question = %pair.question,
                    answer = %pair.answer,
                    %reason,
                    "dropped ungrounded pair"
                );
                dropped.ungrounded += 1;
            }
        }
    }
    // Extra grounded pairs beyond the wanted number are surplus, not invalid: not counted.
    pairs.truncate(wanted);
    metrics::QA_PAIRS_PER_SENTENCE.observe(pairs.len() as f64);
    Ok(SentenceTasks {
        tasks: pairs,
        dropped,
    })
}

/// A seed per (job seed, sentence, round), so a redelivered chunk asks the same questions
/// again and no two sentences or rounds share a sample stream. Backends add small offsets
/// per sample (below 2^16).
fn sentence_seed(job_seed: u64, sentence_index: u32, round: u32) -> u64 {
    job_seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(u64::from(sentence_index) << 24)
        .wrapping_add(u64::from(round) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RawReply;

    /// A chunk of one sentence for the fact-first recipe.
    fn fact_first_chunk(title: &str, left_context: &str, sentence: &str) -> SynthChunk {
        SynthChunk {
            job_id: lift_shared::ids::JobId::parse("j").unwrap(),
            chunk_index: 0,
            title: title.into(),
            sentences: vec![SentenceUnit {
                index: 0,
                document: 0,
                left_context: left_context.into(),
                text: sentence.into(),
            }],
            options: lift_shared::spec::SynthesisOptions {
                recipe: QuestionRecipe::FactFirst,
                ..Default::default()
            },
        }
    }

    /// The chunk's tasks with the generator that answers at once, and the default tuning.
    async fn synthesize_instantly(chunk: &SynthChunk) -> ChunkSynthesis {
        synthesize_chunk(
            &crate::instant::InstantGenerator,
            chunk,
            &SynthesisTuning::default(),
        )
        .await
    }

    #[tokio::test]
    async fn each_fact_is_asked_by_a_key_phrase_that_also_recalls_the_sentence() {
        let sentence = "A solar-powered water pump was installed in 2016 by Ada Brell.";
        let mut chunk = fact_first_chunk("Veskar Hut", "The hut has a water supply.", sentence);
        chunk.options.key_phrases = 2;
        let questions = |synthesis: &ChunkSynthesis, kind: TaskKind| -> Vec<String> {
            synthesis
                .tasks
                .iter()
                .filter(|task| task.kind == kind.name())
                .map(|task| format!("{} -> {}", task.question, task.answer))
                .collect()
        };
        let synthesis = synthesize_instantly(&chunk).await;
        // Keys, most distinctive first: "solar-powered water pump" (two words the text before
        // lacks), "Ada Brell"; each fact takes the next key that is not itself.
        assert_eq!(
            questions(&synthesis, TaskKind::Keyed),
            vec![
                format!("What year does the text give for solar-powered water pump? -> {sentence}"),
                format!(
                    "Which name does the text give for solar-powered water pump? -> {sentence}"
                ),
            ]
        );
        assert_eq!(
            questions(&synthesis, TaskKind::Recall),
            vec![
                format!("What does the text say about Ada Brell? -> {sentence}"),
                format!("What does the text say about solar-powered water pump? -> {sentence}"),
            ]
        );

        let mut without = chunk.clone();
        without.options.key_phrases = 0;
        let synthesis = synthesize_instantly(&without).await;
        assert!(questions(&synthesis, TaskKind::Keyed).is_empty());
        assert_eq!(questions(&synthesis, TaskKind::Recall).len(), 1);
    }

    #[tokio::test]
    async fn a_sentence_with_facts_is_recited_only_when_the_job_asks() {
        let passages = |chunk: &SynthChunk| {
            let chunk = chunk.clone();
            async move {
                synthesize_instantly(&chunk)
                    .await
                    .tasks
                    .iter()
                    .filter(|task| task.kind == TaskKind::Passage.name())
                    .map(|task| format!("{} -> {}", task.question, task.answer))
                    .collect::<Vec<_>>()
            }
        };
        let with_facts = "The pump was installed in 2016 by Ada Brell.";
        let mut chunk = fact_first_chunk("Veskar Hut", "The hut has water.", with_facts);
        assert_eq!(
            passages(&chunk).await,
            [format!(
                "What does the text say after \"The hut has water.\"? -> {with_facts}"
            )]
        );
        chunk.options.recite_fact_sentences = false;
        assert!(passages(&chunk).await.is_empty());
        // A sentence without facts is taught by its passage task alone, so it keeps it.
        chunk.sentences[0].text = "The water tastes of peat.".into();
        assert_eq!(passages(&chunk).await.len(), 1);
    }

    #[tokio::test]
    async fn every_item_of_a_long_list_is_asked_for() {
        let sentence = "For the dough: 400 grams of white flour, 250 grams of rye flour, 430 \
                        millilitres of water, 3 tablespoons of honey, 14 grams of sea salt, and \
                        2 teaspoons of caraway seeds.";
        let chunk = fact_first_chunk("Honey Rye", "", sentence);
        let synthesis = synthesize_instantly(&chunk).await;
        let templated: Vec<&Task> = synthesis
            .tasks
            .iter()
            .filter(|task| task.kind == TaskKind::FactTemplate.name())
            .collect();
        for item in [
            "white flour",
            "rye flour",
            "water",
            "honey",
            "sea salt",
            "caraway seeds",
        ] {
            assert!(
                templated
                    .iter()
                    .any(|task| task.question.contains(item) && task.answer.contains(item)),
                "no question for {item}: {templated:#?}"
            );
        }
    }

    #[test]
    fn the_previous_sentence_is_the_last_one_of_the_left_context() {
        assert_eq!(
            previous_sentence("The mill was built in 1761. It burned in 1851.\n\n"),
            "It burned in 1851."
        );
        assert_eq!(
            previous_sentence("Intro. The lock lifts boats by 3.4 metres."),
            "The lock lifts boats by 3.4 metres."
        );
        assert_eq!(previous_sentence("One sentence only"), "One sentence only");
        assert_eq!(previous_sentence(""), "");
        let long = format!("Start. {}end.", "word ".repeat(60));
        let last = previous_sentence(&long);
        assert!(last.len() <= 200 && last.starts_with("word") && last.ends_with("end."));
    }

    #[test]
    fn evidence_is_the_clause_of_a_long_sentence_and_a_short_sentence_whole() {
        let long = "It was commissioned in 1761 by the wool merchant Aldous van der Brekke, who \
                    had grown tired of paying the inland millers of Tressock to grind his \
                    tenants' grain.";
        let spans = fact_spans(long);
        let year = spans.iter().find(|s| s.text(long) == "1761").unwrap();
        assert_eq!(
            evidence_answer(&evidence(year, long), None),
            "It was commissioned in 1761 by the wool merchant Aldous van der Brekke"
        );
        let place = spans.iter().find(|s| s.text(long) == "Tressock").unwrap();
        assert_eq!(
            evidence_answer(&evidence(place, long), None),
            "who had grown tired of paying the inland millers of Tressock to grind his tenants' \
             grain."
        );
        let short = "The wheel carried 48 paddles.";
        assert_eq!(evidence(&fact_spans(short)[0], short), short);
        let thousands = "The Trust raised 186,000 pounds over twelve years, much of it through \
                         an annual Tide Fair held on the first Saturday of August each year.";
        let amount = &fact_spans(thousands)[0];
        assert_eq!(
            evidence(amount, thousands),
            "The Trust raised 186,000 pounds over twelve years"
        );
        let list = "For the dough: all of the starter, 400 grams of strong white bread flour, \
                    250 grams of light rye flour, 3 tablespoons of heather honey, 14 grams of \
                    fine sea salt, and 2 teaspoons of toasted caraway seeds.";
        let evidence_of = |value: &str| {
            let spans = fact_spans(list);
            let span = spans.iter().find(|s| s.text(list).starts_with(value));
            evidence(span.unwrap(), list).into_owned()
        };
        assert_eq!(
            evidence_of("3 "),
            "For the dough: 3 tablespoons of heather honey"
        );
        assert_eq!(evidence_of("400"), "400 grams of strong white bread flour");
    }

    #[test]
    fn a_fact_deep_in_a_long_sentence_is_also_asked_from_its_clause() {
        let questions_of = |sentence: &str, value: &str| {
            let spans = fact_spans(sentence);
            let span = spans.iter().find(|s| s.text(sentence).starts_with(value));
            clause_question_source(span.unwrap(), sentence).map(|(clause, span)| {
                assert!(clause[span.start..].starts_with(value), "{clause}");
                let questions = templated_questions(&clause, &span, None);
                questions
                    .into_iter()
                    .map(|q| q.question)
                    .collect::<Vec<_>>()
            })
        };
        let list = "For the dough: all of the starter, 400 grams of strong white bread flour, \
                    250 grams of light rye flour, 3 tablespoons of heather honey, 14 grams of \
                    fine sea salt, and 2 teaspoons of toasted caraway seeds.";
        assert_eq!(
            questions_of(list, "14"),
            Some(vec![
                "For the dough: how many grams of fine sea salt?".to_string()
            ])
        );
        // The joining word goes; a short opening clause, the subject here, stays.
        let pond = "The mill pond, known locally as the Long Hold, covered eleven acres and was \
                    held back by an earth dam 340 yards long.";
        let acres = questions_of(pond, "eleven").unwrap();
        assert!(
            acres.contains(&"The mill pond covered how many acres and was held back by an earth dam 340 yards long?".to_string()),
            "{acres:?}"
        );
        let storm = "A great storm on the night of 7 November 1851 breached the dam in two \
                     places, and the mill stood idle for nineteen months while repairs were made.";
        assert_eq!(
            questions_of(storm, "nineteen"),
            Some(vec![
                "The mill stood idle for how many months while repairs were made?".to_string(),
                "The mill stood idle for how long while repairs were made?".to_string()
            ])
        );
        // The first clause is asked from the sentence already; a short sentence is evidence
        // whole.
        assert_eq!(questions_of(storm, "7 November"), None);
        assert_eq!(
            questions_of(list, "400"),
            Some(vec![
                "For the dough: how many grams of strong white bread flour?".to_string()
            ])
        );
        assert_eq!(questions_of("The wheel carried 48 paddles.", "48"), None);
    }

    #[test]
    fn an_answer_under_a_markdown_heading_ends_with_it() {
        let unit = |text: &str, left_context: &str| SentenceUnit {
            index: 3,
            document: 0,
            left_context: left_context.into(),
            text: text.into(),
        };
        let before = "Intro.\n\n## 4.2.1 - 18 June 2024\n\nFixed\n- Fixed the progress bar.\n";
        let bullet = unit("- Fixed a crash with 65,535 files.", before);
        let heading = section_heading(&bullet, &bullet.left_context);
        assert_eq!(heading, Some("4.2.1 - 18 June 2024"));
        let span = &fact_spans(&bullet.text)[0];
        assert_eq!(
            evidence_answer(&evidence(span, &bullet.text), heading),
            "Fixed a crash with 65,535 files (4.2.1 - 18 June 2024)."
        );
        let title = unit("## 4.2.0 - 2 May 2024", before);
        assert_eq!(section_heading(&title, &title.left_context), None);
        let plain = unit("It burned in 1851.", "The mill was built in 1761.");
        assert_eq!(section_heading(&plain, &plain.left_context), None);
    }

    #[test]
    fn a_list_label_is_a_number_or_letter_with_a_dot_or_brackets() {
        fn label(sentence: &str) -> Option<&str> {
            list_label(sentence).map(|(label, _)| label)
        }
        assert_eq!(
            list_label("7.1 The Customer shall pay."),
            Some(("7.1", "The Customer shall pay."))
        );
        assert_eq!(label("3. Turn the dial."), Some("3"));
        assert_eq!(label("(b) the Goods stored."), Some("b"));
        assert_eq!(label("iv) the term."), Some("iv"));
        for unlabelled in [
            "14 March 1687 saw the founding.",
            "2024 was a dry year.",
            "4.2.0 - 2 May 2024",
            "3.5 metres of rope.",
            "(2024) The year.",
            "7.",
        ] {
            assert_eq!(label(unlabelled), None, "{unlabelled}");
        }
    }

    #[test]
    fn a_run_in_heading_is_left_out_of_the_sentence() {
        assert_eq!(
            sentence_body("Methods. Seeds were collected in 2022."),
            ("Seeds were collected in 2022.", None)
        );
        assert_eq!(
            sentence_body("- Funding. The work was paid for by the Trust."),
            ("The work was paid for by the Trust.", None)
        );
        assert_eq!(
            sentence_body("Results. 7.1 The Customer shall pay."),
            ("The Customer shall pay.", Some("7.1"))
        );
        // A title, an initial, a short word or a lower-case continuation is no heading.
        for text in [
            "Prof. Okafor led the survey.",
            "J. Smith led the survey.",
            "Aim. To test it.",
            "Results. they were clear.",
            "Seeds were collected.",
        ] {
            assert_eq!(sentence_body(text), (text, None), "{text}");
        }
    }

    #[tokio::test]
    async fn a_line_that_labels_what_follows_is_not_trained_and_not_failed() {
        for label in ["Fixed", "Security", "## Cleaning and care"] {
            let chunk = fact_first_chunk("Pondskater Changelog", "## 4.2.1 - 18 June 2024", label);
            let synthesis = synthesize_instantly(&chunk).await;
            assert!(synthesis.tasks.is_empty(), "{label}: {:?}", synthesis.tasks);
            assert!(
                synthesis.failures.is_empty(),
                "{label}: {:?}",
                synthesis.failures
            );
        }
        // A heading with facts is asked about; a short sentence is text.
        for text in ["## 4.2.1 - 18 June 2024", "She never asked."] {
            let chunk = fact_first_chunk("Pondskater Changelog", "Fixed", text);
            assert!(
                !synthesize_instantly(&chunk).await.tasks.is_empty(),
                "{text}"
            );
        }
    }

    #[tokio::test]
    async fn a_bullet_opens_no_question() {
        assert_eq!(without_bullet("- 6 trays"), Some("6 trays"));
        assert_eq!(without_bullet("• 6 trays"), Some("6 trays"));
        for kept in ["-6 degrees at night.", "*Note*: keep dry.", "- ", "6 trays"] {
            assert_eq!(without_bullet(kept), None, "{kept}");
        }
        for item in [
            "- 6 stackable drying trays (part number TR-4412)",
            "- Updated the bundled TLS library to version 3.1.7 to address PSK-2024-0419.",
        ] {
            let chunk = fact_first_chunk("Manual", "What is in the box", item);
            let synthesis = synthesize_instantly(&chunk).await;
            assert!(!synthesis.tasks.is_empty());
            for task in &synthesis.tasks {
                assert!(!task.question.starts_with('-'), "{task:?}");
            }
            assert_eq!(synthesis.facts.found, synthesis.facts.covered, "{item}");
        }
    }

    #[tokio::test]
    async fn a_clause_number_goes_to_the_end_of_every_answer() {
        let sentence = "7.4 The Provider may charge interest at 4 per cent per annum.";
        let chunk = fact_first_chunk("Agreement", "7.3 Invoices are monthly.", sentence);
        let synthesis = synthesize_instantly(&chunk).await;
        assert!(!synthesis.tasks.is_empty());
        for task in &synthesis.tasks {
            assert!(
                task.answer.starts_with("The Provider") && task.answer.ends_with(" (7.4)."),
                "{task:?}"
            );
            assert!(!task.question.contains("7.4"), "{task:?}");
        }
        assert_eq!(synthesis.facts.found, synthesis.facts.covered);
    }

    /// A server generator whose model writes nothing parseable.
    struct GarbageGenerator;

    #[async_trait::async_trait]
    impl QaGenerator for GarbageGenerator {
        async fn generate(&self, _: &QaRequest) -> Result<Vec<RawReply>, GeneratorError> {
            Ok(vec![RawReply {
                text: "%%% garbage %%%".into(),
            }])
        }

        async fn restate(&self, _: &RestateRequest) -> Result<Vec<RawReply>, GeneratorError> {
            Ok(Vec::new())
        }
    }

    #[tokio::test]
    async fn auto_asks_for_the_facts_of_a_sentence_free_questions_failed_for() {
        let sentence = "Oskar Tenby has kept the light since 1994.";
        let mut chunk = fact_first_chunk("Vellmar Island", "", sentence);
        let tuning = SynthesisTuning::default();

        chunk.options.recipe = QuestionRecipe::FreeQa;
        let free = synthesize_chunk(&GarbageGenerator, &chunk, &tuning).await;
        assert!(free.tasks.is_empty());
        assert_eq!(free.sentences_failed(), 1);

        chunk.options.recipe = QuestionRecipe::Auto;
        let auto = synthesize_chunk(&GarbageGenerator, &chunk, &tuning).await;
        assert_eq!(auto.sentences_failed(), 0);
        assert_eq!(auto.facts.found, auto.facts.covered);
        assert!(auto.facts.found >= 2, "{:?}", auto.facts);
        assert!(
            auto.tasks
                .iter()
                .any(|task| task.kind == TaskKind::FactTemplate.name()
                    && task.answer.contains("1994")),
            "{:?}",
            auto.tasks
        );
        // What the free questions dropped is still reported.
        assert!(auto.pairs_dropped.total() > 0, "{:?}", auto.pairs_dropped);
    }

    /// Counts the calls it gets and answers with the sentence as the answer.
    #[derive(Default)]
    struct CountingGenerator(std::sync::atomic::AtomicUsize);

    #[async_trait::async_trait]
    impl QaGenerator for CountingGenerator {
        async fn generate(&self, request: &QaRequest) -> Result<Vec<RawReply>, GeneratorError> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            crate::instant::InstantGenerator.generate(request).await
        }

        async fn restate(&self, _: &RestateRequest) -> Result<Vec<RawReply>, GeneratorError> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(Vec::new())
        }
    }

    #[tokio::test]
    async fn the_templates_recipe_asks_every_fact_without_calling_the_generator() {
        let sentence = "Oskar Tenby has kept the light since 1994 for 212 pounds a year.";
        let mut chunk = fact_first_chunk("Vellmar Island", "", sentence);
        let tuning = SynthesisTuning::default();

        let generator = CountingGenerator::default();
        let fact_first = synthesize_chunk(&generator, &chunk, &tuning).await;
        assert!(generator.0.load(std::sync::atomic::Ordering::SeqCst) > 0);

        chunk.options.recipe = QuestionRecipe::Templates;
        let generator = CountingGenerator::default();
        let templates = synthesize_chunk(&generator, &chunk, &tuning).await;
        assert_eq!(generator.0.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert_eq!(templates.sentences_failed(), 0);
        assert_eq!(templates.facts, fact_first.facts);
        assert_eq!(templates.facts.found, templates.facts.covered);
        assert!(templates
            .tasks
            .iter()
            .all(|task| task.kind != TaskKind::FactQa.name()));
    }

    #[test]
    fn coverage_counts_facts_some_answer_contains() {
        let sentence = "The wheel carried forty-eight paddles and cost €1,250 in 1765.";
        let coverage = FactCoverage::of(sentence, &["48 paddles", "It cost 1250 euros, €1,250."]);
        assert_eq!(
            coverage,
            FactCoverage {
                found: 3,
                covered: 1
            }
        );
    }
}
