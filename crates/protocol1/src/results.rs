//! Protocol 2: finished time bins pushed to subscribers ([`Bin`]), and the bounded per-connection
//! queue that drops the oldest bins of a slow subscriber and tells it how many ([`Dropped`]).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ProtocolError;
use crate::message::ServerMessage;

/// Default capacity of a subscriber's queue of bins.
pub const DEFAULT_SUBSCRIBER_QUEUE: usize = 256;

/// Most memory the bins waiting in a subscriber's queue may take (their values as held in
/// memory, [`value_bytes`]), whatever their count: 256 bins of a 65,536-bin histogram would take
/// over 500 MB per subscriber that does not read, and a few such subscribers would exhaust the
/// server's memory.
pub const SUBSCRIBER_QUEUE_BYTES: usize = 32 << 20;

/// The memory a JSON value takes, about: a `Value` per element, and the bytes of strings and
/// object keys.
pub fn value_bytes(value: &Value) -> usize {
    let node = std::mem::size_of::<Value>();
    match value {
        Value::String(s) => node + s.len(),
        Value::Array(items) => node + items.iter().map(value_bytes).sum::<usize>(),
        Value::Object(map) => {
            node + map
                .iter()
                .map(|(k, v)| std::mem::size_of::<String>() + k.len() + value_bytes(v))
                .sum::<usize>()
        }
        _ => node,
    }
}

/// One finished time bin of one result, as stored under `/results/<result>/<bin:012>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bin {
    /// The result's name (the id of a result node).
    pub result: String,
    /// The bin's index: it holds the events with `timestamp_ns` in `[bin·w, (bin+1)·w)`.
    pub bin: u64,
    /// The bin's start time in nanoseconds (`bin·w`).
    pub t_ns: u64,
    /// The graph version that produced the value.
    pub graph_version: u64,
    /// The number of events merged into the bin.
    pub events: u64,
    /// The finalized value (its shape depends on the result node's op; see docs/graph.md).
    pub value: Value,
}

/// Tells a slow subscriber that `count` bins were dropped for it (the oldest first) since the
/// previous notice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dropped {
    /// Bins dropped since the previous `dropped` notice.
    pub count: u64,
    /// Of those, the ones too large for a frame, with the last such bin's result and size;
    /// absent when none was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub too_large: Option<TooLarge>,
}

/// Bins dropped because they were too large for a frame: a result's value is bigger than the
/// protocol allows (a histogram of very many bins, a large image), so it can never be sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TooLarge {
    /// How many of the notice's `count`.
    pub count: u64,
    /// The result of the last one.
    pub result: String,
    /// Its size as a message, in bytes.
    pub bytes: u64,
    /// The frame cap it exceeds, in bytes.
    pub max: u64,
}

/// A connection's outgoing queue on the server: at most `bin_cap` bins taking at most
/// [`SUBSCRIBER_QUEUE_BYTES`] (the newest bin is always kept), the oldest dropped when a new one
/// arrives and the queue is full, and at most `other_cap` other messages
/// (answers), which are never dropped — a client that lets answers pile up is misbehaving
/// ([`ProtocolError::QueueFull`], code `busy`: disconnect it).
///
/// [`pop`](Self::pop) returns a [`ServerMessage::Dropped`] notice first when bins were dropped
/// since the previous notice, then the queued messages in order.
#[derive(Debug)]
pub struct SubscriberQueue {
    bin_cap: usize,
    other_cap: usize,
    /// Queued messages, each with the memory its bin's value takes (0 for other messages).
    items: VecDeque<(ServerMessage, usize)>,
    bins: usize,
    /// Memory of the queued bins' values.
    bin_bytes: usize,
    dropped: u64,
    too_large: Option<TooLarge>,
    dropped_total: u64,
}

impl SubscriberQueue {
    /// A queue for at most `bin_cap` bins (at least 1) and `other_cap` other messages.
    pub fn new(bin_cap: usize, other_cap: usize) -> Self {
        SubscriberQueue {
            bin_cap: bin_cap.max(1),
            other_cap,
            items: VecDeque::new(),
            bins: 0,
            bin_bytes: 0,
            dropped: 0,
            too_large: None,
            dropped_total: 0,
        }
    }

