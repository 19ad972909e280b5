//! Property-based fuzzing of the decoders (the stable-toolchain counterpart of `fuzz/`):
//! arbitrary bytes, arbitrary payloads in valid frames, JSON-like text, messages with random
//! fields, and mutated valid frames are thrown at `decode_client_frame` and at a real
//! `Connection` over `tokio::io::duplex`. Neither may panic; every failure is a typed error of
//! the expected kinds; and both agree.

mod common;

use common::{arb_client_message, arb_json, frame};
use proptest::collection::vec;
use proptest::prelude::*;
use protocol1::{decode_client_frame, encode_frame, ClientMessage, Connection, ErrorCode, ProtocolError, MAX_FRAME_BYTES};
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;

/// The only errors decoding client bytes may produce.
fn expected_error(err: &ProtocolError) -> bool {
    matches!(
        err,
        ProtocolError::FrameTooLarge { .. }
            | ProtocolError::BadJson { .. }
            | ProtocolError::UnknownMessage { .. }
            | ProtocolError::UnexpectedEof
    )
}

/// Decodes `bytes` and checks the outcome; returns the messages or the error code.
fn check_decode(bytes: &[u8], max: usize) -> Result<Vec<ClientMessage>, ErrorCode> {
    match decode_client_frame(bytes, max) {
        Ok(msgs) => {
            // Whatever decoded re-encodes and decodes to itself.
            for msg in &msgs {
                let again = encode_frame(msg, usize::MAX).unwrap();
                assert_eq!(decode_client_frame(&again, usize::MAX).unwrap(), vec![msg.clone()]);
            }
            Ok(msgs)
        }
        Err(err) => {
            assert!(expected_error(&err), "unexpected error kind: {err:?}");
            if let ProtocolError::FrameTooLarge { len, max: m } = err {
                assert!(len > m as u64 && m == max.min(u32::MAX as usize));
            }
            Err(err.code())
        }
    }
}

/// Feeds `bytes` to a `Connection` (then EOF) and reads until EOF or a fatal error. Returns the
/// messages received before the first error, and that error's code.
fn via_connection(bytes: &[u8], max: usize) -> (Vec<ClientMessage>, Option<ErrorCode>) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (mut w, r) = tokio::io::duplex(1024);
        let mut conn = Connection::with_max_frame_length(r, max);
        let data = bytes.to_vec();
        let writer = tokio::spawn(async move {
            // The reader may stop early (fatal error): write errors are fine then.
            let _ = w.write_all(&data).await;
            let _ = w.shutdown().await;
        });
        let mut msgs = Vec::new();
        let mut first_error = None;
        for _ in 0..=bytes.len() + 1 {
            match conn.recv::<ClientMessage>().await {
                Ok(Some(msg)) => {
                    if first_error.is_none() {
                        msgs.push(msg);
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    assert!(expected_error(&err), "unexpected error kind: {err:?}");
                    first_error.get_or_insert(err.code());
                    if err.is_fatal() {
                        // A later read fails again (never panics, never yields messages).
                        assert!(conn.recv::<ClientMessage>().await.is_err());
                        break;
                    }
                }
            }
        }
        drop(conn);
        writer.await.unwrap();
        (msgs, first_error)
    })
}

fn check_both(bytes: &[u8], max: usize) {
    let decoded = check_decode(bytes, max);
    let (msgs, first_error) = via_connection(bytes, max);
    match decoded {
        Ok(all) => {
            assert_eq!(first_error, None);
            assert_eq!(msgs, all);
        }
        Err(code) => assert_eq!(first_error, Some(code)),
    }
}

/// A JSON object with a known (or random) `type` and random members: exercises every
/// message's field checks.
fn arb_message_like() -> impl Strategy<Value = Vec<u8>> {
    let kinds: Vec<&'static str> = ClientMessage::TYPES.iter().copied().chain(["", "Ping", "welcome"]).collect();
    let field = prop_oneof![
        Just("id".to_string()),
        Just("base_version".to_string()),
        Just("edits".to_string()),
        Just("results".to_string()),
        Just("key".to_string()),
        Just("nonce".to_string()),
        Just("protocol".to_string()),
        Just("client".to_string()),
        Just("token".to_string()),
        Just("role".to_string()),
        "[a-z]{1,5}",
    ];
    (proptest::sample::select(kinds), vec((field, arb_json()), 0..5)).prop_map(|(kind, fields)| {
        let mut map: Map<String, Value> = fields.into_iter().collect();
        map.insert("type".into(), Value::String(kind.into()));
        serde_json::to_vec(&Value::Object(map)).unwrap()
    })
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
    Prefix(usize, u32),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(i, x)| Mutation::Flip(i, x)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Delete),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), prop_oneof![any::<u32>(), 0..64u32]).prop_map(|(i, n)| Mutation::Prefix(i, n)),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let n = bytes.len();
        match *m {
            Mutation::Flip(i, x) if n > 0 => bytes[i % n] ^= x,
            Mutation::Insert(i, b) => bytes.insert(i % (n + 1), b),
            Mutation::Delete(i) if n > 0 => {
                bytes.remove(i % n);
            }
            Mutation::Truncate(i) => bytes.truncate(i % (n + 1)),
            Mutation::Prefix(i, len) if n >= 4 => {
                let at = i % (n - 3);
                bytes[at..at + 4].copy_from_slice(&len.to_be_bytes());
            }
            _ => {}
        }
    }
    bytes
}

