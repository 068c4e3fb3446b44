//! Label selectors, as Kubernetes writes them: which hosts a command, a
//! rollout's wave or an alert rule is for.
//!
//! ```text
//! role=prod            role == prod      role!=prod
//! role in (staging,prod)                 role notin (db)
//! role                 (has the key)     !role (lacks it)
//! role in (staging,prod),dc=eu           (a comma is AND)
//! ```
//!
//! A host's agent name is the label `name` (`name=vm-prod`), whatever its
//! other labels say. An empty selector is an error rather than "every
//! host": a deploy tool should not run everywhere by a typo; `name`
//! selects every host on purpose. Errors say what was expected and at
//! which character.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use super::Labels;

/// A parsed selector: every requirement must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    reqs: Vec<Requirement>,
}

/// One requirement on one label key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    NotExists(String),
}

/// Where a selector stops making sense, and what was expected there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{expected} at character {} of {input:?}", .at + 1)]
pub struct SelectorError {
    pub input: String,
    /// 0-based character offset.
    pub at: usize,
    pub expected: String,
}

impl Selector {
    /// The requirements, in the order written.
    pub fn requirements(&self) -> &[Requirement] {
        &self.reqs
    }

    /// A selector from matchers as alert files and silences write them
    /// (`{ severity = "info|low", team = "db" }`): each key must be there
    /// with one of its `|`-separated values. The one matcher behind
    /// selectors, routes, inhibitions and silences.
    pub fn of_matchers(m: &Labels) -> Selector {
        let reqs = m
            .iter()
            .map(|(k, v)| {
                if v.contains('|') {
                    Requirement::In(k.clone(), v.split('|').map(str::to_string).collect())
                } else {
                    Requirement::Eq(k.clone(), v.clone())
                }
            })
            .collect();
        Selector { reqs }
    }

    /// Whether a host named `name` with `labels` is selected (`name` is a
    /// label too, and wins over a label of that key).
    pub fn matches_host(&self, name: &str, labels: &Labels) -> bool {
        self.holds(|k| {
            if k == "name" {
                Some(name)
            } else {
                labels.get(k).map(String::as_str)
            }
        })
    }

    /// Whether `labels` (an alert's, a group's) are selected.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.holds(|k| labels.get(k).map(String::as_str))
    }

    fn holds<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.reqs.iter().all(|r| match r {
            Requirement::Eq(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEq(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.contains(x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| !vs.contains(x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        })
    }
}

fn key_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '/' | '-')
}

fn value_char(c: char) -> bool {
    !c.is_whitespace() && !c.is_control() && !matches!(c, ',' | '(' | ')' | '=' | '!')
}

/// A cursor over the selector's characters.
struct Parser<'a> {
    input: &'a str,
    chars: Vec<char>,
    at: usize,
}

