//! Running `ami2 run` as a service for tests: a real process with a real Legion runtime,
//! listening on a free loopback port that it reports through `--port-file`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `ami2 run`; killed (SIGKILL) when dropped.
pub struct Service {
    pub child: Child,
    pub addr: String,
}

impl Service {
    /// Starts `ami2 run` on synthetic events (endless, 500 Hz unless `extra` has `--rate`) with `extra` options, its data
    /// in `dir/data`, listening on `listen`; waits until it serves clients.
    pub fn start(dir: &Path, listen: &str, extra: &[&str]) -> Service {
        Self::start_with_env(dir, listen, extra, &[])
    }

    /// [`Service::start`] with extra environment variables (e.g. `AMI2_FAULT`).
    pub fn start_with_env(dir: &Path, listen: &str, extra: &[&str], env: &[(&str, &str)]) -> Service {
        let port_file = dir.join("port");
        let _ = std::fs::remove_file(&port_file);
        let stderr = std::fs::File::create(dir.join(format!("stderr-{}", Instant::now().elapsed().as_nanos()))).unwrap();
        let mut args: Vec<String> = [
            "run",
            "--listen",
            listen,
            "--port-file",
            port_file.to_str().unwrap(),
            "--data-dir",
            dir.join("data").to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        if !extra.contains(&"--rate") {
            args.extend(["--rate".to_string(), "500".to_string()]);
        }
        args.extend(["--", "-ll:cpu", "1", "-ll:util", "1"].iter().map(|s| s.to_string()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_ami2"))
            .args(&args)
            .env_remove("LD_LIBRARY_PATH")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("ami2 starts");
        let started = Instant::now();
        let addr = loop {
            if let Ok(addr) = std::fs::read_to_string(&port_file) {
                break addr.trim().to_string();
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("ami2 run exited early ({status}); see the stderr files in {}", dir.display());
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "ami2 run did not start serving in time"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Service { child, addr }
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A subscriber-role client of the service at `addr`, subscribed to `results` (it reconnects and
/// subscribes again by itself).
pub fn subscriber(addr: &str, results: &[&str]) -> client_lib::BlockingClient {
    let options = client_lib::ClientOptions {
        role: protocol1::Role::Subscriber,
        ..client_lib::ClientOptions::default()
    };
    let client = client_lib::BlockingClient::connect(addr, options).expect("connects");
    client.subscribe(results).expect("subscribes");
    client
}

/// A client of the service at `addr` with the default options (an editor that reconnects).
pub fn client(addr: &str) -> client_lib::BlockingClient {
    client_lib::BlockingClient::connect(addr, client_lib::ClientOptions::default()).expect("connects")
}

/// Node `id` of a graph document.
pub fn graph_node<'g>(graph: &'g serde_json::Value, id: &str) -> &'g serde_json::Value {
    graph["nodes"]
        .as_array()
        .expect("a graph has nodes")
        .iter()
        .find(|n| n["id"] == id)
        .unwrap_or_else(|| panic!("no node {id} in {graph}"))
}