    /// Queues a message. A bin never fails (the oldest queued bin is dropped when full);
    /// another message fails with `QueueFull` when `other_cap` of them are waiting.
    pub fn push(&mut self, msg: ServerMessage) -> Result<(), ProtocolError> {
        let bytes = match &msg {
            ServerMessage::Bin(bin) => value_bytes(&bin.value),
            _ if self.items.len() - self.bins >= self.other_cap => {
                return Err(ProtocolError::QueueFull { cap: self.other_cap });
            }
            _ => 0,
        };
        if matches!(msg, ServerMessage::Bin(_)) {
            // Room for it: the oldest bins go while there are too many, or they take too much.
            while self.bins > 0 && (self.bins == self.bin_cap || self.bin_bytes + bytes > SUBSCRIBER_QUEUE_BYTES) {
                self.drop_oldest_bin();
            }
            self.bins += 1;
            self.bin_bytes += bytes;
        }
        self.items.push_back((msg, bytes));
        Ok(())
    }

    /// The next message to send: a `dropped` notice if bins were dropped since the last one,
    /// else the oldest queued message.
    pub fn pop(&mut self) -> Option<ServerMessage> {
        if self.dropped > 0 {
            let count = std::mem::take(&mut self.dropped);
            let too_large = self.too_large.take();
            return Some(ServerMessage::Dropped(Dropped { count, too_large }));
        }
        let (msg, bytes) = self.items.pop_front()?;
        if matches!(msg, ServerMessage::Bin(_)) {
            self.bins -= 1;
            self.bin_bytes -= bytes;
        }
        Some(msg)
    }

    fn drop_oldest_bin(&mut self) {
        if let Some(pos) = self.items.iter().position(|(m, _)| matches!(m, ServerMessage::Bin(_))) {
            if let Some((_, bytes)) = self.items.remove(pos) {
                self.bins -= 1;
                self.bin_bytes -= bytes;
                self.dropped += 1;
                self.dropped_total += 1;
            }
        }
    }

    /// Counts a bin of `result` as dropped without queueing it: as a message it takes `bytes`,
    /// more than the frame cap `max`.
    pub fn note_too_large(&mut self, result: &str, bytes: u64, max: u64) {
        self.dropped += 1;
        self.dropped_total += 1;
        let count = self.too_large.as_ref().map_or(0, |t| t.count) + 1;
        self.too_large = Some(TooLarge {
            count,
            result: result.to_string(),
            bytes,
            max,
        });
    }

    /// Queued messages (not counting a pending `dropped` notice).
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether [`pop`](Self::pop) would return `None`.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty() && self.dropped == 0
    }

    /// Bins dropped since the queue was created.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }
}

