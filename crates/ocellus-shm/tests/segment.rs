//! The shared-memory segment end to end in one process: round trips, creation rules (exclusive, stale
//! replacement, live and foreign segments refused), restart detection by the same reader, and a bounded
//! random-bytes fuzz of the reader's validation (no panic, a typed error).

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use ocellus_shm::{
    layout, validate_bytes, CameraCounters, CreateError, Dims, HeaderError, LatentsDtype,
    ReadError, ReaderOptions, RecorderCounts, Sample, SampleMeta, SampleRef, ShmReader, ShmWriter,
    WriterConfig,
};

fn dims(dtype: LatentsDtype) -> Dims {
    Dims {
        cameras: 2,
        embed_dim: 5,
        num_latents: 3,
        latent_dim: 7,
        max_prompts: 4,
        latents_dtype: dtype,
    }
}

/// A unique name per test, removed (with whatever the test left there) on drop.
struct Name(String);

impl Name {
    fn new(tag: &str) -> Name {
        let n = Name(format!("/ocellus-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_file(n.path());
        n
    }
    fn path(&self) -> String {
        format!("/dev/shm{}", self.0)
    }
}

impl Drop for Name {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.path());
    }
}

fn config(name: &Name, dtype: LatentsDtype) -> WriterConfig {
    let mut c = WriterConfig::new(&name.0, dims(dtype));
    c.heartbeat_period = Duration::from_millis(20);
    c.model_id = "demo-siglip/fp32".into();
    c.model_sha256 = "0123456789abcdef0123".into();
    c
}

fn sample(seq: u64, d: &Dims) -> Sample {
    let mut s = Sample::new(d);
    s.meta = SampleMeta {
        sequence: seq,
        capture_ns: 1,
        stages_ns: [10, 20, 30, 40, 50, 0, 0],
        flags: layout::FLAG_DEGRADED | 1 << layout::STAGE_ENCODER,
        deadline_misses: 3,
        prompt_version: 9,
        ..SampleMeta::default()
    };
    for (i, x) in s.embedding.iter_mut().enumerate() {
        *x = seq as f32 + i as f32 * 0.25;
    }
    for (i, x) in s.latents.iter_mut().enumerate() {
        *x = i as f32 - 4.0;
    }
    s.num_scores = 3;
    s.scores[..3].copy_from_slice(&[0.75, 0.125, 0.5]);
    s
}

/// Polls `f` until it returns Some, failing the test after a generous watchdog.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn round_trip_f32_and_f16() {
    for dtype in [LatentsDtype::F32, LatentsDtype::F16] {
        let name = Name::new(&format!("rt-{dtype}"));
        let mut w = ShmWriter::create(&config(&name, dtype)).expect("create");
        let d = w.layout().dims;
        let mut r = ShmReader::open(&name.0).expect("open");
        let mut got = r.new_sample();
        assert!(matches!(
            r.read_latest(0, &mut got),
            Err(ReadError::NoSample { .. })
        ));
        assert!(matches!(
            r.read_latest(2, &mut got),
            Err(ReadError::NoSuchCamera { .. })
        ));
        let sent = sample(41, &d);
        for _ in 0..5 {
            w.publish(1, &sent.view()).expect("publish");
        }
        let info = r.read_latest(1, &mut got).expect("read");
        assert_eq!(info.sequence, 41);
        assert_eq!(info.published, 5);
        assert_eq!(info.generation, w.generation());
        assert_eq!(got.embedding, sent.embedding);
        assert_eq!(got.latents, sent.latents, "small integers are exact in f16");
        assert_eq!(got.scores(), sent.scores());
        assert_eq!(got.meta.flags, sent.meta.flags);
        assert_eq!(got.meta.stages_ns[..5], sent.meta.stages_ns[..5]);
        assert!(got.meta.publish_ns >= got.meta.capture_ns);
        assert_eq!(
            got.meta.stages_ns[layout::STAGE_END_TO_END],
            got.meta.publish_ns - 1
        );
        let line = ocellus_shm::format_sample(1, &got, &info, &["cat".into(), "dog".into()], 2);
        assert!(
            line.contains("seq 41") && line.contains("top: cat 0.750, ? 0.500"),
            "{line}"
        );
        assert!(line.contains("late(encoder) degraded"), "{line}");

        let writer = r.writer();
        assert!(writer.alive && !writer.stopped);
        assert_eq!(writer.pid, u64::from(std::process::id()));
        assert_eq!(writer.model_id, "demo-siglip/fp32");
        assert_eq!(writer.model_sha256, "0123456789abcdef");
    }
}

