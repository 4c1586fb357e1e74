//! Receive pipelines: promotion, message types and malformed bodies.

use mbx_adapters::pipeline::{Pipeline, PipelineError, PipelineKind, Promotion};

fn pipeline(kind: PipelineKind, promotions: &[&str]) -> Pipeline {
    let promotions: Vec<Promotion> = promotions.iter().map(|p| p.parse().unwrap()).collect();
    Pipeline::new(kind, promotions).unwrap()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn passthru_promotes_nothing_and_accepts_anything() {
    let out = Pipeline::passthru().run(b"\xff not json").unwrap();
    assert_eq!(out.message_type, None);
    assert!(out.promoted.is_empty());
    let promotions = vec!["Order.Region=/region".parse().unwrap()];
    assert!(Pipeline::new(PipelineKind::Passthru, promotions).is_err());
}

#[test]
fn json_promotes_pointers_as_text() {
    let p = pipeline(
        PipelineKind::Json,
        &[
            "Order.Region=/region",
            "Order.Amount=/amount",
            "Order.Rush=/rush",
            "Order.Sku=/lines/0/sku",
            "Order.Missing=/nope",
            "Order.Null=/null",
        ],
    );
    let out = p
        .run(br#"{"region":"EU","amount":12.5,"rush":true,"lines":[{"sku":"A-1"}],"null":null}"#)
        .unwrap();
    assert_eq!(
        out.message_type, None,
        "JSON has no message type unless configured"
    );
    assert_eq!(
        out.promoted,
        pairs(&[
            ("Order.Region", "EU"),
            ("Order.Amount", "12.5"),
            ("Order.Rush", "true"),
            ("Order.Sku", "A-1")
        ])
    );
    let typed = pipeline(PipelineKind::Json, &[]).with_message_type("Order");
    assert_eq!(
        typed.run(b"{}").unwrap().message_type.as_deref(),
        Some("Order")
    );
}

#[test]
fn json_objects_and_long_values_cannot_be_promoted() {
    let p = pipeline(PipelineKind::Json, &["Order.Lines=/lines"]);
    assert!(matches!(
        p.run(br#"{"lines":[1]}"#),
        Err(PipelineError::NotScalar { .. })
    ));
    let p = pipeline(PipelineKind::Json, &["Order.Note=/note"]);
    let body = format!(r#"{{"note":"{}"}}"#, "x".repeat(257));
    assert!(matches!(
        p.run(body.as_bytes()),
        Err(PipelineError::ValueTooLong { bytes: 257, .. })
    ));
    let body = format!(r#"{{"note":"{}"}}"#, "x".repeat(256));
    assert!(p.run(body.as_bytes()).is_ok());
}

#[test]
fn malformed_json_gives_the_parser_message_and_offset() {
    let body = b"{\"region\": \"EU\",\n \"amount\": }";
    match pipeline(PipelineKind::Json, &[]).run(body) {
        Err(PipelineError::Malformed {
            format,
            message,
            offset,
        }) => {
            assert_eq!(format, "json");
            assert_eq!(
                body[offset as usize], b'}',
                "offset {offset} points at the error"
            );
            assert!(message.contains("line 2"), "{message}");
        }
        other => panic!("expected malformed, got {other:?}"),
    }
}

#[test]
fn xml_message_type_with_and_without_namespace() {
    let p = pipeline(PipelineKind::Xml, &[]);
    let out = p
        .run(br#"<?xml version="1.0"?><Order xmlns="urn:shop:order"><Id>1</Id></Order>"#)
        .unwrap();
    assert_eq!(out.message_type.as_deref(), Some("urn:shop:order#Order"));
    let out = p.run(br#"<o:Order xmlns:o="urn:shop:order"/>"#).unwrap();
    assert_eq!(out.message_type.as_deref(), Some("urn:shop:order#Order"));
    let out = p.run(b"<Order><Id>1</Id></Order>").unwrap();
    assert_eq!(out.message_type.as_deref(), Some("Order"));
}

#[test]
fn xml_promotes_element_paths_and_attributes() {
    let p = pipeline(
        PipelineKind::Xml,
        &[
            "Order.Region=/Order/Region",
            "Order.Id=/Order/@id",
            "Order.Sku=/Order/Line/Sku",
            "Order.Missing=/Order/Nope",
            "Order.Empty=/Order/Empty",
        ],
    );
    let body = br#"<o:Order xmlns:o="urn:x" id="7"><o:Region> EU &amp; UK </o:Region><Line><Sku><![CDATA[A<1>]]></Sku></Line><Line><Sku>B</Sku></Line><Empty/></o:Order>"#;
    let out = p.run(body).unwrap();
    assert_eq!(
        out.promoted,
        pairs(&[
            ("Order.Region", "EU & UK"),
            ("Order.Id", "7"),
            ("Order.Sku", "A<1>"),
            ("Order.Empty", "")
        ])
    );
}

#[test]
fn malformed_xml_gives_the_parser_message_and_offset() {
    let p = pipeline(PipelineKind::Xml, &[]);
    for body in [
        &b"<Order><Id>1</Order>"[..],
        b"<Order>",
        b"",
        b"<a/><b/>",
        b"hello",
    ] {
        match p.run(body) {
            Err(PipelineError::Malformed {
                format,
                offset,
                message,
            }) => {
                assert_eq!(format, "xml");
                assert!(offset as usize <= body.len(), "{message} at {offset}");
            }
            other => panic!(
                "{:?}: expected malformed, got {other:?}",
                String::from_utf8_lossy(body)
            ),
        }
    }
    match p.run(b"<Order><Id>1</Id></Ordr>") {
        Err(PipelineError::Malformed {
            offset, message, ..
        }) => {
            assert!(
                message.contains("Ordr") || message.contains("Order"),
                "{message}"
            );
            assert!(
                (17..=24).contains(&offset),
                "offset {offset} near the bad end tag"
            );
        }
        other => panic!("expected malformed, got {other:?}"),
    }
}

#[test]
fn xml_long_values_cannot_be_promoted() {
    let p = pipeline(PipelineKind::Xml, &["Order.Note=/Order/Note"]);
    let body = format!("<Order><Note>{}</Note></Order>", "x".repeat(300));
    assert!(matches!(
        p.run(body.as_bytes()),
        Err(PipelineError::ValueTooLong { .. })
    ));
}

#[test]
fn pipeline_kinds_parse() {
    assert_eq!("xml".parse::<PipelineKind>().unwrap(), PipelineKind::Xml);
    assert!("csv".parse::<PipelineKind>().is_err());
}

/// T12: invalid UTF-8 in a value to promote is a malformed body (suspended non-resumable
/// by the host), never a value with replacement characters.
#[test]
fn invalid_utf8_in_a_promoted_value_is_malformed() {
    let json = pipeline(PipelineKind::Json, &["Order.Region=/region"]);
    match json.run(b"{\"region\":\"E\xffU\"}") {
        Err(PipelineError::Malformed { format, .. }) => assert_eq!(format, "json"),
        other => panic!("json with invalid UTF-8: {other:?}"),
    }
    for (promotion, body) in [
        (
            "Order.Region=/Order/Region",
            &b"<Order><Region>E\xffU</Region></Order>"[..],
        ),
        (
            "Order.Region=/Order/Region",
            &b"<Order><Region><![CDATA[E\xffU]]></Region></Order>"[..],
        ),
        (
            "Order.Code=/Order/Region/@code",
            &b"<Order><Region code=\"E\xffU\"/></Order>"[..],
        ),
    ] {
        match pipeline(PipelineKind::Xml, &[promotion]).run(body) {
            Err(PipelineError::Malformed {
                format, message, ..
            }) => {
                assert_eq!(format, "xml");
                assert!(
                    message.to_lowercase().contains("utf"),
                    "names the encoding problem: {message}"
                );
            }
            other => panic!("xml with invalid UTF-8 {body:?}: {other:?}"),
        }
    }
}
