//! Media sources for the native client: synthetic audio and video shaped like real encoder
//! output, and readers for IVF (VP8, VP9, AV1) and Ogg Opus files.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;

use crate::wire::AudioLevel;

/// Deterministic payload bytes for frame `seq` of a synthetic track, so that a receiver
/// can check what it got byte for byte.
pub fn synthetic_payload(seq: u64, len: usize) -> Bytes {
    let seed = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (0..len)
        .map(|i| (seed.rotate_left((i % 64) as u32) as u8) ^ (i as u8))
        .collect::<Vec<u8>>()
        .into()
}

/// One encoded frame from a source.
#[derive(Debug, Clone)]
pub struct SourceFrame {
    pub keyframe: bool,
    pub payload: Bytes,
    /// Time until the next frame.
    pub duration: Duration,
}

/// Something that yields encoded frames forever (files loop).
pub trait MediaSource: Send {
    /// The codec string to announce in `produce`.
    fn codec(&self) -> &str;
    fn next_frame(&mut self, seq: u64) -> SourceFrame;
    /// Make the next frame a keyframe, if the source can (files cannot).
    fn force_keyframe(&mut self) {}
    /// The bitrate the source encodes at now, if it can change it (files cannot).
    fn target_bitrate(&self) -> Option<u64> {
        None
    }
    /// Encode at about this many bits per second from now on, if the source can.
    fn set_target_bitrate(&mut self, _bps: u64) {}
    /// How loud frame `seq` is (audio that knows its level; others send none).
    fn audio_level(&self, _seq: u64) -> Option<AudioLevel> {
        None
    }
}

/// A scripted loudness for synthetic audio, looping: `2s:20,3s:127` is two seconds at
/// -20 dBov, then three of silence. (Synthetic frames carry no PCM to measure.)
#[derive(Debug, Clone, PartialEq)]
pub struct SpeechScript(pub Vec<(Duration, u8)>);

impl std::str::FromStr for SpeechScript {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let segments = s
            .split(',')
            .map(|segment| {
                let (length, level) = segment.trim().split_once(':').ok_or_else(|| {
                    format!("expected DURATION:LEVEL, e.g. 2s:20, not {segment:?}")
                })?;
                let length = humantime::parse_duration(length.trim())
                    .map_err(|e| format!("{length:?}: {e}"))?;
                let level: u8 =
                    level
                        .trim()
                        .parse()
                        .ok()
                        .filter(|l| *l <= 127)
                        .ok_or_else(|| {
                            format!("a level is 0 (loudest) to 127 (silence), not {level:?}")
                        })?;
                if length.is_zero() {
                    return Err("a segment lasts more than 0 s".into());
                }
                Ok((length, level))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(SpeechScript(segments))
    }
}

impl SpeechScript {
    /// The level at `at` since the start (the script loops).
    pub fn level_at(&self, at: Duration) -> u8 {
        let period: Duration = self.0.iter().map(|s| s.0).sum();
        if period.is_zero() {
            return 127;
        }
        let mut t = Duration::from_nanos((at.as_nanos() % period.as_nanos()) as u64);
        for (length, level) in &self.0 {
            if t < *length {
                return *level;
            }
            t -= *length;
        }
        127
    }
}

/// An audio source with a scripted level on every frame.
pub struct Speaking {
    pub inner: Box<dyn MediaSource>,
    pub script: SpeechScript,
    pub frame: Duration,
}

impl MediaSource for Speaking {
    fn codec(&self) -> &str {
        self.inner.codec()
    }

    fn next_frame(&mut self, seq: u64) -> SourceFrame {
        self.inner.next_frame(seq)
    }

