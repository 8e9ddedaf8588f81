//! Motion-JPEG: splitting a byte stream into JPEG frames, and restoring the Huffman tables
//! that many UVC cameras leave out.
//!
//! The splitter walks JPEG marker segments by their lengths and scans only entropy-coded data
//! for the next marker, so an `FF D9` inside an EXIF thumbnail or any other segment does not
//! end a frame early. Garbage between frames is skipped and reported; a frame that grows past
//! the size limit without an end marker is dropped and reported, so memory stays bounded on a
//! stream that never ends a frame.

use std::borrow::Cow;

/// What the splitter found next in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Split {
    /// One complete JPEG, SOI to EOI.
    Frame(Vec<u8>),
    /// Bytes that were not a complete frame and were thrown away, with why.
    Corrupt(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Looking for an SOI marker.
    Seek,
    /// At a marker inside a frame.
    Marker,
    /// Inside entropy-coded data after SOS.
    Entropy,
}

/// Incremental MJPEG stream splitter: [`push`](Self::push) bytes as they arrive,
/// [`pop`](Self::pop) frames out.
///
/// ```
/// use convnext_edge::camera::mjpeg::{Split, Splitter};
/// let jpeg = [0xFF, 0xD8, 0xFF, 0xDA, 0x00, 0x02, 0x12, 0x34, 0xFF, 0xD9];
/// let mut s = Splitter::new(1 << 20);
/// s.push(&jpeg[..5]);
/// assert_eq!(s.pop(), None);
/// s.push(&jpeg[5..]);
/// assert_eq!(s.pop(), Some(Split::Frame(jpeg.to_vec())));
/// ```
#[derive(Debug)]
pub struct Splitter {
    buf: Vec<u8>,
    /// Where the current frame's SOI is in `buf` (meaningful outside `Seek`).
    start: usize,
    /// How far `buf` has been parsed.
    pos: usize,
    state: State,
    max_frame: usize,
}

impl Splitter {
    /// A splitter that declares corrupt any frame longer than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Splitter {
            buf: Vec::new(),
            start: 0,
            pos: 0,
            state: State::Seek,
            max_frame: max_frame.max(4),
        }
    }

    /// The frame size limit.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held that belong to no complete frame yet.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Ends the stream: whatever is left is a truncated frame (or nothing).
    pub fn finish(&mut self) -> Option<Split> {
        let left = self.buf.len() - self.start.min(self.buf.len());
        let had_frame = self.state != State::Seek;
        self.reset_to(self.buf.len());
        (had_frame && left > 0)
            .then(|| Split::Corrupt(format!("stream ended inside a frame ({left} bytes)")))
    }

    /// The next frame or the next corrupt stretch, if enough bytes have arrived.
    pub fn pop(&mut self) -> Option<Split> {
        loop {
            match self.state {
                State::Seek => {
                    let found = find_soi(&self.buf[self.pos..]).map(|i| self.pos + i);
                    match found {
                        Some(soi) => {
                            let skipped = soi;
                            self.buf.drain(..soi);
                            self.start = 0;
                            self.pos = 2;
                            self.state = State::Marker;
                            if skipped > 0 {
                                return Some(Split::Corrupt(format!(
                                    "{skipped} bytes of non-JPEG data between frames"
                                )));
                            }
                        }
                        None => {
                            // Keep a trailing FF: it may be the first half of an SOI.
                            let keep = usize::from(self.buf.last() == Some(&0xFF));
                            let dropped = self.buf.len() - keep;
                            self.buf.drain(..dropped);
                            self.pos = 0;
                            if dropped > 0 {
                                return Some(Split::Corrupt(format!(
                                    "{dropped} bytes of non-JPEG data between frames"
                                )));
                            }
                            return None;
                        }
                    }
                }
                State::Marker => match self.step_marker() {
                    Step::NeedMore => return self.check_size(),
                    Step::Continue => {}
                    Step::Done(split) => return Some(split),
                },
                State::Entropy => match self.step_entropy() {
                    Step::NeedMore => return self.check_size(),
                    Step::Continue => {}
                    Step::Done(split) => return Some(split),
                },
            }
        }
    }

    fn check_size(&mut self) -> Option<Split> {
        let len = self.buf.len() - self.start;
        if len <= self.max_frame {
            return None;
        }
        self.reset_to(self.buf.len());
        Some(Split::Corrupt(format!(
            "no end of frame within {} bytes (limit)",
            self.max_frame
        )))
    }

    /// Drops `buf[..end]` and looks for the next SOI.
    fn reset_to(&mut self, end: usize) {
        self.buf.drain(..end);
        self.start = 0;
        self.pos = 0;
        self.state = State::Seek;
    }

    fn corrupt_here(&mut self, why: String) -> Step {
        // A frame cut inside a segment makes its length run into the next frame: look for the
        // next SOI from just after this frame's, not from where parsing went astray.
        self.reset_to(self.start + 2);
        Step::Done(Split::Corrupt(why))
    }

    fn step_marker(&mut self) -> Step {
        let b = &self.buf;
        let p = self.pos;
        if p + 2 > b.len() {
            return Step::NeedMore;
        }
        if b[p] != 0xFF {
            return self.corrupt_here(format!("expected a JPEG marker, found byte {:#04x}", b[p]));
        }
        let m = b[p + 1];
        match m {
            // Fill bytes before a marker.
            0xFF => {
                self.pos += 1;
                Step::Continue
            }
            0xD8 => {
                let len = p - self.start;
                self.buf.drain(..p);
                self.start = 0;
                self.pos = 2;
                Step::Done(Split::Corrupt(format!(
                    "frame cut short after {len} bytes by the next frame"
                )))
            }
            0xD9 => {
                let frame: Vec<u8> = self.buf[self.start..p + 2].to_vec();
                self.reset_to(p + 2);
                Step::Done(Split::Frame(frame))
            }
            0x01 | 0xD0..=0xD7 => {
                self.pos += 2;
                Step::Continue
            }
            0x00 => self.corrupt_here("invalid JPEG marker FF 00".into()),
            _ => {
                if p + 4 > b.len() {
                    return Step::NeedMore;
                }
                let seg = u16::from_be_bytes([b[p + 2], b[p + 3]]) as usize;
                if seg < 2 {
                    return self.corrupt_here(format!("JPEG segment length {seg} is too short"));
                }
                if p + 2 + seg > b.len() {
                    return Step::NeedMore;
                }
                self.pos = p + 2 + seg;
                if m == 0xDA {
                    self.state = State::Entropy;
                }
                Step::Continue
            }
        }
    }

    fn step_entropy(&mut self) -> Step {
        let b = &self.buf;
        let mut p = self.pos;
        while p + 1 < b.len() {
            if b[p] == 0xFF {
                let n = b[p + 1];
                // FF 00 is a stuffed data byte, FF D0..D7 restart markers, FF FF fill.
                if n != 0x00 && !(0xD0..=0xD7).contains(&n) && n != 0xFF {
                    self.pos = p;
                    self.state = State::Marker;
                    return Step::Continue;
                }
                p += if n == 0xFF { 1 } else { 2 };
            } else {
                p += 1;
            }
        }
        self.pos = p;
        Step::NeedMore
    }
}

