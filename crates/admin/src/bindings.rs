//! `mbx export` and `mbx apply`: the bindings document (`mbx_messagebox::bindings`) as
//! YAML. Every send port and receive location in a file is checked by the adapters'
//! registry before anything is applied; an error names the file, the line of the object
//! it is about, and the problem.

use std::path::Path;

use anyhow::{Context as _, Result};
use mbx_messagebox::bindings::{ApplyError, ApplyOptions, Bindings, Step};
use mbx_messagebox::orchestrations::OrchestrationSpec;
use mbx_messagebox::MessageBox;

use crate::output;
use crate::Usage;

const HEADER: &str = "# mbx bindings: `mbx apply -f FILE` makes a group match this document.\n";

pub async fn export(
    mbx: &MessageBox,
    application: Option<&str>,
    file: Option<&Path>,
) -> Result<()> {
    let doc = mbx.export_bindings(application).await?;
    let yaml = format!(
        "{HEADER}{}",
        yaml_serde::to_string(&doc).context("writing the bindings as YAML")?
    );
    match file {
        Some(path) => {
            std::fs::write(path, &yaml)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!(
                "wrote {} ({} send ports, {} receive locations)",
                path.display(),
                doc.send_ports.len(),
                doc.receive_locations.len()
            );
        }
        None => print!("{yaml}"),
    }
    Ok(())
}

/// The line (1-based) of `name:` under the top-level `section:` of a document `mbx
/// export` wrote (sections at column 0, names indented by two).
fn line_of(text: &str, section: &str, name: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().position(|l| *l == format!("{section}:"))?;
    for (i, line) in lines.iter().enumerate().skip(start + 1) {
        if !line.starts_with(' ') && !line.is_empty() && !line.starts_with('#') {
            break;
        }
        let key = line.trim_start();
        if line.len() - key.len() == 2 {
            let key = key
                .split(':')
                .next()
                .unwrap_or("")
                .trim_matches(['\'', '"']);
            if key == name {
                return Some(i + 1);
            }
        }
    }
    Some(start + 1)
}

/// A problem with one object of the file: exit 2, naming file, line and object.
fn at_line(
    path: &Path,
    text: &str,
    section: &str,
    name: &str,
    problem: impl std::fmt::Display,
) -> Usage {
    let line = line_of(text, section, name).unwrap_or(1);
    Usage(format!(
        "{}:{line}: {section}.{name}: {problem}; nothing was applied",
        path.display()
    ))
}

/// Reads and checks a bindings file: its YAML and every field by the document's own
/// types, then each send port and receive location as `create` would check it, and each
/// orchestration's definition as `mbx orchestration create` would (returned as the
/// orchestrations to store).
fn read(path: &Path) -> Result<(String, Bindings, Vec<OrchestrationSpec>)> {
    let cannot_read = |e: std::io::Error| {
        Usage(format!(
            "-f: cannot read {}: {e} (example: mbx apply -f group.yaml)",
            path.display()
        ))
    };
    let size = std::fs::metadata(path).map_err(cannot_read)?.len();
    if size > BINDINGS_MAX_BYTES {
        return Err(Usage(format!(
            "-f: {} is {size} bytes, over the {BINDINGS_MAX_BYTES}-byte limit of a bindings file; split it by application (mbx export --application A)",
            path.display()
        ))
        .into());
    }
    let text = std::fs::read_to_string(path).map_err(cannot_read)?;
    expansion_within_limit(&text).map_err(|problem| {
        Usage(format!(
            "{}: {problem}; nothing was applied (write the repeated parts out, or split the file by application)",
            path.display()
        ))
    })?;
    let doc: Bindings = yaml_serde::from_str(&text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!("{}:{}", l.line(), l.column()))
            .unwrap_or_else(|| "1".into());
        Usage(format!(
            "{}:{at}: {e}; nothing was applied (`mbx export` shows the form)",
            path.display()
        ))
    })?;
    for (name, p) in &doc.send_ports {
        crate::validate::send_port(&p.spec(name))
            .map_err(|e| at_line(path, &text, "send_ports", name, e))?;
    }
    for (name, l) in &doc.receive_locations {
        crate::validate::receive_location(&l.spec(name))
            .map_err(|e| at_line(path, &text, "receive_locations", name, e))?;
    }
    for (name, l) in &doc.receive_locations {
        if let Some(port) = doc.receive_ports.get(&l.port) {
            crate::validate::two_way_settings(&l.spec(name), port.two_way)
                .map_err(|e| at_line(path, &text, "receive_locations", name, e))?;
        }
    }
    let mut orchestrations = Vec::with_capacity(doc.orchestrations.len());
    for (name, o) in &doc.orchestrations {
        let at = |e: &dyn std::fmt::Display| at_line(path, &text, "orchestrations", name, e);
        let definition = mbx_orchestration::Definition::from_document(&o.definition)
            .map_err(|e| at(&format_args!("definition: {e}")))?;
        if definition.name != *name {
            return Err(at(&format_args!(
                "the definition's document.name is '{}': an orchestration is filed under its own name",
                definition.name
            ))
            .into());
        }
        orchestrations.push(crate::orchestration::spec(
            &definition,
            &o.host,
            o.ordered,
            o.buckets,
        ));
    }
    Ok((text, doc, orchestrations))
}

