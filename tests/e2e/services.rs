//! The cluster tests' services: fresh databases on the machine's shared
//! PostgreSQL, and throwaway PostgreSQL, Redis and NATS servers on free
//! ports that a test may stop and start again.
//!
//! A missing service fails the test with its name and how to start it; it
//! never skips.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The machine's shared PostgreSQL, Redis and NATS.
pub const SHARED_PG: &str = "postgres://postgres@127.0.0.1:5432";
/// The machine's shared Redis.
pub const SHARED_REDIS: &str = "redis://127.0.0.1:6379";
/// The machine's shared NATS (with JetStream).
pub const SHARED_NATS: &str = "nats://127.0.0.1:4222";

/// How the CI script starts each shared service (for the failure message).
const HOW: &str = "start it as .ci/run does";

/// A unique suffix for names on shared services.
pub fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{}_{nanos:x}", std::process::id())
}

/// Fails the test unless something listens on `127.0.0.1:port`.
pub fn require(name: &str, port: u16) {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok(),
        "{name} at 127.0.0.1:{port} is not reachable: {HOW}"
    );
}

/// A free TCP port on loopback (free when asked; the caller binds it soon).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `127.0.0.1:port` accepts connections.
fn wait_listening(name: &str, port: u16) {
    let started = Instant::now();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{name} on port {port} did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A database of its own on a PostgreSQL server, dropped with it.
pub struct Database {
    server: String,
    name: String,
}

impl Database {
    /// A fresh, empty database on the server at `server` (a URL without
    /// a database name).
    pub fn create(server: &str) -> Database {
        let name = format!("danmaku_e2e_{}", unique());
        psql(server, "postgres", &format!("CREATE DATABASE {name}"));
        Database {
            server: server.to_owned(),
            name,
        }
    }

    /// A fresh database on the machine's shared PostgreSQL.
    pub fn shared() -> Database {
        require("PostgreSQL", 5432);
        Database::create(SHARED_PG)
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("{}/{}", self.server, self.name)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .arg(format!("{}/postgres", self.server))
            .args([
                "-qAtc",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

/// Runs `sql` with psql against database `db` of `server`.
fn psql(server: &str, db: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .arg(format!("{server}/{db}"))
        .args(["-qAtc", sql])
        .output()
        .expect("psql (PostgreSQL's client) is not installed");
    assert!(
        out.status.success(),
        "psql {sql:?} on {server}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A PostgreSQL binary (the machine's version 15).
fn pg_bin(name: &str) -> PathBuf {
    let path = Path::new("/usr/lib/postgresql/15/bin").join(name);
    assert!(
        path.exists(),
        "PostgreSQL's {name} is not installed at {}",
        path.display()
    );
    path
}

/// A throwaway PostgreSQL server of its own, on a free port. PostgreSQL
/// refuses to run as root, so it runs as the `postgres` user.
pub struct Postgres {
    dir: tempfile::TempDir,
    /// Its port.
    pub port: u16,
}

impl Postgres {
    /// Makes a cluster with initdb and starts it.
    pub fn start() -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("danmaku-pg-")
            .tempdir()
            .unwrap();
        as_postgres(
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path()),
        );
        let data = dir.path().join("data");
        as_postgres(
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(pg_bin("initdb"))
                .args(["-A", "trust", "-U", "postgres", "-D"])
                .arg(&data),
        );
        let pg = Postgres {
            dir,
            port: free_port(),
        };
        pg.resume();
        pg
    }

    /// The server's URL (without a database).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    /// Starts the (stopped) server again on the same port.
    pub fn resume(&self) {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("log");
        as_postgres(
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(pg_bin("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-o"])
                .arg(format!(
                    "-p {} -c listen_addresses=127.0.0.1 -k {}",
                    self.port,
                    self.dir.path().display()
                ))
                .arg("start"),
        );
        wait_listening("PostgreSQL", self.port);
    }

    /// Stops the server at once (`immediate`: like a crash, no checkpoint).
    pub fn halt(&self) {
        as_postgres(
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(pg_bin("pg_ctl"))
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["-m", "immediate", "-w", "stop"]),
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// Runs a setup command, failing the test with its output if it fails.
fn as_postgres(cmd: &mut Command) {
    let out = cmd.output().expect("run a PostgreSQL setup command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A throwaway broker process (Redis or NATS) on a port of its own.
pub struct Broker {
    kind: BrokerKind,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Its port.
    pub port: u16,
}

/// Which broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokerKind {
    /// `redis-server`.
    Redis,
    /// `nats-server -js`.
    Nats,
}

impl BrokerKind {
    /// The URL scheme.
    pub fn scheme(self) -> &'static str {
        match self {
            BrokerKind::Redis => "redis",
            BrokerKind::Nats => "nats",
        }
    }

    /// The machine's shared broker of this kind.
    pub fn shared(self) -> String {
        match self {
            BrokerKind::Redis => {
                require("Redis", 6379);
                SHARED_REDIS.to_owned()
            }
            BrokerKind::Nats => {
                require("NATS", 4222);
                SHARED_NATS.to_owned()
            }
        }
    }
}

impl Broker {
    /// Starts a broker of `kind` on a free port.
    pub fn start(kind: BrokerKind) -> Broker {
        let mut broker = Broker {
            kind,
            child: None,
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
        };
        broker.resume();
        broker
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.kind.scheme(), self.port)
    }

    /// Starts it again on the same port (after [`Broker::halt`]).
    pub fn resume(&mut self) {
        let port = self.port.to_string();
        let mut cmd = match self.kind {
            BrokerKind::Redis => {
                let mut c = Command::new("redis-server");
                c.args([
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    &port,
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .arg("--dir")
                .arg(self.dir.path());
                c
            }
            BrokerKind::Nats => {
                let mut c = Command::new("nats-server");
                c.args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"])
                    .arg(self.dir.path());
                c
            }
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{:?} is not installed: {e}", self.kind));
        self.child = Some(child);
        wait_listening(self.kind.scheme(), self.port);
    }

    /// Kills it (SIGKILL) and waits until it is gone.
    pub fn halt(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.halt();
    }
}
