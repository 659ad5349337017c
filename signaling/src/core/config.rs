//! The core's tunables: one struct with the values the node runs with as its `Default`.

/// Tunables of the core; the defaults are what the node runs with.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// A connection must send `hello` within this time (ms).
    pub hello_timeout_ms: u64,
    /// A detached session can be resumed for this long (ms).
    pub resume_grace_ms: u64,
    /// A detached session's subject stays "online" this long (ms), so a reconnect does not flap
    /// presence. With the transports' 10 s dead-peer detection a dead tablet shows offline
    /// within 10 + 4 = 14 s.
    pub presence_linger_ms: u64,
    /// At most one position fan-out per sender per this interval (ms); extra reports are
    /// coalesced and the newest goes out at the end of the interval.
    pub position_interval_ms: u64,
    /// Events kept per session for replay after a reconnect.
    pub replay_buffer: usize,
    /// Sustained messages per second per connection.
    pub rate_per_sec: f64,
    /// Burst of messages per connection.
    pub rate_burst: f64,
    /// Messages refused for rate in a row before the connection is closed.
    pub flood_close_after: u32,
    /// Largest log page.
    pub log_page_max: u32,
    /// At most this many `telemetry` events per drone per second to each console; extra reports
    /// are merged and the newest state goes out at the end of the interval.
    pub telemetry_hz: u32,
    /// Drone commands per drone: sustained rate per second.
    pub drone_command_per_sec: f64,
    /// Drone commands per drone: burst.
    pub drone_command_burst: f64,
    /// A command the bridge has not finally acknowledged is forgotten after this long (ms); a
    /// later ack for it is `not_found`.
    pub drone_command_ttl_ms: u64,
    /// Most sessions one subject may hold at once (attached, or detached and awaiting resume),
    /// for roles other than the consoles': a tablet, a bridge or a camera needs one, two while
    /// a reconnect overlaps the old connection's grace. Resuming a session is never refused.
    pub max_sessions_per_subject: usize,
    /// The same cap for the console roles (admin, commander, operator): one person may keep a
    /// wall with several screens, a console and a phone open under one subject.
    pub max_sessions_per_console: usize,
    /// Most sessions on the node (attached or awaiting resume), whatever the subject.
    pub max_sessions: usize,
    /// Most drones one bridge subject may report (drones are never forgotten while the node
    /// runs, so one token must not be able to create them without bound).
    pub max_drones_per_bridge: usize,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            hello_timeout_ms: 10_000,
            resume_grace_ms: 120_000,
            presence_linger_ms: 4_000,
            position_interval_ms: 200,
            replay_buffer: 4096,
            rate_per_sec: 100.0,
            rate_burst: 400.0,
            flood_close_after: 200,
            log_page_max: 500,
            telemetry_hz: 5,
            drone_command_per_sec: 1.0,
            drone_command_burst: 5.0,
            drone_command_ttl_ms: 60_000,
            max_drones_per_bridge: 64,
            max_sessions_per_subject: 8,
            max_sessions_per_console: 32,
            max_sessions: 20_000,
        }
    }
}
