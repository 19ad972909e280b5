//! JSON round trips of every message: one hand-written instance per message type with its exact
//! JSON, then arbitrary instances (proptest) through JSON text and through frames.

mod common;

use common::{arb_client_message, arb_server_message};
use proptest::prelude::*;
use protocol1::{
    decode_frames, decode_message, encode_frame, Accepted, Bin, ClientMessage, Dropped, Edit, ErrorCode, Hello, NodeDoc, Reason, Refused,
    Rejected, Request, Role, ServerMessage, Welcome, MAX_FRAME_BYTES,
};
use serde_json::{json, Value};

fn client_examples() -> Vec<(ClientMessage, Value)> {
    vec![
        (
            ClientMessage::Hello(Hello::new("gui", Role::Editor).with_token("t0k")),
            json!({"type": "hello", "protocol": 1, "client": "gui", "token": "t0k", "role": "editor"}),
        ),
        (
            ClientMessage::Request(Request {
                id: 9,
                base_version: 4,
                edits: vec![
                    Edit::AddNode {
                        node: NodeDoc::new("m", "mean", &["roi"], Value::Null),
                    },
                    Edit::RemoveNode { id: "old".into() },
                    Edit::ReplaceNode {
                        node: NodeDoc::new("h", "histogram", &["e"], json!({"bins": 10, "low": 0, "high": 1})),
                    },
                    Edit::SetParams {
                        id: "f".into(),
                        params: json!({"min": 1.5}),
                    },
                    Edit::ConnectInputs {
                        id: "c".into(),
                        inputs: vec!["m".into()],
                    },
                ],
                results: Some(vec!["m".into(), "h".into()]),
            }),
            json!({"type": "request", "id": 9, "base_version": 4, "edits": [
                {"type": "add_node", "node": {"id": "m", "op": "mean", "inputs": ["roi"], "params": null}},
                {"type": "remove_node", "id": "old"},
                {"type": "replace_node", "node": {"id": "h", "op": "histogram", "inputs": ["e"], "params": {"bins": 10, "low": 0, "high": 1}}},
                {"type": "set_params", "id": "f", "params": {"min": 1.5}},
                {"type": "connect_inputs", "id": "c", "inputs": ["m"]}
            ], "results": ["m", "h"]}),
        ),
        (
            ClientMessage::Request(Request {
                id: 1,
                base_version: 0,
                edits: vec![],
                results: None,
            }),
            json!({"type": "request", "id": 1, "base_version": 0, "edits": [], "results": null}),
        ),
        (ClientMessage::GetGraph {}, json!({"type": "get_graph"})),
        (ClientMessage::GetStatus {}, json!({"type": "get_status"})),
        (
            ClientMessage::GetKey {
                key: "/control/graph/current".into(),
            },
            json!({"type": "get_key", "key": "/control/graph/current"}),
        ),
        (
            ClientMessage::Subscribe {
                results: vec!["a".into(), "b".into()],
            },
            json!({"type": "subscribe", "results": ["a", "b"]}),
        ),
        (
            ClientMessage::Unsubscribe {
                results: Some(vec!["a".into()]),
            },
            json!({"type": "unsubscribe", "results": ["a"]}),
        ),
        (ClientMessage::Unsubscribe { results: None }, json!({"type": "unsubscribe"})),
        (
            ClientMessage::Ping { nonce: Some(u64::MAX) },
            json!({"type": "ping", "nonce": u64::MAX}),
        ),
        (ClientMessage::Ping { nonce: None }, json!({"type": "ping"})),
    ]
}

