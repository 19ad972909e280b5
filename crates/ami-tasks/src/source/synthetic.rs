//! The synthetic source: plausible detector frames generated from a seed, the embedded default
//! for demos, tests and benchmarks.
//!
//! # Determinism
//!
//! The content of frame `seq` is a pure function of the configuration and `(seed, seq)`: every
//! frame gets its own counter-based generator (splitmix64 of the seed and `seq`, and per field of
//! the field's name), so any partition generates any frame on its own, with no shared generator
//! state. Partition `p` of `P` generates the frames with `seq % P == p`; the union over the
//! partitions is the same stream whatever `P`.
//!
//! # Fields
//!
//! | field | value |
//! |---|---|
//! | scalar `energy` | uniform in `[0, 10)` |
//! | scalar `scan` | `(seq % 1000) / 1000`, a slow sweep of `[0, 1)` |
//! | any other scalar | uniform in `[0, 1)` |
//! | waveform | three Gaussian peaks (the first one's height follows `energy`) on a noisy baseline |
//! | image | a pedestal of 10, a smooth Gaussian blob (height `200 + 80 * energy`) jittering by a few pixels, noise of σ ≈ 3 |
//!
//! Image values are generated in the range and precision of the image's [`Dtype`] (`U16` rounds
//! to integers in `0..=65535`, `F32` rounds through `f32`) and carried as `f64`. Arrays are cheap
//! to make: the blob and a table of Gaussian noise are computed once per source; a frame only
//! scales, shifts and adds (a 512×512 image costs a few hundred microseconds in release builds).
//!
//! # Time stamps and pacing
//!
//! `timestamp_ns = start_ns + seq * round(1e9 / rate)`, with `rate = rate_hz`, or 1000 when
//! `rate_hz` is `None`. With `rate_hz = Some(r)` the source paces to the wall clock: the whole
//! source produces `r` frames per second, split across the partitions, so frame `seq` is not
//! delivered before `start + (seq - first_seq) / r` seconds, where `start` is the first
//! `next_batch` call and `first_seq` the first frame of this run (in the pipeline, of the
//! process's first partition to ask: the partitions share one [`PacingClock`]).
//! `None` is as fast as possible.
//!
//! A *live* stream (`live = true`, with a rate) has Unix time stamps instead: `start_ns` is the
//! Unix time of frame 0, and frame `seq` is delivered once the wall clock reaches its time stamp.
//! A bin then ends at a known wall time, so the time from a bin's last event to its publication
//! can be measured from the results alone (the pipeline benchmark does). Frames whose time has
//! passed (a start in the past, a restart after downtime) are delivered at once, as fast as the
//! source goes, until it has caught up with the clock.
//!
//! With `frames = Some(n)` the stream is the frames `0..n` and then ends; `None` is endless.
//!
//! # Position
//!
//! [`SourcePosition::next_seq`] is the next global sequence number this partition will produce
//! (`offset` is unused). Reopening from a position continues exactly there; a position saved with
//! another partition count continues at the first frame of this partition at or after `next_seq`
//! (the driver converts the positions of another count first, see [`resume`](super::resume)).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{
    check_partition, first_of_partition, Batch, DataSource, FrameSink, PacingClock, SourceError, SourcePosition, SourceStats, Written,
};
use crate::event::{FieldValue, Frame};
use crate::frame_chunk::{FieldShape, FieldSpec};

/// Element type an image is generated in (values are carried as `f64` either way).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Dtype {
    #[default]
    F64,
    F32,
    /// Integers in `0..=65535` (an ADC's counts).
    U16,
}

impl Dtype {
    /// `value` in this type's range and precision.
    pub fn quantize(self, value: f64) -> f64 {
        match self {
            Dtype::F64 => value,
            Dtype::F32 => value as f32 as f64,
            Dtype::U16 => value.round().clamp(0.0, 65535.0),
        }
    }
}

/// A generated waveform.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WaveformSpec {
    pub name: String,
    pub length: usize,
}

/// A generated image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageSpec {
    pub name: String,
    pub width: usize,
    pub height: usize,
    #[serde(default)]
    pub dtype: Dtype,
}

/// Configuration of the synthetic source. Fields missing from JSON take their default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SyntheticConfig {
    pub seed: u64,
    /// Frames per second of the whole source; `None` = as fast as possible.
    pub rate_hz: Option<f64>,
    /// Frames `0..n`, then the end; `None` = endless.
    pub frames: Option<u64>,
    /// Time stamp of frame 0.
    pub start_ns: u64,
    /// With `rate_hz`, pace by the wall clock: time stamps are Unix times and frame `seq` is
    /// delivered once the clock reaches its time stamp (a live stream, whose bins can be timed
    /// from their time stamps). Without it pacing starts at the first `next_batch` call.
    pub live: bool,
    pub scalars: Vec<String>,
    pub waveforms: Vec<WaveformSpec>,
    pub images: Vec<ImageSpec>,
}

