//! What units report: a person's position and a drone's telemetry, with their range checks and
//! the merge of partial telemetry reports.

use serde::{Deserialize, Serialize};

use crate::time::UnixMs;

/// A WGS-84 position report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// Latitude, degrees, −90..=90.
    pub lat: f64,
    /// Longitude, degrees, −180..=180.
    pub lon: f64,
    /// Altitude above mean sea level, metres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alt: Option<f64>,
    /// Horizontal accuracy (1 σ), metres, ≥ 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// Heading, degrees clockwise from true north, 0..360.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heading: Option<f64>,
    /// Ground speed, m/s, ≥ 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
    /// When the fix was taken (the node's receive time if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<UnixMs>,
}

impl Position {
    /// Checks ranges; the message names the first bad field.
    pub fn validate(&self) -> Result<(), String> {
        let finite = |v: f64, name: &str| {
            if v.is_finite() {
                Ok(())
            } else {
                Err(format!("{name} must be a finite number"))
            }
        };
        finite(self.lat, "lat")?;
        finite(self.lon, "lon")?;
        if !(-90.0..=90.0).contains(&self.lat) {
            return Err("lat must be within -90..=90".into());
        }
        if !(-180.0..=180.0).contains(&self.lon) {
            return Err("lon must be within -180..=180".into());
        }
        if let Some(a) = self.alt {
            finite(a, "alt")?;
        }
        if let Some(a) = self.accuracy {
            finite(a, "accuracy")?;
            if a < 0.0 {
                return Err("accuracy must be >= 0".into());
            }
        }
        if let Some(h) = self.heading {
            finite(h, "heading")?;
            if !(0.0..360.0).contains(&h) {
                return Err("heading must be within 0..360".into());
            }
        }
        if let Some(s) = self.speed {
            finite(s, "speed")?;
            if s < 0.0 {
                return Err("speed must be >= 0".into());
            }
        }
        Ok(())
    }
}

/// A drone's telemetry as a bridge reports it (`telemetry`). Every field but `time` is optional
/// and omitted when absent; the node merges each report into the drone's last known telemetry
/// (fields present overwrite), so the merged value is what consoles and `units` see.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    /// When the bridge took the sample, by its clock.
    pub time: UnixMs,
    /// Flight mode, e.g. `GUIDED`, `RTL`, `LOITER`, `LAND`, `AUTO`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Motors armed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub armed: Option<bool>,
    /// Vehicle type, e.g. `quadrotor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vehicle: Option<String>,
    /// Latitude, degrees WGS-84, −90..=90.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lat: Option<f64>,
    /// Longitude, degrees WGS-84, −180..=180.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lon: Option<f64>,
    /// Altitude above mean sea level, metres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alt_amsl: Option<f64>,
    /// Altitude relative to home, metres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alt_rel: Option<f64>,
    /// Roll, degrees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roll: Option<f64>,
    /// Pitch, degrees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pitch: Option<f64>,
    /// Yaw, degrees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub yaw: Option<f64>,
    /// Heading, degrees clockwise from north, 0..360.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heading: Option<f64>,
    /// Ground speed, m/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ground_speed: Option<f64>,
    /// Air speed, m/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub air_speed: Option<f64>,
    /// Climb rate, m/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub climb: Option<f64>,
    /// Remaining battery, percent 0..100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery_pct: Option<f64>,
    /// Battery voltage, V.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voltage: Option<f64>,
    /// Battery current, A.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<f64>,
    /// GPS fix type (MAVLink `GPS_FIX_TYPE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gps_fix: Option<u8>,
    /// Satellites visible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub satellites: Option<u8>,
    /// Home latitude, degrees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home_lat: Option<f64>,
    /// Home longitude, degrees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home_lon: Option<f64>,
    /// Home altitude (AMSL), metres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home_alt: Option<f64>,
    /// The latest STATUSTEXT from the vehicle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_text: Option<String>,
}

impl Telemetry {
    /// Longest `mode` and `vehicle`, in characters.
    pub const MAX_NAME: usize = 64;
    /// Longest `status_text`, in characters.
    pub const MAX_STATUS_TEXT: usize = 256;

    /// Overwrites the fields present in `newer` (and `time`).
    pub fn merge(&mut self, newer: &Telemetry) {
        fn set<T: Clone>(dst: &mut Option<T>, src: &Option<T>) {
            if let Some(v) = src {
                *dst = Some(v.clone());
            }
        }
        self.time = newer.time;
        set(&mut self.mode, &newer.mode);
        set(&mut self.armed, &newer.armed);
        set(&mut self.vehicle, &newer.vehicle);
        set(&mut self.lat, &newer.lat);
        set(&mut self.lon, &newer.lon);
        set(&mut self.alt_amsl, &newer.alt_amsl);
        set(&mut self.alt_rel, &newer.alt_rel);
        set(&mut self.roll, &newer.roll);
        set(&mut self.pitch, &newer.pitch);
        set(&mut self.yaw, &newer.yaw);
        set(&mut self.heading, &newer.heading);
        set(&mut self.ground_speed, &newer.ground_speed);
        set(&mut self.air_speed, &newer.air_speed);
        set(&mut self.climb, &newer.climb);
        set(&mut self.battery_pct, &newer.battery_pct);
        set(&mut self.voltage, &newer.voltage);
        set(&mut self.current, &newer.current);
        set(&mut self.gps_fix, &newer.gps_fix);
        set(&mut self.satellites, &newer.satellites);
        set(&mut self.home_lat, &newer.home_lat);
        set(&mut self.home_lon, &newer.home_lon);
        set(&mut self.home_alt, &newer.home_alt);
        set(&mut self.status_text, &newer.status_text);
    }

