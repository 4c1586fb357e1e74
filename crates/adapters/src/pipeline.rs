//! Receive pipelines: what runs between a receive adapter and the
//! MessageBox. `passthru` leaves the body alone; `json` and `xml` parse it, set
//! `mbx.MessageType` and promote configured paths.
//!
//! Promoted values come back as `(property, text)` pairs: typing them by the property's
//! declaration is the host's job. A malformed body is a [`PipelineError::Malformed`] with
//! the parser's message and byte offset; the host suspends it as `receive-failure`.

use std::str::FromStr;

use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;

use crate::error::ConfigError;
use crate::PROMOTED_VALUE_MAX_BYTES;

/// Promotions per receive location.
pub const PIPELINE_PROMOTIONS_MAX: usize = 64;
/// Nesting depth accepted in an XML document (deeper is refused as malformed); JSON is
/// bounded by serde_json's own recursion limit (128).
pub const XML_DEPTH_MAX: usize = 256;

/// Which pipeline a receive location runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipelineKind {
    Passthru,
    Json,
    Xml,
}

impl FromStr for PipelineKind {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "passthru" => Ok(PipelineKind::Passthru),
            "json" => Ok(PipelineKind::Json),
            "xml" => Ok(PipelineKind::Xml),
            other => Err(ConfigError::setting(
                "pipeline",
                other,
                "expected passthru, json or xml",
            )),
        }
    }
}

impl PipelineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PipelineKind::Passthru => "passthru",
            PipelineKind::Json => "json",
            PipelineKind::Xml => "xml",
        }
    }
}

/// One `--promote PROPERTY=PATH`: a JSON pointer (`/region`) for `json`, an element path
/// (`/Order/Region`, or `/Order/@id` for an attribute) for `xml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promotion {
    pub property: String,
    pub path: String,
}

impl FromStr for Promotion {
    type Err = ConfigError;
    /// Parses `Order.Region=/region`.
    fn from_str(spec: &str) -> Result<Self, ConfigError> {
        let bad = |problem: &str| {
            ConfigError::setting(
                "--promote",
                spec,
                format!("{problem} (example: Order.Region=/region)"),
            )
        };
        let (property, path) = spec
            .split_once('=')
            .ok_or_else(|| bad("expected PROPERTY=PATH"))?;
        let (property, path) = (property.trim(), path.trim());
        mbx_vocabulary::validate_promotion_target(property).map_err(|p| bad(&p))?;
        if !path.starts_with('/') {
            return Err(bad("the path must start with '/'"));
        }
        Ok(Promotion {
            property: property.to_owned(),
            path: path.to_owned(),
        })
    }
}

/// What a pipeline found in a body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PipelineOutput {
    /// `mbx.MessageType`: `namespace#root` for XML (just `root` without a namespace); for
    /// JSON only when configured.
    pub message_type: Option<String>,
    /// Promoted properties found in the body, in configuration order; a path that is
    /// absent (or JSON `null`) promotes nothing.
    pub promoted: Vec<(String, String)>,
}

/// The body cannot be disassembled: the message becomes a `receive-failure`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PipelineError {
    #[error("malformed {format} at byte {offset}: {message}")]
    Malformed {
        format: &'static str,
        message: String,
        offset: u64,
    },
    #[error("property {property}: a promoted value is at most {PROMOTED_VALUE_MAX_BYTES} bytes, this one has {bytes}")]
    ValueTooLong { property: String, bytes: usize },
    #[error("property {property}: {path} is an object or array, not a single value")]
    NotScalar { property: String, path: String },
}

/// A validated receive pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pipeline {
    kind: PipelineKind,
    promotions: Vec<Promotion>,
    message_type: Option<String>,
}

impl Pipeline {
    pub fn passthru() -> Self {
        Self {
            kind: PipelineKind::Passthru,
            promotions: Vec::new(),
            message_type: None,
        }
    }

