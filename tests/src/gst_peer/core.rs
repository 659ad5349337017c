//! What publisher and viewer share: one pipeline around one `webrtcbin`, a bus thread, and the
//! offer/answer steps driven through `gst::Promise`s (no GLib main loop is needed: webrtcbin
//! runs its operations and emits its signals on its own threads).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use gst::glib;
use gst::prelude::*;
use gstreamer as gst;
use gstreamer_sdp as gst_sdp;
use gstreamer_webrtc as gst_webrtc;
use reqwest::Url;

use super::http::{self, WhipError};

/// The process's ECDSA P-256 DTLS certificate: (certificate + key PEM, SHA-256 fingerprint as
/// upper-case colon-separated hex). GStreamer's default RSA certificate is refused by the node's
/// DTLS (str0m/dimpl speaks ECDSA only).
fn ecdsa_certificate() -> anyhow::Result<(String, String)> {
    use sha2::Digest as _;
    static CERT: OnceLock<Result<(String, String), String>> = OnceLock::new();
    CERT.get_or_init(|| {
        let ck = rcgen::generate_simple_self_signed(vec!["yiwang-gst-peer".to_owned()])
            .map_err(|e| e.to_string())?;
        let digest = sha2::Sha256::digest(ck.cert.der());
        let fp: Vec<String> = digest.iter().map(|b| format!("{b:02X}")).collect();
        Ok((
            format!("{}{}", ck.cert.pem(), ck.signing_key.serialize_pem()),
            fp.join(":"),
        ))
    })
    .clone()
    .map_err(|e| anyhow!("generating the DTLS certificate: {e}"))
}

/// Upper bound for webrtcbin's ICE gathering (host candidates only: normally a few ms).
pub(crate) const GATHER_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound for one promise-based webrtcbin operation, and for the first caps.
pub(crate) const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// A pipeline holding one `webrtcbin` named `webrtc`, plus its bus watcher.
pub(crate) struct Peer {
    pub(crate) pipeline: gst::Pipeline,
    pub(crate) webrtc: gst::Element,
    error: Arc<Mutex<Option<String>>>,
    candidates: Arc<Mutex<Vec<(u32, String)>>>,
    gathering: tokio::sync::watch::Receiver<gst_webrtc::WebRTCICEGatheringState>,
    bus_stop: Arc<AtomicBool>,
    bus_thread: Option<JoinHandle<()>>,
    /// Set once the node accepted the offer.
    session: Option<(Url, String)>,
    token: String,
    /// Send media to this address instead of the node's candidate (an impairment relay).
    pub(crate) via: Option<std::net::SocketAddr>,
}

