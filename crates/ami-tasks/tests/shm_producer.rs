//! The shared-memory source against a real producer process.
//!
//! The test binary re-runs itself as the producer: `producer_process` does nothing in a normal
//! run, and in a child started with `AMI2_TEST_SHM_PRODUCER=<job as JSON>` it creates the ring and
//! pushes the job's frames. Each test uses its own ring name (with the pid) and removes it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ami_tasks::event::Frame;
use ami_tasks::source::{self, DataSource, ShmProducer, SourceConfig, SourceError, SyntheticConfig, SyntheticGenerator, WaveformSpec};
use serde::{Deserialize, Serialize};

const PRODUCER_ENV: &str = "AMI2_TEST_SHM_PRODUCER";

/// What a producer process does.
#[derive(Serialize, Deserialize)]
struct Job {
    name: String,
    slots: usize,
    slot_bytes: usize,
    first_seq: u64,
    /// Frames to push; `None` = until killed.
    frames: Option<u64>,
    /// Pause after each frame.
    interval_us: u64,
    /// Stay alive after the last frame, until killed.
    linger: bool,
}

/// Frames with a scalar and a short waveform: small enough for little slots, distinct per seq.
fn generator() -> SyntheticGenerator {
    let config = SyntheticConfig {
        waveforms: vec![WaveformSpec {
            name: "trace".into(),
            length: 64,
        }],
        ..SyntheticConfig::scalars_only()
    };
    SyntheticGenerator::new(&config).unwrap()
}

