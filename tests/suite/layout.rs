//! The layout rule of `tests/tests.rs`, checked: a test file that would silently become a
//! binary of its own, or an area file that no `mod` line compiles (whose tests would never
//! run), fails here with the fix in the message.

use std::path::Path;

const TESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests");

/// Names of the `*.rs` files directly in `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").file_name())
        .filter_map(|name| name.into_string().ok())
        .filter(|name| name.ends_with(".rs"))
        .collect();
    names.sort();
    names
}

#[test]
fn tests_rs_is_the_only_integration_test_binary() {
    let files = rust_files(Path::new(TESTS));
    assert_eq!(
        files,
        vec!["tests.rs".to_string()],
        "every file in tests/*.rs is a test binary of its own: move the others to \
         tests/suite/AREA.rs and add `mod AREA;` to tests/tests.rs (see its doc comment)"
    );
}

#[test]
fn every_area_file_is_a_module_of_the_suite() {
    let root = std::fs::read_to_string(Path::new(TESTS).join("tests.rs")).expect("tests/tests.rs");
    let declared: Vec<&str> = root
        .lines()
        .filter_map(|line| line.trim().strip_prefix("mod "))
        .filter_map(|rest| rest.strip_suffix(';'))
        .collect();
    let missing: Vec<String> = rust_files(&Path::new(TESTS).join("suite"))
        .into_iter()
        .map(|file| file.trim_end_matches(".rs").to_string())
        .filter(|area| !declared.contains(&area.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "tests/suite/ files that no `mod` line in tests/tests.rs compiles (their tests never \
         run): {missing:?}"
    );
}

// The dependency direction of `src/` (ARCHITECTURE.md, "Module dependencies"), checked on the
// source text: every `use` tree and every `crate::` / `super::` / child-module path outside
// comments, strings and `#[cfg(test)]` items is an edge from its file to the file of the module
// it names. `src/main.rs` and `src/bin/` are the top floor (they only see the library's public
// paths), so they are left out.

use std::collections::{BTreeMap, BTreeSet};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

/// The floors, lowest first: a module may import its own floor and those below it. `forecast`
/// (pure models: no I/O, no other mqflux module) is the ground floor; `ops::forecast` uses it.
const LAYERS: [&str; 7] = [
    "forecast", "protocol", "store", "sink", "broker", "bridge", "ops",
];
/// Configuration embeds each part's settings (the one allowed exception): every floor may read
/// `config`, and `config` may import the settings types of the floors below the broker (the
/// broker's own settings are defined in `config.rs`), never broker or ops code.
const CONFIG: &str = "config";
/// `bridge` for its settings only (`bridge::config`, which imports no configuration code back).
const CONFIG_MAY_IMPORT: [&str; 5] = ["forecast", "protocol", "store", "sink", "bridge"];
/// The sink's settings files, on the one import cycle allowed: `config` embeds `SinkConfig`
/// (`sink/config.rs`) and its rules (`sink/mapping.rs` compiles and validates them), which
/// report errors as `config::ConfigError`.
const CONFIG_SETTINGS: [&str; 2] = ["sink::config", "sink::mapping"];

/// `text` with comments, string and char literals blanked out (newlines kept), so that braces
/// and paths found afterwards are code.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let blank = |out: &mut Vec<u8>, s: &[u8]| {
        out.extend(s.iter().map(|&c| if c == b'\n' { b'\n' } else { b' ' }));
    };
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    while i < b.len() {
        let rest = &b[i..];
        let end = if rest.starts_with(b"//") {
            i + rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len())
        } else if rest.starts_with(b"/*") {
            i + rest
                .windows(2)
                .position(|w| w == b"*/")
                .map_or(rest.len(), |p| p + 2)
        } else if (b[i] == b'r' || rest.starts_with(b"br")) && (i == 0 || !ident(b[i - 1])) && {
            let r = if b[i] == b'b' { &rest[2..] } else { &rest[1..] };
            let hashes = r.iter().take_while(|&&c| c == b'#').count();
            r.get(hashes) == Some(&b'"')
        } {
            // A raw string: r"..." or r#"..."#, possibly b-prefixed.
            let start = if b[i] == b'b' { i + 2 } else { i + 1 };
            let hashes = b[start..].iter().take_while(|&&c| c == b'#').count();
            let mut close = vec![b'"'];
            close.extend(std::iter::repeat_n(b'#', hashes));
            let body = start + hashes + 1;
            body + b[body..]
                .windows(close.len())
                .position(|w| w == close.as_slice())
                .map_or(b.len() - body, |p| p + close.len())
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            (j + 1).min(b.len())
        } else if b[i] == b'\'' {
            // A char literal ('x', '\n', '\u{7f}'), or else a lifetime, which is kept.
            let close = if rest.get(1) == Some(&b'\\') {
                rest.iter().skip(2).position(|&c| c == b'\'').map(|p| p + 3)
            } else {
                let len = std::str::from_utf8(&rest[1..rest.len().min(5)])
                    .ok()
                    .or_else(|| std::str::from_utf8(&rest[1..2]).ok())
                    .and_then(|s| s.chars().next())
                    .map_or(1, char::len_utf8);
                (rest.get(1 + len) == Some(&b'\'')).then_some(len + 2)
            };
            match close {
                Some(n) => i + n,
                None => {
                    out.push(b[i]);
                    i += 1;
                    continue;
                }
            }
        } else {
            out.push(b[i]);
            i += 1;
            continue;
        };
        blank(&mut out, &b[i..end]);
        i = end;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `code` without the items marked `#[cfg(test)]` (a `mod tests { ... }`, a test-only fn).