pub async fn apply(
    mbx: &MessageBox,
    path: &Path,
    options: ApplyOptions,
    json_out: bool,
) -> Result<()> {
    let (text, doc, orchestrations) = read(path)?;
    // an --ordered AMQP location's queue, asked of the broker before anything is applied
    for (name, l) in &doc.receive_locations {
        crate::validate::ordered_source(&l.spec(name))
            .await
            .map_err(|e| at_line(path, &text, "receive_locations", name, e))?;
    }
    let plan = mbx
        .apply_bindings(&doc, &orchestrations, options)
        .await
        .map_err(|e| match e {
            ApplyError::Object(o) if o.error.is_bad_input() => {
                anyhow::Error::new(at_line(path, &text, o.section, &o.name, &o.error))
            }
            ApplyError::Object(o) => {
                let line = line_of(&text, o.section, &o.name).unwrap_or(1);
                anyhow::anyhow!(
                    "{}:{line}: {}.{}: {}; nothing was applied",
                    path.display(),
                    o.section,
                    o.name,
                    o.error
                )
            }
            ApplyError::MessageBox(e) => e.into(),
        })?;
    if json_out {
        return output::json(&serde_json::json!({"dry_run": options.dry_run, "plan": plan}));
    }
    if plan.is_empty() {
        println!("no changes: the MessageBox matches {}", path.display());
        return Ok(());
    }
    for step in &plan {
        println!("{step}");
    }
    let (c, u, d) = plan.iter().fold((0, 0, 0), |(c, u, d), s| match s {
        Step::Create { .. } => (c + 1, u, d),
        Step::Update { .. } => (c, u + 1, d),
        Step::Delete { .. } => (c, u, d + 1),
    });
    if options.dry_run {
        println!("plan: {c} to create, {u} to update, {d} to delete (dry run: nothing changed)");
    } else {
        println!("applied: {c} created, {u} updated, {d} deleted");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::line_of;

    #[test]
    fn an_object_is_found_under_its_section() {
        let doc = "# x\nmbx_bindings: 1\nsend_ports:\n  a:\n    host: default\n  b:\n    filter: x\nsend_port_groups:\n  b:\n    state: started\n";
        assert_eq!(line_of(doc, "send_ports", "b"), Some(6));
        assert_eq!(line_of(doc, "send_port_groups", "b"), Some(9));
        assert_eq!(line_of(doc, "receive_ports", "b"), None);
    }
}

/// The largest bindings file `mbx apply` reads (about 4,000 ports and locations); a larger
/// one is refused before it is parsed, so the CLI's memory stays bounded.
pub const BINDINGS_MAX_BYTES: u64 = 2 << 20;

/// The most a bindings document may amount to once its aliases are expanded (every scalar's
/// bytes plus a few per node, each alias counted as often as it is used): YAML aliases let
/// a small file stand for a huge one ("billion laughs"), and the document is built whole.
pub const BINDINGS_MAX_EXPANDED: u64 = 16 << 20;

/// Walks the document as the deserializer expands it, keeping nothing, and stops once it
/// amounts to more than [`BINDINGS_MAX_EXPANDED`]. A syntax error is left to the real parse,
/// which names its line.
pub(crate) fn expansion_within_limit(text: &str) -> std::result::Result<(), String> {
    use serde::de::DeserializeSeed as _;
    let used = std::cell::Cell::new(0u64);
    let over = |used: u64| {
        format!(
            "the document amounts to more than {BINDINGS_MAX_EXPANDED} bytes once its YAML aliases are expanded ({used} bytes counted so far)"
        )
    };
    for document in yaml_serde::Deserializer::from_str(text) {
        if Count(&used).deserialize(document).is_err() {
            // over the limit, or an error the real parse reports with its line (the
            // documents after a syntax error are not read)
            return match used.get() {
                n if n > BINDINGS_MAX_EXPANDED => Err(over(n)),
                _ => Ok(()),
            };
        }
    }
    Ok(())
}

/// A deserializer's walk over one node, adding what it amounts to to a shared count and
/// failing once the count is over [`BINDINGS_MAX_EXPANDED`].
struct Count<'a>(&'a std::cell::Cell<u64>);

