//! Authorisation: every cell of the role matrix, checked through the protocol.

use super::*;

#[test]
fn every_cell_of_the_role_matrix() {
    let mut h = H::new();
    let mut id = 1;
    for role in Role::ALL {
        let sub = format!("{}-1", role.as_str());
        let (conn, _) = h.connect(&sub, role);
        for action in Action::ALL {
            id += 1;
            let reply = h.request(
                conn,
                testkit::probe(action, &Subject::parse(&sub).unwrap(), id),
            );
            let denied = testkit::is_forbidden(&reply, id);
            assert_eq!(denied, !role.may(action), "{role} {action}: {reply:?}");
            if let Some(msg) = testkit::probe_without_reply(action, &Subject::parse(&sub).unwrap())
            {
                h.send(conn, &msg);
                let answers = h.take(conn);
                let denied = answers.iter().any(testkit::is_forbidden_without_re);
                assert_eq!(
                    denied,
                    !role.may(action),
                    "{role} {action} ({}): {answers:?}",
                    msg.kind()
                );
                assert!(
                    denied || answers.iter().all(|m| matches!(m, ServerMsg::Event { .. })),
                    "{answers:?}"
                );
            }
        }
    }
}