fn server_examples() -> Vec<(ServerMessage, Value)> {
    vec![
        (
            ServerMessage::Welcome(Welcome {
                protocol: 1,
                server: "ami2".into(),
                graph_version: 3,
            }),
            json!({"type": "welcome", "protocol": 1, "server": "ami2", "graph_version": 3}),
        ),
        (
            ServerMessage::Refused(Refused {
                code: ErrorCode::ProtocolVersion,
                message: "no".into(),
            }),
            json!({"type": "refused", "code": "protocol_version", "message": "no"}),
        ),
        (
            ServerMessage::Accepted(Accepted { id: 9, version: 5 }),
            json!({"type": "accepted", "id": 9, "version": 5}),
        ),
        (
            ServerMessage::Rejected(Rejected {
                id: 9,
                version: 6,
                reasons: vec![
                    Reason::conflict(4, 6),
                    Reason::new(ErrorCode::InvalidGraph, Some("m".into()), "cycle"),
                ],
                total_reasons: None,
            }),
            json!({"type": "rejected", "id": 9, "version": 6, "reasons": [
                {"code": "conflict", "node": null, "message": "the request is based on version 4, the graph is at version 6"},
                {"code": "invalid_graph", "node": "m", "message": "cycle"}
            ]}),
        ),
        (
            ServerMessage::Rejected(Rejected {
                id: 9,
                version: 6,
                reasons: vec![Reason::new(ErrorCode::UnknownNode, Some("n0".into()), "edit 0: no node `n0`")],
                total_reasons: Some(30_000),
            }),
            json!({"type": "rejected", "id": 9, "version": 6, "reasons": [
                {"code": "unknown_node", "node": "n0", "message": "edit 0: no node `n0`"}
            ], "total_reasons": 30000}),
        ),
        (
            ServerMessage::Graph {
                version: 5,
                graph: json!({"nodes": [], "results": []}),
            },
            json!({"type": "graph", "version": 5, "graph": {"nodes": [], "results": []}}),
        ),
        (
            ServerMessage::Status {
                status: json!({"ok": true}),
            },
            json!({"type": "status", "status": {"ok": true}}),
        ),
        (
            ServerMessage::Value {
                key: "/k".into(),
                value: Some(json!([1, 2])),
            },
            json!({"type": "value", "key": "/k", "value": [1, 2]}),
        ),
        (
            ServerMessage::Value {
                key: "/k".into(),
                value: Some(Value::Null),
            },
            json!({"type": "value", "key": "/k", "value": null}),
        ),
        (
            ServerMessage::Value {
                key: "/k".into(),
                value: None,
            },
            json!({"type": "value", "key": "/k"}),
        ),
        (
            ServerMessage::Subscribed { results: vec!["a".into()] },
            json!({"type": "subscribed", "results": ["a"]}),
        ),
        (ServerMessage::Pong { nonce: Some(5) }, json!({"type": "pong", "nonce": 5})),
        (ServerMessage::Pong { nonce: None }, json!({"type": "pong"})),
        (
            ServerMessage::Bin(Bin {
                result: "r".into(),
                bin: 42,
                t_ns: 2_100_000_000,
                graph_version: 5,
                events: 50,
                value: json!({"mean": 1.25, "count": 50}),
            }),
            json!({"type": "bin", "result": "r", "bin": 42, "t_ns": 2_100_000_000u64, "graph_version": 5, "events": 50, "value": {"mean": 1.25, "count": 50}}),
        ),
        (
            ServerMessage::Dropped(Dropped {
                count: 17,
                too_large: None,
            }),
            json!({"type": "dropped", "count": 17}),
        ),
        (
            ServerMessage::Dropped(Dropped {
                count: 3,
                too_large: Some(protocol1::TooLarge {
                    count: 2,
                    result: "image".into(),
                    bytes: 1_236_954,
                    max: 1_048_576,
                }),
            }),
            json!({"type": "dropped", "count": 3, "too_large": {"count": 2, "result": "image", "bytes": 1_236_954, "max": 1_048_576}}),
        ),
        (
            ServerMessage::error(ErrorCode::BadJson, "oops"),
            json!({"type": "error", "code": "bad_json", "message": "oops"}),
        ),
    ]
}

#[test]
fn every_client_message_has_its_documented_json() {
    let examples = client_examples();
    let mut kinds: Vec<&str> = examples.iter().map(|(m, _)| m.kind()).collect();
    kinds.dedup();
    assert_eq!(kinds, ClientMessage::TYPES);
    for (msg, expected) in examples {
        assert_eq!(serde_json::to_value(&msg).unwrap(), expected, "{msg:?}");
        let text = serde_json::to_string(&msg).unwrap();
        assert_eq!(decode_message::<ClientMessage>(text.as_bytes()).unwrap(), msg);
        assert_eq!(serde_json::from_value::<ClientMessage>(expected).unwrap(), msg);
    }
}

#[test]
fn every_server_message_has_its_documented_json() {
    let examples = server_examples();
    let mut kinds: Vec<&str> = examples.iter().map(|(m, _)| m.kind()).collect();
    kinds.dedup();
    assert_eq!(kinds, ServerMessage::TYPES);
    for (msg, expected) in examples {
        assert_eq!(serde_json::to_value(&msg).unwrap(), expected, "{msg:?}");
        let text = serde_json::to_string(&msg).unwrap();
        assert_eq!(decode_message::<ServerMessage>(text.as_bytes()).unwrap(), msg);
        assert_eq!(serde_json::from_value::<ServerMessage>(expected).unwrap(), msg);
    }
}