impl Peer {
    /// Wraps a parsed pipeline; `server` is the node's base URL (used to pick local addresses).
    pub(crate) fn new(pipeline: gst::Pipeline, server: &Url, token: &str) -> anyhow::Result<Peer> {
        let webrtc = pipeline
            .by_name("webrtc")
            .ok_or_else(|| anyhow!("pipeline has no element named webrtc"))?;
        webrtc.set_property_from_str("bundle-policy", "max-bundle");
        // The node is UDP-only: do not offer (useless) ICE-TCP candidates.
        let agent = webrtc.property::<glib::Object>("ice-agent");
        if agent.find_property("ice-tcp").is_some() {
            agent.set_property("ice-tcp", false);
        }
        if host_is_loopback(server) {
            restrict_to_loopback(&webrtc);
        }

        let candidates = Arc::new(Mutex::new(Vec::new()));
        let c = candidates.clone();
        webrtc.connect("on-ice-candidate", false, move |args| {
            let mline = args[1].get::<u32>().unwrap_or(0);
            if let Ok(cand) = args[2].get::<String>() {
                tracing::debug!(mline, %cand, "local ICE candidate");
                c.lock().unwrap().push((mline, cand));
            }
            None
        });

        let initial = webrtc.property::<gst_webrtc::WebRTCICEGatheringState>("ice-gathering-state");
        let (tx, gathering) = tokio::sync::watch::channel(initial);
        webrtc.connect_notify(Some("ice-gathering-state"), move |el, _| {
            let s = el.property::<gst_webrtc::WebRTCICEGatheringState>("ice-gathering-state");
            tracing::debug!(state = ?s, "ICE gathering state");
            tx.send_replace(s);
        });
        webrtc.connect_notify(Some("ice-connection-state"), |el, _| {
            let s = el.property::<gst_webrtc::WebRTCICEConnectionState>("ice-connection-state");
            tracing::debug!(state = ?s, "ICE connection state");
        });

        let error = Arc::new(Mutex::new(None));
        let bus_stop = Arc::new(AtomicBool::new(false));
        let bus = pipeline
            .bus()
            .ok_or_else(|| anyhow!("pipeline without a bus"))?;
        let (err2, stop2) = (error.clone(), bus_stop.clone());
        let bus_thread = std::thread::Builder::new()
            .name("gst-peer-bus".into())
            .spawn(move || watch_bus(bus, err2, stop2))
            .context("spawning the bus thread")?;

        Ok(Peer {
            pipeline,
            webrtc,
            error,
            candidates,
            gathering,
            bus_stop,
            bus_thread: Some(bus_thread),
            session: None,
            token: token.to_owned(),
            via: None,
        })
    }

    pub(crate) fn error(&self) -> Option<String> {
        self.error.lock().unwrap().clone()
    }

    pub(crate) fn location(&self) -> Option<&str> {
        self.session.as_ref().map(|(_, l)| l.as_str())
    }

