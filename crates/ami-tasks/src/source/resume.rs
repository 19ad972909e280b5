//! Continuing with another partition count.
//!
//! Partition `p` of `P` delivers the frames with `seq % P == p`. When the sources' positions were
//! saved with `P_old` partitions and the service starts with `P_new`, a new partition's frames
//! were delivered by several old partitions, each as far as its own position: frame `seq` was
//! delivered if and only if `seq < next_seq[seq % P_old]` (an [`EarlierLayout`]).
//!
//! [`convert_positions`] (run by the driver at start) turns the old positions into new ones. New
//! partition `q` continues at the first frame of its own not delivered yet (`next_seq`), from a
//! point of the stream before which every old partition had delivered all its frames (the smallest
//! old `offset`, or the stream's start when an old partition saved no position), and carries the
//! layouts that delivered frames after that point ([`SourcePosition::delivered_before`]).
//! [`SkipDelivered`], which [`open`](super::open) puts around a source opened from such a
//! position, drops those frames as they come again, and drops the layouts from the position once
//! a frame of the partition past them has come. So every frame is delivered once over all the
//! runs, also after several changes in a row: the layouts of an earlier change that a partition
//! had not passed yet are carried on.
//!
//! The layouts are about one stream ([`SourcePosition::stream`]): a source that finds another
//! stream (a recording made again, a shared-memory producer restarted) starts it from its
//! beginning, as after any restart, and skips nothing. Old positions in different streams (a
//! producer that restarted while some partitions had not seen it yet) are converted in the stream
//! most of them are in; the others count as having delivered nothing of it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{copy_batch, first_of_partition, Batch, DataSource, FrameSink, SourceError, SourcePosition, SourceStats, Written};

/// The frames the partitions of an earlier count had delivered: frame `seq` if and only if
/// `seq < next_seq[seq % next_seq.len()]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EarlierLayout {
    /// Each earlier partition's `next_seq`: it had delivered every frame of its own below it.
    pub next_seq: Vec<u64>,
}

impl EarlierLayout {
    /// Whether frame `seq` was delivered.
    pub fn delivered(&self, seq: u64) -> bool {
        let count = self.next_seq.len() as u64;
        count > 0 && seq < self.next_seq[(seq % count) as usize]
    }

    /// A sequence number past every frame it delivered.
    pub fn end(&self) -> u64 {
        self.next_seq.iter().copied().max().unwrap_or(0)
    }

    /// Every frame below this was delivered.
    fn floor(&self) -> u64 {
        self.next_seq.iter().copied().min().unwrap_or(0)
    }

