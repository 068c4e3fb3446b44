//! Reading JSON log lines (Suricata's eve.json, OSSEC's alerts.json)
//! without building owned values: an object is a list of its members,
//! names and values borrowed from the line, and a value is parsed only
//! when a parser asks for it. Strings without escapes are borrowed as
//! they are; only escaped text is copied.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// A JSON object's members in line order, values unparsed.
#[derive(Debug, Default)]
pub struct Object<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> Object<'a> {
    /// The object `raw` holds; `None` for other JSON or for bad JSON.
    pub fn parse(raw: &'a str) -> Option<Object<'a>> {
        serde_json::from_str(raw).ok()
    }

    /// The member named `name` (the first, if a name repeats).
    pub fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
    }

    /// The object member `name` holds.
    pub fn object(&self, name: &str) -> Option<Object<'a>> {
        Object::parse(self.get(name)?.get())
    }

    /// The string member `name` holds, unescaped.
    pub fn string(&self, name: &str) -> Option<Cow<'a, str>> {
        string(self.get(name)?)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Cow<'a, str>, &'a RawValue)> {
        self.0.iter().map(|(k, v)| (k, *v))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Object<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Members<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Members<'a> {
            type Value = Object<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Object<'a>, M::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some(Name(k)) = map.next_key()? {
                    let v: &'de RawValue = map.next_value()?;
                    members.push((k, v));
                }
                Ok(Object(members))
            }
        }
        d.deserialize_map(Members(std::marker::PhantomData))
    }
}

/// A member name, borrowed unless it had escapes.
struct Name<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Name<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Name<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Name<'a>, E> {
                Ok(Name(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Name<'a>, E> {
                Ok(Name(Cow::Owned(s.to_string())))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// A JSON string's text, unescaped; `None` for any other value.
pub fn string(v: &RawValue) -> Option<Cow<'_, str>> {
    let raw = v.get();
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(raw).ok().map(Cow::Owned)
    } else {
        // Valid JSON (the line parsed) with no escapes is the text itself.
        Some(Cow::Borrowed(inner))
    }
}

/// A scalar JSON value as field text: strings unquoted and unescaped,
/// numbers and booleans as written; `None` for null, objects and arrays.
pub fn text(v: &RawValue) -> Option<Cow<'_, str>> {
    let raw = v.get();
    match raw.as_bytes().first()? {
        b'"' => string(v),
        b'{' | b'[' | b'n' => None,
        _ => Some(Cow::Borrowed(raw)),
    }
}

/// Any JSON value as field text: [`text`], or compact JSON for objects
/// and arrays.
pub fn text_or_json(v: &RawValue) -> Cow<'_, str> {
    match v.get().as_bytes().first() {
        Some(b'{' | b'[') => Cow::Owned(
            serde_json::from_str::<serde_json::Value>(v.get())
                .map(|v| v.to_string())
                .unwrap_or_default(),
        ),
        _ => text(v).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_borrow_and_unescape() {
        let line =
            r#"{"a":"plain","b\u0041":"q\"x","n":-1.5e3,"o":{"x":[1, 2]},"z":null,"a":"second"}"#;
        let o = Object::parse(line).unwrap();
        assert!(matches!(o.string("a"), Some(Cow::Borrowed("plain"))));
        assert_eq!(o.get("bA").and_then(string).as_deref(), Some("q\"x"));
        assert_eq!(o.get("n").and_then(text).as_deref(), Some("-1.5e3"));
        assert_eq!(o.get("n").and_then(string), None);
        assert_eq!(o.get("z").and_then(text), None);
        assert_eq!(
            o.get("o").map(text_or_json).as_deref(),
            Some(r#"{"x":[1,2]}"#)
        );
        assert_eq!(o.object("o").map(|o| o.iter().count()), Some(1));
        assert_eq!(o.iter().count(), 6, "every member, in order");
        for bad in ["", "[1]", "\"s\"", "{", "{\"a\":}", "{\"a\":1} x"] {
            assert!(Object::parse(bad).is_none(), "{bad}");
        }
    }
}
