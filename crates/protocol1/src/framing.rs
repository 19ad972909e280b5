//! Framing: a 4-byte big-endian length, then that many bytes of JSON. [`FrameCodec`] wraps
//! tokio-util's `LengthDelimitedCodec` with a hard cap and typed errors; [`Connection`] sends
//! and receives typed messages over any `AsyncRead + AsyncWrite`; [`decode_client_frame`] is the
//! pure decoder used for fuzzing.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Decoder, Encoder, Framed, LengthDelimitedCodec, LengthDelimitedCodecError};

use crate::error::{truncate, ErrorCode, ProtocolError};
use crate::handshake::{HandshakePolicy, Hello, Refused, Welcome, PROTOCOL_VERSION};
use crate::message::{ClientMessage, ServerMessage};

/// Default cap on a frame's payload (the bytes after the length prefix): 1 MiB.
pub const MAX_FRAME_BYTES: usize = 1 << 20;

/// Size of the length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// The largest cap a 4-byte length prefix can express.
const MAX_CAP: usize = u32::MAX as usize;

/// Frames of `[length: u32 big-endian][length bytes of payload]`, `length <= max_frame_length`.
///
/// Decoding rejects a frame by its length prefix alone, before reading or reserving space for
/// its payload ([`ProtocolError::FrameTooLarge`]); a stream that ends inside a frame gives
/// [`ProtocolError::UnexpectedEof`]. Encoding refuses payloads over the cap.
#[derive(Debug)]
pub struct FrameCodec {
    inner: LengthDelimitedCodec,
    max: usize,
    mid_frame: bool,
}

impl FrameCodec {
    /// A codec with this cap on payloads (clamped to `u32::MAX`).
    pub fn new(max_frame_length: usize) -> Self {
        let max = max_frame_length.min(MAX_CAP);
        let inner = LengthDelimitedCodec::builder()
            .length_field_offset(0)
            .length_field_length(LENGTH_PREFIX_BYTES)
            .length_adjustment(0)
            .num_skip(LENGTH_PREFIX_BYTES)
            .big_endian()
            .max_frame_length(max)
            .new_codec();
        FrameCodec {
            inner,
            max,
            mid_frame: false,
        }
    }

