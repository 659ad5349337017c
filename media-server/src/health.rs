//! What `GET /healthz` reports and what ends a node that can no longer serve.
//!
//! Two halves:
//! - [`Watchdog`]: the node's essential tasks (the media task, the signaling timers, the QUIC
//!   acceptor, the HTTP server, the trunk sync) run under it. A task that returns or panics is
//!   recorded with its name; [`Watchdog::failed`] resolves with the first such failure, and the
//!   binary exits non-zero on it (a supervisor such as systemd restarts it): a node whose media
//!   task died must not keep claiming to be healthy.
//! - [`check`]: one probe per part, each bounded by [`PROBE_TIMEOUT`]: the media task answers a
//!   ping through its command channel, the signaling core thread answers one through its queue,
//!   the office store takes (and rolls back) a write transaction on its file, the trunk shell
//!   answers a status request. The answer names every part that failed; docs/api.md pins the format.
//!
//! No policy beyond that lives here: whether to restart is the supervisor's business.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt as _;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::cascade::shell::TrunkHandle;
use crate::media::MediaHandle;
use crate::signal::Hub;

/// Longest any one probe may take before its part is reported as not answering.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// An essential task that stopped, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFailure {
    /// The task's name (`media`, `signaling`, `quic`, `http`, `trunk`).
    pub task: &'static str,
    /// `"ended"` or `"panicked: MESSAGE"`.
    pub how: String,
}

impl std::fmt::Display for TaskFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the {} task {}", self.task, self.how)
    }
}

/// Watches the node's essential tasks.
#[derive(Debug, Default)]
pub struct Watchdog {
    failures: Mutex<Vec<TaskFailure>>,
    notify: Notify,
}

impl Watchdog {
    /// A watchdog with nothing under it.
    pub fn new() -> Arc<Watchdog> {
        Arc::new(Watchdog::default())
    }

    /// Spawns `task` as the essential task `name`: if it returns or panics, that is recorded and
    /// [`Watchdog::failed`] wakes. Aborting the returned handle (node shutdown) records nothing.
    pub fn spawn<F>(self: &Arc<Self>, name: &'static str, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let me = self.clone();
        tokio::spawn(async move {
            let how = match AssertUnwindSafe(task).catch_unwind().await {
                Ok(()) => "ended".to_string(),
                Err(panic) => format!("panicked: {}", panic_message(&*panic)),
            };
            tracing::error!(task = name, "essential task stopped: {how}");
            me.record(TaskFailure { task: name, how });
        })
    }

    /// Watches an already spawned essential task `name` the way [`Watchdog::spawn`] does.
    /// Aborting the returned handle (node shutdown) aborts `task` too and records nothing.
    pub fn watch(self: &Arc<Self>, name: &'static str, task: JoinHandle<()>) -> JoinHandle<()> {
        /// Aborts the watched task when the watcher is dropped (aborted) before it finished.
        struct AbortOnDrop(tokio::task::AbortHandle);
        impl Drop for AbortOnDrop {
            fn drop(&mut self) {
                self.0.abort();
            }
        }
        let me = self.clone();
        tokio::spawn(async move {
            let _guard = AbortOnDrop(task.abort_handle());
            let how = match task.await {
                Ok(()) => "ended".to_string(),
                Err(e) if e.is_panic() => {
                    format!("panicked: {}", panic_message(&*e.into_panic()))
                }
                Err(_) => return, // aborted: the node is shutting down
            };
            tracing::error!(task = name, "essential task stopped: {how}");
            me.record(TaskFailure { task: name, how });
        })
    }

