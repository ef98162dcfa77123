//! PNG plots of evaluation reports: a depth x length heatmap per NIAH setting and SQuAD bars.
//! Text is drawn with DejaVu Sans from the system's fonts (Debian's fonts-dejavu-core).

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::report::{NiahCell, SquadScore};
use crate::EvalError;

const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const FONT: &str = "sans-serif";

/// Registers the font once per process; plotters keeps a `'static` reference to its bytes.
fn ensure_font() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let bytes = std::fs::read(FONT_PATH)
                .map_err(|e| format!("{FONT_PATH}: {e} (install Debian's fonts-dejavu-core)"))?;
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            register_font(FONT, FontStyle::Normal, bytes)
                .map_err(|_| format!("{FONT_PATH} is not a usable font"))
        })
        .clone()
}

fn plot_error(path: &Path) -> impl Fn(String) -> EvalError + '_ {
    move |detail| EvalError::Plot {
        path: path.display().to_string(),
        detail,
    }
}

/// Red (0) to green (1).
fn score_colour(score: f64) -> RGBColor {
    let s = score.clamp(0.0, 1.0);
    RGBColor(
        (220.0 * (1.0 - s) + 40.0 * s) as u8,
        (60.0 * (1.0 - s) + 170.0 * s) as u8,
        (60.0 * (1.0 - s) + 80.0 * s) as u8,
    )
}

/// Heatmap of one setting: x = haystack length, y = needle depth; a cell is green when the
/// answer holds the needle's key facts (with a check mark) and red when not, and shows the
/// answer's token F1; cells the setting could not run (document beyond the context) are grey.
pub fn niah_heatmap(cells: &[NiahCell], setting: &str, path: &Path) -> Result<(), EvalError> {
    let fail = plot_error(path);
    ensure_font().map_err(&fail)?;
    let mut lengths: Vec<usize> = cells.iter().map(|c| c.length_tokens).collect();
    lengths.sort_unstable();
    lengths.dedup();
    let mut depths: Vec<u32> = cells.iter().map(|c| c.depth_percent).collect();
    depths.sort_unstable();
    depths.dedup();
    if lengths.is_empty() {
        return Err(fail("no cells to plot".to_string()));
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| fail(e.to_string()))?;
    }
    let root = BitMapBackend::new(
        path,
        (
            (160 + 130 * lengths.len() as u32).max(420),
            140 + 80 * depths.len() as u32,
        ),
    )
    .into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Needle in a haystack: {setting}"), (FONT, 22))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..lengths.len() as f64, 0.0..depths.len() as f64)
        .map_err(|e| fail(e.to_string()))?;
    // Tick labels are drawn by hand at the cell centres; plotters places its own at round
    // numbers of the axis.
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(0)
        .y_labels(0)
        .x_desc("document length (tokens)")
        .y_desc("needle depth")
        .axis_desc_style((FONT, 15))
        .draw()
        .map_err(|e| fail(e.to_string()))?;
    let label_font = (FONT, 14).into_font().color(&BLACK);
    for (x, length) in lengths.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(x as f64 + 0.5, 0.0));
        root.draw(&Text::new(
            length.to_string(),
            (px - 16, py + 6),
            label_font.clone(),
        ))
        .map_err(|e| fail(e.to_string()))?;
    }
    for (y, depth) in depths.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(0.0, y as f64 + 0.5));
        root.draw(&Text::new(
            format!("{depth} %"),
            (px - 44, py - 7),
            label_font.clone(),
        ))
        .map_err(|e| fail(e.to_string()))?;
    }
    for (x, length) in lengths.iter().enumerate() {
        for (y, depth) in depths.iter().enumerate() {
            let cell = cells.iter().find(|c| {
                c.setting == setting && c.length_tokens == *length && c.depth_percent == *depth
            });
            let (colour, label) = match cell {
                Some(c) if c.fits_context => (
                    score_colour(if c.key_facts_hit { 1.0 } else { 0.0 }),
                    format!("{}{:.2}", if c.key_facts_hit { "✓ " } else { "" }, c.f1),
                ),
                Some(_) => (RGBColor(200, 200, 200), "too long".to_string()),
                None => (RGBColor(235, 235, 235), "not run".to_string()),
            };
            let (x0, y0) = (x as f64, y as f64);
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x0, y0), (x0 + 1.0, y0 + 1.0)],
                    colour.filled(),
                )))
                .map_err(|e| fail(e.to_string()))?;
            let (px, py) = chart.backend_coord(&(x0 + 0.5, y0 + 0.5));
            root.draw(&Text::new(
                label,
                (px - 26, py - 8),
                (FONT, 16).into_font().color(&BLACK),
            ))
            .map_err(|e| fail(e.to_string()))?;
        }
    }
    root.present().map_err(|e| fail(e.to_string()))?;
    Ok(())
}

/// Exact match and F1 of each setting, as grouped bars.
pub fn squad_bars(scores: &[SquadScore], path: &Path) -> Result<(), EvalError> {
    let settings: Vec<String> = scores.iter().map(|s| s.setting.clone()).collect();
    grouped_bars(
        "SQuAD v2.0 dev, answerable questions",
        "score (%)",
        &settings,
        &[
            (
                "exact match",
                RGBColor(90, 120, 200),
                scores.iter().map(|s| s.exact_match).collect(),
            ),
            (
                "F1",
                RGBColor(230, 150, 60),
                scores.iter().map(|s| s.f1).collect(),
            ),
            (
                "contains a gold answer",
                RGBColor(120, 180, 100),
                scores.iter().map(|s| s.contains_answer).collect(),
            ),
        ],
        path,
    )
}

