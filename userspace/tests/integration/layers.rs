//! The walls inside the crates: Cargo keeps the crates from depending on
//! each other in a circle; this keeps each crate's top-level modules from
//! doing so (a module that names `crate::x` depends on `x`).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// Each top-level module of the crate whose sources are in `src`, with
/// the files that make it up.
fn modules(src: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut out = BTreeMap::new();
    for e in fs::read_dir(src).expect("a crate's src") {
        let p = e.expect("entry").path();
        let name = p.file_stem().expect("a name").to_string_lossy().to_string();
        if name == "lib" || name == "main" {
            continue;
        }
        if p.is_dir() {
            let mut files = Vec::new();
            crate::errors::rust_files(&p, &mut files);
            out.insert(name, files);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.insert(name, vec![p]);
        }
    }
    out
}

/// The modules among `names` that `text` names as `crate::<module>`, in a
/// path or in a `use crate::{...}` group.
fn named(text: &str, names: &BTreeSet<String>) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Only the group's top level: `a::{b, c}` inside names `a`.
            let (mut depth, mut item) = (0, String::new());
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 && c == ',' {
                    out.insert(ident(item.trim()));
                    item.clear();
                } else if depth == 0 {
                    item.push(c);
                }
            }
            out.insert(ident(item.trim()));
        } else {
            out.insert(ident(rest));
        }
    }
    out.retain(|m| names.contains(m));
    out
}

/// A cycle of `graph`, if it has one.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut c = path[at..].to_vec();
            c.push(m.to_string());
            return Some(c);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for next in &graph[m] {
            if let Some(c) = visit(next, graph, done, path) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|m| visit(m, graph, &mut done, &mut Vec::new()))
}

#[test]
fn no_crate_has_a_cycle_between_its_top_level_modules() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates");
    let mut checked = 0;
    for e in fs::read_dir(&crates).expect("crates/") {
        let src = e.expect("entry").path().join("src");
        let mods = modules(&src);
        let names: BTreeSet<String> = mods.keys().cloned().collect();
        let graph: BTreeMap<String, BTreeSet<String>> = mods
            .iter()
            .map(|(m, files)| {
                let mut uses = BTreeSet::new();
                for f in files {
                    uses.extend(named(
                        &fs::read_to_string(f).expect("a source file"),
                        &names,
                    ));
                }
                uses.remove(m);
                (m.clone(), uses)
            })
            .collect();
        if let Some(c) = cycle(&graph) {
            panic!("{}: modules in a cycle: {}", src.display(), c.join(" -> "));
        }
        checked += 1;
    }
    assert!(
        checked >= 9,
        "only {checked} crates found under {}",
        crates.display()
    );
}

#[test]
fn the_module_reader_sees_paths_and_groups() {
    let names: BTreeSet<String> = ["a", "b", "c", "d"].map(String::from).into();
    let text = "use crate::{a::x, b::{y, z}};\nfn f() { crate::c::g(); } // crate::d";
    assert_eq!(
        named(text, &names),
        ["a", "b", "c"].map(String::from).into()
    );
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_string(), ["b".to_string()].into()),
        ("b".to_string(), ["a".to_string()].into()),
    ]
    .into();
    assert_eq!(cycle(&g).map(|c| c.len()), Some(3));
}