fn without_test_items(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let item = &rest[at..];
        // The item ends at its first `;` if that comes before its first `{`, else at the brace
        // that closes it.
        let end = match (item.find(';'), item.find('{')) {
            (Some(semi), Some(open)) if semi < open => semi + 1,
            (_, Some(open)) => {
                let mut depth = 0usize;
                let mut end = item.len();
                for (k, c) in item[open..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = open + k + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            (Some(semi), None) => semi + 1,
            (None, None) => item.len(),
        };
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

/// Expand a `use` tree (`a::{b, c::{d as e}, self}`) into full paths, each a list of segments.
fn expand_use(tree: &str) -> Vec<Vec<String>> {
    fn split_top(s: &str) -> Vec<&str> {
        let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
        for (k, c) in s.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&s[start..k]);
                    start = k + 1;
                }
                _ => {}
            }
        }
        parts.push(&s[start..]);
        parts
    }
    fn walk(prefix: &[String], tree: &str, out: &mut Vec<Vec<String>>) {
        let tree = tree.trim();
        if tree.is_empty() {
            return;
        }
        if let Some(brace) = tree.find('{') {
            let mut p = prefix.to_vec();
            p.extend(segments(&tree[..brace]));
            let inner = &tree[brace + 1..tree.rfind('}').unwrap_or(tree.len())];
            for part in split_top(inner) {
                walk(&p, part, out);
            }
        } else {
            let path = tree.split(" as ").next().unwrap_or(tree);
            let mut p = prefix.to_vec();
            p.extend(segments(path).filter(|s| s != "self" || prefix.is_empty()));
            out.push(p);
        }
    }
    fn segments(s: &str) -> impl Iterator<Item = String> + '_ {
        s.split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty() && *s != "*")
            .map(String::from)
    }
    let mut out = Vec::new();
    walk(&[], tree, &mut out);
    out
}

