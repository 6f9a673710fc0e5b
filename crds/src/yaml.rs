//! Reading YAML documents into `serde_yaml::Value`s with the bounds a config
//! source needs and serde_yaml alone does not give:
//!
//! - a budget of values per file: an alias repeats everything its anchor
//!   holds, so a few kilobytes of anchors and aliases can stand for billions
//!   of values. serde_yaml caps alias jumps at 100 per event, which still lets
//!   one anchor of N values be repeated N times (N² values from 2N lines);
//! - a nesting limit, reported with the path where it was crossed (serde_yaml
//!   stops at 128 levels with "recursion limit exceeded" and a position only),
//!   so nothing that walks a value afterwards recurses deeper than this;
//! - duplicate map keys, reported with the mapping's path and the key (as
//!   serde_yaml does, but with where).

use std::cell::{Cell, RefCell};
use std::fmt;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, IgnoredAny, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};
use serde_yaml::value::{Tag, TaggedValue};
use serde_yaml::{Mapping, Value};

/// Deepest nesting of maps and lists accepted in a document, the document
/// itself being level 1. Kubernetes objects nest about 12 levels (a
/// Deployment's container probe headers). Reading, converting and
/// deserializing recurse once per level, and a debug build spends several
/// kilobytes of stack per level: 64 levels fit in a quarter of a tokio worker's
/// 2 MiB stack. serde_yaml's own limit (128) would not, and names no field.
pub const MAX_DEPTH: usize = 64;

/// Most values (scalars, maps, lists, map keys) one file may expand to,
/// aliases counted as often as they are used. A 4 MiB manifest written out
/// without aliases holds about 400,000; the bound keeps the memory a file can
/// claim to a few hundred megabytes at worst.
pub const MAX_VALUES: usize = 1_000_000;

/// What went wrong with a document, found while reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    /// Where, e.g. `spec.mtls`; `None` for the document as a whole.
    pub field: Option<String>,
    pub reason: String,
    /// The file cannot be read on: later documents are not read.
    pub fatal: bool,
}

/// Reads the documents of one file, sharing the value budget between them.
pub(crate) struct Reader {
    left: Cell<usize>,
    /// The first problem of the document being read. Problems that leave the
    /// parser in a known state (too deep, duplicate key) are recorded here and
    /// the rest of the document is skipped, so the next document can still be
    /// read; serde_yaml would otherwise stop the file at the first one.
    problem: RefCell<Option<Problem>>,
}

impl Reader {
    pub(crate) fn new(values: usize) -> Self {
        Reader {
            left: Cell::new(values),
            problem: RefCell::new(None),
        }
    }

    /// One document as a value, or the first problem found in it.
    pub(crate) fn document(
        &self,
        document: serde_yaml::Deserializer<'_>,
    ) -> Result<Value, Problem> {
        let result = ValueSeed {
            path: &Path::Root,
            depth: 0,
            reader: self,
        }
        .deserialize(document);
        let problem = self.problem.borrow_mut().take();
        match (result, problem) {
            (Ok(value), None) => Ok(value),
            (Ok(_), Some(problem)) => Err(problem),
            (Err(_), Some(problem)) if problem.fatal => Err(problem),
            // A syntax error after a problem we could have read past: the
            // syntax error decides, as it ends the file.
            (Err(e), _) => {
                let hint = if e.to_string().starts_with("repetition limit exceeded") {
                    " (YAML aliases repeat their anchors too many times)"
                } else {
                    ""
                };
                Err(Problem {
                    field: None,
                    reason: format!("invalid YAML: {e}{hint}"),
                    fatal: true,
                })
            }
        }
    }

    /// Records the first problem of the document; a fatal one wins over
    /// one that could have been read past.
    fn record(&self, path: &Path<'_>, reason: String, fatal: bool) {
        let mut problem = self.problem.borrow_mut();
        if problem.as_ref().is_none_or(|p| fatal && !p.fatal) {
            *problem = Some(Problem {
                field: path.field(),
                reason,
                fatal,
            });
        }
    }

    fn take<E: de::Error>(&self, path: &Path<'_>) -> Result<(), E> {
        match self.left.get().checked_sub(1) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => {
                self.record(
                    path,
                    format!(
                        "the file expands to more than {MAX_VALUES} values (YAML aliases count each time they are used)"
                    ),
                    true,
                );
                Err(E::custom("value budget exhausted"))
            }
        }
    }
}

