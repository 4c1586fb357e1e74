//! A private RabbitMQ node for tests that stop and restart the broker: its own node name,
//! AMQP and distribution ports and data folder, started from the machine's RabbitMQ
//! installation (`/usr/lib/rabbitmq/bin/rabbitmq-server`, as the current user). The
//! machine's shared broker is never disturbed. Its data (durable queues, persistent
//! messages) survives a restart; it is stopped and removed when dropped.

use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

pub struct RabbitNode {
    dir: tempfile::TempDir,
    name: String,
    pub port: u16,
    dist_port: u16,
    /// The TLS listener's port, when started with one ([`RabbitNode::start_tls`]).
    pub tls_port: Option<u16>,
    child: Option<Child>,
}

/// The server script of the machine's RabbitMQ (without the wrapper that changes user).
fn server() -> String {
    std::env::var("MBX_RABBITMQ_SERVER")
        .unwrap_or_else(|_| "/usr/lib/rabbitmq/bin/rabbitmq-server".to_owned())
}

impl RabbitNode {
    /// Starts a node and waits until it accepts AMQP connections.
    pub fn start() -> RabbitNode {
        Self::start_with(None)
    }

    /// [`RabbitNode::start`] with an AMQPS listener too, serving `certs`' `server.crt` and
    /// `server.key` (for `localhost`, see `certs.rs`).
    pub fn start_tls(certs: &std::path::Path) -> RabbitNode {
        Self::start_with(Some(certs))
    }

    fn start_with(tls: Option<&std::path::Path>) -> RabbitNode {
        let dir = tempfile::Builder::new()
            .prefix("mbx-rabbit-")
            .tempdir()
            .expect("node folder");
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n").expect("plugins file");
        let tls_port = tls.map(|_| free_port());
        if let (Some(certs), Some(port)) = (tls, tls_port) {
            let conf = format!(
                "listeners.ssl.default = {port}\n\
                 ssl_options.cacertfile = {ca}\n\
                 ssl_options.certfile = {crt}\n\
                 ssl_options.keyfile = {key}\n\
                 ssl_options.verify = verify_none\n\
                 ssl_options.fail_if_no_peer_cert = false\n",
                ca = certs.join("ca.crt").display(),
                crt = certs.join("server.crt").display(),
                key = certs.join("server.key").display(),
            );
            std::fs::write(dir.path().join("rabbitmq.conf"), conf).expect("rabbitmq.conf");
        }
        let mut node = RabbitNode {
            name: format!("mbx-test-{}-{}@localhost", std::process::id(), free_port()),
            port: free_port(),
            dist_port: free_port(),
            tls_port,
            dir,
            child: None,
        };
        node.restart();
        node
    }

    /// The node's AMQP URL for mbx addresses (the guest user: no credentials).
    pub fn url(&self) -> String {
        format!("amqp://127.0.0.1:{}/%2f", self.port)
    }

    /// The node's AMQP URL with the guest credentials, for the test's own client.
    pub fn client_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn accepts(&self) -> bool {
        let open = |port: u16| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        open(self.port) && self.tls_port.is_none_or(open)
    }

    /// Starts the node (again) on the same data and waits until it accepts connections.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the node is running");
        let d = self.dir.path();
        let path = |p: &str| d.join(p).display().to_string();
        let child = Command::new(server())
            // crash dumps and Mnesia cores land in the node's folder, not the test's
            .current_dir(d)
            .env("HOME", d)
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", path("mnesia"))
            .env("RABBITMQ_LOG_BASE", path("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", path("enabled_plugins"))
            .env("RABBITMQ_FEATURE_FLAGS_FILE", path("feature_flags"))
            .env("RABBITMQ_PLUGINS_EXPAND_DIR", path("plugins-expand"))
            .env("RABBITMQ_PID_FILE", path("pid"))
            .env("RABBITMQ_CONFIG_FILE", path("rabbitmq"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", path("advanced.config"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // its own process group: the Erlang VM the script starts is stopped with it
            // (killing the script alone left the VM running after the test)
            .process_group(0)
            .spawn()
            .expect("start rabbitmq-server (the machine's RabbitMQ installation)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.accepts() {
            assert!(
                Instant::now() < deadline,
                "the private RabbitMQ node did not accept connections within 60 s (logs in {})",
                d.join("log").display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the node (SIGTERM: RabbitMQ's clean shutdown) and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", "--", &format!("-{}", child.id())])
                .status();
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            while self.accepts() {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // the whole group: the script and the Erlang VM under it
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
        // the Erlang port mapper daemon the node started stays for other nodes
    }
}
