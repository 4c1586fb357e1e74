//! The codemap's invariants (ARCHITECTURE.md), checked on the source itself so that a
//! change that breaks one fails here rather than in review:
//! - all SQL lives in crates/messagebox: no `sqlx` and no SQL statement in the non-test
//!   code of any other crate, the host's LISTEN and the bench's mbx workloads included
//!   (only the bench's peers, its scratch databases and its server report speak SQL of
//!   their own: they measure other systems and the server, not mbx);
//! - `mbx-admin` does not depend on `mbx-host`, `mbx-adapters` not on `mbx-messagebox`,
//!   `mbx-console` neither on `mbx-host` nor on `mbx-adapters` (only the MessageBox API),
//!   and `mbx-vocabulary` on no mbx crate.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read source dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text of `source` before its `#[cfg(test)]` module (unit tests may build fixtures).
fn non_test(source: &str) -> &str {
    source
        .find("#[cfg(test)]")
        .map_or(source, |at| &source[..at])
}

/// Why a line is SQL or database access, if it is.
fn sql_in(line: &str) -> Option<&'static str> {
    let code = line.split("//").next().unwrap_or("");
    if code.contains("sqlx::") || code.trim_start().starts_with("use sqlx") {
        return Some("uses sqlx");
    }
    for statement in [
        "\"SELECT ",
        "\"INSERT INTO",
        "\"UPDATE ",
        "\"DELETE FROM",
        "\"WITH ",
        "\"CREATE ",
        "\"ALTER ",
        "\"LISTEN ",
        "pg_notify",
    ] {
        // a statement opens a string literal; an escaped quote (`\"ALTER ROLE …\"` in a
        // help text showing a psql command) is prose
        let opens_literal = code
            .match_indices(statement)
            .any(|(at, _)| at == 0 || code.as_bytes()[at - 1] != b'\\');
        if opens_literal {
            return Some("holds an SQL statement");
        }
    }
    None
}

/// Files outside crates/messagebox allowed their own SQL (see the module comment).
const SQL_ALLOWED: &[&str] = &[
    "crates/bench/src/peers/",
    "crates/bench/src/database.rs",
    "crates/bench/src/report.rs",
    "crates/bench/src/error.rs",
];

#[test]
fn all_sql_lives_in_the_messagebox_crate() {
    let mut files = Vec::new();
    for krate in [
        "vocabulary",
        "adapters",
        "host",
        "admin",
        "bench",
        "console",
    ] {
        rust_files(&root().join("crates").join(krate).join("src"), &mut files);
    }
    assert!(files.len() > 20, "found the sources: {}", files.len());
    let mut offences = Vec::new();
    for file in files {
        let rel = file
            .strip_prefix(root())
            .expect("under the root")
            .to_string_lossy()
            .into_owned();
        if SQL_ALLOWED.iter().any(|a| rel.starts_with(a)) {
            continue;
        }
        let source = std::fs::read_to_string(&file).expect("read source");
        for (n, line) in non_test(&source).lines().enumerate() {
            if let Some(why) = sql_in(line) {
                offences.push(format!("{rel}:{}: {why}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        offences.is_empty(),
        "SQL outside crates/messagebox (move it behind a MessageBox method):\n{}",
        offences.join("\n")
    );
}

/// The `mbx-*` crates a crate's Cargo.toml depends on (any section).
fn mbx_dependencies(krate: &str) -> Vec<String> {
    let manifest = std::fs::read_to_string(root().join("crates").join(krate).join("Cargo.toml"))
        .expect("read manifest");
    manifest
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim().to_owned()))
        .filter(|k| k.starts_with("mbx-"))
        .collect()
}

#[test]
fn crates_depend_only_as_the_codemap_allows() {
    assert!(
        mbx_dependencies("admin").contains(&"mbx-messagebox".to_owned()),
        "the manifest reader sees dependencies"
    );
    let forbidden = [
        ("admin", "mbx-host"),
        ("adapters", "mbx-messagebox"),
        ("adapters", "mbx-host"),
        ("messagebox", "mbx-adapters"),
        ("messagebox", "mbx-host"),
        ("console", "mbx-host"),
        ("console", "mbx-adapters"),
    ];
    for (krate, dep) in forbidden {
        assert!(
            !mbx_dependencies(krate).contains(&dep.to_owned()),
            "crates/{krate} must not depend on {dep} (ARCHITECTURE.md)"
        );
    }
    assert!(
        mbx_dependencies("vocabulary").is_empty(),
        "mbx-vocabulary is a leaf: {:?}",
        mbx_dependencies("vocabulary")
    );
}

#[test]
fn the_checks_catch_what_they_look_for() {
    assert!(sql_in("let x = sqlx::query(\"SELECT 1\");").is_some());
    assert!(sql_in("    \"DELETE FROM deliveries\",").is_some());
    assert!(sql_in("// SELECT in a comment").is_none());
    assert!(sql_in("EnvFilter::new(\"warn,sqlx=error\")").is_none());
    assert!(sql_in(r#"after_help = "psql -c \"ALTER ROLE x\"""#).is_none());
}

/// Every file under `dir` with one of `exts`, skipping build output.
fn files_with(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("dir entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                files_with(&path, exts, out);
            }
        } else if exts.iter().any(|e| name.ends_with(e)) {
            out.push(path);
        }
    }
}

#[test]
fn the_repository_stands_alone_without_the_product_spec() {
    // the needle is built here so that this file does not match itself
    let needles = [format!("{} §", "SPEC"), format!("shared/{}", "SPEC")];
    let mut files = vec![root().join("README.md"), root().join("ARCHITECTURE.md")];
    for dir in ["docs", "crates", "tests", "scripts", "demo"] {
        files_with(
            &root().join(dir),
            &[".rs", ".md", ".toml", ".sh", ".yml"],
            &mut files,
        );
    }
    assert!(files.len() > 50, "found the files: {}", files.len());
    let mut offences = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for (n, line) in text.lines().enumerate() {
            if needles.iter().any(|needle| line.contains(needle.as_str())) {
                offences.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        offences.is_empty(),
        "the repository must not point at a spec users do not have; say what is meant:\n{}",
        offences.join("\n")
    );
}
