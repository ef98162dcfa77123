//! The README is the configuration reference: every `LIFT_*` environment variable that the
//! workspace's Rust code reads is named there, and every one it names is read by the code or
//! by a script.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cli/ lies in the workspace")
        .to_path_buf()
}

/// Every `.rs` file under `dir`, build output and hidden directories left out.
fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&path, found);
            }
        } else if name.ends_with(".rs") {
            found.push(path);
        }
    }
}

/// `"LIFT_..."` string literals: what `std::env::var` and clap's `env =` are given.
fn variables_in(text: &str) -> impl Iterator<Item = String> + '_ {
    text.match_indices("\"LIFT_").filter_map(|(start, _)| {
        let name: String = text[start + 1..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        (text[start + 1 + name.len()..].starts_with('"') && name.len() > "LIFT_".len())
            .then_some(name)
    })
}

/// The text of every `.rs` file of the workspace but this one, whose own examples are not
/// variables.
fn rust_sources(root: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(root, &mut files);
    files
        .iter()
        .filter(|file| !file.ends_with("cli/tests/readme.rs"))
        .map(|file| std::fs::read_to_string(file).unwrap())
        .collect()
}

#[test]
fn every_variable_the_code_reads_is_in_the_readme() {
    let root = workspace_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut read: BTreeSet<String> = BTreeSet::new();
    for source in rust_sources(&root) {
        read.extend(variables_in(&source));
    }
    assert!(
        read.contains("LIFT_STORE_URL") && read.contains("LIFT_SERVE_ADDR"),
        "the scan found too little: {read:?}"
    );
    let missing: Vec<&String> = read
        .iter()
        .filter(|name| {
            // A whole word: LIFT_TLS_CA is not documented by LIFT_TLS_CA_FILE.
            !readme.match_indices(name.as_str()).any(|(at, _)| {
                let next = readme[at + name.len()..].chars().next();
                !next.is_some_and(|c| c.is_ascii_uppercase() || c == '_')
            })
        })
        .collect();
    assert!(
        missing.is_empty(),
        "README.md does not name {missing:?}; add them to its Configuration section"
    );
}

/// `LIFT_NAME` words in `text` (a trailing `_`, as in "`LIFT_*`", is no name).
fn names_in_prose(text: &str) -> BTreeSet<String> {
    text.match_indices("LIFT_")
        .filter(|(at, _)| {
            !text[..*at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        })
        .map(|(at, _)| {
            text[at..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect::<String>()
        })
        .filter(|name| name.len() > "LIFT_".len() && !name.ends_with('_'))
        .collect()
}

#[test]
fn every_variable_the_readme_names_is_read_somewhere() {
    let root = workspace_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut code = rust_sources(&root).concat();
    for entry in std::fs::read_dir(root.join("scripts")).unwrap() {
        code.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default());
    }
    let named = names_in_prose(&readme);
    assert!(
        named.contains("LIFT_STORE_URL"),
        "the scan found too little: {named:?}"
    );
    let read = names_in_prose(&code);
    let stale: Vec<&String> = named.difference(&read).collect();
    assert!(
        stale.is_empty(),
        "README.md names {stale:?}, which no code or script reads; drop or fix them"
    );
}

#[test]
fn prose_names_are_whole_words() {
    let found = names_in_prose("set LIFT_A1, not XLIFT_B or `LIFT_*` or LIFT_C_, LIFT_D.");
    assert_eq!(found.into_iter().collect::<Vec<_>>(), ["LIFT_A1", "LIFT_D"]);
}

#[test]
fn only_whole_quoted_names_count() {
    let text = r#"env = "LIFT_SERVE_ADDR", var("LIFT_A1"), "LIFT_" , "LIFT_X-y", LIFT_BARE"#;
    let found: Vec<String> = variables_in(text).collect();
    assert_eq!(found, ["LIFT_SERVE_ADDR", "LIFT_A1"]);
}
