//! The machine's memory bandwidth, the bound of the image pipeline once frames leave the caches. A 512×512 f64
//! frame is 2 MiB; the source writes it and the worker reads the rows of its region of interest,
//! so frames/s can never exceed bandwidth / bytes touched per frame.
//!
//! Run: `cargo bench -p ami-tasks --bench memory_bandwidth [-- --mib 512 --rounds 5]`. For each
//! of 1 and 2 threads (each on its own half of the buffers) it prints the best of `--rounds` passes
//! of: read (sum of f64s), write (fill), copy (`copy_from_slice`), each over buffers of `--mib`
//! MiB (far beyond the caches), and the same for a 2 MiB buffer (one frame, cache-resident).
//! Then the image pipeline's roofline without any runtime: each thread writes 512×512 f64 frames
//! one after another into its own ring of frames and sums each frame's 256×256 region of
//! interest, for rings from cache-sized to far larger (`--roofline-ms` per point, default 500);
//! then the same with the sum half a ring behind the writes, as in the pipeline, with ordinary and
//! with streaming stores (`legion_bridge::streaming::fill_streaming`, the ROI's rows prefetched as
//! the pipeline's graph does). The last column runs the pipeline's own code for frames, still
//! without the runtime: the synthetic source writing batches into two buffers in the telemetry
//! store's chunk layout, and the benchmark's ROI-mean graph reading each batch after the next one
//! is written (two buffers of `ring / 4 MiB` frames per thread: the pipeline's footprint at that
//! batch on 2 partitions).

use std::hint::black_box;
use std::time::Instant;

use ami_tasks::frame_chunk::{ChunkReader, ChunkWriter, CHUNK_OVERHEAD};
use ami_tasks::graph::{compile, ROWS_AHEAD};
use ami_tasks::source::{max_frame_bytes, SourceConfig, SyntheticConfig, SyntheticGenerator};
use legion_bridge::harness::option;
use legion_bridge::streaming::prefetch_ahead;

mod common;

