//! A body preview: JSON and XML pretty-printed, other text as it is, binary as a hex
//! dump. Pure: the caller reads at most [`PREVIEW_BYTES`] of the body.

use quick_xml::events::Event;
use quick_xml::{Reader, Writer};

/// How much of a body a preview shows.
pub const PREVIEW_BYTES: usize = 64 * 1024;
/// How much of a binary body the hex dump shows.
const HEX_BYTES: usize = 4 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Xml,
    Text,
    Hex,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "JSON",
            Format::Xml => "XML",
            Format::Text => "text",
            Format::Hex => "binary (hex)",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Preview {
    pub format: Format,
    pub text: String,
}

/// Renders `body` (the first bytes of a message's body; `whole` when it is all of it).
pub fn render(body: &[u8], content_type: &str, whole: bool) -> Preview {
    let ct = content_type.to_ascii_lowercase();
    let Ok(text) = std::str::from_utf8(body) else {
        // a prefix may cut a UTF-8 sequence: try without its last bytes
        if !whole {
            let cut = std::str::from_utf8(body)
                .err()
                .map(|e| e.valid_up_to())
                .unwrap_or(0);
            if cut + 4 > body.len() && cut > 0 {
                return render(&body[..cut], content_type, false);
            }
        }
        return Preview {
            format: Format::Hex,
            text: hex_dump(&body[..body.len().min(HEX_BYTES)]),
        };
    };
    let trimmed = text.trim_start();
    if whole && (ct.contains("json") || trimmed.starts_with('{') || trimmed.starts_with('[')) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
            if let Ok(pretty) = serde_json::to_string_pretty(&v) {
                return Preview {
                    format: Format::Json,
                    text: pretty,
                };
            }
        }
    }
    if whole && (ct.contains("xml") || trimmed.starts_with('<')) {
        if let Some(pretty) = pretty_xml(text) {
            return Preview {
                format: Format::Xml,
                text: pretty,
            };
        }
    }
    Preview {
        format: Format::Text,
        text: text.to_owned(),
    }
}

fn pretty_xml(text: &str) -> Option<String> {
    let mut reader = Reader::from_str(text);
    reader.config_mut().trim_text(true);
    let mut writer = Writer::new_with_indent(Vec::new(), b' ', 2);
    loop {
        match reader.read_event().ok()? {
            Event::Eof => break,
            event => writer.write_event(event).ok()?,
        }
    }
    String::from_utf8(writer.into_inner()).ok()
}

/// `offset  hex bytes  printable`, 16 bytes a line.
pub fn hex_dump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, line) in bytes.chunks(16).enumerate() {
        let hex: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
        let ascii: String = line
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        out.push_str(&format!("{:08x}  {:<47}  {ascii}\n", i * 16, hex.join(" ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_pretty_printed() {
        let p = render(
            br#"{"order":{"id":7,"lines":[1,2]}}"#,
            "application/json",
            true,
        );
        assert_eq!(p.format, Format::Json);
        assert!(p.text.contains("\n  \"order\": {\n"), "{}", p.text);
    }

    #[test]
    fn xml_is_indented() {
        let p = render(b"<a><b x=\"1\">t</b><c/></a>", "application/xml", true);
        assert_eq!(p.format, Format::Xml);
        assert_eq!(p.text, "<a>\n  <b x=\"1\">t</b>\n  <c/>\n</a>");
    }

    #[test]
    fn a_cut_body_is_shown_as_text_not_parsed() {
        let p = render(br#"{"order":{"id":7"#, "application/json", false);
        assert_eq!(p.format, Format::Text);
        // a UTF-8 sequence cut by the prefix is dropped, not turned into hex
        let p = render("héllo".as_bytes().split_at(2).0, "text/plain", false);
        assert_eq!((p.format, p.text.as_str()), (Format::Text, "h"));
    }

    #[test]
    fn binary_is_a_hex_dump() {
        let p = render(
            &[0u8, 159, 146, 150, b'A'],
            "application/octet-stream",
            true,
        );
        assert_eq!(p.format, Format::Hex);
        assert!(p.text.starts_with("00000000  00 9f 92 96 41"), "{}", p.text);
        assert!(p.text.trim_end().ends_with("....A"), "{}", p.text);
    }

    #[test]
    fn malformed_json_and_xml_stay_text() {
        assert_eq!(
            render(b"{nope", "application/json", true).format,
            Format::Text
        );
        assert_eq!(render(b"<a><b></a>", "text/xml", true).format, Format::Text);
    }
}