    /// Checks the promotions against the pipeline kind.
    pub fn new(kind: PipelineKind, promotions: Vec<Promotion>) -> Result<Self, ConfigError> {
        if kind == PipelineKind::Passthru && !promotions.is_empty() {
            return Err(ConfigError::setting(
                "--promote",
                &promotions[0].property,
                "the passthru pipeline cannot promote; use --pipeline json or xml",
            ));
        }
        if promotions.len() > PIPELINE_PROMOTIONS_MAX {
            return Err(ConfigError::setting(
                "--promote",
                &promotions.len().to_string(),
                format!("at most {PIPELINE_PROMOTIONS_MAX} promotions"),
            ));
        }
        // the host builds pipelines from what the MessageBox holds: a promotion written by
        // an older `mbx` (or by hand) into the engine's namespace is refused here too
        for p in &promotions {
            let spec = format!("{}={}", p.property, p.path);
            mbx_vocabulary::validate_promotion_target(&p.property)
                .map_err(|problem| ConfigError::setting("--promote", &spec, problem))?;
            if !p.path.starts_with('/') {
                return Err(ConfigError::setting(
                    "--promote",
                    &spec,
                    "the path must start with '/' (example: Order.Region=/region)",
                ));
            }
        }
        if kind == PipelineKind::Xml {
            for p in &promotions {
                parse_xml_path(&p.path).map_err(|problem| {
                    ConfigError::setting(
                        "--promote",
                        &format!("{}={}", p.property, p.path),
                        problem,
                    )
                })?;
            }
        }
        Ok(Self {
            kind,
            promotions,
            message_type: None,
        })
    }

    /// Sets `mbx.MessageType` for every message of a `json` or `passthru` pipeline (neither
    /// body has a root name; the `xml` pipeline takes it from the root element).
    pub fn with_message_type(mut self, message_type: impl Into<String>) -> Self {
        self.message_type = Some(message_type.into());
        self
    }

    pub fn kind(&self) -> PipelineKind {
        self.kind
    }

    /// Disassembles one body.
    pub fn run(&self, body: &[u8]) -> Result<PipelineOutput, PipelineError> {
        match self.kind {
            PipelineKind::Passthru => Ok(PipelineOutput {
                message_type: self.message_type.clone(),
                ..PipelineOutput::default()
            }),
            PipelineKind::Json => self.run_json(body),
            PipelineKind::Xml => self.run_xml(body),
        }
    }

    fn run_json(&self, body: &[u8]) -> Result<PipelineOutput, PipelineError> {
        let doc: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| PipelineError::Malformed {
                format: "json",
                offset: json_offset(body, e.line(), e.column()),
                message: e.to_string(),
            })?;
        let mut promoted = Vec::new();
        for p in &self.promotions {
            let text = match doc.pointer(&p.path) {
                None | Some(serde_json::Value::Null) => continue,
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Number(n)) => n.to_string(),
                Some(serde_json::Value::Bool(b)) => b.to_string(),
                Some(_) => {
                    return Err(PipelineError::NotScalar {
                        property: p.property.clone(),
                        path: p.path.clone(),
                    })
                }
            };
            check_len(&p.property, &text)?;
            promoted.push((p.property.clone(), text));
        }
        Ok(PipelineOutput {
            message_type: self.message_type.clone(),
            promoted,
        })
    }

    fn run_xml(&self, body: &[u8]) -> Result<PipelineOutput, PipelineError> {
        let targets: Vec<XmlTarget> = self
            .promotions
            .iter()
            .map(|p| {
                let (elements, attribute) = parse_xml_path(&p.path).unwrap_or_default();
                XmlTarget {
                    property: &p.property,
                    elements,
                    attribute,
                    text: String::new(),
                    state: TargetState::Pending,
                }
            })
            .collect();
        let mut scan = XmlScan {
            reader: NsReader::from_reader(body),
            stack: Vec::new(),
            root_closed: false,
            message_type: None,
            targets,
        };
        scan.reader.config_mut().check_end_names = true;
        scan.run(body.len())?;
        let promoted = scan
            .targets
            .into_iter()
            .filter(|t| t.state == TargetState::Found)
            .map(|t| {
                let text = if t.attribute.is_some() {
                    t.text
                } else {
                    t.text.trim().to_owned()
                };
                (t.property.to_owned(), text)
            })
            .collect();
        let output = PipelineOutput {
            message_type: scan.message_type,
            promoted,
        };
        check_output(&output)?;
        Ok(output)
    }
}

fn check_len(property: &str, text: &str) -> Result<(), PipelineError> {
    if text.len() > PROMOTED_VALUE_MAX_BYTES {
        return Err(PipelineError::ValueTooLong {
            property: property.to_owned(),
            bytes: text.len(),
        });
    }
    Ok(())
}

