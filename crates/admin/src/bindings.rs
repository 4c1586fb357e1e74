//! `mbx export` and `mbx apply`: the bindings document (`mbx_messagebox::bindings`) as
//! YAML. Every send port and receive location in a file is checked by the adapters'
//! registry before anything is applied; an error names the file, the line of the object
//! it is about, and the problem.

use std::path::Path;

use anyhow::{Context as _, Result};
use mbx_messagebox::bindings::{ApplyError, ApplyOptions, Bindings, Step};
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
/// types, then each send port and receive location as `create` would check it.
fn read(path: &Path) -> Result<(String, Bindings)> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Usage(format!(
            "-f: cannot read {}: {e} (example: mbx apply -f group.yaml)",
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
    Ok((text, doc))
}

pub async fn apply(
    mbx: &MessageBox,
    path: &Path,
    options: ApplyOptions,
    json_out: bool,
) -> Result<()> {
    let (text, doc) = read(path)?;
    // an --ordered AMQP location's queue, asked of the broker before anything is applied
    for (name, l) in &doc.receive_locations {
        crate::validate::ordered_source(&l.spec(name))
            .await
            .map_err(|e| at_line(path, &text, "receive_locations", name, e))?;
    }
    let plan = mbx
        .apply_bindings(&doc, options)
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
