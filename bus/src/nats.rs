//! The NATS bus: a thin shell over `async-nats`, connected to the node's own nats-server.
//!
//! Events and requests are core NATS; mail is JetStream. Each node's server has its own
//! JetStream domain (the node's subject token); this node's mail is stored in stream `YW_<node>`
//! in its own domain, and a recipient reads it with a durable pull consumer created in the
//! sender's domain (`$JS.<sender>.API`, routed over the leaf connections). Where the path between
//! the two nodes is cut, the mail waits in the sender's stream; the consumer loop retries and
//! resumes after the last acknowledged message when the path is back (over whichever parent the
//! leaf connection failed over to).

use crate::subject::{self, MsgId, Topic, MSG_ID_HEADER, ORIGIN_HEADER};
use crate::{
    check_size, AbortOnDrop, Acker, Bus, BusError, Dedup, Event, Mail, Mailbox, Replier, Request,
    Requests, Subscription, DEDUP_WINDOW, DEFAULT_MAX_PAYLOAD,
};
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use ids::NodeName;
use std::time::Duration;
use tokio::sync::mpsc;

const QUEUE: usize = 1024;

/// How to connect a [`NatsBus`].
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// The node's own server, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// User and password of the node on its own server (`server::LOCAL_USER` and the secret the
    /// configuration was written with).
    pub user: String,
    /// Password.
    pub password: String,
    /// Largest payload, bytes. Default [`DEFAULT_MAX_PAYLOAD`].
    pub max_payload: usize,
    /// How long mail stays in the sender's stream at most (acknowledged or not). Default 7 days.
    pub mail_max_age: Duration,
    /// How long an unacknowledged mail waits before it is delivered again. Default 5 s.
    pub ack_wait: Duration,
    /// Mails delivered to a mailbox and not yet acknowledged, at most. Default 1: the only value
    /// that keeps the sender's order when a delivery is lost and redelivered (a larger window
    /// lets later mail overtake the redelivery); it costs one round trip per mail.
    pub in_flight: i64,
}

impl NatsOptions {
    /// Options with the defaults.
    pub fn new(
        url: impl Into<String>,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        NatsOptions {
            url: url.into(),
            user: user.into(),
            password: password.into(),
            max_payload: DEFAULT_MAX_PAYLOAD,
            mail_max_age: Duration::from_secs(7 * 86_400),
            ack_wait: Duration::from_secs(5),
            in_flight: 1,
        }
    }
}

/// The NATS [`Bus`] of one node.
#[derive(Debug, Clone)]
pub struct NatsBus {
    node: NodeName,
    client: async_nats::Client,
    js: jetstream::Context,
    opts: NatsOptions,
}

fn nats_err(e: impl std::fmt::Display) -> BusError {
    BusError::Nats(e.to_string())
}

impl NatsBus {
    /// Connects to the node's own server and makes sure its mail stream exists.
    pub async fn connect(node: NodeName, opts: NatsOptions) -> Result<NatsBus, BusError> {
        let client = async_nats::ConnectOptions::with_user_and_password(
            opts.user.clone(),
            opts.password.clone(),
        )
        .name(format!("yiwang node {node}"))
        .connection_timeout(Duration::from_secs(5))
        .retry_on_initial_connect()
        .connect(opts.url.as_str())
        .await
        .map_err(nats_err)?;
        let js = jetstream::with_domain(client.clone(), subject::domain(&node));
        let bus = NatsBus {
            node,
            client,
            js,
            opts,
        };
        bus.ensure_stream().await?;
        Ok(bus)
    }

    /// The underlying client (tests use it to act as a misbehaving peer).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    async fn ensure_stream(&self) -> Result<(), BusError> {
        let cfg = stream::Config {
            name: subject::stream_name(&self.node),
            subjects: vec![subject::mail_stream_subjects(&self.node)],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            max_age: self.opts.mail_max_age,
            duplicate_window: Duration::from_secs(120),
            max_message_size: i32::try_from(self.opts.max_payload).unwrap_or(i32::MAX),
            ..Default::default()
        };
        self.js
            .get_or_create_stream(cfg)
            .await
            .map(|_| ())
            .map_err(nats_err)
    }

    fn headers(&self) -> async_nats::HeaderMap {
        let mut h = async_nats::HeaderMap::new();
        h.insert(ORIGIN_HEADER, self.node.as_str());
        h
    }
}

fn origin_header(h: Option<&async_nats::HeaderMap>) -> Option<&str> {
    h.and_then(|h| h.get(ORIGIN_HEADER)).map(|v| v.as_str())
}

#[async_trait::async_trait]
impl Bus for NatsBus {
    fn node(&self) -> &NodeName {
        &self.node
    }

