//! Telemetry extraction: MAVLink messages of one vehicle merged into the mesh's
//! [`Telemetry`] (`signaling::proto::Telemetry`), and the mode names of ArduPilot and PX4.
//!
//! Pure functions of the messages; no clock (the core stamps `time` when it sends).

use mavlink::dialects::ardupilotmega::{
    GpsFixType, MavAutopilot, MavMessage, MavModeFlag, MavType,
};

/// A drone's telemetry as the mesh carries it (`telemetry` in docs/protocol.md).
pub use signaling::proto::Telemetry;

/// Where a message's fields went: whether anything the mesh shows changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merged {
    /// The message carried telemetry.
    Changed,
    /// Not a telemetry message.
    Ignored,
}

fn set<T: PartialEq>(slot: &mut Option<T>, v: T, changed: &mut bool) {
    if slot.as_ref() != Some(&v) {
        *slot = Some(v);
        *changed = true;
    }
}

/// Rounds to 7 decimals (1e-7 degrees is the resolution of MAVLink's integer coordinates).
fn deg_e7(v: i32) -> f64 {
    f64::from(v) / 1e7
}

/// Merges one message of the vehicle's autopilot into `t`. HEARTBEAT must come from the
/// autopilot (the caller checks its `autopilot` field).
pub fn apply(t: &mut Telemetry, msg: &MavMessage) -> Merged {
    let mut c = false;
    match msg {
        MavMessage::HEARTBEAT(h) => {
            set(
                &mut t.armed,
                h.base_mode
                    .contains(MavModeFlag::MAV_MODE_FLAG_SAFETY_ARMED),
                &mut c,
            );
            set(&mut t.vehicle, vehicle_name(h.mavtype), &mut c);
            if let Some(m) = mode_name(h.autopilot, h.mavtype, h.base_mode, h.custom_mode) {
                set(&mut t.mode, m, &mut c);
            }
        }
        MavMessage::GLOBAL_POSITION_INT(p) => {
            set(&mut t.lat, deg_e7(p.lat), &mut c);
            set(&mut t.lon, deg_e7(p.lon), &mut c);
            set(&mut t.alt_amsl, f64::from(p.alt) / 1000.0, &mut c);
            set(&mut t.alt_rel, f64::from(p.relative_alt) / 1000.0, &mut c);
            if p.hdg != u16::MAX {
                set(&mut t.heading, f64::from(p.hdg) / 100.0, &mut c);
            }
        }
        MavMessage::ATTITUDE(a) => {
            set(&mut t.roll, f64::from(a.roll).to_degrees(), &mut c);
            set(&mut t.pitch, f64::from(a.pitch).to_degrees(), &mut c);
            set(&mut t.yaw, f64::from(a.yaw).to_degrees(), &mut c);
        }
        MavMessage::VFR_HUD(v) => {
            set(&mut t.ground_speed, f64::from(v.groundspeed), &mut c);
            set(&mut t.air_speed, f64::from(v.airspeed), &mut c);
            set(&mut t.climb, f64::from(v.climb), &mut c);
            set(
                &mut t.heading,
                f64::from(v.heading).rem_euclid(360.0),
                &mut c,
            );
        }
        MavMessage::SYS_STATUS(s) => {
            if s.battery_remaining >= 0 {
                set(&mut t.battery_pct, f64::from(s.battery_remaining), &mut c);
            }
            if s.voltage_battery != u16::MAX {
                set(
                    &mut t.voltage,
                    f64::from(s.voltage_battery) / 1000.0,
                    &mut c,
                );
            }
            if s.current_battery >= 0 {
                set(&mut t.current, f64::from(s.current_battery) / 100.0, &mut c);
            }
        }
        MavMessage::BATTERY_STATUS(b) => {
            // The first battery stands for the vehicle (SYS_STATUS says the same for it).
            if b.id != 0 {
                return Merged::Ignored;
            }
            if b.battery_remaining >= 0 {
                set(&mut t.battery_pct, f64::from(b.battery_remaining), &mut c);
            }
            let cells: Vec<f64> = b
                .voltages
                .iter()
                .filter(|&&v| v != u16::MAX)
                .map(|&v| f64::from(v) / 1000.0)
                .collect();
            if !cells.is_empty() {
                set(&mut t.voltage, cells.iter().sum(), &mut c);
            }
            if b.current_battery >= 0 {
                set(&mut t.current, f64::from(b.current_battery) / 100.0, &mut c);
            }
        }
        MavMessage::GPS_RAW_INT(g) => {
            set(&mut t.gps_fix, gps_fix(g.fix_type), &mut c);
            if g.satellites_visible != u8::MAX {
                set(&mut t.satellites, g.satellites_visible, &mut c);
            }
        }
        MavMessage::HOME_POSITION(h) => {
            set(&mut t.home_lat, deg_e7(h.latitude), &mut c);
            set(&mut t.home_lon, deg_e7(h.longitude), &mut c);
            set(&mut t.home_alt, f64::from(h.altitude) / 1000.0, &mut c);
        }
        MavMessage::STATUSTEXT(s) => {
            let text = String::from_utf8_lossy(&s.text[..])
                .trim_end_matches('\0')
                .to_owned();
            set(&mut t.status_text, text, &mut c);
        }
        _ => return Merged::Ignored,
    }
    // A message that repeats the same values is still telemetry, just nothing new to send.
    if c {
        Merged::Changed
    } else {
        Merged::Ignored
    }
}

