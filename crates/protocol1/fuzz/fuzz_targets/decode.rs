//! Fuzz target: arbitrary bytes as what a client sends. `decode_client_frame` must never panic,
//! must fail only with the framing/JSON errors, and whatever it decodes must re-encode to frames
//! that decode to the same messages.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol1::{decode_client_frame, encode_frame, ProtocolError};

fuzz_target!(|data: &[u8]| {
    // A small cap for one input length in five, to exercise FrameTooLarge on valid prefixes.
    let max = if data.len() % 5 == 0 { 64 } else { protocol1::MAX_FRAME_BYTES };
    match decode_client_frame(data, max) {
        Ok(msgs) => {
            for msg in msgs {
                let frame = encode_frame(&msg, usize::MAX).expect("a decoded message encodes");
                assert_eq!(decode_client_frame(&frame, usize::MAX).expect("re-decodes"), vec![msg]);
            }
        }
        Err(err) => assert!(
            matches!(
                err,
                ProtocolError::FrameTooLarge { .. }
                    | ProtocolError::BadJson { .. }
                    | ProtocolError::UnknownMessage { .. }
                    | ProtocolError::UnexpectedEof
            ),
            "{err:?}"
        ),
    }
});
