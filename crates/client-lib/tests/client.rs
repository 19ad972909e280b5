//! The client against a scripted protocol peer on a real loopback socket: answers matched to
//! calls while bins arrive in between, subscriptions renewed after a reconnect, refusals, calls
//! cut by a lost connection, the blocking API. (The client against the real service is tested
//! in the workspace's tests/service.rs.)

use std::time::Duration;

use client_lib::{BlockingClient, ClientError, ClientOptions, Event};
use protocol1::{Bin, ClientMessage, Connection, ErrorCode, HandshakePolicy, ProtocolError, Role, ServerMessage};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

async fn listener() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    (listener, addr)
}

async fn accept(listener: &TcpListener, policy: &HandshakePolicy) -> Result<Connection<TcpStream>, ProtocolError> {
    let (stream, _) = listener.accept().await.unwrap();
    let mut conn = Connection::new(stream);
    conn.server_handshake(policy, "script", 7).await?;
    Ok(conn)
}

async fn expect(conn: &mut Connection<TcpStream>) -> ClientMessage {
    conn.recv_timeout(Duration::from_secs(10)).await.unwrap().expect("a message")
}

fn bin(n: u64) -> ServerMessage {
    ServerMessage::Bin(Bin {
        result: "a".into(),
        bin: n,
        t_ns: n * 50_000_000,
        graph_version: 7,
        events: 3,
        value: json!({"mean": 1.0}),
    })
}

fn options() -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    }
}

#[tokio::test]
async fn answers_match_calls_and_subscriptions_are_renewed_after_a_reconnect() {
    let (listener, addr) = listener().await;
    let server = tokio::spawn(async move {
        let policy = HandshakePolicy::open();
        let mut conn = accept(&listener, &policy).await.unwrap();
        let ClientMessage::Subscribe { mut results } = expect(&mut conn).await else {
            panic!()
        };
        assert_eq!(results, vec!["b", "a"]);
        results.sort(); // `subscribed` lists the names sorted
        conn.send(&bin(1)).await.unwrap();
        conn.send(&ServerMessage::Subscribed { results }).await.unwrap();
        let ClientMessage::Ping { nonce } = expect(&mut conn).await else {
            panic!()
        };
        conn.send(&bin(2)).await.unwrap();
        conn.send(&ServerMessage::Pong { nonce }).await.unwrap();
        drop(conn); // the connection breaks

        let mut conn = accept(&listener, &policy).await.unwrap();
        // First thing on the new connection: the same subscriptions.
        let ClientMessage::Subscribe { results } = expect(&mut conn).await else {
            panic!()
        };
        assert_eq!(results, vec!["a", "b"]);
        conn.send(&ServerMessage::Subscribed { results }).await.unwrap();
        conn.send(&bin(5)).await.unwrap();
        let ClientMessage::Ping { nonce } = expect(&mut conn).await else {
            panic!()
        };
        conn.send(&ServerMessage::Pong { nonce }).await.unwrap();
        assert!(conn.recv::<ClientMessage>().await.unwrap().is_none(), "the client closes cleanly");
    });

    let mut client = client_lib::Client::connect(&addr, options()).await.unwrap();
    assert_eq!(client.welcome_version(), 7);
    assert_eq!(client.subscribe(&["b", "a"]).await.unwrap(), vec!["a", "b"]);
    client.ping().await.unwrap();
    let mut events = Vec::new();
    while events.len() < 4 {
        events.push(client.next_event_timeout(Duration::from_secs(10)).await.unwrap().unwrap());
    }
    let bins: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            Event::Bin(b) => Some(b.bin),
            _ => None,
        })
        .collect();
    assert_eq!(bins, vec![1, 2, 5]);
    let reconnected = events.iter().position(|e| *e == Event::Reconnected).expect("a Reconnected event");
    assert_eq!(reconnected, 2, "{events:?}");
    // Calls work on the new connection (retry once: a call racing the reconnect may fail).
    if client.ping().await.is_err() {
        client.ping().await.unwrap();
    }
    drop(client);
    server.await.unwrap();
}

#[tokio::test]
async fn a_refused_handshake_is_an_error() {
    let (listener, addr) = listener().await;
    let server = tokio::spawn(async move {
        let err = accept(&listener, &HandshakePolicy::with_token("right")).await.err().unwrap();
        assert_eq!(err.code(), ErrorCode::Unauthorized);
    });
    let options = ClientOptions {
        token: Some("wrong".into()),
        ..options()
    };
    match client_lib::Client::connect(&addr, options).await {
        Err(ClientError::Connect {
            source: ProtocolError::Handshake { code, .. },
            ..
        }) => assert_eq!(code, ErrorCode::Unauthorized),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("connected with a wrong token"),
    }
    server.await.unwrap();
}

#[tokio::test]
async fn a_call_cut_by_a_lost_connection_fails_and_errors_are_typed() {
    let (listener, addr) = listener().await;
    let server = tokio::spawn(async move {
        let policy = HandshakePolicy::open();
        let mut conn = accept(&listener, &policy).await.unwrap();
        let ClientMessage::GetKey { .. } = expect(&mut conn).await else {
            panic!()
        };
        conn.send(&ServerMessage::error(ErrorCode::Forbidden, "not that key"))
            .await
            .unwrap();
        let ClientMessage::GetGraph {} = expect(&mut conn).await else {
            panic!()
        };
        // Close without answering.
    });
    let options = ClientOptions {
        reconnect: false,
        ..options()
    };
    let client = client_lib::Client::connect(&addr, options).await.unwrap();
    match client.get_key("/secret").await {
        Err(ClientError::Server { code, message }) => {
            assert_eq!(code, ErrorCode::Forbidden);
            assert_eq!(message, "not that key");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(client.graph().await, Err(ClientError::Disconnected)));
    assert!(matches!(client.ping().await, Err(ClientError::Closed)));
    server.await.unwrap();
}

#[test]
fn blocking_client() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (listener, addr) = runtime.block_on(listener());
    let server = runtime.spawn(async move {
        let mut conn = accept(&listener, &HandshakePolicy::open()).await.unwrap();
        let ClientMessage::GetStatus {} = expect(&mut conn).await else {
            panic!()
        };
        conn.send(&bin(3)).await.unwrap();
        conn.send(&ServerMessage::Status {
            status: json!({"graph_version": 7}),
        })
        .await
        .unwrap();
    });
    let mut client = BlockingClient::connect(
        &addr,
        ClientOptions {
            role: Role::Subscriber,
            reconnect: false,
            ..options()
        },
    )
    .unwrap();
    assert_eq!(client.status().unwrap(), json!({"graph_version": 7}));
    match client.next_event(Duration::from_secs(10)).unwrap() {
        Some(Event::Bin(b)) => assert_eq!(b.bin, 3),
        other => panic!("{other:?}"),
    }
    runtime.block_on(server).unwrap();
}