/// Every library module that has a file, by module path (`broker::outbox`, `config`), with its
/// code (comments, literals and test items removed).
fn library_modules() -> BTreeMap<String, String> {
    fn visit(dir: &Path, modules: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .map(|e| e.expect("directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            let rel = path
                .strip_prefix(SRC)
                .expect("under src")
                .to_string_lossy()
                .into_owned();
            if rel == "bin" || rel == "main.rs" || rel == "lib.rs" {
                continue;
            }
            if path.is_dir() {
                visit(&path, modules);
            } else if let Some(stem) = rel.strip_suffix(".rs") {
                let module = stem.trim_end_matches("/mod").replace('/', "::");
                let text = std::fs::read_to_string(&path).expect("source file");
                modules.insert(module, without_test_items(&code_only(&text)));
            }
        }
    }
    let mut modules = BTreeMap::new();
    visit(Path::new(SRC), &mut modules);
    modules
}

/// The file-level import graph: module -> the modules (files) it names.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let modules = library_modules();
    let is_module = |m: &[String]| modules.contains_key(&m.join("::"));
    // A path made absolute (`crate::` dropped): `super::`, `self::` and a child module's name
    // are read from `from`; None for a path that names no module of this crate.
    let absolute = |from: &str, path: &[String]| -> Option<Vec<String>> {
        let mut base: Vec<String> = from.split("::").map(String::from).collect();
        let mut segs = path;
        match segs.first().map(String::as_str) {
            Some("crate") => {
                base.clear();
                segs = &segs[1..];
            }
            Some("super") | Some("self") => {
                while let Some(first) = segs.first() {
                    match first.as_str() {
                        "super" => drop(base.pop()),
                        "self" => {}
                        _ => break,
                    }
                    segs = &segs[1..];
                }
            }
            // A child module of `from`, named without a prefix (`use stats::Stats;`).
            Some(first) => {
                let mut child = base.clone();
                child.push(first.to_string());
                if !is_module(&child) {
                    return None;
                }
            }
            None => return None,
        }
        base.extend(segs.iter().cloned());
        Some(base)
    };
    // What each module re-exports (`pub use child::Item;`): (module, name) -> absolute path.
    // A path through a front door's re-export names the file that defines the item, not the
    // front door (`crate::sink::SinkConfig` is `sink/config.rs`).
    let mut reexports: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (module, code) in &modules {
        for stmt in code.split(';') {
            let stmt = stmt.trim_start();
            let Some(rest) = ["pub use ", "pub(crate) use ", "pub(super) use "]
                .iter()
                .find_map(|p| stmt.strip_prefix(p))
            else {
                continue;
            };
            for path in expand_use(rest) {
                let (Some(name), Some(full)) = (path.last(), absolute(module, &path)) else {
                    continue;
                };
                reexports.insert((module.clone(), name.clone()), full);
            }
        }
    }
    // The file a path names: the longest prefix of it that is a module with a file, or, when
    // that module re-exports the next segment, the file the re-export names.
    let resolve = |from: &str, path: &[String]| -> Option<String> {
        let mut full = absolute(from, path)?;
        for _ in 0..8 {
            let n = (1..=full.len()).rev().find(|&n| is_module(&full[..n]))?;
            let module = full[..n].join("::");
            let next = full
                .get(n)
                .and_then(|name| reexports.get(&(module.clone(), name.clone())));
            match next {
                Some(target) if n < full.len() => {
                    let mut t = target.clone();
                    t.extend(full[n + 1..].iter().cloned());
                    full = t;
                }
                _ => return Some(module),
            }
        }
        None
    };
    let mut graph = BTreeMap::new();
    for (module, code) in &modules {
        let mut targets = BTreeSet::new();
        let mut paths = Vec::new();
        // `use` trees (they may span lines).
        for stmt in code.split(';') {
            let stmt = stmt.trim_start();
            let stmt = stmt.strip_prefix("pub ").unwrap_or(stmt);
            let stmt = stmt
                .strip_prefix("pub(crate) ")
                .or_else(|| stmt.strip_prefix("pub(super) "))
                .unwrap_or(stmt);
            if let Some(tree) = stmt.strip_prefix("use ") {
                paths.extend(expand_use(tree));
            }
        }
        // Paths in code: `crate::a::b`, `super::x`, `child::Item`.
        let bytes = code.as_bytes();
        for (at, _) in code.match_indices("::") {
            let start = code[..at]
                .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .map_or(0, |p| p + 1);
            if start > 0 && bytes[start - 1] == b':' || code[start..at].contains("::") {
                continue; // inside a longer path, which its first `::` already found
            }
            let end = at
                + code[at..]
                    .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                    .unwrap_or(code.len() - at);
            if code[..start].ends_with("(in ") {
                continue; // `pub(in crate::broker)`: a visibility, not a use
            }
            if code[end..].starts_with('{') {
                continue; // `a::{b, c}`: a use tree, whose paths the `use` parser above took
            }
            let path: Vec<String> = code[start..end]
                .split("::")
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            paths.push(path);
        }
        for path in paths {
            if let Some(target) = resolve(module, &path) {
                if &target != module {
                    targets.insert(target);
                }
            }
        }
        graph.insert(module.clone(), targets);
    }
    graph
}

fn floor(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

/// The strongly connected components of more than one module (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Tarjan<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut t = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    t.found.sort();
    t.found
}

#[test]
fn module_graph_of_src() {
    // Not a check: the graph, for ARCHITECTURE.md (`cargo nextest run --test tests
    // suite::layout::module_graph_of_src --no-capture`).
    let graph = module_graph();
    for (module, targets) in &graph {
        println!(
            "{module} -> {}",
            targets.iter().cloned().collect::<Vec<_>>().join(" ")
        );
    }
    for component in cycles(&graph) {
        println!("cycle: {}", component.join(" "));
    }
}