/// The producer's side (in the child process).
#[test]
fn producer_process() {
    let Ok(job) = std::env::var(PRODUCER_ENV) else { return };
    let job: Job = serde_json::from_str(&job).unwrap();
    let generator = generator();
    let mut producer = ShmProducer::create(&job.name, job.slots, job.slot_bytes).unwrap();
    // Never outlive a test that died without killing us.
    let give_up = Instant::now() + Duration::from_secs(30);
    let mut seq = job.first_seq;
    while job.frames.is_none_or(|n| seq < job.first_seq + n) && Instant::now() < give_up {
        producer.push(&generator.frame(seq)).unwrap();
        seq += 1;
        if job.interval_us > 0 {
            std::thread::sleep(Duration::from_micros(job.interval_us));
        }
    }
    while job.linger && Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A producer process, killed on drop.
struct Producer(Child);

impl Producer {
    fn start(job: &Job) -> Self {
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "producer_process", "--nocapture", "--test-threads=1"])
            .env(PRODUCER_ENV, serde_json::to_string(job).unwrap())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Producer(child)
    }

    fn kill(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }

    /// Waits for a producer that exits on its own.
    fn finish(mut self) {
        assert!(self.0.wait().unwrap().success());
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A ring name unique to this process and test, removed on drop.
struct Ring(String);

impl Ring {
    fn new(test: &str) -> Self {
        let name = format!("ami2-producer-test-{}-{test}", std::process::id());
        ShmProducer::remove(&name).unwrap();
        Ring(name)
    }

    /// Opens a consumer once the producer has created the ring.
    fn consumer(&self, partition: usize, partitions: usize) -> Box<dyn DataSource> {
        let config = SourceConfig::SharedMemory { name: self.0.clone() };
        let give_up = Instant::now() + Duration::from_secs(10);
        loop {
            match source::open(&config, partition, partitions, None) {
                Ok(source) => return source,
                Err(SourceError::ShmMissing { .. }) if Instant::now() < give_up => std::thread::sleep(Duration::from_millis(5)),
                Err(error) => panic!("opening {}: {error}", self.0),
            }
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        let _ = ShmProducer::remove(&self.0);
    }
}

/// Reads until a frame with seq `last` or later arrives (or `give_up`), pausing `pause` between batches.
fn read_until(source: &mut dyn DataSource, last: u64, max: usize, pause: Duration, give_up: Duration) -> Vec<Frame> {
    let deadline = Instant::now() + give_up;
    let mut frames: Vec<Frame> = Vec::new();
    while frames.last().is_none_or(|f| f.seq < last) {
        assert!(
            Instant::now() < deadline,
            "no frame {last} in time; last seen {:?}",
            frames.last().map(|f| f.seq)
        );
        let batch = source.next_batch(max, Duration::from_millis(100)).unwrap();
        assert!(!batch.ended, "a ring never ends");
        frames.extend(batch.frames);
        std::thread::sleep(pause);
    }
    frames
}

#[test]
fn consumers_receive_every_frame_in_order() {
    let ring = Ring::new("all");
    let total = 3000;
    // A ring larger than the run: no consumer can be lapped, however it is scheduled.
    let producer = Producer::start(&Job {
        name: ring.0.clone(),
        slots: 4096,
        slot_bytes: 2048,
        first_seq: 0,
        frames: Some(total),
        interval_us: 50,
        linger: false,
    });
    let consumers: Vec<_> = [(0, 1), (0, 2), (1, 2)]
        .into_iter()
        .map(|(partition, partitions)| {
            let mut source = ring.consumer(partition, partitions);
            std::thread::spawn(move || {
                let last = (0..total).rev().find(|s| s % partitions as u64 == partition as u64).unwrap();
                let frames = read_until(source.as_mut(), last, 500, Duration::ZERO, Duration::from_secs(20));
                (partition, partitions, frames, source.stats(), source.position())
            })
        })
        .collect();
    let generator = generator();
    for consumer in consumers {
        let (partition, partitions, frames, stats, position) = consumer.join().unwrap();
        let expected: Vec<u64> = (0..total).filter(|s| s % partitions as u64 == partition as u64).collect();
        assert_eq!(
            frames.iter().map(|f| f.seq).collect::<Vec<_>>(),
            expected,
            "partition {partition} of {partitions}"
        );
        assert!(frames.iter().all(|f| *f == generator.frame(f.seq)));
        assert_eq!(
            (stats.frames, stats.overruns, stats.producer_restarts),
            (expected.len() as u64, 0, 0)
        );
        assert_eq!(position.next_seq, expected.last().unwrap() + 1);
    }
    producer.finish();
}

#[test]
fn a_slow_consumer_counts_overruns_and_keeps_going() {
    let ring = Ring::new("slow");
    let total = 400;
    let producer = Producer::start(&Job {
        name: ring.0.clone(),
        slots: 8,
        slot_bytes: 2048,
        first_seq: 0,
        frames: Some(total),
        interval_us: 500,
        linger: false,
    });
    let mut consumer = ring.consumer(0, 1);
    // One frame every 5 ms while the producer makes one every 0.5 ms.
    let frames = read_until(consumer.as_mut(), total - 1, 1, Duration::from_millis(5), Duration::from_secs(20));
    let stats = consumer.stats();
    assert!(stats.overruns > 0, "{stats:?}");
    assert!((frames.len() as u64) < total);
    assert!(frames.windows(2).all(|w| w[0].seq < w[1].seq), "in order, nothing twice");
    let generator = generator();
    assert!(frames.iter().all(|f| *f == generator.frame(f.seq)), "no torn frame");
    assert!(stats.note.as_deref().unwrap_or("").contains("overruns"), "{stats:?}");
    assert_eq!(stats.producer_restarts, 0);
    producer.finish();
}

#[test]
fn a_killed_and_restarted_producer_is_followed() {
    let ring = Ring::new("restart");
    let job = |first_seq, frames, interval_us| Job {
        name: ring.0.clone(),
        slots: 1024,
        slot_bytes: 2048,
        first_seq,
        frames,
        interval_us,
        linger: true,
    };
    // The first producer runs until it is killed, whatever it is doing then.
    let first = Producer::start(&job(0, None, 500));
    let mut consumer = ring.consumer(0, 1);
    let before = read_until(consumer.as_mut(), 99, 1000, Duration::ZERO, Duration::from_secs(20));
    first.kill();
    let second = Producer::start(&job(1_000_000, Some(50), 1000));
    let mut after = read_until(consumer.as_mut(), 1_000_049, 1000, Duration::ZERO, Duration::from_secs(20));
    // What the first producer wrote before it died and we had not read yet may come first.
    let from_first: Vec<Frame> = after.iter().take_while(|f| f.seq < 1_000_000).cloned().collect();
    after.drain(..from_first.len());
    let first_seqs: Vec<u64> = before.iter().chain(&from_first).map(|f| f.seq).collect();
    assert_eq!(first_seqs, (0..first_seqs.len() as u64).collect::<Vec<_>>());
    assert_eq!(
        after.iter().map(|f| f.seq).collect::<Vec<_>>(),
        (1_000_000..1_000_050).collect::<Vec<_>>()
    );
    let generator = generator();
    assert!(before.iter().chain(&after).all(|f| *f == generator.frame(f.seq)));
    let stats = consumer.stats();
    assert_eq!((stats.producer_restarts, stats.overruns), (1, 0), "{stats:?}");
    second.kill();
}