#[test]
fn shapes_are_checked_before_anything_is_written() {
    let name = Name::new("shape");
    let mut w = ShmWriter::create(&config(&name, LatentsDtype::F32)).expect("create");
    let d = w.layout().dims;
    let s = sample(1, &d);
    let short = SampleRef {
        embedding: &s.embedding[..4],
        ..s.view()
    };
    assert!(w.publish(0, &short).is_err());
    let too_many = [0.0f32; 5];
    let many = SampleRef {
        scores: &too_many,
        ..s.view()
    };
    assert!(w.publish(0, &many).is_err());
    assert!(w.publish(2, &s.view()).is_err());
    assert!(w.set_prompts(1, &["a", "b", "c", "d", "e"]).is_err());
    let mut r = ShmReader::open(&name.0).expect("open");
    let mut got = r.new_sample();
    assert!(matches!(
        r.read_latest(0, &mut got),
        Err(ReadError::NoSample { .. })
    ));
}

#[test]
fn prompts_counters_and_mode() {
    let name = Name::new("prompts");
    let mut cfg = config(&name, LatentsDtype::F16);
    cfg.group = Some(own_gid().to_string());
    let mut w = ShmWriter::create(&cfg).expect("create");
    let mode = std::fs::metadata(name.path())
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640);
    w.set_prompts(7, &["a cat", "a dög", &"x".repeat(80)])
        .expect("prompts");
    let counters = CameraCounters {
        captured: 100,
        dropped: 7,
        late: [1, 2, 3, 4, 5, 6, 7],
        reconnects: 2,
        processed: 90,
        corrupt: 1,
        errors: 4,
        flags: layout::FLAG_CAMERA_LOST,
        last_overrun_ns: 12_500_000,
        last_late_stages: 1 << layout::STAGE_ENCODER,
    };
    w.set_counters(1, &counters);
    w.set_memory_high_water(123 << 20);
    assert_eq!(
        ShmReader::open(&name.0).expect("open").recordings(),
        RecorderCounts::default(),
        "no recorder: zeros"
    );
    let recordings = RecorderCounts {
        made: 3,
        dropped: 2,
        errors: 1,
    };
    w.set_recordings(&recordings);
    let r = ShmReader::open(&name.0).expect("open");
    let p = r.prompts().expect("prompts");
    assert_eq!(p.version, 7);
    assert_eq!(p.labels[..2], ["a cat".to_string(), "a dög".to_string()]);
    assert_eq!(p.labels[2], "x".repeat(64), "labels are cut to 64 bytes");
    assert_eq!(r.counters(1).expect("counters"), counters);
    assert_eq!(r.counters(0).expect("counters"), CameraCounters::default());
    assert_eq!(r.memory_high_water(), 123 << 20);
    assert_eq!(r.recordings(), recordings);
}

/// The test process's own group: fchown to it needs no privilege.
fn own_gid() -> u32 {
    std::fs::metadata("/proc/self").map_or(0, |m| std::os::unix::fs::MetadataExt::gid(&m))
}

#[test]
fn live_segment_is_refused_and_stale_one_replaced() {
    let name = Name::new("live");
    let cfg = config(&name, LatentsDtype::F32);
    let w = ShmWriter::create(&cfg).expect("create");
    match ShmWriter::create(&cfg) {
        Err(CreateError::AlreadyRunning { pid, .. }) => {
            assert_eq!(pid, u64::from(std::process::id()))
        }
        other => panic!("a live segment must be refused: {other:?}"),
    }
    // A writer that vanishes without stopping (as after kill -9): its heartbeat goes stale.
    let old_generation = w.generation();
    std::mem::forget(w);
    let mut r = ShmReader::open(&name.0).expect("open");
    let mut s = r.new_sample();
    let err = eventually("the reader to call the writer stale", || {
        match r.read_latest(0, &mut s) {
            Err(e @ ReadError::Stale { .. }) => Some(e),
            _ => None,
        }
    });
    assert!(err.to_string().contains("not alive"), "{err}");
    let w2 = eventually("the stale segment to be replaced", || {
        ShmWriter::create(&cfg).ok()
    });
    assert_ne!(w2.generation(), old_generation);
}

