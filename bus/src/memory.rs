//! The in-process bus: one node, or several nodes sharing one [`MemoryHub`] in a test.
//!
//! The same semantics as the NATS bus, kept in memory: events fan out to live subscribers,
//! requests go to the one server of a service, mail is kept per origin (de-duplicated by id like
//! JetStream's duplicate window) and read by durable consumers that resume after the last
//! acknowledged message. Nothing survives the process: a single site keeps its office in SQLite,
//! and nothing leaves the node.

use crate::subject::{MsgId, Topic};
use crate::{
    check_size, AbortOnDrop, Acker, Bus, BusError, Dedup, Event, Mail, Mailbox, Replier, Request,
    Requests, Subscription, DEDUP_WINDOW, DEFAULT_MAX_PAYLOAD,
};
use bytes::Bytes;
use ids::NodeName;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify};

const QUEUE: usize = 1024;

/// Shared state of in-process buses (one per process, or one per simulated province in tests).
#[derive(Debug, Default)]
pub struct MemoryHub {
    state: Mutex<State>,
    notify: Notify,
}

#[derive(Debug, Default)]
struct State {
    subs: Vec<(Option<NodeName>, Topic, mpsc::Sender<Event>)>,
    services: HashMap<(NodeName, Topic), mpsc::Sender<Request>>,
    streams: HashMap<NodeName, Stream>,
}

#[derive(Debug, Default)]
struct Stream {
    msgs: Vec<Stored>,
    ids: HashSet<MsgId>,
    /// Acknowledged sequence numbers per durable name (recipient, name).
    acked: HashMap<(NodeName, String), BTreeSet<usize>>,
}

#[derive(Debug, Clone)]
struct Stored {
    recipient: NodeName,
    topic: Topic,
    id: MsgId,
    payload: Bytes,
}

