//! The result drawn over a frame with embedded-graphics: a darkened box in the top-left corner
//! with one line and one bar per class (label, probability) and a status line (FPS, inference
//! time).
//!
//! [`Layout`] is public so that tests (and other front ends) know where each element is.

use embedded_graphics::mono_font::{ascii, MonoFont, MonoTextStyle};
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{PrimitiveStyle, Rectangle};
use embedded_graphics::text::{Baseline, Text};
use image::RgbImage;

use crate::classify::Prediction;

/// The label text.
pub const TEXT: Rgb888 = Rgb888::new(255, 255, 255);
/// A probability bar.
pub const BAR: Rgb888 = Rgb888::new(46, 204, 64);
/// The rest of a bar's track.
pub const BAR_TRACK: Rgb888 = Rgb888::new(70, 70, 70);

/// An [`RgbImage`] as an embedded-graphics draw target.
pub struct RgbCanvas<'a>(pub &'a mut RgbImage);

impl OriginDimensions for RgbCanvas<'_> {
    fn size(&self) -> Size {
        Size::new(self.0.width(), self.0.height())
    }
}

impl DrawTarget for RgbCanvas<'_> {
    type Color = Rgb888;
    type Error = std::convert::Infallible;

    fn draw_iter<I>(&mut self, pixels: I) -> Result<(), Self::Error>
    where
        I: IntoIterator<Item = Pixel<Self::Color>>,
    {
        let (w, h) = self.0.dimensions();
        for Pixel(p, c) in pixels {
            if p.x >= 0 && p.y >= 0 && (p.x as u32) < w && (p.y as u32) < h {
                self.0
                    .put_pixel(p.x as u32, p.y as u32, image::Rgb([c.r(), c.g(), c.b()]));
            }
        }
        Ok(())
    }

    fn fill_solid(&mut self, area: &Rectangle, color: Self::Color) -> Result<(), Self::Error> {
        let area = area.intersection(&self.bounding_box());
        let Some(br) = area.bottom_right() else {
            return Ok(());
        };
        let px = image::Rgb([color.r(), color.g(), color.b()]);
        for y in area.top_left.y..=br.y {
            for x in area.top_left.x..=br.x {
                self.0.put_pixel(x as u32, y as u32, px);
            }
        }
        Ok(())
    }
}

/// Where the overlay's parts go on a frame of a given size.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The font of the labels.
    pub font: &'static MonoFont<'static>,
    /// The darkened box behind everything.
    pub panel: Rectangle,
    /// Per class: the text line and the bar track under it.
    pub rows: Vec<(Rectangle, Rectangle)>,
    /// The FPS / inference time line.
    pub status: Rectangle,
    /// Characters that fit on a line.
    pub columns: usize,
}

impl Layout {
    /// The layout for `rows` classes on a frame `width` pixels wide; the font grows with the
    /// frame so the text stays readable on a 1080p screen and fits on a 160-pixel one.
    pub fn new(width: u32, rows: usize) -> Layout {
        let font: &'static MonoFont<'static> = match width {
            0..=399 => &ascii::FONT_6X10,
            400..=999 => &ascii::FONT_9X15,
            _ => &ascii::FONT_10X20,
        };
        let cw = font.character_size.width + font.character_spacing;
        let ch = font.character_size.height;
        let margin = (ch / 3).max(2);
        let bar_h = (ch / 3).max(2);
        let columns = ((width.saturating_sub(4 * margin)) / cw).clamp(4, 40) as usize;
        let inner_w = columns as u32 * cw;
        let x = 2 * margin as i32;
        let mut y = 2 * margin as i32;
        let mut out = Vec::with_capacity(rows);
        for _ in 0..rows {
            let text = Rectangle::new(Point::new(x, y), Size::new(inner_w, ch));
            let bar = Rectangle::new(Point::new(x, y + ch as i32 + 1), Size::new(inner_w, bar_h));
            out.push((text, bar));
            y += (ch + bar_h + margin + 1) as i32;
        }
        let status = Rectangle::new(Point::new(x, y), Size::new(inner_w, ch));
        let panel = Rectangle::new(
            Point::new(margin as i32, margin as i32),
            Size::new(
                inner_w + 2 * margin,
                (y + ch as i32 + margin as i32) as u32 - margin,
            ),
        );
        Layout {
            font,
            panel,
            rows: out,
            status,
            columns,
        }
    }
}