enum Step {
    NeedMore,
    Continue,
    Done(Split),
}

fn find_soi(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == [0xFF, 0xD8])
}

/// `jpeg` with the standard Huffman tables (ITU-T T.81 Annex K.3) inserted before its first
/// SOS when it has none, as UVC cameras that send "MJPEG without DHT" expect of the decoder.
/// JPEGs that have tables, or that cannot be parsed, are returned as they are.
pub fn with_huffman_tables(jpeg: &[u8]) -> Cow<'_, [u8]> {
    let Some(sos) = first_sos_without_dht(jpeg) else {
        return Cow::Borrowed(jpeg);
    };
    let mut out = Vec::with_capacity(jpeg.len() + 432);
    out.extend_from_slice(&jpeg[..sos]);
    append_standard_dht(&mut out);
    out.extend_from_slice(&jpeg[sos..]);
    Cow::Owned(out)
}

/// Offset of the first SOS marker when no DHT segment comes before it.
fn first_sos_without_dht(jpeg: &[u8]) -> Option<usize> {
    if !jpeg.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    let mut p = 2;
    while p + 4 <= jpeg.len() {
        if jpeg[p] != 0xFF {
            return None;
        }
        match jpeg[p + 1] {
            0xFF => p += 1,
            0xC4 => return None,
            0xDA => return Some(p),
            0x01 | 0xD0..=0xD7 => p += 2,
            _ => p += 2 + u16::from_be_bytes([jpeg[p + 2], jpeg[p + 3]]) as usize,
        }
    }
    None
}

