//! The dispatch of client requests: one arm per message, each asking the component that owns
//! the decision and passing it what it needs from the others. With `mod.rs` (the connection
//! lifecycle, the handshake, timers and the events that membership and presence make) this is
//! the whole of the core's coordination; the components never call each other.

use serde_json::{json, Value};

use super::drones::Drones;
use super::incidents::Incidents;
use super::office::{self, store_err, ChatTarget, Office};
use super::{err, need, owns_drone, queries, ConnId, Core, MediaOp, Output, Revocation};
use crate::auth::{Action, Claims, Role};
use crate::ids::{IncidentId, StreamName, Subject};
use crate::proto::{
    ClientMsg, CommandName, DroneAckResult, DroneCommand, DroneCommandAckEvent, DroneCommandEvent,
    ErrorCode, Event, IncidentState, Member, OrderAnswer, Position, ProtoError, RequestId,
    ServerMsg, StreamKind, Telemetry,
};
use crate::time::UnixMs;

/// Who asks, on which connection, when: what every request handler needs.
struct Req<'a> {
    now: UnixMs,
    conn: ConnId,
    sid: &'a str,
    claims: Claims,
}

impl Core {
    /// One request of session `sid` on `conn`: each arm hands the message to its handler.
    pub(super) fn request(
        &mut self,
        now: UnixMs,
        conn: ConnId,
        sid: &str,
        msg: ClientMsg,
    ) -> Result<(), ProtoError> {
        // A connection only names a live session (ending one clears it), but never trust that
        // with a panic on the request path.
        let Some(claims) = self.sessions.claims(sid).cloned() else {
            let e = err(msg.id(), ErrorCode::SessionClosed, "this session has ended");
            return Err(e);
        };
        let r = Req {
            now,
            conn,
            sid,
            claims,
        };
        use ClientMsg as M;
        match msg {
            M::Hello { .. } => {
                let m = "hello was already received on this connection";
                Err(err(None, ErrorCode::BadHello, m))
            }
            M::Ping { id } => {
                self.reply(conn, id, json!({"time": now}));
                Ok(())
            }
            M::Ack { after } => {
                self.sessions.ack(sid, after);
                Ok(())
            }
            M::Bye => {
                self.close_conn(conn, ErrorCode::SessionClosed, "bye");
                self.end_session(now, sid);
                Ok(())
            }
            M::Position { id, pos } => self.position(&r, id, pos),
            // Incidents and membership.
            M::Incidents { id } => self.list_incidents(&r, id),
            M::IncidentCreate { id, incident, name } => {
                self.incident_create(&r, id, incident, &name)
            }
            M::IncidentClose { id, incident } => self.incident_close(&r, id, incident),
            M::Join { id, incident } => self.join_request(&r, id, incident),
            M::Leave { id, incident } => self.leave_request(&r, id, incident),
            M::Assign {
                id,
                incident,
                subject,
            } => self.assign(&r, id, incident, subject),
            M::Unassign {
                id,
                incident,
                subject,
            } => self.unassign(&r, id, incident, subject),
            // Reads.
            M::Log {
                id,
                incident,
                after,
                limit,
            } => self.read_log(&r, id, incident, after, limit),
            M::Units { id, incident } => self.list_units(&r, id, incident),
            M::Catalog { id, incident } => self.catalog(&r, id, incident),
            // Media, handed to the shell once authorised.
            M::Publish {
                id,
                stream,
                kind,
                sdp,
            } => self.publish(&r, id, stream, kind, sdp),
            M::Subscribe {
                id,
                stream,
                layer,
                max_height,
                sdp,
            } => {
                need(&r.claims, Action::ViewStream, Some(id))?;
                let op = MediaOp::Subscribe {
                    stream,
                    layer,
                    max_height,
                    sdp,
                };
                self.media(&r, id, op);
                Ok(())
            }
            M::MediaClose { id, media } => {
                self.media(&r, id, MediaOp::Close { media });
                Ok(())
            }
            // The office.
            M::Chat {
                id,
                msg_id,
                incident,
                to,
                text,
            } => self.chat(&r, id, msg_id, incident, to, text),
            M::Sos {
                id,
                msg_id,
                incident,
                text,
            } => self.sos(&r, id, msg_id, incident, text),
            M::SosAck { id, sos } => self.sos_ack(&r, id, sos),
            M::Order {
                id,
                msg_id,
                incident,
                to,
                text,
            } => {
                let data =
                    self.send_order(now, &r.claims, Some(id), msg_id, &incident, &to, &text)?;
                self.reply(conn, id, data);
                Ok(())
            }
            M::OrderAnswer {
                id,
                msg_id: _, // answers are idempotent by (order, state) already
                order,
                answer,
                eta_min,
                reason,
            } => {
                let data =
                    self.answer_order(now, &r.claims, Some(id), &order, answer, eta_min, reason)?;
                self.reply(conn, id, data);
                Ok(())
            }
            M::Read { id, item } => self.read_receipt(&r, id, item),
            M::MailSync { id, after } => self.mail_sync(&r, id, after),
            M::MailAck { upto } => self.mail_ack(&r, upto),
            // Drones.
            M::DroneCommand {
                id,
                drone,
                command,
                lat,
                lon,
                alt,
            } => {
                let data = self.drone_command(&r, id, &drone, command, (lat, lon, alt))?;
                self.reply(conn, id, data);
                Ok(())
            }
            M::Telemetry { drone, t } => self.telemetry(&r, &drone, &t),
            M::DroneLink { drone, up } => self.drone_link(&r, &drone, up),
            M::DroneCommandAck { cmd, result, text } => self.drone_ack(&r, cmd, result, text),
            M::Revoke { id, sub, jti } => self.revoke(&r, id, sub, jti),
        }
    }

