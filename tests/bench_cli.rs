//! `ocellus bench`: the JSON report has every documented field with consistent values, and the plot is a
//! well-formed SVG with bars. Only counts, orderings and identities are asserted, never a time.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn ocellus() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ocellus"));
    // The default config finds the demo bundle at models/demo relative to the working directory.
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

fn run_bench(extra: &[&str], dir: &Path) -> (Value, String, std::process::Output) {
    let json = dir.join("bench.json");
    let plot = dir.join("bench.svg");
    let out = ocellus()
        .arg("-q")
        .arg("bench")
        .args(extra)
        .arg("--json")
        .arg(&json)
        .arg("--plot")
        .arg(&plot)
        .output()
        .expect("run ocellus bench");
    assert!(
        out.status.success(),
        "ocellus bench failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).expect("read json"))
        .expect("the report is JSON");
    let svg = std::fs::read_to_string(&plot).expect("read svg");
    (report, svg, out)
}

fn num(v: &Value, what: &str) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"))
}

/// count, mean and percentiles ordered p50 <= p90 <= p99 <= p99.9 <= max.
fn check_figures(v: &Value, what: &str, count: u64) {
    assert_eq!(v["count"].as_u64(), Some(count), "{what}: {v}");
    let p: Vec<f64> = ["p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"]
        .iter()
        .map(|k| num(&v[k], &format!("{what}.{k}")))
        .collect();
    assert!(p.windows(2).all(|w| w[0] <= w[1]), "{what}: {p:?}");
    assert!(p[0] >= 0.0, "{what}: {p:?}");
    let mean = num(&v["mean_ms"], what);
    assert!(
        mean >= 0.0 && mean <= p[4] * 1.0001 + 1e-9,
        "{what}: mean {mean}, {p:?}"
    );
}

const STAGES: [&str; 7] = [
    "dequeue",
    "prepare",
    "encoder",
    "resampler",
    "score",
    "publish",
    "end_to_end",
];