    async fn publish(&self, topic: &Topic, payload: Bytes) -> Result<(), BusError> {
        check_size(payload.len(), self.opts.max_payload)?;
        self.client
            .publish_with_headers(subject::event(&self.node, topic), self.headers(), payload)
            .await
            .map_err(nats_err)?;
        // Flushed so "published" means "left this process" (a test, or a node about to exit).
        self.client.flush().await.map_err(nats_err)
    }

    async fn subscribe(
        &self,
        origin: Option<&NodeName>,
        topic: &Topic,
    ) -> Result<Subscription, BusError> {
        // From every origin: `yw.*.evt.>`, filtered here. A narrower wildcard (`yw.*.evt.pos`) is
        // not passed down a leaf connection whose permissions allow only `yw.<child>.>`
        // (nats-server sends a leaf the interest it may publish into, and checks a wildcard
        // interest against the allow list only when it ends in `>`; seen with 2.9.10).
        let filter = match origin {
            Some(_) => subject::event_filter(origin, topic),
            None => subject::any_event_filter(),
        };
        let want = topic.clone();
        let mut sub = self.client.subscribe(filter).await.map_err(nats_err)?;
        self.client.flush().await.map_err(nats_err)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let max = self.opts.max_payload;
        let expected = origin.cloned();
        let task = tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                if m.payload.len() > max {
                    tracing::warn!(subject = %m.subject, len = m.payload.len(), "bus: oversized event refused");
                    continue;
                }
                match subject::check_origin(
                    &m.subject,
                    origin_header(m.headers.as_ref()),
                    expected.as_ref(),
                ) {
                    Ok(subject::Parsed::Event { topic, .. }) if topic != want => {}
                    Ok(subject::Parsed::Event { origin, topic }) => {
                        let ev = Event {
                            origin,
                            topic,
                            payload: m.payload,
                        };
                        if tx.send(ev).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => tracing::warn!(subject = %m.subject, "bus: not an event, refused"),
                    Err(why) => {
                        tracing::warn!(subject = %m.subject, %why, "bus: event refused")
                    }
                }
            }
        });
        Ok(Subscription {
            rx,
            _task: Some(AbortOnDrop(task)),
        })
    }

    async fn request(
        &self,
        target: &NodeName,
        service: &Topic,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, BusError> {
        check_size(payload.len(), self.opts.max_payload)?;
        let subj = subject::request(&self.node, target, service);
        let no_answer = || BusError::NoAnswer(format!("{target}/{service}"));
        match tokio::time::timeout(
            timeout,
            self.client
                .request_with_headers(subj, self.headers(), payload),
        )
        .await
        {
            Ok(Ok(m)) => Ok(m.payload),
            Ok(Err(e))
                if matches!(
                    e.kind(),
                    async_nats::client::RequestErrorKind::NoResponders
                        | async_nats::client::RequestErrorKind::TimedOut
                ) =>
            {
                Err(no_answer())
            }
            Ok(Err(e)) => Err(nats_err(e)),
            Err(_) => Err(no_answer()),
        }
    }

    async fn serve(&self, service: &Topic) -> Result<Requests, BusError> {
        let mut sub = self
            .client
            // All requests (`yw.*.rpc.>`), filtered here: see `subscribe` for why not narrower.
            .subscribe(subject::any_request_filter())
            .await
            .map_err(nats_err)?;
        self.client.flush().await.map_err(nats_err)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let client = self.client.clone();
        let max = self.opts.max_payload;
        let (me, want) = (self.node.clone(), service.clone());
        let task = tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                match subject::parse(&m.subject) {
                    Some(subject::Parsed::Request {
                        target, service, ..
                    }) if target == me && service == want => {}
                    _ => continue,
                }
                if m.payload.len() > max {
                    tracing::warn!(subject = %m.subject, "bus: oversized request refused");
                    continue;
                }
                match subject::check_origin(&m.subject, origin_header(m.headers.as_ref()), None) {
                    Ok(subject::Parsed::Request {
                        origin, service, ..
                    }) => {
                        let req = Request {
                            origin,
                            service,
                            payload: m.payload,
                            reply: Replier::Nats(client.clone(), m.reply),
                        };
                        if tx.send(req).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => tracing::warn!(subject = %m.subject, "bus: not a request, refused"),
                    Err(why) => {
                        tracing::warn!(subject = %m.subject, %why, "bus: request refused")
                    }
                }
            }
        });
        Ok(Requests {
            rx,
            _task: Some(AbortOnDrop(task)),
        })
    }

    async fn send(
        &self,
        to: &NodeName,
        topic: &Topic,
        id: &MsgId,
        payload: Bytes,
    ) -> Result<(), BusError> {
        check_size(payload.len(), self.opts.max_payload)?;
        let msg = jetstream::message::PublishMessage::build()
            .payload(payload)
            .header(ORIGIN_HEADER, self.node.as_str())
            .message_id(id.as_str());
        let ack = self
            .js
            .send_publish(subject::mail(&self.node, to, topic), msg)
            .await
            .map_err(nats_err)?;
        ack.await.map(|_| ()).map_err(nats_err)
    }

    async fn mailbox(&self, from: &NodeName, name: &str) -> Result<Mailbox, BusError> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(BusError::InvalidName(
                name.to_owned(),
                "a mailbox name is A-Z, a-z, 0-9, '-', '_'",
            ));
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let remote = jetstream::with_domain(self.client.clone(), subject::domain(from));
        let stream_name = subject::stream_name(from);
        // Durable per (recipient, name): two nodes' mailboxes on one sender never share a cursor.
        let durable = format!("{}_{name}", subject::node_token(&self.node));
        let cfg = consumer::pull::Config {
            durable_name: Some(durable.clone()),
            filter_subject: subject::mail_filter(from, &self.node),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.opts.ack_wait,
            deliver_policy: consumer::DeliverPolicy::All,
            max_ack_pending: self.opts.in_flight.max(1),
            ..Default::default()
        };
        let from = from.clone();
        let me = self.node.clone();
        let max = self.opts.max_payload;
        let task = tokio::spawn(async move {
            let mut dedup = Dedup::new(DEDUP_WINDOW);
            let mut backoff = Duration::from_millis(100);
            loop {
                if tx.is_closed() {
                    return;
                }
                let consumer = open(&remote, &stream_name, &durable, &cfg).await;
                let consumer: consumer::PullConsumer = match consumer {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(%from, error = %e, "bus: mailbox not reachable yet");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        continue;
                    }
                };
                let msgs = consumer
                    .stream()
                    .expires(Duration::from_secs(2))
                    .heartbeat(Duration::from_millis(500))
                    .messages()
                    .await;
                let mut msgs = match msgs {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::debug!(%from, error = %e, "bus: mailbox pull failed");
                        tokio::time::sleep(backoff).await;
                        continue;
                    }
                };
                backoff = Duration::from_millis(100);
                while let Some(item) = msgs.next().await {
                    let m = match item {
                        Ok(m) => m,
                        Err(e) => {
                            // Missed heartbeats (a leaf connection failing over) and the like:
                            // start the pull again from the durable's position.
                            tracing::debug!(%from, error = %e, "bus: mailbox pull interrupted");
                            break;
                        }
                    };
                    let Some(mail) = accept(&from, &me, max, m, &mut dedup).await else {
                        continue;
                    };
                    if tx.send(mail).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Mailbox {
            rx,
            _task: Some(AbortOnDrop(task)),
        })
    }
}