    fn media(&mut self, r: &Req, re: RequestId, op: MediaOp) {
        self.out.push_back(Output::Media {
            conn: r.conn,
            session: r.sid.to_owned(),
            re,
            op,
        });
    }

    fn position(
        &mut self,
        r: &Req,
        id: Option<RequestId>,
        mut pos: Position,
    ) -> Result<(), ProtoError> {
        need(&r.claims, Action::ReportPosition, id)?;
        pos.validate()
            .map_err(|m| err(id, ErrorCode::BadRequest, m))?;
        pos.time.get_or_insert(r.now);
        if let Some((role, pos)) = self.presence.report(r.now, &r.claims.sub, pos) {
            self.fan_out_position(&r.claims.sub, role, pos);
        }
        if let Some(id) = id {
            self.reply(r.conn, id, Value::Null);
        }
        Ok(())
    }

    // -- Incidents and membership -------------------------------------------------------------

    fn list_incidents(&mut self, r: &Req, id: RequestId) -> Result<(), ProtoError> {
        need(&r.claims, Action::ReadIncident, Some(id))?;
        let list = self.incidents.views_for(&r.claims);
        self.reply(r.conn, id, json!({"incidents": list}));
        Ok(())
    }

    fn incident_create(
        &mut self,
        r: &Req,
        id: RequestId,
        incident: Option<IncidentId>,
        name: &str,
    ) -> Result<(), ProtoError> {
        need(&r.claims, Action::ManageIncident, Some(id))?;
        let by = &r.claims.sub;
        let iid = self.incidents.create(r.now, id, incident, name, by)?;
        self.persist_incident(&iid);
        let detail = json!({"name": name.trim()});
        self.log(r.now, &iid, by.as_str(), "created", detail);
        self.join(r.now, r.sid, &iid);
        let view = self.incidents.view(&iid);
        self.reply(r.conn, id, json!({"incident": view}));
        Ok(())
    }

    fn incident_close(
        &mut self,
        r: &Req,
        id: RequestId,
        incident: IncidentId,
    ) -> Result<(), ProtoError> {
        need(&r.claims, Action::ManageIncident, Some(id))?;
        let members = self.incidents.close(r.now, id, &incident)?;
        self.persist_incident(&incident);
        self.log(
            r.now,
            &incident,
            r.claims.sub.as_str(),
            "closed",
            Value::Null,
        );
        let ev = Event::Incident {
            incident: incident.clone(),
            state: IncidentState::Closed,
            by: r.claims.sub.clone(),
        };
        self.push_all(members.clone(), &ev);
        for m in members {
            self.leave(r.now, &m, &incident);
        }
        self.reply(r.conn, id, Value::Null);
        Ok(())
    }

