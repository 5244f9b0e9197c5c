//! What a reader copies from `docs/guide.md` is complete (issue 15): its Rust blocks are compiled
//! as doc tests (`src/lib.rs`), and these checks make sure that what compiles there is what the
//! reader sees: no hidden (`# `) lines, and no crate a block uses that section 1's dependency list
//! does not name. Its links to the API go to the API documentation, not to source files.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

const GUIDE: &str = include_str!("../../../docs/guide.md");

/// The guide's Rust code blocks: (info string, first line number, text).
fn rust_blocks() -> Vec<(String, usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, usize, String)> = None;
    for (number, line) in GUIDE.lines().enumerate() {
        match current.as_mut() {
            None => {
                if let Some(info) = line.strip_prefix("```")
                    && info.starts_with("rust")
                {
                    current = Some((info.to_string(), number + 2, String::new()));
                }
            }
            Some((_, _, text)) => {
                if line.starts_with("```") {
                    blocks.push(current.take().unwrap());
                } else {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
    }
    assert!(current.is_none(), "a Rust block is not closed");
    blocks
}

#[test]
fn no_rust_block_has_hidden_lines() {
    let blocks = rust_blocks();
    assert!(blocks.len() > 10, "the guide has its Rust blocks");
    let mut hidden = Vec::new();
    for (_, first, text) in &blocks {
        for (offset, line) in text.lines().enumerate() {
            let trimmed = line.trim_start();
            if trimmed == "#" || trimmed.starts_with("# ") {
                hidden.push(format!("line {}: {line}", first + offset));
            }
        }
    }
    assert!(
        hidden.is_empty(),
        "rustdoc hides these lines, so a reader who copies the block does not get them:\n{}",
        hidden.join("\n")
    );
}

/// The crates section 1 tells the reader to depend on: the TOML block's keys, and any
/// `name = "version"` the section's text names, with `-` as `_`.
fn section_one_crates() -> BTreeSet<String> {
    let start = GUIDE.find("## 1. ").unwrap();
    let end = start + GUIDE[start..].find("## 2. ").unwrap();
    let mut crates = BTreeSet::new();
    for line in GUIDE[start..end].lines() {
        for piece in line.split('`') {
            let piece = piece.trim().trim_start_matches('#').trim();
            if let Some((name, rest)) = piece.split_once('=')
                && !rest.trim().is_empty()
            {
                let name = name.trim();
                if !name.is_empty()
                    && name.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'
                    })
                {
                    crates.insert(name.replace('-', "_"));
                }
            }
        }
    }
    crates
}

/// The crates `text` uses: the root of every `use` and every path that starts an expression.
fn crates_used(text: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    let mut rest = String::new();
    let mut in_use = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if !in_use && let Some(path) = trimmed.strip_prefix("use ") {
            let root: String = path
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            used.insert(root);
            in_use = true;
        }
        if in_use {
            in_use = !line.contains(';');
            continue;
        }
        // Comments may name anything.
        let code = line.split("//").next().unwrap_or("");
        rest.push_str(code);
        rest.push('\n');
    }
    let bytes = rest.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = (bytes[i].is_ascii_lowercase() || bytes[i] == b'_')
            && (i == 0
                || !(bytes[i - 1].is_ascii_alphanumeric() || b"_:.".contains(&bytes[i - 1])));
        if starts_word {
            let mut j = i;
            while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
                j += 1;
            }
            if rest[j..].starts_with("::") {
                used.insert(rest[i..j].to_string());
            }
            i = j;
        } else {
            i += 1;
        }
    }
    for builtin in ["std", "core", "alloc", "crate", "self", "super"] {
        used.remove(builtin);
    }
    used
}

#[test]
fn every_crate_a_block_uses_is_in_section_one() {
    let deps = section_one_crates();
    assert!(
        deps.contains("switchboard") && deps.contains("axum"),
        "{deps:?}"
    );
    let mut missing = Vec::new();
    for (info, first, text) in rust_blocks() {
        // A block that is not compiled says in its own text what it needs (section 14's, for
        // switchboard-redis).
        if info.contains("ignore") {
            continue;
        }
        for name in crates_used(&text) {
            if !deps.contains(&name) {
                missing.push(format!("the block at line {first} uses `{name}`"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "section 1's dependency list does not name (E0433 for a reader):\n{}\n(listed: {deps:?})",
        missing.join("\n")
    );
}

#[test]
fn the_checks_see_what_they_look_for() {
    let used = crates_used(
        "use axum::{Router, routing::get};\nfn f() { tracing::info!(\"x\"); let v = std::mem::take(&mut a); m.decode::<T>(); }\n// foo::bar\n",
    );
    assert_eq!(
        used,
        ["axum", "tracing"].map(String::from).into_iter().collect()
    );
}

/// (`scripts/test.sh` checks, after `cargo doc`, that every page these links name exists.)
#[test]
fn links_to_the_api_go_to_the_api_documentation() {
    let mut source_links = Vec::new();
    for line in GUIDE.lines() {
        if line.starts_with("[`")
            && let Some((_, target)) = line.split_once("]: ")
            && !target.starts_with("../target/doc/switchboard/")
        {
            source_links.push(line.to_string());
        }
    }
    assert!(
        source_links.is_empty(),
        "API names link to source files:\n{}",
        source_links.join("\n")
    );
}

/// Every relative link of the repository's Markdown documents (`](path)` and `[name]: path`)
/// names a file or folder that is in the repository (deployment.md once pointed to a
/// `DESIGN.md` that is not); links into `target/` name pages `cargo doc` makes, which
/// `scripts/test.sh` checks.
#[test]
fn relative_links_of_the_documents_name_files_of_the_repository() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut documents = vec![root.join("README.md"), root.join("client-js/README.md")];
    for folder in ["docs", "examples/chat"] {
        for entry in std::fs::read_dir(root.join(folder)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|ext| ext == "md") {
                documents.push(path);
            }
        }
    }
    let mut broken = Vec::new();
    let mut checked = 0;
    for document in &documents {
        let Ok(text) = std::fs::read_to_string(document) else {
            continue;
        };
        let folder = document.parent().unwrap();
        let mut targets: Vec<&str> = Vec::new();
        for (at, _) in text.match_indices("](") {
            let rest = &text[at + 2..];
            if let Some(end) = rest.find(')') {
                targets.push(&rest[..end]);
            }
        }
        for line in text.lines() {
            if line.starts_with('[')
                && let Some((_, target)) = line.split_once("]: ")
            {
                targets.push(target.trim());
            }
        }
        for target in targets {
            let path = target.split('#').next().unwrap_or_default();
            let external = target.contains("://") || target.starts_with("mailto:");
            if path.is_empty() || external || path.contains(' ') || path.contains("target/doc") {
                continue;
            }
            checked += 1;
            if !folder.join(path).exists() {
                broken.push(format!("{}: {target}", document.display()));
            }
        }
    }
    assert!(checked >= 10, "only {checked} relative links found");
    assert!(
        broken.is_empty(),
        "links to files not in the repository:\n{}",
        broken.join("\n")
    );
}
