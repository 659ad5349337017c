//! `field-client run`: stay connected, print what arrives, report positions, publish camera and microphone.
//!
//! One signaling session ([`signaling::client`]: reconnects and resumes by itself, mail
//! delivered once and in order across reconnects) and, around it, tasks: the position source
//! and reporter ([`crate::position`]), the publisher ([`crate::media`]).
//! Runs until SIGINT or SIGTERM, then says `bye` so the node ends the session at once.

use std::time::Duration;

use serde_json::{json, Value};
use signaling::client::{Client, ClientEvent};
use signaling::proto::Event;

use crate::error::Error;
use crate::media::{self, MediaOptions};
use crate::office::Target;
use crate::output::{mail_line, Output};
use crate::position::{self, PositionSource};

/// Bound on the last events after `bye`.
const DRAIN: Duration = Duration::from_secs(5);

/// Session events worth a line (positions of others are not: up to 5 per second per unit).
fn shown(event: &Event) -> bool {
    matches!(
        event,
        Event::Presence { .. }
            | Event::Member(_)
            | Event::Assigned { .. }
            | Event::Unassigned { .. }
            | Event::Incident { .. }
    )
}

/// What `run` does besides printing.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Publishing.
    pub media: MediaOptions,
    /// Where positions come from; none: no positions are reported.
    pub position: Option<PositionSource>,
}

/// Runs until a signal (`Ok`) or until the node ends the session (`Err(Refused)`).
pub async fn run(target: &Target, out: Output, opts: RunOptions) -> Result<(), Error> {
    if let Some(PositionSource::Nmea(path)) = &opts.position {
        // A FIFO or device may have no writer yet; only a missing path is an error here.
        std::fs::metadata(path)
            .map_err(|e| Error::Usage(format!("--position nmea:{}: {e}", path.display())))?;
    }
    // Both handlers are installed before anything is printed: a signal that arrives while the
    // session is being set up must end it cleanly, not kill the process.
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::Local(format!("cannot handle SIGTERM: {e}")))?;
    #[cfg(unix)]
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| Error::Local(format!("cannot handle SIGINT: {e}")))?;

    let (client, mut events) = target.connect().await?;
    // The first event is `Connected` (queued by `connect`): say so before anything else.
    if let Some(first) = events.try_next() {
        show(&client, out, first);
    }

    let publisher = match media::start(&client, &target.node, &opts.media, out) {
        Ok(p) => Some(p),
        Err(why) => {
            out.warning(&why.to_string());
            None
        }
    };
    let positions = opts.position.clone().map(|src| {
        let (source, rx) = position::spawn_source(src, out);
        let reporter = tokio::spawn(position::report(client.clone(), rx));
        (source, reporter)
    });

    let stop = async {
        #[cfg(unix)]
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    };
    tokio::pin!(stop);

    let ended = loop {
        tokio::select! {
            ev = events.next() => match ev {
                Some(ClientEvent::Closed { code, reason }) => {
                    out.emit(&json!({"kind": "closed", "code": code.map(|c| c.as_str()), "reason": reason}));
                    break code.map(|code| Error::Refused {
                        code,
                        message: format!("the node ended the session ({code}): {reason}"),
                    });
                }
                Some(ev) => show(&client, out, ev),
                None => break None,
            },
            () = &mut stop => {
                if let Some(p) = publisher {
                    p.stop().await;
                }
                client.close().await;
                let _ = tokio::time::timeout(DRAIN, async {
                    while let Some(ev) = events.next().await {
                        if let ClientEvent::Closed { reason, .. } = ev {
                            out.emit(&json!({"kind": "closed", "code": null, "reason": reason}));
                            break;
                        }
                        show(&client, out, ev);
                    }
                })
                .await;
                break None;
            }
        }
    };
    if let Some((source, reporter)) = positions {
        source.abort();
        reporter.abort();
    }
    match ended {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Prints one client event (not `Closed`).
fn show(client: &Client, out: Output, ev: ClientEvent) {
    match ev {
        ClientEvent::Mail { seq, item } => out.emit(&mail_line(seq, &item)),
        ClientEvent::Event { event, .. } => {
            if shown(&event) {
                // The line is the event as the node sent it.
                out.emit(&serde_json::to_value(&event).unwrap_or(Value::Null));
            }
        }
        ClientEvent::Connected { resumed, gap } => out.emit(&session_line(client, resumed, gap)),
        ClientEvent::Disconnected { reason } => {
            out.emit(&json!({"kind": "disconnected", "reason": reason}))
        }
        ClientEvent::Closed { .. } => {}
    }
}

fn session_line(client: &Client, resumed: bool, gap: bool) -> Value {
    let s = client.session();
    json!({
        "kind": if resumed { "resumed" } else { "connected" },
        "session": s.session,
        "node": s.node.as_str(),
        "subject": s.subject.as_str(),
        "role": s.role.to_string(),
        "incidents": s.incidents.iter().map(|i| i.as_str()).collect::<Vec<_>>(),
        "resumed": resumed,
        "gap": gap,
    })
}
