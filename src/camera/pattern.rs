//! `test`: a synthetic moving pattern, to try the live loop on any machine.

use super::{Frame, FrameSource, Pacer, PixelFormat, SourceError};

/// Colour bars scrolling one step per frame with a white square bouncing over them, as packed
/// RGB. Paced at the requested rate (default 30 fps; 0 = as fast as it is consumed).
#[derive(Debug)]
pub struct TestPattern {
    width: u32,
    height: u32,
    pacer: Pacer,
    seq: u64,
}

const BARS: [[u8; 3]; 8] = [
    [235, 235, 235],
    [235, 235, 16],
    [16, 235, 235],
    [16, 235, 16],
    [235, 16, 235],
    [235, 16, 16],
    [16, 16, 235],
    [16, 16, 16],
];

impl TestPattern {
    /// A `width × height` pattern, at `fps` frames a second (as fast as asked for if `None`).
    pub fn new((width, height): (u32, u32), fps: Option<f32>) -> Self {
        TestPattern {
            width: width.max(8),
            height: height.max(8),
            pacer: Pacer::new(Some(fps.unwrap_or(30.0))),
            seq: 0,
        }
    }

    /// The pattern of frame `seq`.
    pub fn render(&self, seq: u64) -> Vec<u8> {
        let (w, h) = (self.width as usize, self.height as usize);
        let bar = w.div_ceil(BARS.len());
        let shift = seq as usize % w;
        let side = (h / 4).max(1);
        let span_x = w - side;
        let span_y = h - side;
        let bounce = |t: usize, span: usize| {
            let t = t % (2 * span.max(1));
            if t > span {
                2 * span - t
            } else {
                t
            }
        };
        let (sx, sy) = (
            bounce(seq as usize * 4, span_x),
            bounce(seq as usize * 3, span_y),
        );
        let mut data = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                let in_square = (sx..sx + side).contains(&x) && (sy..sy + side).contains(&y);
                let c = if in_square {
                    [255, 255, 255]
                } else {
                    BARS[((x + shift) % w) / bar]
                };
                data.extend_from_slice(&c);
            }
        }
        data
    }
}

impl FrameSource for TestPattern {
    fn next_frame(&mut self) -> Result<Frame, SourceError> {
        self.pacer.wait();
        let seq = self.seq;
        self.seq += 1;
        Ok(Frame::new(
            self.render(seq),
            PixelFormat::Rgb24,
            (self.width, self.height),
            seq,
        ))
    }

    fn reopen(&mut self) -> Result<(), SourceError> {
        Ok(())
    }

    fn is_live(&self) -> bool {
        true
    }

    fn name(&self) -> &str {
        "test"
    }
}
