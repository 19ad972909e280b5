//! Recordings and the file source: round trips, damaged files, positions, pacing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ami_tasks::event::Frame;
use ami_tasks::source::{
    self, recording_info, write_recording, write_recording_with, Batch, DataSource, RecordingHeader, RecordingReader, SourceConfig,
    SourceError, SourcePosition, SyntheticConfig, SyntheticGenerator, WaveformSpec,
};

/// A directory of its own for each test, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(test: &str) -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("recording-files-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Small frames: two scalars, a short waveform, a tiny image.
fn frames(n: u64) -> Vec<Frame> {
    let config = SyntheticConfig {
        waveforms: vec![WaveformSpec {
            name: "trace".into(),
            length: 12,
        }],
        ..SyntheticConfig::images(3, 2)
    };
    let generator = SyntheticGenerator::new(&config).unwrap();
    (0..n).map(|seq| generator.frame(seq)).collect()
}

/// [`frames`] `n` stamped `first_ns`, then every `step_ns`.
fn stamped(n: u64, first_ns: u64, step_ns: u64) -> Vec<Frame> {
    frames(n)
        .into_iter()
        .map(|f| Frame {
            timestamp_ns: first_ns + f.seq * step_ns,
            ..f
        })
        .collect()
}

fn file_source(path: &Path, partition: usize, partitions: usize, from: Option<&SourcePosition>) -> Box<dyn DataSource> {
    source::open(
        &SourceConfig::File {
            path: path.to_path_buf(),
            realtime: false,
        },
        partition,
        partitions,
        from,
    )
    .unwrap()
}

/// Everything the source delivers, in batches of `max`.
fn drain(source: &mut dyn DataSource, max: usize) -> Vec<Frame> {
    let mut out = Vec::new();
    loop {
        let batch = source.next_batch(max, Duration::from_secs(5)).unwrap();
        if batch.ended {
            assert!(batch.frames.is_empty());
            return out;
        }
        assert!(!batch.frames.is_empty(), "a file source without pacing never times out");
        out.extend(batch.frames);
    }
}

/// Byte offsets where each record starts, and the end of the last one.
fn record_bounds(path: &Path) -> Vec<u64> {
    let mut reader = RecordingReader::open(path).unwrap();
    let mut bounds = vec![reader.offset()];
    while reader.next_frame().unwrap().is_some() {
        bounds.push(reader.offset());
    }
    assert!(reader.damage().is_none());
    bounds
}

#[test]
fn round_trip_with_any_partition_count() {
    let dir = Dir::new("round-trip");
    let path = dir.path("run.rec");
    let expected = frames(57);
    let mut progress = Vec::new();
    let written = write_recording(&path, expected.clone().into_iter(), |n| progress.push(n)).unwrap();
    assert_eq!(progress, (1..=57).collect::<Vec<_>>());
    assert_eq!(
        (written.frames, written.first_seq, written.last_seq, written.intact),
        (57, Some(0), Some(56), true)
    );
    assert_eq!(written.bytes, std::fs::metadata(&path).unwrap().len());
    let largest = expected
        .iter()
        .map(|f| bincode::serde::encode_to_vec(f, bincode::config::standard()).unwrap().len() as u64)
        .max();
    assert_eq!(Some(written.max_frame_bytes), largest);
    assert_eq!(
        source::max_frame_bytes(&SourceConfig::File {
            path: path.clone(),
            realtime: false
        })
        .unwrap(),
        written.max_stored_frame_bytes
    );
    // The bound holds every frame as stored in a telemetry chunk.
    let stored = expected
        .iter()
        .map(|f| ami_tasks::frame_chunk::frame_bytes(&ami_tasks::frame_chunk::FieldSpec::list(f)) as u64)
        .max();
    assert!(stored.is_some_and(|s| s <= written.max_stored_frame_bytes), "{stored:?}");
    assert!(written.header.producer.starts_with("ami-tasks"));
    let info = recording_info(&path).unwrap();
    assert_eq!(info, written);
    assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 1, "no temporary file is left behind");

    let mut one = file_source(&path, 0, 1, None);
    assert_eq!(drain(one.as_mut(), 10), expected);
    assert_eq!(one.stats().frames, 57);
    assert_eq!(one.stats().note, None);
    let mut union = Vec::new();
    for p in 0..4 {
        let mut source = file_source(&path, p, 4, None);
        let mine = drain(source.as_mut(), 4);
        assert!(mine.iter().all(|f| f.seq % 4 == p as u64));
        union.extend(mine);
    }
    union.sort_by_key(|f| f.seq);
    assert_eq!(union, expected);
}

