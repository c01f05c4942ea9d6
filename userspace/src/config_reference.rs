//! The configuration reference (docs/configuration.md, `ferry config
//! reference`): every key of every kind of file, with its type, default,
//! an example and what it does, rendered from the config types' JSON
//! Schemas (their doc comments and serde defaults) and from the example
//! files in config/. Generated, never written by hand, so it cannot drift:
//! a test compares the committed file with what this renders.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::config_check::Kind;

/// The example files shipped in config/, as the reference quotes them (a
/// test checks this list against the directory).
pub const EXAMPLES: &[(&str, &str)] = &[
    ("config/demo.yaml", include_str!("../../config/demo.yaml")),
    (
        "config/coordinator.yaml",
        include_str!("../../config/coordinator.yaml"),
    ),
    (
        "config/host-a.yaml",
        include_str!("../../config/host-a.yaml"),
    ),
    (
        "config/host-a-qemu.yaml",
        include_str!("../../config/host-a-qemu.yaml"),
    ),
    (
        "config/host-b.yaml",
        include_str!("../../config/host-b.yaml"),
    ),
    (
        "config/host-c.yaml",
        include_str!("../../config/host-c.yaml"),
    ),
    (
        "config/router.yaml",
        include_str!("../../config/router.yaml"),
    ),
    (
        "config/router-wan.yaml",
        include_str!("../../config/router-wan.yaml"),
    ),
    (
        "config/lab/counters.yaml",
        include_str!("../../config/lab/counters.yaml"),
    ),
    (
        "config/lab/experiment-figure4.yaml",
        include_str!("../../config/lab/experiment-figure4.yaml"),
    ),
    (
        "config/lab/experiment-figure5.yaml",
        include_str!("../../config/lab/experiment-figure5.yaml"),
    ),
];

/// One key of a kind of file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its path: `guests[].qemu.accel` (`[]`: each item of a list).
    pub key: String,
    pub ty: String,
    /// "required", or the value taken when the key is left out.
    pub default: String,
    /// A value from the example files, or from the type's own examples;
    /// empty for a mapping or list of mappings (its keys have their own).
    pub example: String,
    pub description: String,
    /// The variant of a tagged enum it belongs to (`kind: stream`), if any.
    pub variant: String,
    /// Whether it holds further keys (a mapping, a list of mappings).
    pub nested: bool,
}

impl Kind {
    /// How a file of this kind is used.
    pub fn command(self) -> &'static str {
        match self {
            Kind::Demo => "ferry demo --config FILE",
            Kind::Coordinator => "ferry coordinator --config FILE",
            Kind::Host => "ferry host --config FILE",
            Kind::LabCounters => "ferry lab counters --config FILE",
            Kind::Experiment => "ferry lab run FILE",
            Kind::Router => "ferry router --config FILE",
        }
    }

    /// The example files of this kind: path and text.
    fn example_files(self) -> impl Iterator<Item = &'static (&'static str, &'static str)> {
        EXAMPLES
            .iter()
            .filter(move |(path, text)| kind_of_text(path, text) == Some(self))
    }

    /// The paths of this kind's example files.
    pub fn examples(self) -> Vec<&'static str> {
        self.example_files().map(|(path, _)| *path).collect()
    }

    /// Every key of this kind's files, parents before their keys.
    pub fn entries(self) -> Vec<Entry> {
        let schema = self.schema().to_value();
        let no_defs = serde_json::Map::new();
        let defs = schema
            .get("$defs")
            .and_then(Value::as_object)
            .unwrap_or(&no_defs);
        let mut seen = BTreeMap::new();
        for (_, text) in self.example_files() {
            if let Ok(v) = serde_yaml::from_str::<Value>(text) {
                collect_examples(&v, "", &mut seen);
            }
        }
        let mut w = Walk {
            defs,
            examples: &seen,
            out: Vec::new(),
        };
        w.object(&schema, "", None, "");
        w.out
    }
}

/// The kind of an example file, as `ferry config check` tells it.
fn kind_of_text(path: &str, text: &str) -> Option<Kind> {
    Kind::of_text(std::path::Path::new(path), text).ok()
}

