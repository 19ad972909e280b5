//! `ami2 record` (write a recording from the synthetic source) and `ami2 daq-sim` (a
//! shared-memory producer, standing in for a detector's DAQ).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ami_tasks::source::{self, ShmProducer, SourceConfig, SyntheticConfig, SyntheticGenerator};
use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

/// The synthetic stream both commands produce.
#[derive(Args, Clone)]
pub struct SyntheticArgs {
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Image width and height (0 = no image).
    #[arg(long, default_value_t = 128)]
    image_size: usize,
    /// Waveform length (0 = no waveform).
    #[arg(long, default_value_t = 256)]
    waveform_length: usize,
}

impl SyntheticArgs {
    fn config(&self, frames: Option<u64>, rate_hz: Option<f64>) -> SyntheticConfig {
        let mut config = SyntheticConfig {
            seed: self.seed,
            frames,
            rate_hz,
            ..SyntheticConfig::default()
        };
        config.images.retain(|_| self.image_size > 0);
        for image in &mut config.images {
            image.width = self.image_size;
            image.height = self.image_size;
        }
        config.waveforms.retain(|_| self.waveform_length > 0);
        for waveform in &mut config.waveforms {
            waveform.length = self.waveform_length;
        }
        config
    }
}

#[derive(Args)]
pub struct RecordArgs {
    /// The recording to write.
    output: PathBuf,
    /// Frames to record.
    #[arg(long, default_value_t = 10_000)]
    frames: u64,
    #[command(flatten)]
    synthetic: SyntheticArgs,
}

fn progress(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(&format!("{what} {{bar:40}} {{pos}}/{{len}} frames ({{per_sec}}, {{eta}} left)"))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

pub fn record(args: RecordArgs) -> Result<()> {
    // Ctrl-C (or SIGTERM, SIGHUP) ends the recording at the frames written so far: a complete
    // recording of them, rather than a process killed half-way that leaves its temporary file
    // (as large as what was recorded) behind.
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    let config = SourceConfig::Synthetic(args.synthetic.config(Some(args.frames), None));
    let mut synthetic = source::open(&config, 0, 1, None)?;
    let stopped = stop.clone();
    let frames = std::iter::from_fn(move || loop {
        if stopped.load(Ordering::SeqCst) {
            return None;
        }
        match synthetic.next_batch(1, Duration::from_secs(1)) {
            Ok(batch) if batch.ended => return None,
            Ok(mut batch) => {
                if let Some(frame) = batch.frames.pop() {
                    return Some(frame);
                }
            }
            Err(error) => {
                tracing::error!("synthetic source: {error}");
                return None;
            }
        }
    });
    let bar = progress(args.frames, "recording");
    let summary = source::write_recording(&args.output, frames, |n| bar.set_position(n))
        .with_context(|| format!("writing {}", args.output.display()))?;
    bar.finish_and_clear();
    if stop.load(Ordering::SeqCst) && summary.frames < args.frames {
        eprintln!(
            "ami2 record: stopped by a signal after {} of {} frames",
            summary.frames, args.frames
        );
    }
    println!("wrote {}: {summary}", args.output.display());
    Ok(())
}

#[derive(Args)]
pub struct DaqSimArgs {
    /// Name of the shared-memory ring (`/dev/shm/NAME`).
    #[arg(long, default_value = "ami2-daq")]
    name: String,
    /// Frames per second, stamped with the Unix time each is due (0 = as fast as possible,
    /// stamped from 0 like `ami2 run`'s synthetic stream).
    #[arg(long, default_value_t = 1000.0, value_parser = crate::rate_arg)]
    rate: f64,
    /// Frames to produce (default: until Ctrl-C).
    #[arg(long)]
    frames: Option<u64>,
    /// Slots in the ring (default: 1024, or fewer so that the ring takes at most 256 MiB, at
    /// least 16).
    #[arg(long)]
    slots: Option<usize>,
    /// Bytes per slot, which must hold one encoded frame (default: the size of this stream's
    /// frames).
    #[arg(long)]
    slot_bytes: Option<usize>,
    #[command(flatten)]
    synthetic: SyntheticArgs,
}

/// Most bytes of a ring whose slots are not given: /dev/shm is memory, and often small in containers.
const DEFAULT_RING_BYTES: usize = 256 << 20;

/// Slots of a ring of `slot_bytes` slots when none are given: 1024, or fewer so that the ring
/// takes at most [`DEFAULT_RING_BYTES`], but at least 16 (a consumer may lag a few batches).
fn default_slots(slot_bytes: usize) -> usize {
    (DEFAULT_RING_BYTES / slot_bytes.max(1)).clamp(16, 1024)
}

/// The first frame of the synthetic stream `args` describe (all its frames have its shapes).
fn first_frame(args: &SyntheticArgs) -> Result<ami_tasks::event::Frame> {
    Ok(SyntheticGenerator::new(&args.config(None, None))?.frame(0))
}

pub fn daq_sim(args: DaqSimArgs) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    let rate = (args.rate > 0.0).then_some(args.rate);
    let mut stream = args.synthetic.config(args.frames, rate);
    if rate.is_some() {
        // Stamped with the Unix time each frame is due, as a detector stamps its events: the
        // consumer can tell how far behind it is, and a restarted producer goes on in time.
        stream.live = true;
        stream.start_ns = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    }
    let mut synthetic = source::open(&SourceConfig::Synthetic(stream), 0, 1, None)?;
    let needed = ShmProducer::slot_bytes_for(&first_frame(&args.synthetic)?)?;
    let slot_bytes = match args.slot_bytes {
        // Checked before the ring is made: a ring of slots too small holds no frame.
        Some(bytes) if bytes < needed => {
            return Err(crate::refused(anyhow::anyhow!(
                "--slot-bytes {bytes} cannot hold this stream's frames: a slot needs {needed} bytes (the default)"
            )))
        }
        Some(bytes) => bytes,
        None => needed,
    };
    let slots = args.slots.unwrap_or_else(|| default_slots(slot_bytes));
    let mut producer = ShmProducer::create(&args.name, slots, slot_bytes).with_context(|| format!("creating the ring {}", args.name))?;
    eprintln!(
        "daq-sim: producing into /dev/shm/{} ({slots} slots of {slot_bytes} bytes); Ctrl-C to stop",
        args.name
    );
    let started = Instant::now();
    let mut produced = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let batch = synthetic.next_batch(64, Duration::from_millis(100))?;
        for frame in &batch.frames {
            producer.push(frame)?;
        }
        produced += batch.frames.len() as u64;
        if batch.ended {
            break;
        }
    }
    eprintln!("daq-sim: {produced} frames in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
