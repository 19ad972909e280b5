//! Proptest strategies for every message, shared by the integration tests.

#![allow(dead_code)]

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use protocol1::{
    Accepted, Bin, ClientMessage, Dropped, Edit, ErrorCode, Hello, NodeDoc, Reason, Refused, Rejected, Request, Role, ServerMessage,
    Welcome,
};
use serde_json::{Map, Value};

/// Any JSON value, up to a few levels deep. Floats are multiples of 1/8 (exact in decimal) so
/// that text round trips are exact.
pub fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1_000_000i64..1_000_000).prop_map(|i| Value::from(i as f64 / 8.0)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec(("[a-z_]{0,6}", inner), 0..4).prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

pub fn arb_params() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        vec(("[a-z_]{1,6}", arb_json()), 0..3).prop_map(|kv| Value::Object(kv.into_iter().collect()))
    ]
}

pub fn arb_name() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z_][a-z0-9_]{0,8}", ".{0,6}"]
}

pub fn arb_code() -> impl Strategy<Value = ErrorCode> {
    proptest::sample::select(ErrorCode::ALL)
}

pub fn arb_node() -> impl Strategy<Value = NodeDoc> {
    (arb_name(), arb_name(), vec(arb_name(), 0..3), arb_params()).prop_map(|(id, op, inputs, params)| NodeDoc { id, op, inputs, params })
}

pub fn arb_edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        arb_node().prop_map(|node| Edit::AddNode { node }),
        arb_name().prop_map(|id| Edit::RemoveNode { id }),
        arb_node().prop_map(|node| Edit::ReplaceNode { node }),
        (arb_name(), arb_params()).prop_map(|(id, params)| Edit::SetParams { id, params }),
        (arb_name(), vec(arb_name(), 0..3)).prop_map(|(id, inputs)| Edit::ConnectInputs { id, inputs }),
    ]
}

pub fn arb_request() -> impl Strategy<Value = Request> {
    (any::<u64>(), any::<u64>(), vec(arb_edit(), 0..4), option::of(vec(arb_name(), 0..4))).prop_map(|(id, base_version, edits, results)| {
        Request {
            id,
            base_version,
            edits,
            results,
        }
    })
}

pub fn arb_role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Editor), Just(Role::Subscriber)]
}

pub fn arb_client_message() -> impl Strategy<Value = ClientMessage> {
    prop_oneof![
        (any::<u32>(), ".{0,10}", option::of(".{0,10}"), arb_role()).prop_map(|(protocol, client, token, role)| ClientMessage::Hello(
            Hello {
                protocol,
                client,
                token,
                role
            }
        )),
        arb_request().prop_map(ClientMessage::Request),
        Just(ClientMessage::GetGraph {}),
        Just(ClientMessage::GetStatus {}),
        ".{0,20}".prop_map(|key| ClientMessage::GetKey { key }),
        vec(arb_name(), 0..4).prop_map(|results| ClientMessage::Subscribe { results }),
        option::of(vec(arb_name(), 0..4)).prop_map(|results| ClientMessage::Unsubscribe { results }),
        option::of(any::<u64>()).prop_map(|nonce| ClientMessage::Ping { nonce }),
    ]
}

pub fn arb_reason() -> impl Strategy<Value = Reason> {
    (arb_code(), option::of(arb_name()), ".{0,16}").prop_map(|(code, node, message)| Reason { code, node, message })
}

pub fn arb_bin() -> impl Strategy<Value = Bin> {
    (arb_name(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), arb_json()).prop_map(
        |(result, bin, t_ns, graph_version, events, value)| Bin {
            result,
            bin,
            t_ns,
            graph_version,
            events,
            value,
        },
    )
}

pub fn arb_server_message() -> impl Strategy<Value = ServerMessage> {
    prop_oneof![
        (any::<u32>(), ".{0,10}", any::<u64>()).prop_map(|(protocol, server, graph_version)| ServerMessage::Welcome(Welcome {
            protocol,
            server,
            graph_version
        })),
        (arb_code(), ".{0,16}").prop_map(|(code, message)| ServerMessage::Refused(Refused { code, message })),
        (any::<u64>(), any::<u64>()).prop_map(|(id, version)| ServerMessage::Accepted(Accepted { id, version })),
        (any::<u64>(), any::<u64>(), vec(arb_reason(), 1..4), option::of(any::<u64>())).prop_map(
            |(id, version, reasons, total_reasons)| {
                ServerMessage::Rejected(Rejected {
                    id,
                    version,
                    reasons,
                    total_reasons,
                })
            }
        ),
        (any::<u64>(), arb_json()).prop_map(|(version, graph)| ServerMessage::Graph { version, graph }),
        arb_json().prop_map(|status| ServerMessage::Status { status }),
        (".{0,20}", option::of(arb_json())).prop_map(|(key, value)| ServerMessage::Value { key, value }),
        vec(arb_name(), 0..4).prop_map(|results| ServerMessage::Subscribed { results }),
        option::of(any::<u64>()).prop_map(|nonce| ServerMessage::Pong { nonce }),
        arb_bin().prop_map(ServerMessage::Bin),
        (
            any::<u64>(),
            proptest::option::of((any::<u64>(), "[a-z_]{1,12}", any::<u64>(), any::<u64>()))
        )
            .prop_map(|(count, too_large)| {
                ServerMessage::Dropped(Dropped {
                    count,
                    too_large: too_large.map(|(count, result, bytes, max)| protocol1::TooLarge { count, result, bytes, max }),
                })
            }),
        (arb_code(), ".{0,16}").prop_map(|(code, message)| ServerMessage::Error { code, message }),
    ]
}

/// A length-prefixed frame around `payload`.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}