impl Count<'_> {
    fn add<E: serde::de::Error>(&self, bytes: usize) -> std::result::Result<(), E> {
        // a node costs more than its text once built (a String, a map entry)
        let used = self.0.get() + bytes as u64 + 16;
        self.0.set(used);
        if used > BINDINGS_MAX_EXPANDED {
            return Err(E::custom("over the expansion limit"));
        }
        Ok(())
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Count<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Count<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> std::result::Result<(), E> {
        self.add(1)
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> std::result::Result<(), E> {
        self.add(8)
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> std::result::Result<(), E> {
        self.add(8)
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> std::result::Result<(), E> {
        self.add(8)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<(), E> {
        self.add(v.len())
    }

    fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<(), E> {
        self.add(0)
    }

    fn visit_none<E: serde::de::Error>(self) -> std::result::Result<(), E> {
        self.add(0)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<(), A::Error> {
        self.add::<A::Error>(0)?;
        while seq.next_element_seed(Count(self.0))?.is_some() {}
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<(), A::Error> {
        self.add::<A::Error>(0)?;
        while map.next_key_seed(Count(self.0))?.is_some() {
            map.next_value_seed(Count(self.0))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod expansion_tests {
    use super::*;

    #[test]
    fn aliases_that_expand_past_the_limit_are_refused() {
        // one 64 KiB string aliased 400 times: 25 MiB once expanded
        let big = "x".repeat(64 << 10);
        let mut text = format!("a: &big {big}\nlist:\n");
        for _ in 0..400 {
            text.push_str("  - *big\n");
        }
        let err = expansion_within_limit(&text).unwrap_err();
        assert!(err.contains("aliases"), "{err}");
        // nested aliases ("billion laughs") too
        let mut laughs =
            "l0: &l0 [\"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\"]\n"
                .to_owned();
        for i in 1..9 {
            let refs = vec![format!("*l{}", i - 1); 8].join(", ");
            laughs.push_str(&format!("l{i}: &l{i} [{refs}]\n"));
        }
        // (the deserializer's own repetition limit may stop this one first)
        assert!(
            expansion_within_limit(&laughs).is_err()
                || yaml_serde::from_str::<Bindings>(&laughs).is_err()
        );
        // a file with a few aliases, as people write them, is fine
        let fine = "defaults: &d {retry_count: 3}\nsend_ports:\n  a: *d\n  b: *d\n";
        assert!(expansion_within_limit(fine).is_ok());
        // a syntax error is left to the real parse
        assert!(expansion_within_limit("a: [").is_ok());
    }
}
