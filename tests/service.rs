//! The service over real sockets: `ami2 run` processes (real Legion runtime, real files) and
//! clients speaking the protocols through `client-lib` or raw bytes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use client_lib::{Answer, BlockingClient, ClientOptions, Event};
use common::service::{client, free_port, graph_node, subscriber, Service};
use common::{scratch, KillOnDrop};
use protocol1::{ClientMessage, Edit, ErrorCode, Hello, NodeDoc, Role, ServerMessage};
use serde_json::{json, Value};

mod common;

fn with_token(addr: &str, token: Option<&str>, role: Role) -> Result<BlockingClient, client_lib::ClientError> {
    let options = ClientOptions {
        token: token.map(str::to_string),
        role,
        reconnect: false,
        ..ClientOptions::default()
    };
    BlockingClient::connect(addr, options)
}

fn accepted(answer: Answer) -> u64 {
    match answer {
        Answer::Accepted(a) => a.version,
        Answer::Rejected(r) => panic!("rejected: {r:?}"),
    }
}

fn node_ids(graph: &Value) -> Vec<String> {
    graph["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_string())
        .collect()
}

fn strip_chart(id: &str) -> Edit {
    Edit::AddNode {
        node: NodeDoc::new(id, "strip_chart", &["energy"], Value::Null),
    }
}

/// Waits for a bin (skipping other events) for at most 30 s.
fn next_bin(client: &mut BlockingClient) -> protocol1::Bin {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(Event::Bin(bin))) = client.next_event(Duration::from_secs(1)) {
            return bin;
        }
    }
    panic!("no bin within 30 s");
}

