//! Keeps docs/protocol.md honest: every ```json block is a message that decodes and round trips,
//! every message type has an example, the wire example matches, and the error code table lists
//! exactly the codes of `ErrorCode` with their numbers.

use std::collections::BTreeSet;

use protocol1::{decode_message, encode_frame, ClientMessage, ErrorCode, ServerMessage, MAX_FRAME_BYTES};

const SPEC: &str = include_str!("../../../docs/protocol.md");

fn blocks(lang: &str) -> Vec<String> {
    let fence = format!("```{lang}");
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in SPEC.lines() {
        match &mut current {
            None if line.trim() == fence => current = Some(String::new()),
            Some(text) if line.trim() == "```" => {
                out.push(std::mem::take(text));
                current = None;
            }
            Some(text) => {
                text.push_str(line);
                text.push('\n');
            }
            None => {}
        }
    }
    assert!(current.is_none(), "unterminated block");
    out
}

#[test]
fn every_json_example_is_a_message_that_round_trips() {
    let mut client_kinds = BTreeSet::new();
    let mut server_kinds = BTreeSet::new();
    let examples = blocks("json");
    assert!(examples.len() >= 25, "{} examples", examples.len());
    for text in examples {
        if let Ok(msg) = decode_message::<ClientMessage>(text.as_bytes()) {
            let again = serde_json::to_string(&msg).unwrap();
            assert_eq!(decode_message::<ClientMessage>(again.as_bytes()).unwrap(), msg);
            client_kinds.insert(msg.kind());
        } else {
            let msg = decode_message::<ServerMessage>(text.as_bytes()).unwrap_or_else(|e| panic!("{e}:\n{text}"));
            let again = serde_json::to_string(&msg).unwrap();
            assert_eq!(decode_message::<ServerMessage>(again.as_bytes()).unwrap(), msg);
            server_kinds.insert(msg.kind());
        }
    }
    assert_eq!(client_kinds, ClientMessage::TYPES.iter().copied().collect());
    assert_eq!(server_kinds, ServerMessage::TYPES.iter().copied().collect());
}

#[test]
fn wire_example_matches() {
    let frame = encode_frame(&ClientMessage::Ping { nonce: None }, MAX_FRAME_BYTES).unwrap();
    let hex: Vec<String> = frame.iter().map(|b| format!("{b:02x}")).collect();
    let hex = hex.join(" ");
    assert!(blocks("text").iter().any(|b| b.trim() == hex), "{hex} not in docs/protocol.md");
}

#[test]
fn error_code_table_matches() {
    let mut rows = Vec::new();
    for line in SPEC.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() > 3 {
            if let Ok(number) = cells[1].parse::<u16>() {
                rows.push((number, cells[2].trim_matches('`').to_string()));
            }
        }
    }
    let expected: Vec<(u16, String)> = ErrorCode::ALL.iter().map(|c| (c.number(), c.name().to_string())).collect();
    assert_eq!(rows, expected);
}

#[test]
fn documented_defaults() {
    assert!(SPEC.contains(&protocol1::DEFAULT_ADDR.to_string()));
    assert!(SPEC.contains("1 048 576") && protocol1::MAX_FRAME_BYTES == 1_048_576);
    assert!(SPEC.contains("**256 bins**") && protocol1::DEFAULT_SUBSCRIBER_QUEUE == 256);
    assert!(SPEC.contains("120 seconds") && protocol1::DEFAULT_IDLE_TIMEOUT.as_secs() == 120);
    assert!(SPEC.contains("within 10 seconds") && protocol1::DEFAULT_HANDSHAKE_TIMEOUT.as_secs() == 10);
    assert!(SPEC.contains("every\n30 seconds") && protocol1::PING_INTERVAL.as_secs() == 30);
}

/// The example of a graph too large has the message the service sends.
#[test]
fn the_graph_size_example_is_the_service_s_message() {
    let why = protocol1::graph_too_large(140_000).unwrap();
    assert!(SPEC.contains(&format!(r#""message": "{why}""#)), "{why}");
    assert!(SPEC.contains(&format!("{} bytes", "131,072")) && protocol1::MAX_GRAPH_BYTES == 131_072);
}