impl Default for SyntheticConfig {
    /// Seed 1, 1000 Hz, endless; scalars `energy` and `scan`, waveform `trace` of 256 samples,
    /// image `cspad` of 128×128 `F64`.
    fn default() -> Self {
        SyntheticConfig {
            seed: 1,
            rate_hz: Some(1000.0),
            frames: None,
            start_ns: 0,
            live: false,
            scalars: vec!["energy".into(), "scan".into()],
            waveforms: vec![WaveformSpec {
                name: "trace".into(),
                length: 256,
            }],
            images: vec![ImageSpec {
                name: "cspad".into(),
                width: 128,
                height: 128,
                dtype: Dtype::F64,
            }],
        }
    }
}

impl SyntheticConfig {
    /// The default with the scalars `energy` and `scan` only (no arrays).
    pub fn scalars_only() -> Self {
        SyntheticConfig {
            waveforms: Vec::new(),
            images: Vec::new(),
            ..SyntheticConfig::default()
        }
    }

    /// The default with one `F64` image `cspad` of `width`×`height` and no other array.
    pub fn images(width: usize, height: usize) -> Self {
        SyntheticConfig {
            waveforms: Vec::new(),
            images: vec![ImageSpec {
                name: "cspad".into(),
                width,
                height,
                dtype: Dtype::F64,
            }],
            ..SyntheticConfig::default()
        }
    }

    /// Frames per second the time stamps are spaced for.
    pub fn nominal_rate_hz(&self) -> f64 {
        self.rate_hz.unwrap_or(1000.0)
    }

    fn validate(&self) -> Result<(), SourceError> {
        let bad = |reason: String| Err(SourceError::InvalidConfig(format!("synthetic source: {reason}")));
        if let Some(rate) = self.rate_hz {
            if !(rate.is_finite() && rate > 0.0) {
                return bad(format!("rate_hz must be a positive number, not {rate}"));
            }
        } else if self.live {
            return bad("a live stream needs rate_hz".into());
        }
        const MAX_ELEMENTS: usize = 1 << 28;
        for w in &self.waveforms {
            if w.length > MAX_ELEMENTS {
                return bad(format!("waveform {:?} has {} samples (at most {MAX_ELEMENTS})", w.name, w.length));
            }
        }
        for i in &self.images {
            if i.width.checked_mul(i.height).is_none_or(|n| n > MAX_ELEMENTS) {
                return bad(format!(
                    "image {:?} of {}x{} is too large (at most {MAX_ELEMENTS} pixels)",
                    i.name, i.width, i.height
                ));
            }
        }
        Ok(())
    }
}

/// splitmix64's finalizer: a bijective mix of 64 bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A splitmix64 stream: cheap, and a pure function of its starting key.
struct Rng(u64);

impl Rng {
    const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(Self::GAMMA);
        mix(self.0)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (n > 0): the high half of `x × n` (a multiply, not a division: images
    /// call it once per row). Its bias, like a modulo's, is at most n / 2^64.
    fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
}

/// Key of a field's stream: FNV-1a of its name, mixed.
fn name_key(name: &str) -> u64 {
    mix(name
        .bytes()
        .fold(0xCBF2_9CE4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01B3)))
}

/// Every pixel's pedestal, and the σ of its noise.
const PEDESTAL: f64 = 10.0;
const PIXEL_NOISE: f64 = 3.0;

/// Entries of the noise table.
const NOISE_LEN: usize = 1 << 15;
/// Longest run of consecutive table entries an array takes at once; longer arrays (and every
/// image row) take several runs from random places, so they do not repeat a pattern.
const NOISE_RUN: usize = 4096;

/// `len` (at most [`NOISE_RUN`]) consecutive noise values from a random place of the table:
/// reading them in order is what makes arrays cheap (the loops vectorize).
fn noise_run<'a>(table: &'a [f64], rng: &mut Rng, len: usize) -> &'a [f64] {
    let start = rng.below(NOISE_LEN - len + 1);
    &table[start..start + len]
}

enum ScalarKind {
    Energy,
    Scan,
    Uniform(u64),
}

struct WaveformPlan {
    name: String,
    key: u64,
    length: usize,
    /// One peak's shape, `2 * half + 1` samples.
    kernel: Vec<f64>,
    half: usize,
}

struct ImagePlan {
    name: String,
    key: u64,
    width: usize,
    height: usize,
    dtype: Dtype,
    /// How far the blob jitters, in pixels each way.
    margin: usize,
    /// The blob on a canvas `margin` pixels larger on every side, as its two factors (it is
    /// separable): pixel (x, y) of the canvas is `blob_y[y] * blob_x[x]`. A frame is a window of
    /// the canvas. Kept 1-D so that generating a frame reads a few KiB, not a 2-D canvas as large
    /// as the frame: only the frame's own writes go to memory.
    blob_x: Vec<f64>,
    blob_y: Vec<f64>,
}

/// Makes any frame of a synthetic stream: `frame(seq)` depends on the configuration and `seq`
/// only. Building one precomputes the blobs, peak shapes and the noise table.
pub struct SyntheticGenerator {
    seed_key: u64,
    start_ns: u64,
    period_ns: u64,
    noise: Vec<f64>,
    /// Each pixel's pedestal plus its noise, `PEDESTAL + PIXEL_NOISE × noise`: one table read and
    /// one addition per pixel instead of scaling and adding both.
    pixel_floor: Vec<f64>,
    scalars: Vec<(String, ScalarKind)>,
    waveforms: Vec<WaveformPlan>,
    images: Vec<ImagePlan>,
}