#[test]
fn concurrent_editors_and_a_conflicting_edit() {
    let service = Service::start(&scratch("concurrent"), "127.0.0.1:0", &[]);
    let (base, _) = client(&service.addr).graph().unwrap();

    // Four editors, same base version, disjoint nodes: all accepted (rebased), one version each.
    let versions: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let addr = service.addr.clone();
                s.spawn(move || accepted(client(&addr).request(base, vec![strip_chart(&format!("chart{i}"))], None).unwrap()))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut sorted = versions.clone();
    sorted.sort();
    assert_eq!(sorted, vec![base + 1, base + 2, base + 3, base + 4], "{versions:?}");
    let (version, graph) = client(&service.addr).graph().unwrap();
    assert_eq!(version, base + 4);
    let ids = node_ids(&graph);
    assert!((0..4).all(|i| ids.contains(&format!("chart{i}"))), "{ids:?}");

    // Two editors change the same node from the same base: the second is a conflict naming it.
    let set = |threshold: f64| Edit::SetParams {
        id: "trace_peaks".into(),
        params: json!({ "threshold": threshold }),
    };
    let (a, b) = (client(&service.addr), client(&service.addr));
    let first = a.request(version, vec![set(0.7)], None).unwrap();
    assert_eq!(accepted(first), version + 1);
    match b.request(version, vec![set(0.9)], None).unwrap() {
        Answer::Rejected(r) => {
            assert_eq!(r.version, version + 1);
            assert_eq!(r.reasons.len(), 1, "{r:?}");
            assert_eq!(r.reasons[0].code, ErrorCode::Conflict);
            assert_eq!(r.reasons[0].node.as_deref(), Some("trace_peaks"));
        }
        other => panic!("{other:?}"),
    }
    // An invalid edit gets every reason; nothing changes.
    match b
        .request(
            version + 1,
            vec![Edit::RemoveNode { id: "nope".into() }, Edit::RemoveNode { id: "energy".into() }],
            None,
        )
        .unwrap()
    {
        Answer::Rejected(r) => {
            let codes: Vec<ErrorCode> = r.reasons.iter().map(|r| r.code).collect();
            assert_eq!(codes[0], ErrorCode::UnknownNode);
            assert!(codes[1..].iter().all(|c| *c == ErrorCode::InvalidGraph) && codes.len() > 1, "{r:?}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(b.graph().unwrap().0, version + 1);
    let status = b.status().unwrap();
    assert_eq!(status["server"]["requests_accepted"], json!(5));
    assert_eq!(status["server"]["requests_rejected"], json!(2));
}

/// Writes raw bytes on a fresh connection and returns what the server sent until it closed.
fn raw(addr: &str, hello_first: bool, bytes: &[u8], close_write: bool) -> Vec<ServerMessage> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    if hello_first {
        let hello = protocol1::encode_frame(&ClientMessage::Hello(Hello::new("raw", Role::Editor)), usize::MAX).unwrap();
        stream.write_all(&hello).unwrap();
    }
    stream.write_all(bytes).unwrap();
    if close_write {
        stream.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut received = Vec::new();
    let _ = stream.read_to_end(&mut received);
    // What arrived is whole frames.
    protocol1::decode_frames(&received, usize::MAX).expect("the server sends whole frames")
}

fn error_code(msgs: &[ServerMessage]) -> Option<ErrorCode> {
    msgs.iter().find_map(|m| match m {
        ServerMessage::Error { code, .. } | ServerMessage::Refused(protocol1::Refused { code, .. }) => Some(*code),
        _ => None,
    })
}

#[test]
fn misbehaving_clients_are_refused_while_others_carry_on() {
    let dir = scratch("misbehaving");
    std::fs::write(dir.join("token"), "s3cret\n").unwrap();
    let token_file = dir.join("token");
    let service = Service::start(
        &dir,
        "127.0.0.1:0",
        &["--token-file", token_file.to_str().unwrap(), "--idle-timeout", "2"],
    );
    let addr = service.addr.as_str();
    let options = ClientOptions {
        token: Some("s3cret".into()),
        role: Role::Subscriber,
        reconnect: false,
        keepalive: Duration::from_millis(300),
        ..ClientOptions::default()
    };
    let mut good = BlockingClient::connect(addr, options).unwrap();
    good.subscribe(&["energy_hist"]).unwrap();
    next_bin(&mut good);

    // The command line says why it was refused, first.
    std::fs::write(dir.join("wrong-token"), "wrong").unwrap();
    let wrong = ["--token-file", dir.join("wrong-token").to_str().unwrap()].map(str::to_string);
    for token_args in [&wrong[..], &[]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ami2"))
            .arg("status")
            .args(token_args)
            .env("AMI2_ADDR", addr)
            .env_remove("LD_LIBRARY_PATH")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let headline = stderr.lines().next().unwrap_or_default();
        assert!(!out.status.success() && headline.contains("unauthorized"), "{stderr}");
    }
    // Wrong or missing token: refused at the handshake.
    for token in [Some("wrong"), None] {
        match with_token(addr, token, Role::Editor) {
            Err(client_lib::ClientError::Connect {
                source: protocol1::ProtocolError::Handshake { code, .. },
                ..
            }) => assert_eq!(code, ErrorCode::Unauthorized),
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("a connection without the right token was accepted"),
        }
    }
    // Garbage instead of a frame: "GET " read as a length is far over the cap.
    let msgs = raw(addr, false, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false);
    assert_eq!(error_code(&msgs), Some(ErrorCode::FrameTooLarge), "{msgs:?}");
    // A valid frame of garbage.
    let mut frame = 9u32.to_be_bytes().to_vec();
    frame.extend_from_slice(b"\x00garbage\xff");
    assert_eq!(error_code(&raw(addr, false, &frame, false)), Some(ErrorCode::BadJson));
    // After a hello that is refused for lack of a token... the raw hello has no token.
    assert_eq!(error_code(&raw(addr, true, &[], false)), Some(ErrorCode::Unauthorized));
    // A frame over the cap (2 MiB announced) after a good handshake.
    let hello = protocol1::encode_frame(
        &ClientMessage::Hello(Hello::new("raw", Role::Editor).with_token("s3cret")),
        usize::MAX,
    )
    .unwrap();
    let mut big = hello.clone();
    big.extend_from_slice(&(2u32 << 20).to_be_bytes());
    big.extend_from_slice(&[b'x'; 1000]);
    let msgs = raw(addr, false, &big, false);
    assert!(matches!(msgs.first(), Some(ServerMessage::Welcome(_))), "{msgs:?}");
    assert_eq!(error_code(&msgs), Some(ErrorCode::FrameTooLarge), "{msgs:?}");
    // Disconnecting in the middle of a frame (prefix says 100 bytes, 10 come, then EOF).
    let mut partial = hello.clone();
    partial.extend_from_slice(&100u32.to_be_bytes());
    partial.extend_from_slice(&[b'{'; 10]);
    let msgs = raw(addr, false, &partial, true);
    assert!(matches!(msgs.first(), Some(ServerMessage::Welcome(_))), "{msgs:?}");
    // An unknown message type: a closing error.
    let mut unknown = hello.clone();
    let payload = br#"{"type": "launch_rockets"}"#;
    unknown.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    unknown.extend_from_slice(payload);
    assert_eq!(error_code(&raw(addr, false, &unknown, false)), Some(ErrorCode::UnknownMessage));
    // A connection that says nothing after its hello is closed after the idle timeout (2 s).
    let started = Instant::now();
    let msgs = raw(addr, false, &hello, false);
    assert!(matches!(msgs.first(), Some(ServerMessage::Welcome(_))), "{msgs:?}");
    assert_eq!(error_code(&msgs), Some(ErrorCode::IdleTimeout), "{msgs:?}");
    assert!(started.elapsed() >= Duration::from_secs(2));
    // A subscriber may not edit.
    let (version, _) = good.graph().unwrap();
    match good.request(version, vec![strip_chart("x")], None).unwrap() {
        Answer::Rejected(r) => assert_eq!(r.reasons[0].code, ErrorCode::Forbidden),
        other => panic!("{other:?}"),
    }

    // The well-behaved client carried on all along (its keepalive pings kept it past the idle
    // timeout).
    good.ping().unwrap();
    let before = next_bin(&mut good).bin;
    assert!(next_bin(&mut good).bin > before);
    let status = good.status().unwrap();
    assert_eq!(status["server"]["connections"], json!(1), "{status}");
    // The subscriber's edit is counted with the other rejections.
    assert_eq!(status["server"]["requests_rejected"], json!(1), "{status}");
}

#[test]
fn an_accepted_edit_survives_kill_9() {
    let dir = scratch("kill9");
    let mut service = Service::start(&dir, "127.0.0.1:0", &[]);
    let editor = client(&service.addr);
    let (version, _) = editor.graph().unwrap();
    let new_version = accepted(
        editor
            .request(
                version,
                vec![strip_chart("survivor")],
                Some(vec!["survivor".into(), "energy_hist".into()]),
            )
            .unwrap(),
    );
    service.kill(); // right after "accepted"
    drop(editor);

    let service = Service::start(&dir, "127.0.0.1:0", &[]);
    let (version, graph) = client(&service.addr).graph().unwrap();
    assert_eq!(version, new_version);
    assert!(node_ids(&graph).contains(&"survivor".to_string()), "{graph}");
    assert_eq!(graph["results"], json!(["survivor", "energy_hist"]));
    // And the workers run it: bins of the new result arrive.
    let mut watcher = client(&service.addr);
    watcher.subscribe(&["survivor"]).unwrap();
    let bin = next_bin(&mut watcher);
    assert_eq!(bin.result, "survivor");
    assert_eq!(bin.graph_version, new_version);
}

#[test]
fn a_subscriber_reconnects_and_subscribes_again_after_a_restart() {
    let dir = scratch("reconnect");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut service = Service::start(&dir, &listen, &[]);
    let mut watcher = subscriber(&service.addr, &["trace_peaks"]);
    next_bin(&mut watcher);
    service.kill();
    let _service = Service::start(&dir, &listen, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut reconnected = false;
    loop {
        assert!(Instant::now() < deadline, "no bin after the restart");
        match watcher.next_event(Duration::from_secs(1)) {
            Ok(Some(Event::Reconnected)) => reconnected = true,
            Ok(Some(Event::Bin(bin))) if reconnected => {
                assert_eq!(bin.result, "trace_peaks");
                break;
            }
            _ => {}
        }
    }
}

#[test]
fn a_slow_subscriber_loses_its_oldest_bins_and_slows_nobody() {
    let dir = scratch("slow");
    let service = Service::start(&dir, "127.0.0.1:0", &["--subscriber-queue", "4"]);
    let editor = client(&service.addr);
    // A result as large as an image (128x128 means, ~300 kB of JSON per bin) fills socket
    // buffers quickly.
    let (version, _) = editor.graph().unwrap();
    accepted(
        editor
            .request(version, vec![], Some(vec!["cspad".into(), "energy_hist".into()]))
            .unwrap(),
    );
    let mut stuck = TcpStream::connect(&service.addr).unwrap();
    let mut bytes = protocol1::encode_frame(&ClientMessage::Hello(Hello::new("stuck", Role::Subscriber)), usize::MAX).unwrap();
    bytes.extend(
        protocol1::encode_frame(
            &ClientMessage::Subscribe {
                results: vec!["cspad".into()],
            },
            usize::MAX,
        )
        .unwrap(),
    );
    stuck.write_all(&bytes).unwrap();
    // Not reading for a while; meanwhile another client is served promptly and bins flow.
    let mut watcher = client(&service.addr);
    watcher.subscribe(&["energy_hist"]).unwrap();
    let first = next_bin(&mut watcher).bin;
    // Bins go on being published past what the stuck client can hold (its queue, socket
    // buffers): the service drops its oldest ones, and serves the others meanwhile.
    let deadline = Instant::now() + Duration::from_secs(120);
    while editor.status().unwrap()["server"]["bins_dropped"].as_u64().unwrap() == 0 {
        assert!(Instant::now() < deadline, "the stuck client's bins were never dropped");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The other subscriber got later bins (it may have lost some too: its queue is as small).
    assert!(next_bin(&mut watcher).bin > first);
    // The stuck client, reading at last, is told what it lost.
    stuck.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut dropped = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 1 << 20];
    while dropped == 0 && Instant::now() < deadline {
        let n = stuck.read(&mut chunk).unwrap();
        assert!(n > 0, "closed");
        buf.extend_from_slice(&chunk[..n]);
        while buf.len() >= 4 {
            let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if buf.len() < 4 + len {
                break;
            }
            if let Ok(ServerMessage::Dropped(d)) = protocol1::decode_message::<ServerMessage>(&buf[4..4 + len]) {
                dropped = d.count;
            }
            buf.drain(..4 + len);
        }
    }
    assert!(dropped > 0, "no dropped notice");
}

/// Resident memory of process `pid`, in bytes.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS");
    kb << 10
}

#[test]
fn subscribers_that_do_not_read_hold_bounded_memory_however_large_the_bins() {
    // Four results of 16,384 bins (about 0.5 MB each in memory): ten subscribers that never read
    // used to hold 256 of them each, over 1.3 GB in all.
    let dir = scratch("stalled-memory");
    let graph = dir.join("graph.json");
    let histogram = |id: &str| json!({"id": id, "op": "histogram", "inputs": ["energy"], "params": {"bins": 16384, "low": 0, "high": 10}});
    let doc = json!({
        "nodes": [
            {"id": "energy", "op": "select", "params": {"field": "energy", "kind": "scalar"}},
            histogram("h1"), histogram("h2"), histogram("h3"), histogram("h4"),
        ],
        "results": ["h1", "h2", "h3", "h4"],
    });
    std::fs::write(&graph, doc.to_string()).unwrap();
    let extra = [
        "--graph",
        graph.to_str().unwrap(),
        "--image-size",
        "0",
        "--rate",
        "200",
        "--display-rate",
        "10",
        "--stall-timeout",
        "120",
        "--metrics",
        "0",
    ];
    let service = Service::start(&dir, "127.0.0.1:0", &extra);
    let editor = client(&service.addr);
    let mut watcher = subscriber(&service.addr, &["h1"]);
    next_bin(&mut watcher);
    drop(watcher);
    let before = resident_bytes(service.child.id());
    let subscribe = ClientMessage::Subscribe {
        results: ["h1", "h2", "h3", "h4"].map(String::from).to_vec(),
    };
    let stuck: Vec<TcpStream> = (0..10)
        .map(|i| {
            let mut stream = TcpStream::connect(&service.addr).unwrap();
            let hello = ClientMessage::Hello(Hello::new(format!("stuck-{i}"), Role::Subscriber));
            let mut bytes = protocol1::encode_frame(&hello, usize::MAX).unwrap();
            bytes.extend(protocol1::encode_frame(&subscribe, usize::MAX).unwrap());
            stream.write_all(&bytes).unwrap();
            stream
        })
        .collect();
    // Until every stuck subscriber has had a full queue's worth of bins dropped.
    let deadline = Instant::now() + Duration::from_secs(120);
    while editor.status().unwrap()["server"]["bins_dropped"].as_u64().unwrap() < 10 * 256 {
        assert!(Instant::now() < deadline, "the stuck subscribers' bins were never dropped");
        std::thread::sleep(Duration::from_millis(200));
    }
    let grown = resident_bytes(service.child.id()).saturating_sub(before);
    assert!(
        grown < 800 << 20,
        "{} MB more held for 10 subscribers that do not read",
        grown >> 20
    );
    drop(stuck);
}

#[test]
fn listening_off_loopback_needs_a_token() {
    let out = common::ami2(&["run", "--listen", "0.0.0.0:0", "--frames", "10"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--token-file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ami2 ARGS` for the service at `addr`: exit code, stdout, stderr.
fn cli_at(addr: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ami2"))
        .args(args)
        .env("AMI2_ADDR", addr)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// `ami2 graph ...`, `get`, `watch`, `status` against a running service.
#[test]
fn cli_commands() {
    let dir = scratch("cli");
    let service = Service::start(&dir, "127.0.0.1:0", &[]);
    let cli = |args: &[&str]| {
        let (code, stdout, stderr) = cli_at(&service.addr, args);
        (code == Some(0), stdout, stderr)
    };
    let (ok, out, err) = cli(&[
        "graph",
        "edit",
        "--set-param",
        "trace_peaks.threshold=0.8",
        "--add-node",
        r#"{"id": "e_chart", "op": "strip_chart", "inputs": ["energy"]}"#,
        "--results",
        "e_chart,trace_peaks",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "accepted, version 2");
    // `ami2 graph show`: the graph, once it says it is at `version`.
    let shown = |version: u64| {
        let (ok, out, err) = cli(&["graph", "show"]);
        assert!(ok && err.contains(&format!("graph version {version}")), "{err}");
        serde_json::from_str::<Value>(&out).unwrap()
    };
    let graph = shown(2);
    assert_eq!(graph["results"], json!(["e_chart", "trace_peaks"]));
    let peaks = graph_node(&graph, "trace_peaks");
    assert_eq!(peaks["params"], json!({"threshold": 0.8}));

    // A rejected edit: exit status 1, every reason on stderr.
    let (ok, _, err) = cli(&["graph", "edit", "--remove", "nope", "--set-param", "cspad_roi.x1=500"]);
    assert!(!ok);
    assert!(
        err.contains("unknown_node (node nope)") && err.contains("invalid_graph (node cspad_roi)"),
        "{err}"
    );

    // `ami2 graph submit FILE`: its answer.
    let file = dir.join("graph.json");
    let submit = |graph: &Value| {
        std::fs::write(&file, graph.to_string()).unwrap();
        let (ok, out, err) = cli(&["graph", "submit", file.to_str().unwrap()]);
        assert!(ok, "{err}");
        out.trim().to_string()
    };
    let new_graph = json!({"nodes": [{"id": "energy", "op": "select", "params": {"field": "energy", "kind": "scalar"}},
                                     {"id": "energy_sum", "op": "strip_chart", "inputs": ["energy"]}],
                           "results": ["energy_sum"]});
    assert_eq!(submit(&new_graph), "accepted, version 3");
    // JSON that is not a graph document: refused before anything is sent, and saying why.
    for (doc, why) in [
        ("[]", "not an array"),
        ("null", "not null"),
        (r#"{"nodes": [], "results": [], "extra": 1}"#, "unknown key `extra`"),
    ] {
        std::fs::write(&file, doc).unwrap();
        let (ok, _, err) = cli(&["graph", "submit", file.to_str().unwrap()]);
        assert!(!ok && err.contains("not a graph document") && err.contains(why), "{doc}: {err}");
    }
    let (ok, out, _) = cli(&["get", "/control/graph/version"]);
    assert!(ok);
    assert_eq!(out.trim(), "3");
    let (ok, out, err) = cli(&["watch", "energy_sum", "--count", "3"]);
    assert!(ok, "{err}");
    let bins: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(bins.len(), 3);
    assert!(bins.iter().all(|b| b["result"] == "energy_sum" && b["graph_version"] == 3), "{out}");
    // Without names: every result of the current graph; --table: a row per bin for people.
    let (ok, out, err) = cli(&["watch", "--table", "--count", "3"]);
    assert!(ok, "{err}");
    assert!(err.contains("the results of graph version 3: energy_sum"), "{err}");
    let header = out
        .lines()
        .find(|l| l.contains("events"))
        .unwrap_or_else(|| panic!("no header in {out}"));
    assert!(header.trim_end().ends_with("energy_sum"), "{header}");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 3, "{out}");
    // bin, time, events, graph version, the chart's mean: consecutive bins of version 3.
    assert!(
        rows.iter().all(|r| r.len() == 5 && r[3] == "3" && r[4].parse::<f64>().is_ok()),
        "{out}"
    );
    let bins: Vec<u64> = rows.iter().map(|r| r[0].parse().unwrap()).collect();
    assert!(bins.windows(2).all(|w| w[1] == w[0] + 1), "{out}");
    let (ok, out, _) = cli(&["status"]);
    assert!(ok);
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["graph_version"], json!(3));
    assert!(status["sources"]["0"]["stats"]["frames"].as_u64().unwrap() > 0);
    // The service's stream is paced: its source says how far behind it it is.
    assert!(status["sources"]["0"]["stats"]["behind_ms"].is_u64(), "{status}");
    assert!(status.get("metrics").is_some());
    let (ok, _, err) = cli(&["get", "/elsewhere/key"]);
    assert!(!ok && err.contains("forbidden"), "{err}");

    // Going back: version 2's graph becomes current again, as version 4.
    let (ok, out, err) = cli(&["graph", "revert", "2"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "accepted, version 4");
    let reverted = shown(4);
    assert_eq!(reverted["results"], json!(["e_chart", "trace_peaks"]));
    assert_eq!(graph_node(&reverted, "trace_peaks")["params"], json!({"threshold": 0.8}));
    // A graph that compiles but fails on every event (`energy` is a scalar, not an image): the
    // workers revert it and mark it failed in Control.
    let broken = json!({"nodes": [{"id": "img", "op": "select", "params": {"field": "energy", "kind": "image"}},
                                  {"id": "total", "op": "sum", "inputs": ["img"]}],
                        "results": ["total"]});
    assert_eq!(submit(&broken), "accepted, version 5");
    let deadline = Instant::now() + Duration::from_secs(30);
    while cli(&["get", "/control/graph/bad/000000000005"]).1.trim() == "null" {
        assert!(Instant::now() < deadline, "version 5 never marked failed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, out, err) = cli(&["graph", "history"]);
    assert!(ok, "{err}");
    // Each line says when and by whom its version was made; the rest is compared without that.
    let (lines, made): (Vec<String>, Vec<String>) = out
        .lines()
        .map(|line| {
            let start = line.find("; made ").unwrap_or_else(|| panic!("no maker in {line}"));
            let end = line[start + 2..].find("; ").map_or(line.len(), |e| start + 2 + e);
            (format!("{}{}", &line[..start], &line[end..]), line[start + 2..end].to_string())
        })
        .unzip();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(
        lines[0].starts_with("version 5 (current): results total; 2 nodes; failed at run time"),
        "{out}"
    );
    assert!(lines[3].starts_with("version 2: results e_chart, trace_peaks; "), "{out}");
    assert_eq!(
        lines[1],
        format!("{}; same graph as version 2", lines[3].replace("version 2", "version 4"))
    );
    assert_eq!(lines[2], "version 3: results energy_sum; 2 nodes");
    assert!(lines[4].starts_with("version 1 (built-in): results "), "{out}");
    // Versions 2-5 came from this test's `ami2` commands, version 1 from the service itself.
    let today = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    for maker in &made[..4] {
        assert!(maker.starts_with(&format!("made {}", &today[..10])), "{maker}");
        assert!(maker.contains(" by ami2-cli/") && maker.contains(" at 127.0.0.1:"), "{maker}");
    }
    assert!(made[4].ends_with("by the service at start (the built-in graph)"), "{}", made[4]);
    let (ok, out, _) = cli(&["graph", "history", "--count", "2"]);
    assert!(ok && out.lines().count() == 2, "{out}");
    // Nothing to go back to: the current version, one not made yet.
    let (ok, _, err) = cli(&["graph", "revert", "5"]);
    assert!(!ok && err.contains("graph version 5 is the current one"), "{err}");
    let (ok, _, err) = cli(&["graph", "revert", "9"]);
    assert!(
        !ok && err.contains("graph version 9 is not made yet: the current one is 5"),
        "{err}"
    );
    // An earlier version, as it was sent.
    let (ok, out, err) = cli(&["graph", "show", "--version", "3"]);
    assert!(ok && err.contains("graph version 3"), "{err}");
    let spec = |text: &str| serde_json::from_str::<ami_tasks::graph::GraphSpec>(text).unwrap();
    assert_eq!(spec(&out), spec(&new_graph.to_string()));
    let (ok, _, err) = cli(&["graph", "show", "--version", "6"]);
    assert!(!ok && err.contains("graph version 6 is not made yet"), "{err}");
}

/// `ami2 watch --table` without names follows the graph: a new version's results get a header of
/// their own and rows; and it goes on across a restart of the service.
/// `ami2 watch --table` of the service at `addr`: its stdout and stderr lines as they come. Killed
/// at the end, also when a test fails (it would reconnect for ever).
struct WatchTable {
    _child: KillOnDrop,
    lines: std::sync::mpsc::Receiver<String>,
}

impl WatchTable {
    fn start(addr: &str) -> WatchTable {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ami2"))
            .args(["watch", "--table"])
            .env("AMI2_ADDR", addr)
            .env_remove("LD_LIBRARY_PATH")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
        let streams = [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ];
        for stream in streams {
            let lines_tx = lines_tx.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = lines_tx.send(line);
                }
            });
        }
        WatchTable {
            _child: KillOnDrop(child),
            lines,
        }
    }

    /// The next line that `wanted` accepts, within 30 s.
    fn wait_for(&self, wanted: &dyn Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Ok(line) = self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            if wanted(&line) {
                return line;
            }
        }
        panic!("no such line within 30 s");
    }
}

/// A row of a live table (it starts with its bin number), not a header or a notice.
fn is_row(line: &str) -> bool {
    line.trim_start().starts_with(|c: char| c.is_ascii_digit())
}

#[test]
fn watch_without_names_follows_the_graph_as_it_changes() {
    let dir = scratch("watch-follows");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut service = Service::start(&dir, &listen, &[]);
    let watch = WatchTable::start(&service.addr);
    let wait_for = |wanted: &dyn Fn(&str) -> bool| watch.wait_for(wanted);
    let header = wait_for(&|l| l.contains("events"));
    assert!(header.contains("energy_hist"), "{header}");
    wait_for(&is_row);
    let editor = client(&service.addr);
    let graph = json!({"nodes": [{"id": "energy", "op": "select", "params": {"field": "energy", "kind": "scalar"}},
                                 {"id": "energy_sum", "op": "strip_chart", "inputs": ["energy"]}],
                       "results": ["energy_sum"]});
    let version = accepted(editor.submit_graph(&graph).unwrap());
    // A header of the new results, then rows of the new version.
    let header = wait_for(&|l| l.contains("events") && !l.contains("energy_hist"));
    assert!(header.trim_end().ends_with("energy_sum"), "{header}");
    let row = wait_for(&is_row);
    assert_eq!(row.split_whitespace().nth(3), Some(version.to_string().as_str()), "{row}");
    // A restart of the service: the table goes on with later bins.
    let bin_of = |row: &str| row.split_whitespace().next().unwrap().parse::<u64>().unwrap();
    service.kill();
    let last = watch
        .lines
        .try_iter()
        .filter(|l| is_row(l))
        .map(|l| bin_of(&l))
        .fold(bin_of(&row), u64::max);
    let _service = Service::start(&dir, &listen, &[]);
    let later = wait_for(&|l| is_row(l) && bin_of(l) > last);
    assert_eq!(later.split_whitespace().nth(3), Some(version.to_string().as_str()), "{later}");
}

#[test]
fn a_result_too_large_for_a_frame_is_reported_as_such_to_its_subscribers() {
    // The mean image of 256x256 frames: about 1.2 MB of JSON a bin, over the 1 MiB frame cap.
    let dir = scratch("too-large");
    let listen = format!("127.0.0.1:{}", free_port());
    let service = Service::start(&dir, &listen, &["--image-size", "256"]);
    let graph = json!({"nodes": [{"id": "image", "op": "select", "params": {"field": "cspad", "kind": "image"}}],
                       "results": ["image"]});
    accepted(client(&service.addr).submit_graph(&graph).unwrap());
    let mut subscriber = subscriber(&service.addr, &["image"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let too_large = loop {
        assert!(Instant::now() < deadline, "no too-large notice within 30 s");
        match subscriber.next_event(Duration::from_secs(1)) {
            Ok(Some(Event::TooLarge(too_large))) => break too_large,
            Ok(Some(Event::Bin(bin))) => panic!("a bin of {} came", bin.result),
            _ => {}
        }
    };
    assert_eq!(too_large.result, "image");
    assert_eq!(too_large.max, protocol1::MAX_FRAME_BYTES as u64);
    assert!(too_large.bytes > too_large.max && too_large.count >= 1, "{too_large:?}");
    // The `dropped` count that follows includes them.
    match subscriber.next_event(Duration::from_secs(5)) {
        Ok(Some(Event::Dropped(n))) => assert!(n >= too_large.count, "{n} < {}", too_large.count),
        other => panic!("{other:?}"),
    }
}

#[test]
fn watch_ends_quietly_when_its_reader_stops_reading() {
    // `ami2 watch energy_hist | head -1`: once `head` has gone, the next write fails.
    use std::io::BufRead;
    let dir = scratch("watch-broken-pipe");
    let listen = format!("127.0.0.1:{}", free_port());
    let service = Service::start(&dir, &listen, &[]);
    for table in [false, true] {
        let mut watch = std::process::Command::new(env!("CARGO_BIN_EXE_ami2"))
            .args(["watch", "energy_hist"])
            .args(table.then_some("--table"))
            .env("AMI2_ADDR", &service.addr)
            .env_remove("LD_LIBRARY_PATH")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        std::io::BufReader::new(watch.stdout.take().unwrap()).read_line(&mut first).unwrap();
        assert!(!first.is_empty(), "table {table}: {:?}", watch.wait_with_output().unwrap());
        // The reader is gone: the pipe is closed.
        let out = watch.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "table {table}: {} {stderr}", out.status);
        assert!(!stderr.contains("panicked"), "table {table}: {stderr}");
    }
}

#[test]
fn watch_without_names_follows_the_graph_the_workers_run_when_one_fails() {
    let dir = scratch("watch-failed-graph");
    let listen = format!("127.0.0.1:{}", free_port());
    let service = Service::start(&dir, &listen, &[]);
    let watch = WatchTable::start(&service.addr);
    let wait_for = |wanted: &dyn Fn(&str) -> bool| watch.wait_for(wanted);
    let bin_of = |row: &str| row.split_whitespace().next().unwrap().parse::<u64>().unwrap();
    let version_of = |row: &str| row.split_whitespace().nth(3).unwrap().parse::<u64>().unwrap();
    let before = wait_for(&is_row);
    let good = version_of(&before);
    // Compiles (the field is declared an image) but fails on every event: `energy` is a scalar.
    let broken = json!({"nodes": [{"id": "img", "op": "select", "params": {"field": "energy", "kind": "image"}},
                                  {"id": "ghost", "op": "sum", "inputs": ["img"]}],
                        "results": ["ghost"]});
    let editor = client(&service.addr);
    let failed = accepted(editor.submit_graph(&broken).unwrap());
    // The table says what happened and goes on with the graph the workers went back to.
    let notice = wait_for(&|l| l.contains("failed at run time"));
    assert!(
        notice.contains(&format!("graph version {failed} failed")) && notice.contains(&format!("run version {good}")),
        "{notice}"
    );
    let later = wait_for(&|l| is_row(l) && bin_of(l) > bin_of(&before) + 40);
    assert_eq!(version_of(&later), good, "{later}");
}

#[test]
fn a_data_directory_serves_one_service_at_a_time() {
    let dir = scratch("data-dir-lock");
    let mut service = Service::start(&dir, "127.0.0.1:0", &[]);
    let data = dir.join("data");
    let second = || {
        common::ami2(&common::with_legion(&[
            "run",
            "--no-listen",
            "--metrics",
            "0",
            "--frames",
            "100",
            "--data-dir",
            data.to_str().unwrap(),
        ]))
    };
    let out = second();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let owner = format!("in use by another ami2 service (process {})", service.child.id());
    assert!(stderr.contains(&owner), "{stderr}");
    // Once the first is gone (even killed), the directory is free.
    service.kill();
    let out = second();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Control keeps the last 64 graph versions: older documents are deleted, and a request based on
/// a version no longer kept is a conflict (its changes since cannot be known).
#[test]
fn old_graph_versions_are_dropped_and_too_old_bases_conflict() {
    let service = Service::start(&scratch("retention"), "127.0.0.1:0", &[]);
    let editor = client(&service.addr);
    let (first, _) = editor.graph().unwrap();
    let mut version = first;
    for i in 0..70 {
        let edit = Edit::SetParams {
            id: "trace_peaks".into(),
            params: json!({"threshold": 0.5 + (i % 2) as f64 * 0.1}),
        };
        version = accepted(editor.request(version, vec![edit], None).unwrap());
    }
    assert_eq!(version, first + 70);
    let key = |v: u64| format!("/control/graph/v/{v:012}");
    assert_eq!(editor.get_key(&key(version - 70)).unwrap(), None);
    assert_eq!(editor.get_key(&key(version - 64)).unwrap(), None);
    assert!(editor.get_key(&key(version - 63)).unwrap().is_some());
    assert!(editor.get_key(&format!("/control/graph/edited/{:012}", version)).unwrap().is_some());
    // When and by whom: kept and dropped with the versions.
    let made = |v: u64| format!("/control/graph/made/{v:012}");
    assert_eq!(editor.get_key(&made(version - 64)).unwrap(), None);
    let newest = editor.get_key(&made(version)).unwrap().expect("the newest version's maker");
    assert!(newest["by"].as_str().unwrap().contains(" at 127.0.0.1:"), "{newest}");
    assert!(newest["at_unix_ms"].as_u64().unwrap() > 1_700_000_000_000, "{newest}");
    // Based on a kept version, touching another node: rebased and accepted.
    accepted(editor.request(version - 63, vec![strip_chart("late")], None).unwrap());
    match editor.request(first, vec![strip_chart("too_late")], None).unwrap() {
        Answer::Rejected(r) => {
            assert_eq!(r.reasons[0].code, ErrorCode::Conflict);
            assert!(r.reasons[0].message.contains("no longer kept"), "{r:?}");
        }
        other => panic!("{other:?}"),
    }
}

/// The process ids of the children of process `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect()
}

#[test]
fn a_supervised_service_on_port_0_comes_back_where_its_clients_reconnect() {
    let dir = scratch("supervised-port-0");
    let mut supervisor = Service::start(&dir, "127.0.0.1:0", &["--supervise"]);
    // Also when the test fails: a supervisor killed with SIGKILL would leave its service running.
    struct StopOnDrop(u32);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill").args(["-TERM", &self.0.to_string()]).status();
            std::thread::sleep(Duration::from_secs(3));
        }
    }
    let _stop = StopOnDrop(supervisor.child.id());
    let addr = supervisor.addr.clone();
    assert!(!addr.ends_with(":0"), "{addr}");
    let watch = WatchTable::start(&addr);
    watch.wait_for(&is_row);
    let [service] = children_of(supervisor.child.id())[..] else {
        panic!("the supervisor has not one child: {:?}", children_of(supervisor.child.id()))
    };
    std::fs::remove_file(dir.join("port")).unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &service.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // The restarted service listens where the first one did, so the client comes back by itself.
    watch.wait_for(&|line| line.contains("reconnected"));
    watch.wait_for(&is_row);
    let again = std::fs::read_to_string(dir.join("port")).expect("the restarted service wrote its address");
    assert_eq!(again.trim(), addr);
    assert!(!children_of(supervisor.child.id()).contains(&service));
    // SIGTERM: the supervisor stops its service too, and ends well.
    let stopped = std::process::Command::new("kill")
        .args(["-TERM", &supervisor.child.id().to_string()])
        .status();
    assert!(stopped.unwrap().success());
    assert!(supervisor.child.wait().unwrap().success());
}

#[test]
fn sockets_that_never_say_hello_do_not_take_the_places_of_clients() {
    let dir = scratch("silent-sockets");
    let service = Service::start(&dir, "127.0.0.1:0", &["--max-connections", "2"]);
    // More silent sockets than there are places: they wait out the handshake timeout.
    let silent: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(&service.addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let first = client(&service.addr);
    let second = client(&service.addr);
    assert!(first.status().is_ok() && second.status().is_ok());
    // The places are the clients': a third one is told the service is busy.
    let once = || ClientOptions {
        reconnect: false,
        timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    };
    let third = BlockingClient::connect(&service.addr, once()).and_then(|c| c.status());
    let err = third.expect_err("a third client got a place").to_string();
    assert!(err.contains("too many connections"), "{err}");
    drop(first);
    // A place freed is taken again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while BlockingClient::connect(&service.addr, once()).and_then(|c| c.status()).is_err() {
        assert!(Instant::now() < deadline, "the freed place was not given again");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(silent);
}

/// `n` nodes `prefix<k>`, each the mean of the trace: about 55 bytes of graph each.
fn means(prefix: &str, n: usize) -> Vec<Edit> {
    (0..n)
        .map(|k| Edit::AddNode {
            node: NodeDoc::new(&format!("{prefix}{k}"), "mean", &["trace"], Value::Null),
        })
        .collect()
}

/// A graph larger than the bound (`protocol1::MAX_GRAPH_BYTES`) is refused everywhere with a
/// reason saying so, so that every answer carrying a graph fits a frame: `graph show`, `history`,
/// `get` of a graph key keep working.
#[test]
fn a_graph_too_large_is_refused_and_graph_commands_keep_working() {
    let dir = scratch("graph-size");
    let service = Service::start(&dir, "127.0.0.1:0", &[]);
    let cli = |args: &[&str]| cli_at(&service.addr, args);
    let editor = client(&service.addr);
    let (first, _) = editor.graph().unwrap();
    // Half the bound: accepted. Twice more: the graph would be over it, rejected for that alone.
    let half = protocol1::MAX_GRAPH_BYTES / 2 / 55;
    let version = accepted(editor.request(first, means("a", half), None).unwrap());
    match editor.request(version, means("b", half), None).unwrap() {
        Answer::Rejected(r) => {
            assert_eq!(r.version, version);
            assert_eq!(r.reasons.len(), 1, "{r:?}");
            assert_eq!((r.reasons[0].code, r.reasons[0].node.as_deref()), (ErrorCode::InvalidGraph, None));
            assert!(r.reasons[0].message.contains("too large"), "{r:?}");
        }
        other => panic!("{other:?}"),
    }
    // Far over, in one frame (the tester's 10,000 nodes): the same.
    match editor.request(version, means("c", 10_000), None).unwrap() {
        Answer::Rejected(r) => assert!(r.reasons.len() == 1 && r.reasons[0].message.contains("too large"), "{r:?}"),
        other => panic!("{other:?}"),
    }
    let (code, out, err) = cli(&["graph", "show"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains(&format!("graph version {version}")), "{err}");
    assert_eq!(
        node_ids(&serde_json::from_str(&out).unwrap()).len(),
        node_ids(&editor.graph().unwrap().1).len()
    );
    let (code, out, err) = cli(&["graph", "history"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with(&format!("version {version} (current)")), "{out}");
    let (code, _, err) = cli(&["get", &format!("/control/graph/edited/{version:012}")]);
    assert_eq!(code, Some(0), "{err}");

    // A file over the bound: refused by the client before sending, and by `run --graph`.
    let mut graph = editor.graph().unwrap().1;
    graph["nodes"]
        .as_array_mut()
        .unwrap()
        .extend((0..half).map(|k| json!({"id": format!("b{k}"), "op": "mean", "inputs": ["trace"]})));
    let file = dir.join("large.json");
    std::fs::write(&file, graph.to_string()).unwrap();
    let (code, _, err) = cli(&["graph", "submit", file.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("the graph is too large"), "{err}");
    let out = common::ami2(&["run", "--graph", file.to_str().unwrap(), "--no-listen", "--frames", "10"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("large.json is not a valid graph: the graph is too large"), "{err}");
    // Shrinking it back under the bound is accepted.
    let removed = (0..half / 2).map(|k| Edit::RemoveNode { id: format!("a{k}") }).collect();
    accepted(editor.request(version, removed, None).unwrap());
}

/// Node id `k` in 3 characters of upper-case base 36: no node of the built-in graph has one, and
/// 30,000 edits removing such nodes fit a request frame.
fn short_id(k: usize) -> String {
    let digit = |d: usize| char::from_digit(d as u32, 36).unwrap().to_ascii_uppercase();
    [k / 1296 % 36, k / 36 % 36, k % 36].into_iter().map(digit).collect()
}

/// A request of 30,000 edits that all fail (as many as a request frame holds) is answered
/// `rejected` within a frame: the first `protocol1::MAX_LISTED_REASONS` reasons and how many there
/// were; `ami2 graph edit` prints how many it does not list; graph commands keep working.
#[test]
fn thousands_of_failing_edits_get_a_rejection_that_fits_a_frame() {
    let dir = scratch("many-failing-edits");
    let service = Service::start(&dir, "127.0.0.1:0", &[]);
    let editor = client(&service.addr);
    let (version, _) = editor.graph().unwrap();
    let edits: Vec<Edit> = (0..30_000).map(|k| Edit::RemoveNode { id: short_id(k) }).collect();
    match editor.request(version, edits, None).unwrap() {
        Answer::Rejected(r) => {
            assert_eq!(r.version, version);
            assert_eq!(r.reasons.len(), protocol1::MAX_LISTED_REASONS, "{:?}", &r.reasons[..3]);
            assert_eq!(r.total_reasons, Some(30_000));
            assert_eq!(r.unlisted(), 30_000 - protocol1::MAX_LISTED_REASONS as u64);
            for (k, reason) in r.reasons.iter().enumerate() {
                assert_eq!((reason.code, reason.node.clone()), (ErrorCode::UnknownNode, Some(short_id(k))));
            }
        }
        other => panic!("{other:?}"),
    }
    // The same connection carries on.
    let next = accepted(editor.request(version, vec![strip_chart("chart")], None).unwrap());
    assert_eq!(next, version + 1);
    // `ami2 graph edit` lists the reasons listed, then how many more there were.
    let ids: Vec<String> = (0..150).map(short_id).collect();
    let mut args = vec!["graph", "edit"];
    for id in &ids {
        args.extend(["--remove", id.as_str()]);
    }
    let (code, _, err) = cli_at(&service.addr, &args);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.matches("unknown_node").count(), protocol1::MAX_LISTED_REASONS, "{err}");
    assert!(err.trim_end().ends_with("and 50 more"), "{err}");
    let (code, _, err) = cli_at(&service.addr, &["graph", "show"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains(&format!("graph version {next}")), "{err}");
    let (code, out, err) = cli_at(&service.addr, &["graph", "history"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with(&format!("version {next} (current)")), "{out}");
}

/// When writing a version to Control fails (here its log cannot be written: a folder in its
/// place), the request is rejected, the failure logged, and no part of the version is readable.
#[test]
fn a_version_that_cannot_be_written_is_rejected_and_leaves_nothing_behind() {
    let dir = scratch("graph-write-fails");
    let service = Service::start(&dir, "127.0.0.1:0", &["--snapshot-interval", "0"]);
    let editor = client(&service.addr);
    let (version, _) = editor.graph().unwrap();
    let log = kv_region::persist::SegmentFiles::new(&dir.join("data").join("control"), "/control/").log;
    assert!(log.is_file(), "{}", log.display());
    std::fs::remove_file(&log).unwrap();
    std::fs::create_dir(&log).unwrap();
    match editor.request(version, vec![strip_chart("chart")], None).unwrap() {
        Answer::Rejected(r) => {
            assert_eq!(r.version, version);
            assert_eq!(r.reasons[0].code, ErrorCode::Internal, "{r:?}");
            assert!(r.reasons[0].message.contains("to Control"), "{r:?}");
        }
        other => panic!("{other:?}"),
    }
    let next = version + 1;
    for key in [
        format!("/control/graph/v/{next:012}"),
        format!("/control/graph/edited/{next:012}"),
        format!("/control/graph/made/{next:012}"),
    ] {
        assert_eq!(editor.get_key(&key).unwrap(), None, "{key}");
    }
    assert_eq!(editor.get_key("/control/graph/version").unwrap(), Some(json!(version)));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ami2"))
        .args(["graph", "show", "--version", &next.to_string()])
        .env("AMI2_ADDR", &service.addr)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("is not made yet"), "{err}");
    // The service said why in its log (stderr).
    let logged = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("stderr-"))
        .any(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .contains(&format!("writing graph version {next} to Control"))
        });
    assert!(logged, "no error logged in {}", dir.display());
    // With the log writable again, the same edit makes that version.
    std::fs::remove_dir(&log).unwrap();
    assert_eq!(accepted(editor.request(version, vec![strip_chart("chart")], None).unwrap()), next);
    assert!(editor.get_key(&format!("/control/graph/made/{next:012}")).unwrap().is_some());
}
