//! Where a field is in a YAML text: the line and column that a message
//! about `guests[1].memory` points at.
//!
//! yaml_serde marks an error with the position of the event being read when
//! it failed. That is right for a type error in a plain field and wrong in
//! three common cases: a unit (`512XiB`) is parsed after its string was read,
//! so the error carries the enclosing mapping's position; an internally
//! tagged enum (`workload: {kind: ...}`) is buffered first, which loses the
//! position and the rest of the path; and a semantic check (`Validate`) runs
//! on the parsed value, long after positions are gone. Each time the path is
//! still known, so the text is walked again along the path, with yaml_serde's
//! own parser: a probe fails on purpose at the node, and the failure carries
//! the node's position.

use std::cell::RefCell;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// The probe's own failure, told apart from a real one by its text.
const HERE: &str = "ferry: the located node";

/// A position in the text, 1-based as editors count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Spot {
    pub line: usize,
    pub column: usize,
}

/// What [`locate`] found: where, and the key under which a value named by
/// the message was found inside the node (for a path that stopped short).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Found {
    pub spot: Spot,
    pub deeper: Option<String>,
}

enum Seg {
    Key(String),
    Index(usize),
}

/// `guests[1].workload.kind` as keys and indices; `None` for a path this
/// walk cannot follow (serde_path_to_error writes `?` for unknown parts).
fn segments(path: &str) -> Option<Vec<Seg>> {
    let mut out = Vec::new();
    if path.is_empty() || path == "." {
        return Some(out);
    }
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if key.is_empty() && rest.is_empty() || key == "?" {
            return None;
        }
        if !key.is_empty() {
            out.push(Seg::Key(key.to_string()));
        }
        while let Some(r) = rest.strip_prefix('[') {
            let (n, after) = r.split_once(']')?;
            out.push(Seg::Index(n.parse().ok()?));
            rest = after;
        }
        if !rest.is_empty() {
            return None;
        }
    }
    Some(out)
}

/// The value a serde message names (``invalid value: integer `-5`, ...``),
/// to be looked for inside a node the path stops short of it at.
fn named_value(message: &str) -> Option<&str> {
    let rest = message
        .strip_prefix("invalid value: ")
        .or_else(|| message.strip_prefix("invalid type: "))?;
    let (_, quoted) = rest.split_once('`')?;
    let (value, _) = quoted.split_once('`')?;
    Some(value)
}

/// The key a message says is given twice: serde's words for a struct's
/// field, yaml_serde's for a mapping read whole.
pub(crate) fn duplicated_key(message: &str) -> Option<&str> {
    let (key, close) = match message.strip_prefix("duplicate field `") {
        Some(k) => (k, '`'),
        None => (message.strip_prefix("duplicate entry with key \"")?, '"'),
    };
    key.split_once(close).map(|(k, _)| k)
}

/// Where `path` is in `text`: its last key, or the element its last index
/// names, or the whole document. Where the node is a mapping or sequence and
/// `message` names a value, the scalar inside it with that text (and its key).
pub(crate) fn locate(text: &str, path: &str, message: &str) -> Option<Found> {
    let segs = segments(path)?;
    let deeper = RefCell::new(None);
    let probe = Probe {
        rest: &segs,
        want: named_value(message),
        duplicate: duplicated_key(message),
        deeper: &deeper,
    };
    let e = probe
        .deserialize(serde_yaml::Deserializer::from_str(text))
        .err()?;
    // yaml_serde puts the path in front of the message.
    if !e.to_string().contains(HERE) {
        return None;
    }
    let at = e.location()?;
    Some(Found {
        spot: Spot {
            line: at.line(),
            column: at.column(),
        },
        deeper: deeper.into_inner(),
    })
}

fn here<E: de::Error>() -> E {
    E::custom(HERE)
}

#[derive(Clone, Copy)]
struct Probe<'a> {
    rest: &'a [Seg],
    want: Option<&'a str>,
    /// A key said twice in the node: its second time is the spot.
    duplicate: Option<&'a str>,
    deeper: &'a RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for Probe<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Probe<'_> {
    /// A scalar: the node itself if the path ends here; else not found.
    fn scalar<E: de::Error>(self) -> Result<(), E> {
        if self.rest.is_empty() {
            Err(here())
        } else {
            Ok(())
        }
    }
}