fn arb_max() -> impl Strategy<Value = usize> {
    prop_oneof![Just(MAX_FRAME_BYTES), 0..512usize, Just(usize::MAX)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn arbitrary_bytes(bytes in vec(any::<u8>(), 0..600), max in arb_max()) {
        check_decode(&bytes, max).ok();
    }

    #[test]
    fn arbitrary_payloads_in_valid_frames(payloads in vec(vec(any::<u8>(), 0..200), 1..4)) {
        let bytes: Vec<u8> = payloads.iter().flat_map(|p| frame(p)).collect();
        check_decode(&bytes, MAX_FRAME_BYTES).ok();
    }

    #[test]
    fn json_like_text(text in r#"[\[\]{}":,. 0-9a-z_\-eE\\]{0,80}"#) {
        check_decode(&frame(text.as_bytes()), MAX_FRAME_BYTES).ok();
        let wrapped = format!(r#"{{"type":"request","id":1,"base_version":0,"edits":[{text}]}}"#);
        check_decode(&frame(wrapped.as_bytes()), MAX_FRAME_BYTES).ok();
    }

    #[test]
    fn messages_with_random_fields(payload in arb_message_like()) {
        check_decode(&frame(&payload), MAX_FRAME_BYTES).ok();
    }

    #[test]
    fn mutated_valid_frames(
        msgs in vec(arb_client_message(), 1..4),
        mutations in vec(arb_mutation(), 1..4),
        max in arb_max(),
    ) {
        let bytes: Vec<u8> = msgs.iter().flat_map(|m| encode_frame(m, MAX_FRAME_BYTES).unwrap()).collect();
        check_decode(&mutate(bytes, &mutations), max).ok();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn connection_agrees_with_decode_on_arbitrary_bytes(bytes in vec(any::<u8>(), 0..300), max in arb_max()) {
        check_both(&bytes, max);
    }

    #[test]
    fn connection_agrees_with_decode_on_mutated_frames(
        msgs in vec(arb_client_message(), 1..4),
        mutations in vec(arb_mutation(), 0..3),
        max in arb_max(),
    ) {
        let bytes: Vec<u8> = msgs.iter().flat_map(|m| encode_frame(m, MAX_FRAME_BYTES).unwrap()).collect();
        check_both(&mutate(bytes, &mutations), max);
    }
}

#[test]
fn hostile_inputs() {
    let deep = |open: &str, close: &str, n: usize| format!("{}{}", open.repeat(n), close.repeat(n)).into_bytes();
    for payload in [
        deep("[", "]", 50_000),
        deep("{\"a\":", "}", 50_000),
        format!(
            r#"{{"type":"request","id":1,"base_version":0,"edits":[{{"type":"set_params","id":"x","params":{}}}]}}"#,
            String::from_utf8(deep("[", "]", 10_000)).unwrap()
        )
        .into_bytes(),
        b"\"\\ud800\"".to_vec(),
        b"1e999999".to_vec(),
        b"-".to_vec(),
        vec![0; 1000],
    ] {
        check_both(&frame(&payload), MAX_FRAME_BYTES);
    }
    // Prefixes at every boundary.
    for len in [0u32, 1, 63, 64, 65, u32::MAX] {
        check_both(&len.to_be_bytes(), 64);
    }
}

/// Replays the seed corpus of the cargo-fuzz target (`fuzz/seeds`), and the corpus named by
/// `PROTOCOL1_FUZZ_CORPUS` when set (CI sets it to the corpus its fuzz run grew), through both
/// decoders with the target's caps.
#[test]
fn replays_the_fuzz_corpus() {
    let mut dirs = vec![std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds")];
    dirs.extend(std::env::var_os("PROTOCOL1_FUZZ_CORPUS").map(std::path::PathBuf::from));
    let mut replayed = 0;
    for dir in dirs {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let max = if bytes.len() % 5 == 0 { 64 } else { MAX_FRAME_BYTES };
            check_both(&bytes, max);
            replayed += 1;
        }
    }
    assert!(replayed >= 20, "only {replayed} inputs replayed");
}
