//! A small SVG chart: groups of bars on the left axis and lines on a right
//! axis, the way the paper draws migration time (bars) and switch-over time
//! (lines) for each scenario. No dependencies; plain SVG 1.1.

use std::fmt::Write;

/// One series: a value per category.
pub struct Series {
    pub name: String,
    pub values: Vec<f64>,
    pub color: &'static str,
}

pub struct Chart {
    pub title: String,
    pub categories: Vec<String>,
    pub bars: Vec<Series>,
    pub bar_axis: String,
    pub lines: Vec<Series>,
    pub line_axis: String,
}

pub const COLORS: [&str; 6] = [
    "#4472c4", "#70ad47", "#ed7d31", "#a5a5a5", "#ffc000", "#5b9bd5",
];
pub const LINE_COLORS: [&str; 4] = ["#1f3864", "#375623", "#843c0c", "#404040"];

/// A "nice" axis maximum (1, 2, 2.5, 5 x 10^n) at or above `v`.
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let e = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * e >= v {
            return m * e;
        }
    }
    10.0 * e
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Where a chart's plot area lies, and the scales of its two axes.
struct Frame {
    w: f64,
    h: f64,
    left: f64,
    top: f64,
    /// Plot width and height.
    pw: f64,
    ph: f64,
    /// Width of one category's group of bars.
    group: f64,
    bmax: f64,
    lmax: f64,
}