#[test]
fn foreign_objects_are_refused_and_left_alone() {
    let name = Name::new("foreign");
    let junk = b"not an ocellus segment, just someone's file ".repeat(20);
    std::fs::write(name.path(), &junk).expect("write junk");
    std::fs::set_permissions(name.path(), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let cfg = config(&name, LatentsDtype::F32);
    match ShmWriter::create(&cfg) {
        Err(e @ CreateError::Foreign { .. }) => assert!(e.to_string().contains("magic"), "{e}"),
        other => panic!("a foreign object must be refused: {other:?}"),
    }
    assert_eq!(
        std::fs::read(name.path()).expect("read back"),
        junk,
        "never overwritten"
    );
    assert!(matches!(
        ShmReader::open(&name.0),
        Err(ReadError::Foreign { .. })
    ));
    // Too short for a header: the writer refuses, the reader says it is not a segment (a writer sizes a
    // segment in one step, so 4 bytes is never one being created).
    std::fs::write(name.path(), b"tiny").expect("write");
    assert!(matches!(
        ShmWriter::create(&cfg),
        Err(CreateError::Foreign { .. })
    ));
    assert!(matches!(
        ShmReader::open(&name.0),
        Err(ReadError::Foreign { .. })
    ));
}

#[test]
fn wrong_version_and_world_writable_are_refused() {
    let name = Name::new("version");
    let w = ShmWriter::create(&config(&name, LatentsDtype::F32)).expect("create");
    let mut image = std::fs::read(name.path()).expect("read segment");
    let total = w.layout().total_size as usize;
    drop(w);
    assert_eq!(image.len(), total);
    image[8..16].copy_from_slice(&2u64.to_le_bytes());
    std::fs::write(name.path(), &image).expect("write image");
    std::fs::set_permissions(name.path(), std::fs::Permissions::from_mode(0o640)).expect("chmod");
    match ShmReader::open(&name.0) {
        Err(e @ ReadError::VersionMismatch { found: 2, .. }) => {
            assert!(e.to_string().contains("version 2"))
        }
        other => panic!("expected a version mismatch: {other:?}"),
    }
    image[8..16].copy_from_slice(&1u64.to_le_bytes());
    std::fs::write(name.path(), &image).expect("write image");
    std::fs::set_permissions(name.path(), std::fs::Permissions::from_mode(0o646)).expect("chmod");
    assert!(matches!(
        ShmReader::open(&name.0),
        Err(ReadError::Foreign { .. })
    ));
}

#[test]
fn same_reader_follows_a_restarted_writer() {
    let name = Name::new("restart");
    let mut cfg = config(&name, LatentsDtype::F16);
    let mut w = ShmWriter::create(&cfg).expect("create");
    let d = w.layout().dims;
    w.publish(0, &sample(1, &d).view()).expect("publish");
    let options = ReaderOptions {
        reopen_interval: Duration::ZERO,
        ..ReaderOptions::default()
    };
    let mut r = ShmReader::open_with(&name.0, options).expect("open");
    let mut s = r.new_sample();
    let first = r.read_latest(0, &mut s).expect("read");
    assert_eq!(first.sequence, 1);

    // Clean stop: the reader says so.
    drop(w);
    assert!(matches!(
        r.read_latest(0, &mut s),
        Err(ReadError::NotRunning { .. })
    ));
    // A new start with bigger dimensions: the same reader re-maps and resizes its sample.
    cfg.dims.embed_dim = 9;
    let mut w2 = ShmWriter::create(&cfg).expect("re-create");
    let d2 = w2.layout().dims;
    w2.publish(0, &sample(2, &d2).view()).expect("publish");
    let info = r.read_latest(0, &mut s).expect("read after restart");
    assert!(info.remapped);
    assert_eq!(info.sequence, 2);
    assert_eq!(info.generation, w2.generation());
    assert_ne!(info.generation, first.generation);
    assert_eq!(s.embedding.len(), 9);
    assert_eq!(r.remaps(), 1);
    // And after a crash (no stop): stale first, then the next writer is picked up too.
    let g2 = w2.generation();
    std::mem::forget(w2);
    eventually("stale", || {
        matches!(r.read_latest(0, &mut s), Err(ReadError::Stale { .. })).then_some(())
    });
    let mut w3 = eventually("replacement", || ShmWriter::create(&cfg).ok());
    w3.publish(0, &sample(3, &d2).view()).expect("publish");
    let info = eventually("the reader to follow", || r.read_latest(0, &mut s).ok());
    assert_eq!((info.sequence, info.generation), (3, w3.generation()));
    assert_ne!(info.generation, g2);
}

/// xorshift64*: a dependency-free source of arbitrary bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn fuzzed_segments_give_typed_errors_never_panics() {
    let name = Name::new("fuzz");
    let w = ShmWriter::create(&config(&name, LatentsDtype::F16)).expect("create");
    let valid = std::fs::read(name.path()).expect("image");
    drop(w);
    assert!(validate_bytes(&valid).is_ok());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut counts = [0usize; 4];
    for round in 0..20_000 {
        let mut image = if round % 4 == 0 {
            // Arbitrary bytes, arbitrary length (sometimes with the right magic, sometimes empty).
            let len = if rng.next() % 16 == 0 {
                0
            } else {
                (rng.next() % 4096) as usize
            };
            let mut v: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if rng.next() % 2 == 0 && v.len() >= 8 {
                v[..8].copy_from_slice(b"OCELLSHM");
            }
            v
        } else {
            // A valid image with a few words or bytes changed, or truncated/extended.
            let mut v = valid.clone();
            for _ in 0..1 + rng.next() % 3 {
                let at = (rng.next() % 48) as usize * 8;
                match rng.next() % 3 {
                    0 => v[at..at + 8].copy_from_slice(&rng.next().to_le_bytes()),
                    1 => v[at..at + 8].copy_from_slice(&(rng.next() % 100_000).to_le_bytes()),
                    _ => v[at] ^= 1 << (rng.next() % 8),
                }
            }
            if rng.next() % 8 == 0 {
                v.resize((rng.next() % (2 * v.len() as u64)) as usize, 0);
            }
            v
        };
        match validate_bytes(&image) {
            Ok(layout) => {
                counts[0] += 1;
                assert_eq!(layout.total_size as usize, image.len());
            }
            Err(HeaderError::Incomplete(_)) => counts[1] += 1,
            Err(HeaderError::Foreign(_)) => counts[2] += 1,
            Err(HeaderError::Version { .. }) => counts[3] += 1,
        }
        image.clear();
    }
    println!(
        "fuzz: ok {} incomplete {} foreign {} version {}",
        counts[0], counts[1], counts[2], counts[3]
    );
    assert!(
        counts[2] > 1000 && counts[3] > 10 && counts[1] > 10,
        "{counts:?}"
    );

    // The same through the real open path (shm object, mmap, validation) for a sample of images.
    let mut rng = Rng(7);
    for _ in 0..300 {
        let mut image = valid.clone();
        let at = (rng.next() % 48) as usize * 8;
        image[at..at + 8].copy_from_slice(&rng.next().to_le_bytes());
        image.truncate((rng.next() % (image.len() as u64 + 1)) as usize);
        std::fs::write(name.path(), &image).expect("write image");
        std::fs::set_permissions(name.path(), std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
        match ShmReader::open(&name.0) {
            Ok(mut r) => {
                let mut s = r.new_sample();
                let _ = r.read_latest(0, &mut s);
            }
            Err(
                ReadError::NotRunning { .. }
                | ReadError::Foreign { .. }
                | ReadError::VersionMismatch { .. },
            ) => {}
            Err(e) => panic!("unexpected error kind: {e}"),
        }
    }
}

/// docs/shm-layout.md: a writer sizes the object in one `ftruncate`, so 0 bytes is a segment being created
/// (try again), while 1..=383 bytes is never one: it is not an ocellus segment. The C and Python readers say
/// the same (tests/c/shm_reader.c, tools/tests/test_shm.py).
#[test]
fn an_empty_object_is_being_created_and_a_short_one_is_foreign() {
    assert!(matches!(
        validate_bytes(&[]),
        Err(HeaderError::Incomplete(_))
    ));
    for len in [1usize, 8, 100, 383] {
        let mut image = vec![0u8; len];
        if len >= 8 {
            image[..8].copy_from_slice(b"OCELLSHM");
        }
        assert!(
            matches!(validate_bytes(&image), Err(HeaderError::Foreign(_))),
            "{len} bytes"
        );
    }
    assert!(matches!(
        validate_bytes(&[0u8; 384]),
        Err(HeaderError::Incomplete(_))
    ));

    let name = Name::new("short");
    for (bytes, want_foreign) in [(0usize, false), (100, true)] {
        std::fs::write(name.path(), vec![7u8; bytes]).expect("write");
        std::fs::set_permissions(name.path(), std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
        match ShmReader::open(&name.0) {
            Err(ReadError::Foreign { .. }) if want_foreign => {}
            Err(ReadError::NotRunning { .. }) if !want_foreign => {}
            Err(e) => panic!("{bytes} bytes: {e}"),
            Ok(_) => panic!("{bytes} bytes opened"),
        }
    }
}