/// Frames with at most this many fields are described on the stack when written.
const INLINE_FIELDS: usize = 16;

const ENERGY_KEY: u64 = 0x656E_6572_6779; // "energy"
const NOISE_KEY: u64 = 0x006E_6F69_7365; // "noise"

impl SyntheticGenerator {
    pub fn new(config: &SyntheticConfig) -> Result<Self, SourceError> {
        config.validate()?;
        let seed_key = mix(config.seed);
        // Approximately standard normal: the sum of four uniforms, centred and scaled to σ = 1.
        let mut rng = Rng(seed_key ^ NOISE_KEY);
        let noise: Vec<f64> = (0..NOISE_LEN)
            .map(|_| ((0..4).map(|_| rng.unit()).sum::<f64>() - 2.0) * 3f64.sqrt())
            .collect();
        let pixel_floor = noise.iter().map(|n| PEDESTAL + PIXEL_NOISE * n).collect();
        let scalars = config
            .scalars
            .iter()
            .map(|name| {
                let kind = match name.as_str() {
                    "energy" => ScalarKind::Energy,
                    "scan" => ScalarKind::Scan,
                    _ => ScalarKind::Uniform(name_key(name)),
                };
                (name.clone(), kind)
            })
            .collect();
        let waveforms = config
            .waveforms
            .iter()
            .map(|w| {
                let sigma = (w.length as f64 / 64.0).max(1.0);
                let half = (4.0 * sigma).ceil() as usize;
                let kernel = (0..=2 * half).map(|i| gaussian(i as f64 - half as f64, sigma)).collect();
                WaveformPlan {
                    name: w.name.clone(),
                    key: name_key(&w.name),
                    length: w.length,
                    kernel,
                    half,
                }
            })
            .collect();
        let images = config
            .images
            .iter()
            .map(|i| {
                let margin = (i.width.min(i.height) / 16).max(1);
                let (canvas_width, canvas_height) = (i.width + 2 * margin, i.height + 2 * margin);
                let sigma = (i.width.min(i.height) as f64 / 6.0).max(1.0);
                // The blob is separable: a product of two 1-D Gaussians, no per-pixel exp.
                let blob_x = (0..canvas_width)
                    .map(|x| gaussian(x as f64 - canvas_width as f64 / 2.0, sigma))
                    .collect();
                let blob_y = (0..canvas_height)
                    .map(|y| gaussian(y as f64 - canvas_height as f64 / 2.0, sigma))
                    .collect();
                ImagePlan {
                    name: i.name.clone(),
                    key: name_key(&i.name),
                    width: i.width,
                    height: i.height,
                    dtype: i.dtype,
                    margin,
                    blob_x,
                    blob_y,
                }
            })
            .collect();
        Ok(SyntheticGenerator {
            seed_key,
            start_ns: config.start_ns,
            period_ns: (1e9 / config.nominal_rate_hz()).round() as u64,
            noise,
            pixel_floor,
            scalars,
            waveforms,
            images,
        })
    }

    /// Time stamp of frame `seq`.
    pub fn timestamp_ns(&self, seq: u64) -> u64 {
        self.start_ns.saturating_add(seq.saturating_mul(self.period_ns))
    }

    /// Frame `seq` of the stream.
    pub fn frame(&self, seq: u64) -> Frame {
        let (frame_key, energy) = self.keys(seq);
        let mut fields = Vec::with_capacity(self.scalars.len() + self.waveforms.len() + self.images.len());
        for (name, kind) in &self.scalars {
            fields.push((name.clone(), FieldValue::Scalar(self.scalar(kind, seq, frame_key, energy))));
        }
        for plan in &self.waveforms {
            let mut samples = vec![0.0; plan.length];
            self.waveform(plan, frame_key, energy, &mut samples);
            fields.push((plan.name.clone(), FieldValue::Waveform(samples)));
        }
        for plan in &self.images {
            let mut pixels = vec![0.0; plan.width * plan.height];
            self.image(plan, frame_key, energy, &mut pixels, false);
            fields.push((
                plan.name.clone(),
                FieldValue::Image {
                    width: plan.width as u32,
                    height: plan.height as u32,
                    pixels,
                },
            ));
        }
        Frame {
            seq,
            timestamp_ns: self.timestamp_ns(seq),
            fields,
        }
    }

