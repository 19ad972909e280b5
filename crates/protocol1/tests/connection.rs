//! `Connection` over `tokio::io::duplex` (framing edge cases) and over real TCP on loopback
//! (handshake, requests and answers, conflicts, subscriptions, misbehaving clients).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::frame;
use protocol1::{
    check_base_version, Accepted, Bin, ClientMessage, Connection, ErrorCode, HandshakePolicy, Hello, ProtocolError, Request, Role,
    ServerMessage, SubscriberQueue, MAX_FRAME_BYTES,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

fn pair() -> (Connection<DuplexStream>, Connection<DuplexStream>) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    (Connection::new(a), Connection::new(b))
}

/// A connection reading from a raw byte writer.
fn raw() -> (DuplexStream, Connection<DuplexStream>) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    (a, Connection::new(b))
}

fn ping(n: u64) -> ClientMessage {
    ClientMessage::Ping { nonce: Some(n) }
}

#[tokio::test]
async fn several_messages_back_to_back_then_clean_eof() {
    let (mut client, mut server) = pair();
    for i in 0..5 {
        client.send(&ping(i)).await.unwrap();
    }
    client.send(&ClientMessage::GetGraph {}).await.unwrap();
    client.close().await.unwrap();
    drop(client);
    for i in 0..5 {
        assert_eq!(server.recv::<ClientMessage>().await.unwrap(), Some(ping(i)));
    }
    assert_eq!(server.recv::<ClientMessage>().await.unwrap(), Some(ClientMessage::GetGraph {}));
    assert_eq!(server.recv::<ClientMessage>().await.unwrap(), None);
    assert_eq!(server.recv::<ClientMessage>().await.unwrap(), None);
}

#[tokio::test]
async fn frames_in_one_write_and_split_across_writes() {
    let (mut w, mut conn) = raw();
    let mut bytes = Vec::new();
    for i in 0..3 {
        bytes.extend(frame(serde_json::to_string(&ping(i)).unwrap().as_bytes()));
    }
    // All at once, then byte by byte.
    w.write_all(&bytes).await.unwrap();
    for i in 0..3 {
        assert_eq!(conn.recv::<ClientMessage>().await.unwrap(), Some(ping(i)));
    }
    let task = tokio::spawn(async move {
        for b in bytes {
            w.write_all(&[b]).await.unwrap();
            tokio::task::yield_now().await;
        }
    });
    for i in 0..3 {
        assert_eq!(conn.recv::<ClientMessage>().await.unwrap(), Some(ping(i)));
    }
    task.await.unwrap();
    assert_eq!(conn.recv::<ClientMessage>().await.unwrap(), None);
}

#[tokio::test]
async fn oversized_frame_is_refused_by_its_prefix() {
    let (mut w, mut conn) = raw();
    // Only the prefix (2 MiB announced) and a few bytes: the payload is never waited for.
    w.write_all(&(2u32 << 20).to_be_bytes()).await.unwrap();
    w.write_all(b"{\"type\"").await.unwrap();
    match conn.recv::<ClientMessage>().await {
        Err(ProtocolError::FrameTooLarge { len, max }) => {
            assert_eq!(len, 2 << 20);
            assert_eq!(max, MAX_FRAME_BYTES);
        }
        other => panic!("{other:?}"),
    }
    // The stream cannot be resynchronised: later reads fail too.
    let err = conn.recv::<ClientMessage>().await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::BadFrame);
    assert!(err.is_fatal());
}

