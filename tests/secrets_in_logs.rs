//! No secret reaches a log at any level (docs/RELIABILITY.md, docs/operations.md: `MBX_LOG`).
//!
//! Every kind of secret mbx handles — an HTTP receive location's bearer token, AMQP, MQTT and
//! SMTP passwords, a group link's URL, the console's token and the MessageBox URL's
//! password — is given behind an `env:`/`file:` reference (or the environment), a message
//! goes through each, and the host and the console run at `MBX_LOG=trace`. Their logs must
//! hold none of the values: not as text, not base64-encoded (SMTP `AUTH PLAIN`, HTTP
//! basic), not as a list of bytes (an AMQP `StartOk` frame printed by lapin) and not as hex.

use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use mbx_e2e::brokers::{amqp, mqtt};
use mbx_e2e::{bin, count, database_url, free_port, messagebox, wait_for, Mbx, OtherGroup, Reaped};
use sqlx::PgPool;

const DEADLINE: Duration = Duration::from_secs(60);

/// An SMTP server on loopback that offers STARTTLS with `server.crt` and takes any
/// `AUTH` (aiosmtpd's command line has no authenticator), writing each mail into a folder.
const SMTP_SERVER: &str = r#"
import os, signal, ssl, sys, time
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
port, cert, key, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
class Keep:
    async def handle_DATA(self, server, session, envelope):
        with open(os.path.join(out, str(time.time_ns())), "wb") as f:
            f.write(envelope.content)
        return "250 OK"
tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
tls.load_cert_chain(cert, key)
controller = Controller(Keep(), hostname="127.0.0.1", port=port, tls_context=tls,
    require_starttls=True, auth_required=True,
    authenticator=lambda server, session, envelope, mechanism, data: AuthResult(success=True))
controller.start()
signal.pause()
"#;

/// Every way a secret can be written into a log that we know of.
fn encodings(secret: &str, user: &str) -> Vec<String> {
    let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
    let bytes = secret.as_bytes();
    vec![
        secret.to_owned(),
        b64(bytes),
        // SASL PLAIN (SMTP AUTH PLAIN, AMQP PLAIN) and HTTP basic
        b64(format!("\0{user}\0{secret}").as_bytes()),
        b64(format!("{user}:{secret}").as_bytes()),
        // a byte list as Rust's Debug prints one, and without the spaces
        bytes
            .iter()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        bytes
            .iter()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(","),
        bytes.iter().map(|b| format!("{b:02x}")).collect(),
        bytes.iter().map(|b| format!("{b:02X}")).collect(),
        // escaped as Rust's Debug of a byte string shows printable bytes: the text itself
    ]
}

