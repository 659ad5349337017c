//! The command allow-list and what each command sends to the vehicle.
//!
//! | command | MAVLink sent to the vehicle's autopilot component |
//! |---|---|
//! | `rtl` | COMMAND_LONG `MAV_CMD_NAV_RETURN_TO_LAUNCH` (20), no parameters |
//! | `land` | COMMAND_LONG `MAV_CMD_NAV_LAND` (21), latitude/longitude/altitude NaN = where it is |
//! | `hold` | ArduPilot: COMMAND_LONG `MAV_CMD_DO_SET_MODE` (176), custom mode LOITER (copter 5, plane 12) or HOLD (rover 4); PX4: `MAV_CMD_DO_SET_MODE` AUTO/LOITER (main 4, sub 3); others: `MAV_CMD_NAV_LOITER_UNLIM` (17) at the current position (NaN) |
//! | `guided` | COMMAND_INT `MAV_CMD_DO_REPOSITION` (192), frame `MAV_FRAME_GLOBAL_RELATIVE_ALT`, x/y = lat/lon × 10⁷, z = `alt` metres above home (NaN = keep altitude), param2 = `MAV_DO_REPOSITION_FLAGS_CHANGE_MODE` (switch to guided), ground speed −1 (default), yaw NaN (unchanged) |
//!
//! Every command is answered by the vehicle's COMMAND_ACK for the same `MAV_CMD`; the core
//! re-sends (with `confirmation` counting up for COMMAND_LONG) until one arrives or it gives up.

use mavlink::dialects::ardupilotmega::{
    MavAutopilot, MavCmd, MavFrame, MavMessage, MavResult, MavType, COMMAND_INT_DATA,
    COMMAND_LONG_DATA,
};

use crate::telemetry::{ardu_family, ArduFamily};

/// An allowed command.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Action {
    /// Return to launch.
    Rtl,
    /// Hold (loiter) where it is.
    Hold,
    /// Land where it is.
    Land,
    /// Fly to a point.
    Guided {
        /// Latitude, degrees.
        lat: f64,
        /// Longitude, degrees.
        lon: f64,
        /// Altitude above home, metres (`None`: keep the current altitude).
        alt: Option<f64>,
    },
}

impl Action {
    /// The protocol name (`rtl`, `hold`, `land`, `guided`).
    pub fn name(&self) -> &'static str {
        match self {
            Action::Rtl => "rtl",
            Action::Hold => "hold",
            Action::Land => "land",
            Action::Guided { .. } => "guided",
        }
    }
}

/// How a command ended, as `drone_command_ack` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckResult {
    /// MAV_RESULT_ACCEPTED.
    Accepted,
    /// MAV_RESULT_TEMPORARILY_REJECTED.
    TemporarilyRejected,
    /// MAV_RESULT_DENIED.
    Denied,
    /// MAV_RESULT_UNSUPPORTED (and the other "not this way" results).
    Unsupported,
    /// MAV_RESULT_FAILED.
    Failed,
    /// MAV_RESULT_IN_PROGRESS (a final result follows).
    InProgress,
    /// MAV_RESULT_CANCELLED, or superseded by a newer command of the same kind.
    Cancelled,
    /// The vehicle never acknowledged.
    Timeout,
    /// The bridge refused (unknown drone, malformed command).
    Refused,
}