/// (class/id byte, code counts per length 1..=16, symbols) of the four Annex K tables.
const STANDARD_TABLES: [(u8, [u8; 16], &[u8]); 4] = [
    (
        0x00,
        [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
        &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
    ),
    (
        0x10,
        [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d],
        &[
            0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51,
            0x61, 0x07, 0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1,
            0x15, 0x52, 0xd1, 0xf0, 0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0a, 0x16, 0x17, 0x18,
            0x19, 0x1a, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39,
            0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57,
            0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75,
            0x76, 0x77, 0x78, 0x79, 0x7a, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92,
            0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7,
            0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3,
            0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8,
            0xd9, 0xda, 0xe1, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf1, 0xf2,
            0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
        ],
    ),
    (
        0x01,
        [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
        &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
    ),
    (
        0x11,
        [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77],
        &[
            0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07,
            0x61, 0x71, 0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09,
            0x23, 0x33, 0x52, 0xf0, 0x15, 0x62, 0x72, 0xd1, 0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25,
            0xf1, 0x17, 0x18, 0x19, 0x1a, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x35, 0x36, 0x37, 0x38,
            0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56,
            0x57, 0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74,
            0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89,
            0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5,
            0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba,
            0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6,
            0xd7, 0xd8, 0xd9, 0xda, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf2,
            0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
        ],
    ),
];

fn append_standard_dht(out: &mut Vec<u8>) {
    let body: usize = STANDARD_TABLES.iter().map(|(_, _, s)| 17 + s.len()).sum();
    out.extend_from_slice(&[0xFF, 0xC4]);
    out.extend_from_slice(&((body + 2) as u16).to_be_bytes());
    for (class_id, counts, symbols) in STANDARD_TABLES {
        out.push(class_id);
        out.extend_from_slice(&counts);
        out.extend_from_slice(symbols);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(entropy: &[u8]) -> Vec<u8> {
        let mut v = vec![0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x06, 0xFF, 0xD9, 0xAA, 0xBB];
        v.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x02]);
        v.extend_from_slice(entropy);
        v.extend_from_slice(&[0xFF, 0xD9]);
        v
    }

    fn split_all(stream: &[u8], chunk: usize) -> Vec<Split> {
        let mut s = Splitter::new(1 << 16);
        let mut out = vec![];
        for c in stream.chunks(chunk) {
            s.push(c);
            while let Some(x) = s.pop() {
                out.push(x);
            }
        }
        out.extend(s.finish());
        out
    }

    #[test]
    fn tables_are_consistent() {
        for (_, counts, symbols) in STANDARD_TABLES {
            assert_eq!(
                counts.iter().map(|&c| c as usize).sum::<usize>(),
                symbols.len()
            );
        }
    }

    #[test]
    fn eoi_inside_a_segment_or_stuffed_data_does_not_end_the_frame() {
        let a = jpeg(&[0x12, 0xFF, 0x00, 0xFF, 0xD3, 0x34]);
        let b = jpeg(&[0x56]);
        let stream = [a.clone(), b.clone()].concat();
        for chunk in [1, 3, 7, stream.len()] {
            assert_eq!(
                split_all(&stream, chunk),
                vec![Split::Frame(a.clone()), Split::Frame(b.clone())],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn garbage_truncation_and_oversize_are_reported() {
        let a = jpeg(&[0x12]);
        let cut = &a[..a.len() - 3];
        let stream = [&b"junk"[..], cut, &a, &a[..6]].concat();
        let out = split_all(&stream, 5);
        assert!(matches!(out[0], Split::Corrupt(_)));
        assert!(matches!(&out[1], Split::Corrupt(m) if m.contains("cut short")));
        assert_eq!(out[2], Split::Frame(a.clone()));
        assert!(matches!(&out[3], Split::Corrupt(m) if m.contains("stream ended")));
        assert_eq!(out.len(), 4);

        let mut s = Splitter::new(64);
        s.push(&[0xFF, 0xD8, 0xFF, 0xDA, 0x00, 0x02]);
        s.push(&[0x11; 100]);
        assert!(matches!(s.pop(), Some(Split::Corrupt(m)) if m.contains("limit")));
        assert!(s.pending() < 64);
    }

    #[test]
    fn a_frame_cut_inside_a_segment_does_not_swallow_the_next() {
        let a = jpeg(&[0x12]);
        // Cut inside the APP1 segment: its length runs into the next frame.
        let stream = [&a[..7], &a[..]].concat();
        let out = split_all(&stream, 3);
        assert!(matches!(out[0], Split::Corrupt(_)), "{out:?}");
        assert_eq!(out.last(), Some(&Split::Frame(a.clone())), "{out:?}");
    }

    #[test]
    fn dht_is_inserted_only_when_missing() {
        let a = jpeg(&[0x12]);
        let fixed = with_huffman_tables(&a);
        assert!(matches!(fixed, Cow::Owned(_)));
        assert_eq!(first_sos_without_dht(&fixed), None);
        assert!(matches!(with_huffman_tables(&fixed), Cow::Borrowed(_)));
        assert_eq!(fixed.len(), a.len() + 4 + 4 * 17 + 12 + 162 + 12 + 162);
    }
}