    /// Writes frame `seq` (the same values as [`frame`](Self::frame)) straight into `sink`.
    pub fn write_frame(&self, seq: u64, sink: &mut dyn FrameSink) -> Result<(), SourceError> {
        let (frame_key, energy) = self.keys(seq);
        let scalars = self.scalars.iter().map(|(name, kind)| FieldSpec {
            name,
            shape: FieldShape::Scalar(self.scalar(kind, seq, frame_key, energy)),
        });
        let waveforms = self.waveforms.iter().map(|plan| FieldSpec {
            name: &plan.name,
            shape: FieldShape::Waveform { len: plan.length },
        });
        let images = self.images.iter().map(|plan| FieldSpec {
            name: &plan.name,
            shape: FieldShape::Image {
                width: plan.width as u32,
                height: plan.height as u32,
            },
        });
        // On the stack for the usual few fields: no allocation per frame.
        let mut inline = [FieldSpec {
            name: "",
            shape: FieldShape::Scalar(0.0),
        }; INLINE_FIELDS];
        let mut heap = Vec::new();
        let count = self.scalars.len() + self.waveforms.len() + self.images.len();
        let specs: &[FieldSpec<'_>] = if count <= INLINE_FIELDS {
            inline
                .iter_mut()
                .zip(scalars.chain(waveforms).chain(images))
                .for_each(|(slot, spec)| *slot = spec);
            &inline[..count]
        } else {
            heap.extend(scalars.chain(waveforms).chain(images));
            &heap
        };
        let streaming = sink.streaming();
        let mut out = sink.frame(seq, self.timestamp_ns(seq), specs)?;
        let first_array = self.scalars.len();
        for (k, plan) in self.waveforms.iter().enumerate() {
            self.waveform(plan, frame_key, energy, out.array(first_array + k));
        }
        let first_image = first_array + self.waveforms.len();
        for (k, plan) in self.images.iter().enumerate() {
            self.image(plan, frame_key, energy, out.array(first_image + k), streaming);
        }
        Ok(())
    }

    /// Frame `seq`'s generator key and energy.
    fn keys(&self, seq: u64) -> (u64, f64) {
        let frame_key = mix(self.seed_key ^ seq);
        (frame_key, 10.0 * Rng(frame_key ^ ENERGY_KEY).unit())
    }

    fn scalar(&self, kind: &ScalarKind, seq: u64, frame_key: u64, energy: f64) -> f64 {
        match kind {
            ScalarKind::Energy => energy,
            ScalarKind::Scan => (seq % 1000) as f64 / 1000.0,
            ScalarKind::Uniform(key) => Rng(frame_key ^ key).unit(),
        }
    }

    /// Fills `out` (`plan.length` samples).
    fn waveform(&self, plan: &WaveformPlan, frame_key: u64, energy: f64, out: &mut [f64]) {
        let mut rng = Rng(frame_key ^ plan.key);
        for chunk in out.chunks_mut(NOISE_RUN) {
            let noise = noise_run(&self.noise, &mut rng, chunk.len());
            for (v, n) in chunk.iter_mut().zip(noise) {
                *v = 0.02 * n;
            }
        }
        if plan.length == 0 {
            return;
        }
        for peak in 0..3 {
            let centre = plan.length / 8 + rng.below(plan.length * 3 / 4 + 1);
            let height = if peak == 0 { 0.05 + 0.1 * energy } else { 0.2 + 0.6 * rng.unit() };
            // Sample `centre + k - half` gets kernel[k]; clip to the waveform.
            let first = centre.saturating_sub(plan.half);
            let last = (centre + plan.half).min(plan.length - 1);
            for (i, v) in out.iter_mut().enumerate().take(last + 1).skip(first) {
                *v += height * plan.kernel[i + plan.half - centre];
            }
        }
    }

    /// Fills `out` (`plan.width × plan.height` pixels), with streaming stores when `streaming`.
    fn image(&self, plan: &ImagePlan, frame_key: u64, energy: f64, out: &mut [f64], streaming: bool) {
        let mut rng = Rng(frame_key ^ plan.key);
        let (dx, dy) = (rng.below(2 * plan.margin + 1), rng.below(2 * plan.margin + 1));
        // The blob's window at the shift: pixel (x, y) of the blob is `blob.1[y] * blob.0[x]`.
        let blob = (&plan.blob_x[dx..dx + plan.width], &plan.blob_y[dy..dy + plan.height]);
        let height = 200.0 + 80.0 * energy;
        let out = &mut out[..plan.width * plan.height];
        // One loop per type so the rounding is inlined, not matched per pixel.
        match plan.dtype {
            Dtype::F64 => self.fill_image(blob, &mut rng, height, |v| v, out, streaming),
            Dtype::F32 => self.fill_image(blob, &mut rng, height, |v| Dtype::F32.quantize(v), out, streaming),
            Dtype::U16 => self.fill_image(blob, &mut rng, height, |v| Dtype::U16.quantize(v), out, streaming),
        }
    }