    fn join_request(
        &mut self,
        r: &Req,
        id: RequestId,
        incident: IncidentId,
    ) -> Result<(), ProtoError> {
        self.incidents.may_join(id, &r.claims, &incident)?;
        self.join(r.now, r.sid, &incident);
        let mine = self
            .incidents
            .of_session(r.sid)
            .cloned()
            .unwrap_or_default();
        self.reply(r.conn, id, json!({"incidents": mine}));
        Ok(())
    }

    fn leave_request(
        &mut self,
        r: &Req,
        id: RequestId,
        incident: IncidentId,
    ) -> Result<(), ProtoError> {
        if !self.leave(r.now, r.sid, &incident) {
            let m = format!("not in incident {incident}");
            return Err(err(Some(id), ErrorCode::NotFound, m));
        }
        let mine = self
            .incidents
            .of_session(r.sid)
            .cloned()
            .unwrap_or_default();
        self.reply(r.conn, id, json!({"incidents": mine}));
        Ok(())
    }

    fn assign(
        &mut self,
        r: &Req,
        id: RequestId,
        incident: IncidentId,
        subject: Subject,
    ) -> Result<(), ProtoError> {
        let (now, claims) = (r.now, &r.claims);
        need(claims, Action::ManageIncident, Some(id))?;
        if self.incidents.assign(id, &incident, &subject)? {
            if self
                .store
                .set_assigned(incident.as_str(), subject.as_str(), true)
                .is_err()
            {
                self.store_errors += 1;
            }
            let detail = json!({"subject": subject});
            self.log(now, &incident, claims.sub.as_str(), "assigned", detail);
            let ev = Event::Member(Member::Assigned {
                incident: incident.clone(),
                subject: subject.clone(),
                by: claims.sub.clone(),
            });
            let members = self.incidents.members_of(&incident);
            self.push_all(members, &ev);
            let ev = Event::Assigned {
                incident: incident.clone(),
                by: claims.sub.clone(),
            };
            for s in self.sessions.sessions_of(&subject) {
                self.join(now, &s, &incident);
                self.push_event(&s, &ev, false);
            }
        }
        self.reply(r.conn, id, Value::Null);
        Ok(())
    }

    fn unassign(
        &mut self,
        r: &Req,
        id: RequestId,
        incident: IncidentId,
        subject: Subject,
    ) -> Result<(), ProtoError> {
        let (now, claims) = (r.now, &r.claims);
        need(claims, Action::ManageIncident, Some(id))?;
        self.incidents.unassign(id, &incident, &subject)?;
        if self
            .store
            .set_assigned(incident.as_str(), subject.as_str(), false)
            .is_err()
        {
            self.store_errors += 1;
        }
        let detail = json!({"subject": subject});
        self.log(now, &incident, claims.sub.as_str(), "unassigned", detail);
        let ev = Event::Member(Member::Unassigned {
            incident: incident.clone(),
            subject: subject.clone(),
            by: claims.sub.clone(),
        });
        let members = self.incidents.members_of(&incident);
        self.push_all(members, &ev);
        let theirs = self.sessions.sessions_of(&subject);
        let ev = Event::Unassigned {
            incident: incident.clone(),
            by: claims.sub.clone(),
        };
        self.push_all(theirs.clone(), &ev);
        for s in theirs {
            let keep = self
                .sessions
                .claims(&s)
                .is_some_and(|c| Incidents::keeps_after_unassign(c, &incident));
            if !keep {
                self.leave(now, &s, &incident);
            }
        }
        self.reply(r.conn, id, Value::Null);
        Ok(())
    }

    // -- Reads --------------------------------------------------------------------------------

    fn read_log(
        &mut self,
        r: &Req,
        id: RequestId,
        incident: IncidentId,
        after: u64,
        limit: Option<u32>,
    ) -> Result<(), ProtoError> {
        need(&r.claims, Action::ReadIncident, Some(id))?;
        self.incidents.readable(Some(id), &r.claims, &incident)?;
        let max = self.cfg.log_page_max;
        let (entries, last) =
            queries::log_page(&*self.store, Some(id), &incident, after, limit, max)?;
        let data = json!({"incident": incident, "entries": entries, "last": last});
        self.reply(r.conn, id, data);
        Ok(())
    }

