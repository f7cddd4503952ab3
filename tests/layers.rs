//! The library's modules import only from layers below their own, as docs/architecture.md's layer map says.
//!
//! The map is read from the document itself (the fenced block marked `layers`), so the document and this
//! check cannot drift apart. Every `crate::<module>` reference in a module's non-test code (a `use` line, a
//! path in code, a `crate::{a, b}` group) is checked: the module it names must sit in a lower layer. Every
//! top-level module of src/ must be in the map.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Layer of each module, from the `layers` block of docs/architecture.md (`N: module module ...`).
fn layer_map() -> BTreeMap<String, usize> {
    let doc =
        std::fs::read_to_string(root().join("docs/architecture.md")).expect("docs/architecture.md");
    let block = doc
        .split("```layers\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/architecture.md has a ```layers block");
    let mut map = BTreeMap::new();
    for line in block.lines().filter(|l| !l.trim().is_empty()) {
        let (n, modules) = line.split_once(':').expect("a layer line is `N: modules`");
        let n: usize = n.trim().parse().expect("a layer number");
        for m in modules.split_whitespace() {
            assert!(map.insert(m.to_owned(), n).is_none(), "{m} is listed twice");
        }
    }
    map
}

/// The library's top-level modules (src/<m>.rs or src/<m>/), and each one's files.
fn modules() -> BTreeMap<String, Vec<PathBuf>> {
    let mut out: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(root().join("src")).expect("src/") {
        let path = entry.expect("entry").path();
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("")
            .to_owned();
        // The binary's own modules (main.rs declares cli and malloc_count) sit on top, outside the map.
        if matches!(
            name.as_str(),
            "lib" | "main" | "cli" | "malloc_count" | "default"
        ) {
            continue;
        }
        let files = out.entry(name).or_default();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    out
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// The top-level modules `text` names through `crate::`, outside comments and its unit tests.
fn imports(text: &str) -> BTreeSet<String> {
    let code = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    let code: String = code
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

#[test]
fn every_module_imports_only_from_lower_layers() {
    let map = layer_map();
    let mut problems = Vec::new();
    for (module, files) in modules() {
        let Some(&layer) = map.get(&module) else {
            problems.push(format!(
                "src/{module} is not in docs/architecture.md's layer map: add it to a layer"
            ));
            continue;
        };
        for file in files {
            let text = std::fs::read_to_string(&file).expect("source file");
            for used in imports(&text) {
                if used == module {
                    continue;
                }
                match map.get(&used) {
                    Some(&l) if l < layer => {}
                    Some(&l) => problems.push(format!(
                        "{} (module {module}, layer {layer}) uses crate::{used} (layer {l}): a module may \
                         use only lower layers",
                        file.strip_prefix(root()).unwrap_or(&file).display()
                    )),
                    None => problems.push(format!(
                        "{} uses crate::{used}, which is not in the layer map",
                        file.strip_prefix(root()).unwrap_or(&file).display()
                    )),
                }
            }
        }
    }
    assert!(problems.is_empty(), "layering:\n{}", problems.join("\n"));
}

#[test]
fn the_import_scanner_sees_every_form() {
    let text = "use crate::frame::PixelFormat;\nuse crate::{alloc, stats::Stats};\n\
                let t = crate::clock::monotonic_ns(); // crate::runtime in a comment\n\
                #[cfg(test)]\nmod tests {\n    use crate::config::Config;\n}\n";
    let got: Vec<String> = imports(text).into_iter().collect();
    assert_eq!(got, ["alloc", "clock", "frame", "stats"]);
}