    fn audio_level(&self, seq: u64) -> Option<AudioLevel> {
        Some(AudioLevel {
            level: self.script.level_at(self.frame * seq as u32),
            voice: false,
        })
    }
}

/// Video of a set bitrate and frame rate, keyframes every `keyframe_interval` about ten
/// times the size of a delta frame, sizes varying ±10% as an encoder's do.
pub struct SyntheticVideo {
    fps: u32,
    keyframe_every: u64,
    bitrate_bps: u64,
    delta_size: usize,
    since_keyframe: u64,
    forced: bool,
    /// A simulcast layer's encoder marks its frames: the first payload byte is the layer
    /// (so that a receiver can tell which layer it got).
    mark: Option<u8>,
}

impl SyntheticVideo {
    /// One layer of a synthetic simulcast source: its frames' first byte is `layer`.
    pub fn layer(layer: u8, bitrate_bps: u64, fps: u32, keyframe_interval: Duration) -> Self {
        Self {
            mark: Some(layer),
            ..Self::new(bitrate_bps, fps, keyframe_interval)
        }
    }

    pub fn new(bitrate_bps: u64, fps: u32, keyframe_interval: Duration) -> Self {
        let fps = fps.max(1);
        let keyframe_every =
            ((keyframe_interval.as_secs_f64() * f64::from(fps)).round() as u64).max(1);
        let mut video = Self {
            fps,
            keyframe_every,
            bitrate_bps,
            delta_size: 0,
            since_keyframe: 0,
            forced: true,
            mark: None,
        };
        video.set_target_bitrate(bitrate_bps);
        video
    }
}

/// ±10% size variation, deterministic in `seq`.
fn jitter(size: usize, seq: u64) -> usize {
    let wobble = (seq.wrapping_mul(2_654_435_761) % 21) as i64 - 10; // -10..=10 percent
    (size as i64 + size as i64 * wobble / 100).max(1) as usize
}

impl MediaSource for SyntheticVideo {
    fn codec(&self) -> &str {
        "vp8"
    }

    fn next_frame(&mut self, seq: u64) -> SourceFrame {
        let keyframe = self.forced || self.since_keyframe >= self.keyframe_every;
        if keyframe {
            self.forced = false;
            self.since_keyframe = 0;
        }
        self.since_keyframe += 1;
        let size = jitter(self.delta_size * if keyframe { 10 } else { 1 }, seq);
        let payload = match self.mark {
            Some(layer) => {
                let mut bytes = synthetic_payload(seq, size).to_vec();
                bytes[0] = layer;
                bytes.into()
            }
            None => synthetic_payload(seq, size),
        };
        SourceFrame {
            keyframe,
            payload,
            duration: Duration::from_secs(1) / self.fps,
        }
    }

    fn force_keyframe(&mut self) {
        self.forced = true;
    }

    fn target_bitrate(&self) -> Option<u64> {
        Some(self.bitrate_bps)
    }

    fn set_target_bitrate(&mut self, bps: u64) {
        // One group carries bitrate × interval bits: one keyframe (10 units) and
        // keyframe_every − 1 deltas (1 unit each).
        self.bitrate_bps = bps;
        let group_bytes = bps as f64 / 8.0 * self.keyframe_every as f64 / f64::from(self.fps);
        let units = 10.0 + (self.keyframe_every as f64 - 1.0);
        self.delta_size = (group_bytes / units).max(16.0) as usize;
    }
}

/// Opus-sized audio: 20 ms frames of about `bitrate`/50 bytes.
pub struct SyntheticAudio {
    frame_size: usize,
    interval: Duration,
}

impl SyntheticAudio {
    pub fn new(bitrate_bps: u64) -> Self {
        Self::with_interval(bitrate_bps, Duration::from_millis(20))
    }

    /// Frames every `interval` (Opus allows 2.5 to 120 ms; longer only thins a load test),
    /// each sized so that the bitrate holds, up to 1,000 bytes: a frame is one datagram,
    /// which must fit the path (1,200 bytes with headers, ±10% size jitter).
    pub fn with_interval(bitrate_bps: u64, interval: Duration) -> Self {
        let interval = interval.max(Duration::from_millis(1));
        let size = (bitrate_bps as f64 / 8.0 * interval.as_secs_f64()) as usize;
        Self {
            frame_size: size.clamp(8, 1000),
            interval,
        }
    }
}

impl MediaSource for SyntheticAudio {
    fn codec(&self) -> &str {
        "opus"
    }

