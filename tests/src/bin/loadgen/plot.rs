//! A small SVG line chart for `sweep`.

/// A small line chart: latency percentiles (ms) against concurrent streaming sessions.
/// (sessions, p50, p99, p99.9)
pub(crate) type Point = (usize, f64, f64, f64);
/// (label, colour, which value)
pub(crate) type Series = (&'static str, &'static str, fn(&Point) -> f64);

pub(crate) fn svg_plot(points: &[Point]) -> String {
    let (w, h, left, bottom, top, right) = (640.0, 400.0, 60.0, 50.0, 40.0, 130.0);
    let max_x = points.iter().map(|p| p.0).max().unwrap_or(1) as f64;
    let max_y = points.iter().map(|p| p.3.max(p.2)).fold(1.0, f64::max) * 1.1;
    let x = |v: f64| left + v / max_x * (w - left - right);
    let y = |v: f64| h - bottom - v / max_y * (h - bottom - top);
    let mut s = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{tx}" y="22" font-size="13" text-anchor="middle">Host-added latency per token vs. concurrent sessions (50 tokens/s each)</text>
<line x1="{left}" y1="{yb}" x2="{xr}" y2="{yb}" stroke="black"/><line x1="{left}" y1="{yb}" x2="{left}" y2="{top}" stroke="black"/>
<text x="{tx}" y="{xl}" text-anchor="middle">concurrent sessions</text>
<text x="16" y="{ym}" transform="rotate(-90 16 {ym})" text-anchor="middle">latency (ms)</text>
"##,
        tx = w / 2.0,
        yb = h - bottom,
        xr = w - right,
        xl = h - 12.0,
        ym = h / 2.0
    );
    for i in 0..=5 {
        let v = max_y * i as f64 / 5.0;
        let _ = std::fmt::Write::write_fmt(&mut s, format_args!(
            "<line x1=\"{l}\" y1=\"{yy}\" x2=\"{r}\" y2=\"{yy}\" stroke=\"#ddd\"/><text x=\"{t}\" y=\"{ty}\" text-anchor=\"end\">{v:.1}</text>\n",
            l = left, r = w - right, yy = y(v), t = left - 6.0, ty = y(v) + 4.0));
    }
    for (n, ..) in points {
        let _ = std::fmt::Write::write_fmt(
            &mut s,
            format_args!(
                "<text x=\"{xx}\" y=\"{ty}\" text-anchor=\"middle\">{n}</text>\n",
                xx = x(*n as f64),
                ty = h - bottom + 16.0
            ),
        );
    }
    let series: [Series; 3] = [
        ("p50", "#2456d6", |p| p.1),
        ("p99", "#d67a24", |p| p.2),
        ("p99.9", "#c4302b", |p| p.3),
    ];
    for (i, (name, color, f)) in series.iter().enumerate() {
        let pts: Vec<String> = points
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.0 as f64), y(f(p))))
            .collect();
        let _ = std::fmt::Write::write_fmt(
            &mut s,
            format_args!(
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
                pts.join(" ")
            ),
        );
        for p in points {
            let _ = std::fmt::Write::write_fmt(
                &mut s,
                format_args!(
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>\n",
                    x(p.0 as f64),
                    y(f(p))
                ),
            );
        }
        let ly = top + 10.0 + i as f64 * 20.0;
        let _ = std::fmt::Write::write_fmt(&mut s, format_args!(
            "<line x1=\"{a}\" y1=\"{ly}\" x2=\"{b}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"2\"/><text x=\"{c}\" y=\"{ty}\">{name}</text>\n",
            a = w - right + 15.0, b = w - right + 40.0, c = w - right + 46.0, ty = ly + 4.0));
    }
    s.push_str("</svg>\n");
    s
}