/// The durable consumer `durable` on `stream` in `remote`'s domain (made if missing).
async fn open(
    remote: &jetstream::Context,
    stream: &str,
    durable: &str,
    cfg: &consumer::pull::Config,
) -> Result<consumer::PullConsumer, String> {
    let s = remote.get_stream(stream).await.map_err(|e| e.to_string())?;
    s.get_or_create_consumer(durable, cfg.clone())
        .await
        .map_err(|e| e.to_string())
}

/// Checks one delivered mail; acks and drops refused or duplicate ones (with a log), so they
/// neither block the mailbox nor come back.
async fn accept(
    from: &NodeName,
    me: &NodeName,
    max: usize,
    m: jetstream::Message,
    dedup: &mut Dedup,
) -> Option<Mail> {
    let refuse = |why: String| {
        tracing::warn!(subject = %m.subject, %from, %why, "bus: mail refused");
    };
    if m.payload.len() > max {
        refuse(format!("{} bytes over the limit", m.payload.len()));
        let _ = m.ack().await;
        return None;
    }
    let parsed = subject::check_origin(&m.subject, origin_header(m.headers.as_ref()), Some(from));
    let id = m
        .headers
        .as_ref()
        .and_then(|h| h.get(MSG_ID_HEADER))
        .and_then(|v| MsgId::parse(v.as_str()).ok());
    match (parsed, id) {
        (
            Ok(subject::Parsed::Mail {
                recipient, topic, ..
            }),
            Some(id),
        ) if &recipient == me => {
            if !dedup.first_time(from, &id) {
                tracing::debug!(%from, %id, "bus: duplicate mail dropped");
                let _ = m.ack().await;
                return None;
            }
            Some(Mail {
                origin: from.clone(),
                topic,
                id,
                payload: m.payload.clone(),
                acker: Acker::Nats(Box::new(m)),
            })
        }
        (Err(why), _) => {
            refuse(why.to_string());
            let _ = m.ack().await;
            None
        }
        _ => {
            refuse("not mail for this node, or no id".into());
            let _ = m.ack().await;
            None
        }
    }
}
