//! The machine's memory bandwidth: the physical ceiling of the image pipeline. A 512×512 f64
//! frame is 2 MiB; the source writes it and the worker reads the rows of its region of interest,
//! so frames/s can never exceed bandwidth / bytes touched per frame.
//!
//! Run: `cargo bench -p ami-tasks --bench memory_bandwidth [-- --mib 512 --rounds 5]`. For each
//! of 1 and 2 threads (each on its own half of the buffers) it prints the best of `--rounds` passes
//! of: read (sum of f64s), write (fill), copy (`copy_from_slice`), each over buffers of `--mib`
//! MiB (far beyond the caches), and the same for a 2 MiB buffer (one frame, cache-resident).

use std::hint::black_box;
use std::time::Instant;

use legion_bridge::harness::option;

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
}