#[test]
fn header_note_and_empty_recordings() {
    let dir = Dir::new("header");
    let path = dir.path("empty.rec");
    let header = RecordingHeader {
        created_unix_ns: 42,
        producer: "test".into(),
        note: "beam off".into(),
    };
    write_recording_with(&path, &header, std::iter::empty(), |_| {}).unwrap();
    let info = recording_info(&path).unwrap();
    assert_eq!(info.header, header);
    assert_eq!((info.frames, info.first_seq, info.intact), (0, None, true));
    assert_eq!(info.to_string(), format!("0 frames, {:.1} MB, intact", info.bytes as f64 / 1e6));
    let mut source = file_source(&path, 0, 1, None);
    assert_eq!(
        source.next_batch(10, Duration::from_secs(1)).unwrap(),
        Batch {
            frames: Vec::new(),
            ended: true
        }
    );
}

#[test]
fn a_truncated_file_replays_its_intact_frames_and_says_where_it_stops() {
    let dir = Dir::new("truncated");
    let path = dir.path("whole.rec");
    let expected = frames(6);
    write_recording(&path, expected.clone().into_iter(), |_| {}).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let bounds = record_bounds(&path);
    let cut_path = dir.path("cut.rec");
    // Every possible cut inside the records.
    for cut in bounds[0]..bytes.len() as u64 {
        std::fs::write(&cut_path, &bytes[..cut as usize]).unwrap();
        let whole = bounds.iter().filter(|&&b| b <= cut).count() - 1;
        let mut source = file_source(&cut_path, 0, 1, None);
        let got = drain(source.as_mut(), 4);
        assert_eq!(got, expected[..whole], "cut at {cut}");
        let note = source.stats().note;
        let info = recording_info(&cut_path).unwrap();
        assert_eq!(info.frames, whole as u64);
        assert_eq!(info.end_offset, bounds[whole]);
        // The line `ami2 record` prints says how much is there and whether it is damaged.
        let line = info.to_string();
        assert!(line.starts_with(&format!("{whole} frames")), "{line}");
        if bounds.contains(&cut) {
            assert_eq!(note, None, "cut at {cut} is a record boundary");
            assert!(info.intact);
            assert!(line.ends_with(", intact"), "{line}");
        } else {
            let note = note.unwrap_or_else(|| panic!("cut at {cut}: no note"));
            assert!(note.contains(&format!("byte {}", bounds[whole])), "cut at {cut}: {note}");
            assert!(note.contains(&format!("{whole} frames delivered")), "cut at {cut}: {note}");
            assert!(!info.intact);
            assert!(line.contains(", damaged: "), "{line}");
            assert!(info.damage.unwrap().contains(&format!("byte {}", bounds[whole])));
        }
    }
}

#[test]
fn a_flipped_byte_stops_the_replay_at_its_record() {
    let dir = Dir::new("flipped");
    let path = dir.path("whole.rec");
    let expected = frames(5);
    write_recording(&path, expected.clone().into_iter(), |_| {}).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let bounds = record_bounds(&path);
    let bad_path = dir.path("bad.rec");
    for at in bounds[0]..bytes.len() as u64 {
        let mut bad = bytes.clone();
        bad[at as usize] ^= 0xFF;
        std::fs::write(&bad_path, &bad).unwrap();
        let record = bounds.iter().filter(|&&b| b <= at).count() - 1;
        for partitions in [1, 2] {
            let mut got = Vec::new();
            for p in 0..partitions {
                let mut source = file_source(&bad_path, p, partitions, None);
                got.extend(drain(source.as_mut(), 3));
                let note = source.stats().note.unwrap_or_else(|| panic!("byte {at}: no note"));
                assert!(note.contains(&format!("byte {}", bounds[record])), "byte {at}: {note}");
            }
            got.sort_by_key(|f| f.seq);
            assert_eq!(got, expected[..record], "byte {at} flipped, {partitions} partitions");
        }
    }
}