impl AckResult {
    /// The protocol name.
    pub fn as_str(&self) -> &'static str {
        match self {
            AckResult::Accepted => "accepted",
            AckResult::TemporarilyRejected => "temporarily_rejected",
            AckResult::Denied => "denied",
            AckResult::Unsupported => "unsupported",
            AckResult::Failed => "failed",
            AckResult::InProgress => "in_progress",
            AckResult::Cancelled => "cancelled",
            AckResult::Timeout => "timeout",
            AckResult::Refused => "refused",
        }
    }

    /// The result of a vehicle's MAV_RESULT.
    pub fn of(r: MavResult) -> AckResult {
        match r {
            MavResult::MAV_RESULT_ACCEPTED => AckResult::Accepted,
            MavResult::MAV_RESULT_TEMPORARILY_REJECTED => AckResult::TemporarilyRejected,
            MavResult::MAV_RESULT_DENIED | MavResult::MAV_RESULT_NOT_IN_CONTROL => {
                AckResult::Denied
            }
            MavResult::MAV_RESULT_FAILED => AckResult::Failed,
            MavResult::MAV_RESULT_IN_PROGRESS => AckResult::InProgress,
            MavResult::MAV_RESULT_CANCELLED => AckResult::Cancelled,
            _ => AckResult::Unsupported,
        }
    }
}

/// The vehicle a command goes to: its system and autopilot component, and what it runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    /// System id.
    pub sysid: u8,
    /// The autopilot's component id.
    pub compid: u8,
    /// Autopilot firmware.
    pub autopilot: MavAutopilot,
    /// Vehicle type.
    pub mavtype: MavType,
}

fn long(t: Target, command: MavCmd, p: [f32; 7], confirmation: u8) -> MavMessage {
    MavMessage::COMMAND_LONG(COMMAND_LONG_DATA {
        param1: p[0],
        param2: p[1],
        param3: p[2],
        param4: p[3],
        param5: p[4],
        param6: p[5],
        param7: p[6],
        command,
        target_system: t.sysid,
        target_component: t.compid,
        confirmation,
    })
}

/// The message for `action` to `t`; `attempt` counts from 0 (COMMAND_LONG's `confirmation`).
pub fn encode(action: Action, t: Target, attempt: u8) -> MavMessage {
    const NAN: f32 = f32::NAN;
    match action {
        Action::Rtl => long(t, MavCmd::MAV_CMD_NAV_RETURN_TO_LAUNCH, [0.0; 7], attempt),
        Action::Land => long(
            t,
            MavCmd::MAV_CMD_NAV_LAND,
            [0.0, 0.0, 0.0, NAN, NAN, NAN, NAN],
            attempt,
        ),
        Action::Hold => {
            let custom_mode_enabled = 1.0;
            let set_mode = |main: f32, sub: f32| {
                long(
                    t,
                    MavCmd::MAV_CMD_DO_SET_MODE,
                    [custom_mode_enabled, main, sub, 0.0, 0.0, 0.0, 0.0],
                    attempt,
                )
            };
            match (t.autopilot, ardu_family(t.mavtype)) {
                (MavAutopilot::MAV_AUTOPILOT_ARDUPILOTMEGA, ArduFamily::Copter) => {
                    set_mode(5.0, 0.0)
                }
                (MavAutopilot::MAV_AUTOPILOT_ARDUPILOTMEGA, ArduFamily::Plane) => {
                    set_mode(12.0, 0.0)
                }
                (MavAutopilot::MAV_AUTOPILOT_ARDUPILOTMEGA, ArduFamily::Rover) => {
                    set_mode(4.0, 0.0)
                }
                (MavAutopilot::MAV_AUTOPILOT_PX4, _) => set_mode(4.0, 3.0),
                _ => long(
                    t,
                    MavCmd::MAV_CMD_NAV_LOITER_UNLIM,
                    [0.0, 0.0, 0.0, NAN, NAN, NAN, NAN],
                    attempt,
                ),
            }
        }
        Action::Guided { lat, lon, alt } => MavMessage::COMMAND_INT(COMMAND_INT_DATA {
            param1: -1.0,
            param2: 1.0, // MAV_DO_REPOSITION_FLAGS_CHANGE_MODE
            param3: 0.0,
            param4: NAN,
            x: (lat * 1e7).round() as i32,
            y: (lon * 1e7).round() as i32,
            z: alt.map_or(NAN, |a| a as f32),
            command: MavCmd::MAV_CMD_DO_REPOSITION,
            target_system: t.sysid,
            target_component: t.compid,
            frame: MavFrame::MAV_FRAME_GLOBAL_RELATIVE_ALT,
            current: 0,
            autocontinue: 0,
        }),
    }
}