/// The key-fact rate of base, base + document and LIFT per document (and overall), as
/// grouped bars; `rates[i]` holds the three settings' rates of `groups[i]`.
pub fn facts_bars(groups: &[String], rates: &[[f64; 3]], path: &Path) -> Result<(), EvalError> {
    let series = |index: usize| rates.iter().map(|r| r[index]).collect::<Vec<f64>>();
    grouped_bars(
        "Key facts answered, fact dev set",
        "questions answered (%)",
        groups,
        &[
            ("base, no document", RGBColor(160, 160, 160), series(0)),
            ("base + document", RGBColor(90, 120, 200), series(1)),
            ("LIFT, no document", RGBColor(230, 150, 60), series(2)),
        ],
        path,
    )
}

/// Bars of several series (name, colour, one share in 0..=1 per group) side by side per group.
fn grouped_bars(
    caption: &str,
    y_desc: &str,
    groups: &[String],
    series: &[(&str, RGBColor, Vec<f64>)],
    path: &Path,
) -> Result<(), EvalError> {
    let fail = plot_error(path);
    ensure_font().map_err(&fail)?;
    if groups.is_empty() || series.is_empty() {
        return Err(fail("no scores to plot".to_string()));
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| fail(e.to_string()))?;
    }
    let per_group = series.len() + 1;
    let bar_width = 60 * series.len() as u32;
    let root = BitMapBackend::new(path, (200 + (bar_width + 60) * groups.len() as u32, 460))
        .into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    let slots = groups.len() * per_group;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, (FONT, 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0..slots, 0.0..110.0)
        .map_err(|e| fail(e.to_string()))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(slots)
        .x_label_formatter(&|slot| {
            if slot % per_group == series.len() / 2 {
                groups.get(slot / per_group).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc(y_desc)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .draw()
        .map_err(|e| fail(e.to_string()))?;
    for (group, _) in groups.iter().enumerate() {
        for (offset, (_, colour, values)) in series.iter().enumerate() {
            let x = group * per_group + offset;
            let percent = values.get(group).copied().unwrap_or(0.0) * 100.0;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x, 0.0), (x + 1, percent)],
                    colour.filled(),
                )))
                .map_err(|e| fail(e.to_string()))?;
            let top = chart.backend_coord(&(x, percent));
            root.draw(&Text::new(
                format!("{percent:.0}"),
                (top.0 + 4, top.1 - 16),
                (FONT, 13).into_font(),
            ))
            .map_err(|e| fail(e.to_string()))?;
        }
    }
    for (name, colour, _) in series {
        let colour = *colour;
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0, -1.0), (0, -1.0)],
                colour.filled(),
            )))
            .map_err(|e| fail(e.to_string()))?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| fail(e.to_string()))?;
    root.present().map_err(|e| fail(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_png(path: &Path) {
        let bytes = std::fs::read(path).unwrap();
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
            "{} is not a PNG",
            path.display()
        );
        assert!(
            bytes.len() > 4_000,
            "{} is only {} bytes",
            path.display(),
            bytes.len()
        );
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // LIFT_KEEP_PLOTS: a test option, not configuration
    fn heatmap_and_bars_are_written_as_png() {
        let dir = tempfile::tempdir().unwrap();
        let mut cells = Vec::new();
        for (i, length) in [1024, 2048, 16384].into_iter().enumerate() {
            for depth in [0, 50, 100] {
                cells.push(NiahCell {
                    setting: "base+context".into(),
                    length_tokens: length,
                    depth_percent: depth,
                    answer: "a sandwich in Dolores Park".into(),
                    key_facts_hit: depth != 50,
                    f1: 0.3 * i as f64,
                    fits_context: length < 8192,
                });
            }
        }
        let heatmap = dir.path().join("niah.png");
        niah_heatmap(&cells, "base+context", &heatmap).unwrap();
        assert_png(&heatmap);
        let single: Vec<NiahCell> = cells
            .iter()
            .filter(|c| c.length_tokens == 1024)
            .cloned()
            .collect();
        let single_path = dir.path().join("niah-single.png");
        niah_heatmap(&single, "base+context", &single_path).unwrap();
        assert_png(&single_path);

        let scores = vec![
            SquadScore {
                setting: "base".into(),
                exact_match: 0.02,
                f1: 0.08,
                contains_answer: 0.05,
                questions: 20,
            },
            SquadScore {
                setting: "base+context".into(),
                exact_match: 0.3,
                f1: 0.45,
                contains_answer: 0.6,
                questions: 20,
            },
            SquadScore {
                setting: "lift".into(),
                exact_match: 0.1,
                f1: 0.2,
                contains_answer: 0.3,
                questions: 20,
            },
        ];
        let bars = dir.path().join("squad.png");
        squad_bars(&scores, &bars).unwrap();
        assert_png(&bars);
        let facts = dir.path().join("facts.png");
        let groups = vec!["history".to_string(), "overall".to_string()];
        facts_bars(&groups, &[[0.0, 0.5, 0.8], [0.1, 0.4, 0.7]], &facts).unwrap();
        assert_png(&facts);
        if let Ok(keep) = std::env::var("LIFT_KEEP_PLOTS") {
            std::fs::copy(&heatmap, Path::new(&keep).join("test-niah.png")).unwrap();
            std::fs::copy(&bars, Path::new(&keep).join("test-squad.png")).unwrap();
            std::fs::copy(&single_path, Path::new(&keep).join("test-niah-single.png")).unwrap();
        }
    }
}