impl Default for SubscriberQueue {
    fn default() -> Self {
        SubscriberQueue::new(DEFAULT_SUBSCRIBER_QUEUE, DEFAULT_SUBSCRIBER_QUEUE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bin(b: u64) -> ServerMessage {
        ServerMessage::Bin(Bin {
            result: "r".into(),
            bin: b,
            t_ns: b * 50_000_000,
            graph_version: 1,
            events: 10,
            value: Value::Null,
        })
    }

    fn bin_no(msg: &ServerMessage) -> u64 {
        match msg {
            ServerMessage::Bin(b) => b.bin,
            other => panic!("not a bin: {other:?}"),
        }
    }

    #[test]
    fn drops_oldest_bins_and_reports_them_first() {
        let mut q = SubscriberQueue::new(3, 2);
        q.push(ServerMessage::Pong { nonce: Some(1) }).unwrap();
        for b in 0..6 {
            q.push(bin(b)).unwrap();
        }
        assert_eq!(q.len(), 4);
        assert_eq!(q.pop(), Some(ServerMessage::Dropped(Dropped { count: 3, too_large: None })));
        assert_eq!(q.pop(), Some(ServerMessage::Pong { nonce: Some(1) }));
        assert_eq!(bin_no(&q.pop().unwrap()), 3);
        q.push(bin(6)).unwrap();
        q.push(bin(7)).unwrap();
        assert_eq!(q.pop(), Some(ServerMessage::Dropped(Dropped { count: 1, too_large: None })));
        let rest: Vec<u64> = std::iter::from_fn(|| q.pop()).map(|m| bin_no(&m)).collect();
        assert_eq!(rest, vec![5, 6, 7]);
        assert!(q.is_empty());
        assert_eq!(q.dropped_total(), 4);
        // Two bins too large to send, of two results: the notice counts both, names the last.
        q.note_too_large("hist", 2_000_000, 1 << 20);
        q.note_too_large("image", 3_000_000, 1 << 20);
        assert!(!q.is_empty());
        let too_large = TooLarge {
            count: 2,
            result: "image".into(),
            bytes: 3_000_000,
            max: 1 << 20,
        };
        assert_eq!(
            q.pop(),
            Some(ServerMessage::Dropped(Dropped {
                count: 2,
                too_large: Some(too_large)
            }))
        );
        assert_eq!(q.pop(), None);
        assert_eq!(q.dropped_total(), 6);
        // A slow reader's drops after it: no `too_large` any more.
        q.push(bin(8)).unwrap();
        q.push(bin(9)).unwrap();
        q.push(bin(10)).unwrap();
        q.push(bin(11)).unwrap();
        assert_eq!(q.pop(), Some(ServerMessage::Dropped(Dropped { count: 1, too_large: None })));
    }

    #[test]
    fn large_bins_are_bounded_by_the_memory_they_take_not_only_by_their_count() {
        // Bins of a 65,536-bin histogram (about 2 MB each in memory): a subscriber that does not
        // read keeps the newest few, not 256 of them (over 500 MB).
        let mut q = SubscriberQueue::default();
        let counts = Value::Array(vec![Value::from(0u64); 65_536]);
        for b in 0..256 {
            let mut msg = bin(b);
            if let ServerMessage::Bin(bin) = &mut msg {
                bin.value = serde_json::json!({"counts": counts.clone(), "low": 0.0, "high": 10.0});
            }
            q.push(msg).unwrap();
        }
        let per_bin = 65_536 * std::mem::size_of::<Value>();
        assert!(q.len() * per_bin <= 32 << 20, "{} bins of {per_bin} bytes kept", q.len());
        assert!(q.len() >= 8, "only {} bins kept", q.len());
        assert_eq!(q.dropped_total(), 256 - q.len() as u64);
        let notice = q.pop();
        assert_eq!(
            notice,
            Some(ServerMessage::Dropped(Dropped {
                count: 256 - q.len() as u64,
                too_large: None
            }))
        );
        let kept: Vec<u64> = std::iter::from_fn(|| q.pop()).map(|m| bin_no(&m)).collect();
        assert_eq!(kept.last(), Some(&255), "the newest bin is kept");
        assert!(kept.windows(2).all(|w| w[1] == w[0] + 1), "{kept:?}");
        // A single bin larger than the bound still goes out.
        let mut huge = bin(256);
        if let ServerMessage::Bin(bin) = &mut huge {
            bin.value = Value::Array(vec![Value::from(0u64); 2 << 20]);
        }
        q.push(huge).unwrap();
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn answers_are_never_dropped_but_bounded() {
        let mut q = SubscriberQueue::new(1, 2);
        q.push(ServerMessage::Pong { nonce: None }).unwrap();
        q.push(bin(0)).unwrap();
        q.push(ServerMessage::Pong { nonce: None }).unwrap();
        let err = q.push(ServerMessage::Pong { nonce: None }).unwrap_err();
        assert_eq!(err.code(), crate::ErrorCode::Busy);
        q.push(bin(1)).unwrap();
        assert_eq!(q.len(), 3);
    }
}