/// The MAV_CMD a COMMAND_ACK for `msg` names.
pub fn acked_command(msg: &MavMessage) -> Option<MavCmd> {
    match msg {
        MavMessage::COMMAND_LONG(c) => Some(c.command),
        MavMessage::COMMAND_INT(c) => Some(c.command),
        _ => None,
    }
}

/// Checks a guided target's ranges.
pub fn validate(action: &Action) -> Result<(), String> {
    if let Action::Guided { lat, lon, alt } = action {
        if !lat.is_finite() || !(-90.0..=90.0).contains(lat) {
            return Err(format!("latitude {lat} out of range"));
        }
        if !lon.is_finite() || !(-180.0..=180.0).contains(lon) {
            return Err(format!("longitude {lon} out of range"));
        }
        if let Some(a) = alt {
            if !a.is_finite() || !(-1000.0..=20_000.0).contains(a) {
                return Err(format!("altitude {a} out of range"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copter() -> Target {
        Target {
            sysid: 1,
            compid: 1,
            autopilot: MavAutopilot::MAV_AUTOPILOT_ARDUPILOTMEGA,
            mavtype: MavType::MAV_TYPE_QUADROTOR,
        }
    }

    #[test]
    fn each_command_encodes_as_documented() {
        let MavMessage::COMMAND_LONG(c) = encode(Action::Rtl, copter(), 2) else {
            panic!()
        };
        assert_eq!(
            (
                c.command,
                c.target_system,
                c.target_component,
                c.confirmation
            ),
            (MavCmd::MAV_CMD_NAV_RETURN_TO_LAUNCH, 1, 1, 2)
        );
        let MavMessage::COMMAND_LONG(c) = encode(Action::Hold, copter(), 0) else {
            panic!()
        };
        assert_eq!(
            (c.command, c.param1, c.param2),
            (MavCmd::MAV_CMD_DO_SET_MODE, 1.0, 5.0)
        );
        let other = Target {
            autopilot: MavAutopilot::MAV_AUTOPILOT_GENERIC,
            ..copter()
        };
        let MavMessage::COMMAND_LONG(c) = encode(Action::Hold, other, 0) else {
            panic!()
        };
        assert_eq!(c.command, MavCmd::MAV_CMD_NAV_LOITER_UNLIM);
        let MavMessage::COMMAND_LONG(c) = encode(Action::Land, copter(), 0) else {
            panic!()
        };
        assert_eq!(c.command, MavCmd::MAV_CMD_NAV_LAND);
        let g = Action::Guided {
            lat: 30.1234567,
            lon: 114.7654321,
            alt: Some(40.0),
        };
        let MavMessage::COMMAND_INT(c) = encode(g, copter(), 0) else {
            panic!()
        };
        assert_eq!(
            (c.command, c.x, c.y, c.z),
            (
                MavCmd::MAV_CMD_DO_REPOSITION,
                301_234_567,
                1_147_654_321,
                40.0
            )
        );
        assert_eq!(c.frame, MavFrame::MAV_FRAME_GLOBAL_RELATIVE_ALT);
        assert!(validate(&Action::Guided {
            lat: 91.0,
            lon: 0.0,
            alt: None
        })
        .is_err());
        assert!(validate(&g).is_ok());
    }

    #[test]
    fn results_map_to_protocol_names() {
        assert_eq!(
            AckResult::of(MavResult::MAV_RESULT_ACCEPTED).as_str(),
            "accepted"
        );
        assert_eq!(
            AckResult::of(MavResult::MAV_RESULT_TEMPORARILY_REJECTED).as_str(),
            "temporarily_rejected"
        );
        assert_eq!(
            AckResult::of(MavResult::MAV_RESULT_COMMAND_INT_ONLY).as_str(),
            "unsupported"
        );
        assert_eq!(AckResult::Timeout.as_str(), "timeout");
    }
}
