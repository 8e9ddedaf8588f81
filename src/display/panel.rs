//! Small panels through linux-embedded-hal: a 128x64 SSD1306 OLED on I2C (text only: the top
//! result and the frame rate) and a 240x240 ST7789 TFT on SPI (the frame, letterboxed, with the
//! overlay redrawn at the panel's scale).
//!
//! Drawing is separate from the bus: [`draw_mono`] and [`draw_color`] take any embedded-graphics
//! target, and the sinks take any display interface, so both are tested without hardware.
//!
//! Specs: `ssd1306:/dev/i2c-1` (optionally `?addr=0x3d`);
//! `st7789:/dev/spidev0.0?dc=25&rst=27` (GPIO line numbers on `/dev/gpiochip0`, or
//! `&chip=/dev/gpiochipN`; `&size=240x320` for taller panels; `&hz=` SPI clock).

use embedded_graphics::mono_font::{ascii, MonoTextStyle};
use embedded_graphics::pixelcolor::{BinaryColor, Rgb565, Rgb888};
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{PrimitiveStyle, Rectangle};
use embedded_graphics::text::{Baseline, Text};
use ssd1306::mode::BufferedGraphicsMode;
use ssd1306::prelude::*;
use ssd1306::Ssd1306;

use super::FrameReport;
use super::{fit, overlay, Sink, SinkError, SinkErrorKind, View};

/// Draws the top result on a monochrome panel of at least 128x64: label, probability with a
/// bar, and the frame rate.
pub fn draw_mono<D: DrawTarget<Color = BinaryColor>>(
    d: &mut D,
    report: &FrameReport,
) -> Result<(), D::Error> {
    d.clear(BinaryColor::Off)?;
    let style = MonoTextStyle::new(&ascii::FONT_6X10, BinaryColor::On);
    let width = d.bounding_box().size.width;
    let columns = (width / 6) as usize;
    if let Some(top) = report.top.first() {
        let label: String = top.label.chars().take(columns).collect();
        Text::with_baseline(&label, Point::new(0, 0), style, Baseline::Top).draw(d)?;
        let prob = format!("{:.1}%", top.prob * 100.0);
        Text::with_baseline(&prob, Point::new(0, 14), style, Baseline::Top).draw(d)?;
        let bar = Rectangle::new(Point::new(0, 28), Size::new(width, 8));
        bar.into_styled(PrimitiveStyle::with_stroke(BinaryColor::On, 1))
            .draw(d)?;
        let filled = ((width - 4) as f32 * top.prob.clamp(0.0, 1.0)).round() as u32;
        Rectangle::new(Point::new(2, 30), Size::new(filled, 4))
            .into_styled(PrimitiveStyle::with_fill(BinaryColor::On))
            .draw(d)?;
    }
    let status = format!("{:.1} fps {:.0} ms", report.fps, report.stages_ms.infer);
    Text::with_baseline(&status, Point::new(0, 42), style, Baseline::Top).draw(d)?;
    Ok(())
}

/// Draws the frame, letterboxed, and the overlay at the panel's own scale.
pub fn draw_color<D: DrawTarget<Color = Rgb565>>(d: &mut D, view: &View) -> Result<(), D::Error> {
    let size = d.bounding_box().size;
    let (mut img, (ox, oy)) = fit(view.frame, size.width, size.height);
    overlay::draw(
        &mut img,
        &view.report.top,
        view.report.fps,
        view.report.stages_ms.infer,
    );
    if ox > 0 || oy > 0 {
        d.clear(Rgb565::BLACK)?;
    }
    let area = Rectangle::new(
        Point::new(ox as i32, oy as i32),
        Size::new(img.width(), img.height()),
    );
    d.fill_contiguous(
        &area,
        img.pixels()
            .map(|p| Rgb565::from(Rgb888::new(p[0], p[1], p[2]))),
    )
}

/// A 128x64 SSD1306 OLED.
pub struct Ssd1306Sink<DI> {
    name: String,
    display: Ssd1306<DI, DisplaySize128x64, BufferedGraphicsMode<DisplaySize128x64>>,
}