    fn record(&self, f: TaskFailure) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(f);
        self.notify.notify_waiters();
        self.notify.notify_one();
    }

    /// Every essential task that stopped so far, in order.
    pub fn failures(&self) -> Vec<TaskFailure> {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Resolves with the first essential task that stopped (at once if one already has).
    pub async fn failed(&self) -> TaskFailure {
        loop {
            let notified = self.notify.notified();
            if let Some(f) = self.failures().into_iter().next() {
                return f;
            }
            notified.await;
        }
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

/// What the probes need.
#[derive(Clone)]
pub struct Probes {
    /// The node's essential tasks.
    pub watchdog: Arc<Watchdog>,
    /// The media task.
    pub media: MediaHandle,
    /// The signaling hub.
    pub hub: Arc<Hub>,
    /// The office store's file.
    pub store: PathBuf,
    /// The trunk shell, when `[trunk]` is configured.
    pub trunk: Option<TrunkHandle>,
}

/// One part's state in `GET /healthz`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Part {
    /// `ok`, `degraded` (works, but something it leads to is down: trunks only) or `failed`.
    pub status: &'static str,
    /// What is wrong, when not `ok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Part {
    fn ok() -> Part {
        Part {
            status: "ok",
            detail: None,
        }
    }
    fn failed(detail: impl Into<String>) -> Part {
        Part {
            status: "failed",
            detail: Some(detail.into()),
        }
    }
    fn from(r: Result<(), String>) -> Part {
        r.map_or_else(Part::failed, |()| Part::ok())
    }
}

/// The answer of `GET /healthz`.
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    /// `ok`, `degraded` or `failed` (the worst part; `failed` is answered with 503).
    pub status: &'static str,
    /// This node's id.
    pub node: String,
    /// The parts that are not `ok`, by name (empty when all are).
    pub failed: Vec<&'static str>,
    /// The media task.
    pub media: Part,
    /// The signaling hub (its core and timers, the QUIC acceptor).
    pub signaling: Part,
    /// The office store.
    pub store: Part,
    /// The trunks; `null` when `[trunk]` is not configured.
    pub trunks: Option<Part>,
}

/// Runs every probe (concurrently, each bounded by [`PROBE_TIMEOUT`]).
pub async fn check(node: &str, p: &Probes) -> Health {
    let stopped = p.watchdog.failures();
    let task_down = |names: &[&str]| {
        stopped
            .iter()
            .find(|f| names.contains(&f.task))
            .map(|f| f.to_string())
    };
    let media_down = task_down(&["media"]);
    let signaling_down = task_down(&["signaling", "quic"]);
    let trunk_down = task_down(&["trunk"]);

    let media = async {
        if let Some(d) = media_down {
            return Err(d);
        }
        match tokio::time::timeout(PROBE_TIMEOUT, p.media.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err("the media task has stopped".to_string()),
            Err(_) => Err(format!(
                "the media task did not answer within {} ms",
                PROBE_TIMEOUT.as_millis()
            )),
        }
    };
    let signaling = async {
        if let Some(d) = signaling_down {
            return Err(d);
        }
        if !p.hub.core_running() {
            return Err("the signaling core thread has stopped".to_string());
        }
        match tokio::time::timeout(PROBE_TIMEOUT, p.hub.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err("the signaling core thread has stopped".to_string()),
            Err(_) => Err(format!(
                "the signaling core did not answer within {} ms",
                PROBE_TIMEOUT.as_millis()
            )),
        }
    };
    let store = async {
        let path = p.store.clone();
        let probe = tokio::task::spawn_blocking(move || probe_store(&path));
        match tokio::time::timeout(PROBE_TIMEOUT + Duration::from_millis(500), probe).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("the store probe panicked".to_string()),
            Err(_) => Err(format!(
                "the store did not answer within {} ms",
                PROBE_TIMEOUT.as_millis()
            )),
        }
    };
    let trunks = async {
        let handle = p.trunk.as_ref()?;
        if let Some(d) = trunk_down {
            return Some(Part::failed(d));
        }
        Some(
            match tokio::time::timeout(PROBE_TIMEOUT, handle.status()).await {
                Ok(Some(s)) => {
                    let down: Vec<String> = s
                        .uplinks
                        .iter()
                        .filter(|u| !u.up)
                        .map(|u| match (&u.node, &u.addr) {
                            (Some(n), _) => n.clone(),
                            (None, Some(a)) => a.clone(),
                            (None, None) => u.kind.to_string(),
                        })
                        .collect();
                    if down.is_empty() {
                        Part::ok()
                    } else {
                        Part {
                            status: "degraded",
                            detail: Some(format!("no trunk up to {}", down.join(", "))),
                        }
                    }
                }
                Ok(None) => Part::failed("the trunk shell has stopped"),
                Err(_) => Part::failed(format!(
                    "the trunk shell did not answer within {} ms",
                    PROBE_TIMEOUT.as_millis()
                )),
            },
        )
    };
    let (media, signaling, store, trunks) = tokio::join!(media, signaling, store, trunks);
    let (media, signaling, store) = (Part::from(media), Part::from(signaling), Part::from(store));

    let mut failed = Vec::new();
    let mut status = "ok";
    let parts = [
        ("media", Some(&media)),
        ("signaling", Some(&signaling)),
        ("store", Some(&store)),
        ("trunks", trunks.as_ref()),
    ];
    for (name, part) in parts {
        let Some(part) = part else { continue };
        match part.status {
            "failed" => {
                failed.push(name);
                status = "failed";
            }
            "degraded" => {
                failed.push(name);
                if status == "ok" {
                    status = "degraded";
                }
            }
            _ => {}
        }
    }
    Health {
        status,
        node: node.to_string(),
        failed,
        media,
        signaling,
        store,
        trunks,
    }
}