#[test]
fn bad_magic_version_header_or_missing_file_are_errors() {
    let dir = Dir::new("bad");
    let path = dir.path("good.rec");
    write_recording(&path, frames(2).into_iter(), |_| {}).unwrap();
    let good = std::fs::read(&path).unwrap();
    let open = |bytes: &[u8]| {
        let path = dir.path("bad.rec");
        std::fs::write(&path, bytes).unwrap();
        source::open(&SourceConfig::File { path, realtime: false }, 0, 1, None)
            .err()
            .expect("an error")
    };

    let mut bad = good.clone();
    bad[0] = b'X';
    assert!(matches!(open(&bad), SourceError::BadMagic { .. }));
    assert!(matches!(open(b"AMI"), SourceError::BadMagic { .. }));
    assert!(matches!(open(b""), SourceError::BadMagic { .. }));
    let mut bad = good.clone();
    bad[8..12].copy_from_slice(&2u32.to_le_bytes());
    let error = open(&bad);
    assert!(
        matches!(
            error,
            SourceError::UnsupportedVersion {
                found: 2,
                supported: 1,
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("version 2"));
    let mut bad = good.clone();
    bad[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(open(&bad), SourceError::BadHeader { .. }));
    let mut bad = good.clone();
    bad[16] = b'!';
    assert!(matches!(open(&bad), SourceError::BadHeader { .. }));
    assert!(matches!(open(&good[..14]), SourceError::BadHeader { .. }));

    let missing = dir.path("missing.rec");
    let error = source::open(
        &SourceConfig::File {
            path: missing.clone(),
            realtime: false,
        },
        0,
        1,
        None,
    )
    .err()
    .unwrap();
    assert!(matches!(error, SourceError::FileMissing { .. }), "{error}");
    assert!(matches!(recording_info(&missing), Err(SourceError::FileMissing { .. })));
    let error = write_recording(&dir.path("no/such/dir.rec"), frames(1).into_iter(), |_| {}).unwrap_err();
    assert!(matches!(error, SourceError::Io { .. }), "{error}");
}

#[test]
fn reopening_from_a_position_continues_without_gaps_or_repeats() {
    let dir = Dir::new("reopen");
    let path = dir.path("run.rec");
    let all = frames(40);
    write_recording(&path, all.clone().into_iter(), |_| {}).unwrap();
    for (partition, partitions) in [(0, 1), (1, 3)] {
        let expected: Vec<Frame> = all
            .iter()
            .filter(|f| f.seq % partitions as u64 == partition as u64)
            .cloned()
            .collect();
        let mut got = Vec::new();
        let mut position: Option<SourcePosition> = None;
        loop {
            // A new source after every batch, as after a crash.
            let mut source = file_source(&path, partition, partitions, position.as_ref());
            let batch = source.next_batch(3, Duration::from_secs(1)).unwrap();
            if batch.ended {
                break;
            }
            got.extend(batch.frames);
            let now = source.position();
            assert_eq!(now.next_seq, got.last().unwrap().seq + 1);
            position = Some(now);
        }
        assert_eq!(got, expected);
    }
    let error = source::open(
        &SourceConfig::File {
            path: path.clone(),
            realtime: false,
        },
        0,
        1,
        Some(&SourcePosition {
            next_seq: 0,
            offset: 3,
            ..SourcePosition::default()
        }),
    )
    .err()
    .unwrap();
    assert!(matches!(error, SourceError::BadPosition { offset: 3, .. }), "{error}");
}

#[test]
fn a_position_in_an_earlier_recording_of_the_same_name_is_not_used() {
    let dir = Dir::new("recorded-again");
    let path = dir.path("run.rec");
    let header = |created_unix_ns| RecordingHeader {
        created_unix_ns,
        producer: "test".into(),
        note: String::new(),
    };
    write_recording_with(&path, &header(1), frames(40).into_iter(), |_| {}).unwrap();
    let mut source = file_source(&path, 0, 1, None);
    assert_eq!(source.next_batch(30, Duration::from_secs(1)).unwrap().frames.len(), 30);
    let position = source.position();
    assert_eq!((position.next_seq, position.stream), (30, Some(1)));
    // The same recording continues where it was.
    // The sequence numbers of what a source delivers next, up to 100 frames.
    let next_seqs = |source: &mut Box<dyn DataSource>| -> Vec<u64> {
        let batch = source.next_batch(100, Duration::from_secs(1)).unwrap();
        batch.frames.iter().map(|f| f.seq).collect()
    };
    let mut again = file_source(&path, 0, 1, Some(&position));
    assert_eq!(next_seqs(&mut again), (30..40).collect::<Vec<_>>());
    // Recorded again under the same name, shorter: its every frame, from the start, rather
    // than its second half (or an error past its end).
    write_recording_with(&path, &header(2), frames(20).into_iter(), |_| {}).unwrap();
    let mut other = file_source(&path, 0, 1, Some(&position));
    assert_eq!(next_seqs(&mut other), (0..20).collect::<Vec<_>>());
    assert_eq!(other.position().stream, Some(2));
}

#[test]
fn realtime_replay_follows_the_time_stamps() {
    let dir = Dir::new("realtime");
    let path = dir.path("run.rec");
    // 30 frames 5 ms apart: 145 ms of data, starting at an arbitrary time stamp.
    let all = stamped(30, 1_000_000_000, 5_000_000);
    write_recording(&path, all.clone().into_iter(), |_| {}).unwrap();
    let mut source = source::open(
        &SourceConfig::File {
            path: path.clone(),
            realtime: true,
        },
        0,
        1,
        None,
    )
    .unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    let mut empty_batches = 0;
    loop {
        let batch = source.next_batch(100, Duration::from_millis(2)).unwrap();
        if batch.ended {
            break;
        }
        if batch.frames.is_empty() {
            empty_batches += 1;
            // A frame held back by the pacing is not counted as read.
            let position = source.position();
            assert_eq!(position.next_seq, got.last().map_or(0, |f: &Frame| f.seq + 1));
        }
        got.extend(batch.frames);
    }
    let elapsed = start.elapsed();
    assert_eq!(got, all);
    assert!(elapsed >= Duration::from_millis(130), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert!(empty_batches > 0);
}

#[test]
fn the_partitions_of_a_realtime_replay_can_share_one_clock() {
    let dir = Dir::new("realtime-partitions");
    let path = dir.path("run.rec");
    // 80 frames 5 ms apart (400 ms of stream), in 2 partitions.
    write_recording(&path, stamped(80, 3_000_000_000, 5_000_000).into_iter(), |_| {}).unwrap();
    let config = SourceConfig::File {
        path: path.clone(),
        realtime: true,
    };
    let clock = source::PacingClock::default();
    let mut first = source::open(&config, 0, 2, None).unwrap();
    first.share_pacing(clock.clone());
    assert!(!first.next_batch(10, Duration::from_millis(1)).unwrap().frames.is_empty());
    // Partition 1 starts 150 ms after partition 0 (a loaded machine, a retry): by the clock the
    // two share, its frames of those 150 ms are due at once (seq 1, 3, ..., 29: 15 frames), not
    // paced from its own start, which would have it trail partition 0 by 150 ms for good.
    std::thread::sleep(Duration::from_millis(150));
    let mut late = source::open(&config, 1, 2, None).unwrap();
    late.share_pacing(clock);
    let caught_up = late.next_batch(100, Duration::from_millis(1)).unwrap().frames;
    assert!(caught_up.len() >= 10, "only {} frames due for the late partition", caught_up.len());
    assert!(caught_up.iter().all(|f| f.seq % 2 == 1));
}

#[test]
fn a_realtime_replay_says_how_far_behind_the_recording_it_is() {
    let dir = Dir::new("realtime-behind");
    let path = dir.path("run.rec");
    // 40 frames 1 ms apart.
    let all = stamped(40, 7_000_000_000, 1_000_000);
    write_recording(&path, all.into_iter(), |_| {}).unwrap();
    let open = |realtime| {
        source::open(
            &SourceConfig::File {
                path: path.clone(),
                realtime,
            },
            0,
            1,
            None,
        )
        .unwrap()
    };
    let mut paced = open(true);
    // Frames handed over as they fall due: not behind.
    let mut delivered = 0;
    while delivered < 5 {
        delivered += paced.next_batch(5, Duration::from_secs(1)).unwrap().frames.len();
        let keeping_up = paced.stats().behind_ms.unwrap();
        assert!(keeping_up < 150, "{keeping_up} ms behind while keeping up");
    }
    // A pause of 300 ms: the next frames were due 290-300 ms ago.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(paced.next_batch(5, Duration::from_secs(1)).unwrap().frames.len(), 5);
    let behind = paced.stats().behind_ms.unwrap();
    assert!((280..3000).contains(&behind), "{behind} ms behind after a pause");
    // As fast as possible: the recording's clock does not apply.
    let mut unpaced = open(false);
    unpaced.next_batch(5, Duration::from_secs(1)).unwrap();
    assert_eq!(unpaced.stats().behind_ms, None);
}