#[test]
fn lower_floors_never_import_higher_ones() {
    let graph = module_graph();
    let rank = |floor: &str| LAYERS.iter().position(|l| *l == floor);
    let mut wrong = Vec::new();
    for (from, targets) in &graph {
        for to in targets {
            let (a, b) = (floor(from), floor(to));
            let allowed = a == b
                || b == CONFIG
                || (a == CONFIG && CONFIG_MAY_IMPORT.contains(&b))
                || matches!((rank(a), rank(b)), (Some(x), Some(y)) if y < x);
            if !allowed {
                wrong.push(format!("{from} -> {to}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the floors forecast <- protocol <- store <- sink <- broker <- bridge <- ops (config: settings \
         only; ARCHITECTURE.md, \"Module dependencies\"): {wrong:#?}. Pass a function or trait \
         object down instead, or move the code to the floor it belongs to."
    );
    // Every floor is known: a new top-level module must be given its place here.
    for module in graph.keys() {
        let f = floor(module);
        assert!(
            f == CONFIG || LAYERS.contains(&f),
            "src/{f}: a top-level module with no floor; add it to LAYERS in tests/suite/layout.rs \
             and to ARCHITECTURE.md"
        );
    }
}

/// The import cycles of `graph` other than the config exception: a cycle through `config`
/// whose other modules are all settings files (`CONFIG_SETTINGS`). Cycles are looked for twice,
/// with and without `config`, so that a cycle among other files cannot hide inside the
/// exception's component.
fn disallowed_cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let without_config: BTreeMap<String, BTreeSet<String>> = graph
        .iter()
        .filter(|(m, _)| m.as_str() != CONFIG)
        .map(|(m, t)| {
            (
                m.clone(),
                t.iter().filter(|t| *t != CONFIG).cloned().collect(),
            )
        })
        .collect();
    let mut wrong = cycles(&without_config);
    for component in cycles(graph) {
        let settings_only = component
            .iter()
            .all(|m| m == CONFIG || CONFIG_SETTINGS.contains(&m.as_str()));
        let exception = component.iter().any(|m| m == CONFIG) && settings_only;
        if !exception && !wrong.contains(&component) {
            wrong.push(component);
        }
    }
    wrong
}

#[test]
fn no_import_cycle_but_config_embedding_settings() {
    let wrong = disallowed_cycles(&module_graph());
    assert!(
        wrong.is_empty(),
        "import cycles in src/ (ARCHITECTURE.md §7 allows only config <-> the sink's settings \
         files {CONFIG_SETTINGS:?}): {wrong:#?}. Move the shared type into a file of its own, or \
         pass the call up down as a function or trait object; \
         `cargo nextest run --test tests suite::layout::module_graph_of_src --no-capture` prints \
         the graph."
    );
}

#[test]
fn the_cycle_check_catches_cycles_outside_the_config_exception() {
    let graph = |edges: &[(&str, &str)]| {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, to) in edges {
            g.entry(from.to_string())
                .or_default()
                .insert(to.to_string());
            g.entry(to.to_string()).or_default();
        }
        g
    };
    // The allowed one.
    let config = [
        ("config", "sink::config"),
        ("sink::config", "config"),
        ("sink::config", "sink::mapping"),
        ("sink::mapping", "config"),
    ];
    assert!(disallowed_cycles(&graph(&config)).is_empty());
    // A front door and its part (as protocol/mod.rs and its files were).
    let front_door = graph(&[
        ("protocol", "protocol::types"),
        ("protocol::types", "protocol"),
    ]);
    assert_eq!(
        disallowed_cycles(&front_door),
        vec![vec!["protocol".to_string(), "protocol::types".to_string()]]
    );
    // A cycle inside the exception's component: found with config left out.
    let mut hidden = config.to_vec();
    hidden.extend([
        ("sink::mapping", "sink::rules"),
        ("sink::rules", "sink::mapping"),
    ]);
    hidden.push(("sink::rules", "config"));
    let found = disallowed_cycles(&graph(&hidden));
    assert!(
        found.contains(&vec![
            "sink::mapping".to_string(),
            "sink::rules".to_string()
        ]),
        "{found:?}"
    );
    // A settings file on a cycle with a file that is not one.
    let mut other = config.to_vec();
    other.extend([("config", "sink::writer"), ("sink::writer", "sink::config")]);
    assert_eq!(disallowed_cycles(&graph(&other)).len(), 1);
}