/// The last lines of a log, for a failure's message.
fn tail(log: &std::path::Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let _ = std::fs::write("/tmp/secrets-host.log", &text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("run rabbitmqctl (the machine's RabbitMQ)");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn no_secret_is_logged_at_trace(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let dir = tempfile::tempdir().unwrap();
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let secret = |kind: &str| format!("Zq{kind}Secret{}", &tag[..12]);
    let (db_pw, bearer, amqp_pw, mqtt_pw, smtp_pw, link_pw, console_token) = (
        secret("Db"),
        secret("Bearer"),
        secret("Amqp"),
        secret("Mqtt"),
        secret("Smtp"),
        secret("Link"),
        secret("Console"),
    );
    let amqp_user = format!("mbx-log-{}", &tag[..8]);

    // the MessageBox URL with a password (trust authentication ignores it; the host
    // still holds it in its connect options)
    let url = database_url(&pool);
    let url_with_password = url.replacen("postgres@", &format!("postgres:{db_pw}@"), 1);
    assert_ne!(
        url, url_with_password,
        "the test URL names the user postgres"
    );
    let cli = Mbx::new(url.clone());

    // AMQP: a user of our own with the password, and a queue to deliver to
    rabbitmqctl(&["add_user", &amqp_user, &amqp_pw]);
    rabbitmqctl(&["set_permissions", "-p", "/", &amqp_user, ".*", ".*", ".*"]);
    let mut broker = amqp::Broker::connect().await;
    let queue = amqp::unique("logs");
    broker.queue(&queue, &[]).await;

    // MQTT: Mosquitto takes the credentials (anonymous access does not check them)
    let topic = mqtt::unique_topic("logs");
    let (_got, mut mqtt_count) = mqtt::subscribe(&topic).await;

    // SMTP over STARTTLS with AUTH
    mbx_e2e::certs::ca(dir.path(), "ca");
    mbx_e2e::certs::server_cert(dir.path(), "ca");
    let mails = dir.path().join("mails");
    std::fs::create_dir(&mails).unwrap();
    let smtp_port = free_port();
    let _smtp = Reaped(
        Command::new("python3")
            .args(["-c", SMTP_SERVER, &smtp_port.to_string()])
            .arg(dir.path().join("server.crt"))
            .arg(dir.path().join("server.key"))
            .arg(&mails)
            .stdout(Stdio::null())
            .spawn()
            .expect("python3 with aiosmtpd (tests/requirements.txt)"),
    );
    wait_for("the SMTP server listens", DEADLINE, || async {
        tokio::net::TcpStream::connect(("127.0.0.1", smtp_port))
            .await
            .is_ok()
    })
    .await;
    let smtp_pw_file = dir.path().join("smtp-password");
    std::fs::write(&smtp_pw_file, &smtp_pw).unwrap();
    let bearer_file = dir.path().join("bearer");
    std::fs::write(&bearer_file, format!("{bearer}\n")).unwrap();

    // a group link whose URL (with a password) is a reference
    let managers = OtherGroup::create(&pool, "managers").await;
    let link_url = managers
        .url
        .replacen("postgres@", &format!("postgres:{link_pw}@"), 1);
    let secrets_env = [
        ("MBX_TEST_AMQP_PASSWORD", amqp_pw.as_str()),
        ("MBX_TEST_MQTT_PASSWORD", mqtt_pw.as_str()),
        ("MBX_TEST_LINK_URL", link_url.as_str()),
        ("MBX_TEST_CONSOLE_TOKEN", console_token.as_str()),
    ];
    let result = async {
        let mcli = Mbx::new(managers.url.clone());
        mcli.ok(&["receive-port", "create", "inbound"]);
        let linked = Command::new(bin("mbx"))
            .args(["group", "link", "add", "managers", "--target-url"])
            .arg("env:MBX_TEST_LINK_URL")
            .env("MBX_DATABASE_URL", &url)
            .env("MBX_TEST_LINK_URL", &link_url)
            .output()
            .unwrap();
        assert!(linked.status.success(), "{linked:?}");

        cli.ok(&["receive-port", "create", "in"]);
        let bearer_setting = format!("bearer_token=file:{}", bearer_file.display());
        cli.ok(&[
            "receive-location",
            "create",
            "in-http",
            "--port",
            "in",
            "--address",
            "http:///secret-orders",
            "--set",
            &bearer_setting,
        ]);
        cli.ok(&["receive-location", "enable", "in-http"]);
        let filter = r#"mbx.ReceivePortName == "in""#;
        let amqp_address = format!("amqp://{amqp_user}@127.0.0.1:5672/%2f?queue={queue}");
        let ca_file = format!("ca_file={}", dir.path().join("ca.crt").display());
        let smtp_server = format!("smtp_server=localhost:{smtp_port}");
        let smtp_password = format!("password=file:{}", smtp_pw_file.display());
        let mqtt_address = format!("mqtt://mbx-log@127.0.0.1:1883/{topic}");
        for (name, address, settings) in [
            (
                "to-amqp",
                amqp_address.as_str(),
                vec!["password=env:MBX_TEST_AMQP_PASSWORD"],
            ),
            (
                "to-mqtt",
                mqtt_address.as_str(),
                vec!["password=env:MBX_TEST_MQTT_PASSWORD"],
            ),
            (
                "to-smtp",
                "mailto:ops@example.org",
                vec![
                    smtp_server.as_str(),
                    "tls=starttls",
                    "from=mbx@example.org",
                    "user=mbx-log",
                    smtp_password.as_str(),
                    ca_file.as_str(),
                ],
            ),
            ("to-managers", "mbx://managers/inbound", vec![]),
        ] {
            let mut args = vec![
                "send-port",
                "create",
                name,
                "--address",
                address,
                "--filter",
                filter,
                "--start",
                "--retry-interval",
                "1s",
            ];
            for s in &settings {
                args.extend(["--set", s]);
            }
            cli.ok(&args);
        }

        // the host and the console at MBX_LOG=trace, their logs kept
        let (http, admin) = (free_port(), free_port());
        let host_log = dir.path().join("host.log");
        let host_out = std::fs::File::create(&host_log).unwrap();
        let host = Reaped(
            Command::new(bin("mbx-host"))
                .args(mbx_e2e::http_host_args(http, admin))
                .args(["--host", "default"])
                .env("MBX_DATABASE_URL", &url_with_password)
                .env("MBX_LOG", "trace")
                .envs(secrets_env)
                .stdout(host_out.try_clone().unwrap())
                .stderr(host_out)
                .spawn()
                .unwrap(),
        );
        let console_log = dir.path().join("console.log");
        let console = mbx_e2e::start_console(
            &url_with_password,
            &["--token", "env:MBX_TEST_CONSOLE_TOKEN"],
            &[&secrets_env[..], &[("MBX_LOG", "trace")]].concat(),
            std::fs::File::create(&console_log).unwrap().into(),
        );
        let console_url = console.url.clone();

        // a message through every adapter, with the bearer token
        let client = reqwest::Client::new();
        let last = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let taken = mbx_e2e::eventually(DEADLINE, || {
            let (client, bearer, last) = (client.clone(), bearer.clone(), last.clone());
            async move {
                let answer = client
                    .post(format!("http://127.0.0.1:{http}/secret-orders"))
                    .bearer_auth(&bearer)
                    .body("<order>secret-test</order>")
                    .send()
                    .await;
                *last.lock().unwrap() = format!("{answer:?}");
                answer.is_ok_and(|r| r.status() == 202)
            }
        })
        .await;
        assert!(
            taken,
            "the host takes the request: {}; status: {}; its log ends: {}",
            last.lock().unwrap(),
            cli.run(&["status"]).stdout,
            tail(&host_log)
        );
        wait_for("delivered to RabbitMQ", DEADLINE, || async {
            broker.ready(&queue).await >= 1
        })
        .await;
        tokio::time::timeout(DEADLINE, mqtt_count.wait_for(|n| *n >= 1))
            .await
            .expect("delivered to Mosquitto")
            .unwrap();
        wait_for("delivered by SMTP", DEADLINE, || async {
            std::fs::read_dir(&mails).unwrap().count() >= 1
        })
        .await;
        wait_for("forwarded to the other group", DEADLINE, || async {
            count(managers.mbx.pool(), "SELECT count(*) FROM forward_inbox").await
                + count(managers.mbx.pool(), "SELECT count(*) FROM messages").await
                >= 1
        })
        .await;
        wait_for("every delivery completed", DEADLINE, || async {
            count(&pool, "SELECT count(*) FROM deliveries").await == 0
        })
        .await;
        // the console: a login with the token and a page as a script would fetch it
        let login = client
            .post(format!("{console_url}/login"))
            .form(&[("token", console_token.as_str())])
            .send()
            .await
            .unwrap();
        assert!(login.status().is_success() || login.status().is_redirection());
        let page = client
            .get(format!("{console_url}/"))
            .bearer_auth(&console_token)
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200);
        drop(host);
        drop(console);
        // the MessageBox CLI too, at trace
        let stats = Command::new(bin("mbx"))
            .args(["stats"])
            .env("MBX_DATABASE_URL", &url_with_password)
            .env("MBX_LOG", "trace")
            .output()
            .unwrap();
        assert!(stats.status.success(), "{stats:?}");
        // a filter that does not parse is named, and the default applies
        let bad = Command::new(bin("mbx"))
            .args(["stats"])
            .env("MBX_DATABASE_URL", &url)
            .env("MBX_LOG", "mbx_host=loud")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&bad.stderr);
        assert!(
            bad.status.success() && err.contains("MBX_LOG") && err.contains("loud"),
            "{bad:?}"
        );

        let logs = [
            ("mbx-host", std::fs::read_to_string(&host_log).unwrap()),
            (
                "mbx console",
                std::fs::read_to_string(&console_log).unwrap(),
            ),
            (
                "mbx stats",
                String::from_utf8_lossy(&stats.stderr).into_owned(),
            ),
        ];
        // MBX_LOG took effect (the default is info), so the check below reads what a
        // trace-level log holds
        assert!(
            logs[0].1.contains("DEBUG"),
            "the host logged below info: {}",
            logs[0].1
        );
        for (secret, user, what) in [
            (&db_pw, "postgres", "the MessageBox URL's password"),
            (&bearer, "", "an HTTP bearer token"),
            (&amqp_pw, amqp_user.as_str(), "an AMQP password"),
            (&mqtt_pw, "mbx-log", "an MQTT password"),
            (&smtp_pw, "mbx-log", "an SMTP password"),
            (&link_pw, "postgres", "a group link's password"),
            (&console_token, "", "the console token"),
        ] {
            for (process, log) in &logs {
                for form in encodings(secret, user) {
                    assert!(
                        !log.contains(&form),
                        "{what} is in the log of {process} as {form:?}"
                    );
                }
            }
        }
    }
    .await;
    drop(mbx);
    managers.drop_database().await;
    let _ = Command::new("rabbitmqctl")
        .args(["delete_user", &amqp_user])
        .output();
    broker.cleanup().await;
    result
}
