//! Every shipped profile loads, validates, and is listed in `SHIPPED`.

mod common;

use hw_profiles::{load, resolve, resolve_decoder, shipped, Codec, DeviceKind, Profile, SHIPPED};

#[test]
fn every_shipped_profile_loads_and_validates() {
    for (name, text) in SHIPPED {
        let p = load(name, text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(format!("{}.toml", p.name()), *name);
        p.validate().unwrap();
    }
    let cat = shipped().unwrap();
    assert_eq!(cat.profiles().len(), SHIPPED.len());
}

#[test]
fn every_file_in_profiles_is_shipped() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = SHIPPED.iter().map(|(n, _)| (*n).to_owned()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "profiles/ and SHIPPED disagree");
}

#[test]
fn the_catalog_has_every_class_the_field_needs() {
    let cat = shipped().unwrap();
    let names = |kind| {
        cat.devices_of(kind)
            .map(|d| d.name.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(DeviceKind::Tablet),
        [
            "tablet-rk3588",
            "tablet-qualcomm",
            "tablet-jetson",
            "tablet-x86-vaapi",
            "tablet-software"
        ]
    );
    assert_eq!(names(DeviceKind::WallDecoder).len(), 3);
    assert_eq!(names(DeviceKind::DroneCamera).len(), 3);
    let links: Vec<&str> = cat.links().map(|l| l.name.as_str()).collect();
    assert_eq!(
        links,
        [
            "wired",
            "wifi",
            "4g-good",
            "4g-poor",
            "satellite",
            "mesh-radio"
        ]
    );
    assert!(cat.link("carrier-pigeon").is_err());
    assert!(matches!(cat.profiles()[0], Profile::Device(_)));
}

#[test]
fn every_tablet_chain_ends_with_the_software_fallbacks() {
    for t in shipped().unwrap().devices_of(DeviceKind::Tablet) {
        let tail: Vec<&str> = t
            .video
            .encoders
            .iter()
            .skip_while(|e| e.hardware)
            .map(|e| e.element.as_str())
            .collect();
        assert_eq!(tail, ["x264enc", "openh264enc", "vp8enc"], "{}", t.name);
        for codec in [Codec::H264, Codec::Vp8] {
            assert!(
                t.video
                    .decoders
                    .iter()
                    .any(|d| d.codec == codec && !d.hardware),
                "{} {codec}",
                t.name
            );
        }
    }
}

#[test]
fn every_device_resolves_on_every_link_with_everything_installed() {
    let cat = shipped().unwrap();
    for d in cat.devices() {
        for l in cat.links() {
            if !d.video.encoders.is_empty() {
                let r = resolve(d, l, &|_| true, None).unwrap();
                assert_eq!(r.encoder.element, d.video.encoders[0].element);
                assert!(r.skipped.is_empty());
                assert!(!r.encoder.pipeline.contains('{'), "{}", r.encoder.pipeline);
                for layer in &r.layers {
                    assert!(layer.width >= 16 && layer.width % 2 == 0);
                    assert!(!layer.pipeline.contains('{'));
                }
            }
        }
        for codec in Codec::ALL {
            if d.video.decoders.iter().any(|e| e.codec == codec) {
                resolve_decoder(d, codec, &|_| true).unwrap();
            }
        }
    }
}

#[test]
fn ladders_rise_and_links_get_poorer_down_the_list() {
    let cat = shipped().unwrap();
    let links: Vec<_> = cat.links().collect();
    for pair in links.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        assert!(
            a.video.simulcast.len() >= b.video.simulcast.len(),
            "{} vs {}",
            a.name,
            b.name
        );
        if b.name != "mesh-radio" {
            assert!(
                a.video.ladder_kbps.last() >= b.video.ladder_kbps.last(),
                "{} vs {}",
                a.name,
                b.name
            );
        }
    }
}