    fn list_units(
        &mut self,
        r: &Req,
        id: RequestId,
        incident: Option<IncidentId>,
    ) -> Result<(), ProtoError> {
        need(&r.claims, Action::ReadIncident, Some(id))?;
        if let Some(i) = &incident {
            self.incidents.readable(Some(id), &r.claims, i)?;
        }
        let units = self.units_for(r.now, &r.claims, incident.as_ref());
        self.reply(r.conn, id, json!({"units": units}));
        Ok(())
    }

    fn catalog(
        &mut self,
        r: &Req,
        id: RequestId,
        incident: Option<IncidentId>,
    ) -> Result<(), ProtoError> {
        let claims = &r.claims;
        need(claims, Action::ReadIncident, Some(id))?;
        if let Some(i) = &incident {
            self.incidents.readable(Some(id), claims, i)?;
        }
        let (owners, all) = self.catalog_scope(claims, incident.as_ref());
        self.media(r, id, MediaOp::Catalog { owners, all });
        Ok(())
    }

    // -- Media --------------------------------------------------------------------------------

    fn publish(
        &mut self,
        r: &Req,
        id: RequestId,
        stream: Option<StreamName>,
        kind: StreamKind,
        sdp: String,
    ) -> Result<(), ProtoError> {
        let claims = &r.claims;
        need(claims, Action::PublishOwn, Some(id))?;
        let stream = match stream {
            Some(s) => s,
            None => StreamName::parse(claims.sub.as_str())
                .map_err(|e| err(Some(id), ErrorCode::BadRequest, e.to_string()))?,
        };
        if kind == StreamKind::Drone {
            need(claims, Action::PublishDrone, Some(id))?;
            if claims.role != Role::Admin && !owns_drone(claims, stream.as_str()) {
                let m = format!("{stream} is not one of your drones");
                return Err(err(Some(id), ErrorCode::Forbidden, m));
            }
        }
        claims
            .may_publish(&stream)
            .map_err(|e| err(Some(id), ErrorCode::Forbidden, e.to_string()))?;
        let op = MediaOp::Publish {
            stream,
            owner: claims.sub.clone(),
            kind,
            sdp,
        };
        self.media(r, id, op);
        Ok(())
    }

    // -- The office ---------------------------------------------------------------------------

    /// Who receives an incident message: subjects with a session in any of `incidents` and
    /// subjects assigned to them, except `sender` and roles that may not read incidents.
    fn incident_recipients(&self, incidents: &[IncidentId], sender: &Subject) -> Vec<Subject> {
        self.incidents
            .subjects_in(incidents, sender)
            .into_iter()
            .filter(|s| self.presence.reads_incidents(s))
            .collect()
    }

    fn chat(
        &mut self,
        r: &Req,
        id: RequestId,
        msg_id: Option<String>,
        incident: Option<IncidentId>,
        to: Option<Subject>,
        text: String,
    ) -> Result<(), ProtoError> {
        let (now, sender) = (r.now, &r.claims.sub);
        need(&r.claims, Action::Chat, Some(id))?;
        office::check_text(Some(id), &text)?;
        let msg_id = office::msg_id(Some(id), msg_id, "msg_id")?;
        let in_incident = incident.as_ref().is_some_and(|i| {
            self.incidents
                .of_session(r.sid)
                .is_some_and(|mine| mine.contains(i))
        });
        let target = Office::chat_target(id, sender, incident.as_ref(), to.as_ref(), in_incident)?;
        let recipients = match &target {
            ChatTarget::Incident(i) => self.incident_recipients(std::slice::from_ref(i), sender),
            ChatTarget::Direct(t) => vec![t.clone()],
        };
        let store = &mut *self.store;
        let (stored, filed) =
            Office::chat(store, now, id, sender, &msg_id, &target, &text, &recipients)?;
        self.file(now, sender, filed);
        let data = json!({"item": stored.item_id, "time": stored.item.time()});
        self.reply(r.conn, id, data);
        Ok(())
    }