    /// Pedestal + `blob` scaled to `height` + noise, rounded by `quantize`, row by row.
    fn fill_image(
        &self,
        (blob_x, blob_y): (&[f64], &[f64]),
        rng: &mut Rng,
        height: f64,
        quantize: impl Fn(f64) -> f64,
        out: &mut [f64],
        streaming: bool,
    ) {
        let mut fill_row = |y: usize, row: &mut [f64]| {
            let row_height = height * blob_y[y];
            for (pixels, blobs) in row.chunks_mut(NOISE_RUN).zip(blob_x.chunks(NOISE_RUN)) {
                let floor = noise_run(&self.pixel_floor, rng, blobs.len());
                // Four pixels an instruction where the CPU can: pixels are most of a source's work.
                legion_bridge::simd::with_avx2(|| {
                    for ((p, blob), f) in pixels.iter_mut().zip(blobs).zip(floor) {
                        *p = quantize(row_height * blob + f);
                    }
                });
            }
        };
        if streaming {
            // Row by row through a cache-resident scratch row, then to memory past the caches.
            legion_bridge::streaming::fill_streaming(out, blob_x.len(), fill_row);
        } else {
            for (y, row) in out.chunks_exact_mut(blob_x.len()).enumerate() {
                fill_row(y, row);
            }
        }
    }
}

fn gaussian(x: f64, sigma: f64) -> f64 {
    (-x * x / (2.0 * sigma * sigma)).exp()
}

/// How many frames a source makes between two looks at the clock for its timeout: it may overrun
/// the timeout by the time of that many frames less one (under 1 ms for 512×512 images).
const CLOCK_EVERY: usize = 16;

/// Generated frames for one partition (see the [module docs](self)).
pub struct SyntheticDataSource {
    generator: SyntheticGenerator,
    partitions: u64,
    rate_hz: Option<f64>,
    live: bool,
    limit: Option<u64>,
    next_seq: u64,
    /// When `next_batch` was first called, and the first frame then: the pacing reference,
    /// shared with the stream's other partitions once the pipeline asks
    /// ([`DataSource::share_pacing`]).
    clock: PacingClock,
    delivered: u64,
    /// How late the newest frame of the last batch was ([`SourceStats::behind_ms`]).
    behind: Option<Duration>,
}

impl SyntheticDataSource {
    /// Opens partition `partition` of `partitions`, continuing from `from` when given.
    pub fn open(config: &SyntheticConfig, partition: usize, partitions: usize, from: Option<&SourcePosition>) -> Result<Self, SourceError> {
        check_partition(partition, partitions)?;
        let generator = SyntheticGenerator::new(config)?;
        let next_seq = first_of_partition(from.map_or(0, |f| f.next_seq), partition as u64, partitions as u64);
        Ok(SyntheticDataSource {
            generator,
            partitions: partitions as u64,
            rate_hz: config.rate_hz,
            live: config.live,
            limit: config.frames,
            next_seq,
            clock: PacingClock::default(),
            delivered: 0,
            behind: None,
        })
    }

    /// The generator (to make any frame of the stream).
    pub fn generator(&self) -> &SyntheticGenerator {
        &self.generator
    }

    fn exhausted(&self) -> bool {
        self.limit.is_some_and(|limit| self.next_seq >= limit)
    }
}

impl SyntheticDataSource {
    /// Makes up to `max` frames with `emit` (pacing to the rate, within `timeout`); returns
    /// how many and the largest time stamp.
    fn produce(
        &mut self,
        max: usize,
        timeout: Duration,
        mut emit: impl FnMut(&SyntheticGenerator, u64) -> Result<(), SourceError>,
    ) -> Result<Written, SourceError> {
        let begin = Instant::now();
        let deadline = begin.checked_add(timeout).unwrap_or(begin + Duration::from_secs(86_400));
        let next_seq = self.next_seq;
        let started = *self.clock.get_or_init(|| (begin, next_seq));
        let mut written = Written::default();
        while written.frames < max && !self.exhausted() {
            if let Some(Ok(wait)) = self.due_in(self.next_seq, started) {
                let now = Instant::now();
                let due = now + wait;
                if due > now {
                    // Deliver what is ready now rather than hold it back for a fuller batch.
                    if written.frames > 0 {
                        break;
                    }
                    if due > deadline {
                        std::thread::sleep(deadline.saturating_duration_since(now));
                        break;
                    }
                    std::thread::sleep(due - now);
                }
            }
            emit(&self.generator, self.next_seq)?;
            written.frames += 1;
            written.max_timestamp_ns = written.max_timestamp_ns.max(Some(self.generator.timestamp_ns(self.next_seq)));
            self.next_seq = self.next_seq.saturating_add(self.partitions);
            // Making big frames takes time too: do not overrun the timeout. The clock is read every
            // CLOCK_EVERY frames: for a frame of scalars, reading it costs more than making it.
            if written.frames % CLOCK_EVERY == 0 && Instant::now() >= deadline {
                break;
            }
        }
        self.delivered += written.frames as u64;
        written.ended = written.frames == 0 && self.exhausted();
        // Nothing written: the stream had nothing due, so the source is not behind it.
        let newest = (written.frames > 0).then(|| self.next_seq - self.partitions);
        self.behind = match newest.map(|seq| self.due_in(seq, started)) {
            Some(Some(Err(late))) => Some(late),
            _ => self.rate_hz.map(|_| Duration::ZERO),
        };
        Ok(written)
    }

