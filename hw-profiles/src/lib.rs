//! Hardware profiles for yiwang as data plus validation: device classes (field tablets, video-wall
//! decoder hosts, drone cameras) with their encoder and decoder preference chains, and network
//! link classes with bitrate ladders, simulcast layers and audio rules.
//!
//! This crate has no GStreamer dependency and never probes the machine: callers tell the resolver
//! which elements exist through a `has_element` closure (in field-client, a lookup in the
//! GStreamer registry), and get back element names, rendered properties and gst-launch-style
//! pipeline fragments.
//!
//! - [`SHIPPED`]: every profile built into the crate (`profiles/*.toml`), by file name.
//! - [`load`]: parse and validate one profile; errors name the file and the field.
//! - [`shipped`]: the shipped profiles, parsed once, as a [`Catalog`].
//! - [`resolve`], [`resolve_decoder`], [`resolve_ingest`], [`pick_device`]: choose for this machine.
//! - [`KNOWN_ELEMENTS`]: the elements a profile may name.
//!
//! ```
//! use hw_profiles::{pick_device, resolve, shipped, Codec};
//!
//! // A machine with only the software encoders from Debian's GStreamer packages.
//! let installed = ["x264enc", "openh264enc", "vp8enc", "avdec_h264", "vp8dec"];
//! let has = |e: &str| installed.contains(&e);
//! let tablet = pick_device(&has)?;
//! assert_eq!(tablet.name, "tablet-software");
//! let link = shipped()?.link("4g-good")?;
//! let r = resolve(tablet, link, &has, Some(Codec::H264))?;
//! assert_eq!(r.encoder.element, "x264enc");
//! assert!(r.encoder.pipeline.starts_with("x264enc "));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod elements;
mod error;
mod profile;
mod resolve;
mod validate;

use std::sync::OnceLock;

use serde::Deserialize;

pub use elements::{
    is_valid_element_name, is_valid_property_name, known_element, BitrateUnit, Codec, ElementKind,
    KnownElement, KNOWN_ELEMENTS,
};
pub use error::{Issue, ProfileError, ResolveError};
pub use profile::{
    CameraProtocol, CameraSettings, Capture, ChainEntry, DeviceKind, DeviceProfile, Ingest,
    LinkAudio, LinkClass, LinkKind, LinkVideo, Profile, PropValue, Properties, SimulcastLayer,
    VideoChains, WallSettings,
};
pub use resolve::{
    resolve, resolve_decoder, resolve_ingest, AudioSettings, Budget, ChosenDecoder, ChosenEncoder,
    IngestPlan, LayerPlan, Resolution, SkipReason, Skipped, VideoBudget,
};
pub use validate::PLACEHOLDERS;

macro_rules! shipped_files {
    ($($file:literal),* $(,)?) => {
        /// Every profile built into the crate: `(file name, TOML text)`, devices first (tablets in
        /// [`pick_device`] order, the software tablet last), then link classes from best to worst.
        /// A test checks that every file in `profiles/` is listed here.
        pub const SHIPPED: &[(&str, &str)] = &[
            $(($file, include_str!(concat!("../profiles/", $file))),)*
        ];
    };
}

shipped_files!(
    "tablet-rk3588.toml",
    "tablet-qualcomm.toml",
    "tablet-jetson.toml",
    "tablet-x86-vaapi.toml",
    "tablet-software.toml",
    "wall-x86-vaapi.toml",
    "wall-jetson.toml",
    "wall-software.toml",
    "drone-rtsp-h264.toml",
    "drone-rtsp-h265.toml",
    "drone-jetson-h265.toml",
    "wired.toml",
    "wifi.toml",
    "4g-good.toml",
    "4g-poor.toml",
    "satellite.toml",
    "mesh-radio.toml",
);

impl Profile {
    /// Checks every rule (see the crate README); `Err` lists every issue, each naming its field.
    pub fn validate(&self) -> Result<(), ProfileError> {
        let issues = validate::check(self);
        if issues.is_empty() {
            Ok(())
        } else {
            Err(ProfileError::Invalid {
                file: format!("{}.toml", self.name()),
                issues,
            })
        }
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn parse_error(file: &str, text: &str, field: String, err: &toml::de::Error) -> ProfileError {
    let (line, column) = err.span().map_or((1, 1), |s| line_col(text, s.start));
    let message = err.message().trim().replace('\n', ", ");
    ProfileError::Parse {
        file: file.to_owned(),
        field,
        line,
        column,
        message,
    }
}

fn parse_as<T: for<'de> Deserialize<'de>>(file: &str, text: &str) -> Result<T, ProfileError> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        parse_error(
            file,
            text,
            if path == "." { String::new() } else { path },
            e.inner(),
        )
    })
}