    /// Checks what the node relies on: finite numbers, `lat`/`lon` (and home) within range,
    /// bounded strings. Other ranges (heading, battery) are the bridge's business. The message
    /// names the first bad field.
    pub fn validate(&self) -> Result<(), String> {
        let nums = [
            ("lat", self.lat),
            ("lon", self.lon),
            ("alt_amsl", self.alt_amsl),
            ("alt_rel", self.alt_rel),
            ("roll", self.roll),
            ("pitch", self.pitch),
            ("yaw", self.yaw),
            ("heading", self.heading),
            ("ground_speed", self.ground_speed),
            ("air_speed", self.air_speed),
            ("climb", self.climb),
            ("battery_pct", self.battery_pct),
            ("voltage", self.voltage),
            ("current", self.current),
            ("home_lat", self.home_lat),
            ("home_lon", self.home_lon),
            ("home_alt", self.home_alt),
        ];
        for (name, v) in nums {
            if v.is_some_and(|v| !v.is_finite()) {
                return Err(format!("{name} must be a finite number"));
            }
        }
        for (name, v) in [("lat", self.lat), ("home_lat", self.home_lat)] {
            if v.is_some_and(|v| !(-90.0..=90.0).contains(&v)) {
                return Err(format!("{name} must be within -90..=90"));
            }
        }
        for (name, v) in [("lon", self.lon), ("home_lon", self.home_lon)] {
            if v.is_some_and(|v| !(-180.0..=180.0).contains(&v)) {
                return Err(format!("{name} must be within -180..=180"));
            }
        }
        for (name, v, max) in [
            ("mode", &self.mode, Self::MAX_NAME),
            ("vehicle", &self.vehicle, Self::MAX_NAME),
            ("status_text", &self.status_text, Self::MAX_STATUS_TEXT),
        ] {
            if v.as_ref().is_some_and(|s| s.chars().count() > max) {
                return Err(format!("{name} must be at most {max} characters"));
            }
        }
        Ok(())
    }

    /// The position this telemetry gives (`lat`, `lon`, `alt_amsl`, and heading, ground speed
    /// and time), when it has both coordinates.
    pub fn position(&self) -> Option<Position> {
        Some(Position {
            lat: self.lat?,
            lon: self.lon?,
            alt: self.alt_amsl,
            accuracy: None,
            heading: self.heading.filter(|h| (0.0..360.0).contains(h)),
            speed: self.ground_speed.filter(|s| *s >= 0.0),
            time: Some(self.time),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telemetry_merges_present_fields_and_validates() {
        let mut t = Telemetry {
            time: crate::time::UnixMs(1),
            mode: Some("LOITER".into()),
            lat: Some(30.0),
            lon: Some(114.0),
            battery_pct: Some(90.0),
            ..Telemetry::default()
        };
        t.merge(&Telemetry {
            time: crate::time::UnixMs(2),
            lat: Some(30.1),
            armed: Some(false),
            ..Telemetry::default()
        });
        assert_eq!(t.time, crate::time::UnixMs(2));
        assert_eq!(
            (t.lat, t.lon, t.battery_pct, t.armed),
            (Some(30.1), Some(114.0), Some(90.0), Some(false))
        );
        assert_eq!(t.mode.as_deref(), Some("LOITER"));
        let p = t.position().unwrap();
        assert_eq!(
            (p.lat, p.lon, p.time),
            (30.1, 114.0, Some(crate::time::UnixMs(2)))
        );
        assert!(Telemetry {
            time: crate::time::UnixMs(1),
            lat: Some(30.0),
            ..Telemetry::default()
        }
        .position()
        .is_none());
        assert!(t.validate().is_ok());
        t.lon = Some(190.0);
        assert!(t.validate().unwrap_err().contains("lon"));
        t.lon = Some(1.0);
        t.status_text = Some("x".repeat(Telemetry::MAX_STATUS_TEXT + 1));
        assert!(t.validate().unwrap_err().contains("status_text"));
    }

    #[test]
    fn position_validation() {
        let mut p = Position {
            lat: 30.0,
            lon: 114.0,
            alt: None,
            accuracy: Some(5.0),
            heading: Some(359.0),
            speed: Some(0.0),
            time: None,
        };
        assert!(p.validate().is_ok());
        p.lat = 91.0;
        assert!(p.validate().unwrap_err().contains("lat"));
        p.lat = f64::NAN;
        assert!(p.validate().is_err());
        p.lat = 0.0;
        p.heading = Some(360.0);
        assert!(p.validate().unwrap_err().contains("heading"));
    }
}