    /// Frame `seq`'s time on a paced stream: `Ok(wait)` until it is due, `Err(late)` once it is.
    /// `None` as fast as possible. A live stream is due when the wall clock reaches the frame's
    /// time stamp; another one at `rate` frames a second from `started` (the clock's instant and
    /// first frame).
    fn due_in(&self, seq: u64, started: (Instant, u64)) -> Option<Result<Duration, Duration>> {
        let rate = self.rate_hz?;
        Some(if self.live {
            let stamp = UNIX_EPOCH + Duration::from_nanos(self.generator.timestamp_ns(seq));
            stamp.duration_since(SystemTime::now()).map_err(|past| past.duration())
        } else {
            let (start, first_seq) = started;
            let due = start + Duration::from_secs_f64(seq.saturating_sub(first_seq) as f64 / rate);
            let now = Instant::now();
            due.checked_duration_since(now).ok_or_else(|| now - due)
        })
    }
}

impl DataSource for SyntheticDataSource {
    fn next_batch(&mut self, max: usize, timeout: Duration) -> Result<Batch, SourceError> {
        let mut frames = Vec::new();
        let written = self.produce(max, timeout, |generator, seq| {
            frames.push(generator.frame(seq));
            Ok(())
        })?;
        Ok(Batch {
            frames,
            ended: written.ended,
        })
    }

    fn write_batch(&mut self, max: usize, timeout: Duration, sink: &mut dyn FrameSink) -> Result<Written, SourceError> {
        self.produce(max, timeout, |generator, seq| generator.write_frame(seq, sink))
    }

    fn share_pacing(&mut self, clock: PacingClock) {
        self.clock = clock;
    }

    fn position(&self) -> SourcePosition {
        SourcePosition {
            next_seq: self.next_seq,
            ..SourcePosition::default()
        }
    }