    fn next_frame(&mut self, seq: u64) -> SourceFrame {
        SourceFrame {
            keyframe: false,
            payload: synthetic_payload(seq, jitter(self.frame_size, seq)),
            duration: self.interval,
        }
    }
}

/// Frames of an IVF file, looped.
pub struct IvfFile {
    codec: &'static str,
    frames: Vec<(bool, Bytes)>,
    frame_duration: Duration,
    next: usize,
}

impl IvfFile {
    pub fn open(path: &Path) -> Result<Self> {
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&data).with_context(|| format!("parsing IVF file {}", path.display()))
    }

    pub fn parse(data: &[u8]) -> Result<Self> {
        if data.len() < 32 || &data[0..4] != b"DKIF" {
            bail!("not an IVF file (no DKIF signature)");
        }
        let header_len = u16::from_le_bytes([data[6], data[7]]) as usize;
        let fourcc = &data[8..12];
        let rate = u32::from_le_bytes(data[16..20].try_into().expect("4 bytes"));
        let scale = u32::from_le_bytes(data[20..24].try_into().expect("4 bytes"));
        let (codec, is_key): (&'static str, fn(&[u8]) -> bool) = match fourcc {
            b"VP80" => ("vp8", vp8_is_keyframe),
            b"VP90" => ("vp09.00.10.08", vp9_is_keyframe),
            b"AV01" => ("av01.0.04M.08", av1_is_keyframe),
            other => bail!("unsupported IVF codec {:?}", String::from_utf8_lossy(other)),
        };
        let fps = if rate > 0 && scale > 0 {
            f64::from(rate) / f64::from(scale)
        } else {
            30.0
        };
        let mut frames = Vec::new();
        let mut pos = header_len.max(32);
        while pos + 12 <= data.len() {
            let size = u32::from_le_bytes(data[pos..pos + 4].try_into().expect("4 bytes")) as usize;
            pos += 12;
            let Some(frame) = data.get(pos..pos + size) else {
                break; // a truncated last frame is left out
            };
            frames.push((is_key(frame), Bytes::copy_from_slice(frame)));
            pos += size;
        }
        if frames.is_empty() {
            bail!("the IVF file holds no frames");
        }
        if !frames[0].0 {
            bail!("the IVF file does not start with a keyframe");
        }
        Ok(Self {
            codec,
            frames,
            frame_duration: Duration::from_secs_f64(1.0 / fps.clamp(1.0, 240.0)),
            next: 0,
        })
    }
}

fn vp8_is_keyframe(frame: &[u8]) -> bool {
    frame.first().is_some_and(|b| b & 1 == 0)
}

/// VP9 uncompressed header: frame_marker(2) profile(2, +1 reserved bit for profile 3)
/// show_existing_frame(1) frame_type(1, 0 = key).
fn vp9_is_keyframe(frame: &[u8]) -> bool {
    let Some(&b) = frame.first() else {
        return false;
    };
    if b >> 6 != 0b10 {
        return false;
    }
    let profile = ((b >> 5) & 1) | (((b >> 4) & 1) << 1);
    let mut bit = 4; // bits consumed so far
    if profile == 3 {
        bit += 1;
    }
    let read = |i: usize| frame.get(i / 8).map(|byte| (byte >> (7 - i % 8)) & 1);
    if read(bit) != Some(0) {
        return false; // show_existing_frame
    }
    read(bit + 1) == Some(0)
}

/// An AV1 temporal unit that carries a sequence header starts a new coded video sequence,
/// which is how encoders emit keyframes in IVF.
fn av1_is_keyframe(frame: &[u8]) -> bool {
    let mut pos = 0;
    while let Some(&header) = frame.get(pos) {
        let obu_type = (header >> 3) & 0x0f;
        let has_extension = header & 0x04 != 0;
        let has_size = header & 0x02 != 0;
        if obu_type == 1 {
            return true;
        }
        pos += 1 + usize::from(has_extension);
        if !has_size {
            return false;
        }
        let mut size = 0usize;
        for i in 0..8 {
            let Some(&b) = frame.get(pos) else {
                return false;
            };
            pos += 1;
            size |= usize::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                break;
            }
        }
        pos += size;
    }
    false
}