/// The text of a class line: the label cut to fit, then the probability right-aligned.
pub fn class_line(p: &Prediction, columns: usize) -> String {
    let prob = format!("{:5.1}%", p.prob * 100.0);
    let room = columns.saturating_sub(prob.len() + 1);
    let label: String = p.label.chars().take(room).collect();
    format!("{label:<room$} {prob}")
}

/// The text of the status line.
pub fn status_line(fps: f32, infer_ms: f32) -> String {
    format!("{fps:.1} fps  infer {infer_ms:.1} ms")
}

/// Draws the top-K result, FPS and inference time over `img`.
pub fn draw(img: &mut RgbImage, top: &[Prediction], fps: f32, infer_ms: f32) {
    let layout = Layout::new(img.width(), top.len());
    shade(img, &layout.panel);
    let mut canvas = RgbCanvas(img);
    let style = MonoTextStyle::new(layout.font, TEXT);
    for (p, (text, bar)) in top.iter().zip(&layout.rows) {
        let line = class_line(p, layout.columns);
        // Drawing into an RgbCanvas cannot fail.
        let _ = Text::with_baseline(&line, text.top_left, style, Baseline::Top).draw(&mut canvas);
        let _ = bar
            .into_styled(PrimitiveStyle::with_fill(BAR_TRACK))
            .draw(&mut canvas);
        let filled = (bar.size.width as f32 * p.prob.clamp(0.0, 1.0)).round() as u32;
        if filled > 0 {
            let _ = Rectangle::new(bar.top_left, Size::new(filled, bar.size.height))
                .into_styled(PrimitiveStyle::with_fill(BAR))
                .draw(&mut canvas);
        }
    }
    let _ = Text::with_baseline(
        &status_line(fps, infer_ms),
        layout.status.top_left,
        style,
        Baseline::Top,
    )
    .draw(&mut canvas);
}

/// Darkens a rectangle to a third so white text reads on any picture.
fn shade(img: &mut RgbImage, r: &Rectangle) {
    let x0 = r.top_left.x.max(0) as u32;
    let y0 = r.top_left.y.max(0) as u32;
    let x1 = (x0 + r.size.width).min(img.width());
    let y1 = (y0 + r.size.height).min(img.height());
    for y in y0..y1 {
        for x in x0..x1 {
            let p = img.get_pixel_mut(x, y);
            p.0 = p.0.map(|c| c / 3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pred(label: &str, prob: f32) -> Prediction {
        Prediction {
            index: 0,
            label: label.into(),
            prob,
            logit: 0.0,
        }
    }

    #[test]
    fn lines_fit_their_columns() {
        let line = class_line(&pred("a very long label that does not fit", 0.5), 20);
        assert_eq!(line.len(), 20);
        assert!(line.ends_with(" 50.0%"));
    }

    #[test]
    fn bars_are_proportional_and_everything_stays_inside_small_frames() {
        let mut img = RgbImage::from_pixel(160, 120, image::Rgb([200, 200, 200]));
        draw(
            &mut img,
            &[pred("cat", 0.75), pred("dog", 0.25)],
            30.0,
            12.5,
        );
        let layout = Layout::new(160, 2);
        for ((_, bar), prob) in layout.rows.iter().zip([0.75, 0.25]) {
            let y = (bar.top_left.y + 1) as u32;
            let green = (0..160)
                .filter(|&x| img.get_pixel(x, y).0 == [BAR.r(), BAR.g(), BAR.b()])
                .count() as f32;
            assert!(
                (green / bar.size.width as f32 - prob).abs() < 0.02,
                "{green}"
            );
        }
        let br = layout.panel.bottom_right().unwrap();
        assert!(br.x < 160 && br.y < 120, "{br:?}");
        // Outside the panel the picture is untouched.
        assert_eq!(img.get_pixel(159, 119).0, [200, 200, 200]);
    }
}