impl Chart {
    pub fn render(&self) -> String {
        let (w, h) = (900.0, 480.0);
        let (left, right, top, bottom) = (70.0, 80.0, 50.0, 110.0);
        let max = |series: &[Series]| {
            nice_max(
                series
                    .iter()
                    .flat_map(|s| s.values.iter().copied())
                    .fold(0.0, f64::max),
            )
        };
        let pw = w - left - right;
        let f = Frame {
            w,
            h,
            left,
            top,
            pw,
            ph: h - top - bottom,
            group: pw / self.categories.len().max(1) as f64,
            bmax: max(&self.bars),
            lmax: max(&self.lines),
        };
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
            w / 2.0,
            esc(&self.title)
        );
        self.axes(&f, &mut s);
        self.draw_bars(&f, &mut s);
        self.draw_lines(&f, &mut s);
        self.labels(&f, &mut s);
        self.legend(&f, &mut s);
        s.push_str("</svg>\n");
        s
    }

    /// Grid, axes and their titles.
    fn axes(&self, f: &Frame, s: &mut String) {
        let &Frame {
            w,
            left,
            top,
            pw,
            ph,
            bmax,
            lmax,
            ..
        } = f;
        for i in 0..=5 {
            let y = top + ph - ph * f64::from(i) / 5.0;
            let _ = writeln!(
                *s,
                r##"<line x1="{left}" y1="{y}" x2="{}" y2="{y}" stroke="#e0e0e0"/>"##,
                left + pw
            );
            let _ = writeln!(
                *s,
                r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
                left - 6.0,
                y + 4.0,
                fmt(bmax * f64::from(i) / 5.0)
            );
            if !self.lines.is_empty() {
                let _ = writeln!(
                    *s,
                    r#"<text x="{}" y="{}">{}</text>"#,
                    left + pw + 6.0,
                    y + 4.0,
                    fmt(lmax * f64::from(i) / 5.0)
                );
            }
        }
        let _ = writeln!(
            *s,
            r#"<line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/>"#,
            top + ph
        );
        let _ = writeln!(
            *s,
            r#"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
            top + ph,
            left + pw,
            top + ph
        );
        let _ = writeln!(
            *s,
            r#"<text transform="translate(18,{}) rotate(-90)" text-anchor="middle">{}</text>"#,
            top + ph / 2.0,
            esc(&self.bar_axis)
        );
        if !self.lines.is_empty() {
            let _ = writeln!(
                *s,
                r#"<text transform="translate({},{}) rotate(90)" text-anchor="middle">{}</text>"#,
                w - 14.0,
                top + ph / 2.0,
                esc(&self.line_axis)
            );
        }
    }

    /// One bar per series in each category.
    fn draw_bars(&self, f: &Frame, s: &mut String) {
        let &Frame {
            left,
            top,
            ph,
            group,
            bmax,
            ..
        } = f;
        let bw = group * 0.7 / self.bars.len().max(1) as f64;
        for (si, series) in self.bars.iter().enumerate() {
            for (ci, v) in series.values.iter().enumerate() {
                let x = left + group * ci as f64 + group * 0.15 + bw * si as f64;
                let bh = ph * (v / bmax).clamp(0.0, 1.0);
                let _ = writeln!(
                    *s,
                    r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                    top + ph - bh,
                    bw * 0.95,
                    series.color,
                    esc(&series.name),
                    fmt(*v)
                );
            }
        }
    }

    /// Lines over the group centres.
    fn draw_lines(&self, f: &Frame, s: &mut String) {
        let &Frame {
            left,
            top,
            ph,
            group,
            lmax,
            ..
        } = f;
        for series in &self.lines {
            let pts: Vec<String> = series
                .values
                .iter()
                .enumerate()
                .map(|(ci, v)| {
                    format!(
                        "{:.1},{:.1}",
                        left + group * (ci as f64 + 0.5),
                        top + ph - ph * (v / lmax).clamp(0.0, 1.0)
                    )
                })
                .collect();
            let _ = writeln!(
                *s,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2.5"/>"#,
                pts.join(" "),
                series.color
            );
            for p in &pts {
                let (x, y) = p.split_once(',').expect("x,y");
                let _ = writeln!(
                    *s,
                    r#"<circle cx="{x}" cy="{y}" r="4" fill="{}"/>"#,
                    series.color
                );
            }
        }
    }

    /// Category labels; long ones wrap at " / " so neighbours do not run together.
    fn labels(&self, f: &Frame, s: &mut String) {
        let &Frame {
            left,
            top,
            ph,
            group,
            ..
        } = f;
        // Long labels wrap at " / " so neighbours do not run together.
        for (ci, c) in self.categories.iter().enumerate() {
            let x = left + group * (ci as f64 + 0.5);
            let _ = write!(
                *s,
                r#"<text x="{x:.1}" y="{}" text-anchor="middle">"#,
                top + ph + 18.0
            );
            for (li, part) in c.split(" / ").enumerate() {
                let _ = write!(
                    s,
                    r#"<tspan x="{x:.1}" dy="{}">{}</tspan>"#,
                    if li == 0 { 0 } else { 14 },
                    esc(part)
                );
            }
            s.push_str("</text>\n");
        }
    }

    /// The legend, bars first.
    fn legend(&self, f: &Frame, s: &mut String) {
        let &Frame { h, left, .. } = f;
        let mut lx = left;
        let ly = h - 30.0;
        for series in &self.bars {
            let _ = writeln!(
                *s,
                r#"<rect x="{lx}" y="{}" width="14" height="14" fill="{}"/>"#,
                ly - 11.0,
                series.color
            );
            let _ = writeln!(
                *s,
                r#"<text x="{}" y="{ly}">{}</text>"#,
                lx + 18.0,
                esc(&series.name)
            );
            lx += 24.0 + 7.0 * series.name.len() as f64;
        }
        for series in &self.lines {
            let _ = writeln!(
                *s,
                r#"<line x1="{lx}" y1="{}" x2="{}" y2="{}" stroke="{}" stroke-width="2.5"/>"#,
                ly - 4.0,
                lx + 16.0,
                ly - 4.0,
                series.color
            );
            let _ = writeln!(
                *s,
                r#"<text x="{}" y="{ly}">{}</text>"#,
                lx + 20.0,
                esc(&series.name)
            );
            lx += 26.0 + 7.0 * series.name.len() as f64;
        }
    }
}

fn fmt(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_value_and_scales_to_nice_axes() {
        assert_eq!(nice_max(3.2), 5.0);
        assert_eq!(nice_max(0.21), 0.25);
        assert_eq!(nice_max(180.0), 200.0);
        let c = Chart {
            title: "t <1>".into(),
            categories: vec!["a".into(), "b".into()],
            bars: vec![Series {
                name: "plain".into(),
                values: vec![1.0, 2.0],
                color: COLORS[0],
            }],
            bar_axis: "s".into(),
            lines: vec![Series {
                name: "down".into(),
                values: vec![100.0, 300.0],
                color: LINE_COLORS[0],
            }],
            line_axis: "ms".into(),
        };
        let svg = c.render();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(
            svg.matches("<rect x=").count(),
            2 + 1,
            "two bars and one legend swatch"
        );
        assert!(svg.contains("t &lt;1&gt;"));
        assert_eq!(svg.matches("<circle").count(), 2);
    }
}