/// Takes the store's write lock and lets it go again: proves the file is there, is a database,
/// and can be written now (another process holding it locked, a read-only or vanished file all
/// fail). Waits at most [`PROBE_TIMEOUT`] for the lock.
fn probe_store(path: &std::path::Path) -> Result<(), String> {
    use rusqlite::{Connection, OpenFlags};
    if !path.exists() {
        return Err(format!("{} is gone", path.display()));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    conn.busy_timeout(PROBE_TIMEOUT)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    conn.execute_batch("BEGIN IMMEDIATE; SELECT count(*) FROM sqlite_master; ROLLBACK;")
        .map_err(|e| format!("cannot take a write transaction: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_panics_is_reported_with_its_message() {
        let w = Watchdog::new();
        let _ok = w.spawn("quic", std::future::pending());
        let _bad = w.spawn("media", async { panic!("boom") });
        let f = tokio::time::timeout(Duration::from_secs(5), w.failed())
            .await
            .expect("a failure is reported");
        assert_eq!(f.task, "media");
        assert_eq!(f.how, "panicked: boom");
        assert_eq!(w.failures().len(), 1);
    }

    #[tokio::test]
    async fn an_aborted_task_is_not_a_failure() {
        let w = Watchdog::new();
        let h = w.spawn("http", std::future::pending());
        h.abort();
        let _ = h.await;
        assert!(w.failures().is_empty());
    }

    #[test]
    fn a_store_locked_by_another_writer_fails_its_probe_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("office.db");
        let holder = rusqlite::Connection::open(&path).unwrap();
        holder
            .execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x);")
            .unwrap();
        assert_eq!(probe_store(&path), Ok(()));
        holder.execute_batch("BEGIN EXCLUSIVE;").unwrap();
        let err = probe_store(&path).unwrap_err();
        assert!(err.contains("write transaction"), "{err}");
        holder.execute_batch("ROLLBACK;").unwrap();
        assert_eq!(probe_store(&path), Ok(()));
    }

    #[test]
    fn a_vanished_store_file_fails_its_probe() {
        let dir = tempfile::tempdir().unwrap();
        let err = probe_store(&dir.path().join("office.db")).unwrap_err();
        assert!(err.contains("is gone"), "{err}");
    }
}
