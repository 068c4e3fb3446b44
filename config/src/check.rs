//! Offline checks of Picket's files, for CI pipelines (`picketctl rollout
//! check`, `picketctl alerts check`, `picket-control check`, `picket-agent
//! check`): each problem found by the same checks the running code uses,
//! put at the line and column of the TOML that holds it.
//!
//! A problem is `FILE:LINE:COL: field: message`, the field spelt as the
//! checks spell it (`wave[1].selector`, `rule "HighCpu".for`,
//! `limits.handshake_timeout`). [`Doc`] finds that field in the file's
//! TOML (the deepest part of it that is there); a TOML error carries its
//! own place.

use std::ops::Range;

use serde::Serialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// How bad a finding is: an error fails the check; a warning only with
/// `--strict`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Error,
    Warning,
}

/// One problem in a file, and where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub file: String,
    /// 1-based; absent when the file has no place for it.
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub field: String,
    pub message: String,
    pub level: Level,
}

impl std::fmt::Display for Finding {
    /// `FILE:LINE:COL: field: message`, as compilers and linters write it
    /// (editors and CI annotations read it); a warning says so.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file)?;
        if let (Some(l), Some(c)) = (self.line, self.column) {
            write!(f, ":{l}:{c}")?;
        }
        let warn = if self.level == Level::Warning {
            "warning: "
        } else {
            ""
        };
        if self.field.is_empty() {
            write!(f, ": {warn}{}", self.message)
        } else {
            write!(f, ": {warn}{}: {}", self.field, self.message)
        }
    }
}

/// A file's text and its TOML tree with the place of every key and value.
pub struct Doc<'a> {
    file: String,
    text: &'a str,
    tree: Option<Spanned<DeTable<'a>>>,
}

impl<'a> Doc<'a> {
    /// `file` is how findings name it (as the user typed it).
    pub fn new(file: impl Into<String>, text: &'a str) -> Doc<'a> {
        Doc {
            file: file.into(),
            text,
            tree: DeTable::parse(text).ok(),
        }
    }

    fn finding(
        &self,
        at: Option<Range<usize>>,
        field: &str,
        message: &str,
        level: Level,
    ) -> Finding {
        let (line, column) = at.map_or((None, None), |r| {
            let (l, c) = line_col(self.text, r.start);
            (Some(l), Some(c))
        });
        Finding {
            file: self.file.clone(),
            line,
            column,
            field: field.to_string(),
            message: message.to_string(),
            level,
        }
    }

    /// A problem with `field`, put where the field (or the deepest part
    /// of its path that the file has) is written.
    pub fn problem(&self, field: &str, message: &str, level: Level) -> Finding {
        self.finding(self.locate(field), field, message, level)
    }

    /// A problem as the checks write it, `field: message`.
    pub fn problem_text(&self, text: &str, level: Level) -> Finding {
        let (field, message) = split(text);
        self.problem(field, message, level)
    }

    /// What TOML (or serde, for an unknown key or a wrong type) refused,
    /// where it says.
    pub fn toml_error(&self, e: &toml::de::Error) -> Finding {
        let span = e.span();
        let field = span
            .clone()
            .and_then(|r| self.text.get(r))
            .filter(|k| is_key(k))
            .unwrap_or("")
            .trim_matches('"')
            .to_string();
        self.finding(span, &field, e.message().trim(), Level::Error)
    }

    /// The place of `field` in the file: its key, or the deepest part of
    /// its path that is there (`wave[1]` for a missing `wave[1].selector`).
    pub fn locate(&self, field: &str) -> Option<Range<usize>> {
        let tree = self.tree.as_ref()?;
        let mut table = tree.get_ref();
        let mut found: Option<Range<usize>> = None;
        let segments = path(field);
        for (n, seg) in segments.iter().enumerate() {
            let Some((key, value)) = table.get_key_value(seg.key.as_str()) else {
                break;
            };
            found = Some(key.span());
            let mut value: &Spanned<DeValue<'_>> = value;
            match &seg.pick {
                Pick::None => {}
                Pick::Index(i) => match value.get_ref() {
                    DeValue::Array(a) => match a.get(*i) {
                        Some(v) => {
                            found = Some(v.span());
                            value = v;
                        }
                        None => break,
                    },
                    _ => break,
                },
                Pick::Named(name) => match value.get_ref() {
                    DeValue::Array(a) => {
                        let named = a.iter().find(|v| match v.get_ref() {
                            DeValue::Table(t) => t.get("name").is_some_and(
                                |n| matches!(n.get_ref(), DeValue::String(s) if s.as_ref() == name),
                            ),
                            _ => false,
                        });
                        match named {
                            Some(v) => {
                                found = Some(named_span(v).unwrap_or_else(|| v.span()));
                                value = v;
                            }
                            None => break,
                        }
                    }
                    _ => break,
                },
            }
            if n + 1 == segments.len() {
                break;
            }
            match value.get_ref() {
                DeValue::Table(t) => table = t,
                _ => break,
            }
        }
        found
    }
}

/// An array-of-tables element is put at its `name = ...` line.
fn named_span(v: &Spanned<DeValue<'_>>) -> Option<Range<usize>> {
    match v.get_ref() {
        DeValue::Table(t) => t.get_key_value("name").map(|(k, _)| k.span()),
        _ => None,
    }
}

/// `field: message` split at the first `: ` outside quotes; text that
/// does not start with a field path (a space before it, other than the
/// one before a quoted name) is all message.
pub fn split(text: &str) -> (&str, &str) {
    let mut quoted = false;
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted && !text[i + 1..].starts_with('"') => return ("", text),
            ':' if !quoted && text[i + 1..].starts_with(' ') => {
                return (&text[..i], &text[i + 2..]);
            }
            _ => {}
        }
    }
    ("", text)
}