impl MediaSource for IvfFile {
    fn codec(&self) -> &str {
        self.codec
    }

    fn next_frame(&mut self, _seq: u64) -> SourceFrame {
        let (keyframe, payload) = self.frames[self.next].clone();
        self.next = (self.next + 1) % self.frames.len();
        SourceFrame {
            keyframe,
            payload,
            duration: self.frame_duration,
        }
    }
}

/// Opus packets of an Ogg Opus file, looped.
pub struct OggOpusFile {
    packets: Vec<(Bytes, Duration)>,
    next: usize,
}

impl OggOpusFile {
    pub fn open(path: &Path) -> Result<Self> {
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&data).with_context(|| format!("parsing Ogg Opus file {}", path.display()))
    }

    pub fn parse(data: &[u8]) -> Result<Self> {
        let mut packets = Vec::new();
        let mut partial = Vec::new();
        let mut pos = 0;
        while pos + 27 <= data.len() {
            if &data[pos..pos + 4] != b"OggS" {
                bail!("lost Ogg page sync at byte {pos}");
            }
            let segments = data[pos + 26] as usize;
            let table = data
                .get(pos + 27..pos + 27 + segments)
                .context("truncated Ogg page")?;
            let mut body = pos + 27 + segments;
            for &lace in table {
                let chunk = data
                    .get(body..body + lace as usize)
                    .context("truncated Ogg page")?;
                partial.extend_from_slice(chunk);
                body += lace as usize;
                if lace < 255 {
                    packets.push(std::mem::take(&mut partial));
                }
            }
            pos = body;
        }
        let mut packets = packets.into_iter();
        match packets.next() {
            Some(head) if head.starts_with(b"OpusHead") => {}
            _ => bail!("not an Ogg Opus file (no OpusHead)"),
        }
        let _tags = packets.next();
        let packets: Vec<(Bytes, Duration)> = packets
            .filter(|p| !p.is_empty())
            .map(|p| {
                let duration = opus_packet_duration(&p);
                (Bytes::from(p), duration)
            })
            .collect();
        if packets.is_empty() {
            bail!("the Ogg Opus file holds no audio packets");
        }
        Ok(Self { packets, next: 0 })
    }
}

/// Duration of an Opus packet from its TOC byte (RFC 6716 §3.1).
fn opus_packet_duration(packet: &[u8]) -> Duration {
    let toc = packet[0];
    let config = toc >> 3;
    let frame_us: u64 = match config {
        0..=11 => [10_000, 20_000, 40_000, 60_000][usize::from(config % 4)],
        12..=15 => [10_000, 20_000][usize::from(config % 2)],
        _ => [2_500, 5_000, 10_000, 20_000][usize::from(config % 4)],
    };
    let frames = match toc & 3 {
        0 => 1,
        1 | 2 => 2,
        _ => packet.get(1).map_or(1, |b| u64::from(b & 0x3f).max(1)),
    };
    Duration::from_micros(frame_us * frames)
}

impl MediaSource for OggOpusFile {
    fn codec(&self) -> &str {
        "opus"
    }

