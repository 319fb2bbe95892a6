//! A line chart as an SVG image, written beside a benchmark's report: one panel per run, time
//! on x, one line per series, the moment the load ended marked. Plain SVG, so any browser or
//! viewer shows it and the project needs no plotting library.

use std::fmt::Write;

/// One line: its name, colour and `(seconds, value)` points.
pub(crate) struct Series {
    pub(crate) name: String,
    pub(crate) colour: &'static str,
    pub(crate) points: Vec<(f64, f64)>,
}

/// One chart.
pub(crate) struct Panel {
    pub(crate) title: String,
    pub(crate) y_label: String,
    pub(crate) series: Vec<Series>,
    /// Where a dashed vertical line marks the end of the load (seconds).
    pub(crate) load_end: Option<f64>,
}

const WIDTH: f64 = 900.0;
const PANEL_HEIGHT: f64 = 300.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 45.0;

/// The panels stacked, as an SVG document.
pub(crate) fn svg(panels: &[Panel]) -> String {
    let height = PANEL_HEIGHT * panels.len() as f64;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for (i, panel) in panels.iter().enumerate() {
        draw(&mut out, panel, i as f64 * PANEL_HEIGHT);
    }
    out.push_str("</svg>\n");
    out
}

fn draw(out: &mut String, panel: &Panel, top: f64) {
    let points = panel.series.iter().flat_map(|s| s.points.iter());
    let x_max = points.clone().map(|p| p.0).fold(1.0, f64::max);
    let y_max = nice(points.map(|p| p.1).fold(1.0, f64::max));
    let (x0, y0) = (LEFT, top + PANEL_HEIGHT - BOTTOM);
    let (w, h) = (WIDTH - LEFT - RIGHT, PANEL_HEIGHT - TOP - BOTTOM);
    let x = |v: f64| x0 + v / x_max * w;
    let y = |v: f64| y0 - v / y_max * h;
    let _ = writeln!(
        out,
        "<text x=\"{LEFT}\" y=\"{}\" font-size=\"14\" font-weight=\"bold\">{}</text>",
        top + 22.0,
        escape(&panel.title)
    );
    for tick in 0..=4 {
        let v = y_max * f64::from(tick) / 4.0;
        let _ = writeln!(
            out,
            "<line x1=\"{x0}\" x2=\"{x1}\" y1=\"{ty}\" y2=\"{ty}\" stroke=\"#ddd\"/>\
             <text x=\"{lx}\" y=\"{ly}\" text-anchor=\"end\">{label}</text>",
            x1 = x0 + w,
            ty = y(v),
            lx = x0 - 6.0,
            ly = y(v) + 4.0,
            label = v.round()
        );
    }
    let step = nice((x_max / 10.0).max(1.0));
    let mut t = 0.0;
    while t <= x_max {
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{t}</text>",
            x(t),
            y0 + 16.0
        );
        t += step;
    }
    let _ = writeln!(
        out,
        "<line x1=\"{x0}\" x2=\"{x1}\" y1=\"{y0}\" y2=\"{y0}\" stroke=\"black\"/>\
         <line x1=\"{x0}\" x2=\"{x0}\" y1=\"{y0}\" y2=\"{ytop}\" stroke=\"black\"/>\
         <text x=\"{xmid}\" y=\"{xlab}\" text-anchor=\"middle\">seconds since the load started</text>\
         <text x=\"14\" y=\"{ymid}\" transform=\"rotate(-90 14 {ymid})\" text-anchor=\"middle\">{label}</text>",
        x1 = x0 + w,
        ytop = y0 - h,
        xmid = x0 + w / 2.0,
        xlab = y0 + 34.0,
        ymid = y0 - h / 2.0,
        label = escape(&panel.y_label)
    );
    if let Some(end) = panel.load_end {
        let _ = writeln!(
            out,
            "<line x1=\"{0}\" x2=\"{0}\" y1=\"{y0}\" y2=\"{1}\" stroke=\"#888\" stroke-dasharray=\"5,4\"/>\
             <text x=\"{2}\" y=\"{3}\" fill=\"#555\">load ends</text>",
            x(end),
            y0 - h,
            x(end) + 4.0,
            y0 - h + 12.0
        );
    }
    for (i, series) in panel.series.iter().enumerate() {
        let path: Vec<String> = series
            .points
            .iter()
            .map(|&(px, py)| format!("{:.1},{:.1}", x(px), y(py)))
            .collect();
        let _ = writeln!(
            out,
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>\
             <line x1=\"{lx}\" x2=\"{}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{c}\" stroke-width=\"3\"/>\
             <text x=\"{}\" y=\"{}\">{}</text>",
            path.join(" "),
            WIDTH - RIGHT + 36.0,
            WIDTH - RIGHT + 42.0,
            top + TOP + 4.0 + 18.0 * i as f64,
            escape(&series.name),
            c = series.colour,
            lx = WIDTH - RIGHT + 16.0,
            ly = top + TOP + 18.0 * i as f64,
        );
    }
}

/// The next round number at or above `v` (1, 2 or 5 times a power of ten).
fn nice(v: f64) -> f64 {
    let power = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|&c| c >= v)
        .unwrap_or(v)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_round_up_and_every_series_is_drawn_and_named() {
        assert_eq!(nice(7.0), 10.0);
        assert_eq!(nice(1200.0), 2000.0);
        assert_eq!(nice(5000.0), 5000.0);
        let image = svg(&[Panel {
            title: "lag <sql>".into(),
            y_label: "records".into(),
            series: vec![Series {
                name: "sql".into(),
                colour: "red",
                points: vec![(0.0, 0.0), (1.0, 50.0), (2.0, 0.0)],
            }],
            load_end: Some(1.0),
        }]);
        assert!(image.contains("lag &lt;sql&gt;"));
        assert_eq!(image.matches("<polyline").count(), 1);
        assert!(image.contains("load ends"));
    }
}