/// serde_json reports 1-based line and column (in bytes); the byte offset is what an
/// operator can seek to.
fn json_offset(body: &[u8], line: usize, column: usize) -> u64 {
    let mut offset = 0usize;
    for _ in 1..line {
        match body[offset..].iter().position(|&b| b == b'\n') {
            Some(nl) => offset += nl + 1,
            None => break,
        }
    }
    (offset + column.saturating_sub(1)).min(body.len()) as u64
}

/// `/Order/Region` → (["Order", "Region"], None); `/Order/@id` → (["Order"], Some("id")).
/// Prefixes (`/ns:Order`) are ignored: elements are matched by local name.
fn parse_xml_path(path: &str) -> Result<(Vec<String>, Option<String>), String> {
    let rest = path
        .strip_prefix('/')
        .ok_or("an element path starts with '/', e.g. /Order/Region")?;
    let mut elements = Vec::new();
    let mut attribute = None;
    let parts: Vec<&str> = rest.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        let local = part.rsplit(':').next().unwrap_or(part);
        if local.is_empty() || local.contains(['[', ']', '*', ' ']) {
            return Err(format!("{path}: expected element names separated by '/'"));
        }
        if let Some(attr) = local.strip_prefix('@') {
            if i + 1 != parts.len() || attr.is_empty() || i == 0 {
                return Err(format!(
                    "{path}: an attribute (@name) may only end the path"
                ));
            }
            attribute = Some(attr.to_owned());
        } else {
            elements.push(local.to_owned());
        }
    }
    Ok((elements, attribute))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TargetState {
    Pending,
    /// Inside the matching element, collecting its text.
    Collecting,
    Found,
}

struct XmlTarget<'p> {
    property: &'p str,
    elements: Vec<String>,
    attribute: Option<String>,
    text: String,
    state: TargetState,
}

struct XmlScan<'b, 'p> {
    reader: NsReader<&'b [u8]>,
    /// Local names of the open elements.
    stack: Vec<String>,
    root_closed: bool,
    message_type: Option<String>,
    targets: Vec<XmlTarget<'p>>,
}

impl XmlScan<'_, '_> {
    fn malformed(&self, message: impl Into<String>, offset: u64) -> PipelineError {
        PipelineError::Malformed {
            format: "xml",
            message: message.into(),
            offset,
        }
    }

    fn run(&mut self, body_len: usize) -> Result<(), PipelineError> {
        loop {
            let before = self.reader.buffer_position();
            let (ns, event) = match self.reader.read_resolved_event() {
                Ok(x) => x,
                Err(e) => return Err(self.malformed(e.to_string(), self.reader.error_position())),
            };
            match event {
                Event::Start(e) | Event::Empty(e) if self.root_closed => {
                    let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                    return Err(self.malformed(format!("a second root element <{name}>"), before));
                }
                Event::Start(ref e) | Event::Empty(ref e) => {
                    let empty = matches!(event, Event::Empty(_));
                    let local = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                    if self.stack.is_empty() {
                        self.message_type = Some(match ns {
                            ResolveResult::Bound(ns) => {
                                format!("{}#{local}", String::from_utf8_lossy(ns.as_ref()))
                            }
                            ResolveResult::Unbound => local.clone(),
                            ResolveResult::Unknown(prefix) => {
                                return Err(self.malformed(
                                    format!(
                                        "unknown namespace prefix {:?}",
                                        String::from_utf8_lossy(&prefix)
                                    ),
                                    before,
                                ))
                            }
                        });
                    }
                    if self.stack.len() >= XML_DEPTH_MAX {
                        return Err(
                            self.malformed(format!("nesting deeper than {XML_DEPTH_MAX}"), before)
                        );
                    }
                    self.stack.push(local);
                    self.on_open(e, empty, before)?;
                    if empty {
                        self.on_close();
                    }
                }
                Event::End(_) => self.on_close(),
                Event::Text(t) => {
                    let text = t
                        .unescape()
                        .map_err(|e| self.malformed(e.to_string(), before))?;
                    if self.stack.is_empty() {
                        if !text.trim().is_empty() {
                            return Err(self.malformed("text outside the root element", before));
                        }
                    } else {
                        self.on_text(&text)?;
                    }
                }
                Event::CData(c) => {
                    if self.stack.is_empty() {
                        return Err(self.malformed("CDATA outside the root element", before));
                    }
                    // text and attributes are decoded strictly by the reader; CDATA too
                    let text = std::str::from_utf8(&c).map_err(|e| {
                        let at = before + "<![CDATA[".len() as u64 + e.valid_up_to() as u64;
                        self.malformed(format!("invalid UTF-8 in CDATA: {e}"), at)
                    })?;
                    self.on_text(text)?;
                }
                Event::Eof => {
                    if let Some(open) = self.stack.last() {
                        return Err(self.malformed(
                            format!("unexpected end of document: <{open}> is not closed"),
                            body_len as u64,
                        ));
                    }
                    if self.message_type.is_none() {
                        return Err(self.malformed("no root element", body_len as u64));
                    }
                    return Ok(());
                }
                Event::Decl(_) | Event::PI(_) | Event::Comment(_) | Event::DocType(_) => {}
            }
        }
    }