/// Best GB/s of `rounds` runs of `pass`, which touches `bytes` bytes.
fn best(rounds: usize, bytes: usize, mut pass: impl FnMut()) -> f64 {
    (0..rounds)
        .map(|_| {
            let t = Instant::now();
            pass();
            bytes as f64 / t.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

fn sum(xs: &[f64]) -> f64 {
    // Independent lanes: the additions do not wait for each other.
    let mut lanes = [0.0; 8];
    for c in xs.chunks_exact(8) {
        lanes.iter_mut().zip(c).for_each(|(l, x)| *l += x);
    }
    lanes.iter().sum()
}

/// Runs `work` on each (source, destination) pair of halves, one thread each.
fn on_threads(threads: usize, src: &[f64], dst: &mut [f64], work: impl Fn(&[f64], &mut [f64]) + Sync) {
    let n = src.len().div_ceil(threads);
    std::thread::scope(|s| {
        for (a, b) in src.chunks(n).zip(dst.chunks_mut(n)) {
            let work = &work;
            s.spawn(move || work(a, b));
        }
    });
}

fn measure(label: &str, elements: usize, rounds: usize) {
    let src: Vec<f64> = (0..elements).map(|i| i as f64).collect();
    let mut dst = vec![1.0f64; elements];
    let bytes = elements * 8;
    for threads in [1, 2] {
        let read = best(rounds, bytes, || {
            on_threads(threads, &src, &mut dst, |a, _| {
                black_box(sum(a));
            })
        });
        let write = best(rounds, bytes, || on_threads(threads, &src, &mut dst, |_, b| b.fill(black_box(2.0))));
        // A copy moves the bytes twice (read + write); GB/s of data copied.
        let copy = best(rounds, bytes, || on_threads(threads, &src, &mut dst, |a, b| b.copy_from_slice(a)));
        println!(
            "  {label:<22} {threads} thread{}: read {read:>6.1} GB/s  write {write:>6.1} GB/s  copy {copy:>6.1} GB/s",
            if threads == 1 { " " } else { "s" }
        );
    }
    black_box(&dst);
}

const FRAME: usize = 512 * 512;

/// Writes a frame (a cheap formula: every pixel stored once).
fn write_frame(frame: &mut [f64], seed: f64) {
    for (row, y) in frame.chunks_exact_mut(512).zip(0..) {
        let level = seed + y as f64;
        for (p, x) in row.iter_mut().zip(0..) {
            *p = level + x as f64 * 0.5;
        }
    }
}

/// [`write_frame`] with streaming stores, as the pipeline's sources write frames that outgrow the
/// cache.
fn write_frame_streaming(frame: &mut [f64], seed: f64) {
    legion_bridge::streaming::fill_streaming(frame, 512, |y, row| {
        let level = seed + y as f64;
        for (p, x) in row.iter_mut().zip(0..) {
            *p = level + x as f64 * 0.5;
        }
    });
}

/// The 256×256 ROI sum of a frame.
fn roi_sum(frame: &[f64]) -> f64 {
    frame.chunks_exact(512).skip(128).take(256).map(|row| sum(&row[128..384])).sum()
}

/// [`roi_sum`] asking for the rows ahead as the pipeline's graph reads a region of interest.
fn roi_sum_prefetched(frame: &[f64]) -> f64 {
    let row = |y: usize| &frame[(128 + y) * 512 + 128..(128 + y) * 512 + 384];
    (0..256)
        .map(|y| {
            prefetch_ahead(y, 256, ROWS_AHEAD, row);
            sum(row(y))
        })
        .sum()
}

/// Frames/s of `threads` threads, each cycling through a ring of `ring_mib` MiB of frames. Each
/// frame's ROI is summed right after it is written or, with `lagged`, half a ring later: the
/// pipeline's shape, where the worker reads a batch after its source wrote all of it.
fn roofline(threads: usize, ring_mib: usize, millis: u64, lagged: bool, streaming: bool) -> f64 {
    let write: fn(&mut [f64], f64) = if streaming { write_frame_streaming } else { write_frame };
    let roi: fn(&[f64]) -> f64 = if streaming { roi_sum_prefetched } else { roi_sum };
    let frames_per_ring = (ring_mib / 2).max(1);
    let lag = if lagged { frames_per_ring / 2 } else { 0 };
    let done: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(move || {
                    // Not zeroes: those would be mapped lazily, and page faults timed.
                    let mut ring = vec![1.0f64; frames_per_ring * FRAME];
                    let start = Instant::now();
                    let mut count = 0;
                    let mut seed = 0.0;
                    while start.elapsed().as_millis() < millis as u128 {
                        for i in 0..frames_per_ring {
                            write(&mut ring[i * FRAME..(i + 1) * FRAME], seed);
                            let j = (i + frames_per_ring - lag) % frames_per_ring;
                            seed += black_box(roi(&ring[j * FRAME..(j + 1) * FRAME])) * 1e-30 + 1.0;
                            count += 1;
                        }
                    }
                    (count, start.elapsed().as_secs_f64())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("roofline thread"))
            .map(|(n, t)| (n as f64 / t) as usize)
            .sum()
    });
    done as f64
}

/// Frames/s of the pipeline's own code for frames, without the runtime: on each of `threads`
/// threads, the synthetic source writes batches of `batch` 512×512 frames into two buffers in
/// turn, in the telemetry store's chunk layout, and the benchmark's ROI-mean graph reads each
/// batch once the next one is written, as a partition's source and worker do with two buffers.
/// Ordinary stores (a chunk on its own asks for no streaming).
fn source_and_graph(threads: usize, batch: usize, millis: u64) -> f64 {
    let config = SyntheticConfig {
        frames: None,
        rate_hz: None,
        ..SyntheticConfig::images(512, 512)
    };
    let frame_bytes = max_frame_bytes(&SourceConfig::Synthetic(config.clone())).expect("frame size") as usize;
    let generator = SyntheticGenerator::new(&config).expect("the image stream");
    let graph = compile(&common::roi_graph()).expect("the ROI graph");
    let done: f64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads as u64)
            .map(|thread| {
                let (generator, graph) = (&generator, &graph);
                s.spawn(move || {
                    let mut buffers = [
                        vec![1u8; CHUNK_OVERHEAD + batch * frame_bytes],
                        vec![1u8; CHUNK_OVERHEAD + batch * frame_bytes],
                    ];
                    let mut written = [0usize; 2];
                    let (start, mut count, mut seq) = (Instant::now(), 0usize, thread);
                    while start.elapsed().as_millis() < millis as u128 {
                        for b in 0..2 {
                            let mut chunk = ChunkWriter::new(&mut buffers[b]).expect("a chunk");
                            for _ in 0..batch {
                                generator.write_frame(seq, &mut chunk).expect("the frame fits");
                                seq += threads as u64;
                            }
                            written[b] = chunk.len();
                            let previous = &buffers[1 - b][..written[1 - b]];
                            if previous.is_empty() {
                                continue;
                            }
                            let mut partials = graph.empty_partials();
                            for frame in ChunkReader::new(previous).expect("a chunk").frames() {
                                graph.process(&frame.expect("a frame"), &mut partials).expect("the graph runs");
                                count += 1;
                            }
                            black_box(&partials);
                        }
                    }
                    count as f64 / start.elapsed().as_secs_f64()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("source-and-graph thread")).sum()
    });
    done
}

fn main() {
    let mib = option("--mib", 512);
    let rounds = option("--rounds", 5);
    println!("memory_bandwidth: best of {rounds} passes");
    measure(&format!("{mib} MiB buffers"), mib << 17, rounds);
    // One frame: cache-resident after the first pass, the best a frame can be touched.
    let frame = 512 * 512;
    let repeats = (mib << 17) / frame;
    let src: Vec<f64> = vec![3.0; frame];
    let mut dst = vec![0.0f64; frame];
    let copy = best(rounds, repeats * frame * 8, || {
        for _ in 0..repeats {
            dst.copy_from_slice(black_box(&src));
        }
    });
    println!("  2 MiB frame, repeated  1 thread : copy {copy:>6.1} GB/s");
    black_box(&dst);

    let millis = option("--roofline-ms", 500) as u64;
    println!("image roofline: write a 512x512 f64 frame, sum its 256x256 ROI; frames/s (no runtime)");
    for ring_mib in [2, 4, 8, 12, 16, 24, 32, 64, 256] {
        let one = roofline(1, ring_mib, millis, false, false);
        let two = roofline(2, ring_mib, millis, false, false);
        let lagged = roofline(2, ring_mib, millis, true, false);
        let streamed = roofline(2, ring_mib, millis, true, true);
        // Two buffers of `batch` frames fill the same ring: the pipeline at that batch on 2 partitions.
        let batch = (ring_mib / 4).max(1);
        let pipeline_code = source_and_graph(2, batch, millis);
        println!(
            "  ring of {ring_mib:>3} MiB per thread: 1 thread {one:>8.0}   2 threads {two:>8.0}   2 threads, ROI read half a ring later {lagged:>8.0}   same, streaming stores + prefetch {streamed:>8.0}   synthetic source + ROI graph, 2 threads, batches of {batch:>2} in 2 buffers {pipeline_code:>8.0}"
        );
    }
}