impl Parser<'_> {
    fn err(&self, expected: impl Into<String>) -> SelectorError {
        SelectorError {
            input: self.input.to_string(),
            at: self.at,
            expected: expected.into(),
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn skip_spaces(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.at += 1;
        }
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn word(&mut self, ok: fn(char) -> bool) -> String {
        let start = self.at;
        while self.peek().is_some_and(ok) {
            self.at += 1;
        }
        self.chars[start..self.at].iter().collect()
    }

    fn key(&mut self) -> Result<String, SelectorError> {
        self.skip_spaces();
        let k = self.word(key_char);
        if k.is_empty() {
            return Err(self.err(match self.peek() {
                None => "a label key".to_string(),
                Some(c) => format!(
                    "a label key (lowercase letters, digits, '.', '_', '/', '-'), not {c:?}"
                ),
            }));
        }
        if k.len() > 63 {
            return Err(self.err("a label key of at most 63 characters"));
        }
        Ok(k)
    }

    fn value(&mut self) -> String {
        self.skip_spaces();
        self.word(value_char)
    }

    /// `(v1, v2, ...)`
    fn set(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        self.skip_spaces();
        if !self.eat('(') {
            return Err(self.err("'(' to open the list of values"));
        }
        let mut vs = BTreeSet::new();
        loop {
            let v = self.value();
            if v.is_empty() {
                return Err(self.err("a value"));
            }
            vs.insert(v);
            self.skip_spaces();
            if self.eat(')') {
                return Ok(vs);
            }
            if !self.eat(',') {
                return Err(self.err("',' or ')'"));
            }
        }
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        self.skip_spaces();
        if self.eat('!') {
            return Ok(Requirement::NotExists(self.key()?));
        }
        let key = self.key()?;
        let before_op = self.at;
        self.skip_spaces();
        if self.eat('!') {
            if !self.eat('=') {
                return Err(self.err("'=' after '!'"));
            }
            return Ok(Requirement::NotEq(key, self.value()));
        }
        if self.eat('=') {
            self.eat('=');
            return Ok(Requirement::Eq(key, self.value()));
        }
        match self.peek() {
            None | Some(',') => {
                self.at = before_op;
                return Ok(Requirement::Exists(key));
            }
            _ => {}
        }
        let word_at = self.at;
        match self.word(|c| c.is_ascii_alphabetic()).as_str() {
            "in" => Ok(Requirement::In(key, self.set()?)),
            "notin" => Ok(Requirement::NotIn(key, self.set()?)),
            _ => {
                self.at = word_at;
                Err(self.err("'=', '!=', 'in', 'notin', ',' or the end"))
            }
        }
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let mut p = Parser {
            input,
            chars: input.chars().collect(),
            at: 0,
        };
        p.skip_spaces();
        if p.peek().is_none() {
            return Err(p.err(
                "a requirement (an empty selector would select every host; write `name` for that)",
            ));
        }
        let mut reqs = Vec::new();
        loop {
            reqs.push(p.requirement()?);
            p.skip_spaces();
            if p.peek().is_none() {
                return Ok(Selector { reqs });
            }
            if !p.eat(',') {
                return Err(p.err("',' or the end"));
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |vs: &BTreeSet<String>| vs.iter().cloned().collect::<Vec<_>>().join(",");
        match self {
            Requirement::Eq(k, v) => write!(f, "{k}={v}"),
            Requirement::NotEq(k, v) => write!(f, "{k}!={v}"),
            Requirement::In(k, vs) => write!(f, "{k} in ({})", list(vs)),
            Requirement::NotIn(k, vs) => write!(f, "{k} notin ({})", list(vs)),
            Requirement::Exists(k) => write!(f, "{k}"),
            Requirement::NotExists(k) => write!(f, "!{k}"),
        }
    }
}

/// The canonical form, which parses back to the same selector.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.reqs.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(s: &str) -> Selector {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_form_matches_as_kubernetes_does() {
        let prod = labels(&[("role", "prod"), ("dc", "eu")]);
        let staging = labels(&[("role", "staging")]);
        let bare = labels(&[]);
        // (selector, vm-prod, vm-staging, vm-bare)
        let cases = [
            ("role=prod", true, false, false),
            ("role == prod", true, false, false),
            ("role!=prod", false, true, true),
            ("role in (staging,prod)", true, true, false),
            ("role in ( staging , prod )", true, true, false),
            ("role notin (db)", true, true, true),
            ("role notin (prod)", false, true, true),
            ("role", true, true, false),
            ("!role", false, false, true),
            ("role,dc=eu", true, false, false),
            ("role in (staging,prod), dc", true, false, false),
            ("name=vm-staging", false, true, false),
            ("name", true, true, true),
            ("name in (vm-prod,vm-bare),!dc", false, false, true),
            ("env=", false, false, false),
        ];
        for (s, p, st, b) in cases {
            let x = sel(s);
            assert_eq!(
                (
                    x.matches_host("vm-prod", &prod),
                    x.matches_host("vm-staging", &staging),
                    x.matches_host("vm-bare", &bare),
                ),
                (p, st, b),
                "{s}"
            );
            assert_eq!(sel(&x.to_string()), x, "{s} round-trips as {x}");
        }
        // `name` is the agent's name even if a label says otherwise.
        let liar = labels(&[("name", "vm-prod")]);
        assert!(!sel("name=vm-prod").matches_host("vm-evil", &liar));
    }

    #[test]
    fn errors_point_at_the_character() {
        let cases = [
            ("", 0, "a requirement"),
            ("   ", 3, "a requirement"),
            ("role in (a", 10, "',' or ')'"),
            ("role in a", 8, "'('"),
            ("role in ()", 9, "a value"),
            ("role ~ prod", 5, "'=', '!=', 'in', 'notin'"),
            ("Role=prod", 0, "a label key"),
            ("role=prod,", 10, "a label key"),
            ("role=prod dc=eu", 10, "',' or the end"),
            ("role!prod", 5, "'=' after '!'"),
            ("role = a b", 9, "',' or the end"),
            ("a,,b", 2, "a label key"),
        ];
        for (s, at, expected) in cases {
            let e = s.parse::<Selector>().unwrap_err();
            assert_eq!(e.at, at, "{s}: {e}");
            assert!(e.expected.contains(expected), "{s}: {e}");
            assert!(
                e.to_string().contains(&format!("character {}", at + 1)),
                "{e}"
            );
        }
    }

    #[test]
    fn matchers_as_alert_files_write_them_are_the_same_matcher() {
        let l = |pairs: &[(&str, &str)]| -> Labels {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let m = Selector::of_matchers(&l(&[("severity", "info|low"), ("team", "db")]));
        assert_eq!(m, sel("severity in (info,low),team=db"));
        assert!(m.matches(&l(&[("severity", "low"), ("team", "db"), ("x", "y")])));
        assert!(!m.matches(&l(&[("severity", "high"), ("team", "db")])));
        assert!(!m.matches(&l(&[("severity", "low")])));
        // `name` is an ordinary label here: alerts carry `host`.
        assert!(!sel("name=h1").matches(&l(&[("host", "h1")])));
        assert!(Selector::of_matchers(&Labels::new()).matches(&l(&[("a", "b")])));
    }
}