impl<'de> Visitor<'de> for Probe<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any YAML")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
        match self.rest.split_first() {
            Some((Seg::Key(k), rest)) => {
                // The last key is the spot, unless a value inside it is
                // wanted: then its value is searched.
                let stop = rest.is_empty() && self.want.is_none() && self.duplicate.is_none();
                while let Some(hit) = m.next_key_seed(Key { want: k, stop })? {
                    if hit {
                        return m.next_value_seed(Probe { rest, ..self });
                    }
                    m.next_value::<IgnoredAny>()?;
                }
                Ok(())
            }
            Some((Seg::Index(_), _)) => Ok(()),
            None if self.duplicate.is_some() => {
                let want = self.duplicate.expect("checked");
                let mut seen = false;
                while let Some(hit) = m.next_key_seed(Key { want, stop: seen })? {
                    seen |= hit;
                    m.next_value::<IgnoredAny>()?;
                }
                // Not twice here: the parser's own position stands.
                Ok(())
            }
            None => match self.want {
                Some(want) => {
                    while let Some(key) = m.next_key::<KeyText>()? {
                        m.next_value_seed(Search {
                            want,
                            key: &key.0,
                            deeper: self.deeper,
                        })?;
                    }
                    // Not inside: the node itself.
                    Err(here())
                }
                None => Err(here()),
            },
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<(), A::Error> {
        match self.rest.split_first() {
            Some((Seg::Index(n), rest)) => {
                for _ in 0..*n {
                    if s.next_element::<IgnoredAny>()?.is_none() {
                        return Ok(());
                    }
                }
                s.next_element_seed(Probe { rest, ..self }).map(drop)
            }
            Some((Seg::Key(_), _)) => Ok(()),
            None => Err(here()),
        }
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.scalar()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.scalar()
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.scalar()
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.scalar()
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// A mapping key: whether it is the wanted one (or, with `stop`, the spot).
#[derive(Clone, Copy)]
struct Key<'a> {
    want: &'a str,
    stop: bool,
}

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = bool;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl Key<'_> {
    /// Fails inside the visit, so that the failure carries the key's spot.
    fn is<E: de::Error>(self, text: &str) -> Result<bool, E> {
        match (text == self.want, self.stop) {
            (true, true) => Err(here()),
            (hit, _) => Ok(hit),
        }
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        self.is(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
        self.is(&v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
        self.is(&v.to_string())
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
        self.is(&v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<bool, E> {
        self.is(&v.to_string())
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<bool, A::Error> {
        IgnoredAny.visit_map(m).map(|_| false)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, s: A) -> Result<bool, A::Error> {
        IgnoredAny.visit_seq(s).map(|_| false)
    }
}

/// A key's text, whatever scalar it is (`8080:` is a number to YAML).
struct KeyText(String);

impl KeyText {
    fn deserialize_from<'de, D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyText;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<KeyText, E> {
                Ok(KeyText(String::new()))
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<KeyText, A::Error> {
                IgnoredAny.visit_map(m).map(|_| KeyText(String::new()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, s: A) -> Result<KeyText, A::Error> {
                IgnoredAny.visit_seq(s).map(|_| KeyText(String::new()))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> de::Deserialize<'de> for KeyText {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::deserialize_from(d)
    }
}

/// Looks inside one value of the node for the scalar whose text is `want`;
/// found, it records the key and stops the walk there.
struct Search<'a> {
    want: &'a str,
    key: &'a str,
    deeper: &'a RefCell<Option<String>>,
}

impl Search<'_> {
    fn scalar<E: de::Error>(self, text: &str) -> Result<(), E> {
        if text == self.want {
            *self.deeper.borrow_mut() = Some(self.key.to_string());
            Err(here())
        } else {
            Ok(())
        }
    }
}

impl<'de> DeserializeSeed<'de> for Search<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Search<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any YAML")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.scalar(&v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.scalar(&v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.scalar(&v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.scalar(&v.to_string())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.scalar(v)
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    // Only the node's own keys are searched: a deeper match would need its
    // whole path, and ferry's tagged values are flat.
    fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<(), A::Error> {
        IgnoredAny.visit_map(m).map(drop)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, s: A) -> Result<(), A::Error> {
        IgnoredAny.visit_seq(s).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
name: host-a
guests:
  - name: redis-1
    memory: 1GiB
    workload: { kind: key-value, gets_per_second: -5 }
  - name: idle-1
    memory: 512XiB
coordinators: [c1, c2]
";

    fn at(path: &str, message: &str) -> Option<(usize, usize, Option<String>)> {
        locate(TEXT, path, message).map(|f| (f.spot.line, f.spot.column, f.deeper))
    }

    #[test]
    fn a_path_is_found_at_its_last_key_or_element() {
        assert_eq!(at("name", ""), Some((1, 1, None)));
        assert_eq!(at("guests[1].memory", ""), Some((7, 5, None)));
        assert_eq!(at("guests[1]", ""), Some((6, 5, None)));
        assert_eq!(at("coordinators[1]", ""), Some((8, 20, None)));
        assert_eq!(at("guests[0].workload.kind", ""), Some((5, 17, None)));
    }

    #[test]
    fn a_value_the_message_names_is_found_inside_a_node() {
        assert_eq!(
            at(
                "guests[0].workload",
                "invalid value: integer `-5`, expected u64"
            ),
            Some((5, 51, Some("gets_per_second".into())))
        );
        // Not there: the node itself.
        assert_eq!(
            at(
                "guests[0].workload",
                "invalid value: integer `7`, expected u64"
            ),
            Some((5, 15, None))
        );
    }

    #[test]
    fn a_duplicate_key_is_found_where_it_is_said_again() {
        let text = "a: 1\nb:\n  x: 1\n  y: 2\n  x: 3\n";
        let f = locate(text, "b", "duplicate field `x`").unwrap();
        assert_eq!((f.spot.line, f.spot.column), (5, 3));
        let f = locate("a: 1\nb: 2\na: 3\n", "", "duplicate field `a`").unwrap();
        assert_eq!((f.spot.line, f.spot.column), (3, 1));
    }

    #[test]
    fn a_path_that_is_not_there_is_not_found() {
        assert_eq!(at("guests[5].memory", ""), None);
        assert_eq!(at("nosuch", ""), None);
        assert_eq!(at("guests[?].memory", ""), None);
        assert_eq!(locate("{ unclosed", "name", ""), None);
    }
}