#[test]
fn bench_reports_every_field_and_plots_bars() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (r, svg, out) = run_bench(&["--frames", "30", "--infer-runs", "5"], dir.path());

    for key in [
        "ocellus_version",
        "config",
        "model",
        "cameras",
        "paced",
        "shm",
        "warmup_frames",
        "frames_requested",
        "frames",
        "complete",
        "duration_s",
        "throughput_fps",
        "captured",
        "dropped",
        "corrupt",
        "late_frames",
        "errors",
        "end_to_end",
        "stages",
        "capture_alone_p50_ms",
        "stage_sum_p50_ms",
        "allocations_per_frame",
        "allocations",
        "peak_rss_bytes",
        "peak_rss_mib",
        "histogram",
        "inference",
        "ocellus_infer_ms",
        "ort_infer_ms",
        "ort_error",
        "ratio_vs_ort",
        "per_model",
        "goals",
        "load_average",
    ] {
        assert!(r.get(key).is_some(), "missing field {key}: {r:#}");
    }

    // Exactly the requested frames, in every stage and in the histogram.
    assert_eq!(r["frames"].as_u64(), Some(30), "{r:#}");
    assert_eq!(r["frames_requested"].as_u64(), Some(30));
    assert_eq!(r["complete"].as_bool(), Some(true));
    assert_eq!(r["paced"].as_bool(), Some(false));
    assert_eq!(r["errors"].as_u64(), Some(0), "{r:#}");
    check_figures(&r["end_to_end"], "end_to_end", 30);
    for stage in STAGES {
        check_figures(&r["stages"][stage], stage, 30);
    }
    assert_eq!(r["end_to_end"], r["stages"]["end_to_end"]);
    let buckets = r["histogram"]["buckets"].as_array().expect("buckets");
    assert_eq!(
        buckets
            .iter()
            .map(|b| b["count"].as_u64().unwrap())
            .sum::<u64>(),
        30
    );
    assert!(buckets
        .windows(2)
        .all(|w| num(&w[0]["hi_ms"], "hi") < num(&w[1]["lo_ms"], "lo")));
    // The end-to-end latency contains the stages it is made of.
    let e2e_max = num(&r["end_to_end"]["max_ms"], "max");
    let infer_p50 = num(&r["stages"]["encoder"]["p50_ms"], "enc");
    assert!(e2e_max >= infer_p50, "{r:#}");

    assert!(num(&r["duration_s"], "duration") > 0.0);
    let fps = num(&r["throughput_fps"], "fps");
    assert!(
        (fps - 30.0 / num(&r["duration_s"], "duration")).abs() < 1e-6 * fps,
        "{r:#}"
    );
    // Every frame published in the window was captured, all but at most two of them inside it (one may wait in
    // the handoff slot and one be in the inference thread's hands when the window opens).
    assert!(r["captured"].as_u64().unwrap() >= 30 - 2, "{r:#}");
    assert!(r["peak_rss_bytes"].as_u64().unwrap() > 1 << 20);
    // The binary installs the counting allocator: per frame, all frame-path threads' allocations.
    let apf = num(&r["allocations_per_frame"], "allocations_per_frame");
    let a = &r["allocations"];
    let by_role: f64 = ["capture", "inference", "worker"]
        .iter()
        .flat_map(|role| ["system", "region"].map(|k| num(&a["per_frame"][role][k], role)))
        .sum();
    assert!(
        apf >= 0.0 && (apf - by_role).abs() < 1e-6 * apf.max(1.0),
        "{a:#}"
    );
    let split = num(&a["system_per_frame"], "system") + num(&a["region_per_frame"], "region");
    assert!((apf - split).abs() < 1e-6 * apf.max(1.0), "{a:#}");
    assert!(num(&r["stage_sum_p50_ms"], "sum") > num(&r["capture_alone_p50_ms"], "capture"));
    let cams = r["cameras"].as_array().unwrap();
    assert_eq!(cams.len(), 1);
    assert_eq!(cams[0]["fps_configured"].as_u64(), Some(30));
    assert_eq!(cams[0]["fps_run"].as_u64(), Some(0));
    assert_eq!(cams[0]["pixel_format"].as_str(), Some("yuyv"));
    assert!(cams[0]["capture_alone"]["count"].as_u64().unwrap() == 30);

    // The engine alone: both variants of the demo bundle, the best is the faster one.
    let variants = r["inference"]["ocellus"]["variants"].as_object().unwrap();
    assert!(variants.contains_key("fp32") && variants.contains_key("int8"));
    let best = r["inference"]["ocellus"]["best"].as_str().unwrap();
    let total = |v: &str| num(&variants[v]["total_ms"], v);
    assert!(variants.keys().all(|v| total(best) <= total(v)));
    let ours = num(&r["ocellus_infer_ms"], "ocellus_infer_ms");
    assert_eq!(ours, total(best));
    let enc = num(&r["per_model"]["encoder"]["ocellus_ms"], "enc");
    let res = num(&r["per_model"]["resampler"]["ocellus_ms"], "res");
    assert!((enc + res - ours).abs() < 1e-9, "{r:#}");

    // onnxruntime: a ratio that is ours / theirs, or null with the reason.
    if r["ort_infer_ms"].is_null() {
        assert!(r["ratio_vs_ort"].is_null());
        let why = r["ort_error"].as_str().expect("ort_error says why");
        assert!(!why.is_empty());
    } else {
        assert!(r["ort_error"].is_null(), "{r:#}");
        let theirs = num(&r["ort_infer_ms"], "ort");
        assert!(theirs > 0.0);
        let ratio = num(&r["ratio_vs_ort"], "ratio");
        assert!((ratio - ours / theirs).abs() < 1e-9 * ratio, "{r:#}");
        for m in ["encoder", "resampler"] {
            let pm = &r["per_model"][m];
            let rt = num(&pm["ratio_vs_ort"], m);
            assert!((rt - num(&pm["ocellus_ms"], m) / num(&pm["ort_ms"], m)).abs() < 1e-9 * rt);
            let report = &r["inference"]["onnxruntime"]["models"][m];
            assert_eq!(pm["ort_variant"], report["best"]);
            assert_eq!(pm["ort_ms"], report["best_ms"]);
        }
        let ort_sum = num(&r["per_model"]["encoder"]["ort_ms"], "e")
            + num(&r["per_model"]["resampler"]["ort_ms"], "r");
        assert!((ort_sum - theirs).abs() < 1e-9);
    }
    for (name, g) in r["goals"].as_object().unwrap() {
        assert!(g["limit"].as_f64().is_some(), "{name}");
        match (g["value"].as_f64(), g["met"].as_bool()) {
            (Some(v), Some(met)) => assert_eq!(met, v <= g["limit"].as_f64().unwrap(), "{name}"),
            (None, None) => assert_eq!(name, "ocellus_infer_over_ort"),
            other => panic!("goal {name}: {other:?}"),
        }
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("30 frames measured"), "{stdout}");

    // The plot: well-formed XML, an svg root, a bar per non-empty histogram bin and per stage.
    check_xml(&svg).unwrap_or_else(|e| panic!("the SVG is not well-formed XML: {e}\n{svg}"));
    assert!(svg.contains("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    let bars = svg.matches("class=\"bar\"").count();
    assert!(bars > STAGES.len(), "{bars} bars\n{svg}");
}