    /// The first frame at or after `from` of partition `partition` of `partitions` that this
    /// layout did not deliver. The partition's frames fall in the layout's partitions in a cycle
    /// of `count / gcd` steps; along each step's frames (`lcm` apart) the layout delivered a
    /// prefix, so the answer is the smallest first frame past a prefix.
    fn first_not_delivered(&self, from: u64, partition: u64, partitions: u64) -> u64 {
        let count = self.next_seq.len() as u64;
        let start = first_of_partition(from, partition, partitions);
        if count == 0 {
            return start;
        }
        let lcm = partitions / gcd(partitions, count) * count;
        (0..count / gcd(partitions, count))
            .map(|step| {
                let seq = start.saturating_add(step * partitions);
                let next = self.next_seq[(seq % count) as usize];
                if seq >= next {
                    seq
                } else {
                    seq.saturating_add((next - seq).div_ceil(lcm).saturating_mul(lcm))
                }
            })
            .min()
            .unwrap_or(start)
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// How many layouts [`first_not_delivered`] jumps over at most before it settles for a frame
/// that may still be delivered (then skipped by [`SkipDelivered`]: slower, not wrong). Jumps only
/// alternate between layouts that each delivered some frames past the others.
const MAX_JUMPS: usize = 10_000;

/// The first frame of `partition` of `partitions` that none of `layouts` delivered.
fn first_not_delivered(layouts: &[EarlierLayout], partition: u64, partitions: u64) -> u64 {
    let mut seq = partition;
    for _ in 0..MAX_JUMPS {
        match layouts.iter().find(|layout| layout.delivered(seq)) {
            Some(layout) => seq = layout.first_not_delivered(seq, partition, partitions),
            None => return seq,
        }
    }
    seq
}

/// Positions for `partitions` partitions that continue from `old`, the positions saved by the
/// partitions of an earlier count (`old[p]` that of partition `p`, `None` when it saved none):
/// every frame the old partitions had not delivered is delivered once by the new ones, and no
/// other (see the [module docs](self)).
pub fn convert_positions(old: &[Option<SourcePosition>], partitions: usize) -> Vec<SourcePosition> {
    let stream = most_common_stream(old);
    let in_stream: Vec<Option<&SourcePosition>> = old.iter().map(|p| p.as_ref().filter(|p| p.stream == stream)).collect();
    let mut layouts = vec![EarlierLayout {
        next_seq: in_stream.iter().map(|p| p.map_or(0, |p| p.next_seq)).collect(),
    }];
    for layout in in_stream.iter().flatten().flat_map(|p| &p.delivered_before) {
        if !layouts.contains(layout) {
            layouts.push(layout.clone());
        }
    }
    // An earlier layout whose frames all lie below the newest one's floor adds nothing.
    let floor = layouts[0].floor();
    let mut index = 0;
    layouts.retain(|layout| {
        index += 1;
        index == 1 || layout.end() > floor
    });
    // Every old partition had delivered all its frames before its offset; one that saved no
    // position, none at all.
    let offset = match in_stream.iter().map(|p| p.map(|p| p.offset)).collect::<Option<Vec<u64>>>() {
        Some(offsets) => offsets.into_iter().min().unwrap_or(0),
        None => 0,
    };
    let count = partitions as u64;
    (0..count)
        .map(|partition| {
            let next_seq = first_not_delivered(&layouts, partition, count);
            // All the layouts: a source reading from `offset` goes over frames below `next_seq`
            // again (a recording, a ring).
            SourcePosition {
                next_seq,
                offset,
                stream,
                delivered_before: layouts.clone(),
            }
        })
        .collect()
}

/// The stream most of `positions` are in (the first one's on a tie).
fn most_common_stream(positions: &[Option<SourcePosition>]) -> Option<u64> {
    let streams: Vec<Option<u64>> = positions.iter().flatten().map(|p| p.stream).collect();
    let count = |stream: &Option<u64>| streams.iter().filter(|s| *s == stream).count();
    let mut best: Option<(Option<u64>, usize)> = None;
    for stream in &streams {
        let n = count(stream);
        if best.is_none_or(|(_, most)| n > most) {
            best = Some((*stream, n));
        }
    }
    best.and_then(|(stream, _)| stream)
}

/// A source opened from a position converted to a new partition count: drops the frames its
/// [`delivered_before`](SourcePosition::delivered_before) says were delivered already, and
/// reports positions without the layouts it has passed (once a frame at or past a layout's
/// [`end`](EarlierLayout::end) has come, the frames after it are all new).
pub struct SkipDelivered {
    inner: Box<dyn DataSource>,
    layouts: Vec<EarlierLayout>,
    /// The stream the layouts are about.
    stream: Option<u64>,
    skipped: u64,
}

impl SkipDelivered {
    /// `inner` (opened from `from` without its `delivered_before`) skipping the frames of `from`'s
    /// `delivered_before`; `inner` itself when there are none.
    pub fn wrap(inner: Box<dyn DataSource>, from: Option<&SourcePosition>) -> Box<dyn DataSource> {
        let Some(from) = from.filter(|from| !from.delivered_before.is_empty()) else {
            return inner;
        };
        let mut source = SkipDelivered {
            inner,
            layouts: from.delivered_before.clone(),
            stream: from.stream,
            skipped: 0,
        };
        source.forget_other_streams();
        Box::new(source)
    }

    /// In another stream than the layouts' (a recording made again, a producer restarted), every
    /// frame is new.
    fn forget_other_streams(&mut self) {
        if !self.layouts.is_empty() && self.inner.position().stream != self.stream {
            tracing::info!(
                component = "data_source",
                "the stream is not the one the positions were converted in: no frame is skipped"
            );
            self.layouts.clear();
        }
    }

    fn skipping(&self) -> bool {
        !self.layouts.is_empty()
    }
}

impl DataSource for SkipDelivered {
    fn next_batch(&mut self, max: usize, timeout: Duration) -> Result<Batch, SourceError> {
        let mut batch = self.inner.next_batch(max, timeout)?;
        self.forget_other_streams();
        if self.skipping() {
            // Frames come in sequence order: past the last one, a layout has no other.
            if let Some(last) = batch.frames.last().map(|frame| frame.seq) {
                let before = batch.frames.len();
                let layouts = &self.layouts;
                batch
                    .frames
                    .retain(|frame| !layouts.iter().any(|layout| layout.delivered(frame.seq)));
                self.skipped += (before - batch.frames.len()) as u64;
                self.layouts.retain(|layout| layout.end() > last.saturating_add(1));
            }
        }
        Ok(batch)
    }

    fn write_batch(&mut self, max: usize, timeout: Duration, sink: &mut dyn FrameSink) -> Result<Written, SourceError> {
        if !self.skipping() {
            return self.inner.write_batch(max, timeout, sink);
        }
        // Only until the layouts are passed: through owned frames, which can be dropped.
        let batch = self.next_batch(max, timeout)?;
        copy_batch(sink, &batch)
    }

    fn share_pacing(&mut self, clock: super::PacingClock) {
        self.inner.share_pacing(clock);
    }

    fn position(&self) -> SourcePosition {
        let mut position = self.inner.position();
        if position.stream == self.stream {
            position.delivered_before = self.layouts.clone();
        }
        position
    }

    fn stats(&self) -> SourceStats {
        let mut stats = self.inner.stats();
        stats.frames = stats.frames.saturating_sub(self.skipped);
        stats
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::event::{FieldValue, Frame};
    use crate::source::{open, write_recording, ShmProducer, SourceConfig, SyntheticConfig};

    /// A synthetic stream of `frames` frames (scalars only, as fast as possible).
    fn synthetic(frames: u64) -> SourceConfig {
        SourceConfig::Synthetic(SyntheticConfig {
            rate_hz: None,
            frames: Some(frames),
            ..SyntheticConfig::scalars_only()
        })
    }

    /// A synthetic position: the next frame `next_seq`, nothing else.
    fn at(next_seq: u64) -> Option<SourcePosition> {
        Some(SourcePosition {
            next_seq,
            ..SourcePosition::default()
        })
    }

    /// Runs each partition of `positions.len()` from its position: partition `p` delivers at most
    /// `take[p]` frames (`usize::MAX`: to the end of the stream, or of the ring). Returns the
    /// sequence numbers each delivered and the positions it saved.
    fn run(config: &SourceConfig, positions: &[Option<SourcePosition>], take: &[usize]) -> (Vec<Vec<u64>>, Vec<Option<SourcePosition>>) {
        let partitions = positions.len();
        let mut delivered = Vec::new();
        let mut saved = Vec::new();
        for (partition, from) in positions.iter().enumerate() {
            let mut source = open(config, partition, partitions, from.as_ref()).unwrap();
            let mut seqs = Vec::new();
            // Small batches: the layouts are passed part-way through the runs.
            while seqs.len() < take[partition] {
                let read = source.position().offset;
                let batch = source
                    .next_batch((take[partition] - seqs.len()).min(3), Duration::from_millis(30))
                    .unwrap();
                // A ring never ends: it is drained when a call reads nothing (frames skipped were read).
                let drained =
                    batch.frames.is_empty() && source.position().offset == read && matches!(config, SourceConfig::SharedMemory { .. });
                if batch.ended || drained {
                    break;
                }
                seqs.extend(batch.frames.iter().map(|f| f.seq));
            }
            assert_eq!(source.stats().frames, seqs.len() as u64, "frames counted by partition {partition}");
            assert!(seqs.iter().all(|seq| seq % partitions as u64 == partition as u64));
            delivered.push(seqs);
            saved.push(Some(source.position()));
        }
        (delivered, saved)
    }

    /// Runs the partition counts of `steps` one after the other on `config` (each step: the
    /// frames each partition delivers at most), converting the positions between them, and checks
    /// that the runs delivered `0..frames` exactly once between them. Returns what each step's
    /// partitions delivered.
    fn chain(config: &SourceConfig, frames: u64, steps: &[&[usize]]) -> Vec<Vec<Vec<u64>>> {
        let mut positions: Vec<Option<SourcePosition>> = vec![None; steps[0].len()];
        let mut runs = Vec::new();
        let mut count: BTreeMap<u64, usize> = BTreeMap::new();
        for take in steps {
            if positions.len() != take.len() {
                positions = convert_positions(&positions, take.len()).into_iter().map(Some).collect();
            }
            let (delivered, saved) = run(config, &positions, take);
            for seq in delivered.iter().flatten() {
                *count.entry(*seq).or_default() += 1;
            }
            runs.push(delivered);
            positions = saved;
        }
        let twice: Vec<u64> = count.iter().filter(|(_, n)| **n > 1).map(|(seq, _)| *seq).collect();
        assert!(twice.is_empty(), "delivered more than once: {twice:?} ({runs:?})");
        assert_eq!(
            count.keys().copied().collect::<Vec<_>>(),
            (0..frames).collect::<Vec<_>>(),
            "{runs:?}"
        );
        // Once past what the earlier counts delivered, positions carry nothing of them.
        assert!(positions.iter().flatten().all(|p| p.delivered_before.is_empty()), "{positions:?}");
        runs
    }

    #[test]
    fn a_layout_knows_its_first_frame_not_delivered_in_any_other_count() {
        let layout = EarlierLayout {
            next_seq: vec![12, 5, 2, 23, 400],
        };
        for partitions in 1..=12u64 {
            for partition in 0..partitions {
                for from in [0, 1, 7, 22, 23, 399, 400, 1000] {
                    let expected = (from..)
                        .find(|&seq| seq % partitions == partition && !layout.delivered(seq))
                        .unwrap();
                    assert_eq!(
                        layout.first_not_delivered(from, partition, partitions),
                        expected,
                        "partition {partition} of {partitions} from {from}"
                    );
                }
            }
        }
        assert_eq!((layout.floor(), layout.end()), (2, 400));
    }

    #[test]
    fn four_partitions_become_two() {
        // Delivered: 0, 4 (partition 0); 1; nothing of partition 2; 3, 7.
        let old = [at(8), at(5), at(2), at(11)];
        let new = convert_positions(&old, 2);
        assert_eq!(new.iter().map(|p| p.next_seq).collect::<Vec<_>>(), [2, 5]);
        let (delivered, _) = run(&synthetic(16), &new.into_iter().map(Some).collect::<Vec<_>>(), &[usize::MAX; 2]);
        assert_eq!(delivered, [vec![2, 6, 8, 10, 12, 14], vec![5, 9, 11, 13, 15]]);
    }

    #[test]
    fn two_partitions_become_four() {
        // Delivered: 0, 2, 4; 1.
        let new = convert_positions(&[at(6), at(3)], 4);
        assert_eq!(new.iter().map(|p| p.next_seq).collect::<Vec<_>>(), [8, 5, 6, 3]);
        let (delivered, _) = run(&synthetic(12), &new.into_iter().map(Some).collect::<Vec<_>>(), &[usize::MAX; 4]);
        assert_eq!(delivered, [vec![8], vec![5, 9], vec![6, 10], vec![3, 7, 11]]);
    }

    #[test]
    fn three_partitions_that_went_unevenly_far_become_two() {
        // Delivered: 0, 3, 6; nothing of partition 1; 2.
        let new = convert_positions(&[at(9), at(1), at(5)], 2);
        assert_eq!(new.iter().map(|p| p.next_seq).collect::<Vec<_>>(), [4, 1]);
        let (delivered, _) = run(&synthetic(12), &new.into_iter().map(Some).collect::<Vec<_>>(), &[usize::MAX; 2]);
        assert_eq!(delivered, [vec![4, 8, 10], vec![1, 5, 7, 9, 11]]);
    }

    #[test]
    fn a_partition_that_saved_no_position_had_delivered_nothing() {
        let new = convert_positions(&[at(10), None], 2);
        assert_eq!(new.iter().map(|p| p.next_seq).collect::<Vec<_>>(), [10, 1]);
        let (delivered, _) = run(&synthetic(14), &new.into_iter().map(Some).collect::<Vec<_>>(), &[usize::MAX; 2]);
        assert_eq!(delivered, [vec![10, 12], vec![1, 3, 5, 7, 9, 11, 13]]);
    }

    #[test]
    fn several_changes_in_a_row_deliver_every_synthetic_frame_once() {
        let all = usize::MAX;
        chain(&synthetic(90), 90, &[&[5, 11], &[3, 0, 7, 2], &[4, 9, 1], &[2, 6], &[all]]);
        chain(&synthetic(90), 90, &[&[9, 1, 4], &[0, 2], &[1, 8, 0, 3, 5], &[all, all]]);
    }

    #[test]
    fn several_changes_in_a_row_deliver_every_recorded_frame_once() {
        let dir = std::env::temp_dir().join(format!("ami2-resume-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("chain.rec");
        let generator = crate::source::SyntheticGenerator::new(&SyntheticConfig::scalars_only()).unwrap();
        write_recording(&path, (0..90).map(|seq| generator.frame(seq)), |_| {}).unwrap();
        let config = SourceConfig::File {
            path: path.clone(),
            realtime: false,
        };
        let all = usize::MAX;
        chain(&config, 90, &[&[5, 11], &[3, 0, 7, 2], &[4, 9, 1], &[all, all]]);
        chain(&config, 90, &[&[9, 1, 4], &[0, 2], &[1, 8, 0, 3, 5], &[all]]);
        // A recording made again (another stream) is replayed whole: nothing of it was delivered.
        let positions: Vec<Option<SourcePosition>> = convert_positions(&run(&config, &[None, None], &[20, 3]).1, 3)
            .into_iter()
            .map(Some)
            .collect();
        std::thread::sleep(Duration::from_millis(2));
        write_recording(&path, (0..30).map(|seq| generator.frame(seq)), |_| {}).unwrap();
        let (delivered, saved) = run(&config, &positions, &[all; 3]);
        assert_eq!(delivered.iter().map(Vec::len).sum::<usize>(), 30);
        assert!(saved.iter().flatten().all(|p| p.delivered_before.is_empty()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A ring name unique to this process, removed on drop (also when the test fails).
    struct Ring(String);

    impl Drop for Ring {
        fn drop(&mut self) {
            let _ = ShmProducer::remove(&self.0);
        }
    }

    #[test]
    fn several_changes_in_a_row_deliver_every_frame_of_a_ring_once() {
        let ring = Ring(format!("ami2-test-{}-resume", std::process::id()));
        let name = ring.0.clone();
        let mut producer = ShmProducer::create(&name, 128, 256).unwrap();
        for seq in 0..90 {
            producer
                .push(&Frame {
                    seq,
                    timestamp_ns: seq * 1000,
                    fields: vec![("energy".into(), FieldValue::Scalar(seq as f64))],
                })
                .unwrap();
        }
        let config = SourceConfig::SharedMemory { name: name.clone() };
        let all = usize::MAX;
        chain(&config, 90, &[&[5, 11], &[3, 0, 7, 2], &[4, 9, 1], &[all, all]]);
    }

    #[test]
    fn old_positions_in_another_stream_count_as_nothing_delivered() {
        let in_stream = |next_seq, offset, stream| {
            Some(SourcePosition {
                next_seq,
                offset,
                stream: Some(stream),
                ..SourcePosition::default()
            })
        };
        // Two of three partitions in stream 7: the third's position says nothing about it.
        let new = convert_positions(&[in_stream(30, 500, 7), in_stream(40, 900, 9), in_stream(20, 300, 7)], 2);
        for position in &new {
            assert_eq!((position.offset, position.stream), (0, Some(7)));
        }
        assert_eq!(new[0].delivered_before, [EarlierLayout { next_seq: vec![30, 0, 20] }]);
        // All in one stream: the smallest offset.
        let new = convert_positions(&[in_stream(30, 500, 7), in_stream(40, 900, 7)], 3);
        assert!(new.iter().all(|p| p.offset == 500));
    }

    #[test]
    fn positions_saved_before_the_layouts_existed_still_load() {
        let old: SourcePosition = serde_json::from_str(r#"{"next_seq": 5, "offset": 9, "stream": 3}"#).unwrap();
        assert!(old.delivered_before.is_empty());
        let converted = &convert_positions(&[Some(old), at(2)], 3)[0];
        assert!(!converted.delivered_before.is_empty());
        // Positions travel in Control (JSON) and in task results (bincode).
        let text = serde_json::to_string(converted).unwrap();
        assert_eq!(&serde_json::from_str::<SourcePosition>(&text).unwrap(), converted);
        let bytes = bincode::serde::encode_to_vec(converted, bincode::config::standard()).unwrap();
        let (decoded, _): (SourcePosition, usize) = bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        assert_eq!(&decoded, converted);
    }
}