    fn sos(
        &mut self,
        r: &Req,
        id: RequestId,
        msg_id: Option<String>,
        incident: Option<IncidentId>,
        text: Option<String>,
    ) -> Result<(), ProtoError> {
        let (now, claims) = (r.now, &r.claims);
        need(claims, Action::RaiseSos, Some(id))?;
        let mine = self
            .incidents
            .of_session(r.sid)
            .cloned()
            .unwrap_or_default();
        let targets: Vec<IncidentId> = match incident {
            Some(i) if mine.contains(&i) => vec![i],
            Some(i) => {
                let m = format!("not in incident {i}");
                return Err(err(Some(id), ErrorCode::Forbidden, m));
            }
            None => mine.into_iter().collect(),
        };
        if targets.is_empty() {
            let m = "not in any incident: join one to raise SOS";
            return Err(err(Some(id), ErrorCode::NotFound, m));
        }
        let msg_id = office::msg_id(Some(id), msg_id, "msg_id")?;
        let mut recipients = self.incident_recipients(&targets, &claims.sub);
        // Every commander and admin on the node hears it too.
        for c in self.presence.commanders() {
            if *c != claims.sub && !recipients.contains(c) {
                recipients.push(c.clone());
            }
        }
        let position = self.presence.position_of(&claims.sub);
        let store = &mut *self.store;
        let (sos, mails, log) = self.office.raise_sos(
            store,
            now,
            id,
            &claims.sub,
            claims.role,
            &msg_id,
            &targets,
            text,
            position,
            &recipients,
        )?;
        if let Some(detail) = log {
            for i in &targets {
                self.log(now, i, claims.sub.as_str(), "sos", detail.clone());
            }
            self.deliver(&mails, true);
        }
        let data = json!({"sos": sos, "incidents": targets, "recipients": recipients.len()});
        self.reply(r.conn, id, data);
        Ok(())
    }

    fn sos_ack(&mut self, r: &Req, id: RequestId, sos: String) -> Result<(), ProtoError> {
        let by = &r.claims.sub;
        need(&r.claims, Action::SendOrder, Some(id))?;
        let store = &mut *self.store;
        let (mails, incidents) = self.office.ack_sos(store, r.now, id, by, &sos)?;
        for i in &incidents {
            self.log(r.now, i, by.as_str(), "sos_ack", json!({"sos": sos}));
        }
        self.deliver(&mails, true);
        self.reply(r.conn, id, json!({"sos": sos}));
        Ok(())
    }

    fn read_receipt(&mut self, r: &Req, id: RequestId, item: u64) -> Result<(), ProtoError> {
        need(&r.claims, Action::Chat, Some(id))?;
        let mails = Office::read(&mut *self.store, r.now, id, &r.claims.sub, item)?;
        self.deliver(&mails, false);
        self.reply(r.conn, id, Value::Null);
        Ok(())
    }

    fn mail_sync(&mut self, r: &Req, id: RequestId, after: Option<u64>) -> Result<(), ProtoError> {
        let sync = Office::sync(&*self.store, id, &r.claims.sub, after)?;
        for m in sync.mails {
            let (seq, item) = (m.seq, m.item);
            self.send(r.conn, ServerMsg::Mail { seq, item });
        }
        // Live mail only once this connection has caught up, so it never overtakes.
        self.sessions.set_mail_ready(r.conn, !sync.more);
        let data = json!({"last": sync.last, "sent_upto": sync.sent_upto, "more": sync.more});
        self.reply(r.conn, id, data);
        Ok(())
    }

    fn mail_ack(&mut self, r: &Req, upto: u64) -> Result<(), ProtoError> {
        let (now, sub) = (r.now, &r.claims.sub);
        let orders =
            Office::mail_ack(&mut *self.store, now, sub, upto).map_err(|e| store_err(None, e))?;
        for order in orders {
            let filed = Office::order_state_mail(&mut *self.store, now, &order, sub)
                .map_err(|e| store_err(None, e))?;
            if let Some(f) = filed {
                self.file(now, sub, f);
            }
        }
        Ok(())
    }

    // -- Drones -------------------------------------------------------------------------------