fn gps_fix(f: GpsFixType) -> u8 {
    f as u8
}

/// "quadrotor", "fixed_wing", …: the MAV_TYPE name without its prefix, lower case.
pub fn vehicle_name(t: MavType) -> String {
    let name = format!("{t:?}");
    name.strip_prefix("MAV_TYPE_")
        .unwrap_or(&name)
        .to_ascii_lowercase()
}

/// Whether a HEARTBEAT comes from a flight controller (not a GCS, camera, gimbal or companion).
pub fn is_autopilot(autopilot: MavAutopilot, t: MavType) -> bool {
    autopilot != MavAutopilot::MAV_AUTOPILOT_INVALID
        && !matches!(
            t,
            MavType::MAV_TYPE_GCS
                | MavType::MAV_TYPE_ONBOARD_CONTROLLER
                | MavType::MAV_TYPE_GIMBAL
                | MavType::MAV_TYPE_CAMERA
                | MavType::MAV_TYPE_ADSB
                | MavType::MAV_TYPE_ANTENNA_TRACKER
        )
}

/// The family of ArduPilot firmware a MAV_TYPE runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArduFamily {
    /// ArduCopter (multirotors, helicopters).
    Copter,
    /// ArduPlane (including VTOL).
    Plane,
    /// Rover and boats.
    Rover,
    /// Anything else.
    Other,
}

/// The ArduPilot firmware family of `t`.
pub fn ardu_family(t: MavType) -> ArduFamily {
    use MavType::*;
    match t {
        MAV_TYPE_QUADROTOR | MAV_TYPE_HEXAROTOR | MAV_TYPE_OCTOROTOR | MAV_TYPE_TRICOPTER
        | MAV_TYPE_COAXIAL | MAV_TYPE_HELICOPTER | MAV_TYPE_DODECAROTOR | MAV_TYPE_DECAROTOR => {
            ArduFamily::Copter
        }
        MAV_TYPE_FIXED_WING
        | MAV_TYPE_VTOL_TAILSITTER_DUOROTOR
        | MAV_TYPE_VTOL_TAILSITTER_QUADROTOR
        | MAV_TYPE_VTOL_TILTROTOR
        | MAV_TYPE_VTOL_FIXEDROTOR
        | MAV_TYPE_VTOL_TAILSITTER
        | MAV_TYPE_VTOL_TILTWING => ArduFamily::Plane,
        MAV_TYPE_GROUND_ROVER | MAV_TYPE_SURFACE_BOAT => ArduFamily::Rover,
        _ => ArduFamily::Other,
    }
}