    /// The cap on payloads.
    pub fn max_frame_length(&self) -> usize {
        self.max
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(MAX_FRAME_BYTES)
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, ProtocolError> {
        let before = src.len();
        match self.inner.decode(src) {
            Ok(Some(frame)) => {
                self.mid_frame = false;
                Ok(Some(frame))
            }
            Ok(None) => {
                // The inner codec consumes the prefix once it has it: from then on, we are
                // inside a frame even if the buffer is empty.
                if src.len() < before {
                    self.mid_frame = true;
                }
                Ok(None)
            }
            Err(err) if err.get_ref().is_some_and(|inner| inner.is::<LengthDelimitedCodecError>()) => {
                // The prefix is still at the front of the buffer (the codec checks before
                // advancing); nothing was reserved for the payload.
                let len = src
                    .get(..LENGTH_PREFIX_BYTES)
                    .map_or(0, |p| u64::from(u32::from_be_bytes([p[0], p[1], p[2], p[3]])));
                Err(ProtocolError::FrameTooLarge { len, max: self.max })
            }
            Err(err) => Err(ProtocolError::BadFrame { reason: err.to_string() }),
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, ProtocolError> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None if buf.is_empty() && !self.mid_frame => Ok(None),
            None => Err(ProtocolError::UnexpectedEof),
        }
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = ProtocolError;

    fn encode(&mut self, payload: Bytes, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        if payload.len() > self.max {
            return Err(ProtocolError::FrameTooLarge {
                len: payload.len() as u64,
                max: self.max,
            });
        }
        self.inner
            .encode(payload, dst)
            .map_err(|e| ProtocolError::BadFrame { reason: e.to_string() })
    }
}

/// A message as a frame payload (JSON), refused when longer than `max`.
pub fn encode_message<T: Serialize + ?Sized>(msg: &T, max: usize) -> Result<Bytes, ProtocolError> {
    let payload = serde_json::to_vec(msg).map_err(|e| ProtocolError::BadJson {
        reason: truncate(&e.to_string(), 256),
    })?;
    let max = max.min(MAX_CAP);
    if payload.len() > max {
        return Err(ProtocolError::FrameTooLarge {
            len: payload.len() as u64,
            max,
        });
    }
    Ok(Bytes::from(payload))
}

/// A message as a whole frame: the 4-byte big-endian length, then the JSON payload.
pub fn encode_frame<T: Serialize + ?Sized>(msg: &T, max: usize) -> Result<Vec<u8>, ProtocolError> {
    let payload = encode_message(msg, max)?;
    let mut frame = Vec::with_capacity(LENGTH_PREFIX_BYTES + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// A frame payload as a message: `BadJson` when it is not the message's JSON, `UnknownMessage`
/// when it is a JSON object whose `"type"` names no message.
pub fn decode_message<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ProtocolError> {
    serde_json::from_slice(payload).map_err(|err| classify_json_error(payload, &err))
}

fn classify_json_error(payload: &[u8], err: &serde_json::Error) -> ProtocolError {
    let reason = err.to_string();
    if err.is_data() {
        if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(payload) {
            if let Some(serde_json::Value::String(kind)) = map.get("type") {
                if reason.starts_with(&format!("unknown variant `{kind}`")) {
                    return ProtocolError::UnknownMessage { kind: truncate(kind, 64) };
                }
            }
        }
    }
    ProtocolError::BadJson {
        reason: truncate(&reason, 256),
    }
}

/// Splits `bytes` into frames (cap `max`) and decodes each as `T`. Trailing bytes that do not
/// make a whole frame are `UnexpectedEof`; the first error stops decoding.
pub fn decode_frames<T: DeserializeOwned>(bytes: &[u8], max: usize) -> Result<Vec<T>, ProtocolError> {
    let mut codec = FrameCodec::new(max);
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(frame) = codec.decode_eof(&mut buf)? {
        out.push(decode_message(&frame)?);
    }
    Ok(out)
}

/// [`decode_frames`] for client messages: what a server does with the bytes a client sends.
/// Never panics, whatever the input.
pub fn decode_client_frame(bytes: &[u8], max: usize) -> Result<Vec<ClientMessage>, ProtocolError> {
    decode_frames(bytes, max)
}

type FrameStream<S> = Framed<S, FrameCodec>;

async fn next_frame<St>(stream: &mut St, broken: &mut bool) -> Result<Option<BytesMut>, ProtocolError>
where
    St: Stream<Item = Result<BytesMut, ProtocolError>> + Unpin,
{
    if *broken {
        return Err(ProtocolError::BadFrame {
            reason: "the connection is unusable after an earlier framing error".into(),
        });
    }
    match stream.next().await {
        None => Ok(None),
        Some(Ok(frame)) => Ok(Some(frame)),
        Some(Err(err)) => {
            *broken = true;
            Err(err)
        }
    }
}

async fn next_message<T, St>(stream: &mut St, broken: &mut bool) -> Result<Option<T>, ProtocolError>
where
    T: DeserializeOwned,
    St: Stream<Item = Result<BytesMut, ProtocolError>> + Unpin,
{
    match next_frame(stream, broken).await? {
        None => Ok(None),
        Some(frame) => decode_message(&frame).map(Some),
    }
}

async fn with_timeout<F, T>(timeout: Duration, fut: F) -> Result<T, ProtocolError>
where
    F: std::future::Future<Output = Result<T, ProtocolError>>,
{
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result,
        Err(_) => Err(ProtocolError::Timeout {
            after_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        }),
    }
}

/// Typed messages over a byte stream (TCP, `tokio::io::duplex`, ...): JSON payloads in
/// length-prefixed frames.
///
/// `recv` is cancel-safe (a partly received frame stays buffered), so it can be used in
/// `tokio::select!` and with timeouts; `send` is not. After a framing error (`FrameTooLarge`,
/// `BadFrame`, `UnexpectedEof`, `Io`) every later `recv` fails; after `BadJson` or
/// `UnknownMessage` the connection can still be used.
#[derive(Debug)]
pub struct Connection<S> {
    framed: FrameStream<S>,
    broken: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// A connection with the default cap ([`MAX_FRAME_BYTES`]).
    pub fn new(io: S) -> Self {
        Connection::with_max_frame_length(io, MAX_FRAME_BYTES)
    }

    /// A connection with another cap on frames, both ways.
    pub fn with_max_frame_length(io: S, max: usize) -> Self {
        Connection {
            framed: Framed::new(io, FrameCodec::new(max)),
            broken: false,
        }
    }

    /// The cap on frames.
    pub fn max_frame_length(&self) -> usize {
        self.framed.codec().max_frame_length()
    }

    /// The transport.
    pub fn get_ref(&self) -> &S {
        self.framed.get_ref()
    }

    /// The transport (bytes already read but not yet decoded are lost).
    pub fn into_inner(self) -> S {
        self.framed.into_inner()
    }

    /// Sends one message (and flushes). A message whose JSON exceeds the cap is refused with
    /// `FrameTooLarge` before anything is written.
    pub async fn send(&mut self, msg: &(impl Serialize + ?Sized)) -> Result<(), ProtocolError> {
        let payload = encode_message(msg, self.max_frame_length())?;
        self.send_frame(payload).await
    }

    /// Sends one raw payload as a frame (and flushes).
    pub async fn send_frame(&mut self, payload: Bytes) -> Result<(), ProtocolError> {
        self.framed.send(payload).await
    }

    /// Receives one message: `Ok(None)` when the peer closed the connection cleanly (between
    /// frames).
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ProtocolError> {
        next_message(&mut self.framed, &mut self.broken).await
    }

    /// [`recv`](Self::recv), failing with `Timeout` when nothing arrives within `timeout`.
    pub async fn recv_timeout<T: DeserializeOwned>(&mut self, timeout: Duration) -> Result<Option<T>, ProtocolError> {
        with_timeout(timeout, self.recv()).await
    }

    /// Receives one raw frame payload.
    pub async fn recv_frame(&mut self) -> Result<Option<BytesMut>, ProtocolError> {
        next_frame(&mut self.framed, &mut self.broken).await
    }

    /// Flushes and shuts down the writing side.
    pub async fn close(&mut self) -> Result<(), ProtocolError> {
        SinkExt::<Bytes>::close(&mut self.framed).await
    }

    /// Client side of the handshake: sends `hello`, returns the server's `welcome`, or
    /// `Handshake { code, message }` when refused.
    pub async fn client_handshake(&mut self, hello: &Hello) -> Result<Welcome, ProtocolError> {
        self.send(&ClientMessage::Hello(hello.clone())).await?;
        match self.recv::<ServerMessage>().await? {
            Some(ServerMessage::Welcome(welcome)) if welcome.protocol == hello.protocol => Ok(welcome),
            Some(ServerMessage::Welcome(welcome)) => Err(ProtocolError::Handshake {
                code: ErrorCode::ProtocolVersion,
                message: format!(
                    "asked for protocol {}, the server answered with {}",
                    hello.protocol, welcome.protocol
                ),
            }),
            Some(ServerMessage::Refused(Refused { code, message })) | Some(ServerMessage::Error { code, message }) => {
                Err(ProtocolError::Handshake { code, message })
            }
            Some(other) => Err(ProtocolError::UnexpectedMessage {
                expected: "welcome",
                got: other.kind().to_string(),
            }),
            None => Err(ProtocolError::Closed),
        }
    }

    /// Server side of the handshake: waits (at most the policy's timeout) for `hello`, checks
    /// it against `policy`, answers `welcome` (with `server` and `graph_version`) and returns
    /// the `hello`; or answers `refused` (when the connection still allows it) and returns the
    /// error. The caller closes the connection on error.
    pub async fn server_handshake(&mut self, policy: &HandshakePolicy, server: &str, graph_version: u64) -> Result<Hello, ProtocolError> {
        self.server_handshake_admitting(policy, server, graph_version, |_| Ok(())).await
    }

    /// [`server_handshake`](Self::server_handshake), where a `hello` the policy accepts must also
    /// be admitted by `admit` (e.g. a free place among the server's connections); what it
    /// refuses is answered in place of the welcome.
    pub async fn server_handshake_admitting(
        &mut self,
        policy: &HandshakePolicy,
        server: &str,
        graph_version: u64,
        admit: impl FnOnce(&Hello) -> Result<(), Refused>,
    ) -> Result<Hello, ProtocolError> {
        let first = match self.recv_timeout::<ClientMessage>(policy.handshake_timeout()).await {
            Ok(Some(msg)) => msg,
            Ok(None) => return Err(ProtocolError::Closed),
            Err(err) => {
                if !matches!(err, ProtocolError::Io(_) | ProtocolError::UnexpectedEof) {
                    let _ = self
                        .send(&ServerMessage::Refused(Refused {
                            code: err.code(),
                            message: err.to_string(),
                        }))
                        .await;
                }
                return Err(err);
            }
        };
        let refusal = match first {
            ClientMessage::Hello(hello) => match policy.check(&hello).and_then(|()| admit(&hello)) {
                Ok(()) => {
                    let welcome = Welcome {
                        protocol: PROTOCOL_VERSION,
                        server: server.to_string(),
                        graph_version,
                    };
                    self.send(&ServerMessage::Welcome(welcome)).await?;
                    return Ok(hello);
                }
                Err(refused) => refused,
            },
            other => Refused {
                code: ErrorCode::UnexpectedMessage,
                message: format!("expected hello, got {}", other.kind()),
            },
        };
        let _ = self.send(&ServerMessage::Refused(refusal.clone())).await;
        Err(ProtocolError::Handshake {
            code: refusal.code,
            message: refusal.message,
        })
    }

    /// Splits into a receiving and a sending half, usable from two tasks (a server pushing bins
    /// while reading requests).
    pub fn split(self) -> (RecvHalf<S>, SendHalf<S>) {
        let max = self.max_frame_length();
        let (sink, stream) = self.framed.split();
        (
            RecvHalf {
                stream,
                broken: self.broken,
            },
            SendHalf { sink, max },
        )
    }
}

/// The receiving half of a [`Connection`].
#[derive(Debug)]
pub struct RecvHalf<S> {
    stream: SplitStream<FrameStream<S>>,
    broken: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> RecvHalf<S> {
    /// As [`Connection::recv`].
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ProtocolError> {
        next_message(&mut self.stream, &mut self.broken).await
    }

    /// As [`Connection::recv_timeout`].
    pub async fn recv_timeout<T: DeserializeOwned>(&mut self, timeout: Duration) -> Result<Option<T>, ProtocolError> {
        with_timeout(timeout, self.recv()).await
    }

    /// As [`Connection::recv_frame`].
    pub async fn recv_frame(&mut self) -> Result<Option<BytesMut>, ProtocolError> {
        next_frame(&mut self.stream, &mut self.broken).await
    }

    /// Joins the two halves again (`None` if they come from different connections).
    pub fn reunite(self, send: SendHalf<S>) -> Option<Connection<S>> {
        let framed = self.stream.reunite(send.sink).ok()?;
        Some(Connection {
            framed,
            broken: self.broken,
        })
    }
}

/// The sending half of a [`Connection`].
#[derive(Debug)]
pub struct SendHalf<S> {
    sink: SplitSink<FrameStream<S>, Bytes>,
    max: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> SendHalf<S> {
    /// As [`Connection::send`].
    pub async fn send(&mut self, msg: &(impl Serialize + ?Sized)) -> Result<(), ProtocolError> {
        let payload = encode_message(msg, self.max)?;
        self.sink.send(payload).await
    }

    /// As [`Connection::send_frame`].
    pub async fn send_frame(&mut self, payload: Bytes) -> Result<(), ProtocolError> {
        self.sink.send(payload).await
    }

    /// As [`Connection::close`].
    pub async fn close(&mut self) -> Result<(), ProtocolError> {
        self.sink.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio_util::codec::FramedRead;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut v = (payload.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn codec_splits_frames_and_tracks_partial_ones() {
        let mut codec = FrameCodec::new(16);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&frame(b"abc"));
        buf.extend_from_slice(&frame(b""));
        buf.extend_from_slice(&frame(b"0123456789abcdef"));
        buf.extend_from_slice(&[0, 0]);
        assert_eq!(&codec.decode(&mut buf).unwrap().unwrap()[..], b"abc");
        assert_eq!(&codec.decode(&mut buf).unwrap().unwrap()[..], b"");
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap().len(), 16);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(matches!(codec.decode_eof(&mut buf), Err(ProtocolError::UnexpectedEof)));

        // A prefix alone, then EOF: the codec consumed it, the buffer is empty, still mid-frame.
        let mut codec = FrameCodec::new(16);
        let mut buf = BytesMut::from(&[0u8, 0, 0, 5][..]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(buf.is_empty());
        assert!(matches!(codec.decode_eof(&mut buf), Err(ProtocolError::UnexpectedEof)));

        let mut codec = FrameCodec::new(16);
        assert!(codec.decode_eof(&mut BytesMut::new()).unwrap().is_none());
    }

    #[test]
    fn codec_refuses_by_length_prefix() {
        let mut codec = FrameCodec::new(16);
        let mut buf = BytesMut::from(&[0u8, 0, 0, 17][..]);
        match codec.decode(&mut buf) {
            Err(ProtocolError::FrameTooLarge { len: 17, max: 16 }) => {}
            other => panic!("{other:?}"),
        }
        let mut out = BytesMut::new();
        assert!(matches!(
            codec.encode(Bytes::from_static(&[0; 17]), &mut out),
            Err(ProtocolError::FrameTooLarge { len: 17, max: 16 })
        ));
        codec.encode(Bytes::from_static(&[1; 16]), &mut out).unwrap();
        assert_eq!(&out[..4], &[0, 0, 0, 16]);
    }

    #[tokio::test]
    async fn nothing_is_reserved_for_an_oversized_frame() {
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut reader = FramedRead::new(rx, FrameCodec::new(MAX_FRAME_BYTES));
        // Announce 1 GiB; send no payload and keep the stream open.
        tx.write_all(&(1u32 << 30).to_be_bytes()).await.unwrap();
        match reader.next().await {
            Some(Err(ProtocolError::FrameTooLarge { len, max })) => {
                assert_eq!(len, 1 << 30);
                assert_eq!(max, MAX_FRAME_BYTES);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            reader.read_buffer().capacity() < 64 * 1024,
            "capacity {}",
            reader.read_buffer().capacity()
        );
    }

    #[test]
    fn encode_frame_matches_the_codec() {
        let bytes = encode_frame(&ClientMessage::GetGraph {}, MAX_FRAME_BYTES).unwrap();
        assert_eq!(&bytes[..4], &(bytes.len() as u32 - 4).to_be_bytes());
        assert_eq!(&bytes[4..], br#"{"type":"get_graph"}"#);
        assert_eq!(
            decode_client_frame(&bytes, MAX_FRAME_BYTES).unwrap(),
            vec![ClientMessage::GetGraph {}]
        );
        assert!(matches!(
            encode_frame(&ClientMessage::GetGraph {}, 5),
            Err(ProtocolError::FrameTooLarge { len: 20, max: 5 })
        ));
    }

    #[test]
    fn decode_message_classifies_errors() {
        let bad = |p: &[u8]| decode_message::<ClientMessage>(p).unwrap_err();
        assert!(matches!(bad(b"{"), ProtocolError::BadJson { .. }));
        assert!(matches!(bad(b""), ProtocolError::BadJson { .. }));
        assert!(matches!(bad(b"\xff\xfe"), ProtocolError::BadJson { .. }));
        assert!(matches!(bad(b"[1,2]"), ProtocolError::BadJson { .. }));
        assert!(matches!(bad(br#"{"type": 3}"#), ProtocolError::BadJson { .. }));
        assert!(matches!(bad(br#"{"type": "get_key"}"#), ProtocolError::BadJson { .. }));
        match bad(br#"{"type": "launch_rockets", "now": true}"#) {
            ProtocolError::UnknownMessage { kind } => assert_eq!(kind, "launch_rockets"),
            other => panic!("{other:?}"),
        }
        // An unknown nested variant is a bad message, not an unknown one.
        match bad(br#"{"type": "request", "id": 1, "base_version": 0, "edits": [{"type": "launch_rockets"}]}"#) {
            ProtocolError::BadJson { reason } => assert!(reason.contains("launch_rockets"), "{reason}"),
            other => panic!("{other:?}"),
        }
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(bad(deep.as_bytes()), ProtocolError::BadJson { .. }));
        let long = format!(r#"{{"type": "get_key", "key": 1, "junk": "{}"}}"#, "x".repeat(10_000));
        match bad(long.as_bytes()) {
            ProtocolError::BadJson { reason } => assert!(reason.len() < 400),
            other => panic!("{other:?}"),
        }
    }
}