/// The first value each key path takes in an example file.
fn collect_examples(v: &Value, prefix: &str, out: &mut BTreeMap<String, Value>) {
    let Value::Object(m) = v else {
        return;
    };
    for (k, v) in m {
        let key = format!("{prefix}{k}");
        out.entry(key.clone()).or_insert_with(|| v.clone());
        match v {
            Value::Object(_) => collect_examples(v, &format!("{key}."), out),
            Value::Array(items) => {
                for item in items {
                    collect_examples(item, &format!("{key}[]."), out);
                }
            }
            _ => {}
        }
    }
}

struct Walk<'a> {
    defs: &'a serde_json::Map<String, Value>,
    examples: &'a BTreeMap<String, Value>,
    out: Vec<Entry>,
}

/// A schema with its `$ref` followed, and whether `null` is allowed.
struct Resolved<'a> {
    schema: &'a Value,
    /// The definition's name when it came from one.
    def: Option<&'a str>,
    nullable: bool,
}

impl Resolved<'_> {
    /// A unit (size, rate, ...): a definition with a title, whose grammar
    /// the units table gives.
    fn unit(&self) -> Option<&str> {
        self.def?;
        self.schema.get("title")?.as_str()
    }
}

impl<'a> Walk<'a> {
    fn resolve(&self, s: &'a Value) -> Resolved<'a> {
        let mut nullable = false;
        let mut s = s;
        if let Some(any) = s.get("anyOf").and_then(Value::as_array) {
            let non_null: Vec<&Value> = any
                .iter()
                .filter(|v| v.get("type").and_then(Value::as_str) != Some("null"))
                .collect();
            if non_null.len() == 1 && any.len() == 2 {
                nullable = true;
                s = non_null[0];
            }
        }
        if let Some(types) = s.get("type").and_then(Value::as_array)
            && types.iter().any(|t| t == "null")
        {
            nullable = true;
        }
        if let Some(r) = s.get("$ref").and_then(Value::as_str) {
            let name = r.trim_start_matches("#/$defs/");
            if let Some(d) = self.defs.get(name) {
                return Resolved {
                    schema: d,
                    def: Some(name),
                    nullable,
                };
            }
        }
        Resolved {
            schema: s,
            def: None,
            nullable,
        }
    }

    /// The keys of an object schema, each below `prefix`; `parent_default`
    /// supplies defaults its keys do not state themselves; `variant` says
    /// which variant of a tagged enum they belong to.
    fn object(
        &mut self,
        s: &'a Value,
        prefix: &str,
        parent_default: Option<&Value>,
        variant: &str,
    ) {
        let required: Vec<&str> = s
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let Some(props) = s.get("properties").and_then(Value::as_object) else {
            return;
        };
        for (name, p) in props {
            if !variant.is_empty() && p.get("const").is_some() {
                continue; // the tag, listed once for all variants
            }
            let inherited = parent_default.and_then(|d| d.get(name));
            self.key(
                &format!("{prefix}{name}"),
                p,
                required.contains(&name.as_str()) && parent_default.is_none(),
                inherited,
                variant,
            );
        }
    }

    fn key(
        &mut self,
        key: &str,
        p: &'a Value,
        required: bool,
        inherited: Option<&Value>,
        variant: &str,
    ) {
        let r = self.resolve(p);
        let description = text(p.get("description"));
        let own_default = p.get("default").or(inherited);
        let default = match own_default {
            Some(d) => inline(d),
            None if r.nullable && !required => "none".to_string(),
            None => "required".to_string(),
        };
        let mut entry = Entry {
            key: key.to_string(),
            ty: String::new(),
            default,
            // From the example files, else the field's own example, else
            // its default; a unit's own example only as the last resort.
            example: self
                .examples
                .get(key)
                .or_else(|| p.get("examples").and_then(|e| e.get(0)))
                .or(own_default.filter(|d| !d.is_null()))
                .filter(|v| !(v.is_object() || v.is_array() && v[0].is_object()))
                .map(inline)
                .unwrap_or_default(),
            description,
            variant: variant.to_string(),
            nested: false,
        };
        let s = r.schema;
        if let Some(variants) = s.get("oneOf").and_then(Value::as_array)
            && let Some(tag) = tag_of(variants)
        {
            // A tagged enum: the tag, then each variant's keys.
            entry.ty = format!("mapping, by `{tag}`");
            entry.nested = true;
            fallback(&mut entry.description, &text(s.get("description")));
            self.out.push(entry);
            let tag_key = format!("{key}.{tag}");
            let names: Vec<&str> = variants
                .iter()
                .map(|v| {
                    v["properties"][tag.as_str()]["const"]
                        .as_str()
                        .unwrap_or_default()
                })
                .collect();
            let docs: Vec<String> = variants
                .iter()
                .zip(&names)
                .map(|(v, name)| (name, text(v.get("description"))))
                .filter(|(_, d)| !d.is_empty())
                .map(|(name, d)| format!("`{name}`: {d}"))
                .collect();
            self.out.push(Entry {
                key: tag_key.clone(),
                ty: names
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(" \\| "),
                default: own_default
                    .and_then(|d| d.get(tag.as_str()))
                    .map(inline)
                    .unwrap_or_else(|| "required".into()),
                example: self.examples.get(&tag_key).map(inline).unwrap_or_default(),
                description: docs.join(" "),
                variant: String::new(),
                nested: false,
            });
            for (v, name) in variants.iter().zip(names) {
                self.object(v, &format!("{key}."), None, &format!("{tag}: {name}"));
            }
            return;
        }
        if s.get("properties").is_some() {
            entry.ty = "mapping".into();
            entry.nested = true;
            fallback(&mut entry.description, &text(s.get("description")));
            let defaults = own_default.filter(|d| d.is_object()).cloned();
            if defaults.is_some() {
                entry.default = "see its keys".into();
            }
            self.out.push(entry);
            self.object(s, &format!("{key}."), defaults.as_ref(), "");
            return;
        }
        if type_is(s, "array") {
            let items = self.resolve(&s["items"]);
            if items.schema.get("properties").is_some() {
                entry.ty = "list of mappings".into();
                entry.nested = true;
                fallback(
                    &mut entry.description,
                    &text(items.schema.get("description")),
                );
                self.out.push(entry);
                self.object(items.schema, &format!("{key}[]."), None, "");
            } else {
                entry.ty = format!("list of {}", self.scalar(&items));
                self.out.push(entry);
            }
            return;
        }
        // A value: a unit, one of an enum's, or a plain scalar.
        entry.ty = self.scalar(&r);
        if r.unit().is_some() {
            // Its description is its grammar, in the units table.
            if entry.example.is_empty() {
                entry.example = s
                    .get("examples")
                    .and_then(|e| e.get(0))
                    .map(inline)
                    .unwrap_or_default();
            }
        } else {
            fallback(&mut entry.description, &text(s.get("description")));
        }
        if let Some(variants) = s.get("oneOf").and_then(Value::as_array) {
            let mut docs = Vec::new();
            for v in variants {
                let d = text(v.get("description"));
                if !d.is_empty() {
                    for value in enum_values(v) {
                        docs.push(format!("`{value}`: {d}"));
                    }
                }
            }
            append(&mut entry.description, &docs.join(" "));
        }
        self.out.push(entry);
    }

    fn scalar(&self, r: &Resolved) -> String {
        let s = r.schema;
        if let Some(title) = r.unit() {
            return format!("[{title}](#units)");
        }
        if let Some(values) = s.get("enum").and_then(Value::as_array) {
            return values
                .iter()
                .map(|v| format!("`{}`", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(" \\| ");
        }
        if let Some(variants) = s.get("oneOf").and_then(Value::as_array) {
            return variants
                .iter()
                .flat_map(enum_values)
                .map(|v| format!("`{v}`"))
                .collect::<Vec<_>>()
                .join(" \\| ");
        }
        let ty = match s.get("type") {
            Some(Value::String(t)) => t.clone(),
            Some(Value::Array(ts)) => ts
                .iter()
                .filter_map(Value::as_str)
                .filter(|t| *t != "null")
                .collect::<Vec<_>>()
                .join(" or "),
            _ => "any".into(),
        };
        match (ty.as_str(), s.get("format").and_then(Value::as_str)) {
            ("integer", Some(f)) => {
                let bits = f.trim_start_matches(|c: char| c.is_alphabetic());
                match (f.starts_with('u'), bits.is_empty()) {
                    (true, true) => "integer (unsigned)".into(),
                    (true, false) => format!("integer (unsigned {bits}-bit)"),
                    (false, true) => "integer".into(),
                    (false, false) => format!("integer ({bits}-bit)"),
                }
            }
            _ => ty,
        }
    }
}

/// The tag key of an internally tagged enum's variants, if they have one.
fn tag_of(variants: &[Value]) -> Option<String> {
    let first = variants.first()?.get("properties")?.as_object()?;
    let (tag, _) = first.iter().find(|(_, p)| p.get("const").is_some())?;
    variants
        .iter()
        .all(|v| v["properties"][tag.as_str()].get("const").is_some())
        .then(|| tag.clone())
}

fn enum_values(v: &Value) -> Vec<String> {
    if let Some(c) = v.get("const") {
        return vec![c.as_str().map(str::to_string).unwrap_or(c.to_string())];
    }
    v.get("enum")
        .and_then(Value::as_array)
        .map(|e| {
            e.iter()
                .map(|c| c.as_str().map(str::to_string).unwrap_or(c.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn type_is(s: &Value, t: &str) -> bool {
    match s.get("type") {
        Some(Value::String(x)) => x == t,
        Some(Value::Array(xs)) => xs.iter().any(|x| x == t),
        _ => false,
    }
}

/// A doc comment as one line of a table cell.
fn text(v: Option<&Value>) -> String {
    v.and_then(Value::as_str)
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
        .replace('|', "\\|")
}

/// Adds a type's description where the field has none of its own.
fn fallback(to: &mut String, more: &str) {
    if to.is_empty() {
        to.push_str(more);
    }
}

fn append(to: &mut String, more: &str) {
    if more.is_empty() || to.contains(more) {
        return;
    }
    if !to.is_empty() {
        to.push(' ');
    }
    to.push_str(more);
}

/// A value as YAML's flow style writes it, in a code span.
fn inline(v: &Value) -> String {
    fn flow(v: &Value) -> String {
        match v {
            Value::Null => "null".into(),
            Value::String(s) => {
                if s.is_empty() || s.contains([':', ',', '[', ']', '{', '}', '#']) {
                    format!("{s:?}")
                } else {
                    s.clone()
                }
            }
            Value::Array(items) => {
                format!(
                    "[{}]",
                    items.iter().map(flow).collect::<Vec<_>>().join(", ")
                )
            }
            Value::Object(m) => format!(
                "{{{}}}",
                m.iter()
                    .map(|(k, v)| format!("{k}: {}", flow(v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            other => other.to_string(),
        }
    }
    match v {
        Value::Null => "none".into(),
        v => format!("`{}`", flow(v).replace('|', "\\|")),
    }
}

/// The units every kind shares, from their schemas: title, grammar,
/// examples.
fn units() -> Vec<(String, String, String)> {
    use ferry_core::config::{ByteSize, DurationText, Rate, Ratio};
    use schemars::JsonSchema;
    let mut generator = schemars::SchemaGenerator::default();
    [
        ByteSize::json_schema(&mut generator),
        Rate::json_schema(&mut generator),
        Ratio::json_schema(&mut generator),
        DurationText::json_schema(&mut generator),
        ferry_core::MacAddr::json_schema(&mut generator),
    ]
    .iter()
    .map(|d| {
        let examples = d
            .get("examples")
            .and_then(Value::as_array)
            .map(|e| e.iter().map(inline).collect::<Vec<_>>().join(", "))
            .unwrap_or_default();
        (text(d.get("title")), text(d.get("description")), examples)
    })
    .collect()
}

/// The whole reference, as docs/configuration.md holds it.
pub fn markdown() -> String {
    let mut md = String::new();
    md.push_str(
        "# Configuration reference\n\n\
         <!-- Generated by `ferry config reference` from the config types and the \
         examples in config/; do not edit. A test fails when this file and the types \
         disagree: regenerate it with `cargo run --release -p ferry -- config reference \
         > docs/configuration.md`. -->\n\n\
         Every key of every file ferry reads: its type, the value it takes when left out, \
         an example (from the files in [config/](../config), else the type's own), and what \
         it does. Every file rejects keys it does not know. `ferry config check FILE` \
         validates a file (its kind is told by its keys); `ferry config schema KIND` prints \
         a kind's JSON Schema, for an editor's YAML language server. A key written \
         `a[].b` is key `b` of each item of list `a`; `required` holds within its mapping, \
         when that mapping is given.\n\n",
    );
    md.push_str("## Kinds\n\n| Kind | Used by | Examples |\n|---|---|---|\n");
    for k in Kind::ALL {
        let ex: Vec<String> = k
            .examples()
            .iter()
            .map(|p| format!("[{p}](../{p})"))
            .collect();
        md.push_str(&format!(
            "| [{}](#{}) | `{}` | {} |\n",
            k.prefix(),
            k.prefix(),
            k.command(),
            ex.join(", ")
        ));
    }
    md.push_str("\n## Units\n\n| Unit | Written as | Examples |\n|---|---|---|\n");
    for (title, description, examples) in units() {
        md.push_str(&format!("| {title} | {description} | {examples} |\n"));
    }
    for k in Kind::ALL {
        let schema = k.schema().to_value();
        md.push_str(&format!("\n## {}\n\n`{}`", k.prefix(), k.command()));
        let about = text(schema.get("description"));
        if !about.is_empty() {
            md.push_str(&format!(": {about}"));
        }
        md.push_str(
            "\n\n| Key | Type | Default | Example | Description |\n|---|---|---|---|---|\n",
        );
        for e in k.entries() {
            let description = if e.variant.is_empty() {
                e.description
            } else {
                format!("With `{}`. {}", e.variant, e.description)
            };
            md.push_str(&format!(
                "| `{}` | {} | {} | {} | {} |\n",
                e.key, e.ty, e.default, e.example, description
            ));
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// docs/configuration.md is what the types render today.
    #[test]
    fn the_committed_reference_is_current() {
        let path = root().join("docs/configuration.md");
        let committed =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let rendered = markdown();
        if committed != rendered {
            let line = committed
                .lines()
                .zip(rendered.lines())
                .position(|(a, b)| a != b)
                .map(|i| i + 1)
                .unwrap_or(committed.lines().count().min(rendered.lines().count()) + 1);
            panic!(
                "docs/configuration.md differs from what the config types render (first at line {line}): \
                 regenerate it with `cargo run --release -p ferry -- config reference > docs/configuration.md`"
            );
        }
    }

    /// Every key says what it does and shows a value.
    #[test]
    fn every_key_has_a_description_and_an_example() {
        let mut missing = Vec::new();
        for k in Kind::ALL {
            for e in k.entries() {
                if e.description.is_empty() {
                    missing.push(format!("{}: {}: no description", k.prefix(), e.key));
                }
                if !e.nested && e.example.is_empty() {
                    missing.push(format!("{}: {}: no example", k.prefix(), e.key));
                }
                if e.ty.is_empty() || e.ty == "any" {
                    missing.push(format!("{}: {}: no type", k.prefix(), e.key));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "keys the reference cannot explain (add a doc comment, or \
             #[schemars(example = ...)] on the field):\n{}",
            missing.join("\n")
        );
    }

    /// Each key the example files use is one the reference lists: the
    /// renderer walks the schemas as the files are written.
    #[test]
    fn every_key_of_the_examples_is_in_the_reference() {
        let mut unknown = Vec::new();
        for (path, text) in EXAMPLES {
            let kind = kind_of_text(path, text).unwrap_or_else(|| panic!("{path}: no kind"));
            let keys: Vec<String> = kind.entries().into_iter().map(|e| e.key).collect();
            let mut seen = BTreeMap::new();
            collect_examples(&serde_yaml::from_str(text).unwrap(), "", &mut seen);
            for key in seen.keys() {
                if !keys.contains(key) {
                    unknown.push(format!("{path}: {key}"));
                }
            }
        }
        assert!(
            unknown.is_empty(),
            "keys missing from the reference:\n{}",
            unknown.join("\n")
        );
    }

    /// The schema's top-level keys are the ones serde reads.
    #[test]
    fn each_schema_has_the_keys_serde_reads() {
        for k in Kind::ALL {
            let schema = k.schema().to_value();
            let mut keys: Vec<&str> = schema["properties"]
                .as_object()
                .unwrap_or_else(|| panic!("{k:?}: no properties"))
                .keys()
                .map(String::as_str)
                .collect();
            let mut fields = k.fields().to_vec();
            keys.sort();
            fields.sort();
            assert_eq!(keys, fields, "{k:?}: the schema's keys against serde's");
        }
    }

    /// EXAMPLES holds every YAML file in config/.
    #[test]
    fn the_examples_are_every_file_in_config() {
        fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, base, out);
                } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                    out.push(p.strip_prefix(base).unwrap().display().to_string());
                }
            }
        }
        let base = root();
        let mut on_disk = Vec::new();
        walk(&base.join("config"), &base, &mut on_disk);
        on_disk.sort();
        let mut listed: Vec<String> = EXAMPLES.iter().map(|(p, _)| p.to_string()).collect();
        listed.sort();
        assert_eq!(
            listed, on_disk,
            "config_reference::EXAMPLES must list every file in config/"
        );
    }
}