/// The flight mode name of a HEARTBEAT, for ArduPilot and PX4; `None` when unknown.
pub fn mode_name(
    autopilot: MavAutopilot,
    t: MavType,
    base: MavModeFlag,
    custom: u32,
) -> Option<String> {
    if !base.contains(MavModeFlag::MAV_MODE_FLAG_CUSTOM_MODE_ENABLED) {
        return None;
    }
    let name = match autopilot {
        MavAutopilot::MAV_AUTOPILOT_ARDUPILOTMEGA => match ardu_family(t) {
            ArduFamily::Copter => match custom {
                0 => "STABILIZE",
                1 => "ACRO",
                2 => "ALT_HOLD",
                3 => "AUTO",
                4 => "GUIDED",
                5 => "LOITER",
                6 => "RTL",
                7 => "CIRCLE",
                9 => "LAND",
                11 => "DRIFT",
                13 => "SPORT",
                14 => "FLIP",
                15 => "AUTOTUNE",
                16 => "POSHOLD",
                17 => "BRAKE",
                18 => "THROW",
                19 => "AVOID_ADSB",
                20 => "GUIDED_NOGPS",
                21 => "SMART_RTL",
                _ => return None,
            },
            ArduFamily::Plane => match custom {
                0 => "MANUAL",
                1 => "CIRCLE",
                2 => "STABILIZE",
                3 => "TRAINING",
                4 => "ACRO",
                5 => "FBWA",
                6 => "FBWB",
                7 => "CRUISE",
                8 => "AUTOTUNE",
                10 => "AUTO",
                11 => "RTL",
                12 => "LOITER",
                13 => "TAKEOFF",
                15 => "GUIDED",
                17 => "QSTABILIZE",
                18 => "QHOVER",
                19 => "QLOITER",
                20 => "QLAND",
                21 => "QRTL",
                _ => return None,
            },
            ArduFamily::Rover => match custom {
                0 => "MANUAL",
                3 => "STEERING",
                4 => "HOLD",
                5 => "LOITER",
                10 => "AUTO",
                11 => "RTL",
                12 => "SMART_RTL",
                15 => "GUIDED",
                _ => return None,
            },
            ArduFamily::Other => return None,
        },
        MavAutopilot::MAV_AUTOPILOT_PX4 => {
            let main = (custom >> 16) & 0xFF;
            let sub = (custom >> 24) & 0xFF;
            match (main, sub) {
                (1, _) => "MANUAL",
                (2, _) => "ALTCTL",
                (3, _) => "POSCTL",
                (4, 2) => "TAKEOFF",
                (4, 3) => "LOITER",
                (4, 4) => "AUTO",
                (4, 5) => "RTL",
                (4, 6) => "LAND",
                (4, _) => "AUTO",
                (5, _) => "ACRO",
                (6, _) => "OFFBOARD",
                (7, _) => "STABILIZED",
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mavlink::dialects::ardupilotmega::*;

    #[test]
    fn messages_fill_the_spec_fields() {
        let mut t = Telemetry::default();
        assert_eq!(
            apply(&mut t, &crate::frame::tests::heartbeat()),
            Merged::Changed
        );
        assert_eq!(
            (t.mode.as_deref(), t.armed, t.vehicle.as_deref()),
            (Some("GUIDED"), Some(false), Some("quadrotor"))
        );
        apply(&mut t, &crate::frame::tests::position());
        assert_eq!(
            (t.lat, t.lon, t.alt_amsl, t.alt_rel, t.heading),
            (Some(30.5), Some(114.3), Some(52.0), Some(30.0), Some(90.0))
        );
        assert_eq!(
            apply(&mut t, &crate::frame::tests::position()),
            Merged::Ignored,
            "nothing new"
        );
        apply(
            &mut t,
            &MavMessage::BATTERY_STATUS(BATTERY_STATUS_DATA {
                voltages: [
                    4200,
                    4100,
                    4000,
                    u16::MAX,
                    u16::MAX,
                    u16::MAX,
                    u16::MAX,
                    u16::MAX,
                    u16::MAX,
                    u16::MAX,
                ],
                current_battery: 1250,
                battery_remaining: 76,
                ..BATTERY_STATUS_DATA::DEFAULT
            }),
        );
        assert_eq!(t.battery_pct, Some(76.0));
        assert!((t.voltage.unwrap() - 12.3).abs() < 1e-9);
        assert_eq!(t.current, Some(12.5));
        apply(
            &mut t,
            &MavMessage::ATTITUDE(ATTITUDE_DATA {
                roll: std::f32::consts::FRAC_PI_2,
                ..ATTITUDE_DATA::DEFAULT
            }),
        );
        assert!((t.roll.unwrap() - 90.0).abs() < 1e-4);
        apply(
            &mut t,
            &MavMessage::GPS_RAW_INT(GPS_RAW_INT_DATA {
                fix_type: GpsFixType::GPS_FIX_TYPE_3D_FIX,
                satellites_visible: 14,
                ..GPS_RAW_INT_DATA::DEFAULT
            }),
        );
        assert_eq!((t.gps_fix, t.satellites), (Some(3), Some(14)));
        apply(
            &mut t,
            &MavMessage::STATUSTEXT(STATUSTEXT_DATA {
                severity: MavSeverity::MAV_SEVERITY_INFO,
                text: "EKF ok".into(),
            }),
        );
        assert_eq!(t.status_text.as_deref(), Some("EKF ok"));
        let json = serde_json::to_value(&t).unwrap();
        assert!(
            json.get("home_lat").is_none(),
            "unknown fields are omitted: {json}"
        );
        assert_eq!(json["lat"], 30.5);
    }

    #[test]
    fn modes_of_ardupilot_and_px4() {
        let custom = MavModeFlag::MAV_MODE_FLAG_CUSTOM_MODE_ENABLED;
        let ap = MavAutopilot::MAV_AUTOPILOT_ARDUPILOTMEGA;
        assert_eq!(
            mode_name(ap, MavType::MAV_TYPE_QUADROTOR, custom, 6).as_deref(),
            Some("RTL")
        );
        assert_eq!(
            mode_name(ap, MavType::MAV_TYPE_FIXED_WING, custom, 12).as_deref(),
            Some("LOITER")
        );
        let px4 = MavAutopilot::MAV_AUTOPILOT_PX4;
        assert_eq!(
            mode_name(
                px4,
                MavType::MAV_TYPE_QUADROTOR,
                custom,
                (4 << 16) | (6 << 24)
            )
            .as_deref(),
            Some("LAND")
        );
        assert_eq!(
            mode_name(ap, MavType::MAV_TYPE_QUADROTOR, MavModeFlag::empty(), 6),
            None
        );
    }
}
