//! The latency plot of `ocellus bench --plot`: a hand-written SVG (a histogram and one bar per stage), no
//! plotting crate: the figure is two bar charts, and the text stays readable in a diff.

use std::fmt::Write as _;

/// One bar of the stage panel: name, p50 and p99 in ms.
pub struct StageBar<'a> {
    pub name: &'a str,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// A vertical marker on the histogram (a percentile): label and value in ms.
pub struct Marker<'a> {
    pub label: &'a str,
    pub ms: f64,
}

/// Equal-width bins over the range of log-linear buckets: `(lowest ms, highest ms, count)` per bucket in,
/// `(bin start ms, bin width ms, counts)` out. Each bucket's count goes to the bin holding its midpoint (a
/// bucket is at most 6.25 % of its value wide, narrower than a bin of a plot). No buckets: no bins.
pub fn rebin(buckets: &[(f64, f64, u64)], bins: usize) -> (f64, f64, Vec<u64>) {
    let bins = bins.max(1);
    let (Some(first), Some(last)) = (buckets.first(), buckets.last()) else {
        return (0.0, 0.0, Vec::new());
    };
    let span = last.1 - first.0;
    let (start, width) = if span > 0.0 {
        let width = nice_step(span / bins as f64);
        ((first.0 / width).floor() * width, width)
    } else {
        (first.0, 1.0)
    };
    let n = (((last.1 - start) / width).ceil() as usize).clamp(1, bins * 2);
    let mut counts = vec![0u64; n];
    for &(lo, hi, count) in buckets {
        let i = (((lo + hi) / 2.0 - start) / width).floor().max(0.0) as usize;
        counts[i.min(n - 1)] += count;
    }
    (start, width, counts)
}

/// The smallest of 1, 2, 2.5 or 5 times a power of ten that is at least `x` (> 0).
pub fn nice_step(x: f64) -> f64 {
    if !(x.is_finite() && x > 0.0) {
        return 1.0;
    }
    let p = 10f64.powf(x.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|&s| s >= x * (1.0 - 1e-9))
        .unwrap_or(10.0 * p)
}

/// Escapes text for an XML attribute or element.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

const W: f64 = 860.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 30.0;
const HIST_TOP: f64 = 60.0;
const HIST_H: f64 = 260.0;
const STAGE_TOP: f64 = 390.0;
const STAGE_ROW: f64 = 26.0;