#[tokio::test]
async fn frame_at_the_cap_passes_one_over_does_not() {
    let cap = 64;
    let (a, b) = tokio::io::duplex(4096);
    let mut tx = Connection::with_max_frame_length(a, cap);
    let mut rx = Connection::with_max_frame_length(b, cap);
    let key = |n: usize| ClientMessage::GetKey { key: "k".repeat(n) };
    let overhead = serde_json::to_vec(&key(0)).unwrap().len();
    tx.send(&key(cap - overhead)).await.unwrap();
    assert_eq!(rx.recv::<ClientMessage>().await.unwrap(), Some(key(cap - overhead)));
    // Over the cap: refused before anything is written.
    match tx.send(&key(cap - overhead + 1)).await {
        Err(ProtocolError::FrameTooLarge { len, max }) => assert_eq!((len, max), (cap as u64 + 1, cap)),
        other => panic!("{other:?}"),
    }
    tx.send(&ping(1)).await.unwrap();
    assert_eq!(rx.recv::<ClientMessage>().await.unwrap(), Some(ping(1)));
    // A peer with a larger cap sending a frame over ours.
    let (mut w, r) = tokio::io::duplex(4096);
    let mut rx = Connection::with_max_frame_length(r, cap);
    w.write_all(&frame(&[b' '; 65])).await.unwrap();
    assert!(matches!(
        rx.recv::<ClientMessage>().await,
        Err(ProtocolError::FrameTooLarge { len: 65, max: 64 })
    ));
}