fn is_key(s: &str) -> bool {
    let s = s.trim_matches('"');
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

enum Pick {
    None,
    Index(usize),
    Named(String),
}

struct Segment {
    key: String,
    pick: Pick,
}

/// `a.b[2].c`, `rule "High.Cpu".for`: the keys of a field's path.
fn path(field: &str) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut chars = field.chars().peekable();
    loop {
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| !matches!(c, '.' | '[' | ' '))).collect();
        if key.is_empty() {
            break;
        }
        let pick = match chars.peek() {
            Some('[') => {
                chars.next();
                let n: String = std::iter::from_fn(|| chars.next_if(|c| *c != ']')).collect();
                chars.next();
                n.parse().map_or(Pick::None, Pick::Index)
            }
            Some(' ') => {
                chars.next();
                if chars.next_if_eq(&'"').is_some() {
                    let mut name = String::new();
                    while let Some(c) = chars.next() {
                        match c {
                            '\\' => name.extend(chars.next()),
                            '"' => break,
                            c => name.push(c),
                        }
                    }
                    Pick::Named(name)
                } else {
                    Pick::None
                }
            }
            _ => Pick::None,
        };
        out.push(Segment { key, pick });
        if chars.next_if_eq(&'.').is_none() {
            break;
        }
    }
    out
}

/// How a check came out: what was printed, and whether it fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub errors: usize,
    pub warnings: usize,
}

impl Tally {
    /// An error fails a check; a warning only with `strict`.
    pub fn fails(&self, strict: bool) -> bool {
        self.errors > 0 || (strict && self.warnings > 0)
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = |n: usize| if n == 1 { "" } else { "s" };
        write!(
            f,
            "{} problem{}, {} warning{}",
            self.errors,
            s(self.errors),
            self.warnings,
            s(self.warnings)
        )
    }
}

/// Prints every finding, a line each (`json`: a JSON object each, for CI
/// annotations), and counts them: the one printer of every `check`.
pub fn print(
    found: &[Finding],
    json: bool,
    out: &mut impl std::io::Write,
) -> std::io::Result<Tally> {
    // Each file's findings in line order, the files in the order given.
    let mut files: Vec<&str> = Vec::new();
    for f in found {
        if !files.contains(&f.file.as_str()) {
            files.push(&f.file);
        }
    }
    let mut sorted: Vec<&Finding> = found.iter().collect();
    sorted.sort_by_key(|f| (files.iter().position(|x| *x == f.file), f.line.unwrap_or(0)));
    for f in sorted {
        if json {
            let line = serde_json::to_string(f).map_err(std::io::Error::other)?;
            writeln!(out, "{line}")?;
        } else {
            writeln!(out, "{f}")?;
        }
    }
    let errors = found.iter().filter(|f| f.level == Level::Error).count();
    Ok(Tally {
        errors,
        warnings: found.len() - errors,
    })
}

