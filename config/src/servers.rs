//! The control plane's addresses as an agent or `picketctl` is given them
//! (SPEC §12): one `HOST:PORT`, a comma-separated list (`A:7443,B:7443`,
//! as `--server` and `PICKET_SERVER` take it), or a TOML list in
//! `agent.toml` and profiles. Which one to dial is the caller's choice
//! (`picket_tls::client::connect_any`, the agent's uplink).

use std::fmt;

use serde::{Deserialize, Serialize};

/// One or more `HOST:PORT`, in the order given, without repeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Raw", into = "Raw")]
pub struct Servers(Vec<String>);

/// How the addresses are written: a string (perhaps comma-separated) or a
/// list. One address is written back as a string.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Raw {
    One(String),
    Many(Vec<String>),
}

impl Servers {
    /// `text` as a comma-separated list of `HOST:PORT`.
    pub fn parse(text: &str) -> Result<Servers, String> {
        Servers::from_list(text.split(','))
    }

    fn from_list<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Servers, String> {
        let mut out: Vec<String> = Vec::new();
        for item in items {
            let a = item.trim();
            check(a)?;
            if !out.iter().any(|o| o == a) {
                out.push(a.to_string());
            }
        }
        if out.is_empty() {
            return Err("no control plane address given".into());
        }
        Ok(Servers(out))
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true: a `Servers` holds at least one address.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `HOST:PORT` or `[V6]:PORT`, with a port from 1 to 65535.
fn check(a: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{a:?} is not HOST:PORT ({why})"));
    let Some((host, port)) = a.rsplit_once(':') else {
        return bad("no port");
    };
    match port.parse::<u16>() {
        Ok(0) | Err(_) => return bad("the port is not a number from 1 to 65535"),
        Ok(_) => {}
    }
    let bracketed = host.starts_with('[') && host.ends_with(']');
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.is_empty() {
        return bad("no host");
    }
    if bare.contains(':') && !bracketed {
        return bad("write an IPv6 address in brackets: [::1]:7443");
    }
    if bare
        .chars()
        .any(|c| c.is_whitespace() || c == '/' || c == ',')
    {
        return bad("the host has a space, a slash or a comma");
    }
    Ok(())
}

impl TryFrom<Raw> for Servers {
    type Error = String;

    fn try_from(r: Raw) -> Result<Servers, String> {
        match r {
            Raw::One(s) => Servers::parse(&s),
            Raw::Many(v) => Servers::from_list(v.iter().map(String::as_str)),
        }
    }
}

impl From<Servers> for Raw {
    fn from(s: Servers) -> Raw {
        match <[String; 1]>::try_from(s.0) {
            Ok([one]) => Raw::One(one),
            Err(many) => Raw::Many(many),
        }
    }
}

impl std::str::FromStr for Servers {
    type Err = String;

    fn from_str(s: &str) -> Result<Servers, String> {
        Servers::parse(s)
    }
}

/// Comma-separated, as `--server` takes it.
impl fmt::Display for Servers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct File {
        server: Servers,
    }

    #[test]
    fn one_a_comma_list_or_a_toml_list() {
        let one: File = toml::from_str(r#"server = "10.0.1.50:7443""#).unwrap();
        assert_eq!(one.server.as_slice(), ["10.0.1.50:7443"]);
        assert_eq!(
            toml::to_string(&one).unwrap().trim(),
            r#"server = "10.0.1.50:7443""#
        );
        let list: File =
            toml::from_str(r#"server = ["a.example:7443", "[::1]:7443", "a.example:7443"]"#)
                .unwrap();
        assert_eq!(list.server.as_slice(), ["a.example:7443", "[::1]:7443"]);
        let back: File = toml::from_str(&toml::to_string(&list).unwrap()).unwrap();
        assert_eq!(back, list);
        let comma = Servers::parse("a:1, b:2").unwrap();
        assert_eq!(comma.as_slice(), ["a:1", "b:2"]);
        assert_eq!(comma.to_string(), "a:1,b:2");
    }

    #[test]
    fn bad_addresses_are_named() {
        for (text, why) in [
            ("localhost", "no port"),
            ("a:0", "1 to 65535"),
            ("a:x", "1 to 65535"),
            (":7443", "no host"),
            ("::1:7443", "brackets"),
            ("a b:1", "space"),
            ("a:1,,b:2", "no port"),
            ("", "no port"),
        ] {
            let e = Servers::parse(text).unwrap_err();
            assert!(e.contains(why), "{text:?}: {e}");
        }
        let e = toml::from_str::<File>("server = []").unwrap_err();
        assert!(e.to_string().contains("no control plane address"), "{e}");
        let e = toml::from_str::<File>(r#"server = ["a:1", "b"]"#).unwrap_err();
        assert!(e.to_string().contains(r#""b" is not HOST:PORT"#), "{e}");
    }
}
