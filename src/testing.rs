//! What the tests of several modules share: a broker server of a test's
//! own (that it may kill, hang and start again), namespaces that keep
//! tests on one shared broker apart, and free ports.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a started server may take to listen.
const STARTUP: Duration = Duration::from_secs(10);

/// A namespace no other test, nor another run of this one, uses: letters,
/// digits and `-` (as a NATS subject token and bucket name allow) when
/// `test` is.
pub(crate) fn namespace(test: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!(
        "t{}-{millis}-{}-{test}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A port nothing listens on (nothing did a moment ago).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free local port")
        .port()
}

/// A broker server of a test's own, on a free port, that the test may
/// kill, hang and start again; killed when dropped.
pub(crate) struct Throwaway {
    program: &'static str,
    args: Vec<String>,
    port: u16,
    child: Option<Child>,
    /// Where a JetStream server keeps its streams, removed on drop.
    _dir: Option<tempfile::TempDir>,
}

impl Throwaway {
    /// Starts `program` with the arguments `args` gives for a free port,
    /// and waits until it listens.
    pub(crate) async fn start(
        program: &'static str,
        args: impl FnOnce(u16) -> Vec<String>,
    ) -> Throwaway {
        let port = free_port();
        let mut server = Throwaway {
            program,
            args: args(port),
            port,
            child: None,
            _dir: None,
        };
        server.launch().await;
        server
    }

    /// A `redis-server` that keeps nothing on disk.
    pub(crate) async fn redis() -> Throwaway {
        Throwaway::start("redis-server", |port| {
            strings(&[
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
        })
        .await
    }

    /// A `nats-server`, with JetStream (in a directory of its own) if
    /// `jetstream`.
    pub(crate) async fn nats(jetstream: bool) -> Throwaway {
        let dir = jetstream.then(|| tempfile::tempdir().expect("a temporary directory"));
        let store = dir.as_ref().map(|d| d.path().display().to_string());
        let mut server = Throwaway::start("nats-server", |port| {
            let mut args = strings(&["-a", "127.0.0.1", "-p", &port.to_string()]);
            if let Some(store) = store {
                args.extend(strings(&["-js", "-sd", &store]));
            }
            args
        })
        .await;
        server._dir = dir;
        server
    }

    /// The port it listens on.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Starts it (again, on the same port) and waits until it listens.
    pub(crate) async fn launch(&mut self) {
        let child = Command::new(self.program)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} ({e}): install it (the tests start a broker of their own)",
                    self.program
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + STARTUP;
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "{} did not listen on port {} within {STARTUP:?}",
                self.program,
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills it and starts it again on the same port.
    pub(crate) async fn restart(&mut self) {
        self.kill();
        self.launch().await;
    }

    /// Stops (`true`) or resumes it: a broker that hangs without closing
    /// its connections.
    pub(crate) fn freeze(&self, frozen: bool) {
        let child = self.child.as_ref().expect("the server runs");
        let pid = libc::pid_t::try_from(child.id()).expect("a pid");
        let signal = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: kill(2) on our own child's pid, which it still is: the
        // child is not reaped before `kill` below.
        assert_eq!(
            unsafe { libc::kill(pid, signal) },
            0,
            "cannot signal {}",
            self.program
        );
    }

    /// Kills it at once (SIGKILL: no goodbye to its clients), as a crash
    /// would, and waits until it is gone.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Its program's name, for messages.
    pub(crate) fn program(&self) -> &'static str {
        self.program
    }
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        self.kill();
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|&arg| arg.to_owned()).collect()
}