#[test]
fn missing_python_leaves_the_ratio_null_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (r, _, _) = run_bench(
        &[
            "--frames",
            "5",
            "--warmup",
            "2",
            "--infer-runs",
            "2",
            "--no-shm",
            "--python",
            "/nonexistent/python3",
        ],
        dir.path(),
    );
    assert_eq!(r["frames"].as_u64(), Some(5));
    assert!(
        r["ort_infer_ms"].is_null() && r["ratio_vs_ort"].is_null(),
        "{r:#}"
    );
    assert!(r["per_model"]["encoder"]["ort_ms"].is_null());
    assert!(r["goals"]["ocellus_infer_over_ort"]["met"].is_null());
    let why = r["ort_error"].as_str().expect("a reason");
    assert!(
        why.contains("/nonexistent/python3") && why.contains("--python"),
        "{why}"
    );
}

#[test]
fn zero_frames_is_refused() {
    let out = ocellus()
        .args(["bench", "--frames", "0", "--json", "/dev/null"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--frames 0"), "{err}");
}

/// A small well-formedness check: balanced and properly nested tags, quoted attributes, known entities,
/// exactly one root element.
fn check_xml(text: &str) -> Result<(), String> {
    let mut stack: Vec<&str> = Vec::new();
    let mut roots = 0;
    let mut rest = text;
    let check_text = |t: &str| -> Result<(), String> {
        let mut s = t;
        while let Some(i) = s.find('&') {
            let end = s[i..].find(';').ok_or("& without ;")? + i;
            let ent = &s[i + 1..end];
            let known = ["amp", "lt", "gt", "quot", "apos"].contains(&ent)
                || (ent.starts_with('#') && ent.len() > 1);
            if !known {
                return Err(format!("unknown entity &{ent};"));
            }
            s = &s[end + 1..];
        }
        if t.contains('<') || t.contains('>') {
            return Err(format!("raw < or > in text {t:?}"));
        }
        Ok(())
    };
    while let Some(open) = rest.find('<') {
        let text_part = &rest[..open];
        if stack.is_empty() && !text_part.trim().is_empty() {
            return Err(format!("text outside the root: {text_part:?}"));
        }
        check_text(text_part)?;
        rest = &rest[open..];
        if let Some(r) = rest.strip_prefix("<?") {
            let end = r.find("?>").ok_or("unterminated <?")?;
            rest = &r[end + 2..];
            continue;
        }
        if let Some(r) = rest.strip_prefix("<!--") {
            let end = r.find("-->").ok_or("unterminated comment")?;
            rest = &r[end + 3..];
            continue;
        }
        let close = rest.find('>').ok_or("unterminated tag")?;
        let tag = &rest[1..close];
        rest = &rest[close + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            let top = stack.pop().ok_or(format!("</{name}> closes nothing"))?;
            if top != name.trim() {
                return Err(format!("</{name}> closes <{top}>"));
            }
            continue;
        }
        let self_closing = tag.ends_with('/');
        let body = tag.trim_end_matches('/');
        let name_end = body.find(char::is_whitespace).unwrap_or(body.len());
        let name = &body[..name_end];
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_alphanumeric() || c == '-' || c == ':')
        {
            return Err(format!("bad tag name {name:?}"));
        }
        // Attributes: name="value" pairs.
        let mut attrs = body[name_end..].trim();
        while !attrs.is_empty() {
            let eq = attrs
                .find('=')
                .ok_or(format!("attribute without = in <{tag}>"))?;
            let quote = attrs[eq + 1..]
                .chars()
                .next()
                .ok_or("attribute without value")?;
            if quote != '"' && quote != '\'' {
                return Err(format!("unquoted attribute in <{tag}>"));
            }
            let vstart = eq + 2;
            let vend = attrs[vstart..]
                .find(quote)
                .ok_or("unterminated attribute")?
                + vstart;
            check_text(&attrs[vstart..vend])?;
            attrs = attrs[vend + 1..].trim_start();
        }
        if stack.is_empty() {
            roots += 1;
        }
        if !self_closing {
            stack.push(name);
        }
    }
    if !rest.trim().is_empty() {
        return Err(format!("trailing text {rest:?}"));
    }
    if let Some(open) = stack.last() {
        return Err(format!("<{open}> is never closed"));
    }
    if roots != 1 {
        return Err(format!("{roots} root elements"));
    }
    Ok(())
}

#[test]
fn the_xml_check_rejects_broken_documents() {
    assert!(check_xml("<a><b x=\"1\"/>t &amp; u</a>").is_ok());
    assert!(check_xml("<a><b></a></b>").is_err());
    assert!(check_xml("<a x=1></a>").is_err());
    assert!(check_xml("<a>&nbsp;</a>").is_err());
    assert!(check_xml("<a></a><b></b>").is_err());
    assert!(check_xml("<a>").is_err());
}