/// The plot: a title, the end-to-end histogram (`buckets` as for [`rebin`]) with `markers`, and the
/// per-stage p50 bars with a p99 whisker.
pub fn plot(
    title: &str,
    subtitle: &str,
    buckets: &[(f64, f64, u64)],
    markers: &[Marker<'_>],
    stages: &[StageBar<'_>],
) -> String {
    let height = STAGE_TOP + STAGE_ROW * stages.len() as f64 + 50.0;
    let plot_w = W - LEFT - RIGHT;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" font-family="sans-serif" font-size="12">
<rect x="0" y="0" width="{W}" height="{height}" fill="white"/>
<text x="{LEFT}" y="24" font-size="16" font-weight="bold">{}</text>
<text x="{LEFT}" y="42" fill="#555">{}</text>"##,
        escape(title),
        escape(subtitle)
    );

    // Histogram of end-to-end latency.
    let (start, width, counts) = rebin(buckets, 40);
    let top = counts.iter().copied().max().unwrap_or(0).max(1);
    let x_end = start + width * counts.len().max(1) as f64;
    let x_max = markers.iter().map(|m| m.ms).fold(x_end, f64::max);
    let x_max = x_max + (x_max - start) * 0.02;
    let x_of = |ms: f64| LEFT + (ms - start) / (x_max - start).max(1e-9) * plot_w;
    let y_of = |n: f64| HIST_TOP + HIST_H - n / top as f64 * HIST_H;
    let _ = writeln!(s, r#"<g id="histogram">"#);
    for (i, &n) in counts.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let x0 = x_of(start + width * i as f64);
        let x1 = x_of(start + width * (i + 1) as f64);
        let _ = writeln!(
            s,
            r##"<rect class="bar" x="{x0:.2}" y="{:.2}" width="{:.2}" height="{:.2}" fill="#4c78a8"><title>{:.3}-{:.3} ms: {n} frames</title></rect>"##,
            y_of(n as f64),
            (x1 - x0 - 1.0).max(0.5),
            HIST_H - (y_of(n as f64) - HIST_TOP),
            start + width * i as f64,
            start + width * (i + 1) as f64,
        );
    }
    let base = HIST_TOP + HIST_H;
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" y1="{base}" x2="{:.2}" y2="{base}" stroke="#333"/>
<line x1="{LEFT}" y1="{HIST_TOP}" x2="{LEFT}" y2="{base}" stroke="#333"/>
<text x="{:.2}" y="{HIST_TOP}" text-anchor="end">{top}</text>
<text x="{:.2}" y="{base}" text-anchor="end">0</text>
<text x="18" y="{:.2}" transform="rotate(-90 18 {:.2})" text-anchor="middle">frames</text>"##,
        W - RIGHT,
        LEFT - 6.0,
        LEFT - 6.0,
        HIST_TOP + HIST_H / 2.0,
        HIST_TOP + HIST_H / 2.0,
    );
    let step = nice_step((x_max - start) / 8.0);
    let mut tick = (start / step).ceil() * step;
    while tick <= x_max + 1e-9 {
        let x = x_of(tick);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.2}" y1="{base}" x2="{x:.2}" y2="{:.2}" stroke="#333"/><text x="{x:.2}" y="{:.2}" text-anchor="middle">{}</text>"##,
            base + 4.0,
            base + 17.0,
            trim(tick)
        );
        tick += step;
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.2}" y="{:.2}" text-anchor="middle">end-to-end latency (ms), capture timestamp to published</text>"#,
        LEFT + plot_w / 2.0,
        base + 34.0
    );
    for (k, m) in markers.iter().enumerate() {
        let x = x_of(m.ms);
        // Labels right of their line, or left of it in the right third of the plot.
        let (tx, anchor) = if x > LEFT + plot_w * 0.66 {
            (x - 3.0, "end")
        } else {
            (x + 3.0, "start")
        };
        let _ = writeln!(
            s,
            r##"<line class="marker" x1="{x:.2}" y1="{HIST_TOP}" x2="{x:.2}" y2="{base}" stroke="#e45756" stroke-dasharray="4 3"/><text x="{tx:.2}" y="{:.2}" text-anchor="{anchor}" fill="#e45756">{} {:.2}</text>"##,
            HIST_TOP + 12.0 + 14.0 * k as f64,
            escape(m.label),
            m.ms
        );
    }
    let _ = writeln!(s, "</g>");

    // One row per stage: p50 bar, p99 whisker.
    let stage_max = stages
        .iter()
        .map(|b| b.p99_ms.max(b.p50_ms))
        .fold(0.0f64, f64::max)
        .max(1e-6);
    // Room on the right for the widest "p50 / p99" label.
    let sx = |ms: f64| LEFT + 60.0 + ms / stage_max * (plot_w - 60.0 - 130.0);
    let _ = writeln!(
        s,
        r#"<g id="stages"><text x="{LEFT}" y="{:.2}" font-weight="bold">per stage: p50 (bar) and p99 (whisker), ms</text>"#,
        STAGE_TOP - 14.0
    );
    for (i, b) in stages.iter().enumerate() {
        let y = STAGE_TOP + STAGE_ROW * i as f64;
        let _ = writeln!(
            s,
            r##"<text x="{:.2}" y="{:.2}" text-anchor="end">{}</text><rect class="bar" x="{:.2}" y="{y:.2}" width="{:.2}" height="{:.2}" fill="#72b7b2"><title>{}: p50 {:.3} ms, p99 {:.3} ms</title></rect><line x1="{:.2}" y1="{:.2}" x2="{:.2}" y2="{:.2}" stroke="#333"/><text x="{:.2}" y="{:.2}">{:.3} / {:.3}</text>"##,
            LEFT + 54.0,
            y + 14.0,
            escape(b.name),
            sx(0.0),
            (sx(b.p50_ms) - sx(0.0)).max(0.5),
            STAGE_ROW - 8.0,
            escape(b.name),
            b.p50_ms,
            b.p99_ms,
            sx(b.p50_ms),
            y + 9.0,
            sx(b.p99_ms),
            y + 9.0,
            sx(b.p99_ms).max(sx(b.p50_ms)) + 6.0,
            y + 14.0,
            b.p50_ms,
            b.p99_ms
        );
    }
    let _ = writeln!(s, "</g>\n</svg>");
    s
}

/// A tick label without trailing zeros.
fn trim(v: f64) -> String {
    let t = format!("{v:.3}");
    let t = t.trim_end_matches('0').trim_end_matches('.');
    if t == "-0" {
        "0".into()
    } else {
        t.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(1.0), 1.0);
        assert_eq!(nice_step(1.3), 2.0);
        assert_eq!(nice_step(2.2), 2.5);
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(0.031), 0.05);
        assert_eq!(nice_step(0.0), 1.0);
    }

    #[test]
    fn rebin_keeps_every_count_in_order() {
        let buckets = [
            (9.5, 10.0, 3),
            (10.0, 10.6, 5),
            (12.0, 12.7, 1),
            (30.0, 31.9, 2),
        ];
        let (start, width, counts) = rebin(&buckets, 10);
        assert_eq!(counts.iter().sum::<u64>(), 11);
        assert!(start <= 9.5 && width > 0.0);
        assert!(start + width * counts.len() as f64 >= 31.9);
        assert!(counts.len() <= 20);
        // Bins of 2.5 ms from 7.5 ms: [7.5, 10) holds the first bucket, [10, 12.5) the next two, the last
        // bin the slowest frames.
        assert_eq!((start, width), (7.5, 2.5));
        assert_eq!(&counts[..2], &[3, 6]);
        assert_eq!(*counts.last().unwrap(), 2);
        assert_eq!(rebin(&[], 10).2, Vec::<u64>::new());
        assert_eq!(rebin(&[(5.0, 5.0, 7)], 10).2, vec![7]);
    }

    #[test]
    fn plot_escapes_text_and_draws_a_bar_per_bin_and_stage() {
        let svg = plot(
            "a <b> & c",
            "d",
            &[(1.0, 1.1, 4), (2.0, 2.1, 1)],
            &[Marker {
                label: "p50",
                ms: 1.1,
            }],
            &[StageBar {
                name: "prepare",
                p50_ms: 0.5,
                p99_ms: 0.7,
            }],
        );
        assert!(svg.contains("a &lt;b&gt; &amp; c"));
        assert_eq!(svg.matches(r#"class="bar""#).count(), 3, "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(escape("x\"'\u{1}"), "x&quot;&apos; ");
    }
}
