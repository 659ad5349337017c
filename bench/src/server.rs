//! The real `media-server` as a child process: temp data dir, loopback listeners, ready line,
//! tokens, `/metrics`. Killed and reaped on drop.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::http;

/// A running `media-server` child.
pub struct Server {
    child: Child,
    binary: PathBuf,
    dir: tempfile::TempDir,
    /// HTTP listener (WHIP/WHEP, `/metrics`).
    pub http: SocketAddr,
    /// The process id, as a string for `/proc/PID/...`.
    pub pid: String,
}

impl Server {
    /// Starts `binary` on loopback ports and waits (at most `timeout`) for its ready line; with
    /// `config` (TOML), that is written to a file and passed as `--config`.
    pub fn start_with(binary: &Path, timeout: Duration, config: Option<&str>) -> Result<Server> {
        let dir = tempfile::Builder::new()
            .prefix("yiwang-bench-")
            .tempdir()
            .context("temp data dir")?;
        let log = std::fs::File::create(dir.path().join("server.log")).context("server log")?;
        let mut cmd = Command::new(binary);
        if let Some(toml) = config {
            let path = dir.path().join("config.toml");
            std::fs::write(&path, toml).context("write config")?;
            cmd.arg("--config").arg(path);
        }
        let mut child = cmd
            .args(["--data"])
            .arg(dir.path().join("data"))
            .args([
                "--http",
                "127.0.0.1:0",
                "--media",
                "127.0.0.1:0",
                "--quic",
                "127.0.0.1:0",
            ])
            .env(
                "RUST_LOG",
                std::env::var("YIWANG_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        let pid = child.id().to_string();
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = mpsc::channel();
        // Reads the ready line, then keeps draining stdout so the child never blocks on it.
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            for _ in lines {}
        });
        let mut server = Server {
            child,
            binary: binary.to_owned(),
            dir,
            http: "0.0.0.0:0".parse()?,
            pid,
        };
        let line = match rx.recv_timeout(timeout) {
            Ok(Some(Ok(line))) => line,
            Ok(_) => bail!(
                "media-server exited before its ready line; log: {}",
                server.log_tail()
            ),
            Err(_) => bail!(
                "no ready line within {timeout:?}; log: {}",
                server.log_tail()
            ),
        };
        let http = line
            .strip_prefix("ready ")
            .and_then(|r| r.split(' ').find_map(|kv| kv.strip_prefix("http=")))
            .with_context(|| format!("unexpected first line {line:?}"))?;
        server.http = http
            .parse()
            .with_context(|| format!("bad http address in {line:?}"))?;
        Ok(server)
    }

    /// Mints a token with `media-server token` (bounded by `timeout`).
    pub fn token(&self, sub: &str, role: &str, timeout: Duration) -> Result<String> {
        let mut child = Command::new(&self.binary)
            .arg("token")
            .arg("--data")
            .arg(self.dir.path().join("data"))
            .args(["--sub", sub, "--role", role])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("start media-server token")?;
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("media-server token took longer than {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = child.wait_with_output()?;
        if !status.success() {
            bail!(
                "media-server token failed ({status}): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let token = String::from_utf8(out.stdout)?.trim().to_owned();
        if token.is_empty() {
            bail!("media-server token printed nothing");
        }
        Ok(token)
    }

    /// The unlabelled samples of `/metrics`.
    pub fn metrics(&self) -> Result<HashMap<String, u64>> {
        let r = http::request(
            self.http,
            "GET",
            "/metrics",
            &[],
            &[],
            Duration::from_secs(5),
        )?;
        if r.status != 200 {
            bail!("/metrics answered {}", r.status);
        }
        Ok(r.text()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.contains('{'))
            .filter_map(|l| l.split_once(' '))
            .filter_map(|(k, v)| Some((k.to_owned(), v.trim().parse().ok()?)))
            .collect())
    }

    /// Ends a WHIP/WHEP session: `DELETE` its `Location` path; true on 200/204.
    pub fn delete(&self, location: &str) -> Result<bool> {
        let path = match location.find("://") {
            Some(i) => location[i + 3..]
                .find('/')
                .map_or("/", |j| &location[i + 3 + j..]),
            None => location,
        };
        let r = http::request(self.http, "DELETE", path, &[], &[], Duration::from_secs(5))?;
        Ok(matches!(r.status, 200 | 204))
    }

    /// Whether the child is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last lines of the server's stderr log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
        if tail.is_empty() {
            "(empty)".into()
        } else {
            tail
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