#[test]
fn optional_members_may_be_omitted_or_null() {
    let req: ClientMessage = serde_json::from_str(r#"{"type":"request","id":1,"base_version":2,"results":["a"]}"#).unwrap();
    assert_eq!(
        req,
        ClientMessage::Request(Request {
            id: 1,
            base_version: 2,
            edits: vec![],
            results: Some(vec!["a".into()])
        })
    );
    let hello: ClientMessage = serde_json::from_str(r#"{"type":"hello","protocol":1,"client":"c","role":"subscriber"}"#).unwrap();
    assert_eq!(hello, ClientMessage::Hello(Hello::new("c", Role::Subscriber)));
    let un: ClientMessage = serde_json::from_str(r#"{"type":"unsubscribe","results":null}"#).unwrap();
    assert_eq!(un, ClientMessage::Unsubscribe { results: None });
    let reason: Reason = serde_json::from_str(r#"{"code":"conflict","message":"m"}"#).unwrap();
    assert_eq!(reason, Reason::new(ErrorCode::Conflict, None, "m"));
    // Error codes are also accepted as numbers.
    let err: ServerMessage = serde_json::from_str(r#"{"type":"error","code":21,"message":"m"}"#).unwrap();
    assert_eq!(err, ServerMessage::error(ErrorCode::Conflict, "m"));
    // `edits` does not accept null.
    assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"request","id":1,"base_version":2,"edits":null}"#).is_err());
}

#[test]
fn strictness() {
    let bad = |s: &str| decode_message::<ClientMessage>(s.as_bytes()).unwrap_err();
    for text in [
        r#"{"type":"get_key","key":"/k","extra":1}"#,
        r#"{"type":"get_key","key":"/k","key":"/j"}"#,
        r#"{"type":"get_key","type":"get_key","key":"/k"}"#,
        r#"{"type":"request","id":1.0,"base_version":2,"results":[]}"#,
        r#"{"type":"request","id":-1,"base_version":2,"results":[]}"#,
        r#"{"type":"request","id":18446744073709551616,"base_version":2,"results":[]}"#,
        r#"{"type":"request","id":1,"base_version":2,"edits":[{"type":"add_node","node":{"id":"a","op":"b","parms":{}}}]}"#,
        r#"{"type":"ping"} {"type":"ping"}"#,
        r#"{"type":"ping"}x"#,
        r#"{"TYPE":"ping"}"#,
        r#""ping""#,
    ] {
        assert_eq!(bad(text).code(), ErrorCode::BadJson, "{text}");
    }
    assert!(decode_message::<ClientMessage>(b" \n{\"type\":\"ping\"}\n ").is_ok());
    assert_eq!(bad(r#"{"type":"Ping"}"#).code(), ErrorCode::UnknownMessage);
    assert_eq!(
        bad(r#"{"type":"welcome","protocol":1,"server":"s","graph_version":1}"#).code(),
        ErrorCode::UnknownMessage
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn client_messages_round_trip(msg in arb_client_message()) {
        let text = serde_json::to_string(&msg).unwrap();
        prop_assert_eq!(decode_message::<ClientMessage>(text.as_bytes()).unwrap(), msg.clone());
        let frame = encode_frame(&msg, MAX_FRAME_BYTES).unwrap();
        prop_assert_eq!(&frame[..4], &((frame.len() - 4) as u32).to_be_bytes()[..]);
        prop_assert_eq!(decode_frames::<ClientMessage>(&frame, MAX_FRAME_BYTES).unwrap(), vec![msg]);
    }

    #[test]
    fn server_messages_round_trip(msg in arb_server_message()) {
        let text = serde_json::to_string(&msg).unwrap();
        prop_assert_eq!(decode_message::<ServerMessage>(text.as_bytes()).unwrap(), msg.clone());
        let pretty = serde_json::to_string_pretty(&msg).unwrap();
        prop_assert_eq!(decode_message::<ServerMessage>(pretty.as_bytes()).unwrap(), msg.clone());
        let frame = encode_frame(&msg, MAX_FRAME_BYTES).unwrap();
        prop_assert_eq!(decode_frames::<ServerMessage>(&frame, MAX_FRAME_BYTES).unwrap(), vec![msg]);
    }

    #[test]
    fn several_frames_back_to_back(msgs in proptest::collection::vec(arb_client_message(), 0..8)) {
        let bytes: Vec<u8> = msgs.iter().flat_map(|m| encode_frame(m, MAX_FRAME_BYTES).unwrap()).collect();
        prop_assert_eq!(protocol1::decode_client_frame(&bytes, MAX_FRAME_BYTES).unwrap(), msgs);
    }
}