    fn stats(&self) -> SourceStats {
        SourceStats {
            frames: self.delivered,
            behind_ms: self.behind.map(super::behind_ms),
            ..SourceStats::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unpaced(frames: u64) -> SyntheticConfig {
        SyntheticConfig {
            rate_hz: None,
            frames: Some(frames),
            ..SyntheticConfig::default()
        }
    }

    fn drain(source: &mut dyn DataSource, max: usize) -> Vec<Frame> {
        let mut out = Vec::new();
        loop {
            let batch = source.next_batch(max, Duration::from_secs(5)).unwrap();
            if batch.ended {
                assert!(batch.frames.is_empty(), "ended only on an empty batch");
                return out;
            }
            out.extend(batch.frames);
        }
    }

    fn scalar(frame: &Frame, name: &str) -> f64 {
        match frame.fields.iter().find(|(n, _)| n == name) {
            Some((_, FieldValue::Scalar(v))) => *v,
            other => panic!("no scalar {name}: {other:?}"),
        }
    }

    #[test]
    fn same_seed_same_frames_other_seed_other_frames() {
        let a = SyntheticGenerator::new(&SyntheticConfig::default()).unwrap();
        let b = SyntheticGenerator::new(&SyntheticConfig::default()).unwrap();
        let c = SyntheticGenerator::new(&SyntheticConfig {
            seed: 2,
            ..SyntheticConfig::default()
        })
        .unwrap();
        for seq in [0, 1, 2, 999, 1_000_000] {
            assert_eq!(a.frame(seq), b.frame(seq));
            assert_ne!(a.frame(seq).fields, c.frame(seq).fields);
        }
        assert_ne!(a.frame(3).fields, a.frame(4).fields);
    }

    #[test]
    fn default_shapes_time_stamps_and_bounds() {
        let config = SyntheticConfig {
            start_ns: 5,
            ..SyntheticConfig::default()
        };
        let generator = SyntheticGenerator::new(&config).unwrap();
        for seq in 0..200 {
            let frame = generator.frame(seq);
            assert_eq!(frame.timestamp_ns, 5 + seq * 1_000_000);
            let names: Vec<&str> = frame.fields.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, ["energy", "scan", "trace", "cspad"]);
            let energy = scalar(&frame, "energy");
            assert!((0.0..10.0).contains(&energy), "{energy}");
            assert_eq!(scalar(&frame, "scan"), (seq % 1000) as f64 / 1000.0);
            let FieldValue::Waveform(trace) = &frame.fields[2].1 else {
                panic!("trace")
            };
            assert_eq!(trace.len(), 256);
            assert!(trace.iter().all(|v| v.is_finite() && (-1.0..3.0).contains(v)));
            let FieldValue::Image { width, height, pixels } = &frame.fields[3].1 else {
                panic!("cspad")
            };
            assert_eq!((*width, *height, pixels.len()), (128, 128, 128 * 128));
            let peak = pixels.iter().cloned().fold(f64::MIN, f64::max);
            assert!((150.0..1100.0).contains(&peak), "blob peak {peak}");
            assert!(pixels.iter().all(|v| (-20.0..1100.0).contains(v)));
        }
        let energies: Vec<f64> = (0..1000).map(|s| scalar(&generator.frame(s), "energy")).collect();
        let mean = energies.iter().sum::<f64>() / 1000.0;
        assert!((4.0..6.0).contains(&mean), "mean energy {mean}");
    }

    #[test]
    fn dtypes_round_to_their_type() {
        let images = |dtype| SyntheticConfig {
            images: vec![ImageSpec {
                name: "adc".into(),
                width: 40,
                height: 30,
                dtype,
            }],
            waveforms: Vec::new(),
            ..SyntheticConfig::default()
        };
        let pixels = |dtype| match SyntheticGenerator::new(&images(dtype)).unwrap().frame(7).fields.pop() {
            Some((_, FieldValue::Image { pixels, .. })) => pixels,
            other => panic!("{other:?}"),
        };
        let u16s = pixels(Dtype::U16);
        assert!(u16s.iter().all(|v| v.fract() == 0.0 && (0.0..=65535.0).contains(v)));
        assert!(u16s.iter().any(|v| *v > 100.0));
        let f32s = pixels(Dtype::F32);
        assert!(f32s.iter().all(|v| *v == *v as f32 as f64));
        let f64s = pixels(Dtype::F64);
        assert!(f64s.iter().any(|v| *v != *v as f32 as f64));
        // Same underlying values, only rounded.
        assert!(f64s.iter().zip(&u16s).all(|(a, b)| (a.round().max(0.0) - b).abs() < 1e-9));
        assert_eq!(Dtype::U16.quantize(70_000.0), 65535.0);
        assert_eq!(Dtype::U16.quantize(-3.0), 0.0);
    }

    #[test]
    fn partitions_split_the_same_stream() {
        let config = unpaced(103);
        let mut one = SyntheticDataSource::open(&config, 0, 1, None).unwrap();
        let all = drain(&mut one, 10);
        assert_eq!(all.iter().map(|f| f.seq).collect::<Vec<_>>(), (0..103).collect::<Vec<_>>());
        let mut union = Vec::new();
        for p in 0..4 {
            let mut source = SyntheticDataSource::open(&config, p, 4, None).unwrap();
            let mine = drain(&mut source, 7);
            assert!(mine.iter().all(|f| f.seq % 4 == p as u64));
            assert!(mine.windows(2).all(|w| w[0].seq < w[1].seq));
            assert_eq!(source.stats().frames, mine.len() as u64);
            union.extend(mine);
        }
        union.sort_by_key(|f| f.seq);
        assert_eq!(union, all);
    }

    #[test]
    fn reopening_continues_without_gaps_or_repeats() {
        let config = unpaced(200);
        let mut whole = SyntheticDataSource::open(&config, 1, 3, None).unwrap();
        let expected = drain(&mut whole, 100);
        let mut got = Vec::new();
        let mut position = None;
        // Reopen after every batch, as after a crash.
        loop {
            let mut source = SyntheticDataSource::open(&config, 1, 3, position.as_ref()).unwrap();
            let batch = source.next_batch(9, Duration::from_secs(1)).unwrap();
            if batch.ended {
                break;
            }
            got.extend(batch.frames);
            position = Some(source.position());
        }
        assert_eq!(got, expected);
        // A position saved with another partition count continues at this partition's next frame.
        let source = SyntheticDataSource::open(
            &config,
            1,
            3,
            Some(&SourcePosition {
                next_seq: 11,
                ..SourcePosition::default()
            }),
        )
        .unwrap();
        assert_eq!(source.position().next_seq, 13);
    }

    #[test]
    fn paces_to_the_rate() {
        let config = SyntheticConfig {
            rate_hz: Some(1000.0),
            frames: Some(200),
            ..SyntheticConfig::scalars_only()
        };
        let mut source = SyntheticDataSource::open(&config, 0, 1, None).unwrap();
        let start = Instant::now();
        let frames = drain(&mut source, 64);
        let elapsed = start.elapsed();
        assert_eq!(frames.len(), 200);
        assert!(elapsed >= Duration::from_millis(150), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    }

    #[test]
    fn a_paced_source_says_how_far_behind_its_stream_it_is() {
        let paced = |rate: f64, live: bool| {
            let start_ns = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
            let config = SyntheticConfig {
                rate_hz: Some(rate),
                start_ns,
                live,
                ..SyntheticConfig::scalars_only()
            };
            SyntheticDataSource::open(&config, 0, 1, None).unwrap()
        };
        for live in [false, true] {
            // A million frames a second, taken 10 at a time with a pause: the frames handed over
            // after the pause were due about as long ago as the pause.
            let mut fast = paced(1e6, live);
            assert_eq!(fast.stats().behind_ms, None, "nothing handed over yet");
            // The first batch holds the frames due by then: a few µs' worth, maybe fewer than 10.
            assert!(!fast.next_batch(10, Duration::from_secs(1)).unwrap().frames.is_empty());
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(fast.next_batch(10, Duration::from_secs(1)).unwrap().frames.len(), 10);
            let behind = fast.stats().behind_ms.unwrap();
            assert!((290..3000).contains(&behind), "live {live}: {behind} ms behind");
            // 100 frames a second, taken 10 at a time: the source waits for each frame, so it is
            // not behind.
            let mut slow = paced(100.0, live);
            for _ in 0..3 {
                slow.next_batch(10, Duration::from_secs(1)).unwrap();
                let behind = slow.stats().behind_ms.unwrap();
                assert!(behind < 150, "live {live}: {behind} ms behind a 100 Hz stream");
            }
        }
        // As fast as possible: no clock to be behind.
        let mut unpaced = SyntheticDataSource::open(&unpaced(100), 0, 1, None).unwrap();
        unpaced.next_batch(10, Duration::from_secs(1)).unwrap();
        assert_eq!(unpaced.stats().behind_ms, None);
    }

    #[test]
    fn a_live_stream_delivers_each_frame_once_the_clock_reaches_its_time_stamp() {
        let now_ns = |at: SystemTime| at.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
        let start_ns = now_ns(SystemTime::now()) + 80_000_000;
        let config = SyntheticConfig {
            rate_hz: Some(1000.0),
            frames: Some(60),
            start_ns,
            live: true,
            ..SyntheticConfig::scalars_only()
        };
        let mut source = SyntheticDataSource::open(&config, 0, 1, None).unwrap();
        let mut frames = 0;
        while frames < 60 {
            let batch = source.next_batch(7, Duration::from_secs(1)).unwrap();
            let delivered = now_ns(SystemTime::now());
            for frame in &batch.frames {
                assert!(frame.timestamp_ns <= delivered, "frame {} delivered before its time", frame.seq);
            }
            frames += batch.frames.len();
        }
        // The last frame is due 80 ms + 59 ms after the start was computed.
        assert!(now_ns(SystemTime::now()) >= start_ns + 59_000_000);
        // A live stream needs a rate to be paced at.
        let unpaced = SyntheticConfig { rate_hz: None, ..config };
        assert!(matches!(
            SyntheticDataSource::open(&unpaced, 0, 1, None),
            Err(SourceError::InvalidConfig(_))
        ));
    }

    #[test]
    fn partitions_sharing_a_pacing_clock_keep_one_pace() {
        let config = SyntheticConfig {
            rate_hz: Some(200.0),
            ..SyntheticConfig::scalars_only()
        };
        let clock = PacingClock::default();
        let mut first = SyntheticDataSource::open(&config, 0, 2, None).unwrap();
        first.share_pacing(clock.clone());
        assert_eq!(first.next_batch(10, Duration::from_millis(1)).unwrap().frames.len(), 1);
        // Partition 1 starts 150 ms later: 30 frames of the stream are due by then, its 15 at
        // once (a clock of its own would give it its first frame only, and the rest 10 ms apart).
        std::thread::sleep(Duration::from_millis(150));
        let mut late = SyntheticDataSource::open(&config, 1, 2, None).unwrap();
        late.share_pacing(clock);
        let caught_up = late.next_batch(100, Duration::from_millis(1)).unwrap().frames;
        assert!(caught_up.len() >= 10, "only {} frames due for the late partition", caught_up.len());
        assert!(caught_up.iter().all(|f| f.seq % 2 == 1));
    }

    #[test]
    fn a_slow_rate_returns_empty_batches_within_the_timeout() {
        let config = SyntheticConfig {
            rate_hz: Some(2.0),
            ..SyntheticConfig::scalars_only()
        };
        let mut source = SyntheticDataSource::open(&config, 0, 1, None).unwrap();
        assert_eq!(source.next_batch(10, Duration::from_millis(50)).unwrap().frames.len(), 1);
        let start = Instant::now();
        let batch = source.next_batch(10, Duration::from_millis(50)).unwrap();
        assert_eq!(
            batch,
            Batch {
                frames: Vec::new(),
                ended: false
            }
        );
        assert!(start.elapsed() < Duration::from_millis(400));
    }

    #[test]
    fn a_batch_of_frames_that_take_long_to_make_stops_at_the_timeout() {
        // As fast as possible, 256x256 images (512 KiB each): making 4,000 of them takes far
        // longer than the 1 ms timeout, which ends the batch within a few looks at the clock.
        let config = SyntheticConfig {
            rate_hz: None,
            ..SyntheticConfig::images(256, 256)
        };
        let mut source = SyntheticDataSource::open(&config, 0, 1, None).unwrap();
        let frames = source.next_batch(4_000, Duration::from_millis(1)).unwrap().frames.len();
        assert!(
            frames > 0 && frames < 4_000 && frames % CLOCK_EVERY == 0,
            "{frames} frames in a batch with a 1 ms timeout"
        );
    }

    #[test]
    fn invalid_rate_is_refused() {
        let config = SyntheticConfig {
            rate_hz: Some(0.0),
            ..SyntheticConfig::default()
        };
        assert!(matches!(
            SyntheticDataSource::open(&config, 0, 1, None),
            Err(SourceError::InvalidConfig(_))
        ));
    }

    #[test]
    fn big_images_generate() {
        let generator = SyntheticGenerator::new(&SyntheticConfig::images(512, 512)).unwrap();
        let frame = generator.frame(12);
        let FieldValue::Image { pixels, .. } = &frame.fields[2].1 else {
            panic!("image")
        };
        assert_eq!(pixels.len(), 512 * 512);
        assert_ne!(frame, generator.frame(13));
    }
}