    fn on_open(
        &mut self,
        e: &quick_xml::events::BytesStart<'_>,
        empty: bool,
        offset: u64,
    ) -> Result<(), PipelineError> {
        for i in 0..self.targets.len() {
            let t = &self.targets[i];
            if t.state != TargetState::Pending || t.elements != self.stack {
                continue;
            }
            match t.attribute.clone() {
                Some(attr) => {
                    let mut value = None;
                    for a in e.attributes() {
                        let a = a.map_err(|err| self.malformed(err.to_string(), offset))?;
                        if a.key.local_name().as_ref() == attr.as_bytes() {
                            let v = a
                                .unescape_value()
                                .map_err(|err| self.malformed(err.to_string(), offset))?;
                            value = Some(v.into_owned());
                            break;
                        }
                    }
                    if let Some(v) = value {
                        check_len(self.targets[i].property, &v)?;
                        self.targets[i].text = v;
                        self.targets[i].state = TargetState::Found;
                    }
                }
                None => {
                    self.targets[i].state = if empty {
                        TargetState::Found
                    } else {
                        TargetState::Collecting
                    };
                }
            }
        }
        Ok(())
    }

    fn on_text(&mut self, text: &str) -> Result<(), PipelineError> {
        for t in &mut self.targets {
            if t.state == TargetState::Collecting {
                t.text.push_str(text);
                // Trimmed at the end; refuse early so a huge element costs bounded memory.
                if t.text.trim_start().len() > PROMOTED_VALUE_MAX_BYTES + 1024 {
                    check_len(t.property, t.text.trim())?;
                }
            }
        }
        Ok(())
    }

    fn on_close(&mut self) {
        for t in &mut self.targets {
            if t.state == TargetState::Collecting && t.elements == self.stack {
                t.state = TargetState::Found;
            }
        }
        self.stack.pop();
        if self.stack.is_empty() {
            self.root_closed = true;
        }
    }
}

/// Checks every found value's length (text is trimmed only when the element closes).
fn check_output(output: &PipelineOutput) -> Result<(), PipelineError> {
    for (property, text) in &output.promoted {
        check_len(property, text)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_offsets_count_bytes_across_lines() {
        let body = b"{\n  \"a\": ,\n}";
        let err = serde_json::from_slice::<serde_json::Value>(body).unwrap_err();
        let offset = json_offset(body, err.line(), err.column());
        assert_eq!(body[offset as usize], b',');
    }

    #[test]
    fn xml_paths_parse() {
        assert_eq!(
            parse_xml_path("/Order/Region").unwrap(),
            (vec!["Order".into(), "Region".into()], None)
        );
        assert_eq!(
            parse_xml_path("/ns:Order/@id").unwrap(),
            (vec!["Order".into()], Some("id".into()))
        );
        assert!(parse_xml_path("Order").is_err());
        assert!(parse_xml_path("/@id").is_err());
        assert!(parse_xml_path("/a//b").is_err());
    }

    #[test]
    fn property_names_are_checked() {
        assert!("Order.Region=/region".parse::<Promotion>().is_ok());
        assert!("mbx.OutboundTransportLocation=/to"
            .parse::<Promotion>()
            .is_ok());
        assert!("mbx.MessageType=/t".parse::<Promotion>().is_err());
        assert!("Region=/region".parse::<Promotion>().is_err());
        assert!("Order.Region=region".parse::<Promotion>().is_err());
    }
}