impl<DI: WriteOnlyDataCommand + Send> Ssd1306Sink<DI> {
    /// Initialises the panel behind `interface`.
    pub fn new(name: &str, interface: DI) -> Result<Self, SinkError> {
        let mut display = Ssd1306::new(interface, DisplaySize128x64, DisplayRotation::Rotate0)
            .into_buffered_graphics_mode();
        display.init().map_err(|e| {
            SinkError::new(
                SinkErrorKind::Unavailable,
                name,
                format!("panel init failed: {e:?}"),
            )
        })?;
        Ok(Ssd1306Sink {
            name: name.to_owned(),
            display,
        })
    }
}

impl<DI: WriteOnlyDataCommand + Send> Sink for Ssd1306Sink<DI> {
    fn show(&mut self, view: &View) -> Result<(), SinkError> {
        let failed = |e| SinkError::new(SinkErrorKind::Write, &self.name, format!("{e:?}"));
        draw_mono(&mut self.display, view.report).map_err(failed)?;
        self.display.flush().map_err(failed)
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// A colour panel: any embedded-graphics target in RGB565 (the ST7789 driver in practice).
pub struct ColorPanelSink<D> {
    name: String,
    display: D,
}

impl<D> ColorPanelSink<D> {
    /// A sink drawing on `display`, named `name` in messages.
    pub fn new(name: &str, display: D) -> Self {
        ColorPanelSink {
            name: name.to_owned(),
            display,
        }
    }
}

impl<D: DrawTarget<Color = Rgb565> + Send> Sink for ColorPanelSink<D>
where
    D::Error: std::fmt::Debug,
{
    fn show(&mut self, view: &View) -> Result<(), SinkError> {
        draw_color(&mut self.display, view)
            .map_err(|e| SinkError::new(SinkErrorKind::Write, &self.name, format!("{e:?}")))
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// `path?key=value&...` split into the path and a lookup.
fn parse_spec(arg: &str) -> (&str, Vec<(&str, &str)>) {
    let (path, query) = arg.split_once('?').unwrap_or((arg, ""));
    let params = query
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
        .collect();
    (path, params)
}

fn param<T: std::str::FromStr>(
    spec: &str,
    params: &[(&str, &str)],
    key: &str,
) -> Result<Option<T>, SinkError> {
    params
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| {
            let v = v.trim_start_matches("0x");
            let parsed = if key == "addr" {
                u64::from_str_radix(v, 16)
                    .ok()
                    .and_then(|n| n.to_string().parse().ok())
            } else {
                v.parse().ok()
            };
            parsed.ok_or_else(|| {
                SinkError::new(
                    SinkErrorKind::Config,
                    spec,
                    format!("bad value for '{key}'"),
                )
            })
        })
        .transpose()
}

/// Opens `ssd1306:/dev/i2c-N[?addr=0x3c]`.
pub fn open_ssd1306(spec: &str, arg: &str) -> Result<Box<dyn Sink>, SinkError> {
    let (path, params) = parse_spec(arg);
    let addr: u8 = param(spec, &params, "addr")?.unwrap_or(0x3c);
    let i2c = linux_embedded_hal::I2cdev::new(path)
        .map_err(|e| SinkError::new(SinkErrorKind::Unavailable, spec, format!("{path}: {e}")))?;
    let interface = ssd1306::I2CDisplayInterface::new_custom_address(i2c, addr);
    Ok(Box::new(Ssd1306Sink::new(spec, interface)?))
}

/// Opens `st7789:/dev/spidevX.Y?dc=N[&rst=N][&chip=/dev/gpiochipN][&size=WxH][&hz=N]`.
pub fn open_st7789(spec: &str, arg: &str) -> Result<Box<dyn Sink>, SinkError> {
    use linux_embedded_hal::gpio_cdev::{Chip, LineRequestFlags};
    use linux_embedded_hal::spidev::{SpiModeFlags, SpidevOptions};
    use linux_embedded_hal::{CdevPin, Delay, SpidevDevice};
    let (path, params) = parse_spec(arg);
    let unavailable = |m: String| SinkError::new(SinkErrorKind::Unavailable, spec, m);
    let dc: u32 = param(spec, &params, "dc")?.ok_or_else(|| {
        SinkError::new(
            SinkErrorKind::Config,
            spec,
            "the data/command GPIO is needed (?dc=N)",
        )
    })?;
    let rst: Option<u32> = param(spec, &params, "rst")?;
    let chip_path: String =
        param(spec, &params, "chip")?.unwrap_or_else(|| "/dev/gpiochip0".into());
    let (w, h) = param::<String>(spec, &params, "size")?
        .map(|s| {
            s.split_once('x')
                .and_then(|(w, h)| Some((w.parse::<u16>().ok()?, h.parse::<u16>().ok()?)))
                .ok_or_else(|| SinkError::new(SinkErrorKind::Config, spec, "size must be WxH"))
        })
        .transpose()?
        .unwrap_or((240, 240));
    let hz: u32 = param(spec, &params, "hz")?.unwrap_or(32_000_000);

    let mut spi = SpidevDevice::open(path).map_err(|e| unavailable(format!("{path}: {e:?}")))?;
    spi.configure(
        &SpidevOptions::new()
            .max_speed_hz(hz)
            .mode(SpiModeFlags::SPI_MODE_0)
            .build(),
    )
    .map_err(|e| unavailable(format!("{path}: {e}")))?;
    let mut chip = Chip::new(&chip_path).map_err(|e| unavailable(format!("{chip_path}: {e}")))?;
    let mut output = |line: u32| {
        chip.get_line(line)
            .and_then(|l| l.request(LineRequestFlags::OUTPUT, 0, "convnext-edge"))
            .and_then(CdevPin::new)
            .map_err(|e| unavailable(format!("{chip_path} line {line}: {e}")))
    };
    let dc = output(dc)?;
    // The driver keeps a borrowed transfer buffer for the panel's lifetime, which is the
    // program's: one small allocation per panel opened.
    let buffer: &'static mut [u8] = Box::leak(vec![0u8; 4096].into_boxed_slice());
    let di = mipidsi::interface::SpiInterface::new(spi, dc, buffer);
    let builder = mipidsi::Builder::new(mipidsi::models::ST7789, di)
        .display_size(w, h)
        .invert_colors(mipidsi::options::ColorInversion::Inverted);
    let init_failed = |e: &dyn std::fmt::Debug| unavailable(format!("panel init failed: {e:?}"));
    let sink: Box<dyn Sink> = match rst {
        Some(rst) => {
            let display = builder
                .reset_pin(output(rst)?)
                .init(&mut Delay)
                .map_err(|e| init_failed(&e))?;
            Box::new(ColorPanelSink::new(spec, display))
        }
        None => {
            let display = builder.init(&mut Delay).map_err(|e| init_failed(&e))?;
            Box::new(ColorPanelSink::new(spec, display))
        }
    };
    Ok(sink)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        let (path, params) = parse_spec("/dev/spidev0.0?dc=25&rst=27&size=240x320");
        assert_eq!(path, "/dev/spidev0.0");
        assert_eq!(param::<u32>("s", &params, "dc").unwrap(), Some(25));
        assert_eq!(param::<u32>("s", &params, "hz").unwrap(), None);
        let (_, params) = parse_spec("/dev/i2c-1?addr=0x3d");
        assert_eq!(param::<u8>("s", &params, "addr").unwrap(), Some(0x3d));
        let (_, params) = parse_spec("/dev/i2c-1?addr=zz");
        assert!(param::<u8>("s", &params, "addr").is_err());
    }

    #[test]
    fn st7789_needs_dc_and_missing_devices_are_unavailable() {
        let e = open_st7789("st7789:x", "/dev/spidev9.9").err().unwrap();
        assert_eq!(e.kind, SinkErrorKind::Config);
        let e = open_ssd1306("ssd1306:x", "/nonexistent/i2c-9")
            .err()
            .unwrap();
        assert_eq!(e.kind, SinkErrorKind::Unavailable);
        assert!(e.to_string().contains("/nonexistent/i2c-9"), "{e}");
    }
}