    fn telemetry(&mut self, r: &Req, drone: &str, t: &Telemetry) -> Result<(), ProtoError> {
        let incidents = self
            .incidents
            .of_session(r.sid)
            .cloned()
            .unwrap_or_default();
        let (name, _) = self
            .drones
            .report(r.now, r.sid, &r.claims, drone, Some(t), incidents)?;
        if let Some(merged) = self.drones.merge(r.now, &name, t) {
            self.fan_out_telemetry(&name, merged);
        }
        Ok(())
    }

    fn drone_link(&mut self, r: &Req, drone: &str, up: bool) -> Result<(), ProtoError> {
        let incidents = self
            .incidents
            .of_session(r.sid)
            .cloned()
            .unwrap_or_default();
        let (name, new) = self
            .drones
            .report(r.now, r.sid, &r.claims, drone, None, incidents)?;
        if self.drones.link(&name, up, new) {
            let incidents = self.drone_incidents(&name);
            let detail = json!({"drone": name, "up": up});
            self.log_all(r.now, &incidents, &r.claims.sub, "drone_link", &detail);
            let ev = Event::DroneLink {
                drone: name.clone(),
                up,
            };
            self.drone_event(&name, &ev);
        }
        Ok(())
    }

    fn drone_ack(
        &mut self,
        r: &Req,
        cmd: String,
        result: DroneAckResult,
        text: Option<String>,
    ) -> Result<(), ProtoError> {
        need(&r.claims, Action::PublishDrone, None)?;
        if text.as_ref().is_some_and(|t| t.chars().count() > 1000) {
            let m = "text must be at most 1000 characters";
            return Err(err(None, ErrorCode::BadRequest, m));
        }
        let Some((drone, requester)) = self.drones.ack(&cmd, r.sid, result) else {
            let shown: String = cmd.chars().take(40).collect();
            let m = format!("no pending drone command {shown:?} from this session");
            return Err(err(None, ErrorCode::NotFound, m));
        };
        let ack = DroneCommandAckEvent {
            cmd,
            drone: drone.clone(),
            result,
            text,
        };
        let detail = serde_json::to_value(&ack).unwrap_or(Value::Null);
        let incidents = self.drone_incidents(&drone);
        self.log_all(
            r.now,
            &incidents,
            &r.claims.sub,
            "drone_command_ack",
            &detail,
        );
        self.push_event(&requester, &Event::DroneCommandAck(ack), false);
        Ok(())
    }

    // -- Revocation ---------------------------------------------------------------------------

    fn revoke(
        &mut self,
        r: &Req,
        id: RequestId,
        sub: Option<Subject>,
        jti: Option<String>,
    ) -> Result<(), ProtoError> {
        need(&r.claims, Action::Revoke, Some(id))?;
        let rev = match (sub, jti) {
            (Some(sub), None) => Revocation::Subject {
                sub,
                at: r.now.secs(),
            },
            (None, Some(jti)) if !jti.is_empty() && jti.len() <= 128 => Revocation::Token { jti },
            _ => {
                let m = "give exactly one of sub or jti";
                return Err(err(Some(id), ErrorCode::BadRequest, m));
            }
        };
        // Reply first: the admin may be revoking its own token.
        self.reply(r.conn, id, json!({"revoked": rev}));
        for i in self
            .incidents
            .of_session(r.sid)
            .cloned()
            .unwrap_or_default()
        {
            self.log(r.now, &i, r.claims.sub.as_str(), "revoked", json!(rev));
        }
        self.out.push_back(Output::Revoked(rev.clone()));
        self.apply_revocation(r.now, &rev);
        Ok(())
    }

    // -- Orders (also the HTTP API's) ------------------------------------------------------