    /// Polls (every 20 ms) until webrtcbin's peer connection state is `Connected` (ICE and DTLS
    /// done); fails on `Failed`/`Closed`, a pipeline error, or after `timeout`.
    pub(crate) async fn wait_connected(&self, timeout: Duration) -> anyhow::Result<()> {
        use gst_webrtc::WebRTCPeerConnectionState as S;
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.webrtc.property::<S>("connection-state");
            match s {
                S::Connected => return Ok(()),
                S::Failed | S::Closed => bail!("peer connection {s:?}"),
                _ => {}
            }
            if let Some(e) = self.error() {
                bail!("pipeline error: {e}");
            }
            if Instant::now() >= deadline {
                let ice = self
                    .webrtc
                    .property::<gst_webrtc::WebRTCICEConnectionState>("ice-connection-state");
                bail!("not connected after {timeout:?}: connection={s:?}, ice={ice:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Gives every transceiver's DTLS transport an ECDSA P-256 certificate (see the module docs:
    /// GStreamer's default RSA certificate is refused by the node's DTLS server). Call before the offer
    /// is created.
    pub(crate) fn use_ecdsa_certificate(&self) -> anyhow::Result<()> {
        let (pem, _) = ecdsa_certificate()?;
        // webrtcbin creates its dtlssrtpdec elements (whose `pem` is the certificate) only while
        // creating the offer, right before reading the fingerprint from them.
        let bin = self
            .webrtc
            .clone()
            .downcast::<gst::Bin>()
            .map_err(|_| anyhow!("webrtcbin is not a bin"))?;
        bin.connect_deep_element_added(move |_, _, el| {
            if el.factory().is_some_and(|f| f.name() == "dtlssrtpdec") {
                el.set_property("pem", &pem);
                // The DTLS connection was created with the default (RSA) certificate when
                // webrtcbin set the connection id; setting the id again recreates it with ours.
                if let Some(id) = el.property::<Option<String>>("connection-id") {
                    el.set_property("connection-id", &id);
                }
            }
        });
        Ok(())
    }

    pub(crate) fn play(&self) -> anyhow::Result<()> {
        self.pipeline.set_state(gst::State::Playing).map_err(|_| {
            anyhow!(
                "pipeline refused PLAYING: {}",
                self.error().unwrap_or_default()
            )
        })?;
        Ok(())
    }

    /// Waits for the senders' caps, creates an offer, sets it as local description, waits for ICE gathering, and returns the
    /// offer's text including the gathered candidates.
    pub(crate) async fn local_offer(&self) -> anyhow::Result<String> {
        wait_sink_caps(&self.webrtc).await?;
        let reply = promise(
            &self.webrtc,
            "create-offer",
            &[None::<gst::Structure>.to_value()],
        )
        .await
        .context("create-offer")?
        .ok_or_else(|| anyhow!("create-offer: empty reply"))?;
        let offer = reply
            .get::<gst_webrtc::WebRTCSessionDescription>("offer")
            .map_err(|e| anyhow!("create-offer: no offer in reply {reply}: {e}"))?;
        promise(&self.webrtc, "set-local-description", &[offer.to_value()])
            .await
            .context("set-local-description")?;

        let mut rx = self.gathering.clone();
        let done = tokio::time::timeout(
            GATHER_TIMEOUT,
            rx.wait_for(|s| *s == gst_webrtc::WebRTCICEGatheringState::Complete),
        )
        .await;
        let candidates = self.candidates.lock().unwrap().clone();
        match done {
            Ok(Ok(_)) => {}
            _ if !candidates.is_empty() => {
                tracing::warn!(
                    n = candidates.len(),
                    "ICE gathering not complete after {GATHER_TIMEOUT:?}; offering what we have"
                )
            }
            _ => bail!("ICE gathering gave no candidate within {GATHER_TIMEOUT:?}"),
        }

        let desc = self
            .webrtc
            .property::<Option<gst_webrtc::WebRTCSessionDescription>>("local-description")
            .ok_or_else(|| anyhow!("no local description after set-local-description"))?;
        let mut sdp = desc.sdp().as_text().context("serialising the offer")?;
        if !sdp.contains("a=candidate:") {
            // webrtcbin normally writes gathered candidates into the local description; if this
            // build does not, append them to the matching m-sections ourselves.
            sdp = add_candidates(&sdp, &candidates);
        }
        if !sdp.contains("a=candidate:") {
            bail!("offer has no ICE candidate:\n{sdp}");
        }
        // webrtcbin (1.22) computes the offered fingerprint over every base64 line of the PEM it
        // was given, private key included, so it is wrong for a certificate set by `pem`: state
        // the certificate's real SHA-256 fingerprint instead.
        let (_, fingerprint) = ecdsa_certificate()?;
        let sdp = sdp
            .split("\r\n")
            .map(|l| {
                if l.starts_with("a=fingerprint:") {
                    format!("a=fingerprint:sha-256 {fingerprint}")
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\r\n");
        Ok(sdp)
    }

    /// The whole offerer side: offer → POST → remote answer. Non-`201` is a [`WhipError`].
    pub(crate) async fn negotiate(&mut self, endpoint: &Url) -> anyhow::Result<()> {
        let offer = self.local_offer().await?;
        tracing::debug!(%endpoint, "offer:\n{offer}");
        let (answer, session_url, location) = http::post_offer(endpoint, &self.token, &offer)
            .await?
            .into_answer()?;
        tracing::debug!(%session_url, "answer:\n{answer}");
        // From now on the node holds a session: remember it so stop() can delete it.
        self.session = Some((session_url, location));
        let answer = match self.via {
            Some(via) => route_via(&answer, via),
            None => answer,
        };
        self.apply_answer(&answer).await
    }

    /// Offerer side with the exchange done by the caller (e.g. over signaling): offer → `exchange`
    /// → remote answer. No session URL is kept; the caller ends the media session its own way.
    pub(crate) async fn negotiate_with<F, Fut>(&mut self, exchange: F) -> anyhow::Result<()>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<String>>,
    {
        let offer = self.local_offer().await?;
        let answer = exchange(offer).await?;
        let answer = match self.via {
            Some(via) => route_via(&answer, via),
            None => answer,
        };
        self.apply_answer(&answer).await
    }

    pub(crate) async fn apply_answer(&self, answer: &str) -> anyhow::Result<()> {
        let msg = gst_sdp::SDPMessage::parse_buffer(answer.as_bytes())
            .map_err(|e| anyhow!("node's answer is not valid SDP ({e}):\n{answer}"))?;
        let desc =
            gst_webrtc::WebRTCSessionDescription::new(gst_webrtc::WebRTCSDPType::Answer, msg);
        promise(&self.webrtc, "set-remote-description", &[desc.to_value()])
            .await
            .context("set-remote-description (answer)")?;
        Ok(())
    }

    /// `DELETE`s the session (if any) and stops the pipeline. Teardown happens even when the
    /// `DELETE` fails; an error is returned then.
    pub(crate) async fn stop(&mut self) -> anyhow::Result<()> {
        let res = match self.session.take() {
            Some((url, _)) => match http::delete_session(&url, &self.token).await {
                Ok(s) if (200..300).contains(&s) => Ok(()),
                Ok(status) => Err(WhipError::Http {
                    status,
                    body: format!("DELETE {url}"),
                }
                .into()),
                Err(e) => Err(e),
            },
            None => Ok(()),
        };
        self.shutdown();
        res
    }

    fn shutdown(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
        self.bus_stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.bus_thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Peer {
    /// Stops the pipeline. No `DELETE` is sent from here (no async in `drop`): the node's session
    /// then ends by ICE/DTLS timeout. Call `stop()` for a clean end.
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Emits a promise-taking webrtcbin action signal and awaits the reply, without a main loop.
pub(crate) async fn promise(
    webrtc: &gst::Element,
    signal: &str,
    args: &[glib::Value],
) -> anyhow::Result<Option<gst::Structure>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let p = gst::Promise::with_change_func(move |reply| {
        let r = match reply {
            Ok(s) => Ok(s.map(|s| s.to_owned())),
            Err(e) => Err(format!("{e:?}")),
        };
        let _ = tx.send(r);
    });
    let mut values: Vec<glib::Value> = args.to_vec();
    values.push(p.to_value());
    webrtc.emit_by_name_with_values(signal, &values);
    let reply = tokio::time::timeout(OP_TIMEOUT, rx)
        .await
        .map_err(|_| anyhow!("{signal}: no reply within {OP_TIMEOUT:?}"))?
        .map_err(|_| anyhow!("{signal}: promise dropped"))?
        .map_err(|e| anyhow!("{signal}: promise {e}"))?;
    if let Some(s) = &reply {
        if s.has_field("error") {
            let e = s
                .value("error")
                .ok()
                .and_then(|v| v.get::<glib::Error>().ok());
            bail!(
                "{signal} failed: {}",
                e.map(|e| e.to_string()).unwrap_or_else(|| s.to_string())
            );
        }
    }
    Ok(reply)
}

/// Waits (bounded) until every `webrtcbin` sink pad's upstream peer has fixed caps, so that the
/// offer carries the payloaders' real parameters (H.264 `profile-level-id`, …).
async fn wait_sink_caps(webrtc: &gst::Element) -> anyhow::Result<()> {
    let deadline = Instant::now() + OP_TIMEOUT;
    loop {
        let missing: Vec<String> = webrtc
            .sink_pads()
            .into_iter()
            .filter(|p| p.peer().and_then(|pp| pp.current_caps()).is_none())
            .map(|p| p.name().to_string())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no caps on webrtcbin pads {missing:?} within {OP_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sets the direction of every transceiver webrtcbin has.
pub(crate) fn set_all_directions(
    webrtc: &gst::Element,
    dir: gst_webrtc::WebRTCRTPTransceiverDirection,
) {
    for i in 0.. {
        let t = webrtc
            .emit_by_name::<Option<gst_webrtc::WebRTCRTPTransceiver>>("get-transceiver", &[&i]);
        match t {
            Some(t) => {
                t.set_property("direction", dir);
                // NACK/RTX: a sender retransmits what a receiver reports lost, a receiver asks.
                t.set_property("do-nack", true);
            }
            None => break,
        }
    }
}

/// Rewrites the node's ICE candidates in an answer to `via` (an impairment relay in front of the
/// node). The node is ICE-lite and accepts the relay's address as a peer-reflexive candidate.
fn route_via(answer: &str, via: std::net::SocketAddr) -> String {
    answer
        .split("\r\n")
        .map(|line| {
            let Some(rest) = line.strip_prefix("a=candidate:") else {
                return line.to_owned();
            };
            // foundation component transport priority address port typ ...
            let mut f: Vec<String> = rest.split(' ').map(str::to_owned).collect();
            if f.len() > 5 && f[2].eq_ignore_ascii_case("udp") {
                f[4] = via.ip().to_string();
                f[5] = via.port().to_string();
            }
            format!("a=candidate:{}", f.join(" "))
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

fn host_is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

/// libnice never gathers on loopback interfaces (it skips `IFF_LOOPBACK` unless nothing else
/// exists), so against a node on 127.0.0.1 we tell the ICE agent explicitly to use 127.0.0.1
/// (`add-local-ip-address` on webrtcbin's `ice-agent`; once any address is added, libnice uses
/// only those). See the module documentation of [`super`] for what happens otherwise.
fn restrict_to_loopback(webrtc: &gst::Element) {
    let agent = webrtc.property::<glib::Object>("ice-agent");
    if glib::subclass::SignalId::lookup("add-local-ip-address", agent.type_()).is_some() {
        let ok = agent.emit_by_name::<bool>("add-local-ip-address", &[&"127.0.0.1"]);
        tracing::debug!(ok, "ICE agent restricted to 127.0.0.1");
    } else {
        tracing::warn!(
            "ICE agent has no add-local-ip-address; relying on peer-reflexive candidates"
        );
    }
}

/// Inserts `a=candidate:` lines at the end of the m-section they belong to.
fn add_candidates(sdp: &str, cands: &[(u32, String)]) -> String {
    let mut out = String::with_capacity(sdp.len() + 128 * cands.len());
    let mut mline: i64 = -1;
    let flush = |out: &mut String, m: i64| {
        for (_, c) in cands.iter().filter(|(i, _)| i64::from(*i) == m) {
            let c = c.strip_prefix("a=").unwrap_or(c);
            out.push_str("a=");
            out.push_str(c);
            out.push_str("\r\n");
        }
    };
    for line in sdp.lines() {
        if line.starts_with("m=") {
            flush(&mut out, mline);
            mline += 1;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    flush(&mut out, mline);
    out
}

fn watch_bus(bus: gst::Bus, error: Arc<Mutex<Option<String>>>, stop: Arc<AtomicBool>) {
    use gst::MessageView;
    let types = [
        gst::MessageType::Error,
        gst::MessageType::Warning,
        gst::MessageType::Eos,
    ];
    while !stop.load(Ordering::Relaxed) {
        let Some(msg) = bus.timed_pop_filtered(gst::ClockTime::from_mseconds(100), &types) else {
            continue;
        };
        let src = msg
            .src()
            .map(|s| s.path_string().to_string())
            .unwrap_or_default();
        match msg.view() {
            MessageView::Error(e) => {
                let text = format!("{src}: {} ({:?})", e.error(), e.debug());
                tracing::error!("pipeline error: {text}");
                error.lock().unwrap().get_or_insert(text);
            }
            MessageView::Warning(w) => {
                tracing::warn!("pipeline warning: {src}: {} ({:?})", w.error(), w.debug())
            }
            MessageView::Eos(_) => tracing::info!("pipeline EOS"),
            _ => {}
        }
    }
}
