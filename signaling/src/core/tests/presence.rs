//! Presence and positions: coalesced fan-out, what `units` shows.

use super::*;

#[test]
fn positions_reach_members_coalesced_and_units_show_them() {
    let mut h = H::new();
    let (op, _) = h.connect("op-1", Role::Operator);
    let (off, _) = h.connect("off-1", Role::Officer);
    h.take(op);
    // Ten reports in 100 ms: one goes out at once, the newest at the end of the interval.
    for i in 0..10 {
        h.send(off, &pos(30.0 + f64::from(i) * 0.001));
        h.now += 10;
    }
    let evs = kinds(&h.events(op), "position");
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0]["lat"], 30.0);
    assert_eq!(evs[0]["subject"], "off-1");
    // The held one is due exactly at the end of the window.
    assert_eq!(h.core.next_position_due(), Some(UnixMs(T0 + 200)));
    h.advance(200);
    assert_eq!(h.core.next_position_due(), None);
    let evs = kinds(&h.events(op), "position");
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0]["lat"], 30.009);
    assert!(
        h.events(off).is_empty(),
        "the sender does not get its own position"
    );
    let claims = h
        .core
        .authenticate(&h.token("op-1", Role::Operator), UnixMs(h.now))
        .unwrap();
    let units = h.core.units_for(UnixMs(h.now), &claims, None);
    let u = units
        .iter()
        .find(|u| u.subject.as_str() == "off-1")
        .unwrap();
    assert!(u.online);
    assert_eq!(u.position.as_ref().unwrap().lat, 30.009);
    // Bad coordinates are refused with a typed error (re: null without an id).
    h.send(off, &pos(123.0));
    assert!(matches!(
        &h.take(off)[0],
        ServerMsg::Error {
            re: None,
            code: ErrorCode::BadRequest,
            ..
        }
    ));
}
