//! The codemap's invariants (ARCHITECTURE.md), checked on the source itself so that a
//! change that breaks one fails here rather than in review:
//! - every metric a crate emits is described in the catalog, every `MBX_…` variable a
//!   binary reads is named in docs/operations.md, and no new migration points at the
//!   product spec;
//! - all SQL lives in crates/messagebox: no `sqlx` and no SQL statement in the non-test
//!   code of any other crate, the host's LISTEN and the bench's mbx workloads included
//!   (only the bench's peers, its scratch databases and its server report speak SQL of
//!   their own: they measure other systems and the server, not mbx);
//! - no column is read by position (`row.get(0)`, `try_get(1)`): a row is read into a
//!   named `sqlx::FromRow` struct, so a reordered SELECT cannot swap two columns;
//! - `mbx-admin` depends neither on `mbx-host` nor on `mbx-bench` (`mbx bench` runs the
//!   `mbx-bench` binary, so the production `mbx` links none of the benchmark's peers),
//!   `mbx-host` not on `mbx-bench`, `mbx-adapters` not on `mbx-messagebox`,
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
        ("admin", "mbx-bench"),
        ("host", "mbx-bench"),
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

/// Whether a line reads a value by position: `.get(0)`, `.try_get(1)`,
/// `.get::<i64, _>(2)` (a row's column, or anything else read by a bare index).
fn positional_read(line: &str) -> bool {
    let code = line.split("//").next().unwrap_or("");
    [".get", ".try_get"].iter().any(|method| {
        code.match_indices(method).any(|(at, _)| {
            let mut rest = &code[at + method.len()..];
            if let Some(args) = rest.strip_prefix("::<") {
                // past the type arguments, nested ones included
                let mut depth = 1;
                let end = args.find(|c| {
                    match c {
                        '<' => depth += 1,
                        '>' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                });
                let Some(end) = end else { return false };
                rest = &args[end + 1..];
            }
            rest.strip_prefix('(')
                .is_some_and(|arg| arg.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        })
    })
}

#[test]
fn no_column_is_read_by_position() {
    let mut files = Vec::new();
    files_with(&root().join("crates"), &[".rs"], &mut files);
    assert!(files.len() > 50, "found the sources: {}", files.len());
    let mut offences = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read source");
        for (n, line) in text.lines().enumerate() {
            if positional_read(line) {
                offences.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        offences.is_empty(),
        "read a row into a named #[derive(sqlx::FromRow)] struct with sqlx::query_as \
         (alias a computed column: `AS name`), not by position:\n{}",
        offences.join("\n")
    );
}

#[test]
fn the_checks_catch_what_they_look_for() {
    assert!(sql_in("let x = sqlx::query(\"SELECT 1\");").is_some());
    assert!(sql_in("    \"DELETE FROM deliveries\",").is_some());
    assert!(sql_in("// SELECT in a comment").is_none());
    assert!(sql_in("EnvFilter::new(\"warn,sqlx=error\")").is_none());
    assert!(sql_in(r#"after_help = "psql -c \"ALTER ROLE x\"""#).is_none());
    assert!(positional_read("let id: i64 = row.get(0);"));
    assert!(positional_read("    state: row.try_get( 1)?,"));
    assert!(positional_read(
        "if row.get::<Option<Vec<u8>>, _>(13).is_some() {"
    ));
    assert!(positional_read(".and_then(|_| address.get(7..))"));
    assert!(!positional_read("let id: i64 = row.get(\"id\");"));
    assert!(!positional_read("declared.get(name).copied()"));
    assert!(!positional_read("let b = budget(3); // row.get(0)"));
    assert!(!positional_read("m.get_mut(0); c.get::<i64>"));
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

/// The non-test source of every crate (`crates/*/src`), with its path.
fn crate_sources() -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(root().join("crates")).expect("crates") {
        let src = entry.expect("crate").path().join("src");
        if src.is_dir() {
            rust_files(&src, &mut files);
        }
    }
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).expect("read source");
            let code = non_test(&text).to_owned();
            (f, code)
        })
        .collect()
}

/// The string literals right after each `macro!(` in `code` (a metric's name).
fn first_literals<'a>(code: &'a str, macros: &[&str]) -> Vec<&'a str> {
    let mut out = Vec::new();
    for m in macros {
        let call = format!("{m}!(");
        for (at, _) in code.match_indices(&call) {
            let rest = code[at + call.len()..].trim_start();
            if let Some(lit) = rest.strip_prefix('"') {
                if let Some(end) = lit.find('"') {
                    out.push(&lit[..end]);
                }
            }
        }
    }
    out
}