impl MemoryHub {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-written (every mutation is
        // one push or insert), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The acknowledgement of one in-process mail.
#[derive(Debug)]
pub(crate) struct Ack {
    hub: Arc<MemoryHub>,
    origin: NodeName,
    key: (NodeName, String),
    seq: usize,
}

impl Ack {
    pub(crate) fn ack(self) {
        let mut st = self.hub.lock();
        if let Some(s) = st.streams.get_mut(&self.origin) {
            s.acked.entry(self.key).or_default().insert(self.seq);
        }
    }
}

/// The in-process [`Bus`] of one node.
#[derive(Debug, Clone)]
pub struct MemoryBus {
    node: NodeName,
    hub: Arc<MemoryHub>,
    max_payload: usize,
}

impl MemoryBus {
    /// A bus for `node` alone.
    pub fn new(node: NodeName) -> MemoryBus {
        MemoryBus::on_hub(node, Arc::new(MemoryHub::default()))
    }

    /// A bus for `node` sharing `hub` with other in-process nodes.
    pub fn on_hub(node: NodeName, hub: Arc<MemoryHub>) -> MemoryBus {
        MemoryBus {
            node,
            hub,
            max_payload: DEFAULT_MAX_PAYLOAD,
        }
    }

    /// Sets the largest payload accepted (default [`DEFAULT_MAX_PAYLOAD`]).
    pub fn with_max_payload(mut self, max: usize) -> MemoryBus {
        self.max_payload = max;
        self
    }
}

#[async_trait::async_trait]
impl Bus for MemoryBus {
    fn node(&self) -> &NodeName {
        &self.node
    }

    async fn publish(&self, topic: &Topic, payload: Bytes) -> Result<(), BusError> {
        check_size(payload.len(), self.max_payload)?;
        let mut st = self.hub.lock();
        st.subs.retain(|(origin, t, tx)| {
            if t != topic || origin.as_ref().is_some_and(|o| o != &self.node) {
                return !tx.is_closed();
            }
            let ev = Event {
                origin: self.node.clone(),
                topic: topic.clone(),
                payload: payload.clone(),
            };
            match tx.try_send(ev) {
                Ok(()) => true,
                // A slow subscriber misses events, as on NATS.
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::debug!(%topic, "slow subscriber: event dropped");
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        Ok(())
    }

    async fn subscribe(
        &self,
        origin: Option<&NodeName>,
        topic: &Topic,
    ) -> Result<Subscription, BusError> {
        let (tx, rx) = mpsc::channel(QUEUE);
        self.hub
            .lock()
            .subs
            .push((origin.cloned(), topic.clone(), tx));
        Ok(Subscription { rx, _task: None })
    }

    async fn request(
        &self,
        target: &NodeName,
        service: &Topic,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, BusError> {
        check_size(payload.len(), self.max_payload)?;
        let server = self
            .hub
            .lock()
            .services
            .get(&(target.clone(), service.clone()))
            .cloned();
        let no_answer = || BusError::NoAnswer(format!("{target}/{service}"));
        let server = server.ok_or_else(no_answer)?;
        let (tx, rx) = oneshot::channel();
        let req = Request {
            origin: self.node.clone(),
            service: service.clone(),
            payload,
            reply: Replier::Memory(tx),
        };
        server.send(req).await.map_err(|_| no_answer())?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            _ => Err(no_answer()),
        }
    }

    async fn serve(&self, service: &Topic) -> Result<Requests, BusError> {
        let (tx, rx) = mpsc::channel(QUEUE);
        self.hub
            .lock()
            .services
            .insert((self.node.clone(), service.clone()), tx);
        Ok(Requests { rx, _task: None })
    }

    async fn send(
        &self,
        to: &NodeName,
        topic: &Topic,
        id: &MsgId,
        payload: Bytes,
    ) -> Result<(), BusError> {
        check_size(payload.len(), self.max_payload)?;
        {
            let mut st = self.hub.lock();
            let stream = st.streams.entry(self.node.clone()).or_default();
            if !stream.ids.insert(id.clone()) {
                return Ok(());
            }
            stream.msgs.push(Stored {
                recipient: to.clone(),
                topic: topic.clone(),
                id: id.clone(),
                payload,
            });
        }
        self.hub.notify.notify_waiters();
        Ok(())
    }

    async fn mailbox(&self, from: &NodeName, name: &str) -> Result<Mailbox, BusError> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let hub = self.hub.clone();
        let origin = from.clone();
        let key = (self.node.clone(), name.to_owned());
        let task = tokio::spawn(async move {
            let mut next = 0usize;
            let mut dedup = Dedup::new(DEDUP_WINDOW);
            loop {
                // Registered before looking, so a send between the look and the wait wakes us.
                let notified = hub.notify.notified();
                let found = {
                    let st = hub.lock();
                    st.streams.get(&origin).and_then(|s| {
                        let acked = s.acked.get(&key);
                        s.msgs
                            .iter()
                            .enumerate()
                            .skip(next)
                            .find(|(seq, m)| {
                                m.recipient == key.0 && !acked.is_some_and(|a| a.contains(seq))
                            })
                            .map(|(seq, m)| (seq, m.clone()))
                    })
                };
                let Some((seq, m)) = found else {
                    tokio::select! {
                        _ = notified => continue,
                        _ = tx.closed() => return,
                    }
                };
                next = seq + 1;
                let ack = Ack {
                    hub: hub.clone(),
                    origin: origin.clone(),
                    key: key.clone(),
                    seq,
                };
                if !dedup.first_time(&origin, &m.id) {
                    ack.ack();
                    continue;
                }
                let mail = Mail {
                    origin: origin.clone(),
                    topic: m.topic,
                    id: m.id,
                    payload: m.payload,
                    acker: Acker::Memory(ack),
                };
                if tx.send(mail).await.is_err() {
                    return;
                }
            }
        });
        Ok(Mailbox {
            rx,
            _task: Some(AbortOnDrop(task)),
        })
    }
}