/// Where a value sits in its document, for error messages: keys joined by
/// dots, list indexes in brackets (`items[0].spec.portLevelMtls.80`).
#[derive(Clone, Copy)]
enum Path<'a> {
    Root,
    Key(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

/// Segments shown of a long path: the start says where in the object, the
/// rest is the same few keys over and over.
const PATH_SHOWN: usize = 12;

impl Path<'_> {
    /// The path as a field name; `None` at the document root.
    fn field(&self) -> Option<String> {
        // Iterative: cheap whatever the depth.
        let mut parts = Vec::new();
        let mut at = self;
        loop {
            match at {
                Path::Root => break,
                Path::Key(parent, key) => {
                    parts.push(Part::Key(key));
                    at = parent;
                }
                Path::Index(parent, i) => {
                    parts.push(Part::Index(*i));
                    at = parent;
                }
            }
        }
        if parts.is_empty() {
            return None;
        }
        let total = parts.len();
        let mut out = String::new();
        for (n, part) in parts.iter().rev().take(PATH_SHOWN).enumerate() {
            match part {
                Part::Key(key) if n == 0 => out.push_str(key),
                Part::Key(key) => {
                    out.push('.');
                    out.push_str(key);
                }
                Part::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        if total > PATH_SHOWN {
            out.push_str(&format!("... ({total} levels)"));
        }
        Some(out)
    }
}

enum Part<'a> {
    Key(&'a str),
    Index(usize),
}

/// A map key as it appears in a path: strings, numbers and booleans as
/// written, anything else by its shape.
fn key_text(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".into(),
        Value::Sequence(_) => "<list key>".into(),
        Value::Mapping(_) => "<map key>".into(),
        Value::Tagged(t) => format!("{} <tagged key>", t.tag),
    }
}

/// Deserializes one value, counting it against the budget.
struct ValueSeed<'p> {
    path: &'p Path<'p>,
    depth: usize,
    reader: &'p Reader,
}

impl<'p> ValueSeed<'p> {
    fn child<'c>(&self, path: &'c Path<'c>) -> ValueSeed<'c>
    where
        'p: 'c,
    {
        ValueSeed {
            path,
            depth: self.depth + 1,
            reader: self.reader,
        }
    }

    /// Entering a map or list: false (and the problem recorded) when that
    /// is one level too deep.
    fn nest(&self) -> bool {
        if self.depth >= MAX_DEPTH {
            self.reader.record(
                self.path,
                format!("nested more than {MAX_DEPTH} levels deep"),
                false,
            );
            return false;
        }
        true
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        self.reader.take(self.path)?;
        Ok(Value::Bool(b))
    }

    fn visit_i64<E: de::Error>(self, i: i64) -> Result<Value, E> {
        self.reader.take(self.path)?;
        Ok(Value::Number(i.into()))
    }

    fn visit_u64<E: de::Error>(self, u: u64) -> Result<Value, E> {
        self.reader.take(self.path)?;
        Ok(Value::Number(u.into()))
    }

    fn visit_f64<E: de::Error>(self, f: f64) -> Result<Value, E> {
        self.reader.take(self.path)?;
        Ok(Value::Number(f.into()))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        self.reader.take(self.path)?;
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Value, E> {
        self.reader.take(self.path)?;
        Ok(Value::String(s))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.reader.take(self.path)?;
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.reader.take(self.path)?;
        if !self.nest() {
            // serde_yaml skips without recursing and without expanding aliases.
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            return Ok(Value::Null);
        }
        let mut items = Vec::new();
        loop {
            let path = Path::Index(self.path, items.len());
            match seq.next_element_seed(self.child(&path))? {
                Some(item) => items.push(item),
                None => break,
            }
        }
        Ok(Value::Sequence(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.reader.take(self.path)?;
        if !self.nest() {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(Value::Null);
        }
        let mut mapping = Mapping::new();
        while let Some(key) = map.next_key_seed(self.child(self.path))? {
            let text = key_text(&key);
            if mapping.contains_key(&key) {
                // Kubernetes rejects duplicate keys too; which one was meant
                // cannot be known, so the document is left out.
                self.reader
                    .record(self.path, format!("duplicate key {text:?}"), false);
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let path = Path::Key(self.path, &text);
            let value = map.next_value_seed(self.child(&path))?;
            mapping.insert(key, value);
        }
        Ok(Value::Mapping(mapping))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        // serde_yaml presents a value with a custom tag (`!thing x`) as an
        // enum; keep it tagged so the caller can report the tag where it is.
        let (tag, contents): (String, _) = data.variant()?;
        let value = contents.newtype_variant_seed(self.child(self.path))?;
        if tag.is_empty() {
            self.reader
                .record(self.path, "empty YAML tag".into(), false);
            return Ok(value);
        }
        Ok(Value::Tagged(Box::new(TaggedValue {
            tag: Tag::new(tag),
            value,
        })))
    }
}