/// The problems of a file that the daemon reads at start, as one error:
/// every problem, `field: message`, joined.
pub fn all_problems(
    path: &std::path::Path,
    problems: Vec<(String, String)>,
) -> Result<(), crate::ConfigError> {
    if problems.is_empty() {
        return Ok(());
    }
    let all: Vec<String> = problems.iter().map(|(f, m)| format!("{f}: {m}")).collect();
    Err(crate::ConfigError::bad(path, all.join("; ")))
}

/// Every finding in a daemon's config file: what TOML refuses (a syntax
/// error, an unknown key, a wrong type), else each of `problems` of the
/// config as `resolve` makes it; with the config when it reads.
pub fn config<T: serde::de::DeserializeOwned>(
    file: &str,
    text: &str,
    resolve: impl FnOnce(T) -> T,
    problems: impl Fn(&T) -> Vec<(String, String)>,
) -> (Option<T>, Vec<Finding>) {
    let doc = Doc::new(file, text);
    match toml::from_str::<T>(text) {
        Err(e) => (None, vec![doc.toml_error(&e)]),
        Ok(raw) => {
            let cfg = resolve(raw);
            let found = problems(&cfg)
                .iter()
                .map(|(f, m)| doc.problem(f, m, Level::Error))
                .collect();
            (Some(cfg), found)
        }
    }
}

/// Every finding in a rollout file's text, by the checks `rollout
/// create` runs (`RawSpec::check`).
pub fn rollout(file: &str, text: &str) -> Vec<Finding> {
    let doc = Doc::new(file, text);
    match toml::from_str::<picket_model::rollout::RawSpec>(text) {
        Err(e) => vec![doc.toml_error(&e)],
        Ok(raw) => match raw.check() {
            Ok(_) => Vec::new(),
            Err(e) => {
                e.0.iter()
                    .map(|p| doc.problem(&p.field, &p.message, Level::Error))
                    .collect()
            }
        },
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    // An offset inside a character (never from the TOML parser) is put at
    // the character's start rather than trusted.
    let mut at = offset.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"name = "app"
max_parallel = 0

[[wave]]
name = "staging"
selector = "role=staging"

[[wave]]
name = "prod"
selector = "role in (prod"

[[rule]]
name = "High.Cpu"
for = "five minutes"
"#;

    #[test]
    fn a_field_is_found_where_the_file_writes_it() {
        let d = Doc::new("f.toml", FILE);
        let at = |field: &str| d.locate(field).map(|r| line_col(FILE, r.start));
        assert_eq!(at("max_parallel"), Some((2, 1)));
        assert_eq!(at("wave[1].selector"), Some((10, 1)));
        // Missing below a point: the deepest part that is there.
        assert_eq!(at("wave[1].health"), Some((8, 1)));
        assert_eq!(at("rule \"High.Cpu\".for"), Some((14, 1)));
        assert_eq!(at("nothing"), None);
        let f = d.problem_text("wave[1].selector: expected ) at character 14", Level::Error);
        assert_eq!(
            f.to_string(),
            "f.toml:10:1: wave[1].selector: expected ) at character 14"
        );
        let w = d.problem_text("rule \"High.Cpu\".for: odd: very", Level::Warning);
        assert_eq!(w.field, "rule \"High.Cpu\".for");
        assert_eq!(
            w.to_string(),
            "f.toml:14:1: warning: rule \"High.Cpu\".for: odd: very"
        );
    }

    #[test]
    fn toml_errors_carry_their_place_and_the_key() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct T {
            name: String,
        }
        let text = "name = \"x\"\nnmae = \"y\"\n";
        let e = toml::from_str::<T>(text).unwrap_err();
        let f = Doc::new("t.toml", text).toml_error(&e);
        assert_eq!(
            (f.line, f.column, f.field.as_str()),
            (Some(2), Some(1), "nmae")
        );
        assert!(f.message.contains("unknown field `nmae`"), "{}", f.message);
        let text = "name = \"x\nother = 1\n";
        let e = toml::from_str::<T>(text).unwrap_err();
        let f = Doc::new("t.toml", text).toml_error(&e);
        assert_eq!(f.line, Some(1), "{f}");
    }
}