/// Parses and validates one profile. `name` is its file name (`tablet-rk3588.toml`; the
/// `.toml` suffix is optional) and becomes the profile's name without the suffix. The `kind` key
/// says what the file holds: `tablet`, `wall-decoder`, `drone-camera` or `link`.
///
/// Every error message starts with the file name and names the field, e.g.
/// `tablet-rk3588.toml: video.encoders[1].element: "mpph264enc " is not a valid GStreamer element name`.
pub fn load(name: &str, text: &str) -> Result<Profile, ProfileError> {
    let file = if name.ends_with(".toml") {
        name.to_owned()
    } else {
        format!("{name}.toml")
    };
    let stem = file.trim_end_matches(".toml").to_owned();
    let invalid = |field: &str, message: String| ProfileError::Invalid {
        file: file.clone(),
        issues: vec![Issue {
            field: field.to_owned(),
            message,
        }],
    };
    if stem.is_empty()
        || !stem
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(invalid(
            "",
            format!("{stem:?} is not a valid profile name (a-z, 0-9, -)"),
        ));
    }

    #[derive(Deserialize)]
    struct Peek {
        kind: Option<toml::Value>,
    }
    let peek: Peek =
        toml::from_str(text).map_err(|e| parse_error(&file, text, String::new(), &e))?;
    let kinds = "tablet, wall-decoder, drone-camera or link";
    let profile = match peek.kind {
        None => {
            return Err(invalid(
                "kind",
                format!("missing: say what this file holds ({kinds})"),
            ))
        }
        Some(toml::Value::String(k)) => match k.as_str() {
            "tablet" | "wall-decoder" | "drone-camera" => {
                let mut d: DeviceProfile = parse_as(&file, text)?;
                d.name = stem;
                Profile::Device(d)
            }
            "link" => {
                let mut l: LinkClass = parse_as(&file, text)?;
                l.name = stem;
                Profile::Link(l)
            }
            other => return Err(invalid("kind", format!("{other:?} is not one of {kinds}"))),
        },
        Some(other) => return Err(invalid("kind", format!("{other} is not one of {kinds}"))),
    };
    profile.validate()?;
    Ok(profile)
}

/// A set of loaded, validated profiles with lookups by name and kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalog {
    profiles: Vec<Profile>,
}

impl Catalog {
    /// Loads every `(file name, text)` pair; fails on the first invalid profile or a name used
    /// twice.
    pub fn load_all<'a>(
        files: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Catalog, ProfileError> {
        let mut profiles: Vec<Profile> = Vec::new();
        for (name, text) in files {
            let p = load(name, text)?;
            if profiles.iter().any(|o| o.name() == p.name()) {
                return Err(ProfileError::Invalid {
                    file: format!("{}.toml", p.name()),
                    issues: vec![Issue {
                        field: String::new(),
                        message: "a profile of this name is already loaded".to_owned(),
                    }],
                });
            }
            profiles.push(p);
        }
        Ok(Catalog { profiles })
    }

    /// Every profile, in load order.
    pub fn profiles(&self) -> &[Profile] {
        &self.profiles
    }

    /// Device profiles in load order.
    pub fn devices(&self) -> impl Iterator<Item = &DeviceProfile> {
        self.profiles.iter().filter_map(Profile::as_device)
    }

    /// Device profiles of one kind, in load order.
    pub fn devices_of(&self, kind: DeviceKind) -> impl Iterator<Item = &DeviceProfile> {
        self.devices().filter(move |d| d.kind == kind)
    }

    /// Link classes in load order.
    pub fn links(&self) -> impl Iterator<Item = &LinkClass> {
        self.profiles.iter().filter_map(Profile::as_link)
    }

    /// The device profile named `name` (without `.toml`).
    pub fn device(&self, name: &str) -> Result<&DeviceProfile, ProfileError> {
        self.devices()
            .find(|d| d.name == name)
            .ok_or_else(|| ProfileError::UnknownProfile {
                name: name.to_owned(),
            })
    }

    /// The link class named `name` (without `.toml`).
    pub fn link(&self, name: &str) -> Result<&LinkClass, ProfileError> {
        self.links()
            .find(|l| l.name == name)
            .ok_or_else(|| ProfileError::UnknownProfile {
                name: name.to_owned(),
            })
    }

    /// The best tablet profile for this machine: the first tablet (in load order) with at least
    /// one hardware encoder that `has_element` reports installed; otherwise the first tablet
    /// whose encoders are all software. `None` if the catalog has neither.
    pub fn pick_tablet(&self, has_element: &dyn Fn(&str) -> bool) -> Option<&DeviceProfile> {
        let tablets = || self.devices_of(DeviceKind::Tablet);
        tablets()
            .find(|t| {
                t.video
                    .encoders
                    .iter()
                    .any(|e| e.hardware && has_element(&e.element))
            })
            .or_else(|| tablets().find(|t| t.video.encoders.iter().all(|e| !e.hardware)))
    }
}

/// The shipped profiles ([`SHIPPED`]), parsed and validated once. Never fails in a released
/// build (a test loads them all); the `Result` keeps a broken edit from panicking.
pub fn shipped() -> Result<&'static Catalog, ProfileError> {
    static CATALOG: OnceLock<Result<Catalog, ProfileError>> = OnceLock::new();
    CATALOG
        .get_or_init(|| Catalog::load_all(SHIPPED.iter().copied()))
        .as_ref()
        .map_err(Clone::clone)
}

/// Picks the shipped tablet profile for this machine (see [`Catalog::pick_tablet`]): RK3588,
/// Qualcomm, Jetson, then x86 VA-API when one of their hardware encoders is installed, else
/// `tablet-software`.
pub fn pick_device(
    has_element: &dyn Fn(&str) -> bool,
) -> Result<&'static DeviceProfile, ProfileError> {
    shipped()?
        .pick_tablet(has_element)
        .ok_or_else(|| ProfileError::UnknownProfile {
            name: "tablet-software".to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::line_col;

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("a\nbc", 0), (1, 1));
        assert_eq!(line_col("a\nbc", 3), (2, 2));
        assert_eq!(line_col("a\nbc", 99), (2, 3));
    }
}
