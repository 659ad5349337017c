//! The pinned command line, run as operators run it: the real binary, real ports (0), stdout
//! and stderr read as text.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_media-server");

struct Node(Child);
impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads lines from `child`'s stdout on a thread until one matches, bounded by `within`.
fn ready_line(child: &mut Child, within: Duration) -> String {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + within;
    let line = rx
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .expect("a line on stdout in time");
    // Nothing else is printed on stdout by a running node.
    assert!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "exactly one line on stdout"
    );
    line
}

fn addr_of<'a>(line: &'a str, key: &str) -> &'a str {
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key}= in {line:?}"))
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().expect("binary runs")
}

#[test]
fn node_prints_one_ready_line_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let mut child = Command::new(BIN)
        .args([
            "--data",
            data,
            "--http",
            "127.0.0.1:0",
            "--media",
            "127.0.0.1:0",
            "--quic",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = ready_line(&mut child, Duration::from_secs(30));
    let node = Node(child);
    assert!(line.starts_with("ready http=127.0.0.1:"), "{line}");
    for key in ["http", "media", "quic"] {
        let a: std::net::SocketAddr = addr_of(&line, key).parse().unwrap();
        assert_ne!(a.port(), 0, "{key} port was chosen");
    }
    let http = addr_of(&line, "http");

    // Token minted by the CLI for the running node's data dir is accepted by it.
    let out = run(&[
        "token", "--data", data, "--sub", "wall-1", "--role", "viewer", "--ttl", "600",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let token = token.trim_end_matches('\n');
    assert_eq!(
        token.split('.').count(),
        3,
        "only the token on stdout: {token:?}"
    );
    let claims = signaling::auth::decode_unverified(token).unwrap();
    assert_eq!(
        (claims.sub.as_str(), claims.role.as_str()),
        ("wall-1", "viewer")
    );
    assert_eq!(claims.exp - claims.iat, 600);
    assert_eq!(claims.fpr.len(), 64);

    let get = |path: &str, token: Option<&str>| -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(http).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let status = resp[9..12].parse().unwrap();
        (status, resp)
    };
    assert_eq!(get("/healthz", None).0, 200);
    assert_eq!(get("/api/streams", None).0, 401);
    let (status, body) = get("/api/streams", Some(token));
    assert_eq!(status, 200, "{body}");
    let (status, body) = get("/metrics", None);
    assert_eq!(status, 200);
    assert!(body.contains("yiwang_peers 0"), "{body}");

    // `revoke` on the data dir: the running node refuses the token within a second or so.
    let out = run(&["revoke", "--data", data, "--sub", "wall-1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(line.starts_with("{\"sub\":\"wall-1\",\"at\":"), "{line}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = get("/api/streams", Some(token));
        if status == 401 {
            assert!(body.contains("revoked"), "{body}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "revocation not applied: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(node);
}

#[test]
fn print_config_reflects_file_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("node.toml");
    std::fs::write(
        &cfg,
        "[node]\nid = \"county-7\"\n[http]\nlisten = \"127.0.0.1:9000\"\n",
    )
    .unwrap();
    let out = run(&[
        "--config",
        cfg.to_str().unwrap(),
        "--http",
        "127.0.0.1:9100",
        "--advertise",
        "10.1.2.3",
        "--print-config",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("id = \"county-7\""), "{text}");
    assert!(
        text.contains("listen = \"127.0.0.1:9100\""),
        "flag overrides file: {text}"
    );
    assert!(text.contains("advertise = \"10.1.2.3\""), "{text}");

    std::fs::write(&cfg, "[http]\nlisten_adress = \"1.2.3.4:5\"\n").unwrap();
    let out = run(&["--config", cfg.to_str().unwrap(), "--print-config"]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("listen_adress"), "unknown key named: {err}");
}

#[test]
fn help_and_bad_arguments() {
    for args in [&["--help"][..], &["token", "--help"]] {
        let out = run(args);
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"));
    }
    let out = run(&[
        "token", "--data", "/tmp/x", "--sub", "a", "--role", "captain",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("valid roles"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&[
        "token", "--data", "/tmp/x", "--sub", "../etc", "--role", "viewer",
    ]);
    assert!(!out.status.success());
    // revoke needs exactly one of --sub/--jti, and a real data dir.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = run(&["revoke", "--data", d]);
    assert!(!out.status.success());
    let out = run(&["revoke", "--data", d, "--sub", "a", "--jti", "b"]);
    assert!(!out.status.success());
    let out = run(&["revoke", "--data", d, "--sub", "a"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a node data directory"));
}

#[test]
fn ca_init_and_issue() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let ca = ca.to_str().unwrap();
    let out = run(&["ca", "init", "--dir", ca]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        lines.lines().count(),
        2,
        "certificate and key paths: {lines}"
    );
    assert!(lines.lines().all(|p| std::path::Path::new(p).exists()));
    // Never replaced.
    let out = run(&["ca", "init", "--dir", ca]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let nodes = dir.path().join("nodes");
    let nodes = nodes.to_str().unwrap();
    let out = run(&["ca", "issue", "county-7", "--dir", ca, "--out", nodes]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pem = std::fs::read_to_string(dir.path().join("nodes/county-7.pem")).unwrap();
    let key = std::fs::read_to_string(dir.path().join("nodes/county-7.key")).unwrap();
    let ca_pem = std::fs::read_to_string(dir.path().join("ca/ca.pem")).unwrap();
    media_server::cascade::tls::TrunkCredentials::from_pem(&ca_pem, &pem, &key)
        .expect("usable trunk credentials");
    let out = run(&["ca", "issue", "../evil", "--dir", ca]);
    assert!(!out.status.success());
    let out = run(&["ca", "issue", "county-8", "--dir", nodes]);
    assert!(!out.status.success(), "not a CA directory");
}

#[test]
fn a_changed_node_id_is_refused_once_tokens_exist() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let minted = run(&[
        "token", "--data", data, "--sub", "off-1", "--role", "officer",
    ]);
    assert!(minted.status.success(), "{minted:?}");
    let stored = std::fs::read_to_string(dir.path().join("data/node.id")).unwrap();
    let out = run(&[
        "--data",
        data,
        "--node-id",
        "renamed",
        "--http",
        "127.0.0.1:0",
        "--media",
        "127.0.0.1:0",
        "--quic",
        "127.0.0.1:0",
    ]);
    assert!(!out.status.success(), "the node must not start");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(stored.trim()) && err.contains("renamed") && err.contains("token"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("data/node.id")).unwrap(),
        stored,
        "node.id is left as it was"
    );
    // The same id is accepted by `token` too, another is refused there as well.
    let same = run(&[
        "token", "--data", data, "--sub", "off-2", "--role", "officer",
    ]);
    assert!(same.status.success());
    let other = run(&[
        "token",
        "--data",
        data,
        "--sub",
        "off-2",
        "--role",
        "officer",
        "--node-id",
        "renamed",
    ]);
    assert!(!other.status.success());
}

#[test]
fn config_paths_are_relative_to_the_file_and_a_missing_one_names_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        "[node]\ndata_dir = \"data\"\n[trunk]\nparent = \"127.0.0.1:9\"\nca = \"ca/ca.pem\"\n\
         cert = \"certs/n.pem\"\nkey = \"certs/n.key\"\n",
    )
    .unwrap();
    // Started from another working directory, as a service manager would.
    let out = Command::new(BIN)
        .current_dir("/")
        .args(["--config", file.to_str().unwrap(), "--print-config"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8_lossy(&out.stdout);
    let ca = dir.path().join("ca/ca.pem");
    assert!(
        printed.contains(&format!("ca = \"{}\"", ca.display())),
        "{printed}"
    );
    let out = Command::new(BIN)
        .current_dir("/")
        .args(["--config", file.to_str().unwrap(), "--http", "127.0.0.1:0"])
        .args(["--media", "127.0.0.1:0", "--quic", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("[trunk] ca = \"{}\"", ca.display())),
        "{err}"
    );
}

/// The nats-server binary the province bus runs (scripts/install-deps.sh installs it).
fn nats_server() -> String {
    std::env::var("NATS_SERVER").unwrap_or_else(|_| "nats-server".into())
}

/// A line of `log` (nats-server's) after `what`, polled until it appears, bounded.
fn log_addr(log: &std::path::Path, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(a) = text
            .lines()
            .find_map(|l| l.split_once(what).map(|(_, a)| a.trim().to_owned()))
        {
            return a.trim_start_matches("http://").to_owned();
        }
        assert!(Instant::now() < deadline, "{what} in {}", log.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn nats_config_writes_what_nats_server_runs_and_a_county_joins_its_city() {
    let dir = tempfile::tempdir().unwrap();
    let p = |s: &str| dir.path().join(s).to_str().unwrap().to_owned();
    assert!(run(&["ca", "init", "--dir", &p("ca")]).status.success());
    let out = run(&[
        "ca",
        "issue",
        "city-a",
        "--dir",
        &p("ca"),
        "--out",
        &p("certs"),
        "--san",
        "127.0.0.1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(run(&[
        "ca",
        "issue",
        "county",
        "--dir",
        &p("ca"),
        "--out",
        &p("certs")
    ])
    .status
    .success());
    let write = |name: &str, extra: &str| {
        let file = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &file,
            format!(
                "[node]\ndata_dir = \"{name}-data\"\n[trunk]\nnode = \"{name}\"\nca = \"ca/ca.pem\"\n\
                 cert = \"certs/{name}.pem\"\nkey = \"certs/{name}.key\"\n{extra}"
            ),
        )
        .unwrap();
        let out = run(&["nats-config", "--config", file.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the configuration holds the node's password");
        let check = Command::new(nats_server())
            .args(["-t", "-c", &path])
            .output()
            .unwrap();
        assert!(check.status.success(), "nats-server -t: {check:?}");
        path
    };
    let city_conf = write(
        "city-a",
        "[nats]\nenabled = true\nclient_listen = \"127.0.0.1:0\"\nleaf_listen = \"127.0.0.1:0\"\n\
         monitor_listen = \"127.0.0.1:0\"\nchildren = { county = [] }\n",
    );
    let text = std::fs::read_to_string(&city_conf).unwrap();
    assert!(text.contains("domain: \"city-a\""), "{text}");
    assert!(text.contains("\"yw.county.evt.>\""), "{text}");
    let city_log = dir.path().join("city-a.log");
    let _city = Node(
        Command::new(nats_server())
            .args(["-c", &city_conf, "-l", city_log.to_str().unwrap()])
            .spawn()
            .unwrap(),
    );
    let leaf = log_addr(&city_log, "Listening for leafnode connections on ");
    let monitor = log_addr(&city_log, "Starting http monitor on ");
    // The county's parents come from [trunk]; the first's leaf address is given, the second's
    // is the trunk host and parent_leaf_port.
    let county_conf = write(
        "county",
        &format!(
            "parent = \"127.0.0.1:4434\"\nsecond_parent = \"city-b.example:4434\"\n[nats]\n\
             enabled = true\nclient_listen = \"127.0.0.1:0\"\nparent_leaf = \"{leaf}\"\n"
        ),
    );
    let text = std::fs::read_to_string(&county_conf).unwrap();
    assert!(
        text.contains(&format!(
            "urls: [\"tls://{leaf}\", \"tls://city-b.example:7422\"]"
        )),
        "{text}"
    );
    let county_log = dir.path().join("county.log");
    let _county = Node(
        Command::new(nats_server())
            .args(["-c", &county_conf, "-l", county_log.to_str().unwrap()])
            .spawn()
            .unwrap(),
    );
    // The county's TLS leaf connection is up at the city (certificate checked both ways).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect(&monitor).unwrap();
        s.write_all(b"GET /leafz HTTP/1.0\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        if body.contains("\"leafnodes\": 1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "county's leaf connection: {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A child name that is no node name is refused, naming the key.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[trunk]\nnode = \"x\"\n[nats]\nchildren = { \"a b\" = [] }\n",
    )
    .unwrap();
    let out = run(&["nats-config", "--config", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("[nats] children"));
}

/// The pids in a nats-server log (each line starts `[PID]`), in order of first appearance.
fn nats_pids(log: &std::path::Path) -> Vec<u32> {
    let mut pids = Vec::new();
    for l in std::fs::read_to_string(log).unwrap_or_default().lines() {
        let pid = l
            .strip_prefix('[')
            .and_then(|r| r.split(']').next())
            .and_then(|p| p.parse().ok());
        if let Some(pid) = pid {
            if l.contains("Server is ready") && !pids.contains(&pid) {
                pids.push(pid);
            }
        }
    }
    pids
}

#[test]
fn a_node_with_nats_enabled_supervises_its_nats_server() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        "[node]\ndata_dir = \"data\"\n[nats]\nenabled = true\nclient_listen = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let mut node = Node(
        Command::new(BIN)
            .args(["--config", file.to_str().unwrap()])
            .args([
                "--http",
                "127.0.0.1:0",
                "--media",
                "127.0.0.1:0",
                "--quic",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    ready_line(&mut node.0, Duration::from_secs(20));
    let log = dir.path().join("data/nats/nats-server.log");
    let wait_pids = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let pids = nats_pids(&log);
            if pids.len() >= n {
                return pids;
            }
            assert!(
                Instant::now() < deadline,
                "{n} nats-server start(s) in {}",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let first = wait_pids(1)[0];
    let port_open = |addr: &str| std::net::TcpStream::connect(addr).is_ok();
    let addr = log_addr(&log, "Listening for client connections on ");
    assert!(port_open(&addr));
    // Killed: the node starts it again (after its backoff).
    let killed = Command::new("kill")
        .args(["-9", &first.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let pids = wait_pids(2);
    assert_ne!(pids[1], first, "a new nats-server process");
    // The node stops (SIGTERM): its nats-server stops with it.
    let second = pids[1];
    let term = Command::new("kill")
        .args([&node.0.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the node exits on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{second}")).exists()
        && !std::fs::read_to_string(format!("/proc/{second}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
    {
        assert!(
            Instant::now() < deadline,
            "nats-server {second} stops with the node"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