#[tokio::test]
async fn garbage_json_is_bad_json_and_the_connection_goes_on() {
    let (mut w, mut conn) = raw();
    for payload in [
        &b"not json"[..],
        b"",
        b"{\"type\":",
        b"\xff\xfe\x00",
        b"[1,2,3]",
        b"{\"type\":\"get_key\"}",
    ] {
        w.write_all(&frame(payload)).await.unwrap();
        let err = conn.recv::<ClientMessage>().await.unwrap_err();
        assert!(matches!(err, ProtocolError::BadJson { .. }), "{payload:?}: {err:?}");
        assert_eq!(err.code(), ErrorCode::BadJson);
        assert!(!err.is_fatal());
    }
    w.write_all(&frame(br#"{"type":"self_destruct"}"#)).await.unwrap();
    match conn.recv::<ClientMessage>().await {
        Err(ProtocolError::UnknownMessage { kind }) => assert_eq!(kind, "self_destruct"),
        other => panic!("{other:?}"),
    }
    w.write_all(&frame(br#"{"type":"ping","nonce":3}"#)).await.unwrap();
    assert_eq!(conn.recv::<ClientMessage>().await.unwrap(), Some(ping(3)));
}

#[tokio::test]
async fn peer_disconnecting_mid_frame_is_unexpected_eof() {
    // Inside the payload, inside the prefix, and right after the prefix.
    for bytes in [
        [&100u32.to_be_bytes()[..], b"{\"type\":\"pi"].concat(),
        vec![0, 0],
        5u32.to_be_bytes().to_vec(),
    ] {
        let (mut w, mut conn) = raw();
        w.write_all(&frame(br#"{"type":"ping"}"#)).await.unwrap();
        w.write_all(&bytes).await.unwrap();
        drop(w);
        assert_eq!(
            conn.recv::<ClientMessage>().await.unwrap(),
            Some(ClientMessage::Ping { nonce: None })
        );
        let err = conn.recv::<ClientMessage>().await.unwrap_err();
        assert!(matches!(err, ProtocolError::UnexpectedEof), "{bytes:?}: {err:?}");
        assert_eq!(err.code(), ErrorCode::UnexpectedEof);
    }
}

#[tokio::test]
async fn recv_is_cancel_safe() {
    let (mut w, mut conn) = raw();
    let bytes = frame(br#"{"type":"ping","nonce":9}"#);
    w.write_all(&bytes[..7]).await.unwrap();
    match conn.recv_timeout::<ClientMessage>(Duration::from_millis(20)).await {
        Err(err @ ProtocolError::Timeout { .. }) => assert_eq!(err.code(), ErrorCode::IdleTimeout),
        other => panic!("{other:?}"),
    }
    w.write_all(&bytes[7..]).await.unwrap();
    assert_eq!(
        conn.recv_timeout::<ClientMessage>(Duration::from_secs(5)).await.unwrap(),
        Some(ping(9))
    );
}

#[tokio::test]
async fn split_halves_work_concurrently_and_reunite() {
    let (client, server) = pair();
    let (mut srx, mut stx) = server.split();
    let pusher = tokio::spawn(async move {
        for b in 0..100u64 {
            let bin = Bin {
                result: "r".into(),
                bin: b,
                t_ns: b * 50_000_000,
                graph_version: 1,
                events: 3,
                value: json!({"mean": 1.0}),
            };
            stx.send(&ServerMessage::Bin(bin)).await.unwrap();
        }
        stx
    });
    let (mut crx, mut ctx) = client.split();
    ctx.send(&ping(1)).await.unwrap();
    assert_eq!(srx.recv::<ClientMessage>().await.unwrap(), Some(ping(1)));
    for b in 0..100u64 {
        match crx.recv::<ServerMessage>().await.unwrap() {
            Some(ServerMessage::Bin(bin)) => assert_eq!(bin.bin, b),
            other => panic!("{other:?}"),
        }
    }
    let stx = pusher.await.unwrap();
    let mut server = srx.reunite(stx).unwrap();
    let mut client = crx.reunite(ctx).unwrap();
    server.send(&ServerMessage::Pong { nonce: None }).await.unwrap();
    assert_eq!(
        client.recv::<ServerMessage>().await.unwrap(),
        Some(ServerMessage::Pong { nonce: None })
    );
}

// ---------------------------------------------------------------------------------------------
// A small server over TCP, as the service will run it.

struct Graph {
    version: u64,
}

async fn serve(listener: TcpListener, policy: HandshakePolicy, graph: Arc<Mutex<Graph>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { return };
        let (policy, graph) = (policy.clone(), graph.clone());
        tokio::spawn(async move {
            let _ = handle(Connection::new(stream), &policy, &graph).await;
        });
    }
}

async fn handle(mut conn: Connection<TcpStream>, policy: &HandshakePolicy, graph: &Mutex<Graph>) -> Result<(), ProtocolError> {
    let version = graph.lock().await.version;
    let hello = conn.server_handshake(policy, "test-server", version).await?;
    let mut subscriptions: Vec<String> = Vec::new();
    loop {
        let msg = match conn.recv::<ClientMessage>().await {
            Ok(Some(msg)) => msg,
            Ok(None) => return Ok(()),
            Err(err) => {
                // A misbehaving client: tell it why (when the stream allows) and disconnect it.
                if !matches!(err, ProtocolError::Io(_) | ProtocolError::UnexpectedEof) {
                    let _ = conn.send(&ServerMessage::error(err.code(), err.to_string())).await;
                }
                return Err(err);
            }
        };
        let answer = match msg {
            ClientMessage::Request(req) if !hello.role.allows(&ClientMessage::Request(req.clone())) => {
                ServerMessage::Rejected(protocol1::Rejected::new(
                    req.id,
                    graph.lock().await.version,
                    vec![protocol1::Reason::new(ErrorCode::Forbidden, None, "subscribers cannot edit")],
                ))
            }
            ClientMessage::Request(req) => {
                let mut g = graph.lock().await;
                match req
                    .validate()
                    .map_err(|reasons| protocol1::Rejected::new(req.id, g.version, reasons))
                {
                    Err(rejected) => ServerMessage::Rejected(rejected),
                    Ok(()) => match check_base_version(&req, g.version) {
                        Err(rejected) => ServerMessage::Rejected(rejected),
                        Ok(()) => {
                            g.version += 1;
                            ServerMessage::Accepted(Accepted {
                                id: req.id,
                                version: g.version,
                            })
                        }
                    },
                }
            }
            ClientMessage::GetGraph {} => ServerMessage::Graph {
                version: graph.lock().await.version,
                graph: json!({"nodes": [], "results": []}),
            },
            ClientMessage::GetStatus {} => ServerMessage::Status {
                status: json!({"client": hello.client}),
            },
            ClientMessage::GetKey { key } => ServerMessage::Value { key, value: None },
            ClientMessage::Subscribe { results } => {
                subscriptions.extend(results);
                subscriptions.sort();
                subscriptions.dedup();
                // Pretend three bins were published, through the bounded queue (capacity 2).
                conn.send(&ServerMessage::Subscribed {
                    results: subscriptions.clone(),
                })
                .await?;
                let mut queue = SubscriberQueue::new(2, 8);
                for b in 0..3 {
                    let bin = Bin {
                        result: subscriptions[0].clone(),
                        bin: b,
                        t_ns: b,
                        graph_version: 1,
                        events: 1,
                        value: json!(b),
                    };
                    queue.push(ServerMessage::Bin(bin))?;
                }
                while let Some(msg) = queue.pop() {
                    conn.send(&msg).await?;
                }
                continue;
            }
            ClientMessage::Unsubscribe { .. } => {
                subscriptions.clear();
                ServerMessage::Subscribed { results: vec![] }
            }
            ClientMessage::Ping { nonce } => ServerMessage::Pong { nonce },
            ClientMessage::Hello(_) => {
                conn.send(&ServerMessage::error(ErrorCode::UnexpectedMessage, "hello twice"))
                    .await?;
                return Ok(());
            }
        };
        conn.send(&answer).await?;
    }
}

async fn start(policy: HandshakePolicy, version: u64) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, policy, Arc::new(Mutex::new(Graph { version }))));
    addr
}

async fn connect(addr: std::net::SocketAddr, hello: Hello) -> (Connection<TcpStream>, Result<protocol1::Welcome, ProtocolError>) {
    let mut conn = Connection::new(TcpStream::connect(addr).await.unwrap());
    let welcome = conn.client_handshake(&hello).await;
    (conn, welcome)
}

fn request(id: u64, base_version: u64) -> ClientMessage {
    ClientMessage::Request(Request {
        id,
        base_version,
        edits: vec![],
        results: Some(vec!["roi_mean".into()]),
    })
}

#[tokio::test]
async fn tcp_handshake_request_and_answers() {
    let addr = start(HandshakePolicy::open(), 12).await;
    let (mut conn, welcome) = connect(addr, Hello::new("tester", Role::Editor)).await;
    let welcome = welcome.unwrap();
    assert_eq!(
        (welcome.protocol, welcome.server.as_str(), welcome.graph_version),
        (1, "test-server", 12)
    );

    conn.send(&request(1, 12)).await.unwrap();
    assert_eq!(
        conn.recv::<ServerMessage>().await.unwrap(),
        Some(ServerMessage::Accepted(Accepted { id: 1, version: 13 }))
    );
    // Based on the old version: conflict.
    conn.send(&request(2, 12)).await.unwrap();
    match conn.recv::<ServerMessage>().await.unwrap() {
        Some(ServerMessage::Rejected(r)) => {
            assert_eq!((r.id, r.version), (2, 13));
            assert_eq!(r.reasons.len(), 1);
            assert_eq!(r.reasons[0].code, ErrorCode::Conflict);
        }
        other => panic!("{other:?}"),
    }
    // Structurally invalid.
    conn.send(&ClientMessage::Request(Request {
        id: 3,
        base_version: 13,
        edits: vec![],
        results: None,
    }))
    .await
    .unwrap();
    match conn.recv::<ServerMessage>().await.unwrap() {
        Some(ServerMessage::Rejected(r)) => assert_eq!(r.reasons[0].code, ErrorCode::InvalidRequest),
        other => panic!("{other:?}"),
    }
    // Pipelined read-only queries, answered in order.
    conn.send(&ClientMessage::GetGraph {}).await.unwrap();
    conn.send(&ClientMessage::GetStatus {}).await.unwrap();
    conn.send(&ClientMessage::GetKey {
        key: "/results/x/000000000001".into(),
    })
    .await
    .unwrap();
    conn.send(&ping(7)).await.unwrap();
    assert!(matches!(
        conn.recv::<ServerMessage>().await.unwrap(),
        Some(ServerMessage::Graph { version: 13, .. })
    ));
    assert_eq!(
        conn.recv::<ServerMessage>().await.unwrap(),
        Some(ServerMessage::Status {
            status: json!({"client": "tester"})
        })
    );
    assert!(matches!(
        conn.recv::<ServerMessage>().await.unwrap(),
        Some(ServerMessage::Value { value: None, .. })
    ));
    assert_eq!(
        conn.recv::<ServerMessage>().await.unwrap(),
        Some(ServerMessage::Pong { nonce: Some(7) })
    );
    conn.close().await.unwrap();
}

#[tokio::test]
async fn tcp_concurrent_editors_conflict() {
    let addr = start(HandshakePolicy::open(), 5).await;
    let mut tasks = Vec::new();
    for id in 0..8 {
        tasks.push(tokio::spawn(async move {
            let (mut conn, welcome) = connect(addr, Hello::new(format!("editor{id}"), Role::Editor)).await;
            let base = welcome.unwrap().graph_version;
            assert_eq!(base, 5);
            conn.send(&request(id, base)).await.unwrap();
            conn.recv::<ServerMessage>().await.unwrap().unwrap()
        }));
    }
    let mut accepted = 0;
    for task in tasks {
        match task.await.unwrap() {
            ServerMessage::Accepted(a) => {
                assert_eq!(a.version, 6);
                accepted += 1;
            }
            ServerMessage::Rejected(r) => assert_eq!(r.reasons[0].code, ErrorCode::Conflict),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(accepted, 1);
}

#[tokio::test]
async fn tcp_handshake_refusals() {
    let addr = start(HandshakePolicy::with_token("s3cret"), 1).await;
    let (_, refused) = connect(addr, Hello::new("t", Role::Editor)).await;
    assert!(
        matches!(
            refused,
            Err(ProtocolError::Handshake {
                code: ErrorCode::Unauthorized,
                ..
            })
        ),
        "{refused:?}"
    );
    let (_, refused) = connect(addr, Hello::new("t", Role::Editor).with_token("guess")).await;
    assert!(
        matches!(
            refused,
            Err(ProtocolError::Handshake {
                code: ErrorCode::Unauthorized,
                ..
            })
        ),
        "{refused:?}"
    );
    let (_, refused) = connect(
        addr,
        Hello {
            protocol: 99,
            ..Hello::new("t", Role::Editor).with_token("s3cret")
        },
    )
    .await;
    assert!(
        matches!(
            refused,
            Err(ProtocolError::Handshake {
                code: ErrorCode::ProtocolVersion,
                ..
            })
        ),
        "{refused:?}"
    );
    let (_, welcome) = connect(addr, Hello::new("t", Role::Editor).with_token("s3cret")).await;
    assert_eq!(welcome.unwrap().graph_version, 1);

    // Not a hello first: refused, then closed.
    let mut conn = Connection::new(TcpStream::connect(addr).await.unwrap());
    conn.send(&ping(1)).await.unwrap();
    match conn.recv::<ServerMessage>().await.unwrap() {
        Some(ServerMessage::Refused(r)) => assert_eq!(r.code, ErrorCode::UnexpectedMessage),
        other => panic!("{other:?}"),
    }
    assert_eq!(conn.recv::<ServerMessage>().await.unwrap(), None);

    // Garbage first: refused with bad_json.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&frame(b"hello?")).await.unwrap();
    let mut conn = Connection::new(stream);
    match conn.recv::<ServerMessage>().await.unwrap() {
        Some(ServerMessage::Refused(r)) => assert_eq!(r.code, ErrorCode::BadJson),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn handshake_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut conn = Connection::new(stream);
        conn.server_handshake(&HandshakePolicy::open().timeout(Duration::from_millis(50)), "s", 0)
            .await
    });
    let mut conn = Connection::new(TcpStream::connect(addr).await.unwrap());
    match conn.recv::<ServerMessage>().await.unwrap() {
        Some(ServerMessage::Refused(r)) => assert_eq!(r.code, ErrorCode::IdleTimeout),
        other => panic!("{other:?}"),
    }
    assert!(matches!(server.await.unwrap(), Err(ProtocolError::Timeout { after_ms: 50 })));
}

#[tokio::test]
async fn tcp_subscriber_role_bins_and_dropped() {
    let addr = start(HandshakePolicy::open(), 3).await;
    let (mut conn, welcome) = connect(addr, Hello::new("viewer", Role::Subscriber)).await;
    welcome.unwrap();
    conn.send(&request(1, 3)).await.unwrap();
    match conn.recv::<ServerMessage>().await.unwrap() {
        Some(ServerMessage::Rejected(r)) => assert_eq!(r.reasons[0].code, ErrorCode::Forbidden),
        other => panic!("{other:?}"),
    }
    conn.send(&ClientMessage::Subscribe {
        results: vec!["roi_mean".into(), "hist".into(), "roi_mean".into()],
    })
    .await
    .unwrap();
    assert_eq!(
        conn.recv::<ServerMessage>().await.unwrap(),
        Some(ServerMessage::Subscribed {
            results: vec!["hist".into(), "roi_mean".into()]
        })
    );
    assert_eq!(
        conn.recv::<ServerMessage>().await.unwrap(),
        Some(ServerMessage::Dropped(protocol1::Dropped { count: 1, too_large: None }))
    );
    for b in 1..3 {
        match conn.recv::<ServerMessage>().await.unwrap() {
            Some(ServerMessage::Bin(bin)) => assert_eq!((bin.result.as_str(), bin.bin), ("hist", b)),
            other => panic!("{other:?}"),
        }
    }
    conn.send(&ClientMessage::Unsubscribe { results: None }).await.unwrap();
    assert_eq!(
        conn.recv::<ServerMessage>().await.unwrap(),
        Some(ServerMessage::Subscribed { results: vec![] })
    );
}

#[tokio::test]
async fn a_misbehaving_client_is_disconnected_without_affecting_others() {
    let addr = start(HandshakePolicy::open(), 0).await;
    let (mut good, welcome) = connect(addr, Hello::new("good", Role::Editor)).await;
    welcome.unwrap();
    for (i, bad_bytes) in [
        frame(b"{{{{"),
        (8u32 << 20).to_be_bytes().to_vec(),
        frame(br#"{"type":"format_disk"}"#),
    ]
    .into_iter()
    .enumerate()
    {
        let (bad, welcome) = connect(addr, Hello::new("bad", Role::Editor)).await;
        welcome.unwrap();
        let mut stream = bad.into_inner();
        stream.write_all(&bad_bytes).await.unwrap();
        let mut bad = Connection::new(stream);
        match bad.recv::<ServerMessage>().await.unwrap() {
            Some(ServerMessage::Error { code, .. }) => {
                assert_eq!(code, [ErrorCode::BadJson, ErrorCode::FrameTooLarge, ErrorCode::UnknownMessage][i])
            }
            other => panic!("{other:?}"),
        }
        // Closed by the server.
        let mut stream = bad.into_inner();
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
            .await
            .unwrap();
        assert!(n.is_err() || rest.is_empty(), "{n:?} {rest:?}");
        // The good client goes on.
        good.send(&ping(i as u64)).await.unwrap();
        assert_eq!(
            good.recv::<ServerMessage>().await.unwrap(),
            Some(ServerMessage::Pong { nonce: Some(i as u64) })
        );
    }
    // A second hello is an unexpected message.
    good.send(&ClientMessage::Hello(Hello::new("again", Role::Editor))).await.unwrap();
    assert!(matches!(
        good.recv::<ServerMessage>().await.unwrap(),
        Some(ServerMessage::Error {
            code: ErrorCode::UnexpectedMessage,
            ..
        })
    ));
}