/// Every `"MBX_…"` string literal in `code`: the environment variables a binary reads
/// (clap's `env = "…"`, `std::env::var("…")`, or a constant naming one).
fn mbx_variables(code: &str) -> Vec<&str> {
    code.match_indices("\"MBX_")
        .filter_map(|(at, _)| {
            let lit = &code[at + 1..];
            let end =
                lit.find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))?;
            (lit[end..].starts_with('"')).then(|| &lit[..end])
        })
        .collect()
}

#[test]
fn every_metric_a_crate_emits_is_in_the_catalog() {
    let catalog = std::fs::read_to_string(root().join("crates/host/src/metrics_catalog.rs"))
        .expect("the metrics catalog");
    let mut missing = Vec::new();
    let mut seen = 0;
    for (file, code) in crate_sources() {
        for name in first_literals(&code, &["counter", "gauge", "histogram"]) {
            seen += 1;
            if !catalog.contains(&format!("\"{name}\"")) {
                missing.push(format!("{}: {name}", file.display()));
            }
        }
    }
    assert!(seen > 10, "found the metrics: {seen}");
    assert!(
        missing.is_empty(),
        "describe these in crates/host/src/metrics_catalog.rs (name and # HELP text):\n{}",
        missing.join("\n")
    );
}

#[test]
fn every_environment_variable_a_binary_reads_is_in_operations_md() {
    let operations =
        std::fs::read_to_string(root().join("docs/operations.md")).expect("docs/operations.md");
    let mut missing = Vec::new();
    let mut seen = 0;
    for (file, code) in crate_sources() {
        for var in mbx_variables(&code) {
            seen += 1;
            if !operations.contains(&format!("`{var}`")) {
                missing.push(format!("{}: {var}", file.display()));
            }
        }
    }
    assert!(seen > 3, "found the variables: {seen}");
    assert!(
        missing.is_empty(),
        "name these in docs/operations.md (Environment variables):\n{}",
        missing.join("\n")
    );
}

/// Applied migrations never change (sqlx checks their checksums), so the product-spec
/// references of the first ones stay; a new migration says what it means instead.
#[test]
fn no_new_migration_points_at_the_product_spec() {
    // the last migration written before this rule
    const GRANDFATHERED: &str = "20261201000014";
    let needle = format!("{} §", "SPEC");
    let mut offences = Vec::new();
    for entry in std::fs::read_dir(root().join("migrations")).expect("migrations") {
        let path = entry.expect("migration").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_owned();
        let version = name.split('_').next().unwrap_or("");
        if version > GRANDFATHERED {
            let text = std::fs::read_to_string(&path).expect("read migration");
            if text.contains(&needle) || text.contains("shared/") {
                offences.push(name);
            }
        }
    }
    assert!(
        offences.is_empty(),
        "say what is meant instead of pointing at the product spec: {offences:?}"
    );
}

#[test]
fn the_new_checks_catch_what_they_look_for() {
    let code = "metrics::counter!(\n  \"mbx_x_total\", \"port\" => p)\nmetrics::gauge!(*name)";
    assert_eq!(first_literals(code, &["counter", "gauge"]), ["mbx_x_total"]);
    let code = r#"#[arg(long, env = "MBX_LOG_FORMAT")] std::env::var("MBX_LOG") "MBX_lower""#;
    assert_eq!(mbx_variables(code), ["MBX_LOG_FORMAT", "MBX_LOG"]);
}