    fn next_frame(&mut self, _seq: u64) -> SourceFrame {
        let (payload, duration) = self.packets[self.next].clone();
        self.next = (self.next + 1) % self.packets.len();
        SourceFrame {
            keyframe: false,
            payload,
            duration,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_video_matches_its_bitrate_and_shape() {
        let mut video = SyntheticVideo::new(1_000_000, 30, Duration::from_secs(2));
        let frames: Vec<SourceFrame> = (0..300).map(|seq| video.next_frame(seq)).collect();
        let keys: Vec<usize> = (0..300).filter(|i| frames[*i].keyframe).collect();
        assert_eq!(keys, vec![0, 60, 120, 180, 240]);
        let bytes: usize = frames.iter().map(|f| f.payload.len()).sum();
        let bitrate = bytes as f64 * 8.0 / 10.0;
        assert!((900_000.0..1_100_000.0).contains(&bitrate), "{bitrate}");
        let ratio = frames[60].payload.len() as f64 / frames[61].payload.len() as f64;
        assert!((7.0..14.0).contains(&ratio), "keyframe/delta {ratio}");
        video.force_keyframe();
        assert!(video.next_frame(300).keyframe);
    }

    #[test]
    fn ivf_frames_and_keyframes() {
        let mut file =
            b"DKIF\0\0\x20\0VP80\x40\x01\xf0\x00\x1e\0\0\0\x01\0\0\0\x02\0\0\0\0\0\0\0".to_vec();
        for (i, first) in [0x10u8, 0x11].iter().enumerate() {
            file.extend_from_slice(&3u32.to_le_bytes());
            file.extend_from_slice(&(i as u64).to_le_bytes());
            file.extend_from_slice(&[*first, 0xaa, 0xbb]);
        }
        let mut ivf = IvfFile::parse(&file).unwrap();
        assert_eq!(ivf.codec(), "vp8");
        let a = ivf.next_frame(0);
        let b = ivf.next_frame(1);
        assert!(a.keyframe && !b.keyframe);
        assert_eq!(&b.payload[..], &[0x11, 0xaa, 0xbb]);
        assert!(ivf.next_frame(2).keyframe, "loops");
        assert!(IvfFile::parse(b"RIFF").is_err());
    }

    #[test]
    fn ogg_opus_packets() {
        fn page(packets: &[&[u8]]) -> Vec<u8> {
            let mut p = b"OggS\0\0".to_vec();
            p.extend_from_slice(&[0; 20]);
            p.push(packets.len() as u8);
            for packet in packets {
                p.push(packet.len() as u8);
            }
            for packet in packets {
                p.extend_from_slice(packet);
            }
            p
        }
        let mut file = page(&[b"OpusHead\x01\x02"]);
        file.extend(page(&[b"OpusTags"]));
        file.extend(page(&[&[0xfc, 1, 2], &[0xfc, 3]])); // config 31: 20 ms CELT
        let mut ogg = OggOpusFile::parse(&file).unwrap();
        let f = ogg.next_frame(0);
        assert_eq!(&f.payload[..], &[0xfc, 1, 2]);
        assert_eq!(f.duration, Duration::from_millis(20));
        assert!(OggOpusFile::parse(&page(&[b"nope"])).is_err());
    }

    #[test]
    fn vp9_and_av1_keyframe_detection() {
        // frame_marker=10, profile 0, show_existing=0, frame_type=0 (key)
        assert!(vp9_is_keyframe(&[0b1000_0000]));
        assert!(!vp9_is_keyframe(&[0b1000_0100]));
        // Temporal delimiter (type 2, has_size, size 0), then a sequence header (type 1).
        assert!(av1_is_keyframe(&[0x12, 0x00, 0x0a, 0x01, 0x00]));
        assert!(!av1_is_keyframe(&[0x12, 0x00, 0x32, 0x01, 0x00]));
    }
}

#[cfg(test)]
mod speech_tests {
    use super::*;

    #[test]
    fn a_script_loops_and_refuses_nonsense() {
        let script: SpeechScript = "1s:20, 500ms:127".parse().unwrap();
        assert_eq!(script.level_at(Duration::ZERO), 20);
        assert_eq!(script.level_at(Duration::from_millis(1200)), 127);
        assert_eq!(script.level_at(Duration::from_millis(1600)), 20);
        assert!("1s".parse::<SpeechScript>().is_err());
        assert!("1s:200".parse::<SpeechScript>().is_err());
        assert!("0s:20".parse::<SpeechScript>().is_err());
    }
}
