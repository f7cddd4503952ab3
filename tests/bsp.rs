//! Board support files (bsp/): the Jetson Orin configuration and the packaged default configuration load,
//! their cameras can be prepared for the demo model, and the systemd unit, sysusers entry and configs agree
//! with each other (user, real-time limits, config path). The package itself is tested by
//! tests/package/test-package.sh (`make test-package`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ocellus::config::{Config, Origin};
use ocellus::infer::VariantChoice;
use ocellus::manifest::Manifest;
use ocellus::prepare::Preparer;
use ocellus::source::{SourceKind, SourceSettings, StallTimeout};
use ocellus::PixelFormat;

/// Where the package installs the demo bundle; the shipped configs name it.
const INSTALLED_MANIFEST: &str = "/usr/share/ocellus/models/demo/manifest.toml";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Loads a shipped config from its place in the tree (so errors name that file).
fn load(path: &str) -> Config {
    Config::load(&repo(path)).unwrap_or_else(|e| panic!("{path} does not load: {e}"))
}

/// The `[Service]`/`[Unit]` assignments of a unit file: key -> every value given (in order).
fn unit_settings(text: &str) -> HashMap<String, Vec<String>> {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("unit line without '=': {line}"));
        map.entry(k.to_string()).or_default().push(v.to_string());
    }
    map
}

fn one<'a>(unit: &'a HashMap<String, Vec<String>>, key: &str) -> &'a str {
    match unit.get(key).map(Vec::as_slice) {
        Some([v]) => v,
        other => panic!("ocellus.service: {key} should be set once, is {other:?}"),
    }
}

#[test]
fn jetson_orin_config_loads_with_two_v4l2_cameras_by_id() {
    let config = load("bsp/jetson-orin/ocellus.toml");
    assert!(matches!(config.origin, Origin::File(_)));
    assert_eq!(config.cameras.len(), 2);
    let names: Vec<&str> = config.cameras.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["front", "rear"]);
    for cam in &config.cameras {
        assert_eq!(cam.kind(), SourceKind::V4l2, "camera {}", cam.name);
        let SourceSettings::V4l2 { device, stall, .. } = &cam.source else {
            unreachable!()
        };
        assert!(
            device.starts_with("/dev/v4l/by-id/"),
            "camera {} should use a stable by-id name, has {}",
            cam.name,
            device.display()
        );
        assert_eq!(*stall, StallTimeout::Periods(10));
        assert_eq!(
            (cam.format, cam.width, cam.height, cam.fps),
            (PixelFormat::Mjpeg, 1280, 720, 30)
        );
    }
    assert_ne!(
        config.cameras[0].source, config.cameras[1].source,
        "two cameras on one device"
    );
    assert_eq!(config.model.manifest, Path::new(INSTALLED_MANIFEST));
    assert_eq!(config.model.variant, VariantChoice::Auto);

    assert!(config.memory.lock && config.memory.lock_required);

    let rt = &config.realtime;
    assert!(rt.strict);
    assert_eq!(rt.capture.cpus, [3]);
    assert_eq!(rt.inference.cpus, [4, 5]);
    assert_eq!(
        config.model.threads,
        rt.inference.cpus.len(),
        "one inference thread per isolated inference CPU"
    );
    assert!(
        rt.capture
            .cpus
            .iter()
            .all(|c| !rt.inference.cpus.contains(c)),
        "capture and inference share a CPU"
    );
    // Every CPU named exists on the smallest Orin (Orin Nano: 6 cores).
    assert!(rt
        .capture
        .cpus
        .iter()
        .chain(&rt.inference.cpus)
        .all(|&c| c < 6));
    assert_eq!(rt.capture.fifo_priority, Some(60));
    assert_eq!(rt.inference.fifo_priority, Some(50));
}

#[test]
fn jetson_orin_cameras_can_be_prepared_for_the_demo_model() {
    let config = load("bsp/jetson-orin/ocellus.toml");
    let manifest =
        Manifest::load(&repo("models/demo/manifest.toml")).expect("the demo manifest loads");
    for cam in &config.cameras {
        Preparer::new(&manifest.preprocess, cam.format, cam.width, cam.height).unwrap_or_else(
            |e| {
                panic!(
                    "camera {}: {} {}x{} cannot be prepared: {e}",
                    cam.name, cam.format, cam.width, cam.height
                )
            },
        );
    }
}