    /// Sends an order (over signaling, or `POST /api/orders`): checks the right, the incident and
    /// that the addressee ever had a session here (`unknown_recipient` otherwise), stores it once
    /// per `(sender, msg_id)`, forwards it to the addressee's mailbox. Returns the reply's data.
    #[allow(clippy::too_many_arguments)]
    pub fn send_order(
        &mut self,
        now: UnixMs,
        claims: &Claims,
        re: Option<RequestId>,
        msg_id: Option<String>,
        incident: &IncidentId,
        to: &Subject,
        text: &str,
    ) -> Result<Value, ProtoError> {
        need(claims, Action::SendOrder, re)?;
        office::check_text(re, text)?;
        if *to == claims.sub {
            return Err(err(
                re,
                ErrorCode::BadRequest,
                "an order needs another subject",
            ));
        }
        self.incidents.readable(re, claims, incident)?;
        if !self.incidents.is_open(incident) {
            let m = format!("incident {incident} is closed");
            return Err(err(re, ErrorCode::Conflict, m));
        }
        let known = self.presence.knows(to)
            || self.store.knows_subject(to).map_err(|e| store_err(re, e))?;
        if !known {
            let m = format!("{to} has never connected to this node; nobody would read the order");
            return Err(err(re, ErrorCode::UnknownRecipient, m));
        }
        let msg_id = office::msg_id(re, msg_id, if re.is_some() { "msg_id" } else { "id" })?;
        let store = &mut *self.store;
        let (order, new, filed) =
            Office::order(store, now, re, &claims.sub, &msg_id, incident, to, text)?;
        self.file(now, &claims.sub, filed);
        let o = self.store.order(&order).map_err(|e| store_err(re, e))?;
        Ok(json!({"order": o, "new": new}))
    }

    /// Answers an order (over signaling, or `POST /api/orders/{id}/answer`): only its addressee
    /// may, along the order states; the same answer twice is a retry, not an error.
    #[allow(clippy::too_many_arguments)]
    pub fn answer_order(
        &mut self,
        now: UnixMs,
        claims: &Claims,
        re: Option<RequestId>,
        order: &str,
        answer: OrderAnswer,
        eta_min: Option<u32>,
        reason: Option<String>,
    ) -> Result<Value, ProtoError> {
        let store = &mut *self.store;
        let filed = Office::answer(store, now, re, claims, order, answer, eta_min, reason)?;
        if let Some(f) = filed {
            self.file(now, &claims.sub, f);
        }
        let o = self.store.order(order).map_err(|e| store_err(re, e))?;
        Ok(json!({"order": o}))
    }

    // -- Drone commands -----------------------------------------------------------------------

    /// `drone_command`: see docs/protocol.md. Returns the reply's data.
    fn drone_command(
        &mut self,
        r: &Req,
        id: RequestId,
        drone: &str,
        command: DroneCommand,
        (lat, lon, alt): (Option<f64>, Option<f64>, Option<f64>),
    ) -> Result<Value, ProtoError> {
        let (now, claims, requester) = (r.now, &r.claims, r.sid);
        let known = self.drones.known(drone);
        if let Some(reason) = Drones::refusal(claims, drone) {
            let incidents = match &known {
                Some(name) => self.drone_incidents(name),
                None => self
                    .incidents
                    .of_session(requester)
                    .cloned()
                    .unwrap_or_default(),
            };
            let detail =
                json!({"drone": drone, "command": command, "by": claims.sub, "reason": reason});
            self.log_all(
                now,
                &incidents,
                &claims.sub,
                "drone_command_refused",
                &detail,
            );
            return Err(err(Some(id), ErrorCode::Forbidden, reason));
        }
        let guided = command == DroneCommand::Guided;
        if guided {
            Drones::guided_target(id, lat, lon, alt)?;
        }
        let not_connected = || {
            let m = format!("drone {drone} is not connected to this node");
            err(Some(id), ErrorCode::NotFound, m)
        };
        let name = known.ok_or_else(not_connected)?;
        let bridge = match self.drones.bridge_of(&name) {
            Some((b, _)) if self.sessions.live(now, b) => b.to_owned(),
            _ => return Err(not_connected()),
        };
        let incidents = self.drone_incidents(&name);
        let accepted = self.drones.accept(now, id, &name, &bridge, requester)?;
        let event = DroneCommandEvent {
            cmd: accepted.cmd.clone(),
            drone: accepted.drone,
            command: CommandName::Known(command),
            by: claims.sub.clone(),
            lat: lat.filter(|_| guided),
            lon: lon.filter(|_| guided),
            alt: alt.filter(|_| guided),
        };
        let detail = serde_json::to_value(&event).unwrap_or(Value::Null);
        self.log_all(now, &incidents, &claims.sub, "drone_command", &detail);
        self.push_event(&bridge, &Event::DroneCommand(event), true);
        Ok(json!({"cmd": accepted.cmd, "status": "sent"}))
    }
}
