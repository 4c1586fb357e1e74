//! A real headless Chromium driven through WebDriver (Debian's `chromium` and
//! `chromium-driver`, installed by `.ci/run`): each test starts its own chromedriver on a
//! free port and one browser session, both gone when the guard is dropped.

use std::process::{Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};

use crate::{eventually, free_port, Reaped};

/// chromedriver (`MBX_TEST_CHROMEDRIVER`, default `/usr/bin/chromedriver`).
fn chromedriver() -> String {
    std::env::var("MBX_TEST_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into())
}

/// Chromium (`MBX_TEST_CHROMIUM`, default `/usr/bin/chromium`).
fn chromium() -> String {
    std::env::var("MBX_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

/// A browser session and its driver process.
pub struct Browser {
    pub client: Client,
    _driver: Reaped,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium window of 1400×1000.
    pub async fn start() -> Browser {
        for (what, path) in [("chromedriver", chromedriver()), ("chromium", chromium())] {
            assert!(
                std::path::Path::new(&path).exists(),
                "{what} is missing at {path}: install Debian's chromium and chromium-driver \
                 (.ci/run does), or point MBX_TEST_CHROMEDRIVER / MBX_TEST_CHROMIUM at them"
            );
        }
        let port = free_port();
        let driver = Reaped(
            Command::new(chromedriver())
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn chromedriver"),
        );
        let url = format!("http://127.0.0.1:{port}");
        let up = eventually(Duration::from_secs(20), || async {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await;
        assert!(up, "chromedriver did not listen on port {port} within 20 s");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": chromium(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1400,1000"],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&url)
            .await
            .expect("a WebDriver session in headless Chromium");
        Browser {
            client,
            _driver: driver,
        }
    }

    /// Ends the browser session (the driver goes with the guard).
    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}