#[test]
fn packaged_default_config_runs_the_synthetic_camera_on_the_installed_model() {
    let config = load("bsp/debian/ocellus.toml");
    assert_eq!(config.cameras.len(), 1);
    assert_eq!(config.cameras[0].kind(), SourceKind::Synthetic);
    assert_eq!(config.model.manifest, Path::new(INSTALLED_MANIFEST));
    assert_eq!(config.shm.name, "ocellus");
    assert_eq!(config.shm.mode, 0o640);
    // Pointing it at the tree's copy of the bundle, `ocellus check`'s model checks pass.
    let manifest =
        Manifest::load(&repo("models/demo/manifest.toml")).expect("the demo manifest loads");
    let selected =
        ocellus::runtime::select_engine(&config, &manifest).expect("a variant for this CPU");
    ocellus::infer::verify(&manifest, selected.settings.variant.file_variant())
        .expect("the demo bundle verifies");
    let cam = &config.cameras[0];
    Preparer::new(&manifest.preprocess, cam.format, cam.width, cam.height)
        .expect("the synthetic camera's frames can be prepared");
}

#[test]
fn unit_runs_the_packaged_config_as_the_sysusers_user_with_hardening() {
    let unit = unit_settings(&read("bsp/systemd/ocellus.service"));
    assert_eq!(one(&unit, "Type"), "notify");
    assert_eq!(one(&unit, "Restart"), "on-failure");
    assert!(one(&unit, "WatchdogSec").ends_with('s'));
    assert_eq!(one(&unit, "RemoveIPC"), "no");
    assert_eq!(one(&unit, "LimitMEMLOCK"), "infinity");
    for (key, value) in [
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("DevicePolicy", "closed"),
    ] {
        assert_eq!(one(&unit, key), value, "{key}");
    }
    assert_eq!(unit["DeviceAllow"], ["char-video4linux rw"]);
    assert_eq!(unit["ReadWritePaths"], ["/dev/shm"]);
    // These would break the service: a private /dev (no cameras, private /dev/shm), no SCHED_FIFO.
    for key in ["PrivateDevices", "RestrictRealtime", "DynamicUser"] {
        assert!(!unit.contains_key(key), "{key} must not be set");
    }
    // Exit code 2 (bad configuration) is not retried.
    assert_eq!(one(&unit, "RestartPreventExitStatus"), "2");

    // The user the unit runs as is the one sysusers.d creates, in the group that owns the cameras.
    let sysusers = read("bsp/systemd/ocellus.sysusers");
    let user = one(&unit, "User");
    assert!(sysusers
        .lines()
        .any(|l| l.split_whitespace().take(2).eq(["u", user])));
    assert!(sysusers
        .lines()
        .any(|l| l.split_whitespace().eq(["m", user, "video"])));
    assert_eq!(one(&unit, "SupplementaryGroups"), "video");

    // ExecStart reads the config the package installs (build-deb.sh puts bsp/debian/ocellus.toml there).
    let exec = one(&unit, "ExecStart");
    assert!(
        exec.starts_with("/usr/bin/ocellus run --config /etc/ocellus/ocellus.toml"),
        "{exec}"
    );
    assert!(read("bsp/debian/build-deb.sh")
        .contains(r#""$src/bsp/debian/ocellus.toml" "$stage/etc/ocellus/ocellus.toml""#));
}

#[test]
fn jetson_priorities_fit_the_units_rtprio_limit() {
    let unit = unit_settings(&read("bsp/systemd/ocellus.service"));
    let limit: u8 = one(&unit, "LimitRTPRIO")
        .parse()
        .expect("LimitRTPRIO is a number");
    let config = load("bsp/jetson-orin/ocellus.toml");
    for (role, policy) in [
        ("capture", &config.realtime.capture),
        ("inference", &config.realtime.inference),
    ] {
        let p = policy
            .fifo_priority
            .unwrap_or_else(|| panic!("{role} has no priority"));
        assert!(
            p <= limit,
            "realtime.{role}-priority {p} is above the unit's LimitRTPRIO={limit}: the kernel would refuse it"
        );
    }
}
